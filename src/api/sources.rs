//! `POST /v1/sources/{name}/events`: native IdP payloads (Keycloak, Okta, Auth0, generic JSON) per configured
//! source, and Okta's one-time verification `GET` on the same URL.
//!
//! The path is served on two listeners with different authentication:
//! - the **mTLS listener**: the client certificate's principal must hold the producer role and be listed in
//!   the source's `principals`; the principal is recorded as the producer, `auth = "mtls"`;
//! - the **source listener** (`server.source_listen`, server-auth TLS only): for sources with a
//!   `secret_auth`; the secret is checked in constant time ([`formats::auth`]), the source name is recorded
//!   as the producer, `auth = "bearer"` or `"hmac"`. A source without a secret is unknown there.
//!
//! Every refusal (unknown source 404, credentials 401/403, media type 415, body 4xx) happens before anything
//! is queued for the writer, so a rejected request stores nothing.

use super::ingest::{self, Origin};
use super::{authorize, ApiError, AppState};
use crate::config::{read_secret_file, ConfigError, Role, SecretAuth, SourceConfig};
use crate::formats::auth::{self, AuthError, KEYCLOAK_SIGNATURE_ALGORITHM_HEADER, KEYCLOAK_SIGNATURE_HEADER};
use crate::formats::{self, Format};
use crate::listen::ListenerKind;
use crate::tls::Peer;
use anchorlog_core::entry::AuthMethod;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Okta's verification challenge header.
pub const OKTA_CHALLENGE_HEADER: &str = "x-okta-verification-challenge";
/// Longest accepted Okta challenge (Okta's are ~40 characters); bounds what we echo back.
pub const MAX_CHALLENGE_LEN: usize = 512;

/// A configured source, with its secret loaded.
pub struct Source {
    /// Name (URL segment, recorded as `source`).
    pub name: Arc<str>,
    /// Payload format.
    pub format: Format,
    /// Principals allowed over mTLS.
    pub principals: BTreeSet<String>,
    /// Secret authentication on the source listener.
    pub secret: Option<(SecretAuth, zeroize::Zeroizing<String>)>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("principals", &self.principals)
            .field("secret_auth", &self.secret.as_ref().map(|(kind, _)| kind))
            .finish()
    }
}

/// All configured sources by name. A reload ([`crate::tls::reload`]) swaps the whole set at once: a request
/// sees either the old sources and secrets or the new ones, never a mix.
#[derive(Debug, Default)]
pub struct SourceRegistry {
    by_name: std::sync::RwLock<Arc<HashMap<String, Arc<Source>>>>,
}

impl SourceRegistry {
    /// Builds the registry, reading every secret file (a missing or empty file fails start-up, naming the
    /// key; the secret itself never appears in an error).
    pub fn load(sources: &[SourceConfig]) -> Result<SourceRegistry, ConfigError> {
        let mut by_name = HashMap::new();
        for (i, s) in sources.iter().enumerate() {
            let secret = match (s.secret_auth, &s.secret_file) {
                (Some(kind), Some(path)) => {
                    Some((kind, read_secret_file(&format!("source[{i}].secret_file"), path)?))
                }
                _ => None,
            };
            let source = Source {
                name: s.name.as_str().into(),
                format: s.format,
                principals: s.principals.iter().cloned().collect(),
                secret,
            };
            by_name.insert(s.name.clone(), Arc::new(source));
        }
        Ok(SourceRegistry { by_name: std::sync::RwLock::new(Arc::new(by_name)) })
    }

    fn snapshot(&self) -> Arc<HashMap<String, Arc<Source>>> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the Arc inside is whole.
        self.by_name.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The source named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Source>> {
        self.snapshot().get(name).cloned()
    }

    /// The source of format `syslog` that lists `principal` (the configuration allows at most one).
    pub fn syslog_source_for(&self, principal: &str) -> Option<Arc<Source>> {
        self.snapshot()
            .values()
            .find(|s| s.format == Format::Syslog && s.principals.contains(principal))
            .cloned()
    }

    /// Whether any source authenticates with a secret (then the source listener is needed).
    pub fn any_secret(&self) -> bool {
        self.snapshot().values().any(|s| s.secret.is_some())
    }

    /// Replaces every source with `other`'s (a reload); requests already running keep the source they looked up.
    pub fn replace(&self, other: SourceRegistry) {
        let new = other.snapshot();
        *self.by_name.write().unwrap_or_else(std::sync::PoisonError::into_inner) = new;
    }

    /// How many sources there are.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }
}

fn unknown_source(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_source",
        format!(
            "no source named {name:?} is configured for this listener; add a [[source]] to the configuration"
        ),
    )
    .with_detail(json!({"source": name}))
}

fn auth_error(e: AuthError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    ApiError::new(status, e.code(), e.to_string())
}

fn count_rejection(state: &AppState, result: &Result<Json<Value>, ApiError>) {
    if let Err(e) = result {
        // A 429 (writer queue full) is the appliance's capacity, not a bad request: counted on its own
        // (`anchorlog_ingest_throttled_total`), so an alert on rejected requests does not fire under load.
        if e.status.is_client_error() && e.status != StatusCode::TOO_MANY_REQUESTS {
            state.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
            state.metrics.instruments.failed("ingest_rejected");
        }
    }
}

