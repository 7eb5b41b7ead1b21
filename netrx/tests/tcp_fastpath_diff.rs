//! Differential property: header prediction (`Config::fast_path`) changes nothing observable.
//!
//! Two endpoints, one with the fast path and one without (the full path, the reference), get the
//! same frames, time, reads, releases, flushes and closes (and `consume` on the fast side against
//! `read`, `release` and `flush` on the full side). After every step they must agree on
//! the frame disposition, every transmitted frame (byte for byte: ACKs, window, SACK and D-SACK
//! blocks, timestamps), released frames, ready connections, per-connection info and counters,
//! endpoint counters (but `fast_path`), the next timer, and the bytes delivered. Streams mix
//! in-order data with reordering, duplicates, overlaps, FIN, RST, SYN, option-laden segments
//! (SACK blocks, MSS, no timestamps, old timestamps for PAWS), bad checksums, VLAN tags, wrong
//! ACK fields, zero windows and two interleaved connections.
//!
//! A third endpoint takes the same frames through `Endpoint::on_frame_into` (direct delivery to a
//! waiting reader, copied and checksummed in one pass) with an application that reads what
//! arrives (and lags every third step): everything it delivers must be the stream, in order,
//! and no corrupted byte may reach it.

use std::collections::HashMap;
use std::time::Duration;

use netrx::tcp::{
    Config, ConnId, DirectReader, Endpoint, EndpointEvent, FrameDisposition, Instant, RxSegment,
};
use netrx::wire::checksum::{copy_maybe_sum, Checksum};
use netrx::wire::tcp::{OptionsOut, TcpFlags};
use netrx::wire::{self, build_segment, ChecksumMode, IpPair, ReplyAddrs, SegmentSpec};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PORT: u16 = 5001;

fn peer(port: u16, vlan: Option<u16>) -> ReplyAddrs {
    ReplyAddrs {
        local_mac: [2, 0, 0, 0, 0, 2],
        remote_mac: [2, 0, 0, 0, 0, 1],
        vlan,
        ip: IpPair::V4 {
            src: [10, 0, 0, 2],
            dst: [10, 0, 0, 1],
        },
        local_port: port,
        remote_port: PORT,
    }
}

fn byte_at(off: u64) -> u8 {
    (off.wrapping_mul(131) ^ (off >> 9)) as u8
}

/// One peer (a sender) and what both endpoints told it.
struct Peer {
    port: u16,
    iss: u32,
    /// Our (the endpoint's) sequence number after the SYN-ACK.
    our_nxt: u32,
    ts: bool,
    tsval: u32,
    /// Highest stream offset sent so far.
    sent: u64,
    conn: Option<ConnId>,
    /// Bytes delivered in order (stream offset of the next byte expected by the reader).
    delivered: u64,
    fin_sent: bool,
}

struct Pair {
    fast: Endpoint,
    full: Endpoint,
    /// A third endpoint (fast path) whose application reads everything as it arrives, with
    /// direct delivery (`Endpoint::on_frame_into`): its ACKs and windows differ from the other
    /// two (nothing it receives stays queued), so it is checked on its own: every byte it
    /// delivers, directly or through `consume`, is the stream's, and its invariants hold.
    direct: Endpoint,
    eager: Eager,
    direct_frames: HashMap<u64, Vec<u8>>,
    direct_conns: Vec<ConnId>,
    now: Instant,
    next_frame: u64,
    frames: HashMap<u64, Vec<u8>>,
    pending: Vec<RxSegment>,
    steps: u64,
}

impl Pair {
    fn new(cfg: Config) -> Pair {
        let mut fast = Endpoint::new(Config {
            fast_path: true,
            ..cfg.clone()
        });
        let mut full = Endpoint::new(Config {
            fast_path: false,
            ..cfg
        });
        let mut direct = Endpoint::new(Config {
            fast_path: true,
            ..fast.config().clone()
        });
        fast.listen(PORT).unwrap();
        full.listen(PORT).unwrap();
        direct.listen(PORT).unwrap();
        Pair {
            fast,
            full,
            direct,
            eager: Eager::default(),
            direct_frames: HashMap::new(),
            direct_conns: Vec::new(),
            now: Instant::from_millis(5000),
            next_frame: 1,
            frames: HashMap::new(),
            pending: Vec::new(),
            steps: 0,
        }
    }

