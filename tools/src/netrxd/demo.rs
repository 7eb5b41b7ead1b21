//! `netrxd demo`: the seed's experiment in one command.
//!
//! Builds a sender and a receiver network namespace joined by a veth pair ([`netrx::netns`],
//! torn down by `Drop` also on error or Ctrl-C), then for each receive configuration runs a
//! kernel-TCP sender in the sender namespace with the seed's parameters (iperf 2's `-w 250K -l 2M`,
//! time-bounded with `-t`; the built-in sender of [`super::sender`] with the same parameters when
//! iperf 2 is not installed) against a receiver in the receiver namespace, and prints one row per
//! configuration (the median of `--repeats` runs, with min and max).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use netrx::copy::PolicyKind;
use netrx::netns::{LinkOpts, TwoHost, RECEIVER_ADDR};
use serde::Serialize;

use super::config::{EngineSpec, Settings, SinkSpec};
use super::cputime;
use super::rx::{pump, KernelListener, RxListener};
use super::sender::{Sender, SenderChoice};
use super::signals;
use super::sink::SinkFactory;
use super::stats::{CopyCounters, DaemonCounters};
use netrx::service::Placement;

/// The seed's iperf window (`-w 250K`): the sender's socket buffer and every receiver's rcvbuf.
pub const WINDOW: usize = 250 << 10;
/// The seed's iperf buffer length (`-l 2M`): the sender's write size and the receive size.
pub const BUF_LEN: usize = 2 << 20;
/// NET_DMA's rcvlowat row of the seed (`sk_rcvlowat = 200 KB`).
pub const LOWAT: usize = 200 << 10;
const BASE_PORT: u16 = 5000;
/// The hidden `netrxd` subcommand that runs the built-in sender.
pub const SEND_SUBCOMMAND: &str = "__send-tcp";

#[derive(Clone, Debug)]
pub struct DemoOpts {
    pub seconds: u64,
    pub json: bool,
    pub engine: EngineSpec,
    /// Receive buffer of every receiver (default [`WINDOW`], the seed's 250 KB).
    pub rcvbuf: usize,
    /// iperf 2 or the built-in sender.
    pub sender: SenderChoice,
    /// Runs per configuration (interleaved: all configurations once, then again).
    pub repeats: usize,
    /// The sender's socket buffer (iperf `-w`; the seed's [`WINDOW`]).
    pub sender_window: usize,
    /// Where netrx's poller and TX kicker run (`auto`: different CPUs).
    pub cpus: Placement,
}

/// One configuration of the table.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub kind: CaseKind,
}

#[derive(Clone, Debug)]
pub enum CaseKind {
    Netrx {
        policy: PolicyKind,
        rcvlowat: Option<usize>,
    },
    Kernel,
    /// The kernel socket with an XDP program returning XDP_PASS attached to the receiving veth
    /// in native mode: the kernel pays the same veth XDP path that netrx does.
    KernelXdpPass,
}

