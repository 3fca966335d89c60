//! Search over the normalized fields in the search database (`GET /v1/events?…`): filters, the choice of
//! index, keyset pagination and its opaque cursor.
//!
//! Every query is driven by exactly one index, chosen here (and forced with `INDEXED BY`, so the plan does not
//! depend on SQLite statistics): a page is a range of that index read in key order, the other filters are
//! checked on each entry, and the page stops after `limit + 1` matches or [`SCAN_BUDGET`] entries, whichever
//! first — so a request costs at most a bounded number of row reads, never a function of the log's size.
//! The SQL is built from fixed fragments; every value is a bound parameter.
//!
//! Order: by seq, except when since/until drive the query (no actor or IP filter), which reads the time index
//! in `(event_time_ms, seq)` order — the only order in which a time window is one index range. The cursor
//! records which order it belongs to and a digest of the filters, so it cannot be replayed on another query.

use super::StoreError;
use crate::formats::{NormalizedFields, Outcome};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// The filters of one search; `None` means "any". All present filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    /// `actor_id` equals.
    pub actor: Option<String>,
    /// `event_type` equals.
    pub event_type: Option<String>,
    /// `outcome` equals.
    pub outcome: Option<Outcome>,
    /// The source the event arrived through equals.
    pub source: Option<String>,
    /// `realm` equals.
    pub realm: Option<String>,
    /// `source_ip` equals (as the producer reported it).
    pub ip: Option<String>,
    /// `event_time_ms >= since_ms` (events without a time never match a time filter).
    pub since_ms: Option<i64>,
    /// `event_time_ms < until_ms`.
    pub until_ms: Option<i64>,
}

/// In which order a search returns its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// Ascending seq.
    Seq,
    /// Ascending `(event_time_ms, seq)`: a search whose only selective filter is a time window.
    EventTime,
}

impl SearchOrder {
    /// The name used in the API answer.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchOrder::Seq => "seq",
            SearchOrder::EventTime => "event_time",
        }
    }
}

/// Where the previous page ended (exclusive): its last row's key in the search's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchCursor {
    /// The last row's `event_time_ms` ([`SearchOrder::EventTime`] only).
    pub time_ms: Option<i64>,
    /// The last row's seq.
    pub seq: u64,
}

/// One matching event: its seq, source and normalized fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// The event's seq.
    pub seq: u64,
    /// The source it arrived through.
    pub source: String,
    /// Its normalized fields.
    pub fields: NormalizedFields,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// At most `limit` hits, in the search's order.
    pub hits: Vec<SearchHit>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<SearchCursor>,
    /// The order of `hits`.
    pub order: SearchOrder,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor this build wrote.
    #[error("the cursor is malformed; pass the next_cursor of a previous answer unchanged")]
    Malformed,
    /// A cursor of a search with other filters.
    #[error("the cursor belongs to a search with other filters; repeat the same filters with it")]
    OtherSearch,
}

/// Which index drives a search with these filters, and the order it yields: an index on `event_fields`, or
/// one of the key tables `actor_index` / `ip_index` (an index kept as a table, see the search schema).
///
/// Most selective first: an actor or an IP has few events, so its index is read even when a time window is
/// also given (the window is then checked per entry); otherwise a time window is one range of the time index;
/// then type, realm, source, outcome. No filter: the table in seq order.
pub fn plan(f: &SearchFilter) -> (Option<&'static str>, SearchOrder) {
    let time = f.since_ms.is_some() || f.until_ms.is_some();
    let index = if f.actor.is_some() {
        "actor_index"
    } else if f.ip.is_some() {
        "ip_index"
    } else if time {
        return (Some("event_fields_time"), SearchOrder::EventTime);
    } else if f.event_type.is_some() {
        "event_fields_type"
    } else if f.realm.is_some() {
        "event_fields_realm"
    } else if f.source.is_some() {
        "event_fields_source"
    } else if f.outcome.is_some() {
        "event_fields_outcome"
    } else {
        return (None, SearchOrder::Seq);
    };
    (Some(index), SearchOrder::Seq)
}

