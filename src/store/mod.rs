//! SQLite storage: opening (WAL, `synchronous=FULL`), schema creation and version check, and the
//! parameterised statements every other module uses. Only the appender's connection writes.

pub mod cosignatures;
pub mod erasure;
pub mod fault;
mod file_length;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "server")]
pub mod reads;
pub mod schema;
pub mod search;
pub mod tree;

use crate::formats::{NormalizedFields, Outcome};
use anchorlog_core::stored::{StoredEvent, StoredHead};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use schema::SCHEMA_VERSION;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database is not an anchorlog database of a version this build understands.
    #[error("database {path}: {problem}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A tree size or leaf index does not fit the tree (a proof was asked for something outside it).
    #[error(transparent)]
    Merkle(#[from] anchorlog_core::merkle::MerkleError),
    /// A group commit failed as a whole: nothing of the group (from seq `first_seq`) was stored.
    #[error("group commit from seq {first_seq} failed, nothing of it was stored: {message}")]
    GroupCommit {
        /// The first seq the group would have taken.
        first_seq: u64,
        /// The storage fault behind it (full disk, lock held by another process ...), if it was one.
        fault: Option<fault::StorageFault>,
        /// SQLite's error.
        message: String,
    },
    /// SQLite found the file damaged (a flipped byte in a page, a truncated file, a broken b-tree): the
    /// appliance refuses to start rather than serve a log that may be silently shortened.
    #[error(
        "database {path} is damaged: {problem}. Refusing to start: a damaged file may hold a silently shortened or \
         altered log. Keep the file (with its -wal) for investigation, restore the last backup, and run \
         `anchorlog verify --db` on what you restore"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What SQLite reported (`PRAGMA quick_check`/`integrity_check` lines, or the error that revealed it).
        problem: String,
    },
    /// A stored value has the wrong shape (the file was edited or corrupted).
    #[error("corrupt row in {table} at {key}: {problem}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// Row key (seq or height).
        key: u64,
        /// What is wrong.
        problem: String,
    },
    /// The blocking task that ran a read failed (it panicked or the runtime is shutting down).
    #[error("a read task failed: {0}")]
    ReadTask(String),
    /// A read on a PostgreSQL log failed (`reads::LogReads`' PostgreSQL arm; its corrupt rows and out-of-tree sizes
    /// become [`StoreError::Corrupt`] and [`StoreError::Merkle`], as on SQLite).
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Postgres(pg::PgError),
}

#[cfg(feature = "postgres")]
impl From<pg::PgError> for StoreError {
    /// The same variant as SQLite's for what both stores can find (a corrupt row, a size outside the tree), so that
    /// callers and their messages do not depend on the store.
    fn from(e: pg::PgError) -> Self {
        match e {
            pg::PgError::Corrupt { table, key, problem } => StoreError::Corrupt { table, key, problem },
            pg::PgError::Merkle(m) => StoreError::Merkle(m),
            other => StoreError::Postgres(other),
        }
    }
}

/// A stored RFC 3161 time-stamp token of one head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTimestamp {
    /// The head's height.
    pub height: u64,
    /// The whole DER `TimeStampResp`.
    pub response: Vec<u8>,
    /// The token's genTime, ms since the epoch.
    pub gen_time_ms: i64,
    /// The token's genTime, RFC 3339 UTC (fraction kept as the TSA sent it).
    pub gen_time: String,
    /// URL of the TSA that issued it.
    pub tsa_url: String,
    /// When it was stored, ms since the epoch.
    pub stored_at_ms: i64,
}

/// A new event as the appender inserts it.
#[derive(Debug, Clone)]
pub struct EventRow<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Receive time, ns since the epoch.
    pub received_at_ns: u64,
    /// Producer name.
    pub producer: &'a str,
    /// Source name.
    pub source: &'a str,
    /// Format name.
    pub format: &'a str,
    /// Producer-assigned event id.
    pub source_id: Option<&'a str>,
    /// Canonical entry bytes.
    pub entry: &'a [u8],
    /// Leaf hash.
    pub leaf_hash: &'a [u8; 32],
    /// Salt.
    pub salt: &'a [u8],
    /// Raw body.
    pub body: &'a [u8],
}

pub(crate) fn u64_of(v: i64, table: &'static str, key: u64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt { table, key, problem: format!("negative {what}") })
}

fn hash_of(v: Vec<u8>, table: &'static str, key: u64, what: &str) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(v).map_err(|_| StoreError::Corrupt {
        table,
        key,
        problem: format!("{what} is not 32 bytes"),
    })
}

pub(crate) fn apply_pragmas(conn: &Connection) -> Result<(), rusqlite::Error> {
    // WAL lets readers run beside the single writer; FULL makes every acknowledged commit durable (fsync of
    // the WAL at commit), which is what a 2xx promises.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(WRITE_BUSY_TIMEOUT)?;
    // After a checkpoint has emptied the WAL, cut the file back to this size: a WAL that grew while a long read
    // (an export to a slow client) held back checkpoints does not keep its peak size on disk forever.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    Ok(())
}

/// How long a write waits for a lock another connection holds (another process's write transaction, a
/// checkpoint) before it fails with `SQLITE_BUSY` — answered 503 `database_busy` with `Retry-After`.
pub const WRITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The size the WAL file is cut back to after a checkpoint reset it (`PRAGMA journal_size_limit`).
pub const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// How much of the database file is checked before the writer uses it (`storage.integrity_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrityCheck {
    /// `PRAGMA quick_check`: every b-tree page and record format, not index contents (O(size of the file)).
    #[default]
    Quick,
    /// `PRAGMA integrity_check`: also that every index matches its table (slower).
    Full,
    /// No check: a damaged page is found only when something reads it.
    Off,
}

/// Most problems a start-up check lists in its error (SQLite stops after this many).
const MAX_INTEGRITY_PROBLEMS: u32 = 10;

