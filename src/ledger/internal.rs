//! The appliance's own events: erasures, auditors' access to the log (PCI DSS 10.2.1.3), the appliance's own
//! starts and stops (PCI DSS 10.2.1.6) and the outages of its signer and TSAs (PCI DSS 10.7.3) are logged like any other event, under producer, source and format
//! `anchorlog` with auth `internal`, so they are covered by the same signed tree.

use crate::ledger::event::NewEvent;
use anchorlog_core::entry::{payload_digest, AuthMethod, SALT_LEN};
use anchorlog_core::record_types as types;
use rand::RngCore as _;
use serde_json::json;

/// Producer, source and format name of the appliance's own events.
pub const INTERNAL: &str = types::APPLIANCE;

/// Whether a stored entry is one of the appliance's own records (or unreadable, which counts as one): such an
/// event cannot be erased (docs/FORMAT.md §10), on either store.
pub fn is_appliance_entry(entry: &[u8]) -> bool {
    anchorlog_core::entry::Entry::parse(entry)
        .map(|e| e.auth == AuthMethod::Internal || e.producer == INTERNAL)
        .unwrap_or(true)
}

/// An event of the appliance's own source with `body` as its payload.
pub fn internal_event(body: &serde_json::Value) -> NewEvent {
    let fields = crate::formats::internal_fields(body, Some(crate::store::now_ms()));
    let body = body.to_string().into_bytes();
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    NewEvent {
        received_at_ns: crate::store::now_ns(),
        producer: INTERNAL.into(),
        source: INTERNAL.into(),
        auth: AuthMethod::Internal,
        format: INTERNAL,
        source_id: None,
        payload_sha256: payload_digest(&salt, &body),
        salt,
        body,
        fields,
    }
}

/// The body of the event that logs an erasure: who erased which seq and why (when is the entry's
/// `received_at_ns`).
pub fn erasure_body(seq: u64, erased_by: &str, reason: &str) -> serde_json::Value {
    json!({"type": types::ERASURE, "erased_seq": seq, "erased_by": erased_by, "reason": reason})
}

/// Event type of the record of an auditor's read of the log.
pub const AUDIT_ACCESS_TYPE: &str = types::AUDIT_ACCESS;

/// Most bytes of one parameter value kept in an audit-access record (longer values are cut at a character
/// boundary and end in `…`), so that one request costs one small, bounded event.
pub const MAX_LOGGED_PARAM_BYTES: usize = 256;

/// The body of the event that logs an auditor's read: who (`principal`), what (`endpoint` and its
/// `parameters`, each value cut to [`MAX_LOGGED_PARAM_BYTES`]) and how much (`result_count`, events returned;
/// `null` where not known up front). When is the event's own receive time.
pub fn audit_access_body(
    principal: &str,
    endpoint: &str,
    parameters: &[(&str, String)],
    result_count: Option<u64>,
) -> serde_json::Value {
    let parameters: serde_json::Map<String, serde_json::Value> =
        parameters.iter().map(|(k, v)| ((*k).to_string(), truncate(v).into())).collect();
    json!({"type": AUDIT_ACCESS_TYPE, "principal": principal, "endpoint": endpoint, "parameters": parameters,
           "result_count": result_count})
}

/// Event type of the record of a start of the appliance.
pub const START_TYPE: &str = types::START;
/// Event type of the record of a clean stop of the appliance.
pub const STOP_TYPE: &str = types::STOP;

/// How the run before this start ended, read from the log itself: a clean stop appends a stop record as the
/// last event of its run, so any other last event means the previous run ended without one (a crash, a
/// kill, a power loss — or a build older than these records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousRun {
    /// The log was empty: this start initializes a new log.
    NewLog,
    /// The last event is a stop record.
    StoppedCleanly,
    /// The last event is anything else.
    EndedWithoutStopRecord,
}

