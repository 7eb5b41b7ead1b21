//! The caller's per-operation context: every op submitted with a context gets it back in its
//! completion exactly once, whatever the outcome (success, halt, abort, timeout, reset), and a
//! context is never duplicated or lost (a live-count of the context values proves it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ioat_driver::model::{Fault, ModelConfig, ModelDevice, Preset};
use ioat_driver::regs::chanerr;
use ioat_driver::{Channel, ChannelConfig, Completion, Device, DmaRegion, OpError};

/// A context that is not `Copy` and counts how many of its kind are alive.
#[derive(Debug)]
struct Ctx {
    id: u32,
    live: Arc<AtomicUsize>,
}

impl Ctx {
    fn new(id: u32, live: &Arc<AtomicUsize>) -> Ctx {
        live.fetch_add(1, Ordering::SeqCst);
        Ctx {
            id,
            live: live.clone(),
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

type Ch = Channel<Arc<ModelDevice>, Ctx>;

fn poll_until(ch: &mut Ch, n: usize) -> Vec<Completion<Ctx>> {
    let mut out = Vec::new();
    let t0 = Instant::now();
    while out.len() < n {
        ch.poll(&mut out);
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} of {n} completions",
            out.len()
        );
    }
    out
}

fn ids(v: &[Completion<Ctx>]) -> Vec<u32> {
    v.iter().map(|c| c.ctx.id).collect()
}

#[test]
fn context_comes_back_with_every_outcome_exactly_once() {
    let m = ModelDevice::new(ModelConfig::preset(Preset::Skx));
    let d = Device::open(m.clone(), m.mapper()).unwrap();
    let cfg = ChannelConfig::default()
        .ring_order(6)
        .completion_timeout(Duration::from_millis(60));
    let mut ch: Ch = d.channel_with_context(0, cfg).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let src = DmaRegion::alloc(d.mapper(), 64 << 10).unwrap();
    let dst = DmaRegion::alloc(d.mapper(), 64 << 10).unwrap();
    src.write(0, &[0x5a; 4096]).unwrap();

    // Success, through all four submit calls; a fence in between adds an internal descriptor
    // that is neither counted nor reported.
    let t0 = ch
        .copy_regions_with(&src, 0, &dst, 0, 1000, Ctx::new(10, &live))
        .unwrap();
    ch.flush();
    ch.fence().unwrap();
    ch.copy_with(src.iova(), dst.iova() + 2000, 100, Ctx::new(11, &live))
        .unwrap();
    ch.fill_region_with(&dst, 4096, 0x0102_0304_0506_0708, 64, Ctx::new(12, &live))
        .unwrap();
    let t3 = ch
        .fill_with(dst.iova() + 8192, 7, 8, Ctx::new(13, &live))
        .unwrap();
    assert_eq!(
        ch.in_flight(),
        4,
        "the fence's null descriptor is not an op"
    );
    assert_eq!(live.load(Ordering::SeqCst), 4);
    assert!(src.pins() > 0 && dst.pins() > 0);
    ch.flush();
    let out = poll_until(&mut ch, 4);
    assert_eq!(ids(&out), [10, 11, 12, 13]);
    assert_eq!(out[0].token, t0);
    assert_eq!(out[3].token, t3);
    assert!(out.iter().all(|c| c.result.is_ok()));
    assert_eq!(dst.to_vec(0, 1000).unwrap(), vec![0x5a; 1000]);
    assert_eq!(ch.in_flight(), 0);
    drop(out);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "each context handed back once"
    );
    assert_eq!(
        (src.pins(), dst.pins()),
        (0, 0),
        "pins released with the report"
    );

    // Halt: the failing op and the aborted ones behind it get their contexts too.
    m.inject(
        0,
        Fault::ChanErrOnNth {
            nth: 2,
            bits: chanerr::READ_DATA,
        },
    );
    for id in 20..24 {
        ch.copy_regions_with(&src, 0, &dst, 0, 64, Ctx::new(id, &live))
            .unwrap();
    }
    ch.flush();
    let out = poll_until(&mut ch, 4);
    assert_eq!(ids(&out), [20, 21, 22, 23]);
    assert!(out[0].result.is_ok());
    assert!(matches!(out[1].result, Err(OpError::Halted { .. })));
    assert!(matches!(out[2].result, Err(OpError::Aborted { .. })));
    assert!(matches!(out[3].result, Err(OpError::Aborted { .. })));
    drop(out);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // Hang: every op times out, with its context.
    m.inject(0, Fault::Hang { after: 0 });
    for id in 30..33 {
        ch.copy_regions_with(&src, 0, &dst, 0, 64, Ctx::new(id, &live))
            .unwrap();
    }
    ch.flush();
    let out = poll_until(&mut ch, 3);
    assert_eq!(ids(&out), [30, 31, 32]);
    assert!(out
        .iter()
        .all(|c| matches!(c.result, Err(OpError::Timeout { .. }))));
    drop(out);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // Restart: queued (flushed or not) ops come back as Reset.
    ch.copy_regions_with(&src, 0, &dst, 0, 64, Ctx::new(40, &live))
        .unwrap();
    ch.flush();
    ch.copy_regions_with(&src, 0, &dst, 0, 64, Ctx::new(41, &live))
        .unwrap();
    let mut out = Vec::new();
    ch.restart(&mut out).unwrap();
    assert_eq!(ids(&out), [40, 41]);
    assert!(out.iter().all(|c| c.result == Err(OpError::Reset)));
    drop(out);
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // A channel dropped with ops queued drops their contexts (after its reset).
    ch.copy_regions_with(&src, 0, &dst, 0, 64, Ctx::new(50, &live))
        .unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(ch);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert_eq!((src.pins(), dst.pins()), (0, 0));
    let v = m.violations();
    assert!(v.is_empty(), "{v:?}");
}

/// A channel opened for `u64` cookies (what the copy engine uses) gives the cookie back as-is;
/// the plain calls of a `()` channel still work beside it on another device.
#[test]
fn cookies_and_unit_context() {
    let m = ModelDevice::new(ModelConfig::preset(Preset::Icx));
    let d = Device::open(m.clone(), m.mapper()).unwrap();
    let mut ch: Channel<_, u64> = d.channel_with_context(0, ChannelConfig::default()).unwrap();
    let src = DmaRegion::alloc(d.mapper(), 4096).unwrap();
    let dst = DmaRegion::alloc(d.mapper(), 4096).unwrap();
    for (k, cookie) in [u64::MAX, 0, 0xdead_beef].into_iter().enumerate() {
        ch.copy_regions_with(&src, k * 8, &dst, k * 8, 8, cookie)
            .unwrap();
    }
    let mut out = Vec::new();
    ch.wait_idle(Duration::from_secs(5), &mut out).unwrap();
    assert_eq!(
        out.iter().map(|c| c.ctx).collect::<Vec<_>>(),
        [u64::MAX, 0, 0xdead_beef]
    );
    drop(ch);

    let mut plain = d.channel(0, ChannelConfig::default()).unwrap();
    let t = plain.copy_regions(&src, 0, &dst, 0, 8).unwrap();
    let mut out: Vec<Completion> = Vec::new();
    plain.wait_idle(Duration::from_secs(5), &mut out).unwrap();
    assert_eq!(
        out,
        vec![Completion {
            token: t,
            ctx: (),
            result: Ok(())
        }]
    );
    assert!(m.violations().is_empty());
}
