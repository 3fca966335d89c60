//! Producer authentication that travels in HTTP headers: a body HMAC (Keycloak webhook plugins)
//! and a static shared secret (Okta event hooks, Auth0 log streams). Both comparisons are
//! constant-time, and no error message contains the secret or the presented value.
//!
//! - HMAC-SHA256 over the **exact received body** (never a re-serialization), presented as
//!   lowercase or uppercase hex, with or without a `sha256=` prefix (p2-inc sends bare hex in
//!   `X-Keycloak-Signature`; other senders use `sha256=<hex>`).
//! - Static secrets: the whole `Authorization` value (Okta/Auth0 send the configured string
//!   verbatim, e.g. `Bearer abc` or `my-shared-secret`), or a bearer token.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Header carrying the p2-inc Keycloak body signature.
pub const KEYCLOAK_SIGNATURE_HEADER: &str = "X-Keycloak-Signature";
/// Header naming the signature algorithm (p2-inc sends `HmacSHA256`).
pub const KEYCLOAK_SIGNATURE_ALGORITHM_HEADER: &str = "X-Keycloak-Signature-Algorithm";

/// Why a request failed authentication. Messages never echo secrets or presented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The signature or Authorization header is absent.
    #[error("the {header} header is missing; configure the producer to send it")]
    Missing {
        /// The expected header.
        header: &'static str,
    },
    /// The signature is not 64 hex digits (optionally prefixed by `sha256=`).
    #[error("the {header} header is malformed; expected 64 hex digits, optionally prefixed by `sha256=`")]
    Malformed {
        /// The offending header.
        header: &'static str,
    },
    /// The algorithm header names something other than HMAC-SHA256.
    #[error("unsupported signature algorithm; configure the producer to use HmacSHA256")]
    UnsupportedAlgorithm,
    /// The signature or secret does not match.
    #[error("the {header} value does not match the secret configured for this source")]
    Mismatch {
        /// The header that did not match.
        header: &'static str,
    },
}

impl AuthError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing { .. } => "auth_missing",
            AuthError::Malformed { .. } => "auth_malformed",
            AuthError::UnsupportedAlgorithm => "auth_unsupported_algorithm",
            AuthError::Mismatch { .. } => "auth_mismatch",
        }
    }

    /// HTTP status: 401 for everything (the producer must fix its credentials).
    pub fn http_status(&self) -> u16 {
        401
    }
}

/// Lowercase hex HMAC-SHA256 of `body` (what a p2-inc sender puts in `X-Keycloak-Signature`).
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, body).finalize().into_bytes())
}

/// An HMAC-SHA256 instance; HMAC accepts keys of any length, so this cannot fail.
fn mac(secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        // Unreachable: HMAC's key-size check only applies to fixed-key MACs.
        Err(_) => <Hmac<Sha256> as Mac>::new(&Default::default()),
    };
    m.update(body);
    m
}

/// Verifies `X-Keycloak-Signature` (`hex` or `sha256=hex`) over the raw body in constant time.
///
/// `algorithm` is the `X-Keycloak-Signature-Algorithm` header, if sent; it must then name
/// HMAC-SHA256 (`HmacSHA256`, `sha256`, `hmac-sha256`, any case).
pub fn verify_hmac_sha256(
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
    algorithm: Option<&str>,
) -> Result<(), AuthError> {
    const HEADER: &str = KEYCLOAK_SIGNATURE_HEADER;
    if let Some(alg) = algorithm {
        let alg = alg.trim().to_ascii_lowercase();
        if !matches!(alg.as_str(), "hmacsha256" | "sha256" | "hmac-sha256") {
            return Err(AuthError::UnsupportedAlgorithm);
        }
    }
    let sig = signature.ok_or(AuthError::Missing { header: HEADER })?.trim();
    let hex_part = strip_prefix_ignore_case(sig, "sha256=").unwrap_or(sig);
    let mut expected = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut expected).map_err(|_| AuthError::Malformed { header: HEADER })?;
    mac(secret, body).verify_slice(&expected).map_err(|_| AuthError::Mismatch { header: HEADER })
}

/// `s` without `prefix` (ASCII case-insensitive), if it starts with it.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Compares a presented `Authorization` value with the configured one, whole and exact
/// (Okta and Auth0 send the configured string verbatim). Constant time, and independent of the
/// lengths: both sides are hashed first.
pub fn verify_authorization(expected: &str, presented: Option<&str>) -> Result<(), AuthError> {
    const HEADER: &str = "Authorization";
    let presented = presented.ok_or(AuthError::Missing { header: HEADER })?;
    if ct_eq_hashed(expected.as_bytes(), presented.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Mismatch { header: HEADER })
    }
}

