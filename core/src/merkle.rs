//! Pure RFC 9162 Merkle tree math (the same tree as RFC 6962): leaf and node hashing, tree heads,
//! inclusion and consistency proofs, and their verification. No I/O happens here.
//!
//! Hashing follows RFC 9162 §2.1.1 with SHA-256:
//! `leaf = SHA-256(0x00 || entry)`, `node = SHA-256(0x01 || left || right)`, and the head of the
//! empty tree is `SHA-256("")`. The distinct prefixes stop a leaf from being passed off as an
//! interior node (second-preimage attacks on the tree shape).
//!
//! Storage model. Every node of an RFC 9162 tree that is ever *final* is a perfect subtree
//! `leaves[start..start + len]` with `len` a power of two and `start` a multiple of `len`.
//! A node store persists exactly those (see [`completed_subtrees`] and [`Frontier::push_with`]);
//! every root, inclusion proof and consistency proof is then assembled from `O(log n)` of them by
//! [`root_with`], [`inclusion_proof_with`] and [`consistency_proof_with`], which only ever ask
//! their `subtree(start, len)` source for such aligned perfect ranges.
//!
//! Verification ([`verify_inclusion`], [`verify_consistency`]) is the literal RFC 9162 §2.1.3.2 /
//! §2.1.4.2 bit-walking algorithm, preceded by an exact proof-length check so that a malformed
//! proof is rejected with a message saying what was wrong.

use sha2::{Digest, Sha256};

/// Length in bytes of every hash in the tree (SHA-256).
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash: a leaf hash, an interior node hash or a tree head (root).
pub type Hash = [u8; HASH_LEN];

/// Domain-separation prefix for leaf hashes (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix for interior node hashes (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// Everything that can be wrong with a tree size, a leaf index or a proof.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    /// The leaf index is not below the tree size.
    #[error(
        "leaf index {index} is out of range for a tree of size {size}: ask for an index below the \
         tree size, or use a newer (larger) tree head"
    )]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size it was checked against.
        size: u64,
    },
    /// A consistency proof was requested or checked from a larger tree to a smaller one.
    #[error(
        "old tree size {old_size} is larger than new tree size {new_size}: a consistency proof goes \
         from an older, smaller tree head to a newer, larger one; swap the two tree heads"
    )]
    OldSizeExceedsNewSize {
        /// The claimed older tree size.
        old_size: u64,
        /// The claimed newer tree size.
        new_size: u64,
    },
    /// A slice-based helper was asked about a tree larger than the leaves it was given.
    #[error(
        "tree range ending at {size} needs more than the {available} leaves supplied: pass every \
         leaf hash of the tree"
    )]
    SizeExceedsLeaves {
        /// The size (end of range) that was needed.
        size: u64,
        /// How many leaves were supplied.
        available: u64,
    },
    /// The inclusion proof has the wrong number of hashes for this index and tree size.
    #[error(
        "inclusion proof for leaf {index} in a tree of size {size} must hold {expected} hashes but \
         holds {got}: the proof is malformed or was made for another index or tree size"
    )]
    InclusionProofLength {
        /// The leaf index being proven.
        index: u64,
        /// The tree size being proven against.
        size: u64,
        /// The number of hashes RFC 9162 requires.
        expected: usize,
        /// The number of hashes supplied.
        got: usize,
    },
    /// The consistency proof has the wrong number of hashes for these two tree sizes.
    #[error(
        "consistency proof from tree size {old_size} to {new_size} must hold {expected} hashes but \
         holds {got}: the proof is malformed or was made for other tree sizes"
    )]
    ConsistencyProofLength {
        /// The older tree size.
        old_size: u64,
        /// The newer tree size.
        new_size: u64,
        /// The number of hashes RFC 9162 requires.
        expected: usize,
        /// The number of hashes supplied.
        got: usize,
    },
    /// The inclusion proof is well formed but does not lead from the leaf to the given root.
    #[error(
        "inclusion proof for leaf {index} in a tree of size {size} does not lead to the given root: \
         that leaf is not at that index of that tree, or the proof or the root is wrong"
    )]
    InclusionRootMismatch {
        /// The leaf index being proven.
        index: u64,
        /// The tree size being proven against.
        size: u64,
    },
    /// The consistency proof does not reproduce the old tree head.
    #[error(
        "consistency proof from tree size {old_size} to {new_size} does not reproduce the old root: \
         the old root is not the head of a tree of size {old_size}, or the proof is wrong"
    )]
    OldRootMismatch {
        /// The older tree size.
        old_size: u64,
        /// The newer tree size.
        new_size: u64,
    },
    /// The consistency proof does not reproduce the new tree head.
    #[error(
        "consistency proof from tree size {old_size} to {new_size} does not reproduce the new root: \
         the newer tree does not extend the older one (history was rewritten or forked), or the \
         proof or the new root is wrong"
    )]
    NewRootMismatch {
        /// The older tree size.
        old_size: u64,
        /// The newer tree size.
        new_size: u64,
    },
    /// A stored frontier does not have one subtree hash per set bit of its size.
    #[error(
        "frontier for tree size {size} needs {expected} subtree hashes but {got} were given: the \
         stored tree state is inconsistent; rebuild it from the stored nodes"
    )]
    FrontierLength {
        /// The tree size of the frontier.
        size: u64,
        /// The number of subtree hashes required (number of one bits in `size`).
        expected: usize,
        /// The number of subtree hashes supplied.
        got: usize,
    },
}

/// Hashes one log entry into a leaf: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// Hashes two child nodes into their parent: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The tree head of the empty tree: `SHA-256("")` (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The Merkle tree head (MTH) over already-hashed leaves, in `O(n)` time and `O(log n)` memory.
///
/// Built with a [`Frontier`], so there is no recursion whose depth depends on the input.
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::new();
    for leaf in leaves {
        frontier.push(*leaf);
    }
    frontier.root()
}

/// The tree head of size `size` assembled from at most 64 stored perfect subtrees.
///
/// `subtree(start, len)` must return the MTH of `leaves[start..start + len]`; it is only called
/// with the aligned perfect ranges listed by [`perfect_subtrees`].
pub fn root_with<E, F>(size: u64, mut subtree: F) -> Result<Hash, E>
where
    F: FnMut(u64, u64) -> Result<Hash, E>,
{
    range_root(0, size, &mut subtree)
}

/// Splits `leaves[0..size]` into its perfect subtrees, left to right, as `(start, len)`.
///
/// There is one per one bit of `size`, largest first: these are the nodes a [`Frontier`] keeps
/// and exactly the stored nodes needed to rebuild the tree head of size `size`.
pub fn perfect_subtrees(size: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut start = 0u64;
    (0..u64::BITS).rev().filter(move |bit| (size >> bit) & 1 == 1).map(move |bit| {
        let len = 1u64 << bit;
        let range = (start, len);
        // Cannot overflow: the lengths sum to `size`.
        start += len;
        range
    })
}

