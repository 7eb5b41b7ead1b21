//! The copy path of one poller: policy + engine + ownership bookkeeping + stats.
//!
//! A poller thread owns one [`Copier`]. It feeds it in-order segments from the TCP core
//! ([`Copier::on_segment`]), receives posted by applications ([`Copier::post_recv`]), and calls
//! [`Copier::poll`] in its loop. The copier reports [`Event`]s: frames it no longer needs (give
//! them back to the fill ring), wakeups, and finished receives (hand the buffer back to the
//! application). A `Stream::recv` on the application side talks to the poller through a bounded
//! queue carrying `(RecvRequest, buffer)` one way and `Event::RecvDone` the other way.
//!
//! Ownership rules (the point of this module):
//! - a frame is released only after every copy out of it completed;
//! - a receive is finished (its buffer handed back) only after every copy into it completed;
//! - a DMA op that fails, or is aborted after a timeout, is copied again by CPU from the frame,
//!   which is still held; the engine's contract guarantees it no longer writes after reporting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::engine::{CopyEngine, CopyOp, EngineCompletion};
use super::mem::{MemError, MemRef, Regions};
use super::policy::{
    ChannelView, Decision, Policy, PolicyConfig, ReaderView, RecvRequest, SegmentView, Wakeup,
};
use super::stats::CopyStats;

/// Opaque handle of a received frame (e.g. its UMEM address); given back in
/// [`Event::FrameReleased`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameId(pub u64);

/// A stream (connection) registered with [`Copier::open_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(pub u32);

/// An in-order segment's payload, still inside its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub frame: FrameId,
    /// Where the payload starts in frame memory.
    pub src: MemRef,
    pub len: usize,
    pub psh: bool,
}

/// What the copier tells the poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// No copy needs this frame any more: give it back.
    FrameReleased(FrameId),
    /// The waiting reader of `stream` was woken.
    Wakeup { stream: StreamId, reason: Wakeup },
    /// A receive finished: `len` bytes are in the buffer at `dst` and every copy into it has
    /// completed. `user` is the value given to [`Copier::post_recv`].
    RecvDone {
        stream: StreamId,
        user: u64,
        dst: MemRef,
        len: usize,
    },
}

/// Errors of the copier's API.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CopyError {
    #[error("unknown stream {0:?}; open it with Copier::open_stream")]
    UnknownStream(StreamId),
    #[error("stream {0:?} is closed")]
    Closed(StreamId),
    #[error("stream {0:?} already has a receive posted; wait for its RecvDone")]
    AlreadyPosted(StreamId),
    #[error("a registered receive must target a DMA-capable region (register it with BufferPool or Regions::add(.., true)), or set registered = false")]
    NotRegistered,
    #[error(transparent)]
    Mem(#[from] MemError),
}

/// Time source: the only clock the copier reads (for measurements and DMA timeouts).
pub trait Clock: Send {
    fn now_ns(&self) -> u64;
}

/// Monotonic wall clock.
#[derive(Debug, Clone)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// A clock tests move by hand.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Copier settings.
#[derive(Debug, Clone)]
pub struct CopierConfig {
    pub policy: PolicyConfig,
    /// A DMA op not completed this long after submission makes the copier abort the engine
    /// and redo the cut-short ops by CPU.
    pub dma_timeout_ns: u64,
    /// Time one CPU copy and one segment arrival in this many (reading the clock twice per
    /// 1448-byte copy cost about a tenth of the receive core); the sampled copy times are
    /// scaled up in `copy_ns`, so the stats stay unbiased. 1: time every one.
    pub time_every: u32,
    /// A receive that reached its rcvlowat target stays posted until [`Copier::flush`] (the end
    /// of the poller's batch) and takes the rest of the batch's data that fits, as one
    /// completion: fewer, larger receives (GRO's aggregation for the reader), and a reader that
    /// is still waiting when the batch's next segment arrives. A full buffer completes at once.
    pub batch_completions: bool,
}

impl CopierConfig {
    pub fn new(policy: PolicyConfig) -> Self {
        Self {
            policy,
            dma_timeout_ns: 10_000_000,
            time_every: 8,
            batch_completions: false,
        }
    }
}

#[derive(Debug)]
struct QSeg {
    frame: FrameId,
    src: MemRef,
    len: usize,
    /// Bytes of it already consumed.
    off: usize,
}

