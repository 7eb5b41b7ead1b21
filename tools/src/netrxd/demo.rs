//! `netrxd demo`: the seed's experiment in one command.
//!
//! Builds a sender and a receiver network namespace joined by a veth pair (the `netrx-tests`
//! harness, torn down by `Drop` also on error or Ctrl-C), then for each receive configuration runs
//! iperf 2 in the sender namespace with the seed's parameters (`-w 250K -l 2M`, time-bounded with
//! `-t`) against a receiver in the receiver namespace, and prints one row per configuration.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use netrx::copy::PolicyKind;
use netrx_tests::netns::{LinkOpts, TwoHost, RECEIVER_ADDR};
use serde::Serialize;

use super::config::{EngineSpec, Settings, SinkSpec};
use super::cputime;
use super::rx::{pump, KernelListener, RxListener};
use super::signals;
use super::sink::SinkFactory;
use super::stats::{CopyCounters, DaemonCounters};

/// The seed's iperf window (`-w 250K`): the sender's socket buffer and every receiver's rcvbuf.
pub const WINDOW: usize = 250 << 10;
/// The seed's iperf buffer length (`-l 2M`): the sender's write size and the receive size.
pub const BUF_LEN: usize = 2 << 20;
/// NET_DMA's rcvlowat row of the seed (`sk_rcvlowat = 200 KB`).
pub const LOWAT: usize = 200 << 10;
const BASE_PORT: u16 = 5001;

#[derive(Clone, Debug)]
pub struct DemoOpts {
    pub seconds: u64,
    pub json: bool,
    pub engine: EngineSpec,
    /// Receive buffer of every receiver (default [`WINDOW`], the seed's 250 KB).
    pub rcvbuf: usize,
}

/// One configuration of the table.
#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    kind: CaseKind,
}

#[derive(Clone, Debug)]
enum CaseKind {
    Netrx {
        policy: PolicyKind,
        rcvlowat: Option<usize>,
    },
    Kernel,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "cpu",
            kind: CaseKind::Netrx {
                policy: PolicyKind::Cpu,
                rcvlowat: None,
            },
        },
        Case {
            name: "netdma",
            kind: CaseKind::Netrx {
                policy: PolicyKind::NetDma,
                rcvlowat: None,
            },
        },
        Case {
            name: "netdma + rcvlowat 200 KB",
            kind: CaseKind::Netrx {
                policy: PolicyKind::NetDma,
                rcvlowat: Some(LOWAT),
            },
        },
        Case {
            name: "adaptive",
            kind: CaseKind::Netrx {
                policy: PolicyKind::Adaptive,
                rcvlowat: None,
            },
        },
        Case {
            name: "kernel socket",
            kind: CaseKind::Kernel,
        },
    ]
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub config: String,
    pub gbit_s: f64,
    /// Receive-side copy time / CPU time of the receive threads, % (None: not measurable).
    pub copy_share_pct: Option<f64>,
    /// Payload bytes moved by DMA, % (None for the kernel row).
    pub dma_share_pct: Option<f64>,
    /// Mean bytes per DMA descriptor (None without DMA).
    pub mean_dma_bytes: Option<f64>,
    /// CPU time of the receive threads / wall time, % (100% = one core busy).
    pub rx_cpu_pct: f64,
    pub bytes: u64,
    pub seconds: f64,
    pub wakeups: Option<[u64; 4]>,
    /// iperf's own report line (sender side).
    pub iperf: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub engine: String,
    pub sender: String,
    pub link: String,
    pub seconds_per_row: u64,
    pub rcvbuf: usize,
    pub rows: Vec<Row>,
}

