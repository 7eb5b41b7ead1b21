//! Header prediction: a parser for the common data segment only.
//!
//! [`parse`] recognises an Ethernet (optionally one 802.1Q tag) / IPv4 without options / TCP
//! frame whose flags are exactly ACK or ACK|PSH, carrying payload, with either no TCP options or
//! exactly the Linux timestamp layout (`NOP NOP TS`). It reads only the fields the receive fast
//! path needs and does not verify checksums ([`verify`] does, separately, so that the
//! connection checks can run first). Everything else returns `None` and goes through
//! [`super::parse`], which stays the reference: a frame `parse` accepts is one that the full
//! parser accepts with the same field values (given a connection's addresses, which passed the
//! full parser's address checks when the flow was created).
//!
//! Bytes from the wire never panic: every offset is checked against the frame.

use super::checksum::Checksum;
use super::tcp::TcpFlags;

/// The 12 bytes that identify an IPv4 flow as they appear on the wire: source and destination
/// address (`addrs`, bytes 12..20 of the IPv4 header) and source and destination port
/// (`ports`, bytes 0..4 of the TCP header), both as native-endian loads of those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowBytes {
    pub addrs: u64,
    pub ports: u32,
}

impl FlowBytes {
    /// The key of a segment from `src:sport` to `dst:dport`.
    pub fn v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Self {
        let a = [
            src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
        ];
        let p = sport.to_be_bytes();
        let q = dport.to_be_bytes();
        FlowBytes {
            addrs: u64::from_ne_bytes(a),
            ports: u32::from_ne_bytes([p[0], p[1], q[0], q[1]]),
        }
    }

