//! The indexer: one OS thread that keeps the search database (`event_fields` and its indexes) about a second
//! ([`INDEX_BATCH_WINDOW`]) behind the ledger, more while ingest keeps the CPU busy.
//!
//! The writer hands it the normalized fields of every committed group ([`IndexerHandle::send`]); it writes
//! them in batches to its own SQLite file, so index maintenance runs beside the writer instead of inside its
//! transaction (see docs/PERFORMANCE.md for why). On start it first re-derives the fields of events that the
//! search database is missing (a crash or a kill lost its unsynced tail) from the stored bodies.
//! The queue is bounded ([`MAX_INDEX_BACKLOG`] rows, [`INDEX_QUEUE_DEPTH`] groups) and the writer never waits
//! for it (issue 14.8): rows that do not fit are not queued; their seqs are kept as ranges and the indexer
//! re-derives them from the stored bodies once it has written what was queued before them, as it does at start
//! for what a crash lost. A starved indexer therefore costs search freshness, never ingest, and memory stays
//! bounded; [`IndexLag::pending`] says how many events search does not cover yet, and search answers say so.
//!
//! The thread runs at the lowest CPU priority (`SCHED_IDLE` on Linux): on a CPU-bound machine the writer and
//! the HTTP workers — the ingest path — go first, and the indexer catches up in the idle time between bursts,
//! so under load the search lag grows (up to the backlog bound) instead of ingest slowing down.
//! docs/PERFORMANCE.md has the measurements.
//!
//! The search database is derived data, written without fsync. At start it is checked: a file that does not
//! open, has the wrong version, fails `PRAGMA quick_check` after an unclean stop, or is ahead of the ledger is
//! deleted and rebuilt from the stored bodies.

use crate::formats::NormalizedFields;
use crate::store::{self, StoreError};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Committed groups queued for the indexer; past this, groups are left to be re-derived from the ledger.
pub const INDEX_QUEUE_DEPTH: usize = 1_024;
/// Rows handed to the indexer but not yet written (~0.5 KB of memory each) before further rows are left to be
/// re-derived from the ledger instead. Enough for a few seconds of peak ingest, so a low-priority indexer trails a
/// burst with the rows the writer parsed, and re-derives only past that.
pub const MAX_INDEX_BACKLOG: usize = 200_000;
/// Most rows written in one search-database transaction.
pub const MAX_INDEX_BATCH: usize = 100_000;
/// How long the indexer gathers rows before writing them. Fewer, larger transactions matter: every commit
/// rewrites each index page it touched, and an actor index is touched all over by any batch, so small
/// batches cost several times the CPU (docs/PERFORMANCE.md). This is also the usual search lag.
pub const INDEX_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(1_000);

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
    backlog: Arc<Backlog>,
}

/// What the indexer owes: rows sent but not yet written, and what was left to re-derive from the ledger.
/// Shared by the writer (adds, never waits) and the indexer (takes, subtracts).
#[derive(Default)]
struct Backlog {
    state: Mutex<BacklogState>,
}

