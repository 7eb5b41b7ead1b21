//! Device-model fidelity (issue 20): fault classes, accesses the hardware would drop, PCI
//! configuration space and bus mastering, interrupts (MSI-X and INTx/MSI styles, and the
//! driver's interrupt mode), fences, torn split reads below CB3.3, and the per-part quirks.

mod model_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ioat_driver::desc::{Ctl, HwDescriptor, DESC_SIZE};
use ioat_driver::model::{
    FaultClass, ModelConfig, ModelDevice, Preset, Timing, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
};
use ioat_driver::regs::{
    chan, chancmd, chanctrl, chanerr, general, pci, ChanState, RegisterAccess,
};
use ioat_driver::{ChannelConfig, Completion, Device, DmaRegion};
use model_common::*;

/// A ring of `n` linked descriptors, a completion word and data, on channel 0, started as
/// FreeBSD/Linux do (CHANCTRL, CHANCMP, CHAINADDR); `submit` rings DMACOUNT.
struct Rig {
    dev: Arc<ModelDevice>,
    ring: DmaMem,
    comp: DmaMem,
    data: DmaMem,
    n: usize,
    head: u16,
}

impl Rig {
    fn new(dev: Arc<ModelDevice>, n: usize, ctrl: u16) -> Rig {
        let ring = DmaMem::new(&dev, n * DESC_SIZE);
        let comp = DmaMem::new(&dev, 4096);
        let data = DmaMem::new(&dev, 1 << 20);
        let r = Rig {
            dev,
            ring,
            comp,
            data,
            n,
            head: 0,
        };
        r.dev.write16(CHANCTRL, ctrl);
        r.dev.write64(CHANCMP, r.comp.iova(0));
        r.dev.write64(CHAINADDR, r.desc_iova(0));
        r
    }
    fn desc_iova(&self, i: usize) -> u64 {
        self.ring.iova((i % self.n) * DESC_SIZE)
    }
    fn submit(&mut self, mut d: HwDescriptor) {
        let i = self.head as usize;
        d.next = self.desc_iova(i + 1);
        self.ring.write_desc((i % self.n) * DESC_SIZE, &d);
        self.head = self.head.wrapping_add(1);
        self.dev.write16(DMACOUNT, self.head);
    }
    fn completion(&self) -> u64 {
        self.comp.read_u64(0)
    }
}

fn null_int() -> HwDescriptor {
    HwDescriptor::null(Ctl::copy().compl_write(true).int_en(true))
}

// ---------------------------------------------------------------- fault classes

/// A DMA from an unmapped IOVA: CHANERR + halt, recorded as a device error the hardware
/// reports, not as misuse (the kernel's VFIO selftest provokes it on purpose).
#[test]
fn unmapped_address_is_a_device_error_not_misuse() {
    let mut r = Rig::new(
        ModelDevice::new(ModelConfig::preset(Preset::Skx)),
        8,
        chanctrl::ANY_ERR_ABORT_EN | chanctrl::ERR_COMPLETION_EN,
    );
    r.submit(HwDescriptor::copy(
        64,
        0x10_0000,
        r.data.iova(0),
        Ctl::copy().compl_write(true),
    ));
    assert_eq!(wait_state(&*r.dev, 0, ChanState::Halted), ChanState::Halted);
    assert_eq!(r.dev.read32(CHANERR), chanerr::SRC_ADDR);
    assert!(r.dev.misuse().is_empty(), "{:?}", r.dev.misuse());
    let e = r.dev.device_errors();
    assert_eq!(rules(&e), ["E10"]);
    assert_eq!(e[0].class, FaultClass::DeviceError);
    assert!(e[0].to_string().contains("(device-error)"), "{}", e[0]);
}