pub fn cases() -> Vec<Case> {
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
    /// Median over the runs.
    pub gbit_s: f64,
    /// Lowest and highest of the runs (equal to `gbit_s` with one run).
    pub gbit_s_min: f64,
    pub gbit_s_max: f64,
    /// Every run's Gbit/s, in run order.
    pub runs_gbit_s: Vec<f64>,
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
    /// The sender's own report line (iperf 2's, or the built-in sender's in the same shape), of
    /// the last run.
    pub sender_report: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub engine: String,
    /// `iperf` or `builtin`.
    pub sender_kind: String,
    /// The sender and its parameters, as printed.
    pub sender: String,
    pub link: String,
    pub seconds_per_row: u64,
    pub repeats: usize,
    pub rcvbuf: usize,
    /// Where netrx's poller and TX kicker ran (`auto`, `float` or a CPU list).
    pub cpus: String,
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
    let sender_used = super::sender::choose(opts.sender)?;
    let sender = match sender_used {
        Sender::Iperf2 => format!(
            "iperf -c {RECEIVER_ADDR} -w 250K -l 2M -t {} ({}, kernel TCP)",
            opts.seconds,
            super::sender::iperf2_version().unwrap_or_else(|| "iperf 2".into())
        ),
        Sender::Builtin => format!(
            "netrxd's built-in kernel-TCP sender to {RECEIVER_ADDR}: SO_SNDBUF {WINDOW}, {BUF_LEN}-byte \
             writes, {} s (iperf 2's -w 250K -l 2M -t {}; {})",
            opts.seconds,
            opts.seconds,
            if opts.sender == SenderChoice::Builtin {
                "chosen with --sender builtin"
            } else {
                "iperf 2 is not installed"
            }
        ),
    };
    let link = "veth between two network namespaces, MTU 1500; sender TSO/GSO and TX checksum \
                offload off for every row (native XDP on veth forces the peer's TSO off, so the \
                kernel row runs under the same sender conditions)"
        .to_string();
    let repeats = opts.repeats.max(1);
    progress(&format!(
        "{} configurations x {} s x {repeats} run(s); {label}",
        cases().len(),
        opts.seconds
    ));
    progress(&format!("sender: {sender}"));
    progress("setting up network namespaces and a veth pair ...");
    let topo = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        sender_tso_off: true,
        ..LinkOpts::default()
    })
    .context("cannot create the demo's network namespaces and veth pair (run as root)")?;
    let all = cases();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); all.len()];
    let total = all.len() * repeats;
    'outer: for rep in 0..repeats {
        for (i, case) in all.iter().enumerate() {
            if signals::stop_requested() {
                break 'outer;
            }
            let n = rep * all.len() + i + 1;
            progress(&format!(
                "[{n}/{total}] {}: {} s of {} ...",
                case.name,
                opts.seconds,
                sender_used.kind()
            ));
            // A fresh port per run: no TIME_WAIT or late segment of an earlier run can interfere.
            let port = BASE_PORT + n as u16;
            let run = run_case(&topo, case, port, &opts, sender_used)
                .with_context(|| format!("configuration `{}` failed", case.name))?;
            progress(&format!(
                "[{n}/{total}] {}: {:.2} Gbit/s ({} bytes in {:.2} s)",
                case.name, run.gbit_s, run.bytes, run.seconds
            ));
            runs[i].push(run);
        }
    }
    let rows: Vec<Row> = all
        .iter()
        .zip(runs)
        .filter(|(_, r)| !r.is_empty())
        .map(|(c, r)| aggregate(c.name, r))
        .collect();
    drop(topo);
    if signals::stop_requested() {
        bail!("interrupted; namespaces, veth and XDP cleaned up");
    }
    Ok(Report {
        label,
        engine: opts.engine.to_string(),
        sender_kind: sender_used.kind().to_string(),
        sender,
        link,
        seconds_per_row: opts.seconds,
        repeats,
        rcvbuf: opts.rcvbuf,
        cpus: opts.cpus.to_string(),
        rows,
    })
}

fn progress(msg: &str) {
    eprintln!("netrxd demo: {msg}");
}

pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("netrxd demo needs root (it creates network namespaces and attaches XDP); run it with sudo");
    }
    // `ip` (iproute2) builds the namespaces and the veth pair; offloads are set by ioctl and the
    // sender is iperf 2 or built in, so nothing else is needed.
    let found = std::process::Command::new("ip")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        bail!("`ip` not found; install it: apt-get install -y iproute2");
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
    /// `/proc/net/snmp` Tcp InSegs and OutSegs of the receiver namespace over the transfer.
    snmp: Option<(u64, u64)>,
    path: Option<super::rx::PathCounters>,
}

