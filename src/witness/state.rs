//! The witness's memory: per log origin, the latest checkpoint it cosigned (size, root, the cosigned note), and
//! the evidence of refused, validly signed checkpoints that may prove misbehaviour. SQLite, WAL,
//! `synchronous=FULL`.
//!
//! [`WitnessStore::submit`] runs the whole tlog-witness decision for one request in ONE `BEGIN IMMEDIATE`
//! transaction: read the stored size, check the old size, the proof and the roots, cosign, store, commit
//! (fsync) — and only then does the caller answer. Two submissions, from any thread or process, are therefore
//! serialised on the database's write lock, and the stored size can never go back (the race spelled out at
//! the end of tlog-witness's add-checkpoint section).

use anchorlog_core::merkle::{self, Hash, MerkleError};
use anchorlog_core::note::{Note, NoteSignature, TlogCheckpoint};
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Schema version of the witness database.
pub const WITNESS_SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE witness_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE logs (
    origin TEXT PRIMARY KEY,
    tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
    root BLOB NOT NULL CHECK (length(root) = 32),
    checkpoint TEXT NOT NULL,
    cosigned_at INTEGER NOT NULL CHECK (cosigned_at > 0),
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE evidence (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    stored_size INTEGER NOT NULL,
    stored_root BLOB NOT NULL,
    stored_checkpoint TEXT,
    old_size INTEGER NOT NULL,
    checkpoint_size INTEGER NOT NULL,
    checkpoint_root BLOB NOT NULL,
    checkpoint_sha256 BLOB NOT NULL,
    request BLOB NOT NULL,
    detail TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    UNIQUE (origin, kind, checkpoint_sha256, stored_size)
) STRICT;
";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or created.
    #[error("cannot open the witness database {path}: {source}")]
    Open {
        /// File.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The file is not a witness database of this version.
    #[error(
        "{path} is not an anchorlog witness database of schema version {WITNESS_SCHEMA_VERSION} (found {found}); \
         point storage.database at the witness's own file"
    )]
    Schema {
        /// File.
        path: PathBuf,
        /// What was found.
        found: String,
    },
    /// A query failed.
    #[error("witness database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored row is inconsistent.
    #[error("witness database: the row of {origin:?} is corrupt: {problem}")]
    Corrupt {
        /// Log origin.
        origin: String,
        /// What is wrong.
        problem: String,
    },
}

/// What the witness remembers about one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    /// Size of the latest cosigned checkpoint (0 if none yet).
    pub size: u64,
    /// Its root (the empty tree's root if none yet).
    pub root: Hash,
    /// The cosigned note: checkpoint text, the log signatures that verified, the witness's cosignature.
    pub checkpoint: Option<String>,
    /// Timestamp of the latest cosignature (0 if none yet).
    pub cosigned_at: u64,
}

impl StoredLog {
    /// The state of a log never cosigned: size 0, the empty tree.
    pub fn empty() -> Self {
        StoredLog { size: 0, root: merkle::empty_root(), checkpoint: None, cosigned_at: 0 }
    }
}

/// A validly signed submission, ready for the consistency checks.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The `old` line.
    pub old_size: u64,
    /// The consistency proof.
    pub proof: &'a [Hash],
    /// The parsed checkpoint.
    pub checkpoint: &'a TlogCheckpoint,
    /// The exact checkpoint text (the note text).
    pub text: &'a str,
    /// The log signatures that verified (kept with the stored checkpoint).
    pub log_signatures: &'a [NoteSignature],
    /// The whole request body (kept as evidence if the checkpoint is refused).
    pub request: &'a [u8],
}

/// Kinds of evidence of possible log misbehaviour (the `evidence.kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceKind {
    /// A signed checkpoint of the stored size with another root: a fork.
    SameSizeDifferentRoot,
    /// The consistency proof does not link the stored checkpoint to the new one (a fork, a rewrite, or a bad
    /// proof: the row keeps both checkpoints so it can be decided later).
    BadConsistencyProof,
    /// A signed checkpoint of size 0 whose root is not the empty tree's.
    EmptyTreeRoot,
}

impl EvidenceKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::SameSizeDifferentRoot => "same_size_different_root",
            EvidenceKind::BadConsistencyProof => "bad_consistency_proof",
            EvidenceKind::EmptyTreeRoot => "empty_tree_root",
        }
    }
}

