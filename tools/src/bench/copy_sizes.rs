//! `netrx-bench copy-sizes`: what getting N bytes into an application buffer costs the
//! receive core, by CPU memcpy or by handing the copy to an I/OAT channel.
//!
//! The CPU side is a real memcpy on this machine: from cold frames (a rotating pool much larger
//! than the last-level cache, as freshly received frames are) and from warm frames (cached).
//! The DMA side is what the receive core spends per op on the driver: writing the descriptor,
//! ringing the doorbell, reaping the completion. It is measured against the software model with
//! instant timing, so it does not depend on the model's simulated copy speed; the device time
//! of an op under the model's default timing is printed next to it, labelled simulated.
//! The ratio CPU-copy-ns / DMA-CPU-ns says whether offloading saves receive-core time at all.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use ioat_driver::model::{ModelDevice, Preset, Timing};
use ioat_driver::regs::ChanState;
use ioat_driver::{Channel, ChannelConfig, Completion, Device, DmaRegion};
use netrx::service::engines::new_model;

use super::{break_even, fmt_ratio, median, ratio, utc_now};

/// Options of `copy-sizes`.
#[derive(Debug, Clone)]
pub struct Opts {
    pub sizes: Vec<usize>,
    /// Measuring time per size and method.
    pub budget: Duration,
    /// Bytes of the cold frame pool (several times the last-level cache).
    pub pool_bytes: usize,
    /// Ops chained behind one doorbell in the batched variant.
    pub batch: usize,
    /// The model timing shown as simulated device time per op.
    pub sim_per_desc_ns: u64,
    pub sim_bytes_per_sec: u64,
    /// Also measure pinning a receive buffer per call (mlock + munlock), NET_DMA's per-recvmsg
    /// `dma_pin_iovec_pages` stand-in.
    pub pin_bytes: Option<usize>,
}

/// One size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub size: usize,
    /// CPU memcpy from a cold frame into the (warm) application buffer, ns per segment.
    pub cpu_cold_ns: f64,
    /// CPU memcpy from a cached frame, ns per segment.
    pub cpu_warm_ns: f64,
    /// Writing one descriptor (`Channel::copy`), ns, from chains of `batch`.
    pub dma_desc_ns: f64,
    /// One doorbell (`Channel::flush`), ns.
    pub dma_doorbell_ns: f64,
    /// Reaping one completion with one poll, ns.
    pub dma_reap1_ns: f64,
    /// Reaping a chain of `batch` completions with one poll, ns per op.
    pub dma_reap_batched_ns: f64,
    /// Receive-core ns per op with one doorbell per op (NET_DMA style).
    pub dma_cpu_single_ns: f64,
    /// Receive-core ns per op with `batch` ops per doorbell (adaptive style).
    pub dma_cpu_batched_ns: f64,
    /// Receive-core ns per op without the doorbell (descriptor + reap): the floor of the DMA
    /// cost. The model's doorbell wakes its engine thread (a futex wake on another core), which
    /// a real device's posted MMIO write does not; the truth on hardware lies between.
    pub dma_cpu_no_doorbell_ns: f64,
    /// Device time of one op under the simulated timing (per_desc + size / rate), ns.
    pub sim_device_ns: f64,
    /// cpu_cold_ns / dma_cpu_single_ns: above 1, DMA saves receive-core time.
    pub ratio_single: Option<f64>,
    /// cpu_cold_ns / dma_cpu_batched_ns.
    pub ratio_batched: Option<f64>,
    /// cpu_cold_ns / dma_cpu_no_doorbell_ns: the most DMA could save.
    pub ratio_no_doorbell: Option<f64>,
    /// cpu_warm_ns / dma_cpu_single_ns.
    pub ratio_warm_single: Option<f64>,
}

/// Pinning cost stand-in.
#[derive(Debug, Clone, Serialize)]
pub struct PinCost {
    pub bytes: usize,
    /// Median ns of one mlock + munlock of a resident buffer of `bytes`.
    pub ns_per_call: Option<f64>,
    pub ns_per_page: Option<f64>,
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub when: String,
    pub conditions: String,
    pub batch: usize,
    pub pool_bytes: usize,
    /// Cost of one `Instant::now()` pair, subtracted from individually timed calls.
    pub timer_overhead_ns: f64,
    /// The simulated timing the `sim_device_ns` column uses.
    pub simulated_timing: String,
    pub rows: Vec<Row>,
    /// Smallest size from which DMA (one doorbell per op) costs the receive core less than a
    /// cold-frame memcpy, there and at the next size.
    pub break_even_single: Option<usize>,
    pub break_even_batched: Option<usize>,
    pub break_even_warm_single: Option<usize>,
    /// Break-even with the doorbell left out (the floor of the DMA cost).
    pub break_even_no_doorbell: Option<usize>,
    pub pin: Option<PinCost>,
}

