//! A structured interpreter for the TCP receive endpoint, shared by the `endpoint_ops` fuzz
//! target (`netrx/fuzz`, included by path) and the `fuzz_ops_replay` / `fuzz_regressions` tests.
//!
//! A [`Scenario`] (derived with `arbitrary` from the fuzzer's bytes) is a configuration and a
//! list of [`Op`]s: up to 16 peers (IPv4 and IPv6, two per address, two listening ports)
//! connect with fuzzer-chosen initial sequence numbers (often just below 2^32, so sequence
//! numbers wrap), send segments at chosen stream offsets with valid checksums (some
//! corrupted), and the application accepts, reads, releases out of order, resizes buffers,
//! closes and aborts while time advances.
//!
//! Oracles (a panic is a finding):
//! - every payload byte is a hash of (peer, incarnation, sequence number); every piece `read`
//!   returns must continue the connection's stream exactly where the previous one ended, come
//!   from a frame of the same peer, and hold the bytes that were sent at that position;
//! - a frame with a corrupted byte (checksum-covered region) is a parse error and `Free`, and
//!   the endpoint answers nothing;
//! - the endpoint's ACKs never go backwards and never cover data (or a FIN) that was not sent
//!   intact; SACK blocks cover only data that was sent intact;
//! - replies go to the address and port of the peer they answer;
//! - `check_invariants` after every op; a frame is released only if held, and only once;
//! - at the end every live connection still holds everything it acknowledged, and after
//!   closing everything and letting timers run, no connection and no frame is left.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use netrx::tcp::{
    Config, ConnId, DirectReader, Endpoint, EndpointEvent, FrameDisposition, Instant, RxSegment,
};
use netrx::wire::checksum::{copy_maybe_sum, Checksum};
use netrx::wire::tcp::{OptionsOut, TcpFlags};
use netrx::wire::{self, build_segment, ChecksumMode, IpPair, ReplyAddrs, SegmentSpec};

pub const MAX_PEERS: usize = 16;

/// `NETRX_FUZZ_TRACE=1`: print every frame sent and every ACK received (replaying a finding).
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("NETRX_FUZZ_TRACE").is_some())
}
const PORTS: [u16; 2] = [80, 8080];
/// Peer `k`, incarnation `i` uses source port `PORT_BASE + k * INC_SPAN + i`.
const PORT_BASE: u16 = 16384;
const INC_SPAN: u16 = 2048;
const LOCAL_V4: [u8; 4] = [10, 0, 0, 1];
const LOCAL_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const EP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAX_OPS: usize = 4096;
const MAX_TRACKED: usize = 64;
const MAX_CONNECTIONS: usize = 48;

