//! `anchorlog witness`: a transparency-log witness (c2sp.org/tlog-witness v1.0.0).
//!
//! A witness remembers, per log origin, the latest checkpoint it cosigned, and cosigns a new checkpoint only if
//! it is signed by the log's configured key(s) and a consistency proof links it to what it remembers. Logs
//! collect cosignatures from several independent witnesses; a verifier that demands a quorum of them knows
//! the log showed that history to all of them, so an insider who rolls the log back or signs a fork with the
//! log's own HSM is caught (docs/FORMAT.md §16, docs/witness-log-side.md).
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML configuration |
//! | [`key`] | the Ed25519 cosigning key: PKCS#11 token or key file; `keygen` |
//! | [`state`] | SQLite state and evidence; the consistency rules in one `BEGIN IMMEDIATE` transaction |
//! | [`http`] | `POST <prefix>/add-checkpoint` over HTTP or HTTPS |
//! | this one | [`Witness`]: one request from body to cosignature; [`WitnessHandle`]: its thread |
//!
//! The cosigning key and the database are blocking resources, so one thread owns both and handles requests
//! one at a time (a witness sees a few requests per log per minute; see [`WitnessHandle`]).

pub mod config;
pub mod http;
pub mod key;
pub mod state;

use anchorlog_core::note::protocol::{AddCheckpointRequest, ProtocolError};
use anchorlog_core::note::{cosignature, Note, NoteError, TlogCheckpoint, VerifierKey};
use config::WitnessConfig;
use key::{CosignerKey, KeyError};
use state::{Refusal, StateError, Submission, Submitted, WitnessStore};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Why the witness could not start.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The cosigning key could not be opened.
    #[error("cannot open the cosigning key: {0}")]
    Key(#[from] KeyError),
    /// The state database could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The witness thread stopped or could not start.
    #[error("the witness thread has stopped")]
    ThreadStopped,
}

/// Why an `add-checkpoint` request was not cosigned; each maps to the status tlog-witness prescribes.
#[derive(Debug, thiserror::Error)]
pub enum AddCheckpointError {
    /// The body, the note or the checkpoint is malformed (400).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The checkpoint's origin is not a configured log (404).
    #[error("unknown log origin {0:?}: this witness is not configured for it")]
    UnknownOrigin(String),
    /// No signature of the log's configured keys verifies, or one of them fails (403).
    #[error("the checkpoint is not validly signed by the log: {0}")]
    LogSignature(NoteError),
    /// The old size is larger than the checkpoint's size (400).
    #[error("old size {old_size} is larger than the checkpoint's size {size}")]
    OldSizeAboveCheckpointSize {
        /// The request's old size.
        old_size: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The consistency rules refused it (409 or 422).
    #[error(transparent)]
    Refused(Refusal),
    /// Storage or key failure (500; details in the witness's log).
    #[error("internal error: {0}")]
    Internal(String),
    /// The witness is shutting down (503).
    #[error("the witness is shutting down")]
    Unavailable,
}

impl AddCheckpointError {
    /// The HTTP status of this answer.
    pub fn status(&self) -> u16 {
        match self {
            AddCheckpointError::Malformed(_) | AddCheckpointError::OldSizeAboveCheckpointSize { .. } => 400,
            AddCheckpointError::UnknownOrigin(_) => 404,
            AddCheckpointError::LogSignature(_) => 403,
            AddCheckpointError::Refused(Refusal::Conflict { .. } | Refusal::SameSizeDifferentRoot { .. }) => {
                409
            }
            AddCheckpointError::Refused(_) => 422,
            AddCheckpointError::Internal(_) => 500,
            AddCheckpointError::Unavailable => 503,
        }
    }

