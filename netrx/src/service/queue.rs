//! The poller side: binding, one thread per queue, and the per-queue app between the TCP
//! endpoint, the copier and the application's requests.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use parking_lot::Mutex;

use super::bufpool::{BufPool, PoolShared};
use super::engine::{new_model, AnyEngine};
use super::{
    EngineKind, Listener, QueueShared, QueueStats, Reply, Request, ServiceConfig, Status,
    StreamParts, StreamShared, Target, Waker,
};
use crate::copy::IoatEngine;
use crate::copy::{
    Copier, CopierConfig, CpuEngine, Event, FrameId, MemRef, MonotonicClock, NullConfig,
    NullEngine, PolicyConfig, RegionId, RegionMemory, Regions, Segment, StreamId,
};
use crate::tcp::{self, ConnError, ConnId, Endpoint, Instant, RxSegment};
use crate::xsk::tcp_rx::{FrameView, StreamApp, TcpQueue};
use crate::xsk::{QueueHandler, XdpService, XskSocket};

/// The UMEM as a copy region. Valid while the socket lives: the poller drops its handler
/// (copier, engine, mappings) before the socket.
struct UmemMem {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: raw memory reached only through raw pointers; the owner (the socket) outlives it.
unsafe impl Send for UmemMem {}
// SAFETY: as above.
unsafe impl Sync for UmemMem {}
// SAFETY: the UMEM mapping stays at the same address until the socket is dropped, which the
// poller does only after dropping the copier that holds this region.
unsafe impl RegionMemory for UmemMem {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// A plain application buffer as a region: its address is set for each receive posted into it
/// and used only until that receive's RecvDone (CPU copies only, never mapped for DMA).
struct PlainSlot {
    ptr: std::sync::atomic::AtomicPtr<u8>,
    len: std::sync::atomic::AtomicUsize,
}
// SAFETY: the region is resolved only while a receive into the current buffer is posted; the
// application thread that owns the buffer is blocked for exactly that time (see PlainPtr).
unsafe impl RegionMemory for PlainSlot {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.load(Ordering::Relaxed)
    }
    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

const UMEM_REGION: RegionId = RegionId(0);
const POOL_REGION: RegionId = RegionId(1);

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Opens the service and starts the pollers.
pub(super) fn bind(cfg: ServiceConfig) -> io::Result<Listener> {
    if cfg.rcvbuf < 4096 || cfg.rcvbuf > u32::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("rcvbuf {} out of range; use 4096..=4 GiB", cfg.rcvbuf),
        ));
    }
    let mut xcfg = crate::xsk::ServiceConfig::new(&cfg.iface, cfg.port);
    xcfg.queues = cfg.queues.clone();
    xcfg.attach = cfg.attach;
    xcfg.socket = cfg.socket.clone();
    let mut svc = XdpService::open(&xcfg).map_err(|e| other(e.to_string()))?;
    let mode = svc.mode();
    let mtu = svc.iface().mtu;
    let queue_ids = svc.queues().to_vec();
    let sockets = svc.take_sockets();
    let pool = BufPool::new(cfg.pool_buffers, cfg.pool_buffer_size);

    // One engine per queue.
    let nq = sockets.len();
    let mut model = None;
    let mut engines: Vec<AnyEngine> = Vec::with_capacity(nq);
    let mut regions: Vec<Regions> = Vec::with_capacity(nq);
    for s in &sockets {
        let mut r = Regions::new();
        let (ptr, len) = s.umem_range();
        let u = r.add(Arc::new(UmemMem { ptr, len }), true);
        let p = r.add(pool.inner.mem.clone(), true);
        debug_assert_eq!((u, p), (UMEM_REGION, POOL_REGION));
        regions.push(r);
    }
    match &cfg.engine {
        EngineKind::Cpu => engines.extend((0..nq).map(|_| AnyEngine::Cpu(CpuEngine::new()))),
        EngineKind::Null => {
            engines.extend((0..nq).map(|_| AnyEngine::Null(NullEngine::new(NullConfig::default()))))
        }
        EngineKind::Model { preset, timing } => {
            let m = new_model(*preset, *timing, nq as u8);
            let dev = ioat_driver::Device::open(m.clone(), m.mapper())
                .map_err(|e| other(format!("model device: {e}")))?;
            for (i, r) in regions.iter_mut().enumerate() {
                let ch = dev
                    .channel_with_context(i as u32, ioat_driver::ChannelConfig::default())
                    .map_err(|e| other(format!("model channel {i}: {e}")))?;
                // Maps the UMEM and the pool once (the poller drops the engine before its
                // socket, so the UMEM outlives the mapping).
                let e = IoatEngine::new(ch, dev.mapper(), r)
                    .map_err(|e| other(format!("mapping UMEM and pool for DMA: {e}")))?;
                engines.push(AnyEngine::Model(Box::new(e)));
            }
            model = Some(m);
        }
        EngineKind::Vfio { bdfs } => {
            if bdfs.len() < nq {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} queue(s) need {nq} I/OAT functions (one channel per poller), {} named; name more BDFs or use fewer queues",
                        nq,
                        bdfs.len()
                    ),
                ));
            }
            for (bdf, r) in bdfs.iter().zip(regions.iter_mut()) {
                engines.push(open_vfio(bdf, r)?);
            }
        }
    }

    let (accept_tx, accept_rx) = mpsc::sync_channel(cfg.accept_backlog.max(1));
    let origin = StdInstant::now();
    let mut queues = Vec::with_capacity(nq);
    let mut threads = Vec::with_capacity(nq);
    for ((sock, engine), mem) in sockets.into_iter().zip(engines).zip(regions) {
        let q = sock.queue();
        let shared = Arc::new(QueueShared {
            stop: false.into(),
            waker: Waker::new()?,
            stats: Mutex::new(QueueStats {
                queue: q,
                ..Default::default()
            }),
        });
        let mut pcfg = PolicyConfig::new(cfg.policy);
        pcfg.copybreak = cfg.copybreak;
        let mut ccfg = CopierConfig::new(pcfg);
        ccfg.dma_timeout_ns = cfg.dma_timeout.as_nanos() as u64;
        let copier = Copier::new(ccfg, engine, mem, Box::new(MonotonicClock::default()));
        let mut ep = Endpoint::new(tcp::Config {
            mtu: mtu.min(u16::MAX as u32) as u16,
            rcvbuf: cfg.rcvbuf as u32,
            frame_truesize: sock.config().frame_size,
            checksum: cfg.checksum,
            accept_backlog: cfg.accept_backlog.max(1),
            isn_secret: rand_secret(q),
            ..tcp::Config::default()
        });
        ep.listen(cfg.port)
            .map_err(|e| other(format!("listen: {e}")))?;
        let (req_tx, req_rx) = mpsc::sync_channel(1024);
        let app = ServiceApp {
            queue: q,
            port: cfg.port,
            rcvbuf: cfg.rcvbuf,
            rcvlowat: cfg.rcvlowat.max(1),
            low_latency: cfg.low_latency,
            copier,
            pool: pool.inner.clone(),
            q: shared.clone(),
            req_tx,
            req_rx,
            accept_tx: accept_tx.clone(),
            to_accept: VecDeque::new(),
            streams: HashMap::new(),
            by_conn: HashMap::new(),
            segs: Vec::new(),
            free_segs: Vec::new(),
            events: Vec::new(),
            pieces: Vec::new(),
            accepted: 0,
            stopping: false,
            fin_check: Vec::new(),
        };
        let handler = TcpQueue::new(ep, app, origin);
        let sh = shared.clone();
        let interval = cfg.stats_interval;
        let t = std::thread::Builder::new()
            .name(format!("netrx-q{q}"))
            .spawn(move || run(sock, handler, sh, interval))
            .map_err(|e| other(format!("spawning poller: {e}")))?;
        queues.push(shared);
        threads.push(t);
    }
    tracing::info!(
        iface = %cfg.iface, port = cfg.port, queues = ?queue_ids, engine = %cfg.engine,
        policy = %cfg.policy, ?mode, "netrx service listening"
    );
    Ok(Listener {
        queues,
        threads,
        accept_rx: Mutex::new(accept_rx),
        pool,
        engine: cfg.engine,
        policy: cfg.policy,
        model,
        mode,
        queue_ids,
        _svc: Mutex::new(svc),
    })
}

