//! A generic VFIO layer for user-space PCI drivers: I/OAT here, QEMU's `edu` device in the
//! VM test.
//!
//! - [`VfioDevice::open`] runs the sysfs pre-flight checks ([`crate::discover`]) before it
//!   touches anything, then opens the function through a [`VfioHost`]: the host's VFIO
//!   ([`SystemVfio`]: the crate `pci-driver` for a type1 IOMMU container, raw ioctls for a
//!   no-IOMMU group, which `pci-driver` does not know) or, in unit tests, the scripted
//!   `mock::MockVfio` (feature `testing`). Everything the device does at the syscall level
//!   goes through one [`VfioBackend`]; the logic stays here.
//! - [`VfioBar`] maps a BAR and implements [`RegisterAccess`] with volatile MMIO; 64-bit
//!   registers are two 32-bit accesses, low half first (the trait's default), with
//!   [`VfioBar::read64_single`]/[`VfioBar::write64_single`] for devices that want one access.
//! - [`VfioMapper`] implements [`DmaMapper`]: `VFIO_IOMMU_MAP_DMA` at IOVAs from its own
//!   allocator ([`IovaAllocator`] from [`crate::dma`]), or, in no-IOMMU mode, physical addresses from
//!   `/proc/self/pagemap`.
//! - Interrupts: MSI-X, MSI or INTx vectors bound to [`EventFd`]s; [`ioat_irq`] adds the I/OAT
//!   specifics (INTRCTRL, INTRDELAY coalescing, INT_REARM).
//!
//! No-IOMMU mode lets the device write anywhere in physical memory. It can only be requested
//! through the `unsafe` [`VfioOpenOptions::i_understand_noiommu`], and opening logs a warning.

pub mod backend;
pub mod ioat_irq;
pub mod irq;
#[cfg(any(test, feature = "testing"))]
pub mod mock;
pub mod pagemap;
mod sys;

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use parking_lot::Mutex;
use thiserror::Error;

use crate::discover::{Bdf, Expect, Host, Preflight, PreflightError, PreflightOptions};
use crate::dma::{DmaMapper, IovaAllocator, MapError};
use crate::regs::{pci, RegisterAccess};

pub use backend::{IommuInfo, MappedRegion, RegionInfo, SystemVfio, VfioBackend, VfioHost};
pub use irq::EventFd;

/// Errors from opening and driving a VFIO device. Messages are one line and name the fix.
#[derive(Debug, Error)]
pub enum VfioError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("{bdf}: {what} failed: {source}; {fix}")]
    Os {
        bdf: Bdf,
        what: &'static str,
        #[source]
        source: std::io::Error,
        fix: &'static str,
    },
    #[error("{bdf}: BAR{index} cannot be mapped: {why}")]
    Bar { bdf: Bdf, index: usize, why: String },
    #[error(
        "{bdf}: BAR{index} ({len} bytes) cannot be mapped: {source}; check dmesg for VFIO errors"
    )]
    BarMap {
        bdf: Bdf,
        index: usize,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: the device offers {have} {kind:?} vector(s), {want} requested")]
    Vectors {
        bdf: Bdf,
        kind: IrqKind,
        have: usize,
        want: usize,
    },
}

/// Interrupt mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqKind {
    Intx,
    Msi,
    MsiX,
}

/// How to open a device.
#[derive(Clone, Debug)]
pub struct VfioOpenOptions {
    /// Where sysfs and /dev live (the real root unless testing).
    pub host: Host,
    /// Which device the address must hold.
    pub expect: Expect,
    /// DMA memory the caller will pin, checked against RLIMIT_MEMLOCK.
    pub memlock_needed: u64,
    /// IOVAs the mapper may hand out (intersected with what the IOMMU reports). Devices with
    /// narrow DMA masks shrink it (QEMU's edu: 28 bits).
    pub iova_window: Range<u64>,
    /// The syscalls: the host's VFIO unless a test scripts them.
    pub vfio: Arc<dyn VfioHost>,
    noiommu: bool,
}

impl Default for VfioOpenOptions {
    fn default() -> Self {
        VfioOpenOptions {
            host: Host::system(),
            expect: Expect::Ioat,
            memlock_needed: 64 << 20,
            // Above the first MiB, below 2^39: inside every I/OAT's 40-bit+ reach.
            iova_window: (1 << 20)..(1 << 39),
            vfio: Arc::new(SystemVfio),
            noiommu: false,
        }
    }
}

impl VfioOpenOptions {
    /// Options for a known I/OAT function.
    pub fn ioat() -> Self {
        Self::default()
    }

    /// Options for exactly `vendor:device`.
    pub fn device(vendor: u16, device: u16) -> Self {
        VfioOpenOptions {
            expect: Expect::Id { vendor, device },
            ..Self::default()
        }
    }

    /// Reads sysfs and /dev under `host` (a fake tree in tests).
    pub fn with_host(mut self, host: Host) -> Self {
        self.host = host;
        self
    }

    /// Opens through `vfio` instead of the host's VFIO (tests: `mock::MockVfio`).
    pub fn with_vfio(mut self, vfio: Arc<dyn VfioHost>) -> Self {
        self.vfio = vfio;
        self
    }

    /// Restricts the IOVAs the mapper hands out (devices with a narrow DMA mask).
    pub fn with_iova_window(mut self, w: Range<u64>) -> Self {
        self.iova_window = w;
        self
    }

    /// DMA memory the caller will pin (checked against RLIMIT_MEMLOCK).
    pub fn with_memlock_needed(mut self, bytes: u64) -> Self {
        self.memlock_needed = bytes;
        self
    }

