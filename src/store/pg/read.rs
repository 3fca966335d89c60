//! Reads on any session (a standby's, the writer's own transaction): the PostgreSQL counterparts of
//! src/store/mod.rs's reads that the appender, the sealer, the timestamper, the cosigner and the read routes use
//! (through `store::reads::LogReads`), same names, results and ordering.

use super::{hash_of, i64_of, u64_of, PgError};
use crate::store::cosignatures::{HeadCosigners, StoredCosignature, WitnessCursor};
use crate::store::StoredTimestamp;
use anchorlog_core::stored::{ErasureRecord, StoredEvent, StoredHead};
use tokio_postgres::{GenericClient, Row};

/// The origin recorded when the log was created.
pub async fn stored_origin(c: &impl GenericClient) -> Result<Option<String>, PgError> {
    let row = c.query_opt("SELECT value FROM log_meta WHERE key = 'origin'", &[]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Number of stored events (= next seq, seqs being dense).
pub async fn event_count(c: &impl GenericClient) -> Result<u64, PgError> {
    let max: Option<i64> = c.query_one("SELECT max(seq) FROM events", &[]).await?.try_get(0)?;
    match max {
        None => Ok(0),
        Some(m) => Ok(u64_of(m, "events", 0, "seq")? + 1),
    }
}

fn event_from_row(r: &Row) -> Result<StoredEvent, PgError> {
    let seq = u64_of(r.try_get(0)?, "events", 0, "seq")?;
    Ok(StoredEvent {
        seq,
        entry: r.try_get(1)?,
        leaf_hash: hash_of(r.try_get(2)?, "events", seq, "leaf_hash")?,
        salt: r.try_get(3)?,
        body: r.try_get(4)?,
    })
}

/// One event by seq.
pub async fn event(c: &impl GenericClient, seq: u64) -> Result<Option<StoredEvent>, PgError> {
    let row = c
        .query_opt("SELECT seq, entry, leaf_hash, salt, body FROM events WHERE seq = $1", &[&i64_of(seq)])
        .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// The events with `from <= seq < to`, in seq order.
pub async fn events(c: &impl GenericClient, from: u64, to: u64) -> Result<Vec<StoredEvent>, PgError> {
    let rows = c
        .query(
            "SELECT seq, entry, leaf_hash, salt, body FROM events WHERE seq >= $1 AND seq < $2 ORDER BY seq",
            &[&i64_of(from), &i64_of(to)],
        )
        .await?;
    rows.iter().map(event_from_row).collect()
}

/// Leaf hashes of events `from..to` in seq order; a missing event is [`PgError::Corrupt`].
pub async fn leaf_hashes(c: &impl GenericClient, from: u64, to: u64) -> Result<Vec<[u8; 32]>, PgError> {
    let rows = c
        .query(
            "SELECT seq, leaf_hash FROM events WHERE seq >= $1 AND seq < $2 ORDER BY seq",
            &[&i64_of(from), &i64_of(to)],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut expected = from;
    for r in &rows {
        let seq = u64_of(r.try_get(0)?, "events", expected, "seq")?;
        if seq != expected {
            return Err(PgError::Corrupt { table: "events", key: expected, problem: "missing event".into() });
        }
        out.push(hash_of(r.try_get(1)?, "events", seq, "leaf_hash")?);
        expected += 1;
    }
    if expected != to {
        return Err(PgError::Corrupt { table: "events", key: expected, problem: "missing event".into() });
    }
    Ok(out)
}

/// The seq and leaf hash of an already stored event with this de-duplication key.
pub async fn find_by_source_id(
    c: &impl GenericClient,
    producer: &str,
    source: &str,
    source_id: &str,
) -> Result<Option<(u64, [u8; 32])>, PgError> {
    let row = c
        .query_opt(
            "SELECT seq, leaf_hash FROM events WHERE producer = $1 AND source = $2 AND source_id = $3",
            &[&producer, &source, &source_id],
        )
        .await?;
    row.map(|r| {
        let seq = u64_of(r.try_get(0)?, "events", 0, "seq")?;
        Ok((seq, hash_of(r.try_get(1)?, "events", seq, "leaf_hash")?))
    })
    .transpose()
}

const HEAD_COLUMNS: &str = "height, tree_size, root, checkpoint, signature, key_id, sealed_at_ms";

fn head_from_row(r: &Row) -> Result<StoredHead, PgError> {
    let height = u64_of(r.try_get(0)?, "heads", 0, "height")?;
    Ok(StoredHead {
        height,
        tree_size: u64_of(r.try_get(1)?, "heads", height, "tree_size")?,
        root: hash_of(r.try_get(2)?, "heads", height, "root")?,
        checkpoint: r.try_get(3)?,
        signature: r.try_get(4)?,
        key_id: r.try_get(5)?,
        sealed_at_ms: r.try_get(6)?,
    })
}

/// One head by height.
pub async fn head(c: &impl GenericClient, height: u64) -> Result<Option<StoredHead>, PgError> {
    let row = c
        .query_opt(&format!("SELECT {HEAD_COLUMNS} FROM heads WHERE height = $1"), &[&i64_of(height)])
        .await?;
    row.as_ref().map(head_from_row).transpose()
}

/// The head with the greatest height.
pub async fn last_head(c: &impl GenericClient) -> Result<Option<StoredHead>, PgError> {
    let row =
        c.query_opt(&format!("SELECT {HEAD_COLUMNS} FROM heads ORDER BY height DESC LIMIT 1"), &[]).await?;
    row.as_ref().map(head_from_row).transpose()
}

/// The heads from height `from` on, in height order.
pub async fn heads_from(c: &impl GenericClient, from: u64) -> Result<Vec<StoredHead>, PgError> {
    let rows = c
        .query(
            &format!("SELECT {HEAD_COLUMNS} FROM heads WHERE height >= $1 ORDER BY height"),
            &[&i64_of(from)],
        )
        .await?;
    rows.iter().map(head_from_row).collect()
}

/// The earliest head whose tree covers `seq` (binary search over heights: tree sizes never decrease).
pub async fn covering_head(c: &impl GenericClient, seq: u64) -> Result<Option<StoredHead>, PgError> {
    let Some(last) = last_head(c).await? else { return Ok(None) };
    if last.tree_size <= seq {
        return Ok(None);
    }
    let (mut lo, mut hi, mut best) = (0u64, last.height, last);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let h = head(c, mid).await?.ok_or(PgError::Corrupt {
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

/// The PEM public key recorded for `key_id`, if any.
pub async fn public_key_pem(c: &impl GenericClient, key_id: &str) -> Result<Option<String>, PgError> {
    let row = c.query_opt("SELECT value FROM log_meta WHERE key = $1", &[&format!("key:{key_id}")]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Heads with `height >= from` that have no token yet, in height order (at most `limit`).
pub async fn heads_without_timestamp(
    c: &impl GenericClient,
    from: u64,
    limit: u64,
) -> Result<Vec<StoredHead>, PgError> {
    let rows = c
        .query(
            "SELECT h.height, h.tree_size, h.root, h.checkpoint, h.signature, h.key_id, h.sealed_at_ms \
             FROM heads h LEFT JOIN timestamps t ON t.height = h.height \
             WHERE h.height >= $1 AND t.height IS NULL ORDER BY h.height LIMIT $2",
            &[&i64_of(from), &i64_of(limit)],
        )
        .await?;
    rows.iter().map(head_from_row).collect()
}

/// The token of one head, if it has one.
pub async fn timestamp(c: &impl GenericClient, height: u64) -> Result<Option<StoredTimestamp>, PgError> {
    let row = c
        .query_opt(
            "SELECT height, response, gen_time_ms, gen_time, tsa_url, stored_at_ms FROM timestamps WHERE height = $1",
            &[&i64_of(height)],
        )
        .await?;
    row.map(|r| {
        Ok(StoredTimestamp {
            height: u64_of(r.try_get(0)?, "timestamps", height, "height")?,
            response: r.try_get(1)?,
            gen_time_ms: r.try_get(2)?,
            gen_time: r.try_get(3)?,
            tsa_url: r.try_get(4)?,
            stored_at_ms: r.try_get(5)?,
        })
    })
    .transpose()
}

/// The epoch and holder in the writer lease's row.
pub async fn lease_epoch(c: &impl GenericClient) -> Result<(i64, Option<String>), PgError> {
    let row = c.query_one("SELECT epoch, holder FROM writer_lease WHERE id = 1", &[]).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A witness's cursor, if the cosigner stored one.
pub async fn cursor(c: &impl GenericClient, witness: &str) -> Result<Option<WitnessCursor>, PgError> {
    let row =
        c.query_opt("SELECT tree_size, height FROM witness_state WHERE witness = $1", &[&witness]).await?;
    row.map(|r| {
        Ok(WitnessCursor {
            witness: witness.to_owned(),
            tree_size: u64_of(r.try_get(0)?, "witness_state", 0, "tree_size")?,
            height: u64_of(r.try_get(1)?, "witness_state", 0, "height")?,
        })
    })
    .transpose()
}

/// The stored cosignatures of one head, by witness and key ID.
pub async fn cosignatures_of_head(
    c: &impl GenericClient,
    height: u64,
) -> Result<Vec<StoredCosignature>, PgError> {
    let rows = c
        .query(
            // SQLite's order (src/store/cosignatures.rs): by storing time, then by witness and key ID compared
            // bytewise (its BINARY collation; "C" here, whatever the database's collation).
            "SELECT height, witness, key_id, line, timestamp, stored_at_ms FROM cosignatures WHERE height = $1 \
             ORDER BY stored_at_ms, witness COLLATE \"C\", key_id COLLATE \"C\"",
            &[&i64_of(height)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let key_id: String = r.try_get(2)?;
            Ok(StoredCosignature {
                height: u64_of(r.try_get(0)?, "cosignatures", height, "height")?,
                witness: r.try_get(1)?,
                key_id: u32::from_str_radix(&key_id, 16).map_err(|_| PgError::Corrupt {
                    table: "cosignatures",
                    key: height,
                    problem: format!("key_id {key_id:?} is not 8 hex digits"),
                })?,
                line: r.try_get(3)?,
                timestamp: u64_of(r.try_get(4)?, "cosignatures", height, "timestamp")?,
                stored_at_ms: r.try_get(5)?,
            })
        })
        .collect()
}

/// At most `limit` events with `seq >= from` in seq order, stopping after the event that brings the sum of entry
/// and body sizes to `max_bytes` or more (the SQLite walk's page: `store::for_each_event_page`).
pub async fn event_page(
    c: &impl GenericClient,
    from: u64,
    limit: u64,
    max_bytes: usize,
) -> Result<Vec<StoredEvent>, PgError> {
    let rows = c
        .query(
            "SELECT seq, entry, leaf_hash, salt, body FROM events WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&i64_of(from), &i64_of(limit)],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    for r in &rows {
        let ev = event_from_row(r)?;
        bytes += ev.entry.len() + ev.body.as_ref().map_or(0, Vec::len);
        out.push(ev);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

/// Number of stored tokens.
pub async fn timestamp_count(c: &impl GenericClient) -> Result<u64, PgError> {
    let n: i64 = c.query_one("SELECT count(*) FROM timestamps", &[]).await?.try_get(0)?;
    Ok(n.max(0) as u64)
}

/// Whether any head with `from <= height <= to` has a token.
pub async fn any_timestamp_between(c: &impl GenericClient, from: u64, to: u64) -> Result<bool, PgError> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM timestamps WHERE height BETWEEN $1 AND $2)",
            &[&i64_of(from), &i64_of(to)],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// The erasure record of `seq`, if its payload was erased.
pub async fn erasure(c: &impl GenericClient, seq: u64) -> Result<Option<ErasureRecord>, PgError> {
    let row = c
        .query_opt(
            "SELECT seq, erasure_seq, erased_by, reason, erased_at_ms FROM erasures WHERE seq = $1",
            &[&i64_of(seq)],
        )
        .await?;
    row.map(|r| {
        Ok(ErasureRecord {
            seq: u64_of(r.try_get(0)?, "erasures", seq, "seq")?,
            erasure_seq: u64_of(r.try_get(1)?, "erasures", seq, "erasure_seq")?,
            erased_by: r.try_get(2)?,
            reason: r.try_get(3)?,
            erased_at_ms: r.try_get(4)?,
        })
    })
    .transpose()
}

/// The seqs of the indexed key rotation records (`rotation:<seq, 20 digits>` in `log_meta`), in order.
pub async fn rotation_seqs(c: &impl GenericClient) -> Result<Vec<u64>, PgError> {
    let rows = c
        .query("SELECT key FROM log_meta WHERE key LIKE 'rotation:%' ORDER BY key COLLATE \"C\"", &[])
        .await?;
    rows.iter()
        .map(|r| {
            let key: String = r.try_get(0)?;
            key.strip_prefix("rotation:").and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
                PgError::Corrupt {
                    table: "log_meta",
                    key: 0,
                    problem: format!("malformed rotation index {key:?}"),
                }
            })
        })
        .collect()
}

/// The greatest height the witness key (`witness`, `key_id`) has a stored cosignature of.
pub async fn last_cosigned_height(
    c: &impl GenericClient,
    witness: &str,
    key_id: u32,
) -> Result<Option<u64>, PgError> {
    let h: Option<i64> = c
        .query_one(
            "SELECT max(height) FROM cosignatures WHERE witness = $1 AND key_id = $2",
            &[&witness, &format!("{key_id:08x}")],
        )
        .await?
        .try_get(0)?;
    h.map(|h| u64_of(h, "cosignatures", 0, "height")).transpose()
}

/// Heads with `height >= from`, each with its seal time and the witness keys that cosigned it (by witness and key
/// ID, bytewise: the order of SQLite's primary key).
pub async fn heads_with_cosigners(c: &impl GenericClient, from: u64) -> Result<Vec<HeadCosigners>, PgError> {
    let rows = c
        .query(
            "SELECT h.height, h.sealed_at_ms, c.witness, c.key_id FROM heads h \
             LEFT JOIN cosignatures c ON c.height = h.height WHERE h.height >= $1 \
             ORDER BY h.height, c.witness COLLATE \"C\", c.key_id COLLATE \"C\"",
            &[&i64_of(from)],
        )
        .await?;
    let mut out: Vec<HeadCosigners> = Vec::new();
    for r in &rows {
        let height = u64_of(r.try_get(0)?, "heads", 0, "height")?;
        if out.last().is_none_or(|h| h.height != height) {
            out.push(HeadCosigners { height, sealed_at_ms: r.try_get(1)?, cosigners: Vec::new() });
        }
        let witness: Option<String> = r.try_get(2)?;
        let key_id: Option<String> = r.try_get(3)?;
        if let (Some(w), Some(id), Some(last)) = (witness, key_id, out.last_mut()) {
            if let Ok(id) = u32::from_str_radix(&id, 16) {
                last.cosigners.push((w, id));
            }
        }
    }
    Ok(out)
}
