//! The receive side as the daemon and the demo see it: a listener that accepts connections and
//! connections that hand received bytes to a callback. Two implementations: the netrx service
//! (AF_XDP + copy engine, [`super::rx_netrx`]) and a kernel TCP socket (the demo's reference row).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sink::{ConnSink, Outcome};
use super::stats::{CopyCounters, DaemonCounters};

/// One accepted connection.
pub trait RxConn: Send {
    fn peer(&self) -> Option<SocketAddr>;
    /// Waits up to `timeout` for data and hands what arrived to `f` (possibly in several
    /// pieces). `Ok(0)`: clean end of stream. `Err(TimedOut | WouldBlock)`: nothing yet.
    fn recv_into(
        &mut self,
        timeout: Duration,
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<usize>;
    /// Closes with RST instead of FIN: the receiver could not keep what it acknowledged (its
    /// sink failed), so the sender must see an error, never a clean close.
    fn abort(self: Box<Self>);
}

/// A listening receiver.
pub trait RxListener: Send {
    /// Waits up to `timeout` for a connection.
    fn accept(&mut self, timeout: Duration) -> io::Result<Option<Box<dyn RxConn>>>;
    /// Copy-path counters (None for the kernel receiver: the kernel does not tell).
    fn copy_counters(&self) -> Option<CopyCounters>;
    /// Packet-path counters of the receive engine (None for the kernel receiver).
    fn path_counters(&self) -> Option<PathCounters> {
        None
    }
}

/// Packet-path counters of a netrx receiver, summed over its queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PathCounters {
    /// Frames the TCP endpoint took in (data segments and the sender's pure ACKs).
    pub frames_in: u64,
    /// Control frames sent (ACKs, window updates).
    pub tx_frames: u64,
    /// `sendto` kicks of the AF_XDP TX ring.
    pub tx_kicks: u64,
    /// RX ring reads that returned packets, and the packets they returned.
    pub rx_batches: u64,
    pub rx_packets: u64,
}

impl PathCounters {
    /// `self - earlier`, saturating.
    pub fn since(&self, e: &PathCounters) -> PathCounters {
        PathCounters {
            frames_in: self.frames_in.saturating_sub(e.frames_in),
            tx_frames: self.tx_frames.saturating_sub(e.tx_frames),
            tx_kicks: self.tx_kicks.saturating_sub(e.tx_kicks),
            rx_batches: self.rx_batches.saturating_sub(e.rx_batches),
            rx_packets: self.rx_packets.saturating_sub(e.rx_packets),
        }
    }
}

/// Kernel TCP receiver (std::net), reading with a fixed-size buffer.
pub struct KernelListener {
    l: TcpListener,
    buf_len: usize,
}

