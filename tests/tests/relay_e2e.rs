//! The impairment relay end to end, independent of netrx: the Linux kernel's TCP on both ends.
//! Needs root (network namespaces); fails under `CI=true` when it cannot run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netrx_tests::netns::{
    require_root_or_skip, require_tools_or_skip, LinkOpts, Netns, ThreeHost, RECEIVER_ADDR,
    RECEIVER_ADDR6,
};
use netrx_tests::relay::{Impairment, Relay, RelaySettings};
use netrx_tests::stream::spawn_iperf2_client;
use sha2::{Digest, Sha256};

const CHUNK: usize = 1 << 20;

/// Deterministic, position-dependent data: chunk `i` of the stream.
fn fill_chunk(buf: &mut [u8], i: u64) {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for w in buf.chunks_exact_mut(8) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

struct Transfer {
    sent: [u8; 32],
    received: [u8; 32],
    bytes_received: u64,
    elapsed: Duration,
}

/// Sends `bytes` from a std::net client in `sender` to a std::net reader in `receiver`, both
/// hashing. Every loop is bounded by count and by `limit`.
fn transfer(sender: &Netns, receiver: &Netns, bytes: u64, limit: Duration) -> Transfer {
    let listener = receiver
        .run(|| TcpListener::bind((RECEIVER_ADDR, 0)))
        .expect("bind in receiver namespace");
    let port = listener.local_addr().unwrap().port();
    let deadline = Instant::now() + limit;
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        // Bounded: at most bytes/1 reads plus one for EOF, and the deadline.
        for _ in 0..=bytes + 1 {
            let k = s.read(&mut buf).expect("read (timed out?)");
            if k == 0 || Instant::now() > deadline {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        (h.finalize(), n)
    });
    let start = Instant::now();
    let sent = sender.run(|| {
        let mut s =
            TcpStream::connect_timeout(&(RECEIVER_ADDR, port).into(), Duration::from_secs(10))
                .expect("connect through the relay");
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let chunks = bytes.div_ceil(CHUNK as u64);
        for i in 0..chunks {
            assert!(
                Instant::now() < deadline,
                "transfer exceeded {limit:?} at chunk {i}"
            );
            let len = (bytes - i * CHUNK as u64).min(CHUNK as u64) as usize;
            fill_chunk(&mut buf[..len], i);
            s.write_all(&buf[..len]).expect("write");
            h.update(&buf[..len]);
        }
        h.finalize()
    });
    let (received, n) = reader.join().expect("reader thread");
    Transfer {
        sent: sent.into(),
        received: received.into(),
        bytes_received: n,
        elapsed: start.elapsed(),
    }
}

#[test]
fn relay_256mib_through_loss_reorder_dup_corrupt() {
    if !require_root_or_skip("relay_256mib_through_loss_reorder_dup_corrupt")
        || !require_tools_or_skip(
            "relay_256mib_through_loss_reorder_dup_corrupt",
            &["ethtool"],
        )
    {
        return;
    }
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    let relay =
        Relay::start(&topo, RelaySettings::both(Impairment::netem_like(), 7)).expect("relay");
    let bytes = 256u64 << 20;
    let t = transfer(
        &topo.sender,
        &topo.receiver,
        bytes,
        Duration::from_secs(100),
    );
    let c = relay.stop();
    eprintln!(
        "256 MiB through the impairing relay in {:.2?} ({:.2} Gbit/s)\n{c}",
        t.elapsed,
        bytes as f64 * 8.0 / t.elapsed.as_secs_f64() / 1e9
    );
    assert_eq!(t.bytes_received, bytes);
    assert_eq!(t.sent, t.received, "SHA-256 of sent and received streams");
    let d = &c.a_to_b;
    assert!(d.lost > 0, "{d}");
    assert!(d.reordered > 0 && d.released_by_depth > 0, "{d}");
    assert!(d.duplicated > 0, "{d}");
    assert!(d.corrupted > 0, "{d}");
    assert!(
        c.b_to_a.lost > 0 && c.b_to_a.reordered > 0,
        "ACKs impaired too: {}",
        c.b_to_a
    );
    assert_eq!(d.gso_dropped, 0, "sender TSO/GSO must be off: {d}");
    assert!(d.passthrough > 0, "ARP passed through: {d}");
    // Rates: loss within broad bounds of 2% of the TCP frames (seeded, but frame counts vary).
    let rate = d.lost as f64 / d.tcp as f64;
    assert!((0.015..0.025).contains(&rate), "loss rate {rate}");
}

#[test]
fn relay_same_seed_decisions_are_reported() {
    if !require_root_or_skip("relay_same_seed_decisions_are_reported")
        || !require_tools_or_skip("relay_same_seed_decisions_are_reported", &["ethtool"])
    {
        return;
    }
    // A transparent relay forwards, and a bad setting is refused with a message naming it.
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    let bad = Impairment {
        loss: 150.0,
        ..Impairment::none()
    };
    let e = Relay::start(&topo, RelaySettings::both(bad, 1))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("loss"), "{e}");
    let e = Relay::start_on(
        Some(&topo.relay),
        "nonexistent0",
        &topo.relay_b,
        RelaySettings::transparent(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("nonexistent0"), "{e}");
    let relay = Relay::start(&topo, RelaySettings::transparent()).expect("relay");
    let t = transfer(
        &topo.sender,
        &topo.receiver,
        8 << 20,
        Duration::from_secs(30),
    );
    assert_eq!(t.sent, t.received);
    let c = relay.stop();
    assert_eq!(c.a_to_b.lost + c.a_to_b.corrupted + c.a_to_b.duplicated, 0);
    assert!(c.a_to_b.frames_out > 5000, "{c}");
}

#[test]
fn iperf2_client_through_relay() {
    if !require_root_or_skip("iperf2_client_through_relay")
        || !require_tools_or_skip("iperf2_client_through_relay", &["ethtool", "iperf"])
    {
        return;
    }
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    let relay =
        Relay::start(&topo, RelaySettings::both(Impairment::netem_like(), 11)).expect("relay");
    // A plain reader (receive-only endpoint, as netrx will be).
    let listener = topo
        .receiver
        .run(|| TcpListener::bind((RECEIVER_ADDR, 0)))
        .expect("bind");
    let port = listener.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        for _ in 0..100_000 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
        n
    });
    let client = spawn_iperf2_client(&topo.sender, port, 64).expect("spawn iperf");
    let out = client
        .wait_timeout(Duration::from_secs(90))
        .expect("iperf finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "iperf -c failed: {}", out.status);
    assert!(stdout.contains("TCP window size"), "{stdout}");
    assert_eq!(reader.join().expect("reader"), 64 << 20);
    let c = relay.stop();
    eprintln!("{c}");
    assert!(c.a_to_b.lost > 0 && c.a_to_b.reordered > 0, "{c}");
}

