//! The per-queue receive core: one sans-IO state machine from RX ring to fill ring.
//!
//! [`RxCore`] is everything one poller thread decides, with no I/O: it owns the TCP
//! [`Endpoint`], the [`Copier`] (policy + copy engine + ownership bookkeeping) and the table of
//! streams. Like quinn-proto's `Connection`, it is fed inputs and drained of outputs by a thin
//! shell (the poller thread in [`crate::service`], or a test harness with an in-memory UMEM):
//!
//! | input | output |
//! | --- | --- |
//! | [`RxCore::handle_rx`]: a received packet (its UMEM descriptors) and `now` | [`RxCore::poll_fill`]: UMEM frames to give back to the fill ring |
//! | [`RxCore::handle_app`]: an application request (post a receive, close, set rcvbuf) | [`RxCore::poll_app`]: accepted streams, finished receives (with their buffers) |
//! | [`RxCore::advance`]: end of a batch, or an idle round (timers) | [`RxCore::poll_transmit`]: frames to send (ACK, SYN-ACK, FIN, RST) |
//! | | [`RxCore::poll_timeout`]: when to call `advance` at the latest |
//!
//! The frame handle is one type from the RX ring to the fill ring: [`UmemAddr`], the address
//! of the packet's first byte in the UMEM (what AF_XDP's rings carry). The endpoint holds
//! frames by it; the copier reads payload from `MemRef(umem, addr + offset)`; a frame goes back
//! to the fill ring only after the endpoint released it, which happens only after every copy
//! out of it completed (the copier's `FrameReleased`). An application buffer comes back in
//! [`AppEvent::RecvDone`] only after every copy into it completed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use std::sync::Arc;

use crate::copy::{
    region_bytes, Copier, CopyEngine, CopyError, CopyStats, Event as CopyEvent, FrameId as HoldId,
    MemRef, RecvRequest, RegionId, RegionMemory, Segment, StreamId,
};
use crate::tcp::{
    ConnError, ConnId, DirectReader, Endpoint, EndpointEvent, FrameDisposition, Instant, RxSegment,
};
use crate::wire::{Checksum, TxFrame};

/// A UMEM address: the frame handle from the RX ring, through the TCP endpoint and the copy
/// engine, to the fill ring. For a multi-buffer (XDP_USE_SG) packet, the address of its first
/// descriptor stands for the whole packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UmemAddr(pub u64);

/// One received descriptor: `len` bytes at `addr` in the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxDesc {
    pub addr: UmemAddr,
    pub len: u32,
}

/// Settings of one core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The port the endpoint listens on.
    pub port: u16,
    /// SO_RCVBUF of each stream (the copier's pressure threshold; the endpoint has its own).
    pub rcvbuf: usize,
    /// The UMEM's region in the copier's [`crate::copy::Regions`].
    pub umem: RegionId,
    /// Size of one UMEM chunk: what one descriptor costs against rcvbuf (its truesize).
    pub chunk_size: u32,
    /// Direct delivery: an in-order segment a waiting receive takes by CPU copy is copied
    /// from the frame straight into its buffer while its checksum is verified in the same
    /// pass (`tcp::Endpoint::on_frame_into`, `Copier::direct_copy_in`); the frame goes back to
    /// the fill ring at once (a multi-buffer frame is delivered from the core's linear copy of
    /// it). It pays with
    /// `CopierConfig::batch_completions`, which keeps a receive waiting through the batch.
    pub direct_delivery: bool,
}

/// A request from an application thread.
#[derive(Debug)]
pub enum AppRequest<B> {
    /// Post a receive into `req.len` bytes at `dst`; `buf` (the buffer's owner token) comes
    /// back in [`AppEvent::RecvDone`].
    Recv {
        sid: u32,
        req: RecvRequest,
        dst: MemRef,
        buf: B,
    },
    SetRcvbuf {
        sid: u32,
        bytes: usize,
    },
    Close {
        sid: u32,
    },
    /// Close with RST: the application could not keep the data (its sink failed), so the
    /// sender must see an error, never a clean close.
    Abort {
        sid: u32,
    },
    /// Readiness, like a one-shot `EPOLLIN`: [`AppEvent::Ready`] once the stream has bytes to
    /// read, or its end (FIN, reset, timeout) to report; at once if it has them now. Lets one
    /// application thread serve many streams without a buffer posted on each idle one.
    Watch {
        sid: u32,
    },
}

