//! Writing a bundle from the database: constant memory, one read snapshot, streamed to any `Write`.

use super::BundleError;
use crate::store;
use anchorlog_core::bundle::{
    head_path, Algorithms, Anchor, EntryLine, Manifest, BUNDLE_FORMAT, BUNDLE_VERSION, ENTRIES,
    ERASURE_RECORDS, KEY_ROTATIONS, MANIFEST,
};
use anchorlog_core::head::{format_time_ms, Checkpoint};
use anchorlog_core::key::PublicKey;
use anchorlog_core::stored::{StoredEvent, StoredHead};
use anchorlog_core::verify::erasure::{ErasureRecordProof, ProofHead};
use anchorlog_core::verify::keys::KeyRotationProof;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rusqlite::Connection;
use std::borrow::Cow;
use std::io::Write;

/// Called with (events written, events in the bundle) every few thousand events.
pub type ExportProgress<'a> = &'a mut dyn FnMut(u64, u64);

/// How often (in events) progress is reported.
const PROGRESS_EVERY: u64 = 65_536;

fn tar_header(path: &str, size: u64, mtime: u64) -> Result<tar::Header, BundleError> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

fn append<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8], mtime: u64) -> Result<(), BundleError> {
    let h = tar_header(path, data.len() as u64, mtime)?;
    b.append(&h, data)?;
    Ok(())
}

/// Appends one `entries.jsonl` line for `ev` to `buf`.
fn entry_line(conn: &Connection, ev: &StoredEvent, buf: &mut Vec<u8>) -> Result<(), BundleError> {
    let erasure = if ev.body.is_none() { store::erasure::erasure(conn, ev.seq)? } else { None };
    let line = EntryLine {
        seq: ev.seq,
        entry: String::from_utf8_lossy(&ev.entry),
        leaf_hash: Cow::Owned(B64.encode(ev.leaf_hash)),
        salt: ev.salt.as_ref().map(|s| Cow::Owned(B64.encode(s))),
        body: ev.body.as_ref().map(|b| Cow::Owned(B64.encode(b))),
        erasure,
    };
    serde_json::to_writer(&mut *buf, &line).map_err(std::io::Error::from)?;
    buf.push(b'\n');
    Ok(())
}

/// Visits the events `from..to` (whatever is stored there; the verifier judges gaps).
fn for_each_line(
    conn: &Connection,
    from: u64,
    to: u64,
    mut f: impl FnMut(&[u8]) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut buf = Vec::with_capacity(4096);
    let mut err = None;
    store::for_each_event(conn, from, |ev| {
        if ev.seq >= to {
            return Ok(false);
        }
        buf.clear();
        if let Err(e) = entry_line(conn, &ev, &mut buf).and_then(|()| f(&buf)) {
            err = Some(e);
            return Ok(false);
        }
        Ok(true)
    })?;
    err.map_or(Ok(()), Err)
}

/// The proof that the appliance's erasure record `erasure_seq` of event `erased_seq` is in the log: the
/// record, the earliest head covering it, the inclusion proof into that head and the consistency proof from
/// the head of tree size `anchor_size` (the bundle's last head, the receipt's head) to it. `None` while no
/// head covers the record yet (it is sealed within a second of the erasure).
pub fn erasure_record_proof(
    conn: &Connection,
    erased_seq: u64,
    erasure_seq: u64,
    anchor_size: u64,
) -> Result<Option<ErasureRecordProof>, crate::store::StoreError> {
    let missing = |what: &str| crate::store::StoreError::Corrupt {
        table: "events",
        key: erasure_seq,
        problem: format!("the erasure record of seq {erased_seq} {what}"),
    };
    let record = store::event(conn, erasure_seq)?.ok_or_else(|| missing("is missing"))?;
    let (Some(salt), Some(body)) = (record.salt, record.body) else { return Err(missing("has no payload")) };
    let Some(head) = store::covering_head(conn, erasure_seq)? else { return Ok(None) };
    let inclusion = store::tree::inclusion_proof(conn, erasure_seq, head.tree_size)?;
    let consistency = store::tree::consistency_proof(conn, anchor_size, head.tree_size)?;
    let proven = ProvenRecord { entry: record.entry, salt, body, head, inclusion, consistency };
    Ok(Some(proven.into_erasure(erased_seq, erasure_seq)))
}

