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
    #[error("{what}: {msg}")]
    Os { what: &'static str, msg: String },
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
