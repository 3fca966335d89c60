//! X.509 helpers for hardware-held ECDSA P-256 keys: a self-signed certificate, PEM output and
//! the key id.
//!
//! The private key never leaves the HSM or TPM, so the certificate is signed through a callback
//! (the backend's `sign`). `x509-cert`'s builder wants a `signature::Signer`; `CallbackSigner`
//! adapts the callback to that trait. Every signature the callback returns is verified against
//! the certified public key before it is used, so a callback that signs with the wrong key
//! produces an error instead of a certificate nobody can verify.

use anchorlog_core::key::ORIGIN_URI_PREFIX;
use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use base64::Engine;
use const_oid::db::rfc4519::CN;
use const_oid::db::rfc5912::ECDSA_WITH_SHA_256;
use der::asn1::SetOfVec;
use der::{Any, Decode, Encode, Tag};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

/// Length of the random serial number in bytes (RFC 5280 allows up to 20).
const SERIAL_LEN: usize = 16;

/// RFC 5280 upper bound `ub-common-name` in characters.
const MAX_COMMON_NAME_CHARS: usize = 64;

/// Seconds in one day of validity.
const SECS_PER_DAY: u64 = 86_400;

/// Why a certificate or PEM could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The SubjectPublicKeyInfo is malformed or not an EC P-256 key.
    #[error("the public key is not a DER SubjectPublicKeyInfo of an EC P-256 key: {reason}")]
    InvalidPublicKey {
        /// What the parser said.
        reason: String,
    },
    /// The `--subject` of a request is not an RFC 4514 distinguished name.
    #[error("invalid subject {subject:?}: {reason}; write it as an RFC 4514 name, e.g. \"CN=anchorlog head signer,O=Example Corp,C=DE\"")]
    InvalidSubject {
        /// The rejected subject.
        subject: String,
        /// What the parser said.
        reason: String,
    },
    /// The common name is empty or too long.
    #[error("invalid certificate common name '{common_name}': {reason}")]
    InvalidCommonName {
        /// The rejected name.
        common_name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The validity period cannot be expressed in a certificate.
    #[error("invalid certificate validity: {reason}")]
    InvalidValidity {
        /// What is wrong with it.
        reason: String,
    },
    /// The signing callback (the HSM or TPM) failed.
    #[error("signing the certificate failed: {reason}")]
    Signer {
        /// The callback's error, rendered with `Display`.
        reason: String,
    },
    /// The signing callback returned bytes that are not a DER ECDSA P-256 signature.
    #[error("the signer returned a malformed signature (expected DER ECDSA P-256): {reason}")]
    InvalidSignature {
        /// What the parser said.
        reason: String,
    },
    /// The signature does not verify with the certified key: the signer used another key.
    #[error("the signer's signature does not verify with the certificate's public key; the signer uses a different key")]
    SignatureMismatch,
    /// DER encoding or the certificate builder failed.
    #[error("encoding the certificate failed: {reason}")]
    Encoding {
        /// The encoder's error.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed: {reason}")]
    Random {
        /// The RNG's error.
        reason: String,
    },
}

/// The signing callback: DER ECDSA-with-SHA256 over exactly the given bytes, or the backend's error.
pub type SignCallback<'a, E> = dyn FnMut(&[u8]) -> Result<Vec<u8>, E> + 'a;

/// Adapts a signing callback to the traits `x509-cert`'s builder requires.
///
/// `Signer::try_sign` takes `&self` but the callback is `FnMut`, hence the `RefCell`. The
/// builder's error type cannot carry our errors, so the real cause is parked in `failure`.
struct CallbackSigner<'a, E> {
    verifying_key: VerifyingKey,
    sign: RefCell<&'a mut SignCallback<'a, E>>,
    failure: RefCell<Option<CertificateError>>,
}

impl<E> signature::Keypair for CallbackSigner<'_, E> {
    type VerifyingKey = VerifyingKey;

    fn verifying_key(&self) -> VerifyingKey {
        self.verifying_key
    }
}

