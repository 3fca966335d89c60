//! Evidence assembled from several reads on PostgreSQL: the proofs a receipt and `GET /v1/key-rotations` carry (the
//! counterparts of `bundle::export::erasure_record_proof` and `key_rotation_proofs`, same results and errors). Run
//! them inside one snapshot (`store::reads::LogReads` does) so the head and the proofs against it agree.

use super::{read, tree, PgError};
use crate::bundle::export::ProvenRecord;
use anchorlog_core::verify::erasure::ErasureRecordProof;
use anchorlog_core::verify::keys::KeyRotationProof;
use tokio_postgres::GenericClient;

/// The erasure record (at `erasure_seq`) of the payload of `erased_seq`, with its inclusion in the earliest head
/// covering it and that head's consistency with the tree of size `anchor_size`; `None` while no head covers it.
pub async fn erasure_record_proof(
    c: &impl GenericClient,
    erased_seq: u64,
    erasure_seq: u64,
    anchor_size: u64,
) -> Result<Option<ErasureRecordProof>, PgError> {
    let missing = |what: &str| PgError::Corrupt {
        table: "events",
        key: erasure_seq,
        problem: format!("the erasure record of seq {erased_seq} {what}"),
    };
    let record = read::event(c, erasure_seq).await?.ok_or_else(|| missing("is missing"))?;
    let (Some(salt), Some(body)) = (record.salt, record.body) else { return Err(missing("has no payload")) };
    let Some(head) = read::covering_head(c, erasure_seq).await? else { return Ok(None) };
    let inclusion = tree::inclusion_proof(c, erasure_seq, head.tree_size).await?;
    let consistency = tree::consistency_proof(c, anchor_size, head.tree_size).await?;
    let proven = ProvenRecord { entry: record.entry, salt, body, head, inclusion, consistency };
    Ok(Some(proven.into_erasure(erased_seq, erasure_seq)))
}

/// The key rotation records at seqs `from..to` with their proofs against the tree of size `reference_size`
/// (see `bundle::export::key_rotation_proofs`); a record no head covers yet is left out.
pub async fn key_rotation_proofs(
    c: &impl GenericClient,
    from: u64,
    to: u64,
    reference_size: u64,
) -> Result<Vec<KeyRotationProof>, PgError> {
    let mut out = Vec::new();
    for seq in read::rotation_seqs(c).await?.into_iter().filter(|s| (from..to).contains(s)) {
        let corrupt = |problem: &str| PgError::Corrupt {
            table: "events",
            key: seq,
            problem: format!("the key rotation record {problem}"),
        };
        let record = read::event(c, seq).await?.ok_or_else(|| corrupt("is missing"))?;
        let (Some(salt), Some(body)) = (record.salt, record.body) else {
            return Err(corrupt("has no payload"));
        };
        let Some(head) = read::covering_head(c, seq).await? else { continue };
        let inclusion = tree::inclusion_proof(c, seq, head.tree_size).await?;
        let (small, large) = (head.tree_size.min(reference_size), head.tree_size.max(reference_size));
        let consistency = tree::consistency_proof(c, small, large).await?;
        out.push(
            ProvenRecord { entry: record.entry, salt, body, head, inclusion, consistency }.into_rotation(seq),
        );
    }
    Ok(out)
}