impl KernelListener {
    /// Binds `addr`; `rcvbuf` sets SO_RCVBUF on the listener (inherited by accepted sockets).
    pub fn bind(addr: SocketAddr, rcvbuf: Option<usize>, buf_len: usize) -> io::Result<Self> {
        let l = TcpListener::bind(addr)?;
        if let Some(b) = rcvbuf {
            let v: libc::c_int = b.min(i32::MAX as usize) as libc::c_int;
            // SAFETY: valid fd, pointer to a c_int of the given length.
            let rc = unsafe {
                libc::setsockopt(
                    l.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    &v as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        l.set_nonblocking(true)?;
        Ok(KernelListener { l, buf_len })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.l.local_addr()
    }
}

impl RxListener for KernelListener {
    fn accept(&mut self, timeout: Duration) -> io::Result<Option<Box<dyn RxConn>>> {
        let t0 = Instant::now();
        loop {
            match self.l.accept() {
                Ok((s, peer)) => {
                    s.set_nonblocking(false)?;
                    return Ok(Some(Box::new(KernelConn {
                        s,
                        peer,
                        buf: vec![0u8; self.buf_len],
                    })));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if t0.elapsed() >= timeout {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
    fn copy_counters(&self) -> Option<CopyCounters> {
        None
    }
}

struct KernelConn {
    s: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
}

impl RxConn for KernelConn {
    fn peer(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    fn recv_into(
        &mut self,
        timeout: Duration,
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        self.s
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let n = self.s.read(&mut self.buf)?;
        f(&self.buf[..n])?;
        Ok(n)
    }
    fn abort(self: Box<Self>) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd, pointer to a linger of the given length. SO_LINGER 0: close sends RST.
        unsafe {
            libc::setsockopt(
                self.s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
}

/// What one connection delivered.
#[derive(Debug, Clone)]
pub struct ConnReport {
    pub peer: Option<SocketAddr>,
    pub bytes: u64,
    /// From the first byte to end of stream (or abort).
    pub active: Duration,
    pub outcome: Outcome,
    pub clean_eof: bool,
    pub error: Option<String>,
}

/// Moves a connection's bytes into its sink until end of stream, an error, or `abort`.
/// On clean EOF the sink is finished (file renamed into place); otherwise it is aborted (the
/// file stays `.partial`).
pub fn pump(
    mut conn: Box<dyn RxConn>,
    mut sink: ConnSink,
    counters: &DaemonCounters,
    abort: &Arc<AtomicBool>,
) -> ConnReport {
    let peer = conn.peer();
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let mut sink_err: Option<io::Error> = None;
    let end: Result<(), String> = loop {
        if abort.load(Ordering::Relaxed) {
            break Err("daemon shutting down before the sender finished".into());
        }
        let r = conn.recv_into(Duration::from_millis(100), &mut |d: &[u8]| {
            if d.is_empty() {
                return Ok(());
            }
            first.get_or_insert_with(Instant::now);
            bytes += d.len() as u64;
            counters.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            match sink.write(d) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let msg = e.to_string();
                    sink_err = Some(e);
                    Err(io::Error::other(msg))
                }
            }
        });
        match r {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    let failed = sink_err.is_some();
    let r = settle(peer, bytes, first, sink, end, sink_err, counters);
    if failed {
        conn.abort();
    }
    r
}

/// Ends a connection's sink and counts the outcome. On a clean end of stream the file is
/// finished (renamed into place); otherwise it is kept as `.partial`. `sink_err`: a write
/// into the sink failed (the caller resets the connection: the sender must not see a clean
/// close for data that was acknowledged and then lost).
pub fn settle(
    peer: Option<SocketAddr>,
    bytes: u64,
    first: Option<Instant>,
    sink: ConnSink,
    end: Result<(), String>,
    sink_err: Option<io::Error>,
    counters: &DaemonCounters,
) -> ConnReport {
    let active = first.map(|t| t.elapsed()).unwrap_or_default();
    let end = match (&sink_err, end) {
        (Some(e), _) => Err(format!("the sink failed: {e}; the connection is reset")),
        (None, end) => end,
    };
    if sink_err.is_some() {
        counters.sink_errors.fetch_add(1, Ordering::Relaxed);
    }
    let clean = end.is_ok();
    let fin = if clean { sink.finish() } else { sink.abort() };
    let (outcome, error) = match (fin, end) {
        (Ok(o), Ok(())) => (o, None),
        (Ok(o), Err(e)) => (o, Some(e)),
        (Err(e), Ok(())) => {
            counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            (
                Outcome::Discarded,
                Some(format!("finishing the file failed: {e}")),
            )
        }
        (Err(e), Err(e0)) => (Outcome::Discarded, Some(format!("{e0}; then {e}"))),
    };
    match &outcome {
        Outcome::Complete(_) => counters.files_complete.fetch_add(1, Ordering::Relaxed),
        Outcome::Partial(_) => counters.files_partial.fetch_add(1, Ordering::Relaxed),
        Outcome::Discarded => 0,
    };
    if clean && error.is_none() {
        counters.completed.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.aborted.fetch_add(1, Ordering::Relaxed);
    }
    ConnReport {
        peer,
        bytes,
        active,
        outcome,
        clean_eof: clean,
        error,
    }
}

/// The log line of a finished connection.
pub fn log_report(r: &ConnReport) {
    use tracing::{error, info, warn};
    let secs = r.active.as_secs_f64().max(1e-9);
    let gbit = format!("{:.2}", r.bytes as f64 * 8.0 / secs / 1e9);
    match (&r.outcome, &r.error) {
        (Outcome::Partial(p), Some(e)) if e.starts_with("the sink failed") => error!(
            peer = ?r.peer, bytes = r.bytes, file = %p.display(),
            "{e}; what was stored is kept as this .partial file"
        ),
        (Outcome::Partial(p), e) => warn!(
            peer = ?r.peer, bytes = r.bytes, file = %p.display(),
            "connection cut short ({}); data kept as a .partial file",
            e.as_deref().unwrap_or("no end of stream")
        ),
        (o, Some(e)) => {
            warn!(peer = ?r.peer, bytes = r.bytes, ?o, "connection ended with an error: {e}")
        }
        (Outcome::Complete(p), None) => info!(
            peer = ?r.peer, bytes = r.bytes, gbit_s = gbit,
            file = %p.display(), "connection complete"
        ),
        (_, None) => info!(peer = ?r.peer, bytes = r.bytes, gbit_s = gbit, "connection complete"),
    }
}
