//! Glue between one queue's AF_XDP socket and the sans-IO TCP endpoint ([`crate::tcp`]).
//!
//! [`TcpQueue`] is a [`QueueHandler`]: every received packet goes to
//! [`Endpoint::on_frame`](crate::tcp::Endpoint::on_frame); frames the endpoint does not keep
//! return to the fill ring at once, the others when the endpoint releases them
//! ([`Endpoint::take_released`](crate::tcp::Endpoint::take_released)). Control frames the
//! endpoint emits go out through the TX ring. Timers run from the poller's rounds.
//!
//! The consumer of the byte streams is a [`StreamApp`]: each round it may accept connections,
//! read segments (bytes through [`FrameView`]) and release them.
//!
//! Frame handles given to the endpoint ([`crate::tcp::FrameId`]) are UMEM addresses of the
//! packet's first byte. A multi-buffer (XDP_USE_SG) packet is parsed from a gathered copy, and
//! its descriptors are remembered so that its bytes can be read and all its frames released.

use std::collections::{HashMap, VecDeque};
use std::time::Instant as StdInstant;

use super::poller::QueueHandler;
use super::socket::{RxDesc, RxPacket, XskSocket};
use crate::tcp::{ConnId, Endpoint, FrameDisposition, FrameId, Instant, RxSegment};

/// Read access to received payload for a [`StreamApp`].
pub struct FrameView<'a> {
    sock: &'a XskSocket,
    multi: &'a HashMap<FrameId, Vec<RxDesc>>,
}

impl FrameView<'_> {
    /// Call `f` with the bytes of `len` bytes at `offset` of packet `frame`, in one or more
    /// contiguous pieces. Returns the number of bytes visited (less than `len` only for a
    /// handle that is not held, which the endpoint never produces).
    pub fn for_each(&self, frame: FrameId, offset: u32, len: u32, mut f: impl FnMut(&[u8])) -> u32 {
        let fs = self.sock.config().frame_size as u64;
        if let Some(descs) = self.multi.get(&frame) {
            let (mut skip, mut left, mut done) = (offset, len, 0);
            for d in descs {
                if left == 0 {
                    break;
                }
                if skip >= d.len {
                    skip -= d.len;
                    continue;
                }
                let take = (d.len - skip).min(left);
                let piece = RxDesc {
                    frame: d.frame,
                    offset: d.offset + skip,
                    len: take,
                };
                let b = self.sock.desc_bytes(&piece);
                f(b);
                done += b.len() as u32;
                left -= take;
                skip = 0;
            }
            return done;
        }
        let Ok(chunk) = u32::try_from(frame / fs) else {
            return 0;
        };
        let base = (frame % fs) as u32;
        let d = RxDesc {
            frame: chunk,
            offset: base.saturating_add(offset),
            len,
        };
        let b = self.sock.desc_bytes(&d);
        f(b);
        b.len() as u32
    }

    /// The bytes of a segment handed out by the endpoint.
    pub fn segment(&self, seg: &RxSegment, f: impl FnMut(&[u8])) -> u32 {
        self.for_each(seg.frame, seg.offset, seg.len, f)
    }
}

/// The consumer of one queue's connections.
pub trait StreamApp: Send + 'static {
    /// Called every round after received packets were processed (and on idle rounds): accept
    /// new connections (`ep.accept(port)`), read/release data of the `ready` connections.
    fn on_round(
        &mut self,
        ep: &mut Endpoint,
        frames: &FrameView<'_>,
        ready: &[ConnId],
        now: Instant,
    );
}

/// Counters of the glue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpQueueStats {
    pub packets: u64,
    pub multi_packets: u64,
    pub freed_at_once: u64,
    pub released_later: u64,
    pub unknown_releases: u64,
    pub tx_frames: u64,
    /// Control frames dropped because the TX path stayed full (TCP recovers).
    pub tx_dropped: u64,
}

/// A queue's TCP receive path: endpoint + app on top of the socket.
pub struct TcpQueue<A: StreamApp> {
    ep: Endpoint,
    app: A,
    origin: StdInstant,
    multi: HashMap<FrameId, Vec<RxDesc>>,
    scratch: Vec<u8>,
    released: Vec<FrameId>,
    ready: Vec<ConnId>,
    pending_tx: VecDeque<crate::wire::TxFrame>,
    stats: TcpQueueStats,
}

/// Control frames held back while the TX ring is full before the oldest are dropped.
const MAX_PENDING_TX: usize = 4096;

