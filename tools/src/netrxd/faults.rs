//! Fault injection into the model engine, for rehearsals (`netrxd run --fault SPEC`): an
//! operator sees what a DMA error, a hung channel or a slow engine does to the daemon (copies
//! redone by the CPU, counters, logs) before real hardware does it. Only with `--engine model`.
//!
//! `SPEC` is comma-separated `KEY=VALUE` items:
//! - `error-every=N`: every Nth descriptor a channel executes fails (CHANERR "DMA transfer
//!   destination address error", the channel halts); re-armed after each one.
//! - `hang-after=N`: after N more descriptors the channel stops silently, once (the copy
//!   engine's timeout then aborts and resets it).
//! - `slow-us=U`: every descriptor takes U microseconds longer.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use ioat_driver::model::{Fault, ModelDevice};
use ioat_driver::regs::chanerr;

/// Largest `error-every` / `hang-after` count and `slow-us`.
const COUNT_MAX: u64 = 1 << 40;
const SLOW_US_MAX: u64 = 1_000_000;

/// What to inject (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub error_every: Option<u64>,
    pub hang_after: Option<u64>,
    pub slow_us: Option<u64>,
}

impl FromStr for FaultPlan {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<FaultPlan> {
        let mut p = FaultPlan::default();
        for item in s.split(',').filter(|i| !i.trim().is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                anyhow!("--fault item {item:?} is not KEY=VALUE; use error-every=N, hang-after=N or slow-us=U")
            })?;
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("--fault {k}={v:?}: not a whole number"))?;
            let (slot, max) = match k.trim() {
                "error-every" => (&mut p.error_every, COUNT_MAX),
                "hang-after" => (&mut p.hang_after, COUNT_MAX),
                "slow-us" => (&mut p.slow_us, SLOW_US_MAX),
                other => bail!(
                    "--fault: unknown key {other:?}; use error-every=N, hang-after=N or slow-us=U"
                ),
            };
            if n == 0 || n > max {
                bail!("--fault {k}={n} is out of range; use 1..={max}");
            }
            *slot = Some(n);
        }
        if p == FaultPlan::default() {
            bail!("--fault needs at least one of error-every=N, hang-after=N, slow-us=U");
        }
        Ok(p)
    }
}

impl std::fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut items = Vec::new();
        if let Some(n) = self.error_every {
            items.push(format!("error-every={n}"));
        }
        if let Some(n) = self.hang_after {
            items.push(format!("hang-after={n}"));
        }
        if let Some(n) = self.slow_us {
            items.push(format!("slow-us={n}"));
        }
        f.write_str(&items.join(","))
    }
}

/// Keeps the plan in force while it lives (re-arms `error-every` after each error).
pub struct Injector {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Injector {
    /// Injects `plan` into channels `0..channels` of `model`.
    pub fn start(plan: FaultPlan, model: Arc<ModelDevice>, channels: u32) -> Result<Injector> {
        for ch in 0..channels {
            if let Some(n) = plan.hang_after {
                model.inject(ch, Fault::Hang { after: n });
            }
            if let Some(us) = plan.slow_us {
                model.inject(
                    ch,
                    Fault::Slow {
                        extra: Duration::from_micros(us),
                    },
                );
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = match plan.error_every {
            None => None,
            Some(n) => Some(
                std::thread::Builder::new()
                    .name("netrxd-faults".into())
                    .spawn(move || {
                        let arm = |ch| {
                            model.inject(
                                ch,
                                Fault::ChanErrOnNth {
                                    nth: n,
                                    bits: chanerr::DEST_ADDR,
                                },
                            )
                        };
                        let mut halts: Vec<u64> = (0..channels)
                            .map(|ch| {
                                arm(ch);
                                model.stats(ch).halts
                            })
                            .collect();
                        while !st.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(5));
                            for (ch, h) in halts.iter_mut().enumerate() {
                                let now = model.stats(ch as u32).halts;
                                if now != *h {
                                    *h = now;
                                    arm(ch as u32);
                                }
                            }
                        }
                    })?,
            ),
        };
        Ok(Injector { stop, thread })
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_show() {
        let p: FaultPlan = "error-every=100,slow-us=20".parse().unwrap();
        assert_eq!(p.error_every, Some(100));
        assert_eq!(p.slow_us, Some(20));
        assert_eq!(p.to_string(), "error-every=100,slow-us=20");
        let p: FaultPlan = "hang-after=5000".parse().unwrap();
        assert_eq!(p.hang_after, Some(5000));
        for (bad, says) in [
            ("", "at least one"),
            ("error-every", "KEY=VALUE"),
            ("error-every=-1", "whole number"),
            ("error-every=0", "1..="),
            ("slow-us=99999999", "1..=1000000"),
            ("halt=1", "unknown key"),
        ] {
            let e = bad.parse::<FaultPlan>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