impl<E> DynSignatureAlgorithmIdentifier for CallbackSigner<'_, E> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        // RFC 5758 §3.2: ecdsa-with-SHA256 has absent parameters.
        Ok(AlgorithmIdentifierOwned { oid: ECDSA_WITH_SHA_256, parameters: None })
    }
}

impl<E: std::fmt::Display> CallbackSigner<'_, E> {
    /// Calls the callback and checks its answer against the certified key.
    fn sign_checked(&self, message: &[u8]) -> Result<DerSignature, CertificateError> {
        let der = {
            let mut sign = self.sign.try_borrow_mut().map_err(|_| CertificateError::Signer {
                reason: "the signing callback was re-entered".to_owned(),
            })?;
            (*sign)(message).map_err(|e| CertificateError::Signer { reason: e.to_string() })?
        };
        let signature = Signature::from_der(&der)
            .map_err(|e| CertificateError::InvalidSignature { reason: e.to_string() })?;
        self.verifying_key.verify(message, &signature).map_err(|_| CertificateError::SignatureMismatch)?;
        Ok(signature.to_der())
    }
}

impl<E: std::fmt::Display> signature::Signer<DerSignature> for CallbackSigner<'_, E> {
    fn try_sign(&self, message: &[u8]) -> Result<DerSignature, signature::Error> {
        self.sign_checked(message).map_err(|e| {
            if let Ok(mut slot) = self.failure.try_borrow_mut() {
                *slot = Some(e);
            }
            signature::Error::new()
        })
    }
}

/// An X.509 v3 certificate for an ECDSA P-256 public key, self-signed by that same key through `sign`, which must return a
/// DER ECDSA-with-SHA256 signature over exactly the bytes it is given (the hardware signer's `sign`). Used by
/// `anchorlog keys export` for both the PKCS#11 and the TPM backend.
///
/// Content: random positive serial (16 content octets, 126 random bits); subject = issuer = `CN=<common_name>`; validity
/// `not_before` (whole seconds) to `not_before + validity_days`; basicConstraints CA:FALSE
/// (critical); keyUsage digitalSignature + nonRepudiation (critical); subject and authority key
/// identifiers (SHA-1 of the key, RFC 5280 method 1, equal because it is self-signed);
/// signature algorithm ecdsa-with-SHA256. The key is re-encoded canonically (uncompressed
/// point), so a compressed input SPKI is certified as the same key in uncompressed form.
pub fn self_signed_certificate<E: std::fmt::Display>(
    spki_der: &[u8],
    common_name: &str,
    not_before: SystemTime,
    validity_days: u32,
    sign: &mut SignCallback<'_, E>,
) -> Result<Vec<u8>, CertificateError> {
    build_certificate(spki_der, common_name, None, not_before, validity_days, sign)
}

/// Common name of the head signer's certificate ([`log_signer_certificate`]).
pub const LOG_SIGNER_COMMON_NAME: &str = "anchorlog head signer";

/// The head signer's certificate ([`self_signed_certificate`] with CN [`LOG_SIGNER_COMMON_NAME`]) naming the
/// log it signs for: a subjectAltName URI `urn:anchorlog:origin:<origin>` (origin bytes other than
/// `A-Z a-z 0-9 - . _ ~ / :` percent-encoded). A verifier given the certificate takes the origin from it, so a
/// log of another origin signed by the same key does not pass for this one (docs/FORMAT.md §5).
pub fn log_signer_certificate<E: std::fmt::Display>(
    spki_der: &[u8],
    origin: &str,
    not_before: SystemTime,
    validity_days: u32,
    sign: &mut SignCallback<'_, E>,
) -> Result<Vec<u8>, CertificateError> {
    build_certificate(spki_der, LOG_SIGNER_COMMON_NAME, Some(origin), not_before, validity_days, sign)
}

