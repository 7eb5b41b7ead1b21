//! The engine: one thread per channel executing descriptors like the hardware does,
//! concurrently with the driver.
//!
//! Per descriptor: fetch from CHAINADDR (first) or the previous `next`, validate, translate
//! every address through the model IOMMU, move the data with the device lock released (the
//! table's read guard keeps the memory mapped), then count it, write the completion and move
//! the channel to DONE when the internal count reaches DMACOUNT. Descriptors run strictly one
//! after another, so a fence (rule O6) is trivially honoured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::device::{writeback, DevState, Shared, V};
use super::mem::Table;
use super::{RuleTag, Timing};
use crate::desc::{op, Ctl, HwDescriptor, DESC_SIZE};
use crate::regs::{cap, chanerr, ChanState};

/// What one validated descriptor does, with host pointers valid while the table guard lives.
enum Work {
    Null,
    Copy {
        src: *const u8,
        dst: *mut u8,
        len: usize,
    },
    Fill {
        pattern: u64,
        dst: *mut u8,
        len: usize,
    },
}

/// How far the timing model may run ahead of real time before the engine sleeps.
const SLEEP_SLACK: Duration = Duration::from_micros(20);

pub(crate) fn run(sh: Arc<Shared>, ch: usize) {
    // A device engine wants fine-grained sleeps: drop the default 50 us timer slack.
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and only affects this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let mut st = sh.st.lock();
    loop {
        if sh.shutdown.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        sh.tick(&mut st, Instant::now());
        let c = &st.chans[ch];
        let runnable = c.state == ChanState::Active
            && c.reset_until.is_none()
            && !c.hung
            && !c.suspend_req
            && c.count != c.dmacount;
        if !runnable {
            match c.reset_until {
                Some(t) => {
                    sh.cv.wait_until(&mut st, t);
                }
                None => sh.cv.wait(&mut st),
            }
            continue;
        }
        step(&sh, &mut st, ch);
    }
}

/// A descriptor error: CHANERR bits plus the violation to report.
struct DescErr {
    bits: u32,
    rule: &'static str,
    tag: RuleTag,
    msg: String,
}

fn derr(bits: u32, rule: &'static str, tag: RuleTag, msg: String) -> DescErr {
    DescErr {
        bits,
        rule,
        tag,
        msg,
    }
}

/// Checks opcode, control bits and size (rules S1, S2, O1, O4, O5, O8).
fn validate(sh: &Shared, d: &HwDescriptor) -> Result<(), DescErr> {
    let cfg = &sh.cfg;
    let opc = d.ctl.opcode();
    match opc {
        op::COPY => {}
        op::FILL if cfg.dmacap & cap::FILL_BLOCK != 0 => {}
        op::FILL => {
            return Err(derr(
                chanerr::CONTROL,
                "O5",
                RuleTag::Behaviour,
                "fill descriptor (op 0x01) but DMACAPABILITY lacks FILL_BLOCK (0x40); check the capability before issuing fills".into(),
            ))
        }
        op::OLD_XOR | op::OLD_XOR_VAL => {
            return Err(derr(
                chanerr::CONTROL,
                "O1",
                RuleTag::Stated,
                format!("deprecated opcode {opc:#x}: \"v3 DMA generates an abort if given these\""),
            ))
        }
        op::XOR | op::XOR_VAL | op::PQ | op::PQ_VAL | op::PQ_UP | op::PQ_16S | op::PQ_VAL_16S => {
            return Err(derr(
                chanerr::CONTROL,
                "O4",
                RuleTag::Stated,
                format!("RAID opcode {opc:#x}: RAID is masked off on Xeon CB3.2+ parts and not modelled; use copy (0x00) or fill (0x01)"),
            ))
        }
        _ => {
            return Err(derr(
                chanerr::CONTROL,
                "O1",
                RuleTag::Inferred,
                format!("unknown opcode {opc:#x}; only copy (0x00) and fill (0x01) are supported"),
            ))
        }
    }
    if d.ctl.has(Ctl::SRC_BRK) || d.ctl.has(Ctl::DEST_BRK) {
        return Err(derr(
            chanerr::CONTROL,
            "O8",
            RuleTag::Behaviour,
            "page-break bits (ctl bits 6/7) set: the presets do not advertise PAGE_BREAK and the model does not implement two-page descriptors".into(),
        ));
    }
    if d.size == 0 {
        return Err(derr(
            chanerr::LENGTH,
            "S1",
            RuleTag::Stated,
            format!(
                "{} descriptor with size 0: \"channel returns error when size is 0\"; null descriptors need a non-zero size (Linux 1, SPDK 8)",
                if d.ctl.is_null() { "null" } else { "data" }
            ),
        ));
    }
    if !d.ctl.is_null() && d.size as u64 > cfg.max_xfer() {
        return Err(derr(
            chanerr::LENGTH,
            "S2",
            RuleTag::Behaviour,
            format!(
                "descriptor size {} exceeds 1 << XFERCAP = {}; split transfers at XFERCAP",
                d.size,
                cfg.max_xfer()
            ),
        ));
    }
    Ok(())
}

