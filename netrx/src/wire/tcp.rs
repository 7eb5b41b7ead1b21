//! TCP header and options (MSS, window scale, SACK-permitted, SACK, timestamps).

use super::WireError;

/// TCP flags (the low 8 bits of byte 13; NS is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn psh(self) -> bool {
        self.0 & Self::PSH != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// Maximum number of SACK blocks in one segment.
pub const MAX_SACK_BLOCKS: usize = 4;

/// Parsed TCP options. Unknown options are skipped; a malformed option list is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    /// SACK blocks (left, right) in the order they appeared.
    pub sack: [(u32, u32); MAX_SACK_BLOCKS],
    pub sack_count: u8,
    /// Timestamps (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
}

impl TcpOptions {
    /// The SACK blocks present.
    pub fn sack_blocks(&self) -> &[(u32, u32)] {
        &self.sack[..self.sack_count as usize]
    }
}

/// TCP header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// The raw (unscaled) window field.
    pub window: u16,
    pub urgent: u16,
    /// Header length including options.
    pub header_len: usize,
    pub options: TcpOptions,
}

/// Parses a TCP header at the start of `seg` (exactly the TCP segment).
pub fn parse(seg: &[u8]) -> Result<TcpHeader, WireError> {
    if seg.len() < 20 {
        return Err(WireError::Truncated("TCP"));
    }
    let header_len = ((seg[12] >> 4) as usize) * 4;
    if header_len < 20 || header_len > seg.len() {
        return Err(WireError::BadTcpDataOffset(header_len));
    }
    let options = parse_options(&seg[20..header_len])?;
    Ok(TcpHeader {
        src_port: u16::from_be_bytes([seg[0], seg[1]]),
        dst_port: u16::from_be_bytes([seg[2], seg[3]]),
        seq: u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]),
        ack: u32::from_be_bytes([seg[8], seg[9], seg[10], seg[11]]),
        flags: TcpFlags(seg[13]),
        window: u16::from_be_bytes([seg[14], seg[15]]),
        urgent: u16::from_be_bytes([seg[18], seg[19]]),
        header_len,
        options,
    })
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses an option list (the bytes between the fixed header and the data).
pub fn parse_options(mut opts: &[u8]) -> Result<TcpOptions, WireError> {
    let mut o = TcpOptions::default();
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => {
                opts = &opts[1..];
                continue;
            }
            _ => {}
        }
        if opts.len() < 2 {
            return Err(WireError::BadTcpOption);
        }
        let len = opts[1] as usize;
        if len < 2 || len > opts.len() {
            return Err(WireError::BadTcpOption);
        }
        let body = &opts[2..len];
        match kind {
            2 => {
                if len != 4 {
                    return Err(WireError::BadTcpOption);
                }
                o.mss = Some(u16::from_be_bytes([body[0], body[1]]));
            }
            3 => {
                if len != 3 {
                    return Err(WireError::BadTcpOption);
                }
                // RFC 7323 2.3: a shift above 14 is used as 14.
                o.window_scale = Some(body[0].min(14));
            }
            4 => {
                if len != 2 {
                    return Err(WireError::BadTcpOption);
                }
                o.sack_permitted = true;
            }
            5 => {
                if body.is_empty() || body.len() % 8 != 0 || body.len() / 8 > MAX_SACK_BLOCKS {
                    return Err(WireError::BadTcpOption);
                }
                for (i, b) in body.chunks_exact(8).enumerate() {
                    o.sack[i] = (be32(&b[0..4]), be32(&b[4..8]));
                }
                o.sack_count = (body.len() / 8) as u8;
            }
            8 => {
                if len != 10 {
                    return Err(WireError::BadTcpOption);
                }
                o.timestamps = Some((be32(&body[0..4]), be32(&body[4..8])));
            }
            _ => {}
        }
        opts = &opts[len..];
    }
    Ok(o)
}

/// Options the endpoint writes into the segments it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionsOut {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<(u32, u32)>,
    pub sack: [(u32, u32); MAX_SACK_BLOCKS],
    pub sack_count: u8,
}

impl OptionsOut {
    /// Writes the options (NOP-padded to a multiple of 4) into `out`; returns the length.
    /// At most 40 bytes are written: SACK blocks that do not fit are left out.
    pub fn write(&self, out: &mut [u8; 40]) -> usize {
        let mut n = 0;
        if let Some(mss) = self.mss {
            out[n..n + 4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            n += 4;
        }
        if self.sack_permitted && self.timestamps.is_some() {
            // The Linux layout: SACK-permitted then timestamps, 12 bytes.
            out[n..n + 2].copy_from_slice(&[4, 2]);
            n += 2;
        } else if self.sack_permitted {
            out[n..n + 4].copy_from_slice(&[1, 1, 4, 2]);
            n += 4;
        }
        if let Some((val, ecr)) = self.timestamps {
            if !self.sack_permitted {
                out[n..n + 2].copy_from_slice(&[1, 1]);
                n += 2;
            }
            out[n] = 8;
            out[n + 1] = 10;
            out[n + 2..n + 6].copy_from_slice(&val.to_be_bytes());
            out[n + 6..n + 10].copy_from_slice(&ecr.to_be_bytes());
            n += 10;
        }
        if let Some(ws) = self.window_scale {
            out[n..n + 4].copy_from_slice(&[1, 3, 3, ws]);
            n += 4;
        }
        let room = (40 - n).saturating_sub(4) / 8;
        let blocks = (self.sack_count as usize).min(room);
        if blocks > 0 {
            out[n..n + 4].copy_from_slice(&[1, 1, 5, (2 + 8 * blocks) as u8]);
            n += 4;
            for &(l, r) in &self.sack[..blocks] {
                out[n..n + 4].copy_from_slice(&l.to_be_bytes());
                out[n + 4..n + 8].copy_from_slice(&r.to_be_bytes());
                n += 8;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_roundtrip() {
        let mut o = OptionsOut {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some((11, 22)),
            ..Default::default()
        };
        let mut buf = [0u8; 40];
        let n = o.write(&mut buf);
        assert_eq!(n % 4, 0);
        let p = parse_options(&buf[..n]).unwrap();
        assert_eq!(p.mss, Some(1460));
        assert_eq!(p.window_scale, Some(7));
        assert!(p.sack_permitted);
        assert_eq!(p.timestamps, Some((11, 22)));

        o = OptionsOut {
            timestamps: Some((1, 2)),
            ..Default::default()
        };
        o.sack = [(1, 2), (3, 4), (5, 6), (7, 8)];
        o.sack_count = 4;
        let n = o.write(&mut buf);
        let p = parse_options(&buf[..n]).unwrap();
        assert_eq!(
            p.sack_blocks(),
            &[(1, 2), (3, 4), (5, 6)],
            "3 blocks fit beside timestamps"
        );
        o.timestamps = None;
        let n = o.write(&mut buf);
        let p = parse_options(&buf[..n]).unwrap();
        assert_eq!(p.sack_count, 4);
    }

    #[test]
    fn malformed_options_are_errors() {
        assert!(parse_options(&[2]).is_err());
        assert!(parse_options(&[2, 0]).is_err());
        assert!(parse_options(&[2, 5, 0, 0]).is_err());
        assert!(parse_options(&[5, 3, 0]).is_err());
        assert!(parse_options(&[8, 10, 0, 0]).is_err());
        assert_eq!(
            parse_options(&[1, 1, 0, 99]).unwrap(),
            TcpOptions::default()
        );
        assert_eq!(parse_options(&[3, 3, 200]).unwrap().window_scale, Some(14));
    }
}