/// Runs the demo; prints the table (or JSON) on stdout, progress on stderr.
pub fn run(opts: DemoOpts) -> Result<Report> {
    signals::install().context("cannot install signal handlers")?;
    preflight()?;
    let label = match &opts.engine {
        EngineSpec::Model { preset } => {
            format!("DMA timing simulated by the device model (I/OAT model, preset {preset})")
        }
        EngineSpec::Device { bdf } => format!("DMA by the I/OAT device {bdf} (VFIO)"),
        EngineSpec::Cpu | EngineSpec::Null => bail!(
            "the demo compares copy policies, so it needs a DMA engine: --engine model[:preset] \
             or --engine BDF (bound to vfio-pci with `ioat-ctl bind BDF`)"
        ),
    };
    let sender = format!(
        "iperf -c {RECEIVER_ADDR} -w 250K -l 2M -t {} (iperf 2, kernel TCP)",
        opts.seconds
    );
    let link = "veth between two network namespaces, MTU 1500; sender TSO/GSO and TX checksum \
                offload off for every row (native XDP on veth forces the peer's TSO off, so the \
                kernel row runs under the same sender conditions)"
        .to_string();
    progress(&format!(
        "netrxd demo: {} configurations x {} s; {label}",
        cases().len(),
        opts.seconds
    ));
    progress("setting up network namespaces and a veth pair ...");
    let topo = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        sender_tso_off: true,
        ..LinkOpts::default()
    })
    .context("cannot create the demo's network namespaces and veth pair (run as root)")?;
    let mut rows = Vec::new();
    let all = cases();
    for (i, case) in all.iter().enumerate() {
        if signals::stop_requested() {
            break;
        }
        progress(&format!(
            "[{}/{}] {}: {} s of iperf ...",
            i + 1,
            all.len(),
            case.name,
            opts.seconds
        ));
        let port = BASE_PORT + i as u16;
        let row = run_case(&topo, case, port, &opts)
            .with_context(|| format!("configuration `{}` failed", case.name))?;
        progress(&format!(
            "[{}/{}] {}: {:.2} Gbit/s ({} bytes in {:.2} s)",
            i + 1,
            all.len(),
            case.name,
            row.gbit_s,
            row.bytes,
            row.seconds
        ));
        rows.push(row);
    }
    drop(topo);
    if signals::stop_requested() {
        bail!("interrupted; namespaces, veth and XDP cleaned up");
    }
    Ok(Report {
        label,
        engine: opts.engine.to_string(),
        sender,
        link,
        seconds_per_row: opts.seconds,
        rcvbuf: opts.rcvbuf,
        rows,
    })
}

fn progress(msg: &str) {
    eprintln!("netrxd demo: {msg}");
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("netrxd demo needs root (it creates network namespaces and attaches XDP); run it with sudo");
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("iperf", "iperf"),
        ("ethtool", "ethtool"),
    ] {
        let found = std::process::Command::new(tool)
            .arg(if tool == "iperf" { "-v" } else { "-V" })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !found {
            bail!("`{tool}` not found; install it: apt-get install -y {pkg}");
        }
    }
    Ok(())
}

/// Threads whose CPU time counts as the receive core's: the service's pollers and our reader.
/// Not counted: the device model's engine thread (it plays the DMA hardware), iperf (another
/// process), and the demo's main thread.
fn is_receive_thread(tid: u32, name: &str) -> bool {
    tid != std::process::id() && !name.starts_with("ioat-model")
}

struct RecvResult {
    bytes: u64,
    active: Duration,
    copy: Option<CopyCounters>,
    rx_cpu_ns: u64,
}

