//! `GET /v1/stream?after=SEQ`: every stored event, in seq order, as one long-lived NDJSON answer — the feed a
//! SIEM's collector follows instead of polling `GET /v1/events` (which records every page it reads).
//!
//! - **Order and resumption**: events with `seq > after` (all of them without `after`), in seq order, each once.
//!   Seqs are dense, so a consumer that keeps the last seq it processed resumes with `after=<that seq>` and
//!   sees neither a gap nor a duplicate; a gap in what it received can only mean a lost connection.
//! - **Back-pressure**: a task reads the log in pages ([`PAGE_EVENTS`] events or [`PAGE_BYTES`] bytes, one
//!   read snapshot each, so no WAL snapshot is held for long) and hands each page to the connection through a
//!   channel of [`CHANNEL_PAGES`]; a slow consumer leaves that channel full and the task waits. Memory per
//!   stream is bounded by a few pages whatever the consumer does.
//! - **Following**: at the end of the log the task sleeps on the writer's commit watch and wakes on the next
//!   group commit — no polling.
//! - **Accountability** (PCI DSS 10.2.1.3): one `anchorlog.audit_access` record when the stream opens (before
//!   the first byte is sent; its seq is in the `X-Anchorlog-Audit-Seq` header) and one when it ends, naming
//!   the range handed to the connection and why it ended — not one per event or page.
//! - **Shutdown**: a stream ends (after its close record) when the appliance begins to stop, so the graceful
//!   shutdown does not wait for it.
//! - **A consumer that stops reading** holds no more than a connection slot, and only for
//!   `limits.stream_stall_timeout_ms`: when a page could not be handed to the connection for that long, the
//!   stream ends (close record, reason `stalled`, the `stream_stalled` limit hit counted) and the connection is
//!   closed — its answer could not end otherwise, the consumer taking no bytes. Like every connection, a stream
//!   counts against `limits.max_connections` and `limits.max_connections_per_address`.

use super::audit_access::log_access;
use super::{authorize_any, ApiError, AppState};
use crate::config::Role;
use crate::formats::{NormalizedFields, Outcome};
use crate::listen::{ConnectionCloser, ListenerKind};
use crate::store::{self, StoreError};
use crate::tls::{Peer, Principal};
use anchorlog_core::entry::Entry;
use anchorlog_core::stored::StoredEvent;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Most events read (and sent as one chunk) at once.
pub const PAGE_EVENTS: u64 = 1_000;
/// A page ends once its lines reach this many bytes (large bodies): bounds a page's memory.
pub const PAGE_BYTES: usize = 1 << 20;
/// Pages waiting for the connection; the reader waits while they are all unsent.
pub const CHANNEL_PAGES: usize = 2;
/// The endpoint as audit-access records name it.
pub const ENDPOINT: &str = "GET /v1/stream";
/// The roles that may follow the stream: readers (a SIEM collector) and auditors.
pub const STREAM_ROLES: [Role; 2] = [Role::Reader, Role::Auditor];

/// Open streams and what they delivered (`/metrics`).
#[derive(Debug, Default)]
pub struct StreamStats {
    open: AtomicU64,
    opened: AtomicU64,
    events: AtomicU64,
}

impl StreamStats {
    /// Prometheus rows.
    pub fn render_metrics(&self, out: &mut String) {
        let mut row = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        row(
            "anchorlog_streams_open",
            "gauge",
            "Event streams (GET /v1/stream) open now.",
            self.open.load(Ordering::Relaxed),
        );
        row(
            "anchorlog_streams_opened_total",
            "counter",
            "Event streams opened.",
            self.opened.load(Ordering::Relaxed),
        );
        row(
            "anchorlog_stream_events_total",
            "counter",
            "Events handed to stream connections.",
            self.events.load(Ordering::Relaxed),
        );
    }
}

fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
        .with_detail(json!({"parameter": parameter}))
}

