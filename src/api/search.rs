//! `GET /v1/events?…`: search over the normalized fields (src/store/search.rs); each search leaves its
//! audit-access record (`api::audit_access`).

use super::audit_access::log_access;
use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::formats::Outcome;
use crate::store::search::{self as store_search, CursorError, SearchFilter};
use crate::store::{self, StoreError};
use crate::tls::Peer;
use anchorlog_core::entry::Entry;
use anchorlog_core::record_types;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;

/// Longest accepted value of a text filter (actor, type, source, realm, ip), in bytes.
pub const MAX_FILTER_BYTES: usize = 512;
/// Page size when `limit` is not given.
pub const DEFAULT_SEARCH_LIMIT: usize = 100;

/// The parameters `GET /v1/events` knows; anything else is refused, so a typo is not silently "no filter".
const PARAMETERS: [&str; 11] =
    ["actor", "type", "outcome", "source", "realm", "ip", "since", "until", "cursor", "limit", "body"];

fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
        .with_detail(json!({"parameter": parameter}))
}

/// `since`/`until`: RFC 3339 (`2024-11-23T10:00:00Z`) or integer epoch milliseconds.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<i64>().map_err(|_| bad(name, format!("{name} is out of range: {v:?}")));
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(|_| {
        bad(
            name,
            format!("{name} must be an RFC 3339 date-time (2024-11-23T10:00:00Z) or epoch milliseconds"),
        )
    })?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| bad(name, format!("{name} is out of range: {v:?}")))
}

/// A validated search request.
struct Request {
    filter: SearchFilter,
    cursor: Option<String>,
    limit: usize,
    body: bool,
    /// The parameters as given (for the audit-access record).
    given: Vec<(&'static str, String)>,
}

fn parse(pairs: Vec<(String, String)>, max_limit: usize) -> Result<Request, ApiError> {
    let mut req = Request {
        filter: SearchFilter::default(),
        cursor: None,
        limit: DEFAULT_SEARCH_LIMIT.min(max_limit),
        body: false,
        given: Vec::new(),
    };
    for (name, value) in pairs {
        let Some(&known) = PARAMETERS.iter().find(|p| **p == name) else {
            let shown: String = name.chars().take(64).collect();
            return Err(bad(
                &shown,
                format!("unknown query parameter {shown:?}; known: {}", PARAMETERS.join(", ")),
            ));
        };
        if req.given.iter().any(|(n, _)| *n == known) {
            return Err(bad(known, format!("query parameter {known} is given more than once")));
        }
        let text = |v: &str| -> Result<Option<String>, ApiError> {
            if v.is_empty() {
                return Err(bad(known, format!("{known} must not be empty (leave it out to match any)")));
            }
            if v.len() > MAX_FILTER_BYTES {
                return Err(bad(known, format!("{known} is longer than {MAX_FILTER_BYTES} bytes")));
            }
            Ok(Some(v.to_string()))
        };
        let f = &mut req.filter;
        match known {
            "actor" => f.actor = text(&value)?,
            "type" => f.event_type = text(&value)?,
            "source" => f.source = text(&value)?,
            "realm" => f.realm = text(&value)?,
            "ip" => f.ip = text(&value)?,
            "outcome" => {
                f.outcome = Some(match value.as_str() {
                    "success" => Outcome::Success,
                    "failure" => Outcome::Failure,
                    "unknown" => Outcome::Unknown,
                    _ => return Err(bad(known, "outcome must be success, failure or unknown")),
                })
            }
            "since" => f.since_ms = Some(parse_time(known, &value)?),
            "until" => f.until_ms = Some(parse_time(known, &value)?),
            "cursor" => req.cursor = text(&value)?,
            "limit" => {
                let n = super::read::parse_number(&value, "limit")
                    .map_err(|_| bad(known, format!("limit must be an integer from 1 to {max_limit}")))?;
                if n == 0 {
                    return Err(bad(known, format!("limit must be an integer from 1 to {max_limit}")));
                }
                if n > max_limit as u64 {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "limit_too_large",
                        format!("limit {n} is above the largest page, {max_limit}; page with the cursor"),
                    )
                    .with_detail(json!({"parameter": "limit", "max": max_limit})));
                }
                req.limit = n as usize;
            }
            "body" => {
                req.body = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(known, "body must be true or false")),
                }
            }
            _ => unreachable!("every name in PARAMETERS is handled"),
        }
        req.given.push((known, value));
    }
    // The `anchorlog.` types are the appliance's own records: only its source holds them (producers' look-alikes
    // are refused at ingest; any stored before that are not the appliance's and must not be found as such).
    // With another source given, the hits are dropped below.
    let f = &mut req.filter;
    if f.event_type.as_deref().is_some_and(record_types::is_reserved_type) && f.source.is_none() {
        f.source = Some(record_types::APPLIANCE.into());
    }
    if let (Some(s), Some(u)) = (req.filter.since_ms, req.filter.until_ms) {
        if s >= u {
            return Err(bad("until", "until must be later than since (since is inclusive, until exclusive)"));
        }
    }
    Ok(req)
}

