//! The single writer: one OS thread owns the write connection; every append and every head goes through it.
//!
//! Group commit: the thread takes the first waiting command, drains whatever else is already queued (up to a
//! bound), applies them all in one transaction, commits once (one fsync under `synchronous=FULL`), and only
//! then answers every waiter. A handler therefore sends its 2xx only after its events are durable.
//!
//! Optimistic: the group's requests first run without a SAVEPOINT each (a savepoint journals every page it
//! changes, 30 % of the writer's time). If one of them fails, that transaction is rolled back and the group
//! replayed with a savepoint per request, so one failing request cannot take others down and nothing of it is
//! stored; the replay is counted (`anchorlog_commit_replays_total`).

use crate::ledger::event::NewEvent;
use crate::ledger::indexer::{IndexRow, IndexerHandle};
use crate::ledger::internal;
use crate::store::cosignatures::{StoredCosignature, WitnessCursor};
use crate::store::{self, EventRow, StoreError, StoredTimestamp};
use anchorlog_core::entry::Entry;
use anchorlog_core::merkle::{self, Frontier};
use anchorlog_core::stored::ErasureRecord;
use anchorlog_core::stored::StoredHead;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

/// Most events applied in one transaction; bounds commit latency and memory.
pub const MAX_GROUP_EVENTS: usize = 50_000;
/// Depth of the command queue; producers wait (backpressure) when it is full.
pub const QUEUE_DEPTH: usize = 4_096;

/// The outcome of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number (the original one for a duplicate).
    pub seq: u64,
    /// Its leaf hash.
    pub leaf_hash: [u8; 32],
    /// True if an event with the same (producer, source, source id) was already stored.
    pub duplicate: bool,
}

/// Why an append or head store failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The database refused the write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread has stopped (shutdown or a fatal error).
    #[error("the writer has stopped")]
    Stopped,
    /// This node does not hold the writer lease (PostgreSQL, docs/HA.md): it is a standby, or it stepped down.
    /// Nothing was stored; the request may be sent again (to the writer node, or here later).
    #[error("this node is not the writer ({0})")]
    NotWriter(String),
    /// The PostgreSQL store refused the write or failed.
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Postgres(crate::store::pg::PgError),
}

/// Why an erasure was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// The event to erase does not exist.
    #[error("no event with seq {0}")]
    NoSuchEvent(u64),
    /// The event's payload was already erased.
    #[error("the payload of event seq {0} is already erased")]
    AlreadyErased(u64),
    /// The event is one of the appliance's own records (start, stop, outage, denial, audit access, erasure):
    /// they hold no personal payload of a data subject and are the evidence of the log's own history.
    #[error("event seq {0} is a record of the appliance itself; its payload cannot be erased")]
    ApplianceRecord(u64),
    /// Storing failed or the writer stopped.
    #[error(transparent)]
    Append(#[from] AppendError),
}

impl From<StoreError> for EraseError {
    fn from(e: StoreError) -> Self {
        EraseError::Append(AppendError::Store(e))
    }
}

/// What an erasure did.
#[derive(Debug, Clone)]
pub struct Erased {
    /// The stored erasure record.
    pub record: ErasureRecord,
    /// The leaf hash of the event that logs the erasure.
    pub erasure_leaf_hash: [u8; 32],
}

