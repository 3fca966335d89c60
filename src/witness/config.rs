//! The witness configuration: one TOML file (hsm-config/witness.example.toml documents every key), unknown
//! keys rejected, defaults as named constants, secrets only as file paths.

use crate::config::{ConfigError, Pkcs11Config};
use anchorlog_core::note::VerifierKey;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Default listen address.
pub const DEFAULT_WITNESS_LISTEN: &str = "127.0.0.1:7380";
/// Default largest `add-checkpoint` body (64 KiB: a checkpoint, 63 proof lines and 100 signatures fit).
pub const DEFAULT_WITNESS_MAX_BODY_BYTES: usize = 64 * 1024;
/// Ceiling of `limits.max_body_bytes`.
pub const WITNESS_MAX_BODY_BYTES_CEILING: usize = 1024 * 1024;
/// Default grace period for in-flight requests on shutdown, in seconds.
pub const DEFAULT_WITNESS_SHUTDOWN_GRACE_S: u64 = 5;

/// The whole witness configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's name: the key name of its cosignature lines and vkey, e.g. `witness.example.org/w1`.
    pub name: String,
    /// The HTTP(S) listener.
    #[serde(default)]
    pub server: WitnessServerConfig,
    /// The state database.
    pub storage: WitnessStorageConfig,
    /// Request bounds.
    #[serde(default)]
    pub limits: WitnessLimitsConfig,
    /// The cosigning key.
    pub key: WitnessKeyConfig,
    /// The logs this witness cosigns for.
    #[serde(rename = "log")]
    pub logs: Vec<WitnessLogConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessServerConfig {
    /// Listen address, e.g. `0.0.0.0:7380`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Submission prefix: `add-checkpoint` is served at `<prefix>/add-checkpoint`. Empty or `/…` without a
    /// trailing slash.
    #[serde(default)]
    pub prefix: String,
    /// TLS server certificate chain (PEM). With `key_file`: HTTPS; without both: plain HTTP (the protocol
    /// authenticates by signatures, TLS only hides the traffic).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// TLS private key (PEM, a file path).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Seconds in-flight requests get on SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace_s: u64,
}

impl Default for WitnessServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            prefix: String::new(),
            cert_file: None,
            key_file: None,
            shutdown_grace_s: DEFAULT_WITNESS_SHUTDOWN_GRACE_S,
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessStorageConfig {
    /// SQLite file holding, per log, the latest cosigned checkpoint, and the evidence of refused ones.
    pub database: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessLimitsConfig {
    /// Largest request body in bytes (the note is part of it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

impl Default for WitnessLimitsConfig {
    fn default() -> Self {
        Self { max_body_bytes: DEFAULT_WITNESS_MAX_BODY_BYTES }
    }
}

/// `[key]`: where the Ed25519 cosigning key lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessKeyConfig {
    /// `file` or `pkcs11`.
    pub backend: WitnessKeyBackend,
    /// With `file`: the key file (PKCS#8 PEM or the raw 32-byte seed), mode 0600.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// With `pkcs11`: module, token, key label and PIN file of an Ed25519 key in a token.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
}

/// Cosigning key backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WitnessKeyBackend {
    /// A key file (tests, small setups).
    File,
    /// An Ed25519 key in a PKCS#11 token (`CKM_EDDSA`).
    Pkcs11,
}

/// One `[[log]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessLogConfig {
    /// The log's origin (first checkpoint line).
    pub origin: String,
    /// The log's verifier keys (vkey strings: Ed25519 `0x01`, ECDSA P-256 `0x02`, or cosignature `0x04`).
    #[serde(default)]
    pub vkeys: Vec<String>,
    /// PEM public keys or certificates of anchorlog appliances (`keys/signer.pem`): their ECDSA note signatures
    /// use the key name = `origin`.
    #[serde(default)]
    pub public_key_files: Vec<PathBuf>,
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), problem: problem.into() }
}

