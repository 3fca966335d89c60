//! The offline verifier: recomputes every leaf, the tree at every head, every chain link and signature.
//!
//! Shared by `anchorlog verify`, the startup reconciliation and the tests. It reads only public material (the
//! database or bundle and the signer's public key) and links no HSM, TPM or HTTP code. It walks events in
//! seq order once, keeping the RFC 9162 frontier, and checks each head when the walk reaches its tree size,
//! so the first failure it reports is the earliest bad record.

use crate::ledger::counter::{check_step, CounterFailure};
use crate::ledger::entry::{payload_digest, AuthMethod, Entry, EntryFacts};
use crate::ledger::head::{Checkpoint, HeadCounter};
use crate::ledger::merkle::{self, Frontier};
use crate::ledger::record_types as types;
use crate::signer::PublicKey;
use crate::store::{self, StoreError, StoredEvent, StoredHead};
use rusqlite::Connection;

pub mod counter;
pub mod timestamps;

/// The first thing found wrong, naming the exact record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// An event is missing: seqs must be dense from 0.
    #[error("event seq {seq}: missing (the log has a gap or was truncated)")]
    EventMissing {
        /// The first missing seq.
        seq: u64,
    },
    /// An event with a smaller seq than expected stands where the next event should be.
    #[error(
        "event seq {seq}: found seq {found} in its place (an event was inserted or events were reordered)"
    )]
    EventOutOfPlace {
        /// The seq expected at this position.
        seq: u64,
        /// The seq found there.
        found: u64,
    },
    /// The entry bytes are not a valid canonical entry.
    #[error("event seq {seq}: entry is malformed: {reason}")]
    EntryMalformed {
        /// The event.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The entry names another seq than the row it is stored in.
    #[error("event seq {seq}: entry claims seq {claimed}")]
    EntrySeqMismatch {
        /// The row.
        seq: u64,
        /// What the entry says.
        claimed: u64,
    },
    /// The stored leaf hash is not the hash of the entry.
    #[error("event seq {seq}: stored leaf hash does not match the entry")]
    LeafHashMismatch {
        /// The event.
        seq: u64,
    },
    /// The body (with its salt) does not hash to the entry's payload digest.
    #[error("event seq {seq}: body does not match the entry's payload_sha256 (the body was altered)")]
    PayloadMismatch {
        /// The event.
        seq: u64,
    },
    /// Only one of body and salt is present.
    #[error("event seq {seq}: body and salt must be both present or both erased")]
    PartialErasure {
        /// The event.
        seq: u64,
    },
    /// A head height is missing.
    #[error("head height {height}: missing (heights must be dense from 0)")]
    HeadMissing {
        /// The first missing height.
        height: u64,
    },
    /// The checkpoint text is malformed, or its columns disagree with it.
    #[error("head height {height}: {reason}")]
    HeadMalformed {
        /// The head.
        height: u64,
        /// Why.
        reason: String,
    },
    /// The origin differs from the expected one.
    #[error("head height {height}: origin {found:?} is not the expected {expected:?}")]
    OriginMismatch {
        /// The head.
        height: u64,
        /// In the head.
        found: String,
        /// Expected.
        expected: String,
    },
    /// A head's tree is smaller than its predecessor's.
    #[error("head height {height}: tree size {tree_size} is smaller than the previous head's {previous}")]
    TreeShrank {
        /// The head.
        height: u64,
        /// Its size.
        tree_size: u64,
        /// The predecessor's.
        previous: u64,
    },
    /// A head covers more events than the log holds.
    #[error("head height {height}: covers {tree_size} events but the log holds only {events} (events were deleted)")]
    HeadBeyondLog {
        /// The head.
        height: u64,
        /// Its size.
        tree_size: u64,
        /// Events present.
        events: u64,
    },
    /// The recomputed root differs from the head's.
    #[error(
        "head height {height}: root does not match the events (an event in seq {from}..{to} was altered)"
    )]
    RootMismatch {
        /// The head.
        height: u64,
        /// First seq of the block.
        from: u64,
        /// One past the last seq of the block.
        to: u64,
    },
    /// `anchorlog-prev` does not name the previous head.
    #[error("head height {height}: anchorlog-prev does not match the previous head (the chain is broken)")]
    ChainBroken {
        /// The head.
        height: u64,
    },
    /// The seal time goes backwards.
    #[error("head height {height}: seal time is earlier than the previous head's")]
    TimeWentBack {
        /// The head.
        height: u64,
    },
    /// The payload is gone but no erasure record (naming a later erasure event) accounts for it.
    #[error("event seq {seq}: body and salt are erased but no erasure record accounts for it")]
    UnrecordedErasure {
        /// The event.
        seq: u64,
    },
    /// A receipt's inclusion proof does not lead from the leaf to the head's root.
    #[error("event seq {seq}: the inclusion proof does not lead to the root of head height {height}")]
    InclusionProofInvalid {
        /// The event.
        seq: u64,
        /// The head.
        height: u64,
    },
    /// A bundle holds an event past its last head (not covered by any signature in it).
    #[error("event seq {seq}: beyond the last head of the bundle (covered by no signature in it)")]
    EventBeyondRange {
        /// The first such event.
        seq: u64,
    },
    /// The stored tree nodes (which serve proofs) disagree with the verified tree.
    #[error("head height {height}: the stored tree nodes at tree size {tree_size} do not match the events")]
    NodeStoreMismatch {
        /// The last head.
        height: u64,
        /// Its tree size.
        tree_size: u64,
    },
    /// The signature does not verify under the given key.
    #[error("head height {height}: signature does not verify with key {key_id}")]
    BadSignature {
        /// The head.
        height: u64,
        /// The key tried.
        key_id: String,
    },
    /// The head's RFC 3161 token does not verify.
    #[error("head height {height}: time-stamp token does not verify: {reason}")]
    BadTimestamp {
        /// The head.
        height: u64,
        /// Why.
        reason: String,
    },
    /// The head has no RFC 3161 token and tokens are required.
    #[error("head height {height}: has no time-stamp token (--require-timestamps)")]
    TimestampMissing {
        /// The head.
        height: u64,
    },
    /// The TPM counter in the heads is broken along the chain, or the log is not the newest one for the TPM's
    /// counter (start-up check, `verify --counter-attestation`).
    #[error(transparent)]
    Counter(#[from] CounterFailure),
}

