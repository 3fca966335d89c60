//! `server.syslog_listen`: syslog over mutual TLS (RFC 5425) from rsyslog, syslog-ng and devices.
//!
//! Who may send is decided exactly as on the HTTPS listener, by the same [`TrustHandle`] (client CAs, CRLs, the
//! clientAuth EKU, principals bound to their issuers; a reload closes connections it no longer accepts): the
//! client certificate maps to a principal with the producer role, and that principal to the one `[[source]]` of
//! format `syslog` listing it. Anything else is refused after the handshake, recorded like a 403
//! (`anchorlog.access_denied`), and the connection closed before a byte of it is read.
//!
//! Each message (one frame, RFC 6587 octet counting or LF, `[syslog] framing`) is one event, stored byte exact
//! ([`crate::formats::syslog`] for the fields). There is no event id and so no de-duplication.
//!
//! Durability. RFC 5425 has no acknowledgement: a sender cannot learn from the protocol when a message is safe.
//! A message is durable once the writer's group commit that holds it has returned (fsync); until then it is *in
//! flight*. Each connection holds at most `syslog.max_in_flight_messages` messages and `max_in_flight_bytes`
//! bytes in flight: at that bound the listener stops reading the connection (TCP flow control then stops the
//! sender, whose own queue holds the rest) until commits free room — back-pressure, never a drop. A connection that ends — cleanly, by the idle timeout, a
//! framing error or a reload — has everything it delivered whole committed before its task ends; a frame cut
//! by the end of the connection stores nothing. What can be lost is what a crash (kill -9, power) catches in
//! flight — at most `max_in_flight_messages` per connection plus what the sender had written into its socket —
//! and what the sender discarded itself. A sender that needs certainty keeps its own disk queue and checks the
//! count of `anchorlog_syslog_frames_total{outcome="stored"}` or searches the log.
//!
//! A write that fails (full disk, a lock held elsewhere) is retried with back-off while the connection is not
//! read: the sender is held back, nothing is dropped. Only a shutdown ends the retries; the messages then left
//! uncommitted are counted `unstored` (and logged).

pub mod framing;

use crate::api::denials::{Denial, DenialRecorder};
use crate::api::sources::SourceRegistry;
use crate::config::{Role, SyslogConfig};
use crate::ledger::appender::{AppendError, AppenderHandle};
use crate::ledger::event::NewEvent;
use crate::listen::{Gate, ListenerKind, RateLimitedLog};
use crate::metrics::Metrics;
use crate::tls::reload::{Registration, TrustHandle};
use anchorlog_core::entry::{payload_digest, AuthMethod, SALT_LEN};
use rand::RngCore as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 64 * 1024;
/// First and longest pause between attempts to store a batch the writer refused (storage fault).
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the syslog listener shares with every connection.
pub struct SyslogContext {
    /// The writer.
    pub appender: AppenderHandle,
    /// Sources (reloaded with the trust).
    pub sources: Arc<SourceRegistry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Records of refused access.
    pub denials: Arc<DenialRecorder>,
    /// `[syslog]`.
    pub config: SyslogConfig,
    /// `[search] enabled`: whether normalized fields are extracted.
    pub search_enabled: bool,
    /// `limits.handshake_timeout_ms`.
    pub handshake_timeout: Duration,
}

