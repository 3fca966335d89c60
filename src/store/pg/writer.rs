//! The PostgreSQL writer: what the appender thread does to SQLite (src/ledger/appender.rs), on PostgreSQL, behind
//! the fence.
//!
//! Group commit: a group of append requests is applied in ONE transaction with one COMMIT, and
//! [`PgWriter::append_group`] returns only after that COMMIT returned, so a handler can send its 2xx then and
//! only then. What "returned" promises is the server's `synchronous_commit` (docs/HA.md): `on` (the default, and
//! what the test kit runs) means the commit record is flushed to the primary's WAL; with `synchronous_standby_names`
//! set it means a synchronous standby has flushed it too; `remote_apply` that the standby also applied it; `off`
//! or `local` with standbys weaken it, and the appliance must not be run so.
//!
//! The appender's savepoint semantics, the same: the group first runs without a savepoint per request; if a request
//! fails (PostgreSQL then aborts the whole transaction), it is rolled back and the group replayed with a
//! `SAVEPOINT` per request, so the failing request fails alone and the others are stored as if it had never been
//! sent. Seqs are taken from the writer's own counter, moved only by committed requests, so they stay dense after a
//! failed request, a failed group, or a fenced-out one (the `events_dense_seq` trigger checks it too).

use super::lease::{fence, WriterLease, WRITE_IDLE_IN_TRANSACTION};
use super::{connect, i64_of, read, PgConnect, PgError};
use crate::ledger::appender::{entry_of, Appended};
use crate::ledger::event::NewEvent;
use crate::store::StoredTimestamp;
use anchorlog_core::merkle::{self, Frontier};
use anchorlog_core::stored::StoredHead;
use tokio_postgres::{Client, Statement, Transaction};

/// The result of one request of a committed group: its events, or why it alone failed.
pub type RequestResult = Result<Vec<Appended>, PgError>;

/// The writer's statements, prepared once on its session.
struct Statements {
    insert_event: Statement,
    find_by_source_id: Statement,
    insert_node: Statement,
}

/// The one writer of a log on PostgreSQL: its own session (not the lease's), the epoch of the lease it writes
/// under, and the log's end (next seq, the tree's frontier) as of its last commit.
pub struct PgWriter {
    client: Client,
    epoch: i64,
    next_seq: u64,
    frontier: Frontier,
    statements: Statements,
}

/// How the append requests of one attempt are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoint: the first failing request aborts the attempt (PostgreSQL aborts the transaction).
    Shared,
    /// A savepoint per request: a failing request rolls back alone.
    PerRequest,
}

