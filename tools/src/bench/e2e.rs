//! `netrx-bench e2e`: the end-to-end benchmark. A kernel TCP sender (iperf 2, or the built-in
//! sender with the same parameters) in a sender namespace, veth to a receiver namespace, against
//! netrx receive configurations and two kernel references: the plain kernel socket, and the
//! kernel socket behind a native XDP program that returns XDP_PASS (the veth XDP path netrx
//! pays for). Runs alternate (every configuration once, then again), per MTU and sender window.
//!
//! Besides Gbit/s each row carries packet-path counters and the whole machine's CPU per GB from
//! `/proc/stat`, so that work moved into the sender's or softirq context is not hidden.

use anyhow::{bail, Context, Result};
use netrx::copy::PolicyKind;
use netrx::netns::{LinkOpts, TwoHost};
use serde::Serialize;

use super::{median, ratio};
use crate::netrxd::config::EngineSpec;
use crate::netrxd::demo::{self, Case, CaseKind, DemoOpts, Run};
use crate::netrxd::sender::{self, SenderChoice};
use crate::netrxd::signals;
use crate::netrxd::stats::CopyCounters;
use netrx::service::Placement;

pub const KERNEL: &str = "kernel socket";
pub const KERNEL_XDP: &str = "kernel socket + XDP_PASS";

#[derive(Clone, Debug)]
pub struct Opts {
    pub seconds: u64,
    pub repeats: usize,
    /// netrx configurations by name: cpu, netdma, netdma-lowat, adaptive.
    pub configs: Vec<String>,
    /// Sender socket buffers (iperf -w).
    pub windows: Vec<usize>,
    pub mtus: Vec<u32>,
    pub engine: EngineSpec,
    pub sender: SenderChoice,
    /// Receive buffer of every receiver (SO_RCVBUF; netrx gets twice this, as Linux does).
    pub rcvbuf: usize,
    /// Where netrx's poller and TX kicker run.
    pub cpus: Placement,
}

/// A netrx configuration by its command-line name.
pub fn netrx_case(name: &str) -> Result<Case> {
    let (name, policy, rcvlowat) = match name {
        "cpu" => ("cpu", PolicyKind::Cpu, None),
        "netdma" => ("netdma", PolicyKind::NetDma, None),
        "netdma-lowat" => (
            "netdma + rcvlowat 200 KB",
            PolicyKind::NetDma,
            Some(demo::LOWAT),
        ),
        "adaptive" => ("adaptive", PolicyKind::Adaptive, None),
        other => bail!("unknown configuration `{other}` (cpu, netdma, netdma-lowat, adaptive)"),
    };
    Ok(Case {
        name,
        kind: CaseKind::Netrx { policy, rcvlowat },
    })
}

/// Busy and total jiffies of the `cpu` line of `/proc/stat`. Busy = user + nice + system + irq +
/// softirq (idle, iowait and steal are not work of this machine's benchmark).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    if v.len() < 7 {
        return None;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Some((busy, v.iter().take(8).sum()))
}

fn proc_stat_now() -> Option<(u64, u64)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// One run with the machine's CPU over it.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub run: Run,
    /// Busy CPU seconds of the whole machine over the run (all cores).
    pub machine_busy_s: f64,
    /// Busy share of all cores over the run, %.
    pub machine_busy_pct: f64,
}

