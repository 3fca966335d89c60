//! The PostgreSQL schema: the SQLite log tables (src/store/schema.rs, version 3) with PostgreSQL types, the same
//! append-only triggers with the same messages, the writer lease's epoch row, and the application role's grants.
//!
//! Two roles (docs/HA.md): the **owner** creates and migrates the schema ([`install`]) and owns every table and
//! trigger; the **application role** the appliance runs as gets only what the appliance does ([`grant_app`]):
//! SELECT and INSERT on the log tables, no DELETE and no TRUNCATE anywhere, and exactly two UPDATEs:
//! - `events (body, salt)`, column-level: erasure (GDPR art. 17) clears the payload of one event. The trigger
//!   `events_no_update` then allows only that, once, with its erasure record already inserted (the SQLite rule);
//! - `writer_lease (epoch, holder, acquired_at_ms)`: taking the lease bumps the epoch (trigger: only by one), and
//!   `SELECT … FOR SHARE` on the row (the fence) needs an UPDATE privilege on it;
//! - and `witness_state`, the cosigner's cursor, which is not evidence and is updated in place (as in SQLite).
//!
//! The triggers hold for the owner too; a superuser or the owner can still disable them (`ALTER TABLE … DISABLE
//! TRIGGER`, `session_replication_role`), which is what the signed heads and `anchorlog verify` catch, as with
//! someone who edits the SQLite file.

use super::{now_ms, PgError};
use tokio_postgres::Client;

/// Version of the PostgreSQL schema this build writes. Its own sequence: version 1 holds the tables of SQLite
/// schema version 3 (erasure rule of version 2 included) plus `writer_lease`; version 2 checks the dense seq once
/// per statement instead of once per row ([`PG_MIGRATIONS`]).
pub const PG_SCHEMA_VERSION: i64 = 2;

/// Oldest PostgreSQL schema version this build reads.
pub const PG_OLDEST_READABLE_SCHEMA_VERSION: i64 = 1;

/// Migration steps after version 1: `(version it produces, DDL)`, each applied in the transaction that records its
/// version.
pub const PG_MIGRATIONS: &[(i64, &str)] = &[(2, DENSE_SEQ_PER_STATEMENT)];

/// Version 2: the dense-seq rule checked once per INSERT statement, over its new rows (a transition table), instead
/// of a PL/pgSQL subquery per row, which cost about a third of batched ingest (docs/PERFORMANCE.md). Same rule, same
/// message: the rows one statement inserts are exactly the seqs from the log's end on, without a gap. A version-1
/// database keeps its per-row trigger until the owner installs again (`schema::install`, run by `migrate`); both
/// refuse the same inserts.
const DENSE_SEQ_PER_STATEMENT: &str = r#"
DROP TRIGGER events_dense_seq ON events;
DROP FUNCTION anchorlog_events_dense_seq();
CREATE FUNCTION anchorlog_events_dense_seq() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo BIGINT;
    hi BIGINT;
    n BIGINT;
BEGIN
    SELECT min(seq), max(seq), count(*) INTO lo, hi, n FROM anchorlog_new_events;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    -- seq is the primary key: n distinct values from lo to hi are dense exactly when hi - lo + 1 = n; the block
    -- must start right after every older row and have nothing after it.
    IF hi - lo + 1 <> n
        OR lo <> (SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE seq < lo)
        OR EXISTS (SELECT 1 FROM events WHERE seq > hi) THEN
        RAISE EXCEPTION 'anchorlog: event seq must be the next dense sequence number';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER events_dense_seq AFTER INSERT ON events REFERENCING NEW TABLE AS anchorlog_new_events
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_events_dense_seq();
"#;

/// Key of the transaction-level advisory lock [`install`] holds, so that two nodes starting at once do not both
/// create the schema.
const INSTALL_LOCK: i64 = 0x616e_6368_6f72_0001;

