//! The engine: descriptor execution on a virtual timeline.
//!
//! Each descriptor starts at a virtual time (the doorbell that made the channel ACTIVE, then
//! the end of the previous descriptor) and ends `duration` later (zero for instant timing).
//! At its start it is fetched, validated, translated through the model IOMMU and its data is
//! moved; at its end it is counted, the completion is written and an interrupt raised. Both
//! happen in whichever thread gets there first once their time has come: the channel's
//! engine thread (which sleeps until the next due time, so drivers that only poll memory see
//! progress) or any register access (`Shared::sync`), which brings the device to the time of
//! the access before answering. So what a register reads is a function of the model's
//! virtual time, not of when the host scheduled a thread.
//!
//! Descriptors run strictly one after another, so a fence (rule O6) is honoured; with
//! `ModelConfig::reorder_unfenced` the model shows what a missing fence allows instead.

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
    /// Segments `(src, dst, len)`; `early` replaces the source bytes when a previous unfenced
    /// descriptor let this copy read them before it wrote.
    Copy {
        segs: Pieces<(*mut u8, *mut u8, usize), 3>,
        early: Option<Vec<u8>>,
    },
    /// Destination pieces; the pattern keeps its phase across a page break.
    Fill {
        pattern: u64,
        dst: Pieces<(*mut u8, usize), 2>,
    },
}

/// Up to `N` items without allocating (a descriptor has at most one page break per side).
#[derive(Clone, Copy)]
struct Pieces<T: Copy, const N: usize> {
    items: [Option<T>; N],
}

impl<T: Copy, const N: usize> Pieces<T, N> {
    fn new() -> Self {
        Pieces { items: [None; N] }
    }
    fn push(&mut self, t: T) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(t);
        }
    }
    fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.items.iter().map_while(|s| *s)
    }
}

impl Work {
    fn bytes(&self) -> usize {
        match self {
            Work::Null => 0,
            Work::Copy { segs, .. } => segs.iter().map(|s| s.2).sum(),
            Work::Fill { dst, .. } => dst.iter().map(|s| s.1).sum(),
        }
    }
}

/// Who advances a channel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// The channel's engine thread: may move large data with the device lock released.
    Engine,
    /// A register access: works under the lock and waits for a descriptor the engine is
    /// moving.
    Access,
}

/// A started descriptor, completing at `end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub addr: u64,
    pub next: u64,
    pub end: Instant,
    pub compl: bool,
    pub int_en: bool,
    pub opc: u8,
    pub null: bool,
    pub len: u64,
}

/// Copies up to this size are moved with the device lock held, also by the engine thread (a
/// few microseconds at most); larger ones release it.
const INLINE_BYTES: usize = 64 << 10;

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
        let now = Instant::now();
        sh.tick(&mut st, now);
        advance(&sh, &mut st, ch, now, Who::Engine);
        super::irq::deliver_due(&sh, &mut st, now);
        let c = &st.chans[ch];
        // Work whose start lies in the future (not normally: starts are never later than the
        // access that scheduled them) is woken for too.
        let start = (c.state == ChanState::Active
            && c.pending.is_none()
            && c.count != c.dmacount
            && c.vstart > now)
            .then_some(c.vstart);
        let wake = [c.pending.map(|p| p.end), c.reset_until, c.irq_due, start]
            .into_iter()
            .flatten()
            .min();
        match wake {
            Some(t) => {
                if t > now {
                    sh.cv.wait_until(&mut st, t);
                }
            }
            None => sh.cv.wait(&mut st),
        }
    }
}

