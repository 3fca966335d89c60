//! `anchorlog serve` on PostgreSQL (`[storage] backend = "postgres"`, docs/HA.md): two real appliance processes,
//! each with its own SoftHSM key, on one real PostgreSQL log.

use super::*;
use kit::appliance::{Appliance, Options};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Producers posting at once.
const PRODUCERS: usize = 16;

/// A node's options: the log on `db` as the application role, this node's name, the keyring of both nodes.
fn node_options(db: &Db, node: &str, ring: &Path) -> Options {
    let storage = format!(
        "backend = \"postgres\"\nurl = \"{}\"\nnode = \"{node}\"\nkeyring_file = \"{}\"\nlease_ttl_s = 3\nlease_poll_ms = 200\n",
        db.server.url(APP, DB),
        ring.display()
    );
    Options {
        origin: ORIGIN.into(),
        record_appliance_events: true,
        seal_interval_ms: 200,
        config_filter: Some(Arc::new(move |text: String| {
            let text: String = text
                .lines()
                .map(|l| if l.starts_with("database = ") { storage.clone() } else { format!("{l}\n") })
                .collect();
            format!("{text}\n[search]\nenabled = false\n")
        })),
        ..Options::default()
    }
}

/// Both nodes prepared (tokens, keys, certificates), the keyring file holding both public keys.
fn two_nodes(db: &Db, dir: &Path) -> (Appliance, Appliance, PathBuf) {
    let ring = dir.join("ring.pem");
    let a = Appliance::prepare(node_options(db, "node-a", &ring));
    let b = Appliance::prepare(node_options(db, "node-b", &ring));
    let pems = [a.key_pem(), b.key_pem()].map(|p| std::fs::read_to_string(p).unwrap()).concat();
    std::fs::write(&ring, pems).unwrap();
    (a, b, ring)
}

async fn readyz(a: &Appliance) -> serde_json::Value {
    a.audit_get("/readyz").await.json()
}

