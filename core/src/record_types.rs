//! The names the appliance's own records use on the wire (docs/FORMAT.md §10, §12–15): written by the
//! appliance (its `ledger::internal`) and read back by every verifier (`verify::OwnRecord`, which the appliance's
//! verifier and the browser share), so they live in the core.

/// Producer, source and format name of the appliance's own records (auth `internal`). No principal or source
/// may carry it (config validation), and a record counts as the appliance's only when all four say so.
pub const APPLIANCE: &str = "anchorlog";
/// Prefix of every appliance record `type`. Producers' events whose type begins with it are refused at
/// ingest, so a search or a reader can never mistake a producer's event for the appliance's.
pub const RESERVED_TYPE_PREFIX: &str = "anchorlog.";

/// Whether an event type lies in the appliance's reserved namespace (ASCII case-insensitive, so
/// `Anchorlog.Start` cannot pass for a harmless look-alike either).
pub fn is_reserved_type(event_type: &str) -> bool {
    event_type.len() >= RESERVED_TYPE_PREFIX.len()
        && event_type.as_bytes()[..RESERVED_TYPE_PREFIX.len()]
            .eq_ignore_ascii_case(RESERVED_TYPE_PREFIX.as_bytes())
}

/// `type` of an erasure record.
pub const ERASURE: &str = "anchorlog.erasure";
/// `type` of an auditor's read of log content.
pub const AUDIT_ACCESS: &str = "anchorlog.audit_access";
/// `type` of a start of the appliance.
pub const START: &str = "anchorlog.start";
/// `type` of a clean stop of the appliance.
pub const STOP: &str = "anchorlog.stop";
/// `type` of an outage edge of a critical control.
pub const OUTAGE: &str = "anchorlog.outage";
/// `type` of an invalid access attempt.
pub const ACCESS_DENIED: &str = "anchorlog.access_denied";
/// `type` of the once-a-minute count of invalid access attempts over the record budgets (docs/FORMAT.md §15).
pub const ACCESS_DENIED_SUMMARY: &str = "anchorlog.access_denied_summary";
/// `type` of a witness's refusal of one of the appliance's own heads after a correct consistency proof: evidence
/// that this log was rolled back or forked.
pub const WITNESS_REFUSED: &str = "anchorlog.witness_refused";
/// `component` of the outage records of one witness not answering (sealing and timestamping have their own).
pub const COMPONENT_WITNESSING: &str = "witnessing";

/// `previous_run` of a start record: the log was empty.
pub const PREVIOUS_RUN_NEW_LOG: &str = "new_log";
/// `previous_run` of a start record: the last event was a stop record.
pub const PREVIOUS_RUN_STOPPED_CLEANLY: &str = "stopped_cleanly";
/// `previous_run` of a start record: the last event was anything else (a crash, a kill, a power loss).
pub const PREVIOUS_RUN_UNCLEAN: &str = "ended_without_stop_record";

/// `state` of the outage record written at the first failure.
pub const OUTAGE_STARTED: &str = "started";
/// `state` of the outage record written at the first success after failures.
pub const OUTAGE_ENDED: &str = "ended";

/// `type` of the record of a successful self-verification pass (docs/FORMAT.md §18).
pub const SELF_VERIFY: &str = "anchorlog.self_verify";
/// `scope` of a self-verification pass that walked the whole log from genesis.
pub const SELF_VERIFY_FULL: &str = "full";
/// `scope` of a self-verification pass that continued from the previous verified head.
pub const SELF_VERIFY_INCREMENTAL: &str = "incremental";
/// Prefix of a self-verification record's `source_id`: `self_verify:<height, 20 digits>:<scope>`. Zero-padded,
/// so that the unique index on `(producer, source, source_id)` orders the records by the height they name and
/// the newest one is found in `O(log n)` (a hint only: the record itself is checked before it is trusted).
pub const SELF_VERIFY_SOURCE_ID_PREFIX: &str = "self_verify:";

/// The `source_id` of the self-verification record naming head `height` verified by a pass of `scope`.
pub fn self_verify_source_id(height: u64, scope: &str) -> String {
    format!("{SELF_VERIFY_SOURCE_ID_PREFIX}{height:020}:{scope}")
}
/// `type` of the record of a wall-clock jump (docs/FORMAT.md §21).
pub const CLOCK_JUMP: &str = "anchorlog.clock_jump";
/// `type` of a key rotation record: the last event of the last head signed by the old key, naming the key that
/// signs every later head (docs/FORMAT.md §20).
pub const KEY_ROTATION: &str = "anchorlog.key_rotation";
/// `type` of the record a node appends as its first write after it took the writer lease of a PostgreSQL log
/// (docs/HA.md, docs/FORMAT.md §13): which node, under which lease epoch and key, and the end of the log it
/// inherited and verified.
pub const TAKEOVER: &str = "anchorlog.takeover";
