//! Auditor reads: heads, events, readiness and metrics.

use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::store::cosignatures::StoredCosignature;
use crate::store::reads::{HeadRecord, WhichHead};
use crate::store::{self, StoreError, StoredTimestamp};
use crate::tls::Peer;
use anchorlog_core::head::{format_time_ms, signed_note};
use anchorlog_core::stored::StoredHead;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The SQLite pool for a route that reads only SQLite still (bundle export, search); on a PostgreSQL store the
/// route's 501 `not_available_on_postgres`.
pub(super) fn sqlite_only(state: &AppState, route: &str) -> Result<Arc<crate::store::ReadPool>, ApiError> {
    state.reads.sqlite().cloned().ok_or_else(|| ApiError::not_available_on_postgres(route))
}

/// Runs `f` on a connection of the SQLite pool, on a blocking thread.
pub(super) async fn sqlite_blocking<T: Send + 'static>(
    pool: &Arc<crate::store::ReadPool>,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || pool.with(f))
        .await
        .map_err(|e| ApiError::internal("read task failed", &e))?
        .map_err(|e| ApiError::internal("read failed", &e))
}

/// A read's failure as the client sees it: 500 `internal`, the cause in the appliance's log.
pub(super) fn read_failed(e: StoreError) -> ApiError {
    ApiError::internal("read failed", &e)
}

/// A head with what was added after it was signed: its RFC 3161 token and its witnesses' cosignatures.
struct ServedHead {
    head: StoredHead,
    timestamp: Option<StoredTimestamp>,
    cosignatures: Vec<StoredCosignature>,
    /// The public key (SPKI DER) of the key that signed it, as the database recorded it (heads before a key
    /// rotation are the old key's); `None` if it holds none.
    spki: Option<Vec<u8>>,
}

/// A head and its RFC 3161 token and cosignatures, as far as they are stored yet (one snapshot).
async fn head_with_extras(state: &AppState, which: WhichHead) -> Result<Option<ServedHead>, ApiError> {
    let record = state.reads.head_record(which).await.map_err(read_failed)?;
    Ok(record.map(|HeadRecord { head, timestamp, cosignatures, key_pem }| {
        let spki =
            key_pem.and_then(|pem| anchorlog_core::key::PublicKey::from_pem(&pem).ok()).map(|k| k.spki_der);
        ServedHead { head, timestamp, cosignatures, spki }
    }))
}

/// The head's signed note (docs/FORMAT.md §4) with its stored cosignature lines appended (§16.6), under the key that
/// signed it (`spki`; the current key's when the database holds none). `None` when that key is unknown.
fn cosigned_note(
    state: &AppState,
    h: &StoredHead,
    spki: Option<&[u8]>,
    cosignatures: &[StoredCosignature],
) -> Option<String> {
    let spki = match spki {
        Some(spki) => spki,
        None if h.key_id == state.public_key.key_id => &state.public_key.spki_der,
        None => return None,
    };
    let mut note = signed_note(&h.checkpoint, &state.origin, spki, &h.signature);
    for c in cosignatures {
        note.push_str(&c.line);
        note.push('\n');
    }
    Some(note)
}

