//! Continuous self-verification (docs/FORMAT.md §18, docs/THREATS.md "Self-verification"): the appliance
//! re-verifies its own log while it runs, and its start-up verifies only what lies after the last
//! self-verified point, so it serves within seconds at any log size.
//!
//! * **Start-up** ([`verify_at_start`]): the newest `anchorlog.self_verify` record below the last head's tree
//!   size names a head; the walk resumes after it ([`crate::verify::resume`]) and covers the record itself,
//!   so the point is trusted only once a verified head covers it. No usable record: the whole log, as before.
//!   A failure refuses the start as before (exit 3).
//! * **Background** ([`SelfVerifier`]): one OS thread at the lowest CPU priority (`SCHED_IDLE`, as the search
//!   indexer), so ingest never waits for it. Every `interval_s` it verifies what was sealed since its last
//!   pass (incremental), every `full_every_s` — and right after a start that resumed from a point — the whole
//!   log (full). After a failure every pass is full until one succeeds. Each successful pass appends an
//!   `anchorlog.self_verify` record naming the head it verified (when the appliance records its own events).
//! * **A failure** never stops ingest: it turns `/readyz` to 503 `self_verification_failed` (naming the
//!   record, from [`SelfVerifyState`]), shows in `/metrics`, is logged, and raises a `verification_failed`
//!   alert; the next successful pass resolves all three.

use crate::alerts::{AlertKind, Alerts};
use crate::ledger::appender::AppenderHandle;
use crate::ledger::internal::internal_event;
use crate::ledger::outage::LifecycleGate;
use crate::store;
use crate::verify;
use crate::verify::resume::{self, Point, RangeReport, SelfVerifyRecord};
use anchorlog_core::key::PublicKey;
use anchorlog_core::record_types as types;
use anchorlog_core::stored::StoredHead;
use anchorlog_core::verify::{Decoded, EventSource, VerifyError, WalkOptions};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How the start-up verification went.
#[derive(Debug, Clone)]
pub struct StartupVerification {
    /// What the walk verified (from the point, or from genesis).
    pub range: RangeReport,
    /// The self-verification record the walk resumed from (`None`: it walked the whole log).
    pub resumed_from: Option<SelfVerifyRecord>,
}

/// Verifies the database at `db` at start-up: from the last self-verified point when there is a usable one,
/// else from genesis. Accepts an erasure record not yet sealed (the start seals it next). Blocking.
pub fn verify_at_start(
    db: &Path,
    first_key: &PublicKey,
    origin: &str,
) -> Result<StartupVerification, VerifyError> {
    let keys = std::slice::from_ref(first_key);
    let conn = store::open_reader(db)?;
    let sealed = store::last_head(&conn)?.map_or(0, |h| h.tree_size);
    let opts = || WalkOptions {
        origin: Some(origin),
        allow_unsealed_erasure_records: true,
        ..WalkOptions::default()
    };
    let point = resume::last_point(&conn, sealed)?;
    match point {
        Point::Found(record) => {
            let range = resume::verify_database_after(&conn, keys, Some(record.height), opts())?;
            if let Some(anchor) = &range.anchor {
                resume::check_record_names_head(&record, anchor)?;
            }
            tracing::info!(
                record_seq = record.seq,
                from_height = record.height,
                scope = record.scope,
                "start-up verification resumed from the last self-verified head"
            );
            Ok(StartupVerification { range, resumed_from: Some(record) })
        }
        Point::Unusable { seq } => {
            tracing::warn!(
                seq,
                "the self-verification index names event {seq}, which is not a self-verification record of the \
                 head it claims (its source_id column was changed?): verifying the whole log at start"
            );
            let range = resume::verify_database_after(&conn, keys, None, opts())?;
            Ok(StartupVerification { range, resumed_from: None })
        }
        Point::None => {
            let range = resume::verify_database_after(&conn, keys, None, opts())?;
            Ok(StartupVerification { range, resumed_from: None })
        }
    }
}

/// `incremental` or `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// From the last verified head.
    Incremental,
    /// From genesis.
    Full,
}

impl Scope {
    /// The record's `scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Incremental => types::SELF_VERIFY_INCREMENTAL,
            Scope::Full => types::SELF_VERIFY_FULL,
        }
    }
}

