//! DMA-able memory, IOVA allocation and the mapper trait.
//!
//! A [`DmaMapper`] makes host memory visible to the device at an IOVA. Two implementations: the
//! VFIO IOMMU (type1 `VFIO_IOMMU_MAP_DMA`, or physical addresses in no-IOMMU mode) and the
//! device model's translation table. The mapper chooses the IOVA (from its own
//! [`IovaAllocator`], or the physical address in no-IOMMU mode), so callers never guess.

use thiserror::Error;

/// Errors from mapping and unmapping.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MapError {
    #[error("IOVA space exhausted: no free range of {len} bytes (alignment {align})")]
    IovaExhausted { len: u64, align: u64 },
    #[error("address {vaddr:#x} or length {len} is not aligned to {align} bytes")]
    Misaligned { vaddr: u64, len: u64, align: u64 },
    #[error("IOVA range {iova:#x}+{len} is not mapped")]
    NotMapped { iova: u64, len: u64 },
    #[error("IOVA range {iova:#x}+{len} is still referenced by {refs} in-flight descriptor(s); wait for their completion before unmapping")]
    Busy { iova: u64, len: u64, refs: u64 },
    #[error("{what}: length {len} overflows the address space; map less")]
    TooLong { what: &'static str, len: u64 },
    /// The OS refused (mmap, VFIO_IOMMU_MAP_DMA, mlock, pagemap ...). `hint` names the fix.
    #[error("{what}: {source}{hint}")]
    Os {
        what: &'static str,
        #[source]
        source: crate::error::OsError,
        hint: &'static str,
    },
}

impl MapError {
    /// An OS error with the operation that failed and a hint (`""` or `"; do this"`).
    pub fn os(what: &'static str, e: std::io::Error, hint: &'static str) -> MapError {
        MapError::Os {
            what,
            source: e.into(),
            hint,
        }
    }
}

/// Makes host memory addressable by the device.
pub trait DmaMapper: Send + Sync {
    /// Maps `len` bytes at host address `vaddr` and returns the IOVA the device must use.
    ///
    /// # Safety
    /// The memory must stay allocated, and must not be reached through Rust references while
    /// the device may access it, until [`DmaMapper::unmap`] has returned for this IOVA.
    unsafe fn map(&self, vaddr: *mut u8, len: usize) -> Result<u64, MapError>;

    /// Removes a mapping made by [`DmaMapper::map`].
    fn unmap(&self, iova: u64, len: usize) -> Result<(), MapError>;

    /// Granularity of mappings (IOMMU page size).
    fn page_size(&self) -> usize {
        4096
    }
}

impl<T: DmaMapper + ?Sized> DmaMapper for std::sync::Arc<T> {
    unsafe fn map(&self, vaddr: *mut u8, len: usize) -> Result<u64, MapError> {
        // SAFETY: forwarded; the caller upholds the contract of `DmaMapper::map`.
        unsafe { (**self).map(vaddr, len) }
    }
    fn unmap(&self, iova: u64, len: usize) -> Result<(), MapError> {
        (**self).unmap(iova, len)
    }
    fn page_size(&self) -> usize {
        (**self).page_size()
    }
}

// ---------------------------------------------------------------------------------------------
// IOVA allocation
// ---------------------------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// First-fit allocator of IOVA ranges, for mappers that choose IOVAs themselves (the VFIO type1
/// IOMMU, the model's translation table).
///
/// Every range handed out is a multiple of the page size and aligned to at least a page. Freed
/// ranges are merged with their neighbours. Not thread-safe by itself: mappers keep it behind
/// their own lock.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    page: u64,
    /// Free ranges: start -> length. Non-overlapping, non-adjacent (merged on free).
    free: BTreeMap<u64, u64>,
    /// Allocated ranges: start -> length, so that `free` can check what it is given.
    used: BTreeMap<u64, u64>,
}

impl IovaAllocator {
    /// An allocator over the given `(start, len)` ranges (for example VFIO's valid IOVA ranges).
    /// Ranges are trimmed inwards to page boundaries; `page` must be a power of two.
    pub fn new(ranges: &[(u64, u64)], page: u64) -> Result<Self, MapError> {
        if !page.is_power_of_two() {
            return Err(MapError::Misaligned {
                vaddr: 0,
                len: page,
                align: page,
            });
        }
        let mut a = IovaAllocator {
            page,
            free: BTreeMap::new(),
            used: BTreeMap::new(),
        };
        for &(start, len) in ranges {
            let s = start.checked_add(page - 1).map(|v| v & !(page - 1));
            let e = start.checked_add(len).map(|v| v & !(page - 1));
            if let (Some(s), Some(e)) = (s, e) {
                if e > s {
                    a.insert_free(s, e - s);
                }
            }
        }
        Ok(a)
    }

