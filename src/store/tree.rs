//! The stored Merkle tree: perfect-subtree hashes (the `nodes` table, level 0 being `events.leaf_hash`),
//! and the roots, frontiers and RFC 9162 proofs assembled from them in `O(log n)` reads.

use super::{hash_of, StoreError};
use anchorlog_core::merkle::{self, Frontier, Hash};
use rusqlite::{params, Connection, OptionalExtension};

/// Stores the perfect subtree `leaves[start..start + len]` (`len` a power of two ≥ 2, `start` a multiple of
/// `len`). Level-0 nodes are the events' own leaf hashes and are not stored twice.
pub fn insert_node(conn: &Connection, start: u64, len: u64, hash: &Hash) -> Result<(), StoreError> {
    let level = len.trailing_zeros();
    conn.prepare_cached("INSERT INTO nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?.execute(params![
        level,
        (start >> level) as i64,
        &hash[..]
    ])?;
    Ok(())
}

/// The MTH of the perfect subtree `leaves[start..start + len]`, read from the node store.
pub fn subtree(conn: &Connection, start: u64, len: u64) -> Result<Hash, StoreError> {
    let missing = || StoreError::Corrupt {
        table: "nodes",
        key: start,
        problem: format!("no stored node of {len} leaves"),
    };
    if len == 1 {
        let mut stmt = conn.prepare_cached("SELECT leaf_hash FROM events WHERE seq = ?1")?;
        let v: Option<Vec<u8>> = stmt.query_row(params![start as i64], |r| r.get(0)).optional()?;
        return hash_of(v.ok_or_else(missing)?, "events", start, "leaf_hash");
    }
    let level = len.trailing_zeros();
    let mut stmt = conn.prepare_cached("SELECT hash FROM nodes WHERE level = ?1 AND idx = ?2")?;
    let v: Option<Vec<u8>> =
        stmt.query_row(params![level, (start >> level) as i64], |r| r.get(0)).optional()?;
    hash_of(v.ok_or_else(missing)?, "nodes", start, "hash")
}

/// The frontier (right edge) of the tree of size `size`, from `popcount(size)` stored nodes.
pub fn load_frontier(conn: &Connection, size: u64) -> Result<Frontier, StoreError> {
    Frontier::load_with(size, |s, l| subtree(conn, s, l))
}

/// The root of the tree of size `size`.
pub fn root_at(conn: &Connection, size: u64) -> Result<Hash, StoreError> {
    merkle::root_with(size, |s, l| subtree(conn, s, l))
}

/// RFC 9162 inclusion proof of leaf `index` in the tree of size `size`.
pub fn inclusion_proof(conn: &Connection, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
    merkle::inclusion_proof_with(index, size, |s, l| subtree(conn, s, l))
}

/// RFC 9162 consistency proof from tree size `old_size` to `new_size`.
pub fn consistency_proof(conn: &Connection, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
    merkle::consistency_proof_with(old_size, new_size, |s, l| subtree(conn, s, l))
}