/// An appliance record with its proofs as a store answered them: what an erasure-record proof and a key-rotation
/// proof are made of. Both stores (SQLite here, PostgreSQL in `store::pg::evidence`) build them through this.
pub(crate) struct ProvenRecord {
    /// The record's canonical entry.
    pub entry: Vec<u8>,
    /// Its salt.
    pub salt: Vec<u8>,
    /// Its body.
    pub body: Vec<u8>,
    /// The earliest head covering it.
    pub head: anchorlog_core::stored::StoredHead,
    /// Its inclusion proof into that head.
    pub inclusion: Vec<[u8; 32]>,
    /// The consistency proof between that head and the reference tree.
    pub consistency: Vec<[u8; 32]>,
}

impl ProvenRecord {
    fn encoded(v: &[[u8; 32]]) -> Vec<String> {
        v.iter().map(|h| B64.encode(h)).collect()
    }

    fn proof_head(&self) -> ProofHead {
        ProofHead {
            height: self.head.height,
            checkpoint: self.head.checkpoint.clone(),
            signature: B64.encode(&self.head.signature),
        }
    }

    /// The proof of the erasure record at `seq` of the payload of `erased_seq`.
    pub(crate) fn into_erasure(self, erased_seq: u64, seq: u64) -> ErasureRecordProof {
        ErasureRecordProof {
            erased_seq,
            seq,
            head: self.proof_head(),
            entry: String::from_utf8_lossy(&self.entry).into_owned(),
            salt: B64.encode(&self.salt),
            body: B64.encode(&self.body),
            inclusion_proof: Self::encoded(&self.inclusion),
            consistency_proof: Self::encoded(&self.consistency),
        }
    }

    /// The proof of the key rotation record at `seq`.
    pub(crate) fn into_rotation(self, seq: u64) -> KeyRotationProof {
        KeyRotationProof {
            seq,
            head: self.proof_head(),
            entry: String::from_utf8_lossy(&self.entry).into_owned(),
            salt: B64.encode(&self.salt),
            body: B64.encode(&self.body),
            inclusion_proof: Self::encoded(&self.inclusion),
            consistency_proof: Self::encoded(&self.consistency),
        }
    }
}

/// The key rotation records at seqs `from..to` (found through the rotation index, `log_meta`) with the proofs that
/// they are in the log: the head that ends with each (the earliest covering it), the record's inclusion in it, and
/// the consistency between that head and the head of tree size `reference_size` (from the smaller tree to the
/// larger). A record no head covers yet has taken no effect and is left out.
pub fn key_rotation_proofs(
    conn: &Connection,
    from: u64,
    to: u64,
    reference_size: u64,
) -> Result<Vec<KeyRotationProof>, crate::store::StoreError> {
    let mut out = Vec::new();
    for seq in store::rotation_seqs(conn)?.into_iter().filter(|s| (from..to).contains(s)) {
        let corrupt = |problem: &str| crate::store::StoreError::Corrupt {
            table: "events",
            key: seq,
            problem: format!("the key rotation record {problem}"),
        };
        let record = store::event(conn, seq)?.ok_or_else(|| corrupt("is missing"))?;
        let (Some(salt), Some(body)) = (record.salt, record.body) else {
            return Err(corrupt("has no payload"));
        };
        let Some(head) = store::covering_head(conn, seq)? else { continue };
        let inclusion = store::tree::inclusion_proof(conn, seq, head.tree_size)?;
        let (small, large) = (head.tree_size.min(reference_size), head.tree_size.max(reference_size));
        let consistency = store::tree::consistency_proof(conn, small, large)?;
        out.push(
            ProvenRecord { entry: record.entry, salt, body, head, inclusion, consistency }.into_rotation(seq),
        );
    }
    Ok(out)
}

