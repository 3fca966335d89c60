//! Witness cosignatures of stored heads (schema version 3) and the cosigner's per-witness cursor.
//!
//! A cosignature row is evidence: the exact `cosignature/v1` line a witness returned for one head, verified
//! before it was stored, append-only (triggers). Its `witness`, `key_id` and `timestamp` columns index the line
//! and a verifier checks them against it. The cursor (`witness_state`) is not evidence, only where the cosigner
//! continues from. Files of schema versions 1 and 2 have neither table: readers see no cosignatures there.

use super::{u64_of, StoreError};
use anchorlog_core::note::NoteSignature;
use rusqlite::{params, Connection, OptionalExtension};

/// One stored cosignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCosignature {
    /// The cosigned head.
    pub height: u64,
    /// The witness's key name (as on the line).
    pub witness: String,
    /// The witness's key ID (as on the line).
    pub key_id: u32,
    /// The signature line `— <name> <base64>` as the witness returned it, without its newline.
    pub line: String,
    /// The cosignature's timestamp, seconds since the epoch (as in the line).
    pub timestamp: u64,
    /// When it was stored, ms since the epoch.
    pub stored_at_ms: i64,
}

impl StoredCosignature {
    /// The line parsed as a note signature.
    pub fn signature(&self) -> Result<NoteSignature, anchorlog_core::note::NoteError> {
        NoteSignature::parse_line(&self.line)
    }
}

/// Where the cosigner continues with one witness: the tree size (and the height of our head of that size) the
/// witness last cosigned for this log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessCursor {
    /// The witness's vkey (its identity: name, key ID and key).
    pub witness: String,
    /// The tree size it last cosigned.
    pub tree_size: u64,
    /// The height of that head.
    pub height: u64,
}

/// Whether the database has the cosignature tables (schema version 3 or later).
pub fn present(conn: &Connection) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'cosignatures'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Stores a verified cosignature. A second cosignature of the same head by the same key (a resubmission the
/// witness cosigned again) is ignored: the first one stays.
pub fn insert(conn: &Connection, c: &StoredCosignature) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO cosignatures (height, witness, key_id, line, timestamp, stored_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        c.height as i64,
        c.witness,
        format!("{:08x}", c.key_id),
        c.line,
        i64::try_from(c.timestamp).unwrap_or(i64::MAX),
        c.stored_at_ms
    ])?;
    Ok(())
}

/// Sets a witness's cursor (an update in place: the cursor is not evidence).
pub fn set_cursor(conn: &Connection, c: &WitnessCursor) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO witness_state (witness, tree_size, height, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (witness) DO UPDATE SET tree_size = excluded.tree_size, height = excluded.height,
         updated_at_ms = excluded.updated_at_ms",
    )?
    .execute(params![c.witness, c.tree_size as i64, c.height as i64, super::now_ms()])?;
    Ok(())
}