#[derive(Default)]
struct BacklogState {
    /// Rows queued and not yet written.
    rows: usize,
    /// Events committed while the queue was full (seq ranges, in order): to re-derive from the stored bodies.
    gaps: Vec<std::ops::Range<u64>>,
    /// Events in `gaps`, plus those the start-up re-derivation has still to write.
    unqueued: u64,
    /// Erasures whose scrub did not fit in the queue.
    scrubs: Vec<u64>,
    /// The indexer thread has ended: nothing is queued any more (the next start re-derives).
    stopped: bool,
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, BacklogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves room for `n` rows if they fit under [`MAX_INDEX_BACKLOG`] (a group larger than the bound fits
    /// an empty backlog); `false` when they do not, or the indexer has stopped.
    fn try_add(&self, n: usize) -> bool {
        let mut st = self.lock();
        if st.stopped || (st.rows > 0 && st.rows + n > MAX_INDEX_BACKLOG) {
            return false;
        }
        st.rows += n;
        true
    }

    fn done(&self, n: usize) {
        let mut st = self.lock();
        st.rows = st.rows.saturating_sub(n);
    }

    /// Leaves `seqs` to be re-derived from the ledger.
    fn skip(&self, seqs: impl Iterator<Item = u64>) {
        let mut st = self.lock();
        if st.stopped {
            return;
        }
        for seq in seqs {
            st.unqueued += 1;
            match st.gaps.last_mut() {
                Some(r) if r.end == seq => r.end = seq + 1,
                _ => st.gaps.push(seq..seq + 1),
            }
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
    }

    fn pending(&self) -> u64 {
        let st = self.lock();
        st.rows as u64 + st.unqueued
    }
}

/// How far search trails the ledger, for search answers and `/readyz`.
#[derive(Clone)]
pub struct IndexLag(Arc<Backlog>);

impl IndexLag {
    /// Committed events whose search fields are not written yet (queued, or left to re-derive). Every event
    /// acknowledged so far is counted here until search covers it.
    pub fn pending(&self) -> u64 {
        self.0.pending()
    }
}

/// Marks the backlog stopped when the indexer thread ends, even by a panic, so the writer never waits on it.
struct StopOnDrop(Arc<Backlog>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl IndexerHandle {
    /// Opens (creating if needed) the search database beside `ledger`, and starts the thread; it first
    /// re-derives what the search database misses of the events already in `ledger`.
    pub fn start(ledger: &Path) -> Result<(IndexerHandle, std::thread::JoinHandle<()>), StoreError> {
        let search = open_or_rebuild(&store::search_path(ledger), ledger)?;
        // What to re-derive is fixed here, before the writer starts: everything it commits from now on reaches
        // the indexer as rows with the fields parsed from the request. Counting later, in the thread, raced with
        // the first appends, which were then re-derived from their bodies instead (an Okta event loses the realm
        // of its envelope that way) and their rows ignored as duplicates.
        let until = if ledger.exists() { store::event_count(&store::open_reader(ledger)?)? } else { 0 };
        let backlog = Arc::new(Backlog::default());
        // Counted as pending until the start-up re-derivation has written them.
        let owed = until.saturating_sub(store::indexed_until(&search)?);
        backlog.lock().unqueued = owed;
        let (rows, rx) = sync_channel(INDEX_QUEUE_DEPTH);
        let ledger = ledger.to_path_buf();
        let guard = StopOnDrop(backlog.clone());
        let join = std::thread::Builder::new()
            .name("anchorlog-indexer".into())
            .spawn(move || {
                lower_own_priority("indexer");
                run(search, ledger, (until, owed), rx, &guard.0);
            })
            .map_err(|e| StoreError::Corrupt { table: "event_fields", key: 0, problem: e.to_string() })?;
        Ok((IndexerHandle { rows, backlog }, join))
    }

    /// How far search trails the ledger.
    pub fn lag(&self) -> IndexLag {
        IndexLag(self.backlog.clone())
    }

    /// Queues the rows of one committed group, never waiting: when the indexer is [`MAX_INDEX_BACKLOG`] rows
    /// or [`INDEX_QUEUE_DEPTH`] groups behind, the group's seqs are left for it to re-derive from the ledger.
    pub fn send(&self, rows: Vec<IndexRow>) {
        if rows.is_empty() {
            return;
        }
        let n = rows.len();
        if !self.backlog.try_add(n) {
            self.backlog.skip(rows.iter().map(|r| r.seq));
            return;
        }
        match self.rows.try_send(IndexMsg::Rows(rows)) {
            Ok(()) => {}
            Err(TrySendError::Full(IndexMsg::Rows(rows))) => {
                self.backlog.done(n);
                self.backlog.skip(rows.iter().map(|r| r.seq));
            }
            Err(_) => {
                self.backlog.done(n);
                stopped_warning();
            }
        }
    }

    /// Queues the scrubbing of an erased event's fields (after any rows sent before it), never waiting: a
    /// scrub that does not fit is done with the next re-derivation.
    pub fn erased(&self, seq: u64) {
        match self.rows.try_send(IndexMsg::Erased(seq)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.backlog.lock().scrubs.push(seq),
            Err(TrySendError::Disconnected(_)) => stopped_warning(),
        }
    }
}

fn stopped_warning() {
    tracing::warn!("indexer: stopped; search fields of new events will be re-derived at the next start");
}

/// Puts the calling thread (only) in the `SCHED_IDLE` class: it runs when no normal thread wants the CPU.
/// Ingest (writer, HTTP workers) then never waits for index maintenance on a busy machine; the backlog bound
/// still stops the indexer from falling behind without limit.
pub(crate) fn lower_own_priority(who: &str) {
    let _ = who;
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call's duration.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                who,
                "cannot lower this thread's CPU priority; it competes with ingest at normal priority"
            );
        }
    }
}

