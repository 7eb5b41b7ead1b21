//! `netrx-bench policy`: the seed's experiment without a network.
//!
//! A synthetic TCP stream is fed, segment by segment, into the sans-IO [`Copier`] (the same
//! policy and ownership code the service runs) on one thread that plays both the receive core
//! and the reader, like a single-core box: the "sender" delivers bursts of in-order segments
//! from cold frames while the window (rcvbuf minus the receive memory held) allows; the reader
//! posts `recv(len)` with SO_RCVLOWAT and posts again as soon as a receive finishes. The copy
//! engine is an I/OAT channel of the software model with SIMULATED timing.
//!
//! What it shows is the mechanism, counted: which path the bytes took, how many DMA ops of
//! what size, how often the reader was woken and why, and the receive core's copy time, each
//! against policy `cpu` measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Serialize;

use ioat_driver::model::{Preset, Timing};
use ioat_driver::{ChannelConfig, Device};
use netrx::copy::IoatEngine;
use netrx::copy::{
    BufferPool, Copier, CopierConfig, CopyEngine, CopyOp, CopyStats, EngineCompletion, EngineError,
    Event, FrameId, HeapRegion, MemRef, MonotonicClock, NoDma, PolicyConfig, PolicyKind,
    RecvRequest, RegionId, Regions, Segment,
};
use netrx::service::engines::new_model;

use super::copy_sizes::loadavg;
use super::{fmt_ratio, median, ratio, thread_cpu_ns, utc_now};

/// Options of `policy`.
#[derive(Debug, Clone)]
pub struct Opts {
    pub seg_sizes: Vec<usize>,
    pub policies: Vec<PolicyKind>,
    pub rcvlowats: Vec<usize>,
    pub recv_len: usize,
    pub rcvbuf: usize,
    /// Payload bytes per run.
    pub bytes: u64,
    pub repeats: usize,
    /// Segments delivered per poll (interrupt coalescing / NAPI batch).
    pub burst: usize,
    /// The sender sets PSH once per this many bytes (Linux pushes about every half window).
    pub psh_every: usize,
    /// Pace the sender to this link rate (Gbit/s); 0 = as fast as the receive core goes.
    pub link_gbps: f64,
    /// NET_DMA's tcp_dma_copybreak for policy netdma.
    pub copybreak: usize,
    /// Simulated DMA timing of the model engine.
    pub per_desc_ns: u64,
    pub dma_bytes_per_sec: u64,
    /// Frame pool bytes (cold source frames).
    pub pool_bytes: usize,
    pub engine: EngineChoice,
}

/// One run's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub gbps: f64,
    pub wall_ms: f64,
    pub thread_cpu_ms: f64,
    /// Wall time in rounds where nothing could move (window closed or reader waiting on DMA).
    pub stall_ms: f64,
    pub stats: StatsView,
}

/// The copier's counters, flattened for reports.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StatsView {
    pub bytes_cpu: u64,
    pub bytes_dma: u64,
    pub dma_share: f64,
    pub dma_ops: u64,
    pub mean_dma_size: f64,
    pub doorbells: u64,
    pub busy_fallbacks: u64,
    pub recvs: u64,
    pub recvs_immediate: u64,
    pub armed: u64,
    pub not_armed_data_ready: u64,
    pub not_armed_other: u64,
    pub wake_full: u64,
    pub wake_psh: u64,
    pub wake_pressure: u64,
    pub wake_lowat: u64,
    pub wakeups: u64,
    /// Receive-core time copying or driving DMA, ns per KiB of payload.
    pub copy_ns_per_kib: f64,
    pub copy_ms: f64,
    /// Part of the copy time spent ringing doorbells (a model cost, see [`Timed`]).
    pub doorbell_ms: f64,
    pub doorbell_ns_each: f64,
    /// Copy time per KiB with the doorbells left out.
    pub copy_ns_per_kib_no_doorbell: f64,
}

