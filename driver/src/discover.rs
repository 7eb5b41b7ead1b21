//! PCI discovery through sysfs, pre-flight checks before VFIO touches a device, and
//! binding to / unbinding from `vfio-pci`.
//!
//! Every file read goes through a [`Host`] whose root is configurable, so the unit tests build a
//! fake `sys/` and `dev/` tree in a temporary directory and run every check against it.
//! Nothing here touches the device itself: only sysfs attributes and `/dev/vfio` nodes.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use crate::error::OsError;
use crate::ids::{self, IoatId};

/// The driver name VFIO userspace access needs.
pub const VFIO_PCI: &str = "vfio-pci";

/// A PCI address: domain, bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// A string that is not a PCI address.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{input:?} is not a PCI address: expected DDDD:BB:DD.F (e.g. 0000:00:04.0) or BB:DD.F; find I/OAT addresses with `ioat-ctl list` or `lspci -D -d 8086:`")]
pub struct BdfParseError {
    pub input: String,
}

impl FromStr for Bdf {
    type Err = BdfParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BdfParseError {
            input: s.to_string(),
        };
        let t = s.trim();
        let parts: Vec<&str> = t.split(':').collect();
        let (dom, bus, rest) = match parts.as_slice() {
            [d, b, r] => (*d, *b, *r),
            [b, r] => ("0", *b, *r),
            _ => return Err(err()),
        };
        let (dev, func) = rest.split_once('.').ok_or_else(err)?;
        let hex_ok = |x: &str, max: usize| {
            !x.is_empty() && x.len() <= max && x.bytes().all(|c| c.is_ascii_hexdigit())
        };
        if !hex_ok(dom, 8) || !hex_ok(bus, 2) || !hex_ok(dev, 2) || !hex_ok(func, 1) {
            return Err(err());
        }
        let domain = u32::from_str_radix(dom, 16).map_err(|_| err())?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| err())?;
        let device = u8::from_str_radix(dev, 16).map_err(|_| err())?;
        let function = u8::from_str_radix(func, 16).map_err(|_| err())?;
        if device > 0x1f || function > 7 {
            return Err(err());
        }
        Ok(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }
}

/// Where sysfs and /dev live. [`Host::system`] is `/`; tests point it at a fake tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host::system()
    }
}

/// What sysfs says about one PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    /// Bound driver name, if any.
    pub driver: Option<String>,
    /// Content of `driver_override`, if set.
    pub driver_override: Option<String>,
    /// IOMMU group number, if the function is in one.
    pub iommu_group: Option<u32>,
    /// NUMA node; `None` when sysfs says -1 or nothing.
    pub numa_node: Option<i32>,
    /// The I/OAT table entry, when vendor/device is a known I/OAT v3.x function.
    pub ioat: Option<&'static IoatId>,
}

impl Host {
    pub fn system() -> Host {
        Host { root: "/".into() }
    }

