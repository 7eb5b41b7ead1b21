//! Property: whatever mix of CPU and DMA copies the policy picks, with a slow engine and faults
//! injected mid-stream, the application receives exactly the sent stream — no byte lost, none
//! stale — and never sees a buffer before every copy into it has finished.
//!
//! Stale-data traps: the null engine fills a destination with poison until the op completes;
//! released frames are poisoned at once (as if the NIC reused them); finished buffers are
//! poisoned when returned to the pool. A copy that reads a released frame, or a receive handed
//! back before its copies completed, shows up as wrong bytes.

use std::collections::HashSet;
use std::sync::Arc;

use netrx::copy::*;
use proptest::prelude::*;

const NFRAMES: usize = 48;
const FRAME: usize = 9216;

#[derive(Debug, Clone)]
struct RecvSpec {
    len: usize,
    rcvlowat: usize,
    waitall: bool,
    peek: bool,
    low_latency: bool,
    plain: bool,
    nonblocking: bool,
}

#[derive(Debug, Clone)]
struct Case {
    policy: u8,
    copybreak: usize,
    rcvbuf: usize,
    segs: Vec<(usize, bool)>,
    steps: Vec<(u8, u8)>,
    recvs: Vec<RecvSpec>,
}

fn recv_spec() -> impl Strategy<Value = RecvSpec> {
    (
        prop_oneof![1usize..3000, 3000usize..70_000, 70_000usize..300_000],
        prop_oneof![Just(1usize), 0usize..300_000],
        any::<bool>(),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(len, rcvlowat, waitall, peek, low_latency, plain, nonblocking)| RecvSpec {
                len,
                rcvlowat,
                waitall,
                peek,
                low_latency,
                plain,
                nonblocking,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        0u8..3,
        prop_oneof![Just(4096usize), 0usize..20_000],
        prop_oneof![Just(250_000usize), 4096usize..1_000_000],
        prop::collection::vec(
            (
                prop_oneof![1usize..200, 1usize..=1448, 1usize..=FRAME],
                prop::bool::weighted(0.1),
            ),
            1..160,
        ),
        prop::collection::vec((0u8..8, 0u8..4), 1..64),
        prop::collection::vec(recv_spec(), 1..32),
    )
        .prop_map(|(policy, copybreak, rcvbuf, segs, steps, recvs)| Case {
            policy,
            copybreak,
            rcvbuf,
            segs,
            steps,
            recvs,
        })
}

fn null_cfg() -> impl Strategy<Value = NullConfig> {
    (
        prop_oneof![0u32..3, 0u32..40],
        0usize..4,
        prop_oneof![1usize..4, 1usize..128],
        prop_oneof![Just(1usize << 20), 512usize..4096],
        prop::collection::btree_set(0u64..300, 0..12),
        prop::option::weighted(0.2, 0u64..300),
        prop::option::weighted(0.1, 0u64..300),
    )
        .prop_map(
            |(latency_polls, ops_per_poll, capacity, max_len, fail, hang, dead_from)| NullConfig {
                latency_polls,
                ops_per_poll,
                capacity,
                max_len,
                faults: FaultPlan {
                    fail,
                    hang: hang.into_iter().collect(),
                    dead_from,
                },
            },
        )
}

fn pattern(i: usize) -> u8 {
    // Not periodic in any small power of two, so misplaced bytes are caught.
    (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i % 253) as u8
}

struct Harness<E: CopyEngine> {
    c: Copier<E>,
    clock: ManualClock,
    frames: RegionId,
    plain: RegionId,
    pool: BufferPool,
    s: StreamId,
    free: Vec<usize>,
    held: HashSet<u64>,
    sent: usize,
    received: Vec<u8>,
    posted: Option<(RecvSpec, BufId)>,
    next_recv: usize,
    recvs: Vec<RecvSpec>,
    events: Vec<Event>,
    closed: bool,
    uses: u64,
    realtime: bool,
    max_spins: usize,
    last_peek: bool,
}

impl<E: CopyEngine> Harness<E> {
    fn new(case: &Case, make: impl FnOnce(&mut Regions) -> E, realtime: bool) -> Self {
        let mut mem = Regions::new();
        let frames = mem.add(Arc::new(HeapRegion::new(NFRAMES * FRAME)), true);
        let plain = mem.add(Arc::new(HeapRegion::new(300_000)), false);
        let pool = BufferPool::heap(&mut mem, 2, 300_000);
        let kind =
            [PolicyKind::Cpu, PolicyKind::NetDma, PolicyKind::Adaptive][case.policy as usize];
        let mut pc = PolicyConfig::new(kind);
        pc.copybreak = case.copybreak;
        pc.probe_every = 8;
        let mut cfg = CopierConfig::new(pc);
        // A real-time engine (the I/OAT model) has its own completion timeout; the manual
        // clock would fire ours too early.
        cfg.dma_timeout_ns = if realtime { u64::MAX / 4 } else { 300_000 };
        let engine = make(&mut mem);
        let clock = ManualClock::default();
        let mut c = Copier::new(cfg, engine, mem, Box::new(clock.clone()));
        let s = c.open_stream(case.rcvbuf);
        Self {
            c,
            clock,
            frames,
            plain,
            pool,
            s,
            free: (0..NFRAMES).rev().collect(),
            held: HashSet::new(),
            sent: 0,
            received: Vec::new(),
            posted: None,
            next_recv: 0,
            recvs: case.recvs.clone(),
            events: Vec::new(),
            closed: false,
            uses: 0,
            realtime,
            max_spins: if realtime { 400_000 } else { 10_000 },
            last_peek: false,
        }
    }

    fn post_next(&mut self) -> Result<(), TestCaseError> {
        if self.posted.is_some() {
            return Ok(());
        }
        let mut spec = self.recvs[self.next_recv % self.recvs.len()].clone();
        self.next_recv += 1;
        // A peek consumes nothing: never two in a row, or a reader that only peeks would hold
        // every frame. A blocking peek may wait for more than the frame pool can hold: peek
        // without waiting.
        if spec.peek && self.last_peek {
            spec.peek = false;
        }
        self.last_peek = spec.peek;
        if spec.peek {
            spec.nonblocking = true;
        }
        let buf = self.pool.take().expect("a free buffer");
        let req = RecvRequest {
            len: spec.len,
            rcvlowat: spec.rcvlowat,
            waitall: spec.waitall,
            peek: spec.peek,
            low_latency: spec.low_latency,
            nonblocking: spec.nonblocking,
            registered: !spec.plain,
        };
        let dst = if spec.plain {
            MemRef::new(self.plain, 0)
        } else {
            self.pool.start(buf)
        };
        self.posted = Some((spec, buf));
        self.c
            .post_recv(self.s, req, dst, buf.0 as u64)
            .map_err(|e| TestCaseError::fail(e.to_string()))
    }

    fn handle_events(&mut self) -> Result<(), TestCaseError> {
        // The reader posts again at once; bounded, because receives that return at once
        // (nonblocking, peek) would otherwise spin here while no data comes.
        for _ in 0..64 {
            if self.posted.is_none() && !self.closed {
                self.post_next()?;
            }
            self.c.drain_events(&mut self.events);
            if self.events.is_empty() {
                return Ok(());
            }
            for ev in std::mem::take(&mut self.events) {
                match ev {
                    Event::FrameReleased(f) => {
                        prop_assert!(
                            self.held.remove(&f.0),
                            "frame {} released twice or never held",
                            f.0
                        );
                        let idx = f.0 as usize % NFRAMES;
                        // The NIC may overwrite a released frame at once.
                        self.c
                            .regions()
                            .fill(MemRef::new(self.frames, idx * FRAME), FRAME, 0xAA)
                            .unwrap();
                        self.free.push(idx);
                    }
                    Event::Wakeup { .. } => {}
                    Event::RecvDone { len, dst, user, .. } => {
                        let (spec, buf) = self.posted.take().expect("a posted receive");
                        prop_assert_eq!(user, buf.0 as u64);
                        prop_assert!(len <= spec.len);
                        let mut got = vec![0u8; len];
                        self.c.regions().read(dst, &mut got).unwrap();
                        let at = self.received.len();
                        let want: Vec<u8> = (at..at + len).map(pattern).collect();
                        prop_assert!(at + len <= self.sent, "received more than sent");
                        if got != want {
                            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                            return Err(TestCaseError::fail(format!(
                                "stream byte {} wrong: got {:#x} want {:#x} (recv {:?}, len {len})",
                                at + first,
                                got[first],
                                want[first],
                                spec
                            )));
                        }
                        if !self.closed && !spec.nonblocking && !spec.peek {
                            let target = if spec.waitall {
                                spec.len
                            } else {
                                spec.rcvlowat.clamp(1, spec.len)
                            };
                            prop_assert!(
                                len >= target.min(spec.len),
                                "returned {len} below target {target}"
                            );
                        }
                        if !spec.peek {
                            self.received.extend_from_slice(&got);
                        }
                        // Poison the returned buffer: a late DMA write into it would show.
                        self.c.regions().fill(dst, spec.len, 0x55).unwrap();
                        self.pool.put(buf);
                    }
                }
            }
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<(), TestCaseError> {
        self.clock.advance(10_000);
        if self.c.poll() == 0 && self.realtime {
            std::thread::sleep(std::time::Duration::from_micros(10));
        }
        self.handle_events()
    }

    fn send(&mut self, len: usize, psh: bool) -> Result<(), TestCaseError> {
        let mut spins = 0;
        while self.free.is_empty() {
            self.poll()?;
            spins += 1;
            prop_assert!(spins < self.max_spins, "no frame came back: stuck");
        }
        let idx = self.free.pop().unwrap();
        let at = MemRef::new(self.frames, idx * FRAME);
        let data: Vec<u8> = (self.sent..self.sent + len).map(pattern).collect();
        self.c.regions().write(at, &data).unwrap();
        // Frame ids are unique per use (id % NFRAMES = frame index), so a double release or
        // a release of an old use would be caught.
        self.uses += 1;
        let id = self.uses * NFRAMES as u64 + idx as u64;
        prop_assert!(self.held.insert(id));
        self.sent += len;
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
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        self.handle_events()
    }
}

/// Runs a case; returns the stats and the number of bytes the application received.
fn run<E: CopyEngine>(case: &Case, engine: E) -> Result<(CopyStats, usize), TestCaseError> {
    run_with(case, |_| engine, false)
}

fn run_with<E: CopyEngine>(
    case: &Case,
    make: impl FnOnce(&mut Regions) -> E,
    realtime: bool,
) -> Result<(CopyStats, usize), TestCaseError> {
    let t0 = std::time::Instant::now();
    let r = run_inner(case, make, realtime);
    if t0.elapsed() > std::time::Duration::from_secs(2) {
        eprintln!("SLOW CASE {:?}: {case:?}", t0.elapsed());
    }
    r
}

fn run_inner<E: CopyEngine>(
    case: &Case,
    make: impl FnOnce(&mut Regions) -> E,
    realtime: bool,
) -> Result<(CopyStats, usize), TestCaseError> {
    let mut h = Harness::new(case, make, realtime);
    h.handle_events()?;
    let mut segs = case.segs.iter();
    'outer: for &(nsend, npoll) in case.steps.iter().cycle() {
        for _ in 0..nsend.max(1) {
            let Some(&(len, psh)) = segs.next() else {
                break 'outer;
            };
            h.send(len, psh)?;
        }
        h.c.flush();
        for _ in 0..npoll {
            h.poll()?;
        }
    }
    // Drain every DMA op, then close: the last receive returns what it has.
    let mut spins = 0;
    while !h.c.is_idle() {
        h.poll()?;
        spins += 1;
        prop_assert!(spins < h.max_spins, "DMA never drained");
    }
    h.closed = true;
    let queued = h.c.queued(h.s);
    h.c.close_stream(h.s).unwrap();
    h.handle_events()?;
    // Close drops what is still queued and returns the waiting receive: every sent byte was
    // either received, in order and intact, or still queued.
    prop_assert!(h.posted.is_none());
    let want: Vec<u8> = (0..h.received.len()).map(pattern).collect();
    prop_assert!(h.received == want);
    prop_assert_eq!(h.received.len() + queued, h.sent);
    prop_assert_eq!(h.c.frames_held(), 0);
    prop_assert!(h.held.is_empty(), "frames never released: {:?}", h.held);
    prop_assert_eq!(h.free.len(), NFRAMES);
    let st = h.c.stats().clone();
    // Bytes that left the queue went by exactly one path (peeks copy without consuming).
    prop_assert!(st.bytes_cpu + st.bytes_dma >= h.received.len() as u64);
    Ok((st, h.received.len()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 256, max_shrink_time: 30_000, ..ProptestConfig::default() })]

    #[test]
    fn null_engine_any_policy_delivers_the_stream(case in case(), null in null_cfg()) {
        run(&case, NullEngine::new(null))?;
    }

    #[test]
    fn cpu_engine_any_policy_delivers_the_stream(case in case()) {
        run(&case, CpuEngine::new())?;
    }
}

/// The seed's receive under `policy`: `nsegs` segments of mixed sizes (a PSH every 17th),
/// copybreak 4 KB, 250 KB receive buffer, one reader of 256 KB with rcvlowat 200 KB.
fn seed_case(policy: u8, nsegs: usize) -> Case {
    Case {
        policy,
        copybreak: 4096,
        rcvbuf: 250_000,
        segs: (0..nsegs)
            .map(|i| ([1448, 8948, 200, 4096, 9000][i % 5], i % 17 == 0))
            .collect(),
        steps: vec![(5, 1), (1, 0), (8, 2)],
        recvs: vec![RecvSpec {
            len: 2 << 17,
            rcvlowat: 200_000,
            waitall: false,
            peek: false,
            low_latency: false,
            plain: false,
            nonblocking: false,
        }],
    }
}

/// Everything sent arrives when the reader keeps receiving until the stream is drained.
#[test]
fn whole_stream_arrives_through_dma_with_faults() {
    for policy in 0..3u8 {
        let case = seed_case(policy, 600);
        let faults = FaultPlan {
            fail: [3, 4, 50, 51, 52, 200].into_iter().collect(),
            hang: [100].into_iter().collect(),
            dead_from: None,
        };
        let null = NullConfig {
            latency_polls: 20,
            ops_per_poll: 2,
            capacity: 32,
            max_len: 1 << 20,
            faults,
        };
        let (st, received) = run(&case, NullEngine::new(null)).unwrap();
        let total: usize = case.segs.iter().map(|s| s.0).sum();
        // The reader always waits with room, so nothing stays queued: everything arrived.
        assert_eq!(received, total, "policy {policy}: {st:?}");
        assert_eq!(
            st.bytes_cpu + st.bytes_dma,
            total as u64,
            "policy {policy}: {st:?}"
        );
        if policy > 0 {
            assert!(st.bytes_dma > 0, "policy {policy} used DMA: {st:?}");
        }
        if policy == 1 {
            assert!(st.cpu_redos >= 6 && st.dma_timeouts >= 1, "{st:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The same property over the I/OAT engine on the software device model (its engine thread, its
// timing model, its fault injection). Real time, so fewer cases.

mod ioat_model {
    use super::*;
    use ioat_driver::model::{Fault, ModelConfig, ModelDevice, Preset, Timing};
    use ioat_driver::regs::chanerr;
    use ioat_driver::{ChannelConfig, Device};
    use std::time::Duration;

    #[derive(Debug, Clone)]
    pub struct ModelCase {
        per_desc_us: u64,
        gbps: u64,
        xfercap_log: u8,
        err_nth: Option<u64>,
        hang_after: Option<u64>,
    }

    fn model_case() -> impl Strategy<Value = ModelCase> {
        (
            0u64..30,
            1u64..20,
            prop_oneof![Just(20u8), 12u8..14],
            prop::option::weighted(0.5, 1u64..150),
            prop::option::weighted(0.3, 0u64..150),
        )
            .prop_map(
                |(per_desc_us, gbps, xfercap_log, err_nth, hang_after)| ModelCase {
                    per_desc_us,
                    gbps,
                    xfercap_log,
                    err_nth,
                    hang_after,
                },
            )
    }

    pub fn run_model(case: &Case, m: &ModelCase) -> Result<(CopyStats, usize), TestCaseError> {
        let cfg = ModelConfig::preset(Preset::Skx)
            .xfercap_log(m.xfercap_log)
            .timing(Timing::Modeled {
                per_desc: Duration::from_micros(m.per_desc_us),
                bytes_per_sec: m.gbps * 1_000_000_000,
            });
        let dev = ModelDevice::new(cfg);
        let d = Device::open(dev.clone(), dev.mapper()).expect("open the model device");
        let ch = d
            .channel_with_context(
                0,
                ChannelConfig::default()
                    .ring_order(8)
                    .completion_timeout(Duration::from_millis(20)),
            )
            .expect("open channel 0");
        // Faults strike mid-stream: counted from the first descriptor of the run.
        if let Some(nth) = m.err_nth {
            dev.inject(
                0,
                Fault::ChanErrOnNth {
                    nth,
                    bits: chanerr::READ_DATA,
                },
            );
        }
        if let Some(after) = m.hang_after {
            dev.inject(0, Fault::Hang { after });
        }
        let mapper = d.mapper();
        let r = run_with(
            case,
            |mem| IoatEngine::new(ch, mapper, mem).expect("map the regions"),
            true,
        );
        let v = dev.violations();
        prop_assert!(v.is_empty(), "the strict model saw misuse: {:?}", v);
        r
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 64, ..ProptestConfig::default() })]

        #[test]
        fn ioat_model_any_policy_delivers_the_stream(case in case(), m in model_case()) {
            run_model(&case, &m)?;
        }
    }

    /// The seed's configuration over the slow model with an error and a hang mid-stream:
    /// every policy delivers the exact stream, and the DMA policies really used DMA.
    #[test]
    fn ioat_model_whole_stream_with_faults() {
        for policy in 0..3u8 {
            let case = seed_case(policy, 400);
            let total: usize = case.segs.iter().map(|s| s.0).sum();
            let m = ModelCase {
                per_desc_us: 5,
                gbps: 4,
                xfercap_log: 12,
                err_nth: Some(20),
                hang_after: Some(60),
            };
            let (st, received) = run_model(&case, &m).unwrap();
            assert_eq!(received, total, "policy {policy}: {st:?}");
            if policy > 0 {
                assert!(st.bytes_dma > 0, "policy {policy} used DMA: {st:?}");
            }
            if policy == 1 {
                assert!(
                    st.cpu_redos >= 1 && st.dma_errors >= 1,
                    "faults were redone: {st:?}"
                );
            }
            eprintln!(
                "ioat model, policy {policy}: dma share {:.2}, mean DMA op {:.0} B, errors {}, redos {}, doorbells {}",
                st.dma_share(),
                st.mean_dma_size(),
                st.dma_errors,
                st.cpu_redos,
                st.doorbells
            );
        }
    }
}
