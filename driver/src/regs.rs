//! I/OAT (Crystal Beach DMA) v3.0-3.4 register map and the register-access trait.
//!
//! Offsets and bits follow Linux `drivers/dma/ioat/registers.h` (see `docs/driver.md` for the
//! register facts and their sources). General registers live at the start of
//! BAR0; channel `n` has its registers at `0x80 * (n + 1)`.

/// Register access at BAR0 offsets (and PCI config space for the few config registers the
/// driver needs). Two implementations: the VFIO BAR mapping and the software device model.
/// Driver logic is generic over this trait and never knows which one it drives.
///
/// Every method takes `&self`: MMIO has interior mutability by nature, and the model guards its
/// register file internally.
pub trait RegisterAccess: Send + Sync {
    fn read8(&self, off: u32) -> u8;
    fn read16(&self, off: u32) -> u16;
    fn read32(&self, off: u32) -> u32;
    fn write8(&self, off: u32, val: u8);
    fn write16(&self, off: u32, val: u16);
    fn write32(&self, off: u32, val: u32);

    /// 64-bit register read, low dword first, as pre-3.3 parts require (rules W3, W5).
    fn read64(&self, off: u32) -> u64 {
        let lo = self.read32(off) as u64;
        let hi = self.read32(off + 4) as u64;
        (hi << 32) | lo
    }

    /// 64-bit register write as two 32-bit halves, low half first (rules W1, W3): the form
    /// every source's driver accepts on every CB version.
    fn write64(&self, off: u32, val: u64) {
        self.write32(off, val as u32);
        self.write32(off + 4, (val >> 32) as u32);
    }

    /// PCI configuration space read (dword). Used for CHANERR_INT on CB < 3.3.
    fn config_read32(&self, off: u16) -> u32;
    /// PCI configuration space write (dword).
    fn config_write32(&self, off: u16, val: u32);
}

impl<T: RegisterAccess + ?Sized> RegisterAccess for std::sync::Arc<T> {
    fn read8(&self, off: u32) -> u8 {
        (**self).read8(off)
    }
    fn read16(&self, off: u32) -> u16 {
        (**self).read16(off)
    }
    fn read32(&self, off: u32) -> u32 {
        (**self).read32(off)
    }
    fn write8(&self, off: u32, val: u8) {
        (**self).write8(off, val)
    }
    fn write16(&self, off: u32, val: u16) {
        (**self).write16(off, val)
    }
    fn write32(&self, off: u32, val: u32) {
        (**self).write32(off, val)
    }
    fn read64(&self, off: u32) -> u64 {
        (**self).read64(off)
    }
    fn write64(&self, off: u32, val: u64) {
        (**self).write64(off, val)
    }
    fn config_read32(&self, off: u16) -> u32 {
        (**self).config_read32(off)
    }
    fn config_write32(&self, off: u16, val: u32) {
        (**self).config_write32(off, val)
    }
}

/// PCI vendor ID of every I/OAT function.
pub const PCI_VENDOR_INTEL: u16 = 0x8086;

/// PCI configuration-space registers.
pub mod pci {
    /// Legacy DMA control (DMA_EN bit 0, MSI_EN bit 1).
    pub const DMACTRL: u16 = 0x48;
    /// Uncorrectable error status; bit 0x10 is the TBG0 spurious parity error (rule E3).
    pub const DMAUNCERRSTS: u16 = 0x148;
    /// Internal channel error (W1C), only on CB < 3.3 (rules E2, V4).
    pub const CHANERR_INT: u16 = 0x180;
    /// Internal channel error mask.
    pub const CHANERRMASK_INT: u16 = 0x184;
    /// PCI COMMAND register.
    pub const COMMAND: u16 = 0x04;
    pub const COMMAND_MEMORY: u16 = 0x0002;
    pub const COMMAND_MASTER: u16 = 0x0004;
    pub const COMMAND_INTX_DISABLE: u16 = 0x0400;
}

