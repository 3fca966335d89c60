//! The cosigner: submits every signed head to every configured witness (c2sp.org/tlog-witness v1.0.0), verifies
//! each returned cosignature and stores it with the head.
//!
//! It has the timestamper's shape: sealing and ingest never wait for it. The sealer announces each stored head
//! on a watch channel; one task per witness (so a slow witness never delays another) submits, in height order,
//! every head that witness has not cosigned yet: `old <size it last cosigned>`, the RFC 9162 consistency proof
//! from there (built from the stored tree nodes) and the head's signed note. The witness answers with a
//! cosignature line, which is verified with its configured vkey (and its time checked against the head's seal
//! time) before it is stored, with the witness's new cursor, in one transaction through the single writer.
//!
//! * **409 with a size the log has** (the cursor was stale, or another party showed the witness a later head of
//!   ours): re-prove from that size at once; heads smaller than what the witness holds can no longer be
//!   cosigned by it, so they are skipped.
//! * **409 with a size larger than any tree this log signed, 409 for the same size (another root), or 422 after
//!   a proof built from our own verified tree**: the witness holds a different history of this log than ours —
//!   this database was rolled back (an older copy restored) or the log forked. That is evidence, never "fixed":
//!   it is logged at ERROR, counted, recorded in the log once per episode (`anchorlog.witness_refused`,
//!   docs/FORMAT.md §14), and the witness is retried with back-off so it recovers if an operator restores the
//!   right database.
//! * **Network errors, timeouts, 5xx, other 4xx, invalid cosignatures**: retried with back-off (doubling from
//!   `retry_initial_ms` to `retry_max_ms`); the first failure after a success and the first success after
//!   failures are recorded as a `witnessing` outage naming the witness.
//!
//! Back-fill: after an outage the heads sealed meanwhile are submitted in height order, so each gets its
//! cosignature; a backlog of more than [`BACKFILL_LIMIT`] heads is skipped to the newest head (a witness cosigns
//! only trees at least as large as the last it cosigned, so the skipped heads never get that witness's
//! cosignature; they are linked to the cosigned one by consistency proofs). docs/FORMAT.md §16.6 states the
//! guarantee.

pub mod client;
mod quorum;

use crate::config::Config;
use crate::ledger::appender::AppenderHandle;
use crate::ledger::internal::{witness_refused_body, WitnessRefusal};
use crate::ledger::outage::{LifecycleGate, OutageAlert, OutageRecorder};
use crate::metrics::{Metrics, WitnessStatus};
use crate::store::cosignatures::{StoredCosignature, WitnessCursor};
use crate::store::reads::LogReads;
use crate::store::{self, StoreError};
use anchorlog_core::head::signed_note;
use anchorlog_core::key::PublicKey;
use anchorlog_core::note::protocol::AddCheckpointRequest;
use anchorlog_core::note::{cosignature, NoteSignature, VerifierKey};
use anchorlog_core::record_types::COMPONENT_WITNESSING;
use anchorlog_core::stored::StoredHead;
use client::{Answer, Endpoint};
pub use quorum::{QuorumTracker, MAX_TRACKED_WITNESSES};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Most heads a witness is behind before the cosigner skips to the newest head instead of back-filling each.
pub const BACKFILL_LIMIT: u64 = 1024;

/// Most `409` answers followed within one attempt (a stale cursor needs one; more means the witness moves).
const MAX_REPROOFS: usize = 3;

