//! Receipts (docs/FORMAT.md §8): built here from the database; the format and its offline check are the core's
//! ([`anchorlog_core::receipt`]), shared with the browser console.
//!
//! The receipt names the earliest signed head that covers the event, so it never changes once issued; a later
//! head is linked to it by a consistency proof (`GET /v1/proofs/consistency`).

use crate::store::{self, StoreError};
use anchorlog_core::head::Checkpoint;
use anchorlog_core::receipt::{Receipt, ReceiptHead, RECEIPT_FORMAT, RECEIPT_VERSION};
use anchorlog_core::stored::{ErasureRecord, StoredEvent, StoredHead};
use anchorlog_core::verify::erasure::ErasureRecordProof;
use anchorlog_core::verify::keys::KeyRotationProof;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rusqlite::Connection;

/// Why a receipt could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// No such event.
    #[error("no event with seq {0}")]
    NoSuchEvent(u64),
    /// No signed head covers the event yet.
    #[error("event seq {0} is not yet covered by a signed head; retry after the next seal")]
    NotSealed(u64),
    /// Reading failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds the receipt of event `seq` from the database (`O(log n)` reads).
pub fn build(conn: &Connection, seq: u64) -> Result<Receipt, ReceiptError> {
    let ev = store::event(conn, seq)?.ok_or(ReceiptError::NoSuchEvent(seq))?;
    let head = store::covering_head(conn, seq)?.ok_or(ReceiptError::NotSealed(seq))?;
    let proof = store::tree::inclusion_proof(conn, seq, head.tree_size)?;
    let erasure = if ev.body.is_none() { store::erasure::erasure(conn, seq)? } else { None };
    let erasure_record = match &erasure {
        Some(e) => Some(
            crate::bundle::export::erasure_record_proof(conn, seq, e.erasure_seq, head.tree_size)?
                .ok_or(ReceiptError::NotSealed(e.erasure_seq))?,
        ),
        None => None,
    };
    let key_rotations =
        crate::bundle::export::key_rotation_proofs(conn, 0, reach(&erasure_record, &head), head.tree_size)?;
    // The head's token and cosignatures as far as they are stored (both follow the seal within seconds, and are
    // back-filled when the TSA or a witness was down).
    let token = store::timestamp(conn, head.height)?.map(|t| t.response);
    let cosignatures = store::cosignatures::of_head(conn, head.height)?.into_iter().map(|c| c.line).collect();
    Ok(assemble(Parts { seq, ev, head, proof, erasure, erasure_record, key_rotations, token, cosignatures }))
}

/// [`build`] on PostgreSQL, from the same reads (run it inside one snapshot: `store::reads::LogReads::receipt`).
#[cfg(feature = "postgres")]
pub async fn build_pg(c: &impl tokio_postgres::GenericClient, seq: u64) -> Result<Receipt, ReceiptError> {
    use crate::store::pg::{evidence, read, tree};
    let ev = read::event(c, seq).await?.ok_or(ReceiptError::NoSuchEvent(seq))?;
    let head = read::covering_head(c, seq).await?.ok_or(ReceiptError::NotSealed(seq))?;
    let proof = tree::inclusion_proof(c, seq, head.tree_size).await?;
    let erasure = if ev.body.is_none() { read::erasure(c, seq).await? } else { None };
    let erasure_record = match &erasure {
        Some(e) => Some(
            evidence::erasure_record_proof(c, seq, e.erasure_seq, head.tree_size)
                .await?
                .ok_or(ReceiptError::NotSealed(e.erasure_seq))?,
        ),
        None => None,
    };
    let key_rotations =
        evidence::key_rotation_proofs(c, 0, reach(&erasure_record, &head), head.tree_size).await?;
    let token = read::timestamp(c, head.height).await?.map(|t| t.response);
    let cosignatures =
        read::cosignatures_of_head(c, head.height).await?.into_iter().map(|c| c.line).collect();
    Ok(assemble(Parts { seq, ev, head, proof, erasure, erasure_record, key_rotations, token, cosignatures }))
}

#[cfg(feature = "postgres")]
impl From<crate::store::pg::PgError> for ReceiptError {
    fn from(e: crate::store::pg::PgError) -> Self {
        ReceiptError::Store(e.into())
    }
}

/// Every rotation under a head up to the newest one this receipt relies on: the covering head's tree size, or the
/// erasure record's head's if that is larger.
fn reach(erasure_record: &Option<ErasureRecordProof>, head: &StoredHead) -> u64 {
    erasure_record
        .as_ref()
        .and_then(|p| Checkpoint::parse(&p.head.checkpoint).ok())
        .map_or(head.tree_size, |cp| cp.tree_size.max(head.tree_size))
}

/// What a receipt is made of, read from either store.
struct Parts {
    seq: u64,
    ev: StoredEvent,
    head: StoredHead,
    proof: Vec<[u8; 32]>,
    erasure: Option<ErasureRecord>,
    erasure_record: Option<ErasureRecordProof>,
    key_rotations: Vec<KeyRotationProof>,
    token: Option<Vec<u8>>,
    cosignatures: Vec<String>,
}

fn assemble(p: Parts) -> Receipt {
    let Parts { seq, ev, head, proof, erasure, erasure_record, key_rotations, token, cosignatures } = p;
    Receipt {
        format: RECEIPT_FORMAT.into(),
        version: RECEIPT_VERSION,
        seq,
        entry: String::from_utf8_lossy(&ev.entry).into_owned(),
        leaf_hash: B64.encode(ev.leaf_hash),
        salt: ev.salt.as_ref().map(|s| B64.encode(s)),
        body: ev.body.as_ref().map(|b| B64.encode(b)),
        erasure,
        erasure_record,
        head: ReceiptHead {
            height: head.height,
            tree_size: head.tree_size,
            checkpoint: head.checkpoint,
            signature: B64.encode(&head.signature),
            key_id: head.key_id,
            timestamp_token: token.map(|t| B64.encode(t)),
            cosignatures,
        },
        inclusion_proof: proof.iter().map(|h| B64.encode(h)).collect(),
        key_rotations,
    }
}
