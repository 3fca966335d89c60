//! Invalid access attempts (PCI DSS 10.2.1.4): every refused TLS handshake and every 401/403 answer is
//! recorded in the log as an `anchorlog.access_denied` event (docs/FORMAT.md §15), within budgets.
//!
//! Anyone who can reach a port can cause these, so they are bounded: per listener at most
//! `limits.denial_records_per_minute` records a minute, and of those at most
//! `limits.denial_records_per_address_per_minute` from one client address — junk on the public source port
//! cannot use up the records of refusals on the mTLS port, and one address cannot use up a listener's. Attempts
//! beyond a budget are counted (`anchorlog_access_denied_unrecorded_total`) and summed up, once a minute, in one
//! `anchorlog.access_denied_summary` record per window that had any: how many per listener, and the addresses that
//! caused most. So the log still says that they happened and how many, exactly. The answer to a refused request
//! is sent after its record is committed, like an audit-access record.

use crate::api::error::ErrorCode;
use crate::api::AppState;
use crate::config::LimitsConfig;
use crate::ledger::appender::AppenderHandle;
use crate::ledger::internal::{
    access_denied_body, access_denied_summary_body, internal_event, SuppressedFrom,
};
use crate::listen::{address_key, ListenerKind};
use crate::metrics::Metrics;
use crate::tls::Peer;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Length of one budget window: the budgets are per minute, and each minute's suppressed attempts get one summary.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose budgets one listener tracks per window. Addresses beyond it (an attacker with a large
/// address block) share the listener's budget only, and the summary counts them without naming them.
pub const MAX_TRACKED_ADDRESSES: usize = 4_096;
/// Addresses a summary names (those with the most suppressed attempts).
pub const SUMMARY_TOP_ADDRESSES: usize = 10;

/// The remote address of a connection, put on each of its requests by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// One invalid access attempt.
#[derive(Debug, Clone)]
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
    /// The listener it came in on.
    pub listener: ListenerKind,
}

impl Default for Denial {
    fn default() -> Self {
        Denial {
            reason: String::new(),
            endpoint: None,
            principal: None,
            identities: Vec::new(),
            remote: None,
            listener: ListenerKind::Mtls,
        }
    }
}

/// Records invalid access attempts within the budgets, and sums up the rest.
pub struct DenialRecorder {
    appender: AppenderHandle,
    /// `server.record_appliance_events`: when off, attempts are only counted.
    enabled: bool,
    metrics: Arc<Metrics>,
    window: Mutex<Window>,
    per_listener: u32,
    per_address: u32,
    /// How often [`DenialRecorder::summarize`] closes a window ([`WINDOW`] outside tests).
    every: Duration,
}

/// What one window has recorded and suppressed so far.
#[derive(Default)]
struct Window {
    since_ms: i64,
    listeners: BTreeMap<&'static str, ListenerWindow>,
}

#[derive(Default)]
struct ListenerWindow {
    recorded: u32,
    suppressed: u64,
    /// Per address key: (recorded, suppressed), for at most [`MAX_TRACKED_ADDRESSES`] addresses.
    addresses: HashMap<IpAddr, (u32, u64)>,
}

impl DenialRecorder {
    /// A recorder appending through `appender` within the budgets of `limits`, or only counting when `enabled` is
    /// false.
    pub fn new(
        appender: AppenderHandle,
        metrics: Arc<Metrics>,
        enabled: bool,
        limits: &LimitsConfig,
    ) -> DenialRecorder {
        DenialRecorder {
            appender,
            enabled,
            metrics,
            window: Mutex::new(Window { since_ms: crate::store::now_ms(), ..Window::default() }),
            per_listener: limits.denial_records_per_minute,
            per_address: limits.denial_records_per_address_per_minute,
            every: WINDOW,
        }
    }

    /// Counts one client cut off on `listener` by `limit` (the recorder holds the metrics every listener shares).
    pub fn limit_hit(&self, listener: ListenerKind, limit: &str) {
        self.metrics.instruments.limit_hit(listener.as_str(), limit);
    }