/// Why the cosigner could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CosignerError {
    /// A witness entry is unusable (the configuration was validated, so: its CA file).
    #[error("witness[{index}] ({name}): {reason}")]
    Witness {
        /// Position in the configuration.
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// One configured witness, ready to use.
#[derive(Clone)]
pub struct WitnessSettings {
    /// Its configured name (logs, metrics, records).
    pub name: String,
    /// Its submission prefix.
    pub url: String,
    /// Its cosignature/v1 verifier key.
    pub vkey: VerifierKey,
    /// Where to POST.
    pub endpoint: Endpoint,
}

/// Everything the cosigner needs from the configuration.
#[derive(Clone)]
pub struct CosignerSettings {
    /// The witnesses, in configuration order.
    pub witnesses: Vec<WitnessSettings>,
    /// Cosignatures a head needs.
    pub quorum: usize,
    /// How much earlier than the head's seal time a cosignature's time may be.
    pub max_skew: Duration,
    /// First back-off delay after a failed attempt.
    pub retry_initial: Duration,
    /// Longest back-off delay.
    pub retry_max: Duration,
    /// Time the final pass on shutdown may take.
    pub final_pass: Duration,
}

impl CosignerSettings {
    /// The witnesses of `config`; `None` when no `[[witness]]` is configured (witnessing off).
    pub fn from_config(config: &Config) -> Result<Option<CosignerSettings>, CosignerError> {
        if config.witnesses.is_empty() {
            return Ok(None);
        }
        let mut witnesses = Vec::with_capacity(config.witnesses.len());
        for (index, w) in config.witnesses.iter().enumerate() {
            let err = |reason: String| CosignerError::Witness { index, name: w.label().to_owned(), reason };
            let vkey = VerifierKey::parse(&w.vkey).map_err(|e| err(e.to_string()))?;
            let endpoint =
                Endpoint::new(&w.url, w.ca_file.as_deref(), w.timeout()).map_err(|e| err(e.to_string()))?;
            witnesses.push(WitnessSettings {
                name: w.label().to_owned(),
                url: w.url.clone(),
                vkey,
                endpoint,
            });
        }
        if witnesses.len() > MAX_TRACKED_WITNESSES {
            return Err(CosignerError::Witness {
                index: MAX_TRACKED_WITNESSES,
                name: witnesses[MAX_TRACKED_WITNESSES].name.clone(),
                reason: format!("at most {MAX_TRACKED_WITNESSES} witnesses are supported"),
            });
        }
        let ws = &config.witnessing;
        Ok(Some(CosignerSettings {
            witnesses,
            quorum: config.witness_quorum(),
            max_skew: Duration::from_secs(config.timestamping.max_skew_s),
            retry_initial: Duration::from_millis(ws.retry_initial_ms),
            retry_max: Duration::from_millis(ws.retry_max_ms),
            final_pass: Duration::from_secs(config.server.shutdown_grace_s.max(1)),
        }))
    }
}

/// What every witness task shares.
struct Shared {
    appender: AppenderHandle,
    reads: LogReads,
    metrics: Arc<Metrics>,
    /// The current head-signing key (heads signed by an earlier key get theirs from the database).
    public_key: PublicKey,
    origin: String,
    /// Where refusals and outages are recorded; `None`: not recorded (`record_appliance_events = false`).
    gate: Option<LifecycleGate>,
    /// Alerts a witness outage once it lasts the threshold (`[alerting]`).
    alert: Option<OutageAlert>,
    max_skew: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    final_pass: Duration,
}

/// The cosigner task.
pub struct Cosigner {
    settings: CosignerSettings,
    shared: Shared,
}

impl Cosigner {
    /// A cosigner of the heads signed by `public_key` for log `origin`; call [`Cosigner::run`] to start it.
    pub fn new(
        settings: CosignerSettings,
        appender: AppenderHandle,
        reads: LogReads,
        metrics: Arc<Metrics>,
        public_key: PublicKey,
        origin: String,
    ) -> Cosigner {
        metrics.witness_quorum.store(settings.quorum as u64, Ordering::Relaxed);
        if let Ok(mut w) = metrics.witnesses.lock() {
            *w = settings
                .witnesses
                .iter()
                .map(|s| WitnessStatus {
                    name: s.name.clone(),
                    url: s.url.clone(),
                    last_cosigned_height: -1,
                    state: "ok",
                    last_error: None,
                })
                .collect();
        }
        let shared = Shared {
            appender,
            reads,
            metrics,
            public_key,
            origin,
            gate: None,
            alert: None,
            max_skew: settings.max_skew,
            retry_initial: settings.retry_initial,
            retry_max: settings.retry_max,
            final_pass: settings.final_pass,
        };
        Cosigner { settings, shared }
    }

    /// Records refusals (`anchorlog.witness_refused`) and witness outages (`anchorlog.outage`, component
    /// `witnessing`) in the log through `gate`.
    pub fn record_events(mut self, gate: LifecycleGate) -> Cosigner {
        self.shared.gate = Some(gate);
        self
    }

    /// Alerts each witness's outage once it has lasted the threshold, and its end.
    pub fn alert_outages(mut self, alert: OutageAlert) -> Cosigner {
        self.shared.alert = Some(alert);
        self
    }

    /// Runs until `stop` turns true (send it after the sealer's final seal), then lets every witness task make
    /// one bounded pass over the heads it has not cosigned yet.
    pub async fn run(self, sealed: watch::Receiver<i64>, stop: watch::Receiver<bool>) {
        let Cosigner { settings, shared } = self;
        let shared = Arc::new(shared);
        let keys: Vec<(String, u32)> =
            settings.witnesses.iter().map(|w| (w.vkey.name().to_owned(), w.vkey.key_id())).collect();
        let starts = match first_heights(&shared, &keys).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cosigner: cannot read the stored cosignatures; witnessing is off for this run");
                return;
            }
        };
        let names: Vec<&str> = settings.witnesses.iter().map(|w| w.name.as_str()).collect();
        tracing::info!(witnesses = ?names, quorum = settings.quorum, "witnessing on: every head is submitted to the witnesses");
        let (stored_tx, mut stored_rx) = mpsc::unbounded_channel::<(usize, u64)>();
        let mut tasks = Vec::new();
        for (index, (w, (next, last))) in
            settings.witnesses.into_iter().zip(starts.iter().copied()).enumerate()
        {
            shared.metrics.set_witness(index, |s| s.last_cosigned_height = last.map_or(-1, |h| h as i64));
            let task = WitnessTask::new(index, w, shared.clone(), next, stored_tx.clone());
            tasks.push(tokio::spawn(task.run(sealed.clone(), stop.clone())));
        }
        drop(stored_tx);
        let start = starts.iter().map(|(n, _)| *n).min().unwrap_or(0);
        let mut tracker = QuorumTracker::new(keys, settings.quorum, start);
        let mut sealed = sealed;
        let mut sealing = true;
        refresh(&shared, &mut tracker).await;
        loop {
            tokio::select! {
                changed = sealed.changed(), if sealing => {
                    sealing = changed.is_ok();
                    refresh(&shared, &mut tracker).await;
                }
                msg = stored_rx.recv() => match msg {
                    Some((index, height)) => {
                        if !tracker.cosigned(height, index) {
                            refresh(&shared, &mut tracker).await;
                        }
                        publish(&shared.metrics, &tracker);
                    }
                    // Every witness task has finished its final pass.
                    None => break,
                },
            }
        }
        refresh(&shared, &mut tracker).await;
        for t in tasks {
            let _ = t.await;
        }
        let (below, _) = tracker.below();
        if below > 0 {
            tracing::warn!(
                heads_below_quorum = below,
                "stopping with heads below the witness quorum; witnesses are retried after the next start"
            );
        }
    }
}

