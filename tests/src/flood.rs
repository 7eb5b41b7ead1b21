//! The hostile peers of `netrx-flood` as a sans-IO state machine: spoofed TCP clients that
//! speak to a receiver through raw Ethernet frames. The binary (`src/bin/netrx-flood.rs`) only
//! moves frames between this and an AF_PACKET socket; the unit tests below run it against the
//! netrx TCP endpoint itself, without privileges.
//!
//! - [`SynFlood`]: SYNs from random spoofed addresses and ports, never completed.
//! - [`Peers`]: connections that complete the handshake in userspace (the SYN-ACK is read from
//!   the raw socket, the third ACK built here), confirm it with a keepalive probe, then either
//!   sit idle or send one-byte segments behind a one-byte hole that is never filled (an
//!   out-of-order flood: every segment holds a receive frame).
//!
//! Frames are built with [`netrx::wire::build_segment`] and parsed with [`netrx::wire::parse`].
//! The spoofed source addresses are not owned by the sender's host: the receiver answers to the
//! source MAC (no ARP), and the sender's kernel drops those answers (not forwarding, not local)
//! without a RST, so only this state machine reacts to them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use netrx::wire::tcp::OptionsOut;
use netrx::wire::{self, build_segment, ChecksumMode, IpPair, ReplyAddrs, SegmentSpec, TcpFlags};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Where the flood goes and where it pretends to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The sender interface's MAC (frames leave with it; the receiver answers to it).
    pub src_mac: [u8; 6],
    /// The receiver's MAC.
    pub dst_mac: [u8; 6],
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    /// Spoofed source addresses, inclusive range.
    pub spoof_lo: Ipv4Addr,
    pub spoof_hi: Ipv4Addr,
}

impl Target {
    fn spoof_count(&self) -> u32 {
        u32::from(self.spoof_hi)
            .saturating_sub(u32::from(self.spoof_lo))
            .saturating_add(1)
    }

    fn is_spoofed(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.spoof_lo)..=u32::from(self.spoof_hi)).contains(&u32::from(ip))
    }

    fn addrs(&self, src: Ipv4Addr, sport: u16) -> ReplyAddrs {
        ReplyAddrs {
            local_mac: self.src_mac,
            remote_mac: self.dst_mac,
            vlan: None,
            ip: IpPair::V4 {
                src: src.octets(),
                dst: self.dst_ip.octets(),
            },
            local_port: sport,
            remote_port: self.dst_port,
        }
    }

    fn frame(&self, src: Ipv4Addr, sport: u16, spec: &SegmentSpec, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 14 + 20 + 60 + payload.len()];
        let n = build_segment(&self.addrs(src, sport), spec, payload, &mut buf)
            .expect("the buffer fits the headers and the payload");
        buf.truncate(n);
        buf
    }

    /// A SYN as Linux sends it (MSS 1460, SACK permitted, window scale 7; no timestamps, so
    /// the later segments need none).
    fn syn(&self, src: Ipv4Addr, sport: u16, isn: u32) -> Vec<u8> {
        let spec = SegmentSpec {
            seq: isn,
            ack: 0,
            flags: TcpFlags::SYN,
            window: 64240,
            options: OptionsOut {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                ..OptionsOut::default()
            },
        };
        self.frame(src, sport, &spec, &[])
    }

    /// A segment from the receiver to one of our spoofed peers: (peer address, peer port,
    /// flags, seq, ack). Anything else (other hosts, other ports, garbage) is `None`.
    fn reply(&self, frame: &[u8]) -> Option<(Ipv4Addr, u16, TcpFlags, u32, u32)> {
        let p = wire::parse(frame, ChecksumMode::Trust).ok()?;
        let IpPair::V4 { src, dst } = p.ip else {
            return None;
        };
        let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        if src != self.dst_ip || p.tcp.src_port != self.dst_port || !self.is_spoofed(dst) {
            return None;
        }
        Some((dst, p.tcp.dst_port, p.tcp.flags, p.tcp.seq, p.tcp.ack))
    }
}

/// Counters of a flood, printed by the binary as `key=value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FloodStats {
    /// Frames built (SYNs, ACKs, probes, data).
    pub frames_out: u64,
    pub syns: u64,
    pub syn_retries: u64,
    /// SYN-ACKs received for our peers.
    pub synacks_in: u64,
    /// Plain ACKs received (probe answers, duplicate ACKs for out-of-order data).
    pub acks_in: u64,
    pub rsts_in: u64,
    /// Handshakes started again on a new 4-tuple after a RST.
    pub restarts: u64,
    /// Established peers the receiver reset later.
    pub reset_established: u64,
    /// Handshakes given up after too many retries.
    pub failed: u64,
    /// One-byte out-of-order segments sent.
    pub data_segments: u64,
}

