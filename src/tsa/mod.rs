//! RFC 3161 time-stamping: build requests, fetch tokens over HTTP, verify them.
//!
//! Every signed block head gets a time-stamp token from an external Time-Stamping Authority
//! (TSA). The flow is:
//!
//! 1. [`build_request`] hashes the head text (SHA-256), draws a random positive 64-bit nonce and
//!    encodes a `TimeStampReq` with `certReq = true` (so the TSA embeds its certificate).
//! 2. [`fetch`] (feature `server` only) POSTs it as `application/timestamp-query` to a plain
//!    `http://` URL with a timeout and a 256 KiB response cap.
//! 3. [`verify_response`] checks the whole `TimeStampResp` before it is stored: status granted,
//!    imprint and nonce, the CMS signature, the signer identified by ESSCertID / ESSCertIDv2,
//!    the critical `timeStamping` EKU, the chain to the configured TSA CA certificate(s) at
//!    `genTime`, the policy (if configured) and `genTime >= seal time - skew`.
//!
//! The offline auditor calls [`verify_response`] / [`verify_token`] with `expected_nonce: None`
//! (it does not know the nonce). The verification path is pure: it does no I/O and links no
//! tokio/hyper code, so the `verify` feature alone builds it.
//!
//! Failures are one [`TsaError`]; [`TsaError::is_retryable`] tells the sealer whether asking
//! the TSA again later can help (network trouble) or not (a token that does not verify).

mod request;
mod token;
mod verify;

#[cfg(feature = "server")]
mod client;
#[cfg(feature = "server")]
pub mod local;

#[cfg(test)]
pub(crate) mod testutil;

pub use request::{build_request, build_request_for_digest, TimestampRequest};
pub use token::{
    EssCertId, EssCertIdV2, GenTime, IssuerSerial, MessageImprint, PkiStatusInfo, SigningCertificate,
    SigningCertificateV2, TimeStampReq, TimeStampResp, TstAccuracy, TstInfo, ID_CT_TST_INFO,
};
#[cfg(feature = "server")]
pub(crate) use verify::x509_signature_verifies;
pub use verify::{verify_response, verify_token, TrustAnchors, VerifiedTimestamp, VerifyOptions};

#[cfg(feature = "server")]
pub(crate) use client::split_host_port;
#[cfg(feature = "server")]
pub use client::{fetch, MAX_RESPONSE_BYTES};