    /// Both endpoints take the frame; returns what they transmitted.
    fn deliver(&mut self, bytes: Vec<u8>, truesize: u32) -> Vec<Vec<u8>> {
        let id = self.next_frame;
        self.next_frame += 1;
        let a = self.fast.on_frame(self.now, id, &bytes, truesize);
        let b = self.full.on_frame(self.now, id, &bytes, truesize);
        assert_eq!(a, b, "disposition of frame {id}");
        // The reader declines now and then (the segment is queued and consumed instead).
        self.eager.take = id % 5 != 0;
        let d = self
            .direct
            .on_frame_into(self.now, id, &bytes, truesize, &mut self.eager);
        if d == FrameDisposition::Held {
            self.direct_frames.insert(id, bytes.clone());
        }
        if a == FrameDisposition::Held {
            self.frames.insert(id, bytes);
        }
        self.drive_direct();
        self.compare()
    }

    /// The direct endpoint's application: accepts, reads everything readable, drops its
    /// transmitted frames (nobody answers them), returns released frames.
    /// Now and then (every third step) it lags, leaving data queued, so that direct delivery
    /// must wait behind it.
    fn drive_direct(&mut self) {
        while let Some(id) = self.direct.accept(PORT) {
            self.direct_conns.push(id);
        }
        if self.steps % 3 != 0 {
            for &id in &self.direct_conns {
                let (frames, eager) = (&self.direct_frames, &mut self.eager);
                let _ = self.direct.consume(self.now, id, usize::MAX, |seg| {
                    let f = &frames[&seg.frame];
                    eager.check(id, &f[seg.offset as usize..(seg.offset + seg.len) as usize]);
                });
            }
        }
        while let Some(e) = self.direct.poll_event() {
            if let EndpointEvent::FrameReleased(f) = e {
                assert!(
                    self.direct_frames.remove(&f).is_some(),
                    "released {f} was held"
                );
            }
        }
        while self.direct.pop_tx().is_some() {}
        self.direct.check_invariants();
    }

    /// Compares everything observable; returns the transmitted frames.
    fn compare(&mut self) -> Vec<Vec<u8>> {
        self.steps += 1;
        let mut tx = Vec::new();
        loop {
            let a = self.fast.pop_tx().map(|f| f.as_bytes().to_vec());
            let b = self.full.pop_tx().map(|f| f.as_bytes().to_vec());
            assert_eq!(a, b, "transmitted frame");
            match a {
                Some(f) => tx.push(f),
                None => break,
            }
        }
        // Every event, in order: released frames, readable / FIN / reset, accepts.
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        while let Some(e) = self.fast.poll_event() {
            ea.push(e);
        }
        while let Some(e) = self.full.poll_event() {
            eb.push(e);
        }
        assert_eq!(ea, eb, "endpoint events");
        for e in ea {
            if let EndpointEvent::FrameReleased(f) = e {
                assert!(self.frames.remove(&f).is_some(), "released {f} was held");
            }
        }
        let mut sa = self.fast.stats();
        let sb = self.full.stats();
        assert_eq!(sb.fast_path, 0);
        sa.fast_path = 0;
        assert_eq!(sa, sb, "endpoint counters");
        assert_eq!(self.fast.poll_timeout(), self.full.poll_timeout());
        assert_eq!(self.fast.connection_count(), self.full.connection_count());
        self.fast.check_invariants();
        self.full.check_invariants();
        tx
    }

    fn compare_conn(&self, id: ConnId) {
        let a = self.fast.info(id).map(|i| format!("{i:?}"));
        let b = self.full.info(id).map(|i| format!("{i:?}"));
        assert_eq!(a, b, "connection info");
        let pa: Vec<RxSegment> = self.fast.peek(id).collect();
        let pb: Vec<RxSegment> = self.full.peek(id).collect();
        assert_eq!(pa, pb, "queued segments");
    }

