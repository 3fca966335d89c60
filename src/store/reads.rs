//! [`LogReads`]: the one way the appliance's actors and read routes read the log, on SQLite or on PostgreSQL.
//!
//! Every method is async and gives the same result on both stores (the same rows, the same order, the same error
//! variant for a size outside the tree or a corrupt row: softhsm-tests/postgres_reads.rs compares them). On SQLite
//! the existing `store::*` functions run on a blocking thread with a pooled connection, as before; on PostgreSQL
//! the `pg::read`/`pg::tree` counterparts run on a [`PgReads`] session. Reads that must agree with each other (a
//! head and the proofs against it, an event and its erasure) are one method each, run in ONE snapshot: one SQLite
//! connection, or one `REPEATABLE READ READ ONLY` transaction on PostgreSQL.
//!
//! What is still SQLite-only (self-verification, bundle export, the search database) takes the pool from
//! [`LogReads::sqlite`], and the routes answer 501 `not_available_on_postgres` on a PostgreSQL store.

use super::cosignatures::{self, HeadCosigners, StoredCosignature, WitnessCursor};
use super::{ReadPool, StoreError, StoredTimestamp};
use crate::receipt::{self, ReceiptError};
use anchorlog_core::merkle::Hash;
use anchorlog_core::receipt::Receipt;
use anchorlog_core::stored::{ErasureRecord, StoredEvent, StoredHead};
use anchorlog_core::verify::keys::KeyRotationProof;
use std::sync::Arc;

#[cfg(feature = "postgres")]
use super::pg::{self, reads_pool::snapshot, PgReads};

/// Reads of the log database, on either store (see the module doc).
#[derive(Clone)]
pub enum LogReads {
    /// The embedded SQLite log: a pool of read-only connections used from blocking threads.
    Sqlite(Arc<ReadPool>),
    /// A PostgreSQL log: a few read sessions (a standby reads too; reads never take the writer lease).
    #[cfg(feature = "postgres")]
    Postgres(PgReads),
}

impl From<Arc<ReadPool>> for LogReads {
    fn from(pool: Arc<ReadPool>) -> Self {
        LogReads::Sqlite(pool)
    }
}

/// Which head [`LogReads::head_record`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhichHead {
    /// The head with the greatest height.
    Latest,
    /// The head at this height.
    At(u64),
}

/// A head with what was stored after it was signed, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRecord {
    /// The signed head.
    pub head: StoredHead,
    /// Its RFC 3161 token, once stored.
    pub timestamp: Option<StoredTimestamp>,
    /// Its witnesses' cosignatures, in the order they were stored.
    pub cosignatures: Vec<StoredCosignature>,
    /// The PEM public key the database records for the head's key ID, if any.
    pub key_pem: Option<String>,
}

/// An inclusion proof with the leaf hash and the root it leads to, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionAnswer {
    /// The leaf hash of the event.
    pub leaf: Hash,
    /// The RFC 9162 audit path.
    pub proof: Vec<Hash>,
    /// The root of the tree of the asked size.
    pub root: Hash,
}

/// A consistency proof with the roots at both sizes, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyAnswer {
    /// The RFC 9162 consistency proof.
    pub proof: Vec<Hash>,
    /// The root of the older tree.
    pub from_root: Hash,
    /// The root of the newer tree.
    pub to_root: Hash,
}

/// Runs a SQLite read on a blocking thread with a pooled connection.
async fn blocking<T: Send + 'static>(
    pool: &Arc<ReadPool>,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || pool.with(f))
        .await
        .map_err(|e| StoreError::ReadTask(e.to_string()))?
}

/// Runs one PostgreSQL read on a session of `$pool`: `$c` is the session (`&Client`), `$body` an expression of type
/// `Result<_, PgError>` that may await. The closure may run twice (a retry on a fresh session), so `$body` must
/// only read and must take what it captures by copy or clone it.
#[cfg(feature = "postgres")]
macro_rules! pg_read {
    ($pool:expr, $(clone($($v:ident),*),)? |$c:ident| $body:expr) => {
        Ok($pool
            .with(move |client| {
                $($(let $v = $v.clone();)*)?
                Box::pin(async move {
                    let $c = &*client;
                    $body
                })
            })
            .await?)
    };
}

