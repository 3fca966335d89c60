//! The chain of head-signing keys (docs/FORMAT.md §20): a log starts with one key, and a key changes only through
//! the appliance's key rotation record, the last event of the last head the old key signs. Trust passes from the
//! old key to the new one on that record, which the old key signed; a verifier given the log's first key follows
//! every rotation from there.
//!
//! Inside a database or bundle the walk meets the records themselves ([`super::walk`]). Evidence that starts after
//! a rotation (a bundle's anchor, a receipt's head) or reaches past its range (an erasure record proof's head)
//! carries each rotation as a [`KeyRotationProof`]: the record, the head that ends with it, its inclusion proof
//! and a consistency proof to the evidence's reference head, so the chain is followed from the verifier's key
//! without the events in between ([`follow_rotation_proofs`]).

use super::erasure::{AnchorHead, ProofHead};
use super::{check_parts, Failure, OwnRecord};
use crate::head::Checkpoint;
use crate::key::PublicKey;
use crate::merkle::{self, Hash};
use crate::record_types as types;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Longest `reason` of a rotation record, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// A key rotation record's body, checked: who hands over to whom, why, and which TPM counter the new key's heads
/// carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRecord {
    /// Hex key id of the key that signs the head ending with this record, and no later head.
    pub old_key_id: String,
    /// Hex key id of the key that signs every later head.
    pub new_key_id: String,
    /// DER SubjectPublicKeyInfo of the new key (from the record's PEM; its SHA-256 is `new_key_id`).
    pub new_spki: Vec<u8>,
    /// Why the key was rotated (1 to [`MAX_REASON_BYTES`] bytes).
    pub reason: String,
    /// The NV index of the TPM counter the new key's heads carry, `None` when they carry none.
    pub new_counter_index: Option<u32>,
}

fn is_key_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a counter index as the record writes it: `0x` and exactly 8 lower-case hex digits (as in §3).
pub fn parse_counter_index(s: &str) -> Option<u32> {
    let hex = s.strip_prefix("0x")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// A counter index as records and heads write it (`0x01800010`).
pub fn format_counter_index(index: u32) -> String {
    format!("{index:#010x}")
}

impl RotationRecord {
    /// Checks and reads the body of a key rotation record (the caller knows it is an appliance record of type
    /// `anchorlog.key_rotation`). The error says what is wrong.
    pub fn parse(body: &[u8]) -> Result<RotationRecord, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str());
        if text("type") != Some(types::KEY_ROTATION) {
            return Err(format!("its type is not {}", types::KEY_ROTATION));
        }
        let key_id = |k: &str| match text(k) {
            Some(id) if is_key_id(id) => Ok(id.to_string()),
            _ => Err(format!("{k} is not 64 lower-case hex digits")),
        };
        let (old_key_id, new_key_id) = (key_id("old_key_id")?, key_id("new_key_id")?);
        let pem = text("new_public_key").ok_or("new_public_key is missing")?;
        if !pem.contains("-----BEGIN PUBLIC KEY-----") {
            return Err("new_public_key is not a PEM public key".into());
        }
        let key = PublicKey::from_pem(pem).map_err(|e| format!("new_public_key: {e}"))?;
        if key.key_id != new_key_id {
            return Err(format!("new_public_key has key id {}, not the new_key_id it names", key.key_id));
        }
        if new_key_id == old_key_id {
            return Err("the new key is the old key".into());
        }
        let reason = text("reason").ok_or("reason is missing")?;
        if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
            return Err(format!("reason must be 1 to {MAX_REASON_BYTES} bytes"));
        }
        let new_counter_index = match v.get("new_counter_index") {
            Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                parse_counter_index(s)
                    .ok_or("new_counter_index is neither null nor 0x and 8 lower-case hex digits")?,
            ),
            _ => {
                return Err(
                    "new_counter_index is missing (null when the new key's heads carry no counter)".into()
                )
            }
        };
        Ok(RotationRecord {
            old_key_id,
            new_key_id,
            new_spki: key.spki_der,
            reason: reason.to_string(),
            new_counter_index,
        })
    }

    /// The new key.
    pub fn new_key(&self) -> Result<PublicKey, String> {
        PublicKey::from_spki_der(&self.new_spki).map_err(|e| e.to_string())
    }

    /// This rotation as a report names it, taking effect after head `height`.
    pub fn report(&self, seq: u64, height: u64) -> RotationReport {
        RotationReport {
            seq,
            height,
            old_key_id: self.old_key_id.clone(),
            new_key_id: self.new_key_id.clone(),
            reason: self.reason.clone(),
            new_counter_index: self.new_counter_index.map(format_counter_index),
        }
    }
}