/// A witness's cursor, if the cosigner stored one.
pub fn cursor(conn: &Connection, witness: &str) -> Result<Option<WitnessCursor>, StoreError> {
    if !present(conn)? {
        return Ok(None);
    }
    let row: Option<(i64, i64)> = conn
        .query_row("SELECT tree_size, height FROM witness_state WHERE witness = ?1", params![witness], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    row.map(|(size, height)| {
        Ok(WitnessCursor {
            witness: witness.to_owned(),
            tree_size: u64_of(size, "witness_state", 0, "tree_size")?,
            height: u64_of(height, "witness_state", 0, "height")?,
        })
    })
    .transpose()
}

fn from_row(r: &rusqlite::Row<'_>) -> Result<StoredCosignature, StoreError> {
    let height = u64_of(r.get(0)?, "cosignatures", 0, "height")?;
    let key_id: String = r.get(2)?;
    let key_id = u32::from_str_radix(&key_id, 16).map_err(|_| StoreError::Corrupt {
        table: "cosignatures",
        key: height,
        problem: format!("key_id {key_id:?} is not 8 hex digits"),
    })?;
    Ok(StoredCosignature {
        height,
        witness: r.get(1)?,
        key_id,
        line: r.get(3)?,
        timestamp: u64_of(r.get(4)?, "cosignatures", height, "timestamp")?,
        stored_at_ms: r.get(5)?,
    })
}

const COLUMNS: &str = "height, witness, key_id, line, timestamp, stored_at_ms";

/// The cosignatures of one head, in the order they were stored (empty on a file without the table).
pub fn of_head(conn: &Connection, height: u64) -> Result<Vec<StoredCosignature>, StoreError> {
    if !present(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM cosignatures WHERE height = ?1 ORDER BY stored_at_ms, witness, key_id"
    ))?;
    let mut rows = stmt.query(params![height as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(from_row(r)?);
    }
    Ok(out)
}

/// Visits every stored cosignature in height order (nothing on a file without the table).
pub fn for_each(
    conn: &Connection,
    mut f: impl FnMut(StoredCosignature) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    if !present(conn)? {
        return Ok(());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM cosignatures ORDER BY height, stored_at_ms, witness, key_id"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        if !f(from_row(r)?)? {
            break;
        }
    }
    Ok(())
}

/// The greatest height the witness key (`witness`, `key_id`) has a stored cosignature of.
pub fn last_cosigned_height(
    conn: &Connection,
    witness: &str,
    key_id: u32,
) -> Result<Option<u64>, StoreError> {
    if !present(conn)? {
        return Ok(None);
    }
    let h: Option<i64> = conn.query_row(
        "SELECT max(height) FROM cosignatures WHERE witness = ?1 AND key_id = ?2",
        params![witness, format!("{key_id:08x}")],
        |r| r.get(0),
    )?;
    h.map(|h| u64_of(h, "cosignatures", 0, "height")).transpose()
}

/// A head's seal time and the witness keys that cosigned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadCosigners {
    /// The head.
    pub height: u64,
    /// Its seal time, ms since the epoch.
    pub sealed_at_ms: i64,
    /// `(key name, key ID)` of each stored cosignature.
    pub cosigners: Vec<(String, u32)>,
}

