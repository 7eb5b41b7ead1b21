//! `impair`: put a lossy link between two interfaces by hand (a netem stand-in).
//!
//! Forwards Ethernet frames both ways between `--a` and `--b` (in the current network namespace,
//! or `--netns NAME`), impairing TCP frames, until SIGINT/SIGTERM (or `--duration`), then prints
//! the counters. Example, with a relay namespace between a sender and netrxd:
//!
//! ```text
//! ip netns exec RELAYNS cargo run -p netrx-tests --bin impair -- \
//!     --a relay-a --b relay-b --loss 2 --reorder 25 --reorder-depth 3 --dup 1 --corrupt 0.1 --seed 7
//! ```
//! The interfaces should have no addresses; turn TSO/GSO off on the sender
//! (`ethtool -K IF tso off gso off`). See docs/testing.md.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use netrx_tests::relay::{Impairment, Relay, RelaySettings};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Dir {
    /// Impair both directions.
    Both,
    /// Impair frames read on --a and sent on --b only.
    AToB,
    /// Impair frames read on --b and sent on --a only.
    BToA,
}

/// Forward frames between two interfaces with loss, duplication, reordering, corruption,
/// delay/jitter and a rate limit applied to TCP frames (ARP and non-TCP pass untouched).
#[derive(Parser, Debug)]
#[command(name = "impair", version)]
struct Args {
    /// First interface.
    #[arg(long)]
    a: String,
    /// Second interface.
    #[arg(long)]
    b: String,
    /// Run inside this named network namespace (`ip netns list`) instead of the current one.
    #[arg(long)]
    netns: Option<String>,
    /// Which direction(s) the impairments apply to.
    #[arg(long, value_enum, default_value = "both")]
    direction: Dir,
    /// Loss, percent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Duplication, percent.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Reordering (hold-back), percent.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// A held frame leaves after this many later frames...
    #[arg(long, default_value_t = 3)]
    reorder_depth: u32,
    /// ...or after this many milliseconds.
    #[arg(long, default_value_t = 1.0)]
    reorder_timeout_ms: f64,
    /// Corruption (one TCP payload byte flipped, checksums stale), percent.
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Fixed delay, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Jitter (+-) around the delay, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Rate limit in bits per second, with optional k/M/G suffix (e.g. 500M).
    #[arg(long)]
    rate: Option<String>,
    /// Most frames held for reordering at once.
    #[arg(long, default_value_t = 64)]
    max_held: usize,
    /// Most frames waiting for delay/rate (tail drop beyond).
    #[arg(long, default_value_t = 10_000)]
    queue_limit: usize,
    /// RNG seed (printed at start; pass it again to replay the same decisions).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Print counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0.0)]
    stats_every: f64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn parse_rate(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("--rate `{s}`: expected bits per second like 100M, 1.5G or 250000"))?;
    let bps = v * mult;
    if !(1.0..1e13).contains(&bps) {
        bail!("--rate `{s}`: must be between 1 bit/s and 10 Tbit/s");
    }
    Ok(bps as u64)
}

fn ms(v: f64, name: &str) -> Result<Duration> {
    if !(0.0..=3_600_000.0).contains(&v) {
        bail!("--{name} must be between 0 and 3600000 ms, got {v}");
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

fn enter_netns(name: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("--netns {name}: no such namespace (see `ip netns list`)"))?;
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "--netns {name}: setns failed: {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("impair: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let imp = Impairment {
        loss: args.loss,
        duplicate: args.dup,
        reorder: args.reorder,
        reorder_depth: args.reorder_depth,
        reorder_timeout: ms(args.reorder_timeout_ms, "reorder-timeout-ms")?,
        corrupt: args.corrupt,
        delay: ms(args.delay_ms, "delay-ms")?,
        jitter: ms(args.jitter_ms, "jitter-ms")?,
        rate_bps: args.rate.as_deref().map(parse_rate).transpose()?,
        max_held: args.max_held,
        max_queued: args.queue_limit,
    };
    imp.validate().map_err(|e| anyhow!("{e}"))?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id())
    });
    let settings = match args.direction {
        Dir::Both => RelaySettings::both(imp, seed),
        Dir::AToB => RelaySettings::a_to_b_only(imp, seed),
        Dir::BToA => RelaySettings {
            a_to_b: Impairment::none(),
            b_to_a: imp,
            seed,
        },
    };
    if let Some(ns) = &args.netns {
        enter_netns(ns)?;
    }
    // SAFETY: installs an async-signal-safe handler (it only stores to an atomic).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let relay = Relay::start_on(None, &args.a, &args.b, settings.clone())
        .with_context(|| format!("starting the relay between {} and {}", args.a, args.b))?;
    eprintln!(
        "impair: forwarding {} <-> {} (seed {seed}; replay with --seed {seed})\n  a->b: {:?}\n  b->a: {:?}",
        args.a, args.b, settings.a_to_b, settings.b_to_a
    );
    let start = Instant::now();
    let mut last_stats = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        if args
            .duration
            .is_some_and(|d| start.elapsed().as_secs_f64() >= d)
        {
            break;
        }
        if args.stats_every > 0.0 && last_stats.elapsed().as_secs_f64() >= args.stats_every {
            eprintln!("{}", relay.counters());
            last_stats = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = relay.stop();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "impair: stopped after {:.1} s (seed {seed})\n{c}",
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100M").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("250000").unwrap(), 250_000);
        assert!(parse_rate("fast")
            .unwrap_err()
            .to_string()
            .contains("--rate"));
        assert!(parse_rate("0").is_err());
    }
}
