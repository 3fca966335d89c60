//! `anchorlog serve`: wires storage, signer, writer, sealer and the mTLS listener, and shuts down in order.
//!
//! Start: open the signer (its own thread) → open/create the database → reconcile (verify every event and head
//! after the last self-verified head — all of them when the log has no usable `anchorlog.self_verify` record —
//! against the signer's public key, and that the last head reaches the TPM's monotonic counter; refuse to serve
//! on any mismatch) → start the writer and the sealer → accept. The self-verification thread re-verifies the
//! log in the background (the whole of it right away when the start resumed from a point; `selfverify`).
//! The timestamper runs beside the sealer when `[[tsa]]` is configured, the cosigner when `[[witness]]` is.
//! Then the start is recorded in the log (`anchorlog.start`: version, configuration digest, signer, how the
//! previous run ended) before the first request is accepted. While it runs, the sealer and the timestamper
//! record the start and end of their outages (`anchorlog.outage`), and refused handshakes and 401/403 answers
//! are recorded (`anchorlog.access_denied`).
//! Stop (SIGTERM/SIGINT): stop accepting → let in-flight requests finish (bounded) → close outage recording and
//! record the stop (`anchorlog.stop`, the run's last event) → seal everything that was acknowledged → one
//! bounded timestamping pass and one bounded witnessing pass → stop the writer → exit 0. The cosigner records
//! witness refusals (`anchorlog.witness_refused`) and witness outages.

use crate::api::denials::{Denial, DenialRecorder, RemoteAddr};
use crate::api::sources::SourceRegistry;
use crate::api::{self, AppState};
use crate::config::{read_secret_file, Config, SignerBackend};
use crate::ledger::appender::{AppenderHandle, WriterObserver};
use crate::ledger::cosigner::{Cosigner, CosignerError, CosignerSettings};
use crate::ledger::indexer::IndexerHandle;
use crate::ledger::internal::{self, PreviousRun};
use crate::ledger::outage::LifecycleGate;
use crate::ledger::sealer::{ChainState, Sealer, SealerSettings};
use crate::ledger::timestamper::{Timestamper, TimestamperError, TimestamperSettings};
use crate::metrics::Metrics;
use crate::signer::{HeadSigner, SignerError, SignerHandle};
use crate::store::reads::LogReads;
use crate::store::{self, ReadPool};
use crate::tls::reload::{Reloader, TrustHandle};
use crate::tls::trust::ClientTrust;
use crate::tls::{self};
use anchorlog_core::verify;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Most concurrent connections of the witness's listener; further ones wait in the accept queue (the appliance's
/// listeners take `limits.max_connections`).
pub const MAX_CONNECTIONS: usize = crate::config::DEFAULT_MAX_CONNECTIONS;
/// Time a client of the witness has to finish the TLS handshake (the appliance: `limits.handshake_timeout_ms`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(crate::config::DEFAULT_HANDSHAKE_TIMEOUT_MS);
/// Time a client of the witness has to send request headers (the appliance: `limits.header_read_timeout_ms`).
pub const HEADER_READ_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_HEADER_READ_TIMEOUT_MS);

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Configuration or secret file problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The signer could not be opened.
    #[error("cannot open the signer: {0}")]
    Signer(#[from] SignerError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The stored log does not verify: refuse to serve.
    #[error(
        "refusing to start: the database does not verify (the signer's key is {key_id}): {failure}. \
         The log may have been tampered with or the wrong key/database is configured. Do not write to it; \
         run `anchorlog verify --db {db} --key <the log's first signer.pem>` and investigate before restarting"
    )]
    Reconciliation {
        /// What was wrong.
        failure: verify::Failure,
        /// The signer's key id.
        key_id: String,
        /// Database path.
        db: String,
    },
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The writer could not start.
    #[error("cannot start the writer: {0}")]
    Writer(#[from] crate::ledger::appender::AppendError),
    /// A TSA CA file is missing or unusable.
    #[error(transparent)]
    Timestamping(#[from] TimestamperError),
    /// A file the configuration names cannot be used (key, CA, secret, its mode).
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    /// A witness entry is unusable (its CA file).
    #[error(transparent)]
    Witnessing(#[from] CosignerError),
    /// The start could not be recorded in the log (PCI DSS 10.2.1.6): the appliance does not serve unrecorded.
    #[error("cannot record this start in the log: {0}; check the disk and the database, then restart")]
    StartRecord(String),
    /// The configured key, the log's key and a pending key rotation do not fit together.
    #[error(transparent)]
    Keys(#[from] crate::rotation::RotationError),
    /// A pending key rotation could not be recorded; nothing of it was written.
    #[error(
        "cannot record the pending key rotation: {0}. Nothing of it was written to the log; fix the cause and start \
         again, or delete the pending rotation file to cancel it"
    )]
    Rotation(String),
    /// A write or sync of the database failed (EIO): the appliance stopped rather than go on with a file in an
    /// unknown state (docs/RELIABILITY.md).
    #[error(
        "the database's storage failed a write or sync ({0}); the appliance stopped rather than go on with a file in \
         an unknown state. Every acknowledged event was synced before its answer. Check the disk (dmesg, SMART), \
         then start again: the start-up check and SQLite's recovery read what is on disk"
    )]
    StorageFailed(String),
    /// Internal task failure.
    #[error("internal error: {0}")]
    Internal(String),
    /// A PostgreSQL log cannot be served (configuration, connection, schema).
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Postgres(#[from] crate::pg_serve::PgServeError),
}

/// The writer's fatal I/O error, if it stopped on one.
fn app_state_fatal(fatal: &watch::Receiver<Option<String>>) -> Option<String> {
    fatal.borrow().clone()
}

/// Opens the configured signer on its own thread.
pub fn open_signer(config: &Config) -> Result<SignerHandle, ServeError> {
    match config.signer.backend {
        SignerBackend::Pkcs11 => open_pkcs11(config),
        SignerBackend::Tpm => open_tpm(config),
    }
}

#[cfg(feature = "tpm")]
fn open_tpm(config: &Config) -> Result<SignerHandle, ServeError> {
    use crate::signer::tpm::{settings_from_config, TpmSigner};
    let t = config.signer.tpm.as_ref().ok_or_else(|| ServeError::Internal("signer.tpm missing".into()))?;
    let (settings, auth) = settings_from_config(t).map_err(SignerError::from)?;
    Ok(SignerHandle::spawn_supervised(
        move || {
            let signer = TpmSigner::open(&settings, auth.as_ref())?;
            Ok(Box::new(signer) as Box<dyn HeadSigner>)
        },
        config.signer.supervision(),
    )?)
}

