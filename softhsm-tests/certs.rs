//! Who may connect (issue 13, parts 1 and 2), on real rustls mTLS against the real binary: CRLs, the clientAuth
//! EKU, principals bound to their issuing CA, and reloads (SIGHUP) that close the connections of a certificate
//! revoked meanwhile and keep the old state when the new one is broken. The PKI (two client CAs, their CRLs, a
//! certificate per case) is generated here with rcgen.

mod kit;

use anchorlog::client::Connection;
use kit::{Appliance, Options};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::{Duration as Span, OffsetDateTime};

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

/// Writes `certs/{stem}.pem` and `.key`: a certificate for `dns` from `ca` with `serial`, `eku` and validity.
#[allow(clippy::too_many_arguments)]
fn client(
    dir: &Path,
    stem: &str,
    ca: &Ca,
    dns: &str,
    serial: u64,
    eku: &[ExtendedKeyUsagePurpose],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, dns);
    p.subject_alt_names = vec![SanType::DnsName(dns.try_into().unwrap())];
    p.extended_key_usages = eku.to_vec();
    p.serial_number = Some(SerialNumber::from(serial));
    p.not_before = not_before;
    p.not_after = not_after;
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join(format!("certs/{stem}.pem")), cert.pem()).unwrap();
    kit::write_secret(&dir.join(format!("certs/{stem}.key")), key.serialize_pem().as_bytes());
}

/// A CRL of `ca` revoking `revoked` (PEM).
fn crl(ca: &Ca, revoked: impl IntoIterator<Item = u64>, number: u64) -> String {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - Span::hours(1),
        next_update: now + Span::days(1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .into_iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(s),
                revocation_time: now - Span::minutes(5),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.cert, &ca.key)
    .unwrap()
    .pem()
    .unwrap()
}

const CLIENT_AUTH: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ClientAuth];
/// Serial of the certificate revoked from the start.
const REVOKED: u64 = 66;
/// Serial of the certificate revoked by the reload.
const LATER_REVOKED: u64 = 77;

/// An appliance trusting two client CAs (`ca.pem`, `ca2.pem`) with a CRL each; every harness principal is bound to
/// `ca.pem`, `partner-1` to `ca2.pem`. Reloads only on SIGHUP (no polling), so each test decides when.
fn appliance() -> (Appliance, Ca, Ca) {
    appliance_polling(0)
}

/// [`appliance`] that also reloads when a watched file changes, checked every `poll_s` seconds.
fn appliance_polling(poll_s: u64) -> (Appliance, Ca, Ca) {
    appliance_configured(poll_s, Options::default(), |_| {})
}