impl Failure {
    /// The seq or height the failure names, as `("seq", n)` or `("height", n)`.
    pub fn location(&self) -> (&'static str, u64) {
        match self {
            Failure::EventMissing { seq }
            | Failure::EventOutOfPlace { seq, .. }
            | Failure::EntryMalformed { seq, .. }
            | Failure::EntrySeqMismatch { seq, .. }
            | Failure::LeafHashMismatch { seq }
            | Failure::PayloadMismatch { seq }
            | Failure::PartialErasure { seq }
            | Failure::EventBeyondRange { seq }
            | Failure::UnrecordedErasure { seq }
            | Failure::InclusionProofInvalid { seq, .. } => ("seq", *seq),
            Failure::HeadMissing { height }
            | Failure::HeadMalformed { height, .. }
            | Failure::OriginMismatch { height, .. }
            | Failure::TreeShrank { height, .. }
            | Failure::HeadBeyondLog { height, .. }
            | Failure::RootMismatch { height, .. }
            | Failure::ChainBroken { height }
            | Failure::TimeWentBack { height }
            | Failure::BadSignature { height, .. }
            | Failure::NodeStoreMismatch { height, .. }
            | Failure::BadTimestamp { height, .. }
            | Failure::TimestampMissing { height } => ("height", *height),
            Failure::Counter(c) => ("height", c.height()),
        }
    }
}

/// Verification could not complete, or found the log invalid.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log is invalid at the named record.
    #[error("verification failed: {0}")]
    Invalid(#[from] Failure),
    /// The input could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bundle could not be read (not a tar, no manifest, unknown version …).
    #[error("unreadable bundle: {0}")]
    Unreadable(String),
}

