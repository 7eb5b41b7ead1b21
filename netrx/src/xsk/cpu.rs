//! Thread placement: which CPUs a queue's poller and TX kicker run on.
//!
//! A queue has two busy threads in copy mode: the poller (TCP, copies) and the TX kicker, whose
//! `sendto` runs the kernel's half of the path (on veth: the peer's stack and the copy of our
//! received frames into the UMEM). Left to float, the scheduler moves them between CPUs and at
//! times stacks them on one; pinned to different CPUs, the two halves run side by side. Measured
//! in `docs/performance.md` ("Thread placement"). DPDK pins its lcores the same way.

use std::fmt;
use std::io;
use std::str::FromStr;

/// The CPUs of one queue's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCpus {
    pub poller: usize,
    /// The TX kicker thread's CPU (when the socket has one).
    pub kicker: usize,
}

/// Where a service's threads run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts them (the library's default).
    #[default]
    Float,
    /// Spread over the CPUs this process may run on (see [`spread`]); floats
    /// when the process has a single CPU.
    Auto,
    /// Spread over these CPUs.
    Cpus(Vec<usize>),
}

impl Placement {
    /// The CPUs of the queue with index `index` (0 for the first of the service's `queues`
    /// queues), spread over the placement's CPUs by [`spread`]. `None`: float. Fails, naming
    /// the fix, when a listed CPU is not one the process may run on.
    pub fn for_queue(&self, index: usize, queues: usize) -> io::Result<Option<QueueCpus>> {
        let cpus = match self {
            Placement::Float => return Ok(None),
            Placement::Auto => {
                let a = allowed_cpus()?;
                if a.len() < 2 {
                    return Ok(None);
                }
                a
            }
            Placement::Cpus(list) => {
                let allowed = allowed_cpus()?;
                if list.is_empty() {
                    return Err(bad_input("an empty CPU list; name CPUs (0,1) or use auto"));
                }
                if let Some(c) = list.iter().find(|c| !allowed.contains(c)) {
                    return Err(bad_input(&format!(
                        "CPU {c} is not one this process may run on (allowed: {}); choose from \
                         them, or use auto",
                        Placement::Cpus(allowed.clone())
                    )));
                }
                list.clone()
            }
        };
        Ok(Some(spread(&cpus, index, queues)))
    }
}

