//! The histograms and labelled counters of `/metrics`, kept with the Prometheus project's Rust client (the
//! `prometheus` crate): how long an acknowledgement takes, how long the hardware takes to sign a head and the
//! TSA to stamp it, how large group commits are, what each source sends, and failures by kind. Base units
//! (seconds, events), `anchorlog_` prefix, `_total` on counters.
//!
//! Rendered in the Prometheus text format 0.0.4, the same format as the scalar gauges and counters that stay in
//! [`crate::metrics::Metrics`] (atomics the readiness checks read): one exposition, one format, so
//! `promtool check metrics` and every scraper read it whole. (The `prometheus-client` crate only writes
//! OpenMetrics, whose counter families are named without `_total`; mixing both in one answer would not parse.)

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The instruments and the registry they are exposed from.
#[derive(Debug)]
pub struct Instruments {
    registry: Registry,
    /// Seconds from a parsed request to its acknowledgement (the group commit's fsync included).
    pub ack_seconds: Histogram,
    /// Seconds the signer took for one head (`C_Sign` / `TPM2_Sign`): from the sealed head text to its signature.
    pub sign_seconds: Histogram,
    /// Seconds from a head's seal to its stored RFC 3161 token.
    pub timestamp_lag_seconds: Histogram,
    /// Events per group commit of the writer.
    pub commit_events: Histogram,
    /// Group commits replayed with a savepoint per request because a request failed in the optimistic attempt
    /// (normally 0: a request fails only on a storage fault; each replay costs the group's work twice).
    pub commit_replays: IntCounter,
    /// Events stored, by source and format.
    ingested: IntCounterVec,
    /// Failures by kind.
    failures: IntCounterVec,
    /// Reloads of the client trust (client CAs, CRLs, principals, source secrets), by outcome.
    reloads: IntCounterVec,
    /// Abuse limits that refused or cut off a client, by listener and limit.
    limit_hits: IntCounterVec,
    /// Failed `accept()` calls, by listener (file descriptors exhausted, mostly).
    accept_errors: IntCounterVec,
    /// Open connections, by listener.
    open_connections: IntGaugeVec,
    /// Syslog frames, by outcome ([`SYSLOG_OUTCOMES`]).
    syslog_frames: IntCounterVec,
    /// Times a syslog connection was not read because it held `syslog.max_in_flight_messages` uncommitted.
    pub syslog_read_pauses: IntCounter,
}

/// The outcomes of a syslog frame (`anchorlog_syslog_frames_total{outcome}`), each exposed at 0 from the start:
/// - `stored`: committed to the log (durable);
/// - `truncated`: the connection closed inside the frame; nothing of it is stored;
/// - `too_long`: over `syslog.max_message_bytes`; nothing of it is stored and the connection is closed;
/// - `bad_framing`: not a valid octet count (`MSG-LEN SP`); the connection is closed;
/// - `unstored`: received whole, but the appliance stopped (shutdown) before the writer could commit it.
pub const SYSLOG_OUTCOMES: [&str; 5] = ["stored", "truncated", "too_long", "bad_framing", "unstored"];

/// The listeners, as the `listener` label names them (the same names as the OpenAPI document's `x-listeners`).
pub const LISTENERS: [&str; 4] = ["mtls", "source", "health", "syslog"];

/// The limits counted by [`Instruments::limit_hit`] (`limit` label), each exposed at 0 from the start:
/// - `handshake_timeout`: the TLS handshake did not finish within `limits.handshake_timeout_ms`;
/// - `header_timeout`: a request's headers did not arrive within `limits.header_read_timeout_ms` of the connection's
///   start or the previous answer (an idle keep-alive connection closed after that time counts too);
/// - `body_timeout`: a body did not arrive within `limits.body_read_timeout_ms` (answered 408);
/// - `body_too_large`: a body over `limits.max_body_bytes` (answered 413, before an HMAC is computed);
/// - `decompressed_too_large`: a `Content-Encoding: gzip|zstd` body that decodes past `limits.max_body_bytes`, or
///   a zstd frame asking for a larger window (answered 413, stopped at the limit while decoding);
/// - `connections_per_address`: a connection over `limits.max_connections_per_address`, closed at once;
/// - `response_too_large`: a search page over `limits.max_response_bytes` (answered 422);
/// - `stream_stalled`: an event stream whose consumer took no page for `limits.stream_stall_timeout_ms` (ended,
///   its connection closed);
/// - `idle_timeout`: a syslog connection silent for `syslog.idle_timeout_s`, closed.
pub const LIMITS: [&str; 9] = [
    "handshake_timeout",
    "header_timeout",
    "body_timeout",
    "body_too_large",
    "decompressed_too_large",
    "connections_per_address",
    "response_too_large",
    "stream_stalled",
    "idle_timeout",
];

/// The failure kinds counted by [`Instruments::failed`]; every one is exposed (at 0) from the start, so an alert
/// rule on a rate never sees a missing series.
pub const FAILURE_KINDS: [&str; 5] =
    ["sealing", "timestamping", "witnessing", "ingest_rejected", "ingest_line_rejected"];

