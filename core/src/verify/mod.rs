//! The offline verifier: recomputes every leaf, the tree at every head, every chain link and signature.
//!
//! Shared by `anchorlog verify`, the appliance's startup reconciliation and self-verification, the tests and the
//! browser console. It sees only public material (events and heads from any [`EventSource`], the signer's public
//! key) and reads nothing itself: the appliance's SQLite source and the database checks around the walk are
//! `anchorlog::verify`'s. It walks events in seq order once, keeping the RFC 9162 frontier, and checks each head
//! when the walk reaches its tree size, so the first failure it reports is the earliest bad record.

use crate::counter::{check_step, CounterFailure};
use crate::entry::{payload_digest, Entry, EntryFacts};
use crate::head::{Checkpoint, HeadCounter};
use crate::key::PublicKey;
use crate::merkle::{self, Frontier};
use crate::stored::{StoredEvent, StoredHead};
use std::collections::BTreeMap;

pub mod counter;
pub mod erasure;
pub mod keys;
mod records;
pub mod timestamps;
mod walker;
pub mod witnesses;

use keys::{misattributed, Retired, RotationRecord, RotationReport};
pub use records::{ApplianceSummary, OutageComponent, OutageWindow, OwnRecord};
pub use walker::Walker;

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
    /// The event an erased payload's erasure row names is not the appliance's erasure record of this event.
    #[error(
        "event seq {seq}: its payload is erased, but event seq {erasure_seq} is not the appliance's erasure \
         record of it (a forged erasure: the payload was removed without the logged, signed erasure)"
    )]
    ErasureRecordMismatch {
        /// The erased event.
        seq: u64,
        /// The event named as its erasure record.
        erasure_seq: u64,
    },
    /// The erasure record an erased payload names is not in the log (or bundle, or receipt).
    #[error(
        "event seq {seq}: its payload is erased, but its erasure record (event seq {erasure_seq}) is not there"
    )]
    ErasureRecordMissing {
        /// The erased event.
        seq: u64,
        /// The record it names.
        erasure_seq: u64,
    },
    /// The erasure record exists but no verified head covers it yet.
    #[error(
        "event seq {seq}: its erasure record (event seq {erasure_seq}) is not covered by a signed head yet; if \
         the appliance is running, verify again after the next seal"
    )]
    ErasureRecordUnsealed {
        /// The erased event.
        seq: u64,
        /// Its record.
        erasure_seq: u64,
    },
    /// A receipt's inclusion proof does not lead from the leaf to the head's root.
    #[error("event seq {seq}: the inclusion proof does not lead to the root of head height {height}")]
    InclusionProofInvalid {
        /// The event.
        seq: u64,
        /// The head.
        height: u64,
    },
    /// An event follows a clean stop record without a start record in between: nothing writes to the log while
    /// the appliance is stopped, so it was appended behind the appliance's back.
    #[error(
        "event seq {seq}: written after the clean stop recorded at seq {stop_seq} and before the next start, \
         while the appliance was not running (appended behind its back)"
    )]
    WrittenWhileStopped {
        /// The event.
        seq: u64,
        /// The stop record before it.
        stop_seq: u64,
    },
    /// A head carried as proof does not extend the head the evidence is anchored at.
    #[error("head height {height}: the consistency proof from tree size {from_size} does not verify")]
    ConsistencyProofInvalid {
        /// The head.
        height: u64,
        /// The anchor's tree size.
        from_size: u64,
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
    /// A key rotation record is malformed, or does not fit the chain (another old key, a key used before).
    #[error("event seq {seq}: key rotation record is invalid: {reason}")]
    KeyRotationInvalid {
        /// The record.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A key rotation record is not the last event of the first head covering it: the appliance seals it in the
    /// same transaction as that head, so events after it were inserted.
    #[error(
        "event seq {seq}: key rotation record is not the last event of head height {height}, the first head \
         covering it (the old key's last head must end with the record)"
    )]
    KeyRotationNotLast {
        /// The record.
        seq: u64,
        /// The first head covering it.
        height: u64,
    },
    /// A head is signed by a key no rotation record announced (the chain holds `current` there).
    #[error(
        "head height {height}: signed by key {key_id} but no key rotation record under a head signed by \
         {current} announces it"
    )]
    UnannouncedKey {
        /// The head.
        height: u64,
        /// The key that signed it.
        key_id: String,
        /// The key the chain holds at this height.
        current: String,
    },
    /// A head after a rotation is signed by the key that rotation retired.
    #[error(
        "head height {height}: signed by key {key_id}, which the key rotation record at event seq {seq} retired \
         after head height {retired_at}; later heads must be signed by {current}"
    )]
    RetiredKey {
        /// The head.
        height: u64,
        /// The retired key that signed it.
        key_id: String,
        /// The rotation record that retired it.
        seq: u64,
        /// The last head it may sign.
        retired_at: u64,
        /// The key the chain holds at this height.
        current: String,
    },
    /// The first head checked is signed by a key the verifier was not given.
    #[error(
        "head height {height}: signed by key {key_id}, which is none of the given keys ({given}); give the key \
         the log started with (later keys follow from its key rotation records)"
    )]
    UntrustedKey {
        /// The head.
        height: u64,
        /// The key that signed it.
        key_id: String,
        /// The given keys.
        given: String,
    },
    /// Keyring mode: a head is signed by a key the evidence holds that is not in the keyring.
    #[error(
        "head height {height}: signed by key {key_id}, which is not in the keyring ({ring}); add it only if it is \
         the signing key of one of the log's nodes"
    )]
    OutsideKeyring {
        /// The head.
        height: u64,
        /// The key that signed it.
        key_id: String,
        /// The keyring's keys.
        ring: String,
    },
    /// Keyring mode: a head's signature verifies under no key of the keyring, nor any other key the evidence holds.
    #[error("head height {height}: signature verifies under no key of the keyring ({ring})")]
    NoKeyringKey {
        /// The head.
        height: u64,
        /// The keyring's keys.
        ring: String,
    },
    /// The first head under a new key carries another TPM counter than its rotation record announced.
    #[error(
        "head height {height}: the first head under the new key carries {found}, but the key rotation record at \
         event seq {seq} announced {announced}"
    )]
    RotationCounterMismatch {
        /// The head.
        height: u64,
        /// The rotation record.
        seq: u64,
        /// What the record announced.
        announced: String,
        /// What the head carries.
        found: String,
    },
    /// The head's RFC 3161 token does not verify.
    #[error("head height {height}: time-stamp token does not verify: {reason}")]
    BadTimestamp {
        /// The head.
        height: u64,
        /// Why.
        reason: String,
    },
    /// A token's genTime is earlier than an earlier head's token's (beyond the allowed skew): heads were
    /// re-signed and re-timestamped out of order, or a token was moved.
    #[error(
        "head height {height}: its token's genTime {gen_time} is earlier than head height {previous}'s token's \
         {previous_gen_time} (time-stamps must not go backwards along the chain)"
    )]
    TimestampWentBack {
        /// The head.
        height: u64,
        /// Its genTime, RFC 3339.
        gen_time: String,
        /// The earlier head whose token is later.
        previous: u64,
        /// That token's genTime.
        previous_gen_time: String,
    },
    /// A token was issued too long after the head was sealed, outside any recorded timestamping outage: the
    /// head may have been written (or rewritten) later than it claims.
    #[error(
        "head height {height}: its token was issued {delay_s} s after the head's seal time, more than the \
         allowed {max_s} s, and no timestamping outage recorded in the log covers it (a backdated or \
         rewritten head); if the TSA was down, verify a range that holds the outage records, or raise \
         --max-timestamp-delay"
    )]
    TimestampLate {
        /// The head.
        height: u64,
        /// genTime − seal time, seconds.
        delay_s: i64,
        /// The allowed delay, seconds.
        max_s: u64,
    },
    /// The head has no RFC 3161 token and tokens are required.
    #[error("head height {height}: has no time-stamp token (--require-timestamps)")]
    TimestampMissing {
        /// The head.
        height: u64,
    },
    /// A self-verification record (docs/FORMAT.md §18) names a head other than the one stored at its height.
    #[error(
        "head height {height}: it is not the head the self-verification record at seq {record_seq} names (the \
         head was replaced after it was verified)"
    )]
    SelfVerifyRecordMismatch {
        /// The head.
        height: u64,
        /// The record.
        record_seq: u64,
    },
    /// The TPM counter in the heads is broken along the chain, or the log is not the newest one for the TPM's
    /// counter (start-up check, `verify --counter-attestation`).
    #[error(transparent)]
    Counter(#[from] CounterFailure),
    /// A listed witness's cosignature line does not verify over the head (the cosignatures were altered).
    #[error("head height {height}: the cosignature of listed witness {witness} does not verify: {reason}")]
    BadCosignature {
        /// The head.
        height: u64,
        /// `name+key ID` of the witness.
        witness: String,
        /// Why.
        reason: String,
    },
    /// A listed witness's cosignature is dated before the head existed (beyond the allowed skew).
    #[error(
        "head height {height}: the cosignature of listed witness {witness} is dated {timestamp} (seconds since \
         the epoch), more than {skew_s} s before the head's seal time: no honest witness cosigns a head before it \
         exists (a head re-dated or re-signed later, or a witness clock far off)"
    )]
    CosignatureBeforeSeal {
        /// The head.
        height: u64,
        /// `name+key ID` of the witness.
        witness: String,
        /// The cosignature's time.
        timestamp: u64,
        /// The allowed skew, seconds.
        skew_s: u64,
    },
    /// The newest head relied on lacks the required number of distinct listed witnesses' cosignatures.
    #[error(
        "head height {height}: cosigned by {have} of the {need} listed witnesses required ({}); the newest head \
         of a running appliance is cosigned within seconds of its seal, so if the appliance is running verify \
         again in a few seconds; otherwise the witnesses never saw this head or refused it (a rolled-back or \
         forked log)",
         if cosigned_by.is_empty() { "none".to_string() } else { cosigned_by.join(", ") }
    )]
    BelowWitnessQuorum {
        /// The newest head.
        height: u64,
        /// Distinct listed witnesses whose cosignature verified.
        have: usize,
        /// The quorum.
        need: usize,
        /// Which (`name+key ID`).
        cosigned_by: Vec<String>,
    },
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
            | Failure::ErasureRecordMismatch { seq, .. }
            | Failure::ErasureRecordMissing { seq, .. }
            | Failure::ErasureRecordUnsealed { seq, .. }
            | Failure::WrittenWhileStopped { seq, .. }
            | Failure::KeyRotationInvalid { seq, .. }
            | Failure::KeyRotationNotLast { seq, .. }
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
            | Failure::UnannouncedKey { height, .. }
            | Failure::RetiredKey { height, .. }
            | Failure::UntrustedKey { height, .. }
            | Failure::OutsideKeyring { height, .. }
            | Failure::NoKeyringKey { height, .. }
            | Failure::RotationCounterMismatch { height, .. }
            | Failure::NodeStoreMismatch { height, .. }
            | Failure::BadTimestamp { height, .. }
            | Failure::TimestampMissing { height }
            | Failure::ConsistencyProofInvalid { height, .. }
            | Failure::TimestampWentBack { height, .. }
            | Failure::TimestampLate { height, .. }
            | Failure::BadCosignature { height, .. }
            | Failure::CosignatureBeforeSeal { height, .. }
            | Failure::BelowWitnessQuorum { height, .. }
            | Failure::SelfVerifyRecordMismatch { height, .. } => ("height", *height),
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
    /// The source could not be read (the appliance's database: its `StoreError`, boxed so the core needs no SQLite;
    /// shown as the source's own message).
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
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
    /// The key the chain starts with: the given key that verified the first head checked (a bundle's anchor).
    pub key_id: String,
    /// The key the chain holds at its end: every head after the last rotation is signed by it, and so must the next
    /// head be (equal to `key_id` when the log never rotated its key).
    pub current_key_id: String,
    /// That key.
    #[serde(skip)]
    pub current_key: Option<PublicKey>,
    /// The key rotations the chain followed, in order (docs/FORMAT.md §20).
    pub rotations: Vec<RotationReport>,
    /// Which key signed which heads: runs of consecutive heads signed by one key, in height order.
    pub signers: Vec<SignerRun>,
    /// Keyring mode ([`WalkOptions::keyring`]): the keys that may sign the next head (to check evidence that
    /// reaches past the walk, e.g. a bundle's erasure record proofs).
    #[serde(skip)]
    pub keyring: Option<Vec<PublicKey>>,
    /// A key rotation record after the last head (no head covers it yet), by seq.
    pub unsealed_rotation: Option<u64>,
    /// The origin every head was checked against (given, or pinned to the source's own: see [`WalkOptions`]).
    pub origin: String,
    /// The last head's checkpoint text.
    pub last_checkpoint: Option<String>,
    /// Frontier at the last head's tree size (used to continue the chain).
    #[serde(skip)]
    pub frontier_at_last_head: Frontier,
    /// The appliance's own records among the events, by kind (docs/FORMAT.md §10, §12–15).
    pub appliance: ApplianceSummary,
    /// Timestamping outages the log records (they excuse late tokens: [`timestamps`]).
    pub timestamping_outages: Vec<OutageWindow>,
}

