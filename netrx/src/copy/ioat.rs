//! The I/OAT copy engine: [`CopyEngine`] over one `ioat_driver::Channel` — a real channel
//! through VFIO or the software model (whose engine runs on its own thread with its timing
//! model).
//!
//! Every DMA-capable region (frame memory, registered buffer pools) is mapped once, when the
//! engine is created or when [`IoatEngine::map_regions`] is called after adding regions; ops
//! use `Channel::copy_regions`, so the driver pins both regions until the op is reported and a
//! region can never be unmapped under the device.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use ioat_driver::regs::RegisterAccess;
use ioat_driver::{Channel, DmaMapper, DmaRegion, MapError, OpError, SubmitError};

use super::engine::{Completion, CopyEngine, CopyOp, EngineError};
use super::mem::{MemError, RegionId, RegionMemory, Regions};

struct Mapped {
    dma: DmaRegion,
    /// Keeps the memory alive at least as long as the mapping.
    mem: Arc<dyn RegionMemory>,
}

/// Copy engine over an I/OAT channel.
pub struct IoatEngine<R: RegisterAccess> {
    ch: ManuallyDrop<Channel<R>>,
    mapper: Arc<dyn DmaMapper>,
    mapped: HashMap<RegionId, Mapped>,
    /// Driver token -> copier cookie.
    tokens: HashMap<u64, u64>,
    scratch: Vec<ioat_driver::Completion>,
    aborted: Vec<Completion>,
}

impl<R: RegisterAccess> std::fmt::Debug for IoatEngine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoatEngine")
            .field("channel", &*self.ch)
            .field("regions", &self.mapped.len())
            .field("in_flight", &self.tokens.len())
            .finish()
    }
}

impl<R: RegisterAccess> IoatEngine<R> {
    /// Wraps an open channel and maps every DMA-capable region of `regions` with `mapper`
    /// (the device's mapper: `Device::mapper()`), recording each region's IOVA.
    pub fn new(
        ch: Channel<R>,
        mapper: Arc<dyn DmaMapper>,
        regions: &mut Regions,
    ) -> Result<Self, MapError> {
        let mut e = Self {
            ch: ManuallyDrop::new(ch),
            mapper,
            mapped: HashMap::new(),
            tokens: HashMap::new(),
            scratch: Vec::new(),
            aborted: Vec::new(),
        };
        e.map_regions(regions)?;
        Ok(e)
    }

    /// Maps DMA-capable regions not mapped yet (call after adding regions). Returns how many
    /// were mapped.
    pub fn map_regions(&mut self, regions: &mut Regions) -> Result<usize, MapError> {
        let mut n = 0;
        for id in regions.ids().collect::<Vec<_>>() {
            if !regions.dma_ok(id) || self.mapped.contains_key(&id) {
                continue;
            }
            let mem = regions.memory(id).map_err(|e| MapError::Os {
                what: "region",
                msg: e.to_string(),
            })?;
            // SAFETY: `mem` is kept alive in `Mapped` for as long as the DmaRegion (and is
            // leaked in Drop if the device might still use it); its bytes are only reached
            // through raw pointers (RegionMemory contract). Alignment is checked by register.
            let dma = unsafe { DmaRegion::register(self.mapper.clone(), mem.as_ptr(), mem.len())? };
            regions
                .set_iova(id, dma.iova())
                .expect("id comes from regions");
            self.mapped.insert(id, Mapped { dma, mem });
            n += 1;
        }
        Ok(n)
    }

    /// The channel (stats, register snapshot).
    pub fn channel(&self) -> &Channel<R> {
        &self.ch
    }
}

fn submit_error(e: SubmitError) -> EngineError {
    match e {
        SubmitError::RingFull { needed, free } => EngineError::Busy {
            in_flight: needed as usize,
            capacity: free as usize,
        },
        SubmitError::ZeroLength => EngineError::BadLength { len: 0, max: 0 },
        SubmitError::ChannelDown { reason, .. } => EngineError::Down(reason),
        other => EngineError::Device(other.to_string()),
    }
}

fn op_error(e: OpError) -> EngineError {
    match e {
        OpError::Reset | OpError::Aborted { .. } => EngineError::Aborted,
        other => EngineError::Device(other.to_string()),
    }
}

impl<R: RegisterAccess> CopyEngine for IoatEngine<R> {
    fn name(&self) -> &'static str {
        "ioat"
    }
    fn is_dma(&self) -> bool {
        true
    }
    fn submit(&mut self, mem: &Regions, op: CopyOp) -> Result<(), EngineError> {
        mem.resolve(op.src, op.len)?;
        mem.resolve(op.dst, op.len)?;
        let region = |id: RegionId| {
            self.mapped
                .get(&id)
                .map(|m| &m.dma)
                .ok_or(EngineError::Mem(MemError::NotMapped(id)))
        };
        let (src, dst) = (region(op.src.region)?, region(op.dst.region)?);
        let token = self
            .ch
            .copy_regions(src, op.src.offset, dst, op.dst.offset, op.len)
            .map_err(submit_error)?;
        self.tokens.insert(token.0, op.cookie);
        Ok(())
    }
    fn flush(&mut self, _mem: &Regions) {
        self.ch.flush();
    }
    fn poll(&mut self, _mem: &Regions, out: &mut Vec<Completion>) -> usize {
        let start = out.len();
        out.append(&mut self.aborted);
        self.ch.poll(&mut self.scratch);
        for c in self.scratch.drain(..) {
            if let Some(cookie) = self.tokens.remove(&c.token.0) {
                out.push(Completion {
                    cookie,
                    status: c.result.map_err(op_error),
                });
            }
        }
        out.len() - start
    }
    fn in_flight(&self) -> usize {
        self.tokens.len() + self.aborted.len()
    }
    fn capacity(&self) -> usize {
        self.ch.capacity() as usize
    }
    fn max_len(&self) -> usize {
        self.ch.info().piece_size().min(usize::MAX as u64) as usize
    }
    fn busy(&self) -> bool {
        self.ch.free_slots() == 0
    }
    fn healthy(&self) -> bool {
        self.ch.down_reason().is_none()
    }
    fn abort(&mut self, _mem: &Regions) {
        // A reset stops the device; every unreported op comes back as Reset -> Aborted.
        match self.ch.restart(&mut self.scratch) {
            Ok(()) => {
                for c in self.scratch.drain(..) {
                    if let Some(cookie) = self.tokens.remove(&c.token.0) {
                        self.aborted.push(Completion {
                            cookie,
                            status: Err(EngineError::Aborted),
                        });
                    }
                }
            }
            Err(e) => {
                // Not stopped: the ops stay in flight (and their frames held) — the device
                // might still write them.
                tracing::error!(error = %e, "I/OAT channel restart after a DMA timeout failed");
            }
        }
    }
}

impl<R: RegisterAccess> Drop for IoatEngine<R> {
    fn drop(&mut self) {
        // SAFETY: `ch` is dropped exactly once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ch) };
        // Dropping the channel resets it; ops it could not stop keep their region pins (the
        // driver leaks them). Such a region stays mapped, so its memory must stay too.
        for (_, m) in self.mapped.drain() {
            if m.dma.pins() > 0 {
                std::mem::forget(m.mem);
            }
        }
    }
}
