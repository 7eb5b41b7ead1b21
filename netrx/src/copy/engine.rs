//! The copy-engine trait (asynchronous completions) and two engines: CPU memcpy and the null
//! test engine. The I/OAT engine lives in [`super::ioat`] when the driver provides a channel.

use std::collections::{BTreeSet, VecDeque};

use thiserror::Error;

use super::mem::{MemError, MemRef, Regions};

/// One copy: `len` bytes from `src` to `dst`; `cookie` comes back in the [`EngineCompletion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOp {
    pub src: MemRef,
    pub dst: MemRef,
    pub len: usize,
    pub cookie: u64,
}

/// Why an engine refused or failed an op.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    #[error("engine busy: {in_flight} ops in flight of {capacity}; copy by CPU or poll completions first")]
    Busy { in_flight: usize, capacity: usize },
    #[error("bad copy reference: {0}")]
    Mem(#[from] MemError),
    #[error("copy of {len} bytes is empty or above the engine's limit of {max}; split it")]
    BadLength { len: usize, max: usize },
    #[error("device error: {0}; the op's bytes must be copied again by CPU")]
    Device(String),
    /// The I/OAT driver failed the op (halt, timeout); the driver's error is kept.
    #[error("DMA op failed: {0}; the op's bytes must be copied again by CPU")]
    Op(#[source] ioat_driver::OpError),
    /// The I/OAT driver refused the op for a reason other than a full ring or a down channel.
    #[error("DMA submit refused: {0}; copy by CPU")]
    Submit(#[source] ioat_driver::SubmitError),
    #[error("op aborted by an engine reset; the op's bytes must be copied again by CPU")]
    Aborted,
    #[error("engine is down: {0}; use the CPU path")]
    Down(String),
}

/// Result of one submitted op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineCompletion {
    pub cookie: u64,
    pub status: Result<(), EngineError>,
}

/// A copy engine with asynchronous completions.
///
/// Contract: an op accepted by [`submit`](CopyEngine::submit) is reported exactly once by
/// [`poll`](CopyEngine::poll) (success, failure or abort). Until then the engine may read `src`
/// and write `dst` at any time; afterwards it never touches them again. On failure `dst` holds
/// undefined bytes. [`abort`](CopyEngine::abort) stops the engine so that no accepted op touches
/// memory after it returns; the ops it cut short are reported as [`EngineError::Aborted`].
pub trait CopyEngine {
    /// Short name for logs and stats ("cpu", "null", "ioat").
    fn name(&self) -> &'static str;
    /// True when copies run on a device asynchronously (the CPU engine copies inside submit).
    fn is_dma(&self) -> bool;
    /// Queues one op (not started before [`flush`](CopyEngine::flush) on DMA engines).
    fn submit(&mut self, mem: &Regions, op: CopyOp) -> Result<(), EngineError>;
    /// Starts every queued op (one doorbell for the whole chain).
    fn flush(&mut self, mem: &Regions);
    /// Appends completions to `out`; returns how many were appended.
    fn poll(&mut self, mem: &Regions, out: &mut Vec<EngineCompletion>) -> usize;
    /// Ops accepted and not yet reported.
    fn in_flight(&self) -> usize;
    /// Most ops that may be in flight at once.
    fn capacity(&self) -> usize;
    /// Largest single op in bytes.
    fn max_len(&self) -> usize {
        usize::MAX
    }
    /// True when no more ops can be accepted now.
    fn busy(&self) -> bool {
        self.in_flight() >= self.capacity()
    }
    /// False once the engine gave up (e.g. a channel that cannot be reset).
    fn healthy(&self) -> bool {
        true
    }
    /// Stops the engine; see the trait contract.
    fn abort(&mut self, mem: &Regions);
}

/// CPU memcpy: copies inside `submit`, completes at the next `poll`.
#[derive(Debug, Default)]
pub struct CpuEngine {
    done: Vec<EngineCompletion>,
}

impl CpuEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl CopyEngine for CpuEngine {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn is_dma(&self) -> bool {
        false
    }
    fn submit(&mut self, mem: &Regions, op: CopyOp) -> Result<(), EngineError> {
        mem.copy(op.src, op.dst, op.len)?;
        self.done.push(EngineCompletion {
            cookie: op.cookie,
            status: Ok(()),
        });
        Ok(())
    }
    fn flush(&mut self, _mem: &Regions) {}
    fn poll(&mut self, _mem: &Regions, out: &mut Vec<EngineCompletion>) -> usize {
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }
    fn in_flight(&self) -> usize {
        self.done.len()
    }
    fn capacity(&self) -> usize {
        usize::MAX
    }
    fn abort(&mut self, _mem: &Regions) {}
}

/// Faults the null engine injects, by op index (0 = first op accepted).
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// These ops complete with a device error (after scribbling over part of `dst`).
    pub fail: BTreeSet<u64>,
    /// These ops never complete (and hold up the ops behind them) until `abort`.
    pub hang: BTreeSet<u64>,
    /// From this op on, every op fails and the engine reports itself unhealthy.
    pub dead_from: Option<u64>,
}