impl PreviousRun {
    /// Classifies the log by its last event (`producer`, `body`; `None` for an empty log).
    pub fn from_last_event(last: Option<(&str, Option<&[u8]>)>) -> PreviousRun {
        let Some((producer, body)) = last else { return PreviousRun::NewLog };
        let is_stop = producer == INTERNAL
            && body
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .is_some_and(|v| v.get("type").and_then(|t| t.as_str()) == Some(STOP_TYPE));
        if is_stop {
            PreviousRun::StoppedCleanly
        } else {
            PreviousRun::EndedWithoutStopRecord
        }
    }

    /// The value recorded in the start record.
    pub fn as_str(self) -> &'static str {
        match self {
            PreviousRun::NewLog => types::PREVIOUS_RUN_NEW_LOG,
            PreviousRun::StoppedCleanly => types::PREVIOUS_RUN_STOPPED_CLEANLY,
            PreviousRun::EndedWithoutStopRecord => types::PREVIOUS_RUN_UNCLEAN,
        }
    }
}

/// The body of the event that logs a start: this build's version, a digest of the configuration text (a
/// change between two starts is visible by comparing them), the signer and its key, and how the previous run
/// ended. When is the event's own receive time.
pub fn start_body(
    config_sha256: &str,
    signer: &str,
    key_id: &str,
    previous: PreviousRun,
) -> serde_json::Value {
    json!({"type": START_TYPE, "version": env!("CARGO_PKG_VERSION"), "config_sha256": config_sha256,
           "signer": signer, "key_id": key_id, "previous_run": previous.as_str()})
}

/// The body of the event that logs a clean stop: the seq of this run's start record and why it stopped.
/// Written after the last request was answered and before the final seal, so the final head covers it.
pub fn stop_body(start_seq: u64, reason: &str) -> serde_json::Value {
    json!({"type": STOP_TYPE, "start_seq": start_seq, "reason": reason})
}

/// Event type of the records of a critical control's outage.
pub const OUTAGE_TYPE: &str = types::OUTAGE;

/// Which edge of an outage a record marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageState<'a> {
    /// The first failed attempt after a success, and its error.
    Started {
        /// The error of that attempt (cut to [`MAX_LOGGED_PARAM_BYTES`]).
        error: &'a str,
    },
    /// The first successful attempt after failures.
    Ended {
        /// Attempts that failed during the outage.
        failed_attempts: u64,
    },
}

impl OutageState<'_> {
    /// `started` or `ended`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutageState::Started { .. } => types::OUTAGE_STARTED,
            OutageState::Ended { .. } => types::OUTAGE_ENDED,
        }
    }
}

/// The body of an outage record: which component (`signer`, `tsa`), which edge, and when the outage started
/// (`since_ms`, epoch ms; the same in both records of one outage, so its duration is the `ended` record's
/// time minus `since_ms`).
pub fn outage_body(component: &str, state: &OutageState<'_>, since_ms: i64) -> serde_json::Value {
    let mut body =
        json!({"type": OUTAGE_TYPE, "component": component, "state": state.as_str(), "since_ms": since_ms});
    match state {
        OutageState::Started { error } => body["error"] = truncate(error).into(),
        OutageState::Ended { failed_attempts } => body["failed_attempts"] = (*failed_attempts).into(),
    }
    body
}

/// Event type of the record of a witness refusing one of the appliance's heads.
pub const WITNESS_REFUSED_TYPE: &str = types::WITNESS_REFUSED;

/// What a witness's refusal of one of our heads says (docs/FORMAT.md §14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessRefusal<'a> {
    /// The witness's configured name.
    pub witness: &'a str,
    /// Its vkey (its cryptographic identity).
    pub vkey: &'a str,
    /// Its submission URL.
    pub url: &'a str,
    /// The refused head.
    pub height: u64,
    /// Its tree size.
    pub tree_size: u64,
    /// The HTTP status (409 or 422).
    pub status: u16,
    /// For a 409: the tree size the witness holds for this log.
    pub witness_size: Option<u64>,
    /// What the refusal means, cut to [`MAX_LOGGED_PARAM_BYTES`].
    pub reason: &'a str,
}

