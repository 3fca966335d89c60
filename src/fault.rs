//! Test-only fault doubles (issue 14): a wall clock the test moves, a kill -9 at a named point of the code,
//! and a stall of the search indexer.
//!
//! Compiled only with the cargo feature `fault-injection`, which no release build turns on: the crate enables
//! it on itself as a dev-dependency, so `cargo test`/`cargo nextest run` build the library and the binary the
//! tests start with it, and `cargo build --release` / `cargo deb` never do (`.ci/run` checks the packaged
//! binary for the environment names below). Even then a hook does nothing unless its environment variable is set:
//!
//! - `ANCHORLOG_FAULT_CLOCK_FILE=PATH`: the wall clock is the system clock plus the signed number of
//!   milliseconds written in PATH (re-read at every reading; missing or unreadable: 0).
//! - `ANCHORLOG_FAULT_KILL_AT=POINT[@N]`: the process sends itself SIGKILL the N-th time (default 1) it
//!   reaches [`CrashPoint`] POINT, after writing `fault-injection: SIGKILL at POINT` to stderr.
//! - `ANCHORLOG_FAULT_INDEXER_STALL_FILE=PATH`: while PATH exists, the search indexer blocks before each
//!   batch it writes (a starved indexer).
//! - `ANCHORLOG_FAULT_WRITER_DELAY_MS=MS`: the writer thread pauses MS milliseconds after every group commit
//!   (a writer behind its producers: the syslog listener's back-pressure).
//! - `ANCHORLOG_FAULT_APPEND_DELAY_MS=MS`: every ingest request admitted to the writer queue holds its place MS
//!   milliseconds longer (a full queue: 429).

use crate::clock::{Clock, SystemClock};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Points where a test may have the process killed (`ANCHORLOG_FAULT_KILL_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Events are committed and acknowledged; the sealer is about to build the head covering them.
    CommitBeforeSeal,
    /// The head is signed (and the signature checked); it is not stored yet.
    SignBeforeStore,
    /// The head is stored; the timestamper has not been told about it yet.
    StoreBeforeTimestamp,
    /// An erasure's transaction has written the payload removal and its record, and is not committed yet.
    ErasureBeforeCommit,
    /// An erasure is committed; the search fields of the erased event are not scrubbed yet.
    ErasureBeforeScrub,
    /// The indexer re-derives search fields from stored bodies and has written one batch of them.
    SearchRederive,
}

impl CrashPoint {
    /// The name a test gives in `ANCHORLOG_FAULT_KILL_AT`.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::CommitBeforeSeal => "commit_before_seal",
            CrashPoint::SignBeforeStore => "sign_before_store",
            CrashPoint::StoreBeforeTimestamp => "store_before_timestamp",
            CrashPoint::ErasureBeforeCommit => "erasure_before_commit",
            CrashPoint::ErasureBeforeScrub => "erasure_before_scrub",
            CrashPoint::SearchRederive => "search_rederive",
        }
    }
}

/// The armed kill point and after how many passages it fires.
struct KillAt {
    name: String,
    nth: u64,
    passed: AtomicU64,
}

fn kill_at() -> Option<&'static KillAt> {
    static KILL: OnceLock<Option<KillAt>> = OnceLock::new();
    KILL.get_or_init(|| {
        let spec = std::env::var("ANCHORLOG_FAULT_KILL_AT").ok()?;
        let (name, nth) = match spec.split_once('@') {
            Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        Some(KillAt { name, nth, passed: AtomicU64::new(0) })
    })
    .as_ref()
}

/// Kills the process with SIGKILL if the test armed `point` and this is the passage it named.
pub fn crash_point(point: CrashPoint) {
    let Some(k) = kill_at() else { return };
    if k.name != point.name() {
        return;
    }
    if k.passed.fetch_add(1, Ordering::SeqCst) + 1 == k.nth {
        eprintln!("fault-injection: SIGKILL at {}", point.name());
        // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// A wall clock shifted by the offset a test writes to a file.
#[derive(Debug)]
pub struct ShiftedClock {
    offset_file: PathBuf,
}

impl ShiftedClock {
    fn offset_ms(&self) -> i64 {
        std::fs::read_to_string(&self.offset_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }
}

impl Clock for ShiftedClock {
    fn now_ns(&self) -> u64 {
        let real = SystemClock.now_ns() as i128;
        let shifted = real + i128::from(self.offset_ms()) * 1_000_000;
        u64::try_from(shifted.max(0)).unwrap_or(u64::MAX)
    }
}

/// The test's clock, when `ANCHORLOG_FAULT_CLOCK_FILE` is set.
pub fn shifted_clock() -> Option<&'static ShiftedClock> {
    static CLOCK: OnceLock<Option<ShiftedClock>> = OnceLock::new();
    CLOCK
        .get_or_init(|| {
            std::env::var_os("ANCHORLOG_FAULT_CLOCK_FILE").map(|f| ShiftedClock { offset_file: f.into() })
        })
        .as_ref()
}

/// Blocks the calling (indexer) thread while the test's stall file exists.
pub fn indexer_stall() {
    static STALL: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(path) =
        STALL.get_or_init(|| std::env::var_os("ANCHORLOG_FAULT_INDEXER_STALL_FILE").map(Into::into))
    else {
        return;
    };
    if path.exists() {
        // The test waits for this line: from here on nothing is taken off the queue until the file is removed.
        tracing::warn!(file = %path.display(), "fault double: the search indexer is stalled while the file exists");
        while path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The writer's pause after each group commit, when `ANCHORLOG_FAULT_WRITER_DELAY_MS` is set.
pub fn writer_delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var("ANCHORLOG_FAULT_WRITER_DELAY_MS").ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// The extra time an admitted ingest request holds its queue place, when `ANCHORLOG_FAULT_APPEND_DELAY_MS` is set.
pub fn append_delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var("ANCHORLOG_FAULT_APPEND_DELAY_MS").ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// Which hooks the environment armed, for one warning line at start (empty: none).
pub fn armed() -> Vec<&'static str> {
    let mut v = Vec::new();
    for (var, what) in [
        ("ANCHORLOG_FAULT_CLOCK_FILE", "test clock"),
        ("ANCHORLOG_FAULT_KILL_AT", "kill point"),
        ("ANCHORLOG_FAULT_INDEXER_STALL_FILE", "indexer stall"),
        ("ANCHORLOG_FAULT_WRITER_DELAY_MS", "writer delay"),
        ("ANCHORLOG_FAULT_APPEND_DELAY_MS", "ingest queue delay"),
    ] {
        if std::env::var_os(var).is_some() {
            v.push(what);
        }
    }
    v
}
