//! Alerts that leave the box: `[[alert]]` webhooks receive a JSON message when the appliance's own
//! verification fails, when the signer or a TSA stays down past `[alerting] outage_threshold_s`, and when the
//! database's file system is nearly full (docs/FORMAT.md §19 has the message).
//!
//! Sending never blocks the caller: [`Alerts::raise`] and [`Alerts::resolve`] put the message on each
//! webhook's bounded queue ([`ALERT_QUEUE`]) and return; a full queue drops the message (counted in
//! `/metrics`, logged). One task per webhook delivers its queue in order, retrying each message with
//! exponential back-off ([`RETRY_INITIAL`] doubling to [`RETRY_MAX`], [`MAX_ATTEMPTS`] attempts), so ingest,
//! sealing and the verifier never wait on an alert receiver.
//!
//! One alert per ongoing condition: a condition (`type` and a key, e.g. the component) is raised once and
//! not again until it is resolved, which sends one message with `"state":"resolved"`.
//!
//! With `hmac_secret_file`, each request carries `X-Anchorlog-Signature: sha256=<hex HMAC-SHA256 of the
//! body>` so the receiver can tell the appliance's messages from anyone else's. `https://` webhooks need
//! `ca_file` (the CA certificates the receiver's certificate must chain to; the system bundle
//! `/etc/ssl/certs/ca-certificates.crt` for a public service): there are no built-in roots.

use crate::client::Connection;
use crate::config::{AlertConfig, ConfigError};
use hmac::{Hmac, Mac as _};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages waiting per webhook before new ones are dropped.
pub const ALERT_QUEUE: usize = 256;
/// First retry delay after a failed delivery.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Delivery attempts per message before it is given up (logged, counted).
pub const MAX_ATTEMPTS: u32 = 10;
/// Most bytes of a receiver's answer that are read (the body is not used; the status is).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// What an alert is about (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// The appliance's own verification of its log failed.
    VerificationFailed,
    /// Heads cannot be signed or stored.
    SignerOutage,
    /// No TSA issues valid tokens.
    TimestampingOutage,
    /// No witness cosigns.
    WitnessingOutage,
    /// The database's file system is nearly full.
    DiskNearlyFull,
}

impl AlertKind {
    /// The `type` on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::VerificationFailed => "verification_failed",
            AlertKind::SignerOutage => "signer_outage",
            AlertKind::TimestampingOutage => "timestamping_outage",
            AlertKind::WitnessingOutage => "witnessing_outage",
            AlertKind::DiskNearlyFull => "disk_nearly_full",
        }
    }

    /// `severity` while the condition holds.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::VerificationFailed | AlertKind::SignerOutage => "critical",
            _ => "warning",
        }
    }

    /// The alert kind of an outage of `component` as the outage records name it (`sealing`, `timestamping`,
    /// `witnessing`).
    pub fn of_component(component: &str) -> Option<AlertKind> {
        match component {
            "sealing" => Some(AlertKind::SignerOutage),
            "timestamping" => Some(AlertKind::TimestampingOutage),
            "witnessing" => Some(AlertKind::WitnessingOutage),
            _ => None,
        }
    }
}

/// Why an `[[alert]]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The secret file (mode, content).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CA file of an https webhook.
    #[error("alert[{index}].ca_file {path}: {reason}")]
    Ca {
        /// Which `[[alert]]`.
        index: usize,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// One webhook, loaded: where, how to sign, how to trust its certificate.
pub struct AlertTarget {
    url: WebhookUrl,
    secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl AlertTarget {
    /// Loads `[[alert]]` number `index`: the secret (mode 0600 enforced) and, for https, the CA file.
    pub fn load(index: usize, c: &AlertConfig) -> Result<AlertTarget, AlertError> {
        let key = format!("alert[{index}]");
        let url = WebhookUrl::parse(&c.url)
            .map_err(|problem| ConfigError::Invalid { key: format!("{key}.url"), problem })?;
        let secret = match &c.hmac_secret_file {
            Some(p) => {
                let s = crate::config::read_secret_file(&format!("{key}.hmac_secret_file"), p)?;
                Some(zeroize::Zeroizing::new(s.as_bytes().to_vec()))
            }
            None => None,
        };
        let tls = match (&url.tls, &c.ca_file) {
            (true, Some(ca)) => Some(client_tls(index, ca)?),
            (true, None) => {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.ca_file"),
                    problem:
                        "required for an https:// webhook (the CA certificates its certificate chains to)"
                            .into(),
                }
                .into())
            }
            (false, _) => None,
        };
        Ok(AlertTarget { url, secret, tls, timeout: Duration::from_millis(c.timeout_ms) })
    }
}

