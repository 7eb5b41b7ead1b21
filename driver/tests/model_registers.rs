//! Register-file semantics of the device model: reset values, widths, read-only, W1C, config
//! space, 64-bit registers, and every register-level strict-mode report.

mod model_common;

use ioat_driver::model::{ModelConfig, ModelDevice, Preset, RuleTag, Severity, StrictMode};
use ioat_driver::regs::{
    cap, chan, chancmd, chanctrl, chanerr, general, pci, ChanState, RegisterAccess,
};
use model_common::*;

fn dev(p: Preset) -> std::sync::Arc<ModelDevice> {
    ModelDevice::new(ModelConfig::preset(p))
}

#[test]
fn reset_values_per_preset() {
    for (p, id, ver, dps) in [
        (Preset::Skx, 0x2021, 0x33, false),
        (Preset::Bdx, 0x6f20, 0x32, false),
        (Preset::Icx, 0x0b00, 0x34, true),
    ] {
        let d = dev(p);
        assert_eq!(d.config_read32(0), 0x8086 | (id << 16), "{p:?}");
        assert_eq!(d.read8(general::CBVER), ver);
        assert_eq!(d.read8(general::CHANCNT), 1);
        assert_eq!(d.read8(general::XFERCAP), 20);
        let c = d.read32(general::DMACAPABILITY);
        assert_ne!(c & cap::FILL_BLOCK, 0);
        assert_eq!(c & cap::DPS != 0, dps);
        assert_eq!(c & (cap::XOR | cap::PQ), 0);
        assert_eq!(d.read8(general::INTRCTRL), 0);
        // Channel: HALTED, nothing completed, no error, no chain.
        assert_eq!(d.read64(CHANSTS), ChanState::Halted.bits());
        assert_eq!(d.read32(CHANERR), 0);
        assert_eq!(d.read16(CHANCTRL), 0);
        assert_eq!(d.read8(CHANCMD), 0);
        assert_eq!(d.read16(DMACOUNT), 0);
        assert_eq!(d.read64(CHAINADDR), 0);
        assert_eq!(d.read64(CHANCMP), 0);
        assert_eq!(d.read64(CH0 + chan::CDAR), 0);
        // CB3.4 extras exist only with DPS.
        let _ = d.read16(CH0 + chan::DRSCTL);
        let _ = d.read8(general::PREFETCH_LIMIT);
        let v = d.take_violations();
        if dps {
            assert!(v.is_empty(), "{v:?}");
        } else {
            assert_eq!(rules(&v), ["R2", "R2"]);
        }
    }
}

#[test]
fn configurable_fields() {
    let d = ModelDevice::new(
        ModelConfig::preset(Preset::Skx)
            .chancnt(3)
            .xfercap_log(12)
            .fill(false)
            .cbver(0x32),
    );
    assert_eq!(d.read8(general::CHANCNT), 3);
    assert_eq!(d.read8(general::XFERCAP), 12);
    assert_eq!(d.read32(general::DMACAPABILITY) & cap::FILL_BLOCK, 0);
    for ch in 0..3 {
        assert_eq!(state(&*d, ch), ChanState::Halted);
    }
    // Channel 3 does not exist.
    let _ = d.read64(reg(3, chan::CHANSTS));
    assert_eq!(rules(&d.take_violations()), ["R2"]);
}

#[test]
fn read_only_registers_ignore_writes() {
    let d = dev(Preset::Skx);
    for (off, w) in [
        (general::CHANCNT, 1u8),
        (general::XFERCAP, 1),
        (general::CBVER, 1),
        (general::DMACAPABILITY, 4),
        (general::ATTNSTATUS, 4),
        (CHANSTS, 8),
        (CH0 + chan::CDAR, 8),
    ] {
        match w {
            1 => d.write8(off, 0x7),
            4 => d.write32(off, 0x7),
            _ => d.write64(off, 0x7),
        }
    }
    let v = d.take_violations();
    assert_eq!(rules(&v), ["R1"; 7]);
    assert!(v.iter().all(|x| x.severity == Severity::Error));
    assert_eq!(v[0].register, "CHANCNT");
    assert_eq!(v[5].register, "CHANSTS");
    assert_eq!(v[5].offset, CHANSTS);
    assert_eq!(v[5].width, 8);
    assert_eq!(d.read8(general::CBVER), 0x33);
    assert_eq!(d.read8(general::XFERCAP), 20);
    assert_eq!(d.read64(CHANSTS), ChanState::Halted.bits());
}

