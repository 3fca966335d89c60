//! The head-signing key's public half, as every verifier needs it (docs/FORMAT.md §5).
//!
//! Verification keys belong here, not with the devices: the appliance's signer layer (PKCS#11, TPM) only
//! produces signatures, and the auditor's verifier, the browser and the appliance's own checks all take the
//! key from this module.

use der::{DecodePem as _, Encode as _};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use sha2::{Digest as _, Sha256};

/// Prefix of the subjectAltName URI that names the log a head-signer certificate is for
/// (`urn:anchorlog:origin:<origin>`, the origin percent-encoded: docs/FORMAT.md §5).
pub const ORIGIN_URI_PREFIX: &str = "urn:anchorlog:origin:";

/// Why a public key or certificate cannot be used as the head-signing key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not an ECDSA P-256 key, or not a parsable PEM key or certificate.
    #[error("the signing key is not an ECDSA P-256 key: {0}")]
    Unsupported(String),
}

/// The public half of the head-signing key, as every verifier needs it.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// Hex SHA-256 of `spki_der`.
    pub key_id: String,
    /// The parsed key.
    pub verifying_key: VerifyingKey,
    /// The log origin the key's certificate names (`None` for a bare public key or another certificate): a
    /// verifier given no `--origin` pins every head to it ([`certified_origin`]).
    pub certified_origin: Option<String>,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo holding an ECDSA P-256 key.
    pub fn from_spki_der(spki_der: &[u8]) -> Result<Self, KeyError> {
        let verifying_key =
            VerifyingKey::from_public_key_der(spki_der).map_err(|e| KeyError::Unsupported(e.to_string()))?;
        Ok(Self {
            spki_der: spki_der.to_vec(),
            key_id: key_id(spki_der),
            verifying_key,
            certified_origin: None,
        })
    }

    /// Parses a PEM public key (`-----BEGIN PUBLIC KEY-----`) or a PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if pem.contains("BEGIN CERTIFICATE") {
            let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| KeyError::Unsupported(format!("not a PEM certificate: {e}")))?;
            let spki = cert
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|e| KeyError::Unsupported(e.to_string()))?;
            let mut key = Self::from_spki_der(&spki)?;
            key.certified_origin = certified_origin(&cert);
            return Ok(key);
        }
        let verifying_key =
            VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::Unsupported(e.to_string()))?;
        let der = verifying_key.to_public_key_der().map_err(|e| KeyError::Unsupported(e.to_string()))?;
        Self::from_spki_der(der.as_bytes())
    }

    /// Whether `signature` (DER) is a valid signature of `message` under this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match DerSignature::try_from(signature) {
            Ok(sig) => self.verifying_key.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

/// Key id = lowercase hex SHA-256 of the SubjectPublicKeyInfo DER.
pub fn key_id(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// The origin a head-signer certificate names (the appliance's `signer::x509::log_signer_certificate` writes
/// it), if it names one.
pub fn certified_origin(cert: &x509_cert::Certificate) -> Option<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let (_, san) = cert.tbs_certificate.get::<SubjectAltName>().ok()??;
    san.0.iter().find_map(|n| match n {
        GeneralName::UniformResourceIdentifier(uri) => {
            uri.as_str().strip_prefix(ORIGIN_URI_PREFIX).and_then(percent_decode)
        }
        _ => None,
    })
}

/// Undoes the `%XX` escapes of an origin in a certificate URI; `None` if an escape is broken or the result is
/// not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The PEM blocks (`-----BEGIN …-----` to `-----END …-----`) of `text`, in order; text around them is ignored. A
/// keyring file or a key field holding several public keys or certificates is read block by block.
pub fn pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let from = &rest[start..];
        let Some(end) = from.find("-----END ") else { break };
        let after = &from[end + "-----END ".len()..];
        let close = after.find("-----").map_or(after.len(), |i| i + "-----".len());
        let len = end + "-----END ".len() + close;
        blocks.push(&from[..len]);
        rest = &from[len..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_found_in_order_with_text_around_them() {
        let text = "comment\n-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\nmore\n\
                    -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_blocks(text),
            [
                "-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----",
                "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----"
            ]
        );
        assert!(pem_blocks("no pem here").is_empty());
        assert!(pem_blocks("-----BEGIN PUBLIC KEY-----\nunterminated").is_empty());
    }
}