impl WitnessConfig {
    /// Reads, parses and validates a configuration file (the public key files it names are read by
    /// [`WitnessConfig::log_keys`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_path_buf(), message },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: WitnessConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that can be checked without reading other files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        anchorlog_core::note::vkey::validate_key_name(&self.name)
            .map_err(|e| invalid("name", e.to_string()))?;
        let s = &self.server;
        s.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            invalid("server.listen", "expected an IP address and port, e.g. \"0.0.0.0:7380\"")
        })?;
        let p = &s.prefix;
        if !p.is_empty()
            && (!p.starts_with('/')
                || p.ends_with('/')
                || p.bytes().any(|b| !b.is_ascii_graphic() || b"?#%".contains(&b)))
        {
            return Err(invalid(
                "server.prefix",
                format!("{p:?}: expected \"\" or a path like \"/witness\" (no trailing slash, no ? # %)"),
            ));
        }
        if s.cert_file.is_some() != s.key_file.is_some() {
            return Err(invalid(
                "server.cert_file",
                "give both cert_file and key_file (HTTPS) or neither (plain HTTP)",
            ));
        }
        if s.shutdown_grace_s > 300 {
            return Err(invalid("server.shutdown_grace_s", "expected 0..=300 seconds"));
        }
        let max = self.limits.max_body_bytes;
        if !(1024..=WITNESS_MAX_BODY_BYTES_CEILING).contains(&max) {
            return Err(invalid(
                "limits.max_body_bytes",
                format!("expected 1024..={WITNESS_MAX_BODY_BYTES_CEILING}, got {max}"),
            ));
        }
        match self.key.backend {
            WitnessKeyBackend::File if self.key.file.is_none() => {
                return Err(invalid("key.file", "required when key.backend = \"file\""))
            }
            WitnessKeyBackend::Pkcs11 => {
                let p = self
                    .key
                    .pkcs11
                    .as_ref()
                    .ok_or_else(|| invalid("key.pkcs11", "required when key.backend = \"pkcs11\""))?;
                if p.token_label.is_empty() || p.token_label.len() > 32 {
                    return Err(invalid("key.pkcs11.token_label", "expected 1 to 32 bytes"));
                }
                if p.key_label.is_empty() {
                    return Err(invalid("key.pkcs11.key_label", "must not be empty"));
                }
            }
            WitnessKeyBackend::File => {}
        }
        if self.logs.is_empty() {
            return Err(invalid("log", "configure at least one [[log]] (origin and its verifier keys)"));
        }
        let mut origins = BTreeSet::new();
        for (i, log) in self.logs.iter().enumerate() {
            let key = format!("log[{i}]");
            if log.origin.is_empty() || log.origin.contains('\n') {
                return Err(invalid(&format!("{key}.origin"), "expected a non-empty single line"));
            }
            if !origins.insert(log.origin.as_str()) {
                return Err(invalid(
                    &format!("{key}.origin"),
                    format!("{:?} is configured twice", log.origin),
                ));
            }
            if log.vkeys.is_empty() && log.public_key_files.is_empty() {
                return Err(invalid(
                    &key,
                    "give the log's vkeys and/or public_key_files: whose signatures to trust",
                ));
            }
            for v in &log.vkeys {
                VerifierKey::parse(v).map_err(|e| invalid(&format!("{key}.vkeys"), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The trusted keys of every configured log, by origin (reads `public_key_files`).
    pub fn log_keys(&self) -> Result<BTreeMap<String, Vec<VerifierKey>>, ConfigError> {
        let mut out = BTreeMap::new();
        for (i, log) in self.logs.iter().enumerate() {
            let key = format!("log[{i}].public_key_files");
            let mut keys = Vec::new();
            for v in &log.vkeys {
                keys.push(
                    VerifierKey::parse(v).map_err(|e| invalid(&format!("log[{i}].vkeys"), e.to_string()))?,
                );
            }
            for path in &log.public_key_files {
                let pem = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let public = anchorlog_core::key::PublicKey::from_pem(&pem)
                    .map_err(|e| invalid(&key, format!("{}: {e}", path.display())))?;
                keys.push(
                    VerifierKey::ecdsa(&log.origin, &public.spki_der)
                        .map_err(|e| invalid(&key, e.to_string()))?,
                );
            }
            out.insert(log.origin.clone(), keys);
        }
        Ok(out)
    }

    /// `add-checkpoint`'s path: `<prefix>/add-checkpoint`.
    pub fn add_checkpoint_path(&self) -> String {
        format!("{}{}", self.server.prefix, anchorlog_core::note::protocol::ADD_CHECKPOINT_PATH)
    }
}

fn default_listen() -> String {
    DEFAULT_WITNESS_LISTEN.to_owned()
}
fn default_grace() -> u64 {
    DEFAULT_WITNESS_SHUTDOWN_GRACE_S
}
fn default_max_body() -> usize {
    DEFAULT_WITNESS_MAX_BODY_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    const VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";

    fn minimal() -> String {
        format!(
            "name = \"witness.test/w1\"\n[storage]\ndatabase = \"w.db\"\n[key]\nbackend = \"file\"\nfile = \"w.key\"\n\
             [[log]]\norigin = \"example.com/foo\"\nvkeys = [\"{VKEY}\"]\n"
        )
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = WitnessConfig::parse(&minimal()).unwrap();
        assert_eq!(c.server.listen, DEFAULT_WITNESS_LISTEN);
        assert_eq!(c.add_checkpoint_path(), "/add-checkpoint");
        assert_eq!(c.limits.max_body_bytes, 65_536);
        let keys = c.log_keys().unwrap();
        assert_eq!(keys["example.com/foo"][0].key_id(), 0x530d903a);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = WitnessConfig::parse(include_str!("../../hsm-config/witness.example.toml")).unwrap();
        assert_eq!(c.add_checkpoint_path(), "/witness/add-checkpoint");
        assert_eq!(c.key.backend, WitnessKeyBackend::Pkcs11);
        assert_eq!(c.logs.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (minimal().replace("witness.test/w1", "has space"), "invalid config: `name`"),
            (minimal().replace("[storage]", "[server]\nprefix = \"witness/\"\n[storage]"), "`server.prefix`"),
            (
                minimal().replace("[storage]", "[server]\ncert_file = \"c.pem\"\n[storage]"),
                "`server.cert_file`",
            ),
            (
                minimal().replace("[storage]", "[limits]\nmax_body_bytes = 10\n[storage]"),
                "`limits.max_body_bytes`",
            ),
            (minimal().replace("file = \"w.key\"\n", ""), "`key.file`: required"),
            (minimal().replace("backend = \"file\"", "backend = \"pkcs11\""), "`key.pkcs11`: required"),
            (minimal().replace("530d903a", "530d903b"), "`log[0].vkeys`: verifier key"),
            (
                format!("{}[[log]]\norigin = \"example.com/foo\"\nvkeys = [\"{VKEY}\"]\n", minimal()),
                "is configured twice",
            ),
            (minimal().replace(&format!("vkeys = [\"{VKEY}\"]\n"), ""), "give the log's vkeys"),
            (minimal().replace("[storage]", "[storage]\ndb = 1"), "unknown field `db`"),
            (
                minimal().replace("file = \"w.key\"", "file = \"w.key\"\nseed = \"00\""),
                "unknown field `seed`",
            ),
        ];
        for (text, expected) in cases {
            let err = WitnessConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn appliance_public_key_files_become_ecdsa_vkeys_named_by_origin() {
        use p256::pkcs8::EncodePublicKey as _;
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
        let pem = key.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let path = dir.path().join("signer.pem");
        std::fs::write(&path, pem).unwrap();
        let text = minimal().replace(
            &format!("vkeys = [\"{VKEY}\"]"),
            &format!("public_key_files = [\"{}\"]", path.display()),
        );
        let keys = WitnessConfig::parse(&text).unwrap().log_keys().unwrap();
        let k = &keys["example.com/foo"][0];
        assert_eq!((k.name(), k.signature_type()), ("example.com/foo", 0x02));
        let der = key.verifying_key().to_public_key_der().unwrap();
        assert_eq!(k.key_id(), anchorlog_core::note::vkey::ecdsa_key_id(der.as_bytes()));
    }
}
