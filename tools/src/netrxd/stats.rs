//! Stats of a running daemon: a snapshot type, its table and Prometheus renderings, the Unix
//! stats socket (`netrxd stats`) and the loopback metrics endpoint (`--metrics`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// Declares [`CopyCounters`] with the named fields, each copied from the field of the same name
/// in [`netrx::copy::CopyStats`]: one list serves the struct, the conversion and the difference.
macro_rules! copy_counters {
    ($($field:ident),* $(,)?) => {
        /// Copy-path counters, as the service reports them (bytes by path, DMA ops, wakeups,
        /// copy time).
        #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
        pub struct CopyCounters {
            $(pub $field: u64,)*
        }

        impl CopyCounters {
            pub fn from_copy_stats(c: &netrx::copy::CopyStats) -> CopyCounters {
                CopyCounters {
                    $($field: c.$field,)*
                }
            }

            /// `self - earlier`, saturating (counters only grow).
            pub fn since(&self, e: &CopyCounters) -> CopyCounters {
                CopyCounters {
                    $($field: self.$field.saturating_sub(e.$field),)*
                }
            }
        }
    };
}

copy_counters!(
    bytes_cpu,
    bytes_dma,
    bytes_redo,
    direct_bytes,
    dma_ops,
    doorbells,
    dma_errors,
    dma_timeouts,
    cpu_redos,
    busy_fallbacks,
    wake_full,
    wake_psh,
    wake_pressure,
    wake_lowat,
    recvs,
    copy_ns,
);

impl CopyCounters {
    /// Share of payload bytes moved by DMA, 0..=1.
    pub fn dma_share(&self) -> f64 {
        let t = self.bytes_cpu + self.bytes_dma;
        if t == 0 {
            0.0
        } else {
            self.bytes_dma as f64 / t as f64
        }
    }

    pub fn mean_dma_size(&self) -> f64 {
        if self.dma_ops == 0 {
            0.0
        } else {
            self.bytes_dma as f64 / self.dma_ops as f64
        }
    }
}

/// Daemon-level counters, updated by the connection threads.
#[derive(Debug, Default)]
pub struct DaemonCounters {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub completed: AtomicU64,
    pub aborted: AtomicU64,
    pub bytes: AtomicU64,
    pub files_complete: AtomicU64,
    pub files_partial: AtomicU64,
    pub sink_errors: AtomicU64,
}

/// TCP admission and receive-memory counters of the endpoints, summed over the queues: what a
/// flood or memory pressure did (`docs/reliability.md`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TcpCounters {
    pub syns: u64,
    pub syn_backlog_drops: u64,
    pub syn_cookies_sent: u64,
    pub syn_cookies_ok: u64,
    pub syn_cookies_failed: u64,
    pub conn_limit_drops: u64,
    pub conns_reclaimed: u64,
    pub pressure_drops: u64,
    pub prune_runs: u64,
    pub ooo_pruned_frames: u64,
    pub frames_held: u64,
    pub frames_held_peak: u64,
    pub bad_checksums: u64,
    pub parse_errors: u64,
}

impl TcpCounters {
    /// Adds one queue's endpoint counters.
    pub fn add(&mut self, e: &netrx::tcp::EndpointStats) {
        self.syns += e.syns;
        self.syn_backlog_drops += e.syn_backlog_drops;
        self.syn_cookies_sent += e.syn_cookies_sent;
        self.syn_cookies_ok += e.syn_cookies_ok;
        self.syn_cookies_failed += e.syn_cookies_failed;
        self.conn_limit_drops += e.conn_limit_drops;
        self.conns_reclaimed += e.conns_reclaimed;
        self.pressure_drops += e.pressure_drops;
        self.prune_runs += e.prune_runs;
        self.ooo_pruned_frames += e.ooo_pruned_frames;
        self.frames_held += e.frames_held;
        self.frames_held_peak += e.frames_held_peak;
        self.bad_checksums += e.bad_checksums;
        self.parse_errors += e.parse_errors;
    }
}

/// One snapshot, as served on the stats socket (JSON) and rendered by `netrxd stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub iface: String,
    pub port: u16,
    pub queues: u32,
    pub engine: String,
    pub policy: String,
    pub sink: String,
    pub pid: u32,
    pub uptime_s: f64,
    pub connections_accepted: u64,
    pub connections_active: u64,
    pub connections_completed: u64,
    pub connections_aborted: u64,
    pub bytes_received: u64,
    pub files_complete: u64,
    pub files_partial: u64,
    pub sink_errors: u64,
    pub copy: CopyCounters,
    #[serde(default)]
    pub tcp: TcpCounters,
}