    /// The page size every allocation is rounded to.
    pub fn page_size(&self) -> u64 {
        self.page
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    /// Allocates `len` bytes (rounded up to the page size) aligned to `align` (at least a page).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, MapError> {
        let align = align.max(self.page);
        if !align.is_power_of_two() || len == 0 {
            return Err(MapError::Misaligned {
                vaddr: 0,
                len,
                align,
            });
        }
        let len = len
            .checked_add(self.page - 1)
            .ok_or(MapError::IovaExhausted { len, align })?
            & !(self.page - 1);
        let mut found = None;
        for (&start, &flen) in &self.free {
            let Some(a) = start.checked_add(align - 1).map(|v| v & !(align - 1)) else {
                continue;
            };
            let pad = a - start;
            if flen >= pad && flen - pad >= len {
                found = Some((start, flen, a));
                break;
            }
        }
        let (start, flen, a) = found.ok_or(MapError::IovaExhausted { len, align })?;
        self.free.remove(&start);
        if a > start {
            self.free.insert(start, a - start);
        }
        let end = a + len;
        let fend = start + flen;
        if fend > end {
            self.free.insert(end, fend - end);
        }
        self.used.insert(a, len);
        Ok(a)
    }

    /// Returns a range obtained from [`IovaAllocator::alloc`].
    pub fn free(&mut self, iova: u64, len: u64) -> Result<(), MapError> {
        let rounded = len.saturating_add(self.page - 1) & !(self.page - 1);
        match self.used.get(&iova) {
            Some(&l) if l == rounded || len == 0 => {
                self.used.remove(&iova);
                self.insert_free(iova, l);
                Ok(())
            }
            _ => Err(MapError::NotMapped { iova, len }),
        }
    }

    fn insert_free(&mut self, mut start: u64, mut len: u64) {
        // Merge with the predecessor if adjacent (or overlapping, for sloppy input ranges).
        if let Some((&ps, &pl)) = self.free.range(..=start).next_back() {
            if ps + pl >= start {
                let end = (ps + pl).max(start + len);
                self.free.remove(&ps);
                start = ps;
                len = end - ps;
            }
        }
        // Merge with successors.
        while let Some((&ns, &nl)) = self.free.range(start..).next() {
            if ns > start + len {
                break;
            }
            self.free.remove(&ns);
            len = (ns + nl).max(start + len) - start;
        }
        self.free.insert(start, len);
    }
}

// ---------------------------------------------------------------------------------------------
// DMA-able host memory
// ---------------------------------------------------------------------------------------------

/// 2 MiB, the huge page size we ask for.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;
/// The small page size.
pub const PAGE_SIZE: usize = 4096;

/// Whether [`DmaBuffer::alloc`] uses hugetlb pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Try 2 MiB hugetlb pages; fall back to normal pages if none are reserved.
    #[default]
    Prefer,
    /// Normal 4 KiB pages only.
    Never,
    /// Fail if no 2 MiB hugetlb page can be had.
    Require,
}

/// Page-aligned anonymous memory for the device, owned by the process.
///
/// The memory is reached only through raw pointers ([`DmaBuffer::as_ptr`]) and the copying
/// helpers; no Rust reference to it is ever handed out, because once it is mapped for DMA the
/// device may write it at any time.
pub struct DmaBuffer {
    map: memmap2::MmapRaw,
    huge: bool,
    locked: bool,
}

// SAFETY: the buffer is plain memory reached only through raw pointers; moving the owner to
// another thread is fine, and shared access only copies bytes in and out (see the helpers).
unsafe impl Send for DmaBuffer {}
// SAFETY: as above; `&DmaBuffer` exposes no references into the memory.
unsafe impl Sync for DmaBuffer {}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("ptr", &self.map.as_ptr())
            .field("len", &self.map.len())
            .field("huge", &self.huge)
            .field("locked", &self.locked)
            .finish()
    }
}

impl DmaBuffer {
    /// Allocates at least `len` bytes of zeroed memory, preferring 2 MiB huge pages.
    pub fn new(len: usize) -> Result<Self, MapError> {
        Self::alloc(len, HugePages::Prefer)
    }

