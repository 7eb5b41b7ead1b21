//! Scripted scenarios for the receive endpoint: handshake, data, reordering, retransmission,
//! overlaps, zero window, FIN, RST, PAWS, timeouts, and bounds under floods.

mod tcp_common;

use std::time::Duration;

use netrx::tcp::{Config, ConnError, FrameDisposition, State, TcpError};
use netrx::wire::tcp::{OptionsOut, TcpFlags};
use netrx::wire::IpPair;
use tcp_common::*;

fn no_quickack() -> Config {
    Config {
        quickack_segments: 0,
        ..Config::default()
    }
}

#[test]
fn handshake_with_options() {
    let mut h = Harness::new(Config::default());
    let sa = h.handshake(true);
    let o = sa.pkt.tcp.options;
    assert_eq!(o.mss, Some(1460));
    assert!(o.sack_permitted);
    assert_eq!(
        o.timestamps.map(|t| t.1),
        Some(100),
        "TSecr echoes the SYN's TSval"
    );
    // 4 MiB rcvbuf * 1448/4096 ≈ 1.48 MB of window needs a shift of 5.
    assert_eq!(o.window_scale, Some(5));
    assert!(sa.window() <= 65535);
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.state, State::Established);
    assert!(info.sack && info.timestamps);
    assert_eq!(h.ep.send(h.id(), b"x"), Err(TcpError::ReceiveOnly));
}

#[test]
fn handshake_without_options() {
    let mut h = Harness::new(Config::default());
    let sa = h.handshake(false);
    let o = sa.pkt.tcp.options;
    assert_eq!(o.mss, Some(1460));
    assert_eq!(o.window_scale, None);
    assert!(!o.sack_permitted);
    assert_eq!(o.timestamps, None);
    h.send_data(0, &pattern(1000, 1), false);
    let acks = h.tx();
    assert_eq!(acks.len(), 1, "quick ACK at start");
    assert_eq!(acks[0].pkt.tcp.options.timestamps, None);
    assert_eq!(h.ack_of(&acks[0]), 1000);
    assert!(acks[0].window() > 0);
}

#[test]
fn handshake_ipv6_and_vlan() {
    let mut h = Harness::new(Config {
        mtu: 9000,
        ..Config::default()
    });
    h.peer.ip = IpPair::V6 {
        src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    };
    h.peer.vlan = Some(42);
    let sa = h.handshake(true);
    assert_eq!(sa.pkt.tcp.options.mss, Some(9000 - 60));
    assert_eq!(sa.pkt.eth.vlan, Some(42));
    assert_eq!(sa.pkt.ip, h.peer.ip.reversed());
    h.send_data(0, &pattern(8000, 2), true);
    assert_eq!(h.read_all(), 8000);
    assert_eq!(h.received, pattern(8000, 2));
}

#[test]
fn synack_retransmission_with_backoff_then_give_up() {
    let mut h = Harness::new(Config::default());
    h.send_raw(h.iss, TcpFlags::SYN, &[], Harness::syn_options(true));
    assert_eq!(h.tx().len(), 1);
    let start = h.now;
    let mut times = Vec::new();
    for _ in 0..200 {
        let Some(d) = h.ep.poll_timeout() else { break };
        h.now = d;
        h.ep.handle_timeout(d);
        for s in h.tx() {
            assert!(s.flags().syn());
            times.push(h.now.saturating_since(start).as_secs());
        }
    }
    assert_eq!(times, vec![1, 3, 7, 15, 31], "RTO 1 s doubling, 5 retries");
    assert_eq!(
        h.ep.connection_count(),
        0,
        "embryonic connection dropped after the retries"
    );
    // A retransmitted SYN is answered with the same SYN-ACK.
    let mut h = Harness::new(Config::default());
    h.send_raw(h.iss, TcpFlags::SYN, &[], Harness::syn_options(true));
    let a = h.tx();
    h.send_raw(h.iss, TcpFlags::SYN, &[], Harness::syn_options(true));
    let b = h.tx();
    assert_eq!(a[0].pkt.tcp.seq, b[0].pkt.tcp.seq);
    assert_eq!(h.ep.connection_count(), 1);
}

#[test]
fn final_ack_with_wrong_number_gets_rst() {
    let mut h = Harness::new(Config::default());
    h.send_raw(h.iss, TcpFlags::SYN, &[], Harness::syn_options(false));
    h.tx();
    h.rcv_nxt = 12345;
    h.send_raw(h.iss + 1, TcpFlags::ACK, &[], OptionsOut::default());
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert!(t[0].flags().rst());
    assert_eq!(t[0].pkt.tcp.seq, 12345);
}

#[test]
fn in_order_data_and_delayed_ack() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let data = pattern(1448 * 5, 3);
    // Every second full-sized segment is acknowledged at once.
    h.send_data(0, &data[..1448], false);
    assert!(h.tx().is_empty(), "first segment: ACK delayed");
    h.send_data(1448, &data[1448..2896], false);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(h.ack_of(&t[0]), 2896);
    // A lone segment is acknowledged by the delayed-ACK timer after 40 ms.
    h.send_data(2896, &data[2896..4344], true);
    assert!(h.tx().is_empty());
    let d = h.ep.poll_timeout().unwrap();
    assert_eq!(d.saturating_since(h.now), Duration::from_millis(40));
    h.advance(Duration::from_millis(39));
    assert!(h.tx().is_empty());
    h.advance(Duration::from_millis(1));
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(h.ack_of(&t[0]), 4344);
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.available, 4344);
    assert!(info.psh);
    assert_eq!(info.mem, 3 * TRUESIZE as u64, "accounted by truesize");
    assert_eq!(h.read_all(), 4344);
    assert_eq!(h.received, &data[..4344]);
    assert_eq!(h.frames.len(), 0, "every frame released after reading");
}

#[test]
fn quick_acks_at_start() {
    let mut h = Harness::new(Config {
        quickack_segments: 3,
        ..Config::default()
    });
    h.handshake(true);
    let mut acks = 0;
    for i in 0..6u32 {
        h.send_data(i * 100, &[7u8; 100], false);
        acks += h.tx().len();
    }
    assert_eq!(
        acks, 3,
        "3 quick ACKs, then delayed ACKs for small segments"
    );
}

#[test]
fn out_of_order_sack_and_fill() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let base = h.iss.wrapping_add(1);
    let data = pattern(1000 * 6, 4);
    let seg = |i: usize| &data[i * 1000..(i + 1) * 1000];
    h.send_data(0, seg(0), false);
    h.tx();
    // Hole at 1000..2000; segments 2 and 4 arrive.
    assert_eq!(h.send_data(2000, seg(2), false), FrameDisposition::Held);
    let t = h.tx();
    assert_eq!(t.len(), 1, "immediate duplicate ACK on a hole");
    assert_eq!(h.ack_of(&t[0]), 1000);
    assert_eq!(t[0].sack(), vec![(base + 2000, base + 3000)]);
    h.send_data(4000, seg(4), false);
    let t = h.tx();
    assert_eq!(
        t[0].sack(),
        vec![(base + 4000, base + 5000), (base + 2000, base + 3000)],
        "most recent first"
    );
    h.send_data(3000, seg(3), false);
    let t = h.tx();
    assert_eq!(
        t[0].sack(),
        vec![(base + 2000, base + 5000)],
        "ranges merge"
    );
    assert_eq!(h.ep.info(h.id()).unwrap().ooo_ranges, 1);
    // The hole fills: cumulative ACK jumps, ACK sent at once.
    h.send_data(1000, seg(1), false);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(h.ack_of(&t[0]), 5000);
    assert!(t[0].sack().is_empty());
    h.send_data(5000, seg(5), false);
    h.read_all();
    assert_eq!(h.received, data);
}

