//! The model device: register file, MMIO semantics and the channel state machine. The engine
//! threads that execute descriptors live in `engine.rs`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::config::Pci;
use super::engine::{advance, Pending, Who};
use super::irq::ModelIrq;
use super::mem::{Mem, ModelMapper, Table};
use super::regfile::{lookup, Kind, Reg};
use super::{Fault, FaultClass, ModelConfig, ModelStats, RuleTag, Severity, StrictMode, Violation};
use crate::dma::DmaMapper;
use crate::regs::{chancmd, chanctrl, channel_base, general, ChanState, RegisterAccess};

/// Which halves of a 64-bit register the driver has written since its last complete write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Half {
    Both,
    LowOnly,
    HighOnly,
}

/// One channel's registers and engine state.
pub(crate) struct Chan {
    pub chanctrl: u16,
    pub dmacount: u16,
    pub chainaddr: u64,
    pub chancmp: u64,
    pub cdar: u64,
    pub chanerr: u32,
    pub chanerr_mask: u32,
    pub dcactrl: u32,
    pub drsctl: u16,
    pub ltr_swsel: u8,
    pub ltr_active: u32,
    pub ltr_idle: u32,

    pub state: ChanState,
    /// IOVA of the last completed descriptor (CHANSTS bits 63:6).
    pub completed: u64,
    /// The engine's internal 16-bit descriptor count since the last CHAINADDR write / reset.
    pub count: u16,
    /// Where the next descriptor comes from: `None` = CHAINADDR, else the last `next`.
    pub next_fetch: Option<u64>,
    /// CHANCMD.RESET reads set until this instant.
    pub reset_until: Option<Instant>,
    /// CHAINADDR was written while the reset was pending: arm when it completes.
    pub arm_after_reset: bool,
    /// CHAINADDR written since the last reset (rule D6).
    pub chainaddr_written: bool,
    pub chainaddr_half: Half,
    pub chancmp_half: Half,
    /// The low dword of CHANSTS was read last (rule W3 check for split reads).
    pub chansts_low_read: bool,
    /// SUSPEND arrived while the engine was executing a descriptor.
    pub suspend_req: bool,
    /// The engine is executing a descriptor outside the lock.
    pub busy: bool,
    /// Bumped on reset and on arming; a descriptor finishing under an older generation is
    /// discarded.
    pub gen: u64,
    /// Cached number of distinct descriptors reachable from CHAINADDR (rule D4 check).
    pub reachable: Option<u32>,

    pub fault_err: Option<(u64, u32)>,
    pub hang_after: Option<u64>,
    pub hung: bool,
    pub slow: Duration,
    /// The descriptor started last, completing at its virtual end time.
    pub pending: Option<Pending>,
    /// Virtual time at which the next descriptor may start: the doorbell that made the
    /// channel ACTIVE, then the end of the previous descriptor. Register state is computed
    /// from it on every access, so it does not depend on when a thread got the CPU.
    pub vstart: Instant,
    /// An interrupt message waiting for its INTRDELAY to pass (virtual time).
    pub irq_due: Option<Instant>,
    /// Bus mastering was off when the channel wanted to fetch (flagged once per stall).
    pub bme_stalled: bool,
    /// Source bytes of the next copy, read early because the current descriptor had no fence
    /// (`ModelConfig::reorder_unfenced`): (descriptor IOVA, bytes).
    pub prefetched: Option<(u64, Vec<u8>)>,

    pub stats: ModelStats,
}

impl Chan {
    fn new() -> Chan {
        Chan {
            chanctrl: 0,
            dmacount: 0,
            chainaddr: 0,
            chancmp: 0,
            cdar: 0,
            chanerr: 0,
            chanerr_mask: 0,
            dcactrl: 0,
            drsctl: 0,
            ltr_swsel: 0,
            ltr_active: 0,
            ltr_idle: 0,
            // Power-on state: as after a reset (rule C2).
            state: ChanState::Halted,
            completed: 0,
            count: 0,
            next_fetch: None,
            reset_until: None,
            arm_after_reset: false,
            chainaddr_written: false,
            chainaddr_half: Half::Both,
            chancmp_half: Half::Both,
            chansts_low_read: false,
            suspend_req: false,
            busy: false,
            gen: 0,
            reachable: None,
            fault_err: None,
            hang_after: None,
            hung: false,
            slow: Duration::ZERO,
            pending: None,
            vstart: Instant::now(),
            irq_due: None,
            bme_stalled: false,
            prefetched: None,
            stats: ModelStats::default(),
        }
    }

    pub fn chansts(&self) -> u64 {
        if self.reset_until.is_some() {
            return ChanState::Halted.bits();
        }
        self.completed | self.state.bits()
    }

    /// CHAINADDR taken: ARMED, internal count and completed address back to 0 (rules C3, C7,
    /// D2, D3).
    fn arm(&mut self) {
        self.state = ChanState::Armed;
        self.count = 0;
        self.completed = 0;
        self.next_fetch = None;
        self.suspend_req = false;
        self.reachable = None;
        self.pending = None;
        self.prefetched = None;
        self.gen += 1;
        // The channel starts on the next DMACOUNT write, not here.
    }

    /// Called after DMACOUNT changes: start if work is pending. The first descriptor starts
    /// (in virtual time) at `now`, the doorbell.
    fn kick(&mut self, now: Instant) {
        if matches!(self.state, ChanState::Armed | ChanState::Done) && self.count != self.dmacount {
            self.state = ChanState::Active;
            self.vstart = now;
        }
    }

