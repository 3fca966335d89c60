//! Erasure records that travel outside the range they account for (docs/FORMAT.md §10).
//!
//! An erased payload verifies only when the appliance's erasure record naming it is covered by a verified
//! head. Inside a database or a bundle the walk meets the record itself ([`super::records`]). When the record
//! lies past what the evidence holds — an erasure made after the bundle's last head, or the record of an erased
//! event in a receipt — the evidence carries an [`ErasureRecordProof`]: the record's entry and body, the
//! earliest signed head covering it, an inclusion proof into that head, and a consistency proof from the head
//! the evidence is anchored at to that head, so the record is shown to be in the same log, later.

use super::keys::HeadKeys;
use super::{check_parts, Failure, OwnRecord};
use crate::head::Checkpoint;
use crate::merkle::{self, Hash};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A signed head as carried in a record proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofHead {
    /// Its height.
    pub height: u64,
    /// The exact signed checkpoint text.
    pub checkpoint: String,
    /// Base64 DER ECDSA signature over `checkpoint`.
    pub signature: String,
}

/// The appliance's erasure record of one erased event, with what proves it is in the log under a signed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecordProof {
    /// The erased event this record accounts for.
    pub erased_seq: u64,
    /// The record's own seq (always later).
    pub seq: u64,
    /// The record's exact canonical entry.
    pub entry: String,
    /// Base64 salt of the record's body.
    pub salt: String,
    /// Base64 body of the record (`{"type":"anchorlog.erasure","erased_seq":…,…}`).
    pub body: String,
    /// The earliest signed head whose tree covers `seq`.
    pub head: ProofHead,
    /// Base64 RFC 9162 inclusion proof of leaf `seq` in `head`'s tree.
    pub inclusion_proof: Vec<String>,
    /// Base64 RFC 9162 consistency proof from the anchor head's tree (the bundle's last head, the receipt's
    /// head) to `head`'s tree (empty when they are the same size).
    pub consistency_proof: Vec<String>,
}

/// The verified head the evidence is anchored at, which the record's head must extend.
#[derive(Debug, Clone, Copy)]
pub struct AnchorHead<'a> {
    /// Its height.
    pub height: u64,
    /// Its tree size.
    pub tree_size: u64,
    /// Its root.
    pub root: Hash,
    /// The log's origin.
    pub origin: &'a str,
}

fn hashes(items: &[String]) -> Option<Vec<Hash>> {
    items.iter().map(|p| B64.decode(p).ok().and_then(|v| <Hash>::try_from(v).ok())).collect()
}

/// Checks that `p` is the appliance's erasure record of `p.erased_seq`, under a head that extends `anchor` and is
/// signed by the key `keys` hold for its height. The failure names the erased event, or the head or record at
/// fault.
pub fn check_erasure_record_proof(
    p: &ErasureRecordProof,
    anchor: &AnchorHead<'_>,
    keys: &HeadKeys<'_>,
) -> Result<(), Failure> {
    let mismatch = Failure::ErasureRecordMismatch { seq: p.erased_seq, erasure_seq: p.seq };
    if p.seq <= p.erased_seq {
        return Err(mismatch);
    }
    let decode = |s: &str| B64.decode(s).map_err(|_| mismatch.clone());
    let (salt, body) = (decode(&p.salt)?, decode(&p.body)?);
    let leaf = merkle::leaf_hash(p.entry.as_bytes());
    let (facts, _) = check_parts(p.seq, p.entry.as_bytes(), &leaf, Some(&salt), Some(&body))?;
    if OwnRecord::of(facts.appliance, Some(&body))
        != Some(OwnRecord::Erasure { erased_seq: Some(p.erased_seq) })
    {
        return Err(mismatch);
    }
    let height = p.head.height;
    let cp = Checkpoint::parse(&p.head.checkpoint)
        .map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
    if cp.height != height {
        return Err(Failure::HeadMalformed {
            height,
            reason: format!("the text is head height {}", cp.height),
        });
    }
    if cp.origin != anchor.origin {
        return Err(Failure::OriginMismatch { height, found: cp.origin, expected: anchor.origin.into() });
    }
    let sig = B64.decode(&p.head.signature).unwrap_or_default();
    keys.check(height, &p.head.checkpoint, &sig)?;
    if height < anchor.height || cp.tree_size <= p.seq {
        return Err(Failure::HeadMalformed {
            height,
            reason: format!(
                "the head proving erasure record seq {} must be at or after height {} and cover it",
                p.seq, anchor.height
            ),
        });
    }
    let inclusion =
        hashes(&p.inclusion_proof).ok_or(Failure::InclusionProofInvalid { seq: p.seq, height })?;
    merkle::verify_inclusion(p.seq, cp.tree_size, &leaf, &inclusion, &cp.root)
        .map_err(|_| Failure::InclusionProofInvalid { seq: p.seq, height })?;
    let consistency = hashes(&p.consistency_proof)
        .ok_or(Failure::ConsistencyProofInvalid { height, from_size: anchor.tree_size })?;
    merkle::verify_consistency(anchor.tree_size, cp.tree_size, &anchor.root, &cp.root, &consistency)
        .map_err(|_| Failure::ConsistencyProofInvalid { height, from_size: anchor.tree_size })?;
    Ok(())
}
