//! What `/readyz` answers: 200 while the appliance does its job, 503 with the reasons while it does not.
//!
//! "Alive" (`/healthz`) is not "ready": an appliance that stores events it cannot seal, timestamp or have
//! cosigned, or whose disk is about to fill, still answers HTTP — a load balancer or a monitor must see the
//! difference. Every reason has a stable `code` and a message that says what is wrong.

use crate::config::ReadinessConfig;
use crate::metrics::Metrics;
use crate::store::fault::StorageFault;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One reason the appliance is not ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reason {
    /// Stable code: `signer_failing`, `signer_hung`, `signer_backing_off`, `sealing_stalled`, `timestamps_overdue`, `cosignatures_overdue`,
    /// `witness_refused`, `disk_nearly_full`, `self_verification_failed`, and while writes fail for a storage fault
    /// `storage_full`, `database_busy`, `database_corrupt`, `storage_io_error`; on PostgreSQL `standby` (not the writer).
    pub code: &'static str,
    /// What is wrong, for a human.
    pub message: String,
}

/// The thresholds and the paths the checks need.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `sealing.seal_interval_ms`: events waiting three of these without a head are stalled.
    pub seal_interval: Duration,
    /// `[readiness]`.
    pub limits: ReadinessConfig,
    /// `[alerting] min_free_disk_percent`: one threshold for the alert and for readiness (0: off).
    pub min_free_disk_percent: u8,
    /// The directory of the database (its filesystem's free space).
    pub database_dir: PathBuf,
}

fn age_s(since_ms: i64) -> i64 {
    (crate::store::now_ms() - since_ms).max(0) / 1000
}

impl Readiness {
    /// The reasons the appliance is not ready now (empty: ready).
    pub fn reasons(&self, m: &Metrics) -> Vec<Reason> {
        let r = Ordering::Relaxed;
        let mut out = Vec::new();
        let failing = m.sealing_failing_since_ms.load(r);
        if failing > 0 {
            out.push(Reason {
                code: "signer_failing",
                message: format!(
                    "signing or storing heads has failed for {} s ({} failed attempts in all); events are stored \
                     but not covered by a signed head — see the log for the signer's error",
                    age_s(failing),
                    m.seal_failures.load(r)
                ),
            });
        }
        if let Some(h) = m.signer.get() {
            out.extend(signer_reasons(h));
        }
        let waiting = m.unsealed_since_ms.load(r);
        let stall_ms = i64::try_from(self.seal_interval.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
        if waiting > 0 && crate::store::now_ms() - waiting > stall_ms {
            out.push(Reason {
                code: "sealing_stalled",
                message: format!(
                    "committed events have waited {} s for a signed head, more than 3 seal intervals",
                    age_s(waiting)
                ),
            });
        }
        if let Some((n, Some(age))) = m.untimestamped() {
            if age > self.limits.max_untimestamped_age_s as f64 {
                out.push(Reason {
                    code: "timestamps_overdue",
                    message: format!(
                        "{n} heads have no RFC 3161 token, the oldest for {age:.0} s (more than \
                         readiness.max_untimestamped_age_s = {}): no TSA issues valid tokens",
                        self.limits.max_untimestamped_age_s
                    ),
                });
            }
        }
        if let Some((n, Some(age))) = m.below_quorum() {
            if age > self.limits.max_uncosigned_age_s as f64 {
                out.push(Reason {
                    code: "cosignatures_overdue",
                    message: format!(
                        "{n} heads lack the witness quorum, the oldest for {age:.0} s (more than \
                         readiness.max_uncosigned_age_s = {})",
                        self.limits.max_uncosigned_age_s
                    ),
                });
            }
        }
        for w in m.witness_statuses().iter().filter(|w| w.state == "refused") {
            out.push(Reason {
                code: "witness_refused",
                message: format!(
                    "witness {} refused this log's heads (evidence of a rollback or a fork): {}",
                    w.name,
                    w.last_error.as_deref().unwrap_or("")
                ),
            });
        }
        if let Some((fault, since)) = m.storage.failing() {
            out.push(Reason {
                code: fault.code(),
                message: storage_message(fault, age_s(since), &self.database_dir),
            });
        }
        if let Some(free) = self.free_disk_percent() {
            if self.min_free_disk_percent > 0 && free < f64::from(self.min_free_disk_percent) {
                out.push(Reason {
                    code: "disk_nearly_full",
                    message: format!(
                        "{free:.1} % free on the database's filesystem ({}), below alerting.min_free_disk_percent \
                         = {}",
                        self.database_dir.display(),
                        self.min_free_disk_percent
                    ),
                });
            }
        }
        out
    }

    /// Free space of the database's filesystem, percent of its size (`None` if it cannot be read).
    pub fn free_disk_percent(&self) -> Option<f64> {
        free_disk_percent(&self.database_dir)
    }
}

/// What `/readyz` says about a hung signer or one backed off after an error retrying cannot fix. The messages
/// carry no counts or ages (those are in `signer_failing` and `/metrics`), so they stay the same while it lasts.
fn signer_reasons(h: &crate::signer::SignerHealth) -> Vec<Reason> {
    let r = Ordering::Relaxed;
    let mut out = Vec::new();
    if h.hung_since_ms.load(r) > 0 {
        out.push(Reason {
            code: "signer_hung",
            message: format!(
                "the signer did not answer within signer.sign_timeout_ms = {} ms: the waiting thread was abandoned \
                 and a fresh session is opened at each attempt; check the HSM or TPM and its link",
                h.timeout_ms.load(r)
            ),
        });
    }
    if let Some(b) = h.backoff() {
        out.push(Reason {
            code: "signer_backing_off",
            message: format!(
                "the signer failed with an error that retrying cannot fix: {}. Attempts are spaced out, doubling up \
                 to signer.backoff_max_ms = {} ms, so that a wrong PIN cannot lock the token; fix the cause (a wrong \
                 PIN: write the right one to the PIN file) and the next attempt picks it up",
                b.error,
                h.backoff_max_ms.load(r)
            ),
        });
    }
    out
}

/// What `/readyz` says about a failing storage: what happened, for how long, and what to do.
fn storage_message(fault: StorageFault, age_s: i64, dir: &std::path::Path) -> String {
    let what = match fault {
        StorageFault::Full => format!(
            "the filesystem of the database ({}) is full: writes fail with no space left, so events are refused \
             (507) and heads are not stored; free space there — the appliance resumes by itself",
            dir.display()
        ),
        StorageFault::Busy => "another process holds the database's write lock longer than the busy timeout: \
             writes fail (503 database_busy); find and stop it (`fuser` on the database file)"
            .to_string(),
        StorageFault::Corrupt => "the database file is damaged: writes fail; stop the appliance and run \
             `anchorlog verify --db`"
            .to_string(),
        StorageFault::Io => "the operating system fails reads or writes of the database: check the disk".to_string(),
    };
    format!("{what} (failing for {age_s} s)")
}

/// Free space (available to unprivileged users) of the filesystem holding `dir`, percent of its size.
pub fn free_disk_percent(dir: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; zeroed is a valid value that the call overwrites.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `s` a writable statvfs for the call's duration.
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 || s.f_blocks == 0 {
        return None;
    }
    Some(s.f_bavail as f64 * 100.0 / s.f_blocks as f64)
}
