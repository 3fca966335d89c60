//! The writer of a node on PostgreSQL (docs/HA.md): the same [`AppenderHandle`] the SQLite writer thread serves,
//! its commands applied by [`PgWriter`] under the writer lease, and the node's role as it changes.
//!
//! One task owns the lease and the writer and moves between two roles:
//! - **standby**: tries to take the lease every `poll`; meanwhile every write command is answered at once with
//!   [`AppendError::NotWriter`] (ingest answers 503 with `Retry-After`: the producer retries, on this node or
//!   through the load balancer on the writer). Reads are served by the read sessions, not by this task.
//! - **writer**: took the lease (the epoch moved on, fencing out every earlier holder), opened the writer behind
//!   the fence, **reconciled** the tail it inherits (the last head's signature under a trusted key, the stored
//!   tree against that head, every later event's leaf hash and the tree over them), appended an
//!   `anchorlog.takeover` record as its first write, and then applies groups of commands with one COMMIT each.
//!
//! It steps down — back to standby, saying so in the log — when a group is refused by the fence (another node
//! took the lease: the split-brain case, nothing of that group landed), when the lease session ends, or when the
//! write session broke (a PostgreSQL failover): in every case the node can no longer know it is the only writer,
//! and the next acquisition (which moves the epoch again) is the only way back.

use crate::ledger::appender::{AppendError, AppenderHandle, Command, EraseError, Erased, WriterObserver};
use crate::ledger::internal::internal_event;
use crate::store::pg::{
    read, tree, LeaseOptions, PgCommand, PgConnect, PgDone, PgError, PgWriter, WriterLease,
};
use anchorlog_core::key::PublicKey;
use anchorlog_core::merkle;
use anchorlog_core::record_types as types;
use serde_json::json;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How a node reaches the log and takes part in the lease.
#[derive(Debug, Clone)]
pub struct PgNodeSettings {
    /// The application role's session settings.
    pub connect: PgConnect,
    /// This node's name (recorded with the lease and in its takeover records).
    pub node: String,
    /// The log's origin (checked against the database's).
    pub origin: String,
    /// The lease's time to live and lock wait.
    pub lease: LeaseOptions,
    /// How often a standby tries to take the lease.
    pub poll: Duration,
    /// The keys an inherited head may be signed with: this node's own and its peers' (the keyring).
    pub trusted_keys: Vec<PublicKey>,
    /// What the takeover record says of this node: its signer's description and key id, and the configuration's
    /// digest (as a start record does).
    pub signer: String,
    /// This node's signing key id.
    pub key_id: String,
    /// Its public key (PEM), recorded in the log with its first takeover, as a SQLite start records it: exports
    /// and the read routes name every head's key from it.
    pub public_key_pem: String,
    /// SHA-256 of the configuration text.
    pub config_sha256: String,
}

/// What a node is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// Not the writer: trying to take the lease.
    Standby {
        /// Why (who holds the lease, or what failed), for `/readyz` and the log.
        reason: String,
    },
    /// The writer, since its takeover record.
    Writer {
        /// The lease epoch it writes under.
        epoch: i64,
        /// The seq of its `anchorlog.takeover` record.
        takeover_seq: u64,
    },
}

/// Why a takeover was refused: the inherited log does not reconcile. The node stays a standby and says so; an
/// operator must look (`anchorlog verify --db postgres://…`) before any node writes after it.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] PgError),
    /// The inherited log does not verify.
    #[error("the inherited log does not reconcile at {at}: {problem}; this node will not write after it — run `anchorlog verify --db` on the database")]
    Inherited {
        /// `height N` or `seq N`.
        at: String,
        /// What is wrong.
        problem: String,
    },
}

/// What a node inherited when it took the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inherited {
    /// Events in the log.
    pub events: u64,
    /// Height of the last head, if any.
    pub last_height: Option<u64>,
    /// Tree size of the last head (0 without one).
    pub sealed_size: u64,
}