fn rand_secret(q: u32) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ u64::from(q).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn open_vfio(bdf: &str, r: &mut Regions) -> io::Result<AnyEngine> {
    use ioat_driver::vfio::{VfioDevice, VfioOpenOptions};
    let b = bdf
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{bdf}: {e:?}")))?;
    let dev =
        VfioDevice::open(&b, &VfioOpenOptions::ioat()).map_err(|e| other(format!("{bdf}: {e}")))?;
    let mapper: Arc<dyn ioat_driver::DmaMapper> = dev.mapper();
    let bar = dev
        .map_bar(0)
        .map_err(|e| other(format!("{bdf}: BAR0: {e}")))?;
    let d =
        ioat_driver::Device::open(bar, mapper.clone()).map_err(|e| other(format!("{bdf}: {e}")))?;
    let ch = d
        .channel_with_context(0, ioat_driver::ChannelConfig::default())
        .map_err(|e| other(format!("{bdf}: channel 0: {e}")))?;
    let e = IoatEngine::new(ch, mapper, r)
        .map_err(|e| other(format!("{bdf}: mapping UMEM and pool for DMA: {e}")))?;
    Ok(AnyEngine::Vfio(Box::new(e)))
}

/// Empty rounds spun before the poller sleeps.
const SPIN_ROUNDS: u32 = 64;
/// Longest sleep (endpoint timers run at least this often).
const SLEEP_MS: i32 = 5;

