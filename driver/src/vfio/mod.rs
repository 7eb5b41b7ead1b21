//! A generic VFIO layer for user-space PCI drivers: I/OAT here, QEMU's `edu` device in the
//! VM test.
//!
//! - [`VfioDevice::open`] runs the sysfs pre-flight checks ([`crate::discover`]) before it
//!   touches anything, then opens the function through the crate `pci-driver` (type1 IOMMU
//!   container), or through raw ioctls for a no-IOMMU group (which `pci-driver` does not know).
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

pub mod ioat_irq;
pub mod irq;
pub mod pagemap;
mod sys;

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::Mutex;
use pci_driver::backends::vfio::VfioPciDevice;
use pci_driver::device::PciDevice;
use pci_driver::regions::{MappedOwningPciRegion, PciRegion, Permissions};
use thiserror::Error;

use crate::discover::{Bdf, Expect, Host, Preflight, PreflightError, PreflightOptions};
use crate::dma::{DmaMapper, IovaAllocator, MapError};
use crate::regs::{pci, RegisterAccess};

pub use irq::EventFd;

/// Errors from opening and driving a VFIO device. Messages are one line and name the fix.
#[derive(Debug, Error)]
pub enum VfioError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("{bdf}: {what} failed: {msg}; {fix}")]
    Os {
        bdf: Bdf,
        what: &'static str,
        msg: String,
        fix: &'static str,
    },
    #[error("{bdf}: BAR{index} cannot be mapped: {why}")]
    Bar { bdf: Bdf, index: usize, why: String },
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

