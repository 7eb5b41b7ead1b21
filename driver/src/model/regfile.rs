//! The model's register map: which BAR0 offsets exist, their widths and access kinds.

use crate::regs::{chan, channel_base, general};

/// Identity of a modelled register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Reg {
    ChanCnt,
    XferCap,
    GenCtrl,
    IntrCtrl,
    AttnStatus,
    CbVer,
    PerPortOffset,
    IntrDelay,
    CsStatus,
    DmaCap,
    DcaOffset,
    PrefetchLimit,
    ChanCtrl,
    DmaComp,
    ChanCmd,
    DmaCount,
    ChanSts,
    ChainAddr,
    ChanCmp,
    Cdar,
    ChanErr,
    ChanErrMask,
    DcaCtrl,
    DrsCtl,
    LtrSwSel,
    LtrActive,
    LtrIdle,
}

/// How writes behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Ro,
    Rw,
    /// Write 1 to clear.
    W1c,
    /// Has side effects handled by the device (CHANCMD, DMACOUNT, CHAINADDR, CHANCMP).
    Special,
}

pub(crate) struct RegDef {
    pub reg: Reg,
    pub name: &'static str,
    /// Offset: from BAR0 for general registers, from the channel base for channel registers.
    pub off: u32,
    /// Width in bytes. 8-byte registers also accept 4-byte accesses to either half.
    pub width: u8,
    pub kind: Kind,
    /// Only present with the DPS capability (CB3.4).
    pub dps_only: bool,
}

const fn d(reg: Reg, name: &'static str, off: u32, width: u8, kind: Kind) -> RegDef {
    RegDef {
        reg,
        name,
        off,
        width,
        kind,
        dps_only: false,
    }
}

const fn dps(reg: Reg, name: &'static str, off: u32, width: u8, kind: Kind) -> RegDef {
    RegDef {
        reg,
        name,
        off,
        width,
        kind,
        dps_only: true,
    }
}

/// General registers (facts §1.1; widths per rule W7).
pub(crate) static GENERAL: &[RegDef] = &[
    d(Reg::ChanCnt, "CHANCNT", general::CHANCNT, 1, Kind::Ro),
    d(Reg::XferCap, "XFERCAP", general::XFERCAP, 1, Kind::Ro),
    d(Reg::GenCtrl, "GENCTRL", general::GENCTRL, 1, Kind::Rw),
    d(Reg::IntrCtrl, "INTRCTRL", general::INTRCTRL, 1, Kind::Rw),
    d(
        Reg::AttnStatus,
        "ATTNSTATUS",
        general::ATTNSTATUS,
        4,
        Kind::Ro,
    ),
    d(Reg::CbVer, "CBVER", general::CBVER, 1, Kind::Ro),
    d(
        Reg::PerPortOffset,
        "PERPORTOFFSET",
        general::PERPORTOFFSET,
        2,
        Kind::Ro,
    ),
    d(Reg::IntrDelay, "INTRDELAY", general::INTRDELAY, 2, Kind::Rw),
    d(Reg::CsStatus, "CS_STATUS", general::CS_STATUS, 2, Kind::Ro),
    d(
        Reg::DmaCap,
        "DMACAPABILITY",
        general::DMACAPABILITY,
        4,
        Kind::Ro,
    ),
    d(Reg::DcaOffset, "DCAOFFSET", general::DCAOFFSET, 2, Kind::Ro),
    dps(
        Reg::PrefetchLimit,
        "PREFETCH_LIMIT",
        general::PREFETCH_LIMIT,
        1,
        Kind::Rw,
    ),
];

/// Per-channel registers, offsets from the channel base.
pub(crate) static CHANNEL: &[RegDef] = &[
    d(Reg::ChanCtrl, "CHANCTRL", chan::CHANCTRL, 2, Kind::Rw),
    d(Reg::DmaComp, "DMA_COMP", chan::DMA_COMP, 2, Kind::Ro),
    d(Reg::ChanCmd, "CHANCMD", chan::CHANCMD, 1, Kind::Special),
    d(Reg::DmaCount, "DMACOUNT", chan::DMACOUNT, 2, Kind::Special),
    d(Reg::ChanSts, "CHANSTS", chan::CHANSTS, 8, Kind::Ro),
    d(
        Reg::ChainAddr,
        "CHAINADDR",
        chan::CHAINADDR,
        8,
        Kind::Special,
    ),
    d(Reg::ChanCmp, "CHANCMP", chan::CHANCMP, 8, Kind::Special),
    d(Reg::Cdar, "CDAR", chan::CDAR, 8, Kind::Ro),
    d(Reg::ChanErr, "CHANERR", chan::CHANERR, 4, Kind::W1c),
    d(
        Reg::ChanErrMask,
        "CHANERR_MASK",
        chan::CHANERR_MASK,
        4,
        Kind::Rw,
    ),
    d(Reg::DcaCtrl, "DCACTRL", chan::DCACTRL, 4, Kind::Rw),
    dps(Reg::DrsCtl, "DRSCTL", chan::DRSCTL, 2, Kind::Rw),
    dps(Reg::LtrSwSel, "LTR_SWSEL", chan::LTR_SWSEL, 1, Kind::Rw),
    dps(Reg::LtrActive, "LTR_ACTIVE", chan::LTR_ACTIVE, 4, Kind::Rw),
    dps(Reg::LtrIdle, "LTR_IDLE", chan::LTR_IDLE, 4, Kind::Rw),
];

/// Where an access landed.
#[derive(Clone, Copy)]
pub(crate) struct Hit {
    pub def: &'static RegDef,
    /// Channel index for channel registers.
    pub chan: Option<usize>,
    /// Byte offset of the access inside the register (0, or 4 for the high half of a qword).
    pub byte: u32,
}

/// Finds the register containing BAR0 byte `off`.
pub(crate) fn lookup(off: u32, chancnt: usize, has_dps: bool) -> Option<Hit> {
    let present = |r: &RegDef| has_dps || !r.dps_only;
    for r in GENERAL.iter().filter(|r| present(r)) {
        if off >= r.off && off < r.off + r.width as u32 {
            return Some(Hit {
                def: r,
                chan: None,
                byte: off - r.off,
            });
        }
    }
    for n in 0..chancnt {
        let base = channel_base(n as u32);
        if off < base {
            continue;
        }
        let rel = off - base;
        for r in CHANNEL.iter().filter(|r| present(r)) {
            if rel >= r.off && rel < r.off + r.width as u32 {
                return Some(Hit {
                    def: r,
                    chan: Some(n),
                    byte: rel - r.off,
                });
            }
        }
    }
    None
}