    fn handshake(&mut self, p: &mut Peer, rng: &mut ChaCha8Rng) {
        let full_opts = rng.gen_bool(0.6);
        let o = if full_opts {
            OptionsOut {
                mss: Some(1460),
                window_scale: Some(rng.gen_range(0..10)),
                sack_permitted: rng.gen_bool(0.8),
                timestamps: Some((p.tsval, 0)),
                ..Default::default()
            }
        } else if rng.gen_bool(0.5) {
            OptionsOut {
                mss: Some(1460),
                timestamps: Some((p.tsval, 0)),
                ..Default::default()
            }
        } else {
            OptionsOut {
                mss: Some(1460),
                ..Default::default()
            }
        };
        p.ts = o.timestamps.is_some();
        let f = build(p, None, p.iss, 0, TcpFlags::SYN, 65535, o, &[]);
        let tx = self.deliver(f, 4096);
        let synack = tx
            .iter()
            .filter_map(|f| wire::parse(f, ChecksumMode::Verify).ok())
            .find(|s| s.tcp.flags.syn())
            .expect("SYN-ACK");
        p.our_nxt = synack.tcp.seq.wrapping_add(1);
        self.now = self.now + Duration::from_millis(1);
        let o = ts_opts(p);
        let f = build(
            p,
            None,
            p.iss.wrapping_add(1),
            p.our_nxt,
            TcpFlags::ACK,
            65535,
            o,
            &[],
        );
        self.deliver(f, 4096);
        let a = self.fast.accept(PORT);
        let b = self.full.accept(PORT);
        assert_eq!(a, b);
        p.conn = a;
    }

    /// Checks a piece the application got: the next bytes of the stream.
    fn delivered(&self, p: &mut Peer, seg: &RxSegment) {
        assert_eq!(seg.stream_offset, p.delivered, "pieces come in order");
        let f = &self.frames[&seg.frame];
        let bytes = &f[seg.offset as usize..(seg.offset + seg.len) as usize];
        for (i, &x) in bytes.iter().enumerate() {
            assert_eq!(x, byte_at(seg.stream_offset + i as u64), "stream byte");
        }
        p.delivered += seg.len as u64;
    }

    /// A synchronous consumer: `Endpoint::consume` on the fast side, `read`, `release` piece by
    /// piece and `flush` on the full side; the same pieces and the same effects.
    fn consume_some(&mut self, p: &mut Peer, id: ConnId, rng: &mut ChaCha8Rng) {
        let max = if rng.gen_bool(0.5) {
            usize::MAX
        } else {
            rng.gen_range(1..20_000)
        };
        let mut got = Vec::new();
        let a = self.fast.consume(self.now, id, max, |seg| got.push(*seg));
        let mut want = Vec::new();
        let mut done = 0;
        let b = loop {
            if done >= max {
                break Ok(done);
            }
            match self.full.read(id, max - done) {
                Ok(Some(seg)) => {
                    done += seg.len as usize;
                    want.push(seg);
                    self.full.release(&seg).unwrap();
                }
                Ok(None) => break Ok(done),
                Err(e) => break Err(e),
            }
        };
        if b.is_ok() {
            // `consume` of an unknown connection does nothing.
            self.full.flush(self.now);
        }
        assert_eq!(a, b, "consumed bytes");
        assert_eq!(got, want, "consumed pieces");
        for seg in got {
            self.delivered(p, &seg);
        }
        self.compare_conn(id);
        self.compare();
    }

