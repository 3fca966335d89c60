//! The SQLite schema, its version, and the triggers that make stored data append-only.
//!
//! The triggers are defence in depth: the appliance never issues UPDATE or DELETE on sealed data, and the
//! database refuses them even if someone with file access tries through the sqlite3 shell. (Someone who can
//! drop the triggers can still edit the file; that is what the signed heads and `anchorlog verify` catch.)

/// Schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// DDL of schema version 1, applied in one transaction on a new database.
pub const SCHEMA_V1: &str = r#"
CREATE TABLE schema_version (
    version       INTEGER PRIMARY KEY,
    applied_at_ms INTEGER NOT NULL
);
CREATE TABLE log_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- One row per event; rowid = seq, dense from 0. `entry` is the canonical record the leaf commits to;
-- `salt` and `body` are the erasable payload.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY,
    received_at_ns INTEGER NOT NULL,
    producer       TEXT NOT NULL,
    source         TEXT NOT NULL,
    format         TEXT NOT NULL,
    source_id      TEXT,
    entry          BLOB NOT NULL,
    leaf_hash      BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    salt           BLOB,
    body           BLOB
);
-- The de-duplication key: a producer's event id is stored once per (producer, source).
CREATE UNIQUE INDEX events_source_id ON events (producer, source, source_id) WHERE source_id IS NOT NULL;
-- Signed block heads; rowid = height, dense from 0.
CREATE TABLE heads (
    height       INTEGER PRIMARY KEY,
    tree_size    INTEGER NOT NULL,
    root         BLOB NOT NULL CHECK (length(root) = 32),
    checkpoint   TEXT NOT NULL,
    signature    BLOB NOT NULL,
    key_id       TEXT NOT NULL,
    sealed_at_ms INTEGER NOT NULL
);

CREATE TRIGGER events_dense_seq BEFORE INSERT ON events
WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq) + 1, 0) FROM events)
BEGIN SELECT RAISE(ABORT, 'anchorlog: event seq must be the next dense sequence number'); END;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'anchorlog: events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'anchorlog: events are append-only'); END;

CREATE TRIGGER heads_dense_height BEFORE INSERT ON heads
WHEN NEW.height IS NOT (SELECT COALESCE(MAX(height) + 1, 0) FROM heads)
BEGIN SELECT RAISE(ABORT, 'anchorlog: head height must be the next dense height'); END;
CREATE TRIGGER heads_no_update BEFORE UPDATE ON heads
BEGIN SELECT RAISE(ABORT, 'anchorlog: heads are append-only'); END;
CREATE TRIGGER heads_no_delete BEFORE DELETE ON heads
BEGIN SELECT RAISE(ABORT, 'anchorlog: heads are append-only'); END;

CREATE TRIGGER log_meta_no_update BEFORE UPDATE ON log_meta
BEGIN SELECT RAISE(ABORT, 'anchorlog: log metadata is append-only'); END;
CREATE TRIGGER log_meta_no_delete BEFORE DELETE ON log_meta
BEGIN SELECT RAISE(ABORT, 'anchorlog: log metadata is append-only'); END;
"#;

/// Schema version of the search database this build writes and understands.
pub const SEARCH_SCHEMA_VERSION: i64 = 1;

/// DDL of the search database (`<database>.search.db`), kept by the indexer thread that trails the writer.
///
/// It is a separate file on purpose: SQLite has one write lock per file, and maintaining these indexes costs
/// more than the whole event insert (measured in docs/PERFORMANCE.md), so in the ledger file — in the writer's
/// transaction or in a follower's — they would cap ingest. In their own file they are written in parallel.
pub const SEARCH_SCHEMA_V1: &str = r#"
CREATE TABLE schema_version (
    version       INTEGER PRIMARY KEY,
    applied_at_ms INTEGER NOT NULL
);
-- Normalized search fields of each event (one row per event, same seq). Not covered by any hash: the evidence
-- is the event's body; these are a convenience for search, re-derivable from the bodies.
-- `outcome` is 'success', 'failure' or 'unknown'.
CREATE TABLE event_fields (
    seq           INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,
    event_time_ms INTEGER,
    event_type    TEXT,
    outcome       TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'unknown')),
    actor_id      TEXT,
    actor_name    TEXT,
    target        TEXT,
    source_ip     TEXT,
    user_agent    TEXT,
    session_id    TEXT,
    client_id     TEXT,
    realm         TEXT
);
-- Search indexes: every query filters on one of these and pages by seq (keyset pagination). Each index costs
-- indexer CPU on every event (docs/PERFORMANCE.md), so outcome is indexed for failures only: they are the rare
-- ones worth finding fast, while successes are most of the log and a scan by seq serves them as well.
CREATE INDEX event_fields_actor ON event_fields (actor_id, seq) WHERE actor_id IS NOT NULL;
CREATE INDEX event_fields_type ON event_fields (event_type, seq) WHERE event_type IS NOT NULL;
CREATE INDEX event_fields_failures ON event_fields (seq) WHERE outcome = 'failure';
CREATE INDEX event_fields_time ON event_fields (event_time_ms) WHERE event_time_ms IS NOT NULL;
CREATE INDEX event_fields_source ON event_fields (source, seq);
CREATE TRIGGER event_fields_no_update BEFORE UPDATE ON event_fields
BEGIN SELECT RAISE(ABORT, 'anchorlog: event fields are append-only'); END;
"#;