    /// The stable error code (JSON answers; README "Running a witness").
    pub fn code(&self) -> &'static str {
        match self {
            AddCheckpointError::Malformed(_) => "malformed_request",
            AddCheckpointError::UnknownOrigin(_) => "unknown_origin",
            AddCheckpointError::LogSignature(NoteError::InvalidSignature { .. }) => "invalid_log_signature",
            AddCheckpointError::LogSignature(_) => "no_trusted_log_signature",
            AddCheckpointError::OldSizeAboveCheckpointSize { .. } => "old_size_above_checkpoint_size",
            AddCheckpointError::Refused(Refusal::Conflict { .. }) => "old_size_mismatch",
            AddCheckpointError::Refused(Refusal::SameSizeDifferentRoot { .. }) => "same_size_different_root",
            AddCheckpointError::Refused(Refusal::EmptyTreeRoot) => "empty_tree_root",
            AddCheckpointError::Refused(Refusal::UnexpectedProof(_)) => "unexpected_consistency_proof",
            AddCheckpointError::Refused(Refusal::BadProof(_)) => "bad_consistency_proof",
            AddCheckpointError::Internal(_) => "internal",
            AddCheckpointError::Unavailable => "unavailable",
        }
    }

    /// The stored size, for the 409 answers' `text/x.tlog.size` body.
    pub fn stored_size(&self) -> Option<u64> {
        match self {
            AddCheckpointError::Refused(
                Refusal::Conflict { stored_size, .. } | Refusal::SameSizeDifferentRoot { stored_size },
            ) => Some(*stored_size),
            _ => None,
        }
    }
}

impl From<ProtocolError> for AddCheckpointError {
    fn from(e: ProtocolError) -> Self {
        AddCheckpointError::Malformed(e.to_string())
    }
}

/// The witness: configured logs, the state database and the cosigning key.
pub struct Witness {
    name: String,
    vkey: VerifierKey,
    logs: BTreeMap<String, Vec<VerifierKey>>,
    store: WitnessStore,
    key: CosignerKey,
}

impl Witness {
    /// Opens the key, the database and the logs' keys of `config`.
    pub fn open(config: &WitnessConfig) -> Result<Self, WitnessError> {
        let logs = config.log_keys()?;
        let key = CosignerKey::open(config)?;
        let vkey = key.vkey(&config.name)?;
        let store = WitnessStore::open(&config.storage.database)?;
        tracing::info!(vkey = %vkey, key = %key.describe(), logs = logs.len(), "witness ready");
        Ok(Witness { name: config.name.clone(), vkey, logs, store, key })
    }

    /// The witness's cosignature/v1 verifier key (give it to log operators and verifiers).
    pub fn vkey(&self) -> &VerifierKey {
        &self.vkey
    }

    /// The state database (read access for operators and tests).
    pub fn store(&self) -> &WitnessStore {
        &self.store
    }

    /// Handles one `add-checkpoint` body now; returns the cosignature line(s) to answer with.
    pub fn add_checkpoint(&mut self, body: &[u8]) -> Result<String, AddCheckpointError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        self.add_checkpoint_at(body, now.as_secs(), now_ms)
    }

    /// [`Witness::add_checkpoint`] at a given time.
    pub fn add_checkpoint_at(
        &mut self,
        body: &[u8],
        now_secs: u64,
        now_ms: i64,
    ) -> Result<String, AddCheckpointError> {
        let malformed = |e: &dyn std::fmt::Display| AddCheckpointError::Malformed(e.to_string());
        let request = AddCheckpointRequest::parse(body)?;
        let note = Note::parse(request.checkpoint.as_bytes()).map_err(|e| malformed(&e))?;
        let checkpoint = TlogCheckpoint::parse(note.text()).map_err(|e| malformed(&e))?;
        let trusted = self
            .logs
            .get(&checkpoint.origin)
            .ok_or_else(|| AddCheckpointError::UnknownOrigin(checkpoint.origin.clone()))?;
        let verified = note.verify(trusted).map_err(AddCheckpointError::LogSignature)?;
        if request.old_size > checkpoint.size {
            return Err(AddCheckpointError::OldSizeAboveCheckpointSize {
                old_size: request.old_size,
                size: checkpoint.size,
            });
        }
        let log_signatures: Vec<_> = verified.verified.into_iter().map(|(_, s)| s).collect();
        let submission = Submission {
            old_size: request.old_size,
            proof: &request.proof,
            checkpoint: &checkpoint,
            text: note.text(),
            log_signatures: &log_signatures,
            request: body,
        };
        let (name, public, key) = (&self.name, self.key.public_key(), &mut self.key);
        let outcome = self
            .store
            .submit(&submission, now_secs, now_ms, |text, t| {
                cosignature::sign_with(name, &public, text, t, |m| key.sign(m).map_err(SignError::Key))
            })
            .map_err(|e| AddCheckpointError::Internal(e.to_string()))?;
        match outcome {
            Submitted::Cosigned(sig) => {
                tracing::info!(origin = %checkpoint.origin, size = checkpoint.size, old_size = request.old_size, "cosigned");
                Ok(sig.to_line())
            }
            Submitted::Refused(r) => Err(AddCheckpointError::Refused(r)),
            Submitted::SignFailed(e) => Err(AddCheckpointError::Internal(format!("cosigning failed: {e}"))),
        }
    }
}