impl Snapshot {
    pub fn fill_counters(&mut self, c: &DaemonCounters) {
        self.connections_accepted = c.accepted.load(Ordering::Relaxed);
        self.connections_active = c.active.load(Ordering::Relaxed);
        self.connections_completed = c.completed.load(Ordering::Relaxed);
        self.connections_aborted = c.aborted.load(Ordering::Relaxed);
        self.bytes_received = c.bytes.load(Ordering::Relaxed);
        self.files_complete = c.files_complete.load(Ordering::Relaxed);
        self.files_partial = c.files_partial.load(Ordering::Relaxed);
        self.sink_errors = c.sink_errors.load(Ordering::Relaxed);
    }

    /// Human table (`netrxd stats`).
    pub fn table(&self) -> String {
        let c = &self.copy;
        let rows: Vec<(&str, String)> = vec![
            ("listening", format!("{}:{} ({} queue(s))", self.iface, self.port, self.queues)),
            ("engine / policy", format!("{} / {}", self.engine, self.policy)),
            ("sink", self.sink.clone()),
            ("pid / uptime", format!("{} / {:.0} s", self.pid, self.uptime_s)),
            (
                "connections",
                format!(
                    "{} accepted, {} active, {} completed, {} aborted",
                    self.connections_accepted,
                    self.connections_active,
                    self.connections_completed,
                    self.connections_aborted
                ),
            ),
            ("bytes received", self.bytes_received.to_string()),
            (
                "files",
                format!(
                    "{} complete, {} partial, {} sink errors",
                    self.files_complete, self.files_partial, self.sink_errors
                ),
            ),
            (
                "bytes by path",
                format!(
                    "cpu {} (redo {}), dma {} ({:.1}% dma)",
                    c.bytes_cpu,
                    c.bytes_redo,
                    c.bytes_dma,
                    c.dma_share() * 100.0
                ),
            ),
            (
                "dma ops",
                format!(
                    "{} ops, mean {:.0} B, {} doorbells, {} errors, {} timeouts, {} cpu redos, {} busy fallbacks",
                    c.dma_ops,
                    c.mean_dma_size(),
                    c.doorbells,
                    c.dma_errors,
                    c.dma_timeouts,
                    c.cpu_redos,
                    c.busy_fallbacks
                ),
            ),
            (
                "wakeups",
                format!(
                    "full {}, psh {}, pressure {}, lowat {}",
                    c.wake_full, c.wake_psh, c.wake_pressure, c.wake_lowat
                ),
            ),
            (
                "receives / copy time",
                format!("{} / {:.3} s", c.recvs, c.copy_ns as f64 / 1e9),
            ),
            (
                "tcp admission",
                format!(
                    "{} SYNs, {} SYN cookies sent ({} ok, {} failed), {} backlog drops, {} cap drops, {} idle reclaimed",
                    self.tcp.syns,
                    self.tcp.syn_cookies_sent,
                    self.tcp.syn_cookies_ok,
                    self.tcp.syn_cookies_failed,
                    self.tcp.syn_backlog_drops,
                    self.tcp.conn_limit_drops,
                    self.tcp.conns_reclaimed
                ),
            ),
            (
                "receive memory",
                format!(
                    "{} frames held (peak {}), {} pressure drops, {} prune runs ({} frames pruned)",
                    self.tcp.frames_held,
                    self.tcp.frames_held_peak,
                    self.tcp.pressure_drops,
                    self.tcp.prune_runs,
                    self.tcp.ooo_pruned_frames
                ),
            ),
            (
                "bad frames",
                format!(
                    "{} bad checksums, {} unparsable",
                    self.tcp.bad_checksums, self.tcp.parse_errors
                ),
            ),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = String::new();
        for (k, v) in rows {
            s.push_str(&format!("{k:<w$}  {v}\n"));
        }
        s
    }

    /// Prometheus text exposition format (0.0.4).
    pub fn prometheus(&self) -> String {
        let labels = format!(
            "iface=\"{}\",port=\"{}\",policy=\"{}\",engine=\"{}\"",
            esc(&self.iface),
            self.port,
            esc(&self.policy),
            esc(&self.engine)
        );
        let c = &self.copy;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, vals: &[(&str, f64)]| {
            out.push_str(&format!(
                "# HELP netrxd_{name} {help}\n# TYPE netrxd_{name} {kind}\n"
            ));
            for (extra, v) in vals {
                let l = if extra.is_empty() {
                    labels.clone()
                } else {
                    format!("{labels},{extra}")
                };
                out.push_str(&format!("netrxd_{name}{{{l}}} {v}\n"));
            }
        };
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            &[("", self.uptime_s)],
        );
        metric(
            "connections_total",
            "counter",
            "Connections by outcome.",
            &[
                ("state=\"accepted\"", self.connections_accepted as f64),
                ("state=\"completed\"", self.connections_completed as f64),
                ("state=\"aborted\"", self.connections_aborted as f64),
            ],
        );
        metric(
            "connections_active",
            "gauge",
            "Open connections.",
            &[("", self.connections_active as f64)],
        );
        metric(
            "received_bytes_total",
            "counter",
            "Payload bytes delivered to the sink.",
            &[("", self.bytes_received as f64)],
        );
        metric(
            "files_total",
            "counter",
            "Files written by a dir: sink.",
            &[
                ("state=\"complete\"", self.files_complete as f64),
                ("state=\"partial\"", self.files_partial as f64),
            ],
        );
        metric(
            "copy_bytes_total",
            "counter",
            "Payload bytes copied, by path.",
            &[
                ("path=\"cpu\"", c.bytes_cpu as f64),
                ("path=\"dma\"", c.bytes_dma as f64),
                ("path=\"redo\"", c.bytes_redo as f64),
            ],
        );
        metric(
            "dma_ops_total",
            "counter",
            "DMA descriptors completed.",
            &[("", c.dma_ops as f64)],
        );
        metric(
            "dma_doorbells_total",
            "counter",
            "Doorbells rung.",
            &[("", c.doorbells as f64)],
        );
        metric(
            "dma_errors_total",
            "counter",
            "DMA ops failed, timed out, redone by CPU, refused as busy.",
            &[
                ("kind=\"error\"", c.dma_errors as f64),
                ("kind=\"timeout\"", c.dma_timeouts as f64),
                ("kind=\"cpu_redo\"", c.cpu_redos as f64),
                ("kind=\"busy_fallback\"", c.busy_fallbacks as f64),
            ],
        );
        let t = &self.tcp;
        metric(
            "tcp_events_total",
            "counter",
            "TCP admission and receive-memory events (floods, pressure, bad frames).",
            &[
                ("event=\"syn\"", t.syns as f64),
                ("event=\"syn_cookie_sent\"", t.syn_cookies_sent as f64),
                ("event=\"syn_cookie_ok\"", t.syn_cookies_ok as f64),
                ("event=\"syn_cookie_failed\"", t.syn_cookies_failed as f64),
                ("event=\"syn_backlog_drop\"", t.syn_backlog_drops as f64),
                ("event=\"conn_limit_drop\"", t.conn_limit_drops as f64),
                ("event=\"conn_reclaimed\"", t.conns_reclaimed as f64),
                ("event=\"pressure_drop\"", t.pressure_drops as f64),
                ("event=\"prune_run\"", t.prune_runs as f64),
                ("event=\"ooo_frame_pruned\"", t.ooo_pruned_frames as f64),
                ("event=\"bad_checksum\"", t.bad_checksums as f64),
                ("event=\"parse_error\"", t.parse_errors as f64),
            ],
        );
        metric(
            "frames_held",
            "gauge",
            "UMEM frames held by the TCP endpoints (queued, out of order, being copied).",
            &[("", t.frames_held as f64)],
        );
        metric(
            "wakeups_total",
            "counter",
            "Reader wakeups by reason.",
            &[
                ("reason=\"full\"", c.wake_full as f64),
                ("reason=\"psh\"", c.wake_psh as f64),
                ("reason=\"pressure\"", c.wake_pressure as f64),
                ("reason=\"lowat\"", c.wake_lowat as f64),
            ],
        );
        metric(
            "receives_total",
            "counter",
            "Receive calls completed.",
            &[("", c.recvs as f64)],
        );
        metric(
            "copy_seconds_total",
            "counter",
            "Receive-core time spent copying or driving DMA.",
            &[("", c.copy_ns as f64 / 1e9)],
        );
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Produces a fresh snapshot.
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// A background server thread; stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    cleanup: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = self.cleanup.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Serves the JSON snapshot to every client of the Unix socket at `path` (one snapshot per
/// connection). Refuses to replace a socket another live daemon answers on.
pub fn serve_unix(path: &Path, snap: SnapshotFn) -> Result<Server> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} for the stats socket", dir.display()))?;
    }
    // Only a stale socket (one nobody answers on) may be replaced: never a file, a directory
    // or a live socket.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            let what = if m.is_dir() {
                "a directory"
            } else if m.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "a file that is not a socket"
            };
            return Err(anyhow!(
                "--stats-socket {} is {what}; netrxd replaces only a stale socket there. Pass \
                 another path (e.g. /run/netrxd/IFACE-PORT.sock) or move it away",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(anyhow!(
                "stats socket {} is in use: another netrxd serves this interface and port \
                 (stop it, or pass --stats-socket PATH)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale stats socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the stats socket {}", path.display()))?;
    l.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("netrxd-stats".into())
        .spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let body = serde_json::to_string(&snap()).unwrap_or_default();
                        let _ = s.write_all(body.as_bytes());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(Server {
        stop,
        thread: Some(thread),
        cleanup: Some(path.to_path_buf()),
    })
}

/// Reads one snapshot from a stats socket.
pub fn query_unix(path: &Path) -> Result<Snapshot> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to {} (is `netrxd run` running for that interface and port? \
             pass --socket PATH or --iface IF --port P)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    serde_json::from_str(&body).map_err(|e| anyhow!("bad answer from {}: {e}", path.display()))
}

