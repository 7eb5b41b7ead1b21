//! End-to-end tests of the AF_XDP shell (`netrx::xsk`) on a veth pair between two namespaces:
//! steering (TCP to the port on the socket, everything else to the kernel), multi-queue spread,
//! TX of a crafted frame, frame accounting, and detachment when the owner is SIGKILLed.
//!
//! All need root; they print "skipped: ..." without it, and fail under CI=true.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use netrx::xsk::{
    AttachMode, ProgramSpec, RxPacket, SocketConfig, XdpConfig, XdpLink, XdpMode, XdpProgram,
    XdpService, XskError, XskMap, XskSocket,
};
use netrx_tests::netns::{self, LinkOpts, Netns, TwoHost, RECEIVER_ADDR, SENDER_ADDR};

const PORT: u16 = 5201;

/// Small sockets for tests: 1024 frames of 4 KiB (4 MiB) per queue.
fn small_socket() -> SocketConfig {
    SocketConfig {
        frame_count: 1024,
        fill_size: 512,
        comp_size: 256,
        rx_size: 512,
        tx_size: 256,
        tx_reserve: 64,
        ..SocketConfig::default()
    }
}

fn topo(queues: u32) -> TwoHost {
    TwoHost::new(&LinkOpts {
        queues,
        sender_tx_csum_off: true,
        ..LinkOpts::default()
    })
    .expect("build the two-namespace topology")
}

/// `ip -d link show dev IF` inside `ns`, and whether it shows an XDP program.
fn xdp_shown(ns: &Netns, ifname: &str) -> (bool, String) {
    let out = ns
        .run_cmd("ip", &["-d", "link", "show", "dev", ifname])
        .expect("ip link show");
    let attached = out.contains("prog/xdp") || out.contains(" xdp") || out.contains("xdpgeneric");
    (attached, out)
}

/// A parsed IPv4 TCP/UDP frame.
#[derive(Debug, Clone)]
struct Parsed {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    tcp_flags: u8,
}

/// Parse Ethernet/IPv4/(TCP|UDP) without panicking on any input.
fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < 14 + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ihl < 20 || ip.len() < ihl + 14 {
        return None;
    }
    let l4 = &ip[ihl..];
    Some(Parsed {
        src_mac: f[6..12].try_into().ok()?,
        dst_mac: f[0..6].try_into().ok()?,
        proto: ip[9],
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        tcp_flags: if ip[9] == 6 { l4[13] } else { 0 },
    })
}

fn csum16(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            (c[0] as u16) << 8
        };
        s += w as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An Ethernet/IPv4/UDP frame (UDP checksum 0 = none, allowed for IPv4).
#[allow(clippy::too_many_arguments)]
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = csum16(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Send one SYN per call from the sender namespace (a non-blocking connect that is abandoned).
fn send_syns(sender: &Netns, port: u16, count: usize) {
    sender.run(move || {
        let addr = SocketAddr::from((RECEIVER_ADDR, port));
        let mut held = Vec::new();
        for _ in 0..count {
            // connect_timeout sends the SYN; nobody answers (the socket gets it), so it times out.
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(30)) {
                held.push(s);
            }
        }
    });
}

/// Receive on `sock` until `pred` has matched `want` packets or `timeout`; release every frame.
fn collect(
    sock: &mut XskSocket,
    want: usize,
    timeout: Duration,
    mut pred: impl FnMut(&Parsed) -> bool,
) -> Vec<(u32, Parsed)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut batch: Vec<RxPacket> = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        if sock.recv(&mut batch, 64) == 0 {
            sock.wait_rx(10);
            continue;
        }
        for p in batch.drain(..) {
            if let Some(parsed) = parse(sock.packet_bytes(&p)) {
                if pred(&parsed) {
                    got.push((p.queue, parsed));
                }
            }
            sock.release_packet(&p);
        }
    }
    got
}

