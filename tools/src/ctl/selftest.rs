//! `ioat-ctl selftest`: copy and fill verification on every channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use ioat_driver::channel::Completion;
use ioat_driver::dma::DmaRegion;
use ioat_driver::regs::{ChanState, RegisterAccess};
use ioat_driver::{ChannelConfig, Device};

/// One verification step.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The result for one channel.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelReport {
    pub channel: u32,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub ops: u64,
    pub bytes: u64,
    pub elapsed_ms: f64,
}

const BUF: usize = 4 << 20;
const GUARD: u8 = 0xEE;
const WAIT: Duration = Duration::from_secs(2);

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    // xorshift: deterministic, different per channel.
    let mut x = 0x9e37_79b9u32 ^ seed.wrapping_mul(0x85eb_ca6b) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn wait_one(
    ch: &mut ioat_driver::Channel<Arc<dyn RegisterAccess>>,
    expect: usize,
) -> Result<(), String> {
    let mut out: Vec<Completion> = Vec::new();
    ch.wait_idle(WAIT, &mut out).map_err(|e| e.to_string())?;
    if out.len() != expect {
        return Err(format!(
            "{} completion(s) reported, {expect} expected",
            out.len()
        ));
    }
    for (i, c) in out.iter().enumerate() {
        if let Err(e) = &c.result {
            return Err(format!("operation {i} failed: {e}"));
        }
        if i > 0 && c.token <= out[i - 1].token {
            return Err("completions reported out of order".into());
        }
    }
    Ok(())
}

/// Checks `dst[off..off+len] == want` and that the 16 guard bytes on each side are untouched.
fn verify(dst: &DmaRegion, off: usize, want: &[u8]) -> Result<(), String> {
    let lo = off.saturating_sub(16);
    let hi = (off + want.len() + 16).min(dst.len());
    let got = dst.to_vec(lo, hi - lo).map_err(|e| e.to_string())?;
    let (pre, rest) = got.split_at(off - lo);
    let (body, post) = rest.split_at(want.len());
    if let Some(i) = pre.iter().position(|&b| b != GUARD) {
        return Err(format!(
            "byte {} before the destination was overwritten",
            off - lo - i
        ));
    }
    if let Some(i) = body.iter().zip(want).position(|(a, b)| a != b) {
        return Err(format!(
            "first mismatch at byte {i}: got {:#04x}, want {:#04x}",
            body[i], want[i]
        ));
    }
    if let Some(i) = post.iter().position(|&b| b != GUARD) {
        return Err(format!("byte {i} after the destination was overwritten"));
    }
    Ok(())
}

/// Runs the self-test on channel `n`.
pub fn run_channel(dev: &Device<Arc<dyn RegisterAccess>>, n: u32) -> ChannelReport {
    let t0 = Instant::now();
    let mut checks = Vec::new();
    let mut push = |name: String, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        checks.push(Check { name, ok, detail });
    };
    let report = |checks: Vec<Check>, ops: u64, bytes: u64| ChannelReport {
        channel: n,
        passed: checks.iter().all(|c| c.ok),
        checks,
        ops,
        bytes,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
    };
    let mut ch = match dev.channel(n, ChannelConfig::default()) {
        Ok(c) => {
            push(
                "start".into(),
                Ok("reset, programmed and started with a null descriptor".into()),
            );
            c
        }
        Err(e) => {
            push("start".into(), Err(e.to_string()));
            return report(checks, 0, 0);
        }
    };
    let info = dev.info();
    let (src, dst) = match (
        DmaRegion::alloc(dev.mapper(), BUF),
        DmaRegion::alloc(dev.mapper(), BUF),
    ) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            push("dma memory".into(), Err(e.to_string()));
            return report(checks, 0, 0);
        }
    };
    let data = pattern(n, BUF);
    if let Err(e) = src.write(0, &data) {
        push("dma memory".into(), Err(e.to_string()));
        return report(checks, 0, 0);
    }
    // Sizes around the interesting edges: tiny, unaligned, page, and one split at XFERCAP.
    let split = (info.piece_size() as usize).min(1 << 20) + 4097;
    let cases: [(usize, usize, usize); 7] = [
        (1, 0, 64),
        (64, 0, 0),
        (100, 3, 5),
        (4096, 0, 0),
        (4096 + 13, 7, 1),
        (65536, 0, 4096),
        (split, 64, 128),
    ];
    for (len, so, doff) in cases {
        let doff = doff + 16;
        let name = format!("copy {len} B (src+{so}, dst+{doff})");
        let r = (|| {
            dst.fill_bytes(doff - 16, len + 32, GUARD)
                .map_err(|e| e.to_string())?;
            ch.copy_regions(&src, so, &dst, doff, len)
                .map_err(|e| e.to_string())?;
            wait_one(&mut ch, 1)?;
            verify(&dst, doff, &data[so..so + len])?;
            Ok(if len > info.piece_size() as usize {
                format!(
                    "ok, split into {} descriptors",
                    len.div_ceil(info.piece_size() as usize)
                )
            } else {
                "ok".to_string()
            })
        })();
        push(name, r);
    }
    if info.has_fill() {
        let pat = 0x0123_4567_89ab_cdefu64;
        let (off, len) = (16 + 7, 10007);
        let r = (|| {
            dst.fill_bytes(off - 16, len + 32, GUARD)
                .map_err(|e| e.to_string())?;
            ch.fill_region(&dst, off, pat, len)
                .map_err(|e| e.to_string())?;
            wait_one(&mut ch, 1)?;
            let want: Vec<u8> = (0..len).map(|i| pat.to_le_bytes()[i % 8]).collect();
            verify(&dst, off, &want)?;
            Ok("ok".to_string())
        })();
        push(format!("fill {len} B with {pat:#x}"), r);
    } else {
        push(
            "fill".into(),
            Ok("skipped: DMACAPABILITY has no FILL_BLOCK".into()),
        );
    }
    // A batch: many small copies behind one doorbell, completions in order.
    let (count, each) = (512usize, 256usize);
    let r = (|| {
        dst.fill_bytes(0, count * each + 64, GUARD)
            .map_err(|e| e.to_string())?;
        for i in 0..count {
            ch.copy_regions(&src, i * each + 1, &dst, 16 + i * each, each)
                .map_err(|e| e.to_string())?;
        }
        wait_one(&mut ch, count)?;
        verify(&dst, 16, &data[1..1 + count * each])?;
        Ok(format!(
            "{count} copies of {each} B behind one doorbell, in order"
        ))
    })();
    push(format!("batch {count} x {each} B"), r);
    let regs = ch.regs_snapshot();
    let st = ChanState::from_bits(regs.chansts);
    push(
        "final state".into(),
        if regs.chanerr.is_empty() && st != ChanState::Halted {
            Ok(format!("CHANSTS {st}, CHANERR none"))
        } else {
            Err(format!("CHANSTS {st}, CHANERR {}", regs.chanerr))
        },
    );
    let stats = ch.stats();
    drop(ch);
    report(checks, stats.ops, stats.bytes)
}
