//! The appliance's own events: erasures (and, later, audit access) are logged like any other event, under
//! producer, source and format `anchorlog` with auth `internal`, so they are covered by the same signed tree.

use crate::formats::{NormalizedFields, Outcome};
use crate::ledger::appender::NewEvent;
use crate::ledger::entry::{payload_digest, AuthMethod, SALT_LEN};
use rand::RngCore as _;
use serde_json::json;

/// Producer, source and format name of the appliance's own events.
pub const INTERNAL: &str = "anchorlog";

/// An event of the appliance's own source with `body` as its payload.
pub fn internal_event(body: &serde_json::Value) -> NewEvent {
    let fields = fields_of(body);
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

/// The search fields of an internal event, from its body alone: the same whether taken when the event is
/// appended or re-derived later from the stored body by the indexer.
pub fn fields_of(body: &serde_json::Value) -> NormalizedFields {
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
    NormalizedFields {
        event_time_ms: body.get("time_ms").and_then(|v| v.as_i64()),
        event_type: text("type"),
        outcome: Outcome::Success,
        actor_id: text("erased_by").or_else(|| text("principal")),
        ..NormalizedFields::default()
    }
}

/// The body of the event that logs an erasure: who erased which seq and why (when is the entry's
/// `received_at_ns`).
pub fn erasure_body(seq: u64, erased_by: &str, reason: &str) -> serde_json::Value {
    json!({"type": "anchorlog.erasure", "erased_seq": seq, "erased_by": erased_by, "reason": reason})
}
