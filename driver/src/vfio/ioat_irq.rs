//! I/OAT interrupt mode over VFIO: one MSI-X vector per channel (eventfd), INTRDELAY
//! coalescing, and the INT_REARM handshake (facts §1.4, rules I1-I3, T2).
//!
//! Polling stays the default; interrupt mode is for callers that would rather sleep than spin.
//! The channel must have `int_en` on the descriptors it wants to be woken for.

use std::io;
use std::time::Duration;

use super::{EventFd, IrqKind, VfioDevice, VfioError};
use crate::regs::{chan, chanctrl, channel_base, general, RegisterAccess};

/// Writes INTRDELAY (microseconds, clamped to 0x3fff) when the device advertises coalescing
/// (bit 15). Returns the delay now in effect, or `None` when coalescing is unsupported.
pub fn set_coalescing<R: RegisterAccess + ?Sized>(regs: &R, micros: u16) -> Option<u16> {
    let cur = regs.read16(general::INTRDELAY);
    if cur & general::INTRDELAY_COALESCE_SUPPORT == 0 {
        return None;
    }
    let d = micros.min(general::INTRDELAY_MASK);
    regs.write16(general::INTRDELAY, d);
    Some(d)
}

/// Re-arms channel `n`'s interrupt (INT_REARM in CHANCTRL), keeping the other bits.
pub fn rearm<R: RegisterAccess + ?Sized>(regs: &R, n: u32) {
    let off = channel_base(n) + chan::CHANCTRL;
    let v = regs.read16(off);
    regs.write16(off, v | chanctrl::INT_REARM);
}

/// Interrupt mode state: one eventfd per channel (MSI-X) or one shared (MSI).
#[derive(Debug)]
pub struct IoatInterrupts {
    kind: IrqKind,
    fds: Vec<EventFd>,
    coalesce: Option<u16>,
}

impl IoatInterrupts {
    /// Enables MSI-X with one vector per channel (falls back to a single MSI vector), sets
    /// INTRCTRL (MSIX_VECTOR_CONTROL | MASTER_INT_EN) and INTRDELAY.
    pub fn enable<R: RegisterAccess + ?Sized>(
        dev: &VfioDevice,
        regs: &R,
        channels: u32,
        coalesce_us: u16,
    ) -> Result<IoatInterrupts, VfioError> {
        let channels = channels.max(1) as usize;
        let msix = dev.irq_count(IrqKind::MsiX);
        let (kind, fds) = if msix > 0 {
            (
                IrqKind::MsiX,
                dev.enable_irqs(IrqKind::MsiX, channels.min(msix))?,
            )
        } else {
            (IrqKind::Msi, dev.enable_irqs(IrqKind::Msi, 1)?)
        };
        let coalesce = set_coalescing(regs, coalesce_us);
        if coalesce.is_none() && coalesce_us > 0 {
            tracing::warn!(
                bdf = %dev.bdf(),
                "INTRDELAY coalescing not supported by this device; interrupts are not coalesced"
            );
        }
        let ctrl = match kind {
            IrqKind::MsiX => {
                general::INTRCTRL_MSIX_VECTOR_CONTROL | general::INTRCTRL_MASTER_INT_EN
            }
            _ => general::INTRCTRL_MASTER_INT_EN,
        };
        regs.write8(general::INTRCTRL, ctrl);
        Ok(IoatInterrupts {
            kind,
            fds,
            coalesce,
        })
    }

    pub fn kind(&self) -> IrqKind {
        self.kind
    }

    /// The coalescing delay in effect (µs), if supported.
    pub fn coalescing(&self) -> Option<u16> {
        self.coalesce
    }

    /// The eventfd for channel `n` (the shared one in MSI mode).
    pub fn eventfd(&self, n: u32) -> &EventFd {
        let i = (n as usize).min(self.fds.len() - 1);
        &self.fds[i]
    }

    /// Sleeps until channel `n` interrupts or `timeout` passes; re-arms the channel after a
    /// wake-up. Returns the number of interrupts seen (`None` on timeout).
    pub fn wait<R: RegisterAccess + ?Sized>(
        &self,
        regs: &R,
        n: u32,
        timeout: Duration,
    ) -> io::Result<Option<u64>> {
        let r = self.eventfd(n).wait(timeout)?;
        if r.is_some() {
            rearm(regs, n);
        }
        Ok(r)
    }

    /// Turns interrupts off at the device (INTRCTRL = 0) and in VFIO.
    pub fn disable<R: RegisterAccess + ?Sized>(
        self,
        dev: &VfioDevice,
        regs: &R,
    ) -> Result<(), VfioError> {
        regs.write8(general::INTRCTRL, 0);
        dev.disable_irqs(self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Regs(Mutex<HashMap<u32, u64>>);
    impl RegisterAccess for Regs {
        fn read8(&self, off: u32) -> u8 {
            *self.0.lock().unwrap().get(&off).unwrap_or(&0) as u8
        }
        fn read16(&self, off: u32) -> u16 {
            *self.0.lock().unwrap().get(&off).unwrap_or(&0) as u16
        }
        fn read32(&self, off: u32) -> u32 {
            *self.0.lock().unwrap().get(&off).unwrap_or(&0) as u32
        }
        fn write8(&self, off: u32, val: u8) {
            self.0.lock().unwrap().insert(off, val as u64);
        }
        fn write16(&self, off: u32, val: u16) {
            self.0.lock().unwrap().insert(off, val as u64);
        }
        fn write32(&self, off: u32, val: u32) {
            self.0.lock().unwrap().insert(off, val as u64);
        }
        fn config_read32(&self, _off: u16) -> u32 {
            0
        }
        fn config_write32(&self, _off: u16, _val: u32) {}
    }

    #[test]
    fn coalescing_respects_support_bit_and_clamps() {
        let r = Regs::default();
        assert_eq!(set_coalescing(&r, 10), None);
        r.write16(general::INTRDELAY, general::INTRDELAY_COALESCE_SUPPORT);
        assert_eq!(set_coalescing(&r, 0xffff), Some(0x3fff));
        assert_eq!(r.read16(general::INTRDELAY), 0x3fff);
    }

    #[test]
    fn rearm_keeps_other_bits() {
        let r = Regs::default();
        let off = channel_base(1) + chan::CHANCTRL;
        r.write16(off, chanctrl::ERR_INT_EN | chanctrl::ANY_ERR_ABORT_EN);
        rearm(&r, 1);
        assert_eq!(
            r.read16(off),
            chanctrl::ERR_INT_EN | chanctrl::ANY_ERR_ABORT_EN | chanctrl::INT_REARM
        );
    }
}
