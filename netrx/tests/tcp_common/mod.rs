//! A scripted peer for driving the receive endpoint in tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use netrx::tcp::{Config, ConnId, Endpoint, EndpointEvent, FrameDisposition, Instant, RxSegment};
use netrx::wire::tcp::{OptionsOut, TcpFlags};
use netrx::wire::{self, build_segment, ChecksumMode, IpPair, Packet, ReplyAddrs, SegmentSpec};

pub const PORT: u16 = 5001;
pub const TRUESIZE: u32 = 4096;

pub struct Sent {
    pub bytes: Vec<u8>,
    pub pkt: Packet,
}

impl Sent {
    pub fn window(&self) -> u32 {
        self.pkt.tcp.window as u32
    }
    pub fn flags(&self) -> TcpFlags {
        self.pkt.tcp.flags
    }
    pub fn sack(&self) -> Vec<(u32, u32)> {
        self.pkt.tcp.options.sack_blocks().to_vec()
    }
}

/// The endpoint plus a peer that sends crafted segments and keeps the frames the endpoint holds.
pub struct Harness {
    pub ep: Endpoint,
    pub now: Instant,
    pub peer: ReplyAddrs,
    next_frame: u64,
    pub frames: HashMap<u64, Vec<u8>>,
    pub released_total: u64,
    /// Peer-side sequence state.
    pub iss: u32,
    pub snd_nxt: u32,
    /// Our view of the endpoint's sequence numbers.
    pub rcv_nxt: u32,
    pub ts: Option<u32>,
    pub ts_ecr: u32,
    pub conn: Option<ConnId>,
    pub received: Vec<u8>,
    /// End the batch after every delivered frame (on by default).
    pub flush_each: bool,
}

pub fn v4_peer(port: u16) -> ReplyAddrs {
    ReplyAddrs {
        local_mac: [2, 0, 0, 0, 0, 2],
        remote_mac: [2, 0, 0, 0, 0, 1],
        vlan: None,
        ip: IpPair::V4 {
            src: [10, 0, 0, 2],
            dst: [10, 0, 0, 1],
        },
        local_port: port,
        remote_port: PORT,
    }
}