#[cfg(not(feature = "tpm"))]
fn open_tpm(_config: &Config) -> Result<SignerHandle, ServeError> {
    Err(SignerError::Unavailable("tpm").into())
}

#[cfg(feature = "pkcs11")]
fn open_pkcs11(config: &Config) -> Result<SignerHandle, ServeError> {
    use crate::signer::pkcs11::{Pkcs11Opener, Pkcs11Settings};
    let p =
        config.signer.pkcs11.clone().ok_or_else(|| ServeError::Internal("signer.pkcs11 missing".into()))?;
    // Checked here first so that a bad PIN file fails the start with the configuration error.
    read_secret_file("signer.pkcs11.pin_file", &p.pin_file)?;
    let settings = Pkcs11Settings { module: p.module, token_label: p.token_label, key_label: p.key_label };
    let opener = Pkcs11Opener::new(settings, p.pin_file);
    Ok(SignerHandle::spawn_supervised(
        move || Ok(Box::new(opener.open()?) as Box<dyn HeadSigner>),
        config.signer.supervision(),
    )?)
}

#[cfg(not(feature = "pkcs11"))]
fn open_pkcs11(_config: &Config) -> Result<SignerHandle, ServeError> {
    Err(SignerError::Unavailable("pkcs11").into())
}

/// Where the log is, as `start` left it for `run`.
enum Storage {
    /// The embedded SQLite file, reconciled and opened for writing.
    Sqlite(SqliteStart),
    /// A PostgreSQL log shared with other nodes (docs/HA.md): checked, not yet written.
    #[cfg(feature = "postgres")]
    Postgres(crate::pg_serve::PgStorage),
}

/// What the start of a SQLite log leaves for `run`.
struct SqliteStart {
    writer_conn: rusqlite::Connection,
    chain: ChainState,
    previous_run: PreviousRun,
    // Self-verification (issue 12): where the background verifier continues, from which first key.
    resume: crate::selfverify::Resume,
    first_key: anchorlog_core::key::PublicKey,
    /// The seq of this run's start record when the start already wrote it (with a key rotation).
    recorded_start: Option<u64>,
}