    /// Accept a no-IOMMU group (`/dev/vfio/noiommu-N`) when no IOMMU group exists.
    ///
    /// # Safety
    /// Without an IOMMU the device can read and write ANY physical memory: a wrong address in
    /// a descriptor corrupts the kernel or other processes, silently. DMA addresses become
    /// physical addresses that stay valid only while the memory stays locked and mapped.
    /// Use only on a machine you are prepared to crash, with hugepage-backed DMA memory.
    #[allow(non_snake_case)]
    pub unsafe fn i_understand_noiommu(mut self) -> Self {
        self.noiommu = true;
        self
    }

    /// Whether no-IOMMU groups are accepted.
    pub fn noiommu_allowed(&self) -> bool {
        self.noiommu
    }
}

struct Inner {
    bdf: Bdf,
    preflight: Preflight,
    backend: Arc<dyn VfioBackend>,
    /// The container's IOMMU, read once at open; `None` in no-IOMMU mode.
    iommu: Option<IommuInfo>,
    iova_window: Range<u64>,
}

/// An opened VFIO PCI function. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct VfioDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioDevice")
            .field("bdf", &self.inner.bdf)
            .field("noiommu", &self.is_noiommu())
            .finish()
    }
}

impl VfioDevice {
    /// Checks the device (see [`Host::preflight`]) and opens it through VFIO.
    pub fn open(bdf: &Bdf, opts: &VfioOpenOptions) -> Result<VfioDevice, VfioError> {
        let pf = opts.host.preflight(
            bdf,
            &PreflightOptions {
                expect: opts.expect,
                allow_noiommu: opts.noiommu,
                memlock_needed: opts.memlock_needed,
                memlock_limit: None,
                check_access: true,
            },
        )?;
        let os = |what: &'static str, fix: &'static str| {
            move |e: std::io::Error| VfioError::Os {
                bdf: *bdf,
                what,
                source: e,
                fix,
            }
        };
        let backend = if pf.noiommu {
            tracing::warn!(
                bdf = %bdf,
                "NO-IOMMU MODE: {} is opened without IOMMU protection; the device can DMA to any physical address. Any driver bug can corrupt arbitrary memory.",
                bdf
            );
            opts.vfio
                .open_noiommu(&opts.host.vfio_dir(), &pf.group_node, &bdf.to_string())
                .map_err(os(
                    "opening the no-IOMMU VFIO group",
                    "load vfio with enable_unsafe_noiommu_mode=1 and make sure no other process holds the group",
                ))?
        } else {
            opts.vfio.open_type1(&pf.sysfs_path).map_err(os(
                "opening the VFIO group/container",
                "make sure no other process holds the group and the kernel supports VFIO type1v2 (vfio_iommu_type1)",
            ))?
        };
        let iommu = backend.iommu();
        if pf.noiommu != iommu.is_none() {
            // The group node said one thing and the container another: refuse rather than
            // hand out IOVAs nobody translates (or physical addresses behind an IOMMU).
            return Err(VfioError::Os {
                bdf: *bdf,
                what: "checking the container's IOMMU",
                source: std::io::Error::other(format!(
                    "the group is {} but the container {} an IOMMU",
                    if pf.noiommu {
                        "no-IOMMU"
                    } else {
                        "an IOMMU group"
                    },
                    if iommu.is_some() { "has" } else { "has no" }
                )),
                fix: "check /dev/vfio and the vfio module parameters",
            });
        }
        Ok(VfioDevice {
            inner: Arc::new(Inner {
                bdf: *bdf,
                preflight: pf,
                backend,
                iommu,
                iova_window: opts.iova_window.clone(),
            }),
        })
    }

    pub fn bdf(&self) -> Bdf {
        self.inner.bdf
    }

    /// The pre-flight result (IDs, group, NUMA node).
    pub fn preflight(&self) -> &Preflight {
        &self.inner.preflight
    }

    /// True when opened through a no-IOMMU group: DMA is unrestricted.
    pub fn is_noiommu(&self) -> bool {
        self.inner.iommu.is_none()
    }

    fn os_err(&self, what: &'static str, fix: &'static str, e: std::io::Error) -> VfioError {
        VfioError::Os {
            bdf: self.inner.bdf,
            what,
            source: e,
            fix,
        }
    }

    fn config_rw(&self, off: u16, buf: &mut [u8], write: bool) -> std::io::Result<()> {
        if write {
            self.inner.backend.config_write(off, buf)
        } else {
            self.inner.backend.config_read(off, buf)
        }
    }

    /// Reads a config-space byte.
    pub fn config_read8(&self, off: u16) -> Result<u8, VfioError> {
        let mut b = [0u8; 1];
        self.config_rw(off, &mut b, false)
            .map_err(|e| self.os_err("config read", "check dmesg for VFIO errors", e))?;
        Ok(b[0])
    }

