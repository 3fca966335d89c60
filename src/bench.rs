//! `anchorlog bench`: an end-to-end load generator over mTLS, and a raw-SQLite baseline with our schema.
//!
//! Modes: `single` (one event per POST, `concurrency` keep-alive connections), `batch` (NDJSON batches of
//! `batch_size`), and `sqlite` (no HTTP: the same rows written straight into a fresh database with the
//! appliance's schema and statements, in `batch_size`-row transactions with `synchronous=FULL` — the
//! ceiling the appliance is measured against). Every figure counts only acknowledged (durable) events.

use crate::client::Connection;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Load generator options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// `single`, `batch` or `sqlite`.
    #[arg(long, default_value = "single")]
    pub mode: String,
    /// Server address (single/batch).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// CA certificate (PEM) that signed the server certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) of a producer.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Total events to send.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Events per request in `batch` mode, rows per transaction in `sqlite` mode.
    #[arg(long, default_value_t = 1_000)]
    pub batch_size: usize,
    /// Stop after this many seconds even if not all events were sent.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    /// Database file for `sqlite` mode (must not exist).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

/// Load generator failure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Missing or inconsistent option.
    #[error("{0}")]
    Usage(String),
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Client failure.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// Storage failure (sqlite mode).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Mode.
    pub mode: String,
    /// Events acknowledged.
    pub events: u64,
    /// Requests sent.
    pub requests: u64,
    /// Non-2xx responses.
    pub errors: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Acknowledged events per second.
    pub events_per_second: f64,
    /// Median request latency (until the 2xx), ms.
    pub p50_ms: f64,
    /// 99th percentile request latency, ms.
    pub p99_ms: f64,
    /// Worst request latency, ms.
    pub max_ms: f64,
}

/// Runs the configured benchmark.
pub async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    match args.mode.as_str() {
        "single" | "batch" => http(args).await,
        "sqlite" => tokio::task::spawn_blocking(move || sqlite(&args))
            .await
            .map_err(|e| BenchError::Usage(e.to_string()))?,
        other => Err(BenchError::Usage(format!("unknown mode {other:?}; use single, batch or sqlite"))),
    }
}

/// The generic JSON event number `i` of run `run`. Its actor and client IP are drawn, scattered, from 100,000
/// actors and 65,536 addresses (a hash of `i`), as in an IdP's log: search indexes pay for random keys, and a
/// cyclic or sequential pattern would flatter them (docs/PERFORMANCE.md, "Normalized search fields").
fn event_body(run: u32, i: u64) -> String {
    // SplitMix64 finalizer: a cheap, deterministic scatter of i.
    let mut h = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    format!(
        "{{\"id\":\"bench-{run:08x}-{i}\",\"type\":\"LOGIN\",\"actor\":\"user{}\",\"outcome\":\"success\",\"ip\":\"10.0.{}.{}\",\"time\":{},\"details\":{{\"client\":\"web\",\"method\":\"password\",\"session\":\"s-{i}\"}}}}",
        h % 100_000,
        (h >> 20) % 256,
        (h >> 28) % 256,
        1_795_000_000_000u64 + i
    )
}

async fn http(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let need = |o: &Option<PathBuf>, n: &str| {
        o.clone().ok_or_else(|| BenchError::Usage(format!("--{n} is required")))
    };
    let tls = crate::tls::client_config(
        &need(&args.ca, "ca")?,
        &need(&args.cert, "cert")?,
        &need(&args.key, "key")?,
    )?;
    // A fresh id prefix per run: ids de-duplicate, so reusing them would measure the duplicate path.
    let run_id: u32 = rand::random();
    let batch = if args.mode == "batch" { args.batch_size.max(1) as u64 } else { 1 };
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let mut conn = Connection::connect(args.addr, &args.server_name, tls.clone()).await?;
        let next = next.clone();
        let total = args.events;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut acked, mut errors) = (0u64, 0u64);
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total || Instant::now() > deadline {
                    break;
                }
                let last = (first + batch).min(total);
                let (body, ctype) = if batch == 1 {
                    (event_body(run_id, first), "application/json")
                } else {
                    let mut s = String::with_capacity(256 * batch as usize);
                    for i in first..last {
                        s.push_str(&event_body(run_id, i));
                        s.push('\n');
                    }
                    (s, "application/x-ndjson")
                };
                let t = Instant::now();
                match conn.request("POST", "/v1/events", &[("content-type", ctype)], body.into_bytes()).await
                {
                    Ok(r) if r.status == 200 => acked += last - first,
                    _ => errors += 1,
                }
                latencies.push(t.elapsed());
            }
            (latencies, acked, errors)
        }));
    }
    let mut latencies = Vec::new();
    let (mut acked, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((l, a, e)) = t.await {
            latencies.extend(l);
            acked += a;
            errors += e;
        }
    }
    Ok(report(&args.mode, acked, errors, started.elapsed(), latencies))
}

fn sqlite(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    use anchorlog_core::entry::{payload_digest, AuthMethod, Entry};
    use anchorlog_core::merkle::leaf_hash;
    let db = args.db.clone().ok_or_else(|| BenchError::Usage("--db is required in sqlite mode".into()))?;
    if db.exists() {
        return Err(BenchError::Usage(format!("{} exists; give a new path", db.display())));
    }
    let mut conn = crate::store::open_writer(&db, "bench/sqlite")?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut seq = 0u64;
    let salt = [7u8; 32];
    while seq < args.events {
        let t = Instant::now();
        let tx = conn.transaction().map_err(crate::store::StoreError::from)?;
        let end = (seq + args.batch_size.max(1) as u64).min(args.events);
        for i in seq..end {
            let body = event_body(0, i);
            let source_id = format!("bench-00000000-{i}");
            let entry = Entry {
                seq: i,
                received_at_ns: crate::store::now_ns(),
                producer: "bench".into(),
                source: "events".into(),
                auth: AuthMethod::Mtls,
                format: "json".into(),
                source_id: Some(source_id.clone()),
                payload_sha256: payload_digest(&salt, body.as_bytes()),
            }
            .to_canonical_json();
            crate::store::insert_event(
                &tx,
                &crate::store::EventRow {
                    seq: i,
                    received_at_ns: 0,
                    producer: "bench",
                    source: "events",
                    format: "json",
                    source_id: Some(&source_id),
                    entry: &entry,
                    leaf_hash: &leaf_hash(&entry),
                    salt: &salt,
                    body: body.as_bytes(),
                },
            )?;
        }
        tx.commit().map_err(crate::store::StoreError::from)?;
        latencies.push(t.elapsed());
        seq = end;
    }
    Ok(report("sqlite", seq, 0, started.elapsed(), latencies))
}

fn report(
    mode: &str,
    events: u64,
    errors: u64,
    elapsed: Duration,
    mut latencies: Vec<Duration>,
) -> BenchReport {
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i.min(latencies.len() - 1)].as_secs_f64() * 1000.0
    };
    let seconds = elapsed.as_secs_f64();
    BenchReport {
        mode: mode.to_string(),
        events,
        requests: latencies.len() as u64,
        errors,
        seconds,
        events_per_second: if seconds > 0.0 { events as f64 / seconds } else { 0.0 },
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    }
}