/// Opens the database for writing like [`open_writer`], after checking the whole file with `check`: a damaged
/// file (a flipped byte in any page, a truncated file) is refused with [`StoreError::Damaged`] naming it,
/// before anything is written to it.
pub fn open_writer_checked(
    path: &Path,
    origin: &str,
    check: IntegrityCheck,
) -> Result<Connection, StoreError> {
    let damaged = |e: StoreError| match e.fault() {
        Some(fault::StorageFault::Corrupt) => {
            StoreError::Damaged { path: path.to_path_buf(), problem: e.to_string() }
        }
        _ => e,
    };
    check_file_length(path)?;
    let conn = open_raw(path).map_err(damaged)?;
    let pragma = match check {
        IntegrityCheck::Quick => "quick_check",
        IntegrityCheck::Full => "integrity_check",
        IntegrityCheck::Off => return open_schema(conn, path, origin).map_err(damaged),
    };
    let started = std::time::Instant::now();
    let problems = integrity_problems(&conn, pragma).map_err(damaged)?;
    if !problems.is_empty() {
        return Err(StoreError::Damaged {
            path: path.to_path_buf(),
            problem: format!("PRAGMA {pragma} reports: {}", problems.join("; ")),
        });
    }
    tracing::info!(
        check = pragma,
        ms = started.elapsed().as_millis() as u64,
        "database integrity check passed"
    );
    open_schema(conn, path, origin).map_err(damaged)
}

/// Refuses a database file shorter than its own header says (a truncated copy, a partial restore), whatever
/// `storage.integrity_check` says: it reads the 100-byte header, and the WAL only when the file is short (a
/// checkpoint cut by a crash leaves it so, with the missing pages still in the WAL). See [`file_length`].
fn check_file_length(path: &Path) -> Result<(), StoreError> {
    file_length::check(path).map_err(|problem| StoreError::Damaged { path: path.to_path_buf(), problem })
}

/// The lines `PRAGMA quick_check`/`integrity_check` reports (empty when it says `ok`).
fn integrity_problems(conn: &Connection, pragma: &str) -> Result<Vec<String>, StoreError> {
    let run = || -> Result<Vec<String>, rusqlite::Error> {
        let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({MAX_INTEGRITY_PROBLEMS})"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    };
    match run() {
        Ok(lines) => Ok(lines.into_iter().filter(|l| l != "ok").collect()),
        // Damage bad enough stops the check itself: that is its finding.
        Err(e) if fault::StorageFault::of_sqlite(&e) == Some(fault::StorageFault::Corrupt) => {
            Ok(vec![format!("the check stopped: {e}")])
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens (creating if needed) the database for writing, applies the schema on a new file, and checks the
/// schema version and the log origin of an existing one.
pub fn open_writer(path: &Path, origin: &str) -> Result<Connection, StoreError> {
    open_schema(open_raw(path)?, path, origin)
}

fn open_raw(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let mut conn = Connection::open(path).map_err(open_err)?;
    apply_pragmas(&conn).map_err(open_err)?;
    // Take the write lock at BEGIN: a lock held by another process then costs one bounded wait per group commit
    // and fails the group as a whole, instead of one wait per request inside it.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    Ok(conn)
}

fn open_schema(mut conn: Connection, path: &Path, origin: &str) -> Result<Connection, StoreError> {
    let has_version: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='schema_version'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !has_version {
        let tables: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE type='table'", [], |r| r.get(0))?;
        if tables > 0 {
            return Err(StoreError::Incompatible {
                path: path.to_path_buf(),
                problem: "this file holds tables but no anchorlog schema_version; refusing to touch it — \
                          point storage.database at a new path"
                    .into(),
            });
        }
        let tx = conn.transaction()?;
        tx.execute_batch(schema::SCHEMA_V1)?;
        tx.execute("INSERT INTO schema_version (version, applied_at_ms) VALUES (1, ?1)", params![now_ms()])?;
        tx.execute("INSERT INTO log_meta (key, value) VALUES ('origin', ?1)", params![origin])?;
        tx.commit()?;
    }
    let version = check_version(&conn, path, schema::OLDEST_READABLE_SCHEMA_VERSION, SCHEMA_VERSION)?;
    migrate(&mut conn, version)?;
    let stored_origin = stored_origin(&conn)?;
    if stored_origin.as_deref() != Some(origin) {
        return Err(StoreError::Incompatible {
            path: path.to_path_buf(),
            problem: format!(
                "the log in this file has origin {:?} but the configuration says {origin:?}; an origin never \
                 changes for a log — fix `origin` in the config or use a new database",
                stored_origin.unwrap_or_default()
            ),
        });
    }
    Ok(conn)
}

/// Applies every [`schema::MIGRATIONS`] step above `from`, each in its own transaction with its version row.
fn migrate(conn: &mut Connection, from: i64) -> Result<(), StoreError> {
    for (version, ddl) in schema::MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        let tx = conn.transaction()?;
        tx.execute_batch(ddl)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at_ms) VALUES (?1, ?2)",
            params![version, now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

/// Checks that the file's schema version is within `oldest..=known` (the ledger's [`SCHEMA_VERSION`], or the
/// search database's [`schema::SEARCH_SCHEMA_VERSION`] with `oldest = known`) and returns it.
fn check_version(conn: &Connection, path: &Path, oldest: i64, known: i64) -> Result<i64, StoreError> {
    let version: Option<i64> =
        conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0)).optional()?.flatten();
    match version {
        Some(v) if (oldest..=known).contains(&v) => Ok(v),
        Some(v) if v > known => Err(StoreError::Incompatible {
            path: path.to_path_buf(),
            problem: format!(
                "schema version {v} was written by a newer anchorlog (this build knows {known}); upgrade"
            ),
        }),
        other => Err(StoreError::Incompatible {
            path: path.to_path_buf(),
            problem: format!("unknown schema version {other:?} (this build knows {known})"),
        }),
    }
}

/// The search database beside the ledger file: `anchorlog.db` → `anchorlog.search.db`.
pub fn search_path(database: &Path) -> PathBuf {
    database.with_extension("search.db")
}

/// Opens (creating if needed) the search database for the indexer. Its content is derived from the ledger,
/// so nothing is fsynced (`synchronous=OFF`): after a crash the indexer re-derives what is missing.
pub fn open_search_writer(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(open_err)?;
    // The indexes are updated all over (an actor index by every batch): keep their pages in memory instead of
    // re-reading them from the OS on every batch. Negative = KiB; 64 MiB at most, allocated as used.
    conn.pragma_update(None, "cache_size", -65_536).map_err(open_err)?;
    // Each multi-row INSERT saves the pages it is about to change in a statement journal; in a temp file that
    // was a quarter of the indexer's CPU (a pwrite per page, docs/PERFORMANCE.md). Keep it in memory.
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='event_fields'",
        [],
        |r| r.get(0),
    )?;
    if tables == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(schema::SEARCH_SCHEMA)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at_ms) VALUES (?1, ?2)",
            params![schema::SEARCH_SCHEMA_VERSION, now_ms()],
        )?;
        tx.commit()?;
    }
    check_version(&conn, path, schema::SEARCH_SCHEMA_VERSION, schema::SEARCH_SCHEMA_VERSION)?;
    Ok(conn)
}