/// [`pg_read!`] inside one `REPEATABLE READ READ ONLY` transaction: `$c` is the transaction.
#[cfg(feature = "postgres")]
macro_rules! pg_snapshot {
    ($pool:expr, $(clone($($v:ident),*),)? |$c:ident| $body:expr) => {
        Ok($pool
            .with(move |client| {
                $($(let $v = $v.clone();)*)?
                Box::pin(async move {
                    let tx = snapshot(client).await?;
                    let out = {
                        let $c = &tx;
                        $body
                    };
                    // Read-only: committing only ends the snapshot.
                    tx.commit().await?;
                    out
                })
            })
            .await?)
    };
}

impl LogReads {
    /// The SQLite pool, for what is still SQLite-only (self-verification, bundle export); `None` on PostgreSQL.
    pub fn sqlite(&self) -> Option<&Arc<ReadPool>> {
        match self {
            LogReads::Sqlite(p) => Some(p),
            #[cfg(feature = "postgres")]
            LogReads::Postgres(_) => None,
        }
    }

    /// The store's name for messages: `"SQLite"` or `"PostgreSQL"`.
    pub fn backend(&self) -> &'static str {
        match self {
            LogReads::Sqlite(_) => "SQLite",
            #[cfg(feature = "postgres")]
            LogReads::Postgres(_) => "PostgreSQL",
        }
    }

    /// Number of stored events (= next seq).
    pub async fn event_count(&self) -> Result<u64, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, super::event_count).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::event_count(c).await),
        }
    }

    /// One event by seq.
    pub async fn event(&self, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::event(c, seq)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::event(c, seq).await),
        }
    }

    /// One event and its erasure record (if its payload was erased), in one snapshot.
    pub async fn event_with_erasure(
        &self,
        seq: u64,
    ) -> Result<(Option<StoredEvent>, Option<ErasureRecord>), StoreError> {
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| Ok((super::event(c, seq)?, super::erasure::erasure(c, seq)?))).await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_snapshot!(p, |c| async {
                Ok((pg::read::event(c, seq).await?, pg::read::erasure(c, seq).await?))
            }
            .await),
        }
    }

    /// At most `limit` events from seq `from` on, in seq order, ending with the one that brings the sum of entry
    /// and body sizes to `max_bytes` or more (a page of `GET /v1/stream`).
    pub async fn event_page(
        &self,
        from: u64,
        limit: u64,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| {
                    let mut events = Vec::new();
                    let mut bytes = 0usize;
                    super::for_each_event_page(c, from, limit, |ev| {
                        bytes += ev.entry.len() + ev.body.as_ref().map_or(0, Vec::len);
                        events.push(ev);
                        Ok(bytes < max_bytes)
                    })?;
                    Ok(events)
                })
                .await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::event_page(c, from, limit, max_bytes).await),
        }
    }

    /// Leaf hashes of events `from..to` in seq order (a missing event is [`StoreError::Corrupt`]).
    pub async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::leaf_hashes(c, from, to)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::leaf_hashes(c, from, to).await),
        }
    }

    /// One head by height.
    pub async fn head(&self, height: u64) -> Result<Option<StoredHead>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::head(c, height)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::head(c, height).await),
        }
    }

    /// The head with the greatest height.
    pub async fn last_head(&self) -> Result<Option<StoredHead>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, super::last_head).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::last_head(c).await),
        }
    }

    /// The earliest head whose tree covers `seq`.
    pub async fn covering_head(&self, seq: u64) -> Result<Option<StoredHead>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::covering_head(c, seq)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_snapshot!(p, |c| pg::read::covering_head(c, seq).await),
        }
    }

    /// Heads with `height >= from` that have no token yet, in height order (at most `limit`).
    pub async fn heads_without_timestamp(
        &self,
        from: u64,
        limit: u64,
    ) -> Result<Vec<StoredHead>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::heads_without_timestamp(c, from, limit)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::heads_without_timestamp(c, from, limit).await),
        }
    }

    /// A head with its token, cosignatures and recorded public key, in one snapshot; `None` if there is no such
    /// head.
    pub async fn head_record(&self, which: WhichHead) -> Result<Option<HeadRecord>, StoreError> {
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| {
                    let head = match which {
                        WhichHead::Latest => super::last_head(c)?,
                        WhichHead::At(h) => super::head(c, h)?,
                    };
                    let Some(head) = head else { return Ok(None) };
                    Ok(Some(HeadRecord {
                        timestamp: super::timestamp(c, head.height)?,
                        cosignatures: cosignatures::of_head(c, head.height)?,
                        key_pem: super::public_key_pem(c, &head.key_id)?,
                        head,
                    }))
                })
                .await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_snapshot!(p, |c| async {
                let head = match which {
                    WhichHead::Latest => pg::read::last_head(c).await?,
                    WhichHead::At(h) => pg::read::head(c, h).await?,
                };
                let Some(head) = head else { return Ok(None) };
                Ok(Some(HeadRecord {
                    timestamp: pg::read::timestamp(c, head.height).await?,
                    cosignatures: pg::read::cosignatures_of_head(c, head.height).await?,
                    key_pem: pg::read::public_key_pem(c, &head.key_id).await?,
                    head,
                }))
            }
            .await),
        }
    }

    /// The token of one head, if it has one.
    pub async fn timestamp(&self, height: u64) -> Result<Option<StoredTimestamp>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::timestamp(c, height)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::timestamp(c, height).await),
        }
    }

    /// Number of stored tokens.
    pub async fn timestamp_count(&self) -> Result<u64, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, super::timestamp_count).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::timestamp_count(c).await),
        }
    }

    /// Whether any head with `from <= height <= to` has a token.
    pub async fn any_timestamp_between(&self, from: u64, to: u64) -> Result<bool, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::any_timestamp_between(c, from, to)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::any_timestamp_between(c, from, to).await),
        }
    }

    /// The PEM public key recorded for `key_id`, if any.
    pub async fn public_key_pem(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        let key_id = key_id.to_owned();
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::public_key_pem(c, &key_id)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => {
                pg_read!(p, clone(key_id), |c| pg::read::public_key_pem(c, &key_id).await)
            }
        }
    }

    /// The erasure record of `seq`, if its payload was erased.
    pub async fn erasure(&self, seq: u64) -> Result<Option<ErasureRecord>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::erasure::erasure(c, seq)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::erasure(c, seq).await),
        }
    }

    /// The cosignatures of one head, in the order they were stored.
    pub async fn cosignatures_of_head(&self, height: u64) -> Result<Vec<StoredCosignature>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| cosignatures::of_head(c, height)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::cosignatures_of_head(c, height).await),
        }
    }

    /// A witness's cursor, if the cosigner stored one.
    pub async fn witness_cursor(&self, witness: &str) -> Result<Option<WitnessCursor>, StoreError> {
        let witness = witness.to_owned();
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| cosignatures::cursor(c, &witness)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, clone(witness), |c| pg::read::cursor(c, &witness).await),
        }
    }

    /// Heads with `height >= from`, each with its seal time and the witness keys that cosigned it.
    pub async fn heads_with_cosigners(&self, from: u64) -> Result<Vec<HeadCosigners>, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| cosignatures::heads_with_cosigners(c, from)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::read::heads_with_cosigners(c, from).await),
        }
    }

    /// For each witness key `(name, key ID)`, in one snapshot: the first height to submit (one past its last stored
    /// cosignature, else the newest head's) and the last height it cosigned, if any.
    pub async fn cosigning_starts(
        &self,
        keys: &[(String, u32)],
    ) -> Result<Vec<(u64, Option<u64>)>, StoreError> {
        let keys = keys.to_vec();
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| {
                    let newest = super::last_head(c)?.map_or(0, |h| h.height);
                    keys.iter()
                        .map(|(name, id)| {
                            let last = cosignatures::last_cosigned_height(c, name, *id)?;
                            Ok((last.map_or(newest, |h| h + 1), last))
                        })
                        .collect()
                })
                .await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_snapshot!(p, clone(keys), |c| {
                async {
                    let newest = pg::read::last_head(c).await?.map_or(0, |h| h.height);
                    let mut out = Vec::with_capacity(keys.len());
                    for (name, id) in &keys {
                        let last = pg::read::last_cosigned_height(c, name, *id).await?;
                        out.push((last.map_or(newest, |h| h + 1), last));
                    }
                    Ok(out)
                }
                .await
            }),
        }
    }

    /// The tree size of the latest signed head (`None` before the first head).
    pub async fn latest_signed_size(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.last_head().await?.map(|h| h.tree_size))
    }

    /// The root of the tree of size `size`.
    pub async fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        match self {
            LogReads::Sqlite(p) => blocking(p, move |c| super::tree::root_at(c, size)).await,
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_read!(p, |c| pg::tree::root_at(c, size).await),
        }
    }

    /// RFC 9162 consistency proof from tree size `old_size` to `new_size`.
    pub async fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| super::tree::consistency_proof(c, old_size, new_size)).await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => {
                pg_read!(p, |c| pg::tree::consistency_proof(c, old_size, new_size).await)
            }
        }
    }

    /// The leaf hash of `seq`, its inclusion proof in the tree of size `size` and that tree's root, in one
    /// snapshot.
    pub async fn inclusion(&self, seq: u64, size: u64) -> Result<InclusionAnswer, StoreError> {
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| {
                    Ok(InclusionAnswer {
                        leaf: super::tree::subtree(c, seq, 1)?,
                        proof: super::tree::inclusion_proof(c, seq, size)?,
                        root: super::tree::root_at(c, size)?,
                    })
                })
                .await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_snapshot!(p, |c| async {
                Ok(InclusionAnswer {
                    leaf: pg::tree::subtree(c, seq, 1).await?,
                    proof: pg::tree::inclusion_proof(c, seq, size).await?,
                    root: pg::tree::root_at(c, size).await?,
                })
            }
            .await),
        }
    }

    /// The consistency proof from `from` to `to` and the roots at both sizes, in one snapshot.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyAnswer, StoreError> {
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| {
                    Ok(ConsistencyAnswer {
                        proof: super::tree::consistency_proof(c, from, to)?,
                        from_root: super::tree::root_at(c, from)?,
                        to_root: super::tree::root_at(c, to)?,
                    })
                })
                .await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => pg_snapshot!(p, |c| async {
                Ok(ConsistencyAnswer {
                    proof: pg::tree::consistency_proof(c, from, to).await?,
                    from_root: pg::tree::root_at(c, from).await?,
                    to_root: pg::tree::root_at(c, to).await?,
                })
            }
            .await),
        }
    }

    /// The key rotation records at seqs `from..to` with their proofs against the tree of size `reference_size`,
    /// in one snapshot (see `bundle::export::key_rotation_proofs`).
    pub async fn key_rotation_proofs(
        &self,
        from: u64,
        to: u64,
        reference_size: u64,
    ) -> Result<Vec<KeyRotationProof>, StoreError> {
        match self {
            LogReads::Sqlite(p) => {
                blocking(p, move |c| crate::bundle::export::key_rotation_proofs(c, from, to, reference_size))
                    .await
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => {
                pg_snapshot!(p, |c| pg::evidence::key_rotation_proofs(c, from, to, reference_size).await)
            }
        }
    }

    /// The receipt of event `seq` (docs/FORMAT.md §8), from one snapshot.
    pub async fn receipt(&self, seq: u64) -> Result<Receipt, ReceiptError> {
        match self {
            LogReads::Sqlite(p) => {
                let pool = p.clone();
                tokio::task::spawn_blocking(move || pool.with(|c| Ok(receipt::build(c, seq))))
                    .await
                    .map_err(|e| StoreError::ReadTask(e.to_string()))??
            }
            #[cfg(feature = "postgres")]
            LogReads::Postgres(p) => {
                // A PostgreSQL failure surfaces as the read's error, so that a session that died is retried.
                let built: Result<Result<Receipt, ReceiptError>, StoreError> = pg_snapshot!(p, |c| {
                    match receipt::build_pg(c, seq).await {
                        Err(ReceiptError::Store(StoreError::Postgres(e))) => Err(e),
                        other => Ok(other),
                    }
                });
                built?
            }
        }
    }
}