/// Checks `Authorization: Bearer <token>` (scheme case-insensitive) against `expected_token`.
pub fn verify_bearer(expected_token: &str, presented: Option<&str>) -> Result<(), AuthError> {
    const HEADER: &str = "Authorization";
    let presented = presented.ok_or(AuthError::Missing { header: HEADER })?;
    let token = strip_prefix_ignore_case(presented.trim(), "bearer ")
        .ok_or(AuthError::Malformed { header: HEADER })?
        .trim_start();
    if ct_eq_hashed(expected_token.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Mismatch { header: HEADER })
    }
}

/// Constant-time equality of SHA-256(a) and SHA-256(b): no early exit, no length leak.
fn ct_eq_hashed(a: &[u8], b: &[u8]) -> bool {
    let ha: [u8; 32] = Sha256::digest(a).into();
    let hb: [u8; 32] = Sha256::digest(b).into();
    ha.ct_eq(&hb).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"kc-webhook-secret";
    const BODY: &[u8] = br#"{"id":"5e1f","type":"LOGIN"}"#;

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn good_signature_bare_and_prefixed() {
        let sig = hmac_sha256_hex(SECRET, BODY);
        assert_eq!(verify_hmac_sha256(SECRET, BODY, Some(&sig), None), Ok(()));
        let prefixed = format!("sha256={sig}");
        assert_eq!(verify_hmac_sha256(SECRET, BODY, Some(&prefixed), None), Ok(()));
        let upper = format!("SHA256={}", sig.to_uppercase());
        assert_eq!(verify_hmac_sha256(SECRET, BODY, Some(&upper), Some("HmacSHA256")), Ok(()));
    }

    #[test]
    fn bad_signature_is_a_mismatch() {
        let sig = hmac_sha256_hex(b"other-secret", BODY);
        let err = AuthError::Mismatch { header: KEYCLOAK_SIGNATURE_HEADER };
        assert_eq!(verify_hmac_sha256(SECRET, BODY, Some(&sig), None), Err(err));
        // Same secret, body changed by one byte (e.g. re-serialized with a space).
        let good = hmac_sha256_hex(SECRET, BODY);
        let other_body = br#"{"id":"5e1f", "type":"LOGIN"}"#;
        assert_eq!(verify_hmac_sha256(SECRET, other_body, Some(&good), None), Err(err));
    }

    #[test]
    fn missing_and_malformed_signatures() {
        let header = KEYCLOAK_SIGNATURE_HEADER;
        assert_eq!(verify_hmac_sha256(SECRET, BODY, None, None), Err(AuthError::Missing { header }));
        for bad in ["", "sha256=", "abc", "zz", &"0".repeat(66), "sha1=00"] {
            assert_eq!(
                verify_hmac_sha256(SECRET, BODY, Some(bad), None),
                Err(AuthError::Malformed { header }),
                "{bad:?}"
            );
        }
        let sig = hmac_sha256_hex(SECRET, BODY);
        assert_eq!(
            verify_hmac_sha256(SECRET, BODY, Some(&sig), Some("HmacSHA1")),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn static_authorization_value() {
        let header = "Authorization";
        assert_eq!(verify_authorization("Bearer s3cr3t", Some("Bearer s3cr3t")), Ok(()));
        assert_eq!(
            verify_authorization("Bearer s3cr3t", Some("Bearer s3cr3T")),
            Err(AuthError::Mismatch { header })
        );
        assert_eq!(
            verify_authorization("Bearer s3cr3t", Some("Bearer s3cr3t ")),
            Err(AuthError::Mismatch { header })
        );
        assert_eq!(verify_authorization("Bearer s3cr3t", None), Err(AuthError::Missing { header }));
    }

    #[test]
    fn bearer_token() {
        let header = "Authorization";
        assert_eq!(verify_bearer("tok", Some("Bearer tok")), Ok(()));
        assert_eq!(verify_bearer("tok", Some("bearer  tok")), Ok(()));
        assert_eq!(verify_bearer("tok", Some("Basic dG9r")), Err(AuthError::Malformed { header }));
        assert_eq!(verify_bearer("tok", Some("Bearer tok2")), Err(AuthError::Mismatch { header }));
        assert_eq!(verify_bearer("tok", None), Err(AuthError::Missing { header }));
    }

    #[test]
    fn messages_do_not_contain_secrets() {
        let e = verify_authorization("Bearer s3cr3t", Some("Bearer guess")).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("s3cr3t") && !msg.contains("guess"), "{msg}");
    }
}
