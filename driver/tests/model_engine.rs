//! The device model's engine: descriptor execution, every address/size/opcode fault with its
//! CHANERR bit, the channel state machine, DMACOUNT wrap and overrun, timing and fault
//! injection.

mod model_common;

use std::time::{Duration, Instant};

use ioat_driver::desc::{op, Ctl, HwDescriptor, DESC_SIZE};
use ioat_driver::model::{Fault, FaultClass, ModelConfig, ModelDevice, Preset, RuleTag, Timing};
use ioat_driver::regs::{chancmd, chanctrl, chanerr, chansts, ChanState, RegisterAccess};
use model_common::*;

/// A started channel (SPDK-style, with ERR_COMPLETION_EN) and a ring of `n` descriptors.
struct Rig {
    dev: std::sync::Arc<ModelDevice>,
    ring: DmaMem,
    comp: DmaMem,
    data: DmaMem,
    n: usize,
    head: u16,
}

impl Rig {
    fn new(cfg: ModelConfig, n: usize) -> Rig {
        let dev = ModelDevice::new(cfg);
        let ring = DmaMem::new(&dev, n * DESC_SIZE);
        let comp = DmaMem::new(&dev, 4096);
        let data = DmaMem::new(&dev, 1 << 21);
        let r = Rig {
            dev,
            ring,
            comp,
            data,
            n,
            head: 0,
        };
        for i in 0..n {
            r.put(i, HwDescriptor::null(Ctl::copy()));
        }
        r.start();
        r
    }
    fn start(&self) {
        let d = &self.dev;
        d.write16(
            CHANCTRL,
            chanctrl::ANY_ERR_ABORT_EN | chanctrl::ERR_COMPLETION_EN,
        );
        d.write64(CHANCMP, self.comp.iova);
        d.write64(CHAINADDR, self.desc_iova(0));
    }
    fn desc_iova(&self, i: usize) -> u64 {
        self.ring.iova((i % self.n) * DESC_SIZE)
    }
    fn put(&self, i: usize, mut d: HwDescriptor) {
        d.next = self.desc_iova(i + 1);
        self.ring.write_desc((i % self.n) * DESC_SIZE, &d);
    }
    fn put_raw(&self, i: usize, d: HwDescriptor) {
        self.ring.write_desc((i % self.n) * DESC_SIZE, &d);
    }
    /// Submits one descriptor at the head and rings the doorbell.
    fn submit(&mut self, d: HwDescriptor) -> usize {
        let i = self.head as usize;
        self.put(i, d);
        self.head = self.head.wrapping_add(1);
        self.dev.write16(DMACOUNT, self.head);
        i
    }
    fn completion(&self) -> u64 {
        self.comp.read_u64(0)
    }
    fn wait_halt(&self) -> u32 {
        assert_eq!(
            wait_state(&*self.dev, 0, ChanState::Halted),
            ChanState::Halted
        );
        self.dev.read32(CHANERR)
    }
    fn wait_done(&self) {
        assert_eq!(
            wait_state(&*self.dev, 0, ChanState::Done),
            ChanState::Done,
            "CHANERR {:#x}, violations {:#?}",
            self.dev.read32(CHANERR),
            self.dev.violations()
        );
    }
}

fn rig() -> Rig {
    Rig::new(ModelConfig::preset(Preset::Skx), 16)
}

/// Submits `d` as the second descriptor after a good one and checks the halt: CHANERR bit,
/// halted completion image pointing at the good descriptor, rule of the violation.
fn expect_fault(mut r: Rig, d: HwDescriptor, bit: u32, rule: &str) {
    let ok = r.data.iova(0);
    r.submit(HwDescriptor::copy(
        64,
        ok,
        ok + 4096,
        Ctl::copy().compl_write(true),
    ));
    r.wait_done();
    r.submit(d);
    assert_eq!(r.wait_halt(), bit, "CHANERR for {rule}");
    let c = r.completion();
    assert_eq!(ChanState::from_bits(c), ChanState::Halted);
    assert_eq!(c & chansts::COMPLETED_ADDR_MASK, r.desc_iova(0));
    assert_eq!(
        r.dev.read64(CHANSTS),
        r.desc_iova(0) | ChanState::Halted.bits()
    );
    assert_eq!(
        r.dev.read64(CH0 + ioat_driver::regs::chan::CDAR),
        r.desc_iova(1)
    );
    let v = r.dev.take_violations();
    assert_eq!(rules(&v), [rule], "{v:#?}");
    // The hardware reports every descriptor fault itself (CHANERR and a halt).
    assert_eq!(v[0].class, FaultClass::DeviceError, "{v:#?}");
    assert_eq!(v[0].iova, Some(r.desc_iova(1)));
    assert_eq!(r.dev.stats(0).halts, 1);
    // Halted: further doorbells do nothing.
    r.submit(HwDescriptor::null(Ctl::copy()));
    std::thread::sleep(Duration::from_millis(1));
    assert_eq!(r.dev.stats(0).descriptors, 1);
}

