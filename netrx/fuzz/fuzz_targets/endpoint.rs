//! The endpoint fed random segments, timer events, reads, releases and closes, decoded from
//! the fuzzer's bytes. Checks: no panic, invariants after every step, released frames were
//! held (and only once), and after closing everything and letting timers run, every frame
//! came back and no connection is left.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netrx::tcp::{Config, ConnId, Endpoint, FrameDisposition, Instant, RxSegment};
use netrx::wire::tcp::OptionsOut;
use netrx::wire::{build_segment, ChecksumMode, IpPair, ReplyAddrs, SegmentSpec};

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self
            .0
            .split_first()
            .map(|(b, r)| (*b, r))
            .unwrap_or((0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

const PORT: u16 = 80;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let cfg = Config {
        rcvbuf: (b.u8() as u32 % 32 + 4) * 4096,
        max_ooo_ranges: b.u8() as usize % 8 + 1,
        max_ooo_mem: (b.u8() as u32 % 32 + 1) * 4096,
        syn_backlog: 4,
        accept_backlog: 4,
        max_connections: 8,
        checksum: ChecksumMode::Trust,
        idle_timeout: Duration::from_secs(100),
        ..Config::default()
    };
    let mut ep = Endpoint::new(cfg);
    ep.listen(PORT).unwrap();
    let mut now = Instant::from_millis(1);
    let mut frames: HashMap<u64, ()> = HashMap::new();
    let mut next_frame = 1u64;
    let mut conns: Vec<ConnId> = Vec::new();
    let mut pieces: Vec<RxSegment> = Vec::new();
    let mut released = Vec::new();
    // Base sequence numbers the fuzzer offsets from, so that in-window segments are likely.
    let peer_iss = 1000u32;
    let mut our_seq_guess = 0u32;
    let mut ops = 0;
    while !b.0.is_empty() && ops < 2000 {
        ops += 1;
        match b.u8() % 8 {
            0..=3 => {
                let port_sel = b.u8() % 3;
                let flags = b.u8();
                let rel = b.u16() as u32;
                let seq = if flags & 0x80 != 0 {
                    b.u32()
                } else {
                    peer_iss.wrapping_add(rel)
                };
                let ack = if flags & 0x40 != 0 {
                    b.u32()
                } else {
                    our_seq_guess.wrapping_add(b.u8() as u32)
                };
                let len = (b.u16() % 1500) as usize;
                let optsel = b.u8();
                let tsval = b.u8() as u32;
                let options = OptionsOut {
                    mss: (optsel & 1 != 0).then_some(536 + b.u8() as u16 * 4),
                    window_scale: (optsel & 2 != 0).then_some(b.u8() % 16),
                    sack_permitted: optsel & 4 != 0,
                    timestamps: (optsel & 8 != 0).then_some((tsval, 0)),
                    ..Default::default()
                };
                let peer = ReplyAddrs {
                    local_mac: [2, 0, 0, 0, 0, 2],
                    remote_mac: [2, 0, 0, 0, 0, 1],
                    vlan: None,
                    ip: IpPair::V4 {
                        src: [10, 0, 0, 2],
                        dst: [10, 0, 0, 1],
                    },
                    local_port: 40000 + port_sel as u16,
                    remote_port: if optsel & 0x80 != 0 { 81 } else { PORT },
                };
                let spec = SegmentSpec {
                    seq,
                    ack,
                    flags: flags & 0x3f,
                    window: b.u16(),
                    options,
                };
                let payload = vec![0xabu8; len];
                let mut buf = vec![0u8; 256 + len];
                let n = build_segment(&peer, &spec, &payload, &mut buf).unwrap();
                // Occasionally corrupt a byte.
                if optsel & 0x40 != 0 {
                    let i = b.u16() as usize % n;
                    buf[i] ^= b.u8();
                }
                let id = next_frame;
                next_frame += 1;
                if ep.on_frame(now, id, &buf[..n], 4096) == FrameDisposition::Held {
                    frames.insert(id, ());
                }
            }
            4 => {
                now = now + Duration::from_millis(b.u16() as u64 * 4);
                ep.handle_timeout(now);
            }
            5 => {
                if let Some(id) = ep.accept(PORT) {
                    conns.push(id);
                }
                for &id in &conns {
                    while let Ok(Some(seg)) = ep.read(id, b.u16() as usize + 1) {
                        assert!(frames.contains_key(&seg.frame), "piece of a frame not held");
                        pieces.push(seg);
                        if b.u8() & 1 == 0 {
                            break;
                        }
                    }
                }
            }
            6 => {
                let n = b.u8() as usize % (pieces.len() + 1);
                for seg in pieces.drain(..n) {
                    ep.release(&seg).unwrap();
                }
                ep.flush(now);
            }
            _ => {
                if !conns.is_empty() {
                    let i = b.u8() as usize % conns.len();
                    let _ = ep.close(now, conns[i]);
                }
            }
        }
        // Learn the endpoint's sequence numbers from what it sends.
        while let Some(f) = ep.pop_tx() {
            let p =
                netrx::wire::parse(f.as_bytes(), ChecksumMode::Verify).expect("our frames verify");
            our_seq_guess = p.tcp.seq.wrapping_add(1);
        }
        while let Some(ev) = ep.poll_event() {
            if let netrx::tcp::EndpointEvent::FrameReleased(f) = ev {
                released.push(f);
            }
        }
        for f in released.drain(..) {
            assert!(
                frames.remove(&f).is_some(),
                "released a frame not held (or twice)"
            );
        }
        ep.check_invariants();
    }
    // Wind down: release every piece, accept and close everything, let timers run out.
    for seg in pieces.drain(..) {
        ep.release(&seg).unwrap();
    }
    while let Some(id) = ep.accept(PORT) {
        conns.push(id);
    }
    for &id in &conns {
        let _ = ep.close(now, id);
    }
    for _ in 0..100 {
        now = now + Duration::from_secs(30);
        ep.handle_timeout(now);
        while ep.pop_tx().is_some() {}
        if ep.connection_count() == 0 {
            break;
        }
    }
    while let Some(ev) = ep.poll_event() {
        if let netrx::tcp::EndpointEvent::FrameReleased(f) = ev {
            released.push(f);
        }
    }
    for f in released.drain(..) {
        assert!(
            frames.remove(&f).is_some(),
            "released a frame not held (or twice)"
        );
    }
    assert_eq!(
        ep.connection_count(),
        0,
        "connections left after closing and timeouts"
    );
    assert!(frames.is_empty(), "{} frames leaked", frames.len());
});
