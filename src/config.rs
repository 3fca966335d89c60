//! Appliance configuration: one TOML file, unknown keys rejected, defaults as named constants.
//!
//! Secrets (the PKCS#11 user PIN, the TLS private key) are never inline values: the configuration names the
//! *file* that holds them, so they stay out of argv, the environment and the config itself (which operators
//! routinely paste into tickets). `validate()` checks everything that can be checked without touching hardware
//! or the network and names the offending key in every error.

use serde::Deserialize;
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default maximum request body, in bytes (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default maximum number of events in one ingest request.
pub const DEFAULT_MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// Default maximum JSON nesting depth of a request body.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;
/// Default interval between seals while events arrive, in milliseconds.
pub const DEFAULT_SEAL_INTERVAL_MS: u64 = 1_000;
/// Default maximum number of events covered by one block.
pub const DEFAULT_SEAL_MAX_EVENTS: u64 = 10_000;
/// Default interval of heartbeat heads on an idle log, in seconds.
pub const DEFAULT_HEARTBEAT_INTERVAL_S: u64 = 60;
/// Default listen address of the mTLS API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Where the Debian package installs the built auditor's console (`server.console_dir`).
pub const DEFAULT_CONSOLE_DIR: &str = "/usr/share/anchorlog/console";
/// Default grace period for in-flight requests on shutdown, in seconds.
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 10;
/// Default interval of the checks for changed client CA, CRL, secret and configuration files, in seconds.
pub const DEFAULT_RELOAD_POLL_S: u64 = 5;
/// Default page size limit for list endpoints.
pub const DEFAULT_MAX_QUERY_LIMIT: usize = 1_000;
/// Default number of ingest requests that may wait for the writer at once; one more is answered 429.
pub const DEFAULT_WRITER_QUEUE_DEPTH: usize = 1_024;
/// Largest `limits.writer_queue_depth`: the writer's own command queue. Admitted beyond it, a request would
/// wait in that queue again, unbounded by this limit.
pub const MAX_WRITER_QUEUE_DEPTH: usize = 4_096;
#[cfg(feature = "server")]
const _: () = assert!(MAX_WRITER_QUEUE_DEPTH <= crate::ledger::appender::QUEUE_DEPTH);
/// Default `Retry-After` of a 429 (writer queue full), in seconds.
pub const DEFAULT_RETRY_AFTER_S: u64 = 1;
/// Default time one TSA request may take (connect, send, receive), in milliseconds.
pub const DEFAULT_TSA_TIMEOUT_MS: u64 = 10_000;
/// Default allowed difference between a head's seal time and an earlier TSA `genTime`, in seconds (the core's,
/// so the offline verifier and the browser use the same default).
pub const DEFAULT_TIMESTAMP_MAX_SKEW_S: u64 =
    anchorlog_core::verify::timestamps::DEFAULT_TIMESTAMP_MAX_SKEW_S;
/// Default first retry delay after every TSA failed, in milliseconds (doubles up to the maximum).
pub const DEFAULT_TIMESTAMP_RETRY_INITIAL_MS: u64 = 1_000;
/// Default longest retry delay while no TSA answers, in milliseconds.
pub const DEFAULT_TIMESTAMP_RETRY_MAX_MS: u64 = 60_000;
/// Hard upper bound on `max_body_bytes`: beyond this, a single request could exhaust memory.
pub const MAX_BODY_BYTES_CEILING: usize = 64 * 1024 * 1024;
/// Default of `limits.handshake_timeout_ms`: a TLS handshake on a LAN or the internet takes well under a second.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Default of `limits.header_read_timeout_ms`.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 30_000;
/// Default of `limits.body_read_timeout_ms`: a 1 MiB body at 40 KB/s.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Default of `limits.stream_stall_timeout_ms`: how long `GET /v1/stream` waits for a consumer that stopped
/// reading before it ends the stream and closes the connection.
pub const DEFAULT_STREAM_STALL_TIMEOUT_MS: u64 = 60_000;
/// Default of `limits.max_connections` (per listener).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4_096;
/// Default of `limits.max_connections_per_address`: room for a load generator or a connection pool of 64 plus
/// probes from the same address; 32 addresses at it take every slot of a listener.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 128;
/// Default of `limits.accept_backoff_initial_ms`.
pub const DEFAULT_ACCEPT_BACKOFF_INITIAL_MS: u64 = 10;
/// Default of `limits.accept_backoff_max_ms`.
pub const DEFAULT_ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;
/// Default of `limits.denial_records_per_minute` (per listener).
pub const DEFAULT_DENIAL_RECORDS_PER_MINUTE: u32 = 60;
/// Default of `limits.denial_records_per_address_per_minute`.
pub const DEFAULT_DENIAL_RECORDS_PER_ADDRESS_PER_MINUTE: u32 = 10;
/// Default of `limits.max_response_bytes` (32 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Hard upper bound on `limits.max_response_bytes`.
pub const MAX_RESPONSE_BYTES_CEILING: usize = 1024 * 1024 * 1024;
/// Default time one witness submission may take (connect, send, receive), in milliseconds.
pub const DEFAULT_WITNESS_TIMEOUT_MS: u64 = 10_000;
/// Default first retry delay after a witness failed, in milliseconds (doubles up to the maximum).
pub const DEFAULT_WITNESSING_RETRY_INITIAL_MS: u64 = 1_000;
/// Default longest retry delay while a witness does not cosign, in milliseconds.
pub const DEFAULT_WITNESSING_RETRY_MAX_MS: u64 = 60_000;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log origin: the first line of every checkpoint, e.g. `anchorlog.example.org/prod-1`.
    pub origin: String,
    /// HTTPS listener.
    pub server: ServerConfig,
    /// SQLite storage.
    pub storage: StorageConfig,
    /// Request size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Block sealing cadence.
    #[serde(default)]
    pub sealing: SealingConfig,
    /// The hardware signer.
    pub signer: SignerConfig,
    /// Client-certificate identities and their roles.
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalConfig>,
    /// Named event sources (`/v1/sources/{name}/events`): format and who may post.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// RFC 3161 time-stamping authorities, tried in order (failover). None: timestamping is off.
    #[serde(default, rename = "tsa")]
    pub tsas: Vec<TsaConfig>,
    /// How tokens are requested and retried.
    #[serde(default)]
    pub timestamping: TimestampingConfig,
    /// The search database of normalized fields.
    #[serde(default)]
    pub search: SearchConfig,
    /// Witnesses (c2sp.org/tlog-witness) every signed head is submitted to. None: witnessing is off.
    #[serde(default, rename = "witness")]
    pub witnesses: Vec<WitnessEndpointConfig>,
    /// Quorum and retry policy of witnessing.
    #[serde(default)]
    pub witnessing: WitnessingConfig,
    /// When `/readyz` turns 503 (`[readiness]`).
    #[serde(default)]
    pub readiness: ReadinessConfig,
    /// The appliance's own verification of its log while it runs.
    #[serde(default)]
    pub self_verify: SelfVerifyConfig,
    /// Thresholds of the alerts.
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Webhooks that receive alerts (none: alerts are only logged).
    #[serde(default, rename = "alert")]
    pub alerts: Vec<AlertConfig>,
    /// The syslog listener's framing and bounds (`server.syslog_listen`).
    #[serde(default)]
    pub syslog: SyslogConfig,
    /// SHA-256 (hex) of the configuration text this was parsed from, recorded in the log at every start so
    /// that a configuration change between two runs is on record (PCI DSS 10.2.1.6, 10.2.2).
    #[serde(skip)]
    pub text_sha256: String,
    /// The file this was loaded from ([`Config::load`]); a reload re-reads it for the principals and sources.
    #[serde(skip)]
    pub source_path: Option<PathBuf>,
}

/// `[readiness]`: thresholds of `/readyz` (the disk threshold is `[alerting] min_free_disk_percent`: one
/// condition, an alert and a 503).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfig {
    /// The oldest head without an RFC 3161 token may be at most this old before `/readyz` says
    /// `timestamps_overdue` (a TSA outage longer than the back-off can bridge).
    #[serde(default = "default_max_untimestamped_age_s")]
    pub max_untimestamped_age_s: u64,
    /// The oldest head below the witness quorum may be at most this old before `/readyz` says
    /// `cosignatures_overdue`.
    #[serde(default = "default_max_uncosigned_age_s")]
    pub max_uncosigned_age_s: u64,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        ReadinessConfig {
            max_untimestamped_age_s: DEFAULT_MAX_UNTIMESTAMPED_AGE_S,
            max_uncosigned_age_s: DEFAULT_MAX_UNCOSIGNED_AGE_S,
        }
    }
}

/// Default interval between incremental self-verification passes, in seconds.
pub const DEFAULT_SELF_VERIFY_INTERVAL_S: u64 = 3_600;
/// Default interval between full self-verification passes (the whole log from genesis), in seconds.
pub const DEFAULT_SELF_VERIFY_FULL_EVERY_S: u64 = 604_800;
/// Default time a signer, TSA or witness outage lasts before it is alerted, in seconds.
pub const DEFAULT_OUTAGE_THRESHOLD_S: u64 = 300;
/// Default free space (percent of the database's file system) below which the disk is alerted as nearly full.
pub const DEFAULT_MIN_FREE_DISK_PERCENT: u8 = 5;
/// Default interval between free-space checks, in seconds.
pub const DEFAULT_DISK_CHECK_INTERVAL_S: u64 = 60;
/// Default time one webhook delivery may take, in milliseconds.
pub const DEFAULT_ALERT_TIMEOUT_MS: u64 = 5_000;

/// `[self_verify]`: the appliance re-verifies its own log on a low-priority thread (docs/FORMAT.md §18).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfVerifyConfig {
    /// Verify what was sealed since the last pass this often (seconds).
    #[serde(default = "default_self_verify_interval_s")]
    pub interval_s: u64,
    /// Verify the whole log from genesis this often (seconds); also right after a start that resumed from a
    /// self-verified point.
    #[serde(default = "default_self_verify_full_every_s")]
    pub full_every_s: u64,
}

impl Default for SelfVerifyConfig {
    fn default() -> Self {
        Self { interval_s: DEFAULT_SELF_VERIFY_INTERVAL_S, full_every_s: DEFAULT_SELF_VERIFY_FULL_EVERY_S }
    }
}

fn default_self_verify_interval_s() -> u64 {
    DEFAULT_SELF_VERIFY_INTERVAL_S
}
fn default_self_verify_full_every_s() -> u64 {
    DEFAULT_SELF_VERIFY_FULL_EVERY_S
}

/// `[alerting]`: when conditions become alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// A signer, TSA or witness outage is alerted once it has lasted this long (seconds; checked at each
    /// failed attempt).
    #[serde(default = "default_outage_threshold_s")]
    pub outage_threshold_s: u64,
    /// The disk is alerted as nearly full below this much free space (percent of the file system holding the
    /// database; 0 turns the check off).
    #[serde(default = "default_min_free_disk_percent")]
    pub min_free_disk_percent: u8,
    /// Free space is checked this often (seconds).
    #[serde(default = "default_disk_check_interval_s")]
    pub disk_check_interval_s: u64,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            outage_threshold_s: DEFAULT_OUTAGE_THRESHOLD_S,
            min_free_disk_percent: DEFAULT_MIN_FREE_DISK_PERCENT,
            disk_check_interval_s: DEFAULT_DISK_CHECK_INTERVAL_S,
        }
    }
}

