//! The application API: a TCP receive service on AF_XDP whose payload copies go through the
//! copy policy and a copy engine (CPU, the I/OAT model, a real I/OAT channel, or the null
//! engine).
//!
//! ```no_run
//! use netrx::service::{Listener, ServiceConfig, EngineKind};
//! use netrx::copy::PolicyKind;
//! let mut cfg = ServiceConfig::new("eth0", 5001);
//! cfg.engine = EngineKind::model();
//! cfg.policy = PolicyKind::Adaptive;
//! let listener = Listener::bind(cfg)?;
//! let mut stream = listener.accept()?;
//! let mut buf = listener.buffers().take().expect("a free registered buffer");
//! loop {
//!     let (b, n) = stream.recv_registered(buf)?; // DMA-eligible
//!     if n == 0 { break; } // end of stream
//!     let _data = &b.as_slice()[..n];
//!     buf = b;
//! }
//! println!("{:?}", listener.stats().total);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Threads: [`Listener::bind`] attaches the XDP program, opens one AF_XDP socket per RX queue
//! and starts one poller thread per queue. A poller owns its socket, its TCP endpoint, its
//! connections, its [`crate::copy::Copier`] and its own copy engine (its own DMA channel): it runs
//! to completion without locks on the fast path. Applications talk to it only through bounded
//! queues: a receive travels to the poller with its buffer, and comes back when the copier's
//! wakeup rule fires (buffer full, PSH, pressure, rcvlowat reached) and every copy into the
//! buffer has completed.
//!
//! Receives: [`Stream::recv`] into a plain `&mut [u8]` always takes the CPU path;
//! [`Stream::recv_registered`] into a [`RegisteredBuf`] from the listener's pool (mapped for
//! DMA once, at bind) is eligible for DMA under the policy. Per stream: rcvlowat (SO_RCVLOWAT:
//! the receive returns once `min(rcvlowat, len)` bytes are in, or `len` with
//! [`RecvFlags::waitall`]), low-latency (never DMA), nonblocking; per call: peek, waitall,
//! dontwait. End of stream: `Ok(0)`. Reset by the peer: `ErrorKind::ConnectionReset`; timed out:
//! `ErrorKind::TimedOut`; service stopped: `ErrorKind::ConnectionAborted`; nothing to read on a
//! nonblocking receive: `ErrorKind::WouldBlock`.

mod bufpool;
pub mod engines;
mod queue;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use crate::copy::IoatEngine;
pub use bufpool::{BufPool, RegisteredBuf};
pub use engines::{model_timing, AnyEngine, MODEL_BYTES_PER_SEC, MODEL_PER_DESC};
pub use ioat_driver::model::{ModelDevice, Preset, Timing};

use crate::copy::{CopyStats, PolicyKind, RecvRequest, NETDMA_DEFAULT_COPYBREAK};
use crate::rxcore::CoreStats;
use crate::tcp::EndpointStats;
use crate::wire::ChecksumMode;
use crate::xsk::poller::{Pollers, Waker};
use crate::xsk::{AttachMode, SocketConfig, XdpMode, XdpService};
pub use crate::xsk::{Placement, TxStats};

/// Which copy engine the pollers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineKind {
    /// CPU memcpy only (no DMA channel: every policy copies by CPU).
    Cpu,
    /// The software I/OAT model (one channel per queue), with its timing model. Simulated.
    Model { preset: Preset, timing: Timing },
    /// Real I/OAT functions through VFIO, one PCI function (channel 0) per queue, by BDF
    /// (`0000:00:04.0`). The functions must be bound to vfio-pci (`ioat-ctl bind`).
    Vfio { bdfs: Vec<String> },
    /// The null test engine (copies at completion time after a latency in polls).
    Null,
}

impl EngineKind {
    /// The model with the SKX preset and the default simulated timing ([`model_timing`]).
    pub fn model() -> Self {
        EngineKind::Model {
            preset: Preset::Skx,
            timing: model_timing(),
        }
    }

