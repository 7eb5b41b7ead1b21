//! Copier behaviour, branch by branch, with the null engine (deterministic, no privileges).

use std::sync::Arc;

use netrx::copy::*;

const FRAME: usize = 16384;

struct Rig<E: CopyEngine> {
    c: Copier<E>,
    frames: RegionId,
    plain: RegionId,
    pool: BufferPool,
    s: StreamId,
    next_frame: u64,
    sent: Vec<u8>,
    events: Vec<Event>,
}

fn rig_with<E: CopyEngine>(policy: PolicyConfig, engine: E, rcvbuf: usize) -> Rig<E> {
    rig_cfg(policy, engine, rcvbuf, |_| {})
}

fn rig_cfg<E: CopyEngine>(
    policy: PolicyConfig,
    engine: E,
    rcvbuf: usize,
    tune: impl FnOnce(&mut CopierConfig),
) -> Rig<E> {
    let mut mem = Regions::new();
    let frames = mem.add(Arc::new(HeapRegion::new(256 * FRAME)), true);
    let plain = mem.add(Arc::new(HeapRegion::new(1 << 20)), false);
    let pool = BufferPool::heap(&mut mem, 4, 1 << 20);
    let mut cfg = CopierConfig::new(policy);
    cfg.dma_timeout_ns = 50_000;
    tune(&mut cfg);
    let mut c = Copier::new(cfg, engine, mem, Box::new(ManualClock::default()));
    let s = c.open_stream(rcvbuf);
    Rig {
        c,
        frames,
        plain,
        pool,
        s,
        next_frame: 0,
        sent: Vec::new(),
        events: Vec::new(),
    }
}

fn rig(policy: PolicyConfig, null: NullConfig) -> Rig<NullEngine> {
    rig_with(policy, NullEngine::new(null), 250_000)
}

impl<E: CopyEngine> Rig<E> {
    /// Sends one segment of `len` bytes (pattern continues the stream) in a fresh frame.
    fn send(&mut self, len: usize, psh: bool) -> FrameId {
        let id = self.next_frame;
        self.next_frame += 1;
        let at = MemRef::new(self.frames, (id as usize % 256) * FRAME);
        let data: Vec<u8> = (0..len)
            .map(|i| ((self.sent.len() + i) * 7 % 251) as u8)
            .collect();
        self.c.regions().write(at, &data).unwrap();
        self.sent.extend_from_slice(&data);
        self.c
            .on_segment(
                self.s,
                Segment {
                    frame: FrameId(id),
                    src: at,
                    len,
                    psh,
                },
            )
            .unwrap();
        FrameId(id)
    }

    fn post(&mut self, req: RecvRequest) -> MemRef {
        let buf = self.pool.take().unwrap();
        let dst = self.pool.start(buf);
        self.c.post_recv(self.s, req, dst, buf.0 as u64).unwrap();
        dst
    }

    fn events(&mut self) -> Vec<Event> {
        self.c.drain_events(&mut self.events);
        std::mem::take(&mut self.events)
    }

    fn poll_n(&mut self, n: usize) {
        for _ in 0..n {
            self.c.poll();
        }
    }

    fn read(&self, at: MemRef, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.c.regions().read(at, &mut v).unwrap();
        v
    }
}

fn done(ev: &[Event]) -> Option<(usize, MemRef)> {
    ev.iter().find_map(|e| match e {
        Event::RecvDone { len, dst, .. } => Some((*len, *dst)),
        _ => None,
    })
}

fn released(ev: &[Event]) -> Vec<FrameId> {
    ev.iter()
        .filter_map(|e| match e {
            Event::FrameReleased(f) => Some(*f),
            _ => None,
        })
        .collect()
}