/// Starts the node's writer task: returns the handle every actor writes through, the node's role, and the task.
pub fn start(
    settings: PgNodeSettings,
    observer: WriterObserver,
) -> (AppenderHandle, watch::Receiver<NodeRole>, tokio::task::JoinHandle<()>) {
    let (commands, rx) = mpsc::channel(crate::ledger::appender::QUEUE_DEPTH);
    let (committed_tx, committed) = watch::channel(0);
    let (fatal_tx, fatal) = watch::channel(None);
    let (role_tx, role) = watch::channel(NodeRole::Standby { reason: "starting".into() });
    let handle = AppenderHandle::from_parts(commands, committed, fatal);
    let task = tokio::spawn(async move {
        Node { settings, observer, committed: committed_tx, role: role_tx, _fatal: fatal_tx }.run(rx).await
    });
    (handle, role, task)
}

struct Node {
    settings: PgNodeSettings,
    observer: WriterObserver,
    committed: watch::Sender<u64>,
    role: watch::Sender<NodeRole>,
    // Never set: on PostgreSQL a failed write makes the node step down, it does not stop the process.
    _fatal: watch::Sender<Option<String>>,
}

/// The lease and the writer of a node in the writer role.
struct Writing {
    lease: WriterLease,
    writer: PgWriter,
}

impl Node {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let Some(writing) = self.stand_by(&mut rx).await else { return };
            match self.write(writing, &mut rx).await {
                Some(reason) => {
                    tracing::error!(node = %self.settings.node, %reason, "stepped down: this node is no longer the writer");
                    self.role.send_replace(NodeRole::Standby { reason });
                }
                None => return,
            }
        }
    }

    /// Answers every command with "not the writer" until the lease is taken and the takeover recorded; `None`
    /// when every handle is gone.
    async fn stand_by(&mut self, rx: &mut mpsc::Receiver<Command>) -> Option<Writing> {
        let mut attempt = tokio::time::interval(self.settings.poll);
        attempt.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => {
                    let reason = match &*self.role.borrow() {
                        NodeRole::Standby { reason } => reason.clone(),
                        NodeRole::Writer { .. } => "taking over".into(),
                    };
                    refuse(command?, &reason);
                }
                _ = attempt.tick() => match self.take_over().await {
                    Ok(writing) => return Some(writing),
                    Err(reason) => {
                        if *self.role.borrow() != (NodeRole::Standby { reason: reason.clone() }) {
                            // Said once per change, not at every attempt.
                            tracing::warn!(node = %self.settings.node, %reason, "standby: not taking the lease");
                            self.role.send_replace(NodeRole::Standby { reason });
                        }
                    }
                },
            }
        }
    }

    /// Takes the lease, opens the writer, reconciles the inherited tail and records the takeover.
    async fn take_over(&mut self) -> Result<Writing, String> {
        let s = &self.settings;
        let lease = WriterLease::acquire(&s.connect, &s.node, s.lease).await.map_err(|e| e.to_string())?;
        let mut writer = PgWriter::open(&s.connect, &lease, &s.origin).await.map_err(|e| e.to_string())?;
        let inherited = reconcile(&writer, &s.trusted_keys).await.map_err(|e| e.to_string())?;
        writer.record_public_key(&s.key_id, &s.public_key_pem).await.map_err(|e| e.to_string())?;
        let body = takeover_body(s, lease.epoch(), &inherited);
        let done = writer.apply_group(&[PgCommand::Append(vec![internal_event(&body)])]).await;
        let takeover_seq = match done.as_deref() {
            Ok([PgDone::Append(Ok(appended))]) => appended.first().map(|a| a.seq),
            Ok(_) => None,
            Err(e) => return Err(format!("recording the takeover failed: {e}")),
        }
        .ok_or_else(|| "recording the takeover failed".to_string())?;
        self.committed.send_replace(writer.next_seq());
        tracing::info!(
            node = %s.node,
            epoch = lease.epoch(),
            takeover_seq,
            inherited_events = inherited.events,
            inherited_height = ?inherited.last_height,
            "took over as the writer: the inherited log reconciled"
        );
        self.role.send_replace(NodeRole::Writer { epoch: lease.epoch(), takeover_seq });
        Ok(Writing { lease, writer })
    }

    /// Applies groups until the node must step down (`Some(reason)`) or every handle is gone (`None`).
    async fn write(&mut self, mut w: Writing, rx: &mut mpsc::Receiver<Command>) -> Option<String> {
        let mut keepalive = tokio::time::interval(self.settings.lease.ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                first = rx.recv() => {
                    let first = first?;
                    let mut group = vec![first];
                    let mut weight = group[0].weight();
                    while weight < crate::ledger::appender::MAX_GROUP_EVENTS {
                        match rx.try_recv() {
                            Ok(cmd) => {
                                weight += cmd.weight();
                                group.push(cmd);
                            }
                            Err(_) => break,
                        }
                    }
                    if let Some(reason) = self.apply(&mut w, group).await {
                        return Some(reason);
                    }
                }
                _ = keepalive.tick() => {
                    if let Err(e) = w.lease.keepalive().await {
                        return Some(format!("the writer lease was lost: {e}"));
                    }
                }
            }
        }
    }

    /// One group, one COMMIT; every waiter answered. `Some(reason)` when the node must step down.
    async fn apply(&mut self, w: &mut Writing, group: Vec<Command>) -> Option<String> {
        // A lease session that ended is not checked here: the fence inside the group's transaction decides, and
        // refuses the group if another node took the lease meanwhile (the keepalive notices a lost lease too).
        let commands: Vec<PgCommand> = group.iter().map(Command::to_pg).collect();
        let start = w.writer.next_seq();
        match w.writer.apply_group(&commands).await {
            Ok(results) => {
                self.committed.send_replace(w.writer.next_seq());
                if w.writer.next_seq() > start {
                    (self.observer.on_commit)(w.writer.next_seq() - start);
                }
                for (command, done) in group.into_iter().zip(results) {
                    command.answer_pg(done);
                }
                None
            }
            Err(e) => {
                let step_down = e.is_fenced_out() || w.lease.is_lost() || w.writer.client().is_closed();
                if step_down {
                    let reason = format!("{e}");
                    group.into_iter().for_each(|c| refuse(c, &reason));
                    return Some(reason);
                }
                tracing::error!(error = %e, "pg writer: group commit failed; nothing of it was stored");
                let message = e.to_string();
                for c in group {
                    c.fail(AppendError::Postgres(PgError::GroupCommit {
                        first_seq: start,
                        source: Box::new(PgError::Sql { code: None, message: message.clone() }),
                    }));
                }
                // The outcome of a COMMIT whose answer was lost is unknown: re-read the log's end behind the fence.
                match w.writer.reload().await {
                    Ok(()) => {
                        self.committed.send_replace(w.writer.next_seq());
                        None
                    }
                    Err(e) => Some(format!("re-reading the log's end failed: {e}")),
                }
            }
        }
    }
}