/// One run of one configuration.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub gbit_s: f64,
    pub copy_share_pct: Option<f64>,
    pub dma_share_pct: Option<f64>,
    pub mean_dma_bytes: Option<f64>,
    pub rx_cpu_pct: f64,
    pub bytes: u64,
    pub seconds: f64,
    pub wakeups: Option<[u64; 4]>,
    pub sender_report: String,
    /// Copy-path counters of the netrx service over the transfer (None for kernel rows).
    pub copy: Option<CopyCounters>,
    /// Kernel TCP segments received / sent in the receiver namespace (`/proc/net/snmp`); they
    /// count only kernel-stack traffic, so they describe the kernel rows.
    pub snmp_in_segs: Option<u64>,
    pub snmp_out_segs: Option<u64>,
    /// Packet-path counters of the netrx service over the transfer (None for kernel rows).
    pub path: Option<super::rx::PathCounters>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.flatten().collect();
    (!v.is_empty()).then(|| median(v))
}

/// A row from the runs of one configuration: every column is the median over the runs
/// (bytes and seconds summed, wakeups summed), with the bandwidth's min and max.
fn aggregate(name: &str, runs: Vec<Run>) -> Row {
    let g: Vec<f64> = runs.iter().map(|r| r.gbit_s).collect();
    let wakeups = runs.iter().filter_map(|r| r.wakeups).reduce(|a, b| {
        let mut s = a;
        for (x, y) in s.iter_mut().zip(b) {
            *x += y;
        }
        s
    });
    Row {
        config: name.to_string(),
        gbit_s: median(g.clone()),
        gbit_s_min: g.iter().copied().fold(f64::INFINITY, f64::min),
        gbit_s_max: g.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        copy_share_pct: median_opt(runs.iter().map(|r| r.copy_share_pct)),
        dma_share_pct: median_opt(runs.iter().map(|r| r.dma_share_pct)),
        mean_dma_bytes: median_opt(runs.iter().map(|r| r.mean_dma_bytes)),
        rx_cpu_pct: median(runs.iter().map(|r| r.rx_cpu_pct).collect()),
        bytes: runs.iter().map(|r| r.bytes).sum(),
        seconds: runs.iter().map(|r| r.seconds).sum(),
        wakeups,
        sender_report: runs
            .last()
            .map(|r| r.sender_report.clone())
            .unwrap_or_default(),
        runs_gbit_s: g,
    }
}

/// Tcp InSegs and OutSegs from the text of `/proc/net/snmp`.
pub fn parse_snmp_tcp(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let head: Vec<&str> = lines.next()?.split_whitespace().collect();
    let vals: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |k: &str| -> Option<u64> {
        let i = head.iter().position(|h| *h == k)?;
        vals.get(i)?.parse().ok()
    };
    Some((get("InSegs")?, get("OutSegs")?))
}

/// The calling thread's network namespace's Tcp InSegs and OutSegs.
fn snmp_tcp_now() -> Option<(u64, u64)> {
    parse_snmp_tcp(&std::fs::read_to_string("/proc/thread-self/net/snmp").ok()?)
}