/// Accepts syslog connections on `listener` until `shutdown` resolves; then stops reading every connection,
/// lets each commit what it received whole (at most `grace`), and returns.
pub async fn serve(
    listener: TcpListener,
    trust: Arc<TrustHandle>,
    ctx: Arc<SyslogContext>,
    shutdown: impl Future<Output = ()>,
    mut gate: Gate,
    grace: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote, admission) = tokio::select! {
            a = gate.accept(&listener) => a,
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let (ctx, trust, stop) = (ctx.clone(), trust.clone(), stop_rx.clone());
        connections.spawn(async move {
            let _admission = admission;
            connection(ctx, trust, tcp, remote, stop).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!("syslog listener: no new connections; committing what open connections received");
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("syslog listener: grace period over; closing remaining connections");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Refuses an established connection: counted, recorded like a 403, closed.
async fn refuse(
    ctx: &SyslogContext,
    remote: SocketAddr,
    reason: &str,
    message: &str,
    peer: &crate::tls::Peer,
) {
    tracing::info!(%remote, reason, identities = ?peer.identities, "syslog connection refused: {message}");
    let denial = Denial {
        reason: reason.to_owned(),
        endpoint: Some("syslog".into()),
        principal: peer
            .principal
            .as_ref()
            .map(|p| p.name.to_string())
            .or(peer.wrong_issuer.as_ref().map(|p| p.to_string())),
        identities: peer.identities.as_ref().clone(),
        remote: Some(remote),
        listener: ListenerKind::Syslog,
    };
    ctx.denials.record(denial).await;
}

/// One connection: handshake, who it is, then read and commit until it ends.
async fn connection(
    ctx: Arc<SyslogContext>,
    trust: Arc<TrustHandle>,
    tcp: TcpStream,
    remote: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let kind = ListenerKind::Syslog;
    let current = trust.current();
    let acceptor = tokio_rustls::TlsAcceptor::from(current.server_config.clone());
    let tls = match tokio::time::timeout(ctx.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "syslog: TLS handshake refused");
            let reason = format!("tls_handshake_refused: {e}");
            ctx.denials
                .record(Denial { reason, remote: Some(remote), listener: kind, ..Denial::default() })
                .await;
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "syslog: TLS handshake timed out");
            ctx.denials.limit_hit(kind, "handshake_timeout");
            return;
        }
    };
    let chain: Vec<_> = tls.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
    let peer = current.principals.resolve_chain(&chain);
    drop(current);
    let principal = match crate::api::authorize(Some(&peer), Role::Producer) {
        Ok(p) => p,
        Err(e) => return refuse(&ctx, remote, e.code, &e.message, &peer).await,
    };
    let Some(source) = ctx.sources.syslog_source_for(&principal.name) else {
        let message = format!(
            "principal {:?} is in no [[source]] of format \"syslog\"; add it to one's principals",
            principal.name
        );
        return refuse(&ctx, remote, "no_syslog_source", &message, &peer).await;
    };
    let registration = trust.register(chain, Some(principal.name.clone()));
    tracing::debug!(%remote, principal = %principal.name, source = %source.name, "syslog connection accepted");
    let origin = Origin { producer: principal.name.clone(), source: source.name.clone() };
    pump(ctx, tls, remote, origin, registration, stop).await;
}

/// Who a connection's events are recorded as.
#[derive(Clone)]
struct Origin {
    producer: Arc<str>,
    source: Arc<str>,
}

/// Reads frames and hands them to this connection's committer, holding at most `max_in_flight_messages`
/// uncommitted; returns once everything received whole is committed (or the appliance stops).
async fn pump<S: tokio::io::AsyncRead + Unpin>(
    ctx: Arc<SyslogContext>,
    mut stream: S,
    remote: SocketAddr,
    origin: Origin,
    registration: Registration,
    stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(InFlight::new(&ctx.config));
    // A handful of batches queued between reader and committer; the in-flight budget is the real bound.
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>(16);
    let committer = tokio::spawn(commit_loop(ctx.clone(), origin, rx, permits.clone(), stop.clone()));
    let ended = read_loop(&ctx, &mut stream, tx, &permits, &registration, stop).await;
    tracing::debug!(%remote, ended, "syslog connection: reading ended; committing what it delivered");
    let _ = committer.await;
    drop(registration);
}