/// The perfect subtrees that become final when leaf `leaf_index` is appended, smallest first.
///
/// For each `k` with `(leaf_index + 1) % 2^k == 0` this yields `(leaf_index + 1 - 2^k, 2^k)`,
/// starting with the leaf itself `(leaf_index, 1)`. A node store that persists these for every
/// leaf holds every node that [`root_with`], [`inclusion_proof_with`] and
/// [`consistency_proof_with`] can ask for. (For the unreachable `leaf_index == u64::MAX` the
/// subtree of length `2^64` is not representable and is left out.)
pub fn completed_subtrees(leaf_index: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = leaf_index.wrapping_add(1);
    // `end == 0` only when `leaf_index == u64::MAX`; cap so `1 << k` stays in range.
    let top = end.trailing_zeros().min(u64::BITS - 1);
    (0..=top).map(move |k| {
        let len = 1u64 << k;
        (end.wrapping_sub(len), len)
    })
}

/// Incremental tree head: append leaf hashes one by one, root at any size in `O(log n)` memory.
///
/// It keeps the "compact range" of the right edge: the roots of the perfect subtrees that make
/// up `leaves[0..size]` (one per one bit of `size`, largest first, see [`perfect_subtrees`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Number of leaves appended so far.
    size: u64,
    /// Roots of the perfect subtrees covering `leaves[0..size]`, left (largest) to right.
    subtrees: Vec<Hash>,
}

impl Frontier {
    /// An empty frontier (tree size 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a frontier from its size and its subtree roots (as returned by [`Self::subtrees`]).
    pub fn from_subtrees(size: u64, subtrees: Vec<Hash>) -> Result<Self, MerkleError> {
        let expected = size.count_ones() as usize;
        if subtrees.len() != expected {
            return Err(MerkleError::FrontierLength { size, expected, got: subtrees.len() });
        }
        Ok(Self { size, subtrees })
    }

    /// Restores a frontier of size `size` by reading its perfect subtrees from a node store.
    ///
    /// `subtree(start, len)` is called once per range of [`perfect_subtrees`]`(size)`.
    pub fn load_with<E, F>(size: u64, mut subtree: F) -> Result<Self, E>
    where
        F: FnMut(u64, u64) -> Result<Hash, E>,
    {
        let subtrees =
            perfect_subtrees(size).map(|(start, len)| subtree(start, len)).collect::<Result<Vec<_>, E>>()?;
        Ok(Self { size, subtrees })
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_with(leaf, |_, _, _| {});
    }

    /// Appends one leaf hash and reports every perfect subtree it completes.
    ///
    /// `on_complete(start, len, hash)` is called for exactly the ranges of
    /// [`completed_subtrees`]`(old size)`, smallest first, so a node store can persist them.
    pub fn push_with<F>(&mut self, leaf: Hash, mut on_complete: F)
    where
        F: FnMut(u64, u64, &Hash),
    {
        let index = self.size;
        let mut node = leaf;
        let mut len = 1u64;
        on_complete(index, len, &node);
        // Each trailing one bit of the old size is a perfect subtree exactly as tall as `node`
        // that ends just left of it, so the two merge; this is binary increment with carries.
        let mut carries = index;
        while carries & 1 == 1 {
            let Some(left) = self.subtrees.pop() else {
                // Unreachable while the invariant (one subtree per one bit) holds.
                break;
            };
            node = node_hash(&left, &node);
            len <<= 1;
            on_complete(index + 1 - len, len, &node);
            carries >>= 1;
        }
        self.subtrees.push(node);
        // 2^64 appended leaves is physically unreachable, so this cannot overflow.
        self.size += 1;
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Roots of the perfect subtrees covering the tree, left (largest) to right.
    pub fn subtrees(&self) -> &[Hash] {
        &self.subtrees
    }

    /// The tree head (MTH) of the leaves appended so far; [`empty_root`] when there are none.
    pub fn root(&self) -> Hash {
        fold_right(&self.subtrees)
    }
}

/// Combines left-to-right perfect subtree roots into the MTH of their concatenation.
///
/// RFC 9162 splits at the largest power of two, so the leftmost (largest) subtree is the left
/// child of the root and the rest is folded from the right edge inwards.
fn fold_right(subtrees: &[Hash]) -> Hash {
    let mut rest = subtrees.iter().rev();
    match rest.next() {
        None => empty_root(),
        Some(last) => rest.fold(*last, |acc, left| node_hash(left, &acc)),
    }
}

/// The MTH of `leaves[start..start + len]` assembled from perfect subtrees.
///
/// Callers only pass ranges that are nodes of some RFC 9162 tree, and such a range always starts
/// at a multiple of a power of two that is at least `len`, so every piece is aligned.
fn range_root<E, F>(start: u64, len: u64, subtree: &mut F) -> Result<Hash, E>
where
    F: FnMut(u64, u64) -> Result<Hash, E>,
{
    let mut pieces = Vec::with_capacity(len.count_ones() as usize);
    for (offset, piece_len) in perfect_subtrees(len) {
        pieces.push(subtree(start + offset, piece_len)?);
    }
    Ok(fold_right(&pieces))
}

/// The largest power of two strictly below `n` (the RFC 9162 split point `k`); needs `n > 1`.
fn split_point(n: u64) -> u64 {
    1u64 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The ranges whose MTHs form the inclusion proof (RFC 9162 §2.1.3.1 `PATH(m, D[n])`),
/// deepest first. Needs `index < size`.
fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let (mut offset, mut n, mut m) = (0u64, size, index);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            // Leaf is on the left: the sibling is the (possibly imperfect) right part.
            ranges.push((offset + k, n - k));
            n = k;
        } else {
            // Leaf is on the right: the sibling is the perfect left part.
            ranges.push((offset, k));
            offset += k;
            m -= k;
            n -= k;
        }
    }
    ranges.reverse();
    ranges
}

/// The ranges whose MTHs form the consistency proof (RFC 9162 §2.1.4.1 `PROOF(m, D[n])`),
/// deepest first. Needs `0 < old_size < new_size`.
fn consistency_ranges(old_size: u64, new_size: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    // `whole` is SUBPROOF's flag b: true while the old tree is still a whole left edge subtree
    // whose root the verifier already holds, so it need not be sent.
    let (mut offset, mut n, mut m, mut whole) = (0u64, new_size, old_size, true);
    while m != n {
        let k = split_point(n);
        if m <= k {
            ranges.push((offset + k, n - k));
            n = k;
        } else {
            ranges.push((offset, k));
            offset += k;
            m -= k;
            n -= k;
            whole = false;
        }
    }
    if !whole {
        ranges.push((offset, n));
    }
    ranges.reverse();
    ranges
}

