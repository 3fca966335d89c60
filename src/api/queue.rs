//! Admission of ingest requests to the writer: at most `limits.writer_queue_depth` requests may wait for (or be
//! applied by) the single writer at once. One more is answered `429 Too Many Requests` with `Retry-After` at
//! once, before anything of it is queued, instead of waiting in an unbounded line while its producer times out
//! and re-sends it.
//!
//! Only producers' requests are admitted here: the appliance's own records (audit access, heads, stops) never
//! wait for a permit and are never refused.

use super::ApiError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounded line of ingest requests before the writer.
#[derive(Debug)]
pub struct WriterQueue {
    permits: Arc<Semaphore>,
    depth: usize,
    retry_after_s: u64,
    throttled: AtomicU64,
    /// Fault injection for tests (`fault::append_delay`): every admitted request holds its place this much
    /// longer, as if the writer were slow. Always `None` in a build without the `fault-injection` feature.
    fault_delay: Option<Duration>,
}

/// A place in the line: held until the writer has answered the request.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl WriterQueue {
    /// A line of `depth` places (at least 1); a refused producer is told to retry after `retry_after_s` seconds.
    pub fn new(depth: usize, retry_after_s: u64) -> Self {
        let depth = depth.max(1);
        WriterQueue {
            permits: Arc::new(Semaphore::new(depth)),
            depth,
            retry_after_s: retry_after_s.max(1),
            throttled: AtomicU64::new(0),
            fault_delay: None,
        }
    }

    /// With the test-only delay a test armed (`fault::append_delay`, logged loudly when set); unchanged in any
    /// build without the `fault-injection` feature, which no release build has.
    pub fn with_fault_from_env(self) -> Self {
        #[cfg(feature = "fault-injection")]
        if let Some(d) = crate::fault::append_delay() {
            tracing::warn!(
                delay_ms = d.as_millis() as u64,
                "test fault hook: every ingest request is delayed (fault injection for tests only)"
            );
            return WriterQueue { fault_delay: Some(d), ..self };
        }
        self
    }

    /// A place in the line, or the 429 answer.
    pub async fn admit(&self) -> Result<Admitted, QueueFull> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(d) = self.fault_delay {
                    tokio::time::sleep(d).await;
                }
                Ok(Admitted { _permit: permit })
            }
            Err(_) => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                Err(QueueFull { depth: self.depth, retry_after_s: self.retry_after_s })
            }
        }
    }

    /// Requests holding a place now.
    pub fn in_use(&self) -> usize {
        self.depth.saturating_sub(self.permits.available_permits())
    }

    /// Prometheus rows: depth, places in use, requests refused.
    pub fn render_metrics(&self, out: &mut String) {
        let mut row = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        row(
            "anchorlog_writer_queue_depth",
            "gauge",
            "Ingest requests that may wait for the writer at once (limits.writer_queue_depth).",
            self.depth.to_string(),
        );
        row(
            "anchorlog_writer_queue_requests",
            "gauge",
            "Ingest requests waiting for or being applied by the writer now.",
            self.in_use().to_string(),
        );
        row(
            "anchorlog_ingest_throttled_total",
            "counter",
            "Ingest requests answered 429 because the writer queue was full (nothing of them stored).",
            self.throttled.load(Ordering::Relaxed).to_string(),
        );
    }
}

/// The writer queue was full: answered `429` with `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull {
    depth: usize,
    retry_after_s: u64,
}

impl From<QueueFull> for ApiError {
    fn from(q: QueueFull) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "writer_queue_full",
            format!(
                "the writer queue is full ({} requests waiting); nothing of this request was stored; retry the \
                 same request after {} s (events with an id are stored once however often they are sent)",
                q.depth, q.retry_after_s
            ),
        )
        .with_detail(json!({"queue_depth": q.depth, "retry_after_s": q.retry_after_s}))
        .with_retry_after(q.retry_after_s)
    }
}

impl IntoResponse for QueueFull {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[tokio::test]
    async fn the_line_is_bounded_and_frees_its_places() {
        let q = WriterQueue::new(2, 3);
        let a = q.admit().await.unwrap();
        let _b = q.admit().await.unwrap();
        assert_eq!(q.in_use(), 2);
        let full = q.admit().await.unwrap_err();
        let e = ApiError::from(full);
        assert_eq!((e.status, e.code), (StatusCode::TOO_MANY_REQUESTS, "writer_queue_full"));
        assert_eq!(e.detail, json!({"queue_depth": 2, "retry_after_s": 3}));
        let response = e.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        drop(a);
        assert!(q.admit().await.is_ok());
        let mut text = String::new();
        q.render_metrics(&mut text);
        assert!(text.contains("anchorlog_ingest_throttled_total 1\n"), "{text}");
        assert!(text.contains("anchorlog_writer_queue_depth 2\n"), "{text}");
    }
}