    /// Whether copies by this engine run on simulated timing.
    pub fn is_simulated(&self) -> bool {
        matches!(self, EngineKind::Model { .. } | EngineKind::Null)
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineKind::Cpu => f.write_str("cpu"),
            EngineKind::Null => f.write_str("null"),
            EngineKind::Model { preset, .. } => {
                write!(f, "model:{}", format!("{preset:?}").to_lowercase())
            }
            EngineKind::Vfio { bdfs } => f.write_str(&bdfs.join(",")),
        }
    }
}

impl FromStr for EngineKind {
    type Err = String;
    /// `cpu`, `null`, `model`, `model:skx|bdx|icx`, or comma-separated PCI addresses.
    fn from_str(s: &str) -> Result<Self, String> {
        let preset = |p: &str| match p {
            "skx" => Ok(Preset::Skx),
            "bdx" => Ok(Preset::Bdx),
            "icx" => Ok(Preset::Icx),
            _ => Err(format!(
                "unknown model preset {p:?}; use model:skx, model:bdx or model:icx"
            )),
        };
        match s {
            "cpu" => Ok(EngineKind::Cpu),
            "null" => Ok(EngineKind::Null),
            "model" => Ok(EngineKind::model()),
            _ if s.starts_with("model:") => Ok(EngineKind::Model {
                preset: preset(&s[6..])?,
                timing: model_timing(),
            }),
            _ => {
                if !s.contains(':') {
                    return Err(format!(
                        "unknown engine {s:?}; use cpu, null, model[:skx|bdx|icx] or PCI \
                         addresses like 0000:00:04.0[,0000:00:04.1]"
                    ));
                }
                // The driver's one PCI-address parser, written back in canonical form.
                let bdfs = s
                    .split(',')
                    .map(|b| {
                        b.parse::<ioat_driver::discover::Bdf>()
                            .map(|b| b.to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                Ok(EngineKind::Vfio { bdfs })
            }
        }
    }
}

/// Everything [`Listener::bind`] needs. Build with [`ServiceConfig::new`] and set fields.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Interface to attach to.
    pub iface: String,
    /// TCP port to serve.
    pub port: u16,
    /// RX queues (one poller each); `None` = every RX queue of the interface.
    pub queues: Option<Vec<u32>>,
    pub engine: EngineKind,
    pub policy: PolicyKind,
    /// `netdma` copybreak (receives of at most this many bytes never use DMA).
    pub copybreak: usize,
    /// Per-connection receive buffer in bytes (SO_RCVBUF): TCP window (frame truesize) and
    /// the copier's rcvbuf/2 pressure rule.
    pub rcvbuf: usize,
    /// Default SO_RCVLOWAT of new streams (1 as in Linux).
    pub rcvlowat: usize,
    /// Default low-latency flag of new streams (never DMA).
    pub low_latency: bool,
    /// Registered buffers in the pool, and their size.
    pub pool_buffers: usize,
    pub pool_buffer_size: usize,
    /// Verify TCP/IP checksums (a veth sender with TX checksum offload leaves them partial:
    /// use `Trust` there, or turn the sender's offload off).
    pub checksum: ChecksumMode,
    pub attach: AttachMode,
    pub socket: SocketConfig,
    /// Use 2 KiB UMEM frames (twice as many, same UMEM size) when the interface MTU fits one
    /// (MTU up to 1774 with a VLAN tag) and scatter-gather is off: a 1448-byte segment then
    /// costs 2 KiB of truesize instead of 4 KiB, so the same rcvbuf gives twice the window,
    /// close to what Linux's truesize accounting gives a kernel socket.
    pub small_frames: bool,
    /// Connections waiting for [`Listener::accept`] before the pollers hold new ones back.
    pub accept_backlog: usize,
    /// Live connections per RX queue (embryonic included). At the cap, a connection idle
    /// for 10 s is reset to make room; otherwise new ones are refused (SYN dropped).
    pub max_connections: usize,
    /// How often pollers publish stats.
    pub stats_interval: Duration,
    /// A DMA op not completed after this long is aborted and redone by CPU.
    pub dma_timeout: Duration,
    /// Where each queue's poller and TX kicker threads run (default: they float).
    /// [`Placement::Auto`] gives a queue's two threads different CPUs, which is what the
    /// end-to-end benchmark and `netrxd demo` use (`docs/performance.md`).
    pub cpus: Placement,
}

impl ServiceConfig {
    pub fn new(iface: &str, port: u16) -> Self {
        ServiceConfig {
            iface: iface.to_string(),
            port,
            queues: None,
            engine: EngineKind::Cpu,
            policy: PolicyKind::Cpu,
            copybreak: NETDMA_DEFAULT_COPYBREAK,
            rcvbuf: 4 << 20,
            rcvlowat: 1,
            low_latency: false,
            pool_buffers: 64,
            pool_buffer_size: 2 << 20,
            checksum: ChecksumMode::Verify,
            attach: AttachMode::Auto,
            // Copy mode on veth: the TX kick runs the peer's stack; keep it off the poller.
            socket: SocketConfig {
                tx_kick_thread: true,
                ..SocketConfig::default()
            },
            small_frames: true,
            accept_backlog: 128,
            max_connections: 16384,
            stats_interval: Duration::from_millis(100),
            dma_timeout: Duration::from_millis(50),
            cpus: Placement::Float,
        }
    }
}

/// Per-call receive flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvFlags {
    /// MSG_PEEK: copy without consuming (never DMA).
    pub peek: bool,
    /// MSG_WAITALL: return only with a full buffer (or at end of stream / error).
    pub waitall: bool,
    /// MSG_DONTWAIT: return at once (`WouldBlock` if nothing is queued).
    pub dontwait: bool,
}

/// Stats of one queue (poller), published at `stats_interval`.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub queue: u32,
    pub copy: CopyStats,
    pub endpoint: EndpointStats,
    /// The receive core's packet and frame counters.
    pub core: CoreStats,
    /// Control frames sent and dropped by the shell.
    pub tx: TxStats,
    /// The AF_XDP socket's counters (RX batches and packets, TX kicks).
    pub xsk: crate::xsk::XskStats,
    /// Streams open at the poller.
    pub streams: usize,
    pub accepted: u64,
    /// Frames held by the copy path.
    pub frames_held: usize,
    /// DMA ops in flight at the last publication.
    pub dma_in_flight: usize,
    /// Copybreak in force (`usize::MAX` for `cpu`).
    pub copybreak: usize,
    /// Set when the poller stopped: the socket's frame accounting (`Ok` = every frame back,
    /// none held or stuck in TX; `Err` names what is outstanding, e.g. frames still held by
    /// connections the application had not closed).
    pub exit_check: Option<Result<(), String>>,
}