/// What a successful verification saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Events in the log.
    pub events: u64,
    /// Events whose body was erased.
    pub erased: u64,
    /// Heads in the chain.
    pub heads: u64,
    /// Events after the last head (not yet covered by a signature).
    pub unsealed_events: u64,
    /// Receive time of the first event, ns.
    pub first_received_ns: Option<u64>,
    /// Receive time of the last event, ns.
    pub last_received_ns: Option<u64>,
    /// Seal time of the first head, ms.
    pub first_sealed_ms: Option<i64>,
    /// Seal time of the last head, ms.
    pub last_sealed_ms: Option<i64>,
    /// Key id every head was verified with.
    pub key_id: String,
    /// The last head's checkpoint text.
    pub last_checkpoint: Option<String>,
    /// Frontier at the last head's tree size (used to continue the chain).
    #[serde(skip)]
    pub frontier_at_last_head: Frontier,
    /// The appliance's own records among the events, by kind (docs/FORMAT.md §10, §12–15).
    pub appliance: ApplianceSummary,
}

/// Counts of the appliance's own records (auth `internal`) in a verified range, by the `type` of their body:
/// what an auditor reads first — restarts, crashes, outages, refused access.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplianceSummary {
    /// `anchorlog.start` records.
    pub starts: u64,
    /// Of those, starts whose previous run ended without a stop record (a crash, a kill, a power loss).
    pub starts_after_unclean_end: u64,
    /// `anchorlog.stop` records.
    pub stops: u64,
    /// `anchorlog.outage` records with `state: started`.
    pub outages_started: u64,
    /// `anchorlog.outage` records with `state: ended`.
    pub outages_ended: u64,
    /// `anchorlog.access_denied` records.
    pub access_denied: u64,
    /// `anchorlog.audit_access` records.
    pub audit_access: u64,
    /// `anchorlog.erasure` records.
    pub erasures: u64,
    /// Own records of another type, or whose body is erased or not JSON.
    pub other: u64,
}

/// One of the appliance's own records, by the `type` of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRecord {
    /// `anchorlog.start`; whether its previous run ended without a stop record.
    Start {
        /// `previous_run` is `ended_without_stop_record`.
        after_unclean_end: bool,
    },
    /// `anchorlog.stop`.
    Stop,
    /// `anchorlog.outage`, `state: started`.
    OutageStarted,
    /// `anchorlog.outage`, `state: ended`.
    OutageEnded,
    /// `anchorlog.access_denied`.
    AccessDenied,
    /// `anchorlog.audit_access`.
    AuditAccess,
    /// `anchorlog.erasure`.
    Erasure,
    /// Anything else (another type, an erased body, not JSON).
    Other,
}

impl OwnRecord {
    /// The kind of an event's record: `None` unless the entry's auth is `internal`.
    pub fn of(auth: AuthMethod, body: Option<&[u8]>) -> Option<OwnRecord> {
        if auth != AuthMethod::Internal {
            return None;
        }
        let v: serde_json::Value = match body.map(serde_json::from_slice) {
            Some(Ok(v)) => v,
            _ => return Some(OwnRecord::Other),
        };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str());
        let state = text("state");
        Some(match text("type") {
            Some(types::START) => OwnRecord::Start {
                after_unclean_end: text("previous_run") == Some(types::PREVIOUS_RUN_UNCLEAN),
            },
            Some(types::STOP) => OwnRecord::Stop,
            Some(types::OUTAGE) if state == Some(types::OUTAGE_STARTED) => OwnRecord::OutageStarted,
            Some(types::OUTAGE) if state == Some(types::OUTAGE_ENDED) => OwnRecord::OutageEnded,
            Some(types::ACCESS_DENIED) => OwnRecord::AccessDenied,
            Some(types::AUDIT_ACCESS) => OwnRecord::AuditAccess,
            Some(types::ERASURE) => OwnRecord::Erasure,
            _ => OwnRecord::Other,
        })
    }
}

