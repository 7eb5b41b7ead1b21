//! Copy engines of the service: the I/OAT engine over `ioat_driver` (a model device or a real
//! function through VFIO), and [`AnyEngine`], the one type a poller's copier is built with.

use std::sync::Arc;
use std::time::Duration;

use ioat_driver::model::{ModelConfig, ModelDevice, Preset, Timing};

use crate::copy::{
    CopyEngine, CopyOp, CpuEngine, EngineCompletion, EngineError, IoatEngine, NullEngine, Regions,
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

/// Creates a model device with `channels` channels and the given timing. (Its engine threads
/// set their own 1 ns timer slack, so modeled sleeps are not stretched to the default 50 µs.)
pub fn new_model(preset: Preset, timing: Timing, channels: u8) -> Arc<ModelDevice> {
    ModelDevice::new(
        ModelConfig::preset(preset)
            .chancnt(channels.max(1))
            .timing(timing),
    )
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
    fn poll(&mut self, mem: &Regions, out: &mut Vec<EngineCompletion>) -> usize {
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
            .channel_with_context(0, ChannelConfig::default().ring_order(6))
            .unwrap();
        let mut r = Regions::new();
        let a = r.add(Arc::new(HeapRegion::new(8192)), true);
        let b = r.add(Arc::new(HeapRegion::new(8192)), true);
        let mut e = IoatEngine::new(ch, dev.mapper(), &mut r).unwrap();
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