/// One row: a configuration at one MTU and sender window.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mtu: u32,
    pub window: usize,
    pub config: String,
    pub gbit_s: f64,
    pub gbit_s_min: f64,
    pub gbit_s_max: f64,
    pub runs_gbit_s: Vec<f64>,
    /// Median / the plain kernel socket's median (same MTU and window).
    pub ratio_kernel: Option<f64>,
    /// Median / the kernel socket behind XDP_PASS's median.
    pub ratio_kernel_xdp: Option<f64>,
    /// Data segments received (netrx: frames into the TCP endpoint; kernel: Tcp InSegs), summed.
    pub segments: Option<u64>,
    /// ACKs (control frames; kernel: Tcp OutSegs) per received segment.
    pub acks_per_segment: Option<f64>,
    /// AF_XDP TX kicks (sendto) per received segment.
    pub tx_kicks_per_segment: Option<f64>,
    /// Packets per RX ring read that returned packets.
    pub mean_rx_batch: Option<f64>,
    /// Application wakeups (completed receives) per MB received.
    pub wakeups_per_mb: Option<f64>,
    /// Share of the bytes copied straight from the frame into a waiting receive, with the
    /// checksum verified in the same pass (direct delivery; JSON only).
    pub direct_share: Option<f64>,
    /// CPU of the receive threads / wall time, % of one core (median).
    pub rx_cpu_pct: f64,
    /// Busy CPU seconds of the whole machine per GB received (all runs summed).
    pub machine_cpu_s_per_gb: f64,
    /// Busy share of all cores during the runs, % (median).
    pub machine_busy_pct: f64,
    pub bytes: u64,
    pub seconds: f64,
    /// A reason when the row could not run (the other fields are then zero).
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub engine: String,
    pub sender_kind: String,
    pub seconds_per_run: u64,
    pub repeats: usize,
    pub rcvbuf: usize,
    pub cores: usize,
    /// Where netrx's poller and TX kicker ran (`auto`, `float` or a CPU list).
    pub cpus: String,
    pub rows: Vec<Row>,
}

fn div(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// A row from the samples of one configuration; ratios are filled in by [`fill_ratios`].
pub fn aggregate(mtu: u32, window: usize, name: &str, s: &[Sample]) -> Row {
    let g: Vec<f64> = s.iter().map(|x| x.run.gbit_s).collect();
    let bytes: u64 = s.iter().map(|x| x.run.bytes).sum();
    let busy: f64 = s.iter().map(|x| x.machine_busy_s).sum();
    let paths: Vec<_> = s.iter().filter_map(|x| x.run.path).collect();
    let (segments, acks, kicks, batch) = if !paths.is_empty() {
        let sum = |f: fn(&crate::netrxd::rx::PathCounters) -> u64| paths.iter().map(f).sum::<u64>();
        let seg = sum(|p| p.frames_in);
        (
            Some(seg),
            div(sum(|p| p.tx_frames), seg),
            div(sum(|p| p.tx_kicks), seg),
            div(sum(|p| p.rx_packets), sum(|p| p.rx_batches)),
        )
    } else {
        let ins: Vec<u64> = s.iter().filter_map(|x| x.run.snmp_in_segs).collect();
        let outs: u64 = s.iter().filter_map(|x| x.run.snmp_out_segs).sum();
        if ins.is_empty() {
            (None, None, None, None)
        } else {
            let seg = ins.iter().sum();
            (Some(seg), div(outs, seg), None, None)
        }
    };
    // A copy counter summed over the runs, per received byte (netrx rows only).
    let per_byte = |f: fn(&CopyCounters) -> u64| {
        let v: Vec<u64> = s
            .iter()
            .filter_map(|x| x.run.copy.as_ref().map(f))
            .collect();
        (!v.is_empty() && bytes > 0).then(|| v.iter().sum::<u64>() as f64 / bytes as f64)
    };
    let wakeups_per_mb = per_byte(|c| c.recvs).map(|r| r * 1e6);
    let direct_share = per_byte(|c| c.direct_bytes);
    Row {
        mtu,
        window,
        config: name.to_string(),
        gbit_s: median(g.clone()),
        gbit_s_min: g.iter().copied().fold(f64::INFINITY, f64::min),
        gbit_s_max: g.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        runs_gbit_s: g,
        ratio_kernel: None,
        ratio_kernel_xdp: None,
        segments,
        acks_per_segment: acks,
        tx_kicks_per_segment: kicks,
        mean_rx_batch: batch,
        wakeups_per_mb,
        direct_share,
        rx_cpu_pct: median(s.iter().map(|x| x.run.rx_cpu_pct).collect()),
        machine_cpu_s_per_gb: if bytes > 0 {
            busy / (bytes as f64 / 1e9)
        } else {
            0.0
        },
        machine_busy_pct: median(s.iter().map(|x| x.machine_busy_pct).collect()),
        bytes,
        seconds: s.iter().map(|x| x.run.seconds).sum(),
        error: None,
    }
}

/// Ratios of every row's median to the two kernel rows of its MTU and window.
pub fn fill_ratios(rows: &mut [Row]) {
    let refs: Vec<(u32, usize, String, f64)> = rows
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| (r.mtu, r.window, r.config.clone(), r.gbit_s))
        .collect();
    let find = |mtu: u32, window: usize, name: &str| {
        refs.iter()
            .find(|x| x.0 == mtu && x.1 == window && x.2 == name)
            .map(|x| x.3)
    };
    for r in rows.iter_mut().filter(|r| r.error.is_none()) {
        r.ratio_kernel = find(r.mtu, r.window, KERNEL).and_then(|k| ratio(r.gbit_s, k));
        r.ratio_kernel_xdp = find(r.mtu, r.window, KERNEL_XDP).and_then(|k| ratio(r.gbit_s, k));
    }
}