    /// Reads a config-space word.
    pub fn config_read16(&self, off: u16) -> Result<u16, VfioError> {
        let mut b = [0u8; 2];
        self.config_rw(off, &mut b, false)
            .map_err(|e| self.os_err("config read", "check dmesg for VFIO errors", e))?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a config-space dword.
    pub fn config_read32(&self, off: u16) -> Result<u32, VfioError> {
        let mut b = [0u8; 4];
        self.config_rw(off, &mut b, false)
            .map_err(|e| self.os_err("config read", "check dmesg for VFIO errors", e))?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a config-space word.
    pub fn config_write16(&self, off: u16, v: u16) -> Result<(), VfioError> {
        let mut b = v.to_le_bytes();
        self.config_rw(off, &mut b, true)
            .map_err(|e| self.os_err("config write", "check dmesg for VFIO errors", e))
    }

    /// Writes a config-space dword.
    pub fn config_write32(&self, off: u16, v: u32) -> Result<(), VfioError> {
        let mut b = v.to_le_bytes();
        self.config_rw(off, &mut b, true)
            .map_err(|e| self.os_err("config write", "check dmesg for VFIO errors", e))
    }

    /// Sets MEMORY and BUS MASTER in the PCI COMMAND register (16-bit write, so the RW1C
    /// status register next to it is untouched). With `intx_disable`, also masks INTx.
    pub fn enable_bus_master(&self, intx_disable: bool) -> Result<(), VfioError> {
        let mut cmd = self.config_read16(pci::COMMAND)?;
        cmd |= pci::COMMAND_MEMORY | pci::COMMAND_MASTER;
        if intx_disable {
            cmd |= pci::COMMAND_INTX_DISABLE;
        }
        self.config_write16(pci::COMMAND, cmd)
    }

    /// Clears BUS MASTER: the device can no longer issue DMA.
    pub fn disable_bus_master(&self) -> Result<(), VfioError> {
        let cmd = self.config_read16(pci::COMMAND)?;
        self.config_write16(pci::COMMAND, cmd & !pci::COMMAND_MASTER)
    }

    /// Function-level reset through VFIO_DEVICE_RESET.
    pub fn reset(&self) -> Result<(), VfioError> {
        self.inner.backend.reset().map_err(|e| {
            self.os_err(
                "device reset",
                "the function may not support FLR; reset the channel instead",
                e,
            )
        })
    }

    /// Maps BAR `index` for MMIO.
    pub fn map_bar(&self, index: usize) -> Result<Arc<VfioBar>, VfioError> {
        let bar_err = |why: String| VfioError::Bar {
            bdf: self.inner.bdf,
            index,
            why,
        };
        let info = self
            .inner
            .backend
            .region(index)
            .filter(|r| r.size > 0)
            .ok_or_else(|| bar_err("the BAR does not exist".into()))?;
        if !info.mappable {
            return Err(bar_err(
                "VFIO does not allow mmap of this BAR (kernel too old for mappable MSI-X BARs?)"
                    .into(),
            ));
        }
        let size = usize::try_from(info.size)
            .map_err(|_| bar_err(format!("{} bytes do not fit the address space", info.size)))?;
        // Kernels without mappable MSI-X pages refuse an mmap that covers the MSI-X table
        // (I/OAT keeps it at BAR0+0x1000); the registers live in the first page.
        let mapping = match self.inner.backend.map_region(index, size) {
            Ok(m) => m,
            Err(e) if size > FIRST_PAGE => {
                tracing::debug!("full BAR{index} mmap refused ({e}); mapping its first page");
                self.inner
                    .backend
                    .map_region(index, FIRST_PAGE)
                    .map_err(|source| VfioError::BarMap {
                        bdf: self.inner.bdf,
                        index,
                        len: FIRST_PAGE,
                        source,
                    })?
            }
            Err(source) => {
                return Err(VfioError::BarMap {
                    bdf: self.inner.bdf,
                    index,
                    len: size,
                    source,
                })
            }
        };
        let (ptr, len) = (mapping.as_ptr(), mapping.len());
        Ok(Arc::new(VfioBar {
            ptr,
            len,
            index,
            _mapping: mapping,
            dev: self.clone(),
        }))
    }

    /// How many vectors of `kind` the device offers.
    pub fn irq_count(&self, kind: IrqKind) -> usize {
        self.inner.backend.irq_count(kind)
    }

    /// Enables `n` vectors of `kind`, each signalling its own eventfd (index = vector).
    pub fn enable_irqs(&self, kind: IrqKind, n: usize) -> Result<Vec<EventFd>, VfioError> {
        let have = self.irq_count(kind);
        if n == 0 || n > have {
            return Err(VfioError::Vectors {
                bdf: self.inner.bdf,
                kind,
                have,
                want: n,
            });
        }
        let fds = (0..n)
            .map(|_| EventFd::new())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| self.os_err("eventfd", "raise the open-file limit", e))?;
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.inner.backend.set_irqs(kind, &raw).map_err(|e| {
            self.os_err(
                "VFIO_DEVICE_SET_IRQS",
                "check dmesg; interrupt remapping may be required (intremap=on)",
                e,
            )
        })?;
        Ok(fds)
    }

    /// Disables every vector of `kind`.
    pub fn disable_irqs(&self, kind: IrqKind) -> Result<(), VfioError> {
        self.inner
            .backend
            .set_irqs(kind, &[])
            .map_err(|e| self.os_err("VFIO_DEVICE_SET_IRQS (disable)", "check dmesg", e))
    }

    /// A DMA mapper over this device's container.
    pub fn mapper(&self) -> Arc<VfioMapper> {
        let (windows, page) = match &self.inner.iommu {
            Some(io) => {
                let w = &self.inner.iova_window;
                let windows: Vec<(u64, u64)> = io
                    .valid_iova
                    .iter()
                    .filter_map(|r| {
                        let s = r.start.max(w.start);
                        let e = r.end.min(w.end);
                        (s < e).then(|| (s, e - s))
                    })
                    .collect();
                (windows, io.page.max(4096))
            }
            None => (Vec::new(), pagemap::page_size()),
        };
        Arc::new(VfioMapper {
            dev: self.clone(),
            page,
            state: Mutex::new(MapState {
                space: IovaAllocator::new(&windows, page as u64).unwrap_or_else(|_| {
                    IovaAllocator::new(&[], 4096).expect("4096 is a power of two")
                }),
                maps: BTreeMap::new(),
            }),
        })
    }
}

/// The first 4 KiB of a BAR: all I/OAT registers (general + channel 0, CB3.4 extras).
const FIRST_PAGE: usize = 0x1000;

/// A mapped BAR: volatile MMIO through [`RegisterAccess`]. Config-space calls go to the
/// device's config region. Out-of-range or misaligned accesses are refused (reads return all
/// ones, like a PCI master abort) and logged; they never touch memory outside the BAR.
pub struct VfioBar {
    ptr: *mut u8,
    len: usize,
    index: usize,
    // Field order is drop order: the BAR is unmapped before the device handle goes (and,
    // with the last handle, the device fd is closed).
    _mapping: Box<dyn MappedRegion>,
    dev: VfioDevice,
}

// SAFETY: the BAR mapping is process-wide device memory; every access is a single volatile
// load or store, which the device serialises. No Rust references into it are ever created.
unsafe impl Send for VfioBar {}
// SAFETY: as above; `&self` accesses are volatile MMIO, safe to issue from several threads.
unsafe impl Sync for VfioBar {}

impl std::fmt::Debug for VfioBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VfioBar({} BAR{} {} bytes)",
            self.dev.bdf(),
            self.index,
            self.len
        )
    }
}

