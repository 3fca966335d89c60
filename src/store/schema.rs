//! The SQLite schema, its version, and the triggers that make stored data append-only.
//!
//! The triggers are defence in depth: the appliance never issues UPDATE or DELETE on sealed data, and the
//! database refuses them even if someone with file access tries through the sqlite3 shell. (Someone who can
//! drop the triggers can still edit the file; that is what the signed heads and `anchorlog verify` catch.)

/// Schema version this build writes. Readers accept every version from 1 up to this one (the verifier reads
/// old files); the writer migrates an older file forward at open, one [`MIGRATIONS`] step per version.
pub const SCHEMA_VERSION: i64 = 3;

/// Oldest schema version this build still reads (and migrates when it opens the file for writing).
pub const OLDEST_READABLE_SCHEMA_VERSION: i64 = 1;

/// The steps from schema version 1 up: `(version it produces, DDL)`, applied in order, each in the transaction
/// that records its version. A new database gets [`SCHEMA_V1`] and then every step, so a fresh file and a
/// migrated one are the same schema.
pub const MIGRATIONS: &[(i64, &str)] = &[(2, SCHEMA_V2), (3, SCHEMA_V3)];

/// Version 2 (issue 10, insider-proof erasures): an `erasures` row is accepted only in the transaction that
/// appends the appliance's erasure record naming it. The record must be the newest event, not yet covered by
/// any head (a record sealed earlier cannot be re-used), an `anchorlog.erasure` body that names exactly this
/// seq; and the erased event must not be one of the appliance's own records. SQLite has no transaction id, so
/// "written in the same transaction" is enforced as "the newest, still unsealed event": the appender inserts
/// both rows in one transaction, and nothing else can make that true for a record that already existed.
/// `CAST(body AS TEXT)`: bodies are BLOBs, which SQLite's JSON functions would read as JSONB.
pub const SCHEMA_V2: &str = r#"
DROP TRIGGER erasures_valid;
CREATE TRIGGER erasures_valid BEFORE INSERT ON erasures
WHEN NOT EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq AND body IS NOT NULL AND salt IS NOT NULL
                 AND producer <> 'anchorlog')
  OR NEW.erasure_seq IS NOT (SELECT MAX(seq) FROM events)
  OR NEW.erasure_seq < COALESCE((SELECT tree_size FROM heads ORDER BY height DESC LIMIT 1), 0)
  OR NOT EXISTS (SELECT 1 FROM events WHERE seq = NEW.erasure_seq AND NEW.erasure_seq > NEW.seq
                 AND producer = 'anchorlog' AND source = 'anchorlog' AND format = 'anchorlog'
                 AND json_valid(CAST(body AS TEXT))
                 AND json_extract(CAST(body AS TEXT), '$.type') = 'anchorlog.erasure'
                 AND json_extract(CAST(body AS TEXT), '$.erased_seq') = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'anchorlog: an erasure row is only written with its erasure record: the newest, unsealed anchorlog.erasure event naming this seq, for a present payload that is not an appliance record'); END;
"#;