fn progress(msg: &str) {
    eprintln!("netrx-bench e2e: {msg}");
}

pub fn run(o: &Opts) -> Result<Report> {
    signals::install().context("cannot install signal handlers")?;
    demo::preflight()?;
    let used = sender::choose(o.sender)?;
    let mut cases: Vec<Case> = o
        .configs
        .iter()
        .map(|c| netrx_case(c.trim()))
        .collect::<Result<_>>()?;
    cases.push(Case {
        name: KERNEL,
        kind: CaseKind::Kernel,
    });
    cases.push(Case {
        name: KERNEL_XDP,
        kind: CaseKind::KernelXdpPass,
    });
    let repeats = o.repeats.max(1);
    let tck = clk_tck();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let mut port: u16 = 6000;
    for &mtu in &o.mtus {
        progress(&format!(
            "MTU {mtu}: setting up namespaces and a veth pair ..."
        ));
        let topo = TwoHost::new(&LinkOpts {
            mtu,
            sender_tx_csum_off: true,
            sender_tso_off: true,
            ..LinkOpts::default()
        })
        .context("cannot create the network namespaces and veth pair (run as root)")?;
        for &window in &o.windows {
            let dopts = DemoOpts {
                seconds: o.seconds,
                json: true,
                engine: o.engine.clone(),
                rcvbuf: o.rcvbuf,
                sender: o.sender,
                repeats,
                sender_window: window,
                cpus: o.cpus.clone(),
            };
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
            let mut errors: Vec<Option<String>> = vec![None; cases.len()];
            for rep in 0..repeats {
                for (i, case) in cases.iter().enumerate() {
                    if signals::stop_requested() {
                        bail!("interrupted; namespaces, veth and XDP cleaned up");
                    }
                    if errors[i].is_some() {
                        continue;
                    }
                    port = port.wrapping_add(1).max(6001);
                    let s0 = proc_stat_now();
                    let r = demo::run_case(&topo, case, port, &dopts, used);
                    let s1 = proc_stat_now();
                    match r {
                        Ok(run) => {
                            let (busy_s, pct) = match (s0, s1) {
                                (Some(a), Some(b)) => {
                                    let busy = b.0.saturating_sub(a.0) as f64;
                                    let total = b.1.saturating_sub(a.1) as f64;
                                    (
                                        busy / tck,
                                        if total > 0.0 {
                                            busy / total * 100.0
                                        } else {
                                            0.0
                                        },
                                    )
                                }
                                _ => (0.0, 0.0),
                            };
                            progress(&format!(
                                "MTU {mtu} window {window} run {}/{repeats} {}: {:.2} Gbit/s, machine {:.0} % busy",
                                rep + 1,
                                case.name,
                                run.gbit_s,
                                pct
                            ));
                            samples[i].push(Sample {
                                run,
                                machine_busy_s: busy_s,
                                machine_busy_pct: pct,
                            });
                        }
                        Err(e) => {
                            progress(&format!("MTU {mtu} {}: n/a: {e:#}", case.name));
                            errors[i] = Some(format!("{e:#}"));
                        }
                    }
                }
            }
            for (i, case) in cases.iter().enumerate() {
                let mut row = aggregate(mtu, window, case.name, &samples[i]);
                if samples[i].is_empty() {
                    row.gbit_s_min = 0.0;
                    row.gbit_s_max = 0.0;
                }
                row.error = errors[i].take();
                rows.push(row);
            }
        }
        drop(topo);
    }
    fill_ratios(&mut rows);
    Ok(Report {
        engine: o.engine.to_string(),
        sender_kind: used.kind().to_string(),
        seconds_per_run: o.seconds,
        repeats,
        rcvbuf: o.rcvbuf,
        cores,
        cpus: o.cpus.to_string(),
        rows,
    })
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.prec$}"))
}