impl VfioBar {
    /// BAR length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device this BAR belongs to.
    pub fn device(&self) -> &VfioDevice {
        &self.dev
    }

    fn check(&self, off: u32, width: usize) -> bool {
        if !mmio_ok(off, width, self.len) {
            tracing::error!(
                bdf = %self.dev.bdf(),
                "refused {width}-byte MMIO access at {off:#x} (BAR{} is {} bytes, accesses must be naturally aligned)",
                self.index,
                self.len
            );
            return false;
        }
        true
    }

    /// One 64-bit load (for devices that accept it; I/OAT below 3.3 does not).
    pub fn read64_single(&self, off: u32) -> u64 {
        if !self.check(off, 8) {
            return u64::MAX;
        }
        // SAFETY: in bounds and 8-byte aligned (checked), inside our live BAR mapping.
        unsafe { std::ptr::read_volatile(self.ptr.add(off as usize) as *const u64) }
    }

    /// One 64-bit store.
    pub fn write64_single(&self, off: u32, val: u64) {
        if self.check(off, 8) {
            // SAFETY: in bounds and 8-byte aligned (checked), inside our live BAR mapping.
            unsafe { std::ptr::write_volatile(self.ptr.add(off as usize) as *mut u64, val) }
        }
    }
}

/// Whether a `width`-byte access at `off` is naturally aligned and inside a `len`-byte BAR.
fn mmio_ok(off: u32, width: usize, len: usize) -> bool {
    let o = off as usize;
    o % width == 0 && o.checked_add(width).is_some_and(|e| e <= len)
}

macro_rules! mmio {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&self, off: u32) -> $t {
            if !self.check(off, std::mem::size_of::<$t>()) {
                return <$t>::MAX;
            }
            // SAFETY: in bounds and naturally aligned (checked), inside our live BAR mapping.
            unsafe { std::ptr::read_volatile(self.ptr.add(off as usize) as *const $t) }
        }
        fn $write(&self, off: u32, val: $t) {
            if self.check(off, std::mem::size_of::<$t>()) {
                // SAFETY: in bounds and naturally aligned (checked), inside our BAR mapping.
                unsafe { std::ptr::write_volatile(self.ptr.add(off as usize) as *mut $t, val) }
            }
        }
    };
}

impl RegisterAccess for VfioBar {
    mmio!(read8, write8, u8);
    mmio!(read16, write16, u16);
    mmio!(read32, write32, u32);

    fn config_read32(&self, off: u16) -> u32 {
        self.dev.config_read32(off).unwrap_or_else(|e| {
            tracing::error!("{e}");
            u32::MAX
        })
    }

    fn config_write32(&self, off: u16, val: u32) {
        if let Err(e) = self.dev.config_write32(off, val) {
            tracing::error!("{e}");
        }
    }
}

struct Mapping {
    len: usize,
    /// Page-aligned IOVA and span actually mapped (IOMMU mode).
    base_iova: u64,
    span: usize,
    /// Times the same physical range was mapped (no-IOMMU mode returns the same address).
    count: u32,
}

struct MapState {
    space: IovaAllocator,
    maps: BTreeMap<u64, Mapping>,
}

/// DMA mapper over a VFIO container: IOMMU mappings at allocator-chosen IOVAs, or physical
/// addresses in no-IOMMU mode.
pub struct VfioMapper {
    dev: VfioDevice,
    page: usize,
    state: Mutex<MapState>,
}

impl std::fmt::Debug for VfioMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VfioMapper({}, {} mappings)",
            self.dev.bdf(),
            self.state.lock().maps.len()
        )
    }
}

impl VfioMapper {
    /// Number of live mappings.
    pub fn mappings(&self) -> usize {
        self.state.lock().maps.len()
    }

    /// Free IOVA bytes left (0 in no-IOMMU mode, where addresses are physical).
    pub fn free_iova(&self) -> u64 {
        self.state.lock().space.free_bytes()
    }
}