impl Default for Instruments {
    fn default() -> Self {
        // Fixed arguments (start > 0, factor > 1, count ≥ 1): the bucket constructors cannot fail; the fallback is
        // the crate's default buckets rather than a panic.
        // 0.5 ms .. ~16 s, doubling: fsync-bound acks, HSM signatures and TSA round trips all land inside.
        let seconds = |name: &str, help: &str| {
            let buckets =
                exponential_buckets(0.0005, 2.0, 16).unwrap_or_else(|_| prometheus::DEFAULT_BUCKETS.to_vec());
            histogram(HistogramOpts::new(name, help).buckets(buckets))
        };
        let ack_seconds = seconds(
            "ingest_ack_seconds",
            "From a parsed request to its acknowledgement after the group commit.",
        );
        let sign_seconds =
            seconds("head_sign_seconds", "Time the signer (HSM or TPM) took to sign one head.");
        let timestamp_lag_seconds =
            seconds("timestamp_lag_seconds", "From a head's seal to its stored RFC 3161 token.");
        // 1 .. 32768 events, doubling (a group commit holds at most 10,000).
        let commit_buckets =
            exponential_buckets(1.0, 2.0, 16).unwrap_or_else(|_| prometheus::DEFAULT_BUCKETS.to_vec());
        let commit_events = histogram(
            HistogramOpts::new("commit_events", "Events per group commit of the writer.")
                .buckets(commit_buckets),
        );
        let commit_replays = counter(
            "commit_replays_total",
            "Group commits replayed with a savepoint per request because a request of the group failed.",
        );
        let ingested = counter_vec(
            "events_ingested_total",
            "Events stored, by source and format.",
            &["source", "format"],
        );
        let failures = counter_vec("failures_total", "Failures by kind.", &["kind"]);
        let reloads = counter_vec(
            "reloads_total",
            "Reloads of client CAs, CRLs, principals and source secrets (SIGHUP or a changed file), by outcome.",
            &["outcome"],
        );
        let limit_hits = counter_vec(
            "limit_hits_total",
            "Clients refused or cut off by an abuse limit, by listener and limit.",
            &["listener", "limit"],
        );
        let accept_errors = counter_vec(
            "accept_errors_total",
            "Failed accept() calls (file descriptors exhausted, mostly), by listener.",
            &["listener"],
        );
        let open_connections = gauge_vec("open_connections", "Open connections, by listener.", &["listener"]);
        let syslog_frames = counter_vec(
            "syslog_frames_total",
            "Syslog frames by outcome: stored, or refused (truncated, too_long, bad_framing, unstored).",
            &["outcome"],
        );
        let syslog_read_pauses = counter(
            "syslog_read_pauses_total",
            "Times a syslog connection was not read because it held syslog.max_in_flight_messages uncommitted \
             messages (back-pressure while the writer is behind).",
        );
        let registry = Registry::new_custom(Some("anchorlog".to_owned()), None).unwrap_or_default();
        for collector in [
            Box::new(ack_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sign_seconds.clone()),
            Box::new(timestamp_lag_seconds.clone()),
            Box::new(commit_events.clone()),
            Box::new(commit_replays.clone()),
            Box::new(ingested.clone()),
            Box::new(failures.clone()),
            Box::new(reloads.clone()),
            Box::new(limit_hits.clone()),
            Box::new(accept_errors.clone()),
            Box::new(open_connections.clone()),
            Box::new(syslog_frames.clone()),
            Box::new(syslog_read_pauses.clone()),
        ] {
            if let Err(e) = registry.register(collector) {
                tracing::warn!(error = %e, "metrics: cannot register an instrument");
            }
        }
        for kind in FAILURE_KINDS {
            failures.with_label_values(&[kind]);
        }
        for outcome in ["ok", "failed"] {
            reloads.with_label_values(&[outcome]);
        }
        for listener in LISTENERS {
            for limit in LIMITS {
                limit_hits.with_label_values(&[listener, limit]);
            }
            accept_errors.with_label_values(&[listener]);
            open_connections.with_label_values(&[listener]);
        }
        for outcome in SYSLOG_OUTCOMES {
            syslog_frames.with_label_values(&[outcome]);
        }
        Instruments {
            syslog_frames,
            syslog_read_pauses,
            registry,
            ack_seconds,
            sign_seconds,
            timestamp_lag_seconds,
            commit_events,
            commit_replays,
            ingested,
            failures,
            reloads,
            limit_hits,
            accept_errors,
            open_connections,
        }
    }
}

/// A histogram from options that are constants of this module. It fails only on an invalid name or bucket list,
/// which no input can cause: the unit test below builds every one, so a typo fails the build's tests, not a start.
fn histogram(opts: HistogramOpts) -> Histogram {
    #[allow(clippy::expect_used)]
    Histogram::with_opts(opts).expect("constant histogram options are valid")
}

/// A counter from options that are constants of this module (same reasoning as [`histogram`]).
fn counter(name: &str, help: &str) -> IntCounter {
    #[allow(clippy::expect_used)]
    IntCounter::new(name, help).expect("constant counter options are valid")
}