#[test]
fn retransmitted_and_overlapping_segments() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let data = pattern(5000, 5);
    h.send_data(0, &data[..1000], false);
    h.tx();
    // Exact retransmission of received data: dup ACK, frame not held.
    assert_eq!(h.send_data(0, &data[..1000], false), FrameDisposition::Free);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(h.ack_of(&t[0]), 1000);
    // Overlap with the in-order point: only the new part is queued.
    assert_eq!(
        h.send_data(500, &data[500..1500], false),
        FrameDisposition::Held
    );
    // Out-of-order overlaps: 2000..3000, then 2500..3500 (trimmed), then 1800..3600 (covers).
    h.send_data(2000, &data[2000..3000], false);
    h.send_data(2500, &data[2500..3500], false);
    assert_eq!(
        h.send_data(2200, &data[2200..2800], false),
        FrameDisposition::Free,
        "fully duplicate"
    );
    let held_before = h.frames.len();
    h.send_data(1800, &data[1800..3600], false);
    assert_eq!(
        h.frames.len(),
        held_before - 1,
        "the covered segment's frame was released"
    );
    h.send_data(1500, &data[1500..1800], false);
    h.send_data(3600, &data[3600..5000], false);
    h.read_all();
    assert_eq!(h.received, data);
    let st = h.ep.info(h.id()).unwrap().stats;
    assert!(st.dup_bytes >= 1000 + 500 + 600);
    h.ep.check_invariants();
}

#[test]
fn partial_reads_hold_the_frame_until_release() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    let data = pattern(1448, 6);
    h.send_data(0, &data, true);
    let id = h.id();
    let a = h.ep.read(id, 1000).unwrap().unwrap();
    let b = h.ep.read(id, 1000).unwrap().unwrap();
    assert_eq!((a.len, b.len), (1000, 448));
    assert!(!a.psh && b.psh);
    assert_eq!(a.frame, b.frame);
    h.ep.release(&b).unwrap();
    h.collect_released();
    assert_eq!(h.frames.len(), 1, "first piece still out");
    h.copy_out(&a);
    h.copy_out(&b);
    h.ep.release(&a).unwrap();
    h.collect_released();
    assert_eq!(h.frames.len(), 0);
    assert_eq!(h.received, data);
    assert_eq!(h.ep.release(&a), Err(TcpError::BadRelease));
}

#[test]
fn zero_window_probe_and_window_update() {
    let cfg = Config {
        rcvbuf: 16 * 4096,
        quickack_segments: 1000,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    h.handshake(true);
    let data = pattern(1448 * 40, 7);
    let mut off = 0usize;
    let mut last_window = u32::MAX;
    // Fill the window exactly as advertised.
    while off < data.len() {
        let d = h.send_data(off as u32, &data[off..off + 1448], false);
        let t = h.tx();
        if d == FrameDisposition::Free {
            break;
        }
        off += 1448;
        last_window = t.last().unwrap().window();
        if last_window == 0 {
            break;
        }
    }
    assert_eq!(last_window, 0, "window closes when rcvbuf is full");
    let held = h.frames.len();
    assert!(held as u32 * TRUESIZE <= 16 * 4096);
    // Zero-window probe: not accepted, answered with window 0.
    assert_eq!(
        h.send_data(off as u32, &data[off..off + 1], false),
        FrameDisposition::Free
    );
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].window(), 0);
    assert_eq!(h.ack_of(&t[0]), off as u32);
    // The application reads: a window update goes out.
    h.read_all();
    let t = h.tx();
    assert_eq!(t.len(), 1, "window update");
    assert!(t[0].window() > 0);
    assert_eq!(h.ep.info(h.id()).unwrap().stats.window_updates, 1);
    h.send_data(off as u32, &data[off..off + 1448], false);
    h.read_all();
    assert_eq!(h.received, &data[..off + 1448]);
}

