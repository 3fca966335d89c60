//! Wall-clock jumps (issue 14.7): a task compares the wall clock with the monotonic clock every
//! [`CHECK_INTERVAL`]; a step of more than [`JUMP_THRESHOLD`] either way is logged and recorded in the log as an
//! `anchorlog.clock_jump` record (docs/FORMAT.md §21), so an auditor reading receive and seal times knows where
//! they stop being comparable.
//!
//! What a jump does elsewhere, by design: seal times never go backwards (the sealer holds the previous head's
//! time until the clock passes it again), producers' credentials carry no time and so are never refused for a
//! jump, and timeouts and intervals run on the monotonic clock. docs/RELIABILITY.md has the whole table.

use crate::clock::{Jump, JumpDetector};
use crate::ledger::appender::AppenderHandle;
use crate::ledger::internal::{clock_jump_body, internal_event};
use crate::ledger::outage::LifecycleGate;
use std::time::Duration;
use tokio::sync::watch;

/// How often the clocks are compared.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A wall-clock step larger than this (either way, relative to the monotonic clock) is a jump. NTP slews at
/// most 0.5 ms/s, so 5 s is far above drift and far below the steps that matter (minutes, hours).
pub const JUMP_THRESHOLD: Duration = Duration::from_secs(5);

/// Watches for jumps until `stop` turns true; records each through `sink` (none: log only).
pub async fn run(sink: Option<(AppenderHandle, LifecycleGate)>, mut stop: watch::Receiver<bool>) {
    let mut detector = JumpDetector::new(JUMP_THRESHOLD);
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(jump) = detector.check() {
            record(&sink, jump).await;
        }
    }
}

async fn record(sink: &Option<(AppenderHandle, LifecycleGate)>, jump: Jump) {
    let direction = if jump.delta_ms > 0 { "forward" } else { "backward" };
    tracing::warn!(
        direction,
        delta_ms = jump.delta_ms,
        old_time_ms = jump.expected_ms,
        new_time_ms = jump.observed_ms,
        "the wall clock jumped; seal times are held until it passes the last head's time again (check NTP)"
    );
    let Some((appender, gate)) = sink else { return };
    let event = internal_event(&clock_jump_body(jump.expected_ms, jump.observed_ms));
    match gate.append(appender, event).await {
        Some(Ok(done)) => tracing::info!(seq = done.first().map(|a| a.seq), "clock jump recorded in the log"),
        Some(Err(e)) => tracing::error!(error = %e, "cannot record the clock jump in the log"),
        None => {}
    }
}
