//! ioat-ctl: find, bind, inspect, test and benchmark Intel I/OAT (CBDMA) channels.
//!
//! DEV is a PCI address (through VFIO) or `model` (the driver's software device, so every
//! subcommand works without the hardware). Human tables by default, `--json` everywhere.

#[path = "../cli.rs"]
mod cli;

#[path = "../svg.rs"]
#[allow(dead_code)] // the bar-chart parts serve netrxd demo
mod svg;

#[path = "../ctl/mod.rs"]
mod ctl;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use ctl::{size_str, table, DevOpts, ModelOpts, PresetArg};
use ioat_driver::discover::{Bdf, Expect};
use ioat_driver::regs::{chan, channel_base, CbVersion, ChanErr, ChanState, RegisterAccess};

#[derive(Parser, Debug)]
#[command(
    name = "ioat-ctl",
    version,
    about = "Find, bind, inspect, test and benchmark Intel I/OAT (Crystal Beach DMA) channels",
    allow_negative_numbers = true,
    long_about = "Find, bind, inspect, test and benchmark Intel I/OAT (Crystal Beach DMA) channels.\n\nDEV is a PCI address (DDDD:BB:DD.F, opened through VFIO; bind it first with `ioat-ctl bind`) or `model`, the driver's software I/OAT device, so every subcommand also works without the hardware."
)]
struct Cli {
    /// Machine-readable JSON output on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Model preset when DEV is `model`.
    #[arg(long, global = true, value_enum, default_value = "skx")]
    preset: PresetArg,
    /// Channels of the model (real Xeon parts expose one channel per PCI function).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    channels: u8,
    /// Accept a no-IOMMU VFIO group: the device can then DMA to ANY physical address, and a
    /// driver bug can corrupt the kernel. Only for hosts without an IOMMU that you can crash.
    #[arg(long, global = true)]
    unsafe_noiommu: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the I/OAT functions on this host (sysfs scan).
    List,
    /// Bind a function to vfio-pci (driver_override + drivers_probe, with IOMMU group checks).
    Bind {
        bdf: String,
        /// Bind even if the function is not a known I/OAT device.
        #[arg(long)]
        any_device: bool,
    },
    /// Unbind a function from vfio-pci and give it back to its kernel driver.
    Unbind {
        bdf: String,
        /// Leave it without a driver instead of reprobing (ioatdma would take it back).
        #[arg(long)]
        no_reprobe: bool,
    },
    /// Device identity, capabilities and channel states.
    Info { dev: String },
    /// Decoded register dump (read-only).
    #[command(allow_negative_numbers = true)]
    Regs {
        dev: String,
        /// Only this channel (0..=255; checked against the device's CHANCNT).
        #[arg(long, value_parser = channel_arg)]
        channel: Option<u32>,
    },
    /// Copy and fill verification on every channel.
    #[command(allow_negative_numbers = true)]
    Selftest {
        dev: String,
        /// Only this channel (0..=255; checked against the device's CHANCNT).
        #[arg(long, value_parser = channel_arg)]
        channel: Option<u32>,
    },
    /// Reset a channel (suspend, clear errors, CHANCMD reset) and restart it.
    #[command(allow_negative_numbers = true)]
    Reset {
        dev: String,
        /// The channel (0..=255; checked against the device's CHANCNT).
        #[arg(long, value_parser = channel_arg)]
        channel: u32,
    },
    /// Bandwidth and latency by transfer size, DMA against CPU memcpy on the same buffers.
    #[command(allow_negative_numbers = true)]
    Bench {
        dev: String,
        /// The channel (0..=255; checked against the device's CHANCNT).
        #[arg(long, default_value_t = 0, value_parser = channel_arg)]
        channel: u32,
        /// Smallest transfer size in bytes (powers of two up to --max-size), 1..=4194304.
        #[arg(long, default_value_t = 64, value_parser = cli::int_in(1, BENCH_MAX_SIZE, "bytes"))]
        min_size: u64,
        /// Largest transfer size in bytes, 1..=4194304 (4 MiB, the benchmark's buffer).
        #[arg(long, default_value_t = 1 << 20, value_parser = cli::int_in(1, BENCH_MAX_SIZE, "bytes (4 MiB, the benchmark's buffer)"))]
        max_size: u64,
        /// Measuring time per size and method, milliseconds (1..=60000).
        #[arg(long, default_value_t = 40, value_parser = cli::int_in(1, 60_000, "ms"))]
        time_ms: u64,
        /// Evict the caches before every measured round (cold buffers, as a fresh network
        /// payload would be) instead of comparing against a cache-warm memcpy.
        #[arg(long)]
        cold: bool,
        /// Also write an SVG plot of bandwidth by size.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        /// Model only: per-descriptor time in nanoseconds (simulated), 0..=1000000000.
        #[arg(long, default_value_t = 1000, value_parser = cli::int_in(0, 1_000_000_000, "ns"))]
        model_desc_ns: u64,
        /// Model only: per-channel bandwidth in GB/s (simulated).
        #[arg(long, default_value_t = 5.0)]
        model_gbps: f64,
        /// Model only: complete descriptors instantly (measures driver overhead).
        #[arg(long)]
        model_instant: bool,
    },
}