/// A rotation a verifier followed: after head `height` (signed by the old key, ending with the record at `seq`)
/// every head is signed by the new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationReport {
    /// The record's seq.
    pub seq: u64,
    /// The head that ends with it: the old key's last.
    pub height: u64,
    /// The retired key.
    pub old_key_id: String,
    /// The key of every later head.
    pub new_key_id: String,
    /// Why.
    pub reason: String,
    /// The TPM counter index the new key's heads carry, if any.
    pub new_counter_index: Option<String>,
}

/// A key the chain retired: no head after `height` may be signed by it.
#[derive(Debug, Clone)]
pub struct Retired {
    /// The key.
    pub key: PublicKey,
    /// The rotation record that retired it.
    pub seq: u64,
    /// The last head it signed.
    pub height: u64,
}

/// Why `signature` over head `height` does not verify under `expected` (the chain's key there; `None` when the
/// chain has no key yet and any of `trusted` would do): a retired key signed it, another key no rotation
/// announced (one of `trusted` or `known`, the public keys the evidence carries, used for naming only), or none
/// of them.
pub fn misattributed(
    height: u64,
    message: &[u8],
    signature: &[u8],
    expected: Option<&PublicKey>,
    retired: &[Retired],
    trusted: &[PublicKey],
    known: &[PublicKey],
) -> Failure {
    if let Some(r) = retired.iter().find(|r| r.key.verify(message, signature)) {
        return Failure::RetiredKey {
            height,
            key_id: r.key.key_id.clone(),
            seq: r.seq,
            retired_at: r.height,
            current: expected.map(|k| k.key_id.clone()).unwrap_or_default(),
        };
    }
    let other = trusted.iter().chain(known).find(|k| k.verify(message, signature));
    match (expected, other) {
        (Some(current), Some(k)) => {
            Failure::UnannouncedKey { height, key_id: k.key_id.clone(), current: current.key_id.clone() }
        }
        (Some(current), None) => Failure::BadSignature { height, key_id: current.key_id.clone() },
        (None, Some(k)) => Failure::UntrustedKey { height, key_id: k.key_id.clone(), given: given(trusted) },
        (None, None) => Failure::BadSignature { height, key_id: given(trusted) },
    }
}

/// The given keys' ids, for messages.
pub fn given(trusted: &[PublicKey]) -> String {
    trusted.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>().join(", ")
}

/// A key rotation record outside the range the evidence holds, with what proves it is in the log: the head that
/// ends with it (signed by the old key), the record's inclusion in that head and that head's consistency with the
/// evidence's reference head (`key-rotations.jsonl` line, receipt `key_rotations`; docs/FORMAT.md §20).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotationProof {
    /// The record's seq.
    pub seq: u64,
    /// The record's exact canonical entry.
    pub entry: String,
    /// Base64 salt of the record's body.
    pub salt: String,
    /// Base64 body of the record.
    pub body: String,
    /// The head whose last event it is (tree size `seq + 1`), signed by the old key.
    pub head: ProofHead,
    /// Base64 RFC 9162 inclusion proof of leaf `seq` in `head`'s tree.
    pub inclusion_proof: Vec<String>,
    /// Base64 RFC 9162 consistency proof between `head`'s tree and the reference head's, from the smaller tree to
    /// the larger (empty when they are the same size).
    pub consistency_proof: Vec<String>,
}

fn hashes(items: &[String]) -> Option<Vec<Hash>> {
    items.iter().map(|p| B64.decode(p).ok().and_then(|v| <Hash>::try_from(v).ok())).collect()
}