    pub fn with_root(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// `<root>/sys/bus/pci`.
    pub fn pci_bus(&self) -> PathBuf {
        self.root.join("sys/bus/pci")
    }

    /// `<root>/sys/bus/pci/devices/<bdf>` (the path the error messages name is the real one).
    pub fn device_dir(&self, bdf: &Bdf) -> PathBuf {
        self.pci_bus().join("devices").join(bdf.to_string())
    }

    /// `<root>/sys/kernel/iommu_groups/<n>/devices`.
    pub fn group_devices_dir(&self, group: u32) -> PathBuf {
        self.root
            .join("sys/kernel/iommu_groups")
            .join(group.to_string())
            .join("devices")
    }

    /// `<root>/dev/vfio`.
    pub fn vfio_dir(&self) -> PathBuf {
        self.root.join("dev/vfio")
    }

    /// Whether a PCI function exists at `bdf`.
    pub fn exists(&self, bdf: &Bdf) -> bool {
        self.device_dir(bdf).exists()
    }

    /// Reads everything discovery needs about `bdf`.
    pub fn function(&self, bdf: &Bdf) -> io::Result<PciFunction> {
        let dir = self.device_dir(bdf);
        let vendor = read_hex(&dir.join("vendor"))? as u16;
        let device = read_hex(&dir.join("device"))? as u16;
        let class = read_hex(&dir.join("class")).unwrap_or(0) as u32;
        let driver = link_name(&dir.join("driver"));
        let driver_override = fs::read_to_string(dir.join("driver_override"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s != "(null)");
        let iommu_group = link_name(&dir.join("iommu_group")).and_then(|n| n.parse().ok());
        let numa_node = fs::read_to_string(dir.join("numa_node"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|n| *n >= 0);
        Ok(PciFunction {
            bdf: *bdf,
            vendor,
            device,
            class,
            driver,
            driver_override,
            iommu_group,
            numa_node,
            ioat: ids::lookup(vendor, device),
        })
    }

    /// Every PCI function sysfs lists, sorted by address. A missing PCI bus yields an empty list.
    pub fn all_functions(&self) -> io::Result<Vec<PciFunction>> {
        let dir = self.pci_bus().join("devices");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(bdf) = name.parse::<Bdf>() else {
                continue;
            };
            if let Ok(f) = self.function(&bdf) {
                out.push(f);
            }
        }
        out.sort_by_key(|f| f.bdf);
        Ok(out)
    }

    /// The I/OAT v3.x functions on this host, sorted by address.
    pub fn scan_ioat(&self) -> io::Result<Vec<PciFunction>> {
        Ok(self
            .all_functions()?
            .into_iter()
            .filter(|f| f.ioat.is_some())
            .collect())
    }

    /// Members of IOMMU group `group` (addresses), sorted.
    pub fn group_members(&self, group: u32) -> io::Result<Vec<Bdf>> {
        let mut out = Vec::new();
        for ent in fs::read_dir(self.group_devices_dir(group))? {
            let ent = ent?;
            if let Some(Ok(b)) = ent.file_name().to_str().map(str::parse::<Bdf>) {
                out.push(b);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The /dev node of a group: `/dev/vfio/N`, or `/dev/vfio/noiommu-N` when only the
    /// no-IOMMU node exists. The bool is true for the no-IOMMU node.
    pub fn group_node(&self, group: u32) -> Option<(PathBuf, bool)> {
        let normal = self.vfio_dir().join(group.to_string());
        if normal.exists() {
            return Some((normal, false));
        }
        let noiommu = self.vfio_dir().join(format!("noiommu-{group}"));
        if noiommu.exists() {
            return Some((noiommu, true));
        }
        None
    }

    /// Whether the `vfio-pci` driver is loaded (its sysfs directory exists).
    pub fn vfio_pci_loaded(&self) -> bool {
        self.pci_bus().join("drivers").join(VFIO_PCI).exists()
    }
}

fn read_hex(p: &Path) -> io::Result<u64> {
    let s = fs::read_to_string(p)?;
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    u64::from_str_radix(t, 16).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a hex number: {:?}", p.display(), s.trim()),
        )
    })
}

fn link_name(p: &Path) -> Option<String> {
    let target = fs::read_link(p).ok()?;
    target.file_name()?.to_str().map(str::to_string)
}

/// Which device a pre-flight check expects at the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A known I/OAT v3.0-3.4 function (vendor 0x8086, an ID from [`ids::IOAT_IDS`]).
    Ioat,
    /// This exact vendor:device (e.g. QEMU's edu, 1234:11e8).
    Id { vendor: u16, device: u16 },
    /// Any device.
    Any,
}

/// Options for [`Host::preflight`].
#[derive(Clone, Debug)]
pub struct PreflightOptions {
    pub expect: Expect,
    /// Accept a `/dev/vfio/noiommu-N` group (no IOMMU: DMA is unrestricted).
    pub allow_noiommu: bool,
    /// Bytes the caller will pin (DMA memory); compared with RLIMIT_MEMLOCK.
    pub memlock_needed: u64,
    /// Override of the memlock limit in bytes (`None`: ask the kernel; `Some(u64::MAX)`:
    /// unlimited). Tests use it; so does a process that knows it holds CAP_IPC_LOCK.
    pub memlock_limit: Option<u64>,
    /// Skip the `/dev/vfio` access check (tests running as root against a fake tree).
    pub check_access: bool,
}

impl Default for PreflightOptions {
    fn default() -> Self {
        PreflightOptions {
            expect: Expect::Ioat,
            allow_noiommu: false,
            memlock_needed: 64 << 20,
            memlock_limit: None,
            check_access: true,
        }
    }
}

/// A device that passed every check.
#[derive(Clone, Debug)]
pub struct Preflight {
    pub function: PciFunction,
    pub group: u32,
    /// `/dev/vfio/N` or `/dev/vfio/noiommu-N`.
    pub group_node: PathBuf,
    pub noiommu: bool,
    /// `/sys/bus/pci/devices/<bdf>` under the host root.
    pub sysfs_path: PathBuf,
}

/// Why a device cannot be used yet. Every message is one line, names the address and the fix.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PreflightError {
    #[error(transparent)]
    BadAddress(#[from] BdfParseError),
    #[error("{bdf}: no such PCI device ({path} does not exist); list I/OAT functions with `ioat-ctl list` or `lspci -D -d 8086:`")]
    NoSuchDevice { bdf: Bdf, path: String },
    #[error("{bdf}: cannot read its sysfs attributes ({what}: {source}); run as root or check that sysfs is mounted at /sys")]
    Sysfs {
        bdf: Bdf,
        /// What was being read.
        what: String,
        #[source]
        source: OsError,
    },
    #[error("{bdf}: vendor {vendor:#06x} device {device:#06x} is not an Intel I/OAT v3.0-3.4 DMA function{hint}; list I/OAT functions with `ioat-ctl list`")]
    NotIoat {
        bdf: Bdf,
        vendor: u16,
        device: u16,
        hint: String,
    },
    #[error("{bdf}: vendor {vendor:#06x} device {device:#06x} is not the expected {want_vendor:04x}:{want_device:04x}; check the address with `lspci -D -nn`")]
    WrongId {
        bdf: Bdf,
        vendor: u16,
        device: u16,
        want_vendor: u16,
        want_device: u16,
    },
    #[error("{bdf}: the vfio-pci driver is not loaded; run `modprobe vfio-pci`, then `ioat-ctl bind {bdf}`")]
    VfioPciNotLoaded { bdf: Bdf },
    #[error("{bdf}: {current}, not to vfio-pci; run `ioat-ctl bind {bdf}` (or by hand: {manual})")]
    NotBound {
        bdf: Bdf,
        current: String,
        manual: String,
    },
    #[error("{bdf}: not in an IOMMU group, so VFIO cannot reach it; boot with `intel_iommu=on iommu=pt` (and VT-d enabled in firmware), or at your own risk load vfio with `enable_unsafe_noiommu_mode=1` and use no-IOMMU mode")]
    NoIommuGroup { bdf: Bdf },
    #[error("{bdf}: IOMMU group {group} is not viable: {offenders} must be bound to vfio-pci or to no driver; run `ioat-ctl bind` on each (or `echo <addr> > /sys/bus/pci/devices/<addr>/driver/unbind`)")]
    GroupNotViable {
        bdf: Bdf,
        group: u32,
        offenders: String,
    },
    #[error("{bdf}: {node} does not exist although the device is bound to vfio-pci; check `dmesg | grep -i vfio` and that /dev is populated (udev)")]
    NoGroupNode { bdf: Bdf, node: String },
    #[error("{bdf}: IOMMU group {group} is a no-IOMMU group ({node}): the device could DMA anywhere in memory; pass --unsafe-noiommu (API: `VfioOpenOptions::i_understand_noiommu`) only if you accept that, or enable the IOMMU with `intel_iommu=on`")]
    NoiommuRefused { bdf: Bdf, group: u32, node: String },
    #[error("{bdf}: no read/write access to {node}; run as root, or give your user the group node: `sudo chown $USER {node}`")]
    NoAccess { bdf: Bdf, node: String },
    #[error("{bdf}: RLIMIT_MEMLOCK is {have} bytes but {need} bytes of DMA memory must be pinned; raise it with `ulimit -l unlimited` (or LimitMEMLOCK=infinity / /etc/security/limits.conf), or run as root")]
    Memlock { bdf: Bdf, have: u64, need: u64 },
}

/// The current RLIMIT_MEMLOCK soft limit in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    if rc != 0 {
        return 0;
    }
    if rl.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        rl.rlim_cur
    }
}