/// `after` (optional, a seq); anything else is refused.
fn parse_after(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Option<u64>, ApiError> {
    let Query(pairs) = query.map_err(|e| bad("query", format!("the query string cannot be parsed: {e}")))?;
    let mut after = None;
    for (name, value) in pairs {
        if name != "after" {
            let shown: String = name.chars().take(64).collect();
            return Err(bad(&shown, format!("unknown query parameter {shown:?}; known: after")));
        }
        if after.is_some() {
            return Err(bad("after", "query parameter after is given more than once"));
        }
        let seq = value.parse::<u64>().map_err(|_| {
            bad("after", format!("after must be a seq (a non-negative integer), got {:?}", truncate(&value)))
        })?;
        after = Some(seq);
    }
    Ok(after)
}

fn truncate(v: &str) -> String {
    v.chars().take(64).collect()
}

pub(super) async fn stream(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    closer: Option<Extension<ConnectionCloser>>,
    listener: Option<Extension<ListenerKind>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let principal = authorize_any(peer.as_ref().map(|p| &p.0), &STREAM_ROLES)?;
    let after = parse_after(query)?;
    if *state.stopping.borrow() {
        return Err(ApiError::unavailable(
            "the appliance is shutting down; reconnect to another instance or later",
        )
        .with_retry_after(1));
    }
    let mut params: Vec<(&str, String)> = after.iter().map(|a| ("after", a.to_string())).collect();
    params.push(("phase", "open".into()));
    let open_seq = log_access(&state, &principal, ENDPOINT, &params, None).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_PAGES);
    let from = after.map_or(0, |a| a.saturating_add(1));
    let connection =
        Connection { closer: closer.map(|c| c.0), listener: listener.map_or(ListenerKind::Mtls, |l| l.0) };
    tokio::spawn(follow(state, principal, after, from, open_seq, tx, connection));
    let mut response = Body::new(ChannelBody { rx }).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&open_seq.to_string()) {
        headers.insert("x-anchorlog-audit-seq", v);
    }
    Ok(response)
}

/// Why a stream ended, as its close record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The consumer closed the connection (or it broke).
    ClientClosed,
    /// The appliance began to shut down.
    Shutdown,
    /// Reading the log failed (the appliance log has the error).
    ReadFailed,
    /// The consumer took no page for `limits.stream_stall_timeout_ms`; its connection was closed.
    Stalled,
}

/// The connection a stream is answered on.
struct Connection {
    /// Closes it (a stalled stream); `None` outside the accept loop (unit tests).
    closer: Option<ConnectionCloser>,
    listener: ListenerKind,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::Shutdown => "shutdown",
            End::ReadFailed => "read_failed",
            End::Stalled => "stalled",
        }
    }
}

/// Reads pages and hands them to the connection until it closes or the appliance stops; then records the
/// close.
async fn follow(
    state: Arc<AppState>,
    principal: Arc<Principal>,
    after: Option<u64>,
    mut next: u64,
    open_seq: u64,
    tx: mpsc::Sender<Bytes>,
    connection: Connection,
) {
    let stall = state.limits.stream_stall_timeout();
    let stats = &state.streams;
    stats.open.fetch_add(1, Ordering::Relaxed);
    stats.opened.fetch_add(1, Ordering::Relaxed);
    let mut committed = state.appender.committed();
    let mut stopping = state.stopping.clone();
    let mut delivered: Option<(u64, u64)> = None;
    let mut count = 0u64;
    let end = loop {
        if *stopping.borrow() {
            break End::Shutdown;
        }
        let upto = *committed.borrow_and_update();
        if next < upto {
            let page = match read_page(&state, next, upto).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, from = next, "stream: reading the log failed; the stream ends");
                    break End::ReadFailed;
                }
            };
            tokio::select! {
                sent = tokio::time::timeout(stall, tx.send(page.bytes)) => match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::ClientClosed,
                    // The page was not handed over: the range delivered ends before it.
                    Err(_) => break End::Stalled,
                },
                _ = stopping.wait_for(|s| *s) => break End::Shutdown,
            }
            delivered = Some((delivered.map_or(page.first, |d| d.0), page.last));
            count += page.count;
            stats.events.fetch_add(page.count, Ordering::Relaxed);
            next = page.last + 1;
            continue;
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { break End::Shutdown },
            _ = tx.closed() => break End::ClientClosed,
            _ = stopping.wait_for(|s| *s) => break End::Shutdown,
        }
    };
    let mut params: Vec<(&str, String)> = after.iter().map(|a| ("after", a.to_string())).collect();
    params.push(("phase", "close".into()));
    params.push(("open_audit_seq", open_seq.to_string()));
    params.push(("reason", end.as_str().into()));
    if let Some((first, last)) = delivered {
        params.push(("first_seq", first.to_string()));
        params.push(("last_seq", last.to_string()));
    }
    if let Err(e) = log_access(&state, &principal, ENDPOINT, &params, Some(count)).await {
        tracing::error!(code = e.code, message = %e.message, open_audit_seq = open_seq, "stream: the close record was not stored");
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
    if end == End::Stalled {
        tracing::info!(
            open_audit_seq = open_seq,
            "stream: the consumer stopped reading; closing its connection"
        );
        state.metrics.instruments.limit_hit(connection.listener.as_str(), "stream_stalled");
        if let Some(closer) = &connection.closer {
            closer.close();
        }
    }
    // Dropping `tx` ends the answer (after the close record, so a shutdown never outruns it).
    drop(tx);
}

