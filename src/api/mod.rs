//! The HTTPS API: routes, shared state, authorization. Every route except `/healthz` names the role it
//! requires (deny by default); the peer's principal comes from its verified client certificate.

mod admin;
mod audit_access;
pub mod console;
pub mod denials;
pub mod encoding;
pub mod error;
mod export;
mod ingest;
pub mod openapi;
mod proofs;
pub mod queue;
mod read;
mod search;
pub mod sources;
pub mod stream;

use crate::config::{LimitsConfig, Role};
use crate::ledger::appender::AppenderHandle;
use crate::metrics::Metrics;
use crate::store::reads::LogReads;
use crate::store::ReadPool;
use crate::tls::{Peer, Principal};
use anchorlog_core::key::PublicKey;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
pub use error::ApiError;
pub(crate) use ingest::read_body;
pub use openapi::ROUTES;
use serde_json::json;
use std::sync::Arc;

/// State shared by all handlers.
pub struct AppState {
    /// The single writer.
    pub appender: AppenderHandle,
    /// Reads of the log, on SQLite or PostgreSQL.
    pub reads: LogReads,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The head-signing public key.
    pub public_key: PublicKey,
    /// Log origin.
    pub origin: String,
    /// Configured sources (`/v1/sources/{name}/events`).
    pub sources: Arc<sources::SourceRegistry>,
    /// Read-only connections to the search database (normalized fields).
    pub search: Arc<ReadPool>,
    /// `[search] enabled`: extract normalized fields (there is an indexer to store them).
    pub search_enabled: bool,
    /// How far search trails the ledger (`None` without an indexer).
    pub search_lag: Option<crate::ledger::indexer::IndexLag>,
    /// Records invalid access attempts (PCI DSS 10.2.1.4).
    pub denials: Arc<denials::DenialRecorder>,
    /// What `/readyz` checks.
    pub readiness: crate::readiness::Readiness,
    /// The appliance's own verification of its log (readiness, metrics).
    pub self_verify: Arc<crate::selfverify::SelfVerifyState>,
    /// Alert conditions and webhook delivery (metrics).
    pub alerts: Arc<crate::alerts::Alerts>,
    /// `storage.max_export_snapshot_s`: longest an export may hold its read snapshot (which holds back WAL
    /// checkpoints) before it is aborted.
    pub max_export_snapshot: std::time::Duration,
    /// The bounded line of ingest requests before the writer (429 when full).
    pub queue: queue::WriterQueue,
    /// Becomes `true` when the appliance begins to shut down: long-lived answers (`/v1/stream`) end then, so the
    /// graceful shutdown does not wait for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Open event streams and what they delivered (metrics).
    pub streams: stream::StreamStats,
    /// `server.console_dir`: the built auditor's console served at `/console/`.
    pub console_dir: std::path::PathBuf,
    /// On a PostgreSQL log: `Some(why)` while this node is a standby (not the writer: ingest answers 503
    /// `not_writer`, `/readyz` says `standby`), `None` while it writes. Always `None` on SQLite.
    pub standby: tokio::sync::watch::Receiver<Option<String>>,
}

/// The router of the mTLS listener.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(read::ready))
        .route("/metrics", get(read::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/events", post(ingest::post_events).get(search::search))
        .route("/v1/sources/{name}/events", post(sources::post_mtls).get(sources::get_mtls))
        .route("/v1/events/{seq}", get(read::event))
        .route("/v1/events/{seq}/receipt", get(read::receipt))
        .route("/v1/heads/latest", get(read::latest_head))
        .route("/v1/heads/{height}", get(read::head))
        .route("/v1/proofs/inclusion", get(proofs::inclusion))
        .route("/v1/proofs/consistency", get(proofs::consistency))
        .route("/v1/key-rotations", get(proofs::key_rotations))
        .route("/v1/admin/erasures", post(admin::erase))
        .route("/v1/export", get(export::export))
        .route("/v1/stream", get(stream::stream))
        .route("/console/", get(console::index))
        .route("/console/{file}", get(console::file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), denials::record_denials))
        .with_state(state)
}

/// The router of the source listener (server-auth TLS, no client certificate): secret-authenticated sources
/// and `/healthz`, nothing else.
pub fn source_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/sources/{name}/events", post(sources::post_secret).get(sources::get_secret))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), denials::record_denials))
        .with_state(state)
}

/// The router of the optional plain-HTTP health listener (`server.health_listen`): `/healthz`, `/readyz` and
/// `/metrics`, without authentication — they carry no event content, no keys and no heads; bind the listener to
/// a management address only.
pub fn health_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(read::ready_unauthenticated))
        .route("/metrics", get(read::metrics_unauthenticated))
        .fallback(not_found)
        .with_state(state)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Returns the peer's principal if it holds `role`, else the documented 403.
pub fn authorize(peer: Option<&Peer>, role: Role) -> Result<Arc<Principal>, ApiError> {
    authorize_any(peer, &[role])
}

/// [`authorize`] for an endpoint any of `roles` may use (the first is the one named in the refusal).
pub fn authorize_any(peer: Option<&Peer>, roles: &[Role]) -> Result<Arc<Principal>, ApiError> {
    let role = roles.first().copied().unwrap_or(Role::Admin);
    let Some(peer) = peer else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "this endpoint requires a client certificate",
        ));
    };
    if let (None, Some(named)) = (&peer.principal, &peer.wrong_issuer) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "principal_wrong_issuer",
            format!(
                "the client certificate names principal {named:?} but was not issued by a CA listed in that \
                 principal's `issuers`; issue it from one of those CAs, or add its CA to `issuers`"
            ),
        )
        .with_detail(json!({"principal": &**named, "identities": peer.identities.as_slice()})));
    }
    let Some(principal) = peer.principal.clone() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown_principal",
            "the client certificate is valid but is not mapped to any principal; add one of its identities \
             to a [[principal]] in the configuration",
        )
        .with_detail(json!({"identities": peer.identities.as_slice()})));
    };
    if !roles.iter().any(|r| principal.has(*r)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            format!(
                "principal {:?} does not hold the {} role this endpoint requires",
                principal.name,
                role.as_str()
            ),
        )
        .with_detail(json!({"principal": &*principal.name, "required_role": role.as_str(),
                            "accepted_roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()})));
    }
    Ok(principal)
}
