//! A software I/OAT (Crystal Beach DMA) device behind the same [`RegisterAccess`](crate::regs::RegisterAccess) trait as the
//! VFIO BAR mapping, strict enough that a driver passing it means something.
//!
//! What it models (`docs/driver.md`, section "Device model", and the fidelity table at its end,
//! which defines every rule id used here in words, with its source):
//! - the general and per-channel register file with reset values, access widths and
//!   read-only / read-write / write-1-to-clear semantics;
//! - PCI configuration space with a capability list (MSI-X, PCI Express), 1/2/4-byte accesses,
//!   memory decode and bus mastering enforced, and the I/OAT config registers (CHANERR_INT below
//!   CB3.3, DMAUNCERRSTS, CHANERRMASK_INT);
//! - a virtual timeline per channel: the channel follows `next` from CHAINADDR while its internal
//!   16-bit count differs from DMACOUNT, executes copy / fill / null (and page-break) descriptors
//!   through the model's IOVA translation table only, writes the CHANSTS image to the completion
//!   address, and halts with the right CHANERR bit on a bad address, size or opcode. An engine
//!   thread per channel and every register access advance it, so what a register reads depends
//!   on the model's virtual time, not on host scheduling;
//! - CHANCMD SUSPEND / RESUME / RESET with the channel states ACTIVE, DONE, SUSPENDED, HALTED
//!   and ARMED;
//! - interrupts: INTRCTRL, ATTNSTATUS, INT_REARM, INTRDELAY coalescing, the MSI-X table and PBA
//!   in BAR0 with masking, delivered to eventfd-like sinks ([`ModelIrq`]);
//! - per-part errata: the TBG0 parity bit after a restart, the BWD/BDX-DE reset clearing MSI-X;
//! - a strict mode that records faults in two classes ([`FaultClass`]): device errors the
//!   hardware reports (CHANERR and a halt) and misuse it would punish silently; each tagged with
//!   a rule id (model-local ids `R1`-`R5` for the register map, reset, decode and bus mastering);
//! - a timing model (instant, or per-descriptor latency plus bytes/s) and fault injection.
//!
//! Typical use:
//! ```
//! use ioat_driver::model::{ModelConfig, ModelDevice, Preset};
//! use ioat_driver::regs::{general, RegisterAccess};
//! let dev = ModelDevice::new(ModelConfig::preset(Preset::Skx));
//! assert_eq!(dev.read8(general::CBVER), 0x33);
//! let _mapper = dev.mapper(); // hand this to the driver's DMA memory
//! ```

mod config;
mod device;
mod engine;
mod irq;
mod mem;
mod regfile;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use config::{MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET};
pub use device::ModelDevice;
pub use irq::ModelIrq;
pub use mem::ModelMapper;

use crate::regs::{cap, CbVersion};

/// CPU generations the model can imitate (facts §1.3, §3; rules V1-V3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Skylake-SP, 8086:2021. Linux treats it as CB3.2; the VFIO selftest accepts CBVER 0x32 or
    /// 0x33. The model reports 0x33 (so no CHANERR_INT, rule E2).
    Skx,
    /// Broadwell-EP, 8086:6f20, CB3.2 (has CHANERR_INT).
    Bdx,
    /// Ice Lake-SP, 8086:0b00, CB3.4 with descriptor prefetch (DPS) and its extra registers.
    Icx,
}

/// What strict mode does with a detected misuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StrictMode {
    /// Detect nothing (the device still halts on descriptor errors, as hardware does).
    Off,
    /// Record every violation; read them with [`ModelDevice::violations`].
    #[default]
    Record,
    /// Record and panic in the driver's thread at the access that caused it (or, for a
    /// violation found by the engine, at the driver's next register access).
    Panic,
}

/// How long descriptors take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Timing {
    /// Descriptors complete as fast as the engine thread runs (for overhead benchmarks).
    #[default]
    Instant,
    /// Each descriptor takes `per_desc` plus `bytes / bytes_per_sec` (sleeps in the engine
    /// thread, so granularity is the OS timer's, tens of microseconds).
    Modeled {
        per_desc: Duration,
        bytes_per_sec: u64,
    },
}

