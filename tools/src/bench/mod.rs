//! `netrx-bench`: side-by-side measurements that report ratios, never absolute pass/fail.
//!
//! - [`copy_sizes`]: receive-core cost of a CPU copy of N bytes (cold frames, warm frames)
//!   against the receive-core cost of handing the same copy to an I/OAT channel (descriptor
//!   write, doorbell, completion reaping), by size, with the break-even size.
//! - [`policy`]: a synthetic stream through the sans-IO [`netrx::copy::Copier`] with the seed's
//!   parameters under each copy policy, on the model engine, with ratios against policy `cpu`.
//! - [`e2e`]: kernel TCP over veth into netrx receive configurations and two kernel reference
//!   rows (plain, and behind XDP_PASS), with packet-path counters and whole-machine CPU per GB.

pub mod copy_sizes;
pub mod e2e;
pub mod policy;

/// Median of `v` (0 for an empty set).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `a / b`, or `None` when it has no meaning (b not positive, either not finite).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// The smallest size whose ratio is at least 1 there and at the next size (or which is the
/// largest size): one noisy point neither creates nor hides a break-even. `rows` must be in
/// increasing size order.
pub fn break_even(rows: &[(usize, Option<f64>)]) -> Option<usize> {
    let wins = |i: usize| rows[i].1.is_some_and(|r| r >= 1.0);
    (0..rows.len())
        .find(|&i| wins(i) && (i + 1 == rows.len() || wins(i + 1)))
        .map(|i| rows[i].0)
}

/// Parses a byte count: a plain number, or one with a binary suffix as iperf reads them
/// (`k`/`K`/`KB`/`KiB` = 1024, `m`/`M`/`MB`/`MiB` = 1024², `g`/`G`/`GB`/`GiB` = 1024³).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "size {s:?} is negative; write bytes (1448), or use K, M or G (1024-based, as iperf)"
        ));
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, suf) = t.split_at(split);
    let mult: f64 = match suf.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "size {s:?}: unknown suffix {other:?}; write bytes (1448), or use K, M or G (1024-based, as iperf)"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number; write e.g. 1448, 200K or 2M"))?;
    let v = (n * mult).round();
    if !(v.is_finite() && (0.0..1e15).contains(&v)) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(v as usize)
}

/// CPU time of the calling thread, ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Current UTC time as `YYYY-MM-DD HH:MM:SS UTC` (for reports).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Formats an optional ratio for a table.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_iperf() {
        assert_eq!(parse_size("1448"), Ok(1448));
        assert_eq!(parse_size("200K"), Ok(204_800));
        assert_eq!(parse_size("250KB"), Ok(256_000));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("12Q").unwrap_err().contains("suffix"));
        assert!(parse_size("K").unwrap_err().contains("not a number"));
        assert!(parse_size("x").unwrap_err().contains("suffix"));
    }

    #[test]
    fn medians_ratios_and_break_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        let rows = [
            (64, Some(0.1)),
            (128, Some(1.2)), // alone: noise
            (256, Some(0.9)),
            (512, Some(1.1)),
            (1024, None), // unknown counts as a loss
            (2048, Some(1.5)),
            (4096, Some(2.0)),
        ];
        assert_eq!(break_even(&rows), Some(2048));
        assert_eq!(break_even(&rows[..2]), Some(128));
        assert_eq!(break_even(&rows[..1]), None);
        assert_eq!(break_even(&[]), None);
    }

    #[test]
    fn utc_format() {
        let s = utc_now();
        assert_eq!(s.len(), 23, "{s}");
        assert!(s.ends_with(" UTC"));
    }
}
