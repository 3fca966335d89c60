//! The timestamper: gets an RFC 3161 token for every signed head, after the head is stored.
//!
//! Sealing never waits for a TSA: the sealer signs and stores a head, then announces its height on a watch
//! channel; this task requests a token for it right away, verifies the response completely (imprint =
//! SHA-256 of the head text, nonce, CMS signature, ESSCertID, critical `timeStamping` EKU, chain to the TSA's
//! configured CA, policy, `genTime >= seal time - skew`) and only then stores it through the single writer.
//!
//! Heads are stamped in height order. The configured TSAs are tried in order for each head (failover). When
//! none of them yields a valid token, the head stays untimestamped and the task backs off (doubling from
//! `retry_initial` up to `retry_max`); the next attempt starts at the oldest head without a token, so when a
//! TSA answers again the whole backlog is back-filled. Every head with height below the oldest untimestamped
//! one has a token, which is why a pass can stop at its first failure. A failing token is retried even when
//! [`crate::tsa::TsaError::is_retryable`] says a retry cannot help: a misbehaving TSA may recover, and the head must not
//! be given up. Ingest and sealing never block on any of this.

use crate::config::Config;
use crate::ledger::appender::AppenderHandle;
use crate::ledger::outage::{LifecycleGate, OutageAlert, OutageRecorder};
use crate::metrics::Metrics;
use crate::store::reads::LogReads;
use crate::store::{self, StoreError, StoredTimestamp};
use crate::tsa;
use anchorlog_core::stored::StoredHead;
use anchorlog_core::tsa::{verify_response, TrustAnchors, VerifyOptions};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Heads loaded from the database per refill; bounds memory while a long outage leaves a backlog.
const QUEUE_CHUNK: u64 = 256;