/// A DMACOUNT write while RESET is pending is lost (the reset zeroes the count): flagged as
/// misuse, and it is not replayed when the channel arms. A CHANCMD write in that window is
/// dropped and flagged too.
#[test]
fn dmacount_during_reset_is_flagged_as_misuse() {
    let dev =
        ModelDevice::new(ModelConfig::preset(Preset::Skx).reset_delay(Duration::from_millis(200)));
    let r = Rig::new(dev, 8, chanctrl::ANY_ERR_ABORT_EN);
    r.ring.write_desc(0, &{
        let mut d = HwDescriptor::null(Ctl::copy().compl_write(true));
        d.next = r.desc_iova(1);
        d
    });
    r.dev.write8(CHANCMD, chancmd::RESET);
    // DPDK-style: CHAINADDR while RESET is pending is fine (rule M3) ...
    r.dev.write64(CHAINADDR, r.desc_iova(0));
    // ... but a doorbell in that window is lost.
    r.dev.write16(DMACOUNT, 1);
    r.dev.write8(CHANCMD, chancmd::SUSPEND);
    let v = r.dev.misuse();
    assert_eq!(rules(&v), ["R3", "R3"], "{v:#?}");
    assert_eq!(v[0].register, "DMACOUNT");
    assert_eq!(v[1].register, "CHANCMD");
    assert!(v.iter().all(|v| v.class == FaultClass::Misuse));
    assert!(poll(|| r.dev.read8(CHANCMD) == 0));
    r.dev.take_violations();
    r.dev.write64(CHANCMP, r.comp.iova(0));
    assert_eq!(state(&*r.dev, 0), ChanState::Armed);
    assert_eq!(r.dev.read16(DMACOUNT), 0, "the lost doorbell is not stored");
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(r.dev.stats(0).descriptors, 0);
    // Ringing again after the reset works.
    r.dev.write16(DMACOUNT, 1);
    assert_eq!(wait_state(&*r.dev, 0, ChanState::Done), ChanState::Done);
    assert_clean(&r.dev);
}

// ---------------------------------------------------------------- PCI config space

#[test]
fn config_space_capability_list_and_access_widths() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Icx).chancnt(2));
    assert_eq!(d.config_read16(0), 0x8086);
    assert_eq!(d.config_read16(2), 0x0b00);
    assert_eq!(d.config_read8(0x0b), 0x08, "class: system peripheral");
    // STATUS says there is a capability list, and 0x34 points at it.
    assert_ne!(d.config_read16(0x06) & 0x10, 0);
    let mut at = d.config_read8(0x34) as u16;
    let mut found = Vec::new();
    while at != 0 {
        assert!(at >= 0x40 && at % 4 == 0, "capability at {at:#x}");
        found.push((d.config_read8(at), at));
        at = d.config_read8(at + 1) as u16;
        assert!(found.len() < 16, "capability list loops");
    }
    let ids: Vec<u8> = found.iter().map(|f| f.0).collect();
    assert_eq!(ids, [0x11, 0x10], "MSI-X, then PCI Express");
    let msix = found[0].1;
    assert_eq!(
        d.config_read16(msix + 2) & 0x7ff,
        1,
        "table size 2 (CHANCNT)"
    );
    assert_eq!(
        d.config_read32(msix + 4),
        MSIX_TABLE_OFFSET,
        "table in BAR0"
    );
    assert_eq!(d.config_read32(msix + 8), MSIX_PBA_OFFSET, "PBA in BAR0");
    let pcie = found[1].1;
    assert_eq!(
        (d.config_read16(pcie + 2) >> 4) & 0xf,
        9,
        "RC integrated endpoint"
    );
    // DEVCTL: 16-bit write clears relaxed ordering as Linux does at probe.
    let devctl = d.config_read16(pcie + 8);
    assert_ne!(devctl & 0x10, 0);
    d.config_write16(pcie + 8, devctl & !0x10);
    assert_eq!(d.config_read16(pcie + 8), devctl & !0x10);
    // 8-bit write to COMMAND's low byte leaves the rest alone.
    d.config_write8(
        pci::COMMAND,
        (pci::COMMAND_MEMORY | pci::COMMAND_MASTER) as u8,
    );
    assert_eq!(
        d.config_read16(pci::COMMAND),
        pci::COMMAND_MEMORY | pci::COMMAND_MASTER
    );
    // Read-only registers ignore writes (as PCI does, not misuse).
    d.config_write16(0, 0x1234);
    assert_eq!(d.config_read16(0), 0x8086);
    // BAR sizing: 16 KiB, 64-bit memory.
    d.config_write32(0x10, u32::MAX);
    assert_eq!(d.config_read32(0x10), 0xffff_c004);
    assert_clean(&d);
    // Misaligned accesses are refused and flagged.
    assert_eq!(d.config_read(0x05, 2), 0);
    d.config_write(0x06, 4, 0);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["R2", "R2"]);
}