/// One past the greatest seq in the search database (0 if empty): where the indexer resumes.
pub fn indexed_until(conn: &Connection) -> Result<u64, StoreError> {
    let n: Option<i64> = conn.query_row("SELECT max(seq) FROM event_fields", [], |r| r.get(0))?;
    Ok(n.map_or(0, |m| m as u64 + 1))
}

/// Visits `(seq, source, format, body)` of events `from..to` in seq order (erased bodies are `None`).
pub fn for_each_body(
    conn: &Connection,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, String, String, Option<Vec<u8>>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("SELECT seq, source, format, body FROM events WHERE seq >= ?1 AND seq < ?2 ORDER BY seq")?;
    let mut rows = stmt.query(params![from as i64, to as i64])?;
    while let Some(r) = rows.next()? {
        f(u64_of(r.get(0)?, "events", from, "seq")?, r.get(1)?, r.get(2)?, r.get(3)?)?;
    }
    Ok(())
}

/// Opens the database read-only (verification, queries). Fails if the file does not exist.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    open_read_only(path, schema::OLDEST_READABLE_SCHEMA_VERSION, SCHEMA_VERSION)
}

/// Opens the search database (`<database>.search.db`) read-only. Fails if the file does not exist.
pub fn open_search_reader(path: &Path) -> Result<Connection, StoreError> {
    open_read_only(path, schema::SEARCH_SCHEMA_VERSION, schema::SEARCH_SCHEMA_VERSION)
}

fn open_read_only(path: &Path, oldest: i64, version: i64) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
    check_version(&conn, path, oldest, version)?;
    Ok(conn)
}

/// The origin recorded when the log was created.
pub fn stored_origin(conn: &Connection) -> Result<Option<String>, StoreError> {
    Ok(conn.query_row("SELECT value FROM log_meta WHERE key='origin'", [], |r| r.get(0)).optional()?)
}

/// Records the PEM public key of a head-signing key (once per key id; exports read it back).
pub fn record_public_key(conn: &Connection, key_id: &str, pem: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO log_meta (key, value) VALUES (?1, ?2)",
        params![format!("key:{key_id}"), pem],
    )?;
    Ok(())
}

/// The PEM public key recorded for `key_id`, if any.
pub fn public_key_pem(conn: &Connection, key_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM log_meta WHERE key = ?1", params![format!("key:{key_id}")], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Every PEM public key recorded in `log_meta` (every key that signed heads of this log, and the configured one).
pub fn public_key_pems(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare("SELECT value FROM log_meta WHERE key LIKE 'key:%' ORDER BY key")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Indexes the key rotation record at `seq` (in the transaction that appends it), so exports and receipts find
/// every rotation without scanning the log. An index only: verifiers judge the records themselves.
pub fn record_rotation(conn: &Connection, seq: u64, new_key_id: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO log_meta (key, value) VALUES (?1, ?2)",
        params![format!("rotation:{seq:020}"), new_key_id],
    )?;
    Ok(())
}

/// The seqs of the indexed key rotation records ([`record_rotation`]), in order.
pub fn rotation_seqs(conn: &Connection) -> Result<Vec<u64>, StoreError> {
    let mut stmt = conn.prepare("SELECT key FROM log_meta WHERE key LIKE 'rotation:%' ORDER BY key")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for key in rows {
        let key = key?;
        let seq = key.strip_prefix("rotation:").and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
            StoreError::Corrupt {
                table: "log_meta",
                key: 0,
                problem: format!("malformed rotation index {key:?}"),
            }
        })?;
        out.push(seq);
    }
    Ok(out)
}

/// Number of stored events (= next seq, because seqs are dense).
pub fn event_count(conn: &Connection) -> Result<u64, StoreError> {
    let n: Option<i64> = conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
    Ok(n.map_or(0, |m| m as u64 + 1))
}

/// The producer and body (`None` if erased) of a stored event.
pub type ProducerAndBody = (String, Option<Vec<u8>>);

