//! ioat-ctl internals: opening a target (a BDF through VFIO, or the software model), tables,
//! and the subcommands.

pub mod bench;
pub mod regs;
pub mod selftest;
pub mod svg;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use ioat_driver::discover::{Bdf, Host};
use ioat_driver::dma::DmaMapper;
use ioat_driver::model::{ModelConfig, ModelDevice, Preset, StrictMode, Timing};
use ioat_driver::regs::RegisterAccess;
use ioat_driver::vfio::{VfioDevice, VfioOpenOptions};
use ioat_driver::Device;

/// The host whose sysfs we read: `/`, or `IOAT_SYSFS_ROOT` (a fake tree, for tests).
pub fn host() -> Host {
    match std::env::var_os("IOAT_SYSFS_ROOT") {
        Some(r) if !r.is_empty() => Host::with_root(r),
        _ => Host::system(),
    }
}

/// Model preset names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PresetArg {
    Skx,
    Bdx,
    Icx,
}

impl PresetArg {
    pub fn preset(self) -> Preset {
        match self {
            PresetArg::Skx => Preset::Skx,
            PresetArg::Bdx => Preset::Bdx,
            PresetArg::Icx => Preset::Icx,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            PresetArg::Skx => "skx",
            PresetArg::Bdx => "bdx",
            PresetArg::Icx => "icx",
        }
    }
}

/// How to build the software model.
#[derive(Clone, Debug)]
pub struct ModelOpts {
    pub preset: PresetArg,
    pub channels: u8,
    /// `None`: instant completion.
    pub timing: Option<(Duration, u64)>,
}

/// Common device options of the subcommands.
#[derive(Clone, Debug)]
pub struct DevOpts {
    pub model: ModelOpts,
    pub unsafe_noiommu: bool,
}

/// What `DEV` named.
pub enum Backend {
    Model(Arc<ModelDevice>),
    Vfio(VfioDevice),
}

/// An opened target: register access and DMA mapper, behind trait objects so every
/// subcommand has one code path for the model and for hardware.
pub struct Target {
    pub label: String,
    pub backend: Backend,
    pub regs: Arc<dyn RegisterAccess>,
    pub mapper: Arc<dyn DmaMapper>,
}

impl Target {
    pub fn is_model(&self) -> bool {
        matches!(self.backend, Backend::Model(_))
    }

    /// Opens the driver's device over this target.
    pub fn device(&self) -> Result<Device<Arc<dyn RegisterAccess>>> {
        Device::open(self.regs.clone(), self.mapper.clone())
            .map_err(|e| anyhow!("{}: {e}", self.label))
    }

    /// The model's strict-mode violations (empty for hardware).
    pub fn violations(&self) -> Vec<String> {
        match &self.backend {
            Backend::Model(m) => m.violations().iter().map(|v| v.to_string()).collect(),
            Backend::Vfio(_) => Vec::new(),
        }
    }
}

/// Parses `DEV` (`model` or a PCI address) and opens it.
pub fn open(dev: &str, opts: &DevOpts) -> Result<Target> {
    if dev.eq_ignore_ascii_case("model") {
        let m = &opts.model;
        let mut cfg = ModelConfig::preset(m.preset.preset())
            .chancnt(m.channels)
            .strict(StrictMode::Record);
        if let Some((per_desc, bps)) = m.timing {
            // The model sleeps per descriptor; its engine threads inherit our timer slack, so
            // shrink it from the default 50 us to 1 ns to keep sub-10-us sleeps meaningful.
            // SAFETY: PR_SET_TIMERSLACK takes an integer and affects only this thread.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
            cfg = cfg.timing(Timing::Modeled {
                per_desc,
                bytes_per_sec: bps,
            });
        }
        let model = ModelDevice::new(cfg);
        let regs: Arc<dyn RegisterAccess> = model.clone();
        let mapper = model.mapper();
        return Ok(Target {
            label: format!("model ({})", m.preset.name()),
            backend: Backend::Model(model),
            regs,
            mapper,
        });
    }
    let bdf: Bdf = dev.parse()?;
    let mut o = VfioOpenOptions::ioat().with_host(host());
    if opts.unsafe_noiommu {
        // SAFETY: the user asked for no-IOMMU mode explicitly with --unsafe-noiommu, whose
        // help text states that the device can then write anywhere in physical memory.
        o = unsafe { o.i_understand_noiommu() };
    }
    // Bus mastering is enabled by `Device::open`, only when DMA is about to be used; BAR
    // reads (list, regs) need only the memory decode vfio-pci enables on open.
    let vfio = VfioDevice::open(&bdf, &o)?;
    let bar = vfio.map_bar(0)?;
    let regs: Arc<dyn RegisterAccess> = bar;
    let mapper: Arc<dyn DmaMapper> = vfio.mapper();
    Ok(Target {
        label: bdf.to_string(),
        backend: Backend::Vfio(vfio),
        regs,
        mapper,
    })
}

/// Prints rows under headers with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<width$}  ", c, width = w[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Human-readable byte size: 64 B, 4 KiB, 1 MiB.
pub fn size_str(b: u64) -> String {
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 && b % (1 << 10) == 0 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// Parses a channel option against the device's CHANCNT.
pub fn check_channel(n: u32, chancnt: u32, label: &str) -> Result<()> {
    if n >= chancnt {
        bail!(
            "{label}: channel {n} does not exist (CHANCNT is {chancnt}; channels are 0..{})",
            chancnt.saturating_sub(1)
        );
    }
    Ok(())
}
