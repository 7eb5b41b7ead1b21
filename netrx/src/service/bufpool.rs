//! Registered receive buffers: one region cut into equal slots, registered with every poller's
//! copy path and DMA-mapped once per device at [`super::Listener::bind`] (like io_uring fixed
//! buffers). A [`RegisteredBuf`] is owned by exactly one side at a time: the application while
//! it holds the value, the poller (and its DMA engine) while a receive into it is posted. It comes
//! back from [`super::Stream::recv_registered`] only after every copy into it completed.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::copy::{HeapRegion, RegionMemory};

pub(crate) struct PoolShared {
    pub(crate) mem: Arc<HeapRegion>,
    pub(crate) slot_len: usize,
    pub(crate) slots: usize,
    free: Mutex<Vec<u32>>,
}

/// The pool of registered buffers of a [`super::Listener`]. Cheap to clone.
#[derive(Clone)]
pub struct BufPool {
    pub(crate) inner: Arc<PoolShared>,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("slots", &self.inner.slots)
            .field("slot_len", &self.inner.slot_len)
            .field("available", &self.available())
            .finish()
    }
}

impl BufPool {
    /// `slots` buffers of `slot_len` bytes each (rounded up to whole 4 KiB pages).
    pub(crate) fn new(slots: usize, slot_len: usize) -> BufPool {
        let slot_len = slot_len.max(1).div_ceil(4096) * 4096;
        let slots = slots.max(1);
        let mem = Arc::new(HeapRegion::new(slots * slot_len));
        BufPool {
            inner: Arc::new(PoolShared {
                mem,
                slot_len,
                slots,
                free: Mutex::new((0..slots as u32).rev().collect()),
            }),
        }
    }

    /// Takes a free buffer, if any (all are in use otherwise: drop one to give it back).
    pub fn take(&self) -> Option<RegisteredBuf> {
        let idx = self.inner.free.lock().pop()?;
        Some(RegisteredBuf {
            pool: self.inner.clone(),
            idx,
        })
    }

    /// Size of every buffer in bytes.
    pub fn buf_len(&self) -> usize {
        self.inner.slot_len
    }

    /// Number of buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.inner.slots
    }

    /// Buffers free right now.
    pub fn available(&self) -> usize {
        self.inner.free.lock().len()
    }
}

/// A receive buffer from the registered (DMA-mapped once) pool. Dropping it gives it back.
pub struct RegisteredBuf {
    pool: Arc<PoolShared>,
    idx: u32,
}

impl fmt::Debug for RegisteredBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredBuf")
            .field("idx", &self.idx)
            .field("len", &self.pool.slot_len)
            .finish()
    }
}

impl RegisteredBuf {
    /// Buffer size in bytes (a receive into it asks for up to this many).
    pub fn capacity(&self) -> usize {
        self.pool.slot_len
    }

    /// Index of the slot in its pool.
    pub fn index(&self) -> u32 {
        self.idx
    }

    pub(crate) fn offset(&self) -> usize {
        self.idx as usize * self.pool.slot_len
    }

    pub(crate) fn same_pool(&self, p: &Arc<PoolShared>) -> bool {
        Arc::ptr_eq(&self.pool, p)
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the slot lies inside the pool allocation, which the Arc keeps alive. The value
        // is only in the application's hands when no receive targets it (a posted buffer is
        // moved into the request and returned only after every copy into it completed), so no
        // device or poller writes these bytes while this borrow lives.
        unsafe {
            std::slice::from_raw_parts(
                self.pool.mem.as_ptr().add(self.offset()),
                self.pool.slot_len,
            )
        }
    }

    /// The buffer's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pool.mem.as_ptr().add(self.offset()),
                self.pool.slot_len,
            )
        }
    }
}

impl Drop for RegisteredBuf {
    fn drop(&mut self) {
        self.pool.free.lock().push(self.idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_give_back() {
        let p = BufPool::new(2, 5000);
        assert_eq!(p.buf_len(), 8192);
        let mut a = p.take().unwrap();
        let b = p.take().unwrap();
        assert!(p.take().is_none());
        a.as_mut_slice()[..3].copy_from_slice(b"abc");
        assert_eq!(&a.as_slice()[..3], b"abc");
        assert_ne!(a.offset(), b.offset());
        drop(a);
        assert_eq!(p.available(), 1);
        drop(b);
        assert_eq!(p.available(), 2);
    }
}