/// Why reading a connection ended (for the debug log).
async fn read_loop<S: tokio::io::AsyncRead + Unpin>(
    ctx: &SyslogContext,
    stream: &mut S,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    permits: &Arc<InFlight>,
    registration: &Registration,
    mut stop: watch::Receiver<bool>,
) -> &'static str {
    let c = &ctx.config;
    let instruments = &ctx.metrics.instruments;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let idle = Duration::from_secs(c.idle_timeout_s);
    loop {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut pos = 0;
        let mut failed = None;
        loop {
            let frame = match framing::next_frame(&buf[pos..], c.framing, c.max_message_bytes) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let message = buf[pos + frame.message.start..pos + frame.message.end].to_vec();
            pos += frame.consumed;
            if message.is_empty() {
                continue;
            }
            if !permits.try_take(message.len()) {
                // The bound: hand over what is decoded, then read nothing more until the writer catches up.
                ctx.metrics.instruments.syslog_read_paused();
                if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
                    return "committer stopped";
                }
                let ended = tokio::select! {
                    taken = permits.take(message.len()) => (!taken).then_some("closed"),
                    _ = stop.wait_for(|s| *s) => Some("shutdown"),
                    _ = registration.closed() => Some("certificate no longer accepted"),
                };
                if let Some(ended) = ended {
                    // The message in hand arrived whole: it goes to the committer (the bound no longer matters,
                    // reading ends here); what follows it in the buffer is not read on.
                    let _ = tx.send(vec![message]).await;
                    count_cut(ctx, &buf[pos..]);
                    return ended;
                }
            }
            batch.push(message);
        }
        buf.drain(..pos);
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return "committer stopped";
        }
        if let Some(e) = failed {
            instruments.syslog_frames(e.outcome(), 1);
            tracing::warn!(error = %e, "syslog connection closed: {e}; nothing of that frame is stored");
            return e.outcome();
        }
        let read = tokio::select! {
            r = tokio::time::timeout(idle, stream.read(&mut chunk)) => r,
            _ = stop.wait_for(|s| *s) => {
                count_cut(ctx, &buf);
                return "shutdown";
            }
            _ = registration.closed() => {
                tracing::info!("syslog connection closed: its certificate is no longer accepted");
                count_cut(ctx, &buf);
                return "certificate no longer accepted";
            }
        };
        match read {
            Err(_) => {
                ctx.denials.limit_hit(ListenerKind::Syslog, "idle_timeout");
                count_cut(ctx, &buf);
                return "idle timeout";
            }
            Ok(Ok(0)) => {
                count_cut(ctx, &buf);
                return "end of stream";
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                // A TCP reset or a TLS error (a peer that closes without close_notify ends here too).
                tracing::debug!(error = %e, "syslog connection: read failed");
                count_cut(ctx, &buf);
                return "read error";
            }
        }
    }
}

/// A connection ended with `buf` holding the start of a frame: nothing of it is stored.
fn count_cut(ctx: &SyslogContext, buf: &[u8]) {
    // Blank lines between LF frames are no frame.
    if buf.iter().any(|b| !matches!(b, b'\n' | b'\r')) {
        ctx.metrics.instruments.syslog_frames("truncated", 1);
        tracing::info!(
            bytes = buf.len(),
            "syslog connection ended inside a frame; nothing of that frame is stored"
        );
    }
}

