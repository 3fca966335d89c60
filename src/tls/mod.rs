//! mTLS: the rustls server configuration (client certificates mandatory, chained to the configured CAs) and
//! the mapping from a verified client certificate to a configured principal with roles.
//!
//! A certificate's identities are its SAN DNS names (`dns:`), SAN URIs (`uri:`), subject common name (`cn:`)
//! and SHA-256 fingerprint of the DER (`sha256:`). A principal matches when one of its configured identities is
//! among them. A certificate that matches no principal — or two different ones — gets no principal (403).

pub mod reload;
pub mod trust;

use crate::config::{normalize_identity, PrincipalConfig, Role};
use der::Decode as _;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS setup failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} file {path}: {reason}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file held nothing usable.
    #[error("{what} file {path} contains no {what} in PEM form")]
    Empty {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the material.
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
}

/// A configured principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Principal name (recorded as the producer of its events).
    pub name: Arc<str>,
    /// Roles it holds.
    pub roles: BTreeSet<Role>,
}

impl Principal {
    /// Whether it holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The authenticated peer of one connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The principal its certificate maps to, if any.
    pub principal: Option<Arc<Principal>>,
    /// The certificate's identities (for error messages and logs; no secrets).
    pub identities: Arc<Vec<String>>,
    /// The principal the certificate names but whose `issuers` did not issue it (then `principal` is `None`).
    pub wrong_issuer: Option<Arc<str>>,
}

/// Identity → principal lookup built from the config, with the CA certificates each principal may be issued by.
#[derive(Debug, Default)]
pub struct PrincipalMap {
    by_identity: HashMap<String, Arc<Principal>>,
    /// For each principal with `issuers`: the trust anchors of those CA files. A principal absent here may be
    /// issued by any client CA (allowed by the config only when there is one).
    issuers: HashMap<Arc<str>, Vec<rustls::pki_types::TrustAnchor<'static>>>,
}

impl PrincipalMap {
    /// Builds the map (the config was validated, so identities are well-formed and unique), ignoring `issuers`.
    pub fn new(principals: &[PrincipalConfig]) -> Self {
        let mut by_identity = HashMap::new();
        for p in principals {
            let principal = Arc::new(Principal {
                name: p.name.as_str().into(),
                roles: p.roles.iter().copied().collect(),
            });
            for id in &p.identities {
                if let Ok(normalized) = normalize_identity(id) {
                    by_identity.insert(normalized, principal.clone());
                }
            }
        }
        PrincipalMap { by_identity, issuers: HashMap::new() }
    }

    /// Builds the map with each principal's `issuers` bound to the certificates of those CA files (`ca_files`:
    /// each client CA file's certificates, as loaded).
    pub fn with_issuers(
        principals: &[PrincipalConfig],
        ca_files: &HashMap<PathBuf, Vec<CertificateDer<'static>>>,
    ) -> Result<Self, TlsError> {
        let mut map = Self::new(principals);
        for p in principals.iter().filter(|p| !p.issuers.is_empty()) {
            let mut anchors = Vec::new();
            for file in &p.issuers {
                let certs = ca_files.get(file).ok_or_else(|| {
                    TlsError::Rustls(format!(
                        "principal {:?}: issuer {} is not one of server.client_ca_files",
                        p.name,
                        file.display()
                    ))
                })?;
                for cert in certs {
                    let anchor = webpki::anchor_from_trusted_cert(cert)
                        .map_err(|e| TlsError::Rustls(format!("client CA {}: {e:?}", file.display())))?;
                    anchors.push(anchor.to_owned());
                }
            }
            map.issuers.insert(p.name.as_str().into(), anchors);
        }
        Ok(map)
    }

    /// Resolves a verified client certificate (DER) to its peer description (no issuer binding: the chain is
    /// needed for that, see [`PrincipalMap::resolve_chain`]).
    pub fn resolve(&self, cert_der: &[u8]) -> Peer {
        let identities = certificate_identities(cert_der);
        let mut matched: Option<Arc<Principal>> = None;
        let mut ambiguous = false;
        for id in &identities {
            if let Some(p) = self.by_identity.get(id) {
                match &matched {
                    Some(m) if m.name != p.name => ambiguous = true,
                    _ => matched = Some(p.clone()),
                }
            }
        }
        if ambiguous {
            tracing::warn!(?identities, "client certificate matches more than one principal; denying");
            matched = None;
        }
        Peer { principal: matched, identities: Arc::new(identities), wrong_issuer: None }
    }

