//! Process-wide counters exported in the Prometheus text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters and gauges of one running appliance.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events stored (not counting duplicates).
    pub events_appended: AtomicU64,
    /// Events answered as duplicates.
    pub events_duplicate: AtomicU64,
    /// Requests rejected with a 4xx.
    pub requests_rejected: AtomicU64,
    /// Invalid access attempts: refused TLS handshakes and 401/403 answers (recorded or not).
    pub access_denied: AtomicU64,
    /// Invalid access attempts over the record budget, counted but not recorded one by one.
    pub access_denied_unrecorded: AtomicU64,
    /// Heads sealed and stored.
    pub heads_sealed: AtomicU64,
    /// Seal attempts that failed (signer or storage).
    pub seal_failures: AtomicU64,
    /// Tree size of the latest signed head.
    pub sealed_tree_size: AtomicU64,
    /// Height of the latest signed head (-1 before the first).
    pub last_height: AtomicI64,
    /// Seal time of the latest head, ms since the epoch (0 before the first).
    pub last_seal_ms: AtomicI64,
    /// Milliseconds the last head took to sign.
    pub last_sign_ms: AtomicU64,
    /// Whether at least one TSA is configured.
    pub timestamping_enabled: AtomicBool,
    /// Heads that have a stored RFC 3161 token.
    pub heads_timestamped: AtomicU64,
    /// Seal time (ms) of the oldest head without a token; 0 when every head has one.
    pub oldest_untimestamped_ms: AtomicI64,
    /// TSA requests that failed or returned a token that does not verify.
    pub timestamp_failures: AtomicU64,
    /// Milliseconds from seal to stored token, of the last token.
    pub last_timestamp_lag_ms: AtomicI64,
    /// When the sealer last went round its loop (ms since the epoch): it does at every seal interval, idle or
    /// not, so a stale value means it is stuck (a hung signer or writer). Gates the systemd watchdog.
    pub sealer_alive_ms: AtomicI64,
    /// Since when sealing fails (ms since the epoch; 0 while it works): the first failed attempt after a success.
    pub sealing_failing_since_ms: AtomicI64,
    /// Since when writes to the database fail for a storage fault (full disk, lock held elsewhere), and which.
    pub storage: crate::store::fault::StorageHealth,
    /// Since when committed events wait for a head (ms since the epoch; 0 when every committed event is sealed).
    pub unsealed_since_ms: AtomicI64,
    /// Histograms and labelled counters (latencies, commit sizes, per-source ingest, failures by kind).
    #[cfg(feature = "server")]
    pub instruments: crate::instruments::Instruments,
    /// Cosignatures a head needs (`[witnessing] quorum`); 0 when no witness is configured.
    pub witness_quorum: AtomicU64,
    /// Heads (sealed while witnessing was on) with fewer cosignatures than the quorum.
    pub heads_below_quorum: AtomicU64,
    /// Seal time (ms) of the oldest head below the quorum; 0 when none.
    pub oldest_below_quorum_ms: AtomicI64,
    /// Witness cosignatures verified and stored.
    pub cosignatures_stored: AtomicU64,
    /// Submissions to witnesses that got no cosignature (unreachable, errors, invalid answers; not refusals).
    pub witness_failures: AtomicU64,
    /// Refusals of our own heads after a correct proof (409 with a larger size, same size and another root, 422):
    /// evidence that this log was rolled back or forked.
    pub witness_refusals: AtomicU64,
    /// Each configured witness's state, in configuration order.
    pub witnesses: Mutex<Vec<WitnessStatus>>,
    /// The signer device's timeouts, abandoned threads and back-off (set once the signer is open).
    pub signer: std::sync::OnceLock<std::sync::Arc<crate::signer::SignerHealth>>,
}

/// One witness as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WitnessStatus {
    /// The configured name.
    pub name: String,
    /// The submission URL.
    pub url: String,
    /// The highest head it cosigned (-1: none yet).
    pub last_cosigned_height: i64,
    /// `ok`, `failing` (no answer or errors) or `refused` (it refused our heads: rollback or fork evidence).
    pub state: &'static str,
    /// The last error or refusal, if the state is not `ok`.
    pub last_error: Option<String>,
}

impl Metrics {
    /// A fresh set with `last_height = -1`.
    pub fn new() -> Self {
        let m = Self::default();
        m.last_height.store(-1, Ordering::Relaxed);
        m
    }

