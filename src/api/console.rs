//! `GET /console/…`: the auditor's console (console/web, built by console/build.sh), served as static files
//! to auditors over the mTLS listener. The page verifies everything in the browser against a key the auditor
//! pins, so serving it grants nothing the API does not; it is still deny-by-default like every other route.

use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::tls::Peer;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::sync::Arc;

/// The files of a built console, with their media types: nothing else is ever read from the directory.
const FILES: [(&str, &str); 4] = [
    ("index.html", "text/html; charset=utf-8"),
    ("console.css", "text/css; charset=utf-8"),
    ("console.js", "text/javascript; charset=utf-8"),
    ("engine.js", "text/javascript; charset=utf-8"),
];

/// What the page may do: its own scripts, the verifier's WebAssembly and its blob worker, requests to this
/// appliance only. Sent as a header (the page carries the same policy in a meta tag for when it is opened
/// from disk) with `frame-ancestors`, which only a header can set.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval' blob:; \
     worker-src blob:; connect-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

/// `GET /console/`: the page.
pub(super) async fn index(
    state: State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> Result<Response, ApiError> {
    file(state, peer, Path("index.html".to_string())).await
}

/// `GET /console/{file}`: one of the console's files.
pub(super) async fn file(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let Some(&(name, media_type)) = FILES.iter().find(|(f, _)| *f == name) else {
        return Err(ApiError::not_found(format!("the console has no file {name:?}")));
    };
    let path = state.console_dir.join(name);
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "console_not_installed",
            format!(
                "the auditor's console is not installed: cannot read {} ({e}); build it with console/build.sh \
                 and set [server] console_dir to its output (the Debian package installs it)",
                path.display()
            ),
        )
    })?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // An upgraded appliance serves a new verifier: never run a cached old one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