/// A started service; `run` drives it to completion.
pub struct Service {
    config: Config,
    signer: SignerHandle,
    storage: Storage,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    timestamping: Option<TimestamperSettings>,
    witnessing: Option<CosignerSettings>,
    sources: Arc<SourceRegistry>,
    source_listener: Option<TcpListener>,
    syslog_listener: Option<TcpListener>,
    tls: ClientTrust,
    source_tls: Option<Arc<rustls::ServerConfig>>,
    alert_targets: Vec<crate::alerts::AlertTarget>,
    /// SIGHUP (reload), handled from before the listeners are announced: its default action would kill the process.
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Service {
    /// Opens the signer and the database, reconciles, and binds the listeners. Fails before binding
    /// anything if the stored log does not verify against the signer's key.
    pub async fn start(config: Config) -> Result<Service, ServeError> {
        let signer = open_signer(&config)?;
        Self::start_with_signer(config, signer).await
    }

    /// Like [`Service::start`] with an already opened signer (tests wrap the real signer in fault-injection
    /// doubles this way).
    pub async fn start_with_signer(config: Config, signer: SignerHandle) -> Result<Service, ServeError> {
        // Every file the configuration names is loaded and checked before the first write (the database is
        // opened for writing only after this): a bad key fails the start without touching the log.
        let loaded = crate::preflight::load(&config)?;
        let hangup = crate::tls::reload::hangup_signal();
        let timestamping = loaded.timestamping;
        if timestamping.is_none() {
            tracing::warn!("timestamping is off: no [[tsa]] is configured, heads get no RFC 3161 token");
        }
        let witnessing = CosignerSettings::from_config(&config)?;
        if witnessing.is_none() {
            tracing::warn!("witnessing is off: no [[witness]] is configured, heads get no cosignatures");
        }
        tracing::info!(signer = signer.description(), key_id = %signer.public_key().key_id, "signer ready");
        // Exports name the key of every head; keep its public half beside the log.
        let pem = crate::bundle::export::public_key_pem(signer.public_key())
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let storage = match config.storage.backend {
            crate::config::StorageBackend::Sqlite => {
                Storage::Sqlite(start_sqlite(&config, &signer, &pem).await?)
            }
            #[cfg(feature = "postgres")]
            crate::config::StorageBackend::Postgres => Storage::Postgres(
                crate::pg_serve::prepare(&config, signer.public_key(), signer.description(), pem).await?,
            ),
            #[cfg(not(feature = "postgres"))]
            crate::config::StorageBackend::Postgres => return Err(ServeError::Internal(
                "storage.backend = \"postgres\", but this build has no PostgreSQL support (cargo feature \
                     `postgres`)"
                    .into(),
            )),
        };
        let sources = Arc::new(loaded.sources);
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: config.server.listen.clone(), source })?;
        let health_listener = match &config.server.health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?,
            ),
            None => None,
        };
        let source_listener = match &config.server.source_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?,
            ),
            None => None,
        };
        let syslog_listener = match &config.server.syslog_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?,
            ),
            None => None,
        };
        Ok(Service {
            config,
            signer,
            storage,
            listener,
            health_listener,
            sources,
            source_listener,
            syslog_listener,
            tls: loaded.tls,
            source_tls: loaded.source_tls,
            timestamping,
            witnessing,
            alert_targets: loaded.alerts,
            hangup,
        })
    }

    /// The bound address of the plain health listener (`server.health_listen`), if configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound address of the source listener (secret-authenticated sources), if configured.
    pub fn source_addr(&self) -> Option<SocketAddr> {
        self.source_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound address of the syslog listener (`server.syslog_listen`), if configured.
    pub fn syslog_addr(&self) -> Option<SocketAddr> {
        self.syslog_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound address of the mTLS listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then drains, seals and stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Service {
            config,
            signer,
            storage,
            listener,
            health_listener,
            sources,
            source_listener,
            syslog_listener,
            tls: tls_config,
            source_tls,
            timestamping,
            witnessing,
            alert_targets,
            hangup,
        } = self;
        #[cfg(feature = "fault-injection")]
        {
            let armed = crate::fault::armed();
            if !armed.is_empty() {
                tracing::warn!(?armed, "test build: fault doubles armed (cargo feature fault-injection)");
            }
        }
        let db = config.storage.database.clone();
        let metrics = Arc::new(Metrics::new());
        let _ = metrics.signer.set(signer.health());
        let commit_sizes = metrics.instruments.commit_events.clone();
        let replays = metrics.instruments.commit_replays.clone();
        let slow_writer = writer_fault_delay();
        let observer = WriterObserver {
            on_commit: Box::new(move |events| {
                commit_sizes.observe(events as f64);
                if let Some(delay) = slow_writer {
                    std::thread::sleep(delay);
                }
            }),
            on_replay: Box::new(move || replays.inc()),
        };
        let alerts = crate::alerts::Alerts::start(&config.origin, alert_targets);
        // Outage records share the log's end with the stop record, which must come last: the gate orders them.
        let gate = LifecycleGate::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let self_verify = Arc::new(crate::selfverify::SelfVerifyState::default());
        let run = match storage {
            Storage::Sqlite(start) => {
                // `[search] enabled = false`: no indexer; a later start with search on re-derives what it missed.
                let (indexer, indexer_thread) = match config.search.enabled {
                    true => {
                        let (handle, thread) = IndexerHandle::start(&db)?;
                        (Some(handle), Some(thread))
                    }
                    false => (None, None),
                };
                let search_lag = indexer.as_ref().map(IndexerHandle::lag);
                let (appender, writer_thread) =
                    AppenderHandle::start_observed(start.writer_conn, indexer, observer)?;
                let start_seq =
                    record_start(&config, &signer, &appender, start.previous_run, start.recorded_start)
                        .await?;
                let reads = LogReads::Sqlite(Arc::new(ReadPool::new(&db)));
                let actors = WriterActors::context(
                    &config,
                    &signer,
                    &appender,
                    &reads,
                    &metrics,
                    &gate,
                    &alerts,
                    (timestamping, witnessing),
                )
                .spawn(start.chain, stop_rx);
                // Self-verification: a low-priority thread re-verifies the log; its state feeds /readyz and /metrics.
                let verifier = crate::selfverify::SelfVerifier::new(
                    crate::selfverify::SelfVerifySettings {
                        db: db.clone(),
                        key: start.first_key,
                        origin: config.origin.clone(),
                        interval: Duration::from_secs(config.self_verify.interval_s),
                        full_every: Duration::from_secs(config.self_verify.full_every_s),
                    },
                    self_verify.clone(),
                    alerts.clone(),
                    config.server.record_appliance_events.then(|| (appender.clone(), gate.clone())),
                    start.resume,
                )
                .spawn()
                .map_err(|e| {
                    ServeError::Internal(format!("cannot start the self-verification thread: {e}"))
                })?;
                if config.alerting.min_free_disk_percent > 0 {
                    tokio::spawn(crate::alerts::watch_disk(
                        alerts.clone(),
                        db.clone(),
                        config.alerting.min_free_disk_percent,
                        Duration::from_secs(config.alerting.disk_check_interval_s),
                        stop_tx.subscribe(),
                    ));
                }
                Run::Sqlite {
                    appender,
                    reads,
                    search_lag,
                    writer_thread,
                    indexer_thread,
                    start_seq,
                    actors,
                    verifier,
                }
            }
            #[cfg(feature = "postgres")]
            Storage::Postgres(pg) => {
                let own_key_id = signer.public_key().key_id.clone();
                let (appender, role, node_task) = crate::ledger::pg_node::start(pg.node, observer);
                let reads = LogReads::Postgres(pg.reads.clone());
                let context = WriterActors::context(
                    &config,
                    &signer,
                    &appender,
                    &reads,
                    &metrics,
                    &gate,
                    &alerts,
                    (timestamping, witnessing),
                );
                // Sealing, time-stamping and cosigning run while this node is the writer (src/pg_serve.rs).
                let leader = tokio::spawn(crate::pg_serve::lead_while_writer(
                    role.clone(),
                    pg.reads,
                    own_key_id,
                    stop_rx,
                    move |chain, stop| {
                        let actors = context.spawn(chain, stop);
                        async move {
                            if let Err(e) = actors.finish().await {
                                tracing::error!(error = %e, "the writer's actors failed");
                            }
                        }
                    },
                ));
                Run::Postgres { appender, reads, role, node_task, leader }
            }
        };
        let (appender, reads, search_lag) = run.shared();
        // Wall-clock jumps are logged and recorded (issue 14.7).
        tokio::spawn(crate::ledger::clockwatch::run(
            config.server.record_appliance_events.then(|| (appender.clone(), gate.clone())),
            stop_tx.subscribe(),
        ));
        let search = Arc::new(ReadPool::new_search(&store::search_path(&db)));
        let denials = Arc::new(DenialRecorder::new(
            appender.clone(),
            metrics.clone(),
            config.server.record_appliance_events,
            &config.limits,
        ));
        // One shutdown signal stops both listeners and ends the event streams.
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let app_state = Arc::new(AppState {
            appender,
            reads,
            limits: config.limits.clone(),
            metrics,
            public_key: signer.public_key().clone(),
            origin: config.origin.clone(),
            sources,
            search,
            search_enabled: config.search.enabled,
            search_lag,
            denials,
            readiness: crate::readiness::Readiness {
                seal_interval: config.sealing.seal_interval(),
                limits: config.readiness.clone(),
                min_free_disk_percent: config.alerting.min_free_disk_percent,
                database_dir: db
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| ".".into(), std::path::Path::to_path_buf),
            },
            self_verify,
            alerts,
            max_export_snapshot: Duration::from_secs(config.storage.max_export_snapshot_s),
            queue: api::queue::WriterQueue::new(
                config.limits.writer_queue_depth,
                config.limits.retry_after_s,
            )
            .with_fault_from_env(),
            stopping: shutdown_rx.clone(),
            streams: api::stream::StreamStats::default(),
            console_dir: config.server.console_dir.clone(),
            standby: run.standby(),
        });
        // Client CAs, CRLs, principals and source secrets are reloaded on SIGHUP and when their files change.
        let trust = TrustHandle::new(tls_config);
        let reloader = Reloader::new(
            config.clone(),
            trust.clone(),
            app_state.sources.clone(),
            app_state.metrics.clone(),
        );
        tokio::spawn(reloader.run(hangup, stop_tx.subscribe()));
        let router = api::router(app_state.clone());
        // Listeners bound (in `start`), the start on record, the actors running: ready for systemd.
        let committed = app_state.appender.committed();
        let committed_now = move || *committed.borrow();
        crate::systemd::ready(&crate::systemd::status_line(&app_state.metrics, committed_now()));
        tokio::spawn(crate::systemd::watchdog_and_status(
            app_state.metrics.clone(),
            committed_now,
            stop_tx.subscribe(),
        ));
        let listener_gate = |kind| {
            let limits = crate::listen::ListenerLimits::new(kind, &config.limits);
            crate::listen::Gate::new(limits, app_state.metrics.clone())
        };
        if let Some(h) = health_listener {
            tokio::spawn(serve_health(
                h,
                api::health_router(app_state.clone()),
                stop_tx.subscribe(),
                listener_gate(crate::listen::ListenerKind::Health),
                app_state.metrics.clone(),
            ));
        }
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        // Refused access beyond the record budgets is summed up once a minute (`api::denials`), until the listeners
        // stop; the last window's summary is written after them, before the stop record.
        let summaries = tokio::spawn(app_state.denials.clone().summarize(stopped(shutdown_rx.clone())));
        let source_listener = source_listener.zip(source_tls);
        let source_loop = async {
            if let Some((l, tls)) = source_listener {
                let router = api::source_router(app_state.clone());
                let fixed = TrustHandle::new(ClientTrust::without_client_auth(tls));
                accept_loop(
                    l,
                    fixed,
                    router,
                    stopped(shutdown_rx.clone()),
                    &config,
                    app_state.denials.clone(),
                    listener_gate(crate::listen::ListenerKind::Source),
                )
                .await;
            }
        };
        let mut fatal = app_state.appender.fatal();
        let syslog_trust = trust.clone();
        let syslog_loop = async {
            if let Some(l) = syslog_listener {
                let ctx = Arc::new(crate::syslog::SyslogContext {
                    appender: app_state.appender.clone(),
                    sources: app_state.sources.clone(),
                    metrics: app_state.metrics.clone(),
                    denials: app_state.denials.clone(),
                    config: config.syslog.clone(),
                    search_enabled: config.search.enabled,
                    handshake_timeout: config.limits.handshake_timeout(),
                });
                crate::syslog::serve(
                    l,
                    syslog_trust.clone(),
                    ctx,
                    stopped(shutdown_rx.clone()),
                    listener_gate(crate::listen::ListenerKind::Syslog),
                    Duration::from_secs(config.server.shutdown_grace_s),
                )
                .await;
            }
        };
        let signal = async {
            tokio::select! {
                _ = shutdown => {}
                _ = fatal.wait_for(|f| f.is_some()) => {
                    tracing::error!("stopping: the database's storage failed a write or sync (see above); \
                        every answer already given stands, nothing more is acknowledged");
                }
            }
            crate::systemd::stopping();
            let _ = shutdown_tx.send(true);
        };
        tokio::join!(
            accept_loop(
                listener,
                trust,
                router,
                stopped(shutdown_rx.clone()),
                &config,
                app_state.denials.clone(),
                listener_gate(crate::listen::ListenerKind::Mtls)
            ),
            source_loop,
            syslog_loop,
            signal
        );
        let _ = summaries.await;
        app_state.denials.close_window().await;
        // Every handler has finished: everything acknowledged is committed. Record the stop as the run's last
        // event (the next start reads it to tell a clean stop from a crash), seal it all, then stop the writer.
        // The verifier goes first: it holds a writer handle, and a pass in progress ends within one batch.
        let sealed = match run {
            Run::Sqlite { appender, writer_thread, indexer_thread, start_seq, actors, verifier, .. } => {
                let _ = tokio::task::spawn_blocking(move || verifier.stop()).await;
                if let Some(start_seq) = start_seq {
                    record_stop(&gate, &appender, start_seq).await;
                }
                let _ = stop_tx.send(true);
                let sealed = actors.finish().await?;
                drop((appender, app_state, signer));
                let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
                // The writer held the last indexer handle: the indexer writes what it was sent, then stops.
                if let Some(indexer_thread) = indexer_thread {
                    let _ = tokio::task::spawn_blocking(move || indexer_thread.join()).await;
                }
                Some(sealed)
            }
            #[cfg(feature = "postgres")]
            Run::Postgres { appender, role, node_task, leader, .. } => {
                // The writer records its stop after its takeover record, seals, and hands the lease over by ending
                // its session; a standby has nothing to record or seal.
                let takeover = match &*role.borrow() {
                    crate::ledger::pg_node::NodeRole::Writer { takeover_seq, .. } => Some(*takeover_seq),
                    crate::ledger::pg_node::NodeRole::Standby { .. } => None,
                };
                if let (Some(seq), true) = (takeover, config.server.record_appliance_events) {
                    record_stop(&gate, &appender, seq).await;
                }
                let _ = stop_tx.send(true);
                let _ = leader.await;
                drop((appender, app_state, signer));
                // Every handle is gone: the node task ends, and with it the lease session.
                if tokio::time::timeout(Duration::from_secs(10), node_task).await.is_err() {
                    tracing::warn!("the PostgreSQL writer did not stop within 10 s");
                }
                None
            }
        };
        if let Some(e) = app_state_fatal(&fatal) {
            return Err(ServeError::StorageFailed(e));
        }
        tracing::info!(sealed_tree_size = sealed, "stopped");
        Ok(())
    }
}

