//! The syscalls behind a VFIO device, as two small traits: [`VfioHost`] opens a device
//! (container, group, device fd) and [`VfioBackend`] is what an opened device does (config
//! space, reset, region info and mmap, interrupts, IOMMU map/unmap, and for no-IOMMU mode
//! mlock and physical addresses). [`VfioDevice`](super::VfioDevice) holds one
//! `Arc<dyn VfioBackend>` and keeps all the logic (open sequence, BAR fallback, IOVA
//! bookkeeping, vector checks, error messages) on its side, so the logic is unit-tested against
//! the scripted `mock` (feature `testing`) without a device or root.
//!
//! The real implementations: a type1 IOMMU container through the crate `pci-driver`
//! ([`Type1Backend`]), and a no-IOMMU group through raw ioctls (`sys::RawDevice`), which
//! `pci-driver` does not know.

use std::fmt::Debug;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use pci_driver::backends::vfio::VfioPciDevice;
use pci_driver::device::PciDevice;
use pci_driver::regions::{MappedOwningPciRegion, PciRegion, Permissions};

use super::{pagemap, sys, IrqKind};

/// One device region (BAR) as VFIO describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes (0: the region does not exist).
    pub size: u64,
    /// VFIO allows mmap of it (VFIO_REGION_INFO_FLAG_MMAP).
    pub mappable: bool,
}

/// The IOMMU of a type1 container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuInfo {
    /// IOVA ranges the IOMMU accepts.
    pub valid_iova: Vec<Range<u64>>,
    /// Smallest mapping granularity in bytes.
    pub page: usize,
}