/// Settings of the null engine.
#[derive(Debug, Clone)]
pub struct NullConfig {
    /// Polls between the doorbell and an op's completion (its latency in ticks).
    pub latency_polls: u32,
    /// Most ops completed per poll (its bandwidth); 0 = no limit.
    pub ops_per_poll: usize,
    /// Most ops in flight.
    pub capacity: usize,
    /// Largest op.
    pub max_len: usize,
    pub faults: FaultPlan,
}

impl Default for NullConfig {
    fn default() -> Self {
        Self {
            latency_polls: 2,
            ops_per_poll: 0,
            capacity: 64,
            max_len: 1 << 20,
            faults: FaultPlan::default(),
        }
    }
}

#[derive(Debug)]
struct NullOp {
    op: CopyOp,
    index: u64,
    ready_at: u64,
}

/// Test engine: copies at completion time, after a latency in polls, in submission order.
/// Between submit and completion it fills `dst` with the poison byte [`NullEngine::POISON`],
/// so a buffer read before its copies finished is caught by a content check.
#[derive(Debug)]
pub struct NullEngine {
    cfg: NullConfig,
    queued: Vec<NullOp>,
    issued: VecDeque<NullOp>,
    aborted: Vec<u64>,
    ticks: u64,
    next_index: u64,
    dead: bool,
}

impl NullEngine {
    pub const POISON: u8 = 0xDB;

    pub fn new(cfg: NullConfig) -> Self {
        Self {
            cfg,
            queued: Vec::new(),
            issued: VecDeque::new(),
            aborted: Vec::new(),
            ticks: 0,
            next_index: 0,
            dead: false,
        }
    }

    /// Ops accepted so far.
    pub fn ops_accepted(&self) -> u64 {
        self.next_index
    }
}