#[test]
fn bare_fin_is_accepted_at_zero_window() {
    let cfg = Config {
        rcvbuf: 8 * 4096,
        quickack_segments: 1000,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    h.handshake(true);
    let mut off = 0u32;
    loop {
        h.send_data(off, &[5u8; 1448], false);
        off += 1448;
        let t = h.tx();
        if t.last().unwrap().window() == 0 {
            break;
        }
        assert!(off < 100_000);
    }
    let o = h.ts_opts();
    h.send_raw(h.iss + 1 + off, TcpFlags::ACK | TcpFlags::FIN, &[], o);
    let t = h.tx();
    assert_eq!(h.ack_of(&t[0]), off + 1, "FIN acknowledged");
    let info = h.ep.info(h.id()).unwrap();
    assert!(info.eof);
    assert_eq!(info.state, State::CloseWait);
    assert_eq!(h.read_all(), off as usize);
}

#[test]
fn right_edge_never_shrinks() {
    let cfg = Config {
        rcvbuf: 32 * 4096,
        quickack_segments: 1000,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    let ws = h.handshake(true).pkt.tcp.options.window_scale.unwrap();
    let data = pattern(1448 * 30, 8);
    let mut edge = 0u32;
    for i in 0..30usize {
        let d = h.send_data((i * 1448) as u32, &data[i * 1448..(i + 1) * 1448], false);
        for s in h.tx() {
            let right = h.ack_of(&s) + (s.window() << ws);
            assert!(right >= edge, "right edge moved left: {right} < {edge}");
            edge = right;
        }
        if d == FrameDisposition::Free {
            break;
        }
    }
}

#[test]
fn fin_delivers_eof_after_data_and_close_sends_fin() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    let data = pattern(3000, 9);
    // FIN arrives before the hole is filled: EOF only after all data.
    h.send_data(0, &data[..1000], false);
    let o = h.ts_opts();
    h.send_raw(
        h.iss + 1 + 2000,
        TcpFlags::ACK | TcpFlags::FIN,
        &data[2000..],
        o,
    );
    assert!(!h.ep.info(h.id()).unwrap().eof);
    h.send_data(1000, &data[1000..2000], false);
    h.tx();
    let info = h.ep.info(h.id()).unwrap();
    assert!(info.eof);
    assert_eq!(info.state, State::CloseWait);
    assert_eq!(info.available, 3000);
    h.read_all();
    assert_eq!(h.received, data);
    // Application closes: FIN, retransmitted until acknowledged.
    h.ep.close(h.now, h.id()).unwrap();
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert!(t[0].flags().fin());
    let fin_seq = t[0].pkt.tcp.seq;
    assert_eq!(h.ep.info(h.id()).unwrap().state, State::LastAck);
    let d = h.ep.poll_timeout().unwrap();
    h.now = d;
    h.ep.handle_timeout(d);
    let t = h.tx();
    assert!(t[0].flags().fin() && t[0].pkt.tcp.seq == fin_seq);
    let o = h.ts_opts();
    h.rcv_nxt = fin_seq + 1;
    h.send_raw(h.iss + 1 + 3001, TcpFlags::ACK, &[], o);
    assert!(h.ep.info(h.id()).is_none(), "closed and removed");
    assert_eq!(h.ep.connection_count(), 0);
    assert_eq!(h.frames.len(), 0);
}

#[test]
fn last_ack_gives_up_after_retries() {
    let mut h = Harness::new(Config {
        fin_retries: 3,
        ..Config::default()
    });
    h.handshake(false);
    h.send_raw(
        h.iss + 1,
        TcpFlags::ACK | TcpFlags::FIN,
        &[],
        OptionsOut::default(),
    );
    h.ep.close(h.now, h.id()).unwrap();
    let mut fins = 0;
    let mut rsts = 0;
    while let Some(d) = h.ep.poll_timeout() {
        h.now = d;
        h.ep.handle_timeout(d);
        for s in h.tx() {
            fins += s.flags().fin() as u32;
            rsts += s.flags().rst() as u32;
        }
    }
    assert_eq!((fins, rsts), (4, 1));
    assert_eq!(h.ep.connection_count(), 0);
}

#[test]
fn active_close_then_time_wait() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    h.ep.close(h.now, h.id()).unwrap();
    let t = h.tx();
    let fin_seq = t[0].pkt.tcp.seq;
    h.rcv_nxt = fin_seq + 1;
    let o = h.ts_opts();
    h.send_raw(h.iss + 1, TcpFlags::ACK, &[], o);
    assert_eq!(h.ep.info(h.id()).unwrap().state, State::FinWait2);
    h.send_raw(h.iss + 1, TcpFlags::ACK | TcpFlags::FIN, &[], o);
    assert_eq!(h.ep.info(h.id()).unwrap().state, State::TimeWait);
    assert_eq!(h.tx().len(), 1, "FIN acknowledged");
    h.advance(Duration::from_secs(31));
    assert_eq!(h.ep.connection_count(), 0);
}

#[test]
fn data_after_close_gets_rst_and_unread_close_aborts() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    h.ep.close(h.now, h.id()).unwrap();
    h.tx();
    h.send_data(0, b"late data", false);
    let t = h.tx();
    assert!(
        t.iter().any(|s| s.flags().rst()),
        "RST to data on a closed connection"
    );
    assert_eq!(h.ep.connection_count(), 0);

    let mut h = Harness::new(Config::default());
    h.handshake(true);
    h.send_data(0, b"unread", false);
    h.tx();
    h.ep.close(h.now, h.id()).unwrap();
    let t = h.tx();
    assert!(t[0].flags().rst(), "closing with unread data aborts");
    h.collect_released();
    assert_eq!(h.frames.len(), 0, "queued frames released");
}

#[test]
fn segments_to_unknown_connections_get_rst() {
    let mut h = Harness::new(Config::default());
    h.peer.local_port = 1234;
    h.peer.remote_port = 9999; // no listener
    h.send_raw(777, TcpFlags::SYN, &[], OptionsOut::default());
    let t = h.tx();
    assert!(t[0].flags().rst() && t[0].flags().ack());
    assert_eq!(t[0].pkt.tcp.ack, 778);
    h.peer.remote_port = PORT;
    h.rcv_nxt = 4242;
    h.send_raw(777, TcpFlags::ACK, b"data", OptionsOut::default());
    let t = h.tx();
    assert!(t[0].flags().rst());
    assert_eq!(t[0].pkt.tcp.seq, 4242);
    h.send_raw(777, TcpFlags::RST, &[], OptionsOut::default());
    assert!(h.tx().is_empty(), "never answer a RST");
}

#[test]
fn rst_exact_in_window_and_out_of_window() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    h.send_data(0, &[1u8; 100], false);
    h.tx();
    let o = h.ts_opts();
    // Out of window: ignored silently.
    h.send_raw(
        h.iss.wrapping_add(1 + 100 + 50_000_000),
        TcpFlags::RST,
        &[],
        o,
    );
    assert!(h.tx().is_empty());
    // In window, not exact: challenge ACK, connection stays.
    h.send_raw(h.iss + 1 + 200, TcpFlags::RST, &[], o);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert!(t[0].flags().ack() && !t[0].flags().rst());
    assert_eq!(h.ack_of(&t[0]), 100);
    assert_eq!(h.ep.info(h.id()).unwrap().state, State::Established);
    // Exact: reset.
    h.send_raw(h.iss + 1 + 100, TcpFlags::RST, &[], o);
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.state, State::Closed);
    assert_eq!(info.error, Some(ConnError::Reset));
    assert_eq!(h.frames.len(), 0, "queued data discarded on reset");
    h.ep.close(h.now, h.id()).unwrap();
    assert_eq!(h.ep.connection_count(), 0);
}

#[test]
fn syn_in_window_gets_challenge_ack() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    h.send_raw(
        h.iss + 1 + 10,
        TcpFlags::SYN,
        &[],
        Harness::syn_options(true),
    );
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].flags().0, TcpFlags::ACK);
    assert_eq!(h.ep.info(h.id()).unwrap().stats.challenge_acks, 1);
    // Challenge ACKs are rate limited.
    for _ in 0..100 {
        h.send_raw(
            h.iss + 1 + 10,
            TcpFlags::SYN,
            &[],
            Harness::syn_options(true),
        );
    }
    assert_eq!(h.tx().len(), 9, "10 per second");
}

#[test]
fn paws_drops_old_timestamps() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    h.ts = Some(1000);
    h.send_data(0, &[1u8; 100], false);
    h.tx();
    h.ts = Some(998);
    assert_eq!(h.send_data(100, &[2u8; 100], false), FrameDisposition::Free);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(h.ack_of(&t[0]), 100, "dropped, duplicate ACK");
    assert_eq!(h.ep.info(h.id()).unwrap().stats.paws_drops, 1);
    // Wrapped-around timestamp that is newer is accepted.
    h.ts = Some(1000u32.wrapping_add(0x7000_0000));
    assert_eq!(h.send_data(100, &[2u8; 100], false), FrameDisposition::Held);
    // And TSecr echoes the most recent TSval.
    let t = h.tx();
    assert_eq!(
        t[0].pkt.tcp.options.timestamps.unwrap().1,
        1000u32.wrapping_add(0x7000_0000)
    );
}