/// mTLS listener: the source, if `peer` is a producer listed for it.
fn mtls_source(
    state: &AppState,
    peer: Option<&Peer>,
    name: &str,
) -> Result<(Arc<Source>, Arc<str>), ApiError> {
    let principal = authorize(peer, Role::Producer)?;
    let source = state.sources.get(name).ok_or_else(|| unknown_source(name))?;
    if !source.principals.contains(&*principal.name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "source_not_allowed",
            format!(
                "principal {:?} may not post to source {name:?}; add it to that source's `principals`",
                principal.name
            ),
        )
        .with_detail(json!({"principal": &*principal.name, "source": name})));
    }
    Ok((source, principal.name.clone()))
}

/// Source listener: the source, if it authenticates with a secret.
fn secret_source(state: &AppState, name: &str) -> Result<Arc<Source>, ApiError> {
    state.sources.get(name).filter(|s| s.secret.is_some()).ok_or_else(|| unknown_source(name))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks a static secret (`authorization` / `bearer`); HMAC needs the body and is checked later.
fn check_static_secret(source: &Source, headers: &HeaderMap) -> Result<AuthMethod, ApiError> {
    let Some((kind, secret)) = &source.secret else { return Err(unknown_source(&source.name)) };
    let presented = header_str(headers, header::AUTHORIZATION.as_str());
    match kind {
        SecretAuth::Authorization => auth::verify_authorization(secret, presented).map_err(auth_error)?,
        SecretAuth::Bearer => auth::verify_bearer(secret, presented).map_err(auth_error)?,
        SecretAuth::Hmac => return Ok(AuthMethod::Hmac),
    }
    Ok(AuthMethod::Bearer)
}

/// Reads, authenticates (HMAC), parses and appends one request to `source` that came in on `listener`. A static
/// secret was checked from the headers before this (nothing of the body is read for a wrong one); an HMAC needs
/// the body, which is read only within `limits.max_body_bytes` (413 before any of it is hashed) and
/// `limits.body_read_timeout_ms` (408).
async fn ingest_into(
    state: &AppState,
    source: &Source,
    producer: Arc<str>,
    auth_method: AuthMethod,
    headers: &HeaderMap,
    body: Body,
    listener: ListenerKind,
) -> Result<Json<Value>, ApiError> {
    if source.format == Format::Syslog {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "syslog_source",
            format!(
                "source {:?} takes syslog over TLS on server.syslog_listen (RFC 5425), not HTTP; point the \
                 shipper there (docs/INTEGRATIONS.md, \"Syslog\")",
                source.name
            ),
        ));
    }
    let ndjson = ingest::content_kind(headers)?;
    let bytes = ingest::read_limited(state, body, headers, listener).await?;
    if auth_method == AuthMethod::Hmac {
        let Some((_, secret)) = &source.secret else { return Err(unknown_source(&source.name)) };
        auth::verify_hmac_sha256(
            secret.as_bytes(),
            &bytes,
            header_str(headers, KEYCLOAK_SIGNATURE_HEADER),
            header_str(headers, KEYCLOAK_SIGNATURE_ALGORITHM_HEADER),
        )
        .map_err(auth_error)?;
    }
    let parsed = ingest::parse(state, source.format, &bytes, ndjson)?;
    // Only generic JSON has no id convention of its own; native formats carry their event ids.
    let idempotency_key =
        if source.format == Format::Json { ingest::idempotency_key(headers, parsed.len())? } else { None };
    let origin = Origin { producer, source: source.name.clone(), auth: auth_method, format: source.format };
    ingest::append(state, parsed, &origin, idempotency_key).await
}

/// Answers Okta's one-time verification GET: `{"verification": "<challenge>"}`.
fn verification(source: &Source, headers: &HeaderMap) -> Result<Json<Value>, ApiError> {
    if source.format != Format::Okta {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("GET answers Okta's verification only; source {:?} is {}", source.name, source.format),
        ));
    }
    let challenge = header_str(headers, OKTA_CHALLENGE_HEADER)
        .filter(|c| !c.is_empty() && c.len() <= MAX_CHALLENGE_LEN)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_challenge",
                format!(
                    "the X-Okta-Verification-Challenge header is missing or longer than {MAX_CHALLENGE_LEN} \
                     characters"
                ),
            )
        })?;
    Ok(Json(formats::okta_verification_response(challenge)))
}

pub(super) async fn post_mtls(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = async {
        let (source, producer) = mtls_source(&state, peer.as_ref().map(|p| &p.0), &name)?;
        ingest_into(&state, &source, producer, AuthMethod::Mtls, &headers, body, ListenerKind::Mtls).await
    }
    .await;
    count_rejection(&state, &result);
    result
}

pub(super) async fn get_mtls(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (source, _) = mtls_source(&state, peer.as_ref().map(|p| &p.0), &name)?;
    verification(&source, &headers)
}

pub(super) async fn post_secret(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = async {
        let source = secret_source(&state, &name)?;
        let method = check_static_secret(&source, &headers)?;
        ingest_into(&state, &source, source.name.clone(), method, &headers, body, ListenerKind::Source).await
    }
    .await;
    count_rejection(&state, &result);
    result
}

pub(super) async fn get_secret(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let source = secret_source(&state, &name)?;
    // Okta sends its Authorization header with the verification GET too: check it, so nobody else can
    // verify a hook against this URL. (An HMAC source has no GET to verify.)
    if check_static_secret(&source, &headers)? == AuthMethod::Hmac {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("source {name:?} authenticates with an HMAC of the body; only POST is served"),
        ));
    }
    verification(&source, &headers)
}