/// Serves Prometheus text over HTTP/1.0 on a loopback address (checked by the caller too).
pub fn serve_metrics(addr: SocketAddr, snap: SnapshotFn) -> Result<(Server, SocketAddr)> {
    if !addr.ip().is_loopback() {
        return Err(anyhow!(
            "metrics address {addr} is not loopback; use 127.0.0.1:PORT"
        ));
    }
    let l = TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for metrics on {addr} (port in use?)"))?;
    let bound = l.local_addr()?;
    l.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("netrxd-metrics".into())
        .spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        // Read the request head (bounded); any path gets the metrics.
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        let t0 = Instant::now();
                        while head.len() < 16 << 10 && t0.elapsed() < Duration::from_secs(2) {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    head.extend_from_slice(&buf[..n]);
                                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                        break;
                                    }
                                }
                            }
                        }
                        let body = snap().prometheus();
                        let resp = format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok((
        Server {
            stop,
            thread: Some(thread),
            cleanup: None,
        },
        bound,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            iface: "eth1".into(),
            port: 5001,
            queues: 1,
            engine: "model:skx".into(),
            policy: "adaptive".into(),
            sink: "discard".into(),
            bytes_received: 1000,
            copy: CopyCounters {
                bytes_cpu: 600,
                bytes_dma: 400,
                dma_ops: 4,
                ..CopyCounters::default()
            },
            ..Snapshot::default()
        }
    }

    #[test]
    fn renderings() {
        let s = sample();
        let t = s.table();
        assert!(t.contains("40.0% dma"), "{t}");
        assert!(t.contains("mean 100 B"), "{t}");
        let p = s.prometheus();
        assert!(p.contains("netrxd_copy_bytes_total{iface=\"eth1\",port=\"5001\",policy=\"adaptive\",engine=\"model:skx\",path=\"dma\"} 400"), "{p}");
        assert!(p.contains("# TYPE netrxd_dma_ops_total counter"));
        // Floods and memory pressure are visible (they were not: issue 17).
        let mut s = sample();
        s.tcp.syn_cookies_sent = 7;
        s.tcp.prune_runs = 3;
        assert!(s.table().contains("7 SYN cookies sent"), "{}", s.table());
        assert!(s.table().contains("3 prune runs"), "{}", s.table());
        let p = s.prometheus();
        assert!(p.contains("event=\"syn_cookie_sent\"} 7"), "{p}");
        assert!(p.contains("# TYPE netrxd_frames_held gauge"), "{p}");
    }

    #[test]
    fn unix_socket_round_trip() {
        let path = std::env::temp_dir().join(format!("netrxd-stats-{}.sock", std::process::id()));
        let srv = serve_unix(&path, Arc::new(sample)).unwrap();
        let got = query_unix(&path).unwrap();
        assert_eq!(got, sample());
        // A second daemon on the same socket is refused.
        assert!(serve_unix(&path, Arc::new(sample)).is_err());
        drop(srv);
        assert!(!path.exists());
    }

    /// Regression: an existing regular file at the path was deleted, and a directory there
    /// gave a misleading "Address already in use". Only a stale socket is replaced.
    #[test]
    fn stats_socket_replaces_only_a_stale_socket() {
        let base = std::env::temp_dir().join(format!("netrxd-stats-safety-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let file = base.join("precious.txt");
        std::fs::write(&file, b"keep me").unwrap();
        let e = format!(
            "{:#}",
            serve_unix(&file, Arc::new(sample)).err().expect("refused")
        );
        assert!(
            e.contains("not a socket") && e.contains("precious.txt"),
            "{e}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let dir = base.join("adir");
        std::fs::create_dir(&dir).unwrap();
        let e = format!(
            "{:#}",
            serve_unix(&dir, Arc::new(sample)).err().expect("refused")
        );
        assert!(e.contains("a directory"), "{e}");
        assert!(dir.is_dir());
        // A stale socket (its server gone, the file left behind) is replaced.
        let stale = base.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let srv = serve_unix(&stale, Arc::new(sample)).unwrap();
        assert_eq!(query_unix(&stale).unwrap(), sample());
        drop(srv);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn metrics_http() {
        let (srv, addr) = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(sample)).unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.0 200 OK"), "{r}");
        assert!(r.contains("netrxd_received_bytes_total"), "{r}");
        drop(srv);
        assert!(serve_metrics("0.0.0.0:0".parse().unwrap(), Arc::new(sample)).is_err());
    }
}