/// A snapshot of the service's stats.
#[derive(Debug, Clone)]
pub struct ServiceStats {
    pub engine: String,
    pub policy: PolicyKind,
    /// Copies by a simulated engine (the model): DMA timing is not a measurement.
    pub simulated: bool,
    pub queues: Vec<QueueStats>,
    /// Copy stats summed over the queues.
    pub total: CopyStats,
}

/// Stats of one stream.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    pub copy: CopyStats,
    /// Payload bytes handed to the application.
    pub bytes: u64,
}

// ----- plumbing shared by both sides -----

/// Sends a request to the poller and wakes it if it sleeps.
fn send(waker: &Waker, tx: &SyncSender<Request>, r: Request) -> io::Result<()> {
    if waker.send_with(|| tx.send(r).is_ok()) {
        Ok(())
    } else {
        Err(stopped())
    }
}

fn stopped() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the netrx service stopped (listener dropped or poller gone)",
    )
}

/// Readiness and completions of many streams for one application thread (like an epoll
/// instance): [`Stream::watch`] and [`Stream::post_recv_registered`] name a token, and the
/// token arrives here when the stream is readable or the posted receive completed. Lets a
/// few threads serve thousands of streams. Unbounded, but each stream has at most one
/// notification outstanding.
#[derive(Debug)]
pub struct ReadyQueue {
    tx: std::sync::mpsc::Sender<u64>,
    rx: Receiver<u64>,
}

impl Default for ReadyQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadyQueue {
    pub fn new() -> ReadyQueue {
        let (tx, rx) = std::sync::mpsc::channel();
        ReadyQueue { tx, rx }
    }

