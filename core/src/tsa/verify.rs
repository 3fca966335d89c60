//! Pure verification of RFC 3161 responses and tokens (no I/O, no async).
//!
//! Used both by the sealer (before a token is stored) and by the offline auditor verifier, so
//! it must not depend on tokio/hyper. Checks, in order (the first failure is reported):
//!
//! 1. `TimeStampResp` status is granted / grantedWithMods and carries a token.
//! 2. The token is `SignedData` over `id-ct-TSTInfo`; the TSTInfo decodes (fractions allowed).
//! 3. TSTInfo imprint = SHA-256 of the data, and the nonce matches (when one is expected).
//! 4. Exactly one SignerInfo; its certificate is found (token certificates, then anchors).
//! 5. Signed attributes: content-type = id-ct-TSTInfo, message-digest = hash(TSTInfo).
//! 6. The signature over DER(SET OF signed attributes) verifies with the signer's key.
//! 7. ESSCertIDv2 (any SHA-2) or ESSCertID (SHA-1) identifies exactly that certificate.
//! 8. The certificate has a critical extendedKeyUsage containing only `timeStamping`.
//! 9. It chains to a configured anchor (directly or via CA certificates in the token), each
//!    signature verifies and every certificate of the chain is valid at `genTime`.
//! 10. Policy (if configured) and `genTime >= not_before` (if configured).
//!
//! Revocation (CRL/OCSP) is not checked: the appliance runs offline and TSA certificates are
//! short-lived; an operator who distrusts a TSA removes its CA from the trust file.

use std::time::SystemTime;

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use const_oid::db::{rfc5280, rfc5911, rfc5912};
use const_oid::ObjectIdentifier;
use der::asn1::OctetString;
use der::{Decode, DecodePem, Encode, Tagged};
use sha2::Digest;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use time::OffsetDateTime;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier};
use x509_cert::Certificate;

use super::token::{
    format_rfc3339, IssuerSerial, SigningCertificate, SigningCertificateV2, TimeStampResp, TstInfo,
    ID_CT_TST_INFO,
};
use super::TokenError;

/// Largest RSA modulus accepted (some roots use 4096; 8192 leaves headroom).
const MAX_RSA_BITS: usize = 8192;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;

/// The TSA CA certificates a token must chain to.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    certs: Vec<Certificate>,
}

impl TrustAnchors {
    /// Parses one or more PEM `CERTIFICATE` blocks (a CA bundle file). Text outside the
    /// blocks (comments, `subject=` lines written by openssl) is ignored, as openssl does.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TokenError> {
        // Not x509-cert's `load_pem_chain`: in 0.2.5 it panics on empty input (subtract
        // overflow) and rejects text between certificates.
        let certs = pem_blocks(pem)
            .enumerate()
            .map(|(i, block)| {
                Certificate::from_pem(block).map_err(|e| TokenError::BadTrustAnchor {
                    reason: format!("certificate #{} is not a valid PEM X.509 certificate: {e}", i + 1),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_certificates(certs)
    }

    /// Uses already parsed certificates.
    pub fn from_certificates(certs: Vec<Certificate>) -> Result<Self, TokenError> {
        if certs.is_empty() {
            return Err(TokenError::NoTrustAnchors);
        }
        Ok(TrustAnchors { certs })
    }

    /// The anchors' subjects (RFC 4514 form), for logs and diagnostics.
    pub fn subjects(&self) -> Vec<String> {
        self.certs.iter().map(|c| c.tbs_certificate.subject.to_string()).collect()
    }
}

/// Yields each `-----BEGIN CERTIFICATE-----` … `-----END CERTIFICATE-----` block.
fn pem_blocks(pem: &[u8]) -> impl Iterator<Item = &[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut rest = pem;
    std::iter::from_fn(move || {
        let start = find(rest, BEGIN)?;
        let after_begin = rest.get(start..)?;
        // A BEGIN without END is handed over whole, so from_pem reports it as an error.
        let len = find(after_begin, END).map_or(after_begin.len(), |e| e + END.len());
        let (block, after) = after_begin.split_at_checked(len)?;
        rest = after;
        Some(block)
    })
}

/// What a token must match.
#[derive(Clone, Debug)]
pub struct VerifyOptions<'a> {
    /// SHA-256 of the time-stamped data (the block head text).
    pub expected_imprint: [u8; 32],
    /// The request's nonce; `None` when unknown (offline audit of stored tokens).
    pub expected_nonce: Option<&'a [u8]>,
    /// The configured TSA CA certificates.
    pub trust: &'a TrustAnchors,
    /// Required TSA policy OID, if configured.
    pub policy: Option<ObjectIdentifier>,
    /// Lower bound for genTime (seal time − allowed skew), if any.
    pub not_before: Option<SystemTime>,
}

/// The facts of a token that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTimestamp {
    /// genTime.
    pub gen_time: SystemTime,
    /// genTime as RFC 3339 UTC (fraction kept when the TSA sent one).
    pub gen_time_rfc3339: String,
    /// TSTInfo serial number, hex of its INTEGER content octets (lower case).
    pub serial_hex: String,
    /// TSA policy OID (dotted).
    pub policy: String,
    /// Subject of the TSA signing certificate (RFC 4514 form, e.g. `CN=Test TSA`).
    pub tsa_subject: String,
}

/// Verifies a full `TimeStampResp` (what the TSA returned over HTTP and what is stored).
pub fn verify_response(resp_der: &[u8], opts: &VerifyOptions) -> Result<VerifiedTimestamp, TokenError> {
    let resp = TimeStampResp::from_der(resp_der)
        .map_err(|e| TokenError::malformed(format!("TimeStampResp is not valid DER: {e}")))?;
    if !resp.status.is_granted() {
        return Err(TokenError::NotGranted {
            status: resp.status.status,
            text: resp.status.text(),
            fail_info: resp.status.failure_names(),
        });
    }
    let token = resp
        .time_stamp_token
        .ok_or_else(|| TokenError::malformed("status is granted but the response has no token"))?;
    verify_content_info(&token, opts)
}

/// Verifies a bare time-stamp token (a CMS `ContentInfo`, e.g. from `openssl ts -token_out`).
pub fn verify_token(token_der: &[u8], opts: &VerifyOptions) -> Result<VerifiedTimestamp, TokenError> {
    let token = ContentInfo::from_der(token_der)
        .map_err(|e| TokenError::malformed(format!("token ContentInfo is not valid DER: {e}")))?;
    verify_content_info(&token, opts)
}

fn verify_content_info(token: &ContentInfo, opts: &VerifyOptions) -> Result<VerifiedTimestamp, TokenError> {
    if token.content_type != rfc5911::ID_SIGNED_DATA {
        return Err(TokenError::malformed(format!(
            "token content type is {}, expected signedData",
            token.content_type
        )));
    }
    let sd: SignedData =
        token.content.decode_as().map_err(|e| TokenError::malformed(format!("SignedData: {e}")))?;
    let (tst_der, tst) = decode_tst_info(&sd)?;
    check_imprint_and_nonce(&tst, opts)?;

    let si = single_signer_info(&sd)?;
    if !sd.digest_algorithms.iter().any(|a| a.oid == si.digest_alg.oid) {
        return Err(TokenError::malformed(
            "SignedData digestAlgorithms does not list the signer's digest algorithm",
        ));
    }
    let pool = token_certificates(&sd);
    let signer = find_signer(&si.sid, &pool, &opts.trust.certs).ok_or(TokenError::UnknownSigner)?;
    check_signed_attributes(si, tst_der)?;
    check_cms_signature(si, signer)?;
    check_ess_cert_id(si, signer)?;
    check_timestamping_eku(signer)?;
    let gen_time = tst.gen_time.to_offset_date_time();
    check_chain(signer, &pool, &opts.trust.certs, gen_time)?;
    check_policy_and_time(&tst, opts)?;

    Ok(VerifiedTimestamp {
        gen_time: tst.gen_time.to_system_time(),
        gen_time_rfc3339: tst.gen_time.to_rfc3339(),
        serial_hex: hex::encode(tst.serial_number.as_bytes()),
        policy: tst.policy.to_string(),
        tsa_subject: subject_of(signer),
    })
}

/// Returns the TSTInfo content octets (what the message-digest attribute covers) and the
/// decoded TSTInfo.
fn decode_tst_info(sd: &SignedData) -> Result<(&[u8], TstInfo), TokenError> {
    let eci = &sd.encap_content_info;
    if eci.econtent_type != ID_CT_TST_INFO {
        return Err(TokenError::malformed(format!(
            "eContentType is {}, expected id-ct-TSTInfo",
            eci.econtent_type
        )));
    }
    let econtent =
        eci.econtent.as_ref().ok_or_else(|| TokenError::malformed("token has no encapsulated TSTInfo"))?;
    if econtent.tag() != der::Tag::OctetString {
        return Err(TokenError::malformed("eContent is not an OCTET STRING"));
    }
    let tst_der = econtent.value();
    let tst = TstInfo::from_der(tst_der).map_err(|e| TokenError::malformed(format!("TSTInfo: {e}")))?;
    if tst.version != 1 {
        return Err(TokenError::malformed(format!("TSTInfo version {} (expected 1)", tst.version)));
    }
    Ok((tst_der, tst))
}

fn check_imprint_and_nonce(tst: &TstInfo, opts: &VerifyOptions) -> Result<(), TokenError> {
    let mi = &tst.message_imprint;
    let params_ok = mi.hash_algorithm.parameters.as_ref().is_none_or(|p| p.tag() == der::Tag::Null);
    if mi.hash_algorithm.oid != rfc5912::ID_SHA_256
        || !params_ok
        || mi.hashed_message.as_bytes() != opts.expected_imprint
    {
        return Err(TokenError::ImprintMismatch);
    }
    if let Some(expected) = opts.expected_nonce {
        let got = tst.nonce.as_ref().ok_or(TokenError::NonceMismatch)?;
        if strip_leading_zeros(got.as_bytes()) != strip_leading_zeros(expected) {
            return Err(TokenError::NonceMismatch);
        }
    }
    Ok(())
}

/// Compares INTEGER contents by value: a 0x00 sign byte is not significant.
fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default()
}

