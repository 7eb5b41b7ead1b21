//! `netrxd run`: accept connections on the netrx service, pump each into its sink, serve stats,
//! and shut down cleanly on SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use parking_lot::Mutex;
use tracing::{error, info, warn};

use super::config::Settings;
use super::rx::{pump, RxListener};
use super::sink::{Outcome, SinkFactory};
use super::stats::{self, CopyCounters, DaemonCounters, Snapshot};
use super::{rx_netrx, signals};

/// Runs until SIGINT/SIGTERM. Returns Ok after a clean shutdown.
pub fn run(settings: Settings) -> Result<()> {
    signals::install().context("cannot install signal handlers")?;
    let sinks = Arc::new(SinkFactory::new(settings.sink.clone())?);
    let listener = rx_netrx::bind(&settings).with_context(|| {
        format!(
            "cannot start receiving on {}:{} (as root; the device bound to vfio-pci first with \
             `ioat-ctl bind BDF` when --engine is a PCI address)",
            settings.iface, settings.port
        )
    })?;
    info!(
        iface = %settings.iface,
        port = settings.port,
        queues = settings.queues,
        engine = %settings.engine,
        policy = %settings.policy,
        sink = %settings.sink,
        "netrxd listening"
    );
    // `None` once shut down (dropping the listener detaches XDP and ends blocked receives).
    let listener: Arc<Mutex<Option<Box<dyn RxListener>>>> = Arc::new(Mutex::new(Some(listener)));
    let counters = Arc::new(DaemonCounters::default());
    let started = Instant::now();
    // The listener's copy counters are read under its lock by the stats threads; the accept loop
    // holds the lock only for short accept waits.
    let last_copy = Arc::new(Mutex::new(CopyCounters::default()));
    let snap_fn: stats::SnapshotFn = {
        let s = settings.clone();
        let counters = counters.clone();
        let listener = listener.clone();
        let last_copy = last_copy.clone();
        Arc::new(move || {
            let mut snap = Snapshot {
                iface: s.iface.clone(),
                port: s.port,
                queues: s.queues,
                engine: s.engine.to_string(),
                policy: s.policy.to_string(),
                sink: s.sink.to_string(),
                pid: std::process::id(),
                uptime_s: started.elapsed().as_secs_f64(),
                ..Snapshot::default()
            };
            snap.fill_counters(&counters);
            if let Some(l) = listener.try_lock_for(Duration::from_millis(300)) {
                if let Some(c) = l.as_ref().and_then(|l| l.copy_counters()) {
                    *last_copy.lock() = c;
                }
            }
            snap.copy = last_copy.lock().clone();
            snap
        })
    };
    let _stats_srv = stats::serve_unix(&settings.stats_socket, snap_fn.clone())?;
    info!(socket = %settings.stats_socket.display(), "stats socket ready (`netrxd stats`)");
    let _metrics_srv = match settings.metrics {
        Some(addr) => {
            let (srv, bound) = stats::serve_metrics(addr, snap_fn.clone())?;
            info!(%bound, "Prometheus metrics on http://{bound}/metrics");
            Some(srv)
        }
        None => None,
    };

    let abort = Arc::new(AtomicBool::new(false));
    let mut conns: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !signals::stop_requested() {
        let got = match listener.lock().as_mut() {
            Some(l) => l.accept(Duration::from_millis(100)),
            None => break,
        };
        match got {
            Ok(Some(conn)) => {
                let peer = conn.peer();
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                counters.active.fetch_add(1, Ordering::Relaxed);
                let sink = match sinks.open(peer) {
                    Ok(s) => s,
                    Err(e) => {
                        error!(
                            ?peer,
                            "cannot open a sink file: {e}; dropping the connection"
                        );
                        counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                        counters.aborted.fetch_add(1, Ordering::Relaxed);
                        counters.active.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                info!(?peer, "connection accepted");
                let counters = counters.clone();
                let abort = abort.clone();
                let h = std::thread::Builder::new()
                    .name("netrxd-conn".into())
                    .spawn(move || {
                        let r = pump(conn, sink, &counters, &abort);
                        counters.active.fetch_sub(1, Ordering::Relaxed);
                        let secs = r.active.as_secs_f64().max(1e-9);
                        let gbit = r.bytes as f64 * 8.0 / secs / 1e9;
                        match (&r.outcome, &r.error) {
                            (Outcome::Partial(p), e) => warn!(
                                peer = ?r.peer, bytes = r.bytes, file = %p.display(),
                                "connection cut short ({}); data kept as a .partial file",
                                e.as_deref().unwrap_or("no end of stream")
                            ),
                            (o, Some(e)) => warn!(peer = ?r.peer, bytes = r.bytes, ?o, "connection ended with an error: {e}"),
                            (Outcome::Complete(p), None) => info!(
                                peer = ?r.peer, bytes = r.bytes, gbit_s = format!("{gbit:.2}"),
                                file = %p.display(), "connection complete"
                            ),
                            (_, None) => info!(peer = ?r.peer, bytes = r.bytes, gbit_s = format!("{gbit:.2}"), "connection complete"),
                        }
                    })
                    .context("cannot spawn a connection thread")?;
                conns.push(h);
            }
            Ok(None) => {}
            Err(e) => {
                error!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        conns.retain(|h| !h.is_finished());
    }
    let sig = signals::signal();
    info!(
        signal = sig,
        active = counters.active.load(Ordering::Relaxed),
        "stopping: no new connections; draining open ones for up to {} ms",
        settings.drain_timeout_ms
    );
    let deadline = Instant::now() + Duration::from_millis(settings.drain_timeout_ms);
    while Instant::now() < deadline && conns.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    abort.store(true, Ordering::Relaxed);
    // Connections still receiving see the abort flag after their current receive; a receive
    // blocked waiting for data ends when the listener (its pollers) goes away.
    let grace = Instant::now() + Duration::from_millis(300);
    while Instant::now() < grace && conns.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let last = listener.lock().as_ref().and_then(|l| l.copy_counters());
    if let Some(c) = last {
        *last_copy.lock() = c;
    }
    if conns.iter().any(|h| !h.is_finished()) {
        drop(listener.lock().take());
    }
    for h in conns {
        let _ = h.join();
    }
    // Final counters into the log, then drop the listener: XDP detached, device released.
    let final_snap = snap_fn();
    info!(
        bytes = final_snap.bytes_received,
        completed = final_snap.connections_completed,
        aborted = final_snap.connections_aborted,
        files_complete = final_snap.files_complete,
        files_partial = final_snap.files_partial,
        dma_share = format!("{:.1}%", final_snap.copy.dma_share() * 100.0),
        "sinks flushed"
    );
    drop(_metrics_srv);
    drop(_stats_srv);
    drop(snap_fn);
    drop(listener.lock().take());
    info!("XDP detached, device released; bye");
    Ok(())
}
