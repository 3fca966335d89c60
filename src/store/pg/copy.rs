//! `anchorlog migrate`: copies a SQLite log into an empty PostgreSQL log, row for row and byte for byte, in one
//! transaction under the writer lease, then proves the copy with the verifier's walk (docs/HA.md, "Moving a log").
//!
//! The copy runs as the owner with the log tables' triggers disabled inside its transaction: the append-only and
//! dense-seq triggers judge one new row against the log's end, which a copy of a finished history (erasures made
//! long before the last event, heads over events already there) cannot satisfy row by row. What the triggers
//! would have guaranteed is proven afterwards instead, and more strongly: the whole copy is walked (every entry,
//! leaf, payload, erasure record, head signature, chain link and the stored tree) under the auditor's keys, and its
//! heads must equal the source's byte for byte. The triggers are enabled again before COMMIT, so nothing committed
//! ever runs without them; an error anywhere rolls the whole copy back.

use super::lease::{fence, LeaseOptions, WriterLease};
use super::{connect, read, schema, PgConnect, PgError};
use rusqlite::types::ValueRef;
use tokio_postgres::types::{ToSql, Type};

/// Rows sent per pipelined batch.
const COPY_BATCH: usize = 2000;

/// One table's copy: its columns, in order, with their PostgreSQL types.
struct TableCopy {
    name: &'static str,
    columns: &'static [(&'static str, Type)],
    /// Key order, so the copy is deterministic and follows the log's order.
    order_by: &'static str,
}

/// Every table of the log ([`schema::LOG_TABLES`]), in the order a copy fills them (foreign keys point backwards).
const TABLES: &[TableCopy] = &[
    TableCopy { name: "log_meta", columns: &[("key", Type::TEXT), ("value", Type::TEXT)], order_by: "key" },
    TableCopy {
        name: "events",
        columns: &[
            ("seq", Type::INT8),
            ("received_at_ns", Type::INT8),
            ("producer", Type::TEXT),
            ("source", Type::TEXT),
            ("format", Type::TEXT),
            ("source_id", Type::TEXT),
            ("entry", Type::BYTEA),
            ("leaf_hash", Type::BYTEA),
            ("salt", Type::BYTEA),
            ("body", Type::BYTEA),
        ],
        order_by: "seq",
    },
    TableCopy {
        name: "nodes",
        columns: &[("level", Type::INT4), ("idx", Type::INT8), ("hash", Type::BYTEA)],
        order_by: "level, idx",
    },
    TableCopy {
        name: "heads",
        columns: &[
            ("height", Type::INT8),
            ("tree_size", Type::INT8),
            ("root", Type::BYTEA),
            ("checkpoint", Type::TEXT),
            ("signature", Type::BYTEA),
            ("key_id", Type::TEXT),
            ("sealed_at_ms", Type::INT8),
        ],
        order_by: "height",
    },
    TableCopy {
        name: "timestamps",
        columns: &[
            ("height", Type::INT8),
            ("response", Type::BYTEA),
            ("gen_time_ms", Type::INT8),
            ("gen_time", Type::TEXT),
            ("tsa_url", Type::TEXT),
            ("stored_at_ms", Type::INT8),
        ],
        order_by: "height",
    },
    TableCopy {
        name: "erasures",
        columns: &[
            ("seq", Type::INT8),
            ("erasure_seq", Type::INT8),
            ("erased_by", Type::TEXT),
            ("reason", Type::TEXT),
            ("erased_at_ms", Type::INT8),
        ],
        order_by: "seq",
    },
    TableCopy {
        name: "cosignatures",
        columns: &[
            ("height", Type::INT8),
            ("witness", Type::TEXT),
            ("key_id", Type::TEXT),
            ("line", Type::TEXT),
            ("timestamp", Type::INT8),
            ("stored_at_ms", Type::INT8),
        ],
        order_by: "height, witness, key_id",
    },
    TableCopy {
        name: "witness_state",
        columns: &[
            ("witness", Type::TEXT),
            ("tree_size", Type::INT8),
            ("height", Type::INT8),
            ("updated_at_ms", Type::INT8),
        ],
        order_by: "witness",
    },
];

/// Why a copy failed; nothing of it was committed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the SQLite log failed.
    #[error("reading the SQLite log: {0}")]
    Source(#[from] rusqlite::Error),
    /// The PostgreSQL side failed.
    #[error(transparent)]
    Target(#[from] PgError),
    /// A value of the source does not fit its column (a corrupted or foreign SQLite file).
    #[error("SQLite table {table}, column {column}: {problem}")]
    Value {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The target already holds a log.
    #[error(
        "the PostgreSQL database already holds a log ({events} events, {heads} heads): a migration copies into an \
         empty one; create a new database (docs/HA.md) or verify the one there"
    )]
    TargetNotEmpty {
        /// Its events.
        events: u64,
        /// Its heads.
        heads: u64,
    },
    /// The source's origin is unknown (not an anchorlog database).
    #[error("the SQLite file records no origin: it is not an anchorlog log")]
    NoOrigin,
}

