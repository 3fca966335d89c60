//! The single writer: one OS thread owns the write connection; every append and every head goes through it.
//!
//! Group commit: the thread takes the first waiting command, drains whatever else is already queued (up to a
//! bound), applies them all in one transaction with a SAVEPOINT per request (so one failing request cannot
//! take others down), commits once (one fsync under `synchronous=FULL`), and only then answers every waiter.
//! A handler therefore sends its 2xx only after its events are durable.

use crate::formats::NormalizedFields;
use crate::ledger::entry::{AuthMethod, Entry};
use crate::ledger::indexer::{IndexRow, IndexerHandle};
use crate::ledger::internal;
use crate::ledger::merkle::{self, Frontier};
use crate::store::cosignatures::{StoredCosignature, WitnessCursor};
use crate::store::erasure::ErasureRecord;
use crate::store::{self, EventRow, StoreError, StoredHead, StoredTimestamp};
use rusqlite::Connection;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Most events applied in one transaction; bounds commit latency and memory.
pub const MAX_GROUP_EVENTS: usize = 50_000;
/// Depth of the command queue; producers wait (backpressure) when it is full.
pub const QUEUE_DEPTH: usize = 4_096;

/// An event ready to be appended (validated and hashed by the handler).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Receive time, ns since the epoch.
    pub received_at_ns: u64,
    /// Authenticated producer name.
    pub producer: Arc<str>,
    /// Source name.
    pub source: Arc<str>,
    /// How the producer authenticated.
    pub auth: AuthMethod,
    /// Payload format.
    pub format: &'static str,
    /// Producer-assigned event id (de-duplication key).
    pub source_id: Option<String>,
    /// Random salt.
    pub salt: [u8; 32],
    /// Raw body bytes of this event.
    pub body: Vec<u8>,
    /// SHA-256(salt || body).
    pub payload_sha256: [u8; 32],
    /// Normalized search fields, handed to the indexer once the event is committed.
    pub fields: NormalizedFields,
}

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

enum Command {
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
    fn weight(&self) -> usize {
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
}

impl AppenderHandle {
    /// Starts the writer thread on `conn` (opened by [`store::open_writer`]) without a search indexer.
    pub fn start(conn: Connection) -> Result<(AppenderHandle, std::thread::JoinHandle<()>), AppendError> {
        Self::start_with_indexer(conn, None)
    }

    /// Starts the writer thread; after every commit it hands the new events' fields to `indexer`.
    pub fn start_with_indexer(
        conn: Connection,
        indexer: Option<IndexerHandle>,
    ) -> Result<(AppenderHandle, std::thread::JoinHandle<()>), AppendError> {
        Self::start_observed(conn, indexer, Box::new(|_| {}))
    }

