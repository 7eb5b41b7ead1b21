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
    /// Builds a payload-less frame.
    pub fn build(addrs: &ReplyAddrs, spec: &SegmentSpec) -> TxFrame {
        let mut f = TxFrame {
            buf: [0; MAX_CONTROL_FRAME],
            len: 0,
        };
        let n =
            build_segment(addrs, spec, &[], &mut f.buf).expect("control frames fit in 128 bytes");
        f.len = n as u8;
        f
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
    out[t + 20..t + 20 + olen].copy_from_slice(&opts[..olen]);
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
