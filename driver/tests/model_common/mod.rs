//! Shared helpers for the device-model tests: DMA memory mapped through the model's mapper and
//! raw register sequences.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ioat_driver::desc::HwDescriptor;
use ioat_driver::dma::DmaMapper;
use ioat_driver::model::{ModelDevice, Violation};
use ioat_driver::regs::{chan, channel_base, ChanState, RegisterAccess};

/// Channel 0 register offsets (BAR0).
pub const CH0: u32 = 0x80;
pub const CHANCTRL: u32 = CH0 + chan::CHANCTRL;
pub const CHANCMD: u32 = CH0 + chan::CHANCMD;
pub const DMACOUNT: u32 = CH0 + chan::DMACOUNT;
pub const CHANSTS: u32 = CH0 + chan::CHANSTS;
pub const CHAINADDR: u32 = CH0 + chan::CHAINADDR;
pub const CHANCMP: u32 = CH0 + chan::CHANCMP;
pub const CHANERR: u32 = CH0 + chan::CHANERR;

pub fn reg(ch: u32, off: u32) -> u32 {
    channel_base(ch) + off
}

/// Page-aligned anonymous memory mapped into the model's IOMMU. Accessed only through raw
/// pointers (the device may touch it concurrently).
pub struct DmaMem {
    map: memmap2::MmapMut,
    pub iova: u64,
    len: usize,
    mapper: Arc<dyn DmaMapper>,
}

impl DmaMem {
    pub fn new(dev: &ModelDevice, len: usize) -> DmaMem {
        // Every driver whose sequences these tests replay enables bus mastering before it
        // gives the device memory (Linux `pci_set_master`, SPDK and DPDK through vfio-pci,
        // the VFIO selftest); the model refuses DMA without it.
        let cmd = dev.config_read16(ioat_driver::regs::pci::COMMAND);
        dev.config_write16(
            ioat_driver::regs::pci::COMMAND,
            cmd | ioat_driver::regs::pci::COMMAND_MASTER,
        );
        let len = len.div_ceil(4096) * 4096;
        let mut map = memmap2::MmapMut::map_anon(len).expect("anonymous mapping");
        let mapper = dev.mapper();
        // SAFETY: the mapping lives in `self` and is unmapped in Drop before it is freed; the
        // tests only touch it through raw pointers.
        let iova = unsafe { mapper.map(map.as_mut_ptr(), len) }.expect("map");
        DmaMem {
            map,
            iova,
            len,
            mapper,
        }
    }

    fn ptr(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }

    pub fn iova(&self, off: usize) -> u64 {
        self.iova + off as u64
    }

    pub fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        // SAFETY: in bounds of our mapping; raw copy, no reference to the shared memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr().add(off), bytes.len()) }
    }

    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of our mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr().add(off), v.as_mut_ptr(), len) }
        v
    }

    pub fn write_desc(&self, off: usize, d: &HwDescriptor) {
        self.write(off, &d.to_le_bytes());
    }

    pub fn read_u64(&self, off: usize) -> u64 {
        assert!(off % 8 == 0 && off + 8 <= self.len);
        // SAFETY: aligned, in bounds; volatile because the device writes it.
        let v = unsafe { std::ptr::read_volatile(self.ptr().add(off) as *const u64) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        v
    }

    pub fn write_u64(&self, off: usize, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    pub fn fill_pattern(&self, off: usize, len: usize, seed: u8) {
        let v: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        self.write(off, &v);
    }
}

impl Drop for DmaMem {
    fn drop(&mut self) {
        let _ = self.mapper.unmap(self.iova, self.len);
    }
}

/// Polls `cond` every 10 µs for up to 5 s.
pub fn poll(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(10));
    }
    cond()
}

pub fn state<R: RegisterAccess>(r: &R, ch: u32) -> ChanState {
    ChanState::from_bits(r.read64(reg(ch, chan::CHANSTS)))
}

pub fn wait_state<R: RegisterAccess>(r: &R, ch: u32, want: ChanState) -> ChanState {
    let mut last = state(r, ch);
    poll(|| {
        last = state(r, ch);
        last == want
    });
    last
}

pub fn rules(v: &[Violation]) -> Vec<&'static str> {
    v.iter().map(|x| x.rule).collect()
}

pub fn assert_clean(dev: &ModelDevice) {
    let v = dev.violations();
    assert!(
        v.is_empty(),
        "unexpected violations:\n{}",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