impl ApplianceSummary {
    fn add(&mut self, r: OwnRecord) {
        let n = match r {
            OwnRecord::Start { after_unclean_end } => {
                self.starts_after_unclean_end += u64::from(after_unclean_end);
                &mut self.starts
            }
            OwnRecord::Stop => &mut self.stops,
            OwnRecord::OutageStarted => &mut self.outages_started,
            OwnRecord::OutageEnded => &mut self.outages_ended,
            OwnRecord::AccessDenied => &mut self.access_denied,
            OwnRecord::AuditAccess => &mut self.audit_access,
            OwnRecord::Erasure => &mut self.erasures,
            OwnRecord::Other => &mut self.other,
        };
        *n += 1;
    }
}

/// Where a walk starts: the empty log, or the state right after an already verified anchor head (a bundle
/// that starts past height 0 carries the frontier of the prefix it leaves out).
#[derive(Debug, Clone)]
pub struct Start {
    /// Frontier over the events before the walk (its size is the first seq the walk expects).
    pub frontier: Frontier,
    /// Height of the first head the walk expects.
    pub next_height: u64,
    /// SHA-256 of the anchor head's text (zeros at genesis).
    pub prev_hash: [u8; 32],
    /// Seal time of the anchor head (ms), `i64::MIN` at genesis.
    pub prev_time_ms: i64,
    /// The anchor head's TPM counter, if it carries one (the next head's must be greater).
    pub prev_counter: Option<HeadCounter>,
}

impl Start {
    /// The empty log before head 0.
    pub fn genesis() -> Self {
        Start {
            frontier: Frontier::new(),
            next_height: 0,
            prev_hash: [0; 32],
            prev_time_ms: i64::MIN,
            prev_counter: None,
        }
    }
}

/// A source of events in seq order: the database or an export bundle. Both go through [`walk`], so the two
/// verifiers are one.
pub trait EventSource {
    /// Calls `f` with consecutive batches of the events from seq `from` on, in the order stored, until `f`
    /// returns `false`. An item the source could not decode is an `Err` naming its position; the walk reports
    /// it only after everything before it, so the first failure stays the earliest record.
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError>;
}

/// One event as a source decoded and checked it: `Err` when it could not even be decoded (its seq unknown).
pub type Decoded = Result<CheckedEvent, Failure>;

/// One decoded event and the result of its own checks ([`check_event`]); the walk adds the checks that need
/// order (seq continuity, the tree, the heads). Sources check their batches on all cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEvent {
    /// The seq the event claims (its row or line).
    pub seq: u64,
    /// Its leaf hash (recomputed from the entry and compared with the stored one by the check).
    pub leaf_hash: merkle::Hash,
    /// `(received_at_ns, erased)` when the entry, leaf and payload check out, else the failure.
    pub check: Result<(u64, bool), Failure>,
    /// The kind of the appliance's own record this is, if it is one (its entry's auth is `internal`).
    pub own: Option<OwnRecord>,
}

impl CheckedEvent {
    /// Checks a decoded event row ([`check_event`]).
    pub fn of(ev: &StoredEvent) -> CheckedEvent {
        CheckedEvent::from_check(ev.seq, ev.leaf_hash, check_event(ev), ev.body.as_deref())
    }

    /// The result of [`check_parts`] on an event with this `body`.
    pub fn from_check(
        seq: u64,
        leaf_hash: merkle::Hash,
        checked: Result<(EntryFacts, bool), Failure>,
        body: Option<&[u8]>,
    ) -> CheckedEvent {
        let own = checked.as_ref().ok().and_then(|(facts, _)| OwnRecord::of(facts.auth, body));
        CheckedEvent { seq, leaf_hash, check: checked.map(|(e, erased)| (e.received_at_ns, erased)), own }
    }
}

/// Events per batch: large enough to amortize handing work to threads, small enough to stay in cache.
pub const BATCH: usize = 8192;

/// Maps `f` over `items` on all cores (scoped threads, order kept). Per-event checks are independent; only
/// the tree and the heads need order, so the walk checks a batch in parallel and then folds it in sequence.
pub fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || items.len() < 512 {
        return items.iter().map(f).collect();
    }
    // Small pieces taken in turn, not one slice per thread: on a shared machine a preempted worker must not
    // hold up the batch while the others idle.
    let piece = (items.len() / (threads * 8)).max(64);
    let pieces: Vec<&[T]> = items.chunks(piece).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (f, pieces, next) = (&f, &pieces, &next);
    let mut done: Vec<(usize, Vec<U>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(p) = pieces.get(i) else { return out };
                        out.push((i, p.iter().map(f).collect::<Vec<U>>()));
                    }
                })
            })
            .collect();
        // A panic in a check is a bug; re-raise it rather than hide it.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(items.len());
    for (_, v) in done {
        out.extend(v);
    }
    out
}