#[test]
fn copy_and_fill_byte_exact() {
    let mut r = rig();
    r.data.fill_pattern(0, 100_000, 42);
    r.submit(HwDescriptor::copy(
        100_000,
        r.data.iova(3),
        r.data.iova(1 << 20) + 5,
        Ctl::copy(),
    ));
    r.submit(HwDescriptor::fill(
        777,
        0x1122_3344_5566_7788,
        r.data.iova(500_001),
        Ctl::fill().compl_write(true),
    ));
    r.wait_done();
    assert_eq!(r.data.read(3, 100_000), r.data.read((1 << 20) + 5, 100_000));
    let f = r.data.read(500_001, 777);
    assert!(f
        .iter()
        .enumerate()
        .all(|(i, b)| *b == 0x1122_3344_5566_7788u64.to_le_bytes()[i % 8]));
    let s = r.dev.stats(0);
    assert_eq!(
        (s.copies, s.fills, s.bytes, s.writebacks),
        (1, 1, 100_777, 1)
    );
    assert_eq!(r.completion(), r.desc_iova(1) | ChanState::Done.bits());
    assert_clean(&r.dev);
}

#[test]
fn overlapping_copy_is_a_memmove() {
    let mut r = rig();
    r.data.fill_pattern(0, 8192, 1);
    let want = r.data.read(0, 8000);
    r.submit(HwDescriptor::copy(
        8000,
        r.data.iova(0),
        r.data.iova(100),
        Ctl::copy(),
    ));
    r.wait_done();
    assert_eq!(r.data.read(100, 8000), want);
}

#[test]
fn fault_unmapped_source() {
    let r = rig();
    let d = HwDescriptor::copy(64, 0xdead_0000, r.data.iova(0), Ctl::copy());
    expect_fault(r, d, chanerr::SRC_ADDR, "E10");
}

#[test]
fn fault_host_address_as_source() {
    let r = rig();
    let local = [0u8; 64];
    let host = local.as_ptr() as u64;
    let d = HwDescriptor::copy(64, host, r.data.iova(0), Ctl::copy());
    expect_fault(r, d, chanerr::SRC_ADDR, "E10");
}

#[test]
fn fault_source_runs_past_its_mapping() {
    let r = rig();
    let d = HwDescriptor::copy(
        8192,
        r.data.iova((1 << 21) - 4096),
        r.data.iova(0),
        Ctl::copy(),
    );
    expect_fault(r, d, chanerr::SRC_ADDR, "E10");
}

#[test]
fn fault_unmapped_destination() {
    let r = rig();
    let d = HwDescriptor::copy(64, r.data.iova(0), r.data.iova(1 << 21), Ctl::copy());
    expect_fault(r, d, chanerr::DEST_ADDR, "E10");
}

#[test]
fn fault_fill_to_unmapped_destination() {
    let r = rig();
    let d = HwDescriptor::fill(64, 0, 0x10, Ctl::fill());
    expect_fault(r, d, chanerr::DEST_ADDR, "E10");
}

#[test]
fn fault_size_zero() {
    let r = rig();
    let d = HwDescriptor::copy(0, r.data.iova(0), r.data.iova(64), Ctl::copy());
    expect_fault(r, d, chanerr::LENGTH, "S1");
}