fn run_case(topo: &TwoHost, case: &Case, port: u16, opts: &DemoOpts) -> Result<Row> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let abort = Arc::new(AtomicBool::new(false));
    let kind = case.kind.clone();
    let rcvbuf = opts.rcvbuf;
    let iface = topo.receiver_if.clone();
    let engine = opts.engine.clone();
    let ab = abort.clone();
    let recv_timeout = Duration::from_secs(opts.seconds + 20);
    let receiver = topo
        .receiver
        .spawn_thread(move || -> Result<RecvResult> {
            let listener: Result<Box<dyn RxListener>> = match kind {
                CaseKind::Kernel => KernelListener::bind(
                    SocketAddr::from((RECEIVER_ADDR, port)),
                    Some(rcvbuf),
                    BUF_LEN,
                )
                .map(|l| Box::new(l) as Box<dyn RxListener>)
                .map_err(|e| anyhow!("kernel listener: {e}")),
                CaseKind::Netrx { policy, rcvlowat } => {
                    let s = Settings {
                        iface,
                        port,
                        queues: 1,
                        // The same engine for every netrx row: policy `cpu` simply never uses it.
                        engine,
                        policy,
                        copybreak: None,
                        // Linux doubles SO_RCVBUF (sk_rcvbuf = 2 x the value set, for
                        // bookkeeping overhead); give netrx the same receive memory.
                        rcvbuf: Some(rcvbuf.saturating_mul(2)),
                        rcvlowat,
                        recv_size: BUF_LEN,
                        sink: SinkSpec::Discard,
                        log: "warn".into(),
                        metrics: None,
                        stats_socket: Default::default(),
                        drain_timeout_ms: 0,
                    };
                    super::rx_netrx::bind(&s)
                }
            };
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            // Shared with the watchdog: dropping the listener ends a receive blocked for data.
            let listener = Arc::new(Mutex::new(Some(listener)));
            let ab2 = ab.clone();
            let l2 = listener.clone();
            let wd = std::thread::spawn(move || {
                let t = Instant::now();
                while t.elapsed() < recv_timeout && !ab2.load(Ordering::Relaxed) {
                    if signals::stop_requested() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if !ab2.swap(true, Ordering::Relaxed) {
                    drop(l2.lock().take());
                }
            });
            let t0 = Instant::now();
            let conn = loop {
                if ab.load(Ordering::Relaxed) || signals::stop_requested() {
                    ab.store(true, Ordering::Relaxed);
                    let _ = wd.join();
                    bail!("stopped before the sender connected");
                }
                if t0.elapsed() > Duration::from_secs(15) {
                    ab.store(true, Ordering::Relaxed);
                    let _ = wd.join();
                    bail!("the sender did not connect within 15 s");
                }
                let got = match listener.lock().as_mut() {
                    Some(l) => l.accept(Duration::from_millis(100))?,
                    None => None,
                };
                if let Some(c) = got {
                    break c;
                }
            };
            let counters_of = |l: &Mutex<Option<Box<dyn RxListener>>>| {
                l.lock().as_ref().and_then(|l| l.copy_counters())
            };
            let copy0 = counters_of(&listener);
            let cpu0 = cputime::sample();
            let counters = DaemonCounters::default();
            let sink = SinkFactory::new(SinkSpec::Discard)?.open(None)?;
            let r = pump(conn, sink, &counters, &ab);
            let cpu1 = cputime::sample();
            let timed_out = ab.swap(true, Ordering::Relaxed);
            let _ = wd.join();
            // The pollers publish stats periodically: let the last ones land.
            std::thread::sleep(Duration::from_millis(250));
            let copy = match (copy0, counters_of(&listener)) {
                (Some(a), Some(b)) => Some(b.since(&a)),
                _ => None,
            };
            drop(listener.lock().take());
            if timed_out && !r.clean_eof {
                bail!(
                    "the transfer did not end within {} s ({} bytes received)",
                    recv_timeout.as_secs(),
                    r.bytes
                );
            }
            if !r.clean_eof {
                bail!(
                    "the stream did not end cleanly after {} bytes: {}",
                    r.bytes,
                    r.error.unwrap_or_default()
                );
            }
            Ok(RecvResult {
                bytes: r.bytes,
                active: r.active,
                copy,
                rx_cpu_ns: cputime::spent(&cpu0, &cpu1, is_receive_thread),
            })
        })
        .context("cannot start the receiver thread in the receiver namespace")?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = receiver.join();
            bail!("receiver did not start: {e}");
        }
        Err(_) => {
            abort.store(true, Ordering::Relaxed);
            let _ = receiver.join();
            bail!("receiver did not start within 30 s");
        }
    }
    let secs = opts.seconds.to_string();
    let addr = RECEIVER_ADDR.to_string();
    let p = port.to_string();
    let iperf = topo.sender.spawn(
        "iperf",
        &[
            "-c", &addr, "-p", &p, "-w", "250K", "-l", "2M", "-t", &secs, "-e",
        ],
    );
    let iperf = match iperf {
        Ok(c) => c,
        Err(e) => {
            abort.store(true, Ordering::Relaxed);
            let _ = receiver.join();
            bail!("cannot start iperf: {e} (apt-get install -y iperf)");
        }
    };
    let out = iperf.wait_timeout(Duration::from_secs(opts.seconds + 30));
    let rr = receiver
        .join()
        .map_err(|_| anyhow!("the receiver thread panicked"))?;
    let out = out.context("iperf did not finish")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rr = rr.with_context(|| format!("iperf said: {}{}", stdout.trim(), stderr.trim()))?;
    if !out.status.success() {
        bail!(
            "iperf failed ({}): {}{}",
            out.status,
            stdout.trim(),
            stderr.trim()
        );
    }
    let iperf_line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("bits/sec"))
        .unwrap_or("")
        .trim()
        .to_string();
    let secs = rr.active.as_secs_f64().max(1e-6);
    let gbit_s = rr.bytes as f64 * 8.0 / secs / 1e9;
    let rx_cpu_pct = rr.rx_cpu_ns as f64 / 1e9 / secs * 100.0;
    let (copy_share_pct, dma_share_pct, mean_dma_bytes, wakeups) = match &rr.copy {
        Some(c) => (
            (rr.rx_cpu_ns > 0).then(|| (c.copy_ns as f64 / rr.rx_cpu_ns as f64 * 100.0).min(100.0)),
            Some(c.dma_share() * 100.0),
            (c.dma_ops > 0).then(|| c.mean_dma_size()),
            Some([c.wake_full, c.wake_psh, c.wake_pressure, c.wake_lowat]),
        ),
        None => (None, None, None, None),
    };
    Ok(Row {
        config: case.name.to_string(),
        gbit_s,
        copy_share_pct,
        dma_share_pct,
        mean_dma_bytes,
        rx_cpu_pct,
        bytes: rr.bytes,
        seconds: secs,
        wakeups,
        iperf: iperf_line,
    })
}