/// The body of the record of a witness refusing one of the appliance's heads after a correct consistency proof.
pub fn witness_refused_body(r: &WitnessRefusal<'_>) -> serde_json::Value {
    json!({"type": WITNESS_REFUSED_TYPE, "witness": r.witness, "vkey": r.vkey, "url": truncate(r.url),
           "height": r.height, "tree_size": r.tree_size, "status": r.status, "witness_size": r.witness_size,
           "reason": truncate(r.reason)})
}

/// Event type of the record of a wall-clock jump.
pub const CLOCK_JUMP_TYPE: &str = types::CLOCK_JUMP;

/// The body of the record of a wall-clock jump (docs/FORMAT.md §21): where the wall clock should have been had
/// it run with the monotonic clock (`old_time`), where it was (`new_time`), both RFC 3339 and epoch ms, and the
/// step (`delta_ms`: positive forward, negative backward).
pub fn clock_jump_body(old_ms: i64, new_ms: i64) -> serde_json::Value {
    let delta_ms = new_ms.saturating_sub(old_ms);
    let rfc3339 = |ms| anchorlog_core::head::format_time_ms(ms).ok();
    json!({"type": CLOCK_JUMP_TYPE, "direction": if delta_ms > 0 { "forward" } else { "backward" },
           "old_time": rfc3339(old_ms), "new_time": rfc3339(new_ms), "old_time_ms": old_ms,
           "new_time_ms": new_ms, "delta_ms": delta_ms})
}

/// Event type of the record of a key rotation.
pub const KEY_ROTATION_TYPE: &str = types::KEY_ROTATION;

/// The body of a key rotation record (docs/FORMAT.md §20): the key it retires (it signs the head that ends with
/// this record, and no later one), the key of every later head (`new_public_key`, PEM), why, and the TPM counter
/// index the new key's heads carry (`null` for none).
pub fn key_rotation_body(
    old_key_id: &str,
    new_key_id: &str,
    new_public_key_pem: &str,
    reason: &str,
    new_counter_index: Option<u32>,
) -> serde_json::Value {
    json!({"type": KEY_ROTATION_TYPE, "old_key_id": old_key_id, "new_key_id": new_key_id,
           "new_public_key": new_public_key_pem, "reason": reason,
           "new_counter_index": new_counter_index.map(anchorlog_core::verify::keys::format_counter_index)})
}

/// Event type of the record of an invalid access attempt.
pub const ACCESS_DENIED_TYPE: &str = types::ACCESS_DENIED;

/// The body of the event that logs an invalid access attempt (PCI DSS 10.2.1.4): why it was refused (the
/// answer's error `code`, or `tls_handshake_refused`), what was asked (`endpoint`: method and path, cut to
/// [`MAX_LOGGED_PARAM_BYTES`]; `null` for a refused handshake), who (`principal` if the certificate maps to
/// one, the certificate's `identities`, the `remote` address) and on which `listener` (`mtls`, `source`).
/// `suppressed` is always 0: attempts over the record budgets are counted in the summary records
/// ([`access_denied_summary_body`]); the key stays for readers of older records.
pub fn access_denied_body(
    reason: &str,
    endpoint: Option<&str>,
    principal: Option<&str>,
    identities: &[String],
    remote: Option<&str>,
    listener: &str,
) -> serde_json::Value {
    let identities: Vec<String> = identities.iter().take(8).map(|i| truncate(i)).collect();
    json!({"type": ACCESS_DENIED_TYPE, "reason": truncate(reason), "endpoint": endpoint.map(truncate),
           "principal": principal, "identities": identities, "remote": remote, "listener": listener,
           "suppressed": 0})
}

/// Event type of the summary of invalid access attempts over the record budgets.
pub const ACCESS_DENIED_SUMMARY_TYPE: &str = types::ACCESS_DENIED_SUMMARY;

