//! The fenced single writer: at most one node writes the log, and a node that lost the right to can never commit
//! again, whatever it believes.
//!
//! # Two mechanisms
//!
//! 1. **Mutual exclusion among live nodes**: the [`WriterLease`] holds `pg_try_advisory_lock(LEASE_LOCK)` on a
//!    session of its own, opened for nothing else. The server releases the lock when that session ends: the
//!    node's process died, its host vanished (TCP keepalives), an operator ran `pg_terminate_backend`, or the node
//!    stopped sending its keepalive for longer than the lease's time to live (the session's
//!    `idle_session_timeout`: a node frozen by SIGSTOP or a long GC-like pause loses the lock to the server's
//!    timer, not to its own judgment). A second node's `pg_try_advisory_lock` fails while the first holds it:
//!    [`PgError::LeaseHeld`].
//! 2. **The fence**: acquiring also bumps the epoch row, `UPDATE writer_lease SET epoch = epoch + 1, holder = $node
//!    … RETURNING epoch`, and every write transaction starts with [`fence`]: `SELECT epoch FROM writer_lease
//!    FOR SHARE`, and goes on only if it is the epoch the node acquired. The advisory lock alone cannot stop a
//!    node that lost it without noticing (frozen between two statements, its lease session killed while its write
//!    session lives on): the epoch row can, because it is checked by the database inside the very transaction
//!    that would commit.
//!
//! # The race: a takeover's UPDATE against an in-flight write transaction
//!
//! The write transaction's `FOR SHARE` and the takeover's `UPDATE` (a `FOR NO KEY UPDATE` row lock) conflict, so
//! the two are serialised on the row, in one of two orders:
//! - **the writer's FOR SHARE first**: the takeover's UPDATE waits until that transaction commits or rolls back.
//!   Its commit is legitimate: it was made under the epoch that was current for its whole duration, and the
//!   new holder's epoch starts after it. The new holder reads the log's end (next seq, tree) only after its
//!   UPDATE returned, so it continues after that commit: dense seq, no fork. A writer frozen inside its
//!   transaction would hold the takeover up forever, so the write session sets
//!   `idle_in_transaction_session_timeout` ([`WRITE_IDLE_IN_TRANSACTION`]): the server aborts the frozen
//!   transaction (nothing of it lands) and releases the row; the takeover waits at most its `lock_timeout`
//!   ([`LeaseOptions::lock_wait`]) and is retried by its caller.
//! - **the takeover's UPDATE first**: the writer's `FOR SHARE` waits for the takeover's transaction, then (READ
//!   COMMITTED re-reads the newest row version) sees the new epoch: [`PgError::FencedOut`], the transaction is
//!   rolled back before a single row of it was written.
//!
//! There is no third order: no write transaction can write before its `FOR SHARE` returned, and the row lock it
//! holds lasts until its COMMIT. A commit whose answer was lost (COMMIT sent, connection cut) is the ordinary
//! "unknown outcome" of any database: it happened under the old epoch in the first order, or not at all.

use super::{connect, now_ms, PgConnect, PgError};
use std::time::Duration;
use tokio_postgres::Client;

/// Key of the session-level advisory lock that is the writer lease (`"anchorlg"` in ASCII).
pub const LEASE_LOCK: i64 = 0x616e_6368_6f72_6c67;

/// How long a write transaction may sit idle (a frozen writer) before the server aborts it and releases the epoch
/// row to a takeover.
pub const WRITE_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// The lease's timings.
#[derive(Debug, Clone, Copy)]
pub struct LeaseOptions {
    /// Time to live: the lease session's `idle_session_timeout`. A holder that sends no [`WriterLease::keepalive`]
    /// for this long loses its session, and so the lease, to the server. Call `keepalive` at a third of it.
    pub ttl: Duration,
    /// How long acquiring waits for the epoch row (an in-flight write transaction of the old holder) before it
    /// fails; the caller retries.
    pub lock_wait: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { ttl: Duration::from_secs(15), lock_wait: Duration::from_secs(15) }
    }
}

