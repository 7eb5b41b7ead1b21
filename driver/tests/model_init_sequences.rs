//! The init sequences of Linux, SPDK, DPDK and the kernel's VFIO selftest driver, written as
//! raw register sequences (facts §1.4-1.7, §2, §3), each bring a model channel to a working
//! state and run a copy; sequences a real device rejects fail in the model.

mod model_common;

use std::time::Duration;

use ioat_driver::desc::{op, Ctl, HwDescriptor, DESC_SIZE};
use ioat_driver::model::{ModelConfig, ModelDevice, Preset};
use ioat_driver::regs::{
    chan, chancmd, chanctrl, chanerr, chansts, general, pci, ChanState, RegisterAccess,
};
use model_common::*;

const RING: usize = 64;

/// A circular ring of `RING` descriptors linked through `next`, plus a completion word and a
/// data area.
struct Setup {
    ring: DmaMem,
    comp: DmaMem,
    data: DmaMem,
}

impl Setup {
    fn new(dev: &ModelDevice) -> Setup {
        let ring = DmaMem::new(dev, RING * DESC_SIZE);
        for i in 0..RING {
            let d = HwDescriptor {
                next: ring.iova(((i + 1) % RING) * DESC_SIZE),
                ..Default::default()
            };
            ring.write_desc(i * DESC_SIZE, &d);
        }
        Setup {
            ring,
            comp: DmaMem::new(dev, 4096),
            data: DmaMem::new(dev, 1 << 20),
        }
    }
    fn desc_iova(&self, i: usize) -> u64 {
        self.ring.iova((i % RING) * DESC_SIZE)
    }
    /// Writes descriptor `i`, keeping its ring link.
    fn put(&self, i: usize, mut d: HwDescriptor) {
        d.next = self.desc_iova(i + 1);
        self.ring.write_desc((i % RING) * DESC_SIZE, &d);
    }
    fn completion(&self) -> u64 {
        self.comp.read_u64(0)
    }
    fn wait_completed(&self, i: usize) -> u64 {
        let want = self.desc_iova(i);
        let mut last = 0;
        assert!(
            poll(|| {
                last = self.completion();
                last & chansts::COMPLETED_ADDR_MASK == want
            }),
            "completion never reached descriptor {i} ({want:#x}); last {last:#x}"
        );
        last
    }
    /// A copy of `len` bytes from data[0..] to data[512K..], with a pattern to check.
    fn copy_desc(&self, len: usize, seed: u8, ctl: Ctl) -> HwDescriptor {
        self.data.fill_pattern(0, len, seed);
        HwDescriptor::copy(len as u32, self.data.iova(0), self.data.iova(1 << 19), ctl)
    }
    fn check_copied(&self, len: usize) {
        assert_eq!(
            self.data.read(0, len),
            self.data.read(1 << 19, len),
            "copy mismatch"
        );
    }
}

// ---------------------------------------------------------------- Linux

/// Linux `ioat_reset_hw` (dma.c): quiesce, W1C CHANERR, CHANERR_INT below 3.3, RESET, poll.
fn linux_reset_hw<R: RegisterAccess>(r: &R, version: u8) {
    let s = state(r, 0);
    if s == ChanState::Active || s == ChanState::Done {
        r.write8(CHANCMD, chancmd::SUSPEND);
        assert!(poll(|| !matches!(
            state(r, 0),
            ChanState::Active | ChanState::Done
        )));
    }
    let e = r.read32(CHANERR);
    r.write32(CHANERR, e);
    if version < 0x33 {
        let ei = r.config_read32(pci::CHANERR_INT);
        r.config_write32(pci::CHANERR_INT, ei);
    }
    r.write8(CHANCMD, chancmd::RESET);
    assert!(
        poll(|| r.read8(CHANCMD) & chancmd::RESET == 0),
        "reset never cleared"
    );
}

