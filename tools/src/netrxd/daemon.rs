//! `netrxd run`: accept connections on the netrx service, pump each into its sink, serve stats,
//! and shut down cleanly on SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use parking_lot::Mutex;
use tracing::{debug, error, info, warn};

use super::config::Settings;
use super::rx::RxListener;
use super::rx_netrx::NetrxListener;
use super::sink::SinkFactory;
use super::stats::{self, CopyCounters, DaemonCounters, Snapshot, TcpCounters};
use super::workers::{Accepted, Workers, WORKERS};
use super::{rx_netrx, signals};

/// Runs until SIGINT/SIGTERM. Returns Ok after a clean shutdown.
pub fn run(settings: Settings) -> Result<()> {
    signals::install().context("cannot install signal handlers")?;
    let sinks = Arc::new(SinkFactory::new(settings.sink.clone())?);
    let listener = rx_netrx::bind_listener(&settings).with_context(|| {
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
    let _faults = match (settings.fault, listener.model()) {
        (Some(plan), Some(model)) => {
            warn!(fault = %plan, "injecting faults into the model engine (rehearsal)");
            Some(super::faults::Injector::start(
                plan,
                model,
                settings.queues,
            )?)
        }
        _ => None,
    };
    let pool = listener.buffers();
    let recv_size = listener.recv_size();
    let listener: Arc<Mutex<Option<NetrxListener>>> = Arc::new(Mutex::new(Some(listener)));
    let counters = Arc::new(DaemonCounters::default());
    let started = Instant::now();
    // The listener's copy counters are read under its lock by the stats threads; the accept loop
    // holds the lock only for short accept waits.
    let last_copy = Arc::new(Mutex::new((
        CopyCounters::default(),
        TcpCounters::default(),
    )));
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
                if let Some(l) = l.as_ref() {
                    if let Some(c) = l.copy_counters() {
                        *last_copy.lock() = (c, l.tcp_counters());
                    }
                }
            }
            (snap.copy, snap.tcp) = last_copy.lock().clone();
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
    let mut workers = Workers::start(WORKERS, pool, recv_size, counters.clone(), abort.clone())?;
    while !signals::stop_requested() {
        let got = match listener.lock().as_mut() {
            Some(l) => l.accept_stream(Duration::from_millis(100)),
            None => break,
        };
        match got {
            Ok(Some(stream)) => {
                let peer = Some(stream.peer_addr());
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                counters.active.fetch_add(1, Ordering::Relaxed);
                let sink = match sinks.open(peer) {
                    Ok(s) => s,
                    Err(e) => {
                        error!(
                            ?peer,
                            "cannot open a sink file: {e}; resetting the connection"
                        );
                        stream.abort();
                        counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                        counters.aborted.fetch_add(1, Ordering::Relaxed);
                        counters.active.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                debug!(?peer, "connection accepted");
                workers.submit(Accepted { stream, sink });
            }
            Ok(None) => {}
            Err(e) => {
                error!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let sig = signals::signal();
    info!(
        signal = sig,
        active = counters.active.load(Ordering::Relaxed),
        "stopping: no new connections; draining open ones for up to {} ms",
        settings.drain_timeout_ms
    );
    workers.close();
    let deadline = Instant::now() + Duration::from_millis(settings.drain_timeout_ms);
    while Instant::now() < deadline && !workers.finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Connections still open end now, their data kept as `.partial`.
    abort.store(true, Ordering::Relaxed);
    workers.join();
    let last = listener
        .lock()
        .as_ref()
        .and_then(|l| Some((l.copy_counters()?, l.tcp_counters())));
    if let Some(c) = last {
        *last_copy.lock() = c;
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
