//! The copy path: moving received payload from frames into application buffers, by CPU or by
//! a DMA engine, under a policy.
//!
//! - [`policy`]: pure decisions (`cpu`, `netdma` = Linux 2.6.32 NET_DMA rules, `adaptive`).
//! - [`engine`]: the [`CopyEngine`] trait with asynchronous completions; CPU and null engines.
//! - [`ioat`]: the I/OAT engine over an `ioat_driver::Channel` (device or model).
//! - [`mem`]: regions of frame memory and registered buffers ([`BufferPool`]), mapped once.
//! - [`copier`]: one poller's copy path — policy + engine + ownership bookkeeping ([`Copier`]).
//! - [`stats`]: counters per stream and per poller.
//!
//! The rules and why they differ from NET_DMA: `docs/copy-policy.md`.

pub mod copier;
pub mod engine;
pub mod ioat;
pub mod mem;
pub mod policy;
pub mod stats;

pub use copier::{
    Clock, Copier, CopierConfig, CopyError, Event, FrameId, ManualClock, MonotonicClock, Segment,
    StreamId,
};
pub use engine::{
    CopyEngine, CopyOp, CpuEngine, EngineCompletion, EngineError, FaultPlan, NullConfig, NullEngine,
};
pub use ioat::IoatEngine;
pub use mem::{
    region_bytes, BufId, BufferPool, HeapRegion, MemError, MemRef, RegionId, RegionMemory, Regions,
};
pub use policy::{
    ChannelView, CostModel, Decision, NoDma, Policy, PolicyConfig, PolicyKind, ReaderView,
    RecvRequest, SegmentView, Wakeup, NETDMA_DEFAULT_COPYBREAK,
};
pub use stats::CopyStats;