#[test]
fn idle_timeout_aborts() {
    let mut h = Harness::new(Config {
        idle_timeout: Duration::from_secs(5),
        ..Config::default()
    });
    h.handshake(true);
    h.advance(Duration::from_secs(6));
    let t = h.tx();
    assert!(t.iter().any(|s| s.flags().rst()));
    assert_eq!(h.ep.info(h.id()).unwrap().error, Some(ConnError::TimedOut));
}

#[test]
fn syn_flood_is_bounded() {
    // Without SYN cookies: SYNs beyond the backlog are dropped.
    let cfg = Config {
        syn_backlog: 64,
        syn_cookies: false,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    for port in 0..5000u16 {
        h.peer.local_port = 10000 + port;
        h.send_raw(
            port as u32 * 7919,
            TcpFlags::SYN,
            &[],
            Harness::syn_options(true),
        );
    }
    assert_eq!(h.ep.connection_count(), 64);
    assert_eq!(h.ep.stats().syn_backlog_drops, 5000 - 64);
    assert_eq!(h.tx().len(), 64);
    assert!(h.frames.is_empty());
    // The embryonic connections time out, freeing the backlog.
    for _ in 0..10 {
        h.advance(Duration::from_secs(40));
        h.tx();
    }
    assert_eq!(h.ep.connection_count(), 0);
    h.ep.check_invariants();
    // A legitimate client gets through afterwards.
    h.peer.local_port = 40000;
    h.handshake(true);
}

#[test]
fn ooo_flood_is_bounded_and_frames_released() {
    let cfg = Config {
        rcvbuf: 256 * 4096,
        max_ooo_ranges: 16,
        max_ooo_mem: 128 * 4096,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    h.handshake(true);
    // Segments with holes everywhere (every other 100-byte slot), far beyond what fits.
    for i in 0..5000u32 {
        h.send_data(100 + i * 200 % 400_000, &[9u8; 100], false);
        let info = h.ep.info(h.id()).unwrap();
        assert!(info.ooo_ranges <= 16);
        assert!(info.ooo_mem <= 128 * 4096);
        assert!(info.mem <= 256 * 4096);
    }
    // Small segments fill from the front; the store stays bounded and consistent.
    for i in 0..3000u32 {
        h.send_data((i * 37) % 10_000, &[9u8; 37], false);
        let info = h.ep.info(h.id()).unwrap();
        assert!(info.mem <= 256 * 4096);
        h.read_all();
    }
    h.ep.check_invariants();
    h.tx();
    let o = h.ts_opts();
    let rcv = h.ep.info(h.id()).unwrap().stats.payload_in;
    let _ = rcv;
    let next = h.iss.wrapping_add(1).wrapping_add(h.received.len() as u32);
    h.send_raw(next, TcpFlags::RST, &[], o);
    h.ep.close(h.now, h.id()).unwrap();
    assert!(h.frames.is_empty(), "every held frame came back");
    assert_eq!(h.ep.connection_count(), 0);
}

#[test]
fn accept_queue_bound() {
    let cfg = Config {
        accept_backlog: 2,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    for port in 0..3u16 {
        h.peer.local_port = 20000 + port;
        h.send_raw(h.iss, TcpFlags::SYN, &[], OptionsOut::default());
        let sa = h.tx();
        h.rcv_nxt = sa[0].pkt.tcp.seq + 1;
        h.send_raw(h.iss + 1, TcpFlags::ACK, &[], OptionsOut::default());
    }
    assert_eq!(h.ep.accept_queue_len(PORT), 2);
    assert!(h.ep.accept(PORT).is_some());
    h.send_raw(h.iss + 1, TcpFlags::ACK, &[], OptionsOut::default());
    assert_eq!(
        h.ep.accept_queue_len(PORT),
        2,
        "third completes once there is room"
    );
}

#[test]
fn parse_errors_are_counted_and_frames_free() {
    let mut h = Harness::new(Config::default());
    assert_eq!(h.deliver(vec![0u8; 10]), FrameDisposition::Free);
    // A fragment (MF set).
    let spec = netrx::wire::SegmentSpec {
        seq: 1,
        ack: 0,
        flags: TcpFlags::SYN,
        window: 100,
        options: OptionsOut::default(),
    };
    let mut buf = vec![0u8; 200];
    let n = netrx::wire::build_segment(&h.peer, &spec, &[], &mut buf).unwrap();
    buf.truncate(n);
    buf[14 + 6] = 0x20;
    buf[14 + 10] = 0;
    buf[14 + 11] = 0;
    let c = netrx::wire::checksum::checksum(&buf[14..34]);
    buf[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(h.deliver(buf), FrameDisposition::Free);
    let s = h.ep.stats();
    assert_eq!((s.parse_errors, s.fragments), (2, 1));
}

#[test]
fn paws_tolerates_one_tick_like_linux() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    h.ts = Some(1000);
    h.send_data(0, &[1u8; 100], false);
    h.tx();
    // One tick older passes (Linux TCP_PAWS_WINDOW = 1), two ticks older is dropped.
    h.ts = Some(999);
    assert_eq!(h.send_data(100, &[2u8; 100], false), FrameDisposition::Held);
    h.ts = Some(998);
    assert_eq!(h.send_data(200, &[3u8; 100], false), FrameDisposition::Free);
    assert_eq!(h.ep.info(h.id()).unwrap().stats.paws_drops, 1);
}

#[test]
fn ts_recent_is_not_updated_by_out_of_order_segments() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let data = pattern(3000, 7);
    h.ts = Some(1000);
    h.send_data(0, &data[..1000], false);
    h.tx();
    // A later segment arrives first with a much newer TSval: it does not cover the left edge,
    // so it must not become TS.Recent (RFC 7323 4.3) ...
    h.ts = Some(1050);
    assert_eq!(
        h.send_data(2000, &data[2000..], false),
        FrameDisposition::Held
    );
    let t = h.tx();
    assert_eq!(t[0].pkt.tcp.options.timestamps.unwrap().1, 1000);
    // ... or the reordered segment sent before it would be PAWS-dropped.
    h.ts = Some(1040);
    assert_eq!(
        h.send_data(1000, &data[1000..2000], false),
        FrameDisposition::Held
    );
    let t = h.tx();
    assert_eq!(h.ack_of(&t[0]), 3000);
    assert_eq!(t[0].pkt.tcp.options.timestamps.unwrap().1, 1040);
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.stats.paws_drops, 0);
    h.read_all();
    assert_eq!(h.received, data);
}

#[test]
fn dsack_reports_duplicates_once() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let base = h.iss.wrapping_add(1);
    let data = pattern(4000, 9);
    h.send_data(0, &data[..1000], false);
    h.advance(Duration::from_millis(50));
    h.tx();
    // A segment entirely below rcv_nxt (a spurious retransmission).
    assert_eq!(h.send_data(0, &data[..1000], false), FrameDisposition::Free);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].sack(), vec![(base, base + 1000)], "D-SACK block");
    // Out of order data, then a duplicate of it: D-SACK first, then the SACK block holding it.
    h.send_data(2000, &data[2000..3000], false);
    h.tx();
    assert_eq!(
        h.send_data(2000, &data[2000..3000], false),
        FrameDisposition::Free
    );
    let t = h.tx();
    assert_eq!(
        t[0].sack(),
        vec![(base + 2000, base + 3000), (base + 2000, base + 3000)]
    );
    // The report is one-shot: the next ACK carries only the SACK block.
    h.send_data(3000, &data[3000..4000], false);
    let t = h.tx();
    assert_eq!(t[0].sack(), vec![(base + 2000, base + 4000)]);
    // A segment straddling rcv_nxt: its old part is reported, the new part fills the hole.
    assert_eq!(
        h.send_data(500, &data[500..2000], false),
        FrameDisposition::Held
    );
    let t = h.tx();
    assert_eq!(h.ack_of(&t[0]), 4000);
    assert_eq!(t[0].sack(), vec![(base + 500, base + 1000)]);
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.stats.dsacks_sent, 3);
    h.read_all();
    assert_eq!(h.received, data);

    // Turned off: no D-SACK.
    let mut h = Harness::new(Config {
        dsack: false,
        ..no_quickack()
    });
    h.handshake(true);
    h.send_data(0, &data[..1000], false);
    h.tx();
    h.send_data(0, &data[..1000], false);
    let t = h.tx();
    assert!(t[0].sack().is_empty());
}