/// Bus mastering off: the device cannot fetch; the channel stays ACTIVE with nothing done,
/// flagged once; enabling bus mastering lets it run.
#[test]
fn bus_master_off_means_no_dma_and_is_flagged() {
    let dev = ModelDevice::new(ModelConfig::preset(Preset::Skx));
    let mut r = Rig::new(dev, 8, chanctrl::ANY_ERR_ABORT_EN);
    r.data.fill_pattern(0, 4096, 3);
    // Power-on COMMAND is MEMORY only (what vfio-pci leaves); DmaMem set BUS_MASTER: clear it.
    r.dev.config_write16(pci::COMMAND, pci::COMMAND_MEMORY);
    r.submit(HwDescriptor::copy(
        4096,
        r.data.iova(0),
        r.data.iova(8192),
        Ctl::copy().compl_write(true),
    ));
    for _ in 0..3 {
        assert_eq!(state(&*r.dev, 0), ChanState::Active);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(r.dev.stats(0).descriptors, 0);
    assert_eq!(r.completion(), 0);
    assert_ne!(
        r.data.read(8192, 4096),
        r.data.read(0, 4096),
        "no data moved"
    );
    let v = r.dev.take_violations();
    assert_eq!(rules(&v), ["R5"], "flagged once: {v:#?}");
    assert_eq!(v[0].class, FaultClass::Misuse);
    r.dev
        .config_write16(pci::COMMAND, pci::COMMAND_MEMORY | pci::COMMAND_MASTER);
    assert_eq!(wait_state(&*r.dev, 0, ChanState::Done), ChanState::Done);
    assert_eq!(r.data.read(8192, 4096), r.data.read(0, 4096));
    assert_clean(&r.dev);
}

/// Memory decode off: MMIO reads return all ones, writes are dropped, both flagged.
#[test]
fn memory_decode_off_reads_ones_and_drops_writes() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Skx).pci_command(0));
    assert_eq!(d.read8(general::CBVER), 0xff);
    assert_eq!(d.read64(CHANSTS), u64::MAX);
    d.write16(CHANCTRL, chanctrl::RUN);
    let v = d.take_violations();
    assert_eq!(rules(&v), ["R4", "R4", "R4"]);
    d.config_write16(pci::COMMAND, pci::COMMAND_MEMORY);
    assert_eq!(d.read8(general::CBVER), 0x33);
    assert_eq!(d.read16(CHANCTRL), 0, "the write was dropped");
    // The driver's Device::open sets MEMORY and BUS_MASTER itself.
    let d = ModelDevice::new(ModelConfig::preset(Preset::Skx));
    let _dev = Device::open(d.clone(), d.mapper()).unwrap();
    assert_eq!(
        d.config_read16(pci::COMMAND) & (pci::COMMAND_MEMORY | pci::COMMAND_MASTER),
        pci::COMMAND_MEMORY | pci::COMMAND_MASTER
    );
    assert_clean(&d);
}

// ---------------------------------------------------------------- interrupts

/// What vfio-pci does in the kernel for MSI-X: enable the capability, program and unmask
/// each vector.
fn enable_msix(d: &ModelDevice, vectors: u32) {
    let ctrl = d.config_read16(0x80 + 2);
    d.config_write16(0x80 + 2, ctrl | 0x8000);
    for v in 0..vectors {
        let e = MSIX_TABLE_OFFSET + 16 * v;
        d.write32(e, 0xfee0_0000);
        d.write32(e + 4, 0);
        d.write32(e + 8, 0x40 + v);
        d.write32(e + 12, 0); // unmask
    }
}

