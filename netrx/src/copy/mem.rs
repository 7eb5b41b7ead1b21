//! Memory the copy path reads and writes: regions (UMEM frames, registered buffers) named by
//! [`RegionId`], byte positions named by [`MemRef`], and the registered buffer pool.
//!
//! A region is registered once (and DMA-mapped once, when an I/OAT engine is used), like io_uring
//! fixed buffers: NET_DMA pinned the user's pages on every `recvmsg`, we never do.
//!
//! Regions are reached only through raw pointers, never through Rust references, because a DMA
//! engine may write them concurrently. Who may touch which bytes when is decided by the ownership
//! bookkeeping in [`super::copier`]: a buffer is handed to the application only after every copy
//! into it has completed.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use thiserror::Error;

/// Index of a region in a [`Regions`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u32);

/// A byte position: region plus offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemRef {
    pub region: RegionId,
    pub offset: usize,
}

impl MemRef {
    pub fn new(region: RegionId, offset: usize) -> Self {
        Self { region, offset }
    }

    /// The position `n` bytes further on.
    pub fn plus(self, n: usize) -> Self {
        Self {
            region: self.region,
            offset: self.offset + n,
        }
    }
}

/// Errors from resolving memory references.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemError {
    #[error("region {0:?} is not registered; register it with Regions::add first")]
    UnknownRegion(RegionId),
    #[error("range {offset}+{len} is outside region {region:?} of {size} bytes; check the offset and length")]
    OutOfBounds {
        region: RegionId,
        offset: usize,
        len: usize,
        size: usize,
    },
    #[error("region {0:?} has no device address; map it for DMA (Regions::set_iova) before using a DMA engine")]
    NotMapped(RegionId),
    #[error("the destination in region {0:?} overlaps the source; post receive buffers outside the UMEM")]
    Overlap(RegionId),
}

/// Memory that can be registered as a region.
///
/// # Safety
/// `as_ptr()` must point to `len()` bytes that stay allocated, at the same address, for as long
/// as the value lives, and that are only ever accessed through raw pointers (no Rust references
/// held across accesses by the copy path).
pub unsafe trait RegionMemory: Send + Sync {
    fn as_ptr(&self) -> *mut u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`Regions::bytes`] on a region's memory held directly (`mem` is region `at.region`): a shell
/// that keeps the UMEM's `Arc` borrows received frames without borrowing the copier.
pub fn region_bytes(mem: &dyn RegionMemory, at: MemRef, len: usize) -> Result<&[u8], MemError> {
    let p = host_ptr(mem, at, len)?;
    // SAFETY: `len` bytes at `p` lie inside a live allocation that outlives the borrow of `mem`
    // (RegionMemory's contract); the caller owns the range, so nothing writes it meanwhile.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Checks that `len` bytes at `at.offset` lie inside `mem` (region `at.region`); returns the host
/// pointer of the first.
fn host_ptr(mem: &dyn RegionMemory, at: MemRef, len: usize) -> Result<*mut u8, MemError> {
    let size = mem.len();
    match at.offset.checked_add(len) {
        Some(end) if end <= size => {}
        _ => {
            return Err(MemError::OutOfBounds {
                region: at.region,
                offset: at.offset,
                len,
                size,
            })
        }
    }
    // SAFETY: offset + len <= size, so the pointer stays inside (or one past) the allocation.
    Ok(unsafe { mem.as_ptr().add(at.offset) })
}

/// Plain heap memory (page-aligned, zeroed), for tests and for the CPU engine.
pub struct HeapRegion {
    ptr: NonNull<u8>,
    len: usize,
}

impl HeapRegion {
    const ALIGN: usize = 4096;

    /// Allocates at least `len` zeroed bytes, rounded up to whole 4 KiB pages (so the region
    /// can be DMA-mapped); `len()` reports the rounded size.
    pub fn new(len: usize) -> Self {
        let len = len.max(1).div_ceil(Self::ALIGN) * Self::ALIGN;
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (at least one page).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, Self::ALIGN).expect("region size overflows the address space")
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

// SAFETY: the allocation is owned by the value and only reached through raw pointers.
unsafe impl Send for HeapRegion {}
// SAFETY: as above; concurrent access is coordinated by the copy path's ownership rules.
unsafe impl Sync for HeapRegion {}

// SAFETY: the allocation lives as long as the value and never moves.
unsafe impl RegionMemory for HeapRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl fmt::Debug for HeapRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapRegion")
            .field("len", &self.len)
            .finish()
    }
}

struct Entry {
    mem: Arc<dyn RegionMemory>,
    iova: Option<u64>,
    /// Whether DMA may write this region (a registered buffer) — plain slices stay CPU-only.
    dma_ok: bool,
}

/// The table of regions one poller thread copies between.
#[derive(Default)]
pub struct Regions {
    entries: Vec<Entry>,
}

impl fmt::Debug for Regions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.mem.len(), e.iova, e.dma_ok)))
            .finish()
    }
}