/// Why a validly signed checkpoint is not cosigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The old size is not the stored size: the client must retry from the stored size (409).
    #[error("old size {old_size} is not the size of the latest cosigned checkpoint, {stored_size}")]
    Conflict {
        /// The request's old size.
        old_size: u64,
        /// The stored size.
        stored_size: u64,
    },
    /// Same size as stored, another root: a fork (409 per tlog-witness v1.0.0).
    #[error("the checkpoint has the stored size {stored_size} but another root hash: the log forked")]
    SameSizeDifferentRoot {
        /// The stored size.
        stored_size: u64,
    },
    /// A size-0 checkpoint with a root other than SHA-256("") (422).
    #[error("a checkpoint of size 0 must have the empty tree's root hash (SHA-256 of nothing)")]
    EmptyTreeRoot,
    /// A proof was sent where none may be (old size 0, or old size = new size) (422).
    #[error("the consistency proof must be empty when the old size is 0 or equals the checkpoint size; {0} lines were sent")]
    UnexpectedProof(usize),
    /// The consistency proof does not verify (422).
    #[error("the consistency proof does not verify: {0}")]
    BadProof(MerkleError),
}

impl Refusal {
    /// The evidence kind this refusal records, if any.
    pub fn evidence(&self) -> Option<EvidenceKind> {
        match self {
            Refusal::SameSizeDifferentRoot { .. } => Some(EvidenceKind::SameSizeDifferentRoot),
            Refusal::BadProof(_) => Some(EvidenceKind::BadConsistencyProof),
            Refusal::EmptyTreeRoot => Some(EvidenceKind::EmptyTreeRoot),
            Refusal::Conflict { .. } | Refusal::UnexpectedProof(_) => None,
        }
    }
}

/// The tlog-witness v1.0.0 consistency rules for a validly signed checkpoint against what is stored (pure).
/// The caller has already refused `old_size > checkpoint size` (400).
pub fn check(stored: &StoredLog, sub: &Submission<'_>) -> Result<(), Refusal> {
    let (old_size, new) = (sub.old_size, sub.checkpoint);
    if old_size != stored.size {
        return Err(Refusal::Conflict { old_size, stored_size: stored.size });
    }
    if new.size == 0 && new.root != merkle::empty_root() {
        return Err(Refusal::EmptyTreeRoot);
    }
    if old_size == new.size {
        if !sub.proof.is_empty() {
            return Err(Refusal::UnexpectedProof(sub.proof.len()));
        }
        if new.root != stored.root {
            return Err(Refusal::SameSizeDifferentRoot { stored_size: stored.size });
        }
        return Ok(());
    }
    if old_size == 0 {
        // The empty tree is a prefix of every tree: nothing to prove.
        return if sub.proof.is_empty() { Ok(()) } else { Err(Refusal::UnexpectedProof(sub.proof.len())) };
    }
    merkle::verify_consistency(old_size, new.size, &stored.root, &new.root, sub.proof)
        .map_err(Refusal::BadProof)
}

/// The outcome of [`WitnessStore::submit`].
#[derive(Debug)]
pub enum Submitted<E> {
    /// Cosigned and stored (committed): the cosignature.
    Cosigned(NoteSignature),
    /// Refused (an evidence row, if any, is committed).
    Refused(Refusal),
    /// Cosigning failed; nothing changed.
    SignFailed(E),
}

/// One evidence row (for operators and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Log origin.
    pub origin: String,
    /// [`EvidenceKind::as_str`].
    pub kind: String,
    /// Stored size at the time.
    pub stored_size: u64,
    /// The request's old size.
    pub old_size: u64,
    /// The refused checkpoint's size.
    pub checkpoint_size: u64,
    /// The whole request body.
    pub request: Vec<u8>,
    /// The refusal, in words.
    pub detail: String,
    /// How many identical submissions were refused.
    pub count: u64,
}

/// The witness database (one connection; the witness thread owns it).
pub struct WitnessStore {
    conn: Connection,
}

