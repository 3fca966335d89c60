//! `POST /v1/events`: generic JSON ingest (an object, an array of objects, or NDJSON).
//!
//! The request is atomic: the body is parsed and validated completely before anything is queued, and the
//! writer applies all of its events in one savepoint. The 200 is sent only after the group commit (fsync).
//!
//! For shippers (Vector, Fluent Bit, Logstash):
//! - `Content-Encoding: gzip` or `zstd` bodies are decoded with the body limit applied to the decoded size
//!   while decoding ([`super::encoding`]);
//! - when [`super::queue::WriterQueue`] is full the request is answered `429` with `Retry-After` before
//!   anything of it is queued;
//! - `?partial=true` stores the good events of a batch and lists each refused one (`index`, `line`, `code`),
//!   for shippers that cannot split a batch a 4xx refused whole (Vector retries no 4xx but 429).

use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::formats::{self, Format, Limits};
use crate::ledger::appender::{AppendError, Appended};
use crate::ledger::event::NewEvent;
use crate::listen::ListenerKind;
use crate::tls::Peer;
use anchorlog_core::entry::{payload_digest, AuthMethod, SALT_LEN};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
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

/// The query parameter that turns on partial ingest.
pub const PARTIAL_PARAMETER: &str = "partial";

pub(super) async fn post_events(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = ingest(&state, peer.as_ref().map(|p| &p.0), query, &headers, body).await;
    if let Err(e) = &result {
        // A 429 (writer queue full) is the appliance's capacity, not a bad request: counted on its own
        // (`anchorlog_ingest_throttled_total`), so an alert on rejected requests does not fire under load.
        if e.status.is_client_error() && e.status != StatusCode::TOO_MANY_REQUESTS {
            state.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
            state.metrics.instruments.failed("ingest_rejected");
        }
    }
    result
}

/// `?partial=true|false`; any other parameter is refused (a typo must not silently mean "atomic").
fn partial_mode(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<bool, ApiError> {
    let bad = |parameter: &str, message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
            .with_detail(json!({"parameter": parameter}))
    };
    let Query(pairs) = query.map_err(|e| bad("query", format!("the query string cannot be parsed: {e}")))?;
    let mut partial = None;
    for (name, value) in pairs {
        if name != PARTIAL_PARAMETER {
            let shown: String = name.chars().take(64).collect();
            return Err(bad(
                &shown,
                format!("unknown query parameter {shown:?}; known: {PARTIAL_PARAMETER}"),
            ));
        }
        if partial.is_some() {
            return Err(bad(PARTIAL_PARAMETER, "query parameter partial is given more than once".into()));
        }
        partial = Some(match value.as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(bad(PARTIAL_PARAMETER, "partial must be true or false".into())),
        });
    }
    Ok(partial.unwrap_or(false))
}

async fn ingest(
    state: &AppState,
    peer: Option<&Peer>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let principal = authorize(peer, Role::Producer)?;
    let partial = partial_mode(query)?;
    let ndjson = content_kind(headers)?;
    let encoding = super::encoding::from_headers(headers)?;
    let bytes = read_decoded(state, body, headers, encoding, ListenerKind::Mtls).await?;
    let origin = Origin {
        producer: principal.name.clone(),
        source: Arc::from(GENERIC_SOURCE),
        auth: AuthMethod::Mtls,
        format: Format::Json,
    };
    if partial {
        return append_partial(state, &bytes, ndjson, &origin, headers).await;
    }
    let parsed = parse(state, Format::Json, &bytes, ndjson)?;
    let idempotency_key = idempotency_key(headers, parsed.len())?;
    let appended = append_events(state, parsed, &origin, idempotency_key).await?;
    Ok(Json(answer(&appended, None)))
}

/// `?partial=true`: every event judged on its own; the good ones are stored together (one savepoint, as one
/// request), each refused one is listed with its index, line and code. Nothing is stored if the queue is full.
async fn append_partial(
    state: &AppState,
    bytes: &[u8],
    ndjson: bool,
    origin: &Origin,
    headers: &HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let limits =
        Limits { max_events: state.limits.max_events_per_request, max_depth: state.limits.max_json_depth };
    let each =
        formats::json::parse_each(bytes, ndjson, &limits, state.search_enabled).map_err(format_error)?;
    let mut good = Vec::with_capacity(each.len());
    let mut indices = Vec::with_capacity(each.len());
    let mut rejected = Vec::new();
    for e in each {
        match e.result {
            Ok(p) => {
                indices.push(e.index);
                good.push(p);
            }
            Err(err) => {
                state.metrics.instruments.failed("ingest_line_rejected");
                rejected.push(
                    json!({"index": e.index, "line": e.line, "code": err.code(), "message": err.to_string()}),
                );
            }
        }
    }
    let idempotency_key = idempotency_key(headers, good.len().max(1))?;
    let appended = if good.is_empty() {
        Vec::new()
    } else {
        append_events(state, good, origin, idempotency_key).await?
    };
    let mut body = answer(&appended, Some(&indices));
    if let Some(o) = body.as_object_mut() {
        o.insert("rejected".into(), Value::Array(rejected));
    }
    Ok(Json(body))
}