fn single_signer_info(sd: &SignedData) -> Result<&SignerInfo, TokenError> {
    let infos = sd.signer_infos.0.as_slice();
    match infos {
        [si] => Ok(si),
        _ => Err(TokenError::malformed(format!(
            "token has {} SignerInfos, RFC 3161 requires exactly one",
            infos.len()
        ))),
    }
}

fn token_certificates(sd: &SignedData) -> Vec<Certificate> {
    sd.certificates
        .as_ref()
        .map(|set| {
            set.0
                .iter()
                .filter_map(|c| match c {
                    CertificateChoices::Certificate(cert) => Some(cert.clone()),
                    CertificateChoices::Other(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn find_signer<'c>(
    sid: &SignerIdentifier,
    pool: &'c [Certificate],
    anchors: &'c [Certificate],
) -> Option<&'c Certificate> {
    pool.iter().chain(anchors.iter()).find(|c| matches_sid(c, sid))
}

fn matches_sid(cert: &Certificate, sid: &SignerIdentifier) -> bool {
    let tbs = &cert.tbs_certificate;
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(isn) => {
            tbs.issuer == isn.issuer && tbs.serial_number == isn.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            matches!(tbs.get::<SubjectKeyIdentifier>(), Ok(Some((_, own))) if own == *ski)
        }
    }
}

/// The value of the single-valued signed attribute `oid`, if present.
fn signed_attr(si: &SignerInfo, oid: ObjectIdentifier) -> Result<Option<&der::Any>, TokenError> {
    let Some(attrs) = si.signed_attrs.as_ref() else {
        return Ok(None);
    };
    let Some(attr) = attrs.iter().find(|a| a.oid == oid) else {
        return Ok(None);
    };
    match attr.values.as_slice() {
        [v] => Ok(Some(v)),
        _ => Err(TokenError::malformed(format!("signed attribute {oid} must have exactly one value"))),
    }
}

fn check_signed_attributes(si: &SignerInfo, tst_der: &[u8]) -> Result<(), TokenError> {
    if si.signed_attrs.is_none() {
        return Err(TokenError::malformed("SignerInfo has no signed attributes"));
    }
    let ct = signed_attr(si, rfc5911::ID_CONTENT_TYPE)?
        .ok_or_else(|| TokenError::malformed("signed attributes lack content-type"))?;
    let ct: ObjectIdentifier =
        ct.decode_as().map_err(|e| TokenError::malformed(format!("content-type attribute: {e}")))?;
    if ct != ID_CT_TST_INFO {
        return Err(TokenError::malformed(format!("signed content-type is {ct}, expected id-ct-TSTInfo")));
    }
    let md = signed_attr(si, rfc5911::ID_MESSAGE_DIGEST)?
        .ok_or_else(|| TokenError::malformed("signed attributes lack message-digest"))?;
    let md: OctetString =
        md.decode_as().map_err(|e| TokenError::malformed(format!("message-digest attribute: {e}")))?;
    let alg = HashAlg::from_sha2_alg(&si.digest_alg, "digest")?;
    if md.as_bytes() != alg.digest(tst_der).as_slice() {
        return Err(TokenError::BadSignature {
            what: "the signed message-digest does not match the TSTInfo (content altered)".into(),
        });
    }
    Ok(())
}

fn check_cms_signature(si: &SignerInfo, signer: &Certificate) -> Result<(), TokenError> {
    // The signature covers DER(SET OF attributes), tag 0x31 (RFC 5652 §5.4); der's SetOfVec
    // re-encodes in DER order, which is exactly that.
    let signed = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| TokenError::malformed("SignerInfo has no signed attributes"))?
        .to_der()
        .map_err(|e| TokenError::malformed(format!("signed attributes: {e}")))?;
    let digest_alg = HashAlg::from_sha2_alg(&si.digest_alg, "digest")?;
    let scheme = SigScheme::from_alg(&si.signature_algorithm, Some(digest_alg))?;
    verify_signature(
        &signer.tbs_certificate.subject_public_key_info,
        scheme,
        &signed,
        si.signature.as_bytes(),
    )
    .map_err(|e| match e {
        SigFailure::Invalid(what) => TokenError::BadSignature { what: format!("CMS signature: {what}") },
        SigFailure::Unusable(err) => err,
    })
}

fn check_ess_cert_id(si: &SignerInfo, signer: &Certificate) -> Result<(), TokenError> {
    let cert_der = signer.to_der().map_err(|e| TokenError::malformed(format!("signer certificate: {e}")))?;
    if let Some(v2) = signed_attr(si, rfc5911::ID_AA_SIGNING_CERTIFICATE_V_2)? {
        let sc: SigningCertificateV2 =
            v2.decode_as().map_err(|e| TokenError::malformed(format!("signingCertificateV2: {e}")))?;
        let first = sc.certs.first().ok_or(TokenError::EssCertIdMismatch)?;
        let alg = match &first.hash_algorithm {
            None => HashAlg::Sha256,
            Some(a) => HashAlg::from_sha2_alg(a, "ESSCertIDv2 hash")?,
        };
        return ess_matches(&first.cert_hash, first.issuer_serial.as_ref(), alg, &cert_der, signer);
    }
    if let Some(v1) = signed_attr(si, rfc5911::ID_AA_SIGNING_CERTIFICATE)? {
        let sc: SigningCertificate =
            v1.decode_as().map_err(|e| TokenError::malformed(format!("signingCertificate: {e}")))?;
        let first = sc.certs.first().ok_or(TokenError::EssCertIdMismatch)?;
        return ess_matches(&first.cert_hash, first.issuer_serial.as_ref(), HashAlg::Sha1, &cert_der, signer);
    }
    Err(TokenError::EssCertIdMissing)
}

fn ess_matches(
    hash: &OctetString,
    issuer_serial: Option<&IssuerSerial>,
    alg: HashAlg,
    cert_der: &[u8],
    signer: &Certificate,
) -> Result<(), TokenError> {
    if hash.as_bytes() != alg.digest(cert_der).as_slice() {
        return Err(TokenError::EssCertIdMismatch);
    }
    if let Some(is) = issuer_serial {
        let tbs = &signer.tbs_certificate;
        let issuer_ok = is.issuer.iter().any(|n| match n {
            GeneralName::DirectoryName(name) => *name == tbs.issuer,
            _ => false,
        });
        if !issuer_ok || is.serial_number.as_bytes() != tbs.serial_number.as_bytes() {
            return Err(TokenError::EssCertIdMismatch);
        }
    }
    Ok(())
}

fn check_timestamping_eku(signer: &Certificate) -> Result<(), TokenError> {
    let subject = subject_of(signer);
    let eku = match signer.tbs_certificate.get::<ExtendedKeyUsage>() {
        Ok(Some(found)) => found,
        Ok(None) => return Err(TokenError::MissingTimestampingEku { subject }),
        Err(e) => return Err(TokenError::malformed(format!("extendedKeyUsage of {subject}: {e}"))),
    };
    let (critical, ExtendedKeyUsage(purposes)) = eku;
    if !purposes.contains(&rfc5280::ID_KP_TIME_STAMPING) {
        return Err(TokenError::MissingTimestampingEku { subject });
    }
    if !critical {
        return Err(TokenError::EkuNotCritical { subject });
    }
    if purposes.len() != 1 {
        return Err(TokenError::EkuNotExclusive { subject });
    }
    Ok(())
}

/// The `timeStamping` extended key usage (1.3.6.1.5.5.7.3.8), DER content octets of the OID.
const EKU_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

/// Signature algorithms accepted along the chain: the same set as for the token's signature (ECDSA P-256/P-384,
/// RSA PKCS#1 v1.5 2048–8192 bits with SHA-256/384/512).
static CHAIN_SIG_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
];

/// RFC 5280 path validation from the signer to a configured anchor, by rustls-webpki (a maintained validator, not
/// code of ours): signatures, validity of every certificate at genTime, basicConstraints `cA` on every issuer,
/// `pathLenConstraint`, unknown critical extensions refused, and the `timeStamping` EKU wherever an EKU extension
/// constrains a certificate of the path (the signer's own EKU is checked more strictly before, RFC 3161 §2.3).
/// webpki ignores keyUsage; RFC 5280 §6.1.4 (n) requires `keyCertSign` of every intermediate, checked here on the
/// path webpki built. The token's certificates are candidate intermediates; the trust file's are the anchors.
fn check_chain(
    signer: &Certificate,
    pool: &[Certificate],
    anchors: &[Certificate],
    at: OffsetDateTime,
) -> Result<(), TokenError> {
    let to_der = |c: &Certificate| {
        c.to_der()
            .map(rustls_pki_types::CertificateDer::from)
            .map_err(|e| TokenError::malformed(format!("certificate {}: {e}", subject_of(c))))
    };
    let subject = subject_of(signer);
    let signer_der = to_der(signer)?;
    let intermediates = pool.iter().filter(|c| *c != signer).map(to_der).collect::<Result<Vec<_>, _>>()?;
    let anchor_ders = anchors.iter().map(to_der).collect::<Result<Vec<_>, _>>()?;
    let trust_anchors =
        anchor_ders.iter().filter_map(|der| webpki::anchor_from_trusted_cert(der).ok()).collect::<Vec<_>>();
    let leaf = webpki::EndEntityCert::try_from(&signer_der)
        .map_err(|e| chain_error(e, signer, pool, anchors, at))?;
    let seconds = u64::try_from(at.unix_timestamp()).unwrap_or(0);
    let time = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
    // webpki calls this for a path it found valid; an error makes it try other paths, and the last error is
    // returned. Which CA lacked keyCertSign is kept aside to name it.
    let missing_key_cert_sign = std::cell::RefCell::new(None::<String>);
    let key_cert_sign = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
        for ca in path.intermediate_certificates() {
            if !has_key_cert_sign(ca.der().as_ref()) {
                let name =
                    Certificate::from_der(ca.der().as_ref()).map(|c| subject_of(&c)).unwrap_or_default();
                *missing_key_cert_sign.borrow_mut() = Some(name);
                return Err(webpki::Error::ExtensionValueInvalid);
            }
        }
        Ok(())
    };
    let verified = leaf.verify_for_usage(
        CHAIN_SIG_ALGS,
        &trust_anchors,
        &intermediates,
        time,
        webpki::KeyUsage::required_if_present(EKU_TIME_STAMPING),
        None,
        Some(&key_cert_sign),
    );
    match (verified, missing_key_cert_sign.take()) {
        (Ok(_), _) => Ok(()),
        (Err(webpki::Error::ExtensionValueInvalid), Some(ca)) => Err(chain_invalid(
            &subject,
            format!("CA certificate {ca:?} has no keyUsage keyCertSign (RFC 5280 §6.1.4 (n))"),
        )),
        (Err(e), _) => Err(chain_error(e, signer, pool, anchors, at)),
    }
}

