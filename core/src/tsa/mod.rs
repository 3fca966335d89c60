//! RFC 3161 time-stamp tokens: the ASN.1 types, request encoding, and pure verification.
//!
//! Every signed block head gets a time-stamp token from an external Time-Stamping Authority (TSA). This
//! module holds what a verifier needs, and nothing that talks to a TSA:
//!
//! 1. [`build_request_with_nonce`] encodes a `TimeStampReq` for a SHA-256 digest with `certReq = true` (so
//!    the TSA embeds its certificate) and a nonce made from random bytes the caller draws.
//! 2. [`verify_response`] checks the whole `TimeStampResp`: status granted, imprint and nonce, the CMS
//!    signature, the signer identified by ESSCertID / ESSCertIDv2, the critical `timeStamping` EKU, the chain
//!    to the configured TSA CA certificate(s) at `genTime`, the policy (if configured) and
//!    `genTime >= seal time - skew`. [`verify_token`] does the same for a bare token.
//!
//! The offline auditor calls [`verify_response`] / [`verify_token`] with `expected_nonce: None` (it does not
//! know the nonce). Fetching tokens over HTTP, drawing nonces and the retry policy are the appliance's
//! (`anchorlog::tsa`), whose `TsaError` wraps a [`TokenError`] next to its transport failures.

mod request;
mod token;
mod verify;

#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

pub use request::{build_request_with_nonce, positive_nonce, TimestampRequest};
pub use token::{
    EssCertId, EssCertIdV2, GenTime, IssuerSerial, MessageImprint, PkiStatusInfo, SigningCertificate,
    SigningCertificateV2, TimeStampReq, TimeStampResp, TstAccuracy, TstInfo, ID_CT_TST_INFO,
};
pub use verify::{
    verify_response, verify_token, x509_signature_verifies, TrustAnchors, VerifiedTimestamp, VerifyOptions,
};

/// Everything that can be wrong with time-stamp data: a request that cannot be encoded, a response or token
/// that does not verify, a trust file that cannot be used.
///
/// Each variant is one distinct failure, so callers (and tests) can match on the cause.
/// Messages say what was wrong and what to do about it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
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

impl TokenError {
    /// Whether asking the TSA again later may give a token: only when the TSA itself says it is temporarily
    /// unable (`waiting`, `timeNotAvailable`, `systemFailure`). A token that does not verify, or a trust file that
    /// cannot be used, is never fixed by asking again.
    pub fn is_retryable(&self) -> bool {
        match self {
            TokenError::NotGranted { status, fail_info, .. } => {
                *status == 3 || fail_info.iter().any(|f| *f == "timeNotAvailable" || *f == "systemFailure")
            }
            _ => false,
        }
    }

    /// Shorthand for [`TokenError::Malformed`].
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        TokenError::Malformed { what: what.into() }
    }
}
