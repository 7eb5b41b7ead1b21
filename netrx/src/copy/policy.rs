//! The copy policy: pure decisions, no I/O, no clock.
//!
//! Three questions, asked by [`super::copier::Copier`] (or any receive core):
//! 1. [`Policy::arm`] — when a receive is posted: may copies into this buffer use DMA at all?
//!    (NET_DMA's "pin decision" in `tcp_recvmsg`.)
//! 2. [`Policy::place`] — for each in-order segment: copy it by CPU now, hand it to the DMA
//!    engine now (early copy while the reader sleeps), or leave it queued for the reader.
//! 3. [`Policy::wakeup`] — after a segment was placed: wake the waiting reader, and why.
//!
//! Policies: `cpu` never uses DMA; `netdma` applies Linux 2.6.32's rules exactly (fixed
//! copybreak, default 4096); `adaptive` measures both paths online ([`CostModel`]) and uses DMA
//! only where it saves receive-core time without delaying the receive. See docs/copy-policy.md.

use std::fmt;
use std::str::FromStr;

/// NET_DMA's default `net.ipv4.tcp_dma_copybreak`.
pub const NETDMA_DEFAULT_COPYBREAK: usize = 4096;

/// Which rules decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Cpu,
    NetDma,
    Adaptive,
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "netdma" => Ok(Self::NetDma),
            "adaptive" => Ok(Self::Adaptive),
            _ => Err(format!(
                "unknown copy policy {s:?}; use one of: cpu, netdma, adaptive"
            )),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::NetDma => "netdma",
            Self::Adaptive => "adaptive",
        })
    }
}

/// Policy settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    /// `netdma`: receives of at most this many bytes never use DMA (fixed).
    /// `adaptive`: ignored; the copybreak comes from [`CostModel::copybreak`].
    pub copybreak: usize,
    /// `adaptive`: most DMA ops chained behind one doorbell.
    pub batch: usize,
    /// `adaptive`: consecutive DMA errors after which the channel counts as failing.
    pub fail_threshold: u32,
    /// `adaptive`: while DMA is not being chosen, one probe op every this many eligible
    /// segments keeps the DMA measurements fresh (only on an idle, present channel).
    pub probe_every: u32,
}

impl PolicyConfig {
    pub fn new(kind: PolicyKind) -> Self {
        Self {
            kind,
            copybreak: NETDMA_DEFAULT_COPYBREAK,
            batch: 16,
            fail_threshold: 3,
            probe_every: 256,
        }
    }
    pub fn cpu() -> Self {
        Self::new(PolicyKind::Cpu)
    }
    pub fn netdma() -> Self {
        Self::new(PolicyKind::NetDma)
    }
    pub fn adaptive() -> Self {
        Self::new(PolicyKind::Adaptive)
    }
}

/// A posted receive, as the application asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvRequest {
    /// Buffer length.
    pub len: usize,
    /// SO_RCVLOWAT (0 counts as 1, as in Linux).
    pub rcvlowat: usize,
    /// MSG_WAITALL: the target is the whole buffer.
    pub waitall: bool,
    /// MSG_PEEK: copy without consuming (never DMA).
    pub peek: bool,
    /// Low-latency stream (never DMA), like `sysctl_tcp_low_latency`.
    pub low_latency: bool,
    /// Return at once with what is queued (possibly nothing) instead of waiting.
    pub nonblocking: bool,
    /// The buffer is a registered (DMA-mapped) one; plain slices always take the CPU path.
    pub registered: bool,
}

impl RecvRequest {
    /// A blocking receive into a registered buffer of `len` bytes with SO_RCVLOWAT 1.
    pub fn new(len: usize) -> Self {
        Self {
            len,
            rcvlowat: 1,
            waitall: false,
            peek: false,
            low_latency: false,
            nonblocking: false,
            registered: true,
        }
    }

    /// Bytes after which the receive returns: `sock_rcvlowat()` — `len` with WAITALL, else
    /// `min(rcvlowat, len)`, and never below 1.
    pub fn target(&self) -> usize {
        let t = if self.waitall {
            self.len
        } else {
            self.rcvlowat.min(self.len)
        };
        t.max(1)
    }
}

