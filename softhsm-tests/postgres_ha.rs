//! PostgreSQL beyond one server (issue 17, docs/HA.md): failover to a synchronous standby under load, PostgreSQL's
//! own backup and restore followed by `anchorlog verify --db`, and the writer-level throughput figures of
//! docs/PERFORMANCE.md (SQLite appender against `PgWriter`, with and without a synchronous standby).
//!
//! `serve` does not run on PostgreSQL yet, so these work at the writer level, in the shape the appliance will use:
//! producers send requests over an mpsc channel to ONE group-commit loop that owns the [`PgWriter`] and its
//! [`WriterLease`] ([`writer_loop`]); a producer's request is acknowledged when `append_group` returned, i.e. after
//! COMMIT returned.

use super::{assert_log_consistent, ev, install_log, kit, seal, APP, DB, ORIGIN, OWNER};
use anchorlog::ledger::appender::{Appended, AppenderHandle};
use anchorlog::ledger::event::NewEvent;
use anchorlog::store::pg::{self, read, LeaseOptions, PgConnect, PgError, PgWriter, WriterLease};
use kit::postgres::{PgCluster, PgServer};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The node name the writer loop takes the lease as.
const NODE: &str = "node-a";
/// How many requests the loop takes from its queue into one group at most.
const MAX_GROUP: usize = 1024;
/// How long the loop may take to find a writable server again after it lost its session.
const RECONNECT_WITHIN: Duration = Duration::from_secs(30);

/// One producer request waiting for the writer: its events and where the answer goes.
struct Request {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Appended>, String>>,
}

/// What the writer loop did: the epochs it wrote under (one per lease it took) and, per switch, how long no group
/// committed (from the failed group to the next committed one).
#[derive(Debug, Default)]
struct LoopReport {
    epochs: Vec<i64>,
    pauses: Vec<Duration>,
    groups: u64,
}