    /// CHANCMD.RESET: the channel returns to HALTED with its chain state cleared. CHANCTRL is
    /// cleared (DPDK fix d486f1dad1, rule T4: the value written at probe was lost across a
    /// stop's RESET); CHANCMP and CHAINADDR too, an inference (every driver rewrites them after
    /// a reset: Linux `ioat_restart_channel`, DPDK `__ioat_recover`). CHANERR is NOT cleared:
    /// the driver clears it (rules E1, E2, E5).
    fn reset(&mut self, until: Instant) {
        self.chanctrl = 0;
        self.dmacount = 0;
        self.chainaddr = 0;
        self.chancmp = 0;
        self.cdar = 0;
        self.state = ChanState::Halted;
        self.completed = 0;
        self.count = 0;
        self.next_fetch = None;
        self.pending = None;
        self.prefetched = None;
        self.irq_due = None;
        self.bme_stalled = false;
        self.reset_until = Some(until);
        self.arm_after_reset = false;
        self.chainaddr_written = false;
        self.chainaddr_half = Half::Both;
        self.chancmp_half = Half::Both;
        self.suspend_req = false;
        self.gen += 1;
        self.reachable = None;
        self.hung = false;
        self.hang_after = None;
    }
}

/// Device-wide state behind one lock.
pub(crate) struct DevState {
    pub genctrl: u8,
    pub intrctrl: u8,
    pub intrdelay: u16,
    pub prefetch_limit: u8,
    /// One bit per channel with an interrupt event not yet acknowledged by a re-arm.
    pub attnstatus: u32,
    pub pci: Pci,
    /// MSI-X table: per vector address low, address high, data, vector control (bit 0 masks).
    pub msix: Vec<[u32; 4]>,
    /// MSI-X pending bits, one per vector.
    pub pba: u64,
    pub chans: Vec<Chan>,
    pub violations: Vec<Violation>,
    pub panic_pending: Option<String>,
}

pub(crate) struct Shared {
    pub cfg: ModelConfig,
    pub st: Mutex<DevState>,
    pub cv: Condvar,
    pub mem: Arc<Mem>,
    pub shutdown: AtomicBool,
    /// One sink per MSI-X vector (vector n serves channel n, as in Linux).
    pub msix_sinks: Vec<Arc<ModelIrq>>,
    /// The INTx line (the model does not tell MSI from INTx: one shared message).
    pub intx_sink: Arc<ModelIrq>,
}

/// Arguments of a violation report, bundled.
pub(crate) struct V {
    pub class: FaultClass,
    pub rule: &'static str,
    pub tag: RuleTag,
    pub severity: Severity,
    pub channel: Option<usize>,
    pub register: &'static str,
    pub offset: u32,
    pub width: u8,
    pub iova: Option<u64>,
}

impl V {
    pub fn reg(
        rule: &'static str,
        tag: RuleTag,
        severity: Severity,
        channel: Option<usize>,
        register: &'static str,
        offset: u32,
        width: u8,
    ) -> V {
        V {
            class: FaultClass::Misuse,
            rule,
            tag,
            severity,
            channel,
            register,
            offset,
            width,
            iova: None,
        }
    }

    /// Reclassifies as misuse (a descriptor-time problem the hardware does not report).
    pub fn misuse(mut self) -> V {
        self.class = FaultClass::Misuse;
        self
    }

    /// A descriptor fault: the hardware reports it (CHANERR and a halt).
    pub fn desc(rule: &'static str, tag: RuleTag, channel: usize, iova: u64) -> V {
        V {
            class: FaultClass::DeviceError,
            rule,
            tag,
            severity: Severity::Error,
            channel: Some(channel),
            register: "descriptor",
            offset: channel_base(channel as u32),
            width: 0,
            iova: Some(iova),
        }
    }
}

impl Shared {
    pub fn has_chanerr_int(&self) -> bool {
        self.cfg.version().has_chanerr_int()
    }

    /// Records a violation according to the strict mode.
    pub fn violate(&self, st: &mut DevState, v: V, message: String) {
        if self.cfg.strict == StrictMode::Off {
            return;
        }
        let viol = Violation {
            class: v.class,
            rule: v.rule,
            tag: v.tag,
            severity: v.severity,
            channel: v.channel.map(|c| c as u32),
            register: v.register,
            offset: v.offset,
            width: v.width,
            iova: v.iova,
            message,
        };
        if self.cfg.strict == StrictMode::Panic && st.panic_pending.is_none() {
            st.panic_pending = Some(viol.to_string());
        }
        st.violations.push(viol);
    }

    /// The channel may leave HALTED only with CHANERR (and CHANERR_INT below 3.3) clear
    /// (rule E2, SPDK 9b172afdb6).
    pub fn can_resume(&self, st: &DevState, ch: usize) -> bool {
        st.chans[ch].chanerr == 0 && !(self.has_chanerr_int() && st.pci.chanerr_int != 0)
    }

    /// Brings the whole device to virtual time `now`: completes due resets, completes and
    /// starts the descriptors whose time has come (in the caller's thread if the engine
    /// thread has not got there yet), and sends interrupt messages whose delay has passed.
    /// Every register access calls this first, so what it observes is a function of the
    /// time of the access, not of when the engine threads were scheduled.
    /// Returns whether a descriptor was started or completed (the engines then re-plan).
    pub fn sync(&self, st: &mut parking_lot::MutexGuard<'_, DevState>, now: Instant) -> bool {
        self.tick(st, now);
        let mut changed = false;
        for ch in 0..st.chans.len() {
            changed |= advance(self, st, ch, now, Who::Access);
        }
        super::irq::deliver_due(self, st, now);
        changed
    }