#[test]
fn fault_size_above_xfercap() {
    let r = Rig::new(ModelConfig::preset(Preset::Bdx).xfercap_log(12), 16);
    let d = HwDescriptor::copy(4097, r.data.iova(0), r.data.iova(8192), Ctl::copy());
    expect_fault(r, d, chanerr::LENGTH, "S2");
}

#[test]
fn size_equal_to_xfercap_is_fine() {
    let mut r = Rig::new(ModelConfig::preset(Preset::Bdx).xfercap_log(12), 16);
    r.submit(HwDescriptor::copy(
        4096,
        r.data.iova(0),
        r.data.iova(8192),
        Ctl::copy(),
    ));
    r.wait_done();
    assert_clean(&r.dev);
}

#[test]
fn fault_deprecated_opcode() {
    let r = rig();
    let d = HwDescriptor::copy(64, r.data.iova(0), r.data.iova(64), Ctl::op(op::OLD_XOR));
    expect_fault(r, d, chanerr::CONTROL, "O1");
}

#[test]
fn fault_unknown_opcode() {
    let r = rig();
    let d = HwDescriptor::copy(64, r.data.iova(0), r.data.iova(64), Ctl::op(0x42));
    expect_fault(r, d, chanerr::CONTROL, "O1");
}

#[test]
fn fault_raid_opcode() {
    let r = rig();
    let d = HwDescriptor::copy(64, r.data.iova(0), r.data.iova(64), Ctl::op(op::XOR));
    expect_fault(r, d, chanerr::CONTROL, "O4");
}

#[test]
fn fault_fill_without_capability() {
    let r = Rig::new(ModelConfig::preset(Preset::Skx).fill(false), 16);
    let d = HwDescriptor::fill(64, 7, r.data.iova(0), Ctl::fill());
    expect_fault(r, d, chanerr::CONTROL, "O5");
}

/// Page-break descriptors (hardware rule O8, FreeBSD's `ioat_copy_8k_aligned`): the bytes
/// after the first 4 KiB boundary continue at next_src_addr (+0x20) / next_dest_addr (+0x28).
#[test]
fn page_break_descriptors_join_two_pages() {
    let mut r = rig();
    r.data.fill_pattern(0, 16 * 4096, 5);
    // FreeBSD's shape: 8 KiB from two separate source pages to two separate destination pages.
    let mut d = HwDescriptor::copy(
        8192,
        r.data.iova(0),
        r.data.iova(32 * 4096),
        Ctl::copy()
            .with(Ctl::SRC_BRK, true)
            .with(Ctl::DEST_BRK, true),
    );
    d.rsv1 = r.data.iova(5 * 4096); // next_src_addr
    d.rsv2 = r.data.iova(40 * 4096); // next_dest_addr
    r.submit(d);
    // Unaligned: the source breaks 100 bytes before its page end, the destination does not.
    let mut e = HwDescriptor::copy(
        3000,
        r.data.iova(4096 - 100),
        r.data.iova(50 * 4096 + 7),
        Ctl::copy().with(Ctl::SRC_BRK, true),
    );
    e.rsv1 = r.data.iova(9 * 4096 + 64);
    r.submit(e);
    // Both sides break, at different offsets: three segments.
    let mut g = HwDescriptor::copy(
        6000,
        r.data.iova(80 * 4096 + 100),
        r.data.iova(90 * 4096 + 2000),
        Ctl::copy()
            .with(Ctl::SRC_BRK, true)
            .with(Ctl::DEST_BRK, true),
    );
    g.rsv1 = r.data.iova(100 * 4096);
    g.rsv2 = r.data.iova(110 * 4096);
    r.data.fill_pattern(80 * 4096, 4096, 11);
    r.data.fill_pattern(100 * 4096, 4096, 12);
    r.submit(g);
    // A fill across a destination break keeps the pattern's phase.
    let mut f = HwDescriptor::fill(
        200,
        0x0102_0304_0506_0708,
        r.data.iova(60 * 4096 - 13),
        Ctl::fill().with(Ctl::DEST_BRK, true).compl_write(true),
    );
    f.rsv2 = r.data.iova(70 * 4096);
    r.submit(f);
    r.wait_done();
    assert_eq!(r.data.read(32 * 4096, 4096), r.data.read(0, 4096));
    assert_eq!(r.data.read(40 * 4096, 4096), r.data.read(5 * 4096, 4096));
    let mut want = r.data.read(4096 - 100, 100);
    want.extend(r.data.read(9 * 4096 + 64, 2900));
    assert_eq!(r.data.read(50 * 4096 + 7, 3000), want);
    let mut src = r.data.read(80 * 4096 + 100, 3996);
    src.extend(r.data.read(100 * 4096, 2004));
    let mut dst = r.data.read(90 * 4096 + 2000, 2096);
    dst.extend(r.data.read(110 * 4096, 3904));
    assert_eq!(dst, src);
    let pat = 0x0102_0304_0506_0708u64.to_le_bytes();
    let mut got = r.data.read(60 * 4096 - 13, 13);
    got.extend(r.data.read(70 * 4096, 187));
    assert!(got.iter().enumerate().all(|(i, b)| *b == pat[i % 8]));
    assert_clean(&r.dev);
}