    /// The next token, waiting up to `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<u64> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next token if one is there.
    pub fn try_next(&self) -> Option<u64> {
        self.rx.try_recv().ok()
    }

    /// A handle other threads use to put their own tokens on this queue (e.g. "a new stream
    /// is waiting for you").
    pub fn sender(&self) -> ReadySender {
        ReadySender(self.tx.clone())
    }

    fn notify(&self, token: u64) -> Notify {
        Notify {
            tx: self.tx.clone(),
            token,
        }
    }
}

/// Puts tokens on a [`ReadyQueue`] from another thread.
#[derive(Debug, Clone)]
pub struct ReadySender(std::sync::mpsc::Sender<u64>);

impl ReadySender {
    /// False once the queue is gone.
    pub fn send(&self, token: u64) -> bool {
        self.0.send(token).is_ok()
    }
}

/// A plain application buffer posted to the poller (CPU copies only).
pub(crate) struct PlainPtr(pub(crate) *mut u8);
// SAFETY: the pointer is written only by the poller while the application thread is blocked
// in `recv` waiting for the reply, which exclusively borrows the slice for that time.
unsafe impl Send for PlainPtr {}

pub(crate) enum Target {
    Plain { ptr: PlainPtr, len: usize },
    Registered(RegisteredBuf),
}

/// Where the poller announces a stream's event: `token` on a [`ReadyQueue`]'s channel.
pub(crate) struct Notify {
    pub(crate) tx: std::sync::mpsc::Sender<u64>,
    pub(crate) token: u64,
}

impl Notify {
    pub(crate) fn fire(self) {
        let _ = self.tx.send(self.token);
    }
}

pub(crate) enum Request {
    Recv {
        sid: u32,
        req: RecvRequest,
        target: Target,
        /// Announce the reply here too (a posted receive, [`Stream::post_recv_registered`]).
        notify: Option<Notify>,
    },
    Watch {
        sid: u32,
        notify: Notify,
    },
    SetRcvbuf {
        sid: u32,
        bytes: usize,
    },
    Close {
        sid: u32,
    },
    Abort {
        sid: u32,
    },
}

pub(crate) enum Status {
    Data,
    WouldBlock,
    Eof,
    Error(io::ErrorKind, String),
}

pub(crate) struct Reply {
    pub(crate) len: usize,
    pub(crate) status: Status,
    pub(crate) buf: Option<RegisteredBuf>,
}

#[derive(Default)]
pub(crate) struct StreamShared {
    pub(crate) stats: Mutex<StreamStats>,
}

pub(crate) struct QueueShared {
    pub(crate) waker: Waker,
    pub(crate) stats: Mutex<QueueStats>,
}

/// What a poller hands to [`Listener::accept`].
pub(crate) struct StreamParts {
    pub(crate) sid: u32,
    pub(crate) queue: u32,
    pub(crate) tx: SyncSender<Request>,
    pub(crate) rx: Receiver<Reply>,
    pub(crate) q: Arc<QueueShared>,
    pub(crate) shared: Arc<StreamShared>,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) rcvlowat: usize,
    pub(crate) low_latency: bool,
}

// ----- the listener -----

