//! IPv6 header, walking the extension headers needed to reach TCP.

use super::WireError;

/// IPv6 fields the receiver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Header {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
    /// Bytes from the start of the IPv6 header to the TCP header (fixed header + extensions).
    pub header_len: usize,
    /// Length of the TCP segment (payload length minus extension headers).
    pub tcp_len: usize,
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
const MAX_EXTENSIONS: usize = 4;

/// Parses an IPv6 header at the start of `buf` (which may extend past the packet).
pub fn parse(buf: &[u8]) -> Result<Ipv6Header, WireError> {
    if buf.len() < 40 {
        return Err(WireError::Truncated("IPv6"));
    }
    let version = buf[0] >> 4;
    if version != 6 {
        return Err(WireError::BadVersion(version));
    }
    let payload_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if 40 + payload_len > buf.len() {
        return Err(WireError::BadIpLength(payload_len));
    }
    let mut next = buf[6];
    let hop_limit = buf[7];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&buf[8..24]);
    dst.copy_from_slice(&buf[24..40]);
    if src[0] == 0xff || dst[0] == 0xff || dst == [0; 16] {
        return Err(WireError::BadAddress);
    }
    let end = 40 + payload_len;
    let mut off = 40;
    let mut seen = 0;
    loop {
        match next {
            6 => break,
            FRAGMENT => return Err(WireError::Fragment),
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                seen += 1;
                if seen > MAX_EXTENSIONS || off + 8 > end {
                    return Err(WireError::BadIpv6Extension);
                }
                let len = (buf[off + 1] as usize + 1) * 8;
                if off + len > end {
                    return Err(WireError::BadIpv6Extension);
                }
                next = buf[off];
                off += len;
            }
            other => return Err(WireError::NotTcp(other)),
        }
    }
    Ok(Ipv6Header {
        src,
        dst,
        hop_limit,
        header_len: off,
        tcp_len: end - off,
    })
}

/// Writes a 40-byte IPv6 header for a TCP payload of `payload_len` bytes; returns 40.
pub fn write(
    out: &mut [u8],
    src: [u8; 16],
    dst: [u8; 16],
    payload_len: usize,
    hop_limit: u8,
) -> usize {
    out[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    out[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    out[6] = 6;
    out[7] = hop_limit;
    out[8..24].copy_from_slice(&src);
    out[24..40].copy_from_slice(&dst);
    40
}