impl FloodStats {
    /// `key=value` pairs, space separated.
    pub fn line(&self) -> String {
        format!(
            "frames_out={} syns={} syn_retries={} synacks_in={} acks_in={} rsts_in={} \
             restarts={} reset_established={} failed={} data_segments={}",
            self.frames_out,
            self.syns,
            self.syn_retries,
            self.synacks_in,
            self.acks_in,
            self.rsts_in,
            self.restarts,
            self.reset_established,
            self.failed,
            self.data_segments
        )
    }
}

/// SYNs from random spoofed sources; answers are only counted.
pub struct SynFlood {
    t: Target,
    rng: ChaCha8Rng,
    pub stats: FloodStats,
}

impl SynFlood {
    pub fn new(t: Target, seed: u64) -> Self {
        SynFlood {
            t,
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: FloodStats::default(),
        }
    }

    /// The next SYN: random spoofed address, port 1024..=65535, random ISN.
    pub fn next_syn(&mut self) -> Vec<u8> {
        let ip = Ipv4Addr::from(
            u32::from(self.t.spoof_lo) + self.rng.gen_range(0..self.t.spoof_count()),
        );
        let port = self.rng.gen_range(1024..=65535u16);
        let isn = self.rng.gen();
        self.stats.syns += 1;
        self.stats.frames_out += 1;
        self.t.syn(ip, port, isn)
    }

    /// Counts a received frame (SYN-ACKs, RSTs to our spoofed sources).
    pub fn on_frame(&mut self, frame: &[u8]) {
        if let Some((_, _, f, _, _)) = self.t.reply(frame) {
            if f.rst() {
                self.stats.rsts_in += 1;
            } else if f.syn() && f.ack() {
                self.stats.synacks_in += 1;
            } else if f.ack() {
                self.stats.acks_in += 1;
            }
        }
    }
}

/// How [`Peers`] behaves.
#[derive(Debug, Clone, Copy)]
pub struct PeersConfig {
    /// Connections to establish.
    pub conns: usize,
    /// One-byte out-of-order segments per connection once established (0: idle).
    pub segments: u32,
    /// Handshakes in flight at once (kept below the receiver's SYN and accept backlogs so
    /// every peer gets a real connection rather than a SYN cookie lost to a full accept queue).
    pub max_inflight: usize,
    /// Retransmission timeout of the SYN and of the ACK + probe.
    pub rto: Duration,
    /// Retransmissions before a handshake is given up.
    pub max_retries: u32,
    pub seed: u64,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            conns: 8,
            segments: 0,
            max_inflight: 64,
            rto: Duration::from_millis(500),
            max_retries: 10,
            seed: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    SynSent {
        at: Duration,
        tries: u32,
    },
    /// Third ACK and keepalive probe sent; waiting for the probe's duplicate ACK.
    Probing {
        at: Duration,
        tries: u32,
    },
    Established,
    Dead,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    ip: Ipv4Addr,
    port: u16,
    isn: u32,
    irs: u32,
    st: St,
    sent: u32,
}

/// Spoofed peers that complete handshakes in userspace, then idle or flood out-of-order data.
pub struct Peers {
    t: Target,
    cfg: PeersConfig,
    rng: ChaCha8Rng,
    peers: Vec<Peer>,
    by_tuple: HashMap<(Ipv4Addr, u16), usize>,
    /// Indices of peers in SynSent or Probing.
    inflight: Vec<usize>,
    next_tuple: u64,
    port_base: u16,
    established: usize,
    /// Round-robin cursor over peers for data.
    cursor: usize,
    data_done: usize,
    pub stats: FloodStats,
}

impl Peers {
    pub fn new(t: Target, cfg: PeersConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let port_base = rng.gen_range(1024..20000u16);
        Peers {
            t,
            cfg,
            rng,
            peers: Vec::with_capacity(cfg.conns),
            by_tuple: HashMap::with_capacity(cfg.conns),
            inflight: Vec::new(),
            next_tuple: 0,
            port_base,
            established: 0,
            cursor: 0,
            data_done: 0,
            stats: FloodStats::default(),
        }
    }

