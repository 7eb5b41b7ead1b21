//! A small first-fit IOVA allocator over a set of windows.
//!
//! Used by [`super::VfioMapper`] until (or unless) the driver core's own allocator is shared.
//! Pure bookkeeping: no I/O.

use std::ops::Range;

/// Free-list allocator of IOVA ranges.
#[derive(Clone, Debug, Default)]
pub struct IovaSpace {
    /// Sorted, non-overlapping, non-adjacent free ranges.
    free: Vec<Range<u64>>,
}

impl IovaSpace {
    /// An allocator over `windows` (overlaps are merged, empty ranges dropped).
    pub fn new(windows: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut s = IovaSpace { free: Vec::new() };
        for w in windows {
            if w.start < w.end {
                s.insert(w);
            }
        }
        s
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.end - r.start).sum()
    }

    /// Allocates `len` bytes aligned to `align` (a power of two). First fit.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        for i in 0..self.free.len() {
            let r = self.free[i].clone();
            let start = r.start.checked_add(align - 1)? & !(align - 1);
            let Some(end) = start.checked_add(len) else {
                continue;
            };
            if end > r.end {
                continue;
            }
            self.free.remove(i);
            let mut at = i;
            if r.start < start {
                self.free.insert(at, r.start..start);
                at += 1;
            }
            if end < r.end {
                self.free.insert(at, end..r.end);
            }
            return Some(start);
        }
        None
    }

    /// Returns `start..start+len` to the free list.
    pub fn free(&mut self, start: u64, len: u64) {
        if len > 0 {
            self.insert(start..start + len);
        }
    }

    fn insert(&mut self, mut r: Range<u64>) {
        let pos = self.free.partition_point(|x| x.start < r.start);
        // Merge with the previous and following ranges when they touch or overlap.
        let mut lo = pos;
        if lo > 0 && self.free[lo - 1].end >= r.start {
            lo -= 1;
            r.start = self.free[lo].start;
            r.end = r.end.max(self.free[lo].end);
        }
        let mut hi = pos;
        while hi < self.free.len() && self.free[hi].start <= r.end {
            r.end = r.end.max(self.free[hi].end);
            hi += 1;
        }
        self.free.splice(lo..hi, std::iter::once(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_merge() {
        let mut s = IovaSpace::new([0x1000..0x10000, 0x20000..0x30000]);
        let total = s.free_bytes();
        let a = s.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(a, 0x1000);
        let b = s.alloc(0x2000, 0x2000).unwrap();
        assert_eq!(b, 0x2000);
        let c = s.alloc(0x10000, 0x1000).unwrap();
        assert_eq!(c, 0x20000);
        assert!(s.alloc(0x10000, 0x1000).is_none());
        s.free(b, 0x2000);
        s.free(a, 0x1000);
        s.free(c, 0x10000);
        assert_eq!(s.free_bytes(), total);
        assert_eq!(s.free.len(), 2);
    }

    #[test]
    fn alignment_and_edges() {
        let mut s = IovaSpace::new(Some(0x1800..0x5000));
        assert_eq!(s.alloc(0x1000, 0x1000), Some(0x2000));
        assert_eq!(s.alloc(0x800, 0x800), Some(0x1800));
        assert_eq!(s.alloc(0x2000, 0x1000), Some(0x3000));
        assert_eq!(s.alloc(1, 1), None);
        assert_eq!(s.alloc(0, 1), None);
        let mut s = IovaSpace::new(Some(u64::MAX - 0x1000..u64::MAX));
        assert_eq!(s.alloc(0x2000, 0x1000), None);
    }
}