/// How a receive ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvStatus {
    /// `len > 0` bytes are in the buffer.
    Data,
    /// Nonblocking receive and nothing was there.
    WouldBlock,
    /// The peer closed and every byte before its FIN was delivered.
    Eof,
    Reset,
    TimedOut,
    /// The service is stopping.
    Aborted,
    /// The request itself was refused (unknown stream, bad buffer, receive already posted).
    Refused(CopyError),
}

/// What the core tells the application side.
#[derive(Debug)]
pub enum AppEvent<B> {
    /// A connection was established and accepted: stream `sid`.
    Accepted {
        sid: u32,
        peer: SocketAddr,
        local: SocketAddr,
    },
    /// A receive finished; every copy into the buffer has completed. `stats` is set when the
    /// stream ended (its final copy counters).
    RecvDone {
        sid: u32,
        len: usize,
        status: RecvStatus,
        buf: B,
        stats: Option<Box<CopyStats>>,
    },
    /// Stream `sid`, watched with [`AppRequest::Watch`], is readable: a receive now returns
    /// data or its end without waiting. One event per watch.
    Ready { sid: u32 },
}

/// Counters of the core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub packets: u64,
    pub multi_packets: u64,
    /// Packets given back at once (not kept by the endpoint).
    pub freed_at_once: u64,
    /// Packets the endpoint kept and released later.
    pub released_later: u64,
    /// Segments whose bytes were not inside the UMEM (never produced by the endpoint).
    pub bad_segments: u64,
}

struct StreamCtx<B> {
    conn: ConnId,
    /// Owner token of the posted receive and whether it was nonblocking.
    posted: Option<(B, bool)>,
    /// The peer's FIN was seen (every byte before it is in the copier once fed).
    fin: bool,
    err: Option<ConnError>,
    /// `Copier::close_stream` was called: later receives end at once.
    closed: bool,
    /// The application closed the stream while a receive was posted.
    app_closed: bool,
    /// A [`AppRequest::Watch`] waits for the stream to become readable.
    watched: bool,
}

/// The waiting receives of a core's streams, as the endpoint's [`DirectReader`].
struct Direct<'a, E: CopyEngine> {
    copier: &'a mut Copier<E>,
    by_conn: &'a HashMap<ConnId, u32>,
}

impl<E: CopyEngine> DirectReader for Direct<'_, E> {
    fn copy_in(
        &mut self,
        conn: ConnId,
        payload: &[u8],
        psh: bool,
        verify: bool,
    ) -> Option<Checksum> {
        let sid = *self.by_conn.get(&conn)?;
        self.copier
            .direct_copy_in(StreamId(sid), payload, psh, verify)
    }

    fn filled(&mut self, conn: ConnId, len: usize, psh: bool) {
        if let Some(&sid) = self.by_conn.get(&conn) {
            self.copier.direct_filled(StreamId(sid), len, psh);
        }
    }
}

/// A segment handed to the copier in one or more pieces (one per descriptor it spans).
struct SegEntry {
    seg: RxSegment,
    pieces: u32,
}

/// The per-queue receive core. See the module documentation.
pub struct RxCore<E: CopyEngine, B> {
    cfg: CoreConfig,
    ep: Endpoint,
    copier: Copier<E>,
    /// The UMEM's memory, held here too so that a received frame can be read while the
    /// copier copies out of it (direct delivery).
    umem: Option<Arc<dyn RegionMemory>>,
    streams: HashMap<u32, StreamCtx<B>>,
    by_conn: HashMap<ConnId, u32>,
    /// Segments out with the copier, by hold token (slot index << 8 | piece).
    segs: Vec<Option<SegEntry>>,
    free_segs: Vec<u32>,
    /// Descriptors of the multi-buffer packets the endpoint holds.
    multi: HashMap<UmemAddr, Vec<RxDesc>>,
    scratch: Vec<u8>,
    pieces: Vec<(u64, u32)>,
    copy_events: Vec<CopyEvent>,
    fin_check: Vec<u32>,
    fill: Vec<UmemAddr>,
    app: VecDeque<AppEvent<B>>,
    stopping: bool,
    accepted: u64,
    stats: CoreStats,
}