/// Rows copied, per table, in [`schema::LOG_TABLES`] order.
pub type CopyCounts = Vec<(&'static str, u64)>;

/// Copies the SQLite log `source` into the PostgreSQL database at `target` (reached as its owner role; the schema
/// is created when absent, and must hold no log), granting `app_role` its privileges when given. Takes the writer
/// lease for the copy, so no appliance node can write meanwhile. Returns the rows copied per table.
pub async fn copy_sqlite_log(
    source: &rusqlite::Connection,
    target: &PgConnect,
    app_role: Option<&str>,
) -> Result<CopyCounts, CopyError> {
    let origin: String = source
        .query_row("SELECT value FROM log_meta WHERE key = 'origin'", [], |r| r.get(0))
        .map_err(|_| CopyError::NoOrigin)?;
    let mut owner = connect(target).await?;
    schema::install(&mut owner, &origin).await?;
    if let Some(app) = app_role {
        schema::grant_app(&owner, app).await?;
    }
    let lease = WriterLease::acquire(target, "anchorlog migrate", LeaseOptions::default()).await?;
    let tx = owner.transaction().await.map_err(PgError::from)?;
    fence(&tx, lease.epoch()).await?;
    // Behind the fence: no node can have written since.
    let (events, heads) = (read::event_count(&tx).await?, read::last_head(&tx).await?);
    if events > 0 || heads.is_some() {
        return Err(CopyError::TargetNotEmpty { events, heads: heads.map_or(0, |h| h.height + 1) });
    }
    for table in schema::LOG_TABLES {
        // The owner's own statement, table names from our constant list.
        tx.batch_execute(&format!("ALTER TABLE {table} DISABLE TRIGGER USER"))
            .await
            .map_err(PgError::from)?;
    }
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push((table.name, copy_table(source, &tx, table).await?));
    }
    for table in schema::LOG_TABLES {
        tx.batch_execute(&format!("ALTER TABLE {table} ENABLE TRIGGER USER")).await.map_err(PgError::from)?;
    }
    tx.commit().await.map_err(PgError::from)?;
    lease.release().await?;
    Ok(counts)
}

/// One owned value of a row, bound to its column's type (a NULL too: the driver checks the Rust type of every
/// parameter against its column, NULLs included).
enum Value {
    Int8(Option<i64>),
    Int4(Option<i32>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl Value {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Int8(v) => v,
            Value::Int4(v) => v,
            Value::Text(v) => v,
            Value::Bytes(v) => v,
        }
    }
}

fn value_of(
    table: &'static str,
    column: &'static str,
    ty: &Type,
    v: ValueRef<'_>,
) -> Result<Value, CopyError> {
    let bad = |problem: String| CopyError::Value { table, column, problem };
    Ok(match (v, ty) {
        (ValueRef::Null, t) if *t == Type::INT8 => Value::Int8(None),
        (ValueRef::Null, t) if *t == Type::INT4 => Value::Int4(None),
        (ValueRef::Null, t) if *t == Type::TEXT => Value::Text(None),
        (ValueRef::Null, _) => Value::Bytes(None),
        (ValueRef::Integer(i), t) if *t == Type::INT8 => Value::Int8(Some(i)),
        (ValueRef::Integer(i), t) if *t == Type::INT4 => Value::Int4(Some(
            i32::try_from(i).map_err(|_| bad(format!("{i} does not fit a 32-bit integer")))?,
        )),
        (ValueRef::Text(t), ty) if *ty == Type::TEXT => {
            Value::Text(Some(String::from_utf8(t.to_vec()).map_err(|_| bad("the text is not UTF-8".into()))?))
        }
        (ValueRef::Blob(b), t) if *t == Type::BYTEA => Value::Bytes(Some(b.to_vec())),
        (other, ty) => return Err(bad(format!("a {:?} where a {ty} belongs", other.data_type()))),
    })
}

/// Copies one table in key order, [`COPY_BATCH`] rows pipelined at a time; returns the rows copied.
async fn copy_table(
    source: &rusqlite::Connection,
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableCopy,
) -> Result<u64, CopyError> {
    let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
    let types: Vec<Type> = table.columns.iter().map(|(_, t)| t.clone()).collect();
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    // `origin` is written by the schema install; every other row is the source's.
    let conflict = if table.name == "log_meta" { " ON CONFLICT (key) DO NOTHING" } else { "" };
    let insert = tx
        .prepare_typed(
            &format!(
                "INSERT INTO {} ({}) VALUES ({}){conflict}",
                table.name,
                names.join(", "),
                placeholders.join(", ")
            ),
            &types,
        )
        .await
        .map_err(PgError::from)?;
    let mut stmt = source.prepare(&format!(
        "SELECT {} FROM {} ORDER BY {}",
        names.join(", "),
        table.name,
        table.order_by
    ))?;
    let mut rows = stmt.query([])?;
    let mut batch: Vec<Vec<Value>> = Vec::with_capacity(COPY_BATCH);
    let mut copied = 0u64;
    loop {
        let row = rows.next()?;
        if let Some(row) = row {
            let mut values = Vec::with_capacity(names.len());
            for (i, (column, ty)) in table.columns.iter().enumerate() {
                values.push(value_of(table.name, column, ty, row.get_ref(i)?)?);
            }
            batch.push(values);
        }
        if batch.len() == COPY_BATCH || (row.is_none() && !batch.is_empty()) {
            // One round trip for the batch: the driver pipelines the statements on the session.
            let sent = batch.iter().map(|values| {
                let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(Value::sql).collect();
                let insert = &insert;
                async move { tx.execute(insert, &params).await }
            });
            futures_util::future::try_join_all(sent).await.map_err(PgError::from)?;
            copied += batch.len() as u64;
            batch.clear();
        }
        if row.is_none() {
            break;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy covers exactly the log's tables, in the schema's order (a table added to the schema must be added
    /// here, or a migration would silently leave it behind).
    #[test]
    fn the_copy_covers_every_log_table_in_order() {
        let copied: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        assert_eq!(copied, schema::LOG_TABLES);
    }
}