#[test]
fn impair_command_runs_until_sigint_and_prints_counters() {
    if !require_root_or_skip("impair_command_runs_until_sigint_and_prints_counters")
        || !require_tools_or_skip(
            "impair_command_runs_until_sigint_and_prints_counters",
            &["ethtool"],
        )
    {
        return;
    }
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    let child = topo
        .relay
        .spawn(
            env!("CARGO_BIN_EXE_impair"),
            &[
                "--a",
                &topo.relay_a,
                "--b",
                &topo.relay_b,
                "--loss",
                "2",
                "--reorder",
                "25",
                "--reorder-depth",
                "3",
                "--dup",
                "1",
                "--corrupt",
                "0.1",
                "--seed",
                "7",
            ],
        )
        .expect("spawn impair");
    // The relay is up once a connection gets through; transfer() retries nothing, so wait for
    // the sockets to be bound (bounded).
    std::thread::sleep(Duration::from_millis(300));
    let t = transfer(
        &topo.sender,
        &topo.receiver,
        16 << 20,
        Duration::from_secs(60),
    );
    assert_eq!(t.sent, t.received);
    child.signal(libc::SIGINT).expect("SIGINT");
    let out = child
        .wait_timeout(Duration::from_secs(10))
        .expect("impair exits on SIGINT");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("seed 7"), "{stdout}");
    assert!(stdout.contains("a->b: in "), "{stdout}");
    assert!(stdout.contains("lost "), "{stdout}");
}

#[test]
fn relay_completes_partial_checksums_before_corrupting() {
    if !require_root_or_skip("relay_completes_partial_checksums_before_corrupting")
        || !require_tools_or_skip(
            "relay_completes_partial_checksums_before_corrupting",
            &["ethtool"],
        )
    {
        return;
    }
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    // Undo the harness's `tx off`: the sender now leaves checksums to "hardware".
    topo.sender
        .run_cmd("ethtool", &["-K", &topo.sender_if, "tx", "on"])
        .expect("ethtool tx on");
    let imp = Impairment {
        corrupt: 1.0,
        ..Impairment::none()
    };
    let relay = Relay::start(&topo, RelaySettings::a_to_b_only(imp, 3)).expect("relay");
    let t = transfer(
        &topo.sender,
        &topo.receiver,
        16 << 20,
        Duration::from_secs(60),
    );
    let c = relay.stop();
    eprintln!("{c}");
    assert_eq!(
        t.sent, t.received,
        "corrupted frames must be rejected by the receiver"
    );
    assert!(c.a_to_b.csum_completed > 1000, "{c}");
    assert!(c.a_to_b.corrupted > 0, "{c}");
}