/// One page of NDJSON lines.
struct Page {
    bytes: Bytes,
    first: u64,
    last: u64,
    count: u64,
}

/// Reads events `from..` (below `upto`, at most a page) and their normalized fields, and renders their lines.
async fn read_page(state: &Arc<AppState>, from: u64, upto: u64) -> Result<Page, StoreError> {
    let limit = (upto - from).min(PAGE_EVENTS);
    let events = state.reads.event_page(from, limit, PAGE_BYTES).await?;
    let bytes: usize = events.iter().map(|ev| ev.entry.len() + ev.body.as_ref().map_or(0, Vec::len)).sum();
    let search = state.search_enabled.then(|| state.search.clone());
    let join = tokio::task::spawn_blocking(move || {
        let (Some(first), Some(last)) = (events.first().map(|e| e.seq), events.last().map(|e| e.seq)) else {
            return Err(StoreError::Corrupt {
                table: "events",
                key: from,
                problem: format!("committed up to {upto} but no event at or after {from} can be read"),
            });
        };
        // The indexer's fields where it has caught up (it runs ~1 s behind the writer); re-derived from the body
        // for the rest, so every line carries them.
        let indexed: HashMap<u64, (String, NormalizedFields)> = match &search {
            Some(pool) => pool
                .with(|c| store::event_fields_range(c, first, last + 1))
                .unwrap_or_default()
                .into_iter()
                .map(|(seq, source, fields)| (seq, (source, fields)))
                .collect(),
            None => HashMap::new(),
        };
        let mut out = Vec::with_capacity(bytes + events.len() * 512);
        for ev in &events {
            write_line(&mut out, ev, indexed.get(&ev.seq))?;
        }
        Ok(Page { bytes: Bytes::from(out), first, last, count: events.len() as u64 })
    });
    join.await.map_err(|e| StoreError::Corrupt {
        table: "events",
        key: from,
        problem: format!("read task: {e}"),
    })?
}

/// The normalized fields as a line carries them: the search API's shape, with the source.
#[derive(Serialize)]
struct FieldsOut<'a> {
    source: &'a str,
    event_time_ms: Option<i64>,
    event_type: Option<&'a str>,
    outcome: Outcome,
    actor_id: Option<&'a str>,
    actor_name: Option<&'a str>,
    target: Option<&'a str>,
    source_ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    session_id: Option<&'a str>,
    client_id: Option<&'a str>,
    realm: Option<&'a str>,
}

impl<'a> FieldsOut<'a> {
    fn new(source: &'a str, f: &'a NormalizedFields) -> Self {
        FieldsOut {
            source,
            event_time_ms: f.event_time_ms,
            event_type: f.event_type.as_deref(),
            outcome: f.outcome,
            actor_id: f.actor_id.as_deref(),
            actor_name: f.actor_name.as_deref(),
            target: f.target.as_deref(),
            source_ip: f.source_ip.as_deref(),
            user_agent: f.user_agent.as_deref(),
            session_id: f.session_id.as_deref(),
            client_id: f.client_id.as_deref(),
            realm: f.realm.as_deref(),
        }
    }
}

/// One line (docs/INTEGRATIONS.md): everything a consumer needs to check the event against a signed head.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    leaf_hash: String,
    /// The signed entry's exact text: `leaf_hash = SHA-256(0x00 || entry)`.
    entry: &'a str,
    /// `payload_sha256` of the entry is SHA-256(salt || body).
    salt: Option<String>,
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    erased: bool,
    fields: Option<FieldsOut<'a>>,
}