/// How a walk judges what it reads beyond the events and heads themselves.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions<'a> {
    /// The origin every head must carry. `None`: the first head's, and every later head must equal it (a
    /// log never changes origin); the report names the origin either way.
    pub origin: Option<&'a str>,
    /// Erasure records outside the walked range that the caller already verified (a bundle's or receipt's
    /// record proofs): erased seq → record seq.
    pub proven_erasures: BTreeMap<u64, u64>,
    /// Accept an erasure record not yet covered by a head (only the appliance's own start-up: it seals the
    /// record next; an auditor's verification never sets it).
    pub allow_unsealed_erasure_records: bool,
    /// Other public keys the evidence carries (the database's `log_meta`, a bundle's `keys/`): never trusted, only
    /// used to name the key that signed a head no trusted key or rotation accounts for.
    pub known_keys: Vec<PublicKey>,
    /// The given keys are a keyring (docs/FORMAT.md §20, "Keyrings"): each of them may sign any head, as the
    /// nodes of an active/standby pair each sign with their own key, so heads may pass from one to another
    /// without a rotation record. Rotations still retire a key for good, and each key's TPM counter is checked
    /// against that key's own previous head. Off: the given keys only start the chain.
    pub keyring: bool,
}

/// Heads `from_height..=to_height`, all signed by the key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignerRun {
    /// Hex key id (docs/FORMAT.md §5).
    pub key_id: String,
    /// The first head of the run.
    pub from_height: u64,
    /// The last head of the run.
    pub to_height: u64,
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
    /// The seq of a clean stop record that is the last event before the walk, if it is one (the walk's first
    /// event must then be a start record, as in a walk from genesis; `None` when unknown, e.g. in a bundle).
    pub stopped_at: Option<u64>,
    /// The key the chain holds after the anchor (`None` at genesis: the first head picks one of the given keys).
    pub key: Option<PublicKey>,
    /// Keys retired before the anchor (from rotation proofs), to name a head signed by one.
    pub retired: Vec<Retired>,
    /// When the anchor head ends with a key rotation record: its seq and the TPM counter index it announced for
    /// the first head under the new key.
    pub announcement: Option<(u64, Option<u32>)>,
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
            stopped_at: None,
            key: None,
            retired: Vec::new(),
            announcement: None,
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
    /// The kind of the appliance's own record this is, if it is one ([`EntryFacts::appliance`]).
    pub own: Option<OwnRecord>,
    /// For an erased payload: the seq of the erasure record its erasure row (or bundle line) names.
    pub erasure_seq: Option<u64>,
    /// For a key rotation record: its body, checked, or what is wrong with it.
    pub rotation: Option<Result<Box<RotationRecord>, String>>,
}

