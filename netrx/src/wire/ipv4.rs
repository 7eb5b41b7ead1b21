//! IPv4 header (options skipped; fragments rejected).

use super::{checksum, ChecksumMode, WireError};

/// IPv4 header fields the receiver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub protocol: u8,
    /// Header length including options.
    pub header_len: usize,
    /// Total length from the header (the frame may carry Ethernet padding beyond it).
    pub total_len: usize,
    pub id: u16,
}

/// Parses an IPv4 header at the start of `buf` (which may extend past the packet).
pub fn parse(buf: &[u8], mode: ChecksumMode) -> Result<Ipv4Header, WireError> {
    if buf.len() < 20 {
        return Err(WireError::Truncated("IPv4"));
    }
    let version = buf[0] >> 4;
    if version != 4 {
        return Err(WireError::BadVersion(version));
    }
    let header_len = ((buf[0] & 0x0f) as usize) * 4;
    if header_len < 20 || header_len > buf.len() {
        return Err(WireError::BadIpv4HeaderLen(header_len));
    }
    let total_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if total_len < header_len || total_len > buf.len() {
        return Err(WireError::BadIpLength(total_len));
    }
    if mode == ChecksumMode::Verify && checksum::checksum(&buf[..header_len]) != 0 {
        return Err(WireError::BadIpv4Checksum);
    }
    let frag = u16::from_be_bytes([buf[6], buf[7]]);
    // MF set or a non-zero fragment offset: a fragment.
    if frag & 0x3fff != 0 {
        return Err(WireError::Fragment);
    }
    let protocol = buf[9];
    if protocol != 6 {
        return Err(WireError::NotTcp(protocol));
    }
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&buf[12..16]);
    dst.copy_from_slice(&buf[16..20]);
    // Broadcast, multicast or unspecified addresses never carry TCP.
    if src[0] >= 224 || dst[0] >= 224 || src == [0; 4] || dst == [0; 4] {
        return Err(WireError::BadAddress);
    }
    Ok(Ipv4Header {
        src,
        dst,
        ttl: buf[8],
        protocol,
        header_len,
        total_len,
        id: u16::from_be_bytes([buf[4], buf[5]]),
    })
}

/// Writes a 20-byte IPv4 header (DF set, no options) with its checksum; returns 20.
pub fn write(out: &mut [u8], src: [u8; 4], dst: [u8; 4], payload_len: usize, ttl: u8) -> usize {
    let total = (20 + payload_len) as u16;
    out[0] = 0x45;
    out[1] = 0;
    out[2..4].copy_from_slice(&total.to_be_bytes());
    out[4..6].copy_from_slice(&0u16.to_be_bytes());
    out[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    out[8] = ttl;
    out[9] = 6;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src);
    out[16..20].copy_from_slice(&dst);
    // The header checksum over five words, inline (no call for 20 bytes).
    let mut c = checksum::Checksum::new();
    let w = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&out[i..i + 8]);
        u64::from_ne_bytes(b)
    };
    c.add_word(w(0));
    c.add_word(w(8));
    c.add_word(u32::from_ne_bytes([out[16], out[17], out[18], out[19]]) as u64);
    out[10..12].copy_from_slice(&c.finish().to_be_bytes());
    20
}
