//! The client trust of the mTLS listener: the client CAs, their CRLs, the clientAuth EKU rule and the principals
//! bound to their issuers, loaded together as one value so that a reload ([`super::reload`]) swaps all of it at once.
//!
//! Where each refusal happens (README "Client certificates", docs/THREATS.md):
//! - at the **handshake** (the connection never carries a request; an `anchorlog.access_denied` record with
//!   `tls_handshake_refused: …`): a certificate that does not chain to a client CA, is expired or not yet valid,
//!   is revoked by a configured CRL (or its status is unknown while CRLs are configured), has an EKU without
//!   `clientAuth`, or has no EKU at all (unless `server.allow_client_certs_without_eku`). These are properties of
//!   the certificate alone, checked by rustls' `WebPkiClientVerifier` (plus the EKU presence check here);
//! - as a **403 JSON error** on the first request: `unknown_principal` (a valid certificate no `[[principal]]`
//!   names) and `principal_wrong_issuer` (it names a principal whose `issuers` did not issue it). These depend
//!   on the configuration's mapping, and a JSON answer tells the operator which identity or CA to fix.

use super::{load_certs, load_key, PrincipalMap, TlsError};
use crate::config::Config;
use der::{Decode as _, Encode as _};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest CRL file read (a CRL of 100,000 entries is about 4 MB).
pub const MAX_CRL_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Everything the mTLS listener decides a client by, built from one configuration.
#[derive(Debug)]
pub struct ClientTrust {
    /// The listener's rustls configuration (server certificate, the verifier below).
    pub server_config: Arc<rustls::ServerConfig>,
    /// The client certificate verifier (`None` on the source listener, which asks for no certificate).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Identity → principal, with each principal's issuers.
    pub principals: Arc<PrincipalMap>,
    /// Revoked certificates listed by the loaded CRLs (for the reload log line).
    pub revoked_entries: usize,
}

impl ClientTrust {
    /// Loads the client CAs, CRLs, principals and the server certificate of `config`. Fails, naming the file and
    /// what is wrong with it, on anything unusable — a reload then keeps the previous trust.
    pub fn load(config: &Config) -> Result<ClientTrust, TlsError> {
        let s = &config.server;
        super::check_server_key_mode(&s.key_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let mut by_file: HashMap<PathBuf, Vec<CertificateDer<'static>>> = HashMap::new();
        for ca in &s.client_ca_files {
            let certs = load_certs(ca, "client CA certificate")?;
            for cert in &certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| TlsError::Rustls(format!("client CA {}: {e}", ca.display())))?;
            }
            by_file.insert(ca.clone(), certs);
        }
        let mut crls = Vec::new();
        let mut revoked_entries = 0;
        let all_cas: Vec<_> = by_file.values().flatten().cloned().collect();
        for path in &s.client_crl_files {
            for crl in load_crls(path)? {
                revoked_entries += check_crl(path, &crl, &all_cas)?;
                crls.push(crl);
            }
        }
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if !crls.is_empty() {
            // The end entity's status must be known (deny by default): a CA whose clients connect needs its CRL.
            // CA certificates themselves are removed from client_ca_files, not revoked by a CRL of their parent.
            builder =
                builder.with_crls(crls).only_check_end_entity_revocation().enforce_revocation_expiration();
        }
        let inner = builder.build().map_err(|e| TlsError::Rustls(format!("client CAs and CRLs: {e}")))?;
        let verifier: Arc<dyn ClientCertVerifier> =
            Arc::new(ClientAuthEku { inner, allow_without_eku: s.allow_client_certs_without_eku });
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(load_certs(&s.cert_file, "server certificate")?, load_key(&s.key_file)?)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let principals = PrincipalMap::with_issuers(&config.principals, &by_file)?;
        Ok(ClientTrust {
            server_config: Arc::new(server_config),
            verifier: Some(verifier),
            principals: Arc::new(principals),
            revoked_entries,
        })
    }

    /// The trust of a listener that asks for no client certificate (the source listener): nothing to reload.
    pub fn without_client_auth(server_config: Arc<rustls::ServerConfig>) -> ClientTrust {
        ClientTrust { server_config, verifier: None, principals: Arc::default(), revoked_entries: 0 }
    }

    /// Checks an established connection's certificate chain (end entity first) against this trust, as a new
    /// handshake would, and resolves its principal. `Err` says why the connection must be closed.
    pub fn recheck(&self, chain: &[CertificateDer<'static>]) -> Result<super::Peer, String> {
        let (Some(verifier), Some((end_entity, intermediates))) = (&self.verifier, chain.split_first())
        else {
            return Err("no client certificate".into());
        };
        verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()).map_err(|e| e.to_string())?;
        Ok(self.principals.resolve_chain(chain))
    }
}

