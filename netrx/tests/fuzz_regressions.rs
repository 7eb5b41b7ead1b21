//! Inputs the `endpoint_ops` fuzz target found, replayed through the same interpreter
//! (`tests/fuzz_ops`), decoded exactly as the fuzz target decodes them.

mod fuzz_ops;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn replay(input: &str) {
    let s = fuzz_ops::decode(&hex(input));
    if std::env::var_os("NETRX_FUZZ_VERBOSE").is_some() {
        eprintln!("{s:#?}");
    }
    fuzz_ops::run(&s);
}

/// Embryonic count of a listener above `syn_backlog` (found by `endpoint_ops`).
#[test]
fn embryonic_within_backlog() {
    replay(
        "0000000700000000000000000000000000002a2a2a5900002b0000002a2a2a00002a2a590000000f00000000\
         00000d012b000000002a2a2a590000000000000d012b000000002a2a2a59000000000000000d012b000000\
         002a2a2a5900000000000000000d012b000000002a2a2a5900000000002a2a2a5900",
    );
}

/// A second FIN after the stream's FIN was consumed (seq = rcv_nxt, the peer's FIN + 1) was
/// consumed again: rcv_nxt moved past a sequence number the peer never validly sent and the
/// ACK covered it (found by `endpoint_ops`). Now ignored and answered with the same ACK.
#[test]
fn fin_after_fin_is_not_acknowledged() {
    replay(
        "00000000000000007300000000000004000000000000000000f41e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e\
         fafa311ecd4cffffffffce0c1e1e291e1e1e00000095010000001ef41e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e\
         1e1efafa311ecd4cffffffffce0c1e1e291e1e1e1e1e1e1e1e1e1e1e1e311e1e1e1e1e1b1e1e638b8b2fa052\
         77",
    );
}

/// The cookie path of the `embryonic_within_backlog` fix: valid cookie ACKs that arrive together must not take the
/// endpoint past `max_connections` (only SYNs were checked against it).
#[test]
fn cookie_acks_respect_connection_limit() {
    use netrx::tcp::{Config, Endpoint, Instant};
    use netrx::wire::tcp::{OptionsOut, TcpFlags};
    use netrx::wire::{build_segment, parse, ChecksumMode, IpPair, ReplyAddrs, SegmentSpec};

    let mut ep = Endpoint::new(Config {
        syn_backlog: 1,
        max_connections: 2,
        ..Config::default()
    });
    ep.listen(80).unwrap();
    let now = Instant::from_millis(1000);
    let addrs = |port: u16| ReplyAddrs {
        local_mac: [2, 0, 0, 0, 0, 2],
        remote_mac: [2, 0, 0, 0, 0, 1],
        vlan: None,
        ip: IpPair::V4 {
            src: [10, 0, 0, 2],
            dst: [10, 0, 0, 1],
        },
        local_port: port,
        remote_port: 80,
    };
    let mut frame_id = 0;
    let mut send = |ep: &mut Endpoint, port: u16, seq: u32, ack: u32, flags: u8| {
        let spec = SegmentSpec {
            seq,
            ack,
            flags,
            window: 65535,
            options: OptionsOut {
                mss: (flags & TcpFlags::SYN != 0).then_some(1460),
                ..Default::default()
            },
        };
        let mut buf = [0u8; 128];
        let n = build_segment(&addrs(port), &spec, &[], &mut buf).unwrap();
        frame_id += 1;
        ep.on_frame(now, frame_id, &buf[..n], 4096);
    };
    // Port 1000 fills the SYN backlog; 1001..=1003 get cookies.
    for port in 1000..=1003u16 {
        send(&mut ep, port, 7000, 0, TcpFlags::SYN);
    }
    let mut cookies = Vec::new();
    while let Some(f) = ep.pop_tx() {
        let p = parse(f.as_bytes(), ChecksumMode::Verify).unwrap();
        if p.tcp.dst_port != 1000 {
            cookies.push((p.tcp.dst_port, p.tcp.seq));
        }
    }
    assert_eq!(cookies.len(), 3);
    assert_eq!(ep.stats().syn_cookies_sent, 3);
    for (port, cookie) in cookies {
        send(&mut ep, port, 7001, cookie.wrapping_add(1), TcpFlags::ACK);
        ep.check_invariants();
        assert!(
            ep.connection_count() <= 2,
            "{} connections",
            ep.connection_count()
        );
    }
    assert_eq!(ep.stats().syn_cookies_ok, 1);
}