    /// Allocates at least `len` bytes of zeroed memory. The length is rounded up to the page
    /// size used (4 KiB, or 2 MiB with huge pages). The memory is `mlock`ed when the limit
    /// allows (best effort: an unlocked page can still be swapped out, which VFIO prevents by
    /// pinning anyway).
    pub fn alloc(len: usize, huge: HugePages) -> Result<Self, MapError> {
        if len == 0 {
            return Err(MapError::Misaligned {
                vaddr: 0,
                len: 0,
                align: PAGE_SIZE as u64,
            });
        }
        let round = |l: usize, p: usize| l.checked_add(p - 1).map(|v| v & !(p - 1));
        if huge != HugePages::Never {
            let hl = round(len, HUGE_PAGE_SIZE).ok_or(MapError::TooLong {
                what: "allocating DMA memory",
                len: len as u64,
            })?;
            match memmap2::MmapOptions::new()
                .len(hl)
                .huge(Some(21))
                .populate()
                .map_anon()
            {
                Ok(m) => return Ok(Self::finish(m.into(), true)),
                Err(e) if huge == HugePages::Require => {
                    return Err(MapError::os(
                        "allocating 2 MiB huge pages",
                        e,
                        "; reserve some with `echo 64 > /proc/sys/vm/nr_hugepages` or allow \
                         normal pages (HugePages::Prefer)",
                    ))
                }
                Err(_) => {}
            }
        }
        let l = round(len, PAGE_SIZE).ok_or(MapError::TooLong {
            what: "allocating DMA memory",
            len: len as u64,
        })?;
        let m = memmap2::MmapOptions::new()
            .len(l)
            .populate()
            .map_anon()
            .map_err(|e| {
                MapError::os(
                    "allocating DMA memory (anonymous mmap)",
                    e,
                    "; lower the buffer or ring sizes",
                )
            })?;
        Ok(Self::finish(m.into(), false))
    }

    fn finish(map: memmap2::MmapRaw, huge: bool) -> Self {
        let locked = map.lock().is_ok();
        if !locked {
            tracing::debug!(
                len = map.len(),
                "mlock of DMA memory failed (RLIMIT_MEMLOCK?)"
            );
        }
        DmaBuffer { map, huge, locked }
    }

    /// Start of the memory.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length in bytes (a multiple of the page size used).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: buffers have at least one page.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Whether the memory sits on 2 MiB huge pages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }

    /// Whether `mlock` succeeded.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

// ---------------------------------------------------------------------------------------------
// Mapped regions and pins
// ---------------------------------------------------------------------------------------------

/// What memory a region maps.
enum Backing {
    Owned(DmaBuffer),
    /// Memory owned by someone else (an AF_XDP UMEM, an application allocation); the creator of
    /// the region promised it outlives the mapping.
    External {
        ptr: *mut u8,
        len: usize,
    },
}

impl Backing {
    fn ptr(&self) -> *mut u8 {
        match self {
            Backing::Owned(b) => b.as_ptr(),
            Backing::External { ptr, .. } => *ptr,
        }
    }
    fn len(&self) -> usize {
        match self {
            Backing::Owned(b) => b.len(),
            Backing::External { len, .. } => *len,
        }
    }
}

/// The shared part of a region: lives until the handle and every pin are gone, then unmaps.
struct RegionInner {
    backing: Backing,
    iova: u64,
    mapper: Arc<dyn DmaMapper>,
    pins: AtomicU64,
    /// Set once unmapped explicitly (by [`DmaRegion::unmap`]), so drop does not unmap twice.
    unmapped: std::sync::atomic::AtomicBool,
}

// SAFETY: `backing` is raw memory accessed only through raw pointers (copy helpers, volatile or
// atomic accesses); the pointer itself may move between threads.
unsafe impl Send for RegionInner {}
// SAFETY: as above; shared access never creates references into the memory.
unsafe impl Sync for RegionInner {}

impl Drop for RegionInner {
    fn drop(&mut self) {
        // The last handle and the last pin are gone: no descriptor references the memory any
        // more, so unmapping cannot pull it from under the device.
        if !self.unmapped.load(Ordering::Acquire) {
            if let Err(e) = self.mapper.unmap(self.iova, self.backing.len()) {
                tracing::warn!(iova = self.iova, error = %e, "unmapping a DMA region failed");
            }
        }
    }
}

/// Host memory mapped for the device at an IOVA through a [`DmaMapper`].
///
/// Map once, use for many operations. Operations submitted through the channel's region-based
/// calls ([`crate::channel::Channel::copy_regions`], [`crate::channel::Channel::fill_region`])
/// hold a [`RegionPin`] until they are reported; while any pin exists [`DmaRegion::unmap`]
/// returns [`MapError::Busy`], and dropping the handle defers the unmap to the last pin's drop.
/// So the memory is never unmapped (or freed) under the device.
pub struct DmaRegion {
    inner: Arc<RegionInner>,
}

impl std::fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegion")
            .field("iova", &format_args!("{:#x}", self.inner.iova))
            .field("len", &self.len())
            .field("pins", &self.pins())
            .finish()
    }
}