/// Reads a CRL file: PEM (one or more `X509 CRL` blocks) or a single DER CRL.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let what = "client CRL";
    let read_err = |reason: String| TlsError::Read { what, path: path.into(), reason };
    let size = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?.len();
    if size > MAX_CRL_FILE_BYTES {
        return Err(read_err(format!("{size} bytes, more than the {MAX_CRL_FILE_BYTES} accepted")));
    }
    let data = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
    if data.starts_with(&[0x30]) {
        return Ok(vec![CertificateRevocationListDer::from(data)]);
    }
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(format!("not a PEM or DER CRL: {e}")))?;
    if crls.is_empty() {
        return Err(read_err("no \"X509 CRL\" PEM block and not a DER CRL".into()));
    }
    Ok(crls)
}

/// A CRL is used only when one of the client CAs signed it and it is current (thisUpdate passed, nextUpdate
/// ahead): a forged, foreign or stale CRL fails the load, so a reload with it keeps the previous trust instead
/// of refusing every client of that CA at the next handshake. Returns how many certificates it revokes.
fn check_crl(
    path: &Path,
    crl: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'_>],
) -> Result<usize, TlsError> {
    let bad = |reason: String| TlsError::Read { what: "client CRL", path: path.into(), reason };
    let list = x509_cert::crl::CertificateList::from_der(crl.as_ref())
        .map_err(|e| bad(format!("not a valid X.509 CRL: {e}")))?;
    let tbs = &list.tbs_cert_list;
    let tbs_der = tbs.to_der().map_err(|e| bad(e.to_string()))?;
    let issuer = cas
        .iter()
        .filter_map(|c| x509_cert::Certificate::from_der(c.as_ref()).ok())
        .filter(|c| c.tbs_certificate.subject == tbs.issuer)
        .find(|c| {
            anchorlog_core::tsa::x509_signature_verifies(
                &c.tbs_certificate.subject_public_key_info,
                &list.signature_algorithm,
                &tbs_der,
                list.signature.raw_bytes(),
            )
        });
    if issuer.is_none() {
        return Err(bad(format!(
            "not signed by any of server.client_ca_files (its issuer is {}); a CRL must come from the CA whose \
             certificates it revokes",
            tbs.issuer
        )));
    }
    let now = std::time::SystemTime::now();
    if tbs.this_update.to_system_time() > now + std::time::Duration::from_secs(300) {
        return Err(bad(format!("its thisUpdate {} is in the future; check the clocks", tbs.this_update)));
    }
    match &tbs.next_update {
        Some(next) if next.to_system_time() < now => Err(bad(format!(
            "it expired at its nextUpdate {next}; fetch the CA's current CRL (an expired CRL would refuse every \
             client of that CA)"
        ))),
        Some(_) => Ok(tbs.revoked_certificates.as_ref().map_or(0, Vec::len)),
        None => Err(bad("it has no nextUpdate, so its freshness cannot be enforced".into())),
    }
}

/// The certificate has no extendedKeyUsage although `clientAuth` is required.
struct NoExtendedKeyUsage;