/// Device-global registers at the start of BAR0: `(offset, width in bytes)`.
pub mod general {
    pub const CHANCNT: u32 = 0x00; // 8
    pub const XFERCAP: u32 = 0x01; // 8
    pub const GENCTRL: u32 = 0x02; // 8
    pub const INTRCTRL: u32 = 0x03; // 8
    pub const ATTNSTATUS: u32 = 0x04; // 32
    pub const CBVER: u32 = 0x08; // 8
    pub const PERPORTOFFSET: u32 = 0x0A; // 16
    pub const INTRDELAY: u32 = 0x0C; // 16
    pub const CS_STATUS: u32 = 0x0E; // 16
    pub const DMACAPABILITY: u32 = 0x10; // 32
    pub const DCAOFFSET: u32 = 0x14; // 16
    pub const PREFETCH_LIMIT: u32 = 0x4C; // 8, CB3.4 with DPS

    /// CHANCNT and XFERCAP: only bits [4:0] are meaningful.
    pub const FIELD_MASK_5: u8 = 0x1f;

    pub const INTRCTRL_MASTER_INT_EN: u8 = 0x01;
    pub const INTRCTRL_INT_STATUS: u8 = 0x02;
    pub const INTRCTRL_INT: u8 = 0x04;
    pub const INTRCTRL_MSIX_VECTOR_CONTROL: u8 = 0x08;

    pub const INTRDELAY_MASK: u16 = 0x3fff;
    pub const INTRDELAY_COALESCE_SUPPORT: u16 = 0x8000;
}

/// DMACAPABILITY bits.
pub mod cap {
    pub const PAGE_BREAK: u32 = 0x1;
    pub const CRC: u32 = 0x2;
    pub const SKIP_MARKER: u32 = 0x4;
    pub const DCA: u32 = 0x10;
    pub const CRC_MOVE: u32 = 0x20;
    pub const FILL_BLOCK: u32 = 0x40;
    pub const APIC: u32 = 0x80;
    pub const XOR: u32 = 0x100;
    pub const PQ: u32 = 0x200;
    pub const DWBES: u32 = 0x2000;
    pub const RAID16SS: u32 = 0x20000;
    pub const DPS: u32 = 0x80_0000;
}

/// Size of one channel's register window, and where channel `n` starts.
pub const CHANNEL_MMIO_SIZE: u32 = 0x80;

/// BAR0 offset of channel `n`'s register block.
pub const fn channel_base(n: u32) -> u32 {
    CHANNEL_MMIO_SIZE * (n + 1)
}

/// Per-channel registers, as offsets from [`channel_base`].
pub mod chan {
    pub const CHANCTRL: u32 = 0x00; // 16
    pub const DMA_COMP: u32 = 0x02; // 16
    pub const CHANCMD: u32 = 0x04; // 8
    pub const DMACOUNT: u32 = 0x06; // 16
    pub const CHANSTS: u32 = 0x08; // 64
    pub const CHAINADDR: u32 = 0x10; // 64
    pub const CHANCMP: u32 = 0x18; // 64
    pub const CDAR: u32 = 0x20; // 64
    pub const CHANERR: u32 = 0x28; // 32, W1C
    pub const CHANERR_MASK: u32 = 0x2C; // 32
    pub const DCACTRL: u32 = 0x30; // 32
    pub const DRSCTL: u32 = 0xB6; // 16, CB3.4
    pub const LTR_SWSEL: u32 = 0xBC; // 8, CB3.4
    pub const LTR_ACTIVE: u32 = 0xC0; // 32, CB3.4
    pub const LTR_IDLE: u32 = 0xC4; // 32, CB3.4
}

/// CHANCTRL bits.
pub mod chanctrl {
    pub const INT_REARM: u16 = 0x0001;
    pub const ERR_COMPLETION_EN: u16 = 0x0004;
    pub const ANY_ERR_ABORT_EN: u16 = 0x0008;
    pub const ERR_INT_EN: u16 = 0x0010;
    pub const DESCRIPTOR_ADDR_SNOOP_CONTROL: u16 = 0x0020;
    pub const CHANNEL_IN_USE: u16 = 0x0100;
    pub const COMPL_DCA_EN: u16 = 0x0200;
    pub const PRIORITY_MASK: u16 = 0xF000;
    /// What Linux writes (`IOAT_CHANCTRL_RUN`).
    pub const RUN: u16 = INT_REARM | ERR_INT_EN | ERR_COMPLETION_EN | ANY_ERR_ABORT_EN;
}

