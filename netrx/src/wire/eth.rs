//! Ethernet II with at most one 802.1Q tag.

use super::WireError;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// Ethernet header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthHeader {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// The 802.1Q tag control information (PCP, DEI, VID) when the frame carried one tag.
    pub vlan: Option<u16>,
    /// The ethertype after the tag, if any.
    pub ethertype: u16,
}

impl EthHeader {
    /// Header length on the wire.
    pub fn len(&self) -> usize {
        if self.vlan.is_some() {
            18
        } else {
            14
        }
    }
    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Parses the Ethernet header; returns it and the offset of the layer-3 header.
pub fn parse(frame: &[u8]) -> Result<(EthHeader, usize), WireError> {
    if frame.len() < 14 {
        return Err(WireError::Truncated("Ethernet"));
    }
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    let ty = u16::from_be_bytes([frame[12], frame[13]]);
    if ty == ETHERTYPE_VLAN || ty == ETHERTYPE_QINQ {
        if frame.len() < 18 {
            return Err(WireError::Truncated("802.1Q"));
        }
        let tci = u16::from_be_bytes([frame[14], frame[15]]);
        let inner = u16::from_be_bytes([frame[16], frame[17]]);
        if inner == ETHERTYPE_VLAN || inner == ETHERTYPE_QINQ || ty == ETHERTYPE_QINQ {
            return Err(WireError::StackedVlan);
        }
        Ok((
            EthHeader {
                dst,
                src,
                vlan: Some(tci),
                ethertype: inner,
            },
            18,
        ))
    } else {
        Ok((
            EthHeader {
                dst,
                src,
                vlan: None,
                ethertype: ty,
            },
            14,
        ))
    }
}

/// Writes an Ethernet header into `out` (which must hold `hdr.len()` bytes); returns its length.
pub fn write(hdr: &EthHeader, out: &mut [u8]) -> usize {
    out[0..6].copy_from_slice(&hdr.dst);
    out[6..12].copy_from_slice(&hdr.src);
    match hdr.vlan {
        Some(tci) => {
            out[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            out[14..16].copy_from_slice(&tci.to_be_bytes());
            out[16..18].copy_from_slice(&hdr.ethertype.to_be_bytes());
            18
        }
        None => {
            out[12..14].copy_from_slice(&hdr.ethertype.to_be_bytes());
            14
        }
    }
}