/// DDL of PostgreSQL schema version 1, applied in one transaction by the owner.
pub const PG_SCHEMA_V1: &str = r#"
CREATE TABLE schema_version (
    version       BIGINT PRIMARY KEY,
    applied_at_ms BIGINT NOT NULL
);
CREATE TABLE log_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- One row per event, seq dense from 0. `entry` is the canonical record the leaf commits to; `salt` and `body`
-- are the erasable payload.
CREATE TABLE events (
    seq            BIGINT PRIMARY KEY CHECK (seq >= 0),
    received_at_ns BIGINT NOT NULL,
    producer       TEXT NOT NULL,
    source         TEXT NOT NULL,
    format         TEXT NOT NULL,
    source_id      TEXT,
    entry          BYTEA NOT NULL,
    leaf_hash      BYTEA NOT NULL CHECK (length(leaf_hash) = 32),
    salt           BYTEA,
    body           BYTEA
);
CREATE UNIQUE INDEX events_source_id ON events (producer, source, source_id) WHERE source_id IS NOT NULL;
CREATE TABLE heads (
    height       BIGINT PRIMARY KEY CHECK (height >= 0),
    tree_size    BIGINT NOT NULL,
    root         BYTEA NOT NULL CHECK (length(root) = 32),
    checkpoint   TEXT NOT NULL,
    signature    BYTEA NOT NULL,
    key_id       TEXT NOT NULL,
    sealed_at_ms BIGINT NOT NULL
);
CREATE TABLE timestamps (
    height       BIGINT PRIMARY KEY REFERENCES heads (height),
    response     BYTEA NOT NULL,
    gen_time_ms  BIGINT NOT NULL,
    gen_time     TEXT NOT NULL,
    tsa_url      TEXT NOT NULL,
    stored_at_ms BIGINT NOT NULL
);
CREATE TABLE nodes (
    level INTEGER NOT NULL CHECK (level >= 1),
    idx   BIGINT NOT NULL,
    hash  BYTEA NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);
CREATE TABLE erasures (
    seq          BIGINT PRIMARY KEY,
    erasure_seq  BIGINT NOT NULL UNIQUE,
    erased_by    TEXT NOT NULL,
    reason       TEXT NOT NULL CHECK (length(reason) > 0),
    erased_at_ms BIGINT NOT NULL
);
CREATE TABLE cosignatures (
    height       BIGINT NOT NULL REFERENCES heads (height),
    witness      TEXT NOT NULL,
    key_id       TEXT NOT NULL CHECK (length(key_id) = 8),
    line         TEXT NOT NULL,
    timestamp    BIGINT NOT NULL CHECK (timestamp > 0),
    stored_at_ms BIGINT NOT NULL,
    PRIMARY KEY (height, witness, key_id)
);
CREATE TABLE witness_state (
    witness       TEXT PRIMARY KEY,
    tree_size     BIGINT NOT NULL,
    height        BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
-- The writer lease's fence (src/store/pg/lease.rs): one row; every write transaction reads it FOR SHARE and
-- commits only if the epoch is still its own.
CREATE TABLE writer_lease (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    epoch          BIGINT NOT NULL CHECK (epoch >= 0),
    holder         TEXT,
    acquired_at_ms BIGINT
);
INSERT INTO writer_lease (id, epoch) VALUES (1, 0);

-- Refuses the statement with the message given as the trigger's argument.
CREATE FUNCTION anchorlog_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = TG_ARGV[0];
END $$;

CREATE FUNCTION anchorlog_events_dense_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq IS DISTINCT FROM (SELECT COALESCE(MAX(seq) + 1, 0) FROM events) THEN
        RAISE EXCEPTION 'anchorlog: event seq must be the next dense sequence number';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER events_dense_seq BEFORE INSERT ON events
FOR EACH ROW EXECUTE FUNCTION anchorlog_events_dense_seq();

-- The one update allowed (GDPR art. 17): clearing body and salt of one event, once, every other column unchanged,
-- and only when its erasure record exists (inserted first, in the same transaction).
CREATE FUNCTION anchorlog_events_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (
        NEW.seq IS NOT DISTINCT FROM OLD.seq AND NEW.received_at_ns IS NOT DISTINCT FROM OLD.received_at_ns
        AND NEW.producer IS NOT DISTINCT FROM OLD.producer AND NEW.source IS NOT DISTINCT FROM OLD.source
        AND NEW.format IS NOT DISTINCT FROM OLD.format AND NEW.source_id IS NOT DISTINCT FROM OLD.source_id
        AND NEW.entry IS NOT DISTINCT FROM OLD.entry AND NEW.leaf_hash IS NOT DISTINCT FROM OLD.leaf_hash
        AND OLD.body IS NOT NULL AND OLD.salt IS NOT NULL AND NEW.body IS NULL AND NEW.salt IS NULL
        AND EXISTS (SELECT 1 FROM erasures WHERE erasures.seq = OLD.seq)
    ) THEN
        RAISE EXCEPTION 'anchorlog: events are append-only (only a recorded erasure may clear body and salt)';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
FOR EACH ROW EXECUTE FUNCTION anchorlog_events_no_update();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: events are append-only');
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: events are append-only');

-- Whether an event body is an `anchorlog.erasure` record naming `erased` (false for anything unparsable).
CREATE FUNCTION anchorlog_erasure_names(body BYTEA, erased BIGINT) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    doc JSONB;
BEGIN
    IF body IS NULL THEN
        RETURN FALSE;
    END IF;
    BEGIN
        doc := convert_from(body, 'UTF8')::JSONB;
    EXCEPTION WHEN OTHERS THEN
        RETURN FALSE;
    END;
    RETURN jsonb_typeof(doc) = 'object' AND doc->>'type' = 'anchorlog.erasure'
        AND jsonb_typeof(doc->'erased_seq') = 'number' AND (doc->>'erased_seq')::NUMERIC = erased;
END $$;

-- SQLite schema version 2's rule (src/store/schema.rs, SCHEMA_V2), the same here: an erasure row is accepted
-- only with its erasure record, the newest event, not yet covered by any head, an `anchorlog.erasure` body naming
-- exactly this seq, for a present payload that is not one of the appliance's own records.
CREATE FUNCTION anchorlog_erasures_valid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq AND body IS NOT NULL AND salt IS NOT NULL
                   AND producer <> 'anchorlog')
       OR NEW.erasure_seq IS DISTINCT FROM (SELECT MAX(seq) FROM events)
       OR NEW.erasure_seq < COALESCE((SELECT tree_size FROM heads ORDER BY height DESC LIMIT 1), 0)
       OR NOT EXISTS (SELECT 1 FROM events WHERE seq = NEW.erasure_seq AND NEW.erasure_seq > NEW.seq
                      AND producer = 'anchorlog' AND source = 'anchorlog' AND format = 'anchorlog'
                      AND anchorlog_erasure_names(body, NEW.seq))
    THEN
        RAISE EXCEPTION 'anchorlog: an erasure row is only written with its erasure record: the newest, unsealed anchorlog.erasure event naming this seq, for a present payload that is not an appliance record';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER erasures_valid BEFORE INSERT ON erasures