    /// Counts `denial` and, within the budgets, records it (waiting for the commit).
    pub async fn record(&self, denial: Denial) {
        self.metrics.access_denied.fetch_add(1, Ordering::Relaxed);
        if !self.enabled {
            return;
        }
        if !self.take_budget(denial.listener, denial.remote.map(|r| r.ip())) {
            self.metrics.access_denied_unrecorded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let remote = denial.remote.map(|r| r.ip().to_string());
        let body = access_denied_body(
            &denial.reason,
            denial.endpoint.as_deref(),
            denial.principal.as_deref(),
            &denial.identities,
            remote.as_deref(),
            denial.listener.as_str(),
        );
        if let Err(e) = self.appender.append(vec![internal_event(&body)]).await {
            tracing::error!(error = %e, reason = denial.reason, "cannot record an invalid access attempt in the log");
        }
    }

    /// Whether an attempt on `listener` from `ip` may be recorded; counts it as suppressed if not.
    fn take_budget(&self, listener: ListenerKind, ip: Option<IpAddr>) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let l = w.listeners.entry(listener.as_str()).or_default();
        let tracked = l.addresses.len();
        let address = ip.map(address_key).and_then(|key| match l.addresses.contains_key(&key) {
            true => l.addresses.get_mut(&key),
            false if tracked < MAX_TRACKED_ADDRESSES => Some(l.addresses.entry(key).or_default()),
            false => None,
        });
        let fits = l.recorded < self.per_listener;
        match address {
            Some((recorded, suppressed)) => {
                if fits && *recorded < self.per_address {
                    *recorded += 1;
                    l.recorded += 1;
                    true
                } else {
                    *suppressed += 1;
                    l.suppressed += 1;
                    false
                }
            }
            None if fits => {
                l.recorded += 1;
                true
            }
            None => {
                l.suppressed += 1;
                false
            }
        }
    }

    /// Ends the current window: writes its summary record if any attempt was suppressed in it (waiting for the
    /// commit), and starts the next with fresh budgets.
    pub async fn close_window(&self) {
        let now = crate::store::now_ms();
        let closed = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *w, Window { since_ms: now, ..Window::default() })
        };
        let by_listener: BTreeMap<&str, u64> = closed
            .listeners
            .iter()
            .filter(|(_, l)| l.suppressed > 0)
            .map(|(k, l)| (*k, l.suppressed))
            .collect();
        if by_listener.is_empty() || !self.enabled {
            return;
        }
        let mut top: Vec<SuppressedFrom> = closed
            .listeners
            .iter()
            .flat_map(|(listener, l)| {
                l.addresses.iter().filter(|(_, (_, n))| *n > 0).map(|(ip, (_, n))| SuppressedFrom {
                    listener,
                    remote: match ip {
                        IpAddr::V4(v4) => v4.to_string(),
                        IpAddr::V6(v6) => format!("{v6}/64"),
                    },
                    suppressed: *n,
                })
            })
            .collect();
        let addresses = top.len();
        top.sort_by(|a, b| b.suppressed.cmp(&a.suppressed).then_with(|| a.remote.cmp(&b.remote)));
        top.truncate(SUMMARY_TOP_ADDRESSES);
        let body = access_denied_summary_body(closed.since_ms, now, &by_listener, addresses, &top);
        if let Err(e) = self.appender.append(vec![internal_event(&body)]).await {
            let total: u64 = by_listener.values().sum();
            tracing::error!(error = %e, suppressed = total, "cannot record the summary of suppressed access records");
        }
    }

    /// Closes a window every minute until `stop` resolves (the last window is the caller's to close, after the
    /// listeners have stopped).
    pub async fn summarize(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.close_window().await,
                _ = &mut stop => return,
            }
        }
    }
}