/// Per witness: the first height to submit and the last height it cosigned (if any): one past its last
/// stored cosignature, else the newest head (a log that just turned witnessing on does not submit its past).
async fn first_heights(
    shared: &Shared,
    keys: &[(String, u32)],
) -> Result<Vec<(u64, Option<u64>)>, StoreError> {
    shared.reads.cosigning_starts(keys).await
}

/// Loads the heads sealed since the tracker last looked, and publishes the result.
async fn refresh(shared: &Shared, tracker: &mut QuorumTracker) {
    let from = tracker.next_load();
    match shared.reads.heads_with_cosigners(from).await {
        Ok(rows) => tracker.load(rows),
        Err(e) => tracing::error!(error = %e, "cosigner: cannot read heads"),
    }
    publish(&shared.metrics, tracker);
}

fn publish(metrics: &Metrics, tracker: &QuorumTracker) {
    let (n, oldest) = tracker.below();
    metrics.heads_below_quorum.store(n, Ordering::Relaxed);
    metrics.oldest_below_quorum_ms.store(oldest.unwrap_or(0), Ordering::Relaxed);
}

/// What one attempt at one head came to.
#[derive(Debug)]
enum Attempt {
    /// Cosigned and stored.
    Cosigned { timestamp: u64 },
    /// The witness holds a later head of ours (someone else showed it one): continue from `next`.
    Skip { next: u64, witness_size: u64 },
    /// The witness refused our head after a correct proof: rollback or fork evidence.
    Refused { status: u16, witness_size: Option<u64>, reason: String },
    /// No cosignature this time (network, timeouts, 5xx, other 4xx, an invalid answer, storage).
    Failed(String),
}