impl StatsView {
    fn from(s: &CopyStats, bytes: u64) -> Self {
        let not_armed: u64 = s.not_armed.iter().sum();
        let ready = s.not_armed[NoDma::DataReady as usize];
        Self {
            bytes_cpu: s.bytes_cpu,
            bytes_dma: s.bytes_dma,
            dma_share: s.dma_share(),
            dma_ops: s.dma_ops,
            mean_dma_size: s.mean_dma_size(),
            doorbells: s.doorbells,
            busy_fallbacks: s.busy_fallbacks,
            recvs: s.recvs,
            recvs_immediate: s.recvs_immediate,
            armed: s.armed_dma,
            not_armed_data_ready: ready,
            not_armed_other: not_armed - ready,
            wake_full: s.wake_full,
            wake_psh: s.wake_psh,
            wake_pressure: s.wake_pressure,
            wake_lowat: s.wake_lowat,
            wakeups: s.wakeups(),
            copy_ns_per_kib: s.copy_ns as f64 * 1024.0 / bytes.max(1) as f64,
            copy_ms: s.copy_ns as f64 / 1e6,
            doorbell_ms: 0.0,
            doorbell_ns_each: 0.0,
            copy_ns_per_kib_no_doorbell: 0.0,
        }
    }
}

/// One configuration: medians over the repeats, the counters of the median run, and ratios
/// against policy `cpu` with the same segment size and rcvlowat.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub seg: usize,
    pub policy: String,
    pub rcvlowat: usize,
    pub gbps: f64,
    pub copy_ns_per_kib: f64,
    /// Copy time per KiB without the model's doorbell cost.
    pub copy_ns_per_kib_no_doorbell: f64,
    pub stall_share: f64,
    /// Payload per second of receive-thread CPU time, Gbit/s (less sensitive to preemption).
    pub gbps_per_cpu: f64,
    pub gbps_vs_cpu: Option<f64>,
    pub copy_time_vs_cpu: Option<f64>,
    pub copy_time_no_doorbell_vs_cpu: Option<f64>,
    pub runs: usize,
    pub median_run: RunResult,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub when: String,
    pub conditions: String,
    pub simulated_timing: String,
    pub engine: String,
    pub recv_len: usize,
    pub rcvbuf: usize,
    pub bytes_per_run: u64,
    pub burst: usize,
    pub psh_every: usize,
    pub link_gbps: f64,
    pub copybreak: usize,
    pub rows: Vec<Row>,
}

/// Which engine the copier drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// The I/OAT driver on the software model (its doorbell wakes the model's engine thread).
    Model,
    /// A timing-only device: ops complete at `per_desc + len / rate` on a virtual device
    /// clock, no bytes move and the doorbell is free. The most favourable case for DMA.
    Ideal,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "model" => Ok(Self::Model),
            "ideal" => Ok(Self::Ideal),
            _ => Err(format!("unknown engine {s:?}; use model or ideal")),
        }
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Model => "model",
            Self::Ideal => "ideal",
        })
    }
}

/// The timing-only device of [`EngineChoice::Ideal`]: one channel, ops in order, each taking
/// `per_desc + len / rate` of device time after its doorbell. It moves no bytes (the bench does
/// not read what it receives), so it costs the receive core only its bookkeeping.
struct IdealEngine {
    t0: Instant,
    per_desc_ns: f64,
    ns_per_byte: f64,
    /// Submitted, not yet rung: (cookie, len).
    queued: Vec<(u64, usize)>,
    /// Rung: (cookie, completion time in ns since t0).
    issued: std::collections::VecDeque<(u64, f64)>,
    device_free_ns: f64,
    capacity: usize,
}

impl IdealEngine {
    fn new(per_desc_ns: u64, bytes_per_sec: u64) -> Self {
        Self {
            t0: Instant::now(),
            per_desc_ns: per_desc_ns as f64,
            ns_per_byte: 1e9 / bytes_per_sec.max(1) as f64,
            queued: Vec::new(),
            issued: std::collections::VecDeque::new(),
            device_free_ns: 0.0,
            capacity: 4095,
        }
    }
    fn now_ns(&self) -> f64 {
        self.t0.elapsed().as_nanos() as f64
    }
}