/// The events of a database.
pub struct DbEvents<'a>(pub &'a Connection);

impl EventSource for DbEvents<'_> {
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut go_on = true;
        let conn = self.0;
        store::for_each_event(conn, from, |ev| {
            // An erased payload must be accounted for by its record (rare: one lookup per erased event).
            let item = if ev.body.is_none() && ev.salt.is_none() {
                match store::erasure::erasure(conn, ev.seq)? {
                    Some(r) if r.erasure_seq > ev.seq => Ok(ev),
                    _ => Err(Failure::UnrecordedErasure { seq: ev.seq }),
                }
            } else {
                Ok(ev)
            };
            batch.push(item);
            if batch.len() == BATCH {
                go_on = f(check_batch(&std::mem::replace(&mut batch, Vec::with_capacity(BATCH))));
            }
            Ok(go_on)
        })?;
        if go_on && !batch.is_empty() {
            f(check_batch(&batch));
        }
        Ok(())
    }
}

/// Checks a batch of decoded rows on all cores.
fn check_batch(batch: &[Result<StoredEvent, Failure>]) -> Vec<Decoded> {
    par_map(batch, |item| match item {
        Ok(ev) => Ok(CheckedEvent::of(ev)),
        Err(f) => Err(f.clone()),
    })
}

/// Verifies a whole database against `key`; `origin`, when given, must match every head.
pub fn verify_database(
    conn: &Connection,
    key: &PublicKey,
    origin: Option<&str>,
) -> Result<Report, VerifyError> {
    let heads = store::all_heads(conn)?;
    let report = walk(Start::genesis(), heads, &mut DbEvents(conn), key, origin)?;
    // The stored nodes serve every proof; their right edge at the last head must be the verified one
    // (O(log n) reads). A proof from a corrupted node would fail at the client anyway; this names it early.
    let size = report.frontier_at_last_head.size();
    let stored = store::tree::load_frontier(conn, size).ok();
    if stored.as_ref() != Some(&report.frontier_at_last_head) {
        return Err(
            Failure::NodeStoreMismatch { height: report.heads.saturating_sub(1), tree_size: size }.into()
        );
    }
    Ok(report)
}

/// The one verification walk: every event of `events` from `start`, each head of `heads` (in height order)
/// checked when the walk reaches its tree size; the first failure names the earliest bad record.
pub fn walk(
    start: Start,
    heads: Vec<StoredHead>,
    events: &mut dyn EventSource,
    key: &PublicKey,
    origin: Option<&str>,
) -> Result<Report, VerifyError> {
    let first_seq = start.frontier.size();
    let mut checker = HeadChecker::new(key, origin, heads, &start);
    let mut report = Report {
        key_id: key.key_id.clone(),
        frontier_at_last_head: start.frontier.clone(),
        ..Report::default()
    };
    let mut frontier = start.frontier;
    let mut failure: Option<Failure> = None;
    checker.check_due(&frontier, &mut report)?;
    events.visit(first_seq, &mut |batch| {
        for item in batch {
            let seq = frontier.size();
            let ev = match item {
                Ok(ev) => ev,
                Err(f) => {
                    failure = Some(f);
                    return false;
                }
            };
            if ev.seq > seq {
                failure = Some(Failure::EventMissing { seq });
                return false;
            }
            if ev.seq < seq {
                failure = Some(Failure::EventOutOfPlace { seq, found: ev.seq });
                return false;
            }
            match ev.check {
                Ok((received_at_ns, erased)) => {
                    report.first_received_ns.get_or_insert(received_at_ns);
                    report.last_received_ns = Some(received_at_ns);
                    report.erased += u64::from(erased);
                    if let Some(own) = ev.own {
                        report.appliance.add(own);
                    }
                }
                Err(f) => {
                    failure = Some(f);
                    return false;
                }
            }
            frontier.push(ev.leaf_hash);
            if let Err(f) = checker.check_due(&frontier, &mut report) {
                failure = Some(f);
                return false;
            }
        }
        true
    })?;
    if let Some(f) = failure {
        return Err(f.into());
    }
    report.events = frontier.size() - first_seq;
    checker.finish(frontier.size())?;
    report.heads = checker.checked;
    report.unsealed_events = frontier.size() - report.frontier_at_last_head.size();
    Ok(report)
}