#[test]
fn whole_advertised_window_out_of_order_is_held_and_never_reneged() {
    // Default config: rcvbuf 4 MiB of 4 KiB frames, 1448-byte segments. The window is derived
    // from the same memory accounting as the out-of-order store, so a full window of
    // out-of-order segments fits: nothing in the window is dropped and nothing SACKed is
    // discarded. (SACK compression off: every ACK is checked.)
    let mut h = Harness::new(Config {
        comp_sack_nr: 0,
        ..Config::default()
    });
    let sa = h.handshake(true);
    let wscale = sa.pkt.tcp.options.window_scale.unwrap() as u32;
    const MSS: usize = 1448;
    let mut data = pattern(2000 * MSS, 3);
    // The first segment is lost: everything else arrives out of order.
    let d = h.send_data(MSS as u32, &data[MSS..2 * MSS], false);
    assert_eq!(d, FrameDisposition::Held);
    let t = h.tx();
    let edge = h.ack_of(&t[0]) as usize + ((t[0].window() << wscale) as usize);
    let n = edge / MSS;
    assert!(n > 900, "window of {n} segments");
    data.truncate(n * MSS);
    for i in 2..n {
        let d = h.send_data((i * MSS) as u32, &data[i * MSS..(i + 1) * MSS], false);
        assert_eq!(
            d,
            FrameDisposition::Held,
            "segment {i} of {n} in the window"
        );
        let t = h.tx();
        let s = t[0].sack();
        assert_eq!(
            s[0].1.wrapping_sub(h.iss.wrapping_add(1)) as usize,
            (i + 1) * MSS,
            "SACK covers everything so far"
        );
    }
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.stats.mem_drops, 0);
    assert_eq!(info.stats.ooo_pruned, 0);
    assert_eq!(info.ooo_bytes as usize, (n - 1) * MSS);
    assert!(info.mem <= info.rcvbuf as u64);
    // The retransmission of the first segment delivers the whole window.
    assert_eq!(h.send_data(0, &data[..MSS], false), FrameDisposition::Held);
    let t = h.tx();
    assert_eq!(h.ack_of(&t[0]) as usize, n * MSS);
    h.read_all();
    assert_eq!(h.received, data);
    h.ep.check_invariants();
}

#[test]
fn max_ooo_mem_bounds_the_window_instead_of_dropping() {
    let cfg = Config {
        max_ooo_mem: 64 * 4096,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    let sa = h.handshake(true);
    let wscale = sa.pkt.tcp.options.window_scale.unwrap() as u32;
    const MSS: usize = 1448;
    h.send_data(MSS as u32, &pattern(MSS, 1), false);
    let t = h.tx();
    let wnd = (t[0].window() << wscale) as usize;
    assert!(
        wnd <= 64 * MSS + (1 << wscale),
        "window {wnd} bounded by max_ooo_mem"
    );
    let n = (h.ack_of(&t[0]) as usize + wnd) / MSS;
    for i in 2..n {
        let d = h.send_data((i * MSS) as u32, &pattern(MSS, 1), false);
        assert_eq!(d, FrameDisposition::Held, "segment {i} of {n}");
    }
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.stats.mem_drops + info.stats.ooo_pruned, 0);
    assert!(info.ooo_mem <= 64 * 4096);
}

#[test]
fn sack_compression_after_three_immediate_dup_acks() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let base = h.iss.wrapping_add(1);
    let data = pattern(1000 * 12, 5);
    let seg = |i: usize| &data[i * 1000..(i + 1) * 1000];
    h.send_data(0, seg(0), false);
    h.advance(Duration::from_millis(50));
    h.tx();
    // Hole at 1000..2000: three immediate duplicate ACKs (fast retransmit still triggers) ...
    for i in 2..5 {
        h.send_data((i * 1000) as u32, seg(i), false);
        let t = h.tx();
        assert_eq!(t.len(), 1, "immediate duplicate ACK {i}");
        assert_eq!(h.ack_of(&t[0]), 1000);
    }
    // ... then out-of-order ACKs are held back and merged.
    for i in 5..9 {
        h.send_data((i * 1000) as u32, seg(i), false);
        assert!(h.tx().is_empty(), "segment {i}: ACK compressed");
    }
    let deadline = h.ep.poll_timeout().expect("compression timer");
    assert!(deadline <= h.now + Duration::from_millis(1));
    h.advance(Duration::from_millis(1));
    let t = h.tx();
    assert_eq!(t.len(), 1, "one ACK for the compressed ones");
    assert_eq!(t[0].sack(), vec![(base + 2000, base + 9000)]);
    assert_eq!(h.ep.info(h.id()).unwrap().stats.acks_compressed, 4);
    // The hole fills: ACK at once; a new hole gets three immediate duplicate ACKs again.
    h.send_data(1000, seg(1), false);
    let t = h.tx();
    assert_eq!(h.ack_of(&t[0]), 9000);
    for i in 10..12 {
        h.send_data((i * 1000) as u32, seg(i), false);
        assert_eq!(h.tx().len(), 1);
    }
    h.send_data(9000, seg(9), false);
    h.read_all();
    assert_eq!(h.received, data);

    // Turned off: every out-of-order segment is acknowledged at once.
    let mut h = Harness::new(Config {
        comp_sack_nr: 0,
        ..no_quickack()
    });
    h.handshake(true);
    for i in 2..9 {
        h.send_data((i * 1000) as u32, seg(i), false);
        assert_eq!(h.tx().len(), 1);
    }
}