/// Version 3 (issue 11, witnesses): the witnesses' cosignatures of stored heads, and each witness's cursor.
///
/// `cosignatures` is evidence, append-only like `timestamps`: one row per head and witness key, the exact
/// `cosignature/v1` line the witness returned (verified before it is stored), with its key name, key ID and
/// timestamp as index columns a verifier cross-checks against the line. `witness_state` is not evidence: it is
/// the cosigner's cursor (the tree size and height each witness last cosigned for this log, so the next
/// submission can prove consistency from there), updated in place; a wrong or missing row only costs one
/// `409` round trip, because the witness says which size it holds.
pub const SCHEMA_V3: &str = r#"
CREATE TABLE cosignatures (
    height       INTEGER NOT NULL REFERENCES heads (height),
    witness      TEXT NOT NULL,
    key_id       TEXT NOT NULL CHECK (length(key_id) = 8),
    line         TEXT NOT NULL,
    timestamp    INTEGER NOT NULL CHECK (timestamp > 0),
    stored_at_ms INTEGER NOT NULL,
    PRIMARY KEY (height, witness, key_id)
) WITHOUT ROWID;
CREATE TRIGGER cosignatures_no_update BEFORE UPDATE ON cosignatures
BEGIN SELECT RAISE(ABORT, 'anchorlog: cosignatures are append-only'); END;
CREATE TRIGGER cosignatures_no_delete BEFORE DELETE ON cosignatures
BEGIN SELECT RAISE(ABORT, 'anchorlog: cosignatures are append-only'); END;
CREATE TABLE witness_state (
    witness       TEXT PRIMARY KEY,
    tree_size     INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
"#;

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
-- RFC 3161 time-stamp tokens, at most one per head, added after the head is stored (back-filled when the
-- TSA was down). `response` is the whole DER TimeStampResp as the TSA sent it; `gen_time_ms`/`gen_time`
-- are its TSTInfo genTime (ms since the epoch, and the RFC 3339 text with the TSA's precision); `tsa_url`
-- names the TSA that answered.
CREATE TABLE timestamps (
    height         INTEGER PRIMARY KEY REFERENCES heads (height),
    response       BLOB NOT NULL,
    gen_time_ms    INTEGER NOT NULL,
    gen_time       TEXT NOT NULL,
    tsa_url        TEXT NOT NULL,
    stored_at_ms   INTEGER NOT NULL
);

CREATE TRIGGER events_dense_seq BEFORE INSERT ON events
WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq) + 1, 0) FROM events)
BEGIN SELECT RAISE(ABORT, 'anchorlog: event seq must be the next dense sequence number'); END;
-- The one update the database allows (GDPR art. 17): clearing body and salt of one event, once, with every
-- other column unchanged, and only when its erasure record exists (inserted first, in the same transaction).
-- Anything else — another column, a second erasure, an erasure without a record — is refused here.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
WHEN NOT (
    NEW.seq IS OLD.seq AND NEW.received_at_ns IS OLD.received_at_ns AND NEW.producer IS OLD.producer
    AND NEW.source IS OLD.source AND NEW.format IS OLD.format AND NEW.source_id IS OLD.source_id
    AND NEW.entry IS OLD.entry AND NEW.leaf_hash IS OLD.leaf_hash
    AND OLD.body IS NOT NULL AND OLD.salt IS NOT NULL AND NEW.body IS NULL AND NEW.salt IS NULL
    AND EXISTS (SELECT 1 FROM erasures WHERE erasures.seq = OLD.seq)
)
BEGIN SELECT RAISE(ABORT, 'anchorlog: events are append-only (only a recorded erasure may clear body and salt)'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'anchorlog: events are append-only'); END;

-- Perfect-subtree hashes of the Merkle tree above the leaves: node (level, idx), level >= 1, is the root of
-- leaves [idx << level, (idx + 1) << level). Level 0 is events.leaf_hash. The writer stores each node in the
-- transaction of the event that completes it, so roots and proofs cost O(log n) reads. The nodes are an
-- index, not signed truth: every proof built from them is checked by its reader against a signed root.
CREATE TABLE nodes (
    level INTEGER NOT NULL CHECK (level >= 1),
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
-- One row per erased event: who erased it, why, and the seq of the appliance's own event that logs it.
CREATE TABLE erasures (
    seq          INTEGER PRIMARY KEY,
    erasure_seq  INTEGER NOT NULL UNIQUE,
    erased_by    TEXT NOT NULL,
    reason       TEXT NOT NULL CHECK (length(reason) > 0),
    erased_at_ms INTEGER NOT NULL
);

CREATE TRIGGER nodes_no_update BEFORE UPDATE ON nodes
BEGIN SELECT RAISE(ABORT, 'anchorlog: tree nodes are append-only'); END;
CREATE TRIGGER nodes_no_delete BEFORE DELETE ON nodes
BEGIN SELECT RAISE(ABORT, 'anchorlog: tree nodes are append-only'); END;

-- An erasure record needs a payload that is still there and a later event of the appliance's own source that
-- logs the erasure.
CREATE TRIGGER erasures_valid BEFORE INSERT ON erasures
WHEN NOT EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq AND body IS NOT NULL AND salt IS NOT NULL)
  OR NOT EXISTS (SELECT 1 FROM events WHERE seq = NEW.erasure_seq AND NEW.erasure_seq > NEW.seq
                 AND producer = 'anchorlog' AND source = 'anchorlog' AND format = 'anchorlog')