pub(super) async fn search(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let principal = authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    // The search database has no PostgreSQL counterpart yet (docs/HA.md).
    let ledger = super::read::sqlite_only(&state, "GET /v1/events (search)")?;
    let Query(pairs) = query.map_err(|e| bad("query", format!("the query string cannot be parsed: {e}")))?;
    let req = parse(pairs, state.limits.max_query_limit)?;
    let after = match &req.cursor {
        None => None,
        Some(text) => Some(
            store_search::decode_cursor(&req.filter, text)
                .map_err(|e: CursorError| bad("cursor", e.to_string()))?,
        ),
    };
    // Read before the search: an event acknowledged before this request and not in the answer is counted here.
    let pending = state.search_lag.as_ref().map(|l| l.pending());
    let (filter, limit) = (req.filter.clone(), req.limit);
    let searches = state.search.clone();
    let page = tokio::task::spawn_blocking(move || {
        searches.with(|c| store_search::search(c, &filter, after.as_ref(), limit))
    })
    .await
    .map_err(|e| ApiError::internal("search task failed", &e))?
    .map_err(|e| ApiError::internal("search failed", &e))?;
    // The ledger rows of the hits: `limit` primary-key reads at most, one at a time, each turned into its JSON and
    // measured before the next is read: a page over `limits.max_response_bytes` is refused before it is held whole
    // (limit=1000 with 1 MiB bodies would be ~2 GB of JSON).
    let reserved = req.filter.event_type.as_deref().is_some_and(record_types::is_reserved_type);
    let (with_body, cap, hits) = (req.body, state.limits.max_response_bytes(), page.hits);
    let built = super::read::sqlite_blocking(&ledger, move |c| {
        let mut results = Vec::with_capacity(hits.len());
        let mut size = 0usize;
        for (i, hit) in hits.iter().enumerate() {
            let ev = store::event(c, hit.seq)?.ok_or(StoreError::Corrupt {
                table: "events",
                key: hit.seq,
                problem: "indexed in the search database but not in the ledger".into(),
            })?;
            // An `anchorlog.*` type is answered with the appliance's own records only, judged by the signed entry
            // (producer, source, format, auth), whatever the index says.
            if reserved && !Entry::check(&ev.entry).is_ok_and(|f| f.appliance) {
                continue;
            }
            let v = hit_json(hit, &ev, with_body);
            size = size.saturating_add(json_len(&v) + 1);
            if size > cap {
                return Ok(Err(i));
            }
            results.push(v);
        }
        Ok(Ok(results))
    })
    .await?;
    let results = match built {
        Ok(r) => r,
        Err(fit) => {
            state.metrics.instruments.limit_hit("mtls", "response_too_large");
            return Err(too_large(cap, req.limit, fit, req.body));
        }
    };
    let count = results.len() as u64;
    let audit_seq = log_access(&state, &principal, "GET /v1/events", &req.given, Some(count)).await?;
    Ok(Json(json!({
        "events": results,
        "count": count,
        "order": page.order.as_str(),
        "next_cursor": page.next.map(|c| store_search::encode_cursor(&req.filter, &c)),
        "audit_seq": audit_seq,
        "index": index_state(pending),
    })))
}

/// Whether the answer covers every event committed before the search: `complete` is false while the indexer
/// trails the ledger (it runs at idle priority and never slows ingest: a busy or starved indexer falls behind,
/// then catches up), with the number of events it has still to write; ask again to see them.
fn index_state(pending: Option<u64>) -> Value {
    match pending {
        Some(0) => json!({"complete": true, "pending_events": 0}),
        Some(n) => json!({"complete": false, "pending_events": n,
                          "message": format!("the search index is {n} events behind the log; they are stored and                                               will be found once indexed (usually within seconds)")}),
        None => json!({"complete": false, "pending_events": null,
                       "message": "search is disabled ([search] enabled = false): only events indexed before are found"}),
    }
}

