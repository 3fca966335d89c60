//! The source listener's credential checks (src/formats/auth.rs, called from src/api/sources.rs): the
//! `Authorization` value (whole, or `Bearer <token>`) and `X-Keycloak-Signature` /
//! `X-Keycloak-Signature-Algorithm` against a secret. The input is split at NUL bytes into the secret, the body
//! and the presented header values.
#![no_main]

use anchorlog::formats::auth;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0);
    let secret = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    // Header values reach the checks as &str (HeaderValue::to_str), so only UTF-8 ones.
    let header = parts.next().and_then(|h| std::str::from_utf8(h).ok());
    let algorithm = parts.next().and_then(|h| std::str::from_utf8(h).ok());

    let _ = auth::verify_hmac_sha256(secret, body, header, algorithm);
    if let Ok(secret) = std::str::from_utf8(secret) {
        let _ = auth::verify_authorization(secret, header);
        let _ = auth::verify_bearer(secret, header);
        // What a correct sender presents always passes, in each accepted spelling.
        assert!(auth::verify_authorization(secret, Some(secret)).is_ok());
        if secret.trim() == secret && !secret.is_empty() {
            assert!(auth::verify_bearer(secret, Some(&format!("Bearer {secret}"))).is_ok());
            assert!(auth::verify_bearer(secret, Some(&format!("bEaReR  {secret}"))).is_ok());
        }
    }
    let mac = auth::hmac_sha256_hex(secret, body);
    assert!(auth::verify_hmac_sha256(secret, body, Some(&mac), None).is_ok());
    assert!(
        auth::verify_hmac_sha256(secret, body, Some(&format!("sha256={mac}")), Some("HmacSHA256")).is_ok()
    );
    // And a wrong one never does.
    if let Some(h) = header {
        let presented = h.trim();
        let hex = presented
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("sha256="))
            .map_or(presented, |_| &presented[7..]);
        if !hex.eq_ignore_ascii_case(&mac) {
            assert!(auth::verify_hmac_sha256(secret, body, header, algorithm).is_err());
        }
    }
});
