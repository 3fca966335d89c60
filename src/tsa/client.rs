//! HTTP transport to a TSA: one POST of a `TimeStampReq`, returning the raw response body.
//!
//! Plain `http://` only (hyper 1 HTTP/1.1 client over a tokio `TcpStream`). That is enough:
//! tokens are self-authenticating (signed by the TSA and verified against the configured CA),
//! and public TSAs (DigiCert, Sectigo, ...) serve plain http. `https://` URLs are refused with
//! a clear error until TLS is wired in. The caller must verify the returned bytes with
//! [`anchorlog_core::tsa::verify_response`] before storing them.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::TsaError;
use anchorlog_core::tsa::TimestampRequest;

/// Largest response body accepted (a reply is typically 1–8 KiB; chains with several RSA
/// certificates stay well below this).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Content types a TSA may answer with. RFC 3161 §3.4 says `application/timestamp-reply`;
/// some older servers send `application/timestamp-response`.
const REPLY_TYPES: [&str; 2] = ["application/timestamp-reply", "application/timestamp-response"];

/// POSTs `request` to `url` and returns the response body (a DER `TimeStampResp`, unverified).
///
/// `timeout` bounds the whole exchange (DNS, connect, send, receive). Errors:
/// [`TsaError::UnsupportedUrl`], [`TsaError::Timeout`], [`TsaError::Connect`],
/// [`TsaError::Http`], [`TsaError::HttpStatus`], [`TsaError::BadContentType`],
/// [`TsaError::TooLarge`].
pub async fn fetch(url: &str, request: &TimestampRequest, timeout: Duration) -> Result<Vec<u8>, TsaError> {
    let target = HttpUrl::parse(url)?;
    let after_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    tokio::time::timeout(timeout, exchange(&target, request))
        .await
        .map_err(|_| TsaError::Timeout { after_ms })?
}

async fn exchange(target: &HttpUrl, request: &TimestampRequest) -> Result<Vec<u8>, TsaError> {
    let addr = target.authority();
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| TsaError::Connect { addr: addr.clone(), reason: e.to_string() })?;
    let http_err = |e: hyper::Error| TsaError::Http { reason: e.to_string() };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http_err)?;
    // The connection task is aborted when this function returns or is cancelled by the
    // timeout, so a TSA that never answers does not leave a task behind.
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));

    let req = Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(HOST, addr.as_str())
        .header(CONTENT_TYPE, "application/timestamp-query")
        .header(ACCEPT, REPLY_TYPES[0])
        .header(CONTENT_LENGTH, request.der.len())
        .body(Full::new(Bytes::copy_from_slice(&request.der)))
        .map_err(|e| TsaError::Http { reason: format!("cannot build request: {e}") })?;
    let resp = sender.send_request(req).await.map_err(http_err)?;
    check_head(&resp)?;
    read_capped(resp.into_body()).await
}

/// Status 200, a time-stamp reply content type, and no announced oversize body.
fn check_head<B>(resp: &hyper::Response<B>) -> Result<(), TsaError> {
    if resp.status() != StatusCode::OK {
        return Err(TsaError::HttpStatus { status: resp.status().as_u16() });
    }
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !REPLY_TYPES.contains(&essence.as_str()) {
        return Err(TsaError::BadContentType { got: ctype });
    }
    let announced =
        resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err(TsaError::TooLarge { limit: MAX_RESPONSE_BYTES });
    }
    Ok(())
}

/// Reads the body, failing as soon as it exceeds [`MAX_RESPONSE_BYTES`] (chunked bodies
/// announce no length, so the cap is enforced while reading too).
async fn read_capped(body: hyper::body::Incoming) -> Result<Vec<u8>, TsaError> {
    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(TsaError::TooLarge { limit: MAX_RESPONSE_BYTES })
        }
        Err(e) => Err(TsaError::Http { reason: format!("reading the response body: {e}") }),
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The parts of an `http://host[:port][/path]` URL this client needs.
#[derive(Debug, PartialEq, Eq)]
struct HttpUrl {
    host: String,
    port: u16,
    /// Path and query, at least "/".
    path: String,
    /// Whether the host was written as a bracketed IPv6 literal.
    ipv6: bool,
}

