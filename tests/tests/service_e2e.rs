//! End-to-end through the application API (`netrx::service`): a kernel TCP sender (std::net in
//! the sender namespace, the seed's parameters: 250 KB send buffer, 2 MB writes) streams to a
//! `Listener` over veth; the application reads with `recv_registered` into 2 MB registered
//! buffers. Copy engine: the I/OAT model (simulated timing). Policies cpu, netdma, netdma with
//! rcvlowat 200 KB, adaptive: every one delivers the exact stream (SHA-256), and the stats show
//! where DMA was used.
//!
//! Needs root; prints "skipped: ..." without it and fails under CI=true.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ioat_driver::model::Fault;
use ioat_driver::regs::chanerr;

use netrx::copy::{CopyStats, PolicyKind};
use netrx::service::{EngineKind, Listener, Placement, RecvFlags, ServiceConfig};
use netrx::xsk::AttachMode;
use netrx_tests::netns::{self, LinkOpts, TwoHost, RECEIVER_ADDR};
use netrx_tests::stream::{send_seeded, spawn_iperf2_client, SendOpts};
use sha2::{Digest, Sha256};

const PORT: u16 = 5301;

fn stream_mib() -> u64 {
    std::env::var("NETRX_SERVICE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 8 } else { 64 })
}

/// Sends `len` seeded bytes in 2 MB writes with a 250 KB send buffer; returns the SHA-256.
fn send_stream(len: u64, seed: u64) -> std::io::Result<[u8; 32]> {
    let opts = SendOpts {
        chunk: 2 << 20,
        sndbuf: Some(250 * 1024),
        write_timeout: Duration::from_secs(60),
        ..SendOpts::default()
    };
    send_seeded(SocketAddr::from((RECEIVER_ADDR, PORT)), len, seed, &opts).map(|(_, sha)| sha)
}

/// The service on the I/OAT model with `policy` in native XDP mode, with `pool_buffers`
/// registered buffers of `pool_buffer_size` bytes.
fn model_config(
    t: &TwoHost,
    policy: PolicyKind,
    pool_buffers: usize,
    pool_buffer_size: usize,
) -> ServiceConfig {
    let mut cfg = ServiceConfig::new(&t.receiver_if, PORT);
    cfg.engine = EngineKind::model();
    cfg.policy = policy;
    cfg.attach = AttachMode::Native;
    cfg.pool_buffers = pool_buffers;
    cfg.pool_buffer_size = pool_buffer_size;
    cfg
}

/// A kernel TCP connection from the sender namespace to the listener.
fn connect_receiver() -> TcpStream {
    TcpStream::connect_timeout(
        &SocketAddr::from((RECEIVER_ADDR, PORT)),
        Duration::from_secs(5),
    )
    .unwrap()
}

struct Run {
    label: &'static str,
    gbps: f64,
    bytes: u64,
    stream: CopyStats,
    total: CopyStats,
}

fn run_one(
    t: &TwoHost,
    label: &'static str,
    policy: PolicyKind,
    rcvlowat: usize,
    seed: u64,
    faults: bool,
) -> Run {
    let len = stream_mib() << 20;
    let mut cfg = model_config(t, policy, 4, 2 << 20);
    cfg.rcvlowat = rcvlowat;
    let listener = t
        .receiver
        .run(move || Listener::bind(cfg))
        .unwrap_or_else(|e| panic!("{label}: bind: {e}"));
    let sender = t
        .sender
        .spawn_thread(move || send_stream(len, seed))
        .unwrap();
    let mut stream = listener
        .accept_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{label}: accept: {e}"));
    // Faults mid-stream: every 20 ms the channel halts on an upcoming descriptor (read error),
    // and every fifth time it hangs instead (the copier's DMA timeout aborts it). Every op cut
    // short must be redone by CPU from the still-held frame.
    let stop_faults = Arc::new(AtomicBool::new(false));
    let injector = faults.then(|| {
        let model = listener.model_device().expect("model engine").clone();
        let stop = stop_faults.clone();
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) && k < 5000 {
                let f = if k % 5 == 4 {
                    Fault::Hang { after: 3 }
                } else {
                    Fault::ChanErrOnNth {
                        nth: 5,
                        bits: chanerr::READ_DATA,
                    }
                };
                model.inject(0, f);
                k += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    let pool = listener.buffers();
    let mut buf = pool.take().expect("a registered buffer");
    let mut h = Sha256::new();
    let mut got = 0u64;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(120);
    loop {
        let (b, n) = stream
            .recv_registered(buf)
            .unwrap_or_else(|e| panic!("{label}: recv after {got} bytes: {e}"));
        h.update(&b.as_slice()[..n]);
        buf = b;
        got += n as u64;
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{label}: stream too slow");
    }
    let elapsed = t0.elapsed();
    stop_faults.store(true, Ordering::Relaxed);
    if let Some(j) = injector {
        j.join().unwrap();
        listener.model_device().unwrap().clear_faults(0);
    }
    // After end of stream every receive keeps returning 0.
    let (b, n) = stream.recv_registered(buf).expect("recv after EOF");
    assert_eq!(n, 0);
    drop(b);
    let sstats = stream.stats();
    assert_eq!(sstats.bytes, got);
    // Closing sends our FIN: the sender's final read sees EOF.
    drop(stream);
    let sent_sha = sender
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{label}: sender: {e}"));
    assert_eq!(got, len, "{label}: length");
    let sha: [u8; 32] = h.finalize().into();
    assert_eq!(sha, sent_sha, "{label}: SHA-256 of the stream");
    // The strict model saw no driver misuse.
    let v = listener.model_device().expect("model engine").violations();
    assert!(v.is_empty(), "{label}: model violations: {v:#?}");
    let stats = listener.shutdown();
    for q in &stats.queues {
        assert_eq!(
            q.exit_check,
            Some(Ok(())),
            "{label}: every frame back in the socket at exit"
        );
    }
    let total = stats.total;
    Run {
        label,
        gbps: got as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        bytes: got,
        stream: sstats.copy,
        total,
    }
}

#[test]
fn service_e2e_policies_deliver_the_exact_stream() {
    if !netns::require_root_or_skip("service_e2e_policies_deliver_the_exact_stream") {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");
    let runs = [
        run_one(&t, "cpu", PolicyKind::Cpu, 1, 1, false),
        run_one(&t, "netdma", PolicyKind::NetDma, 1, 2, false),
        run_one(
            &t,
            "netdma+rcvlowat=200KB",
            PolicyKind::NetDma,
            200_000,
            3,
            false,
        ),
        run_one(&t, "adaptive", PolicyKind::Adaptive, 1, 4, false),
        run_one(
            &t,
            "adaptive+rcvlowat=200KB",
            PolicyKind::Adaptive,
            200_000,
            5,
            false,
        ),
        run_one(
            &t,
            "netdma+rcvlowat+faults",
            PolicyKind::NetDma,
            200_000,
            6,
            true,
        ),
    ];
    eprintln!(
        "service_e2e ({} MiB per run, model engine: simulated timing {:?} per descriptor + {} GB/s)",
        stream_mib(),
        netrx::service::MODEL_PER_DESC,
        netrx::service::MODEL_BYTES_PER_SEC / 1_000_000_000
    );
    eprintln!(
        "{:<24} {:>8} {:>10} {:>12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "policy",
        "Gbit/s",
        "DMA share",
        "mean DMA B",
        "DMA ops",
        "w.full",
        "w.psh",
        "w.press",
        "w.lowat",
        "errors",
        "redos"
    );
    for r in &runs {
        let s = &r.total;
        eprintln!(
            "{:<24} {:>8.2} {:>9.1}% {:>12.0} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
            r.label,
            r.gbps,
            s.dma_share() * 100.0,
            s.mean_dma_size(),
            s.dma_ops,
            s.wake_full,
            s.wake_psh,
            s.wake_pressure,
            s.wake_lowat,
            s.dma_errors,
            s.cpu_redos
        );
        assert_eq!(
            s.bytes_cpu + s.bytes_dma,
            r.bytes,
            "{}: every byte copied once (a failed DMA op's bytes count as CPU redo): {s:?}",
            r.label
        );
        assert_eq!(r.stream.bytes_dma, s.bytes_dma, "{}: one stream", r.label);
    }
    assert_eq!(runs[0].total.bytes_dma, 0, "cpu never uses DMA");
    assert!(
        runs[2].total.bytes_dma > 0,
        "netdma + rcvlowat 200 KB used DMA: {:?}",
        runs[2].total
    );
    let f = &runs[5].total;
    assert!(
        f.dma_errors > 0 && f.cpu_redos > 0 && f.bytes_dma > 0,
        "faults were injected, redone by CPU, and DMA went on: {f:?}"
    );
    // With rcvlowat 1 a receive returns after its first segment, so a DMA could only delay it:
    // adaptive copies by CPU there. With a waiting reader (rcvlowat 200 KB) it uses the
    // channel (measured choices and probes).
    assert!(
        runs[4].total.bytes_dma > 0,
        "adaptive with a waiting reader used DMA: {:?}",
        runs[4].total
    );
}

/// Plain-slice receives (CPU path), PEEK, nonblocking and end of stream through the API.
#[test]
fn service_e2e_plain_peek_nonblocking_eof() {
    if !netns::require_root_or_skip("service_e2e_plain_peek_nonblocking_eof") {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");
    let cfg = model_config(&t, PolicyKind::NetDma, 2, 64 << 10);
    let listener = t.receiver.run(move || Listener::bind(cfg)).expect("bind");
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let sender = t
        .sender
        .spawn_thread(move || {
            let mut s = connect_receiver();
            s.write_all(b"hello, netrx").unwrap();
            go_rx.recv_timeout(Duration::from_secs(20)).unwrap();
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            s.write_all(&big).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        })
        .unwrap();
    let mut st = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("accept");
    assert_eq!(st.local_addr().port(), PORT);
    // PEEK with WAITALL waits for all 12 bytes and leaves them queued.
    let mut b = [0u8; 12];
    let n = st
        .recv_with(
            &mut b,
            RecvFlags {
                peek: true,
                waitall: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(&b[..n], b"hello, netrx");
    let mut b2 = [0u8; 64];
    let n = st.recv(&mut b2).unwrap();
    assert_eq!(&b2[..n], b"hello, netrx");
    // Nothing more until the sender goes on: a nonblocking receive says WouldBlock.
    st.set_nonblocking(true);
    let e = st.recv(&mut b2).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    st.set_nonblocking(false);
    go_tx.send(()).unwrap();
    // The rest through plain reads with WAITALL (CPU path), then EOF.
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 100_000];
    loop {
        let n = st
            .recv_with(
                &mut chunk,
                RecvFlags {
                    waitall: true,
                    ..Default::default()
                },
            )
            .unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&chunk[..n]);
    }
    let want: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(all.len(), want.len());
    assert!(all == want, "plain receives deliver the stream");
    assert_eq!(st.recv(&mut chunk).unwrap(), 0, "EOF stays EOF");
    let s = st.stats();
    assert_eq!(s.copy.bytes_dma, 0, "plain buffers never take DMA: {s:?}");
    drop(st);
    sender.join().unwrap();
    let total = listener.shutdown().total;
    assert_eq!(total.bytes_dma, 0);
}

/// A peer that aborts (RST) is reported as `ConnectionReset` after the data before it.
#[test]
fn service_e2e_reset_is_connection_reset() {
    if !netns::require_root_or_skip("service_e2e_reset_is_connection_reset") {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");
    let cfg = model_config(&t, PolicyKind::NetDma, 1, 1 << 20);
    let listener = t.receiver.run(move || Listener::bind(cfg)).expect("bind");
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let sender = t
        .sender
        .spawn_thread(move || {
            let mut s = connect_receiver();
            s.write_all(&[7u8; 5000]).unwrap();
            go_rx.recv_timeout(Duration::from_secs(20)).unwrap();
            // SO_LINGER 0: close() sends RST.
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on our own socket with a live linger struct.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &lg as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            drop(s);
        })
        .unwrap();
    let mut st = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("accept");
    let mut buf = listener.buffers().take().unwrap();
    let mut got = 0;
    while got < 5000 {
        let (b, n) = st.recv_registered(buf).expect("data before the reset");
        assert!(n > 0);
        got += n;
        buf = b;
    }
    assert_eq!(got, 5000);
    go_tx.send(()).unwrap();
    sender.join().unwrap();
    let e = st.recv_registered(buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    // The buffer went back to the pool with the error.
    assert_eq!(listener.buffers().available(), 1);
}

/// A receiver that cannot keep the data aborts: the kernel sender sees a reset, never a clean
/// close.
#[test]
fn service_e2e_abort_is_a_reset_at_the_sender() {
    if !netns::require_root_or_skip("service_e2e_abort_is_a_reset_at_the_sender") {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");
    let cfg = model_config(&t, PolicyKind::Cpu, 1, 1 << 20);
    let listener = t.receiver.run(move || Listener::bind(cfg)).expect("bind");
    let sender = t
        .sender
        .spawn_thread(move || {
            let mut s = connect_receiver();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // Keep writing until the receiver's RST stops us (bounded: 64 MiB at most).
            let chunk = [5u8; 64 << 10];
            for _ in 0..1024 {
                if let Err(e) = s.write_all(&chunk) {
                    return e.kind();
                }
            }
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) => std::io::ErrorKind::UnexpectedEof,
                Ok(_) => std::io::ErrorKind::InvalidData,
                Err(e) => e.kind(),
            }
        })
        .unwrap();
    let mut st = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("accept");
    let mut buf = [0u8; 4096];
    let n = st.recv(&mut buf).expect("some data");
    assert!(n > 0);
    st.abort();
    let kind = sender.join().unwrap();
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "the sender saw {kind:?}, not a reset"
    );
    let stats = listener.shutdown();
    for q in &stats.queues {
        assert_eq!(
            q.exit_check,
            Some(Ok(())),
            "every frame back after the abort"
        );
    }
}

/// Eight kernel senders over a 4-queue veth: four pollers, each with its own model channel,
/// every stream intact.
#[test]
fn service_e2e_eight_streams_four_queues() {
    if !netns::require_root_or_skip("service_e2e_eight_streams_four_queues") {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        queues: 4,
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");
    // Keep each flow on its queue across retransmission timeouts (see xsk_tcp.rs).
    t.sender
        .run_cmd("sysctl", &["-qw", "net.core.txrehash=0"])
        .expect("sysctl net.core.txrehash=0");
    let mut cfg = model_config(&t, PolicyKind::NetDma, 8, 1 << 20);
    cfg.rcvlowat = 200_000;
    cfg.rcvbuf = 2 << 20;
    let listener = t.receiver.run(move || Listener::bind(cfg)).expect("bind");
    assert_eq!(listener.queues().len(), 4);
    let len = (stream_mib() / 4).max(1) << 20;
    let senders: Vec<_> = (0..8u64)
        .map(|i| {
            t.sender
                .spawn_thread(move || send_stream(len, 100 + i))
                .unwrap()
        })
        .collect();
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut st = listener
            .accept_timeout(Duration::from_secs(10))
            .expect("accept");
        let mut buf = listener.buffers().take().expect("a buffer per stream");
        readers.push(std::thread::spawn(move || {
            let mut h = Sha256::new();
            let mut got = 0u64;
            loop {
                let (b, n) = st.recv_registered(buf).expect("recv");
                h.update(&b.as_slice()[..n]);
                got += n as u64;
                buf = b;
                if n == 0 {
                    break;
                }
            }
            let q = st.queue();
            drop(st);
            let sha: [u8; 32] = h.finalize().into();
            (got, sha, q)
        }));
    }
    let mut got: Vec<(u64, [u8; 32])> = Vec::new();
    let mut per_q = [0usize; 4];
    for r in readers {
        let (n, sha, q) = r.join().unwrap();
        per_q[q as usize] += 1;
        got.push((n, sha));
    }
    let mut sent: Vec<(u64, [u8; 32])> = senders
        .into_iter()
        .map(|s| (len, s.join().unwrap().expect("sender")))
        .collect();
    sent.sort();
    got.sort();
    assert_eq!(got, sent, "every stream intact");
    let stats = listener.shutdown();
    eprintln!(
        "eight streams: per queue {per_q:?}; DMA share {:.1}%, mean DMA {:.0} B, redos {}",
        stats.total.dma_share() * 100.0,
        stats.total.mean_dma_size(),
        stats.total.cpu_redos
    );
    assert!(per_q.iter().filter(|&&n| n > 0).count() >= 2, "{per_q:?}");
    assert_eq!(
        stats.total.bytes_cpu + stats.total.bytes_dma,
        8 * len,
        "{:?}",
        stats.total
    );
}

/// Dropping the listener ends a receive blocked in another thread with `ConnectionAborted`,
/// and returns its registered buffer to the pool.
#[test]
fn service_e2e_stop_ends_blocked_receives() {
    if !netns::require_root_or_skip("service_e2e_stop_ends_blocked_receives") {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");
    let cfg = model_config(&t, PolicyKind::NetDma, 1, 1 << 20);
    let listener = t.receiver.run(move || Listener::bind(cfg)).expect("bind");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let sender = t
        .sender
        .spawn_thread(move || {
            let s = connect_receiver();
            let _ = done_rx.recv_timeout(Duration::from_secs(20));
            drop(s);
        })
        .unwrap();
    let mut st = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("accept");
    let pool = listener.buffers();
    let buf = pool.take().unwrap();
    let reader = std::thread::spawn(move || st.recv_registered(buf).map(|(_, n)| n));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!reader.is_finished(), "the receive waits for data");
    drop(listener);
    let e = reader.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted, "{e}");
    assert_eq!(pool.available(), 1, "the buffer is back in the pool");
    done_tx.send(()).unwrap();
    sender.join().unwrap();
}

/// The seed's sender itself: `iperf -c ADDR -w 250K -l 2M` (iperf 2) against the service with
/// netdma + rcvlowat 200 KB, receiving into 2 MB registered buffers: exactly the requested bytes.
#[test]
fn service_e2e_iperf2_netdma_rcvlowat() {
    if !netns::require_root_or_skip("service_e2e_iperf2_netdma_rcvlowat")
        || !netns::require_tools_or_skip("service_e2e_iperf2_netdma_rcvlowat", &["iperf"])
    {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");
    let mut cfg = model_config(&t, PolicyKind::NetDma, 2, 2 << 20);
    cfg.rcvlowat = 200_000;
    let listener = t.receiver.run(move || Listener::bind(cfg)).expect("bind");
    let mib = stream_mib();
    let child = spawn_iperf2_client(&t.sender, PORT, mib).expect("start iperf");
    let mut st = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("accept");
    let mut buf = listener.buffers().take().unwrap();
    let mut got = 0u64;
    let t0 = Instant::now();
    loop {
        let (b, n) = st.recv_registered(buf).expect("recv");
        buf = b;
        got += n as u64;
        if n == 0 {
            break;
        }
    }
    let elapsed = t0.elapsed();
    drop(st);
    let out = child
        .wait_timeout(Duration::from_secs(60))
        .expect("iperf finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf exit status {:?}: {stdout}",
        out.status
    );
    assert_eq!(got, mib << 20, "exactly the requested bytes");
    let s = listener.shutdown().total;
    eprintln!(
        "iperf -w 250K -l 2M, netdma + rcvlowat 200 KB: {:.2} Gbit/s, DMA share {:.1}%, mean DMA {:.0} B",
        got as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        s.dma_share() * 100.0,
        s.mean_dma_size()
    );
    assert_eq!(s.bytes_cpu + s.bytes_dma, got);
}

/// The CPU list of every thread of this process named `name` (`Cpus_allowed_list`).
fn thread_cpus(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            out.push(l["Cpus_allowed_list:".len()..].trim().to_string());
        }
    }
    out
}

/// `ServiceConfig::cpus`: the poller and the TX kicker run on the CPUs the placement names
/// (a list of two: one each), data still flows, and a CPU outside the process's affinity is
/// refused at bind with the allowed list.
#[test]
fn service_e2e_thread_placement() {
    if !netns::require_root_or_skip("service_e2e_thread_placement") {
        return;
    }
    let allowed = netrx::xsk::cpu::allowed_cpus().unwrap();
    let t = TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("topology");

    let outside = (0..1024).find(|c| !allowed.contains(c)).unwrap();
    let mut bad = model_config(&t, PolicyKind::Cpu, 2, 64 << 10);
    bad.engine = EngineKind::Cpu;
    bad.cpus = Placement::Cpus(vec![outside]);
    let e = t.receiver.run(move || Listener::bind(bad)).unwrap_err();
    assert!(
        e.to_string().contains("allowed:") && e.to_string().contains(&format!("CPU {outside}")),
        "{e}"
    );

    // Poller on the last allowed CPU, kicker on the first (the reverse of `auto` when there
    // are two or more), so the check cannot pass by accident of the default order.
    let (p, k) = (*allowed.last().unwrap(), allowed[0]);
    let mut cfg = model_config(&t, PolicyKind::Cpu, 2, 64 << 10);
    cfg.engine = EngineKind::Cpu;
    cfg.cpus = Placement::Cpus(vec![p, k]);
    let listener = t.receiver.run(move || Listener::bind(cfg)).expect("bind");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (want_p, want_k) = (p.to_string(), k.to_string());
    loop {
        let (q, tx) = (thread_cpus("netrx-q0"), thread_cpus("netrx-tx0"));
        if q.contains(&want_p) && tx.contains(&want_k) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "poller CPUs {q:?} (want {want_p}), kicker CPUs {tx:?} (want {want_k})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let len = 4u64 << 20;
    let sender = t.sender.spawn_thread(move || send_stream(len, 7)).unwrap();
    let mut st = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("accept");
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = st.recv(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n as u64;
    }
    // Closing sends our FIN: the sender's final read sees EOF.
    drop(st);
    let want = sender.join().unwrap().expect("send");
    assert_eq!(got, len);
    assert_eq!(
        <[u8; 32]>::from(h.finalize()),
        want,
        "the pinned service delivers the stream"
    );
    for q in listener.shutdown().queues {
        assert_eq!(q.exit_check, Some(Ok(())), "every frame back at exit");
    }
}
