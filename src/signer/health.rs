//! How the signer device is doing, as `/readyz` and `/metrics` show it, and how its calls are supervised: a
//! timeout per call, and an exponential back-off after errors that retrying cannot fix (docs/RELIABILITY.md).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

/// Default `signer.sign_timeout_ms`: below the systemd `WatchdogSec=30`, far above any healthy device (SoftHSM
/// signs in well under a millisecond, a TPM in tens of milliseconds, a network HSM in a few).
pub const DEFAULT_SIGN_TIMEOUT_MS: u64 = 10_000;
/// Default `signer.backoff_initial_ms`: the first pause after an error retrying cannot fix.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 10_000;
/// Default `signer.backoff_max_ms`: the cap of the doubling pause (10 minutes).
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 600_000;
/// Abandoned threads that may still be blocked in the device before no further one is opened: a device that
/// hangs every session would otherwise cost one thread per attempt.
pub const MAX_STUCK_THREADS: usize = 4;

/// How the signer's calls are supervised (`[signer]` `sign_timeout_ms`, `backoff_initial_ms`,
/// `backoff_max_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerSupervision {
    /// Longest a device call (queueing and a reopen included) may take before its thread is abandoned.
    pub timeout: Duration,
    /// First pause after an error retrying cannot fix (wrong PIN, key missing, PIN locked, TPM lockout).
    pub backoff_initial: Duration,
    /// The pause doubles at each such error up to this.
    pub backoff_max: Duration,
}

impl Default for SignerSupervision {
    fn default() -> Self {
        SignerSupervision {
            timeout: Duration::from_millis(DEFAULT_SIGN_TIMEOUT_MS),
            backoff_initial: Duration::from_millis(DEFAULT_BACKOFF_INITIAL_MS),
            backoff_max: Duration::from_millis(DEFAULT_BACKOFF_MAX_MS),
        }
    }
}

/// The back-off in force after an error retrying cannot fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// The error, as the operator must read it.
    pub error: String,
    /// The current pause (doubles at each repeat, up to the cap).
    pub delay_ms: u64,
    /// How many such errors in a row.
    pub failures: u64,
    /// When the first of them happened (epoch ms).
    pub since_ms: i64,
}

/// Shared between the [`super::SignerHandle`] (which updates it) and the metrics and readiness (which read it).
#[derive(Debug, Default)]
pub struct SignerHealth {
    /// Device calls that timed out.
    pub timeouts: AtomicU64,
    /// Errors retrying cannot fix.
    pub unrecoverable_errors: AtomicU64,
    /// Device calls the back-off refused without touching the device.
    pub backed_off_calls: AtomicU64,
    /// Since when calls time out (epoch ms of the first timeout after a success; 0: the last call answered).
    pub hung_since_ms: AtomicI64,
    /// The configured timeout (for messages).
    pub timeout_ms: AtomicU64,
    /// The configured back-off cap (for messages).
    pub backoff_max_ms: AtomicU64,
    backoff: Mutex<Option<Backoff>>,
    /// One token per abandoned thread; alive while that thread is blocked in the device.
    abandoned: Mutex<Vec<Weak<()>>>,
}

impl SignerHealth {
    /// A fresh state for a signer supervised with `s`.
    pub fn new(s: &SignerSupervision) -> Self {
        let h = SignerHealth::default();
        h.timeout_ms.store(u64::try_from(s.timeout.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        h.backoff_max_ms
            .store(u64::try_from(s.backoff_max.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        h
    }

    /// Abandoned threads still blocked in the device.
    pub fn stuck_threads(&self) -> usize {
        let Ok(mut v) = self.abandoned.lock() else { return 0 };
        v.retain(|w| w.strong_count() > 0);
        v.len()
    }

    /// Remembers an abandoned thread by the token it holds while it runs.
    pub fn abandoned(&self, token: Weak<()>) {
        if let Ok(mut v) = self.abandoned.lock() {
            v.retain(|w| w.strong_count() > 0);
            v.push(token);
        }
    }

    /// The back-off in force, if any.
    pub fn backoff(&self) -> Option<Backoff> {
        self.backoff.lock().ok().and_then(|b| b.clone())
    }

    /// Sets or clears the back-off in force.
    pub fn set_backoff(&self, b: Option<Backoff>) {
        if let Ok(mut g) = self.backoff.lock() {
            *g = b;
        }
    }

    /// A device call answered (successfully or with an error the device reported): not hung.
    pub fn answered(&self) {
        self.hung_since_ms.store(0, Ordering::Relaxed);
    }

    /// A device call timed out.
    pub fn timed_out(&self, now_ms: i64) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        let _ = self.hung_since_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Prometheus rows: (name, type, help, value).
    pub fn metric_rows(&self) -> [(&'static str, &'static str, &'static str, String); 5] {
        let r = Ordering::Relaxed;
        let backoff_s = self.backoff().map_or(0.0, |b| b.delay_ms as f64 / 1000.0);
        [
            (
                "anchorlog_signer_timeouts_total",
                "counter",
                "Signer calls that did not answer within signer.sign_timeout_ms (their thread was abandoned).",
                self.timeouts.load(r).to_string(),
            ),
            (
                "anchorlog_signer_stuck_threads",
                "gauge",
                "Abandoned signer threads still blocked in the device.",
                self.stuck_threads().to_string(),
            ),
            (
                "anchorlog_signer_unrecoverable_errors_total",
                "counter",
                "Signer errors retrying cannot fix (wrong PIN, PIN locked, key missing, TPM lockout).",
                self.unrecoverable_errors.load(r).to_string(),
            ),
            (
                "anchorlog_signer_backed_off_calls_total",
                "counter",
                "Signer calls refused by the back-off without touching the device.",
                self.backed_off_calls.load(r).to_string(),
            ),
            (
                "anchorlog_signer_backoff_seconds",
                "gauge",
                "The current pause between attempts after an error retrying cannot fix (0: none).",
                format!("{backoff_s:.3}"),
            ),
        ]
    }
}

/// The next pause: the initial one, or the previous one doubled, never above the cap.
pub fn next_delay(previous_ms: Option<u64>, s: &SignerSupervision) -> u64 {
    let initial = u64::try_from(s.backoff_initial.as_millis()).unwrap_or(u64::MAX);
    let cap = u64::try_from(s.backoff_max.as_millis()).unwrap_or(u64::MAX);
    previous_ms.map_or(initial, |p| p.saturating_mul(2)).min(cap).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_the_initial_one_up_to_the_cap() {
        let s = SignerSupervision {
            timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(10_000),
            backoff_max: Duration::from_millis(600_000),
        };
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..9 {
            let n = next_delay(d, &s);
            seen.push(n / 1000);
            d = Some(n);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }

    #[test]
    fn abandoned_threads_count_while_their_token_lives() {
        let h = SignerHealth::new(&SignerSupervision::default());
        let a = std::sync::Arc::new(());
        let b = std::sync::Arc::new(());
        h.abandoned(std::sync::Arc::downgrade(&a));
        h.abandoned(std::sync::Arc::downgrade(&b));
        assert_eq!(h.stuck_threads(), 2);
        drop(a);
        assert_eq!(h.stuck_threads(), 1);
        drop(b);
        assert_eq!(h.stuck_threads(), 0);
    }
}