/// `{"stored", "duplicates", "events": [{"seq", "leaf_hash", "duplicate"}]}`; with `indices` (partial mode)
/// each event also names its index in the body.
fn answer(appended: &[Appended], indices: Option<&[usize]>) -> Value {
    let duplicates = appended.iter().filter(|a| a.duplicate).count();
    let events: Vec<Value> = appended
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut v = json!({"seq": a.seq, "leaf_hash": B64.encode(a.leaf_hash), "duplicate": a.duplicate});
            if let (Some(indices), Some(o)) = (indices, v.as_object_mut()) {
                o.insert("index".into(), json!(indices.get(i)));
            }
            v
        })
        .collect();
    json!({"stored": appended.len() - duplicates, "duplicates": duplicates, "events": events})
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
    let appended = append_events(state, parsed, origin, idempotency_key).await?;
    Ok(Json(answer(&appended, None)))
}

/// [`append`], returning what the writer answered. Waits for a place in the writer queue first: none free is a
/// 429 before anything of the request is queued.
async fn append_events(
    state: &AppState,
    parsed: Vec<formats::ParsedEvent>,
    origin: &Origin,
    idempotency_key: Option<String>,
) -> Result<Vec<Appended>, ApiError> {
    let _place = state.queue.admit().await?;
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
    let appended = appended.map_err(|e| ApiError::append("append failed", &e))?;
    state.metrics.storage.succeeded();
    let duplicates = appended.iter().filter(|a| a.duplicate).count();
    state.metrics.events_appended.fetch_add((appended.len() - duplicates) as u64, Ordering::Relaxed);
    let m = &state.metrics.instruments;
    m.ingested(&origin.source, origin.format.as_str(), (appended.len() - duplicates) as u64);
    m.ack_seconds.observe(crate::store::now_ns().saturating_sub(received_at_ns) as f64 / 1e9);
    state.metrics.events_duplicate.fetch_add(duplicates as u64, Ordering::Relaxed);
    Ok(appended)
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

/// [`read_limited`], then decoded per `encoding` within the same limits: the decoded size is bounded by
/// `limits.max_body_bytes` while decoding (413 `decompressed_too_large`, counted as the `decompressed_too_large`
/// limit), and reading plus decoding together must end within `limits.body_read_timeout_ms` (408
/// `body_timeout`). Decoding runs on a blocking thread so a large body does not stall the connections served by
/// the same runtime worker; its work is bounded by the decoded size, so a thread abandoned at the deadline ends
/// soon after.
pub(super) async fn read_decoded(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
    encoding: super::encoding::Encoding,
    listener: ListenerKind,
) -> Result<Bytes, ApiError> {
    let started = tokio::time::Instant::now();
    let bytes = read_limited(state, body, headers, listener).await?;
    if encoding == super::encoding::Encoding::Identity {
        return Ok(bytes);
    }
    let l = &state.limits;
    let limit = l.max_body_bytes;
    let deadline = started + l.body_read_timeout();
    let decoding = tokio::task::spawn_blocking(move || super::encoding::decode(encoding, bytes, limit));
    let decoded = match tokio::time::timeout_at(deadline, decoding).await {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(join)) => return Err(ApiError::internal("decoding a request body", &join)),
        Err(_) => Err(body_timeout(l.body_read_timeout(), true)),
    };
    if let Err(e) = &decoded {
        if matches!(
            e.code,
            BODY_TIMEOUT | super::encoding::DECOMPRESSED_TOO_LARGE | super::encoding::ZSTD_WINDOW_TOO_LARGE
        ) {
            let limit =
                if e.code == BODY_TIMEOUT { BODY_TIMEOUT } else { super::encoding::DECOMPRESSED_TOO_LARGE };
            state.metrics.instruments.limit_hit(listener.as_str(), limit);
        }
    }
    decoded
}

/// The 408 of a body not read (or, `decoding`, not decoded) within `timeout`.
fn body_timeout(timeout: std::time::Duration, decoding: bool) -> ApiError {
    let what = if decoding { "arrive and decompress" } else { "arrive" };
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        BODY_TIMEOUT,
        format!(
            "the request body did not {what} within {} ms (limits.body_read_timeout_ms); nothing was stored. \
             Send the body at once, or in smaller batches",
            timeout.as_millis()
        ),
    )
    .with_detail(json!({"timeout_ms": timeout.as_millis() as u64}))
}

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
        return Err(body_timeout(timeout, false));
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
