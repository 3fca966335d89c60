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

use super::lease::{fence, WriterLease, FENCE_SQL, WRITE_IDLE_IN_TRANSACTION};
use super::{connect, i64_of, read, tree, PgConnect, PgError};
use crate::ledger::appender::{entry_of, Appended};
use crate::ledger::event::NewEvent;
use crate::ledger::internal;
use crate::store::cosignatures::{StoredCosignature, WitnessCursor};
use crate::store::StoredTimestamp;
use anchorlog_core::merkle::{self, Frontier};
use anchorlog_core::stored::{ErasureRecord, StoredHead};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

/// The result of one request of a committed group: its events, or why it alone failed.
pub type RequestResult = Result<Vec<Appended>, PgError>;

/// One command of a group, as the appender's writer thread receives them (src/ledger/appender.rs `Command`).
#[derive(Debug, Clone)]
pub enum PgCommand {
    /// Append these events atomically (one producer request).
    Append(Vec<NewEvent>),
    /// Store a signed head.
    StoreHead(StoredHead),
    /// Store a verified time-stamp token of a stored head.
    StoreTimestamp(StoredTimestamp),
    /// Store a verified witness cosignature of a stored head and move that witness's cursor, together.
    StoreCosignature(StoredCosignature, WitnessCursor),
    /// Erase the payload of event `seq` and append the appliance's record of it (GDPR art. 17).
    Erase {
        /// The event whose body and salt are cleared.
        seq: u64,
        /// The admin principal who asked.
        erased_by: String,
        /// The reason given.
        reason: String,
    },
}

/// The outcome of one command of a committed group, in the order of the commands.
#[derive(Debug)]
pub enum PgDone {
    /// An [`PgCommand::Append`]'s events, or why this request alone failed.
    Append(RequestResult),
    /// A head's or token's outcome.
    Stored(Result<(), PgError>),
    /// An erasure's record and the leaf hash of the event that logs it, or why it alone was refused.
    Erase(Result<(ErasureRecord, [u8; 32]), PgError>),
}