impl KeyRotationProof {
    /// Checks everything but the head's signature: the record (canonical entry naming `seq`, payload, an
    /// appliance key rotation record), the head (origin, ends with the record), the inclusion proof, and the
    /// consistency with `reference`. Returns the record and the parsed head.
    fn check_parts(&self, reference: &AnchorHead<'_>) -> Result<(RotationRecord, Checkpoint), Failure> {
        let seq = self.seq;
        let invalid = |reason: String| Failure::KeyRotationInvalid { seq, reason };
        let salt = B64.decode(&self.salt).map_err(|_| invalid("salt is not base64".into()))?;
        let body = B64.decode(&self.body).map_err(|_| invalid("body is not base64".into()))?;
        let leaf = merkle::leaf_hash(self.entry.as_bytes());
        let (facts, _) = check_parts(seq, self.entry.as_bytes(), &leaf, Some(&salt), Some(&body))?;
        if OwnRecord::of(facts.appliance, Some(&body)) != Some(OwnRecord::KeyRotation) {
            return Err(invalid("it is not the appliance's key rotation record".into()));
        }
        let record = RotationRecord::parse(&body).map_err(invalid)?;
        let height = self.head.height;
        let malformed = |reason: String| Failure::HeadMalformed { height, reason };
        let cp = Checkpoint::parse(&self.head.checkpoint).map_err(|e| malformed(e.to_string()))?;
        if cp.height != height {
            return Err(malformed(format!("the text is head height {}", cp.height)));
        }
        if cp.origin != reference.origin {
            return Err(Failure::OriginMismatch {
                height,
                found: cp.origin,
                expected: reference.origin.into(),
            });
        }
        if cp.tree_size != seq + 1 {
            return Err(Failure::KeyRotationNotLast { seq, height });
        }
        let inclusion =
            hashes(&self.inclusion_proof).ok_or(Failure::InclusionProofInvalid { seq, height })?;
        merkle::verify_inclusion(seq, cp.tree_size, &leaf, &inclusion, &cp.root)
            .map_err(|_| Failure::InclusionProofInvalid { seq, height })?;
        let bad_consistency =
            Failure::ConsistencyProofInvalid { height, from_size: cp.tree_size.min(reference.tree_size) };
        let consistency = hashes(&self.consistency_proof).ok_or(bad_consistency.clone())?;
        let ok = if cp.tree_size <= reference.tree_size {
            merkle::verify_consistency(
                cp.tree_size,
                reference.tree_size,
                &cp.root,
                &reference.root,
                &consistency,
            )
        } else {
            merkle::verify_consistency(
                reference.tree_size,
                cp.tree_size,
                &reference.root,
                &cp.root,
                &consistency,
            )
        };
        ok.map_err(|_| bad_consistency)?;
        Ok((record, cp))
    }
}

/// The keys a verifier established from rotation proofs: which key signs which heights.
#[derive(Debug, Clone, Default)]
pub struct FollowedKeys {
    /// `(last height, key)` in height order; the last span is open-ended (`u64::MAX`).
    spans: Vec<(u64, PublicKey)>,
    /// Keyring mode ([`follow_ring_rotation_proofs`]): every key of the ring with the heads it may sign; `spans`
    /// is then unused.
    ring: Option<Vec<RingKey>>,
    /// The rotations followed.
    pub rotations: Vec<RotationReport>,
    /// The keys they retired.
    pub retired: Vec<Retired>,
}

impl FollowedKeys {
    /// The key that signs head `height`, when the proofs established one: the old key up to and including the
    /// rotation's head, the new key after it. `None` without followed rotations (any trusted key may sign).
    pub fn key_for(&self, height: u64) -> Option<&PublicKey> {
        self.spans.iter().find(|(last, _)| *last >= height).map(|(_, k)| k)
    }

    /// Whether these are a keyring's keys ([`follow_ring_rotation_proofs`]).
    pub fn is_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// A keyring's keys that may sign head `height`: given or brought in before it, not retired before it.
    /// Empty outside keyring mode.
    pub fn ring_keys_at(&self, height: u64) -> Vec<PublicKey> {
        self.ring.iter().flatten().filter(|k| k.signs(height)).map(|k| k.key.clone()).collect()
    }

    /// The counter announcement that applies to the head after `height`: the rotation record's, when a followed
    /// rotation takes effect right after it.
    pub fn announcement_after(&self, height: u64) -> Option<(u64, Option<u32>)> {
        self.rotations
            .iter()
            .find(|r| r.height == height)
            .map(|r| (r.seq, r.new_counter_index.as_deref().and_then(parse_counter_index)))
    }

