//! An inline reader for end-to-end tests: a poller handler that runs an [`RxCore`] with the
//! CPU engine and, on the poller thread itself, keeps one receive posted per stream, hashes
//! what arrives and reports each stream's length and SHA-256 when it ends. The transport path
//! is exactly the service's (same core, same [`CoreIo`]); only the application side is inline.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant as StdInstant;

use netrx::copy::{
    BufId, BufferPool, Copier, CopierConfig, CpuEngine, MonotonicClock, PolicyConfig, PolicyKind,
    RecvRequest, Regions,
};
use netrx::rxcore::{AppEvent, AppRequest, CoreConfig, CoreStats, RecvStatus, RxCore};
use netrx::tcp::{Config, ConnStats, Endpoint, EndpointStats};
use netrx::xsk::{CoreIo, QueueHandler, RxPacket, TxStats, XskSocket};
use sha2::{Digest, Sha256};

/// Receive buffer of each stream.
const BUF: usize = 256 << 10;
/// Streams one queue can read at once.
const SLOTS: usize = 64;

/// What the reader saw of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamResult {
    pub queue: u32,
    pub bytes: u64,
    pub sha: [u8; 32],
    pub error: Option<String>,
    /// The connection's TCP counters when it ended.
    pub conn: Option<ConnStats>,
}

struct Reader {
    sha: Sha256,
    bytes: u64,
    slot: BufId,
    posted: bool,
}

/// See the module documentation.
pub struct HashQueue {
    core: RxCore<CpuEngine, ()>,
    io: CoreIo,
    pool: BufferPool,
    queue: u32,
    readers: HashMap<u32, Reader>,
    done: mpsc::Sender<StreamResult>,
}

impl HashQueue {
    /// A reader for `sock`'s queue with an endpoint configured by `ep` (it listens on `port`).
    pub fn new(
        sock: &XskSocket,
        ep: Config,
        port: u16,
        origin: StdInstant,
        done: mpsc::Sender<StreamResult>,
    ) -> Self {
        let mut regions = Regions::new();
        let umem = regions.add(sock.umem_region(), true);
        let pool = BufferPool::heap(&mut regions, SLOTS, BUF);
        let copier = Copier::new(
            CopierConfig::new(PolicyConfig::new(PolicyKind::Cpu)),
            CpuEngine::new(),
            regions,
            Box::new(MonotonicClock::default()),
        );
        let rcvbuf = ep.rcvbuf as usize;
        let chunk_size = sock.config().frame_size;
        // The endpoint's frames come from the UMEM minus the TX reserve (pool-wide pressure).
        let rx_frames = sock
            .config()
            .frame_count
            .saturating_sub(sock.config().tx_reserve);
        let mut ep = Endpoint::new(Config {
            frame_truesize: chunk_size,
            frame_pool: if ep.frame_pool == 0 {
                rx_frames
            } else {
                ep.frame_pool
            },
            ..ep
        });
        ep.listen(port).expect("a fresh endpoint listens");
        let core = RxCore::new(
            CoreConfig {
                port,
                rcvbuf,
                umem,
                chunk_size,
                direct_delivery: true,
            },
            ep,
            copier,
        );
        Self {
            core,
            io: CoreIo::new(origin),
            pool,
            queue: sock.queue(),
            readers: HashMap::new(),
            done,
        }
    }

    pub fn core_stats(&self) -> CoreStats {
        self.core.stats()
    }
    pub fn tx_stats(&self) -> TxStats {
        self.io.stats()
    }
    pub fn endpoint_stats(&self) -> EndpointStats {
        self.core.endpoint().stats()
    }
    /// Frames and segments the copy path still holds (both 0 once everything went back).
    pub fn held(&self) -> (usize, usize) {
        self.core.held()
    }

    fn round(&mut self, sock: &mut XskSocket, at: StdInstant) {
        let now = self.io.now(at);
        for (&sid, r) in self.readers.iter_mut().filter(|(_, r)| !r.posted) {
            r.posted = true;
            let req = RecvRequest {
                len: BUF,
                rcvlowat: 1,
                waitall: false,
                peek: false,
                low_latency: true,
                nonblocking: false,
                registered: false,
            };
            let dst = self.pool.start(r.slot);
            self.core.handle_app(
                now,
                AppRequest::Recv {
                    sid,
                    req,
                    dst,
                    buf: (),
                },
            );
        }
        self.core.advance(now);
        while let Some(ev) = self.core.poll_app() {
            match ev {
                AppEvent::Accepted { sid, .. } => {
                    let slot = self.pool.take().expect("a free reader slot per stream");
                    self.readers.insert(
                        sid,
                        Reader {
                            sha: Sha256::new(),
                            bytes: 0,
                            slot,
                            posted: false,
                        },
                    );
                }
                AppEvent::RecvDone {
                    sid, len, status, ..
                } => self.recv_done(now, sid, len, status),
                // This handler posts receives and never watches.
                AppEvent::Ready { .. } => {}
            }
        }
        self.io.output(sock, &mut self.core);
    }

    fn recv_done(&mut self, now: netrx::tcp::Instant, sid: u32, len: usize, st: RecvStatus) {
        let Some(r) = self.readers.get_mut(&sid) else {
            return;
        };
        r.posted = false;
        if st == RecvStatus::Data {
            let bytes = self
                .core
                .copier()
                .regions()
                .bytes(self.pool.start(r.slot), len)
                .expect("the reader's slot");
            r.sha.update(bytes);
            r.bytes += len as u64;
            return;
        }
        let error = match st {
            RecvStatus::Eof => None,
            other => Some(format!("{other:?}")),
        };
        let conn = self.core.conn_info(sid).map(|i| i.stats);
        let r = self.readers.remove(&sid).expect("checked");
        self.pool.put(r.slot);
        let _ = self.done.send(StreamResult {
            queue: self.queue,
            bytes: r.bytes,
            sha: r.sha.finalize().into(),
            error,
            conn,
        });
        self.core.handle_app(now, AppRequest::Close { sid });
    }
}

impl QueueHandler for HashQueue {
    fn on_rx(&mut self, sock: &mut XskSocket, batch: &mut Vec<RxPacket>, at: StdInstant) {
        let now = self.io.now(at);
        self.io.rx(sock, batch, &mut self.core, now);
        self.round(sock, at);
    }

    fn on_idle(&mut self, sock: &mut XskSocket, at: StdInstant) {
        self.round(sock, at);
    }

    fn on_stop(&mut self, sock: &mut XskSocket) {
        let now = self.io.now(StdInstant::now());
        self.core.close_all(now);
        while self.core.poll_app().is_some() {}
        self.io.output(sock, &mut self.core);
        let _ = sock.flush();
    }
}