impl DmaMapper for VfioMapper {
    unsafe fn map(&self, vaddr: *mut u8, len: usize) -> Result<u64, MapError> {
        if len == 0 {
            return Err(MapError::Misaligned {
                vaddr: vaddr as u64,
                len: 0,
                align: self.page as u64,
            });
        }
        let ps = self.page;
        let va = vaddr as usize;
        let base = va & !(ps - 1);
        let end = va
            .checked_add(len)
            .and_then(|e| e.checked_add(ps - 1))
            .ok_or(MapError::TooLong {
                what: "VFIO DMA map",
                len: len as u64,
            })?
            & !(ps - 1);
        let span = end - base;
        let mut st = self.state.lock();
        let backend = &self.dev.inner.backend;
        if self.dev.inner.iommu.is_some() {
            let base_iova = st.space.alloc(span as u64, ps as u64)?;
            // SAFETY: the caller guarantees the memory stays allocated and unaliased by Rust
            // references until unmap (DmaMapper::map contract); `base..base+span` covers
            // exactly the pages holding it.
            let r = unsafe { backend.dma_map(base_iova, base as *const u8, span) };
            if let Err(e) = r {
                let _ = st.space.free(base_iova, span as u64);
                return Err(MapError::os(
                    "VFIO_IOMMU_MAP_DMA",
                    e,
                    "; raise RLIMIT_MEMLOCK (ulimit -l) or map less",
                ));
            }
            let iova = base_iova + (va - base) as u64;
            st.maps.insert(
                iova,
                Mapping {
                    len,
                    base_iova,
                    span,
                    count: 1,
                },
            );
            Ok(iova)
        } else {
            backend.mlock(base as *const u8, span).map_err(|e| {
                MapError::os("mlock", e, "; raise RLIMIT_MEMLOCK: ulimit -l unlimited")
            })?;
            let pa = backend
                .phys_addr(va, len)
                .map_err(|e| MapError::os("no-IOMMU translation", e, ""))?;
            st.maps
                .entry(pa)
                .and_modify(|m| m.count += 1)
                .or_insert(Mapping {
                    len,
                    base_iova: pa,
                    span,
                    count: 1,
                });
            Ok(pa)
        }
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<(), MapError> {
        let mut st = self.state.lock();
        let Some(m) = st.maps.get_mut(&iova) else {
            return Err(MapError::NotMapped {
                iova,
                len: len as u64,
            });
        };
        if m.len != len {
            return Err(MapError::NotMapped {
                iova,
                len: len as u64,
            });
        }
        m.count -= 1;
        if m.count > 0 {
            return Ok(());
        }
        if self.dev.inner.iommu.is_none() {
            st.maps.remove(&iova);
            return Ok(());
        }
        let (base_iova, span) = (m.base_iova, m.span);
        if let Err(e) = self.dev.inner.backend.dma_unmap(base_iova, span) {
            // Still mapped in the IOMMU: keep the entry (and its IOVAs) so a retry can work.
            m.count += 1;
            return Err(MapError::os("VFIO_IOMMU_UNMAP_DMA", e, "; check dmesg"));
        }
        st.maps.remove(&iova);
        st.space.free(base_iova, span as u64)?;
        Ok(())
    }

    fn page_size(&self) -> usize {
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::fake::{build, FakeFn};

    #[test]
    fn mmio_bounds_and_alignment() {
        assert!(mmio_ok(0, 1, 16));
        assert!(mmio_ok(0x88, 8, 0x4000));
        assert!(mmio_ok(0x3ffc, 4, 0x4000));
        assert!(!mmio_ok(0x3ffc, 8, 0x4000), "crosses the end");
        assert!(!mmio_ok(0x4000, 1, 0x4000), "past the end");
        assert!(!mmio_ok(0x86, 4, 0x4000), "misaligned dword");
        assert!(!mmio_ok(0x8c, 8, 0x4000), "misaligned qword");
        assert!(!mmio_ok(u32::MAX, 1, 16));
    }

    #[test]
    fn open_runs_preflight_first() {
        let root = std::env::temp_dir().join(format!("ioat-vfio-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        build(
            &root,
            &[FakeFn {
                bdf: "0000:00:04.0",
                vendor: 0x8086,
                device: 0x2021,
                driver: Some("ioatdma"),
                group: Some(3),
                numa: 0,
            }],
            false,
        )
        .unwrap();
        let opts = VfioOpenOptions {
            host: Host::with_root(&root),
            ..VfioOpenOptions::ioat()
        };
        let e = VfioDevice::open(&"0000:00:04.0".parse().unwrap(), &opts).unwrap_err();
        assert!(e.to_string().contains("ioat-ctl bind 0000:00:04.0"), "{e}");
        let e = VfioDevice::open(&"0000:00:1f.7".parse().unwrap(), &opts).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("0000:00:1f.7: no such PCI device"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
        // SAFETY: only flips a flag in the options under test; nothing is opened.
        let o = unsafe { VfioOpenOptions::ioat().i_understand_noiommu() };
        assert!(o.noiommu_allowed());
        assert!(!VfioOpenOptions::ioat().noiommu_allowed());
    }
}

/// `VfioDevice` logic against the scripted VFIO: no device, no IOMMU, no root.
#[cfg(test)]
mod mock_tests {
    use super::mock::{Call, MockConfig, MockVfio, Op};
    use super::*;
    use crate::discover::fake::{build, FakeFn};
    use std::error::Error as _;
    use std::path::PathBuf;

    const BDF: &str = "0000:00:04.0";

    struct Fixture {
        root: PathBuf,
        vfio: MockVfio,
        opts: VfioOpenOptions,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn func(bdf: &'static str, driver: &'static str, group: u32) -> FakeFn {
        FakeFn {
            bdf,
            vendor: 0x8086,
            device: 0x2021,
            driver: Some(driver),
            group: Some(group),
            numa: 0,
        }
    }

    fn fixture(name: &str, fns: &[FakeFn], noiommu: bool, cfg: MockConfig) -> Fixture {
        let root =
            std::env::temp_dir().join(format!("ioat-vfio-mock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        build(&root, fns, noiommu).unwrap();
        let vfio = MockVfio::new(cfg);
        let opts = VfioOpenOptions::ioat()
            .with_host(Host::with_root(&root))
            .with_memlock_needed(0)
            .with_vfio(Arc::new(vfio.clone()));
        Fixture { root, vfio, opts }
    }

    fn good(name: &str, cfg: MockConfig) -> Fixture {
        fixture(name, &[func(BDF, "vfio-pci", 3)], false, cfg)
    }

    fn bdf() -> Bdf {
        BDF.parse().unwrap()
    }

    fn errno(e: &dyn std::error::Error) -> Option<i32> {
        e.source()?.downcast_ref::<std::io::Error>()?.raw_os_error()
    }

    #[test]
    fn open_goes_through_type1_and_close_follows_the_last_handle() {
        let f = good("type1", MockConfig::default());
        let dev = VfioDevice::open(&bdf(), &f.opts).unwrap();
        assert!(!dev.is_noiommu());
        assert_eq!(dev.preflight().function.iommu_group, Some(3));
        assert_eq!(
            f.vfio.calls(),
            [Call::OpenType1 {
                sysfs_path: f.root.join("sys/bus/pci/devices").join(BDF)
            }]
        );
        let clone = dev.clone();
        drop(dev);
        assert!(!f.vfio.calls().contains(&Call::Close), "a handle is left");
        drop(clone);
        assert_eq!(f.vfio.calls().last(), Some(&Call::Close));
    }

    #[test]
    fn preflight_failures_make_no_syscall() {
        // Group 5 also holds a function still on ioatdma: not viable.
        let f = fixture(
            "viable",
            &[func(BDF, "vfio-pci", 5), func("0000:00:04.1", "ioatdma", 5)],
            false,
            MockConfig::default(),
        );
        let e = VfioDevice::open(&bdf(), &f.opts).unwrap_err();
        assert!(
            matches!(
                e,
                VfioError::Preflight(PreflightError::GroupNotViable { group: 5, .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("ioat-ctl bind"), "{e}");
        // Not on vfio-pci at all.
        let e = VfioDevice::open(&"0000:00:04.1".parse().unwrap(), &f.opts).unwrap_err();
        assert!(e.to_string().contains("ioat-ctl bind 0000:00:04.1"), "{e}");
        assert!(f.vfio.calls().is_empty(), "{:?}", f.vfio.calls());
    }

    #[test]
    fn open_failure_keeps_the_os_error_and_names_the_fix() {
        let f = good("openfail", MockConfig::default());
        f.vfio.fail_next(Op::Open, libc::EBUSY);
        let e = VfioDevice::open(&bdf(), &f.opts).unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("0000:00:04.0: opening the VFIO group/container failed"),
            "{m}"
        );
        assert!(m.contains("no other process holds the group"), "{m}");
        assert_eq!(errno(&e), Some(libc::EBUSY));
        // The next attempt works: the failure was one-shot.
        VfioDevice::open(&bdf(), &f.opts).unwrap();
    }

    #[test]
    fn noiommu_needs_consent_and_a_container_without_iommu() {
        let cfg = MockConfig {
            iommu: None,
            ..MockConfig::default()
        };
        let f = fixture("noiommu", &[func(BDF, "vfio-pci", 3)], true, cfg);
        let e = VfioDevice::open(&bdf(), &f.opts).unwrap_err();
        assert!(
            matches!(
                e,
                VfioError::Preflight(PreflightError::NoiommuRefused { .. })
            ),
            "{e}"
        );
        assert!(f.vfio.calls().is_empty());
        // SAFETY: nothing is mapped for a device here; the mock performs no DMA.
        let opts = unsafe { f.opts.clone().i_understand_noiommu() };
        let dev = VfioDevice::open(&bdf(), &opts).unwrap();
        assert!(dev.is_noiommu());
        assert_eq!(
            f.vfio.take_calls(),
            [Call::OpenNoIommu {
                group_node: f.root.join("dev/vfio/noiommu-3"),
                name: BDF.into()
            }]
        );
        // A no-IOMMU group whose container claims an IOMMU is refused, and closed again.
        let f2 = fixture(
            "noiommu-mismatch",
            &[func(BDF, "vfio-pci", 3)],
            true,
            MockConfig::default(),
        );
        // SAFETY: as above.
        let opts = unsafe { f2.opts.clone().i_understand_noiommu() };
        let e = VfioDevice::open(&bdf(), &opts).unwrap_err();
        assert!(
            e.to_string().contains("checking the container's IOMMU"),
            "{e}"
        );
        assert_eq!(f2.vfio.calls().last(), Some(&Call::Close));
    }

    #[test]
    fn bar_falls_back_to_its_first_page_and_is_unmapped_before_close() {
        let cfg = MockConfig {
            max_map: Some(0x1000),
            ..MockConfig::default()
        };
        let f = good("bar", cfg);
        let dev = VfioDevice::open(&bdf(), &f.opts).unwrap();
        f.vfio.take_calls();
        let bar = dev.map_bar(0).unwrap();
        assert_eq!(
            f.vfio.take_calls(),
            [
                Call::MapRegion {
                    index: 0,
                    len: 0x4000
                },
                Call::MapRegion {
                    index: 0,
                    len: 0x1000
                }
            ]
        );
        assert_eq!(bar.len(), 0x1000);
        bar.write32(0x80, 0xdead_beef);
        bar.write16(0x84, 0x1234);
        assert_eq!(bar.read32(0x80), 0xdead_beef);
        assert_eq!(bar.read16(0x84), 0x1234);
        assert_eq!(bar.read64_single(0x80), 0x1234_dead_beef);
        // Outside the mapping or misaligned: refused, reads all ones, nothing touched.
        assert_eq!(bar.read32(0x1000), u32::MAX);
        assert_eq!(bar.read32(0x82), u32::MAX);
        bar.write32(0x1000, 0);
        drop(dev);
        assert!(f.vfio.calls().is_empty(), "the BAR keeps the device open");
        drop(bar);
        assert_eq!(
            f.vfio.calls(),
            [
                Call::UnmapRegion {
                    index: 0,
                    len: 0x1000
                },
                Call::Close
            ]
        );
    }

    #[test]
    fn bar_errors_say_why() {
        let cfg = MockConfig {
            regions: vec![
                RegionInfo {
                    size: 0x1000,
                    mappable: true,
                },
                RegionInfo {
                    size: 0x1000,
                    mappable: false,
                },
                RegionInfo {
                    size: 0,
                    mappable: true,
                },
            ],
            ..MockConfig::default()
        };
        let f = good("barerr", cfg);
        let dev = VfioDevice::open(&bdf(), &f.opts).unwrap();
        let e = dev.map_bar(1).unwrap_err();
        assert!(e.to_string().contains("does not allow mmap"), "{e}");
        for missing in [2, 6] {
            let e = dev.map_bar(missing).unwrap_err();
            assert!(e.to_string().contains("does not exist"), "{e}");
        }
        // One page only: no smaller fallback; the OS error is kept.
        f.vfio.fail_next(Op::MapRegion, libc::EPERM);
        let e = dev.map_bar(0).unwrap_err();
        assert!(
            matches!(
                e,
                VfioError::BarMap {
                    index: 0,
                    len: 0x1000,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(errno(&e), Some(libc::EPERM));
        assert!(e.to_string().contains("check dmesg"), "{e}");
    }

    /// Page-aligned test memory the mock never touches.
    fn pages(n: usize) -> Vec<u8> {
        vec![0u8; n * 4096 + 4096]
    }

    #[test]
    fn iommu_mapping_bookkeeping() {
        let f = good("map", MockConfig::default());
        let dev = VfioDevice::open(&bdf(), &f.opts).unwrap();
        let mapper = dev.mapper();
        assert_eq!(mapper.page_size(), 4096);
        f.vfio.take_calls();
        let mem = pages(3);
        let va = (mem.as_ptr() as usize).next_multiple_of(4096) + 100;
        let free0 = mapper.free_iova();
        // SAFETY: the mock records the call and never touches the memory.
        let iova = unsafe { mapper.map(va as *mut u8, 5000) }.unwrap();
        assert_eq!(iova % 4096, 100, "the offset inside the page is kept");
        assert!(iova >= 1 << 20, "inside the IOVA window");
        let base = iova - 100;
        assert_eq!(
            f.vfio.take_calls(),
            [Call::DmaMap {
                iova: base,
                vaddr: va - 100,
                len: 8192
            }]
        );
        assert_eq!(mapper.mappings(), 1);
        assert_eq!(mapper.free_iova(), free0 - 8192);

        // A refused map gives its IOVAs back and names the fix.
        f.vfio.fail_next(Op::DmaMap, libc::ENOMEM);
        // SAFETY: as above.
        let e = unsafe { mapper.map(va as *mut u8, 10) }.unwrap_err();
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
        assert_eq!(
            e.source()
                .and_then(|s| s.downcast_ref::<crate::error::OsError>())
                .and_then(|o| o.raw_os_error()),
            Some(libc::ENOMEM)
        );
        assert_eq!(mapper.mappings(), 1);
        assert_eq!(mapper.free_iova(), free0 - 8192);
        f.vfio.take_calls();

        // Unmapping needs the exact range; a failed unmap keeps the mapping for a retry.
        assert!(matches!(
            mapper.unmap(iova, 4999),
            Err(MapError::NotMapped { .. })
        ));
        f.vfio.fail_next(Op::DmaUnmap, libc::EIO);
        assert!(mapper.unmap(iova, 5000).is_err());
        assert_eq!(mapper.mappings(), 1);
        mapper.unmap(iova, 5000).unwrap();
        assert_eq!(
            f.vfio.take_calls(),
            [
                Call::DmaUnmap {
                    iova: base,
                    len: 8192
                },
                Call::DmaUnmap {
                    iova: base,
                    len: 8192
                }
            ]
        );
        assert_eq!(mapper.mappings(), 0);
        assert_eq!(mapper.free_iova(), free0);
        assert!(matches!(
            mapper.unmap(iova, 5000),
            Err(MapError::NotMapped { .. })
        ));
    }

    #[test]
    fn iova_window_is_intersected_with_the_iommu_ranges() {
        let cfg = MockConfig {
            iommu: Some(IommuInfo {
                valid_iova: vec![0..0x10_0000, 0x200_0000..0x200_4000],
                page: 4096,
            }),
            ..MockConfig::default()
        };
        let f = good("window", cfg);
        let opts = f.opts.clone().with_iova_window(0x8_0000..0x200_2000);
        let dev = VfioDevice::open(&bdf(), &opts).unwrap();
        let mapper = dev.mapper();
        // [0x8_0000, 0x10_0000) and [0x200_0000, 0x200_2000).
        assert_eq!(mapper.free_iova(), 0x8_0000 + 0x2000);
    }

    #[test]
    fn noiommu_mapping_counts_repeated_physical_addresses() {
        let cfg = MockConfig {
            iommu: None,
            ..MockConfig::default()
        };
        let f = fixture("noiommu-map", &[func(BDF, "vfio-pci", 3)], true, cfg);
        // SAFETY: the mock performs no DMA.
        let opts = unsafe { f.opts.clone().i_understand_noiommu() };
        let dev = VfioDevice::open(&bdf(), &opts).unwrap();
        let mapper = dev.mapper();
        f.vfio.take_calls();
        let mem = pages(1);
        let va = mem.as_ptr() as usize;
        // SAFETY: the mock records the calls and never touches the memory.
        let a = unsafe { mapper.map(va as *mut u8, 64) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { mapper.map(va as *mut u8, 64) }.unwrap();
        assert_eq!((a, b), (va as u64, va as u64));
        assert_eq!(mapper.mappings(), 1);
        let calls = f.vfio.take_calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert!(matches!(calls[0], Call::Mlock { .. }));
        assert_eq!(calls[1], Call::PhysAddr { vaddr: va, len: 64 });
        mapper.unmap(a, 64).unwrap();
        assert_eq!(mapper.mappings(), 1, "still used once");
        mapper.unmap(a, 64).unwrap();
        assert_eq!(mapper.mappings(), 0);
        assert!(f.vfio.calls().is_empty(), "no IOMMU call in no-IOMMU mode");
        f.vfio.fail_next(Op::Mlock, libc::EPERM);
        // SAFETY: as above.
        let e = unsafe { mapper.map(va as *mut u8, 64) }.unwrap_err();
        assert!(e.to_string().contains("ulimit -l"), "{e}");
    }

    #[test]
    fn irq_setup_checks_vectors_and_names_the_fix() {
        let cfg = MockConfig {
            irqs: [1, 1, 4],
            ..MockConfig::default()
        };
        let f = good("irq", cfg);
        let dev = VfioDevice::open(&bdf(), &f.opts).unwrap();
        f.vfio.take_calls();
        assert_eq!(dev.irq_count(IrqKind::MsiX), 4);
        for want in [0, 5] {
            let e = dev.enable_irqs(IrqKind::MsiX, want).unwrap_err();
            assert!(
                matches!(e, VfioError::Vectors { have: 4, .. }),
                "{want}: {e}"
            );
        }
        assert!(f.vfio.calls().is_empty());
        let fds = dev.enable_irqs(IrqKind::MsiX, 2).unwrap();
        assert_eq!(fds.len(), 2);
        f.vfio.fail_next(Op::SetIrqs, libc::EINVAL);
        let e = dev.enable_irqs(IrqKind::Msi, 1).unwrap_err();
        assert!(e.to_string().contains("intremap=on"), "{e}");
        assert_eq!(errno(&e), Some(libc::EINVAL));
        dev.disable_irqs(IrqKind::MsiX).unwrap();
        assert_eq!(
            f.vfio.take_calls(),
            [
                Call::SetIrqs {
                    kind: IrqKind::MsiX,
                    fds: 2
                },
                Call::SetIrqs {
                    kind: IrqKind::Msi,
                    fds: 1
                },
                Call::SetIrqs {
                    kind: IrqKind::MsiX,
                    fds: 0
                }
            ]
        );
    }

    #[test]
    fn config_space_bus_master_and_reset() {
        let f = good("config", MockConfig::default());
        let dev = VfioDevice::open(&bdf(), &f.opts).unwrap();
        f.vfio
            .set_config(pci::COMMAND as usize, &0x0100u16.to_le_bytes());
        f.vfio.take_calls();
        dev.enable_bus_master(true).unwrap();
        let want = 0x0100 | pci::COMMAND_MEMORY | pci::COMMAND_MASTER | pci::COMMAND_INTX_DISABLE;
        assert_eq!(
            f.vfio.take_calls(),
            [
                Call::ConfigRead {
                    off: pci::COMMAND,
                    len: 2
                },
                Call::ConfigWrite {
                    off: pci::COMMAND,
                    bytes: want.to_le_bytes().to_vec()
                }
            ],
            "one 16-bit write: the status register beside it is untouched"
        );
        dev.disable_bus_master().unwrap();
        assert_eq!(
            f.vfio.config(pci::COMMAND as usize, 2),
            (want & !pci::COMMAND_MASTER).to_le_bytes()
        );
        f.vfio.fail_next(Op::ConfigRead, libc::EIO);
        let e = dev.config_read32(0).unwrap_err();
        assert!(e.to_string().contains("config read failed"), "{e}");
        assert_eq!(errno(&e), Some(libc::EIO));
        // Through the BAR's RegisterAccess, a failed config read is all ones, not a panic.
        let bar = dev.map_bar(0).unwrap();
        f.vfio.set_config(0x180, &0x55u32.to_le_bytes());
        assert_eq!(bar.config_read32(0x180), 0x55);
        f.vfio.fail_next(Op::ConfigRead, libc::EIO);
        assert_eq!(bar.config_read32(0x180), u32::MAX);
        f.vfio.fail_next(Op::Reset, libc::ENOTTY);
        let e = dev.reset().unwrap_err();
        assert!(e.to_string().contains("may not support FLR"), "{e}");
        dev.reset().unwrap();
    }
}