/// One hit as the answer lists it.
fn hit_json(
    hit: &store_search::SearchHit,
    ev: &anchorlog_core::stored::StoredEvent,
    with_body: bool,
) -> Value {
    let mut fields = serde_json::to_value(&hit.fields).unwrap_or(Value::Null);
    if let Some(o) = fields.as_object_mut() {
        o.insert("source".into(), Value::String(hit.source.clone()));
    }
    let mut v = json!({
        "seq": ev.seq,
        "entry": String::from_utf8_lossy(&ev.entry),
        "entry_fields": serde_json::from_slice::<Value>(&ev.entry).unwrap_or(Value::Null),
        "leaf_hash": B64.encode(ev.leaf_hash),
        "erased": ev.body.is_none(),
        "fields": fields,
    });
    if with_body {
        if let (Some(o), Some(b)) = (v.as_object_mut(), &ev.body) {
            o.insert("body".into(), Value::String(String::from_utf8_lossy(b).into_owned()));
        }
    }
    v
}

/// The length of `v` serialized, without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// 422 `response_too_large`: the page's JSON would exceed `cap` bytes after `fit` of the `limit` hits.
fn too_large(cap: usize, limit: usize, fit: usize, body: bool) -> ApiError {
    let advice = match (fit, body) {
        (0, _) => "this one event alone is larger: read it with GET /v1/events/{seq}, or raise \
                   limits.max_response_bytes"
            .to_string(),
        (n, true) => format!("ask for limit={n} or fewer and page with the cursor, or leave out body=true"),
        (n, false) => format!("ask for limit={n} or fewer and page with the cursor"),
    };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "response_too_large",
        format!(
            "this page would exceed the largest answer, {cap} bytes (limits.max_response_bytes), after {fit} of \
             {limit} events; {advice}"
        ),
    )
    .with_detail(json!({"max_response_bytes": cap, "limit": limit, "fits": fit}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &[(&str, &str)]) -> Result<Request, ApiError> {
        parse(q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), 1000)
    }

    fn code(q: &[(&str, &str)]) -> (&'static str, Value) {
        let e = p(q).err().expect("refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        (e.code, e.detail["parameter"].clone())
    }

    #[test]
    fn a_page_over_the_response_cap_names_a_limit_that_fits() {
        let v = json!({"body": "a\"b", "n": [1, 2]});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len());
        let e = too_large(1_000, 100, 7, true);
        assert_eq!((e.status, e.code), (StatusCode::UNPROCESSABLE_ENTITY, "response_too_large"));
        assert_eq!(e.detail, json!({"max_response_bytes": 1_000, "limit": 100, "fits": 7}));
        assert!(e.message.contains("ask for limit=7 or fewer"), "{}", e.message);
        assert!(e.message.contains("leave out body=true"), "{}", e.message);
        assert!(too_large(1_000, 100, 0, true).message.contains("GET /v1/events/{seq}"));
    }

    #[test]
    fn parameters_are_validated_and_named() {
        let r =
            p(&[("actor", "alice"), ("since", "2024-11-23T10:00:00Z"), ("until", "1732356000001")]).unwrap();
        assert_eq!(r.filter.actor.as_deref(), Some("alice"));
        assert_eq!(
            (r.filter.since_ms, r.filter.until_ms),
            (Some(1_732_356_000_000), Some(1_732_356_000_001))
        );
        assert_eq!((r.limit, r.body), (DEFAULT_SEARCH_LIMIT, false));
        let r = p(&[("limit", "1000"), ("body", "true"), ("outcome", "failure")]).unwrap();
        assert_eq!((r.limit, r.body, r.filter.outcome), (1000, true, Some(Outcome::Failure)));
        assert_eq!(code(&[("limit", "1001")]), ("limit_too_large", json!("limit")));
        for (q, param) in [
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "-1")], "limit"),
            (&[("limit", "x")], "limit"),
            (&[("actor", "")], "actor"),
            (&[("ip", &*"1".repeat(MAX_FILTER_BYTES + 1))], "ip"),
            (&[("outcome", "ok")], "outcome"),
            (&[("since", "yesterday")], "since"),
            (&[("until", "2024-13-01T00:00:00Z")], "until"),
            (&[("since", "5"), ("until", "5")], "until"),
            (&[("body", "1")], "body"),
            (&[("type", "A"), ("type", "B")], "type"),
            (&[("actr", "alice")], "actr"),
            (&[("cursor", "")], "cursor"),
        ] {
            assert_eq!(code(q), ("bad_parameter", json!(param)), "{q:?}");
        }
    }
}
