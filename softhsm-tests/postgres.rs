//! The PostgreSQL storage (issue 17, first slice: src/store/pg) on a real PostgreSQL 15 per test (kit/postgres.rs):
//! append-only by trigger and by privilege, dense seq through failed requests and groups, the writer lease's fence
//! against a node that lost the lease, and durability of committed groups across `kill -9` of the postmaster.
//!
//! Roles as docs/HA.md sets them up: the superuser creates `anchorlog_owner` (owns the database and the schema) and
//! `anchorlog_app` (what the appliance runs as); the owner installs the schema and grants the app role.

#[path = "postgres_ha.rs"]
mod ha;
mod kit;
mod pg_node;
mod pg_serve;
mod postgres_reads;
mod scenarios;

use anchorlog::formats::NormalizedFields;
use anchorlog::ledger::event::NewEvent;
use anchorlog::store::pg::{
    self, read, schema, tree, LeaseOptions, PgCommand, PgConnect, PgDone, PgError, PgWriter, WriterLease,
};
use anchorlog::store::StoredTimestamp;
use anchorlog_core::entry::{payload_digest, AuthMethod, Entry};
use anchorlog_core::merkle;
use anchorlog_core::stored::StoredHead;
use kit::postgres::PgServer;
use std::time::{Duration, Instant};

const ORIGIN: &str = "pg.test/log";
const OWNER: &str = "anchorlog_owner";
const APP: &str = "anchorlog_app";
const DB: &str = "anchorlog";

/// A server with the anchorlog database, its two roles and the schema installed.
struct Db {
    server: PgServer,
}

impl Db {
    async fn start() -> Db {
        let server = PgServer::start();
        install_log(&server).await;
        Db { server }
    }

    fn app_connect(&self) -> PgConnect {
        PgConnect::plain(self.server.url(APP, DB))
    }

    async fn owner(&self) -> tokio_postgres::Client {
        pg::connect(&PgConnect::plain(self.server.url(OWNER, DB))).await.expect("owner session")
    }

    async fn app(&self) -> tokio_postgres::Client {
        pg::connect(&self.app_connect()).await.expect("app session")
    }

    async fn superuser(&self) -> tokio_postgres::Client {
        pg::connect(&PgConnect::plain(self.server.url(kit::postgres::SUPERUSER, DB)))
            .await
            .expect("superuser")
    }

    /// Takes the lease for `node` and opens its writer (both as the app role).
    async fn writer(&self, node: &str) -> (WriterLease, PgWriter) {
        let lease = WriterLease::acquire(&self.app_connect(), node, LeaseOptions::default()).await.unwrap();
        let writer = PgWriter::open(&self.app_connect(), &lease, ORIGIN).await.unwrap();
        (lease, writer)
    }
}

/// Creates the two roles and the anchorlog database on `server` and installs the schema as the owner.
async fn install_log(server: &PgServer) {
    let su = pg::connect(&PgConnect::plain(server.superuser_url())).await.expect("superuser session");
    // Role and database names are fixed here (DDL takes no parameters); docs/HA.md has the same statements.
    su.batch_execute(&format!("CREATE ROLE {OWNER} LOGIN; CREATE ROLE {APP} LOGIN;")).await.unwrap();
    su.batch_execute(&format!("CREATE DATABASE {DB} OWNER {OWNER}")).await.unwrap();
    let mut owner = pg::connect(&PgConnect::plain(server.url(OWNER, DB))).await.expect("owner session");
    assert_eq!(schema::install(&mut owner, ORIGIN).await.unwrap(), schema::PG_SCHEMA_VERSION);
    schema::grant_app(&owner, APP).await.unwrap();
    // Installing again finds the schema and changes nothing.
    assert_eq!(schema::install(&mut owner, ORIGIN).await.unwrap(), schema::PG_SCHEMA_VERSION);
}

fn ev(producer: &str, id: Option<&str>, body: &[u8]) -> NewEvent {
    let salt: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ body.len() as u8);
    NewEvent {
        received_at_ns: 1_765_000_000_000_000_000,
        producer: producer.into(),
        source: "events".into(),
        auth: AuthMethod::Mtls,
        format: "json",
        source_id: id.map(str::to_string),
        salt,
        body: body.to_vec(),
        payload_sha256: payload_digest(&salt, body),
        fields: NormalizedFields::default(),
    }
}

fn seqs(r: &[anchorlog::ledger::appender::Appended]) -> Vec<u64> {
    r.iter().map(|a| a.seq).collect()
}