impl std::fmt::Debug for NoExtendedKeyUsage {
    // rustls prints a custom certificate error with `{:?}` (in the handshake error the log and the
    // `anchorlog.access_denied` record carry): the operator reads the sentence, not a type name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for NoExtendedKeyUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the client certificate has no extendedKeyUsage; clientAuth is required (issue it with \
             extendedKeyUsage=clientAuth, or set server.allow_client_certs_without_eku for legacy certificates)",
        )
    }
}

impl std::error::Error for NoExtendedKeyUsage {}

/// rustls' verifier (chain, validity, CRLs, and `clientAuth` when an EKU is present) plus the rule it leaves
/// out: a certificate without any EKU is refused unless legacy certificates are allowed.
#[derive(Debug)]
struct ClientAuthEku {
    inner: Arc<dyn ClientCertVerifier>,
    allow_without_eku: bool,
}

impl ClientCertVerifier for ClientAuthEku {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !self.allow_without_eku {
            // An unparsable certificate is left to the inner verifier, which refuses it with its own reason.
            if let Ok(cert) = x509_cert::Certificate::from_der(end_entity.as_ref()) {
                if let Ok(None) = cert.tbs_certificate.get::<x509_cert::ext::pkix::ExtendedKeyUsage>() {
                    return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                        rustls::OtherError(Arc::new(NoExtendedKeyUsage)),
                    )));
                }
            }
        }
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
        SerialNumber,
    };
    use time::{Duration as TimeDuration, OffsetDateTime};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca { cert: p.self_signed(&key).unwrap(), key }
    }

    fn leaf(ca: &Ca, dns: &str, serial: u64, eku: &[ExtendedKeyUsagePurpose]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, dns);
        p.subject_alt_names = vec![SanType::DnsName(dns.try_into().unwrap())];
        p.extended_key_usages = eku.to_vec();
        p.serial_number = Some(SerialNumber::from(serial));
        p.signed_by(&key, &ca.cert, &ca.key).unwrap().der().clone()
    }

    fn crl(ca: &Ca, revoked: &[u64], next_update: OffsetDateTime) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - TimeDuration::hours(1),
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - TimeDuration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.cert, &ca.key)
        .unwrap()
        .der()
        .to_vec()
    }

    /// A directory with the server certificate and key, the CA files and CRLs, and a configuration naming them.
    fn setup(cas: &[&Ca], crls: &[Vec<u8>], issuers: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let server_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = p.signed_by(&server_key, &cas[0].cert, &cas[0].key).unwrap();
        std::fs::write(d.join("server.pem"), server.pem()).unwrap();
        std::fs::write(d.join("server.key"), server_key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut ca_files = Vec::new();
        for (i, ca) in cas.iter().enumerate() {
            std::fs::write(d.join(format!("ca{i}.pem")), ca.cert.pem()).unwrap();
            ca_files.push(format!("\"{}/ca{i}.pem\"", d.display()));
        }
        let mut crl_files = Vec::new();
        for (i, c) in crls.iter().enumerate() {
            std::fs::write(d.join(format!("ca{i}.crl")), c).unwrap();
            crl_files.push(format!("\"{}/ca{i}.crl\"", d.display()));
        }
        let text = format!(
            "origin = \"anchorlog.test/unit\"\n[server]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n\
             client_ca_files = [{cas}]\nclient_crl_files = [{crls}]\n[storage]\ndatabase = \"{d}/a.db\"\n\
             [signer]\nbackend = \"pkcs11\"\n[signer.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\n\
             pin_file = \"pin\"\n[[principal]]\nname = \"idp\"\nroles = [\"producer\"]\nidentities = [\"dns:idp.test\"]\n{issuers}\n",
            d = d.display(),
            cas = ca_files.join(", "),
            crls = crl_files.join(", "),
            issuers = issuers.replace("DIR", &d.display().to_string()),
        );
        let config = Config::parse(&text).unwrap();
        (dir, config)
    }

    const CLIENT: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ClientAuth];

    #[test]
    fn handshake_verdicts_revoked_no_eku_server_eku_and_good() {
        let a = ca("CA one");
        let day = OffsetDateTime::now_utc() + TimeDuration::days(1);
        let (_dir, config) = setup(&[&a], &[crl(&a, &[7], day)], "");
        let trust = ClientTrust::load(&config).unwrap();
        assert_eq!(trust.revoked_entries, 1);
        let good = trust.recheck(&[leaf(&a, "idp.test", 1, CLIENT)]).unwrap();
        assert_eq!(good.principal.map(|p| p.name.to_string()), Some("idp".into()));
        let revoked = trust.recheck(&[leaf(&a, "idp.test", 7, CLIENT)]).unwrap_err();
        assert_eq!(revoked, "invalid peer certificate: Revoked");
        let none = trust.recheck(&[leaf(&a, "idp.test", 2, &[])]).unwrap_err();
        assert!(
            none.contains("the client certificate has no extendedKeyUsage; clientAuth is required"),
            "{none}"
        );
        let server_only = trust.recheck(&[leaf(&a, "idp.test", 3, &[ExtendedKeyUsagePurpose::ServerAuth])]);
        assert!(server_only.unwrap_err().contains("invalid peer certificate"), "server-only EKU refused");
        // Legacy certificates without any EKU when the operator allows them.
        let mut legacy = config.clone();
        legacy.server.allow_client_certs_without_eku = true;
        let trust = ClientTrust::load(&legacy).unwrap();
        assert!(trust.recheck(&[leaf(&a, "idp.test", 2, &[])]).is_ok());
    }

    #[test]
    fn principal_bound_to_one_ca_refuses_the_other_cas_certificate() {
        let (a, b) = (ca("CA one"), ca("CA two"));
        let (_dir, config) = setup(&[&a, &b], &[], "issuers = [\"DIR/ca0.pem\"]");
        let trust = ClientTrust::load(&config).unwrap();
        let own = trust.recheck(&[leaf(&a, "idp.test", 1, CLIENT)]).unwrap();
        assert_eq!(own.principal.map(|p| p.name.to_string()), Some("idp".into()));
        let other = trust.recheck(&[leaf(&b, "idp.test", 1, CLIENT)]).unwrap();
        assert!(other.principal.is_none());
        assert_eq!(other.wrong_issuer.as_deref(), Some("idp"));
    }

    #[test]
    fn foreign_expired_and_garbage_crls_fail_the_load_naming_the_file() {
        let (a, b) = (ca("CA one"), ca("CA two"));
        let day = OffsetDateTime::now_utc() + TimeDuration::days(1);
        let (dir, config) = setup(&[&a], &[crl(&b, &[], day)], "");
        let err = ClientTrust::load(&config).unwrap_err().to_string();
        assert!(err.contains(&format!("{}/ca0.crl", dir.path().display())), "{err}");
        assert!(
            err.contains("not signed by any of server.client_ca_files (its issuer is CN=CA two)"),
            "{err}"
        );
        let crl_path = dir.path().join("ca0.crl");
        // rcgen refuses to sign a CRL whose nextUpdate is not after thisUpdate: expire it 1 s after issue.
        let mut past = CertificateRevocationListParams {
            this_update: OffsetDateTime::now_utc() - TimeDuration::days(2),
            next_update: OffsetDateTime::now_utc() - TimeDuration::days(1),
            crl_number: SerialNumber::from(2u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: KeyIdMethod::Sha256,
        };
        past.next_update = past.this_update + TimeDuration::hours(1);
        std::fs::write(&crl_path, past.signed_by(&a.cert, &a.key).unwrap().pem().unwrap()).unwrap();
        let err = ClientTrust::load(&config).unwrap_err().to_string();
        assert!(err.contains("it expired at its nextUpdate"), "{err}");
        std::fs::write(&crl_path, b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n").unwrap();
        let err = ClientTrust::load(&config).unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot read client CRL file {}", crl_path.display())), "{err}");
        std::fs::write(&crl_path, crl(&a, &[1], day)).unwrap();
        assert_eq!(ClientTrust::load(&config).unwrap().revoked_entries, 1, "DER CRL");
    }
}
