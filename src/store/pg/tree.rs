//! The stored Merkle tree on PostgreSQL (the counterpart of src/store/tree.rs): perfect-subtree hashes from the
//! `nodes` table (level 0 being `events.leaf_hash`), and the roots, frontiers and RFC 9162 proofs built from them.
//!
//! The core's algorithms ask for subtrees through a synchronous callback; which subtrees they ask for depends only
//! on the sizes, never on the hashes. So each function runs the algorithm twice: once to learn the ranges, then,
//! after fetching them (pipelined, one wait), to compute the answer.

use super::{hash_of, i64_of, PgError};
use anchorlog_core::merkle::{self, Frontier, Hash};
use futures_util::future::try_join_all;
use std::collections::HashMap;
use tokio_postgres::GenericClient;

/// The MTH of the perfect subtree `leaves[start..start + len]` from the node store (level 0: the leaf hash).
pub async fn subtree(c: &impl GenericClient, start: u64, len: u64) -> Result<Hash, PgError> {
    let missing = || PgError::Corrupt {
        table: "nodes",
        key: start,
        problem: format!("no stored node of {len} leaves"),
    };
    if len == 1 {
        let row = c.query_opt("SELECT leaf_hash FROM events WHERE seq = $1", &[&i64_of(start)]).await?;
        return hash_of(row.ok_or_else(missing)?.try_get(0)?, "events", start, "leaf_hash");
    }
    let level = len.trailing_zeros();
    let row = c
        .query_opt(
            "SELECT hash FROM nodes WHERE level = $1 AND idx = $2",
            &[&(level as i32), &i64_of(start >> level)],
        )
        .await?;
    hash_of(row.ok_or_else(missing)?.try_get(0)?, "nodes", start, "hash")
}

/// The frontier (right edge) of the tree of size `size`, from `popcount(size)` stored nodes.
pub async fn load_frontier(c: &impl GenericClient, size: u64) -> Result<Frontier, PgError> {
    let mut subtrees = Vec::new();
    for (start, len) in anchorlog_core::merkle::perfect_subtrees(size) {
        subtrees.push(subtree(c, start, len).await?);
    }
    Ok(Frontier::from_subtrees(size, subtrees)?)
}

/// Runs `algorithm` over the stored subtrees it asks for (see the module doc).
async fn with_subtrees<T>(
    c: &impl GenericClient,
    algorithm: impl Fn(&mut dyn FnMut(u64, u64) -> Result<Hash, PgError>) -> Result<T, PgError>,
) -> Result<T, PgError> {
    let mut wanted = Vec::new();
    // The first run only records the ranges; its result (and an error it may find in the sizes) is the second's.
    let _ = algorithm(&mut |start, len| {
        wanted.push((start, len));
        Ok([0; 32])
    });
    let hashes = try_join_all(wanted.iter().map(|&(start, len)| subtree(c, start, len))).await?;
    let known: HashMap<(u64, u64), Hash> = wanted.into_iter().zip(hashes).collect();
    algorithm(&mut |start, len| {
        known.get(&(start, len)).copied().ok_or(PgError::Corrupt {
            table: "nodes",
            key: start,
            problem: format!("subtree of {len} leaves not fetched"),
        })
    })
}

/// The root of the tree of size `size`.
pub async fn root_at(c: &impl GenericClient, size: u64) -> Result<Hash, PgError> {
    with_subtrees(c, |subtree| merkle::root_with(size, subtree)).await
}

/// RFC 9162 inclusion proof of leaf `index` in the tree of size `size`.
pub async fn inclusion_proof(c: &impl GenericClient, index: u64, size: u64) -> Result<Vec<Hash>, PgError> {
    with_subtrees(c, |subtree| merkle::inclusion_proof_with(index, size, subtree)).await
}

/// RFC 9162 consistency proof from tree size `old_size` to `new_size`.
pub async fn consistency_proof(
    c: &impl GenericClient,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, PgError> {
    with_subtrees(c, |subtree| merkle::consistency_proof_with(old_size, new_size, subtree)).await
}