impl DmaRegion {
    /// Allocates `len` bytes of DMA memory ([`DmaBuffer::new`]) and maps it.
    pub fn alloc(mapper: Arc<dyn DmaMapper>, len: usize) -> Result<Self, MapError> {
        Self::alloc_with(mapper, len, HugePages::Prefer)
    }

    /// Allocates with an explicit huge-page policy and maps it.
    pub fn alloc_with(
        mapper: Arc<dyn DmaMapper>,
        len: usize,
        huge: HugePages,
    ) -> Result<Self, MapError> {
        let buf = DmaBuffer::alloc(len, huge)?;
        Self::map_buffer(mapper, buf)
    }

    /// Maps a buffer this process allocated.
    pub fn map_buffer(mapper: Arc<dyn DmaMapper>, buf: DmaBuffer) -> Result<Self, MapError> {
        // SAFETY: the buffer is owned by the region and freed only after the unmap (RegionInner
        // drop order: the unmap runs in `drop`, then the fields, including the buffer, drop).
        // No Rust reference into it exists: DmaBuffer hands out raw pointers only.
        let iova = unsafe { mapper.map(buf.as_ptr(), buf.len())? };
        Ok(DmaRegion {
            inner: Arc::new(RegionInner {
                backing: Backing::Owned(buf),
                iova,
                mapper,
                pins: AtomicU64::new(0),
                unmapped: false.into(),
            }),
        })
    }

    /// Registers memory owned elsewhere (an application buffer, an AF_XDP UMEM): maps it once.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay allocated until this region and every [`RegionPin`] of it are
    /// dropped (or [`DmaRegion::unmap`] succeeded), and must not be accessed through Rust
    /// references while operations on it are in flight. `ptr` and `len` must satisfy the
    /// mapper's page alignment.
    pub unsafe fn register(
        mapper: Arc<dyn DmaMapper>,
        ptr: *mut u8,
        len: usize,
    ) -> Result<Self, MapError> {
        let page = mapper.page_size().max(1) as u64;
        if (ptr as u64) % page != 0 || len as u64 % page != 0 || len == 0 {
            return Err(MapError::Misaligned {
                vaddr: ptr as u64,
                len: len as u64,
                align: page,
            });
        }
        // SAFETY: forwarded from this function's contract.
        let iova = unsafe { mapper.map(ptr, len)? };
        Ok(DmaRegion {
            inner: Arc::new(RegionInner {
                backing: Backing::External { ptr, len },
                iova,
                mapper,
                pins: AtomicU64::new(0),
                unmapped: false.into(),
            }),
        })
    }

    /// The IOVA of the first byte.
    pub fn iova(&self) -> u64 {
        self.inner.iova
    }

    /// The IOVA of byte `off`, if inside the region.
    pub fn iova_at(&self, off: usize) -> Option<u64> {
        (off < self.len()).then(|| self.inner.iova + off as u64)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.inner.backing.len()
    }