fn fail(sh: &Shared, st: &mut DevState, ch: usize, iova: u64, table: Option<&Table>, e: DescErr) {
    sh.violate(st, V::desc(e.rule, e.tag, ch, iova), e.msg);
    sh.halt(st, ch, e.bits, table);
}

fn read_desc(p: *const u8) -> HwDescriptor {
    // SAFETY: the caller translated `[p, p + 64)` under the table's read guard, so the range
    // lies in live mapped memory. The driver may write it concurrently (it is DMA memory), so
    // it is read with a volatile copy, never through a reference.
    let b = unsafe { std::ptr::read_volatile(p as *const [u8; DESC_SIZE]) };
    HwDescriptor::from_le_bytes(&b)
}

fn step(sh: &Shared, st: &mut MutexGuard<'_, DevState>, ch: usize) {
    // Injected hang: stop silently, CHANSTS keeps saying ACTIVE.
    {
        let c = &mut st.chans[ch];
        if c.hang_after == Some(0) {
            c.hang_after = None;
            c.hung = true;
            return;
        }
    }
    let (addr, from_chain) = match st.chans[ch].next_fetch {
        None => (st.chans[ch].chainaddr, true),
        Some(a) => (a, false),
    };
    st.chans[ch].cdar = addr;
    if let Some((n, bits)) = st.chans[ch].fault_err {
        if n <= 1 {
            st.chans[ch].fault_err = None;
            sh.halt(st, ch, bits, None);
            return;
        }
    }
    let table = sh.mem.read();
    if addr & 0x3f != 0 {
        let (bits, what) = if from_chain {
            (chanerr::CHAIN_ADDR_VALUE, "CHAINADDR")
        } else {
            (chanerr::NEXT_DESC_ALIGN, "next")
        };
        let e = derr(
            bits,
            "A1",
            RuleTag::Inferred,
            format!("{what} {addr:#x} is not 64-byte aligned; descriptors must be 64-byte aligned"),
        );
        fail(sh, st, ch, addr, Some(&table), e);
        return;
    }
    let Some(p) = table.translate(addr, DESC_SIZE as u64) else {
        let (bits, what) = if from_chain {
            (chanerr::CHAIN_ADDR_VALUE, "CHAINADDR")
        } else {
            (chanerr::NEXT_ADDR, "next")
        };
        let e = derr(
            bits,
            "E10",
            RuleTag::Stated,
            format!("{what} {addr:#x} is not a mapped IOVA (did the driver pass a host address, or link past the ring?)"),
        );
        fail(sh, st, ch, addr, Some(&table), e);
        return;
    };
    let d = read_desc(p);
    if let Err(e) = validate(sh, &d) {
        fail(sh, st, ch, addr, Some(&table), e);
        return;
    }
    let len = d.size as u64;
    let opc = d.ctl.opcode();
    let work = if d.ctl.is_null() {
        Work::Null
    } else {
        let Some(dst) = table.translate(d.dst, len) else {
            let e = derr(
                chanerr::DEST_ADDR,
                "E10",
                RuleTag::Stated,
                format!(
                    "destination {:#x}+{len} is not inside one mapped IOVA range",
                    d.dst
                ),
            );
            fail(sh, st, ch, addr, Some(&table), e);
            return;
        };
        if opc == op::FILL {
            Work::Fill {
                pattern: d.src,
                dst,
                len: len as usize,
            }
        } else {
            let Some(src) = table.translate(d.src, len) else {
                let e = derr(
                    chanerr::SRC_ADDR,
                    "E10",
                    RuleTag::Stated,
                    format!(
                        "source {:#x}+{len} is not inside one mapped IOVA range",
                        d.src
                    ),
                );
                fail(sh, st, ch, addr, Some(&table), e);
                return;
            };
            Work::Copy {
                src,
                dst,
                len: len as usize,
            }
        }
    };
    let compl = d.ctl.has(Ctl::COMPL_WRITE);
    if compl {
        let cmp = st.chans[ch].chancmp;
        if cmp & 7 != 0 || table.translate(cmp, 8).is_none() {
            let e = derr(
                chanerr::COMPLETION_ADDR,
                "A2",
                RuleTag::Stated,
                format!(
                    "descriptor asks for a completion write but CHANCMP {cmp:#x} is {}",
                    if cmp & 7 != 0 {
                        "not 8-byte aligned"
                    } else {
                        "not a mapped IOVA (rewrite CHANCMP after every reset)"
                    }
                ),
            );
            fail(sh, st, ch, addr, Some(&table), e);
            return;
        }
    }

    // Execute with the device lock released; the table guard keeps every pointer valid.
    let c = &mut st.chans[ch];
    c.busy = true;
    let gen = c.gen;
    let delay = duration(sh, len, &work, c.slow);
    // Virtual time: this descriptor finishes `delay` after the later of now and the end of the
    // previous one. Sleep only when the engine runs ahead of real time by more than
    // SLEEP_SLACK, so sleep granularity (tens of microseconds) does not become a latency floor
    // per descriptor while the average rate stays exact.
    let deadline = if delay.is_zero() {
        None
    } else {
        let now = Instant::now();
        let start = c.busy_until.filter(|t| *t > now).unwrap_or(now);
        let end = start + delay;
        c.busy_until = Some(end);
        Some(end)
    };
    MutexGuard::unlocked(st, move || {
        execute(&work);
        drop(table);
        if let Some(end) = deadline {
            let now = Instant::now();
            if end > now + SLEEP_SLACK {
                std::thread::sleep(end - now);
            }
        }
    });

    let c = &mut st.chans[ch];
    c.busy = false;
    if c.gen != gen {
        // Reset (or re-armed) while executing: the hardware abandons the descriptor.
        return;
    }
    c.count = c.count.wrapping_add(1);
    c.completed = addr;
    c.next_fetch = Some(d.next);
    c.stats.descriptors += 1;
    if d.ctl.has(Ctl::INT_EN) {
        c.stats.interrupts_requested += 1;
    }
    if d.ctl.is_null() {
        c.stats.nulls += 1;
    } else {
        c.stats.bytes += len;
        if opc == op::FILL {
            c.stats.fills += 1;
        } else {
            c.stats.copies += 1;
        }
    }
    if let Some((n, b)) = c.fault_err {
        c.fault_err = Some((n - 1, b));
    }
    if let Some(n) = c.hang_after {
        c.hang_after = Some(n - 1);
    }
    c.state = if c.suspend_req {
        c.suspend_req = false;
        ChanState::Suspended
    } else if c.count == c.dmacount {
        ChanState::Done
    } else {
        ChanState::Active
    };
    if compl {
        let img = c.completed | c.state.bits();
        let cmp = c.chancmp;
        let ok = writeback(&sh.mem.read(), cmp, img);
        if ok {
            st.chans[ch].stats.writebacks += 1;
        } else {
            let e = derr(
                chanerr::COMPLETION_ADDR,
                "A2",
                RuleTag::Stated,
                format!("completion address {cmp:#x} became unusable during the descriptor"),
            );
            fail(sh, st, ch, addr, None, e);
        }
    }
}

