//! Hardware descriptors: 64-byte, little-endian, linked through `next` (facts §1.2).
//!
//! Copy, fill and null descriptors share one layout; they differ in the opcode, in what the
//! third qword means (source address for copy, the 64-bit pattern for fill) and in the `null`
//! control bit.

/// Size of every descriptor, and the alignment CHAINADDR and `next` must have (rule A1).
pub const DESC_SIZE: usize = 64;

/// Opcodes (control bits 31:24).
pub mod op {
    pub const COPY: u8 = 0x00;
    pub const FILL: u8 = 0x01;
    pub const XOR: u8 = 0x87;
    pub const XOR_VAL: u8 = 0x88;
    pub const PQ: u8 = 0x89;
    pub const PQ_VAL: u8 = 0x8a;
    pub const PQ_UP: u8 = 0x8b;
    pub const PQ_16S: u8 = 0xa0;
    pub const PQ_VAL_16S: u8 = 0xa1;
    /// Deprecated ops that v3 hardware aborts on (rule O1).
    pub const OLD_XOR: u8 = 0x85;
    pub const OLD_XOR_VAL: u8 = 0x86;
}

/// Descriptor control word (`ctl`) with bit builders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Ctl(pub u32);

impl Ctl {
    pub const INT_EN: u32 = 1 << 0;
    pub const SRC_SNOOP_DIS: u32 = 1 << 1;
    pub const DEST_SNOOP_DIS: u32 = 1 << 2;
    pub const COMPL_WRITE: u32 = 1 << 3;
    pub const FENCE: u32 = 1 << 4;
    pub const NULL: u32 = 1 << 5;
    pub const SRC_BRK: u32 = 1 << 6;
    pub const DEST_BRK: u32 = 1 << 7;
    pub const BUNDLE: u32 = 1 << 8;
    pub const DEST_DCA: u32 = 1 << 9;
    pub const HINT: u32 = 1 << 10;
    /// Bits 11-23 are reserved and must be zero.
    pub const RESERVED_MASK: u32 = 0x00ff_f800;
    pub const OP_SHIFT: u32 = 24;

    pub const fn op(op: u8) -> Self {
        Ctl((op as u32) << Self::OP_SHIFT)
    }
    pub const fn copy() -> Self {
        Self::op(op::COPY)
    }
    pub const fn fill() -> Self {
        Self::op(op::FILL)
    }
    /// A null descriptor: a copy opcode with the `null` bit; moves no data.
    pub const fn null() -> Self {
        Ctl(Self::op(op::COPY).0 | Self::NULL)
    }
    pub const fn int_en(self, on: bool) -> Self {
        self.with(Self::INT_EN, on)
    }
    pub const fn compl_write(self, on: bool) -> Self {
        self.with(Self::COMPL_WRITE, on)
    }
    pub const fn fence(self, on: bool) -> Self {
        self.with(Self::FENCE, on)
    }
    pub const fn with(self, bit: u32, on: bool) -> Self {
        if on {
            Ctl(self.0 | bit)
        } else {
            Ctl(self.0 & !bit)
        }
    }
    pub const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    pub const fn opcode(self) -> u8 {
        (self.0 >> Self::OP_SHIFT) as u8
    }
    pub const fn is_null(self) -> bool {
        self.has(Self::NULL)
    }
}

/// One hardware descriptor as the device reads it.
///
/// For a copy: `src` is the source IOVA. For a fill: `src` is the 64-bit pattern and `rsv2`
/// is `next_dst_addr` (unused here). `user1`/`user2` are driver scratch the device ignores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct HwDescriptor {
    pub size: u32,
    pub ctl: Ctl,
    pub src: u64,
    pub dst: u64,
    pub next: u64,
    pub rsv1: u64,
    pub rsv2: u64,
    pub user1: u64,
    pub user2: u64,
}

const _: () = assert!(std::mem::size_of::<HwDescriptor>() == DESC_SIZE);
const _: () = assert!(std::mem::align_of::<HwDescriptor>() == DESC_SIZE);
const _: () = assert!(std::mem::offset_of!(HwDescriptor, src) == 0x08);
const _: () = assert!(std::mem::offset_of!(HwDescriptor, next) == 0x18);
const _: () = assert!(std::mem::offset_of!(HwDescriptor, user1) == 0x30);

impl HwDescriptor {
    /// A memcpy of `size` bytes from `src` to `dst` (IOVAs). `next` is left to the ring.
    pub const fn copy(size: u32, src: u64, dst: u64, ctl: Ctl) -> Self {
        HwDescriptor {
            size,
            ctl,
            src,
            dst,
            next: 0,
            rsv1: 0,
            rsv2: 0,
            user1: 0,
            user2: 0,
        }
    }

    /// A block fill of `size` bytes at `dst` with the repeated 64-bit `pattern`.
    pub const fn fill(size: u32, pattern: u64, dst: u64, ctl: Ctl) -> Self {
        HwDescriptor::copy(size, pattern, dst, ctl)
    }

    /// A null descriptor. Its size must still be non-zero (rule S1: "channel returns error when
    /// size is 0"); Linux uses 1, SPDK and FreeBSD 8. We use 8.
    pub const fn null(ctl: Ctl) -> Self {
        HwDescriptor::copy(NULL_DESC_SIZE, 0, 0, Ctl(ctl.0 | Ctl::NULL))
    }

    /// The descriptor's bytes in device (little-endian) order.
    pub fn to_le_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..4].copy_from_slice(&self.size.to_le_bytes());
        b[4..8].copy_from_slice(&self.ctl.0.to_le_bytes());
        for (i, q) in [
            self.src, self.dst, self.next, self.rsv1, self.rsv2, self.user1, self.user2,
        ]
        .iter()
        .enumerate()
        {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&q.to_le_bytes());
        }
        b
    }

    /// Parses a descriptor from device-order bytes (what the model reads from memory).
    pub fn from_le_bytes(b: &[u8; DESC_SIZE]) -> Self {
        let q = |i: usize| u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().unwrap());
        HwDescriptor {
            size: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            ctl: Ctl(u32::from_le_bytes(b[4..8].try_into().unwrap())),
            src: q(0),
            dst: q(1),
            next: q(2),
            rsv1: q(3),
            rsv2: q(4),
            user1: q(5),
            user2: q(6),
        }
    }
}

/// Size written into null descriptors.
pub const NULL_DESC_SIZE: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_builders() {
        let c = Ctl::copy().compl_write(true).int_en(true).fence(true);
        assert_eq!(c.0, 0b11001);
        assert_eq!(c.opcode(), op::COPY);
        assert_eq!(Ctl::fill().opcode(), op::FILL);
        assert!(Ctl::null().is_null());
        assert!(!c.compl_write(false).has(Ctl::COMPL_WRITE));
    }

    #[test]
    fn bytes_roundtrip() {
        let mut d = HwDescriptor::copy(4096, 0x1000, 0x2000, Ctl::copy().compl_write(true));
        d.next = 0x40;
        d.user1 = 7;
        let b = d.to_le_bytes();
        assert_eq!(&b[0..4], &4096u32.to_le_bytes());
        assert_eq!(&b[0x18..0x20], &0x40u64.to_le_bytes());
        assert_eq!(HwDescriptor::from_le_bytes(&b), d);
    }

    #[test]
    fn null_desc_has_nonzero_size() {
        let d = HwDescriptor::null(Ctl::copy().compl_write(true));
        assert!(d.size > 0 && d.ctl.is_null());
    }
}