/// The `key-rotations.jsonl` member of the bundle of events `first..end`: the rotations before the range (linked to
/// the anchor head, of tree size `first`) and those after it up to `reach` (the largest tree size an erasure
/// record proof of the bundle reaches; linked to the last head, of tree size `end`).
fn key_rotations_member(conn: &Connection, first: u64, end: u64, reach: u64) -> Result<Vec<u8>, BundleError> {
    let mut out = Vec::new();
    let before = key_rotation_proofs(conn, 0, first, first)?;
    let after = key_rotation_proofs(conn, end, reach, end)?;
    for proof in before.iter().chain(&after) {
        serde_json::to_writer(&mut out, proof).map_err(std::io::Error::from)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The erasure records of the payloads in `first..end` erased after the bundle's end (their records lie at or
/// past `end`), with proofs against the head of tree size `end`, one JSON line each.
fn erasure_records_member(conn: &Connection, first: u64, end: u64) -> Result<(Vec<u8>, u64), BundleError> {
    let mut out = Vec::new();
    let mut reach = end;
    for seq in store::erasure::erased_seqs(conn)?.into_iter().filter(|s| (first..end).contains(s)) {
        let Some(rec) = store::erasure::erasure(conn, seq)? else { continue };
        if rec.erasure_seq < end {
            continue; // in entries.jsonl, where the walk meets it
        }
        let proof = erasure_record_proof(conn, seq, rec.erasure_seq, end)?.ok_or_else(|| {
            BundleError::NotSealed(format!(
                "the erasure record of seq {seq} (seq {}) is not covered by a signed head yet; retry after the \
                 next seal",
                rec.erasure_seq
            ))
        })?;
        let size = Checkpoint::parse(&proof.head.checkpoint).map_or(end, |cp| cp.tree_size);
        reach = reach.max(size);
        serde_json::to_writer(&mut out, &proof).map_err(std::io::Error::from)?;
        out.push(b'\n');
    }
    Ok((out, reach))
}

/// Writes the bundle of heads `from_height..=to_height` to `out`. Public keys come from the database (stored
/// by the appliance at start) or from `key`. Reads one snapshot, so a concurrent erasure cannot tear it.
pub fn export<W: Write>(
    conn: &Connection,
    from_height: u64,
    to_height: u64,
    key: Option<&PublicKey>,
    out: W,
    progress: ExportProgress<'_>,
) -> Result<Manifest, BundleError> {
    if from_height > to_height {
        return Err(BundleError::Range(format!("from height {from_height} is above to height {to_height}")));
    }
    let snapshot = conn.unchecked_transaction().map_err(crate::store::StoreError::from)?;
    let get = |h: u64| -> Result<StoredHead, BundleError> {
        store::head(&snapshot, h)?.ok_or_else(|| BundleError::Range(format!("no head at height {h}")))
    };
    let anchor_head = if from_height > 0 { Some(get(from_height - 1)?) } else { None };
    let mut heads = Vec::new();
    for h in from_height..=to_height {
        heads.push(get(h)?);
    }
    let first_seq = anchor_head.as_ref().map_or(0, |h| h.tree_size);
    let end_seq = heads.last().map_or(first_seq, |h| h.tree_size);
    let mut key_ids: Vec<String> = Vec::new();
    for h in anchor_head.iter().chain(&heads) {
        if !key_ids.contains(&h.key_id) {
            key_ids.push(h.key_id.clone());
        }
    }
    let mut key_pems = Vec::new();
    for id in &key_ids {
        let pem = match key {
            Some(k) if &k.key_id == id => Some(public_key_pem(k)?),
            _ => store::public_key_pem(&snapshot, id)?,
        };
        let pem = pem.ok_or_else(|| {
            BundleError::Range(format!(
                "the database holds no public key with id {id}; pass the signer's public key (--key)"
            ))
        })?;
        key_pems.push((id.clone(), pem));
    }
    // The signers' SubjectPublicKeyInfo, for the key IDs of the heads' signed notes.
    let key_spkis: Vec<(String, Vec<u8>)> = key_pems
        .iter()
        .filter_map(|(id, pem)| PublicKey::from_pem(pem).ok().map(|k| (id.clone(), k.spki_der)))
        .collect();
    let anchor = match &anchor_head {
        Some(h) => {
            let frontier = store::tree::load_frontier(&snapshot, h.tree_size)?;
            Some(Anchor {
                height: h.height,
                tree_size: h.tree_size,
                subtrees: frontier.subtrees().iter().map(|s| B64.encode(s)).collect(),
            })
        }
        None => None,
    };
    let (erasure_records, reach) = erasure_records_member(&snapshot, first_seq, end_seq)?;
    let key_rotations = key_rotations_member(&snapshot, first_seq, end_seq, reach)?;
    let first_height = anchor_head.as_ref().map_or(from_height, |h| h.height);
    let stamped = store::any_timestamp_between(&snapshot, first_height, to_height)?;
    let last_ms = heads.last().map_or(0, |h| h.sealed_at_ms);
    let mtime = u64::try_from(last_ms / 1000).unwrap_or(0);
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        version: BUNDLE_VERSION,
        origin: store::stored_origin(&snapshot)?.unwrap_or_default(),
        from_height,
        to_height,
        first_seq,
        end_seq,
        key_ids,
        algorithms: Algorithms {
            hash: "sha-256".into(),
            tree: "rfc9162-sha256".into(),
            signature: "ecdsa-p256-sha256".into(),
            timestamp: stamped.then(|| "rfc3161".into()),
        },
        anchor,
        created_at: format_time_ms(store::now_ms()).unwrap_or_default(),
    };
    let mut b = tar::Builder::new(out);
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::from)?;
    append(&mut b, MANIFEST, &manifest_json, mtime)?;
    for (id, pem) in &key_pems {
        append(&mut b, &format!("keys/{id}.pem"), pem.as_bytes(), mtime)?;
    }
    for h in anchor_head.iter().chain(&heads) {
        append(&mut b, &head_path(h.height, "txt"), h.checkpoint.as_bytes(), mtime)?;
        append(&mut b, &head_path(h.height, "sig"), &h.signature, mtime)?;
        // The stored DER TimeStampResp exactly as the TSA sent it; a head still waiting for its token has none.
        if let Some(t) = store::timestamp(&snapshot, h.height)? {
            append(&mut b, &head_path(h.height, "tsr"), &t.response, mtime)?;
        }
        // The head's signed note with its witnesses' cosignature lines (docs/FORMAT.md §16.6), when it has any.
        let cosignatures = store::cosignatures::of_head(&snapshot, h.height)?;
        if !cosignatures.is_empty() {
            let spki = key_spkis.iter().find(|(id, _)| *id == h.key_id).map(|(_, s)| s.as_slice());
            let note = cosigned_note(h, &manifest.origin, spki, &cosignatures);
            append(&mut b, &head_path(h.height, "note"), note.as_bytes(), mtime)?;
        }
    }
    if !erasure_records.is_empty() {
        append(&mut b, ERASURE_RECORDS, &erasure_records, mtime)?;
    }
    if !key_rotations.is_empty() {
        append(&mut b, KEY_ROTATIONS, &key_rotations, mtime)?;
    }
    // entries.jsonl can be far larger than memory: measure it in a first pass over the snapshot, write the
    // tar header with that size, then stream the same bytes in a second pass.
    let mut size = 0u64;
    for_each_line(&snapshot, first_seq, end_seq, |line| {
        size += line.len() as u64;
        Ok(())
    })?;
    let header = tar_header(ENTRIES, size, mtime)?;
    let w = b.get_mut();
    w.write_all(header.as_bytes())?;
    let total = end_seq - first_seq;
    let mut done = 0u64;
    let mut written = 0u64;
    for_each_line(&snapshot, first_seq, end_seq, |line| {
        w.write_all(line)?;
        written += line.len() as u64;
        done += 1;
        if done % PROGRESS_EVERY == 0 {
            progress(done, total);
        }
        Ok(())
    })?;
    if written != size {
        return Err(BundleError::Range("the database changed during the export".into()));
    }
    let pad = (512 - (size % 512)) % 512;
    w.write_all(&vec![0u8; pad as usize])?;
    progress(done, total);
    b.into_inner()?.flush()?;
    drop(snapshot);
    Ok(manifest)
}

/// The head's signed note: its text, the appliance's own signature line (when its key is known) and every
/// stored cosignature line, in the order they were stored.
fn cosigned_note(
    h: &StoredHead,
    origin: &str,
    spki: Option<&[u8]>,
    cosignatures: &[store::cosignatures::StoredCosignature],
) -> String {
    let mut note = match spki {
        Some(spki) => anchorlog_core::head::signed_note(&h.checkpoint, origin, spki, &h.signature),
        None => format!("{}\n", h.checkpoint),
    };
    for c in cosignatures {
        note.push_str(&c.line);
        note.push('\n');
    }
    note
}

/// PEM (`PUBLIC KEY`) of a public key's SubjectPublicKeyInfo.
pub fn public_key_pem(key: &PublicKey) -> Result<String, BundleError> {
    der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &key.spki_der)
        .map_err(|e| BundleError::Unreadable(format!("cannot encode the public key: {e}")))
}
