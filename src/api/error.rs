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
    /// Seconds to send as `Retry-After` (transient conditions: a full writer queue, a full disk, a busy
    /// database).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with an empty detail object.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), detail: json!({}), retry_after: None }
    }

    /// Adds structured detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    /// Adds a `Retry-After: seconds` header to the answer.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
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

    /// The answer to a failed write: 507 `storage_full` when the database's filesystem is full, 503
    /// `database_busy` when another process held the write lock past the busy timeout (both with
    /// `Retry-After`: nothing of the request was stored, sending it again later is safe), else 500 `internal`.
    pub fn storage(context: &str, err: &crate::store::StoreError) -> Self {
        use crate::store::fault::StorageFault;
        match err.fault() {
            Some(StorageFault::Full) => {
                tracing::error!(error = %err, "{context}: no space left for the database");
                let e = Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    StorageFault::Full.code(),
                    "the appliance's storage is full; nothing of this request was stored — retry later \
                     (the operator must free space)",
                );
                e.with_retry_after(STORAGE_FULL_RETRY_AFTER_S.into())
            }
            Some(StorageFault::Busy) => {
                tracing::error!(error = %err, "{context}: the database is locked by another connection");
                let e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    StorageFault::Busy.code(),
                    format!(
                        "the database stayed locked by another process for {} s; nothing of this request was \
                         stored — retry later",
                        crate::store::WRITE_BUSY_TIMEOUT.as_secs()
                    ),
                );
                e.with_retry_after(DATABASE_BUSY_RETRY_AFTER_S.into())
            }
            Some(StorageFault::Io) => {
                tracing::error!(error = %err, "{context}: the database's storage failed a write or sync");
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    StorageFault::Io.code(),
                    "the appliance's storage failed a write or sync: this request was not acknowledged and may or \
                     may not be stored; the appliance stops — send it again with the same event id once it is back \
                     (a stored copy is answered as a duplicate)",
                );
                e.retry_after = Some(STORAGE_FULL_RETRY_AFTER_S);
                e
            }
            _ => Self::internal(context, err),
        }
    }

    /// The answer to a write the writer did not store: 503 `unavailable` when it stopped, 503 `not_writer` with
    /// `Retry-After` on a standby node (PostgreSQL, docs/HA.md: the producer retries, here or on the writer), the
    /// storage answer of [`ApiError::storage`] otherwise.
    pub fn append(context: &str, err: &crate::ledger::appender::AppendError) -> Self {
        use crate::ledger::appender::AppendError;
        match err {
            AppendError::Stopped => {
                Self::unavailable("the appliance is shutting down; retry on another instance or later")
            }
            AppendError::Store(e) => Self::storage(context, e),
            AppendError::NotWriter(reason) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_writer",
                "this node is a standby, not the log's writer: nothing was stored; send the request again (to the \
                 writer node, or here after the retry delay)",
            )
            .with_detail(json!({ "reason": reason }))
            .with_retry_after(NOT_WRITER_RETRY_AFTER_S.into()),
            #[cfg(feature = "postgres")]
            AppendError::Postgres(e) => Self::internal(context, e),
        }
    }

    /// 501 `not_available_on_postgres`: `route` still reads the SQLite file (or the search database, which has no
    /// PostgreSQL counterpart yet) and this appliance stores its log in PostgreSQL (docs/HA.md).
    pub fn not_available_on_postgres(route: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_available_on_postgres",
            format!(
                "{route} is not available yet on an appliance that stores its log in PostgreSQL; use an appliance \
                 on SQLite for it, or check the log with `anchorlog verify --db postgres://…` meanwhile"
            ),
        )
        .with_detail(json!({"route": route, "storage": "postgres"}))
    }

    /// 503 `unavailable` (shutting down or storage stopped).
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", what)
    }
}

/// `Retry-After` of a 507 `storage_full`: freeing space takes an operator, not a moment.
pub const STORAGE_FULL_RETRY_AFTER_S: u32 = 60;
/// `Retry-After` of a 503 `not_writer`: a standby takes the lease within the lease's time to live.
pub const NOT_WRITER_RETRY_AFTER_S: u32 = 1;
/// `Retry-After` of a 503 `database_busy`: a lock held by another process is usually released soon.
pub const DATABASE_BUSY_RETRY_AFTER_S: u32 = 5;

/// The `code` of an error answer, also put on the response as an extension, so that middleware (the record of
/// refused access, `api::denials`) can read it without parsing the body.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message, "detail": self.detail});
        let mut response = (self.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 501 of a route that still reads only SQLite, as docs/openapi.json documents it for each such route.
    #[test]
    fn a_sqlite_only_route_on_postgres_answers_501_as_documented() {
        let doc: Value = serde_json::from_str(crate::api::openapi::DOCUMENT).unwrap();
        for (path, route) in [("/v1/export", "GET /v1/export"), ("/v1/events", "GET /v1/events (search)")] {
            let e = ApiError::not_available_on_postgres(route);
            assert_eq!(
                (e.status, e.code, e.retry_after),
                (StatusCode::NOT_IMPLEMENTED, "not_available_on_postgres", None)
            );
            assert_eq!(
                e.message,
                format!(
                    "{route} is not available yet on an appliance that stores its log in PostgreSQL; use an \
                     appliance on SQLite for it, or check the log with `anchorlog verify --db postgres://…` meanwhile"
                )
            );
            let example =
                &doc["paths"][path]["get"]["responses"]["501"]["content"]["application/json"]["example"];
            assert_eq!(example, &json!({"code": e.code, "message": e.message, "detail": e.detail}), "{path}");
        }
    }
}
