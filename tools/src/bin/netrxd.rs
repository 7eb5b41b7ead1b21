//! netrxd: TCP receive daemon on AF_XDP with I/OAT copy offload, its stats client, and the
//! seed's NET_DMA experiment in one command (`netrxd demo`). See `docs/netrxd.md`.

#[path = "../cli.rs"]
mod cli;

#[path = "../svg.rs"]
#[allow(dead_code)]
mod svg;

#[path = "../netrxd/mod.rs"]
#[allow(dead_code)]
mod netrxd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

use netrxd::config::{self, EngineSpec, FileConfig, FlagConfig, Settings};

const AFTER_HELP: &str = "\
Usage with a real I/OAT device:
  1. bind the DMA function to vfio-pci:   ioat-ctl bind 0000:00:04.0
  2. launch the daemon:                   netrxd run --iface eth1 --port 5001 --engine 0000:00:04.0 --policy adaptive
  3. watch it:                            netrxd stats --iface eth1 --port 5001
Without the hardware, --engine model uses the software I/OAT device (DMA timing simulated).
Try everything at once (as root): netrxd demo";

#[derive(Parser, Debug)]
#[command(
    name = "netrxd",
    version,
    about = "TCP receive daemon on AF_XDP that offloads payload copies to an I/OAT DMA engine where it pays off",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Receive TCP on an interface and port until SIGINT/SIGTERM.
    #[command(after_help = AFTER_HELP)]
    Run(Box<RunArgs>),
    /// Print a running daemon's stats (from its Unix stats socket).
    Stats {
        /// The stats socket (default /run/netrxd/IFACE-PORT.sock, or the only one there).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The seed's experiment: a kernel TCP sender with iperf 2's -w 250K -l 2M (iperf 2 when
    /// installed, a built-in sender otherwise) against cpu, netdma, netdma + rcvlowat 200 KB,
    /// adaptive and a kernel socket receiver, in private network namespaces (as root).
    #[command(allow_negative_numbers = true)]
    Demo {
        /// Seconds of sending per configuration and run (1..=600).
        #[arg(long, default_value_t = 5, value_parser = cli::int_in(1, 600, "s"))]
        seconds: u64,
        /// Runs per configuration (1..=20), interleaved; the table shows the median and the
        /// min-max of the bandwidth.
        #[arg(long, default_value_t = 1, value_parser = cli::int_in(1, 20, ""))]
        repeats: u64,
        /// auto (iperf 2 when installed, else the built-in sender), iperf, or builtin.
        #[arg(long, default_value = "auto")]
        sender: netrxd::sender::SenderChoice,
        /// Also draw the table as an SVG picture into FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// JSON on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// model[:skx|bdx|icx] (DMA timing simulated) or the PCI address of a device bound to
        /// vfio-pci (`ioat-ctl bind BDF`).
        #[arg(long, default_value = "model")]
        engine: String,
        /// Receive buffer of every receiver, 4K..=1G (default 250K, the seed's iperf -w).
        #[arg(long, default_value = "250K", allow_hyphen_values = true)]
        rcvbuf: String,
        /// Log level of the receive service during the demo.
        #[arg(long, default_value = "warn")]
        log: String,
        /// Where netrx's poller and TX kicker threads run: auto (different CPUs), float (where
        /// the scheduler puts them), or a CPU list such as 0,1.
        #[arg(long, default_value = "auto")]
        cpus: netrx::service::Placement,
    },
    /// The demo's built-in sender (started by `netrxd demo` inside its sender namespace).
    #[command(name = "__send-tcp", hide = true)]
    SendTcp(netrxd::sender::SendParams),
}

#[derive(clap::Args, Debug)]
#[command(allow_negative_numbers = true)]
struct RunArgs {
    /// Interface to receive on.
    #[arg(long)]
    iface: Option<String>,
    /// TCP port to receive (1..=65535).
    #[arg(long, value_parser = port_arg)]
    port: Option<u16>,
    /// RX queues to serve (0..N-1), 1..=64. Default 1.
    #[arg(long, value_parser = queues_arg)]
    queues: Option<u32>,
    /// cpu | model[:skx|bdx|icx] | BDF (a device bound with `ioat-ctl bind BDF`). Default cpu.
    #[arg(long)]
    engine: Option<String>,
    /// cpu | netdma | adaptive. Default: adaptive with a DMA engine, cpu without.
    #[arg(long)]
    policy: Option<String>,
    /// Segments up to this size are copied by CPU (e.g. 4096, 4K).
    #[arg(long, allow_hyphen_values = true)]
    copybreak: Option<String>,
    /// Receive buffer (window) per connection (e.g. 250K, 2M).
    #[arg(long, allow_hyphen_values = true)]
    rcvbuf: Option<String>,
    /// Minimum bytes a receive waits for (SO_RCVLOWAT; e.g. 200K).
    #[arg(long, allow_hyphen_values = true)]
    rcvlowat: Option<String>,
    /// Bytes asked for per receive call (default 2M).
    #[arg(long, allow_hyphen_values = true)]
    recv_size: Option<String>,
    /// discard | dir:PATH (one file per connection, renamed into place on clean end of stream).
    #[arg(long)]
    sink: Option<String>,
    /// TOML config file; flags override its keys (see docs/netrxd.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG wins when set.
    #[arg(long)]
    log: Option<String>,
    /// Serve Prometheus text on this loopback address (127.0.0.1:PORT).
    #[arg(long)]
    metrics: Option<String>,
    /// Unix stats socket (default /run/netrxd/IFACE-PORT.sock).
    #[arg(long)]
    stats_socket: Option<PathBuf>,
    /// On SIGINT/SIGTERM, let open connections finish for this long before cutting them
    /// (0..=600000 ms).
    #[arg(long, value_parser = cli::int_in(0, config::DRAIN_TIMEOUT_MAX_MS, "ms"))]
    drain_timeout_ms: Option<u64>,
    /// Scatter-gather frames for jumbo MTUs: auto (on exactly when the interface's MTU needs
    /// frames larger than 3840 bytes, i.e. MTU above 3822), on, or off. Default auto.
    #[arg(long, value_name = "auto|on|off")]
    sg: Option<String>,
    /// Connections per RX queue, embryonic included (default 16384); at the cap the one idle
    /// longest (10 s or more) is reset to make room for a new one.
    #[arg(long, value_parser = cli::int_in(1, config::MAX_CONNECTIONS_MAX, ""))]
    max_connections: Option<u64>,
    /// Inject faults into the model engine (with --engine model), for rehearsals:
    /// error-every=N, hang-after=N, slow-us=U, comma-separated.
    #[arg(long, value_name = "SPEC")]
    fault: Option<String>,
    /// Where each queue's poller and TX kicker threads run: float (default: where the
    /// scheduler puts them), auto (spread over the allowed CPUs, a queue's two threads on
    /// different CPUs), or a CPU list such as 0,1 or 2-5.
    #[arg(long, value_name = "float|auto|LIST")]
    cpus: Option<String>,
}