/// One request to the writer, with where its answer goes (the SQLite writer thread's and the PostgreSQL node's).
pub(crate) enum Command {
    Append {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Appended>, AppendError>>,
    },
    StoreHead {
        head: Box<StoredHead>,
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    StoreTimestamp {
        token: Box<StoredTimestamp>,
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    StoreCosignature {
        cosignature: Box<(StoredCosignature, WitnessCursor)>,
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    Erase {
        seq: u64,
        erased_by: String,
        reason: String,
        reply: oneshot::Sender<Result<Erased, EraseError>>,
    },
}

impl Command {
    /// How much of a group this command takes (its events; 1 for the others).
    pub(crate) fn weight(&self) -> usize {
        match self {
            Command::Append { events, .. } => events.len().max(1),
            Command::StoreHead { .. }
            | Command::StoreTimestamp { .. }
            | Command::StoreCosignature { .. }
            | Command::Erase { .. } => 1,
        }
    }
}

/// Async handle to the writer thread. Cloning shares the same writer.
#[derive(Clone)]
pub struct AppenderHandle {
    commands: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    /// Set (once) when the writer stopped on an I/O error it cannot recover from.
    fatal: watch::Receiver<Option<String>>,
}

impl AppenderHandle {
    /// A handle over a writer that is not the SQLite thread (the PostgreSQL node, src/ledger/pg_node.rs).
    #[cfg(feature = "postgres")]
    pub(crate) fn from_parts(
        commands: mpsc::Sender<Command>,
        committed: watch::Receiver<u64>,
        fatal: watch::Receiver<Option<String>>,
    ) -> AppenderHandle {
        AppenderHandle { commands, committed, fatal }
    }

    /// Starts the writer thread on `conn` (opened by [`store::open_writer`]) without a search indexer.
    pub fn start(conn: Connection) -> Result<(AppenderHandle, std::thread::JoinHandle<()>), AppendError> {
        Self::start_with_indexer(conn, None)
    }

    /// Starts the writer thread; after every commit it hands the new events' fields to `indexer`.
    pub fn start_with_indexer(
        conn: Connection,
        indexer: Option<IndexerHandle>,
    ) -> Result<(AppenderHandle, std::thread::JoinHandle<()>), AppendError> {
        Self::start_observed(conn, indexer, WriterObserver::default())
    }

    /// [`AppenderHandle::start_with_indexer`], reporting commits and replays to `observer`.
    pub fn start_observed(
        conn: Connection,
        indexer: Option<IndexerHandle>,
        observer: WriterObserver,
    ) -> Result<(AppenderHandle, std::thread::JoinHandle<()>), AppendError> {
        let next_seq = store::event_count(&conn)?;
        // O(log n): the right edge of the tree from the stored nodes, not a walk over every leaf.
        let frontier = store::tree::load_frontier(&conn, next_seq)?;
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let (committed_tx, committed) = watch::channel(next_seq);
        let (fatal_tx, fatal) = watch::channel(None);
        let join = std::thread::Builder::new()
            .name("anchorlog-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    next_seq,
                    frontier,
                    committed: committed_tx,
                    indexer,
                    observer,
                    fatal: fatal_tx,
                }
                .run(rx)
            })
            .map_err(|_| AppendError::Stopped)?;
        Ok((AppenderHandle { commands, committed, fatal }, join))
    }

    /// Appends `events` atomically; returns after they are committed to disk.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Append { events, reply }).await.map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }

    /// Stores a signed head; returns after it is committed to disk.
    pub async fn store_head(&self, head: StoredHead) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::StoreHead { head: Box::new(head), reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }

    /// Stores a verified time-stamp token of an already stored head; returns after it is committed.
    pub async fn store_timestamp(&self, token: StoredTimestamp) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::StoreTimestamp { token: Box::new(token), reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }

    /// Stores a verified witness cosignature of an already stored head and moves that witness's cursor, in one
    /// transaction; returns after both are committed.
    pub async fn store_cosignature(
        &self,
        cosignature: StoredCosignature,
        cursor: WitnessCursor,
    ) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::StoreCosignature { cosignature: Box::new((cosignature, cursor)), reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }

    /// Erases the payload (body and salt) of event `seq` and logs the erasure as an event of the
    /// appliance's own source, atomically; returns after both are committed to disk.
    pub async fn erase(&self, seq: u64, erased_by: String, reason: String) -> Result<Erased, EraseError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Erase { seq, erased_by, reason, reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }

    /// A watch that turns `Some(error)` when the writer stopped on an I/O error (a failed write or fsync): the
    /// server then stops, since nothing can be acknowledged any more.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.clone()
    }