    /// Renders the Prometheus exposition text; `committed` is the current number of stored events.
    pub fn render(&self, committed: u64) -> String {
        let mut out = String::new();
        let r = Ordering::Relaxed;
        let sealed = self.sealed_tree_size.load(r);
        let rows: [(&str, &str, &str, String); 12] = [
            (
                "anchorlog_events_appended_total",
                "counter",
                "Events stored.",
                self.events_appended.load(r).to_string(),
            ),
            (
                "anchorlog_events_duplicate_total",
                "counter",
                "Events answered as duplicates.",
                self.events_duplicate.load(r).to_string(),
            ),
            (
                "anchorlog_requests_rejected_total",
                "counter",
                "Requests rejected with a client error.",
                self.requests_rejected.load(r).to_string(),
            ),
            (
                "anchorlog_access_denied_total",
                "counter",
                "Invalid access attempts: refused TLS handshakes and 401/403 answers.",
                self.access_denied.load(r).to_string(),
            ),
            (
                "anchorlog_access_denied_unrecorded_total",
                "counter",
                "Invalid access attempts over the record budget (counted in the next record's `suppressed`).",
                self.access_denied_unrecorded.load(r).to_string(),
            ),
            (
                "anchorlog_heads_sealed_total",
                "counter",
                "Signed heads stored.",
                self.heads_sealed.load(r).to_string(),
            ),
            (
                "anchorlog_seal_failures_total",
                "counter",
                "Failed seal attempts.",
                self.seal_failures.load(r).to_string(),
            ),
            ("anchorlog_events_stored", "gauge", "Events in the log.", committed.to_string()),
            (
                "anchorlog_sealed_tree_size",
                "gauge",
                "Tree size of the latest signed head.",
                sealed.to_string(),
            ),
            (
                "anchorlog_unsealed_events",
                "gauge",
                "Events not yet covered by a signed head.",
                committed.saturating_sub(sealed).to_string(),
            ),
            (
                "anchorlog_last_head_height",
                "gauge",
                "Height of the latest signed head.",
                self.last_height.load(r).to_string(),
            ),
            (
                "anchorlog_last_seal_timestamp_seconds",
                "gauge",
                "Seal time of the latest head.",
                format!("{:.3}", self.last_seal_ms.load(r) as f64 / 1000.0),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        if let Some(h) = self.signer.get() {
            for (name, kind, help, value) in h.metric_rows() {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
            }
        }
        self.render_timestamping(&mut out);
        self.render_witnessing(&mut out);
        #[cfg(feature = "server")]
        self.instruments.render(&mut out);
        out
    }

    /// Heads below the witness quorum and the age in seconds of the oldest one (`None` when witnessing is off;
    /// age `None` when every head has its quorum).
    pub fn below_quorum(&self) -> Option<(u64, Option<f64>)> {
        let r = Ordering::Relaxed;
        if self.witness_quorum.load(r) == 0 {
            return None;
        }
        let n = self.heads_below_quorum.load(r);
        let oldest = self.oldest_below_quorum_ms.load(r);
        let age = (n > 0 && oldest > 0).then(|| (crate::store::now_ms() - oldest).max(0) as f64 / 1000.0);
        Some((n, age))
    }

    /// A copy of every witness's state.
    pub fn witness_statuses(&self) -> Vec<WitnessStatus> {
        self.witnesses.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Updates witness `index`'s state.
    pub fn set_witness(&self, index: usize, f: impl FnOnce(&mut WitnessStatus)) {
        if let Ok(mut w) = self.witnesses.lock() {
            if let Some(s) = w.get_mut(index) {
                f(s);
            }
        }
    }

    fn render_witnessing(&self, out: &mut String) {
        let r = Ordering::Relaxed;
        let mut row = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        row(
            "anchorlog_witness_quorum",
            "gauge",
            "Cosignatures from distinct witnesses a head needs; 0 when witnessing is off.",
            self.witness_quorum.load(r).to_string(),
        );
        let Some((below, age)) = self.below_quorum() else { return };
        row(
            "anchorlog_heads_below_quorum",
            "gauge",
            "Heads sealed while witnessing was on with fewer cosignatures than the quorum.",
            below.to_string(),
        );
        row(
            "anchorlog_oldest_below_quorum_head_age_seconds",
            "gauge",
            "Age of the oldest head below the quorum (0 when none).",
            format!("{:.3}", age.unwrap_or(0.0)),
        );
        row(
            "anchorlog_cosignatures_stored_total",
            "counter",
            "Witness cosignatures verified and stored.",
            self.cosignatures_stored.load(r).to_string(),
        );
        row(
            "anchorlog_witness_failures_total",
            "counter",
            "Witness submissions that got no cosignature (unreachable, errors, invalid answers).",
            self.witness_failures.load(r).to_string(),
        );
        row(
            "anchorlog_witness_refusals_total",
            "counter",
            "Refusals of this log's heads by a witness after a correct proof: the log was rolled back or forked.",
            self.witness_refusals.load(r).to_string(),
        );
        let statuses = self.witness_statuses();
        let mut labelled = |name: &str, help: &str, value: &dyn Fn(&WitnessStatus) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for w in &statuses {
                let label = w.name.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(out, "{name}{{witness=\"{label}\"}} {}", value(w));
            }
        };
        labelled(
            "anchorlog_witness_last_cosigned_height",
            "Highest head this witness cosigned (-1: none yet).",
            &|w| w.last_cosigned_height.to_string(),
        );
        labelled(
            "anchorlog_witness_refusing",
            "1 while this witness refuses this log's heads (rollback or fork evidence), else 0.",
            &|w| u8::from(w.state == "refused").to_string(),
        );
    }

    /// Heads without an RFC 3161 token, and the age in seconds of the oldest one (`None` when timestamping
    /// is off; age `None` when every head has a token).
    pub fn untimestamped(&self) -> Option<(u64, Option<f64>)> {
        let r = Ordering::Relaxed;
        if !self.timestamping_enabled.load(r) {
            return None;
        }
        let heads = (self.last_height.load(r) + 1).max(0) as u64;
        let missing = heads.saturating_sub(self.heads_timestamped.load(r));
        let oldest = self.oldest_untimestamped_ms.load(r);
        let age =
            (missing > 0 && oldest > 0).then(|| (crate::store::now_ms() - oldest).max(0) as f64 / 1000.0);
        Some((missing, age))
    }

    fn render_timestamping(&self, out: &mut String) {
        let r = Ordering::Relaxed;
        let mut row = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let enabled = self.timestamping_enabled.load(r);
        row(
            "anchorlog_timestamping_enabled",
            "gauge",
            "1 if at least one RFC 3161 TSA is configured.",
            u8::from(enabled).to_string(),
        );
        let Some((missing, age)) = self.untimestamped() else { return };
        row(
            "anchorlog_heads_timestamped",
            "gauge",
            "Heads with a stored RFC 3161 token.",
            self.heads_timestamped.load(r).to_string(),
        );
        row(
            "anchorlog_untimestamped_heads",
            "gauge",
            "Signed heads without an RFC 3161 token yet.",
            missing.to_string(),
        );
        row(
            "anchorlog_oldest_untimestamped_head_age_seconds",
            "gauge",
            "Age of the oldest head without a token (0 when none).",
            format!("{:.3}", age.unwrap_or(0.0)),
        );
        row(
            "anchorlog_timestamp_failures_total",
            "counter",
            "TSA requests that failed or returned a token that does not verify.",
            self.timestamp_failures.load(r).to_string(),
        );
        row(
            "anchorlog_last_timestamp_lag_seconds",
            "gauge",
            "Seal to stored token, for the last token.",
            format!("{:.3}", self.last_timestamp_lag_ms.load(r) as f64 / 1000.0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.events_appended.store(5, Ordering::Relaxed);
        m.sealed_tree_size.store(3, Ordering::Relaxed);
        let text = m.render(5);
        assert!(text
            .contains("# TYPE anchorlog_events_appended_total counter\nanchorlog_events_appended_total 5\n"));
        assert!(text.contains("\nanchorlog_unsealed_events 2\n"));
        assert!(text.contains("\nanchorlog_last_head_height -1\n"));
        assert!(text.contains("\nanchorlog_timestamping_enabled 0\n"));
        assert!(!text.contains("anchorlog_untimestamped_heads"));
        m.timestamping_enabled.store(true, Ordering::Relaxed);
        m.last_height.store(4, Ordering::Relaxed);
        m.heads_timestamped.store(3, Ordering::Relaxed);
        m.oldest_untimestamped_ms.store(crate::store::now_ms() - 2_000, Ordering::Relaxed);
        let text = m.render(5);
        assert!(text.contains("\nanchorlog_untimestamped_heads 2\n"), "{text}");
        let (missing, age) = m.untimestamped().unwrap();
        assert_eq!(missing, 2);
        assert!((2.0..3.0).contains(&age.unwrap()), "{age:?}");
        assert!(text.contains("\nanchorlog_witness_quorum 0\n"), "{text}");
        assert!(!text.contains("anchorlog_heads_below_quorum"), "{text}");
    }

    #[test]
    fn renders_witnessing_with_one_labelled_row_per_witness() {
        let m = Metrics::new();
        m.witness_quorum.store(2, Ordering::Relaxed);
        m.heads_below_quorum.store(3, Ordering::Relaxed);
        m.oldest_below_quorum_ms.store(crate::store::now_ms() - 5_000, Ordering::Relaxed);
        *m.witnesses.lock().unwrap() = vec![
            WitnessStatus {
                name: "w1".into(),
                last_cosigned_height: 7,
                state: "ok",
                ..WitnessStatus::default()
            },
            WitnessStatus {
                name: "w\"2".into(),
                last_cosigned_height: -1,
                state: "refused",
                ..WitnessStatus::default()
            },
        ];
        let text = m.render(0);
        assert!(text.contains("\nanchorlog_witness_quorum 2\n"), "{text}");
        assert!(text.contains("\nanchorlog_heads_below_quorum 3\n"), "{text}");
        assert!(text.contains("\nanchorlog_witness_last_cosigned_height{witness=\"w1\"} 7\n"), "{text}");
        assert!(text.contains("\nanchorlog_witness_refusing{witness=\"w\\\"2\"} 1\n"), "{text}");
        let (n, age) = m.below_quorum().unwrap();
        assert_eq!(n, 3);
        assert!((5.0..6.0).contains(&age.unwrap()), "{age:?}");
    }
}