/// Brings channel `ch` to virtual time `now`: completes the pending descriptor if its end has
/// come, starts the next ones while their start time has come, and so on. Returns whether it
/// started or completed anything.
pub(crate) fn advance(
    sh: &Shared,
    st: &mut MutexGuard<'_, DevState>,
    ch: usize,
    now: Instant,
    who: Who,
) -> bool {
    let mut changed = false;
    loop {
        let c = &st.chans[ch];
        if c.busy {
            if who == Who::Engine {
                return changed;
            }
            // The engine thread is moving this descriptor's data: wait for it.
            sh.cv.wait(st);
            continue;
        }
        if let Some(p) = c.pending {
            if p.end > now {
                return changed;
            }
            st.chans[ch].pending = None;
            complete(sh, st, ch, p);
            changed = true;
            continue;
        }
        let runnable = c.state == ChanState::Active
            && c.reset_until.is_none()
            && !c.hung
            && !c.suspend_req
            && c.count != c.dmacount
            && c.vstart <= now;
        if !runnable {
            return changed;
        }
        if !st.pci.master() {
            // No bus mastering: the channel cannot fetch. It stays ACTIVE with work pending.
            if !st.chans[ch].bme_stalled {
                st.chans[ch].bme_stalled = true;
                sh.violate(
                    st,
                    V::reg(
                        "R5",
                        RuleTag::Inferred,
                        super::Severity::Error,
                        Some(ch),
                        "DMACOUNT",
                        crate::regs::channel_base(ch as u32) + crate::regs::chan::DMACOUNT,
                        2,
                    ),
                    "work is pending but PCI COMMAND.BUS_MASTER is clear: the device cannot fetch descriptors or move data; the channel stays ACTIVE and nothing completes until bus mastering is enabled (config 0x04 bit 2)".into(),
                );
            }
            return changed;
        }
        start(sh, st, ch, who);
        changed = true;
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
    // Page breaks (rule O8): the bytes after the first 4 KiB boundary continue at
    // next_src_addr / next_dest_addr, so one descriptor spans at most two pages per side.
    for (bit, at, name) in [
        (Ctl::SRC_BRK, d.src, "source"),
        (Ctl::DEST_BRK, d.dst, "destination"),
    ] {
        let first = 4096 - (at & 0xfff);
        if d.ctl.has(bit) && !d.ctl.is_null() && d.size as u64 > first + 4096 {
            return Err(derr(
                chanerr::LENGTH,
                "O8",
                RuleTag::Inferred,
                format!(
                    "page-break descriptor of {} bytes: its {name} would cross a second page boundary; a page break joins two 4 KiB pages at most",
                    d.size
                ),
            ));
        }
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

/// Pieces of an access that may cross one 4 KiB page break (rule O8: with `src_brk` /
/// `dest_brk` the bytes after the first page boundary continue at `next_src_addr` (+0x20) /
/// `next_dest_addr` (+0x28), as FreeBSD's `ioat_copy_8k_aligned` uses them).
fn pieces(addr: u64, len: u64, brk: bool, next: u64) -> Pieces<(u64, u64), 2> {
    let first = 4096 - (addr & 0xfff);
    let mut p = Pieces::new();
    if !brk || len <= first {
        p.push((addr, len));
    } else {
        p.push((addr, first));
        p.push((next, len - first));
    }
    p
}

/// Translates pieces to host pointers; `Err(iova)` names the first piece outside one mapping.
fn translate_all(t: &Table, p: &Pieces<(u64, u64), 2>) -> Result<Pieces<(*mut u8, usize), 2>, u64> {
    let mut out = Pieces::new();
    for (a, l) in p.iter() {
        out.push((t.translate(a, l).ok_or(a)?, l as usize));
    }
    Ok(out)
}

/// Splits two piece lists (same total length) into aligned segments.
fn zip_pieces(
    a: &Pieces<(*mut u8, usize), 2>,
    b: &Pieces<(*mut u8, usize), 2>,
) -> Pieces<(*mut u8, *mut u8, usize), 3> {
    let mut out = Pieces::new();
    let (mut i, mut j, mut oi, mut oj) = (0, 0, 0, 0);
    while let (Some(Some(x)), Some(Some(y))) = (a.items.get(i), b.items.get(j)) {
        let n = (x.1 - oi).min(y.1 - oj);
        out.push((x.0.wrapping_add(oi), y.0.wrapping_add(oj), n));
        oi += n;
        oj += n;
        if oi == x.1 {
            i += 1;
            oi = 0;
        }
        if oj == y.1 {
            j += 1;
            oj = 0;
        }
    }
    out
}

/// Rule A3: the DMA address width is 48 bits from CB3.3, 46 on CB3.2 and 40 below. A data
/// address beyond it is an address error (the bit choice follows the names, as elsewhere).
fn beyond_width(sh: &Shared, p: &Pieces<(u64, u64), 2>, bit: u32, what: &str) -> Option<DescErr> {
    let bits = match sh.cfg.cbver {
        v if v >= 0x33 => 48,
        0x32 => 46,
        _ => 40,
    };
    let (a, l) = p
        .iter()
        .find(|&(a, l)| a.checked_add(l).is_none_or(|e| e > 1u64 << bits))?;
    Some(derr(
        bit,
        "A3",
        RuleTag::Behaviour,
        format!(
            "{what} {a:#x}+{l} lies beyond the {bits}-bit DMA address width of CB {:#x}",
            sh.cfg.cbver
        ),
    ))
}

/// Fetches, validates and starts the next descriptor at the channel's virtual start time:
/// moves its data and leaves it pending until its end. Halts on a descriptor error.
fn start(sh: &Shared, st: &mut MutexGuard<'_, DevState>, ch: usize, who: Who) {
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
    // Whatever the previous descriptor read early is for this one only.
    let prefetched = st.chans[ch].prefetched.take();
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
        let dp = pieces(d.dst, len, d.ctl.has(Ctl::DEST_BRK), d.rsv2);
        if let Some(e) = beyond_width(sh, &dp, chanerr::DEST_ADDR, "destination") {
            fail(sh, st, ch, addr, Some(&table), e);
            return;
        }
        let dst = match translate_all(&table, &dp) {
            Ok(v) => v,
            Err(a) => {
                let e = derr(
                    chanerr::DEST_ADDR,
                    "E10",
                    RuleTag::Stated,
                    format!(
                        "destination {a:#x} (of {:#x}+{len}) is not inside one mapped IOVA range",
                        d.dst
                    ),
                );
                fail(sh, st, ch, addr, Some(&table), e);
                return;
            }
        };
        if opc == op::FILL {
            Work::Fill {
                pattern: d.src,
                dst,
            }
        } else {
            let sp = pieces(d.src, len, d.ctl.has(Ctl::SRC_BRK), d.rsv1);
            if let Some(e) = beyond_width(sh, &sp, chanerr::SRC_ADDR, "source") {
                fail(sh, st, ch, addr, Some(&table), e);
                return;
            }
            let src = match translate_all(&table, &sp) {
                Ok(v) => v,
                Err(a) => {
                    let e = derr(
                        chanerr::SRC_ADDR,
                        "E10",
                        RuleTag::Stated,
                        format!(
                            "source {a:#x} (of {:#x}+{len}) is not inside one mapped IOVA range",
                            d.src
                        ),
                    );
                    fail(sh, st, ch, addr, Some(&table), e);
                    return;
                }
            };
            // A copy the previous unfenced descriptor let start early reads what its source
            // held before that descriptor wrote (rule O6, with `reorder_unfenced`).
            let early = prefetched
                .filter(|(a, b)| *a == addr && b.len() == len as usize)
                .map(|(_, b)| b);
            Work::Copy {
                segs: zip_pieces(&src, &dst),
                early,
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
    // Without a fence the next copy may read its source before this one writes (rule O6):
    // with `reorder_unfenced`, snapshot that source now.
    let c = &st.chans[ch];
    if sh.cfg.reorder_unfenced
        && !d.ctl.has(Ctl::FENCE)
        && !matches!(work, Work::Null)
        && c.count.wrapping_add(1) != c.dmacount
    {
        let snap = peek_copy_source(&table, d.next);
        st.chans[ch].prefetched = snap.map(|b| (d.next, b));
    }

    let c = &mut st.chans[ch];
    let gen = c.gen;
    let delay = duration(sh, len, &work, c.slow);
    let end = c.vstart + delay;
    if who == Who::Engine && work.bytes() > INLINE_BYTES {
        // Move the data with the device lock released; the table guard keeps every pointer
        // valid. Register accesses that need this descriptor wait for `busy` to clear.
        c.busy = true;
        MutexGuard::unlocked(st, move || {
            execute(&work);
            drop(table);
        });
        st.chans[ch].busy = false;
        sh.cv.notify_all();
        if st.chans[ch].gen != gen {
            // Reset (or re-armed) while executing: the hardware abandons the descriptor.
            return;
        }
    } else {
        execute(&work);
        drop(table);
    }
    st.chans[ch].pending = Some(Pending {
        addr,
        next: d.next,
        end,
        compl,
        int_en: d.ctl.has(Ctl::INT_EN),
        opc,
        null: d.ctl.is_null(),
        len,
    });
}

/// The source bytes of the copy descriptor at `addr`, if it is one and fully mapped.
fn peek_copy_source(t: &Table, addr: u64) -> Option<Vec<u8>> {
    let p = t.translate(addr, DESC_SIZE as u64)?;
    let d = read_desc(p);
    if d.ctl.opcode() != op::COPY || d.ctl.is_null() || d.size == 0 || d.size > 1 << 20 {
        return None;
    }
    let sp = pieces(d.src, d.size as u64, d.ctl.has(Ctl::SRC_BRK), d.rsv1);
    let src = translate_all(t, &sp).ok()?;
    let mut out = Vec::with_capacity(d.size as usize);
    for (h, l) in src.iter() {
        let mut b = vec![0u8; l];
        // SAFETY: `[h, h + l)` was translated under the table guard the caller holds, so it
        // lies in live mapped memory; copied out raw, no reference to DMA memory is made.
        unsafe { std::ptr::copy_nonoverlapping(h as *const u8, b.as_mut_ptr(), l) };
        out.extend_from_slice(&b);
    }
    Some(out)
}

/// The end of descriptor `p`'s time: count it, write the completion, raise its interrupt.
fn complete(sh: &Shared, st: &mut DevState, ch: usize, p: Pending) {
    let master = st.pci.master();
    let c = &mut st.chans[ch];
    c.vstart = p.end;
    c.count = c.count.wrapping_add(1);
    c.completed = p.addr;
    c.next_fetch = Some(p.next);
    c.stats.descriptors += 1;
    if p.int_en {
        c.stats.interrupts_requested += 1;
    }
    if p.null {
        c.stats.nulls += 1;
    } else {
        c.stats.bytes += p.len;
        if p.opc == op::FILL {
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
    if p.compl {
        let img = c.completed | c.state.bits();
        let cmp = c.chancmp;
        if !master {
            sh.violate(
                st,
                V::desc("R5", RuleTag::Inferred, ch, p.addr).misuse(),
                format!("completion write to {cmp:#x} with PCI COMMAND.BUS_MASTER clear: the write cannot be made and is lost"),
            );
        } else if writeback(&sh.mem.read(), cmp, img) {
            st.chans[ch].stats.writebacks += 1;
        } else {
            let e = derr(
                chanerr::COMPLETION_ADDR,
                "A2",
                RuleTag::Stated,
                format!("completion address {cmp:#x} became unusable during the descriptor"),
            );
            fail(sh, st, ch, p.addr, None, e);
            return;
        }
    }
    if p.int_en {
        super::irq::raise(st, ch, p.end);
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
    match work {
        Work::Null => {}
        Work::Copy { segs, early } => {
            let mut off = 0;
            for (src, dst, len) in segs.iter() {
                match early {
                    Some(b) => {
                        // SAFETY: `[dst, dst + len)` was translated under the table's read
                        // guard, which the caller still holds (live mapping, memory kept
                        // allocated by the `DmaMapper::map` contract, no Rust references to
                        // it); `b` is our own buffer and cannot overlap it.
                        unsafe {
                            std::ptr::copy_nonoverlapping(b[off..off + len].as_ptr(), dst, len)
                        };
                    }
                    None => {
                        // SAFETY: both ranges were translated under the table's read guard,
                        // which the caller still holds, so they lie inside live mappings whose
                        // memory the `DmaMapper::map` contract keeps allocated and free of
                        // Rust references. They may overlap (a driver bug, or a deliberate
                        // in-place move), so `copy` (memmove).
                        unsafe { std::ptr::copy(src, dst, len) };
                    }
                }
                off += len;
            }
        }
        Work::Fill { pattern, dst } => {
            // The 64-bit pattern repeats from the first destination byte on (little-endian),
            // keeping its phase across a page break.
            let pat = pattern.to_le_bytes();
            let mut phase = 0usize;
            for (d, len) in dst.iter() {
                let mut block = [0u8; 512];
                for (i, b) in block.iter_mut().enumerate() {
                    *b = pat[(phase + i) % 8];
                }
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(block.len());
                    // SAFETY: `[d, d + len)` was translated under the read guard the caller
                    // holds (see above); `block` is a local buffer that cannot overlap it.
                    // `block.len()` is a multiple of 8, so every chunk starts in phase.
                    unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), d.add(done), n) };
                    done += n;
                }
                phase = (phase + len) % 8;
            }
        }
    }
}
