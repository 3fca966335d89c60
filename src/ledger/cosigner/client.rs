//! HTTP transport to a witness: one `POST <prefix>/add-checkpoint` (c2sp.org/tlog-witness v1.0.0), over plain
//! HTTP or HTTPS, bounded in time and size, and the answer sorted into what the cosigner acts on.
//!
//! The protocol authenticates by signatures (the witness checks the log's signature, the log checks the
//! cosignature), so plain HTTP is as safe as HTTPS for integrity; HTTPS only hides the traffic. An `https://`
//! witness is checked against the configured CA file (default: the system bundle).

use anchorlog_core::note::protocol::{parse_tlog_size_body, ADD_CHECKPOINT_PATH, CONTENT_TYPE_TLOG_SIZE};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Largest answer body read (a cosignature line is ~130 bytes; an error answer a few hundred).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The system CA bundle (Debian) used for `https://` witnesses without a `ca_file`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a submission got no usable answer (the cosigner retries these with back-off).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The whole exchange did not finish in time.
    #[error("no answer within {after_ms} ms")]
    Timeout {
        /// The timeout.
        after_ms: u64,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// An HTTP-level failure.
    #[error("HTTP: {0}")]
    Http(String),
    /// The answer body is larger than [`MAX_ANSWER_BYTES`].
    #[error("the answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// A witness's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200: the body (one or more signature lines, not yet verified).
    Cosigned(String),
    /// 409 with `text/x.tlog.size`: the size the witness holds for this log.
    Conflict(u64),
    /// Any other status, with the JSON error `code` when the witness sent one and a bounded body excerpt.
    Status {
        /// HTTP status.
        status: u16,
        /// `code` of a JSON error body, if any.
        code: Option<String>,
        /// The start of the body, for logs.
        excerpt: String,
    },
}

/// Where and how to reach one witness.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    ipv6: bool,
    /// `<prefix>/add-checkpoint`.
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

/// Why a witness URL or its CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL is not `http(s)://host[:port][/prefix]`.
    #[error("witness URL {0:?} is not http(s)://host[:port][/prefix]")]
    Url(String),
    /// The CA file is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl Endpoint {
    /// An endpoint for the submission prefix `url` (validated by the configuration already).
    pub fn new(url: &str, ca_file: Option<&Path>, timeout: Duration) -> Result<Endpoint, EndpointError> {
        let bad = || EndpointError::Url(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let (https, default_port) = match scheme {
            "http" => (false, 80),
            "https" => (true, 443),
            _ => return Err(bad()),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port, ipv6) = crate::tsa::split_host_port(authority, default_port).ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        let tls = match https {
            true => {
                Some(crate::tls::server_auth_client_config(ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE)))?)
            }
            false => None,
        };
        Ok(Endpoint { host, port, ipv6, path: format!("{prefix}{ADD_CHECKPOINT_PATH}"), tls, timeout })
    }

    fn authority(&self) -> String {
        if self.ipv6 {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// POSTs one `add-checkpoint` body and returns the answer; the whole exchange is bounded by the timeout.
    pub async fn submit(&self, body: Vec<u8>) -> Result<Answer, SubmitError> {
        let after_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        tokio::time::timeout(self.timeout, self.exchange(body))
            .await
            .map_err(|_| SubmitError::Timeout { after_ms })?
    }

    async fn exchange(&self, body: Vec<u8>) -> Result<Answer, SubmitError> {
        let addr = self.authority();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| SubmitError::Connect { addr: addr.clone(), reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, addr.as_str())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SubmitError::Http(format!("cannot build the request: {e}")))?;
        match &self.tls {
            None => send(TokioIo::new(tcp), req).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| SubmitError::Tls { addr: addr.clone(), reason: e.to_string() })?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| SubmitError::Tls { addr, reason: e.to_string() })?;
                send(TokioIo::new(stream), req).await
            }
        }
    }
}