/// Heads with `height >= from`, each with its seal time and the witness keys that cosigned it.
pub fn heads_with_cosigners(conn: &Connection, from: u64) -> Result<Vec<HeadCosigners>, StoreError> {
    let with_table = present(conn)?;
    let sql = if with_table {
        "SELECT h.height, h.sealed_at_ms, c.witness, c.key_id FROM heads h
         LEFT JOIN cosignatures c ON c.height = h.height WHERE h.height >= ?1
         ORDER BY h.height, c.witness, c.key_id"
    } else {
        "SELECT height, sealed_at_ms, NULL, NULL FROM heads WHERE height >= ?1 ORDER BY height"
    };
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(params![from.min(i64::MAX as u64) as i64])?;
    let mut out: Vec<HeadCosigners> = Vec::new();
    while let Some(r) = rows.next()? {
        let height = u64_of(r.get(0)?, "heads", 0, "height")?;
        if out.last().is_none_or(|h| h.height != height) {
            out.push(HeadCosigners { height, sealed_at_ms: r.get(1)?, cosigners: Vec::new() });
        }
        let witness: Option<String> = r.get(2)?;
        let key_id: Option<String> = r.get(3)?;
        if let (Some(w), Some(id), Some(last)) = (witness, key_id, out.last_mut()) {
            if let Ok(id) = u32::from_str_radix(&id, 16) {
                last.cosigners.push((w, id));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{insert_head, open_writer, StoredHead};

    fn head(conn: &Connection, height: u64) {
        let h = StoredHead {
            height,
            tree_size: height,
            root: [0; 32],
            checkpoint: format!("c{height}"),
            signature: vec![1],
            key_id: "k".into(),
            sealed_at_ms: 10 + height as i64,
        };
        insert_head(conn, &h).unwrap();
    }

    fn cos(height: u64, witness: &str, t: u64) -> StoredCosignature {
        StoredCosignature {
            height,
            witness: witness.into(),
            key_id: 0x0102_0304,
            line: format!("\u{2014} {witness} AQIDBA{t}"),
            timestamp: t,
            stored_at_ms: 5,
        }
    }

    #[test]
    fn cosignatures_are_append_only_one_per_head_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("a.db"), "o").unwrap();
        assert!(present(&conn).unwrap());
        for h in 0..3 {
            head(&conn, h);
        }
        insert(&conn, &cos(1, "w1", 100)).unwrap();
        // A second cosignature of the same head by the same key keeps the first.
        insert(&conn, &cos(1, "w1", 200)).unwrap();
        insert(&conn, &cos(1, "w2", 150)).unwrap();
        insert(&conn, &cos(2, "w1", 300)).unwrap();
        assert!(insert(&conn, &cos(9, "w1", 1)).is_err(), "a cosignature needs its head");
        let of1 = of_head(&conn, 1).unwrap();
        assert_eq!(of1, vec![cos(1, "w1", 100), cos(1, "w2", 150)]);
        assert_eq!(last_cosigned_height(&conn, "w1", 0x0102_0304).unwrap(), Some(2));
        assert_eq!(last_cosigned_height(&conn, "w2", 0x0102_0304).unwrap(), Some(1));
        assert_eq!(last_cosigned_height(&conn, "w1", 7).unwrap(), None);
        let heads = heads_with_cosigners(&conn, 1).unwrap();
        let id = 0x0102_0304;
        assert_eq!(
            heads,
            vec![
                HeadCosigners {
                    height: 1,
                    sealed_at_ms: 11,
                    cosigners: vec![("w1".into(), id), ("w2".into(), id)]
                },
                HeadCosigners { height: 2, sealed_at_ms: 12, cosigners: vec![("w1".into(), id)] },
            ]
        );
        for sql in ["UPDATE cosignatures SET line = 'x'", "DELETE FROM cosignatures"] {
            let e = conn.execute(sql, []).unwrap_err().to_string();
            assert!(e.contains("cosignatures are append-only"), "{sql}: {e}");
        }
        // The cursor is updated in place.
        assert_eq!(cursor(&conn, "vk").unwrap(), None);
        let c = WitnessCursor { witness: "vk".into(), tree_size: 5, height: 2 };
        set_cursor(&conn, &c).unwrap();
        set_cursor(&conn, &WitnessCursor { tree_size: 9, height: 4, ..c.clone() }).unwrap();
        assert_eq!(cursor(&conn, "vk").unwrap(), Some(WitnessCursor { tree_size: 9, height: 4, ..c }));
    }

    #[test]
    fn a_version_2_file_reads_as_having_no_cosignatures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let conn = open_writer(&path, "o").unwrap();
        head(&conn, 0);
        // What a build of schema version 2 left: no v3 tables, version 2 recorded last.
        conn.execute_batch(
            "DROP TABLE cosignatures; DROP TABLE witness_state; DELETE FROM schema_version WHERE version = 3;",
        )
        .unwrap();
        drop(conn);
        let reader = crate::store::open_reader(&path).unwrap();
        assert!(!present(&reader).unwrap());
        assert_eq!(of_head(&reader, 0).unwrap(), vec![]);
        assert_eq!(
            heads_with_cosigners(&reader, 0).unwrap(),
            vec![HeadCosigners { height: 0, sealed_at_ms: 10, cosigners: vec![] }]
        );
        assert_eq!(cursor(&reader, "vk").unwrap(), None);
        drop(reader);
        // The writer migrates it forward.
        let conn = open_writer(&path, "o").unwrap();
        assert!(present(&conn).unwrap());
        insert(&conn, &cos(0, "w1", 1)).unwrap();
    }
}