    /// Completes resets whose delay has passed.
    pub fn tick(&self, st: &mut DevState, now: Instant) {
        for ch in 0..st.chans.len() {
            let c = &mut st.chans[ch];
            match c.reset_until {
                Some(t) if t <= now => {
                    c.reset_until = None;
                    // Rule E3: on TBG0 (8086:3430, below CB3.3) a restart leaves a spurious
                    // config parity error in DMAUNCERRSTS (bit 0x10) that Linux clears.
                    if self.cfg.device_id == 0x3430 && self.cfg.cbver < 0x33 {
                        st.pci.dmauncerrsts |= 0x10;
                    }
                    let c = &mut st.chans[ch];
                    if c.arm_after_reset {
                        c.arm_after_reset = false;
                        self.try_arm(st, ch);
                    }
                }
                _ => {}
            }
        }
    }

    fn try_arm(&self, st: &mut DevState, ch: usize) {
        if st.chans[ch].state == ChanState::Halted && !self.can_resume(st, ch) {
            let (e, ei) = (st.chans[ch].chanerr, st.pci.chanerr_int);
            self.violate(
                st,
                V::reg(
                    "E2",
                    RuleTag::Stated,
                    Severity::Error,
                    Some(ch),
                    "CHAINADDR",
                    channel_base(ch as u32) + crate::regs::chan::CHAINADDR,
                    8,
                ),
                format!(
                    "CHAINADDR written on a HALTED channel with CHANERR={e:#x}{}: the device refuses to resume until CHANERR{} is cleared (write its bits back)",
                    if self.has_chanerr_int() { format!(", CHANERR_INT={ei:#x}") } else { String::new() },
                    if self.has_chanerr_int() { " and CHANERR_INT (PCI config 0x180)" } else { "" },
                ),
            );
            return;
        }
        st.chans[ch].arm();
    }

    /// Halts channel `ch` with CHANERR `bits`, writing the halt status to the completion
    /// address when ERR_COMPLETION_EN is set (rule E7). The model halts on every error, with or
    /// without ANY_ERR_ABORT_EN (no source describes the other case).
    pub fn halt(&self, st: &mut DevState, ch: usize, bits: u32, table: Option<&Table>) {
        let has_int = self.has_chanerr_int();
        if has_int {
            st.pci.chanerr_int |= bits;
        }
        let master = st.pci.master();
        let c = &mut st.chans[ch];
        c.chanerr |= bits;
        c.state = ChanState::Halted;
        c.suspend_req = false;
        c.pending = None;
        c.stats.halts += 1;
        let at = c.vstart;
        if c.chanctrl & chanctrl::ERR_INT_EN != 0 {
            super::irq::raise(st, ch, at);
        }
        let c = &mut st.chans[ch];
        if master && c.chanctrl & chanctrl::ERR_COMPLETION_EN != 0 {
            let img = c.completed | ChanState::Halted.bits();
            let ok = match table {
                Some(t) => writeback(t, c.chancmp, img),
                None => writeback(&self.mem.read(), c.chancmp, img),
            };
            if ok {
                c.stats.writebacks += 1;
            } else {
                c.chanerr |= crate::regs::chanerr::COMPLETION_ADDR;
                if has_int {
                    st.pci.chanerr_int |= crate::regs::chanerr::COMPLETION_ADDR;
                }
            }
        }
    }

