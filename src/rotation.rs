//! Rotating the head-signing key (docs/FORMAT.md §20, README "Rotating the signing key").
//!
//! An operator rotates in two steps, so that the log itself records the change before any head is signed by the
//! new key:
//! 1. `anchorlog keys rotate --config FILE --reason TEXT --new-key-label L` (or `--new-handle H` for a TPM) creates
//!    the new key in the same device and writes a **pending rotation** file beside the database
//!    ([`pending_path`]) naming the old and the new key. Nothing is written to the log; the appliance may run.
//! 2. The operator points the configuration at the new key (`key_label` / `handle`) and restarts the appliance.
//!    At start, after reconciliation, it opens the old key as the file says and, in one transaction, appends its
//!    start record and the `anchorlog.key_rotation` record and stores a head over them signed by the **old** key;
//!    every later head is signed by the new key. Then the file is removed.
//!
//! Every other combination of the log's current key, the configured key and the file is ambiguous, and the
//! appliance refuses to start with a message that says what to do ([`plan`]).

use crate::config::{Config, SignerBackend, TpmHandle};
use anchorlog_core::verify::keys::{format_counter_index, parse_counter_index};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `format` of a pending rotation file.
pub const PENDING_FORMAT: &str = "anchorlog-key-rotation-request";

/// Where `keys rotate` leaves the pending rotation of the log at `database`: beside it.
pub fn pending_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".key-rotation.json");
    database.with_file_name(name)
}

/// Which key in the configured device: the part of the signer configuration a rotation changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum KeySpec {
    /// A PKCS#11 key pair, by label (same module, token and PIN).
    Pkcs11 {
        /// `signer.pkcs11.key_label`.
        key_label: String,
    },
    /// A TPM key, by persistent handle, with the head counter its heads carry (same TCTI and auth value).
    Tpm {
        /// `signer.tpm.handle`, `0x` and 8 hex digits.
        handle: String,
        /// `signer.tpm.counter_index`, or `None`.
        counter_index: Option<String>,
    },
}

impl KeySpec {
    /// The key the configuration names.
    pub fn of(config: &Config) -> Result<KeySpec, RotationError> {
        match config.signer.backend {
            SignerBackend::Pkcs11 => {
                let p = config.signer.pkcs11.as_ref().ok_or(RotationError::NoSignerSection("pkcs11"))?;
                Ok(KeySpec::Pkcs11 { key_label: p.key_label.clone() })
            }
            SignerBackend::Tpm => {
                let t = config.signer.tpm.as_ref().ok_or(RotationError::NoSignerSection("tpm"))?;
                Ok(KeySpec::Tpm {
                    handle: format_counter_index(t.handle.0),
                    counter_index: t.counter_index.map(|i| format_counter_index(i.0)),
                })
            }
        }
    }

    /// `config` with this key in place of the configured one (everything else, device and secrets, the same).
    pub fn apply(&self, config: &Config) -> Result<Config, RotationError> {
        let mut c = config.clone();
        match (self, c.signer.backend) {
            (KeySpec::Pkcs11 { key_label }, SignerBackend::Pkcs11) => {
                let p = c.signer.pkcs11.as_mut().ok_or(RotationError::NoSignerSection("pkcs11"))?;
                p.key_label = key_label.clone();
            }
            (KeySpec::Tpm { handle, counter_index }, SignerBackend::Tpm) => {
                let t = c.signer.tpm.as_mut().ok_or(RotationError::NoSignerSection("tpm"))?;
                let parse =
                    |s: &str| parse_counter_index(s).map(TpmHandle).ok_or(RotationError::BadSpec(s.into()));
                t.handle = parse(handle)?;
                t.counter_index = counter_index.as_deref().map(parse).transpose()?;
            }
            _ => return Err(RotationError::OtherBackend),
        }
        Ok(c)
    }

    /// The configuration lines that name this key.
    pub fn hint(&self) -> String {
        match self {
            KeySpec::Pkcs11 { key_label } => format!("signer.pkcs11.key_label = {key_label:?}"),
            KeySpec::Tpm { handle, counter_index: Some(i) } => {
                format!("signer.tpm.handle = \"{handle}\" and signer.tpm.counter_index = \"{i}\"")
            }
            KeySpec::Tpm { handle, counter_index: None } => {
                format!("signer.tpm.handle = \"{handle}\" (and no signer.tpm.counter_index)")
            }
        }
    }

    /// The NV index of the counter this key's heads carry.
    pub fn counter_index(&self) -> Option<u32> {
        match self {
            KeySpec::Tpm { counter_index: Some(i), .. } => parse_counter_index(i),
            _ => None,
        }
    }
}

