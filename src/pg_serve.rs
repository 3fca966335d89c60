//! `serve` on a PostgreSQL log (`[storage] backend = "postgres"`, docs/HA.md): what differs from SQLite.
//!
//! - The writer is the node task of [`crate::ledger::pg_node`]: it holds the writer lease or stands by.
//! - The sealer, the timestamper and the cosigner run only while this node is the writer: they start after its
//!   takeover record, continuing the chain from the last head in the database (whichever node signed it), and stop
//!   when the node steps down.
//! - Reads go to a few read sessions ([`PgReads`]), on the writer and the standbys alike.

use crate::config::Config;
use crate::ledger::pg_node::{NodeRole, PgNodeSettings};
use crate::ledger::sealer::ChainState;
use crate::store::pg::{self, tree, LeaseOptions, PgConnect, PgError, PgReads, PgTls};
use anchorlog_core::head::Checkpoint;
use anchorlog_core::key::PublicKey;
use futures_util::FutureExt as _;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// Read sessions per node.
const READ_SESSIONS: usize = 4;

/// Why a PostgreSQL node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PgServeError {
    /// A configured file is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `storage.ca_file` or `storage.keyring_file` holds no usable certificate or key.
    #[error("{key} ({path}): {problem}")]
    File {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The database cannot be reached, or is not an anchorlog log of this origin.
    #[error("{0}; check storage.url, storage.password_file and the server, and create the log with `anchorlog migrate` (docs/HA.md)")]
    Database(#[from] PgError),
}

/// A PostgreSQL node, checked and ready to run.
pub struct PgStorage {
    /// The node task's settings.
    pub node: PgNodeSettings,
    /// The read sessions.
    pub reads: PgReads,
}

/// How this node reaches the database: the URL, the password from its file, TLS from `storage.ca_file`.
pub fn connect_of(config: &Config) -> Result<PgConnect, PgServeError> {
    let st = &config.storage;
    let url = st.url.clone().unwrap_or_default();
    let password = match &st.password_file {
        Some(path) => Some(crate::config::read_secret_file("storage.password_file", path)?.to_string()),
        None => None,
    };
    let tls = match &st.ca_file {
        None => PgTls::Disable,
        Some(path) => {
            let file = |problem: String| PgServeError::File {
                key: "storage.ca_file",
                path: path.display().to_string(),
                problem,
            };
            let text = std::fs::read(path).map_err(|e| file(e.to_string()))?;
            let roots: Vec<_> = rustls_pemfile_certs(&text).map_err(file)?;
            PgTls::Require { roots }
        }
    };
    Ok(PgConnect { url, password, tls, connect_timeout: Duration::from_secs(10) })
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(
            "holds no certificate: give the CA certificate(s) that sign the server's certificate".into()
        );
    }
    Ok(certs)
}