/// A page break joins two pages at most: a longer descriptor halts (LENGTH), and a second page
/// that is not mapped halts like any unmapped source (a device error, not misuse).
#[test]
fn fault_page_break_beyond_two_pages_or_unmapped() {
    let r = rig();
    let mut d = HwDescriptor::copy(
        3 * 4096,
        r.data.iova(0),
        r.data.iova(64 * 4096),
        Ctl::copy().with(Ctl::SRC_BRK, true),
    );
    d.rsv1 = r.data.iova(8 * 4096);
    expect_fault(r, d, chanerr::LENGTH, "O8");
    let r = rig();
    let d = HwDescriptor::copy(
        8192,
        r.data.iova(0),
        r.data.iova(64 * 4096),
        Ctl::copy().with(Ctl::SRC_BRK, true),
    );
    // next_src_addr left 0: unmapped.
    expect_fault(r, d, chanerr::SRC_ADDR, "E10");
}

#[test]
fn fault_unmapped_completion_address() {
    let r = rig();
    let ok = r.data.iova(0);
    // Good descriptor first (with compl_write) so CHANCMP works; then point CHANCMP away.
    let mut r = r;
    r.submit(HwDescriptor::copy(
        64,
        ok,
        ok + 4096,
        Ctl::copy().compl_write(true),
    ));
    r.wait_done();
    r.dev.write64(CHANCMP, 0x5000);
    r.submit(HwDescriptor::copy(
        64,
        ok,
        ok + 4096,
        Ctl::copy().compl_write(true),
    ));
    assert_eq!(
        r.wait_halt(),
        chanerr::COMPLETION_ADDR,
        "halt writeback also fails: still COMPLETION_ADDR"
    );
    assert_eq!(rules(&r.dev.take_violations()), ["A2"]);
}

#[test]
fn fault_misaligned_completion_address() {
    let mut r = rig();
    r.dev.write64(CHANCMP, r.comp.iova + 4);
    assert_eq!(rules(&r.dev.take_violations()), ["A2"]);
    r.submit(HwDescriptor::null(Ctl::copy().compl_write(true)));
    assert_eq!(r.wait_halt(), chanerr::COMPLETION_ADDR);
}

#[test]
fn fault_next_unmapped() {
    let mut r = rig();
    let mut d = HwDescriptor::null(Ctl::copy());
    d.next = 0x9_0000_0000_0000 & !0x3f;
    r.put_raw(0, d);
    r.head = 2;
    r.dev.write16(DMACOUNT, 2);
    assert_eq!(r.wait_halt(), chanerr::NEXT_ADDR);
    assert_eq!(r.completion(), r.desc_iova(0) | ChanState::Halted.bits());
    assert_eq!(rules(&r.dev.take_violations()), ["E10"]);
}

#[test]
fn fault_next_misaligned() {
    let r = rig();
    let mut d = HwDescriptor::null(Ctl::copy());
    d.next = r.desc_iova(1) + 8;
    r.put_raw(0, d);
    r.dev.write16(DMACOUNT, 2);
    assert_eq!(r.wait_halt(), chanerr::NEXT_DESC_ALIGN);
    let v = r.dev.take_violations();
    assert_eq!(rules(&v), ["A1"]);
    assert_eq!(v[0].tag, RuleTag::Inferred);
}

