//! CPU time of this process's threads, from `/proc/self/task/TID/schedstat` (nanoseconds on
//! CPU) and `comm` (the thread name).

use std::collections::HashMap;

/// Per-thread CPU time: tid -> (name, ns on CPU).
pub type ThreadTimes = HashMap<u32, (String, u64)>;

/// Reads every thread of this process now.
pub fn sample() -> ThreadTimes {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return m;
    };
    for e in rd.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let base = e.path();
        let ns = std::fs::read_to_string(base.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
        let comm = std::fs::read_to_string(base.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if let Some(ns) = ns {
            m.insert(tid, (comm, ns));
        }
    }
    m
}

/// CPU nanoseconds spent between `before` and `after` by threads whose name passes `keep`
/// (threads born in between count from zero).
pub fn spent(before: &ThreadTimes, after: &ThreadTimes, keep: impl Fn(u32, &str) -> bool) -> u64 {
    after
        .iter()
        .filter(|(tid, (name, _))| keep(**tid, name))
        .map(|(tid, (_, ns))| ns.saturating_sub(before.get(tid).map(|b| b.1).unwrap_or(0)))
        .sum()
}

/// This thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_thread_shows_up() {
        let a = sample();
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let b = sample();
        let me = gettid();
        assert!(b.contains_key(&me), "{b:?}");
        let used = spent(&a, &b, |_, _| true);
        assert!(used > 1_000_000 && x > 0, "{used}");
    }
}