/// Answers a command at once: this node is not the writer.
fn refuse(command: Command, reason: &str) {
    command.fail(AppendError::NotWriter(reason.to_string()));
}

/// The body of the `anchorlog.takeover` record: which node took the lease under which epoch and key, and the end
/// of the log it inherited and verified.
pub fn takeover_body(s: &PgNodeSettings, epoch: i64, inherited: &Inherited) -> serde_json::Value {
    json!({
        "type": types::TAKEOVER,
        "node": s.node,
        "epoch": epoch,
        "signer": s.signer,
        "key_id": s.key_id,
        "config_sha256": s.config_sha256,
        "inherited_events": inherited.events,
        "inherited_height": inherited.last_height,
        "inherited_sealed_size": inherited.sealed_size,
    })
}

/// Verifies what a new writer inherits before it writes after it: the last head is signed by a trusted key over
/// the stored tree's root at its size, and every event after it hashes to its stored leaf hash and continues that
/// tree to the root the writer loaded. The whole log is the self-verifier's and the auditors' job; this is what
/// this node's next head will vouch for.
pub async fn reconcile(w: &PgWriter, trusted: &[PublicKey]) -> Result<Inherited, TakeoverError> {
    let c = w.client();
    let events = w.next_seq();
    let last = read::last_head(c).await?;
    let (sealed_size, last_height) = match &last {
        None => (0, None),
        Some(h) => {
            let at = || format!("height {}", h.height);
            let key = trusted.iter().find(|k| k.key_id == h.key_id).ok_or_else(|| TakeoverError::Inherited {
                at: at(),
                problem: format!(
                    "the head is signed by key {}, which is not in this node's keyring (storage.keyring_file)",
                    h.key_id
                ),
            })?;
            if !key.verify(h.checkpoint.as_bytes(), &h.signature) {
                return Err(TakeoverError::Inherited {
                    at: at(),
                    problem: format!("the head's signature does not verify under key {}", h.key_id),
                });
            }
            let checkpoint = anchorlog_core::head::Checkpoint::parse(&h.checkpoint).map_err(|e| {
                TakeoverError::Inherited { at: at(), problem: format!("unreadable checkpoint: {e}") }
            })?;
            if checkpoint.tree_size != h.tree_size || checkpoint.root != h.root {
                return Err(TakeoverError::Inherited {
                    at: at(),
                    problem: "the stored size or root differs from the signed checkpoint".into(),
                });
            }
            if tree::root_at(c, h.tree_size).await? != h.root {
                return Err(TakeoverError::Inherited {
                    at: at(),
                    problem: "the stored tree's root at the head's size is not the signed root".into(),
                });
            }
            (h.tree_size, Some(h.height))
        }
    };
    if sealed_size > events {
        return Err(TakeoverError::Inherited {
            at: format!("seq {events}"),
            problem: format!("the last head covers {sealed_size} events but the log holds {events}"),
        });
    }
    let mut frontier = tree::load_frontier(c, sealed_size).await?;
    let mut next = sealed_size;
    while next < events {
        let to = events.min(next + 10_000);
        let page = read::events(c, next, to).await?;
        for ev in &page {
            if ev.seq != next || merkle::leaf_hash(&ev.entry) != ev.leaf_hash {
                return Err(TakeoverError::Inherited {
                    at: format!("seq {next}"),
                    problem: "an unsealed event is missing or does not hash to its stored leaf hash".into(),
                });
            }
            frontier.push(ev.leaf_hash);
            next += 1;
        }
        if page.is_empty() {
            break;
        }
    }
    if next != events || frontier.root() != w.frontier().root() {
        return Err(TakeoverError::Inherited {
            at: format!("seq {next}"),
            problem: "the stored tree over the unsealed events differs from their leaf hashes".into(),
        });
    }
    Ok(Inherited { events, last_height, sealed_size })
}