/// The running service: XDP program, sockets and pollers. Dropping it stops the pollers (posted
/// receives fail with `ConnectionAborted`) and detaches the program.
pub struct Listener {
    queues: Vec<Arc<QueueShared>>,
    pollers: Option<Pollers<queue::ServiceQueue>>,
    accept_rx: Mutex<Receiver<StreamParts>>,
    pool: BufPool,
    engine: EngineKind,
    policy: PolicyKind,
    model: Option<Arc<ModelDevice>>,
    mode: XdpMode,
    queue_ids: Vec<u32>,
    // Last: detaches the program after the pollers are gone. (In a mutex only so that the
    // listener is Sync: it is never touched after bind.)
    _svc: Mutex<XdpService>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("queues", &self.queue_ids)
            .field("engine", &self.engine)
            .field("policy", &self.policy)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Listener {
    /// Attaches to `cfg.iface`, opens the queues, sets up the copy engines (mapping every UMEM
    /// and the registered pool once per channel) and starts the pollers.
    pub fn bind(cfg: ServiceConfig) -> io::Result<Listener> {
        queue::bind(cfg)
    }

    /// The next connection (blocks).
    pub fn accept(&self) -> io::Result<Stream> {
        let rx = self.accept_rx.lock();
        match rx.recv() {
            Ok(p) => Ok(Stream::new(p)),
            Err(_) => Err(stopped()),
        }
    }

    /// The next connection, waiting at most `timeout` (`ErrorKind::TimedOut` then).
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Stream> {
        let rx = self.accept_rx.lock();
        match rx.recv_timeout(timeout) {
            Ok(p) => Ok(Stream::new(p)),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no connection arrived in time",
            )),
            Err(RecvTimeoutError::Disconnected) => Err(stopped()),
        }
    }

    /// A waiting connection, or `ErrorKind::WouldBlock`.
    pub fn try_accept(&self) -> io::Result<Stream> {
        let rx = self.accept_rx.lock();
        match rx.try_recv() {
            Ok(p) => Ok(Stream::new(p)),
            Err(TryRecvError::Empty) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TryRecvError::Disconnected) => Err(stopped()),
        }
    }

    /// The registered buffer pool (DMA-mapped once).
    pub fn buffers(&self) -> BufPool {
        self.pool.clone()
    }

    /// A snapshot of the stats the pollers published last (every `stats_interval`).
    pub fn stats(&self) -> ServiceStats {
        let queues: Vec<QueueStats> = self.queues.iter().map(|q| q.stats.lock().clone()).collect();
        let mut total = CopyStats::default();
        for q in &queues {
            total.add(&q.copy);
        }
        ServiceStats {
            engine: self.engine.to_string(),
            policy: self.policy,
            simulated: self.engine.is_simulated(),
            queues,
            total,
        }
    }

    /// The model device when the engine is the model (fault injection, device stats).
    pub fn model_device(&self) -> Option<&Arc<ModelDevice>> {
        self.model.as_ref()
    }

    /// Native or generic XDP.
    pub fn xdp_mode(&self) -> XdpMode {
        self.mode
    }

    /// The RX queues served.
    pub fn queues(&self) -> &[u32] {
        &self.queue_ids
    }

    pub fn engine(&self) -> &EngineKind {
        &self.engine
    }

    pub fn policy(&self) -> PolicyKind {
        self.policy
    }

    /// Stops the pollers (finishing posted receives), detaches XDP, returns the final stats.
    pub fn shutdown(mut self) -> ServiceStats {
        self.stop_pollers();
        self.stats()
    }

    fn stop_pollers(&mut self) {
        let Some(pollers) = self.pollers.take() else {
            return;
        };
        pollers.signal_stop();
        for q in &self.queues {
            q.waker.wake();
        }
        for (sock, handler) in pollers.stop() {
            // The handler (copier, engine, DMA mappings of the UMEM) goes before the socket
            // and its UMEM.
            drop(handler);
            drop(sock);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop_pollers();
    }
}

// ----- streams -----

/// One accepted connection (receive-only). Dropping it closes the connection.
pub struct Stream {
    sid: u32,
    queue: u32,
    tx: SyncSender<Request>,
    rx: Receiver<Reply>,
    q: Arc<QueueShared>,
    shared: Arc<StreamShared>,
    peer: SocketAddr,
    local: SocketAddr,
    rcvlowat: usize,
    low_latency: bool,
    nonblocking: bool,
    bytes: u64,
    aborted: bool,
    /// A receive is posted ([`Stream::post_recv_registered`]) and not yet collected.
    posted: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("queue", &self.queue)
            .field("id", &self.sid)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Stream {
    fn new(p: StreamParts) -> Stream {
        Stream {
            sid: p.sid,
            queue: p.queue,
            tx: p.tx,
            rx: p.rx,
            q: p.q,
            shared: p.shared,
            peer: p.peer,
            local: p.local,
            rcvlowat: p.rcvlowat,
            low_latency: p.low_latency,
            nonblocking: false,
            bytes: 0,
            aborted: false,
            posted: false,
        }
    }

    /// Receives into a plain buffer (always copied by the CPU). `Ok(0)` at end of stream.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_with(buf, RecvFlags::default())
    }