    /// Resolves a verified client chain (end entity first, as presented): the principal its certificate names,
    /// provided that principal's `issuers` issued it — the chain must verify to one of their certificates.
    pub fn resolve_chain(&self, chain: &[CertificateDer<'_>]) -> Peer {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Peer { principal: None, identities: Arc::default(), wrong_issuer: None };
        };
        let mut peer = self.resolve(end_entity.as_ref());
        let Some(principal) = &peer.principal else { return peer };
        let Some(anchors) = self.issuers.get(&principal.name) else { return peer };
        let issued = webpki::EndEntityCert::try_from(end_entity).and_then(|ee| {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                anchors,
                intermediates,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
        });
        if let Err(e) = issued {
            tracing::warn!(principal = %principal.name, identities = ?peer.identities, error = ?e,
                "client certificate names a principal but was not issued by that principal's issuers; denying");
            peer.wrong_issuer = Some(principal.name.clone());
            peer.principal = None;
        }
        peer
    }

    /// How many principals the map holds (for the reload log line).
    pub fn principal_count(&self) -> usize {
        self.by_identity.values().map(|p| p.name.clone()).collect::<BTreeSet<_>>().len()
    }
}

/// The identities of a certificate: `dns:`, `uri:`, `cn:` and `sha256:` forms (normalized like the config's).
pub fn certificate_identities(cert_der: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(cert) = x509_cert::Certificate::from_der(cert_der) {
        let tbs = &cert.tbs_certificate;
        if let Ok(Some((_, san))) = tbs.get::<x509_cert::ext::pkix::SubjectAltName>() {
            for name in san.0 {
                match name {
                    x509_cert::ext::pkix::name::GeneralName::DnsName(d) => {
                        out.push(format!("dns:{}", d.as_str().to_ascii_lowercase()))
                    }
                    x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(u) => {
                        out.push(format!("uri:{}", u.as_str()))
                    }
                    _ => {}
                }
            }
        }
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter() {
                if atv.oid == const_oid::db::rfc4519::CN {
                    if let Some(cn) = any_to_string(&atv.value) {
                        out.push(format!("cn:{cn}"));
                    }
                }
            }
        }
    }
    out.push(format!("sha256:{}", hex::encode(Sha256::digest(cert_der))));
    out
}

fn any_to_string(value: &der::Any) -> Option<String> {
    if let Ok(s) = value.decode_as::<der::asn1::Utf8StringRef<'_>>() {
        return Some(s.as_str().to_string());
    }
    if let Ok(s) = value.decode_as::<der::asn1::PrintableStringRef<'_>>() {
        return Some(s.as_str().to_string());
    }
    if let Ok(s) = value.decode_as::<der::asn1::Ia5StringRef<'_>>() {
        return Some(s.as_str().to_string());
    }
    None
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data =
        std::fs::read(path).map_err(|e| TlsError::Read { what, path: path.into(), reason: e.to_string() })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read { what, path: path.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.into() });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let data =
        std::fs::read(path).map_err(|e| TlsError::Read { what, path: path.into(), reason: e.to_string() })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Empty { what, path: path.into() },
        e => TlsError::Read { what, path: path.into(), reason: e.to_string() },
    })
}

/// Refuses a server private key its group or others can read (the appliance's identity to every client).
pub(crate) fn check_server_key_mode(key_file: &Path) -> Result<(), TlsError> {
    crate::config::check_private_file_mode("server.key_file", key_file).map_err(|e| TlsError::Read {
        what: "private key",
        path: key_file.into(),
        reason: e.to_string(),
    })
}