/// MSI-X style (Linux: INTRCTRL = MSIX_VECTOR_CONTROL | MASTER_INT_EN, one vector per
/// channel): an `int_en` completion sends one message to the channel's vector and consumes
/// INT_REARM; nothing more arrives until the driver re-arms; a masked vector sets its pending
/// bit and the message goes out on unmask; INTRDELAY delays (coalesces) the message.
#[test]
fn msix_delivery_rearm_masking_and_coalescing() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Skx).chancnt(2));
    enable_msix(&d, 2);
    d.write8(
        general::INTRCTRL,
        general::INTRCTRL_MSIX_VECTOR_CONTROL | general::INTRCTRL_MASTER_INT_EN,
    );
    let irq0 = d.msix_irq(0);
    let irq1 = d.msix_irq(1);
    let mut r = Rig::new(d.clone(), 16, chanctrl::RUN);
    r.submit(null_int());
    assert_eq!(irq0.wait(Duration::from_secs(2)), Some(1));
    assert_eq!(irq1.try_read(), None, "vector 1 belongs to channel 1");
    assert_eq!(
        d.read16(CHANCTRL) & chanctrl::INT_REARM,
        0,
        "INT_REARM consumed"
    );
    assert_eq!(d.read32(general::ATTNSTATUS), 1);
    // Not re-armed: the next int_en completion raises nothing.
    r.submit(null_int());
    assert_eq!(wait_state(&*d, 0, ChanState::Done), ChanState::Done);
    assert_eq!(irq0.wait(Duration::from_millis(5)), None);
    assert_eq!(d.stats(0).interrupts_not_armed, 1);
    // Re-arm (as `vfio::ioat_irq::rearm` does) acknowledges ATTNSTATUS and allows the next.
    ioat_driver::vfio::ioat_irq::rearm(&*d, 0);
    assert_eq!(d.read32(general::ATTNSTATUS), 0);
    // Masked vector: the message waits in the PBA and goes out on unmask.
    d.write32(MSIX_TABLE_OFFSET + 12, 1);
    r.submit(null_int());
    assert!(poll(|| d.read64(MSIX_PBA_OFFSET) & 1 == 1));
    assert_eq!(irq0.try_read(), None);
    d.write32(MSIX_TABLE_OFFSET + 12, 0);
    assert_eq!(irq0.wait(Duration::from_secs(2)), Some(1));
    assert_eq!(d.read64(MSIX_PBA_OFFSET), 0);
    // Coalescing: INTRDELAY = 3000 us delays the message by at least that.
    assert_eq!(
        ioat_driver::vfio::ioat_irq::set_coalescing(&*d, 3000),
        Some(3000)
    );
    ioat_driver::vfio::ioat_irq::rearm(&*d, 0);
    let t = Instant::now();
    r.submit(null_int());
    assert_eq!(irq0.wait(Duration::from_secs(2)), Some(1));
    assert!(
        t.elapsed() >= Duration::from_micros(3000),
        "{:?}",
        t.elapsed()
    );
    let s = d.stats(0);
    assert_eq!(
        (
            s.interrupts_requested,
            s.interrupts_raised,
            s.interrupts_delivered
        ),
        (4, 3, 3)
    );
    assert_clean(&d);
}

/// INTx/MSI style (Linux `ioat_dma_do_interrupt`): INTRCTRL = MASTER_INT_EN, MSI-X off; the
/// handler reads INTRCTRL, sees INT_STATUS, reads ATTNSTATUS for the channels, and writes the
/// INTRCTRL value back to acknowledge.
#[test]
fn intx_msi_style_handler_sees_status_and_attention_bits() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Bdx).chancnt(2));
    d.write8(general::INTRCTRL, general::INTRCTRL_MASTER_INT_EN);
    let line = d.intx_irq();
    // Channel 1 this time.
    let ring = DmaMem::new(&d, 4096);
    let comp = DmaMem::new(&d, 4096);
    let c1 = |o| reg(1, o);
    d.write16(c1(chan::CHANCTRL), chanctrl::RUN);
    d.write64(c1(chan::CHANCMP), comp.iova(0));
    let mut n = null_int();
    n.next = ring.iova(0);
    ring.write_desc(0, &n);
    d.write64(c1(chan::CHAINADDR), ring.iova(0));
    // Nothing pending yet: a handler would say "not mine".
    assert_eq!(d.read8(general::INTRCTRL) & general::INTRCTRL_INT_STATUS, 0);
    d.write16(c1(chan::DMACOUNT), 1);
    assert_eq!(line.wait(Duration::from_secs(2)), Some(1));
    // The handler.
    let ctrl = d.read8(general::INTRCTRL);
    assert_ne!(ctrl & general::INTRCTRL_MASTER_INT_EN, 0);
    assert_ne!(ctrl & general::INTRCTRL_INT_STATUS, 0);
    assert_eq!(d.read32(general::ATTNSTATUS), 0b10, "channel 1");
    d.write8(general::INTRCTRL, ctrl);
    assert_eq!(
        d.read8(general::INTRCTRL),
        general::INTRCTRL_MASTER_INT_EN,
        "acknowledged"
    );
    // The cleanup re-arms; ATTNSTATUS clears.
    ioat_driver::vfio::ioat_irq::rearm(&*d, 1);
    assert_eq!(d.read32(general::ATTNSTATUS), 0);
    // With the master enable off nothing is sent (status bits still say why).
    d.write8(general::INTRCTRL, 0);
    d.write16(c1(chan::DMACOUNT), 2);
    assert!(poll(|| d.read32(general::ATTNSTATUS) == 0b10));
    assert_eq!(line.wait(Duration::from_millis(5)), None);
    assert_clean(&d);
}