    /// Checks head `height`'s signature: under the key the proofs established for it, or else under one of
    /// `trusted`; returns the key that verified it. The failure names the key that did sign it, if known.
    pub fn check_head(
        &self,
        height: u64,
        text: &str,
        signature: &[u8],
        trusted: &[PublicKey],
        known: &[PublicKey],
    ) -> Result<PublicKey, Failure> {
        let message = text.as_bytes();
        if let Some(ring) = &self.ring {
            return check_ring_head(ring, &self.retired, height, message, signature, known);
        }
        match self.key_for(height) {
            Some(k) if k.verify(message, signature) => Ok(k.clone()),
            Some(k) => Err(misattributed(height, message, signature, Some(k), &self.retired, trusted, known)),
            None => trusted.iter().find(|k| k.verify(message, signature)).cloned().ok_or_else(|| {
                misattributed(height, message, signature, None, &self.retired, trusted, known)
            }),
        }
    }
}

/// The keys of the heads a piece of evidence carries: those its rotation proofs established, else the trusted
/// ones.
#[derive(Debug, Clone)]
pub struct HeadKeys<'a> {
    /// What the rotation proofs established.
    pub followed: FollowedKeys,
    /// The keys the verifier trusts.
    pub trusted: &'a [PublicKey],
    /// Other keys, for naming only.
    pub known: &'a [PublicKey],
}

impl HeadKeys<'_> {
    /// Checks head `height`'s signature ([`FollowedKeys::check_head`]).
    pub fn check(&self, height: u64, text: &str, signature: &[u8]) -> Result<PublicKey, Failure> {
        self.followed.check_head(height, text, signature, self.trusted, self.known)
    }
}

/// Rotation proofs come in seq order, their heads in height order: `last` is the previous proof's, and becomes `p`'s.
fn in_order(last: &mut Option<(u64, u64)>, p: &KeyRotationProof) -> Result<(), Failure> {
    if let Some((seq, height)) = *last {
        if p.seq <= seq || p.head.height <= height {
            return Err(Failure::KeyRotationInvalid {
                seq: p.seq,
                reason: format!(
                    "the rotation proofs are not in order (after seq {seq}, head height {height})"
                ),
            });
        }
    }
    *last = Some((p.seq, p.head.height));
    Ok(())
}

/// Follows `proofs` (in seq order) from the `trusted` keys: trust starts at the first record whose old key is
/// trusted (earlier ones cannot be checked and are skipped); from there each record must name the key the chain
/// holds as its old key, its head must verify under that key, and the chain moves to the record's new key. Every
/// followed proof must also link to `reference` (the bundle's anchor or last head, the receipt's head).
pub fn follow_rotation_proofs(
    trusted: &[PublicKey],
    proofs: &[KeyRotationProof],
    reference: &AnchorHead<'_>,
) -> Result<FollowedKeys, Failure> {
    let mut out = FollowedKeys::default();
    let mut current: Option<PublicKey> = None;
    let mut last: Option<(u64, u64)> = None;
    for p in proofs {
        in_order(&mut last, p)?;
        let (record, cp) = p.check_parts(reference)?;
        let key = match &current {
            Some(k) => k.clone(),
            None => match trusted.iter().find(|k| k.key_id == record.old_key_id) {
                Some(k) => k.clone(),
                // Signed by a key the verifier does not know: nothing to check it with. Trust starts later.
                None => continue,
            },
        };
        if record.old_key_id != key.key_id {
            return Err(Failure::KeyRotationInvalid {
                seq: p.seq,
                reason: format!(
                    "it names {} as the old key, but the chain's key at head height {} is {}",
                    record.old_key_id, cp.height, key.key_id
                ),
            });
        }
        if out.retired.iter().any(|r| r.key.key_id == record.new_key_id) {
            return Err(Failure::KeyRotationInvalid {
                seq: p.seq,
                reason: format!(
                    "its new key {} was retired before; a key is never used again",
                    record.new_key_id
                ),
            });
        }
        let sig = B64.decode(&p.head.signature).unwrap_or_default();
        if !key.verify(p.head.checkpoint.as_bytes(), &sig) {
            return Err(misattributed(
                cp.height,
                p.head.checkpoint.as_bytes(),
                &sig,
                Some(&key),
                &out.retired,
                trusted,
                &[],
            ));
        }
        let new = record.new_key().map_err(|reason| Failure::KeyRotationInvalid { seq: p.seq, reason })?;
        out.spans.push((cp.height, key.clone()));
        out.retired.push(Retired { key, seq: p.seq, height: cp.height });
        out.rotations.push(record.report(p.seq, cp.height));
        current = Some(new);
    }
    if let Some(k) = current {
        out.spans.push((u64::MAX, k));
    }
    Ok(out)
}