/// Commits the batches of one connection in order, merging what queued meanwhile into one append; frees their
/// in-flight room after each commit.
async fn commit_loop(
    ctx: Arc<SyslogContext>,
    origin: Origin,
    mut rx: mpsc::Receiver<Vec<Vec<u8>>>,
    permits: Arc<InFlight>,
    stop: watch::Receiver<bool>,
) {
    let mut failures = RateLimitedLog::default();
    while let Some(mut messages) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            messages.extend(more);
        }
        let n = messages.len();
        let bytes: usize = messages.iter().map(Vec::len).sum();
        let mut pause = RETRY_INITIAL;
        loop {
            let received_at_ns = crate::store::now_ns();
            let events = new_events(&ctx, &origin, &messages, received_at_ns);
            match ctx.appender.append(events).await {
                Ok(_) => {
                    let m = &ctx.metrics;
                    m.storage.succeeded();
                    m.events_appended.fetch_add(n as u64, Ordering::Relaxed);
                    m.instruments.ingested(&origin.source, "syslog", n as u64);
                    m.instruments.syslog_frames("stored", n as u64);
                    m.instruments
                        .ack_seconds
                        .observe(crate::store::now_ns().saturating_sub(received_at_ns) as f64 / 1e9);
                    break;
                }
                Err(AppendError::Stopped) => return unstored(&ctx, n, &mut rx),
                // A refused write (a full disk, a busy database; on PostgreSQL a standby or a failover) is
                // retried: the sender keeps the messages until they are stored.
                Err(e) => {
                    if let AppendError::Store(se) = &e {
                        ctx.metrics.storage.observe::<()>(Err(se));
                    }
                    if let Some(unlogged) = failures.occurred() {
                        tracing::error!(error = %e, messages = n, not_logged = unlogged,
                            "syslog: the writer refused a batch; the connection is not read until it is stored \
                             (retrying with back-off)");
                    }
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.wait_for(|s| *s) => return unstored(&ctx, n, &mut rx),
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
        permits.release(n, bytes);
    }
}

/// What one connection may hold received but uncommitted: `syslog.max_in_flight_messages` messages and
/// `syslog.max_in_flight_bytes` bytes of them (the memory bound: a connection holds at most that much, plus one
/// read buffer and one partial frame of at most `max_message_bytes`).
struct InFlight {
    messages: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl InFlight {
    fn new(c: &SyslogConfig) -> InFlight {
        InFlight {
            messages: Arc::new(Semaphore::new(c.max_in_flight_messages)),
            bytes: Arc::new(Semaphore::new(c.max_in_flight_bytes)),
        }
    }

    /// Takes room for one message of `len` bytes if there is some now (the configuration makes every message fit:
    /// `max_in_flight_bytes` ≥ `max_message_bytes`).
    fn try_take(&self, len: usize) -> bool {
        let Ok(len) = u32::try_from(len) else { return false };
        let Ok(message) = self.messages.clone().try_acquire_owned() else { return false };
        match self.bytes.clone().try_acquire_many_owned(len) {
            Ok(bytes) => {
                message.forget();
                bytes.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for room for one message of `len` bytes; false if it can never come (a closed budget).
    async fn take(&self, len: usize) -> bool {
        let Ok(len) = u32::try_from(len) else { return false };
        let Ok(message) = self.messages.clone().acquire_owned().await else { return false };
        let Ok(bytes) = self.bytes.clone().acquire_many_owned(len).await else { return false };
        message.forget();
        bytes.forget();
        true
    }

    /// Gives back the room of `n` committed messages of `bytes` bytes in all.
    fn release(&self, n: usize, bytes: usize) {
        self.messages.add_permits(n);
        self.bytes.add_permits(bytes);
    }
}

/// The appliance stops with `n` messages (and whatever is still queued) received whole but not committed.
fn unstored(ctx: &SyslogContext, n: usize, rx: &mut mpsc::Receiver<Vec<Vec<u8>>>) {
    let mut total = n;
    while let Ok(more) = rx.try_recv() {
        total += more.len();
    }
    ctx.metrics.instruments.syslog_frames("unstored", total as u64);
    tracing::error!(
        messages = total,
        "syslog: stopping with messages received but not stored; the sender does not know"
    );
}

fn new_events(
    ctx: &SyslogContext,
    origin: &Origin,
    messages: &[Vec<u8>],
    received_at_ns: u64,
) -> Vec<NewEvent> {
    let now_ms = (received_at_ns / 1_000_000) as i64;
    let mut rng = rand::thread_rng();
    messages
        .iter()
        .map(|raw| {
            let mut salt = [0u8; SALT_LEN];
            rng.fill_bytes(&mut salt);
            let parsed = crate::formats::syslog::event(raw.clone(), now_ms, ctx.search_enabled);
            NewEvent {
                received_at_ns,
                producer: origin.producer.clone(),
                source: origin.source.clone(),
                auth: AuthMethod::Mtls,
                format: crate::formats::Format::Syslog.as_str(),
                source_id: None,
                payload_sha256: payload_digest(&salt, &parsed.raw),
                salt,
                body: parsed.raw,
                fields: parsed.fields,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_flight_room_is_bounded_by_messages_and_by_bytes_and_comes_back_after_a_commit() {
        let c =
            SyslogConfig { max_in_flight_messages: 3, max_in_flight_bytes: 10, ..SyslogConfig::default() };
        let room = InFlight::new(&c);
        assert!(room.try_take(4) && room.try_take(4));
        assert!(!room.try_take(4), "12 bytes would exceed 10");
        assert!(room.try_take(2), "10 bytes, 3 messages: full");
        assert!(!room.try_take(0), "a fourth message exceeds 3 messages");
        assert_eq!((room.messages.available_permits(), room.bytes.available_permits()), (0, 0));
        room.release(2, 8);
        assert_eq!((room.messages.available_permits(), room.bytes.available_permits()), (2, 8));
        assert!(room.take(8).await);
        assert!(!room.try_take(1));
    }
}