/// CHANCMD bits (v2+ layout).
pub mod chancmd {
    pub const START: u8 = 0x01;
    pub const APPEND: u8 = 0x02;
    pub const SUSPEND: u8 = 0x04;
    pub const ABORT: u8 = 0x08;
    pub const RESUME: u8 = 0x10;
    pub const RESET: u8 = 0x20;
}

/// CHANSTS fields; the completion writeback word has the same format.
pub mod chansts {
    pub const STATUS_MASK: u64 = 0x7;
    pub const UNAFFILIATED_ERR: u64 = 0x8;
    pub const SOFT_ERR: u64 = 0x10;
    /// Bits 63:6 hold the address of the last completed descriptor.
    pub const COMPLETED_ADDR_MASK: u64 = !0x3f;
}

/// The channel state in CHANSTS bits [2:0].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChanState {
    Active,
    Done,
    Suspended,
    Halted,
    Armed,
    /// A value no source defines (5..=7).
    Unknown(u8),
}

impl ChanState {
    pub const fn from_bits(v: u64) -> Self {
        match (v & chansts::STATUS_MASK) as u8 {
            0 => ChanState::Active,
            1 => ChanState::Done,
            2 => ChanState::Suspended,
            3 => ChanState::Halted,
            4 => ChanState::Armed,
            x => ChanState::Unknown(x),
        }
    }

    pub const fn bits(self) -> u64 {
        match self {
            ChanState::Active => 0,
            ChanState::Done => 1,
            ChanState::Suspended => 2,
            ChanState::Halted => 3,
            ChanState::Armed => 4,
            ChanState::Unknown(x) => x as u64 & chansts::STATUS_MASK,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            ChanState::Active => "ACTIVE",
            ChanState::Done => "DONE",
            ChanState::Suspended => "SUSPENDED",
            ChanState::Halted => "HALTED",
            ChanState::Armed => "ARMED",
            ChanState::Unknown(_) => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ChanState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChanState::Unknown(x) => write!(f, "UNKNOWN({x})"),
            s => f.write_str(s.name()),
        }
    }
}

/// CHANERR bits (Linux names; see the hardware rules §12 for where sources disagree).
pub mod chanerr {
    pub const SRC_ADDR: u32 = 0x1;
    pub const DEST_ADDR: u32 = 0x2;
    pub const NEXT_ADDR: u32 = 0x4;
    pub const NEXT_DESC_ALIGN: u32 = 0x8;
    pub const CHAIN_ADDR_VALUE: u32 = 0x10;
    pub const CHANCMD: u32 = 0x20;
    pub const CHIPSET_UNCORRECTABLE_DATA_INTEGRITY: u32 = 0x40;
    pub const DMA_UNCORRECTABLE_DATA_INTEGRITY: u32 = 0x80;
    pub const READ_DATA: u32 = 0x100;
    pub const WRITE_DATA: u32 = 0x200;
    pub const CONTROL: u32 = 0x400;
    pub const LENGTH: u32 = 0x800;
    pub const COMPLETION_ADDR: u32 = 0x1000;
    pub const INT_CONFIGURATION: u32 = 0x2000;
    pub const SOFT: u32 = 0x4000;
    pub const UNAFFILIATED: u32 = 0x8000;
    pub const XOR_P_OR_CRC: u32 = 0x10000;
    pub const XOR_Q: u32 = 0x20000;
    pub const DESCRIPTOR_COUNT: u32 = 0x40000;