fn manual_bind_commands(bdf: &Bdf, current: Option<&str>) -> String {
    let mut s = String::from("modprobe vfio-pci; ");
    if current.is_some() {
        s.push_str(&format!(
            "echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; "
        ));
    }
    s.push_str(&format!(
        "echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe"
    ));
    s
}

impl Host {
    /// Runs every check, in order, without touching the device: address exists; IDs; bound to
    /// vfio-pci; IOMMU group present and viable; group node present and accessible; memlock.
    pub fn preflight(
        &self,
        bdf: &Bdf,
        opts: &PreflightOptions,
    ) -> Result<Preflight, PreflightError> {
        let dir = self.device_dir(bdf);
        if !dir.exists() {
            return Err(PreflightError::NoSuchDevice {
                bdf: *bdf,
                path: format!("/sys/bus/pci/devices/{bdf}"),
            });
        }
        let f = self.function(bdf).map_err(|e| sysfs_err(bdf, e))?;
        match opts.expect {
            Expect::Ioat => {
                if f.ioat.is_none() {
                    let hint = match ids::legacy(f.vendor, f.device) {
                        Some(name) => format!(
                            " ({name} is a pre-3.0 I/OAT, which this driver does not support)"
                        ),
                        None if f.vendor == crate::regs::PCI_VENDOR_INTEL => {
                            " (Intel, but not a known CBDMA device ID)".to_string()
                        }
                        None => String::new(),
                    };
                    return Err(PreflightError::NotIoat {
                        bdf: *bdf,
                        vendor: f.vendor,
                        device: f.device,
                        hint,
                    });
                }
            }
            Expect::Id { vendor, device } => {
                if f.vendor != vendor || f.device != device {
                    return Err(PreflightError::WrongId {
                        bdf: *bdf,
                        vendor: f.vendor,
                        device: f.device,
                        want_vendor: vendor,
                        want_device: device,
                    });
                }
            }
            Expect::Any => {}
        }
        if f.driver.as_deref() != Some(VFIO_PCI) {
            if !self.vfio_pci_loaded() {
                return Err(PreflightError::VfioPciNotLoaded { bdf: *bdf });
            }
            return Err(PreflightError::NotBound {
                bdf: *bdf,
                current: match &f.driver {
                    Some(d) => format!("bound to driver {d}"),
                    None => "not bound to any driver".to_string(),
                },
                manual: manual_bind_commands(bdf, f.driver.as_deref()),
            });
        }
        let Some(group) = f.iommu_group else {
            return Err(PreflightError::NoIommuGroup { bdf: *bdf });
        };
        let members = self
            .group_members(group)
            .map_err(|e| PreflightError::Sysfs {
                bdf: *bdf,
                what: format!("members of IOMMU group {group}"),
                source: e.into(),
            })?;
        let mut offenders = Vec::new();
        for m in members {
            if m == *bdf {
                continue;
            }
            let d = self.function(&m).ok().and_then(|mf| mf.driver);
            if let Some(d) = d {
                if d != VFIO_PCI {
                    offenders.push(format!("{m} (bound to {d})"));
                }
            }
        }
        if !offenders.is_empty() {
            return Err(PreflightError::GroupNotViable {
                bdf: *bdf,
                group,
                offenders: offenders.join(", "),
            });
        }
        let Some((node, noiommu)) = self.group_node(group) else {
            return Err(PreflightError::NoGroupNode {
                bdf: *bdf,
                node: format!("/dev/vfio/{group}"),
            });
        };
        let node_display = Path::new("/").join(node.strip_prefix(&self.root).unwrap_or(&node));
        if noiommu && !opts.allow_noiommu {
            return Err(PreflightError::NoiommuRefused {
                bdf: *bdf,
                group,
                node: node_display.display().to_string(),
            });
        }
        if opts.check_access && !accessible_rw(&node) {
            return Err(PreflightError::NoAccess {
                bdf: *bdf,
                node: node_display.display().to_string(),
            });
        }
        let have = match opts.memlock_limit {
            Some(l) => l,
            // Root normally holds CAP_IPC_LOCK, which VFIO's pinning accounting honours.
            // SAFETY: geteuid has no preconditions.
            None if unsafe { libc::geteuid() } == 0 => u64::MAX,
            None => memlock_limit(),
        };
        if have < opts.memlock_needed {
            return Err(PreflightError::Memlock {
                bdf: *bdf,
                have,
                need: opts.memlock_needed,
            });
        }
        Ok(Preflight {
            function: f,
            group,
            group_node: node,
            noiommu,
            sysfs_path: dir,
        })
    }
}

