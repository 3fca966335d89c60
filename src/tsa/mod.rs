//! RFC 3161 time-stamping, the appliance's side: draw a request's nonce, fetch tokens over HTTP, decide
//! whether to retry.
//!
//! Every signed block head gets a time-stamp token from an external Time-Stamping Authority
//! (TSA). The flow is:
//!
//! 1. [`build_request`] hashes the head text (SHA-256), draws a random positive 64-bit nonce and
//!    encodes a `TimeStampReq` with `certReq = true` (so the TSA embeds its certificate).
//! 2. [`fetch`] POSTs it as `application/timestamp-query` to a plain `http://` URL with a timeout and a
//!    256 KiB response cap.
//! 3. [`anchorlog_core::tsa::verify_response`] checks the whole `TimeStampResp` before it is stored (the
//!    token types and their verification are the core's, shared with the offline verifier).
//!
//! Failures are one [`TsaError`]; [`TsaError::is_retryable`] tells the sealer whether asking
//! the TSA again later can help (network trouble) or not (a token that does not verify).

mod client;
pub mod local;

#[cfg(test)]
pub(crate) mod testutil;

use anchorlog_core::tsa::{build_request_with_nonce, TimestampRequest, TokenError};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

pub(crate) use client::split_host_port;
pub use client::{fetch, MAX_RESPONSE_BYTES};

/// Builds a request for `SHA-256(message)` with a random nonce (from the operating system) and
/// `certReq = true`.
pub fn build_request(message: &[u8]) -> Result<TimestampRequest, TsaError> {
    let mut random = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut random);
    Ok(build_request_with_nonce(Sha256::digest(message).into(), random)?)
}

/// Everything that can go wrong while requesting a time-stamp token: the transport, or the answer itself
/// ([`TsaError::Token`], the core's verdict on the response).
///
/// Each variant is one distinct failure, so callers (and tests) can match on the cause.
/// Messages say what was wrong and what to do about it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TsaError {
    /// The TSA URL cannot be used (not `http://`, no host, bad port, ...).
    #[error("TSA URL {url:?} is not usable: {reason}")]
    UnsupportedUrl {
        /// The URL as configured.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The whole request (connect, send, receive) did not finish in time.
    #[error("TSA did not answer within {after_ms} ms; it will be retried (check the TSA URL and network if this persists)")]
    Timeout {
        /// The configured timeout in milliseconds.
        after_ms: u64,
    },
    /// The TCP connection could not be opened (refused, unreachable, name not resolved).
    #[error("cannot connect to TSA at {addr}: {reason}; check the TSA URL and that the TSA is reachable")]
    Connect {
        /// `host:port` that was tried.
        addr: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The HTTP exchange broke after the connection was made.
    #[error("HTTP exchange with the TSA failed: {reason}")]
    Http {
        /// What broke.
        reason: String,
    },
    /// The TSA answered with a non-200 HTTP status.
    #[error("TSA answered HTTP {status}; expected 200 (check the TSA URL path)")]
    HttpStatus {
        /// The HTTP status code.
        status: u16,
    },
    /// The TSA answered 200 but not with `application/timestamp-reply`.
    #[error("TSA answered with Content-Type {got:?}, expected \"application/timestamp-reply\"; the URL probably does not point at an RFC 3161 endpoint")]
    BadContentType {
        /// The Content-Type received (empty if absent).
        got: String,
    },
    /// The response body exceeded the size cap.
    #[error("TSA response is larger than {limit} bytes; refusing it (a time-stamp reply is a few KiB)")]
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// The response or token itself: malformed, refused by the TSA, or not verifying.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl TsaError {
    /// Whether asking the TSA again later may succeed.
    ///
    /// True for transport trouble (timeout, connection, broken exchange, HTTP 408/429/5xx) and
    /// for a TSA that says it is temporarily unable (`waiting`, `timeNotAvailable`,
    /// `systemFailure`). False for everything a retry cannot fix: misconfiguration (URL,
    /// trust anchors, policy) and tokens that do not verify, which must be investigated.
    pub fn is_retryable(&self) -> bool {
        match self {
            TsaError::Timeout { .. } | TsaError::Connect { .. } | TsaError::Http { .. } => true,
            TsaError::HttpStatus { status } => *status == 408 || *status == 429 || *status >= 500,
            TsaError::Token(e) => e.is_retryable(),
            TsaError::UnsupportedUrl { .. } | TsaError::BadContentType { .. } | TsaError::TooLarge { .. } => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(TsaError::Timeout { after_ms: 1000 }.is_retryable());
        assert!(TsaError::Connect { addr: "a:1".into(), reason: "refused".into() }.is_retryable());
        assert!(TsaError::HttpStatus { status: 503 }.is_retryable());
        assert!(TsaError::HttpStatus { status: 429 }.is_retryable());
        assert!(!TsaError::HttpStatus { status: 404 }.is_retryable());
        assert!(TsaError::from(TokenError::NotGranted {
            status: 2,
            text: String::new(),
            fail_info: vec!["timeNotAvailable"]
        })
        .is_retryable());
        assert!(!TsaError::from(TokenError::NotGranted {
            status: 2,
            text: String::new(),
            fail_info: vec!["badAlg"]
        })
        .is_retryable());
        assert!(!TsaError::from(TokenError::ImprintMismatch).is_retryable());
        assert!(!TsaError::from(TokenError::BadSignature { what: "x".into() }).is_retryable());
        assert!(!TsaError::TooLarge { limit: 1 }.is_retryable());
    }

    #[test]
    fn messages_name_the_problem() {
        let e =
            TsaError::UnsupportedUrl { url: "https://x".into(), reason: "https is not supported yet".into() };
        assert_eq!(e.to_string(), "TSA URL \"https://x\" is not usable: https is not supported yet");
    }
}