/// One run of `case`: a receiver in the receiver namespace, the sender in the sender namespace.
pub fn run_case(
    topo: &TwoHost,
    case: &Case,
    port: u16,
    opts: &DemoOpts,
    sender: Sender,
) -> Result<Run> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let abort = Arc::new(AtomicBool::new(false));
    let kind = case.kind.clone();
    let rcvbuf = opts.rcvbuf;
    let iface = topo.receiver_if.clone();
    let engine = opts.engine.clone();
    let cpus = opts.cpus.clone();
    let ab = abort.clone();
    let recv_timeout = Duration::from_secs(opts.seconds + 20);
    let receiver = topo
        .receiver
        .spawn_thread(move || -> Result<RecvResult> {
            // Kept for the whole run: dropping the link detaches the program.
            let mut _xdp_pass = None;
            if let CaseKind::KernelXdpPass = kind {
                match attach_pass(&iface) {
                    Ok(l) => _xdp_pass = Some(l),
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Err(e);
                    }
                }
            }
            let listener: Result<Box<dyn RxListener>> = match kind {
                CaseKind::Kernel | CaseKind::KernelXdpPass => KernelListener::bind(
                    SocketAddr::from((RECEIVER_ADDR, port)),
                    Some(rcvbuf),
                    BUF_LEN,
                )
                .map(|l| Box::new(l) as Box<dyn RxListener>)
                .map_err(|e| anyhow!("kernel listener: {e}")),
                CaseKind::Netrx { policy, rcvlowat } => {
                    let s = Settings {
                        cpus,
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
                        sg: super::config::SgMode::Auto,
                        max_connections: super::config::MAX_CONNECTIONS_DEFAULT as usize,
                        fault: None,
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
            let path_of = |l: &Mutex<Option<Box<dyn RxListener>>>| {
                l.lock().as_ref().and_then(|l| l.path_counters())
            };
            let path0 = path_of(&listener);
            let snmp0 = snmp_tcp_now();
            let cpu0 = cputime::sample();
            let counters = DaemonCounters::default();
            let sink = SinkFactory::new(SinkSpec::Discard)?.open(None)?;
            let r = pump(conn, sink, &counters, &ab);
            let cpu1 = cputime::sample();
            let snmp = match (snmp0, snmp_tcp_now()) {
                (Some(a), Some(b)) => Some((b.0.wrapping_sub(a.0), b.1.wrapping_sub(a.1))),
                _ => None,
            };
            let timed_out = ab.swap(true, Ordering::Relaxed);
            let _ = wd.join();
            // The pollers publish stats periodically: let the last ones land.
            std::thread::sleep(Duration::from_millis(250));
            let copy = match (copy0, counters_of(&listener)) {
                (Some(a), Some(b)) => Some(b.since(&a)),
                _ => None,
            };
            let path = match (path0, path_of(&listener)) {
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
                snmp,
                path,
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
    let window = opts.sender_window.to_string();
    let addr = RECEIVER_ADDR.to_string();
    let p = port.to_string();
    let (prog, args): (String, Vec<String>) = match sender {
        Sender::Iperf2 => (
            "iperf".into(),
            [
                "-c", &addr, "-p", &p, "-w", &window, "-l", "2M", "-t", &secs, "-e",
            ]
            .map(String::from)
            .to_vec(),
        ),
        // This very binary (even if the file was rebuilt meanwhile), in the sender namespace.
        Sender::Builtin => (
            format!("/proc/{}/exe", std::process::id()),
            vec![
                SEND_SUBCOMMAND.into(),
                "--to".into(),
                format!("{addr}:{p}"),
                "--sndbuf".into(),
                window.clone(),
                "--len".into(),
                BUF_LEN.to_string(),
                "--seconds".into(),
                secs.clone(),
            ],
        ),
    };
    let name = sender.kind();
    let child = match topo.sender.spawn(&prog, &args) {
        Ok(c) => c,
        Err(e) => {
            abort.store(true, Ordering::Relaxed);
            let _ = receiver.join();
            bail!("cannot start the sender ({name}): {e}");
        }
    };
    let out = child.wait_timeout(Duration::from_secs(opts.seconds + 30));
    let rr = receiver
        .join()
        .map_err(|_| anyhow!("the receiver thread panicked"))?;
    let out = out.with_context(|| format!("the sender ({name}) did not finish"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rr = rr.with_context(|| {
        format!(
            "the sender ({name}) said: {}{}",
            stdout.trim(),
            stderr.trim()
        )
    })?;
    if !out.status.success() {
        bail!(
            "the sender ({name}) failed ({}): {}{}",
            out.status,
            stdout.trim(),
            stderr.trim()
        );
    }
    let sender_line = stdout
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
    Ok(Run {
        gbit_s,
        copy_share_pct,
        dma_share_pct,
        mean_dma_bytes,
        rx_cpu_pct,
        bytes: rr.bytes,
        seconds: secs,
        wakeups,
        sender_report: sender_line,
        snmp_in_segs: rr.snmp.map(|s| s.0),
        snmp_out_segs: rr.snmp.map(|s| s.1),
        copy: rr.copy,
        path: rr.path,
    })
}

/// Attaches a pass-only XDP program to `iface` (of the calling thread's namespace) in native
/// mode; detached when the link is dropped.
fn attach_pass(iface: &str) -> Result<netrx::xsk::XdpLink> {
    use netrx::xsk::{iface, insn, AttachMode, XdpLink, XdpProgram};
    let info = iface::lookup(iface).map_err(|e| anyhow!("{iface}: {e}"))?;
    // With frags the program also takes jumbo (multi-buffer) frames.
    let prog = XdpProgram::load(&insn::pass_program(), true, "netrx_pass")
        .map_err(|e| anyhow!("cannot load the XDP_PASS program: {e}"))?;
    XdpLink::attach(&prog, info.ifindex, iface, AttachMode::Native)
        .map_err(|e| anyhow!("cannot attach the XDP_PASS program to {iface} (native): {e}"))
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
         same {} bytes, counted in frame truesize: 2 KiB UMEM frames at MTU 1500)\n",
        r.rcvbuf,
        r.rcvbuf * 2,
        r.rcvbuf * 2
    ));
    s.push_str(&format!("engine: {}\n", r.label));
    s.push_str(&format!(
        "threads: netrx's poller and TX kicker --cpus {}\n",
        r.cpus
    ));
    if r.repeats > 1 {
        s.push_str(&format!(
            "runs:   {} per configuration, interleaved; each column is the median, min-max of the \
             bandwidth beside it\n",
            r.repeats
        ));
    }
    s.push('\n');
    let head = [
        "configuration",
        "Gbit/s",
        "min-max",
        "copy share",
        "DMA share",
        "mean DMA size",
        "rx CPU",
    ];
    let body: Vec<[String; 7]> = r
        .rows
        .iter()
        .map(|x| {
            [
                x.config.clone(),
                format!("{:.2}", x.gbit_s),
                format!("{:.2}-{:.2}", x.gbit_s_min, x.gbit_s_max),
                opt(x.copy_share_pct, 1, " %"),
                opt(x.dma_share_pct, 1, " %"),
                opt(x.mean_dma_bytes, 0, " B"),
                format!("{:.0} %", x.rx_cpu_pct),
            ]
        })
        .collect();
    // With one run the min-max column says nothing: leave it out.
    let keep = |i: usize| i != 2 || r.repeats > 1;
    let head: Vec<&str> = head
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, h)| *h)
        .collect();
    let body: Vec<Vec<String>> = body
        .into_iter()
        .map(|b| {
            b.into_iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, c)| c)
                .collect()
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
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
    s.push_str(&line(
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    s.push_str(&line(&w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>()));
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

/// The table as a picture: for each configuration, bandwidth (median bar, min-max whisker),
/// copy share and DMA share, as three bar panels side by side, with the run's conditions.
pub fn render_svg(r: &Report) -> String {
    use crate::svg::{nice_max, Svg};
    let n = r.rows.len().max(1) as f64;
    let (label_w, panel_w, gap) = (190.0, 210.0, 30.0);
    let (top, row_h, bottom) = (118.0, 34.0, 96.0);
    let w = label_w + 3.0 * panel_w + 2.0 * gap + 40.0;
    let h = top + n * row_h + bottom;
    let mut s = Svg::new(w, h);
    s.text(
        14.0,
        24.0,
        "start",
        "font-size=\"16\" font-weight=\"bold\"",
        "netrxd demo: receive bandwidth and copy paths per configuration",
    );
    let runs = if r.repeats > 1 {
        format!(
            "{} runs of {} s per configuration (interleaved): bar = median, whisker = min-max",
            r.repeats, r.seconds_per_row
        )
    } else {
        format!(
            "1 run of {} s per configuration (no spread shown; use --repeats N for min-max whiskers)",
            r.seconds_per_row
        )
    };
    for (k, line) in [
        format!("sender: {}", r.sender),
        "link: veth between two network namespaces, MTU 1500, sender TSO/GSO and TX checksum offload off".to_string(),
        format!("engine: {}; rcvbuf {} bytes per receiver", r.label, r.rcvbuf * 2),
        runs,
    ]
    .iter()
    .enumerate()
    {
        s.text(14.0, 44.0 + 15.0 * k as f64, "start", "font-size=\"11\" fill=\"#444\"", line);
    }
    let gmax = r
        .rows
        .iter()
        .map(|x| x.gbit_s_max.max(x.gbit_s))
        .fold(0.0f64, f64::max);
    type Get = fn(&Row) -> Option<f64>;
    let panels: [(&str, f64, &str, Get); 3] = [
        ("bandwidth (Gbit/s)", nice_max(gmax).0, "#1f77b4", |x| {
            Some(x.gbit_s)
        }),
        ("copy share (% of rx CPU)", 100.0, "#ff7f0e", |x| {
            x.copy_share_pct
        }),
        ("DMA share (% of bytes)", 100.0, "#2ca02c", |x| {
            x.dma_share_pct
        }),
    ];
    let plot_bottom = top + n * row_h;
    for (p, (title, max, color, get)) in panels.iter().enumerate() {
        let x0 = label_w + p as f64 * (panel_w + gap);
        let px = |v: f64| x0 + (v / max).clamp(0.0, 1.0) * panel_w;
        s.text(
            x0 + panel_w / 2.0,
            top - 12.0,
            "middle",
            "font-weight=\"bold\"",
            title,
        );
        let step = if p == 0 { nice_max(gmax).1 } else { 20.0 };
        let mut v = 0.0;
        while v <= max + 1e-9 {
            let x = px(v);
            s.line((x, top - 4.0), (x, plot_bottom), "#e4e4e4", "");
            let txt = if p == 0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            };
            s.text(x, plot_bottom + 14.0, "middle", "font-size=\"10\"", &txt);
            v += step;
        }
        s.line((x0, top - 4.0), (x0, plot_bottom), "black", "");
        for (i, row) in r.rows.iter().enumerate() {
            let y = top + i as f64 * row_h;
            let bar_y = y + 8.0;
            let bar_h = row_h - 16.0;
            match get(row) {
                Some(v) => {
                    s.rect(x0, bar_y, px(v) - x0, bar_h, color);
                    let label = if p == 0 {
                        format!("{v:.2}")
                    } else {
                        format!("{v:.1} %")
                    };
                    let mut lx = px(v) + 4.0;
                    if p == 0 && r.repeats > 1 {
                        let (a, b) = (px(row.gbit_s_min), px(row.gbit_s_max));
                        let cy = bar_y + bar_h / 2.0;
                        s.line((a, cy), (b, cy), "black", "stroke-width=\"1.5\"");
                        s.line(
                            (a, cy - 5.0),
                            (a, cy + 5.0),
                            "black",
                            "stroke-width=\"1.5\"",
                        );
                        s.line(
                            (b, cy - 5.0),
                            (b, cy + 5.0),
                            "black",
                            "stroke-width=\"1.5\"",
                        );
                        lx = lx.max(b + 4.0);
                    }
                    if lx + 44.0 > x0 + panel_w + gap {
                        // No room right of the bar: the value goes inside its end.
                        let attrs = "font-size=\"11\" fill=\"white\"";
                        s.text(px(v) - 4.0, bar_y + bar_h - 3.0, "end", attrs, &label);
                    } else {
                        s.text(lx, bar_y + bar_h - 3.0, "start", "font-size=\"11\"", &label);
                    }
                }
                None => s.text(
                    x0 + 4.0,
                    bar_y + bar_h - 3.0,
                    "start",
                    "font-size=\"11\" fill=\"#777\"",
                    "n/a",
                ),
            }
        }
    }
    for (i, row) in r.rows.iter().enumerate() {
        let y = top + i as f64 * row_h + row_h / 2.0 + 4.0;
        s.text(label_w - 10.0, y, "end", "", &row.config);
    }
    let foot = plot_bottom + 40.0;
    for (k, line) in [
        "copy share: receive-side time spent copying or driving DMA / CPU time of the receive threads;",
        "n/a for the kernel socket, whose copy runs inside recv(). DMA share: payload bytes moved by DMA.",
        "Bandwidth measured at the receiver, first byte to end of stream.",
    ]
    .iter()
    .enumerate()
    {
        s.text(14.0, foot + 14.0 * k as f64, "start", "font-size=\"11\" fill=\"#444\"", line);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shape() {
        let r = Report {
            label: "DMA timing simulated by the device model".into(),
            engine: "model:skx".into(),
            sender_kind: "builtin".into(),
            sender: "built-in".into(),
            link: "veth".into(),
            seconds_per_row: 3,
            repeats: 1,
            rcvbuf: WINDOW,
            cpus: "auto".into(),
            rows: vec![
                Row {
                    config: "netdma".into(),
                    gbit_s: 1.5,
                    gbit_s_min: 1.5,
                    gbit_s_max: 1.5,
                    runs_gbit_s: vec![1.5],
                    copy_share_pct: Some(20.0),
                    dma_share_pct: Some(50.0),
                    mean_dma_bytes: Some(1448.0),
                    rx_cpu_pct: 90.0,
                    bytes: 1,
                    seconds: 3.0,
                    wakeups: None,
                    sender_report: String::new(),
                },
                Row {
                    config: "kernel socket".into(),
                    gbit_s: 2.0,
                    gbit_s_min: 2.0,
                    gbit_s_max: 2.0,
                    runs_gbit_s: vec![2.0],
                    copy_share_pct: None,
                    dma_share_pct: None,
                    mean_dma_bytes: None,
                    rx_cpu_pct: 80.0,
                    bytes: 1,
                    seconds: 3.0,
                    wakeups: None,
                    sender_report: String::new(),
                },
            ],
        };
        let t = render(&r);
        assert!(t.contains("simulated by the device model"), "{t}");
        assert!(t.contains("1448 B"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        assert!(t.contains("--cpus auto"), "{t}");
        assert!(!t.contains("min-max"), "one run, no min-max column: {t}");
        let svg = render_svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains("kernel socket") && svg.contains("n/a"),
            "{svg}"
        );
        assert!(svg.contains("use --repeats N"), "{svg}");
    }

    #[test]
    fn repeats_aggregate_to_median_and_range() {
        let run = |g: f64, dma: f64| Run {
            gbit_s: g,
            copy_share_pct: Some(10.0),
            dma_share_pct: Some(dma),
            mean_dma_bytes: None,
            rx_cpu_pct: 50.0,
            bytes: 10,
            seconds: 1.0,
            wakeups: Some([1, 0, 0, 0]),
            sender_report: format!("{g}"),
            ..Run::default()
        };
        let row = aggregate("cpu", vec![run(2.0, 0.0), run(1.0, 4.0), run(3.0, 2.0)]);
        assert_eq!(row.gbit_s, 2.0);
        assert_eq!((row.gbit_s_min, row.gbit_s_max), (1.0, 3.0));
        assert_eq!(row.runs_gbit_s, vec![2.0, 1.0, 3.0]);
        assert_eq!(row.dma_share_pct, Some(2.0));
        assert_eq!(row.mean_dma_bytes, None);
        assert_eq!(row.bytes, 30);
        assert_eq!(row.wakeups, Some([3, 0, 0, 0]));
        assert_eq!(median(vec![1.0, 4.0]), 2.5);
    }
}