/// A cosigning failure inside [`WitnessStore::submit`].
#[derive(Debug, thiserror::Error)]
enum SignError {
    #[error(transparent)]
    Key(KeyError),
    #[error(transparent)]
    Cosignature(#[from] cosignature::CosignatureError),
}

type Job = (Vec<u8>, oneshot::Sender<Result<String, AddCheckpointError>>);

/// Async handle to the witness thread, which owns the [`Witness`] (its key may be a PKCS#11 session, which is
/// `Send` but not `Sync`, and SQLite calls block). Requests are handled one at a time, in arrival order.
#[derive(Clone)]
pub struct WitnessHandle {
    jobs: mpsc::Sender<Job>,
    vkey: VerifierKey,
}

impl WitnessHandle {
    /// Opens the witness on a new thread (so every key and database call happens there) and returns once it is
    /// ready, or with the error that prevented it.
    pub fn spawn<F>(open: F) -> Result<WitnessHandle, WitnessError>
    where
        F: FnOnce() -> Result<Witness, WitnessError> + Send + 'static,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (jobs, mut rx) = mpsc::channel::<Job>(256);
        std::thread::Builder::new()
            .name("anchorlog-witness".into())
            .spawn(move || {
                let mut witness = match open() {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(witness.vkey().clone())).is_err() {
                    return;
                }
                while let Some((body, reply)) = rx.blocking_recv() {
                    let _ = reply.send(witness.add_checkpoint(&body));
                }
            })
            .map_err(|_| WitnessError::ThreadStopped)?;
        let vkey = ready_rx.recv().map_err(|_| WitnessError::ThreadStopped)??;
        Ok(WitnessHandle { jobs, vkey })
    }

