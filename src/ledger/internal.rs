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
    // Searchable like any other event: its type, its time, and who acted (when the body names them).
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let fields = NormalizedFields {
        event_time_ms: Some(crate::store::now_ms()),
        event_type: text("type"),
        outcome: Outcome::Success,
        actor_id: text("erased_by").or_else(|| text("principal")),
        ..NormalizedFields::default()
    };
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

/// The body of the event that logs an erasure: who erased which seq and why.
pub fn erasure_body(seq: u64, erased_by: &str, reason: &str) -> serde_json::Value {
    json!({"type": "anchorlog.erasure", "erased_seq": seq, "erased_by": erased_by, "reason": reason})
}
