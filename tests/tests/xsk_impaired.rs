//! End-to-end under impairment: a kernel TCP sender (std::net in the sender namespace) streams
//! seeded pseudo-random data through the impairment relay (loss 2%, reorder 25% depth 3,
//! duplicate 1%, corrupt 0.1%, both directions) to the netrx receive path (AF_XDP in native
//! mode, the `netrx::tcp` endpoint behind `netrx::xsk::tcp_rx`) in the receiver namespace.
//! The exact byte count and the SHA-256 must match; the relay's counters must show every
//! impairment; the receiver's counters must show out-of-order handling, duplicates and checksum
//! drops; and no UMEM frame may leak.
//!
//! Topology ([`ThreeHost`]): sender ns `<->` relay ns (AF_PACKET relay, L2 hop) `<->` receiver
//! ns. The sender's TX checksum offload and TSO/GSO are off (frames re-sent from user space lose
//! offload state, and the relay impairs MTU-sized frames one by one), so a corrupted frame reaches
//! netrx with a stale checksum that its software verification must reject. The relay's end that
//! feeds the receiver has GRO/TSO/GSO off; native XDP on the receiver's veth also forces TSO off
//! on that peer.
//!
//! Size: `NETRX_XSK_IMPAIRED_MIB` (default 1024 MiB in release builds, 16 MiB in debug builds).
//! Needs root; fails under `CI=true` when it cannot run.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant as StdInstant};

use netrx::tcp::{Config, EndpointStats};
use netrx::xsk::poller::{self, PollerConfig};
use netrx::xsk::{AttachMode, XdpConfig, XdpMode, XdpService};
use netrx_tests::hashq::{HashQueue, StreamResult};
use netrx_tests::netns::{self, LinkOpts, ThreeHost, RECEIVER_ADDR};
use netrx_tests::relay::{Impairment, Relay, RelayCounters, RelaySettings};
use netrx_tests::stream::{send_seeded, SendOpts};
use sha2::{Digest, Sha256};

const PORT: u16 = 5201;
const SEED: u64 = 0x5eed_0005;
const RELAY_SEED: u64 = 12;

