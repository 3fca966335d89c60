//! The indexer: one OS thread that keeps the search database (`event_fields` and its indexes) a few
//! milliseconds behind the ledger.
//!
//! The writer hands it the normalized fields of every committed group ([`IndexerHandle::send`]); it writes
//! them in batches to its own SQLite file, so index maintenance runs beside the writer instead of inside its
//! transaction (see docs/PERFORMANCE.md for why). On start it first re-derives the fields of events that the
//! search database is missing (a crash or a kill lost its unsynced tail) from the stored bodies.
//! The channel is bounded: an indexer that falls behind slows the writer down instead of growing memory.

use crate::formats::NormalizedFields;
use crate::store::{self, StoreError};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Committed groups queued for the indexer before the writer waits.
pub const INDEX_QUEUE_DEPTH: usize = 1_024;
/// Most rows written in one search-database transaction.
pub const MAX_INDEX_BATCH: usize = 50_000;
/// How long the indexer gathers rows before writing them. Fewer, larger transactions matter: every commit
/// rewrites each index page it touched, and an actor index is touched all over by any batch, so small
/// batches cost several times the CPU (docs/PERFORMANCE.md). This is also the usual search lag under load.
pub const INDEX_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// The fields of one committed event.
#[derive(Debug, Clone)]
pub struct IndexRow {
    /// Its seq.
    pub seq: u64,
    /// The source it arrived through.
    pub source: Arc<str>,
    /// Its normalized fields.
    pub fields: NormalizedFields,
}

/// What the writer hands the indexer after a commit, in commit order.
#[derive(Debug, Clone)]
pub enum IndexMsg {
    /// Fields of newly committed events.
    Rows(Vec<IndexRow>),
    /// The payload of this seq was erased: its fields (derived from the body: actor, IP, …) are personal
    /// data too, so they are scrubbed from the search database as well.
    Erased(u64),
}

/// Sends committed rows to the indexer thread. Dropping every handle stops the thread after it has written
/// everything it was sent.
#[derive(Clone)]
pub struct IndexerHandle {
    rows: SyncSender<IndexMsg>,
}

impl IndexerHandle {
    /// Opens (creating if needed) the search database beside `ledger`, and starts the thread; it first
    /// re-derives what the search database misses of the events already in `ledger`.
    pub fn start(ledger: &Path) -> Result<(IndexerHandle, std::thread::JoinHandle<()>), StoreError> {
        let search = store::open_search_writer(&store::search_path(ledger))?;
        // What to re-derive is fixed here, before the writer starts: everything it commits from now on reaches
        // the indexer as rows with the fields parsed from the request. Counting later, in the thread, raced with
        // the first appends, which were then re-derived from their bodies instead (an Okta event loses the realm
        // of its envelope that way) and their rows ignored as duplicates.
        let until = if ledger.exists() { store::event_count(&store::open_reader(ledger)?)? } else { 0 };
        let (rows, rx) = sync_channel(INDEX_QUEUE_DEPTH);
        let ledger = ledger.to_path_buf();
        let join = std::thread::Builder::new()
            .name("anchorlog-indexer".into())
            .spawn(move || run(search, ledger, until, rx))
            .map_err(|e| StoreError::Corrupt { table: "event_fields", key: 0, problem: e.to_string() })?;
        Ok((IndexerHandle { rows }, join))
    }

    /// Queues the rows of one committed group; waits if the indexer is [`INDEX_QUEUE_DEPTH`] groups behind.
    pub fn send(&self, rows: Vec<IndexRow>) {
        if !rows.is_empty() {
            self.send_msg(IndexMsg::Rows(rows));
        }
    }

    /// Queues the scrubbing of an erased event's fields (after any rows sent before it).
    pub fn erased(&self, seq: u64) {
        self.send_msg(IndexMsg::Erased(seq));
    }

    fn send_msg(&self, msg: IndexMsg) {
        if self.rows.send(msg).is_err() {
            tracing::warn!(
                "indexer: stopped; search fields of new events will be re-derived at the next start"
            );
        }
    }
}

fn run(mut search: Connection, ledger: PathBuf, until: u64, rx: Receiver<IndexMsg>) {
    if let Err(e) = backfill(&mut search, &ledger, until) {
        tracing::error!(error = %e, "indexer: re-deriving missing search fields failed");
    }
    while let Ok(first) = rx.recv() {
        let (mut batch, mut erased) = (Vec::new(), Vec::new());
        take(first, &mut batch, &mut erased);
        let deadline = std::time::Instant::now() + INDEX_BATCH_WINDOW;
        loop {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(more) => take(more, &mut batch, &mut erased),
                // Window over, or the writer stopped: write what we have (then `recv` ends the loop).
                Err(_) => break,
            }
            if batch.len() >= MAX_INDEX_BATCH {
                break;
            }
        }
        // Rows first, then scrubs: an erased event's row was always sent before its erasure.
        let result = write(&mut search, &batch).and_then(|()| scrub(&mut search, &erased));
        if let Err(e) = result {
            // The ledger is unaffected; the next start re-derives these rows from the bodies (an erased
            // body yields no fields).
            tracing::error!(error = %e, rows = batch.len(), "indexer: writing search fields failed");
        }
    }
    let _ = search.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

