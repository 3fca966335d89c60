//! The sealer: closes blocks, has the hardware sign each head, and stores it through the single writer.
//!
//! A block closes every `seal_interval` when there are new events, as soon as `seal_max_events` are waiting,
//! as a heartbeat every `heartbeat_interval` on an idle log (so truncation is detectable), and on shutdown.
//! A signer failure never blocks ingest: events keep being stored and the next tick tries again; once the
//! signer is back, the backlog is sealed in blocks of at most `seal_max_events`.
//! With a TPM counter, each head's counter value is reserved before the head text is built (it is part of the
//! signed text); a failed attempt's value is reused by the next attempt rather than incremented again, so the
//! counter is never more than one above the newest stored head (docs/TPM.md).

use crate::ledger::appender::AppendError;
use crate::ledger::appender::AppenderHandle;
use crate::ledger::outage::{LifecycleGate, OutageAlert, OutageRecorder};
use crate::metrics::Metrics;
use crate::signer::SignerHandle;
use crate::store::reads::LogReads;
use crate::store::{self, StoreError};
use anchorlog_core::head::Checkpoint;
use anchorlog_core::merkle::Frontier;
use anchorlog_core::stored::StoredHead;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why a seal attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The signer failed.
    #[error("signing failed: {0}")]
    Sign(#[from] crate::signer::SignerError),
    /// The signer returned a signature that does not verify under its own public key.
    #[error("the signer returned a signature that does not verify")]
    BadSignature,
    /// Reading leaves or storing the head failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The writer refused the head.
    #[error("storing the head: {0}")]
    Append(#[from] crate::ledger::appender::AppendError),
    /// The checkpoint could not be encoded.
    #[error("checkpoint: {0}")]
    Head(#[from] anchorlog_core::head::HeadError),
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed")]
    Join,
}

/// What a seal attempt should cover.
#[derive(Debug, Clone, Copy)]
enum Due {
    /// Complete blocks only (the size trigger).
    Full,
    /// Everything committed so far (the interval tick, shutdown).
    Tick,
    /// Everything committed so far, and at least one head even if nothing is new.
    Heartbeat,
}

/// Cadence settings.
#[derive(Debug, Clone)]
pub struct SealerSettings {
    /// Log origin.
    pub origin: String,
    /// Seal this often when there are new events.
    pub seal_interval: Duration,
    /// Close a block as soon as this many events wait.
    pub seal_max_events: u64,
    /// Heartbeat on an idle log.
    pub heartbeat_interval: Duration,
}

/// The state the chain continues from: the last signed head and the Merkle frontier at its tree size.
#[derive(Debug, Clone, Default)]
pub struct ChainState {
    /// Frontier over the first `frontier.size()` leaves (= the last head's tree size).
    pub frontier: Frontier,
    /// Height the next head gets.
    pub next_height: u64,
    /// SHA-256 of the last head's text (zeros before the first head).
    pub prev_hash: [u8; 32],
    /// Seal time of the last head (ms), so seal times never go backwards.
    pub last_time_ms: i64,
    /// The TPM counter value of the newest head that carries one (the next head's must be greater).
    pub last_counter: Option<u64>,
}

/// The sealer task.
pub struct Sealer {
    settings: SealerSettings,
    signer: SignerHandle,
    appender: AppenderHandle,
    reads: LogReads,
    metrics: Arc<Metrics>,
    state: ChainState,
    last_seal: Instant,
    /// Height of the last stored head (-1 before the first), for the timestamper.
    sealed_height: watch::Sender<i64>,
    /// Records when sealing starts failing and when it works again (PCI DSS 10.7.3).
    outage: OutageRecorder,
}

impl Sealer {
    /// A sealer continuing `state`.
    pub fn new(
        settings: SealerSettings,
        signer: SignerHandle,
        appender: AppenderHandle,
        reads: LogReads,
        metrics: Arc<Metrics>,
        state: ChainState,
    ) -> Self {
        metrics.sealed_tree_size.store(state.frontier.size(), Ordering::Relaxed);
        metrics.last_height.store(state.next_height as i64 - 1, Ordering::Relaxed);
        metrics.last_seal_ms.store(state.last_time_ms, Ordering::Relaxed);
        let (sealed_height, _) = watch::channel(state.next_height as i64 - 1);
        let outage = OutageRecorder::new("sealing", None);
        Sealer {
            settings,
            signer,
            appender,
            reads,
            metrics,
            state,
            last_seal: Instant::now(),
            sealed_height,
            outage,
        }
    }

    /// Records the start and end of every sealing outage in the log through `gate` (see [`OutageRecorder`]).
    pub fn record_outages(mut self, gate: LifecycleGate) -> Self {
        self.outage.set_sink((self.appender.clone(), gate));
        self
    }

    /// Alerts outages that last past the threshold (see [`OutageAlert`]).
    pub fn alert_outages(mut self, alert: OutageAlert) -> Self {
        self.outage.set_alert(alert);
        self
    }

    /// A watch of the height of the last stored head (-1 before the first); changes after each seal.
    pub fn sealed_height(&self) -> watch::Receiver<i64> {
        self.sealed_height.subscribe()
    }

    /// Runs until `shutdown` turns true, then seals everything committed and returns the final tree size.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> u64 {
        let mut committed = self.appender.committed();
        let mut ticker = tokio::time::interval(self.settings.seal_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A new log gets its first head (tree size 0) at once: the log's start is itself anchored.
        let force_first = self.state.next_height == 0;
        if force_first {
            self.seal_pending(Due::Heartbeat).await;
        }
        loop {
            // Proof of life for the systemd watchdog: the loop comes round at least every seal interval.
            self.metrics.sealer_alive_ms.store(store::now_ms(), Ordering::Relaxed);
            tokio::select! {
                _ = ticker.tick() => {
                    let idle = self.last_seal.elapsed() >= self.settings.heartbeat_interval;
                    self.seal_pending(if idle { Due::Heartbeat } else { Due::Tick }).await;
                }
                changed = committed.changed() => {
                    if changed.is_err() { break; }
                    let waiting = (*committed.borrow()).saturating_sub(self.state.frontier.size());
                    if waiting > 0 && self.metrics.unsealed_since_ms.load(Ordering::Relaxed) == 0 {
                        self.metrics.unsealed_since_ms.store(store::now_ms(), Ordering::Relaxed);
                    }
                    if waiting >= self.settings.seal_max_events {
                        self.seal_pending(Due::Full).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // Shutdown: everything acknowledged must be covered. Retry a few times if the signer hiccups.
        for attempt in 0..5 {
            self.seal_pending(Due::Tick).await;
            if self.state.frontier.size() >= *self.appender.committed().borrow() {
                break;
            }
            tracing::warn!(attempt, "final seal incomplete; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.state.frontier.size()
    }

    /// Seals what was committed when called (a snapshot: chasing the live counter would cut a stream of
    /// tiny blocks under load, one signature each). `Due::Full` seals only complete blocks of
    /// `seal_max_events`; `Due::Tick` also the partial rest, or a heartbeat head on an idle log when asked.
    async fn seal_pending(&mut self, due: Due) {
        let goal = *self.appender.committed().borrow();
        let max = self.settings.seal_max_events;
        let mut sealed_any = false;
        loop {
            let sealed = self.state.frontier.size();
            let target = goal.min(sealed + max);
            let heartbeat = matches!(due, Due::Heartbeat) && !sealed_any;
            let nothing_new = target <= sealed;
            let partial = target.saturating_sub(sealed) < max;
            if (nothing_new && !heartbeat) || (partial && matches!(due, Due::Full)) {
                return;
            }
            match self.seal_one(target).await {
                Ok(()) => {
                    sealed_any = true;
                    self.metrics.sealing_failing_since_ms.store(0, Ordering::Relaxed);
                    self.metrics.storage.succeeded();
                    // Events committed meanwhile wait from now on (an underestimate by at most one seal).
                    let left = *self.appender.committed().borrow() > self.state.frontier.size();
                    self.metrics
                        .unsealed_since_ms
                        .store(if left { store::now_ms() } else { 0 }, Ordering::Relaxed);
                    self.outage.succeeded().await;
                }
                Err(e) => {
                    if let SealError::Store(se) | SealError::Append(AppendError::Store(se)) = &e {
                        self.metrics.storage.observe::<()>(Err(se));
                    }
                    self.metrics.seal_failures.fetch_add(1, Ordering::Relaxed);
                    self.metrics.instruments.failed("sealing");
                    let _ = self.metrics.sealing_failing_since_ms.compare_exchange(
                        0,
                        store::now_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    if matches!(e, SealError::Sign(crate::signer::SignerError::BackingOff { .. })) {
                        // The error that started the back-off was logged once at its attempt; not every tick.
                        tracing::debug!(error = %e, tree_size = target, "seal skipped: the signer is backing off");
                    } else {
                        tracing::error!(error = %e, tree_size = target, "seal failed; events stay stored and will be sealed on a later attempt");
                    }
                    match &e {
                        // A device error retrying cannot fix (or its back-off) lasts until an operator acts.
                        SealError::Sign(se) if !se.is_retryable() => {
                            self.outage.failed_unrecoverable(&e.to_string()).await
                        }
                        _ => self.outage.failed(&e.to_string()).await,
                    }
                    return;
                }
            }
        }
    }

    async fn seal_one(&mut self, target: u64) -> Result<(), SealError> {
        let from = self.state.frontier.size();
        let leaves = self.reads.leaf_hashes(from, target).await?;
        if target > from {
            crash_point!(CommitBeforeSeal);
        }
        let mut frontier = self.state.frontier.clone();
        for leaf in leaves {
            frontier.push(leaf);
        }
        // Before the text is built: the counter value is part of what is signed.
        let started = Instant::now();
        let counter = self.signer.advance_counter(self.state.last_counter).await?;
        let counter_ms = started.elapsed().as_millis() as u64;
        let head = Checkpoint {
            origin: self.settings.origin.clone(),
            tree_size: target,
            root: frontier.root(),
            height: self.state.next_height,
            prev: self.state.prev_hash,
            time_ms: store::now_ms().max(self.state.last_time_ms),
            counter,
        };
        let text = head.to_text()?;
        let started = Instant::now();
        let signature = self.signer.sign(text.as_bytes().to_vec()).await?;
        let sign_seconds = started.elapsed().as_secs_f64();
        let sign_ms = (sign_seconds * 1000.0) as u64;
        // Never store a head that does not verify, whatever the device said.
        if !self.signer.public_key().verify(text.as_bytes(), &signature) {
            return Err(SealError::BadSignature);
        }
        crash_point!(SignBeforeStore);
        self.appender
            .store_head(StoredHead {
                height: head.height,
                tree_size: head.tree_size,
                root: head.root,
                checkpoint: text.clone(),
                signature,
                key_id: self.signer.public_key().key_id.clone(),
                sealed_at_ms: head.time_ms,
            })
            .await?;
        crash_point!(StoreBeforeTimestamp);
        tracing::info!(
            height = head.height,
            tree_size = head.tree_size,
            counter = head.counter.map(|c| c.value),
            counter_ms,
            sign_ms,
            "sealed head"
        );
        self.state = ChainState {
            frontier,
            next_height: head.height + 1,
            prev_hash: Checkpoint::text_hash(&text),
            last_time_ms: head.time_ms,
            last_counter: head.counter.map(|c| c.value).or(self.state.last_counter),
        };
        self.last_seal = Instant::now();
        let m = &self.metrics;
        m.heads_sealed.fetch_add(1, Ordering::Relaxed);
        m.sealed_tree_size.store(head.tree_size, Ordering::Relaxed);
        m.last_height.store(head.height as i64, Ordering::Relaxed);
        m.last_seal_ms.store(head.time_ms, Ordering::Relaxed);
        m.last_sign_ms.store(sign_ms, Ordering::Relaxed);
        m.instruments.sign_seconds.observe(sign_seconds);
        self.sealed_height.send_replace(head.height as i64);
        Ok(())
    }
}
