//! Out-of-order store: frame references keyed by stream offset, non-overlapping, with a bound on
//! the number of contiguous ranges. Offsets are 64-bit stream offsets (byte 0 is the byte after
//! the SYN), so nothing here deals with sequence wrap-around.

use std::collections::VecDeque;

/// A reference to payload bytes held in a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegRef {
    /// Index of the held frame in the connection's frame table.
    pub slot: u32,
    /// Offset of the first payload byte in the frame.
    pub off: u32,
    pub len: u32,
    /// Stream offset of the first byte.
    pub start: u64,
    pub psh: bool,
}

impl SegRef {
    pub fn end(&self) -> u64 {
        self.start + self.len as u64
    }
    /// Drops the first `n` bytes.
    pub fn trim_front(&mut self, n: u32) {
        self.off += n;
        self.len -= n;
        self.start += n as u64;
    }
}

/// Result of inserting a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Stored (possibly trimmed); segments it fully covered were handed to `release`.
    Stored,
    /// Every byte was already held: the caller releases the new segment's frame.
    Duplicate,
    /// It would create more ranges than allowed: the caller drops it.
    TooManyRanges,
}

#[derive(Debug)]
pub(crate) struct Reasm {
    segs: VecDeque<SegRef>,
    /// Maximal contiguous ranges [start, end) of held bytes, sorted.
    ranges: Vec<(u64, u64)>,
    /// Start offsets of recently stored data, most recent first (for SACK block order).
    recent: [u64; 4],
    n_recent: usize,
    max_ranges: usize,
    bytes: u64,
}

impl Reasm {
    pub fn new(max_ranges: usize) -> Self {
        Reasm {
            segs: VecDeque::new(),
            ranges: Vec::new(),
            recent: [0; 4],
            n_recent: 0,
            max_ranges: max_ranges.max(1),
            bytes: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }
    pub fn segments(&self) -> usize {
        self.segs.len()
    }
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
    /// Payload bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of ranges after adding [s, e), and the index span of ranges it would merge.
    fn merge_span(&self, s: u64, e: u64) -> (usize, usize) {
        let j = self.ranges.partition_point(|r| r.1 < s);
        let k = self.ranges.partition_point(|r| r.0 <= e);
        (j, k.max(j))
    }

    /// Inserts `seg` (whose start is beyond the in-order point). Segments it entirely covers
    /// are removed and passed to `release`.
    pub fn insert(&mut self, mut seg: SegRef, release: &mut impl FnMut(SegRef)) -> Insert {
        if seg.len == 0 {
            return Insert::Duplicate;
        }
        let (s, e) = (seg.start, seg.end());
        let (j, k) = self.merge_span(s, e);
        if self.ranges.len() - (k - j) + 1 > self.max_ranges {
            return Insert::TooManyRanges;
        }
        // Left neighbour overlapping the start.
        let mut i = self.segs.partition_point(|g| g.end() <= s);
        if let Some(g) = self.segs.get(i) {
            if g.start <= s {
                if g.end() >= e {
                    return Insert::Duplicate;
                }
                let cut = (g.end() - s) as u32;
                seg.trim_front(cut);
                i += 1;
            }
        }
        // Segments entirely covered by the new one.
        while let Some(g) = self.segs.get(i) {
            if g.end() <= e {
                let g = self.segs.remove(i).expect("index checked");
                self.bytes -= g.len as u64;
                release(g);
            } else {
                break;
            }
        }
        // Right neighbour overlapping the end.
        if let Some(g) = self.segs.get(i) {
            if g.start < e {
                seg.len = (g.start - seg.start) as u32;
            }
        }
        if seg.len == 0 {
            return Insert::Duplicate;
        }
        self.bytes += seg.len as u64;
        self.segs.insert(i, seg);
        // Ranges: merge [s, e) (the original extent; the union is the same).
        let (j, k) = self.merge_span(s, e);
        let mut lo = s;
        let mut hi = e;
        if k > j {
            lo = lo.min(self.ranges[j].0);
            hi = hi.max(self.ranges[k - 1].1);
        }
        self.ranges.splice(j..k, std::iter::once((lo, hi)));
        // Most recent first, one entry per range: entries now inside the merged range go.
        let mut keep = [0u64; 3];
        let mut m = 0;
        for &x in &self.recent[..self.n_recent] {
            if m < 3 && !(lo <= x && x < hi) {
                keep[m] = x;
                m += 1;
            }
        }
        self.recent[0] = seg.start;
        self.recent[1..=m].copy_from_slice(&keep[..m]);
        self.n_recent = m + 1;
        Insert::Stored
    }

    /// Removes and returns the first segment if it starts at or before `next` (the in-order
    /// point), trimmed to start at `next`. Segments entirely before `next` are released.
    pub fn pop_ready(&mut self, next: u64, release: &mut impl FnMut(SegRef)) -> Option<SegRef> {
        while let Some(g) = self.segs.front() {
            if g.start > next {
                return None;
            }
            let mut g = self.segs.pop_front().expect("front exists");
            self.bytes -= g.len as u64;
            self.trim_ranges_below(g.end());
            if g.end() <= next {
                release(g);
                continue;
            }
            let cut = (next - g.start) as u32;
            g.trim_front(cut);
            return Some(g);
        }
        None
    }

    fn trim_ranges_below(&mut self, upto: u64) {
        while let Some(r) = self.ranges.first_mut() {
            if r.1 <= upto {
                self.ranges.remove(0);
            } else {
                if r.0 < upto {
                    r.0 = upto;
                }
                break;
            }
        }
    }

    /// Index of the range holding stream offset `off`.
    pub fn range_index(&self, off: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.1 <= off);
        self.ranges.get(i).filter(|r| r.0 <= off).map(|_| i)
    }