/// A failed pass, as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassFailure {
    /// The pass.
    pub scope: Scope,
    /// What was wrong (the verifier's message, naming the seq or height).
    pub message: String,
    /// `("seq", n)` or `("height", n)` when the log itself is invalid; `None` when it could not be read.
    pub location: Option<(&'static str, u64)>,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

/// A successful pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassSuccess {
    /// The pass.
    pub scope: Scope,
    /// The last head it verified (`None`: the log has no head yet).
    pub height: Option<u64>,
    /// Its tree size.
    pub tree_size: u64,
    /// Events it walked.
    pub events: u64,
    /// When it finished, ms since the epoch.
    pub at_ms: i64,
    /// How long it took.
    pub duration_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    last_ok: Option<PassSuccess>,
    last_full_ok: Option<PassSuccess>,
    failure: Option<PassFailure>,
    running: Option<Scope>,
    passes_ok: u64,
    passes_failed: u64,
    /// The start resumed from a point: the whole log has not been verified by this run yet.
    full_pending: bool,
}

/// The state of self-verification, shared with `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct SelfVerifyState(Mutex<Inner>);

impl SelfVerifyState {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The current failure, if the last pass failed.
    pub fn failure(&self) -> Option<PassFailure> {
        self.with(|i| i.failure.clone())
    }

    /// The last successful pass.
    pub fn last_ok(&self) -> Option<PassSuccess> {
        self.with(|i| i.last_ok.clone())
    }

    /// The `self_verify` object of `/readyz`.
    pub fn readiness(&self) -> Value {
        self.with(|i| {
            let pass = |p: &Option<PassSuccess>| {
                p.as_ref().map(|p| {
                    json!({"scope": p.scope.as_str(), "height": p.height, "tree_size": p.tree_size,
                           "events": p.events, "at_ms": p.at_ms, "duration_ms": p.duration_ms})
                })
            };
            json!({
                "status": if i.failure.is_some() { "failed" } else { "ok" },
                "running": i.running.map(Scope::as_str),
                "whole_log_verified_since_start": !i.full_pending,
                "last_ok": pass(&i.last_ok),
                "last_full_ok": pass(&i.last_full_ok),
                "failure": i.failure.as_ref().map(failure_json),
            })
        })
    }

    /// Prometheus lines.
    pub fn render_metrics(&self, out: &mut String) {
        self.with(|i| {
            let mut row = |name: &str, kind: &str, help: &str, value: String| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
            };
            let secs = |p: &Option<PassSuccess>| p.as_ref().map_or(0.0, |p| p.at_ms as f64 / 1000.0);
            row(
                "anchorlog_self_verify_ok",
                "gauge",
                "1 unless the last self-verification pass failed.",
                u8::from(i.failure.is_none()).to_string(),
            );
            row(
                "anchorlog_self_verify_verified_height",
                "gauge",
                "Height of the last head a self-verification pass verified (-1: none).",
                i.last_ok.as_ref().and_then(|p| p.height).map_or(-1, |h| h as i64).to_string(),
            );
            row(
                "anchorlog_self_verify_last_success_timestamp_seconds",
                "gauge",
                "When the last self-verification pass succeeded (0: never).",
                format!("{:.3}", secs(&i.last_ok)),
            );
            row(
                "anchorlog_self_verify_last_full_success_timestamp_seconds",
                "gauge",
                "When the last full (whole-log) self-verification pass succeeded (0: never).",
                format!("{:.3}", secs(&i.last_full_ok)),
            );
            row(
                "anchorlog_self_verify_passes_ok_total",
                "counter",
                "Self-verification passes that succeeded.",
                i.passes_ok.to_string(),
            );
            row(
                "anchorlog_self_verify_passes_failed_total",
                "counter",
                "Self-verification passes that failed.",
                i.passes_failed.to_string(),
            );
            row(
                "anchorlog_self_verify_running",
                "gauge",
                "1 while a self-verification pass runs.",
                u8::from(i.running.is_some()).to_string(),
            );
        })
    }
}

fn failure_json(f: &PassFailure) -> Value {
    let mut v = json!({"scope": f.scope.as_str(), "message": f.message, "at_ms": f.at_ms});
    if let Some((kind, n)) = f.location {
        v[kind] = n.into();
    }
    v
}