impl CheckedEvent {
    /// Checks a decoded event row ([`check_event`]).
    pub fn of(ev: &StoredEvent) -> CheckedEvent {
        CheckedEvent::from_check(ev.seq, ev.leaf_hash, check_event(ev), ev.body.as_deref())
    }

    /// This event, naming `erasure_seq` as the record of its erased payload.
    pub fn with_erasure_seq(mut self, erasure_seq: Option<u64>) -> CheckedEvent {
        self.erasure_seq = erasure_seq;
        self
    }

    /// The result of [`check_parts`] on an event with this `body`.
    pub fn from_check(
        seq: u64,
        leaf_hash: merkle::Hash,
        checked: Result<(EntryFacts, bool), Failure>,
        body: Option<&[u8]>,
    ) -> CheckedEvent {
        let own = checked.as_ref().ok().and_then(|(facts, _)| OwnRecord::of(facts.appliance, body));
        // Read here, on the batch's threads: the walk only follows it.
        let rotation = (own == Some(OwnRecord::KeyRotation))
            .then(|| RotationRecord::parse(body.unwrap_or_default()).map(Box::new));
        let check = checked.map(|(e, erased)| (e.received_at_ns, erased));
        CheckedEvent { seq, leaf_hash, check, own, erasure_seq: None, rotation }
    }
}