/// The producer and body of the last stored event, if any.
pub fn last_event(conn: &Connection) -> Result<Option<ProducerAndBody>, StoreError> {
    Ok(conn
        .query_row("SELECT producer, body FROM events ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

/// Inserts one event (the caller owns the transaction).
pub fn insert_event(conn: &Connection, e: &EventRow<'_>) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (seq, received_at_ns, producer, source, format, source_id, entry, leaf_hash, salt, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    stmt.execute(params![
        e.seq as i64,
        e.received_at_ns as i64,
        e.producer,
        e.source,
        e.format,
        e.source_id,
        e.entry,
        &e.leaf_hash[..],
        e.salt,
        e.body
    ])?;
    Ok(())
}

/// Inserts the normalized search fields of event `seq` into the search database (the caller owns the
/// transaction). A row that is already there is kept (re-indexing after a crash is idempotent).
pub fn insert_event_fields(
    conn: &Connection,
    seq: u64,
    source: &str,
    f: &NormalizedFields,
) -> Result<(), StoreError> {
    insert_event_fields_many(conn, &[(seq, source, f)])
}

/// Rows per multi-row INSERT into `event_fields` (13 parameters each, far below SQLite's limit).
const FIELDS_ROWS_PER_STATEMENT: usize = 64;
/// Entries per multi-row INSERT into `actor_index` / `ip_index` (2 parameters each).
const INDEX_ROWS_PER_STATEMENT: usize = 200;

/// Inserts many `(seq, source, fields)` rows into the search database (the caller owns the transaction), 64
/// rows per statement: the per-statement overhead is a large share of the indexer's CPU. The `actor_index`
/// and `ip_index` entries follow, sorted by key so that consecutive entries share leaf pages.
///
/// Re-indexing is idempotent: rows arrive in seq order, so an already indexed part is a prefix (a re-sent
/// tail), skipped with its key entries. A row already there anywhere else keeps its stored fields (`OR
/// IGNORE`) and its key entries are inserted or ignored; a stray entry cannot make a wrong hit, because the
/// search re-checks every filter on the row itself.
pub fn insert_event_fields_many(
    conn: &Connection,
    rows: &[(u64, &str, &NormalizedFields)],
) -> Result<(), StoreError> {
    const ONE: &str = "(?,?,?,?,?,?,?,?,?,?,?,?,?)";
    let present = |seq: u64| -> Result<bool, StoreError> {
        let mut stmt = conn.prepare_cached("SELECT 1 FROM event_fields WHERE seq = ?1")?;
        Ok(stmt.exists(params![seq as i64])?)
    };
    // The indexer hands rows in increasing seq order, so only a prefix can already be there (a re-sent
    // tail): skip it, looking up each row only while the previous one was present.
    let mut skip = 0;
    while skip < rows.len() && present(rows[skip].0)? {
        skip += 1;
    }
    let rows = &rows[skip..];
    for chunk in rows.chunks(FIELDS_ROWS_PER_STATEMENT) {
        let values = vec![ONE; chunk.len()].join(",");
        let mut stmt = conn.prepare_cached(&format!(
            "INSERT OR IGNORE INTO event_fields ({EVENT_FIELDS_COLUMNS}) VALUES {values}"
        ))?;
        let mut i = 0;
        let mut bind = |stmt: &mut rusqlite::CachedStatement<'_>, v: &dyn rusqlite::ToSql| {
            i += 1;
            stmt.raw_bind_parameter(i, v)
        };
        for (seq, source, f) in chunk {
            bind(&mut stmt, &(*seq as i64))?;
            bind(&mut stmt, source)?;
            bind(&mut stmt, &f.event_time_ms)?;
            bind(&mut stmt, &f.event_type)?;
            bind(&mut stmt, &f.outcome.as_str())?;
            bind(&mut stmt, &f.actor_id)?;
            bind(&mut stmt, &f.actor_name)?;
            bind(&mut stmt, &f.target)?;
            bind(&mut stmt, &f.source_ip)?;
            bind(&mut stmt, &f.user_agent)?;
            bind(&mut stmt, &f.session_id)?;
            bind(&mut stmt, &f.client_id)?;
            bind(&mut stmt, &f.realm)?;
        }
        stmt.raw_execute()?;
    }
    insert_sorted(
        conn,
        "actor_index",
        "actor_id",
        rows.iter().filter_map(|(s, _, f)| Some((f.actor_id.as_deref()?, *s))),
    )?;
    insert_sorted(
        conn,
        "ip_index",
        "source_ip",
        rows.iter().filter_map(|(s, _, f)| Some((f.source_ip.as_deref()?, *s))),
    )?;
    Ok(())
}

/// Inserts `(key, seq)` entries into one of the key tables (`actor_index`, `ip_index`) in key order.
fn insert_sorted<'a>(
    conn: &Connection,
    table: &str,
    column: &str,
    entries: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), StoreError> {
    let mut entries: Vec<(&str, u64)> = entries.collect();
    entries.sort_unstable();
    for chunk in entries.chunks(INDEX_ROWS_PER_STATEMENT) {
        let values = vec!["(?,?)"; chunk.len()].join(",");
        let mut stmt =
            conn.prepare_cached(&format!("INSERT OR IGNORE INTO {table} ({column}, seq) VALUES {values}"))?;
        for (i, (key, seq)) in chunk.iter().enumerate() {
            stmt.raw_bind_parameter(2 * i + 1, key)?;
            stmt.raw_bind_parameter(2 * i + 2, *seq as i64)?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

/// Opens (`true`) or closes the search database's removal guard inside the caller's transaction: the triggers
/// refuse DELETE on the search tables while it is closed. Open it only around the indexer's own removals.
pub fn set_search_removal_guard(search: &Connection, open: bool) -> Result<(), StoreError> {
    search.execute("UPDATE removal_guard SET open = ?1 WHERE id = 1", params![i64::from(open)])?;
    Ok(())
}

/// Seqs below `upto` that have no `event_fields` row (in order), found in one pass over the table's keys; O(1)
/// when nothing is missing (the row count equals `upto`: seq is the key, so all are there).
pub fn missing_event_fields(search: &Connection, upto: u64) -> Result<Vec<u64>, StoreError> {
    let count: i64 =
        search.query_row("SELECT count(*) FROM event_fields WHERE seq < ?1", params![upto as i64], |r| {
            r.get(0)
        })?;
    if count as u64 == upto {
        return Ok(Vec::new());
    }
    let mut missing = Vec::new();
    let mut next = 0u64;
    let mut stmt = search.prepare("SELECT seq FROM event_fields WHERE seq < ?1 ORDER BY seq")?;
    let mut rows = stmt.query(params![upto as i64])?;
    while let Some(row) = rows.next()? {
        let seq = u64_of(row.get(0)?, "event_fields", next, "seq")?;
        missing.extend(next..seq);
        next = seq + 1;
    }
    missing.extend(next..upto);
    Ok(missing)
}

/// Makes the key tables (`actor_index`, `ip_index`) hold exactly the entries of `event_fields`: adds what is
/// missing and removes what no row accounts for. Compares counts first, so a consistent database costs one
/// scan per table. Returns how many entries were added and removed. The caller owns the transaction.
pub fn repair_key_tables(search: &Connection) -> Result<(u64, u64), StoreError> {
    let (mut added, mut removed) = (0, 0);
    for (table, column) in [("actor_index", "actor_id"), ("ip_index", "source_ip")] {
        let want: i64 = search.query_row(
            &format!("SELECT count(*) FROM event_fields WHERE {column} IS NOT NULL"),
            [],
            |r| r.get(0),
        )?;
        let have: i64 = search.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        if want == have {
            continue;
        }
        added += search.execute(
            &format!(
                "INSERT OR IGNORE INTO {table} ({column}, seq) \
                 SELECT {column}, seq FROM event_fields WHERE {column} IS NOT NULL ORDER BY {column}, seq"
            ),
            [],
        )? as u64;
        set_search_removal_guard(search, true)?;
        removed += search.execute(
            &format!(
                "DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM event_fields f \
                 WHERE f.seq = {table}.seq AND f.{column} = {table}.{column})"
            ),
            [],
        )? as u64;
        set_search_removal_guard(search, false)?;
    }
    Ok((added, removed))
}

/// The columns of an `event_fields` row, in the order [`event_fields_row`] reads them.
pub(crate) const EVENT_FIELDS_COLUMNS: &str = "seq, source, event_time_ms, event_type, outcome, actor_id, \
     actor_name, target, source_ip, user_agent, session_id, client_id, realm";

/// Reads `(seq, source, fields)` from a row selected as [`EVENT_FIELDS_COLUMNS`].
pub(crate) fn event_fields_row(r: &rusqlite::Row<'_>) -> Result<(u64, String, NormalizedFields), StoreError> {
    let seq = u64_of(r.get(0)?, "event_fields", 0, "seq")?;
    let outcome = match r.get::<_, String>(4)?.as_str() {
        "success" => Outcome::Success,
        "failure" => Outcome::Failure,
        "unknown" => Outcome::Unknown,
        other => {
            return Err(StoreError::Corrupt {
                table: "event_fields",
                key: seq,
                problem: format!("unknown outcome {other:?}"),
            })
        }
    };
    let fields = NormalizedFields {
        event_time_ms: r.get(2)?,
        event_type: r.get(3)?,
        outcome,
        actor_id: r.get(5)?,
        actor_name: r.get(6)?,
        target: r.get(7)?,
        source_ip: r.get(8)?,
        user_agent: r.get(9)?,
        session_id: r.get(10)?,
        client_id: r.get(11)?,
        realm: r.get(12)?,
    };
    Ok((seq, r.get(1)?, fields))
}

/// The normalized search fields of the indexed events with `from <= seq < to`, in seq order (one statement: the
/// event stream's page).
pub fn event_fields_range(
    conn: &Connection,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, String, NormalizedFields)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_FIELDS_COLUMNS} FROM event_fields WHERE seq >= ?1 AND seq < ?2 ORDER BY seq"
    ))?;
    let mut rows = stmt.query(params![from as i64, i64::try_from(to).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(event_fields_row(r)?);
    }
    Ok(out)
}