/// Linux `ioat_alloc_chan_resources` + `ioat_start_null_desc`.
fn linux_start<R: RegisterAccess>(r: &R, s: &Setup, dps: bool) {
    r.write16(CHANCTRL, chanctrl::RUN);
    // "doing 2 32bit writes to mmio since 1 64b write doesn't work" (rule W1).
    r.write32(CHANCMP, s.comp.iova as u32);
    r.write32(CHANCMP + 4, (s.comp.iova >> 32) as u32);
    if dps {
        r.write16(CH0 + chan::DRSCTL, 0x0109);
    }
    // Null descriptor: size 1 (v3.0 workaround), int_en, compl_write.
    let mut null = HwDescriptor::null(Ctl::copy().int_en(true).compl_write(true));
    null.size = 1;
    s.put(0, null);
    let a = s.desc_iova(0);
    r.write32(CHAINADDR, a as u32);
    r.write32(CHAINADDR + 4, (a >> 32) as u32);
    r.write16(DMACOUNT, 1);
    // Linux accepts ACTIVE or DONE right after the doorbell.
    let st = state(r, 0);
    assert!(
        matches!(st, ChanState::Active | ChanState::Done),
        "failed to start channel: {st}, CHANERR {:#x}",
        r.read32(CHANERR)
    );
}

fn linux_sequence(preset: Preset) {
    let dev = ModelDevice::new(ModelConfig::preset(preset));
    let ver = if preset == Preset::Skx {
        0x32
    } else {
        dev.read8(general::CBVER)
    }; // rule V2
    let s = Setup::new(&dev);
    linux_reset_hw(&dev, ver);
    linux_start(&dev, &s, preset == Preset::Icx);
    let c = s.wait_completed(0);
    assert_eq!(ChanState::from_bits(c), ChanState::Done);
    // The probe self-test: a 2000-byte memcpy with an interrupt, then issue_pending.
    s.put(
        1,
        s.copy_desc(2000, 7, Ctl::copy().int_en(true).compl_write(true)),
    );
    let mut dmacount: u16 = 1;
    dmacount = dmacount.wrapping_add(1);
    dev.write16(DMACOUNT, dmacount);
    s.wait_completed(1);
    s.check_copied(2000);
    // A copy larger than XFERCAP split Linux-style: only the last piece has compl_write.
    let cap = 1usize << dev.read8(general::XFERCAP);
    assert_eq!(cap, 1 << 20);
    s.data.fill_pattern(0, 4096, 9);
    for (k, off) in [0usize, 2048].iter().enumerate() {
        let last = k == 1;
        s.put(
            2 + k,
            HwDescriptor::copy(
                2048,
                s.data.iova(*off),
                s.data.iova((1 << 19) + off),
                Ctl::copy().compl_write(last),
            ),
        );
    }
    dmacount = dmacount.wrapping_add(2);
    dev.write16(DMACOUNT, dmacount);
    s.wait_completed(3);
    s.check_copied(4096);
    assert_eq!(dev.stats(0).descriptors, 4);
    assert_clean(&dev);
}

#[test]
fn linux_init_sequence_bdx() {
    linux_sequence(Preset::Bdx);
}

#[test]
fn linux_init_sequence_skx() {
    linux_sequence(Preset::Skx);
}

#[test]
fn linux_init_sequence_icx() {
    linux_sequence(Preset::Icx);
}

// ---------------------------------------------------------------- SPDK

/// SPDK `ioat_reset_hw`.
fn spdk_reset_hw<R: RegisterAccess>(r: &R) {
    let st = r.read64(CHANSTS) & chansts::STATUS_MASK;
    if st == ChanState::Active.bits() || st == ChanState::Done.bits() {
        r.write8(CHANCMD, chancmd::SUSPEND);
        assert!(poll(|| {
            let s = r.read64(CHANSTS) & chansts::STATUS_MASK;
            s != ChanState::Active.bits() && s != ChanState::Done.bits()
        }));
    }
    // "CHANERR is write-1-to-clear, so write the current CHANERR bits back to reset everything."
    let e = r.read32(CHANERR);
    r.write32(CHANERR, e);
    if r.read8(general::CBVER) < 0x33 {
        let ei = r.config_read32(pci::CHANERR_INT);
        r.config_write32(pci::CHANERR_INT, ei);
    }
    r.write8(CHANCMD, chancmd::RESET);
    assert!(poll(|| r.read8(CHANCMD) & chancmd::RESET == 0));
}