BEGIN SELECT RAISE(ABORT, 'anchorlog: an erasure needs a present payload and a logged erasure event'); END;
CREATE TRIGGER erasures_no_update BEFORE UPDATE ON erasures
BEGIN SELECT RAISE(ABORT, 'anchorlog: erasure records are append-only'); END;
CREATE TRIGGER erasures_no_delete BEFORE DELETE ON erasures
BEGIN SELECT RAISE(ABORT, 'anchorlog: erasure records are append-only'); END;

CREATE TRIGGER heads_dense_height BEFORE INSERT ON heads
WHEN NEW.height IS NOT (SELECT COALESCE(MAX(height) + 1, 0) FROM heads)
BEGIN SELECT RAISE(ABORT, 'anchorlog: head height must be the next dense height'); END;
CREATE TRIGGER heads_no_update BEFORE UPDATE ON heads
BEGIN SELECT RAISE(ABORT, 'anchorlog: heads are append-only'); END;
CREATE TRIGGER heads_no_delete BEFORE DELETE ON heads
BEGIN SELECT RAISE(ABORT, 'anchorlog: heads are append-only'); END;

CREATE TRIGGER timestamps_no_update BEFORE UPDATE ON timestamps
BEGIN SELECT RAISE(ABORT, 'anchorlog: timestamps are append-only'); END;
CREATE TRIGGER timestamps_no_delete BEFORE DELETE ON timestamps
BEGIN SELECT RAISE(ABORT, 'anchorlog: timestamps are append-only'); END;

CREATE TRIGGER log_meta_no_update BEFORE UPDATE ON log_meta
BEGIN SELECT RAISE(ABORT, 'anchorlog: log metadata is append-only'); END;
CREATE TRIGGER log_meta_no_delete BEFORE DELETE ON log_meta
BEGIN SELECT RAISE(ABORT, 'anchorlog: log metadata is append-only'); END;
"#;

/// Schema version of the search database this build writes and understands. A search database of another
/// version is deleted and rebuilt from the ledger at start (it is derived data). 2: actor and IP moved from
/// indexes on `event_fields` to the sorted tables `actor_index` and `ip_index`; no CHECK on `outcome`.
/// 3: rows are deleted only through the `removal_guard` the indexer opens (erasure scrubs, repairs).
pub const SEARCH_SCHEMA_VERSION: i64 = 3;