/// A labelled counter from options that are constants of this module (same reasoning as [`histogram`]).
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    #[allow(clippy::expect_used)]
    IntCounterVec::new(Opts::new(name, help), labels).expect("constant counter options are valid")
}

/// A labelled gauge from options that are constants of this module (same reasoning as [`histogram`]).
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    #[allow(clippy::expect_used)]
    IntGaugeVec::new(Opts::new(name, help), labels).expect("constant gauge options are valid")
}

impl Instruments {
    /// Counts one client refused or cut off on `listener` by `limit` (one of [`LIMITS`]).
    pub fn limit_hit(&self, listener: &str, limit: &str) {
        self.limit_hits.with_label_values(&[listener, limit]).inc();
    }

    /// The count of [`Self::limit_hit`] so far (tests, status lines).
    pub fn limit_hits(&self, listener: &str, limit: &str) -> u64 {
        self.limit_hits.with_label_values(&[listener, limit]).get()
    }

    /// Counts one failed `accept()` on `listener`.
    pub fn accept_failed(&self, listener: &str) {
        self.accept_errors.with_label_values(&[listener]).inc();
    }

    /// Adds `delta` (+1 opened, -1 closed) to `listener`'s open connections.
    pub fn connections(&self, listener: &str, delta: i64) {
        self.open_connections.with_label_values(&[listener]).add(delta);
    }

    /// Counts one failure of `kind` (one of [`FAILURE_KINDS`]).
    pub fn failed(&self, kind: &str) {
        self.failures.with_label_values(&[kind]).inc();
    }

    /// Counts one reload of the client trust: `ok` (swapped in) or not (the old state kept).
    pub fn reloaded(&self, ok: bool) {
        self.reloads.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
    }

    /// Counts `n` events stored from `source` in `format`.
    pub fn ingested(&self, source: &str, format: &str, n: u64) {
        self.ingested.with_label_values(&[source, format]).inc_by(n);
    }

    /// Counts `n` syslog frames with `outcome` (one of [`SYSLOG_OUTCOMES`]).
    pub fn syslog_frames(&self, outcome: &str, n: u64) {
        self.syslog_frames.with_label_values(&[outcome]).inc_by(n);
    }

    /// Counts one pause in reading a syslog connection (back-pressure).
    pub fn syslog_read_paused(&self) {
        self.syslog_read_pauses.inc();
    }

    /// The count of [`Self::syslog_frames`] so far.
    pub fn syslog_frame_count(&self, outcome: &str) -> u64 {
        self.syslog_frames.with_label_values(&[outcome]).get()
    }

    /// Appends the instruments in the Prometheus text format 0.0.4.
    pub fn render(&self, out: &mut String) {
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), out) {
            tracing::warn!(error = %e, "metrics: cannot encode the histograms");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instrument_is_registered_and_rendered_with_its_prefix() {
        let i = Instruments::default();
        i.ack_seconds.observe(0.002);
        i.ingested("keycloak", "keycloak", 3);
        i.failed("sealing");
        let mut out = String::new();
        i.render(&mut out);
        for family in [
            "anchorlog_ingest_ack_seconds",
            "anchorlog_head_sign_seconds",
            "anchorlog_timestamp_lag_seconds",
            "anchorlog_commit_events",
            "anchorlog_commit_replays_total",
            "anchorlog_events_ingested_total",
            "anchorlog_failures_total",
            "anchorlog_reloads_total",
            "anchorlog_limit_hits_total",
            "anchorlog_accept_errors_total",
            "anchorlog_open_connections",
        ] {
            assert!(out.contains(&format!("# TYPE {family} ")), "{family} missing from:\n{out}");
        }
        assert!(out.contains("anchorlog_ingest_ack_seconds_bucket{le=\"0.002\"} 1\n"), "{out}");
        assert!(
            out.contains("anchorlog_events_ingested_total{format=\"keycloak\",source=\"keycloak\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("anchorlog_failures_total{kind=\"sealing\"} 1\n"), "{out}");
        i.reloaded(false);
        let mut out = String::new();
        i.render(&mut out);
        assert!(out.contains("anchorlog_reloads_total{outcome=\"failed\"} 1\n"), "{out}");
        assert!(out.contains("anchorlog_reloads_total{outcome=\"ok\"} 0\n"), "{out}");
        assert!(out.contains("anchorlog_failures_total{kind=\"witnessing\"} 0\n"), "{out}");
        i.limit_hit("source", "body_timeout");
        i.accept_failed("mtls");
        i.connections("mtls", 2);
        i.connections("mtls", -1);
        let mut out = String::new();
        i.render(&mut out);
        assert!(
            out.contains("anchorlog_limit_hits_total{limit=\"body_timeout\",listener=\"source\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("anchorlog_limit_hits_total{limit=\"response_too_large\",listener=\"mtls\"} 0\n")
        );
        assert!(out.contains("anchorlog_accept_errors_total{listener=\"mtls\"} 1\n"), "{out}");
        assert!(out.contains("anchorlog_open_connections{listener=\"mtls\"} 1\n"), "{out}");
        assert_eq!(i.limit_hits("source", "body_timeout"), 1);
    }
}
