//! Building frames: SYN-ACK, ACK (with SACK blocks and timestamps), FIN and RST from the
//! endpoint, and (for tests, benchmarks and fuzzing) data segments.

use super::tcp::OptionsOut;
use super::{eth, ipv4, ipv6, Checksum, EthHeader, IpPair, Packet};

/// Everything needed to address a frame to the peer: both MACs (and the VLAN tag), both IPs,
/// both ports. `local`/`remote` naming is from the sender's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyAddrs {
    pub local_mac: [u8; 6],
    pub remote_mac: [u8; 6],
    pub vlan: Option<u16>,
    /// `src` is the local address, `dst` the remote one.
    pub ip: IpPair,
    pub local_port: u16,
    pub remote_port: u16,
}

impl ReplyAddrs {
    /// The addresses to answer `p` with (swap source and destination at every layer).
    pub fn reply_to(p: &Packet) -> Self {
        ReplyAddrs {
            local_mac: p.eth.dst,
            remote_mac: p.eth.src,
            vlan: p.eth.vlan,
            ip: p.ip.reversed(),
            local_port: p.tcp.dst_port,
            remote_port: p.tcp.src_port,
        }
    }

    /// Header length before the TCP options (Ethernet + IP + fixed TCP header).
    pub fn fixed_len(&self) -> usize {
        let l2 = if self.vlan.is_some() { 18 } else { 14 };
        let l3 = match self.ip {
            IpPair::V4 { .. } => 20,
            IpPair::V6 { .. } => 40,
        };
        l2 + l3 + 20
    }
}

/// The TCP fields of a segment to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentSpec {
    pub seq: u32,
    pub ack: u32,
    /// `TcpFlags` bits.
    pub flags: u8,
    /// The raw (already scaled) window field.
    pub window: u16,
    pub options: OptionsOut,
}

/// The largest control frame (VLAN + IPv6 + TCP with 40 option bytes) is 118 bytes.
pub const MAX_CONTROL_FRAME: usize = 128;

/// A control frame (no payload) to transmit, stored inline so emitting one never allocates.
#[derive(Clone, Copy)]
pub struct TxFrame {
    buf: [u8; MAX_CONTROL_FRAME],
    len: u8,
}

impl TxFrame {
    const EMPTY: TxFrame = TxFrame {
        buf: [0; MAX_CONTROL_FRAME],
        len: 0,
    };

    /// Builds a payload-less frame.
    pub fn build(addrs: &ReplyAddrs, spec: &SegmentSpec) -> TxFrame {
        let mut f = TxFrame::EMPTY;
        f.fill(addrs, spec);
        f
    }

    /// Builds a payload-less frame in place at the back of `queue` (no copy of the frame).
    pub fn push_built(
        queue: &mut std::collections::VecDeque<TxFrame>,
        addrs: &ReplyAddrs,
        spec: &SegmentSpec,
    ) {
        queue.push_back(TxFrame::EMPTY);
        if let Some(f) = queue.back_mut() {
            f.fill(addrs, spec);
        }
    }

    /// Writes the frame into a zeroed buffer.
    fn fill(&mut self, addrs: &ReplyAddrs, spec: &SegmentSpec) {
        let n = match addrs.ip {
            IpPair::V4 { src, dst } if plain_options(&spec.options) => {
                build_plain_v4(addrs, src, dst, spec, &mut self.buf)
            }
            _ => build_segment(addrs, spec, &[], &mut self.buf)
                .expect("control frames fit in 128 bytes"),
        };
        self.len = n as u8;
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for TxFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TxFrame({} bytes)", self.len)
    }
}

/// One connection's common ACK, prebuilt: IPv4, flags ACK only, no options or only timestamps.
/// Everything but the sequence and acknowledgment numbers, the window and the timestamp values
/// is fixed for the connection's life (addresses, ports, lengths, TTL, a zero IP ID and so the IP
/// checksum), so an ACK is a copy of the template, four stores and a TCP checksum updated from
/// the template's partial sum: byte for byte what [`build_segment`] writes (the unit test
/// compares them).
#[derive(Clone, Copy)]
pub struct AckTemplate {
    /// The ACK with zero sequence, acknowledgment, window and timestamp values.
    frame: TxFrame,
    /// Offset of the TCP header in `frame`.
    tcp: u8,
    /// The TCP checksum's sum over the pseudo-header and the template's TCP header (checksum
    /// field zero): the fixed part of every ACK's sum.
    base: Checksum,
    timestamps: bool,
}