/// A digest of the filters, carried in the cursor so that a cursor only continues the search it came from.
fn filter_digest(f: &SearchFilter) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, v: Option<&str>| {
        h.update(name.as_bytes());
        match v {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
        }
    };
    field("actor", f.actor.as_deref());
    field("type", f.event_type.as_deref());
    field("outcome", f.outcome.map(Outcome::as_str));
    field("source", f.source.as_deref());
    field("realm", f.realm.as_deref());
    field("ip", f.ip.as_deref());
    field("since", f.since_ms.map(|v| v.to_string()).as_deref());
    field("until", f.until_ms.map(|v| v.to_string()).as_deref());
    hex::encode(&h.finalize()[..8])
}

/// The opaque text of a cursor: base64url of `v1.<filter digest>.<seq>[.<time ms>]`.
pub fn encode_cursor(f: &SearchFilter, c: &SearchCursor) -> String {
    let text = match c.time_ms {
        None => format!("v1.{}.{}", filter_digest(f), c.seq),
        Some(t) => format!("v1.{}.{}.{t}", filter_digest(f), c.seq),
    };
    B64URL.encode(text)
}

/// Parses a cursor written by [`encode_cursor`] for the same filters.
pub fn decode_cursor(f: &SearchFilter, text: &str) -> Result<SearchCursor, CursorError> {
    let raw = B64URL.decode(text).map_err(|_| CursorError::Malformed)?;
    let raw = String::from_utf8(raw).map_err(|_| CursorError::Malformed)?;
    let parts: Vec<&str> = raw.split('.').collect();
    let (digest, seq, time) = match parts.as_slice() {
        ["v1", d, s] => (*d, *s, None),
        ["v1", d, s, t] => (*d, *s, Some(*t)),
        _ => return Err(CursorError::Malformed),
    };
    let seq = seq.parse::<u64>().map_err(|_| CursorError::Malformed)?;
    if seq > i64::MAX as u64 {
        return Err(CursorError::Malformed);
    }
    let time_ms = time.map(|t| t.parse::<i64>().map_err(|_| CursorError::Malformed)).transpose()?;
    if digest != filter_digest(f) {
        return Err(CursorError::OtherSearch);
    }
    // The order is a function of the filters, which the digest pins; a time must be there exactly for it.
    if time_ms.is_some() != (plan(f).1 == SearchOrder::EventTime) {
        return Err(CursorError::Malformed);
    }
    Ok(SearchCursor { time_ms, seq })
}

use super::EVENT_FIELDS_COLUMNS as COLUMNS;

/// Most index entries one page examines. A page reads its driving index in order and checks the other
/// filters on each entry; when they reject most entries (two common filters with a rare intersection, or none
/// at all), the page stops here and hands out a cursor at the last entry examined — so every request costs at
/// most this many row reads, however the filters combine and however large the log.
pub const SCAN_BUDGET: usize = 10_000;