/// One witness's submission loop.
struct WitnessTask {
    index: usize,
    w: WitnessSettings,
    vkey_text: String,
    shared: Arc<Shared>,
    /// The next height to submit.
    next: u64,
    /// The tree size the witness holds for us, as far as we know (stored cursor, or its last 409).
    witness_size: Option<u64>,
    backoff: Duration,
    next_try: Instant,
    /// A refusal of this episode is on record (cleared by the next cosignature).
    refusal_recorded: bool,
    outage: OutageRecorder,
    stored: mpsc::UnboundedSender<(usize, u64)>,
}

impl WitnessTask {
    fn new(
        index: usize,
        w: WitnessSettings,
        shared: Arc<Shared>,
        next: u64,
        stored: mpsc::UnboundedSender<(usize, u64)>,
    ) -> WitnessTask {
        let sink = shared.gate.clone().map(|g| (shared.appender.clone(), g));
        let mut outage = OutageRecorder::new(COMPONENT_WITNESSING, sink);
        if let Some(a) = &shared.alert {
            outage.set_alert(a.clone());
        }
        WitnessTask {
            index,
            vkey_text: w.vkey.to_string(),
            w,
            backoff: shared.retry_initial,
            next_try: Instant::now(),
            shared,
            next,
            witness_size: None,
            refusal_recorded: false,
            outage,
            stored,
        }
    }