/// Opens the search database, or deletes and recreates it when it cannot be trusted: it does not open or has
/// another schema version, it fails `PRAGMA quick_check` after an unclean stop (a non-empty `-wal` file: a
/// clean stop truncates it, and without fsync a power loss may leave the file corrupt), or it holds rows past
/// the ledger's end (another or a restored ledger). The rebuilt file is filled from the stored bodies.
fn open_or_rebuild(path: &Path, ledger: &Path) -> Result<Connection, StoreError> {
    let wal = wal_path(path);
    let unclean = std::fs::metadata(&wal).map(|m| m.len() > 0).unwrap_or(false);
    let problem = match store::open_search_writer(path) {
        Err(e) => Some(e.to_string()),
        Ok(conn) => match search_db_problem(&conn, ledger, unclean) {
            Ok(None) => return Ok(conn),
            Ok(Some(p)) => Some(p),
            Err(e) => Some(e.to_string()),
        },
    };
    let problem = problem.unwrap_or_default();
    tracing::warn!(path = %path.display(), problem, "indexer: rebuilding the search database from the ledger");
    for p in [path.to_path_buf(), wal, shm_path(path)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Corrupt {
                    table: "event_fields",
                    key: 0,
                    problem: format!("cannot remove {}: {e}", p.display()),
                })
            }
        }
    }
    store::open_search_writer(path)
}

/// Why an opened search database must be rebuilt, if it must.
fn search_db_problem(
    search: &Connection,
    ledger: &Path,
    unclean: bool,
) -> Result<Option<String>, StoreError> {
    if unclean {
        let check: String = search.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Ok(Some(format!("quick_check after an unclean stop: {check}")));
        }
    }
    let indexed = store::indexed_until(search)?;
    let events = store::event_count(&store::open_reader(ledger)?)?;
    if indexed > events {
        return Ok(Some(format!("it indexes {indexed} events, the ledger holds {events}")));
    }
    Ok(None)
}

fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn shm_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-shm");
    PathBuf::from(p)
}