    /// `(bit, short name, description)` for every named bit, lowest first.
    pub const NAMES: &[(u32, &str, &str)] = &[
        (SRC_ADDR, "SRC_ADDR", "DMA transfer source address error"),
        (
            DEST_ADDR,
            "DEST_ADDR",
            "DMA transfer destination address error",
        ),
        (NEXT_ADDR, "NEXT_ADDR", "next descriptor address error"),
        (
            NEXT_DESC_ALIGN,
            "NEXT_DESC_ALIGN",
            "descriptor error (next descriptor alignment)",
        ),
        (
            CHAIN_ADDR_VALUE,
            "CHAIN_ADDR_VALUE",
            "chain address value error",
        ),
        (CHANCMD, "CHANCMD", "CHANCMD error"),
        (
            CHIPSET_UNCORRECTABLE_DATA_INTEGRITY,
            "CHIPSET_UNCORR_DATA",
            "chipset uncorrectable data integrity error",
        ),
        (
            DMA_UNCORRECTABLE_DATA_INTEGRITY,
            "DMA_UNCORR_DATA",
            "DMA uncorrectable data integrity error",
        ),
        (READ_DATA, "READ_DATA", "read data error"),
        (WRITE_DATA, "WRITE_DATA", "write data error"),
        (CONTROL, "CONTROL", "descriptor control error"),
        (LENGTH, "LENGTH", "descriptor transfer size error"),
        (
            COMPLETION_ADDR,
            "COMPLETION_ADDR",
            "completion address error",
        ),
        (
            INT_CONFIGURATION,
            "INT_CONFIGURATION",
            "interrupt configuration error",
        ),
        (
            SOFT,
            "SOFT",
            "soft error (super extended descriptor address error)",
        ),
        (UNAFFILIATED, "UNAFFILIATED", "unaffiliated error"),
        (XOR_P_OR_CRC, "XOR_P_OR_CRC", "CRC or XOR P error"),
        (XOR_Q, "XOR_Q", "XOR Q error"),
        (
            DESCRIPTOR_COUNT,
            "DESCRIPTOR_COUNT",
            "descriptor count error",
        ),
    ];
}

/// A CHANERR value decoded into named bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ChanErr(pub u32);

impl ChanErr {
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    /// Short names of the set bits, lowest first; unnamed bits appear as `BIT<n>`.
    pub fn names(self) -> Vec<String> {
        let mut out = Vec::new();
        for bit in 0..32 {
            let m = 1u32 << bit;
            if self.0 & m == 0 {
                continue;
            }
            match chanerr::NAMES.iter().find(|(b, _, _)| *b == m) {
                Some((_, name, _)) => out.push((*name).to_string()),
                None => out.push(format!("BIT{bit}")),
            }
        }
        out
    }
}

impl std::fmt::Display for ChanErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        write!(f, "{:#x} [{}]", self.0, self.names().join("|"))
    }
}

/// CBVER decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CbVersion(pub u8);

impl CbVersion {
    pub const V3_0: CbVersion = CbVersion(0x30);
    pub const V3_2: CbVersion = CbVersion(0x32);
    pub const V3_3: CbVersion = CbVersion(0x33);
    pub const V3_4: CbVersion = CbVersion(0x34);

    pub const fn major(self) -> u8 {
        self.0 >> 4
    }
    pub const fn minor(self) -> u8 {
        self.0 & 0xf
    }
    /// CHANERR_INT exists in config space only below 3.3 (rule E2).
    pub const fn has_chanerr_int(self) -> bool {
        self.0 < 0x33
    }
}

impl std::fmt::Display for CbVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_bases() {
        assert_eq!(channel_base(0), 0x80);
        assert_eq!(channel_base(3), 0x200);
        assert_eq!(channel_base(0) + chan::CHANERR, 0xA8);
    }

    #[test]
    fn chanerr_display_names_bits() {
        let e = ChanErr(chanerr::SRC_ADDR | chanerr::LENGTH | (1 << 30));
        assert_eq!(e.to_string(), "0x40000801 [SRC_ADDR|LENGTH|BIT30]");
        assert_eq!(ChanErr(0).to_string(), "none");
    }

    #[test]
    fn chanstate_roundtrip() {
        for v in 0..8u64 {
            assert_eq!(ChanState::from_bits(v).bits(), v);
        }
        assert_eq!(chanctrl::RUN, 0x1d);
    }
}
