//! Internet checksum (RFC 1071) in software.
//!
//! The sum is accumulated over native-endian 64-bit words with an end-around carry, one
//! add-with-carry per 8 bytes (the `adc` chain of the kernel's x86 `csum_partial`; see
//! `sum_words`), and folded to 16 bits at the end. The ones'-complement sum is
//! byte-order independent (RFC 1071 section 2(B)) and 2^64 - 1 is a multiple of 2^16 - 1, so the
//! folded native value converted with `to_ne_bytes` gives the checksum bytes in network order.
//!
//! Every chunk passed to [`Checksum::add`] must start at an even offset of the checksummed
//! message; all callers here sum headers and payloads that start at even offsets.

/// A running ones'-complement sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    /// Ones'-complement sum of 64-bit words (end-around carry already applied).
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
        self.acc = add64(self.acc, sum_words(data));
    }

    /// Adds a 16-bit value given in host order, as if it were two bytes in network order.
    #[inline]
    pub fn add_u16(&mut self, v: u16) {
        self.add(&v.to_be_bytes());
    }

    /// Adds 8 bytes given as a native-endian word (e.g. `u64::from_ne_bytes` of message bytes
    /// at an even offset).
    #[inline]
    pub fn add_word(&mut self, w: u64) {
        self.acc = add64(self.acc, w);
    }

    /// Adds another running sum (of data that starts at an even offset of the message).
    #[inline]
    pub fn add_sum(&mut self, other: Checksum) {
        self.acc = add64(self.acc, other.acc);
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

/// Ones'-complement addition of two 64-bit words.
#[inline(always)]
fn add64(a: u64, b: u64) -> u64 {
    let (s, c) = a.overflowing_add(b);
    // Cannot overflow: with a carry, s <= 2^64 - 2.
    s + c as u64
}

#[inline]
fn fold16(acc: u64) -> u16 {
    let mut a = (acc & 0xffff_ffff) + (acc >> 32);
    a = (a & 0xffff_ffff) + (a >> 32);
    a = (a & 0xffff) + (a >> 16);
    a = (a & 0xffff) + (a >> 16);
    a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// Ones'-complement sum of native-endian 64-bit words; a tail shorter than 8 bytes is padded
/// with zeros. Per 64-byte block one `add` and seven `adc` with memory operands, and one more
/// `adc` that counts the block's carry out (added back at the end): 12 instructions per 64
/// bytes, against about 21 when the carry is chained from block to block in Rust.
#[inline(never)]
pub(crate) fn sum_words(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut carries = 0u64;
    let mut blocks = data.chunks_exact(64);
    for b in &mut blocks {
        let (mut s, mut c) = acc.overflowing_add(word(&b[..8]));
        for w in b[8..].chunks_exact(8) {
            (s, c) = adc(s, word(w), c);
        }
        acc = s;
        carries += c as u64;
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        let (s, c) = acc.overflowing_add(word(w));
        acc = s;
        carries += c as u64;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut b = [0u8; 8];
        b[..tail.len()].copy_from_slice(tail);
        let (s, c) = acc.overflowing_add(u64::from_ne_bytes(b));
        acc = s;
        carries += c as u64;
    }
    add64(acc, carries)
}

/// Copies `src` into `dst` (same length) and returns the ones'-complement sum of `src` (as
/// [`Checksum::add`] would add it), in one pass over the source: the kernel's
/// `csum_and_copy`, for a CPU copy that verifies the checksum while it copies (see
/// `docs/tcp.md`, "Fused copy and checksum"). Every word is loaded once, stored and added.
///
/// # Panics
///
/// If the lengths differ (a caller bug, never wire input).
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> Checksum {
    assert_eq!(dst.len(), src.len(), "copy_and_sum: lengths differ");
    let mut acc = 0u64;
    let mut carries = 0u64;
    let mut d = dst.chunks_exact_mut(64);
    let mut s = src.chunks_exact(64);
    for (db, sb) in (&mut d).zip(&mut s) {
        let w0 = word(&sb[..8]);
        db[..8].copy_from_slice(&sb[..8]);
        let (mut x, mut c) = acc.overflowing_add(w0);
        for (dw, sw) in db[8..].chunks_exact_mut(8).zip(sb[8..].chunks_exact(8)) {
            dw.copy_from_slice(sw);
            (x, c) = adc(x, word(sw), c);
        }
        acc = x;
        carries += c as u64;
    }
    let (dr, sr) = (d.into_remainder(), s.remainder());
    dr.copy_from_slice(sr);
    let mut c = Checksum {
        acc: add64(acc, carries),
    };
    c.add(sr);
    c
}

/// [`copy_and_sum`] when `sum`, else a plain copy (and an empty sum): what a
/// [`crate::tcp::DirectReader`] does with the payload it takes.
#[inline]
pub fn copy_maybe_sum(dst: &mut [u8], src: &[u8], sum: bool) -> Checksum {
    if sum {
        copy_and_sum(dst, src)
    } else {
        dst.copy_from_slice(src);
        Checksum::new()
    }
}

/// `a + b + c` and the carry out (`u64::carrying_add`, which is newer than our MSRV). Written
/// this way (`|`, the incoming carry added second), LLVM turns a run of them into one `adc`
/// chain.
#[inline(always)]
fn adc(a: u64, b: u64, c: bool) -> (u64, bool) {
    let (s, c1) = a.overflowing_add(b);
    let (s, c2) = s.overflowing_add(c as u64);
    (s, c1 | c2)
}

#[inline(always)]
fn word(w: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(w);
    u64::from_ne_bytes(b)
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
        let big: Vec<u8> = (0..9100u32)
            .map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8)
            .collect();
        for len in [0, 1, 63, 64, 65, 1480, 1481, 8999, 9000, 9100] {
            assert_eq!(checksum(&big[..len]), reference(&big[..len]), "len {len}");
            // Split at even offsets, in any number of pieces, the sum is the same.
            for cut in [0usize, 2, 8, 62, 64, 66] {
                let cut = cut.min(len & !1);
                let mut c = Checksum::new();
                c.add(&big[..cut]);
                c.add(&big[cut..len]);
                assert_eq!(c.finish(), reference(&big[..len]), "len {len} cut {cut}");
            }
        }
        // Carries out of every word.
        let ff = vec![0xffu8; 1500];
        for len in [8, 16, 64, 128, 1500] {
            assert_eq!(checksum(&ff[..len]), reference(&ff[..len]));
        }
    }

    #[test]
    fn copy_and_sum_copies_and_sums() {
        let src: Vec<u8> = (0..9100u32).map(|i| ((i * 40503) >> 7) as u8).collect();
        for len in [0, 1, 7, 8, 63, 64, 65, 127, 1448, 1449, 8948, 9100] {
            let mut dst = vec![0u8; len];
            let c = copy_and_sum(&mut dst, &src[..len]);
            assert_eq!(dst, &src[..len]);
            let mut r = Checksum::new();
            r.add(&src[..len]);
            assert_eq!(c.sum(), r.sum(), "len {len}");
            assert_eq!(c.finish(), reference(&src[..len]));
        }
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