fn opt(v: Option<f64>, prec: usize, unit: &str) -> String {
    match v {
        Some(x) => format!("{x:.prec$}{unit}"),
        None => "n/a".into(),
    }
}

/// The seed-style table.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!("sender: {}\n", r.sender));
    s.push_str(&format!("link:   {}\n", r.link));
    s.push_str(&format!(
        "rcvbuf: SO_RCVBUF {} bytes for every receiver (kernel: doubled to {} by Linux; netrx: the \
         same {} bytes, counted in 4 KiB frame truesize)\n",
        r.rcvbuf,
        r.rcvbuf * 2,
        r.rcvbuf * 2
    ));
    s.push_str(&format!("engine: {}\n\n", r.label));
    let head = [
        "configuration",
        "Gbit/s",
        "copy share",
        "DMA share",
        "mean DMA size",
        "rx CPU",
    ];
    let body: Vec<[String; 6]> = r
        .rows
        .iter()
        .map(|x| {
            [
                x.config.clone(),
                format!("{:.2}", x.gbit_s),
                opt(x.copy_share_pct, 1, " %"),
                opt(x.dma_share_pct, 1, " %"),
                opt(x.mean_dma_bytes, 0, " B"),
                format!("{:.0} %", x.rx_cpu_pct),
            ]
        })
        .collect();
    let mut w = head.map(|h| h.len());
    for b in &body {
        for (i, c) in b.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                l.push_str(&format!("{c:<width$}", width = w[0]));
            } else {
                l.push_str(&format!("  {c:>width$}", width = w[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    s.push_str(&line(&head.map(String::from)));
    s.push_str(&line(&w.map(|n| "-".repeat(n))));
    for b in &body {
        s.push_str(&line(b));
    }
    s.push_str(
        "\ncopy share: receive-side time spent copying (or driving DMA) / CPU time of the receive \
         threads;\n  n/a for the kernel socket, whose copy runs inside recv() where we cannot \
         separate it.\nrx CPU: CPU time of the receive threads / wall time (100 % = one core).\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shape() {
        let r = Report {
            label: "DMA timing simulated by the device model".into(),
            engine: "model:skx".into(),
            sender: "iperf".into(),
            link: "veth".into(),
            seconds_per_row: 3,
            rcvbuf: WINDOW,
            rows: vec![
                Row {
                    config: "netdma".into(),
                    gbit_s: 1.5,
                    copy_share_pct: Some(20.0),
                    dma_share_pct: Some(50.0),
                    mean_dma_bytes: Some(1448.0),
                    rx_cpu_pct: 90.0,
                    bytes: 1,
                    seconds: 3.0,
                    wakeups: None,
                    iperf: String::new(),
                },
                Row {
                    config: "kernel socket".into(),
                    gbit_s: 2.0,
                    copy_share_pct: None,
                    dma_share_pct: None,
                    mean_dma_bytes: None,
                    rx_cpu_pct: 80.0,
                    bytes: 1,
                    seconds: 3.0,
                    wakeups: None,
                    iperf: String::new(),
                },
            ],
        };
        let t = render(&r);
        assert!(t.contains("simulated by the device model"), "{t}");
        assert!(t.contains("1448 B"), "{t}");
        assert!(t.contains("n/a"), "{t}");
    }
}
