//! Descriptor-ring bookkeeping as a pure state machine (no I/O, no clocks, no memory access).
//!
//! The ring is a power-of-two array of 64-byte descriptor slots, linked circularly through
//! `next` by the channel. Positions are free-running `u32` counters; a slot index is
//! `position & mask`:
//!
//! ```text
//!        tail            issued               head
//!         |  in flight     |  written, not     |  free ... (one slot always stays empty)
//!         v  (device owns) v  yet doorbelled   v
//! ```
//!
//! * `head`: next position to fill. `issued`: everything before it was announced to the device
//!   through DMACOUNT. `tail`: oldest position not yet reaped.
//! * `chain_start`: the position CHAINADDR pointed at when the chain was last (re)started. The
//!   device's DMACOUNT is a free-running 16-bit count of descriptors since then, so the value
//!   to write is `(issued - chain_start) as u16`; it resets to 0 whenever CHAINADDR is rewritten.
//! * One slot is kept empty, so at most `size - 1` descriptors are outstanding. That keeps the
//!   16-bit DMACOUNT unambiguous (rings have at most 65536 slots) and lets the completion
//!   address of the last reaped descriptor (`tail - 1`) be told apart from every in-flight one.
//!
//! An operation occupies one or more consecutive descriptors (copies are split at XFERCAP); the
//! operation's record (its token and payload) sits on its last slot. The payload is whatever the
//! owner of the ring wants back when the operation is reaped or drained: the channel keeps the
//! caller's own context there (like the callback and argument SPDK keeps in its software ring,
//! `lib/ioat/ioat.c`) next to the region pins, so a completion needs no lookup table.

/// Identifies one submitted operation on one channel. Tokens increase by one per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Largest supported ring order: 65536 slots, the 16-bit DMACOUNT modulus (Linux's maximum).
pub const MAX_ORDER: u32 = 16;
/// Smallest supported ring order (4 slots).
pub const MIN_ORDER: u32 = 2;

/// Size of one descriptor slot in bytes.
pub const SLOT_SIZE: u64 = crate::desc::DESC_SIZE as u64;

/// The record of an operation, kept on its last descriptor slot.
#[derive(Debug)]
pub struct OpEntry<P> {
    /// `None` for internal descriptors (null descriptors, fences) that nobody waits for.
    pub token: Option<Token>,
    /// Position of the operation's first descriptor.
    pub first: u32,
    /// Number of descriptors.
    pub ndesc: u32,
    pub payload: P,
}

/// Not enough free slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull {
    pub needed: u32,
    pub free: u32,
}

/// A decoded completion address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// The address is the descriptor at this position, inside the in-flight window
    /// `[tail, issued)`.
    Pos(u32),
    /// The address is the last reaped descriptor (`tail - 1`) or the chain's start marker:
    /// nothing new.
    Nothing,
    /// The address is 0, not a slot of this ring, or a slot outside the in-flight window. A
    /// device value that makes no sense is reported, never trusted.
    Unknown,
}

/// The ring state machine. `P` is the per-operation payload (for example region pins).
#[derive(Debug)]
pub struct Ring<P> {
    order: u32,
    mask: u32,
    base_iova: u64,
    head: u32,
    issued: u32,
    tail: u32,
    chain_start: u32,
    next_token: u64,
    ops: u32,
    /// Operations with a token (the ones that get reported) written and not yet reaped.
    token_ops: u32,
    slots: Vec<Option<OpEntry<P>>>,
}

impl<P> Ring<P> {
    /// A ring of `1 << order` slots whose slot 0 the device sees at `base_iova` (64-byte aligned).
    ///
    /// # Panics
    /// If `order` is outside `MIN_ORDER..=MAX_ORDER` or `base_iova` is not 64-byte aligned; the
    /// channel validates both before building a ring.
    pub fn new(order: u32, base_iova: u64) -> Self {
        assert!(
            (MIN_ORDER..=MAX_ORDER).contains(&order),
            "ring order {order}"
        );
        assert_eq!(
            base_iova % SLOT_SIZE,
            0,
            "ring base must be 64-byte aligned"
        );
        let size = 1u32 << order;
        Ring {
            order,
            mask: size - 1,
            base_iova,
            head: 0,
            issued: 0,
            tail: 0,
            chain_start: 0,
            next_token: 0,
            ops: 0,
            token_ops: 0,
            slots: (0..size).map(|_| None).collect(),
        }
    }