fn accessible_rw(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; access() only reads it.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// A sysfs read of the function's attributes failed.
fn sysfs_err(bdf: &Bdf, e: io::Error) -> PreflightError {
    PreflightError::Sysfs {
        bdf: *bdf,
        what: "vendor and device IDs".into(),
        source: e.into(),
    }
}

/// Errors from [`Host::bind`] / [`Host::unbind`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BindError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("{bdf}: writing {path}: {source}; binding needs root (try `sudo ioat-ctl ...`)")]
    Write {
        bdf: Bdf,
        path: String,
        #[source]
        source: OsError,
    },
    #[error("{bdf}: the kernel did not bind it to vfio-pci (driver now: {now}); check `dmesg | tail` (is the IOMMU on? `intel_iommu=on`)")]
    DidNotBind { bdf: Bdf, now: String },
    #[error("{bdf}: not bound to vfio-pci (driver: {now}); nothing to unbind")]
    NotVfio { bdf: Bdf, now: String },
}

/// What [`Host::bind`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindReport {
    pub bdf: Bdf,
    pub previous_driver: Option<String>,
    pub driver: Option<String>,
    pub already: bool,
    /// Other members of the IOMMU group still bound to a non-vfio driver (they keep the group
    /// unusable until they are unbound too).
    pub group_blockers: Vec<String>,
}

impl Host {
    fn write_attr(&self, bdf: &Bdf, path: &Path, val: &str) -> Result<(), BindError> {
        fs::write(path, val).map_err(|e| BindError::Write {
            bdf: *bdf,
            path: Path::new("/")
                .join(path.strip_prefix(&self.root).unwrap_or(path))
                .display()
                .to_string(),
            source: e.into(),
        })
    }

    fn group_blockers(&self, bdf: &Bdf, group: Option<u32>) -> Vec<String> {
        let Some(g) = group else { return Vec::new() };
        let Ok(members) = self.group_members(g) else {
            return Vec::new();
        };
        members
            .into_iter()
            .filter(|m| m != bdf)
            .filter_map(|m| {
                let d = self.function(&m).ok()?.driver?;
                (d != VFIO_PCI).then(|| format!("{m} (bound to {d})"))
            })
            .collect()
    }

