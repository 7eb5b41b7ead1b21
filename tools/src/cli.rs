//! Value parsers shared by the tools' command lines: integers checked against their valid range,
//! with a message that gives the range (negative numbers included: the commands that use these
//! set `allow_negative_numbers`, so `--flag -1` reaches the parser instead of being taken for an
//! unknown flag, and clap prefixes the message with the flag's name).

/// An integer in `min..=max`; `what` names the unit in the message (e.g. "bytes").
pub fn int_in(
    min: u64,
    max: u64,
    what: &'static str,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let t = s.trim();
        let range = if what.is_empty() {
            format!("{min}..={max}")
        } else {
            format!("{min}..={max} {what}")
        };
        let v: i128 = t
            .parse()
            .map_err(|_| format!("{t:?} is not a whole number; use {range}"))?;
        if v < 0 {
            return Err(format!("{v} is negative; use {range}"));
        }
        if v < min as i128 || v > max as i128 {
            return Err(format!("{v} is out of range; use {range}"));
        }
        Ok(v as u64)
    }
}

/// [`int_in`] for `usize` values.
#[allow(dead_code)] // each binary compiles this file; not every one has a `usize` flag
pub fn usize_in(
    min: usize,
    max: usize,
    what: &'static str,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    let p = int_in(min as u64, max as u64, what);
    move |s: &str| p(s).map(|v| v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_negatives() {
        let p = int_in(1, 4 << 20, "bytes");
        assert_eq!(p("64"), Ok(64));
        assert_eq!(p(" 4194304 "), Ok(4 << 20));
        let e = p("99999999999999").unwrap_err();
        assert!(
            e.contains("out of range") && e.contains("1..=4194304 bytes"),
            "{e}"
        );
        let e = p("-1").unwrap_err();
        assert!(e.contains("negative") && e.contains("1..=4194304"), "{e}");
        assert!(p("0").unwrap_err().contains("out of range"));
        assert!(p("1.5").unwrap_err().contains("whole number"));
        assert_eq!(
            int_in(0, 9, "")("-3").unwrap_err(),
            "-3 is negative; use 0..=9"
        );
    }
}
