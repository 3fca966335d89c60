//! `POST /v1/events`: generic JSON ingest (an object, an array of objects, or NDJSON).
//!
//! The request is atomic: the body is parsed and validated completely before anything is queued, and the
//! writer applies all of its events in one savepoint. The 200 is sent only after the group commit (fsync).

use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::formats::{self, Format, Limits};
use crate::ledger::appender::{AppendError, NewEvent};
use crate::ledger::entry::{payload_digest, AuthMethod, SALT_LEN};
use crate::listen::ListenerKind;
use crate::tls::Peer;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore as _;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The source name recorded for events posted to the generic endpoint.
pub const GENERIC_SOURCE: &str = "events";

pub(super) async fn post_events(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = ingest(&state, peer.as_ref().map(|p| &p.0), &headers, body).await;
    if let Err(e) = &result {
        if e.status.is_client_error() {
            state.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
            state.metrics.instruments.failed("ingest_rejected");
        }
    }
    result
}

async fn ingest(
    state: &AppState,
    peer: Option<&Peer>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let principal = authorize(peer, Role::Producer)?;
    let ndjson = content_kind(headers)?;
    let bytes = read_limited(state, body, headers, ListenerKind::Mtls).await?;
    let parsed = parse(state, Format::Json, &bytes, ndjson)?;
    let idempotency_key = idempotency_key(headers, parsed.len())?;
    let origin = Origin {
        producer: principal.name.clone(),
        source: Arc::from(GENERIC_SOURCE),
        auth: AuthMethod::Mtls,
        format: Format::Json,
    };
    append(state, parsed, &origin, idempotency_key).await
}

/// Who sent a request and through which source: recorded in every entry of the request.
pub(super) struct Origin {
    /// The authenticated producer (principal name, or the source name for secret-authenticated sources).
    pub producer: Arc<str>,
    /// The source name.
    pub source: Arc<str>,
    /// How the producer authenticated.
    pub auth: AuthMethod,
    /// The payload format.
    pub format: Format,
}

/// Parses a body of `format` with the configured limits.
pub(super) fn parse(
    state: &AppState,
    format: Format,
    bytes: &[u8],
    ndjson: bool,
) -> Result<Vec<formats::ParsedEvent>, ApiError> {
    let limits =
        Limits { max_events: state.limits.max_events_per_request, max_depth: state.limits.max_json_depth };
    formats::parse_with(format, bytes, ndjson, &limits, state.search_enabled).map_err(format_error)
}

/// Salts, hashes and appends parsed events; answers after the group commit (fsync).
pub(super) async fn append(
    state: &AppState,
    parsed: Vec<formats::ParsedEvent>,
    origin: &Origin,
    idempotency_key: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let received_at_ns = crate::store::now_ns();
    // ThreadRng is not Send: keep it out of the future's state across the await below.
    let events: Vec<NewEvent> = {
        let mut rng = rand::thread_rng();
        parsed
            .into_iter()
            .map(|p| {
                let mut salt = [0u8; SALT_LEN];
                rng.fill_bytes(&mut salt);
                NewEvent {
                    received_at_ns,
                    producer: origin.producer.clone(),
                    source: origin.source.clone(),
                    auth: origin.auth,
                    format: origin.format.as_str(),
                    source_id: idempotency_key.clone().or(p.source_id),
                    payload_sha256: payload_digest(&salt, &p.raw),
                    salt,
                    body: p.raw,
                    fields: p.fields,
                }
            })
            .collect()
    };
    let appended = state.appender.append(events).await;
    if let Err(AppendError::Store(e)) = &appended {
        state.metrics.storage.observe::<()>(Err(e));
    }
    let appended = appended.map_err(|e| match e {
        AppendError::Stopped => {
            ApiError::unavailable("the appliance is shutting down; retry on another instance or later")
        }
        AppendError::Store(e) => ApiError::storage("append failed", &e),
    })?;
    state.metrics.storage.succeeded();
    let duplicates = appended.iter().filter(|a| a.duplicate).count();
    state.metrics.events_appended.fetch_add((appended.len() - duplicates) as u64, Ordering::Relaxed);
    let m = &state.metrics.instruments;
    m.ingested(&origin.source, origin.format.as_str(), (appended.len() - duplicates) as u64);
    m.ack_seconds.observe(crate::store::now_ns().saturating_sub(received_at_ns) as f64 / 1e9);
    state.metrics.events_duplicate.fetch_add(duplicates as u64, Ordering::Relaxed);
    let events: Vec<Value> = appended
        .iter()
        .map(|a| json!({"seq": a.seq, "leaf_hash": B64.encode(a.leaf_hash), "duplicate": a.duplicate}))
        .collect();
    Ok(Json(json!({"stored": appended.len() - duplicates, "duplicates": duplicates, "events": events})))
}

