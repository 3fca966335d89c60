//! What a client CRL costs per TLS handshake: rustls' client-certificate verifier (the one the mTLS listener
//! builds in `tls::trust`, with the same options) verifying one client certificate with no CRL and with a CRL of
//! 10,000 revoked serials. The CRL is consulted once per handshake, never per request on a keep-alive
//! connection; docs/PERFORMANCE.md ("Client CRLs") turns these figures into a per-event bound.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// A client CA, one client certificate it issued (serial 5, clientAuth), and its CRL revoking `revoked`
/// other serials.
fn pki(
    revoked: u64,
) -> (CertificateDer<'static>, CertificateDer<'static>, CertificateRevocationListDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "bench client CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["producer.test".to_string()]).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.serial_number = Some(SerialNumber::from(5u64));
    let client = p.signed_by(&key, &ca, &ca_key).unwrap();
    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - Duration::hours(1),
        next_update: now + Duration::days(7),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: (0..revoked)
            .map(|i| RevokedCertParams {
                serial_number: SerialNumber::from(0x1000_0000 + i),
                revocation_time: now - Duration::days(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .unwrap();
    (ca.der().clone(), client.der().clone(), crl.der().clone())
}

/// The listener's verifier over `ca`, with `crls` checked as `tls::trust` configures them.
fn verifier(
    ca: &CertificateDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Arc<dyn ClientCertVerifier> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !crls.is_empty() {
        builder = builder.with_crls(crls).only_check_end_entity_revocation().enforce_revocation_expiration();
    }
    builder.build().unwrap()
}

fn benches(c: &mut Criterion) {
    let (ca, client, crl) = pki(10_000);
    let mut g = c.benchmark_group("tls");
    let none = verifier(&ca, Vec::new());
    let with_crl = verifier(&ca, vec![crl.clone()]);
    // The same certificate must pass both (a revoked or unknown status would measure an error path).
    none.verify_client_cert(&client, &[], UnixTime::now()).unwrap();
    with_crl.verify_client_cert(&client, &[], UnixTime::now()).unwrap();
    g.bench_function("verify_client_cert_no_crl", |b| {
        b.iter(|| none.verify_client_cert(black_box(&client), &[], UnixTime::now()).unwrap())
    });
    g.bench_function("verify_client_cert_crl_10000", |b| {
        b.iter(|| with_crl.verify_client_cert(black_box(&client), &[], UnixTime::now()).unwrap())
    });
    // A reload parses the CRL again (and so does the start): its cost, once per reload.
    g.sample_size(20);
    g.bench_function("build_verifier_crl_10000", |b| b.iter(|| verifier(&ca, vec![crl.clone()])));
    g.finish();
}

criterion_group!(tls_benches, benches);
criterion_main!(tls_benches);