/// Takes the lease and opens the writer on whichever server `connect` reaches, retrying until `within` has passed
/// (after a failover the URL reaches no writable server until the standby is promoted).
async fn take_lease(connect: &PgConnect, within: Duration) -> (WriterLease, PgWriter) {
    let deadline = Instant::now() + within;
    loop {
        let attempt = async {
            let lease = WriterLease::acquire(connect, NODE, LeaseOptions::default()).await?;
            let writer = PgWriter::open(connect, &lease, ORIGIN).await?;
            Ok::<_, PgError>((lease, writer))
        }
        .await;
        match attempt {
            Ok(opened) => return opened,
            Err(e) => {
                assert!(Instant::now() < deadline, "no writable PostgreSQL within {within:?}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The group-commit writer loop: takes every request queued (up to [`MAX_GROUP`]) into one `append_group`, answers
/// each after COMMIT returned. A group that fails as a whole is answered with its error (nothing of it is
/// acknowledged; its producers retry) and the loop drops its sessions and takes the lease again on whichever server
/// `connect` reaches — after a failover, the promoted standby, under the next epoch. Ends when every sender is
/// gone; returns its report and its lease and writer.
async fn writer_loop(
    connect: PgConnect,
    mut rx: mpsc::Receiver<Request>,
) -> (LoopReport, WriterLease, PgWriter) {
    let mut report = LoopReport::default();
    let (mut lease, mut writer) = take_lease(&connect, RECONNECT_WITHIN).await;
    report.epochs.push(lease.epoch());
    let mut paused_since: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let requests: Vec<Vec<NewEvent>> = group.iter().map(|r| r.events.clone()).collect();
        match writer.append_group(&requests).await {
            Ok(results) => {
                report.groups += 1;
                if let Some(since) = paused_since.take() {
                    report.pauses.push(since.elapsed());
                }
                for (request, result) in group.into_iter().zip(results) {
                    let _ = request.reply.send(result.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                let text = e.to_string();
                for request in group {
                    let _ = request.reply.send(Err(text.clone()));
                }
                paused_since.get_or_insert_with(Instant::now);
                // The session (or the server) is gone: a new lease and writer on whatever server is writable now.
                drop((writer, lease));
                (lease, writer) = take_lease(&connect, RECONNECT_WITHIN).await;
                report.epochs.push(lease.epoch());
            }
        }
    }
    (report, lease, writer)
}

/// Sends `events` through the loop and waits for the answer.
async fn submit(tx: &mpsc::Sender<Request>, events: Vec<NewEvent>) -> Result<Vec<Appended>, String> {
    let (reply, answer) = oneshot::channel();
    tx.send(Request { events, reply }).await.map_err(|_| "the writer loop ended".to_string())?;
    answer.await.map_err(|_| "the writer loop dropped the request".to_string())?
}

/// The event producer `p` sends as its `i`-th, with a unique source id (`p{p}-e{i}`).
fn producer_event(p: usize, i: usize) -> NewEvent {
    let id = format!("p{p}-e{i}");
    let body = format!(
        "{{\"id\":\"{id}\",\"type\":\"LOGIN\",\"realm\":\"prod\",\"user\":\"user-{i}@example.com\",\
         \"ip\":\"203.0.113.{}\",\"client\":\"console\"}}",
        i % 250
    );
    ev(&format!("idp-{}", p % 4), Some(&id), body.as_bytes())
}

/// The event a producer sent with source id `id` (`p{p}-e{i}`), rebuilt byte for byte.
fn event_of(id: &str) -> NewEvent {
    let (p, i) = id.trim_start_matches('p').split_once("-e").unwrap();
    producer_event(p.parse().unwrap(), i.parse().unwrap())
}

/// A producer's acknowledged event: its id, the seq it was acknowledged with, whether that answer was a
/// de-duplication of an earlier (unacknowledged) attempt, and whether it was acknowledged before the kill.
#[derive(Debug, Clone)]
struct Ack {
    id: String,
    seq: u64,
    duplicate: bool,
    before_kill: bool,
}

/// "PostgreSQL failover loses no acknowledged event": 12 producers send single events (unique ids) through one
/// group-commit loop on a primary with a synchronous standby; the primary is killed with SIGKILL under load and the
/// standby promoted; the loop finds the promoted server through the multi-host URL, takes the lease again (the
/// epoch moves) and continues; producers retry what failed, with the same id (the writer de-duplicates). Every
/// acknowledged id is on the promoted server exactly once, at the seq it was acknowledged with; seqs are dense; the
/// log verifies with a head sealed after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_loses_no_acknowledged_event() {
    const PRODUCERS: usize = 12;
    const PER_PRODUCER: usize = 150;
    const KILL_AFTER_ACKS: usize = 500;
    let mut cluster = PgCluster::start_with_sync_standby();
    install_log(&cluster.primary).await;
    // What the appliance is configured with: both servers, only the writable one taken.
    let connect = PgConnect::plain(cluster.multi_host_url(APP, DB));
    let (tx, rx) = mpsc::channel::<Request>(4 * MAX_GROUP);
    let writer = tokio::spawn(writer_loop(connect.clone(), rx));

    let acked = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (tx, acked, killed, retries) = (tx.clone(), acked.clone(), killed.clone(), retries.clone());
        producers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..PER_PRODUCER {
                let event = producer_event(p, i);
                let id = event.source_id.clone().unwrap();
                let deadline = Instant::now() + Duration::from_secs(45);
                let got = loop {
                    match submit(&tx, vec![event.clone()]).await {
                        Ok(mut got) => break got.remove(0),
                        Err(e) => {
                            assert!(Instant::now() < deadline, "{id} not stored within 45 s: {e}");
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                // Read after the answer: one read after the kill started counts as after it (the check is then
                // made on fewer events, never on one that was not acknowledged before the kill).
                let before_kill = !killed.load(Ordering::SeqCst);
                acks.push(Ack { id, seq: got.seq, duplicate: got.duplicate, before_kill });
                acked.fetch_add(1, Ordering::SeqCst);
            }
            acks
        }));
    }
    drop(tx);

    let load_deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(Instant::now() < load_deadline, "{KILL_AFTER_ACKS} events not acknowledged within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_at_kill = acked.load(Ordering::SeqCst);
    let kill_started = Instant::now();
    tokio::task::block_in_place(|| {
        // Flagged first: every answer read after this counts as after the kill (conservative for the check).
        killed.store(true, Ordering::SeqCst);
        cluster.kill9_primary();
    });
    let killed_in = kill_started.elapsed();
    let promoted_in = tokio::task::block_in_place(|| cluster.promote_standby());

    let mut acks = Vec::new();
    for p in producers {
        acks.extend(p.await.unwrap());
    }
    let (report, lease, mut writer) = writer.await.unwrap();
    let switched_in = kill_started.elapsed();
    eprintln!(
        "failover: {acked_at_kill} acknowledged when the primary was killed; kill -9 took {killed_in:?}, promotion \
         {promoted_in:?}; the writer loop paused {:?} (first failed group to first commit on the promoted server); \
         epochs {:?}; {} groups; {} retried requests, {} answered as duplicates; all done {switched_in:?} after \
         the kill",
        report.pauses,
        report.epochs,
        report.groups,
        retries.load(Ordering::Relaxed),
        acks.iter().filter(|a| a.duplicate).count()
    );

    // The loop wrote under the first lease, then took the next one on the promoted server.
    assert_eq!(report.epochs.first(), Some(&1), "{report:?}");
    assert!(report.epochs.len() >= 2, "the loop never switched servers: {report:?}");
    // Each lease taken moved the epoch on (a lease taken whose writer then failed to open would skip one).
    assert!(report.epochs.windows(2).all(|w| w[0] < w[1]), "{report:?}");
    assert_eq!(lease.epoch(), *report.epochs.last().unwrap());
    assert!(!report.pauses.is_empty());

    // On the promoted server (the only one left): every event, once, at its acknowledged seq, seqs dense.
    let total = PRODUCERS * PER_PRODUCER;
    let promoted = pg::connect(&PgConnect::plain(cluster.standby.url(APP, DB))).await.unwrap();
    assert_log_consistent(&promoted, total as u64).await;
    let stored: Vec<(i64, String)> = promoted
        .query("SELECT seq, source_id FROM events ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
    for (seq, id) in &stored {
        by_id.entry(id.as_str()).or_default().push(*seq as u64);
    }
    let twice: BTreeMap<&str, &Vec<u64>> =
        by_id.iter().filter(|(_, s)| s.len() > 1).map(|(i, s)| (*i, s)).collect();
    assert!(twice.is_empty(), "ids stored more than once: {twice:?}");
    assert_eq!(acks.len(), total);
    for a in &acks {
        assert_eq!(by_id.get(a.id.as_str()), Some(&vec![a.seq]), "{a:?}");
    }
    let before_kill = acks.iter().filter(|a| a.before_kill).count();
    assert!(before_kill >= acked_at_kill, "{before_kill} < {acked_at_kill}");
    assert!(before_kill < total, "the kill came after the load: {before_kill} of {total}");

    // A producer that never got its answer sends again after the failover: the same id is the event already stored,
    // at its seq, and nothing new is appended (what a retried request whose COMMIT did reach the standby gets).
    let resent: Vec<&Ack> = acks.iter().filter(|a| a.before_kill).step_by(37).collect();
    let again =
        writer.append_group(&resent.iter().map(|a| vec![event_of(&a.id)]).collect::<Vec<_>>()).await.unwrap();
    for (a, got) in resent.iter().zip(again) {
        let got = got.unwrap();
        assert_eq!((got.len(), got[0].seq, got[0].duplicate), (1, a.seq, true), "{a:?}");
    }
    assert_eq!(writer.next_seq(), total as u64);

    // A head sealed on the promoted server, and the whole log verifies (events, erasures none, head, tree).
    let key = kit::log_builder::TestKey::new(9);
    let head = seal(&mut writer, &key, &mut None).await;
    assert_eq!(head.tree_size, total as u64);
    drop((writer, lease));
    let target = PgConnect::plain(cluster.standby.url(APP, DB));
    let public = key.public.clone();
    let (verified, _) = tokio::task::spawn_blocking(move || {
        anchorlog::verify::pg::verify_postgres(&target, &[public], Default::default(), None)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!((verified.events, verified.heads), (total as u64, 1));
    let (epoch, holder) = read::lease_epoch(&promoted).await.unwrap();
    assert_eq!((epoch, holder.as_deref()), (*report.epochs.last().unwrap(), Some(NODE)));
}

/// Runs `anchorlog verify --db URL --key KEY --json` (the real binary): exit code and its JSON.
fn verify_cli(url: &str, key: &std::path::Path) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorlog"))
        .args(["verify", "--db", url, "--key", key.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        serde_json::json!({"stdout": String::from_utf8_lossy(&out.stdout), "stderr": String::from_utf8_lossy(&out.stderr)})
    });
    (out.status.code().unwrap_or(-1), v)
}

/// "Backup and restore": a log on PostgreSQL (a kit-built SQLite log with heads, copied in as `migrate` does) is
/// backed up with `pg_basebackup` (tar, with its WAL), restored into a new data directory and started as a server
/// of its own; `anchorlog verify --db` passes on the restored copy with the same last head. A backup taken after an
/// insider changed an event's body behind disabled triggers restores just as well, and fails verification at that
/// exact seq: a backup preserves what the database holds, tampering included, and verify is what tells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_with_pg_basebackup_verifies_with_the_same_last_head() {
    use kit::log_builder::{build_log, TestKey};
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(4);
    let source = dir.path().join("anchorlog.db");
    build_log(&source, &key, 20, 500);
    let key_pem = key.write_pem(dir.path(), "signer.pem");

    let server = PgServer::start();
    let su = pg::connect(&PgConnect::plain(server.superuser_url())).await.unwrap();
    su.batch_execute(&format!("CREATE ROLE {OWNER} LOGIN; CREATE ROLE {APP} LOGIN;")).await.unwrap();
    su.batch_execute(&format!("CREATE DATABASE {DB} OWNER {OWNER}")).await.unwrap();
    let sqlite = rusqlite::Connection::open(&source).unwrap();
    let copied = pg::copy::copy_sqlite_log(&sqlite, &PgConnect::plain(server.url(OWNER, DB)), Some(APP))
        .await
        .unwrap();
    assert_eq!(copied.iter().find(|(t, _)| *t == "events").map(|(_, n)| *n), Some(10_000));

    let (code, original) = verify_cli(&server.url(APP, DB), &key_pem);
    assert_eq!(code, 0, "{original}");
    let report = &original["report"];
    assert_eq!((report["events"].as_u64(), report["heads"].as_u64()), (Some(10_000), Some(21)), "{original}");

    let started = Instant::now();
    let backup = tokio::task::block_in_place(|| server.base_backup());
    let restored = tokio::task::block_in_place(|| server.restore(&backup));
    eprintln!("pg_basebackup and restore of a 10,000-event log: {:?}", started.elapsed());
    assert_ne!(restored.port(), server.port());
    let (code, copy) = verify_cli(&restored.url(APP, DB), &key_pem);
    assert_eq!(code, 0, "{copy}");
    assert_eq!(copy["report"]["last_checkpoint"], report["last_checkpoint"], "{copy}");
    assert_eq!(
        (copy["report"]["events"].as_u64(), copy["report"]["heads"].as_u64()),
        (Some(10_000), Some(21)),
        "{copy}"
    );
    drop(restored);

    // The insider edits a body behind disabled triggers; the next backup carries the edit, and verify names it.
    let su_db = pg::connect(&PgConnect::plain(server.url(kit::postgres::SUPERUSER, DB))).await.unwrap();
    su_db
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET body = convert_to('{\"edited\":true}', 'UTF8') WHERE seq = 4321;
             ALTER TABLE events ENABLE TRIGGER USER;",
        )
        .await
        .unwrap();
    let backup = tokio::task::block_in_place(|| server.base_backup());
    let restored = tokio::task::block_in_place(|| server.restore(&backup));
    let (code, v) = verify_cli(&restored.url(APP, DB), &key_pem);
    assert_eq!((code, &v["seq"]), (3, &serde_json::json!(4321)), "{v}");
    assert_eq!(
        v["failure"], "event seq 4321: body does not match the entry's payload_sha256 (the body was altered)",
        "{v}"
    );
}

/// Where the measured producers send their requests: the SQLite appender (its own group commit) or the
/// PostgreSQL [`writer_loop`].
enum Sink {
    Sqlite(AppenderHandle),
    Pg(mpsc::Sender<Request>),
}

impl Sink {
    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, String> {
        match self {
            Sink::Sqlite(h) => h.append(events).await.map_err(|e| e.to_string()),
            Sink::Pg(tx) => submit(tx, events).await,
        }
    }
}

/// `tasks` concurrent producers each send `requests` requests of `per_request` events (unique ids prefixed
/// `tag`); returns the events per second from the first send to the last answer.
async fn measure(sink: &Arc<Sink>, tag: &str, tasks: usize, requests: usize, per_request: usize) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (sink, tag) = (sink.clone(), tag.to_string());
        handles.push(tokio::spawn(async move {
            for r in 0..requests {
                let events: Vec<NewEvent> = (0..per_request)
                    .map(|i| {
                        let id = format!("{tag}-t{t}-r{r}-i{i}");
                        let body = format!(
                            "{{\"id\":\"{id}\",\"type\":\"LOGIN\",\"realm\":\"prod\",\"user\":\"user-{i}@example.com\",\
                             \"ip\":\"203.0.113.{}\",\"client\":\"console\"}}",
                            i % 250
                        );
                        ev(&format!("idp-{}", t % 4), Some(&id), body.as_bytes())
                    })
                    .collect();
                let got = sink.append(events).await.unwrap();
                assert_eq!(got.len(), per_request);
                assert!(got.iter().all(|a| !a.duplicate));
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    (tasks * requests * per_request) as f64 / started.elapsed().as_secs_f64()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The writer-level figures of docs/PERFORMANCE.md ("PostgreSQL"): group-commit append throughput of the SQLite
/// appender (`AppenderHandle` over `store::open_writer`), `PgWriter` on a local PostgreSQL, and `PgWriter` on a
/// primary with a synchronous standby (same host), each behind the same kind of queue, for (a) requests of 100
/// events from 8 tasks and (b) single-event requests from 16 tasks. No HTTP, no TLS, no signing: the store's
/// commit path only. Prints figures; asserts none (the machine is shared). Run in a release build:
/// `cargo test --release --test postgres -- --ignored --nocapture measure_group_commit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run it in a release build (docs/PERFORMANCE.md)"]
async fn measure_group_commit_sqlite_vs_postgres() {
    const ROUNDS: usize = 3;
    const MEASURE_WITHIN: Duration = Duration::from_secs(180);
    let dir = tempfile::tempdir().unwrap();
    let (sqlite, sqlite_join) =
        AppenderHandle::start(anchorlog::store::open_writer(&dir.path().join("bench.db"), ORIGIN).unwrap())
            .unwrap();
    let local = PgServer::start();
    install_log(&local).await;
    let cluster = PgCluster::start_with_sync_standby();
    install_log(&cluster.primary).await;
    let mut loops = Vec::new();
    // Each store with the servers whose CPU it uses (SQLite's writer thread is in this process).
    let mut sinks: Vec<(&str, Arc<Sink>, Vec<&PgServer>)> =
        vec![("sqlite", Arc::new(Sink::Sqlite(sqlite)), vec![])];
    for (name, url, servers) in [
        ("pg-local", local.url(APP, DB), vec![&local]),
        ("pg-sync-standby", cluster.primary.url(APP, DB), vec![&cluster.primary, &cluster.standby]),
    ] {
        let (tx, rx) = mpsc::channel::<Request>(4 * MAX_GROUP);
        loops.push(tokio::spawn(writer_loop(PgConnect::plain(url), rx)));
        sinks.push((name, Arc::new(Sink::Pg(tx)), servers));
    }
    let own_cpu = || kit::postgres::process_cpu_seconds(std::process::id() as i32);
    println!("load average before: {}", loadavg());
    let mut figures: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        // Alternated: each round measures every store once per mode, so drifting load hits all of them.
        for (mode, tasks, requests, per_request) in
            [("batch-100 x8", 8, 50, 100), ("single x16", 16, 1000, 1)]
        {
            for (name, sink, servers) in &sinks {
                let tag = format!("{name}-{mode}-{round}").replace(' ', "");
                let server_cpu = || servers.iter().map(|s| s.cpu_seconds()).sum::<f64>();
                let (own_before, server_before) = (own_cpu(), server_cpu());
                // Bounded: a standby that died (its disk full, say) leaves every COMMIT waiting for ever.
                let eps =
                    tokio::time::timeout(MEASURE_WITHIN, measure(sink, &tag, tasks, requests, per_request))
                        .await
                        .unwrap_or_else(|_| panic!("{name} {mode}: not done within {MEASURE_WITHIN:?}"));
                // CPU milliseconds per 1,000 events: this process (producers, the writer loop or SQLite's writer
                // thread) and the PostgreSQL servers (primary and standby).
                let per_k = 1000.0 / (tasks * requests * per_request) as f64 * 1000.0;
                println!(
                    "round {round} {mode:<13} {name:<16} {eps:>10.0} events/s  cpu ms/1k events: client {:.0}, \
                     server {:.0}  (load {})",
                    (own_cpu() - own_before) * per_k,
                    (server_cpu() - server_before) * per_k,
                    loadavg()
                );
                figures.entry((mode, name)).or_default().push(eps);
            }
        }
    }
    println!("load average after: {}", loadavg());
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    for mode in ["batch-100 x8", "single x16"] {
        let base = median(&figures[&(mode, "sqlite")]);
        for (name, _, _) in &sinks {
            let m = median(&figures[&(mode, *name)]);
            println!("median {mode:<13} {name:<16} {m:>10.0} events/s  {:.2}x SQLite", m / base);
        }
    }
    drop(sinks);
    for l in loops {
        let (report, _, _) = l.await.unwrap();
        assert_eq!(report.epochs, vec![1]);
    }
    tokio::task::block_in_place(|| sqlite_join.join().unwrap());
}
