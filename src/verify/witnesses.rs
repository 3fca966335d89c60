//! Witness cosignatures stored in the database, checked offline with the core's rules
//! ([`anchorlog_core::verify::witnesses`], docs/FORMAT.md §16.6): the same check a bundle and a receipt get.

use crate::store::cosignatures::{self, StoredCosignature};
use anchorlog_core::note::cosignature;
use anchorlog_core::verify::witnesses::{HeadLines, WitnessCheck, WitnessPolicy, WitnessReport};
use anchorlog_core::verify::{Failure, VerifyError};

/// Heads whose cosignatures are checked together on all cores.
const HEADS_PER_BATCH: usize = 2048;

/// Checks every stored cosignature of a verified database (`last_height`: its last verified head) and the
/// last head's quorum. A row whose columns disagree with its line fails at its head, like a bad line. The
/// Ed25519 checks of a batch of heads run on all cores; the first failure in height order is reported.
pub fn verify_database_cosignatures(
    conn: &rusqlite::Connection,
    policy: &WitnessPolicy,
    last_height: u64,
) -> Result<WitnessReport, VerifyError> {
    let mut check = WitnessCheck::new(policy);
    let mut batch: Vec<HeadLines> = Vec::with_capacity(HEADS_PER_BATCH);
    let mut group: Vec<StoredCosignature> = Vec::new();
    let mut failure: Option<VerifyError> = None;
    cosignatures::for_each(conn, |c| {
        if group.first().is_some_and(|g| g.height != c.height) {
            let head = match head_lines(conn, &mut group, last_height) {
                Ok(h) => h,
                Err(e) => {
                    // The heads before this one are judged first: their failure is the earlier one.
                    failure = Some(check.heads(&mut batch).err().map_or(e, Into::into));
                    return Ok(false);
                }
            };
            batch.push(head);
            if batch.len() == HEADS_PER_BATCH {
                if let Err(f) = check.heads(&mut batch) {
                    failure = Some(f.into());
                    return Ok(false);
                }
            }
        }
        group.push(c);
        Ok(true)
    })?;
    if let Some(f) = failure {
        return Err(f);
    }
    if !group.is_empty() {
        match head_lines(conn, &mut group, last_height) {
            Ok(h) => batch.push(h),
            Err(e) => return Err(check.heads(&mut batch).err().map_or(e, Into::into)),
        }
    }
    check.heads(&mut batch)?;
    Ok(check.finish(last_height)?)
}

/// The head of a group of stored cosignatures (one head's), with their lines checked against their columns.
fn head_lines(
    conn: &rusqlite::Connection,
    group: &mut Vec<StoredCosignature>,
    last_height: u64,
) -> Result<HeadLines, VerifyError> {
    let height = group.first().map_or(0, |c| c.height);
    let head = crate::store::head(conn, height)?.filter(|_| height <= last_height).ok_or_else(|| {
        Failure::HeadMalformed {
            height,
            reason: "cosignatures are stored for a head that does not exist".into(),
        }
    })?;
    let mut lines = Vec::with_capacity(group.len());
    for c in group.drain(..) {
        let sig = c
            .signature()
            .ok()
            .filter(|s| s.name == c.witness && s.key_id == c.key_id)
            .filter(|s| cosignature::timestamp(s).ok() == Some(c.timestamp))
            .ok_or_else(|| Failure::HeadMalformed {
                height,
                reason: format!(
                    "the stored cosignature of {}+{:08x} disagrees with its line or is malformed",
                    c.witness, c.key_id
                ),
            })?;
        lines.push(sig);
    }
    Ok(HeadLines { height, text: head.checkpoint, sealed_at_ms: head.sealed_at_ms, lines })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorlog_core::note::{NoteSignature, VerifierKey};

    const TEXT: &str = "log.test/a\n3\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    const SEALED_MS: i64 = 1_700_000_000_000;

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn vkey(seed: u8, name: &str) -> VerifierKey {
        VerifierKey::cosignature_v1(name, key(seed).verifying_key().as_bytes()).unwrap()
    }

    #[test]
    fn database_cosignatures_are_checked_in_batches_and_against_their_columns() {
        use crate::store;
        use anchorlog_core::stored::StoredHead;
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_writer(&dir.path().join("a.db"), "log.test/a").unwrap();
        let policy = WitnessPolicy::new(vec![vkey(1, "w1"), vkey(2, "w2")], Some(2)).unwrap();
        let heads = HEADS_PER_BATCH as u64 + 3;
        conn.execute_batch("BEGIN").unwrap();
        for height in 0..heads {
            let text = format!("{TEXT}anchorlog-block {height}\n");
            let sealed = SEALED_MS + height as i64;
            let h = StoredHead {
                height,
                tree_size: 3,
                root: [0; 32],
                checkpoint: text.clone(),
                signature: vec![1],
                key_id: "k".into(),
                sealed_at_ms: sealed,
            };
            store::insert_head(&conn, &h).unwrap();
            for (seed, name) in [(1, "w1"), (2, "w2")] {
                let sig = cosignature::sign(name, &key(seed), &text, 1_700_000_001).unwrap();
                let c = StoredCosignature {
                    height,
                    witness: name.into(),
                    key_id: sig.key_id,
                    line: sig.to_line().trim_end().to_string(),
                    timestamp: 1_700_000_001,
                    stored_at_ms: 0,
                };
                store::cosignatures::insert(&conn, &c).unwrap();
            }
        }
        conn.execute_batch("COMMIT").unwrap();
        let r = verify_database_cosignatures(&conn, &policy, heads - 1).unwrap();
        assert_eq!((r.heads_with_quorum, r.newest_height, r.newest_cosigned_by.len()), (heads, heads - 1, 2));
        // A row whose timestamp column says something else than its line.
        conn.execute_batch("DROP TRIGGER cosignatures_no_update").unwrap();
        conn.execute("UPDATE cosignatures SET timestamp = 5 WHERE height = 2049 AND witness = 'w2'", [])
            .unwrap();
        let f = verify_database_cosignatures(&conn, &policy, heads - 1).unwrap_err();
        assert_eq!(f.to_string().split(": ").nth(1), Some("head height 2049"), "{f}");
        // A bad line in the first batch is named before the malformed row of a later one.
        let line: String = conn
            .query_row("SELECT line FROM cosignatures WHERE height = 7 AND witness = 'w1'", [], |r| r.get(0))
            .unwrap();
        let mut sig = NoteSignature::parse_line(&line).unwrap();
        sig.signature[20] ^= 1;
        conn.execute(
            "UPDATE cosignatures SET line = ?1 WHERE height = 7 AND witness = 'w1'",
            [sig.to_line().trim_end()],
        )
        .unwrap();
        match verify_database_cosignatures(&conn, &policy, heads - 1) {
            Err(VerifyError::Invalid(Failure::BadCosignature { height: 7, .. })) => {}
            other => panic!("{other:?}"),
        }
        // The newest head relied on is the last verified one, not a later row.
        assert!(matches!(
            verify_database_cosignatures(&conn, &policy, 3),
            Err(VerifyError::Invalid(Failure::HeadMalformed { height: 4, .. }))
        ));
    }
}
