//! netrx-bench: side-by-side measurements reported as ratios (never absolute pass/fail).
//!
//! `netrx-bench copy-sizes`: receive-core cost of a CPU copy vs handing it to I/OAT, by size.
//! `netrx-bench policy`: the seed's NET_DMA experiment through the sans-IO copier, per policy.
//! `netrx-bench e2e`: kernel TCP over veth into netrx and two kernel reference rows (as root).

#[path = "../cli.rs"]
mod cli;

#[path = "../bench/mod.rs"]
mod bench;

#[path = "../svg.rs"]
#[allow(dead_code)]
mod svg;

#[path = "../netrxd/mod.rs"]
#[allow(dead_code)]
mod netrxd;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use netrx::copy::PolicyKind;

use bench::{copy_sizes, parse_size, policy};

#[derive(Parser, Debug)]
#[command(
    name = "netrx-bench",
    about = "Side-by-side copy-path benchmarks reported as ratios (DMA timing of the model is simulated)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

fn policy_kind(s: &str) -> Result<PolicyKind, String> {
    s.trim().parse()
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Per-segment receive-core cost: CPU memcpy (cold and warm frames) vs submitting the copy
    /// to an I/OAT channel (descriptor + doorbell + reap), by size, with the break-even size.
    #[command(allow_negative_numbers = true)]
    CopySizes {
        /// Sizes in bytes (K/M suffixes are 1024-based).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, value_delimiter = ',', default_value = "64,128,256,512,1024,1448,2048,4096,8192,8948,16K,32K,64K")]
        sizes: Vec<usize>,
        /// Measuring time per size and method, milliseconds (1..=60000).
        #[arg(long, default_value_t = 150, value_parser = cli::int_in(1, 60_000, "ms"))]
        budget_ms: u64,
        /// Cold frame pool size (several times the last-level cache).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "128M")]
        pool: usize,
        /// Ops per doorbell in the batched column (1..=1024).
        #[arg(long, default_value_t = 16, value_parser = cli::usize_in(1, 1024, ""))]
        batch: usize,
        /// Simulated device time per descriptor shown next to the costs, ns (0..=1000000000).
        #[arg(long, default_value_t = 1500, value_parser = cli::int_in(0, 1_000_000_000, "ns"))]
        sim_per_desc_ns: u64,
        /// Simulated device rate shown next to the costs, GB/s.
        #[arg(long, default_value_t = 5.0)]
        sim_gbytes: f64,
        /// Receive buffer pinned per call in the pinning stand-in (0 = skip).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "2M")]
        pin: usize,
        /// Machine-readable report on stdout (progress stays on stderr).
        #[arg(long)]
        json: bool,
    },
    /// A synthetic stream through the copier under each policy with the seed's parameters;
    /// bytes by path, DMA ops, wakeups by reason, copy time, ratios against policy cpu.
    #[command(allow_negative_numbers = true)]
    Policy {
        /// Segment payload sizes (1448 = MSS at MTU 1500, 8948 = MTU 9000).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, value_delimiter = ',', default_value = "1448,8948")]
        seg: Vec<usize>,
        /// Copy policies to compare (cpu is the baseline of every ratio).
        #[arg(long, value_parser = policy_kind, value_delimiter = ',', default_value = "cpu,netdma,adaptive")]
        policies: Vec<PolicyKind>,
        /// SO_RCVLOWAT values (the seed: default 1, and 200 KB).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, value_delimiter = ',', default_value = "1,200K")]
        rcvlowat: Vec<usize>,
        /// recv() buffer length (iperf -l).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "2M")]
        recv_len: usize,
        /// SO_RCVBUF (iperf -w).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "250K")]
        rcvbuf: usize,
        /// Payload per run, MiB (1..=65536).
        #[arg(long, default_value_t = 128, value_parser = cli::int_in(1, 65_536, "MiB"))]
        mib: u64,
        /// Runs per configuration (medians are reported), 1..=100.
        #[arg(long, default_value_t = 3, value_parser = cli::usize_in(1, 100, ""))]
        repeats: usize,
        /// Segments delivered per receive-core poll (1..=4096).
        #[arg(long, default_value_t = 32, value_parser = cli::usize_in(1, 4096, ""))]
        burst: usize,
        /// The sender sets PSH once per this many bytes.
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "128K")]
        psh_every: usize,
        /// Pace the sender to this link rate in Gbit/s (0 = unpaced, receive-core bound).
        #[arg(long, default_value_t = 0.0)]
        link_gbps: f64,
        /// tcp_dma_copybreak for policy netdma.
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "4096")]
        copybreak: usize,
        /// Simulated model DMA time per descriptor, ns (0..=1000000000).
        #[arg(long, default_value_t = 1500, value_parser = cli::int_in(0, 1_000_000_000, "ns"))]
        dma_per_desc_ns: u64,
        /// Simulated model DMA rate, GB/s.
        #[arg(long, default_value_t = 5.0)]
        dma_gbytes: f64,
        /// Cold frame pool size.
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "64M")]
        pool: usize,
        /// DMA engine: `model` (the I/OAT driver on the software model) or `ideal` (timing
        /// only, free doorbell, no bytes moved: the most favourable case for DMA).
        #[arg(long, default_value = "model")]
        engine: policy::EngineChoice,
        /// Machine-readable report on stdout (progress stays on stderr).
        #[arg(long)]
        json: bool,
    },
    /// End to end, as root: a kernel TCP sender (iperf 2 -l 2M, or the built-in sender) over veth
    /// between private network namespaces into netrx configurations, the kernel socket, and the
    /// kernel socket behind a native XDP_PASS program; runs alternate; per row Gbit/s min/median/
    /// max, ratios to both kernel rows, packet-path counters, whole-machine CPU per GB.
    #[command(allow_negative_numbers = true)]
    E2e {
        /// Seconds of sending per run (1..=600).
        #[arg(long, default_value_t = 5, value_parser = cli::int_in(1, 600, "s"))]
        seconds: u64,
        /// Runs per row (1..=50), alternating: every row once, then again.
        #[arg(long, default_value_t = 5, value_parser = cli::usize_in(1, 50, ""))]
        repeats: usize,
        /// netrx configurations: cpu, netdma, netdma-lowat, adaptive (the two kernel rows are
        /// always added).
        #[arg(long, value_delimiter = ',', default_value = "cpu,adaptive")]
        configs: Vec<String>,
        /// Sender socket buffers (iperf -w); the seed's is 250K.
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, value_delimiter = ',', default_value = "250K,1M")]
        window: Vec<usize>,
        /// Link MTUs.
        #[arg(long, value_delimiter = ',', default_value = "1500,9000", value_parser = clap::value_parser!(u32).range(1280..=9000))]
        mtu: Vec<u32>,
        /// SO_RCVBUF of every receiver (netrx gets twice this, as Linux doubles it).
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size, default_value = "250K")]
        rcvbuf: usize,
        /// model[:skx|bdx|icx] or the PCI address of an I/OAT device bound to vfio-pci.
        #[arg(long, default_value = "model")]
        engine: String,
        /// auto (iperf 2 when installed, else the built-in sender), iperf, or builtin.
        #[arg(long, default_value = "auto")]
        sender: netrxd::sender::SenderChoice,
        /// Also draw the table as an SVG picture into FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<std::path::PathBuf>,
        /// Machine-readable report on stdout (progress stays on stderr).
        #[arg(long)]
        json: bool,
        /// Where netrx's poller and TX kicker threads run: auto (different CPUs), float (where
        /// the scheduler puts them), or a CPU list such as 0,1.
        #[arg(long, default_value = "auto")]
        cpus: netrx::service::Placement,
    },
    /// The built-in sender (started by `e2e` inside its sender namespace).
    #[command(name = "__send-tcp", hide = true)]
    SendTcp(netrxd::sender::SendParams),
}

