//! API errors: every failure is JSON `{"code": …, "message": …, "detail": {…}}` with a stable `code`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (documented in the README; never changes meaning).
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
    /// Structured detail (index, line, limit …).
    pub detail: Value,
    /// Seconds for a `Retry-After` header (429 and 503 answers a client should retry).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with an empty detail object.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), detail: json!({}), retry_after_s: None }
    }

    /// Adds structured detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    /// Adds a `Retry-After: seconds` header to the answer.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 500 `internal`: details go to the log, not to the client.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the appliance log")
    }

    /// 503 `unavailable` (shutting down or storage stopped).
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", what)
    }
}

/// The `code` of an error answer, also put on the response as an extension, so that middleware (the record of
/// refused access, `api::denials`) can read it without parsing the body.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message, "detail": self.detail});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            super::queue::retry_after_header(&mut response, seconds);
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}