impl<E: CopyEngine, B> RxCore<E, B> {
    /// A core over an endpoint (already listening on `cfg.port`) and a copier whose regions
    /// include the UMEM as `cfg.umem`.
    pub fn new(cfg: CoreConfig, ep: Endpoint, copier: Copier<E>) -> Self {
        let umem = copier.regions().memory(cfg.umem).ok();
        Self {
            cfg,
            ep,
            copier,
            umem,
            streams: HashMap::new(),
            by_conn: HashMap::new(),
            segs: Vec::new(),
            free_segs: Vec::new(),
            multi: HashMap::new(),
            scratch: Vec::new(),
            pieces: Vec::new(),
            copy_events: Vec::new(),
            fin_check: Vec::new(),
            fill: Vec::new(),
            app: VecDeque::new(),
            stopping: false,
            accepted: 0,
            stats: CoreStats::default(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }
    pub fn copier(&self) -> &Copier<E> {
        &self.copier
    }
    pub fn stats(&self) -> CoreStats {
        self.stats
    }
    /// Streams not yet closed by the application.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
    pub fn accepted(&self) -> u64 {
        self.accepted
    }
    /// The TCP view of stream `sid` (state, addresses, counters), while it is open.
    pub fn conn_info(&self, sid: u32) -> Option<crate::tcp::ConnInfo> {
        self.ep.info(self.streams.get(&sid)?.conn)
    }
    /// Registers more memory with the copier (e.g. an application's plain buffer).
    pub fn add_region(&mut self, mem: std::sync::Arc<dyn RegionMemory>, dma_ok: bool) -> RegionId {
        self.copier.regions_mut().add(mem, dma_ok)
    }
    /// UMEM frames still held (by the endpoint, the copier or a multi-buffer packet) and
    /// segments out with the copier: both zero once everything went back.
    pub fn held(&self) -> (usize, usize) {
        (
            self.copier.frames_held(),
            self.segs.iter().flatten().count(),
        )
    }
    /// No DMA op outstanding: the shell may sleep (timers permitting).
    pub fn is_idle(&self) -> bool {
        self.copier.is_idle()
    }

    // ----- inputs -----

    /// A packet from the RX ring: one descriptor, or several for a multi-buffer frame.
    pub fn handle_rx(&mut self, now: Instant, descs: &[RxDesc]) {
        let Some(&head) = descs.first() else {
            return;
        };
        self.stats.packets += 1;
        let n = descs.len() as u32;
        // Frames are read through the core's own handle on the UMEM, so that the copier can
        // be lent to the endpoint (direct delivery) while a frame is borrowed.
        let (region, mem) = (self.cfg.umem, self.umem.as_deref());
        let frame_bytes = |d: &RxDesc| {
            mem.and_then(|m| {
                region_bytes(m, MemRef::new(region, d.addr.0 as usize), d.len as usize).ok()
            })
        };
        let (bytes, truesize) = if n == 1 {
            (frame_bytes(&head), self.cfg.chunk_size)
        } else {
            self.stats.multi_packets += 1;
            self.scratch.clear();
            let mut ok = true;
            for d in descs {
                match frame_bytes(d) {
                    Some(b) => self.scratch.extend_from_slice(b),
                    None => ok = false,
                }
            }
            (
                ok.then_some(&self.scratch[..]),
                self.cfg.chunk_size.saturating_mul(n),
            )
        };
        let disp = match bytes {
            None => FrameDisposition::Free,
            Some(b) if self.cfg.direct_delivery => {
                let mut reader = Direct {
                    copier: &mut self.copier,
                    by_conn: &self.by_conn,
                };
                self.ep
                    .on_frame_into(now, head.addr.0, b, truesize, &mut reader)
            }
            Some(b) => self.ep.on_frame(now, head.addr.0, b, truesize),
        };
        match disp {
            FrameDisposition::Free => {
                self.stats.freed_at_once += 1;
                self.fill.extend(descs.iter().map(|d| d.addr));
            }
            FrameDisposition::Held => {
                if n > 1 {
                    self.multi.insert(head.addr, descs.to_vec());
                }
            }
        }
    }

    /// A request from the application side.
    pub fn handle_app(&mut self, now: Instant, r: AppRequest<B>) {
        match r {
            AppRequest::Recv { sid, req, dst, buf } => self.post(sid, req, dst, buf),
            AppRequest::SetRcvbuf { sid, bytes } => {
                if let Some(st) = self.streams.get(&sid) {
                    let b = bytes.min(u32::MAX as usize) as u32;
                    let _ = self.ep.set_rcvbuf(now, st.conn, b);
                }
            }
            AppRequest::Close { sid } => self.close(now, sid, false),
            AppRequest::Abort { sid } => self.close(now, sid, true),
            AppRequest::Watch { sid } => match self.streams.get_mut(&sid) {
                Some(st) => {
                    st.watched = true;
                    self.check_ready(sid);
                }
                // Closed already: readable (a receive reports the end).
                None => self.app.push_back(AppEvent::Ready { sid }),
            },
        }
    }

    /// Reports a watched stream that is readable: bytes queued with the copier, or its end.
    fn check_ready(&mut self, sid: u32) {
        let Some(st) = self.streams.get_mut(&sid) else {
            return;
        };
        if !st.watched || st.app_closed {
            return;
        }
        let ended = st.fin || st.err.is_some() || st.closed;
        if ended || self.copier.queued(StreamId(sid)) > 0 {
            st.watched = false;
            self.app.push_back(AppEvent::Ready { sid });
        }
    }

    /// The application closes stream `sid` (FIN, or RST when `abort`).
    fn close(&mut self, now: Instant, sid: u32, abort: bool) {
        let Some(st) = self.streams.get_mut(&sid) else {
            return;
        };
        st.app_closed = true;
        let conn = st.conn;
        let waiting = st.posted.is_some();
        self.by_conn.remove(&conn);
        let _ = self.copier.close_stream(StreamId(sid));
        let _ = if abort {
            self.ep.abort(conn)
        } else {
            self.ep.close(now, conn)
        };
        if !waiting {
            self.streams.remove(&sid);
        }
        // Otherwise the stream leaves the table with its receive's RecvDone, which the copier
        // reports only after every copy into the buffer completed.
        self.copy_events();
    }

    /// Runs everything due: timers, endpoint events (accept, data, FIN, errors, released
    /// frames), the copier (doorbell, completions) and the window updates the releases made
    /// due. Call after each RX batch (batch-level decisions happen here) and on idle rounds.
    pub fn advance(&mut self, now: Instant) {
        if self.ep.poll_timeout().is_some_and(|d| d <= now) {
            self.ep.handle_timeout(now);
        }
        self.endpoint_events();
        self.copier.flush();
        self.check_fins();
        self.copier.poll();
        self.copy_events();
        // Receives finished above may have emptied queues of finished streams.
        self.check_fins();
        self.copy_events();
        self.ep.flush(now);
        self.endpoint_events();
    }

    /// The service is stopping: receives finishing from now on without data report
    /// [`RecvStatus::Aborted`] (unless the stream saw its FIN).
    pub fn begin_shutdown(&mut self) {
        self.stopping = true;
    }

    /// Closes every stream in the copier (call once [`RxCore::is_idle`], or after the DMA
    /// timeout aborted what was in flight): posted receives finish, frames go back.
    pub fn close_all(&mut self, now: Instant) {
        self.stopping = true;
        let sids: Vec<u32> = self.streams.keys().copied().collect();
        for sid in sids {
            if let Some(st) = self.streams.get_mut(&sid) {
                st.closed = true;
            }
            let _ = self.copier.close_stream(StreamId(sid));
        }
        self.advance(now);
    }

    // ----- outputs -----

    /// The next frame to transmit.
    pub fn poll_transmit(&mut self) -> Option<TxFrame> {
        self.ep.pop_tx()
    }

    /// The next UMEM frame to give back to the fill ring.
    pub fn poll_fill(&mut self) -> Option<UmemAddr> {
        self.fill.pop()
    }

    /// The next event for the application side.
    pub fn poll_app(&mut self) -> Option<AppEvent<B>> {
        self.app.pop_front()
    }

    /// The latest time [`RxCore::advance`] must run next (TCP timers). DMA completions are
    /// polled by every `advance` while [`RxCore::is_idle`] is false.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ep.poll_timeout()
    }

    // ----- internals -----

    fn endpoint_events(&mut self) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                EndpointEvent::FrameReleased(f) => {
                    self.stats.released_later += 1;
                    let a = UmemAddr(f);
                    match self.multi.remove(&a) {
                        Some(descs) => self.fill.extend(descs.iter().map(|d| d.addr)),
                        None => self.fill.push(a),
                    }
                }
                EndpointEvent::Acceptable { port } => {
                    while let Some(c) = self.ep.accept(port) {
                        self.open_conn(c);
                    }
                }
                EndpointEvent::Readable(c) => {
                    if let Some(&sid) = self.by_conn.get(&c) {
                        self.feed(sid);
                        self.check_ready(sid);
                    }
                }
                EndpointEvent::Fin(c) => self.conn_ended(c, None),
                EndpointEvent::Reset(c) => self.conn_ended(c, Some(ConnError::Reset)),
                EndpointEvent::TimedOut(c) => self.conn_ended(c, Some(ConnError::TimedOut)),
            }
        }
    }

    /// FIN or an error: the stream ends once every byte before it is delivered.
    fn conn_ended(&mut self, c: ConnId, err: Option<ConnError>) {
        let Some(&sid) = self.by_conn.get(&c) else {
            return;
        };
        self.feed(sid);
        let Some(st) = self.streams.get_mut(&sid) else {
            return;
        };
        match err {
            None => st.fin = true,
            Some(e) => {
                st.err.get_or_insert(e);
            }
        }
        self.fin_check.push(sid);
        self.check_ready(sid);
    }

    fn open_conn(&mut self, c: ConnId) {
        let Some(info) = self.ep.info(c) else { return };
        let sid = self.copier.open_stream(self.cfg.rcvbuf).0;
        self.streams.insert(
            sid,
            StreamCtx {
                conn: c,
                posted: None,
                watched: false,
                fin: false,
                err: None,
                closed: false,
                app_closed: false,
            },
        );
        self.by_conn.insert(c, sid);
        self.accepted += 1;
        let a = info.addrs;
        self.app.push_back(AppEvent::Accepted {
            sid,
            peer: SocketAddr::new(a.ip.dst(), a.remote_port),
            local: SocketAddr::new(a.ip.src(), a.local_port),
        });
    }

    /// Moves every in-order segment of a stream from the endpoint into the copier.
    fn feed(&mut self, sid: u32) {
        let Some(st) = self.streams.get(&sid) else {
            return;
        };
        let conn = st.conn;
        while let Ok(Some(seg)) = self.ep.read(conn, usize::MAX) {
            self.pieces.clear();
            let head = UmemAddr(seg.frame);
            match self.multi.get(&head) {
                None => self.pieces.push((head.0 + u64::from(seg.offset), seg.len)),
                Some(descs) => {
                    let (mut skip, mut left) = (seg.offset, seg.len);
                    for d in descs {
                        if left == 0 {
                            break;
                        }
                        if skip >= d.len {
                            skip -= d.len;
                            continue;
                        }
                        let take = (d.len - skip).min(left);
                        self.pieces.push((d.addr.0 + u64::from(skip), take));
                        left -= take;
                        skip = 0;
                    }
                }
            }
            let total: u64 = self.pieces.iter().map(|p| u64::from(p.1)).sum();
            if total != u64::from(seg.len) || self.pieces.len() > 255 {
                // Not readable as UMEM bytes (never produced by the endpoint): drop it.
                self.stats.bad_segments += 1;
                tracing::error!(
                    port = self.cfg.port,
                    "segment bytes outside the UMEM; dropped"
                );
                let _ = self.ep.release(&seg);
                continue;
            }
            let idx = match self.free_segs.pop() {
                Some(i) => i,
                None => {
                    self.segs.push(None);
                    (self.segs.len() - 1) as u32
                }
            };
            let n = self.pieces.len();
            self.segs[idx as usize] = Some(SegEntry {
                seg,
                pieces: n as u32,
            });
            for k in 0..n {
                let (addr, len) = self.pieces[k];
                let piece = Segment {
                    frame: HoldId((u64::from(idx) << 8) | k as u64),
                    src: MemRef::new(self.cfg.umem, addr as usize),
                    len: len as usize,
                    psh: seg.psh && k + 1 == n,
                };
                if self.copier.on_segment(StreamId(sid), piece).is_err() {
                    // Not taken (stream closed, or bytes outside the UMEM): our reference goes.
                    self.unref(idx);
                }
            }
        }
    }

    fn unref(&mut self, idx: u32) {
        let Some(Some(e)) = self.segs.get_mut(idx as usize) else {
            return;
        };
        e.pieces -= 1;
        if e.pieces == 0 {
            let seg = e.seg;
            self.segs[idx as usize] = None;
            self.free_segs.push(idx);
            // A connection removed after close makes this fail: nothing to give back then.
            let _ = self.ep.release(&seg);
        }
    }

    fn post(&mut self, sid: u32, req: RecvRequest, dst: MemRef, buf: B) {
        let Some(st) = self.streams.get_mut(&sid) else {
            self.app.push_back(AppEvent::RecvDone {
                sid,
                len: 0,
                status: RecvStatus::Refused(CopyError::UnknownStream(StreamId(sid))),
                buf,
                stats: None,
            });
            return;
        };
        if st.posted.is_some() {
            self.app.push_back(AppEvent::RecvDone {
                sid,
                len: 0,
                status: RecvStatus::Refused(CopyError::AlreadyPosted(StreamId(sid))),
                buf,
                stats: None,
            });
            return;
        }
        st.posted = Some((buf, req.nonblocking));
        if let Err(e) = self.copier.post_recv(StreamId(sid), req, dst, 0) {
            let st = self.streams.get_mut(&sid).expect("checked");
            let (buf, _) = st.posted.take().expect("just set");
            self.app.push_back(AppEvent::RecvDone {
                sid,
                len: 0,
                status: RecvStatus::Refused(e),
                buf,
                stats: None,
            });
            return;
        }
        self.fin_check.push(sid);
        // A receive that finished at once (data was queued) is reported by the next advance.
        self.copy_events();
    }

    /// Streams that saw FIN or an error get closed in the copier once their queue is empty
    /// (every byte before the FIN delivered), so a waiting receive returns.
    fn check_fins(&mut self) {
        for sid in std::mem::take(&mut self.fin_check) {
            let Some(st) = self.streams.get_mut(&sid) else {
                continue;
            };
            if (st.fin || st.err.is_some()) && !st.closed && self.copier.queued(StreamId(sid)) == 0
            {
                st.closed = true;
                let _ = self.copier.close_stream(StreamId(sid));
            }
        }
    }

    fn copy_events(&mut self) {
        let mut events = std::mem::take(&mut self.copy_events);
        self.copier.drain_events(&mut events);
        for ev in events.drain(..) {
            match ev {
                CopyEvent::FrameReleased(HoldId(f)) => self.unref((f >> 8) as u32),
                CopyEvent::Wakeup { .. } => {}
                CopyEvent::RecvDone { stream, len, .. } => self.recv_done(stream.0, len),
            }
        }
        self.copy_events = events;
    }

    fn recv_done(&mut self, sid: u32, len: usize) {
        let Some(st) = self.streams.get_mut(&sid) else {
            return;
        };
        let Some((buf, nonblocking)) = st.posted.take() else {
            return;
        };
        let status = if st.app_closed {
            RecvStatus::Aborted
        } else if len > 0 {
            RecvStatus::Data
        } else if st.closed {
            match st.err {
                Some(ConnError::Reset) => RecvStatus::Reset,
                Some(ConnError::TimedOut) => RecvStatus::TimedOut,
                None if self.stopping && !st.fin => RecvStatus::Aborted,
                None => RecvStatus::Eof,
            }
        } else if nonblocking {
            RecvStatus::WouldBlock
        } else {
            RecvStatus::Eof
        };
        let stats = (len == 0 && st.closed)
            .then(|| {
                self.copier
                    .stream_stats(StreamId(sid))
                    .cloned()
                    .map(Box::new)
            })
            .flatten();
        if st.app_closed {
            self.streams.remove(&sid);
        }
        self.app.push_back(AppEvent::RecvDone {
            sid,
            len,
            status,
            buf,
            stats,
        });
    }
}