    pub fn order(&self) -> u32 {
        self.order
    }
    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.mask + 1
    }
    pub fn head(&self) -> u32 {
        self.head
    }
    pub fn issued(&self) -> u32 {
        self.issued
    }
    pub fn tail(&self) -> u32 {
        self.tail
    }
    pub fn chain_start(&self) -> u32 {
        self.chain_start
    }
    /// Slot index of a position.
    pub fn slot(&self, pos: u32) -> usize {
        (pos & self.mask) as usize
    }
    /// IOVA of the descriptor at a position.
    pub fn desc_iova(&self, pos: u32) -> u64 {
        self.base_iova + self.slot(pos) as u64 * SLOT_SIZE
    }
    /// IOVA of the descriptor after `pos` (what its `next` field holds).
    pub fn next_iova(&self, pos: u32) -> u64 {
        self.desc_iova(pos.wrapping_add(1))
    }
    /// Descriptors written but not yet reaped.
    pub fn used(&self) -> u32 {
        self.head.wrapping_sub(self.tail)
    }
    /// Descriptors announced to the device and not yet reaped.
    pub fn in_flight(&self) -> u32 {
        self.issued.wrapping_sub(self.tail)
    }
    /// Descriptors written but not yet announced.
    pub fn pending(&self) -> u32 {
        self.head.wrapping_sub(self.issued)
    }
    /// Free slots (one slot always stays empty).
    pub fn free(&self) -> u32 {
        self.mask - self.used()
    }
    /// Operations (with or without token) written and not yet reaped.
    pub fn ops(&self) -> u32 {
        self.ops
    }
    /// Operations with a token (the ones a caller waits for) written and not yet reaped;
    /// internal descriptors (null, fence) are not counted.
    pub fn token_ops(&self) -> u32 {
        self.token_ops
    }
    /// The token the next operation will get.
    pub fn next_token(&self) -> Token {
        Token(self.next_token)
    }

    /// Appends an operation of `ndesc` descriptors. Returns the position of its first
    /// descriptor (the caller writes descriptors `first..first+ndesc`) and its token.
    pub fn push_op(&mut self, ndesc: u32, payload: P) -> Result<(u32, Token), RingFull> {
        let t = Token(self.next_token);
        let first = self.push(ndesc, Some(t), payload)?;
        self.next_token += 1;
        Ok((first, t))
    }

    /// Appends internal descriptors (null, fence) that produce no completion.
    pub fn push_internal(&mut self, ndesc: u32, payload: P) -> Result<u32, RingFull> {
        self.push(ndesc, None, payload)
    }

    fn push(&mut self, ndesc: u32, token: Option<Token>, payload: P) -> Result<u32, RingFull> {
        let free = self.free();
        if ndesc == 0 || ndesc > free {
            return Err(RingFull {
                needed: ndesc,
                free,
            });
        }
        let first = self.head;
        let last = first.wrapping_add(ndesc - 1);
        let s = self.slot(last);
        self.slots[s] = Some(OpEntry {
            token,
            first,
            ndesc,
            payload,
        });
        self.head = first.wrapping_add(ndesc);
        self.ops += 1;
        self.token_ops += u32::from(token.is_some());
        Ok(first)
    }

    /// The position of the last written descriptor if it ends an operation that has not been
    /// announced to the device yet (so its control bits may still be changed, e.g. for a fence).
    pub fn last_unissued(&self) -> Option<u32> {
        if self.pending() == 0 {
            return None;
        }
        let last = self.head.wrapping_sub(1);
        self.slots[self.slot(last)].as_ref().map(|_| last)
    }

    /// Marks everything written as announced; returns the DMACOUNT value to write, or `None`
    /// if nothing was pending (no doorbell needed).
    pub fn issue(&mut self) -> Option<u16> {
        if self.pending() == 0 {
            return None;
        }
        self.issued = self.head;
        Some(self.dmacount())
    }

    /// The DMACOUNT value that announces everything issued so far in the current chain.
    pub fn dmacount(&self) -> u16 {
        self.issued.wrapping_sub(self.chain_start) as u16
    }

    /// Decodes a completed-descriptor address (CHANSTS bits 63:6) against the in-flight window.
    pub fn decode(&self, addr: u64) -> Completed {
        let addr = addr & crate::regs::chansts::COMPLETED_ADDR_MASK;
        if addr == 0 {
            return Completed::Unknown;
        }
        let Some(off) = addr.checked_sub(self.base_iova) else {
            return Completed::Unknown;
        };
        let idx = off / SLOT_SIZE;
        if idx > self.mask as u64 {
            return Completed::Unknown;
        }
        let idx = idx as u32;
        let delta = idx.wrapping_sub(self.tail) & self.mask;
        if delta < self.in_flight() {
            Completed::Pos(self.tail.wrapping_add(delta))
        } else if delta == self.mask {
            // tail - 1: already reaped.
            Completed::Nothing
        } else {
            Completed::Unknown
        }
    }

    /// Reaps every descriptor up to and including `pos` (which must come from
    /// [`Ring::decode`]), calling `f` for each operation whose last descriptor is reaped.
    /// Returns the number of operations handed to `f`.
    pub fn reap_through(&mut self, pos: u32, mut f: impl FnMut(OpEntry<P>)) -> u32 {
        let n = pos.wrapping_sub(self.tail).wrapping_add(1);
        if n > self.in_flight() {
            return 0;
        }
        let mut count = 0;
        for _ in 0..n {
            if let Some(op) = self.take_tail() {
                count += 1;
                f(op);
            }
        }
        count
    }

    /// Advances `tail` by one slot and takes the record ending there, if any.
    fn take_tail(&mut self) -> Option<OpEntry<P>> {
        let s = self.slot(self.tail);
        self.tail = self.tail.wrapping_add(1);
        let op = self.slots[s].take()?;
        self.ops -= 1;
        self.token_ops -= u32::from(op.token.is_some());
        Some(op)
    }

    /// Removes every written operation (in flight and pending) in order, for error recovery.
    /// The first operation handed to `f` is the one whose descriptors include `tail` (the
    /// failing one when the channel halted right after the last reaped descriptor); the flag
    /// passed to `f` is true for it. Leaves the ring empty with `tail == issued == head`.
    pub fn drain(&mut self, mut f: impl FnMut(OpEntry<P>, bool)) -> u32 {
        let mut count = 0;
        let mut first = true;
        while self.tail != self.head {
            if let Some(op) = self.take_tail() {
                count += 1;
                f(op, first);
                first = false;
            }
        }
        self.issued = self.head;
        count
    }

    /// Starts a new chain at `head` (after a reset, CHAINADDR is rewritten to
    /// [`Ring::desc_iova`]`(head)`): DMACOUNT counts from 0 again. The ring must be empty
    /// ([`Ring::drain`] first).
    pub fn restart_chain(&mut self) -> u32 {
        debug_assert_eq!(self.used(), 0, "restart with descriptors outstanding");
        self.tail = self.head;
        self.issued = self.head;
        self.chain_start = self.head;
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(order: u32) -> Ring<u32> {
        Ring::new(order, 0x10_0000)
    }

    #[test]
    fn empty_ring_keeps_one_slot() {
        let r = ring(3);
        assert_eq!(r.size(), 8);
        assert_eq!(r.free(), 7);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.decode(0x10_0000 - 64), Completed::Unknown);
    }

    #[test]
    fn push_issue_reap() {
        let mut r = ring(3);
        let (p0, t0) = r.push_op(1, 10).unwrap();
        let (p1, t1) = r.push_op(3, 11).unwrap();
        assert_eq!((p0, p1), (0, 1));
        assert_eq!((t0, t1), (Token(0), Token(1)));
        assert_eq!(r.free(), 3);
        assert_eq!(r.pending(), 4);
        assert_eq!(
            r.push_op(4, 12).unwrap_err(),
            RingFull { needed: 4, free: 3 }
        );
        assert_eq!(r.issue(), Some(4));
        assert_eq!(r.issue(), None, "nothing new: no doorbell");
        // The device reports the first op's descriptor.
        assert_eq!(r.decode(r.desc_iova(0)), Completed::Pos(0));
        let mut got = vec![];
        assert_eq!(r.reap_through(0, |op| got.push((op.token, op.payload))), 1);
        assert_eq!(got, vec![(Some(t0), 10)]);
        // Same address again: nothing new.
        assert_eq!(r.decode(r.desc_iova(0)), Completed::Nothing);
        // A middle descriptor of op 1 (only possible on halt): reaps no op.
        assert_eq!(r.decode(r.desc_iova(2)), Completed::Pos(2));
        assert_eq!(r.reap_through(2, |_| panic!("op 1 not finished")), 0);
        assert_eq!(r.decode(r.desc_iova(3)), Completed::Pos(3));
        assert_eq!(r.reap_through(3, |op| got.push((op.token, op.payload))), 1);
        assert_eq!(got[1], (Some(t1), 11));
        assert_eq!(r.used(), 0);
        assert_eq!(r.ops(), 0);
    }

    #[test]
    fn decode_rejects_garbage() {
        let mut r = ring(3);
        r.push_op(2, 0).unwrap();
        r.issue();
        // Not in flight yet beyond position 1.
        assert_eq!(r.decode(r.desc_iova(5)), Completed::Unknown);
        assert_eq!(r.decode(0), Completed::Unknown);
        assert_eq!(r.decode(0x10_0000 + 8 * 64), Completed::Unknown);
        assert_eq!(r.decode(0x0f_0000), Completed::Unknown);
        // Low status bits are ignored.
        assert_eq!(r.decode(r.desc_iova(1) | 0x1), Completed::Pos(1));
        // An unissued descriptor is not in flight.
        r.push_op(1, 0).unwrap();
        assert_eq!(r.decode(r.desc_iova(2)), Completed::Unknown);
    }

    #[test]
    fn wraps_ring_and_dmacount() {
        let mut r = ring(4);
        let mut expected_token = 0u64;
        let mut reaped = 0u64;
        // 200_000 descriptors: the 16-slot ring wraps 12_500 times, DMACOUNT wraps 3 times.
        let mut total_desc: u64 = 0;
        let mut last_count = 0u16;
        while total_desc < 200_000 {
            let n = 1 + (total_desc % 3) as u32;
            while r.free() >= n {
                r.push_op(n, total_desc as u32).unwrap();
                total_desc += n as u64;
            }
            let c = r.issue().unwrap();
            assert_eq!(c, (total_desc % 65536) as u16);
            assert!(c != last_count);
            last_count = c;
            let last = r.head().wrapping_sub(1);
            let Completed::Pos(p) = r.decode(r.desc_iova(last)) else {
                panic!("last issued must decode")
            };
            r.reap_through(p, |op| {
                assert_eq!(op.token, Some(Token(expected_token)));
                expected_token += 1;
                reaped += 1;
            });
        }
        assert_eq!(reaped, expected_token);
        assert_eq!(r.used(), 0);
    }

    #[test]
    fn free_running_positions_wrap_u32() {
        let mut r = ring(2);
        // Move the counters near u32::MAX.
        r.head = u32::MAX - 1;
        r.issued = u32::MAX - 1;
        r.tail = u32::MAX - 1;
        r.chain_start = u32::MAX - 1;
        for i in 0..3 {
            r.push_op(1, i).unwrap();
        }
        assert_eq!(r.issue(), Some(3));
        let last = r.head().wrapping_sub(1);
        assert_eq!(last, 0);
        assert_eq!(r.decode(r.desc_iova(last)), Completed::Pos(0));
        assert_eq!(r.reap_through(0, |_| {}), 3);
    }

    #[test]
    fn drain_marks_first_and_restart_resets_dmacount() {
        let mut r = ring(3);
        r.push_op(1, 0).unwrap();
        r.push_op(2, 1).unwrap();
        r.push_op(1, 2).unwrap();
        r.issue();
        r.push_op(1, 3).unwrap(); // pending, never issued
        assert_eq!(r.reap_through(0, |_| {}), 1);
        let mut seen = vec![];
        assert_eq!(r.drain(|op, first| seen.push((op.payload, first))), 3);
        assert_eq!(seen, vec![(1, true), (2, false), (3, false)]);
        assert_eq!(r.used(), 0);
        let start = r.restart_chain();
        assert_eq!(start, 5);
        r.push_internal(1, 99).unwrap();
        assert_eq!(
            r.issue(),
            Some(1),
            "DMACOUNT restarts at 0 with the new chain"
        );
        assert_eq!(r.next_token(), Token(4));
    }

    #[test]
    fn last_unissued_only_for_pending_ops() {
        let mut r = ring(3);
        assert_eq!(r.last_unissued(), None);
        r.push_op(2, 0).unwrap();
        assert_eq!(r.last_unissued(), Some(1));
        r.issue();
        assert_eq!(r.last_unissued(), None);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Act {
            Push(u32),
            Internal,
            Issue,
            /// Complete the k-th (mod in-flight) in-flight descriptor.
            Complete(u32),
            /// Halt: drain everything and start a new chain.
            Halt,
        }

        fn act() -> impl Strategy<Value = Act> {
            prop_oneof![
                6 => (1u32..5).prop_map(Act::Push),
                1 => Just(Act::Internal),
                3 => Just(Act::Issue),
                4 => any::<u32>().prop_map(Act::Complete),
                1 => Just(Act::Halt),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]
            /// Against a reference: every token is reported exactly once, in order; counts
            /// add up; DMACOUNT is the descriptor count since the chain start mod 2^16; every
            /// in-flight slot decodes to its position, the last reaped one to Nothing.
            #[test]
            fn ring_matches_reference(order in 2u32..6, acts in proptest::collection::vec(act(), 1..400)) {
                let mut r: Ring<u64> = Ring::new(order, 0x4000_0000);
                let mut next_token = 0u64;
                let mut reported: Vec<u64> = vec![];
                let mut since_chain: u64 = 0; // descriptors issued since the chain start
                for a in acts {
                    match a {
                        Act::Push(n) => {
                            let free = r.free();
                            match r.push_op(n, next_token) {
                                Ok((_, t)) => {
                                    prop_assert!(n <= free);
                                    prop_assert_eq!(t, Token(next_token));
                                    next_token += 1;
                                }
                                Err(e) => prop_assert_eq!(e, RingFull { needed: n, free }),
                            }
                        }
                        Act::Internal => { let _ = r.push_internal(1, u64::MAX); }
                        Act::Issue => {
                            let p = r.pending() as u64;
                            match r.issue() {
                                Some(c) => {
                                    since_chain += p;
                                    prop_assert_eq!(c as u64, since_chain % 65536);
                                }
                                None => prop_assert_eq!(p, 0),
                            }
                        }
                        Act::Complete(k) => {
                            let inf = r.in_flight();
                            if inf > 0 {
                                let pos = r.tail().wrapping_add(k % inf);
                                prop_assert_eq!(r.decode(r.desc_iova(pos)), Completed::Pos(pos));
                                r.reap_through(pos, |op| if let Some(t) = op.token { reported.push(t.0) });
                                prop_assert_eq!(r.decode(r.desc_iova(pos)), Completed::Nothing);
                            }
                        }
                        Act::Halt => {
                            r.drain(|op, _| if let Some(t) = op.token { reported.push(t.0) });
                            r.restart_chain();
                            since_chain = 0;
                        }
                    }
                    prop_assert_eq!(r.free() + r.used(), r.size() - 1);
                    prop_assert!(r.in_flight() <= r.used());
                    prop_assert_eq!(r.token_ops() as u64, next_token - reported.len() as u64);
                    prop_assert!(r.token_ops() <= r.ops());
                    for i in 0..r.in_flight() {
                        let pos = r.tail().wrapping_add(i);
                        prop_assert_eq!(r.decode(r.desc_iova(pos)), Completed::Pos(pos));
                    }
                }
                // Everything reported so far is a prefix of the tokens, in order.
                let expect: Vec<u64> = (0..reported.len() as u64).collect();
                prop_assert_eq!(&reported, &expect);
                // Drain the rest: every token exactly once.
                r.drain(|op, _| if let Some(t) = op.token { reported.push(t.0) });
                let all: Vec<u64> = (0..next_token).collect();
                prop_assert_eq!(reported, all);
            }
        }
    }

    #[test]
    #[should_panic]
    fn order_too_large() {
        let _ = ring(17);
    }
}