/// Stream size in MiB: `NETRX_XSK_IMPAIRED_MIB`, else 1 GiB in release and 16 MiB in debug.
fn stream_mib() -> u64 {
    std::env::var("NETRX_XSK_IMPAIRED_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&m| m > 0)
        .unwrap_or(if cfg!(debug_assertions) { 16 } else { 1024 })
}

/// Sends `len` seeded random bytes, then FIN, then waits for the receiver's FIN. Every write is
/// bounded by a timeout and the whole loop by `deadline`. Returns (bytes, sha256).
fn send_stream(
    to: SocketAddr,
    len: u64,
    seed: u64,
    deadline: StdInstant,
) -> std::io::Result<(u64, [u8; 32])> {
    let opts = SendOpts {
        connect_timeout: Duration::from_secs(10),
        deadline: Some(deadline),
        ..SendOpts::default()
    };
    send_seeded(to, len, seed, &opts)
}

/// Everything one impaired run produced.
struct NetrxRun {
    mib: u64,
    elapsed: Duration,
    /// (bytes, SHA-256) the sender wrote, or why it failed.
    sent: Result<(u64, [u8; 32]), String>,
    got: Option<StreamResult>,
    relay: RelayCounters,
    endpoint: EndpointStats,
    /// Frame-accounting problems (empty: no leak).
    leaks: Vec<String>,
    sender_tcp: String,
}

impl NetrxRun {
    fn gbps(&self) -> f64 {
        (self.mib << 20) as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// One kernel sender -> relay (`imp` both ways) -> netrx receiver run of `mib` MiB.
fn run_netrx(test: &str, mib: u64, imp: Impairment, ep_cfg: Config) -> NetrxRun {
    let bytes = mib << 20;
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    // Single queue here, but keep the flow's TX queue stable after an RTO anyway (see xsk_tcp).
    topo.sender
        .run_cmd("sysctl", &["-qw", "net.core.txrehash=0"])
        .expect("sysctl net.core.txrehash=0 in the sender namespace");

    let mut cfg = XdpConfig::new(&topo.receiver_if, PORT);
    cfg.attach = AttachMode::Native;
    let mut svc = topo
        .receiver
        .run(|| XdpService::open(&cfg))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(svc.mode(), XdpMode::Native);
    let sockets = svc.take_sockets();

    let (tx, rx) = mpsc::channel();
    let origin = StdInstant::now();
    let handlers = sockets
        .into_iter()
        .map(|s| {
            let cfg = Config {
                isn_secret: 0x77 + u64::from(s.queue()),
                ..ep_cfg.clone()
            };
            let h = HashQueue::new(&s, cfg, PORT, origin, tx.clone());
            (s, h)
        })
        .collect();
    let pollers = poller::spawn_handlers(handlers, PollerConfig::default()).expect("pollers");
    let relay = Relay::start(&topo, RelaySettings::both(imp, RELAY_SEED)).expect("start relay");

    // Generous bound: a stall shows up as a failure, not as a hung CI job.
    let limit = Duration::from_secs(60 + mib / 2);
    let start = StdInstant::now();
    let deadline = start + limit;
    let to = SocketAddr::from((RECEIVER_ADDR, PORT));
    let sent = topo
        .sender
        .run(move || send_stream(to, bytes, SEED, deadline))
        .map_err(|e| e.to_string());
    let elapsed = start.elapsed();
    let got = rx.recv_timeout(Duration::from_secs(15)).ok();

    // Frame accounting and receiver counters (printed also when the transfer failed).
    std::thread::sleep(Duration::from_millis(100));
    let mut endpoint = EndpointStats::default();
    let mut leaks = Vec::new();
    for (mut sock, h) in pollers.stop() {
        let st = (h.core_stats(), h.tx_stats());
        endpoint = h.endpoint_stats();
        let frames = sock.check_no_leak();
        eprintln!(
            "{test}: queue {}: glue {st:?}; endpoint {endpoint:?}; socket {:?}; kernel {:?}; \
             frames {frames:?}",
            sock.queue(),
            sock.stats(),
            sock.kernel_stats().ok(),
        );
        if h.held() != (0, 0) || st.1.bad_releases != 0 {
            leaks.push(format!("queue {}: glue {st:?}", sock.queue()));
        }
        match frames {
            Ok(c) if c.held == 0 => {}
            Ok(c) => leaks.push(format!("queue {}: frames still held {c:?}", sock.queue())),
            Err(e) => leaks.push(format!("queue {}: {e}", sock.queue())),
        }
    }
    let relay = relay.stop();
    let sender_tcp = sender_tcp_counters(&topo.sender);
    let run = NetrxRun {
        mib,
        elapsed,
        sent,
        got,
        relay,
        endpoint,
        leaks,
        sender_tcp,
    };
    eprintln!(
        "{test}: {mib} MiB in {elapsed:.2?} ({:.3} Gbit/s)\n  relay:\n{}\n  sender: {}\n  \
         connection: {:?}",
        run.gbps(),
        run.relay,
        run.sender_tcp,
        run.got.as_ref().and_then(|g| g.conn)
    );
    run
}

#[test]
fn xsk_impaired_stream_loss_reorder_dup_corrupt() {
    let test = "xsk_impaired_stream_loss_reorder_dup_corrupt";
    if !netns::require_root_or_skip(test) || !netns::require_tools_or_skip(test, &["ethtool"]) {
        return;
    }
    let mib = stream_mib();
    let bytes = mib << 20;
    let r = run_netrx(test, mib, Impairment::netem_like(), Config::default());

    // The stream: exact length and SHA-256.
    let sent = r
        .sent
        .as_ref()
        .unwrap_or_else(|e| panic!("sender failed after {:.2?}: {e}", r.elapsed));
    let got = r.got.as_ref().expect("the stream ended at the receiver");
    assert!(got.error.is_none(), "stream error: {got:?}");
    assert_eq!(sent.0, bytes);
    assert_eq!(got.bytes, bytes, "exact byte count");
    assert_eq!(got.sha, sent.1, "SHA-256 of what the application read");

    // The relay did impair, both ways.
    let d = &r.relay.a_to_b;
    assert!(d.lost > 0, "loss: {d}");
    assert!(d.reordered > 0 && d.released_by_depth > 0, "reorder: {d}");
    assert!(d.duplicated > 0, "duplicate: {d}");
    assert!(d.corrupted > 0, "corrupt: {d}");
    assert_eq!(d.gso_dropped, 0, "sender TSO/GSO must be off: {d}");
    let u = &r.relay.b_to_a;
    assert!(
        u.lost > 0 && u.reordered > 0 && u.duplicated > 0,
        "ACKs impaired too: {u}"
    );

    // The receiver handled it.
    let cs = got.conn.expect("the connection's counters at its end");
    assert!(cs.ooo_segments > 0, "out-of-order segments queued: {cs:?}");
    assert!(cs.dup_bytes > 0, "duplicate bytes dropped: {cs:?}");
    assert_eq!(cs.payload_in, bytes, "{cs:?}");
    let ep = &r.endpoint;
    assert!(
        ep.bad_checksums > 0,
        "corrupted frames dropped by checksum verification: {ep:?}"
    );
    // Each corrupted frame reaches netrx at most twice (itself and a duplicate).
    assert!(
        ep.bad_checksums <= 2 * d.corrupted,
        "only corrupted frames fail the checksum: {ep:?} vs {d}"
    );

    // No UMEM frame leaked.
    assert!(r.leaks.is_empty(), "frame leak: {:?}", r.leaks);
}

/// Report (no pass/fail on speed): the same impaired transfer into netrx and into a kernel socket
/// receiver, side by side with the kernel sender's retransmission counters. Run with
/// `cargo test --release -p netrx-tests --test xsk_impaired -- --ignored --nocapture`
/// (`NETRX_XSK_IMPAIRED_REPORT_MIB`, default 128).
///
/// Rows: netrx with defaults; netrx with `max_ooo_mem` set to `rcvbuf`; the kernel receiver as
/// is; without DSACK; and without DSACK, SACK compression and GRO.
/// History, measured on the loaded 2-core machine (256 MiB, a few runs). Before the receive
/// core shared one memory accounting between window and out-of-order data and sent D-SACKs,
/// netrx took 19-21 s against 6-7 s for the kernel receiver, with the Linux sender
/// retransmitting 42,000-50,000 segments for netrx against 11,000-14,000. Since (window and
/// out-of-order memory from one accounting, D-SACK, PAWS tolerance, SACK compression): netrx
/// 3.0-3.3 s against 3.2 s for the kernel, 4,300-4,500 retransmissions against 5,800; the
/// `max_ooo_mem` row now behaves like the defaults.
#[test]
#[ignore = "comparison report; run explicitly with --ignored --nocapture (release build)"]
fn xsk_impaired_vs_kernel_report() {
    let test = "xsk_impaired_vs_kernel_report";
    if !netns::require_root_or_skip(test) || !netns::require_tools_or_skip(test, &["ethtool"]) {
        return;
    }
    let mib = std::env::var("NETRX_XSK_IMPAIRED_REPORT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128u64);
    let n = run_netrx(test, mib, Impairment::netem_like(), Config::default());
    // The default out-of-order cap (`max_ooo_mem`) is below the receive buffer the window is
    // computed from; the same run with the cap raised to the buffer shows what that costs.
    let d = Config::default();
    let n2 = run_netrx(
        test,
        mib,
        Impairment::netem_like(),
        Config {
            max_ooo_mem: d.rcvbuf,
            ..d
        },
    );
    let row = |name: &str, r: &NetrxRun| {
        let c = r.got.as_ref().and_then(|g| g.conn).unwrap_or_default();
        format!(
            "{name} {:.2?} ({:.3} Gbit/s) receiver: ooo_segments {} dup_bytes {} mem_drops {} \
             ooo_pruned {} paws_drops {} acks_sent {}; sender: {}",
            r.elapsed,
            r.gbps(),
            c.ooo_segments,
            c.dup_bytes,
            c.mem_drops,
            c.ooo_pruned,
            c.paws_drops,
            c.acks_sent,
            r.sender_tcp
        )
    };
    let mut rows = vec![
        row("netrx (defaults)", &n),
        row("netrx (max_ooo_mem = rcvbuf)", &n2),
    ];
    for (name, rx) in [
        (
            "kernel socket",
            KernelRx {
                no_dsack: false,
                ack_every_segment: false,
            },
        ),
        (
            "kernel socket, tcp_dsack=0",
            KernelRx {
                no_dsack: true,
                ack_every_segment: false,
            },
        ),
        (
            "kernel socket as netrx (tcp_dsack=0, tcp_comp_sack_nr=0, GRO off)",
            KernelRx {
                no_dsack: true,
                ack_every_segment: true,
            },
        ),
    ] {
        let (t, sender) = run_kernel(test, mib, Impairment::netem_like(), rx);
        rows.push(format!(
            "{name} {t:.2?} ({:.3} Gbit/s); sender: {sender}",
            (mib << 20) as f64 * 8.0 / t.as_secs_f64() / 1e9
        ));
    }
    eprintln!(
        "{test}: {mib} MiB, loss 2% + reorder 25% (depth 3) + dup 1% + corrupt 0.1% both ways:\n  {}",
        rows.join("\n  ")
    );
}

/// Receiver-side kernel features a [`run_kernel`] run turns off.
#[derive(Clone, Copy)]
struct KernelRx {
    /// `net.ipv4.tcp_dsack=0`: no duplicate-SACK reports (RFC 2883).
    no_dsack: bool,
    /// `net.ipv4.tcp_comp_sack_nr=0` and GRO off on the receiver's veth: one ACK per
    /// out-of-order segment, no SACK compression or coalescing, as netrx does.
    ack_every_segment: bool,
}

/// The same transfer into a kernel socket receiver: (elapsed, sender TCP counters).
fn run_kernel(test: &str, mib: u64, imp: Impairment, rx: KernelRx) -> (Duration, String) {
    let bytes = mib << 20;
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    topo.sender
        .run_cmd("sysctl", &["-qw", "net.core.txrehash=0"])
        .expect("sysctl");
    if rx.no_dsack {
        topo.receiver
            .run_cmd("sysctl", &["-qw", "net.ipv4.tcp_dsack=0"])
            .expect("sysctl net.ipv4.tcp_dsack=0");
    }
    if rx.ack_every_segment {
        topo.receiver
            .run_cmd("sysctl", &["-qw", "net.ipv4.tcp_comp_sack_nr=0"])
            .expect("sysctl net.ipv4.tcp_comp_sack_nr=0");
        topo.receiver
            .ethtool_off(&topo.receiver_if, &["gro"])
            .expect("ethtool -K gro off");
    }
    let listener = topo
        .receiver
        .run(|| std::net::TcpListener::bind((RECEIVER_ADDR, PORT)))
        .expect("bind");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        for _ in 0..=bytes {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k as u64;
                }
            }
        }
        (n, <[u8; 32]>::from(h.finalize()))
    });
    let relay = Relay::start(&topo, RelaySettings::both(imp, RELAY_SEED)).expect("start relay");
    let start = StdInstant::now();
    let deadline = start + Duration::from_secs(60 + mib / 2);
    let to = SocketAddr::from((RECEIVER_ADDR, PORT));
    let sent = topo
        .sender
        .run(move || send_stream(to, bytes, SEED, deadline))
        .expect("kernel-receiver transfer");
    let elapsed = start.elapsed();
    assert_eq!(
        reader.join().expect("reader"),
        sent,
        "{test}: kernel receiver"
    );
    let c = relay.stop();
    let counters = sender_tcp_counters(&topo.sender);
    eprintln!("{test}: kernel receiver {mib} MiB in {elapsed:.2?}\n{c}\n  sender: {counters}");
    (elapsed, counters)
}