/// The thread: checks and re-derives up to `until` (the ledger's event count at start; `owed` of those events
/// were missing and are counted as pending), then writes what the writer sends until every handle is dropped.
fn run(
    mut search: Connection,
    ledger: PathBuf,
    (until, owed): (u64, u64),
    rx: Receiver<IndexMsg>,
    backlog: &Backlog,
) {
    if let Err(e) = repair(&mut search, &ledger, until) {
        tracing::error!(error = %e, "indexer: checking the search database against the ledger failed");
    }
    if let Err(e) = backfill(&mut search, &ledger, until) {
        tracing::error!(error = %e, "indexer: re-deriving missing search fields failed");
    }
    // What the start-up re-derivation owed is written (or logged as failed: the next start tries again). Not
    // reset to 0: the writer may have left gaps meanwhile.
    let mut st = backlog.lock();
    st.unqueued = st.unqueued.saturating_sub(owed);
    drop(st);
    if let Err(e) = reapply_erasures(&mut search, &ledger) {
        tracing::error!(error = %e, "indexer: re-applying erasures to the search fields failed");
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
        // A test's starved indexer (fault double): it writes nothing while stalled, as if never scheduled.
        #[cfg(feature = "fault-injection")]
        crate::fault::indexer_stall();
        // Rows first, then scrubs: an erased event's row was always sent before its erasure.
        let result = write(&mut search, &batch).and_then(|()| scrub(&mut search, &erased));
        if let Err(e) = result {
            // The ledger is unaffected; the next start re-derives these rows from the bodies (an erased
            // body yields no fields).
            tracing::error!(error = %e, rows = batch.len(), "indexer: writing search fields failed");
        }
        backlog.done(batch.len());
        catch_up(&mut search, &ledger, backlog);
    }
    let _ = search.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// Re-derives the events the writer could not queue (the queue was full) from their stored bodies, then does
/// the scrubs that did not fit. Called after each batch: whatever was queued before a gap is written first.
fn catch_up(search: &mut Connection, ledger: &Path, backlog: &Backlog) {
    let (gaps, scrubs) = {
        let mut st = backlog.lock();
        (std::mem::take(&mut st.gaps), std::mem::take(&mut st.scrubs))
    };
    if gaps.is_empty() && scrubs.is_empty() {
        return;
    }
    let events: u64 = gaps.iter().map(|r| r.end - r.start).sum();
    tracing::info!(
        events,
        ranges = gaps.len(),
        "indexer: re-deriving search fields the queue had no room for"
    );
    let result = store::open_reader(ledger).and_then(|conn| {
        for range in &gaps {
            rederive(search, &conn, range.clone())?;
        }
        scrub(search, &scrubs)
    });
    if let Err(e) = result {
        // The next start finds the missing rows below the indexed end (`repair`) and scrubs every erasure.
        tracing::error!(error = %e, "indexer: re-deriving search fields failed; the next start repairs them");
    }
    let mut st = backlog.lock();
    st.unqueued = st.unqueued.saturating_sub(events);
}

/// Writes the fields of events `range`, derived from their stored bodies, in batches of [`MAX_INDEX_BATCH`].
fn rederive(
    search: &mut Connection,
    events: &Connection,
    range: std::ops::Range<u64>,
) -> Result<(), StoreError> {
    let mut batch = Vec::new();
    store::for_each_body(events, range.start, range.end, |seq, source, format, body| {
        let fields = body.and_then(|b| crate::formats::normalize_stored(&format, &b)).unwrap_or_default();
        batch.push(IndexRow { seq, source: source.into(), fields });
        if batch.len() >= MAX_INDEX_BATCH {
            write(search, &std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    write(search, &batch)
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
    store::set_search_removal_guard(&tx, true)?;
    for &seq in seqs {
        store::scrub_event_fields(&tx, seq)?;
    }
    store::set_search_removal_guard(&tx, false)?;
    tx.commit()?;
    Ok(())
}

/// The start-up check: the search database must hold a row for every event it claims to cover (below its end,
/// up to `until`) and key entries for exactly its rows. Rows deleted behind the indexer's back — a dropped
/// trigger, a hand edit — hide events from search; they are re-derived from the stored bodies here, and stray
/// or missing key entries are fixed, so search finds every event again. (Rows *altered* in place are not
/// detected without re-deriving everything; delete the search database to have it rebuilt.)
fn repair(search: &mut Connection, ledger: &Path, until: u64) -> Result<(), StoreError> {
    let upto = store::indexed_until(search)?.min(until);
    let missing = store::missing_event_fields(search, upto)?;
    if !missing.is_empty() {
        tracing::warn!(
            rows = missing.len(),
            first = missing.first().copied(),
            "indexer: search rows are missing below the indexed end; re-deriving them from the ledger"
        );
        let events = store::open_reader(ledger)?;
        let mut batch = Vec::new();
        // Missing seqs come in runs: one range read of the bodies per run.
        for run in runs(&missing) {
            store::for_each_body(&events, run.start, run.end, |seq, source, format, body| {
                let fields =
                    body.and_then(|b| crate::formats::normalize_stored(&format, &b)).unwrap_or_default();
                batch.push(IndexRow { seq, source: source.into(), fields });
                Ok(())
            })?;
            if batch.len() >= MAX_INDEX_BATCH {
                write(search, &std::mem::take(&mut batch))?;
            }
        }
        write(search, &batch)?;
    }
    let tx = search.transaction()?;
    let (added, removed) = store::repair_key_tables(&tx)?;
    tx.commit()?;
    if added + removed > 0 {
        tracing::warn!(added, removed, "indexer: search key entries did not match the rows; repaired");
    }
    Ok(())
}

/// Consecutive runs of sorted seqs, as half-open ranges.
fn runs(seqs: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some(r) if r.end == s => r.end = s + 1,
            _ => out.push(s..s + 1),
        }
    }
    out
}

/// Scrubs the search fields of every erased event again. A scrub is sent to the indexer only after the
/// erasure commits, so a crash in between would leave the erased event's fields (personal data) in the
/// unsynced search database; the ledger's `erasures` table is the authority, and scrubbing is idempotent.
fn reapply_erasures(search: &mut Connection, ledger: &Path) -> Result<(), StoreError> {
    let events = store::open_reader(ledger)?;
    let erased = store::erasure::erased_seqs(&events)?;
    scrub(search, &erased)
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
    write_rederived(search, &batch)
}

/// [`write`] for the last batch of re-derived rows, with the test-only kill point inside its transaction (rows
/// inserted, not committed): the next start must re-derive them again, once.
fn write_rederived(search: &mut Connection, rows: &[IndexRow]) -> Result<(), StoreError> {
    let tx = search.transaction()?;
    let refs: Vec<(u64, &str, &NormalizedFields)> =
        rows.iter().map(|r| (r.seq, &*r.source, &r.fields)).collect();
    store::insert_event_fields_many(&tx, &refs)?;
    crash_point!(SearchRederive);
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::appender::AppenderHandle;
    use crate::ledger::event::NewEvent;
    use anchorlog_core::entry::AuthMethod;

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
            payload_sha256: anchorlog_core::entry::payload_digest(&[1; 32], body.as_bytes()),
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
        let search = store::open_search_reader(&store::search_path(&db)).unwrap();
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

    /// Appends `n` events (seqs `first..first + n`) through a writer with an indexer, then stops both.
    async fn run_with_indexer(db: &Path, first: usize, n: usize) {
        let (indexer, ijoin) = IndexerHandle::start(db).unwrap();
        let (h, join) =
            AppenderHandle::start_with_indexer(store::open_writer(db, "o").unwrap(), Some(indexer)).unwrap();
        let events: Vec<_> =
            (first..first + n).map(|i| ev(&format!(r#"{{"type":"T{i}","actor":"u{i}"}}"#))).collect();
        for chunk in events.chunks(500) {
            h.append(chunk.to_vec()).await.unwrap();
        }
        drop(h);
        join.join().unwrap();
        ijoin.join().unwrap();
    }

    /// Every seq of `0..n` has the fields `run_with_indexer` gave it, and nothing else is there.
    fn assert_indexed(db: &Path, n: u64) {
        let search = store::open_search_reader(&store::search_path(db)).unwrap();
        assert_eq!(store::indexed_until(&search).unwrap(), n);
        for seq in [0, n / 2, n - 1] {
            let f = store::event_fields(&search, seq).unwrap().unwrap().1;
            assert_eq!(f.event_type, Some(format!("T{seq}")));
            assert_eq!(f.actor_id, Some(format!("u{seq}")));
        }
        let rows: i64 = search.query_row("SELECT count(*) FROM event_fields", [], |r| r.get(0)).unwrap();
        assert_eq!(rows as u64, n);
    }

    #[tokio::test]
    async fn a_lost_search_database_is_rebuilt_from_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        run_with_indexer(&db, 0, 1_200).await;
        assert_indexed(&db, 1_200);
        std::fs::remove_file(store::search_path(&db)).unwrap();
        let (_indexer, ijoin) = IndexerHandle::start(&db).unwrap();
        drop(_indexer);
        ijoin.join().unwrap();
        assert_indexed(&db, 1_200);
    }

    #[tokio::test]
    async fn a_search_database_that_does_not_open_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        run_with_indexer(&db, 0, 700).await;
        std::fs::write(store::search_path(&db), b"this is not an SQLite database, it was overwritten")
            .unwrap();
        run_with_indexer(&db, 700, 300).await;
        assert_indexed(&db, 1_000);
    }

    #[tokio::test]
    async fn a_search_database_of_another_schema_version_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        run_with_indexer(&db, 0, 500).await;
        // As an older build left it (schema 1 kept actor and IP as indexes on event_fields).
        let conn = rusqlite::Connection::open(store::search_path(&db)).unwrap();
        conn.execute_batch("DELETE FROM schema_version; INSERT INTO schema_version VALUES (1, 0);").unwrap();
        drop(conn);
        assert!(store::open_search_reader(&store::search_path(&db)).is_err());
        run_with_indexer(&db, 500, 100).await;
        assert_indexed(&db, 600);
        let search = store::open_search_reader(&store::search_path(&db)).unwrap();
        let keys: i64 = search.query_row("SELECT count(*) FROM actor_index", [], |r| r.get(0)).unwrap();
        assert_eq!(keys, 600, "the rebuilt file has the actor key table of every event");
    }

    #[tokio::test]
    async fn a_search_database_corrupted_by_an_unclean_stop_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        run_with_indexer(&db, 0, 3_000).await;
        // Garbage over a middle page of the (cleanly stopped, checkpointed) file, and a leftover WAL as a
        // crash leaves it: the file still opens, but quick_check fails.
        let path = store::search_path(&db);
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        assert!(bytes.len() >= 8 * page, "{} bytes", bytes.len());
        bytes[5 * page..6 * page].fill(0x55);
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(wal_path(&path), [0xAAu8; 100]).unwrap();
        let conn = store::open_search_writer(&path).unwrap();
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
        assert_ne!(check, "ok");
        drop(conn);
        std::fs::write(wal_path(&path), [0xAAu8; 100]).unwrap();
        run_with_indexer(&db, 3_000, 0).await;
        assert_indexed(&db, 3_000);
    }

    #[tokio::test]
    async fn a_search_database_ahead_of_the_ledger_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (db, other) = (dir.path().join("a.db"), dir.path().join("b.db"));
        run_with_indexer(&other, 0, 900).await;
        run_with_indexer(&db, 0, 400).await;
        // The ledger was replaced (e.g. restored from an older backup) but the search file was not.
        std::fs::copy(store::search_path(&other), store::search_path(&db)).unwrap();
        run_with_indexer(&db, 400, 0).await;
        assert_indexed(&db, 400);
    }

    #[test]
    fn the_writer_never_waits_rows_past_the_bound_are_left_to_re_derive() {
        let backlog = Backlog::default();
        assert!(backlog.try_add(MAX_INDEX_BACKLOG - 10));
        assert!(backlog.try_add(10));
        assert!(!backlog.try_add(1), "added past the bound");
        backlog.skip([7, 8, 9, 12].into_iter());
        assert_eq!(backlog.lock().gaps, vec![7..10, 12..13]);
        assert_eq!(backlog.pending(), MAX_INDEX_BACKLOG as u64 + 4);
        // A group larger than the whole bound still goes through once the backlog is empty; a stopped indexer
        // takes nothing.
        backlog.done(MAX_INDEX_BACKLOG);
        assert!(backlog.try_add(MAX_INDEX_BACKLOG * 2));
        backlog.stop();
        assert!(!backlog.try_add(1));
    }

    /// A full queue (here: depth 1) never blocks the writer: the groups that did not fit are re-derived by the
    /// indexer after what was queued before them, so every event is indexed exactly once.
    #[tokio::test]
    async fn groups_that_find_the_queue_full_are_re_derived_and_indexed_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        store::open_writer(&db, "o").unwrap();
        let search = open_or_rebuild(&store::search_path(&db), &db).unwrap();
        let (tx, rx) = sync_channel(1);
        let backlog = Arc::new(Backlog::default());
        let handle = IndexerHandle { rows: tx, backlog: backlog.clone() };
        let (h, join) =
            AppenderHandle::start_with_indexer(store::open_writer(&db, "o").unwrap(), Some(handle)).unwrap();
        for i in 0..50 {
            h.append(vec![ev(&format!(r#"{{"type":"T{i}","actor":"u{i}"}}"#))]).await.unwrap();
        }
        // Nothing drained the queue: one group is queued, the other 49 were left to re-derive.
        assert_eq!(backlog.lock().gaps, vec![1..50]);
        assert_eq!(backlog.pending(), 50);
        drop(h);
        join.join().unwrap();
        let lag = IndexLag(backlog.clone());
        let b = backlog.clone();
        std::thread::spawn(move || run(search, db.clone(), (0, 0), rx, &b)).join().unwrap();
        assert_eq!(lag.pending(), 0);
        assert_indexed(&dir.path().join("a.db"), 50);
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
        let search = store::open_search_reader(&store::search_path(&db)).unwrap();
        let (source, scrubbed) = store::event_fields(&search, 0).unwrap().unwrap();
        assert_eq!(source, "kc");
        assert_eq!(scrubbed, NormalizedFields::default(), "no actor, IP or type survives the erasure");
        let (source, logged) = store::event_fields(&search, 1).unwrap().unwrap();
        assert_eq!(source, "anchorlog");
        assert_eq!(logged.event_type.as_deref(), Some("anchorlog.erasure"));
        assert_eq!(logged.actor_id.as_deref(), Some("dpo"));
        assert_eq!(store::indexed_until(&search).unwrap(), 2);
    }

    #[tokio::test]
    async fn an_erasure_whose_scrub_was_lost_is_re_applied_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        // First run without an indexer: the erasure commits but no scrub reaches the search database (as
        // when the process dies between the commit and the indexer's write).
        let (indexer, ijoin) = IndexerHandle::start(&db).unwrap();
        let (h, join) =
            AppenderHandle::start_with_indexer(store::open_writer(&db, "o").unwrap(), Some(indexer)).unwrap();
        h.append(vec![ev(r#"{"type":"LOGIN","actor":"alice"}"#)]).await.unwrap();
        drop(h);
        join.join().unwrap();
        ijoin.join().unwrap();
        let (h, join) = AppenderHandle::start(store::open_writer(&db, "o").unwrap()).unwrap();
        h.erase(0, "dpo".into(), "art. 17".into()).await.unwrap();
        drop(h);
        join.join().unwrap();
        let search = store::open_search_reader(&store::search_path(&db)).unwrap();
        assert_eq!(store::event_fields(&search, 0).unwrap().unwrap().1.actor_id.as_deref(), Some("alice"));
        drop(search);
        // The next start re-applies it.
        let (indexer, ijoin) = IndexerHandle::start(&db).unwrap();
        drop(indexer);
        ijoin.join().unwrap();
        let search = store::open_search_reader(&store::search_path(&db)).unwrap();
        assert_eq!(store::event_fields(&search, 0).unwrap().unwrap().1, NormalizedFields::default());
    }
}