/// Events per batch: large enough to amortize handing work to threads, small enough to stay in cache.
pub const BATCH: usize = 8192;

/// Maps `f` over `items` on all cores (scoped threads, order kept). Per-event checks are independent; only
/// the tree and the heads need order, so the walk checks a batch in parallel and then folds it in sequence.
///
/// The one place the core starts threads (core/README.md): pure computation over the caller's bytes, spread over
/// the cores. wasm32-unknown-unknown has no threads; there [`par_map`] maps in order on the caller's thread.
#[cfg(target_arch = "wasm32")]
pub fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    items.iter().map(f).collect()
}

/// Maps `f` over `items` on all cores (scoped threads, order kept). Per-event checks are independent; only
/// the tree and the heads need order, so the walk checks a batch in parallel and then folds it in sequence.
///
/// The one place the core starts threads (core/README.md): pure computation over the caller's bytes, spread over
/// the cores. wasm32-unknown-unknown has no threads; there [`par_map`] maps in order on the caller's thread.
#[cfg(not(target_arch = "wasm32"))]
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

/// The one verification walk: every event of `events` from `start`, each head of `heads` (in height order)
/// checked when the walk reaches its tree size; the first failure names the earliest bad record. The first head
/// is signed by one of `keys` (or `start.key`); a later head by another key only after a key rotation record.
///
/// The [`Walker`] driven by the source's batches: a caller that gets its checked events from elsewhere (the
/// browser console's checking workers) pushes them into a [`Walker`] itself and walks the same code.
pub fn walk(
    start: Start,
    heads: Vec<StoredHead>,
    events: &mut dyn EventSource,
    keys: &[PublicKey],
    opts: &WalkOptions<'_>,
) -> Result<Report, VerifyError> {
    Walker::new(start, heads, keys, opts)?.drive(events)
}