/// Default of `readiness.max_untimestamped_age_s`: 10 minutes, above the TSA back-off ceiling (60 s).
pub const DEFAULT_MAX_UNTIMESTAMPED_AGE_S: u64 = 600;
/// Default of `readiness.max_uncosigned_age_s`: 10 minutes.
pub const DEFAULT_MAX_UNCOSIGNED_AGE_S: u64 = 600;

fn default_max_untimestamped_age_s() -> u64 {
    DEFAULT_MAX_UNTIMESTAMPED_AGE_S
}
fn default_max_uncosigned_age_s() -> u64 {
    DEFAULT_MAX_UNCOSIGNED_AGE_S
}
fn default_outage_threshold_s() -> u64 {
    DEFAULT_OUTAGE_THRESHOLD_S
}
fn default_min_free_disk_percent() -> u8 {
    DEFAULT_MIN_FREE_DISK_PERCENT
}
fn default_disk_check_interval_s() -> u64 {
    DEFAULT_DISK_CHECK_INTERVAL_S
}

/// One `[[alert]]`: a webhook that receives alert messages (JSON POST).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// File holding the HMAC-SHA256 key (mode 0600): requests then carry `X-Anchorlog-Signature`.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM CA certificates the receiver's certificate must chain to (required for `https://`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time one delivery may take (milliseconds).
    #[serde(default = "default_alert_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_alert_timeout_ms() -> u64 {
    DEFAULT_ALERT_TIMEOUT_MS
}

/// `[search]`: the normalized search fields (`<database>.search.db`, kept by the indexer thread).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Extract normalized fields and keep the search database (default). `false`: no field extraction for
    /// generic JSON, no indexer thread, no search database writes; events are validated and stored as
    /// always, and their `fields` read as `null`. Turning it back on re-derives the missing fields from the
    /// stored bodies at start.
    #[serde(default = "default_search_enabled")]
    pub enabled: bool,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_search_enabled() -> bool {
    true
}

/// One `[[tsa]]`: an RFC 3161 time-stamping authority.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsaConfig {
    /// `http://` URL the `TimeStampReq` is POSTed to (tokens are signed, so TLS adds nothing to them).
    pub url: String,
    /// PEM file with the CA certificate(s) this TSA's signing certificate must chain to.
    pub ca_file: PathBuf,
    /// Required TSA policy OID (dotted), if any.
    #[serde(default)]
    pub policy: Option<String>,
    /// Time one request may take, in milliseconds.
    #[serde(default = "default_tsa_timeout_ms")]
    pub timeout_ms: u64,
}

impl TsaConfig {
    /// The request timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One `[[witness]]`: a transparency-log witness (c2sp.org/tlog-witness v1.0.0) that cosigns the log's heads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEndpointConfig {
    /// A short label for logs, metrics and records; default: the key name of `vkey`.
    #[serde(default)]
    pub name: Option<String>,
    /// The witness's submission prefix, `http://` or `https://`, without a trailing slash: the appliance POSTs
    /// to `<url>/add-checkpoint`.
    pub url: String,
    /// The witness's verifier key (`<name>+<key ID>+<base64>`, type 0x04 cosignature/v1): every cosignature it
    /// returns is verified with it before it is stored.
    pub vkey: String,
    /// Time one submission may take, in milliseconds.
    #[serde(default = "default_witness_timeout_ms")]
    pub timeout_ms: u64,
    /// With an `https://` URL: PEM CA certificate(s) the witness's server certificate must chain to. Default:
    /// the system bundle `/etc/ssl/certs/ca-certificates.crt`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl WitnessEndpointConfig {
    /// The submission timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The label: `name`, else the vkey's key name (everything before its first `+`).
    pub fn label(&self) -> &str {
        match &self.name {
            Some(n) => n,
            None => self.vkey.split('+').next().unwrap_or_default(),
        }
    }
}

/// `[witnessing]`: how many witnesses must cosign, and how failed submissions are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessingConfig {
    /// Cosignatures (from distinct configured witnesses) a head needs to count as witnessed: `/readyz` and
    /// the metrics report heads below it. Default: every configured witness.
    #[serde(default)]
    pub quorum: Option<usize>,
    /// First retry delay after a witness failed or refused (milliseconds); doubles on each failure.
    #[serde(default = "default_witnessing_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay (milliseconds).
    #[serde(default = "default_witnessing_retry_max_ms")]
    pub retry_max_ms: u64,
}

impl Default for WitnessingConfig {
    fn default() -> Self {
        Self {
            quorum: None,
            retry_initial_ms: DEFAULT_WITNESSING_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_WITNESSING_RETRY_MAX_MS,
        }
    }
}

/// `[timestamping]`: skew and retry policy for RFC 3161 tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampingConfig {
    /// A token's `genTime` may be at most this many seconds earlier than the head's seal time.
    #[serde(default = "default_timestamp_max_skew_s")]
    pub max_skew_s: u64,
    /// First retry delay after every TSA failed (milliseconds); doubles on each failure.
    #[serde(default = "default_timestamp_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay (milliseconds).
    #[serde(default = "default_timestamp_retry_max_ms")]
    pub retry_max_ms: u64,
}

impl Default for TimestampingConfig {
    fn default() -> Self {
        Self {
            max_skew_s: DEFAULT_TIMESTAMP_MAX_SKEW_S,
            retry_initial_ms: DEFAULT_TIMESTAMP_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_TIMESTAMP_RETRY_MAX_MS,
        }
    }
}

/// `[server]`: the mTLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the mTLS API, e.g. `0.0.0.0:8443`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// PEM file with the server certificate chain.
    pub cert_file: PathBuf,
    /// PEM file with the server private key (a file path, never the key itself).
    pub key_file: PathBuf,
    /// PEM files with the CA certificates that client certificates must chain to.
    pub client_ca_files: Vec<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of the client CAs, checked at every handshake (signature and
    /// nextUpdate enforced). Once one is configured, every client CA needs its CRL: a certificate whose
    /// revocation status no CRL covers is refused. Reloaded on SIGHUP and when a file changes.
    #[serde(default)]
    pub client_crl_files: Vec<PathBuf>,
    /// Accept client certificates without any extendedKeyUsage (legacy certificates). Default `false`: a client
    /// certificate must carry `clientAuth`.
    #[serde(default)]
    pub allow_client_certs_without_eku: bool,
    /// How often (seconds) the configuration file, client CA, CRL and source secret files are checked for
    /// changes, which reload them as SIGHUP does; 0 turns the polling off (SIGHUP still reloads).
    #[serde(default = "default_reload_poll_s")]
    pub reload_poll_s: u64,
    /// Optional plain-HTTP listener that serves only `GET /healthz` (for systemd and load balancers).
    #[serde(default)]
    pub health_listen: Option<String>,
    /// Optional second HTTPS listener (server certificate only, no client certificate) for sources that
    /// authenticate with a secret (Okta, Auth0, Keycloak webhook plugins).
    #[serde(default)]
    pub source_listen: Option<String>,
    /// Optional syslog over TLS listener (RFC 5425), e.g. `0.0.0.0:6514`: mutual TLS with the same client CAs,
    /// CRLs and principals as `listen`; each principal's messages go to the `[[source]]` of format `syslog` that
    /// lists it. Framing and bounds in `[syslog]`.
    #[serde(default)]
    pub syslog_listen: Option<String>,
    /// Seconds to wait for in-flight requests on shutdown.
    #[serde(default = "default_shutdown_grace_s")]
    pub shutdown_grace_s: u64,
    /// Record the appliance's own operational events in the log: every start and clean stop
    /// (`anchorlog.start` / `anchorlog.stop`, PCI DSS 10.2.1.6), every sealing or timestamping outage
    /// (`anchorlog.outage`, 10.7.3) and every invalid access attempt (`anchorlog.access_denied`, 10.2.1.4).
    /// Auditor access records (10.2.1.3) are not affected. Default and the only compliant setting: `true`. `false` exists for test fixtures that assert exact seqs of the events they
    /// post; a warning at start says so when it is off.
    #[serde(default = "default_true")]
    pub record_appliance_events: bool,
    /// The built auditor's console (console/build.sh; the Debian package installs it here), served to auditors
    /// at `/console/`.
    #[serde(default = "default_console_dir")]
    pub console_dir: PathBuf,
}

/// How messages are delimited on the syslog listener (RFC 6587).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyslogFraming {
    /// `MSG-LEN SP MSG` (RFC 6587 3.4.1, RFC 5425): any byte may occur in a message. rsyslog's
    /// `TCP_Framing="octet-counted"`, syslog-ng's `syslog()` driver.
    #[default]
    OctetCounted,
    /// `MSG LF` (RFC 6587 3.4.2, "non-transparent"): a message cannot contain an LF. rsyslog's default TCP
    /// framing, syslog-ng's `network()` driver.
    Lf,
}

/// `[syslog]`: the syslog listener (`server.syslog_listen`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `octet-counted` (default) or `lf`.
    #[serde(default)]
    pub framing: SyslogFraming,
    /// Longest message in bytes (the MSG-LEN of a frame, or a line without its LF); a longer one closes the
    /// connection and stores nothing of it. RFC 5425 requires receivers to take 2048 and recommends 8192.
    #[serde(default = "default_syslog_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most messages one connection may have received but not yet committed; at the bound the listener stops
    /// reading that connection until the writer has committed them (back-pressure, never a drop).
    #[serde(default = "default_syslog_max_in_flight")]
    pub max_in_flight_messages: usize,
    /// Most bytes of such messages one connection may hold (the memory bound per connection, with one read buffer
    /// and one partial message); at least `max_message_bytes`.
    #[serde(default = "default_syslog_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// Seconds a connection may stay silent before it is closed (a half-open TCP peer holds a slot otherwise).
    #[serde(default = "default_syslog_idle_timeout_s")]
    pub idle_timeout_s: u64,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            framing: SyslogFraming::default(),
            max_message_bytes: default_syslog_max_message_bytes(),
            max_in_flight_messages: default_syslog_max_in_flight(),
            max_in_flight_bytes: default_syslog_max_in_flight_bytes(),
            idle_timeout_s: default_syslog_idle_timeout_s(),
        }
    }
}

fn default_syslog_max_message_bytes() -> usize {
    64 * 1024
}
fn default_syslog_max_in_flight() -> usize {
    10_000
}
fn default_syslog_max_in_flight_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_syslog_idle_timeout_s() -> u64 {
    600
}