/// A key of a keyring and the heads it may sign: those after `after` (the head of the rotation that brought it in;
/// `None`: a given key, from the start) up to and including `until` (the last head before a rotation retired it).
#[derive(Debug, Clone)]
struct RingKey {
    key: PublicKey,
    after: Option<u64>,
    until: Option<u64>,
}

impl RingKey {
    fn signs(&self, height: u64) -> bool {
        self.after.is_none_or(|a| height > a) && self.until.is_none_or(|u| height <= u)
    }
}

/// [`follow_rotation_proofs`] for a keyring (docs/FORMAT.md §20, "Keyrings"): every key of `ring` may sign any
/// head, and each node's key has its own chain of rotations. A proof whose old key is a key of the ring (given, or
/// brought in by an earlier proof, and not yet retired) retires that key after the proof's head, which it must
/// sign, and brings its new key in from the next head on; a proof whose old key is none of them cannot be checked
/// and is skipped. Every followed proof must link to `reference`.
pub fn follow_ring_rotation_proofs(
    ring: &[PublicKey],
    proofs: &[KeyRotationProof],
    reference: &AnchorHead<'_>,
) -> Result<FollowedKeys, Failure> {
    let mut keys: Vec<RingKey> =
        ring.iter().map(|k| RingKey { key: k.clone(), after: None, until: None }).collect();
    let mut out = FollowedKeys::default();
    let mut last: Option<(u64, u64)> = None;
    for p in proofs {
        in_order(&mut last, p)?;
        let (record, cp) = p.check_parts(reference)?;
        let Some(old) = keys.iter().find(|k| k.until.is_none() && k.key.key_id == record.old_key_id) else {
            continue;
        };
        let sig = B64.decode(&p.head.signature).unwrap_or_default();
        if !old.key.verify(p.head.checkpoint.as_bytes(), &sig) {
            return Err(Failure::KeyRotationInvalid {
                seq: p.seq,
                reason: format!(
                    "it names {} as the old key, but head height {}, which ends with it, is not signed by it",
                    record.old_key_id, cp.height
                ),
            });
        }
        if keys.iter().any(|k| k.key.key_id == record.new_key_id) {
            return Err(Failure::KeyRotationInvalid {
                seq: p.seq,
                reason: format!(
                    "its new key {} is already a key of the ring; a key is never brought in twice",
                    record.new_key_id
                ),
            });
        }
        let new = record.new_key().map_err(|reason| Failure::KeyRotationInvalid { seq: p.seq, reason })?;
        let Some(old) = keys.iter_mut().find(|k| k.until.is_none() && k.key.key_id == record.old_key_id)
        else {
            continue;
        };
        old.until = Some(cp.height);
        out.retired.push(Retired { key: old.key.clone(), seq: p.seq, height: cp.height });
        out.rotations.push(record.report(p.seq, cp.height));
        keys.push(RingKey { key: new, after: Some(cp.height), until: None });
    }
    out.ring = Some(keys);
    Ok(out)
}

/// Head `height` of a keyring's log: a ring key that may sign that height must have signed it. The failure
/// names a retired key, a key the evidence holds outside the ring, or the ring.
fn check_ring_head(
    ring: &[RingKey],
    retired: &[Retired],
    height: u64,
    message: &[u8],
    signature: &[u8],
    known: &[PublicKey],
) -> Result<PublicKey, Failure> {
    if let Some(k) = ring.iter().find(|k| k.signs(height) && k.key.verify(message, signature)) {
        return Ok(k.key.clone());
    }
    let live: Vec<PublicKey> = ring.iter().filter(|k| k.signs(height)).map(|k| k.key.clone()).collect();
    let ids = given(&live);
    // A key that may sign other heights, but not this one: retired before it, or brought in after it.
    let elsewhere: Vec<PublicKey> = ring.iter().filter(|k| !k.signs(height)).map(|k| k.key.clone()).collect();
    Err(match misattributed(height, message, signature, None, retired, &elsewhere, known) {
        Failure::RetiredKey { height, key_id, seq, retired_at, .. } => Failure::RetiredKey {
            height,
            key_id,
            seq,
            retired_at,
            current: format!("one of the keyring's keys ({ids})"),
        },
        Failure::UntrustedKey { height, key_id, .. } => Failure::OutsideKeyring { height, key_id, ring: ids },
        _ => Failure::NoKeyringKey { height, ring: ids },
    })
}
