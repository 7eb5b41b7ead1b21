//! Frame accounting for one UMEM (pure).
//!
//! Every UMEM frame is at any time in exactly one state; each transition checks the frame's
//! current state, so a descriptor the kernel hands back twice, an address outside the UMEM, or a
//! double release is detected (and counted) instead of corrupting the pool.

/// Where a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameState {
    /// Given to the kernel for receiving: in the fill ring, or taken by the kernel and maybe
    /// already in the RX ring.
    Fill = 0,
    /// Received and held by the application (until `release`).
    Held = 1,
    /// Allocated by the application for TX, being written.
    TxAlloc = 2,
    /// Free (the pool both TX allocations and fill-ring refills come from).
    Free = 3,
    /// Submitted for TX: in the TX ring, in the kernel, or in the completion ring.
    Tx = 4,
}

const N_STATES: usize = 5;

/// A UMEM frame index (chunk number).
pub type FrameId = u32;

/// A transition that did not match the frame's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame {0} is outside the UMEM")]
    OutOfRange(u64),
    #[error("frame {frame} is {actual:?}, expected {expected:?}")]
    WrongState {
        frame: FrameId,
        expected: FrameState,
        actual: FrameState,
    },
}

/// Counts per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub fill: u32,
    pub held: u32,
    pub tx_alloc: u32,
    pub free: u32,
    pub tx: u32,
}

impl StateCounts {
    pub fn total(&self) -> u32 {
        self.fill + self.held + self.tx_alloc + self.free + self.tx
    }
}

/// The state table.
#[derive(Debug, Clone)]
pub struct FrameTable {
    states: Vec<FrameState>,
    counts: [u32; N_STATES],
    free: Vec<FrameId>,
}

impl FrameTable {
    /// `n` frames, all free.
    pub fn new(n: u32) -> Self {
        let mut counts = [0; N_STATES];
        counts[FrameState::Free as usize] = n;
        Self {
            states: vec![FrameState::Free; n as usize],
            counts,
            free: (0..n).rev().collect(),
        }
    }

    pub fn len(&self) -> u32 {
        self.states.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn state(&self, f: FrameId) -> Option<FrameState> {
        self.states.get(f as usize).copied()
    }

    pub fn free_count(&self) -> u32 {
        self.counts[FrameState::Free as usize]
    }

    /// Take a free frame into state `to` (Fill or TxAlloc).
    pub fn take_free(&mut self, to: FrameState) -> Option<FrameId> {
        let f = self.free.pop()?;
        debug_assert_eq!(self.states[f as usize], FrameState::Free);
        self.set(f, to);
        Some(f)
    }

    /// Move `f` from `from` to `to`, checking its current state.
    pub fn transition(
        &mut self,
        f: u64,
        from: FrameState,
        to: FrameState,
    ) -> Result<FrameId, FrameError> {
        let id = u32::try_from(f).map_err(|_| FrameError::OutOfRange(f))?;
        let actual = *self
            .states
            .get(id as usize)
            .ok_or(FrameError::OutOfRange(f))?;
        if actual != from {
            return Err(FrameError::WrongState {
                frame: id,
                expected: from,
                actual,
            });
        }
        if from == FrameState::Free {
            // Rare path (direct moves out of Free are normally via take_free).
            if let Some(pos) = self.free.iter().rposition(|&x| x == id) {
                self.free.swap_remove(pos);
            }
        }
        self.set(id, to);
        Ok(id)
    }

    fn set(&mut self, f: FrameId, to: FrameState) {
        let from = self.states[f as usize];
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
        self.states[f as usize] = to;
        if to == FrameState::Free {
            self.free.push(f);
        }
    }

    pub fn counts(&self) -> StateCounts {
        let c = &self.counts;
        StateCounts {
            fill: c[0],
            held: c[1],
            tx_alloc: c[2],
            free: c[3],
            tx: c[4],
        }
    }

    /// Recount from the table and compare with the counters and the free list.
    pub fn check_consistent(&self) -> Result<(), String> {
        let mut c = [0u32; N_STATES];
        for s in &self.states {
            c[*s as usize] += 1;
        }
        if c != self.counts {
            return Err(format!(
                "counters {:?} disagree with the table {:?}",
                self.counts, c
            ));
        }
        if self.free.len() as u32 != c[FrameState::Free as usize] {
            return Err(format!(
                "free list has {} entries, {} frames are free",
                self.free.len(),
                c[FrameState::Free as usize]
            ));
        }
        if let Some(f) = self
            .free
            .iter()
            .find(|&&f| self.states[f as usize] != FrameState::Free)
        {
            return Err(format!("frame {f} is on the free list but not free"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FrameState::*;

    #[test]
    fn transitions_are_checked_and_counted() {
        let mut t = FrameTable::new(8);
        let a = t.take_free(Fill).unwrap();
        let b = t.take_free(TxAlloc).unwrap();
        assert_eq!(
            t.counts(),
            StateCounts {
                fill: 1,
                held: 0,
                tx_alloc: 1,
                free: 6,
                tx: 0
            }
        );
        t.transition(a as u64, Fill, Held).unwrap();
        // A second receive of the same frame is refused.
        assert_eq!(
            t.transition(a as u64, Fill, Held),
            Err(FrameError::WrongState {
                frame: a,
                expected: Fill,
                actual: Held
            })
        );
        assert_eq!(
            t.transition(99, Fill, Held),
            Err(FrameError::OutOfRange(99))
        );
        assert_eq!(
            t.transition(u64::MAX, Fill, Held),
            Err(FrameError::OutOfRange(u64::MAX))
        );
        t.transition(b as u64, TxAlloc, Tx).unwrap();
        t.transition(b as u64, Tx, Free).unwrap();
        t.transition(a as u64, Held, Free).unwrap();
        assert_eq!(t.counts().free, 8);
        assert_eq!(t.counts().total(), 8);
        t.check_consistent().unwrap();
    }

    proptest::proptest! {
        #[test]
        fn any_operation_sequence_keeps_the_table_consistent(
            ops in proptest::collection::vec((0u8..5, 0u8..5, 0u64..12), 0..200)
        ) {
            let states = [Fill, Held, TxAlloc, Free, Tx];
            let mut t = FrameTable::new(10);
            for (from, to, f) in ops {
                if from == 3 && f % 2 == 0 {
                    let _ = t.take_free(states[to as usize]);
                } else {
                    let _ = t.transition(f, states[from as usize], states[to as usize]);
                }
                proptest::prop_assert!(t.check_consistent().is_ok());
                proptest::prop_assert_eq!(t.counts().total(), 10);
            }
        }
    }
}