#[derive(Debug, Clone, Arbitrary)]
pub struct Scenario {
    pub setup: Setup,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Setup {
    /// Number of peers: `peers % 16 + 1`.
    pub peers: u8,
    /// Peer `k` is IPv6 when bit `k` is set.
    pub v6_mask: u16,
    pub rcvbuf_kib: u16,
    pub ooo_ranges: u8,
    /// 0: no out-of-order memory bound.
    pub ooo_mem_kib: u16,
    /// Frame truesize `2048 << (truesize % 3)`.
    pub truesize: u8,
    pub syn_backlog: u8,
    /// Bits turn off: 0 SACK, 1 timestamps, 2 window scaling, 3 batch ACKs, 4 fast path,
    /// 5 SYN cookies, 6 D-SACK, 7 SACK compression; bit 8 sets MTU 1280; bit 9 gives the
    /// endpoint a small frame pool (pool-wide memory pressure: pruning, the reserve); bit 10
    /// caps connections at 4 with idle reclaim after 1 s; bit 11 makes the application wait
    /// with a buffer (`Endpoint::on_frame_into`: in-order data straight to it, three offers in
    /// four taken).
    pub switches: u16,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Iss {
    /// `2^32 - 1 - x`: the sequence space wraps within the first 64 KiB.
    NearWrap(u16),
    Raw(u32),
}

/// Where a segment starts.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum At {
    /// At the highest offset sent so far (new data).
    Next,
    /// `x` bytes past what the endpoint acknowledged (retransmission, overlap, out of order).
    FromAck(u16),
    /// `x` bytes past the highest offset sent (a hole).
    Ahead(u16),
    /// Any sequence number.
    Raw(u32),
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    /// A new incarnation of peer `peer` (new source port) sends SYN; the handshake completes
    /// when the SYN-ACK arrives. `opts` bits: 0 MSS, 1 window scale, 2 SACK, 3 timestamps.
    Connect {
        peer: u8,
        iss: Iss,
        opts: u8,
    },
    /// One data segment. `flags` bits: 0 PSH, 1 FIN, 2 stale timestamp, 3 omit timestamp,
    /// 7 end the batch (flush) afterwards. `corrupt`: flip bits of one checksummed byte.
    Data {
        peer: u8,
        at: At,
        len: u16,
        flags: u8,
        corrupt: Option<(u16, u8)>,
    },
    /// Up to 32 full segments of new data, then a flush.
    Burst {
        peer: u8,
        segs: u8,
    },
    Rst {
        peer: u8,
        at: At,
    },
    Advance {
        ms: u16,
        coarse: bool,
    },
    Accept,
    Read {
        conn: u8,
        max: u16,
        count: u8,
    },
    /// Releases `count` outstanding pieces starting at index `pick` (out of order).
    Release {
        pick: u8,
        count: u8,
        flush: bool,
    },
    /// Reads and releases everything a connection has.
    Drain {
        conn: u8,
    },
    Flush,
    SetRcvbuf {
        conn: u8,
        kib: u16,
    },
    Close {
        conn: u8,
    },
    Abort {
        conn: u8,
    },
}

/// The payload byte at sequence number `seq` of peer `peer`'s incarnation `inc`.
pub fn byte_at(peer: usize, inc: u16, seq: u32) -> u8 {
    let mut z =
        ((peer as u64) << 48 | (inc as u64) << 32 | seq as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PState {
    Idle,
    SynSent,
    Est,
}

/// Disjoint half-open ranges of stream offsets.
#[derive(Debug, Default)]
struct Ranges(BTreeMap<i64, i64>);

impl Ranges {
    fn insert(&mut self, mut s: i64, mut e: i64) {
        if s >= e {
            return;
        }
        let over: Vec<(i64, i64)> = self
            .0
            .range(..=e)
            .rev()
            .take_while(|(_, &re)| re >= s)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in over {
            self.0.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        self.0.insert(s, e);
    }
    fn covers(&self, s: i64, e: i64) -> bool {
        s >= e
            || self
                .0
                .range(..=s)
                .next_back()
                .is_some_and(|(_, &re)| re >= e)
    }
    /// The end of the range that starts at or before 0 and covers 0.
    fn prefix_end(&self) -> i64 {
        match self.0.range(..=0).next_back() {
            Some((_, &e)) if e >= 0 => e,
            _ => 0,
        }
    }
}

struct Peer {
    v6: bool,
    ip: IpPair,
    listen: u16,
    inc: u16,
    state: PState,
    iss: u32,
    ep_iss: Option<u32>,
    ep_fin: bool,
    mss: u16,
    wscale: u8,
    ts: bool,
    ts_ecr: u32,
    /// Highest stream offset the endpoint acknowledged (relative to `iss + 1`).
    acked: i64,
    wnd: u32,
    hi: i64,
    sent: Ranges,
    fins: Vec<i64>,
    /// Bumped when the endpoint makes a new connection for this incarnation (SYN cookie).
    epoch: u32,
    /// A connection of this incarnation started at another sequence number than `iss + 1`.
    tainted: bool,
}

impl Peer {
    fn port(&self, k: usize) -> u16 {
        PORT_BASE + k as u16 * INC_SPAN + self.inc
    }
    fn seq_at(&self, off: i64) -> u32 {
        self.iss.wrapping_add(1).wrapping_add(off as u32)
    }
    fn off_of(&self, seq: u32) -> i64 {
        self.acked + seq.wrapping_sub(self.seq_at(self.acked)) as i32 as i64
    }
    fn ack_val(&self) -> u32 {
        self.ep_iss
            .map_or(0, |i| i.wrapping_add(1 + self.ep_fin as u32))
    }
    /// May the endpoint acknowledge up to `a`?
    fn may_ack(&self, a: i64) -> bool {
        let p = self.sent.prefix_end();
        a <= p || self.fins.iter().any(|&f| f <= p && a == f + 1)
    }
    fn may_sack(&self, s: i64, e: i64) -> bool {
        self.sent.covers(s, e) || (self.fins.contains(&(e - 1)) && self.sent.covers(s, e - 1))
    }
}

struct FrameRec {
    bytes: Vec<u8>,
    peer: usize,
    inc: u16,
    seq: u32,
    payload_off: usize,
    payload_len: usize,
}

struct Track {
    id: ConnId,
    peer: usize,
    inc: u16,
    epoch: u32,
    base: Option<u32>,
    next_read: u64,
    closed: bool,
}

/// Counters of one run, for reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub ops: u64,
    pub frames: u64,
    pub corrupted: u64,
    pub bytes_delivered: u64,
    pub max_offset: u64,
    pub wrapped: bool,
    pub v6_bytes: u64,
    /// Bytes delivered straight to the waiting application (switch bit 11).
    pub direct_bytes: u64,
}

pub struct Interp {
    ep: Endpoint,
    now: Instant,
    truesize: u32,
    peers: Vec<Peer>,
    incs: HashMap<(usize, u16), u32>,
    frames: HashMap<u64, FrameRec>,
    next_frame: u64,
    tracks: Vec<Track>,
    pieces: Vec<RxSegment>,
    reactions: Vec<usize>,
    /// Switch bit 11: frames go through `on_frame_into` with this reader.
    direct: Option<Taker>,
    pub stats: RunStats,
}

/// The waiting application of switch bit 11: takes what it is offered (three offers in four)
/// and keeps what it was handed for the oracle.
#[derive(Default)]
struct Taker {
    take: bool,
    buf: Vec<u8>,
    got: Option<(ConnId, Vec<u8>)>,
}

impl DirectReader for Taker {
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
        self.buf.resize(payload.len(), 0);
        Some(copy_maybe_sum(&mut self.buf, payload, verify))
    }
    fn filled(&mut self, conn: ConnId, len: usize, _psh: bool) {
        assert!(self.got.is_none(), "one delivery per frame");
        self.got = Some((conn, self.buf[..len].to_vec()));
    }
}

fn cfg_of(s: &Setup) -> Config {
    let sw = |b: u16| s.switches & (1 << b) == 0;
    Config {
        mtu: if s.switches & (1 << 8) != 0 {
            1280
        } else {
            1500
        },
        rcvbuf: (u32::from(s.rcvbuf_kib) % 2048 + 8) * 1024,
        frame_truesize: 2048 << (s.truesize % 3),
        syn_backlog: usize::from(s.syn_backlog % 8) + 1,
        accept_backlog: 8,
        max_connections: if s.switches & (1 << 10) != 0 {
            4
        } else {
            MAX_CONNECTIONS
        },
        reclaim_idle_after: if s.switches & (1 << 10) != 0 {
            Duration::from_secs(1)
        } else {
            Config::default().reclaim_idle_after
        },
        frame_pool: if s.switches & (1 << 9) != 0 {
            16 + u32::from(s.rcvbuf_kib % 240)
        } else {
            0
        },
        // Frames from the wire are verified (the oracle checks corrupted ones are dropped).
        checksum: ChecksumMode::Verify,
        sack: sw(0),
        timestamps: sw(1),
        window_scaling: sw(2),
        batch_acks: sw(3),
        fast_path: sw(4),
        syn_cookies: sw(5),
        dsack: sw(6),
        comp_sack_nr: if sw(7) { 44 } else { 0 },
        idle_timeout: Duration::from_secs(300),
        max_ooo_ranges: usize::from(s.ooo_ranges % 64) + 1,
        max_ooo_mem: match s.ooo_mem_kib {
            0 => u32::MAX,
            k => (u32::from(k) % 1024 + 4) * 1024,
        },
        ..Config::default()
    }
}

impl Interp {
    pub fn new(s: &Setup) -> Self {
        let cfg = cfg_of(s);
        let truesize = cfg.frame_truesize;
        let mut ep = Endpoint::new(cfg);
        for p in PORTS {
            ep.listen(p).unwrap();
        }
        let n = usize::from(s.peers) % MAX_PEERS + 1;
        let peers = (0..n)
            .map(|k| {
                let v6 = s.v6_mask & (1 << k) != 0;
                // Two peers per address (different ports).
                let host = (k / 2) as u8 + 2;
                let ip = if v6 {
                    let mut src = LOCAL_V6;
                    src[13] = 0x77;
                    src[15] = host;
                    IpPair::V6 { src, dst: LOCAL_V6 }
                } else {
                    IpPair::V4 {
                        src: [10, 0, 1, host],
                        dst: LOCAL_V4,
                    }
                };
                Peer {
                    v6,
                    ip,
                    listen: PORTS[k % 2],
                    inc: 0,
                    state: PState::Idle,
                    iss: 0,
                    ep_iss: None,
                    ep_fin: false,
                    mss: 536,
                    wscale: 0,
                    ts: false,
                    ts_ecr: 0,
                    acked: 0,
                    wnd: 0,
                    hi: 0,
                    sent: Ranges::default(),
                    fins: Vec::new(),
                    epoch: 0,
                    tainted: false,
                }
            })
            .collect();
        Interp {
            ep,
            now: Instant::from_millis(1000),
            truesize,
            peers,
            incs: HashMap::new(),
            frames: HashMap::new(),
            next_frame: 1,
            tracks: Vec::new(),
            pieces: Vec::new(),
            reactions: Vec::new(),
            direct: (s.switches & (1 << 11) != 0).then(Taker::default),
            stats: RunStats::default(),
        }
    }

    fn addrs(&self, k: usize) -> ReplyAddrs {
        let p = &self.peers[k];
        ReplyAddrs {
            local_mac: [2, 0, 0, 0, 1, k as u8],
            remote_mac: EP_MAC,
            vlan: None,
            ip: p.ip,
            local_port: p.port(k),
            remote_port: p.listen,
        }
    }

    fn tsval(&self, stale: bool) -> u32 {
        let t = (self.now.as_nanos() / 1_000_000) as u32;
        if stale {
            t.wrapping_sub(0x4000_0000)
        } else {
            t
        }
    }

    /// Builds and delivers one segment from peer `k`; returns the disposition.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        k: usize,
        seq: u32,
        flags: u8,
        len: usize,
        ts: Option<bool>,
        corrupt: Option<(u16, u8)>,
        syn_opts: Option<OptionsOut>,
    ) -> FrameDisposition {
        let p = &self.peers[k];
        let inc = p.inc;
        let payload: Vec<u8> = (0..len)
            .map(|i| byte_at(k, inc, seq.wrapping_add(i as u32)))
            .collect();
        let options = syn_opts.unwrap_or_else(|| OptionsOut {
            timestamps: ts.map(|stale| (self.tsval(stale), p.ts_ecr)),
            ..Default::default()
        });
        let spec = SegmentSpec {
            seq,
            ack: if flags & TcpFlags::ACK != 0 {
                p.ack_val()
            } else {
                0
            },
            flags,
            window: 65535,
            options,
        };
        let addrs = self.addrs(k);
        let mut buf = vec![0u8; 160 + len];
        let n = build_segment(&addrs, &spec, &payload, &mut buf).expect("frame fits");
        buf.truncate(n);
        let tcp_off = if p.v6 { 54 } else { 34 };
        if let Some((pos, x)) = corrupt {
            // Every byte from the IPv4 header (or the IPv6 TCP header) on is covered by a
            // checksum; flipping bits of one byte is always detected.
            let from = if p.v6 { tcp_off } else { 14 };
            let i = from + usize::from(pos) % (n - from);
            buf[i] ^= x.max(1);
        }
        if trace() {
            let p = &self.peers[k];
            eprintln!(
                "peer {k} sends off {} len {len} flags {flags:#04x}{} (hi {}, acked {}, prefix {})",
                p.off_of(seq),
                if corrupt.is_some() { " CORRUPT" } else { "" },
                p.hi,
                p.acked,
                p.sent.prefix_end()
            );
        }
        let before = self.ep.stats();
        let tx_before = self.ep.tx_len();
        let id = self.next_frame;
        self.next_frame += 1;
        self.stats.frames += 1;
        let d = match self.direct.as_mut() {
            Some(r) => {
                r.take = id % 4 != 0;
                self.ep.on_frame_into(self.now, id, &buf, self.truesize, r)
            }
            None => self.ep.on_frame(self.now, id, &buf, self.truesize),
        };
        let direct = self.direct.as_mut().and_then(|r| r.got.take());
        let after = self.ep.stats();
        if corrupt.is_some() {
            assert!(direct.is_none(), "a corrupted frame was delivered");
            self.stats.corrupted += 1;
            assert_eq!(d, FrameDisposition::Free, "a corrupted frame was held");
            assert_eq!(
                after.parse_errors,
                before.parse_errors + 1,
                "a corrupted frame was not a parse error"
            );
            assert_eq!(
                self.ep.tx_len(),
                tx_before,
                "a corrupted frame was answered"
            );
            return d;
        }
        assert_eq!(
            after.parse_errors, before.parse_errors,
            "a valid frame failed to parse"
        );
        if let Some((conn, bytes)) = direct {
            // Delivered straight to the application: the frame's payload, checked as a piece.
            assert_eq!(d, FrameDisposition::Free, "a delivered frame was held");
            assert_eq!(
                &bytes[..],
                &buf[n - len..n],
                "delivered bytes are the payload"
            );
            let ti = self
                .track_of(conn)
                .expect("delivered to a connection the application accepted");
            self.frames.insert(
                id,
                FrameRec {
                    bytes: buf.clone(),
                    peer: k,
                    inc,
                    seq,
                    payload_off: n - len,
                    payload_len: len,
                },
            );
            let at = self.tracks[ti].next_read;
            self.check_bytes(ti, conn, id, (n - len) as u32, len as u32, at);
            self.stats.direct_bytes += len as u64;
            self.frames.remove(&id);
        }
        if d == FrameDisposition::Held {
            self.frames.insert(
                id,
                FrameRec {
                    bytes: buf,
                    peer: k,
                    inc,
                    seq,
                    payload_off: n - len,
                    payload_len: len,
                },
            );
        }
        let p = &mut self.peers[k];
        if after.syn_cookies_ok > before.syn_cookies_ok {
            // A new connection for this incarnation, from a cookie: its ISN is `seq - 1`.
            p.epoch += 1;
            p.acked = 0;
            if seq != p.iss.wrapping_add(1) {
                p.tainted = true;
            }
        }
        if flags & (TcpFlags::SYN | TcpFlags::RST) == 0 && p.ep_iss.is_some() {
            let off = p.off_of(seq);
            p.sent.insert(off, off + len as i64);
            if flags & TcpFlags::FIN != 0 && !p.fins.contains(&(off + len as i64)) {
                p.fins.push(off + len as i64);
            }
            p.hi = p.hi.max(off + len as i64);
        }
        d
    }

    fn ts_opt(&self, k: usize, flags: u8) -> Option<bool> {
        (self.peers[k].ts && flags & 8 == 0).then_some(flags & 4 != 0)
    }

    /// A pure ACK at the acknowledged point (completes handshakes, acknowledges FINs).
    fn ack(&mut self, k: usize) {
        let p = &self.peers[k];
        if p.state != PState::Est {
            return;
        }
        let seq = p.seq_at(p.acked);
        let ts = self.ts_opt(k, 0);
        self.send(k, seq, TcpFlags::ACK, 0, ts, None, None);
    }

    /// Handles what the endpoint transmitted and the released frames.
    fn pump(&mut self) {
        for _ in 0..64 {
            while let Some(f) = self.ep.pop_tx() {
                let pkt = wire::parse(f.as_bytes(), ChecksumMode::Verify)
                    .expect("the endpoint's frames parse and verify");
                self.on_tx(&pkt);
            }
            let r = std::mem::take(&mut self.reactions);
            if r.is_empty() {
                break;
            }
            for k in r {
                self.ack(k);
            }
        }
        while let Some(ev) = self.ep.poll_event() {
            if let EndpointEvent::FrameReleased(f) = ev {
                assert!(
                    self.frames.remove(&f).is_some(),
                    "frame {f} released but not held (or released twice)"
                );
            }
        }
    }

    fn on_tx(&mut self, pkt: &wire::Packet) {
        let port = pkt.tcp.dst_port;
        assert!(port >= PORT_BASE, "a reply to a port no peer uses: {port}");
        let k = usize::from((port - PORT_BASE) / INC_SPAN);
        let inc = (port - PORT_BASE) % INC_SPAN;
        assert!(
            k < self.peers.len(),
            "a reply to a port no peer uses: {port}"
        );
        let p = &mut self.peers[k];
        assert_eq!(pkt.ip, p.ip.reversed(), "reply addresses of peer {k}");
        assert_eq!(pkt.tcp.src_port, p.listen, "reply source port of peer {k}");
        if inc != p.inc {
            return; // an earlier incarnation
        }
        let f = pkt.tcp.flags;
        if let Some((val, _)) = pkt.tcp.options.timestamps {
            p.ts_ecr = val;
        }
        if f.rst() {
            p.state = PState::Idle;
            return;
        }
        if f.syn() {
            assert!(f.ack(), "the endpoint never opens connections");
            assert_eq!(
                pkt.tcp.ack,
                p.iss.wrapping_add(1),
                "SYN-ACK acknowledges the SYN"
            );
            if p.state == PState::SynSent {
                p.ep_iss = Some(pkt.tcp.seq);
                p.state = PState::Est;
                let o = &pkt.tcp.options;
                p.mss = o.mss.unwrap_or(536).max(64);
                p.wscale = if p.wscale == 1 {
                    o.window_scale.unwrap_or(0)
                } else {
                    0
                };
                p.ts = p.ts && o.timestamps.is_some();
                p.wnd = u32::from(pkt.tcp.window);
            }
            if p.state == PState::Est {
                self.reactions.push(k);
            }
            return;
        }
        if p.state != PState::Est || !f.ack() {
            return;
        }
        let a = p.off_of(pkt.tcp.ack);
        if trace() {
            eprintln!(
                "  endpoint -> peer {k}: ack {a} flags {:#04x} win {} sack {:?}",
                pkt.tcp.flags.0,
                pkt.tcp.window,
                pkt.tcp.options.sack_blocks()
            );
        }
        if !p.tainted {
            assert!(
                a >= p.acked,
                "peer {k}: ACK went backwards ({} < {})",
                a,
                p.acked
            );
            assert!(
                p.may_ack(a),
                "peer {k}: ACK {a} covers data not sent (prefix {})",
                p.sent.prefix_end()
            );
            for &(l, r) in pkt.tcp.options.sack_blocks() {
                let (s, e) = (p.off_of(l), p.off_of(r));
                assert!(
                    p.may_sack(s, e),
                    "peer {k}: SACK [{s}, {e}) covers data not sent"
                );
            }
        }
        p.acked = p.acked.max(a);
        p.wnd = u32::from(pkt.tcp.window) << p.wscale;
        self.stats.max_offset = self.stats.max_offset.max(p.acked.max(0) as u64);
        if f.fin() {
            let fin_end = pkt.tcp.seq.wrapping_add(1);
            if p.ep_iss.is_some_and(|i| fin_end == i.wrapping_add(2)) && !p.ep_fin {
                p.ep_fin = true;
                self.reactions.push(k);
            } else if p.ep_fin {
                self.reactions.push(k); // a retransmitted FIN
            }
        }
    }

    fn track_of(&self, id: ConnId) -> Option<usize> {
        self.tracks.iter().position(|t| t.id == id)
    }

    fn accept_all(&mut self) {
        for port in PORTS {
            while let Some(id) = self.ep.accept(port) {
                let Some(info) = self.ep.info(id) else {
                    continue;
                };
                let rp = info.addrs.remote_port;
                assert!(rp >= PORT_BASE, "accepted a connection from no peer");
                let k = usize::from((rp - PORT_BASE) / INC_SPAN);
                let inc = (rp - PORT_BASE) % INC_SPAN;
                let p = &self.peers[k];
                assert_eq!(info.addrs.ip, p.ip.reversed(), "accepted addresses");
                assert_eq!(info.addrs.local_port, port);
                assert_eq!(p.listen, port);
                if self.tracks.len() >= MAX_TRACKED {
                    let _ = self.ep.abort(id);
                    continue;
                }
                let epoch = if inc == p.inc { p.epoch } else { u32::MAX };
                self.tracks.push(Track {
                    id,
                    peer: k,
                    inc,
                    epoch,
                    base: None,
                    next_read: 0,
                    closed: false,
                });
            }
        }
    }

    /// Checks a piece `read` returned against what was sent.
    fn check_piece(&mut self, ti: usize, seg: &RxSegment) {
        self.check_bytes(
            ti,
            seg.conn,
            seg.frame,
            seg.offset,
            seg.len,
            seg.stream_offset,
        );
    }

    /// Checks that `len` bytes at `offset` of held frame `frame`, delivered to `conn` at
    /// `stream_offset`, continue the stream the peer sent.
    fn check_bytes(
        &mut self,
        ti: usize,
        conn: ConnId,
        frame: u64,
        offset: u32,
        len: u32,
        stream_offset: u64,
    ) {
        let t = &self.tracks[ti];
        assert_eq!(conn, t.id);
        assert_eq!(
            stream_offset, t.next_read,
            "pieces must continue the stream without gaps or overlaps"
        );
        let rec = self
            .frames
            .get(&frame)
            .expect("a piece of a frame the endpoint does not hold");
        assert_eq!(
            (rec.peer, rec.inc),
            (t.peer, t.inc),
            "a piece of another peer's frame"
        );
        let (off, len) = (offset as usize, len as usize);
        assert!(len > 0, "empty piece");
        assert!(
            off >= rec.payload_off && off + len <= rec.payload_off + rec.payload_len,
            "piece outside the frame's payload"
        );
        let seq = rec.seq.wrapping_add((off - rec.payload_off) as u32);
        let derived = seq.wrapping_sub(stream_offset as u32);
        let p = &self.peers[t.peer];
        let base = match t.base {
            Some(b) => b,
            None if stream_offset == 0 && !(p.tainted && t.inc == p.inc) => {
                // A connection of a handshake starts right after the peer's ISN.
                let iss = self.incs[&(t.peer, t.inc)];
                iss.wrapping_add(1)
            }
            None => derived,
        };
        assert_eq!(derived, base, "piece at the wrong stream position");
        for (i, &b) in rec.bytes[off..off + len].iter().enumerate() {
            let s = base.wrapping_add(stream_offset as u32 + i as u32);
            assert_eq!(
                b,
                byte_at(t.peer, t.inc, s),
                "delivered byte differs from sent"
            );
        }
        if u64::from(base) + stream_offset + len as u64 > 1 << 32 {
            self.stats.wrapped = true;
        }
        self.stats.bytes_delivered += len as u64;
        if p.v6 {
            self.stats.v6_bytes += len as u64;
        }
        let t = &mut self.tracks[ti];
        t.base = Some(base);
        t.next_read += len as u64;
    }

    fn read(&mut self, ti: usize, max: usize) -> Option<RxSegment> {
        let id = self.tracks[ti].id;
        let seg = self.ep.read(id, max).ok()??;
        self.check_piece(ti, &seg);
        self.pieces.push(seg);
        Some(seg)
    }

    fn release(&mut self, i: usize) {
        let seg = self.pieces.remove(i);
        self.ep
            .release(&seg)
            .expect("a piece stays releasable until released");
    }

    fn drain(&mut self, ti: usize) {
        while self.read(ti, usize::MAX).is_some() {
            let i = self.pieces.len() - 1;
            self.release(i);
        }
        self.ep.flush(self.now);
    }

    pub fn step(&mut self, op: &Op) {
        self.stats.ops += 1;
        let np = self.peers.len();
        match *op {
            Op::Connect { peer, iss, opts } => {
                let k = usize::from(peer) % np;
                let tsval = self.tsval(false);
                let p = &mut self.peers[k];
                if p.inc + 1 >= INC_SPAN {
                    return;
                }
                if p.state != PState::Idle || p.ep_iss.is_some() {
                    p.inc += 1;
                }
                p.iss = match iss {
                    Iss::NearWrap(x) => u32::MAX - u32::from(x),
                    Iss::Raw(v) => v,
                };
                self.incs.insert((k, p.inc), p.iss);
                p.state = PState::SynSent;
                p.ep_iss = None;
                p.ep_fin = false;
                p.acked = 0;
                p.hi = 0;
                p.sent = Ranges::default();
                p.fins.clear();
                p.epoch = 0;
                p.tainted = false;
                p.wscale = u8::from(opts & 2 != 0);
                p.ts = opts & 8 != 0;
                let o = OptionsOut {
                    mss: (opts & 1 != 0).then_some(if p.v6 { 1440 } else { 1460 }),
                    window_scale: (opts & 2 != 0).then_some(opts >> 4),
                    sack_permitted: opts & 4 != 0,
                    timestamps: (opts & 8 != 0).then_some((tsval, 0)),
                    ..Default::default()
                };
                let seq = p.iss;
                self.send(k, seq, TcpFlags::SYN, 0, None, None, Some(o));
            }
            Op::Data {
                peer,
                at,
                len,
                flags,
                corrupt,
            } => {
                let k = usize::from(peer) % np;
                let p = &self.peers[k];
                if p.state != PState::Est {
                    return;
                }
                let span = i64::from(p.wnd) + 2 * i64::from(p.mss) + 1;
                let seq = match at {
                    At::Next => p.seq_at(p.hi),
                    At::FromAck(x) => p.seq_at(p.acked + i64::from(x) % span),
                    At::Ahead(x) => p.seq_at(p.hi + i64::from(x) % span),
                    At::Raw(s) => s,
                };
                let len = usize::from(len) % (usize::from(p.mss) + 1);
                let mut fl = TcpFlags::ACK;
                if flags & 1 != 0 {
                    fl |= TcpFlags::PSH;
                }
                if flags & 2 != 0 {
                    fl |= TcpFlags::FIN;
                }
                let ts = self.ts_opt(k, flags);
                self.send(k, seq, fl, len, ts, corrupt, None);
                if flags & 0x80 != 0 {
                    self.ep.flush(self.now);
                }
            }
            Op::Burst { peer, segs } => {
                let k = usize::from(peer) % np;
                for _ in 0..segs % 32 + 1 {
                    let p = &self.peers[k];
                    if p.state != PState::Est {
                        break;
                    }
                    let (seq, len) = (p.seq_at(p.hi), usize::from(p.mss));
                    let ts = self.ts_opt(k, 0);
                    self.send(k, seq, TcpFlags::ACK, len, ts, None, None);
                }
                self.ep.flush(self.now);
            }
            Op::Rst { peer, at } => {
                let k = usize::from(peer) % np;
                let p = &self.peers[k];
                if p.state != PState::Est {
                    return;
                }
                let seq = match at {
                    At::Next => p.seq_at(p.hi),
                    At::FromAck(x) => p.seq_at(p.acked + i64::from(x)),
                    At::Ahead(x) => p.seq_at(p.hi + i64::from(x)),
                    At::Raw(s) => s,
                };
                self.send(k, seq, TcpFlags::RST, 0, None, None, None);
            }
            Op::Advance { ms, coarse } => {
                let d = if coarse {
                    Duration::from_millis(u64::from(ms % 1024) * 1000)
                } else {
                    Duration::from_millis(u64::from(ms % 4096))
                };
                self.now = self.now + d;
                self.ep.handle_timeout(self.now);
            }
            Op::Accept => self.accept_all(),
            Op::Read { conn, max, count } => {
                if self.tracks.is_empty() {
                    return;
                }
                let ti = usize::from(conn) % self.tracks.len();
                for _ in 0..count % 8 + 1 {
                    if self.read(ti, usize::from(max) + 1).is_none() {
                        break;
                    }
                }
            }
            Op::Release { pick, count, flush } => {
                for _ in 0..count % 8 + 1 {
                    if self.pieces.is_empty() {
                        break;
                    }
                    let i = usize::from(pick) % self.pieces.len();
                    self.release(i);
                }
                if flush {
                    self.ep.flush(self.now);
                }
            }
            Op::Drain { conn } => {
                if !self.tracks.is_empty() {
                    let ti = usize::from(conn) % self.tracks.len();
                    self.drain(ti);
                }
            }
            Op::Flush => self.ep.flush(self.now),
            Op::SetRcvbuf { conn, kib } => {
                if let Some(t) = self
                    .tracks
                    .get(usize::from(conn) % self.tracks.len().max(1))
                {
                    let bytes = (u32::from(kib) % 4096 + 1) * 1024;
                    let _ = self.ep.set_rcvbuf(self.now, t.id, bytes);
                }
            }
            Op::Close { conn } => {
                let n = self.tracks.len().max(1);
                if let Some(t) = self.tracks.get_mut(usize::from(conn) % n) {
                    t.closed = true;
                    let _ = self.ep.close(self.now, t.id);
                }
            }
            Op::Abort { conn } => {
                let n = self.tracks.len().max(1);
                if let Some(t) = self.tracks.get_mut(usize::from(conn) % n) {
                    t.closed = true;
                    let _ = self.ep.abort(t.id);
                }
            }
        }
        self.pump();
        self.ep.check_invariants();
        assert!(
            self.ep.connection_count() <= MAX_CONNECTIONS,
            "more connections than max_connections"
        );
    }

    /// Wind-down: everything acknowledged is still readable; after closing everything and
    /// letting timers run, nothing is left.
    pub fn finish(&mut self) {
        while !self.pieces.is_empty() {
            self.release(0);
        }
        self.ep.flush(self.now);
        self.pump();
        self.accept_all();
        for ti in 0..self.tracks.len() {
            let t = &self.tracks[ti];
            let Some(info) = self.ep.info(t.id) else {
                continue;
            };
            if t.closed || info.error.is_some() {
                continue;
            }
            self.drain(ti);
            self.pump();
            let t = &self.tracks[ti];
            let p = &self.peers[t.peer];
            if t.inc == p.inc && t.epoch == p.epoch && !p.tainted && p.state == PState::Est {
                let eof = self.ep.info(t.id).is_some_and(|i| i.eof);
                assert!(
                    t.next_read as i64 + i64::from(eof) >= p.acked,
                    "peer {}: acknowledged {} but only {} (eof {eof}) delivered",
                    t.peer,
                    p.acked,
                    t.next_read
                );
            }
        }
        for t in &mut self.tracks {
            t.closed = true;
            let _ = self.ep.close(self.now, t.id);
        }
        self.pump();
        for _ in 0..200 {
            if self.ep.connection_count() == 0 {
                break;
            }
            self.now = self.now + Duration::from_secs(20);
            self.ep.handle_timeout(self.now);
            self.pump();
            self.accept_all();
            for t in &mut self.tracks {
                if !t.closed {
                    t.closed = true;
                    let _ = self.ep.close(self.now, t.id);
                }
            }
            self.ep.check_invariants();
        }
        self.pump();
        assert_eq!(
            self.ep.connection_count(),
            0,
            "connections left after closing and timeouts"
        );
        assert!(
            self.frames.is_empty(),
            "{} frames never released",
            self.frames.len()
        );
    }
}

/// Decodes the fuzzer's bytes: the setup, then ops until the bytes run out (every op takes at
/// least one byte, so each input byte can matter; `Vec`'s own encoding stops at random).
pub fn decode(bytes: &[u8]) -> Scenario {
    let mut u = Unstructured::new(bytes);
    let setup = Setup::arbitrary(&mut u).unwrap_or(Setup {
        peers: 0,
        v6_mask: 0,
        rcvbuf_kib: 0,
        ooo_ranges: 0,
        ooo_mem_kib: 0,
        truesize: 0,
        syn_backlog: 0,
        switches: 0,
    });
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        let left = u.len();
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
        if u.len() == left {
            break;
        }
    }
    Scenario { setup, ops }
}

/// Runs a scenario: every op, then the wind-down. Returns the run's counters.
pub fn run(s: &Scenario) -> RunStats {
    let mut it = Interp::new(&s.setup);
    for op in s.ops.iter().take(MAX_OPS) {
        it.step(op);
    }
    it.finish();
    it.stats
}
