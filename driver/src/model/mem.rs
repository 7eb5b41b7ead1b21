//! The model's IOMMU: an IOVA translation table filled through [`DmaMapper::map`].
//!
//! IOVAs start at 4 GiB and are never equal to host addresses, so a driver that puts a host
//! pointer into a descriptor hits an unmapped IOVA and the channel halts. Every mapping is
//! followed by an unmapped guard page and IOVAs are never reused, so overruns and
//! use-after-unmap also hit unmapped space.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use crate::dma::{DmaMapper, MapError};

/// First IOVA handed out.
pub const IOVA_BASE: u64 = 0x1_0000_0000;
/// IOVAs stay below 2^48 (the address width of CB >= 3.3, rule A3).
pub const IOVA_LIMIT: u64 = 1 << 48;
const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub len: u64,
    /// Host address (kept as an integer so the table is Send + Sync).
    pub host: usize,
}

#[derive(Default)]
pub(crate) struct Table {
    pub maps: BTreeMap<u64, Region>,
    next_iova: u64,
}

impl Table {
    /// Host pointer for `[iova, iova + len)` if the whole range lies in one mapping.
    pub fn translate(&self, iova: u64, len: u64) -> Option<*mut u8> {
        if len == 0 {
            return None;
        }
        let (&start, r) = self.maps.range(..=iova).next_back()?;
        let end = iova.checked_add(len)?;
        if end > start + r.len {
            return None;
        }
        Some((r.host + (iova - start) as usize) as *mut u8)
    }
}

/// The translation table shared by the device and its mapper.
#[derive(Default)]
pub(crate) struct Mem {
    table: RwLock<Table>,
}

impl Mem {
    pub fn new() -> Self {
        Mem {
            table: RwLock::new(Table {
                maps: BTreeMap::new(),
                next_iova: IOVA_BASE,
            }),
        }
    }

    /// Read access to the table. While the guard lives no mapping can be removed, so host
    /// pointers obtained from it stay valid (the `DmaMapper::map` contract keeps the memory
    /// allocated until `unmap` returns, and `unmap` needs the write lock).
    pub fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read()
    }

    pub fn mapping_count(&self) -> usize {
        self.table.read().maps.len()
    }
}

/// The model's [`DmaMapper`]: get it from [`super::ModelDevice::mapper`].
///
/// Like VFIO type1, it requires the host address and the length to be multiples of the
/// 4 KiB page size.
pub struct ModelMapper {
    pub(crate) mem: Arc<Mem>,
}

impl ModelMapper {
    /// Number of live mappings (for leak checks in tests).
    pub fn mapping_count(&self) -> usize {
        self.mem.mapping_count()
    }
}

impl ModelMapper {
    /// Moves the next IOVA handed out to `iova` (rounded up to a page; never backwards), so a
    /// test can place a mapping at a chosen address, e.g. across a 4 GiB boundary.
    pub fn skip_iova_to(&self, iova: u64) {
        let mut t = self.mem.table.write();
        let a = iova.div_ceil(PAGE) * PAGE;
        if a > t.next_iova && a < IOVA_LIMIT {
            t.next_iova = a;
        }
    }
}

impl DmaMapper for ModelMapper {
    unsafe fn map(&self, vaddr: *mut u8, len: usize) -> Result<u64, MapError> {
        let (v, l) = (vaddr as u64, len as u64);
        if len == 0 || v % PAGE != 0 || l % PAGE != 0 {
            return Err(MapError::Misaligned {
                vaddr: v,
                len: l,
                align: PAGE,
            });
        }
        let mut t = self.mem.table.write();
        let iova = t.next_iova;
        // One unmapped guard page after every mapping.
        let next = iova
            .checked_add(l)
            .and_then(|e| e.checked_add(PAGE))
            .filter(|&e| e <= IOVA_LIMIT)
            .ok_or(MapError::IovaExhausted {
                len: l,
                align: PAGE,
            })?;
        t.next_iova = next;
        t.maps.insert(
            iova,
            Region {
                len: l,
                host: vaddr as usize,
            },
        );
        Ok(iova)
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<(), MapError> {
        // The write lock waits for any descriptor the engine is executing on this memory.
        let mut t = self.mem.table.write();
        match t.maps.get(&iova) {
            Some(r) if r.len == len as u64 => {
                t.maps.remove(&iova);
                Ok(())
            }
            _ => Err(MapError::NotMapped {
                iova,
                len: len as u64,
            }),
        }
    }
}