impl Command {
    /// This command as the PostgreSQL writer takes it.
    fn to_pg(&self) -> PgCommand {
        match self {
            Command::Append { events, .. } => PgCommand::Append(events.clone()),
            Command::StoreHead { head, .. } => PgCommand::StoreHead((**head).clone()),
            Command::StoreTimestamp { token, .. } => PgCommand::StoreTimestamp((**token).clone()),
            Command::StoreCosignature { cosignature, .. } => {
                PgCommand::StoreCosignature(cosignature.0.clone(), cosignature.1.clone())
            }
            Command::Erase { seq, erased_by, reason, .. } => {
                PgCommand::Erase { seq: *seq, erased_by: erased_by.clone(), reason: reason.clone() }
            }
        }
    }

    /// Answers the waiter with the writer's result for this command.
    fn answer_pg(self, done: PgDone) {
        match (self, done) {
            (Command::Append { reply, .. }, PgDone::Append(r)) => {
                let _ = reply.send(r.map_err(AppendError::Postgres));
            }
            (
                Command::StoreHead { reply, .. }
                | Command::StoreTimestamp { reply, .. }
                | Command::StoreCosignature { reply, .. },
                PgDone::Stored(r),
            ) => {
                let _ = reply.send(r.map_err(AppendError::Postgres));
            }
            (Command::Erase { reply, .. }, PgDone::Erase(r)) => {
                let _ = reply.send(
                    r.map(|(record, erasure_leaf_hash)| Erased { record, erasure_leaf_hash }).map_err(|e| {
                        match e {
                            PgError::NoSuchEvent(seq) => EraseError::NoSuchEvent(seq),
                            PgError::AlreadyErased(seq) => EraseError::AlreadyErased(seq),
                            PgError::ApplianceRecord(seq) => EraseError::ApplianceRecord(seq),
                            e => EraseError::Append(AppendError::Postgres(e)),
                        }
                    }),
                );
            }
            // The writer answers each command with its own kind, in order; dropping the reply tells the waiter
            // "writer stopped" rather than leaving it hanging.
            (command, _) => {
                tracing::error!("pg writer: a command's result did not match it; answering it as failed");
                drop(command);
            }
        }
    }
}