#[test]
fn compressed_ack_goes_out_before_a_changed_range_could_go_unreported() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let base = h.iss.wrapping_add(1);
    let data = pattern(1000 * 14, 6);
    let seg = |i: usize| &data[i * 1000..(i + 1) * 1000];
    h.send_data(0, seg(0), false);
    h.advance(Duration::from_millis(50));
    h.tx();
    // Three immediate duplicate ACKs, each opening a range.
    for i in [2, 4, 6] {
        h.send_data((i * 1000) as u32, seg(i), false);
        assert_eq!(h.tx().len(), 1);
    }
    // Compressed: two more ranges change ...
    for i in [8, 10] {
        h.send_data((i * 1000) as u32, seg(i), false);
        assert!(h.tx().is_empty());
    }
    // ... a third fills the 3 SACK blocks beside timestamps: the ACK goes out now, reporting
    // every range changed since the last ACK.
    h.send_data(3000, seg(3), false);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(
        t[0].sack(),
        vec![
            (base + 2000, base + 5000),
            (base + 10000, base + 11000),
            (base + 8000, base + 9000)
        ]
    );
}

#[test]
fn paws_drop_above_rcv_nxt_is_not_reported_as_sack() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    let base = h.iss.wrapping_add(1);
    h.ts = Some(1000);
    h.send_data(0, &[1u8; 1000], false);
    h.tx();
    // Old TSval on out-of-order data: dropped, and the dropped range must not appear in a
    // SACK block (the sender would take it as received: reneging later).
    h.ts = Some(900);
    assert_eq!(
        h.send_data(2000, &[2u8; 1000], false),
        FrameDisposition::Free
    );
    let t = h.tx();
    assert!(t[0].sack().is_empty());
    // Old TSval on a retransmission straddling rcv_nxt: only the old part is a D-SACK.
    assert_eq!(
        h.send_data(500, &[1u8; 1000], false),
        FrameDisposition::Free
    );
    let t = h.tx();
    assert_eq!(t[0].sack(), vec![(base + 500, base + 1000)]);
}

#[test]
fn a_batch_of_in_order_segments_is_acknowledged_once_at_its_end() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    h.flush_each = false;
    // 20 segments: below half the 65 535 bytes the SYN-ACK offered.
    let data = pattern(1448 * 20, 5);
    for k in 0..20 {
        h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], false);
    }
    assert!(h.tx().is_empty(), "no ACK inside the batch");
    h.ep.flush(h.now);
    let t = h.tx();
    assert_eq!(t.len(), 1, "one cumulative ACK for the batch");
    assert_eq!(h.ack_of(&t[0]), 1448 * 20);
    assert_eq!(h.ep.info(h.id()).unwrap().stats.batch_acks, 1);
    // Nothing new: the next batch end sends nothing.
    h.ep.flush(h.now);
    assert!(h.tx().is_empty());
}

#[test]
fn a_batch_end_ack_covers_at_most_64_kb_and_half_the_offered_window() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    h.flush_each = false;
    let data = pattern(1448 * 100, 6);
    let mut acks = Vec::new();
    for k in 0..100 {
        h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], false);
        acks.extend(h.tx().iter().map(|s| h.ack_of(s)));
    }
    // The SYN-ACK offered 65 535 bytes: 23 segments (33 304 bytes) use half of it and are
    // acknowledged at once (the ACK opens the scaled window); then 46 segments (66 608 bytes)
    // reach 64 KiB.
    assert_eq!(acks, vec![1448 * 23, 1448 * (23 + 46)]);
    h.ep.flush(h.now);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert_eq!(h.ack_of(&t[0]), 1448 * 100);
}

#[test]
fn out_of_order_data_in_a_batch_is_acknowledged_at_once() {
    let mut h = Harness::new(no_quickack());
    h.handshake(true);
    h.flush_each = false;
    let data = pattern(1448 * 6, 7);
    for k in [0usize, 1, 2, 4] {
        h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], false);
    }
    let t = h.tx();
    assert_eq!(
        t.len(),
        1,
        "the hole is reported at once: {t:?}",
        t = t.len()
    );
    assert_eq!(h.ack_of(&t[0]), 1448 * 3);
    assert_eq!(t[0].sack().len(), 1, "with a SACK block");
}

#[test]
fn without_batch_acks_every_second_segment_is_acknowledged() {
    let mut h = Harness::new(Config {
        batch_acks: false,
        ..no_quickack()
    });
    h.handshake(true);
    h.flush_each = false;
    let data = pattern(1448 * 8, 8);
    for k in 0..8 {
        h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], false);
    }
    let acks: Vec<u32> = h.tx().iter().map(|s| h.ack_of(s)).collect();
    assert_eq!(acks, vec![2896, 5792, 8688, 11584]);
}

#[test]
fn syn_flood_with_cookies_keeps_no_state_and_lets_a_client_in_at_once() {
    let cfg = Config {
        syn_backlog: 64,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    for port in 0..5000u16 {
        h.peer.local_port = 10000 + port;
        h.send_raw(
            port as u32 * 7919,
            TcpFlags::SYN,
            &[],
            Harness::syn_options(true),
        );
    }
    assert_eq!(h.ep.connection_count(), 64, "state only for the backlog");
    let st = h.ep.stats();
    assert_eq!(st.syn_cookies_sent, 5000 - 64);
    assert_eq!(st.syn_backlog_drops, 0);
    assert_eq!(h.tx().len(), 5000, "every SYN answered");
    // A real client, during the flood: its SYN-ACK carries a cookie, its ACK opens the
    // connection with the options of its SYN (window scaling, SACK, timestamps).
    h.peer.local_port = 40000;
    let sa = h.handshake(true);
    assert_eq!(sa.pkt.tcp.options.window_scale, Some(5));
    assert_eq!(h.ep.stats().syn_cookies_ok, 1);
    let info = h.ep.info(h.id()).unwrap();
    assert_eq!(info.state, State::Established);
    assert!(info.sack && info.timestamps);
    let data = pattern(1448 * 4, 9);
    for k in 0..4 {
        h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], k == 3);
    }
    h.read_all();
    assert_eq!(h.received, data);
    // Out-of-order data is SACKed: the SACK option survived the cookie.
    h.send_data(1448 * 5, &data[..1448], false);
    let t = h.tx();
    assert!(t.iter().any(|s| !s.sack().is_empty()), "SACK in use");
    h.ep.check_invariants();
}