#[test]
fn wrong_access_widths_are_reported_and_dropped() {
    let d = dev(Preset::Skx);
    // CHANCTRL is 16-bit: a 32-bit write is dropped, a 32-bit read composes the bytes.
    d.write16(CHANCTRL, chanctrl::RUN);
    d.write32(CHANCTRL, 0);
    assert_eq!(d.read16(CHANCTRL), chanctrl::RUN);
    assert_eq!(d.read32(CHANCTRL) & 0xffff, chanctrl::RUN as u32);
    // CHANCMD is 8-bit, DMACOUNT 16-bit, CHANERR 32-bit.
    d.write16(CHANCMD, chancmd::RESET as u16);
    d.write8(DMACOUNT, 1);
    d.write16(CHANERR, 0xffff);
    // 64-bit registers: 16-bit pieces and 4-byte access at +2 are wrong.
    d.write16(CHAINADDR, 0);
    let _ = d.read16(CHANSTS);
    let _ = d.read32(CHANSTS + 2);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["W7"; 8], "{v:#?}");
    assert!(v
        .iter()
        .all(|x| x.tag == RuleTag::Behaviour && x.severity == Severity::Warning));
    assert_eq!(v[0].register, "CHANCTRL");
    assert_eq!(v[0].width, 4);
    assert_eq!(d.read8(CHANCMD), 0, "the 16-bit RESET write was dropped");
    // Proper widths, including 32-bit halves of 64-bit registers, are fine.
    let _ = d.read32(CHANSTS);
    let _ = d.read32(CHANSTS + 4);
    let _ = d.read64(CHANSTS);
    assert_clean(&d);
}

#[test]
fn undefined_offsets() {
    let d = dev(Preset::Bdx);
    d.write32(0x40, 1);
    let _ = d.read8(0x09);
    let _ = d.read32(CH0 + 0x34);
    let _ = d.read32(0x2000);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["R2"; 4]);
    assert_eq!(v[0].offset, 0x40);
}

#[test]
fn chanerr_is_write_one_to_clear() {
    let d = dev(Preset::Skx);
    let m = DmaMem::new(&d, 4096);
    // Misaligned CHAINADDR at the first fetch: CHAIN_ADDR_VALUE; plus an injected bit.
    d.write64(CHAINADDR, m.iova(0x20));
    d.take_violations();
    d.write16(DMACOUNT, 1);
    assert_eq!(wait_state(&*d, 0, ChanState::Halted), ChanState::Halted);
    assert_eq!(d.read32(CHANERR), chanerr::CHAIN_ADDR_VALUE);
    // Writing 0 changes nothing, writing the bit clears it; writing other bits is harmless.
    d.write32(CHANERR, 0);
    assert_eq!(d.read32(CHANERR), chanerr::CHAIN_ADDR_VALUE);
    d.write32(CHANERR, chanerr::SRC_ADDR);
    assert_eq!(d.read32(CHANERR), chanerr::CHAIN_ADDR_VALUE);
    d.write32(CHANERR, chanerr::CHAIN_ADDR_VALUE);
    assert_eq!(d.read32(CHANERR), 0);
    // CB3.3: there is no CHANERR_INT; it reads 0 and writes are ignored.
    assert_eq!(d.config_read32(pci::CHANERR_INT), 0);
}

