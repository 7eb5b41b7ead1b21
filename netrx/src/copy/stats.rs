//! Counters of the copy path, kept per stream and for the whole poller.

use super::policy::{Decision, NoDma, Wakeup};

/// What the copy path did. Every policy decision and wakeup lands here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Payload bytes copied by the CPU (including redos).
    pub bytes_cpu: u64,
    /// Payload bytes copied by DMA (successful ops only).
    pub bytes_dma: u64,
    /// Bytes copied again by CPU after a DMA op failed or was aborted (part of `bytes_cpu`).
    pub bytes_redo: u64,
    /// Bytes copied by the CPU straight from the received frame while the endpoint verified
    /// their checksum in the same pass (direct delivery; part of `bytes_cpu`).
    pub direct_bytes: u64,
    /// DMA ops (descriptors) completed successfully.
    pub dma_ops: u64,
    /// Doorbells rung (one per descriptor chain).
    pub doorbells: u64,
    /// DMA ops that failed or were aborted.
    pub dma_errors: u64,
    /// Engine aborts because an op exceeded its timeout.
    pub dma_timeouts: u64,
    /// DMA ops redone by CPU.
    pub cpu_redos: u64,
    /// DMA picked by the policy but refused by the engine (busy): copied by CPU instead.
    pub busy_fallbacks: u64,
    /// Segments placed: copied by CPU at once / sent to DMA / left queued for the reader.
    pub decided_cpu: u64,
    pub decided_dma: u64,
    pub decided_queue: u64,
    /// Receives armed for DMA, and receives not armed, by reason.
    pub armed_dma: u64,
    pub not_armed: [u64; NoDma::COUNT],
    /// Wakeups of a waiting reader, by reason.
    pub wake_full: u64,
    pub wake_psh: u64,
    pub wake_pressure: u64,
    pub wake_lowat: u64,
    /// Receives completed, and how many returned without waiting.
    pub recvs: u64,
    pub recvs_immediate: u64,
    /// Receive-core nanoseconds spent copying or driving DMA (fed by the shell's clock).
    pub copy_ns: u64,
}

impl CopyStats {
    /// Mean size of a completed DMA op in bytes (0 without ops).
    pub fn mean_dma_size(&self) -> f64 {
        if self.dma_ops == 0 {
            0.0
        } else {
            self.bytes_dma as f64 / self.dma_ops as f64
        }
    }

    /// Share of payload bytes moved by DMA, 0..=1.
    pub fn dma_share(&self) -> f64 {
        let total = self.bytes_cpu + self.bytes_dma;
        if total == 0 {
            0.0
        } else {
            self.bytes_dma as f64 / total as f64
        }
    }

    /// Total wakeups.
    pub fn wakeups(&self) -> u64 {
        self.wake_full + self.wake_psh + self.wake_pressure + self.wake_lowat
    }

    pub fn count_decision(&mut self, d: Decision) {
        match d {
            Decision::CpuCopyNow => self.decided_cpu += 1,
            Decision::DmaEarlyCopy => self.decided_dma += 1,
            Decision::Queue => self.decided_queue += 1,
        }
    }

    pub fn count_wakeup(&mut self, w: Wakeup) {
        match w {
            Wakeup::Full => self.wake_full += 1,
            Wakeup::Psh => self.wake_psh += 1,
            Wakeup::Pressure => self.wake_pressure += 1,
            Wakeup::Lowat => self.wake_lowat += 1,
        }
    }

    pub fn count_arm(&mut self, arm: Result<(), NoDma>) {
        match arm {
            Ok(()) => self.armed_dma += 1,
            Err(r) => self.not_armed[r as usize] += 1,
        }
    }

    /// Adds another set of counters (e.g. per-stream into a total).
    pub fn add(&mut self, o: &CopyStats) {
        self.bytes_cpu += o.bytes_cpu;
        self.bytes_dma += o.bytes_dma;
        self.bytes_redo += o.bytes_redo;
        self.direct_bytes += o.direct_bytes;
        self.dma_ops += o.dma_ops;
        self.doorbells += o.doorbells;
        self.dma_errors += o.dma_errors;
        self.dma_timeouts += o.dma_timeouts;
        self.cpu_redos += o.cpu_redos;
        self.busy_fallbacks += o.busy_fallbacks;
        self.decided_cpu += o.decided_cpu;
        self.decided_dma += o.decided_dma;
        self.decided_queue += o.decided_queue;
        self.armed_dma += o.armed_dma;
        for (a, b) in self.not_armed.iter_mut().zip(o.not_armed.iter()) {
            *a += b;
        }
        self.wake_full += o.wake_full;
        self.wake_psh += o.wake_psh;
        self.wake_pressure += o.wake_pressure;
        self.wake_lowat += o.wake_lowat;
        self.recvs += o.recvs;
        self.recvs_immediate += o.recvs_immediate;
        self.copy_ns += o.copy_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_numbers() {
        let mut s = CopyStats {
            bytes_cpu: 100,
            bytes_dma: 300,
            dma_ops: 3,
            ..Default::default()
        };
        assert_eq!(s.mean_dma_size(), 100.0);
        assert_eq!(s.dma_share(), 0.75);
        s.count_wakeup(Wakeup::Psh);
        s.count_wakeup(Wakeup::Lowat);
        s.count_decision(Decision::Queue);
        s.count_arm(Err(NoDma::Peek));
        let mut t = CopyStats::default();
        t.add(&s);
        t.add(&s);
        assert_eq!(t.wakeups(), 4);
        assert_eq!(t.decided_queue, 2);
        assert_eq!(t.not_armed[NoDma::Peek as usize], 2);
        assert_eq!(CopyStats::default().mean_dma_size(), 0.0);
    }
}