impl HttpUrl {
    fn parse(url: &str) -> Result<Self, TsaError> {
        let bad =
            |reason: &str| TsaError::UnsupportedUrl { url: url.to_string(), reason: reason.to_string() };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(bad(
                "https is not supported yet; use the TSA's http:// URL (tokens are signed and verified, so TLS adds no integrity)",
            ));
        }
        if !lower.starts_with("http://") {
            return Err(bad("only http://host[:port]/path URLs are supported"));
        }
        let rest = &url["http://".len()..];
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        if authority.contains('@') {
            return Err(bad("user:password@ in the URL is not supported"));
        }
        let (host, port, ipv6) = split_host_port(authority, 80).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() {
            return Err(bad("the URL has no host"));
        }
        Ok(HttpUrl { host, port, path, ipv6 })
    }

    /// `host:port` for the Host header and error messages.
    fn authority(&self) -> String {
        if self.ipv6 {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port` into host, port (`default_port` when absent) and whether
/// the host is a bracketed IPv6 literal. Also used for witness URLs (`ledger::cosigner`).
pub(crate) fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16, bool)> {
    let parse_port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after {
            "" => default_port,
            p => parse_port(p.strip_prefix(':')?)?,
        };
        return Some((host.to_string(), port, true));
    }
    match authority.split_once(':') {
        Some((host, port)) => Some((host.to_string(), parse_port(port)?, false)),
        None => Some((authority.to_string(), default_port, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsa::build_request;
    use crate::tsa::testutil::{Shim, TestTsa};
    use anchorlog_core::tsa::{verify_response, TokenError, TrustAnchors, VerifyOptions};
    use std::time::Instant;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn url_parsing() {
        let u = HttpUrl::parse("http://timestamp.digicert.com").unwrap();
        assert_eq!(
            u,
            HttpUrl { host: "timestamp.digicert.com".into(), port: 80, path: "/".into(), ipv6: false }
        );
        let u = HttpUrl::parse("http://127.0.0.1:3180/tsa?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 3180, "/tsa?x=1"));
        let u = HttpUrl::parse("http://[::1]:8080/").unwrap();
        assert_eq!(u.authority(), "[::1]:8080");
        let u = HttpUrl::parse("HTTP://h?q").unwrap();
        assert_eq!(u.path, "/?q");
        for bad in ["ftp://h/", "http://", "http://h:0/", "http://h:99999/", "http://u:p@h/", "h:80"] {
            assert!(matches!(HttpUrl::parse(bad), Err(TsaError::UnsupportedUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn https_is_refused_clearly() {
        let req = build_request(b"x").unwrap();
        let err = rt().block_on(fetch("https://tsa.example/", &req, Duration::from_secs(1))).unwrap_err();
        match err {
            TsaError::UnsupportedUrl { reason, .. } => {
                assert!(reason.starts_with("https is not supported yet"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn fetch_and_verify_against_openssl_tsa() {
        let tsa = TestTsa::new(&[]);
        let shim = Shim::start(&tsa);
        let anchors = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let rt = rt();
        let mut best = Duration::MAX;
        for i in 0..5 {
            let head = format!("anchorlog head {i}");
            let req = build_request(head.as_bytes()).unwrap();
            let t0 = Instant::now();
            let body = rt.block_on(fetch(&shim.url("/tsa"), &req, Duration::from_secs(5))).unwrap();
            best = best.min(t0.elapsed());
            let opts = VerifyOptions {
                expected_imprint: req.imprint,
                expected_nonce: Some(&req.nonce),
                trust: &anchors,
                policy: None,
                not_before: None,
            };
            let v = verify_response(&body, &opts).unwrap();
            assert_eq!(v.tsa_subject, "CN=Test TSA");
            assert_eq!(v.serial_hex, format!("{:02x}", i + 1));
        }
        eprintln!("HTTP round trip to the local openssl TSA (best of 5): {best:?}");
    }

    fn fetch_in_mode(mode: &str) -> Result<Vec<u8>, TsaError> {
        let tsa = TestTsa::new(&[]);
        let shim = Shim::start(&tsa);
        shim.set_mode(mode);
        let req = build_request(b"x").unwrap();
        rt().block_on(fetch(&shim.url("/"), &req, Duration::from_secs(5)))
    }

    #[test]
    fn http_500_is_http_status() {
        assert_eq!(fetch_in_mode("http500"), Err(TsaError::HttpStatus { status: 500 }));
    }

    #[test]
    fn wrong_content_type_is_rejected() {
        assert_eq!(fetch_in_mode("wrongtype"), Err(TsaError::BadContentType { got: "text/html".into() }));
    }

    #[test]
    fn oversized_body_is_rejected() {
        assert_eq!(fetch_in_mode("huge"), Err(TsaError::TooLarge { limit: MAX_RESPONSE_BYTES }));
    }

    #[test]
    fn garbage_body_is_malformed_at_verification() {
        let body = fetch_in_mode("garbage").unwrap();
        assert_eq!(body, b"this is not DER at all");
        let tsa = TestTsa::new(&[]);
        let anchors = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let opts = VerifyOptions {
            expected_imprint: [0; 32],
            expected_nonce: None,
            trust: &anchors,
            policy: None,
            not_before: None,
        };
        assert!(matches!(verify_response(&body, &opts), Err(TokenError::Malformed { .. })));
    }

    #[test]
    fn silent_server_times_out() {
        // A listener that accepts (kernel backlog) but never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let req = build_request(b"x").unwrap();
        let t0 = Instant::now();
        let err = rt()
            .block_on(fetch(&format!("http://127.0.0.1:{port}/"), &req, Duration::from_millis(500)))
            .unwrap_err();
        assert_eq!(err, TsaError::Timeout { after_ms: 500 });
        assert!(err.is_retryable());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        drop(listener);
    }

    #[test]
    fn sleeping_tsa_times_out() {
        let tsa = TestTsa::new(&[]);
        let shim = Shim::start(&tsa);
        shim.set_mode("sleep");
        let req = build_request(b"x").unwrap();
        let err = rt().block_on(fetch(&shim.url("/"), &req, Duration::from_millis(400))).unwrap_err();
        assert_eq!(err, TsaError::Timeout { after_ms: 400 });
    }

    #[test]
    fn refused_connection_is_connect_error() {
        // Bind then drop: the port is (very likely) free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let req = build_request(b"x").unwrap();
        let err = rt()
            .block_on(fetch(&format!("http://127.0.0.1:{port}/"), &req, Duration::from_secs(2)))
            .unwrap_err();
        match &err {
            TsaError::Connect { addr, .. } => assert_eq!(addr, &format!("127.0.0.1:{port}")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_retryable());
    }
}