#[derive(Debug)]
struct Posted {
    req: RecvRequest,
    target: usize,
    dst: MemRef,
    user: u64,
    armed: bool,
    /// Bytes placed (copied by CPU or handed to DMA).
    copied: usize,
    /// DMA ops into this buffer not yet completed (including one being coalesced).
    ops: usize,
    /// No more bytes go in; finishes when `ops == 0`.
    done: bool,
    /// The rcvlowat target was reached; completes at the next flush
    /// (`CopierConfig::batch_completions`).
    lowat_met: bool,
}

impl Posted {
    fn view(&self) -> ReaderView {
        ReaderView {
            armed: self.armed,
            room: self.req.len - self.copied,
            copied: self.copied,
            target: self.target,
        }
    }
}

#[derive(Debug)]
struct StreamState {
    rcvbuf: usize,
    queue: VecDeque<QSeg>,
    queued: usize,
    /// Receive memory held: queued bytes plus bytes under DMA.
    rmem: usize,
    posted: Option<Posted>,
    closed: bool,
    stats: CopyStats,
}

#[derive(Debug)]
struct OpInfo {
    stream: StreamId,
    frames: Vec<FrameId>,
    src: MemRef,
    dst: MemRef,
    len: usize,
    submit_ns: u64,
    /// Other ops were in flight when this one was submitted (it queued behind them).
    behind: bool,
}

/// The copy path of one poller. See the module docs.
pub struct Copier<E: CopyEngine> {
    cfg: CopierConfig,
    engine: E,
    mem: Regions,
    policy: Policy,
    clock: Box<dyn Clock>,
    streams: Vec<StreamState>,
    frames: HashMap<FrameId, u32>,
    /// Ops submitted and not yet completed, in submission order (cookie, op). Engines report
    /// completions in that order (the I/OAT ring does), so the match is the front entry; a
    /// completion out of order is found by a scan.
    inflight: VecDeque<(u64, OpInfo)>,
    pending: Option<OpInfo>,
    unflushed: usize,
    backlog: usize,
    next_cookie: u64,
    consecutive_errors: u32,
    last_arrival_ns: Option<u64>,
    /// Segments and bytes since the last timed arrival; CPU copies since the last timed one.
    arrivals: (u32, usize),
    untimed_copies: u32,
    last_completion_ns: u64,
    stats: CopyStats,
    events: Vec<Event>,
    scratch: Vec<EngineCompletion>,
    /// Streams whose receive completes at the next flush.
    lowat_pending: Vec<StreamId>,
}

impl<E: CopyEngine> Copier<E> {
    pub fn new(cfg: CopierConfig, engine: E, mem: Regions, clock: Box<dyn Clock>) -> Self {
        Self {
            policy: Policy::new(cfg.policy.clone()),
            cfg,
            engine,
            mem,
            clock,
            streams: Vec::new(),
            frames: HashMap::new(),
            inflight: VecDeque::new(),
            pending: None,
            unflushed: 0,
            backlog: 0,
            next_cookie: 1,
            consecutive_errors: 0,
            last_arrival_ns: None,
            arrivals: (0, 0),
            untimed_copies: 0,
            last_completion_ns: 0,
            stats: CopyStats::default(),
            events: Vec::new(),
            scratch: Vec::new(),
            lowat_pending: Vec::new(),
        }
    }