/// The DMA channel as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelView {
    /// A DMA engine exists (NET_DMA: `dma_find_channel(DMA_MEMCPY)`).
    pub present: bool,
    /// The engine has not given up.
    pub healthy: bool,
    pub in_flight: usize,
    pub capacity: usize,
    /// Bytes accepted by the engine and not yet completed.
    pub backlog_bytes: usize,
    /// DMA errors since the last successful op.
    pub consecutive_errors: u32,
}

impl ChannelView {
    /// No DMA engine at all.
    pub const NONE: ChannelView = ChannelView {
        present: false,
        healthy: false,
        in_flight: 0,
        capacity: 0,
        backlog_bytes: 0,
        consecutive_errors: 0,
    };

    /// An idle, healthy channel of `capacity` ops.
    pub fn idle(capacity: usize) -> Self {
        Self {
            present: true,
            healthy: true,
            capacity,
            ..Self::NONE
        }
    }

    fn has_room(&self) -> bool {
        self.in_flight < self.capacity
    }
}

/// Why a receive was not armed for DMA (index into [`super::stats::CopyStats::not_armed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum NoDma {
    /// Policy `cpu`.
    PolicyCpu = 0,
    /// Enough data already queued: `available >= target`, a plain CPU copy returns at once.
    DataReady,
    /// Buffer length not above the copybreak.
    ShortRecv,
    Peek,
    LowLatency,
    /// Not a registered buffer.
    PlainBuffer,
    /// No DMA channel.
    NoChannel,
    /// Channel unhealthy or failing (adaptive only; NET_DMA had no such check).
    Failing,
    /// Nonblocking receive (adaptive only): it never waits, so DMA could only add latency.
    NoWait,
}

impl NoDma {
    pub const COUNT: usize = 9;
}

/// The waiting reader's posted buffer, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderView {
    /// [`Policy::arm`] allowed DMA for this receive.
    pub armed: bool,
    /// Free bytes left in the posted buffer.
    pub room: usize,
    /// Bytes already placed into it (copied or in flight).
    pub copied: usize,
    /// Bytes after which the receive returns.
    pub target: usize,
}

/// One in-order segment about to be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentView {
    pub len: usize,
    pub psh: bool,
    /// Nothing unread is queued ahead of it (NET_DMA: `copied_seq == rcv_nxt`).
    pub in_order: bool,
    /// Its checksum was verified (we verify in software before this decision).
    pub csum_ok: bool,
}

/// Where a segment's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The receive core copies it into the posted buffer now.
    CpuCopyNow,
    /// The DMA engine copies it into the posted buffer (the frame is held until completion).
    DmaEarlyCopy,
    /// It stays queued; the reader copies it later.
    Queue,
}

/// Why a waiting reader is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// The posted buffer is full.
    Full,
    /// PSH seen (`netdma` only: the reader wakes, and sleeps again if below target).
    Psh,
    /// Receive memory passed rcvbuf/2.
    Pressure,
    /// Copied bytes reached the target (SO_RCVLOWAT): the receive returns.
    Lowat,
}

impl Wakeup {
    /// Whether the receive returns on this wakeup (otherwise the reader waits again).
    pub fn completes(self) -> bool {
        matches!(self, Wakeup::Full | Wakeup::Lowat)
    }
}

/// Exponentially weighted moving average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    value: f64,
    samples: u64,
    alpha: f64,
}

impl Ewma {
    /// Starts at `prior` (used until samples arrive).
    pub fn new(prior: f64, alpha: f64) -> Self {
        Self {
            value: prior,
            samples: 0,
            alpha,
        }
    }
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() || x < 0.0 {
            return;
        }
        // The first sample replaces the prior; later ones blend in.
        self.value = if self.samples == 0 {
            x
        } else {
            self.value + self.alpha * (x - self.value)
        };
        self.samples += 1;
    }
    pub fn get(&self) -> f64 {
        self.value
    }
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Online cost model of the two copy paths (all in nanoseconds of the receive core or of the
/// device). Priors: CPU 8 GB/s (cold frames into a warm buffer, measured on this machine kind),
/// DMA 150 ns of receive-core time per op, 2 µs latency, 5 GB/s, 10 Gbit/s arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    /// Receive-core time per byte copied by CPU.
    pub cpu_ns_per_byte: Ewma,
    /// Receive-core time per DMA op: descriptor, its share of the doorbell, completion handling.
    pub dma_cpu_ns_per_op: Ewma,
    /// Submit to completion seen, for an op on a not-backlogged channel.
    pub dma_latency_ns: Ewma,
    /// Device time per byte.
    pub dma_ns_per_byte: Ewma,
    /// Time between payload bytes arriving.
    pub arrival_ns_per_byte: Ewma,
    /// DMA must beat CPU by this factor before it is chosen.
    pub margin: f64,
    pub min_copybreak: usize,
    pub max_copybreak: usize,
}

