//! The poller side of the service: binding, and the per-queue handler, a thin shell around
//! [`RxCore`] that moves packets, frames, transmissions and application requests between the
//! AF_XDP socket, the application threads and the core.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use parking_lot::Mutex;

use super::bufpool::{BufPool, PoolShared, RegisteredBuf};
use super::engines::{new_model, AnyEngine};
use super::{
    EngineKind, Listener, Notify, QueueShared, QueueStats, Reply, Request, ServiceConfig, Status,
    StreamParts, StreamShared, Target,
};
use crate::copy::IoatEngine;
use crate::copy::{
    Copier, CopierConfig, CpuEngine, MemRef, MonotonicClock, NullConfig, NullEngine, PolicyConfig,
    RegionId, RegionMemory, Regions,
};
use crate::rxcore::{AppEvent, AppRequest, CoreConfig, RecvStatus, RxCore};
use crate::tcp::{self, Endpoint, Instant};
use crate::xsk::poller::{self, PollerConfig, Waker};
use crate::xsk::{CoreIo, QueueHandler, RxPacket, XdpService, XskSocket};

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

/// Keeps the source error and says what failed.
fn context<E: std::error::Error + Send + Sync + 'static>(what: &str, e: E) -> io::Error {
    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct Ctx<E: std::error::Error + 'static> {
        what: String,
        #[source]
        source: E,
    }
    io::Error::other(Ctx {
        what: what.to_string(),
        source: e,
    })
}