#[test]
fn fault_chainaddr_misaligned_and_unmapped() {
    let r = rig();
    r.dev.write64(CHAINADDR, r.desc_iova(0) + 0x10);
    r.dev.write16(DMACOUNT, 1);
    assert_eq!(r.wait_halt(), chanerr::CHAIN_ADDR_VALUE);
    assert_eq!(rules(&r.dev.take_violations()), ["A1", "A1"]);

    let r = rig();
    r.dev.write64(CHAINADDR, 0x40);
    r.dev.write16(DMACOUNT, 1);
    assert_eq!(r.wait_halt(), chanerr::CHAIN_ADDR_VALUE);
    assert_eq!(rules(&r.dev.take_violations()), ["E10"]);
}

#[test]
fn halt_without_err_completion_en_writes_nothing() {
    let mut r = rig();
    r.dev.write16(CHANCTRL, chanctrl::ANY_ERR_ABORT_EN);
    r.comp.write_u64(0, 0x77);
    r.submit(HwDescriptor::copy(
        0,
        r.data.iova(0),
        r.data.iova(64),
        Ctl::copy(),
    ));
    r.wait_halt();
    assert_eq!(r.completion(), 0x77);
}

#[test]
fn states_armed_active_done_suspended_resume() {
    let mut r = Rig::new(
        ModelConfig::preset(Preset::Skx).timing(Timing::Modeled {
            per_desc: Duration::from_millis(20),
            bytes_per_sec: 0,
        }),
        16,
    );
    assert_eq!(state(&*r.dev, 0), ChanState::Armed);
    for _ in 0..5 {
        r.submit(HwDescriptor::null(Ctl::copy().compl_write(true)));
    }
    assert_eq!(state(&*r.dev, 0), ChanState::Active);
    // SUSPEND while a descriptor executes takes effect after it.
    r.dev.write8(CHANCMD, chancmd::SUSPEND);
    assert_eq!(
        wait_state(&*r.dev, 0, ChanState::Suspended),
        ChanState::Suspended
    );
    let done = r.dev.stats(0).descriptors;
    assert!(done < 5, "suspended early, {done} done");
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(
        r.dev.stats(0).descriptors,
        done,
        "nothing runs while suspended"
    );
    // A doorbell does not resume; RESUME does.
    r.dev.write16(DMACOUNT, r.head);
    assert_eq!(state(&*r.dev, 0), ChanState::Suspended);
    r.dev.write8(CHANCMD, chancmd::RESUME);
    r.wait_done();
    assert_eq!(r.dev.stats(0).descriptors, 5);
    assert_eq!(r.completion(), r.desc_iova(4) | ChanState::Done.bits());
    // SUSPEND from DONE; CHAINADDR re-arms from SUSPENDED with the count back at 0 (rule D3).
    r.dev.write8(CHANCMD, chancmd::SUSPEND);
    assert_eq!(state(&*r.dev, 0), ChanState::Suspended);
    r.dev.write64(CHAINADDR, r.desc_iova(5));
    assert_eq!(
        r.dev.read64(CHANSTS),
        ChanState::Armed.bits(),
        "completed address back to 0"
    );
    r.dev.write16(DMACOUNT, 1);
    r.wait_done();
    assert_eq!(
        r.dev.read64(CHANSTS),
        r.desc_iova(5) | ChanState::Done.bits()
    );
    assert_clean(&r.dev);
}

#[test]
fn reset_abandons_work_in_flight() {
    let mut r = Rig::new(
        ModelConfig::preset(Preset::Skx).timing(Timing::Modeled {
            per_desc: Duration::from_millis(20),
            bytes_per_sec: 0,
        }),
        16,
    );
    for _ in 0..4 {
        r.submit(HwDescriptor::null(Ctl::copy()));
    }
    r.dev.write8(CHANCMD, chancmd::RESET);
    assert!(poll(|| r.dev.read8(CHANCMD) == 0));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(&*r.dev, 0), ChanState::Halted);
    assert!(r.dev.stats(0).descriptors < 4);
}

