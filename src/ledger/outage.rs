//! Outage records (PCI DSS 10.7.2/10.7.3): when a critical control — the head signer, the time-stamping
//! authorities — starts failing, and when it works again, the appliance records it in its own log, so the
//! duration of every failure is on record in the same signed chain (an `anchorlog.outage` event with
//! `state: "started"`, then one with `state: "ended"`; docs/FORMAT.md §14).
//!
//! The records share the log's end with the stop record, which must stay the last event of a clean run (the
//! next start reads it to tell a clean stop from a crash). [`LifecycleGate`] orders them: outage records are
//! appended under its read lock, and once the server has closed it (under the write lock, just before the stop
//! record) none is appended any more.

use crate::alerts::{AlertKind, Alerts};
use crate::ledger::appender::{AppendError, Appended, AppenderHandle};
use crate::ledger::event::NewEvent;
use crate::ledger::internal::{internal_event, outage_body, OutageState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

/// Whether the appliance may still append its own outage records; closed for good before the stop record.
#[derive(Clone, Default)]
pub struct LifecycleGate(Arc<RwLock<bool>>);

impl LifecycleGate {
    /// Closes the gate: waits for an outage record being appended, then refuses new ones. Call it right before
    /// appending the stop record.
    pub async fn close(&self) {
        *self.0.write().await = true;
    }

    /// Appends one of the appliance's records unless the gate is closed (`None` then): outage records,
    /// witness refusals, self-verification records — anything the appliance writes on its own between its start and stop records.
    pub async fn append(
        &self,
        appender: &AppenderHandle,
        event: NewEvent,
    ) -> Option<Result<Vec<Appended>, AppendError>> {
        let closed = self.0.read().await;
        if *closed {
            return None;
        }
        let done = appender.append(vec![event]).await;
        drop(closed);
        Some(done)
    }
}

/// Raises an alert once an outage has lasted `threshold` (checked at each failed attempt), and resolves it at
/// the outage's end.
#[derive(Clone)]
pub struct OutageAlert {
    /// Where alerts go.
    pub alerts: Arc<Alerts>,
    /// How long an outage lasts before it is alerted.
    pub threshold: Duration,
}

/// Follows one component's successes and failures and records the start and end of each outage.
pub struct OutageRecorder {
    component: &'static str,
    /// `None`: records are off (`server.record_appliance_events = false`); the state is still followed.
    sink: Option<(AppenderHandle, LifecycleGate)>,
    /// When the current outage started (epoch ms), and how many attempts failed since.
    outage: Option<(i64, u64)>,
    /// Alerts past a threshold, if configured.
    alert: Option<OutageAlert>,
}

impl OutageRecorder {
    /// A recorder for `component` (`"signer"`, `"tsa"`) appending through `appender`, or recording nothing
    /// when `sink` is `None`.
    pub fn new(component: &'static str, sink: Option<(AppenderHandle, LifecycleGate)>) -> OutageRecorder {
        OutageRecorder { component, sink, outage: None, alert: None }
    }

    /// Records outages through `sink` from now on.
    pub fn set_sink(&mut self, sink: (AppenderHandle, LifecycleGate)) {
        self.sink = Some(sink);
    }

    /// Also alerts outages that last past the threshold (and their end).
    pub fn set_alert(&mut self, alert: OutageAlert) {
        self.alert = Some(alert);
    }

    /// Whether an outage is in progress.
    pub fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// An attempt failed with `error`: the first failure after a success starts an outage and is recorded.
    pub async fn failed(&mut self, error: &str) {
        self.failed_with(error, false).await
    }

    /// Like [`OutageRecorder::failed`] for an error retrying cannot fix (a wrong PIN, a missing key): alerted at
    /// once, not after the threshold, since it lasts until an operator acts.
    pub async fn failed_unrecoverable(&mut self, error: &str) {
        self.failed_with(error, true).await
    }

    async fn failed_with(&mut self, error: &str, alert_now: bool) {
        let since = match &mut self.outage {
            Some((since, failures)) => {
                *failures += 1;
                *since
            }
            None => {
                let since = crate::store::now_ms();
                self.outage = Some((since, 1));
                self.record(OutageState::Started { error }, since).await;
                since
            }
        };
        self.alert_if_long(since, error, alert_now);
    }

    /// An attempt succeeded: an outage in progress ends and is recorded with its start and failure count.
    pub async fn succeeded(&mut self) {
        if let Some((since, failures)) = self.outage.take() {
            self.record(OutageState::Ended { failed_attempts: failures }, since).await;
            if let (Some(a), Some(kind)) = (&self.alert, AlertKind::of_component(self.component)) {
                let secs = (crate::store::now_ms() - since).max(0) / 1000;
                let message =
                    format!("{} works again after {secs} s and {failures} failed attempts", self.component);
                a.alerts.resolve(kind, self.component, &message);
            }
        }
    }

    fn alert_if_long(&self, since: i64, error: &str, alert_now: bool) {
        let (Some(a), Some(kind)) = (&self.alert, AlertKind::of_component(self.component)) else { return };
        let lasted_ms = (crate::store::now_ms() - since).max(0);
        if !alert_now && u128::try_from(lasted_ms).unwrap_or(0) < a.threshold.as_millis() {
            return;
        }
        let failures = self.outage.map_or(0, |(_, n)| n);
        let message = format!(
            "{} has been failing for {} s ({failures} failed attempts); last error: {error}",
            self.component,
            lasted_ms / 1000
        );
        let detail = serde_json::json!({"component": self.component, "since_ms": since,
                                        "failed_attempts": failures, "error": error});
        a.alerts.raise(kind, self.component, &message, detail);
    }

    async fn record(&self, state: OutageState<'_>, since_ms: i64) {
        let Some((appender, gate)) = &self.sink else { return };
        let event = internal_event(&outage_body(self.component, &state, since_ms));
        match gate.append(appender, event).await {
            Some(Ok(_)) => tracing::info!(
                component = self.component,
                state = state.as_str(),
                "outage recorded in the log"
            ),
            Some(Err(e)) => {
                tracing::error!(component = self.component, error = %e, "cannot record the outage in the log")
            }
            None => tracing::warn!(
                component = self.component,
                "stopping: outage change not recorded after the stop record"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    fn bodies(db: &std::path::Path) -> Vec<serde_json::Value> {
        let conn = store::open_reader(db).unwrap();
        let mut st = conn.prepare("SELECT body FROM events ORDER BY seq").unwrap();
        st.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|b| serde_json::from_slice(&b.unwrap()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn an_outage_is_recorded_once_at_its_start_and_once_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let (appender, join) = AppenderHandle::start(store::open_writer(&db, "o").unwrap()).unwrap();
        let gate = LifecycleGate::default();
        let mut r = OutageRecorder::new("signer", Some((appender.clone(), gate.clone())));
        r.succeeded().await;
        r.failed("CKR_DEVICE_REMOVED").await;
        r.failed("CKR_DEVICE_REMOVED").await;
        r.failed("CKR_TOKEN_NOT_PRESENT").await;
        assert!(r.in_outage());
        r.succeeded().await;
        r.succeeded().await;
        // After the gate closes (the server is about to write its stop record), nothing more is appended.
        r.failed("late").await;
        gate.close().await;
        r.succeeded().await;
        drop((r, appender));
        join.join().unwrap();
        let b = bodies(&db);
        assert_eq!(b.len(), 3, "{b:?}");
        let since = b[0]["since_ms"].as_i64().unwrap();
        assert_eq!(
            b[0],
            serde_json::json!({"type": "anchorlog.outage", "component": "signer", "state": "started",
                               "since_ms": since, "error": "CKR_DEVICE_REMOVED"})
        );
        assert_eq!(
            b[1],
            serde_json::json!({"type": "anchorlog.outage", "component": "signer", "state": "ended",
                               "since_ms": since, "failed_attempts": 3})
        );
        assert_eq!((b[2]["state"].as_str(), b[2]["error"].as_str()), (Some("started"), Some("late")));
    }

    #[tokio::test]
    async fn an_outage_past_the_threshold_is_alerted_once_and_resolved_at_its_end() {
        let alerts = Alerts::disabled("o");
        let mut r = OutageRecorder::new("sealing", None);
        r.set_alert(OutageAlert { alerts: alerts.clone(), threshold: Duration::from_secs(3600) });
        r.failed("CKR_DEVICE_REMOVED").await;
        assert!(!alerts.is_raised(AlertKind::SignerOutage, "sealing"), "not yet past the threshold");
        r.succeeded().await;
        r.set_alert(OutageAlert { alerts: alerts.clone(), threshold: Duration::ZERO });
        r.failed("CKR_DEVICE_REMOVED").await;
        assert!(alerts.is_raised(AlertKind::SignerOutage, "sealing"));
        r.failed("CKR_DEVICE_REMOVED").await;
        r.succeeded().await;
        assert!(!alerts.is_raised(AlertKind::SignerOutage, "sealing"), "resolved at the outage's end");
    }

    #[tokio::test]
    async fn without_a_sink_the_outage_state_is_still_followed() {
        let mut r = OutageRecorder::new("tsa", None);
        r.failed("timeout").await;
        assert!(r.in_outage());
        r.succeeded().await;
        assert!(!r.in_outage());
    }
}
