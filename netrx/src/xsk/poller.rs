//! One poller thread per RX queue, each owning its socket and a handler.
//!
//! The handler is where the TCP core plugs in: it gets every received batch together with the
//! socket (to read frame bytes, release frames now or later, and queue TX frames), and an idle
//! callback for timers. The poller flushes TX, reaps completions and refills the fill ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::socket::{RxPacket, XskSocket};

/// Per-queue logic driven by a poller.
pub trait QueueHandler: Send + 'static {
    /// A batch of received packets. The handler takes the packets it keeps out of `batch` and
    /// releases their frames later with `sock.release*`; packets left in `batch` when this
    /// returns are released by the poller.
    fn on_rx(&mut self, sock: &mut XskSocket, batch: &mut Vec<RxPacket>, now: Instant);

    /// Called when a wait ended without packets (at least every `idle_wait`), for timers.
    fn on_idle(&mut self, _sock: &mut XskSocket, _now: Instant) {}

    /// Called once when the poller stops: release every held frame here.
    fn on_stop(&mut self, _sock: &mut XskSocket) {}
}

/// Any `FnMut(&mut XskSocket, &mut Vec<RxPacket>, Instant)` is a handler.
impl<F> QueueHandler for F
where
    F: FnMut(&mut XskSocket, &mut Vec<RxPacket>, Instant) + Send + 'static,
{
    fn on_rx(&mut self, sock: &mut XskSocket, batch: &mut Vec<RxPacket>, now: Instant) {
        self(sock, batch, now)
    }
}

/// Poller settings.
#[derive(Clone, Copy, Debug)]
pub struct PollerConfig {
    /// Packets per `recv`.
    pub batch: usize,
    /// How long one `poll()` waits for RX when idle.
    pub idle_wait: Duration,
    /// Spin (non-blocking recv) this many empty rounds before blocking in `poll()`.
    pub spin_rounds: u32,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            idle_wait: Duration::from_millis(5),
            spin_rounds: 16,
        }
    }
}

/// The running pollers.
pub struct Pollers<H: QueueHandler> {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(XskSocket, H)>>,
}

/// Start one thread per socket; `make` builds the handler for each queue.
pub fn spawn<H, M>(sockets: Vec<XskSocket>, cfg: PollerConfig, mut make: M) -> Pollers<H>
where
    H: QueueHandler,
    M: FnMut(u32) -> H,
{
    let stop = Arc::new(AtomicBool::new(false));
    let threads = sockets
        .into_iter()
        .map(|sock| {
            let handler = make(sock.queue());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("netrx-xsk-q{}", sock.queue()))
                .spawn(move || run(sock, handler, cfg, &stop))
                .expect("spawn poller thread")
        })
        .collect();
    Pollers { stop, threads }
}

fn run<H: QueueHandler>(
    mut sock: XskSocket,
    mut h: H,
    cfg: PollerConfig,
    stop: &AtomicBool,
) -> (XskSocket, H) {
    let mut batch = Vec::with_capacity(cfg.batch);
    let wait_ms = cfg.idle_wait.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut empty = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let n = sock.recv(&mut batch, cfg.batch);
        if n > 0 {
            empty = 0;
            h.on_rx(&mut sock, &mut batch, Instant::now());
            for p in batch.drain(..) {
                sock.release_packet(&p);
            }
        } else {
            empty += 1;
            if empty > cfg.spin_rounds {
                if !sock.wait_rx(wait_ms) {
                    h.on_idle(&mut sock, Instant::now());
                }
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(e) = sock.flush() {
            tracing::warn!(queue = sock.queue(), error = %e, "TX kick failed");
        }
    }
    h.on_stop(&mut sock);
    let _ = sock.flush();
    (sock, h)
}

impl<H: QueueHandler> Pollers<H> {
    /// Ask the threads to stop (they finish their current round).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stop and join; returns each queue's socket and handler (for accounting checks).
    pub fn stop(mut self) -> Vec<(XskSocket, H)> {
        self.signal_stop();
        std::mem::take(&mut self.threads)
            .into_iter()
            .filter_map(|t| match t.join() {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::error!("a poller thread panicked");
                    None
                }
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl<H: QueueHandler> Drop for Pollers<H> {
    fn drop(&mut self) {
        self.signal_stop();
    }
}