/// One client address in an [`access_denied_summary_body`]: how many of its attempts on `listener` went
/// unrecorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SuppressedFrom {
    /// The listener (`mtls`, `source`).
    pub listener: &'static str,
    /// The client address (an IPv6 client as its /64).
    pub remote: String,
    /// Its attempts not recorded one by one.
    pub suppressed: u64,
}

/// The body of the record that sums up one window (`since_ms`..`until_ms`, epoch ms) of invalid access attempts
/// that were not recorded one by one because a budget was used up: how many in all (`suppressed`), per listener
/// (`by_listener`), from how many client addresses the appliance tracked (`addresses`), and the addresses with
/// the most (`top_addresses`, at most ten).
pub fn access_denied_summary_body(
    since_ms: i64,
    until_ms: i64,
    by_listener: &std::collections::BTreeMap<&str, u64>,
    addresses: usize,
    top_addresses: &[SuppressedFrom],
) -> serde_json::Value {
    let suppressed: u64 = by_listener.values().sum();
    json!({"type": ACCESS_DENIED_SUMMARY_TYPE, "since_ms": since_ms, "until_ms": until_ms,
           "suppressed": suppressed, "by_listener": by_listener, "addresses": addresses,
           "top_addresses": top_addresses})
}

fn truncate(v: &str) -> String {
    if v.len() <= MAX_LOGGED_PARAM_BYTES {
        return v.to_string();
    }
    let mut end = MAX_LOGGED_PARAM_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &v[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::NormalizedFields;

    #[test]
    fn audit_access_body_names_who_what_and_how_much_and_is_bounded() {
        let long = "é".repeat(300);
        let body = audit_access_body(
            "auditor-1",
            "GET /v1/events",
            &[("actor", "alice".into()), ("type", long)],
            Some(3),
        );
        let cut = body["parameters"]["type"].as_str().unwrap();
        assert_eq!(cut, format!("{}…", "é".repeat(128)));
        assert_eq!(
            body,
            json!({"type": "anchorlog.audit_access", "principal": "auditor-1", "endpoint": "GET /v1/events",
                   "parameters": {"actor": "alice", "type": cut}, "result_count": 3})
        );
        let ev = internal_event(&body);
        assert_eq!((&*ev.producer, &*ev.source, ev.format), (INTERNAL, INTERNAL, INTERNAL));
        assert_eq!(ev.fields.event_type.as_deref(), Some(AUDIT_ACCESS_TYPE));
        assert_eq!(ev.fields.actor_id.as_deref(), Some("auditor-1"));
        // Re-derived from the stored body after a crash: the same type and actor, no time.
        let again = crate::formats::normalize_stored(INTERNAL, &ev.body).unwrap();
        assert_eq!(again, NormalizedFields { event_time_ms: None, ..ev.fields.clone() });
    }

    #[test]
    fn the_previous_run_is_read_from_the_last_event() {
        let stop = stop_body(4, "shutdown signal").to_string();
        let start = start_body("ab", "signer", "cd", PreviousRun::NewLog).to_string();
        let previous =
            |p: &str, b: Option<&str>| PreviousRun::from_last_event(Some((p, b.map(str::as_bytes))));
        assert_eq!(PreviousRun::from_last_event(None), PreviousRun::NewLog);
        assert_eq!(previous(INTERNAL, Some(&stop)), PreviousRun::StoppedCleanly);
        // A producer's event that looks like a stop record is not one; nor is a start, an erased body or a
        // body that is not JSON.
        for (p, b) in [
            ("producer-1", Some(stop.as_str())),
            (INTERNAL, Some(&start)),
            (INTERNAL, None),
            (INTERNAL, Some("{")),
        ] {
            assert_eq!(previous(p, b), PreviousRun::EndedWithoutStopRecord, "{p} {b:?}");
        }
    }
}
