//! Copy engines of the service: the I/OAT engine over `ioat_driver` (a model device or a real
//! function through VFIO), and [`AnyEngine`], the one type a poller's copier is built with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ioat_driver::model::{ModelConfig, ModelDevice, Preset, Timing};
use ioat_driver::regs::RegisterAccess;
use ioat_driver::{Channel, DmaMapper, DmaRegion, OpError, SubmitError};

use crate::copy::{
    Completion, CopyEngine, CopyOp, CpuEngine, EngineError, NullEngine, RegionId, Regions,
};

/// Default simulated timing of the model engine: 1.5 µs per descriptor plus 5 GB/s, in the
/// range published for CBDMA channels (per-descriptor latency of a microsecond or two, a few
/// GB/s per channel). Simulated: the model sleeps in its engine thread, so the real cost also
/// includes the OS timer's granularity.
pub const MODEL_PER_DESC: Duration = Duration::from_nanos(1500);
/// See [`MODEL_PER_DESC`].
pub const MODEL_BYTES_PER_SEC: u64 = 5_000_000_000;

/// The default timing of the model engine (see [`MODEL_PER_DESC`]).
pub fn model_timing() -> Timing {
    Timing::Modeled {
        per_desc: MODEL_PER_DESC,
        bytes_per_sec: MODEL_BYTES_PER_SEC,
    }
}

/// Creates a model device with `channels` channels. Its engine threads are started from a
/// helper thread whose timer slack is 1 ns (threads inherit it), so the model's per-descriptor
/// sleeps are not stretched to the default 50 µs slack.
pub fn new_model(preset: Preset, timing: Timing, channels: u8) -> Arc<ModelDevice> {
    let cfg = ModelConfig::preset(preset)
        .chancnt(channels.max(1))
        .timing(timing);
    std::thread::spawn(move || {
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        ModelDevice::new(cfg)
    })
    .join()
    .expect("creating the model device")
}

/// A [`CopyEngine`] over one I/OAT channel. Regions it copies between are mapped once with
/// [`IoatEngine::map`]; the mappings live as long as the engine.
pub struct IoatEngine<R: RegisterAccess> {
    chan: Channel<R>,
    mapper: Arc<dyn DmaMapper>,
    maps: Vec<DmaRegion>,
    tokens: HashMap<u64, u64>,
    aborted: Vec<Completion>,
    scratch: Vec<ioat_driver::Completion>,
    max_len: usize,
    dead: Option<String>,
}

impl<R: RegisterAccess> IoatEngine<R> {
    pub fn new(chan: Channel<R>, mapper: Arc<dyn DmaMapper>) -> Self {
        let max_len = chan.info().piece_size().min(1 << 30) as usize;
        IoatEngine {
            chan,
            mapper,
            maps: Vec::new(),
            tokens: HashMap::new(),
            aborted: Vec::new(),
            scratch: Vec::new(),
            max_len,
            dead: None,
        }
    }

    /// Maps region `id` for the device (once) and records its IOVA in `regions`.
    ///
    /// # Safety
    /// The region's memory must outlive this engine and must only be accessed through raw
    /// pointers while copies on it are in flight (the [`Regions`] contract).
    pub unsafe fn map(&mut self, regions: &mut Regions, id: RegionId) -> Result<(), String> {
        let (ptr, len) = regions.host_range(id).map_err(|e| e.to_string())?;
        let page = self.mapper.page_size().max(1);
        let len = len.div_ceil(page) * page;
        // SAFETY: forwarded from this function's contract; `len` rounded up to whole pages
        // stays inside the page-granular allocation (UMEM mmap, page-aligned heap region).
        let r = unsafe { DmaRegion::register(self.mapper.clone(), ptr, len) }
            .map_err(|e| format!("mapping region {id:?} for DMA: {e}"))?;
        regions.set_iova(id, r.iova()).map_err(|e| e.to_string())?;
        self.maps.push(r);
        Ok(())
    }

    /// The channel (stats, registers).
    pub fn channel(&self) -> &Channel<R> {
        &self.chan
    }
}