#[test]
fn chanerr_int_below_3_3_and_dmauncerrsts() {
    let d = dev(Preset::Bdx);
    let m = DmaMem::new(&d, 4096);
    d.write64(CHAINADDR, 0x1234_0000); // unmapped
    d.write16(DMACOUNT, 1);
    assert_eq!(wait_state(&*d, 0, ChanState::Halted), ChanState::Halted);
    assert_eq!(d.read32(CHANERR), chanerr::CHAIN_ADDR_VALUE);
    assert_eq!(d.config_read32(pci::CHANERR_INT), chanerr::CHAIN_ADDR_VALUE);
    d.config_write32(pci::CHANERR_INT, chanerr::CHAIN_ADDR_VALUE);
    assert_eq!(d.config_read32(pci::CHANERR_INT), 0);
    assert_eq!(
        d.read32(CHANERR),
        chanerr::CHAIN_ADDR_VALUE,
        "independent registers"
    );
    assert_eq!(d.config_read32(pci::DMAUNCERRSTS), 0);
    d.config_write32(pci::DMAUNCERRSTS, 0x10);
    d.config_write32(pci::CHANERRMASK_INT, 0x3e07);
    assert_eq!(d.config_read32(pci::CHANERRMASK_INT), 0x3e07);
    d.config_write32(pci::COMMAND, 0x0406);
    assert_eq!(d.config_read32(pci::COMMAND) & 0xffff, 0x0406);
    drop(m);
}

#[test]
fn sixty_four_bit_registers_single_and_split_writes() {
    let d = dev(Preset::Skx);
    let m = DmaMem::new(&d, 8192);
    // One 64-bit store: legal (docs/driver.md, the rule on 64-bit registers).
    d.write64(CHANCMP, m.iova(0));
    assert_eq!(d.read64(CHANCMP), m.iova(0));
    d.write64(CHAINADDR, m.iova(64));
    assert_eq!(d.read64(CHAINADDR), m.iova(64));
    assert_eq!(state(&*d, 0), ChanState::Armed);
    // Low then high: legal.
    d.write32(CHANCMP, m.iova(8) as u32);
    d.write32(CHANCMP + 4, (m.iova(8) >> 32) as u32);
    assert_eq!(d.read64(CHANCMP), m.iova(8));
    assert_eq!(d.read32(CHANCMP + 4), (m.iova(8) >> 32) as u32);
    assert_clean(&d);
    // High first: a warning (W6, inferred).
    d.write32(CHAINADDR + 4, (m.iova(128) >> 32) as u32);
    d.write32(CHAINADDR, m.iova(128) as u32);
    d.write32(CHANCMP + 4, 0);
    d.write32(CHANCMP, m.iova(16) as u32);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["W6", "W6"]);
    assert!(v
        .iter()
        .all(|x| x.tag == RuleTag::Inferred && x.severity == Severity::Warning));
    assert_eq!(v[0].register, "CHAINADDR");
    assert_eq!(v[1].register, "CHANCMP");
}

#[test]
fn doorbell_with_half_written_chainaddr_warns() {
    let d = dev(Preset::Skx);
    let m = DmaMem::new(&d, 4096);
    d.write64(CHANCMP, m.iova(0x800));
    let mut null = ioat_driver::desc::HwDescriptor::null(ioat_driver::desc::Ctl::copy());
    null.next = m.iova(0);
    m.write_desc(0, &null);
    // The high half is already right from a full write; the driver then rewrites only the
    // low half before the doorbell.
    d.write64(CHAINADDR, m.iova(0));
    d.write32(CHAINADDR, m.iova(0) as u32);
    d.write16(DMACOUNT, 1);
    assert_eq!(wait_state(&*d, 0, ChanState::Done), ChanState::Done);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["D6"]);
    assert_eq!(v[0].tag, RuleTag::Inferred);
    assert!(v[0].message.contains("one half"), "{}", v[0].message);
}

#[test]
fn misaligned_chancmp_and_chainaddr_are_reported_at_write() {
    let d = dev(Preset::Skx);
    d.write64(CHANCMP, 0x1_0000_0004);
    d.write64(CHAINADDR, 0x1_0000_0020);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["A2", "A1"]);
    assert_eq!(v[0].tag, RuleTag::Stated);
    assert_eq!(v[0].severity, Severity::Error);
}