fn duration(sh: &Shared, len: u64, work: &Work, slow: Duration) -> Duration {
    let bytes = match work {
        Work::Null => 0,
        _ => len,
    };
    let base = match sh.cfg.timing {
        Timing::Instant => Duration::ZERO,
        Timing::Modeled {
            per_desc,
            bytes_per_sec,
        } => {
            let xfer = if bytes_per_sec == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos((bytes as u128 * 1_000_000_000 / bytes_per_sec as u128) as u64)
            };
            per_desc + xfer
        }
    };
    base + slow
}

fn execute(work: &Work) {
    match *work {
        Work::Null => {}
        Work::Copy { src, dst, len } => {
            // SAFETY: both ranges were translated under the table's read guard, which the
            // caller still holds, so they lie inside live mappings whose memory the
            // `DmaMapper::map` contract keeps allocated and free of Rust references. They may
            // overlap (a driver bug, or a deliberate in-place move), so `copy` (memmove).
            unsafe { std::ptr::copy(src, dst, len) };
        }
        Work::Fill { pattern, dst, len } => {
            // The 64-bit pattern repeats from the first destination byte on (little-endian).
            let mut block = [0u8; 512];
            for (i, b) in block.iter_mut().enumerate() {
                *b = pattern.to_le_bytes()[i % 8];
            }
            let mut done = 0;
            while done < len {
                let n = (len - done).min(block.len());
                // SAFETY: `[dst, dst + len)` was translated under the read guard the caller
                // holds (see above); `block` is a local buffer that cannot overlap it.
                unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), dst.add(done), n) };
                done += n;
            }
        }
    }
}
