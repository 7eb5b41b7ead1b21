//! One DMA channel: the thin I/O shell around the [`Ring`] state machine.
//!
//! Submission writes descriptors into the ring memory and, on [`Channel::flush`], rings the
//! doorbell with one DMACOUNT write. Completion is read from the completion writeback word the
//! device writes to memory (a CHANSTS image), never from MMIO on the fast path; CHANSTS and
//! CHANERR are read only when the word shows no progress for a while, or shows a halt.
//!
//! Error recovery: when the channel halts, the operation whose descriptor failed is reported
//! [`OpError::Halted`], every later operation in the ring [`OpError::Aborted`], the channel is
//! reset and restarted with CHAINADDR at the next free slot and DMACOUNT counting from 0 again
//! (as Linux `ioat_restart_channel` and DPDK `__ioat_recover` do). A channel that makes no
//! progress for `completion_timeout` is declared hung: its operations fail with
//! [`OpError::Timeout`] and it is reset and restarted the same way.
//!
//! Caller context: a `Channel<R, T>` keeps one caller-chosen value of type `T` per operation
//! in its ring (the `*_with` submit calls) and hands it back in that operation's
//! [`Completion`], whatever the outcome: success, halt, abort, timeout or reset. The caller
//! needs no token-to-request table. `T` defaults to `()`, for which the plain `copy`,
//! `copy_regions`, `fill` and `fill_region` calls exist.
//!
//! ```
//! use ioat_driver::model::{ModelConfig, ModelDevice, Preset};
//! use ioat_driver::{ChannelConfig, Device, DmaRegion};
//!
//! let model = ModelDevice::new(ModelConfig::preset(Preset::Skx));
//! let dev = Device::open(model.clone(), model.mapper())?;
//! let mut ch = dev.channel(0, ChannelConfig::default())?;
//! let src = DmaRegion::alloc(dev.mapper(), 4096)?;
//! let dst = DmaRegion::alloc(dev.mapper(), 4096)?;
//! src.write(0, b"hello, device")?;
//! let token = ch.copy_regions(&src, 0, &dst, 100, 13)?; // queued, regions pinned
//! ch.flush(); // one DMACOUNT write for everything queued
//! let mut done = Vec::new();
//! while ch.poll(&mut done) == 0 {} // reads the completion word only
//! assert_eq!(done[0].token, token);
//! assert!(done[0].result.is_ok());
//! assert_eq!(dst.to_vec(100, 13)?, b"hello, device");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::desc::{Ctl, HwDescriptor, DESC_SIZE};
use crate::device::{DeviceInfo, DeviceShared};
use crate::dma::{DmaRegion, HugePages, RegionPin};
use crate::error::{Error, OpError, SubmitError};
use crate::regs::{
    chan, chancmd, chanctrl, channel_base, chansts, pci, ChanErr, ChanState, RegisterAccess,
};
use crate::ring::{Completed, OpEntry, Ring, RingFull, MAX_ORDER, MIN_ORDER};

pub use crate::ring::Token;

/// Channel settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// log2 of the number of descriptor slots (2..=16). Default 12 (4096 slots, 256 KiB).
    pub ring_order: u32,
    /// No completion progress for this long with operations in flight means the channel hung.
    /// Default 200 ms (Linux `completion_timeout`).
    pub completion_timeout: Duration,
    /// With operations in flight and no progress in the writeback word, read CHANSTS at most
    /// this often to catch a halt the device did not push to memory (FreeBSD's caution, rule
    /// E7). Default 1 ms.
    pub status_check_interval: Duration,
    /// How long CHANCMD.RESET may take to clear (rule C1). Default 200 ms.
    pub reset_timeout: Duration,
    /// How long to wait for an ACTIVE/DONE channel to reach SUSPENDED before resetting anyway
    /// (Linux `ioat_quiesce`). Default 100 ms.
    pub suspend_timeout: Duration,
    /// How long the start (null) descriptor may take. Default 100 ms.
    pub start_timeout: Duration,
    /// CHANCTRL value written on every start. Default ERR_COMPLETION_EN | ANY_ERR_ABORT_EN
    /// (0x0c, as DPDK): polled mode, halts pushed to the completion word.
    pub chanctrl: u16,
    /// Interrupt mode: the last descriptor of every op asks for an interrupt (`int_en`), as
    /// Linux does with DMA_PREP_INTERRUPT. Completions are still read from the writeback word;
    /// the interrupt (MSI-X through an eventfd, coalesced by INTRDELAY: see
    /// `vfio::ioat_irq::IoatInterrupts`) only tells a sleeping poller when to look. Default off
    /// (polled mode). Set with [`ChannelConfig::interrupt_mode`].
    pub interrupts: bool,
    /// Huge-page policy for the ring memory.
    pub huge_pages: HugePages,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            ring_order: 12,
            completion_timeout: Duration::from_millis(200),
            status_check_interval: Duration::from_millis(1),
            reset_timeout: Duration::from_millis(200),
            suspend_timeout: Duration::from_millis(100),
            start_timeout: Duration::from_millis(100),
            chanctrl: chanctrl::ERR_COMPLETION_EN | chanctrl::ANY_ERR_ABORT_EN,
            interrupts: false,
            huge_pages: HugePages::Prefer,
        }
    }
}

