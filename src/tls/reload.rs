//! Reloading the client trust while serving: client CA files, CRLs, principals (re-read from the configuration
//! file) and source secrets, on SIGHUP and when one of those files changes.
//!
//! A reload builds the whole new state first ([`ClientTrust::load`], [`SourceRegistry::load`]) and swaps it in
//! only when all of it loaded: a failing reload keeps the old state, logs why, and counts
//! `anchorlog_reloads_total{outcome="failed"}`. Each handshake takes the trust current at its start. After a
//! swap, every established connection is checked again against the new trust, as a new handshake would be; one
//! whose certificate is now revoked, expired, from a removed CA, or mapped to another principal (or none) is
//! closed.
//!
//! Changes are noticed by polling the files' modification time, size and inode every `server.reload_poll_s`
//! seconds rather than by inotify: a few `stat()` calls cost nothing, need no extra crate or file descriptors,
//! see files replaced by rename (how CRL fetchers and configuration management write them), which an inotify
//! watch on the old inode misses, and work on every file system (NFS, bind mounts, systemd credentials).

use super::trust::ClientTrust;
use crate::api::sources::SourceRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The trust in effect for one listener, swapped whole by a reload, and the connections established under it.
#[derive(Debug)]
pub struct TrustHandle {
    current: RwLock<Arc<ClientTrust>>,
    connections: Mutex<HashMap<u64, LiveConnection>>,
    next_id: AtomicU64,
}

/// One established connection with a client certificate.
#[derive(Debug)]
struct LiveConnection {
    chain: Arc<Vec<CertificateDer<'static>>>,
    /// The principal it was resolved to (name), to notice a mapping that changed.
    principal: Option<Arc<str>>,
    close: Arc<Notify>,
}

/// A connection's entry in the registry; dropping it (the connection ended) removes the entry.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    handle: Arc<TrustHandle>,
    close: Arc<Notify>,
}

impl Registration {
    /// Resolves when a reload decided this connection must be closed.
    pub async fn closed(&self) {
        self.close.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.handle.connections.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

impl TrustHandle {
    /// A handle holding `trust`.
    pub fn new(trust: ClientTrust) -> Arc<TrustHandle> {
        Arc::new(TrustHandle {
            current: RwLock::new(Arc::new(trust)),
            connections: Mutex::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// The trust in effect now (a handshake takes it once, at its start).
    pub fn current(&self) -> Arc<ClientTrust> {
        // A poisoned lock means a panic while swapping an Arc: the Arc inside is whole.
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Registers an established connection with its peer's chain (end entity first) and resolved principal.
    pub fn register(
        self: &Arc<Self>,
        chain: Vec<CertificateDer<'static>>,
        principal: Option<Arc<str>>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let live = LiveConnection { chain: Arc::new(chain), principal, close: close.clone() };
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).insert(id, live);
        Registration { id, handle: self.clone(), close }
    }

    /// How many connections are registered.
    pub fn live_connections(&self) -> usize {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Swaps `trust` in, then closes every registered connection the new trust would not accept as it is.
    /// Returns how many were closed.
    pub fn swap(&self, trust: ClientTrust) -> usize {
        let trust = Arc::new(trust);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = trust.clone();
        let live: Vec<_> = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| (c.chain.clone(), c.principal.clone(), c.close.clone()))
            .collect();
        let mut closed = 0;
        for (chain, principal, close) in live {
            let verdict = match trust.recheck(&chain) {
                Ok(peer) if peer.principal.as_ref().map(|p| p.name.clone()) == principal => continue,
                Ok(peer) => format!(
                    "its certificate now maps to principal {:?} instead of {:?}",
                    peer.principal.map(|p| p.name.to_string()),
                    principal.as_deref()
                ),
                Err(reason) => reason,
            };
            let identities =
                chain.first().map(|c| super::certificate_identities(c.as_ref())).unwrap_or_default();
            tracing::warn!(?identities, reason = %verdict, "closing an established connection after the reload");
            // notify_one stores the permit when the connection task is not waiting at this very moment.
            close.notify_one();
            closed += 1;
        }
        closed
    }
}

/// Installs the SIGHUP handler (from then on a SIGHUP is kept for the reloader instead of killing the process).
pub fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; reloads happen only when files change");
            None
        }
    }
}

/// Modification time, size and inode of each watched file (`None`: missing or unreadable).
type Fingerprint = Vec<(PathBuf, Option<(std::time::SystemTime, u64, u64)>)>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
            (p.clone(), meta)
        })
        .collect()
}