fn gbytes_to_bps(g: f64) -> Result<u64> {
    if !(g.is_finite() && g > 0.0) {
        anyhow::bail!("a DMA rate must be a positive number of GB/s, got {g}");
    }
    Ok((g * 1e9) as u64)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::CopySizes {
            sizes,
            budget_ms,
            pool,
            batch,
            sim_per_desc_ns,
            sim_gbytes,
            pin,
            json,
        } => {
            let o = copy_sizes::Opts {
                sizes,
                budget: Duration::from_millis(budget_ms.max(1)),
                pool_bytes: pool,
                batch,
                sim_per_desc_ns,
                sim_bytes_per_sec: gbytes_to_bps(sim_gbytes)?,
                pin_bytes: (pin > 0).then_some(pin),
            };
            let r = copy_sizes::run(&o, |row, i, n| {
                eprintln!("  [{i}/{n}] {} B done", row.size);
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", copy_sizes::render(&r));
            }
        }
        Cmd::Policy {
            seg,
            policies,
            rcvlowat,
            recv_len,
            rcvbuf,
            mib,
            repeats,
            burst,
            psh_every,
            link_gbps,
            copybreak,
            dma_per_desc_ns,
            dma_gbytes,
            pool,
            engine,
            json,
        } => {
            if !(link_gbps.is_finite() && link_gbps >= 0.0) {
                anyhow::bail!("--link-gbps must be 0 (unpaced) or a positive rate");
            }
            let o = policy::Opts {
                seg_sizes: seg,
                policies,
                rcvlowats: rcvlowat,
                recv_len,
                rcvbuf,
                bytes: mib.max(1) << 20,
                repeats,
                burst: burst.max(1),
                psh_every: psh_every.max(1),
                link_gbps,
                copybreak,
                per_desc_ns: dma_per_desc_ns,
                dma_bytes_per_sec: gbytes_to_bps(dma_gbytes)?,
                pool_bytes: pool,
                engine,
            };
            let r = policy::run(&o, |line| eprintln!("{line}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", policy::render(&r));
            }
        }
        Cmd::E2e {
            seconds,
            repeats,
            configs,
            window,
            mtu,
            rcvbuf,
            engine,
            sender,
            svg,
            json,
            cpus,
        } => {
            let o = bench::e2e::Opts {
                cpus,
                seconds,
                repeats,
                configs,
                windows: window,
                mtus: mtu,
                engine: engine.parse()?,
                sender,
                rcvbuf,
            };
            let r = bench::e2e::run(&o)?;
            if let Some(p) = svg {
                std::fs::write(&p, bench::e2e::render_svg(&r))
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", bench::e2e::render(&r));
            }
        }
        Cmd::SendTcp(p) => {
            println!("{}", netrxd::sender::send(&p)?.line());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_lists_and_defaults() {
        let c = Cli::try_parse_from([
            "netrx-bench",
            "policy",
            "--seg",
            "1448",
            "--rcvlowat",
            "1,200K",
            "--policies",
            "netdma",
        ])
        .unwrap();
        match c.cmd {
            Cmd::Policy {
                seg,
                rcvlowat,
                policies,
                recv_len,
                rcvbuf,
                ..
            } => {
                assert_eq!(seg, vec![1448]);
                assert_eq!(rcvlowat, vec![1, 204_800]);
                assert_eq!(policies, vec![PolicyKind::NetDma]);
                assert_eq!(recv_len, 2 << 20);
                assert_eq!(rcvbuf, 256_000);
            }
            other => panic!("{other:?}"),
        }
        let err = Cli::try_parse_from(["netrx-bench", "policy", "--policies", "dma"]).unwrap_err();
        assert!(err.to_string().contains("cpu, netdma, adaptive"), "{err}");
        let c = Cli::try_parse_from(["netrx-bench", "copy-sizes", "--json"]).unwrap();
        match c.cmd {
            Cmd::CopySizes { sizes, json, .. } => {
                assert!(json);
                assert!(sizes.contains(&1448) && sizes.contains(&8948) && sizes.contains(&65_536));
            }
            other => panic!("{other:?}"),
        }
        assert!(gbytes_to_bps(0.0).is_err());
        // Negative and out-of-range numbers: the flag and the range, not "unexpected argument".
        for (args, flag, want) in [
            (&["policy", "--repeats", "-1"][..], "--repeats", "negative"),
            (&["policy", "--mib", "0"][..], "--mib", "1..=65536"),
            (&["policy", "--rcvbuf", "-250K"][..], "--rcvbuf", "negative"),
            (
                &["copy-sizes", "--budget-ms", "-5"][..],
                "--budget-ms",
                "negative",
            ),
            (
                &["copy-sizes", "--sizes", "64,-1"][..],
                "--sizes",
                "negative",
            ),
        ] {
            let e = Cli::try_parse_from(std::iter::once("netrx-bench").chain(args.iter().copied()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag) && e.contains(want), "{args:?}: {e}");
        }
        assert_eq!(gbytes_to_bps(5.0).unwrap(), 5_000_000_000);
    }
}
