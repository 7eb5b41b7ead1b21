//! One mmap'd AF_XDP ring (fill, completion, RX or TX).
//!
//! The kernel and this process share the ring: the producer index is written by the producer
//! with a Release store after the descriptors, and read by the consumer with an Acquire load
//! before the descriptors (and the same for the consumer index in the other direction).

use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// Offsets of one ring inside its mapping (from `XDP_MMAP_OFFSETS`).
#[derive(Clone, Copy, Debug)]
pub struct RingOffsets {
    pub producer: u64,
    pub consumer: u64,
    pub desc: u64,
    pub flags: u64,
}

impl From<libc::xdp_ring_offset> for RingOffsets {
    fn from(o: libc::xdp_ring_offset) -> Self {
        Self {
            producer: o.producer,
            consumer: o.consumer,
            desc: o.desc,
            flags: o.flags,
        }
    }
}

/// A ring of `T` (`u64` addresses for fill/completion, `xdp_desc` for RX/TX).
pub struct Ring<T: Copy> {
    map: *mut libc::c_void,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    size: u32,
    /// Our own index: the producer index for fill/TX, the consumer index for RX/completion.
    pub(crate) local: u32,
    /// Last seen index of the other side.
    cached_other: u32,
    _t: PhantomData<T>,
}

// SAFETY: the ring's mapping is owned by this value alone (the kernel is the only other party);
// moving it to another thread moves that exclusive ownership.
unsafe impl<T: Copy> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Map the ring of `size` entries at page offset `pgoff` of socket `fd`.
    pub fn map(fd: RawFd, pgoff: u64, off: RingOffsets, size: u32) -> io::Result<Self> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let end_of = |o: u64| o as usize + 4;
        if end_of(off.producer) > map_len
            || end_of(off.consumer) > map_len
            || end_of(off.flags) > map_len
            || off.desc as usize % std::mem::align_of::<T>() != 0
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ring offsets outside the ring",
            ));
        }
        // SAFETY: mmap of the socket's ring region with the kernel-reported length; the result is
        // checked against MAP_FAILED before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = map as *mut u8;
        // SAFETY: all offsets were checked above to lie inside the `map_len`-byte mapping, and
        // the kernel places the u32 indexes 4-byte aligned and the descriptors T-aligned.
        let (producer, consumer, flags, descs) = unsafe {
            (
                base.add(off.producer as usize) as *const AtomicU32,
                base.add(off.consumer as usize) as *const AtomicU32,
                base.add(off.flags as usize) as *const AtomicU32,
                base.add(off.desc as usize) as *mut T,
            )
        };
        let mut r = Self {
            map,
            map_len,
            producer,
            consumer,
            flags,
            descs,
            mask: size - 1,
            size,
            local: 0,
            cached_other: 0,
            _t: PhantomData,
        };
        // Start from the kernel's current indexes (both 0 on a fresh socket).
        r.local = r.producer_index();
        r.cached_other = r.consumer_index();
        Ok(r)
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn producer_index(&self) -> u32 {
        // SAFETY: `producer` points into our live mapping (checked in `map`); the kernel only
        // ever accesses it atomically too.
        unsafe { (*self.producer).load(Ordering::Acquire) }
    }

    pub fn consumer_index(&self) -> u32 {
        // SAFETY: as for `producer_index`.
        unsafe { (*self.consumer).load(Ordering::Acquire) }
    }

    /// The ring's flags word has `XDP_RING_NEED_WAKEUP`.
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer_index`.
        let f = unsafe { (*self.flags).load(Ordering::Relaxed) };
        f & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // ---- producer side (fill, TX) ----

    /// Free slots we may write (refreshing the kernel's consumer index only when needed).
    pub fn free_slots(&mut self, want: u32) -> u32 {
        let mut free = self.size - self.local.wrapping_sub(self.cached_other);
        if free < want {
            self.cached_other = self.consumer_index();
            free = self.size - self.local.wrapping_sub(self.cached_other);
        }
        free.min(self.size)
    }

    /// Write entry `i` positions after our local producer index (not yet published).
    pub fn write(&mut self, i: u32, v: T) {
        let idx = self.local.wrapping_add(i) & self.mask;
        // SAFETY: `idx <= mask < size`, so the slot is inside the descriptor array of our
        // mapping; the caller checked via `free_slots` that the kernel is not reading it.
        unsafe { self.descs.add(idx as usize).write_volatile(v) };
    }

    /// Publish `n` written entries to the kernel.
    pub fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        // SAFETY: as for `producer_index`; Release orders the descriptor writes before it.
        unsafe { (*self.producer).store(self.local, Ordering::Release) };
    }

    /// Entries we produced that the kernel has not consumed yet.
    pub fn produced_pending(&self) -> u32 {
        self.local.wrapping_sub(self.consumer_index())
    }

    // ---- consumer side (RX, completion) ----

    /// Entries ready to read.
    pub fn available(&mut self) -> u32 {
        self.cached_other = self.producer_index();
        self.cached_other.wrapping_sub(self.local).min(self.size)
    }

    /// Read entry `i` positions after our local consumer index.
    pub fn read(&self, i: u32) -> T {
        let idx = self.local.wrapping_add(i) & self.mask;
        // SAFETY: `idx < size`, inside the mapping; the Acquire load in `available` ordered the
        // kernel's descriptor write before this read.
        unsafe { self.descs.add(idx as usize).read_volatile() }
    }

    /// Give `n` read entries back to the kernel.
    pub fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        // SAFETY: as for `producer_index`; Release orders our reads before the kernel reuses
        // the slots.
        unsafe { (*self.consumer).store(self.local, Ordering::Release) };
    }
}

impl<T: Copy> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `map`; no references into it
        // survive (all accessors copy values out).
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}