/// A PKCS#10 certification request (RFC 2986) for the head signer's key, signed inside the HSM/TPM through `sign`
/// like [`log_signer_certificate`], so an organisation's CA can issue `signer.crt`. Subject: `subject` (an RFC 4514
/// string) or `CN=anchorlog head signer`. Requested extensions: the origin subjectAltName URI
/// `urn:anchorlog:origin:<origin>`, basicConstraints CA:FALSE and keyUsage digitalSignature + nonRepudiation (both
/// critical): what a verifier needs from the issued certificate. Signature algorithm ecdsa-with-SHA256; the
/// signature is verified against the key before the request is returned. DER.
pub fn log_signer_request<E: std::fmt::Display>(
    spki_der: &[u8],
    origin: &str,
    subject: Option<&str>,
    sign: &mut SignCallback<'_, E>,
) -> Result<Vec<u8>, CertificateError> {
    use std::str::FromStr as _;
    use x509_cert::builder::RequestBuilder;
    use x509_cert::ext::pkix::{name::GeneralName, BasicConstraints, KeyUsage, KeyUsages, SubjectAltName};
    let verifying_key = parse_p256_spki(spki_der)?;
    let name = match subject {
        Some(s) => Name::from_str(s)
            .map_err(|e| CertificateError::InvalidSubject { subject: s.to_owned(), reason: e.to_string() })?,
        None => common_name_to_name(LOG_SIGNER_COMMON_NAME)?,
    };
    let signer = CallbackSigner { verifying_key, sign: RefCell::new(sign), failure: RefCell::new(None) };
    let mut builder = RequestBuilder::new(name, &signer).map_err(encoding)?;
    let uri = der::asn1::Ia5String::new(&format!("{ORIGIN_URI_PREFIX}{}", percent_encode(origin)))
        .map_err(encoding)?;
    builder
        .add_extension(&SubjectAltName(vec![GeneralName::UniformResourceIdentifier(uri)]))
        .map_err(encoding)?;
    builder.add_extension(&BasicConstraints { ca: false, path_len_constraint: None }).map_err(encoding)?;
    builder
        .add_extension(&KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation))
        .map_err(encoding)?;
    let built = builder.build::<DerSignature>();
    if let Some(failure) = signer.failure.borrow_mut().take() {
        return Err(failure);
    }
    built.map_err(encoding)?.to_der().map_err(encoding)
}

/// PEM (`CERTIFICATE REQUEST`) of a DER PKCS#10 request.
pub fn request_pem(der: &[u8]) -> String {
    pem("CERTIFICATE REQUEST", der)
}

fn percent_encode(origin: &str) -> String {
    let mut out = String::with_capacity(origin.len());
    for b in origin.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn build_certificate<E: std::fmt::Display>(
    spki_der: &[u8],
    common_name: &str,
    origin: Option<&str>,
    not_before: SystemTime,
    validity_days: u32,
    sign: &mut SignCallback<'_, E>,
) -> Result<Vec<u8>, CertificateError> {
    let verifying_key = parse_p256_spki(spki_der)?;
    let subject_key = canonical_spki(&verifying_key)?;
    let name = common_name_to_name(common_name)?;
    let validity = validity(not_before, validity_days)?;
    let serial = random_serial()?;
    let signer = CallbackSigner { verifying_key, sign: RefCell::new(sign), failure: RefCell::new(None) };
    // Leaf with issuer = subject: self-signed, but CA:FALSE and end-entity key usages
    // (Profile::Root would make it a CA with keyCertSign).
    let profile =
        Profile::Leaf { issuer: name.clone(), enable_key_agreement: false, enable_key_encipherment: false };
    let mut builder =
        CertificateBuilder::new(profile, serial, validity, name, subject_key, &signer).map_err(encoding)?;
    if let Some(origin) = origin {
        use x509_cert::ext::pkix::name::GeneralName;
        let uri = der::asn1::Ia5String::new(&format!("{ORIGIN_URI_PREFIX}{}", percent_encode(origin)))
            .map_err(encoding)?;
        let san = x509_cert::ext::pkix::SubjectAltName(vec![GeneralName::UniformResourceIdentifier(uri)]);
        builder.add_extension(&san).map_err(encoding)?;
    }
    let built = builder.build::<DerSignature>();
    // A callback failure surfaces as an opaque signature::Error; report the parked cause.
    if let Some(failure) = signer.failure.borrow_mut().take() {
        return Err(failure);
    }
    built.map_err(encoding)?.to_der().map_err(encoding)
}

/// Wraps any encoder or builder error.
fn encoding(e: impl std::fmt::Display) -> CertificateError {
    CertificateError::Encoding { reason: e.to_string() }
}

/// Parses a DER SubjectPublicKeyInfo that must hold an EC P-256 key.
fn parse_p256_spki(spki_der: &[u8]) -> Result<VerifyingKey, CertificateError> {
    VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| CertificateError::InvalidPublicKey { reason: e.to_string() })
}

