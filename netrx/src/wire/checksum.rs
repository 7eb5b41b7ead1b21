//! Internet checksum (RFC 1071) in software.
//!
//! The sum is accumulated over native-endian 32-bit words into a 64-bit accumulator (no carry
//! handling inside the loop, which lets the compiler vectorise it) and folded at the end. The
//! ones'-complement sum is byte-order independent (RFC 1071 section 2(B)), so the folded native
//! value converted with `to_ne_bytes` gives the checksum bytes in network order.
//!
//! Every chunk passed to [`Checksum::add`] must start at an even offset of the checksummed
//! message; all callers here sum headers and payloads that start at even offsets.

/// A running ones'-complement sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    acc: u64,
}

impl Checksum {
    /// An empty sum.
    pub const fn new() -> Self {
        Checksum { acc: 0 }
    }

    /// Adds `data` (which must start at an even offset of the message).
    #[inline]
    pub fn add(&mut self, data: &[u8]) {
        self.acc = fold64(self.acc) + sum_words(data);
    }

    /// Adds a 16-bit value given in host order, as if it were two bytes in network order.
    #[inline]
    pub fn add_u16(&mut self, v: u16) {
        self.add(&v.to_be_bytes());
    }

    /// The folded 16-bit sum in network order (not complemented).
    #[inline]
    pub fn sum(&self) -> u16 {
        let folded = fold16(self.acc);
        u16::from_be_bytes(folded.to_ne_bytes())
    }

    /// The checksum field value (complement of the sum), in host order.
    #[inline]
    pub fn finish(&self) -> u16 {
        !self.sum()
    }

    /// True when the message, with its checksum field included, sums to all ones.
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.sum() == 0xffff
    }
}

#[inline]
fn fold64(acc: u64) -> u64 {
    // Keeps the accumulator below 2^33 so that adding a sum of up to 2^31 words cannot overflow.
    let a = (acc & 0xffff_ffff) + (acc >> 32);
    (a & 0xffff_ffff) + (a >> 32)
}

#[inline]
fn fold16(acc: u64) -> u16 {
    let mut a = fold64(acc);
    a = (a & 0xffff) + (a >> 16);
    a = (a & 0xffff) + (a >> 16);
    a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// Sum of native-endian 32-bit words; a tail shorter than 4 bytes is padded with zeros.
#[inline]
fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(32);
    let mut s = [0u64; 4];
    for c in &mut chunks {
        // 8 words per iteration, four independent accumulators.
        for (i, w) in c.chunks_exact(4).enumerate() {
            s[i & 3] += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
    }
    let mut total = s[0] + s[1] + s[2] + s[3];
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(4);
    for w in &mut words {
        total += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut b = [0u8; 4];
        b[..tail.len()].copy_from_slice(tail);
        total += u32::from_ne_bytes(b) as u64;
    }
    total
}

/// Checksum of `data` alone (e.g. an IPv4 header with its checksum field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    let mut c = Checksum::new();
    c.add(data);
    c.finish()
}

/// Incrementally updates a checksum field (host order) when a 32-bit field changes from `old` to
/// `new` (RFC 1624, eqn. 3).
pub fn update_u32(field: u16, old: u32, new: u32) -> u16 {
    let mut acc: u64 = (!field) as u64;
    acc += (!(old >> 16) & 0xffff) as u64 + (!old & 0xffff) as u64;
    acc += (new >> 16) as u64 + (new & 0xffff) as u64;
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += w as u32;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn matches_reference_for_all_small_lengths() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8 ^ 0xa5).collect();
        for len in 0..data.len() {
            assert_eq!(checksum(&data[..len]), reference(&data[..len]), "len {len}");
        }
        let ones = vec![0xffu8; 4001];
        assert_eq!(checksum(&ones), reference(&ones));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of 0001 f203 f4f5 f6f7 is ddf2.
        let mut c = Checksum::new();
        c.add(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(c.sum(), 0xddf2);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut data = [0u8; 40];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 13) as u8;
        }
        let before = checksum(&data);
        let old = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let new = old.wrapping_add(0x1234_5678);
        data[4..8].copy_from_slice(&new.to_be_bytes());
        assert_eq!(update_u32(before, old, new), checksum(&data));
    }
}