impl std::fmt::Debug for AckTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AckTemplate({} bytes)", self.frame.len)
    }
}

impl AckTemplate {
    /// The template for `addrs` (`None` for IPv6, which takes the general builder).
    pub fn new(addrs: &ReplyAddrs, timestamps: bool) -> Option<AckTemplate> {
        if !matches!(addrs.ip, IpPair::V4 { .. }) {
            return None;
        }
        let spec = SegmentSpec {
            flags: super::tcp::TcpFlags::ACK,
            options: OptionsOut {
                timestamps: timestamps.then_some((0, 0)),
                ..Default::default()
            },
            ..Default::default()
        };
        let frame = TxFrame::build(addrs, &spec);
        let t = frame.len as usize - if timestamps { 32 } else { 20 };
        let mut tcp = [0u8; 32];
        tcp[..frame.len as usize - t].copy_from_slice(&frame.buf[t..frame.len as usize]);
        tcp[16..18].fill(0);
        let mut base = Checksum::new();
        addrs
            .ip
            .add_pseudo_header(&mut base, frame.len as usize - t);
        base.add(&tcp);
        Some(AckTemplate {
            frame,
            tcp: t as u8,
            base,
            timestamps,
        })
    }

    /// Whether an ACK with these options is this template's (timestamps as negotiated, nothing
    /// else).
    #[inline]
    pub fn fits(&self, options: &OptionsOut) -> bool {
        plain_options(options) && options.timestamps.is_some() == self.timestamps
    }

    /// Appends the ACK for these fields to `queue` (the caller checked [`AckTemplate::fits`]).
    #[inline]
    pub fn push(
        &self,
        queue: &mut std::collections::VecDeque<TxFrame>,
        seq: u32,
        ack: u32,
        window: u16,
        timestamps: Option<(u32, u32)>,
    ) {
        let mut c = self.base;
        let mut nums = [0u8; 8];
        nums[..4].copy_from_slice(&seq.to_be_bytes());
        nums[4..].copy_from_slice(&ack.to_be_bytes());
        c.add_word(u64::from_ne_bytes(nums));
        let w = window.to_be_bytes();
        c.add_word(u16::from_ne_bytes(w) as u64);
        let mut ts = [0u8; 8];
        if let Some((val, ecr)) = timestamps {
            ts[..4].copy_from_slice(&val.to_be_bytes());
            ts[4..].copy_from_slice(&ecr.to_be_bytes());
            c.add_word(u64::from_ne_bytes(ts));
        }
        queue.push_back(self.frame);
        let Some(f) = queue.back_mut() else {
            return;
        };
        let t = self.tcp as usize;
        let h = &mut f.buf[t..t + 32];
        h[4..12].copy_from_slice(&nums);
        h[14..16].copy_from_slice(&w);
        h[16..18].copy_from_slice(&c.finish().to_be_bytes());
        if self.timestamps {
            h[24..32].copy_from_slice(&ts);
        }
    }
}

/// Options of the common ACK: timestamps or nothing.
#[inline]
fn plain_options(o: &OptionsOut) -> bool {
    o.mss.is_none() && o.window_scale.is_none() && !o.sack_permitted && o.sack_count == 0
}

/// The common control frame (IPv4, no payload, no options or only timestamps) at fixed offsets,
/// with its checksums summed inline: byte for byte what [`build_segment`] writes (the unit test
/// compares them), in about a third of the instructions. `buf` is zeroed.
fn build_plain_v4(
    addrs: &ReplyAddrs,
    src: [u8; 4],
    dst: [u8; 4],
    spec: &SegmentSpec,
    buf: &mut [u8; MAX_CONTROL_FRAME],
) -> usize {
    let l3 = if addrs.vlan.is_some() { 18 } else { 14 };
    let olen = if spec.options.timestamps.is_some() {
        12
    } else {
        0
    };
    let tcp_len = 20 + olen;
    let eh = EthHeader {
        dst: addrs.remote_mac,
        src: addrs.local_mac,
        vlan: addrs.vlan,
        ethertype: super::ETHERTYPE_IPV4,
    };
    eth::write(&eh, &mut buf[..l3]);
    ipv4::write(&mut buf[l3..l3 + 20], src, dst, tcp_len, 64);
    let t = l3 + 20;
    let h = &mut buf[t..t + 32];
    h[0..2].copy_from_slice(&addrs.local_port.to_be_bytes());
    h[2..4].copy_from_slice(&addrs.remote_port.to_be_bytes());
    h[4..8].copy_from_slice(&spec.seq.to_be_bytes());
    h[8..12].copy_from_slice(&spec.ack.to_be_bytes());
    h[12] = ((tcp_len / 4) as u8) << 4;
    h[13] = spec.flags;
    h[14..16].copy_from_slice(&spec.window.to_be_bytes());
    if let Some((val, ecr)) = spec.options.timestamps {
        // `OptionsOut::write` without SACK-permitted: NOP NOP TS.
        h[20..24].copy_from_slice(&[1, 1, 8, 10]);
        h[24..28].copy_from_slice(&val.to_be_bytes());
        h[28..32].copy_from_slice(&ecr.to_be_bytes());
    }
    // Pseudo-header and the (zero-padded, checksum-zero) 32 bytes of TCP header and options.
    let mut c = Checksum::new();
    addrs.ip.add_pseudo_header(&mut c, tcp_len);
    for w in h.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        c.add_word(u64::from_ne_bytes(b));
    }
    h[16..18].copy_from_slice(&c.finish().to_be_bytes());
    t + tcp_len
}

