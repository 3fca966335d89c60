//! Receipts: one self-contained JSON document proving that one event is in the log under a signed head
//! (docs/FORMAT.md §8), and its offline check. Building one reads the database: that is the appliance's
//! (`anchorlog::receipt::build`).
//!
//! The receipt names the earliest signed head that covers the event, so it never changes once issued; a later
//! head is linked to it by a consistency proof (`GET /v1/proofs/consistency`).

use crate::head::Checkpoint;
use crate::key::PublicKey;
use crate::merkle::{self, Hash};
use crate::stored::{ErasureRecord, StoredEvent};
use crate::verify::erasure::{check_erasure_record_proof, AnchorHead, ErasureRecordProof};
use crate::verify::keys::{
    follow_ring_rotation_proofs, follow_rotation_proofs, HeadKeys, KeyRotationProof, RotationReport,
};
use crate::verify::timestamps::{verify_head_tokens, HeadToken, TimestampPolicy, TimestampReport};
use crate::verify::witnesses::{WitnessCheck, WitnessPolicy, WitnessReport};
use crate::verify::{check_event, Failure};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `format` of a receipt.
pub const RECEIPT_FORMAT: &str = "anchorlog-receipt";
/// `version` of a receipt this build writes; it reads versions 1 and 2. 2: an erased event's receipt carries
/// the appliance's erasure record with its proofs (`erasure_record`), without which it does not verify.
pub const RECEIPT_VERSION: u64 = 2;

/// The signed head a receipt proves inclusion under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptHead {
    /// Height.
    pub height: u64,
    /// Tree size.
    pub tree_size: u64,
    /// The exact signed checkpoint text.
    pub checkpoint: String,
    /// Base64 DER ECDSA signature over `checkpoint`.
    pub signature: String,
    /// Hex key id of the signer.
    pub key_id: String,
    /// Base64 RFC 3161 TimeStampResp over the checkpoint, when the head has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_token: Option<String>,
    /// The witnesses' cosignature lines of the head as stored when the receipt was issued (`— <name> <base64>`,
    /// without newline; docs/FORMAT.md §16.6); absent when there were none yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cosignatures: Vec<String>,
}

/// A receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// [`RECEIPT_FORMAT`].
    pub format: String,
    /// [`RECEIPT_VERSION`].
    pub version: u64,
    /// Sequence number (= leaf index).
    pub seq: u64,
    /// The exact canonical entry text.
    pub entry: String,
    /// Base64 leaf hash (`SHA-256(0x00 ‖ entry)`).
    pub leaf_hash: String,
    /// Base64 salt, `null` once erased.
    pub salt: Option<String>,
    /// Base64 body, `null` once erased.
    pub body: Option<String>,
    /// The erasure row of an erased event (who, when, why, and the seq of its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureRecord>,
    /// The appliance's erasure record of an erased event, with its inclusion under a signed head and that
    /// head's consistency with `head` (docs/FORMAT.md §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure_record: Option<ErasureRecordProof>,
    /// The signed head.
    pub head: ReceiptHead,
    /// Base64 RFC 9162 inclusion proof of leaf `seq` in the tree of size `head.tree_size`.
    pub inclusion_proof: Vec<String>,
    /// The log's key rotation records up to the newest head the receipt relies on (`head`, or the erasure record's
    /// head), each with its proofs against `head` (docs/FORMAT.md §20): they lead a verifier that holds the log's
    /// first key to the key of `head`. Absent when the log never rotated its key before then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_rotations: Vec<KeyRotationProof>,
}

/// What a verified receipt proves.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptReport {
    /// The event.
    pub seq: u64,
    /// Whether its payload was erased.
    pub erased: bool,
    /// The head it is included under.
    pub height: u64,
    /// That head's tree size.
    pub tree_size: u64,
    /// The log's origin.
    pub origin: String,
    /// The key that signed the head.
    pub key_id: String,
    /// The key rotations followed from the given key to it.
    pub rotations: Vec<RotationReport>,
    /// The head's token check, when a TSA CA was given ([`verify_with`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TimestampReport>,
    /// The head's cosignature check, when witnesses were listed ([`verify_witnessed`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witnesses: Option<WitnessReport>,
}

fn b64(s: &str, seq: u64, what: &str) -> Result<Vec<u8>, Failure> {
    B64.decode(s).map_err(|_| Failure::EntryMalformed { seq, reason: format!("{what} is not base64") })
}

/// Checks a receipt offline against the signer's public key: the entry and payload, the leaf, the
/// signature over the head, and the inclusion proof to the head's root. The token is not checked.
pub fn verify(r: &Receipt, key: &PublicKey) -> Result<ReceiptReport, Failure> {
    verify_with(r, key, None)
}

/// [`verify`], and with `tsa` also the head's RFC 3161 token (after the head's signature verified); a
/// receipt without a token is reported, or fails with [`TimestampPolicy::require`].
pub fn verify_with(
    r: &Receipt,
    key: &PublicKey,
    tsa: Option<&TimestampPolicy>,
) -> Result<ReceiptReport, Failure> {
    verify_pinned(r, key, None, tsa)
}

/// [`verify_with`], and the head must carry `origin` when given (the auditor's log, not another one signed
/// by the same key).
pub fn verify_pinned(
    r: &Receipt,
    key: &PublicKey,
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
) -> Result<ReceiptReport, Failure> {
    verify_witnessed(r, key, origin, tsa, None)
}

/// [`verify_pinned`], and with `witnesses` also the head's cosignatures: every listed witness's line must verify
/// and the head must carry the policy's quorum (docs/FORMAT.md §16.6). A receipt fetched in the second after its
/// head was sealed may not carry them yet: fetch it again.
pub fn verify_witnessed(
    r: &Receipt,
    key: &PublicKey,
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
) -> Result<ReceiptReport, Failure> {
    verify_keys(r, std::slice::from_ref(key), origin, tsa, witnesses)
}