    /// [`AppenderHandle::start_with_indexer`], and after every successful group commit `on_commit` gets the
    /// number of events it stored (the server feeds its commit-size histogram; this module knows no metrics).
    pub fn start_observed(
        conn: Connection,
        indexer: Option<IndexerHandle>,
        on_commit: CommitObserver,
    ) -> Result<(AppenderHandle, std::thread::JoinHandle<()>), AppendError> {
        let next_seq = store::event_count(&conn)?;
        // O(log n): the right edge of the tree from the stored nodes, not a walk over every leaf.
        let frontier = store::tree::load_frontier(&conn, next_seq)?;
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let (committed_tx, committed) = watch::channel(next_seq);
        let join = std::thread::Builder::new()
            .name("anchorlog-writer".into())
            .spawn(move || {
                Writer { conn, next_seq, frontier, committed: committed_tx, indexer, on_commit }.run(rx)
            })
            .map_err(|_| AppendError::Stopped)?;
        Ok((AppenderHandle { commands, committed }, join))
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
    on_commit: CommitObserver,
}

/// Called by the writer thread after each successful group commit with the number of events it stored.
pub type CommitObserver = Box<dyn Fn(u64) + Send>;

enum Reply {
    Append(oneshot::Sender<Result<Vec<Appended>, AppendError>>, Result<Vec<Appended>, StoreError>),
    Head(oneshot::Sender<Result<(), AppendError>>, Result<(), StoreError>),
    Erase(oneshot::Sender<Result<Erased, EraseError>>, Result<Erased, EraseError>),
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
        }
        // A clean stop leaves a self-contained database file: fold the WAL back in, so a copy of the .db alone
        // (a backup, an export to an auditor) holds everything.
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %e, "writer: final WAL checkpoint failed; the -wal file must be kept with the database");
        }
        tracing::debug!("writer: all handles dropped, stopping");
    }

    fn apply_group(&mut self, group: Vec<Command>) {
        let start_seq = self.next_seq;
        let start_frontier = self.frontier.clone();
        let mut replies = Vec::with_capacity(group.len());
        let mut rows = Vec::new();
        let mut erased = Vec::new();
        let index = self.indexer.is_some();
        let next_seq = &mut self.next_seq;
        let frontier = &mut self.frontier;
        let conn = &self.conn;
        // BEGIN IMMEDIATE takes the write lock: held elsewhere past the busy timeout, it fails here, before any
        // command is taken apart — answer each of them with that error (a dropped reply reads as "stopped").
        let tx = match conn.unchecked_transaction() {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "writer: cannot begin the group commit; nothing of this group was stored");
                return refuse_group(group, start_seq, &StoreError::from(e));
            }
        };
        let outcome = (|| -> Result<(), StoreError> {
            for cmd in group {
                match cmd {
                    Command::Append { events, reply } => {
                        let result = append_request(&tx, next_seq, frontier, &events);
                        if index {
                            if let Ok(appended) = &result {
                                // The events are no longer needed: move their fields instead of copying.
                                rows.extend(appended.iter().zip(events).filter(|(a, _)| !a.duplicate).map(
                                    |(a, e)| IndexRow { seq: a.seq, source: e.source, fields: e.fields },
                                ));
                            }
                        }
                        replies.push(Reply::Append(reply, result));
                    }
                    Command::Erase { seq, erased_by, reason, reply } => {
                        let result = erase(&tx, next_seq, frontier, seq, erased_by, reason);
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
                    Command::StoreHead { head, reply } => {
                        let result = in_savepoint(&tx, |c| store::insert_head(c, &head));
                        replies.push(Reply::Head(reply, result));
                    }
                    Command::StoreTimestamp { token, reply } => {
                        let result = in_savepoint(&tx, |c| store::insert_timestamp(c, &token));
                        replies.push(Reply::Head(reply, result));
                    }
                    Command::StoreCosignature { cosignature, reply } => {
                        let (cos, cursor) = &*cosignature;
                        let result = in_savepoint(&tx, |c| {
                            store::cosignatures::insert(c, cos)?;
                            store::cosignatures::set_cursor(c, cursor)
                        });
                        replies.push(Reply::Head(reply, result));
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                let _ = self.committed.send(self.next_seq);
                if self.next_seq > start_seq {
                    (self.on_commit)(self.next_seq - start_seq);
                }
                if let Some(indexer) = &self.indexer {
                    indexer.send(rows);
                    for seq in erased {
                        indexer.erased(seq);
                    }
                }
                for r in replies {
                    match r {
                        Reply::Append(tx, res) => {
                            let _ = tx.send(res.map_err(AppendError::from));
                        }
                        Reply::Head(tx, res) => {
                            let _ = tx.send(res.map_err(AppendError::from));
                        }
                        Reply::Erase(tx, res) => {
                            let _ = tx.send(res);
                        }
                    }
                }
            }
            Err(e) => {
                // Nothing of this group is on disk: fail every waiter and rewind the sequence counter.
                tracing::error!(error = %e, "writer: group commit failed; nothing of this group was stored");
                self.next_seq = start_seq;
                self.frontier = start_frontier;
                for r in replies {
                    // The cause's storage fault (full disk, lock held elsewhere) decides what callers answer.
                    let err = || {
                        AppendError::Store(StoreError::GroupCommit {
                            first_seq: start_seq,
                            fault: e.fault(),
                            message: e.to_string(),
                        })
                    };
                    match r {
                        Reply::Append(tx, _) => {
                            let _ = tx.send(Err(err()));
                        }
                        Reply::Head(tx, _) => {
                            let _ = tx.send(Err(err()));
                        }
                        Reply::Erase(tx, _) => {
                            let _ = tx.send(Err(err().into()));
                        }
                    }
                }
            }
        }
    }
}

/// Answers every command of a group whose transaction could not begin with that error (its storage fault kept).
fn refuse_group(group: Vec<Command>, first_seq: u64, e: &StoreError) {
    let err = || {
        AppendError::Store(StoreError::GroupCommit { first_seq, fault: e.fault(), message: e.to_string() })
    };
    for cmd in group {
        match cmd {
            Command::Append { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Command::StoreHead { reply, .. }
            | Command::StoreTimestamp { reply, .. }
            | Command::StoreCosignature { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Command::Erase { reply, .. } => {
                let _ = reply.send(Err(err().into()));
            }
        }
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
    let appended = append_request(&tx, &mut next_seq, &mut frontier, events)?;
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

/// Applies one request inside its own savepoint: all of its events or none.
fn append_request(
    conn: &Connection,
    next_seq: &mut u64,
    frontier: &mut Frontier,
    events: &[NewEvent],
) -> Result<Vec<Appended>, StoreError> {
    let before = *next_seq;
    let before_frontier = frontier.clone();
    let mut next = *next_seq;
    let mut completed = Vec::new();
    let result = in_savepoint(conn, |c| {
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
    });
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
    erased_by: String,
    reason: String,
) -> Result<Erased, EraseError> {
    let target = store::event(conn, seq)?.ok_or(EraseError::NoSuchEvent(seq))?;
    if target.body.is_none() {
        return Err(EraseError::AlreadyErased(seq));
    }
    let own = Entry::parse(&target.entry)
        .map(|e| e.auth == AuthMethod::Internal || e.producer == internal::INTERNAL)
        .unwrap_or(true);
    if own {
        return Err(EraseError::ApplianceRecord(seq));
    }
    let before = (*next_seq, frontier.clone());
    let ev = crate::ledger::internal::internal_event(&crate::ledger::internal::erasure_body(
        seq, &erased_by, &reason,
    ));
    let result = in_savepoint(conn, |c| {
        let appended = append_request(c, next_seq, frontier, std::slice::from_ref(&ev))?;
        let logged = appended.first().ok_or_else(|| StoreError::Corrupt {
            table: "events",
            key: seq,
            problem: "the erasure event was not appended".into(),
        })?;
        let record = ErasureRecord {
            seq,
            erasure_seq: logged.seq,
            erased_by: erased_by.clone(),
            reason: reason.clone(),
            erased_at_ms: store::now_ms(),
        };
        store::erasure::erase_payload(c, &record)?;
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
            payload_sha256: crate::ledger::entry::payload_digest(&[7; 32], body.as_bytes()),
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
}