/// What `run` started for its store, and stops at the end.
enum Run {
    Sqlite {
        appender: AppenderHandle,
        reads: LogReads,
        search_lag: Option<crate::ledger::indexer::IndexLag>,
        writer_thread: std::thread::JoinHandle<()>,
        indexer_thread: Option<std::thread::JoinHandle<()>>,
        start_seq: Option<u64>,
        actors: WriterActors,
        verifier: crate::selfverify::StopHandle,
    },
    #[cfg(feature = "postgres")]
    Postgres {
        appender: AppenderHandle,
        reads: LogReads,
        role: watch::Receiver<crate::ledger::pg_node::NodeRole>,
        node_task: tokio::task::JoinHandle<()>,
        leader: tokio::task::JoinHandle<()>,
    },
}

impl Run {
    /// Why this node is a standby, as it changes (`None`: it writes; always on SQLite).
    fn standby(&self) -> watch::Receiver<Option<String>> {
        match self {
            Run::Sqlite { .. } => watch::channel(None).1,
            #[cfg(feature = "postgres")]
            Run::Postgres { role, .. } => {
                use crate::ledger::pg_node::NodeRole;
                let standby = |r: &NodeRole| match r {
                    NodeRole::Standby { reason } => Some(reason.clone()),
                    NodeRole::Writer { .. } => None,
                };
                let (tx, rx) = watch::channel(standby(&role.borrow()));
                let mut role = role.clone();
                tokio::spawn(async move {
                    while role.changed().await.is_ok() {
                        let now = standby(&role.borrow_and_update());
                        tx.send_replace(now);
                    }
                });
                rx
            }
        }
    }