/// Checks one event row; returns its entry's facts and whether it is erased.
pub fn check_event(ev: &store::StoredEvent) -> Result<(EntryFacts, bool), Failure> {
    check_parts(ev.seq, &ev.entry, &ev.leaf_hash, ev.salt.as_deref(), ev.body.as_deref())
}

/// [`check_event`] on borrowed parts: the entry is canonical and names `seq`, `leaf_hash` is its leaf hash,
/// and salt and body (both present) hash to its `payload_sha256`, or are both erased.
pub fn check_parts(
    seq: u64,
    entry_bytes: &[u8],
    leaf_hash: &merkle::Hash,
    salt: Option<&[u8]>,
    body: Option<&[u8]>,
) -> Result<(EntryFacts, bool), Failure> {
    let entry =
        Entry::check(entry_bytes).map_err(|e| Failure::EntryMalformed { seq, reason: e.to_string() })?;
    if entry.seq != seq {
        return Err(Failure::EntrySeqMismatch { seq, claimed: entry.seq });
    }
    if merkle::leaf_hash(entry_bytes) != *leaf_hash {
        return Err(Failure::LeafHashMismatch { seq });
    }
    match (salt, body) {
        (Some(salt), Some(body)) => {
            if payload_digest(salt, body) != entry.payload_sha256 {
                return Err(Failure::PayloadMismatch { seq });
            }
            Ok((entry, false))
        }
        (None, None) => Ok((entry, true)),
        _ => Err(Failure::PartialErasure { seq }),
    }
}

/// Checks heads in height order as the event walk reaches their tree sizes.
struct HeadChecker<'a> {
    key: &'a PublicKey,
    origin: Option<&'a str>,
    heads: std::iter::Peekable<std::vec::IntoIter<StoredHead>>,
    prev_hash: [u8; 32],
    prev_size: u64,
    prev_time: i64,
    prev_counter: Option<HeadCounter>,
    next_height: u64,
    checked: u64,
}

impl<'a> HeadChecker<'a> {
    fn new(key: &'a PublicKey, origin: Option<&'a str>, heads: Vec<StoredHead>, start: &Start) -> Self {
        HeadChecker {
            key,
            origin,
            heads: heads.into_iter().peekable(),
            prev_hash: start.prev_hash,
            prev_size: start.frontier.size(),
            prev_time: start.prev_time_ms,
            prev_counter: start.prev_counter,
            next_height: start.next_height,
            checked: 0,
        }
    }

    /// Checks every head whose tree size equals the frontier's size.
    fn check_due(&mut self, frontier: &Frontier, report: &mut Report) -> Result<(), Failure> {
        while let Some(h) = self.heads.peek() {
            let height = self.next_height;
            if h.height != height {
                return Err(Failure::HeadMissing { height });
            }
            if h.tree_size < self.prev_size {
                return Err(Failure::TreeShrank { height, tree_size: h.tree_size, previous: self.prev_size });
            }
            if h.tree_size != frontier.size() {
                return Ok(());
            }
            let Some(h) = self.heads.next() else { return Ok(()) };
            self.check_head(&h, frontier)?;
            report.first_sealed_ms.get_or_insert(h.sealed_at_ms);
            report.last_sealed_ms = Some(h.sealed_at_ms);
            report.last_checkpoint = Some(h.checkpoint.clone());
            report.frontier_at_last_head = frontier.clone();
        }
        Ok(())
    }