    /// Never true for a mapped region.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Host address of the first byte. Access it only through raw pointers.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.backing.ptr()
    }

    /// Whether the memory sits on 2 MiB pages.
    pub fn is_huge(&self) -> bool {
        matches!(&self.inner.backing, Backing::Owned(b) if b.is_huge())
    }

    /// How many in-flight operations reference the region.
    pub fn pins(&self) -> u64 {
        self.inner.pins.load(Ordering::Acquire)
    }

    /// Takes a pin: the region stays mapped while it lives.
    pub fn pin(&self) -> RegionPin {
        self.inner.pins.fetch_add(1, Ordering::AcqRel);
        RegionPin {
            inner: self.inner.clone(),
        }
    }

    fn check(&self, off: usize, len: usize) -> Result<(), MapError> {
        match off.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(MapError::NotMapped {
                iova: self.inner.iova.wrapping_add(off as u64),
                len: len as u64,
            }),
        }
    }

    /// [`Self::check`] for one 8-byte word, which must also be 8-byte aligned.
    fn check_u64(&self, off: usize) -> Result<(), MapError> {
        self.check(off, 8)?;
        if off % 8 != 0 {
            return Err(MapError::Misaligned {
                vaddr: off as u64,
                len: 8,
                align: 8,
            });
        }
        Ok(())
    }

    /// Copies `src` into the region at `off`. Do not call while an operation writing that range
    /// is in flight (the bytes would race with the device).
    pub fn write(&self, off: usize, src: &[u8]) -> Result<(), MapError> {
        self.check(off, src.len())?;
        // SAFETY: in bounds (checked); `src` is ordinary memory and cannot overlap the region
        // (no reference into the region is ever created); raw-pointer copy, no reference made.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr().add(off), src.len());
        }
        Ok(())
    }

    /// Copies bytes at `off` out of the region into `dst`.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<(), MapError> {
        self.check(off, dst.len())?;
        // SAFETY: in bounds (checked); no overlap (as in `write`); raw-pointer copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(off), dst.as_mut_ptr(), dst.len());
        }
        Ok(())
    }

    /// Copies `len` bytes at `off` out into a new vector.
    pub fn to_vec(&self, off: usize, len: usize) -> Result<Vec<u8>, MapError> {
        let mut v = vec![0u8; len];
        self.read(off, &mut v)?;
        Ok(v)
    }

    /// Sets `len` bytes at `off` to `byte`.
    pub fn fill_bytes(&self, off: usize, len: usize, byte: u8) -> Result<(), MapError> {
        self.check(off, len)?;
        // SAFETY: in bounds (checked); raw-pointer write, no reference made.
        unsafe { std::ptr::write_bytes(self.as_ptr().add(off), byte, len) };
        Ok(())
    }

    /// Volatile read of the 8-byte-aligned little-endian word at `off` (for words the device
    /// writes, such as the completion writeback).
    pub fn read_u64_volatile(&self, off: usize) -> Result<u64, MapError> {
        self.check_u64(off)?;
        // SAFETY: in bounds and 8-byte aligned (the region start is page aligned); a volatile
        // read cannot be elided or merged, and no reference is created.
        let v = unsafe { std::ptr::read_volatile(self.as_ptr().add(off) as *const u64) };
        std::sync::atomic::fence(Ordering::Acquire);
        Ok(u64::from_le(v))
    }

    /// Volatile write of an 8-byte-aligned little-endian word at `off`.
    pub fn write_u64_volatile(&self, off: usize, val: u64) -> Result<(), MapError> {
        self.check_u64(off)?;
        // SAFETY: in bounds and aligned; volatile raw write, no reference created.
        unsafe { std::ptr::write_volatile(self.as_ptr().add(off) as *mut u64, val.to_le()) };
        Ok(())
    }

    /// Unmaps now. Fails with [`MapError::Busy`] (giving the region back) while in-flight
    /// operations reference it; wait for their completion and try again.
    pub fn unmap(self) -> Result<(), (Self, MapError)> {
        let refs = self.pins();
        if refs > 0 {
            let e = MapError::Busy {
                iova: self.iova(),
                len: self.len() as u64,
                refs,
            };
            return Err((self, e));
        }
        if let Err(e) = self.inner.mapper.unmap(self.inner.iova, self.len()) {
            return Err((self, e));
        }
        self.inner.unmapped.store(true, Ordering::Release);
        Ok(())
    }
}

/// Keeps a [`DmaRegion`] mapped (and its memory allocated) while an operation that references
/// it is in flight. Channels hold one per referenced region until the operation is reported.
pub struct RegionPin {
    inner: Arc<RegionInner>,
}

impl RegionPin {
    /// IOVA of the pinned region.
    pub fn iova(&self) -> u64 {
        self.inner.iova
    }
}

impl std::fmt::Debug for RegionPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegionPin({:#x})", self.inner.iova)
    }
}

