//! Nodes on one PostgreSQL log (src/ledger/pg_node.rs, docs/HA.md): one writer, standbys that refuse writes with
//! "not the writer", a takeover that reconciles the inherited tail and records itself, and a writer that was cut
//! off stepping down when the fence refuses its next group (the split-brain case).

use super::*;
use anchorlog::ledger::appender::{AppendError, AppenderHandle, WriterObserver};
use anchorlog::ledger::pg_node::{self, NodeRole, PgNodeSettings};
use anchorlog_core::key::PublicKey;
use tokio::sync::watch;

fn settings(db: &Db, node: &str, trusted: Vec<PublicKey>) -> PgNodeSettings {
    settings_ttl(db, node, trusted, Duration::from_secs(3))
}

fn settings_ttl(db: &Db, node: &str, trusted: Vec<PublicKey>, ttl: Duration) -> PgNodeSettings {
    PgNodeSettings {
        connect: db.app_connect(),
        node: node.into(),
        origin: ORIGIN.into(),
        lease: LeaseOptions { ttl, lock_wait: Duration::from_secs(3) },
        poll: Duration::from_millis(100),
        trusted_keys: trusted,
        signer: format!("test signer of {node}"),
        key_id: format!("key-of-{node}"),
        public_key_pem: format!("PEM of {node}"),
        config_sha256: "00".repeat(32),
    }
}

async fn wait_role(
    role: &mut watch::Receiver<NodeRole>,
    within: Duration,
    what: &str,
    f: impl Fn(&NodeRole) -> bool,
) {
    let reached = matches!(tokio::time::timeout(within, role.wait_for(|r| f(r))).await, Ok(Ok(_)));
    assert!(reached, "{what} within {within:?}; the role is {:?}", *role.borrow());
}

fn is_writer(r: &NodeRole) -> bool {
    matches!(r, NodeRole::Writer { .. })
}

async fn append_one(h: &AppenderHandle, producer: &str, id: &str) -> Result<u64, AppendError> {
    h.append(vec![ev(producer, Some(id), b"{\"k\":1}")]).await.map(|a| a[0].seq)
}

/// The body of the takeover record at `seq`.
async fn takeover_record(c: &tokio_postgres::Client, seq: u64) -> serde_json::Value {
    let ev = read::event(c, seq).await.unwrap().unwrap();
    let entry = Entry::parse(&ev.entry).unwrap();
    assert_eq!((entry.producer.as_str(), entry.auth), ("anchorlog", AuthMethod::Internal));
    serde_json::from_slice(&ev.body.unwrap()).unwrap()
}