    /// Number of distinct descriptors reachable from `start` by following `next` (at most
    /// 65536), stopping at an unmapped or misaligned link.
    fn reachable(&self, start: u64) -> u32 {
        let t = self.mem.read();
        let mut seen = HashSet::new();
        let mut a = start;
        while seen.len() < 65536 && a & 0x3f == 0 && seen.insert(a) {
            match t.translate(a + 0x18, 8) {
                Some(p) => {
                    // SAFETY: the range is inside a live mapping (read guard held); the
                    // mapper's contract keeps the memory allocated. Unaligned-safe volatile
                    // read of 8 bytes.
                    a = unsafe { std::ptr::read_volatile(p as *const [u8; 8]) }
                        .pipe(u64::from_le_bytes)
                }
                None => break,
            }
        }
        seen.len() as u32
    }
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl<T> Pipe for T {}

/// Writes a completion image (CHANSTS format) to IOVA `addr`. False if the address is
/// misaligned (rule A2: 8-byte alignment) or not mapped.
pub(crate) fn writeback(t: &Table, addr: u64, img: u64) -> bool {
    if addr & 7 != 0 {
        return false;
    }
    match t.translate(addr, 8) {
        Some(p) => {
            // SAFETY: `p` points into a live mapping for 8 bytes (the caller holds the table's
            // read guard, so it cannot be unmapped, and the `DmaMapper::map` contract keeps the
            // memory allocated). Mappings start page-aligned on both sides, so `p` has the
            // IOVA's 8-byte alignment. The driver reads this word concurrently, so it is
            // written atomically with release ordering: the data written before it is visible
            // to whoever observes the new value.
            let a = unsafe { std::sync::atomic::AtomicU64::from_ptr(p as *mut u64) };
            a.store(img.to_le(), Ordering::Release);
            true
        }
        None => false,
    }
}

/// MSI-X table entry at reset: address and data 0, vector masked (PCI spec).
pub(crate) const MSIX_ENTRY_RESET: [u32; 4] = [0, 0, 0, 1];

/// Rule I3: BWD (8086:0c50-0c53) and BDX-DE (8086:6f50-6f53) clear their MSI-X registers on
/// a channel reset.
pub(crate) fn reset_clears_msix(device_id: u16) -> bool {
    matches!(device_id, 0x0c50..=0x0c53 | 0x6f50..=0x6f53)
}

/// A software I/OAT device. See the module docs.
pub struct ModelDevice {
    pub(crate) sh: Arc<Shared>,
    mapper: Arc<ModelMapper>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ModelDevice {
    /// Creates the device (channels HALTED as after reset) and starts one engine thread per
    /// channel.
    pub fn new(cfg: ModelConfig) -> Arc<ModelDevice> {
        let mem = Arc::new(Mem::new());
        let n = cfg.chancnt as usize;
        let sh = Arc::new(Shared {
            st: Mutex::new(DevState {
                genctrl: 0,
                intrctrl: 0,
                intrdelay: crate::regs::general::INTRDELAY_COALESCE_SUPPORT,
                prefetch_limit: 0,
                attnstatus: 0,
                pci: Pci::new(cfg.pci_command),
                msix: vec![MSIX_ENTRY_RESET; n.max(1)],
                pba: 0,
                chans: (0..n).map(|_| Chan::new()).collect(),
                violations: Vec::new(),
                panic_pending: None,
            }),
            cfg,
            cv: Condvar::new(),
            mem: mem.clone(),
            shutdown: AtomicBool::new(false),
            msix_sinks: (0..n.max(1))
                .map(|_| Arc::new(ModelIrq::default()))
                .collect(),
            intx_sink: Arc::new(ModelIrq::default()),
        });
        let threads = (0..n)
            .map(|ch| {
                let sh = sh.clone();
                std::thread::Builder::new()
                    .name(format!("ioat-model-ch{ch}"))
                    .spawn(move || super::engine::run(sh, ch))
                    .expect("spawn model engine thread")
            })
            .collect();
        Arc::new(ModelDevice {
            sh,
            mapper: Arc::new(ModelMapper { mem }),
            threads: Mutex::new(threads),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.sh.cfg
    }

    /// The model's IOMMU: map DMA memory through it; the device reaches memory only through it.
    pub fn mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }

    /// The mapper with its concrete type (for `mapping_count`).
    pub fn model_mapper(&self) -> Arc<ModelMapper> {
        self.mapper.clone()
    }

    /// Injects a fault into `channel`. Panics if the channel does not exist.
    pub fn inject(&self, channel: u32, fault: Fault) {
        let mut st = self.sh.st.lock();
        let c = &mut st.chans[channel as usize];
        match fault {
            Fault::ChanErrOnNth { nth, bits } => c.fault_err = Some((nth.max(1), bits)),
            Fault::Hang { after } => c.hang_after = Some(after),
            Fault::Slow { extra } => c.slow = extra,
        }
        self.sh.cv.notify_all();
    }

    /// Removes pending injected faults (a hang already in effect lasts until reset).
    pub fn clear_faults(&self, channel: u32) {
        let mut st = self.sh.st.lock();
        let c = &mut st.chans[channel as usize];
        c.fault_err = None;
        c.hang_after = None;
        c.slow = Duration::ZERO;
    }

    /// Violations recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.sh.st.lock().violations.clone()
    }

    /// Violations recorded so far, clearing the list.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut self.sh.st.lock().violations)
    }

    /// Counters of `channel`.
    pub fn stats(&self, channel: u32) -> ModelStats {
        self.sh.st.lock().chans[channel as usize].stats
    }

    /// The channel state, without an MMIO access (for tests and debugging).
    pub fn chan_state(&self, channel: u32) -> ChanState {
        let mut st = self.sh.st.lock();
        let changed = self.sh.sync(&mut st, Instant::now());
        let s = ChanState::from_bits(st.chans[channel as usize].chansts());
        self.finish(st, changed);
        s
    }

    /// Misuse recorded so far: what the hardware would not report (class
    /// [`FaultClass::Misuse`]).
    pub fn misuse(&self) -> Vec<Violation> {
        let st = self.sh.st.lock();
        st.violations
            .iter()
            .filter(|v| v.class == FaultClass::Misuse)
            .cloned()
            .collect()
    }

    /// Device errors recorded so far: faults the hardware reports with CHANERR and a halt
    /// (class [`FaultClass::DeviceError`]).
    pub fn device_errors(&self) -> Vec<Violation> {
        let st = self.sh.st.lock();
        st.violations
            .iter()
            .filter(|v| v.class == FaultClass::DeviceError)
            .cloned()
            .collect()
    }

    /// The eventfd-like sink of MSI-X vector `vector` (vector n serves channel n). Panics if
    /// the vector does not exist (there are CHANCNT vectors).
    pub fn msix_irq(&self, vector: u32) -> Arc<ModelIrq> {
        self.sh.msix_sinks[vector as usize].clone()
    }

    /// The sink of the legacy interrupt (INTx; the model does not tell MSI from INTx).
    pub fn intx_irq(&self) -> Arc<ModelIrq> {
        self.sh.intx_sink.clone()
    }

    /// PCI configuration read of 1, 2 or 4 bytes at `off` (naturally aligned).
    pub fn config_read(&self, off: u16, width: u8) -> u32 {
        self.cfg_access(off, width, None)
    }

    /// PCI configuration write of 1, 2 or 4 bytes at `off` (naturally aligned).
    pub fn config_write(&self, off: u16, width: u8, val: u32) {
        self.cfg_access(off, width, Some(val));
    }

    pub fn config_read8(&self, off: u16) -> u8 {
        self.config_read(off, 1) as u8
    }
    pub fn config_read16(&self, off: u16) -> u16 {
        self.config_read(off, 2) as u16
    }
    pub fn config_write8(&self, off: u16, val: u8) {
        self.config_write(off, 1, val as u32)
    }
    pub fn config_write16(&self, off: u16, val: u16) {
        self.config_write(off, 2, val as u32)
    }