/// The SPKI re-encoded from the key, so SKI and AKI are computed over identical bytes.
fn canonical_spki(key: &VerifyingKey) -> Result<SubjectPublicKeyInfoOwned, CertificateError> {
    let der = key.to_public_key_der().map_err(encoding)?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(encoding)
}

/// `CN=<common_name>` as a single-RDN name with a UTF8String value.
///
/// Built directly rather than through the string parser so names containing `,` `=` `+` need
/// no escaping.
fn common_name_to_name(common_name: &str) -> Result<Name, CertificateError> {
    let invalid =
        |reason| CertificateError::InvalidCommonName { common_name: common_name.to_owned(), reason };
    if common_name.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if common_name.chars().count() > MAX_COMMON_NAME_CHARS {
        return Err(invalid("it is longer than 64 characters (RFC 5280 ub-common-name)"));
    }
    let value = Any::new(Tag::Utf8String, common_name.as_bytes()).map_err(encoding)?;
    let atv = AttributeTypeAndValue { oid: CN, value };
    let set = SetOfVec::try_from(vec![atv]).map_err(encoding)?;
    Ok(RdnSequence(vec![RelativeDistinguishedName(set)]))
}

/// Validity from `not_before` (truncated to whole seconds) for `days` days.
fn validity(not_before: SystemTime, days: u32) -> Result<Validity, CertificateError> {
    if days == 0 {
        return Err(CertificateError::InvalidValidity {
            reason: "validity_days must be at least 1".to_owned(),
        });
    }
    let not_after =
        not_before.checked_add(Duration::from_secs(u64::from(days) * SECS_PER_DAY)).ok_or_else(|| {
            CertificateError::InvalidValidity { reason: format!("not_before + {days} days overflows") }
        })?;
    let to_time = |t: SystemTime, which: &str| {
        Time::try_from(t).map_err(|e| CertificateError::InvalidValidity {
            reason: format!("{which} is outside 1970..9999 ({e})"),
        })
    };
    Ok(Validity {
        not_before: to_time(not_before, "not_before")?,
        not_after: to_time(not_after, "not_after")?,
    })
}

/// A random positive serial number of exactly [`SERIAL_LEN`] bytes.
fn random_serial() -> Result<SerialNumber, CertificateError> {
    use rand::RngCore;
    let mut bytes = [0u8; SERIAL_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| CertificateError::Random { reason: e.to_string() })?;
    // Top bit clear and second bit set: the DER INTEGER is positive and exactly SERIAL_LEN
    // content octets (no 0x00 sign pad, no stripped leading zeros); 126 random bits remain.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::new(&bytes).map_err(encoding)
}

/// PEM (`-----BEGIN CERTIFICATE-----`) for a DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    pem("CERTIFICATE", der)
}

/// PEM (`-----BEGIN PUBLIC KEY-----`) for a DER SubjectPublicKeyInfo; checks the DER first.
pub fn public_key_pem(spki_der: &[u8]) -> Result<String, CertificateError> {
    // Any algorithm is accepted here: the PEM is just a transport form of the SPKI.
    spki::SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| CertificateError::InvalidPublicKey { reason: e.to_string() })?;
    Ok(pem("PUBLIC KEY", spki_der))
}