/// A rotation `keys rotate` prepared and the next start performs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingRotation {
    /// [`PENDING_FORMAT`].
    pub format: String,
    /// The log's current key (hex key id).
    pub old_key_id: String,
    /// The new key (hex key id).
    pub new_key_id: String,
    /// The new key's PEM public key.
    pub new_public_key: String,
    /// Why (recorded in the log).
    pub reason: String,
    /// When it was prepared (RFC 3339, informative).
    pub requested_at: String,
    /// Where the old key is.
    pub old: KeySpec,
    /// Where the new key is.
    pub new: KeySpec,
}

/// A rotation that cannot be prepared or performed, or an ambiguous start. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The signer section of the backend is missing.
    #[error("the configuration has no [signer.{0}] section")]
    NoSignerSection(&'static str),
    /// The pending file names a key of another backend.
    #[error("the pending key rotation names a key of another signer backend than the configured one")]
    OtherBackend,
    /// A handle or index in the pending file is malformed.
    #[error("the pending key rotation names a malformed TPM handle or index {0:?}")]
    BadSpec(String),
    /// The file could not be read, parsed or written.
    #[error("{path}: {problem}")]
    File {
        /// The pending rotation file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The configured key is not the one the log's heads are signed by, and no rotation explains it.
    #[error(
        "refusing to start: the log's heads are signed by key {log_key} (the key its chain holds after its last key \
         rotation) but the configured signer's key is {configured}. Configure the signer with the key {log_key}, or, \
         to change keys, run `anchorlog keys rotate --config FILE --reason TEXT` with the old key configured and \
         follow what it prints"
    )]
    KeyMismatch {
        /// The chain's current key.
        log_key: String,
        /// The configured key.
        configured: String,
    },
    /// A rotation is pending but the configuration still names the old key.
    #[error(
        "refusing to start: a key rotation to key {new_key_id} is pending ({path}) but the configuration still \
         names the old key {old_key_id}. To perform it, set {hint} in the configuration and start again (the start \
         records the rotation in the log); to cancel it, delete {path}"
    )]
    NotApplied {
        /// The pending file.
        path: PathBuf,
        /// The old key.
        old_key_id: String,
        /// The new key.
        new_key_id: String,
        /// What to configure.
        hint: String,
    },
    /// A rotation is pending for a log that has no head yet.
    #[error(
        "refusing to start: {path} requests a key rotation but the database holds no signed head yet, so there is \
         no key to rotate from. Delete {path}: a new log simply starts with the configured key"
    )]
    NothingToRotate {
        /// The pending file.
        path: PathBuf,
    },
    /// The pending file fits neither the log nor the configuration.
    #[error(
        "refusing to start: {path} requests a key rotation from key {old_key_id} to {new_key_id}, but the log's \
         current key is {log_key} and the configured key is {configured}. It belongs to another log or state: \
         delete it, configure the key {log_key}, and run `anchorlog keys rotate` again if a rotation is wanted"
    )]
    Unrelated {
        /// The pending file.
        path: PathBuf,
        /// Its old key.
        old_key_id: String,
        /// Its new key.
        new_key_id: String,
        /// The chain's current key.
        log_key: String,
        /// The configured key.
        configured: String,
    },
}

impl PendingRotation {
    /// Reads the pending rotation at `path`, if there is one.
    pub fn load(path: &Path) -> Result<Option<PendingRotation>, RotationError> {
        let file_err = |problem: String| RotationError::File { path: path.to_path_buf(), problem };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_err(e.to_string())),
        };
        let p: PendingRotation = serde_json::from_slice(&bytes)
            .map_err(|e| file_err(format!("not a pending key rotation from `anchorlog keys rotate`: {e}")))?;
        if p.format != PENDING_FORMAT {
            return Err(file_err(format!("format {:?} is not {PENDING_FORMAT:?}", p.format)));
        }
        Ok(Some(p))
    }

    /// Writes it to `path`, which must not exist yet (one rotation at a time), durably.
    pub fn save(&self, path: &Path) -> Result<(), RotationError> {
        use std::io::Write as _;
        let file_err = |problem: String| RotationError::File { path: path.to_path_buf(), problem };
        let text = serde_json::to_vec_pretty(self).map_err(|e| file_err(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| file_err(e.to_string()))?;
        f.write_all(&text).and_then(|()| f.write_all(b"\n")).and_then(|()| f.sync_all()).map_err(|e| {
            let _ = std::fs::remove_file(path);
            file_err(e.to_string())
        })
    }
}

/// What a start does about keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Sign with the configured key, the log's current key (or a new log's first).
    Continue,
    /// The rotation the file asks for is already in the log (a crash after it was recorded): remove the file.
    AlreadyRecorded,
    /// Record the rotation the file asks for, then sign with the configured (new) key.
    Rotate,
}