/// Middleware: records every 401 and 403 answer of the router it wraps.
pub async fn record_denials(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Cheap clones (reference counts): every request passes here, the endpoint text is built for refusals only.
    let peer = req.extensions().get::<Peer>().cloned();
    let remote = req.extensions().get::<RemoteAddr>().map(|r| r.0);
    let listener = req.extensions().get::<ListenerKind>().copied().unwrap_or(ListenerKind::Mtls);
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
            listener,
        };
        state.denials.record(denial).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    fn bodies(db: &std::path::Path) -> Vec<serde_json::Value> {
        let conn = store::open_reader(db).unwrap();
        let mut st = conn.prepare("SELECT body FROM events ORDER BY seq").unwrap();
        let rows = st.query_map([], |row| row.get::<_, Vec<u8>>(0)).unwrap();
        rows.map(|b| serde_json::from_slice(&b.unwrap()).unwrap()).collect()
    }

    fn denial(i: u32, listener: ListenerKind, ip: &str) -> Denial {
        let remote = Some(SocketAddr::new(ip.parse().unwrap(), 40_000));
        Denial { reason: format!("bad_credentials {i}"), remote, listener, ..Denial::default() }
    }

    #[tokio::test]
    async fn budgets_are_per_listener_and_address_and_the_rest_is_summed_up_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let (appender, join) = AppenderHandle::start(store::open_writer(&db, "o").unwrap()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let limits = LimitsConfig {
            denial_records_per_minute: 4,
            denial_records_per_address_per_minute: 2,
            ..LimitsConfig::default()
        };
        let r = DenialRecorder::new(appender.clone(), metrics.clone(), true, &limits);
        // Junk on the source port from one address: 2 recorded (its address budget), 98 suppressed.
        for i in 0..100 {
            r.record(denial(i, ListenerKind::Source, "198.51.100.7")).await;
        }
        // Two more addresses on the source port: the listener's budget (4) lets 2 more in, then suppresses.
        for i in 0..3 {
            r.record(denial(i, ListenerKind::Source, "198.51.100.8")).await;
            r.record(denial(i, ListenerKind::Source, "198.51.100.9")).await;
        }
        // The mTLS port has its own budget: refusals there are still recorded.
        r.record(denial(0, ListenerKind::Mtls, "192.0.2.1")).await;
        r.record(denial(1, ListenerKind::Mtls, "192.0.2.2")).await;
        r.close_window().await;
        // A window without suppressed attempts writes no summary; the budgets start afresh.
        r.record(denial(9, ListenerKind::Source, "198.51.100.7")).await;
        r.close_window().await;
        let off = DenialRecorder::new(appender.clone(), metrics.clone(), false, &limits);
        off.record(denial(0, ListenerKind::Mtls, "192.0.2.1")).await;
        off.close_window().await;
        drop((r, off, appender));
        join.join().unwrap();
        let all = bodies(&db);
        let records: Vec<(&str, &str, &str)> = all
            .iter()
            .filter(|b| b["type"] == "anchorlog.access_denied")
            .map(|b| {
                (
                    b["listener"].as_str().unwrap(),
                    b["remote"].as_str().unwrap(),
                    b["reason"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            records,
            vec![
                ("source", "198.51.100.7", "bad_credentials 0"),
                ("source", "198.51.100.7", "bad_credentials 1"),
                ("source", "198.51.100.8", "bad_credentials 0"),
                ("source", "198.51.100.9", "bad_credentials 0"),
                ("mtls", "192.0.2.1", "bad_credentials 0"),
                ("mtls", "192.0.2.2", "bad_credentials 1"),
                ("source", "198.51.100.7", "bad_credentials 9"),
            ]
        );
        let summaries: Vec<&serde_json::Value> =
            all.iter().filter(|b| b["type"] == "anchorlog.access_denied_summary").collect();
        assert_eq!(summaries.len(), 1, "{all:?}");
        let s = summaries[0];
        assert_eq!(s["suppressed"], 98 + 2 + 2);
        assert_eq!(s["by_listener"], serde_json::json!({"source": 102}));
        assert_eq!(s["addresses"], 3);
        assert_eq!(
            s["top_addresses"],
            serde_json::json!([
                {"listener": "source", "remote": "198.51.100.7", "suppressed": 98},
                {"listener": "source", "remote": "198.51.100.8", "suppressed": 2},
                {"listener": "source", "remote": "198.51.100.9", "suppressed": 2},
            ])
        );
        assert!(s["since_ms"].as_i64().unwrap() <= s["until_ms"].as_i64().unwrap());
        assert_eq!(
            metrics.access_denied.load(Ordering::Relaxed),
            100 + 6 + 2 + 1 + 1,
            "recording off still counts"
        );
        assert_eq!(metrics.access_denied_unrecorded.load(Ordering::Relaxed), 102);
    }

    #[tokio::test]
    async fn the_summary_task_closes_a_window_each_period_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let (appender, join) = AppenderHandle::start(store::open_writer(&db, "o").unwrap()).unwrap();
        let limits = LimitsConfig {
            denial_records_per_minute: 1,
            denial_records_per_address_per_minute: 1,
            ..LimitsConfig::default()
        };
        let mut r = DenialRecorder::new(appender.clone(), Arc::new(Metrics::new()), true, &limits);
        r.every = Duration::from_millis(200);
        let r = Arc::new(r);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(r.clone().summarize(async move {
            let _ = stop_rx.await;
        }));
        for i in 0..3 {
            r.record(denial(i, ListenerKind::Mtls, "192.0.2.1")).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop_tx.send(());
        task.await.unwrap();
        drop((r, appender));
        join.join().unwrap();
        let all = bodies(&db);
        let kinds: Vec<(&str, u64)> = all
            .iter()
            .map(|b| (b["type"].as_str().unwrap(), b["suppressed"].as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(kinds, vec![("anchorlog.access_denied", 0), ("anchorlog.access_denied_summary", 2)]);
    }
}