fn write_line(
    out: &mut Vec<u8>,
    ev: &StoredEvent,
    indexed: Option<&(String, NormalizedFields)>,
) -> Result<(), StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt { table: "events", key: ev.seq, problem };
    let entry = std::str::from_utf8(&ev.entry).map_err(|_| corrupt("the entry is not UTF-8".into()))?;
    let derived;
    let fields = match indexed {
        Some((source, f)) => Some(FieldsOut::new(source, f)),
        None => {
            derived = Entry::parse(&ev.entry).ok().and_then(|e| {
                let fields =
                    ev.body.as_deref().and_then(|b| crate::formats::normalize_stored(&e.format, b))?;
                Some((e.source, fields))
            });
            derived.as_ref().map(|(source, f)| FieldsOut::new(source, f))
        }
    };
    let (body, body_base64) = match ev.body.as_deref() {
        None => (None, None),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => (Some(text), None),
            Err(_) => (None, Some(B64.encode(b))),
        },
    };
    let line = Line {
        seq: ev.seq,
        leaf_hash: B64.encode(ev.leaf_hash),
        entry,
        salt: ev.salt.as_ref().map(|s| B64.encode(s)),
        body,
        body_base64,
        erased: ev.body.is_none(),
        fields,
    };
    serde_json::to_writer(&mut *out, &line).map_err(|e| corrupt(format!("cannot render the line: {e}")))?;
    out.push(b'\n');
    Ok(())
}

/// The answer's body: the pages the task hands over, in order; dropped (the consumer went away) it closes the
/// channel, which ends the task.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|page| page.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Option<u64>, ApiError> {
        let uri: axum::http::Uri = format!("/v1/stream?{s}").parse().unwrap();
        parse_after(Query::try_from_uri(&uri))
    }

    #[test]
    fn after_is_the_only_parameter() {
        assert_eq!(q("").unwrap(), None);
        assert_eq!(q("after=41").unwrap(), Some(41));
        for (query, param) in
            [("after=-1", "after"), ("after=x", "after"), ("after=1&after=2", "after"), ("from=3", "from")]
        {
            let e = q(query).unwrap_err();
            assert_eq!((e.code, e.detail["parameter"].as_str()), ("bad_parameter", Some(param)), "{query}");
        }
    }

    #[test]
    fn a_line_carries_what_verifies_the_event() {
        let entry = Entry {
            seq: 7,
            received_at_ns: 1,
            producer: "p".into(),
            source: "events".into(),
            auth: anchorlog_core::entry::AuthMethod::Mtls,
            format: "json".into(),
            source_id: None,
            payload_sha256: [3; 32],
        }
        .to_canonical_json();
        let entry = &entry[..];
        let ev = StoredEvent {
            seq: 7,
            entry: entry.to_vec(),
            leaf_hash: [1; 32],
            salt: Some(vec![2; 32]),
            body: Some(br#"{"type":"LOGIN","user":"alice","ip":"192.0.2.1"}"#.to_vec()),
        };
        let mut out = Vec::new();
        // Not indexed yet: the fields are re-derived from the body.
        write_line(&mut out, &ev, None).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["entry"].as_str().unwrap().as_bytes(), entry);
        assert_eq!(v["leaf_hash"], B64.encode([1; 32]));
        assert_eq!(v["salt"], B64.encode([2; 32]));
        assert_eq!(v["body"], r#"{"type":"LOGIN","user":"alice","ip":"192.0.2.1"}"#);
        assert_eq!(v["erased"], false);
        assert_eq!(
            (
                &v["fields"]["source"],
                &v["fields"]["event_type"],
                &v["fields"]["actor_id"],
                &v["fields"]["source_ip"]
            ),
            (&json!("events"), &json!("LOGIN"), &json!("alice"), &json!("192.0.2.1"))
        );
        assert!(v.get("body_base64").is_none());
        // Erased: no body, no salt, no fields to derive.
        let erased = StoredEvent { body: None, salt: None, ..ev };
        let mut out = Vec::new();
        write_line(&mut out, &erased, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (&v["body"], &v["salt"], &v["erased"], &v["fields"]),
            (&json!(null), &json!(null), &json!(true), &json!(null))
        );
        // A body that is not UTF-8 (syslog) travels as base64, exactly.
        let binary = StoredEvent { body: Some(vec![0xff, 0x00, b'a']), ..erased };
        let mut out = Vec::new();
        write_line(&mut out, &binary, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((&v["body"], &v["body_base64"]), (&json!(null), &json!(B64.encode([0xff, 0x00, b'a']))));
    }
}