    /// The writer handle, the reads and the search lag every route shares.
    fn shared(&self) -> (AppenderHandle, LogReads, Option<crate::ledger::indexer::IndexLag>) {
        match self {
            Run::Sqlite { appender, reads, search_lag, .. } => {
                (appender.clone(), reads.clone(), search_lag.clone())
            }
            #[cfg(feature = "postgres")]
            Run::Postgres { appender, reads, .. } => (appender.clone(), reads.clone(), None),
        }
    }
}

/// Everything the writer's actors (sealer, timestamper, cosigner) are built from; cloned for each run of them (on
/// PostgreSQL, each time this node becomes the writer).
#[derive(Clone)]
struct ActorContext {
    sealer: SealerSettings,
    signer: SignerHandle,
    appender: AppenderHandle,
    reads: LogReads,
    metrics: Arc<Metrics>,
    /// The lifecycle gate, when the appliance records its own events.
    gate: Option<LifecycleGate>,
    alerts: Arc<crate::alerts::Alerts>,
    outage_threshold: Duration,
    timestamping: Option<TimestamperSettings>,
    witnessing: Option<CosignerSettings>,
    public_key: anchorlog_core::key::PublicKey,
    origin: String,
}

/// The running sealer, timestamper and cosigner.
struct WriterActors {
    sealer: tokio::task::JoinHandle<u64>,
    timestamper: Option<tokio::task::JoinHandle<()>>,
    cosigner: Option<tokio::task::JoinHandle<()>>,
    /// Stops the timestamper and cosigner, after the sealer, so the final head gets its token and cosignatures.
    ts_stop: watch::Sender<bool>,
}

impl WriterActors {
    #[allow(clippy::too_many_arguments)]
    fn context(
        config: &Config,
        signer: &SignerHandle,
        appender: &AppenderHandle,
        reads: &LogReads,
        metrics: &Arc<Metrics>,
        gate: &LifecycleGate,
        alerts: &Arc<crate::alerts::Alerts>,
        (timestamping, witnessing): (Option<TimestamperSettings>, Option<CosignerSettings>),
    ) -> ActorContext {
        ActorContext {
            sealer: SealerSettings {
                origin: config.origin.clone(),
                seal_interval: config.sealing.seal_interval(),
                seal_max_events: config.sealing.seal_max_events,
                heartbeat_interval: config.sealing.heartbeat_interval(),
            },
            signer: signer.clone(),
            appender: appender.clone(),
            reads: reads.clone(),
            metrics: metrics.clone(),
            gate: config.server.record_appliance_events.then(|| gate.clone()),
            alerts: alerts.clone(),
            outage_threshold: Duration::from_secs(config.alerting.outage_threshold_s),
            timestamping,
            witnessing,
            public_key: signer.public_key().clone(),
            origin: config.origin.clone(),
        }
    }

    /// Stops the timestamper and the cosigner once the sealer (stopped by its own signal) sealed its last head.
    async fn finish(self) -> Result<u64, ServeError> {
        let sealed = self.sealer.await.map_err(|e| ServeError::Internal(e.to_string()))?;
        let _ = self.ts_stop.send(true);
        if let Some(t) = self.timestamper {
            t.await.map_err(|e| ServeError::Internal(e.to_string()))?;
        }
        if let Some(t) = self.cosigner {
            t.await.map_err(|e| ServeError::Internal(e.to_string()))?;
        }
        Ok(sealed)
    }
}

impl ActorContext {
    /// Starts the sealer continuing `chain` (until `stop`), the timestamper and the cosigner.
    fn spawn(&self, chain: ChainState, stop: watch::Receiver<bool>) -> WriterActors {
        let c = self.clone();
        let outage_alert =
            || crate::ledger::outage::OutageAlert { alerts: c.alerts.clone(), threshold: c.outage_threshold };
        let sealer = Sealer::new(
            c.sealer.clone(),
            c.signer.clone(),
            c.appender.clone(),
            c.reads.clone(),
            c.metrics.clone(),
            chain,
        );
        let sealer = match &c.gate {
            Some(gate) => sealer.record_outages(gate.clone()),
            None => sealer,
        };
        let sealer = sealer.alert_outages(outage_alert());
        let sealed_height = sealer.sealed_height();
        let sealer_task = tokio::spawn(sealer.run(stop));
        let (ts_stop, ts_stop_rx) = watch::channel(false);
        let timestamper = c.timestamping.clone().map(|settings| {
            let t = Timestamper::new(settings, c.appender.clone(), c.reads.clone(), c.metrics.clone());
            let t = match &c.gate {
                Some(gate) => t.record_outages(gate.clone()),
                None => t,
            };
            let t = t.alert_outages(outage_alert());
            tokio::spawn(t.run(sealed_height.clone(), ts_stop_rx.clone()))
        });
        let cosigner = c.witnessing.clone().map(|settings| {
            let co = Cosigner::new(
                settings,
                c.appender.clone(),
                c.reads.clone(),
                c.metrics.clone(),
                c.public_key.clone(),
                c.origin.clone(),
            );
            let co = match &c.gate {
                Some(gate) => co.record_events(gate.clone()),
                None => co,
            };
            let co = co.alert_outages(outage_alert());
            tokio::spawn(co.run(sealed_height, ts_stop_rx))
        });
        WriterActors { sealer: sealer_task, timestamper, cosigner, ts_stop }
    }
}

/// Records this run's start (PCI DSS 10.2.1.6) before the first request is accepted; returns its seq.
async fn record_start(
    config: &Config,
    signer: &SignerHandle,
    appender: &AppenderHandle,
    previous_run: PreviousRun,
    recorded_start: Option<u64>,
) -> Result<Option<u64>, ServeError> {
    let start = internal::start_body(
        &config.text_sha256,
        signer.description(),
        &signer.public_key().key_id,
        previous_run,
    );
    if let (Some(seq), true) = (recorded_start, config.server.record_appliance_events) {
        tracing::info!(
            seq,
            previous_run = previous_run.as_str(),
            "start recorded in the log with the key rotation"
        );
        Ok(Some(seq))
    } else if config.server.record_appliance_events {
        let seq = match appender.append(vec![internal::internal_event(&start)]).await {
            Ok(done) => done.first().map(|a| a.seq),
            Err(e) => return Err(ServeError::StartRecord(e.to_string())),
        };
        tracing::info!(seq, previous_run = previous_run.as_str(), "start recorded in the log");
        Ok(seq)
    } else {
        tracing::warn!("server.record_appliance_events = false: starts, stops, outages and refused access are not recorded in the log (not PCI DSS 10.2.1.4/10.2.1.6/10.7.3 compliant)");
        Ok(None)
    }
}