    async fn run(mut self, mut sealed: watch::Receiver<i64>, mut stop: watch::Receiver<bool>) {
        match self.shared.reads.witness_cursor(&self.vkey_text).await {
            Ok(c) => self.witness_size = c.map(|c| c.tree_size),
            Err(e) => {
                tracing::warn!(witness = %self.w.name, error = %e, "cannot read the witness cursor; starting from old size 0")
            }
        }
        loop {
            if *stop.borrow() {
                break;
            }
            let newest = *sealed.borrow();
            let due = newest >= 0 && self.next <= newest as u64;
            let now = Instant::now();
            if due && now >= self.next_try {
                self.step(newest as u64).await;
                continue;
            }
            let wait = if due { self.next_try - now } else { Duration::from_secs(3600) };
            tokio::select! {
                changed = sealed.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        // Shutdown: the sealer sealed its last head; one bounded pass over what is left, no back-off waits.
        let deadline = Instant::now() + self.shared.final_pass;
        let newest = *sealed.borrow();
        let final_pass = async {
            while newest >= 0 && self.next <= newest as u64 {
                if !self.step(newest as u64).await {
                    break;
                }
            }
        };
        if tokio::time::timeout_at(deadline.into(), final_pass).await.is_err() {
            tracing::warn!(witness = %self.w.name, "final witnessing pass did not finish in time; it continues after the next start");
        }
    }

    /// One attempt at the next head (`newest`: the newest sealed height); true when it was cosigned or skipped.
    async fn step(&mut self, newest: u64) -> bool {
        if newest.saturating_sub(self.next) >= BACKFILL_LIMIT {
            tracing::warn!(witness = %self.w.name, from = self.next, to = newest, "more than {BACKFILL_LIMIT} heads behind: skipping to the newest head; the skipped heads get no cosignature from this witness");
            self.next = newest;
        }
        let height = self.next;
        let head = match self.shared.reads.head(height).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                // Announced but not readable yet (a read snapshot behind the writer): try again shortly.
                self.next_try = Instant::now() + Duration::from_millis(50);
                return false;
            }
            Err(e) => return self.failed(height, &format!("cannot read head {height}: {e}")).await,
        };
        let attempt = self.attempt(&head).await;
        match attempt {
            Attempt::Cosigned { timestamp } => {
                let m = &self.shared.metrics;
                m.cosignatures_stored.fetch_add(1, Ordering::Relaxed);
                m.set_witness(self.index, |s| {
                    s.last_cosigned_height = height as i64;
                    s.state = "ok";
                    s.last_error = None;
                });
                let lag_ms = store::now_ms() - head.sealed_at_ms;
                tracing::info!(witness = %self.w.name, height, tree_size = head.tree_size, timestamp, lag_ms, "cosigned head");
                let _ = self.stored.send((self.index, height));
                self.next = height + 1;
                self.backoff = self.shared.retry_initial;
                self.refusal_recorded = false;
                self.outage.succeeded().await;
                true
            }
            Attempt::Skip { next, witness_size } => {
                tracing::info!(witness = %self.w.name, from = height, to = next, witness_size, "the witness already holds a later head of this log: skipping to it");
                self.next = next;
                true
            }
            Attempt::Refused { status, witness_size, reason } => {
                self.refused(&head, status, witness_size, &reason).await;
                // A refused head is never cosigned by this witness, whatever we retry. When newer heads exist, the
                // next attempt offers the newest: it either shows the witness the rest of the history (a bad proof
                // from its size, more evidence) or, should the refusal have been transient, gets cosigned — instead
                // of retrying the one refused head forever while the log moves on.
                if newest > height {
                    self.next = newest;
                }
                false
            }
            Attempt::Failed(e) => self.failed(height, &e).await,
        }
    }

    async fn failed(&mut self, height: u64, error: &str) -> bool {
        let m = &self.shared.metrics;
        m.witness_failures.fetch_add(1, Ordering::Relaxed);
        m.instruments.failed("witnessing");
        m.set_witness(self.index, |s| {
            s.state = "failing";
            s.last_error = Some(error.to_owned());
        });
        let retry_in_ms = self.back_off();
        tracing::warn!(witness = %self.w.name, height, error, retry_in_ms, "no cosignature for this head; retrying");
        self.outage.failed(&format!("witness {}: {error}", self.w.name)).await;
        false
    }

    async fn refused(&mut self, head: &StoredHead, status: u16, witness_size: Option<u64>, reason: &str) {
        let m = &self.shared.metrics;
        m.witness_refusals.fetch_add(1, Ordering::Relaxed);
        m.set_witness(self.index, |s| {
            s.state = "refused";
            s.last_error = Some(reason.to_owned());
        });
        self.back_off();
        tracing::error!(witness = %self.w.name, height = head.height, tree_size = head.tree_size, status, witness_size, reason, "a witness refused this log's head: this database was rolled back or the log forked; investigate (the witness keeps the evidence), nothing is changed automatically");
        if self.refusal_recorded {
            return;
        }
        let Some(gate) = &self.shared.gate else { return };
        let body = witness_refused_body(&WitnessRefusal {
            witness: &self.w.name,
            vkey: &self.vkey_text,
            url: &self.w.url,
            height: head.height,
            tree_size: head.tree_size,
            status,
            witness_size,
            reason,
        });
        match gate.append(&self.shared.appender, crate::ledger::internal::internal_event(&body)).await {
            Some(Ok(_)) => self.refusal_recorded = true,
            None => {}
            Some(Err(e)) => {
                tracing::error!(witness = %self.w.name, error = %e, "cannot record the refusal in the log")
            }
        }
    }

    /// Waits the current back-off before the next attempt and doubles it; returns the wait in ms.
    fn back_off(&mut self) -> u64 {
        let wait = self.backoff;
        self.next_try = Instant::now() + wait;
        self.backoff = (self.backoff * 2).min(self.shared.retry_max);
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
    }

