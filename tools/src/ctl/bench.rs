//! `ioat-ctl bench`: DMA against CPU memcpy on the same buffers, by transfer size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use ioat_driver::channel::Completion;
use ioat_driver::dma::DmaRegion;
use ioat_driver::regs::RegisterAccess;
use ioat_driver::{Channel, ChannelConfig, Device};

/// Results for one transfer size.
#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    pub size: u64,
    /// Copies in flight per batch (one doorbell per batch).
    pub batch: u32,
    /// DMA bandwidth, GB/s (10^9 bytes per second), submit to last completion.
    pub dma_gbps: f64,
    /// CPU memcpy bandwidth on the same buffers, GB/s.
    pub cpu_gbps: f64,
    /// DMA latency of one copy (submit, doorbell, poll until complete), median, microseconds.
    pub dma_latency_us: f64,
    /// CPU memcpy time of one copy, median, microseconds.
    pub cpu_latency_us: f64,
    /// CPU time spent per DMA copy on submission (descriptor writes + doorbell share), ns;
    /// the 25th percentile over rounds, i.e. the cost when this thread is not preempted.
    pub dma_submit_ns: f64,
    /// dma_gbps / cpu_gbps.
    pub ratio: f64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub channel: u32,
    /// True for the software model: the DMA numbers come from its timing model.
    pub simulated: bool,
    pub model_timing: Option<String>,
    pub results: Vec<SizeResult>,
    /// Smallest size at which DMA bandwidth is at least CPU memcpy bandwidth, there and at the
    /// next size ([`crossover`]); `None` if the CPU stays faster.
    pub crossover_bytes: Option<u64>,
    /// Smallest size at which submitting a DMA copy costs the CPU less time than doing the
    /// memcpy itself, there and at the next size (the offload break-even).
    pub crossover_cpu_cost_bytes: Option<u64>,
    /// Whether caches were evicted before every round (`--cold`).
    pub cold: bool,
}

/// Options.
#[derive(Clone, Debug)]
pub struct BenchOpts {
    pub channel: u32,
    pub min_size: u64,
    pub max_size: u64,
    /// Measuring time per size and method.
    pub budget: Duration,
    /// Evict the caches (untimed) before every measured round, so both DMA and memcpy start
    /// from memory, as a freshly received payload would, instead of from a warm cache.
    pub cold: bool,
}

/// Writes one byte per cache line of a buffer larger than any last-level cache, which pushes
/// the benchmark buffers out of the caches.
struct Evictor(Vec<u8>);

impl Evictor {
    const LEN: usize = 96 << 20;

    fn new(on: bool) -> Option<Evictor> {
        on.then(|| Evictor(vec![1u8; Self::LEN]))
    }

    fn run(ev: &mut Option<Evictor>) {
        if let Some(e) = ev {
            for i in (0..Self::LEN).step_by(64) {
                e.0[i] = e.0[i].wrapping_add(1);
            }
            std::hint::black_box(&e.0);
        }
    }
}

/// The benchmark buffer: the largest transfer size (`--max-size`).
pub const BUF: usize = 4 << 20;
const MAX_BATCH: usize = 64;

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn median(v: Vec<f64>) -> f64 {
    percentile(v, 0.5)
}