/// The keys a head this node inherits may be signed with: its own and those of `storage.keyring_file` (the other
/// nodes' public keys, PEM).
pub fn trusted_keys(config: &Config, own: &PublicKey) -> Result<Vec<PublicKey>, PgServeError> {
    let mut keys = vec![own.clone()];
    if let Some(path) = &config.storage.keyring_file {
        let file = |problem: String| PgServeError::File {
            key: "storage.keyring_file",
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        let blocks = anchorlog_core::key::pem_blocks(&text);
        if blocks.is_empty() {
            return Err(file("holds no PEM public key: list every node's signing public key".into()));
        }
        for block in blocks {
            let key = PublicKey::from_pem(block).map_err(|e| file(format!("a key is unusable: {e}")))?;
            if !keys.iter().any(|k| k.key_id == key.key_id) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// Checks the database (reachable, the schema, this origin) and prepares the node.
pub async fn prepare(
    config: &Config,
    own: &PublicKey,
    signer: &str,
    public_key_pem: String,
) -> Result<PgStorage, PgServeError> {
    let connect = connect_of(config)?;
    let client = pg::connect(&connect).await?;
    pg::schema::check(&client, &config.origin).await?;
    drop(client);
    let node_name = config.storage.node.clone().unwrap_or_else(host_name);
    let ttl = Duration::from_secs(config.storage.lease_ttl_s);
    let node = PgNodeSettings {
        connect: connect.clone(),
        node: node_name,
        origin: config.origin.clone(),
        lease: LeaseOptions { ttl, lock_wait: ttl },
        poll: Duration::from_millis(config.storage.lease_poll_ms),
        trusted_keys: trusted_keys(config, own)?,
        signer: signer.to_string(),
        key_id: own.key_id.clone(),
        public_key_pem,
        config_sha256: config.text_sha256.clone(),
    };
    Ok(PgStorage { node, reads: PgReads::new(connect, READ_SESSIONS) })
}

/// What `check-config` says of a PostgreSQL log: reachable as the configured role, an anchorlog schema of this
/// build and origin; its events and heads.
pub async fn check_database(config: &Config) -> Result<(u64, u64), PgServeError> {
    let client = pg::connect(&connect_of(config)?).await?;
    pg::schema::check(&client, &config.origin).await?;
    let events = pg::read::event_count(&client).await?;
    let heads = pg::read::last_head(&client).await?.map_or(0, |h| h.height + 1);
    Ok((events, heads))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "anchorlog".into())
}

/// The chain a new writer continues: the last head in the database, whichever node signed it. The TPM counter of
/// the last head is carried only when this node's key signed it (each key's counter continues from its own heads,
/// docs/FORMAT.md §20).
pub async fn chain_state(reads: &PgReads, own_key_id: &str) -> Result<ChainState, PgError> {
    let last = reads.with(|c| pg::read::last_head(&*c).boxed()).await?;
    let Some(h) = last else { return Ok(ChainState::default()) };
    let size = h.tree_size;
    let frontier = reads.with(move |c| tree::load_frontier(&*c, size).boxed()).await?;
    let cp = Checkpoint::parse(&h.checkpoint).map_err(|e| PgError::Corrupt {
        table: "heads",
        key: h.height,
        problem: format!("unreadable checkpoint: {e}"),
    })?;
    let own = h.key_id == own_key_id;
    Ok(ChainState {
        frontier,
        next_height: h.height + 1,
        prev_hash: Checkpoint::text_hash(&h.checkpoint),
        last_time_ms: cp.time_ms,
        last_counter: cp.counter.filter(|_| own).map(|c| c.value),
    })
}

/// Runs the writer's actors (the future `lead` builds from the chain, which ends when its stop signal turns true)
/// each time this node becomes the writer, and stops them when it steps down or `stop` turns true.
pub async fn lead_while_writer<F, Fut>(
    mut role: watch::Receiver<NodeRole>,
    reads: PgReads,
    own_key_id: String,
    mut stop: watch::Receiver<bool>,
    lead: F,
) where
    F: Fn(ChainState, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let writer = tokio::select! {
            r = role.wait_for(|r| matches!(r, NodeRole::Writer { .. })) => match r {
                Ok(r) => r.clone(),
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let chain = match chain_state(&reads, &own_key_id).await {
            Ok(chain) => chain,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the chain to continue; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(
            next_height = chain.next_height,
            sealed_size = chain.frontier.size(),
            "writer: sealing"
        );
        let (actors_stop_tx, actors_stop) = watch::channel(false);
        let actors = lead(chain, actors_stop);
        tokio::pin!(actors);
        let stepped_down = tokio::select! {
            _ = &mut actors => false,
            r = role.wait_for(|r| *r != writer) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        };
        // Sealing what is acknowledged, then stopping: on a step-down the last seal is refused (another node
        // seals it), on shutdown it is this node's last head.
        let _ = actors_stop_tx.send(true);
        actors.await;
        if !stepped_down {
            return;
        }
        tracing::warn!("stepped down: sealing, time-stamping and cosigning stopped on this node");
    }
}