/// The server configuration of the source listener: TLS 1.2/1.3, HTTP/1.1, server certificate only. Its
/// clients (Okta, Auth0, Keycloak plugins) cannot present certificates; they authenticate per source with a
/// secret instead.
pub fn server_config_without_client_auth(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    check_server_key_mode(key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert_file, "server certificate")?, load_key(key_file)?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration without a client certificate, trusting the certificates in `ca_file` (a witness's
/// HTTPS listener; `ca_file` may be the system bundle, whose entries rustls cannot parse are skipped).
pub fn server_auth_client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(load_certs(ca_file, "CA certificate")?);
    if added == 0 {
        return Err(TlsError::Empty { what: "CA certificate", path: ca_file.into() });
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration presenting `cert_file`/`key_file` and trusting `ca_file` (tests, bench, audit).
pub fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_file, "CA certificate")? {
        roots.add(cert).map_err(|e| TlsError::Rustls(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert_file, "client certificate")?, load_key(key_file)?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(sans: Vec<rcgen::SanType>, cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn principals() -> Vec<PrincipalConfig> {
        vec![
            PrincipalConfig {
                name: "idp".into(),
                roles: vec![Role::Producer],
                identities: vec!["dns:IdP.example.org".into()],
                issuers: vec![],
            },
            PrincipalConfig {
                name: "aud".into(),
                roles: vec![Role::Auditor],
                identities: vec!["cn:Auditor One".into()],
                issuers: vec![],
            },
        ]
    }

    #[test]
    fn identities_cover_san_cn_and_fingerprint() {
        let der = cert_with(
            vec![
                rcgen::SanType::DnsName("Host.Example.org".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://corp/idp".try_into().unwrap()),
            ],
            "Some CN",
        );
        let ids = certificate_identities(&der);
        assert_eq!(ids[0], "dns:host.example.org");
        assert_eq!(ids[1], "uri:spiffe://corp/idp");
        assert_eq!(ids[2], "cn:Some CN");
        assert_eq!(ids[3], format!("sha256:{}", hex::encode(Sha256::digest(&der))));
    }

    #[test]
    fn resolves_principals_and_denies_unknown_and_ambiguous() {
        let map = PrincipalMap::new(&principals());
        let idp = map
            .resolve(&cert_with(vec![rcgen::SanType::DnsName("idp.example.org".try_into().unwrap())], "x"));
        assert_eq!(idp.principal.as_ref().map(|p| &*p.name), Some("idp"));
        assert!(idp.principal.unwrap().has(Role::Producer));
        let aud = map.resolve(&cert_with(vec![], "Auditor One"));
        assert_eq!(aud.principal.map(|p| p.roles.clone()), Some([Role::Auditor].into()));
        assert!(map.resolve(&cert_with(vec![], "stranger")).principal.is_none());
        let both =
            cert_with(vec![rcgen::SanType::DnsName("idp.example.org".try_into().unwrap())], "Auditor One");
        assert!(map.resolve(&both).principal.is_none(), "a cert matching two principals is denied");
    }

    /// PEM files are read with rustls-pki-types' `PemObject` (rustls-pemfile is unmaintained): the same
    /// answers as before for what operators hand us — text around the blocks ignored, the first key taken,
    /// a file without the expected block refused as empty, a broken block refused naming the file.
    #[test]
    fn pem_files_read_as_operators_write_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap().self_signed(&key).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        // openssl's `subject=`/`issuer=` lines before a block, two certificates, a key after them.
        let bundle = write(
            "bundle.pem",
            format!("subject=CN = a\nissuer=CN = a\n{}\n{}{}", cert.pem(), cert.pem(), key.serialize_pem()),
        );
        let certs = load_certs(&bundle, "CA certificate").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), cert.der().as_ref());
        let k = load_key(&bundle).unwrap();
        assert_eq!(k.secret_der(), key.serialize_der().as_slice());

        let only_cert = write("cert.pem", cert.pem());
        let e = load_key(&only_cert).unwrap_err();
        assert!(matches!(e, TlsError::Empty { what: "private key", .. }), "{e}");
        let only_key = write("key.pem", key.serialize_pem());
        let e = load_certs(&only_key, "server certificate").unwrap_err();
        assert!(matches!(e, TlsError::Empty { what: "server certificate", .. }), "{e}");

        let truncated = cert.pem();
        let truncated = write("truncated.pem", truncated[..truncated.len() / 2].to_string());
        let e = load_certs(&truncated, "CA certificate").unwrap_err();
        assert!(matches!(e, TlsError::Read { what: "CA certificate", .. }), "{e}");
        assert!(e.to_string().contains("truncated.pem"), "{e}");
    }
}
