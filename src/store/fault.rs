//! Which storage failures callers must tell apart: a full disk, a database locked by another process, a damaged
//! file. SQLite reports them as result codes; the API answers them with their own status and stable `code`
//! (507 `storage_full`, 503 `database_busy`) and `/readyz` names them, instead of one opaque 500.

use super::StoreError;
use rusqlite::ErrorCode;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

/// A storage failure a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The filesystem holding the database (or its WAL) has no space left (`SQLITE_FULL`, ENOSPC).
    Full,
    /// Another connection held the write lock longer than the busy timeout (`SQLITE_BUSY`/`SQLITE_LOCKED`).
    Busy,
    /// The file is damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`).
    Corrupt,
    /// The operating system failed a read, write or sync (`SQLITE_IOERR`).
    Io,
}

impl StorageFault {
    /// The fault behind a SQLite error, if it is one of these.
    pub fn of_sqlite(e: &rusqlite::Error) -> Option<StorageFault> {
        match e.sqlite_error_code()? {
            ErrorCode::DiskFull => Some(StorageFault::Full),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some(StorageFault::Busy),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Some(StorageFault::Corrupt),
            ErrorCode::SystemIoFailure => Some(StorageFault::Io),
            _ => None,
        }
    }

    /// The stable code the API and `/readyz` use for it.
    pub fn code(self) -> &'static str {
        match self {
            StorageFault::Full => "storage_full",
            StorageFault::Busy => "database_busy",
            StorageFault::Corrupt => "database_corrupt",
            StorageFault::Io => "storage_io_error",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            StorageFault::Full => 1,
            StorageFault::Busy => 2,
            StorageFault::Corrupt => 3,
            StorageFault::Io => 4,
        }
    }

    fn from_u8(v: u8) -> Option<StorageFault> {
        match v {
            1 => Some(StorageFault::Full),
            2 => Some(StorageFault::Busy),
            3 => Some(StorageFault::Corrupt),
            4 => Some(StorageFault::Io),
            _ => None,
        }
    }
}

impl StoreError {
    /// The storage fault behind this error, if any (a failed group commit keeps the fault of its cause).
    pub fn fault(&self) -> Option<StorageFault> {
        match self {
            StoreError::Sql(e) | StoreError::Open { source: e, .. } => StorageFault::of_sqlite(e),
            StoreError::GroupCommit { fault, .. } => *fault,
            _ => None,
        }
    }
}

/// The last write outcome of the writer as its callers saw it: since when writes fail, and why. Shared by the
/// ingest handlers, the sealer and the timestamper (they set it) and `/readyz` (it reads it).
#[derive(Debug, Default)]
pub struct StorageHealth {
    since_ms: AtomicI64,
    fault: AtomicU8,
}

impl StorageHealth {
    /// Notes a failed write: the first failure after a success starts the outage clock.
    pub fn failed(&self, fault: StorageFault) {
        self.fault.store(fault.to_u8(), Ordering::Relaxed);
        let _ = self.since_ms.compare_exchange(0, super::now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Notes a committed write: the storage works again.
    pub fn succeeded(&self) {
        if self.since_ms.load(Ordering::Relaxed) != 0 {
            self.since_ms.store(0, Ordering::Relaxed);
            self.fault.store(0, Ordering::Relaxed);
            tracing::info!("storage: writes succeed again");
        }
    }

    /// Notes the outcome of a write whose error may be a storage fault (other errors change nothing).
    pub fn observe<T>(&self, result: Result<T, &StoreError>) {
        match result {
            Ok(_) => self.succeeded(),
            Err(e) => {
                if let Some(f) = e.fault() {
                    self.failed(f);
                }
            }
        }
    }

    /// The current fault and since when (ms since the epoch), `None` while writes succeed.
    pub fn failing(&self) -> Option<(StorageFault, i64)> {
        let since = self.since_ms.load(Ordering::Relaxed);
        let fault = StorageFault::from_u8(self.fault.load(Ordering::Relaxed))?;
        (since > 0).then_some((fault, since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn sqlite_codes_map_to_faults() {
        assert_eq!(StorageFault::of_sqlite(&sqlite(rusqlite::ffi::SQLITE_FULL)), Some(StorageFault::Full));
        assert_eq!(StorageFault::of_sqlite(&sqlite(rusqlite::ffi::SQLITE_BUSY)), Some(StorageFault::Busy));
        assert_eq!(StorageFault::of_sqlite(&sqlite(rusqlite::ffi::SQLITE_LOCKED)), Some(StorageFault::Busy));
        assert_eq!(
            StorageFault::of_sqlite(&sqlite(rusqlite::ffi::SQLITE_CORRUPT)),
            Some(StorageFault::Corrupt)
        );
        assert_eq!(
            StorageFault::of_sqlite(&sqlite(rusqlite::ffi::SQLITE_IOERR_FSYNC)),
            Some(StorageFault::Io)
        );
        assert_eq!(StorageFault::of_sqlite(&sqlite(rusqlite::ffi::SQLITE_CONSTRAINT)), None);
        assert_eq!(StorageFault::of_sqlite(&rusqlite::Error::QueryReturnedNoRows), None);
    }

    #[test]
    fn a_group_commit_failure_keeps_its_fault() {
        let e =
            StoreError::GroupCommit { first_seq: 7, fault: Some(StorageFault::Full), message: "x".into() };
        assert_eq!(e.fault(), Some(StorageFault::Full));
        assert_eq!(StoreError::Sql(sqlite(rusqlite::ffi::SQLITE_BUSY)).fault(), Some(StorageFault::Busy));
    }

    #[test]
    fn health_starts_at_the_first_failure_and_clears_on_success() {
        let h = StorageHealth::default();
        assert_eq!(h.failing(), None);
        h.failed(StorageFault::Full);
        let (f, since) = h.failing().expect("failing");
        assert_eq!(f, StorageFault::Full);
        h.failed(StorageFault::Full);
        assert_eq!(h.failing().map(|x| x.1), Some(since), "the clock starts at the first failure");
        h.observe::<()>(Err(&StoreError::Corrupt { table: "t", key: 0, problem: "p".into() }));
        assert_eq!(h.failing().map(|x| x.0), Some(StorageFault::Full), "a non-storage error changes nothing");
        h.observe(Ok(()));
        assert_eq!(h.failing(), None);
    }
}