fn wakeups(ev: &[Event]) -> Vec<Wakeup> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Wakeup { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn netdma_rcvlowat_early_copy_waits_for_completions() {
    let mut r = rig(
        PolicyConfig::netdma(),
        NullConfig {
            latency_polls: 3,
            capacity: 256,
            ..Default::default()
        },
    );
    let dst = r.post(RecvRequest {
        rcvlowat: 200_000,
        ..RecvRequest::new(2 << 20)
    });
    assert_eq!(r.c.stats().armed_dma, 1);
    let mut frames = vec![];
    for _ in 0..138 {
        frames.push(r.send(1448, false)); // 138 * 1448 = 199_824 < 200_000
    }
    let ev = r.events();
    assert!(
        done(&ev).is_none() && released(&ev).is_empty(),
        "no frame released before its copy completes"
    );
    frames.push(r.send(1448, false));
    let ev = r.events();
    assert_eq!(wakeups(&ev), vec![Wakeup::Lowat]);
    assert!(done(&ev).is_none(), "the receive waits for its DMA copies");
    r.poll_n(5);
    let ev = r.events();
    let (len, at) = done(&ev).expect("done after completions");
    assert_eq!(len, 139 * 1448);
    assert_eq!(r.read(at, len), r.sent);
    assert_eq!(at, dst);
    let mut rel = released(&ev);
    rel.sort();
    assert_eq!(rel, frames);
    let st = r.c.stats();
    assert_eq!(
        (st.decided_dma, st.bytes_dma, st.dma_ops),
        (139, len as u64, 139)
    );
    assert_eq!(st.doorbells, 139, "netdma rings one doorbell per segment");
    assert_eq!(st.mean_dma_size(), 1448.0);
    // rcvbuf 250 KB with 200 KB under DMA: receive memory passes rcvbuf/2 and the reader is
    // woken for nothing, again and again (the seed's configuration).
    assert!(st.wake_pressure > 40, "{}", st.wake_pressure);
    assert_eq!(r.c.frames_held(), 0);
    let per_stream = r.c.stream_stats(r.s).unwrap();
    assert_eq!(
        CopyStats {
            doorbells: st.doorbells,
            ..per_stream.clone()
        },
        *st,
        "doorbells are per engine"
    );
}

#[test]
fn netdma_default_lowat_one_segment_per_recv() {
    let mut r = rig(PolicyConfig::netdma(), NullConfig::default());
    r.send(1448, false);
    // Data already queued: available (1448) >= target (1): not armed, plain CPU copy, returns at once.
    r.post(RecvRequest::new(2 << 20));
    let ev = r.events();
    assert_eq!(done(&ev).unwrap().0, 1448);
    assert_eq!(r.c.stats().not_armed[NoDma::DataReady as usize], 1);
    assert_eq!(r.c.stats().recvs_immediate, 1);
    // Nothing queued: armed; the next segment goes by DMA and the reader wakes at once (Lowat).
    r.post(RecvRequest::new(2 << 20));
    r.send(1448, false);
    let ev = r.events();
    assert_eq!(wakeups(&ev), vec![Wakeup::Lowat]);
    assert!(done(&ev).is_none());
    r.poll_n(3);
    let (len, at) = done(&r.events()).unwrap();
    assert_eq!(r.read(at, len), r.sent[1448..]);
    assert_eq!(r.c.stats().bytes_dma, 1448);
}

#[test]
fn netdma_psh_wakes_below_target_and_reader_waits_again() {
    let mut r = rig(PolicyConfig::netdma(), NullConfig::default());
    r.post(RecvRequest {
        rcvlowat: 10_000,
        ..RecvRequest::new(65536)
    });
    r.send(1448, true);
    let ev = r.events();
    assert_eq!(wakeups(&ev), vec![Wakeup::Psh]);
    assert!(done(&ev).is_none());
    r.poll_n(3);
    assert!(
        done(&r.events()).is_none(),
        "PSH below target does not return the receive"
    );
    for _ in 0..6 {
        r.send(1448, false);
    }
    r.poll_n(3);
    let ev = r.events();
    assert_eq!(done(&ev).unwrap().0, 7 * 1448);
    assert_eq!(r.c.stats().wake_psh, 1);
    assert_eq!(r.c.stats().wake_lowat, 1);
}

#[test]
fn adaptive_ignores_psh_below_target() {
    let mut r = rig(PolicyConfig::adaptive(), NullConfig::default());
    r.post(RecvRequest {
        rcvlowat: 10_000,
        ..RecvRequest::new(65536)
    });
    r.send(1448, true);
    assert!(wakeups(&r.events()).is_empty());
}

#[test]
fn full_buffer_wakes_and_returns() {
    let mut r = rig(PolicyConfig::netdma(), NullConfig::default());
    r.post(RecvRequest {
        waitall: true,
        ..RecvRequest::new(3000 + 4097)
    });
    r.send(4097, false);
    r.send(3000, false);
    let ev = r.events();
    assert_eq!(wakeups(&ev), vec![Wakeup::Full]);
    r.poll_n(3);
    let (len, at) = done(&r.events()).unwrap();
    assert_eq!(len, 7097);
    assert_eq!(r.read(at, len), r.sent);
}

#[test]
fn segment_larger_than_room_is_split_by_the_reader() {
    let mut r = rig(PolicyConfig::cpu(), NullConfig::default());
    r.post(RecvRequest {
        waitall: true,
        ..RecvRequest::new(2000)
    });
    let f1 = r.send(1448, false);
    let f2 = r.send(1448, false); // only 552 bytes fit: queued, then the reader takes what fits
    let ev = r.events();
    assert_eq!(wakeups(&ev), vec![Wakeup::Full]);
    let (len, at) = done(&ev).unwrap();
    assert_eq!((len, r.read(at, len)), (2000, r.sent[..2000].to_vec()));
    assert_eq!(
        released(&ev),
        vec![f1],
        "the partly consumed frame is still held"
    );
    assert_eq!(r.c.queued(r.s), 896);
    r.post(RecvRequest::new(4096));
    let ev = r.events();
    let (len, at) = done(&ev).unwrap();
    assert_eq!(r.read(at, len), r.sent[2000..]);
    assert_eq!(released(&ev), vec![f2]);
}

#[test]
fn pressure_wakes_the_reader() {
    // rcvbuf 8000: receive memory above 4000 bytes wakes the reader.
    let mut r = rig_with(
        PolicyConfig::netdma(),
        NullEngine::new(NullConfig {
            latency_polls: 100,
            ..Default::default()
        }),
        8000,
    );
    r.post(RecvRequest {
        rcvlowat: 100_000,
        ..RecvRequest::new(1 << 20)
    });
    r.send(1448, false);
    r.send(1448, false);
    assert!(wakeups(&r.events()).is_empty());
    r.send(1448, false); // 4344 bytes under DMA > 4000
    assert_eq!(wakeups(&r.events()), vec![Wakeup::Pressure]);
    assert_eq!(r.c.stats().wake_pressure, 1);
}

#[test]
fn cpu_policy_copies_now_and_counts() {
    let mut r = rig(PolicyConfig::cpu(), NullConfig::default());
    r.send(1000, false); // no reader: queued
    assert_eq!(r.c.stats().decided_queue, 1);
    r.post(RecvRequest {
        rcvlowat: 3000,
        ..RecvRequest::new(8192)
    });
    assert_eq!(r.c.stats().not_armed[NoDma::PolicyCpu as usize], 1);
    r.send(1000, false);
    r.send(1000, false);
    let ev = r.events();
    assert_eq!(wakeups(&ev), vec![Wakeup::Lowat]);
    let (len, at) = done(&ev).unwrap();
    assert_eq!(r.read(at, len), r.sent);
    let st = r.c.stats();
    assert_eq!((st.bytes_cpu, st.bytes_dma, st.decided_cpu), (3000, 0, 3));
    assert_eq!(released(&ev).len(), 3);
}

#[test]
fn peek_copies_without_consuming() {
    let mut r = rig(PolicyConfig::netdma(), NullConfig::default());
    r.send(1448, false);
    r.post(RecvRequest {
        peek: true,
        ..RecvRequest::new(8192)
    });
    let ev = r.events();
    let (len, at) = done(&ev).unwrap();
    assert_eq!(r.read(at, len), r.sent);
    assert!(released(&ev).is_empty());
    assert_eq!(r.c.queued(r.s), 1448);
    // A peek that waits for more data.
    r.post(RecvRequest {
        peek: true,
        rcvlowat: 2000,
        ..RecvRequest::new(8192)
    });
    assert!(done(&r.events()).is_none());
    r.send(1448, false);
    let (len, _) = done(&r.events()).unwrap();
    assert_eq!(len, 2896);
    assert_eq!(r.c.stats().not_armed[NoDma::Peek as usize], 2);
    assert_eq!(r.c.stats().bytes_dma, 0);
}

#[test]
fn nonblocking_returns_what_is_there() {
    let mut r = rig(PolicyConfig::netdma(), NullConfig::default());
    r.post(RecvRequest {
        nonblocking: true,
        ..RecvRequest::new(8192)
    });
    assert_eq!(done(&r.events()).unwrap().0, 0);
    r.send(100, false);
    // netdma arms it (NET_DMA ignored MSG_DONTWAIT): the queued bytes go by DMA and the
    // receive returns once that copy completed.
    r.post(RecvRequest {
        nonblocking: true,
        rcvlowat: 5000,
        ..RecvRequest::new(8192)
    });
    assert!(done(&r.events()).is_none());
    r.poll_n(3);
    assert_eq!(done(&r.events()).unwrap().0, 100);
    assert_eq!(r.c.stats().bytes_dma, 100);
    // adaptive does not arm a receive that never waits.
    let mut r = rig(PolicyConfig::adaptive(), NullConfig::default());
    r.send(100, false);
    r.post(RecvRequest {
        nonblocking: true,
        rcvlowat: 5000,
        ..RecvRequest::new(8192)
    });
    assert_eq!(done(&r.events()).unwrap().0, 100);
    assert_eq!(r.c.stats().not_armed[NoDma::NoWait as usize], 1);
}

#[test]
fn low_latency_and_plain_buffers_take_the_cpu_path() {
    let mut r = rig(PolicyConfig::netdma(), NullConfig::default());
    r.post(RecvRequest {
        low_latency: true,
        rcvlowat: 5000,
        ..RecvRequest::new(8192)
    });
    r.send(5000, false);
    assert_eq!(done(&r.events()).unwrap().0, 5000);
    let dst = MemRef::new(r.plain, 0);
    r.c.post_recv(
        r.s,
        RecvRequest {
            registered: false,
            rcvlowat: 5000,
            ..RecvRequest::new(8192)
        },
        dst,
        7,
    )
    .unwrap();
    r.send(5000, false);
    let (len, at) = done(&r.events()).unwrap();
    assert_eq!(r.read(at, len), r.sent[5000..]);
    let st = r.c.stats();
    assert_eq!(st.not_armed[NoDma::LowLatency as usize], 1);
    assert_eq!(st.not_armed[NoDma::PlainBuffer as usize], 1);
    assert_eq!(st.bytes_dma, 0);
    // A registered receive into an unregistered region is refused with a clear error.
    let e =
        r.c.post_recv(r.s, RecvRequest::new(10), dst, 0)
            .unwrap_err();
    assert!(e.to_string().contains("BufferPool"), "{e}");
}

#[test]
fn short_recv_and_missing_channel_are_not_armed() {
    let mut r = rig(PolicyConfig::netdma(), NullConfig::default());
    r.post(RecvRequest::new(4096));
    assert_eq!(r.c.stats().not_armed[NoDma::ShortRecv as usize], 1);
    let mut r = rig_with(PolicyConfig::netdma(), CpuEngine::new(), 250_000);
    r.post(RecvRequest::new(1 << 20));
    assert_eq!(r.c.stats().not_armed[NoDma::NoChannel as usize], 1);
    r.send(9000, false);
    let (len, at) = done(&r.events()).unwrap();
    assert_eq!(r.read(at, len), r.sent);
}

#[test]
fn busy_ring_falls_back_to_cpu() {
    let mut r = rig(
        PolicyConfig::netdma(),
        NullConfig {
            capacity: 2,
            latency_polls: 50,
            ..Default::default()
        },
    );
    r.post(RecvRequest {
        rcvlowat: 10 * 1448,
        ..RecvRequest::new(1 << 20)
    });
    for _ in 0..10 {
        r.send(1448, false);
    }
    let st = r.c.stats().clone();
    assert_eq!(st.decided_dma, 2);
    assert_eq!(st.decided_cpu, 8);
    r.poll_n(60);
    let (len, at) = done(&r.events()).unwrap();
    assert_eq!(r.read(at, len), r.sent);
}

#[test]
fn failed_dma_is_redone_by_cpu_from_the_held_frame() {
    let mut faults = FaultPlan::default();
    faults.fail.insert(1);
    let mut r = rig(
        PolicyConfig::netdma(),
        NullConfig {
            faults,
            ..Default::default()
        },
    );
    r.post(RecvRequest {
        rcvlowat: 3 * 1448,
        ..RecvRequest::new(1 << 20)
    });
    for _ in 0..3 {
        r.send(1448, false);
    }
    r.poll_n(3);
    let ev = r.events();
    let (len, at) = done(&ev).unwrap();
    assert_eq!(r.read(at, len), r.sent);
    let st = r.c.stats();
    assert_eq!(
        (st.dma_errors, st.cpu_redos, st.bytes_redo, st.bytes_dma),
        (1, 1, 1448, 2 * 1448)
    );
    assert_eq!(released(&ev).len(), 3);
}

#[test]
fn hung_dma_times_out_aborts_and_is_redone() {
    let clock = ManualClock::default();
    let mut faults = FaultPlan::default();
    faults.hang.insert(0);
    let mut mem = Regions::new();
    let frames = mem.add(Arc::new(HeapRegion::new(4 * FRAME)), true);
    let mut pool = BufferPool::heap(&mut mem, 1, 1 << 16);
    let mut cfg = CopierConfig::new(PolicyConfig::netdma());
    cfg.dma_timeout_ns = 1_000_000;
    let engine = NullEngine::new(NullConfig {
        faults,
        latency_polls: 0,
        ..Default::default()
    });
    let mut c = Copier::new(cfg, engine, mem, Box::new(clock.clone()));
    let s = c.open_stream(1 << 20);
    let buf = pool.take().unwrap();
    c.post_recv(
        s,
        RecvRequest {
            rcvlowat: 2000,
            ..RecvRequest::new(1 << 16)
        },
        pool.start(buf),
        1,
    )
    .unwrap();
    let src = MemRef::new(frames, 0);
    c.regions().write(src, &[5u8; 2000]).unwrap();
    c.on_segment(
        s,
        Segment {
            frame: FrameId(1),
            src,
            len: 1000,
            psh: false,
        },
    )
    .unwrap();
    c.on_segment(
        s,
        Segment {
            frame: FrameId(2),
            src: src.plus(1000),
            len: 1000,
            psh: false,
        },
    )
    .unwrap();
    let mut ev = vec![];
    for _ in 0..5 {
        c.poll();
    }
    c.drain_events(&mut ev);
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::RecvDone { .. } | Event::FrameReleased(_))));
    clock.advance(2_000_000);
    c.poll(); // overdue: abort
    assert_eq!(c.stats().dma_timeouts, 1);
    c.poll(); // aborted ops reported: redo by CPU
    c.drain_events(&mut ev);
    let len = ev
        .iter()
        .find_map(|e| {
            if let Event::RecvDone { len, .. } = e {
                Some(*len)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(len, 2000);
    let mut out = vec![0; 2000];
    c.regions().read(pool.start(buf), &mut out).unwrap();
    assert_eq!(out, vec![5u8; 2000]);
    assert_eq!(c.stats().cpu_redos, 2);
    assert!(c.is_idle());
}

#[test]
fn dead_channel_makes_adaptive_fall_back() {
    let faults = FaultPlan {
        dead_from: Some(0),
        ..Default::default()
    };
    let mut r = rig(
        PolicyConfig::adaptive(),
        NullConfig {
            faults,
            latency_polls: 0,
            ..Default::default()
        },
    );
    r.post(RecvRequest {
        waitall: true,
        ..RecvRequest::new(1 << 20)
    });
    for _ in 0..5 {
        r.send(8192, false);
        r.poll_n(1);
    }
    let st = r.c.stats().clone();
    assert_eq!(
        st.decided_dma, 1,
        "one op, then the engine reports itself down"
    );
    assert_eq!(st.cpu_redos, 1);
    r.c.close_stream(r.s).unwrap();
    let (len, at) = done(&r.events()).unwrap();
    assert_eq!(r.read(at, len), r.sent);
    assert_eq!(r.c.frames_held(), 0);
}

#[test]
fn adaptive_chains_ops_per_doorbell_and_coalesces_contiguous_sources() {
    let mut r = rig(
        PolicyConfig::adaptive(),
        NullConfig {
            latency_polls: 1,
            ..Default::default()
        },
    );
    r.post(RecvRequest {
        waitall: true,
        ..RecvRequest::new(1 << 20)
    });
    for _ in 0..40 {
        r.send(8192, false);
    }
    r.c.flush();
    let st = r.c.stats().clone();
    assert_eq!(st.decided_dma, 40);
    assert!(
        st.doorbells <= 3,
        "ops chained behind few doorbells: {}",
        st.doorbells
    );
    // Two segments that sit back to back in one frame buffer become one descriptor.
    let at = MemRef::new(r.frames, 200 * FRAME);
    let data: Vec<u8> = (0..16384)
        .map(|i| ((r.sent.len() + i) * 7 % 251) as u8)
        .collect();
    r.c.regions().write(at, &data).unwrap();
    r.sent.extend_from_slice(&data);
    r.c.on_segment(
        r.s,
        Segment {
            frame: FrameId(900),
            src: at,
            len: 8192,
            psh: false,
        },
    )
    .unwrap();
    r.c.on_segment(
        r.s,
        Segment {
            frame: FrameId(901),
            src: at.plus(8192),
            len: 8192,
            psh: false,
        },
    )
    .unwrap();
    r.poll_n(5);
    let st = r.c.stats().clone();
    assert_eq!(st.decided_dma, 42);
    assert_eq!(
        st.dma_ops, 41,
        "40 single ops + one coalesced op of two segments"
    );
    r.c.close_stream(r.s).unwrap();
    r.poll_n(3);
    let ev = r.events();
    let (len, at) = done(&ev).unwrap();
    assert_eq!(r.read(at, len), r.sent);
    assert_eq!(r.c.frames_held(), 0);
}

#[test]
fn api_errors_name_the_fix() {
    let mut r = rig(PolicyConfig::cpu(), NullConfig::default());
    r.post(RecvRequest::new(100));
    let dst = r.pool.start(BufId(1));
    assert_eq!(
        r.c.post_recv(r.s, RecvRequest::new(100), dst, 0),
        Err(CopyError::AlreadyPosted(r.s))
    );
    let e =
        r.c.post_recv(StreamId(9), RecvRequest::new(100), dst, 0)
            .unwrap_err();
    assert!(e.to_string().contains("open_stream"));
    r.c.close_stream(r.s).unwrap();
    let seg = Segment {
        frame: FrameId(1),
        src: MemRef::new(r.frames, 0),
        len: 10,
        psh: false,
    };
    assert_eq!(r.c.on_segment(r.s, seg), Err(CopyError::Closed(r.s)));
    let bad = Segment {
        src: MemRef::new(r.frames, usize::MAX - 3),
        ..seg
    };
    assert!(matches!(r.c.on_segment(r.s, bad), Err(CopyError::Mem(_))));
}

/// `CopierConfig::batch_completions`: a receive that reached rcvlowat keeps taking the batch's
/// data and completes at the flush, as one receive; without it, it completes at once.
#[test]
fn batch_completions_complete_at_the_flush() {
    for batch in [false, true] {
        let mut r = rig_cfg(
            PolicyConfig::new(PolicyKind::Cpu),
            NullEngine::new(NullConfig::default()),
            250_000,
            |c| c.batch_completions = batch,
        );
        let dst = r.post(RecvRequest::new(1 << 16));
        for _ in 0..3 {
            r.send(1000, false);
        }
        let ev = r.events();
        if batch {
            assert_eq!(done(&ev), None, "not before the flush");
            r.c.flush();
            let (len, at) = done(&r.events()).expect("completed at the flush");
            assert_eq!(len, 3000, "the whole batch in one receive");
            assert_eq!(r.read(at, len), r.sent[..len]);
        } else {
            assert_eq!(
                done(&ev),
                Some((1000, dst)),
                "completed at the first placement"
            );
            assert_eq!(r.c.queued(r.s), 2000, "the rest waits for the next receive");
        }
    }
    // A full buffer completes at once either way.
    let mut r = rig_cfg(
        PolicyConfig::new(PolicyKind::Cpu),
        NullEngine::new(NullConfig::default()),
        250_000,
        |c| c.batch_completions = true,
    );
    r.post(RecvRequest::new(1000));
    r.send(1000, false);
    assert_eq!(done(&r.events()).map(|d| d.0), Some(1000));
}