/// `[storage]`: where the log lives: the embedded SQLite database (the default), or PostgreSQL (docs/HA.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub backend: StorageBackend,
    /// Path of the SQLite database file (created on first start). Required with `backend = "sqlite"`.
    #[serde(default)]
    pub database: PathBuf,
    /// `backend = "postgres"`: `postgres://ROLE@HOST:PORT/DATABASE` (the application role, docs/HA.md). Never with
    /// a password in it: that goes in `password_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// `backend = "postgres"`: a file holding the role's password (or a systemd credential path).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `backend = "postgres"`: PEM CA certificates that sign the server's certificate. Given, the session is TLS
    /// (rustls) and the server's name is checked; absent, the session is plain (a unix socket or loopback only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `backend = "postgres"`: the other nodes' signing public keys (PEM, several blocks): a node takes over only
    /// a log whose last head is signed by its own key or one of these (docs/HA.md). Without it, only its own.
    #[serde(default)]
    pub keyring_file: Option<PathBuf>,
    /// `backend = "postgres"`: this node's name, recorded with the writer lease and in its takeover records
    /// (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// `backend = "postgres"`: the writer lease's time to live, seconds (2..=300, default 10). A writer node that
    /// is frozen or cut off for this long loses the lease, and a standby takes over within about this time plus
    /// `lease_poll_ms`.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// `backend = "postgres"`: how often a standby tries to take the lease, milliseconds (100..=60000, default
    /// 1000).
    #[serde(default = "default_lease_poll_ms")]
    pub lease_poll_ms: u64,
    /// What `serve` checks of the whole file before it starts: `quick` (default), `full` or `off`.
    #[serde(default)]
    pub integrity_check: crate::store::IntegrityCheck,
    /// Longest an HTTP export may hold its read snapshot, seconds (10..=86400, default 600). While a snapshot is
    /// held no checkpoint can pass it, so the WAL grows with everything ingested meanwhile; an export to a client
    /// that reads slowly is aborted at this bound instead of letting the WAL grow without one.
    #[serde(default = "default_max_export_snapshot_s")]
    pub max_export_snapshot_s: u64,
}

fn default_max_export_snapshot_s() -> u64 {
    600
}

fn default_lease_ttl_s() -> u64 {
    10
}
fn default_lease_poll_ms() -> u64 {
    1_000
}

/// `storage.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The embedded SQLite file `storage.database`.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by one writer node and any number of standby nodes (docs/HA.md).
    Postgres,
}

/// `[limits]`: bounds on what one request may carry, and on what one client may hold or cause (connections, time,
/// records of refused access, answer size): anyone who can reach a port can try to exhaust them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Maximum request body in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Maximum number of events in one request.
    #[serde(default = "default_max_events_per_request")]
    pub max_events_per_request: usize,
    /// Maximum JSON nesting depth.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Maximum `limit` of list queries.
    #[serde(default = "default_max_query_limit")]
    pub max_query_limit: usize,
    /// Time a client has to complete the TLS handshake (milliseconds); a half-open handshake holds a connection
    /// slot until then.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Time a client has to send a request's headers (milliseconds), on every listener.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a whole request body (milliseconds), on every listener: a slower body is
    /// answered 408 `body_timeout` and stores nothing.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Time an event stream (`GET /v1/stream`) waits for a consumer that stopped reading (milliseconds): when a
    /// page could not be handed to the connection for this long, the stream ends (close record, reason
    /// `stalled`) and its connection is closed, so a consumer that never reads cannot hold a connection.
    #[serde(default = "default_stream_stall_timeout_ms")]
    pub stream_stall_timeout_ms: u64,
    /// Most open connections per listener; further ones wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open connections from one client address per listener (an IPv6 client counts by its /64); further
    /// ones are closed right after `accept()`, so one address cannot take every slot.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// First pause after a failed `accept()` (milliseconds; doubles on each further failure). Accept fails when
    /// file descriptors run out (`LimitNOFILE`): retrying at once would spin a core and flood the log.
    #[serde(default = "default_accept_backoff_initial_ms")]
    pub accept_backoff_initial_ms: u64,
    /// Longest pause between failed `accept()` calls (milliseconds).
    #[serde(default = "default_accept_backoff_max_ms")]
    pub accept_backoff_max_ms: u64,
    /// Refused access attempts recorded one by one per minute and listener (`anchorlog.access_denied`); the
    /// rest are counted in one `anchorlog.access_denied_summary` record per minute.
    #[serde(default = "default_denial_records_per_minute")]
    pub denial_records_per_minute: u32,
    /// Of those, at most this many per minute from one client address (per listener).
    #[serde(default = "default_denial_records_per_address_per_minute")]
    pub denial_records_per_address_per_minute: u32,
    /// Largest answer of `GET /v1/events` (bytes of JSON, bodies included with `body=true`): a page over it is
    /// refused with 422 `response_too_large` naming a `limit` that fits.
    /// Default: 32 MiB, or twice `max_body_bytes` plus 64 KiB when that is more (one event always fits).
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// Ingest requests that may wait for (or be applied by) the writer at once; one more is answered 429.
    #[serde(default = "default_writer_queue_depth")]
    pub writer_queue_depth: usize,
    /// `Retry-After` seconds of that 429.
    #[serde(default = "default_retry_after_s")]
    pub retry_after_s: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_events_per_request: DEFAULT_MAX_EVENTS_PER_REQUEST,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_query_limit: DEFAULT_MAX_QUERY_LIMIT,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            stream_stall_timeout_ms: DEFAULT_STREAM_STALL_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            accept_backoff_initial_ms: DEFAULT_ACCEPT_BACKOFF_INITIAL_MS,
            accept_backoff_max_ms: DEFAULT_ACCEPT_BACKOFF_MAX_MS,
            denial_records_per_minute: DEFAULT_DENIAL_RECORDS_PER_MINUTE,
            denial_records_per_address_per_minute: DEFAULT_DENIAL_RECORDS_PER_ADDRESS_PER_MINUTE,
            max_response_bytes: None,
            writer_queue_depth: DEFAULT_WRITER_QUEUE_DEPTH,
            retry_after_s: DEFAULT_RETRY_AFTER_S,
        }
    }
}

impl LimitsConfig {
    /// `handshake_timeout_ms` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    /// `body_read_timeout_ms` as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
    /// `stream_stall_timeout_ms` as a duration.
    pub fn stream_stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_stall_timeout_ms)
    }

    /// The largest answer of `GET /v1/events`: `max_response_bytes`, or its default.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes.unwrap_or_else(|| DEFAULT_MAX_RESPONSE_BYTES.max(self.response_floor()))
    }

    /// The smallest `max_response_bytes` that still fits one event (a body's JSON escaping at most doubles it; its
    /// entry and fields add less than 64 KiB).
    fn response_floor(&self) -> usize {
        self.max_body_bytes.saturating_mul(2).saturating_add(64 * 1024)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let ms = |key: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                return Err(invalid(
                    &format!("limits.{key}"),
                    format!("expected {lo}..={hi} milliseconds, got {v}"),
                ));
            }
            Ok(())
        };
        ms("handshake_timeout_ms", self.handshake_timeout_ms, 100, 120_000)?;
        ms("header_read_timeout_ms", self.header_read_timeout_ms, 100, 600_000)?;
        ms("body_read_timeout_ms", self.body_read_timeout_ms, 100, 3_600_000)?;
        ms("stream_stall_timeout_ms", self.stream_stall_timeout_ms, 100, 3_600_000)?;
        ms("accept_backoff_initial_ms", self.accept_backoff_initial_ms, 1, 10_000)?;
        ms("accept_backoff_max_ms", self.accept_backoff_max_ms, self.accept_backoff_initial_ms, 60_000)?;
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(invalid("limits.max_connections", "expected 1..=1000000"));
        }
        if self.max_connections_per_address == 0 || self.max_connections_per_address > self.max_connections {
            return Err(invalid("limits.max_connections_per_address", "expected 1..=max_connections"));
        }
        if self.denial_records_per_minute == 0 || self.denial_records_per_minute > 100_000 {
            return Err(invalid("limits.denial_records_per_minute", "expected 1..=100000"));
        }
        if self.denial_records_per_address_per_minute == 0
            || self.denial_records_per_address_per_minute > self.denial_records_per_minute
        {
            return Err(invalid(
                "limits.denial_records_per_address_per_minute",
                "expected 1..=denial_records_per_minute",
            ));
        }
        if self.writer_queue_depth == 0 || self.writer_queue_depth > MAX_WRITER_QUEUE_DEPTH {
            return Err(invalid(
                "limits.writer_queue_depth",
                format!("expected 1..={MAX_WRITER_QUEUE_DEPTH}"),
            ));
        }
        if self.retry_after_s == 0 || self.retry_after_s > 3_600 {
            return Err(invalid("limits.retry_after_s", "expected 1..=3600 seconds"));
        }
        let floor = self.response_floor();
        match self.max_response_bytes {
            Some(n) if n < floor || n > MAX_RESPONSE_BYTES_CEILING => Err(invalid(
                "limits.max_response_bytes",
                format!(
                    "expected {floor}..={MAX_RESPONSE_BYTES_CEILING} (at least twice max_body_bytes plus 64 KiB, so \
                     that one event always fits a page), got {n}"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// `[sealing]`: when blocks close.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealingConfig {
    /// A block closes this often while there are new events (milliseconds).
    #[serde(default = "default_seal_interval_ms")]
    pub seal_interval_ms: u64,
    /// A block closes as soon as it holds this many events.
    #[serde(default = "default_seal_max_events")]
    pub seal_max_events: u64,
    /// An idle log seals a heartbeat head this often (seconds), so truncation is detectable.
    #[serde(default = "default_heartbeat_interval_s")]
    pub heartbeat_interval_s: u64,
}

impl Default for SealingConfig {
    fn default() -> Self {
        Self {
            seal_interval_ms: DEFAULT_SEAL_INTERVAL_MS,
            seal_max_events: DEFAULT_SEAL_MAX_EVENTS,
            heartbeat_interval_s: DEFAULT_HEARTBEAT_INTERVAL_S,
        }
    }
}

impl SealingConfig {
    /// The seal interval as a duration.
    pub fn seal_interval(&self) -> Duration {
        Duration::from_millis(self.seal_interval_ms)
    }
    /// The heartbeat interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_s)
    }
}

/// `[signer]`: which hardware signs block heads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// `pkcs11` (an HSM or SoftHSM) or `tpm`.
    pub backend: SignerBackend,
    /// Settings of the PKCS#11 backend (required when `backend = "pkcs11"`).
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    /// Settings of the TPM 2.0 backend (required when `backend = "tpm"`).
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
    /// Longest a device call may take before its thread is abandoned and a fresh session opened (ms).
    #[serde(default = "default_sign_timeout_ms")]
    pub sign_timeout_ms: u64,
    /// First pause after an error retrying cannot fix (wrong PIN, key missing, TPM lockout), in ms.
    #[serde(default = "default_signer_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// The pause doubles at each such error up to this (ms).
    #[serde(default = "default_signer_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_sign_timeout_ms() -> u64 {
    crate::signer::health::DEFAULT_SIGN_TIMEOUT_MS
}
fn default_signer_backoff_initial_ms() -> u64 {
    crate::signer::health::DEFAULT_BACKOFF_INITIAL_MS
}
fn default_signer_backoff_max_ms() -> u64 {
    crate::signer::health::DEFAULT_BACKOFF_MAX_MS
}

impl SignerConfig {
    /// The supervision of the signer's calls these settings ask for.
    pub fn supervision(&self) -> crate::signer::SignerSupervision {
        crate::signer::SignerSupervision {
            timeout: Duration::from_millis(self.sign_timeout_ms),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
        }
    }
}

/// Signer backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerBackend {
    /// A PKCS#11 module (HSM, SoftHSM).
    Pkcs11,
    /// A TPM 2.0.
    Tpm,
}

/// `[signer.pkcs11]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`.so`), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token that holds the key.
    pub token_label: String,
    /// Label of the signing key pair.
    pub key_label: String,
    /// File holding the user PIN (a file path or a systemd credential path, never the PIN).
    pub pin_file: PathBuf,
}

