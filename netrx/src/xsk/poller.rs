//! One poller thread per RX queue, each owning its socket and a handler: the only poller loop.
//!
//! The handler is where the per-queue core plugs in (the service's handler drives
//! [`crate::rxcore::RxCore`]): it gets every received batch together with the socket (to read
//! frame bytes, release frames now or later, and queue TX frames), and an idle callback for
//! timers and DMA completions. The poller spins a bounded number of empty rounds, then sleeps
//! in `poll()` on the socket and the handler's [`Waker`]; it kicks TX after every round.

use std::io;
use std::os::fd::AsRawFd;

use ioat_driver::vfio::EventFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

    /// Called after every round without packets (at least every `idle_wait`), for timers and
    /// DMA completions.
    fn on_idle(&mut self, _sock: &mut XskSocket, _now: Instant) {}

    /// Called once when the poller stops: release every held frame here.
    fn on_stop(&mut self, _sock: &mut XskSocket) {}

    /// False while work needs polling without RX (DMA in flight, accepts to hand over): the
    /// poller keeps spinning instead of sleeping.
    fn can_sleep(&self) -> bool {
        true
    }

    /// Lets other threads wake this poller when it sleeps (application requests).
    fn waker(&self) -> Option<&Waker> {
        None
    }
}

/// Wakes a sleeping poller: an eventfd plus a count of requests sent and not yet taken. A
/// sender counts its request, sends it, and writes the eventfd if the poller said it sleeps;
/// the poller says it sleeps, then sleeps only if no request is outstanding.
pub struct Waker {
    efd: EventFd,
    sleeping: AtomicBool,
    pending: AtomicUsize,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        Ok(Waker {
            efd: EventFd::new()?,
            sleeping: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
        })
    }

    /// Sends one request with `send` (which returns false if the poller is gone) and wakes
    /// the poller if it sleeps.
    pub fn send_with(&self, send: impl FnOnce() -> bool) -> bool {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if !send() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
        true
    }

    /// The poller took one request.
    pub fn taken(&self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the poller whether or not a request is outstanding (e.g. to stop it).
    pub fn wake(&self) {
        let _ = self.efd.signal();
    }

    /// Sleeps up to `timeout_ms` on `fd` (the socket) and the eventfd, unless a request is
    /// outstanding.
    fn sleep(&self, fd: i32, timeout_ms: i32) {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.pending.load(Ordering::SeqCst) == 0 {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.efd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
            if fds[1].revents != 0 {
                let _ = self.efd.try_read();
            }
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }
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
    /// Thread name prefix (the queue number follows).
    pub name: &'static str,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            idle_wait: Duration::from_millis(5),
            spin_rounds: 64,
            name: "netrx-q",
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
    let handlers: Vec<(XskSocket, H)> = sockets
        .into_iter()
        .map(|s| {
            let h = make(s.queue());
            (s, h)
        })
        .collect();
    spawn_handlers(handlers, cfg).expect("spawn poller thread")
}

/// Start one thread per (socket, handler).
pub fn spawn_handlers<H: QueueHandler>(
    queues: Vec<(XskSocket, H)>,
    cfg: PollerConfig,
) -> io::Result<Pollers<H>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut pollers = Pollers {
        stop: stop.clone(),
        threads: Vec::with_capacity(queues.len()),
    };
    for (sock, handler) in queues {
        let stop = stop.clone();
        let t = std::thread::Builder::new()
            .name(format!("{}{}", cfg.name, sock.queue()))
            .spawn(move || run(sock, handler, cfg, &stop))?;
        pollers.threads.push(t);
    }
    Ok(pollers)
}

fn run<H: QueueHandler>(
    mut sock: XskSocket,
    mut h: H,
    cfg: PollerConfig,
    stop: &AtomicBool,
) -> (XskSocket, H) {
    let mut batch = Vec::with_capacity(cfg.batch);
    let wait_ms = cfg.idle_wait.as_millis().clamp(1, i32::MAX as u128) as i32;
    if let Some(c) = sock.config().cpus {
        super::cpu::pin_or_warn(c.poller, "poller");
    }
    let mut empty = 0u32;
    while !stop.load(Ordering::Acquire) {
        let n = sock.recv(&mut batch, cfg.batch);
        if n > 0 {
            empty = 0;
            h.on_rx(&mut sock, &mut batch, Instant::now());
            for p in batch.drain(..) {
                sock.release_packet(&p);
            }
        } else {
            empty = empty.saturating_add(1);
            if h.can_sleep() && !sock.tx_busy() {
                // Spin a bounded budget (an empty round is a ring-index read), then block.
                if empty > cfg.spin_rounds {
                    match h.waker() {
                        Some(w) => w.sleep(sock.raw_fd(), wait_ms),
                        None => {
                            sock.wait_rx(wait_ms);
                        }
                    }
                }
            } else if empty > 4 {
                // Work in flight elsewhere (a DMA engine, the device model's thread, or a TX
                // kick running the peer's stack): poll it, but let it run.
                std::thread::yield_now();
            }
            h.on_idle(&mut sock, Instant::now());
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
    /// Ask the threads to stop (they finish their current round; a sleeping one within
    /// `idle_wait`).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
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