fn write(search: &mut Connection, rows: &[IndexRow]) -> Result<(), StoreError> {
    let tx = search.transaction()?;
    let refs: Vec<(u64, &str, &NormalizedFields)> =
        rows.iter().map(|r| (r.seq, &*r.source, &r.fields)).collect();
    store::insert_event_fields_many(&tx, &refs)?;
    tx.commit()?;
    Ok(())
}

fn take(msg: IndexMsg, batch: &mut Vec<IndexRow>, erased: &mut Vec<u64>) {
    match msg {
        IndexMsg::Rows(rows) => batch.extend(rows),
        IndexMsg::Erased(seq) => erased.push(seq),
    }
}

fn scrub(search: &mut Connection, seqs: &[u64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let tx = search.transaction()?;
    for &seq in seqs {
        store::scrub_event_fields(&tx, seq)?;
    }
    tx.commit()?;
    Ok(())
}

/// Re-derives the fields of events the search database does not have yet: from its end to `to`, the ledger's
/// event count when the indexer started.
fn backfill(search: &mut Connection, ledger: &Path, to: u64) -> Result<(), StoreError> {
    let from = store::indexed_until(search)?;
    if from >= to {
        return Ok(());
    }
    let events = store::open_reader(ledger)?;
    tracing::info!(from, to, "indexer: re-deriving search fields from stored bodies");
    let mut batch = Vec::new();
    store::for_each_body(&events, from, to, |seq, source, format, body| {
        let fields = body.and_then(|b| crate::formats::normalize_stored(&format, &b)).unwrap_or_default();
        batch.push(IndexRow { seq, source: source.into(), fields });
        if batch.len() >= MAX_INDEX_BATCH {
            write(search, &batch)?;
            batch.clear();
        }
        Ok(())
    })?;
    write(search, &batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::appender::{AppenderHandle, NewEvent};
    use crate::ledger::entry::AuthMethod;

    fn ev(body: &str) -> NewEvent {
        NewEvent {
            received_at_ns: 1,
            producer: "p".into(),
            source: "kc".into(),
            auth: AuthMethod::Mtls,
            format: "json",
            source_id: None,
            salt: [1; 32],
            body: body.as_bytes().to_vec(),
            payload_sha256: crate::ledger::entry::payload_digest(&[1; 32], body.as_bytes()),
            fields: crate::formats::json::parse(body.as_bytes(), false, &Default::default()).unwrap()[0]
                .fields
                .clone(),
        }
    }

    #[tokio::test]
    async fn trails_the_writer_and_re_derives_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        // A first run without an indexer (as after a crash that lost the search file's tail).
        let (h, join) = AppenderHandle::start(store::open_writer(&db, "o").unwrap()).unwrap();
        h.append(vec![ev(r#"{"type":"A","actor":"u1"}"#), ev(r#"{"type":"B"}"#)]).await.unwrap();
        drop(h);
        join.join().unwrap();
        // Second run: the indexer re-derives seqs 0 and 1, then follows new appends.
        let (indexer, ijoin) = IndexerHandle::start(&db).unwrap();
        let (h, join) =
            AppenderHandle::start_with_indexer(store::open_writer(&db, "o").unwrap(), Some(indexer)).unwrap();
        h.append(vec![ev(r#"{"type":"C","outcome":"failure"}"#)]).await.unwrap();
        drop(h);
        join.join().unwrap();
        ijoin.join().unwrap();
        let search = store::open_reader(&store::search_path(&db)).unwrap();
        let (source, f0) = store::event_fields(&search, 0).unwrap().unwrap();
        assert_eq!(
            (source.as_str(), f0.event_type.as_deref(), f0.actor_id.as_deref()),
            ("kc", Some("A"), Some("u1"))
        );
        assert_eq!(store::event_fields(&search, 1).unwrap().unwrap().1.event_type.as_deref(), Some("B"));
        let f2 = store::event_fields(&search, 2).unwrap().unwrap().1;
        assert_eq!((f2.event_type.as_deref(), f2.outcome), (Some("C"), crate::formats::Outcome::Failure));
        assert_eq!(store::indexed_until(&search).unwrap(), 3);
    }

    #[tokio::test]
    async fn erasure_scrubs_the_fields_derived_from_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let (indexer, ijoin) = IndexerHandle::start(&db).unwrap();
        let (h, join) =
            AppenderHandle::start_with_indexer(store::open_writer(&db, "o").unwrap(), Some(indexer)).unwrap();
        h.append(vec![ev(r#"{"type":"LOGIN","actor":"alice","ip":"10.1.2.3"}"#)]).await.unwrap();
        let done = h.erase(0, "dpo".into(), "art. 17 request".into()).await.unwrap();
        assert_eq!(done.record.erasure_seq, 1);
        drop(h);
        join.join().unwrap();
        ijoin.join().unwrap();
        let search = store::open_reader(&store::search_path(&db)).unwrap();
        let (source, scrubbed) = store::event_fields(&search, 0).unwrap().unwrap();
        assert_eq!(source, "kc");
        assert_eq!(scrubbed, NormalizedFields::default(), "no actor, IP or type survives the erasure");
        let (source, logged) = store::event_fields(&search, 1).unwrap().unwrap();
        assert_eq!(source, "anchorlog");
        assert_eq!(logged.event_type.as_deref(), Some("anchorlog.erasure"));
        assert_eq!(logged.actor_id.as_deref(), Some("dpo"));
        assert_eq!(store::indexed_until(&search).unwrap(), 2);
    }
}