/// [`appliance_polling`] on `base` options (extra configuration, the source listener); `{DIR}` in the
/// configuration is the appliance's directory, and `before_start` gets it to write files there.
fn appliance_configured(poll_s: u64, base: Options, before_start: impl FnOnce(&Path)) -> (Appliance, Ca, Ca) {
    let filter = move |text: String| -> String {
        let d = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("cert_file = \"").and_then(|r| r.strip_suffix("/certs/server.pem\""))
            })
            .unwrap()
            .to_string();
        let mut text = text.replace("{DIR}", &d).replace(
            &format!("client_ca_files = [\"{d}/certs/ca.pem\"]"),
            &format!(
                "client_ca_files = [\"{d}/certs/ca.pem\", \"{d}/certs/ca2.pem\"]\n\
                 client_crl_files = [\"{d}/certs/ca.crl\", \"{d}/certs/ca2.crl\"]\nreload_poll_s = {poll_s}"
            ),
        );
        for who in ["producer", "auditor", "admin", "monitor", "reader"] {
            text = text.replace(
                &format!("identities = [\"dns:{who}.test\"]"),
                &format!("identities = [\"dns:{who}.test\"]\nissuers = [\"{d}/certs/ca.pem\"]"),
            );
        }
        text + &format!(
            "[[principal]]\nname = \"partner-1\"\nroles = [\"producer\"]\nidentities = [\"dns:partner.test\"]\n\
             issuers = [\"{d}/certs/ca2.pem\"]\n"
        )
    };
    let options = Options { record_appliance_events: true, config_filter: Some(Arc::new(filter)), ..base };
    let mut a = Appliance::prepare(options);
    let (one, two) = (ca("Client CA one"), ca("Client CA two"));
    let d = a.dir.path().to_path_buf();
    std::fs::write(d.join("certs/ca.pem"), one.cert.pem()).unwrap();
    std::fs::write(d.join("certs/ca2.pem"), two.cert.pem()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    std::fs::write(d.join("certs/server.pem"), p.signed_by(&server_key, &one.cert, &one.key).unwrap().pem())
        .unwrap();
    kit::write_secret(&d.join("certs/server.key"), server_key.serialize_pem().as_bytes());
    let now = OffsetDateTime::now_utc();
    let (from, to) = (now - Span::days(1), now + Span::days(30));
    for (serial, (stem, dns)) in (2u64..).zip([
        ("producer", "producer.test"),
        ("auditor", "auditor.test"),
        ("admin", "admin.test"),
        ("monitor", "monitor.test"),
        ("stranger", "stranger.test"),
        ("later", "producer.test"),
    ]) {
        let serial = if stem == "later" { LATER_REVOKED } else { serial };
        client(&d, stem, &one, dns, serial, CLIENT_AUTH, from, to);
    }
    client(&d, "revoked", &one, "producer.test", REVOKED, CLIENT_AUTH, from, to);
    client(&d, "expired", &one, "producer.test", 20, CLIENT_AUTH, now - Span::days(30), now - Span::days(1));
    client(&d, "notyet", &one, "producer.test", 21, CLIENT_AUTH, now + Span::days(1), now + Span::days(30));
    client(&d, "servereku", &one, "producer.test", 22, &[ExtendedKeyUsagePurpose::ServerAuth], from, to);
    client(&d, "noeku", &one, "producer.test", 23, &[], from, to);
    // The producer's identity, issued by the other (trusted) CA.
    client(&d, "otherca", &two, "producer.test", 24, CLIENT_AUTH, from, to);
    client(&d, "partner", &two, "partner.test", 25, CLIENT_AUTH, from, to);
    std::fs::write(d.join("certs/ca.crl"), crl(&one, [REVOKED], 1)).unwrap();
    std::fs::write(d.join("certs/ca2.crl"), crl(&two, [], 1)).unwrap();
    before_start(&d);
    a.spawn().expect("appliance starts");
    (a, one, two)
}