/// A device region mapped into this process; unmapped when dropped.
pub trait MappedRegion: Send + Sync {
    /// First byte of the mapping. Only ever accessed with volatile loads and stores.
    fn as_ptr(&self) -> *mut u8;
    /// Bytes mapped.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an opened VFIO device does at the syscall level. Errors are the OS's, unflattened.
pub trait VfioBackend: Send + Sync {
    /// The container's IOMMU, or `None` when the device was opened through a no-IOMMU group.
    fn iommu(&self) -> Option<IommuInfo>;
    /// Reads `buf.len()` (1, 2 or 4) bytes of config space at `off`.
    fn config_read(&self, off: u16, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf.len()` (1, 2 or 4) bytes of config space at `off`.
    fn config_write(&self, off: u16, buf: &[u8]) -> io::Result<()>;
    /// VFIO_DEVICE_RESET.
    fn reset(&self) -> io::Result<()>;
    /// Region (BAR) `index`, if VFIO reports it.
    fn region(&self, index: usize) -> Option<RegionInfo>;
    /// Maps the first `len` bytes of region `index` read/write.
    fn map_region(&self, index: usize, len: usize) -> io::Result<Box<dyn MappedRegion>>;
    /// Vectors of `kind` the device offers.
    fn irq_count(&self, kind: IrqKind) -> usize;
    /// VFIO_DEVICE_SET_IRQS: `fds[i]` signals vector `i` of `kind`; empty disables `kind`.
    fn set_irqs(&self, kind: IrqKind, fds: &[RawFd]) -> io::Result<()>;
    /// VFIO_IOMMU_MAP_DMA of `len` bytes at `vaddr` to `iova` (type1 only).
    ///
    /// # Safety
    /// The memory must stay allocated and must not be reached through Rust references while
    /// the device may access it, until [`VfioBackend::dma_unmap`] returned for this range.
    unsafe fn dma_map(&self, iova: u64, vaddr: *const u8, len: usize) -> io::Result<()>;
    /// VFIO_IOMMU_UNMAP_DMA (type1 only).
    fn dma_unmap(&self, iova: u64, len: usize) -> io::Result<()>;
    /// mlock of the pages (no-IOMMU mode: physical addresses must not move).
    fn mlock(&self, vaddr: *const u8, len: usize) -> io::Result<()>;
    /// Physical address of `len` physically contiguous bytes at `vaddr` (no-IOMMU mode).
    fn phys_addr(&self, vaddr: usize, len: usize) -> io::Result<u64>;
}

/// Opens VFIO devices.
pub trait VfioHost: Send + Sync + Debug {
    /// Opens the function at `sysfs_path` in a new type1 IOMMU container (group viable, group
    /// added to the container, VFIO_SET_IOMMU, device fd).
    fn open_type1(&self, sysfs_path: &Path) -> io::Result<Arc<dyn VfioBackend>>;
    /// Opens function `name` through the no-IOMMU group node `group_node` under `vfio_dir`.
    fn open_noiommu(
        &self,
        vfio_dir: &Path,
        group_node: &Path,
        name: &str,
    ) -> io::Result<Arc<dyn VfioBackend>>;
}

/// The host's VFIO: `pci-driver` for type1 containers, raw ioctls for no-IOMMU groups.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemVfio;

impl VfioHost for SystemVfio {
    fn open_type1(&self, sysfs_path: &Path) -> io::Result<Arc<dyn VfioBackend>> {
        Ok(Arc::new(Type1Backend(VfioPciDevice::open(sysfs_path)?)))
    }

    fn open_noiommu(
        &self,
        vfio_dir: &Path,
        group_node: &Path,
        name: &str,
    ) -> io::Result<Arc<dyn VfioBackend>> {
        Ok(Arc::new(sys::RawDevice::open_noiommu(
            vfio_dir, group_node, name,
        )?))
    }
}

fn host_mlock(vaddr: *const u8, len: usize) -> io::Result<()> {
    // SAFETY: mlock only pins the caller's pages; it has no memory-safety effect.
    if unsafe { libc::mlock(vaddr as *const libc::c_void, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A device in a type1 IOMMU container, through `pci-driver`.
pub struct Type1Backend(VfioPciDevice);

struct PciMapping(MappedOwningPciRegion);

impl MappedRegion for PciMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl VfioBackend for Type1Backend {
    fn iommu(&self) -> Option<IommuInfo> {
        let io = self.0.iommu();
        Some(IommuInfo {
            valid_iova: io.valid_iova_ranges().to_vec(),
            page: io.alignment(),
        })
    }

    fn config_read(&self, off: u16, buf: &mut [u8]) -> io::Result<()> {
        let c = self.0.config();
        let o = off as u64;
        match buf.len() {
            1 => buf[0] = c.read_u8(o)?,
            2 => buf.copy_from_slice(&c.read_le_u16(o)?.to_le_bytes()),
            4 => buf.copy_from_slice(&c.read_le_u32(o)?.to_le_bytes()),
            n => return Err(io::Error::other(format!("config read of {n} bytes"))),
        }
        Ok(())
    }

    fn config_write(&self, off: u16, buf: &[u8]) -> io::Result<()> {
        let c = self.0.config();
        let o = off as u64;
        match *buf {
            [b] => c.write_u8(o, b),
            [a, b] => c.write_le_u16(o, u16::from_le_bytes([a, b])),
            [a, b, x, y] => c.write_le_u32(o, u32::from_le_bytes([a, b, x, y])),
            _ => Err(io::Error::other(format!(
                "config write of {} bytes",
                buf.len()
            ))),
        }
    }

    fn reset(&self) -> io::Result<()> {
        self.0.reset()
    }

    fn region(&self, index: usize) -> Option<RegionInfo> {
        let bar = self.0.bar(index)?;
        Some(RegionInfo {
            size: bar.len(),
            mappable: bar.is_mappable(),
        })
    }

    fn map_region(&self, index: usize, len: usize) -> io::Result<Box<dyn MappedRegion>> {
        let bar = self
            .0
            .bar(index)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let m = if len as u64 >= bar.len() {
            bar.map(.., Permissions::ReadWrite)?
        } else {
            bar.map(..len as u64, Permissions::ReadWrite)?
        };
        Ok(Box::new(PciMapping(m)))
    }

    fn irq_count(&self, kind: IrqKind) -> usize {
        let i = self.0.interrupts();
        match kind {
            IrqKind::Intx => i.intx().max(),
            IrqKind::Msi => i.msi().max(),
            IrqKind::MsiX => i.msi_x().max(),
        }
    }

    fn set_irqs(&self, kind: IrqKind, fds: &[RawFd]) -> io::Result<()> {
        let i = self.0.interrupts();
        let m = match kind {
            IrqKind::Intx => i.intx(),
            IrqKind::Msi => i.msi(),
            IrqKind::MsiX => i.msi_x(),
        };
        if fds.is_empty() {
            m.disable()
        } else {
            m.enable(fds)
        }
    }

    unsafe fn dma_map(&self, iova: u64, vaddr: *const u8, len: usize) -> io::Result<()> {
        // SAFETY: forwarded; the caller upholds the contract of `VfioBackend::dma_map`.
        unsafe { self.0.iommu().map(iova, len, vaddr, Permissions::ReadWrite) }
    }

    fn dma_unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        self.0.iommu().unmap(iova, len)
    }

    fn mlock(&self, vaddr: *const u8, len: usize) -> io::Result<()> {
        host_mlock(vaddr, len)
    }

    fn phys_addr(&self, vaddr: usize, len: usize) -> io::Result<u64> {
        pagemap::phys_contiguous(vaddr, len)
    }
}

/// A raw mmap of a device region, unmapped on drop.
struct RawMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is device memory reached only through volatile accesses; the pointer is
// not tied to a thread.
unsafe impl Send for RawMapping {}
// SAFETY: as above.
unsafe impl Sync for RawMapping {}

impl MappedRegion for RawMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for RawMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` come from our successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

fn irq_index(kind: IrqKind) -> u32 {
    match kind {
        IrqKind::Intx => sys::VFIO_PCI_INTX_IRQ_INDEX,
        IrqKind::Msi => sys::VFIO_PCI_MSI_IRQ_INDEX,
        IrqKind::MsiX => sys::VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

impl VfioBackend for sys::RawDevice {
    fn iommu(&self) -> Option<IommuInfo> {
        None
    }

    fn config_read(&self, off: u16, buf: &mut [u8]) -> io::Result<()> {
        let base = self.config_offset()?;
        self.device.read_exact_at(buf, base + off as u64)
    }

    fn config_write(&self, off: u16, buf: &[u8]) -> io::Result<()> {
        let base = self.config_offset()?;
        self.device.write_all_at(buf, base + off as u64)
    }

    fn reset(&self) -> io::Result<()> {
        sys::RawDevice::reset(self)
    }

    fn region(&self, index: usize) -> Option<RegionInfo> {
        // Only BARs: indices 0-5 (VFIO_PCI_BAR0..5_REGION_INDEX).
        if index > 5 {
            return None;
        }
        self.regions.get(index).map(|r| RegionInfo {
            size: r.size,
            mappable: r.flags & sys::VFIO_REGION_INFO_FLAG_MMAP != 0,
        })
    }

    fn map_region(&self, index: usize, len: usize) -> io::Result<Box<dyn MappedRegion>> {
        let ri = self
            .regions
            .get(index)
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        // SAFETY: maps (part of) a device region VFIO reported, at its offset in the device
        // fd; the result is checked and unmapped by RawMapping's Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                ri.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Box::new(RawMapping {
            ptr: p as *mut u8,
            len,
        }))
    }

    fn irq_count(&self, kind: IrqKind) -> usize {
        self.irq_counts[irq_index(kind) as usize] as usize
    }

    fn set_irqs(&self, kind: IrqKind, fds: &[RawFd]) -> io::Result<()> {
        sys::RawDevice::set_irqs(self, irq_index(kind), fds)
    }

    unsafe fn dma_map(&self, _iova: u64, _vaddr: *const u8, _len: usize) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENODEV))
    }

    fn dma_unmap(&self, _iova: u64, _len: usize) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENODEV))
    }

    fn mlock(&self, vaddr: *const u8, len: usize) -> io::Result<()> {
        host_mlock(vaddr, len)
    }

    fn phys_addr(&self, vaddr: usize, len: usize) -> io::Result<u64> {
        pagemap::phys_contiguous(vaddr, len)
    }
}