#[test]
fn reset_self_clears_and_clears_the_chain_registers() {
    let d = ModelDevice::new(
        ModelConfig::preset(Preset::Skx).reset_delay(std::time::Duration::from_millis(250)),
    );
    d.write16(CHANCTRL, chanctrl::RUN);
    d.write64(CHANCMP, 0x1_0000_0000);
    d.write64(CHAINADDR, 0x1_0000_0040);
    d.write8(CHANCMD, chancmd::RESET);
    assert_eq!(
        d.read8(CHANCMD),
        chancmd::RESET,
        "RESET reads set while pending"
    );
    assert_eq!(state(&*d, 0), ChanState::Halted);
    assert!(poll(|| d.read8(CHANCMD) & chancmd::RESET == 0));
    assert_eq!(state(&*d, 0), ChanState::Halted);
    assert_eq!(d.read16(CHANCTRL), 0);
    assert_eq!(d.read64(CHANCMP), 0);
    assert_eq!(d.read64(CHAINADDR), 0);
    assert_eq!(d.read16(DMACOUNT), 0);
    // CHAINADDR written while RESET is pending (DPDK) arms the channel when it completes.
    d.write8(CHANCMD, chancmd::RESET);
    d.write64(CHAINADDR, 0x1_0000_0080);
    assert_eq!(state(&*d, 0), ChanState::Halted);
    assert!(poll(|| state(&*d, 0) == ChanState::Armed));
    assert_eq!(d.read64(CHAINADDR), 0x1_0000_0080);
    assert_clean(&d);
}

#[test]
fn unused_chancmd_bits_warn() {
    let d = dev(Preset::Skx);
    d.write8(CHANCMD, chancmd::ABORT);
    d.write8(CHANCMD, chancmd::START);
    assert_eq!(rules(&d.take_violations()), ["M1", "M1"]);
}

#[test]
fn strict_off_records_nothing() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Skx).strict(StrictMode::Off));
    d.write8(general::CBVER, 1);
    d.write32(CHANCTRL, 1);
    d.write32(0x40, 1);
    assert!(d.violations().is_empty());
    assert_eq!(d.read8(general::CBVER), 0x33);
}

#[test]
#[should_panic(expected = "R1")]
fn strict_panic_panics_at_the_access() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Skx).strict(StrictMode::Panic));
    d.write8(general::CBVER, 1);
}

#[test]
fn violation_display_names_everything() {
    let d = dev(Preset::Skx);
    d.write32(CHANCTRL, 1);
    let v = d.take_violations();
    let s = v[0].to_string();
    assert!(
        s.starts_with("W7 [behaviour] Warning: CHANCTRL @ 0x80/4 ch0"),
        "{s}"
    );
}

#[test]
fn chansts_split_read_order_below_3_3() {
    let d = dev(Preset::Bdx);
    let _ = d.read32(CHANSTS);
    let _ = d.read32(CHANSTS + 4);
    assert_clean(&d);
    let _ = d.read32(CHANSTS + 4);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["W3"]);
    assert_eq!(v[0].tag, RuleTag::Stated);
    // From CB3.3 on the order does not matter.
    let d = dev(Preset::Skx);
    let _ = d.read32(CHANSTS + 4);
    assert_clean(&d);
}

#[test]
#[should_panic(expected = "S1")]
fn strict_panic_reports_engine_violations_at_the_next_access() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Skx).strict(StrictMode::Panic));
    let m = DmaMem::new(&d, 4096);
    let mut z =
        ioat_driver::desc::HwDescriptor::copy(0, m.iova(64), m.iova(128), Default::default());
    z.next = m.iova(0);
    m.write_desc(0, &z);
    d.write64(CHAINADDR, m.iova(0));
    d.write16(DMACOUNT, 1);
    // The engine finds the size-0 descriptor; the driver's next access panics.
    for _ in 0..100_000 {
        let _ = d.read64(CHANSTS);
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}
