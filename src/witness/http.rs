//! The witness's HTTP interface: `POST <prefix>/add-checkpoint` (c2sp.org/tlog-witness v1.0.0), over plain HTTP
//! or HTTPS with the configured server certificate (no client certificates: the protocol authenticates the
//! checkpoint by its signatures, not the client).
//!
//! Answers: 200 with the cosignature line (`text/plain; charset=utf-8`); 409 with `Content-Type:
//! text/x.tlog.size` and the stored size; every other refusal as anchorlog's JSON error `{"code", "message",
//! "detail"}` with the status tlog-witness prescribes (400, 403, 404, 422), 413 for a body above
//! `limits.max_body_bytes`.

use super::config::WitnessConfig;
use super::{AddCheckpointError, Witness, WitnessError, WitnessHandle};
use crate::api::ApiError;
use crate::server::{HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use anchorlog_core::note::protocol::{tlog_size_body, CONTENT_TYPE_TLOG_SIZE};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Time a client has to send a whole `add-checkpoint` body (a checkpoint and a proof: a few KiB).
const BODY_READ_TIMEOUT: Duration = Duration::from_millis(crate::config::DEFAULT_BODY_READ_TIMEOUT_MS);

struct AppState {
    witness: WitnessHandle,
    max_body_bytes: usize,
}

/// The witness router: `POST <prefix>/add-checkpoint`, JSON 404/405 for everything else.
pub fn router(witness: WitnessHandle, config: &WitnessConfig) -> Router {
    let state = Arc::new(AppState { witness, max_body_bytes: config.limits.max_body_bytes });
    Router::new()
        .route(&config.add_checkpoint_path(), post(add_checkpoint))
        .fallback(|req: Request| async move {
            ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {}; use POST", req.method(), req.uri().path()),
            )
        })
        .with_state(state)
}

async fn add_checkpoint(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let hint = "a checkpoint with its consistency proof is a few kilobytes";
    let bytes =
        match crate::api::read_body(body, &headers, state.max_body_bytes, BODY_READ_TIMEOUT, hint).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
    match state.witness.add_checkpoint(bytes.to_vec()).await {
        Ok(lines) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], lines).into_response(),
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &AddCheckpointError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(size) = e.stored_size() {
        return (status, [(header::CONTENT_TYPE, CONTENT_TYPE_TLOG_SIZE)], tlog_size_body(size))
            .into_response();
    }
    match e {
        AddCheckpointError::Internal(detail) => ApiError::internal("add-checkpoint failed", detail),
        other => {
            let detail = match other {
                AddCheckpointError::OldSizeAboveCheckpointSize { old_size, size } => {
                    json!({"old_size": old_size, "checkpoint_size": size})
                }
                AddCheckpointError::UnknownOrigin(origin) => json!({"origin": origin}),
                _ => json!({}),
            };
            ApiError::new(status, other.code(), other.to_string()).with_detail(detail)
        }
    }
    .into_response()
}

/// A started witness: the thread with key and database, and the bound listener.
pub struct WitnessService {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    grace: Duration,
    handle: WitnessHandle,
}

impl WitnessService {
    /// Validates and opens everything (key, database, logs' keys, TLS material), then binds.
    pub async fn start(config: WitnessConfig) -> Result<Self, WitnessError> {
        let tls = match (&config.server.cert_file, &config.server.key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config_without_client_auth(cert, key)?),
            _ => None,
        };
        let opened = config.clone();
        let handle = WitnessHandle::spawn(move || Witness::open(&opened))?;
        let addr = config.server.listen.clone();
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| WitnessError::Bind { addr: addr.clone(), source })?;
        Ok(WitnessService {
            listener,
            tls,
            router: router(handle.clone(), &config),
            grace: Duration::from_secs(config.server.shutdown_grace_s),
            handle,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The witness's vkey.
    pub fn vkey(&self) -> &anchorlog_core::note::VerifierKey {
        self.handle.vkey()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (bounded by the grace period).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let acceptor = self.tls.map(tokio_rustls::TlsAcceptor::from);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut connections = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        // A failing accept (descriptors exhausted) pauses instead of spinning (`listen`).
        let mut backoff = crate::listen::AcceptBackoff::new(
            Duration::from_millis(crate::config::DEFAULT_ACCEPT_BACKOFF_INITIAL_MS),
            Duration::from_millis(crate::config::DEFAULT_ACCEPT_BACKOFF_MAX_MS),
        );
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut shutdown => break,
            };
            let (tcp, remote) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(v) => { backoff.succeeded(crate::listen::ListenerKind::Witness); v }
                    Err(e) => {
                        let pause = backoff.failed(crate::listen::ListenerKind::Witness, &e);
                        drop(permit);
                        tokio::select! { _ = tokio::time::sleep(pause) => continue, _ = &mut shutdown => break }
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, router, watcher) = (acceptor.clone(), self.router.clone(), graceful.watcher());
            while connections.try_join_next().is_some() {}
            connections.spawn(async move {
                let _permit = permit;
                let Some(acceptor) = acceptor else {
                    return serve_connection(TokioIo::new(tcp), router, watcher, remote).await;
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => serve_connection(TokioIo::new(tls), router, watcher, remote).await,
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
        drop(self.listener);
        tracing::info!(
            "shutting down: no new connections; waiting up to {:?} for in-flight requests",
            self.grace
        );
        if tokio::time::timeout(self.grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("grace period over; closing remaining connections");
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

async fn serve_connection<I>(
    io: I,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
    remote: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut router = router.clone();
        async move { tower::Service::call(&mut router, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