#[test]
fn forged_or_stale_cookie_acks_get_rst_and_no_state() {
    let cfg = Config {
        syn_backlog: 1,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    h.peer.local_port = 10000;
    h.send_raw(1, TcpFlags::SYN, &[], Harness::syn_options(true));
    h.tx();
    // Backlog full: this SYN gets a cookie.
    h.peer.local_port = 20000;
    h.send_raw(5000, TcpFlags::SYN, &[], Harness::syn_options(true));
    let sa = h.tx().remove(0);
    let cookie = sa.pkt.tcp.seq;
    // A forged ACK (wrong number): RST, nothing created.
    h.rcv_nxt = cookie.wrapping_add(2);
    let o = h.ts_opts();
    h.send_raw(5001, TcpFlags::ACK, &[], o);
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert!(t[0].flags().rst());
    assert_eq!(h.ep.stats().syn_cookies_failed, 1);
    // The right number, but after the cookie expired (two 64 s periods): RST too.
    for _ in 0..10 {
        h.advance(Duration::from_secs(20));
        h.tx();
    }
    h.rcv_nxt = cookie.wrapping_add(1);
    let o = h.ts_opts();
    h.send_raw(5001, TcpFlags::ACK, &[], o);
    assert!(h.tx()[0].flags().rst());
    assert_eq!(h.ep.stats().syn_cookies_failed, 2);
    assert_eq!(h.ep.stats().syn_cookies_ok, 0);
    assert_eq!(
        h.ep.connection_count(),
        0,
        "the first embryo timed out; nothing else"
    );
}

#[test]
fn abort_after_reading_everything_is_a_reset_not_a_fin() {
    let mut h = Harness::new(Config::default());
    h.handshake(true);
    let data = pattern(3000, 4);
    h.send_data(0, &data[..1448], false);
    h.send_data(1448, &data[1448..], true);
    h.read_all();
    h.tx();
    h.ep.abort(h.id()).unwrap();
    let t = h.tx();
    assert_eq!(t.len(), 1);
    assert!(t[0].flags().rst() && !t[0].flags().fin());
    assert_eq!(
        h.ep.connection_count(),
        0,
        "nothing left once every piece is back"
    );
    assert!(h.frames.is_empty());
}

// ----- memory pressure and the connection cap (several peers on one harness) -----

/// One of several peers sharing the harness: its port, sequence state and connection.
#[derive(Clone, Copy)]
struct PeerState {
    port: u16,
    iss: u32,
    rcv_nxt: u32,
    id: netrx::tcp::ConnId,
}

fn connect(h: &mut Harness, port: u16) -> PeerState {
    h.peer.local_port = port;
    h.iss = 1_000_000u32.wrapping_add(port as u32 * 7919);
    h.snd_nxt = h.iss;
    h.handshake(true);
    PeerState {
        port,
        iss: h.iss,
        rcv_nxt: h.rcv_nxt,
        id: h.id(),
    }
}

fn as_peer(h: &mut Harness, p: &PeerState) {
    h.peer.local_port = p.port;
    h.iss = p.iss;
    h.rcv_nxt = p.rcv_nxt;
    h.conn = Some(p.id);
}

fn frames_of(h: &Harness, p: &PeerState) -> (usize, u64) {
    let i = h.ep.info(p.id).unwrap();
    (i.ooo_segments, i.available)
}

fn held_frames(h: &Harness) -> u64 {
    h.ep.held_mem() / TRUESIZE as u64
}

#[test]
fn pool_pressure_prunes_the_largest_out_of_order_holder_newest_first() {
    let cfg = Config {
        rcvbuf: 256 * TRUESIZE,
        frame_pool: 200,
        pool_high_pct: 50,
        pool_reserve_pct: 10,
        ooo_pool_pct: 100,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    let a = connect(&mut h, 41000);
    let b = connect(&mut h, 41001);
    let c = connect(&mut h, 41002);
    // Tiny segments behind a hole at offset 0: each one-byte segment pins a whole frame.
    as_peer(&mut h, &a);
    for k in 1..=40u32 {
        assert_eq!(h.send_data(k, &[1], false), FrameDisposition::Held);
    }
    as_peer(&mut h, &b);
    for k in 1..=30u32 {
        assert_eq!(h.send_data(k, &[2], false), FrameDisposition::Held);
    }
    h.tx();
    assert_eq!(held_frames(&h), 70);
    assert_eq!(h.ep.stats().prune_runs, 0);
    // In-order data of a third connection (never read) pushes the pool over its high-water
    // mark (100 frames): out-of-order data goes, the largest holder first, down to 87.5.
    as_peer(&mut h, &c);
    let data = pattern(1448 * 40, 3);
    for k in 0..40usize {
        let d = h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], false);
        assert_eq!(
            d,
            FrameDisposition::Held,
            "in-order data always gets a frame"
        );
        assert!(held_frames(&h) <= 100, "held {} frames", held_frames(&h));
        if k == 30 {
            // The first prune (101 frames held): A (40) lost the most, down to B's level.
            let (sa, sb) = (frames_of(&h, &a).0, frames_of(&h, &b).0);
            assert!(
                40 - sa > 30 - sb && sa.abs_diff(sb) <= 1,
                "largest holder first, then level: {sa} {sb}"
            );
            assert!(held_frames(&h) <= 88, "down to the low-water mark (87.5)");
        }
        h.ep.check_invariants();
    }
    h.tx();
    let st = h.ep.stats();
    let (sa, _) = frames_of(&h, &a);
    let (sb, _) = frames_of(&h, &b);
    assert_eq!(
        frames_of(&h, &c).1,
        1448 * 40,
        "in-order data is never pruned"
    );
    assert_eq!(st.ooo_pruned_segments, (70 - sa - sb) as u64);
    assert_eq!(st.ooo_pruned_frames, st.ooo_pruned_segments);
    assert!(st.prune_runs >= 1 && st.frames_held_peak == 101, "{st:?}");
    assert_eq!(st.frames_held, held_frames(&h));
    assert_eq!(
        h.frames.len() as u64,
        held_frames(&h),
        "pruned frames were released"
    );
    // Highest sequence first: what A still holds is [1, 1 + sa), and its SACK blocks say so
    // (the pruned bytes are no longer reported: the sender retransmits them).
    as_peer(&mut h, &a);
    h.send_data(2, &[1], false); // a duplicate: answered at once (D-SACK + SACK)
    let t = h.tx();
    let sack = t.last().unwrap().sack();
    let base = a.iss.wrapping_add(1);
    assert!(
        sack.contains(&(base + 1, base + 1 + sa as u32)),
        "SACK {sack:?}, {sa} segments left"
    );
    assert!(sack.iter().all(|&(_, e)| e <= base + 1 + sa as u32));
    assert_eq!(
        h.ep.info(a.id).unwrap().stats.pressure_pruned,
        40 - sa as u64
    );
}