fn spdk_sequence(preset: Preset) {
    let dev = ModelDevice::new(ModelConfig::preset(preset));
    assert!(dev.read8(general::CBVER) >= 0x30);
    let xfercap = dev.read8(general::XFERCAP) & 0x1f;
    assert!(
        xfercap >= 12,
        "XFERCAP must be at least 12 (4 KB) according to the spec"
    );
    let fill_ok = dev.read32(general::DMACAPABILITY) & ioat_driver::regs::cap::FILL_BLOCK != 0;
    let s = Setup::new(&dev);
    spdk_reset_hw(&dev);
    dev.write16(CHANCTRL, chanctrl::ANY_ERR_ABORT_EN);
    dev.write64(CHANCMP, s.comp.iova);
    dev.write64(CHAINADDR, s.desc_iova(0));
    // Null descriptor of size 8, completion_update set by the flush.
    s.put(0, HwDescriptor::null(Ctl::copy().compl_write(true)));
    let mut head: u32 = 1;
    dev.write16(DMACOUNT, head as u16);
    assert!(
        poll(|| state(&dev, 0) == ChanState::Done),
        "channel never went IDLE"
    );
    s.wait_completed(0);
    // spdk_ioat_submit_copy: build + flush (compl_write only on the last).
    s.put(1, s.copy_desc(4096, 3, Ctl::copy().compl_write(true)));
    head += 1;
    dev.write16(DMACOUNT, head as u16);
    s.wait_completed(1);
    s.check_copied(4096);
    if fill_ok {
        s.put(
            2,
            HwDescriptor::fill(
                4000,
                0x0102_0304_0506_0708,
                s.data.iova(8192),
                Ctl::fill().compl_write(true),
            ),
        );
        head += 1;
        dev.write16(DMACOUNT, head as u16);
        s.wait_completed(2);
        let got = s.data.read(8192, 4000);
        for (i, b) in got.iter().enumerate() {
            assert_eq!(*b, [8u8, 7, 6, 5, 4, 3, 2, 1][i % 8]);
        }
        assert_eq!(dev.stats(0).fills, 1);
    }
    assert_clean(&dev);
}

#[test]
fn spdk_init_sequence_bdx() {
    spdk_sequence(Preset::Bdx);
}

#[test]
fn spdk_init_sequence_skx() {
    spdk_sequence(Preset::Skx);
}

// ---------------------------------------------------------------- DPDK

/// DPDK `ioat_dmadev_create` (probe part).
fn dpdk_probe<R: RegisterAccess>(r: &R) {
    assert_eq!(r.read8(general::CHANCNT), 1, "DPDK warns when CHANCNT != 1");
    if r.read16(CHANCTRL) & chanctrl::CHANNEL_IN_USE != 0 {
        r.write16(CHANCTRL, 0);
    }
    let e = r.read32(CHANERR);
    r.write32(CHANERR, e);
    r.write8(CHANCMD, chancmd::SUSPEND);
    std::thread::sleep(Duration::from_millis(1));
    r.write8(CHANCMD, chancmd::RESET);
    std::thread::sleep(Duration::from_millis(1));
    let mut retry = 0;
    while r.read8(CHANCMD) & chancmd::RESET != 0 {
        r.write64(CHAINADDR, 0);
        std::thread::sleep(Duration::from_millis(1));
        retry += 1;
        assert!(retry < 200, "reset never completed");
    }
}

/// DPDK `ioat_dev_start`.
fn dpdk_start<R: RegisterAccess>(r: &R, s: &Setup) {
    r.write64(CHAINADDR, s.desc_iova(0));
    r.write64(CHANCMP, s.comp.iova);
    r.write16(
        CHANCTRL,
        chanctrl::ANY_ERR_ABORT_EN | chanctrl::ERR_COMPLETION_EN,
    );
    // Prime the status with the last ring element: nothing completed.
    s.comp.write_u64(0, s.desc_iova(RING - 1));
    assert_ne!(
        r.read64(CHANSTS) & chansts::STATUS_MASK,
        ChanState::Halted.bits(),
        "channel halted at start"
    );
}

/// DPDK `__ioat_recover`: W1C CHANERR, RESET, CHAINADDR past the failed descriptor written
/// right away (rule M3), CHANCTRL, CHANCMP, spin until ARMED.
fn dpdk_recover<R: RegisterAccess>(r: &R, s: &Setup, failed: usize) {
    let e = r.read32(CHANERR);
    r.write32(CHANERR, e);
    r.write8(CHANCMD, chancmd::RESET);
    r.write64(CHAINADDR, s.desc_iova(failed + 1));
    r.write16(
        CHANCTRL,
        chanctrl::ANY_ERR_ABORT_EN | chanctrl::ERR_COMPLETION_EN,
    );
    r.write64(CHANCMP, s.comp.iova);
    assert!(
        poll(|| r.read64(CHANSTS) == ChanState::Armed.bits()),
        "never ARMED after recovery"
    );
    s.comp.write_u64(0, s.desc_iova(failed));
}