fn cpu_cold(pool: &[u8], dst: &mut [u8], size: usize, budget: Duration) -> f64 {
    // Frames at UMEM-like strides (2048 for a 1448-byte MSS), walked in order through a pool
    // much larger than the caches: each frame is cold when it is copied again.
    let stride = size.next_power_of_two().max(2048);
    let nframes = (pool.len() / stride).max(1);
    let per_round = nframes.min(256);
    let (mut pos, mut dpos) = (0usize, 0usize);
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while samples.len() < 5 || (t0.elapsed() < budget && samples.len() < 100_000) {
        let ts = Instant::now();
        for _ in 0..per_round {
            let s = &pool[pos * stride..pos * stride + size];
            if dpos + size > dst.len() {
                dpos = 0;
            }
            dst[dpos..dpos + size].copy_from_slice(black_box(s));
            dpos += size;
            pos = (pos + 1) % nframes;
        }
        samples.push(ts.elapsed().as_nanos() as f64 / per_round as f64);
    }
    black_box(&dst);
    median(samples)
}

fn cpu_warm(src: &[u8], dst: &mut [u8], size: usize, budget: Duration) -> f64 {
    let per_round = 256;
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while samples.len() < 5 || (t0.elapsed() < budget && samples.len() < 100_000) {
        let ts = Instant::now();
        for _ in 0..per_round {
            dst[..size].copy_from_slice(black_box(&src[..size]));
        }
        samples.push(ts.elapsed().as_nanos() as f64 / per_round as f64);
    }
    black_box(&dst);
    median(samples)
}

fn timer_overhead() -> f64 {
    let mut v = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        v.push(black_box(t.elapsed()).as_nanos() as f64);
    }
    median(v)
}

struct DmaSide {
    model: Arc<ModelDevice>,
    ch: Channel<Arc<ModelDevice>>,
    src: DmaRegion,
    dst: DmaRegion,
    out: Vec<Completion>,
}

const DMA_BUF: usize = 4 << 20;

impl DmaSide {
    fn new() -> Result<Self> {
        // Instant timing: the engine thread completes ops as fast as it runs, so only the
        // driver's CPU cost is measured here, not the model's simulated speed.
        let model = new_model(Preset::Skx, Timing::Instant, 1);
        let dev = Device::open(model.clone(), model.mapper())
            .map_err(|e| anyhow!("opening the model device: {e}"))?;
        let ch = dev
            .channel(0, ChannelConfig::default())
            .map_err(|e| anyhow!("model channel 0: {e}"))?;
        let src = DmaRegion::alloc(dev.mapper(), DMA_BUF).context("DMA source buffer")?;
        let dst = DmaRegion::alloc(dev.mapper(), DMA_BUF).context("DMA destination buffer")?;
        src.fill_bytes(0, DMA_BUF, 0x5a)?;
        dst.fill_bytes(0, DMA_BUF, 0)?;
        Ok(Self {
            model,
            ch,
            src,
            dst,
            out: Vec::with_capacity(256),
        })
    }

    /// Waits (untimed) until the device finished everything issued.
    fn settle(&mut self) -> Result<()> {
        let s = self.model.wait_not_active(0, Duration::from_secs(2));
        if s == ChanState::Active {
            anyhow::bail!("model channel still active after 2 s");
        }
        Ok(())
    }