/// Why the timestamper could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TimestamperError {
    /// A TSA CA file could not be read.
    #[error("cannot read TSA CA file {path} (named by `{key}`): {source}")]
    CaFile {
        /// Dotted config key, e.g. `tsa[0].ca_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A TSA CA file holds no usable certificate.
    #[error("TSA CA file {path} (named by `{key}`): {reason}")]
    CaParse {
        /// Dotted config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// One configured TSA, ready to use.
#[derive(Debug, Clone)]
pub struct TsaEndpoint {
    /// `http://` URL.
    pub url: String,
    /// The CA certificate(s) its tokens must chain to.
    pub anchors: TrustAnchors,
    /// Required policy OID, if configured.
    pub policy: Option<const_oid::ObjectIdentifier>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Everything the timestamper needs from the configuration.
#[derive(Debug, Clone)]
pub struct TimestamperSettings {
    /// TSAs in failover order (never empty).
    pub tsas: Vec<TsaEndpoint>,
    /// How much earlier than the seal time a `genTime` may be.
    pub max_skew: Duration,
    /// First back-off delay after a failed attempt.
    pub retry_initial: Duration,
    /// Longest back-off delay.
    pub retry_max: Duration,
    /// Time the final pass on shutdown may take.
    pub final_pass: Duration,
}

impl TimestamperSettings {
    /// Reads the TSA CA files named in `config`; `None` when no `[[tsa]]` is configured (timestamping off).
    pub fn from_config(config: &Config) -> Result<Option<Self>, TimestamperError> {
        if config.tsas.is_empty() {
            return Ok(None);
        }
        let mut tsas = Vec::with_capacity(config.tsas.len());
        for (i, t) in config.tsas.iter().enumerate() {
            let key = format!("tsa[{i}].ca_file");
            let pem = std::fs::read(&t.ca_file).map_err(|source| TimestamperError::CaFile {
                key: key.clone(),
                path: t.ca_file.clone(),
                source,
            })?;
            let anchors = TrustAnchors::from_pem(&pem).map_err(|e| TimestamperError::CaParse {
                key,
                path: t.ca_file.clone(),
                reason: e.to_string(),
            })?;
            // `validate()` already checked the OID syntax.
            let policy = t.policy.as_deref().and_then(|p| p.parse().ok());
            tsas.push(TsaEndpoint { url: t.url.clone(), anchors, policy, timeout: t.timeout() });
        }
        let ts = &config.timestamping;
        Ok(Some(TimestamperSettings {
            tsas,
            max_skew: Duration::from_secs(ts.max_skew_s),
            retry_initial: Duration::from_millis(ts.retry_initial_ms),
            retry_max: Duration::from_millis(ts.retry_max_ms),
            final_pass: Duration::from_secs(config.server.shutdown_grace_s.max(1)),
        }))
    }
}

/// The timestamper task.
pub struct Timestamper {
    settings: TimestamperSettings,
    appender: AppenderHandle,
    reads: LogReads,
    metrics: Arc<Metrics>,
    /// Untimestamped heads in height order (a window of the backlog).
    queue: VecDeque<StoredHead>,
    /// Next height to look for in the database (everything below is in `queue` or has a token).
    scan_from: u64,
    backoff: Duration,
    next_try: Instant,
    /// Records when timestamping starts failing and when it works again (PCI DSS 10.7.3).
    outage: OutageRecorder,
}

impl Timestamper {
    /// A timestamper over the stored heads; call [`Timestamper::run`] to start it.
    pub fn new(
        settings: TimestamperSettings,
        appender: AppenderHandle,
        reads: LogReads,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.timestamping_enabled.store(true, Ordering::Relaxed);
        let backoff = settings.retry_initial;
        Timestamper {
            settings,
            appender,
            reads,
            metrics,
            queue: VecDeque::new(),
            scan_from: 0,
            backoff,
            next_try: Instant::now(),
            outage: OutageRecorder::new("timestamping", None),
        }
    }

    /// Records the start and end of every timestamping outage in the log through `gate` (see
    /// [`OutageRecorder`]).
    pub fn record_outages(mut self, gate: LifecycleGate) -> Self {
        self.outage.set_sink((self.appender.clone(), gate));
        self
    }

    /// Alerts outages that last past the threshold (see [`OutageAlert`]).
    pub fn alert_outages(mut self, alert: OutageAlert) -> Self {
        self.outage.set_alert(alert);
        self
    }

    /// Runs until `stop` turns true (send it after the sealer's final seal), then makes one bounded pass
    /// over the heads still without a token. Those left over are back-filled after the next start.
    pub async fn run(mut self, mut sealed: watch::Receiver<i64>, mut stop: watch::Receiver<bool>) {
        match self.count_stored().await {
            Ok(n) => self.metrics.heads_timestamped.store(n, Ordering::Relaxed),
            Err(e) => tracing::error!(error = %e, "timestamper: cannot count stored tokens"),
        }
        let urls: Vec<&str> = self.settings.tsas.iter().map(|t| t.url.as_str()).collect();
        tracing::info!(tsas = ?urls, "timestamping on: every head gets an RFC 3161 token");
        loop {
            if *stop.borrow() {
                break;
            }
            self.refill().await;
            let now = Instant::now();
            if !self.queue.is_empty() && now >= self.next_try {
                self.pass(Some(&stop)).await;
                continue;
            }
            let wait = if self.queue.is_empty() { Duration::from_secs(3600) } else { self.next_try - now };
            tokio::select! {
                changed = sealed.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        // Shutdown: the sealer has sealed its last head; try once more to stamp everything, bounded.
        self.next_try = Instant::now();
        let budget = self.settings.final_pass;
        let final_pass = async {
            self.refill().await;
            self.pass(None).await;
        };
        if tokio::time::timeout(budget, final_pass).await.is_err() {
            tracing::warn!(
                "timestamper: final pass did not finish in {budget:?}; the rest is back-filled after restart"
            );
        }
        let left = self.untimestamped();
        if left > 0 {
            tracing::warn!(untimestamped_heads = left, "stopping with heads that have no RFC 3161 token yet; they are back-filled after the next start");
        }
    }

    fn untimestamped(&self) -> u64 {
        let heads = (self.metrics.last_height.load(Ordering::Relaxed) + 1).max(0) as u64;
        heads.saturating_sub(self.metrics.heads_timestamped.load(Ordering::Relaxed))
    }

    async fn count_stored(&self) -> Result<u64, StoreError> {
        self.reads.timestamp_count().await
    }

    /// Loads heads without a token that are not queued yet (a bounded window).
    async fn refill(&mut self) {
        if self.queue.len() as u64 >= QUEUE_CHUNK {
            return;
        }
        let from = self.scan_from;
        let limit = QUEUE_CHUNK - self.queue.len() as u64;
        let loaded = self.reads.heads_without_timestamp(from, limit).await;
        match loaded {
            Ok(heads) => {
                if let Some(last) = heads.last() {
                    self.scan_from = last.height + 1;
                }
                self.queue.extend(heads);
            }
            Err(e) => tracing::error!(error = %e, "timestamper: cannot read heads"),
        }
        self.publish_oldest();
    }

    fn publish_oldest(&self) {
        let oldest = self.queue.front().map_or(0, |h| h.sealed_at_ms);
        self.metrics.oldest_untimestamped_ms.store(oldest, Ordering::Relaxed);
    }

    /// Stamps queued heads in height order until the queue is empty, an attempt fails, or `stop` turns true.
    async fn pass(&mut self, stop: Option<&watch::Receiver<bool>>) {
        while let Some(head) = self.queue.front().cloned() {
            if stop.is_some_and(|s| *s.borrow()) {
                return;
            }
            match self.stamp(&head).await {
                Ok(token) => {
                    let height = token.height;
                    let (gen_time, tsa_url) = (token.gen_time.clone(), token.tsa_url.clone());
                    if let Err(e) = self.appender.store_timestamp(token).await {
                        if let crate::ledger::appender::AppendError::Store(se) = &e {
                            self.metrics.storage.observe::<()>(Err(se));
                        }
                        tracing::error!(height, error = %e, "storing the time-stamp token failed; will retry");
                        self.fail();
                        self.outage.failed(&format!("storing the token of head {height}: {e}")).await;
                        return;
                    }
                    self.outage.succeeded().await;
                    let lag_ms = store::now_ms() - head.sealed_at_ms;
                    tracing::info!(height, gen_time = %gen_time, tsa = %tsa_url, lag_ms, "timestamped head");
                    self.queue.pop_front();
                    self.metrics.heads_timestamped.fetch_add(1, Ordering::Relaxed);
                    self.metrics.last_timestamp_lag_ms.store(lag_ms, Ordering::Relaxed);
                    self.metrics.instruments.timestamp_lag_seconds.observe(lag_ms.max(0) as f64 / 1000.0);
                    self.backoff = self.settings.retry_initial;
                    if self.queue.is_empty() {
                        self.refill().await;
                    } else {
                        self.publish_oldest();
                    }
                }
                Err(errors) => {
                    self.fail();
                    tracing::warn!(
                        height = head.height,
                        untimestamped_heads = self.untimestamped(),
                        retry_in_ms = self.backoff_for_log(),
                        "no TSA issued a valid token for this head; it stays untimestamped and is retried"
                    );
                    self.outage
                        .failed(&format!("no TSA issued a valid token for head {}: {errors}", head.height))
                        .await;
                    return;
                }
            }
        }
    }

    fn backoff_for_log(&self) -> u64 {
        self.next_try.saturating_duration_since(Instant::now()).as_millis() as u64
    }

    fn fail(&mut self) {
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.settings.retry_max);
    }

    /// Asks each TSA in order for a token for `head`; returns the first one that verifies, or every TSA's
    /// error (`<url>: <error>`, joined with `; `).
    async fn stamp(&self, head: &StoredHead) -> Result<StoredTimestamp, String> {
        let mut errors: Vec<String> = Vec::new();
        let not_before = UNIX_EPOCH
            .checked_add(Duration::from_millis(head.sealed_at_ms.max(0) as u64))
            .and_then(|t| t.checked_sub(self.settings.max_skew));
        for (i, tsa) in self.settings.tsas.iter().enumerate() {
            let req = match tsa::build_request(head.checkpoint.as_bytes()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(height = head.height, error = %e, "cannot build a time-stamp request");
                    return Err(format!("cannot build a time-stamp request: {e}"));
                }
            };
            let body = match tsa::fetch(&tsa.url, &req, tsa.timeout).await {
                Ok(b) => b,
                Err(e) => {
                    self.metrics.timestamp_failures.fetch_add(1, Ordering::Relaxed);
                    self.metrics.instruments.failed("timestamping");
                    tracing::warn!(height = head.height, tsa = %tsa.url, tsa_index = i, error = %e, "time-stamp request failed");
                    errors.push(format!("{}: {e}", tsa.url));
                    continue;
                }
            };
            let opts = VerifyOptions {
                expected_imprint: req.imprint,
                expected_nonce: Some(&req.nonce),
                trust: &tsa.anchors,
                policy: tsa.policy,
                not_before,
            };
            match verify_response(&body, &opts) {
                Ok(v) => {
                    if i > 0 {
                        tracing::info!(height = head.height, tsa = %tsa.url, tsa_index = i, "failover: token from a later TSA");
                    }
                    return Ok(StoredTimestamp {
                        height: head.height,
                        response: body,
                        gen_time_ms: system_time_ms(v.gen_time),
                        gen_time: v.gen_time_rfc3339,
                        tsa_url: tsa.url.clone(),
                        stored_at_ms: store::now_ms(),
                    });
                }
                Err(e) => {
                    self.metrics.timestamp_failures.fetch_add(1, Ordering::Relaxed);
                    self.metrics.instruments.failed("timestamping");
                    tracing::warn!(height = head.height, tsa = %tsa.url, tsa_index = i, error = %e, "time-stamp token rejected: it does not verify, not stored");
                    errors.push(format!("{}: {e}", tsa.url));
                }
            }
        }
        Err(errors.join("; "))
    }
}

/// Milliseconds since the epoch (negative before 1970).
fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}
