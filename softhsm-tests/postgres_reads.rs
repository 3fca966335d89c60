//! The read seam (`store::reads::LogReads`, issue 17.1) on a real PostgreSQL 15: every method answers the same on a
//! SQLite log and on its PostgreSQL copy (`store::pg::copy::copy_sqlite_log`) over a spread of arguments — every
//! head, seqs at the edges, erased, unsealed and out of range, proofs for many sizes including invalid ones — with
//! the same bytes, the same order and the same error; and a `PgReads` session that dies is replaced.

use super::{Db, APP, DB, OWNER};
use crate::kit::log_builder::{LogBuilder, OpensslTsa, TestKey};
use anchorlog::store::cosignatures::{self, StoredCosignature, WitnessCursor};
use anchorlog::store::pg::{self, copy::copy_sqlite_log, PgConnect, PgReads};
use anchorlog::store::reads::{LogReads, WhichHead};
use anchorlog::store::{self, ReadPool, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The two arms over one log, and what comparing them cost.
struct Arms {
    sqlite: LogReads,
    pg: LogReads,
    calls: usize,
    errors: usize,
    sqlite_time: Duration,
    pg_time: Duration,
}

/// Calls `$call` (an expression over `$r: &LogReads` that is awaited) on both arms and asserts the answers are equal:
/// the values, or the errors' texts (the same variant: StoreError::Corrupt or ::Merkle on both). `$map` turns a value
/// into something comparable. Returns the SQLite answer in a [`Same`].
macro_rules! same {
    ($arms:expr, $what:expr, |$r:ident| $call:expr) => {
        same!($arms, $what, |$r| $call, |v| v)
    };
    ($arms:expr, $what:expr, |$r:ident| $call:expr, |$v:ident| $map:expr) => {{
        let t = Instant::now();
        let a = {
            let $r = &$arms.sqlite;
            $call.await.map(|$v| $map).map_err(|e| e.to_string())
        };
        $arms.sqlite_time += t.elapsed();
        let t = Instant::now();
        let b = {
            let $r = &$arms.pg;
            $call.await.map(|$v| $map).map_err(|e| e.to_string())
        };
        $arms.pg_time += t.elapsed();
        assert_eq!(a, b, "{}", $what);
        $arms.calls += 1;
        $arms.errors += usize::from(a.is_err());
        Same(a)
    }};
}

/// The SQLite answer of a comparison (a plain value: most comparisons only assert).
struct Same<T>(Result<T, String>);

fn json<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// A SQLite log with what every read can find: a head of size 0, blocks of odd sizes, a heartbeat head of an
/// unchanged size, an erased payload whose record is sealed and one whose record is not, a key rotation, RFC 3161
/// tokens on some heads, cosignatures (two witnesses, stored in the reverse of their name order) and witness
/// cursors, and an unsealed tail. Returns the event count.
fn build_sqlite_log(path: &std::path::Path) -> u64 {
    let (key, next_key) = (TestKey::new(3), TestKey::new(4));
    let mut b = LogBuilder::create(path, &key);
    b.head(); // 0: size 0
    b.events(7);
    b.head(); // 1: 7
    b.events(1);
    b.head(); // 2: 8
    b.events(25);
    b.head(); // 3: 33
    assert_eq!(b.erase(5, "dpo", "GDPR art. 17 request"), 33);
    b.events(30);
    b.head(); // 4: 64
    let (rotation, h5) = b.rotate(&next_key, "scheduled rotation", None);
    assert_eq!((rotation, h5.height, h5.tree_size), (64, 5, 65));
    b.events(40);
    b.head(); // 6: 105
    b.head(); // 7: 105 (heartbeat)
    b.events(3); // 105..108 unsealed
    assert_eq!(b.erase(20, "dpo", "second request"), 108); // its record is not sealed yet
    drop(b);
    OpensslTsa::new().stamp_heads(path, [0, 3, 5, 7]);
    let conn = rusqlite::Connection::open(path).unwrap();
    let cos = |height: u64, witness: &str, key_id: u32, stored_at_ms: i64| StoredCosignature {
        height,
        witness: witness.into(),
        key_id,
        line: format!("— {witness} {key_id:08x}sig{height}"),
        timestamp: 1_765_000_000 + height,
        stored_at_ms,
    };
    for c in [
        cos(3, "w-b.example", 0xb0b0_0001, 1000),
        cos(3, "w-a.example", 0xa0a0_0001, 2000),
        cos(6, "w-a.example", 0xa0a0_0001, 3000),
        cos(6, "w-b.example", 0xb0b0_0001, 3000),
        cos(6, "w-a.example", 0x0a0a_0002, 3000),
    ] {
        cosignatures::insert(&conn, &c).unwrap();
    }
    cosignatures::set_cursor(
        &conn,
        &WitnessCursor { witness: "w-a.example+a0a00001+key".into(), tree_size: 105, height: 6 },
    )
    .unwrap();
    store::event_count(&conn).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_read_answers_the_same_on_sqlite_and_on_its_postgres_copy() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("anchorlog.db");
    let n = build_sqlite_log(&source);
    assert_eq!(n, 109);
    let db = Db::start().await;
    // A database of its own: the test kit's holds an empty log of another origin.
    db.superuser().await.batch_execute(&format!("CREATE DATABASE copied OWNER {OWNER}")).await.unwrap();
    let conn = store::open_reader(&source).unwrap();
    copy_sqlite_log(&conn, &PgConnect::plain(db.server.url(OWNER, "copied")), Some(APP)).await.unwrap();
    drop(conn);
    let mut arms = Arms {
        sqlite: LogReads::Sqlite(Arc::new(ReadPool::new(&source))),
        // The application role, as the appliance reads.
        pg: LogReads::Postgres(PgReads::new(
            PgConnect::plain(db.server.url(APP, "copied")),
            pg::DEFAULT_READ_SESSIONS,
        )),
        calls: 0,
        errors: 0,
        sqlite_time: Duration::ZERO,
        pg_time: Duration::ZERO,
    };
    assert_eq!((arms.sqlite.backend(), arms.pg.backend()), ("SQLite", "PostgreSQL"));
    assert!(arms.sqlite.sqlite().is_some() && arms.pg.sqlite().is_none());

    // Events.
    assert_eq!(same!(arms, "event_count", |r| r.event_count()).0, Ok(n));
    let seqs: Vec<u64> = (0..=n + 2).chain([u64::MAX / 2, i64::MAX as u64, u64::MAX]).collect();
    for &seq in &seqs {
        let what = format!("seq {seq}");
        same!(arms, &what, |r| r.event(seq));
        same!(arms, &what, |r| r.event_with_erasure(seq));
        same!(arms, &what, |r| r.erasure(seq));
        same!(arms, &what, |r| r.covering_head(seq));
        same!(arms, &what, |r| r.receipt(seq), |v| json(v));
    }
    // The erased event, with its sealed record; the one whose record is not sealed; the unsealed tail; past the end.
    let receipt = arms.pg.receipt(5).await.unwrap();
    assert_eq!((receipt.body, receipt.erasure.map(|e| e.erasure_seq)), (None, Some(33)));
    assert_eq!(arms.pg.receipt(64).await.unwrap().key_rotations.len(), 1);
    assert_eq!(
        arms.pg.receipt(20).await.unwrap_err().to_string(),
        "event seq 108 is not yet covered by a signed head; retry after the next seal"
    );
    assert_eq!(
        arms.pg.receipt(106).await.unwrap_err().to_string(),
        arms.sqlite.receipt(106).await.unwrap_err().to_string()
    );
    assert_eq!(arms.pg.receipt(n).await.unwrap_err().to_string(), format!("no event with seq {n}"));
    for from in [0, 1, 5, 32, 33, 64, 100, n - 1, n, n + 5] {
        for limit in [0, 1, 10, 1000] {
            for max_bytes in [1, 200, 1 << 20] {
                let what = format!("event_page({from}, {limit}, {max_bytes})");
                same!(arms, &what, |r| r.event_page(from, limit, max_bytes));
            }
        }
    }
    for (from, to) in [(0, 0), (0, 1), (0, n), (5, 6), (33, 64), (100, n), (0, n + 1), (n, n + 3), (7, 3)] {
        same!(arms, &format!("leaf_hashes({from}, {to})"), |r| r.leaf_hashes(from, to));
    }

    // Heads, tokens, cosignatures, keys.
    let last = same!(arms, "last_head", |r| r.last_head()).0.unwrap().unwrap();
    assert_eq!((last.height, last.tree_size), (7, 105));
    same!(arms, "head_record latest", |r| r.head_record(WhichHead::Latest));
    same!(arms, "latest_signed_size", |r| r.latest_signed_size());
    same!(arms, "timestamp_count", |r| r.timestamp_count());
    for h in 0..=9 {
        let what = format!("height {h}");
        same!(arms, &what, |r| r.head(h));
        same!(arms, &what, |r| r.head_record(WhichHead::At(h)));
        same!(arms, &what, |r| r.timestamp(h));
        same!(arms, &what, |r| r.cosignatures_of_head(h));
        same!(arms, &what, |r| r.heads_with_cosigners(h));
        for limit in [0, 1, 3, 100] {
            same!(arms, &format!("heads_without_timestamp({h}, {limit})"), |r| r
                .heads_without_timestamp(h, limit));
        }
        for to in [h, h + 2, 100] {
            same!(arms, &format!("any_timestamp_between({h}, {to})"), |r| r.any_timestamp_between(h, to));
        }
    }
    let cosigned = arms.pg.cosignatures_of_head(3).await.unwrap();
    assert_eq!(
        cosigned.iter().map(|c| c.witness.as_str()).collect::<Vec<_>>(),
        ["w-b.example", "w-a.example"]
    );
    let record = arms.pg.head_record(WhichHead::At(3)).await.unwrap().unwrap();
    assert_eq!(
        (record.timestamp.is_some(), record.cosignatures.len(), record.key_pem.is_some()),
        (true, 2, true)
    );
    let heads = arms.pg.heads_with_cosigners(6).await.unwrap();
    assert_eq!(
        heads[0].cosigners,
        [
            ("w-a.example".to_string(), 0x0a0a_0002),
            ("w-a.example".to_string(), 0xa0a0_0001),
            ("w-b.example".to_string(), 0xb0b0_0001)
        ]
    );
    for key_id in [TestKey::new(3).public.key_id, TestKey::new(4).public.key_id, "00".repeat(32)] {
        same!(arms, &format!("public_key_pem {key_id}"), |r| r.public_key_pem(&key_id));
    }
    for w in ["w-a.example+a0a00001+key", "w-b.example", ""] {
        same!(arms, &format!("witness_cursor {w}"), |r| r.witness_cursor(w));
    }
    let keys = [
        ("w-a.example".to_string(), 0xa0a0_0001),
        ("w-b.example".to_string(), 0xb0b0_0001),
        ("w-c".to_string(), 7),
    ];
    assert_eq!(
        same!(arms, "cosigning_starts", |r| r.cosigning_starts(&keys)).0,
        Ok(vec![(7, Some(6)), (7, Some(6)), (7, None)])
    );

    // The tree: roots, inclusion and consistency proofs at head sizes, sizes between them and invalid ones.
    let sizes: Vec<u64> =
        vec![0, 1, 2, 3, 5, 7, 8, 9, 16, 33, 34, 63, 64, 65, 100, 105, 108, n, n + 1, 1 << 40];
    for &size in &sizes {
        same!(arms, &format!("root_at({size})"), |r| r.root_at(size));
        for seq in (0..=n + 1).filter(|s| s % 3 == 0 || *s + 2 >= size || *s < 3) {
            same!(arms, &format!("inclusion({seq}, {size})"), |r| r.inclusion(seq, size));
        }
        for &old in &sizes {
            let what = format!("consistency({old}, {size})");
            same!(arms, &what, |r| r.consistency_proof(old, size));
            same!(arms, &what, |r| r.consistency(old, size));
        }
    }
    for (from, to, reference) in
        [(0, 65, 65), (0, 105, 105), (0, 64, 64), (65, 105, 105), (0, 105, 33), (0, n, 1 << 40)]
    {
        same!(
            arms,
            &format!("key_rotation_proofs({from}, {to}, {reference})"),
            |r| r.key_rotation_proofs(from, to, reference),
            |v| json(v)
        );
    }
    // Out of range is an error on both, of the same variant.
    for r in [&arms.sqlite, &arms.pg] {
        assert!(matches!(r.inclusion(10, 5).await, Err(StoreError::Merkle(_))), "{}", r.backend());
        assert!(matches!(r.consistency(9, 8).await, Err(StoreError::Merkle(_))), "{}", r.backend());
        assert!(
            matches!(r.root_at(n + 1).await, Err(StoreError::Corrupt { table: "events" | "nodes", .. })),
            "{}",
            r.backend()
        );
        assert!(
            matches!(r.leaf_hashes(0, n + 1).await, Err(StoreError::Corrupt { table: "events", .. })),
            "{}",
            r.backend()
        );
    }
    eprintln!(
        "{} reads compared on both stores ({} errors among them): SQLite {:?}, PostgreSQL {:?}",
        arms.calls, arms.errors, arms.sqlite_time, arms.pg_time
    );
    // Every comparison above ran (the errors: sizes and seqs outside the tree, past the end, unsealed).
    assert_eq!((arms.calls, arms.errors), (3308, 1817));
}

/// Terminates every session of the application role and waits until the server has ended them.
async fn terminate_app_sessions(db: &Db) -> usize {
    let su = db.superuser().await;
    let pids: Vec<i32> = su
        .query("SELECT pid FROM pg_stat_activity WHERE usename = $1", &[&APP])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for pid in &pids {
        su.execute("SELECT pg_terminate_backend($1)", &[pid]).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = su
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&APP])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return pids.len();
        }
        assert!(Instant::now() < deadline, "{left} sessions of {APP} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_session_killed_between_two_reads_is_reopened_and_a_read_it_broke_is_retried() {
    let db = Db::start().await;
    let pool = PgReads::new(db.app_connect(), 1);
    let reads = LogReads::Postgres(pool.clone());
    assert_eq!(reads.event_count().await.unwrap(), 0);
    assert_eq!(reads.head_record(WhichHead::Latest).await.unwrap(), None);
    assert_eq!(pool.reopened(), 0);

    // Killed while idle, between two reads: the next read (plain, then one in a snapshot) gets a new session.
    assert_eq!(terminate_app_sessions(&db).await, 1);
    assert_eq!(reads.event_count().await.unwrap(), 0);
    assert_eq!(pool.reopened(), 1);
    assert_eq!(terminate_app_sessions(&db).await, 1);
    assert_eq!(reads.head_record(WhichHead::Latest).await.unwrap(), None);
    assert_eq!(pool.reopened(), 2);

    // Killed in the middle of a read: the read fails with the server's 57P01, and is run once more on a new session.
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let killer = {
        let (url, app) = (db.server.url(crate::kit::postgres::SUPERUSER, DB), APP);
        tokio::spawn(async move {
            let su = pg::connect(&PgConnect::plain(url)).await.unwrap();
            // Wait until the read is running, then end its session.
            loop {
                let killed: i64 = su
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE usename = $1 AND query LIKE 'SELECT pg_sleep%'",
                        &[&app],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if killed > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let counter = attempts.clone();
    let t = Instant::now();
    let answer = pool
        .with(move |c| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                let sql = if n == 0 { "SELECT pg_sleep(30)::text" } else { "SELECT 'second'::text" };
                let v: Option<String> = c.query_one(sql, &[]).await?.get(0);
                Ok(v)
            })
        })
        .await;
    killer.await.unwrap();
    assert_eq!(answer.unwrap(), Some("second".to_string()));
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(pool.reopened(), 3);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // A read that fails for another reason is not retried and keeps its session.
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = attempts.clone();
    let refused = pool
        .with(move |c| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { Ok(c.execute("SELECT 1/0", &[]).await?) })
        })
        .await
        .unwrap_err();
    assert_eq!(refused.to_string(), "PostgreSQL error 22012: division by zero");
    assert_eq!((attempts.load(std::sync::atomic::Ordering::SeqCst), pool.reopened()), (1, 3));
}