/// The files a reload reads: the configuration file, client CAs, CRLs and source secrets.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.source_path.iter().cloned().collect();
    files.extend(config.server.client_ca_files.iter().cloned());
    files.extend(config.server.client_crl_files.iter().cloned());
    files.extend(config.sources.iter().filter_map(|s| s.secret_file.clone()));
    files
}

/// Why a reload kept the old state.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file no longer parses or validates.
    #[error("the configuration file: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A client CA, CRL or the server certificate is unusable.
    #[error(transparent)]
    Tls(#[from] super::TlsError),
}

/// Reloads the mTLS listener's trust and the sources on SIGHUP and on file changes.
pub struct Reloader {
    /// The configuration of the last successful load (its path is re-read; when it has none, only the files it
    /// names are).
    config: Config,
    trust: Arc<TrustHandle>,
    sources: Arc<SourceRegistry>,
    metrics: Arc<Metrics>,
    seen: Fingerprint,
}

impl Reloader {
    /// A reloader for the state loaded from `config`.
    pub fn new(
        config: Config,
        trust: Arc<TrustHandle>,
        sources: Arc<SourceRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let seen = fingerprint(&watched_files(&config));
        Reloader { config, trust, sources, metrics, seen }
    }

    /// Loads everything anew and swaps it in; on failure nothing changes. Returns the connections closed.
    pub fn reload(&mut self, why: &str) -> Result<usize, ReloadError> {
        let result = self.load_and_swap();
        self.metrics.instruments.reloaded(result.is_ok());
        match &result {
            Ok(closed) => tracing::info!(trigger = why, closed_connections = closed, "client trust reloaded"),
            Err(e) => tracing::error!(trigger = why, error = %e,
                "reload failed; the previous client CAs, CRLs, principals and source secrets stay in effect"),
        }
        result
    }

    fn load_and_swap(&mut self) -> Result<usize, ReloadError> {
        let config = match &self.config.source_path {
            Some(path) => Config::load(path)?,
            None => self.config.clone(),
        };
        // Everything is built before anything is swapped.
        let trust = ClientTrust::load(&config)?;
        let sources = SourceRegistry::load(&config.sources)?;
        tracing::info!(
            client_cas = config.server.client_ca_files.len(),
            crl_files = config.server.client_crl_files.len(),
            revoked_certificates = trust.revoked_entries,
            principals = trust.principals.principal_count(),
            sources = sources.len(),
            "loaded the new client trust; settings other than client CAs, CRLs, principals and sources take \
             effect at the next restart"
        );
        self.sources.replace(sources);
        let closed = self.trust.swap(trust);
        self.config = config;
        Ok(closed)
    }

    /// Runs until `stop`: reloads on SIGHUP, and when a watched file changed (checked every
    /// `server.reload_poll_s` seconds; 0: SIGHUP only).
    /// `hangup` comes from [`hangup_signal`], installed before the listeners were announced.
    pub async fn run(
        mut self,
        mut hangup: Option<tokio::signal::unix::Signal>,
        mut stop: watch::Receiver<bool>,
    ) {
        let poll = self.config.server.reload_poll_s;
        let mut ticker = tokio::time::interval(Duration::from_secs(poll.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = hup => {
                    self.seen = fingerprint(&watched_files(&self.config));
                    let _ = self.reload("SIGHUP");
                }
                _ = ticker.tick(), if poll > 0 => {
                    let now = fingerprint(&watched_files(&self.config));
                    if now != self.seen {
                        // Remembered even when the reload fails: the same broken file is reported once, and
                        // the next change is tried again.
                        self.seen = now;
                        let _ = self.reload("a watched file changed");
                        self.seen = fingerprint(&watched_files(&self.config));
                    }
                }
            }
        }
    }
}
