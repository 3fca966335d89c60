//! Connection-level abuse limits shared by the appliance's listeners (mTLS, source, health): how many
//! connections a listener holds and how many of them one client address may hold, and how a failing `accept()`
//! is retried.
//!
//! Anyone who can reach a port can open connections, so each listener bounds them twice: `limits.max_connections`
//! in all (further clients wait in the kernel's accept queue) and `limits.max_connections_per_address` per client
//! address (further connections from that address are closed right after `accept()`, so one address — or one
//! IPv6 /64 — cannot take the slots every producer needs). `accept()` fails when the process is out of file
//! descriptors; the pending connection stays queued, so retrying at once would spin a core and write a log line
//! per attempt. [`AcceptBackoff`] pauses instead (doubling up to a ceiling) and logs one line per minute.

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request's handle on its own connection: the accept loop closes the connection when [`Self::close`] is
/// called. For answers that cannot end by themselves while the client does not read (`GET /v1/stream` to a
/// consumer that stopped reading): the answer's end never reaches a client that takes no bytes, so only closing
/// the connection frees it.
#[derive(Debug, Clone, Default)]
pub struct ConnectionCloser(Arc<tokio::sync::Notify>);

impl ConnectionCloser {
    /// Asks the accept loop to close the connection (a request in flight on it included).
    pub fn close(&self) {
        self.0.notify_one();
    }

    /// Resolves once [`Self::close`] was called (also if it was called before this is awaited).
    pub async fn closed(&self) {
        self.0.notified().await;
    }
}

/// How often a repeated condition (failed accepts, connections over the per-address cap) is logged at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Which listener a connection came in on; its name labels metrics and records of refused access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// `server.listen`: mutual TLS.
    Mtls,
    /// `server.source_listen`: server-authenticated TLS for secret-authenticated sources.
    Source,
    /// `server.health_listen`: plain HTTP, health and metrics only.
    Health,
    /// `server.syslog_listen`: syslog over mutual TLS (RFC 5425).
    Syslog,
    /// `anchorlog witness`'s listener (its own process; logs only, no metrics).
    Witness,
}

impl ListenerKind {
    /// The name used in metrics labels, records and the OpenAPI document's `x-listeners`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Mtls => "mtls",
            ListenerKind::Source => "source",
            ListenerKind::Health => "health",
            ListenerKind::Syslog => "syslog",
            ListenerKind::Witness => "witness",
        }
    }
}

/// The key a client address is counted under: an IPv4 address as it is (an IPv4-mapped IPv6 address as its
/// IPv4 address), an IPv6 address by its /64 — the block one subscriber or host usually gets, so that an
/// attacker cannot mint a fresh address per connection.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Open connections per client address, capped.
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressSlots {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Arc<AddressSlots> {
        Arc::new(AddressSlots { max, open: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more connection from `ip`, or `None` when that address holds `max` already. The slot is
    /// given back when dropped.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { slots: self.clone(), key })
    }

    /// Connections `ip`'s address holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&address_key(ip)).copied().unwrap_or(0)
    }
}

/// One connection's place in [`AddressSlots`].
#[derive(Debug)]
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // The map holds only addresses with open connections: it cannot grow with every address ever seen.
                open.remove(&self.key);
            }
        }
    }
}

/// Logs a repeated condition at most once per [`LOG_INTERVAL`], saying how many occurrences went unlogged.
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RateLimitedLog {
    /// Counts one occurrence; returns `Some(occurrences not logged since the last line)` when this one should be
    /// logged.
    pub fn occurred(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < LOG_INTERVAL) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Pauses between failed `accept()` calls: `initial`, doubling on each further failure up to `max`; back to no
/// pause after a success.
#[derive(Debug)]
pub struct AcceptBackoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    failures: u64,
    /// Both limiters outlive a success: descriptors that free up and run out again cycle with every connection
    /// that ends, and each cycle must not be worth two log lines.
    log: RateLimitedLog,
    recovered_log: RateLimitedLog,
}

impl AcceptBackoff {
    /// A back-off from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> AcceptBackoff {
        AcceptBackoff {
            initial,
            max,
            next: initial,
            failures: 0,
            log: RateLimitedLog::default(),
            recovered_log: RateLimitedLog::default(),
        }
    }

    /// Records a failed accept on `listener`; returns how long to pause before the next one.
    pub fn failed(&mut self, listener: ListenerKind, error: &std::io::Error) -> Duration {
        self.failures += 1;
        if let Some(unlogged) = self.log.occurred() {
            let hint = match error.raw_os_error() {
                Some(libc::EMFILE) | Some(libc::ENFILE) => {
                    "the process is out of file descriptors: raise LimitNOFILE in the systemd unit (README, \
                     \"Limits\") or lower limits.max_connections"
                }
                _ => "retrying with back-off",
            };
            tracing::warn!(
                listener = listener.as_str(),
                error = %error,
                failures_not_logged = unlogged,
                pause_ms = self.next.as_millis() as u64,
                "accept failed: {hint}; logged at most once a minute (anchorlog_accept_errors_total counts them all)"
            );
        }
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Records a successful accept: the next failure pauses `initial` again.
    pub fn succeeded(&mut self, listener: ListenerKind) {
        if self.failures > 0 {
            if self.recovered_log.occurred().is_some() {
                tracing::info!(
                    listener = listener.as_str(),
                    failures = self.failures,
                    "accept works again; logged at most once a minute"
                );
            }
            self.failures = 0;
            self.next = self.initial;
        }
    }
}

