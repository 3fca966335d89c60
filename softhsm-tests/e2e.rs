//! End-to-end acceptance tests of the vertical slice on real parts: SoftHSM token per test, real rustls mTLS,
//! a real SQLite file, the real `anchorlog` binary, and OpenSSL as an independent verifier.

mod kit;
mod scenarios;

use kit::{post_concurrently, Appliance, Options};
use std::process::Command;
use std::time::Duration;

/// The end-to-end scenarios that run on both stores (softhsm-tests/scenarios.rs; on PostgreSQL in the `postgres`
/// target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_events_are_sealed_verified_and_openssl_checks_the_head() {
    scenarios::thousand_concurrent_events_are_sealed_verified_and_openssl_checks_the_head(Options::default())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_event() {
    scenarios::sigterm_under_load_loses_no_acknowledged_event(Options::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_log_seals_heartbeats_and_restart_continues_the_chain() {
    scenarios::idle_log_seals_heartbeats_and_restart_continues_the_chain(Options::default()).await
}

#[test]
fn the_signing_key_never_left_the_token() {
    let a = Appliance::prepare(Options::default());
    let out = a.anchorlog(&["keys", "show", "--config", a.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let attrs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(attrs["sensitive"], true);
    assert_eq!(attrs["extractable"], false);
    assert_eq!(attrs["never_extractable"], true);
    assert_eq!(attrs["always_sensitive"], true);
    assert_eq!(attrs["local"], true);
    assert_eq!(attrs["can_sign"], true);
    // The exported certificate is self-signed by that key and OpenSSL accepts it.
    let crt = a.path("keys/signer.crt");
    let v = Command::new("openssl").arg("verify").arg("-CAfile").arg(&crt).arg(&crt).output().unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).trim().ends_with(": OK"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

/// Builds a sealed log of `n` events in blocks of 10, stops the appliance, and returns it.
async fn sealed_log(n: u64) -> Appliance {
    let mut a = Appliance::start_with(Options { seal_max_events: 10, ..Options::default() });
    let seqs = post_concurrently(&a, n, 4).await;
    assert_eq!(seqs.len() as u64, n);
    a.wait_for_head(n).await;
    assert!(a.sigterm().success());
    a
}

fn tampered_copy(a: &Appliance, name: &str, sql: &str) -> std::path::PathBuf {
    let copy = a.path(name);
    std::fs::copy(a.db_path(), &copy).unwrap();
    let wal = a.path("anchorlog.db-wal");
    if wal.exists() {
        std::fs::copy(&wal, a.path(&format!("{name}-wal"))).unwrap();
    }
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_at_the_exact_record_and_the_server_refuses_to_start() {
    let mut a = sealed_log(60).await;
    let (code, _) = a.verify(&a.db_path());
    assert_eq!(code, 0);

    let body = tampered_copy(
        &a,
        "body.db",
        "DROP TRIGGER events_no_update; UPDATE events SET body = CAST('{\"type\":\"LOGIN\",\"user\":\"mallory\"}' AS BLOB) WHERE seq = 17;",
    );
    let (code, r) = a.verify(&body);
    assert_eq!(code, 3);
    assert_eq!(r["seq"], 17, "{r}");
    assert!(r["failure"].as_str().unwrap().contains("body does not match"), "{r}");

    let deleted =
        tampered_copy(&a, "deleted.db", "DROP TRIGGER events_no_delete; DELETE FROM events WHERE seq = 23;");
    let (code, r) = a.verify(&deleted);
    assert_eq!(code, 3);
    assert_eq!(r["seq"], 23, "{r}");
    assert!(r["failure"].as_str().unwrap().contains("missing"), "{r}");

    // One byte of head 2's DER signature (the last byte of s) flipped.
    let sig = tampered_copy(&a, "sig.db", "DROP TRIGGER heads_no_update;");
    {
        let conn = rusqlite::Connection::open(&sig).unwrap();
        let mut der: Vec<u8> =
            conn.query_row("SELECT signature FROM heads WHERE height = 2", [], |r| r.get(0)).unwrap();
        *der.last_mut().unwrap() ^= 0x01;
        conn.execute("UPDATE heads SET signature = ?1 WHERE height = 2", [der]).unwrap();
    }
    let (code, r) = a.verify(&sig);
    assert_eq!(code, 3);
    assert_eq!(r["height"], 2, "{r}");
    assert!(r["failure"].as_str().unwrap().contains("signature does not verify"), "{r}");

    // The appliance refuses to serve the tampered file, naming the record.
    std::fs::copy(&body, a.db_path()).unwrap();
    let _ = std::fs::remove_file(a.path("anchorlog.db-wal"));
    let err = a.spawn().expect_err("must refuse to start");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("refusing to start") && err.contains("event seq 17"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refusals_have_the_documented_outcomes() {
    let a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    // No client certificate: the handshake is refused.
    let d = a.dir.path().join("certs");
    let mut roots = rustls::RootCertStore::empty();
    for c in anchorlog::tls::load_certs(&d.join("ca.pem"), "ca").unwrap() {
        roots.add(c).unwrap();
    }
    let no_cert = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let refused = match anchorlog::client::Connection::connect(a.addr.unwrap(), "localhost", no_cert).await {
        Err(_) => true,
        // TLS 1.3: the server's refusal can arrive with the first request instead of the handshake.
        Ok(mut c) => c.get("/v1/heads/latest").await.is_err(),
    };
    assert!(refused, "a client without a certificate must not get a response");

    // A certificate from another CA: refused the same way.
    let foreign_refused = match a.try_connect("foreign").await {
        Err(_) => true,
        Ok(mut c) => c.get("/v1/heads/latest").await.is_err(),
    };
    assert!(foreign_refused, "a certificate from an untrusted CA must not get a response");

    // A valid certificate that maps to no principal: 403 unknown_principal, listing its identities.
    let r = a.connect("stranger").await.post_json("/v1/events", b"{}").await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "unknown_principal");
    assert_eq!(r.json()["detail"]["identities"][0], "dns:stranger.test");

    // A producer calling an auditor endpoint: 403 forbidden_role.
    let r = a.connect("producer").await.get("/v1/heads/latest").await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "forbidden_role");
    assert_eq!(r.json()["detail"]["required_role"], "auditor");
    // An auditor cannot append.
    let r = a.connect("auditor").await.post_json("/v1/events", b"{}").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")));

    // PCI DSS 10.2.1.4: nothing of a refused request is stored, and every refusal is on record (seq 0 is the
    // start record). A 403 is answered after its record; a refused handshake's record is written beside it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.own_records().len() < 6 {
        assert!(std::time::Instant::now() < deadline, "{:?}", a.own_records());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let own = a.own_records();
    assert_eq!(a.stored_events().await, 6, "the start record and five refusals, no producer event");
    assert_eq!(own[0].1["type"], "anchorlog.start");
    let mut refusals: Vec<(String, serde_json::Value, serde_json::Value, serde_json::Value)> = own[1..]
        .iter()
        .map(|(_, b)| {
            assert_eq!(
                (&b["type"], &b["remote"], &b["suppressed"]),
                (&"anchorlog.access_denied".into(), &"127.0.0.1".into(), &0.into()),
                "{b}"
            );
            let reason = b["reason"].as_str().unwrap();
            let reason =
                if reason.starts_with("tls_handshake_refused: ") { "tls_handshake_refused" } else { reason };
            (reason.to_string(), b["endpoint"].clone(), b["principal"].clone(), b["identities"][0].clone())
        })
        .collect();
    refusals.sort_by(|x, y| (&x.0, x.1.to_string()).cmp(&(&y.0, y.1.to_string())));
    assert_eq!(
        refusals,
        vec![
            (
                "forbidden_role".into(),
                serde_json::json!("GET /v1/heads/latest"),
                serde_json::json!("producer-1"),
                serde_json::json!("dns:producer.test")
            ),
            (
                "forbidden_role".into(),
                serde_json::json!("POST /v1/events"),
                serde_json::json!("auditor-1"),
                serde_json::json!("dns:auditor.test")
            ),
            (
                "tls_handshake_refused".into(),
                serde_json::json!(null),
                serde_json::json!(null),
                serde_json::json!(null)
            ),
            (
                "tls_handshake_refused".into(),
                serde_json::json!(null),
                serde_json::json!(null),
                serde_json::json!(null)
            ),
            (
                "unknown_principal".into(),
                serde_json::json!("POST /v1/events"),
                serde_json::json!(null),
                serde_json::json!("dns:stranger.test")
            ),
        ]
    );
    let metrics = String::from_utf8(a.audit_get("/metrics").await.body).unwrap();
    assert!(metrics.contains("anchorlog_access_denied_total 5\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_stable_codes_and_stores_nothing() {
    let a = Appliance::start_with(Options { max_body_bytes: 4096, ..Options::default() });
    let mut p = a.connect("producer").await;
    let ok = p.post_json("/v1/events", b"{\"type\":\"LOGIN\"}").await.unwrap();
    assert_eq!(ok.status, 200);
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let deep_obj = format!("{{\"a\":{deep}}}");
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("invalid json", "application/json", b"{\"type\":".to_vec(), 400, "invalid_json"),
        ("wrong content type", "text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
        (
            "body over limit",
            "application/json",
            format!("{{\"x\":\"{}\"}}", "a".repeat(5000)).into_bytes(),
            413,
            "body_too_large",
        ),
        ("json too deep", "application/json", deep_obj.into_bytes(), 400, "too_deep"),
        ("empty body", "application/json", Vec::new(), 400, "empty_body"),
        (
            "batch with one bad line",
            "application/x-ndjson",
            b"{\"a\":1}\n{\"a\":2}\n[3]\n{\"a\":4}\n".to_vec(),
            422,
            "not_an_object",
        ),
        (
            "ndjson with invalid line",
            "application/x-ndjson",
            b"{\"a\":1}\n{\"a\":\n".to_vec(),
            400,
            "invalid_json",
        ),
        ("array with a non-object", "application/json", b"[{\"a\":1},\"x\"]".to_vec(), 422, "not_an_object"),
    ];
    for (name, ctype, body, status, code) in cases {
        let r = p.request("POST", "/v1/events", &[("content-type", ctype)], body).await.unwrap();
        assert_eq!(r.status, status, "{name}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], code, "{name}");
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
        assert_eq!(a.stored_events().await, 1, "{name}: nothing stored");
    }
    let r = p
        .request(
            "POST",
            "/v1/events",
            &[("content-type", "application/x-ndjson")],
            b"{\"a\":1}\n{\"a\":2}\n[3]\n".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.json()["detail"]["line"], 3, "the error names the line");
    assert_eq!(r.json()["detail"]["index"], 2, "and the index");
    // Unknown routes and methods are JSON too.
    let r = p.get("/v1/nope").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("not_found")));
    let r = p.request("DELETE", "/v1/events", &[], Vec::new()).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (405, Some("method_not_allowed")));
}

#[test]
fn hsm_misconfiguration_gives_clear_errors() {
    let a = Appliance::prepare(Options::default());
    let cfg = std::fs::read_to_string(a.config_path()).unwrap();
    let run = |text: String| {
        std::fs::write(a.config_path(), text).unwrap();
        let out = a.anchorlog(&["keys", "show", "--config", a.config_path().to_str().unwrap()]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(cfg.replace("/usr/lib/softhsm/libsofthsm2.so", "/nonexistent/libpkcs11.so"));
    assert!(e.contains("/nonexistent/libpkcs11.so"), "module not found: {e}");
    let e = run(cfg.replace("token_label = \"anchorlog-test\"", "token_label = \"no-such-token\""));
    assert!(e.contains("no-such-token") && e.contains("anchorlog-test"), "token not found lists tokens: {e}");
    let e = run(cfg.replace("key_label = \"head-signer\"", "key_label = \"no-such-key\""));
    assert!(e.contains("no-such-key") && e.contains("anchorlog keys generate"), "key not found: {e}");
    std::fs::write(a.config_path(), &cfg).unwrap();
    std::fs::write(a.path("pin"), "wrong-pin").unwrap();
    let out = a.anchorlog(&["keys", "show", "--config", a.config_path().to_str().unwrap()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.to_lowercase().contains("pin"), "wrong pin: {e}");
    assert!(!e.contains("wrong-pin"), "the PIN never appears in errors");
    // Unknown config keys are named.
    std::fs::write(a.path("pin"), kit::USER_PIN).unwrap();
    let out = {
        std::fs::write(a.config_path(), cfg.replace("[storage]", "[storage]\ndatabse = \"x\"")).unwrap();
        a.anchorlog(&["check-config", "--config", a.config_path().to_str().unwrap()])
    };
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `databse`"));
}

#[test]
fn healthz_needs_no_certificate_on_the_health_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a = Appliance::prepare(Options::default());
    // `health_listen` belongs to [server]; the harness writes [server] first, so insert it there.
    a.write_config("127.0.0.1:0");
    let text = std::fs::read_to_string(a.config_path()).unwrap().replace(
        "shutdown_grace_s = 5",
        &format!("shutdown_grace_s = 5\nhealth_listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(a.config_path(), text).unwrap();
    let _server = Guard(
        Command::new(kit::bin())
            .args(["serve", "--config", a.config_path().to_str().unwrap()])
            .env("SOFTHSM2_CONF", a.path("softhsm2.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("{\"status\":\"ok\"}"), "{body}");
}

/// Kills a child process on drop.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of the appliance's own record `seq`, parsed, read from the database file (an API read would be
/// recorded itself and move the seqs this test asserts).
async fn body_of(a: &Appliance, seq: u64) -> serde_json::Value {
    // Any answered request comes after the start record is committed (it is written before accepting).
    assert!(a.stored_events().await > seq);
    let ev = a.read_stored(seq);
    assert_eq!(ev["entry_fields"]["producer"], "anchorlog", "seq {seq}: {ev}");
    serde_json::from_str(ev["body"].as_str().expect("body")).expect("JSON body")
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_stops_crashes_and_config_changes_are_recorded_in_the_signed_log() {
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    let config_1 = sha256_hex(&a.config_path());
    // seq 0: this start, of a new log; the producer's events follow it.
    assert_eq!(post_concurrently(&a, 3, 1).await, vec![1, 2, 3]);
    let start = body_of(&a, 0).await;
    assert_eq!(start["type"], "anchorlog.start");
    assert_eq!(start["previous_run"], "new_log");
    assert_eq!(start["config_sha256"], config_1.as_str());
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert!(start["signer"].as_str().unwrap().contains("PKCS#11 token 'anchorlog-test'"), "{start}");
    assert_eq!(start["key_id"].as_str().unwrap().len(), 64);
    // A clean stop is the run's last event (seq 4); the next start (seq 5) says the previous run stopped cleanly.
    assert!(a.sigterm().success());
    a.spawn().expect("restart");
    let stop = body_of(&a, 4).await;
    assert_eq!(
        stop,
        serde_json::json!({"type": "anchorlog.stop", "start_seq": 0, "reason": "shutdown signal"})
    );
    let restart = body_of(&a, 5).await;
    assert_eq!(restart["previous_run"], "stopped_cleanly");
    // The harness rewrote the configuration for the restart (`listen` now names the port bound the first
    // time): a changed configuration, and the record says so.
    let config_2 = sha256_hex(&a.config_path());
    assert_ne!(config_1, config_2);
    assert_eq!(restart["config_sha256"], config_2.as_str());
    // Killed (no stop record), then started again with the same configuration: seq 6 says both.
    a.kill();
    a.spawn().expect("start after the kill");
    assert_eq!(sha256_hex(&a.config_path()), config_2);
    let after_crash = body_of(&a, 6).await;
    assert_eq!(after_crash["previous_run"], "ended_without_stop_record");
    assert_eq!(after_crash["config_sha256"], config_2.as_str());
    // The records are searchable by type, and the final head (after the last stop) covers them all.
    a.wait_indexed().await;
    let found = a.audit_get("/v1/events?type=anchorlog.start").await.json();
    let seqs: Vec<u64> =
        found["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![0, 5, 6]);
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    // 3 posted + 3 starts + 2 stops + 1 audit-access record of the search above.
    assert_eq!(report["report"]["events"], 9, "{report}");
    assert_eq!(
        report["report"]["appliance"],
        serde_json::json!({"starts": 3, "starts_after_unclean_end": 1, "stops": 2, "takeovers": 0, "outages_started": 0,
                           "outages_ended": 0, "access_denied": 0, "access_denied_summaries": 0,
                           "access_denied_suppressed": 0, "audit_access": 1, "erasures": 0, "witness_refusals": 0,
                           "self_verifications": 0, "key_rotations": 0, "clock_jumps": 0, "other": 0})
    );
    assert_eq!(report["report"]["unsealed_events"], 0, "the stop record is sealed by the final head");
}