#[test]
fn pool_reserve_refuses_out_of_order_data_but_not_in_order_data_or_handshakes() {
    let cfg = Config {
        rcvbuf: 256 * TRUESIZE,
        frame_pool: 100,
        pool_high_pct: 95,
        pool_reserve_pct: 20,
        ooo_pool_pct: 100,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    let a = connect(&mut h, 41000);
    let c = connect(&mut h, 41002);
    as_peer(&mut h, &c);
    let data = pattern(1448 * 90, 5);
    for k in 0..70usize {
        h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], false);
    }
    // 70 frames held: out-of-order data may take 10 more before the reserve (20).
    as_peer(&mut h, &a);
    let mut held = 0;
    for k in 1..=30u32 {
        if h.send_data(k * 10, &[7], false) == FrameDisposition::Held {
            held += 1;
        }
    }
    assert_eq!(held, 10);
    assert_eq!(h.ep.stats().pressure_drops, 20);
    assert_eq!(h.ep.info(a.id).unwrap().stats.pressure_drops, 20);
    // A refused segment is answered (duplicate ACK without it in the SACK blocks).
    let t = h.tx();
    assert!(t
        .last()
        .unwrap()
        .sack()
        .iter()
        .all(|&(s, _)| s != a.iss.wrapping_add(1).wrapping_add(300)));
    // A handshake still completes, and in-order data still gets frames (past the reserve,
    // up to the high-water mark where A's out-of-order data is pruned).
    let d = connect(&mut h, 41003);
    as_peer(&mut h, &c);
    for k in 70..90usize {
        let r = h.send_data(1448 * k as u32, &data[1448 * k..1448 * (k + 1)], false);
        assert_eq!(r, FrameDisposition::Held);
    }
    assert_eq!(h.ep.info(c.id).unwrap().available, 1448 * 90);
    // At 96 frames (over 95): pruned down to 88.75, i.e. 8 of A's 10 segments.
    assert_eq!(h.ep.info(a.id).unwrap().ooo_segments, 2);
    assert_eq!(h.ep.stats().ooo_pruned_segments, 8);
    assert_eq!(h.ep.stats().prune_runs, 1);
    as_peer(&mut h, &d);
    assert_eq!(
        h.send_data(0, &[1; 100], true),
        FrameDisposition::Held,
        "in order"
    );
    h.ep.check_invariants();
    // Reading frees the pool; A's out-of-order data is taken again.
    as_peer(&mut h, &c);
    h.read_all();
    as_peer(&mut h, &a);
    assert_eq!(h.send_data(300, &[7], false), FrameDisposition::Held);
    h.ep.check_invariants();
}

#[test]
fn per_connection_out_of_order_share_of_the_pool_bounds_tiny_segment_abuse() {
    let cfg = Config {
        rcvbuf: 1024 * TRUESIZE,
        frame_pool: 1024,
        ooo_pool_pct: 10,
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    let a = connect(&mut h, 41000);
    as_peer(&mut h, &a);
    // 1100 one-byte segments behind a hole: at most 10 % of the pool (102 frames) is held.
    for k in 1..=1100u32 {
        h.send_data(k, &[1], false);
    }
    let i = h.ep.info(a.id).unwrap();
    assert_eq!(i.ooo_mem, 102 * TRUESIZE as u64);
    assert_eq!(i.stats.mem_drops, 1100 - 102);
    // The window is bounded by the share too (so full-sized segments are never dropped).
    assert!(i.window as u64 <= 103 * 1448, "window {}", i.window);
    h.ep.check_invariants();
}

#[test]
fn connection_cap_reclaims_the_oldest_idle_connection_for_a_cookie_client() {
    let cfg = Config {
        max_connections: 8,
        reclaim_idle_after: Duration::from_secs(10),
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    let mut peers = Vec::new();
    for i in 0..8u16 {
        peers.push(connect(&mut h, 42000 + i));
        h.now = h.now + Duration::from_millis(10);
    }
    assert_eq!(h.ep.connection_count(), 8);
    // At the cap, nothing idle for 10 s yet: a new client is answered with a cookie and its
    // ACK is refused (counted); no established connection is touched.
    let try_client = |h: &mut Harness, port: u16| -> Option<netrx::tcp::ConnId> {
        h.peer.local_port = port;
        h.iss = 7_000_000 + port as u32;
        h.send_raw(h.iss, TcpFlags::SYN, &[], Harness::syn_options(true));
        let sa = h.tx().remove(0);
        assert_eq!(sa.flags().0, TcpFlags::SYN | TcpFlags::ACK);
        h.rcv_nxt = sa.pkt.tcp.seq.wrapping_add(1);
        let o = h.ts_opts();
        h.send_raw(h.iss.wrapping_add(1), TcpFlags::ACK, &[], o);
        h.ep.accept(PORT)
    };
    assert!(try_client(&mut h, 50000).is_none());
    let st = h.ep.stats();
    assert_eq!((st.conn_limit_drops, st.conns_reclaimed), (1, 0));
    assert_eq!(
        st.syn_cookies_sent, 1,
        "the cookie is the cap's stateless answer"
    );
    assert!(h.tx().is_empty(), "no RST to anyone");
    // 11 s later: peer 2 is active (data just now); the oldest idle one (peer 0) is reset
    // and the client gets in at once. Its application learns: the connection ends in Reset.
    h.advance(Duration::from_secs(11));
    h.tx();
    as_peer(&mut h, &peers[2].clone());
    h.send_data(0, &[5; 100], true);
    h.tx();
    let id = try_client(&mut h, 50001).expect("the client gets in");
    assert_eq!(h.ep.info(id).unwrap().state, State::Established);
    let t = h.tx();
    let rst: Vec<_> = t.iter().filter(|s| s.flags().rst()).collect();
    assert_eq!(rst.len(), 1);
    assert_eq!(rst[0].pkt.tcp.dst_port, 42000, "the oldest idle connection");
    let i0 = h.ep.info(peers[0].id).unwrap();
    assert_eq!(
        (i0.state, i0.error),
        (State::Closed, Some(ConnError::Reset))
    );
    assert_eq!(h.ep.stats().conns_reclaimed, 1);
    // The next one reclaims peer 1, never the active peer 2.
    let _ = try_client(&mut h, 50002).expect("second client");
    let t = h.tx();
    assert_eq!(t.iter().filter(|s| s.flags().rst()).count(), 1);
    assert_eq!(t[0].pkt.tcp.dst_port, 42001);
    assert_eq!(h.ep.info(peers[2].id).unwrap().state, State::Established);
    h.ep.check_invariants();
    // The applications close the reclaimed handles: the records go.
    h.ep.close(h.now, peers[0].id).unwrap();
    h.ep.close(h.now, peers[1].id).unwrap();
    assert_eq!(h.ep.connection_count(), 8);
    h.ep.check_invariants();
}

#[test]
fn connection_cap_without_cookies_reclaims_on_syn_and_zero_never_reclaims() {
    for after in [Duration::from_secs(10), Duration::ZERO] {
        let cfg = Config {
            max_connections: 4,
            syn_cookies: false,
            reclaim_idle_after: after,
            ..Config::default()
        };
        let mut h = Harness::new(cfg);
        for i in 0..4u16 {
            connect(&mut h, 42000 + i);
        }
        h.advance(Duration::from_secs(30));
        h.tx();
        h.peer.local_port = 50000;
        h.iss = 9_000_000;
        h.send_raw(h.iss, TcpFlags::SYN, &[], Harness::syn_options(true));
        let t = h.tx();
        let st = h.ep.stats();
        if after.is_zero() {
            assert!(t.is_empty(), "refused at the cap");
            assert_eq!((st.conn_limit_drops, st.conns_reclaimed), (1, 0));
        } else {
            assert_eq!(
                t.len(),
                2,
                "RST to the reclaimed one, SYN-ACK to the new one"
            );
            assert!(t[0].flags().rst() && t[1].flags().syn());
            assert_eq!((st.conn_limit_drops, st.conns_reclaimed), (0, 1));
        }
        h.ep.check_invariants();
    }
}