    /// A watch of the number of committed events (the next seq).
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

struct Writer {
    conn: Connection,
    next_seq: u64,
    /// The tree over every committed event; completed subtrees go to the node store in the same transaction.
    frontier: Frontier,
    committed: watch::Sender<u64>,
    indexer: Option<IndexerHandle>,
    observer: WriterObserver,
    /// Set when a write or sync failed with an I/O error: the writer stops (docs/RELIABILITY.md, fsyncgate).
    fatal: watch::Sender<Option<String>>,
}

/// What the writer thread reports as it goes (the server feeds its metrics; this module knows no metrics).
pub struct WriterObserver {
    /// After each successful group commit, with the number of events it stored.
    pub on_commit: Box<dyn Fn(u64) + Send>,
    /// Each time a request failed in an optimistic group attempt and the group is replayed with a savepoint per
    /// request.
    pub on_replay: Box<dyn Fn() + Send>,
}

impl Default for WriterObserver {
    fn default() -> Self {
        WriterObserver { on_commit: Box::new(|_| {}), on_replay: Box::new(|| {}) }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut weight = group[0].weight();
            while weight < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(cmd) => {
                        weight += cmd.weight();
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            self.apply_group(group);
            if self.fatal.borrow().is_some() {
                // The file's state after a failed write or sync is unknown (the kernel may have dropped the dirty
                // pages it could not write): nothing more is written, not even the final checkpoint. The waiters
                // still queued hear "writer stopped"; the next start recovers from what is on disk.
                return;
            }
        }
        // A clean stop leaves a self-contained database file: fold the WAL back in, so a copy of the .db alone
        // (a backup, an export to an auditor) holds everything.
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %e, "writer: final WAL checkpoint failed; the -wal file must be kept with the database");
        }
        tracing::debug!("writer: all handles dropped, stopping");
    }

    /// Applies one group in one transaction. First optimistically, without a savepoint per request: the common
    /// case, where every request succeeds, then skips the statement journal a savepoint keeps of every page it
    /// changes (docs/PERFORMANCE.md: 30 % of the writer's time). If a request fails, that attempt is rolled back
    /// whole (its failed request may have left some of its rows in the transaction) and the group is replayed
    /// with a savepoint per request, so the failing request fails alone and the others are stored as if it had
    /// never been sent. Either way nothing is answered before the one commit, and a failed commit fails all.
    fn apply_group(&mut self, group: Vec<Command>) {
        let start_seq = self.next_seq;
        let start_frontier = self.frontier.clone();
        let outcome = match self.attempt(&group, Isolation::Shared) {
            Attempt::RequestFailed => {
                self.next_seq = start_seq;
                self.frontier = start_frontier.clone();
                (self.observer.on_replay)();
                tracing::debug!(
                    requests = group.len(),
                    "writer: a request of the group failed; rolled back, replaying with a savepoint per request"
                );
                self.attempt(&group, Isolation::PerRequest)
            }
            other => other,
        };
        let results = match outcome {
            Attempt::Committed(results) => results,
            Attempt::Failed(e) => {
                self.next_seq = start_seq;
                self.frontier = start_frontier;
                fail_group(group, start_seq, &e);
                if e.fault() == Some(crate::store::fault::StorageFault::Io) {
                    tracing::error!(error = %e, "writer: a write or sync of the database failed; stopping the writer \
                        (nothing more is written to a file in an unknown state; restart on a healthy disk)");
                    self.fatal.send_replace(Some(e.to_string()));
                }
                return;
            }
            // Not reached: with a savepoint per request a failing request is an answer, not a failed attempt.
            // Kept total: nothing was committed, so every waiter fails.
            Attempt::RequestFailed => {
                self.next_seq = start_seq;
                self.frontier = start_frontier;
                let e = StoreError::Corrupt {
                    table: "events",
                    key: start_seq,
                    problem: "a request failed outside its savepoint".into(),
                };
                fail_group(group, start_seq, &e);
                return;
            }
        };
        let _ = self.committed.send(self.next_seq);
        if self.next_seq > start_seq {
            (self.observer.on_commit)(self.next_seq - start_seq);
        }
        let mut rows = Vec::new();
        let mut erased = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        let index = self.indexer.is_some();
        for (cmd, result) in group.into_iter().zip(results) {
            match (cmd, result) {
                (Command::Append { events, reply }, Done::Append(result)) => {
                    if let (true, Ok(appended)) = (index, &result) {
                        // The events are no longer needed: move their fields instead of copying.
                        rows.extend(
                            appended
                                .iter()
                                .zip(events)
                                .filter(|(a, _)| !a.duplicate)
                                .map(|(a, e)| IndexRow { seq: a.seq, source: e.source, fields: e.fields }),
                        );
                    }
                    replies.push(Reply::Append(reply, result));
                }
                (Command::Erase { reply, .. }, Done::Erase(result)) => {
                    if let Ok(done) = &result {
                        erased.push(done.record.seq);
                        if index {
                            let logged = internal::internal_event(&internal::erasure_body(
                                done.record.seq,
                                &done.record.erased_by,
                                &done.record.reason,
                            ));
                            rows.push(IndexRow {
                                seq: done.record.erasure_seq,
                                source: logged.source,
                                fields: logged.fields,
                            });
                        }
                    }
                    replies.push(Reply::Erase(reply, result));
                }
                (
                    Command::StoreHead { reply, .. }
                    | Command::StoreTimestamp { reply, .. }
                    | Command::StoreCosignature { reply, .. },
                    Done::Stored(result),
                ) => replies.push(Reply::Stored(reply, result)),
                // `attempt` answers each command with its own kind, in order; a mismatch cannot happen, and if it
                // did the waiter is told rather than left hanging (dropping its reply says "writer stopped").
                (cmd, _) => {
                    tracing::error!("writer: a command's result did not match it; answering it as failed");
                    drop(cmd);
                }
            }
        }
        // The indexer hears of the events (and of an erased body) before any producer or admin hears back.
        if !erased.is_empty() {
            crash_point!(ErasureBeforeScrub);
        }
        if let Some(indexer) = &self.indexer {
            indexer.send(rows);
            for seq in erased {
                indexer.erased(seq);
            }
        }
        for reply in replies {
            match reply {
                Reply::Append(tx, result) => {
                    let _ = tx.send(result.map_err(AppendError::from));
                }
                Reply::Stored(tx, result) => {
                    let _ = tx.send(result.map_err(AppendError::from));
                }
                Reply::Erase(tx, result) => {
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// One attempt at `group` in one transaction, committed if it gets to the end. With [`Isolation::Shared`] the
    /// first failing append request ends the attempt (rolled back); with [`Isolation::PerRequest`] a failing
    /// request is rolled back to its savepoint and answered with its error. On anything but `Committed` nothing
    /// of the attempt is stored and the caller rewinds `next_seq` and the frontier.
    fn attempt(&mut self, group: &[Command], isolation: Isolation) -> Attempt {
        let next_seq = &mut self.next_seq;
        let frontier = &mut self.frontier;
        let tx = match self.conn.unchecked_transaction() {
            Ok(tx) => tx,
            Err(e) => return Attempt::Failed(e.into()),
        };
        let mut results = Vec::with_capacity(group.len());
        for cmd in group {
            let done = match cmd {
                Command::Append { events, .. } => {
                    let result = append_request(&tx, next_seq, frontier, events, isolation);
                    if result.is_err() && isolation == Isolation::Shared {
                        if let Err(e) = tx.rollback() {
                            // The replay's BEGIN then fails too and every waiter is told.
                            tracing::error!(error = %e, "writer: rolling back the optimistic attempt failed");
                        }
                        return Attempt::RequestFailed;
                    }
                    Done::Append(result)
                }
                // Erasures, heads, time-stamp tokens and cosignatures are rare (about one per second each): they
                // keep their savepoint on both attempts, so their own failure never costs a replay.
                Command::Erase { seq, erased_by, reason, .. } => {
                    Done::Erase(erase(&tx, next_seq, frontier, *seq, erased_by, reason))
                }
                Command::StoreHead { head, .. } => {
                    Done::Stored(in_savepoint(&tx, |c| store::insert_head(c, head)))
                }
                Command::StoreTimestamp { token, .. } => {
                    Done::Stored(in_savepoint(&tx, |c| store::insert_timestamp(c, token)))
                }
                Command::StoreCosignature { cosignature, .. } => {
                    let (cos, cursor) = &**cosignature;
                    Done::Stored(in_savepoint(&tx, |c| {
                        store::cosignatures::insert(c, cos)?;
                        store::cosignatures::set_cursor(c, cursor)
                    }))
                }
            };
            results.push(done);
        }
        match tx.commit() {
            Ok(()) => Attempt::Committed(results),
            Err(e) => Attempt::Failed(e.into()),
        }
    }
}

/// Whether the append requests of one attempt get a savepoint each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoint: a failing request leaves the transaction unusable for the others (its earlier rows are in
    /// it), so the whole attempt is rolled back and replayed with [`Isolation::PerRequest`].
    Shared,
    /// A savepoint per request: a failing request rolls back alone.
    PerRequest,
}

/// What one attempt at a group came to.
enum Attempt {
    /// Committed; one result per command, in order.
    Committed(Vec<Done>),
    /// An append request failed without a savepoint; the attempt was rolled back.
    RequestFailed,
    /// The transaction could not be opened or committed; nothing was stored.
    Failed(StoreError),
}

/// A committed command's waiter and its answer.
enum Reply {
    Append(oneshot::Sender<Result<Vec<Appended>, AppendError>>, Result<Vec<Appended>, StoreError>),
    Stored(oneshot::Sender<Result<(), AppendError>>, Result<(), StoreError>),
    Erase(oneshot::Sender<Result<Erased, EraseError>>, Result<Erased, EraseError>),
}

/// The result of one command of a committed attempt.
enum Done {
    Append(Result<Vec<Appended>, StoreError>),
    Erase(Result<Erased, EraseError>),
    Stored(Result<(), StoreError>),
}

impl Command {
    /// Answers the waiter with `e` (nothing of the command was stored).
    pub(crate) fn fail(self, e: AppendError) {
        match self {
            Command::Append { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Command::StoreHead { reply, .. }
            | Command::StoreTimestamp { reply, .. }
            | Command::StoreCosignature { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Command::Erase { reply, .. } => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }
}

/// Nothing of this group is on disk: fails every waiter.
fn fail_group(group: Vec<Command>, start_seq: u64, e: &StoreError) {
    if e.fault() == Some(crate::store::fault::StorageFault::Io) {
        // After a failed write or sync the transaction's frames may be on disk or not: not acknowledged, unknown.
        tracing::error!(error = %e, "writer: group commit failed on an I/O error; nothing of this group is acknowledged");
    } else {
        tracing::error!(error = %e, "writer: group commit failed; nothing of this group was stored");
    }
    // The cause's storage fault (full disk, lock held elsewhere) decides what callers answer.
    let err = || {
        AppendError::Store(StoreError::GroupCommit {
            first_seq: start_seq,
            fault: e.fault(),
            message: e.to_string(),
        })
    };
    for cmd in group {
        cmd.fail(err());
    }
}

/// The canonical entry `ev` gets at `seq` (docs/FORMAT.md §1).
pub fn entry_of(ev: &NewEvent, seq: u64) -> Vec<u8> {
    Entry {
        seq,
        received_at_ns: ev.received_at_ns,
        producer: ev.producer.to_string(),
        source: ev.source.to_string(),
        auth: ev.auth,
        format: ev.format.to_string(),
        source_id: ev.source_id.clone(),
        payload_sha256: ev.payload_sha256,
    }
    .to_canonical_json()
}

/// Appends `events` (none of them a duplicate: the appliance's own records have no source id) and stores `head`,
/// which must be the head over exactly the log with them, in one transaction, before the writer thread runs
/// (the start that records a key rotation: its record must be the last event of the old key's last head, so
/// nothing may come between). `index` runs in the same transaction with the appended events.
pub fn append_sealed(
    conn: &Connection,
    events: &[NewEvent],
    head: &StoredHead,
    index: impl FnOnce(&Connection, &[Appended]) -> Result<(), StoreError>,
) -> Result<Vec<Appended>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let mut next_seq = store::event_count(&tx)?;
    let mut frontier = store::tree::load_frontier(&tx, next_seq)?;
    // A failure drops `tx`, which rolls everything back: no savepoint needed.
    let appended = append_request(&tx, &mut next_seq, &mut frontier, events, Isolation::Shared)?;
    if frontier.size() != head.tree_size
        || frontier.root() != head.root
        || appended.iter().any(|a| a.duplicate)
    {
        return Err(StoreError::Corrupt {
            table: "heads",
            key: head.height,
            problem: "the log changed while its key rotation head was signed; nothing was stored".into(),
        });
    }
    store::insert_head(&tx, head)?;
    index(&tx, &appended)?;
    tx.commit()?;
    Ok(appended)
}

/// Applies one request: with [`Isolation::PerRequest`] inside its own savepoint, all of its events or none; with
/// [`Isolation::Shared`] without one, so on failure some of its rows may remain in the transaction, which the
/// caller must then roll back. `next_seq` and `frontier` move only on success.
fn append_request(
    conn: &Connection,
    next_seq: &mut u64,
    frontier: &mut Frontier,
    events: &[NewEvent],
    isolation: Isolation,
) -> Result<Vec<Appended>, StoreError> {
    let before = *next_seq;
    let before_frontier = frontier.clone();
    let mut next = *next_seq;
    let mut completed = Vec::new();
    let mut apply = |c: &Connection| {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            if let Some(id) = ev.source_id.as_deref() {
                if let Some((seq, leaf_hash)) = store::find_by_source_id(c, &ev.producer, &ev.source, id)? {
                    out.push(Appended { seq, leaf_hash, duplicate: true });
                    continue;
                }
            }
            let entry = entry_of(ev, next);
            let leaf_hash = merkle::leaf_hash(&entry);
            store::insert_event(
                c,
                &EventRow {
                    seq: next,
                    received_at_ns: ev.received_at_ns,
                    producer: &ev.producer,
                    source: &ev.source,
                    format: ev.format,
                    source_id: ev.source_id.as_deref(),
                    entry: &entry,
                    leaf_hash: &leaf_hash,
                    salt: &ev.salt,
                    body: &ev.body,
                },
            )?;
            frontier.push_with(leaf_hash, |start, len, hash| {
                if len > 1 {
                    completed.push((start, len, *hash));
                }
            });
            for (start, len, hash) in completed.drain(..) {
                store::tree::insert_node(c, start, len, &hash)?;
            }
            out.push(Appended { seq: next, leaf_hash, duplicate: false });
            next += 1;
        }
        Ok(out)
    };
    let result = match isolation {
        Isolation::PerRequest => in_savepoint(conn, apply),
        Isolation::Shared => apply(conn),
    };
    if result.is_ok() {
        *next_seq = next;
    } else {
        *next_seq = before;
        *frontier = before_frontier;
    }
    result
}

/// Erases the payload of `seq` and appends the event that logs it, in one savepoint: both or neither.
fn erase(
    conn: &Connection,
    next_seq: &mut u64,
    frontier: &mut Frontier,
    seq: u64,
    erased_by: &str,
    reason: &str,
) -> Result<Erased, EraseError> {
    let target = store::event(conn, seq)?.ok_or(EraseError::NoSuchEvent(seq))?;
    if target.body.is_none() {
        return Err(EraseError::AlreadyErased(seq));
    }
    if internal::is_appliance_entry(&target.entry) {
        return Err(EraseError::ApplianceRecord(seq));
    }
    let before = (*next_seq, frontier.clone());
    let ev = crate::ledger::internal::internal_event(&crate::ledger::internal::erasure_body(
        seq, erased_by, reason,
    ));
    let result = in_savepoint(conn, |c| {
        // Inside the erasure's own savepoint: the append needs none of its own.
        let appended = append_request(c, next_seq, frontier, std::slice::from_ref(&ev), Isolation::Shared)?;
        let logged = appended.first().ok_or_else(|| StoreError::Corrupt {
            table: "events",
            key: seq,
            problem: "the erasure event was not appended".into(),
        })?;
        let record = ErasureRecord {
            seq,
            erasure_seq: logged.seq,
            erased_by: erased_by.to_string(),
            reason: reason.to_string(),
            erased_at_ms: store::now_ms(),
        };
        store::erasure::erase_payload(c, &record)?;
        crash_point!(ErasureBeforeCommit);
        Ok(Erased { record, erasure_leaf_hash: logged.leaf_hash })
    });
    if result.is_err() {
        (*next_seq, *frontier) = before;
    }
    Ok(result?)
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT request")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE request")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO request; RELEASE request")?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::NormalizedFields;
    use anchorlog_core::entry::AuthMethod;
    use std::sync::Arc;

    fn ev(id: Option<&str>, body: &str) -> NewEvent {
        NewEvent {
            received_at_ns: 42,
            producer: "p".into(),
            source: "events".into(),
            auth: AuthMethod::Mtls,
            format: "json",
            source_id: id.map(str::to_string),
            salt: [7; 32],
            body: body.as_bytes().to_vec(),
            payload_sha256: anchorlog_core::entry::payload_digest(&[7; 32], body.as_bytes()),
            fields: NormalizedFields { event_type: Some("T".into()), ..NormalizedFields::default() },
        }
    }

    #[tokio::test]
    async fn appends_are_dense_deduplicated_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (h, join) = AppenderHandle::start(store::open_writer(&path, "o").unwrap()).unwrap();
        let a = h.append(vec![ev(None, "{}"), ev(Some("x"), "{\"id\":\"x\"}")]).await.unwrap();
        assert_eq!(a.iter().map(|x| (x.seq, x.duplicate)).collect::<Vec<_>>(), vec![(0, false), (1, false)]);
        // The same id again, twice in one request: both are duplicates of seq 1; a new event gets seq 2.
        let b = h.append(vec![ev(Some("x"), "{}"), ev(None, "{}"), ev(Some("x"), "{}")]).await.unwrap();
        assert_eq!(
            b.iter().map(|x| (x.seq, x.duplicate)).collect::<Vec<_>>(),
            vec![(1, true), (2, false), (1, true)]
        );
        assert_eq!(b[0].leaf_hash, a[1].leaf_hash);
        assert_eq!(*h.committed().borrow(), 3);
        drop(h);
        join.join().unwrap();
        let conn = store::open_reader(&path).unwrap();
        assert_eq!(store::event_count(&conn).unwrap(), 3);
        let e1 = store::event(&conn, 1).unwrap().unwrap();
        assert_eq!(e1.leaf_hash, merkle::leaf_hash(&e1.entry));
        assert_eq!(Entry::parse(&e1.entry).unwrap().source_id.as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn erasure_clears_one_payload_logs_itself_and_keeps_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (h, join) = AppenderHandle::start(store::open_writer(&path, "o").unwrap()).unwrap();
        h.append(vec![ev(None, "{\"user\":\"alice\"}"), ev(None, "{}"), ev(None, "{}")]).await.unwrap();
        let e = h.erase(1, "admin-1".into(), "art. 17 request 42".into()).await.unwrap();
        assert_eq!((e.record.seq, e.record.erasure_seq, e.record.erased_by.as_str()), (1, 3, "admin-1"));
        assert!(matches!(
            h.erase(1, "admin-1".into(), "again".into()).await,
            Err(EraseError::AlreadyErased(1))
        ));
        assert!(matches!(h.erase(99, "admin-1".into(), "x".into()).await, Err(EraseError::NoSuchEvent(99))));
        // The writer's frontier went on from the erasure event: the next append gets seq 4.
        let next = h.append(vec![ev(None, "{}")]).await.unwrap();
        assert_eq!(next[0].seq, 4);
        drop(h);
        join.join().unwrap();
        let conn = store::open_reader(&path).unwrap();
        let erased = store::event(&conn, 1).unwrap().unwrap();
        assert_eq!((erased.body, erased.salt), (None, None));
        let logged = store::event(&conn, 3).unwrap().unwrap();
        let entry = Entry::parse(&logged.entry).unwrap();
        assert_eq!(
            (entry.producer.as_str(), entry.source.as_str(), entry.format.as_str()),
            ("anchorlog", "anchorlog", "anchorlog")
        );
        assert_eq!(entry.auth, AuthMethod::Internal);
        let body: serde_json::Value = serde_json::from_slice(&logged.body.unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"type": "anchorlog.erasure", "erased_seq": 1, "erased_by": "admin-1", "reason": "art. 17 request 42"})
        );
        // Stored nodes and leaves agree for every size (the erasure changed no hash).
        let leaves = store::leaf_hashes(&conn, 0, 5).unwrap();
        for size in 0..=5u64 {
            assert_eq!(store::tree::root_at(&conn, size).unwrap(), merkle::root_of(&leaves[..size as usize]));
        }
        // A restarted writer loads its frontier from the nodes and continues the same tree.
        let (h, join) = AppenderHandle::start(store::open_writer(&path, "o").unwrap()).unwrap();
        assert_eq!(h.append(vec![ev(None, "{}")]).await.unwrap()[0].seq, 5);
        drop(h);
        join.join().unwrap();
        let conn = store::open_reader(&path).unwrap();
        let leaves = store::leaf_hashes(&conn, 0, 6).unwrap();
        assert_eq!(store::tree::root_at(&conn, 6).unwrap(), merkle::root_of(&leaves));
    }

    #[tokio::test]
    async fn concurrent_requests_share_commits_and_keep_seqs_dense() {
        let dir = tempfile::tempdir().unwrap();
        let (h, join) =
            AppenderHandle::start(store::open_writer(&dir.path().join("a.db"), "o").unwrap()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let h = h.clone();
            tasks.push(tokio::spawn(
                async move { h.append(vec![ev(None, &format!("{{\"i\":{i}}}")); 3]).await },
            ));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.extend(t.await.unwrap().unwrap().into_iter().map(|a| a.seq));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..150).collect::<Vec<_>>());
        drop(h);
        join.join().unwrap();
    }

    #[tokio::test]
    async fn a_failing_request_rolls_back_alone_inside_a_shared_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let conn = store::open_writer(&db, "o").unwrap();
        // Fault injection: the database refuses any event of producer "bad", after the request's earlier
        // events were inserted (the second event of every failing request).
        conn.execute_batch(
            "CREATE TEMP TRIGGER refuse_bad BEFORE INSERT ON main.events WHEN NEW.producer = 'bad'
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
        let (h, join) = AppenderHandle::start(conn).unwrap();
        let mut tasks = Vec::new();
        for i in 0..60 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let mut events = vec![ev(None, &format!("{{\"i\":{i}}}")); 2];
                if i % 3 == 1 {
                    events[1].producer = "bad".into();
                }
                (i, h.append(events).await)
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            let (i, result) = t.await.unwrap();
            match result {
                Ok(appended) if i % 3 != 1 => seqs.extend(appended.into_iter().map(|a| a.seq)),
                Err(e) if i % 3 == 1 => assert!(e.to_string().contains("injected fault"), "{e}"),
                other => panic!("request {i}: {other:?}"),
            }
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..80).collect::<Vec<_>>(), "40 good requests of 2 events, dense");
        drop(h);
        join.join().unwrap();
        // Nothing of a failed request is stored, and the stored tree verifies (no node of a rolled-back leaf).
        let conn = store::open_reader(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events WHERE body LIKE '%\"i\":1}%'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "request 1 failed on its second event; its first is not stored either");
        assert_eq!(store::event_count(&conn).unwrap(), 80);
        let leaves = store::leaf_hashes(&conn, 0, 80).unwrap();
        let mut frontier = merkle::Frontier::default();
        for leaf in &leaves {
            frontier.push(*leaf);
        }
        assert_eq!(store::tree::root_at(&conn, 80).unwrap(), frontier.root());
    }

    /// Partial ingest (`?partial=true`, api/ingest.rs) answers each good line with the writer's result at the same
    /// position, so a request must get exactly one result per event, in order, whether its group committed at
    /// once or was replayed because another request of the group failed: an in-request duplicate answers the
    /// first copy's seq, an event stored earlier its old seq, and a replay must not leave the first attempt's
    /// seqs in the answer.
    #[tokio::test]
    async fn a_request_keeps_one_result_per_event_in_order_through_a_replay() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_writer(&dir.path().join("a.db"), "o").unwrap();
        conn.execute_batch(
            "CREATE TEMP TRIGGER refuse_bad BEFORE INSERT ON main.events WHEN NEW.producer = 'bad'
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
        let replays = Arc::new(AtomicU64::new(0));
        let observer = WriterObserver {
            on_replay: Box::new({
                let replays = replays.clone();
                move || {
                    replays.fetch_add(1, Ordering::Relaxed);
                }
            }),
            ..WriterObserver::default()
        };
        let (h, join) = AppenderHandle::start_observed(conn, None, observer).unwrap();
        let earlier = h.append(vec![ev(Some("old"), "{\"old\":1}")]).await.unwrap();
        const ROUNDS: u64 = 20;
        for round in 0..ROUNDS {
            // A large request keeps the writer busy while the failing one and the partial one queue up behind
            // it: they share the next group (or the same one), which is rolled back and replayed.
            let big: Vec<NewEvent> =
                (0..500).map(|k| ev(None, &format!("{{\"big\":{round},\"k\":{k}}}"))).collect();
            let mut bad = vec![ev(None, "{\"a\":1}"), ev(None, "{\"a\":2}")];
            bad[1].producer = "bad".into();
            let x = format!("x{round}");
            let partial = vec![
                ev(Some(&x), "{\"line\":0}"),
                ev(None, "{\"line\":1}"),
                ev(Some(&x), "{\"line\":2}"),
                ev(Some("old"), "{\"line\":3}"),
            ];
            let (big, bad, partial) = tokio::join!(h.append(big), h.append(bad), h.append(partial));
            let big = big.unwrap();
            assert!(matches!(bad, Err(AppendError::Store(_))), "{bad:?}");
            let got = partial.unwrap();
            assert_eq!(got.len(), 4, "one result per event");
            let first = got[0].seq;
            assert_eq!(
                first,
                big.last().unwrap().seq + 1,
                "dense after the big request, nothing of the bad one"
            );
            assert_eq!(
                got,
                vec![
                    Appended { seq: first, leaf_hash: got[0].leaf_hash, duplicate: false },
                    Appended { seq: first + 1, leaf_hash: got[1].leaf_hash, duplicate: false },
                    Appended { seq: first, leaf_hash: got[0].leaf_hash, duplicate: true },
                    Appended { seq: earlier[0].seq, leaf_hash: earlier[0].leaf_hash, duplicate: true },
                ],
                "round {round}"
            );
        }
        assert_eq!(replays.load(Ordering::Relaxed), ROUNDS, "every round's group was replayed once");
        drop(h);
        join.join().unwrap();
    }

    /// The replay path under load: 400 requests of 1–4 events from concurrent tasks, every tenth one refused by
    /// the database on its last event (after its earlier events were inserted), and every request sent twice at
    /// once (a producer's retry). Groups mix good and bad requests, so the writer rolls back and replays many
    /// of them; every good request must be stored exactly once at dense seqs with its bodies, every bad one
    /// answered with its own error and nothing of it stored, and the log must verify under a signed head.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_load_replayed_groups_store_every_good_request_once_and_nothing_of_a_bad_one() {
        use anchorlog_core::head::Checkpoint;
        use p256::ecdsa::{DerSignature, SigningKey};
        use p256::pkcs8::EncodePublicKey as _;
        use signature::Signer as _;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Mutex;

        const ORIGIN: &str = "anchorlog.test/replay";
        const REQUESTS: usize = 400;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let conn = store::open_writer(&db, ORIGIN).unwrap();
        conn.execute_batch(
            "CREATE TEMP TRIGGER refuse_bad BEFORE INSERT ON main.events WHEN NEW.producer = 'bad'
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
        let replays = Arc::new(AtomicU64::new(0));
        let commits = Arc::new(Mutex::new(Vec::new()));
        let observer = WriterObserver {
            on_commit: Box::new({
                let commits = commits.clone();
                move |n| commits.lock().unwrap().push(n)
            }),
            on_replay: Box::new({
                let replays = replays.clone();
                move || {
                    replays.fetch_add(1, Ordering::Relaxed);
                }
            }),
        };
        let (h, join) = AppenderHandle::start_observed(conn, None, observer).unwrap();
        let bad = |i: usize| i % 10 == 3;
        // Request i has 1 + i % 4 events with source ids; a bad one (i odd, so 2 or 4 events) fails on its last.
        let request = |i: usize| {
            let mut events: Vec<NewEvent> = (0..1 + i % 4)
                .map(|k| ev(Some(&format!("r{i}-{k}")), &format!("{{\"r\":{i},\"k\":{k}}}")))
                .collect();
            if bad(i) {
                if let Some(last) = events.last_mut() {
                    last.producer = "bad".into();
                }
            }
            events
        };
        let mut tasks = Vec::new();
        for copy in 0..2 {
            for i in 0..REQUESTS {
                let (h, events) = (h.clone(), request(i));
                tasks.push(tokio::spawn(async move { (i, copy, h.append(events).await) }));
            }
        }
        let mut answers: Vec<Vec<Result<Vec<Appended>, AppendError>>> =
            (0..REQUESTS).map(|_| Vec::new()).collect();
        for t in tasks {
            let (i, _copy, result) = t.await.unwrap();
            answers[i].push(result);
        }
        let mut stored_seqs = Vec::new();
        let mut expected_events = 0u64;
        for (i, results) in answers.iter().enumerate() {
            assert_eq!(results.len(), 2);
            if bad(i) {
                for r in results {
                    // Its own error, not a failed group commit.
                    match r {
                        Err(AppendError::Store(e)) => {
                            let e = e.to_string();
                            assert!(
                                e.contains("injected fault") && !e.contains("group commit"),
                                "request {i}: {e}"
                            )
                        }
                        other => panic!("bad request {i}: {other:?}"),
                    }
                }
                continue;
            }
            let (first, second) = match (&results[0], &results[1]) {
                (Ok(a), Ok(b)) => (a, b),
                other => panic!("good request {i}: {other:?}"),
            };
            expected_events += first.len() as u64;
            // Exactly once: one copy stored every event, the other got the same seqs as duplicates.
            let (new, dup) =
                if first.iter().all(|a| !a.duplicate) { (first, second) } else { (second, first) };
            assert!(new.iter().all(|a| !a.duplicate) && dup.iter().all(|a| a.duplicate), "request {i}");
            assert_eq!(new, &dup.iter().map(|a| Appended { duplicate: false, ..*a }).collect::<Vec<_>>());
            stored_seqs.extend(new.iter().map(|a| (a.seq, i)));
        }
        stored_seqs.sort_unstable();
        assert_eq!(
            stored_seqs.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (0..expected_events).collect::<Vec<_>>(),
            "dense seqs, each stored event acknowledged once"
        );
        assert!(replays.load(Ordering::Relaxed) > 0, "the replay path ran");
        {
            let commits = commits.lock().unwrap();
            assert_eq!(commits.iter().sum::<u64>(), expected_events, "{commits:?}");
            assert!(commits.iter().any(|n| *n > 4), "requests shared commits: {commits:?}");
        }
        // Every stored event is the acknowledged one, byte for byte; nothing of a bad request is there.
        let reader = store::open_reader(&db).unwrap();
        assert_eq!(store::event_count(&reader).unwrap(), expected_events);
        let mut next_k = std::collections::HashMap::new();
        for (seq, i) in &stored_seqs {
            let stored = store::event(&reader, *seq).unwrap().unwrap();
            let k = next_k.entry(*i).or_insert(0usize);
            assert_eq!(
                stored.body.as_deref(),
                Some(format!("{{\"r\":{i},\"k\":{k}}}").as_bytes()),
                "seq {seq}"
            );
            let entry = Entry::parse(&stored.entry).unwrap();
            assert_eq!(entry.source_id, Some(format!("r{i}-{k}")));
            *k += 1;
        }
        let bad_rows: i64 = reader
            .query_row(
                "SELECT count(*) FROM events WHERE producer = 'bad' OR body LIKE '{\"r\":3,%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(bad_rows, 0);
        // A head signed over the whole log: the verifier accepts it (chain, tree, node store, every entry).
        let signing = SigningKey::from_slice(&[5; 32]).unwrap();
        let key = anchorlog_core::key::PublicKey::from_spki_der(
            signing.verifying_key().to_public_key_der().unwrap().as_bytes(),
        )
        .unwrap();
        let leaves = store::leaf_hashes(&reader, 0, expected_events).unwrap();
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            tree_size: expected_events,
            root: merkle::root_of(&leaves),
            height: 0,
            prev: [0; 32],
            time_ms: 1_700_000_000_000,
            counter: None,
        };
        let text = checkpoint.to_text().unwrap();
        let sig: DerSignature = signing.sign(text.as_bytes());
        h.store_head(StoredHead {
            height: 0,
            tree_size: expected_events,
            root: checkpoint.root,
            checkpoint: text,
            signature: sig.as_bytes().to_vec(),
            key_id: key.key_id.clone(),
            sealed_at_ms: checkpoint.time_ms,
        })
        .await
        .unwrap();
        drop(h);
        join.join().unwrap();
        let report = crate::verify::verify_database(&reader, &key, Some(ORIGIN)).unwrap();
        assert_eq!((report.events, report.heads, report.unsealed_events), (expected_events, 1, 0));
    }
}