/// Two nodes on one log: A takes the lease and records its takeover; B, a standby, refuses every write with "not
/// the writer" and stores nothing. A is cut off (its lease session killed while its write session lives, as a
/// network partition or SIGSTOP past the TTL does); B takes the lease, reconciles A's tail (a signed head and
/// unsealed events after it), records its own takeover naming what it inherited, and writes on. A's next group is
/// refused by the fence — nothing of it lands — and A steps down and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_the_writer_is_cut_off_and_the_old_writer_steps_down_fenced() {
    use kit::log_builder::TestKey;
    let db = Db::start().await;
    let (key_a, key_b) = (TestKey::new(1), TestKey::new(2));
    let ring = vec![key_a.public.clone(), key_b.public.clone()];
    // A's keepalive comes every 20 s: the test's cut is noticed by A's next write, as a node frozen by SIGSTOP
    // notices it when it resumes, and the fence is what refuses it.
    let a_settings = settings_ttl(&db, "node-a", ring.clone(), Duration::from_secs(60));
    let (a, mut role_a, _task_a) = pg_node::start(a_settings, WriterObserver::default());
    wait_role(&mut role_a, Duration::from_secs(10), "A takes the lease", is_writer).await;
    assert_eq!(*role_a.borrow(), NodeRole::Writer { epoch: 1, takeover_seq: 0 });
    let (b, mut role_b, _task_b) =
        pg_node::start(settings(&db, "node-b", ring.clone()), WriterObserver::default());
    wait_role(&mut role_b, Duration::from_secs(5), "B reports why it is a standby", |r| {
        matches!(r, NodeRole::Standby { reason } if reason.contains("held by another node (node-a, epoch 1)"))
    })
    .await;

    // A writes; B refuses and stores nothing.
    for i in 0..5 {
        assert_eq!(append_one(&a, "idp", &format!("a-{i}")).await.unwrap(), i + 1);
    }
    match append_one(&b, "idp", "to-b").await {
        Err(AppendError::NotWriter(reason)) => assert!(reason.contains("node-a"), "{reason}"),
        other => panic!("a standby must refuse: {other:?}"),
    }
    let app = db.app().await;
    assert_eq!(count(&app, "events").await, 6);
    let first = takeover_record(&app, 0).await;
    assert_eq!(first["type"], "anchorlog.takeover");
    assert_eq!((first["node"].as_str(), first["epoch"].as_i64()), (Some("node-a"), Some(1)));
    assert_eq!((first["inherited_events"].as_u64(), first["inherited_height"].is_null()), (Some(0), true));

    // A head over seqs 0..4 signed by A's key, then one more unsealed event: the tail B will inherit.
    let head = {
        // The head is inserted through a writer under A's epoch, as A's sealer would.
        let lease = read::lease_epoch(&app).await.unwrap();
        assert_eq!(lease.0, 1);
        let frontier = tree::load_frontier(&app, 6).await.unwrap();
        use anchorlog_core::head::Checkpoint;
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            tree_size: 6,
            root: frontier.root(),
            height: 0,
            prev: [0; 32],
            time_ms: anchorlog::store::now_ms(),
            counter: None,
        };
        let text = cp.to_text().unwrap();
        StoredHead {
            height: 0,
            tree_size: 6,
            root: cp.root,
            signature: key_a.sign(text.as_bytes()),
            checkpoint: text,
            key_id: key_a.public.key_id.clone(),
            sealed_at_ms: cp.time_ms,
        }
    };
    a.store_head(head.clone()).await.unwrap();
    assert_eq!(append_one(&a, "idp", "a-unsealed").await.unwrap(), 6);

    // A is cut off: its lease session ends, its write session lives on and A does not know yet.
    let su = db.superuser().await;
    let pids: Vec<i32> = su
        .query("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pids.len(), 1, "one lease session holds the advisory lock");
    let cut = Instant::now();
    let killed: bool = su.query_one("SELECT pg_terminate_backend($1)", &[&pids[0]]).await.unwrap().get(0);
    assert!(killed);

    wait_role(&mut role_b, Duration::from_secs(10), "B takes over", is_writer).await;
    let took = cut.elapsed();
    assert_eq!(*role_b.borrow(), NodeRole::Writer { epoch: 2, takeover_seq: 7 });
    let second = takeover_record(&app, 7).await;
    assert_eq!(
        (
            second["node"].as_str(),
            second["epoch"].as_i64(),
            second["inherited_events"].as_u64(),
            second["inherited_height"].as_u64(),
            second["inherited_sealed_size"].as_u64()
        ),
        (Some("node-b"), Some(2), Some(7), Some(0), Some(6))
    );
    assert_eq!(append_one(&b, "idp", "b-0").await.unwrap(), 8);

    // A's next write is refused by the fence: nothing lands, A steps down and says so.
    match append_one(&a, "late-a", "late").await {
        Err(AppendError::NotWriter(reason)) => assert!(reason.contains("fenced out"), "{reason}"),
        other => panic!("a fenced-out writer must refuse: {other:?}"),
    }
    wait_role(&mut role_a, Duration::from_secs(5), "A steps down", |r| matches!(r, NodeRole::Standby { .. }))
        .await;
    let late: i64 =
        app.query_one("SELECT count(*) FROM events WHERE producer = 'late-a'", &[]).await.unwrap().get(0);
    assert_eq!(late, 0);
    assert_log_consistent(&app, 9).await;
    eprintln!("takeover after the writer's lease session ended: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// A standby refuses to write after a tail that does not reconcile: the last head signed by a key outside its
/// keyring, or an unsealed event edited behind the triggers. It stays a standby and names the exact height or seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_refuses_an_inherited_tail_that_does_not_reconcile() {
    use kit::log_builder::TestKey;
    let db = Db::start().await;
    let (key_a, stranger) = (TestKey::new(1), TestKey::new(9));
    {
        let (_lease, mut w) = db.writer("node-a").await;
        w.append_group(&[vec![ev("idp", None, b"{}")], vec![ev("idp", None, b"{}")]]).await.unwrap();
        let mut prev = None;
        seal(&mut w, &stranger, &mut prev).await; // head 0 over 2 events, signed outside the ring
        w.append_group(&[vec![ev("idp", None, b"{}")]]).await.unwrap();
    }
    let (_b, mut role_b, task_b) =
        pg_node::start(settings(&db, "node-b", vec![key_a.public.clone()]), WriterObserver::default());
    wait_role(
        &mut role_b,
        Duration::from_secs(10),
        "B refuses the tail",
        |r| matches!(r, NodeRole::Standby { reason } if reason.contains("height 0")),
    )
    .await;
    let NodeRole::Standby { reason } = role_b.borrow().clone() else { unreachable!() };
    assert_eq!(
        reason,
        format!(
            "the inherited log does not reconcile at height 0: the head is signed by key {}, which is not in this \
             node's keyring (storage.keyring_file); this node will not write after it — run `anchorlog verify --db` \
             on the database",
            stranger.public.key_id
        )
    );
    task_b.abort();

    // With the right key, but an unsealed event's entry edited behind disabled triggers: refused at that seq.
    let owner = db.owner().await;
    owner
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER; \
             UPDATE events SET entry = convert_to(replace(convert_from(entry, 'UTF8'), 'idp', 'idq'), 'UTF8') WHERE seq = 2; \
             ALTER TABLE events ENABLE TRIGGER USER;",
        )
        .await
        .unwrap();
    let (_c, mut role_c, _task_c) =
        pg_node::start(settings(&db, "node-c", vec![stranger.public.clone()]), WriterObserver::default());
    wait_role(
        &mut role_c,
        Duration::from_secs(10),
        "C refuses the edited tail",
        |r| matches!(r, NodeRole::Standby { reason } if reason.contains("seq 2")),
    )
    .await;
    let NodeRole::Standby { reason } = role_c.borrow().clone() else { unreachable!() };
    assert!(
        reason.starts_with("the inherited log does not reconcile at seq 2: an unsealed event"),
        "{reason}"
    );
    let app = db.app().await;
    assert_eq!(count(&app, "events").await, 3, "nothing was written after a tail that does not reconcile");
}
