//! Invalid access attempts (PCI DSS 10.2.1.4): every refused TLS handshake and every 401/403 answer is
//! recorded in the log as an `anchorlog.access_denied` event (docs/FORMAT.md §15), within a budget.
//!
//! Anyone who can reach the port can cause these, so they are bounded: at most
//! [`MAX_RECORDS_PER_MINUTE`] records a minute; attempts beyond it are counted
//! (`anchorlog_access_denied_unrecorded_total`) and the next record carries how many were left out
//! (`suppressed`), so the log still says that they happened and how many. The answer to a refused request is
//! sent after its record is committed, like an audit-access record.

use crate::api::error::ErrorCode;
use crate::api::AppState;
use crate::ledger::appender::AppenderHandle;
use crate::ledger::internal::{access_denied_body, internal_event};
use crate::metrics::Metrics;
use crate::tls::Peer;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most invalid access attempts recorded one by one per minute.
pub const MAX_RECORDS_PER_MINUTE: u32 = 60;

/// The remote address of a connection, put on each of its requests by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// One invalid access attempt.
#[derive(Debug, Clone, Default)]
pub struct Denial {
    /// The error code, or `tls_handshake_refused` (with the handshake's error).
    pub reason: String,
    /// Method and path asked for (`None` for a refused handshake).
    pub endpoint: Option<String>,
    /// The principal the certificate maps to, if any.
    pub principal: Option<String>,
    /// The certificate's identities.
    pub identities: Vec<String>,
    /// The remote address.
    pub remote: Option<SocketAddr>,
}

/// Records invalid access attempts within the budget.
pub struct DenialRecorder {
    appender: AppenderHandle,
    /// `server.record_appliance_events`: when off, attempts are only counted.
    enabled: bool,
    metrics: Arc<Metrics>,
    budget: Mutex<Budget>,
    /// Records per window, and the window ([`MAX_RECORDS_PER_MINUTE`] a minute outside tests).
    max_per_window: u32,
    window: Duration,
}

struct Budget {
    window_start: Instant,
    recorded: u32,
    suppressed: u64,
}

impl DenialRecorder {
    /// A recorder appending through `appender`, or only counting when `enabled` is false.
    pub fn new(appender: AppenderHandle, metrics: Arc<Metrics>, enabled: bool) -> DenialRecorder {
        let budget = Budget { window_start: Instant::now(), recorded: 0, suppressed: 0 };
        DenialRecorder {
            appender,
            enabled,
            metrics,
            budget: Mutex::new(budget),
            max_per_window: MAX_RECORDS_PER_MINUTE,
            window: Duration::from_secs(60),
        }
    }

    /// Counts `denial` and, within the budget, records it (waiting for the commit).
    pub async fn record(&self, denial: Denial) {
        self.metrics.access_denied.fetch_add(1, Ordering::Relaxed);
        if !self.enabled {
            return;
        }
        let suppressed = {
            let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            if b.window_start.elapsed() >= self.window {
                b.window_start = Instant::now();
                b.recorded = 0;
            }
            if b.recorded >= self.max_per_window {
                b.suppressed += 1;
                self.metrics.access_denied_unrecorded.fetch_add(1, Ordering::Relaxed);
                return;
            }
            b.recorded += 1;
            std::mem::take(&mut b.suppressed)
        };
        let remote = denial.remote.map(|r| r.ip().to_string());
        let body = access_denied_body(
            &denial.reason,
            denial.endpoint.as_deref(),
            denial.principal.as_deref(),
            &denial.identities,
            remote.as_deref(),
            suppressed,
        );
        if let Err(e) = self.appender.append(vec![internal_event(&body)]).await {
            tracing::error!(error = %e, reason = denial.reason, "cannot record an invalid access attempt in the log");
        }
    }
}

/// Middleware: records every 401 and 403 answer of the router it wraps.
pub async fn record_denials(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Cheap clones (reference counts): every request passes here, the endpoint text is built for refusals only.
    let peer = req.extensions().get::<Peer>().cloned();
    let remote = req.extensions().get::<RemoteAddr>().map(|r| r.0);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let response = next.run(req).await;
    if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        let reason = response.extensions().get::<ErrorCode>().map_or("forbidden", |c| c.0);
        let denial = Denial {
            reason: reason.to_string(),
            endpoint: Some(format!("{method} {}", uri.path())),
            principal: peer.as_ref().and_then(|p| p.principal.as_ref()).map(|p| p.name.to_string()),
            identities: peer.map(|p| p.identities.to_vec()).unwrap_or_default(),
            remote,
        };
        state.denials.record(denial).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    #[tokio::test]
    async fn attempts_over_the_budget_are_counted_and_named_in_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let (appender, join) = AppenderHandle::start(store::open_writer(&db, "o").unwrap()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut r = DenialRecorder::new(appender.clone(), metrics.clone(), true);
        (r.max_per_window, r.window) = (3, Duration::from_millis(300));
        let denial = |i: u32| Denial { reason: format!("forbidden_role {i}"), ..Denial::default() };
        for i in 0..5 {
            r.record(denial(i)).await;
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        r.record(denial(5)).await;
        let off = DenialRecorder::new(appender.clone(), metrics.clone(), false);
        off.record(denial(6)).await;
        drop((r, off, appender));
        join.join().unwrap();
        let conn = store::open_reader(&db).unwrap();
        let mut st = conn.prepare("SELECT body FROM events ORDER BY seq").unwrap();
        let bodies: Vec<serde_json::Value> = st
            .query_map([], |row| row.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|b| serde_json::from_slice(&b.unwrap()).unwrap())
            .collect();
        let got: Vec<(&str, u64)> = bodies
            .iter()
            .map(|b| (b["reason"].as_str().unwrap(), b["suppressed"].as_u64().unwrap()))
            .collect();
        // Three in the first window, two counted only; the next window's first record names them.
        assert_eq!(
            got,
            vec![
                ("forbidden_role 0", 0),
                ("forbidden_role 1", 0),
                ("forbidden_role 2", 0),
                ("forbidden_role 5", 2)
            ]
        );
        assert_eq!(bodies[0]["type"], "anchorlog.access_denied");
        assert_eq!(metrics.access_denied.load(Ordering::Relaxed), 7, "recording off still counts");
        assert_eq!(metrics.access_denied_unrecorded.load(Ordering::Relaxed), 2);
    }
}