/// Model configuration. Build with [`ModelConfig::preset`] and adjust the pub fields or use the
/// builder methods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// Reported PCI device id (vendor is always 0x8086).
    pub device_id: u16,
    /// CBVER register value (0x32, 0x33, 0x34 ...).
    pub cbver: u8,
    /// Channels in this function (CHANCNT). Real Xeon parts expose one channel per PCI
    /// function; more are allowed for tests.
    pub chancnt: u8,
    /// XFERCAP: log2 of the largest descriptor size.
    pub xfercap_log: u8,
    /// DMACAPABILITY register value.
    pub dmacap: u32,
    pub strict: StrictMode,
    pub timing: Timing,
    /// Optional extra latency of every MMIO read (reads are non-posted on real hardware,
    /// around a microsecond); spun in the caller's thread. Writes are posted and free.
    pub mmio_latency: Option<Duration>,
    /// How long CHANCMD.RESET stays set after it is written.
    pub reset_delay: Duration,
    /// PCI COMMAND at power-on. The presets use MEMORY only: what a function looks like once
    /// vfio-pci has opened it (memory decode on, bus mastering off until the driver sets it).
    pub pci_command: u16,
    /// Reorder work the way a missing fence allows (hardware rule O6): when a descriptor
    /// without the fence bit is followed by a copy, that copy's source is read before the
    /// first descriptor's destination is written. Off in the presets (then execution is
    /// strictly in order and a fence changes nothing observable).
    pub reorder_unfenced: bool,
}

/// Default XFERCAP of the presets: 1 MiB per descriptor. The real SKX/BDX/ICX value is not in
/// any source we have (facts §7, "value not documented"); SPDK requires at least 12 (rule S3).
pub const DEFAULT_XFERCAP_LOG: u8 = 20;

impl ModelConfig {
    /// A preset for one CPU generation: one channel, XFERCAP 2^20, strict mode `Record`,
    /// instant timing.
    ///
    /// DMACAPABILITY: FILL_BLOCK (0x40) is set on every preset. SPDK and FreeBSD only issue a
    /// fill when this bit is set (rule O5) and SPDK offers fill on all the parts it binds; no
    /// source gives the exact register value, so this is a model choice. XOR/PQ are not
    /// reported because Linux masks RAID off on every Xeon CB3.2 part (rule O4) and the model
    /// does not implement them. DCA is reported on SKX/BDX (Linux disables DCA for >= 3.4);
    /// ICX reports DPS (0x800000, rule A5/V3).
    pub fn preset(p: Preset) -> ModelConfig {
        let (device_id, cbver, dmacap) = match p {
            Preset::Skx => (0x2021, 0x33, cap::FILL_BLOCK | cap::DCA),
            Preset::Bdx => (0x6f20, 0x32, cap::FILL_BLOCK | cap::DCA),
            Preset::Icx => (0x0b00, 0x34, cap::FILL_BLOCK | cap::DPS),
        };
        ModelConfig {
            device_id,
            cbver,
            chancnt: 1,
            xfercap_log: DEFAULT_XFERCAP_LOG,
            dmacap,
            strict: StrictMode::Record,
            timing: Timing::Instant,
            mmio_latency: None,
            reset_delay: Duration::from_micros(5),
            pci_command: crate::regs::pci::COMMAND_MEMORY,
            reorder_unfenced: false,
        }
    }

    /// PCI COMMAND at power-on (see [`ModelConfig::pci_command`]).
    pub fn pci_command(mut self, c: u16) -> Self {
        self.pci_command = c;
        self
    }
    /// See [`ModelConfig::reorder_unfenced`].
    pub fn reorder_unfenced(mut self, on: bool) -> Self {
        self.reorder_unfenced = on;
        self
    }

    pub fn chancnt(mut self, n: u8) -> Self {
        self.chancnt = n;
        self
    }
    pub fn xfercap_log(mut self, x: u8) -> Self {
        self.xfercap_log = x;
        self
    }
    pub fn dmacap(mut self, c: u32) -> Self {
        self.dmacap = c;
        self
    }
    pub fn cbver(mut self, v: u8) -> Self {
        self.cbver = v;
        self
    }
    pub fn device_id(mut self, id: u16) -> Self {
        self.device_id = id;
        self
    }
    /// Turns the FILL_BLOCK capability on or off.
    pub fn fill(mut self, on: bool) -> Self {
        if on {
            self.dmacap |= cap::FILL_BLOCK;
        } else {
            self.dmacap &= !cap::FILL_BLOCK;
        }
        self
    }
    pub fn strict(mut self, s: StrictMode) -> Self {
        self.strict = s;
        self
    }
    pub fn timing(mut self, t: Timing) -> Self {
        self.timing = t;
        self
    }
    pub fn mmio_latency(mut self, d: Option<Duration>) -> Self {
        self.mmio_latency = d;
        self
    }
    pub fn reset_delay(mut self, d: Duration) -> Self {
        self.reset_delay = d;
        self
    }

    pub fn version(&self) -> CbVersion {
        CbVersion(self.cbver)
    }

    /// Largest descriptor size in bytes (`1 << XFERCAP`; XFERCAP 0 means 4 GiB as in SPDK).
    pub fn max_xfer(&self) -> u64 {
        match self.xfercap_log & 0x1f {
            0 => 1 << 32,
            x => 1u64 << x,
        }
    }