    /// Submits `head`, following 409s from a stale cursor, and stores a valid cosignature.
    async fn attempt(&mut self, head: &StoredHead) -> Attempt {
        let note = match self.note(head).await {
            Ok(n) => n,
            Err(e) => return Attempt::Failed(e),
        };
        let size = head.tree_size;
        let mut old = self.witness_size.filter(|s| *s <= size).unwrap_or(0);
        for _ in 0..MAX_REPROOFS {
            let proof = match self.proof(old, size).await {
                Ok(p) => p,
                Err(e) => {
                    return Attempt::Failed(format!("cannot build the consistency proof {old}..{size}: {e}"))
                }
            };
            let body = AddCheckpointRequest { old_size: old, proof, checkpoint: note.clone() }.to_body();
            let answer = match self.w.endpoint.submit(body).await {
                Ok(a) => a,
                Err(e) => return Attempt::Failed(e.to_string()),
            };
            match answer {
                Answer::Cosigned(text) => return self.store(head, &text).await,
                Answer::Conflict(s) if s > size => return self.ahead(head, s).await,
                Answer::Conflict(s) if s == old => {
                    return Attempt::Refused {
                        status: 409,
                        witness_size: Some(s),
                        reason: format!(
                            "the witness holds a tree of size {s} for this log with another root than ours: the log \
                             forked (or this database was replaced)"
                        ),
                    }
                }
                Answer::Conflict(s) => {
                    self.witness_size = Some(s);
                    old = s;
                }
                Answer::Status { status: 422, code, excerpt } => {
                    return Attempt::Refused {
                        status: 422,
                        witness_size: None,
                        reason: format!(
                            "the witness refused the consistency proof from tree size {old} to {size} built from \
                             this log's own verified tree ({}): its history of this log differs from ours — the \
                             log forked or this database was rolled back",
                            code.unwrap_or(excerpt)
                        ),
                    }
                }
                Answer::Status { status, code, excerpt } => {
                    let what = code.unwrap_or(excerpt);
                    let hint = match status {
                        403 | 404 => ": check the witness is configured for this log's origin and its signer key",
                        _ => "",
                    };
                    return Attempt::Failed(format!("HTTP {status}: {what}{hint}"));
                }
            }
        }
        Attempt::Failed(format!("the witness kept answering 409 after {MAX_REPROOFS} proofs"))
    }

    /// A 409 with a size larger than `head`'s: fine if this log has signed a tree that large (another party
    /// showed it to the witness; continue from that head), else the witness saw a history this database lacks.
    async fn ahead(&mut self, head: &StoredHead, s: u64) -> Attempt {
        let found = match s {
            0 => Ok(None),
            s => self.shared.reads.covering_head(s - 1).await.map(|h| h.filter(|h| h.tree_size >= s)),
        };
        match found {
            Ok(Some(h)) => {
                self.witness_size = Some(s);
                Attempt::Skip { next: h.height, witness_size: s }
            }
            Ok(None) => Attempt::Refused {
                status: 409,
                witness_size: Some(s),
                reason: format!(
                    "the witness has cosigned a tree of size {s} for this log, larger than any this database \
                     holds ({}): this database was rolled back (an older copy restored) or the log forked",
                    head.tree_size
                ),
            },
            Err(e) => Attempt::Failed(format!("cannot read heads: {e}")),
        }
    }

