//! PostgreSQL storage (issue 17, first slice): the same log tables as the SQLite store, append-only in the
//! database, written by one fenced writer. Not yet used by `serve` (the next slice puts a storage trait between the
//! actors and both stores); docs/HA.md says what exists and what does not.
//!
//! One module per concern:
//! - [`schema`]: the DDL (owner role), its version, the append-only triggers and the application role's grants;
//! - [`lease`]: the [`WriterLease`] (advisory lock on a dedicated session plus the epoch row) and the fence every
//!   write transaction passes;
//! - [`writer`]: the [`PgWriter`]: group append in one transaction with the appender's savepoint semantics, heads,
//!   time-stamp tokens;
//! - [`read`]: the reads the actors and the tests need, on any session;
//! - [`tree`]: the stored Merkle tree: subtrees, frontier, roots and RFC 9162 proofs;
//! - [`evidence`]: the proofs a receipt and the key rotation route carry, from several reads in one snapshot;
//! - [`reads_pool`]: [`PgReads`], the read sessions a node serves its reads from (reopened when they break);
//! - [`copy`]: `anchorlog migrate`'s copy of a SQLite log into an empty PostgreSQL log.
//!
//! Every statement is parameterised; the only SQL built from text is fixed DDL (no input in it).

pub mod copy;
pub mod evidence;
pub mod lease;
pub mod read;
pub mod reads_pool;
pub mod schema;
pub mod tree;
pub mod writer;

pub use lease::{LeaseOptions, WriterLease};
pub use reads_pool::{PgReads, DEFAULT_READ_SESSIONS};
pub use writer::{PgCommand, PgDone, PgWriter};

use std::sync::Arc;
use std::time::Duration;

/// A PostgreSQL storage failure.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL could not be parsed.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    /// The server could not be reached or refused the session.
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Connect {
        /// Host and port (never the password).
        target: String,
        /// The driver's or the server's error.
        message: String,
    },
    /// The TLS configuration is unusable (no root certificate, a bad certificate).
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
    /// A statement failed; `message` is the server's own text (a trigger's refusal, a privilege error).
    #[error("PostgreSQL error{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Sql {
        /// The SQLSTATE, when the server answered (`P0001` for a trigger's refusal, `42501` for a privilege).
        code: Option<String>,
        /// The server's message, or the driver's error when the session broke.
        message: String,
    },
    /// The database is not an anchorlog log of a version this build understands, or of another origin.
    #[error("PostgreSQL database: {problem}")]
    Incompatible {
        /// What is wrong and what to do.
        problem: String,
    },
    /// Another node holds the writer lease (its lease session is alive).
    #[error(
        "the writer lease is held by another node ({}, epoch {epoch}); this node stays a standby",
        holder.as_deref().unwrap_or("unknown holder")
    )]
    LeaseHeld {
        /// The holder recorded in the epoch row.
        holder: Option<String>,
        /// The epoch it acquired.
        epoch: i64,
    },
    /// This node's lease epoch is no longer the current one: another node took the lease, and nothing this node
    /// writes can commit any more. The node must step down (stop writing, stop answering 2xx).
    #[error(
        "fenced out: this node's writer lease (epoch {ours}) was taken over (current epoch {current}); nothing \
         was committed, and this node must stop writing"
    )]
    FencedOut {
        /// The epoch this node acquired.
        ours: i64,
        /// The epoch in the database.
        current: i64,
    },
    /// The lease session ended (terminated, timed out, network lost): the advisory lock is gone.
    #[error("the writer lease session ended: {0}; another node may take the lease")]
    LeaseLost(String),
    /// A group commit failed as a whole: nothing of the group (from seq `first_seq`) was stored.
    #[error("group commit from seq {first_seq} failed, nothing of it was stored: {source}")]
    GroupCommit {
        /// The first seq the group would have taken.
        first_seq: u64,
        /// Why.
        source: Box<PgError>,
    },
    /// An erasure named an event that does not exist.
    #[error("no event with seq {0}")]
    NoSuchEvent(u64),
    /// An erasure named an event whose payload is already erased.
    #[error("the payload of event seq {0} is already erased")]
    AlreadyErased(u64),
    /// An erasure named one of the appliance's own records, which hold no personal payload.
    #[error("event seq {0} is a record of the appliance itself; its payload cannot be erased")]
    ApplianceRecord(u64),
    /// A stored value has the wrong shape.
    #[error("corrupt row in {table} at {key}: {problem}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// Row key (seq or height).
        key: u64,
        /// What is wrong.
        problem: String,
    },
    /// A tree size or index does not fit the tree.
    #[error(transparent)]
    Merkle(#[from] anchorlog_core::merkle::MerkleError),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                PgError::Sql { code: Some(db.code().code().to_string()), message: db.message().to_string() }
            }
            None => PgError::Sql { code: None, message: e.to_string() },
        }
    }
}