/// Checks one event row; returns its entry's facts and whether it is erased.
pub fn check_event(ev: &StoredEvent) -> Result<(EntryFacts, bool), Failure> {
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

/// Checks heads in height order as the event walk reaches their tree sizes, and follows the key chain.
struct HeadChecker {
    /// The keys the verifier trusts: the chain starts with one of them. (Owned, so that a [`Walker`] can be
    /// kept between calls, e.g. behind a handle in the browser.)
    trusted: Vec<PublicKey>,
    /// Other keys the evidence carries, only to name a head's signer in a failure.
    known: Vec<PublicKey>,
    /// The key heads are signed with from here on (`None` until the first head is checked, unless anchored).
    current: Option<PublicKey>,
    /// The key the chain started with.
    first_key: Option<String>,
    /// Keys rotated away, with the record and head that retired them.
    retired: Vec<Retired>,
    /// A rotation record the walk met that no checked head covers yet.
    pending: Option<(u64, Box<RotationRecord>)>,
    /// After a rotation head: the record's seq and the counter index it announced, for the next head.
    announced: Option<(u64, Option<u32>)>,
    /// The rotations followed.
    rotations: Vec<RotationReport>,
    /// Keyring mode ([`WalkOptions::keyring`]): the keys that may sign the next head (the given keys and those
    /// rotations brought in, less those they retired), and each key's TPM counter at the last head it signed
    /// while another key signs.
    keyring: Option<Keyring>,
    /// Which key signed which heads.
    signers: Vec<SignerRun>,
    /// The origin every head must carry: given, or the first checked head's.
    origin: Option<String>,
    heads: std::iter::Peekable<std::vec::IntoIter<StoredHead>>,
    prev_hash: [u8; 32],
    prev_size: u64,
    prev_time: i64,
    prev_counter: Option<HeadCounter>,
    next_height: u64,
    checked: u64,
}

/// Keyring mode's state ([`WalkOptions::keyring`]).
struct Keyring {
    /// The keys that may sign the next head.
    keys: Vec<PublicKey>,
    /// Each key's TPM counter at the last head it signed, while another key signs.
    counters: BTreeMap<String, Option<HeadCounter>>,
    /// The new key of the last rotation, until it signs its first head (its announced counter binds that head).
    announced_key: Option<String>,
}

impl HeadChecker {
    fn new(
        trusted: Vec<PublicKey>,
        known: Vec<PublicKey>,
        origin: Option<&str>,
        heads: Vec<StoredHead>,
        start: Start,
    ) -> Self {
        HeadChecker {
            trusted,
            known,
            first_key: start.key.as_ref().map(|k| k.key_id.clone()),
            current: start.key,
            retired: start.retired,
            pending: None,
            announced: start.announcement,
            rotations: Vec::new(),
            keyring: None,
            signers: Vec::new(),
            origin: origin.map(str::to_string),
            heads: heads.into_iter().peekable(),
            prev_hash: start.prev_hash,
            prev_size: start.frontier.size(),
            prev_time: start.prev_time_ms,
            prev_counter: start.prev_counter,
            next_height: start.next_height,
            checked: 0,
        }
    }

    /// The walk met a key rotation record at `seq` (its body checked, or why not): the next head checked must end
    /// with it, and is the old key's last.
    fn rotation_record(
        &mut self,
        seq: u64,
        record: Result<Box<RotationRecord>, String>,
    ) -> Result<(), Failure> {
        let record = record.map_err(|reason| Failure::KeyRotationInvalid { seq, reason })?;
        if let Some((earlier, _)) = &self.pending {
            // Two records under one head: the earlier is not that head's last event.
            return Err(Failure::KeyRotationNotLast { seq: *earlier, height: self.next_height });
        }
        self.pending = Some((seq, record));
        Ok(())
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
        match &self.origin {
            Some(expected) if cp.origin != *expected => {
                return Err(Failure::OriginMismatch { height, found: cp.origin, expected: expected.clone() });
            }
            Some(_) => {}
            None => self.origin = Some(cp.origin.clone()),
        }
        if cp.prev != self.prev_hash {
            return Err(Failure::ChainBroken { height });
        }
        if cp.time_ms < self.prev_time {
            return Err(Failure::TimeWentBack { height });
        }
        if self.keyring.is_some() {
            // The signer decides which counter chain the head continues, so it is found first.
            self.switch_signer(h);
        }
        let previous = self.counter_before(height, cp.counter.as_ref())?;
        check_step(height, previous.as_ref(), cp.counter.as_ref())?;
        self.check_signature(height, h)?;
        self.note_signer(height);
        if frontier.root() != cp.root {
            return Err(Failure::RootMismatch { height, from: self.prev_size, to: cp.tree_size });
        }
        if let Some((seq, record)) = self.pending.take() {
            self.rotate(seq, &record, height, cp.tree_size)?;
        }
        self.prev_hash = Checkpoint::text_hash(&h.checkpoint);
        self.prev_size = cp.tree_size;
        self.prev_time = cp.time_ms;
        self.prev_counter = cp.counter;
        self.next_height += 1;
        self.checked += 1;
        Ok(())
    }

    /// The counter head `height` must exceed: the previous head's, except for the first head under a new key,
    /// which must carry exactly the counter index its rotation record announced and restarts the chain of
    /// counters when that index is another one (a new TPM or a new counter: docs/FORMAT.md §20).
    fn counter_before(
        &mut self,
        height: u64,
        counter: Option<&HeadCounter>,
    ) -> Result<Option<HeadCounter>, Failure> {
        if let (Some(ring), Some(current)) = (&self.keyring, &self.current) {
            // Keyring: the announcement binds the first head the new key signs, whichever keys sign between.
            if ring.announced_key.as_deref() != Some(current.key_id.as_str()) {
                return Ok(self.prev_counter);
            }
        }
        let Some((seq, announced)) = self.announced.take() else { return Ok(self.prev_counter) };
        if let Some(ring) = &mut self.keyring {
            ring.announced_key = None;
        }
        let name = |i: Option<u32>| match i {
            Some(i) => format!("TPM counter index {}", keys::format_counter_index(i)),
            None => "no TPM counter".to_string(),
        };
        let found = counter.map(|c| c.index);
        if found != announced {
            return Err(Failure::RotationCounterMismatch {
                height,
                seq,
                announced: name(announced),
                found: name(found),
            });
        }
        Ok(self.prev_counter.filter(|p| Some(p.index) == announced))
    }

    /// Checks the head's signature under the chain's key (or, for the first head, under one of the trusted keys,
    /// which then starts the chain); a failure names the key that did sign it, if the evidence holds it.
    fn check_signature(&mut self, height: u64, h: &StoredHead) -> Result<(), Failure> {
        let message = h.checkpoint.as_bytes();
        if let Some(ring) = &self.keyring {
            // `switch_signer` made `current` the ring key that signed it, if one did.
            if self.current.as_ref().is_some_and(|k| k.verify(message, &h.signature)) {
                return Ok(());
            }
            let failure =
                misattributed(height, message, &h.signature, None, &self.retired, &ring.keys, &self.known);
            return Err(match failure {
                Failure::UntrustedKey { height, key_id, given } => {
                    Failure::OutsideKeyring { height, key_id, ring: given }
                }
                Failure::BadSignature { height, key_id } => Failure::NoKeyringKey { height, ring: key_id },
                Failure::RetiredKey { height, key_id, seq, retired_at, .. } => Failure::RetiredKey {
                    height,
                    key_id,
                    seq,
                    retired_at,
                    current: format!("one of the keyring's keys ({})", keys::given(&ring.keys)),
                },
                other => other,
            });
        }
        if let Some(k) = &self.current {
            if k.verify(message, &h.signature) {
                return Ok(());
            }
        } else if let Some(k) = self.trusted.iter().find(|k| k.verify(message, &h.signature)) {
            self.first_key = Some(k.key_id.clone());
            self.current = Some(k.clone());
            return Ok(());
        }
        Err(misattributed(
            height,
            message,
            &h.signature,
            self.current.as_ref(),
            &self.retired,
            &self.trusted,
            &self.known,
        ))
    }

    /// Head `height` (of `tree_size`, signature verified) is the first to cover the rotation record at `seq`: it
    /// must end with it and be signed by the key the record retires; every later head is signed by the new key.
    fn rotate(
        &mut self,
        seq: u64,
        record: &RotationRecord,
        height: u64,
        tree_size: u64,
    ) -> Result<(), Failure> {
        if tree_size != seq + 1 {
            return Err(Failure::KeyRotationNotLast { seq, height });
        }
        let invalid = |reason: String| Failure::KeyRotationInvalid { seq, reason };
        let Some(old) = self.current.take() else {
            return Err(invalid("no key signs the chain before it".into()));
        };
        if record.old_key_id != old.key_id {
            return Err(invalid(format!(
                "it names {} as the old key, but head height {height}, which ends with it, is signed by {}",
                record.old_key_id, old.key_id
            )));
        }
        if let Some(r) = self.retired.iter().find(|r| r.key.key_id == record.new_key_id) {
            return Err(invalid(format!(
                "its new key {} was retired after head height {}; a key is never used again",
                record.new_key_id, r.height
            )));
        }
        let new = record.new_key().map_err(invalid)?;
        if let Some(ring) = &mut self.keyring {
            ring.keys.retain(|k| k.key_id != old.key_id);
            ring.keys.push(new.clone());
            ring.announced_key = Some(new.key_id.clone());
        }
        self.retired.push(Retired { key: old, seq, height });
        self.current = Some(new);
        self.announced = Some((seq, record.new_counter_index));
        self.rotations.push(record.report(seq, height));
        Ok(())
    }

    /// Turns keyring mode on ([`WalkOptions::keyring`]): every trusted key not retired may sign.
    fn use_keyring(&mut self) {
        let retired = |k: &PublicKey| self.retired.iter().any(|r| r.key.key_id == k.key_id);
        let mut keys: Vec<PublicKey> = self.trusted.iter().filter(|k| !retired(k)).cloned().collect();
        if let Some(current) = &self.current {
            if !keys.iter().any(|k| k.key_id == current.key_id) {
                keys.push(current.clone());
            }
        }
        let announced_key = self.announced.is_some().then(|| self.current.as_ref().map(|k| k.key_id.clone()));
        self.keyring =
            Some(Keyring { keys, counters: BTreeMap::new(), announced_key: announced_key.flatten() });
    }

    /// Keyring mode: when another ring key than the current one signed head `h`, it becomes the current key, and
    /// the counter the head must exceed is the one that key's own last head carried (none before its first).
    /// When no ring key signed it, nothing changes and [`Self::check_signature`] names the failure.
    fn switch_signer(&mut self, h: &StoredHead) {
        let Some(ring) = &mut self.keyring else { return };
        let message = h.checkpoint.as_bytes();
        if self.current.as_ref().is_some_and(|k| k.verify(message, &h.signature)) {
            return;
        }
        let Some(signer) = ring.keys.iter().find(|k| k.verify(message, &h.signature)).cloned() else {
            return;
        };
        if let Some(old) = self.current.take() {
            ring.counters.insert(old.key_id, self.prev_counter);
        }
        self.prev_counter = ring.counters.get(&signer.key_id).copied().flatten();
        self.first_key.get_or_insert_with(|| signer.key_id.clone());
        self.current = Some(signer);
    }

    /// Head `height` verified under the current key: extends that key's run of heads, or starts one.
    fn note_signer(&mut self, height: u64) {
        let Some(key) = &self.current else { return };
        match self.signers.last_mut() {
            Some(run) if run.key_id == key.key_id && run.to_height + 1 == height => run.to_height = height,
            _ => self.signers.push(SignerRun {
                key_id: key.key_id.clone(),
                from_height: height,
                to_height: height,
            }),
        }
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