impl PgWriter {
    /// Opens the writer's session under `lease` (checks the schema and origin, then reads the log's end). Open it
    /// only after the lease was acquired: the end it reads is then final, the old holder being fenced out.
    pub async fn open(c: &PgConnect, lease: &WriterLease, origin: &str) -> Result<PgWriter, PgError> {
        let client = connect(c).await?;
        // A writer frozen inside a transaction holds the epoch row FOR SHARE; the server aborts such a transaction
        // after this long, so a takeover is not held up for ever (src/store/pg/lease.rs).
        let idle = i64::try_from(WRITE_IDLE_IN_TRANSACTION.as_millis()).unwrap_or(i64::MAX).to_string();
        client
            .execute("SELECT set_config('idle_in_transaction_session_timeout', $1, false)", &[&idle])
            .await?;
        super::schema::check(&client, origin).await?;
        let statements = Statements {
            insert_event: client
                .prepare(
                    "INSERT INTO events (seq, received_at_ns, producer, source, format, source_id, entry, leaf_hash, \
                     salt, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .await?,
            find_by_source_id: client
                .prepare("SELECT seq, leaf_hash FROM events WHERE producer = $1 AND source = $2 AND source_id = $3")
                .await?,
            insert_node: client.prepare("INSERT INTO nodes (level, idx, hash) VALUES ($1, $2, $3)").await?,
        };
        let mut writer =
            PgWriter { client, epoch: lease.epoch(), next_seq: 0, frontier: Frontier::new(), statements };
        writer.reload().await?;
        Ok(writer)
    }

    /// Re-reads the log's end (after a failed commit whose outcome is unknown, e.g. a connection cut at COMMIT).
    pub async fn reload(&mut self) -> Result<(), PgError> {
        let tx = self.client.transaction().await?;
        let next = read::event_count(&tx).await?;
        let frontier = read::load_frontier(&tx, next).await?;
        tx.commit().await?;
        (self.next_seq, self.frontier) = (next, frontier);
        Ok(())
    }

    /// The epoch this writer writes under.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The next seq (= the number of committed events).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The tree over every committed event.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// The writer's session (reads inside the writer's own view).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Appends a group of requests in one fenced transaction with one COMMIT; returns after it committed. The
    /// outer error means nothing of the group was stored ([`PgError::GroupCommit`], with
    /// [`PgError::FencedOut`] as its cause when another node took the lease); otherwise one result per request, in
    /// order, a failed request having stored nothing.
    pub async fn append_group(&mut self, requests: &[Vec<NewEvent>]) -> Result<Vec<RequestResult>, PgError> {
        let start = (self.next_seq, self.frontier.clone());
        let outcome = match self.attempt(requests, Isolation::Shared).await {
            Ok(None) => {
                (self.next_seq, self.frontier) = start.clone();
                tracing::debug!(
                    requests = requests.len(),
                    "pg writer: a request failed; replaying with savepoints"
                );
                self.attempt(requests, Isolation::PerRequest).await
            }
            other => other,
        };
        match outcome {
            Ok(Some(results)) => Ok(results),
            Ok(None) => {
                (self.next_seq, self.frontier) = start;
                Err(PgError::Corrupt {
                    table: "events",
                    key: self.next_seq,
                    problem: "a request failed outside its savepoint".into(),
                })
            }
            Err(e) => {
                (self.next_seq, self.frontier) = start;
                Err(PgError::GroupCommit { first_seq: self.next_seq, source: Box::new(e) })
            }
        }
    }

    /// One attempt: `Ok(Some)` committed, `Ok(None)` a request failed without a savepoint (rolled back), `Err`
    /// nothing stored (fenced out, BEGIN or COMMIT failed). `next_seq`/`frontier` move as requests succeed; the
    /// caller rewinds them on anything but `Ok(Some)`.
    async fn attempt(
        &mut self,
        requests: &[Vec<NewEvent>],
        isolation: Isolation,
    ) -> Result<Option<Vec<RequestResult>>, PgError> {
        let PgWriter { client, epoch, next_seq, frontier, statements } = self;
        let mut tx = client.transaction().await?;
        fence(&tx, *epoch).await?;
        let mut results = Vec::with_capacity(requests.len());
        for events in requests {
            let result = match isolation {
                Isolation::Shared => {
                    let r = append_request(&tx, statements, next_seq, frontier, events).await;
                    if r.is_err() {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                    r
                }
                Isolation::PerRequest => {
                    let sp = tx.savepoint("request").await?;
                    let r = append_request(&sp, statements, next_seq, frontier, events).await;
                    match r {
                        Ok(_) => sp.commit().await?,
                        Err(_) => sp.rollback().await?,
                    }
                    r
                }
            };
            results.push(result);
        }
        // The 2xx point: nothing is answered before this returns.
        tx.commit().await?;
        Ok(Some(results))
    }

    /// Stores a signed head in its own fenced transaction; returns after COMMIT.
    pub async fn insert_head(&mut self, h: &StoredHead) -> Result<(), PgError> {
        let tx = self.client.transaction().await?;
        fence(&tx, self.epoch).await?;
        tx.execute(
            "INSERT INTO heads (height, tree_size, root, checkpoint, signature, key_id, sealed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &i64_of(h.height),
                &i64_of(h.tree_size),
                &&h.root[..],
                &h.checkpoint,
                &h.signature,
                &h.key_id,
                &h.sealed_at_ms,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a verified time-stamp token of a stored head in its own fenced transaction; returns after COMMIT.
    pub async fn insert_timestamp(&mut self, t: &StoredTimestamp) -> Result<(), PgError> {
        let tx = self.client.transaction().await?;
        fence(&tx, self.epoch).await?;
        tx.execute(
            "INSERT INTO timestamps (height, response, gen_time_ms, gen_time, tsa_url, stored_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&i64_of(t.height), &t.response, &t.gen_time_ms, &t.gen_time, &t.tsa_url, &t.stored_at_ms],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Applies one request inside `tx` (the group's transaction or the request's savepoint): de-duplicates by
/// `(producer, source, source_id)`, inserts each new event at the next seq with the tree nodes it completes.
/// `next_seq` and `frontier` move only if the whole request succeeded.
async fn append_request(
    tx: &Transaction<'_>,
    statements: &Statements,
    next_seq: &mut u64,
    frontier: &mut Frontier,
    events: &[NewEvent],
) -> RequestResult {
    let mut next = *next_seq;
    let mut tree = frontier.clone();
    let mut out = Vec::with_capacity(events.len());
    let mut completed = Vec::new();
    for ev in events {
        if let Some(id) = ev.source_id.as_deref() {
            let producer: &str = &ev.producer;
            let source: &str = &ev.source;
            if let Some(row) = tx.query_opt(&statements.find_by_source_id, &[&producer, &source, &id]).await?
            {
                let seq = super::u64_of(row.try_get(0)?, "events", next, "seq")?;
                let leaf_hash = super::hash_of(row.try_get(1)?, "events", seq, "leaf_hash")?;
                out.push(Appended { seq, leaf_hash, duplicate: true });
                continue;
            }
        }
        let entry = entry_of(ev, next);
        let leaf_hash = merkle::leaf_hash(&entry);
        let producer: &str = &ev.producer;
        let source: &str = &ev.source;
        tx.execute(
            &statements.insert_event,
            &[
                &i64_of(next),
                &i64_of(ev.received_at_ns),
                &producer,
                &source,
                &ev.format,
                &ev.source_id,
                &entry,
                &&leaf_hash[..],
                &&ev.salt[..],
                &ev.body,
            ],
        )
        .await?;
        tree.push_with(leaf_hash, |start, len, hash| {
            if len > 1 {
                completed.push((start, len, *hash));
            }
        });
        for (start, len, hash) in completed.drain(..) {
            let level = len.trailing_zeros();
            tx.execute(&statements.insert_node, &[&(level as i32), &i64_of(start >> level), &&hash[..]])
                .await?;
        }
        out.push(Appended { seq: next, leaf_hash, duplicate: false });
        next += 1;
    }
    *next_seq = next;
    *frontier = tree;
    Ok(out)
}