impl PgError {
    /// The server's message of a refused statement (a trigger's or a privilege's text), if that is what it is.
    pub fn db_message(&self) -> Option<&str> {
        match self {
            PgError::Sql { code: Some(_), message } => Some(message),
            PgError::GroupCommit { source, .. } => source.db_message(),
            _ => None,
        }
    }

    /// Whether this node was fenced out (directly or as the cause of a failed group).
    pub fn is_fenced_out(&self) -> bool {
        match self {
            PgError::FencedOut { .. } => true,
            PgError::GroupCommit { source, .. } => source.is_fenced_out(),
            _ => false,
        }
    }
}

/// How to reach the server: `postgres://user@host:port/db`, the password (from `password_file` in the coming
/// configuration; never in the URL of a config file), and TLS.
#[derive(Clone)]
pub struct PgConnect {
    /// `postgres://user@host:port/database` (key=value strings work too).
    pub url: String,
    /// The role's password, if the server asks for one (SCRAM-SHA-256).
    pub password: Option<String>,
    /// TLS to the server.
    pub tls: PgTls,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnect")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl PgConnect {
    /// A connection without TLS (a server on the same host, or a test) and a 10 s connect timeout.
    pub fn plain(url: impl Into<String>) -> Self {
        PgConnect {
            url: url.into(),
            password: None,
            tls: PgTls::Disable,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// TLS to the server.
#[derive(Clone)]
pub enum PgTls {
    /// No TLS (unix socket or loopback only; docs/HA.md).
    Disable,
    /// TLS required, the server's certificate verified against these roots (rustls, ring) and its name.
    Require {
        /// The CA certificates (DER) that may sign the server's certificate.
        roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    },
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgTls::Disable => f.write_str("Disable"),
            PgTls::Require { roots } => write!(f, "Require({} roots)", roots.len()),
        }
    }
}

/// Silence on a session before the first TCP keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// Between two unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel closes the session.
pub const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel closes the session (`TCP_USER_TIMEOUT`).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens one session and drives it on the current tokio runtime. The session's background task ends when the
/// returned client is dropped or the server closes the session.
pub async fn connect(c: &PgConnect) -> Result<tokio_postgres::Client, PgError> {
    let mut config: tokio_postgres::Config =
        c.url.parse().map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
    if let Some(p) = &c.password {
        config.password(p);
    }
    config.application_name("anchorlog").connect_timeout(c.connect_timeout);
    // A server host that vanished without closing its sockets (power, network) is noticed within seconds, not
    // the kernel's defaults (keepalive probes every 75 s, 9 of them; an unanswered write retried for ~15 min):
    // an idle session after 15 + 3 × 5 s of silence, a session with data in flight after 30 s unacknowledged.
    // The writer then steps down and a standby, or this node after a PostgreSQL failover, takes the lease again.
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let target = format!("{} port {}", hosts.join(","), ports.join(","));
    let failed =
        |e: tokio_postgres::Error| PgError::Connect { target: target.clone(), message: error_text(&e) };
    match &c.tls {
        PgTls::Disable => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(failed)?;
            drive(conn);
            Ok(client)
        }
        PgTls::Require { roots } => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store
                    .add(root.clone())
                    .map_err(|e| PgError::Tls(format!("a root certificate is unusable: {e}")))?;
            }
            if store.is_empty() {
                return Err(PgError::Tls("no root certificate to verify the server with".into()));
            }
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
            let (client, conn) =
                config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await.map_err(failed)?;
            drive(conn);
            Ok(client)
        }
    }
}

fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %error_text(&e), "PostgreSQL session ended");
        }
    });
}

/// The driver's error with its cause (tokio-postgres's own Display says only "db error" or "error connecting").
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Milliseconds since the Unix epoch, from the process's wall clock.
pub(crate) fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Converts a stored BIGINT that must not be negative.
pub(crate) fn u64_of(v: i64, table: &'static str, key: u64, what: &str) -> Result<u64, PgError> {
    u64::try_from(v).map_err(|_| PgError::Corrupt { table, key, problem: format!("negative {what}") })
}

/// Converts a seq, height or size for a BIGINT column (the log is far below 2^63 entries).
pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A 32-byte hash column.
pub(crate) fn hash_of(v: Vec<u8>, table: &'static str, key: u64, what: &str) -> Result<[u8; 32], PgError> {
    <[u8; 32]>::try_from(v).map_err(|_| PgError::Corrupt {
        table,
        key,
        problem: format!("{what} is not 32 bytes"),
    })
}