/// Everything that can go wrong while requesting or verifying a time-stamp token.
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
    /// A structure could not be decoded (not DER, wrong shape, missing field).
    #[error("malformed time-stamp data: {what}")]
    Malformed {
        /// Which structure and why.
        what: String,
    },
    /// The TSA refused the request (`PKIStatus` other than granted / grantedWithMods).
    #[error("TSA did not grant the time-stamp: status {status}, text {text:?}, failInfo {fail_info:?}")]
    NotGranted {
        /// The numeric `PKIStatus` (2 = rejection, 3 = waiting, ...).
        status: u32,
        /// The TSA's free text, joined with "; " (may be empty).
        text: String,
        /// Names of the `PKIFailureInfo` bits that were set.
        fail_info: Vec<&'static str>,
    },
    /// The token time-stamps a different hash than the one expected.
    #[error("the token's message imprint does not match the SHA-256 of the timestamped data (wrong token for this record, or the record changed)")]
    ImprintMismatch,
    /// The token's nonce is missing or differs from the request's nonce.
    #[error("the token's nonce does not match the request's nonce (replayed or mixed-up response)")]
    NonceMismatch,
    /// The CMS signature (or the signed message digest) does not verify.
    #[error("the token's signature does not verify: {what}")]
    BadSignature {
        /// Which check failed.
        what: String,
    },
    /// No certificate matching the SignerInfo was found in the token or the trust anchors.
    #[error("the token's signer certificate is not in the token nor in the configured TSA certificates; request tokens with certReq=true or add the TSA certificate to the trust file")]
    UnknownSigner,
    /// Neither `signingCertificate` nor `signingCertificateV2` is among the signed attributes.
    #[error("the token has no ESSCertID/ESSCertIDv2 signed attribute identifying its signer certificate (RFC 3161 §2.4.1 requires one)")]
    EssCertIdMissing,
    /// The ESSCertID hash (or issuer serial) does not identify the signer certificate.
    #[error(
        "the token's ESSCertID does not match the certificate that signed it (certificate substitution?)"
    )]
    EssCertIdMismatch,
    /// The signer certificate has no extended key usage `timeStamping`.
    #[error("the TSA certificate {subject:?} does not carry the timeStamping extended key usage; it is not a TSA certificate")]
    MissingTimestampingEku {
        /// The signer certificate's subject.
        subject: String,
    },
    /// The signer certificate's extended key usage extension is not marked critical.
    #[error("the TSA certificate {subject:?} has the timeStamping extended key usage but it is not critical (RFC 3161 §2.3 requires critical)")]
    EkuNotCritical {
        /// The signer certificate's subject.
        subject: String,
    },
    /// The signer certificate's extended key usage lists purposes besides `timeStamping`.
    #[error("the TSA certificate {subject:?} lists other extended key usages besides timeStamping (RFC 3161 §2.3 requires timeStamping only)")]
    EkuNotExclusive {
        /// The signer certificate's subject.
        subject: String,
    },
    /// No chain from the signer certificate to a configured TSA CA certificate.
    #[error("the TSA certificate {subject:?} does not chain to any configured TSA CA certificate; check the --tsa-ca / tsa.ca_file setting")]
    UntrustedChain {
        /// The signer certificate's subject.
        subject: String,
    },
    /// The path to the anchor breaks an RFC 5280 rule (a CA without keyCertSign or basicConstraints cA, a
    /// pathLenConstraint exceeded, an unknown critical extension, ...).
    #[error(
        "the TSA certificate {subject:?} does not form a valid chain to the configured TSA CA: {reason}"
    )]
    ChainInvalid {
        /// The signer certificate's subject.
        subject: String,
        /// Which rule, and which certificate when known.
        reason: String,
    },
    /// A certificate of the chain was not valid at `genTime`.
    #[error("certificate {subject:?} was not valid at the token's genTime {gen_time} (valid {not_before} .. {not_after})")]
    CertificateExpired {
        /// The certificate's subject.
        subject: String,
        /// The token's genTime (RFC 3339).
        gen_time: String,
        /// Certificate notBefore (RFC 3339).
        not_before: String,
        /// Certificate notAfter (RFC 3339).
        not_after: String,
    },
    /// The token's policy OID is not the configured one.
    #[error("the token's TSA policy is {got}, but {expected} is configured")]
    PolicyMismatch {
        /// The configured policy OID.
        expected: String,
        /// The token's policy OID.
        got: String,
    },
    /// The token's `genTime` is earlier than the allowed lower bound (seal time − skew).
    #[error("the token's genTime {gen_time} is earlier than {not_before} (seal time minus allowed skew): the TSA clock is off or the token belongs to another record")]
    GenTimeTooEarly {
        /// The token's genTime (RFC 3339).
        gen_time: String,
        /// The lower bound (RFC 3339).
        not_before: String,
    },
    /// An algorithm (hash, signature, key type, curve) this module does not implement.
    #[error("unsupported {what} algorithm {oid}; supported: ECDSA P-256/P-384 and RSA PKCS#1 v1.5 with SHA-256/384/512")]
    UnsupportedAlgorithm {
        /// The OID in dotted form.
        oid: String,
        /// Which role the algorithm plays (digest, signature, key, curve).
        what: &'static str,
    },
    /// An RSA key shorter than 2048 bits.
    #[error("RSA key of {bits} bits in the TSA chain is too weak (minimum 2048)")]
    WeakKey {
        /// The modulus size.
        bits: usize,
    },
    /// The trust file held no certificate.
    #[error(
        "no TSA CA certificate found in the trust file; it must hold one or more PEM \"CERTIFICATE\" blocks"
    )]
    NoTrustAnchors,
    /// The trust file could not be parsed.
    #[error("cannot parse the TSA CA certificate file: {reason}")]
    BadTrustAnchor {
        /// The parser's reason.
        reason: String,
    },
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
            TsaError::NotGranted { status, fail_info, .. } => {
                *status == 3 || fail_info.iter().any(|f| *f == "timeNotAvailable" || *f == "systemFailure")
            }
            _ => false,
        }
    }

    /// Shorthand for [`TsaError::Malformed`].
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        TsaError::Malformed { what: what.into() }
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
        assert!(TsaError::NotGranted { status: 2, text: String::new(), fail_info: vec!["timeNotAvailable"] }
            .is_retryable());
        assert!(!TsaError::NotGranted { status: 2, text: String::new(), fail_info: vec!["badAlg"] }
            .is_retryable());
        assert!(!TsaError::ImprintMismatch.is_retryable());
        assert!(!TsaError::BadSignature { what: "x".into() }.is_retryable());
        assert!(!TsaError::TooLarge { limit: 1 }.is_retryable());
    }

    #[test]
    fn messages_name_the_problem() {
        let e =
            TsaError::UnsupportedUrl { url: "https://x".into(), reason: "https is not supported yet".into() };
        assert_eq!(e.to_string(), "TSA URL \"https://x\" is not usable: https is not supported yet");
    }
}