/// The background verifier's settings.
#[derive(Debug, Clone)]
pub struct SelfVerifySettings {
    /// The database.
    pub db: PathBuf,
    /// The key the log's chain starts with: a full pass follows the key rotation records from it (docs/FORMAT.md
    /// §20); an incremental pass resumes under the key of the head it resumes after.
    pub key: PublicKey,
    /// The log's origin.
    pub origin: String,
    /// Between passes.
    pub interval: Duration,
    /// Between full passes.
    pub full_every: Duration,
}

/// Where the background verifier continues from, after the start-up verification.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The last verified head's height (`None`: no head yet).
    pub height: Option<u64>,
    /// The start verified only from a point: run a full pass right away.
    pub full_pending: bool,
}

impl Resume {
    /// What the start-up verification leaves the background verifier.
    pub fn after_start(v: &StartupVerification) -> Resume {
        Resume {
            height: v.range.last_head.as_ref().map(|h| h.height),
            full_pending: v.resumed_from.is_some(),
        }
    }
}

/// Stops the background verifier; dropping it does too.
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StopHandle {
    /// Stops the thread (a pass in progress stops within one batch of events) and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StopHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(());
    }
}

/// The background verifier (see the module docs).
pub struct SelfVerifier {
    settings: SelfVerifySettings,
    state: Arc<SelfVerifyState>,
    alerts: Arc<Alerts>,
    /// Appends the records, unless the appliance does not record its own events.
    recorder: Option<(AppenderHandle, LifecycleGate)>,
    resume: Resume,
}

impl SelfVerifier {
    /// A verifier continuing from `resume`.
    pub fn new(
        settings: SelfVerifySettings,
        state: Arc<SelfVerifyState>,
        alerts: Arc<Alerts>,
        recorder: Option<(AppenderHandle, LifecycleGate)>,
        resume: Resume,
    ) -> SelfVerifier {
        SelfVerifier { settings, state, alerts, recorder, resume }
    }