impl CopyEngine for NullEngine {
    fn name(&self) -> &'static str {
        "null"
    }
    fn is_dma(&self) -> bool {
        true
    }
    fn submit(&mut self, mem: &Regions, op: CopyOp) -> Result<(), EngineError> {
        if op.len == 0 || op.len > self.cfg.max_len {
            return Err(EngineError::BadLength {
                len: op.len,
                max: self.cfg.max_len,
            });
        }
        if self.busy() {
            return Err(EngineError::Busy {
                in_flight: self.in_flight(),
                capacity: self.cfg.capacity,
            });
        }
        mem.resolve(op.src, op.len)?;
        mem.fill(op.dst, op.len, Self::POISON)?;
        let index = self.next_index;
        self.next_index += 1;
        self.queued.push(NullOp {
            op,
            index,
            ready_at: 0,
        });
        Ok(())
    }

    fn flush(&mut self, _mem: &Regions) {
        let ready_at = self.ticks + u64::from(self.cfg.latency_polls);
        for mut q in self.queued.drain(..) {
            q.ready_at = ready_at;
            self.issued.push_back(q);
        }
    }

    fn poll(&mut self, mem: &Regions, out: &mut Vec<EngineCompletion>) -> usize {
        self.ticks += 1;
        let start = out.len();
        for cookie in self.aborted.drain(..) {
            out.push(EngineCompletion {
                cookie,
                status: Err(EngineError::Aborted),
            });
        }
        let limit = if self.cfg.ops_per_poll == 0 {
            usize::MAX
        } else {
            self.cfg.ops_per_poll
        };
        let mut done = 0;
        while done < limit {
            let Some(front) = self.issued.front() else {
                break;
            };
            if front.ready_at > self.ticks || self.cfg.faults.hang.contains(&front.index) {
                break;
            }
            let q = self.issued.pop_front().expect("front exists");
            done += 1;
            let f = &self.cfg.faults;
            let status = if self.dead || f.dead_from.is_some_and(|d| q.index >= d) {
                self.dead = true;
                Err(EngineError::Down(
                    "null engine marked dead by its fault plan".into(),
                ))
            } else if f.fail.contains(&q.index) {
                // A failed copy leaves garbage behind: copy half, scribble the rest.
                let half = q.op.len / 2;
                let _ = mem.copy(q.op.src, q.op.dst, half);
                let _ = mem.fill(q.op.dst.plus(half), q.op.len - half, 0xEE);
                Err(EngineError::Device(format!(
                    "injected fault on op {}",
                    q.index
                )))
            } else {
                mem.copy(q.op.src, q.op.dst, q.op.len)
                    .map_err(EngineError::from)
            };
            out.push(EngineCompletion {
                cookie: q.op.cookie,
                status,
            });
        }
        out.len() - start
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.issued.len() + self.aborted.len()
    }
    fn capacity(&self) -> usize {
        self.cfg.capacity
    }
    fn max_len(&self) -> usize {
        self.cfg.max_len
    }
    fn healthy(&self) -> bool {
        !self.dead
    }
    fn abort(&mut self, _mem: &Regions) {
        let cut = self.queued.drain(..).chain(self.issued.drain(..));
        self.aborted.extend(cut.map(|q| q.op.cookie));
        // A hung op is gone after an abort: forget its index so later ops are not held up.
        self.cfg.faults.hang.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::mem::HeapRegion;
    use std::sync::Arc;

    fn setup() -> (Regions, MemRef, MemRef) {
        let mut r = Regions::new();
        let a = r.add(Arc::new(HeapRegion::new(4096)), true);
        let b = r.add(Arc::new(HeapRegion::new(4096)), true);
        r.write(MemRef::new(a, 0), &[7u8; 100]).unwrap();
        (r, MemRef::new(a, 0), MemRef::new(b, 0))
    }

    #[test]
    fn cpu_engine_completes_at_next_poll() {
        let (r, s, d) = setup();
        let mut e = CpuEngine::new();
        e.submit(
            &r,
            CopyOp {
                src: s,
                dst: d,
                len: 100,
                cookie: 9,
            },
        )
        .unwrap();
        let mut out = vec![];
        assert_eq!(e.poll(&r, &mut out), 1);
        assert_eq!(
            out[0],
            EngineCompletion {
                cookie: 9,
                status: Ok(())
            }
        );
        let mut b = [0u8; 100];
        r.read(d, &mut b).unwrap();
        assert_eq!(b, [7u8; 100]);
    }

    #[test]
    fn null_engine_latency_poison_and_faults() {
        let (r, s, d) = setup();
        let mut faults = FaultPlan::default();
        faults.fail.insert(1);
        let mut e = NullEngine::new(NullConfig {
            latency_polls: 3,
            capacity: 2,
            faults,
            ..Default::default()
        });
        e.submit(
            &r,
            CopyOp {
                src: s,
                dst: d,
                len: 50,
                cookie: 1,
            },
        )
        .unwrap();
        e.submit(
            &r,
            CopyOp {
                src: s,
                dst: d.plus(50),
                len: 50,
                cookie: 2,
            },
        )
        .unwrap();
        assert!(e.busy());
        assert!(matches!(
            e.submit(
                &r,
                CopyOp {
                    src: s,
                    dst: d,
                    len: 1,
                    cookie: 3
                }
            ),
            Err(EngineError::Busy { .. })
        ));
        let mut b = [0u8; 100];
        r.read(d, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == NullEngine::POISON));
        let mut out = vec![];
        e.poll(&r, &mut out); // not flushed yet: nothing
        e.flush(&r);
        e.poll(&r, &mut out);
        e.poll(&r, &mut out);
        assert!(out.is_empty());
        e.poll(&r, &mut out);
        e.poll(&r, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].status, Ok(()));
        assert!(matches!(out[1].status, Err(EngineError::Device(_))));
        assert_eq!(e.in_flight(), 0);
        assert!(matches!(
            e.submit(
                &r,
                CopyOp {
                    src: s,
                    dst: d,
                    len: 0,
                    cookie: 3
                }
            ),
            Err(EngineError::BadLength { .. })
        ));
    }

    #[test]
    fn null_engine_hang_then_abort() {
        let (r, s, d) = setup();
        let mut faults = FaultPlan::default();
        faults.hang.insert(0);
        let mut e = NullEngine::new(NullConfig {
            latency_polls: 0,
            faults,
            ..Default::default()
        });
        e.submit(
            &r,
            CopyOp {
                src: s,
                dst: d,
                len: 10,
                cookie: 1,
            },
        )
        .unwrap();
        e.submit(
            &r,
            CopyOp {
                src: s,
                dst: d,
                len: 10,
                cookie: 2,
            },
        )
        .unwrap();
        e.flush(&r);
        let mut out = vec![];
        for _ in 0..10 {
            e.poll(&r, &mut out);
        }
        assert!(out.is_empty());
        e.abort(&r);
        e.poll(&r, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c.status == Err(EngineError::Aborted)));
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn null_engine_dead_and_rate() {
        let (r, s, d) = setup();
        let faults = FaultPlan {
            dead_from: Some(1),
            ..Default::default()
        };
        let mut e = NullEngine::new(NullConfig {
            latency_polls: 0,
            ops_per_poll: 1,
            faults,
            ..Default::default()
        });
        for c in 0..3 {
            e.submit(
                &r,
                CopyOp {
                    src: s,
                    dst: d,
                    len: 10,
                    cookie: c,
                },
            )
            .unwrap();
        }
        e.flush(&r);
        let mut out = vec![];
        assert_eq!(e.poll(&r, &mut out), 1);
        assert!(e.healthy());
        assert_eq!(e.poll(&r, &mut out), 1);
        assert!(!e.healthy());
        assert!(matches!(out[1].status, Err(EngineError::Down(_))));
    }
}
