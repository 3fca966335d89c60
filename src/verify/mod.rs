//! The offline verifier over the appliance's database: the core's walk ([`anchorlog_core::verify`]) fed from
//! SQLite, and the checks only a database has (its stored tree nodes, its tokens and cosignature rows).
//!
//! Shared by `anchorlog verify`, the startup reconciliation, self-verification and the tests. It reads only
//! public material (the database and the signer's public key) and links no HSM, TPM or HTTP code. The walk, its
//! failures and report, and everything a bundle or receipt needs are the core's, so the browser console runs the
//! same checks.

use crate::store::{self, StoreError};
use anchorlog_core::key::PublicKey;
use anchorlog_core::stored::StoredEvent;
use anchorlog_core::verify::{
    par_map, walk, CheckedEvent, Decoded, EventSource, Failure, Report, Start, VerifyError, WalkOptions,
    BATCH,
};
use rusqlite::Connection;

#[cfg(feature = "postgres")]
pub mod pg;
pub mod resume;
pub mod timestamps;
pub mod witnesses;

/// The core's error has no SQLite in it: a database error travels boxed, shown as its own message, and the
/// appliance gets it back with [`store_error`].
impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> VerifyError {
        VerifyError::Source(Box::new(e))
    }
}

/// The database error a verification stopped on, if that is what stopped it (`Err(e)` gives back any other
/// source error).
pub fn store_error(
    e: Box<dyn std::error::Error + Send + Sync>,
) -> Result<StoreError, Box<dyn std::error::Error + Send + Sync>> {
    e.downcast::<StoreError>().map(|e| *e)
}

/// Events read per statement: each page is one short read snapshot, so a walk of a live, growing database
/// (the appliance's self-verification) never holds one snapshot for minutes, which would stop WAL checkpoints.
pub const DB_PAGE: u64 = 1 << 16;

/// The events of a database, read page by page ([`DB_PAGE`]).
pub struct DbEvents<'a>(pub &'a Connection);

impl EventSource for DbEvents<'_> {
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut go_on = true;
        let conn = self.0;
        let mut next = from;
        loop {
            let mut last = None;
            let n = store::for_each_event_page(conn, next, DB_PAGE, |ev| {
                last = Some(ev.seq);
                push_checked(conn, ev, &mut batch, &mut go_on, f)
            })?;
            match last {
                Some(seq) if go_on && n == DB_PAGE => next = seq + 1,
                _ => break,
            }
        }
        if go_on && !batch.is_empty() {
            f(check_batch(&batch));
        }
        Ok(())
    }
}

/// Adds one row to the batch (with the erasure record it names, if erased) and hands full batches to `f`.
fn push_checked(
    conn: &Connection,
    ev: StoredEvent,
    batch: &mut Vec<(StoredEvent, Option<u64>)>,
    go_on: &mut bool,
    f: &mut dyn FnMut(Vec<Decoded>) -> bool,
) -> Result<bool, StoreError> {
    // An erased payload names its record in the erasures row (rare: one lookup per erased event); the walk
    // checks that record when it reaches it.
    let erasure_seq = if ev.body.is_none() && ev.salt.is_none() {
        store::erasure::erasure(conn, ev.seq)?.map(|r| r.erasure_seq)
    } else {
        None
    };
    batch.push((ev, erasure_seq));
    if batch.len() == BATCH {
        *go_on = f(check_batch(&std::mem::replace(batch, Vec::with_capacity(BATCH))));
    }
    Ok(*go_on)
}

/// Checks a batch of rows (each with the erasure record it names, if erased) on all cores.
fn check_batch(batch: &[(StoredEvent, Option<u64>)]) -> Vec<Decoded> {
    par_map(batch, |(ev, erasure_seq)| Ok(CheckedEvent::of(ev).with_erasure_seq(*erasure_seq)))
}

/// Verifies a whole database against `key`, the key the log started with (later keys follow from its key
/// rotation records); every head must carry `origin`, or when `None` the origin the database was created with
/// (`log_meta`), which the report names.
pub fn verify_database(
    conn: &Connection,
    key: &PublicKey,
    origin: Option<&str>,
) -> Result<Report, VerifyError> {
    verify_database_with(conn, std::slice::from_ref(key), WalkOptions { origin, ..WalkOptions::default() })
}

/// [`verify_database`] with every option of the walk; the chain may start with any of `keys`.
pub fn verify_database_with(
    conn: &Connection,
    keys: &[PublicKey],
    opts: WalkOptions<'_>,
) -> Result<Report, VerifyError> {
    let stored_origin = store::stored_origin(conn)?;
    let heads = store::all_heads(conn)?;
    let origin = opts.origin.or(stored_origin.as_deref());
    // The keys the database holds name the signer of a head that fails; they are never trusted.
    let mut known_keys = opts.known_keys.clone();
    known_keys.extend(store::public_key_pems(conn)?.iter().filter_map(|pem| PublicKey::from_pem(pem).ok()));
    let opts = WalkOptions { origin, known_keys, ..opts };
    let report = walk(Start::genesis(), heads, &mut DbEvents(conn), keys, &opts)?;
    check_node_store(conn, &report, report.heads.checked_sub(1))?;
    Ok(report)
}

/// The stored nodes serve every proof; their right edge at the last verified head (`last_height`) must be the
/// verified one (O(log n) reads). A proof from a corrupted node would fail at the client anyway; this names it
/// early.
fn check_node_store(conn: &Connection, report: &Report, last_height: Option<u64>) -> Result<(), VerifyError> {
    let size = report.frontier_at_last_head.size();
    let stored = store::tree::load_frontier(conn, size).ok();
    if stored.as_ref() != Some(&report.frontier_at_last_head) {
        return Err(Failure::NodeStoreMismatch { height: last_height.unwrap_or(0), tree_size: size }.into());
    }
    Ok(())
}