#[test]
fn relay_impairs_ipv6_tcp_and_passes_neighbour_discovery() {
    if !require_root_or_skip("relay_impairs_ipv6_tcp_and_passes_neighbour_discovery")
        || !require_tools_or_skip(
            "relay_impairs_ipv6_tcp_and_passes_neighbour_discovery",
            &["ethtool"],
        )
    {
        return;
    }
    let topo = ThreeHost::new(&LinkOpts {
        ipv6: true,
        ..LinkOpts::default()
    })
    .expect("three-host topology with IPv6");
    let relay =
        Relay::start(&topo, RelaySettings::both(Impairment::netem_like(), 5)).expect("relay");
    let listener = topo
        .receiver
        .run(|| TcpListener::bind((RECEIVER_ADDR6, 0)))
        .expect("bind [fd00:77::2]");
    let port = listener.local_addr().unwrap().port();
    let bytes: u64 = 16 << 20;
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        for _ in 0..=bytes {
            match s.read(&mut buf).expect("read") {
                0 => break,
                k => h.update(&buf[..k]),
            }
        }
        h.finalize()
    });
    let sent = topo.sender.run(|| {
        let mut s =
            TcpStream::connect_timeout(&(RECEIVER_ADDR6, port).into(), Duration::from_secs(10))
                .expect("connect over IPv6 through the relay");
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        for i in 0..bytes / CHUNK as u64 {
            fill_chunk(&mut buf, i);
            s.write_all(&buf).expect("write");
            h.update(&buf);
        }
        h.finalize()
    });
    assert_eq!(sent, reader.join().expect("reader"));
    let c = relay.stop();
    assert!(c.a_to_b.lost > 0 && c.a_to_b.reordered > 0, "{c}");
    assert!(c.a_to_b.passthrough > 0, "neighbour discovery passed: {c}");
}

#[test]
fn relay_delay_jitter_and_rate_limit() {
    if !require_root_or_skip("relay_delay_jitter_and_rate_limit")
        || !require_tools_or_skip("relay_delay_jitter_and_rate_limit", &["ethtool"])
    {
        return;
    }
    let topo = ThreeHost::new(&LinkOpts::default()).expect("three-host topology");
    let imp = Impairment {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(1),
        rate_bps: Some(200_000_000),
        ..Impairment::none()
    };
    let relay = Relay::start(&topo, RelaySettings::a_to_b_only(imp, 9)).expect("relay");
    // Frames wait in the relay for their slot: the shell must wake up on time, not on input.
    let t = transfer(
        &topo.sender,
        &topo.receiver,
        8 << 20,
        Duration::from_secs(60),
    );
    let c = relay.stop();
    eprintln!(
        "8 MiB with 2+-1 ms delay at 200 Mbit/s in {:.2?}\n{c}",
        t.elapsed
    );
    assert_eq!(t.sent, t.received);
    let d = &c.a_to_b;
    assert!(d.delayed > 1000, "{d}");
    assert!(d.rate_limited > 0, "{d}");
    assert_eq!(d.lost + d.reordered + d.queue_drops, 0, "{d}");
    assert_eq!(c.b_to_a.delayed, 0, "the other direction is transparent");
}

#[test]
fn relay_jumbo_frames_mtu_9000() {
    if !require_root_or_skip("relay_jumbo_frames_mtu_9000")
        || !require_tools_or_skip("relay_jumbo_frames_mtu_9000", &["ethtool"])
    {
        return;
    }
    let topo = ThreeHost::new(&LinkOpts {
        mtu: 9000,
        ..LinkOpts::default()
    })
    .expect("three-host topology, MTU 9000");
    let relay =
        Relay::start(&topo, RelaySettings::both(Impairment::netem_like(), 13)).expect("relay");
    let t = transfer(
        &topo.sender,
        &topo.receiver,
        32 << 20,
        Duration::from_secs(60),
    );
    let c = relay.stop();
    assert_eq!(t.sent, t.received);
    assert_eq!(c.a_to_b.max_frame_len, 9014, "{c}");
    assert!(c.a_to_b.lost > 0 && c.a_to_b.gso_dropped == 0, "{c}");
}