/// The sender namespace's TCP counters that tell how the kernel sender coped (retransmissions,
/// recovery episodes, timeouts, reordering detected, spurious retransmissions detected).
fn sender_tcp_counters(ns: &netns::Netns) -> String {
    const KEYS: &[&str] = &[
        "RetransSegs",
        "OutSegs",
        "TCPFastRetrans",
        "TCPSlowStartRetrans",
        "TCPLostRetransmit",
        "TCPTimeouts",
        "TCPSpuriousRTOs",
        "TCPLossProbes",
        "TCPSackRecovery",
        "TCPSACKReneging",
        "TCPSACKReorder",
        "TCPTSReorder",
        "TCPDSACKRecv",
        "TCPDSACKUndo",
        "TCPPartialUndo",
        "TCPFullUndo",
        "TCPSackRecoveryFail",
        "TCPSpuriousRtxHostQueues",
        "TCPWantZeroWindowAdv",
    ];
    let mut out = Vec::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let Ok(text) = ns.run_cmd("cat", &[file]) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks_exact(2) {
            let names = pair[0].split_whitespace().skip(1);
            let vals = pair[1].split_whitespace().skip(1);
            for (n, v) in names.zip(vals) {
                if KEYS.contains(&n) && v != "0" {
                    out.push(format!("{n} {v}"));
                }
            }
        }
    }
    out.join(", ")
}