/// A halt raises an interrupt only with ERR_INT_EN (rule E10: the VFIO selftest's unmapped
/// copy with CHANCTRL 0x09 expects no MSI).
#[test]
fn error_interrupt_needs_err_int_en() {
    for (ctrl, want) in [
        (chanctrl::INT_REARM | chanctrl::ANY_ERR_ABORT_EN, None),
        (chanctrl::RUN, Some(1)),
    ] {
        let d = ModelDevice::new(ModelConfig::preset(Preset::Skx));
        enable_msix(&d, 1);
        d.write8(general::INTRCTRL, general::INTRCTRL_MSIX_VECTOR_CONTROL);
        let mut r = Rig::new(d.clone(), 8, ctrl);
        r.submit(HwDescriptor::copy(
            64,
            0x10_0000,
            r.data.iova(0),
            Ctl::copy(),
        ));
        assert_eq!(wait_state(&*d, 0, ChanState::Halted), ChanState::Halted);
        assert_eq!(
            d.msix_irq(0).wait(Duration::from_millis(20)),
            want,
            "CHANCTRL {ctrl:#x}"
        );
        assert!(d.misuse().is_empty());
    }
}

/// The driver's interrupt mode against the model: `int_en` on each op, CHANCTRL = RUN; the
/// interrupt wakes the poller, which reaps and re-arms (`vfio::ioat_irq::rearm`). In MSI-X
/// style (what `IoatInterrupts::enable` sets up: INTRCTRL 0x09, one vector per channel) and in
/// INTx/MSI style (INTRCTRL 0x01, MSI-X off; the waker acknowledges INTRCTRL as Linux's handler
/// does).
#[test]
fn driver_interrupt_mode_wakes_on_msix_and_intx() {
    for msix in [true, false] {
        let m = ModelDevice::new(ModelConfig::preset(Preset::Skx));
        let dev = Device::open(m.clone(), m.mapper()).unwrap();
        let irq = if msix {
            enable_msix(&m, 1);
            m.write8(
                general::INTRCTRL,
                general::INTRCTRL_MSIX_VECTOR_CONTROL | general::INTRCTRL_MASTER_INT_EN,
            );
            m.msix_irq(0)
        } else {
            m.write8(general::INTRCTRL, general::INTRCTRL_MASTER_INT_EN);
            m.intx_irq()
        };
        let mut ch = dev
            .channel(0, ChannelConfig::default().interrupt_mode())
            .unwrap();
        // The start's null descriptor asked for no interrupt, so nothing is pending.
        assert_eq!(irq.try_read(), None);
        let src = DmaRegion::alloc(dev.mapper(), 1 << 16).unwrap();
        let dst = DmaRegion::alloc(dev.mapper(), 1 << 16).unwrap();
        src.fill_bytes(0, 1 << 16, 0x5a).unwrap();
        let mut out: Vec<Completion> = Vec::new();
        for round in 0..20usize {
            let off = (round % 8) * 4096;
            ch.copy_regions(&src, off, &dst, off, 4096).unwrap();
            ch.flush();
            assert_eq!(
                irq.wait(Duration::from_secs(2)),
                Some(1),
                "msix {msix} round {round}"
            );
            if !msix {
                let ctrl = m.read8(general::INTRCTRL);
                assert_ne!(ctrl & general::INTRCTRL_INT_STATUS, 0);
                assert_eq!(m.read32(general::ATTNSTATUS), 1);
                m.write8(general::INTRCTRL, ctrl);
            }
            let mut got = 0;
            while got == 0 {
                got = ch.poll(&mut out);
            }
            ioat_driver::vfio::ioat_irq::rearm(&*m, 0);
        }
        assert_eq!(out.len(), 20);
        assert!(out.iter().all(|c| c.result.is_ok()));
        assert_eq!(dst.to_vec(0, 8 * 4096).unwrap(), vec![0x5a; 8 * 4096]);
        let s = m.stats(0);
        assert_eq!((s.interrupts_raised, s.interrupts_delivered), (20, 20));
        assert_clean(&m);
    }
}