/// The normalized search fields of event `seq`, with the source it arrived through.
pub fn event_fields(conn: &Connection, seq: u64) -> Result<Option<(String, NormalizedFields)>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {EVENT_FIELDS_COLUMNS} FROM event_fields WHERE seq = ?1"))?;
    let mut rows = stmt.query(params![seq as i64])?;
    let Some(r) = rows.next()? else { return Ok(None) };
    let (_, source, fields) = event_fields_row(r)?;
    Ok(Some((source, fields)))
}

/// The seq and leaf hash of an already stored event with this de-duplication key.
pub fn find_by_source_id(
    conn: &Connection,
    producer: &str,
    source: &str,
    source_id: &str,
) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, leaf_hash FROM events WHERE producer = ?1 AND source = ?2 AND source_id = ?3",
    )?;
    let row: Option<(i64, Vec<u8>)> =
        stmt.query_row(params![producer, source, source_id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    match row {
        None => Ok(None),
        Some((seq, leaf)) => {
            let seq = u64_of(seq, "events", 0, "seq")?;
            Ok(Some((seq, hash_of(leaf, "events", seq, "leaf_hash")?)))
        }
    }
}

/// One event by seq.
pub fn event(conn: &Connection, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, entry, leaf_hash, salt, body FROM events WHERE seq = ?1")?;
    let mut rows = stmt.query(params![seq as i64])?;
    match rows.next()? {
        None => Ok(None),
        Some(r) => Ok(Some(event_from_row(r)?)),
    }
}

fn event_from_row(r: &rusqlite::Row<'_>) -> Result<StoredEvent, StoreError> {
    let seq = u64_of(r.get(0)?, "events", 0, "seq")?;
    Ok(StoredEvent {
        seq,
        entry: r.get(1)?,
        leaf_hash: hash_of(r.get(2)?, "events", seq, "leaf_hash")?,
        salt: r.get(3)?,
        body: r.get(4)?,
    })
}

/// Visits every event with `seq >= from` in seq order (streaming; constant memory).
pub fn for_each_event(
    conn: &Connection,
    from: u64,
    mut f: impl FnMut(StoredEvent) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare("SELECT seq, entry, leaf_hash, salt, body FROM events WHERE seq >= ?1 ORDER BY seq")?;
    let mut rows = stmt.query(params![from as i64])?;
    while let Some(r) = rows.next()? {
        if !f(event_from_row(r)?)? {
            break;
        }
    }
    Ok(())
}

/// Visits at most `limit` events with `seq >= from` in seq order, in one statement (one read snapshot);
/// returns how many it visited. A live reader walks the log page by page this way, so no snapshot is held for
/// long: a long-held WAL snapshot stops checkpoints and makes the `-wal` file grow with every commit meanwhile.
pub fn for_each_event_page(
    conn: &Connection,
    from: u64,
    limit: u64,
    mut f: impl FnMut(StoredEvent) -> Result<bool, StoreError>,
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, entry, leaf_hash, salt, body FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![from as i64, i64::try_from(limit).unwrap_or(i64::MAX)])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        n += 1;
        if !f(event_from_row(r)?)? {
            break;
        }
    }
    Ok(n)
}