/// `[signer.tpm]`: where the TPM-resident signing key lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI: `device:/dev/tpmrm0` (the kernel resource manager; production), `swtpm:host=H,port=P`,
    /// `mssim:host=H,port=P` or `tabrmd`.
    pub tcti: String,
    /// Persistent handle of the signing key, e.g. `0x81010010` (a TOML integer or a hex string).
    pub handle: TpmHandle,
    /// Optional file holding the key's auth value (a file path, never the value itself). The head counter
    /// uses the same auth value.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// NV index of the head counter, e.g. `0x01800010`: every head then carries a TPM monotonic counter
    /// value (docs/TPM.md). Unset: heads carry none and a restored older database is not caught at start.
    #[serde(default)]
    pub counter_index: Option<TpmHandle>,
}

/// A TPM handle (a persistent object or an NV index), written in TOML as an integer (`0x81010010`) or a hex
/// string (`"0x81010010"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpmHandle(pub u32);

impl<'de> Deserialize<'de> for TpmHandle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        let expected = "a persistent handle such as 0x81010010 (integer or hex string), or an NV index such as 0x01800010";
        let value = match Raw::deserialize(d)? {
            Raw::Int(i) => u32::try_from(i).map_err(|_| serde::de::Error::custom(expected))?,
            Raw::Text(t) => {
                let t = t.trim();
                let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
                u32::from_str_radix(digits, 16).map_err(|_| serde::de::Error::custom(expected))?
            }
        };
        Ok(TpmHandle(value))
    }
}

/// First TPM persistent handle (`TPM_HR_PERSISTENT`).
pub const TPM_PERSISTENT_FIRST: u32 = 0x8100_0000;
/// Last persistent handle of the owner hierarchy (where `anchorlog keys generate` may persist a key).
pub const TPM_OWNER_PERSISTENT_LAST: u32 = 0x817F_FFFF;
/// First NV index handle the head counter may use.
pub const TPM_COUNTER_INDEX_FIRST: u32 = 0x0100_0000;
/// Last NV index handle the head counter may use (below the TCG range of EK certificates, `0x01C00000..`).
pub const TPM_COUNTER_INDEX_LAST: u32 = 0x01BF_FFFF;
/// TCTI kinds libtss2 (through tss-esapi) understands.
pub const TPM_TCTI_KINDS: [&str; 4] = ["device", "swtpm", "mssim", "tabrmd"];

/// One `[[principal]]`: who a client certificate is and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Name recorded as the producer of the events this principal posts.
    pub name: String,
    /// Roles: `producer`, `auditor`, `admin`.
    pub roles: Vec<Role>,
    /// Certificate identities that map to this principal: `dns:NAME`, `uri:URI`, `cn:COMMON NAME`
    /// or `sha256:HEX` (fingerprint of the certificate DER).
    pub identities: Vec<String>,
    /// The `server.client_ca_files` entries that may issue this principal's certificates. Required when more
    /// than one client CA is configured; a certificate naming this principal that chains only to another CA is
    /// refused (403 `principal_wrong_issuer`).
    #[serde(default)]
    pub issuers: Vec<PathBuf>,
}

/// One `[[source]]`: an event source with its own URL, `/v1/sources/{name}/events`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name: the URL segment, recorded in every entry as `source`.
    pub name: String,
    /// Payload format: `keycloak`, `okta`, `auth0`, `json` or `syslog` (sent to `server.syslog_listen`).
    pub format: crate::formats::Format,
    /// Principals (producer role) that may post to this source over mTLS; the principal is recorded as the
    /// producer.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Secret authentication on `server.source_listen`: `authorization` (the whole Authorization header
    /// value, as Okta event hooks and Auth0 log streams send it), `bearer` (`Authorization: Bearer <secret>`)
    /// or `hmac` (HMAC-SHA256 of the body in `X-Keycloak-Signature`). The source name is recorded as the
    /// producer.
    #[serde(default)]
    pub secret_auth: Option<SecretAuth>,
    /// File holding the secret (never the secret itself); required with `secret_auth`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// How a source authenticates on the secret listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretAuth {
    /// `Authorization: <secret>`, compared whole (Okta, Auth0).
    Authorization,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `X-Keycloak-Signature: <hex HMAC-SHA256 of the body>` (optionally `sha256=` prefixed).
    Hmac,
}

/// Roles a principal can hold. Deny by default: an endpoint names the role it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May append events.
    Producer,
    /// May read events, heads, proofs and exports.
    Auditor,
    /// May erase payloads and manage keys.
    Admin,
    /// May read `/readyz` and `/metrics` and nothing else (a Prometheus scraper, a load balancer's probe): no
    /// event content, no heads, no exports.
    Monitor,
    /// May follow the event stream (`GET /v1/stream`) and nothing else: a SIEM's collector, which needs every
    /// event but no search, export, proof or erasure.
    Reader,
}

impl Role {
    /// Lower-case name as used in config and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Monitor => "monitor",
            Role::Reader => "reader",
        }
    }
}