/// Decides what a start does, from the log's current key (`None` for a log without heads), the configured key and
/// the pending rotation (with its file's `path`), if any. Everything ambiguous is refused.
pub fn plan(
    log_key: Option<&str>,
    configured: &str,
    pending: Option<&PendingRotation>,
    path: &Path,
) -> Result<Plan, RotationError> {
    let Some(p) = pending else {
        return match log_key {
            Some(log) if log != configured => {
                Err(RotationError::KeyMismatch { log_key: log.into(), configured: configured.into() })
            }
            _ => Ok(Plan::Continue),
        };
    };
    let Some(log) = log_key else { return Err(RotationError::NothingToRotate { path: path.to_path_buf() }) };
    if log == p.new_key_id && configured == p.new_key_id {
        return Ok(Plan::AlreadyRecorded);
    }
    if log == p.old_key_id && configured == p.new_key_id {
        return Ok(Plan::Rotate);
    }
    if log == p.old_key_id && configured == p.old_key_id {
        return Err(RotationError::NotApplied {
            path: path.to_path_buf(),
            old_key_id: p.old_key_id.clone(),
            new_key_id: p.new_key_id.clone(),
            hint: p.new.hint(),
        });
    }
    Err(RotationError::Unrelated {
        path: path.to_path_buf(),
        old_key_id: p.old_key_id.clone(),
        new_key_id: p.new_key_id.clone(),
        log_key: log.into(),
        configured: configured.into(),
    })
}

/// The key the log's chain holds now, from the database's indexes (the last head's key, or the new key of a
/// rotation record that head ends with); `None` without heads. For `keys rotate` only: the appliance verifies the
/// whole chain at start.
pub fn indexed_log_key(conn: &rusqlite::Connection) -> Result<Option<String>, crate::store::StoreError> {
    let Some(last) = crate::store::last_head(conn)? else { return Ok(None) };
    if let Some(seq) = crate::store::rotation_seqs(conn)?.last() {
        if seq + 1 == last.tree_size {
            let rec = crate::store::event(conn, *seq)?;
            let new = rec
                .and_then(|e| e.body)
                .and_then(|b| anchorlog_core::verify::keys::RotationRecord::parse(&b).ok())
                .map(|r| r.new_key_id);
            if let Some(new) = new {
                return Ok(Some(new));
            }
        }
    }
    Ok(Some(last.key_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> PendingRotation {
        PendingRotation {
            format: PENDING_FORMAT.into(),
            old_key_id: "o".into(),
            new_key_id: "n".into(),
            new_public_key: String::new(),
            reason: "r".into(),
            requested_at: String::new(),
            old: KeySpec::Pkcs11 { key_label: "k1".into() },
            new: KeySpec::Pkcs11 { key_label: "k2".into() },
        }
    }

    #[test]
    fn only_unambiguous_states_start() {
        let path = Path::new("/var/lib/anchorlog/anchorlog.db.key-rotation.json");
        let p = pending();
        assert_eq!(plan(None, "n", None, path).unwrap(), Plan::Continue);
        assert_eq!(plan(Some("o"), "o", None, path).unwrap(), Plan::Continue);
        assert_eq!(plan(Some("o"), "n", Some(&p), path).unwrap(), Plan::Rotate);
        assert_eq!(plan(Some("n"), "n", Some(&p), path).unwrap(), Plan::AlreadyRecorded);
        let e = plan(Some("o"), "x", None, path).unwrap_err().to_string();
        assert!(e.starts_with("refusing to start: the log's heads are signed by key o"), "{e}");
        let e = plan(Some("o"), "o", Some(&p), path).unwrap_err().to_string();
        assert!(e.contains("set signer.pkcs11.key_label = \"k2\" in the configuration"), "{e}");
        assert!(e.contains("to cancel it, delete /var/lib/anchorlog/anchorlog.db.key-rotation.json"), "{e}");
        let e = plan(None, "n", Some(&p), path).unwrap_err().to_string();
        assert!(e.contains("holds no signed head yet"), "{e}");
        for (log, configured) in [("x", "n"), ("o", "x"), ("n", "o")] {
            let e = plan(Some(log), configured, Some(&p), path).unwrap_err();
            assert!(matches!(e, RotationError::Unrelated { .. }), "{log} {configured}: {e}");
        }
    }

    #[test]
    fn the_pending_file_sits_beside_the_database_and_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("anchorlog.db");
        let path = pending_path(&db);
        assert_eq!(path, dir.path().join("anchorlog.db.key-rotation.json"));
        assert_eq!(PendingRotation::load(&path).unwrap(), None);
        pending().save(&path).unwrap();
        assert_eq!(PendingRotation::load(&path).unwrap(), Some(pending()));
        assert!(matches!(pending().save(&path), Err(RotationError::File { .. })));
        std::fs::write(&path, "{}").unwrap();
        assert!(PendingRotation::load(&path).unwrap_err().to_string().contains("not a pending key rotation"));
        let tpm = KeySpec::Tpm { handle: "0x81010011".into(), counter_index: Some("0x01800010".into()) };
        assert_eq!(
            tpm.hint(),
            "signer.tpm.handle = \"0x81010011\" and signer.tpm.counter_index = \"0x01800010\""
        );
        assert_eq!(tpm.counter_index(), Some(0x0180_0010));
    }
}