fn op_status(e: &OpError) -> EngineError {
    match e {
        OpError::Aborted { .. } | OpError::Reset => EngineError::Aborted,
        other => EngineError::Device(other.to_string()),
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
        if op.len == 0 || op.len > self.max_len {
            return Err(EngineError::BadLength {
                len: op.len,
                max: self.max_len,
            });
        }
        if let Some(r) = &self.dead {
            return Err(EngineError::Down(r.clone()));
        }
        let src = mem.iova(op.src, op.len)?;
        let dst = mem.iova(op.dst, op.len)?;
        match self.chan.copy(src, dst, op.len as u64) {
            Ok(t) => {
                self.tokens.insert(t.0, op.cookie);
                Ok(())
            }
            Err(SubmitError::RingFull { .. }) => Err(EngineError::Busy {
                in_flight: self.in_flight(),
                capacity: self.capacity(),
            }),
            Err(SubmitError::ChannelDown { reason, .. }) => Err(EngineError::Down(reason)),
            Err(e) => Err(EngineError::Device(e.to_string())),
        }
    }
    fn flush(&mut self, _mem: &Regions) {
        self.chan.flush();
    }
    fn poll(&mut self, _mem: &Regions, out: &mut Vec<Completion>) -> usize {
        let start = out.len();
        out.append(&mut self.aborted);
        self.chan.poll(&mut self.scratch);
        for c in self.scratch.drain(..) {
            let Some(cookie) = self.tokens.remove(&c.token.0) else {
                continue;
            };
            out.push(Completion {
                cookie,
                status: c.result.as_ref().map_err(op_status).map(|_| ()),
            });
        }
        out.len() - start
    }
    fn in_flight(&self) -> usize {
        self.tokens.len() + self.aborted.len()
    }
    fn capacity(&self) -> usize {
        (self.chan.capacity() as usize).saturating_sub(1).max(1)
    }
    fn max_len(&self) -> usize {
        self.max_len
    }
    fn healthy(&self) -> bool {
        self.dead.is_none() && self.chan.down_reason().is_none()
    }
    fn abort(&mut self, _mem: &Regions) {
        // restart() resets the channel (the device stops touching memory) and reports every
        // unfinished op as reset; only then are they handed back as aborted.
        match self.chan.restart(&mut self.scratch) {
            Ok(()) => {}
            Err(e) => {
                // The ops stay queued and unreported: their frames and buffers stay held
                // (never reused while the device might still write them).
                tracing::error!(error = %e, "I/OAT channel restart failed; DMA disabled");
                self.dead = Some(e.to_string());
            }
        }
        for c in self.scratch.drain(..) {
            if let Some(cookie) = self.tokens.remove(&c.token.0) {
                self.aborted.push(Completion {
                    cookie,
                    status: Err(EngineError::Aborted),
                });
            }
        }
    }
}

/// The engine a poller's copier runs with.
pub enum AnyEngine {
    Cpu(CpuEngine),
    Null(NullEngine),
    Model(Box<IoatEngine<Arc<ModelDevice>>>),
    Vfio(Box<IoatEngine<Arc<ioat_driver::vfio::VfioBar>>>),
}

macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            AnyEngine::Cpu($e) => $body,
            AnyEngine::Null($e) => $body,
            AnyEngine::Model($e) => $body,
            AnyEngine::Vfio($e) => $body,
        }
    };
}

impl CopyEngine for AnyEngine {
    fn name(&self) -> &'static str {
        each!(self, e => e.name())
    }
    fn is_dma(&self) -> bool {
        each!(self, e => e.is_dma())
    }
    fn submit(&mut self, mem: &Regions, op: CopyOp) -> Result<(), EngineError> {
        each!(self, e => e.submit(mem, op))
    }
    fn flush(&mut self, mem: &Regions) {
        each!(self, e => e.flush(mem))
    }
    fn poll(&mut self, mem: &Regions, out: &mut Vec<Completion>) -> usize {
        each!(self, e => e.poll(mem, out))
    }
    fn in_flight(&self) -> usize {
        each!(self, e => e.in_flight())
    }
    fn capacity(&self) -> usize {
        each!(self, e => e.capacity())
    }
    fn max_len(&self) -> usize {
        each!(self, e => e.max_len())
    }
    fn busy(&self) -> bool {
        each!(self, e => e.busy())
    }
    fn healthy(&self) -> bool {
        each!(self, e => e.healthy())
    }
    fn abort(&mut self, mem: &Regions) {
        each!(self, e => e.abort(mem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::{HeapRegion, MemRef};
    use ioat_driver::{ChannelConfig, Device};

    #[test]
    fn ioat_engine_on_the_model_copies_and_redoes_nothing() {
        let model = new_model(Preset::Skx, Timing::Instant, 1);
        let dev = Device::open(model.clone(), model.mapper()).unwrap();
        let ch = dev
            .channel(0, ChannelConfig::default().ring_order(6))
            .unwrap();
        let mut e = IoatEngine::new(ch, dev.mapper());
        let mut r = Regions::new();
        let a = r.add(Arc::new(HeapRegion::new(8192)), true);
        let b = r.add(Arc::new(HeapRegion::new(8192)), true);
        // SAFETY: both heap regions live in `r` until the end of the test, after the engine.
        unsafe {
            e.map(&mut r, a).unwrap();
            e.map(&mut r, b).unwrap();
        }
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        r.write(MemRef::new(a, 10), &data).unwrap();
        for (k, (off, len)) in [(0usize, 3000usize), (3000, 2000)].into_iter().enumerate() {
            e.submit(
                &r,
                CopyOp {
                    src: MemRef::new(a, 10 + off),
                    dst: MemRef::new(b, 100 + off),
                    len,
                    cookie: k as u64,
                },
            )
            .unwrap();
        }
        e.flush(&r);
        let mut out = Vec::new();
        let t0 = std::time::Instant::now();
        while out.len() < 2 && t0.elapsed() < Duration::from_secs(5) {
            e.poll(&r, &mut out);
        }
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|c| c.status.is_ok()));
        let mut got = vec![0u8; 5000];
        r.read(MemRef::new(b, 100), &mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(e.in_flight(), 0);
        // An unmapped region is refused with the fix in the message.
        let c = r.add(Arc::new(HeapRegion::new(4096)), true);
        let err = e
            .submit(
                &r,
                CopyOp {
                    src: MemRef::new(c, 0),
                    dst: MemRef::new(b, 0),
                    len: 8,
                    cookie: 9,
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("map it for DMA"), "{err}");
        drop(e);
        drop(r);
    }
}
