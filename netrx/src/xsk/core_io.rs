//! The I/O half of a queue driven by [`RxCore`]: received descriptors in, frames back to the
//! fill ring, control frames out through the TX ring. Shared by every handler that runs a core
//! on a poller thread (the service's, and the test harness's inline readers).

use std::collections::VecDeque;
use std::time::Instant as StdInstant;

use super::socket::{RxPacket, XskSocket};
use crate::copy::CopyEngine;
use crate::rxcore::{RxCore, RxDesc, UmemAddr};
use crate::tcp::Instant;
use crate::wire::TxFrame;

/// Control frames held back while the TX ring is full before the oldest are dropped.
const MAX_PENDING_TX: usize = 4096;

/// Transmit and release counters of the shell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    pub tx_frames: u64,
    /// Control frames dropped because the TX path stayed full (TCP recovers).
    pub tx_dropped: u64,
    /// Fill-ring releases the socket refused (a frame it did not hand out): always 0.
    pub bad_releases: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct CoreIo {
    origin: StdInstant,
    descs: Vec<RxDesc>,
    pending_tx: VecDeque<TxFrame>,
    stats: TxStats,
}

impl CoreIo {
    /// `origin` is time zero of the cores' clock (share it between queues).
    pub fn new(origin: StdInstant) -> Self {
        Self {
            origin,
            descs: Vec::new(),
            pending_tx: VecDeque::new(),
            stats: TxStats::default(),
        }
    }

    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// The core's time for a wall-clock instant.
    pub fn now(&self, at: StdInstant) -> Instant {
        Instant::from_nanos(at.saturating_duration_since(self.origin).as_nanos() as u64)
    }

    /// Feeds a received batch to the core (UMEM addresses of every descriptor).
    pub fn rx<E: CopyEngine, B>(
        &mut self,
        sock: &XskSocket,
        batch: &mut Vec<RxPacket>,
        core: &mut RxCore<E, B>,
        now: Instant,
    ) {
        let fs = u64::from(sock.config().frame_size);
        for p in batch.drain(..) {
            self.descs.clear();
            self.descs.extend(p.descs().map(|d| RxDesc {
                addr: UmemAddr(u64::from(d.frame) * fs + u64::from(d.offset)),
                len: d.len,
            }));
            core.handle_rx(now, &self.descs);
        }
    }

    /// Gives the frames the core released back to the fill ring and queues its frames to send.
    pub fn output<E: CopyEngine, B>(&mut self, sock: &mut XskSocket, core: &mut RxCore<E, B>) {
        let fs = u64::from(sock.config().frame_size);
        while let Some(UmemAddr(a)) = core.poll_fill() {
            if let Err(e) = sock.release((a / fs) as u32) {
                self.stats.bad_releases += 1;
                tracing::error!(queue = sock.queue(), addr = a, error = %e, "bad frame release");
            }
        }
        while let Some(f) = core.poll_transmit() {
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
