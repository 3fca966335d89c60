//! Building RFC 3161 `TimeStampReq` messages.
//!
//! A request carries SHA-256 of the data, a fresh random 64-bit nonce (so a stale or
//! replayed response cannot be passed off as the answer) and `certReq = true` (so the token
//! embeds the TSA certificate and can be verified offline with only the TSA CA certificate).
//!
//! The encoding is pure; the random bytes of the nonce come from the caller (the appliance's
//! `tsa::build_request` draws them from the operating system), so this crate reads no entropy source.

use der::asn1::{Int, OctetString};
use der::Encode;
use spki::AlgorithmIdentifierOwned;

use super::token::{MessageImprint, TimeStampReq};
use super::TokenError;

/// A DER-encoded time-stamp request and the values its response must echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimestampRequest {
    /// The DER `TimeStampReq`, the body of the HTTP POST.
    pub der: Vec<u8>,
    /// The nonce as the content octets of a positive, minimally encoded INTEGER (8 bytes).
    pub nonce: Vec<u8>,
    /// SHA-256 of the time-stamped data.
    pub imprint: [u8; 32],
}

/// Builds a request for an already computed SHA-256 digest with `certReq = true` and the nonce made from
/// `random` (8 fresh random bytes, see [`positive_nonce`]).
pub fn build_request_with_nonce(imprint: [u8; 32], random: [u8; 8]) -> Result<TimestampRequest, TokenError> {
    let nonce = positive_nonce(random);
    let encode_err = |e: der::Error| TokenError::malformed(format!("cannot encode request: {e}"));
    let req = TimeStampReq {
        version: 1,
        message_imprint: MessageImprint {
            // Parameters absent, as RFC 5754 prescribes for SHA-2.
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: const_oid::db::rfc5912::ID_SHA_256,
                parameters: None,
            },
            hashed_message: OctetString::new(imprint.to_vec()).map_err(encode_err)?,
        },
        req_policy: None,
        nonce: Some(Int::new(&nonce).map_err(encode_err)?),
        cert_req: true,
        extensions: None,
    };
    Ok(TimestampRequest { der: req.to_der().map_err(encode_err)?, nonce: nonce.to_vec(), imprint })
}

/// A 64-bit nonce from 8 random bytes that encodes as a positive, minimal INTEGER.
///
/// `der::asn1::Int::new` reads its input as two's complement: a first byte >= 0x80 would make
/// the nonce negative and a first byte 0x00 would be a non-minimal encoding (which strict TSAs
/// and verifiers reject). So the top bit is cleared and a zero first byte is replaced.
pub fn positive_nonce(random: [u8; 8]) -> [u8; 8] {
    let mut n = random;
    n[0] &= 0x7f;
    if n[0] == 0 {
        n[0] = 1;
    }
    n
}

/// Test stand-ins for the appliance's `tsa::build_request`, which draws the nonce from the operating system.
#[cfg(test)]
pub(crate) mod random {
    use super::*;
    use rand::RngCore as _;
    use sha2::{Digest, Sha256};

    /// A random 64-bit nonce that encodes as a positive, minimal INTEGER.
    pub(crate) fn random_nonce() -> [u8; 8] {
        let mut n = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut n);
        positive_nonce(n)
    }

    /// Builds a request for `SHA-256(message)` with a random nonce and `certReq = true`.
    pub(crate) fn build_request(message: &[u8]) -> Result<TimestampRequest, TokenError> {
        let mut n = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut n);
        build_request_with_nonce(Sha256::digest(message).into(), n)
    }
}

#[cfg(test)]
mod tests {
    use super::random::{build_request, random_nonce};
    use super::*;
    use der::Decode;
    use sha2::{Digest, Sha256};

    #[test]
    fn nonce_is_positive_and_minimal() {
        for _ in 0..2000 {
            let n = random_nonce();
            assert!(n[0] >= 1 && n[0] <= 0x7f, "{n:02x?}");
            let int = Int::new(&n).unwrap();
            assert_eq!(int.as_bytes(), &n[..]);
        }
    }

    #[test]
    fn request_has_expected_shape() {
        let r = build_request(b"head text").unwrap();
        assert_eq!(r.imprint, <[u8; 32]>::from(Sha256::digest(b"head text")));
        // SEQ hdr(2) + version(3) + imprint(2 + 13 + 34) + nonce(2 + 8) + certReq(3) = 67.
        assert_eq!(r.der.len(), 67);
        let parsed = TimeStampReq::from_der(&r.der).unwrap();
        assert_eq!(parsed.version, 1);
        assert!(parsed.cert_req);
        assert_eq!(parsed.message_imprint.hash_algorithm.oid, const_oid::db::rfc5912::ID_SHA_256);
        assert_eq!(parsed.message_imprint.hashed_message.as_bytes(), &r.imprint);
        assert_eq!(parsed.nonce.unwrap().as_bytes(), &r.nonce[..]);
        assert_ne!(build_request(b"head text").unwrap().nonce, r.nonce);
    }

    #[test]
    fn openssl_parses_our_request() {
        let dir = tempfile::tempdir().unwrap();
        let r = build_request(b"hello").unwrap();
        let path = dir.path().join("q.tsq");
        std::fs::write(&path, &r.der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["ts", "-query", "-text", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Hash Algorithm: sha256"), "{text}");
        assert!(text.contains("Certificate required: yes"), "{text}");
        let hex_nonce = format!("0x{}", hex::encode_upper(&r.nonce));
        assert!(text.contains(&hex_nonce), "{text} / {hex_nonce}");
    }
}