    /// A cheap multiplicative hash (FxHash-like) for a small direct-mapped cache; callers always
    /// compare the whole key, so a collision only costs a miss.
    #[inline]
    pub fn hash(&self) -> u64 {
        (self.addrs ^ (self.ports as u64).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// The fields of a predicted data segment. Offsets are relative to the start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastSeg {
    pub key: FlowBytes,
    pub seq: u32,
    pub ack: u32,
    /// Raw flags byte: ACK or ACK|PSH.
    pub flags: u8,
    /// The raw (unscaled) window field.
    pub window: u16,
    /// Timestamps (TSval, TSecr) when present.
    pub ts: Option<(u32, u32)>,
    /// Offset of the IPv4 header.
    pub l3: u32,
    /// Length of the TCP segment (header and payload).
    pub tcp_len: u32,
    pub payload_offset: u32,
    /// Always > 0.
    pub payload_len: u32,
}

impl FastSeg {
    pub fn psh(&self) -> bool {
        self.flags & TcpFlags::PSH != 0
    }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline(always)]
fn be32(b: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*b)
}

#[inline(always)]
fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// Parses the common data segment; `None` for anything else (the full parser handles it).
#[inline]
pub fn parse(frame: &[u8]) -> Option<FastSeg> {
    let l3 = match be16(frame, 12)? {
        0x0800 => 14,
        0x8100 if be16(frame, 16)? == 0x0800 => 18,
        _ => return None,
    };
    let ip = frame.get(l3..)?;
    if ip.len() < 40 {
        return None;
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // Bytes 6..10: flags and fragment offset, TTL, protocol.
    let frag_proto = u32::from_be_bytes([ip[6], ip[7], ip[8], ip[9]]) & 0x3fff_00ff;
    // IPv4 without options, not a fragment (MF or an offset), TCP, and room for the fixed TCP
    // header within the IP length.
    if (ip[0] != 0x45) | (frag_proto != 6) | (total < 40) | (total > ip.len()) {
        return None;
    }
    let tcp = &ip[20..total];
    let flags = tcp[13];
    // Data offset and flags at once: 5 or 8 words, ACK with or without PSH, nothing else.
    let (hlen, ts) = match u16::from_be_bytes([tcp[12], tcp[13]]) & !(TcpFlags::PSH as u16) {
        0x5010 => (20, None),
        0x8010 if tcp.len() >= 32 && tcp[20..24] == [1, 1, 8, 10] => {
            (32, Some((be32(&arr(tcp, 24)), be32(&arr(tcp, 28)))))
        }
        _ => return None,
    };
    let payload_len = tcp.len() - hlen;
    if payload_len == 0 {
        return None;
    }
    Some(FastSeg {
        key: FlowBytes {
            addrs: u64::from_ne_bytes(arr(ip, 12)),
            ports: u32::from_ne_bytes(arr(tcp, 0)),
        },
        seq: be32(&arr(tcp, 4)),
        ack: be32(&arr(tcp, 8)),
        flags,
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        ts,
        l3: l3 as u32,
        tcp_len: tcp.len() as u32,
        payload_offset: (l3 + 20 + hlen) as u32,
        payload_len: payload_len as u32,
    })
}

/// Verifies the IPv4 header checksum and the TCP checksum of a frame [`parse`] accepted.
#[inline]
pub fn verify(frame: &[u8], s: &FastSeg) -> bool {
    let l3 = s.l3 as usize;
    let Some(ip) = frame.get(l3..l3 + 20 + s.tcp_len as usize) else {
        return false;
    };
    let Some(mut c) = ipv4_ok_and_pseudo(ip, s) else {
        return false;
    };
    c.add(&ip[20..]);
    c.is_valid()
}

/// [`verify`] for a payload already summed by the copy ([`super::checksum::copy_and_sum`]): the
/// IPv4 header, the pseudo-header and the TCP header are summed here, the payload's sum is
/// `payload`.
#[inline]
pub fn verify_with_payload_sum(frame: &[u8], s: &FastSeg, payload: Checksum) -> bool {
    let Some(ip) = frame.get(s.l3 as usize..s.payload_offset as usize) else {
        return false;
    };
    let Some(mut c) = ipv4_ok_and_pseudo(ip, s) else {
        return false;
    };
    // The TCP header is 20 or 32 bytes: the payload starts at an even offset.
    c.add(&ip[20..]);
    c.add_sum(payload);
    c.is_valid()
}

/// Checks the IPv4 header's checksum (`ip` starts at the IPv4 header, at least 20 bytes) and
/// returns the TCP checksum's pseudo-header sum: the addresses (the flow key's first word),
/// zero, protocol, TCP length.
#[inline(always)]
fn ipv4_ok_and_pseudo(ip: &[u8], s: &FastSeg) -> Option<Checksum> {
    if ip.len() < 20 {
        return None;
    }
    // IPv4 header: 20 bytes, two words and a half.
    let mut h = Checksum::new();
    h.add_word(u64::from_ne_bytes(arr(ip, 0)));
    h.add_word(u64::from_ne_bytes(arr(ip, 8)));
    h.add_word(u32::from_ne_bytes(arr(ip, 16)) as u64);
    if !h.is_valid() {
        return None;
    }
    let mut c = Checksum::new();
    c.add_word(s.key.addrs);
    let len = (s.tcp_len as u16).to_be_bytes();
    c.add_word(u32::from_ne_bytes([0, 6, len[0], len[1]]) as u64);
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::OptionsOut;
    use crate::wire::{self, build_segment, ChecksumMode, IpPair, ReplyAddrs, SegmentSpec};

    fn addrs(vlan: Option<u16>) -> ReplyAddrs {
        ReplyAddrs {
            local_mac: [2, 0, 0, 0, 0, 2],
            remote_mac: [2, 0, 0, 0, 0, 1],
            vlan,
            ip: IpPair::V4 {
                src: [10, 0, 0, 2],
                dst: [10, 0, 0, 1],
            },
            local_port: 40000,
            remote_port: 5001,
        }
    }

    fn build(vlan: Option<u16>, flags: u8, options: OptionsOut, payload: &[u8]) -> Vec<u8> {
        let spec = SegmentSpec {
            seq: 0xfffffff0,
            ack: 77,
            flags,
            window: 1234,
            options,
        };
        let mut buf = vec![0u8; 128 + payload.len()];
        let n = build_segment(&addrs(vlan), &spec, payload, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// Copies the payload with `copy_and_sum` and verifies with its sum; the copy is exact.
    fn fused(f: &[u8], s: &FastSeg) -> bool {
        let at = s.payload_offset as usize;
        let Some(src) = f.get(at..at + s.payload_len as usize) else {
            return false;
        };
        let mut dst = vec![0u8; src.len()];
        let sum = crate::wire::checksum::copy_and_sum(&mut dst, src);
        assert_eq!(dst, src);
        verify_with_payload_sum(f, s, sum)
    }

    #[test]
    fn agrees_with_the_full_parser() {
        let ts = OptionsOut {
            timestamps: Some((5, 6)),
            ..Default::default()
        };
        for vlan in [None, Some(7)] {
            for o in [OptionsOut::default(), ts] {
                for flags in [TcpFlags::ACK, TcpFlags::ACK | TcpFlags::PSH] {
                    for len in [1usize, 2, 3, 1448, 8948] {
                        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                        let mut f = build(vlan, flags, o, &payload);
                        f.extend_from_slice(&[0; 5]); // Ethernet padding beyond the IP length
                        let s = parse(&f).expect("fast");
                        let p = wire::parse(&f, ChecksumMode::Verify).unwrap();
                        assert!(verify(&f, &s));
                        assert!(fused(&f, &s), "the fused copy's verify agrees");
                        assert_eq!(s.seq, p.tcp.seq);
                        assert_eq!(s.ack, p.tcp.ack);
                        assert_eq!(s.flags, p.tcp.flags.0);
                        assert_eq!(s.window, p.tcp.window);
                        assert_eq!(s.ts, p.tcp.options.timestamps);
                        assert_eq!(s.payload_offset as usize, p.payload_offset);
                        assert_eq!(s.payload_len as usize, p.payload_len);
                        let IpPair::V4 { src, dst } = p.ip else {
                            panic!()
                        };
                        assert_eq!(
                            s.key,
                            FlowBytes::v4(src, dst, p.tcp.src_port, p.tcp.dst_port)
                        );
                        // Any flipped bit fails verification (or the fast parse).
                        for bit in [8 * 20, 8 * (f.len() - 6) + 3, 8 * 40] {
                            let mut g = f.clone();
                            if bit / 8 >= p.payload_offset + p.payload_len {
                                continue;
                            }
                            g[bit / 8] ^= 1 << (bit % 8);
                            if let Some(s2) = parse(&g) {
                                assert!(!verify(&g, &s2), "bit {bit}");
                                assert!(!fused(&g, &s2), "bit {bit}, fused");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn everything_else_is_left_to_the_full_parser() {
        let ts = OptionsOut {
            timestamps: Some((5, 6)),
            ..Default::default()
        };
        let sack = OptionsOut {
            timestamps: Some((5, 6)),
            sack: [(1, 2), (0, 0), (0, 0), (0, 0)],
            sack_count: 1,
            ..Default::default()
        };
        assert!(
            parse(&build(None, TcpFlags::ACK, ts, &[])).is_none(),
            "no data"
        );
        assert!(parse(&build(None, TcpFlags::ACK | TcpFlags::FIN, ts, &[1])).is_none());
        assert!(parse(&build(None, TcpFlags::SYN, ts, &[1])).is_none());
        assert!(parse(&build(None, TcpFlags::ACK | TcpFlags::RST, ts, &[1])).is_none());
        assert!(parse(&build(None, TcpFlags::PSH, ts, &[1])).is_none());
        assert!(parse(&build(None, TcpFlags::ACK, sack, &[1])).is_none());
        let f = build(None, TcpFlags::ACK, ts, &[1, 2, 3]);
        for n in 0..f.len() {
            assert!(parse(&f[..n]).is_none(), "truncated to {n}");
        }
        let mut frag = f.clone();
        frag[14 + 6] |= 0x20;
        assert!(parse(&frag).is_none());
        let mut opts = f.clone();
        opts[14] = 0x46;
        assert!(parse(&opts).is_none());
        // Hostile lengths never panic.
        for i in 0..f.len() {
            for v in [0u8, 1, 0x45, 0x50, 0x80, 0xff] {
                let mut g = f.clone();
                g[i] = v;
                if let Some(s) = parse(&g) {
                    assert_eq!(verify(&g, &s), fused(&g, &s));
                }
            }
        }
    }
}