fn open_service(t: &TwoHost, queues: Option<Vec<u32>>, attach: AttachMode) -> XdpService {
    let mut cfg = XdpConfig::new(&t.receiver_if, PORT);
    cfg.socket = small_socket();
    cfg.queues = queues;
    cfg.attach = attach;
    t.receiver
        .run(|| XdpService::open(&cfg))
        .unwrap_or_else(|e| panic!("open the AF_XDP service: {e}"))
}

#[test]
fn xsk_tcp_to_port_reaches_the_socket_everything_else_the_kernel() {
    if !netns::require_root_or_skip("xsk_tcp_to_port_reaches_the_socket_everything_else_the_kernel")
    {
        return;
    }
    let t = topo(1);
    // Kernel sockets in the receiver namespace: a UDP socket on the same port number and a TCP
    // listener on another port; both must keep working with the program attached.
    let udp = t
        .receiver
        .run(|| UdpSocket::bind((RECEIVER_ADDR, PORT)))
        .unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let other = t
        .receiver
        .run(|| TcpListener::bind((RECEIVER_ADDR, PORT + 1)))
        .unwrap();

    let mut svc = open_service(&t, None, AttachMode::Auto);
    assert_eq!(svc.mode(), XdpMode::Native, "veth supports native XDP");
    let (shown, out) = xdp_shown(&t.receiver, &t.receiver_if);
    assert!(shown, "ip link shows the program:\n{out}");
    let mut sock = svc.take_sockets().pop().unwrap();

    // TCP SYNs to the port: the ARP exchange before them must reach the kernel (else no SYN).
    send_syns(&t.sender, PORT, 3);
    let syns = collect(&mut sock, 3, Duration::from_secs(5), |p| {
        p.proto == 6 && p.dport == PORT
    });
    assert!(syns.len() >= 3, "SYNs seen on the AF_XDP socket: {syns:?}");
    for (q, p) in &syns {
        assert_eq!(*q, 0);
        assert_eq!((p.src, p.dst), (SENDER_ADDR, RECEIVER_ADDR));
        assert_eq!(p.tcp_flags & 0x02, 0x02, "SYN flag");
    }

    // UDP to the same port number goes to the kernel socket.
    t.sender.run(|| {
        let s = UdpSocket::bind((SENDER_ADDR, 0)).unwrap();
        s.send_to(b"hello kernel", (RECEIVER_ADDR, PORT)).unwrap();
    });
    let mut buf = [0u8; 64];
    let (n, from) = udp
        .recv_from(&mut buf)
        .expect("kernel UDP socket gets its datagram");
    assert_eq!(&buf[..n], b"hello kernel");
    assert_eq!(from.ip(), SENDER_ADDR);

    // TCP to another port: the kernel completes the handshake.
    let c = t.sender.run(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from((RECEIVER_ADDR, PORT + 1)),
            Duration::from_secs(3),
        )
    });
    assert!(c.is_ok(), "kernel TCP on another port: {c:?}");
    let _ = other.accept().unwrap();

    // Nothing but our port's TCP reached the socket.
    let stray = collect(&mut sock, 1, Duration::from_millis(200), |p| {
        !(p.proto == 6 && p.dport == PORT)
    });
    assert!(stray.is_empty(), "other traffic on the socket: {stray:?}");

    // TX: a crafted UDP frame from the receiver's MAC/IP to a sender UDP socket.
    let (sender_mac, receiver_mac) = (syns[0].1.src_mac, syns[0].1.dst_mac);
    let peer = t
        .sender
        .run(|| UdpSocket::bind((SENDER_ADDR, 6000)))
        .unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let frame = udp_frame(
        receiver_mac,
        sender_mac,
        RECEIVER_ADDR,
        SENDER_ADDR,
        7000,
        6000,
        b"crafted by netrx",
    );
    assert!(sock.send(&frame).unwrap(), "a TX frame is free");
    sock.flush().unwrap();
    let (n, from) = peer
        .recv_from(&mut buf)
        .expect("the peer receives the crafted frame");
    assert_eq!(&buf[..n], b"crafted by netrx");
    assert_eq!(from, SocketAddr::from((RECEIVER_ADDR, 7000)));

    // Accounting: everything received was released, TX completed.
    let counts = sock.check_no_leak().unwrap_or_else(|e| panic!("{e}"));
    let stats = sock.stats();
    assert_eq!(stats.rx_invalid, 0);
    assert_eq!(stats.tx_completed, 1);
    eprintln!("frames after the run: {counts:?}; stats {stats:?}");

    drop(sock);
    drop(svc);
    let (shown, out) = xdp_shown(&t.receiver, &t.receiver_if);
    assert!(!shown, "program detached when the service dropped:\n{out}");
}