fn head_json(state: &AppState, served: &ServedHead) -> Value {
    let ServedHead { head: h, timestamp: ts, cosignatures, spki } = served;
    json!({
        "height": h.height,
        "tree_size": h.tree_size,
        "root": B64.encode(h.root),
        "checkpoint": h.checkpoint,
        "signature": B64.encode(&h.signature),
        "key_id": h.key_id,
        "sealed_at": format_time_ms(h.sealed_at_ms).unwrap_or_default(),
        // The note's key ID derives from the public key of the key that signed the head (the database records
        // every key). Cosignature lines follow the appliance's own signature line, as c2sp.org/tlog-witness
        // clients expect.
        "note": cosigned_note(state, h, spki.as_deref(), cosignatures),
        // Each witness cosignature (verified before it was stored): who, when (seconds since the epoch), and
        // the exact line, as in `note`. Empty until the witnesses answered.
        "cosignatures": cosignatures.iter().map(|c| json!({
            "witness": c.witness,
            "key_id": format!("{:08x}", c.key_id),
            "timestamp": c.timestamp,
            "line": c.line,
        })).collect::<Vec<_>>(),
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
    let head = head_with_extras(&state, WhichHead::Latest).await?;
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
    let head = head_with_extras(&state, WhichHead::At(height)).await?;
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
    let (ev, erasure) = state.reads.event_with_erasure(seq).await.map_err(read_failed)?;
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
        super::audit_access::log_access(&state, &principal, "GET /v1/events/{seq}", &params, Some(1)).await?;
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

/// Roles that may read `/readyz` and `/metrics` on the mTLS listener: the monitor role (a scraper that may read
/// nothing else), auditors and admins.
const HEALTH_READERS: [Role; 3] = [Role::Monitor, Role::Auditor, Role::Admin];

pub(super) async fn ready(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> Result<Response, ApiError> {
    super::authorize_any(peer.as_ref().map(|p| &p.0), &HEALTH_READERS)?;
    Ok(ready_answer(&state))
}

pub(super) async fn ready_unauthenticated(State(state): State<Arc<AppState>>) -> Response {
    ready_answer(&state)
}

/// 200 `{"status":"ready",…}` or 503 `{"status":"not_ready","reasons":[{"code","message"}],…}` with the same
/// figures (crate::readiness).
fn ready_answer(state: &AppState) -> Response {
    let m = &state.metrics;
    let committed = *state.appender.committed().borrow();
    let sealed = m.sealed_tree_size.load(Ordering::Relaxed);
    let mut reasons = state.readiness.reasons(m);
    // The appliance's own verification of its log failed (the log does not verify): a human must look.
    // Ingest goes on; ready again after a pass succeeds. The failure (seq or height) is in `self_verify`.
    if let Some(f) = state.self_verify.failure() {
        reasons.push(crate::readiness::Reason {
            code: "self_verification_failed",
            message: format!(
                "the appliance's own verification of its log failed: {}; run `anchorlog verify --db` and \
                 investigate (ingest continues; ready again after a pass succeeds)",
                f.message
            ),
        });
    }
    // A standby serves reads but stores nothing: a load balancer's ingest pool checks /readyz and sends producers
    // to the writer (docs/HA.md).
    let standby = state.standby.borrow().clone();
    if let Some(why) = &standby {
        reasons.push(crate::readiness::Reason {
            code: "standby",
            message: format!(
                "this node is a standby, not the log's writer ({why}): it serves reads and answers ingest with 503 \
                 not_writer; it takes over when the writer's lease ends"
            ),
        });
    }
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if reasons.is_empty() { "ready" } else { "not_ready" },
        "role": if standby.is_some() { "standby" } else { "writer" },
        "reasons": reasons,
        "events": committed,
        "unsealed_events": committed.saturating_sub(sealed),
        "last_head_height": m.last_height.load(Ordering::Relaxed),
        "seal_failures": m.seal_failures.load(Ordering::Relaxed),
        "key_id": state.public_key.key_id,
        "timestamping": if m.untimestamped().is_some() { "on" } else { "off" },
        "untimestamped_heads": m.untimestamped().map(|(n, _)| n),
        "oldest_untimestamped_age_s": m.untimestamped().and_then(|(_, age)| age),
        "timestamp_failures": m.timestamp_failures.load(Ordering::Relaxed),
        "witnessing": if m.below_quorum().is_some() { "on" } else { "off" },
        "witness_quorum": m.below_quorum().map(|_| m.witness_quorum.load(Ordering::Relaxed)),
        "heads_below_quorum": m.below_quorum().map(|(n, _)| n),
        "oldest_below_quorum_age_s": m.below_quorum().and_then(|(_, age)| age),
        "witness_refusals": m.witness_refusals.load(Ordering::Relaxed),
        "witnesses": m.witness_statuses(),
        "free_disk_percent": state.readiness.free_disk_percent(),
        "self_verify": state.self_verify.readiness(),
    });
    (status, Json(body)).into_response()
}

pub(super) async fn metrics(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> Result<Response, ApiError> {
    super::authorize_any(peer.as_ref().map(|p| &p.0), &HEALTH_READERS)?;
    Ok(metrics_answer(&state))
}

pub(super) async fn metrics_unauthenticated(State(state): State<Arc<AppState>>) -> Response {
    metrics_answer(&state)
}

fn metrics_answer(state: &AppState) -> Response {
    let committed = *state.appender.committed().borrow();
    let mut text = state.metrics.render(committed);
    state.self_verify.render_metrics(&mut text);
    state.alerts.render_metrics(&mut text);
    render_storage_metrics(state, &mut text);
    state.queue.render_metrics(&mut text);
    state.streams.render_metrics(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The WAL's size (a long read transaction — an export to a slow client — holds back checkpoints and lets it
/// grow; docs/RELIABILITY.md) and whether writes fail for a storage fault.
fn render_storage_metrics(state: &AppState, out: &mut String) {
    use std::fmt::Write as _;
    // A PostgreSQL store has no WAL file here (the server's WAL is PostgreSQL's to watch): 0.
    let bytes = state.reads.sqlite().map_or(0, |pool| {
        let mut wal = pool.path().as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(&wal).map_or(0, |m| m.len())
    });
    let _ = writeln!(
        out,
        "# HELP anchorlog_database_wal_bytes Size of the database's write-ahead log file.\n\
         # TYPE anchorlog_database_wal_bytes gauge\nanchorlog_database_wal_bytes {bytes}"
    );
    let failing = state.metrics.storage.failing();
    let _ = writeln!(
        out,
        "# HELP anchorlog_storage_failing Whether database writes fail for a storage fault (full disk, lock held \
         elsewhere); the fault is named by /readyz.\n# TYPE anchorlog_storage_failing gauge\n\
         anchorlog_storage_failing {}",
        u8::from(failing.is_some())
    );
}

pub(super) async fn receipt(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Path(seq): Path<String>,
) -> Result<Json<anchorlog_core::receipt::Receipt>, ApiError> {
    use crate::receipt::ReceiptError;
    let principal = authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let seq = parse_number(&seq, "seq")?;
    match state.reads.receipt(seq).await {
        Ok(r) => {
            // A receipt carries the event's body: access to log content, recorded before it is answered.
            let params = [("seq", seq.to_string())];
            super::audit_access::log_access(
                &state,
                &principal,
                "GET /v1/events/{seq}/receipt",
                &params,
                Some(1),
            )
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