    /// A random reader step: reads pieces of every connection and releases some of the
    /// outstanding ones, checking the bytes.
    fn read_some(&mut self, peers: &mut [Peer], rng: &mut ChaCha8Rng) {
        for p in peers.iter_mut() {
            let Some(id) = p.conn else { continue };
            if rng.gen_bool(0.25) {
                self.consume_some(p, id, rng);
                continue;
            }
            for _ in 0..rng.gen_range(0..40) {
                let max = if rng.gen_bool(0.7) {
                    usize::MAX
                } else {
                    rng.gen_range(1..3000)
                };
                let a = self.fast.read(id, max);
                let b = self.full.read(id, max);
                assert_eq!(a, b, "read");
                match a {
                    Ok(Some(seg)) => {
                        self.delivered(p, &seg);
                        self.pending.push(seg);
                    }
                    _ => break,
                }
            }
            self.compare_conn(id);
        }
        let keep = if rng.gen_bool(0.3) {
            rng.gen_range(0..=self.pending.len())
        } else {
            0
        };
        while self.pending.len() > keep {
            let i = rng.gen_range(0..self.pending.len());
            let seg = self.pending.swap_remove(i);
            assert_eq!(self.fast.release(&seg), self.full.release(&seg));
        }
        self.compare();
        if rng.gen_bool(0.7) {
            self.fast.flush(self.now);
            self.full.flush(self.now);
            self.compare();
        }
    }
}