fn run(mut sock: XskSocket, mut h: TcpQueue<ServiceApp>, q: Arc<QueueShared>, interval: Duration) {
    let mut batch = Vec::with_capacity(64);
    let mut idle = 0u32;
    let mut last_pub = StdInstant::now();
    while !q.stop.load(Ordering::Acquire) {
        let n = sock.recv(&mut batch, 64);
        if n > 0 {
            idle = 0;
            h.on_rx(&mut sock, &mut batch, StdInstant::now());
            for p in batch.drain(..) {
                sock.release_packet(&p);
            }
        } else {
            idle = idle.saturating_add(1);
            if idle > SPIN_ROUNDS && h.app().can_sleep() {
                q.waker.sleeping.store(true, Ordering::SeqCst);
                if q.waker.pending.load(Ordering::SeqCst) == 0 && !q.stop.load(Ordering::SeqCst) {
                    let mut fds = [
                        libc::pollfd {
                            fd: sock.raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: q.waker.raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: two valid pollfds.
                    unsafe { libc::poll(fds.as_mut_ptr(), 2, SLEEP_MS) };
                    if fds[1].revents != 0 {
                        q.waker.drain();
                    }
                }
                q.waker.sleeping.store(false, Ordering::SeqCst);
            } else if idle > 4 {
                std::thread::yield_now();
            }
            h.on_idle(&mut sock, StdInstant::now());
        }
        if let Err(e) = sock.flush() {
            tracing::warn!(queue = sock.queue(), error = %e, "TX kick failed");
        }
        if last_pub.elapsed() >= interval {
            last_pub = StdInstant::now();
            publish(&h, &q);
        }
    }
    h.app_mut().stopping = true;
    h.on_idle(&mut sock, StdInstant::now());
    h.on_stop(&mut sock);
    publish(&h, &q);
    let check = sock.check_no_leak().map(|_| ()).and_then(|()| {
        let app = h.app();
        match (app.copier.frames_held(), app.segs.iter().flatten().count()) {
            (0, 0) => Ok(()),
            (f, s) => Err(format!(
                "copy path still holds {f} frame(s), {s} segment(s) not given back"
            )),
        }
    });
    q.stats.lock().exit_check = Some(check);
    // The copier (engine, DMA mappings of the UMEM) goes before the socket and its UMEM.
    drop(h);
    drop(sock);
}

fn publish(h: &TcpQueue<ServiceApp>, q: &QueueShared) {
    let app = h.app();
    {
        let mut s = q.stats.lock();
        s.copy = app.copier.stats().clone();
        s.endpoint = h.endpoint().stats();
        s.tcp = h.stats();
        s.streams = app.streams.len();
        s.accepted = app.accepted;
        s.frames_held = app.copier.frames_held();
        s.dma_in_flight = app.copier.ops_in_flight();
        s.copybreak = app.copier.policy().copybreak();
    }
    for (sid, st) in &app.streams {
        if let Some(cs) = app.copier.stream_stats(StreamId(*sid)) {
            st.shared.stats.lock().copy = cs.clone();
        }
    }
}

/// What the poller keeps per stream.
struct StreamCtx {
    conn: ConnId,
    resp: SyncSender<Reply>,
    shared: Arc<StreamShared>,
    /// Buffer of the posted receive (registered), or none (plain / nothing posted).
    posted: Option<Posted>,
    /// The peer's FIN was fed (every byte is in the copier).
    fin: bool,
    err: Option<ConnError>,
    /// `Copier::close_stream` was called (queue empty): later receives end at once.
    closed: bool,
    plain: Option<(RegionId, Arc<PlainSlot>)>,
}

struct Posted {
    buf: Option<super::RegisteredBuf>,
    nonblocking: bool,
}

struct SegEntry {
    seg: RxSegment,
    refs: u32,
}

pub(super) struct ServiceApp {
    queue: u32,
    port: u16,
    rcvbuf: usize,
    rcvlowat: usize,
    low_latency: bool,
    pub(super) copier: Copier<AnyEngine>,
    pool: Arc<PoolShared>,
    q: Arc<QueueShared>,
    req_tx: SyncSender<Request>,
    req_rx: Receiver<Request>,
    accept_tx: SyncSender<StreamParts>,
    to_accept: VecDeque<StreamParts>,
    streams: HashMap<u32, StreamCtx>,
    by_conn: HashMap<ConnId, u32>,
    segs: Vec<Option<SegEntry>>,
    free_segs: Vec<u32>,
    events: Vec<Event>,
    pieces: Vec<(usize, usize)>,
    accepted: u64,
    pub(super) stopping: bool,
    fin_check: Vec<u32>,
}

impl ServiceApp {
    fn can_sleep(&self) -> bool {
        self.copier.is_idle() && self.to_accept.is_empty()
    }

    fn open_conn(&mut self, ep: &Endpoint, c: ConnId) {
        let Some(info) = ep.info(c) else { return };
        let sid = self.copier.open_stream(self.rcvbuf).0;
        let (rtx, rrx) = mpsc::sync_channel(2);
        let shared = Arc::new(StreamShared::default());
        self.streams.insert(
            sid,
            StreamCtx {
                conn: c,
                resp: rtx,
                shared: shared.clone(),
                posted: None,
                fin: false,
                err: None,
                closed: false,
                plain: None,
            },
        );
        self.by_conn.insert(c, sid);
        self.accepted += 1;
        let a = info.addrs;
        let peer = SocketAddr::new(a.ip.dst(), a.remote_port);
        let local = SocketAddr::new(a.ip.src(), a.local_port);
        self.to_accept.push_back(StreamParts {
            sid,
            queue: self.queue,
            tx: self.req_tx.clone(),
            rx: rrx,
            q: self.q.clone(),
            shared,
            peer,
            local,
            rcvlowat: self.rcvlowat,
            low_latency: self.low_latency,
        });
    }

    fn push_accepts(&mut self) {
        while let Some(p) = self.to_accept.pop_front() {
            match self.accept_tx.try_send(p) {
                Ok(()) => {}
                Err(TrySendError::Full(p)) => {
                    self.to_accept.push_front(p);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Moves every in-order segment of a stream from the endpoint into the copier.
    fn feed(&mut self, ep: &mut Endpoint, frames: &FrameView<'_>, sid: u32) {
        let Some(st) = self.streams.get(&sid) else {
            return;
        };
        let conn = st.conn;
        let (umem_ptr, umem_len) = {
            let (p, l) = self
                .copier
                .regions()
                .host_range(UMEM_REGION)
                .unwrap_or((std::ptr::null_mut(), 0));
            (p as usize, l)
        };
        while let Ok(Some(seg)) = ep.read(conn, usize::MAX) {
            self.pieces.clear();
            let pieces = &mut self.pieces;
            frames.segment(&seg, |b| {
                let off = (b.as_ptr() as usize).wrapping_sub(umem_ptr);
                if off < umem_len && off + b.len() <= umem_len {
                    pieces.push((off, b.len()));
                }
            });
            let total: usize = self.pieces.iter().map(|p| p.1).sum();
            if total != seg.len as usize || self.pieces.len() > 255 {
                // Not readable as UMEM bytes (never produced by the endpoint): drop it.
                tracing::error!(
                    queue = self.queue,
                    "segment bytes outside the UMEM; dropped"
                );
                let _ = ep.release(&seg);
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
                refs: n as u32,
            });
            for k in 0..n {
                let (off, len) = self.pieces[k];
                let piece = Segment {
                    frame: FrameId(((idx as u64) << 8) | k as u64),
                    src: MemRef::new(UMEM_REGION, off),
                    len,
                    psh: seg.psh && k + 1 == n,
                };
                if self.copier.on_segment(StreamId(sid), piece).is_err() {
                    // Not taken (stream closed by the application): release our reference.
                    self.unref(ep, idx);
                }
            }
        }
        if let Some(info) = ep.info(conn) {
            let st = self.streams.get_mut(&sid).expect("checked");
            if info.available == 0 && info.eof && !st.fin {
                st.fin = true;
                self.fin_check.push(sid);
            }
            if st.err.is_none() {
                if let Some(e) = info.error {
                    st.err = Some(e);
                    self.fin_check.push(sid);
                }
            }
        }
    }

    fn unref(&mut self, ep: &mut Endpoint, idx: u32) {
        let Some(Some(e)) = self.segs.get_mut(idx as usize) else {
            return;
        };
        e.refs -= 1;
        if e.refs == 0 {
            let seg = e.seg;
            self.segs[idx as usize] = None;
            self.free_segs.push(idx);
            // A connection removed after close makes this fail: nothing to give back then.
            let _ = ep.release(&seg);
        }
    }

    fn handle_request(&mut self, ep: &mut Endpoint, now: Instant, r: Request) {
        match r {
            Request::Recv { sid, req, target } => self.post(sid, req, target),
            Request::SetRcvbuf { sid, bytes } => {
                if let Some(st) = self.streams.get(&sid) {
                    let _ = ep.set_rcvbuf(now, st.conn, bytes.min(u32::MAX as usize) as u32);
                }
            }
            Request::Close { sid } => {
                if let Some(st) = self.streams.remove(&sid) {
                    self.by_conn.remove(&st.conn);
                    let _ = self.copier.close_stream(StreamId(sid));
                    let _ = ep.close(now, st.conn);
                }
            }
        }
    }

    fn post(&mut self, sid: u32, req: crate::copy::RecvRequest, target: Target) {
        let Some(st) = self.streams.get_mut(&sid) else {
            // Unknown stream: answer at once (the buffer goes back with the error).
            return;
        };
        let (dst, buf) = match target {
            Target::Registered(b) => {
                if !b.same_pool(&self.pool) {
                    let _ = st.resp.try_send(Reply {
                        len: 0,
                        status: Status::Error(
                            io::ErrorKind::InvalidInput,
                            "buffer from another listener's pool; take it from this listener's buffers()".into(),
                        ),
                        buf: Some(b),
                    });
                    return;
                }
                (MemRef::new(POOL_REGION, b.offset()), Some(b))
            }
            Target::Plain { ptr, len } => {
                let (rid, slot) = match &st.plain {
                    Some(p) => p.clone(),
                    None => {
                        let slot = Arc::new(PlainSlot {
                            ptr: std::ptr::null_mut::<u8>().into(),
                            len: 0.into(),
                        });
                        let rid = self.copier.regions_mut().add(slot.clone(), false);
                        st.plain = Some((rid, slot.clone()));
                        (rid, slot)
                    }
                };
                slot.ptr.store(ptr.0, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                (MemRef::new(rid, 0), None)
            }
        };
        st.posted = Some(Posted {
            buf,
            nonblocking: req.nonblocking,
        });
        if let Err(e) = self.copier.post_recv(StreamId(sid), req, dst, 0) {
            let st = self.streams.get_mut(&sid).expect("checked");
            let p = st.posted.take().expect("just set");
            let _ = st.resp.try_send(Reply {
                len: 0,
                status: Status::Error(io::ErrorKind::InvalidInput, e.to_string()),
                buf: p.buf,
            });
            return;
        }
        self.fin_check.push(sid);
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

    fn handle_events(&mut self, ep: &mut Endpoint) {
        let mut events = std::mem::take(&mut self.events);
        self.copier.drain_events(&mut events);
        for ev in events.drain(..) {
            match ev {
                Event::FrameReleased(FrameId(f)) => self.unref(ep, (f >> 8) as u32),
                Event::Wakeup { .. } => {}
                Event::RecvDone { stream, len, .. } => self.reply(stream.0, len),
            }
        }
        self.events = events;
    }

    fn reply(&mut self, sid: u32, len: usize) {
        let Some(st) = self.streams.get_mut(&sid) else {
            return;
        };
        let Some(p) = st.posted.take() else { return };
        let status = if len > 0 {
            Status::Data
        } else if st.closed {
            match st.err {
                Some(ConnError::Reset) => Status::Error(
                    io::ErrorKind::ConnectionReset,
                    "connection reset by peer".into(),
                ),
                Some(ConnError::TimedOut) => {
                    Status::Error(io::ErrorKind::TimedOut, "connection timed out".into())
                }
                None if self.stopping && !st.fin => Status::Error(
                    io::ErrorKind::ConnectionAborted,
                    "the netrx service stopped".into(),
                ),
                None => Status::Eof,
            }
        } else if p.nonblocking {
            Status::WouldBlock
        } else {
            Status::Eof
        };
        if len == 0 && st.closed {
            // Final numbers for a stream that ended.
            if let Some(cs) = self.copier.stream_stats(StreamId(sid)) {
                st.shared.stats.lock().copy = cs.clone();
            }
        }
        let _ = st.resp.try_send(Reply {
            len,
            status,
            buf: p.buf,
        });
    }

    fn shutdown(&mut self, ep: &mut Endpoint) {
        // Let DMA in flight finish (or abort it), then finish every posted receive.
        let t0 = StdInstant::now();
        while !self.copier.is_idle() && t0.elapsed() < Duration::from_secs(2) {
            self.copier.poll();
            self.handle_events(ep);
            std::thread::yield_now();
        }
        // An op still outstanding after the DMA timeout made the copier abort the engine;
        // what it cut short was redone by CPU in the polls above.
        let sids: Vec<u32> = self.streams.keys().copied().collect();
        for sid in sids {
            if let Some(st) = self.streams.get_mut(&sid) {
                st.closed = true;
            }
            let _ = self.copier.close_stream(StreamId(sid));
        }
        self.handle_events(ep);
    }
}

impl StreamApp for ServiceApp {
    fn on_round(
        &mut self,
        ep: &mut Endpoint,
        frames: &FrameView<'_>,
        ready: &[ConnId],
        now: Instant,
    ) {
        // Requests first: a receive posted before its data arrives is what lets the policy
        // place segments early (the NET_DMA case).
        while let Ok(r) = self.req_rx.try_recv() {
            self.q.waker.pending.fetch_sub(1, Ordering::SeqCst);
            self.handle_request(ep, now, r);
        }
        while let Some(c) = ep.accept(self.port) {
            self.open_conn(ep, c);
            if let Some(&sid) = self.by_conn.get(&c) {
                self.feed(ep, frames, sid);
            }
        }
        self.push_accepts();
        for c in ready {
            if let Some(&sid) = self.by_conn.get(c) {
                self.feed(ep, frames, sid);
            }
        }
        self.copier.flush();
        self.check_fins();
        self.copier.poll();
        self.handle_events(ep);
        // Receives finished above may have emptied queues of finished streams.
        self.check_fins();
        self.handle_events(ep);
        if self.stopping {
            self.shutdown(ep);
        }
    }
}

// The handler the poller drives is `TcpQueue<ServiceApp>` (a `QueueHandler`).
#[allow(dead_code)]
fn _assert_handler(h: TcpQueue<ServiceApp>) -> impl QueueHandler {
    h
}