    pub fn regions(&self) -> &Regions {
        &self.mem
    }
    pub fn regions_mut(&mut self) -> &mut Regions {
        &mut self.mem
    }
    pub fn engine(&self) -> &E {
        &self.engine
    }
    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }
    /// Totals over all streams.
    pub fn stats(&self) -> &CopyStats {
        &self.stats
    }
    pub fn stream_stats(&self, s: StreamId) -> Option<&CopyStats> {
        self.streams.get(s.0 as usize).map(|st| &st.stats)
    }
    /// Bytes queued (not yet copied) on a stream.
    pub fn queued(&self, s: StreamId) -> usize {
        self.streams.get(s.0 as usize).map_or(0, |st| st.queued)
    }
    /// Frames currently held.
    pub fn frames_held(&self) -> usize {
        self.frames.len()
    }
    /// DMA ops not yet completed.
    pub fn ops_in_flight(&self) -> usize {
        self.inflight.len() + usize::from(self.pending.is_some())
    }
    /// Receive-core time spent copying, measured by the shell around work it did itself.
    pub fn add_copy_ns(&mut self, s: StreamId, ns: u64) {
        self.stats.copy_ns += ns;
        if let Some(st) = self.streams.get_mut(s.0 as usize) {
            st.stats.copy_ns += ns;
        }
    }

    /// Registers a stream with its receive buffer size (SO_RCVBUF).
    pub fn open_stream(&mut self, rcvbuf: usize) -> StreamId {
        self.streams.push(StreamState {
            rcvbuf,
            queue: VecDeque::new(),
            queued: 0,
            rmem: 0,
            posted: None,
            closed: false,
            stats: CopyStats::default(),
        });
        StreamId((self.streams.len() - 1) as u32)
    }

    /// Closes a stream: drops its queued data (frames are released once no copy needs them)
    /// and finishes a posted receive with the bytes already placed.
    pub fn close_stream(&mut self, s: StreamId) -> Result<(), CopyError> {
        let st = self.stream_mut(s)?;
        st.closed = true;
        let dropped: Vec<QSeg> = st.queue.drain(..).collect();
        st.rmem -= st.queued;
        st.queued = 0;
        if let Some(p) = st.posted.as_mut() {
            p.done = true;
        }
        for q in dropped {
            self.unhold(q.frame);
        }
        self.maybe_finish(s);
        Ok(())
    }

    /// Moves events out (frames released, wakeups, finished receives).
    pub fn drain_events(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.events);
    }

    fn stream_mut(&mut self, s: StreamId) -> Result<&mut StreamState, CopyError> {
        self.streams
            .get_mut(s.0 as usize)
            .ok_or(CopyError::UnknownStream(s))
    }

    fn chan(&self) -> ChannelView {
        if !self.engine.is_dma() {
            return ChannelView::NONE;
        }
        ChannelView {
            present: true,
            healthy: self.engine.healthy(),
            in_flight: self.engine.in_flight() + usize::from(self.pending.is_some()),
            capacity: self.engine.capacity(),
            backlog_bytes: self.backlog + self.pending.as_ref().map_or(0, |p| p.len),
            consecutive_errors: self.consecutive_errors,
        }
    }

    fn count(&mut self, s: StreamId, f: impl Fn(&mut CopyStats)) {
        f(&mut self.stats);
        f(&mut self.streams[s.0 as usize].stats);
    }

    fn hold(&mut self, f: FrameId) {
        *self.frames.entry(f).or_insert(0) += 1;
    }

    fn unhold(&mut self, f: FrameId) {
        if let Some(n) = self.frames.get_mut(&f) {
            *n -= 1;
            if *n == 0 {
                self.frames.remove(&f);
                self.events.push(Event::FrameReleased(f));
            }
        }
    }

    /// Posts a receive into `len` bytes at `dst` (a registered buffer slot, or a CPU-only
    /// region when `req.registered` is false). Finishes with [`Event::RecvDone`].
    pub fn post_recv(
        &mut self,
        s: StreamId,
        req: RecvRequest,
        dst: MemRef,
        user: u64,
    ) -> Result<(), CopyError> {
        self.mem.resolve(dst, req.len)?;
        if req.registered && !self.mem.dma_ok(dst.region) {
            return Err(CopyError::NotRegistered);
        }
        let chan = self.chan();
        let st = self.stream_mut(s)?;
        if st.posted.is_some() {
            return Err(CopyError::AlreadyPosted(s));
        }
        let closed = st.closed;
        let available = st.queued;
        let arm = self.policy.arm(&req, available, &chan);
        self.count(s, |c| c.count_arm(arm));
        let target = req.target();
        self.streams[s.0 as usize].posted = Some(Posted {
            req,
            target,
            dst,
            user,
            armed: arm.is_ok(),
            copied: 0,
            ops: 0,
            done: closed,
            lowat_met: false,
        });
        if req.peek {
            self.try_peek(s)?;
        } else if !closed {
            self.drain_queue(s)?;
            let st = &mut self.streams[s.0 as usize];
            let p = st.posted.as_mut().expect("just posted");
            if p.copied >= p.target || p.copied == p.req.len || p.req.nonblocking {
                p.done = true;
                self.count(s, |c| c.recvs_immediate += 1);
            }
        }
        self.maybe_finish(s);
        Ok(())
    }

    /// Feeds one in-order segment of stream `s`. The copier holds the frame from now on and
    /// reports [`Event::FrameReleased`] once no copy needs it.
    pub fn on_segment(&mut self, s: StreamId, seg: Segment) -> Result<(), CopyError> {
        self.mem.resolve(seg.src, seg.len)?;
        let st = self.stream_mut(s)?;
        if st.closed {
            return Err(CopyError::Closed(s));
        }
        self.note_arrival(seg.len);
        if seg.len == 0 {
            return Ok(());
        }
        self.hold(seg.frame);
        let chan = self.chan();
        let st = &mut self.streams[s.0 as usize];
        st.rmem += seg.len;
        let in_order = st.queue.is_empty();
        let peeking = st.posted.as_ref().is_some_and(|p| p.req.peek);
        let reader = st
            .posted
            .as_ref()
            .filter(|p| !p.done && !p.req.peek)
            .map(Posted::view);
        let view = SegmentView {
            len: seg.len,
            psh: seg.psh,
            in_order,
            csum_ok: true,
        };
        let decision = self.policy.place(&view, reader.as_ref(), &chan);
        self.count(s, |c| c.count_decision(decision));
        match decision {
            Decision::Queue => {
                let st = &mut self.streams[s.0 as usize];
                st.queue.push_back(QSeg {
                    frame: seg.frame,
                    src: seg.src,
                    len: seg.len,
                    off: 0,
                });
                st.queued += seg.len;
            }
            Decision::CpuCopyNow | Decision::DmaEarlyCopy => {
                self.place(
                    s,
                    seg.frame,
                    seg.src,
                    seg.len,
                    decision == Decision::DmaEarlyCopy,
                )?;
                self.unhold(seg.frame);
            }
        }
        if peeking {
            return self.try_peek(s);
        }
        if reader.is_some() {
            // A waiting reader takes queued data as soon as any of it fits.
            if !self.streams[s.0 as usize].queue.is_empty() {
                self.drain_queue(s)?;
            }
            let placed_psh = seg.psh && decision != Decision::Queue;
            self.check_wakeup(s, placed_psh);
        }
        Ok(())
    }

    /// One segment of `len` bytes arrived (the cost model's arrival rate, timed one in
    /// `time_every`).
    fn note_arrival(&mut self, len: usize) {
        self.arrivals.0 += 1;
        self.arrivals.1 += len;
        if self.arrivals.0 >= self.cfg.time_every.max(1) || self.last_arrival_ns.is_none() {
            let now = self.clock.now_ns();
            if let Some(prev) = self.last_arrival_ns {
                self.policy
                    .model_mut()
                    .record_arrival(self.arrivals.1, now.saturating_sub(prev));
            }
            self.last_arrival_ns = Some(now);
            self.arrivals = (0, 0);
        }
    }

    /// Direct delivery (`tcp::Endpoint::on_frame_into`): copies an in-order `payload` of `s`
    /// straight from the received frame into the posted receive, when a reader waits (not
    /// peeking), nothing of `s` is queued and the policy places such a segment by CPU now
    /// (what [`Copier::on_segment`] would do with it); with `verify` the copy sums as it goes.
    /// Returns the payload's sum, or `None` (then nothing changed: the segment takes the usual
    /// path). The bytes count only after [`Copier::direct_filled`] (the endpoint verified them).
    pub fn direct_copy_in(
        &mut self,
        s: StreamId,
        payload: &[u8],
        psh: bool,
        verify: bool,
    ) -> Option<crate::wire::Checksum> {
        let chan = self.chan();
        let st = self.streams.get(s.0 as usize)?;
        if st.closed || !st.queue.is_empty() {
            return None;
        }
        let p = st.posted.as_ref().filter(|p| !p.done && !p.req.peek)?;
        let view = SegmentView {
            len: payload.len(),
            psh,
            in_order: true,
            csum_ok: true,
        };
        let dst = p.dst.plus(p.copied);
        if self.policy.place(&view, Some(&p.view()), &chan) != Decision::CpuCopyNow {
            return None;
        }
        self.mem.write_maybe_sum(dst, payload, verify).ok()
    }

    /// The bytes of the last [`Copier::direct_copy_in`] of `s` are the stream's: counted as a
    /// CPU copy (not timed: the copy was fused with the checksum), and the reader is woken as
    /// after any placement.
    pub fn direct_filled(&mut self, s: StreamId, len: usize, psh: bool) {
        self.note_arrival(len);
        let Some(p) = self
            .streams
            .get_mut(s.0 as usize)
            .and_then(|st| st.posted.as_mut())
        else {
            return;
        };
        p.copied += len;
        self.count(s, |c| {
            c.count_decision(Decision::CpuCopyNow);
            c.bytes_cpu += len as u64;
            c.direct_bytes += len as u64;
        });
        self.check_wakeup(s, psh);
    }

    /// Places `len` bytes at `src` into the posted buffer of `s` (by CPU or DMA).
    fn place(
        &mut self,
        s: StreamId,
        frame: FrameId,
        src: MemRef,
        len: usize,
        dma: bool,
    ) -> Result<(), CopyError> {
        let st = &mut self.streams[s.0 as usize];
        let p = st.posted.as_mut().expect("placing needs a posted receive");
        let dst = p.dst.plus(p.copied);
        p.copied += len;
        if dma {
            self.dma_piece(s, frame, src, dst, len);
        } else {
            self.cpu_copy(s, src, dst, len)?;
            self.streams[s.0 as usize].rmem -= len;
        }
        Ok(())
    }

    fn cpu_copy(
        &mut self,
        s: StreamId,
        src: MemRef,
        dst: MemRef,
        len: usize,
    ) -> Result<(), CopyError> {
        let every = self.cfg.time_every.max(1);
        self.untimed_copies += 1;
        if self.untimed_copies < every {
            self.mem.copy(src, dst, len)?;
            self.count(s, |c| c.bytes_cpu += len as u64);
            return Ok(());
        }
        self.untimed_copies = 0;
        let t0 = self.clock.now_ns();
        self.mem.copy(src, dst, len)?;
        let dt = self.clock.now_ns().saturating_sub(t0);
        self.policy.model_mut().record_cpu_copy(len, dt);
        let scaled = dt * u64::from(every);
        self.count(s, |c| {
            c.bytes_cpu += len as u64;
            c.copy_ns += scaled;
        });
        Ok(())
    }

    /// The reader copies queued data into its buffer, as much as fits.
    fn drain_queue(&mut self, s: StreamId) -> Result<(), CopyError> {
        loop {
            let chan = self.chan();
            let st = &mut self.streams[s.0 as usize];
            let Some(p) = st.posted.as_ref() else {
                return Ok(());
            };
            let room = p.req.len - p.copied;
            let Some(q) = st.queue.front_mut() else {
                return Ok(());
            };
            if room == 0 {
                return Ok(());
            }
            let n = room.min(q.len - q.off);
            let (frame, src) = (q.frame, q.src.plus(q.off));
            q.off += n;
            let consumed = q.off == q.len;
            if consumed {
                st.queue.pop_front();
            }
            st.queued -= n;
            let view = p.view();
            let d = self.policy.place_queued(n, &view, &chan);
            self.count(s, |c| c.count_decision(d));
            self.place(s, frame, src, n, d == Decision::DmaEarlyCopy)?;
            if consumed {
                self.unhold(frame);
            }
        }
    }

    /// MSG_PEEK: copy queued bytes without consuming them, once enough are queued.
    fn try_peek(&mut self, s: StreamId) -> Result<(), CopyError> {
        let st = &self.streams[s.0 as usize];
        let Some(p) = st.posted.as_ref() else {
            return Ok(());
        };
        let ready =
            st.queued >= p.target || st.queued >= p.req.len || p.req.nonblocking || st.closed;
        if !ready || p.done {
            return Ok(());
        }
        let mut at = p.dst;
        let mut left = p.req.len.min(st.queued);
        let total = left;
        let pieces: Vec<(MemRef, usize)> = st
            .queue
            .iter()
            .map_while(|q| {
                if left == 0 {
                    return None;
                }
                let n = left.min(q.len - q.off);
                left -= n;
                Some((q.src.plus(q.off), n))
            })
            .collect();
        for (src, n) in pieces {
            self.cpu_copy(s, src, at, n)?;
            at = at.plus(n);
        }
        let p = self.streams[s.0 as usize].posted.as_mut().expect("checked");
        p.copied = total;
        p.done = true;
        self.count(s, |c| c.recvs_immediate += 1);
        self.maybe_finish(s);
        Ok(())
    }

    fn check_wakeup(&mut self, s: StreamId, psh_placed: bool) {
        let st = &self.streams[s.0 as usize];
        let Some(p) = st.posted.as_ref().filter(|p| !p.done) else {
            return;
        };
        let Some(reason) = self
            .policy
            .wakeup(&p.view(), psh_placed, st.rmem, st.rcvbuf)
        else {
            return;
        };
        if p.lowat_met && reason != Wakeup::Full {
            // Already reported; it completes at the flush.
            return;
        }
        self.count(s, |c| c.count_wakeup(reason));
        self.events.push(Event::Wakeup { stream: s, reason });
        let p = self.streams[s.0 as usize].posted.as_mut().expect("checked");
        if reason == Wakeup::Lowat && self.cfg.batch_completions {
            // It keeps taking the batch's data and completes at the flush.
            p.lowat_met = true;
            self.lowat_pending.push(s);
        } else if reason.completes() {
            p.done = true;
            self.maybe_finish(s);
        }
        // PSH / pressure below target: the reader runs, finds nothing more to take (queued
        // data was already drained into its buffer) and waits again.
    }

    fn maybe_finish(&mut self, s: StreamId) {
        let st = &mut self.streams[s.0 as usize];
        if !st.posted.as_ref().is_some_and(|p| p.done && p.ops == 0) {
            return;
        }
        let p = st.posted.take().expect("checked");
        self.count(s, |c| c.recvs += 1);
        self.events.push(Event::RecvDone {
            stream: s,
            user: p.user,
            dst: p.dst,
            len: p.copied,
        });
    }

    fn dma_piece(&mut self, s: StreamId, frame: FrameId, src: MemRef, dst: MemRef, len: usize) {
        let max = self.engine.max_len();
        if let Some(p) = self.pending.as_mut() {
            if p.stream == s
                && p.src.plus(p.len) == src
                && p.dst.plus(p.len) == dst
                && p.len + len <= max
            {
                p.len += len;
                p.frames.push(frame);
                self.hold(frame);
                return;
            }
        }
        self.submit_pending();
        // Split what one descriptor cannot carry.
        let mut off = 0;
        while off < len {
            let n = (len - off).min(max);
            self.submit_pending();
            self.hold(frame);
            self.streams[s.0 as usize]
                .posted
                .as_mut()
                .expect("posted")
                .ops += 1;
            let now = self.clock.now_ns();
            self.pending = Some(OpInfo {
                stream: s,
                frames: vec![frame],
                src: src.plus(off),
                dst: dst.plus(off),
                len: n,
                submit_ns: now,
                behind: false,
            });
            off += n;
        }
        if self.policy.max_batch() == 1 {
            self.submit_pending();
            self.doorbell();
        }
    }

    /// Hands the op being coalesced to the engine (or copies it by CPU if the engine refuses).
    fn submit_pending(&mut self) {
        let Some(mut op) = self.pending.take() else {
            return;
        };
        let t0 = self.clock.now_ns();
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        op.behind = self.engine.in_flight() > 0;
        op.submit_ns = t0;
        let res = self.engine.submit(
            &self.mem,
            CopyOp {
                src: op.src,
                dst: op.dst,
                len: op.len,
                cookie,
            },
        );
        let dt = self.clock.now_ns().saturating_sub(t0);
        match res {
            Ok(()) => {
                self.count(op.stream, |c| c.copy_ns += dt);
                self.policy.model_mut().record_dma_cpu(1, dt);
                self.backlog += op.len;
                self.inflight.push_back((cookie, op));
                self.unflushed += 1;
                if self.unflushed >= self.policy.max_batch() {
                    self.doorbell();
                }
            }
            Err(_) => {
                // Busy ring or an engine that gave up: the bytes go by CPU, nothing is lost.
                self.count(op.stream, |c| c.busy_fallbacks += 1);
                self.redo_by_cpu(&op, false);
                self.finish_op(op);
            }
        }
    }

    fn doorbell(&mut self) {
        if self.unflushed > 0 {
            let t0 = self.clock.now_ns();
            self.engine.flush(&self.mem);
            let dt = self.clock.now_ns().saturating_sub(t0);
            self.stats.doorbells += 1;
            self.stats.copy_ns += dt;
            self.unflushed = 0;
        }
    }

    /// Submits coalesced ops and rings the doorbell. Call after each batch of segments.
    pub fn flush(&mut self) {
        self.submit_pending();
        self.doorbell();
        let mut pending = std::mem::take(&mut self.lowat_pending);
        for s in pending.drain(..) {
            let Some(p) = self
                .streams
                .get_mut(s.0 as usize)
                .and_then(|st| st.posted.as_mut())
                .filter(|p| p.lowat_met && !p.done)
            else {
                continue;
            };
            p.done = true;
            self.maybe_finish(s);
        }
        self.lowat_pending = pending;
    }

    fn redo_by_cpu(&mut self, op: &OpInfo, after_dma: bool) {
        // The frames are still held, so the source bytes are intact.
        let r = self.mem.copy(op.src, op.dst, op.len);
        debug_assert!(r.is_ok(), "ranges were checked at submit: {r:?}");
        let len = op.len as u64;
        self.count(op.stream, |c| {
            c.bytes_cpu += len;
            if after_dma {
                c.bytes_redo += len;
                c.cpu_redos += 1;
            }
        });
    }

    /// Releases what an op held and finishes its receive if it was the last one.
    fn finish_op(&mut self, op: OpInfo) {
        for f in &op.frames {
            self.unhold(*f);
        }
        let st = &mut self.streams[op.stream.0 as usize];
        st.rmem -= op.len;
        if let Some(p) = st.posted.as_mut() {
            p.ops -= 1;
        }
        self.maybe_finish(op.stream);
    }

    /// Drives the engine: submits coalesced ops, reaps completions, redoes failed ops by CPU,
    /// aborts the engine when an op is overdue. Returns the number of ops completed.
    pub fn poll(&mut self) -> usize {
        self.flush();
        if self.inflight.is_empty() {
            return 0;
        }
        let t0 = self.clock.now_ns();
        let mut done = std::mem::take(&mut self.scratch);
        self.engine.poll(&self.mem, &mut done);
        let now = self.clock.now_ns();
        let n = done.len();
        for c in done.drain(..) {
            let at = match self.inflight.front() {
                Some((k, _)) if *k == c.cookie => Some(0),
                _ => self.inflight.iter().position(|(k, _)| *k == c.cookie),
            };
            let Some((_, op)) = at.and_then(|i| self.inflight.remove(i)) else {
                continue;
            };
            self.backlog -= op.len;
            match c.status {
                Ok(()) => {
                    self.consecutive_errors = 0;
                    let busy = op
                        .behind
                        .then(|| now.saturating_sub(self.last_completion_ns.max(op.submit_ns)));
                    self.policy.model_mut().record_dma_completion(
                        op.len,
                        now.saturating_sub(op.submit_ns),
                        busy,
                    );
                    let len = op.len as u64;
                    self.count(op.stream, |c| {
                        c.bytes_dma += len;
                        c.dma_ops += 1;
                    });
                }
                Err(_) => {
                    self.consecutive_errors += 1;
                    self.count(op.stream, |c| c.dma_errors += 1);
                    self.redo_by_cpu(&op, true);
                }
            }
            self.finish_op(op);
        }
        self.scratch = done;
        if n > 0 {
            self.last_completion_ns = now;
            let dt = self.clock.now_ns().saturating_sub(t0);
            self.policy.model_mut().record_dma_cpu(n, dt);
            self.stats.copy_ns += dt;
        }
        // Overdue op: stop the engine; its ops come back as aborted on the next poll and are
        // redone by CPU then (never before: until reported, the engine may still write).
        if let Some((_, oldest)) = self.inflight.front() {
            if now.saturating_sub(oldest.submit_ns) > self.cfg.dma_timeout_ns {
                self.engine.abort(&self.mem);
                self.stats.dma_timeouts += 1;
            }
        }
        n
    }

    /// True when no DMA op is outstanding.
    pub fn is_idle(&self) -> bool {
        self.ops_in_flight() == 0
    }
}