/// DDL of the search database (`<database>.search.db`), kept by the indexer thread that trails the writer.
///
/// It is a separate file on purpose: SQLite has one write lock per file, and maintaining these indexes costs
/// more than the whole event insert (measured in docs/PERFORMANCE.md), so in the ledger file — in the writer's
/// transaction or in a follower's — they would cap ingest. In their own file they are written in parallel.
pub const SEARCH_SCHEMA: &str = r#"
CREATE TABLE schema_version (
    version       INTEGER PRIMARY KEY,
    applied_at_ms INTEGER NOT NULL
);
-- Normalized search fields of each event (one row per event, same seq). Not covered by any hash: the evidence
-- is the event's body; these are a convenience for search, re-derivable from the bodies.
-- `outcome` is 'success', 'failure' or 'unknown' (written by one function; a reader refuses anything else —
-- a CHECK constraint here cost 5 % of the indexer's CPU).
CREATE TABLE event_fields (
    seq           INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,
    event_time_ms INTEGER,
    event_type    TEXT,
    outcome       TEXT NOT NULL,
    actor_id      TEXT,
    actor_name    TEXT,
    target        TEXT,
    source_ip     TEXT,
    user_agent    TEXT,
    session_id    TEXT,
    client_id     TEXT,
    realm         TEXT
);
-- Search indexes (src/store/search.rs picks one per query): each equality filter of GET /v1/events has an index
-- on (value, seq), so a page is a range of one index read in seq order (keyset pagination), never a scan of
-- the table; since/until without an actor or IP use the time index in (time, seq) order.
-- Type, outcome, time, source and realm are indexes on the table: their values are few (or, for time, nearly
-- follow seq), so new entries land at the right end of a few key ranges, which is cheap.
-- Actor and IP have many values, and an index on the table receives each row's entry at a random place: one
-- B-tree descent and page touched per row, 2.3 µs of the indexer's 4.7 µs per row. They are separate tables
-- instead, which the indexer fills per batch in key order (consecutive entries share a leaf page) with
-- multi-row inserts (docs/PERFORMANCE.md, "Normalized search fields"). Same content as an index on
-- (actor_id, seq); the search joins it to event_fields by seq.
CREATE TABLE actor_index (
    actor_id TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (actor_id, seq)
) WITHOUT ROWID;
CREATE TABLE ip_index (
    source_ip TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (source_ip, seq)
) WITHOUT ROWID;
CREATE INDEX event_fields_type ON event_fields (event_type, seq) WHERE event_type IS NOT NULL;
CREATE INDEX event_fields_outcome ON event_fields (outcome, seq);
CREATE INDEX event_fields_time ON event_fields (event_time_ms, seq) WHERE event_time_ms IS NOT NULL;
CREATE INDEX event_fields_source ON event_fields (source, seq);
CREATE INDEX event_fields_realm ON event_fields (realm, seq) WHERE realm IS NOT NULL;
CREATE TRIGGER event_fields_no_update BEFORE UPDATE ON event_fields
BEGIN SELECT RAISE(ABORT, 'anchorlog: event fields are append-only'); END;
-- Deleting a row hides its event from search. Only the indexer removes rows — the fields of an erased payload
-- (personal data), stray key entries found at start — and it opens this guard for the length of that
-- transaction. Defence in depth like the ledger's triggers: the start-up check (src/ledger/indexer.rs) finds
-- and re-derives rows missing for any reason, dropped triggers included.
CREATE TABLE removal_guard (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    open INTEGER NOT NULL CHECK (open IN (0, 1))
);
INSERT INTO removal_guard (id, open) VALUES (1, 0);
CREATE TRIGGER event_fields_no_delete BEFORE DELETE ON event_fields
WHEN (SELECT open FROM removal_guard) IS NOT 1
BEGIN SELECT RAISE(ABORT, 'anchorlog: search rows are removed only by the indexer (erasure scrubs, repairs)'); END;
CREATE TRIGGER actor_index_no_delete BEFORE DELETE ON actor_index
WHEN (SELECT open FROM removal_guard) IS NOT 1
BEGIN SELECT RAISE(ABORT, 'anchorlog: search rows are removed only by the indexer (erasure scrubs, repairs)'); END;
CREATE TRIGGER ip_index_no_delete BEFORE DELETE ON ip_index
WHEN (SELECT open FROM removal_guard) IS NOT 1
BEGIN SELECT RAISE(ABORT, 'anchorlog: search rows are removed only by the indexer (erasure scrubs, repairs)'); END;
CREATE TRIGGER actor_index_no_update BEFORE UPDATE ON actor_index
BEGIN SELECT RAISE(ABORT, 'anchorlog: search key entries are append-only'); END;
CREATE TRIGGER ip_index_no_update BEFORE UPDATE ON ip_index
BEGIN SELECT RAISE(ABORT, 'anchorlog: search key entries are append-only'); END;
"#;
