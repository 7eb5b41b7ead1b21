//! Wire formats: parsing and building Ethernet / 802.1Q / IPv4 / IPv6 / TCP frames.
//!
//! Parsing is pure and total: every length and offset is checked against the buffer, and hostile
//! bytes produce a [`WireError`], never a panic. A parsed frame is described by [`Packet`], which
//! holds header fields and the *offset and length* of the TCP payload inside the frame, so the
//! receive endpoint can keep a reference (frame handle, offset, length) instead of copying.

pub mod build;
pub mod checksum;
pub mod eth;
pub mod fast;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;

pub use build::{build_segment, ReplyAddrs, SegmentSpec, TxFrame, MAX_CONTROL_FRAME};
pub use checksum::Checksum;
pub use eth::{EthHeader, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN};
pub use ipv4::Ipv4Header;
pub use ipv6::Ipv6Header;
pub use tcp::{TcpFlags, TcpHeader, TcpOptions};

use std::net::IpAddr;

/// Why a frame was not accepted. Each message names what was wrong and, where it helps, the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame too short for {0} header")]
    Truncated(&'static str),
    #[error("ethertype {0:#06x} is neither IPv4 nor IPv6 (the XDP program should pass it to the kernel)")]
    NotIp(u16),
    #[error("more than one 802.1Q tag (QinQ is not supported)")]
    StackedVlan,
    #[error("bad IP version {0}")]
    BadVersion(u8),
    #[error("IPv4 header length {0} is invalid (must be 20..=60 and within the packet)")]
    BadIpv4HeaderLen(usize),
    #[error("IP total/payload length {0} does not fit the frame")]
    BadIpLength(usize),
    #[error(
        "IP fragment (fragments are counted and dropped; the sender should use PMTU discovery)"
    )]
    Fragment,
    #[error("IP protocol {0} is not TCP")]
    NotTcp(u8),
    #[error("IPv6 extension header chain too long or malformed")]
    BadIpv6Extension,
    #[error("IPv4 header checksum is wrong")]
    BadIpv4Checksum,
    #[error("TCP checksum is wrong (if the sender is a veth with checksum offload, use ChecksumMode::Trust or `ethtool -K <veth> tx off` on the sender)")]
    BadTcpChecksum,
    #[error("TCP data offset {0} is invalid (must be 20..=60 and within the segment)")]
    BadTcpDataOffset(usize),
    #[error("TCP option is malformed")]
    BadTcpOption,
    #[error("source or destination address is not unicast")]
    BadAddress,
}

/// How checksums of received frames are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumMode {
    /// Verify the IPv4 header checksum and the TCP checksum (both families).
    #[default]
    Verify,
    /// Trust the frame: AF_XDP reports no checksum status, and a veth sender with TX offload
    /// leaves CHECKSUM_PARTIAL frames whose TCP checksum field holds only the pseudo-header sum.
    Trust,
}

/// IP-level source and destination of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpPair {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

impl IpPair {
    pub fn src(&self) -> IpAddr {
        match *self {
            IpPair::V4 { src, .. } => IpAddr::from(src),
            IpPair::V6 { src, .. } => IpAddr::from(src),
        }
    }
    pub fn dst(&self) -> IpAddr {
        match *self {
            IpPair::V4 { dst, .. } => IpAddr::from(dst),
            IpPair::V6 { dst, .. } => IpAddr::from(dst),
        }
    }
    /// The same pair seen from the other side.
    pub fn reversed(&self) -> IpPair {
        match *self {
            IpPair::V4 { src, dst } => IpPair::V4 { src: dst, dst: src },
            IpPair::V6 { src, dst } => IpPair::V6 { src: dst, dst: src },
        }
    }
    /// Adds the TCP pseudo-header for a segment of `tcp_len` bytes to `c`.
    #[inline]
    pub fn add_pseudo_header(&self, c: &mut Checksum, tcp_len: usize) {
        match self {
            IpPair::V4 { src, dst } => {
                // Two words: the addresses, and zero, protocol, length.
                let a = [
                    src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
                ];
                let l = (tcp_len as u16).to_be_bytes();
                c.add_word(u64::from_ne_bytes(a));
                c.add_word(u32::from_ne_bytes([0, 6, l[0], l[1]]) as u64);
            }
            IpPair::V6 { src, dst } => {
                let mut ph = [0u8; 40];
                ph[0..16].copy_from_slice(src);
                ph[16..32].copy_from_slice(dst);
                ph[32..36].copy_from_slice(&(tcp_len as u32).to_be_bytes());
                ph[39] = 6;
                c.add(&ph);
            }
        }
    }
}

/// A parsed TCP frame. Offsets are relative to the start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub eth: EthHeader,
    pub ip: IpPair,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub tcp: TcpHeader,
    /// Offset of the TCP header in the frame.
    pub tcp_offset: usize,
    /// Offset of the TCP payload in the frame.
    pub payload_offset: usize,
    /// Length of the TCP payload (trailing Ethernet padding excluded).
    pub payload_len: usize,
}

impl Packet {
    /// The TCP segment length in sequence space (payload plus SYN and FIN).
    pub fn seg_len(&self) -> u32 {
        self.payload_len as u32 + self.tcp.flags.syn() as u32 + self.tcp.flags.fin() as u32
    }
}

/// Parses an Ethernet frame carrying TCP over IPv4 or IPv6 and checks checksums per `mode`.
pub fn parse(frame: &[u8], mode: ChecksumMode) -> Result<Packet, WireError> {
    let (eth, l3) = eth::parse(frame)?;
    let rest = &frame[l3..];
    let (ip, ttl, ip_hdr_len, ip_payload_len) = match eth.ethertype {
        ETHERTYPE_IPV4 => {
            let h = ipv4::parse(rest, mode)?;
            (
                IpPair::V4 {
                    src: h.src,
                    dst: h.dst,
                },
                h.ttl,
                h.header_len,
                h.total_len - h.header_len,
            )
        }
        ETHERTYPE_IPV6 => {
            let h = ipv6::parse(rest)?;
            (
                IpPair::V6 {
                    src: h.src,
                    dst: h.dst,
                },
                h.hop_limit,
                h.header_len,
                h.tcp_len,
            )
        }
        other => return Err(WireError::NotIp(other)),
    };
    let tcp_offset = l3 + ip_hdr_len;
    // ip parsers guarantee tcp_offset + ip_payload_len <= frame.len().
    let seg = &frame[tcp_offset..tcp_offset + ip_payload_len];
    let tcp = tcp::parse(seg)?;
    if mode == ChecksumMode::Verify {
        let mut c = Checksum::new();
        ip.add_pseudo_header(&mut c, seg.len());
        c.add(seg);
        if !c.is_valid() {
            return Err(WireError::BadTcpChecksum);
        }
    }
    Ok(Packet {
        eth,
        ip,
        ttl,
        tcp,
        tcp_offset,
        payload_offset: tcp_offset + tcp.header_len,
        payload_len: seg.len() - tcp.header_len,
    })
}