/// Whether a CA certificate (DER) has a keyUsage extension with `keyCertSign`.
fn has_key_cert_sign(der: &[u8]) -> bool {
    let Ok(cert) = Certificate::from_der(der) else { return false };
    matches!(cert.tbs_certificate.get::<KeyUsage>(), Ok(Some((_, ku))) if ku.key_cert_sign())
}

fn chain_invalid(subject: &str, reason: String) -> TokenError {
    TokenError::ChainInvalid { subject: subject.to_string(), reason }
}

/// Turns webpki's verdict into the error the operator reads: which certificate, and what about it.
fn chain_error(
    e: webpki::Error,
    signer: &Certificate,
    pool: &[Certificate],
    anchors: &[Certificate],
    at: OffsetDateTime,
) -> TokenError {
    use webpki::Error as W;
    let subject = subject_of(signer);
    match e {
        // A same-named CA whose key did not sign it is no issuer of it.
        W::UnknownIssuer | W::InvalidSignatureForPublicKey => TokenError::UntrustedChain { subject },
        W::CertExpired { .. } | W::CertNotValidYet { .. } => std::iter::once(signer)
            .chain(pool)
            .chain(anchors)
            .find_map(|c| check_validity(c, at).err())
            .unwrap_or_else(|| chain_invalid(&subject, format!("a certificate of the chain was not valid at genTime {}", format_rfc3339(at)))),
        W::CaUsedAsEndEntity => chain_invalid(&subject, "the TSA certificate is a CA certificate".into()),
        W::EndEntityUsedAsCa => chain_invalid(
            &subject,
            "a certificate of the chain signs others but is not a CA (basicConstraints cA is not set)".into(),
        ),
        W::PathLenConstraintViolated => chain_invalid(
            &subject,
            "the chain is longer than a CA certificate's pathLenConstraint allows".into(),
        ),
        W::UnsupportedCriticalExtension => chain_invalid(
            &subject,
            "a certificate of the chain has a critical extension this verifier does not know (RFC 5280 §4.2: \
             such a certificate must be refused)"
                .into(),
        ),
        other => chain_invalid(&subject, format!("{other:?}")),
    }
}