impl WitnessStore {
    /// Opens or creates the database.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |source| StateError::Open { path: path.to_path_buf(), source };
        let mut conn = Connection::open(path).map_err(open_err)?;
        crate::store::apply_pragmas(&conn).map_err(open_err)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(open_err)?;
        let has_meta: bool = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='witness_meta'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(open_err)?
            > 0;
        if has_meta {
            let found: Option<String> = tx
                .query_row("SELECT value FROM witness_meta WHERE key = 'schema_version'", [], |r| r.get(0))
                .optional()
                .map_err(open_err)?;
            if found.as_deref() != Some(&WITNESS_SCHEMA_VERSION.to_string()) {
                return Err(StateError::Schema {
                    path: path.into(),
                    found: found.unwrap_or_else(|| "none".into()),
                });
            }
        } else {
            let tables: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_master WHERE type='table'", [], |r| r.get(0))
                .map_err(open_err)?;
            if tables > 0 {
                return Err(StateError::Schema {
                    path: path.into(),
                    found: "another kind of database".into(),
                });
            }
            tx.execute_batch(SCHEMA).map_err(open_err)?;
            tx.execute(
                "INSERT INTO witness_meta (key, value) VALUES ('schema_version', ?1)",
                [WITNESS_SCHEMA_VERSION.to_string()],
            )
            .map_err(open_err)?;
        }
        tx.commit().map_err(open_err)?;
        Ok(WitnessStore { conn })
    }

    /// What is stored for `origin` (the empty state if nothing is).
    pub fn latest(&self, origin: &str) -> Result<StoredLog, StateError> {
        read_log(&self.conn, origin)
    }

    /// Checks `sub` against the stored state, cosigns it with `cosign(text, timestamp)` and stores it — all in
    /// one `BEGIN IMMEDIATE` transaction, committed (fsynced) before returning. The timestamp passed to
    /// `cosign` is `max(now, last cosignature time of this log)`, so a log's cosignatures never go back in
    /// time even if the clock does. A refusal that is evidence is recorded (deduplicated per refused
    /// checkpoint and stored size, with a count) in the same transaction.
    pub fn submit<E>(
        &mut self,
        sub: &Submission<'_>,
        now_secs: u64,
        now_ms: i64,
        cosign: impl FnOnce(&str, u64) -> Result<NoteSignature, E>,
    ) -> Result<Submitted<E>, StateError> {
        let origin = sub.checkpoint.origin.as_str();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored = read_log(&tx, origin)?;
        if let Err(refusal) = check(&stored, sub) {
            if let Some(kind) = refusal.evidence() {
                record_evidence(&tx, &stored, sub, kind, &refusal.to_string(), now_ms)?;
                tx.commit()?;
            }
            return Ok(Submitted::Refused(refusal));
        }
        let timestamp = now_secs.max(stored.cosigned_at).max(1);
        let cosignature = match cosign(sub.text, timestamp) {
            Ok(c) => c,
            Err(e) => return Ok(Submitted::SignFailed(e)),
        };
        let mut signatures = sub.log_signatures.to_vec();
        signatures.push(cosignature.clone());
        let note = Note::new(sub.text, signatures)
            .map_err(|e| StateError::Corrupt { origin: origin.into(), problem: e.to_string() })?
            .to_text();
        tx.execute(
            "INSERT INTO logs (origin, tree_size, root, checkpoint, cosigned_at, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (origin) DO UPDATE SET tree_size = excluded.tree_size, root = excluded.root,
               checkpoint = excluded.checkpoint, cosigned_at = excluded.cosigned_at,
               updated_at_ms = excluded.updated_at_ms",
            params![
                origin,
                to_i64(sub.checkpoint.size),
                &sub.checkpoint.root[..],
                note,
                to_i64(timestamp),
                now_ms
            ],
        )?;
        tx.commit()?;
        Ok(Submitted::Cosigned(cosignature))
    }

    /// The evidence rows of `origin`, oldest first.
    pub fn evidence(&self, origin: &str) -> Result<Vec<Evidence>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT origin, kind, stored_size, old_size, checkpoint_size, request, detail, count
             FROM evidence WHERE origin = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([origin], |r| {
            Ok(Evidence {
                origin: r.get(0)?,
                kind: r.get(1)?,
                stored_size: r.get::<_, i64>(2)? as u64,
                old_size: r.get::<_, i64>(3)? as u64,
                checkpoint_size: r.get::<_, i64>(4)? as u64,
                request: r.get(5)?,
                detail: r.get(6)?,
                count: r.get::<_, i64>(7)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Sizes are bounded by [`anchorlog_core::note::checkpoint::MAX_TREE_SIZE`] (2^63 − 1) when parsed, so this never clamps
/// a real value; it keeps the conversion total.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn read_log(conn: &Connection, origin: &str) -> Result<StoredLog, StateError> {
    let row: Option<(i64, Vec<u8>, String, i64)> = conn
        .query_row(
            "SELECT tree_size, root, checkpoint, cosigned_at FROM logs WHERE origin = ?1",
            [origin],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((size, root, checkpoint, cosigned_at)) = row else { return Ok(StoredLog::empty()) };
    let corrupt = |problem: &str| StateError::Corrupt { origin: origin.into(), problem: problem.into() };
    Ok(StoredLog {
        size: u64::try_from(size).map_err(|_| corrupt("negative tree size"))?,
        root: <[u8; 32]>::try_from(root).map_err(|_| corrupt("the root is not 32 bytes"))?,
        checkpoint: Some(checkpoint),
        cosigned_at: u64::try_from(cosigned_at).map_err(|_| corrupt("negative timestamp"))?,
    })
}

fn record_evidence(
    conn: &Connection,
    stored: &StoredLog,
    sub: &Submission<'_>,
    kind: EvidenceKind,
    detail: &str,
    now_ms: i64,
) -> Result<(), StateError> {
    let digest: [u8; 32] = Sha256::digest(sub.text.as_bytes()).into();
    conn.execute(
        "INSERT INTO evidence (origin, kind, stored_size, stored_root, stored_checkpoint, old_size, checkpoint_size,
           checkpoint_root, checkpoint_sha256, request, detail, first_seen_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
         ON CONFLICT (origin, kind, checkpoint_sha256, stored_size)
         DO UPDATE SET count = count + 1, last_seen_ms = excluded.last_seen_ms",
        params![
            sub.checkpoint.origin,
            kind.as_str(),
            to_i64(stored.size),
            &stored.root[..],
            stored.checkpoint,
            to_i64(sub.old_size),
            to_i64(sub.checkpoint.size),
            &sub.checkpoint.root[..],
            &digest[..],
            sub.request,
            detail,
            now_ms,
        ],
    )?;
    tracing::warn!(
        origin = %sub.checkpoint.origin,
        kind = kind.as_str(),
        stored_size = stored.size,
        old_size = sub.old_size,
        checkpoint_size = sub.checkpoint.size,
        detail,
        "refused a validly signed checkpoint: possible log misbehaviour, evidence recorded"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorlog_core::merkle::{consistency_proof, leaf_hash, root_of};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn checkpoint(n: u64) -> TlogCheckpoint {
        TlogCheckpoint {
            origin: "log.test/a".into(),
            size: n,
            root: root_of(&leaves(n)[..]),
            extensions: vec![],
        }
    }

    fn stored(n: u64) -> StoredLog {
        if n == 0 {
            return StoredLog::empty();
        }
        StoredLog { size: n, root: root_of(&leaves(n)), checkpoint: Some(String::new()), cosigned_at: 1 }
    }

    fn sub<'a>(old: u64, cp: &'a TlogCheckpoint, proof: &'a [Hash], text: &'a str) -> Submission<'a> {
        Submission { old_size: old, proof, checkpoint: cp, text, log_signatures: &[], request: b"req" }
    }

    #[test]
    fn the_rules_of_tlog_witness() {
        let cp10 = checkpoint(10);
        let t = cp10.to_text();
        let proof = consistency_proof(4, &leaves(10)).unwrap();
        assert_eq!(check(&stored(4), &sub(4, &cp10, &proof, &t)), Ok(()));
        assert_eq!(check(&stored(0), &sub(0, &cp10, &[], &t)), Ok(()));
        assert_eq!(check(&stored(10), &sub(10, &cp10, &[], &t)), Ok(()));
        assert_eq!(
            check(&stored(5), &sub(4, &cp10, &proof, &t)),
            Err(Refusal::Conflict { old_size: 4, stored_size: 5 })
        );
        assert_eq!(check(&stored(0), &sub(0, &cp10, &proof, &t)), Err(Refusal::UnexpectedProof(proof.len())));
        let mut bad = proof.clone();
        bad[0][0] ^= 1;
        assert!(matches!(check(&stored(4), &sub(4, &cp10, &bad, &t)), Err(Refusal::BadProof(_))));
        let forked = TlogCheckpoint { root: [7; 32], ..cp10.clone() };
        assert_eq!(
            check(&stored(10), &sub(10, &forked, &[], &t)),
            Err(Refusal::SameSizeDifferentRoot { stored_size: 10 })
        );
        let bad_empty = TlogCheckpoint { size: 0, root: [7; 32], ..cp10.clone() };
        assert_eq!(check(&stored(0), &sub(0, &bad_empty, &[], &t)), Err(Refusal::EmptyTreeRoot));
        assert_eq!(check(&stored(0), &sub(0, &checkpoint(0), &[], &t)), Ok(()));
        // A fork larger than the stored tree: no proof can link it.
        let other: Vec<Hash> = (0..10u64).map(|i| leaf_hash(&(i + 100).to_be_bytes())).collect();
        let fork = TlogCheckpoint { root: root_of(&other), ..cp10.clone() };
        assert!(matches!(
            check(&stored(4), &sub(4, &fork, &proof, &t)),
            Err(Refusal::BadProof(MerkleError::NewRootMismatch { .. }))
        ));
    }

    fn cosign_ok(text: &str, t: u64) -> Result<NoteSignature, String> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        anchorlog_core::note::cosignature::sign("w.test/1", &key, text, t).map_err(|e| e.to_string())
    }

    #[test]
    fn submit_stores_and_evidence_is_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = WitnessStore::open(&dir.path().join("w.db")).unwrap();
        let cp4 = checkpoint(4);
        let t4 = cp4.to_text();
        assert!(matches!(
            store.submit(&sub(0, &cp4, &[], &t4), 100, 1, cosign_ok),
            Ok(Submitted::Cosigned(_))
        ));
        let s = store.latest("log.test/a").unwrap();
        assert_eq!((s.size, s.root, s.cosigned_at), (4, cp4.root, 100));
        // The clock went back: the next cosignature still carries 100.
        let cp10 = checkpoint(10);
        let t10 = cp10.to_text();
        let proof = consistency_proof(4, &leaves(10)).unwrap();
        match store.submit(&sub(4, &cp10, &proof, &t10), 50, 2, cosign_ok).unwrap() {
            Submitted::Cosigned(sig) => {
                assert_eq!(anchorlog_core::note::cosignature::timestamp(&sig), Ok(100))
            }
            other => panic!("{other:?}"),
        }
        let stored_note = store.latest("log.test/a").unwrap().checkpoint.unwrap();
        assert!(stored_note.starts_with(&format!("{t10}\n\u{2014} w.test/1 ")), "{stored_note}");
        // The same forked checkpoint twice: one evidence row, count 2.
        let fork = TlogCheckpoint { root: [7; 32], ..cp10.clone() };
        let tf = fork.to_text();
        for _ in 0..2 {
            match store.submit(&sub(10, &fork, &[], &tf), 200, 3, cosign_ok).unwrap() {
                Submitted::Refused(Refusal::SameSizeDifferentRoot { stored_size: 10 }) => {}
                other => panic!("{other:?}"),
            }
        }
        let ev = store.evidence("log.test/a").unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].kind.as_str(), ev[0].count, ev[0].stored_size),
            ("same_size_different_root", 2, 10)
        );
        assert_eq!(ev[0].request, b"req");
        // A conflict records nothing and changes nothing.
        assert!(matches!(
            store.submit(&sub(4, &cp10, &proof, &t10), 300, 4, cosign_ok).unwrap(),
            Submitted::Refused(Refusal::Conflict { old_size: 4, stored_size: 10 })
        ));
        assert_eq!(store.evidence("log.test/a").unwrap().len(), 1);
        // A failing signer changes nothing.
        let cp12 = checkpoint(12);
        let t12 = cp12.to_text();
        let p12 = consistency_proof(10, &leaves(12)).unwrap();
        let failed =
            store.submit(&sub(10, &cp12, &p12, &t12), 300, 5, |_, _| Err::<NoteSignature, _>("hsm down"));
        assert!(matches!(failed.unwrap(), Submitted::SignFailed("hsm down")));
        assert_eq!(store.latest("log.test/a").unwrap().size, 10);
    }

    /// Two connections (as two threads or processes would have) race with different sizes from the same old
    /// size: BEGIN IMMEDIATE serialises them, exactly one wins, and the loser sees the winner's size.
    #[test]
    fn concurrent_submissions_from_two_connections_never_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut store = WitnessStore::open(&path).unwrap();
        let cp4 = checkpoint(4);
        store.submit(&sub(0, &cp4, &[], &cp4.to_text()), 1, 1, cosign_ok).unwrap();
        for round in 0..20u64 {
            let old = store.latest("log.test/a").unwrap().size;
            let sizes = [old + 1 + round % 3, old + 5];
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let handles: Vec<_> = sizes
                .into_iter()
                .map(|n| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut s = WitnessStore::open(&path).unwrap();
                        let cp = checkpoint(n);
                        let proof = consistency_proof(old, &leaves(n)).unwrap();
                        let text = cp.to_text();
                        barrier.wait();
                        match s.submit(&sub(old, &cp, &proof, &text), 1, 1, cosign_ok).unwrap() {
                            Submitted::Cosigned(_) => Ok(n),
                            Submitted::Refused(Refusal::Conflict { stored_size, .. }) => Err(stored_size),
                            other => panic!("{other:?}"),
                        }
                    })
                })
                .collect();
            let results: Vec<Result<u64, u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<u64> = results.iter().filter_map(|r| r.ok()).collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            for r in &results {
                if let Err(seen) = r {
                    assert_eq!(*seen, winners[0], "the loser is told the winner's size");
                }
            }
            assert_eq!(store.latest("log.test/a").unwrap().size, winners[0]);
            assert!(winners[0] > old);
        }
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE events (x)").unwrap();
        let err = WitnessStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("found another kind of database"), "{err}");
    }
}