fn client_tls(index: usize, ca: &Path) -> Result<Arc<rustls::ClientConfig>, AlertError> {
    let err = |reason: String| AlertError::Ca { index, path: ca.display().to_string(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::load_certs(ca, "CA certificate").map_err(|e| err(e.to_string()))? {
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An `http(s)://host[:port][/path]` webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WebhookUrl {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl WebhookUrl {
    fn parse(url: &str) -> Result<WebhookUrl, String> {
        let bad = || format!("{url:?}: expected http://host[:port]/path or https://host[:port]/path");
        let (tls, rest) = match url.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (true, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (false, rest),
            _ => return Err(bad()),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path };
        let default = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?)
            }
            _ => (authority.to_string(), default),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() || authority.contains('@') || url.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        Ok(WebhookUrl { tls, host, port, path })
    }
}

/// Checks a configured webhook URL (config validation).
pub fn check_url(url: &str) -> Result<bool, String> {
    WebhookUrl::parse(url).map(|u| u.tls)
}

/// Delivery counters, shown in `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed_attempts: AtomicU64,
    given_up: AtomicU64,
    dropped: AtomicU64,
}

/// The alerting side of the appliance: raise and resolve conditions; delivery happens elsewhere.
pub struct Alerts {
    appliance: String,
    queues: Vec<mpsc::Sender<Arc<Vec<u8>>>>,
    /// Conditions raised and not resolved yet: `type/key`.
    active: Mutex<HashSet<String>>,
    counters: Arc<Counters>,
}

impl Alerts {
    /// No webhooks: conditions are still followed (and logged), nothing is sent.
    pub fn disabled(appliance: &str) -> Arc<Alerts> {
        Self::start(appliance, Vec::new())
    }

    /// Starts one delivery task per target (on the current tokio runtime).
    pub fn start(appliance: &str, targets: Vec<AlertTarget>) -> Arc<Alerts> {
        let counters = Arc::new(Counters::default());
        let mut queues = Vec::new();
        for target in targets {
            let (tx, rx) = mpsc::channel(ALERT_QUEUE);
            queues.push(tx);
            tokio::spawn(deliver(target, rx, counters.clone()));
        }
        Arc::new(Alerts { appliance: appliance.to_string(), queues, active: Mutex::default(), counters })
    }

    /// Raises `kind` for `key` (e.g. a component) with `message` and `detail`, unless it is already raised and
    /// not resolved since. Never blocks.
    pub fn raise(&self, kind: AlertKind, key: &str, message: &str, detail: Value) {
        let id = format!("{}/{key}", kind.as_str());
        if !self.active.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
            return;
        }
        tracing::warn!(alert = kind.as_str(), key, message, "alert raised");
        self.send(kind, "firing", kind.severity(), message, detail);
    }

    /// Resolves `kind` for `key` if it is raised: one `resolved` message. Never blocks.
    pub fn resolve(&self, kind: AlertKind, key: &str, message: &str) {
        let id = format!("{}/{key}", kind.as_str());
        if !self.active.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            return;
        }
        tracing::info!(alert = kind.as_str(), key, message, "alert resolved");
        self.send(kind, "resolved", "info", message, json!({ "key": key }));
    }

    /// Whether `kind` for `key` is raised.
    pub fn is_raised(&self, kind: AlertKind, key: &str) -> bool {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).contains(&format!("{}/{key}", kind.as_str()))
    }

    fn send(&self, kind: AlertKind, state: &str, severity: &str, message: &str, detail: Value) {
        let body = json!({
            "type": kind.as_str(),
            "state": state,
            "severity": severity,
            "appliance": self.appliance,
            "message": message,
            "detail": detail,
            "at": rfc3339_now(),
        });
        let body = Arc::new(body.to_string().into_bytes());
        for q in &self.queues {
            if q.try_send(body.clone()).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(alert = kind.as_str(), "alert queue full or closed: message dropped");
            }
        }
    }

    /// Prometheus lines of the delivery counters.
    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let r = Ordering::Relaxed;
        for (name, help, v) in [
            ("anchorlog_alerts_sent_total", "Alert messages a webhook accepted (2xx).", c.sent.load(r)),
            (
                "anchorlog_alert_attempts_failed_total",
                "Alert deliveries that failed (retried).",
                c.failed_attempts.load(r),
            ),
            (
                "anchorlog_alerts_given_up_total",
                "Alert messages given up after every retry.",
                c.given_up.load(r),
            ),
            (
                "anchorlog_alerts_dropped_total",
                "Alert messages dropped because a webhook's queue was full.",
                c.dropped.load(r),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let active = self.active.lock().map(|a| a.len()).unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP anchorlog_alerts_active Alert conditions raised and not resolved.\n# TYPE anchorlog_alerts_active gauge\nanchorlog_alerts_active {active}"
        );
    }
}

fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Delivers one webhook's queue in order, each message retried with back-off.
async fn deliver(target: AlertTarget, mut rx: mpsc::Receiver<Arc<Vec<u8>>>, counters: Arc<Counters>) {
    while let Some(body) = rx.recv().await {
        let mut delay = RETRY_INITIAL;
        for attempt in 1..=MAX_ATTEMPTS {
            match post(&target, &body).await {
                Ok(()) => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if attempt == MAX_ATTEMPTS {
                        counters.given_up.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(host = %target.url.host, error = %e, attempt, "alert not delivered; given up");
                        break;
                    }
                    tracing::warn!(host = %target.url.host, error = %e, attempt, "alert not delivered; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// One POST of `body`; `Ok` on a 2xx answer.
async fn post(target: &AlertTarget, body: &[u8]) -> Result<(), String> {
    let attempt = async {
        let addr = tokio::net::lookup_host((target.url.host.as_str(), target.url.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.url.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", target.url.host))?;
        let mut conn = match &target.tls {
            Some(tls) => Connection::connect(addr, &target.url.host, tls.clone()).await,
            None => Connection::connect_plain(addr, &target.url.host).await,
        }
        .map_err(|e| e.to_string())?;
        let signature = target.secret.as_ref().map(|s| signature(s, body));
        let mut headers = vec![("content-type", "application/json"), ("user-agent", "anchorlog")];
        if let Some(sig) = &signature {
            headers.push(("x-anchorlog-signature", sig.as_str()));
        }
        let status = conn
            .request_status("POST", &target.url.path, &headers, body.to_vec(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the webhook answered HTTP {status}"))
        }
    };
    tokio::time::timeout(target.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {} ms", target.timeout.as_millis()))?
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Watches the free space of the file system that holds `path` every `every`, raising
/// [`AlertKind::DiskNearlyFull`] below `min_free_percent` and resolving it above. Runs until `stop`.
pub async fn watch_disk(
    alerts: Arc<Alerts>,
    path: std::path::PathBuf,
    min_free_percent: u8,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let p = path.clone();
        let free = tokio::task::spawn_blocking(move || free_percent(&p)).await;
        let key = path.display().to_string();
        match free {
            Ok(Ok(free)) if free < f64::from(min_free_percent) => alerts.raise(
                AlertKind::DiskNearlyFull,
                &key,
                &format!(
                    "the file system holding {key} has {free:.1} % free, below the {min_free_percent} % \
                     threshold; free space or grow it before writes fail"
                ),
                json!({"path": key, "free_percent": (free * 10.0).round() / 10.0, "threshold_percent": min_free_percent}),
            ),
            Ok(Ok(free)) => alerts.resolve(
                AlertKind::DiskNearlyFull,
                &key,
                &format!("the file system holding {key} has {free:.1} % free again"),
            ),
            Ok(Err(e)) => tracing::warn!(path = %key, error = %e, "cannot read free disk space"),
            Err(e) => tracing::warn!(error = %e, "disk check task failed"),
        }
    }
}

/// Free space (for unprivileged writers) of the file system holding `path`, in percent of its size.
pub fn free_percent(path: &Path) -> std::io::Result<f64> {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `statvfs` is a plain C struct of integers, for which all-zero bytes are a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs for the call's duration.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if s.f_blocks == 0 {
        return Ok(100.0);
    }
    Ok(s.f_bavail as f64 * 100.0 / s.f_blocks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn webhook_urls_are_parsed_strictly() {
        let u = WebhookUrl::parse("https://alerts.example.org/hooks/anchorlog?x=1").unwrap();
        assert_eq!(
            u,
            WebhookUrl {
                tls: true,
                host: "alerts.example.org".into(),
                port: 443,
                path: "/hooks/anchorlog?x=1".into()
            }
        );
        let u = WebhookUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (false, "127.0.0.1", 9000, "/"));
        let u = WebhookUrl::parse("http://[::1]:8080/a").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        for bad in ["ftp://h/", "http://", "http://h:0/", "http://u:p@h/", "h:80", "http://h x/"] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    /// The requests a test receiver accepted: (head, body).
    type Got = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A receiver that answers 503 to the first `fail_first` requests, then 200; returns the requests.
    async fn receiver(fail_first: usize) -> (u16, Got) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Got = Arc::default();
        let seen = got.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by Content-Length.
                let (head, body) = loop {
                    let k = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..k]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string)
                            })
                            .unwrap()
                            .parse()
                            .unwrap();
                        while buf.len() < i + 4 + len {
                            let k = s.read(&mut chunk).await.unwrap();
                            buf.extend_from_slice(&chunk[..k]);
                        }
                        break (head, buf[i + 4..i + 4 + len].to_vec());
                    }
                };
                n += 1;
                let status = if n <= fail_first { "503 Service Unavailable" } else { "200 OK" };
                if n > fail_first {
                    seen.lock().unwrap().push((head, body));
                }
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
            }
        });
        (port, got)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alert_is_signed_retried_until_accepted_and_sent_once_per_condition() {
        let (port, got) = receiver(2).await;
        let target = AlertTarget {
            url: WebhookUrl::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap(),
            secret: Some(zeroize::Zeroizing::new(b"s3cret".to_vec())),
            tls: None,
            timeout: Duration::from_secs(2),
        };
        let alerts = Alerts::start("anchorlog.test/alerts", vec![target]);
        alerts.raise(AlertKind::SignerOutage, "sealing", "signing failed for 300 s", json!({"since_ms": 1}));
        alerts.raise(AlertKind::SignerOutage, "sealing", "still failing", json!({}));
        assert!(alerts.is_raised(AlertKind::SignerOutage, "sealing"));
        alerts.resolve(AlertKind::SignerOutage, "sealing", "signing works again");
        alerts.resolve(AlertKind::SignerOutage, "sealing", "again");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while got.lock().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "two messages within 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "one firing and one resolved message, nothing for the repeats");
        let (head, body) = &got[0];
        assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
        let sig =
            head.lines().find_map(|l| l.strip_prefix("x-anchorlog-signature: ")).expect("signature header");
        assert_eq!(sig, signature(b"s3cret", body));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            (&v["type"], &v["state"], &v["severity"], &v["appliance"], &v["message"], &v["detail"]),
            (
                &json!("signer_outage"),
                &json!("firing"),
                &json!("critical"),
                &json!("anchorlog.test/alerts"),
                &json!("signing failed for 300 s"),
                &json!({"since_ms": 1})
            )
        );
        assert!(v["at"].as_str().unwrap().ends_with('Z'), "{v}");
        let v: Value = serde_json::from_slice(&got[1].1).unwrap();
        assert_eq!((&v["state"], &v["message"]), (&json!("resolved"), &json!("signing works again")));
        let mut m = String::new();
        alerts.render_metrics(&mut m);
        assert!(m.contains("\nanchorlog_alerts_sent_total 2\n"), "{m}");
        assert!(m.contains("\nanchorlog_alert_attempts_failed_total 2\n"), "{m}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_that_never_answers_never_blocks_the_caller_and_a_full_queue_drops() {
        // Accepts connections (the kernel's backlog) but never reads or answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let target = AlertTarget {
            url: WebhookUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            secret: None,
            tls: None,
            timeout: Duration::from_secs(30),
        };
        let alerts = Alerts::start("anchorlog.test/alerts", vec![target]);
        // Raising is a queue push: a blocking send would hang here (each delivery waits 30 s), not return.
        for i in 0..(ALERT_QUEUE + 10) {
            alerts.raise(AlertKind::DiskNearlyFull, &format!("disk-{i}"), "nearly full", json!({}));
        }
        let dropped = alerts.counters.dropped.load(Ordering::Relaxed);
        // The delivery task holds one message; the queue holds ALERT_QUEUE; the rest are dropped.
        assert!((9..=10).contains(&dropped), "{dropped}");
        drop(silent);
    }

    #[test]
    fn free_space_is_read_from_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_percent(&dir.path().join("anchorlog.db")).unwrap();
        assert!((0.0..=100.0).contains(&free), "{free}");
        assert!(free_percent(Path::new("/nonexistent/dir/x.db")).is_err());
    }
}