impl Drop for RegionPin {
    fn drop(&mut self) {
        self.inner.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------------------------------------
// A simple mapper for tests and no-IOMMU experiments
// ---------------------------------------------------------------------------------------------

/// A mapper that only allocates IOVAs and remembers the translation, without any device: for
/// unit tests of region bookkeeping (the model brings its own mapper).
pub struct TableMapper {
    inner: parking_lot::Mutex<(IovaAllocator, Translations)>,
}

/// IOVA -> (host address, length).
type Translations = BTreeMap<u64, (u64, usize)>;

impl TableMapper {
    /// A mapper handing out IOVAs from `base..base+size`.
    pub fn new(base: u64, size: u64) -> Self {
        TableMapper {
            inner: parking_lot::Mutex::new((
                IovaAllocator::new(&[(base, size)], PAGE_SIZE as u64)
                    .expect("4096 is a power of two"),
                BTreeMap::new(),
            )),
        }
    }

    /// Host address for an IOVA, if mapped.
    pub fn translate(&self, iova: u64) -> Option<u64> {
        let g = self.inner.lock();
        let (&start, &(vaddr, len)) = g.1.range(..=iova).next_back()?;
        (iova - start < len as u64).then(|| vaddr + (iova - start))
    }

    /// Number of live mappings.
    pub fn mappings(&self) -> usize {
        self.inner.lock().1.len()
    }
}

impl DmaMapper for TableMapper {
    unsafe fn map(&self, vaddr: *mut u8, len: usize) -> Result<u64, MapError> {
        let mut g = self.inner.lock();
        let iova = g.0.alloc(len as u64, PAGE_SIZE as u64)?;
        g.1.insert(iova, (vaddr as u64, len));
        Ok(iova)
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<(), MapError> {
        let mut g = self.inner.lock();
        match g.1.get(&iova) {
            Some(&(_, l)) if l == len => {
                g.1.remove(&iova);
                g.0.free(iova, len as u64)
            }
            _ => Err(MapError::NotMapped {
                iova,
                len: len as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_first_fit_and_merge() {
        let mut a = IovaAllocator::new(&[(0x1000, 0x10000), (0x100_0000, 0x4000)], 4096).unwrap();
        let x = a.alloc(1, 4096).unwrap();
        assert_eq!(x, 0x1000);
        let y = a.alloc(0x2000, 0x4000).unwrap();
        assert_eq!(y % 0x4000, 0);
        let z = a.alloc(0x3000, 4096).unwrap();
        assert!(z != x && z != y);
        assert!(a.alloc(0x10000, 4096).is_err());
        a.free(x, 1).unwrap();
        a.free(y, 0x2000).unwrap();
        a.free(z, 0x3000).unwrap();
        assert_eq!(a.free_bytes(), 0x14000);
        // Fully merged again: the whole first range fits.
        assert_eq!(a.alloc(0x10000, 4096).unwrap(), 0x1000);
        assert!(a.free(0x1000, 4096).is_err(), "length must match");
        assert!(a.free(0x9999000, 4096).is_err());
    }

    #[test]
    fn iova_trims_unaligned_ranges() {
        let a = IovaAllocator::new(&[(0x1234, 0x3000)], 4096).unwrap();
        assert_eq!(a.free_bytes(), 0x2000);
    }

    #[test]
    fn buffer_is_zeroed_and_page_sized() {
        let b = DmaBuffer::alloc(100, HugePages::Never).unwrap();
        assert_eq!(b.len(), 4096);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        // SAFETY: in bounds of a live buffer.
        assert_eq!(unsafe { *b.as_ptr().add(99) }, 0);
    }

    #[test]
    fn region_pins_block_unmap() {
        let m = Arc::new(TableMapper::new(0x10_0000, 1 << 30));
        let mapper: Arc<dyn DmaMapper> = m.clone();
        let r = DmaRegion::alloc_with(mapper, 8192, HugePages::Never).unwrap();
        r.write(10, b"hello").unwrap();
        assert_eq!(r.to_vec(10, 5).unwrap(), b"hello");
        assert!(r.write(8190, b"xyz").is_err());
        assert_eq!(m.translate(r.iova() + 10), Some(r.as_ptr() as u64 + 10));
        let pin = r.pin();
        let (r, e) = r.unmap().unwrap_err();
        assert!(matches!(e, MapError::Busy { refs: 1, .. }), "{e}");
        drop(pin);
        r.unmap().unwrap();
        assert_eq!(m.mappings(), 0);
    }

    #[test]
    fn dropped_region_unmaps_after_last_pin() {
        let m = Arc::new(TableMapper::new(0x10_0000, 1 << 30));
        let r = DmaRegion::alloc_with(m.clone(), 4096, HugePages::Never).unwrap();
        let pin = r.pin();
        drop(r);
        assert_eq!(m.mappings(), 1, "still mapped while pinned");
        drop(pin);
        assert_eq!(m.mappings(), 0);
    }
}