fn dpdk_sequence(preset: Preset) {
    let dev = ModelDevice::new(ModelConfig::preset(preset));
    let s = Setup::new(&dev);
    dpdk_probe(&dev);
    dpdk_start(&dev, &s);
    // No null descriptor: the channel sits ARMED until the first doorbell (rule C4).
    assert_eq!(dev.read64(CHANSTS), ChanState::Armed.bits());
    let ctl = Ctl::copy().compl_write(true);
    s.put(0, s.copy_desc(1500, 5, ctl));
    let (mut next_write, offset) = (1u16, 0u16);
    dev.write16(DMACOUNT, next_write.wrapping_sub(offset));
    s.wait_completed(0);
    s.check_copied(1500);
    if preset != Preset::Icx {
        assert_clean(&dev);
        return;
    }
    // ICX: error handling. Descriptor 1 reads an unmapped IOVA, descriptor 2 is fine.
    s.put(
        1,
        HwDescriptor::copy(64, 0xdead_0000, s.data.iova(1 << 19), ctl),
    );
    s.put(2, s.copy_desc(3000, 11, ctl));
    next_write += 2;
    dev.write16(DMACOUNT, next_write.wrapping_sub(offset));
    // Halt status pushed to the completion word (ERR_COMPLETION_EN, rule E7).
    assert!(poll(
        || ChanState::from_bits(s.completion()) == ChanState::Halted
    ));
    let last = ((s.completion() & chansts::COMPLETED_ADDR_MASK) - s.ring.iova) >> 6;
    assert_eq!(last, 0, "descriptor 0 is the last completed");
    assert_eq!(dev.read32(CHANERR), chanerr::SRC_ADDR);
    dpdk_recover(&dev, &s, 1);
    let offset = 2u16; // next_read after skipping the failed descriptor
    dev.write16(DMACOUNT, next_write.wrapping_sub(offset));
    s.wait_completed(2);
    s.check_copied(3000);
    // The only violation is the unmapped source.
    let v = dev.take_violations();
    assert_eq!(rules(&v), ["E10"], "{v:?}");
}

#[test]
fn dpdk_init_sequence_skx() {
    dpdk_sequence(Preset::Skx);
}

#[test]
fn dpdk_init_sequence_bdx() {
    dpdk_sequence(Preset::Bdx);
}

#[test]
fn dpdk_init_sequence_and_recovery_icx() {
    dpdk_sequence(Preset::Icx);
}

// ---------------------------------------------------------------- VFIO selftest

/// `ioat_reset` of tools/testing/selftests/vfio/lib/drivers/ioat.
fn vfio_reset<R: RegisterAccess>(r: &R) {
    let ei = r.config_read32(pci::CHANERR_INT);
    r.config_write32(pci::CHANERR_INT, ei);
    let u = r.config_read32(pci::DMAUNCERRSTS);
    r.config_write32(pci::DMAUNCERRSTS, u);
    let e = r.read32(CHANERR);
    r.write32(CHANERR, e);
    r.write8(CHANCMD, chancmd::RESET);
    assert!(poll(|| r.read8(CHANCMD) & chancmd::RESET == 0));
    assert_eq!(
        r.read64(CHANSTS) & chansts::STATUS_MASK,
        ChanState::Halted.bits()
    );
}

/// `__ioat_memcpy_start`: one self-linked descriptor replayed `count` times.
fn vfio_memcpy_start<R: RegisterAccess>(
    r: &R,
    m: &DmaMem,
    src: u64,
    dst: u64,
    size: u32,
    count: u16,
) {
    let mut d = HwDescriptor::copy(size, src, dst, Ctl::copy());
    d.next = m.iova(0);
    m.write_desc(0, &d);
    r.write64(CHAINADDR, m.iova(0));
    r.write16(CHANCTRL, chanctrl::INT_REARM | chanctrl::ANY_ERR_ABORT_EN);
    r.write16(DMACOUNT, count);
}