#[test]
fn dmacount_wraps_past_16_bits() {
    let mut r = Rig::new(ModelConfig::preset(Preset::Icx), 64);
    r.data.fill_pattern(0, 4096, 9);
    let total = 70_000u32;
    let mut submitted = 0u32;
    while submitted < total {
        // Batches of up to 63 (ring size - 1), waiting for each batch.
        let k = (total - submitted).min(63);
        for j in 0..k {
            let i = r.head as usize;
            let last = j == k - 1;
            r.put(
                i,
                HwDescriptor::copy(
                    64,
                    r.data.iova(0),
                    r.data.iova(8192 + (i % 64) * 64),
                    Ctl::copy().compl_write(last),
                ),
            );
            r.head = r.head.wrapping_add(1);
        }
        r.dev.write16(DMACOUNT, r.head);
        submitted += k;
        let want = r.desc_iova(r.head.wrapping_sub(1) as usize);
        assert!(poll(|| r.completion() & chansts::COMPLETED_ADDR_MASK
            == want
            && state(&*r.dev, 0) == ChanState::Done));
    }
    assert_eq!(r.dev.stats(0).descriptors, total as u64);
    assert_eq!(r.dev.read16(DMACOUNT), (total % 65536) as u16);
    assert_clean(&r.dev);
}

#[test]
fn dmacount_beyond_ring_is_reported() {
    let r = Rig::new(
        ModelConfig::preset(Preset::Skx).timing(Timing::Modeled {
            per_desc: Duration::from_millis(1),
            bytes_per_sec: 0,
        }),
        8,
    );
    r.dev.write16(DMACOUNT, 9);
    let v = r.dev.take_violations();
    assert_eq!(rules(&v), ["D4"], "{v:#?}");
    assert!(v[0].message.contains("only 8 distinct"), "{}", v[0].message);
    // Exactly the ring size is not flagged (after a re-arm).
    r.dev.write8(CHANCMD, chancmd::RESET);
    assert!(poll(|| r.dev.read8(CHANCMD) == 0));
    r.start();
    r.dev.write16(DMACOUNT, 8);
    assert_clean(&r.dev);
}

#[test]
fn injected_chanerr_on_nth() {
    let mut r = rig();
    r.dev.inject(
        0,
        Fault::ChanErrOnNth {
            nth: 3,
            bits: chanerr::READ_DATA,
        },
    );
    for _ in 0..5 {
        r.submit(HwDescriptor::null(Ctl::copy().compl_write(true)));
    }
    assert_eq!(r.wait_halt(), chanerr::READ_DATA);
    assert_eq!(r.dev.stats(0).descriptors, 2);
    assert_eq!(r.completion(), r.desc_iova(1) | ChanState::Halted.bits());
    // One-shot: after recovery the channel runs on.
    r.dev.write32(CHANERR, chanerr::READ_DATA);
    r.dev.write64(CHAINADDR, r.desc_iova(3));
    r.dev.write16(DMACOUNT, 2);
    r.wait_done();
    assert_eq!(r.dev.stats(0).descriptors, 4);
    assert_clean(&r.dev);
}