/// The server's message of a refused statement.
fn refusal(r: Result<u64, tokio_postgres::Error>) -> (String, String) {
    let e = r.expect_err("the statement must be refused");
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn count(c: &tokio_postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

/// Checks the stored log: seqs dense from 0, every leaf hash the hash of its entry, every entry naming its seq, and
/// the stored tree's root over `n` leaves equal to the root computed from the leaves.
async fn assert_log_consistent(c: &tokio_postgres::Client, n: u64) {
    assert_eq!(read::event_count(c).await.unwrap(), n);
    let events = read::events(c, 0, n).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
    for e in &events {
        assert_eq!(e.leaf_hash, merkle::leaf_hash(&e.entry), "seq {}", e.seq);
        assert_eq!(Entry::parse(&e.entry).unwrap().seq, e.seq);
    }
    let leaves = read::leaf_hashes(c, 0, n).await.unwrap();
    assert_eq!(tree::load_frontier(c, n).await.unwrap().root(), merkle::root_of(&leaves));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_data_is_refused_by_trigger_to_the_owner_and_by_privilege_to_the_app_role() {
    let db = Db::start().await;
    let (_lease, mut w) = db.writer("node-a").await;
    let groups = w
        .append_group(&[
            vec![ev("idp", None, br#"{"user":"alice"}"#), ev("idp", Some("x"), b"{}")],
            vec![ev("idp", None, b"{}")],
        ])
        .await
        .unwrap();
    assert_eq!(
        groups.iter().map(|r| seqs(r.as_ref().unwrap())).collect::<Vec<_>>(),
        vec![vec![0, 1], vec![2]]
    );
    let head = StoredHead {
        height: 0,
        tree_size: 3,
        root: w.frontier().root(),
        checkpoint: "pg.test/log\n3\n...\n".into(),
        signature: vec![0x30, 1, 2],
        key_id: "k1".into(),
        sealed_at_ms: 1_765_000_000_000,
    };
    w.insert_head(&head).await.unwrap();
    let token = StoredTimestamp {
        height: 0,
        response: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        gen_time_ms: 1_765_000_000_100,
        gen_time: "2025-12-06T05:46:40.1Z".into(),
        tsa_url: "http://tsa.test/".into(),
        stored_at_ms: 1_765_000_000_200,
    };
    w.insert_timestamp(&token).await.unwrap();
    assert_eq!(read::last_head(w.client()).await.unwrap(), Some(head.clone()));
    assert_eq!(read::heads_without_timestamp(w.client(), 0, 10).await.unwrap(), vec![]);
    let before = read::events(w.client(), 0, 3).await.unwrap();

    // The owner: every change to sealed data is refused by the triggers, with their exact messages.
    let owner = db.owner().await;
    let append_only = ("P0001".to_string(), "anchorlog: events are append-only".to_string());
    let erasure_only = (
        "P0001".to_string(),
        "anchorlog: events are append-only (only a recorded erasure may clear body and salt)".to_string(),
    );
    assert_eq!(
        refusal(owner.execute("UPDATE events SET body = '\\x00' WHERE seq = 0", &[]).await),
        erasure_only
    );
    assert_eq!(
        refusal(owner.execute("UPDATE events SET producer = 'mallory' WHERE seq = 1", &[]).await),
        erasure_only
    );
    // The erasure path itself without an erasure record: refused too.
    assert_eq!(
        refusal(owner.execute("UPDATE events SET body = NULL, salt = NULL WHERE seq = 0", &[]).await),
        erasure_only
    );
    assert_eq!(refusal(owner.execute("DELETE FROM events WHERE seq = 2", &[]).await), append_only);
    assert_eq!(refusal(owner.execute("TRUNCATE events CASCADE", &[]).await), append_only);
    let msg = |m: &str| ("P0001".to_string(), m.to_string());
    assert_eq!(
        refusal(owner.execute("UPDATE heads SET signature = '\\x00'", &[]).await),
        msg("anchorlog: heads are append-only")
    );
    assert_eq!(
        refusal(owner.execute("DELETE FROM heads", &[]).await),
        msg("anchorlog: heads are append-only")
    );
    assert_eq!(
        refusal(owner.execute("UPDATE timestamps SET response = '\\x00'", &[]).await),
        msg("anchorlog: timestamps are append-only")
    );
    assert_eq!(
        refusal(owner.execute("DELETE FROM nodes", &[]).await),
        msg("anchorlog: tree nodes are append-only")
    );
    assert_eq!(
        refusal(owner.execute("UPDATE log_meta SET value = 'other/log' WHERE key = 'origin'", &[]).await),
        msg("anchorlog: log metadata is append-only")
    );
    assert_eq!(
        refusal(owner.execute("UPDATE writer_lease SET epoch = 0", &[]).await),
        msg("anchorlog: the writer lease epoch only moves forward by one")
    );
    assert_eq!(
        refusal(
            owner
                .execute(
                    "INSERT INTO events (seq, received_at_ns, producer, source, format, entry, leaf_hash) \
                     VALUES (5, 0, 'p', 's', 'json', '\\x00', $1)",
                    &[&vec![0u8; 32]],
                )
                .await
        ),
        msg("anchorlog: event seq must be the next dense sequence number")
    );
    // An erasure row without its erasure record (seq 2 is an ordinary event, and sealed).
    assert_eq!(
        refusal(
            owner
                .execute(
                    "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (0, 2, 'a', 'r', 1)",
                    &[],
                )
                .await
        ),
        msg(
            "anchorlog: an erasure row is only written with its erasure record: the newest, unsealed \
             anchorlog.erasure event naming this seq, for a present payload that is not an appliance record"
        )
    );

    // The application role: no DELETE, no TRUNCATE, no UPDATE but events (body, salt) — refused by privilege
    // (SQLSTATE 42501) before any trigger runs.
    let app = db.app().await;
    let denied = |table: &str| ("42501".to_string(), format!("permission denied for table {table}"));
    assert_eq!(refusal(app.execute("DELETE FROM events WHERE seq = 2", &[]).await), denied("events"));
    assert_eq!(refusal(app.execute("UPDATE events SET producer = 'mallory'", &[]).await), denied("events"));
    assert_eq!(refusal(app.execute("TRUNCATE events", &[]).await), denied("events"));
    assert_eq!(refusal(app.execute("DELETE FROM heads", &[]).await), denied("heads"));
    assert_eq!(refusal(app.execute("UPDATE heads SET key_id = 'k2'", &[]).await), denied("heads"));
    assert_eq!(refusal(app.execute("DELETE FROM timestamps", &[]).await), denied("timestamps"));
    assert_eq!(refusal(app.execute("DELETE FROM nodes", &[]).await), denied("nodes"));
    assert_eq!(refusal(app.execute("DELETE FROM writer_lease", &[]).await), denied("writer_lease"));
    assert_eq!(
        refusal(app.execute("INSERT INTO schema_version VALUES (9, 0)", &[]).await),
        denied("schema_version")
    );
    let (code, message) = refusal(app.execute("DROP TABLE events", &[]).await);
    assert_eq!((code.as_str(), message.as_str()), ("42501", "must be owner of table events"));
    // The one UPDATE it holds (events body and salt, for erasure) still meets the trigger.
    assert_eq!(
        refusal(app.execute("UPDATE events SET body = NULL, salt = NULL WHERE seq = 0", &[]).await),
        erasure_only
    );

    // The controlled path works, once: the erasure record appended as the newest, unsealed event, then the
    // erasures row and the cleared payload in one transaction.
    let record = anchorlog::ledger::internal::internal_event(&anchorlog::ledger::internal::erasure_body(
        0,
        "admin-1",
        "art. 17 request 42",
    ));
    let logged = w.append_group(&[vec![record]]).await.unwrap();
    assert_eq!(seqs(logged[0].as_ref().unwrap()), vec![3]);
    let mut app = app;
    let tx = app.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (0, 3, 'admin-1', 'art. 17', 1)",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(tx.execute("UPDATE events SET body = NULL, salt = NULL WHERE seq = 0", &[]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let erased = read::event(&app, 0).await.unwrap().unwrap();
    assert_eq!((erased.body, erased.salt, erased.entry), (None, None, before[0].entry.clone()));
    assert_eq!(
        refusal(owner.execute("UPDATE events SET body = '\\x01' WHERE seq = 0", &[]).await),
        erasure_only
    );

    // Nothing else changed, byte for byte.
    assert_eq!(read::events(&app, 1, 3).await.unwrap(), before[1..].to_vec());
    assert_eq!(read::heads_from(&app, 0).await.unwrap(), vec![head]);
    assert_eq!(read::timestamp(&app, 0).await.unwrap(), Some(token));
    assert_eq!(count(&app, "events").await, 4);
    assert_log_consistent(&app, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_stays_dense_across_groups_failed_requests_and_a_failed_group() {
    let db = Db::start().await;
    let (lease, mut w) = db.writer("node-a").await;
    let first = w
        .append_group(&[
            vec![ev("idp", Some("a"), b"{}"), ev("idp", None, b"{}")],
            vec![ev("idp", None, b"[1]")],
        ])
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|r| seqs(r.as_ref().unwrap())).collect::<Vec<_>>(),
        vec![vec![0, 1], vec![2]]
    );

    // A bad request inside a group (a NUL byte in a TEXT column: PostgreSQL refuses it) fails alone; the requests
    // before and after it are stored, densely, in the same commit; a duplicate id answers with the first seq.
    let second = w
        .append_group(&[
            vec![ev("idp", None, b"{}")],
            vec![ev("idp", None, b"{}"), ev("bad\0producer", None, b"{}")],
            vec![ev("idp", Some("a"), b"{}"), ev("idp", Some("b"), b"{}"), ev("idp", None, b"{}")],
        ])
        .await
        .unwrap();
    assert_eq!(seqs(second[0].as_ref().unwrap()), vec![3]);
    let bad = second[1].as_ref().unwrap_err();
    assert_eq!(bad.db_message(), Some("invalid byte sequence for encoding \"UTF8\": 0x00"), "{bad}");
    let third = second[2].as_ref().unwrap();
    assert_eq!(
        third.iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>(),
        vec![(0, true), (4, false), (5, false)]
    );
    assert_eq!(third[0].leaf_hash, first[0].as_ref().unwrap()[0].leaf_hash);
    assert_eq!(w.next_seq(), 6);
    let app = db.app().await;
    assert_log_consistent(&app, 6).await;

    // A group that fails as a whole (its session killed before COMMIT): nothing of it is stored, and the writer
    // opened again continues at the next dense seq.
    let su = db.superuser().await;
    let writer_pid: i32 = w.client().query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let killed: bool = su.query_one("SELECT pg_terminate_backend($1)", &[&writer_pid]).await.unwrap().get(0);
    assert!(killed);
    let failed =
        w.append_group(&[vec![ev("idp", None, b"{}")], vec![ev("idp", None, b"{}")]]).await.unwrap_err();
    assert!(matches!(failed, PgError::GroupCommit { first_seq: 6, .. }), "{failed}");
    assert_eq!(w.next_seq(), 6, "the writer's counter is rewound");
    assert_eq!(count(&app, "events").await, 6);
    let mut w = PgWriter::open(&db.app_connect(), &lease, ORIGIN).await.unwrap();
    assert_eq!(w.next_seq(), 6);
    let after = w.append_group(&[vec![ev("idp", None, b"{}"), ev("idp", None, b"{}")]]).await.unwrap();
    assert_eq!(seqs(after[0].as_ref().unwrap()), vec![6, 7]);
    // An id new in this group, twice in one request and again in the next: stored once, at the first seq.
    let twice = w
        .append_group(&[
            vec![ev("idp", Some("c"), b"{}"), ev("idp", None, b"{}"), ev("idp", Some("c"), b"{}")],
            vec![ev("idp", Some("c"), b"{}")],
        ])
        .await
        .unwrap();
    let flags = |r: &Result<Vec<anchorlog::ledger::appender::Appended>, PgError>| {
        r.as_ref().unwrap().iter().map(|a| (a.seq, a.duplicate)).collect::<Vec<_>>()
    };
    assert_eq!(flags(&twice[0]), vec![(8, false), (9, false), (8, true)]);
    assert_eq!(flags(&twice[1]), vec![(8, true)]);
    assert_log_consistent(&app, 10).await;

    // The stored tree answers roots and RFC 9162 proofs exactly as the leaves do.
    let leaves = read::leaf_hashes(&app, 0, 10).await.unwrap();
    let from_leaves = |s: u64, l: u64| -> Result<merkle::Hash, PgError> {
        Ok(merkle::root_of(&leaves[s as usize..(s + l) as usize]))
    };
    for size in 1..=10u64 {
        assert_eq!(tree::root_at(&app, size).await.unwrap(), merkle::root_of(&leaves[..size as usize]));
        assert_eq!(
            tree::consistency_proof(&app, size, 10).await.unwrap(),
            merkle::consistency_proof_with(size, 10, from_leaves).unwrap()
        );
        let index = size - 1;
        assert_eq!(
            tree::inclusion_proof(&app, index, 10).await.unwrap(),
            merkle::inclusion_proof_with(index, 10, from_leaves).unwrap()
        );
    }
    assert!(matches!(
        tree::inclusion_proof(&app, 10, 10).await,
        Err(PgError::Merkle(merkle::MerkleError::IndexOutOfRange { index: 10, size: 10 }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_mixed_commands_commits_once_and_each_refusal_stays_alone() {
    let db = Db::start().await;
    let (_lease, mut w) = db.writer("node-a").await;
    w.append_group(&[vec![ev("idp", None, br#"{"user":"alice"}"#), ev("idp", None, b"{}")]]).await.unwrap();
    let head = StoredHead {
        height: 0,
        tree_size: 2,
        root: w.frontier().root(),
        checkpoint: "c0".into(),
        signature: vec![1],
        key_id: "k1".into(),
        sealed_at_ms: 1,
    };
    let token = |height| StoredTimestamp {
        height,
        response: vec![0x30, 0],
        gen_time_ms: 2,
        gen_time: "1970-01-01T00:00:00.002Z".into(),
        tsa_url: "http://tsa.test/".into(),
        stored_at_ms: 3,
    };
    let cosignature = |height, line: &str| anchorlog::store::cosignatures::StoredCosignature {
        height,
        witness: "w.test".into(),
        key_id: 0x0102_abcd,
        line: format!("— w.test {line}"),
        timestamp: 1_765_000_000,
        stored_at_ms: 4,
    };
    let cursor = anchorlog::store::cosignatures::WitnessCursor {
        witness: "w.test+0102abcd+AAAA".into(),
        tree_size: 2,
        height: 0,
    };
    let erase =
        |seq| PgCommand::Erase { seq, erased_by: "admin-1".into(), reason: "art. 17 request 42".into() };
    // As the appender's writer thread gets them: a head, appends (one of them bad, which makes the group replay
    // with savepoints), erasures (one good, three refused), tokens (one for a head that does not exist), a head
    // out of sequence, cosignatures (one resubmitted, one of a head that does not exist).
    let done = w
        .apply_group(&[
            PgCommand::StoreHead(head.clone()),
            PgCommand::Append(vec![ev("idp", None, b"{}")]),
            erase(0),
            PgCommand::Append(vec![ev("bad\0producer", None, b"{}")]),
            erase(0),
            erase(99),
            erase(3),
            PgCommand::StoreTimestamp(token(7)),
            PgCommand::StoreTimestamp(token(0)),
            PgCommand::StoreHead(StoredHead { height: 5, ..head.clone() }),
            PgCommand::Append(vec![ev("idp", None, b"{}")]),
            PgCommand::StoreCosignature(cosignature(0, "first"), cursor.clone()),
            PgCommand::StoreCosignature(cosignature(0, "resubmitted"), cursor.clone()),
            PgCommand::StoreCosignature(cosignature(9, "no such head"), cursor.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(done.len(), 14);
    assert!(matches!(done[0], PgDone::Stored(Ok(()))));
    assert!(matches!(&done[1], PgDone::Append(Ok(a)) if seqs(a) == vec![2]));
    let PgDone::Erase(Ok((record, leaf))) = &done[2] else { panic!("{:?}", done[2]) };
    assert_eq!((record.seq, record.erasure_seq, record.erased_by.as_str()), (0, 3, "admin-1"));
    assert!(
        matches!(&done[3], PgDone::Append(Err(e)) if e.db_message() == Some("invalid byte sequence for encoding \"UTF8\": 0x00"))
    );
    assert!(matches!(done[4], PgDone::Erase(Err(PgError::AlreadyErased(0)))), "{:?}", done[4]);
    assert!(matches!(done[5], PgDone::Erase(Err(PgError::NoSuchEvent(99)))), "{:?}", done[5]);
    assert!(matches!(done[6], PgDone::Erase(Err(PgError::ApplianceRecord(3)))), "{:?}", done[6]);
    let PgDone::Stored(Err(fk)) = &done[7] else { panic!("{:?}", done[7]) };
    assert_eq!(
        fk.db_message(),
        Some("insert or update on table \"timestamps\" violates foreign key constraint \"timestamps_height_fkey\"")
    );
    assert!(matches!(done[8], PgDone::Stored(Ok(()))));
    let PgDone::Stored(Err(gap)) = &done[9] else { panic!("{:?}", done[9]) };
    assert_eq!(gap.db_message(), Some("anchorlog: head height must be the next dense height"));
    assert!(matches!(&done[10], PgDone::Append(Ok(a)) if seqs(a) == vec![4]));
    assert!(matches!(done[11], PgDone::Stored(Ok(()))));
    assert!(matches!(done[12], PgDone::Stored(Ok(()))), "a resubmitted cosignature is ignored, not an error");
    let PgDone::Stored(Err(no_head)) = &done[13] else { panic!("{:?}", done[13]) };
    assert_eq!(
        no_head.db_message(),
        Some("insert or update on table \"cosignatures\" violates foreign key constraint \"cosignatures_height_fkey\"")
    );

    let app = db.app().await;
    assert_log_consistent(&app, 5).await;
    let erased = read::event(&app, 0).await.unwrap().unwrap();
    assert_eq!((erased.body, erased.salt), (None, None));
    let logged = read::event(&app, 3).await.unwrap().unwrap();
    assert_eq!(&logged.leaf_hash, leaf);
    let body: serde_json::Value = serde_json::from_slice(&logged.body.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"type": "anchorlog.erasure", "erased_seq": 0, "erased_by": "admin-1", "reason": "art. 17 request 42"})
    );
    assert_eq!(read::heads_from(&app, 0).await.unwrap(), vec![head.clone()]);
    assert_eq!(read::covering_head(&app, 1).await.unwrap(), Some(head));
    assert_eq!(read::covering_head(&app, 2).await.unwrap(), None);
    assert_eq!(read::timestamp(&app, 0).await.unwrap(), Some(token(0)));
    w.record_public_key("k1", "-----BEGIN PUBLIC KEY-----\nA\n").await.unwrap();
    w.record_public_key("k1", "-----BEGIN PUBLIC KEY-----\nB\n").await.unwrap();
    assert_eq!(
        read::public_key_pem(&app, "k1").await.unwrap().as_deref(),
        Some("-----BEGIN PUBLIC KEY-----\nA\n")
    );
    assert_eq!(read::public_key_pem(&app, "k2").await.unwrap(), None);
    assert_eq!(read::cosignatures_of_head(&app, 0).await.unwrap(), vec![cosignature(0, "first")]);
    assert_eq!(read::cursor(&app, &cursor.witness).await.unwrap(), Some(cursor.clone()));
    assert_eq!((count(&app, "erasures").await, count(&app, "timestamps").await), (1, 1));
    // A second erasure of the same payload in a later group is refused by the writer, and by the trigger if tried
    // behind the writer's back.
    let again = w.apply_group(&[erase(0)]).await.unwrap();
    assert!(matches!(again[0], PgDone::Erase(Err(PgError::AlreadyErased(0)))));
    assert_eq!(w.next_seq(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_version_and_origin_are_checked_and_a_foreign_database_is_left_alone() {
    let db = Db::start().await;
    let app = db.app().await;
    assert_eq!(schema::check(&app, ORIGIN).await.unwrap(), schema::PG_SCHEMA_VERSION);
    let other = schema::check(&app, "other/log").await.unwrap_err();
    assert_eq!(
        other.to_string(),
        "PostgreSQL database: the log in this database has origin \"pg.test/log\" but the configuration says \
         \"other/log\"; an origin never changes for a log"
    );
    let lease = WriterLease::acquire(&db.app_connect(), "node-a", LeaseOptions::default()).await.unwrap();
    assert!(matches!(
        PgWriter::open(&db.app_connect(), &lease, "other/log").await,
        Err(PgError::Incompatible { .. })
    ));
    // A version written by a newer build is refused, not guessed at.
    let owner = db.owner().await;
    owner.execute("INSERT INTO schema_version (version, applied_at_ms) VALUES (99, 0)", &[]).await.unwrap();
    let newer = schema::check(&app, ORIGIN).await.unwrap_err();
    assert!(newer.to_string().contains("schema version 99 was written by a newer anchorlog"), "{newer}");
    // A database that holds other tables and no anchorlog schema is not touched.
    let su = db.superuser().await;
    su.batch_execute(&format!("CREATE DATABASE foreign_db OWNER {OWNER}")).await.unwrap();
    let mut foreign = pg::connect(&PgConnect::plain(db.server.url(OWNER, "foreign_db"))).await.unwrap();
    foreign.batch_execute("CREATE TABLE accounts (id BIGINT PRIMARY KEY)").await.unwrap();
    let refused = schema::install(&mut foreign, ORIGIN).await.unwrap_err();
    assert!(refused.to_string().contains("holds tables but no anchorlog schema_version"), "{refused}");
    let tables: i64 = foreign
        .query_one("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
}

/// Waits (bounded) until `node` can take the lease.
async fn acquire_within(db: &Db, node: &str, options: LeaseOptions, within: Duration) -> WriterLease {
    let deadline = Instant::now() + within;
    loop {
        match WriterLease::acquire(&db.app_connect(), node, options).await {
            Ok(lease) => return lease,
            Err(PgError::LeaseHeld { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{node} did not take the lease within {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_session_ended_is_fenced_out_and_nothing_of_it_lands() {
    let db = Db::start().await;
    let (lease_a, mut a) = db.writer("node-a").await;
    assert_eq!(lease_a.epoch(), 1);
    a.append_group(&[vec![ev("idp", None, b"{}"), ev("idp", None, b"{}")]]).await.unwrap();

    // B cannot take the lease while A's lease session lives.
    match WriterLease::acquire(&db.app_connect(), "node-b", LeaseOptions::default()).await {
        Err(PgError::LeaseHeld { holder, epoch }) => {
            assert_eq!((holder.as_deref(), epoch), (Some("node-a"), 1))
        }
        other => panic!("B must not get the lease while A holds it: {other:?}"),
    }

    // A is cut off: its lease session is terminated (A's write session lives on and A does not know).
    let su = db.superuser().await;
    let killed: bool =
        su.query_one("SELECT pg_terminate_backend($1)", &[&lease_a.backend_pid()]).await.unwrap().get(0);
    assert!(killed);
    let lease_b = acquire_within(&db, "node-b", LeaseOptions::default(), Duration::from_secs(10)).await;
    assert_eq!(lease_b.epoch(), 2);
    let app = db.app().await;
    assert_eq!(read::lease_epoch(&app).await.unwrap(), (2, Some("node-b".to_string())));

    // A's next group, head and token are refused by the fence; nothing of them lands.
    let refused = a
        .append_group(&[vec![ev("late-a", None, b"{}")], vec![ev("late-a", None, b"{}")]])
        .await
        .unwrap_err();
    assert!(refused.is_fenced_out(), "{refused}");
    assert!(
        matches!(&refused, PgError::GroupCommit { first_seq: 2, source } if matches!(**source, PgError::FencedOut { ours: 1, current: 2 })),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "group commit from seq 2 failed, nothing of it was stored: fenced out: this node's writer lease (epoch 1) \
         was taken over (current epoch 2); nothing was committed, and this node must stop writing"
    );
    let head = StoredHead {
        height: 0,
        tree_size: 2,
        root: a.frontier().root(),
        checkpoint: "c".into(),
        signature: vec![1],
        key_id: "ka".into(),
        sealed_at_ms: 1,
    };
    assert!(matches!(a.insert_head(&head).await, Err(PgError::FencedOut { ours: 1, current: 2 })));
    assert!(matches!(lease_a.keepalive().await, Err(PgError::LeaseLost(_))));
    // Nor can A open a writer again under its old lease.
    assert!(matches!(
        PgWriter::open(&db.app_connect(), &lease_a, ORIGIN).await,
        Err(PgError::FencedOut { ours: 1, current: 2 })
    ));
    assert_eq!(count(&app, "events").await, 2);
    let late: i64 =
        app.query_one("SELECT count(*) FROM events WHERE producer = 'late-a'", &[]).await.unwrap().get(0);
    assert_eq!(late, 0);
    assert_eq!(count(&app, "heads").await, 0);

    // B continues the dense seq and the tree where A's last commit left them.
    let mut b = PgWriter::open(&db.app_connect(), &lease_b, ORIGIN).await.unwrap();
    assert_eq!((b.next_seq(), b.frontier().root()), (2, a.frontier().root()));
    let got = b.append_group(&[vec![ev("idp", None, b"{}")], vec![ev("idp", None, b"{}")]]).await.unwrap();
    assert_eq!(got.iter().map(|r| seqs(r.as_ref().unwrap())).collect::<Vec<_>>(), vec![vec![2], vec![3]]);
    b.insert_head(&StoredHead { tree_size: 4, root: b.frontier().root(), key_id: "kb".into(), ..head })
        .await
        .unwrap();
    lease_b.keepalive().await.unwrap();
    // A, still fenced, stays refused after B's writes.
    assert!(a.append_group(&[vec![ev("late-a", None, b"{}")]]).await.unwrap_err().is_fenced_out());
    assert_log_consistent(&app, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_an_in_flight_write_and_a_silent_holder_loses_the_lease_to_its_ttl() {
    let db = Db::start().await;
    let short = LeaseOptions { ttl: Duration::from_millis(1500), lock_wait: Duration::from_millis(300) };
    let lease_a = WriterLease::acquire(&db.app_connect(), "node-a", short).await.unwrap();
    // A keeps its lease alive for longer than the TTL: B is refused all along.
    for _ in 0..8 {
        lease_a.keepalive().await.unwrap();
        assert!(matches!(
            WriterLease::acquire(&db.app_connect(), "node-b", short).await,
            Err(PgError::LeaseHeld { .. })
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A write transaction of A is in flight (the fence's FOR SHARE taken, not yet committed) when A goes silent.
    let mut app_a = db.app().await;
    let tx = app_a.transaction().await.unwrap();
    let epoch: i64 =
        tx.query_one("SELECT epoch FROM writer_lease WHERE id = 1 FOR SHARE", &[]).await.unwrap().get(0);
    assert_eq!(epoch, 1);
    // A sends no keepalive: after the TTL the server ends its lease session and the advisory lock is free, but B's
    // epoch bump waits for A's open transaction and gives up after its lock_wait.
    let started = Instant::now();
    let blocked = loop {
        match WriterLease::acquire(&db.app_connect(), "node-b", short).await {
            Err(PgError::LeaseHeld { .. }) => {
                assert!(started.elapsed() < Duration::from_secs(10), "A's lease outlived its TTL");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    let e = blocked.expect_err("B's bump must wait for A's in-flight transaction");
    assert_eq!(e.db_message(), Some("canceling statement due to lock timeout"), "{e}");
    assert!(lease_a.is_lost() || lease_a.keepalive().await.is_err());
    // A's transaction commits (under epoch 1, which was current for all of it); then B takes epoch 2.
    tx.commit().await.unwrap();
    let lease_b = acquire_within(&db, "node-b", short, Duration::from_secs(10)).await;
    assert_eq!(lease_b.epoch(), 2);
    assert_eq!(read::lease_epoch(&app_a).await.unwrap(), (2, Some("node-b".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_groups_survive_kill_9_of_the_postmaster_byte_for_byte() {
    let mut db = Db::start().await;
    let (lease, mut w) = db.writer("node-a").await;
    let mut acknowledged = Vec::new();
    for g in 0..12u32 {
        let requests: Vec<Vec<NewEvent>> = (0..=g % 4)
            .map(|r| {
                (0..=r)
                    .map(|i| {
                        let body: Vec<u8> = format!("{{\"g\":{g},\"r\":{r},\"i\":{i}}}").into_bytes();
                        let id = format!("id-{g}-{r}-{i}");
                        ev("idp", if i % 2 == 0 { Some(id.as_str()) } else { None }, &body)
                    })
                    .collect()
            })
            .collect();
        for (request, result) in requests.iter().zip(w.append_group(&requests).await.unwrap()) {
            for (sent, got) in request.iter().zip(result.unwrap()) {
                acknowledged.push((got, sent.clone()));
            }
        }
    }
    let n = w.next_seq();
    assert_eq!(n as usize, acknowledged.len());
    let head = StoredHead {
        height: 0,
        tree_size: n,
        root: w.frontier().root(),
        checkpoint: format!("{ORIGIN}\n{n}\n"),
        signature: vec![0x30, 0x44, 0xff, 0x00],
        key_id: "k1".into(),
        sealed_at_ms: 7,
    };
    w.insert_head(&head).await.unwrap();
    let stored_before = read::events(w.client(), 0, n).await.unwrap();
    drop((w, lease));

    db.server.kill9();
    db.server.restart();

    let app = db.app().await;
    let stored = read::events(&app, 0, n).await.unwrap();
    assert_eq!(stored, stored_before);
    for (got, sent) in &acknowledged {
        let e = &stored[got.seq as usize];
        assert_eq!(
            (e.leaf_hash, e.salt.as_deref(), e.body.as_deref()),
            (got.leaf_hash, Some(&sent.salt[..]), Some(&sent.body[..]))
        );
    }
    assert_eq!(read::heads_from(&app, 0).await.unwrap(), vec![head.clone()]);
    assert_log_consistent(&app, n).await;
    // The lease died with the server; the next holder gets the next epoch and continues the log.
    let (lease, mut w) = db.writer("node-a").await;
    assert_eq!((lease.epoch(), w.next_seq(), w.frontier().root()), (2, n, head.root));
    let next = w.append_group(&[vec![ev("idp", None, b"{}")]]).await.unwrap();
    assert_eq!(seqs(next[0].as_ref().unwrap()), vec![n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_server_verifies_its_certificate_with_rustls() {
    let (server, ca) = PgServer::start_with_tls();
    let tls =
        |roots| PgConnect { tls: pg::PgTls::Require { roots }, ..PgConnect::plain(server.superuser_url()) };
    let client = pg::connect(&tls(vec![ca.clone()])).await.unwrap();
    let (ssl, version): (bool, String) = {
        let row = client
            .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(ssl, "the session is encrypted");
    assert!(version == "TLSv1.3" || version == "TLSv1.2", "{version}");
    // A server whose certificate another CA issued is refused before any credential is sent.
    let (_other, other_ca) = PgServer::start_with_tls();
    let refused = pg::connect(&tls(vec![other_ca])).await.unwrap_err();
    assert!(matches!(refused, PgError::Connect { .. }), "{refused:?}");
    assert!(refused.to_string().contains("invalid peer certificate"), "{refused}");
    // No roots: refused at configuration, nothing is sent.
    assert!(matches!(pg::connect(&tls(vec![])).await, Err(PgError::Tls(_))));
}

/// Seals a head over everything `w` committed, signed by `key`: the checkpoint the appliance's sealer would sign.
async fn seal(
    w: &mut PgWriter,
    key: &kit::log_builder::TestKey,
    prev: &mut Option<StoredHead>,
) -> StoredHead {
    use anchorlog_core::head::Checkpoint;
    let (height, prev_hash, time_ms) = match prev {
        Some(p) => (p.height + 1, Checkpoint::text_hash(&p.checkpoint), p.sealed_at_ms + 1000),
        None => (0, [0; 32], anchorlog::store::now_ms() - 60_000),
    };
    let frontier = w.frontier();
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        tree_size: frontier.size(),
        root: frontier.root(),
        height,
        prev: prev_hash,
        time_ms,
        counter: None,
    };
    let text = cp.to_text().unwrap();
    let head = StoredHead {
        height,
        tree_size: cp.tree_size,
        root: cp.root,
        signature: key.sign(text.as_bytes()),
        checkpoint: text,
        key_id: key.public.key_id.clone(),
        sealed_at_ms: time_ms,
    };
    w.insert_head(&head).await.unwrap();
    *prev = Some(head.clone());
    head
}

/// `anchorlog verify --db postgres://…` (any role that may read the log) walks a PostgreSQL log as it walks SQLite:
/// every event, erasure, head and the stored tree; a keyring lets two nodes' keys sign; and what an insider with
/// the superuser changes behind the triggers is named at its exact seq or height.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_walks_a_postgres_log_and_names_the_record_an_insider_changed() {
    use kit::log_builder::TestKey;
    let db = Db::start().await;
    let (node_a, node_b) = (TestKey::new(1), TestKey::new(2));
    let (_lease, mut w) = db.writer("node-a").await;
    let mut prev = None;
    seal(&mut w, &node_a, &mut prev).await; // head 0, size 0
    for block in 0..3 {
        let requests: Vec<Vec<NewEvent>> = (0..10)
            .map(|i| vec![ev("idp", None, format!("{{\"block\":{block},\"i\":{i}}}").as_bytes())])
            .collect();
        w.append_group(&requests).await.unwrap();
        seal(&mut w, &node_a, &mut prev).await; // heads 1..=3, sizes 10, 20, 30
    }
    let done = w
        .apply_group(&[PgCommand::Erase {
            seq: 5,
            erased_by: "dpo".into(),
            reason: "GDPR art. 17 request".into(),
        }])
        .await
        .unwrap();
    assert!(matches!(&done[0], PgDone::Erase(Ok((record, _))) if record.erasure_seq == 30), "{done:?}");
    seal(&mut w, &node_b, &mut prev).await; // head 4 (size 31), by node B after a takeover
    w.append_group(&[vec![ev("idp", None, b"{\"late\":1}")], vec![ev("idp", None, b"{\"late\":2}")]])
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key_a = node_a.write_pem(dir.path(), "a.pem");
    let ring = dir.path().join("nodes.pem");
    std::fs::write(&ring, format!("{}{}", node_a.pem(), node_b.pem())).unwrap();
    let url = db.server.url(APP, DB);
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--db", url.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorlog")).args(&args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            serde_json::json!({"stdout": String::from_utf8_lossy(&out.stdout), "stderr": String::from_utf8_lossy(&out.stderr)})
        });
        (out.status.code().unwrap_or(-1), v)
    };

    let (code, v) = verify(&["--keyring", ring.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    let r = &v["report"];
    assert_eq!(
        (r["events"].as_u64(), r["heads"].as_u64(), r["erased"].as_u64()),
        (Some(33), Some(5), Some(1)),
        "{v}"
    );
    assert_eq!(r["unsealed_events"], 2, "{v}");
    assert_eq!(r["origin"], ORIGIN, "{v}");
    assert_eq!(r["appliance"]["erasures"], 1, "{v}");
    assert_eq!(r["signers"][1]["key_id"], node_b.public.key_id.as_str(), "{v}");
    assert_eq!(r["signers"][1]["from_height"], 4, "{v}");
    // A read-only auditor's role, granted as docs/HA.md says, is enough.
    let su = db.superuser().await;
    su.batch_execute("CREATE ROLE anchorlog_auditor LOGIN").await.unwrap();
    db.owner()
        .await
        .batch_execute(
            "GRANT SELECT ON log_meta, events, nodes, heads, timestamps, erasures, cosignatures TO anchorlog_auditor",
        )
        .await
        .unwrap();
    let auditor_url = db.server.url("anchorlog_auditor", DB);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorlog"))
        .args(["verify", "--db", &auditor_url, "--keyring", ring.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Node A's key alone: node B's head is a change of key no rotation record announced.
    let (code, v) = verify(&["--key", key_a.to_str().unwrap()]);
    assert_eq!((code, &v["height"]), (3, &serde_json::json!(4)), "{v}");
    // Cosignature checks are not done on PostgreSQL yet: asked for, they are refused, never skipped silently.
    let (code, v) = verify(&["--keyring", ring.to_str().unwrap(), "--witness", "w+01234567+AAAA"]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("its cosignatures and counter attestation are not checked yet"),
        "{v}"
    );

    // The insider, as the superuser, switches the triggers off and edits a body; then a head's root.
    let su = db.superuser().await;
    su.batch_execute(
        "ALTER TABLE events DISABLE TRIGGER USER; UPDATE events SET body = convert_to('{\"block\":1,\"i\":9}', 'UTF8') WHERE seq = 12;",
    )
    .await
    .unwrap();
    let (code, v) = verify(&["--keyring", ring.to_str().unwrap()]);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["seq"], 12, "{v}");
    assert_eq!(
        v["failure"],
        "event seq 12: body does not match the entry's payload_sha256 (the body was altered)"
    );
    su.batch_execute("UPDATE events SET body = convert_to('{\"block\":1,\"i\":2}', 'UTF8') WHERE seq = 12;")
        .await
        .unwrap();
    let (code, v) = verify(&["--keyring", ring.to_str().unwrap()]);
    assert_eq!(code, 0, "the original body back: {v}");
    // A deleted event.
    su.batch_execute("DELETE FROM events WHERE seq = 17;").await.unwrap();
    let (code, v) = verify(&["--keyring", ring.to_str().unwrap()]);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["seq"], 17, "{v}");
    assert!(v["failure"].as_str().unwrap().contains("missing"), "{v}");
}

/// `anchorlog migrate` of a 100,000-event SQLite log with heads, RFC 3161 tokens and an erasure into an empty
/// PostgreSQL database: the copy verifies with the same heads and the same token bytes, the application role can
/// read it, a second migration into it is refused, and a source that does not verify is not copied at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_a_sqlite_log_and_the_copy_verifies_with_the_same_heads() {
    use kit::log_builder::{tampered_db, LogBuilder, OpensslTsa, TestKey};
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(3);
    let source = dir.path().join("anchorlog.db");
    let mut b = LogBuilder::create(&source, &key);
    b.head();
    for _ in 0..100 {
        b.events(1000);
        b.head();
    }
    let record = b.erase(4242, "dpo", "GDPR art. 17 request");
    let last = b.head();
    assert_eq!((record, last.height, last.tree_size), (100_000, 101, 100_001));
    drop(b);
    let tsa = OpensslTsa::new();
    tsa.stamp_heads(&source, [0, 1, 50, 100, 101]);
    let key_pem = key.write_pem(dir.path(), "signer.pem");

    let db = Db::start().await;
    let su = db.superuser().await;
    // One statement each: CREATE DATABASE cannot run inside the implicit transaction of a multi-statement batch.
    for name in ["migrated", "refused"] {
        su.batch_execute(&format!("CREATE DATABASE {name} OWNER {OWNER}")).await.unwrap();
    }
    let anchorlog = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorlog")).args(args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), v, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let from = format!("sqlite:{}", source.display());
    let to = db.server.url(OWNER, "migrated");
    let migrate = |to: &str| {
        anchorlog(&[
            "migrate",
            "--from",
            &from,
            "--to",
            to,
            "--grant-app",
            APP,
            "--key",
            key_pem.to_str().unwrap(),
            "--json",
        ])
    };
    let (code, v, err) = migrate(&to);
    assert_eq!(code, 0, "{v}{err}");
    let copied = &v["copied"];
    assert_eq!(
        (
            copied["events"].as_u64(),
            copied["heads"].as_u64(),
            copied["timestamps"].as_u64(),
            copied["erasures"].as_u64()
        ),
        (Some(100_001), Some(102), Some(5), Some(1)),
        "{v}"
    );
    assert_eq!(
        (v["events"].as_u64(), v["heads"].as_u64(), v["erased"].as_u64()),
        (Some(100_001), Some(102), Some(1))
    );
    eprintln!("migrated 100,001 events in {} s", v["seconds"]);

    // The application role reads and verifies the copy: the same last head as the SQLite log.
    // The tokens are checked on both (RFC 3161, against the TSA's CA): the same 5 verified, 97 heads without one.
    let tsa_ca = tsa.ca();
    let verify = |db: &str| {
        anchorlog(&[
            "verify",
            "--db",
            db,
            "--key",
            key_pem.to_str().unwrap(),
            "--tsa-ca",
            tsa_ca.to_str().unwrap(),
            "--json",
        ])
    };
    let (code, copy, err) = verify(&db.server.url(APP, "migrated"));
    assert_eq!(code, 0, "{copy}{err}");
    let (code, original, _) = verify(source.to_str().unwrap());
    assert_eq!(code, 0);
    assert_eq!(copy["report"]["last_checkpoint"], original["report"]["last_checkpoint"]);
    assert_eq!(copy["timestamps"], original["timestamps"]);
    assert_eq!(
        (copy["timestamps"]["verified"].as_u64(), copy["timestamps"]["missing_count"].as_u64()),
        (Some(5), Some(97))
    );
    // The tokens, byte for byte.
    let pg_client = pg::connect(&PgConnect::plain(db.server.url(APP, "migrated"))).await.unwrap();
    let pg_tokens: Vec<(i64, Vec<u8>)> = pg_client
        .query("SELECT height, response FROM timestamps ORDER BY height", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let sqlite = rusqlite::Connection::open(&source).unwrap();
    let mut stmt = sqlite.prepare("SELECT height, response FROM timestamps ORDER BY height").unwrap();
    let sqlite_tokens: Vec<(i64, Vec<u8>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(pg_tokens, sqlite_tokens);
    // A token an insider swapped behind the triggers (head 50's given to head 100) fails at its height.
    let su_migrated =
        pg::connect(&PgConnect::plain(db.server.url(kit::postgres::SUPERUSER, "migrated"))).await.unwrap();
    su_migrated
        .batch_execute(
            "ALTER TABLE timestamps DISABLE TRIGGER USER;
             UPDATE timestamps SET response = (SELECT response FROM timestamps WHERE height = 50) WHERE height = 100;
             ALTER TABLE timestamps ENABLE TRIGGER USER;",
        )
        .await
        .unwrap();
    let (code, v, _) = verify(&db.server.url(APP, "migrated"));
    assert_eq!((code, &v["height"]), (3, &serde_json::json!(100)), "{v}");
    // The triggers are back on: the copy is append-only like any PostgreSQL log.
    let owner = pg::connect(&PgConnect::plain(to.clone())).await.unwrap();
    let (_, message) = refusal(owner.execute("DELETE FROM events WHERE seq = 7", &[]).await);
    assert!(message.starts_with("anchorlog: "), "{message}");

    // Into a database that holds a log: refused, nothing changed.
    let (code, _, err) = migrate(&to);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds a log (100001 events, 102 heads)"), "{err}");
    // A source an insider edited does not verify: nothing is copied, not even the schema.
    let edited = tampered_db(&source, "edited", "UPDATE events SET body = x'7b7d' WHERE seq = 777");
    let (code, v, err) = anchorlog(&[
        "migrate",
        "--from",
        edited.to_str().unwrap(),
        "--to",
        &db.server.url(OWNER, "refused"),
        "--key",
        key_pem.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 3, "{v}{err}");
    assert_eq!(v["seq"], 777, "{v}");
    assert!(v["failure"]
        .as_str()
        .unwrap()
        .starts_with("the source does not verify; nothing was copied: event seq 777"));
    let refused = pg::connect(&PgConnect::plain(db.server.url(OWNER, "refused"))).await.unwrap();
    let tables: i64 = refused
        .query_one("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}