/// The writer's statements, prepared once on its session.
struct Statements {
    fence: Statement,
    insert_events: Statement,
    find_by_source_ids: Statement,
    insert_nodes: Statement,
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
    /// Opens the writer's session under `lease` (checks the schema and origin, then reads the log's end behind the
    /// fence): the end it reads is final, every earlier holder being fenced out, and a lease that was taken over
    /// since gives [`PgError::FencedOut`].
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
            fence: client.prepare(FENCE_SQL).await?,
            insert_events: client
                .prepare(
                    "INSERT INTO events (seq, received_at_ns, producer, source, format, source_id, entry, leaf_hash, \
                     salt, body) SELECT seq, received_at_ns, producer, source, format, source_id, entry, leaf_hash, \
                     salt, body FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[]) WITH ORDINALITY \
                     AS t(seq, received_at_ns, producer, source, format, source_id, entry, leaf_hash, salt, body, n) \
                     ORDER BY n",
                )
                .await?,
            find_by_source_ids: client
                .prepare(
                    // LATERAL: one look-up in the unique (producer, source, source_id) index per key, whatever
                    // the planner guesses of the array's length (a hash join would scan the whole table).
                    "SELECT k.producer, k.source, k.source_id, e.seq, e.leaf_hash \
                     FROM unnest($1::text[], $2::text[], $3::text[]) AS k(producer, source, source_id) \
                     CROSS JOIN LATERAL (SELECT seq, leaf_hash FROM events \
                       WHERE producer = k.producer AND source = k.source AND source_id = k.source_id) e",
                )
                .await?,
            insert_nodes: client
                .prepare(
                    "INSERT INTO nodes (level, idx, hash) SELECT * FROM unnest($1::int[], $2::bigint[], $3::bytea[])",
                )
                .await?,
        };
        let mut writer =
            PgWriter { client, epoch: lease.epoch(), next_seq: 0, frontier: Frontier::new(), statements };
        writer.reload().await?;
        Ok(writer)
    }

    /// Re-reads the log's end (after a failed commit whose outcome is unknown, e.g. a connection cut at COMMIT),
    /// behind the fence: a node that lost the lease gets [`PgError::FencedOut`] instead of a log end it may not
    /// write after.
    pub async fn reload(&mut self) -> Result<(), PgError> {
        let tx = self.client.transaction().await?;
        fence(&tx, self.epoch).await?;
        let next = read::event_count(&tx).await?;
        let frontier = tree::load_frontier(&tx, next).await?;
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
        let commands: Vec<PgCommand> = requests.iter().cloned().map(PgCommand::Append).collect();
        let done = self.apply_group(&commands).await?;
        Ok(done
            .into_iter()
            .map(|d| match d {
                PgDone::Append(r) => r,
                // apply_group answers each command with its own kind, in order.
                other => Err(PgError::Corrupt {
                    table: "events",
                    key: 0,
                    problem: format!("an append was answered as {other:?}"),
                }),
            })
            .collect())
    }

    /// Applies a group of commands in one fenced transaction with one COMMIT, with the appender's semantics:
    /// optimistically without a savepoint per append request, replayed with one per request if one fails; heads,
    /// tokens and erasures (rare) always in a savepoint of their own. The outer error means nothing was stored;
    /// otherwise one [`PgDone`] per command, in order.
    pub async fn apply_group(&mut self, commands: &[PgCommand]) -> Result<Vec<PgDone>, PgError> {
        let start = (self.next_seq, self.frontier.clone());
        let first = match commands.iter().all(|c| matches!(c, PgCommand::Append(_))) {
            // The common case, ingest alone: two round trips, pipelined (`attempt_appends`).
            true => self.attempt_appends(commands).await,
            false => self.attempt(commands, Isolation::Shared).await,
        };
        let outcome = match first {
            Ok(None) => {
                (self.next_seq, self.frontier) = start.clone();
                tracing::debug!(
                    commands = commands.len(),
                    "pg writer: a request failed; replaying with savepoints"
                );
                self.attempt(commands, Isolation::PerRequest).await
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

    /// The optimistic attempt at a group of append requests alone, in two round trips instead of six: BEGIN, the
    /// fence and the de-duplication look-up go out together; then, if the fence holds, the inserts and COMMIT go out
    /// together. A failing insert aborts the transaction on the server, which then answers the COMMIT with a
    /// ROLLBACK: nothing of the group is stored, the insert's error says so, and the caller replays the group with
    /// a savepoint per request ([`PgWriter::attempt`]). The same outcomes as `attempt` with [`Isolation::Shared`].
    async fn attempt_appends(&mut self, commands: &[PgCommand]) -> Result<Option<Vec<PgDone>>, PgError> {
        let PgWriter { client, epoch, next_seq, frontier, statements } = self;
        let requests: Vec<&[NewEvent]> = commands
            .iter()
            .filter_map(|c| if let PgCommand::Append(events) = c { Some(events.as_slice()) } else { None })
            .collect();
        let keys = IdKeys::of(&requests);
        let begin = client.batch_execute("BEGIN");
        let fenced = client.query_one(&statements.fence, &[]);
        let lookup = async {
            match keys.is_empty() {
                true => Ok(Vec::new()),
                false => client.query(&statements.find_by_source_ids, &keys.params()).await,
            }
        };
        let (begun, fenced, found) = tokio::join!(begin, fenced, lookup);
        let checked = begun.map_err(PgError::from).and_then(|()| {
            let current: i64 = fenced?.try_get(0)?;
            match current == *epoch {
                true => Ok(found?),
                false => Err(PgError::FencedOut { ours: *epoch, current }),
            }
        });
        let found = match checked {
            Ok(rows) => rows,
            Err(e) => {
                rollback(client).await;
                return Err(e);
            }
        };
        let stored = match stored_ids(found, *next_seq) {
            Ok(stored) => stored,
            Err(e) => {
                rollback(client).await;
                return Err(e);
            }
        };
        let batch = Batch::build(&requests, stored, *next_seq, frontier);
        let (inserted, committed) = match batch.rows.seq.is_empty() {
            // Nothing new (every event a duplicate): nothing to insert, the COMMIT ends the read-only transaction.
            true => (Ok(()), client.batch_execute("COMMIT").await),
            false => {
                let params = batch.rows.params();
                let node_params: [&(dyn ToSql + Sync); 3] = [&batch.levels, &batch.idxs, &batch.hashes];
                let events = client.execute(&statements.insert_events, &params);
                let nodes = async {
                    match batch.levels.is_empty() {
                        true => Ok(0),
                        false => client.execute(&statements.insert_nodes, &node_params).await,
                    }
                };
                let commit = client.batch_execute("COMMIT");
                let (events, nodes, commit) = tokio::join!(events, nodes, commit);
                (events.and(nodes).map(|_| ()), commit)
            }
        };
        match (inserted, committed) {
            // A request failed: the server rolled the transaction back at COMMIT; replay with savepoints.
            (Err(e), Ok(())) => {
                tracing::debug!(error = %super::error_text(&e), "pg writer: the group's inserts failed");
                Ok(None)
            }
            (Err(e), Err(_)) | (Ok(()), Err(e)) => Err(e.into()),
            (Ok(()), Ok(())) => {
                *next_seq = batch.next;
                *frontier = batch.tree;
                let mut out = batch.out.into_iter();
                Ok(Some(
                    requests
                        .iter()
                        .map(|r| PgDone::Append(Ok(out.by_ref().take(r.len()).collect())))
                        .collect(),
                ))
            }
        }
    }

    /// One attempt: `Ok(Some)` committed, `Ok(None)` a request failed without a savepoint (rolled back), `Err`
    /// nothing stored (fenced out, BEGIN or COMMIT failed). `next_seq`/`frontier` move as requests succeed; the
    /// caller rewinds them on anything but `Ok(Some)`.
    async fn attempt(
        &mut self,
        commands: &[PgCommand],
        isolation: Isolation,
    ) -> Result<Option<Vec<PgDone>>, PgError> {
        let PgWriter { client, epoch, next_seq, frontier, statements } = self;
        let mut tx = client.transaction().await?;
        fence(&tx, *epoch).await?;
        let mut results = Vec::with_capacity(commands.len());
        let mut i = 0;
        while i < commands.len() {
            if isolation == Isolation::Shared && matches!(commands[i], PgCommand::Append(_)) {
                // A run of consecutive append requests goes out as one pipelined batch.
                let mut run = Vec::new();
                while let Some(PgCommand::Append(events)) = commands.get(i) {
                    run.push(events.as_slice());
                    i += 1;
                }
                match append_requests(&tx, statements, next_seq, frontier, &run).await {
                    Ok(outs) => results.extend(outs.into_iter().map(|o| PgDone::Append(Ok(o)))),
                    Err(_) => {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                }
                continue;
            }
            let command = &commands[i];
            i += 1;
            let sp = tx.savepoint("request").await?;
            let done = match command {
                PgCommand::Append(events) => {
                    PgDone::Append(append_request(&sp, statements, next_seq, frontier, events).await)
                }
                PgCommand::StoreHead(h) => PgDone::Stored(insert_head(&sp, h).await),
                PgCommand::StoreTimestamp(t) => PgDone::Stored(insert_timestamp(&sp, t).await),
                PgCommand::StoreCosignature(cos, cursor) => {
                    PgDone::Stored(insert_cosignature(&sp, cos, cursor).await)
                }
                PgCommand::Erase { seq, erased_by, reason } => {
                    PgDone::Erase(erase(&sp, statements, next_seq, frontier, *seq, erased_by, reason).await)
                }
            };
            let ok = match &done {
                PgDone::Append(r) => r.is_ok(),
                PgDone::Stored(r) => r.is_ok(),
                PgDone::Erase(r) => r.is_ok(),
            };
            if ok {
                sp.commit().await?;
            } else {
                sp.rollback().await?;
            }
            results.push(done);
        }
        // The 2xx point: nothing is answered before this returns.
        tx.commit().await?;
        Ok(Some(results))
    }

    /// Stores a signed head in its own fenced transaction; returns after COMMIT.
    pub async fn insert_head(&mut self, h: &StoredHead) -> Result<(), PgError> {
        let tx = self.client.transaction().await?;
        fence(&tx, self.epoch).await?;
        insert_head(&tx, h).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the PEM public key of a head-signing key (once per key id: a second call keeps the first), in its
    /// own fenced transaction; returns after COMMIT.
    pub async fn record_public_key(&mut self, key_id: &str, pem: &str) -> Result<(), PgError> {
        let tx = self.client.transaction().await?;
        fence(&tx, self.epoch).await?;
        tx.execute(
            "INSERT INTO log_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&format!("key:{key_id}"), &pem],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a verified time-stamp token of a stored head in its own fenced transaction; returns after COMMIT.
    pub async fn insert_timestamp(&mut self, t: &StoredTimestamp) -> Result<(), PgError> {
        let tx = self.client.transaction().await?;
        fence(&tx, self.epoch).await?;
        insert_timestamp(&tx, t).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Inserts a signed head (the caller owns the transaction; the trigger refuses a height out of sequence).
async fn insert_head(tx: &Transaction<'_>, h: &StoredHead) -> Result<(), PgError> {
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
    Ok(())
}

/// Inserts a time-stamp token (the caller owns the transaction; one per head, its head must exist).
async fn insert_timestamp(tx: &Transaction<'_>, t: &StoredTimestamp) -> Result<(), PgError> {
    tx.execute(
        "INSERT INTO timestamps (height, response, gen_time_ms, gen_time, tsa_url, stored_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&i64_of(t.height), &t.response, &t.gen_time_ms, &t.gen_time, &t.tsa_url, &t.stored_at_ms],
    )
    .await?;
    Ok(())
}

/// Stores a verified cosignature (a second one of the same head by the same key is ignored: the first stays) and
/// sets the witness's cursor, an update in place (the cursor is not evidence). The caller owns the transaction.
async fn insert_cosignature(
    tx: &Transaction<'_>,
    c: &StoredCosignature,
    cursor: &WitnessCursor,
) -> Result<(), PgError> {
    tx.execute(
        "INSERT INTO cosignatures (height, witness, key_id, line, timestamp, stored_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (height, witness, key_id) DO NOTHING",
        &[
            &i64_of(c.height),
            &c.witness,
            &format!("{:08x}", c.key_id),
            &c.line,
            &i64_of(c.timestamp),
            &c.stored_at_ms,
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO witness_state (witness, tree_size, height, updated_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (witness) DO UPDATE SET tree_size = excluded.tree_size, height = excluded.height, \
         updated_at_ms = excluded.updated_at_ms",
        &[&cursor.witness, &i64_of(cursor.tree_size), &i64_of(cursor.height), &super::now_ms()],
    )
    .await?;
    Ok(())
}

/// Erases the payload of `seq` and appends the event that logs it, inside the caller's savepoint: both or
/// neither (the appender's `erase`). The triggers check the same again.
async fn erase(
    tx: &Transaction<'_>,
    statements: &Statements,
    next_seq: &mut u64,
    frontier: &mut Frontier,
    seq: u64,
    erased_by: &str,
    reason: &str,
) -> Result<(ErasureRecord, [u8; 32]), PgError> {
    let target = read::event(tx, seq).await?.ok_or(PgError::NoSuchEvent(seq))?;
    if target.body.is_none() {
        return Err(PgError::AlreadyErased(seq));
    }
    if internal::is_appliance_entry(&target.entry) {
        return Err(PgError::ApplianceRecord(seq));
    }
    let before = (*next_seq, frontier.clone());
    let ev = internal::internal_event(&internal::erasure_body(seq, erased_by, reason));
    let result = async {
        let appended = append_request(tx, statements, next_seq, frontier, std::slice::from_ref(&ev)).await?;
        let logged = appended.first().ok_or_else(|| PgError::Corrupt {
            table: "events",
            key: seq,
            problem: "the erasure event was not appended".into(),
        })?;
        let record = ErasureRecord {
            seq,
            erasure_seq: logged.seq,
            erased_by: erased_by.to_string(),
            reason: reason.to_string(),
            erased_at_ms: super::now_ms(),
        };
        tx.execute(
            "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&i64_of(record.seq), &i64_of(record.erasure_seq), &record.erased_by, &record.reason, &record.erased_at_ms],
        )
        .await?;
        let n = tx.execute("UPDATE events SET body = NULL, salt = NULL WHERE seq = $1", &[&i64_of(seq)]).await?;
        if n != 1 {
            return Err(PgError::Corrupt { table: "events", key: seq, problem: "erased row vanished".into() });
        }
        Ok((record, logged.leaf_hash))
    }
    .await;
    if result.is_err() {
        (*next_seq, *frontier) = before;
    }
    result
}

/// Applies one request inside `tx` (the group's transaction or the request's savepoint): see [`append_requests`].
async fn append_request(
    tx: &Transaction<'_>,
    statements: &Statements,
    next_seq: &mut u64,
    frontier: &mut Frontier,
    events: &[NewEvent],
) -> RequestResult {
    let mut outs = append_requests(tx, statements, next_seq, frontier, &[events]).await?;
    Ok(outs.pop().unwrap_or_default())
}

/// Applies `requests` inside `tx`, all or nothing: de-duplicates by `(producer, source, source_id)` (against the
/// stored log and the earlier events of the batch), inserts each new event at the next seq with the tree nodes it
/// completes. `next_seq` and `frontier` move only if everything succeeded; one result per request.
///
/// Three statements for the whole batch, whatever its size: one de-duplication look-up of every id, one INSERT of
/// every event and one of every node, each over arrays (`unnest`). The per-statement cost (parse, plan, executor
/// start, a round trip) was most of the server's CPU per event with one statement per row (docs/PERFORMANCE.md).
/// The events are inserted in seq order (`ORDER BY` the arrays' ordinality); the dense-seq trigger runs per row and
/// sees the rows inserted before it by the same statement.
async fn append_requests(
    tx: &Transaction<'_>,
    statements: &Statements,
    next_seq: &mut u64,
    frontier: &mut Frontier,
    requests: &[&[NewEvent]],
) -> Result<Vec<Vec<Appended>>, PgError> {
    let keys = IdKeys::of(requests);
    let found = match keys.is_empty() {
        true => Vec::new(),
        false => tx.query(&statements.find_by_source_ids, &keys.params()).await?,
    };
    let batch = Batch::build(requests, stored_ids(found, *next_seq)?, *next_seq, frontier);
    if !batch.rows.seq.is_empty() {
        let params = batch.rows.params();
        let events = tx.execute(&statements.insert_events, &params);
        if batch.levels.is_empty() {
            events.await?;
        } else {
            let node_params: [&(dyn ToSql + Sync); 3] = [&batch.levels, &batch.idxs, &batch.hashes];
            let nodes = tx.execute(&statements.insert_nodes, &node_params);
            // Both go out at once; the server runs them in order, and a failure of the first aborts the second.
            futures_util::future::try_join(events, nodes).await?;
        }
    }
    *next_seq = batch.next;
    *frontier = batch.tree;
    let mut out = batch.out.into_iter();
    Ok(requests.iter().map(|r| out.by_ref().take(r.len()).collect()).collect())
}

/// Ends a transaction the writer gave up on (fenced out, a failed look-up); a session that broke needs none.
async fn rollback(client: &Client) {
    if let Err(e) = client.batch_execute("ROLLBACK").await {
        tracing::warn!(error = %super::error_text(&e), "pg writer: ROLLBACK failed");
    }
}

/// The `(producer, source, source_id)` of every event of a batch that has an id: the de-duplication look-up's
/// three array parameters.
struct IdKeys<'a> {
    producers: Vec<&'a str>,
    sources: Vec<&'a str>,
    ids: Vec<&'a str>,
}

impl<'a> IdKeys<'a> {
    fn of(requests: &[&'a [NewEvent]]) -> IdKeys<'a> {
        let mut k = IdKeys { producers: Vec::new(), sources: Vec::new(), ids: Vec::new() };
        for ev in requests.iter().flat_map(|r| r.iter()) {
            if let Some(id) = ev.source_id.as_deref() {
                k.producers.push(&ev.producer);
                k.sources.push(&ev.source);
                k.ids.push(id);
            }
        }
        k
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.producers, &self.sources, &self.ids]
    }
}

/// The stored events the look-up found, by `(producer, source, source_id)`.
type StoredIds = HashMap<(String, String, String), (u64, [u8; 32])>;

fn stored_ids(rows: Vec<tokio_postgres::Row>, next_seq: u64) -> Result<StoredIds, PgError> {
    let mut stored = HashMap::new();
    for row in rows {
        let seq = super::u64_of(row.try_get(3)?, "events", next_seq, "seq")?;
        let leaf_hash = super::hash_of(row.try_get(4)?, "events", seq, "leaf_hash")?;
        stored.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?), (seq, leaf_hash));
    }
    Ok(stored)
}

/// A batch of append requests made ready to insert: each event de-duplicated (against the stored log and the
/// earlier events of the batch) or given the next seq, its entry and leaf hash, and the tree nodes it completes.
struct Batch<'a> {
    rows: EventColumns<'a>,
    levels: Vec<i32>,
    idxs: Vec<i64>,
    hashes: Vec<Vec<u8>>,
    /// One outcome per event, in request order.
    out: Vec<Appended>,
    /// The next seq and the tree once the batch is committed.
    next: u64,
    tree: Frontier,
}

impl<'a> Batch<'a> {
    fn build(
        requests: &[&'a [NewEvent]],
        stored: StoredIds,
        next_seq: u64,
        frontier: &Frontier,
    ) -> Batch<'a> {
        let mut b = Batch {
            rows: EventColumns::default(),
            levels: Vec::new(),
            idxs: Vec::new(),
            hashes: Vec::new(),
            out: Vec::new(),
            next: next_seq,
            tree: frontier.clone(),
        };
        // Ids new in this batch: a second event with the same id is a duplicate of the first one's new seq.
        let mut fresh: HashMap<(&str, &str, &str), (u64, [u8; 32])> = HashMap::new();
        for ev in requests.iter().flat_map(|r| r.iter()) {
            let key = ev.source_id.as_deref().map(|id| (&*ev.producer, &*ev.source, id));
            let known = key.as_ref().and_then(|&(p, s, id)| {
                // Stored duplicates are rare (a producer's retry): the owned key is built only when there are some.
                fresh.get(&(p, s, id)).or_else(|| match stored.is_empty() {
                    true => None,
                    false => stored.get(&(p.to_string(), s.to_string(), id.to_string())),
                })
            });
            if let Some(&(seq, leaf_hash)) = known {
                b.out.push(Appended { seq, leaf_hash, duplicate: true });
                continue;
            }
            let entry = entry_of(ev, b.next);
            let leaf_hash = merkle::leaf_hash(&entry);
            let (levels, idxs, hashes) = (&mut b.levels, &mut b.idxs, &mut b.hashes);
            b.tree.push_with(leaf_hash, |start, len, hash| {
                if len > 1 {
                    let level = len.trailing_zeros();
                    levels.push(level as i32);
                    idxs.push(i64_of(start >> level));
                    hashes.push(hash.to_vec());
                }
            });
            if let Some(k) = key {
                fresh.insert(k, (b.next, leaf_hash));
            }
            b.rows.push(ev, i64_of(b.next), entry, leaf_hash);
            b.out.push(Appended { seq: b.next, leaf_hash, duplicate: false });
            b.next += 1;
        }
        b
    }
}

/// The columns of a batch of event inserts, one array each (borrowing from the requests' events).
#[derive(Default)]
struct EventColumns<'a> {
    seq: Vec<i64>,
    received_at_ns: Vec<i64>,
    producer: Vec<&'a str>,
    source: Vec<&'a str>,
    format: Vec<&'a str>,
    source_id: Vec<Option<&'a str>>,
    entry: Vec<Vec<u8>>,
    leaf_hash: Vec<Vec<u8>>,
    salt: Vec<&'a [u8]>,
    body: Vec<&'a [u8]>,
}

impl<'a> EventColumns<'a> {
    /// The ten array parameters of the events INSERT, in its column order.
    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.seq,
            &self.received_at_ns,
            &self.producer,
            &self.source,
            &self.format,
            &self.source_id,
            &self.entry,
            &self.leaf_hash,
            &self.salt,
            &self.body,
        ]
    }

    fn push(&mut self, ev: &'a NewEvent, seq: i64, entry: Vec<u8>, leaf_hash: [u8; 32]) {
        self.seq.push(seq);
        self.received_at_ns.push(i64_of(ev.received_at_ns));
        self.producer.push(&ev.producer);
        self.source.push(&ev.source);
        self.format.push(ev.format);
        self.source_id.push(ev.source_id.as_deref());
        self.entry.push(entry);
        self.leaf_hash.push(leaf_hash.to_vec());
        self.salt.push(&ev.salt[..]);
        self.body.push(&ev.body);
    }
}