/// The stored event whose `source_id` is the greatest one beginning with `prefix` among the appliance's own
/// events (producer and source `anchorlog`) below seq `below`: one descent of the unique index on
/// `(producer, source, source_id)`. The `source_id` column is not signed (the entry is), so the caller checks
/// the event before it trusts it.
pub fn last_own_event_with_source_id_prefix(
    conn: &Connection,
    prefix: &str,
    below: u64,
) -> Result<Option<StoredEvent>, StoreError> {
    // `prefix` followed by the greatest code point bounds the range of ids that begin with it.
    let upper = format!("{prefix}\u{10FFFF}");
    let mut stmt = conn.prepare_cached(
        "SELECT seq, entry, leaf_hash, salt, body FROM events INDEXED BY events_source_id
         WHERE producer = ?1 AND source = ?1 AND source_id >= ?2 AND source_id < ?3 AND seq < ?4
         ORDER BY source_id DESC LIMIT 1",
    )?;
    let mut rows = stmt.query(params![
        anchorlog_core::record_types::APPLIANCE,
        prefix,
        upper,
        i64::try_from(below).unwrap_or(i64::MAX)
    ])?;
    rows.next()?.map(event_from_row).transpose()
}

/// Leaf hashes of events `from..to` in seq order.
pub fn leaf_hashes(conn: &Connection, from: u64, to: u64) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, leaf_hash FROM events WHERE seq >= ?1 AND seq < ?2 ORDER BY seq")?;
    let mut rows = stmt.query(params![from as i64, to as i64])?;
    let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
    let mut expected = from;
    while let Some(r) = rows.next()? {
        let seq = u64_of(r.get(0)?, "events", expected, "seq")?;
        if seq != expected {
            return Err(StoreError::Corrupt {
                table: "events",
                key: expected,
                problem: "missing event".into(),
            });
        }
        out.push(hash_of(r.get(1)?, "events", seq, "leaf_hash")?);
        expected += 1;
    }
    if expected != to {
        return Err(StoreError::Corrupt { table: "events", key: expected, problem: "missing event".into() });
    }
    Ok(out)
}

/// Inserts a signed head.
pub fn insert_head(conn: &Connection, h: &StoredHead) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO heads (height, tree_size, root, checkpoint, signature, key_id, sealed_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        h.height as i64,
        h.tree_size as i64,
        &h.root[..],
        h.checkpoint,
        h.signature,
        h.key_id,
        h.sealed_at_ms
    ])?;
    Ok(())
}

fn head_from_row(r: &rusqlite::Row<'_>) -> Result<StoredHead, StoreError> {
    let height = u64_of(r.get(0)?, "heads", 0, "height")?;
    Ok(StoredHead {
        height,
        tree_size: u64_of(r.get(1)?, "heads", height, "tree_size")?,
        root: hash_of(r.get(2)?, "heads", height, "root")?,
        checkpoint: r.get(3)?,
        signature: r.get(4)?,
        key_id: r.get(5)?,
        sealed_at_ms: r.get(6)?,
    })
}

const HEAD_COLUMNS: &str = "height, tree_size, root, checkpoint, signature, key_id, sealed_at_ms";

/// One head by height.
pub fn head(conn: &Connection, height: u64) -> Result<Option<StoredHead>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {HEAD_COLUMNS} FROM heads WHERE height = ?1"))?;
    let mut rows = stmt.query(params![height as i64])?;
    rows.next()?.map(head_from_row).transpose()
}

/// The head with the greatest height.
pub fn last_head(conn: &Connection) -> Result<Option<StoredHead>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {HEAD_COLUMNS} FROM heads ORDER BY height DESC LIMIT 1"))?;
    let mut rows = stmt.query([])?;
    rows.next()?.map(head_from_row).transpose()
}

/// The earliest head whose tree covers `seq` (binary search over heights: tree sizes never decrease).
pub fn covering_head(conn: &Connection, seq: u64) -> Result<Option<StoredHead>, StoreError> {
    let Some(last) = last_head(conn)? else { return Ok(None) };
    if last.tree_size <= seq {
        return Ok(None);
    }
    let (mut lo, mut hi, mut best) = (0u64, last.height, last);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let h = head(conn, mid)?.ok_or(StoreError::Corrupt {
            table: "heads",
            key: mid,
            problem: "missing head".into(),
        })?;
        if h.tree_size > seq {
            hi = mid;
            best = h;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(best))
}

/// The heads from height `from` on, in height order.
pub fn heads_from(conn: &Connection, from: u64) -> Result<Vec<StoredHead>, StoreError> {
    let mut stmt =
        conn.prepare(&format!("SELECT {HEAD_COLUMNS} FROM heads WHERE height >= ?1 ORDER BY height"))?;
    let mut rows = stmt.query(params![from as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(head_from_row(r)?);
    }
    Ok(out)
}

/// All heads in height order.
pub fn all_heads(conn: &Connection) -> Result<Vec<StoredHead>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {HEAD_COLUMNS} FROM heads ORDER BY height"))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(head_from_row(r)?);
    }
    Ok(out)
}

/// Inserts a verified time-stamp token (one per head; the table refuses a second one).
pub fn insert_timestamp(conn: &Connection, t: &StoredTimestamp) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO timestamps (height, response, gen_time_ms, gen_time, tsa_url, stored_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        t.height as i64,
        t.response,
        t.gen_time_ms,
        t.gen_time,
        t.tsa_url,
        t.stored_at_ms
    ])?;
    Ok(())
}

fn timestamp_from_row(r: &rusqlite::Row<'_>) -> Result<StoredTimestamp, StoreError> {
    let height = u64_of(r.get(0)?, "timestamps", 0, "height")?;
    Ok(StoredTimestamp {
        height,
        response: r.get(1)?,
        gen_time_ms: r.get(2)?,
        gen_time: r.get(3)?,
        tsa_url: r.get(4)?,
        stored_at_ms: r.get(5)?,
    })
}

const TIMESTAMP_COLUMNS: &str = "height, response, gen_time_ms, gen_time, tsa_url, stored_at_ms";

/// The token of one head, if it has one.
pub fn timestamp(conn: &Connection, height: u64) -> Result<Option<StoredTimestamp>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TIMESTAMP_COLUMNS} FROM timestamps WHERE height = ?1"))?;
    let mut rows = stmt.query(params![height as i64])?;
    rows.next()?.map(timestamp_from_row).transpose()
}