impl Default for CostModel {
    fn default() -> Self {
        const A: f64 = 1.0 / 16.0;
        Self {
            cpu_ns_per_byte: Ewma::new(1.0 / 8.0, A),
            dma_cpu_ns_per_op: Ewma::new(150.0, A),
            dma_latency_ns: Ewma::new(2000.0, A),
            dma_ns_per_byte: Ewma::new(1.0 / 5.0, A),
            arrival_ns_per_byte: Ewma::new(0.8, A),
            margin: 1.25,
            min_copybreak: 256,
            max_copybreak: 1 << 20,
        }
    }
}

impl CostModel {
    /// A CPU copy of `bytes` took `ns`.
    pub fn record_cpu_copy(&mut self, bytes: usize, ns: u64) {
        if bytes >= 64 && ns > 0 {
            self.cpu_ns_per_byte.add(ns as f64 / bytes as f64);
        }
    }
    /// `ops` DMA ops cost the receive core `ns` (submit + doorbell + completion handling).
    pub fn record_dma_cpu(&mut self, ops: usize, ns: u64) {
        if ops > 0 && ns > 0 {
            self.dma_cpu_ns_per_op.add(ns as f64 / ops as f64);
        }
    }
    /// An op of `bytes` completed `latency_ns` after its doorbell; `busy_ns` is the device time
    /// it took when the channel was busy before it (known only then).
    pub fn record_dma_completion(&mut self, bytes: usize, latency_ns: u64, busy_ns: Option<u64>) {
        match busy_ns {
            Some(b) if bytes > 0 && b > 0 => self.dma_ns_per_byte.add(b as f64 / bytes as f64),
            _ => self.dma_latency_ns.add(latency_ns as f64),
        }
    }
    /// `bytes` of payload arrived `gap_ns` after the previous segment.
    pub fn record_arrival(&mut self, bytes: usize, gap_ns: u64) {
        if bytes > 0 && gap_ns > 0 {
            self.arrival_ns_per_byte.add(gap_ns as f64 / bytes as f64);
        }
    }

    /// Segment size from which a DMA op costs the receive core less than copying it:
    /// `margin × dma_cpu_ns_per_op / cpu_ns_per_byte`, clamped.
    pub fn copybreak(&self) -> usize {
        let cpu = self.cpu_ns_per_byte.get().max(1e-6);
        let cb = self.margin * self.dma_cpu_ns_per_op.get() / cpu;
        (cb.ceil() as usize).clamp(self.min_copybreak, self.max_copybreak)
    }

    /// When a new op of `bytes` behind `backlog` queued bytes would complete, from now.
    pub fn dma_finish_ns(&self, backlog: usize, bytes: usize) -> f64 {
        self.dma_latency_ns.get() + (backlog + bytes) as f64 * self.dma_ns_per_byte.get()
    }

    /// How long until `bytes` more payload arrive.
    pub fn arrival_ns(&self, bytes: usize) -> f64 {
        bytes as f64 * self.arrival_ns_per_byte.get()
    }
}

