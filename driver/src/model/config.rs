//! The model's PCI configuration space: header, a capability list (MSI-X, then PCI Express),
//! and the I/OAT registers in extended space. Accesses of 1, 2 and 4 bytes, naturally
//! aligned, as PCI allows.
//!
//! Layout (capability offsets are a model choice; no source we have gives the real ones):
//!
//! | offset | register |
//! |---|---|
//! | 0x00 | vendor 0x8086, device id |
//! | 0x04 | COMMAND (IO, MEMORY, BUS_MASTER, PARITY, SERR, INTX_DISABLE writable), STATUS (CAP_LIST) |
//! | 0x08 | revision 0, class 0x088000 (system peripheral, other) |
//! | 0x10/0x14 | BAR0: 64-bit memory, 16 KiB (sizing with all-ones works) |
//! | 0x2c | subsystem vendor 0x8086 |
//! | 0x34 | capability pointer = 0x80 |
//! | 0x3c | interrupt line (RW), pin INTA |
//! | 0x48 | DMACTRL (legacy, stored) |
//! | 0x80 | MSI-X capability (next 0x90): table size CHANCNT, enable and function mask writable; table at BAR0+0x1000, PBA at BAR0+0x1800 |
//! | 0x90 | PCI Express capability v2, root-complex integrated endpoint (next 0); DEVCTL writable (relaxed ordering set at power-on) |
//! | 0x148 | DMAUNCERRSTS (W1C) |
//! | 0x180 | CHANERR_INT (W1C, below CB3.3 only) |
//! | 0x184 | CHANERRMASK_INT (RW) |

use crate::regs::pci;

/// BAR0 offset of the MSI-X table (16 bytes per vector). Linux saves and restores
/// BAR0+0x1000/+0x1008 (vector 0) and +0x1800 (the PBA) around a channel reset on BWD and
/// BDX-DE (`ioat_reset_hw`), the only source that names these offsets.
pub const MSIX_TABLE_OFFSET: u32 = 0x1000;
/// BAR0 offset of the MSI-X pending-bit array.
pub const MSIX_PBA_OFFSET: u32 = 0x1800;

pub(crate) const CAP_PTR: u16 = 0x34;
pub(crate) const CAP_MSIX: u16 = 0x80;
pub(crate) const CAP_PCIE: u16 = 0x90;
pub(crate) const CAP_ID_MSIX: u8 = 0x11;
pub(crate) const CAP_ID_PCIE: u8 = 0x10;
pub(crate) const MSIX_CTRL_ENABLE: u16 = 0x8000;
pub(crate) const MSIX_CTRL_FUNCTION_MASK: u16 = 0x4000;
pub(crate) const STATUS_CAP_LIST: u16 = 0x0010;
pub(crate) const BAR0_SIZE: u32 = 16 << 10;
/// PCIe DEVCTL bit 4: relaxed ordering enable (Linux clears it at probe).
pub(crate) const DEVCTL_RELAXED_ORDERING: u16 = 0x0010;

const COMMAND_RW: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | pci::COMMAND_INTX_DISABLE;

/// Configuration registers with state.
#[derive(Clone, Debug)]
pub(crate) struct Pci {
    pub command: u16,
    pub bar0_lo: u32,
    pub bar0_hi: u32,
    pub int_line: u8,
    pub dmactrl: u32,
    pub msix_ctrl: u16,
    pub devctl: u16,
    pub dmauncerrsts: u32,
    pub chanerr_int: u32,
    pub chanerrmask_int: u32,
}

impl Pci {
    pub fn new(command: u16) -> Pci {
        Pci {
            command: command & COMMAND_RW,
            bar0_lo: 0x4, // 64-bit, non-prefetchable memory BAR
            bar0_hi: 0,
            int_line: 0,
            dmactrl: 0,
            msix_ctrl: 0,
            // Relaxed ordering on (Linux clears it at probe), no-snoop on, 512 B max read request.
            devctl: DEVCTL_RELAXED_ORDERING | 0x2810,
            dmauncerrsts: 0,
            chanerr_int: 0,
            chanerrmask_int: 0,
        }
    }

    pub fn memory(&self) -> bool {
        self.command & pci::COMMAND_MEMORY != 0
    }