    /// Starts the thread (records are appended through the current tokio runtime).
    pub fn spawn(self) -> std::io::Result<StopHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = mpsc::channel();
        let runtime = tokio::runtime::Handle::current();
        let flag = stop.clone();
        self.state.with(|i| i.full_pending = self.resume.full_pending);
        let thread = std::thread::Builder::new().name("anchorlog-selfverify".into()).spawn(move || {
            crate::ledger::indexer::lower_own_priority("self-verification");
            self.run(&flag, &woken, &runtime);
        })?;
        Ok(StopHandle { stop, wake, thread: Some(thread) })
    }

    fn run(mut self, stop: &AtomicBool, woken: &mpsc::Receiver<()>, runtime: &tokio::runtime::Handle) {
        let started = Instant::now();
        let mut last_full = if self.resume.full_pending { None } else { Some(started) };
        let mut next = if self.resume.full_pending { started } else { started + self.settings.interval };
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            if !wait.is_zero() && woken.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout) {
                // Woken or the handle is gone: stop.
                return;
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let full_due = last_full.is_none_or(|t| t.elapsed() >= self.settings.full_every);
            let scope = if full_due || self.state.failure().is_some() || self.resume.height.is_none() {
                Scope::Full
            } else {
                Scope::Incremental
            };
            let began = Instant::now();
            match self.pass(scope, stop) {
                Outcome::Stopped => return,
                Outcome::Ok(range) => {
                    if scope == Scope::Full {
                        last_full = Some(began);
                    }
                    self.succeeded(scope, &range, began.elapsed(), runtime);
                }
                Outcome::Failed(e) => self.failed(scope, &e),
            }
            next = Instant::now() + self.settings.interval;
        }
    }

    fn pass(&self, scope: Scope, stop: &AtomicBool) -> Outcome {
        self.state.with(|i| i.running = Some(scope));
        let after = match scope {
            Scope::Full => None,
            Scope::Incremental => self.resume.height,
        };
        let result = (|| {
            let conn = store::open_reader(&self.settings.db)?;
            let opts = WalkOptions {
                origin: Some(&self.settings.origin),
                // The appliance seals an erasure record right after it; a pass may see it before its head.
                allow_unsealed_erasure_records: true,
                ..WalkOptions::default()
            };
            let mut events = Stoppable { inner: verify::DbEvents(&conn), stop };
            resume::verify_database_after_with(
                &conn,
                std::slice::from_ref(&self.settings.key),
                after,
                opts,
                &mut events,
            )
        })();
        self.state.with(|i| i.running = None);
        if stop.load(Ordering::SeqCst) {
            return Outcome::Stopped;
        }
        match result {
            Ok(r) => Outcome::Ok(Box::new(r)),
            Err(e) => Outcome::Failed(e),
        }
    }

    fn succeeded(
        &mut self,
        scope: Scope,
        range: &RangeReport,
        took: Duration,
        runtime: &tokio::runtime::Handle,
    ) {
        let last = range.last_head.as_ref();
        let from = range.anchor.as_ref().map(|h| h.height);
        let success = PassSuccess {
            scope,
            height: last.map(|h| h.height),
            tree_size: last.map_or(0, |h| h.tree_size),
            events: range.report.events,
            at_ms: store::now_ms(),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        };
        tracing::info!(
            scope = scope.as_str(),
            from_height = from,
            height = success.height,
            events = success.events,
            ms = success.duration_ms,
            "self-verification passed"
        );
        let recovered = self.state.with(|i| {
            i.passes_ok += 1;
            i.last_ok = Some(success.clone());
            if scope == Scope::Full {
                i.last_full_ok = Some(success.clone());
                i.full_pending = false;
            }
            i.failure.take().is_some()
        });
        if recovered {
            tracing::info!("self-verification passes again");
        }
        self.alerts.resolve(
            AlertKind::VerificationFailed,
            "self_verify",
            &format!("a {} self-verification pass succeeded up to head {:?}", scope.as_str(), success.height),
        );
        let moved = last.map(|h| h.height) != self.resume.height || scope == Scope::Full;
        self.resume.height = last.map(|h| h.height).or(self.resume.height);
        if let (Some((appender, gate)), Some(head), true) = (&self.recorder, last, moved) {
            let body = record_body(scope, from, head, &success);
            let mut event = internal_event(&body);
            event.source_id = Some(types::self_verify_source_id(head.height, scope.as_str()));
            match runtime.block_on(gate.append(appender, event)) {
                Some(Ok(done)) => {
                    tracing::info!(
                        seq = done.first().map(|a| a.seq),
                        height = head.height,
                        "self-verification recorded"
                    )
                }
                Some(Err(e)) => tracing::error!(error = %e, "cannot record the self-verification in the log"),
                None => {}
            }
        }
    }

    fn failed(&self, scope: Scope, e: &VerifyError) {
        let location = match e {
            VerifyError::Invalid(f) => Some(f.location()),
            _ => None,
        };
        let failure = PassFailure { scope, message: e.to_string(), location, at_ms: store::now_ms() };
        tracing::error!(scope = scope.as_str(), error = %e, "self-verification FAILED: the log does not verify; \
            investigate with `anchorlog verify --db` (ingest continues)");
        let detail = failure_json(&failure);
        self.state.with(|i| {
            i.passes_failed += 1;
            i.failure = Some(failure.clone());
        });
        self.alerts.raise(
            AlertKind::VerificationFailed,
            "self_verify",
            &format!("self-verification failed: {}", failure.message),
            detail,
        );
    }
}

/// The body of a self-verification record (docs/FORMAT.md §18).
pub fn record_body(scope: Scope, from_height: Option<u64>, head: &StoredHead, pass: &PassSuccess) -> Value {
    json!({
        "type": types::SELF_VERIFY,
        "scope": scope.as_str(),
        "from_height": from_height,
        "height": head.height,
        "tree_size": head.tree_size,
        "root": B64.encode(head.root),
        "events": pass.events,
        "duration_ms": pass.duration_ms,
    })
}

enum Outcome {
    Ok(Box<RangeReport>),
    Failed(VerifyError),
    Stopped,
}

/// An event source that ends early once `stop` is set (the result is then thrown away).
struct Stoppable<'a> {
    inner: verify::DbEvents<'a>,
    stop: &'a AtomicBool,
}

impl EventSource for Stoppable<'_> {
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError> {
        let stop = self.stop;
        self.inner.visit(from, &mut |batch| !stop.load(Ordering::Relaxed) && f(batch))
    }
}

/// The 503 answer's detail for a failed self-verification (for `/readyz`).
pub fn not_ready_detail(f: &PassFailure) -> Value {
    failure_json(f)
}