/// What one listener applies to the connections it accepts.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Which listener.
    pub kind: ListenerKind,
    /// `limits.handshake_timeout_ms`.
    pub handshake_timeout: Duration,
    /// `limits.header_read_timeout_ms`.
    pub header_read_timeout: Duration,
    max_connections: usize,
    max_per_address: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl ListenerLimits {
    /// The limits of listener `kind` from the configuration.
    pub fn new(kind: ListenerKind, l: &LimitsConfig) -> ListenerLimits {
        ListenerLimits {
            kind,
            handshake_timeout: l.handshake_timeout(),
            header_read_timeout: l.header_read_timeout(),
            max_connections: l.max_connections,
            max_per_address: l.max_connections_per_address,
            backoff_initial: Duration::from_millis(l.accept_backoff_initial_ms),
            backoff_max: Duration::from_millis(l.accept_backoff_max_ms),
        }
    }
}

/// An accepted connection's hold on its listener's slots (all of them, and its address's); given back, and the
/// open-connections gauge lowered, when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
    metrics: Arc<Metrics>,
    listener: ListenerKind,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.instruments.connections(self.listener.as_str(), -1);
    }
}

/// Admits connections to one listener within its limits.
#[derive(Debug)]
pub struct Gate {
    limits: ListenerLimits,
    permits: Arc<Semaphore>,
    addresses: Arc<AddressSlots>,
    backoff: AcceptBackoff,
    over_cap_log: RateLimitedLog,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate applying `limits`, counting into `metrics`.
    pub fn new(limits: ListenerLimits, metrics: Arc<Metrics>) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            addresses: AddressSlots::new(limits.max_per_address),
            backoff: AcceptBackoff::new(limits.backoff_initial, limits.backoff_max),
            over_cap_log: RateLimitedLog::default(),
            metrics,
            limits,
        }
    }

    /// The limits this gate applies.
    pub fn limits(&self) -> &ListenerLimits {
        &self.limits
    }

    /// Waits for a free slot and the next connection within the per-address cap (closing those over it), pausing
    /// after failed accepts. Cancel-safe: dropping the future loses no accepted connection.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr, Admission) {
        let kind = self.limits.kind;
        loop {
            // The semaphore is never closed; should it be, wait for the shutdown that ends the caller's select.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                std::future::pending::<()>().await;
                continue;
            };
            let (tcp, remote) = match listener.accept().await {
                Ok(v) => {
                    self.backoff.succeeded(kind);
                    v
                }
                Err(e) => {
                    self.metrics.instruments.accept_failed(kind.as_str());
                    let pause = self.backoff.failed(kind, &e);
                    drop(permit);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let Some(slot) = self.addresses.try_take(remote.ip()) else {
                self.metrics.instruments.limit_hit(kind.as_str(), "connections_per_address");
                if let Some(unlogged) = self.over_cap_log.occurred() {
                    tracing::warn!(
                        listener = kind.as_str(),
                        %remote,
                        max = self.limits.max_per_address,
                        not_logged = unlogged,
                        "connection closed: this address holds limits.max_connections_per_address connections \
                         already; logged at most once a minute (anchorlog_limit_hits_total counts them all)"
                    );
                }
                drop(tcp);
                continue;
            };
            self.metrics.instruments.connections(kind.as_str(), 1);
            let admission =
                Admission { _permit: permit, _slot: slot, metrics: self.metrics.clone(), listener: kind };
            return (tcp, remote, admission);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_are_counted_by_ipv4_address_and_ipv6_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(address_key(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(address_key(IpAddr::V6(Ipv6Addr::LOCALHOST)), "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn one_address_is_capped_and_others_still_get_slots() {
        let slots = AddressSlots::new(2);
        let one: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.1".parse().unwrap();
        let s1 = slots.try_take(one).unwrap();
        let _s2 = slots.try_take(one).unwrap();
        assert!(slots.try_take(one).is_none(), "a third connection from one address is refused");
        let _o = slots.try_take(other).expect("another address still gets in");
        drop(s1);
        assert_eq!(slots.open(one), 1);
        let _s3 = slots.try_take(one).expect("a freed slot is usable again");
        drop(_s3);
        drop(_s2);
        assert_eq!(slots.open(one), 0);
        assert!(
            !slots.open.lock().unwrap().contains_key(&one),
            "no entry is kept for an address without connections"
        );
    }

    #[test]
    fn accept_back_off_doubles_to_its_ceiling_and_resets_after_a_success() {
        let mut b = AcceptBackoff::new(Duration::from_millis(10), Duration::from_millis(45));
        let err = std::io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<u64> =
            (0..5).map(|_| b.failed(ListenerKind::Mtls, &err).as_millis() as u64).collect();
        assert_eq!(pauses, vec![10, 20, 40, 45, 45]);
        b.succeeded(ListenerKind::Mtls);
        assert_eq!(b.failed(ListenerKind::Mtls, &err), Duration::from_millis(10));
    }

    #[test]
    fn a_repeated_condition_is_logged_once_per_interval_with_the_count_left_out() {
        let mut log = RateLimitedLog::default();
        assert_eq!(log.occurred(), Some(0));
        assert_eq!((0..99).filter_map(|_| log.occurred()).count(), 0, "no second line within the interval");
        log.last = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(log.occurred(), Some(99));
    }
}