    fn check_head(&mut self, h: &StoredHead, frontier: &Frontier) -> Result<(), Failure> {
        let height = h.height;
        let cp = Checkpoint::parse(&h.checkpoint)
            .map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
        if cp.height != height
            || cp.tree_size != h.tree_size
            || cp.root != h.root
            || cp.time_ms != h.sealed_at_ms
        {
            return Err(Failure::HeadMalformed {
                height,
                reason: "the stored columns disagree with the signed checkpoint text".into(),
            });
        }
        if let Some(expected) = self.origin {
            if cp.origin != expected {
                return Err(Failure::OriginMismatch { height, found: cp.origin, expected: expected.into() });
            }
        }
        if cp.prev != self.prev_hash {
            return Err(Failure::ChainBroken { height });
        }
        if cp.time_ms < self.prev_time {
            return Err(Failure::TimeWentBack { height });
        }
        check_step(height, self.prev_counter.as_ref(), cp.counter.as_ref())?;
        if !self.key.verify(h.checkpoint.as_bytes(), &h.signature) {
            return Err(Failure::BadSignature { height, key_id: self.key.key_id.clone() });
        }
        if frontier.root() != cp.root {
            return Err(Failure::RootMismatch { height, from: self.prev_size, to: cp.tree_size });
        }
        self.prev_hash = Checkpoint::text_hash(&h.checkpoint);
        self.prev_size = cp.tree_size;
        self.prev_time = cp.time_ms;
        self.prev_counter = cp.counter;
        self.next_height += 1;
        self.checked += 1;
        Ok(())
    }

    /// After the walk: any head left claims more events than exist.
    fn finish(&mut self, events: u64) -> Result<(), Failure> {
        match self.heads.next() {
            None => Ok(()),
            Some(h) if h.height != self.next_height => Err(Failure::HeadMissing { height: self.next_height }),
            Some(h) if h.tree_size < self.prev_size => Err(Failure::TreeShrank {
                height: h.height,
                tree_size: h.tree_size,
                previous: self.prev_size,
            }),
            Some(h) => Err(Failure::HeadBeyondLog { height: h.height, tree_size: h.tree_size, events }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_records_are_told_apart_by_their_body_type() {
        let own = |auth, body: &str| OwnRecord::of(auth, Some(body.as_bytes()));
        let i = AuthMethod::Internal;
        assert_eq!(
            own(AuthMethod::Mtls, r#"{"type":"anchorlog.stop"}"#),
            None,
            "a producer's event never counts"
        );
        assert_eq!(
            own(i, r#"{"type":"anchorlog.start","previous_run":"ended_without_stop_record"}"#),
            Some(OwnRecord::Start { after_unclean_end: true })
        );
        assert_eq!(
            own(i, r#"{"type":"anchorlog.start","previous_run":"stopped_cleanly"}"#),
            Some(OwnRecord::Start { after_unclean_end: false })
        );
        assert_eq!(own(i, r#"{"type":"anchorlog.stop"}"#), Some(OwnRecord::Stop));
        assert_eq!(
            own(i, r#"{"type":"anchorlog.outage","state":"started"}"#),
            Some(OwnRecord::OutageStarted)
        );
        assert_eq!(own(i, r#"{"type":"anchorlog.outage","state":"ended"}"#), Some(OwnRecord::OutageEnded));
        assert_eq!(own(i, r#"{"type":"anchorlog.access_denied"}"#), Some(OwnRecord::AccessDenied));
        assert_eq!(own(i, r#"{"type":"anchorlog.audit_access"}"#), Some(OwnRecord::AuditAccess));
        assert_eq!(own(i, r#"{"type":"anchorlog.erasure"}"#), Some(OwnRecord::Erasure));
        assert_eq!(own(i, "not json"), Some(OwnRecord::Other));
        assert_eq!(OwnRecord::of(i, None), Some(OwnRecord::Other), "an erased own record");
        let mut sum = ApplianceSummary::default();
        for r in [
            OwnRecord::Start { after_unclean_end: true },
            OwnRecord::Start { after_unclean_end: false },
            OwnRecord::Stop,
        ] {
            sum.add(r);
        }
        assert_eq!((sum.starts, sum.starts_after_unclean_end, sum.stops), (2, 1, 1));
    }
}