    /// Binds `bdf` to vfio-pci the way dpdk-devbind does: `driver_override`, unbind from the
    /// current driver, `drivers_probe`. Only known I/OAT functions unless `expect` says otherwise.
    pub fn bind(&self, bdf: &Bdf, expect: Expect) -> Result<BindReport, BindError> {
        let opts = PreflightOptions {
            expect,
            ..PreflightOptions::default()
        };
        let f = match self.preflight(bdf, &opts) {
            Ok(p) => p.function,
            Err(PreflightError::NotBound { .. })
            | Err(PreflightError::GroupNotViable { .. })
            | Err(PreflightError::NoiommuRefused { .. })
            | Err(PreflightError::NoAccess { .. })
            | Err(PreflightError::NoGroupNode { .. })
            | Err(PreflightError::Memlock { .. })
            | Err(PreflightError::NoIommuGroup { .. }) => {
                self.function(bdf).map_err(|e| sysfs_err(bdf, e))?
            }
            Err(e) => return Err(e.into()),
        };
        let blockers = self.group_blockers(bdf, f.iommu_group);
        if f.driver.as_deref() == Some(VFIO_PCI) {
            return Ok(BindReport {
                bdf: *bdf,
                previous_driver: f.driver.clone(),
                driver: f.driver,
                already: true,
                group_blockers: blockers,
            });
        }
        let dir = self.device_dir(bdf);
        self.write_attr(bdf, &dir.join("driver_override"), VFIO_PCI)?;
        if f.driver.is_some() {
            self.write_attr(bdf, &dir.join("driver/unbind"), &bdf.to_string())?;
        }
        self.write_attr(bdf, &self.pci_bus().join("drivers_probe"), &bdf.to_string())?;
        let now = link_name(&dir.join("driver"));
        if now.as_deref() != Some(VFIO_PCI) {
            return Err(BindError::DidNotBind {
                bdf: *bdf,
                now: now.unwrap_or_else(|| "none".into()),
            });
        }
        Ok(BindReport {
            bdf: *bdf,
            previous_driver: f.driver,
            driver: now,
            already: false,
            group_blockers: blockers,
        })
    }

    /// Unbinds `bdf` from vfio-pci and clears `driver_override`; with `reprobe`, asks the kernel
    /// to probe it again so its native driver (ioatdma) takes it back.
    pub fn unbind(&self, bdf: &Bdf, reprobe: bool) -> Result<BindReport, BindError> {
        if !self.exists(bdf) {
            return Err(PreflightError::NoSuchDevice {
                bdf: *bdf,
                path: format!("/sys/bus/pci/devices/{bdf}"),
            }
            .into());
        }
        let f = self.function(bdf).map_err(|e| sysfs_err(bdf, e))?;
        if f.driver.as_deref() != Some(VFIO_PCI) {
            return Err(BindError::NotVfio {
                bdf: *bdf,
                now: f.driver.unwrap_or_else(|| "none".into()),
            });
        }
        let dir = self.device_dir(bdf);
        self.write_attr(bdf, &dir.join("driver/unbind"), &bdf.to_string())?;
        self.write_attr(bdf, &dir.join("driver_override"), "\n")?;
        if reprobe {
            self.write_attr(bdf, &self.pci_bus().join("drivers_probe"), &bdf.to_string())?;
        }
        Ok(BindReport {
            bdf: *bdf,
            previous_driver: f.driver,
            driver: link_name(&dir.join("driver")),
            already: false,
            group_blockers: Vec::new(),
        })
    }
}