    /// Polls (untimed) until `want` more completions arrived.
    fn reap_rest(&mut self, mut want: usize) -> Result<()> {
        let t0 = Instant::now();
        while want > 0 {
            self.out.clear();
            want = want.saturating_sub(self.ch.poll(&mut self.out));
            if let Some(c) = self.out.iter().find(|c| c.result.is_err()) {
                anyhow::bail!("model DMA copy failed: {:?}", c.result);
            }
            if t0.elapsed() > Duration::from_secs(2) {
                anyhow::bail!("model DMA copies did not complete within 2 s");
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    fn submit(&mut self, i: usize, size: usize) -> Result<()> {
        let off = ((i * size) % (DMA_BUF - size + 1)) as u64;
        self.ch
            .copy(self.src.iova() + off, self.dst.iova() + off, size as u64)
            .map(|_| ())
            .map_err(|e| anyhow!("model submit: {e}"))
    }

    /// Returns (descriptor ns per op, doorbell ns, reap-one ns, reap ns per op of a chain).
    fn measure(
        &mut self,
        size: usize,
        batch: usize,
        budget: Duration,
        tov: f64,
    ) -> Result<[f64; 4]> {
        let (mut desc, mut bell, mut reap1, mut reapb) = (vec![], vec![], vec![], vec![]);
        let t0 = Instant::now();
        while desc.len() < 5 || (t0.elapsed() < budget && desc.len() < 20_000) {
            // A chain of `batch` descriptors behind one doorbell.
            let ts = Instant::now();
            for i in 0..batch {
                self.submit(i, size)?;
            }
            desc.push(ts.elapsed().as_nanos() as f64 / batch as f64);
            let ts = Instant::now();
            self.ch.flush();
            bell.push((ts.elapsed().as_nanos() as f64 - tov).max(0.0));
            self.settle()?;
            self.out.clear();
            let ts = Instant::now();
            let got = self.ch.poll(&mut self.out);
            let dt = ts.elapsed().as_nanos() as f64;
            if got == batch {
                reapb.push(dt / batch as f64);
            } else {
                self.reap_rest(batch - got)?;
            }
            // One op, one doorbell, one reap.
            self.submit(0, size)?;
            self.ch.flush();
            self.settle()?;
            self.out.clear();
            let ts = Instant::now();
            let got = self.ch.poll(&mut self.out);
            let dt = ts.elapsed().as_nanos() as f64;
            if got == 1 {
                reap1.push((dt - tov).max(0.0));
            } else {
                self.reap_rest(1 - got)?;
            }
        }
        Ok([median(desc), median(bell), median(reap1), median(reapb)])
    }
}

/// NET_DMA pinned the user's iovec on every armed `recvmsg` (get_user_pages on each page) and
/// unpinned it before returning. mlock + munlock of a resident buffer walks and pins the same
/// pages: a stand-in of the same order, not the same code.
fn pin_cost(bytes: usize) -> PinCost {
    let mut buf = vec![1u8; bytes];
    black_box(&mut buf);
    let mut v = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        // SAFETY: mlock/munlock only change the residency of the pages of `buf`, which is a
        // live, exclusively owned allocation of `bytes` bytes.
        let rc = unsafe { libc::mlock(buf.as_ptr().cast(), bytes) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return PinCost {
                bytes,
                ns_per_call: None,
                ns_per_page: None,
                error: Some(format!(
                    "mlock of {bytes} bytes failed: {e}; run as root or raise RLIMIT_MEMLOCK (ulimit -l)"
                )),
            };
        }
        // SAFETY: as above.
        unsafe { libc::munlock(buf.as_ptr().cast(), bytes) };
        v.push(t.elapsed().as_nanos() as f64);
    }
    let ns = median(v);
    PinCost {
        bytes,
        ns_per_call: Some(ns),
        ns_per_page: Some(ns / bytes.div_ceil(4096) as f64),
        error: None,
    }
}

/// Runs the measurement; `progress` is called after each size.
pub fn run(o: &Opts, mut progress: impl FnMut(&Row, usize, usize)) -> Result<Report> {
    let max = o.sizes.iter().copied().max().unwrap_or(0);
    if max == 0 || max > DMA_BUF / 2 {
        anyhow::bail!(
            "sizes must be between 1 and {} bytes; drop the larger ones",
            DMA_BUF / 2
        );
    }
    let mut sizes = o.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let pool_bytes = o.pool_bytes.max(max.next_power_of_two().max(2048) * 4);
    let pool = vec![0x5au8; pool_bytes];
    let mut app = vec![0u8; 2 << 20];
    let warm_src = vec![0x3cu8; max];
    let tov = timer_overhead();
    let mut dma = DmaSide::new()?;
    let batch = o.batch.clamp(1, 1024);
    let mut rows = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let cpu_cold_ns = cpu_cold(&pool, &mut app, size, o.budget);
        let cpu_warm_ns = cpu_warm(&warm_src, &mut app, size, o.budget / 2);
        let [desc, bell, reap1, reapb] = dma.measure(size, batch, o.budget, tov)?;
        let single = desc + bell + reap1;
        let batched = desc + bell / batch as f64 + reapb;
        let sim_device_ns =
            o.sim_per_desc_ns as f64 + size as f64 * 1e9 / o.sim_bytes_per_sec.max(1) as f64;
        let row = Row {
            size,
            cpu_cold_ns,
            cpu_warm_ns,
            dma_desc_ns: desc,
            dma_doorbell_ns: bell,
            dma_reap1_ns: reap1,
            dma_reap_batched_ns: reapb,
            dma_cpu_single_ns: single,
            dma_cpu_batched_ns: batched,
            dma_cpu_no_doorbell_ns: desc + reap1,
            sim_device_ns,
            ratio_no_doorbell: ratio(cpu_cold_ns, desc + reap1),
            ratio_single: ratio(cpu_cold_ns, single),
            ratio_batched: ratio(cpu_cold_ns, batched),
            ratio_warm_single: ratio(cpu_warm_ns, single),
        };
        progress(&row, i + 1, sizes.len());
        rows.push(row);
    }
    let be = |f: fn(&Row) -> Option<f64>| {
        break_even(&rows.iter().map(|r| (r.size, f(r))).collect::<Vec<_>>())
    };
    Ok(Report {
        when: utc_now(),
        conditions: format!(
            "{} CPUs online, load average {}; DMA side: software model, instant timing (driver CPU cost only)",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg()
        ),
        batch,
        pool_bytes,
        timer_overhead_ns: tov,
        simulated_timing: format!(
            "SIMULATED: {} ns per descriptor + {:.1} GB/s",
            o.sim_per_desc_ns,
            o.sim_bytes_per_sec as f64 / 1e9
        ),
        break_even_single: be(|r| r.ratio_single),
        break_even_batched: be(|r| r.ratio_batched),
        break_even_warm_single: be(|r| r.ratio_warm_single),
        break_even_no_doorbell: be(|r| r.ratio_no_doorbell),
        rows,
        pin: o.pin_bytes.map(pin_cost),
    })
}

/// The 1-minute load average, as text.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The report as a text table.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    s += &format!(
        "copy-sizes  {}  ({})\nreceive-core ns per segment; DMA = descriptor + doorbell + reap on the driver (model, instant timing)\n\n",
        r.when, r.conditions
    );
    s += &format!(
        "{:>6} {:>9} {:>9} {:>7} {:>8} {:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>11}\n",
        "size",
        "cpu cold",
        "cpu warm",
        "desc",
        "doorbell",
        "reap1",
        "dma 1/db",
        format!("dma {}/db", r.batch),
        "cold/1db",
        format!("cold/{}db", r.batch),
        "warm/1db",
        "cold/0db",
        "sim dev ns"
    );
    for w in &r.rows {
        s += &format!(
            "{:>6} {:>9.0} {:>9.0} {:>7.0} {:>8.0} {:>7.0} {:>9.0} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>11.0}\n",
            w.size,
            w.cpu_cold_ns,
            w.cpu_warm_ns,
            w.dma_desc_ns,
            w.dma_doorbell_ns,
            w.dma_reap1_ns,
            w.dma_cpu_single_ns,
            w.dma_cpu_batched_ns,
            fmt_ratio(w.ratio_single),
            fmt_ratio(w.ratio_batched),
            fmt_ratio(w.ratio_warm_single),
            fmt_ratio(w.ratio_no_doorbell),
            w.sim_device_ns
        );
    }
    let be = |b: Option<usize>| {
        b.map_or_else(
            || "none (CPU cheaper at every size)".into(),
            |b| format!("{b} B"),
        )
    };
    s += &format!(
        "\nbreak-even (DMA costs the receive core less than a cold memcpy, there and at the next size):\n  one doorbell per op: {}\n  {} ops per doorbell: {}\n  against a warm memcpy, one doorbell per op: {}\n  doorbell left out (descriptor + reap only, the floor): {}\n\
note: the model's doorbell wakes its engine thread on another core (futex); a real device's doorbell is a posted\n\
MMIO write. The doorbell column is therefore a model cost; `ioat-ctl bench BDF` measures the real one.\n",
        be(r.break_even_single),
        r.batch,
        be(r.break_even_batched),
        be(r.break_even_warm_single),
        be(r.break_even_no_doorbell)
    );
    if let Some(p) = &r.pin {
        match (&p.ns_per_call, &p.error) {
            (Some(ns), _) => {
                s += &format!(
                    "pinning stand-in (mlock+munlock of a resident {} B buffer, per call): {:.0} ns ({:.1} ns per 4 KiB page)\n",
                    p.bytes,
                    ns,
                    p.ns_per_page.unwrap_or(0.0)
                )
            }
            (None, Some(e)) => s += &format!("pinning stand-in: {e}\n"),
            _ => {}
        }
    }
    s += &format!(
        "sim dev ns: device time of one op under the model's {} (not a measurement)\n",
        r.simulated_timing
    );
    s
}