    fn cfg_access(&self, off: u16, width: u8, write: Option<u32>) -> u32 {
        let sh = &*self.sh;
        let mut st = sh.st.lock();
        let changed = sh.sync(&mut st, Instant::now());
        let aligned = matches!(width, 1 | 2 | 4) && off % width as u16 == 0 && off < 0x1000;
        if !aligned {
            sh.violate(
                &mut st,
                V::reg("R2", RuleTag::Inferred, Severity::Error, None, "config", off as u32, width),
                format!(
                    "{width}-byte config space {} at {off:#x}: PCI allows 1, 2 or 4 bytes, naturally aligned, below 0x1000; {}",
                    if write.is_some() { "write" } else { "read" },
                    if write.is_some() { "dropped" } else { "reads 0" }
                ),
            );
            self.finish(st, changed);
            return 0;
        }
        let shift = (off & 3) as u32 * 8;
        let bits = if width == 4 {
            u32::MAX
        } else {
            (1u32 << (width as u32 * 8)) - 1
        };
        let has_int = sh.has_chanerr_int();
        let vectors = st.msix.len() as u16;
        let v = match write {
            Some(val) => {
                let before = (st.pci.command, st.pci.msix_ctrl);
                st.pci
                    .write_dword(off, val << shift, bits << shift, has_int);
                if (st.pci.command, st.pci.msix_ctrl) != before {
                    if st.pci.master() {
                        for c in st.chans.iter_mut() {
                            c.bme_stalled = false;
                        }
                    }
                    // Unmasking or enabling MSI-X sends what is pending.
                    super::irq::flush_pending(sh, &mut st);
                }
                0
            }
            None => (st.pci.read_dword(off, sh.cfg.device_id, vectors, has_int) >> shift) & bits,
        };
        self.finish(st, changed || write.is_some());
        v
    }