/// Records the stop as the run's last event (the next start reads it to tell a clean stop from a crash): the gate
/// closes first, so no outage record comes after it.
async fn record_stop(gate: &LifecycleGate, appender: &AppenderHandle, start_seq: u64) {
    gate.close().await;
    let stop = internal::internal_event(&internal::stop_body(start_seq, "shutdown signal"));
    match appender.append(vec![stop]).await {
        Ok(done) => tracing::info!(seq = done.first().map(|a| a.seq), "stop recorded in the log"),
        Err(e) => {
            tracing::error!(error = %e, "cannot record the stop in the log; the next start will report the run as ended without a stop record")
        }
    }
}

/// Opens the SQLite log for writing after checking the whole file, reconciles it against the signer's key, and
/// settles which key signs from now on.
async fn start_sqlite(config: &Config, signer: &SignerHandle, pem: &str) -> Result<SqliteStart, ServeError> {
    // The whole file is checked first: a damaged page or a truncated file refuses the start, naming the file.
    let writer_conn =
        store::open_writer_checked(&config.storage.database, &config.origin, config.storage.integrity_check)?;
    store::record_public_key(&writer_conn, &signer.public_key().key_id, pem)?;
    let Reconciled { report, chain, resume, first_key } = reconcile(config, signer).await?;
    let previous_run = {
        let last = store::last_event(&writer_conn)?;
        PreviousRun::from_last_event(last.as_ref().map(|(p, b)| (p.as_str(), b.as_deref())))
    };
    let (writer_conn, chain, recorded_start) =
        settle_keys(config, signer, writer_conn, chain, &report, previous_run).await?;
    Ok(SqliteStart { writer_conn, chain, previous_run, resume, first_key, recorded_start })
}

/// The writer's test-only pause after each group commit (`fault::writer_delay`): `None` in any build without the
/// `fault-injection` feature, which no release build has.
fn writer_fault_delay() -> Option<Duration> {
    #[cfg(feature = "fault-injection")]
    {
        let delay = crate::fault::writer_delay();
        if let Some(d) = delay {
            tracing::warn!(
                ms = d.as_millis() as u64,
                "test fault hook: the writer pauses after every group commit"
            );
        }
        delay
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        None
    }
}

/// The key the log's chain starts with: head 0's, as the database recorded it (`None` for a log without heads, or
/// without that key's record: then the signer's own). Trusting the database here costs nothing an insider does not
/// already have; an auditor pins the first key instead (`verify --key`).
fn first_key(
    conn: &rusqlite::Connection,
) -> Result<Option<anchorlog_core::key::PublicKey>, store::StoreError> {
    let Some(h) = store::head(conn, 0)? else { return Ok(None) };
    Ok(store::public_key_pem(conn, &h.key_id)?
        .and_then(|pem| anchorlog_core::key::PublicKey::from_pem(&pem).ok()))
}

/// What the start-up verification established.
struct Reconciled {
    /// The walk's report, with `heads` and `last_checkpoint` made whole-log (a resumed walk counts only its range):
    /// what [`settle_keys`] decides from.
    report: verify::Report,
    /// Where the chain continues.
    chain: ChainState,
    /// Where the background verifier continues.
    resume: crate::selfverify::Resume,
    /// The key the log's chain starts with (the background full passes start from it).
    first_key: anchorlog_core::key::PublicKey,
}

