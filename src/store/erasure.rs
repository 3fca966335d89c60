//! Erasure records (GDPR art. 17): the only change the database allows to a stored event.

use super::{u64_of, StoreError};
use anchorlog_core::stored::ErasureRecord;
use rusqlite::{params, Connection, OptionalExtension};

/// Records the erasure and clears body and salt of `rec.seq` (the caller owns the transaction and has
/// already inserted the erasure event `rec.erasure_seq`). The triggers refuse anything else.
pub fn erase_payload(conn: &Connection, rec: &ErasureRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![rec.seq as i64, rec.erasure_seq as i64, rec.erased_by, rec.reason, rec.erased_at_ms])?;
    let n = conn
        .prepare_cached("UPDATE events SET body = NULL, salt = NULL WHERE seq = ?1")?
        .execute(params![rec.seq as i64])?;
    if n != 1 {
        return Err(StoreError::Corrupt {
            table: "events",
            key: rec.seq,
            problem: "erased row vanished".into(),
        });
    }
    Ok(())
}

/// The seqs of every erased event, ascending.
pub fn erased_seqs(conn: &Connection) -> Result<Vec<u64>, StoreError> {
    let mut stmt = conn.prepare("SELECT seq FROM erasures ORDER BY seq")?;
    let seqs = stmt.query_map([], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(seqs.into_iter().filter_map(|s| u64::try_from(s).ok()).collect())
}

/// The erasure record of `seq`, if its payload was erased.
pub fn erasure(conn: &Connection, seq: u64) -> Result<Option<ErasureRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, erasure_seq, erased_by, reason, erased_at_ms FROM erasures WHERE seq = ?1",
    )?;
    let row: Option<(i64, i64, String, String, i64)> = stmt
        .query_row(params![seq as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    row.map(|(s, e, by, reason, at)| {
        Ok(ErasureRecord {
            seq: u64_of(s, "erasures", seq, "seq")?,
            erasure_seq: u64_of(e, "erasures", seq, "erasure_seq")?,
            erased_by: by,
            reason,
            erased_at_ms: at,
        })
    })
    .transpose()
}

/// The first erasure of a payload in `from..to` whose record (seq ≥ `sealed_size`) no head covers yet:
/// `(erased seq, record seq)`. Evidence of that erasure can be issued only after the next seal.
pub fn first_unsealed_erasure(
    conn: &Connection,
    from: u64,
    to: u64,
    sealed_size: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT seq, erasure_seq FROM erasures WHERE seq >= ?1 AND seq < ?2 AND erasure_seq >= ?3 \
             ORDER BY seq LIMIT 1",
        )?
        .query_row(params![from as i64, to as i64, sealed_size as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(s, e)| Ok((u64_of(s, "erasures", 0, "seq")?, u64_of(e, "erasures", 0, "erasure_seq")?)))
        .transpose()
}