    /// Connections established (probe answered) and not reset since.
    pub fn established(&self) -> usize {
        self.established
    }

    /// Every connection is established (or given up) and has sent all its segments.
    pub fn complete(&self) -> bool {
        self.peers.len() == self.cfg.conns
            && self.inflight.is_empty()
            && self.data_done == self.peers.len()
    }

    /// A fresh 4-tuple (address cycles fastest, then the port), never used before.
    fn tuple(&mut self) -> (Ipv4Addr, u16) {
        let n = self.t.spoof_count().max(1) as u64;
        let k = self.next_tuple;
        self.next_tuple += 1;
        let ip = Ipv4Addr::from(u32::from(self.t.spoof_lo) + (k % n) as u32);
        let port = (self.port_base as u64 + k / n) % 64512 + 1024;
        (ip, port as u16)
    }

    fn send_syn(&mut self, i: usize, out: &mut Vec<Vec<u8>>) {
        let p = self.peers[i];
        out.push(self.t.syn(p.ip, p.port, p.isn));
        self.stats.syns += 1;
        self.stats.frames_out += 1;
    }

    /// The third ACK and a keepalive probe (`seq = ISN`, before `rcv_nxt`): an established
    /// connection answers the probe with a duplicate ACK, a receiver without the connection with
    /// a RST.
    fn send_ack_probe(&mut self, i: usize, out: &mut Vec<Vec<u8>>) {
        let p = self.peers[i];
        for seq in [p.isn.wrapping_add(1), p.isn] {
            let spec = SegmentSpec {
                seq,
                ack: p.irs.wrapping_add(1),
                flags: TcpFlags::ACK,
                window: 502,
                options: OptionsOut::default(),
            };
            out.push(self.t.frame(p.ip, p.port, &spec, &[]));
            self.stats.frames_out += 1;
        }
    }

    fn start(&mut self, now: Duration, out: &mut Vec<Vec<u8>>) {
        let (ip, port) = self.tuple();
        let isn = self.rng.gen();
        let i = self.peers.len();
        self.peers.push(Peer {
            ip,
            port,
            isn,
            irs: 0,
            st: St::SynSent { at: now, tries: 0 },
            sent: 0,
        });
        self.by_tuple.insert((ip, port), i);
        self.inflight.push(i);
        self.send_syn(i, out);
    }

    /// A peer's handshake starts over on a new 4-tuple.
    fn restart(&mut self, i: usize, now: Duration, out: &mut Vec<Vec<u8>>) {
        let old = self.peers[i];
        self.by_tuple.remove(&(old.ip, old.port));
        let (ip, port) = self.tuple();
        let isn = self.rng.gen();
        self.peers[i] = Peer {
            ip,
            port,
            isn,
            irs: 0,
            st: St::SynSent { at: now, tries: 0 },
            sent: 0,
        };
        self.by_tuple.insert((ip, port), i);
        self.stats.restarts += 1;
        self.send_syn(i, out);
    }

    /// Handles a received frame; answers go to `out`.
    pub fn on_frame(&mut self, now: Duration, frame: &[u8], out: &mut Vec<Vec<u8>>) {
        let Some((ip, port, f, seq, ack)) = self.t.reply(frame) else {
            return;
        };
        let Some(&i) = self.by_tuple.get(&(ip, port)) else {
            return;
        };
        let p = self.peers[i];
        if f.rst() {
            self.stats.rsts_in += 1;
            match p.st {
                St::SynSent { .. } | St::Probing { .. } => self.restart(i, now, out),
                St::Established => {
                    self.stats.reset_established += 1;
                    self.established -= 1;
                    self.peers[i].st = St::Dead;
                    if p.sent < self.cfg.segments {
                        self.data_done += 1;
                    }
                }
                St::Dead => {}
            }
            return;
        }
        if ack != p.isn.wrapping_add(1) || !f.ack() {
            return;
        }
        if f.syn() {
            self.stats.synacks_in += 1;
            match p.st {
                St::SynSent { .. } | St::Probing { .. } => {
                    self.peers[i].irs = seq;
                    self.peers[i].st = St::Probing { at: now, tries: 0 };
                    self.send_ack_probe(i, out);
                }
                // A retransmitted SYN-ACK: our third ACK was lost.
                St::Established if seq == p.irs => self.send_ack_probe(i, out),
                _ => {}
            }
            return;
        }
        self.stats.acks_in += 1;
        if let St::Probing { .. } = p.st {
            self.peers[i].st = St::Established;
            self.established += 1;
            self.inflight.retain(|&j| j != i);
            if self.cfg.segments == 0 {
                self.data_done += 1;
            }
        }
    }