    /// Verifies the witness's answer for `head` and stores the cosignature with the new cursor.
    async fn store(&mut self, head: &StoredHead, answer: &str) -> Attempt {
        let (line, timestamp) = match pick_cosignature(answer, &self.w.vkey, &head.checkpoint) {
            Ok(v) => v,
            Err(e) => return Attempt::Failed(format!("invalid answer, not stored: {e}")),
        };
        let skew_ms = i64::try_from(self.shared.max_skew.as_millis()).unwrap_or(i64::MAX);
        let t_ms = i64::try_from(timestamp.saturating_mul(1000)).unwrap_or(i64::MAX);
        if t_ms < head.sealed_at_ms.saturating_sub(skew_ms) {
            return Attempt::Failed(format!(
                "the cosignature's time {timestamp} is more than {} s before the head's seal time: the witness's \
                 clock is wrong; not stored (verifiers would reject it)",
                self.shared.max_skew.as_secs()
            ));
        }
        let sig = match NoteSignature::parse_line(&line) {
            Ok(s) => s,
            Err(e) => return Attempt::Failed(format!("invalid answer, not stored: {e}")),
        };
        let cos = StoredCosignature {
            height: head.height,
            witness: sig.name,
            key_id: sig.key_id,
            line,
            timestamp,
            stored_at_ms: store::now_ms(),
        };
        let cursor =
            WitnessCursor { witness: self.vkey_text.clone(), tree_size: head.tree_size, height: head.height };
        match self.shared.appender.store_cosignature(cos, cursor).await {
            Ok(()) => {
                self.witness_size = Some(head.tree_size);
                Attempt::Cosigned { timestamp }
            }
            Err(e) => Attempt::Failed(format!("storing the cosignature failed: {e}")),
        }
    }

    /// The head's signed note (c2sp.org/signed-note, docs/FORMAT.md §4), signed by the key that signed it.
    async fn note(&self, head: &StoredHead) -> Result<String, String> {
        let spki = if head.key_id == self.shared.public_key.key_id {
            self.shared.public_key.spki_der.clone()
        } else {
            let pem =
                self.shared.reads.public_key_pem(&head.key_id).await.map_err(|e| e.to_string())?.ok_or_else(
                    || format!("the database holds no public key {} of head {}", head.key_id, head.height),
                )?;
            PublicKey::from_pem(&pem).map_err(|e| e.to_string())?.spki_der
        };
        Ok(signed_note(&head.checkpoint, &self.shared.origin, &spki, &head.signature))
    }

    async fn proof(&self, old: u64, size: u64) -> Result<Vec<anchorlog_core::merkle::Hash>, StoreError> {
        self.shared.reads.consistency_proof(old, size).await
    }
}

/// The cosignature line by `vkey` in a witness's 200 answer (one or more signature lines), verified over
/// `checkpoint`: the line (without its newline) and its timestamp.
pub fn pick_cosignature(answer: &str, vkey: &VerifierKey, checkpoint: &str) -> Result<(String, u64), String> {
    for line in answer.lines().filter(|l| !l.is_empty()).take(anchorlog_core::note::MAX_SIGNATURES) {
        let sig = NoteSignature::parse_line(line).map_err(|e| e.to_string())?;
        if vkey.matches(&sig.name, sig.key_id) {
            let t = cosignature::verify_line(line, vkey, checkpoint).map_err(|e| e.to_string())?;
            return Ok((line.to_owned(), t));
        }
    }
    Err(format!("the answer holds no cosignature by {}+{:08x}", vkey.name(), vkey.key_id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_witness_line_is_picked_and_verified() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
        let vkey = VerifierKey::cosignature_v1("witness.test/w1", key.verifying_key().as_bytes()).unwrap();
        let other = ed25519_dalek::SigningKey::from_bytes(&[0x43; 32]);
        let text = "log.test/a\n3\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let mine = cosignature::sign("witness.test/w1", &key, text, 1_700_000_000).unwrap().to_line();
        let theirs = cosignature::sign("witness.test/w9", &other, text, 5).unwrap().to_line();
        let (line, t) = pick_cosignature(&format!("{theirs}{mine}"), &vkey, text).unwrap();
        assert_eq!((format!("{line}\n"), t), (mine.clone(), 1_700_000_000));
        assert_eq!(
            pick_cosignature(&theirs, &vkey, text).unwrap_err(),
            format!("the answer holds no cosignature by witness.test/w1+{:08x}", vkey.key_id())
        );
        let err = pick_cosignature(&mine, &vkey, &text.replace("\n3\n", "\n4\n")).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        assert!(pick_cosignature("not a line\n", &vkey, text).is_err());
    }
}
