//! Admin actions: GDPR erasure of one event's payload, itself logged as an event of the appliance's source.

use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::ledger::appender::EraseError;
use crate::tls::Peer;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;

/// Longest accepted erasure reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    seq: u64,
    reason: String,
}

pub(super) async fn erase(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let principal = authorize(peer.as_ref().map(|p| &p.0), Role::Admin)?;
    let req: EraseRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("expected {{\"seq\": <integer>, \"reason\": <string>}}: {e}"),
        )
    })?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_field",
            format!("reason is required and at most {MAX_REASON_BYTES} bytes"),
        )
        .with_detail(json!({"field": "reason"})));
    }
    let done = state.appender.erase(req.seq, principal.name.to_string(), reason.to_string()).await;
    match done {
        Ok(e) => {
            tracing::info!(seq = e.record.seq, erasure_seq = e.record.erasure_seq, by = %e.record.erased_by, "payload erased");
            Ok(Json(json!({
                "seq": e.record.seq,
                "erasure_seq": e.record.erasure_seq,
                "erasure_leaf_hash": B64.encode(e.erasure_leaf_hash),
                "erased_by": e.record.erased_by,
                "reason": e.record.reason,
                "erased_at_ms": e.record.erased_at_ms,
            })))
        }
        Err(EraseError::NoSuchEvent(seq)) => Err(ApiError::not_found(format!("no event with seq {seq}"))),
        Err(EraseError::AlreadyErased(seq)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_erased",
            format!("the payload of event seq {seq} is already erased"),
        )),
        Err(EraseError::ApplianceRecord(seq)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "appliance_record",
            format!(
                "event seq {seq} is a record of the appliance itself (start, stop, outage, refused access, audit \
                 access or erasure); it holds no data subject's payload and cannot be erased"
            ),
        )),
        Err(EraseError::Append(e)) => Err(ApiError::append("erasure failed", &e)),
    }
}