// ---------------------------------------------------------------- fences

/// Rule O6: "the fence ensures that all operations including the current one are completed
/// before moving on". With `reorder_unfenced` the model lets a copy read its source before an
/// unfenced predecessor writes it: A→B then B→C without a fence copies stale bytes into C;
/// with the driver's `fence()` between them, C gets A's bytes.
#[test]
fn fence_orders_dependent_copies() {
    for fenced in [false, true] {
        let m = ModelDevice::new(ModelConfig::preset(Preset::Skx).reorder_unfenced(true));
        let dev = Device::open(m.clone(), m.mapper()).unwrap();
        let mut ch = dev.channel(0, ChannelConfig::default()).unwrap();
        let buf = DmaRegion::alloc(dev.mapper(), 3 * 4096).unwrap();
        buf.fill_bytes(0, 4096, 0xaa).unwrap(); // A
        buf.fill_bytes(4096, 4096, 0xbb).unwrap(); // B (old contents)
        buf.fill_bytes(8192, 4096, 0x00).unwrap(); // C
        ch.copy_regions(&buf, 0, &buf, 4096, 4096).unwrap();
        if fenced {
            ch.fence().unwrap();
        }
        ch.copy_regions(&buf, 4096, &buf, 8192, 4096).unwrap();
        let mut out = Vec::new();
        ch.wait_idle(Duration::from_secs(2), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let c = buf.to_vec(8192, 4096).unwrap();
        let want = if fenced { 0xaa } else { 0xbb };
        assert!(
            c.iter().all(|&b| b == want),
            "fenced {fenced}: C holds {:#x}",
            c[0]
        );
        assert_clean(&m);
    }
}

// ---------------------------------------------------------------- torn reads

/// Rule W4: below CB3.3 the two-dword read of CHANSTS "appears to result in torn reads". A
/// split read is two accesses at two instants; when a descriptor completes between them and
/// the completed address crosses a 4 GiB boundary, the halves come from different states. A
/// single 64-bit read (Linux `readq`) and the completion word are consistent.
#[test]
fn split_chansts_read_tears_below_cb33() {
    let d = ModelDevice::new(ModelConfig::preset(Preset::Bdx).timing(Timing::Modeled {
        per_desc: Duration::from_millis(20),
        bytes_per_sec: 0,
    }));
    let comp = DmaMem::new(&d, 4096);
    // Place a two-page ring across the 8 GiB line: descriptor A at 0x1_ffff_ffc0, B at
    // 0x2_0000_0000.
    d.model_mapper().skip_iova_to(0x1_ffff_f000);
    let ring = DmaMem::new(&d, 8192);
    let a = ring.iova(4096 - 64);
    let b = ring.iova(4096);
    assert_eq!((a, b), (0x1_ffff_ffc0, 0x2_0000_0000));
    for (at, next) in [(4096 - 64, b), (4096, a)] {
        let mut n = HwDescriptor::null(Ctl::copy().compl_write(true));
        n.next = next;
        ring.write_desc(at, &n);
    }
    d.write16(CHANCTRL, chanctrl::ANY_ERR_ABORT_EN);
    d.write64(CHANCMP, comp.iova(0));
    d.write64(CHAINADDR, a);
    d.write16(DMACOUNT, 2);
    // A completes at 20 ms, B at 40 ms. The low dword, read alone, names A (and ACTIVE) ...
    let mut lo = 0;
    assert!(poll(|| {
        lo = d.read32(CHANSTS) as u64;
        lo == a & 0xffff_ffc0
    }));
    assert_eq!(wait_state(&*d, 0, ChanState::Done), ChanState::Done);
    // ... and the high dword, read after B completed, names B.
    let hi = d.read32(CHANSTS + 4) as u64;
    let torn = hi << 32 | lo;
    assert_eq!(torn, 0x2_ffff_ffc0, "neither A ({a:#x}) nor B ({b:#x})");
    // A single 64-bit read and the completion word name B.
    assert_eq!(d.read64(CHANSTS), b | ChanState::Done.bits());
    assert_eq!(comp.read_u64(0), b | ChanState::Done.bits());
    // The order was low then high, as rule W3 requires: nothing flagged.
    assert_clean(&d);
}

// ---------------------------------------------------------------- per-part quirks

/// Rule I3: on BWD / BDX-DE a channel reset clears the MSI-X registers (Linux saves and
/// restores BAR0+0x1000/+0x1008/+0x1800 around it); other parts keep them.
#[test]
fn bwd_and_bdx_de_reset_clears_msix() {
    for (id, cbver, clears) in [
        (0x6f50u16, 0x33u8, true),
        (0x0c50, 0x33, true),
        (0x2021, 0x33, false),
    ] {
        let d = ModelDevice::new(ModelConfig::preset(Preset::Skx).device_id(id).cbver(cbver));
        d.write64(MSIX_TABLE_OFFSET, 0xfee0_1000);
        d.write64(MSIX_TABLE_OFFSET + 8, 0x41);
        d.write8(CHANCMD, chancmd::RESET);
        assert!(poll(|| d.read8(CHANCMD) == 0));
        let (addr, data) = (d.read64(MSIX_TABLE_OFFSET), d.read64(MSIX_TABLE_OFFSET + 8));
        if clears {
            assert_eq!(
                (addr, data),
                (0, 1 << 32),
                "{id:#x}: cleared, vector masked"
            );
        } else {
            assert_eq!((addr, data), (0xfee0_1000, 0x41), "{id:#x}: kept");
        }
        assert_clean(&d);
    }
}

/// Rule E3: TBG0 (8086:3430, CB3.0) leaves a spurious config parity error (DMAUNCERRSTS bit
/// 0x10) after a restart; Linux clears it by writing 0x10.
#[test]
fn tbg0_restart_sets_the_spurious_parity_bit() {
    let d = ModelDevice::new(
        ModelConfig::preset(Preset::Bdx)
            .device_id(0x3430)
            .cbver(0x30),
    );
    assert_eq!(d.config_read32(pci::DMAUNCERRSTS), 0);
    d.write8(CHANCMD, chancmd::RESET);
    assert!(poll(|| d.read8(CHANCMD) == 0));
    assert_eq!(d.config_read32(pci::DMAUNCERRSTS), 0x10);
    d.config_write32(pci::DMAUNCERRSTS, 0x10);
    assert_eq!(d.config_read32(pci::DMAUNCERRSTS), 0);
    assert_clean(&d);
}

/// Rule A3: 46-bit DMA addresses on CB3.2. A destination above 2^46 halts with DEST_ADDR (a
/// device error); the same IOVA is fine on CB3.3 (48 bits).
#[test]
fn address_width_below_cb33() {
    for (p, halts) in [(Preset::Bdx, true), (Preset::Skx, false)] {
        let d = ModelDevice::new(ModelConfig::preset(p));
        let mut r = Rig::new(d.clone(), 8, chanctrl::ANY_ERR_ABORT_EN);
        d.model_mapper().skip_iova_to(1 << 46);
        let high = DmaMem::new(&d, 4096);
        assert!(high.iova(0) >= 1 << 46);
        r.submit(HwDescriptor::copy(
            64,
            r.data.iova(0),
            high.iova(0),
            Ctl::copy(),
        ));
        if halts {
            assert_eq!(wait_state(&*d, 0, ChanState::Halted), ChanState::Halted);
            assert_eq!(d.read32(CHANERR), chanerr::DEST_ADDR);
            assert_eq!(rules(&d.device_errors()), ["A3"]);
            assert!(d.misuse().is_empty());
        } else {
            assert_eq!(wait_state(&*d, 0, ChanState::Done), ChanState::Done);
            assert_clean(&d);
        }
    }
}
