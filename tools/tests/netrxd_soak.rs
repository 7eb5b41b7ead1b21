//! Opt-in soak of the `netrxd` binary behind the impairment relay (root; `#[ignore]`d, not
//! part of `scripts/test`):
//!
//! ```text
//! NETRX_SOAK_GIB=4 cargo test -p netrx-tools --release --test netrxd_soak -- --ignored --nocapture
//! ```
//!
//! For each engine/policy configuration (`NETRX_SOAK_CONFIGS`, default
//! `cpu,netdma,netdma-lowat,adaptive`), `netrxd run` with a `dir:` sink receives
//! `NETRX_SOAK_GIB` GiB (default 2) from `NETRX_SOAK_SENDERS` (default 4) concurrent kernel TCP
//! senders through a relay that drops 5 %, reorders 25 %, duplicates 1 % and corrupts 0.1 % of
//! TCP frames both ways. Every received file must have the sent length and SHA-256, and the
//! daemon's RSS (sampled every second) must stay flat: its maximum after the first GiB at most
//! 32 MiB above the maximum of the first GiB. The figures go to stdout (docs/reliability.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netrx_tests::netns::{self, LinkOpts, ThreeHost, RECEIVER_ADDR};
use netrx_tests::relay::{Impairment, Relay, RelaySettings};
use netrx_tests::stream::{send_seeded, SendOpts};

const BIN: &str = env!("CARGO_BIN_EXE_netrxd");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sha_file(p: &Path) -> [u8; 32] {
    netrx_tests::stream::sha256_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `netrxd run` arguments of a soak configuration.
fn config_args(name: &str) -> Vec<&'static str> {
    match name {
        "cpu" => vec!["--engine", "cpu", "--policy", "cpu"],
        "netdma" => vec!["--engine", "model", "--policy", "netdma"],
        "netdma-lowat" => vec![
            "--engine",
            "model",
            "--policy",
            "netdma",
            "--rcvlowat",
            "200K",
        ],
        "adaptive" => vec!["--engine", "model", "--policy", "adaptive"],
        other => {
            panic!("unknown soak configuration {other:?} (cpu, netdma, netdma-lowat, adaptive)")
        }
    }
}

#[derive(Debug)]
struct SoakResult {
    config: String,
    bytes: u64,
    secs: f64,
    files_ok: usize,
    rss_first_mib: f64,
    rss_rest_mib: f64,
    relay: String,
}

fn soak_one(config: &str, gib: f64, senders: usize, seed: u64) -> SoakResult {
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    let imp = Impairment {
        loss: 5.0,
        reorder: 25.0,
        reorder_depth: 3,
        duplicate: 1.0,
        corrupt: 0.1,
        ..Impairment::none()
    };
    let relay = Relay::start(&topo, RelaySettings::both(imp, seed)).expect("start relay");
    let dir = std::env::temp_dir().join(format!("netrxd-soak-{config}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out");
    let sock = dir.join("stats.sock");
    let port = 5700u16;
    let p = port.to_string();
    let sink = format!("dir:{}", out.display());
    let sock_s = sock.display().to_string();
    let mut args = vec![
        "run",
        "--iface",
        &topo.receiver_if,
        "--port",
        &p,
        "--sink",
        &sink,
        "--stats-socket",
        &sock_s,
        "--log",
        "warn",
    ];
    args.extend(config_args(config));
    let child = topo.receiver.spawn(BIN, &args).expect("spawn netrxd run");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "netrxd run did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id();
    let total = (gib * (1u64 << 30) as f64) as u64;
    let per = total / senders as u64;
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..senders {
        let s = seed * 1000 + i as u64;
        handles.push(
            topo.sender
                .spawn_thread(move || {
                    let opts = SendOpts {
                        write_timeout: Duration::from_secs(60),
                        read_timeout: Duration::from_secs(60),
                        ..SendOpts::default()
                    };
                    send_seeded(SocketAddr::from((RECEIVER_ADDR, port)), per, s, &opts)
                })
                .expect("sender thread"),
        );
    }
    // RSS: the maximum while the first GiB arrives, and after it.
    let (mut first, mut rest) = (0u64, 0u64);
    while handles.iter().any(|h| !h.is_finished()) {
        let got = std::fs::read_dir(&out)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>()
            })
            .unwrap_or(0);
        let r = rss_kib(pid).unwrap_or(0);
        if got < 1 << 30 {
            first = first.max(r);
        } else {
            rest = rest.max(r);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut want = Vec::new();
    for h in handles {
        let (n, sha) = h.join().unwrap().expect("sender");
        want.push((n, sha));
    }
    let secs = start.elapsed().as_secs_f64();
    // Files are complete once the receiver saw every FIN; give the sink a moment.
    let t1 = Instant::now();
    let files = loop {
        let f: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.to_string_lossy().ends_with(".partial"))
            .collect();
        if f.len() == senders || t1.elapsed() > Duration::from_secs(30) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    child.signal(libc::SIGTERM).unwrap();
    let status = child.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        status.status.success(),
        "{config}: netrxd exit: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut got: Vec<(u64, [u8; 32])> = files
        .iter()
        .map(|p| (std::fs::metadata(p).unwrap().len(), sha_file(p)))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "{config}: every file has the sent length and SHA-256"
    );
    let c = relay.counters().a_to_b;
    let relay_counters = format!(
        "{} data frames: {} lost, {} reordered, {} duplicated, {} corrupted",
        c.tcp, c.lost, c.reordered, c.duplicated, c.corrupted
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
    SoakResult {
        config: config.to_string(),
        bytes: want.iter().map(|w| w.0).sum(),
        secs,
        files_ok: got.len(),
        rss_first_mib: first as f64 / 1024.0,
        rss_rest_mib: rest as f64 / 1024.0,
        relay: relay_counters,
    }
}

#[test]
#[ignore = "opt-in soak (minutes): NETRX_SOAK_GIB=N cargo test -p netrx-tools --release --test netrxd_soak -- --ignored --nocapture"]
fn netrxd_soak_impaired_sha256_flat_rss() {
    if !netns::require_root_or_skip("netrxd_soak_impaired_sha256_flat_rss") {
        return;
    }
    let gib: f64 = env_or("NETRX_SOAK_GIB", 2.0);
    let senders: usize = env_or("NETRX_SOAK_SENDERS", 4).max(1);
    let configs: String = env_or(
        "NETRX_SOAK_CONFIGS",
        "cpu,netdma,netdma-lowat,adaptive".to_string(),
    );
    let mut results = Vec::new();
    for (i, c) in configs.split(',').map(str::trim).enumerate() {
        let r = soak_one(c, gib, senders, 41 + i as u64);
        println!(
            "soak {}: {:.2} GiB in {:.0} s ({:.2} Gbit/s), {} files SHA-256 equal, RSS max {:.0} MiB first GiB, {:.0} MiB after; relay {}",
            r.config,
            r.bytes as f64 / (1u64 << 30) as f64,
            r.secs,
            r.bytes as f64 * 8.0 / r.secs / 1e9,
            r.files_ok,
            r.rss_first_mib,
            r.rss_rest_mib,
            r.relay
        );
        if r.rss_rest_mib > 0.0 {
            assert!(
                r.rss_rest_mib <= r.rss_first_mib + 32.0,
                "{}: RSS grew: {:.0} -> {:.0} MiB",
                r.config,
                r.rss_first_mib,
                r.rss_rest_mib
            );
        }
        results.push(r);
    }
}
