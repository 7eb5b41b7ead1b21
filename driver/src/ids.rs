//! PCI device IDs of the I/OAT (Crystal Beach DMA) v3.0-3.4 functions, with platform names.
//!
//! Source: Linux `drivers/dma/ioat/hw.h` and `include/linux/pci_ids.h`. The CB version here is the one the ID table
//! implies; the hardware's CBVER register can differ (SKX is listed with CB3.2 but reports
//! 0x32 or 0x33).

use crate::regs::{CbVersion, PCI_VENDOR_INTEL};

/// One known I/OAT function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoatId {
    pub device: u16,
    /// Short platform tag: TBG, JSF, SNB, IVB, HSW, BDX, SKX, BWD, BDX-DE, ICX.
    pub platform: &'static str,
    /// Human name of the platform.
    pub platform_name: &'static str,
    /// Channel index within the platform's group of functions (TBG0..7, SNB0..9, ...).
    pub index: u8,
    /// CB version implied by the ID table.
    pub version: CbVersion,
}

const fn id(
    device: u16,
    platform: &'static str,
    platform_name: &'static str,
    index: u8,
    version: u8,
) -> IoatId {
    IoatId {
        device,
        platform,
        platform_name,
        index,
        version: CbVersion(version),
    }
}

const TBG: &str = "Tylersburg (Intel 5520/5500 IOH)";
const JSF: &str = "Jasper Forest (Xeon C5500/C3500)";
const SNB: &str = "Sandy Bridge-EP (Xeon E5 v1)";
const IVB: &str = "Ivy Bridge-EP (Xeon E5/E7 v2)";
const HSW: &str = "Haswell-EP (Xeon E5/E7 v3)";
const BDX: &str = "Broadwell-EP (Xeon E5/E7 v4)";
const SKX: &str = "Skylake-SP / Cascade Lake (Xeon Scalable)";
const BWD: &str = "Avoton/Rangeley (Atom C2000)";
const BDXDE: &str = "Broadwell-DE (Xeon D-1500)";
const ICX: &str = "Ice Lake-SP (Xeon Scalable 3rd gen)";

/// Every I/OAT v3.0-3.4 device ID the Linux driver binds.
pub const IOAT_IDS: &[IoatId] = &[
    // CB3.0: TBG0-3 0x3430-0x3433, TBG4-7 0x3429-0x342c
    id(0x3430, "TBG", TBG, 0, 0x30),
    id(0x3431, "TBG", TBG, 1, 0x30),
    id(0x3432, "TBG", TBG, 2, 0x30),
    id(0x3433, "TBG", TBG, 3, 0x30),
    id(0x3429, "TBG", TBG, 4, 0x30),
    id(0x342a, "TBG", TBG, 5, 0x30),
    id(0x342b, "TBG", TBG, 6, 0x30),
    id(0x342c, "TBG", TBG, 7, 0x30),
    // CB3.2: JSF0-9 0x3710-0x3719
    id(0x3710, "JSF", JSF, 0, 0x32),
    id(0x3711, "JSF", JSF, 1, 0x32),
    id(0x3712, "JSF", JSF, 2, 0x32),
    id(0x3713, "JSF", JSF, 3, 0x32),
    id(0x3714, "JSF", JSF, 4, 0x32),
    id(0x3715, "JSF", JSF, 5, 0x32),
    id(0x3716, "JSF", JSF, 6, 0x32),
    id(0x3717, "JSF", JSF, 7, 0x32),
    id(0x3718, "JSF", JSF, 8, 0x32),
    id(0x3719, "JSF", JSF, 9, 0x32),
    // SNB0-9 0x3c20-0x3c27, 0x3c2e, 0x3c2f
    id(0x3c20, "SNB", SNB, 0, 0x32),
    id(0x3c21, "SNB", SNB, 1, 0x32),
    id(0x3c22, "SNB", SNB, 2, 0x32),
    id(0x3c23, "SNB", SNB, 3, 0x32),
    id(0x3c24, "SNB", SNB, 4, 0x32),
    id(0x3c25, "SNB", SNB, 5, 0x32),
    id(0x3c26, "SNB", SNB, 6, 0x32),
    id(0x3c27, "SNB", SNB, 7, 0x32),
    id(0x3c2e, "SNB", SNB, 8, 0x32),
    id(0x3c2f, "SNB", SNB, 9, 0x32),
    // IVB0-9 0x0e20-0x0e27, 0x0e2e, 0x0e2f
    id(0x0e20, "IVB", IVB, 0, 0x32),
    id(0x0e21, "IVB", IVB, 1, 0x32),
    id(0x0e22, "IVB", IVB, 2, 0x32),
    id(0x0e23, "IVB", IVB, 3, 0x32),
    id(0x0e24, "IVB", IVB, 4, 0x32),
    id(0x0e25, "IVB", IVB, 5, 0x32),
    id(0x0e26, "IVB", IVB, 6, 0x32),
    id(0x0e27, "IVB", IVB, 7, 0x32),
    id(0x0e2e, "IVB", IVB, 8, 0x32),
    id(0x0e2f, "IVB", IVB, 9, 0x32),
    // HSW0-9 0x2f20-0x2f27, 0x2f2e, 0x2f2f
    id(0x2f20, "HSW", HSW, 0, 0x32),
    id(0x2f21, "HSW", HSW, 1, 0x32),
    id(0x2f22, "HSW", HSW, 2, 0x32),
    id(0x2f23, "HSW", HSW, 3, 0x32),
    id(0x2f24, "HSW", HSW, 4, 0x32),
    id(0x2f25, "HSW", HSW, 5, 0x32),
    id(0x2f26, "HSW", HSW, 6, 0x32),
    id(0x2f27, "HSW", HSW, 7, 0x32),
    id(0x2f2e, "HSW", HSW, 8, 0x32),
    id(0x2f2f, "HSW", HSW, 9, 0x32),
    // BDX0-9 0x6f20-0x6f27, 0x6f2e, 0x6f2f
    id(0x6f20, "BDX", BDX, 0, 0x32),
    id(0x6f21, "BDX", BDX, 1, 0x32),
    id(0x6f22, "BDX", BDX, 2, 0x32),
    id(0x6f23, "BDX", BDX, 3, 0x32),
    id(0x6f24, "BDX", BDX, 4, 0x32),
    id(0x6f25, "BDX", BDX, 5, 0x32),
    id(0x6f26, "BDX", BDX, 6, 0x32),
    id(0x6f27, "BDX", BDX, 7, 0x32),
    id(0x6f2e, "BDX", BDX, 8, 0x32),
    id(0x6f2f, "BDX", BDX, 9, 0x32),
    // SKX 0x2021 (listed under CB3.2; hardware CBVER reads 0x32 or 0x33)
    id(0x2021, "SKX", SKX, 0, 0x32),
    // CB3.3: BWD0-3 0x0c50-0x0c53, BDX-DE0-3 0x6f50-0x6f53
    id(0x0c50, "BWD", BWD, 0, 0x33),
    id(0x0c51, "BWD", BWD, 1, 0x33),
    id(0x0c52, "BWD", BWD, 2, 0x33),
    id(0x0c53, "BWD", BWD, 3, 0x33),
    id(0x6f50, "BDX-DE", BDXDE, 0, 0x33),
    id(0x6f51, "BDX-DE", BDXDE, 1, 0x33),
    id(0x6f52, "BDX-DE", BDXDE, 2, 0x33),
    id(0x6f53, "BDX-DE", BDXDE, 3, 0x33),
    // CB3.4: ICX 0x0b00
    id(0x0b00, "ICX", ICX, 0, 0x34),
];