/// The policy of one poller: configuration, the shared cost model and the probe counter.
/// Per-stream state (the posted buffer) is passed in as [`ReaderView`].
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    model: CostModel,
    since_dma: u32,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            cfg,
            model: CostModel::default(),
            since_dma: 0,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }
    pub fn kind(&self) -> PolicyKind {
        self.cfg.kind
    }
    pub fn model(&self) -> &CostModel {
        &self.model
    }
    pub fn model_mut(&mut self) -> &mut CostModel {
        &mut self.model
    }

    /// The copybreak in force: fixed for `netdma`, measured for `adaptive`.
    pub fn copybreak(&self) -> usize {
        match self.cfg.kind {
            PolicyKind::Cpu => usize::MAX,
            PolicyKind::NetDma => self.cfg.copybreak,
            PolicyKind::Adaptive => self.model.copybreak(),
        }
    }

    /// Whether each DMA op gets its own doorbell (`netdma`), or ops are chained per batch.
    pub fn max_batch(&self) -> usize {
        match self.cfg.kind {
            PolicyKind::Adaptive => self.cfg.batch.max(1),
            _ => 1,
        }
    }

    fn failing(&self, chan: &ChannelView) -> bool {
        !chan.healthy || chan.consecutive_errors >= self.cfg.fail_threshold
    }

    /// The pin decision at receive time. `available`: bytes already queued for this stream.
    /// NET_DMA (2.6.32 `tcp_recvmsg`): DMA iff `available < target && len > copybreak &&
    /// !PEEK && !low_latency && channel exists`; we add "registered buffer".
    pub fn arm(
        &self,
        req: &RecvRequest,
        available: usize,
        chan: &ChannelView,
    ) -> Result<(), NoDma> {
        if self.cfg.kind == PolicyKind::Cpu {
            return Err(NoDma::PolicyCpu);
        }
        if req.peek {
            return Err(NoDma::Peek);
        }
        if req.low_latency {
            return Err(NoDma::LowLatency);
        }
        if !req.registered {
            return Err(NoDma::PlainBuffer);
        }
        if available >= req.target() {
            return Err(NoDma::DataReady);
        }
        if req.nonblocking && self.cfg.kind == PolicyKind::Adaptive {
            return Err(NoDma::NoWait);
        }
        let short = match self.cfg.kind {
            // NET_DMA compares the buffer length: `len > sysctl_tcp_dma_copybreak`.
            PolicyKind::NetDma => req.len <= self.cfg.copybreak,
            // Adaptive: a receive that cannot hold one segment worth a DMA op is short.
            _ => req.len < self.model.copybreak(),
        };
        if short {
            return Err(NoDma::ShortRecv);
        }
        if !chan.present {
            return Err(NoDma::NoChannel);
        }
        if self.cfg.kind == PolicyKind::Adaptive && self.failing(chan) {
            return Err(NoDma::Failing);
        }
        Ok(())
    }

    /// Where an arriving in-order segment goes. `reader` is the waiting reader's buffer, if a
    /// receive is posted and still open.
    pub fn place(
        &mut self,
        seg: &SegmentView,
        reader: Option<&ReaderView>,
        chan: &ChannelView,
    ) -> Decision {
        let Some(r) = reader else {
            return Decision::Queue;
        };
        // Early placement only in order and only if the whole segment fits (NET_DMA:
        // `copied_seq == rcv_nxt && len <= ucopy.len`); otherwise the reader takes it later.
        if !seg.in_order || seg.len > r.room {
            return Decision::Queue;
        }
        // NET_DMA could not DMA unverified data (the engine cannot checksum). We verify in
        // software before deciding, so this is only a guard.
        if !r.armed || !seg.csum_ok {
            return Decision::CpuCopyNow;
        }
        self.dma_or_cpu(seg.len, r, chan)
    }

    /// How the reader copies `len` queued bytes into its buffer (after arming or a wakeup).
    /// NET_DMA used DMA for every queued skb once the iovec was pinned.
    pub fn place_queued(
        &mut self,
        len: usize,
        reader: &ReaderView,
        chan: &ChannelView,
    ) -> Decision {
        if !reader.armed || len == 0 {
            return Decision::CpuCopyNow;
        }
        self.dma_or_cpu(len, reader, chan)
    }

    fn dma_or_cpu(&mut self, len: usize, r: &ReaderView, chan: &ChannelView) -> Decision {
        match self.cfg.kind {
            PolicyKind::Cpu => Decision::CpuCopyNow,
            // NET_DMA tried the channel; a full ring made the copy fall back to the CPU path.
            PolicyKind::NetDma if chan.present && chan.has_room() => Decision::DmaEarlyCopy,
            PolicyKind::NetDma => Decision::CpuCopyNow,
            PolicyKind::Adaptive => self.adaptive(len, r, chan),
        }
    }

    fn adaptive(&mut self, len: usize, r: &ReaderView, chan: &ChannelView) -> Decision {
        if !chan.present || !chan.has_room() {
            return Decision::CpuCopyNow;
        }
        let probe_due =
            self.since_dma >= self.cfg.probe_every && chan.in_flight == 0 && chan.healthy;
        let choose_dma = if self.failing(chan) {
            // Failing channel: CPU, except a rare probe to notice recovery.
            probe_due
        } else if len < self.model.copybreak() {
            probe_due
        } else {
            // Only if the DMA is done before the receive would return anyway: the receive
            // returns when `target` bytes are in; the bytes still missing after this segment
            // take `arrival_ns(missing)` to arrive. If they arrive sooner than the DMA backlog
            // completes, a CPU copy returns the receive earlier: use it.
            let missing = r
                .target
                .saturating_sub(r.copied + len)
                .min(r.room.saturating_sub(len));
            self.model.arrival_ns(missing) >= self.model.dma_finish_ns(chan.backlog_bytes, len)
        };
        if choose_dma {
            self.since_dma = 0;
            Decision::DmaEarlyCopy
        } else {
            self.since_dma = self.since_dma.saturating_add(1);
            Decision::CpuCopyNow
        }
    }

    /// Whether to wake the waiting reader after a segment was placed. `r` is the buffer after
    /// the placement; `psh_placed`: the segment had PSH and went into the buffer; `rmem`: bytes
    /// of receive memory the stream holds (queued or under DMA).
    pub fn wakeup(
        &self,
        r: &ReaderView,
        psh_placed: bool,
        rmem: usize,
        rcvbuf: usize,
    ) -> Option<Wakeup> {
        if r.room == 0 {
            Some(Wakeup::Full)
        } else if r.copied >= r.target {
            Some(Wakeup::Lowat)
        } else if psh_placed && self.cfg.kind == PolicyKind::NetDma {
            Some(Wakeup::Psh)
        } else if rmem > rcvbuf >> 1 {
            Some(Wakeup::Pressure)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(len: usize, lowat: usize) -> RecvRequest {
        RecvRequest {
            rcvlowat: lowat,
            ..RecvRequest::new(len)
        }
    }
    fn seg(len: usize) -> SegmentView {
        SegmentView {
            len,
            psh: false,
            in_order: true,
            csum_ok: true,
        }
    }
    fn reader(armed: bool, room: usize, copied: usize, target: usize) -> ReaderView {
        ReaderView {
            armed,
            room,
            copied,
            target,
        }
    }

    #[test]
    fn target_follows_sock_rcvlowat() {
        assert_eq!(req(2 << 20, 1).target(), 1);
        assert_eq!(req(2 << 20, 0).target(), 1);
        assert_eq!(req(2 << 20, 200_000).target(), 200_000);
        assert_eq!(req(1000, 200_000).target(), 1000);
        assert_eq!(
            RecvRequest {
                waitall: true,
                ..req(5000, 1)
            }
            .target(),
            5000
        );
        assert_eq!(RecvRequest::new(0).target(), 1);
    }

    #[test]
    fn policy_names_parse() {
        assert_eq!("netdma".parse::<PolicyKind>().unwrap(), PolicyKind::NetDma);
        assert_eq!(PolicyKind::Adaptive.to_string(), "adaptive");
        assert!("dma"
            .parse::<PolicyKind>()
            .unwrap_err()
            .contains("cpu, netdma, adaptive"));
    }

    #[test]
    fn netdma_pin_decision_every_branch() {
        let p = Policy::new(PolicyConfig::netdma());
        let ch = ChannelView::idle(64);
        let r = req(2 << 20, 200_000);
        assert_eq!(p.arm(&r, 0, &ch), Ok(()));
        assert_eq!(p.arm(&r, 199_999, &ch), Ok(()));
        assert_eq!(p.arm(&r, 200_000, &ch), Err(NoDma::DataReady));
        // Default rcvlowat: target 1, so any queued byte means "data ready" (the seed's case).
        assert_eq!(p.arm(&req(2 << 20, 1), 1, &ch), Err(NoDma::DataReady));
        assert_eq!(p.arm(&req(2 << 20, 1), 0, &ch), Ok(()));
        assert_eq!(p.arm(&req(4096, 4096), 0, &ch), Err(NoDma::ShortRecv));
        assert_eq!(p.arm(&req(4097, 4097), 0, &ch), Ok(()));
        assert_eq!(
            p.arm(&RecvRequest { peek: true, ..r }, 0, &ch),
            Err(NoDma::Peek)
        );
        assert_eq!(
            p.arm(
                &RecvRequest {
                    low_latency: true,
                    ..r
                },
                0,
                &ch
            ),
            Err(NoDma::LowLatency)
        );
        assert_eq!(
            p.arm(
                &RecvRequest {
                    registered: false,
                    ..r
                },
                0,
                &ch
            ),
            Err(NoDma::PlainBuffer)
        );
        assert_eq!(p.arm(&r, 0, &ChannelView::NONE), Err(NoDma::NoChannel));
        // NET_DMA had no health check: a failing channel is still used.
        let failing = ChannelView {
            consecutive_errors: 99,
            healthy: false,
            ..ch
        };
        assert_eq!(p.arm(&r, 0, &failing), Ok(()));
        let custom = Policy::new(PolicyConfig {
            copybreak: 1 << 20,
            ..PolicyConfig::netdma()
        });
        assert_eq!(custom.arm(&r, 0, &ch), Ok(()));
        assert_eq!(custom.arm(&req(1 << 20, 1), 0, &ch), Err(NoDma::ShortRecv));
    }

    #[test]
    fn cpu_policy_never_dma() {
        let mut p = Policy::new(PolicyConfig::cpu());
        let ch = ChannelView::idle(64);
        assert_eq!(p.arm(&req(2 << 20, 200_000), 0, &ch), Err(NoDma::PolicyCpu));
        assert_eq!(p.copybreak(), usize::MAX);
        // Even if handed an armed reader, cpu copies by CPU.
        assert_eq!(
            p.place(&seg(65536), Some(&reader(true, 1 << 20, 0, 1 << 20)), &ch),
            Decision::CpuCopyNow
        );
        assert_eq!(
            p.place_queued(65536, &reader(true, 1 << 20, 0, 1 << 20), &ch),
            Decision::CpuCopyNow
        );
        assert_eq!(
            p.place(&seg(1448), Some(&reader(false, 10_000, 0, 1)), &ch),
            Decision::CpuCopyNow
        );
        assert_eq!(p.place(&seg(1448), None, &ch), Decision::Queue);
        assert_eq!(p.max_batch(), 1);
    }

    #[test]
    fn placement_branches() {
        let mut p = Policy::new(PolicyConfig::netdma());
        let ch = ChannelView::idle(2);
        let armed = reader(true, 10_000, 0, 200_000);
        // No reader waiting: the segment waits in the queue.
        assert_eq!(p.place(&seg(1448), None, &ch), Decision::Queue);
        // Out of order (data queued ahead of it): queue.
        assert_eq!(
            p.place(
                &SegmentView {
                    in_order: false,
                    ..seg(1448)
                },
                Some(&armed),
                &ch
            ),
            Decision::Queue
        );
        // Does not fit the remaining room: queue (the reader copies what fits).
        assert_eq!(
            p.place(&seg(1448), Some(&reader(true, 1000, 0, 200_000)), &ch),
            Decision::Queue
        );
        // Armed, in order, fits, verified, channel free: early DMA copy, any segment size
        // (NET_DMA's copybreak applies to the receive, not the segment).
        assert_eq!(
            p.place(&seg(1448), Some(&armed), &ch),
            Decision::DmaEarlyCopy
        );
        // Not armed: the receive core copies it now.
        assert_eq!(
            p.place(&seg(1448), Some(&reader(false, 10_000, 0, 1)), &ch),
            Decision::CpuCopyNow
        );
        // Unverified checksum: never DMA.
        assert_eq!(
            p.place(
                &SegmentView {
                    csum_ok: false,
                    ..seg(1448)
                },
                Some(&armed),
                &ch
            ),
            Decision::CpuCopyNow
        );
        // Ring full: falls back to CPU.
        let full = ChannelView { in_flight: 2, ..ch };
        assert_eq!(
            p.place(&seg(1448), Some(&armed), &full),
            Decision::CpuCopyNow
        );
        assert_eq!(
            p.place(&seg(1448), Some(&armed), &ChannelView::NONE),
            Decision::CpuCopyNow
        );
        assert_eq!(p.place_queued(1448, &armed, &ch), Decision::DmaEarlyCopy);
        assert_eq!(
            p.place_queued(1448, &reader(false, 10_000, 0, 1), &ch),
            Decision::CpuCopyNow
        );
        assert_eq!(p.place_queued(0, &armed, &ch), Decision::CpuCopyNow);
    }

    #[test]
    fn wakeup_reasons() {
        let nd = Policy::new(PolicyConfig::netdma());
        let ad = Policy::new(PolicyConfig::adaptive());
        let rcvbuf = 250_000;
        // Buffer full.
        assert_eq!(
            nd.wakeup(&reader(true, 0, 100, 200), false, 0, rcvbuf),
            Some(Wakeup::Full)
        );
        // Target reached (rcvlowat).
        assert_eq!(
            nd.wakeup(&reader(true, 10, 200, 200), false, 0, rcvbuf),
            Some(Wakeup::Lowat)
        );
        // PSH: netdma wakes (and the reader sleeps again below target); adaptive does not.
        assert_eq!(
            nd.wakeup(&reader(true, 10, 100, 200), true, 0, rcvbuf),
            Some(Wakeup::Psh)
        );
        assert_eq!(
            ad.wakeup(&reader(true, 10, 100, 200), true, 0, rcvbuf),
            None
        );
        // Receive memory above rcvbuf/2.
        assert_eq!(
            nd.wakeup(&reader(true, 10, 100, 200), false, 125_001, rcvbuf),
            Some(Wakeup::Pressure)
        );
        assert_eq!(
            nd.wakeup(&reader(true, 10, 100, 200), false, 125_000, rcvbuf),
            None
        );
        assert_eq!(
            ad.wakeup(&reader(true, 10, 100, 200), false, 125_001, rcvbuf),
            Some(Wakeup::Pressure)
        );
        assert!(Wakeup::Full.completes() && Wakeup::Lowat.completes());
        assert!(!Wakeup::Psh.completes() && !Wakeup::Pressure.completes());
    }

    #[test]
    fn cost_model_copybreak_moves_with_measurements() {
        let mut m = CostModel::default();
        // Prior: 1.25 * 150 ns / (1/8 ns per byte) = 1500 bytes.
        assert_eq!(m.copybreak(), 1500);
        // A slow DMA submit path raises the copybreak...
        for _ in 0..100 {
            m.record_dma_cpu(1, 2000);
        }
        assert!(m.copybreak() > 15_000, "{}", m.copybreak());
        // ... and a slow CPU copy lowers it.
        for _ in 0..100 {
            m.record_cpu_copy(4096, 4096);
        }
        assert!(m.copybreak() < 3000, "{}", m.copybreak());
        // Clamped at both ends; junk samples ignored.
        for _ in 0..100 {
            m.record_dma_cpu(1, 1);
        }
        assert_eq!(m.copybreak(), m.min_copybreak);
        m.record_cpu_copy(10, 1_000_000);
        m.record_cpu_copy(4096, 0);
        m.record_arrival(0, 5);
        assert_eq!(m.arrival_ns_per_byte.samples(), 0);
        m.record_dma_completion(4096, 3000, None);
        m.record_dma_completion(4096, 99_999, Some(4096));
        assert_eq!(m.dma_latency_ns.get(), 3000.0);
        assert_eq!(m.dma_ns_per_byte.get(), 1.0);
        assert_eq!(m.dma_finish_ns(1000, 24), 4024.0);
        let mut e = Ewma::new(5.0, 0.5);
        e.add(f64::NAN);
        e.add(-1.0);
        assert_eq!(e.get(), 5.0);
    }

    fn adaptive_with(cpu_ns_per_byte: f64, dma_op_ns: f64) -> Policy {
        let mut p = Policy::new(PolicyConfig {
            probe_every: 4,
            ..PolicyConfig::adaptive()
        });
        p.model.cpu_ns_per_byte = Ewma::new(cpu_ns_per_byte, 0.1);
        p.model.dma_cpu_ns_per_op = Ewma::new(dma_op_ns, 0.1);
        p
    }

    #[test]
    fn adaptive_arm_branches() {
        let p = adaptive_with(0.125, 150.0); // copybreak 1500
        let ch = ChannelView::idle(64);
        assert_eq!(p.arm(&req(1 << 20, 1 << 20), 0, &ch), Ok(()));
        assert_eq!(p.arm(&req(1000, 1000), 0, &ch), Err(NoDma::ShortRecv));
        assert_eq!(p.arm(&req(1 << 20, 1), 5, &ch), Err(NoDma::DataReady));
        assert_eq!(
            p.arm(&req(1 << 20, 1 << 20), 0, &ChannelView::NONE),
            Err(NoDma::NoChannel)
        );
        let failing = ChannelView {
            consecutive_errors: 3,
            ..ch
        };
        assert_eq!(
            p.arm(&req(1 << 20, 1 << 20), 0, &failing),
            Err(NoDma::Failing)
        );
        let dead = ChannelView {
            healthy: false,
            ..ch
        };
        assert_eq!(p.arm(&req(1 << 20, 1 << 20), 0, &dead), Err(NoDma::Failing));
        assert_eq!(p.max_batch(), 16);
        let nb = RecvRequest {
            nonblocking: true,
            ..req(1 << 20, 1 << 20)
        };
        assert_eq!(p.arm(&nb, 0, &ch), Err(NoDma::NoWait));
        // NET_DMA did not look at MSG_DONTWAIT.
        assert_eq!(Policy::new(PolicyConfig::netdma()).arm(&nb, 0, &ch), Ok(()));
    }

    #[test]
    fn adaptive_placement_branches() {
        let mut p = adaptive_with(0.125, 150.0); // copybreak 1500
        let ch = ChannelView::idle(64);
        let big = reader(true, 2 << 20, 0, 2 << 20);
        // Above the copybreak with plenty still to arrive: DMA.
        assert_eq!(p.place(&seg(4096), Some(&big), &ch), Decision::DmaEarlyCopy);
        // Below the measured copybreak: CPU.
        assert_eq!(p.place(&seg(1448), Some(&big), &ch), Decision::CpuCopyNow);
        // The segment that completes the receive: DMA latency would delay the return: CPU.
        let tail = reader(true, 2 << 20, (2 << 20) - 4096, 2 << 20);
        assert_eq!(p.place(&seg(4096), Some(&tail), &ch), Decision::CpuCopyNow);
        // Default rcvlowat (target 1): every receive returns after its first segment: CPU.
        assert_eq!(
            p.place(&seg(9000), Some(&reader(true, 2 << 20, 0, 1)), &ch),
            Decision::CpuCopyNow
        );
        // Deep backlog on the channel: DMA would finish after the receive: CPU.
        let backlog = ChannelView {
            backlog_bytes: 64 << 20,
            in_flight: 10,
            ..ch
        };
        assert_eq!(
            p.place(&seg(4096), Some(&big), &backlog),
            Decision::CpuCopyNow
        );
        // Busy ring: CPU.
        let busy = ChannelView {
            in_flight: 64,
            ..ch
        };
        assert_eq!(p.place(&seg(4096), Some(&big), &busy), Decision::CpuCopyNow);
        // Failing channel: CPU ...
        let failing = ChannelView {
            consecutive_errors: 5,
            ..ch
        };
        let mut p2 = adaptive_with(0.125, 150.0);
        for _ in 0..4 {
            assert_eq!(
                p2.place(&seg(4096), Some(&big), &failing),
                Decision::CpuCopyNow
            );
        }
        // ... except one probe every `probe_every` segments on an idle channel.
        assert_eq!(
            p2.place(&seg(4096), Some(&big), &failing),
            Decision::DmaEarlyCopy
        );
        assert_eq!(
            p2.place(&seg(4096), Some(&big), &failing),
            Decision::CpuCopyNow
        );
        // Small segments also get a rare probe so the DMA measurements stay fresh.
        let mut p3 = adaptive_with(0.125, 150.0);
        let picks: Vec<_> = (0..10)
            .map(|_| p3.place(&seg(100), Some(&big), &ch))
            .collect();
        assert_eq!(
            picks
                .iter()
                .filter(|d| **d == Decision::DmaEarlyCopy)
                .count(),
            2
        );
        // No probe while ops are in flight.
        let mut p4 = adaptive_with(0.125, 150.0);
        let inflight = ChannelView { in_flight: 1, ..ch };
        assert!((0..10).all(|_| p4.place(&seg(100), Some(&big), &inflight) == Decision::CpuCopyNow));
        // Queued data after arming follows the same rule.
        assert_eq!(p.place_queued(4096, &big, &ch), Decision::DmaEarlyCopy);
        assert_eq!(
            p.place_queued(4096, &reader(false, 1 << 20, 0, 1 << 20), &ch),
            Decision::CpuCopyNow
        );
        assert_eq!(
            p.place(&seg(4096), Some(&big), &ChannelView::NONE),
            Decision::CpuCopyNow
        );
    }
}