impl ChannelConfig {
    /// Interrupt mode: `int_en` on the last descriptor of every op and CHANCTRL =
    /// `chanctrl::RUN` (INT_REARM | ERR_INT_EN | ERR_COMPLETION_EN | ANY_ERR_ABORT_EN, what
    /// Linux writes). Re-arm after each interrupt with `vfio::ioat_irq::rearm`.
    pub fn interrupt_mode(mut self) -> Self {
        self.interrupts = true;
        self.chanctrl = chanctrl::RUN;
        self
    }
    pub fn ring_order(mut self, order: u32) -> Self {
        self.ring_order = order;
        self
    }
    pub fn completion_timeout(mut self, t: Duration) -> Self {
        self.completion_timeout = t;
        self
    }
    pub fn suspend_timeout(mut self, t: Duration) -> Self {
        self.suspend_timeout = t;
        self
    }
}

/// A finished operation: its token, the context the caller attached to it and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion<T = ()> {
    pub token: Token,
    /// The value given to the `*_with` submit call (`()` for the plain calls).
    pub ctx: T,
    pub result: Result<(), OpError>,
}

/// Counters of one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Operations accepted (copies, fills).
    pub ops: u64,
    /// Descriptors written (including null and fence descriptors).
    pub descriptors: u64,
    /// Bytes submitted.
    pub bytes: u64,
    /// DMACOUNT writes.
    pub doorbells: u64,
    /// Operations reported successful.
    pub completed: u64,
    /// Operations reported failed (halted, aborted, timed out, reset).
    pub failed: u64,
    /// Halts handled.
    pub halts: u64,
    /// Hangs detected by the completion timeout.
    pub timeouts: u64,
    /// Resets + restarts (including the initial start).
    pub restarts: u64,
    /// MMIO reads of CHANSTS on the slow path.
    pub status_reads: u64,
}

/// A register dump for diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelRegs {
    pub chanctrl: u16,
    pub dmacount: u16,
    pub chansts: u64,
    pub chainaddr: u64,
    pub chancmp: u64,
    pub cdar: u64,
    pub chanerr: ChanErr,
    /// The completion writeback word in memory.
    pub completion: u64,
}

impl std::fmt::Display for ChannelRegs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CHANSTS {:#x} ({}) CHANCTRL {:#06x} DMACOUNT {} CHAINADDR {:#x} CHANCMP {:#x} \
             CDAR {:#x} CHANERR {} completion {:#x} ({})",
            self.chansts,
            ChanState::from_bits(self.chansts),
            self.chanctrl,
            self.dmacount,
            self.chainaddr,
            self.chancmp,
            self.cdar,
            self.chanerr,
            self.completion,
            ChanState::from_bits(self.completion),
        )
    }
}

/// Region pins held by an in-flight operation.
#[derive(Debug, Default)]
struct Pins {
    _src: Option<RegionPin>,
    _dst: Option<RegionPin>,
}

/// What the ring keeps for one operation: the caller's context (`None` only for internal
/// null and fence descriptors, which have no token either) and the region pins.
#[derive(Debug)]
struct OpData<T> {
    ctx: Option<T>,
    pins: Pins,
}

impl<T> OpData<T> {
    fn internal() -> Self {
        OpData {
            ctx: None,
            pins: Pins::default(),
        }
    }
}

/// One open DMA channel. Not shareable between threads (`&mut self` everywhere); one poller
/// owns it. `T` is the caller's per-operation context, handed back in each [`Completion`].
pub struct Channel<R: RegisterAccess, T = ()> {
    dev: Arc<DeviceShared<R>>,
    n: u32,
    base: u32,
    cfg: ChannelConfig,
    info: DeviceInfo,
    piece: u64,
    /// Ring descriptors at offset 0, the completion word after them.
    mem: DmaRegion,
    compl_off: usize,
    ring: Ring<OpData<T>>,
    last_word: u64,
    stall_since: Option<Instant>,
    last_status_check: Option<Instant>,
    /// Why the channel is out of service: the error and its message.
    down: Option<(Error, String)>,
    stats: ChannelStats,
}

impl<R: RegisterAccess, T> std::fmt::Debug for Channel<R, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("n", &self.n)
            .field("ring_size", &self.ring.size())
            .field("in_flight", &self.ring.in_flight())
            .field("pending", &self.ring.pending())
            .field("down", &self.down)
            .finish()
    }
}