/// Builds the inclusion proof for leaf `index` in the tree of size `size` (RFC 9162 §2.1.3.1).
///
/// `subtree(start, len)` must return the MTH of `leaves[start..start + len]`. It is only called
/// with `len` a power of two and `start` a multiple of `len`, at most `2 * log2(size)` times, so a
/// node store can serve proofs in `O(log n)` reads. Its error type `E` is the caller's (e.g. a
/// database error enum) and needs `From<MerkleError>`, so bad arguments and storage failures come
/// back through one `Result` (use `E = MerkleError` when the source cannot fail).
pub fn inclusion_proof_with<E, F>(index: u64, size: u64, mut subtree: F) -> Result<Vec<Hash>, E>
where
    E: From<MerkleError>,
    F: FnMut(u64, u64) -> Result<Hash, E>,
{
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size }.into());
    }
    inclusion_ranges(index, size)
        .into_iter()
        .map(|(start, len)| range_root(start, len, &mut subtree))
        .collect()
}

/// Builds the consistency proof from tree size `old_size` to `new_size` (RFC 9162 §2.1.4.1).
///
/// RFC 9162 defines the proof for `0 < old_size < new_size`; for `old_size == new_size` and for
/// `old_size == 0` (the empty tree is a prefix of every tree) the proof is empty, matching
/// [`verify_consistency`]. The `subtree` source works as in [`inclusion_proof_with`].
pub fn consistency_proof_with<E, F>(old_size: u64, new_size: u64, mut subtree: F) -> Result<Vec<Hash>, E>
where
    E: From<MerkleError>,
    F: FnMut(u64, u64) -> Result<Hash, E>,
{
    if old_size > new_size {
        return Err(MerkleError::OldSizeExceedsNewSize { old_size, new_size }.into());
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    consistency_ranges(old_size, new_size)
        .into_iter()
        .map(|(start, len)| range_root(start, len, &mut subtree))
        .collect()
}

/// Reads the MTH of `leaves[start..start + len]` from an in-memory slice.
fn slice_subtree(leaves: &[Hash], start: u64, len: u64) -> Result<Hash, MerkleError> {
    let end = start.saturating_add(len);
    let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
    range
        .and_then(|(from, to)| leaves.get(from..to))
        .map(root_of)
        .ok_or(MerkleError::SizeExceedsLeaves { size: end, available: leaves.len() as u64 })
}

/// Inclusion proof for leaf `index` in the tree made of all of `leaves` (convenience, `O(n)`).
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, MerkleError> {
    inclusion_proof_with(index, leaves.len() as u64, |start, len| slice_subtree(leaves, start, len))
}

/// Consistency proof from the first `old_size` leaves to all of `leaves` (convenience, `O(n)`).
pub fn consistency_proof(old_size: u64, leaves: &[Hash]) -> Result<Vec<Hash>, MerkleError> {
    consistency_proof_with(old_size, leaves.len() as u64, |start, len| slice_subtree(leaves, start, len))
}

/// Computes the root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1 to 4).
///
/// Fails if `index >= size` or the proof does not have exactly the length RFC 9162 requires.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_ranges(index, size).len();
    let length_error = || MerkleError::InclusionProofLength { index, size, expected, got: proof.len() };
    // The RFC loop below detects a wrong length too, but only after hashing; checking first
    // gives the precise error without doing work on a malformed proof.
    if proof.len() != expected {
        return Err(length_error());
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(length_error());
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(length_error());
    }
    Ok(r)
}

/// Verifies that `leaf` is at `index` in the tree of size `size` with head `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if root_from_inclusion_proof(index, size, leaf, proof)? == *root {
        Ok(())
    } else {
        Err(MerkleError::InclusionRootMismatch { index, size })
    }
}

/// Verifies that the tree of size `new_size` with head `new_root` extends the tree of size
/// `old_size` with head `old_root` (RFC 9162 §2.1.4.2).
///
/// Cases RFC 9162 leaves to the implementation (it defines `0 < old_size < new_size`):
/// `old_size == new_size` needs an empty proof and equal roots; `old_size == 0` needs an empty
/// proof and `old_root` equal to [`empty_root`] (and `new_root` too when `new_size == 0`), since
/// the empty tree is a prefix of every tree.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeExceedsNewSize { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        return verify_trivial_consistency(old_size, new_size, old_root, new_root, proof);
    }
    let expected = consistency_ranges(old_size, new_size).len();
    let length_error =
        || MerkleError::ConsistencyProofLength { old_size, new_size, expected, got: proof.len() };
    // Step 1 (empty proof fails) is covered: `expected` is never 0 for 0 < old < new.
    if proof.len() != expected {
        return Err(length_error());
    }
    // Step 2: a power-of-two old tree is a whole left subtree; its root starts the path.
    let prepended = old_size.is_power_of_two().then_some(old_root);
    let mut path = prepended.into_iter().chain(proof);
    let first = path.next().ok_or_else(length_error)?;
    // Steps 3 and 4.
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let (mut fr, mut sr) = (*first, *first);
    // Step 6.
    for c in path {
        if sn == 0 {
            return Err(length_error());
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(length_error());
    }
    if fr != *old_root {
        return Err(MerkleError::OldRootMismatch { old_size, new_size });
    }
    if sr != *new_root {
        return Err(MerkleError::NewRootMismatch { old_size, new_size });
    }
    Ok(())
}