/// Verifies the stored log, following its key rotations from its first key — from the last self-verified point
/// when the log has one ([`crate::selfverify::verify_at_start`]), else all of it — and returns the state to
/// continue the chain from. Which key must sign next is [`settle_keys`]'s to decide.
async fn reconcile(config: &Config, signer: &SignerHandle) -> Result<Reconciled, ServeError> {
    let db = config.storage.database.clone();
    let signer_key = signer.public_key().clone();
    let origin = config.origin.clone();
    let started = std::time::Instant::now();
    // An erasure record not sealed yet (a crash right after an erasure) is accepted here only: this start seals
    // it next. Every auditor's verification requires it under a signed head.
    let result = tokio::task::spawn_blocking(move || {
        let conn = store::open_reader(&db)?;
        let key = first_key(&conn)?.unwrap_or(signer_key);
        crate::selfverify::verify_at_start(&db, &key, &origin).map(|v| (v, key))
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?;
    let (verified, first_key) = match result {
        Ok(r) => r,
        Err(verify::VerifyError::Invalid(failure)) => {
            return Err(ServeError::Reconciliation {
                failure,
                key_id: signer.public_key().key_id.clone(),
                db: config.storage.database.display().to_string(),
            })
        }
        // A database error keeps its type (a full disk, a locked database …); any other source error cannot
        // come from the database walk and is internal.
        Err(verify::VerifyError::Source(e)) => match crate::verify::store_error(e) {
            Ok(e) => return Err(e.into()),
            Err(e) => return Err(ServeError::Internal(e.to_string())),
        },
        Err(e @ verify::VerifyError::Unreadable(_)) => return Err(ServeError::Internal(e.to_string())),
    };
    let mut report = verified.range.report.clone();
    tracing::info!(
        events = report.events,
        heads = report.heads,
        from_height = verified.range.anchor.as_ref().map(|h| h.height),
        unsealed = report.unsealed_events,
        key_rotations = report.rotations.len(),
        key_id = %report.current_key_id,
        ms = started.elapsed().as_millis() as u64,
        "startup reconciliation passed"
    );
    if let Some(seq) = report.unsealed_rotation {
        // Only an insider writes one outside the transaction that seals it: sealing it now would hand the log to
        // a key no head vouched for.
        return Err(ServeError::Reconciliation {
            failure: verify::Failure::KeyRotationInvalid {
                seq,
                reason: "no head covers it: the appliance seals a rotation record in the transaction that \
                         appends it, so it was written behind the appliance's back"
                    .into(),
            },
            key_id: signer.public_key().key_id.clone(),
            db: config.storage.database.display().to_string(),
        });
    }
    report.heads = verified.range.total_heads();
    report.last_checkpoint = verified.range.last_head.as_ref().map(|h| h.checkpoint.clone());
    let last = report.last_checkpoint.as_deref().map(anchorlog_core::head::Checkpoint::parse).transpose();
    let last = last.map_err(|e| ServeError::Internal(e.to_string()))?;
    let chain = ChainState {
        frontier: report.frontier_at_last_head.clone(),
        next_height: report.heads,
        prev_hash: report
            .last_checkpoint
            .as_deref()
            .map(anchorlog_core::head::Checkpoint::text_hash)
            .unwrap_or([0; 32]),
        last_time_ms: last.as_ref().map_or(0, |h| h.time_ms),
        last_counter: last.and_then(|h| h.counter).map(|c| c.value),
    };
    let resume = crate::selfverify::Resume::after_start(&verified);
    Ok(Reconciled { report, chain, resume, first_key })
}

/// The newest head's counter, `(height, counter)`: once heads carry a counter every later head does (the verifier
/// checks it), so the last head's is the newest counter in the log.
fn newest_counter(report: &verify::Report) -> Option<(u64, anchorlog_core::head::HeadCounter)> {
    let cp = anchorlog_core::head::Checkpoint::parse(report.last_checkpoint.as_deref()?).ok()?;
    cp.counter.map(|c| (cp.height, c))
}

/// Decides which key signs from now on ([`crate::rotation::plan`]): the configured one when it is the log's
/// current key; refuses ambiguous states; and records a pending key rotation. Checks the TPM counter of whichever
/// key signs the next head. Returns the writer connection, the chain to continue and the seq of a start record
/// already written (with a rotation).
async fn settle_keys(
    config: &Config,
    signer: &SignerHandle,
    conn: rusqlite::Connection,
    chain: ChainState,
    report: &verify::Report,
    previous_run: PreviousRun,
) -> Result<(rusqlite::Connection, ChainState, Option<u64>), ServeError> {
    use crate::rotation::{self, PendingRotation, Plan};
    let path = rotation::pending_path(&config.storage.database);
    let pending = PendingRotation::load(&path)?;
    let log_key = (report.heads > 0).then_some(report.current_key_id.as_str());
    let plan = rotation::plan(log_key, &signer.public_key().key_id, pending.as_ref(), &path)?;
    let newest = newest_counter(report);
    let (Plan::Rotate, Some(p)) = (&plan, pending) else {
        if plan == Plan::AlreadyRecorded {
            tracing::info!(path = %path.display(), "the pending key rotation is already in the log; removing its file");
            remove_pending(&path);
        }
        check_counter(config, signer, report.heads, newest).await?;
        return Ok((conn, chain, None));
    };
    // The old key signs one more head. A TPM simulator serves one connection at a time: the configured signer lets
    // go of it while the old key is open.
    signer.release().await?;
    let old_config = p.old.apply(config)?;
    let old = open_signer(&old_config)?;
    if old.public_key().key_id != p.old_key_id {
        let found = old.public_key().key_id.clone();
        let _ = old.close().await;
        return Err(ServeError::Rotation(format!(
            "the old key named in {} ({}) has key id {found}, not {}",
            path.display(),
            p.old.hint(),
            p.old_key_id
        )));
    }
    check_counter(config, &old, report.heads, newest).await?;
    let new_counter = crate::rotation::KeySpec::of(config)?.counter_index();
    let recorded = record_rotation(config, signer, &old, conn, chain, previous_run, &p, new_counter).await;
    let _ = old.close().await;
    let (conn, chain, start_seq, head) = recorded?;
    remove_pending(&path);
    tracing::warn!(
        height = head.height,
        old_key_id = %p.old_key_id,
        new_key_id = %p.new_key_id,
        reason = %p.reason,
        "key rotation recorded: head {} is the old key's last; every later head is signed by the new key",
        head.height
    );
    // The new key's counter continues the old one's when it is the same index, else it starts afresh.
    let continued = head.counter.filter(|c| Some(c.index) == new_counter).map(|c| (head.height, c));
    check_counter(config, signer, head.height + 1, continued).await?;
    Ok((conn, chain, Some(start_seq)))
}

fn remove_pending(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the pending key rotation file; the next start removes it");
    }
}

/// Appends this start's record and the key rotation record and stores the head over them signed by the `old` key,
/// in one transaction (the record must be that head's last event: nothing may come between). Returns the writer
/// connection, the chain after that head, the start record's seq and the head.
#[allow(clippy::too_many_arguments)]
async fn record_rotation(
    config: &Config,
    new: &SignerHandle,
    old: &SignerHandle,
    conn: rusqlite::Connection,
    chain: ChainState,
    previous_run: PreviousRun,
    p: &crate::rotation::PendingRotation,
    new_counter: Option<u32>,
) -> Result<(rusqlite::Connection, ChainState, u64, anchorlog_core::head::Checkpoint), ServeError> {
    use crate::ledger::appender;
    use anchorlog_core::head::Checkpoint;
    let failed = |e: &dyn std::fmt::Display| ServeError::Rotation(e.to_string());
    let pem = crate::bundle::export::public_key_pem(new.public_key()).map_err(|e| failed(&e))?;
    let start =
        internal::start_body(&config.text_sha256, new.description(), &new.public_key().key_id, previous_run);
    let record =
        internal::key_rotation_body(&p.old_key_id, &new.public_key().key_id, &pem, &p.reason, new_counter);
    let events = vec![internal::internal_event(&start), internal::internal_event(&record)];
    let (conn, next_seq, mut frontier) = tokio::task::spawn_blocking(move || {
        let next = store::event_count(&conn)?;
        let frontier = store::tree::load_frontier(&conn, next)?;
        Ok::<_, store::StoreError>((conn, next, frontier))
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))??;
    for (i, ev) in events.iter().enumerate() {
        frontier.push(anchorlog_core::merkle::leaf_hash(&appender::entry_of(ev, next_seq + i as u64)));
    }
    let counter = old.advance_counter(chain.last_counter).await?;
    let head = Checkpoint {
        origin: config.origin.clone(),
        tree_size: frontier.size(),
        root: frontier.root(),
        height: chain.next_height,
        prev: chain.prev_hash,
        time_ms: store::now_ms().max(chain.last_time_ms),
        counter,
    };
    let text = head.to_text().map_err(|e| failed(&e))?;
    let signature = old.sign(text.as_bytes().to_vec()).await?;
    if !old.public_key().verify(text.as_bytes(), &signature) {
        return Err(failed(&"the old key's signature over the rotation head does not verify"));
    }
    let stored = anchorlog_core::stored::StoredHead {
        height: head.height,
        tree_size: head.tree_size,
        root: head.root,
        checkpoint: text.clone(),
        signature,
        key_id: old.public_key().key_id.clone(),
        sealed_at_ms: head.time_ms,
    };
    let new_key_id = new.public_key().key_id.clone();
    let (conn, appended) = tokio::task::spawn_blocking(move || {
        let appended = appender::append_sealed(&conn, &events, &stored, |c, done| match done.last() {
            Some(r) => store::record_rotation(c, r.seq, &new_key_id),
            None => Ok(()),
        });
        (conn, appended)
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?;
    let appended = appended.map_err(|e| failed(&e))?;
    let start_seq = appended.first().map_or(next_seq, |a| a.seq);
    let continued = head.counter.filter(|c| Some(c.index) == new_counter);
    let chain = ChainState {
        frontier,
        next_height: head.height + 1,
        prev_hash: Checkpoint::text_hash(&text),
        last_time_ms: head.time_ms,
        last_counter: continued.map(|c| c.value),
    };
    Ok((conn, chain, start_seq, head))
}

/// The start-up half of the TPM counter (docs/TPM.md): the newest head's counter (`head`: its height and counter;
/// `None` when no head carries one) must be one the TPM's has not moved beyond, except for the documented slack. A
/// database restored from an older copy, or with its newest heads cut off, is refused here (exit code 3) even
/// though everything in it verifies. `heads` is the number of heads the log holds.
async fn check_counter(
    config: &Config,
    signer: &SignerHandle,
    heads: u64,
    head: Option<(u64, anchorlog_core::head::HeadCounter)>,
) -> Result<(), ServeError> {
    use anchorlog_core::counter::{self, CounterFailure};
    let observed = signer.read_counter().await?;
    let checked = match &observed {
        Some(tpm) => counter::check_newest(head.as_ref().map(|(h, c)| (*h, c)), heads, tpm),
        None => match head {
            Some((height, c)) => Err(CounterFailure::NoCounterConfigured { height, index: c.index }),
            None => Ok(()),
        },
    };
    if let Err(failure) = checked {
        return Err(ServeError::Reconciliation {
            failure: verify::Failure::Counter(failure),
            key_id: signer.public_key().key_id.clone(),
            db: config.storage.database.display().to_string(),
        });
    }
    match (observed, head) {
        (Some(tpm), Some((height, c))) => tracing::info!(
            height,
            head_counter = c.value,
            head_reset_count = c.reset_count,
            tpm_counter = tpm.value,
            tpm_reset_count = tpm.reset_count,
            "TPM counter check passed: the database reaches the TPM's counter"
        ),
        (Some(tpm), None) if heads > 0 => tracing::warn!(
            index = format!("{:#010x}", tpm.index),
            from_height = heads,
            "no head carries the TPM counter yet: heads from this height on will; the earlier ones are not              protected by it"
        ),
        (Some(tpm), None) => {
            tracing::info!(index = format!("{:#010x}", tpm.index), "a new log: its heads carry the TPM counter")
        }
        (None, _) => tracing::warn!(
            "the signer has no monotonic counter: a database restored from an older copy is not caught at start              (PKCS#11: use witnesses; TPM: set signer.tpm.counter_index, docs/TPM.md)"
        ),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    trust: Arc<TrustHandle>,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
    config: &Config,
    denials: Arc<DenialRecorder>,
    mut gate: crate::listen::Gate,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connection tasks are tracked so that, once the grace period is over, they can be aborted: each holds
    // the router and through it the writer handle, and the writer only stops when every handle is gone.
    let mut connections = tokio::task::JoinSet::new();
    // The connection caps (in all, per address) and the accept back-off are the gate's (`listen`).
    let limits = gate.limits().clone();
    let kind = limits.kind;
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote, admission) = tokio::select! {
            a = gate.accept(&listener) => a,
            _ = &mut shutdown => break,
        };
        // Without TCP_NODELAY, small responses wait for delayed ACKs (40 ms stalls per request).
        let _ = tcp.set_nodelay(true);
        // The trust current now decides this handshake (a reload swaps it for later ones).
        let current = trust.current();
        let trust = trust.clone();
        let router = router.clone();
        let denials = denials.clone();
        let watcher = graceful.watcher();
        let limits = limits.clone();
        // Reap finished connection tasks so the set does not grow with every connection ever accepted.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _admission = admission;
            let acceptor = tokio_rustls::TlsAcceptor::from(current.server_config.clone());
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    let reason = format!("tls_handshake_refused: {e}");
                    let denial = Denial { reason, remote: Some(remote), listener: kind, ..Denial::default() };
                    denials.record(denial).await;
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    denials.limit_hit(kind, "handshake_timeout");
                    return;
                }
            };
            let chain: Vec<_> = tls.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
            let peer = (!chain.is_empty()).then(|| current.principals.resolve_chain(&chain));
            drop(current);
            // Registered so that a reload can close it when its certificate is no longer accepted.
            let registration = peer
                .as_ref()
                .map(|p| trust.register(chain, p.principal.as_ref().map(|p| p.name.clone())));
            // A handler may close its own connection (a stalled event stream).
            let closer = crate::listen::ConnectionCloser::default();
            let handle = closer.clone();
            let service =
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer {
                        req.extensions_mut().insert(p.clone());
                    }
                    req.extensions_mut().insert(RemoteAddr(remote));
                    req.extensions_mut().insert(kind);
                    req.extensions_mut().insert(handle.clone());
                    let mut router = router.clone();
                    async move { tower::Service::call(&mut router, req).await }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service);
            let closed = async {
                match &registration {
                    Some(r) => r.closed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = watcher.watch(conn) => if let Err(e) = r {
                    if e.is_timeout() {
                        denials.limit_hit(kind, "header_timeout");
                    }
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                },
                // Dropping the connection closes it, a request in flight included.
                _ = closed => tracing::info!(%remote, "connection closed: its certificate is no longer accepted"),
                _ = closer.closed() => tracing::info!(%remote, "connection closed by its handler"),
            }
        });
    }
    drop(listener);
    let grace = Duration::from_secs(config.server.shutdown_grace_s);
    tracing::info!("shutting down: no new connections; waiting up to {grace:?} for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn serve_health(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    mut gate: crate::listen::Gate,
    metrics: Arc<Metrics>,
) {
    let header_read_timeout = gate.limits().header_read_timeout;
    loop {
        let (tcp, _, admission) = tokio::select! {
            a = gate.accept(&listener) => a,
            _ = stop.changed() => return,
        };
        let router = router.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                async move { tower::Service::call(&mut router, req).await }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if served.is_err_and(|e| e.is_timeout()) {
                metrics.instruments.limit_hit("health", "header_timeout");
            }
        });
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is first
/// polled: a SIGTERM that arrives right after the listening line (a supervisor stopping a fresh start) must
/// stop the service cleanly, not kill it with the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                (Ok(mut term), Err(_)) => {
                    term.recv().await;
                }
                (Err(_), Ok(mut int)) => {
                    int.recv().await;
                }
                (Err(_), Err(_)) => std::future::pending::<()>().await,
            }
            tracing::info!("shutdown signal received");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}