/// A configuration problem, naming the key and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema (serde names the key).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key, line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: `{key}`: {problem}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_body_bytes`.
        key: String,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// A private-key or secret file is accessible to its group or other users.
    #[error(
        "refusing {path} (named by `{key}`): the file has mode {mode:04o}, so its group or other users can \
         access it; restrict it with `chmod 600 {path}` (and make it owned by the service user)"
    )]
    InsecureMode {
        /// Dotted key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file could not be read.
    #[error("cannot read secret file {path} (named by `{key}`): {reason}")]
    Secret {
        /// Dotted key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why (never the content).
        reason: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), problem: problem.into() }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_path_buf(), message },
            other => other,
        })?;
        config.source_path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        config.validate()?;
        config.text_sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        Ok(config)
    }

    /// Checks every value that can be checked without hardware or network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_origin(&self.origin)?;
        self.server.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            invalid("server.listen", "expected an IP address and port, e.g. \"0.0.0.0:8443\"")
        })?;
        if let Some(h) = &self.server.health_listen {
            h.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid("server.health_listen", "expected an IP address and port, e.g. \"127.0.0.1:8081\"")
            })?;
        }
        let sg = &self.signer;
        if !(100..=25_000).contains(&sg.sign_timeout_ms) {
            return Err(invalid(
                "signer.sign_timeout_ms",
                "expected 100..=25000: below the systemd unit's WatchdogSec=30, so a hung device is abandoned \
                 before the watchdog ends the appliance",
            ));
        }
        if sg.backoff_initial_ms < 100
            || sg.backoff_max_ms < sg.backoff_initial_ms
            || sg.backoff_max_ms > 86_400_000
        {
            return Err(invalid(
                "signer.backoff_initial_ms",
                "expected backoff_initial_ms >= 100 and backoff_initial_ms <= backoff_max_ms <= 86400000 (one day)",
            ));
        }
        if self.server.reload_poll_s > 3_600 {
            return Err(invalid("server.reload_poll_s", "expected 0 (off) ..= 3600 seconds"));
        }
        if self.server.client_ca_files.is_empty() {
            return Err(invalid(
                "server.client_ca_files",
                "at least one CA file is required: every client must present a certificate",
            ));
        }
        let l = &self.limits;
        if l.max_body_bytes == 0 || l.max_body_bytes > MAX_BODY_BYTES_CEILING {
            return Err(invalid(
                "limits.max_body_bytes",
                format!("expected 1..={MAX_BODY_BYTES_CEILING}, got {}", l.max_body_bytes),
            ));
        }
        if l.max_events_per_request == 0 || l.max_events_per_request > 100_000 {
            return Err(invalid("limits.max_events_per_request", "expected 1..=100000"));
        }
        if l.max_json_depth < 2 || l.max_json_depth > 512 {
            return Err(invalid("limits.max_json_depth", "expected 2..=512"));
        }
        if l.max_query_limit == 0 || l.max_query_limit > 10_000 {
            return Err(invalid("limits.max_query_limit", "expected 1..=10000"));
        }
        l.validate()?;
        if !(10..=86_400).contains(&self.storage.max_export_snapshot_s) {
            return Err(invalid("storage.max_export_snapshot_s", "expected 10..=86400 seconds"));
        }
        self.validate_storage_backend()?;
        let s = &self.sealing;
        if s.seal_interval_ms < 10 || s.seal_interval_ms > 3_600_000 {
            return Err(invalid("sealing.seal_interval_ms", "expected 10..=3600000 milliseconds"));
        }
        if s.seal_max_events == 0 || s.seal_max_events > 1_000_000 {
            return Err(invalid("sealing.seal_max_events", "expected 1..=1000000"));
        }
        if s.heartbeat_interval_s == 0 || s.heartbeat_interval_s > 86_400 {
            return Err(invalid("sealing.heartbeat_interval_s", "expected 1..=86400 seconds"));
        }
        match self.signer.backend {
            SignerBackend::Pkcs11 => {
                let p =
                    self.signer.pkcs11.as_ref().ok_or_else(|| {
                        invalid("signer.pkcs11", "required when signer.backend = \"pkcs11\"")
                    })?;
                if p.token_label.is_empty() || p.token_label.len() > 32 {
                    return Err(invalid("signer.pkcs11.token_label", "expected 1 to 32 bytes"));
                }
                if p.key_label.is_empty() {
                    return Err(invalid("signer.pkcs11.key_label", "must not be empty"));
                }
            }
            SignerBackend::Tpm => validate_tpm(self.signer.tpm.as_ref())?,
        }
        if let Some(a) = &self.server.source_listen {
            a.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid("server.source_listen", "expected an IP address and port, e.g. \"0.0.0.0:8444\"")
            })?;
        }
        self.validate_syslog()?;
        self.validate_principals()?;
        self.validate_timestamping()?;
        self.validate_witnessing()?;
        self.validate_alerting()?;
        self.validate_sources()
    }

    /// The quorum in effect: `[witnessing] quorum`, else every configured witness (0 when witnessing is off).
    pub fn witness_quorum(&self) -> usize {
        self.witnessing.quorum.unwrap_or(self.witnesses.len())
    }

    fn validate_storage_backend(&self) -> Result<(), ConfigError> {
        let st = &self.storage;
        match st.backend {
            StorageBackend::Sqlite => {
                if st.database.as_os_str().is_empty() {
                    return Err(invalid(
                        "storage.database",
                        "required: the path of the SQLite database file",
                    ));
                }
                let pg_only = [
                    ("storage.url", st.url.is_some()),
                    ("storage.password_file", st.password_file.is_some()),
                    ("storage.ca_file", st.ca_file.is_some()),
                    ("storage.node", st.node.is_some()),
                    ("storage.keyring_file", st.keyring_file.is_some()),
                ];
                if let Some((key, _)) = pg_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(key, "only for backend = \"postgres\"; the backend is sqlite"));
                }
            }
            StorageBackend::Postgres => {
                let Some(url) = &st.url else {
                    return Err(invalid(
                        "storage.url",
                        "required with backend = \"postgres\": postgres://ROLE@HOST:PORT/DATABASE",
                    ));
                };
                validate_postgres_url(url)?;
                if !st.database.as_os_str().is_empty() {
                    return Err(invalid(
                        "storage.database",
                        "a SQLite file is not used with backend = \"postgres\"; remove it (copy a SQLite log \
                         with `anchorlog migrate`)",
                    ));
                }
                if !(2..=300).contains(&st.lease_ttl_s) {
                    return Err(invalid("storage.lease_ttl_s", "expected 2..=300 seconds"));
                }
                if !(100..=60_000).contains(&st.lease_poll_ms) {
                    return Err(invalid("storage.lease_poll_ms", "expected 100..=60000 milliseconds"));
                }
                if let Some(node) = &st.node {
                    validate_name(node).map_err(|e| invalid("storage.node", e))?;
                }
                if self.search.enabled {
                    return Err(invalid(
                        "search.enabled",
                        "the search index is not available on PostgreSQL yet: set [search] enabled = false \
                         (auditors search an exported bundle or a SQLite copy meanwhile)",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_witnessing(&self) -> Result<(), ConfigError> {
        let mut labels = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, w) in self.witnesses.iter().enumerate() {
            let key = format!("witness[{i}]");
            let (scheme, rest) = match w.url.split_once("://") {
                Some((s, r)) if s == "http" || s == "https" => (s, r),
                _ => ("", ""),
            };
            if rest.is_empty()
                || rest.starts_with('/')
                || w.url.ends_with('/')
                || w.url.bytes().any(|b| !b.is_ascii_graphic() || b"?#@".contains(&b))
            {
                return Err(invalid(
                    &format!("{key}.url"),
                    format!(
                        "{:?}: expected the witness's submission prefix, http:// or https:// with a host and no \
                         trailing slash, e.g. \"https://witness.example.org/witness\" (the appliance POSTs to \
                         <url>/add-checkpoint)",
                        w.url
                    ),
                ));
            }
            if w.ca_file.is_some() && scheme != "https" {
                return Err(invalid(&format!("{key}.ca_file"), "only used with an https:// url"));
            }
            let vkey = anchorlog_core::note::VerifierKey::parse(&w.vkey)
                .map_err(|e| invalid(&format!("{key}.vkey"), e.to_string()))?;
            if vkey.signature_type() != anchorlog_core::note::vkey::TYPE_COSIGNATURE_V1 {
                return Err(invalid(
                    &format!("{key}.vkey"),
                    format!(
                        "a witness's vkey is a cosignature/v1 key (type 0x04, what `anchorlog witness keygen` \
                         prints); this one is type 0x{:02x}",
                        vkey.signature_type()
                    ),
                ));
            }
            if !keys.insert((vkey.name().to_owned(), vkey.key_id())) {
                return Err(invalid(&format!("{key}.vkey"), "this witness key is configured twice"));
            }
            anchorlog_core::note::vkey::validate_key_name(w.label())
                .map_err(|e| invalid(&format!("{key}.name"), e.to_string()))?;
            if !labels.insert(w.label().to_owned()) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("{:?} names another witness too; give each a distinct name", w.label()),
                ));
            }
            if w.timeout_ms < 100 || w.timeout_ms > 120_000 {
                return Err(invalid(&format!("{key}.timeout_ms"), "expected 100..=120000 milliseconds"));
            }
        }
        let ws = &self.witnessing;
        match ws.quorum {
            Some(_) if self.witnesses.is_empty() => {
                return Err(invalid("witnessing.quorum", "no [[witness]] is configured"));
            }
            Some(k) if k == 0 || k > self.witnesses.len() => {
                return Err(invalid(
                    "witnessing.quorum",
                    format!(
                        "expected 1..={} (the number of [[witness]] entries), got {k}",
                        self.witnesses.len()
                    ),
                ));
            }
            _ => {}
        }
        if ws.retry_initial_ms < 10 || ws.retry_initial_ms > 3_600_000 {
            return Err(invalid("witnessing.retry_initial_ms", "expected 10..=3600000 milliseconds"));
        }
        if ws.retry_max_ms < ws.retry_initial_ms || ws.retry_max_ms > 3_600_000 {
            return Err(invalid(
                "witnessing.retry_max_ms",
                "expected retry_initial_ms..=3600000 milliseconds",
            ));
        }
        Ok(())
    }

    fn validate_alerting(&self) -> Result<(), ConfigError> {
        let v = &self.self_verify;
        if v.interval_s == 0 || v.interval_s > 86_400 {
            return Err(invalid("self_verify.interval_s", "expected 1..=86400 seconds"));
        }
        if v.full_every_s < v.interval_s || v.full_every_s > 31_536_000 {
            return Err(invalid("self_verify.full_every_s", "expected interval_s..=31536000 seconds"));
        }
        let a = &self.alerting;
        if a.outage_threshold_s == 0 || a.outage_threshold_s > 86_400 {
            return Err(invalid("alerting.outage_threshold_s", "expected 1..=86400 seconds"));
        }
        if a.min_free_disk_percent > 100 {
            return Err(invalid("alerting.min_free_disk_percent", "expected 0..=100"));
        }
        if a.disk_check_interval_s == 0 || a.disk_check_interval_s > 86_400 {
            return Err(invalid("alerting.disk_check_interval_s", "expected 1..=86400 seconds"));
        }
        for (i, w) in self.alerts.iter().enumerate() {
            let key = format!("alert[{i}]");
            #[cfg(feature = "server")]
            {
                let tls = crate::alerts::check_url(&w.url).map_err(|p| invalid(&format!("{key}.url"), p))?;
                if tls && w.ca_file.is_none() {
                    return Err(invalid(
                        &format!("{key}.ca_file"),
                        "required for an https:// webhook: the CA certificates its certificate chains to \
                         (/etc/ssl/certs/ca-certificates.crt for a public service)",
                    ));
                }
            }
            if w.timeout_ms < 100 || w.timeout_ms > 60_000 {
                return Err(invalid(&format!("{key}.timeout_ms"), "expected 100..=60000 milliseconds"));
            }
        }
        Ok(())
    }

    fn validate_syslog(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.server.syslog_listen {
            a.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid("server.syslog_listen", "expected an IP address and port, e.g. \"0.0.0.0:6514\"")
            })?;
        }
        let s = &self.syslog;
        if !(2048..=16 * 1024 * 1024).contains(&s.max_message_bytes) {
            return Err(invalid(
                "syslog.max_message_bytes",
                "expected 2048..=16777216 bytes (RFC 5425: at least 2048)",
            ));
        }
        if !(1..=1_000_000).contains(&s.max_in_flight_messages) {
            return Err(invalid("syslog.max_in_flight_messages", "expected 1..=1000000"));
        }
        if !(s.max_message_bytes..=1024 * 1024 * 1024).contains(&s.max_in_flight_bytes) {
            return Err(invalid(
                "syslog.max_in_flight_bytes",
                format!("expected syslog.max_message_bytes ({})..=1073741824 bytes", s.max_message_bytes),
            ));
        }
        if !(1..=86_400).contains(&s.idle_timeout_s) {
            return Err(invalid("syslog.idle_timeout_s", "expected 1..=86400 seconds"));
        }
        // A principal's messages go to exactly one syslog source: the listener has no URL to choose by.
        let mut taken: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, src) in
            self.sources.iter().enumerate().filter(|(_, s)| s.format == crate::formats::Format::Syslog)
        {
            if src.secret_auth.is_some() {
                return Err(invalid(
                    &format!("source[{i}].secret_auth"),
                    "a syslog source authenticates by client certificate only (server.syslog_listen); remove it",
                ));
            }
            for p in &src.principals {
                if let Some(other) = taken.insert(p, &src.name) {
                    return Err(invalid(
                        &format!("source[{i}].principals"),
                        format!("{p:?} is already a principal of syslog source {other:?}; a principal sends to one syslog source"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_sources(&self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, src) in self.sources.iter().enumerate() {
            let key = format!("source[{i}]");
            validate_name(&src.name).map_err(|problem| invalid(&format!("{key}.name"), problem))?;
            // `events` is what the generic endpoint records as its source; keep the two apart. `anchorlog` is the
            // appliance's own source (its records must never be confused with a producer's).
            if src.name == "events" || is_reserved_name(&src.name) || !names.insert(src.name.clone()) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("{:?} is reserved or used by another source", src.name),
                ));
            }
            for p in &src.principals {
                let known = self.principals.iter().find(|c| &c.name == p);
                if !known.is_some_and(|c| c.roles.contains(&Role::Producer)) {
                    return Err(invalid(
                        &format!("{key}.principals"),
                        format!("{p:?} is not a [[principal]] with the producer role"),
                    ));
                }
            }
            match (&src.secret_auth, &src.secret_file) {
                (Some(_), Some(_)) => {
                    if self.server.source_listen.is_none() {
                        return Err(invalid(
                            &format!("{key}.secret_auth"),
                            "secret-authenticated sources are served on server.source_listen; set it",
                        ));
                    }
                }
                (None, None) if src.principals.is_empty() => {
                    return Err(invalid(
                        &key,
                        "nobody can post to this source: give `principals` (mTLS) and/or `secret_auth` with \
                         `secret_file`",
                    ))
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(invalid(&format!("{key}.secret_file"), "required with secret_auth"))
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        &format!("{key}.secret_auth"),
                        "required with secret_file: authorization, bearer or hmac",
                    ))
                }
            }
        }
        Ok(())
    }

    fn validate_timestamping(&self) -> Result<(), ConfigError> {
        let mut urls = BTreeSet::new();
        for (i, t) in self.tsas.iter().enumerate() {
            let key = format!("tsa[{i}]");
            let rest = t.url.strip_prefix("http://").unwrap_or_default();
            if rest.is_empty() || rest.starts_with('/') || t.url.chars().any(char::is_whitespace) {
                return Err(invalid(
                    &format!("{key}.url"),
                    format!("{:?}: expected an http:// URL with a host, e.g. \"http://timestamp.example.com/tsa\"", t.url),
                ));
            }
            if !urls.insert(t.url.as_str()) {
                return Err(invalid(&format!("{key}.url"), format!("{:?} is configured twice", t.url)));
            }
            if let Some(p) = &t.policy {
                p.parse::<const_oid::ObjectIdentifier>().map_err(|_| {
                    invalid(
                        &format!("{key}.policy"),
                        format!("{p:?}: expected a dotted OID, e.g. \"1.2.3.4.1\""),
                    )
                })?;
            }
            if t.timeout_ms < 100 || t.timeout_ms > 120_000 {
                return Err(invalid(&format!("{key}.timeout_ms"), "expected 100..=120000 milliseconds"));
            }
        }
        let ts = &self.timestamping;
        if ts.max_skew_s > 86_400 {
            return Err(invalid("timestamping.max_skew_s", "expected 0..=86400 seconds"));
        }
        if ts.retry_initial_ms < 10 || ts.retry_initial_ms > 3_600_000 {
            return Err(invalid("timestamping.retry_initial_ms", "expected 10..=3600000 milliseconds"));
        }
        if ts.retry_max_ms < ts.retry_initial_ms || ts.retry_max_ms > 3_600_000 {
            return Err(invalid(
                "timestamping.retry_max_ms",
                "expected retry_initial_ms..=3600000 milliseconds",
            ));
        }
        Ok(())
    }

    fn validate_principals(&self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        let mut identities = BTreeSet::new();
        for (i, p) in self.principals.iter().enumerate() {
            let key = format!("principal[{i}]");
            validate_name(&p.name).map_err(|problem| invalid(&format!("{key}.name"), problem))?;
            if is_reserved_name(&p.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("{:?} is reserved: the appliance's own records carry that producer name", p.name),
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("duplicate principal name {:?}", p.name),
                ));
            }
            if p.roles.is_empty() {
                return Err(invalid(
                    &format!("{key}.roles"),
                    "at least one of producer, auditor, admin, monitor",
                ));
            }
            if p.identities.is_empty() {
                return Err(invalid(&format!("{key}.identities"), "at least one identity"));
            }
            self.validate_issuers(&key, p)?;
            for id in &p.identities {
                let normalized = normalize_identity(id)
                    .map_err(|problem| invalid(&format!("{key}.identities"), problem))?;
                if !identities.insert(normalized) {
                    return Err(invalid(
                        &format!("{key}.identities"),
                        format!("identity {id:?} is mapped to more than one principal"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// A principal's `issuers`: each one of `server.client_ca_files`, and required when there are several.
    fn validate_issuers(&self, key: &str, p: &PrincipalConfig) -> Result<(), ConfigError> {
        let cas = &self.server.client_ca_files;
        if p.issuers.is_empty() && cas.len() > 1 {
            return Err(invalid(
                &format!("{key}.issuers"),
                format!(
                    "required because server.client_ca_files names {} CAs: add `issuers = [\"...\"]` with the CA \
                     file(s) that issue {:?}'s certificates (one of {}), so that no other CA can issue a \
                     certificate for it",
                    cas.len(),
                    p.name,
                    cas.iter().map(|c| format!("{:?}", c.display().to_string())).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for issuer in &p.issuers {
            if !cas.contains(issuer) {
                return Err(invalid(
                    &format!("{key}.issuers"),
                    format!(
                        "{:?} is not one of server.client_ca_files; name the CA file exactly as it is written there",
                        issuer.display().to_string()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn validate_tpm(t: Option<&TpmConfig>) -> Result<(), ConfigError> {
    if !cfg!(feature = "tpm") {
        return Err(invalid(
            "signer.backend",
            "the \"tpm\" backend is not compiled into this build (cargo feature `tpm`, on by default; the \
             verify-only build leaves it out); rebuild with default features or use \"pkcs11\"",
        ));
    }
    let t = t.ok_or_else(|| invalid("signer.tpm", "required when signer.backend = \"tpm\""))?;
    let kind = t.tcti.split(':').next().unwrap_or_default();
    if !TPM_TCTI_KINDS.contains(&kind) {
        return Err(invalid(
            "signer.tpm.tcti",
            format!(
                "{:?}: expected \"device:/dev/tpmrm0\", \"swtpm:host=127.0.0.1,port=2321\", \"mssim:…\" or \"tabrmd\"",
                t.tcti
            ),
        ));
    }
    if !(TPM_PERSISTENT_FIRST..=TPM_OWNER_PERSISTENT_LAST).contains(&t.handle.0) {
        return Err(invalid(
            "signer.tpm.handle",
            format!("{:#010x} is not an owner persistent handle; expected 0x81000000..=0x817fffff, e.g. 0x81010010", t.handle.0),
        ));
    }
    if let Some(index) = t.counter_index {
        if !(TPM_COUNTER_INDEX_FIRST..=TPM_COUNTER_INDEX_LAST).contains(&index.0) {
            return Err(invalid(
                "signer.tpm.counter_index",
                format!(
                    "{:#010x} is not an NV index for the head counter; expected 0x01000000..=0x01bfffff, e.g. 0x01800010",
                    index.0
                ),
            ));
        }
    }
    Ok(())
}

/// A PostgreSQL URL of the configuration: `postgres://` or `postgresql://`, a role, and no password (a password
/// in a configuration file ends up in backups and `ps`-like listings of the unit: it goes in `password_file`).
pub fn validate_postgres_url(url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| invalid("storage.url", "expected postgres://ROLE@HOST:PORT/DATABASE"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    match authority.rsplit_once('@') {
        None => Err(invalid("storage.url", "name the role: postgres://ROLE@HOST:PORT/DATABASE")),
        Some((user, _)) if user.contains(':') => Err(invalid(
            "storage.url",
            "holds a password: remove it from the URL and put it in storage.password_file",
        )),
        Some(("", _)) => Err(invalid("storage.url", "name the role: postgres://ROLE@HOST:PORT/DATABASE")),
        Some(_) => Ok(()),
    }
}

/// Checks a log origin: a non-empty single line of printable ASCII without spaces.
pub fn validate_origin(origin: &str) -> Result<(), ConfigError> {
    if origin.is_empty() || origin.len() > 255 || !origin.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "origin",
            "expected 1 to 255 printable ASCII characters without spaces, e.g. \"anchorlog.example.org/prod-1\"",
        ));
    }
    Ok(())
}

/// Whether a principal or source name is the appliance's own (`anchorlog`, any case): the verifier tells the
/// appliance's records from a producer's by that name, so no producer may carry it.
pub fn is_reserved_name(name: &str) -> bool {
    name.eq_ignore_ascii_case(anchorlog_core::record_types::APPLIANCE)
}

/// Checks a principal or source name: it is committed into every entry, so keep it to a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?}: expected 1 to 128 characters from A-Z a-z 0-9 . _ : @ -"))
    }
}

/// Normalizes a configured identity (`dns:`, `uri:`, `cn:`, `sha256:`) for comparison with a certificate's.
pub fn normalize_identity(id: &str) -> Result<String, String> {
    let (kind, value) = id
        .split_once(':')
        .ok_or_else(|| format!("{id:?}: expected dns:NAME, uri:URI, cn:NAME or sha256:HEX"))?;
    if value.is_empty() {
        return Err(format!("{id:?}: the value after {kind}: is empty"));
    }
    match kind {
        "dns" => Ok(format!("dns:{}", value.to_ascii_lowercase())),
        "uri" | "cn" => Ok(id.to_string()),
        "sha256" => {
            let hex_value = value.replace(':', "").to_ascii_lowercase();
            if hex_value.len() != 64 || !hex_value.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{id:?}: a sha256 fingerprint is 64 hex digits"));
            }
            Ok(format!("sha256:{hex_value}"))
        }
        other => Err(format!("{id:?}: unknown identity kind {other:?}; expected dns, uri, cn or sha256")),
    }
}

/// Reads a secret (PIN) from a file: trailing newline removed, never logged.
pub fn read_secret_file(key: &str, path: &Path) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    // A secret the group or others can read is refused before it is used: on a shared host they could copy it.
    check_private_file_mode(key, path)?;
    let secret_err =
        |reason: String| ConfigError::Secret { key: key.to_string(), path: path.to_path_buf(), reason };
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| secret_err(e.to_string()))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| secret_err("the file is not UTF-8".into()))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(secret_err("the file is empty".into()));
    }
    Ok(zeroize::Zeroizing::new(trimmed.to_string()))
}

/// Refuses a private-key or secret file that its group or others may read or write (any of the mode bits
/// 0o077): on a shared host they could copy the key. The error names the file, its mode and the fix.
pub fn check_private_file_mode(key: &str, path: &Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Secret {
        key: key.to_string(),
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // Only Unix has these bits; the appliance and the witness run on Linux, the verifier anywhere.
    #[cfg(unix)]
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
    #[cfg(not(unix))]
    let mode = {
        let _ = meta;
        0o600
    };
    if mode & 0o077 != 0 {
        return Err(ConfigError::InsecureMode { key: key.to_string(), path: path.to_path_buf(), mode });
    }
    Ok(())
}

fn default_console_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CONSOLE_DIR)
}
fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_true() -> bool {
    true
}
fn default_reload_poll_s() -> u64 {
    DEFAULT_RELOAD_POLL_S
}
fn default_shutdown_grace_s() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_S
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_events_per_request() -> usize {
    DEFAULT_MAX_EVENTS_PER_REQUEST
}
fn default_max_json_depth() -> usize {
    DEFAULT_MAX_JSON_DEPTH
}
fn default_max_query_limit() -> usize {
    DEFAULT_MAX_QUERY_LIMIT
}
fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_MS
}
fn default_header_read_timeout_ms() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_MS
}
fn default_body_read_timeout_ms() -> u64 {
    DEFAULT_BODY_READ_TIMEOUT_MS
}
fn default_stream_stall_timeout_ms() -> u64 {
    DEFAULT_STREAM_STALL_TIMEOUT_MS
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_connections_per_address() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
}
fn default_accept_backoff_initial_ms() -> u64 {
    DEFAULT_ACCEPT_BACKOFF_INITIAL_MS
}
fn default_accept_backoff_max_ms() -> u64 {
    DEFAULT_ACCEPT_BACKOFF_MAX_MS
}
fn default_denial_records_per_minute() -> u32 {
    DEFAULT_DENIAL_RECORDS_PER_MINUTE
}
fn default_denial_records_per_address_per_minute() -> u32 {
    DEFAULT_DENIAL_RECORDS_PER_ADDRESS_PER_MINUTE
}
fn default_writer_queue_depth() -> usize {
    DEFAULT_WRITER_QUEUE_DEPTH
}
fn default_retry_after_s() -> u64 {
    DEFAULT_RETRY_AFTER_S
}
fn default_seal_interval_ms() -> u64 {
    DEFAULT_SEAL_INTERVAL_MS
}
fn default_seal_max_events() -> u64 {
    DEFAULT_SEAL_MAX_EVENTS
}
fn default_heartbeat_interval_s() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_S
}
fn default_tsa_timeout_ms() -> u64 {
    DEFAULT_TSA_TIMEOUT_MS
}
fn default_timestamp_max_skew_s() -> u64 {
    DEFAULT_TIMESTAMP_MAX_SKEW_S
}
fn default_timestamp_retry_initial_ms() -> u64 {
    DEFAULT_TIMESTAMP_RETRY_INITIAL_MS
}
fn default_witness_timeout_ms() -> u64 {
    DEFAULT_WITNESS_TIMEOUT_MS
}
fn default_witnessing_retry_initial_ms() -> u64 {
    DEFAULT_WITNESSING_RETRY_INITIAL_MS
}
fn default_witnessing_retry_max_ms() -> u64 {
    DEFAULT_WITNESSING_RETRY_MAX_MS
}
fn default_timestamp_retry_max_ms() -> u64 {
    DEFAULT_TIMESTAMP_RETRY_MAX_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
origin = "anchorlog.test/unit"
[server]
cert_file = "s.pem"
key_file = "s.key"
client_ca_files = ["ca.pem"]
[storage]
database = "a.db"
[signer]
backend = "pkcs11"
[signer.pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "t"
key_label = "k"
pin_file = "pin"
[[principal]]
name = "idp"
roles = ["producer"]
identities = ["dns:idp.example.org"]
"#;

    #[test]
    fn principals_must_name_their_issuers_when_several_client_cas_are_configured() {
        let two =
            MINIMAL.replace(r#"client_ca_files = ["ca.pem"]"#, r#"client_ca_files = ["ca.pem", "ca2.pem"]"#);
        let err = Config::parse(&two).unwrap_err().to_string();
        assert!(err.contains("`principal[0].issuers`"), "{err}");
        assert!(err.contains("required because server.client_ca_files names 2 CAs"), "{err}");
        assert!(err.contains(r#"add `issuers = ["..."]`"#), "{err}");
        assert!(err.contains(r#"one of "ca.pem", "ca2.pem""#), "{err}");
        let bound = two.replace("identities = [", "issuers = [\"ca2.pem\"]\nidentities = [");
        let c = Config::parse(&bound).unwrap();
        assert_eq!(c.principals[0].issuers, vec![PathBuf::from("ca2.pem")]);
        let stray = two.replace("identities = [", "issuers = [\"other.pem\"]\nidentities = [");
        let err = Config::parse(&stray).unwrap_err().to_string();
        assert!(err.contains(r#""other.pem" is not one of server.client_ca_files"#), "{err}");
        // One CA: issuers optional; the EKU rule defaults to strict, polling to 5 s.
        let c = Config::parse(MINIMAL).unwrap();
        assert!(c.principals[0].issuers.is_empty());
        assert!(!c.server.allow_client_certs_without_eku);
        assert_eq!(c.server.reload_poll_s, 5);
        assert!(c.server.client_crl_files.is_empty());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen, DEFAULT_LISTEN);
        assert_eq!(c.limits.max_body_bytes, 1_048_576);
        assert_eq!(c.limits.max_events_per_request, 10_000);
        assert_eq!(c.limits.max_json_depth, 64);
        assert_eq!(c.sealing.seal_interval(), Duration::from_secs(1));
        assert_eq!(c.sealing.seal_max_events, 10_000);
        assert_eq!(c.sealing.heartbeat_interval(), Duration::from_secs(60));
        assert_eq!(c.principals[0].roles, vec![Role::Producer]);
        assert!(c.search.enabled);
    }

    #[test]
    fn search_can_be_turned_off() {
        let c = Config::parse(&format!("{MINIMAL}\n[search]\nenabled = false\n")).unwrap();
        assert!(!c.search.enabled);
        let err = Config::parse(&format!("{MINIMAL}\n[search]\nenable = false\n")).unwrap_err().to_string();
        assert!(err.contains("unknown field `enable`"), "{err}");
    }

    #[test]
    fn self_verification_and_alerts_have_defaults_and_named_errors() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!((c.self_verify.interval_s, c.self_verify.full_every_s), (3_600, 604_800));
        assert_eq!((c.alerting.outage_threshold_s, c.alerting.min_free_disk_percent), (300, 5));
        assert!(c.alerts.is_empty());
        let ok = format!(
            "{MINIMAL}\n[self_verify]\ninterval_s = 1\nfull_every_s = 1\n[[alert]]\nurl = \"http://127.0.0.1:9/h\"\n"
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!((c.alerts.len(), c.alerts[0].timeout_ms), (1, 5_000));
        for (extra, key) in [
            ("[self_verify]\ninterval_s = 0\n", "self_verify.interval_s"),
            ("[self_verify]\ninterval_s = 60\nfull_every_s = 30\n", "self_verify.full_every_s"),
            ("[alerting]\nmin_free_disk_percent = 101\n", "alerting.min_free_disk_percent"),
            ("[alerting]\noutage_threshold_s = 0\n", "alerting.outage_threshold_s"),
            ("[[alert]]\nurl = \"ftp://x/\"\n", "alert[0].url"),
            ("[[alert]]\nurl = \"https://alerts.example.org/h\"\n", "alert[0].ca_file"),
            ("[[alert]]\nurl = \"http://x/\"\ntimeout_ms = 10\n", "alert[0].timeout_ms"),
        ] {
            let err = Config::parse(&format!("{MINIMAL}\n{extra}")).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{extra}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_rejected_and_named() {
        let text = MINIMAL.replace("[storage]", "[storage]\ndatabse = \"x\"");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `databse`"), "{err}");
    }

    #[test]
    fn inline_pin_is_not_a_field() {
        let text = MINIMAL.replace("pin_file = \"pin\"", "pin_file = \"pin\"\npin = \"1234\"");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `pin`"), "{err}");
    }

    #[test]
    fn abuse_limits_have_defaults_and_named_errors() {
        let l = Config::parse(MINIMAL).unwrap().limits;
        assert_eq!(
            (l.handshake_timeout(), l.header_read_timeout(), l.body_read_timeout()),
            (Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(30))
        );
        assert_eq!((l.max_connections, l.max_connections_per_address), (4_096, 128));
        assert_eq!((l.accept_backoff_initial_ms, l.accept_backoff_max_ms), (10, 1_000));
        assert_eq!((l.denial_records_per_minute, l.denial_records_per_address_per_minute), (60, 10));
        assert_eq!(l.max_response_bytes(), 32 * 1024 * 1024);
        let big = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_body_bytes = 67108864\n")).unwrap().limits;
        assert_eq!(big.max_response_bytes(), 2 * 67_108_864 + 65_536, "one event always fits a page");
        for (extra, key) in [
            ("handshake_timeout_ms = 0", "limits.handshake_timeout_ms"),
            ("header_read_timeout_ms = 99", "limits.header_read_timeout_ms"),
            ("body_read_timeout_ms = 3600001", "limits.body_read_timeout_ms"),
            ("max_connections = 0", "limits.max_connections"),
            ("max_connections = 8\nmax_connections_per_address = 9", "limits.max_connections_per_address"),
            ("accept_backoff_initial_ms = 0", "limits.accept_backoff_initial_ms"),
            ("accept_backoff_initial_ms = 50\naccept_backoff_max_ms = 40", "limits.accept_backoff_max_ms"),
            ("denial_records_per_minute = 0", "limits.denial_records_per_minute"),
            (
                "denial_records_per_minute = 5\ndenial_records_per_address_per_minute = 6",
                "limits.denial_records_per_address_per_minute",
            ),
            ("max_response_bytes = 1000", "limits.max_response_bytes"),
            ("max_body_bytes = 67108864\nmax_response_bytes = 33554432", "limits.max_response_bytes"),
        ] {
            let err = Config::parse(&format!("{MINIMAL}\n[limits]\n{extra}\n")).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{extra}: {err}");
        }
    }

    #[test]
    fn out_of_range_limit_names_the_key() {
        let text = format!("{MINIMAL}\n[limits]\nmax_body_bytes = 0\n");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert_eq!(err, "invalid config: `limits.max_body_bytes`: expected 1..=67108864, got 0");
    }

    #[test]
    fn storage_checks_have_defaults_and_named_errors() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.storage.integrity_check, crate::store::IntegrityCheck::Quick);
        assert_eq!(c.storage.max_export_snapshot_s, 600);
        let full = MINIMAL.replace("database = \"a.db\"", "database = \"a.db\"\nintegrity_check = \"full\"");
        assert_eq!(Config::parse(&full).unwrap().storage.integrity_check, crate::store::IntegrityCheck::Full);
        let short = MINIMAL.replace("database = \"a.db\"", "database = \"a.db\"\nmax_export_snapshot_s = 5");
        let err = Config::parse(&short).unwrap_err().to_string();
        assert_eq!(err, "invalid config: `storage.max_export_snapshot_s`: expected 10..=86400 seconds");
        let bad =
            MINIMAL.replace("database = \"a.db\"", "database = \"a.db\"\nintegrity_check = \"sometimes\"");
        assert!(Config::parse(&bad).unwrap_err().to_string().contains("integrity_check"));
    }

    #[test]
    fn duplicate_identity_is_rejected() {
        let text = format!(
            "{MINIMAL}\n[[principal]]\nname = \"other\"\nroles = [\"auditor\"]\nidentities = [\"dns:IDP.example.org\"]\n"
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("`principal[1].identities`"), "{err}");
        assert!(err.contains("more than one principal"), "{err}");
    }

    #[test]
    fn sources_are_validated() {
        let ok = format!(
            "{}\n[[source]]\nname = \"kc\"\nformat = \"keycloak\"\nprincipals = [\"idp\"]\n\
             [[source]]\nname = \"okta\"\nformat = \"okta\"\nsecret_auth = \"authorization\"\nsecret_file = \"s\"\n",
            MINIMAL.replace("client_ca_files", "source_listen = \"127.0.0.1:8444\"\nclient_ca_files")
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.sources[0].format, crate::formats::Format::Keycloak);
        assert_eq!(c.sources[1].secret_auth, Some(SecretAuth::Authorization));
        let no_listener = ok.replace("source_listen = \"127.0.0.1:8444\"\n", "");
        let err = Config::parse(&no_listener).unwrap_err().to_string();
        assert!(err.contains("`source[1].secret_auth`") && err.contains("source_listen"), "{err}");
        let unknown = ok.replace("principals = [\"idp\"]", "principals = [\"nobody\"]");
        let err = Config::parse(&unknown).unwrap_err().to_string();
        assert!(err.contains("`source[0].principals`"), "{err}");
        let nobody = ok.replace("principals = [\"idp\"]\n", "");
        let err = Config::parse(&nobody).unwrap_err().to_string();
        assert!(err.contains("nobody can post"), "{err}");
        let dup = ok.replace("name = \"okta\"", "name = \"kc\"");
        assert!(Config::parse(&dup).unwrap_err().to_string().contains("`source[1].name`"));
        let bad_format = ok.replace("format = \"okta\"", "format = \"splunk\"");
        assert!(Config::parse(&bad_format).unwrap_err().to_string().contains("unknown variant `splunk`"));
        let inline = ok.replace("secret_file = \"s\"", "secret = \"hunter2\"");
        assert!(Config::parse(&inline).unwrap_err().to_string().contains("unknown field `secret`"));
    }

    #[test]
    fn the_syslog_listener_and_its_sources_are_validated() {
        let ok = format!(
            "{}\n[[source]]\nname = \"bastion\"\nformat = \"syslog\"\nprincipals = [\"idp\"]\n",
            MINIMAL.replace("client_ca_files", "syslog_listen = \"127.0.0.1:6514\"\nclient_ca_files")
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.server.syslog_listen.as_deref(), Some("127.0.0.1:6514"));
        assert_eq!(c.syslog, SyslogConfig::default());
        assert_eq!(
            (
                c.syslog.framing,
                c.syslog.max_message_bytes,
                c.syslog.max_in_flight_messages,
                c.syslog.idle_timeout_s
            ),
            (SyslogFraming::OctetCounted, 65_536, 10_000, 600)
        );
        let lf = format!("{ok}\n[syslog]\nframing = \"lf\"\n");
        assert_eq!(Config::parse(&lf).unwrap().syslog.framing, SyslogFraming::Lf);
        let cases = [
            (ok.replace("127.0.0.1:6514", "localhost"), "`server.syslog_listen`"),
            (format!("{ok}\n[syslog]\nframing = \"crlf\"\n"), "unknown variant `crlf`"),
            (format!("{ok}\n[syslog]\nmax_message_bytes = 1024\n"), "`syslog.max_message_bytes`"),
            (format!("{ok}\n[syslog]\nmax_in_flight_messages = 0\n"), "`syslog.max_in_flight_messages`"),
            (format!("{ok}\n[syslog]\nidle_timeout_s = 0\n"), "`syslog.idle_timeout_s`"),
            (format!("{ok}\n[syslog]\nmax_in_flight_bytes = 4096\n"), "`syslog.max_in_flight_bytes`"),
            (
                format!("{ok}\n[[source]]\nname = \"other\"\nformat = \"syslog\"\nprincipals = [\"idp\"]\n"),
                "already a principal of syslog source \"bastion\"",
            ),
            (
                ok.replace("principals = [\"idp\"]", "secret_auth = \"bearer\"\nsecret_file = \"s\""),
                "`source[0].secret_auth`",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn identities_are_normalized() {
        assert_eq!(normalize_identity("dns:Foo.Example").unwrap(), "dns:foo.example");
        assert_eq!(
            normalize_identity(&format!("sha256:{}", "AB".repeat(32))).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(normalize_identity("email:a@b").is_err());
        assert!(normalize_identity("cn:").is_err());
    }

    #[test]
    fn tsa_entries_get_defaults_and_errors_name_the_key() {
        let c = Config::parse(MINIMAL).unwrap();
        assert!(c.tsas.is_empty(), "no [[tsa]]: timestamping off");
        let two = format!(
            "{MINIMAL}\n[[tsa]]\nurl = \"http://127.0.0.1:3180/\"\nca_file = \"a.pem\"\n\
             [[tsa]]\nurl = \"http://tsa2.example/tsa\"\nca_file = \"b.pem\"\npolicy = \"1.2.3\"\ntimeout_ms = 500\n"
        );
        let c = Config::parse(&two).unwrap();
        assert_eq!(c.tsas.len(), 2);
        assert_eq!(c.tsas[0].timeout(), Duration::from_secs(10));
        assert_eq!(c.tsas[1].policy.as_deref(), Some("1.2.3"));
        assert_eq!(c.timestamping.max_skew_s, 300);
        assert_eq!((c.timestamping.retry_initial_ms, c.timestamping.retry_max_ms), (1_000, 60_000));
        let err = Config::parse(&two.replace("http://tsa2.example/tsa", "https://tsa2.example/"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid config: `tsa[1].url`: \"https://tsa2.example/\""), "{err}");
        let err = Config::parse(&two.replace("\"1.2.3\"", "\"not-an-oid\"")).unwrap_err().to_string();
        assert!(err.starts_with("invalid config: `tsa[1].policy`"), "{err}");
        let err = Config::parse(&two.replace("timeout_ms = 500", "timeout_ms = 5")).unwrap_err().to_string();
        assert_eq!(err, "invalid config: `tsa[1].timeout_ms`: expected 100..=120000 milliseconds");
        let err =
            Config::parse(&format!("{two}[timestamping]\nretry_initial_ms = 5000\nretry_max_ms = 10\n"))
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("invalid config: `timestamping.retry_max_ms`"), "{err}");
        let err =
            Config::parse(&format!("{two}[[tsa]]\nurl = \"http://x/\"\nca_file = \"c\"\ntimeout = 1\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field `timeout`"), "{err}");
    }

    /// The cosignature/v1 vkey of FORMAT.md §16.4 (seed 0x42×32, name witness.test/w1).
    const W1: &str = "witness.test/w1+786d922a+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS";

    #[test]
    fn witness_entries_get_defaults_and_errors_name_the_key() {
        let c = Config::parse(MINIMAL).unwrap();
        assert!(c.witnesses.is_empty(), "no [[witness]]: witnessing off");
        assert_eq!(c.witness_quorum(), 0);
        let one =
            format!("{MINIMAL}\n[[witness]]\nurl = \"http://127.0.0.1:7380/witness\"\nvkey = \"{W1}\"\n");
        let c = Config::parse(&one).unwrap();
        assert_eq!(c.witnesses[0].label(), "witness.test/w1");
        assert_eq!(c.witnesses[0].timeout(), Duration::from_secs(10));
        assert_eq!(c.witness_quorum(), 1, "default: every configured witness");
        assert_eq!((c.witnessing.retry_initial_ms, c.witnessing.retry_max_ms), (1_000, 60_000));
        let named = one.replace("url =", "name = \"w1\"\nurl =");
        assert_eq!(Config::parse(&named).unwrap().witnesses[0].label(), "w1");
        let cases = [
            (one.replace("http://127.0.0.1:7380/witness", "http://h/witness/"), "`witness[0].url`"),
            (one.replace("http://127.0.0.1:7380/witness", "ftp://h/w"), "`witness[0].url`"),
            (one.replace("http://127.0.0.1:7380/witness", "http://"), "`witness[0].url`"),
            (one.replace("786d922a", "786d922b"), "`witness[0].vkey`: verifier key"),
            (
                one.replace(W1, "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"),
                "`witness[0].vkey`: a witness's vkey is a cosignature/v1 key (type 0x04",
            ),
            (format!("{one}[[witness]]\nurl = \"http://b/w\"\nvkey = \"{W1}\"\n"), "configured twice"),
            (format!("{one}[witnessing]\nquorum = 2\n"), "`witnessing.quorum`: expected 1..=1"),
            (format!("{one}[witnessing]\nquorum = 0\n"), "`witnessing.quorum`: expected 1..=1"),
            (format!("{MINIMAL}[witnessing]\nquorum = 1\n"), "`witnessing.quorum`: no [[witness]]"),
            (
                one.replace("url =", "ca_file = \"ca.pem\"\nurl ="),
                "`witness[0].ca_file`: only used with an https:// url",
            ),
            (one.replace("url =", "timeout_ms = 5\nurl ="), "`witness[0].timeout_ms`"),
            (one.replace("url =", "name = \"has space\"\nurl ="), "`witness[0].name`"),
        ];
        for (text, expected) in cases {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let https = one.replace("http://127.0.0.1:7380/witness", "https://w.example/witness");
        assert!(Config::parse(&https.replace("url =", "ca_file = \"ca.pem\"\nurl =")).is_ok());
    }

    #[test]
    fn bad_origin_is_rejected() {
        let text = MINIMAL.replace("anchorlog.test/unit", "has space");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("invalid config: `origin`"), "{err}");
    }

    fn tpm_config(handle: &str) -> String {
        let head = MINIMAL.split("[signer]").next().unwrap_or_default();
        format!(
            "{head}[signer]\nbackend = \"tpm\"\n[signer.tpm]\ntcti = \"device:/dev/tpmrm0\"\nhandle = {handle}\n"
        )
    }

    #[cfg(feature = "tpm")]
    #[test]
    fn tpm_handle_accepts_integer_and_hex_string() {
        for h in ["0x81010010", "2164326416", "\"0x81010010\"", "\"81010010\""] {
            let c = Config::parse(&tpm_config(h)).unwrap();
            let t = c.signer.tpm.unwrap();
            assert_eq!(t.handle, TpmHandle(0x8101_0010), "{h}");
            assert_eq!(t.tcti, "device:/dev/tpmrm0");
            assert_eq!(t.auth_file, None);
        }
        let err = Config::parse(&tpm_config("0x80000001")).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid config: `signer.tpm.handle`: 0x80000001 is not an owner persistent handle; \
             expected 0x81000000..=0x817fffff, e.g. 0x81010010"
        );
        let err = Config::parse(&tpm_config("\"zz\"")).unwrap_err().to_string();
        assert!(err.contains("a persistent handle such as 0x81010010"), "{err}");
        let err = Config::parse(&tpm_config("1").replace("device:", "tcp:")).unwrap_err().to_string();
        assert!(err.starts_with("invalid config: `signer.tpm.tcti`"), "{err}");
        let text = tpm_config("0x81010010").replace("[signer.tpm]", "[signer.nottpm]");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `nottpm`"), "{err}");
    }

    #[cfg(feature = "tpm")]
    #[test]
    fn tpm_counter_index_is_an_nv_index() {
        let c = Config::parse(&tpm_config("0x81010010")).unwrap();
        assert_eq!(c.signer.tpm.unwrap().counter_index, None);
        let with =
            |index: &str| Config::parse(&format!("{}counter_index = {index}\n", tpm_config("0x81010010")));
        assert_eq!(
            with("\"0x01800010\"").unwrap().signer.tpm.unwrap().counter_index,
            Some(TpmHandle(0x0180_0010))
        );
        assert_eq!(
            with("0x01000000").unwrap().signer.tpm.unwrap().counter_index,
            Some(TpmHandle(0x0100_0000))
        );
        for bad in ["\"0x01c0000a\"", "0x81010011", "0x00ffffff"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid config: `signer.tpm.counter_index`: 0x"), "{bad}: {err}");
            assert!(err.ends_with("expected 0x01000000..=0x01bfffff, e.g. 0x01800010"), "{err}");
        }
    }

    #[cfg(not(feature = "tpm"))]
    #[test]
    fn tpm_backend_is_refused_without_the_feature() {
        let err = Config::parse(&tpm_config("0x81010010")).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid config: `signer.backend`: the \"tpm\" backend is not compiled"),
            "{err}"
        );
    }

    #[test]
    fn secret_file_is_trimmed_and_errors_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "s3cret\n").unwrap();
        // Readable by others: refused, naming the file, its mode and the fix, never the content.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = read_secret_file("signer.pkcs11.pin_file", &p).unwrap_err().to_string();
            assert!(
                err.contains("mode 0644") && err.contains("chmod 600") && !err.contains("s3cret"),
                "{err}"
            );
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(read_secret_file("signer.pkcs11.pin_file", &p).unwrap().as_str(), "s3cret");
        std::fs::write(&p, "\n").unwrap();
        let err = read_secret_file("signer.pkcs11.pin_file", &p).unwrap_err().to_string();
        assert!(err.contains("the file is empty"));
    }

    #[test]
    fn postgres_storage_needs_a_url_without_a_password_and_no_sqlite_file() {
        let pg = |storage: &str, extra: &str| {
            let text =
                MINIMAL.replace("[storage]\ndatabase = \"a.db\"\n", &format!("[storage]\n{storage}\n"));
            Config::parse(&format!("{text}\n[search]\nenabled = false\n{extra}"))
        };
        let c =
            pg("backend = \"postgres\"\nurl = \"postgres://app@db1:5432/log\"\npassword_file = \"pw\"", "")
                .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        assert_eq!(c.storage.lease_ttl_s, 10);
        assert_eq!(c.storage.lease_poll_ms, 1_000);
        let err = |storage: &str| pg(storage, "").unwrap_err().to_string();
        assert_eq!(
            err("backend = \"postgres\""),
            "invalid config: `storage.url`: required with backend = \"postgres\": postgres://ROLE@HOST:PORT/DATABASE"
        );
        assert_eq!(
            err("backend = \"postgres\"\nurl = \"postgres://app:secret@db1/log\""),
            "invalid config: `storage.url`: holds a password: remove it from the URL and put it in \
             storage.password_file"
        );
        assert_eq!(
            err("backend = \"postgres\"\nurl = \"postgres://db1/log\""),
            "invalid config: `storage.url`: name the role: postgres://ROLE@HOST:PORT/DATABASE"
        );
        assert!(err("backend = \"postgres\"\nurl = \"postgres://app@db1/log\"\ndatabase = \"a.db\"")
            .starts_with("invalid config: `storage.database`: a SQLite file is not used"));
        assert_eq!(
            err("backend = \"postgres\"\nurl = \"postgres://app@db1/log\"\nlease_ttl_s = 1"),
            "invalid config: `storage.lease_ttl_s`: expected 2..=300 seconds"
        );
        let search_on = Config::parse(&MINIMAL.replace(
            "[storage]\ndatabase = \"a.db\"\n",
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://app@db1/log\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(search_on.starts_with(
            "invalid config: `search.enabled`: the search index is not available on PostgreSQL"
        ));
        let sqlite_with_url = Config::parse(
            &MINIMAL.replace("database = \"a.db\"", "database = \"a.db\"\nurl = \"postgres://a@b/c\""),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            sqlite_with_url,
            "invalid config: `storage.url`: only for backend = \"postgres\"; the backend is sqlite"
        );
    }
}