/// RFC 7468 PEM with 64-character lines and `\n` line endings.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so splitting bytes at 64 never splits a character.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorlog_core::key::key_id;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::SigningKey;
    use sha2::{Digest as _, Sha256};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use x509_cert::Certificate;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn spki(sk: &SigningKey) -> Vec<u8> {
        sk.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec()
    }

    /// A software P-256 key standing in for the hardware `sign` (real ECDSA, checked by openssl).
    fn software_sign(sk: &SigningKey) -> impl FnMut(&[u8]) -> Result<Vec<u8>, String> + '_ {
        move |msg: &[u8]| {
            let sig: Signature = sk.sign(msg);
            Ok(sig.to_der().as_bytes().to_vec())
        }
    }

    fn t0() -> SystemTime {
        // 2026-09-21T14:13:20Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    fn openssl(args: &[&str]) -> std::process::Output {
        Command::new("openssl").args(args).output().unwrap()
    }

    fn cert_for(sk: &SigningKey, cn: &str) -> Vec<u8> {
        self_signed_certificate(&spki(sk), cn, t0(), 365, &mut software_sign(sk)).unwrap()
    }

    #[test]
    fn certificate_fields_are_exact() {
        let sk = key(3);
        let der = cert_for(&sk, "anchorlog test, unit=1");
        let cert = Certificate::from_der(&der).unwrap();
        let tbs = &cert.tbs_certificate;
        assert_eq!(tbs.version, x509_cert::Version::V3);
        assert_eq!(tbs.serial_number.as_bytes().len(), SERIAL_LEN);
        assert_eq!(tbs.issuer, tbs.subject);
        assert_eq!(tbs.subject.to_string(), "CN=anchorlog test\\, unit=1");
        assert_eq!(tbs.signature.oid, ECDSA_WITH_SHA_256);
        assert_eq!(tbs.signature.parameters, None);
        assert_eq!(cert.signature_algorithm, tbs.signature);
        assert_eq!(tbs.validity.not_before.to_unix_duration(), Duration::from_secs(1_790_000_000));
        assert_eq!(
            tbs.validity.not_after.to_unix_duration(),
            Duration::from_secs(1_790_000_000 + 365 * 86_400)
        );
        assert_eq!(tbs.subject_public_key_info.to_der().unwrap(), spki(&sk));
        let exts = tbs.extensions.as_ref().unwrap();
        let by_oid = |oid| exts.iter().find(|e| e.extn_id == oid).unwrap();
        use const_oid::db::rfc5280::{
            ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS, ID_CE_KEY_USAGE,
            ID_CE_SUBJECT_KEY_IDENTIFIER,
        };
        let bc = by_oid(ID_CE_BASIC_CONSTRAINTS);
        assert!(bc.critical);
        assert_eq!(bc.extn_value.as_bytes(), &[0x30, 0x00]); // CA:FALSE (DEFAULT, omitted)
        let ku = by_oid(ID_CE_KEY_USAGE);
        assert!(ku.critical);
        assert_eq!(ku.extn_value.as_bytes(), &[0x03, 0x02, 0x06, 0xc0]); // DS + NR
        assert!(!by_oid(ID_CE_SUBJECT_KEY_IDENTIFIER).critical);
        assert!(!by_oid(ID_CE_AUTHORITY_KEY_IDENTIFIER).critical);
        assert_eq!(exts.len(), 4);
        // The signature is over the TBS bytes and verifies with the key.
        let sig = Signature::from_der(cert.signature.raw_bytes()).unwrap();
        sk.verifying_key().verify(&tbs.to_der().unwrap(), &sig).unwrap();
    }

    #[test]
    fn a_signing_request_verifies_with_openssl_and_asks_for_what_a_verifier_needs() {
        let sk = key(6);
        let der =
            log_signer_request(&spki(&sk), "anchorlog.test/p 1", None, &mut software_sign(&sk)).unwrap();
        let req = x509_cert::request::CertReq::from_der(&der).unwrap();
        assert_eq!(req.info.subject.to_string(), "CN=anchorlog head signer");
        assert_eq!(req.info.public_key.to_der().unwrap(), spki(&sk));
        assert_eq!(req.algorithm.oid, ECDSA_WITH_SHA_256);
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "signer.csr", request_pem(&der).as_bytes());
        let out = openssl(&["req", "-verify", "-in", path.to_str().unwrap(), "-noout", "-text"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stderr}");
        // OpenSSL 3 prints "Certificate request self-signature verify OK", 1.1 "verify OK".
        assert!(stderr.contains("verify OK") || text.contains("verify OK"), "{stderr}{text}");
        for needle in [
            "URI:urn:anchorlog:origin:anchorlog.test/p%201",
            "CA:FALSE",
            "Digital Signature, Non Repudiation",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        // A given subject; a malformed one is refused; a signer with another key produces no request.
        let named = log_signer_request(
            &spki(&sk),
            "o",
            Some("CN=head signer,O=Example Corp,C=DE"),
            &mut software_sign(&sk),
        )
        .unwrap();
        let named = x509_cert::request::CertReq::from_der(&named).unwrap();
        assert_eq!(named.info.subject.to_string(), "CN=head signer,O=Example Corp,C=DE");
        assert!(matches!(
            log_signer_request(&spki(&sk), "o", Some("not a name"), &mut software_sign(&sk)),
            Err(CertificateError::InvalidSubject { .. })
        ));
        let other = key(7);
        assert!(matches!(
            log_signer_request(&spki(&sk), "o", None, &mut software_sign(&other)),
            Err(CertificateError::SignatureMismatch)
        ));
    }

    #[test]
    fn serials_are_random_positive_and_16_octets() {
        let sk = key(4);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..32 {
            let cert = Certificate::from_der(&cert_for(&sk, "a")).unwrap();
            let serial = cert.tbs_certificate.serial_number.as_bytes().to_vec();
            assert_eq!(serial.len(), SERIAL_LEN);
            assert_eq!(serial[0] & 0xc0, 0x40, "positive, no sign pad");
            assert!(seen.insert(serial));
        }
    }

    #[test]
    fn openssl_parses_and_verifies_self_signed_chain() {
        let sk = key(5);
        let der = cert_for(&sk, "anchorlog head signer");
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "cert.pem", certificate_pem(&der).as_bytes());
        let p = path.to_str().unwrap();
        let text = openssl(&["x509", "-in", p, "-noout", "-text"]);
        assert!(text.status.success());
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        for needle in [
            "Version: 3 (0x2)",
            "Signature Algorithm: ecdsa-with-SHA256",
            "Issuer: CN = anchorlog head signer",
            "Subject: CN = anchorlog head signer",
            "ASN1 OID: prime256v1",
            "X509v3 Basic Constraints: critical\n                CA:FALSE",
            "X509v3 Key Usage: critical\n                Digital Signature, Non Repudiation",
            "X509v3 Subject Key Identifier:",
            "Not Before: Sep 21 14:13:20 2026 GMT",
            "Not After : Sep 21 14:13:20 2027 GMT",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let verify = openssl(&["verify", "-CAfile", p, p]);
        assert_eq!(
            String::from_utf8_lossy(&verify.stdout),
            format!("{p}: OK\n"),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        // DER round trip through openssl is byte-identical.
        let out = openssl(&["x509", "-in", p, "-outform", "DER"]);
        assert_eq!(out.stdout, der);
    }

    #[test]
    fn signer_with_another_key_is_signature_mismatch() {
        let (certified, other) = (key(6), key(7));
        let err =
            self_signed_certificate(&spki(&certified), "x", t0(), 1, &mut software_sign(&other)).unwrap_err();
        assert!(matches!(err, CertificateError::SignatureMismatch), "{err:?}");
    }

    #[test]
    fn signer_error_is_reported_with_its_message() {
        let sk = key(8);
        let err = self_signed_certificate(&spki(&sk), "x", t0(), 1, &mut |_: &[u8]| {
            Err::<Vec<u8>, _>("token unplugged")
        })
        .unwrap_err();
        assert!(
            matches!(&err, CertificateError::Signer { reason } if reason == "token unplugged"),
            "{err:?}"
        );
    }

    #[test]
    fn raw_signature_is_invalid_signature() {
        let sk = key(9);
        let err = self_signed_certificate(&spki(&sk), "x", t0(), 1, &mut |m: &[u8]| {
            let sig: Signature = sk.sign(m);
            Ok::<_, String>(sig.to_bytes().to_vec()) // r||s, not DER
        })
        .unwrap_err();
        assert!(matches!(err, CertificateError::InvalidSignature { .. }), "{err:?}");
    }

    #[test]
    fn bad_inputs_are_rejected_before_signing() {
        let sk = key(10);
        let mut never = |_: &[u8]| -> Result<Vec<u8>, String> { panic!("must not sign") };
        let err = self_signed_certificate(b"\x30\x00", "x", t0(), 1, &mut never).unwrap_err();
        assert!(matches!(err, CertificateError::InvalidPublicKey { .. }), "{err:?}");
        let err = self_signed_certificate(&spki(&sk), " ", t0(), 1, &mut never).unwrap_err();
        assert!(matches!(err, CertificateError::InvalidCommonName { reason: "it is empty", .. }), "{err:?}");
        let long = "n".repeat(65);
        let err = self_signed_certificate(&spki(&sk), &long, t0(), 1, &mut never).unwrap_err();
        assert!(matches!(err, CertificateError::InvalidCommonName { .. }), "{err:?}");
        let err = self_signed_certificate(&spki(&sk), "x", t0(), 0, &mut never).unwrap_err();
        assert!(matches!(err, CertificateError::InvalidValidity { .. }), "{err:?}");
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        let err = self_signed_certificate(&spki(&sk), "x", before_1970, 1, &mut never).unwrap_err();
        assert!(matches!(err, CertificateError::InvalidValidity { .. }), "{err:?}");
    }

    #[test]
    fn validity_beyond_2049_uses_generalized_time() {
        let sk = key(11);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(2_500_000_000); // 2049-03-22
        let der = self_signed_certificate(&spki(&sk), "x", start, 3650, &mut software_sign(&sk)).unwrap();
        let cert = Certificate::from_der(&der).unwrap();
        let v = cert.tbs_certificate.validity;
        assert!(matches!(v.not_before, Time::UtcTime(_)));
        assert!(matches!(v.not_after, Time::GeneralTime(_)));
    }

    #[test]
    fn key_id_is_sha256_of_spki_and_matches_openssl() {
        let sk = key(12);
        let spki = spki(&sk);
        assert_eq!(key_id(&spki), hex::encode(Sha256::digest(&spki)));
        assert_eq!(key_id(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let dir = tempfile::tempdir().unwrap();
        let pem = write(dir.path(), "pub.pem", public_key_pem(&spki).unwrap().as_bytes());
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl pkey -pubin -in '{}' -outform DER | sha256sum", pem.display()))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(stdout.split_whitespace().next().unwrap(), key_id(&spki));
    }

    #[test]
    fn pem_matches_der_crate_encoding() {
        let sk = key(13);
        let spki = spki(&sk);
        let ours = public_key_pem(&spki).unwrap();
        let theirs = sk.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        assert_eq!(ours, theirs);
        let cert = cert_for(&sk, "x");
        let pem = certificate_pem(&cert);
        let theirs = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &cert).unwrap();
        assert_eq!(pem, theirs);
        assert!(pem.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn public_key_pem_rejects_garbage() {
        let err = public_key_pem(b"not der").unwrap_err();
        assert!(matches!(err, CertificateError::InvalidPublicKey { .. }), "{err:?}");
    }
}
