//! Interrupt sinks: where the model delivers MSI-X messages and the INTx line, with the
//! semantics of an eventfd (a counter that a read returns and resets).

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// An eventfd-like interrupt sink: every delivered message adds one; a read returns the count
/// and resets it. Get one with [`super::ModelDevice::msix_irq`] or
/// [`super::ModelDevice::intx_irq`].
#[derive(Debug, Default)]
pub struct ModelIrq {
    count: Mutex<u64>,
    cv: Condvar,
}

impl ModelIrq {
    pub(crate) fn signal(&self) {
        *self.count.lock() += 1;
        self.cv.notify_all();
    }

    /// Returns and resets the count, or `None` if nothing was delivered (a non-blocking read).
    pub fn try_read(&self) -> Option<u64> {
        let mut c = self.count.lock();
        match std::mem::take(&mut *c) {
            0 => None,
            n => Some(n),
        }
    }

    /// Waits up to `timeout` for a message; returns and resets the count (`None` on timeout).
    pub fn wait(&self, timeout: Duration) -> Option<u64> {
        let end = Instant::now() + timeout;
        let mut c = self.count.lock();
        while *c == 0 {
            if self.cv.wait_until(&mut c, end).timed_out() {
                break;
            }
        }
        match std::mem::take(&mut *c) {
            0 => None,
            n => Some(n),
        }
    }

    /// The count without resetting it.
    pub fn peek(&self) -> u64 {
        *self.count.lock()
    }
}

use super::config::{MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET};
use super::device::{DevState, Shared, V};
use super::{RuleTag, Severity};
use crate::regs::{chanctrl, general};

/// An interrupt condition on channel `ch` at virtual time `at` (an `int_en` completion, or a
/// halt with ERR_INT_EN). Needs CHANCTRL.INT_REARM, which it consumes (rule T2: the driver
/// re-arms after each interrupt); sets ATTNSTATUS and INTRCTRL.INT_STATUS; the message goes
/// out INTRDELAY microseconds later (coalescing: conditions in the meantime need a re-arm
/// anyway, so they are folded into the one message).
pub(crate) fn raise(st: &mut DevState, ch: usize, at: Instant) {
    let delay = Duration::from_micros((st.intrdelay & general::INTRDELAY_MASK) as u64);
    let c = &mut st.chans[ch];
    if c.chanctrl & chanctrl::INT_REARM == 0 {
        c.stats.interrupts_not_armed += 1;
        return;
    }
    c.chanctrl &= !chanctrl::INT_REARM;
    c.stats.interrupts_raised += 1;
    if c.irq_due.is_none() {
        c.irq_due = Some(at + delay);
    }
    st.attnstatus |= 1 << ch;
    st.intrctrl |= general::INTRCTRL_INT_STATUS;
}

/// Sends the messages whose coalescing delay has passed by `now`.
pub(crate) fn deliver_due(sh: &Shared, st: &mut DevState, now: Instant) {
    for ch in 0..st.chans.len() {
        match st.chans[ch].irq_due {
            Some(t) if t <= now => {
                st.chans[ch].irq_due = None;
                deliver(sh, st, ch);
            }
            _ => {}
        }
    }
}