/// Opens the service and starts the pollers.
pub(super) fn bind(cfg: ServiceConfig) -> io::Result<Listener> {
    if cfg.rcvbuf < 4096 || cfg.rcvbuf > u32::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("rcvbuf {} out of range; use 4096..=4 GiB", cfg.rcvbuf),
        ));
    }
    let mut xcfg = crate::xsk::XdpConfig::new(&cfg.iface, cfg.port);
    xcfg.queues = cfg.queues.clone();
    xcfg.attach = cfg.attach;
    xcfg.socket = cfg.socket.clone();
    xcfg.cpus = cfg.cpus.clone();
    if cfg.small_frames {
        let iface = crate::xsk::iface::lookup(&cfg.iface).map_err(io::Error::other)?;
        xcfg.socket = xcfg.socket.with_small_frames(iface.mtu, xcfg.vlan);
    }
    let mut svc = XdpService::open(&xcfg).map_err(io::Error::other)?;
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
        let u = r.add(s.umem_region(), true);
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
    let mut handlers = Vec::with_capacity(nq);
    for ((sock, engine), mem) in sockets.into_iter().zip(engines).zip(regions) {
        let q = sock.queue();
        let shared = Arc::new(QueueShared {
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
        // Receives complete once per RX batch, and a waiting receive takes the batch's
        // in-order data straight from the frames (`direct_delivery` below).
        ccfg.batch_completions = true;
        let copier = Copier::new(ccfg, engine, mem, Box::new(MonotonicClock::default()));
        let chunk_size = sock.config().frame_size;
        // The frames RX can hold: the UMEM minus those kept for TX.
        let rx_frames = sock
            .config()
            .frame_count
            .saturating_sub(sock.config().tx_reserve);
        let mut ep = Endpoint::new(tcp::Config {
            mtu: mtu.min(u16::MAX as u32) as u16,
            rcvbuf: cfg.rcvbuf as u32,
            frame_truesize: chunk_size,
            frame_pool: rx_frames,
            checksum: cfg.checksum,
            accept_backlog: cfg.accept_backlog.max(1),
            max_connections: cfg.max_connections.max(1),
            isn_secret: rand_secret(q),
            ..tcp::Config::default()
        });
        ep.listen(cfg.port).map_err(|e| context("listen", e))?;
        let core = RxCore::new(
            CoreConfig {
                port: cfg.port,
                rcvbuf: cfg.rcvbuf,
                umem: UMEM_REGION,
                chunk_size,
                direct_delivery: true,
            },
            ep,
            copier,
        );
        let (req_tx, req_rx) = mpsc::sync_channel(1024);
        let handler = ServiceQueue {
            core,
            queue: q,
            rcvlowat: cfg.rcvlowat.max(1),
            low_latency: cfg.low_latency,
            pool: pool.inner.clone(),
            q: shared.clone(),
            req_tx,
            req_rx,
            accept_tx: accept_tx.clone(),
            to_accept: VecDeque::new(),
            chans: HashMap::new(),
            io: CoreIo::new(origin),
            interval: cfg.stats_interval,
            last_pub: StdInstant::now(),
        };
        queues.push(shared);
        handlers.push((sock, handler));
    }
    let pollers = poller::spawn_handlers(handlers, PollerConfig::default())
        .map_err(|e| context("spawning pollers", e))?;
    tracing::info!(
        iface = %cfg.iface, port = cfg.port, queues = ?queue_ids, engine = %cfg.engine,
        policy = %cfg.policy, ?mode, "netrx service listening"
    );
    Ok(Listener {
        queues,
        pollers: Some(pollers),
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

/// What the shell keeps per stream: the application's side of it.
struct StreamChan {
    resp: SyncSender<Reply>,
    shared: Arc<StreamShared>,
    /// The region standing for the stream's plain (CPU-only) receive buffers.
    plain: Option<(RegionId, Arc<PlainSlot>)>,
    /// Where the next readiness or posted-receive completion is announced.
    notify: Option<Notify>,
}

/// One queue's handler: the I/O shell around [`RxCore`].
pub(super) struct ServiceQueue {
    core: RxCore<AnyEngine, Option<RegisteredBuf>>,
    queue: u32,
    rcvlowat: usize,
    low_latency: bool,
    pool: Arc<PoolShared>,
    q: Arc<QueueShared>,
    req_tx: SyncSender<Request>,
    req_rx: Receiver<Request>,
    accept_tx: SyncSender<StreamParts>,
    to_accept: VecDeque<StreamParts>,
    chans: HashMap<u32, StreamChan>,
    io: CoreIo,
    interval: Duration,
    last_pub: StdInstant,
}

impl ServiceQueue {
    /// One round after RX (or an idle one): requests, the core, then its outputs.
    fn round(&mut self, sock: &mut XskSocket, at: StdInstant) {
        let now = self.io.now(at);
        // Requests first: a receive posted before its data is fed is what lets the policy
        // place segments early (the NET_DMA case).
        while let Ok(r) = self.req_rx.try_recv() {
            self.q.waker.taken();
            self.request(now, r);
        }
        self.core.advance(now);
        self.outputs(sock);
        if at.saturating_duration_since(self.last_pub) >= self.interval {
            self.last_pub = at;
            self.publish(sock);
        }
    }

    fn request(&mut self, now: Instant, r: Request) {
        let r = match r {
            Request::Recv {
                sid,
                req,
                target,
                notify,
            } => {
                let Some(ch) = self.chans.get_mut(&sid) else {
                    return;
                };
                if notify.is_some() {
                    ch.notify = notify;
                }
                let (dst, buf) = match target {
                    Target::Registered(b) => {
                        if !b.same_pool(&self.pool) {
                            let _ = ch.resp.try_send(Reply {
                                len: 0,
                                status: Status::Error(
                                    io::ErrorKind::InvalidInput,
                                    "buffer from another listener's pool; take it from this listener's buffers()".into(),
                                ),
                                buf: Some(b),
                            });
                            if let Some(n) = ch.notify.take() {
                                n.fire();
                            }
                            return;
                        }
                        (MemRef::new(POOL_REGION, b.offset()), Some(b))
                    }
                    Target::Plain { ptr, len } => {
                        let (rid, slot) = match &ch.plain {
                            Some(p) => p.clone(),
                            None => {
                                let slot = Arc::new(PlainSlot {
                                    ptr: std::ptr::null_mut::<u8>().into(),
                                    len: 0.into(),
                                });
                                let rid = self.core.add_region(slot.clone(), false);
                                ch.plain = Some((rid, slot.clone()));
                                (rid, slot)
                            }
                        };
                        slot.ptr.store(ptr.0, Ordering::Relaxed);
                        slot.len.store(len, Ordering::Relaxed);
                        (MemRef::new(rid, 0), None)
                    }
                };
                AppRequest::Recv { sid, req, dst, buf }
            }
            Request::SetRcvbuf { sid, bytes } => AppRequest::SetRcvbuf { sid, bytes },
            Request::Close { sid } => {
                self.chans.remove(&sid);
                AppRequest::Close { sid }
            }
            Request::Abort { sid } => {
                self.chans.remove(&sid);
                AppRequest::Abort { sid }
            }
            Request::Watch { sid, notify } => {
                let Some(ch) = self.chans.get_mut(&sid) else {
                    // Closed by the application: nothing to report.
                    return;
                };
                ch.notify = Some(notify);
                AppRequest::Watch { sid }
            }
        };
        self.core.handle_app(now, r);
    }

    /// Drains the core: application events, frames for the fill ring, frames to send.
    fn outputs(&mut self, sock: &mut XskSocket) {
        while let Some(ev) = self.core.poll_app() {
            match ev {
                AppEvent::Accepted { sid, peer, local } => {
                    let (rtx, rrx) = mpsc::sync_channel(2);
                    let shared = Arc::new(StreamShared::default());
                    self.chans.insert(
                        sid,
                        StreamChan {
                            resp: rtx,
                            shared: shared.clone(),
                            plain: None,
                            notify: None,
                        },
                    );
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
                AppEvent::Ready { sid } => {
                    if let Some(n) = self.chans.get_mut(&sid).and_then(|ch| ch.notify.take()) {
                        n.fire();
                    }
                }
                AppEvent::RecvDone {
                    sid,
                    len,
                    status,
                    buf,
                    stats,
                } => {
                    let Some(ch) = self.chans.get_mut(&sid) else {
                        continue;
                    };
                    if let Some(cs) = stats {
                        ch.shared.stats.lock().copy = *cs;
                    }
                    let status = match status {
                        RecvStatus::Data => Status::Data,
                        RecvStatus::Eof => Status::Eof,
                        RecvStatus::WouldBlock => Status::WouldBlock,
                        RecvStatus::Reset => Status::Error(
                            io::ErrorKind::ConnectionReset,
                            "connection reset by peer".into(),
                        ),
                        RecvStatus::TimedOut => {
                            Status::Error(io::ErrorKind::TimedOut, "connection timed out".into())
                        }
                        RecvStatus::Aborted => Status::Error(
                            io::ErrorKind::ConnectionAborted,
                            "the netrx service stopped".into(),
                        ),
                        RecvStatus::Refused(e) => {
                            Status::Error(io::ErrorKind::InvalidInput, e.to_string())
                        }
                    };
                    let _ = ch.resp.try_send(Reply { len, status, buf });
                    if let Some(n) = ch.notify.take() {
                        n.fire();
                    }
                }
            }
        }
        self.push_accepts();
        self.io.output(sock, &mut self.core);
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

    fn publish(&self, sock: &XskSocket) {
        let copier = self.core.copier();
        {
            let mut s = self.q.stats.lock();
            s.xsk = sock.stats();
            s.copy = copier.stats().clone();
            s.endpoint = self.core.endpoint().stats();
            s.core = self.core.stats();
            s.tx = self.io.stats();
            s.streams = self.core.stream_count();
            s.accepted = self.core.accepted();
            s.frames_held = copier.frames_held();
            s.dma_in_flight = copier.ops_in_flight();
            s.copybreak = copier.policy().copybreak();
        }
        for (sid, ch) in &self.chans {
            if let Some(cs) = copier.stream_stats(crate::copy::StreamId(*sid)) {
                ch.shared.stats.lock().copy = cs.clone();
            }
        }
    }
}

impl QueueHandler for ServiceQueue {
    fn on_rx(&mut self, sock: &mut XskSocket, batch: &mut Vec<RxPacket>, at: StdInstant) {
        let now = self.io.now(at);
        self.io.rx(sock, batch, &mut self.core, now);
        self.round(sock, at);
    }

    fn on_idle(&mut self, sock: &mut XskSocket, at: StdInstant) {
        self.round(sock, at);
    }

    fn can_sleep(&self) -> bool {
        self.core.is_idle() && self.to_accept.is_empty()
    }

    fn waker(&self) -> Option<&Waker> {
        Some(&self.q.waker)
    }

    fn on_stop(&mut self, sock: &mut XskSocket) {
        // Let DMA in flight finish (the copier aborts what outlives its timeout and redoes
        // it by CPU), then finish every posted receive and give every frame back.
        self.core.begin_shutdown();
        let t0 = StdInstant::now();
        loop {
            self.round(sock, StdInstant::now());
            if self.core.is_idle() || t0.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::yield_now();
        }
        let now = self.io.now(StdInstant::now());
        self.core.close_all(now);
        self.outputs(sock);
        let _ = sock.flush();
        self.publish(sock);
        let check = sock
            .check_no_leak()
            .map(|_| ())
            .and_then(|()| match self.core.held() {
                (0, 0) => Ok(()),
                (f, s) => Err(format!(
                    "copy path still holds {f} frame(s), {s} segment(s) not given back"
                )),
            });
        self.q.stats.lock().exit_check = Some(check);
    }
}
