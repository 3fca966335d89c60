//! [`PgReads`]: the read sessions of a node (leader or standby) on a PostgreSQL log. A few sessions, each used by
//! one read at a time; a session that broke (the server restarted, a failover, `pg_terminate_backend`) is dropped
//! and opened again on the next read, and a read that failed because its session died is run once more on a fresh
//! session (reads have no effect, so running one twice is safe). Reads never touch the writer lease.

use super::{connect, PgConnect, PgError};
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio_postgres::{Client, IsolationLevel, Transaction};

/// How many read sessions a node keeps by default.
pub const DEFAULT_READ_SESSIONS: usize = 4;

/// A small pool of read sessions (see the module doc). Cheap to clone: the clones share the sessions.
#[derive(Clone)]
pub struct PgReads {
    inner: Arc<Inner>,
}

struct Inner {
    connect: PgConnect,
    /// Sessions not in use; at most `size`.
    idle: Mutex<Vec<Client>>,
    /// One permit per session: a read waits here when all `size` sessions are busy.
    permits: Semaphore,
    size: usize,
    /// Sessions opened again after one broke (metrics, tests).
    reopened: AtomicU64,
}

impl std::fmt::Debug for PgReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReads")
            .field("connect", &self.inner.connect)
            .field("size", &self.inner.size)
            .finish()
    }
}

/// The answer of a failed read that its session's death explains: the session is gone (the driver saw it close),
/// or the server said so (SQLSTATE class 08, connection exception; 57P, operator intervention: a terminated
/// backend, a shutdown), or the driver failed without a server answer.
fn session_died(client: &Client, e: &PgError) -> bool {
    if client.is_closed() {
        return true;
    }
    match e {
        PgError::Sql { code: None, .. } => true,
        PgError::Sql { code: Some(code), .. } => code.starts_with("08") || code.starts_with("57P"),
        _ => false,
    }
}

impl PgReads {
    /// A pool of `sessions` read sessions (at least one) to the server `connect` names; sessions open lazily, on
    /// the first reads.
    pub fn new(connect: PgConnect, sessions: usize) -> PgReads {
        let size = sessions.max(1);
        PgReads {
            inner: Arc::new(Inner {
                connect,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(size),
                size,
                reopened: AtomicU64::new(0),
            }),
        }
    }

    /// How many times a broken session was replaced by a new one.
    pub fn reopened(&self) -> u64 {
        self.inner.reopened.load(Ordering::Relaxed)
    }

    fn take_idle(&self) -> Option<Client> {
        let mut idle = self.inner.idle.lock().ok()?;
        // A session the server closed while it was idle is noticed here and dropped.
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
            self.inner.reopened.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    fn give_back(&self, c: Client) {
        if c.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.inner.idle.lock() {
            if idle.len() < self.inner.size {
                idle.push(c);
            }
        }
    }

    /// Runs the read `f` on a session of the pool; if it fails because the session died, once more on a new one.
    /// `f` may be called twice, so it must only read.
    pub async fn with<T, F>(&self, f: F) -> Result<T, PgError>
    where
        F: for<'a> Fn(&'a mut Client) -> BoxFuture<'a, Result<T, PgError>>,
    {
        // The semaphore is never closed; if it were, the read would fail rather than run without a permit.
        let _permit =
            self.inner.permits.acquire().await.map_err(|_| PgError::Sql {
                code: None,
                message: "the PostgreSQL read pool is closed".into(),
            })?;
        let mut client = match self.take_idle() {
            Some(c) => c,
            None => connect(&self.inner.connect).await?,
        };
        match f(&mut client).await {
            Ok(v) => {
                self.give_back(client);
                Ok(v)
            }
            Err(e) if session_died(&client, &e) => {
                tracing::info!(error = %e, "a PostgreSQL read session broke; retrying the read on a new session");
                drop(client);
                self.inner.reopened.fetch_add(1, Ordering::Relaxed);
                let mut fresh = connect(&self.inner.connect).await?;
                let result = f(&mut fresh).await;
                self.give_back(fresh);
                result
            }
            Err(e) => {
                self.give_back(client);
                Err(e)
            }
        }
    }
}

/// Starts a `REPEATABLE READ READ ONLY` transaction: every statement in it sees the same snapshot, so a head and
/// the proofs against it read in it agree even while the writer commits.
pub async fn snapshot(c: &mut Client) -> Result<Transaction<'_>, PgError> {
    Ok(c.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?)
}