fn port_arg(s: &str) -> Result<u16, String> {
    cli::int_in(1, 65535, "")(s).map(|v| v as u16)
}

fn queues_arg(s: &str) -> Result<u32, String> {
    cli::int_in(1, 64, "")(s).map(|v| v as u32)
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netrxd: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(a) => {
            let file = match &a.config {
                Some(p) => FileConfig::load(p)?,
                None => FileConfig::default(),
            };
            let flags = FlagConfig {
                iface: a.iface,
                port: a.port,
                queues: a.queues,
                engine: a.engine,
                policy: a.policy,
                copybreak: a.copybreak,
                rcvbuf: a.rcvbuf,
                rcvlowat: a.rcvlowat,
                recv_size: a.recv_size,
                sink: a.sink,
                log: a.log,
                metrics: a.metrics,
                stats_socket: a.stats_socket,
                drain_timeout_ms: a.drain_timeout_ms,
                sg: a.sg,
                max_connections: a.max_connections,
                fault: a.fault,
                cpus: a.cpus,
            };
            let s = Settings::merge(flags, file)?;
            init_logs(&s.log);
            netrxd::daemon::run(s)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats {
            socket,
            iface,
            port,
            json,
        } => {
            let path = match (socket, iface, port) {
                (Some(p), _, _) => p,
                (None, Some(i), Some(p)) => config::default_stats_socket(&i, p),
                (None, None, None) => only_socket()?,
                _ => bail!("pass both --iface and --port, or --socket PATH"),
            };
            let snap = netrxd::stats::query_unix(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                print!("{}", snap.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SendTcp(p) => {
            println!("{}", netrxd::sender::send(&p)?.line());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            seconds,
            repeats,
            sender,
            svg,
            json,
            engine,
            rcvbuf,
            log,
            cpus,
        } => {
            init_logs(&log);
            let engine: EngineSpec = engine.parse()?;
            let rcvbuf = config::parse_size(&rcvbuf).context("in --rcvbuf")?;
            config::check_range("rcvbuf", rcvbuf, config::RCVBUF_MIN)?;
            if let Some(p) = &svg {
                // Fail now, not after the whole demo ran.
                std::fs::write(p, "")
                    .map_err(|e| anyhow!("--svg: cannot write {}: {e}", p.display()))?;
            }
            let result = netrxd::demo::run(netrxd::demo::DemoOpts {
                seconds,
                json,
                engine,
                rcvbuf,
                sender,
                repeats: repeats as usize,
                sender_window: netrxd::demo::WINDOW,
                cpus,
            });
            if let (Err(_), Some(p)) = (&result, &svg) {
                // No picture: leave no empty file behind.
                let _ = std::fs::remove_file(p);
            }
            let report = match result {
                Ok(r) => r,
                Err(e) if netrxd::signals::stop_requested() => {
                    eprintln!(
                        "netrxd demo: interrupted ({e:#}); namespaces, veth and XDP programs removed"
                    );
                    return Ok(ExitCode::from(130));
                }
                Err(e) => return Err(e),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", netrxd::demo::render(&report));
            }
            if let Some(path) = svg {
                std::fs::write(&path, netrxd::demo::render_svg(&report))
                    .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
                eprintln!("netrxd demo: picture written to {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The only socket in /run/netrxd, if exactly one.
fn only_socket() -> Result<PathBuf> {
    let dir = std::path::Path::new(config::RUN_DIR);
    let socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            anyhow!(
                "no daemon found ({}: {e}); is `netrxd run` running?",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no stats socket in {}; is `netrxd run` running?",
            dir.display()
        ),
        _ => bail!(
            "several daemons run ({}); pick one with --iface IF --port P or --socket PATH",
            socks
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