#[test]
fn xsk_four_queues_native_spread_flows() {
    if !netns::require_root_or_skip("xsk_four_queues_native_spread_flows") {
        return;
    }
    let t = topo(4);
    let mut svc = open_service(&t, None, AttachMode::Native);
    assert_eq!(svc.queues(), &[0, 1, 2, 3]);
    assert_eq!(svc.mode(), XdpMode::Native);
    let sockets = svc.take_sockets();
    assert_eq!(sockets.len(), 4);

    // Poller threads, one per queue, counting SYNs to the port.
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let c2 = counts.clone();
    let pollers = netrx::xsk::poller::spawn(sockets, Default::default(), move |q| {
        let counts = c2.clone();
        move |sock: &mut XskSocket, batch: &mut Vec<RxPacket>, _now: Instant| {
            for p in batch.iter() {
                assert_eq!(p.queue, q, "a packet is reported on its socket's queue");
                if let Some(parsed) = parse(sock.packet_bytes(p)) {
                    if parsed.proto == 6 && parsed.dport == PORT {
                        counts[q as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Packets left in the batch are released by the poller.
        }
    });
    send_syns(&t.sender, PORT, 32);
    let deadline = Instant::now() + Duration::from_secs(3);
    while counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum::<u64>()
        < 32
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let per_q: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!("SYNs per queue: {per_q:?}");
    assert!(
        per_q.iter().sum::<u64>() >= 32,
        "all SYNs arrived: {per_q:?}"
    );
    let used = per_q.iter().filter(|&&n| n > 0).count();
    assert!(used >= 2, "flows spread over the queues: {per_q:?}");

    for (mut sock, _) in pollers.stop() {
        let c = sock
            .check_no_leak()
            .unwrap_or_else(|e| panic!("queue {}: {e}", sock.queue()));
        assert_eq!(c.held, 0);
    }
}

#[test]
fn xsk_clear_errors() {
    if !netns::require_root_or_skip("xsk_clear_errors") {
        return;
    }
    let t = topo(2);
    let rx = |cfg: XdpConfig| t.receiver.run(move || XdpService::open(&cfg).map(|_| ()));

    let e = rx(XdpConfig::new("nrx-nonexistent", PORT)).unwrap_err();
    assert!(matches!(e, XskError::NoInterface { .. }), "{e}");

    let mut cfg = XdpConfig::new(&t.receiver_if, PORT);
    cfg.socket = small_socket();
    cfg.queues = Some(vec![2]);
    let e = rx(cfg.clone()).unwrap_err();
    assert!(
        matches!(
            e,
            XskError::QueueOutOfRange {
                queue: 2,
                count: 2,
                ..
            }
        ),
        "{e}"
    );

    // MTU too large for 4 KiB frames without SG.
    t.receiver
        .run_cmd("ip", &["link", "set", "dev", &t.receiver_if, "mtu", "9000"])
        .unwrap();
    cfg.queues = None;
    let e = rx(cfg.clone()).unwrap_err();
    assert!(matches!(e, XskError::MtuTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("sg = true"));
    t.receiver
        .run_cmd("ip", &["link", "set", "dev", &t.receiver_if, "mtu", "1500"])
        .unwrap();

    // The veth peer's MTU above 3506 refuses native XDP without the frags-aware program.
    t.sender
        .run_cmd("ip", &["link", "set", "dev", &t.sender_if, "mtu", "9000"])
        .unwrap();
    let mut native = cfg.clone();
    native.attach = AttachMode::Native;
    let e = rx(native).unwrap_err();
    assert!(
        matches!(e, XskError::PeerMtuTooLarge { frags: false, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("sg = true"), "{e}");
    t.sender
        .run_cmd("ip", &["link", "set", "dev", &t.sender_if, "mtu", "1500"])
        .unwrap();

    // Someone else's program already attached (a bare program + bpf_link, no sockets).
    let ifindex = t.receiver.ifindex(&t.receiver_if).unwrap();
    let other = t.receiver.run(|| {
        let map = XskMap::create(2).unwrap();
        let prog = XdpProgram::load_redirect(&ProgramSpec::new(9999), &map, false).unwrap();
        let link = XdpLink::attach(&prog, ifindex, "other", AttachMode::Native).unwrap();
        (map, prog, link)
    });
    let e = rx(cfg.clone()).unwrap_err();
    assert!(matches!(e, XskError::AlreadyAttached { .. }), "{e}");
    assert!(e.to_string().contains("xdp off"), "{e}");
    drop(other);
    // Once it is gone, opening works.
    rx(cfg).unwrap();
}

/// The MAC address of `ifname` inside `ns` (from `ip -o link show`).
fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = ns
        .run_cmd("ip", &["-o", "link", "show", "dev", ifname])
        .unwrap();
    let s = out
        .split("link/ether ")
        .nth(1)
        .expect("link/ether in ip output");
    let mut mac = [0u8; 6];
    for (m, h) in mac
        .iter_mut()
        .zip(s.split_whitespace().next().unwrap().split(':'))
    {
        *m = u8::from_str_radix(h, 16).unwrap();
    }
    mac
}

/// An Ethernet/IPv4/TCP frame of exactly `frame_len` bytes to `PORT`, payload a pattern seeded
/// by `seed` (checksums are not needed: nothing on the path verifies them).
fn tcp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], frame_len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((frame_len - 14) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&SENDER_ADDR.octets());
    ip[16..20].copy_from_slice(&RECEIVER_ADDR.octets());
    let c = csum16(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&PORT.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH|ACK
    f.extend_from_slice(&tcp);
    let mut x = seed as u32;
    while f.len() < frame_len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        f.push((x >> 16) as u8);
    }
    f
}

/// Send raw Ethernet frames on `ifname` (AF_PACKET, one socket), from the current thread's
/// namespace. The socket blocks while the veth queue is full, so nothing is dropped here.
fn packet_send(ifindex: u32, dst_mac: [u8; 6], frames: &[Vec<u8>]) {
    // SAFETY: plain socket(2); checked below and closed at the end.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst_mac);
    for f in frames {
        // SAFETY: `f` and `sll` are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                fd,
                f.as_ptr() as *const libc::c_void,
                f.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            r,
            f.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
}

/// Frames of `mtu + 14` bytes reach the socket intact: one descriptor when they fit a chunk,
/// several (XDP_USE_SG, frags-aware program) when they do not.
fn jumbo_case(test: &str, mtu: u32, sg: bool) {
    if !netns::require_root_or_skip(test) {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        mtu,
        ..LinkOpts::default()
    })
    .expect("topology");
    let mut cfg = XdpConfig::new(&t.receiver_if, PORT);
    cfg.socket = SocketConfig {
        sg,
        ..small_socket()
    };
    cfg.attach = AttachMode::Native;
    let mut svc = t
        .receiver
        .run(|| XdpService::open(&cfg))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(svc.mode(), XdpMode::Native);
    assert_eq!(svc.program().has_frags(), sg);
    let mut sock = svc.take_sockets().pop().unwrap();

    let (smac, rmac) = (
        mac_of(&t.sender, &t.sender_if),
        mac_of(&t.receiver, &t.receiver_if),
    );
    let sizes = [60usize, 1514, (mtu + 14) as usize];
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| tcp_frame(smac, rmac, n, i as u8))
        .collect();
    let ifindex = t.sender.ifindex(&t.sender_if).unwrap();
    let to_send = frames.clone();
    t.sender.run(move || packet_send(ifindex, rmac, &to_send));

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut batch = Vec::new();
    while got.len() < frames.len() && Instant::now() < deadline {
        if sock.recv(&mut batch, 16) == 0 {
            sock.wait_rx(10);
            continue;
        }
        for p in batch.drain(..) {
            let mut bytes = Vec::new();
            sock.gather(&p, &mut bytes);
            got.push((bytes, 1 + p.more.len()));
            sock.release_packet(&p);
        }
    }
    assert_eq!(
        got.len(),
        frames.len(),
        "all frames received: sizes {:?}",
        got.iter().map(|g| g.0.len()).collect::<Vec<_>>()
    );
    for ((bytes, descs), sent) in got.iter().zip(&frames) {
        assert_eq!(bytes.len(), sent.len());
        assert!(bytes == sent, "frame of {} bytes intact", sent.len());
        let expect_multi = sent.len() as u32 > sock.config().max_linear_frame();
        assert_eq!(
            *descs > 1,
            expect_multi,
            "{} bytes in {descs} descriptor(s)",
            sent.len()
        );
    }
    eprintln!(
        "{test}: received {:?} (bytes, descriptors)",
        got.iter().map(|g| (g.0.len(), g.1)).collect::<Vec<_>>()
    );
    sock.check_no_leak().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn xsk_mtu_3000_single_descriptor() {
    jumbo_case("xsk_mtu_3000_single_descriptor", 3000, false);
}

#[test]
fn xsk_mtu_9000_scatter_gather() {
    jumbo_case("xsk_mtu_9000_scatter_gather", 9000, true);
}

/// A bounded burst of 20,000 crafted TCP frames from an AF_PACKET sender: every frame the
/// kernel put on the RX ring is seen exactly once, nothing leaks, and the receive rate is printed
/// (a report, not an assertion).
#[test]
fn xsk_burst_accounting() {
    if !netns::require_root_or_skip("xsk_burst_accounting") {
        return;
    }
    const N: usize = 20_000;
    let t = topo(1);
    let mut svc = open_service(&t, None, AttachMode::Native);
    let sockets = svc.take_sockets();
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    let pollers = netrx::xsk::poller::spawn(sockets, Default::default(), move |_q| {
        let seen = seen2.clone();
        move |sock: &mut XskSocket, batch: &mut Vec<RxPacket>, _now: Instant| {
            for p in batch.drain(..) {
                if parse(sock.packet_bytes(&p)).is_some_and(|x| x.dport == PORT) {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                sock.release_packet(&p);
            }
        }
    });
    let (smac, rmac) = (
        mac_of(&t.sender, &t.sender_if),
        mac_of(&t.receiver, &t.receiver_if),
    );
    let frame = tcp_frame(smac, rmac, 1514, 7);
    let ifindex = t.sender.ifindex(&t.sender_if).unwrap();
    let start = Instant::now();
    t.sender.run(move || {
        // One AF_PACKET socket (closing one waits for an RCU grace period) sending everything.
        packet_send(ifindex, rmac, &vec![frame; N]);
    });
    let send_time = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = u64::MAX;
    while Instant::now() < deadline {
        let now = seen.load(Ordering::Relaxed);
        if now as usize >= N || now == last {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = start.elapsed();
    for (mut sock, _) in pollers.stop() {
        let st = sock.stats();
        let ks = sock.kernel_stats().unwrap();
        let got = seen.load(Ordering::Relaxed);
        eprintln!(
            "burst: sent {N} in {send_time:?}, received {got} by {elapsed:?} ({:.0} frames/s \
             while sending); kernel {ks:?}",
            got as f64 / send_time.as_secs_f64()
        );
        assert_eq!(
            st.rx_packets, got,
            "every received packet was handed to the handler once"
        );
        assert!(got as usize <= N);
        // Under load the poller may fall behind (kernel drops counted above); some arrive.
        assert!(got > 0, "frames arrive");
        assert_eq!(st.rx_invalid, 0);
        sock.check_no_leak().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Generic (skb) mode works too and is reported as such.
#[test]
fn xsk_generic_mode() {
    if !netns::require_root_or_skip("xsk_generic_mode") {
        return;
    }
    let t = topo(1);
    let mut svc = open_service(&t, None, AttachMode::Generic);
    assert_eq!(svc.mode(), XdpMode::Generic);
    let (shown, out) = xdp_shown(&t.receiver, &t.receiver_if);
    assert!(
        shown && out.contains("xdpgeneric"),
        "ip link shows generic XDP:\n{out}"
    );
    let mut sock = svc.take_sockets().pop().unwrap();
    send_syns(&t.sender, PORT, 2);
    let syns = collect(&mut sock, 2, Duration::from_secs(5), |p| {
        p.proto == 6 && p.dport == PORT
    });
    assert!(syns.len() >= 2, "SYNs in generic mode: {syns:?}");
    sock.check_no_leak().unwrap_or_else(|e| panic!("{e}"));
}

/// Not a test on its own: the body of the child process of `xsk_sigkill_detaches`, selected by
/// the environment. It attaches, reports, and waits to be killed.
#[test]
fn xsk_child_helper() {
    let Ok(ifname) = std::env::var("NETRX_XSK_CHILD_IF") else {
        return;
    };
    let mut cfg = XdpConfig::new(&ifname, PORT);
    cfg.socket = small_socket();
    let svc = XdpService::open(&cfg).unwrap_or_else(|e| panic!("child: {e}"));
    println!("ATTACHED {}", svc.mode());
    std::thread::sleep(Duration::from_secs(30));
    drop(svc);
}

#[test]
fn xsk_sigkill_detaches() {
    if !netns::require_root_or_skip("xsk_sigkill_detaches") {
        return;
    }
    let t = topo(1);
    let exe = std::env::current_exe().unwrap();
    let mut cmd = t.receiver.command(
        exe.to_str().unwrap(),
        &[
            "--exact",
            "xsk_child_helper",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    cmd.env("NETRX_XSK_CHILD_IF", &t.receiver_if)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = ChildGuard(cmd.spawn().expect("spawn the child helper"));
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rxc) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test xsk_child_helper ... " on the same line first.
            if let Some(pos) = line.find("ATTACHED") {
                let _ = tx.send(line[pos..].to_string());
            }
        }
    });
    let line = rxc
        .recv_timeout(Duration::from_secs(20))
        .expect("the child attached");
    assert_eq!(line, "ATTACHED native");
    let (shown, out) = xdp_shown(&t.receiver, &t.receiver_if);
    assert!(shown, "attached while the child lives:\n{out}");

    // SIGKILL: no destructor runs; the kernel drops the bpf_link with the process's fds.
    // SAFETY: kill on the pid of our own un-reaped child.
    let r = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(r, 0);
    let _ = child.0.wait();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (shown, out) = xdp_shown(&t.receiver, &t.receiver_if);
        if !shown {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "XDP still attached after SIGKILL:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the kernel answers the port again (RST: connection refused).
    let r = t.sender.run(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from((RECEIVER_ADDR, PORT)),
            Duration::from_secs(3),
        )
    });
    let e = r.expect_err("nothing listens on the port");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

/// Kills (by pid) and reaps the child on drop, e.g. when an assertion fails.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