/// The statement of one page: the driving filter only (the index range), in key order, at most `rows` rows.
fn statement(f: &SearchFilter, after: Option<&SearchCursor>, rows: usize) -> (String, Vec<SqlValue>) {
    let (index, order) = plan(f);
    let mut params: Vec<SqlValue> = Vec::new();
    let text = |v: &Option<String>| SqlValue::Text(v.clone().unwrap_or_default());
    let columns = COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
    // `x` is the driving index's table: a key table joined to the rows by seq (CROSS JOIN keeps it the outer
    // loop, so the page is read in its order), or the fields table itself read through one of its indexes.
    let (mut sql, driver) = match index {
        Some(table @ ("actor_index" | "ip_index")) => {
            let (col, v) = if table == "actor_index" { ("actor_id", &f.actor) } else { ("source_ip", &f.ip) };
            let sql =
                format!("SELECT {columns} FROM {table} AS x CROSS JOIN event_fields AS e ON e.seq = x.seq");
            (sql, Some((col, text(v))))
        }
        Some(i) => {
            let driver = match i {
                "event_fields_type" => Some(("event_type", text(&f.event_type))),
                "event_fields_realm" => Some(("realm", text(&f.realm))),
                "event_fields_source" => Some(("source", text(&f.source))),
                "event_fields_outcome" => {
                    Some(("outcome", SqlValue::Text(f.outcome.unwrap_or_default().as_str().to_string())))
                }
                _ => None,
            };
            (format!("SELECT {columns} FROM event_fields AS e INDEXED BY {i}"), driver)
        }
        None => (format!("SELECT {columns} FROM event_fields AS e NOT INDEXED"), None),
    };
    // Column names below are those of the driving table `x` (the key tables name theirs like event_fields).
    let x = if matches!(index, Some("actor_index" | "ip_index")) { "x" } else { "e" };
    sql.push_str(" WHERE 1");
    if let Some((col, v)) = driver {
        sql.push_str(&format!(" AND {x}.{col} = ?"));
        params.push(v);
    }
    if order == SearchOrder::EventTime {
        // The window is the range of the time index; `IS NOT NULL` lets the partial index serve it alone.
        sql.push_str(" AND e.event_time_ms IS NOT NULL");
        if let Some(s) = f.since_ms {
            sql.push_str(" AND e.event_time_ms >= ?");
            params.push(SqlValue::Integer(s));
        }
        if let Some(u) = f.until_ms {
            sql.push_str(" AND e.event_time_ms < ?");
            params.push(SqlValue::Integer(u));
        }
    }
    match (order, after) {
        (_, None) => {}
        (SearchOrder::Seq, Some(c)) => {
            sql.push_str(&format!(" AND {x}.seq > ?"));
            params.push(SqlValue::Integer(c.seq as i64));
        }
        (SearchOrder::EventTime, Some(c)) => {
            sql.push_str(" AND (e.event_time_ms, e.seq) > (?, ?)");
            params.push(SqlValue::Integer(c.time_ms.unwrap_or(i64::MIN)));
            params.push(SqlValue::Integer(c.seq as i64));
        }
    }
    sql.push_str(&match order {
        SearchOrder::Seq => format!(" ORDER BY {x}.seq LIMIT ?"),
        SearchOrder::EventTime => " ORDER BY e.event_time_ms, e.seq LIMIT ?".to_string(),
    });
    params.push(SqlValue::Integer(rows.min(i64::MAX as usize) as i64));
    (sql, params)
}

/// Whether a row read from the driving index passes every filter (the driver's own included: it is cheap).
fn matches(f: &SearchFilter, source: &str, x: &NormalizedFields) -> bool {
    let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
    eq(&f.actor, &x.actor_id)
        && eq(&f.ip, &x.source_ip)
        && eq(&f.event_type, &x.event_type)
        && eq(&f.realm, &x.realm)
        && f.source.as_deref().is_none_or(|s| s == source)
        && f.outcome.is_none_or(|o| o == x.outcome)
        && f.since_ms.is_none_or(|s| x.event_time_ms.is_some_and(|t| t >= s))
        && f.until_ms.is_none_or(|u| x.event_time_ms.is_some_and(|t| t < u))
}

/// One page of the search: at most `limit` hits after `after`, in the order [`plan`] gives, examining at most
/// [`SCAN_BUDGET`] index entries (or `limit + 1`, if larger). A page may therefore hold fewer than `limit`
/// hits — even none — and still have a `next` cursor: the search is complete only when `next` is `None`.
pub fn search(
    conn: &Connection,
    f: &SearchFilter,
    after: Option<&SearchCursor>,
    limit: usize,
) -> Result<SearchPage, StoreError> {
    search_with_budget(conn, f, after, limit, SCAN_BUDGET)
}