impl CopyEngine for IdealEngine {
    fn name(&self) -> &'static str {
        "ideal"
    }
    fn is_dma(&self) -> bool {
        true
    }
    fn submit(&mut self, _mem: &Regions, op: CopyOp) -> Result<(), EngineError> {
        if op.len == 0 || op.len > 1 << 20 {
            return Err(EngineError::BadLength {
                len: op.len,
                max: 1 << 20,
            });
        }
        if self.in_flight() >= self.capacity {
            return Err(EngineError::Busy {
                in_flight: self.in_flight(),
                capacity: self.capacity,
            });
        }
        self.queued.push((op.cookie, op.len));
        Ok(())
    }
    fn flush(&mut self, _mem: &Regions) {
        let now = self.now_ns();
        for (cookie, len) in self.queued.drain(..) {
            let start = self.device_free_ns.max(now);
            self.device_free_ns = start + self.per_desc_ns + len as f64 * self.ns_per_byte;
            self.issued.push_back((cookie, self.device_free_ns));
        }
    }
    fn poll(&mut self, _mem: &Regions, out: &mut Vec<EngineCompletion>) -> usize {
        let now = self.now_ns();
        let mut n = 0;
        while let Some(&(cookie, at)) = self.issued.front() {
            if at > now {
                break;
            }
            self.issued.pop_front();
            out.push(EngineCompletion {
                cookie,
                status: Ok(()),
            });
            n += 1;
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.queued.len() + self.issued.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn max_len(&self) -> usize {
        1 << 20
    }
    fn abort(&mut self, _mem: &Regions) {}
}

/// Wraps the engine to time its doorbells: the model's doorbell wakes its engine thread (a
/// futex wake on another core), which a real device's posted MMIO write does not, so the
/// report gives the copy time with and without it.
struct Timed<E> {
    inner: E,
    flushes: u64,
    flush_ns: u64,
}

impl<E: CopyEngine> CopyEngine for Timed<E> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn is_dma(&self) -> bool {
        self.inner.is_dma()
    }
    fn submit(&mut self, mem: &Regions, op: CopyOp) -> Result<(), EngineError> {
        self.inner.submit(mem, op)
    }
    fn flush(&mut self, mem: &Regions) {
        let t = Instant::now();
        self.inner.flush(mem);
        self.flush_ns += t.elapsed().as_nanos() as u64;
        self.flushes += 1;
    }
    fn poll(&mut self, mem: &Regions, out: &mut Vec<EngineCompletion>) -> usize {
        self.inner.poll(mem, out)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn max_len(&self) -> usize {
        self.inner.max_len()
    }
    fn busy(&self) -> bool {
        self.inner.busy()
    }
    fn healthy(&self) -> bool {
        self.inner.healthy()
    }
    fn abort(&mut self, mem: &Regions) {
        self.inner.abort(mem)
    }
}

/// A frame pool walked in order; a frame still held by the copier is skipped.
struct Frames {
    region: RegionId,
    stride: usize,
    held: Vec<bool>,
    next: usize,
}

impl Frames {
    fn take(&mut self) -> Option<usize> {
        let n = self.held.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if !self.held[i] {
                self.held[i] = true;
                self.next = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }
}

/// Runs one configuration once.
pub fn run_one(o: &Opts, seg: usize, kind: PolicyKind, rcvlowat: usize) -> Result<RunResult> {
    match o.engine {
        EngineChoice::Ideal => run_with(
            o,
            seg,
            kind,
            rcvlowat,
            IdealEngine::new(o.per_desc_ns, o.dma_bytes_per_sec),
            |_, _| Ok(()),
        ),
        EngineChoice::Model => {
            let timing = Timing::Modeled {
                per_desc: Duration::from_nanos(o.per_desc_ns),
                bytes_per_sec: o.dma_bytes_per_sec.max(1),
            };
            let model = new_model(Preset::Skx, timing, 1);
            let dev = Device::open(model.clone(), model.mapper())
                .map_err(|e| anyhow!("opening the model device: {e}"))?;
            let ch = dev
                .channel_with_context(0, ChannelConfig::default())
                .map_err(|e| anyhow!("model channel 0: {e}"))?;
            // Nothing to map yet: run_with maps its regions once they exist.
            let engine = IoatEngine::new(ch, dev.mapper(), &mut Regions::new())
                .map_err(|e| anyhow!("model engine: {e}"))?;
            run_with(o, seg, kind, rcvlowat, engine, |e, regions| {
                e.map_regions(regions)
                    .map(drop)
                    .map_err(|e| anyhow!("mapping the bench regions for DMA: {e}"))
            })
        }
    }
}

fn run_with<E: CopyEngine>(
    o: &Opts,
    seg: usize,
    kind: PolicyKind,
    rcvlowat: usize,
    mut engine: E,
    map: impl FnOnce(&mut E, &mut Regions) -> Result<()>,
) -> Result<RunResult> {
    let mut regions = Regions::new();
    let stride = seg.next_power_of_two().max(2048);
    let nframes = (o.pool_bytes / stride).max(o.rcvbuf / seg + o.burst + 8);
    let frame_mem = Arc::new(HeapRegion::new(nframes * stride));
    let frames_region = regions.add(frame_mem, true);
    let pool = BufferPool::heap(&mut regions, 1, o.recv_len);
    debug_assert_eq!((frames_region, pool.region()), (RegionId(0), RegionId(1)));
    map(&mut engine, &mut regions)?;
    // Touch every frame once so page faults stay out of the measurement.
    let pattern: Vec<u8> = (0..stride).map(|i| (i * 31 + 7) as u8).collect();
    for i in 0..nframes {
        regions.write(MemRef::new(frames_region, i * stride), &pattern)?;
    }
    let mut frames = Frames {
        region: frames_region,
        stride,
        held: vec![false; nframes],
        next: 0,
    };
    let mut pcfg = PolicyConfig::new(kind);
    pcfg.copybreak = o.copybreak;
    // The bench wants every copy timed (the service samples one in eight to save clock reads).
    let mut ccfg = CopierConfig::new(pcfg);
    ccfg.time_every = 1;
    let mut copier = Copier::new(
        ccfg,
        Timed {
            inner: engine,
            flushes: 0,
            flush_ns: 0,
        },
        regions,
        Box::new(MonotonicClock::default()),
    );
    let s = copier.open_stream(o.rcvbuf);
    let req = RecvRequest {
        rcvlowat,
        ..RecvRequest::new(o.recv_len)
    };
    let mut pool = pool;
    let buf = pool.take().ok_or_else(|| anyhow!("buffer pool is empty"))?;
    let dst = pool.start(buf);

    let total = o.bytes;
    let (mut delivered, mut received) = (0u64, 0u64);
    let mut since_psh = 0usize;
    let mut events = Vec::new();
    let mut closed = false;
    let mut stall_ns = 0u64;
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    copier.post_recv(s, req, dst, 0)?;
    let deadline = Duration::from_secs(60);
    while received < total {
        if t0.elapsed() > deadline {
            anyhow::bail!(
                "run did not finish within {deadline:?} ({received} of {total} bytes); lower --mib"
            );
        }
        let round = Instant::now();
        let mut moved = false;
        // The sender: a burst of segments while the window is open (and the link allows).
        for _ in 0..o.burst {
            if delivered >= total {
                break;
            }
            let len = seg.min((total - delivered) as usize);
            let held = copier.frames_held() * seg;
            if held + len > o.rcvbuf {
                break;
            }
            if o.link_gbps > 0.0 {
                let due_ns = (delivered + len as u64) as f64 * 8.0 / o.link_gbps;
                if (t0.elapsed().as_nanos() as f64) < due_ns {
                    break;
                }
            }
            let Some(fi) = frames.take() else { break };
            since_psh += len;
            let psh = since_psh >= o.psh_every || delivered + len as u64 == total;
            if psh {
                since_psh = 0;
            }
            copier.on_segment(
                s,
                Segment {
                    frame: FrameId(fi as u64),
                    src: MemRef::new(frames.region, fi * frames.stride),
                    len,
                    psh,
                },
            )?;
            delivered += len as u64;
            moved = true;
        }
        // The receive core drives the engine (doorbell, completions).
        copier.poll();
        // All data in and nothing left to place: end the stream so a receive waiting for
        // more than the rest returns with what it has.
        if delivered >= total
            && !closed
            && copier.queued(s) == 0
            && copier.is_idle()
            && received < total
        {
            copier.close_stream(s)?;
            closed = true;
        }
        loop {
            copier.drain_events(&mut events);
            if events.is_empty() {
                break;
            }
            for e in events.drain(..) {
                moved = true;
                match e {
                    Event::FrameReleased(FrameId(f)) => frames.held[f as usize] = false,
                    Event::RecvDone { len, .. } => {
                        received += len as u64;
                        if received < total && !closed {
                            // The reader (iperf) posts its next recv at once.
                            copier.post_recv(s, req, dst, 0)?;
                        }
                    }
                    Event::Wakeup { .. } => {}
                }
            }
        }
        if !moved {
            stall_ns += round.elapsed().as_nanos() as u64;
            // The model's engine thread shares the few cores: let it run.
            std::thread::yield_now();
        }
    }
    let wall = t0.elapsed();
    let cpu = thread_cpu_ns().saturating_sub(cpu0);
    let stats = copier.stats().clone();
    let (flushes, flush_ns) = (copier.engine().flushes, copier.engine().flush_ns);
    let mut view = StatsView::from(&stats, received);
    view.doorbell_ms = flush_ns as f64 / 1e6;
    view.doorbell_ns_each = if flushes > 0 {
        flush_ns as f64 / flushes as f64
    } else {
        0.0
    };
    view.copy_ns_per_kib_no_doorbell =
        stats.copy_ns.saturating_sub(flush_ns) as f64 * 1024.0 / received.max(1) as f64;
    Ok(RunResult {
        gbps: received as f64 * 8.0 / wall.as_nanos().max(1) as f64,
        wall_ms: wall.as_secs_f64() * 1e3,
        thread_cpu_ms: cpu as f64 / 1e6,
        stall_ms: stall_ns as f64 / 1e6,
        stats: view,
    })
}

/// Runs every configuration `repeats` times, interleaved (each repeat runs every configuration
/// once, so all see the same machine phases); `progress` gets a line per run.
pub fn run(o: &Opts, mut progress: impl FnMut(&str)) -> Result<Report> {
    if o.recv_len == 0 || o.rcvbuf == 0 || o.seg_sizes.contains(&0) {
        anyhow::bail!("recv length, rcvbuf and segment sizes must be positive");
    }
    if o.seg_sizes.iter().any(|&s| s > o.rcvbuf) {
        anyhow::bail!("a segment larger than rcvbuf can never be delivered; raise --rcvbuf");
    }
    let mut configs = Vec::new();
    for &seg in &o.seg_sizes {
        for &lowat in &o.rcvlowats {
            for &p in &o.policies {
                configs.push((seg, p, lowat));
            }
        }
    }
    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); configs.len()];
    for rep in 0..o.repeats.max(1) {
        for (i, &(seg, p, lowat)) in configs.iter().enumerate() {
            let r = run_one(o, seg, p, lowat)?;
            progress(&format!(
                "  repeat {}/{}: seg {seg} {p} rcvlowat {lowat}: {:.2} Gbit/s, DMA share {:.2}",
                rep + 1,
                o.repeats.max(1),
                r.gbps,
                r.stats.dma_share
            ));
            runs[i].push(r);
        }
    }
    let mut rows: Vec<Row> = configs
        .iter()
        .zip(runs)
        .map(|(&(seg, p, lowat), mut rs)| {
            rs.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
            let gbps = median(rs.iter().map(|r| r.gbps).collect());
            let copy = median(rs.iter().map(|r| r.stats.copy_ns_per_kib).collect());
            let copy0 = median(
                rs.iter()
                    .map(|r| r.stats.copy_ns_per_kib_no_doorbell)
                    .collect(),
            );
            let stall = median(
                rs.iter()
                    .map(|r| r.stall_ms / r.wall_ms.max(1e-9))
                    .collect(),
            );
            let per_cpu = median(
                rs.iter()
                    .map(|r| r.gbps * r.wall_ms / r.thread_cpu_ms.max(1e-9))
                    .collect(),
            );
            let n = rs.len();
            Row {
                seg,
                policy: p.to_string(),
                rcvlowat: lowat,
                gbps,
                copy_ns_per_kib: copy,
                copy_ns_per_kib_no_doorbell: copy0,
                stall_share: stall,
                gbps_per_cpu: per_cpu,
                gbps_vs_cpu: None,
                copy_time_vs_cpu: None,
                copy_time_no_doorbell_vs_cpu: None,
                runs: n,
                median_run: rs.swap_remove(n / 2),
            }
        })
        .collect();
    let base: Vec<(usize, usize, f64, f64)> = rows
        .iter()
        .filter(|r| r.policy == "cpu")
        .map(|r| (r.seg, r.rcvlowat, r.gbps, r.copy_ns_per_kib))
        .collect();
    for r in &mut rows {
        if let Some(&(_, _, g, c)) = base.iter().find(|b| b.0 == r.seg && b.1 == r.rcvlowat) {
            r.gbps_vs_cpu = ratio(r.gbps, g);
            r.copy_time_vs_cpu = ratio(r.copy_ns_per_kib, c);
            r.copy_time_no_doorbell_vs_cpu = ratio(r.copy_ns_per_kib_no_doorbell, c);
        }
    }
    Ok(Report {
        when: utc_now(),
        conditions: format!(
            "{} CPUs online, load average {}; one thread plays receive core and reader; model engine thread on its own",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg()
        ),
        simulated_timing: format!(
            "SIMULATED: {} ns per descriptor + {:.1} GB/s",
            o.per_desc_ns,
            o.dma_bytes_per_sec as f64 / 1e9
        ),
        engine: match o.engine {
            EngineChoice::Model => "I/OAT driver on the software model (doorbell wakes the model's engine thread)".into(),
            EngineChoice::Ideal => "ideal timing-only device (no bytes moved, free doorbell: the best case for DMA)".into(),
        },
        recv_len: o.recv_len,
        rcvbuf: o.rcvbuf,
        bytes_per_run: o.bytes,
        burst: o.burst,
        psh_every: o.psh_every,
        link_gbps: o.link_gbps,
        copybreak: o.copybreak,
        rows,
    })
}