fn check_validity(cert: &Certificate, at: OffsetDateTime) -> Result<(), TokenError> {
    let v = &cert.tbs_certificate.validity;
    let nb = OffsetDateTime::from(v.not_before.to_system_time());
    let na = OffsetDateTime::from(v.not_after.to_system_time());
    if at < nb || at > na {
        return Err(TokenError::CertificateExpired {
            subject: subject_of(cert),
            gen_time: format_rfc3339(at),
            not_before: format_rfc3339(nb),
            not_after: format_rfc3339(na),
        });
    }
    Ok(())
}

fn check_policy_and_time(tst: &TstInfo, opts: &VerifyOptions) -> Result<(), TokenError> {
    if let Some(expected) = opts.policy {
        if tst.policy != expected {
            return Err(TokenError::PolicyMismatch {
                expected: expected.to_string(),
                got: tst.policy.to_string(),
            });
        }
    }
    if let Some(nb) = opts.not_before {
        if tst.gen_time.to_system_time() < nb {
            return Err(TokenError::GenTimeTooEarly {
                gen_time: tst.gen_time.to_rfc3339(),
                not_before: format_rfc3339(OffsetDateTime::from(nb)),
            });
        }
    }
    Ok(())
}

fn subject_of(cert: &Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

/// Hash algorithms this module computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// A SHA-2 digest algorithm identifier (SHA-1 is only accepted inside ESSCertID v1).
    fn from_sha2_alg(alg: &AlgorithmIdentifierOwned, what: &'static str) -> Result<Self, TokenError> {
        // RFC 5754: SHA-2 parameters are absent (or NULL from older encoders), nothing else.
        if alg.parameters.as_ref().is_some_and(|p| p.tag() != der::Tag::Null) {
            return Err(TokenError::malformed(format!(
                "{what} algorithm {} has unexpected parameters",
                alg.oid
            )));
        }
        match alg.oid {
            rfc5912::ID_SHA_256 => Ok(HashAlg::Sha256),
            rfc5912::ID_SHA_384 => Ok(HashAlg::Sha384),
            rfc5912::ID_SHA_512 => Ok(HashAlg::Sha512),
            oid => Err(TokenError::UnsupportedAlgorithm { oid: oid.to_string(), what }),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// A signature algorithm: key family plus hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SigScheme {
    Ecdsa(HashAlg),
    RsaPkcs1(HashAlg),
}

impl SigScheme {
    /// From a signature AlgorithmIdentifier. CMS signers may name only the key algorithm
    /// (`rsaEncryption`, `id-ecPublicKey`) and take the hash from digestAlgorithm, which is
    /// passed as `digest`; certificates always use the combined OIDs.
    fn from_alg(alg: &AlgorithmIdentifierOwned, digest: Option<HashAlg>) -> Result<Self, TokenError> {
        use HashAlg::*;
        let scheme = match alg.oid {
            rfc5912::ECDSA_WITH_SHA_256 => Some(SigScheme::Ecdsa(Sha256)),
            rfc5912::ECDSA_WITH_SHA_384 => Some(SigScheme::Ecdsa(Sha384)),
            rfc5912::ECDSA_WITH_SHA_512 => Some(SigScheme::Ecdsa(Sha512)),
            rfc5912::SHA_256_WITH_RSA_ENCRYPTION => Some(SigScheme::RsaPkcs1(Sha256)),
            rfc5912::SHA_384_WITH_RSA_ENCRYPTION => Some(SigScheme::RsaPkcs1(Sha384)),
            rfc5912::SHA_512_WITH_RSA_ENCRYPTION => Some(SigScheme::RsaPkcs1(Sha512)),
            rfc5912::RSA_ENCRYPTION => digest.map(SigScheme::RsaPkcs1),
            rfc5912::ID_EC_PUBLIC_KEY => digest.map(SigScheme::Ecdsa),
            _ => None,
        };
        scheme.ok_or_else(|| TokenError::UnsupportedAlgorithm { oid: alg.oid.to_string(), what: "signature" })
    }
}

/// Whether `sig` over `msg` verifies under `spki` with the X.509 signature algorithm `alg` (ECDSA P-256/P-384 or
/// RSA PKCS#1 v1.5 with SHA-2). Public because the appliance checks the signatures of client CRLs with the same
/// algorithms when it loads them (its `tls::trust`).
pub fn x509_signature_verifies(
    spki: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    msg: &[u8],
    sig: &[u8],
) -> bool {
    SigScheme::from_alg(alg, None).is_ok_and(|scheme| verify_signature(spki, scheme, msg, sig).is_ok())
}

/// Why a signature check did not pass: the signature is wrong, or the key/algorithm cannot
/// be used at all (which is reported as such rather than as "bad signature").
enum SigFailure {
    Invalid(&'static str),
    Unusable(TokenError),
}

fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    scheme: SigScheme,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), SigFailure> {
    let key = spki.subject_public_key.raw_bytes();
    match (spki.algorithm.oid, scheme) {
        (rfc5912::ID_EC_PUBLIC_KEY, SigScheme::Ecdsa(h)) => {
            let digest = h.digest(msg);
            match ec_curve(spki)? {
                rfc5912::SECP_256_R_1 => verify_p256(key, &digest, sig),
                _ => verify_p384(key, &digest, sig),
            }
        }
        (rfc5912::RSA_ENCRYPTION, SigScheme::RsaPkcs1(h)) => verify_rsa(key, h, msg, sig),
        (rfc5912::ID_EC_PUBLIC_KEY | rfc5912::RSA_ENCRYPTION, _) => {
            Err(SigFailure::Invalid("signature algorithm does not match the key type"))
        }
        (oid, _) => Err(SigFailure::Unusable(TokenError::UnsupportedAlgorithm {
            oid: oid.to_string(),
            what: "public key",
        })),
    }
}

/// The named curve of an EC key, if it is P-256 or P-384.
fn ec_curve(spki: &SubjectPublicKeyInfoOwned) -> Result<ObjectIdentifier, SigFailure> {
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    match curve {
        Some(c @ (rfc5912::SECP_256_R_1 | rfc5912::SECP_384_R_1)) => Ok(c),
        other => Err(SigFailure::Unusable(TokenError::UnsupportedAlgorithm {
            oid: other.map_or_else(|| "(no named curve)".to_string(), |c| c.to_string()),
            what: "elliptic curve",
        })),
    }
}

fn verify_p256(point: &[u8], prehash: &[u8], sig: &[u8]) -> Result<(), SigFailure> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
        .map_err(|_| SigFailure::Invalid("invalid P-256 public key"))?;
    let sig = p256::ecdsa::Signature::from_der(sig)
        .map_err(|_| SigFailure::Invalid("ECDSA signature is not DER"))?;
    vk.verify_prehash(prehash, &sig).map_err(|_| SigFailure::Invalid("ECDSA P-256 signature does not verify"))
}

fn verify_p384(point: &[u8], prehash: &[u8], sig: &[u8]) -> Result<(), SigFailure> {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
        .map_err(|_| SigFailure::Invalid("invalid P-384 public key"))?;
    let sig = p384::ecdsa::Signature::from_der(sig)
        .map_err(|_| SigFailure::Invalid("ECDSA signature is not DER"))?;
    vk.verify_prehash(prehash, &sig).map_err(|_| SigFailure::Invalid("ECDSA P-384 signature does not verify"))
}

fn verify_rsa(pkcs1_key: &[u8], hash: HashAlg, msg: &[u8], sig: &[u8]) -> Result<(), SigFailure> {
    use rsa::traits::PublicKeyParts;
    let parsed = rsa::pkcs1::RsaPublicKey::from_der(pkcs1_key)
        .map_err(|_| SigFailure::Invalid("invalid RSA public key"))?;
    let key = rsa::RsaPublicKey::new_with_max_size(
        rsa::BigUint::from_bytes_be(parsed.modulus.as_bytes()),
        rsa::BigUint::from_bytes_be(parsed.public_exponent.as_bytes()),
        MAX_RSA_BITS,
    )
    .map_err(|_| SigFailure::Invalid("unusable RSA public key (size or exponent)"))?;
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(SigFailure::Unusable(TokenError::WeakKey { bits }));
    }
    let padding = match hash {
        HashAlg::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        HashAlg::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
        HashAlg::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        HashAlg::Sha1 => {
            return Err(SigFailure::Unusable(TokenError::UnsupportedAlgorithm {
                oid: rfc5912::ID_SHA_1.to_string(),
                what: "signature hash",
            }))
        }
    };
    key.verify(padding, &hash.digest(msg), sig)
        .map_err(|_| SigFailure::Invalid("RSA PKCS#1 v1.5 signature does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsa::request::random::build_request;
    use crate::tsa::testutil::TestTsa;
    use crate::tsa::TimestampRequest;
    use std::time::{Duration, Instant};

    const HEAD: &[u8] = b"anchorlog/v1 height 7 root 3f2a... signed";

    fn opts<'a>(req: &'a TimestampRequest, trust: &'a TrustAnchors) -> VerifyOptions<'a> {
        VerifyOptions {
            expected_imprint: req.imprint,
            expected_nonce: Some(&req.nonce),
            trust,
            policy: None,
            not_before: None,
        }
    }

    /// Requests a token for HEAD from a TSA made with `args`; returns (tsa, request, response).
    fn issue(args: &[&str]) -> (TestTsa, TimestampRequest, Vec<u8>) {
        let tsa = TestTsa::new(args);
        let req = build_request(HEAD).unwrap();
        let resp = tsa.reply(&req.der);
        (tsa, req, resp)
    }

    /// A token from `args` verifies with our code and with `openssl ts -verify`.
    fn assert_verifies(args: &[&str]) -> VerifiedTimestamp {
        let (tsa, req, resp) = issue(args);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let v = verify_response(&resp, &opts(&req, &trust)).unwrap();
        let (ok, text) = tsa.openssl_verify(HEAD, &resp);
        assert!(ok, "openssl disagrees: {text}");
        assert_eq!(v.tsa_subject, "CN=Test TSA");
        assert_eq!(v.policy, "1.3.6.1.4.1.55555.1.1");
        assert_eq!(v.serial_hex, "01");
        let age = SystemTime::now().duration_since(v.gen_time).unwrap_or_default();
        assert!(age < Duration::from_secs(60), "genTime {}", v.gen_time_rfc3339);
        v
    }

    #[test]
    fn good_token_verifies_and_openssl_agrees() {
        let v = assert_verifies(&[]);
        // clock_precision_digits = 0: whole seconds, "YYYY-MM-DDThh:mm:ssZ".
        assert_eq!(v.gen_time_rfc3339.len(), 20, "{}", v.gen_time_rfc3339);
    }

    #[test]
    fn fractional_gen_time_verifies() {
        let (tsa, req, resp) = issue(&["--fraction"]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let v = verify_response(&resp, &opts(&req, &trust)).unwrap();
        // OpenSSL drops trailing zeros of the fraction, so 0 to 3 digits may remain.
        assert!(v.gen_time_rfc3339.ends_with('Z'));
        let raw = tsa_gen_time_raw(&resp);
        assert!(raw.len() <= 19 && (raw.len() == 15 || raw[14] == b'.'), "{raw:?}");
        let whole = v.gen_time_rfc3339.len() == 20;
        assert_eq!(whole, raw.len() == 15, "{} vs {raw:?}", v.gen_time_rfc3339);
    }

    fn tsa_gen_time_raw(resp: &[u8]) -> Vec<u8> {
        let resp = TimeStampResp::from_der(resp).unwrap();
        let sd: SignedData = resp.time_stamp_token.unwrap().content.decode_as().unwrap();
        let (_, tst) = decode_tst_info(&sd).unwrap();
        tst.gen_time.raw().to_vec()
    }

    #[test]
    fn fraction_is_parsed_when_present() {
        // A fraction is dropped when the milliseconds end in 0 (1 in 1000 per digit pattern);
        // a few tries make seeing a real fraction certain.
        let tsa = TestTsa::new(&["--fraction"]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let seen = (0..5).any(|_| {
            let req = build_request(HEAD).unwrap();
            let resp = tsa.reply(&req.der);
            let v = verify_response(&resp, &opts(&req, &trust)).unwrap();
            let raw = tsa_gen_time_raw(&resp);
            raw.contains(&b'.') && v.gen_time_rfc3339.contains('.')
        });
        assert!(seen);
    }

    #[test]
    fn ess_cert_id_v1_sha1_verifies() {
        assert_verifies(&["--ess-sha1"]);
    }

    #[test]
    fn rsa_tsa_verifies() {
        assert_verifies(&["--key", "rsa"]);
    }

    #[test]
    fn p384_tsa_verifies() {
        assert_verifies(&["--key", "p384"]);
    }

    #[test]
    fn chain_through_intermediate_in_token_verifies() {
        assert_verifies(&["--intermediate"]);
    }

    /// A token from a TSA made with `args`: refused by our verifier with exactly `expected`, and by
    /// `openssl ts -verify` (the Python bundle verifier's check) as well.
    fn assert_chain_refused(args: &[&str], expected: TokenError) {
        let (tsa, req, resp) = issue(args);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        assert_eq!(verify_response(&resp, &opts(&req, &trust)), Err(expected));
        let (ok, text) = tsa.openssl_verify(HEAD, &resp);
        assert!(!ok, "openssl accepted a chain we refuse: {text}");
    }

    #[test]
    fn intermediate_without_key_cert_sign_is_refused() {
        assert_chain_refused(
            &["--int-no-keycertsign"],
            TokenError::ChainInvalid {
                subject: "CN=Test TSA".into(),
                reason: "CA certificate \"CN=Test TSA Intermediate\" has no keyUsage keyCertSign (RFC 5280 §6.1.4 (n))"
                    .into(),
            },
        );
    }

    #[test]
    fn chain_beyond_path_len_is_refused() {
        assert_chain_refused(
            &["--beyond-pathlen"],
            TokenError::ChainInvalid {
                subject: "CN=Test TSA".into(),
                reason: "the chain is longer than a CA certificate's pathLenConstraint allows".into(),
            },
        );
    }

    #[test]
    fn leaf_with_unknown_critical_extension_is_refused() {
        assert_chain_refused(
            &["--unknown-critical"],
            TokenError::ChainInvalid {
                subject: "CN=Test TSA".into(),
                reason:
                    "a certificate of the chain has a critical extension this verifier does not know (RFC \
                         5280 §4.2: such a certificate must be refused)"
                        .into(),
            },
        );
    }

    #[test]
    fn bare_token_verifies() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let token = tsa.token_of(&resp);
        let v = verify_token(&token, &opts(&req, &trust)).unwrap();
        assert_eq!(v.serial_hex, "01");
    }

    #[test]
    fn offline_audit_without_nonce_verifies() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let o = VerifyOptions { expected_nonce: None, ..opts(&req, &trust) };
        assert!(verify_response(&resp, &o).is_ok());
    }

    #[test]
    fn token_for_another_imprint_is_rejected() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let mut o = opts(&req, &trust);
        o.expected_imprint = <[u8; 32]>::from(sha2::Sha256::digest(b"another head"));
        assert_eq!(verify_response(&resp, &o), Err(TokenError::ImprintMismatch));
    }

    #[test]
    fn wrong_nonce_is_rejected() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let other = build_request(HEAD).unwrap();
        let o = VerifyOptions { expected_nonce: Some(&other.nonce), ..opts(&req, &trust) };
        assert_eq!(verify_response(&resp, &o), Err(TokenError::NonceMismatch));
    }

    /// A TSTInfo for `req`, as a TSA would produce it (genTime now, with a fraction).
    fn tst_info_for(req: &TimestampRequest) -> Vec<u8> {
        let parsed = crate::tsa::TimeStampReq::from_der(&req.der).unwrap();
        let now = OffsetDateTime::now_utc();
        let gen = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}.25Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        TstInfo {
            version: 1,
            policy: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1.1"),
            message_imprint: parsed.message_imprint,
            serial_number: der::asn1::Int::new(&[0x2a]).unwrap(),
            gen_time: crate::tsa::GenTime::parse(gen.as_bytes()).unwrap(),
            accuracy: None,
            ordering: false,
            nonce: parsed.nonce,
            tsa: None,
            extensions: None,
        }
        .to_der()
        .unwrap()
    }

    /// A token signed by `openssl cms -sign -cades` with the TSA certificate made by `args`.
    /// (`openssl ts -reply` refuses certificates without a critical timeStamping EKU.)
    fn cms_signed(args: &[&str]) -> Result<VerifiedTimestamp, TokenError> {
        let tsa = TestTsa::new(args);
        let req = build_request(HEAD).unwrap();
        let token = tsa.cms_sign_token(&tst_info_for(&req));
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        verify_token(&token, &opts(&req, &trust))
    }

    #[test]
    fn cms_signed_token_with_good_certificate_verifies() {
        let v = cms_signed(&[]).unwrap();
        assert_eq!(v.serial_hex, "2a");
        assert!(v.gen_time_rfc3339.ends_with(".25Z"), "{}", v.gen_time_rfc3339);
    }

    #[test]
    fn tsa_cert_without_eku_is_rejected() {
        assert_eq!(
            cms_signed(&["--no-eku"]),
            Err(TokenError::MissingTimestampingEku { subject: "CN=Test TSA".into() })
        );
    }

    #[test]
    fn tsa_cert_with_non_critical_eku_is_rejected() {
        assert_eq!(
            cms_signed(&["--eku-noncritical"]),
            Err(TokenError::EkuNotCritical { subject: "CN=Test TSA".into() })
        );
    }

    #[test]
    fn token_from_untrusted_ca_is_rejected() {
        let (_tsa, req, resp) = issue(&["--ca-name", "Rogue Root"]);
        let other = TestTsa::new(&[]);
        let trust = TrustAnchors::from_pem(&other.ca_pem()).unwrap();
        assert_eq!(
            verify_response(&resp, &opts(&req, &trust)),
            Err(TokenError::UntrustedChain { subject: "CN=Test TSA".into() })
        );
    }

    #[test]
    fn same_named_but_different_ca_is_rejected() {
        // Same CN "Test TSA Root", different key: name matching alone must not pass.
        let (_tsa, req, resp) = issue(&[]);
        let other = TestTsa::new(&[]);
        let trust = TrustAnchors::from_pem(&other.ca_pem()).unwrap();
        assert_eq!(
            verify_response(&resp, &opts(&req, &trust)),
            Err(TokenError::UntrustedChain { subject: "CN=Test TSA".into() })
        );
    }

    #[test]
    fn gen_time_before_not_before_is_rejected() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let o = VerifyOptions {
            not_before: Some(SystemTime::now() + Duration::from_secs(3600)),
            ..opts(&req, &trust)
        };
        assert!(matches!(verify_response(&resp, &o), Err(TokenError::GenTimeTooEarly { .. })));
        let o = VerifyOptions {
            not_before: Some(SystemTime::now() - Duration::from_secs(60)),
            ..opts(&req, &trust)
        };
        assert!(verify_response(&resp, &o).is_ok());
    }

    #[test]
    fn policy_is_checked_when_configured() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let o = VerifyOptions {
            policy: Some(ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1.1")),
            ..opts(&req, &trust)
        };
        assert!(verify_response(&resp, &o).is_ok());
        let o = VerifyOptions {
            policy: Some(ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.9")),
            ..opts(&req, &trust)
        };
        assert_eq!(
            verify_response(&resp, &o),
            Err(TokenError::PolicyMismatch {
                expected: "1.3.6.1.4.1.55555.9".into(),
                got: "1.3.6.1.4.1.55555.1.1".into()
            })
        );
    }

    /// Re-encodes a response after `edit` changed its SignedData.
    fn edit_signed_data(resp: &[u8], edit: impl FnOnce(&mut SignedData)) -> Vec<u8> {
        let mut resp = TimeStampResp::from_der(resp).unwrap();
        let token = resp.time_stamp_token.as_mut().unwrap();
        let mut sd: SignedData = token.content.decode_as().unwrap();
        edit(&mut sd);
        token.content = der::Any::encode_from(&sd).unwrap();
        resp.to_der().unwrap()
    }

    #[test]
    fn altered_signature_is_rejected() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let bad = edit_signed_data(&resp, |sd| {
            let mut infos: Vec<SignerInfo> = sd.signer_infos.0.clone().into();
            let mut sig = infos[0].signature.as_bytes().to_vec();
            // Flip a bit of s (the last byte of the DER ECDSA signature).
            *sig.last_mut().unwrap() ^= 1;
            infos[0].signature = OctetString::new(sig).unwrap();
            sd.signer_infos = cms::signed_data::SignerInfos(infos.try_into().unwrap());
        });
        assert_eq!(
            verify_response(&bad, &opts(&req, &trust)),
            Err(TokenError::BadSignature {
                what: "CMS signature: ECDSA P-256 signature does not verify".into()
            })
        );
    }

    #[test]
    fn missing_signer_certificate_is_unknown_signer() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let bad = edit_signed_data(&resp, |sd| sd.certificates = None);
        assert_eq!(verify_response(&bad, &opts(&req, &trust)), Err(TokenError::UnknownSigner));
        // With the TSA certificate pinned in the trust file the same token verifies.
        let mut pem = tsa.ca_pem();
        pem.extend(std::fs::read(tsa.path().join("tsa.pem")).unwrap());
        let pinned = TrustAnchors::from_pem(&pem).unwrap();
        assert!(verify_response(&bad, &opts(&req, &pinned)).is_ok());
    }

    #[test]
    fn substituted_certificate_fails_ess_cert_id() {
        // Same key, same name, but a different certificate (re-issued): the ESSCertID hash
        // binds the token to the exact certificate.
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let dir = tsa.path();
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-x509toreq", "-in", "tsa.pem", "-signkey", "tsa.key", "-out", "re.csr"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args([
                "x509",
                "-req",
                "-in",
                "re.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "1234",
                "-days",
                "30",
                "-extfile",
                "tsa_ext.cnf",
                "-out",
                "re.pem",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let re = Certificate::load_pem_chain(&std::fs::read(dir.join("re.pem")).unwrap()).unwrap().remove(0);
        let bad = edit_signed_data(&resp, |sd| {
            let mut infos: Vec<SignerInfo> = sd.signer_infos.0.clone().into();
            infos[0].sid = SignerIdentifier::IssuerAndSerialNumber(cms::cert::IssuerAndSerialNumber {
                issuer: re.tbs_certificate.issuer.clone(),
                serial_number: re.tbs_certificate.serial_number.clone(),
            });
            // The sid is not signed, so the signature still verifies with the same key.
            sd.signer_infos = cms::signed_data::SignerInfos(infos.try_into().unwrap());
            let set = vec![CertificateChoices::Certificate(re.clone())];
            sd.certificates = Some(cms::signed_data::CertificateSet(set.try_into().unwrap()));
        });
        assert_eq!(verify_response(&bad, &opts(&req, &trust)), Err(TokenError::EssCertIdMismatch));
    }

    #[test]
    fn garbage_and_truncation_are_malformed() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        for bad in [&b"garbage"[..], &resp[..resp.len() / 2], &[][..]] {
            assert!(
                matches!(verify_response(bad, &opts(&req, &trust)), Err(TokenError::Malformed { .. })),
                "{bad:02x?}"
            );
            assert!(matches!(verify_token(bad, &opts(&req, &trust)), Err(TokenError::Malformed { .. })));
        }
    }

    #[test]
    fn rejection_is_not_granted() {
        // A SHA-1 request: the TSA accepts only sha256/384/512 and answers rejection/badAlg.
        let tsa = TestTsa::new(&[]);
        let work = tempfile::tempdir().unwrap();
        let (m, q) = (work.path().join("m"), work.path().join("q.tsq"));
        std::fs::write(&m, HEAD).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["ts", "-query", "-sha1", "-cert", "-data"])
            .arg(&m)
            .arg("-out")
            .arg(&q)
            .output()
            .unwrap();
        assert!(out.status.success());
        let resp = tsa.reply(&std::fs::read(&q).unwrap());
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let req = build_request(HEAD).unwrap();
        let err = verify_response(&resp, &opts(&req, &trust)).unwrap_err();
        assert_eq!(
            err,
            TokenError::NotGranted {
                status: 2,
                text: "Message digest algorithm is not supported.".into(),
                fail_info: vec!["badAlg"],
            }
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn trust_anchor_file_errors() {
        assert_eq!(TrustAnchors::from_pem(b"").unwrap_err(), TokenError::NoTrustAnchors);
        assert_eq!(TrustAnchors::from_pem(b"\n\n# nothing\n").unwrap_err(), TokenError::NoTrustAnchors);
        assert!(matches!(
            TrustAnchors::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(TokenError::BadTrustAnchor { .. })
        ));
        assert!(matches!(
            TrustAnchors::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(TokenError::BadTrustAnchor { .. })
        ));
        let a = TestTsa::new(&[]);
        let b = TestTsa::new(&["--ca-name", "Second Root"]);
        let both =
            [&b"# bundle\nsubject=CN = Test TSA Root\n"[..], &a.ca_pem(), b"\n", &b.ca_pem(), b"trailer"]
                .concat();
        let trust = TrustAnchors::from_pem(&both).unwrap();
        assert_eq!(trust.subjects(), vec!["CN=Test TSA Root", "CN=Second Root"]);
    }

    #[test]
    fn expired_certificate_is_rejected_at_gen_time() {
        let (tsa, _req, resp) = issue(&[]);
        let r = TimeStampResp::from_der(&resp).unwrap();
        let sd: SignedData = r.time_stamp_token.unwrap().content.decode_as().unwrap();
        let signer = token_certificates(&sd).remove(0);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        // 10 years ago, before the certificates were issued.
        let past = OffsetDateTime::now_utc() - time::Duration::days(3660);
        let err = check_chain(&signer, &[], &trust.certs, past).unwrap_err();
        assert!(
            matches!(&err, TokenError::CertificateExpired { subject, .. } if subject == "CN=Test TSA"),
            "{err:?}"
        );
        assert!(check_chain(&signer, &[], &trust.certs, OffsetDateTime::now_utc()).is_ok());
    }

    #[test]
    fn truncated_or_bit_flipped_responses_never_panic() {
        let (tsa, req, resp) = issue(&[]);
        let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
        let o = opts(&req, &trust);
        for len in 0..resp.len() {
            assert!(verify_response(&resp[..len], &o).is_err(), "prefix {len}");
        }
        let mut accepted = 0;
        for i in (0..resp.len()).step_by(3) {
            let mut bad = resp.clone();
            bad[i] ^= 0x01;
            if verify_response(&bad, &o).is_ok() {
                accepted += 1;
                eprintln!(
                    "flip at {i}/{} accepted: {:02x?}",
                    resp.len(),
                    &resp[i.saturating_sub(4)..(i + 4).min(resp.len())]
                );
            }
        }
        // Only flips the verifier may legitimately ignore (status 0 -> 1 grantedWithMods,
        // unsigned fields such as the SignerInfo version) can pass.
        assert!(accepted <= 3, "{accepted} flipped responses verified");
    }

    /// Prints the in-process verification time (run with --nocapture to see it).
    #[test]
    fn verification_timing() {
        for args in [&[][..], &["--key", "rsa"][..], &["--key", "p384"][..]] {
            let (tsa, req, resp) = issue(args);
            let trust = TrustAnchors::from_pem(&tsa.ca_pem()).unwrap();
            let o = opts(&req, &trust);
            let n = 20;
            let t0 = Instant::now();
            for _ in 0..n {
                verify_response(&resp, &o).unwrap();
            }
            eprintln!("verify_response {args:?}: {:?} per token", t0.elapsed() / n);
        }
    }
}
