//! Minimal, panic-free Ethernet/IP/TCP parsing: where (if anywhere) a frame's TCP payload is.

/// Location of a TCP segment's payload inside an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPayload {
    /// Offset of the first payload byte from the start of the frame.
    pub offset: usize,
    /// Payload length (0 for pure ACK/SYN/FIN/RST).
    pub len: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Returns the TCP payload location when `frame` is an unfragmented IPv4 or IPv6 TCP segment
/// (optionally behind up to two VLAN tags, IPv6 without extension headers); `None` for anything
/// else (ARP, UDP, fragments, truncated or malformed frames).
pub fn tcp_payload(frame: &[u8]) -> Option<TcpPayload> {
    let mut off = 12;
    let mut ethertype = be16(frame, off)?;
    let mut tags = 0;
    while (ethertype == 0x8100 || ethertype == 0x88a8) && tags < 2 {
        off += 4;
        ethertype = be16(frame, off)?;
        tags += 1;
    }
    let l3 = off + 2;
    let (l4, l4_end) = match ethertype {
        0x0800 => {
            let vihl = *frame.get(l3)?;
            if vihl >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(vihl & 0x0f) * 4;
            let total = usize::from(be16(frame, l3 + 2)?);
            let frag = be16(frame, l3 + 6)?;
            let proto = *frame.get(l3 + 9)?;
            // MF set or a non-zero fragment offset: not a whole segment.
            if proto != 6 || ihl < 20 || total < ihl || frag & 0x3fff != 0 {
                return None;
            }
            (l3 + ihl, l3 + total)
        }
        0x86dd => {
            if *frame.get(l3)? >> 4 != 6 || *frame.get(l3 + 6)? != 6 {
                return None;
            }
            let plen = usize::from(be16(frame, l3 + 4)?);
            (l3 + 40, l3 + 40 + plen)
        }
        _ => return None,
    };
    if l4_end > frame.len() {
        return None;
    }
    let doff = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
    if doff < 20 || l4 + doff > l4_end {
        return None;
    }
    Some(TcpPayload {
        offset: l4 + doff,
        len: l4_end - (l4 + doff),
    })
}

/// Test helper: a minimal Ethernet + IPv4 + TCP frame (no options) carrying `payload`.
/// Checksums are left zero (the relay never looks at them).
pub fn build_tcp4(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let total = (40 + payload.len()) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 77, 0, 1]);
    f[30..34].copy_from_slice(&[10, 77, 0, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5001u16.to_be_bytes());
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x10;
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ipv4_payload() {
        let f = build_tcp4(1, b"hello");
        assert_eq!(tcp_payload(&f), Some(TcpPayload { offset: 54, len: 5 }));
        // Ethernet padding past the IP total length is not payload.
        let mut padded = build_tcp4(1, b"");
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(
            tcp_payload(&padded),
            Some(TcpPayload { offset: 54, len: 0 })
        );
    }

    #[test]
    fn finds_ipv6_payload() {
        let mut f = vec![0u8; 14 + 40 + 20 + 3];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&23u16.to_be_bytes());
        f[20] = 6;
        f[54 + 12] = 5 << 4;
        assert_eq!(tcp_payload(&f), Some(TcpPayload { offset: 74, len: 3 }));
    }

    #[test]
    fn rejects_non_tcp_and_garbage() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(tcp_payload(&arp), None);
        let mut udp = build_tcp4(1, b"x");
        udp[23] = 17;
        assert_eq!(tcp_payload(&udp), None);
        let mut frag = build_tcp4(1, b"x");
        frag[20] = 0x20; // MF
        assert_eq!(tcp_payload(&frag), None);
        let f = build_tcp4(1, b"abc");
        for n in 0..f.len() {
            let _ = tcp_payload(&f[..n]);
        }
        let mut bad_doff = build_tcp4(1, b"abc");
        bad_doff[46] = 15 << 4;
        assert_eq!(tcp_payload(&bad_doff), None);
    }
}