#[test]
fn injected_hang_lasts_until_reset() {
    let mut r = rig();
    r.dev.inject(0, Fault::Hang { after: 2 });
    for _ in 0..4 {
        r.submit(HwDescriptor::null(Ctl::copy()));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(state(&*r.dev, 0), ChanState::Active);
    assert_eq!(r.dev.stats(0).descriptors, 2);
    r.dev.write8(CHANCMD, chancmd::RESET);
    assert!(poll(|| r.dev.read8(CHANCMD) == 0));
    r.start();
    r.head = 0;
    r.submit(HwDescriptor::null(Ctl::copy()));
    r.wait_done();
    assert_eq!(r.dev.stats(0).descriptors, 3);
}

#[test]
fn injected_slow_and_modeled_timing() {
    let mut r = Rig::new(
        ModelConfig::preset(Preset::Skx).timing(Timing::Modeled {
            per_desc: Duration::from_micros(100),
            bytes_per_sec: 1_000_000_000,
        }),
        16,
    );
    // 1 MB at 1 GB/s = 1 ms, plus 100 us.
    let t = Instant::now();
    r.submit(HwDescriptor::copy(
        1 << 20,
        r.data.iova(0),
        r.data.iova(1 << 20),
        Ctl::copy(),
    ));
    r.wait_done();
    assert!(t.elapsed() >= Duration::from_micros(1100));
    r.dev.inject(
        0,
        Fault::Slow {
            extra: Duration::from_millis(10),
        },
    );
    let t = Instant::now();
    r.submit(HwDescriptor::null(Ctl::copy()));
    r.wait_done();
    assert!(t.elapsed() >= Duration::from_millis(10));
    r.dev.clear_faults(0);
}

#[test]
fn unmap_waits_for_the_descriptor_using_the_memory() {
    let mut r = Rig::new(
        ModelConfig::preset(Preset::Skx).timing(Timing::Modeled {
            per_desc: Duration::from_millis(30),
            bytes_per_sec: 0,
        }),
        16,
    );
    let extra = DmaMem::new(&r.dev, 4096);
    r.submit(HwDescriptor::copy(
        64,
        extra.iova(0),
        extra.iova(64),
        Ctl::copy(),
    ));
    // Once CDAR shows the descriptor, the engine has translated its addresses under the
    // table's read guard: unmap cannot pull the memory from under the copy.
    let want = r.desc_iova(0);
    assert!(poll(
        || r.dev.read64(CH0 + ioat_driver::regs::chan::CDAR) == want
    ));
    drop(extra);
    r.wait_done();
    assert_clean(&r.dev);
    assert_eq!(r.dev.model_mapper().mapping_count(), 3);
}

#[test]
fn unmapped_after_unmap_halts() {
    let mut r = rig();
    let extra = DmaMem::new(&r.dev, 4096);
    let iova = extra.iova(0);
    drop(extra);
    r.submit(HwDescriptor::copy(64, r.data.iova(0), iova, Ctl::copy()));
    assert_eq!(r.wait_halt(), chanerr::DEST_ADDR);
}

#[test]
fn several_channels_run_independently() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Skx).chancnt(3));
    let comp = DmaMem::new(&dev, 4096);
    let ring = DmaMem::new(&dev, 4096);
    for ch in 0..3u32 {
        let off = ch as usize * DESC_SIZE;
        let mut d = HwDescriptor::null(Ctl::copy().compl_write(true));
        d.next = ring.iova(off);
        ring.write_desc(off, &d);
        dev.write16(
            reg(ch, ioat_driver::regs::chan::CHANCTRL),
            chanctrl::ANY_ERR_ABORT_EN,
        );
        dev.write64(
            reg(ch, ioat_driver::regs::chan::CHANCMP),
            comp.iova(ch as usize * 64),
        );
        dev.write64(reg(ch, ioat_driver::regs::chan::CHAINADDR), ring.iova(off));
        dev.write16(reg(ch, ioat_driver::regs::chan::DMACOUNT), ch as u16 + 1);
    }
    for ch in 0..3u32 {
        assert_eq!(wait_state(&*dev, ch, ChanState::Done), ChanState::Done);
        assert_eq!(dev.stats(ch).descriptors, ch as u64 + 1);
        assert_eq!(
            comp.read_u64(ch as usize * 64),
            ring.iova(ch as usize * DESC_SIZE) | 1
        );
    }
    assert_clean(&dev);
}

#[test]
fn lazily_linked_ring_is_not_an_overrun() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Skx).timing(Timing::Modeled {
        per_desc: Duration::from_millis(20),
        bytes_per_sec: 0,
    }));
    let ring = DmaMem::new(&dev, 8 * DESC_SIZE);
    let link = |i: usize, next: u64| {
        let mut d = HwDescriptor::null(Ctl::copy());
        d.next = next;
        ring.write_desc(i * DESC_SIZE, &d);
    };
    // Only descriptors 0 and 1 linked (1 -> nowhere) at the first doorbell.
    link(0, ring.iova(DESC_SIZE));
    link(1, 0);
    dev.write64(CHAINADDR, ring.iova(0));
    dev.write16(DMACOUNT, 2);
    // The driver links the rest of the ring as it fills it.
    for i in 1..8 {
        link(i, ring.iova(((i + 1) % 8) * DESC_SIZE));
    }
    dev.write16(DMACOUNT, 7);
    assert_eq!(wait_state(&*dev, 0, ChanState::Done), ChanState::Done);
    assert_clean(&dev);
}
