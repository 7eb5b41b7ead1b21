//! Time as the endpoint sees it: a monotonic instant passed in by the caller.

use std::time::Duration;

/// A monotonic point in time in nanoseconds since an arbitrary origin chosen by the shell (for
/// example `std::time::Instant` at start-up). Tests pass synthetic values, so every run is
/// deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    pub const fn from_nanos(ns: u64) -> Self {
        Instant(ns)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms * 1_000_000)
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// Milliseconds since the origin (the timestamp clock, RFC 7323: 1 ms per tick).
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// A retransmission timer with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub deadline: Instant,
    pub rto: Duration,
    pub retries: u32,
}

impl Backoff {
    pub fn start(now: Instant, rto: Duration) -> Self {
        Backoff {
            deadline: now + rto,
            rto,
            retries: 0,
        }
    }
    /// Doubles the timeout (capped at 60 s) and re-arms; returns the number of retries so far.
    pub fn back_off(&mut self, now: Instant) -> u32 {
        self.retries += 1;
        self.rto = (self.rto * 2).min(Duration::from_secs(60));
        self.deadline = now + self.rto;
        self.retries
    }
}
