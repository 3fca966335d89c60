//! Auditor reads: heads, events, readiness and metrics.

use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::ledger::head::{format_time_ms, signed_note};
use crate::store::{self, StoreError, StoredHead, StoredTimestamp};
use crate::tls::Peer;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let reads = state.reads.clone();
    tokio::task::spawn_blocking(move || reads.with(f))
        .await
        .map_err(|e| ApiError::internal("read task failed", &e))?
        .map_err(|e| ApiError::internal("read failed", &e))
}

/// A head and its RFC 3161 token, if it has one yet.
fn head_with_timestamp(
    c: &rusqlite::Connection,
    h: Option<StoredHead>,
) -> Result<Option<(StoredHead, Option<StoredTimestamp>)>, StoreError> {
    match h {
        None => Ok(None),
        Some(h) => {
            let t = store::timestamp(c, h.height)?;
            Ok(Some((h, t)))
        }
    }
}

fn head_json(state: &AppState, (h, ts): &(StoredHead, Option<StoredTimestamp>)) -> Value {
    json!({
        "height": h.height,
        "tree_size": h.tree_size,
        "root": B64.encode(h.root),
        "checkpoint": h.checkpoint,
        "signature": B64.encode(&h.signature),
        "key_id": h.key_id,
        "sealed_at": format_time_ms(h.sealed_at_ms).unwrap_or_default(),
        // The note's key ID derives from the public key, which we hold only for the current key.
        "note": (h.key_id == state.public_key.key_id)
            .then(|| signed_note(&h.checkpoint, &state.origin, &state.public_key.spki_der, &h.signature)),
        // The whole DER TimeStampResp (RFC 3161), `openssl ts -verify -in` reads it as is; null until the
        // token is stored (it follows the seal, and is back-filled if the TSA was down).
        "timestamp": ts.as_ref().map(|t| B64.encode(&t.response)),
        "timestamp_gen_time": ts.as_ref().map(|t| t.gen_time.clone()),
    })
}

pub(super) fn parse_number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("{what} must be a non-negative integer, got {text:?}"),
        )
    })
}

pub(super) async fn latest_head(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> Result<Json<Value>, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let head = blocking(&state, |c| head_with_timestamp(c, store::last_head(c)?)).await?;
    head.map(|h| Json(head_json(&state, &h)))
        .ok_or_else(|| ApiError::not_found("no head has been sealed yet"))
}

pub(super) async fn head(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Path(height): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let height = parse_number(&height, "height")?;
    let head = blocking(&state, move |c| head_with_timestamp(c, store::head(c, height)?)).await?;
    head.map(|h| Json(head_json(&state, &h)))
        .ok_or_else(|| ApiError::not_found(format!("no head at height {height}")))
}

pub(super) async fn event(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Path(seq): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let principal = authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let seq = parse_number(&seq, "seq")?;
    let (ev, erasure) =
        blocking(&state, move |c| Ok((store::event(c, seq)?, store::erasure::erasure(c, seq)?))).await?;
    let ev = ev.ok_or_else(|| ApiError::not_found(format!("no event with seq {seq}")))?;
    // The normalized search fields: not part of the evidence, kept by the indexer ~1 s behind the writer (more
    // under load), so `null` until it has caught up (or if search is off or its database cannot be read).
    let search = state.search.clone();
    let fields = tokio::task::spawn_blocking(move || search.with(|c| store::event_fields(c, seq)))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let fields = fields.map(|(source, f)| {
        let mut v = serde_json::to_value(&f).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("source".into(), Value::String(source));
        }
        v
    });
    let entry_text = String::from_utf8_lossy(&ev.entry).into_owned();
    let entry_json: Value = serde_json::from_slice(&ev.entry).unwrap_or(Value::Null);
    // A view of log content (PCI DSS 10.2.1.3): on record before it is answered; the answer names the record.
    let params = [("seq", seq.to_string())];
    let audit_seq =
        super::search::log_access(&state, &principal, "GET /v1/events/{seq}", &params, Some(1)).await?;
    Ok(Json(json!({
        "seq": ev.seq,
        "audit_seq": audit_seq,
        "entry": entry_text,
        "entry_fields": entry_json,
        "leaf_hash": B64.encode(ev.leaf_hash),
        "salt": ev.salt.as_ref().map(|s| B64.encode(s)),
        "body": ev.body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
        "erased": ev.body.is_none(),
        "erasure": erasure,
        "fields": fields,
    })))
}

pub(super) async fn ready(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> Result<Json<Value>, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    // Self-verification (issue 12): the last pass failed — the log does not verify. Ingest goes on.
    if let Some(f) = state.self_verify.failure() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "self_verification_failed",
            format!(
                "the appliance's own verification of its log failed: {}; run `anchorlog verify --db` and \
                 investigate (ingest continues; ready again after a pass succeeds)",
                f.message
            ),
        )
        .with_detail(crate::selfverify::not_ready_detail(&f)));
    }
    let m = &state.metrics;
    let committed = *state.appender.committed().borrow();
    let sealed = m.sealed_tree_size.load(Ordering::Relaxed);
    Ok(Json(json!({
        "status": "ready",
        "events": committed,
        "unsealed_events": committed.saturating_sub(sealed),
        "last_head_height": m.last_height.load(Ordering::Relaxed),
        "seal_failures": m.seal_failures.load(Ordering::Relaxed),
        "key_id": state.public_key.key_id,
        "timestamping": if m.untimestamped().is_some() { "on" } else { "off" },
        "untimestamped_heads": m.untimestamped().map(|(n, _)| n),
        "oldest_untimestamped_age_s": m.untimestamped().and_then(|(_, age)| age),
        "timestamp_failures": m.timestamp_failures.load(Ordering::Relaxed),
        "self_verify": state.self_verify.readiness(),
    })))
}

pub(super) async fn metrics(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> Result<Response, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let committed = *state.appender.committed().borrow();
    let mut text = state.metrics.render(committed);
    state.self_verify.render_metrics(&mut text);
    state.alerts.render_metrics(&mut text);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

pub(super) async fn receipt(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Path(seq): Path<String>,
) -> Result<Json<crate::receipt::Receipt>, ApiError> {
    use crate::receipt::{self, ReceiptError};
    let principal = authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let seq = parse_number(&seq, "seq")?;
    let reads = state.reads.clone();
    let built = tokio::task::spawn_blocking(move || reads.with(|c| Ok(receipt::build(c, seq))))
        .await
        .map_err(|e| ApiError::internal("read task failed", &e))?
        .map_err(|e| ApiError::internal("read failed", &e))?;
    match built {
        Ok(r) => {
            // A receipt carries the event's body: access to log content, recorded before it is answered.
            let params = [("seq", seq.to_string())];
            super::search::log_access(&state, &principal, "GET /v1/events/{seq}/receipt", &params, Some(1))
                .await?;
            Ok(Json(r))
        }
        Err(ReceiptError::NoSuchEvent(_)) => Err(ApiError::not_found(format!("no event with seq {seq}"))),
        Err(e @ ReceiptError::NotSealed(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_sealed", e.to_string()))
        }
        Err(ReceiptError::Store(e)) => Err(ApiError::internal("receipt failed", &e)),
    }
}