/// The report as text tables.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "policy  {}  ({})\nrecv len {} B, rcvbuf {} B, {} MiB per run, burst {}, PSH every {} B, link {}, netdma copybreak {} B\nDMA engine: {}, {}\n\n",
        r.when,
        r.conditions,
        r.recv_len,
        r.rcvbuf,
        r.bytes_per_run >> 20,
        r.burst,
        r.psh_every,
        if r.link_gbps > 0.0 { format!("paced to {} Gbit/s", r.link_gbps) } else { "unpaced (receive-core bound)".into() },
        r.copybreak,
        r.engine,
        r.simulated_timing
    );
    s += &format!(
        "{:>5} {:>8} {:>7} {:>7} {:>6} {:>8} {:>6} {:>8} {:>6} {:>9} {:>7} {:>7} {:>6} {:>6} {:>16} {:>7} {:>6}\n",
        "seg", "policy", "lowat", "Gbit/s", "x cpu", "copy/KiB", "x cpu", "-db/KiB", "x cpu", "Gb/s/cpu", "stall%", "DMA%", "ops", "mean", "wake f/p/pr/lw", "recvs", "armed"
    );
    for w in &r.rows {
        let m = &w.median_run.stats;
        s += &format!(
            "{:>5} {:>8} {:>7} {:>7.2} {:>6} {:>8.0} {:>6} {:>8.0} {:>6} {:>9.2} {:>7.1} {:>7.1} {:>6} {:>6.0} {:>16} {:>7} {:>6}\n",
            w.seg,
            w.policy,
            w.rcvlowat,
            w.gbps,
            fmt_ratio(w.gbps_vs_cpu),
            w.copy_ns_per_kib,
            fmt_ratio(w.copy_time_vs_cpu),
            w.copy_ns_per_kib_no_doorbell,
            fmt_ratio(w.copy_time_no_doorbell_vs_cpu),
            w.gbps_per_cpu,
            w.stall_share * 100.0,
            m.dma_share * 100.0,
            m.dma_ops,
            m.mean_dma_size,
            format!("{}/{}/{}/{}", m.wake_full, m.wake_psh, m.wake_pressure, m.wake_lowat),
            m.recvs,
            m.armed
        );
    }
    s += "\nGbit/s: payload per wall second (medians); x cpu: against policy cpu, same seg and rcvlowat;\n\
copy/KiB: receive-core ns copying or driving DMA per KiB; -db/KiB: the same without doorbells (the model's\n\
doorbell wakes its engine thread with a futex, a real device's is a posted MMIO write; truth lies between);\n\
Gb/s/cpu: payload per receive-thread CPU second;\n\
stall%: wall time with nothing to move (window closed or receive waiting on DMA);\n\
counters (DMA%, ops, mean DMA size, wakeups full/psh/pressure/lowat, recvs, armed) from the median run.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(engine: EngineChoice) -> Opts {
        Opts {
            seg_sizes: vec![1448],
            policies: vec![PolicyKind::Cpu],
            rcvlowats: vec![1],
            recv_len: 2 << 20,
            rcvbuf: 256_000,
            bytes: 4 << 20,
            repeats: 1,
            burst: 32,
            psh_every: 128 << 10,
            link_gbps: 0.0,
            copybreak: 4096,
            per_desc_ns: 100,
            dma_bytes_per_sec: 20_000_000_000,
            pool_bytes: 4 << 20,
            engine,
        }
    }

    #[test]
    fn every_byte_is_accounted_for_and_the_seed_mechanism_shows() {
        let o = opts(EngineChoice::Ideal);
        let cpu = run_one(&o, 1448, PolicyKind::Cpu, 1).unwrap();
        assert_eq!(cpu.stats.bytes_cpu, o.bytes);
        assert_eq!(cpu.stats.dma_ops, 0);
        let lowat = run_one(&o, 1448, PolicyKind::NetDma, 200 << 10).unwrap();
        assert_eq!(lowat.stats.bytes_cpu + lowat.stats.bytes_dma, o.bytes);
        assert!(lowat.stats.dma_ops > 0, "{:?}", lowat.stats);
        assert!(lowat.stats.armed > 0);
        // Every DMA op of netdma carries one segment.
        assert_eq!(lowat.stats.mean_dma_size.round() as usize, 1448);
    }

    #[test]
    fn model_engine_runs_a_short_stream() {
        let o = Opts {
            bytes: 1 << 20,
            ..opts(EngineChoice::Model)
        };
        let r = run_one(&o, 8948, PolicyKind::NetDma, 200 << 10).unwrap();
        assert_eq!(r.stats.bytes_cpu + r.stats.bytes_dma, o.bytes);
    }

    #[test]
    fn ideal_engine_completes_in_order_after_its_time() {
        let mem = Regions::new();
        let mut e = IdealEngine::new(0, 1_000_000_000_000);
        let op = |cookie| CopyOp {
            src: MemRef::new(RegionId(0), 0),
            dst: MemRef::new(RegionId(0), 0),
            len: 100,
            cookie,
        };
        e.submit(&mem, op(1)).unwrap();
        e.submit(&mem, op(2)).unwrap();
        let mut out = Vec::new();
        assert_eq!(e.poll(&mem, &mut out), 0, "not rung yet");
        e.flush(&mem);
        let t = Instant::now();
        while out.len() < 2 && t.elapsed() < Duration::from_secs(1) {
            e.poll(&mem, &mut out);
        }
        let cookies: Vec<u64> = out.iter().map(|c| c.cookie).collect();
        assert_eq!(cookies, vec![1, 2]);
        assert_eq!(e.in_flight(), 0);
        assert!(matches!(
            e.submit(&mem, CopyOp { len: 0, ..op(3) }),
            Err(EngineError::BadLength { .. })
        ));
        assert_eq!("ideal".parse::<EngineChoice>(), Ok(EngineChoice::Ideal));
        assert!("fast"
            .parse::<EngineChoice>()
            .unwrap_err()
            .contains("model or ideal"));
    }
}