    /// Whether every byte of [s, e) is held.
    pub fn covers(&self, s: u64, e: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= s);
        self.ranges.get(i).is_some_and(|r| r.0 <= s && e <= r.1)
    }

    /// Removes the highest segment (pruning under memory pressure).
    pub fn pop_last(&mut self) -> Option<SegRef> {
        let g = self.segs.pop_back()?;
        self.bytes -= g.len as u64;
        if let Some(r) = self.ranges.last_mut() {
            r.1 = g.start;
            if r.1 <= r.0 {
                self.ranges.pop();
            }
        }
        Some(g)
    }

    /// Removes everything.
    pub fn drain(&mut self) -> impl Iterator<Item = SegRef> + '_ {
        self.ranges.clear();
        self.n_recent = 0;
        self.bytes = 0;
        self.segs.drain(..)
    }

    /// Up to `max` SACK ranges, the one holding the most recently received data first, then
    /// other recently reported ones, then the rest in ascending order (RFC 2018 section 4).
    pub fn sack_ranges(&self, max: usize, out: &mut [(u64, u64); 4]) -> usize {
        let max = max.min(4);
        let mut n = 0;
        let find = |off: u64| -> Option<(u64, u64)> {
            let i = self.ranges.partition_point(|r| r.1 <= off);
            self.ranges.get(i).copied().filter(|r| r.0 <= off)
        };
        for &off in &self.recent[..self.n_recent] {
            if n == max {
                return n;
            }
            if let Some(r) = find(off) {
                if !out[..n].contains(&r) {
                    out[n] = r;
                    n += 1;
                }
            }
        }
        for &r in &self.ranges {
            if n == max {
                break;
            }
            if !out[..n].contains(&r) {
                out[n] = r;
                n += 1;
            }
        }
        n
    }

    /// Checks the internal invariants (tests and fuzzing).
    pub fn check(&self) {
        let mut prev = 0u64;
        let mut bytes = 0u64;
        for (i, g) in self.segs.iter().enumerate() {
            assert!(g.len > 0);
            assert!(i == 0 || g.start >= prev, "overlap");
            prev = g.end();
            bytes += g.len as u64;
        }
        assert_eq!(bytes, self.bytes);
        let covered: u64 = self.ranges.iter().map(|r| r.1 - r.0).sum();
        assert_eq!(covered, bytes, "ranges cover exactly the held bytes");
        assert!(self.ranges.len() <= self.max_ranges);
        for w in self.ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "ranges are maximal and sorted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, len: u32, slot: u32) -> SegRef {
        SegRef {
            slot,
            off: 100,
            len,
            start,
            psh: false,
        }
    }

    #[test]
    fn overlaps_are_trimmed_and_covered_segments_released() {
        let mut r = Reasm::new(8);
        let mut rel = Vec::new();
        let mut f = |g: SegRef| rel.push(g.slot);
        assert_eq!(r.insert(seg(100, 10, 1), &mut f), Insert::Stored);
        assert_eq!(r.insert(seg(120, 10, 2), &mut f), Insert::Stored);
        assert_eq!(r.ranges(), 2);
        assert_eq!(r.insert(seg(102, 5, 3), &mut f), Insert::Duplicate);
        // Covers 120..130 entirely and overlaps 100..110: trimmed to 110..135, slot 2 released.
        assert_eq!(r.insert(seg(105, 30, 4), &mut f), Insert::Stored);
        r.check();
        assert_eq!(r.ranges(), 1);
        assert_eq!(r.bytes(), 35);
        let mut out = [(0, 0); 4];
        assert_eq!(r.sack_ranges(4, &mut out), 1);
        assert_eq!(out[0], (100, 135));
        let a = r.pop_ready(103, &mut f).unwrap();
        assert_eq!((a.start, a.len, a.off), (103, 7, 103));
        let b = r.pop_ready(110, &mut f).unwrap();
        assert_eq!((b.start, b.len, b.slot), (110, 25, 4));
        assert!(r.is_empty());
        r.check();
        assert_eq!(rel, vec![2]);
    }

    #[test]
    fn range_limit_and_sack_order() {
        let mut r = Reasm::new(3);
        let mut f = |_g: SegRef| {};
        for (i, s) in [100u64, 200, 300].iter().enumerate() {
            assert_eq!(r.insert(seg(*s, 10, i as u32), &mut f), Insert::Stored);
        }
        assert_eq!(r.insert(seg(400, 10, 9), &mut f), Insert::TooManyRanges);
        // Extending an existing range is fine.
        assert_eq!(r.insert(seg(110, 10, 4), &mut f), Insert::Stored);
        let mut out = [(0, 0); 4];
        let n = r.sack_ranges(3, &mut out);
        assert_eq!(&out[..n], &[(100, 120), (300, 310), (200, 210)]);
        // One entry per range: many segments into one range do not push others out.
        let mut r2 = Reasm::new(8);
        r2.insert(seg(1000, 10, 0), &mut f);
        for i in 0..5 {
            r2.insert(seg(100 + i * 10, 10, 1), &mut f);
        }
        r2.insert(seg(2000, 10, 2), &mut f);
        let n = r2.sack_ranges(3, &mut out);
        assert_eq!(&out[..n], &[(2000, 2010), (100, 150), (1000, 1010)]);
        r2.check();
        let last = r.pop_last().unwrap();
        assert_eq!(last.start, 300);
        r.check();
    }
}