fn drain(
    ch: &mut Channel<Arc<dyn RegisterAccess>>,
    out: &mut Vec<Completion>,
    want: usize,
    yield_cpu: bool,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut got = 0;
    while got < want {
        out.clear();
        got += ch.poll(out);
        if let Some(c) = out.iter().find(|c| c.result.is_err()) {
            anyhow::bail!("DMA copy failed: {:?}", c.result);
        }
        if t0.elapsed() > Duration::from_secs(5) {
            anyhow::bail!("DMA copies did not complete within 5 s ({got}/{want})");
        }
        if yield_cpu {
            // The model's engine is a thread on the same (possibly few) cores: let it run.
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    Ok(())
}

/// Measures every size; `progress` is called after each.
pub fn run(
    dev: &Device<Arc<dyn RegisterAccess>>,
    label: &str,
    simulated: bool,
    model_timing: Option<String>,
    o: &BenchOpts,
    mut progress: impl FnMut(&SizeResult, usize, usize),
) -> anyhow::Result<BenchReport> {
    let mut ch = dev
        .channel(o.channel, ChannelConfig::default())
        .map_err(|e| anyhow::anyhow!("{label}: channel {}: {e}", o.channel))?;
    let src = DmaRegion::alloc(dev.mapper(), BUF)?;
    let dst = DmaRegion::alloc(dev.mapper(), BUF)?;
    src.fill_bytes(0, BUF, 0x5a)?;
    dst.fill_bytes(0, BUF, 0)?;
    let mut sizes = Vec::new();
    let mut s = o.min_size.max(1);
    while s <= o.max_size.min(BUF as u64) {
        sizes.push(s);
        s *= 2;
    }
    let mut results = Vec::new();
    let mut out = Vec::with_capacity(MAX_BATCH);
    let mut ev = Evictor::new(o.cold);
    for (idx, &size) in sizes.iter().enumerate() {
        let sz = size as usize;
        let batch = (BUF / sz).clamp(1, MAX_BATCH);
        // DMA bandwidth: batches of `batch` copies behind one doorbell. Per-round medians,
        // so a preemption of this process (or of the model's engine thread) is not averaged in.
        let (mut rounds_total, mut rounds_submit) = (Vec::new(), Vec::new());
        let t0 = Instant::now();
        while rounds_total.len() < 3 || (t0.elapsed() < o.budget && rounds_total.len() < 10_000) {
            Evictor::run(&mut ev);
            let ts = Instant::now();
            for i in 0..batch {
                let off = (i * sz) as u64;
                ch.copy(src.iova() + off, dst.iova() + off, size)
                    .map_err(|e| anyhow::anyhow!("{label}: submit: {e}"))?;
            }
            ch.flush();
            rounds_submit.push(ts.elapsed().as_secs_f64());
            drain(&mut ch, &mut out, batch, simulated)?;
            rounds_total.push(ts.elapsed().as_secs_f64());
        }
        let per_round = (size * batch as u64) as f64;
        let dma_gbps = per_round / median(rounds_total).max(1e-12) / 1e9;
        // DMA latency: one copy at a time.
        let mut lat = Vec::new();
        let t0 = Instant::now();
        while lat.len() < 5 || (t0.elapsed() < o.budget / 2 && lat.len() < 2000) {
            Evictor::run(&mut ev);
            let ts = Instant::now();
            ch.copy(src.iova(), dst.iova(), size)
                .map_err(|e| anyhow::anyhow!("{label}: submit: {e}"))?;
            ch.flush();
            drain(&mut ch, &mut out, 1, simulated)?;
            lat.push(ts.elapsed().as_secs_f64() * 1e6);
        }
        let dma_latency_us = median(lat);
        // CPU memcpy over the same buffers and offsets.
        let (sp, dp) = (src.as_ptr(), dst.as_ptr());
        let mut crounds = Vec::new();
        let t0 = Instant::now();
        while crounds.len() < 3 || (t0.elapsed() < o.budget && crounds.len() < 100_000) {
            Evictor::run(&mut ev);
            let ts = Instant::now();
            for i in 0..batch {
                // SAFETY: both regions are BUF bytes long and `i * sz + sz <= BUF`; no DMA is
                // in flight on them (every copy above completed), so nothing else touches
                // this memory while the CPU copies it. The regions do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        std::hint::black_box(sp.add(i * sz)),
                        dp.add(i * sz),
                        sz,
                    )
                };
            }
            crounds.push(ts.elapsed().as_secs_f64());
        }
        let cpu_gbps = per_round / median(crounds).max(1e-12) / 1e9;
        let mut clat = Vec::new();
        let t0 = Instant::now();
        while clat.len() < 5 || (t0.elapsed() < o.budget / 4 && clat.len() < 2000) {
            Evictor::run(&mut ev);
            let ts = Instant::now();
            // SAFETY: as above: in bounds, no DMA in flight, non-overlapping regions.
            unsafe { std::ptr::copy_nonoverlapping(std::hint::black_box(sp), dp, sz) };
            clat.push(ts.elapsed().as_secs_f64() * 1e6);
        }
        let r = SizeResult {
            size,
            batch: batch as u32,
            dma_gbps,
            cpu_gbps,
            dma_latency_us,
            cpu_latency_us: median(clat),
            dma_submit_ns: percentile(rounds_submit, 0.25) * 1e9 / batch as f64,
            ratio: if cpu_gbps > 0.0 {
                dma_gbps / cpu_gbps
            } else {
                0.0
            },
        };
        progress(&r, idx + 1, sizes.len());
        results.push(r);
    }
    let mut out = Vec::new();
    let _ = ch.wait_idle(Duration::from_secs(1), &mut out);
    drop(ch);
    let crossover_bytes = crossover(&results, |r| r.dma_gbps >= r.cpu_gbps);
    let crossover_cpu_cost_bytes = crossover(&results, |r| {
        let memcpy_ns = r.size as f64 / (r.cpu_gbps.max(1e-9)); // GB/s == bytes/ns
        r.dma_submit_ns < memcpy_ns
    });
    Ok(BenchReport {
        device: label.to_string(),
        channel: o.channel,
        simulated,
        model_timing,
        results,
        crossover_bytes,
        crossover_cpu_cost_bytes,
        cold: o.cold,
    })
}

/// The smallest size at which `wins` holds there and at the next larger size (or at the
/// largest size measured): one noisy point, in either direction, neither creates nor hides
/// a crossover.
pub fn crossover(rs: &[SizeResult], wins: impl Fn(&SizeResult) -> bool) -> Option<u64> {
    (0..rs.len())
        .find(|&i| wins(&rs[i]) && rs.get(i + 1).is_none_or(&wins))
        .map(|i| rs[i].size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(size: u64, dma: f64, cpu: f64) -> SizeResult {
        SizeResult {
            size,
            batch: 1,
            dma_gbps: dma,
            cpu_gbps: cpu,
            dma_latency_us: 0.0,
            cpu_latency_us: 0.0,
            dma_submit_ns: 0.0,
            ratio: dma / cpu,
        }
    }

    #[test]
    fn crossover_needs_two_wins_in_a_row() {
        let rs = vec![
            r(64, 1.0, 5.0),
            r(128, 6.0, 5.0),
            r(256, 4.0, 5.0),
            r(512, 6.0, 5.0),
            r(1024, 7.0, 5.0),
            r(2048, 4.0, 5.0),
            r(4096, 8.0, 5.0),
        ];
        let w = |r: &SizeResult| r.dma_gbps >= r.cpu_gbps;
        // 128 alone is noise; 512 and 1024 both win; the dip at 2048 does not hide it.
        assert_eq!(crossover(&rs, w), Some(512));
        assert_eq!(crossover(&rs[..3], w), None);
        // A win at the largest size counts on its own.
        assert_eq!(crossover(&rs[..2], w), Some(128));
        assert_eq!(crossover(&[], w), None);
    }
}