FOR EACH ROW EXECUTE FUNCTION anchorlog_erasures_valid();
CREATE TRIGGER erasures_no_update BEFORE UPDATE ON erasures
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: erasure records are append-only');
CREATE TRIGGER erasures_no_delete BEFORE DELETE ON erasures
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: erasure records are append-only');
CREATE TRIGGER erasures_no_truncate BEFORE TRUNCATE ON erasures
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: erasure records are append-only');

CREATE TRIGGER nodes_no_update BEFORE UPDATE ON nodes
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: tree nodes are append-only');
CREATE TRIGGER nodes_no_delete BEFORE DELETE ON nodes
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: tree nodes are append-only');
CREATE TRIGGER nodes_no_truncate BEFORE TRUNCATE ON nodes
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: tree nodes are append-only');

CREATE FUNCTION anchorlog_heads_dense_height() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.height IS DISTINCT FROM (SELECT COALESCE(MAX(height) + 1, 0) FROM heads) THEN
        RAISE EXCEPTION 'anchorlog: head height must be the next dense height';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER heads_dense_height BEFORE INSERT ON heads
FOR EACH ROW EXECUTE FUNCTION anchorlog_heads_dense_height();
CREATE TRIGGER heads_no_update BEFORE UPDATE ON heads
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: heads are append-only');
CREATE TRIGGER heads_no_delete BEFORE DELETE ON heads
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: heads are append-only');
CREATE TRIGGER heads_no_truncate BEFORE TRUNCATE ON heads
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: heads are append-only');

CREATE TRIGGER timestamps_no_update BEFORE UPDATE ON timestamps
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: timestamps are append-only');
CREATE TRIGGER timestamps_no_delete BEFORE DELETE ON timestamps
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: timestamps are append-only');
CREATE TRIGGER timestamps_no_truncate BEFORE TRUNCATE ON timestamps
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: timestamps are append-only');

CREATE TRIGGER cosignatures_no_update BEFORE UPDATE ON cosignatures
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: cosignatures are append-only');
CREATE TRIGGER cosignatures_no_delete BEFORE DELETE ON cosignatures
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: cosignatures are append-only');
CREATE TRIGGER cosignatures_no_truncate BEFORE TRUNCATE ON cosignatures
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: cosignatures are append-only');

CREATE TRIGGER log_meta_no_update BEFORE UPDATE ON log_meta
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: log metadata is append-only');
CREATE TRIGGER log_meta_no_delete BEFORE DELETE ON log_meta
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: log metadata is append-only');
CREATE TRIGGER log_meta_no_truncate BEFORE TRUNCATE ON log_meta
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: log metadata is append-only');

-- The epoch only moves forward, by one per acquisition; the row is never removed.
CREATE FUNCTION anchorlog_writer_lease_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.epoch IS DISTINCT FROM OLD.epoch + 1 THEN
        RAISE EXCEPTION 'anchorlog: the writer lease epoch only moves forward by one';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER writer_lease_forward BEFORE UPDATE ON writer_lease
FOR EACH ROW EXECUTE FUNCTION anchorlog_writer_lease_forward();
CREATE TRIGGER writer_lease_no_delete BEFORE DELETE ON writer_lease
FOR EACH ROW EXECUTE FUNCTION anchorlog_refuse('anchorlog: the writer lease row is never removed');
CREATE TRIGGER writer_lease_no_truncate BEFORE TRUNCATE ON writer_lease
FOR EACH STATEMENT EXECUTE FUNCTION anchorlog_refuse('anchorlog: the writer lease row is never removed');