fn search_with_budget(
    conn: &Connection,
    f: &SearchFilter,
    after: Option<&SearchCursor>,
    limit: usize,
    budget: usize,
) -> Result<SearchPage, StoreError> {
    let rows_max = budget.max(limit.saturating_add(1));
    let (sql, params) = statement(f, after, rows_max);
    let order = plan(f).1;
    let key = |seq: u64, x: &NormalizedFields| SearchCursor {
        time_ms: (order == SearchOrder::EventTime).then_some(x.event_time_ms).flatten(),
        seq,
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut hits: Vec<SearchHit> = Vec::new();
    let (mut examined, mut last) = (0usize, None);
    while let Some(r) = rows.next()? {
        examined += 1;
        let (seq, source, fields) = super::event_fields_row(r)?;
        if !matches(f, &source, &fields) {
            last = Some(key(seq, &fields));
            continue;
        }
        if hits.len() == limit {
            // One more match exists: the next page starts after the last hit of this one.
            let next = hits.last().map(|h| key(h.seq, &h.fields));
            return Ok(SearchPage { hits, next, order });
        }
        last = Some(key(seq, &fields));
        hits.push(SearchHit { seq, source, fields });
    }
    // The index range ended (no more pages), or the budget did (continue after the last entry examined).
    let next = if examined == rows_max { last } else { None };
    Ok(SearchPage { hits, next, order })
}

/// SQLite's `EXPLAIN QUERY PLAN` of a page of this search, one line per plan step (tests, diagnostics).
pub fn explain(
    conn: &Connection,
    f: &SearchFilter,
    after: Option<&SearchCursor>,
) -> Result<Vec<String>, StoreError> {
    let (sql, params) = statement(f, after, 100);
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(r.get::<_, String>(3)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{insert_event_fields_many, open_search_writer, search_path};

    fn filters() -> Vec<(&'static str, SearchFilter)> {
        let s = |v: &str| Some(v.to_string());
        vec![
            ("actor", SearchFilter { actor: s("alice"), ..Default::default() }),
            ("type", SearchFilter { event_type: s("LOGIN"), ..Default::default() }),
            ("outcome", SearchFilter { outcome: Some(Outcome::Success), ..Default::default() }),
            ("source", SearchFilter { source: s("okta"), ..Default::default() }),
            ("realm", SearchFilter { realm: s("r1"), ..Default::default() }),
            ("ip", SearchFilter { ip: s("10.0.0.1"), ..Default::default() }),
            ("since", SearchFilter { since_ms: Some(5), ..Default::default() }),
            ("until", SearchFilter { until_ms: Some(5), ..Default::default() }),
            ("since+until", SearchFilter { since_ms: Some(1), until_ms: Some(5), ..Default::default() }),
            (
                "actor+type+since",
                SearchFilter {
                    actor: s("alice"),
                    event_type: s("LOGIN"),
                    since_ms: Some(1),
                    ..Default::default()
                },
            ),
            (
                "source+outcome",
                SearchFilter { source: s("okta"), outcome: Some(Outcome::Failure), ..Default::default() },
            ),
            ("type+until", SearchFilter { event_type: s("LOGIN"), until_ms: Some(9), ..Default::default() }),
        ]
    }

    /// A small search database: seq i has actor a{i%3}, type T{i%2}, outcome by i%3, source by i%2,
    /// realm r{i%2}, ip 10.0.0.{i%4}, time 100 - i (so time order is the reverse of seq order).
    fn db(dir: &std::path::Path, n: u64) -> Connection {
        let conn = open_search_writer(&search_path(&dir.join("a.db"))).unwrap();
        let fields: Vec<NormalizedFields> = (0..n)
            .map(|i| NormalizedFields {
                event_time_ms: (i % 5 != 4).then_some(100 - i as i64),
                event_type: Some(format!("T{}", i % 2)),
                outcome: [Outcome::Success, Outcome::Failure, Outcome::Unknown][i as usize % 3],
                actor_id: Some(format!("a{}", i % 3)),
                realm: Some(format!("r{}", i % 2)),
                source_ip: Some(format!("10.0.0.{}", i % 4)),
                ..NormalizedFields::default()
            })
            .collect();
        let rows: Vec<(u64, &str, &NormalizedFields)> =
            fields.iter().enumerate().map(|(i, f)| (i as u64, ["kc", "okta"][i % 2], f)).collect();
        insert_event_fields_many(&conn, &rows).unwrap();
        conn
    }

    #[test]
    fn every_filter_reads_one_index_in_order_and_never_scans_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db(dir.path(), 10);
        for (name, f) in filters() {
            let (index, order) = plan(&f);
            let index = index.unwrap();
            let cursor = SearchCursor { time_ms: (order == SearchOrder::EventTime).then_some(3), seq: 2 };
            for after in [None, Some(&cursor)] {
                let plan = explain(&conn, &f, after).unwrap();
                let text = plan.join(" | ");
                if let Some(key) = index.strip_suffix("_index") {
                    // A key table read in (key, seq) order, each entry joined to its row by seq.
                    let column = if key == "actor" { "actor_id" } else { "source_ip" };
                    let seq = if after.is_some() { " AND seq>?" } else { "" };
                    assert_eq!(
                        plan,
                        vec![
                            format!("SEARCH x USING PRIMARY KEY ({column}=?{seq})"),
                            "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)".to_string()
                        ],
                        "{name}: no temp b-tree for ORDER BY"
                    );
                } else {
                    assert_eq!(plan.len(), 1, "{name}: one step, no temp b-tree for ORDER BY: {text}");
                    assert!(
                        plan[0].starts_with(&format!("SEARCH e USING INDEX {index} ("))
                            || plan[0].starts_with(&format!("SEARCH e USING COVERING INDEX {index} (")),
                        "{name}: {text}"
                    );
                }
                assert!(!text.contains("SCAN"), "{name}: {text}");
            }
        }
        // No filter at all: the table itself in seq order (a listing, bounded by the page size).
        let plan =
            explain(&conn, &SearchFilter::default(), Some(&SearchCursor { time_ms: None, seq: 3 })).unwrap();
        assert_eq!(plan, vec!["SEARCH e USING INTEGER PRIMARY KEY (rowid>?)".to_string()]);
    }

    fn walk(conn: &Connection, f: &SearchFilter, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut after = None;
        for _ in 0..1000 {
            let page = search(conn, f, after.as_ref(), limit).unwrap();
            assert!(page.hits.len() <= limit);
            out.extend(page.hits.iter().map(|h| h.seq));
            // The cursor survives its text form.
            after = page.next.map(|c| decode_cursor(f, &encode_cursor(f, &c)).unwrap());
            if after.is_none() {
                return out;
            }
        }
        panic!("pagination did not end");
    }

    #[test]
    fn results_and_pagination_match_a_plain_filter() {
        let dir = tempfile::tempdir().unwrap();
        let n = 50;
        let conn = db(dir.path(), n);
        let s = |v: &str| Some(v.to_string());
        let time = |i: u64| (i % 5 != 4).then_some(100 - i as i64);
        type Pred = Box<dyn Fn(u64) -> bool>;
        let cases: Vec<(SearchFilter, Pred)> = vec![
            (SearchFilter { actor: s("a1"), ..Default::default() }, Box::new(|i| i % 3 == 1)),
            (SearchFilter { event_type: s("T0"), ..Default::default() }, Box::new(|i| i % 2 == 0)),
            (
                SearchFilter { outcome: Some(Outcome::Failure), ..Default::default() },
                Box::new(|i| i % 3 == 1),
            ),
            (SearchFilter { source: s("okta"), ..Default::default() }, Box::new(|i| i % 2 == 1)),
            (SearchFilter { realm: s("r0"), ..Default::default() }, Box::new(|i| i % 2 == 0)),
            (SearchFilter { ip: s("10.0.0.3"), ..Default::default() }, Box::new(|i| i % 4 == 3)),
            (
                SearchFilter { actor: s("a0"), ip: s("10.0.0.0"), since_ms: Some(70), ..Default::default() },
                Box::new(move |i| i % 12 == 0 && time(i).is_some_and(|t| t >= 70)),
            ),
            (
                SearchFilter { source: s("kc"), outcome: Some(Outcome::Unknown), ..Default::default() },
                Box::new(|i| i % 6 == 2),
            ),
            (SearchFilter::default(), Box::new(|_| true)),
        ];
        for (f, pred) in &cases {
            let expected: Vec<u64> = (0..n).filter(|&i| pred(i)).collect();
            for limit in [1, 3, 7, 100] {
                assert_eq!(walk(&conn, f, limit), expected, "{f:?} limit {limit}");
            }
        }
        // Time windows come in (time, seq) order: here time falls as seq grows, so seqs descend.
        let f = SearchFilter { since_ms: Some(60), until_ms: Some(90), ..Default::default() };
        let mut expected: Vec<(i64, u64)> =
            (0..n).filter_map(|i| time(i).filter(|t| (60..90).contains(t)).map(|t| (t, i))).collect();
        expected.sort();
        let expected: Vec<u64> = expected.into_iter().map(|(_, i)| i).collect();
        assert_eq!(expected.first(), Some(&40));
        for limit in [1, 4, 100] {
            assert_eq!(walk(&conn, &f, limit), expected, "limit {limit}");
        }
        assert_eq!(search(&conn, &f, None, 10).unwrap().order, SearchOrder::EventTime);
    }

    #[test]
    fn a_page_stops_at_the_scan_budget_and_the_cursor_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db(dir.path(), 60);
        // realm=r0 drives (even seqs, 30 entries); source kc and outcome unknown leave i % 6 == 2.
        let f = SearchFilter {
            realm: Some("r0".into()),
            source: Some("kc".into()),
            outcome: Some(Outcome::Unknown),
            ..Default::default()
        };
        let expected: Vec<u64> = (0..60).filter(|i| i % 6 == 2).collect();
        let mut got = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            // Page size 2, at most 4 entries examined per page.
            let page = search_with_budget(&conn, &f, after.as_ref(), 2, 4).unwrap();
            pages += 1;
            assert!(page.hits.len() <= 2);
            got.extend(page.hits.iter().map(|h| h.seq));
            match page.next {
                Some(c) => after = Some(c),
                None => break,
            }
            assert!(pages < 100);
        }
        assert_eq!(got, expected);
        assert!(pages >= 30 / 4, "budget-limited pages: {pages}");
        // The same through the time index: budgeted pages walk the window in (time, seq) order.
        let f = SearchFilter {
            since_ms: Some(0),
            actor: None,
            outcome: Some(Outcome::Failure),
            ..Default::default()
        };
        let mut expected: Vec<(i64, u64)> =
            (0..60u64).filter(|i| i % 3 == 1 && i % 5 != 4).map(|i| (100 - i as i64, i)).collect();
        expected.sort();
        let (mut got, mut after) = (Vec::new(), None);
        for _ in 0..100 {
            let page = search_with_budget(&conn, &f, after.as_ref(), 2, 3).unwrap();
            got.extend(page.hits.iter().map(|h| h.seq));
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        assert_eq!(got, expected.into_iter().map(|(_, i)| i).collect::<Vec<_>>());
    }

    #[test]
    fn a_cursor_continues_only_its_own_search() {
        let a = SearchFilter { actor: Some("alice".into()), ..Default::default() };
        let b = SearchFilter { actor: Some("bob".into()), ..Default::default() };
        let t = SearchFilter { since_ms: Some(1), ..Default::default() };
        let c = SearchCursor { time_ms: None, seq: 41 };
        let text = encode_cursor(&a, &c);
        assert_eq!(decode_cursor(&a, &text), Ok(c));
        assert_eq!(decode_cursor(&b, &text), Err(CursorError::OtherSearch));
        assert_eq!(decode_cursor(&a, &B64URL.encode("v1.00.1")), Err(CursorError::OtherSearch));
        // A cursor of the seq order cannot continue a time-ordered search, and the reverse.
        let digest = |f: &SearchFilter| filter_digest(f);
        assert_eq!(
            decode_cursor(&t, &B64URL.encode(format!("v1.{}.3", digest(&t)))),
            Err(CursorError::Malformed)
        );
        assert_eq!(
            decode_cursor(&a, &B64URL.encode(format!("v1.{}.3.4", digest(&a)))),
            Err(CursorError::Malformed)
        );
        let tc = SearchCursor { time_ms: Some(-5), seq: 7 };
        assert_eq!(decode_cursor(&t, &encode_cursor(&t, &tc)), Ok(tc));
        for junk in ["", "x", "!!!", &B64URL.encode("v2.a.1"), &B64URL.encode("v1.a.-1")] {
            assert_eq!(decode_cursor(&a, junk), Err(CursorError::Malformed), "{junk}");
        }
    }
}