    /// Starts handshakes (up to `max_inflight` at once), retransmits what timed out, and sends
    /// at most `budget` frames of out-of-order data. Returns how many frames it added to `out`.
    pub fn poll(&mut self, now: Duration, budget: usize, out: &mut Vec<Vec<u8>>) -> usize {
        let before = out.len();
        let mut k = 0;
        while k < self.inflight.len() {
            let i = self.inflight[k];
            let (at, tries) = match self.peers[i].st {
                St::SynSent { at, tries } | St::Probing { at, tries } => (at, tries),
                _ => {
                    self.inflight.swap_remove(k);
                    continue;
                }
            };
            if now < at + self.cfg.rto {
                k += 1;
                continue;
            }
            if tries >= self.cfg.max_retries {
                self.peers[i].st = St::Dead;
                self.stats.failed += 1;
                self.data_done += 1;
                self.inflight.swap_remove(k);
                continue;
            }
            match self.peers[i].st {
                St::SynSent { .. } => {
                    self.peers[i].st = St::SynSent {
                        at: now,
                        tries: tries + 1,
                    };
                    self.stats.syn_retries += 1;
                    self.send_syn(i, out);
                }
                _ => {
                    self.peers[i].st = St::Probing {
                        at: now,
                        tries: tries + 1,
                    };
                    self.send_ack_probe(i, out);
                }
            }
            k += 1;
        }
        while self.peers.len() < self.cfg.conns && self.inflight.len() < self.cfg.max_inflight {
            self.start(now, out);
        }
        // Data: one segment per established peer per turn, round robin.
        let mut sent = 0;
        let mut idle_turns = 0;
        while sent < budget && self.cfg.segments > 0 && !self.peers.is_empty() {
            if idle_turns >= self.peers.len() {
                break;
            }
            let i = self.cursor % self.peers.len();
            self.cursor = self.cursor.wrapping_add(1);
            let p = self.peers[i];
            if p.st != St::Established || p.sent >= self.cfg.segments {
                idle_turns += 1;
                continue;
            }
            idle_turns = 0;
            // One byte at ISN + 2 + n: the byte at ISN + 1 (the hole) is never sent.
            let spec = SegmentSpec {
                seq: p.isn.wrapping_add(2).wrapping_add(p.sent),
                ack: p.irs.wrapping_add(1),
                flags: TcpFlags::ACK | TcpFlags::PSH,
                window: 502,
                options: OptionsOut::default(),
            };
            out.push(self.t.frame(p.ip, p.port, &spec, b"x"));
            self.peers[i].sent += 1;
            if self.peers[i].sent == self.cfg.segments {
                self.data_done += 1;
            }
            self.stats.frames_out += 1;
            self.stats.data_segments += 1;
            sent += 1;
        }
        out.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netrx::tcp::{self, Endpoint, Instant};

    const PORT: u16 = 5001;

    fn target() -> Target {
        Target {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst_ip: Ipv4Addr::new(10, 77, 0, 2),
            dst_port: PORT,
            spoof_lo: Ipv4Addr::new(10, 77, 0, 100),
            spoof_hi: Ipv4Addr::new(10, 77, 0, 250),
        }
    }

    fn endpoint(cfg: tcp::Config) -> Endpoint {
        let mut ep = Endpoint::new(cfg);
        ep.listen(PORT).unwrap();
        ep
    }

    /// Runs peers against the endpoint for up to `ms` ms of simulated time (1 ms steps) or until
    /// they are complete; the application accepts everything from `accept_from` ms on.
    fn run(ep: &mut Endpoint, peers: &mut Peers, ms: u64, accept_from: u64) -> u64 {
        run_ids(ep, peers, ms, accept_from, &mut Vec::new())
    }

    fn run_ids(
        ep: &mut Endpoint,
        peers: &mut Peers,
        ms: u64,
        accept_from: u64,
        ids: &mut Vec<tcp::ConnId>,
    ) -> u64 {
        let mut frame_id = 0u64;
        let mut out = Vec::new();
        for step in 0..ms {
            let now = Duration::from_millis(step);
            let ep_now = Instant::from_millis(step);
            out.clear();
            peers.poll(now, 64, &mut out);
            for _ in 0..4 {
                for f in std::mem::take(&mut out) {
                    frame_id += 1;
                    ep.on_frame(ep_now, frame_id, &f, 2048);
                }
                if step >= accept_from {
                    ids.extend(std::iter::from_fn(|| ep.accept(PORT)));
                }
                ep.flush(ep_now);
                while let Some(tx) = ep.pop_tx() {
                    peers.on_frame(now, tx.as_bytes(), &mut out);
                }
            }
            ep.handle_timeout(ep_now);
            if step >= accept_from {
                ids.extend(std::iter::from_fn(|| ep.accept(PORT)));
            }
            while let Some(tx) = ep.pop_tx() {
                peers.on_frame(now, tx.as_bytes(), &mut out);
            }
            if peers.complete() {
                return step;
            }
        }
        ms
    }

    #[test]
    fn idle_peers_complete_handshakes() {
        let mut ep = endpoint(tcp::Config::default());
        let mut peers = Peers::new(
            target(),
            PeersConfig {
                conns: 300,
                ..PeersConfig::default()
            },
        );
        let steps = run(&mut ep, &mut peers, 5_000, 0);
        assert!(peers.complete(), "{:?}", peers.stats);
        assert_eq!(peers.established(), 300, "{:?}", peers.stats);
        assert_eq!(ep.connection_count(), 300);
        assert_eq!(ep.stats().established, 300);
        assert_eq!(peers.stats.failed, 0);
        assert!(steps < 100, "took {steps} ms");
    }

    #[test]
    fn ooo_peers_hold_frames_behind_a_hole() {
        let mut ep = endpoint(tcp::Config::default());
        let mut peers = Peers::new(
            target(),
            PeersConfig {
                conns: 8,
                segments: 100,
                ..PeersConfig::default()
            },
        );
        let mut ids = Vec::new();
        run_ids(&mut ep, &mut peers, 2_000, 0, &mut ids);
        assert!(peers.complete(), "{:?}", peers.stats);
        assert_eq!(peers.established(), 8);
        assert_eq!(peers.stats.data_segments, 800);
        assert_eq!(ids.len(), 8);
        // Every one-byte segment is held out of order, one frame each; nothing is readable.
        for id in ids {
            let i = ep.info(id).unwrap();
            assert_eq!(i.available, 0, "{i:?}");
            assert_eq!(i.ooo_bytes, 100, "{i:?}");
            assert_eq!(i.ooo_segments, 100, "{i:?}");
            assert_eq!(i.ooo_ranges, 1, "{i:?}");
            assert_eq!(i.ooo_mem, 100 * 2048, "{i:?}");
        }
    }

    #[test]
    fn accept_queue_overflow_recovers_by_probe_and_retry() {
        // An accept backlog of 4 that is not drained for the first second while 40 handshakes
        // run: the third ACKs beyond it are dropped, probes get RSTs or nothing; retries and
        // restarts bring every peer in once the application accepts.
        let mut ep = endpoint(tcp::Config {
            accept_backlog: 4,
            syn_backlog: 8,
            ..tcp::Config::default()
        });
        let mut peers = Peers::new(
            target(),
            PeersConfig {
                conns: 40,
                max_inflight: 16,
                rto: Duration::from_millis(200),
                ..PeersConfig::default()
            },
        );
        let steps = run(&mut ep, &mut peers, 30_000, 1_000);
        assert!(peers.complete(), "{:?}", peers.stats);
        assert_eq!(peers.established(), 40, "{:?}", peers.stats);
        assert!(steps < 30_000);
    }

    #[test]
    fn syn_flood_frames_are_spoofed_syns() {
        let mut f = SynFlood::new(target(), 7);
        let mut ep = endpoint(tcp::Config::default());
        for i in 0..1000u64 {
            let syn = f.next_syn();
            let p = wire::parse(&syn, ChecksumMode::Verify).unwrap();
            assert!(p.tcp.flags.syn() && !p.tcp.flags.ack());
            let IpPair::V4 { src, .. } = p.ip else {
                panic!("v4")
            };
            assert!(target().is_spoofed(Ipv4Addr::from(src)));
            ep.on_frame(Instant::from_millis(i), i, &syn, 2048);
            while let Some(tx) = ep.pop_tx() {
                f.on_frame(tx.as_bytes());
            }
        }
        // Every SYN is answered: 256 embryonic, the rest with cookies.
        assert_eq!(f.stats.synacks_in, 1000, "{:?}", f.stats);
        assert_eq!(ep.stats().syn_cookies_sent, 1000 - 256);
    }
}