/// `ioat_memcpy_wait`: spin on CHANSTS until DONE, then SUSPEND and spin until SUSPENDED.
fn vfio_memcpy_wait<R: RegisterAccess>(r: &R) -> Result<(), u32> {
    let mut st = ChanState::Active;
    poll(|| {
        st = state(r, 0);
        st == ChanState::Done || st == ChanState::Halted
    });
    if st == ChanState::Halted {
        let e = r.read32(CHANERR);
        vfio_reset(r);
        return Err(e);
    }
    assert_eq!(st, ChanState::Done);
    r.write8(CHANCMD, chancmd::SUSPEND);
    assert_eq!(wait_state(r, 0, ChanState::Suspended), ChanState::Suspended);
    Ok(())
}

#[test]
fn vfio_selftest_sequence_skx() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Skx));
    assert_eq!(dev.config_read32(0) >> 16, 0x2021);
    assert!(matches!(dev.read8(general::CBVER), 0x32 | 0x33));
    dev.config_write32(
        pci::COMMAND,
        (pci::COMMAND_MEMORY | pci::COMMAND_MASTER | pci::COMMAND_INTX_DISABLE) as u32,
    );
    vfio_reset(&dev);
    dev.write8(general::INTRCTRL, general::INTRCTRL_MSIX_VECTOR_CONTROL);
    let max = 1u64 << dev.read8(general::XFERCAP);
    let desc = DmaMem::new(&dev, 4096);
    let buf = DmaMem::new(&dev, 1 << 20);
    buf.fill_pattern(0, 4096, 1);
    vfio_memcpy_start(&dev, &desc, buf.iova(0), buf.iova(1 << 19), 4096, 1);
    vfio_memcpy_wait(&dev).unwrap();
    assert_eq!(buf.read(0, 4096), buf.read(1 << 19, 4096));
    // mix_and_match: from SUSPENDED, CHAINADDR restarts the count and DMACOUNT=1 runs again
    // (rule D3).
    buf.fill_pattern(0, 8192, 2);
    vfio_memcpy_start(&dev, &desc, buf.iova(0), buf.iova(1 << 19), 8192, 1);
    vfio_memcpy_wait(&dev).unwrap();
    assert_eq!(buf.read(0, 8192), buf.read(1 << 19, 8192));
    // memcpy_storm: the same descriptor replayed 65535 times (rule D4; not an overrun).
    let before = dev.stats(0).descriptors;
    vfio_memcpy_start(&dev, &desc, buf.iova(0), buf.iova(4096), 64, u16::MAX);
    vfio_memcpy_wait(&dev).unwrap();
    assert_eq!(dev.stats(0).descriptors - before, 65535);
    // A copy of the maximum size.
    buf.fill_pattern(0, 1 << 19, 3);
    assert!(max >= 1 << 19);
    vfio_memcpy_start(&dev, &desc, buf.iova(0), buf.iova(1 << 19), 1 << 19, 1);
    vfio_memcpy_wait(&dev).unwrap();
    assert_eq!(buf.read(0, 1 << 19), buf.read(1 << 19, 1 << 19));
    // memcpy_from_unmapped_iova: the model halts (rule E10 allows either).
    vfio_memcpy_start(&dev, &desc, 0x10_0000, buf.iova(0), 64, 1);
    assert_eq!(vfio_memcpy_wait(&dev), Err(chanerr::SRC_ADDR));
    // After the reset in memcpy_wait the channel works again.
    vfio_memcpy_start(&dev, &desc, buf.iova(0), buf.iova(1 << 19), 256, 1);
    vfio_memcpy_wait(&dev).unwrap();
    let v = dev.take_violations();
    assert_eq!(rules(&v), ["E10"], "{v:?}");
}

// ---------------------------------------------------------------- rejected sequences

/// DMACOUNT without CHAINADDR after a reset (rule D6): nothing runs, violation recorded.
#[test]
fn rejected_dmacount_without_chainaddr() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Bdx));
    let s = Setup::new(&dev);
    linux_reset_hw(&dev, 0x32);
    dev.write16(CHANCTRL, chanctrl::RUN);
    dev.write64(CHANCMP, s.comp.iova);
    s.put(0, s.copy_desc(64, 1, Ctl::copy().compl_write(true)));
    dev.write16(DMACOUNT, 1);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(state(&dev, 0), ChanState::Halted);
    assert_eq!(dev.stats(0).descriptors, 0);
    assert_eq!(s.completion(), 0);
    assert_eq!(rules(&dev.violations()), ["D6"]);
}

