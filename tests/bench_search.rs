//! Search benchmark (docs/PERFORMANCE.md, "Search"). Ignored by default; run with
//! `cargo test --release --test bench_search -- --ignored --nocapture`.
//! `ANCHORLOG_BENCH_SEARCH_EVENTS` (default 10,000,000) scales the search database down for a quick look;
//! `ANCHORLOG_BENCH_SEARCH_QUERIES` (default 500) is the number of queries per filter type.
//!
//! The search database is built directly with the store functions the indexer uses (no HTTP), with a
//! distribution shaped like an IdP log: 100,000 actors, 50,000 client IPs, 20 event types of skewed frequency,
//! 90 % success / 8 % failure / 2 % unknown, 4 sources, 10 realms, event times 30 days wide and a few minutes
//! out of seq order. Each query is the first page (limit 100) or a later page (from a cursor) of
//! `store::search::search`, exactly what `GET /v1/events` runs on the search database.

use anchorlog::formats::{NormalizedFields, Outcome};
use anchorlog::store::{self, search::SearchFilter};
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const ACTORS: u64 = 100_000;
const IPS: u64 = 50_000;
const T0: i64 = 1_730_000_000_000;
const SPAN_MS: i64 = 30 * 86_400_000;
const SOURCES: [&str; 4] = ["keycloak", "okta", "auth0", "json"];
/// Event types with their share in 1/10,000: LOGIN is half the log, the last ones are rare.
const TYPES: [(&str, u64); 20] = [
    ("LOGIN", 5000),
    ("CODE_TO_TOKEN", 1500),
    ("REFRESH_TOKEN", 1200),
    ("LOGOUT", 800),
    ("LOGIN_ERROR", 600),
    ("user.session.start", 300),
    ("s", 200),
    ("f", 100),
    ("fp", 80),
    ("UPDATE_PASSWORD", 60),
    ("sapi", 50),
    ("admin.USER-CREATE", 30),
    ("admin.USER-UPDATE", 30),
    ("group.user_membership.add", 20),
    ("REGISTER", 10),
    ("RESET_PASSWORD", 8),
    ("admin.ROLE_MAPPING-CREATE", 5),
    ("user.account.lock", 4),
    ("admin.REALM-UPDATE", 2),
    ("anchorlog.erasure", 1),
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn event(i: u64, n: u64, rng: &mut Rng) -> (&'static str, NormalizedFields) {
    let pick = rng.below(10_000);
    let mut acc = 0;
    let ty = TYPES.iter().find(|(_, share)| {
        acc += share;
        pick < acc
    });
    let ty = ty.map_or("LOGIN", |t| t.0);
    let o = rng.below(100);
    let outcome = if o < 90 {
        Outcome::Success
    } else if o < 98 {
        Outcome::Failure
    } else {
        Outcome::Unknown
    };
    let jitter = rng.below(600_000) as i64 - 300_000;
    let fields = NormalizedFields {
        event_time_ms: Some(T0 + (i as i128 * SPAN_MS as i128 / n.max(1) as i128) as i64 + jitter),
        event_type: Some(ty.to_string()),
        outcome,
        actor_id: (rng.below(10) != 0).then(|| format!("user-{:08}", rng.below(ACTORS))),
        actor_name: Some(format!("name-{}", i % 1000)),
        target: None,
        source_ip: (rng.below(10) < 8)
            .then(|| format!("10.{}.{}.{}", rng.below(IPS) / 65536, rng.below(256), rng.below(256))),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
        session_id: Some(format!("sess-{}", rng.next() % 1_000_000_000)),
        client_id: Some("account-console".into()),
        realm: Some(format!("realm-{}", rng.below(10))),
    };
    (SOURCES[rng.below(4) as usize], fields)
}

/// Builds `n` rows into the search database at `path` after running `ddl` on it (index variants); returns
/// rows/s of the inserts (the indexer's work).
fn build(path: &std::path::Path, n: u64, ddl: &str) -> f64 {
    let mut conn = store::open_search_writer(path).unwrap();
    conn.execute_batch(ddl).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        // The indexer's batch: up to 50,000 rows per transaction.
        let batch: Vec<(&str, NormalizedFields)> =
            (i..n.min(i + 50_000)).map(|j| event(j, n, &mut rng)).collect();
        let rows: Vec<(u64, &str, &NormalizedFields)> =
            batch.iter().enumerate().map(|(k, (s, f))| (i + k as u64, *s, f)).collect();
        let tx = conn.transaction().unwrap();
        store::insert_event_fields_many(&tx, &rows).unwrap();
        tx.commit().unwrap();
        i += batch.len() as u64;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn s(v: String) -> Option<String> {
    Some(v)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
#[ignore = "benchmark"]
fn bench_search_latency() {
    let n = env_u64("ANCHORLOG_BENCH_SEARCH_EVENTS", 10_000_000);
    let queries = env_u64("ANCHORLOG_BENCH_SEARCH_QUERIES", 500);
    let dir = tempfile::tempdir().unwrap();

    // Ingest cost of the index set: the search schema as it is (actor and IP in key tables filled in key
    // order), and with actor and IP indexes on the table added (schema v1 had those instead of the key tables;
    // the difference is what the key tables saved).
    let m = n.min(env_u64("ANCHORLOG_BENCH_SEARCH_INSERT_ROWS", 2_000_000));
    let v1_indexes = "CREATE INDEX event_fields_actor ON event_fields (actor_id, seq) WHERE actor_id IS NOT NULL;
                      CREATE INDEX event_fields_ip ON event_fields (source_ip, seq) WHERE source_ip IS NOT NULL;";
    let variants = [
        ("search set (SEARCH_SCHEMA)", String::new()),
        ("search set + in-table actor and IP indexes", v1_indexes.to_string()),
    ];
    let mut base = 0.0;
    for (i, (name, ddl)) in variants.iter().enumerate() {
        let rate = build(&dir.path().join(format!("v{i}.search.db")), m, ddl);
        if i == 0 {
            base = rate;
        }
        eprintln!(
            "RESULT insert {m} rows, {name:<48} {rate:>9.0} rows/s {:>7.2} µs/row ({:+.0} %)",
            1e6 / rate,
            (base / rate - 1.0) * 100.0
        );
        std::fs::remove_file(dir.path().join(format!("v{i}.search.db"))).ok();
    }
    let path = dir.path().join("big.search.db");
    let t = Instant::now();
    let rate = build(&path, n, "");
    eprintln!(
        "built {n} rows in {:.1} s ({rate:.0} rows/s), {} MB",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&path).unwrap().len() >> 20
    );
    let conn = store::open_search_reader(&path).unwrap();

    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    type Gen = Box<dyn FnMut(&mut Rng) -> SearchFilter>;
    let window = |len: i64| {
        move |r: &mut Rng| {
            let since = T0 + (r.below((SPAN_MS - len) as u64)) as i64;
            SearchFilter { since_ms: Some(since), until_ms: Some(since + len), ..Default::default() }
        }
    };
    let cases: Vec<(&str, Gen)> = vec![
        (
            "actor",
            Box::new(|r| SearchFilter {
                actor: s(format!("user-{:08}", r.below(ACTORS))),
                ..Default::default()
            }),
        ),
        (
            "ip",
            Box::new(|r| SearchFilter {
                ip: s(format!("10.{}.{}.{}", r.below(IPS) / 65536, r.below(256), r.below(256))),
                ..Default::default()
            }),
        ),
        (
            "type (common: LOGIN)",
            Box::new(|_| SearchFilter { event_type: s("LOGIN".into()), ..Default::default() }),
        ),
        (
            "type (random of 20)",
            Box::new(|r| SearchFilter {
                event_type: s(TYPES[r.below(20) as usize].0.into()),
                ..Default::default()
            }),
        ),
        (
            "type (rarest, 0.01 %)",
            Box::new(|_| SearchFilter { event_type: s("anchorlog.erasure".into()), ..Default::default() }),
        ),
        (
            "outcome=failure",
            Box::new(|_| SearchFilter { outcome: Some(Outcome::Failure), ..Default::default() }),
        ),
        (
            "outcome=unknown",
            Box::new(|_| SearchFilter { outcome: Some(Outcome::Unknown), ..Default::default() }),
        ),
        (
            "source",
            Box::new(|r| SearchFilter {
                source: s(SOURCES[r.below(4) as usize].into()),
                ..Default::default()
            }),
        ),
        (
            "realm",
            Box::new(|r| SearchFilter { realm: s(format!("realm-{}", r.below(10))), ..Default::default() }),
        ),
        ("since/until 1 h", Box::new(window(3_600_000))),
        ("since/until 1 day", Box::new(window(86_400_000))),
        (
            "since only",
            Box::new(|r| SearchFilter {
                since_ms: Some(T0 + r.below(SPAN_MS as u64) as i64),
                ..Default::default()
            }),
        ),
        (
            "actor + since (residual)",
            Box::new(|r| SearchFilter {
                actor: s(format!("user-{:08}", r.below(ACTORS))),
                since_ms: Some(T0 + SPAN_MS / 2),
                ..Default::default()
            }),
        ),
        (
            "realm + failure (residual)",
            Box::new(|r| SearchFilter {
                realm: s(format!("realm-{}", r.below(10))),
                outcome: Some(Outcome::Failure),
                ..Default::default()
            }),
        ),
        (
            "type rare + source (residual)",
            Box::new(|r| SearchFilter {
                event_type: s("admin.REALM-UPDATE".into()),
                source: s(SOURCES[r.below(4) as usize].into()),
                ..Default::default()
            }),
        ),
        // Worst case for one driving index: a common driver whose entries the other filter all rejects.
        (
            "type=LOGIN + source=nonexistent (empty)",
            Box::new(|_| SearchFilter {
                event_type: s("LOGIN".into()),
                source: s("no-such-source".into()),
                ..Default::default()
            }),
        ),
        (
            "1h window + type=LOGIN_ERROR (residual)",
            Box::new(move |r| {
                SearchFilter { event_type: None, ..window(3_600_000)(r) }.with_type("LOGIN_ERROR")
            }),
        ),
    ];
    eprintln!(
        "RESULT {:<40} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "filter", "hits/pg", "p50 ms", "p99 ms", "max ms", "page 2+"
    );
    for (name, mut gen) in cases {
        let mut first = Vec::new();
        let mut later = Vec::new();
        let mut hits = 0usize;
        for _ in 0..queries {
            let f = gen(&mut rng);
            let t = Instant::now();
            let page = store::search::search(&conn, &f, None, 100).unwrap();
            first.push(t.elapsed().as_secs_f64() * 1e3);
            hits += page.hits.len();
            // The next page, from the cursor the API would hand out.
            if let Some(c) = page.next {
                let t = Instant::now();
                store::search::search(&conn, &f, Some(&c), 100).unwrap();
                later.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        first.sort_by(f64::total_cmp);
        later.sort_by(f64::total_cmp);
        let p2 =
            if later.is_empty() { "—".to_string() } else { format!("{:.2}", percentile(&later, 0.99)) };
        eprintln!(
            "RESULT {name:<40} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            hits as f64 / queries as f64,
            percentile(&first, 0.5),
            percentile(&first, 0.99),
            first.last().unwrap(),
            p2
        );
    }
}

trait WithType {
    fn with_type(self, t: &str) -> Self;
}
impl WithType for SearchFilter {
    fn with_type(mut self, t: &str) -> Self {
        self.event_type = Some(t.into());
        self
    }
}