/// [`verify_witnessed`] trusting any of `keys` as a key of the log: the head must be signed by one of them, or by
/// a key the receipt's rotation records lead to from one of them (docs/FORMAT.md §20).
pub fn verify_keys(
    r: &Receipt,
    keys: &[PublicKey],
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
) -> Result<ReceiptReport, Failure> {
    verify_signers(r, keys, false, origin, tsa, witnesses)
}

/// [`verify_keys`] with `ring` a keyring (docs/FORMAT.md §20, "Keyrings"): the head may be signed by any key of
/// the ring that no rotation record retired before it, or by a key a rotation brought into the ring before it.
pub fn verify_keyring(
    r: &Receipt,
    ring: &[PublicKey],
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
) -> Result<ReceiptReport, Failure> {
    verify_signers(r, ring, true, origin, tsa, witnesses)
}

fn verify_signers(
    r: &Receipt,
    keys: &[PublicKey],
    keyring: bool,
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
) -> Result<ReceiptReport, Failure> {
    let seq = r.seq;
    if r.format != RECEIPT_FORMAT || !(1..=RECEIPT_VERSION).contains(&r.version) {
        return Err(Failure::EntryMalformed {
            seq,
            reason: format!("not a {RECEIPT_FORMAT} of version 1 to {RECEIPT_VERSION}"),
        });
    }
    let leaf = <[u8; 32]>::try_from(b64(&r.leaf_hash, seq, "leaf_hash")?)
        .map_err(|_| Failure::LeafHashMismatch { seq })?;
    let ev = StoredEvent {
        seq,
        entry: r.entry.as_bytes().to_vec(),
        leaf_hash: leaf,
        salt: r.salt.as_deref().map(|s| b64(s, seq, "salt")).transpose()?,
        body: r.body.as_deref().map(|s| b64(s, seq, "body")).transpose()?,
    };
    let (_, erased) = check_event(&ev)?;
    let height = r.head.height;
    let cp = Checkpoint::parse(&r.head.checkpoint)
        .map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
    if cp.height != height || cp.tree_size != r.head.tree_size {
        return Err(Failure::HeadMalformed {
            height,
            reason: "head fields disagree with the checkpoint".into(),
        });
    }
    if let Some(expected) = origin.filter(|o| *o != cp.origin) {
        return Err(Failure::OriginMismatch { height, found: cp.origin, expected: expected.into() });
    }
    let reference = AnchorHead { height, tree_size: cp.tree_size, root: cp.root, origin: &cp.origin };
    let followed = if keyring {
        follow_ring_rotation_proofs(keys, &r.key_rotations, &reference)?
    } else {
        follow_rotation_proofs(keys, &r.key_rotations, &reference)?
    };
    let head_keys = HeadKeys { followed, trusted: keys, known: &[] };
    let sig = B64.decode(&r.head.signature).unwrap_or_default();
    let signer = head_keys.check(height, &r.head.checkpoint, &sig)?;
    let proof = r
        .inclusion_proof
        .iter()
        .map(|p| B64.decode(p).ok().and_then(|v| <Hash>::try_from(v).ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or(Failure::InclusionProofInvalid { seq, height })?;
    merkle::verify_inclusion(seq, cp.tree_size, &leaf, &proof, &cp.root)
        .map_err(|_| Failure::InclusionProofInvalid { seq, height })?;
    if erased {
        // The payload is gone: only the appliance's signed erasure record of this very event accounts for it.
        let named = r.erasure.as_ref().map(|e| e.erasure_seq);
        let record =
            r.erasure_record.as_ref().filter(|p| p.erased_seq == seq && named.is_none_or(|e| e == p.seq));
        let Some(record) = record else {
            return Err(match (named, &r.erasure_record) {
                (Some(e), None) => Failure::ErasureRecordMissing { seq, erasure_seq: e },
                (_, Some(p)) => Failure::ErasureRecordMismatch { seq, erasure_seq: p.seq },
                (None, None) => Failure::UnrecordedErasure { seq },
            });
        };
        check_erasure_record_proof(record, &reference, &head_keys)?;
    }
    let timestamp = match tsa {
        Some(policy) => {
            let der = match &r.head.timestamp_token {
                Some(t) => Some(B64.decode(t).map_err(|_| Failure::BadTimestamp {
                    height,
                    reason: "timestamp_token is not base64".into(),
                })?),
                None => None,
            };
            let head = HeadToken {
                height,
                checkpoint: &r.head.checkpoint,
                sealed_at_ms: cp.time_ms,
                response: der.as_deref(),
            };
            // A receipt carries no outage records: a late token fails here; the bundle of its range shows
            // whether the log recorded an outage around it.
            Some(verify_head_tokens([head], policy, &[])?)
        }
        None => None,
    };
    let witnesses = match witnesses {
        Some(policy) => {
            let lines = r
                .head
                .cosignatures
                .iter()
                .map(|l| crate::note::NoteSignature::parse_line(l))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::HeadMalformed { height, reason: format!("a cosignature line: {e}") })?;
            let mut check = WitnessCheck::new(policy);
            check.head(height, &r.head.checkpoint, cp.time_ms, &lines)?;
            Some(check.finish(height)?)
        }
        None => None,
    };
    let rotations = head_keys.followed.rotations;
    Ok(ReceiptReport {
        seq,
        erased,
        height,
        tree_size: cp.tree_size,
        key_id: signer.key_id,
        rotations,
        origin: cp.origin,
        timestamp,
        witnesses,
    })
}
