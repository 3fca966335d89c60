//! systemd integration (`Type=notify`): `READY=1` once the listeners are bound and the start is on record,
//! `STATUS=` lines an operator sees in `systemctl status`, `WATCHDOG=1` only while the sealer makes progress,
//! and `STOPPING=1` when a stop begins. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.
//!
//! The watchdog ping is not a timer that always fires: it is sent only when the sealer went round its loop
//! within the watchdog interval. A signer that hangs inside the HSM, or a writer stuck on the disk, stops the
//! sealer — and so the pings — and systemd restarts the service (`WatchdogSec=` in the unit).

use crate::metrics::Metrics;
use sd_notify::NotifyState;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Sends notifications; failures (no systemd, a closed socket) are logged once at debug level and ignored:
/// the service runs the same with or without a supervisor.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd notification not sent");
    }
}

/// `READY=1` with a first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: a stop began (in-flight requests finish, everything acknowledged is sealed).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: sealing everything acknowledged")]);
}

/// The status line: events stored, heads, and the age of the last seal.
pub fn status_line(metrics: &Metrics, committed: u64) -> String {
    let r = Ordering::Relaxed;
    let heads = metrics.last_height.load(r) + 1;
    let last = metrics.last_seal_ms.load(r);
    let age = if last > 0 {
        format!("{} s ago", (crate::store::now_ms() - last).max(0) / 1000)
    } else {
        "never".into()
    };
    format!("{committed} events, {heads} heads, last seal {age}")
}

/// Whether the sealer went round its loop within `window`.
fn sealer_alive(metrics: &Metrics, window: Duration) -> bool {
    let last = metrics.sealer_alive_ms.load(Ordering::Relaxed);
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    last > 0 && crate::store::now_ms() - last <= window_ms
}

/// Pings the watchdog at half its interval while the sealer is alive, and refreshes the status line, until
/// `stop` turns true. `committed` reads the number of stored events. Returns at once without systemd.
pub async fn watchdog_and_status(
    metrics: Arc<Metrics>,
    committed: impl Fn() -> u64 + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let watchdog = sd_notify::watchdog_enabled();
    if watchdog.is_none() && std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // Status every 5 s; the watchdog at half its interval when that is shorter.
    let period = watchdog.map_or(Duration::from_secs(5), |w| (w / 2).min(Duration::from_secs(5)));
    let mut ticker = tokio::time::interval(period);
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let status = status_line(&metrics, committed());
        match watchdog {
            Some(w) if sealer_alive(&metrics, w) => {
                if withheld {
                    tracing::info!("the sealer is making progress again; watchdog pings resumed");
                    withheld = false;
                }
                send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            }
            Some(w) => {
                if !withheld {
                    tracing::error!(
                        watchdog_s = w.as_secs(),
                        "the sealer has not made progress within the watchdog interval (a hung signer or writer?); \
                         withholding watchdog pings so that systemd restarts the service"
                    );
                    withheld = true;
                }
                send(&[NotifyState::Status(&format!("sealer stuck; {status}"))]);
            }
            None => send(&[NotifyState::Status(&status)]),
        }
    }
}