/// One interrupt message for channel `ch`: MSI-X vector `ch` when MSI-X is enabled in config
/// space (and INTRCTRL has MASTER_INT_EN or MSIX_VECTOR_CONTROL: Linux writes 0x09, FreeBSD
/// 0x01, the VFIO selftest 0x08, rule I1), else the INTx line (INTRCTRL.MASTER_INT_EN, and
/// COMMAND.INTX_DISABLE clear). A masked vector sets its pending bit instead.
fn deliver(sh: &Shared, st: &mut DevState, ch: usize) {
    if st.pci.msix_enabled() {
        let en = general::INTRCTRL_MASTER_INT_EN | general::INTRCTRL_MSIX_VECTOR_CONTROL;
        if st.intrctrl & en == 0 {
            return;
        }
        let v = ch.min(st.msix.len() - 1);
        if !st.pci.master() {
            // An MSI-X message is a memory write: no bus mastering, no message.
            sh.violate(
                st,
                V::reg("R5", RuleTag::Inferred, Severity::Error, Some(ch), "MSI-X", MSIX_TABLE_OFFSET + 16 * v as u32, 0),
                format!("MSI-X message for vector {v} with PCI COMMAND.BUS_MASTER clear: the message cannot be sent; it stays pending"),
            );
            st.pba |= 1 << v;
            return;
        }
        if st.pci.msix_function_masked() || st.msix[v][3] & 1 != 0 {
            st.pba |= 1 << v;
            return;
        }
        st.pba &= !(1 << v);
        sh.msix_sinks[v].signal();
    } else {
        if st.intrctrl & general::INTRCTRL_MASTER_INT_EN == 0
            || st.pci.command & crate::regs::pci::COMMAND_INTX_DISABLE != 0
        {
            return;
        }
        st.intrctrl |= general::INTRCTRL_INT;
        sh.intx_sink.signal();
    }
    st.chans[ch].stats.interrupts_delivered += 1;
}

/// Sends pending MSI-X messages whose vector is now unmasked (PCI: a pending bit is delivered
/// when the mask clears).
pub(crate) fn flush_pending(sh: &Shared, st: &mut DevState) {
    if !st.pci.msix_enabled() || st.pci.msix_function_masked() || !st.pci.master() {
        return;
    }
    for v in 0..st.msix.len() {
        if st.pba & (1 << v) != 0 && st.msix[v][3] & 1 == 0 {
            st.pba &= !(1 << v);
            sh.msix_sinks[v].signal();
            if let Some(c) = st.chans.get_mut(v) {
                c.stats.interrupts_delivered += 1;
            }
        }
    }
}

/// A read in the MSI-X table or PBA (4 or 8 bytes, naturally aligned); `None` elsewhere.
pub(crate) fn msix_read(st: &DevState, off: u32, width: u8) -> Option<u64> {
    if !matches!(width, 4 | 8) || off % width as u32 != 0 {
        return None;
    }
    let n = st.msix.len() as u32;
    if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + 16 * n).contains(&off) {
        let e = &st.msix[((off - MSIX_TABLE_OFFSET) / 16) as usize];
        let k = (((off - MSIX_TABLE_OFFSET) % 16) / 4) as usize;
        let lo = e[k] as u64;
        return Some(if width == 8 {
            lo | (e[k + 1] as u64) << 32
        } else {
            lo
        });
    }
    if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + 8).contains(&off) {
        return Some(st.pba >> ((off - MSIX_PBA_OFFSET) * 8));
    }
    None
}

/// A write in the MSI-X table (4 or 8 bytes, naturally aligned). True if it landed there (or
/// in the read-only PBA, which is flagged).
pub(crate) fn msix_write(sh: &Shared, st: &mut DevState, off: u32, width: u8, val: u64) -> bool {
    if !matches!(width, 4 | 8) || off % width as u32 != 0 {
        return false;
    }
    let n = st.msix.len() as u32;
    if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + 16 * n).contains(&off) {
        let i = ((off - MSIX_TABLE_OFFSET) / 16) as usize;
        let k = (((off - MSIX_TABLE_OFFSET) % 16) / 4) as usize;
        let words = if width == 8 { 2 } else { 1 };
        for j in 0..words {
            let w = (val >> (32 * j)) as u32;
            // Vector control: only bit 0 (mask) is defined.
            st.msix[i][k + j] = if k + j == 3 { w & 1 } else { w };
        }
        flush_pending(sh, st);
        return true;
    }
    if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + 8).contains(&off) {
        sh.violate(
            st,
            V::reg(
                "R1",
                RuleTag::Inferred,
                Severity::Error,
                None,
                "MSI-X PBA",
                off,
                width,
            ),
            format!(
                "write of {val:#x} to the read-only MSI-X pending-bit array at {off:#x}; ignored"
            ),
        );
        return true;
    }
    false
}