/// The writer lease of one node: an advisory lock on a dedicated session and the epoch it acquired. Dropping it
/// ends the session, which releases the lock (the epoch stays: only the next acquisition moves it).
pub struct WriterLease {
    client: Client,
    epoch: i64,
    node: String,
    backend_pid: i32,
}

impl std::fmt::Debug for WriterLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterLease")
            .field("node", &self.node)
            .field("epoch", &self.epoch)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

impl WriterLease {
    /// Tries to take the lease for `node` (a name recorded in the epoch row for operators). Fails with
    /// [`PgError::LeaseHeld`] while another node's lease session is alive; on success the epoch has moved on by
    /// one, which fences out every earlier holder.
    pub async fn acquire(c: &PgConnect, node: &str, options: LeaseOptions) -> Result<WriterLease, PgError> {
        let client = connect(c).await?;
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        // The server ends this session when it has been idle (no keepalive) for the lease's time to live.
        client
            .execute("SELECT set_config('idle_session_timeout', $1, false)", &[&ms(options.ttl).to_string()])
            .await?;
        client
            .execute("SELECT set_config('lock_timeout', $1, false)", &[&ms(options.lock_wait).to_string()])
            .await?;
        let locked: bool =
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEASE_LOCK]).await?.try_get(0)?;
        if !locked {
            let row = client.query_one("SELECT epoch, holder FROM writer_lease WHERE id = 1", &[]).await?;
            return Err(PgError::LeaseHeld { holder: row.try_get(1)?, epoch: row.try_get(0)? });
        }
        // Autocommit: the bump is committed when this returns. If it fails (lock_timeout behind a frozen writer's
        // transaction), dropping the session releases the advisory lock again.
        let row = client
            .query_one(
                "UPDATE writer_lease SET epoch = epoch + 1, holder = $1, acquired_at_ms = $2 WHERE id = 1 \
                 RETURNING epoch",
                &[&node, &now_ms()],
            )
            .await?;
        let epoch: i64 = row.try_get(0)?;
        let backend_pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.try_get(0)?;
        tracing::info!(node, epoch, "took the writer lease");
        Ok(WriterLease { client, epoch, node: node.to_string(), backend_pid })
    }

    /// The epoch this node acquired: every write transaction must find it in the epoch row.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The node name recorded with the epoch.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The server process of the lease session (`pg_terminate_backend` of it releases the lease).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the lease session is gone (the lock is then released, or about to be).
    pub fn is_lost(&self) -> bool {
        self.client.is_closed()
    }

    /// Keeps the lease session alive (call it at a third of [`LeaseOptions::ttl`]) and checks that the epoch is
    /// still ours: [`PgError::LeaseLost`] when the session ended, [`PgError::FencedOut`] when another node took over.
    pub async fn keepalive(&self) -> Result<(), PgError> {
        let row = self
            .client
            .query_one("SELECT epoch FROM writer_lease WHERE id = 1", &[])
            .await
            .map_err(|e| PgError::LeaseLost(super::error_text(&e)))?;
        let current: i64 = row.try_get(0)?;
        if current != self.epoch {
            return Err(PgError::FencedOut { ours: self.epoch, current });
        }
        Ok(())
    }

    /// Gives the lease up (unlocks and ends the session). The epoch row keeps our epoch until the next holder's.
    pub async fn release(self) -> Result<(), PgError> {
        self.client.execute("SELECT pg_advisory_unlock($1)", &[&LEASE_LOCK]).await?;
        Ok(())
    }
}

/// The fence's statement (the writer prepares it once and pipelines it with BEGIN).
pub const FENCE_SQL: &str = "SELECT epoch FROM writer_lease WHERE id = 1 FOR SHARE";

/// The fence, the first statement of every write transaction: locks the epoch row `FOR SHARE` (a takeover's
/// UPDATE then waits for this transaction) and refuses to go on unless it holds `ours`.
pub async fn fence(tx: &tokio_postgres::Transaction<'_>, ours: i64) -> Result<(), PgError> {
    let current: i64 = tx.query_one(FENCE_SQL, &[]).await?.try_get(0)?;
    if current != ours {
        return Err(PgError::FencedOut { ours, current });
    }
    Ok(())
}