-- Grants the application role (a parameter, quoted with %I) what the appliance needs and nothing else: see
-- src/store/pg/schema.rs. Run by the owner; nobody else may execute it.
CREATE FUNCTION anchorlog_grant_app(app TEXT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), app);
    EXECUTE format('GRANT SELECT ON schema_version, writer_lease TO %I', app);
    EXECUTE format('GRANT SELECT, INSERT ON log_meta, events, heads, timestamps, nodes, erasures, cosignatures TO %I', app);
    EXECUTE format('GRANT UPDATE (body, salt) ON events TO %I', app);
    EXECUTE format('GRANT UPDATE (epoch, holder, acquired_at_ms) ON writer_lease TO %I', app);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON witness_state TO %I', app);
END $$;
REVOKE EXECUTE ON FUNCTION anchorlog_grant_app(TEXT) FROM PUBLIC;
"#;

/// The tables of the log, in the order a copy would fill them.
pub const LOG_TABLES: &[&str] =
    &["log_meta", "events", "nodes", "heads", "timestamps", "erasures", "cosignatures", "witness_state"];

/// Creates the schema on an empty database (as the owner: the session's role owns everything it creates) or
/// checks and migrates an existing one, and checks the log's origin. Serialised by an advisory lock, so two
/// nodes starting at once create it once. Returns the schema version found (after migration).
pub async fn install(owner: &mut Client, origin: &str) -> Result<i64, PgError> {
    let tx = owner.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK]).await?;
    let present: bool =
        tx.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[]).await?.try_get(0)?;
    if !present {
        let tables: i64 = tx
            .query_one("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()", &[])
            .await?
            .try_get(0)?;
        if tables > 0 {
            return Err(PgError::Incompatible {
                problem:
                    "this schema holds tables but no anchorlog schema_version; refusing to touch it — use a \
                          new database"
                        .into(),
            });
        }
        tx.batch_execute(PG_SCHEMA_V1).await?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)",
            &[&1i64, &now_ms()],
        )
        .await?;
        tx.execute("INSERT INTO log_meta (key, value) VALUES ('origin', $1)", &[&origin]).await?;
    }
    let found = check_version(&tx).await?;
    let mut version = found;
    for (v, ddl) in PG_MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(ddl).await?;
        tx.execute("INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)", &[v, &now_ms()])
            .await?;
        version = *v;
    }
    check_origin(&tx, origin).await?;
    tx.commit().await?;
    Ok(version)
}

/// Grants the application role `app` its privileges (see the module doc). Run by the owner after [`install`];
/// idempotent. The role name is a bound parameter, quoted by the server (`format('%I')`).
pub async fn grant_app(owner: &Client, app: &str) -> Result<(), PgError> {
    owner.execute("SELECT anchorlog_grant_app($1)", &[&app]).await?;
    Ok(())
}

/// Checks, on any session (the application role's), that the database holds an anchorlog log of a version this
/// build reads and of this origin; returns the version.
pub async fn check(client: &impl tokio_postgres::GenericClient, origin: &str) -> Result<i64, PgError> {
    let present: bool =
        client.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[]).await?.try_get(0)?;
    if !present {
        return Err(PgError::Incompatible {
            problem: "no anchorlog schema in this database; the owner role creates it first (docs/HA.md)"
                .into(),
        });
    }
    let version = check_version(client).await?;
    check_origin(client, origin).await?;
    Ok(version)
}

async fn check_version(client: &impl tokio_postgres::GenericClient) -> Result<i64, PgError> {
    let v: Option<i64> =
        client.query_one("SELECT max(version) FROM schema_version", &[]).await?.try_get(0)?;
    match v {
        Some(v) if (PG_OLDEST_READABLE_SCHEMA_VERSION..=PG_SCHEMA_VERSION).contains(&v) => Ok(v),
        Some(v) if v > PG_SCHEMA_VERSION => Err(PgError::Incompatible {
            problem: format!(
                "schema version {v} was written by a newer anchorlog (this build knows {PG_SCHEMA_VERSION}); upgrade"
            ),
        }),
        other => Err(PgError::Incompatible {
            problem: format!("unknown schema version {other:?} (this build knows {PG_SCHEMA_VERSION})"),
        }),
    }
}

async fn check_origin(client: &impl tokio_postgres::GenericClient, origin: &str) -> Result<(), PgError> {
    let stored = super::read::stored_origin(client).await?;
    if stored.as_deref() != Some(origin) {
        return Err(PgError::Incompatible {
            problem: format!(
                "the log in this database has origin {:?} but the configuration says {origin:?}; an origin never \
                 changes for a log",
                stored.unwrap_or_default()
            ),
        });
    }
    Ok(())
}