/// The certificate `who` gets no HTTP answer: the handshake fails (with TLS 1.3 the client learns it at its first
/// read). Returns the server's reason from its log line.
async fn refused_at_handshake(a: &Appliance, who: &str) -> String {
    let before = handshake_refusals(a).len();
    if let Ok(mut conn) = a.try_connect(who).await {
        let answer = conn.get("/readyz").await;
        assert!(answer.is_err(), "{who}: answered {:?}", answer.map(|r| (r.status, r.json())));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let refusals = handshake_refusals(a);
        if refusals.len() > before {
            return refusals[before].clone();
        }
        assert!(Instant::now() < deadline, "{who}: no handshake refusal logged: {}", a.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn handshake_refusals(a: &Appliance) -> Vec<String> {
    a.server_log()
        .lines()
        .filter(|l| l.contains("TLS handshake refused"))
        .map(|l| l.split("error=").nth(1).unwrap_or(l).to_string())
        .collect()
}

/// Status and JSON of `GET /v1/heads/latest` as `who` over a fresh connection.
async fn get_as(a: &Appliance, who: &str) -> (u16, serde_json::Value) {
    let r = a.connect(who).await.get("/v1/heads/latest").await.expect("an HTTP answer");
    (r.status, r.json())
}

async fn post_one(conn: &mut Connection) -> Result<u16, anchorlog::client::ClientError> {
    conn.post_json("/v1/events", br#"{"type":"LOGIN","user":"alice"}"#).await.map(|r| r.status)
}

/// How many events the producer `producer` has in the database file (read directly: no audit record).
fn events_of(a: &Appliance, producer: &str) -> u64 {
    let conn = anchorlog::store::open_reader(&a.db_path()).expect("ledger opens");
    conn.query_row("SELECT count(*) FROM events WHERE producer = ?1", [producer], |r| r.get::<_, i64>(0))
        .expect("count") as u64
}

async fn reloads_metric(a: &Appliance) -> String {
    let text = a.connect("monitor").await.get("/metrics").await.expect("metrics").body;
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with("anchorlog_reloads_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_matrix_each_certificate_gets_its_documented_outcome() {
    let (a, _one, _two) = appliance();
    let mut producer = a.connect("producer").await;
    assert_eq!(post_one(&mut producer).await.unwrap(), 200);
    // Refused at the handshake: properties of the certificate itself.
    assert_eq!(refused_at_handshake(&a, "revoked").await, "invalid peer certificate: Revoked");
    let expired = refused_at_handshake(&a, "expired").await;
    assert!(
        expired.starts_with("invalid peer certificate: certificate expired: verification time "),
        "{expired}"
    );
    assert!(expired.contains("but certificate is not valid after"), "{expired}");
    let not_yet = refused_at_handshake(&a, "notyet").await;
    assert!(
        not_yet.starts_with("invalid peer certificate: certificate not valid yet: verification time "),
        "{not_yet}"
    );
    assert!(not_yet.contains("but certificate is not valid before"), "{not_yet}");
    assert_eq!(
        refused_at_handshake(&a, "servereku").await,
        "invalid peer certificate: certificate does not allow extended key usage for client authentication, allows \
         server authentication"
    );
    assert_eq!(
        refused_at_handshake(&a, "noeku").await,
        "invalid peer certificate: Other(OtherError(the client certificate has no extendedKeyUsage; clientAuth is \
         required (issue it with extendedKeyUsage=clientAuth, or set server.allow_client_certs_without_eku for \
         legacy certificates)))"
    );
    // Refused with a 403 JSON error: the configuration's mapping.
    let (status, body) = get_as(&a, "otherca").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("principal_wrong_issuer")), "{body}");
    assert_eq!(body["detail"]["principal"], "producer-1");
    let (status, body) = get_as(&a, "stranger").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("unknown_principal")), "{body}");
    // The second CA issues its own principal's certificates.
    let mut partner = a.connect("partner").await;
    assert_eq!(post_one(&mut partner).await.unwrap(), 200);
    // Every handshake refusal is on record as an access-denied event.
    let denied: Vec<_> = a
        .own_records()
        .into_iter()
        .filter(|(_, b)| b["type"] == "anchorlog.access_denied")
        .filter_map(|(_, b)| b["reason"].as_str().map(str::to_string))
        .collect();
    assert!(
        denied.iter().any(|r| r == "tls_handshake_refused: invalid peer certificate: Revoked"),
        "{denied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_added_by_sighup_closes_the_open_connection_and_refuses_the_next() {
    let (a, one, _two) = appliance();
    let mut later = a.connect("later").await;
    assert_eq!(post_one(&mut later).await.unwrap(), 200, "not revoked yet");
    let mut producer = a.connect("producer").await;
    assert_eq!(post_one(&mut producer).await.unwrap(), 200);
    std::fs::write(a.path("certs/ca.crl"), crl(&one, [REVOKED, LATER_REVOKED], 2)).unwrap();
    a.signal("HUP");
    let log = a.wait_log("client trust reloaded", 1, Duration::from_secs(30)).await;
    assert!(log.contains("trigger=\"SIGHUP\" closed_connections=1"), "{log}");
    assert!(log.contains("closing an established connection after the reload"), "{log}");
    // The open keep-alive connection of the revoked certificate is gone; the other one serves on.
    assert!(post_one(&mut later).await.is_err(), "the revoked certificate's connection was closed");
    assert_eq!(post_one(&mut producer).await.unwrap(), 200);
    assert_eq!(refused_at_handshake(&a, "later").await, "invalid peer certificate: Revoked");
    assert!(reloads_metric(&a).await.contains("anchorlog_reloads_total{outcome=\"ok\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_crl_on_reload_keeps_the_old_state_logs_and_counts_it() {
    let (a, _one, _two) = appliance();
    std::fs::write(a.path("certs/ca.crl"), "-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
        .unwrap();
    a.signal("HUP");
    let log = a.wait_log("reload failed", 1, Duration::from_secs(30)).await;
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(
        line.contains(&format!("cannot read client CRL file {}", a.path("certs/ca.crl").display())),
        "{line}"
    );
    assert!(
        line.contains("the previous client CAs, CRLs, principals and source secrets stay in effect"),
        "{line}"
    );
    // The old state: the producer still gets in, the revoked certificate is still refused.
    let mut producer = a.connect("producer").await;
    assert_eq!(post_one(&mut producer).await.unwrap(), 200);
    assert_eq!(refused_at_handshake(&a, "revoked").await, "invalid peer certificate: Revoked");
    let metric = reloads_metric(&a).await;
    assert!(metric.contains("anchorlog_reloads_total{outcome=\"failed\"} 1"), "{metric}");
    assert!(metric.contains("anchorlog_reloads_total{outcome=\"ok\"} 0"), "{metric}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_file_replaced_by_rename_is_picked_up_without_sighup() {
    let (a, one, _two) = appliance_polling(1);
    let mut later = a.connect("later").await;
    assert_eq!(post_one(&mut later).await.unwrap(), 200);
    // As a CRL fetcher publishes: write aside, rename over the old file.
    let tmp = a.path("certs/ca.crl.new");
    std::fs::write(&tmp, crl(&one, [REVOKED, LATER_REVOKED], 2)).unwrap();
    std::fs::rename(&tmp, a.path("certs/ca.crl")).unwrap();
    let log = a.wait_log("client trust reloaded", 1, Duration::from_secs(30)).await;
    assert!(log.contains("trigger=\"a watched file changed\" closed_connections=1"), "{log}");
    assert!(post_one(&mut later).await.is_err(), "the revoked certificate's connection was closed");
    assert_eq!(refused_at_handshake(&a, "later").await, "invalid peer certificate: Revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_principal_and_a_changed_source_secret_take_effect_on_sighup() {
    let secret = |dir: &Path, value: &str| {
        kit::write_secret(&dir.join("shipper.secret"), format!("{value}\n").as_bytes())
    };
    let base = Options {
        source_listen: true,
        extra_config: "[[source]]\nname = \"shipper\"\nformat = \"json\"\nsecret_auth = \"bearer\"\n\
                       secret_file = \"{DIR}/shipper.secret\"\n"
            .into(),
        ..Options::default()
    };
    let (a, _one, _two) = appliance_configured(0, base, |d| secret(d, "old-token"));
    let body = br#"{"type":"LOGIN","user":"alice"}"#;
    let post_source = |token: &'static str| {
        let a = &a;
        async move {
            let mut s = a.connect_source_listener().await;
            let auth = format!("Bearer {token}");
            let r = s
                .request(
                    "POST",
                    "/v1/sources/shipper/events",
                    &[("content-type", "application/json"), ("authorization", auth.as_str())],
                    body.to_vec(),
                )
                .await
                .expect("an HTTP answer");
            (r.status, r.json()["code"].as_str().unwrap_or("").to_string())
        }
    };
    assert_eq!(post_source("old-token").await.0, 200);
    let mut partner = a.connect("partner").await;
    assert_eq!(post_one(&mut partner).await.unwrap(), 200);

    // The operator removes partner-1 from the configuration and rotates the source's secret, then reloads.
    let config = std::fs::read_to_string(a.config_path()).unwrap();
    let at = config.find("[[principal]]\nname = \"partner-1\"").expect("partner-1 is configured");
    std::fs::write(a.config_path(), &config[..at]).unwrap();
    secret(a.dir.path(), "new-token");
    a.signal("HUP");
    let log = a.wait_log("client trust reloaded", 1, Duration::from_secs(30)).await;
    assert!(log.contains("trigger=\"SIGHUP\" closed_connections=1"), "{log}");

    // partner-1's open connection is closed, and a new one maps to no principal.
    assert!(post_one(&mut partner).await.is_err(), "the removed principal's connection was closed");
    let (status, body) = get_as(&a, "partner").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("unknown_principal")), "{body}");
    // The old secret is refused and stores nothing; the new one is accepted.
    assert_eq!(post_source("old-token").await, (401, "auth_mismatch".to_string()));
    assert_eq!(events_of(&a, "shipper"), 1, "the refused post stored nothing");
    assert_eq!(post_source("new-token").await.0, 200);
    assert_eq!(events_of(&a, "shipper"), 2);
    // The other principals are untouched.
    let mut producer = a.connect("producer").await;
    assert_eq!(post_one(&mut producer).await.unwrap(), 200);
}