impl IrqKind {
    fn index(self) -> u32 {
        match self {
            IrqKind::Intx => sys::VFIO_PCI_INTX_IRQ_INDEX,
            IrqKind::Msi => sys::VFIO_PCI_MSI_IRQ_INDEX,
            IrqKind::MsiX => sys::VFIO_PCI_MSIX_IRQ_INDEX,
        }
    }
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

enum Backend {
    Iommu(VfioPciDevice),
    NoIommu(sys::RawDevice),
}

struct Inner {
    bdf: Bdf,
    preflight: Preflight,
    backend: Backend,
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
                msg: e.to_string(),
                fix,
            }
        };
        let backend = if pf.noiommu {
            tracing::warn!(
                bdf = %bdf,
                "NO-IOMMU MODE: {} is opened without IOMMU protection; the device can DMA to any physical address. Any driver bug can corrupt arbitrary memory.",
                bdf
            );
            Backend::NoIommu(
                sys::RawDevice::open_noiommu(
                    &opts.host.vfio_dir(),
                    &pf.group_node,
                    &bdf.to_string(),
                )
                .map_err(os(
                    "opening the no-IOMMU VFIO group",
                    "load vfio with enable_unsafe_noiommu_mode=1 and make sure no other process holds the group",
                ))?,
            )
        } else {
            Backend::Iommu(VfioPciDevice::open(&pf.sysfs_path).map_err(os(
                "opening the VFIO group/container",
                "make sure no other process holds the group and the kernel supports VFIO type1v2 (vfio_iommu_type1)",
            ))?)
        };
        Ok(VfioDevice {
            inner: Arc::new(Inner {
                bdf: *bdf,
                preflight: pf,
                backend,
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
        matches!(self.inner.backend, Backend::NoIommu(_))
    }

    fn os_err(&self, what: &'static str, fix: &'static str, e: std::io::Error) -> VfioError {
        VfioError::Os {
            bdf: self.inner.bdf,
            what,
            msg: e.to_string(),
            fix,
        }
    }

    fn config_rw(&self, off: u16, buf: &mut [u8], write: bool) -> std::io::Result<()> {
        match &self.inner.backend {
            Backend::Iommu(d) => {
                let c = d.config();
                let o = off as u64;
                match (buf.len(), write) {
                    (1, false) => buf[0] = c.read_u8(o)?,
                    (2, false) => buf.copy_from_slice(&c.read_le_u16(o)?.to_le_bytes()),
                    (4, false) => buf.copy_from_slice(&c.read_le_u32(o)?.to_le_bytes()),
                    (1, true) => c.write_u8(o, buf[0])?,
                    (2, true) => c.write_le_u16(o, u16::from_le_bytes([buf[0], buf[1]]))?,
                    (4, true) => {
                        c.write_le_u32(o, u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]))?
                    }
                    _ => return Err(std::io::Error::other("bad config access width")),
                }
                Ok(())
            }
            Backend::NoIommu(r) => {
                let base = r.config_offset()?;
                if write {
                    r.device.write_all_at(buf, base + off as u64)
                } else {
                    r.device.read_exact_at(buf, base + off as u64)
                }
            }
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
        let r = match &self.inner.backend {
            Backend::Iommu(d) => d.reset(),
            Backend::NoIommu(r) => r.reset(),
        };
        r.map_err(|e| {
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
        let mapping = match &self.inner.backend {
            Backend::Iommu(d) => {
                let bar = d
                    .bar(index)
                    .ok_or_else(|| bar_err("the BAR does not exist".into()))?;
                if !bar.is_mappable() {
                    return Err(bar_err(
                        "VFIO does not allow mmap of this BAR (kernel too old for mappable MSI-X BARs?)"
                            .into(),
                    ));
                }
                // Kernels without mappable MSI-X pages refuse an mmap that covers the MSI-X
                // table (I/OAT keeps it at BAR0+0x1000); the registers live in the first page.
                let m = match bar.map(.., Permissions::ReadWrite) {
                    Ok(m) => m,
                    Err(e) if bar.len() > FIRST_PAGE => {
                        tracing::debug!(
                            "full BAR{index} mmap refused ({e}); mapping its first page"
                        );
                        bar.map(..FIRST_PAGE, Permissions::ReadWrite)
                            .map_err(|e| bar_err(e.to_string()))?
                    }
                    Err(e) => return Err(bar_err(e.to_string())),
                };
                BarMapping::Pci(m)
            }
            Backend::NoIommu(r) => {
                let ri = r
                    .regions
                    .get(index)
                    .copied()
                    .filter(|ri| ri.size > 0)
                    .ok_or_else(|| bar_err("the BAR does not exist".into()))?;
                if ri.flags & sys::VFIO_REGION_INFO_FLAG_MMAP == 0 {
                    return Err(bar_err("VFIO does not allow mmap of this BAR".into()));
                }
                let mut len = ri.size as usize;
                let map = |len: usize| {
                    // SAFETY: mapping (part of) a device region VFIO reported, at its offset in
                    // the device fd; the result is checked and unmapped in Drop.
                    unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED,
                            r.device.as_raw_fd(),
                            ri.offset as libc::off_t,
                        )
                    }
                };
                let mut p = map(len);
                if p == libc::MAP_FAILED && len as u64 > FIRST_PAGE {
                    // As above: the MSI-X table page may not be mappable.
                    len = FIRST_PAGE as usize;
                    p = map(len);
                }
                if p == libc::MAP_FAILED {
                    return Err(bar_err(std::io::Error::last_os_error().to_string()));
                }
                BarMapping::Raw {
                    ptr: p as *mut u8,
                    len,
                }
            }
        };
        let (ptr, len) = match &mapping {
            BarMapping::Pci(m) => (m.as_mut_ptr(), m.len()),
            BarMapping::Raw { ptr, len } => (*ptr, *len),
        };
        Ok(Arc::new(VfioBar {
            dev: self.clone(),
            index,
            ptr,
            len,
            _mapping: mapping,
        }))
    }

    /// How many vectors of `kind` the device offers.
    pub fn irq_count(&self, kind: IrqKind) -> usize {
        match &self.inner.backend {
            Backend::Iommu(d) => {
                let i = d.interrupts();
                match kind {
                    IrqKind::Intx => i.intx().max(),
                    IrqKind::Msi => i.msi().max(),
                    IrqKind::MsiX => i.msi_x().max(),
                }
            }
            Backend::NoIommu(r) => r.irq_counts[kind.index() as usize] as usize,
        }
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
        let r = match &self.inner.backend {
            Backend::Iommu(d) => {
                let i = d.interrupts();
                match kind {
                    IrqKind::Intx => i.intx().enable(&raw),
                    IrqKind::Msi => i.msi().enable(&raw),
                    IrqKind::MsiX => i.msi_x().enable(&raw),
                }
            }
            Backend::NoIommu(r) => r.set_irqs(kind.index(), &raw),
        };
        r.map_err(|e| {
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
        let r = match &self.inner.backend {
            Backend::Iommu(d) => {
                let i = d.interrupts();
                match kind {
                    IrqKind::Intx => i.intx().disable(),
                    IrqKind::Msi => i.msi().disable(),
                    IrqKind::MsiX => i.msi_x().disable(),
                }
            }
            Backend::NoIommu(r) => r.set_irqs(kind.index(), &[]),
        };
        r.map_err(|e| self.os_err("VFIO_DEVICE_SET_IRQS (disable)", "check dmesg", e))
    }

    /// A DMA mapper over this device's container.
    pub fn mapper(&self) -> Arc<VfioMapper> {
        let (windows, page) = match &self.inner.backend {
            Backend::Iommu(d) => {
                let io = d.iommu();
                let w = &self.inner.iova_window;
                let windows: Vec<(u64, u64)> = io
                    .valid_iova_ranges()
                    .iter()
                    .filter_map(|r| {
                        let s = r.start.max(w.start);
                        let e = r.end.min(w.end);
                        (s < e).then(|| (s, e - s))
                    })
                    .collect();
                (windows, io.alignment().max(4096))
            }
            Backend::NoIommu(_) => (Vec::new(), pagemap::page_size()),
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
const FIRST_PAGE: u64 = 0x1000;

enum BarMapping {
    Pci(MappedOwningPciRegion),
    Raw { ptr: *mut u8, len: usize },
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        if let BarMapping::Raw { ptr, len } = *self {
            // SAFETY: `ptr`/`len` come from our successful mmap and are unmapped once.
            unsafe { libc::munmap(ptr as *mut libc::c_void, len) };
        }
    }
}

/// A mapped BAR: volatile MMIO through [`RegisterAccess`]. Config-space calls go to the
/// device's config region. Out-of-range or misaligned accesses are refused (reads return all
/// ones, like a PCI master abort) and logged; they never touch memory outside the BAR.
pub struct VfioBar {
    dev: VfioDevice,
    index: usize,
    ptr: *mut u8,
    len: usize,
    _mapping: BarMapping,
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

    fn os(what: &'static str, e: impl std::fmt::Display) -> MapError {
        MapError::Os {
            what,
            msg: e.to_string(),
        }
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
        let end = (va
            .checked_add(len)
            .ok_or_else(|| Self::os("map", "length overflows"))?
            + ps
            - 1)
            & !(ps - 1);
        let span = end - base;
        let mut st = self.state.lock();
        match &self.dev.inner.backend {
            Backend::Iommu(d) => {
                let base_iova = st.space.alloc(span as u64, ps as u64)?;
                // SAFETY: the caller guarantees the memory stays allocated and unaliased by
                // Rust references until unmap (DmaMapper::map contract); `base..base+span`
                // covers exactly the pages holding it.
                let r = unsafe {
                    d.iommu()
                        .map(base_iova, span, base as *const u8, Permissions::ReadWrite)
                };
                if let Err(e) = r {
                    let _ = st.space.free(base_iova, span as u64);
                    return Err(Self::os("VFIO_IOMMU_MAP_DMA (raise RLIMIT_MEMLOCK?)", e));
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
            }
            Backend::NoIommu(_) => {
                // SAFETY: mlock only pins the caller's pages; it has no memory-safety effect.
                if unsafe { libc::mlock(base as *const libc::c_void, span) } != 0 {
                    return Err(Self::os(
                        "mlock (raise RLIMIT_MEMLOCK: ulimit -l unlimited)",
                        std::io::Error::last_os_error(),
                    ));
                }
                let pa = pagemap::phys_contiguous(va, len)
                    .map_err(|e| Self::os("no-IOMMU translation", e))?;
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
        let m = st.maps.remove(&iova).expect("present");
        if let Backend::Iommu(d) = &self.dev.inner.backend {
            d.iommu()
                .unmap(m.base_iova, m.span)
                .map_err(|e| Self::os("VFIO_IOMMU_UNMAP_DMA", e))?;
            st.space.free(m.base_iova, m.span as u64)?;
        }
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