    /// Handles one `add-checkpoint` body on the witness thread.
    pub async fn add_checkpoint(&self, body: Vec<u8>) -> Result<String, AddCheckpointError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((body, tx)).await.map_err(|_| AddCheckpointError::Unavailable)?;
        rx.await.map_err(|_| AddCheckpointError::Unavailable)?
    }

    /// The witness's vkey.
    pub fn vkey(&self) -> &VerifierKey {
        &self.vkey
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorlog_core::merkle::{consistency_proof, leaf_hash, root_of, Hash};
    use anchorlog_core::note::NoteSignature;

    const ORIGIN: &str = "log.test/unit";

    struct Fixture {
        _dir: tempfile::TempDir,
        witness: Witness,
        log_key: ed25519_dalek::SigningKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let log_vkey = VerifierKey::ed25519(ORIGIN, log_key.verifying_key().as_bytes()).unwrap();
        let key_path = dir.path().join("w.key");
        key::write_new_key_file(&key_path).unwrap();
        let text = format!(
            "name = \"witness.test/w1\"\n[storage]\ndatabase = \"{}\"\n[key]\nbackend = \"file\"\nfile = \"{}\"\n\
             [[log]]\norigin = \"{ORIGIN}\"\nvkeys = [\"{log_vkey}\"]\n",
            dir.path().join("w.db").display(),
            key_path.display()
        );
        let witness = Witness::open(&WitnessConfig::parse(&text).unwrap()).unwrap();
        Fixture { _dir: dir, witness, log_key }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn signed(f: &Fixture, n: u64, root: Hash) -> String {
        use ed25519_dalek::Signer as _;
        let text = TlogCheckpoint { origin: ORIGIN.into(), size: n, root, extensions: vec!["ext 1".into()] }
            .to_text();
        let key_id = anchorlog_core::note::vkey::key_id(ORIGIN, 0x01, f.log_key.verifying_key().as_bytes());
        let sig = NoteSignature {
            name: ORIGIN.into(),
            key_id,
            signature: f.log_key.sign(text.as_bytes()).to_vec(),
        };
        Note::new(text, vec![sig]).unwrap().to_text()
    }

    fn body(old: u64, proof: &[Hash], note: &str) -> Vec<u8> {
        AddCheckpointRequest { old_size: old, proof: proof.to_vec(), checkpoint: note.into() }.to_body()
    }

    #[test]
    fn cosigns_and_the_cosignature_verifies_with_the_vkey() {
        let mut f = fixture();
        let note = signed(&f, 4, root_of(&leaves(4)));
        let line = f.witness.add_checkpoint_at(&body(0, &[], &note), 1_700_000_000, 0).unwrap();
        let text = Note::parse(note.as_bytes()).unwrap().text().to_owned();
        assert_eq!(cosignature::verify_line(&line, f.witness.vkey(), &text), Ok(1_700_000_000));
        let with = anchorlog_core::note::append_signature_lines(&note, &line).unwrap();
        let parsed = Note::parse(with.as_bytes()).unwrap();
        assert_eq!(cosignature::cosigned_by(&parsed, &[f.witness.vkey().clone()]).unwrap().len(), 1);
        let note8 = signed(&f, 8, root_of(&leaves(8)));
        let proof = consistency_proof(4, &leaves(8)).unwrap();
        assert!(f.witness.add_checkpoint_at(&body(4, &proof, &note8), 1_700_000_001, 0).is_ok());
    }

    #[test]
    fn each_failure_has_its_status_and_code() {
        let mut f = fixture();
        let note4 = signed(&f, 4, root_of(&leaves(4)));
        f.witness.add_checkpoint_at(&body(0, &[], &note4), 10, 0).unwrap();
        let other_log = note4.replace(ORIGIN, "other.test/log");
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let forged = {
            let mut g = fixture();
            g.log_key = stranger;
            signed(&g, 6, root_of(&leaves(6)))
        };
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"old 0\nno blank line".to_vec(), 400, "malformed_request"),
            (body(0, &[], "no signature block\n"), 400, "malformed_request"),
            (body(0, &[], &other_log), 404, "unknown_origin"),
            (body(4, &[], &forged), 403, "no_trusted_log_signature"),
            (body(4, &[], &note4.replace("\next 1\n", "\next 2\n")), 403, "invalid_log_signature"),
            (body(5, &[], &note4), 400, "old_size_above_checkpoint_size"),
            (body(0, &[], &signed(&f, 6, root_of(&leaves(6)))), 409, "old_size_mismatch"),
            (body(4, &[], &signed(&f, 4, [1; 32])), 409, "same_size_different_root"),
            (body(4, &[[0; 32]], &signed(&f, 6, root_of(&leaves(6)))), 422, "bad_consistency_proof"),
            (body(4, &[[0; 32]], &note4), 422, "unexpected_consistency_proof"),
        ];
        for (b, status, code) in cases {
            let err = f.witness.add_checkpoint_at(&b, 11, 0).unwrap_err();
            assert_eq!((err.status(), err.code()), (status, code), "{err}");
            if status == 409 {
                assert_eq!(err.stored_size(), Some(4));
            }
        }
        let kinds: Vec<String> =
            f.witness.store().evidence(ORIGIN).unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["same_size_different_root", "bad_consistency_proof"]);
    }
}