    /// Waits until `channel` is not ACTIVE (engine caught up with DMACOUNT, halted, hung
    /// channels excepted) or `timeout` passes. Returns the state seen last.
    pub fn wait_not_active(&self, channel: u32, timeout: Duration) -> ChanState {
        let end = Instant::now() + timeout;
        loop {
            let s = self.chan_state(channel);
            if s != ChanState::Active || Instant::now() >= end {
                return s;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    fn chancnt(&self) -> usize {
        self.sh.cfg.chancnt as usize
    }

    /// Ends an access: releases the lock, wakes the engines after a write or after the access
    /// started or completed a descriptor (so the engine re-plans its next wake-up), and raises
    /// a strict-mode panic.
    fn finish(&self, st: parking_lot::MutexGuard<'_, DevState>, wake: bool) {
        let mut st = st;
        let p = st.panic_pending.take();
        drop(st);
        if wake {
            self.sh.cv.notify_all();
        }
        if let Some(msg) = p {
            panic!("I/OAT model strict mode: {msg}");
        }
    }

    fn mmio_read(&self, off: u32, width: u8) -> u64 {
        if let Some(d) = self.sh.cfg.mmio_latency {
            let end = Instant::now() + d;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
        }
        let sh = &*self.sh;
        let mut st = sh.st.lock();
        let changed = sh.sync(&mut st, Instant::now());
        if !st.pci.memory() {
            sh.violate(
                &mut st,
                V::reg("R4", RuleTag::Inferred, Severity::Error, None, "BAR0", off, width),
                format!("{width}-byte read of BAR0+{off:#x} with PCI COMMAND.MEMORY clear: the function does not decode MMIO, the read returns all ones (set MEMORY in config 0x04)"),
            );
            self.finish(st, changed);
            return if width == 8 {
                u64::MAX
            } else {
                (1u64 << (width * 8)) - 1
            };
        }
        let hit = lookup(off, self.chancnt(), sh.cfg.has_dps());
        let msix = match hit {
            None => super::irq::msix_read(&st, off, width),
            Some(_) => None,
        };
        let v = match hit {
            None if msix.is_some() => msix.unwrap_or(0),
            None => {
                sh.violate(
                    &mut st,
                    V::reg(
                        "R2",
                        RuleTag::Inferred,
                        Severity::Error,
                        None,
                        "undefined",
                        off,
                        width,
                    ),
                    format!(
                        "{width}-byte read of BAR0 offset {off:#x}, where no register is defined"
                    ),
                );
                0
            }
            Some(h) if proper(h.def.width, h.byte, width) => {
                if h.def.reg == Reg::ChanSts && width == 4 {
                    self.split_chansts_read(&mut st, h.chan.unwrap_or(0), h.byte, off);
                }
                reg_value(sh, &st, h.def.reg, h.chan) >> (h.byte * 8)
            }
            Some(h) => {
                sh.violate(
                    &mut st,
                    V::reg("W7", RuleTag::Behaviour, Severity::Warning, h.chan, h.def.name, off, width),
                    format!(
                        "{width}-byte read at {off:#x} inside {} ({}-byte register at +{}); every driver reads it with width {}",
                        h.def.name, h.def.width, h.byte, h.def.width
                    ),
                );
                // Compose the bytes the access covers.
                let mut v = 0u64;
                for i in 0..width as u32 {
                    if let Some(b) = lookup(off + i, self.chancnt(), sh.cfg.has_dps()) {
                        let byte = (reg_value(sh, &st, b.def.reg, b.chan) >> (b.byte * 8)) & 0xff;
                        v |= byte << (i * 8);
                    }
                }
                v
            }
        };
        self.finish(st, changed);
        let mask = if width == 8 {
            u64::MAX
        } else {
            (1u64 << (width * 8)) - 1
        };
        v & mask
    }

    /// Rule W3: below CB3.3 CHANSTS "must read lower 4 bytes before upper 4 bytes".
    fn split_chansts_read(&self, st: &mut DevState, ch: usize, byte: u32, off: u32) {
        let c = &mut st.chans[ch];
        if byte == 0 {
            c.chansts_low_read = true;
            return;
        }
        let ok = std::mem::replace(&mut c.chansts_low_read, false);
        if !ok && self.sh.cfg.cbver < 0x33 {
            self.sh.violate(
                st,
                V::reg("W3", RuleTag::Stated, Severity::Warning, Some(ch), "CHANSTS", off, 4),
                "high dword of CHANSTS read without the low dword first; below CB3.3 the low 4 bytes must be read before the upper 4 (and split reads may tear: prefer the completion word, rule W4)".into(),
            );
        }
    }

    fn mmio_write(&self, off: u32, width: u8, val: u64) {
        let sh = &*self.sh;
        let mut st = sh.st.lock();
        sh.sync(&mut st, Instant::now());
        if !st.pci.memory() {
            sh.violate(
                &mut st,
                V::reg("R4", RuleTag::Inferred, Severity::Error, None, "BAR0", off, width),
                format!("{width}-byte write of {val:#x} to BAR0+{off:#x} with PCI COMMAND.MEMORY clear: the function does not decode MMIO, the write is dropped (set MEMORY in config 0x04)"),
            );
            self.finish(st, false);
            return;
        }
        match lookup(off, self.chancnt(), sh.cfg.has_dps()) {
            None if super::irq::msix_write(sh, &mut st, off, width, val) => {}
            None => sh.violate(
                &mut st,
                V::reg("R2", RuleTag::Inferred, Severity::Error, None, "undefined", off, width),
                format!("{width}-byte write of {val:#x} to BAR0 offset {off:#x}, where no register is defined; ignored"),
            ),
            Some(h) if !proper(h.def.width, h.byte, width) => sh.violate(
                &mut st,
                V::reg("W7", RuleTag::Behaviour, Severity::Warning, h.chan, h.def.name, off, width),
                format!(
                    "{width}-byte write at {off:#x} inside {} ({}-byte register at +{}); write it with width {}{}; the model drops this write",
                    h.def.name,
                    h.def.width,
                    h.byte,
                    h.def.width,
                    if h.def.width == 8 { " or as two 4-byte halves, low first" } else { "" }
                ),
            ),
            Some(h) if h.def.kind == Kind::Ro => sh.violate(
                &mut st,
                V::reg("R1", RuleTag::Inferred, Severity::Error, h.chan, h.def.name, off, width),
                format!("write of {val:#x} to read-only register {} at {off:#x}; ignored", h.def.name),
            ),
            Some(h) => write_reg(sh, &mut st, h.def.reg, h.chan, h.byte, width, val, off),
        }
        self.finish(st, true);
    }
}

/// Whether a `width`-byte access at byte `byte` of a `reg_width`-byte register is one the
/// drivers use (rule W7; 64-bit registers also as 32-bit halves, rules W1/W6).
fn proper(reg_width: u8, byte: u32, width: u8) -> bool {
    (byte == 0 && width == reg_width) || (reg_width == 8 && width == 4 && (byte == 0 || byte == 4))
}

fn reg_value(sh: &Shared, st: &DevState, reg: Reg, ch: Option<usize>) -> u64 {
    let cfg = &sh.cfg;
    let c = ch.map(|n| &st.chans[n]);
    let c = || c.expect("channel register");
    match reg {
        Reg::ChanCnt => cfg.chancnt as u64 & 0x1f,
        Reg::XferCap => cfg.xfercap_log as u64 & 0x1f,
        Reg::GenCtrl => st.genctrl as u64,
        Reg::IntrCtrl => st.intrctrl as u64,
        Reg::AttnStatus => st.attnstatus as u64,
        Reg::CbVer => cfg.cbver as u64,
        Reg::PerPortOffset => 0,
        Reg::IntrDelay => st.intrdelay as u64,
        Reg::CsStatus => 0,
        Reg::DmaCap => cfg.dmacap as u64,
        Reg::DcaOffset => 0,
        Reg::PrefetchLimit => st.prefetch_limit as u64,
        Reg::ChanCtrl => c().chanctrl as u64,
        Reg::DmaComp => 0x2,
        Reg::ChanCmd => {
            if c().reset_until.is_some() {
                chancmd::RESET as u64
            } else {
                0
            }
        }
        Reg::DmaCount => c().dmacount as u64,
        Reg::ChanSts => c().chansts(),
        Reg::ChainAddr => c().chainaddr,
        Reg::ChanCmp => c().chancmp,
        Reg::Cdar => c().cdar,
        Reg::ChanErr => c().chanerr as u64,
        Reg::ChanErrMask => c().chanerr_mask as u64,
        Reg::DcaCtrl => c().dcactrl as u64,
        Reg::DrsCtl => c().drsctl as u64,
        Reg::LtrSwSel => c().ltr_swsel as u64,
        Reg::LtrActive => c().ltr_active as u64,
        Reg::LtrIdle => c().ltr_idle as u64,
    }
}

/// Merges a 4- or 8-byte write into a 64-bit register and tracks the halves written.
fn merge64(old: u64, byte: u32, width: u8, val: u64) -> u64 {
    match (width, byte) {
        (8, _) => val,
        (_, 0) => (old & !0xffff_ffff) | (val & 0xffff_ffff),
        _ => (old & 0xffff_ffff) | (val << 32),
    }
}

/// Updates the half-written tracking; returns true when a high half arrives first (W6).
fn track_half(h: &mut Half, byte: u32, width: u8) -> bool {
    match (width, byte, *h) {
        (8, _, _) => {
            *h = Half::Both;
            false
        }
        (_, 0, Half::HighOnly) => {
            *h = Half::Both;
            false
        }
        (_, 0, _) => {
            *h = Half::LowOnly;
            false
        }
        (_, _, Half::LowOnly) => {
            *h = Half::Both;
            false
        }
        _ => {
            *h = Half::HighOnly;
            true
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_reg(
    sh: &Shared,
    st: &mut DevState,
    reg: Reg,
    ch: Option<usize>,
    byte: u32,
    width: u8,
    val: u64,
    off: u32,
) {
    let cn = ch.unwrap_or(0);
    match reg {
        Reg::GenCtrl => st.genctrl = val as u8,
        Reg::IntrCtrl => {
            // MASTER_INT_EN and MSIX_VECTOR_CONTROL are read-write; INT_STATUS and INT are
            // status bits cleared by writing them back (Linux's INTx/MSI handler writes the
            // value it read back to acknowledge, rule I2).
            let v = val as u8;
            let rw = general::INTRCTRL_MASTER_INT_EN | general::INTRCTRL_MSIX_VECTOR_CONTROL;
            let status = general::INTRCTRL_INT_STATUS | general::INTRCTRL_INT;
            st.intrctrl = (v & rw) | (st.intrctrl & status & !(v & status));
        }
        Reg::IntrDelay => {
            st.intrdelay = (val as u16 & crate::regs::general::INTRDELAY_MASK)
                | crate::regs::general::INTRDELAY_COALESCE_SUPPORT
        }
        Reg::PrefetchLimit => st.prefetch_limit = val as u8,
        Reg::ChanCtrl => {
            st.chans[cn].chanctrl = val as u16;
            // Re-arming acknowledges the channel's interrupt event.
            if val as u16 & chanctrl::INT_REARM != 0 {
                st.attnstatus &= !(1 << cn);
            }
        }
        Reg::ChanErr => {
            let c = &mut st.chans[cn];
            c.chanerr &= !(val as u32);
        }
        Reg::ChanErrMask => st.chans[cn].chanerr_mask = val as u32,
        Reg::DcaCtrl => st.chans[cn].dcactrl = val as u32,
        Reg::DrsCtl => st.chans[cn].drsctl = val as u16,
        Reg::LtrSwSel => st.chans[cn].ltr_swsel = val as u8,
        Reg::LtrActive => st.chans[cn].ltr_active = val as u32,
        Reg::LtrIdle => st.chans[cn].ltr_idle = val as u32,
        Reg::ChanCmp => {
            let c = &mut st.chans[cn];
            c.chancmp = merge64(c.chancmp, byte, width, val);
            let high_first = track_half(&mut c.chancmp_half, byte, width);
            let misaligned = byte == 0 && val & 7 != 0;
            if high_first {
                sh.violate(
                    st,
                    V::reg("W6", RuleTag::Inferred, Severity::Warning, ch, "CHANCMP", off, width),
                    "high half of CHANCMP written before the low half; no source does this (torn 64-bit writes below CB3.3); write low (+0x18) then high (+0x1c), or one 64-bit store".into(),
                );
            }
            if misaligned {
                sh.violate(
                    st,
                    V::reg("A2", RuleTag::Stated, Severity::Error, ch, "CHANCMP", off, width),
                    format!("CHANCMP {:#x} is not 8-byte aligned (\"CHANCMP address must be 64-bit aligned\"); completion writes will fail with COMPLETION_ADDR", val & 0xffff_ffff),
                );
            }
        }
        Reg::ChainAddr => {
            let c = &mut st.chans[cn];
            c.chainaddr = merge64(c.chainaddr, byte, width, val);
            c.chainaddr_written = true;
            let high_first = track_half(&mut c.chainaddr_half, byte, width);
            let misaligned = byte == 0 && val & 0x3f != 0;
            let state = c.state;
            let busy_active = state == ChanState::Active;
            if high_first {
                sh.violate(
                    st,
                    V::reg("W6", RuleTag::Inferred, Severity::Warning, ch, "CHAINADDR", off, width),
                    "high half of CHAINADDR written before the low half; no source does this; write low (+0x10) then high (+0x14), or one 64-bit store".into(),
                );
            }
            if misaligned {
                sh.violate(
                    st,
                    V::reg("A1", RuleTag::Inferred, Severity::Warning, ch, "CHAINADDR", off, width),
                    format!("CHAINADDR low dword {:#x} is not 64-byte aligned; descriptors are 64 bytes and the completed address is bits 63:6; the first fetch will halt with CHAIN_ADDR_VALUE", val & 0xffff_ffff),
                );
            }
            if st.chans[cn].reset_until.is_some() {
                // DPDK writes CHAINADDR while RESET is still pending (rule M3).
                st.chans[cn].arm_after_reset = true;
            } else if busy_active {
                sh.violate(
                    st,
                    V::reg("C3", RuleTag::Inferred, Severity::Warning, ch, "CHAINADDR", off, width),
                    "CHAINADDR written while the channel is ACTIVE; no source does this and the hardware's reaction is unknown; the model keeps following `next` (suspend or reset first)".into(),
                );
            } else {
                sh.try_arm(st, cn);
            }
        }
        Reg::DmaCount => doorbell(sh, st, cn, val as u16, off),
        Reg::ChanCmd => command(sh, st, cn, val as u8, off),
        // Read-only registers never get here.
        _ => {}
    }
}

fn doorbell(sh: &Shared, st: &mut DevState, ch: usize, val: u16, off: u32) {
    let c = &mut st.chans[ch];
    c.stats.doorbells += 1;
    if c.reset_until.is_some() {
        // The reset zeroes the channel's count: the doorbell is lost. No source says what the
        // hardware does; whatever it does, the driver cannot know, so it is flagged.
        sh.violate(
            st,
            V::reg("R3", RuleTag::Inferred, Severity::Error, Some(ch), "DMACOUNT", off, 2),
            format!("DMACOUNT = {val} written while CHANCMD.RESET is still pending: the reset zeroes the count and the doorbell is lost (dropped); poll CHANCMD until RESET clears, write CHAINADDR, then ring"),
        );
        return;
    }
    c.dmacount = val;
    let (written, ca_half, cmp_half) = (c.chainaddr_written, c.chainaddr_half, c.chancmp_half);
    if !written {
        sh.violate(
            st,
            V::reg("D6", RuleTag::Behaviour, Severity::Warning, Some(ch), "DMACOUNT", off, 2),
            format!("DMACOUNT = {val} rung without CHAINADDR written since the reset; no driver does this and the channel stays HALTED; write CHAINADDR (the first descriptor's IOVA) first"),
        );
    }
    if ca_half != Half::Both || cmp_half != Half::Both {
        let which = if ca_half != Half::Both {
            "CHAINADDR"
        } else {
            "CHANCMP"
        };
        sh.violate(
            st,
            V::reg("D6", RuleTag::Inferred, Severity::Warning, Some(ch), "DMACOUNT", off, 2),
            format!("DMACOUNT rung while only one half of {which} has been written; write both halves (low then high) before the doorbell"),
        );
    }
    let c = &mut st.chans[ch];
    c.kick(Instant::now());
    // Rule D4: more descriptors outstanding than the ring holds (a self-linked descriptor,
    // replayed on purpose as in the VFIO selftest, is exempt).
    let outstanding = c.dmacount.wrapping_sub(c.count) as u32;
    if c.state == ChanState::Active && outstanding > 1 {
        // Cached per CHAINADDR write; recomputed before reporting, in case the driver links
        // its ring lazily.
        let reach = match c.reachable {
            Some(r) if outstanding <= r => r,
            _ => {
                let start = c.chainaddr;
                let r = sh.reachable(start);
                st.chans[ch].reachable = Some(r);
                r
            }
        };
        if reach > 1 && outstanding > reach {
            sh.violate(
                st,
                V::reg("D4", RuleTag::Inferred, Severity::Warning, Some(ch), "DMACOUNT", off, 2),
                format!("DMACOUNT = {val} puts {outstanding} descriptors outstanding but only {reach} distinct descriptors are reachable from CHAINADDR; the driver is overwriting descriptors the engine has not executed (keep outstanding <= ring size - 1)"),
            );
        }
    }
}

fn command(sh: &Shared, st: &mut DevState, ch: usize, val: u8, off: u32) {
    let c = &mut st.chans[ch];
    if c.reset_until.is_some() {
        if val != 0 {
            sh.violate(
                st,
                V::reg("R3", RuleTag::Inferred, Severity::Warning, Some(ch), "CHANCMD", off, 1),
                format!("CHANCMD {val:#x} written while RESET is still pending: dropped; poll CHANCMD until RESET clears first"),
            );
        }
        return;
    }
    if val & chancmd::RESET != 0 {
        c.reset(Instant::now() + sh.cfg.reset_delay);
        if reset_clears_msix(sh.cfg.device_id) {
            // Rule I3: the reset also clears the MSI-X registers (table and pending bits);
            // Linux saves and restores them around it.
            for e in st.msix.iter_mut() {
                *e = MSIX_ENTRY_RESET;
            }
            st.pba = 0;
        }
    } else if val & chancmd::SUSPEND != 0 {
        match c.state {
            ChanState::Active if c.busy || c.pending.is_some() => c.suspend_req = true,
            ChanState::Active | ChanState::Done | ChanState::Armed => {
                c.state = ChanState::Suspended
            }
            _ => {}
        }
    } else if val & chancmd::RESUME != 0 {
        if c.state == ChanState::Suspended {
            c.vstart = Instant::now();
            c.state = if c.count != c.dmacount {
                ChanState::Active
            } else if c.next_fetch.is_some() {
                ChanState::Done
            } else {
                ChanState::Armed
            };
        }
    } else if val != 0 {
        sh.violate(
            st,
            V::reg("M1", RuleTag::Behaviour, Severity::Warning, Some(ch), "CHANCMD", off, 1),
            format!("CHANCMD {val:#x}: only RESET (0x20) and SUSPEND (0x04) are used by v3 drivers; the model ignores it"),
        );
    }
}

impl RegisterAccess for ModelDevice {
    fn read8(&self, off: u32) -> u8 {
        self.mmio_read(off, 1) as u8
    }
    fn read16(&self, off: u32) -> u16 {
        self.mmio_read(off, 2) as u16
    }
    fn read32(&self, off: u32) -> u32 {
        self.mmio_read(off, 4) as u32
    }
    /// A single 64-bit read (what Linux `readq` and SPDK/DPDK on x86-64 do).
    fn read64(&self, off: u32) -> u64 {
        self.mmio_read(off, 8)
    }
    fn write8(&self, off: u32, val: u8) {
        self.mmio_write(off, 1, val as u64)
    }
    fn write16(&self, off: u32, val: u16) {
        self.mmio_write(off, 2, val as u64)
    }
    fn write32(&self, off: u32, val: u32) {
        self.mmio_write(off, 4, val as u64)
    }
    /// A single 64-bit store: legal for CHAINADDR and CHANCMP (`docs/driver.md`, the
    /// fidelity table's rule on 64-bit registers).
    fn write64(&self, off: u32, val: u64) {
        self.mmio_write(off, 8, val)
    }

    fn config_read32(&self, off: u16) -> u32 {
        self.config_read(off, 4)
    }

    fn config_write32(&self, off: u16, val: u32) {
        self.config_write(off, 4, val)
    }
}

impl Drop for ModelDevice {
    fn drop(&mut self) {
        self.sh.shutdown.store(true, Ordering::Release);
        {
            // Take the lock so no engine misses the wakeup between its check and its wait.
            let _g = self.sh.st.lock();
            self.sh.cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for ModelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDevice")
            .field("cfg", &self.sh.cfg)
            .finish_non_exhaustive()
    }
}