/// `application/json` → false, `application/x-ndjson` → true, anything else → 415.
pub(super) fn content_kind(headers: &HeaderMap) -> Result<bool, ApiError> {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(false),
        "application/x-ndjson" | "application/jsonl" => Ok(true),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type {value:?} is not accepted; use application/json or application/x-ndjson"),
        )),
    }
}

/// What a producer should do about a body above the limit.
pub(super) const SMALLER_BATCHES: &str = "send smaller batches";

/// Reads an ingest body within `limits.max_body_bytes` and `limits.body_read_timeout_ms`, counting a body refused
/// by either limit on `listener` (`anchorlog_limit_hits_total`).
pub(super) async fn read_limited(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
    listener: ListenerKind,
) -> Result<Bytes, ApiError> {
    let l = &state.limits;
    let read = read_body(body, headers, l.max_body_bytes, l.body_read_timeout(), SMALLER_BATCHES).await;
    if let Err(e) = &read {
        if matches!(e.code, BODY_TIMEOUT | "body_too_large") {
            state.metrics.instruments.limit_hit(listener.as_str(), e.code);
        }
    }
    read
}

/// The `code` of a body that did not arrive in time (408).
pub const BODY_TIMEOUT: &str = "body_timeout";

/// Reads the body, refusing more than `limit` bytes without buffering them, and a body that has not fully
/// arrived within `timeout` (408 `body_timeout`: a client trickling a body would otherwise hold its connection
/// and the buffer for as long as it likes); `hint` says what to do about a body over the limit.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
    hint: &str,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds the limit of {limit} bytes; {hint}"),
        )
        .with_detail(json!({"limit_bytes": limit}))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let Ok(read) = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            BODY_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (limits.body_read_timeout_ms); nothing was stored. \
                 Send the body at once, or in smaller batches",
                timeout.as_millis()
            ),
        )
        .with_detail(json!({"timeout_ms": timeout.as_millis() as u64})));
    };
    read.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = s.source();
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_read_failed",
            format!("could not read the request body: {e}"),
        )
    })
}

/// An `Idempotency-Key` header names the source id of a single-event request.
pub(super) fn idempotency_key(headers: &HeaderMap, events: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = |msg: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_idempotency_key", msg.to_string());
    let key = value.to_str().map_err(|_| bad("Idempotency-Key must be visible ASCII"))?;
    if key.is_empty() || key.len() > formats::MAX_SOURCE_ID_LEN {
        return Err(bad("Idempotency-Key must be 1 to 256 characters"));
    }
    if events != 1 {
        return Err(bad(
            "Idempotency-Key applies to a single event; for batches give each event an \"id\" field",
        ));
    }
    Ok(Some(key.to_string()))
}

fn format_error(e: formats::FormatError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let detail = match &e {
        formats::FormatError::InvalidJson { line, column, .. } => json!({"line": line, "column": column}),
        formats::FormatError::TooDeep { max, offset } => json!({"max_depth": max, "offset": offset}),
        formats::FormatError::TooManyEvents { max, found } => json!({"max_events": max, "found": found}),
        formats::FormatError::NotAnObject { index, line } => json!({"index": index, "line": line}),
        formats::FormatError::MissingField { index, line, field } => {
            json!({"index": index, "line": line, "field": field})
        }
        formats::FormatError::BadField { index, line, field, .. }
        | formats::FormatError::ReservedType { index, line, field } => {
            json!({"index": index, "line": line, "field": field})
        }
        _ => json!({}),
    };
    ApiError::new(status, e.code(), e.to_string()).with_detail(detail)
}