/// Pre-3.0 I/OAT device IDs (5000, CNB, SCNB, SNB-v2-era 0x402f): recognised only to give a
/// precise refusal, since the driver (like Linux) requires CB >= 3.0.
pub const LEGACY_IOAT_IDS: &[(u16, &str)] = &[
    (0x1a38, "Intel 5000 (I/OAT v1)"),
    (0x360b, "CNB (I/OAT v1.2)"),
    (0x65ff, "SCNB (I/OAT v2)"),
    (0x402f, "I/OAT v2 (0x402f)"),
];

/// Looks up a vendor/device pair; `None` unless the vendor is Intel and the ID is a v3.x I/OAT.
pub fn lookup(vendor: u16, device: u16) -> Option<&'static IoatId> {
    if vendor != PCI_VENDOR_INTEL {
        return None;
    }
    IOAT_IDS.iter().find(|i| i.device == device)
}

/// The legacy (pre-3.0) name of an Intel device ID, if it is one.
pub fn legacy(vendor: u16, device: u16) -> Option<&'static str> {
    if vendor != PCI_VENDOR_INTEL {
        return None;
    }
    LEGACY_IOAT_IDS
        .iter()
        .find(|(d, _)| *d == device)
        .map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_unique_and_complete() {
        let mut ids: Vec<u16> = IOAT_IDS.iter().map(|i| i.device).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate device ID");
        // 8 TBG + 10 each JSF/SNB/IVB/HSW/BDX + SKX + 4 BWD + 4 BDX-DE + ICX
        assert_eq!(n, 8 + 50 + 1 + 4 + 4 + 1);
        for p in [
            "TBG", "JSF", "SNB", "IVB", "HSW", "BDX", "SKX", "BWD", "BDX-DE", "ICX",
        ] {
            assert!(IOAT_IDS.iter().any(|i| i.platform == p), "{p}");
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(lookup(0x8086, 0x2021).unwrap().platform, "SKX");
        assert_eq!(lookup(0x8086, 0x0b00).unwrap().version, CbVersion::V3_4);
        assert_eq!(lookup(0x8086, 0x6f2f).unwrap().index, 9);
        assert_eq!(lookup(0x8086, 0x6f53).unwrap().platform, "BDX-DE");
        assert!(lookup(0x1234, 0x2021).is_none());
        assert!(lookup(0x8086, 0x1234).is_none());
        assert!(legacy(0x8086, 0x1a38).is_some());
    }
}