fn size(b: usize) -> String {
    if b % (1 << 20) == 0 {
        format!("{}M", b >> 20)
    } else if b % 1024 == 0 {
        format!("{}K", b >> 10)
    } else {
        b.to_string()
    }
}

/// The table, one line per row.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "sender: {} (kernel TCP, -l 2M), {} s per run, {} run(s) per row, alternating; engine {}; \
         SO_RCVBUF {} per receiver; {} cores; netrx threads --cpus {}\n\n",
        r.sender_kind, r.seconds_per_run, r.repeats, r.engine, r.rcvbuf, r.cores, r.cpus
    );
    let head = [
        "MTU",
        "-w",
        "configuration",
        "Gbit/s",
        "min-max",
        "/kernel",
        "/kernel+XDP",
        "segments",
        "ACK/seg",
        "kick/seg",
        "RX batch",
        "wake/MB",
        "rx CPU %",
        "mach CPU s/GB",
        "mach busy %",
    ];
    let body: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|x| {
            if let Some(e) = &x.error {
                let mut v = vec![x.mtu.to_string(), size(x.window), x.config.clone()];
                v.push(format!("n/a: {e}"));
                return v;
            }
            vec![
                x.mtu.to_string(),
                size(x.window),
                x.config.clone(),
                format!("{:.2}", x.gbit_s),
                format!("{:.2}-{:.2}", x.gbit_s_min, x.gbit_s_max),
                opt(x.ratio_kernel, 2),
                opt(x.ratio_kernel_xdp, 2),
                x.segments.map_or("n/a".into(), |v| v.to_string()),
                opt(x.acks_per_segment, 3),
                opt(x.tx_kicks_per_segment, 3),
                opt(x.mean_rx_batch, 1),
                opt(x.wakeups_per_mb, 2),
                format!("{:.0}", x.rx_cpu_pct),
                format!("{:.3}", x.machine_cpu_s_per_gb),
                format!("{:.0}", x.machine_busy_pct),
            ]
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for b in body.iter().filter(|b| b.len() == head.len()) {
        for (i, c) in b.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 2 || i + 1 == cells.len() && cells.len() < head.len() {
                l.push_str(&format!("  {c:<width$}", width = w[i]));
            } else if i == 0 {
                l.push_str(&format!("{c:>width$}", width = w[0]));
            } else {
                l.push_str(&format!("  {c:>width$}", width = w[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    s.push_str(&line(&head.map(String::from)));
    s.push_str(&line(&w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>()));
    for b in &body {
        s.push_str(&line(b));
    }
    s.push_str(
        "\nsegments: netrx = frames into its TCP endpoint, kernel = Tcp InSegs of the receiver \
         namespace; ACK/seg: control frames (kernel: OutSegs) per segment;\nkick/seg: AF_XDP TX \
         sendto kicks per segment; RX batch: packets per RX ring read; wake/MB: completed \
         receives per MB;\nrx CPU: receive threads' CPU / wall time (100 = one core); mach CPU \
         s/GB: busy jiffies of /proc/stat (user+nice+system+irq+softirq, all cores) per GB.\n",
    );
    s
}

/// Bars (median) with min-max whiskers, one group per MTU and window.
pub fn render_svg(r: &Report) -> String {
    use crate::svg::{nice_max, Svg};
    let n = r.rows.len().max(1) as f64;
    let (label_w, panel_w) = (300.0, 420.0);
    let (top, row_h, bottom) = (70.0, 26.0, 50.0);
    let w = label_w + panel_w + 80.0;
    let h = top + n * row_h + bottom;
    let (max, step) = nice_max(r.rows.iter().map(|x| x.gbit_s_max).fold(0.0, f64::max));
    let mut s = Svg::new(w, h);
    s.text(
        14.0,
        24.0,
        "start",
        "font-size=\"16\" font-weight=\"bold\"",
        "netrx-bench e2e: receive bandwidth, Gbit/s (bar = median, whisker = min-max)",
    );
    s.text(
        14.0,
        44.0,
        "start",
        "font-size=\"11\"",
        &format!(
            "{} sender, {} s x {} alternating runs per row; engine {}; netrx threads --cpus {}",
            r.sender_kind, r.seconds_per_run, r.repeats, r.engine, r.cpus
        ),
    );
    let x0 = label_w;
    let scale = |v: f64| x0 + v / max * panel_w;
    for (i, row) in r.rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        s.text(
            x0 - 8.0,
            y + row_h * 0.65,
            "end",
            "font-size=\"12\"",
            &format!("MTU {} -w {}  {}", row.mtu, size(row.window), row.config),
        );
        if row.error.is_some() {
            s.text(
                x0 + 4.0,
                y + row_h * 0.65,
                "start",
                "font-size=\"12\"",
                "n/a",
            );
            continue;
        }
        let fill = if row.config.starts_with("kernel") {
            "#999999"
        } else {
            "#3b6ea5"
        };
        s.rect(x0, y + 4.0, scale(row.gbit_s) - x0, row_h - 8.0, fill);
        let ym = y + row_h / 2.0;
        s.line(
            (scale(row.gbit_s_min), ym),
            (scale(row.gbit_s_max), ym),
            "#000000",
            "stroke-width=\"1.5\"",
        );
        s.text(
            scale(row.gbit_s_max) + 6.0,
            y + row_h * 0.65,
            "start",
            "font-size=\"11\"",
            &format!("{:.2}", row.gbit_s),
        );
    }
    let yb = top + n * row_h;
    s.line((x0, yb), (x0 + panel_w, yb), "#000000", "");
    let ticks = (max / step).round() as usize;
    for k in 0..=ticks {
        let v = step * k as f64;
        s.text(
            scale(v),
            yb + 16.0,
            "middle",
            "font-size=\"11\"",
            &format!("{v:.1}"),
        );
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netrxd::rx::PathCounters;

    #[test]
    fn proc_stat_busy_and_total() {
        let t = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat(t), Some((100 + 5 + 50 + 3 + 7, 1187)));
        assert_eq!(parse_proc_stat("cpu0 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4 5 6 7\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 3\n"), None);
    }

    #[test]
    fn snmp_tcp_counters() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin InSegs OutSegs\nTcp: 1 200 12345 678\nUdp: InDatagrams\nUdp: 0\n";
        assert_eq!(demo::parse_snmp_tcp(t), Some((12345, 678)));
        assert_eq!(demo::parse_snmp_tcp("Tcp: InSegs\n"), None);
    }

    fn sample(g: f64, bytes: u64, busy: f64, netrx: bool) -> Sample {
        let mut run = Run {
            gbit_s: g,
            bytes,
            seconds: 1.0,
            rx_cpu_pct: 50.0,
            ..Run::default()
        };
        if netrx {
            run.path = Some(PathCounters {
                frames_in: 1000,
                tx_frames: 100,
                tx_kicks: 10,
                rx_batches: 50,
                rx_packets: 1000,
            });
            run.copy = Some(CopyCounters {
                recvs: 4,
                ..CopyCounters::default()
            });
        } else {
            run.snmp_in_segs = Some(2000);
            run.snmp_out_segs = Some(500);
        }
        Sample {
            run,
            machine_busy_s: busy,
            machine_busy_pct: 90.0,
        }
    }

    #[test]
    fn aggregation_ratios_and_rendering() {
        let n = [
            sample(5.0, 1_000_000_000, 2.0, true),
            sample(7.0, 1_000_000_000, 2.0, true),
            sample(6.0, 2_000_000_000, 2.0, true),
        ];
        let mut rows = vec![
            aggregate(1500, 256_000, "cpu", &n),
            aggregate(
                1500,
                256_000,
                KERNEL,
                &[sample(4.0, 1_000_000_000, 1.0, false)],
            ),
            aggregate(
                1500,
                256_000,
                KERNEL_XDP,
                &[sample(3.0, 1_000_000_000, 1.0, false)],
            ),
        ];
        rows.push(aggregate(9000, 256_000, "cpu", &[]));
        rows[3].error = Some("no".into());
        fill_ratios(&mut rows);
        let c = &rows[0];
        assert_eq!((c.gbit_s, c.gbit_s_min, c.gbit_s_max), (6.0, 5.0, 7.0));
        assert_eq!(c.segments, Some(3000));
        assert_eq!(c.acks_per_segment, Some(0.1));
        assert_eq!(c.tx_kicks_per_segment, Some(0.01));
        assert_eq!(c.mean_rx_batch, Some(20.0));
        assert!((c.wakeups_per_mb.unwrap() - 12.0 / 4000.0).abs() < 1e-12);
        assert!((c.machine_cpu_s_per_gb - 6.0 / 4.0).abs() < 1e-12);
        assert_eq!(c.ratio_kernel, Some(1.5));
        assert_eq!(c.ratio_kernel_xdp, Some(2.0));
        let k = &rows[1];
        assert_eq!(k.segments, Some(2000));
        assert_eq!(k.acks_per_segment, Some(0.25));
        assert_eq!(k.tx_kicks_per_segment, None);
        assert_eq!(k.ratio_kernel, Some(1.0));
        assert_eq!(rows[3].ratio_kernel, None);
        let rep = Report {
            engine: "model".into(),
            sender_kind: "iperf".into(),
            seconds_per_run: 1,
            repeats: 3,
            rcvbuf: 256_000,
            cores: 2,
            cpus: "auto".into(),
            rows,
        };
        let t = render(&rep);
        assert!(t.contains("--cpus auto"), "{t}");
        assert!(t.contains("kernel socket + XDP_PASS"), "{t}");
        assert!(
            t.contains("6.00") && t.contains("5.00-7.00") && t.contains("1.50"),
            "{t}"
        );
        assert!(t.contains("n/a: no"), "{t}");
        let svg = render_svg(&rep);
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        let j = serde_json::to_value(&rep).unwrap();
        assert_eq!(j["rows"][0]["acks_per_segment"], 0.1);
        assert!(j["rows"][1]["tx_kicks_per_segment"].is_null());
    }

    #[test]
    fn config_names() {
        assert!(netrx_case("cpu").is_ok() && netrx_case("netdma-lowat").is_ok());
        assert!(netrx_case("dma").is_err());
    }
}
