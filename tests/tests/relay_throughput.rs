//! Measurement (not a pass/fail speed check): throughput of a single kernel TCP stream through a
//! transparent relay beside the direct veth path, MTU 1500, as a ratio. Run by hand:
//! `cargo test --release -p netrx-tests --test relay_throughput -- --ignored --nocapture`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netrx_tests::netns::{
    require_root_or_skip, require_tools_or_skip, LinkOpts, Netns, ThreeHost, TwoHost, RECEIVER_ADDR,
};
use netrx_tests::relay::{Relay, RelaySettings};

const BYTES: u64 = 512 << 20;
const ROUNDS: usize = 5;

/// Gbit/s of one stream of `BYTES` (no hashing: the wire path is what is measured).
fn stream_gbps(sender: &Netns, receiver: &Netns) -> f64 {
    let listener = receiver
        .run(|| TcpListener::bind((RECEIVER_ADDR, 0)))
        .expect("bind");
    let port = listener.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        for _ in 0..=BYTES {
            match s.read(&mut buf).expect("read") {
                0 => break,
                k => n += k as u64,
            }
        }
        n
    });
    let elapsed = sender.run(|| {
        let mut s =
            TcpStream::connect_timeout(&(RECEIVER_ADDR, port).into(), Duration::from_secs(5))
                .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let buf = vec![0x5au8; 1 << 20];
        let start = Instant::now();
        for _ in 0..BYTES >> 20 {
            s.write_all(&buf).expect("write");
        }
        drop(s);
        start
    });
    let n = reader.join().expect("reader");
    let secs = elapsed.elapsed().as_secs_f64();
    assert_eq!(n, BYTES);
    n as f64 * 8.0 / secs / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn relay_vs_direct_veth_mtu1500() {
    if !require_root_or_skip("relay_vs_direct_veth_mtu1500")
        || !require_tools_or_skip("relay_vs_direct_veth_mtu1500", &["ethtool"])
    {
        return;
    }
    // Same sender conditions on both paths: TX checksum, TSO and GSO off (what the relay needs).
    let same_sender = LinkOpts {
        sender_tx_csum_off: true,
        sender_tso_off: true,
        receiver_tx_csum_off: true,
        ..LinkOpts::default()
    };
    let direct = TwoHost::new(&same_sender).expect("two-host");
    let direct_tso = TwoHost::new(&LinkOpts::default()).expect("two-host, offloads on");
    let three = ThreeHost::new(&LinkOpts::default()).expect("three-host");
    let relay = Relay::start(&three, RelaySettings::transparent()).expect("relay");
    let (mut d, mut r, mut t, mut ratio) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let gd = stream_gbps(&direct.sender, &direct.receiver);
        let gr = stream_gbps(&three.sender, &three.receiver);
        let gt = stream_gbps(&direct_tso.sender, &direct_tso.receiver);
        eprintln!(
            "round {round}: direct (tx/tso/gso off) {gd:.2} Gbit/s, relay {gr:.2} Gbit/s, \
             ratio {:.2}; direct with offloads on {gt:.2} Gbit/s",
            gr / gd
        );
        d.push(gd);
        r.push(gr);
        t.push(gt);
        ratio.push(gr / gd);
    }
    let c = relay.stop();
    eprintln!(
        "median: direct {:.2} Gbit/s, relay {:.2} Gbit/s, relay/direct {:.2}, direct offloads on {:.2} Gbit/s\n{c}",
        median(&mut d),
        median(&mut r),
        median(&mut ratio),
        median(&mut t)
    );
    assert_eq!(c.a_to_b.send_errors + c.a_to_b.gso_dropped, 0, "{c}");
}
