//! Everything the appliance loads before its first write: TLS material, client CAs, secret files (and their
//! modes), sources, TSA trust anchors, the database's identity. `serve` runs it before it opens the database
//! for writing, so a bad key or a world-readable PIN fails the start with exit 1 and leaves the log untouched
//! (no start record, no restart loop of "unclean start" records); `anchorlog check-config` runs the same
//! checks and writes nothing.

use crate::api::sources::SourceRegistry;
use crate::config::Config;
use crate::ledger::timestamper::{TimestamperError, TimestamperSettings};
use crate::store::{self, StoreError};
use crate::tls::{self, TlsError};
use std::sync::Arc;

/// Why the configuration's files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// A secret file or a source secret: unreadable, empty, or readable by others.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The server certificate, its key or a client CA.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A TSA CA file.
    #[error(transparent)]
    Timestamping(#[from] TimestamperError),
    /// An `[[alert]]` webhook's secret or CA file.
    #[error(transparent)]
    Alert(#[from] crate::alerts::AlertError),
    /// The database exists but is not this log's (origin, schema).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was loaded, ready for the listeners and actors.
pub struct Loaded {
    /// The mTLS listener's trust (server certificate, client CAs and CRLs, principals with their issuers).
    pub tls: tls::trust::ClientTrust,
    /// The source listener's configuration (server certificate only), when `server.source_listen` is set.
    pub source_tls: Option<Arc<rustls::ServerConfig>>,
    /// The sources with their secrets.
    pub sources: SourceRegistry,
    /// The TSAs, or `None` when timestamping is off.
    pub timestamping: Option<TimestamperSettings>,
    /// The `[[alert]]` webhooks.
    pub alerts: Vec<crate::alerts::AlertTarget>,
}

/// Loads and checks every file the configuration names (not the signer device: the caller opens it; its PIN
/// or auth file is read and mode-checked here too).
pub fn load(config: &Config) -> Result<Loaded, PreflightError> {
    check_signer_secrets(config)?;
    let s = &config.server;
    let tls = tls::trust::ClientTrust::load(config)?;
    let source_tls = match &s.source_listen {
        Some(_) => Some(tls::server_config_without_client_auth(&s.cert_file, &s.key_file)?),
        None => None,
    };
    let sources = SourceRegistry::load(&config.sources)?;
    let timestamping = TimestamperSettings::from_config(config)?;
    let alerts = config
        .alerts
        .iter()
        .enumerate()
        .map(|(i, c)| crate::alerts::AlertTarget::load(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Loaded { tls, source_tls, sources, timestamping, alerts })
}

/// The signer's secret file (PKCS#11 PIN, TPM auth value): present, not empty, not readable by others.
fn check_signer_secrets(config: &Config) -> Result<(), PreflightError> {
    use crate::config::{read_secret_file, SignerBackend};
    let file = match config.signer.backend {
        SignerBackend::Pkcs11 => {
            config.signer.pkcs11.as_ref().map(|p| ("signer.pkcs11.pin_file", &p.pin_file))
        }
        SignerBackend::Tpm => {
            config.signer.tpm.as_ref().and_then(|t| t.auth_file.as_ref()).map(|f| ("signer.tpm.auth_file", f))
        }
    };
    if let Some((key, path)) = file {
        read_secret_file(key, path)?;
    }
    Ok(())
}

/// The database as `check-config` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseState {
    /// No file yet: the first `serve` creates it.
    New,
    /// This log's database: its event and head counts.
    Existing {
        /// Events stored.
        events: u64,
        /// Heads signed.
        heads: u64,
    },
}

/// Opens the configured database read-only (if it exists) and checks that it is this log's: a schema this
/// build reads and the configured origin.
pub fn check_database(config: &Config) -> Result<DatabaseState, PreflightError> {
    let path = &config.storage.database;
    if !path.exists() {
        return Ok(DatabaseState::New);
    }
    let conn = store::open_reader(path)?;
    let origin = store::stored_origin(&conn)?;
    if origin.as_deref() != Some(config.origin.as_str()) {
        return Err(StoreError::Incompatible {
            path: path.clone(),
            problem: format!(
                "the log in this file has origin {:?} but the configuration says {:?}; an origin never changes \
                 for a log — fix `origin` in the config or use a new database",
                origin.unwrap_or_default(),
                config.origin
            ),
        }
        .into());
    }
    let events = store::event_count(&conn)?;
    let heads = store::last_head(&conn)?.map_or(0, |h| h.height + 1);
    Ok(DatabaseState::Existing { events, heads })
}