impl Regions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers memory; `dma_ok` says whether DMA may target it (set for frame memory and
    /// registered buffers, clear for plain application slices).
    pub fn add(&mut self, mem: Arc<dyn RegionMemory>, dma_ok: bool) -> RegionId {
        self.entries.push(Entry {
            mem,
            iova: None,
            dma_ok,
        });
        RegionId((self.entries.len() - 1) as u32)
    }

    /// Records the device address of byte 0 of a region (after mapping it once).
    pub fn set_iova(&mut self, id: RegionId, iova: u64) -> Result<(), MemError> {
        self.entry_mut(id)?.iova = Some(iova);
        Ok(())
    }

    /// Host address and length of a region (for mapping it).
    pub fn host_range(&self, id: RegionId) -> Result<(*mut u8, usize), MemError> {
        let e = self.entry(id)?;
        Ok((e.mem.as_ptr(), e.mem.len()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ids of all regions.
    pub fn ids(&self) -> impl Iterator<Item = RegionId> {
        (0..self.entries.len() as u32).map(RegionId)
    }

    /// The memory of a region (to keep it alive while it is mapped).
    pub fn memory(&self, id: RegionId) -> Result<Arc<dyn RegionMemory>, MemError> {
        Ok(self.entry(id)?.mem.clone())
    }

    /// Device address of a region's byte 0, once set.
    pub fn base_iova(&self, id: RegionId) -> Option<u64> {
        self.entry(id).ok().and_then(|e| e.iova)
    }

    /// Whether DMA may write/read the region.
    pub fn dma_ok(&self, id: RegionId) -> bool {
        self.entry(id).map(|e| e.dma_ok).unwrap_or(false)
    }

    fn entry(&self, id: RegionId) -> Result<&Entry, MemError> {
        self.entries
            .get(id.0 as usize)
            .ok_or(MemError::UnknownRegion(id))
    }

    fn entry_mut(&mut self, id: RegionId) -> Result<&mut Entry, MemError> {
        self.entries
            .get_mut(id.0 as usize)
            .ok_or(MemError::UnknownRegion(id))
    }

    /// Checks that `len` bytes at `at` lie inside a registered region; returns the host pointer.
    pub fn resolve(&self, at: MemRef, len: usize) -> Result<*mut u8, MemError> {
        host_ptr(&*self.entry(at.region)?.mem, at, len)
    }

    /// Device address of `len` bytes at `at`.
    pub fn iova(&self, at: MemRef, len: usize) -> Result<u64, MemError> {
        self.resolve(at, len)?;
        let base = self
            .entry(at.region)?
            .iova
            .ok_or(MemError::NotMapped(at.region))?;
        Ok(base + at.offset as u64)
    }

    /// CPU copy of `len` bytes (memmove semantics, so overlapping ranges are fine).
    pub fn copy(&self, src: MemRef, dst: MemRef, len: usize) -> Result<(), MemError> {
        let s = self.resolve(src, len)?;
        let d = self.resolve(dst, len)?;
        // SAFETY: both ranges were bounds-checked against live allocations; raw-pointer copy
        // with memmove semantics; the ownership rules keep any DMA engine off these bytes.
        unsafe { std::ptr::copy(s, d, len) };
        Ok(())
    }

    /// Borrows `len` bytes at `at` (a received frame the caller owns, for parsing in place).
    /// The caller must own the range: no device or kernel writes it while the borrow lives
    /// (for the UMEM: a frame taken from the RX ring and not yet given back to the fill ring).
    pub fn bytes(&self, at: MemRef, len: usize) -> Result<&[u8], MemError> {
        region_bytes(&*self.entry(at.region)?.mem, at, len)
    }

    /// Copies bytes out of a region.
    pub fn read(&self, src: MemRef, out: &mut [u8]) -> Result<(), MemError> {
        let s = self.resolve(src, out.len())?;
        // SAFETY: bounds-checked; `out` is a distinct Rust allocation, so they cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(s, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies bytes into a region.
    pub fn write(&self, dst: MemRef, data: &[u8]) -> Result<(), MemError> {
        let d = self.resolve(dst, data.len())?;
        // SAFETY: bounds-checked; `data` is a distinct Rust allocation, so they cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), d, data.len()) };
        Ok(())
    }

    /// Copies `data` into a region and, with `sum`, sums it in the same pass (the fused copy
    /// and checksum of a direct delivery, [`crate::wire::checksum::copy_maybe_sum`]). `data`
    /// must not overlap the destination (it is refused if it does).
    pub fn write_maybe_sum(
        &self,
        dst: MemRef,
        data: &[u8],
        sum: bool,
    ) -> Result<crate::wire::Checksum, MemError> {
        let d = self.resolve(dst, data.len())?;
        let (a, b) = (d as usize, data.as_ptr() as usize);
        if a < b + data.len() && b < a + data.len() {
            return Err(MemError::Overlap(dst.region));
        }
        // SAFETY: bounds-checked against a live allocation; the range does not overlap `data`
        // (checked above), and the copier owns it (a posted receive's buffer: no device, DMA
        // engine or other reference touches it during this call).
        let out = unsafe { std::slice::from_raw_parts_mut(d, data.len()) };
        Ok(crate::wire::checksum::copy_maybe_sum(out, data, sum))
    }

    /// Fills bytes of a region with one value.
    pub fn fill(&self, dst: MemRef, len: usize, byte: u8) -> Result<(), MemError> {
        let d = self.resolve(dst, len)?;
        // SAFETY: bounds-checked.
        unsafe { std::ptr::write_bytes(d, byte, len) };
        Ok(())
    }
}

/// A registered receive buffer: a slot of a [`BufferPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufId(pub u32);

/// Registered buffers: one region cut into equal slots, registered (and DMA-mapped) once.
/// The application takes a slot, posts it to a receive, and gets it back — filled — only after
/// every copy into it has completed; then it gives it back with [`BufferPool::put`].
#[derive(Debug)]
pub struct BufferPool {
    region: RegionId,
    slot_len: usize,
    free: Vec<BufId>,
    slots: usize,
}

impl BufferPool {
    /// Registers `mem` (cut into `slot_len`-byte slots) in `regions` as DMA-capable.
    pub fn new(regions: &mut Regions, mem: Arc<dyn RegionMemory>, slot_len: usize) -> Self {
        assert!(slot_len > 0, "slot_len must be positive");
        let slots = mem.len() / slot_len;
        Self::with_slots(regions, mem, slot_len, slots)
    }

    fn with_slots(
        regions: &mut Regions,
        mem: Arc<dyn RegionMemory>,
        slot_len: usize,
        slots: usize,
    ) -> Self {
        let region = regions.add(mem, true);
        Self {
            region,
            slot_len,
            free: (0..slots as u32).rev().map(BufId).collect(),
            slots,
        }
    }

    /// A pool of `slots` buffers over plain heap memory (tests, CPU engine).
    pub fn heap(regions: &mut Regions, slots: usize, slot_len: usize) -> Self {
        assert!(slot_len > 0, "slot_len must be positive");
        Self::with_slots(
            regions,
            Arc::new(HeapRegion::new(slots * slot_len)),
            slot_len,
            slots,
        )
    }

    pub fn region(&self) -> RegionId {
        self.region
    }

    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    pub fn capacity(&self) -> usize {
        self.slots
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Takes a free slot, if any.
    pub fn take(&mut self) -> Option<BufId> {
        self.free.pop()
    }

    /// Returns a slot to the pool.
    pub fn put(&mut self, id: BufId) {
        debug_assert!((id.0 as usize) < self.slots && !self.free.contains(&id));
        self.free.push(id);
    }

    /// Where a slot starts.
    pub fn start(&self, id: BufId) -> MemRef {
        MemRef::new(self.region, id.0 as usize * self.slot_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_read_write_and_bounds() {
        let mut r = Regions::new();
        let a = r.add(Arc::new(HeapRegion::new(64)), true);
        let b = r.add(Arc::new(HeapRegion::new(64)), false);
        r.write(MemRef::new(a, 10), b"hello").unwrap();
        r.copy(MemRef::new(a, 10), MemRef::new(b, 0), 5).unwrap();
        let mut out = [0u8; 5];
        r.read(MemRef::new(b, 0), &mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert!(matches!(
            r.copy(MemRef::new(a, 4094), MemRef::new(b, 0), 5),
            Err(MemError::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.resolve(MemRef::new(a, usize::MAX), 2),
            Err(MemError::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.iova(MemRef::new(a, 0), 1),
            Err(MemError::NotMapped(_))
        ));
        r.set_iova(a, 0x1000).unwrap();
        assert_eq!(r.iova(MemRef::new(a, 8), 1).unwrap(), 0x1008);
        assert!(r.dma_ok(a) && !r.dma_ok(b) && !r.dma_ok(RegionId(9)));
        assert_eq!(r.memory(a).unwrap().len(), 4096, "rounded to whole pages");
        assert_eq!(r.base_iova(a), Some(0x1000));
        assert_eq!(r.ids().count(), 2);
        assert!(r
            .resolve(MemRef::new(RegionId(9), 0), 1)
            .unwrap_err()
            .to_string()
            .contains("register"));
    }

    #[test]
    fn pool_slots() {
        let mut r = Regions::new();
        let mut p = BufferPool::heap(&mut r, 3, 100);
        assert_eq!(p.capacity(), 3);
        let x = p.take().unwrap();
        assert_eq!(x, BufId(0));
        assert_eq!(p.start(BufId(2)).offset, 200);
        p.take().unwrap();
        p.take().unwrap();
        assert!(p.take().is_none());
        p.put(x);
        assert_eq!(p.available(), 1);
    }
}