fn spin_wait(iter: &mut u32) {
    *iter += 1;
    if *iter < 64 {
        std::hint::spin_loop();
    } else if *iter < 256 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

impl<R: RegisterAccess, T> Channel<R, T> {
    pub(crate) fn new(
        dev: Arc<DeviceShared<R>>,
        n: u32,
        cfg: ChannelConfig,
    ) -> Result<Self, Error> {
        if !(MIN_ORDER..=MAX_ORDER).contains(&cfg.ring_order) {
            return Err(Error::BadConfig(format!(
                "ring_order {} is outside {MIN_ORDER}..={MAX_ORDER} (4 to 65536 descriptors)",
                cfg.ring_order
            )));
        }
        if cfg.completion_timeout.is_zero() || cfg.reset_timeout.is_zero() {
            return Err(Error::BadConfig(
                "completion_timeout and reset_timeout must be non-zero".into(),
            ));
        }
        let ring_bytes = DESC_SIZE << cfg.ring_order;
        // The completion word gets its own cache line after the ring (8-byte alignment is the
        // requirement, rule A2; Linux uses a cache line).
        let compl_off = ring_bytes;
        let mem = DmaRegion::alloc_with(dev.mapper.clone(), ring_bytes + 64, cfg.huge_pages)?;
        let base_iova = mem.iova();
        if base_iova % DESC_SIZE as u64 != 0 {
            return Err(Error::BadConfig(format!(
                "the mapper returned IOVA {base_iova:#x}, not 64-byte aligned; descriptors \
                 must be (rule A1)"
            )));
        }
        let info = dev.info;
        let mut ch = Channel {
            n,
            base: channel_base(n),
            cfg,
            info,
            piece: info.piece_size(),
            mem,
            compl_off,
            ring: Ring::new(cfg.ring_order, base_iova),
            last_word: 0,
            stall_since: None,
            last_status_check: None,
            down: None,
            stats: ChannelStats::default(),
            dev,
        };
        // Pre-link the ring circularly (the device follows `next`).
        for pos in 0..ch.ring.size() {
            ch.write_desc(pos, HwDescriptor::null(Ctl::null()));
        }
        let inuse = ch.regs().read16(ch.base + chan::CHANCTRL);
        if inuse & chanctrl::CHANNEL_IN_USE != 0 {
            tracing::warn!(
                chan = n,
                "CHANCTRL.CHANNEL_IN_USE is set: another driver may own this channel; taking it"
            );
        }
        let mut sink = Vec::new();
        ch.restart(&mut sink)?;
        Ok(ch)
    }

    fn regs(&self) -> &R {
        &self.dev.regs
    }

    /// Channel number.
    pub fn number(&self) -> u32 {
        self.n
    }

    /// Device facts (version, XFERCAP, capabilities).
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// The configuration the channel was opened with.
    pub fn config(&self) -> ChannelConfig {
        self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Free descriptor slots. A copy or fill of `len` bytes needs
    /// `ceil(len / info().piece_size())` of them.
    pub fn free_slots(&self) -> u32 {
        self.ring.free()
    }

    /// Most descriptors that can be outstanding at once (ring size - 1).
    pub fn capacity(&self) -> u32 {
        self.ring.size() - 1
    }

    /// Operations submitted and not yet reported by [`Channel::poll`] (flushed or not). The
    /// channel's own null and fence descriptors are not counted.
    pub fn in_flight(&self) -> u32 {
        self.ring.token_ops()
    }

    /// Descriptors written but not yet announced with [`Channel::flush`].
    pub fn unflushed(&self) -> u32 {
        self.ring.pending()
    }

    /// The token the next operation will get.
    pub fn next_token(&self) -> Token {
        self.ring.next_token()
    }

    /// `Some(reason)` if the channel is out of service after a failed recovery.
    pub fn down_reason(&self) -> Option<&str> {
        self.down.as_ref().map(|(_, r)| r.as_str())
    }

    /// `Some(error)` if the channel is out of service: the error of the failed recovery.
    pub fn down_error(&self) -> Option<&Error> {
        self.down.as_ref().map(|(e, _)| e)
    }

    fn check_up(&self) -> Result<(), SubmitError> {
        match &self.down {
            Some((e, r)) => Err(SubmitError::ChannelDown {
                chan: self.n,
                reason: r.clone(),
                cause: e.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_addr(&self, addr: u64, len: u64) -> Result<(), SubmitError> {
        let limit = 1u64 << self.info.addr_bits;
        match addr.checked_add(len) {
            Some(end) if end <= limit => Ok(()),
            _ => Err(SubmitError::AddressTooWide {
                addr,
                len,
                bits: self.info.addr_bits,
                version: self.info.version,
            }),
        }
    }

    fn pieces(&self, len: u64) -> Result<u32, SubmitError> {
        if len == 0 {
            return Err(SubmitError::ZeroLength);
        }
        let pieces = len.div_ceil(self.piece);
        let max = self.ring.size() - 1;
        if pieces > max as u64 {
            return Err(SubmitError::TooLong { len, pieces, max });
        }
        Ok(pieces as u32)
    }

    /// Writes descriptor `d` into the slot of `pos`, linking `next` to the following slot.
    fn write_desc(&mut self, pos: u32, mut d: HwDescriptor) {
        d.next = self.ring.next_iova(pos);
        let off = self.ring.slot(pos) * DESC_SIZE;
        // In bounds: slot < ring size, and the region holds the whole ring. The device does not
        // read this slot: it is either beyond what DMACOUNT announced or the channel is reset.
        let r = self.mem.write(off, &d.to_le_bytes());
        debug_assert!(r.is_ok());
    }

    fn set_ctl(&mut self, pos: u32, ctl: Ctl) {
        let off = self.ring.slot(pos) * DESC_SIZE + 4;
        let r = self.mem.write(off, &ctl.0.to_le_bytes());
        debug_assert!(r.is_ok());
    }

    fn read_ctl(&self, pos: u32) -> Ctl {
        let mut b = [0u8; 4];
        let r = self.mem.read(self.ring.slot(pos) * DESC_SIZE + 4, &mut b);
        debug_assert!(r.is_ok());
        Ctl(u32::from_le_bytes(b))
    }

    /// Queues one operation split into descriptors of at most `piece` bytes.
    fn submit(
        &mut self,
        fill: bool,
        src_or_pattern: u64,
        dst: u64,
        len: u64,
        pins: Pins,
        ctx: T,
    ) -> Result<Token, SubmitError> {
        let pieces = self.pieces(len)?;
        let (first, token) = self
            .ring
            .push_op(
                pieces,
                OpData {
                    ctx: Some(ctx),
                    pins,
                },
            )
            .map_err(|RingFull { needed, free }| SubmitError::RingFull { needed, free })?;
        let mut off = 0u64;
        for i in 0..pieces {
            let size = (len - off).min(self.piece);
            let last = i + 1 == pieces;
            let d = if fill {
                HwDescriptor::fill(
                    size as u32,
                    src_or_pattern,
                    dst + off,
                    Ctl::fill()
                        .compl_write(last)
                        .int_en(last && self.cfg.interrupts),
                )
            } else {
                HwDescriptor::copy(
                    size as u32,
                    src_or_pattern + off,
                    dst + off,
                    Ctl::copy()
                        .compl_write(last)
                        .int_en(last && self.cfg.interrupts),
                )
            };
            let mut d = d;
            d.user1 = token.0;
            self.write_desc(first.wrapping_add(i), d);
            off += size;
        }
        self.stats.ops += 1;
        self.stats.descriptors += pieces as u64;
        self.stats.bytes += len;
        Ok(token)
    }

    /// Queues a copy of `len` bytes from IOVA `src` to IOVA `dst` (split at XFERCAP, the
    /// completion write on the last piece only). Not started until [`Channel::flush`]. `ctx`
    /// comes back in the operation's [`Completion`].
    ///
    /// Both ranges must stay mapped until the token is reported by [`Channel::poll`]; use
    /// [`Channel::copy_regions_with`] to have the channel hold the regions for you.
    pub fn copy_with(
        &mut self,
        src: u64,
        dst: u64,
        len: u64,
        ctx: T,
    ) -> Result<Token, SubmitError> {
        self.check_up()?;
        self.check_addr(src, len)?;
        self.check_addr(dst, len)?;
        self.submit(false, src, dst, len, Pins::default(), ctx)
    }

    /// Queues a copy between two mapped regions; both stay pinned (cannot be unmapped) until
    /// the operation is reported. `ctx` comes back in the operation's [`Completion`].
    pub fn copy_regions_with(
        &mut self,
        src: &DmaRegion,
        src_off: usize,
        dst: &DmaRegion,
        dst_off: usize,
        len: usize,
        ctx: T,
    ) -> Result<Token, SubmitError> {
        self.check_up()?;
        let s = region_iova(src, src_off, len)?;
        let d = region_iova(dst, dst_off, len)?;
        self.check_addr(s, len as u64)?;
        self.check_addr(d, len as u64)?;
        let pins = Pins {
            _src: Some(src.pin()),
            _dst: Some(dst.pin()),
        };
        self.submit(false, s, d, len as u64, pins, ctx)
    }

    /// Queues a block fill of `len` bytes at IOVA `dst` with the 64-bit `pattern` (byte `i` of
    /// the destination gets byte `i % 8` of the pattern in little-endian order). Needs
    /// DMACAPABILITY.FILL_BLOCK. `ctx` comes back in the operation's [`Completion`].
    pub fn fill_with(
        &mut self,
        dst: u64,
        pattern: u64,
        len: u64,
        ctx: T,
    ) -> Result<Token, SubmitError> {
        self.check_up()?;
        if !self.info.has_fill() {
            return Err(SubmitError::FillUnsupported);
        }
        self.check_addr(dst, len)?;
        self.submit(true, pattern, dst, len, Pins::default(), ctx)
    }

    /// Queues a fill into a mapped region, pinned until reported. `ctx` comes back in the
    /// operation's [`Completion`].
    pub fn fill_region_with(
        &mut self,
        dst: &DmaRegion,
        dst_off: usize,
        pattern: u64,
        len: usize,
        ctx: T,
    ) -> Result<Token, SubmitError> {
        self.check_up()?;
        if !self.info.has_fill() {
            return Err(SubmitError::FillUnsupported);
        }
        let d = region_iova(dst, dst_off, len)?;
        self.check_addr(d, len as u64)?;
        let pins = Pins {
            _src: None,
            _dst: Some(dst.pin()),
        };
        self.submit(true, pattern, d, len as u64, pins, ctx)
    }

    /// Orders everything queued so far before everything queued later: the device finishes
    /// all earlier operations before starting the next one (rule O6: the fence bit on a
    /// descriptor holds back the descriptors after it). Sets the fence bit on the last queued,
    /// not yet flushed operation; if that was already flushed, queues a fenced null
    /// descriptor. A no-op on an empty ring.
    pub fn fence(&mut self) -> Result<(), SubmitError> {
        self.check_up()?;
        if let Some(pos) = self.ring.last_unissued() {
            let ctl = self.read_ctl(pos).fence(true);
            self.set_ctl(pos, ctl);
            return Ok(());
        }
        if self.ring.used() == 0 {
            return Ok(());
        }
        self.push_null(Ctl::null().fence(true).compl_write(true))
            .map_err(|RingFull { needed, free }| SubmitError::RingFull { needed, free })
    }

    fn push_null(&mut self, ctl: Ctl) -> Result<(), RingFull> {
        let pos = self.ring.push_internal(1, OpData::internal())?;
        self.write_desc(pos, HwDescriptor::null(ctl));
        self.stats.descriptors += 1;
        Ok(())
    }

    /// Announces every queued descriptor to the device with one DMACOUNT write (the batched
    /// doorbell). Returns whether a doorbell was rung.
    pub fn flush(&mut self) -> bool {
        if self.down.is_some() {
            return false;
        }
        let was_idle = self.ring.in_flight() == 0;
        let Some(count) = self.ring.issue() else {
            return false;
        };
        if was_idle {
            self.stall_since = None;
        }
        // Descriptor stores must be visible before the device sees the new count.
        fence(Ordering::SeqCst);
        self.regs().write16(self.base + chan::DMACOUNT, count);
        self.stats.doorbells += 1;
        true
    }

    fn completion_word(&self) -> u64 {
        self.mem.read_u64_volatile(self.compl_off).unwrap_or(0)
    }

    /// Reports one operation with its context; internal descriptors (no token, no context)
    /// report nothing. The region pins are released when `op` drops, after the report.
    fn report(
        out: &mut Vec<Completion<T>>,
        stats: &mut ChannelStats,
        token: Option<Token>,
        ctx: Option<T>,
        r: Result<(), OpError>,
    ) -> u32 {
        let (Some(token), Some(ctx)) = (token, ctx) else {
            return 0;
        };
        if r.is_ok() {
            stats.completed += 1;
        } else {
            stats.failed += 1;
        }
        out.push(Completion {
            token,
            ctx,
            result: r,
        });
        1
    }

    fn reap_to(&mut self, pos: u32, out: &mut Vec<Completion<T>>) -> u32 {
        let stats = &mut self.stats;
        let mut n = 0;
        self.ring.reap_through(pos, |mut op| {
            n += Self::report(out, stats, op.token, op.payload.ctx.take(), Ok(()));
        });
        n
    }

    /// Collects finished operations into `out` in submission order and returns how many were
    /// added. Reads the completion word only; on a halt (in the word, or in CHANSTS when the
    /// word shows no progress for `status_check_interval`) or a hang (no progress for
    /// `completion_timeout`) it fails the affected operations and restarts the channel.
    pub fn poll(&mut self, out: &mut Vec<Completion<T>>) -> usize {
        if self.down.is_some() {
            return 0;
        }
        let mut n = 0u32;
        let word = self.completion_word();
        let mut progress = false;
        if word != self.last_word {
            self.last_word = word;
            if let Completed::Pos(p) = self.ring.decode(word) {
                n += self.reap_to(p, out);
                progress = true;
            }
            if ChanState::from_bits(word) == ChanState::Halted {
                n += self.recover_from_halt(out);
                return n as usize;
            }
        }
        if progress || self.ring.in_flight() == 0 {
            self.stall_since = None;
            return n as usize;
        }
        // No progress with work in flight: the slow path.
        let now = Instant::now();
        let since = *self.stall_since.get_or_insert(now);
        let check_due = self
            .last_status_check
            .is_none_or(|t| now.duration_since(t) >= self.cfg.status_check_interval);
        if check_due && now.duration_since(since) >= self.cfg.status_check_interval {
            self.last_status_check = Some(now);
            self.stats.status_reads += 1;
            let sts = self.regs().read64(self.base + chan::CHANSTS);
            if ChanState::from_bits(sts) == ChanState::Halted {
                // A halt the device did not push to memory. The channel is stopped, so the
                // completed address in CHANSTS is final: reap up to it first. (While the
                // channel runs, CHANSTS is never used to reap: a completion write still in
                // flight could later land with an address the ring already moved past.)
                if let Completed::Pos(p) = self.ring.decode(sts) {
                    n += self.reap_to(p, out);
                }
                n += self.recover_from_halt(out);
                return n as usize;
            }
        }
        if now.duration_since(since) >= self.cfg.completion_timeout {
            n += self.recover_from_hang(now.duration_since(since), out);
        }
        n as usize
    }

    /// The channel halted: the first unreaped operation failed, the rest are aborted.
    fn recover_from_halt(&mut self, out: &mut Vec<Completion<T>>) -> u32 {
        let err = ChanErr(self.regs().read32(self.base + chan::CHANERR));
        let desc_iova = self.ring.desc_iova(self.ring.tail());
        self.stats.halts += 1;
        tracing::warn!(chan = self.n, chanerr = %err, desc = desc_iova, "channel halted; recovering");
        let reset = self.reset();
        let n = self.drain_report(out, reset_stopped(&reset), |first| {
            if first {
                OpError::Halted {
                    chanerr: err,
                    desc_iova,
                }
            } else {
                OpError::Aborted { chanerr: err }
            }
        });
        self.start_or_down(reset);
        n
    }

    /// No progress for `completion_timeout`: every operation fails with a timeout.
    fn recover_from_hang(&mut self, waited: Duration, out: &mut Vec<Completion<T>>) -> u32 {
        let sts = self.regs().read64(self.base + chan::CHANSTS);
        let state = ChanState::from_bits(sts);
        self.stats.timeouts += 1;
        tracing::warn!(chan = self.n, ?waited, %state, "channel hung; resetting");
        let reset = self.reset();
        let n = self.drain_report(out, reset_stopped(&reset), |_| OpError::Timeout {
            waited,
            state,
        });
        self.start_or_down(reset);
        n
    }

    /// Reports every operation in the ring as failed. If the reset before it did not
    /// demonstrably stop the device, the operations' region pins are leaked rather than
    /// released: the device might still access those buffers, so they must stay mapped.
    fn drain_report(
        &mut self,
        out: &mut Vec<Completion<T>>,
        stopped: bool,
        mk: impl Fn(bool) -> OpError,
    ) -> u32 {
        let stats = &mut self.stats;
        let mut n = 0;
        self.ring.drain(|op, first| {
            let OpEntry {
                token,
                payload: OpData { ctx, pins },
                ..
            } = op;
            if !stopped {
                std::mem::forget(pins);
            }
            n += Self::report(out, stats, token, ctx, Err(mk(first)));
        });
        n
    }

    fn start_or_down(&mut self, reset: Result<(), Error>) {
        let r = reset.and_then(|()| self.start());
        if let Err(e) = r {
            tracing::error!(chan = self.n, error = %e, "channel restart failed; channel is down");
            let reason = e.to_string();
            self.down = Some((e, reason));
        }
    }

    /// Resets the channel and starts it again: every unreported operation is reported into
    /// `out` with [`OpError::Reset`]; then reset (suspend, clear CHANERR and CHANERR_INT,
    /// CHANCMD.RESET, expect HALTED), CHANCTRL, CHANCMP, CHAINADDR at the next free slot and a
    /// null descriptor that must complete. Brings a channel that is down back into service.
    /// If the reset fails, nothing is reported and the operations stay queued.
    pub fn restart(&mut self, out: &mut Vec<Completion<T>>) -> Result<(), Error> {
        self.reset()?;
        self.drain_report(out, true, |_| OpError::Reset);
        self.start()?;
        self.down = None;
        Ok(())
    }

    /// Quiesces and resets the channel (rules C1, C2, E1, E2): SUSPEND if ACTIVE or DONE,
    /// W1C CHANERR (and CHANERR_INT below CB3.3), CHANCMD.RESET, wait for it to clear, expect
    /// HALTED with CHANERR clear. Leaves the ring's bookkeeping alone.
    fn reset(&mut self) -> Result<(), Error> {
        let regs = &self.dev.regs;
        let b = self.base;
        let state = ChanState::from_bits(regs.read64(b + chan::CHANSTS));
        if matches!(state, ChanState::Active | ChanState::Done) {
            regs.write8(b + chan::CHANCMD, chancmd::SUSPEND);
            let t0 = Instant::now();
            let mut it = 0;
            loop {
                let s = ChanState::from_bits(regs.read64(b + chan::CHANSTS));
                if !matches!(s, ChanState::Active | ChanState::Done) {
                    break;
                }
                if t0.elapsed() >= self.cfg.suspend_timeout {
                    // Linux resets anyway (`ioat_reset_hw` ignores the quiesce result).
                    tracing::warn!(chan = self.n, state = %s, "suspend timed out; resetting anyway");
                    break;
                }
                spin_wait(&mut it);
            }
        }
        let err = regs.read32(b + chan::CHANERR);
        if err != 0 {
            regs.write32(b + chan::CHANERR, err);
        }
        if self.dev.clear_chanerr_int() {
            let v = regs.config_read32(pci::CHANERR_INT);
            if v != 0 {
                regs.config_write32(pci::CHANERR_INT, v);
            }
        }
        regs.write8(b + chan::CHANCMD, chancmd::RESET);
        let t0 = Instant::now();
        let mut it = 0;
        while regs.read8(b + chan::CHANCMD) & chancmd::RESET != 0 {
            if t0.elapsed() >= self.cfg.reset_timeout {
                return Err(Error::ResetTimeout {
                    chan: self.n,
                    waited: t0.elapsed(),
                });
            }
            spin_wait(&mut it);
        }
        let state = ChanState::from_bits(regs.read64(b + chan::CHANSTS));
        if state != ChanState::Halted {
            return Err(Error::NotHaltedAfterReset {
                chan: self.n,
                state,
            });
        }
        let err = regs.read32(b + chan::CHANERR);
        if err != 0 {
            // Hardware may latch a bit again during reset; one more W1C before giving up.
            regs.write32(b + chan::CHANERR, err);
            let again = regs.read32(b + chan::CHANERR);
            if again != 0 {
                return Err(Error::ErrorAfterReset {
                    chan: self.n,
                    chanerr: ChanErr(again),
                });
            }
        }
        Ok(())
    }

    /// Programs a halted, empty channel and starts it with a null descriptor at `head`.
    fn start(&mut self) -> Result<(), Error> {
        let b = self.base;
        // CHANCTRL on every start (rule T4).
        self.regs().write16(b + chan::CHANCTRL, self.cfg.chanctrl);
        // Zero the writeback word, then point CHANCMP at it (two 32-bit halves, low first).
        let _ = self.mem.write_u64_volatile(self.compl_off, 0);
        self.last_word = 0;
        let compl_iova = self.mem.iova() + self.compl_off as u64;
        write64_halves(self.regs(), b + chan::CHANCMP, compl_iova);
        let pos = self.ring.restart_chain();
        self.push_null(Ctl::null().compl_write(true))
            .map_err(|_| Error::BadConfig("ring has no room for the start descriptor".into()))?;
        let null_iova = self.ring.desc_iova(pos);
        // CHAINADDR at the chain start; the device's count restarts at 0 (rule D2).
        write64_halves(self.regs(), b + chan::CHAINADDR, null_iova);
        let count = self.ring.issue().unwrap_or(1);
        fence(Ordering::SeqCst);
        self.regs().write16(b + chan::DMACOUNT, count);
        self.stats.doorbells += 1;
        self.stats.restarts += 1;
        let t0 = Instant::now();
        let mut it = 0;
        loop {
            let w = self.completion_word();
            if w & chansts::COMPLETED_ADDR_MASK == null_iova
                && ChanState::from_bits(w) != ChanState::Halted
            {
                self.last_word = w;
                self.ring.reap_through(pos, |_| {});
                self.stall_since = None;
                self.last_status_check = None;
                return Ok(());
            }
            let halted = ChanState::from_bits(w) == ChanState::Halted
                || (it % 64 == 63
                    && ChanState::from_bits(self.regs().read64(b + chan::CHANSTS))
                        == ChanState::Halted);
            if halted || t0.elapsed() >= self.cfg.start_timeout {
                let sts = self.regs().read64(b + chan::CHANSTS);
                let err = ChanErr(self.regs().read32(b + chan::CHANERR));
                // Forget the start descriptor; the next restart starts over.
                self.ring.drain(|_, _| {});
                return Err(Error::StartFailed {
                    chan: self.n,
                    state: ChanState::from_bits(sts),
                    chanerr: err,
                    waited: t0.elapsed(),
                });
            }
            spin_wait(&mut it);
        }
    }

    /// Flushes, then polls until nothing is in flight (collecting into `out`) or `timeout`
    /// passes. A hung channel is detected by `completion_timeout` inside [`Channel::poll`], so
    /// with `timeout` above it this returns `Ok` with the failures in `out`.
    pub fn wait_idle(
        &mut self,
        timeout: Duration,
        out: &mut Vec<Completion<T>>,
    ) -> Result<(), Error> {
        self.flush();
        let t0 = Instant::now();
        let mut it = 0;
        loop {
            self.poll(out);
            if self.ring.ops() == 0 || self.down.is_some() {
                break;
            }
            if t0.elapsed() >= timeout {
                return Err(Error::WaitTimeout {
                    in_flight: self.ring.ops(),
                    waited: t0.elapsed(),
                });
            }
            spin_wait(&mut it);
        }
        match &self.down {
            Some((e, r)) => Err(Error::ChannelDown {
                chan: self.n,
                reason: r.clone(),
                cause: Box::new(e.clone()),
            }),
            None => Ok(()),
        }
    }

    /// Reads the channel's registers (MMIO; for diagnostics, not the fast path).
    pub fn regs_snapshot(&self) -> ChannelRegs {
        let r = self.regs();
        let b = self.base;
        ChannelRegs {
            chanctrl: r.read16(b + chan::CHANCTRL),
            dmacount: r.read16(b + chan::DMACOUNT),
            chansts: r.read64(b + chan::CHANSTS),
            chainaddr: r.read64(b + chan::CHAINADDR),
            chancmp: r.read64(b + chan::CHANCMP),
            cdar: r.read64(b + chan::CDAR),
            chanerr: ChanErr(r.read32(b + chan::CHANERR)),
            completion: self.completion_word(),
        }
    }
}

/// The plain submit calls, for channels whose operations carry no context.
impl<R: RegisterAccess> Channel<R, ()> {
    /// [`Channel::copy_with`] without a context.
    pub fn copy(&mut self, src: u64, dst: u64, len: u64) -> Result<Token, SubmitError> {
        self.copy_with(src, dst, len, ())
    }

    /// [`Channel::copy_regions_with`] without a context.
    pub fn copy_regions(
        &mut self,
        src: &DmaRegion,
        src_off: usize,
        dst: &DmaRegion,
        dst_off: usize,
        len: usize,
    ) -> Result<Token, SubmitError> {
        self.copy_regions_with(src, src_off, dst, dst_off, len, ())
    }

    /// [`Channel::fill_with`] without a context.
    pub fn fill(&mut self, dst: u64, pattern: u64, len: u64) -> Result<Token, SubmitError> {
        self.fill_with(dst, pattern, len, ())
    }

    /// [`Channel::fill_region_with`] without a context.
    pub fn fill_region(
        &mut self,
        dst: &DmaRegion,
        dst_off: usize,
        pattern: u64,
        len: usize,
    ) -> Result<Token, SubmitError> {
        self.fill_region_with(dst, dst_off, pattern, len, ())
    }
}

/// Whether a reset result shows the device stopped (RESET cleared and the channel HALTED).
fn reset_stopped(r: &Result<(), Error>) -> bool {
    !matches!(r, Err(e) if e.device_may_be_running())
}

/// Writes a 64-bit register as two 32-bit halves, low first, whatever the access type's own
/// `write64` does: Linux's "1 64b write doesn't work" for CHANCMP (rule W1), and the order
/// every pre-3.3 part requires (W3).
fn write64_halves<R: RegisterAccess>(r: &R, off: u32, val: u64) {
    r.write32(off, val as u32);
    r.write32(off + 4, (val >> 32) as u32);
}

fn region_iova(r: &DmaRegion, off: usize, len: usize) -> Result<u64, SubmitError> {
    match off.checked_add(len) {
        Some(end) if end <= r.len() => Ok(r.iova() + off as u64),
        _ => Err(SubmitError::OutOfRegion {
            off,
            len,
            region_len: r.len(),
        }),
    }
}

impl<R: RegisterAccess, T> Drop for Channel<R, T> {
    fn drop(&mut self) {
        // Stop the device before the ring memory and the pins go away.
        let stopped = self.reset().is_ok();
        if !stopped && self.ring.used() > 0 {
            tracing::error!(
                chan = self.n,
                "channel reset failed on drop; leaking its ring and pinned buffers so the \
                 device cannot write freed memory"
            );
            let ring = std::mem::replace(&mut self.ring, Ring::new(MIN_ORDER, 0));
            std::mem::forget(ring);
            // The ring memory: replace with nothing is impossible, so leak a clone of the
            // handle's pin instead (keeps the mapping and memory alive forever).
            std::mem::forget(self.mem.pin());
        }
        *self.dev.open.lock() &= !(1 << self.n);
    }
}