/// Visits every stored token in height order (streaming).
pub fn for_each_timestamp(
    conn: &Connection,
    mut f: impl FnMut(StoredTimestamp) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {TIMESTAMP_COLUMNS} FROM timestamps ORDER BY height"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        if !f(timestamp_from_row(r)?)? {
            break;
        }
    }
    Ok(())
}

/// Whether any head with `from <= height <= to` has a token.
pub fn any_timestamp_between(conn: &Connection, from: u64, to: u64) -> Result<bool, StoreError> {
    let any: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM timestamps WHERE height BETWEEN ?1 AND ?2)",
        params![from.min(i64::MAX as u64) as i64, to.min(i64::MAX as u64) as i64],
        |r| r.get(0),
    )?;
    Ok(any)
}

/// Number of stored tokens.
pub fn timestamp_count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM timestamps", [], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Heads with `height >= from` that have no token yet, in height order (at most `limit`).
pub fn heads_without_timestamp(
    conn: &Connection,
    from: u64,
    limit: u64,
) -> Result<Vec<StoredHead>, StoreError> {
    let cols = HEAD_COLUMNS.split(", ").map(|c| format!("h.{c}")).collect::<Vec<_>>().join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {cols} FROM heads h LEFT JOIN timestamps t ON t.height = h.height
         WHERE h.height >= ?1 AND t.height IS NULL ORDER BY h.height LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![from as i64, limit.min(i64::MAX as u64) as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(head_from_row(r)?);
    }
    Ok(out)
}

/// Replaces the search fields of an erased event by an empty row (its source only): the fields were derived
/// from the erased body, so they go with it, and so do its `actor_index` and `ip_index` entries. The row stays
/// so `indexed_until` keeps counting it.
pub fn scrub_event_fields(search: &Connection, seq: u64) -> Result<(), StoreError> {
    let row: Option<(String, Option<String>, Option<String>)> = search
        .query_row(
            "SELECT source, actor_id, source_ip FROM event_fields WHERE seq = ?1",
            params![seq as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((source, actor, ip)) = row else { return Ok(()) };
    if let Some(actor) = actor {
        search.execute(
            "DELETE FROM actor_index WHERE actor_id = ?1 AND seq = ?2",
            params![actor, seq as i64],
        )?;
    }
    if let Some(ip) = ip {
        search.execute("DELETE FROM ip_index WHERE source_ip = ?1 AND seq = ?2", params![ip, seq as i64])?;
    }
    search.execute("DELETE FROM event_fields WHERE seq = ?1", params![seq as i64])?;
    search.execute(
        "INSERT INTO event_fields (seq, source, outcome) VALUES (?1, ?2, 'unknown')",
        params![seq as i64, source],
    )?;
    Ok(())
}

/// A small pool of read-only connections, used from blocking threads.
pub struct ReadPool {
    path: PathBuf,
    open: fn(&Path) -> Result<Connection, StoreError>,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// A pool over the ledger database at `path` (connections are opened lazily).
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), open: open_reader, idle: Mutex::new(Vec::new()) }
    }

    /// A pool over the search database at `path` (connections are opened lazily).
    pub fn new_search(path: &Path) -> Self {
        Self { path: path.to_path_buf(), open: open_search_reader, idle: Mutex::new(Vec::new()) }
    }

    /// The database file the pool reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a pooled read connection.
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match conn {
            Some(c) => c,
            None => (self.open)(&self.path)?,
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < 8 {
                idle.push(conn);
            }
        }
        result
    }
}