    pub fn master(&self) -> bool {
        self.command & pci::COMMAND_MASTER != 0
    }

    pub fn msix_enabled(&self) -> bool {
        self.msix_ctrl & MSIX_CTRL_ENABLE != 0
    }

    pub fn msix_function_masked(&self) -> bool {
        self.msix_ctrl & MSIX_CTRL_FUNCTION_MASK != 0
    }

    /// The dword at `off & !3`.
    pub fn read_dword(&self, off: u16, device_id: u16, vectors: u16, has_chanerr_int: bool) -> u32 {
        match off & !3 {
            0x00 => crate::regs::PCI_VENDOR_INTEL as u32 | (device_id as u32) << 16,
            0x04 => self.command as u32 | (STATUS_CAP_LIST as u32) << 16,
            // Class 0x08 (system peripheral), subclass 0x80 (other), revision 0.
            0x08 => 0x0880_0000,
            0x10 => self.bar0_lo,
            0x14 => self.bar0_hi,
            0x2c => crate::regs::PCI_VENDOR_INTEL as u32,
            CAP_PTR => CAP_MSIX as u32,
            0x3c => self.int_line as u32 | 1 << 8,
            pci::DMACTRL => self.dmactrl,
            CAP_MSIX => {
                let ctrl = self.msix_ctrl | (vectors.max(1) - 1);
                CAP_ID_MSIX as u32 | (CAP_PCIE as u32) << 8 | (ctrl as u32) << 16
            }
            o if o == CAP_MSIX + 4 => MSIX_TABLE_OFFSET, // BIR 0
            o if o == CAP_MSIX + 8 => MSIX_PBA_OFFSET,   // BIR 0
            // PCIe capabilities register: version 2, device/port type 9 (RCiEP).
            CAP_PCIE => CAP_ID_PCIE as u32 | 0x0092 << 16,
            o if o == CAP_PCIE + 4 => 0x0000_8000, // DEVCAP: role-based error reporting
            o if o == CAP_PCIE + 8 => self.devctl as u32,
            pci::DMAUNCERRSTS => self.dmauncerrsts,
            pci::CHANERR_INT if has_chanerr_int => self.chanerr_int,
            pci::CHANERRMASK_INT => self.chanerrmask_int,
            _ => 0,
        }
    }

    /// Writes the bytes of `val` selected by `mask` (both already shifted into the dword at
    /// `off & !3`). Read-only bits and registers ignore the write, as PCI does.
    pub fn write_dword(&mut self, off: u16, val: u32, mask: u32, has_chanerr_int: bool) {
        let merge = |old: u32, rw: u32| (old & !(mask & rw)) | (val & mask & rw);
        match off & !3 {
            // STATUS (upper half) has no error bit the model sets, so its W1C bits do nothing.
            0x04 => self.command = merge(self.command as u32, COMMAND_RW as u32) as u16,
            0x10 => self.bar0_lo = merge(self.bar0_lo, !(BAR0_SIZE - 1)) | 0x4,
            0x14 => self.bar0_hi = merge(self.bar0_hi, u32::MAX),
            0x3c => self.int_line = merge(self.int_line as u32, 0xff) as u8,
            pci::DMACTRL => self.dmactrl = merge(self.dmactrl, u32::MAX),
            CAP_MSIX => {
                let rw = ((MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK) as u32) << 16;
                self.msix_ctrl = (merge((self.msix_ctrl as u32) << 16, rw) >> 16) as u16;
            }
            o if o == CAP_PCIE + 8 => self.devctl = merge(self.devctl as u32, 0x7fff) as u16,
            pci::DMAUNCERRSTS => self.dmauncerrsts &= !(val & mask),
            // Below 3.3 CHANERR_INT is W1C; on later parts it does not exist and writes are
            // ignored (FreeBSD, VFIO and Linux `ioat_eh` write it anyway, rule V4).
            pci::CHANERR_INT if has_chanerr_int => self.chanerr_int &= !(val & mask),
            pci::CHANERRMASK_INT => self.chanerrmask_int = merge(self.chanerrmask_int, u32::MAX),
            _ => {}
        }
    }
}