/// Builds a complete frame with `payload` into `out`; returns its length, or `None` when `out`
/// is too small. Checksums (IPv4 header, TCP) are computed.
pub fn build_segment(
    addrs: &ReplyAddrs,
    spec: &SegmentSpec,
    payload: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let mut opts = [0u8; 40];
    let olen = spec.options.write(&mut opts);
    let tcp_len = 20 + olen + payload.len();
    let total = addrs.fixed_len() - 20 + tcp_len;
    if out.len() < total || tcp_len > 65535 - 40 {
        return None;
    }
    let ethertype = match addrs.ip {
        IpPair::V4 { .. } => super::ETHERTYPE_IPV4,
        IpPair::V6 { .. } => super::ETHERTYPE_IPV6,
    };
    let eh = EthHeader {
        dst: addrs.remote_mac,
        src: addrs.local_mac,
        vlan: addrs.vlan,
        ethertype,
    };
    let mut off = eth::write(&eh, out);
    off += match addrs.ip {
        IpPair::V4 { src, dst } => ipv4::write(&mut out[off..], src, dst, tcp_len, 64),
        IpPair::V6 { src, dst } => ipv6::write(&mut out[off..], src, dst, tcp_len, 64),
    };
    let t = off;
    let h = &mut out[t..t + 20];
    h[0..2].copy_from_slice(&addrs.local_port.to_be_bytes());
    h[2..4].copy_from_slice(&addrs.remote_port.to_be_bytes());
    h[4..8].copy_from_slice(&spec.seq.to_be_bytes());
    h[8..12].copy_from_slice(&spec.ack.to_be_bytes());
    h[12] = (((20 + olen) / 4) as u8) << 4;
    h[13] = spec.flags;
    h[14..16].copy_from_slice(&spec.window.to_be_bytes());
    h[16..20].copy_from_slice(&[0, 0, 0, 0]);
    if let Some(room) = out.get_mut(t + 20..t + 60) {
        // A fixed-size copy (no memcpy call); the payload, if any, overwrites the zeros.
        room.copy_from_slice(&opts);
    } else {
        out[t + 20..t + 20 + olen].copy_from_slice(&opts[..olen]);
    }
    out[t + 20 + olen..t + tcp_len].copy_from_slice(payload);
    let mut c = Checksum::new();
    addrs.ip.add_pseudo_header(&mut c, tcp_len);
    c.add(&out[t..t + tcp_len]);
    let sum = c.finish();
    out[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
    Some(t + tcp_len)
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ChecksumMode, TcpFlags};
    use super::*;

    fn addrs(v6: bool, vlan: Option<u16>) -> ReplyAddrs {
        ReplyAddrs {
            local_mac: [2, 0, 0, 0, 0, 1],
            remote_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            ip: if v6 {
                IpPair::V6 {
                    src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                }
            } else {
                IpPair::V4 {
                    src: [10, 0, 0, 1],
                    dst: [10, 0, 0, 2],
                }
            },
            local_port: 5001,
            remote_port: 40000,
        }
    }

    /// A xorshift generator: deterministic random fields for the byte-for-byte comparisons.
    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Random IPv4 addresses and ports, with a random VLAN tag when `vlan`.
    fn random_v4(rnd: &mut impl FnMut() -> u64, vlan: bool) -> ReplyAddrs {
        let vlan = vlan.then(|| rnd() as u16);
        let mut a = addrs(false, vlan);
        a.ip = IpPair::V4 {
            src: (rnd() as u32).to_be_bytes(),
            dst: (rnd() as u32).to_be_bytes(),
        };
        a.local_port = rnd() as u16;
        a.remote_port = rnd() as u16;
        a
    }

    #[test]
    fn plain_control_frames_match_the_general_builder() {
        let mut rnd = xorshift(0x1234_5678_9abc_def0);
        for i in 0..2000 {
            let a = random_v4(&mut rnd, i % 3 == 0);
            let spec = SegmentSpec {
                seq: rnd() as u32,
                ack: rnd() as u32,
                flags: rnd() as u8,
                window: rnd() as u16,
                options: OptionsOut {
                    timestamps: (i % 2 == 0).then(|| (rnd() as u32, rnd() as u32)),
                    ..Default::default()
                },
            };
            let f = TxFrame::build(&a, &spec);
            let mut buf = [0u8; MAX_CONTROL_FRAME];
            let n = build_segment(&a, &spec, &[], &mut buf).unwrap();
            assert_eq!(f.as_bytes(), &buf[..n], "case {i}");
        }
    }

    #[test]
    fn ack_templates_match_the_general_builder() {
        let mut rnd = xorshift(0x0bad_cafe_1234_5678);
        assert!(
            AckTemplate::new(&addrs(true, None), true).is_none(),
            "IPv6: general builder"
        );
        for i in 0..2000 {
            let a = random_v4(&mut rnd, i % 3 == 0);
            let ts = i % 2 == 0;
            let t = AckTemplate::new(&a, ts).unwrap();
            for _ in 0..4 {
                let spec = SegmentSpec {
                    seq: rnd() as u32,
                    ack: rnd() as u32,
                    flags: TcpFlags::ACK,
                    window: rnd() as u16,
                    options: OptionsOut {
                        timestamps: ts.then(|| (rnd() as u32, rnd() as u32)),
                        ..Default::default()
                    },
                };
                assert!(t.fits(&spec.options));
                let mut q = std::collections::VecDeque::new();
                t.push(
                    &mut q,
                    spec.seq,
                    spec.ack,
                    spec.window,
                    spec.options.timestamps,
                );
                let mut buf = [0u8; MAX_CONTROL_FRAME];
                let n = build_segment(&a, &spec, &[], &mut buf).unwrap();
                assert_eq!(q[0].as_bytes(), &buf[..n], "case {i}");
            }
            let other = OptionsOut {
                timestamps: (!ts).then_some((1, 2)),
                ..Default::default()
            };
            assert!(!t.fits(&other), "timestamps as negotiated");
            let sack = OptionsOut {
                sack_count: 1,
                ..Default::default()
            };
            assert!(!t.fits(&sack), "SACK blocks take the builder");
        }
    }

    #[test]
    fn built_frames_parse_and_verify() {
        for v6 in [false, true] {
            for vlan in [None, Some(0x0123)] {
                let a = addrs(v6, vlan);
                let spec = SegmentSpec {
                    seq: 0xfffffff0,
                    ack: 77,
                    flags: TcpFlags::ACK | TcpFlags::PSH,
                    window: 500,
                    options: OptionsOut {
                        timestamps: Some((5, 6)),
                        ..Default::default()
                    },
                };
                let payload: Vec<u8> = (0..1001u32).map(|i| i as u8).collect();
                let mut buf = [0u8; 2000];
                let n = build_segment(&a, &spec, &payload, &mut buf).unwrap();
                let p = parse(&buf[..n], ChecksumMode::Verify).unwrap();
                assert_eq!(p.tcp.seq, 0xfffffff0);
                assert_eq!(p.tcp.options.timestamps, Some((5, 6)));
                assert_eq!(
                    &buf[p.payload_offset..p.payload_offset + p.payload_len],
                    &payload[..]
                );
                assert_eq!(p.eth.vlan, vlan);
                assert_eq!(ReplyAddrs::reply_to(&p).ip, a.ip.reversed());
                // Any flipped bit in the IP or TCP part is caught.
                let l3 = if vlan.is_some() { 18 } else { 14 };
                for i in [l3 + 12, n - 1, p.tcp_offset + 4] {
                    let mut bad = buf;
                    bad[i] ^= 0x10;
                    assert!(parse(&bad[..n], ChecksumMode::Verify).is_err(), "byte {i}");
                }
                let f = TxFrame::build(
                    &a,
                    &SegmentSpec {
                        flags: TcpFlags::RST,
                        ..spec
                    },
                );
                assert!(parse(f.as_bytes(), ChecksumMode::Verify).is_ok());
            }
        }
    }
}