/// Milliseconds since the Unix epoch, from the process's wall clock ([`crate::clock`]).
pub fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Nanoseconds since the Unix epoch, from the process's wall clock ([`crate::clock`]).
pub fn now_ns() -> u64 {
    crate::clock::now_ns()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64) -> (Vec<u8>, [u8; 32]) {
        (format!("{{\"seq\":{seq}}}").into_bytes(), [seq as u8; 32])
    }

    fn insert(conn: &Connection, seq: u64) -> Result<(), StoreError> {
        let (entry, leaf) = row(seq);
        insert_event(
            conn,
            &EventRow {
                seq,
                received_at_ns: 1,
                producer: "p",
                source: "events",
                format: "json",
                source_id: None,
                entry: &entry,
                leaf_hash: &leaf,
                salt: &[0; 32],
                body: b"{}",
            },
        )
    }

    #[test]
    fn new_database_gets_schema_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        let conn = open_writer(&p, "o/1").unwrap();
        assert_eq!(stored_origin(&conn).unwrap().as_deref(), Some("o/1"));
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        drop(conn);
        let err = open_writer(&p, "o/2").unwrap_err().to_string();
        assert!(err.contains("has origin \"o/1\" but the configuration says \"o/2\""), "{err}");
    }

    #[test]
    fn triggers_refuse_update_delete_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("a.db"), "o").unwrap();
        insert(&conn, 0).unwrap();
        insert(&conn, 1).unwrap();
        let gap = insert(&conn, 3).unwrap_err().to_string();
        assert!(gap.contains("next dense sequence number"), "{gap}");
        let upd = conn.execute("UPDATE events SET body = x'00' WHERE seq = 0", []).unwrap_err().to_string();
        assert!(upd.contains("events are append-only"), "{upd}");
        let del = conn.execute("DELETE FROM events WHERE seq = 1", []).unwrap_err().to_string();
        assert!(del.contains("events are append-only"), "{del}");
        assert_eq!(event_count(&conn).unwrap(), 2);
        assert_eq!(leaf_hashes(&conn, 0, 2).unwrap(), vec![[0; 32], [1; 32]]);
        let h = StoredHead {
            height: 0,
            tree_size: 2,
            root: [9; 32],
            checkpoint: "c".into(),
            signature: vec![1],
            key_id: "k".into(),
            sealed_at_ms: 5,
        };
        insert_head(&conn, &h).unwrap();
        assert!(insert_head(&conn, &StoredHead { height: 2, ..h.clone() }).is_err());
        let upd = conn.execute("UPDATE heads SET signature = x'00'", []).unwrap_err().to_string();
        assert!(upd.contains("heads are append-only"), "{upd}");
        assert_eq!(last_head(&conn).unwrap(), Some(h));
    }

    #[test]
    fn timestamps_are_append_only_and_untimestamped_heads_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("a.db"), "o").unwrap();
        for height in 0..3 {
            let h = StoredHead {
                height,
                tree_size: 0,
                root: [0; 32],
                checkpoint: format!("c{height}"),
                signature: vec![1],
                key_id: "k".into(),
                sealed_at_ms: 5,
            };
            insert_head(&conn, &h).unwrap();
        }
        let t = StoredTimestamp {
            height: 1,
            response: vec![0x30, 0],
            gen_time_ms: 7,
            gen_time: "1970-01-01T00:00:00.007Z".into(),
            tsa_url: "http://tsa/".into(),
            stored_at_ms: 8,
        };
        insert_timestamp(&conn, &t).unwrap();
        assert!(insert_timestamp(&conn, &t).is_err(), "one token per head");
        let missing = insert_timestamp(&conn, &StoredTimestamp { height: 9, ..t.clone() });
        assert!(missing.is_err(), "a token needs its head");
        assert_eq!(timestamp(&conn, 1).unwrap(), Some(t));
        assert_eq!(timestamp(&conn, 0).unwrap(), None);
        let heights = |from| {
            heads_without_timestamp(&conn, from, 10).unwrap().iter().map(|h| h.height).collect::<Vec<_>>()
        };
        assert_eq!(heights(0), vec![0, 2]);
        assert_eq!(heights(1), vec![2]);
        let upd = conn.execute("UPDATE timestamps SET response = x'00'", []).unwrap_err().to_string();
        assert!(upd.contains("timestamps are append-only"), "{upd}");
        let del = conn.execute("DELETE FROM timestamps", []).unwrap_err().to_string();
        assert!(del.contains("timestamps are append-only"), "{del}");
    }

    #[test]
    fn event_fields_round_trip_in_the_search_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = search_path(&dir.path().join("a.db"));
        assert_eq!(path, dir.path().join("a.search.db"));
        let conn = open_search_writer(&path).unwrap();
        let f = NormalizedFields {
            event_time_ms: Some(1_732_358_465_777),
            event_type: Some("LOGIN_ERROR".into()),
            outcome: Outcome::Failure,
            actor_id: Some("u-1".into()),
            source_ip: Some("10.0.0.1".into()),
            ..NormalizedFields::default()
        };
        assert_eq!(indexed_until(&conn).unwrap(), 0);
        insert_event_fields(&conn, 3, "keycloak", &f).unwrap();
        // Idempotent: a second insert of the same seq keeps the first row.
        insert_event_fields(&conn, 3, "other", &NormalizedFields::default()).unwrap();
        assert_eq!(event_fields(&conn, 3).unwrap(), Some(("keycloak".to_string(), f)));
        assert_eq!(event_fields(&conn, 1).unwrap(), None);
        assert_eq!(indexed_until(&conn).unwrap(), 4);
        // Many rows at once (two full statements and a partial one), same result as one by one.
        let many: Vec<NormalizedFields> = (0..150)
            .map(|i| NormalizedFields { actor_id: Some(format!("a{i}")), ..NormalizedFields::default() })
            .collect();
        let rows: Vec<(u64, &str, &NormalizedFields)> =
            many.iter().enumerate().map(|(i, f)| (10 + i as u64, "json", f)).collect();
        insert_event_fields_many(&conn, &rows).unwrap();
        assert_eq!(indexed_until(&conn).unwrap(), 160);
        assert_eq!(event_fields(&conn, 159).unwrap(), Some(("json".to_string(), many[149].clone())));
        assert_eq!(event_fields(&conn, 3).unwrap().unwrap().0, "keycloak");
        let upd =
            conn.execute("UPDATE event_fields SET actor_id = 'x' WHERE seq = 3", []).unwrap_err().to_string();
        assert!(upd.contains("event fields are append-only"), "{upd}");
        // The key tables hold exactly the (key, seq) of the rows kept: not the refused second insert of seq 3,
        // and the rows of a re-sent batch (its already indexed prefix, then new rows) once each.
        let keys = |table: &str| -> Vec<(String, i64)> {
            let mut st = conn.prepare(&format!("SELECT * FROM {table} ORDER BY seq")).unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(keys("ip_index"), vec![("10.0.0.1".to_string(), 3)]);
        let extra = NormalizedFields { actor_id: Some("late".into()), ..NormalizedFields::default() };
        let mut resent = rows[140..].to_vec();
        resent.push((160, "json", &extra));
        insert_event_fields_many(&conn, &resent).unwrap();
        let actors = keys("actor_index");
        assert_eq!(actors.len(), 152, "u-1, a0..a149, late");
        assert_eq!(actors[0], ("u-1".to_string(), 3));
        assert_eq!(actors[151], ("late".to_string(), 160));
        // Rows are removed only through the guard the indexer opens: a plain DELETE or a scrub without it is
        // refused by the triggers.
        for sql in
            ["DELETE FROM event_fields WHERE seq = 3", "DELETE FROM actor_index", "DELETE FROM ip_index"]
        {
            let e = conn.execute(sql, []).unwrap_err().to_string();
            assert!(e.contains("search rows are removed only by the indexer"), "{sql}: {e}");
        }
        assert!(scrub_event_fields(&conn, 3).is_err());
        // Erasure scrubs the row's keys with its fields.
        set_search_removal_guard(&conn, true).unwrap();
        scrub_event_fields(&conn, 3).unwrap();
        set_search_removal_guard(&conn, false).unwrap();
        assert_eq!(
            event_fields(&conn, 3).unwrap(),
            Some(("keycloak".to_string(), NormalizedFields::default()))
        );
        assert_eq!(keys("ip_index"), vec![]);
        assert_eq!(keys("actor_index")[0], ("a0".to_string(), 10));
        drop(conn);
        // Reopening keeps the schema; a reader opens it like the ledger.
        open_search_writer(&path).unwrap();
        assert!(event_fields(&open_search_reader(&path).unwrap(), 3).unwrap().is_some());
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("other.db");
        Connection::open(&p).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
        let err = open_writer(&p, "o").unwrap_err().to_string();
        assert!(err.contains("no anchorlog schema_version"), "{err}");
    }
}