async fn wait_role(a: &Appliance, role: &str, within: Duration) -> Duration {
    let began = Instant::now();
    loop {
        let r = readyz(a).await;
        if r["role"] == role {
            return began.elapsed();
        }
        assert!(began.elapsed() < within, "not {role} within {within:?}: {r}\n{}", a.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One producer's outcome: the ids acknowledged (with their seqs) and the answers that were not 200.
#[derive(Default)]
struct Posted {
    acked: Vec<(String, u64)>,
    not_writer: u64,
    unreachable: u64,
}

/// Posts `per_producer` single events with unique ids, each to the node it last reached, moving to the other node
/// on a connection error or a 503 — as a producer behind a TCP load balancer does — and retrying the same event
/// (same id) until it is acknowledged.
async fn produce(nodes: [Arc<Appliance>; 2], p: usize, per_producer: usize, stop: Arc<AtomicBool>) -> Posted {
    let mut out = Posted::default();
    let mut at = 0usize;
    let mut conn = None;
    for n in 0..per_producer {
        let id = format!("p{p}-{n}");
        let body = format!("{{\"type\":\"LOGIN\",\"id\":\"{id}\",\"user\":\"u{p}\",\"n\":{n}}}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "event {id} not acknowledged within 60 s");
            if conn.is_none() {
                match nodes[at].try_connect("producer").await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        out.unreachable += 1;
                        at = 1 - at;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match c.post_json("/v1/events", body.as_bytes()).await {
                Ok(r) if r.status == 200 => {
                    let seq = r.json()["events"][0]["seq"].as_u64().expect("seq");
                    out.acked.push((id, seq));
                    break;
                }
                Ok(r) if r.status == 503 => {
                    assert_eq!(r.json()["code"], "not_writer", "{}", String::from_utf8_lossy(&r.body));
                    out.not_writer += 1;
                    conn = None;
                    at = 1 - at;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(r) => panic!("event {id}: {} {}", r.status, String::from_utf8_lossy(&r.body)),
                Err(_) => {
                    out.unreachable += 1;
                    conn = None;
                    at = 1 - at;
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    out
}

/// Failover of the appliance: two nodes on one PostgreSQL, 16 producers posting single events, `kill -9` of the
/// writer node under load. The standby takes the lease within 10 s, reconciles and records its takeover; producers
/// that retry on either node get every event stored exactly once (ids de-duplicated); no acknowledged event is
/// lost; the standby refused writes with 503 `not_writer` before; and `anchorlog verify --db postgres://…` with
/// both nodes' keys passes over heads signed by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_after_kill_9_of_the_writer_and_no_acknowledged_event_is_lost() {
    let db = Db::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b, ring) = two_nodes(&db, tmp.path());
    a.spawn().expect("node A starts");
    wait_role(&a, "writer", Duration::from_secs(20)).await;
    b.spawn().expect("node B starts");
    wait_role(&b, "standby", Duration::from_secs(10)).await;
    let standby = readyz(&b).await;
    assert_eq!(
        (standby["role"].as_str(), standby["status"].as_str()),
        (Some("standby"), Some("not_ready")),
        "{standby}"
    );
    assert_eq!(standby["reasons"][0]["code"], "standby", "{standby}");

    // A standby stores nothing: 503 not_writer with Retry-After, and serves the heads.
    let mut to_b = b.connect("producer").await;
    let r = to_b.post_json("/v1/events", b"{\"type\":\"LOGIN\",\"id\":\"to-standby\"}").await.unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "not_writer");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    a.wait_for_head(1).await;
    assert_eq!(b.audit_get("/v1/heads/latest").await.status, 200);

    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(AtomicBool::new(false));
    let per_producer = 400;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(produce([a.clone(), b.clone()], p, per_producer, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    a.signal("KILL");
    let took = wait_role(&b, "writer", Duration::from_secs(10)).await;
    eprintln!("the standby took over {:?} after kill -9 of the writer", killed.elapsed().max(took));
    let mut posted = Posted::default();
    for t in producers {
        let p = tokio::time::timeout(Duration::from_secs(120), t).await.expect("producers finish").unwrap();
        posted.acked.extend(p.acked);
        posted.not_writer += p.not_writer;
        posted.unreachable += p.unreachable;
    }
    assert_eq!(posted.acked.len(), PRODUCERS * per_producer);
    assert!(posted.unreachable > 0, "some producers saw the writer die");

    // Every acknowledged id is stored exactly once, at the seq it was acknowledged with.
    let app = db.app().await;
    let rows = app
        .query("SELECT source_id, seq FROM events WHERE producer = 'producer-1' AND source_id LIKE 'p%'", &[])
        .await
        .unwrap();
    let stored: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows.len(), stored.len(), "an id is stored twice");
    assert_eq!(stored.len(), PRODUCERS * per_producer);
    for (id, seq) in &posted.acked {
        assert_eq!(stored.get(id).copied(), Some(*seq as i64), "acknowledged {id} at seq {seq}");
    }
    let events = read::event_count(&app).await.unwrap();
    b.wait_for_head(events).await;
    let takeovers: i64 = app
        .query_one(
            "SELECT count(*) FROM events WHERE producer = 'anchorlog' AND convert_from(body, 'UTF8') LIKE '%\"anchorlog.takeover\"%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(takeovers, 2, "A's and B's takeover records");

    // The whole log verifies with both nodes' keys; heads of both keys are in it.
    let out = std::process::Command::new(kit::appliance::bin())
        .args(["verify", "--db", &db.server.url(APP, DB), "--keyring", ring.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}");
    let signers = report["report"]["signers"].as_array().cloned().unwrap_or_default();
    assert!(signers.len() >= 2, "heads of both keys: {report}");
    eprintln!(
        "failover: {} events acknowledged by {PRODUCERS} producers, {} not_writer answers, {} unreachable, {} takeovers",
        posted.acked.len(),
        posted.not_writer,
        posted.unreachable,
        takeovers
    );
    stop.store(true, Ordering::Relaxed);
}

/// Split brain: the writer frozen with SIGSTOP past its lease's time to live while the standby takes over, then
/// resumed. Its next commit is refused by the fence, nothing it writes lands, and it steps down and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_writer_resumed_after_a_takeover_is_fenced_out_and_steps_down() {
    let db = Db::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b, ring) = two_nodes(&db, tmp.path());
    a.spawn().expect("node A starts");
    wait_role(&a, "writer", Duration::from_secs(20)).await;
    b.spawn().expect("node B starts");
    wait_role(&b, "standby", Duration::from_secs(10)).await;
    // A connection to A opened before the freeze: the request is read when A resumes.
    let mut to_a = a.connect("producer").await;
    let r = to_a.post_json("/v1/events", b"{\"type\":\"LOGIN\",\"id\":\"before\"}").await.unwrap();
    assert_eq!(r.status, 200);

    a.signal("STOP");
    let took = wait_role(&b, "writer", Duration::from_secs(15)).await;
    eprintln!("B took over {took:?} after A was frozen (lease TTL 3 s)");
    let mut to_b = b.connect("producer").await;
    let r = to_b.post_json("/v1/events", b"{\"type\":\"LOGIN\",\"id\":\"on-b\"}").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    a.signal("CONT");
    let late = to_a.post_json("/v1/events", b"{\"type\":\"LOGIN\",\"id\":\"late-on-a\"}").await.unwrap();
    assert_eq!(late.status, 503, "{}", String::from_utf8_lossy(&late.body));
    assert_eq!(late.json()["code"], "not_writer");
    let log = a.wait_log("stepped down: this node is no longer the writer", 1, Duration::from_secs(10)).await;
    let line =
        log.lines().find(|l| l.contains("stepped down: this node is no longer the writer")).unwrap_or("");
    // Whichever A notices first after SIGCONT: the fence refusing its first commit (a group, a head) or its lease
    // keepalive failing; either way nothing it sent after the takeover was committed.
    assert!(line.contains("fenced out") || line.contains("lease"), "{line}");
    eprintln!("A: {line}");
    let app = db.app().await;
    let landed: i64 =
        app.query_one("SELECT count(*) FROM events WHERE source_id = 'late-on-a'", &[]).await.unwrap().get(0);
    assert_eq!(landed, 0, "nothing the fenced-out node wrote landed");
    assert_eq!(readyz(&a).await["role"], "standby");
    // B goes on; the log verifies with both keys.
    let events = read::event_count(&app).await.unwrap();
    b.wait_for_head(events).await;
    let out = std::process::Command::new(kit::appliance::bin())
        .args(["verify", "--db", &db.server.url(APP, DB), "--keyring", ring.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    a.kill();
    b.kill();
}

/// A rolling restart: the writer stopped cleanly (SIGTERM) records its stop, seals it and hands the lease over by
/// ending its session; the standby takes over at once, and its takeover record right after the stop record is a
/// new run for every verifier (a clean stop may be followed only by a start or a takeover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_of_the_writer_hands_the_log_over_and_the_log_verifies() {
    let db = Db::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b, ring) = two_nodes(&db, tmp.path());
    a.spawn().expect("node A starts");
    wait_role(&a, "writer", Duration::from_secs(20)).await;
    b.spawn().expect("node B starts");
    wait_role(&b, "standby", Duration::from_secs(10)).await;
    let mut to_a = a.connect("producer").await;
    for n in 0..10 {
        let body = format!("{{\"type\":\"LOGIN\",\"id\":\"a-{n}\"}}");
        assert_eq!(to_a.post_json("/v1/events", body.as_bytes()).await.unwrap().status, 200);
    }
    drop(to_a);
    let checked = a.anchorlog(&["check-config", "--config", a.config_path().to_str().unwrap()]);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{said}{}", String::from_utf8_lossy(&checked.stderr));
    assert!(
        said.contains(&format!("  database: PostgreSQL {} (11 events, ", db.server.url(APP, DB))),
        "{said}"
    );
    let status = a.sigterm();
    assert!(status.success(), "A stops cleanly: {status:?}\n{}", a.server_log());
    let took = wait_role(&b, "writer", Duration::from_secs(10)).await;
    eprintln!("B took over {took:?} after A's clean stop");
    let app = db.app().await;
    let own: Vec<(i64, String)> = app
        .query(
            "SELECT seq, convert_from(body, 'UTF8')::json->>'type' FROM events WHERE producer = 'anchorlog' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let kinds: Vec<&str> = own.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(kinds, ["anchorlog.takeover", "anchorlog.stop", "anchorlog.takeover"], "{own:?}");
    assert_eq!((own[1].0, own[2].0), (11, 12), "the stop follows A's events, B's takeover follows the stop");
    let mut to_b = b.connect("producer").await;
    assert_eq!(
        to_b.post_json("/v1/events", b"{\"type\":\"LOGIN\",\"id\":\"b-0\"}").await.unwrap().status,
        200
    );
    b.wait_for_head(14).await;
    let out = std::process::Command::new(kit::appliance::bin())
        .args(["verify", "--db", &db.server.url(APP, DB), "--keyring", ring.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}");
    let appliance = &report["report"]["appliance"];
    assert_eq!(
        (appliance["takeovers"].as_u64(), appliance["stops"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    b.kill();
}

/// A node refuses to start on a database that is not this log: no anchorlog schema, or another origin; it names
/// what is wrong and what to do, and binds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_database_without_the_log_or_of_another_origin() {
    let db = Db::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ring = tmp.path().join("ring.pem");
    // The server's own `postgres` database holds no anchorlog schema.
    let mut options = node_options(&db, "node-a", &ring);
    let url = db.server.url(APP, DB);
    let other = db.server.url(APP, "postgres");
    let filter = options.config_filter.take().unwrap();
    options.config_filter = Some(Arc::new(move |t: String| filter(t).replace(&url, &other)));
    let mut a = Appliance::prepare(options);
    std::fs::write(&ring, std::fs::read_to_string(a.key_pem()).unwrap()).unwrap();
    let err = a.spawn().expect_err("no log in that database");
    assert!(err.contains("check storage.url, storage.password_file and the server"), "{err}");
    assert!(err.contains("anchorlog migrate"), "{err}");
    // The right database, another origin.
    let mut options = node_options(&db, "node-b", &ring);
    options.origin = "another.test/log".into();
    let mut b = Appliance::prepare(options);
    let err = b.spawn().expect_err("another origin");
    assert!(err.contains("pg.test/log") && err.contains("another.test/log"), "{err}");
}

/// The end-to-end scenarios of e2e.rs (softhsm-tests/scenarios.rs), on a PostgreSQL log with the same assertions.
mod scenarios_on_postgres {
    use crate::kit::pg_log::PgLog;
    use crate::kit::Options;
    use crate::scenarios;

    async fn on_postgres() -> (PgLog, Options) {
        let options = Options::default();
        let log = PgLog::create(&options.origin).await;
        let options = Options { postgres: Some(log.app_url()), ..options };
        (log, options)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_concurrent_events_are_sealed_verified_and_openssl_checks_the_head() {
        let (_log, options) = on_postgres().await;
        scenarios::thousand_concurrent_events_are_sealed_verified_and_openssl_checks_the_head(options).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_under_load_loses_no_acknowledged_event() {
        let (_log, options) = on_postgres().await;
        scenarios::sigterm_under_load_loses_no_acknowledged_event(options).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_log_seals_heartbeats_and_restart_continues_the_chain() {
        let (_log, options) = on_postgres().await;
        scenarios::idle_log_seals_heartbeats_and_restart_continues_the_chain(options).await
    }
}