/// The largest `bench` transfer size: the benchmark's buffer (`ctl::bench`).
const BENCH_MAX_SIZE: u64 = ctl::bench::BUF as u64;

/// A channel number, 0..=255 (the device's CHANCNT is checked once it is open).
fn channel_arg(s: &str) -> Result<u32, String> {
    cli::int_in(0, 255, "")(s).map(|v| v as u32)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("IOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the errors carry the address and the fix.
            let msg = e.to_string().replace('\n', " ");
            if cli.json {
                println!("{}", json!({ "error": msg }));
            }
            eprintln!("ioat-ctl: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn dev_opts(cli: &Cli, timing: Option<(Duration, u64)>) -> DevOpts {
    DevOpts {
        model: ModelOpts {
            preset: cli.preset,
            channels: cli.channels,
            timing,
        },
        unsafe_noiommu: cli.unsafe_noiommu,
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("{msg}");
}

fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.cmd {
        Cmd::List => cmd_list(cli),
        Cmd::Bind { bdf, any_device } => cmd_bind(cli, bdf, *any_device),
        Cmd::Unbind { bdf, no_reprobe } => cmd_unbind(cli, bdf, !*no_reprobe),
        Cmd::Info { dev } => cmd_info(cli, dev),
        Cmd::Regs { dev, channel } => cmd_regs(cli, dev, *channel),
        Cmd::Selftest { dev, channel } => cmd_selftest(cli, dev, *channel),
        Cmd::Reset { dev, channel } => cmd_reset(cli, dev, *channel),
        Cmd::Bench {
            dev,
            channel,
            min_size,
            max_size,
            time_ms,
            cold,
            svg,
            model_desc_ns,
            model_gbps,
            model_instant,
        } => {
            if min_size > max_size {
                bail!("--min-size ({min_size}) must be at most --max-size ({max_size})");
            }
            if !model_gbps.is_finite() || *model_gbps <= 0.0 {
                bail!("--model-gbps must be positive");
            }
            let timing = (!model_instant).then(|| {
                (
                    Duration::from_nanos(*model_desc_ns),
                    (*model_gbps * 1e9) as u64,
                )
            });
            cmd_bench(
                cli,
                dev,
                timing,
                &ctl::bench::BenchOpts {
                    channel: *channel,
                    min_size: *min_size,
                    max_size: *max_size,
                    budget: Duration::from_millis(*time_ms),
                    cold: *cold,
                },
                svg.as_deref(),
            )
        }
    }
}

fn cmd_list(cli: &Cli) -> Result<ExitCode> {
    let host = ctl::host();
    let fns = host
        .scan_ioat()
        .map_err(|e| anyhow!("cannot scan /sys/bus/pci/devices: {e}; is sysfs mounted?"))?;
    let mut entries = Vec::new();
    for f in &fns {
        let id = f.ioat.expect("scan_ioat returns I/OAT functions only");
        // CBVER from the BAR only when bound to vfio-pci and we may open it; never otherwise.
        let mut hw = None;
        if f.driver.as_deref() == Some("vfio-pci") {
            if let Ok(t) = ctl::open(&f.bdf.to_string(), &dev_opts(cli, None)) {
                hw = Some(CbVersion(t.regs.read8(ioat_driver::regs::general::CBVER)));
            }
        }
        entries.push(json!({
            "bdf": f.bdf.to_string(),
            "vendor": format!("{:04x}", f.vendor),
            "device": format!("{:04x}", f.device),
            "platform": id.platform,
            "platform_name": id.platform_name,
            "channel_index": id.index,
            "cb_version": id.version.to_string(),
            "cb_version_hw": hw.map(|v| v.to_string()),
            "driver": f.driver,
            "iommu_group": f.iommu_group,
            "numa_node": f.numa_node,
        }));
    }
    if cli.json {
        print_json(&json!({ "devices": entries, "count": entries.len() }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("no I/OAT device found (scanned /sys/bus/pci/devices for Intel CBDMA v3.0-3.4 IDs); use `model` as DEV to try ioat-ctl without hardware");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| match &e[k] {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            vec![
                s("bdf"),
                format!("{}:{}", s("vendor"), s("device")),
                format!("{} #{}", s("platform"), s("channel_index")),
                match &e["cb_version_hw"] {
                    serde_json::Value::String(h) => format!("{} (hw {h})", s("cb_version")),
                    _ => s("cb_version"),
                },
                s("driver"),
                s("iommu_group"),
                s("numa_node"),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "BDF",
                "ID",
                "PLATFORM",
                "CB",
                "DRIVER",
                "IOMMU GROUP",
                "NUMA"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_bind(cli: &Cli, bdf: &str, any: bool) -> Result<ExitCode> {
    let bdf: Bdf = bdf.parse()?;
    let host = ctl::host();
    let r = host.bind(&bdf, if any { Expect::Any } else { Expect::Ioat })?;
    if cli.json {
        print_json(&json!({
            "bdf": bdf.to_string(),
            "previous_driver": r.previous_driver,
            "driver": r.driver,
            "already_bound": r.already,
            "group_blockers": r.group_blockers,
        }))?;
    } else {
        if r.already {
            println!("{bdf}: already bound to vfio-pci");
        } else {
            println!(
                "{bdf}: bound to vfio-pci (was: {})",
                r.previous_driver.as_deref().unwrap_or("no driver")
            );
        }
        for b in &r.group_blockers {
            println!("warning: IOMMU group member {b} must also be bound to vfio-pci or unbound before {bdf} can be opened");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_unbind(cli: &Cli, bdf: &str, reprobe: bool) -> Result<ExitCode> {
    let bdf: Bdf = bdf.parse()?;
    let r = ctl::host().unbind(&bdf, reprobe)?;
    if cli.json {
        print_json(&json!({
            "bdf": bdf.to_string(),
            "previous_driver": r.previous_driver,
            "driver": r.driver,
        }))?;
    } else {
        println!(
            "{bdf}: unbound from vfio-pci; now {}",
            r.driver.as_deref().unwrap_or("without a driver")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_info(cli: &Cli, dev: &str) -> Result<ExitCode> {
    let t = ctl::open(dev, &dev_opts(cli, None))?;
    let d = t.device()?;
    let info = d.info();
    let mut ident = json!({ "device": t.label });
    match &t.backend {
        ctl::Backend::Model(m) => {
            let c = m.config();
            ident["pci_id"] = json!(format!("8086:{:04x}", c.device_id));
            ident["platform"] =
                json!(ioat_driver::ids::lookup(0x8086, c.device_id).map(|i| i.platform));
            ident["simulated"] = json!(true);
        }
        ctl::Backend::Vfio(v) => {
            let p = v.preflight();
            let f = &p.function;
            ident["pci_id"] = json!(format!("{:04x}:{:04x}", f.vendor, f.device));
            ident["platform"] = json!(f.ioat.map(|i| i.platform));
            ident["platform_name"] = json!(f.ioat.map(|i| i.platform_name));
            ident["iommu_group"] = json!(p.group);
            ident["numa_node"] = json!(f.numa_node);
            ident["noiommu"] = json!(p.noiommu);
            ident["simulated"] = json!(false);
        }
    }
    let chans: Vec<_> = (0..info.chancnt)
        .map(|n| {
            let b = channel_base(n);
            let sts = t.regs.read64(b + chan::CHANSTS);
            let err = ChanErr(t.regs.read32(b + chan::CHANERR));
            json!({
                "channel": n,
                "state": ChanState::from_bits(sts).to_string(),
                "chanerr": err.to_string(),
            })
        })
        .collect();
    let v = json!({
        "identity": ident,
        "cb_version": info.version.to_string(),
        "channels": info.chancnt,
        "xfercap_log": info.xfercap_log,
        "max_bytes_per_descriptor": info.max_xfer,
        "dmacapability": format!("{:#x}", info.dmacap),
        "fill": info.has_fill(),
        "dma_address_bits": info.addr_bits,
        "channel_states": chans,
    });
    if cli.json {
        print_json(&v)?;
    } else {
        println!("device        {}", t.label);
        for (k, x) in v["identity"].as_object().into_iter().flatten() {
            if k != "device" {
                println!(
                    "{:<13} {}",
                    k,
                    x.as_str().map(str::to_string).unwrap_or(x.to_string())
                );
            }
        }
        println!("{info}");
        println!("DMA addresses {} bits", info.addr_bits);
        let rows: Vec<Vec<String>> = chans
            .iter()
            .map(|c| {
                vec![
                    c["channel"].to_string(),
                    c["state"].as_str().unwrap_or("?").into(),
                    c["chanerr"].as_str().unwrap_or("?").into(),
                ]
            })
            .collect();
        print!("{}", table(&["CHANNEL", "STATE", "CHANERR"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_regs(cli: &Cli, dev: &str, channel: Option<u32>) -> Result<ExitCode> {
    let t = ctl::open(dev, &dev_opts(cli, None))?;
    let r: &dyn RegisterAccess = &*t.regs;
    let general = ctl::regs::general_json(r);
    let chancnt = (r.read8(ioat_driver::regs::general::CHANCNT) & 0x1f) as u32;
    let cbver = CbVersion(r.read8(ioat_driver::regs::general::CBVER));
    let list: Vec<u32> = match channel {
        Some(n) => {
            ctl::check_channel(n, chancnt, &t.label)?;
            vec![n]
        }
        None => (0..chancnt).collect(),
    };
    let chans: Vec<_> = list
        .iter()
        .map(|&n| ctl::regs::channel_json(r, n, cbver))
        .collect();
    let model = match &t.backend {
        ctl::Backend::Model(m) => Some(ctl::regs::model_json(m)),
        ctl::Backend::Vfio(_) => None,
    };
    if cli.json {
        let mut v = json!({ "device": t.label, "general": general, "channels": chans });
        if let Some(m) = model {
            v["model"] = m;
        }
        print_json(&v)?;
    } else {
        println!("{}", t.label);
        print!("{}", ctl::regs::general_text(&general));
        for c in &chans {
            print!("{}", ctl::regs::channel_text(c));
        }
        if let Some(m) = &model {
            print!("{}", ctl::regs::model_text(m));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_selftest(cli: &Cli, dev: &str, channel: Option<u32>) -> Result<ExitCode> {
    let t = ctl::open(dev, &dev_opts(cli, None))?;
    let d = t.device()?;
    let list: Vec<u32> = match channel {
        Some(n) => {
            ctl::check_channel(n, d.info().chancnt, &t.label)?;
            vec![n]
        }
        None => (0..d.info().chancnt).collect(),
    };
    let mut reports = Vec::new();
    for &n in &list {
        progress(&format!("selftest: {} channel {n} ...", t.label));
        let r = ctl::selftest::run_channel(&d, n);
        progress(&format!(
            "selftest: {} channel {n}: {}",
            t.label,
            if r.passed { "PASS" } else { "FAIL" }
        ));
        reports.push(r);
    }
    let violations = t.violations();
    let passed = reports.iter().all(|r| r.passed) && violations.is_empty();
    if cli.json {
        print_json(&json!({
            "device": t.label,
            "passed": passed,
            "channels": reports,
            "model_violations": violations,
        }))?;
    } else {
        println!("selftest of {}", t.label);
        for r in &reports {
            println!(
                "channel {}: {} ({} ops, {} bytes, {:.1} ms)",
                r.channel,
                if r.passed { "PASS" } else { "FAIL" },
                r.ops,
                r.bytes,
                r.elapsed_ms
            );
            let rows: Vec<Vec<String>> = r
                .checks
                .iter()
                .map(|c| {
                    vec![
                        format!("  {}", c.name),
                        if c.ok { "ok" } else { "FAIL" }.into(),
                        c.detail.clone(),
                    ]
                })
                .collect();
            print!("{}", table(&["  CHECK", "RESULT", "DETAIL"], &rows));
        }
        for v in &violations {
            println!("model strict-mode violation: {v}");
        }
        println!(
            "{}: {} of {} channel(s) passed",
            if passed { "PASS" } else { "FAIL" },
            reports.iter().filter(|r| r.passed).count(),
            reports.len()
        );
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_reset(cli: &Cli, dev: &str, n: u32) -> Result<ExitCode> {
    let t = ctl::open(dev, &dev_opts(cli, None))?;
    let d = t.device()?;
    ctl::check_channel(n, d.info().chancnt, &t.label)?;
    let b = channel_base(n);
    let before_sts = ChanState::from_bits(t.regs.read64(b + chan::CHANSTS));
    let before_err = ChanErr(t.regs.read32(b + chan::CHANERR));
    // Opening the channel runs the driver's reset sequence (suspend if running, W1C CHANERR
    // (and CHANERR_INT below CB3.3), CHANCMD reset, poll) and restarts it with a null
    // descriptor, proving the channel works again.
    let ch = d
        .channel(n, ioat_driver::ChannelConfig::default())
        .map_err(|e| anyhow!("{}: channel {n}: reset failed: {e}", t.label))?;
    let after = ch.regs_snapshot();
    drop(ch);
    let after_sts = ChanState::from_bits(after.chansts);
    let ok = after.chanerr.is_empty() && after_sts != ChanState::Halted;
    if cli.json {
        print_json(&json!({
            "device": t.label,
            "channel": n,
            "before": {"state": before_sts.to_string(), "chanerr": before_err.to_string()},
            "after": {"state": after_sts.to_string(), "chanerr": after.chanerr.to_string()},
            "ok": ok,
        }))?;
    } else {
        println!(
            "{} channel {n}: {before_sts} (CHANERR {before_err}) -> reset and restarted -> {after_sts} (CHANERR {})",
            t.label, after.chanerr
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_bench(
    cli: &Cli,
    dev: &str,
    timing: Option<(Duration, u64)>,
    o: &ctl::bench::BenchOpts,
    svg: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let t = ctl::open(dev, &dev_opts(cli, timing))?;
    let d = t.device()?;
    ctl::check_channel(o.channel, d.info().chancnt, &t.label)?;
    let model_timing = if t.is_model() {
        Some(match timing {
            Some((pd, bps)) => format!(
                "simulated: {} ns per descriptor + {:.2} GB/s (model assumption, not a measurement)",
                pd.as_nanos(),
                bps as f64 / 1e9
            ),
            None => "instant (driver overhead only)".into(),
        })
    } else {
        None
    };
    let tty = std::io::stderr().is_terminal();
    let rep = ctl::bench::run(&d, &t.label, t.is_model(), model_timing, o, |r, i, n| {
        let line = format!(
            "bench: [{i}/{n}] {:>8}: DMA {:.3} GB/s, CPU {:.3} GB/s",
            size_str(r.size),
            r.dma_gbps,
            r.cpu_gbps
        );
        if tty {
            eprint!("\r{line}   ");
            if i == n {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    })?;
    if let Some(p) = svg {
        std::fs::write(p, ctl::svg::render(&rep))
            .map_err(|e| anyhow!("writing {}: {e}", p.display()))?;
    }
    if cli.json {
        print_json(&rep)?;
    } else {
        println!(
            "bench of {} channel {} ({} buffers)",
            rep.device,
            rep.channel,
            if rep.cold { "cold" } else { "cache-warm" }
        );
        if let Some(m) = &rep.model_timing {
            println!("DMA timing: {m}");
        }
        let rows: Vec<Vec<String>> = rep
            .results
            .iter()
            .map(|r| {
                vec![
                    size_str(r.size),
                    format!("{:.3}", r.dma_gbps),
                    format!("{:.3}", r.cpu_gbps),
                    format!("{:.2}", r.ratio),
                    format!("{:.2}", r.dma_latency_us),
                    format!("{:.2}", r.cpu_latency_us),
                    format!("{:.0}", r.dma_submit_ns),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "SIZE",
                    "DMA GB/s",
                    "CPU GB/s",
                    "DMA/CPU",
                    "DMA lat us",
                    "CPU lat us",
                    "submit ns/op"
                ],
                &rows
            )
        );
        println!(
            "crossover (DMA bandwidth >= CPU memcpy, at two sizes in a row): {}",
            rep.crossover_bytes
                .map(size_str)
                .unwrap_or_else(|| "none in the measured range".into())
        );
        println!(
            "offload break-even (submitting costs the CPU less than copying, two sizes in a row): {}",
            rep.crossover_cpu_cost_bytes
                .map(size_str)
                .unwrap_or_else(|| "none in the measured range".into())
        );
        if let Some(p) = svg {
            println!("plot written to {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
