//! The I/OAT copy engine: [`CopyEngine`] over one `ioat_driver::Channel` — a real channel
//! through VFIO or the software model (whose engine runs on its own thread with its timing
//! model).
//!
//! Every DMA-capable region (frame memory, registered buffer pools) is mapped once, when the
//! engine is created or when [`IoatEngine::map_regions`] is called after adding regions; ops
//! use `Channel::copy_regions_with`, so the driver pins both regions until the op is reported
//! and a region can never be unmapped under the device.
//!
//! Each op's cookie rides in the driver's ring as the op's context and comes back in the
//! driver's completion (success, halt, abort, timeout or reset): no table maps tokens back to
//! cookies.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ioat_driver::regs::RegisterAccess;
use ioat_driver::{Channel, DmaMapper, DmaRegion, MapError, OpError, SubmitError};
use thiserror::Error;

use super::engine::{CopyEngine, CopyOp, EngineCompletion, EngineError};
use super::mem::{MemError, RegionId, RegionMemory, Regions};

/// Why [`IoatEngine::new`] or [`IoatEngine::map_regions`] could not map a region.
#[derive(Debug, Error)]
pub enum IoatMapError {
    #[error("mapping a region for DMA: {0}")]
    Map(#[from] MapError),
    #[error("looking up a region to map: {0}")]
    Mem(#[from] MemError),
}

struct Mapped {
    dma: DmaRegion,
    /// Keeps the memory alive at least as long as the mapping.
    mem: Arc<dyn RegionMemory>,
}

/// Copy engine over an I/OAT channel.
pub struct IoatEngine<R: RegisterAccess> {
    /// The channel; each op carries the copier's cookie as its context.
    ch: ManuallyDrop<Channel<R, u64>>,
    mapper: Arc<dyn DmaMapper>,
    mapped: HashMap<RegionId, Mapped>,
    scratch: Vec<ioat_driver::Completion<u64>>,
    /// Ops cut short by [`CopyEngine::abort`], reported at the next poll.
    aborted: Vec<EngineCompletion>,
    /// Cookies of ops the driver failed while its reset could not show the device stopped
    /// (the channel went down): the device may still write their buffers, so they are not
    /// reported and stay in flight until a restart proves it stopped ([`CopyEngine::abort`]).
    held: Vec<u64>,
    /// When `abort` last tried to restart a channel that is down.
    last_down_restart: Option<Instant>,
}

/// A channel that is down is restarted by `abort` at most this often: each attempt may spend
/// the reset and suspend timeouts (300 ms by default) on a wedged device.
const DOWN_RESTART_INTERVAL: Duration = Duration::from_secs(1);

impl<R: RegisterAccess> std::fmt::Debug for IoatEngine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoatEngine")
            .field("channel", &*self.ch)
            .field("regions", &self.mapped.len())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<R: RegisterAccess> IoatEngine<R> {
    /// Wraps an open channel and maps every DMA-capable region of `regions` with `mapper`
    /// (the device's mapper: `Device::mapper()`), recording each region's IOVA.
    /// The channel carries each op's cookie as its context: open it with
    /// `Device::channel_with_context` (the type is inferred from here).
    pub fn new(
        ch: Channel<R, u64>,
        mapper: Arc<dyn DmaMapper>,
        regions: &mut Regions,
    ) -> Result<Self, IoatMapError> {
        let mut e = Self {
            ch: ManuallyDrop::new(ch),
            mapper,
            mapped: HashMap::new(),
            scratch: Vec::new(),
            aborted: Vec::new(),
            held: Vec::new(),
            last_down_restart: None,
        };
        e.map_regions(regions)?;
        Ok(e)
    }

    /// Maps DMA-capable regions not mapped yet (call after adding regions). Returns how many
    /// were mapped.
    pub fn map_regions(&mut self, regions: &mut Regions) -> Result<usize, IoatMapError> {
        let mut n = 0;
        for id in regions.ids().collect::<Vec<_>>() {
            if !regions.dma_ok(id) || self.mapped.contains_key(&id) {
                continue;
            }
            let mem = regions.memory(id)?;
            // SAFETY: `mem` is kept alive in `Mapped` for as long as the DmaRegion (and is
            // leaked in Drop if the device might still use it); its bytes are only reached
            // through raw pointers (RegionMemory contract). Alignment is checked by register.
            let dma = unsafe { DmaRegion::register(self.mapper.clone(), mem.as_ptr(), mem.len())? };
            // Kept in `mapped` first: whatever happens next, the mapping is unmapped on drop.
            let iova = dma.iova();
            self.mapped.insert(id, Mapped { dma, mem });
            regions.set_iova(id, iova)?;
            n += 1;
        }
        Ok(n)
    }

    /// The channel (stats, register snapshot).
    pub fn channel(&self) -> &Channel<R, u64> {
        &self.ch
    }

    /// The engine's view of a refused submit. A full ring is [`EngineError::Busy`] with the
    /// engine's own counts: ops in flight and the most it can hold. (Every op of this engine is
    /// at most [`CopyEngine::max_len`] bytes, one descriptor, so a full ring means as many ops
    /// in flight as the ring has usable slots.)
    fn submit_error(&self, e: SubmitError) -> EngineError {
        match e {
            SubmitError::RingFull { .. } => EngineError::Busy {
                in_flight: self.in_flight(),
                capacity: self.capacity(),
            },
            SubmitError::ZeroLength => EngineError::BadLength {
                len: 0,
                max: self.max_len(),
            },
            SubmitError::TooLong { len, .. } => EngineError::BadLength {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: self.max_len(),
            },
            SubmitError::ChannelDown { reason, .. } => EngineError::Down(reason),
            other => EngineError::Submit(other),
        }
    }
}

fn op_error(e: OpError) -> EngineError {
    match e {
        OpError::Reset | OpError::Aborted { .. } => EngineError::Aborted,
        other => EngineError::Op(other),
    }
}

impl<R: RegisterAccess> CopyEngine for IoatEngine<R> {
    fn name(&self) -> &'static str {
        "ioat"
    }
    fn is_dma(&self) -> bool {
        true
    }
    fn submit(&mut self, mem: &Regions, op: CopyOp) -> Result<(), EngineError> {
        mem.resolve(op.src, op.len)?;
        mem.resolve(op.dst, op.len)?;
        let region = |id: RegionId| {
            self.mapped
                .get(&id)
                .map(|m| &m.dma)
                .ok_or(EngineError::Mem(MemError::NotMapped(id)))
        };
        let (src, dst) = (region(op.src.region)?, region(op.dst.region)?);
        match self
            .ch
            .copy_regions_with(src, op.src.offset, dst, op.dst.offset, op.len, op.cookie)
        {
            Ok(_token) => Ok(()),
            Err(e) => Err(self.submit_error(e)),
        }
    }
    fn flush(&mut self, _mem: &Regions) {
        self.ch.flush();
    }
    fn poll(&mut self, _mem: &Regions, out: &mut Vec<EngineCompletion>) -> usize {
        let start = out.len();
        out.append(&mut self.aborted);
        self.ch.poll(&mut self.scratch);
        // Failures reported by a recovery whose reset did not show the device stopped: the
        // device may still write those buffers, so they must not go back to their owners.
        let unstopped = self
            .ch
            .down_error()
            .is_some_and(ioat_driver::Error::device_may_be_running);
        for c in self.scratch.drain(..) {
            match c.result {
                Err(_) if unstopped => self.held.push(c.ctx),
                r => out.push(EngineCompletion {
                    cookie: c.ctx,
                    status: r.map_err(op_error),
                }),
            }
        }
        out.len() - start
    }
    fn in_flight(&self) -> usize {
        self.ch.in_flight() as usize + self.aborted.len() + self.held.len()
    }
    fn capacity(&self) -> usize {
        self.ch.capacity() as usize
    }
    fn max_len(&self) -> usize {
        self.ch.info().piece_size().min(usize::MAX as u64) as usize
    }
    fn busy(&self) -> bool {
        self.ch.free_slots() == 0
    }
    fn healthy(&self) -> bool {
        self.ch.down_reason().is_none()
    }
    fn abort(&mut self, _mem: &Regions) {
        if self.ch.down_reason().is_some() {
            let now = Instant::now();
            if self
                .last_down_restart
                .is_some_and(|t| now.duration_since(t) < DOWN_RESTART_INTERVAL)
            {
                return;
            }
            self.last_down_restart = Some(now);
        }
        // A reset stops the device; every unreported op comes back as Reset -> Aborted. The
        // driver reports them only after its reset succeeded, even if the start after it fails.
        let r = self.ch.restart(&mut self.scratch);
        // A reset that completed proves the device stopped, even if the start after it failed:
        // the held ops (older than any still in the ring) can be given back too. If it did not
        // complete, the driver reported nothing.
        if !matches!(&r, Err(e) if e.device_may_be_running()) {
            self.aborted
                .extend(self.held.drain(..).map(|cookie| EngineCompletion {
                    cookie,
                    status: Err(EngineError::Aborted),
                }));
        }
        self.aborted
            .extend(self.scratch.drain(..).map(|c| EngineCompletion {
                cookie: c.ctx,
                status: Err(EngineError::Aborted),
            }));
        match r {
            Ok(()) => self.last_down_restart = None,
            Err(e) => {
                // The ops still unreported stay in flight (and their frames held): the device
                // might still write them.
                tracing::error!(error = %e, "I/OAT channel restart after a DMA timeout failed");
            }
        }
    }
}

impl<R: RegisterAccess> Drop for IoatEngine<R> {
    fn drop(&mut self) {
        // SAFETY: `ch` is dropped exactly once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ch) };
        // Dropping the channel resets it; ops it could not stop keep their region pins (the
        // driver leaks them). Such a region stays mapped, so its memory must stay too.
        for (_, m) in self.mapped.drain() {
            if m.dma.pins() > 0 {
                std::mem::forget(m.mem);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::mem::{HeapRegion, MemRef};
    use ioat_driver::model::{Fault, ModelConfig, ModelDevice, Preset};
    use ioat_driver::regs::chanerr;
    use ioat_driver::{ChannelConfig, Device};

    struct Setup {
        model: Arc<ModelDevice>,
        regions: Regions,
        src: MemRef,
        dst: MemRef,
        engine: IoatEngine<Arc<ModelDevice>>,
    }

    fn setup(ring_order: u32) -> Setup {
        let model = ModelDevice::new(ModelConfig::preset(Preset::Skx));
        let dev = Device::open(model.clone(), model.mapper()).unwrap();
        let ch = dev
            .channel_with_context(0, ChannelConfig::default().ring_order(ring_order))
            .unwrap();
        let mut regions = Regions::new();
        let a = regions.add(Arc::new(HeapRegion::new(8192)), true);
        let b = regions.add(Arc::new(HeapRegion::new(8192)), true);
        let engine = IoatEngine::new(ch, dev.mapper(), &mut regions).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 5) as u8).collect();
        regions.write(MemRef::new(a, 0), &data).unwrap();
        Setup {
            model,
            regions,
            src: MemRef::new(a, 0),
            dst: MemRef::new(b, 0),
            engine,
        }
    }

    fn op(s: &Setup, k: usize, cookie: u64) -> CopyOp {
        CopyOp {
            src: s.src.plus(k * 256),
            dst: s.dst.plus(k * 256),
            len: 256,
            cookie,
        }
    }

    fn poll_n(s: &mut Setup, n: usize) -> Vec<EngineCompletion> {
        let mut out = Vec::new();
        let t0 = std::time::Instant::now();
        while out.len() < n {
            s.engine.poll(&s.regions, &mut out);
            assert!(
                t0.elapsed().as_secs() < 10,
                "only {} of {n} completions",
                out.len()
            );
        }
        out
    }

    /// A full ring is `Busy` with the engine's own numbers: ops in flight and the most it can
    /// hold, not the driver's (slots needed, slots free) pair.
    #[test]
    fn full_ring_is_busy_with_in_flight_and_capacity() {
        // 4 slots, 3 usable: capacity 3.
        let mut s = setup(2);
        assert_eq!(s.engine.capacity(), 3);
        for k in 0..3 {
            s.engine.submit(&s.regions, op(&s, k, k as u64)).unwrap();
        }
        assert!(s.engine.busy());
        let e = s.engine.submit(&s.regions, op(&s, 3, 3)).unwrap_err();
        assert_eq!(
            e,
            EngineError::Busy {
                in_flight: 3,
                capacity: 3
            }
        );
        assert!(e.to_string().contains("3 ops in flight of 3"), "{e}");
        s.engine.flush(&s.regions);
        let out = poll_n(&mut s, 3);
        assert!(out.iter().all(|c| c.status.is_ok()));
        assert_eq!(s.engine.in_flight(), 0);
        assert!(s.model.violations().is_empty());
    }

    /// Cookies come back from the driver's completions, in submission order, on success and
    /// on a halt (the failed op keeps the driver's error as its source; later ops are aborted).
    #[test]
    fn cookies_come_back_through_success_halt_and_abort() {
        let mut s = setup(6);
        let cookies = [100u64, 7, 42, 9, 1000];
        // The third descriptor from now fails.
        s.model.inject(
            0,
            Fault::ChanErrOnNth {
                nth: 3,
                bits: chanerr::READ_DATA,
            },
        );
        for (k, &c) in cookies.iter().enumerate() {
            s.engine.submit(&s.regions, op(&s, k, c)).unwrap();
        }
        assert_eq!(s.engine.in_flight(), 5);
        s.engine.flush(&s.regions);
        let out = poll_n(&mut s, 5);
        assert_eq!(out.iter().map(|c| c.cookie).collect::<Vec<_>>(), cookies);
        assert_eq!(out[0].status, Ok(()));
        assert_eq!(out[1].status, Ok(()));
        let Err(EngineError::Op(OpError::Halted { chanerr, .. })) = &out[2].status else {
            panic!("op 2 must carry the driver's halt: {:?}", out[2].status)
        };
        assert!(chanerr.0 & chanerr::READ_DATA != 0);
        let err = out[2].status.clone().unwrap_err();
        assert!(
            std::error::Error::source(&err).is_some(),
            "the driver error is kept as the source"
        );
        assert_eq!(out[3].status, Err(EngineError::Aborted));
        assert_eq!(out[4].status, Err(EngineError::Aborted));
        assert_eq!(s.engine.in_flight(), 0);
        // The channel recovered: a new op completes with its own cookie.
        s.engine.submit(&s.regions, op(&s, 5, 77)).unwrap();
        s.engine.flush(&s.regions);
        assert_eq!(
            poll_n(&mut s, 1),
            vec![EngineCompletion {
                cookie: 77,
                status: Ok(())
            }]
        );
        assert!(s.model.violations().is_empty());
    }

    /// The model behind a register wrapper that can make CHANCMD.RESET look stuck.
    struct StuckReset {
        inner: Arc<ModelDevice>,
        stuck: std::sync::atomic::AtomicBool,
    }

    impl RegisterAccess for StuckReset {
        fn read8(&self, off: u32) -> u8 {
            let v = self.inner.read8(off);
            let cmd = ioat_driver::regs::channel_base(0) + ioat_driver::regs::chan::CHANCMD;
            if off == cmd && self.stuck.load(std::sync::atomic::Ordering::SeqCst) {
                v | ioat_driver::regs::chancmd::RESET
            } else {
                v
            }
        }
        fn read16(&self, off: u32) -> u16 {
            self.inner.read16(off)
        }
        fn read32(&self, off: u32) -> u32 {
            self.inner.read32(off)
        }
        fn write8(&self, off: u32, val: u8) {
            self.inner.write8(off, val)
        }
        fn write16(&self, off: u32, val: u16) {
            self.inner.write16(off, val)
        }
        fn write32(&self, off: u32, val: u32) {
            self.inner.write32(off, val)
        }
        fn config_read32(&self, off: u16) -> u32 {
            self.inner.config_read32(off)
        }
        fn config_write32(&self, off: u16, val: u32) {
            self.inner.config_write32(off, val)
        }
    }

    /// A hang whose reset never completes: the driver fails the ops and the channel goes down,
    /// but the device was not shown stopped, so the engine keeps the ops in flight (their
    /// buffers must not be reused). Once a restart succeeds they come back, aborted, once.
    #[test]
    fn ops_failed_by_an_unfinished_reset_stay_in_flight_until_a_restart() {
        use std::sync::atomic::Ordering;
        let model = ModelDevice::new(ModelConfig::preset(Preset::Skx));
        let regs = Arc::new(StuckReset {
            inner: model.clone(),
            stuck: false.into(),
        });
        let dev = Device::open(regs.clone(), model.mapper()).unwrap();
        let mut cfg = ChannelConfig::default()
            .ring_order(6)
            .completion_timeout(std::time::Duration::from_millis(20));
        cfg.reset_timeout = std::time::Duration::from_millis(10);
        let ch = dev.channel_with_context(0, cfg).unwrap();
        let mut regions = Regions::new();
        let a = regions.add(Arc::new(HeapRegion::new(4096)), true);
        let b = regions.add(Arc::new(HeapRegion::new(4096)), true);
        let mut e = IoatEngine::new(ch, dev.mapper(), &mut regions).unwrap();
        model.inject(0, Fault::Hang { after: 0 });
        regs.stuck.store(true, Ordering::SeqCst);
        for c in [11u64, 12] {
            let op = CopyOp {
                src: MemRef::new(a, 0),
                dst: MemRef::new(b, c as usize * 8),
                len: 8,
                cookie: c,
            };
            e.submit(&regions, op).unwrap();
        }
        e.flush(&regions);
        let mut out = Vec::new();
        let t0 = std::time::Instant::now();
        while e.healthy() {
            e.poll(&regions, &mut out);
            assert!(t0.elapsed().as_secs() < 10, "the hang was never detected");
        }
        assert!(
            out.is_empty(),
            "reported although the device may run: {out:?}"
        );
        assert_eq!(e.in_flight(), 2);
        // Still stuck: abort cannot prove the device stopped; nothing comes back.
        e.abort(&regions);
        e.poll(&regions, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(e.in_flight(), 2);
        // A second abort right away does not spend another reset timeout.
        let t = std::time::Instant::now();
        e.abort(&regions);
        assert!(t.elapsed() < std::time::Duration::from_millis(5));
        // The reset works again: the next restart attempt (after the interval) frees them.
        regs.stuck.store(false, Ordering::SeqCst);
        e.last_down_restart = None;
        e.abort(&regions);
        assert!(e.healthy());
        e.poll(&regions, &mut out);
        assert_eq!(out.iter().map(|c| c.cookie).collect::<Vec<_>>(), [11, 12]);
        assert!(out.iter().all(|c| c.status == Err(EngineError::Aborted)));
        assert_eq!(e.in_flight(), 0);
    }

    /// `abort` on a hung channel reports every op it cut short, with its cookie, once.
    #[test]
    fn abort_reports_each_cookie_once() {
        let mut s = setup(6);
        s.model.inject(0, Fault::Hang { after: 1 });
        for (k, c) in [5u64, 6, 7].into_iter().enumerate() {
            s.engine.submit(&s.regions, op(&s, k, c)).unwrap();
        }
        s.engine.flush(&s.regions);
        let first = poll_n(&mut s, 1);
        assert_eq!(first[0].cookie, 5);
        assert_eq!(first[0].status, Ok(()));
        s.engine.abort(&s.regions);
        assert_eq!(s.engine.in_flight(), 2);
        let out = poll_n(&mut s, 2);
        assert_eq!(out.iter().map(|c| c.cookie).collect::<Vec<_>>(), [6, 7]);
        assert!(out.iter().all(|c| c.status == Err(EngineError::Aborted)));
        let mut more = Vec::new();
        assert_eq!(s.engine.poll(&s.regions, &mut more), 0);
        assert_eq!(s.engine.in_flight(), 0);
        assert!(s.model.violations().is_empty());
    }
}