/// A fake sysfs + /dev tree for tests (also used by the CLI tests through `IOAT_SYSFS_ROOT`).
/// Test-only: compiled for this crate's unit tests and with the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod fake {
    use super::*;
    use std::os::unix::fs::symlink;

    /// One function to create in the fake tree.
    #[derive(Clone, Debug)]
    pub struct FakeFn {
        pub bdf: &'static str,
        pub vendor: u16,
        pub device: u16,
        pub driver: Option<&'static str>,
        pub group: Option<u32>,
        pub numa: i32,
    }

    /// Builds the tree under `root`: devices, drivers, groups and (for groups whose members
    /// are all on vfio-pci) `/dev/vfio/N` nodes (`noiommu-N` when `noiommu`).
    pub fn build(root: &Path, fns: &[FakeFn], noiommu: bool) -> io::Result<()> {
        let bus = root.join("sys/bus/pci");
        fs::create_dir_all(bus.join("devices"))?;
        fs::create_dir_all(bus.join("drivers/vfio-pci"))?;
        fs::create_dir_all(bus.join("drivers/ioatdma"))?;
        fs::write(bus.join("drivers_probe"), "")?;
        fs::create_dir_all(root.join("dev/vfio"))?;
        fs::write(root.join("dev/vfio/vfio"), "")?;
        for f in fns {
            let d = bus.join("devices").join(f.bdf);
            fs::create_dir_all(&d)?;
            fs::write(d.join("vendor"), format!("{:#06x}\n", f.vendor))?;
            fs::write(d.join("device"), format!("{:#06x}\n", f.device))?;
            fs::write(d.join("class"), "0x088000\n")?;
            fs::write(d.join("numa_node"), format!("{}\n", f.numa))?;
            fs::write(d.join("driver_override"), "(null)\n")?;
            if let Some(drv) = f.driver {
                let dd = bus.join("drivers").join(drv);
                fs::create_dir_all(&dd)?;
                fs::write(dd.join("unbind"), "")?;
                symlink(format!("../../drivers/{drv}"), d.join("driver"))?;
            }
            if let Some(g) = f.group {
                let gd = root.join("sys/kernel/iommu_groups").join(g.to_string());
                fs::create_dir_all(gd.join("devices"))?;
                symlink(
                    format!("../../../../kernel/iommu_groups/{g}"),
                    d.join("iommu_group"),
                )?;
                symlink(&d, gd.join("devices").join(f.bdf))?;
            }
        }
        let mut groups: Vec<u32> = fns.iter().filter_map(|f| f.group).collect();
        groups.sort();
        groups.dedup();
        for g in groups {
            let any_vfio = fns
                .iter()
                .any(|f| f.group == Some(g) && f.driver == Some(VFIO_PCI));
            if any_vfio {
                let name = if noiommu {
                    format!("noiommu-{g}")
                } else {
                    g.to_string()
                };
                fs::write(root.join("dev/vfio").join(name), "")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "ioat-discover-{}-{}-{}",
            name,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&p).unwrap();
        p
    }

    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tree(name: &str, fns: &[FakeFn], noiommu: bool) -> (Tree, Host) {
        let p = tmp(name);
        build(&p, fns, noiommu).unwrap();
        let h = Host::with_root(&p);
        (Tree(p), h)
    }

    fn ioat(bdf: &'static str, device: u16, driver: Option<&'static str>, group: u32) -> FakeFn {
        FakeFn {
            bdf,
            vendor: 0x8086,
            device,
            driver,
            group: Some(group),
            numa: 0,
        }
    }

    fn opts() -> PreflightOptions {
        PreflightOptions {
            memlock_limit: Some(u64::MAX),
            check_access: false,
            ..PreflightOptions::default()
        }
    }

    fn b(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn bdf_parse_and_display() {
        assert_eq!(b("0000:00:04.0").to_string(), "0000:00:04.0");
        assert_eq!(b("00:04.7").to_string(), "0000:00:04.7");
        assert_eq!(b("10000:80:1f.7").domain, 0x10000);
        for bad in [
            "",
            "0000:00:04",
            "00:04.8",
            "0000:00:20.0",
            "zz:00.0",
            "0000:000:04.0",
            "a:b:c:d.0",
        ] {
            let e = bad.parse::<Bdf>().unwrap_err();
            assert!(e.to_string().contains("DDDD:BB:DD.F"), "{bad}: {e}");
        }
    }

    #[test]
    fn scan_finds_only_ioat_with_attributes() {
        let (_t, h) = tree(
            "scan",
            &[
                ioat("0000:00:04.0", 0x2021, Some("ioatdma"), 10),
                ioat("0000:00:04.1", 0x2021, Some(VFIO_PCI), 11),
                FakeFn {
                    bdf: "0000:00:1f.3",
                    vendor: 0x8086,
                    device: 0xa348,
                    driver: Some("snd_hda_intel"),
                    group: Some(12),
                    numa: -1,
                },
                FakeFn {
                    bdf: "0000:80:04.0",
                    vendor: 0x8086,
                    device: 0x0b00,
                    driver: None,
                    group: None,
                    numa: 1,
                },
            ],
            false,
        );
        let l = h.scan_ioat().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].bdf, b("0000:00:04.0"));
        assert_eq!(l[0].driver.as_deref(), Some("ioatdma"));
        assert_eq!(l[0].iommu_group, Some(10));
        assert_eq!(l[0].numa_node, Some(0));
        assert_eq!(l[0].ioat.unwrap().platform, "SKX");
        assert_eq!(l[2].ioat.unwrap().platform, "ICX");
        assert_eq!(l[2].driver, None);
        assert_eq!(l[2].iommu_group, None);
        assert_eq!(l[2].numa_node, Some(1));
        let all = h.all_functions().unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].numa_node, None);
    }

    #[test]
    fn empty_host_lists_nothing() {
        let p = tmp("empty");
        let _t = Tree(p.clone());
        let h = Host::with_root(&p);
        assert!(h.scan_ioat().unwrap().is_empty());
    }

    #[test]
    fn preflight_passes_on_a_good_device() {
        let (_t, h) = tree(
            "good",
            &[ioat("0000:00:04.0", 0x6f20, Some(VFIO_PCI), 7)],
            false,
        );
        let p = h.preflight(&b("0000:00:04.0"), &opts()).unwrap();
        assert_eq!(p.group, 7);
        assert!(!p.noiommu);
        assert!(p.group_node.ends_with("dev/vfio/7"));
        assert_eq!(p.function.ioat.unwrap().platform, "BDX");
    }

    #[test]
    fn preflight_missing_device_names_bdf() {
        let (_t, h) = tree("missing", &[], false);
        let e = h.preflight(&b("0000:00:1f.7"), &opts()).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, PreflightError::NoSuchDevice { .. }));
        assert!(m.starts_with("0000:00:1f.7: no such PCI device"), "{m}");
        assert!(!m.contains('\n'));
    }

    #[test]
    fn preflight_rejects_non_ioat() {
        let (_t, h) = tree(
            "nonioat",
            &[
                FakeFn {
                    bdf: "0000:00:02.0",
                    vendor: 0x1234,
                    device: 0x11e8,
                    driver: Some(VFIO_PCI),
                    group: Some(3),
                    numa: -1,
                },
                FakeFn {
                    bdf: "0000:00:08.0",
                    vendor: 0x8086,
                    device: 0x1a38,
                    driver: None,
                    group: Some(4),
                    numa: -1,
                },
            ],
            false,
        );
        let e = h.preflight(&b("0000:00:02.0"), &opts()).unwrap_err();
        assert!(matches!(e, PreflightError::NotIoat { vendor: 0x1234, .. }));
        assert!(e.to_string().contains("ioat-ctl list"));
        let e = h.preflight(&b("0000:00:08.0"), &opts()).unwrap_err();
        assert!(e.to_string().contains("pre-3.0"), "{e}");
        // The same device passes when the caller expects it (QEMU edu for the VM test).
        let o = PreflightOptions {
            expect: Expect::Id {
                vendor: 0x1234,
                device: 0x11e8,
            },
            ..opts()
        };
        h.preflight(&b("0000:00:02.0"), &o).unwrap();
        let o = PreflightOptions {
            expect: Expect::Id {
                vendor: 0x1234,
                device: 0x11e9,
            },
            ..opts()
        };
        assert!(matches!(
            h.preflight(&b("0000:00:02.0"), &o),
            Err(PreflightError::WrongId { .. })
        ));
    }

    #[test]
    fn preflight_not_bound_gives_bind_commands() {
        let (_t, h) = tree(
            "notbound",
            &[
                ioat("0000:00:04.0", 0x2021, Some("ioatdma"), 1),
                ioat("0000:00:04.1", 0x2021, None, 2),
            ],
            false,
        );
        let e = h.preflight(&b("0000:00:04.0"), &opts()).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("bound to driver ioatdma"), "{m}");
        assert!(m.contains("ioat-ctl bind 0000:00:04.0"), "{m}");
        assert!(m.contains("/sys/bus/pci/devices/0000:00:04.0/driver/unbind"));
        assert!(m.contains("echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override"));
        let m = h
            .preflight(&b("0000:00:04.1"), &opts())
            .unwrap_err()
            .to_string();
        assert!(m.contains("not bound to any driver"), "{m}");
        assert!(!m.contains("driver/unbind"), "{m}");
    }

    #[test]
    fn preflight_vfio_pci_not_loaded() {
        let (t, h) = tree("noload", &[ioat("0000:00:04.0", 0x2021, None, 1)], false);
        fs::remove_dir_all(t.0.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        let e = h.preflight(&b("0000:00:04.0"), &opts()).unwrap_err();
        assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");
    }

    #[test]
    fn preflight_group_checks() {
        let (_t, h) = tree(
            "group",
            &[
                ioat("0000:00:04.0", 0x2021, Some(VFIO_PCI), 5),
                ioat("0000:00:04.1", 0x2021, Some("ioatdma"), 5),
                ioat("0000:00:04.2", 0x2021, None, 5),
                ioat("0000:00:05.0", 0x2021, Some(VFIO_PCI), 6),
                ioat("0000:00:05.1", 0x2021, None, 6),
                FakeFn {
                    bdf: "0000:00:06.0",
                    vendor: 0x8086,
                    device: 0x2021,
                    driver: Some(VFIO_PCI),
                    group: None,
                    numa: 0,
                },
            ],
            false,
        );
        let e = h.preflight(&b("0000:00:04.0"), &opts()).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, PreflightError::GroupNotViable { group: 5, .. }));
        assert!(m.contains("0000:00:04.1 (bound to ioatdma)"), "{m}");
        assert!(!m.contains("04.2"), "unbound members are fine: {m}");
        // Members with no driver are viable.
        h.preflight(&b("0000:00:05.0"), &opts()).unwrap();
        let e = h.preflight(&b("0000:00:06.0"), &opts()).unwrap_err();
        assert!(e.to_string().contains("intel_iommu=on"), "{e}");
    }

    #[test]
    fn preflight_missing_node_and_access() {
        let (t, h) = tree(
            "node",
            &[ioat("0000:00:04.0", 0x2021, Some(VFIO_PCI), 9)],
            false,
        );
        let bdf = b("0000:00:04.0");
        // Access check on a node we own: passes (mode 0644 file owned by us is rw for us).
        let o = PreflightOptions {
            check_access: true,
            ..opts()
        };
        h.preflight(&bdf, &o).unwrap();
        fs::remove_file(t.0.join("dev/vfio/9")).unwrap();
        let e = h.preflight(&bdf, &opts()).unwrap_err();
        assert!(e.to_string().contains("/dev/vfio/9 does not exist"), "{e}");
    }

    #[test]
    fn preflight_noiommu_requires_consent() {
        let (_t, h) = tree(
            "noiommu",
            &[ioat("0000:00:04.0", 0x2021, Some(VFIO_PCI), 0)],
            true,
        );
        let bdf = b("0000:00:04.0");
        let e = h.preflight(&bdf, &opts()).unwrap_err();
        assert!(matches!(e, PreflightError::NoiommuRefused { .. }));
        assert!(e.to_string().contains("/dev/vfio/noiommu-0"), "{e}");
        let o = PreflightOptions {
            allow_noiommu: true,
            ..opts()
        };
        let p = h.preflight(&bdf, &o).unwrap();
        assert!(p.noiommu);
        assert!(p.group_node.ends_with("noiommu-0"));
    }

    #[test]
    fn preflight_memlock() {
        let (_t, h) = tree(
            "memlock",
            &[ioat("0000:00:04.0", 0x2021, Some(VFIO_PCI), 1)],
            false,
        );
        let o = PreflightOptions {
            memlock_limit: Some(64 << 10),
            memlock_needed: 16 << 20,
            ..opts()
        };
        let e = h.preflight(&b("0000:00:04.0"), &o).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("ulimit -l"), "{m}");
        assert!(m.contains("65536"), "{m}");
    }

    #[test]
    fn bind_and_unbind_write_the_right_attributes() {
        let (t, h) = tree(
            "bind",
            &[
                ioat("0000:00:04.0", 0x2021, Some("ioatdma"), 1),
                ioat("0000:00:04.1", 0x2021, Some(VFIO_PCI), 2),
                FakeFn {
                    bdf: "0000:00:02.0",
                    vendor: 0x1234,
                    device: 0x11e8,
                    driver: None,
                    group: Some(3),
                    numa: -1,
                },
            ],
            false,
        );
        let dev = t.0.join("sys/bus/pci/devices/0000:00:04.0");
        // The fake kernel does not rebind, so bind reports it precisely.
        let e = h.bind(&b("0000:00:04.0"), Expect::Ioat).unwrap_err();
        assert!(matches!(e, BindError::DidNotBind { .. }), "{e}");
        assert_eq!(
            fs::read_to_string(dev.join("driver_override")).unwrap(),
            "vfio-pci"
        );
        assert_eq!(
            fs::read_to_string(t.0.join("sys/bus/pci/drivers/ioatdma/unbind")).unwrap(),
            "0000:00:04.0"
        );
        assert_eq!(
            fs::read_to_string(t.0.join("sys/bus/pci/drivers_probe")).unwrap(),
            "0000:00:04.0"
        );
        // Already bound: no writes, reported as such.
        let r = h.bind(&b("0000:00:04.1"), Expect::Ioat).unwrap();
        assert!(r.already);
        // Non-I/OAT refused unless expected.
        assert!(matches!(
            h.bind(&b("0000:00:02.0"), Expect::Ioat),
            Err(BindError::Preflight(PreflightError::NotIoat { .. }))
        ));
        // Unbind.
        let r = h.unbind(&b("0000:00:04.1"), true).unwrap();
        assert_eq!(r.previous_driver.as_deref(), Some(VFIO_PCI));
        assert_eq!(
            fs::read_to_string(t.0.join("sys/bus/pci/drivers/vfio-pci/unbind")).unwrap(),
            "0000:00:04.1"
        );
        let e = h.unbind(&b("0000:00:04.0"), false).unwrap_err();
        assert!(matches!(e, BindError::NotVfio { .. }));
        let e = h.unbind(&b("0000:00:09.0"), false).unwrap_err();
        assert!(e.to_string().contains("no such PCI device"));
    }
}