    /// [`Stream::recv`] with per-call flags.
    pub fn recv_with(&mut self, buf: &mut [u8], flags: RecvFlags) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.not_posted()?;
        let req = self.request(buf.len(), flags, false);
        let target = Target::Plain {
            ptr: PlainPtr(buf.as_mut_ptr()),
            len: buf.len(),
        };
        // The poller writes `buf` until it replies; we wait for the reply whatever happens
        // (the channel only disconnects once the poller is gone and writes nothing more).
        let r = self.round_trip(req, target)?;
        self.finish(r).map(|(n, _)| n)
    }

    /// Receives into a registered buffer (DMA-eligible under the policy). The buffer comes back
    /// with the number of bytes received (`0` at end of stream) once every copy into it has
    /// completed. On error the buffer goes back to the pool.
    pub fn recv_registered(&mut self, buf: RegisteredBuf) -> io::Result<(RegisteredBuf, usize)> {
        self.recv_registered_with(buf, RecvFlags::default())
    }

    /// [`Stream::recv_registered`] with per-call flags.
    pub fn recv_registered_with(
        &mut self,
        buf: RegisteredBuf,
        flags: RecvFlags,
    ) -> io::Result<(RegisteredBuf, usize)> {
        self.not_posted()?;
        let req = self.request(buf.capacity(), flags, true);
        let r = self.round_trip(req, Target::Registered(buf))?;
        match self.finish(r)? {
            (n, Some(b)) => Ok((b, n)),
            (_, None) => Err(io::Error::other("poller returned no buffer")),
        }
    }

    /// Posts a receive into `buf` without waiting for it (the receive rules are
    /// [`Stream::recv_registered`]'s: it completes at rcvlowat, PSH, a full buffer or the
    /// stream's end, and DMA may fill it early). When it completes, `token` arrives on `q`;
    /// then [`Stream::poll_recv`] returns the buffer and what it holds. One receive at a time
    /// per stream; the other receive calls fail while one is posted.
    pub fn post_recv_registered(
        &mut self,
        buf: RegisteredBuf,
        q: &ReadyQueue,
        token: u64,
    ) -> io::Result<()> {
        self.not_posted()?;
        let mut req = self.request(buf.capacity(), RecvFlags::default(), true);
        // It waits by nature (the point of posting): never the stream's nonblocking mode.
        req.nonblocking = false;
        send(
            &self.q.waker,
            &self.tx,
            Request::Recv {
                sid: self.sid,
                req,
                target: Target::Registered(buf),
                notify: Some(q.notify(token)),
            },
        )?;
        self.posted = true;
        Ok(())
    }

    /// The result of the receive posted with [`Stream::post_recv_registered`], once it
    /// completed (`None` before, or when none is posted). `Ok((buf, 0))` at end of stream.
    pub fn poll_recv(&mut self) -> Option<io::Result<(RegisteredBuf, usize)>> {
        if !self.posted {
            return None;
        }
        let r = match self.rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => {
                self.posted = false;
                return Some(Err(stopped()));
            }
        };
        self.posted = false;
        Some(match self.finish(r) {
            Ok((n, Some(b))) => Ok((b, n)),
            Ok((_, None)) => Err(io::Error::other("poller returned no buffer")),
            Err(e) => Err(e),
        })
    }

    /// Asks for `token` on `q` once the stream is readable (bytes queued, or its end: FIN,
    /// reset, timeout), at once if it is now: a one-shot `EPOLLIN`. Read it then with
    /// nonblocking receives until `WouldBlock`, and watch again. A watch or posted receive
    /// replaces the stream's previous notification target.
    pub fn watch(&mut self, q: &ReadyQueue, token: u64) -> io::Result<()> {
        send(
            &self.q.waker,
            &self.tx,
            Request::Watch {
                sid: self.sid,
                notify: q.notify(token),
            },
        )
    }

    fn not_posted(&self) -> io::Result<()> {
        if self.posted {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a receive is posted on this stream; collect it with poll_recv first",
            ));
        }
        Ok(())
    }

    fn request(&self, len: usize, flags: RecvFlags, registered: bool) -> RecvRequest {
        RecvRequest {
            len,
            rcvlowat: self.rcvlowat,
            waitall: flags.waitall,
            peek: flags.peek,
            low_latency: self.low_latency,
            nonblocking: self.nonblocking || flags.dontwait,
            registered,
        }
    }

    fn round_trip(&mut self, req: RecvRequest, target: Target) -> io::Result<Reply> {
        send(
            &self.q.waker,
            &self.tx,
            Request::Recv {
                sid: self.sid,
                req,
                target,
                notify: None,
            },
        )?;
        self.rx.recv().map_err(|_| stopped())
    }

    fn finish(&mut self, r: Reply) -> io::Result<(usize, Option<RegisteredBuf>)> {
        match r.status {
            Status::Data => {
                self.bytes += r.len as u64;
                Ok((r.len, r.buf))
            }
            Status::Eof => Ok((0, r.buf)),
            Status::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
            Status::Error(kind, msg) => Err(io::Error::new(kind, msg)),
        }
    }

    /// Closes the connection with RST instead of FIN (like `SO_LINGER` 0): for a receiver that
    /// could not keep what it was sent (a full disk, an I/O error), so the sender sees
    /// "connection reset" rather than a clean close.
    pub fn abort(mut self) {
        self.aborted = true;
    }

    /// SO_RCVLOWAT for the following receives (0 counts as 1).
    pub fn set_rcvlowat(&mut self, bytes: usize) {
        self.rcvlowat = bytes.max(1);
    }

    pub fn rcvlowat(&self) -> usize {
        self.rcvlowat
    }

    /// Low-latency stream: its receives never use DMA.
    pub fn set_low_latency(&mut self, on: bool) {
        self.low_latency = on;
    }

    /// Nonblocking receives: `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    /// SO_RCVBUF of this connection (its TCP window, in frame truesize).
    pub fn set_rcvbuf(&mut self, bytes: usize) -> io::Result<()> {
        send(
            &self.q.waker,
            &self.tx,
            Request::SetRcvbuf {
                sid: self.sid,
                bytes,
            },
        )
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The RX queue (poller) serving this stream.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Per-stream stats (copy stats as last published by the poller; bytes as received).
    pub fn stats(&self) -> StreamStats {
        let mut s = self.shared.stats.lock().clone();
        s.bytes = self.bytes;
        s
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let r = if self.aborted {
            Request::Abort { sid: self.sid }
        } else {
            Request::Close { sid: self.sid }
        };
        let _ = send(&self.q.waker, &self.tx, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_move_between_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<Listener>();
        sync::<Listener>();
        send::<Stream>();
        send::<RegisteredBuf>();
        send::<BufPool>();
        sync::<BufPool>();
    }

    #[test]
    fn engine_kind_parses_and_names_the_fix() {
        assert_eq!("cpu".parse::<EngineKind>().unwrap(), EngineKind::Cpu);
        assert_eq!("model".parse::<EngineKind>().unwrap(), EngineKind::model());
        assert!(matches!(
            "model:icx".parse::<EngineKind>().unwrap(),
            EngineKind::Model {
                preset: Preset::Icx,
                ..
            }
        ));
        assert_eq!(
            "0000:00:04.0,0000:00:04.1".parse::<EngineKind>().unwrap(),
            EngineKind::Vfio {
                bdfs: vec!["0000:00:04.0".into(), "0000:00:04.1".into()]
            }
        );
        // The driver's BDF parser: short forms are canonicalised, bad addresses rejected.
        assert_eq!(
            "00:3.0".parse::<EngineKind>().unwrap(),
            EngineKind::Vfio {
                bdfs: vec!["0000:00:03.0".into()]
            }
        );
        assert!("0000:00:04.9".parse::<EngineKind>().is_err());
        let e = "dma".parse::<EngineKind>().unwrap_err();
        assert!(e.contains("model[:skx|bdx|icx]"), "{e}");
        assert!("model:zen".parse::<EngineKind>().is_err());
        assert_eq!(EngineKind::model().to_string(), "model:skx");
    }
}