    fn has_dps(&self) -> bool {
        self.dmacap & cap::DPS != 0
    }
}

/// A fault to inject into one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The `nth` descriptor the channel executes from now on (1 = the next one) is not
    /// executed: CHANERR gets `bits` and the channel halts, as on a real error. One-shot.
    ChanErrOnNth { nth: u64, bits: u32 },
    /// After `after` more descriptors the channel stops processing silently: CHANSTS keeps
    /// reading ACTIVE and nothing completes, until CHANCMD.RESET.
    Hang { after: u64 },
    /// Every descriptor takes `extra` longer (until [`ModelDevice::clear_faults`]).
    Slow { extra: Duration },
}

/// How strongly the sources back a rule (the tags of the fidelity table in `docs/driver.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleTag {
    /// A source states it.
    Stated,
    /// Every source behaves this way, none states it.
    Behaviour,
    /// Our inference.
    Inferred,
}

impl std::fmt::Display for RuleTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuleTag::Stated => "stated",
            RuleTag::Behaviour => "behaviour",
            RuleTag::Inferred => "inferred",
        })
    }
}

/// Whether a violation is a hard fault or a warning (`docs/driver.md`): \[stated\]
/// rules, and anything that makes the model raise a CHANERR bit, are errors; the rest warnings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// Who tells the driver about a fault: the two classes are kept apart in every report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// The hardware reports it itself: a CHANERR bit and a halt (for example a DMA to an
    /// unmapped IOVA, a size-0 descriptor, an unknown opcode). A driver sees it in CHANERR and
    /// can handle it; drivers provoke some on purpose (the kernel's VFIO selftest maps nothing
    /// and copies from it). The class says who reports it, not who is to blame.
    DeviceError,
    /// Misuse the hardware would punish silently (a dropped or torn access, a doorbell lost
    /// in a reset, DMA with bus mastering off): nothing in the device says so; only the model
    /// can flag it.
    Misuse,
}

impl std::fmt::Display for FaultClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultClass::DeviceError => "device-error",
            FaultClass::Misuse => "misuse",
        })
    }
}

/// One detected fault: a device error the hardware reports, or a misuse it would not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Device error (reported by the hardware in CHANERR) or silent misuse.
    pub class: FaultClass,
    /// Rule id of the fidelity table in `docs/driver.md` (`W7`, `A1`, `S1`, `D6` ...) or
    /// model-local `R1` (write to a read-only register), `R2` (access to an undefined offset or
    /// a bad config access), `R3` (access lost to a pending reset), `R4` (MMIO without memory
    /// decode), `R5` (DMA without bus mastering).
    pub rule: &'static str,
    pub tag: RuleTag,
    pub severity: Severity,
    /// Channel concerned, if any.
    pub channel: Option<u32>,
    /// Register name (`"CHAINADDR"`), or `"descriptor"` for violations found by the engine.
    pub register: &'static str,
    /// BAR0 offset accessed (for descriptor violations: the channel's base).
    pub offset: u32,
    /// Access width in bytes (0 for descriptor violations).
    pub width: u8,
    /// Descriptor IOVA for descriptor violations.
    pub iova: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}] {:?}: {} @ {:#x}/{}",
            self.rule, self.tag, self.severity, self.register, self.offset, self.width
        )?;
        if let Some(c) = self.channel {
            write!(f, " ch{c}")?;
        }
        if let Some(i) = self.iova {
            write!(f, " desc {i:#x}")?;
        }
        write!(f, " ({}): {}", self.class, self.message)
    }
}

/// Per-channel counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Descriptors completed (copy, fill and null).
    pub descriptors: u64,
    /// Bytes copied or filled.
    pub bytes: u64,
    pub copies: u64,
    pub fills: u64,
    pub nulls: u64,
    /// Completion writebacks made (successful descriptors and halts).
    pub writebacks: u64,
    /// DMACOUNT writes.
    pub doorbells: u64,
    /// Times the channel halted with an error.
    pub halts: u64,
    /// Descriptors that asked for an interrupt (`int_en`).
    pub interrupts_requested: u64,
    /// Interrupt events raised: an `int_en` completion (or, with ERR_INT_EN, a halt) while
    /// CHANCTRL.INT_REARM was set. Each consumes INT_REARM.
    pub interrupts_raised: u64,
    /// Interrupt requests that found INT_REARM clear (the driver had not re-armed): dropped.
    pub interrupts_not_armed: u64,
    /// Messages sent to a sink (MSI-X vector or the INTx line), after coalescing.
    pub interrupts_delivered: u64,
}