/// Queue `index` of `queues` on the CPUs `cpus` (not empty): with at least two CPUs per queue,
/// every thread gets its own CPU (poller on the `2 * index`-th, kicker on the next); with
/// fewer, the pollers go round the CPUs (`index`-th) and each kicker sits on the CPU after its
/// poller's, so one queue on two CPUs gets one CPU per thread and four queues on two CPUs
/// alternate instead of stacking every poller on one CPU.
pub fn spread(cpus: &[usize], index: usize, queues: usize) -> QueueCpus {
    let n = cpus.len().max(1);
    let at = |i: usize| cpus.get(i % n).copied().unwrap_or(0);
    if n >= 2 * queues.max(1) {
        QueueCpus {
            poller: at(2 * index),
            kicker: at(2 * index + 1),
        }
    } else {
        QueueCpus {
            poller: at(index),
            kicker: at(index + 1),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Float => f.write_str("float"),
            Placement::Auto => f.write_str("auto"),
            Placement::Cpus(l) => {
                let s: Vec<String> = l.iter().map(usize::to_string).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

impl FromStr for Placement {
    type Err = String;

    /// `float` (or `none`), `auto`, or a list of CPUs and ranges: `0,1`, `2-5`, `0,4-6`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "float" | "none" => return Ok(Placement::Float),
            "auto" => return Ok(Placement::Auto),
            _ => {}
        }
        let bad = || {
            format!(
                "bad CPU list {s:?}: use auto, float, or CPU numbers and ranges like 0,1 or 2-5"
            )
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let a: usize = a.parse().map_err(|_| bad())?;
            let b: usize = b.parse().map_err(|_| bad())?;
            if a > b || b >= CPU_LIMIT {
                return Err(bad());
            }
            for c in a..=b {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        Ok(Placement::Cpus(out))
    }
}

/// CPUs a `cpu_set_t` can name.
const CPU_LIMIT: usize = libc::CPU_SETSIZE as usize;

fn bad_input(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

/// The CPUs the calling thread may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 = this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set; every index is below CPU_SETSIZE.
    Ok((0..CPU_LIMIT)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= CPU_LIMIT {
        return Err(bad_input(&format!("CPU {cpu} is out of range")));
    }
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (checked); `set` is a valid cpu_set_t.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t of the size passed; pid 0 = the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread, or warns and lets it float (a CPU taken offline since the plan).
pub(crate) fn pin_or_warn(cpu: usize, thread: &str) {
    if let Err(e) = pin_current_thread(cpu) {
        tracing::warn!(cpu, thread, error = %e, "could not pin the thread; it floats");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_ranges_and_words() {
        assert_eq!("auto".parse::<Placement>(), Ok(Placement::Auto));
        assert_eq!("float".parse::<Placement>(), Ok(Placement::Float));
        assert_eq!("none".parse::<Placement>(), Ok(Placement::Float));
        assert_eq!("1, 0".parse::<Placement>(), Ok(Placement::Cpus(vec![1, 0])));
        assert_eq!(
            "0,4-6,5".parse::<Placement>(),
            Ok(Placement::Cpus(vec![0, 4, 5, 6]))
        );
        for bad in ["", "x", "3-1", "1,,2", "-1", "0-99999"] {
            let e = bad.parse::<Placement>().unwrap_err();
            assert!(e.contains("auto, float"), "{bad:?}: {e}");
        }
        assert_eq!(Placement::Cpus(vec![0, 2]).to_string(), "0,2");
    }

    fn pairs(cpus: &[usize], queues: usize) -> Vec<(usize, usize)> {
        (0..queues)
            .map(|i| {
                let q = spread(cpus, i, queues);
                (q.poller, q.kicker)
            })
            .collect()
    }

    #[test]
    fn spreads_poller_and_kicker_over_the_list() {
        // Enough CPUs: a CPU per thread.
        assert_eq!(pairs(&[0, 1], 1), [(0, 1)]);
        assert_eq!(pairs(&[4, 5, 6, 7], 2), [(4, 5), (6, 7)]);
        assert_eq!(pairs(&[0, 1, 2, 3, 4], 2), [(0, 1), (2, 3)]);
        // Too few: pollers go round, each kicker on the next CPU.
        assert_eq!(pairs(&[0, 1], 4), [(0, 1), (1, 0), (0, 1), (1, 0)]);
        assert_eq!(pairs(&[0, 1, 2], 2), [(0, 1), (1, 2)]);
        assert_eq!(pairs(&[3], 2), [(3, 3), (3, 3)]);

        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let one = Placement::Cpus(vec![allowed[0]]);
        let q = one.for_queue(0, 1).unwrap().unwrap();
        assert_eq!((q.poller, q.kicker), (allowed[0], allowed[0]));
        if allowed.len() >= 2 {
            let auto = Placement::Auto.for_queue(0, 1).unwrap().unwrap();
            assert_eq!((auto.poller, auto.kicker), (allowed[0], allowed[1]));
        } else {
            assert_eq!(Placement::Auto.for_queue(0, 1).unwrap(), None);
        }
        assert_eq!(Placement::Float.for_queue(3, 4).unwrap(), None);
    }

    #[test]
    fn refuses_cpus_the_process_may_not_use() {
        let allowed = allowed_cpus().unwrap();
        let outside = (0..CPU_LIMIT).find(|c| !allowed.contains(c)).unwrap();
        let e = Placement::Cpus(vec![outside]).for_queue(0, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("allowed:"), "{e}");
        let e = Placement::Cpus(vec![]).for_queue(0, 1).unwrap_err();
        assert!(e.to_string().contains("auto"), "{e}");
    }

    #[test]
    fn pins_a_thread() {
        let cpu = allowed_cpus().unwrap()[0];
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(CPU_LIMIT).is_err());
    }
}