/// A null descriptor of size 0 (the CB3.0 erratum, rule S1) halts with LENGTH.
#[test]
fn rejected_null_descriptor_of_size_zero() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Bdx));
    let s = Setup::new(&dev);
    linux_reset_hw(&dev, 0x32);
    dev.write16(CHANCTRL, chanctrl::RUN);
    dev.write64(CHANCMP, s.comp.iova);
    let mut null = HwDescriptor::null(Ctl::copy().compl_write(true));
    null.size = 0;
    s.put(0, null);
    dev.write64(CHAINADDR, s.desc_iova(0));
    dev.write16(DMACOUNT, 1);
    assert_eq!(wait_state(&dev, 0, ChanState::Halted), ChanState::Halted);
    assert_eq!(dev.read32(CHANERR), chanerr::LENGTH);
    // ERR_COMPLETION_EN: the halt is in the completion word, with no descriptor completed.
    assert_eq!(s.completion(), ChanState::Halted.bits());
    assert_eq!(rules(&dev.violations()), ["S1"]);
}

/// After an error, RESET without clearing CHANERR: the channel refuses to leave HALTED
/// (rules E1, E2). On CB3.2 clearing CHANERR alone is not enough: CHANERR_INT too.
#[test]
fn rejected_resume_without_clearing_errors() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Bdx));
    let s = Setup::new(&dev);
    linux_reset_hw(&dev, 0x32);
    linux_start(&dev, &s, false);
    s.wait_completed(0);
    s.put(
        1,
        HwDescriptor::copy(64, s.data.iova(0), 0x7000, Ctl::copy().compl_write(true)),
    );
    dev.write16(DMACOUNT, 2);
    assert_eq!(wait_state(&dev, 0, ChanState::Halted), ChanState::Halted);
    assert_eq!(dev.read32(CHANERR), chanerr::DEST_ADDR);
    assert_eq!(dev.config_read32(pci::CHANERR_INT), chanerr::DEST_ADDR);
    dev.take_violations();

    // Reset without clearing anything.
    dev.write8(CHANCMD, chancmd::RESET);
    assert!(poll(|| dev.read8(CHANCMD) & chancmd::RESET == 0));
    dev.write16(CHANCTRL, chanctrl::RUN);
    dev.write64(CHANCMP, s.comp.iova);
    s.put(2, s.copy_desc(64, 1, Ctl::copy().compl_write(true)));
    dev.write64(CHAINADDR, s.desc_iova(2));
    assert_eq!(state(&dev, 0), ChanState::Halted);
    dev.write16(DMACOUNT, 1);
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(state(&dev, 0), ChanState::Halted);
    assert!(rules(&dev.take_violations()).contains(&"E2"));

    // Clear CHANERR only: still refused on CB3.2.
    let e = dev.read32(CHANERR);
    dev.write32(CHANERR, e);
    assert_eq!(dev.read32(CHANERR), 0);
    dev.write64(CHAINADDR, s.desc_iova(2));
    assert_eq!(state(&dev, 0), ChanState::Halted);
    assert_eq!(rules(&dev.take_violations()), ["E2"]);

    // Clear CHANERR_INT as well: CHAINADDR arms the channel and it runs.
    let ei = dev.config_read32(pci::CHANERR_INT);
    dev.config_write32(pci::CHANERR_INT, ei);
    dev.write64(CHAINADDR, s.desc_iova(2));
    assert_eq!(state(&dev, 0), ChanState::Armed);
    dev.write16(DMACOUNT, 1);
    s.wait_completed(2);
    s.check_copied(64);
    assert_clean(&dev);
}

/// Restarting after a reset without rewriting CHANCMP (every driver rewrites it): the
/// completion write has nowhere to go and the channel halts with COMPLETION_ADDR.
#[test]
fn rejected_restart_without_chancmp() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Skx));
    let s = Setup::new(&dev);
    spdk_reset_hw(&dev);
    dev.write16(CHANCTRL, chanctrl::ANY_ERR_ABORT_EN);
    s.put(0, HwDescriptor::null(Ctl::copy().compl_write(true)));
    dev.write64(CHAINADDR, s.desc_iova(0));
    dev.write16(DMACOUNT, 1);
    assert_eq!(wait_state(&dev, 0, ChanState::Halted), ChanState::Halted);
    assert_eq!(dev.read32(CHANERR), chanerr::COMPLETION_ADDR);
    assert_eq!(rules(&dev.violations()), ["A2"]);
    let _ = op::COPY;
}
