//! The wall clock behind a trait, so that a test can move it (issue 14.7).
//!
//! Every wall-clock reading that ends up in the log — receive times, seal times, record times — goes through
//! [`now_ns`] (and `store::now_ms`/`store::now_ns`, which call it). Production builds read the system clock
//! ([`SystemClock`]) and nothing else: the clock a test moves ([`crate::fault::ShiftedClock`]) exists only in
//! builds with the cargo feature `fault-injection`, which only the test suite turns on (docs/RELIABILITY.md).
//!
//! Monotonic durations (timeouts, intervals, backoff) use `std::time::Instant` and never this clock, so a jump
//! of the wall clock cannot stretch or cut them. [`JumpDetector`] compares the two to notice a jump.

use std::time::{Duration, Instant};

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the Unix epoch (0 before it).
    fn now_ns(&self) -> u64;
}

/// The system clock (`CLOCK_REALTIME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The process's wall clock: the system clock, or in a `fault-injection` build the test's clock when the
/// test armed one (`ANCHORLOG_FAULT_CLOCK_FILE`).
pub fn clock() -> &'static dyn Clock {
    #[cfg(feature = "fault-injection")]
    if let Some(c) = crate::fault::shifted_clock() {
        return c;
    }
    &SystemClock
}

/// Nanoseconds since the Unix epoch from [`clock`].
pub fn now_ns() -> u64 {
    clock().now_ns()
}

/// Milliseconds since the Unix epoch from [`clock`].
pub fn now_ms() -> i64 {
    i64::try_from(now_ns() / 1_000_000).unwrap_or(i64::MAX)
}

/// A wall-clock jump: the wall clock moved `delta_ms` more (or less) than the monotonic clock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// Where the wall clock would be had it run with the monotonic clock (epoch ms).
    pub expected_ms: i64,
    /// Where it is (epoch ms).
    pub observed_ms: i64,
    /// `observed_ms - expected_ms`: positive forward, negative backward.
    pub delta_ms: i64,
}

/// Notices wall-clock jumps by comparing each reading with the monotonic clock since the previous one. NTP
/// slewing moves the wall clock by at most 0.5 ms per second, so anything past the threshold is a step: a
/// manual `date -s`, an NTP step after a long disconnection, a VM restored from a snapshot, a bad RTC.
#[derive(Debug)]
pub struct JumpDetector {
    threshold_ms: i64,
    last_wall_ms: i64,
    last_mono: Instant,
}

impl JumpDetector {
    /// A detector reporting jumps larger than `threshold`, starting from the current time.
    pub fn new(threshold: Duration) -> JumpDetector {
        JumpDetector {
            threshold_ms: i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX),
            last_wall_ms: now_ms(),
            last_mono: Instant::now(),
        }
    }

    /// Reads both clocks; returns the jump since the previous check, if it exceeds the threshold.
    pub fn check(&mut self) -> Option<Jump> {
        self.observe(now_ms(), Instant::now())
    }

    fn observe(&mut self, wall_ms: i64, mono: Instant) -> Option<Jump> {
        let elapsed =
            i64::try_from(mono.saturating_duration_since(self.last_mono).as_millis()).unwrap_or(i64::MAX);
        let expected_ms = self.last_wall_ms.saturating_add(elapsed);
        self.last_wall_ms = wall_ms;
        self.last_mono = mono;
        let delta_ms = wall_ms.saturating_sub(expected_ms);
        (delta_ms.abs() > self.threshold_ms).then_some(Jump { expected_ms, observed_ms: wall_ms, delta_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_past_the_threshold_are_jumps_either_way_and_drift_is_not() {
        let t0 = Instant::now();
        let mut d = JumpDetector { threshold_ms: 10_000, last_wall_ms: 1_000_000, last_mono: t0 };
        // 5 s of monotonic time, 5.002 s of wall time: slewing, not a jump.
        assert_eq!(d.observe(1_005_002, t0 + Duration::from_secs(5)), None);
        // One more second, but the wall clock moved an hour and a second.
        let j = d.observe(1_005_002 + 3_601_000, t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(j, Jump { expected_ms: 1_006_002, observed_ms: 4_606_002, delta_ms: 3_600_000 });
        // And back by an hour.
        let j = d.observe(4_607_002 - 3_600_000, t0 + Duration::from_secs(7)).unwrap();
        assert_eq!(j.delta_ms, -3_600_000);
        // A further second is normal again.
        assert_eq!(d.observe(1_008_002, t0 + Duration::from_secs(8)), None);
    }
}