impl<A: StreamApp> TcpQueue<A> {
    /// `origin` is time zero of the endpoint's clock (share it between queues).
    pub fn new(ep: Endpoint, app: A, origin: StdInstant) -> Self {
        Self {
            ep,
            app,
            origin,
            multi: HashMap::new(),
            scratch: Vec::new(),
            released: Vec::new(),
            ready: Vec::new(),
            pending_tx: VecDeque::new(),
            stats: TcpQueueStats::default(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }
    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.ep
    }
    pub fn app(&self) -> &A {
        &self.app
    }
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }
    pub fn stats(&self) -> TcpQueueStats {
        self.stats
    }
    /// Multi-buffer packets the endpoint still references.
    pub fn multi_held(&self) -> usize {
        self.multi.len()
    }

    fn now(&self, at: StdInstant) -> Instant {
        Instant::from_nanos(at.saturating_duration_since(self.origin).as_nanos() as u64)
    }

    fn handle(&mut self, sock: &mut XskSocket, p: RxPacket, now: Instant) {
        self.stats.packets += 1;
        let fs = sock.config().frame_size;
        let id: FrameId = p.first.frame as u64 * fs as u64 + p.first.offset as u64;
        let ndesc = 1 + p.more.len() as u32;
        let disp = if p.more.is_empty() {
            let bytes = sock.desc_bytes(&p.first);
            self.ep.on_frame(now, id, bytes, fs)
        } else {
            self.stats.multi_packets += 1;
            self.scratch.clear();
            sock.gather(&p, &mut self.scratch);
            self.ep.on_frame(now, id, &self.scratch, fs * ndesc)
        };
        match disp {
            FrameDisposition::Free => {
                self.stats.freed_at_once += 1;
                sock.release_packet(&p);
            }
            FrameDisposition::Held => {
                if !p.more.is_empty() {
                    let mut all = Vec::with_capacity(ndesc as usize);
                    all.extend(p.descs().copied());
                    self.multi.insert(id, all);
                }
            }
        }
    }

    /// Run the app, return released frames, transmit, run timers.
    fn round(&mut self, sock: &mut XskSocket, at: StdInstant) {
        let now = self.now(at);
        if self.ep.poll_timeout().is_some_and(|d| d <= now) {
            self.ep.handle_timeout(now);
        }
        self.ready.clear();
        self.ep.take_ready(&mut self.ready);
        {
            let view = FrameView {
                sock,
                multi: &self.multi,
            };
            self.app.on_round(&mut self.ep, &view, &self.ready, now);
        }
        self.ep.flush(now);
        self.return_released(sock);
        self.transmit(sock);
    }

    fn return_released(&mut self, sock: &mut XskSocket) {
        self.ep.take_released(&mut self.released);
        let fs = sock.config().frame_size as u64;
        for id in self.released.drain(..) {
            self.stats.released_later += 1;
            if let Some(descs) = self.multi.remove(&id) {
                for d in descs {
                    let _ = sock.release(d.frame);
                }
            } else if sock.release((id / fs) as u32).is_err() {
                self.stats.unknown_releases += 1;
            }
        }
    }

    fn transmit(&mut self, sock: &mut XskSocket) {
        while let Some(f) = self.ep.pop_tx() {
            self.pending_tx.push_back(f);
        }
        while let Some(f) = self.pending_tx.front() {
            match sock.send(f.as_bytes()) {
                Ok(true) => {
                    self.stats.tx_frames += 1;
                    self.pending_tx.pop_front();
                }
                Ok(false) => {
                    // No frame or ring slot now: kick, reap, and try again next round.
                    let _ = sock.flush();
                    break;
                }
                Err(_) => {
                    self.stats.tx_dropped += 1;
                    self.pending_tx.pop_front();
                }
            }
        }
        while self.pending_tx.len() > MAX_PENDING_TX {
            self.pending_tx.pop_front();
            self.stats.tx_dropped += 1;
        }
    }
}

impl<A: StreamApp> QueueHandler for TcpQueue<A> {
    fn on_rx(&mut self, sock: &mut XskSocket, batch: &mut Vec<RxPacket>, at: StdInstant) {
        let now = self.now(at);
        for p in batch.drain(..) {
            self.handle(sock, p, now);
        }
        self.round(sock, at);
    }

    fn on_idle(&mut self, sock: &mut XskSocket, at: StdInstant) {
        self.round(sock, at);
    }

    fn on_stop(&mut self, sock: &mut XskSocket) {
        self.round(sock, StdInstant::now());
        let _ = sock.flush();
    }
}