fn ts_opts(p: &Peer) -> OptionsOut {
    OptionsOut {
        timestamps: p.ts.then_some((p.tsval, 1)),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    p: &Peer,
    vlan: Option<u16>,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: OptionsOut,
    payload: &[u8],
) -> Vec<u8> {
    let spec = SegmentSpec {
        seq,
        ack,
        flags,
        window,
        options,
    };
    let mut buf = vec![0u8; 160 + payload.len()];
    let n = build_segment(&peer(p.port, vlan), &spec, payload, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

struct Params {
    seed: u64,
    steps: usize,
    timestamps: bool,
    sack: bool,
    verify: bool,
    rcvbuf_frames: u32,
    quickack: u32,
    comp_sack: bool,
    max_seg: usize,
    ooo_pct: u32,
    dup_pct: u32,
    odd_pct: u32,
}

fn run(prm: Params) -> (u64, u64, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(prm.seed);
    let cfg = Config {
        rcvbuf: prm.rcvbuf_frames * 4096,
        timestamps: prm.timestamps,
        sack: prm.sack,
        checksum: if prm.verify {
            ChecksumMode::Verify
        } else {
            ChecksumMode::Trust
        },
        quickack_segments: prm.quickack,
        comp_sack_nr: if prm.comp_sack { 44 } else { 0 },
        max_ooo_ranges: 6,
        // A third of the runs share a small frame pool (pool pressure: pruning, reserve).
        frame_pool: if prm.seed % 3 == 0 {
            prm.rcvbuf_frames + 8
        } else {
            0
        },
        ..Config::default()
    };
    let mut pair = Pair::new(cfg);
    let mut peers: Vec<Peer> = (0..2u16)
        .map(|i| Peer {
            port: 40000 + i,
            // Near the wrap-around now and then.
            iss: if rng.gen_bool(0.3) {
                u32::MAX - rng.gen_range(0..100_000)
            } else {
                rng.gen()
            },
            our_nxt: 0,
            ts: false,
            tsval: rng.gen(),
            sent: 0,
            conn: None,
            delivered: 0,
            fin_sent: false,
        })
        .collect();
    for p in peers.iter_mut() {
        pair.handshake(p, &mut rng);
    }
    for _ in 0..prm.steps {
        let r = rng.gen_range(0..100);
        if r < 75 {
            let pi = if rng.gen_bool(0.8) { 0 } else { 1 };
            let p = &mut peers[pi];
            if p.fin_sent && rng.gen_bool(0.9) {
                continue;
            }
            // Where: the next byte, ahead (reordering), behind (duplicate), or overlapping.
            let len = if rng.gen_bool(0.6) {
                prm.max_seg
            } else {
                rng.gen_range(1..=prm.max_seg)
            };
            let k = rng.gen_range(0..100);
            let off = if k < prm.ooo_pct {
                p.sent + (rng.gen_range(1..4) * prm.max_seg) as u64
            } else if k < prm.ooo_pct + prm.dup_pct && p.sent > 0 {
                p.sent
                    .saturating_sub(rng.gen_range(1..3 * prm.max_seg) as u64)
            } else {
                p.sent
            };
            let payload: Vec<u8> = (0..len as u64).map(|i| byte_at(off + i)).collect();
            if off + len as u64 > p.sent && k >= prm.ooo_pct {
                p.sent = off + len as u64;
            }
            if rng.gen_bool(0.7) {
                p.tsval = p.tsval.wrapping_add(rng.gen_range(0..3));
            }
            let mut flags = TcpFlags::ACK;
            if rng.gen_bool(0.3) {
                flags |= TcpFlags::PSH;
            }
            let mut opts = ts_opts(p);
            let mut ack = p.our_nxt;
            let mut window = 65535u16;
            let mut seq = p.iss.wrapping_add(1).wrapping_add(off as u32);
            let mut vlan = None;
            let mut corrupt = false;
            let mut payload = payload;
            if rng.gen_range(0..100) < prm.odd_pct {
                match rng.gen_range(0..14) {
                    0 => {
                        flags |= TcpFlags::FIN;
                        p.fin_sent = true;
                    }
                    1 => flags = TcpFlags::RST | TcpFlags::ACK,
                    2 => flags = TcpFlags::SYN,
                    3 => {
                        opts.sack = [(seq, seq.wrapping_add(10)), (0, 0), (0, 0), (0, 0)];
                        opts.sack_count = 1;
                    }
                    4 => opts.mss = Some(1000),
                    5 => opts.timestamps = None,
                    6 => opts.timestamps = Some((p.tsval.wrapping_sub(rng.gen_range(2..1000)), 1)),
                    // Corrupted bytes are only dropped when checksums are verified.
                    7 => corrupt = prm.verify,
                    8 => vlan = Some(5),
                    9 => ack = ack.wrapping_add(rng.gen_range(1..1000)),
                    10 => ack = ack.wrapping_sub(rng.gen_range(1..100_000)),
                    11 => window = rng.gen_range(0..4),
                    12 => seq = rng.gen(),
                    _ => {
                        payload.clear();
                        flags = TcpFlags::ACK;
                    }
                }
            }
            // The payload always matches the stream at the offset its sequence number says.
            let at = seq.wrapping_sub(p.iss.wrapping_add(1)) as u64;
            for (i, b) in payload.iter_mut().enumerate() {
                *b = byte_at(at + i as u64);
            }
            let mut f = build(p, vlan, seq, ack, flags, window, opts, &payload);
            if corrupt {
                let i = rng.gen_range(14..f.len());
                f[i] ^= 1 << rng.gen_range(0..8);
            }
            if rng.gen_bool(0.05) {
                f.extend_from_slice(&[0; 6]); // Ethernet padding
            }
            let truesize = if rng.gen_bool(0.9) { 4096 } else { 2048 };
            pair.deliver(f, truesize);
            if let Some(id) = peers[pi].conn {
                pair.compare_conn(id);
            }
        } else if r < 85 {
            pair.read_some(&mut peers, &mut rng);
        } else if r < 95 {
            pair.now = pair.now + Duration::from_micros(rng.gen_range(0..80_000));
            pair.fast.handle_timeout(pair.now);
            pair.full.handle_timeout(pair.now);
            pair.direct.handle_timeout(pair.now);
            pair.drive_direct();
            pair.compare();
        } else if r < 96 && prm.odd_pct > 0 {
            let p = &peers[rng.gen_range(0..2)];
            if let Some(id) = p.conn {
                assert_eq!(pair.fast.close(pair.now, id), pair.full.close(pair.now, id));
                let _ = pair.direct.close(pair.now, id);
                pair.drive_direct();
                pair.compare();
            }
        } else {
            // Time passes in small steps (delayed ACKs, SACK compression).
            pair.now = pair.now + Duration::from_micros(rng.gen_range(0..2_000));
            pair.compare();
        }
    }
    // Wind down: read and release everything, let the timers run.
    pair.read_some(&mut peers, &mut rng);
    let pending = std::mem::take(&mut pair.pending);
    for seg in pending {
        assert_eq!(pair.fast.release(&seg), pair.full.release(&seg));
    }
    pair.compare();
    let d = pair.direct.stats();
    assert!(d.direct_deliveries <= d.fast_path);
    (
        pair.fast.stats().fast_path,
        pair.fast.stats().frames_in,
        d.direct_deliveries,
    )
}

/// The direct endpoint's reader: takes what it is offered (when `take`) and checks every byte
/// it is given against the stream.
#[derive(Default)]
struct Eager {
    take: bool,
    buf: Vec<u8>,
    /// Bytes delivered so far per connection (directly or through `consume`).
    got: HashMap<ConnId, u64>,
}

impl Eager {
    fn check(&mut self, id: ConnId, bytes: &[u8]) {
        let off = self.got.entry(id).or_insert(0);
        for (i, &x) in bytes.iter().enumerate() {
            assert_eq!(
                x,
                byte_at(*off + i as u64),
                "delivered byte {}",
                *off + i as u64
            );
        }
        *off += bytes.len() as u64;
    }
}

impl DirectReader for Eager {
    fn copy_in(
        &mut self,
        _conn: ConnId,
        payload: &[u8],
        _psh: bool,
        verify: bool,
    ) -> Option<Checksum> {
        if !self.take {
            return None;
        }
        self.buf.clear();
        self.buf.resize(payload.len(), 0xa5);
        Some(copy_maybe_sum(&mut self.buf, payload, verify))
    }
    fn filled(&mut self, conn: ConnId, len: usize, _psh: bool) {
        let b = std::mem::take(&mut self.buf);
        self.check(conn, &b[..len]);
        self.buf = b;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn fast_path_and_full_path_agree(
        seed in any::<u64>(),
        steps in 50usize..600,
        timestamps in any::<bool>(),
        sack in any::<bool>(),
        verify in any::<bool>(),
        rcvbuf_frames in 6u32..80,
        quickack in 0u32..20,
        comp_sack in any::<bool>(),
        max_seg in prop::sample::select(vec![1usize, 7, 100, 536, 1448]),
        ooo_pct in 0u32..25,
        dup_pct in 0u32..25,
        odd_pct in 0u32..30,
    ) {
        run(Params { seed, steps, timestamps, sack, verify, rcvbuf_frames, quickack, comp_sack,
                     max_seg, ooo_pct, dup_pct, odd_pct });
    }
}

/// The common case really takes the fast path (so the property above tests something).
#[test]
fn in_order_streams_take_the_fast_path() {
    for (timestamps, verify) in [(true, true), (false, true), (true, false)] {
        let (fast, frames, direct) = run(Params {
            seed: 11,
            steps: 2000,
            timestamps,
            sack: true,
            verify,
            // Room for the whole stream: this sender ignores the window.
            rcvbuf_frames: 4096,
            quickack: 16,
            comp_sack: true,
            max_seg: 1448,
            ooo_pct: 0,
            dup_pct: 0,
            odd_pct: 0,
        });
        assert!(
            fast * 10 > frames * 8,
            "{fast} of {frames} frames took the fast path"
        );
        // The eager reader takes four offers in five: most frames go straight to it.
        assert!(
            direct * 10 > frames * 6,
            "{direct} of {frames} frames were delivered directly"
        );
    }
}

#[test]
fn impaired_streams_agree() {
    for seed in 0..8 {
        let (fast, frames, _) = run(Params {
            seed,
            steps: 3000,
            timestamps: seed % 2 == 0,
            sack: true,
            verify: true,
            rcvbuf_frames: 48,
            quickack: 4,
            comp_sack: seed % 3 != 0,
            max_seg: 1448,
            ooo_pct: 10,
            dup_pct: 10,
            odd_pct: 15,
        });
        assert!(fast > 0 && fast < frames);
    }
}