/// Sends `req` on a fresh HTTP/1.1 connection over `io` and sorts the answer.
async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<Answer, SubmitError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| SubmitError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(http)?;
    // Aborted when this future ends or is cancelled by the timeout: nothing is left behind.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _abort = AbortOnDrop(driver);
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let body = match Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(SubmitError::TooLarge),
        Err(e) => return Err(SubmitError::Http(format!("reading the answer: {e}"))),
    };
    Ok(sort(status, content_type.as_deref(), &body))
}

/// Sorts an answer by status and body.
fn sort(status: u16, content_type: Option<&str>, body: &[u8]) -> Answer {
    if status == 200 {
        return Answer::Cosigned(String::from_utf8_lossy(body).into_owned());
    }
    if status == 409 && content_type == Some(CONTENT_TYPE_TLOG_SIZE) {
        if let Ok(size) = parse_tlog_size_body(body) {
            return Answer::Conflict(size);
        }
    }
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned));
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Answer::Status { status, code, excerpt: text[..end].to_owned() }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_endpoints() {
        let t = Duration::from_secs(1);
        let e = Endpoint::new("http://127.0.0.1:7380/witness", None, t).unwrap();
        assert_eq!((e.authority(), e.path.as_str()), ("127.0.0.1:7380".into(), "/witness/add-checkpoint"));
        let e = Endpoint::new("http://w.example", None, t).unwrap();
        assert_eq!((e.authority(), e.path.as_str()), ("w.example:80".into(), "/add-checkpoint"));
        let e = Endpoint::new("http://[::1]:8080/a/b", None, t).unwrap();
        assert_eq!((e.authority(), e.path.as_str()), ("[::1]:8080".into(), "/a/b/add-checkpoint"));
        for bad in ["ftp://h/w", "http://", "http://h:0/w", "w.example/x"] {
            assert!(matches!(Endpoint::new(bad, None, t), Err(EndpointError::Url(_))), "{bad}");
        }
        let missing = Endpoint::new("https://w.example", Some(Path::new("/nonexistent/ca.pem")), t);
        assert!(matches!(missing, Err(EndpointError::Tls(_))));
    }

    #[test]
    fn answers_are_sorted_by_status_and_body() {
        assert_eq!(
            sort(200, Some("text/plain"), b"\xe2\x80\x94 w x\n"),
            Answer::Cosigned("\u{2014} w x\n".into())
        );
        assert_eq!(sort(409, Some("text/x.tlog.size"), b"42\n"), Answer::Conflict(42));
        // A 409 without the size content type, or with a bad body, is reported as it is.
        assert!(matches!(sort(409, Some("text/plain"), b"42\n"), Answer::Status { status: 409, .. }));
        assert!(matches!(sort(409, Some("text/x.tlog.size"), b"x\n"), Answer::Status { status: 409, .. }));
        assert_eq!(
            sort(422, Some("application/json"), br#"{"code":"bad_consistency_proof","message":"m"}"#),
            Answer::Status {
                status: 422,
                code: Some("bad_consistency_proof".into()),
                excerpt: r#"{"code":"bad_consistency_proof","message":"m"}"#.into()
            }
        );
        let long = "é".repeat(400);
        let Answer::Status { excerpt, code, .. } = sort(500, None, long.as_bytes()) else { panic!() };
        assert_eq!((excerpt.len(), code), (300, None));
    }

    #[tokio::test]
    async fn unreachable_and_silent_witnesses_are_errors() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = Endpoint::new(&format!("http://127.0.0.1:{port}"), None, Duration::from_secs(2)).unwrap();
        assert!(matches!(e.submit(b"x".to_vec()).await, Err(SubmitError::Connect { .. })));
        // Accepts (kernel backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let e = Endpoint::new(&format!("http://127.0.0.1:{port}"), None, Duration::from_millis(300)).unwrap();
        assert_eq!(e.submit(b"x".to_vec()).await, Err(SubmitError::Timeout { after_ms: 300 }));
        drop(silent);
    }
}