impl Harness {
    pub fn new(cfg: Config) -> Self {
        let mut ep = Endpoint::new(cfg);
        ep.listen(PORT).unwrap();
        Harness {
            ep,
            now: Instant::from_millis(1000),
            peer: v4_peer(40000),
            next_frame: 1,
            frames: HashMap::new(),
            released_total: 0,
            iss: 1_000_000,
            snd_nxt: 1_000_000,
            rcv_nxt: 0,
            ts: Some(100),
            ts_ecr: 0,
            conn: None,
            received: Vec::new(),
            flush_each: true,
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.ep.handle_timeout(self.now);
        self.collect_released();
    }

    pub fn collect_released(&mut self) {
        let mut r = Vec::new();
        while let Some(ev) = self.ep.poll_event() {
            if let EndpointEvent::FrameReleased(f) = ev {
                r.push(f);
            }
        }
        for f in r {
            assert!(
                self.frames.remove(&f).is_some(),
                "released frame {f} was not held"
            );
            self.released_total += 1;
        }
    }

    /// Sends a raw segment from the peer; returns the disposition.
    pub fn send_raw(
        &mut self,
        seq: u32,
        flags: u8,
        payload: &[u8],
        options: OptionsOut,
    ) -> FrameDisposition {
        let spec = SegmentSpec {
            seq,
            ack: self.rcv_nxt,
            flags,
            window: 65535,
            options,
        };
        let mut buf = vec![0u8; 128 + payload.len()];
        let n = build_segment(&self.peer, &spec, payload, &mut buf).unwrap();
        buf.truncate(n);
        self.deliver(buf)
    }

    pub fn deliver(&mut self, buf: Vec<u8>) -> FrameDisposition {
        let id = self.next_frame;
        self.next_frame += 1;
        let d = self.ep.on_frame(self.now, id, &buf, TRUESIZE);
        if d == FrameDisposition::Held {
            self.frames.insert(id, buf);
        }
        if self.flush_each {
            // Each frame is a batch of its own (batch-end ACKs as soon as they are due).
            self.ep.flush(self.now);
        }
        self.collect_released();
        d
    }

    pub fn ts_opts(&self) -> OptionsOut {
        OptionsOut {
            timestamps: self.ts.map(|v| (v, self.ts_ecr)),
            ..Default::default()
        }
    }

    /// Sends data at stream offset `off` (0 = first byte after the SYN).
    pub fn send_data(&mut self, off: u32, payload: &[u8], psh: bool) -> FrameDisposition {
        let flags = TcpFlags::ACK | if psh { TcpFlags::PSH } else { 0 };
        let o = self.ts_opts();
        self.send_raw(
            self.iss.wrapping_add(1).wrapping_add(off),
            flags,
            payload,
            o,
        )
    }

    /// Frames the endpoint transmitted since the last call, parsed (checksums verified).
    pub fn tx(&mut self) -> Vec<Sent> {
        let mut v = Vec::new();
        while let Some(f) = self.ep.pop_tx() {
            let bytes = f.as_bytes().to_vec();
            let pkt = wire::parse(&bytes, ChecksumMode::Verify)
                .expect("endpoint frames parse and verify");
            if let Some((val, _)) = pkt.tcp.options.timestamps {
                self.ts_ecr = val;
            }
            v.push(Sent { bytes, pkt });
        }
        v
    }

    pub fn syn_options(full: bool) -> OptionsOut {
        if full {
            OptionsOut {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some((100, 0)),
                ..Default::default()
            }
        } else {
            OptionsOut {
                mss: Some(1460),
                ..Default::default()
            }
        }
    }

    /// Completes a handshake; returns the SYN-ACK.
    pub fn handshake(&mut self, full: bool) -> Sent {
        if !full {
            self.ts = None;
        }
        let d = self.send_raw(self.iss, TcpFlags::SYN, &[], Self::syn_options(full));
        assert_eq!(d, FrameDisposition::Free);
        let mut tx = self.tx();
        assert_eq!(tx.len(), 1, "one SYN-ACK");
        let synack = tx.remove(0);
        assert_eq!(synack.flags().0, TcpFlags::SYN | TcpFlags::ACK);
        assert_eq!(synack.pkt.tcp.ack, self.iss.wrapping_add(1));
        self.rcv_nxt = synack.pkt.tcp.seq.wrapping_add(1);
        self.snd_nxt = self.iss.wrapping_add(1);
        self.now = self.now + Duration::from_millis(1);
        let o = self.ts_opts();
        self.send_raw(self.snd_nxt, TcpFlags::ACK, &[], o);
        assert!(self.tx().is_empty(), "nothing answers the final ACK");
        let id = self.ep.accept(PORT).expect("accepted");
        self.conn = Some(id);
        synack
    }

    pub fn id(&self) -> ConnId {
        self.conn.unwrap()
    }

    /// Reads and releases everything available, appending it to `received`.
    pub fn read_all(&mut self) -> usize {
        let id = self.id();
        let mut n = 0;
        while let Some(seg) = self.ep.read(id, usize::MAX).unwrap() {
            self.copy_out(&seg);
            n += seg.len as usize;
            self.ep.release(&seg).unwrap();
        }
        self.ep.flush(self.now);
        self.collect_released();
        n
    }

    pub fn copy_out(&mut self, seg: &RxSegment) {
        let f = &self.frames[&seg.frame];
        self.received
            .extend_from_slice(&f[seg.offset as usize..(seg.offset + seg.len) as usize]);
    }

    pub fn ack_of(&self, s: &Sent) -> u32 {
        s.pkt.tcp.ack.wrapping_sub(self.iss.wrapping_add(1))
    }
}

pub fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 31 + (i >> 8) * 7) as u8) ^ salt)
        .collect()
}
