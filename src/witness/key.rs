//! The witness's Ed25519 cosigning key: in a PKCS#11 token, or (tests, small setups) in a key file.
//!
//! A key file holds a PKCS#8 PEM Ed25519 private key (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey
//! -algorithm ed25519` writes it, and as `anchorlog witness keygen` writes it) or the raw 32-byte seed. It
//! must be mode 0600 (no group or other access) or the witness refuses to start.

use super::config::{WitnessConfig, WitnessKeyBackend};
use crate::config::{check_private_file_mode, ConfigError};
use anchorlog_core::note::VerifierKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A key problem.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Configuration or file-mode problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds something else.
    #[error(
        "key file {path}: {problem}; expected a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm \
         ed25519`) or the raw 32-byte seed"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `keygen` does not overwrite a key.
    #[error(
        "key file {0} already exists; keygen never overwrites a key (move it away first if you mean it)"
    )]
    Exists(PathBuf),
    /// A PKCS#11 failure.
    #[cfg(feature = "pkcs11")]
    #[error(transparent)]
    Pkcs11(#[from] crate::signer::pkcs11::Pkcs11Error),
    /// The backend is not compiled in.
    #[error("key.backend = \"pkcs11\" is not available in this build (cargo feature `pkcs11`)")]
    Unavailable,
    /// The key name is not usable.
    #[error(transparent)]
    Name(#[from] anchorlog_core::note::VkeyError),
}

/// The opened cosigning key. Send, not Sync: it lives on the witness thread.
pub enum CosignerKey {
    /// A key file's key, in memory.
    File {
        /// The key.
        key: ed25519_dalek::SigningKey,
        /// Where it came from.
        path: PathBuf,
    },
    /// A key in a PKCS#11 token.
    #[cfg(feature = "pkcs11")]
    Pkcs11(crate::signer::pkcs11::ed25519::Pkcs11Ed25519Signer),
}

impl CosignerKey {
    /// Opens the configured key (checks the key file's mode; logs in to the token).
    pub fn open(config: &WitnessConfig) -> Result<Self, KeyError> {
        match config.key.backend {
            WitnessKeyBackend::File => {
                let path = key_file(config)?;
                Ok(CosignerKey::File { key: read_key_file(path)?, path: path.to_path_buf() })
            }
            WitnessKeyBackend::Pkcs11 => open_pkcs11(config),
        }
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        match self {
            CosignerKey::File { key, .. } => key.verifying_key().to_bytes(),
            #[cfg(feature = "pkcs11")]
            CosignerKey::Pkcs11(s) => s.public_key(),
        }
    }

    /// Signs `message` with Ed25519.
    pub fn sign(&mut self, message: &[u8]) -> Result<[u8; 64], KeyError> {
        match self {
            CosignerKey::File { key, .. } => {
                use ed25519_dalek::Signer as _;
                Ok(key.sign(message).to_bytes())
            }
            #[cfg(feature = "pkcs11")]
            CosignerKey::Pkcs11(s) => Ok(s.sign(message)?),
        }
    }

    /// The witness's cosignature/v1 vkey for key name `name`.
    pub fn vkey(&self, name: &str) -> Result<VerifierKey, KeyError> {
        Ok(VerifierKey::cosignature_v1(name, &self.public_key())?)
    }

    /// A description without secrets.
    pub fn describe(&self) -> String {
        match self {
            CosignerKey::File { path, .. } => format!("Ed25519 key file {}", path.display()),
            #[cfg(feature = "pkcs11")]
            CosignerKey::Pkcs11(s) => s.describe(),
        }
    }
}

fn key_file(config: &WitnessConfig) -> Result<&Path, KeyError> {
    config.key.file.as_deref().ok_or_else(|| {
        KeyError::Config(ConfigError::Invalid {
            key: "key.file".into(),
            problem: "required when key.backend = \"file\"".into(),
        })
    })
}

#[cfg(feature = "pkcs11")]
fn pkcs11_parts(
    config: &WitnessConfig,
) -> Result<(crate::signer::pkcs11::Pkcs11Settings, Zeroizing<String>), KeyError> {
    let p = config.key.pkcs11.clone().ok_or_else(|| {
        KeyError::Config(ConfigError::Invalid {
            key: "key.pkcs11".into(),
            problem: "required when key.backend = \"pkcs11\"".into(),
        })
    })?;
    let pin = crate::config::read_secret_file("key.pkcs11.pin_file", &p.pin_file)?;
    let settings = crate::signer::pkcs11::Pkcs11Settings {
        module: p.module,
        token_label: p.token_label,
        key_label: p.key_label,
    };
    Ok((settings, pin))
}

#[cfg(feature = "pkcs11")]
fn open_pkcs11(config: &WitnessConfig) -> Result<CosignerKey, KeyError> {
    let (settings, pin) = pkcs11_parts(config)?;
    Ok(CosignerKey::Pkcs11(crate::signer::pkcs11::ed25519::Pkcs11Ed25519Signer::open(&settings, &pin)?))
}

#[cfg(not(feature = "pkcs11"))]
fn open_pkcs11(_config: &WitnessConfig) -> Result<CosignerKey, KeyError> {
    Err(KeyError::Unavailable)
}

/// Reads a key file (mode 0600 required): PKCS#8 PEM or the raw 32-byte seed.
pub fn read_key_file(path: &Path) -> Result<ed25519_dalek::SigningKey, KeyError> {
    check_private_file_mode("key.file", path)?;
    let bytes =
        Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Io { path: path.into(), source })?);
    let format = |problem: String| KeyError::Format { path: path.into(), problem };
    if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(&bytes).map_err(|_| format("the PEM file is not UTF-8".into()))?;
        return ed25519_dalek::SigningKey::from_pkcs8_pem(text)
            .map_err(|e| format(format!("not a PKCS#8 Ed25519 private key ({e})")));
    }
    let seed = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format(format!("it is {} bytes and does not start with -----BEGIN", bytes.len())))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Creates a new random key file (PKCS#8 PEM, mode 0600, never overwriting).
pub fn write_new_key_file(path: &Path) -> Result<ed25519_dalek::SigningKey, KeyError> {
    use rand::RngCore as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let pem = key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF).map_err(|e| {
        KeyError::Format { path: path.into(), problem: format!("cannot encode the key: {e}") }
    })?;
    let io = |source| KeyError::Io { path: path.into(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.into())
            } else {
                io(e)
            }
        })?;
    file.write_all(pem.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

/// `anchorlog witness keygen`: creates the configured key (a new key file, or a key pair in the token) and
/// returns the witness's vkey for log operators.
pub fn keygen(config: &WitnessConfig) -> Result<VerifierKey, KeyError> {
    match config.key.backend {
        WitnessKeyBackend::File => {
            let key = write_new_key_file(key_file(config)?)?;
            Ok(VerifierKey::cosignature_v1(&config.name, key.verifying_key().as_bytes())?)
        }
        WitnessKeyBackend::Pkcs11 => {
            generate_pkcs11(config)?;
            CosignerKey::open(config)?.vkey(&config.name)
        }
    }
}

#[cfg(feature = "pkcs11")]
fn generate_pkcs11(config: &WitnessConfig) -> Result<(), KeyError> {
    let (settings, pin) = pkcs11_parts(config)?;
    crate::signer::pkcs11::ed25519::generate_key(&settings, &pin)?;
    Ok(())
}

#[cfg(not(feature = "pkcs11"))]
fn generate_pkcs11(_config: &WitnessConfig) -> Result<(), KeyError> {
    Err(KeyError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn written_key_files_read_back_and_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.key");
        let key = write_new_key_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(read_key_file(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(matches!(write_new_key_file(&path), Err(KeyError::Exists(p)) if p == path));
    }

    #[test]
    fn raw_seed_files_are_accepted_and_others_refused() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8], mode: u32| {
            let p = dir.path().join(name);
            let mut f = std::fs::OpenOptions::new().write(true).create(true).mode(mode).open(&p).unwrap();
            std::io::Write::write_all(&mut f, data).unwrap();
            p
        };
        let seed = write("seed", &[0x42; 32], 0o600);
        assert_eq!(read_key_file(&seed).unwrap().to_bytes(), [0x42; 32]);
        let short = write("short", &[1; 31], 0o600);
        let err = read_key_file(&short).unwrap_err().to_string();
        assert!(err.contains("it is 31 bytes and does not start with -----BEGIN"), "{err}");
        let open = write("open", &[0x42; 32], 0o644);
        let err = read_key_file(&open).unwrap_err().to_string();
        assert!(err.contains("the file has mode 0644") && err.contains("chmod 600"), "{err}");
        let group = write("group", &[0x42; 32], 0o640);
        assert!(read_key_file(&group).unwrap_err().to_string().contains("mode 0640"));
        let bad_pem =
            write("bad.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 0o600);
        assert!(read_key_file(&bad_pem)
            .unwrap_err()
            .to_string()
            .contains("not a PKCS#8 Ed25519 private key"));
    }
}