/// The consistency cases with nothing to prove: `old_size == 0` or `old_size == new_size`.
fn verify_trivial_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if !proof.is_empty() {
        return Err(MerkleError::ConsistencyProofLength {
            old_size,
            new_size,
            expected: 0,
            got: proof.len(),
        });
    }
    if old_size == 0 && *old_root != empty_root() {
        return Err(MerkleError::OldRootMismatch { old_size, new_size });
    }
    if old_size == new_size && old_root != new_root {
        return Err(MerkleError::NewRootMismatch { old_size, new_size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::collections::HashMap;

    // Reference vectors of the RFC 6962 tree used by certificate-transparency and transparency-dev.
    // Source: github.com/transparency-dev/merkle, testonly/constants.go (LeafInputs, NodeHashes,
    // RootHashes, CompactTrees).
    const LEAF_INPUTS: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
    const LEVEL0: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];
    const LEVEL1: [&str; 4] = [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ];
    const LEVEL2: [&str; 2] = [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ];
    const LEVEL3: &str = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328";
    /// Roots indexed by tree size, starting at the empty tree.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    // Source: github.com/transparency-dev/merkle, proof/verify_test.go (inclusionProofs and
    // consistencyProofs). The leaf numbers there are 1-based; here they are 0-based indexes.
    const INCLUSION_VECTORS: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    const CONSISTENCY_VECTORS: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    /// Also from proof/verify_test.go: an arbitrary hash that is no node of the test tree.
    const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

    /// Bit positions flipped in every proof hash by the exhaustive all-sizes tests (one per
    /// region of the hash; the golden-vector tests flip all 256 bits).
    const FLIP_BITS: [usize; 3] = [0, 109, 255];

    fn bytes(hex: &str) -> Vec<u8> {
        assert_eq!(hex.len() % 2, 0, "odd hex length: {hex}");
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    fn h(hex: &str) -> Hash {
        bytes(hex).try_into().unwrap()
    }

    fn hs(hexes: &[&str]) -> Vec<Hash> {
        hexes.iter().map(|x| h(x)).collect()
    }

    fn golden_leaves() -> Vec<Hash> {
        LEAF_INPUTS.iter().map(|x| leaf_hash(&bytes(x))).collect()
    }

    fn test_leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn flip(hash: &Hash, bit: usize) -> Hash {
        let mut out = *hash;
        out[bit / 8] ^= 1 << (bit % 8);
        out
    }

    fn ceil_log2(n: u64) -> usize {
        (u64::BITS - n.saturating_sub(1).leading_zeros()) as usize
    }

    /// Largest power of two strictly below `n`, computed naively for the reference code.
    fn ref_k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// RFC 9162 §2.1.1 MTH, written literally as the recursive definition.
    fn ref_mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = ref_k(n);
                node_hash(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
            }
        }
    }

    /// RFC 9162 §2.1.3.1 PATH(m, D[n]), literally.
    fn ref_path(m: usize, d: &[Hash]) -> Vec<Hash> {
        let n = d.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = ref_k(n);
        let (mut path, sibling) = if m < k {
            (ref_path(m, &d[..k]), ref_mth(&d[k..]))
        } else {
            (ref_path(m - k, &d[k..]), ref_mth(&d[..k]))
        };
        path.push(sibling);
        path
    }

    /// Shape of PATH(m, D[n]): per proof element, deepest first, whether the sibling is on the
    /// left. Two (index, size) pairs with the same shape cannot be told apart by any verifier.
    fn ref_path_shape(m: usize, n: usize) -> Vec<bool> {
        if n <= 1 {
            return Vec::new();
        }
        let k = ref_k(n);
        let mut shape = if m < k { ref_path_shape(m, k) } else { ref_path_shape(m - k, n - k) };
        shape.push(m >= k);
        shape
    }

    /// RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b), literally.
    fn ref_subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![ref_mth(d)] };
        }
        let k = ref_k(n);
        let (mut proof, extra) = if m <= k {
            (ref_subproof(m, &d[..k], b), ref_mth(&d[k..]))
        } else {
            (ref_subproof(m - k, &d[k..], false), ref_mth(&d[..k]))
        };
        proof.push(extra);
        proof
    }

    /// One step of a consistency proof check, as RFC 9162's SUBPROOF recursion lays it out.
    #[derive(Debug, PartialEq, Eq)]
    enum Step {
        /// The walk starts from the old root the verifier holds (old tree is a whole subtree).
        FromOldRoot,
        /// The walk starts from the first proof hash (a subtree of the old tree).
        FromProof,
        /// A left sibling inside the old tree: feeds both the old and the new root.
        Left,
        /// A right sibling outside the old tree: feeds only the new root.
        Right,
    }

    /// Shape of PROOF(m, D[n]) for 0 < m < n, deepest first. Two size pairs with the same shape
    /// hash the same inputs the same way, so no verifier can tell them apart.
    fn ref_consistency_shape(m: usize, n: usize, b: bool) -> Vec<Step> {
        if m == n {
            return vec![if b { Step::FromOldRoot } else { Step::FromProof }];
        }
        let k = ref_k(n);
        let mut shape =
            if m <= k { ref_consistency_shape(m, k, b) } else { ref_consistency_shape(m - k, n - k, false) };
        shape.push(if m <= k { Step::Right } else { Step::Left });
        shape
    }

    /// A subtree source over a slice that enforces the aligned-perfect-range contract and
    /// counts how often it is called.
    fn slice_source<'a>(
        leaves: &'a [Hash],
        calls: &'a Cell<usize>,
    ) -> impl FnMut(u64, u64) -> Result<Hash, MerkleError> + 'a {
        move |start, len| {
            assert!(len.is_power_of_two(), "non-perfect range ({start}, {len})");
            assert_eq!(start % len, 0, "unaligned range ({start}, {len})");
            assert!(start + len <= leaves.len() as u64, "range ({start}, {len}) past end");
            calls.set(calls.get() + 1);
            Ok(ref_mth(&leaves[start as usize..(start + len) as usize]))
        }
    }

    /// Every aligned perfect subtree hash of `leaves`, as a node store would hold them.
    fn node_table(leaves: &[Hash]) -> HashMap<(u64, u64), Hash> {
        (0..leaves.len() as u64)
            .flat_map(completed_subtrees)
            .map(|(start, len)| {
                let range = start as usize..(start + len) as usize;
                ((start, len), ref_mth(&leaves[range]))
            })
            .collect()
    }

    /// Like [`slice_source`], but reads the tree of size `size` from a precomputed node table.
    fn table_source<'a>(
        table: &'a HashMap<(u64, u64), Hash>,
        size: u64,
        calls: &'a Cell<usize>,
    ) -> impl FnMut(u64, u64) -> Result<Hash, MerkleError> + 'a {
        move |start, len| {
            assert!(len.is_power_of_two(), "non-perfect range ({start}, {len})");
            assert_eq!(start % len, 0, "unaligned range ({start}, {len})");
            assert!(start + len <= size, "range ({start}, {len}) past end {size}");
            calls.set(calls.get() + 1);
            Ok(table[&(start, len)])
        }
    }

    #[test]
    fn golden_leaf_and_node_hashes() {
        let leaves = golden_leaves();
        assert_eq!(leaves, hs(&LEVEL0));
        for (i, want) in LEVEL1.iter().enumerate() {
            assert_eq!(root_of(&leaves[2 * i..2 * i + 2]), h(want));
        }
        for (i, want) in LEVEL2.iter().enumerate() {
            assert_eq!(root_of(&leaves[4 * i..4 * i + 4]), h(want));
        }
        assert_eq!(root_of(&leaves), h(LEVEL3));
        assert_eq!(node_hash(&h(LEVEL0[0]), &h(LEVEL0[1])), h(LEVEL1[0]));
    }

    #[test]
    fn golden_roots_for_every_size() {
        let leaves = golden_leaves();
        assert_eq!(empty_root(), h(ROOTS[0]));
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), h(ROOTS[0]));
        for size in 1..=8 {
            assert_eq!(root_of(&leaves[..size]), h(ROOTS[size]), "size {size}");
            frontier.push(leaves[size - 1]);
            assert_eq!(frontier.size(), size as u64);
            assert_eq!(frontier.root(), h(ROOTS[size]), "frontier size {size}");
        }
    }

    #[test]
    fn golden_compact_trees() {
        // CompactTrees() in testonly/constants.go, written as (level, index) into NodeHashes().
        let node = |level: usize, index: usize| match level {
            0 => h(LEVEL0[index]),
            1 => h(LEVEL1[index]),
            2 => h(LEVEL2[index]),
            _ => h(LEVEL3),
        };
        let expected: [Vec<Hash>; 9] = [
            vec![],
            vec![node(0, 0)],
            vec![node(1, 0)],
            vec![node(1, 0), node(0, 2)],
            vec![node(2, 0)],
            vec![node(2, 0), node(0, 4)],
            vec![node(2, 0), node(1, 2)],
            vec![node(2, 0), node(1, 2), node(0, 6)],
            vec![node(3, 0)],
        ];
        let mut frontier = Frontier::new();
        for (size, want) in expected.iter().enumerate() {
            assert_eq!(frontier.subtrees(), want.as_slice(), "size {size}");
            if size < 8 {
                frontier.push(golden_leaves()[size]);
            }
        }
    }

    #[test]
    fn golden_inclusion_proofs() {
        let leaves = golden_leaves();
        for (index, size, want) in INCLUSION_VECTORS {
            let want = hs(want);
            let tree = &leaves[..size as usize];
            let root = h(ROOTS[size as usize]);
            assert_eq!(inclusion_proof(index, tree).unwrap(), want);
            let calls = Cell::new(0);
            let with = inclusion_proof_with(index, size, slice_source(tree, &calls)).unwrap();
            assert_eq!(with, want);
            let leaf = leaves[index as usize];
            assert_eq!(verify_inclusion(index, size, &leaf, &want, &root), Ok(()));

            // The corruption probes of proof/verify_test.go, with exact errors.
            let mismatch = Err(MerkleError::InclusionRootMismatch { index, size });
            for (i, hash) in want.iter().enumerate() {
                for bit in 0..256 {
                    let mut bad = want.clone();
                    bad[i] = flip(hash, bit);
                    assert_eq!(verify_inclusion(index, size, &leaf, &bad, &root), mismatch);
                }
            }
            for bit in 0..256 {
                let bad_leaf = flip(&leaf, bit);
                assert_eq!(verify_inclusion(index, size, &bad_leaf, &want, &root), mismatch);
                let bad_root = flip(&root, bit);
                assert_eq!(verify_inclusion(index, size, &leaf, &want, &bad_root), mismatch);
            }
            let empty = h(ROOTS[0]);
            assert_eq!(verify_inclusion(index, size, &leaf, &want, &empty), mismatch);
            let some = h(SOME_HASH);
            assert_eq!(verify_inclusion(index, size, &leaf, &want, &some), mismatch);
            let len_err = |got: usize| {
                Err(MerkleError::InclusionProofLength { index, size, expected: want.len(), got })
            };
            for extra in [root, some] {
                let mut trailing = want.clone();
                trailing.push(extra);
                let check = verify_inclusion(index, size, &leaf, &trailing, &root);
                assert_eq!(check, len_err(want.len() + 1));
                let mut preceding = vec![extra];
                preceding.extend_from_slice(&want);
                let check = verify_inclusion(index, size, &leaf, &preceding, &root);
                assert_eq!(check, len_err(want.len() + 1));
            }
            if let Some((_, shorter)) = want.split_last() {
                let check = verify_inclusion(index, size, &leaf, shorter, &root);
                assert_eq!(check, len_err(want.len() - 1));
            }
            if want.len() > 1 {
                let mut inserted = vec![want[0], some];
                inserted.extend_from_slice(&want[1..]);
                let check = verify_inclusion(index, size, &leaf, &inserted, &root);
                assert_eq!(check, len_err(want.len() + 1));
            }
            // Wrong index and tree size (leafIndex±1, leafIndex^2, treeSize*2, treeSize/2).
            let wrong = [
                (index.wrapping_sub(1), size),
                (index + 1, size),
                (index ^ 2, size),
                (index, size * 2),
                (index, size / 2),
            ];
            for (bad_index, bad_size) in wrong {
                let check = verify_inclusion(bad_index, bad_size, &leaf, &want, &root);
                assert!(check.is_err(), "({bad_index}, {bad_size}) accepted");
            }
        }
    }

    #[test]
    fn golden_inclusion_edge_cases() {
        // {0, 0, nil} in proof/verify_test.go: there is no leaf 0 in an empty tree.
        let some = h(SOME_HASH);
        let empty = empty_root();
        let out_of_range = |index, size| MerkleError::IndexOutOfRange { index, size };
        for (index, size) in [(0, 0), (1, 0), (2, 1), (1, 1)] {
            assert_eq!(verify_inclusion(index, size, &some, &[], &empty), Err(out_of_range(index, size)));
        }
        assert_eq!(inclusion_proof(0, &[]), Err(out_of_range(0, 0)));
        assert_eq!(inclusion_proof(3, &golden_leaves()[..3]), Err(out_of_range(3, 3)));
        // TestVerifyInclusionSingleEntry: root and leaf of a one-leaf tree are equal.
        let leaf = leaf_hash(b"data");
        assert_eq!(verify_inclusion(0, 1, &leaf, &[], &leaf), Ok(()));
        assert_eq!(
            verify_inclusion(0, 1, &leaf, &[], &empty),
            Err(MerkleError::InclusionRootMismatch { index: 0, size: 1 })
        );
    }

    #[test]
    fn golden_consistency_proofs() {
        let leaves = golden_leaves();
        for (old_size, new_size, want) in CONSISTENCY_VECTORS {
            let want = hs(want);
            let tree = &leaves[..new_size as usize];
            let old_root = h(ROOTS[old_size as usize]);
            let new_root = h(ROOTS[new_size as usize]);
            assert_eq!(consistency_proof(old_size, tree).unwrap(), want);
            let calls = Cell::new(0);
            let source = slice_source(tree, &calls);
            let with = consistency_proof_with(old_size, new_size, source).unwrap();
            assert_eq!(with, want);
            let check = verify_consistency(old_size, new_size, &old_root, &new_root, &want);
            assert_eq!(check, Ok(()));
            if want.is_empty() {
                continue;
            }

            // The corruption probes of proof/verify_test.go, with exact errors where the
            // failing check is determined.
            let old_mismatch = Err(MerkleError::OldRootMismatch { old_size, new_size });
            let new_mismatch = Err(MerkleError::NewRootMismatch { old_size, new_size });
            for (i, hash) in want.iter().enumerate() {
                for bit in 0..256 {
                    let mut bad = want.clone();
                    bad[i] = flip(hash, bit);
                    let check = verify_consistency(old_size, new_size, &old_root, &new_root, &bad);
                    assert!(check == old_mismatch || check == new_mismatch, "{check:?}");
                }
            }
            // A power-of-two old tree is a whole subtree of the new one: its root is an input
            // to the new-root computation (RFC step 2), so a wrong old root shows up there.
            let bad_old_err = if old_size.is_power_of_two() { new_mismatch } else { old_mismatch };
            for bit in 0..256 {
                let bad_old = flip(&old_root, bit);
                let check = verify_consistency(old_size, new_size, &bad_old, &new_root, &want);
                assert_eq!(check, bad_old_err);
                let bad_new = flip(&new_root, bit);
                let check = verify_consistency(old_size, new_size, &old_root, &bad_new, &want);
                assert_eq!(check, new_mismatch);
            }
            let swapped = verify_consistency(old_size, new_size, &new_root, &old_root, &want);
            assert_eq!(swapped, bad_old_err);
            let len_err = |got: usize| {
                Err(MerkleError::ConsistencyProofLength { old_size, new_size, expected: want.len(), got })
            };
            let check = verify_consistency(old_size, new_size, &old_root, &new_root, &[]);
            assert_eq!(check, len_err(0));
            let garbage = [old_root, new_root, h(SOME_HASH), want[0]];
            for extra in garbage {
                let mut trailing = want.clone();
                trailing.push(extra);
                let check = verify_consistency(old_size, new_size, &old_root, &new_root, &trailing);
                assert_eq!(check, len_err(want.len() + 1));
                let mut preceding = vec![extra];
                preceding.extend_from_slice(&want);
                let check = verify_consistency(old_size, new_size, &old_root, &new_root, &preceding);
                assert_eq!(check, len_err(want.len() + 1));
            }
            let truncated = &want[..want.len() - 1];
            let check = verify_consistency(old_size, new_size, &old_root, &new_root, truncated);
            assert_eq!(check, len_err(want.len() - 1));
            // Wrong sizes (size1-1, size1+1, size1^2, size2*2, size2/2).
            let wrong = [
                (old_size - 1, new_size),
                (old_size + 1, new_size),
                (old_size ^ 2, new_size),
                (old_size, new_size * 2),
                (old_size, new_size / 2),
            ];
            for (bad_old, bad_new) in wrong {
                let check = verify_consistency(bad_old, bad_new, &old_root, &new_root, &want);
                assert!(check.is_err(), "({bad_old}, {bad_new}) accepted");
            }
        }
    }

    #[test]
    fn consistency_trivial_cases() {
        // Adapted from TestVerifyConsistency in proof/verify_test.go. Difference: there the old
        // root of a size-0 tree is not checked; here it must be the empty-tree hash.
        let empty = empty_root();
        let (r1, r2) = (leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2"));
        let err_len = |old_size, new_size, got| {
            Err(MerkleError::ConsistencyProofLength { old_size, new_size, expected: 0, got })
        };
        let order = |old_size, new_size| Err(MerkleError::OldSizeExceedsNewSize { old_size, new_size });
        let old_mismatch = |old_size, new_size| Err(MerkleError::OldRootMismatch { old_size, new_size });
        let new_mismatch = |old_size, new_size| Err(MerkleError::NewRootMismatch { old_size, new_size });

        assert_eq!(verify_consistency(0, 0, &empty, &r2, &[]), new_mismatch(0, 0));
        assert_eq!(verify_consistency(1, 1, &r1, &r2, &[]), new_mismatch(1, 1));
        assert_eq!(verify_consistency(0, 0, &empty, &empty, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 1, &empty, &r2, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 1, &r1, &r2, &[]), old_mismatch(0, 1));
        assert_eq!(verify_consistency(1, 1, &r2, &r2, &[]), Ok(()));
        assert_eq!(verify_consistency(1, 0, &r1, &r2, &[]), order(1, 0));
        assert_eq!(verify_consistency(2, 1, &r1, &r2, &[]), order(2, 1));
        assert_eq!(
            verify_consistency(1, 2, &r1, &r2, &[]),
            Err(MerkleError::ConsistencyProofLength { old_size: 1, new_size: 2, expected: 1, got: 0 })
        );
        for (old, new) in [(0, 0), (0, 1), (1, 1)] {
            let check = verify_consistency(old, new, &empty, &empty, &[empty]);
            assert_eq!(check, err_len(old, new, 1));
        }
        let leaves = golden_leaves();
        assert_eq!(
            consistency_proof(6, &leaves[..3]),
            Err(MerkleError::OldSizeExceedsNewSize { old_size: 6, new_size: 3 })
        );
        for n in 0..=8 {
            assert_eq!(consistency_proof(0, &leaves[..n]), Ok(vec![]));
            let root = h(ROOTS[n]);
            assert_eq!(verify_consistency(0, n as u64, &empty, &root, &[]), Ok(()));
        }
    }

    #[test]
    fn inclusion_every_index_of_every_size_up_to_64() {
        let all = test_leaves(64);
        let table = node_table(&all);
        for size in 1..=64u64 {
            let tree = &all[..size as usize];
            let root = root_of(tree);
            for index in 0..size {
                let leaf = all[index as usize];
                let proof = inclusion_proof(index, tree).unwrap();
                assert_eq!(proof, ref_path(index as usize, tree), "({index}, {size})");
                let calls = Cell::new(0);
                let source = table_source(&table, size, &calls);
                let with = inclusion_proof_with(index, size, source).unwrap();
                assert_eq!(with, proof);
                // O(log n) reads from a node store.
                assert!(calls.get() <= 2 * ceil_log2(size), "{} calls", calls.get());
                assert_eq!(verify_inclusion(index, size, &leaf, &proof, &root), Ok(()));

                let mismatch = Err(MerkleError::InclusionRootMismatch { index, size });
                for (i, hash) in proof.iter().enumerate() {
                    for bit in FLIP_BITS {
                        let mut bad = proof.clone();
                        bad[i] = flip(hash, bit);
                        assert_eq!(verify_inclusion(index, size, &leaf, &bad, &root), mismatch);
                    }
                }
                for bit in FLIP_BITS {
                    let bad_leaf = flip(&leaf, bit);
                    assert_eq!(verify_inclusion(index, size, &bad_leaf, &proof, &root), mismatch);
                    let bad_root = flip(&root, bit);
                    assert_eq!(verify_inclusion(index, size, &leaf, &proof, &bad_root), mismatch);
                }
                // Another index of the same tree takes another route, so it must fail.
                let others = [
                    0,
                    size - 1,
                    index ^ 1,
                    index ^ 2,
                    index.wrapping_sub(1),
                    index + 1,
                    index ^ (1 << (ceil_log2(size).max(1) - 1)),
                ];
                for other in others.into_iter().filter(|&o| o != index && o < size) {
                    let check = verify_inclusion(other, size, &leaf, &proof, &root);
                    assert!(check.is_err(), "index {other} accepted for ({index}, {size})");
                }
                assert_eq!(
                    verify_inclusion(size, size, &leaf, &proof, &root),
                    Err(MerkleError::IndexOutOfRange { index: size, size })
                );
                // Another size is rejected exactly when it changes the proof's shape: a proof
                // only encodes left/right steps, so same-shape sizes are indistinguishable to
                // any RFC 9162 verifier (a checkpoint signs the size together with the root).
                let shape = ref_path_shape(index as usize, size as usize);
                let others = [size / 2, size - 1, size + 1, size + 2, size * 2, size.next_power_of_two()];
                for other in others.into_iter().filter(|&o| o != size && o > index) {
                    let check = verify_inclusion(index, other, &leaf, &proof, &root);
                    let same = ref_path_shape(index as usize, other as usize) == shape;
                    assert_eq!(check.is_ok(), same, "({index}, {other}) vs size {size}");
                }
            }
        }
    }

    #[test]
    fn consistency_every_pair_up_to_64() {
        let all = test_leaves(64);
        let roots: Vec<Hash> = (0..=64).map(|n| root_of(&all[..n])).collect();
        let table = node_table(&all);
        for new_size in 1..=64u64 {
            let tree = &all[..new_size as usize];
            let new_root = roots[new_size as usize];
            for old_size in 1..=new_size {
                let old_root = roots[old_size as usize];
                let proof = consistency_proof(old_size, tree).unwrap();
                if old_size < new_size {
                    let want = ref_subproof(old_size as usize, tree, true);
                    assert_eq!(proof, want, "({old_size}, {new_size})");
                } else {
                    assert!(proof.is_empty());
                }
                let calls = Cell::new(0);
                let source = table_source(&table, new_size, &calls);
                let with = consistency_proof_with(old_size, new_size, source).unwrap();
                assert_eq!(with, proof);
                assert!(calls.get() <= 2 * ceil_log2(new_size), "{} calls", calls.get());
                let check = verify_consistency(old_size, new_size, &old_root, &new_root, &proof);
                assert_eq!(check, Ok(()), "({old_size}, {new_size})");

                let old_mismatch = Err(MerkleError::OldRootMismatch { old_size, new_size });
                let new_mismatch = Err(MerkleError::NewRootMismatch { old_size, new_size });
                for (i, hash) in proof.iter().enumerate() {
                    for bit in FLIP_BITS {
                        let mut bad = proof.clone();
                        bad[i] = flip(hash, bit);
                        let check = verify_consistency(old_size, new_size, &old_root, &new_root, &bad);
                        assert!(check == old_mismatch || check == new_mismatch, "{check:?}");
                    }
                }
                let trivial = old_size == new_size;
                for bit in FLIP_BITS {
                    let bad_old = flip(&old_root, bit);
                    let check = verify_consistency(old_size, new_size, &bad_old, &new_root, &proof);
                    let want =
                        if trivial || old_size.is_power_of_two() { new_mismatch } else { old_mismatch };
                    assert_eq!(check, want);
                    let bad_new = flip(&new_root, bit);
                    let check = verify_consistency(old_size, new_size, &old_root, &bad_new, &proof);
                    assert_eq!(check, new_mismatch);
                }
                // A neighbouring size pair is rejected exactly when it changes the proof's
                // shape (same-shape pairs such as (1, 3) and (1, 4) are indistinguishable to
                // any RFC 9162 verifier; a checkpoint signs each size together with its root).
                let shape = ref_consistency_shape(old_size as usize, new_size as usize, true);
                let neighbours = [
                    (old_size - 1, new_size),
                    (old_size + 1, new_size),
                    (old_size, new_size - 1),
                    (old_size, new_size + 1),
                ];
                for (bad_old, bad_new) in neighbours {
                    let check = verify_consistency(bad_old, bad_new, &old_root, &new_root, &proof);
                    let same = 0 < bad_old
                        && bad_old < bad_new
                        && old_size < new_size
                        && ref_consistency_shape(bad_old as usize, bad_new as usize, true) == shape;
                    assert_eq!(check.is_ok(), same, "({bad_old}, {bad_new}) vs ({old_size}, {new_size})");
                }
            }
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum StoreError {
        Missing(u64, u64),
        Merkle(MerkleError),
    }

    impl From<MerkleError> for StoreError {
        fn from(err: MerkleError) -> Self {
            Self::Merkle(err)
        }
    }

    #[test]
    fn source_errors_flow_through() {
        let failing = |start, len| Err::<Hash, _>(StoreError::Missing(start, len));
        assert_eq!(inclusion_proof_with(5, 8, failing), Err(StoreError::Missing(4, 1)));
        assert_eq!(consistency_proof_with(3, 8, failing), Err(StoreError::Missing(2, 1)));
        assert_eq!(root_with(8, failing), Err(StoreError::Missing(0, 8)));
        // A `&mut dyn FnMut` source (e.g. a boxed database reader) works as well.
        let leaves = golden_leaves();
        let mut reads = 0;
        let mut store = |start: u64, len: u64| -> Result<Hash, StoreError> {
            reads += 1;
            Ok(root_of(&leaves[start as usize..(start + len) as usize]))
        };
        let dyn_source: &mut dyn FnMut(u64, u64) -> Result<Hash, StoreError> = &mut store;
        let proof = inclusion_proof_with(5, 8, dyn_source).unwrap();
        assert_eq!(proof, hs(INCLUSION_VECTORS[2].2));
        assert_eq!(reads, 3);
        assert_eq!(Frontier::load_with(6, failing), Err(StoreError::Missing(0, 4)));
        assert_eq!(
            inclusion_proof_with(8, 8, failing),
            Err(StoreError::Merkle(MerkleError::IndexOutOfRange { index: 8, size: 8 }))
        );
        assert_eq!(
            consistency_proof_with(9, 8, failing),
            Err(StoreError::Merkle(MerkleError::OldSizeExceedsNewSize { old_size: 9, new_size: 8 }))
        );
        assert_eq!(
            slice_subtree(&golden_leaves(), 6, 4),
            Err(MerkleError::SizeExceedsLeaves { size: 10, available: 8 })
        );
    }

    #[test]
    fn frontier_matches_reference_for_sizes_0_to_300() {
        let all = test_leaves(300);
        let mut frontier = Frontier::new();
        for size in 0..=300usize {
            if size > 0 {
                frontier.push(all[size - 1]);
            }
            let want = ref_mth(&all[..size]);
            assert_eq!(frontier.size(), size as u64);
            assert_eq!(frontier.root(), want, "size {size}");
            assert_eq!(root_of(&all[..size]), want, "root_of size {size}");
            let calls = Cell::new(0);
            let with = root_with(size as u64, slice_source(&all, &calls)).unwrap();
            assert_eq!(with, want);
            assert_eq!(calls.get(), (size as u64).count_ones() as usize);
        }
    }

    #[test]
    fn frontier_reports_completed_subtrees_and_restores() {
        let all = test_leaves(70);
        let mut frontier = Frontier::new();
        for (index, leaf) in all.iter().enumerate() {
            let mut reported = Vec::new();
            frontier.push_with(*leaf, |start, len, hash| reported.push((start, len, *hash)));
            let ranges: Vec<(u64, u64)> = reported.iter().map(|&(s, l, _)| (s, l)).collect();
            let want: Vec<(u64, u64)> = completed_subtrees(index as u64).collect();
            assert_eq!(ranges, want, "leaf {index}");
            for (start, len, hash) in reported {
                assert_eq!(hash, ref_mth(&all[start as usize..(start + len) as usize]));
            }
            let size = frontier.size();
            let restored = Frontier::from_subtrees(size, frontier.subtrees().to_vec()).unwrap();
            assert_eq!(restored, frontier);
            let calls = Cell::new(0);
            let loaded = Frontier::load_with(size, slice_source(&all, &calls)).unwrap();
            assert_eq!(loaded, frontier);
        }
        assert_eq!(
            Frontier::from_subtrees(7, vec![empty_root(); 2]),
            Err(MerkleError::FrontierLength { size: 7, expected: 3, got: 2 })
        );
    }

    #[test]
    fn completed_subtrees_first_64_leaves() {
        for index in 0..64u64 {
            let end = index + 1;
            let brute: Vec<(u64, u64)> =
                (0..7).map(|k| 1u64 << k).filter(|len| end % len == 0).map(|len| (end - len, len)).collect();
            assert_eq!(completed_subtrees(index).collect::<Vec<_>>(), brute);
        }
        assert_eq!(completed_subtrees(0).collect::<Vec<_>>(), vec![(0, 1)]);
        assert_eq!(completed_subtrees(7).collect::<Vec<_>>(), vec![(7, 1), (6, 2), (4, 4), (0, 8)]);
        assert_eq!(completed_subtrees(10).collect::<Vec<_>>(), vec![(10, 1)]);
        // Together they are every aligned perfect subtree of a 64-leaf tree, each once.
        let mut all: Vec<(u64, u64)> = (0..64).flat_map(completed_subtrees).collect();
        all.sort_unstable();
        let mut want: Vec<(u64, u64)> =
            (0..7).map(|k| 1u64 << k).flat_map(|len| (0..64 / len).map(move |i| (i * len, len))).collect();
        want.sort_unstable();
        assert_eq!(all, want);
        // The unrepresentable 2^64 subtree is left out rather than overflowing.
        assert_eq!(completed_subtrees(u64::MAX).count(), 64);
        assert_eq!(completed_subtrees(u64::MAX).last(), Some((1u64 << 63, 1u64 << 63)));
    }

    #[test]
    fn perfect_subtrees_decompose_the_size() {
        assert_eq!(perfect_subtrees(0).count(), 0);
        assert_eq!(perfect_subtrees(13).collect::<Vec<_>>(), vec![(0, 8), (8, 4), (12, 1)]);
        assert_eq!(perfect_subtrees(u64::MAX).count(), 64);
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let msg = MerkleError::IndexOutOfRange { index: 9, size: 4 }.to_string();
        assert_eq!(
            msg,
            "leaf index 9 is out of range for a tree of size 4: ask for an index below the tree \
             size, or use a newer (larger) tree head"
        );
        let msg = MerkleError::InclusionProofLength { index: 1, size: 5, expected: 3, got: 4 }.to_string();
        assert_eq!(
            msg,
            "inclusion proof for leaf 1 in a tree of size 5 must hold 3 hashes but holds 4: the \
             proof is malformed or was made for another index or tree size"
        );
    }

    proptest! {
        // Debug-build SHA-256 is slow; 128 cases keep the whole suite well under 10 s.
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn frontier_equals_reference_on_random_leaves(
            leaves in prop::collection::vec(any::<[u8; 32]>(), 0..200),
            split in any::<prop::sample::Index>(),
        ) {
            let mut frontier = Frontier::new();
            for leaf in &leaves {
                frontier.push(*leaf);
            }
            prop_assert_eq!(frontier.root(), ref_mth(&leaves));
            prop_assert_eq!(root_of(&leaves), ref_mth(&leaves));
            // Restoring from stored subtrees at any size and appending the rest gives the same.
            let cut = split.index(leaves.len() + 1);
            let calls = Cell::new(0);
            let mut resumed =
                Frontier::load_with(cut as u64, slice_source(&leaves, &calls)).unwrap();
            for leaf in &leaves[cut..] {
                resumed.push(*leaf);
            }
            prop_assert_eq!(resumed, frontier);
        }

        #[test]
        fn random_single_bit_flips_are_rejected(
            size in 1u64..300,
            pick in any::<prop::sample::Index>(),
            old_pick in any::<prop::sample::Index>(),
            which in any::<prop::sample::Index>(),
            bit in 0usize..256,
        ) {
            let leaves = test_leaves(size);
            let root = root_of(&leaves);
            let index = pick.index(size as usize) as u64;
            let leaf = leaves[index as usize];
            let proof = inclusion_proof(index, &leaves).unwrap();
            prop_assert_eq!(verify_inclusion(index, size, &leaf, &proof, &root), Ok(()));
            let mismatch = Err(MerkleError::InclusionRootMismatch { index, size });
            // Item 0 is the leaf, 1 the root, the rest the proof hashes.
            let target = which.index(proof.len() + 2);
            let (mut leaf2, mut root2, mut proof2) = (leaf, root, proof.clone());
            match target {
                0 => leaf2 = flip(&leaf, bit),
                1 => root2 = flip(&root, bit),
                t => proof2[t - 2] = flip(&proof[t - 2], bit),
            }
            prop_assert_eq!(verify_inclusion(index, size, &leaf2, &proof2, &root2), mismatch);

            let old_size = old_pick.index(size as usize) as u64 + 1;
            let old_root = root_of(&leaves[..old_size as usize]);
            let proof = consistency_proof(old_size, &leaves).unwrap();
            let check = verify_consistency(old_size, size, &old_root, &root, &proof);
            prop_assert_eq!(check, Ok(()));
            let target = which.index(proof.len() + 2);
            let (mut old2, mut new2, mut proof2) = (old_root, root, proof.clone());
            match target {
                0 => old2 = flip(&old_root, bit),
                1 => new2 = flip(&root, bit),
                t => proof2[t - 2] = flip(&proof[t - 2], bit),
            }
            prop_assert!(verify_consistency(old_size, size, &old2, &new2, &proof2).is_err());
        }
    }
}
