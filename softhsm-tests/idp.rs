//! Acceptance tests of the identity-provider sources (`/v1/sources/{name}/events`) on real parts: SoftHSM
//! token per test, the real `anchorlog` binary, rustls mTLS and the server-auth source listener, a real SQLite
//! file read back independently, and a Python (or curl) client posting over mTLS.

mod kit;

use anchorlog::client::{Connection, Response};
use anchorlog::formats::auth::hmac_sha256_hex;
use kit::{Appliance, Options};
use serde_json::{json, Value};
use std::process::Command;

/// A fixture's bytes.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture as a single event's exact raw bytes (a single object: the body without surrounding whitespace).
fn trimmed(name: &str) -> Vec<u8> {
    fixture(name).trim_ascii().to_vec()
}

/// mTLS sources of every format for `producer-1` (the harness's producer certificate): the three IdP formats,
/// Auth0 twice more (one per framing under test) and generic JSON.
fn mtls_sources() -> String {
    let more = ["auth0-lines", "auth0-objects", "json"].map(|name| {
        let format = if name == "json" { "json" } else { "auth0" };
        format!("[[source]]\nname = \"{name}\"\nformat = \"{format}\"\nprincipals = [\"producer-1\"]\n")
    });
    format!("{}{}", kit::IDP_SOURCES, more.concat())
}

fn start_with_sources(extra: &str, source_listen: bool) -> Appliance {
    Appliance::start_with(Options {
        extra_config: format!("{}{extra}", mtls_sources()),
        source_listen,
        ..Options::default()
    })
}

async fn post(conn: &mut Connection, source: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    conn.request("POST", &format!("/v1/sources/{source}/events"), &h, body.to_vec()).await.expect("POST")
}

/// Posts and expects a 200; returns (seq, duplicate) per event.
async fn post_ok(conn: &mut Connection, source: &str, body: &[u8]) -> Vec<(u64, bool)> {
    let r = post(conn, source, body, &[]).await;
    assert_eq!(r.status, 200, "{source}: {}", String::from_utf8_lossy(&r.body));
    seqs(&r)
}

fn seqs(r: &Response) -> Vec<(u64, bool)> {
    r.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["duplicate"].as_bool().unwrap()))
        .collect()
}

/// The stored body of `seq`, read from the database file (bytes, no API in between).
fn db_body(a: &Appliance, seq: u64) -> Vec<u8> {
    let conn = rusqlite::Connection::open_with_flags(a.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    conn.query_row("SELECT body FROM events WHERE seq = ?1", [seq as i64], |r| r.get(0)).unwrap()
}

/// Event `seq` with its normalized fields, once the indexer has caught up, read from the database files
/// (`Appliance::read_stored`: an API read would append an audit-access record and move the seqs asserted
/// here; `keycloak_fixtures_are_stored_byte_exact_with_normalized_fields` reads through the API too).
async fn event(a: &Appliance, seq: u64) -> Value {
    a.wait_indexed().await;
    let ev = a.read_stored(seq);
    assert!(!ev["fields"].is_null(), "no search fields for seq {seq}: {ev}");
    ev
}

/// The event `seq`; checks that its stored body equals `raw`, byte for byte.
async fn stored(a: &Appliance, seq: u64, raw: &[u8]) -> Value {
    let ev = event(a, seq).await;
    assert_eq!(db_body(a, seq), raw, "database body of seq {seq}");
    ev
}

fn assert_fields(ev: &Value, expected: Value) {
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&ev["fields"][k], v, "field {k} of {}", ev["fields"]);
    }
}

const REALM: &str = "0c6f7a3e-8d4b-4b9a-a3a5-5f2e9d1c7b21";
const ALICE: &str = "47c223f9-813f-4d65-81ea-56f49cc2aba1";
const KC_ADMIN: &str = "ff730b72-a421-4f6e-9e4e-7fc7f53bac88";
const WIN_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_fixtures_are_stored_byte_exact_with_normalized_fields() {
    let a = start_with_sources("", false);
    let mut c = a.connect("producer").await;
    let cases = [
        (
            "keycloak-user-event.json",
            "5e1f3f7a-6c2b-4f0e-9a51-2d7f4b8c9e10",
            json!({"event_time_ms": 1_732_358_400_123u64, "event_type": "LOGIN", "outcome": "success",
                   "actor_id": ALICE, "actor_name": "alice", "source_ip": "203.0.113.24",
                   "session_id": "d827ee85-5ced-4bc3-b64a-82720eade321", "client_id": "account-console",
                   "realm": REALM, "target": null, "user_agent": null, "source": "keycloak"}),
        ),
        (
            "keycloak-login-error.json",
            "0b8e4c52-3c1f-4f9e-b7f4-9f2d6a1c8e33",
            json!({"event_type": "LOGIN_ERROR", "outcome": "failure", "actor_id": null, "actor_name": "mallory",
                   "source_ip": "198.51.100.99"}),
        ),
        (
            "keycloak-logout.json",
            "7d2c5b1a-90e4-4a8f-8c3b-2e6f1d0a9b57",
            json!({"event_type": "LOGOUT", "outcome": "success", "actor_id": ALICE,
                   "event_time_ms": 1_732_362_000_456u64}),
        ),
        (
            "keycloak-update-password.json",
            "c4f1e2d3-8b7a-4c6d-9e5f-0a1b2c3d4e60",
            json!({"event_type": "UPDATE_PASSWORD", "outcome": "success", "actor_name": "alice"}),
        ),
        (
            "keycloak-admin-create-user.json",
            "e2a7c9d1-4b3f-4e8a-9c6d-1f0b2a3c4d5e",
            json!({"event_type": "admin.USER-CREATE", "outcome": "success", "actor_id": KC_ADMIN,
                   "target": "users/8d1e6f2a-3b4c-4d5e-9f6a-7b8c9d0e1f2a", "source_ip": "198.51.100.7",
                   "realm": REALM}),
        ),
    ];
    for (file, id, expected) in cases {
        let raw = trimmed(file);
        let got = post_ok(&mut c, "keycloak", &fixture(file)).await;
        assert_eq!(got.len(), 1);
        assert!(!got[0].1, "{file} is new");
        let ev = stored(&a, got[0].0, &raw).await;
        assert_eq!(ev["entry_fields"]["source_id"], id, "{file}");
        assert_eq!(ev["entry_fields"]["source"], "keycloak");
        assert_eq!(ev["entry_fields"]["format"], "keycloak");
        assert_eq!(ev["entry_fields"]["producer"], "producer-1");
        assert_eq!(ev["entry_fields"]["auth"], "mtls");
        assert_fields(&ev, expected);
    }
    // Admin role mapping, and a legacy admin event without id/details (stored, no de-dup key).
    let got = post_ok(&mut c, "keycloak", &fixture("keycloak-admin-role-mapping.json")).await;
    let ev = stored(&a, got[0].0, &trimmed("keycloak-admin-role-mapping.json")).await;
    assert_eq!(ev["fields"]["event_type"], "admin.REALM_ROLE_MAPPING-CREATE");
    assert_eq!(ev["fields"]["target"], "users/8d1e6f2a-3b4c-4d5e-9f6a-7b8c9d0e1f2a/role-mappings/realm");
    let got = post_ok(&mut c, "keycloak", &fixture("keycloak-admin-legacy-no-id.json")).await;
    let ev = stored(&a, got[0].0, &trimmed("keycloak-admin-legacy-no-id.json")).await;
    assert_eq!(ev["entry_fields"]["source_id"], Value::Null);
    assert_eq!(a.stored_events().await, 7);
    // Through the API: the same entry, body and fields, and the read itself is on record (seq 7).
    let api = a.audit_get("/v1/events/6").await.json();
    for k in ["seq", "entry_fields", "body", "fields"] {
        assert_eq!(api[k], ev[k], "{k}");
    }
    assert_eq!(api["body"].as_str().unwrap().as_bytes(), trimmed("keycloak-admin-legacy-no-id.json"));
    assert_eq!(api["audit_seq"], 7);
    assert_eq!(a.stored_events().await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_verification_envelope_and_auth0_framings() {
    let a = start_with_sources("", false);
    let mut c = a.connect("producer").await;

    // Okta's one-time verification GET, on the same URL.
    let r = c
        .request(
            "GET",
            "/v1/sources/okta/events",
            &[("x-okta-verification-challenge", "Me_rShK8JHsTnbyYrWXCEoMGbM_zsZ6k0hLPZ_Pg")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.body, br#"{"verification":"Me_rShK8JHsTnbyYrWXCEoMGbM_zsZ6k0hLPZ_Pg"}"#);
    let r = c.get("/v1/sources/okta/events").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("missing_challenge")));

    // An envelope of 3 events → 3 stored events, each the exact bytes of its element, within 3 s.
    let envelope = fixture("okta-envelope-3.json");
    let started = std::time::Instant::now();
    let got = post_ok(&mut c, "okta", &envelope).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "Okta needs a 200 within 3 s");
    assert_eq!(got, vec![(0, false), (1, false), (2, false)]);
    let parsed: Value = serde_json::from_slice(&envelope).unwrap();
    for (i, (seq, _)) in got.iter().enumerate() {
        let ev = event(&a, *seq).await;
        let body = ev["body"].as_str().unwrap().as_bytes().to_vec();
        assert_eq!(db_body(&a, *seq), body);
        assert!(envelope.windows(body.len()).any(|w| w == body), "element {i} is a slice of the body");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), parsed["data"]["events"][i]);
    }
    let ev = event(&a, 0).await;
    assert_fields(
        &ev,
        json!({"event_type": "user.session.start", "outcome": "success", "actor_id": "00u2b7xk9pQRS4tUv0g5",
               "actor_name": "Bob Martin", "source_ip": "192.0.2.44", "user_agent": WIN_UA,
               "session_id": "102aBcDeFgHiJkLmNoPqRsTu", "realm": "acme.okta.com",
               "event_time_ms": 1_732_359_733_418u64, "source": "okta"}),
    );
    assert_eq!(ev["entry_fields"]["source_id"], "a1d3f5b7-9e2c-11ef-8f3a-3b5d7f9a1c2e");
    let ev = event(&a, 1).await;
    assert_fields(
        &ev,
        json!({"event_type": "group.user_membership.add", "actor_name": "IT Admin",
               "target": "User:bob@acme.example, UserGroup:unknown", "client_id": "0oa6api7client8x9y0g7"}),
    );
    // The same LogEvent delivered alone is a duplicate of the batched one; a failed MFA is new.
    assert_eq!(post_ok(&mut c, "okta", &fixture("okta-session-start.json")).await, vec![(0, true)]);
    let got = post_ok(&mut c, "okta", &fixture("okta-mfa-failure.json")).await;
    assert_eq!(got, vec![(3, false)]);
    let ev = event(&a, 3).await;
    assert_fields(
        &ev,
        json!({"event_type": "user.authentication.auth_via_mfa", "outcome": "failure",
               "target": "AuthenticatorEnrollment:pfd9k2m4n6p8q0r2s0g5"}),
    );

    // Auth0: a JSON array, JSON lines and four single objects give the same four stored events.
    let array = post_ok(&mut c, "auth0", &fixture("auth0-array.json")).await;
    let lines = post_ok(&mut c, "auth0-lines", &fixture("auth0-lines.jsonl")).await;
    let mut objects = Vec::new();
    for f in ["auth0-object-s.json", "auth0-object-f.json", "auth0-object-fp.json", "auth0-object-sapi.json"]
    {
        objects.extend(post_ok(&mut c, "auth0-objects", &fixture(f)).await);
    }
    assert_eq!(array, (4..8).map(|s| (s, false)).collect::<Vec<_>>());
    assert_eq!(lines, (8..12).map(|s| (s, false)).collect::<Vec<_>>());
    assert_eq!(objects, (12..16).map(|s| (s, false)).collect::<Vec<_>>());
    let object_files =
        ["auth0-object-s.json", "auth0-object-f.json", "auth0-object-fp.json", "auth0-object-sapi.json"];
    for i in 0..4 {
        let raw = trimmed(object_files[i]);
        let from_array = stored(&a, array[i].0, &raw).await;
        let from_lines = stored(&a, lines[i].0, &raw).await;
        let from_object = stored(&a, objects[i].0, &raw).await;
        for ev in [&from_lines, &from_object] {
            let (mut x, mut y) = (ev["fields"].clone(), from_array["fields"].clone());
            x["source"] = Value::Null;
            y["source"] = Value::Null;
            assert_eq!(x, y, "auth0 item {i}: same normalized fields");
            assert_eq!(ev["entry_fields"]["source_id"], from_array["entry_fields"]["source_id"]);
        }
    }
    let ev = event(&a, array[0].0).await;
    assert_eq!(ev["entry_fields"]["source_id"], "90020241123110213417000000000000000000000000000000000001");
    assert_fields(
        &ev,
        json!({"event_type": "s", "outcome": "success", "actor_id": "auth0|6741a0b1c2d3e4f5a6b7c8d9",
               "actor_name": "dana@acme.example", "session_id": "Qm8xV2cT4bN6mK9jH1gF3dS5aP7oI0uY",
               "client_id": "kP3nR5tV7xZ9bD1fH3jL5nP7rT9vX1zB", "realm": "acme.eu.auth0.com",
               "event_time_ms": 1_732_359_733_417u64, "source": "auth0"}),
    );
    let ev = event(&a, array[3].0).await;
    assert_fields(
        &ev,
        json!({"event_type": "sapi", "outcome": "success",
               "target": "DELETE /api/v2/users/auth0|6741a0b1c2d3e4f5a6b7c8e0"}),
    );
    let ev = event(&a, array[2].0).await;
    assert_fields(&ev, json!({"event_type": "fp", "outcome": "failure", "source_ip": "198.51.100.99"}));

    // Generic JSON through its source, with an Idempotency-Key.
    let body = br#"{"type":"LOGIN","actor":"u-9","outcome":"failure","ip":"10.1.2.3","time":"2024-11-23T10:41:05.777Z"}"#;
    let r = post(&mut c, "json", body, &[("idempotency-key", "k-1")]).await;
    assert_eq!(seqs(&r), vec![(16, false)]);
    let ev = stored(&a, 16, body).await;
    assert_eq!(ev["entry_fields"]["source_id"], "k-1");
    assert_eq!(ev["entry_fields"]["format"], "json");
    assert_fields(
        &ev,
        json!({"event_type": "LOGIN", "actor_id": "u-9", "outcome": "failure", "source_ip": "10.1.2.3",
               "event_time_ms": 1_732_358_465_777u64, "source": "json"}),
    );
    assert_eq!(a.stored_events().await, 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_deliveries_are_stored_once_and_marked_duplicate() {
    let a = start_with_sources("", false);
    let mut c = a.connect("producer").await;
    let kc = fixture("keycloak-user-event.json");
    assert_eq!(post_ok(&mut c, "keycloak", &kc).await, vec![(0, false)]);
    let r = post(&mut c, "keycloak", &kc, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!((r.json()["stored"].as_u64(), r.json()["duplicates"].as_u64()), (Some(0), Some(1)));
    assert_eq!(seqs(&r), vec![(0, true)]);
    // The same Keycloak event twice inside one array batch, next to a new one.
    let batch = [
        trimmed("keycloak-user-event.json"),
        trimmed("keycloak-logout.json"),
        trimmed("keycloak-logout.json"),
    ];
    let body = format!(
        "[{}]",
        batch.iter().map(|b| String::from_utf8(b.clone()).unwrap()).collect::<Vec<_>>().join(",")
    );
    assert_eq!(post_ok(&mut c, "keycloak", body.as_bytes()).await, vec![(0, true), (1, false), (1, true)]);

    // Okta: an envelope repeating one event, then the full envelope retried.
    let env: Value = serde_json::from_slice(&fixture("okta-envelope-3.json")).unwrap();
    let e = &env["data"]["events"];
    let repeated = json!({"data": {"events": [e[0], e[0], e[1]]}}).to_string();
    assert_eq!(post_ok(&mut c, "okta", repeated.as_bytes()).await, vec![(2, false), (2, true), (3, false)]);
    let again = post_ok(&mut c, "okta", &fixture("okta-envelope-3.json")).await;
    assert_eq!(again, vec![(2, true), (3, true), (4, false)]);
    assert_eq!(
        post_ok(&mut c, "okta", &fixture("okta-envelope-3.json")).await,
        vec![(2, true), (3, true), (4, true)]
    );

    // Auth0: JSON lines with a repeated line, then the array retried.
    let lines = String::from_utf8(fixture("auth0-lines.jsonl")).unwrap();
    let first = lines.lines().next().unwrap();
    let body = format!("{first}\n{first}\n");
    assert_eq!(post_ok(&mut c, "auth0", body.as_bytes()).await, vec![(5, false), (5, true)]);
    let got = post_ok(&mut c, "auth0", &fixture("auth0-array.json")).await;
    assert_eq!(got, vec![(5, true), (6, false), (7, false), (8, false)]);

    // Generic JSON: an Idempotency-Key retried.
    let r = post(&mut c, "json", b"{\"type\":\"X\"}", &[("idempotency-key", "retry-1")]).await;
    assert_eq!(seqs(&r), vec![(9, false)]);
    let r = post(&mut c, "json", b"{\"type\":\"X\"}", &[("idempotency-key", "retry-1")]).await;
    assert_eq!(seqs(&r), vec![(9, true)]);
    assert_eq!(a.stored_events().await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_sources_on_the_source_listener() {
    let secrets = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let p = secrets.path().join(name);
        kit::write_secret(&p, format!("{value}\n").as_bytes());
        p.display().to_string()
    };
    let extra = format!(
        r#"
[[source]]
name = "kc-hmac"
format = "keycloak"
secret_auth = "hmac"
secret_file = "{}"
[[source]]
name = "okta-hook"
format = "okta"
secret_auth = "authorization"
secret_file = "{}"
[[source]]
name = "auth0-stream"
format = "auth0"
secret_auth = "bearer"
secret_file = "{}"
"#,
        file("kc", "kc-webhook-secret"),
        file("okta", "my-shared-secret"),
        file("auth0", "auth0-token")
    );
    let a = start_with_sources(&extra, true);
    let mut s = a.connect_source_listener().await;
    let kc = fixture("keycloak-user-event.json");
    let code = |r: &Response| (r.status, r.json()["code"].as_str().unwrap_or("").to_string());

    // HMAC: missing, malformed, wrong secret, body changed after signing → 401, nothing stored.
    let good = hmac_sha256_hex(b"kc-webhook-secret", &kc);
    let wrong = hmac_sha256_hex(b"guess", &kc);
    let mut changed = kc.clone();
    changed.push(b' ');
    type Refusal<'a> = (&'a [u8], Vec<(&'a str, String)>, &'a str);
    let refusals: [Refusal<'_>; 4] = [
        (&kc, vec![], "auth_missing"),
        (&kc, vec![("x-keycloak-signature", "not-hex".into())], "auth_malformed"),
        (&kc, vec![("x-keycloak-signature", wrong)], "auth_mismatch"),
        (&changed, vec![("x-keycloak-signature", good.clone())], "auth_mismatch"),
    ];
    for (body, headers, expected) in refusals {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&mut s, "kc-hmac", body, &h).await;
        assert_eq!(code(&r), (401, expected.to_string()));
        assert_eq!(a.stored_events().await, 0);
    }
    // Good signature, bare hex (p2-inc) and `sha256=` prefixed.
    let r = post(&mut s, "kc-hmac", &kc, &[("x-keycloak-signature", &good)]).await;
    assert_eq!(seqs(&r), vec![(0, false)], "{}", String::from_utf8_lossy(&r.body));
    let ev = stored(&a, 0, &trimmed("keycloak-user-event.json")).await;
    assert_eq!(ev["entry_fields"]["producer"], "kc-hmac");
    assert_eq!(ev["entry_fields"]["source"], "kc-hmac");
    assert_eq!(ev["entry_fields"]["auth"], "hmac");
    assert_eq!(ev["fields"]["event_type"], "LOGIN");
    let prefixed = format!("sha256={good}");
    let r = post(&mut s, "kc-hmac", &kc, &[("x-keycloak-signature", &prefixed)]).await;
    assert_eq!(seqs(&r), vec![(0, true)]);

    // Okta: static Authorization value, on POST and on the verification GET.
    let okta = fixture("okta-session-start.json");
    let r = post(&mut s, "okta-hook", &okta, &[("authorization", "wrong-secret")]).await;
    assert_eq!(code(&r), (401, "auth_mismatch".into()));
    let r = post(&mut s, "okta-hook", &okta, &[]).await;
    assert_eq!(code(&r), (401, "auth_missing".into()));
    let challenge = [("x-okta-verification-challenge", "abc-123")];
    let r = s.request("GET", "/v1/sources/okta-hook/events", &challenge, Vec::new()).await.unwrap();
    assert_eq!(code(&r), (401, "auth_missing".into()));
    let r = s
        .request(
            "GET",
            "/v1/sources/okta-hook/events",
            &[challenge[0], ("authorization", "my-shared-secret")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, br#"{"verification":"abc-123"}"#.as_slice()));
    assert_eq!(a.stored_events().await, 1);
    let started = std::time::Instant::now();
    let r = post(&mut s, "okta-hook", &okta, &[("authorization", "my-shared-secret")]).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(seqs(&r), vec![(1, false)]);
    let ev = event(&a, 1).await;
    assert_eq!(
        (ev["entry_fields"]["producer"].as_str(), ev["entry_fields"]["auth"].as_str()),
        (Some("okta-hook"), Some("bearer"))
    );

    // Auth0: bearer token.
    let auth0 = fixture("auth0-object-s.json");
    for wrong in ["Bearer auth0-tokeN", "auth0-token", "Bearer "] {
        let r = post(&mut s, "auth0-stream", &auth0, &[("authorization", wrong)]).await;
        assert_eq!(r.status, 401, "{wrong:?}");
    }
    let r = post(&mut s, "auth0-stream", &auth0, &[("authorization", "Bearer auth0-token")]).await;
    assert_eq!(seqs(&r), vec![(2, false)]);

    // Unknown source, an mTLS-only source, and non-source routes are not served here.
    let r = post(&mut s, "nope", &kc, &[]).await;
    assert_eq!(code(&r), (404, "unknown_source".into()));
    let r = post(&mut s, "keycloak", &kc, &[("x-keycloak-signature", &good)]).await;
    assert_eq!(code(&r), (404, "unknown_source".into()));
    let r = s.post_json("/v1/events", b"{}").await.unwrap();
    assert_eq!(code(&r), (404, "not_found".into()));
    // On the mTLS listener a producer not listed for a secret-only source is refused.
    let mut p = a.connect("producer").await;
    let r = post(&mut p, "kc-hmac", &kc, &[]).await;
    assert_eq!(code(&r), (403, "source_not_allowed".into()));
    let mut aud = a.connect("auditor").await;
    let r = post(&mut aud, "keycloak", &kc, &[]).await;
    assert_eq!(code(&r), (403, "forbidden_role".into()));
    assert_eq!(a.stored_events().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_posts_a_keycloak_event_over_mtls() {
    let a = start_with_sources("", false);
    let d = a.dir.path().join("certs");
    let url = format!("https://localhost:{}/v1/sources/keycloak/events", a.addr.unwrap().port());
    let body = a.path("kc.json");
    std::fs::write(&body, fixture("keycloak-login-error.json")).unwrap();
    let script = r#"
import sys, requests
url, ca, cert, key, body = sys.argv[1:6]
r = requests.post(url, data=open(body, 'rb').read(), headers={'Content-Type': 'application/json'},
                  cert=(cert, key), verify=ca, timeout=10)
print(r.status_code)
print(r.text)
"#;
    let has_requests =
        Command::new("python3").args(["-c", "import requests"]).status().is_ok_and(|s| s.success());
    let out = if has_requests {
        Command::new("python3")
            .args(["-c", script, &url])
            .arg(d.join("ca.pem"))
            .arg(d.join("producer.pem"))
            .arg(d.join("producer.key"))
            .arg(&body)
            .output()
            .expect("python3 runs")
    } else {
        // No `requests` module: curl is the non-Rust client instead.
        Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(d.join("ca.pem"))
            .arg("--cert")
            .arg(d.join("producer.pem"))
            .arg("--key")
            .arg(d.join("producer.key"))
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(&url)
            .output()
            .expect("curl runs")
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let (status, json_text) = if has_requests {
        let (s, j) = stdout.split_once('\n').unwrap();
        (s.trim().to_string(), j.trim().to_string())
    } else {
        let (j, s) = stdout.trim().rsplit_once('\n').unwrap();
        (s.trim().to_string(), j.trim().to_string())
    };
    assert_eq!(status, "200", "{json_text}");
    let resp: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(resp["events"][0]["seq"], 0);
    let ev = stored(&a, 0, &trimmed("keycloak-login-error.json")).await;
    assert_eq!(ev["entry_fields"]["producer"], "producer-1");
    assert_eq!(ev["entry_fields"]["source"], "keycloak");
    assert_fields(&ev, json!({"event_type": "LOGIN_ERROR", "outcome": "failure", "actor_name": "mallory"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix_stores_nothing() {
    let a = Appliance::start_with(Options {
        extra_config: mtls_sources(),
        max_body_bytes: 64 * 1024,
        ..Options::default()
    });
    let mut c = a.connect("producer").await;
    // One good event first, so "unchanged" is a count of 1, not 0.
    post_ok(&mut c, "keycloak", &fixture("keycloak-user-event.json")).await;
    let env: Value = serde_json::from_slice(&fixture("okta-envelope-3.json")).unwrap();
    let okta_event = env["data"]["events"][1].clone();
    let mut okta_bad_second = env.clone();
    okta_bad_second["data"]["events"][1].as_object_mut().unwrap().remove("published");
    let mut okta_no_uuid = okta_event.clone();
    okta_no_uuid.as_object_mut().unwrap().remove("uuid");
    let mut okta_bad_time = okta_event.clone();
    okta_bad_time["published"] = json!("yesterday");
    let kc: Value = serde_json::from_slice(&fixture("keycloak-logout.json")).unwrap();
    let mut kc_no_time = kc.clone();
    kc_no_time.as_object_mut().unwrap().remove("time");
    let mut kc_no_type = kc.clone();
    kc_no_type.as_object_mut().unwrap().remove("type");
    let mut kc_string_time = kc.clone();
    kc_string_time["time"] = json!("2024-11-23");
    let auth0_lines = String::from_utf8(fixture("auth0-lines.jsonl")).unwrap();
    let first_line = auth0_lines.lines().next().unwrap();
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let big = format!("{{\"type\":\"X\",\"pad\":\"{}\"}}", "a".repeat(70 * 1024));
    let new_kc = String::from_utf8(trimmed("keycloak-logout.json")).unwrap();

    // (source, content type, extra header, body, status, code, detail field)
    type Case = (&'static str, &'static str, Option<(&'static str, &'static str)>, String, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("keycloak", "application/json", None, "{\"type\":".into(), 400, "invalid_json"),
        ("keycloak", "application/json", None, "   ".into(), 400, "empty_body"),
        ("keycloak", "application/json", None, kc_no_time.to_string(), 422, "missing_field"),
        ("keycloak", "application/json", None, kc_no_type.to_string(), 400, "wrong_format"),
        ("keycloak", "application/json", None, kc_string_time.to_string(), 422, "bad_field"),
        ("keycloak", "application/json", None, env.to_string(), 400, "wrong_format"),
        ("keycloak", "application/json", None, format!("[{new_kc},7]"), 422, "not_an_object"),
        ("keycloak", "text/plain", None, new_kc.clone(), 415, "unsupported_media_type"),
        ("keycloak", "application/json", None, big, 413, "body_too_large"),
        ("okta", "application/json", None, okta_event.to_string(), 400, "wrong_format"),
        ("okta", "application/json", None, "{\"data\":{\"events\":[]}}".into(), 422, "no_events"),
        (
            "okta",
            "application/json",
            None,
            json!({"data": {"events": [okta_no_uuid]}}).to_string(),
            422,
            "missing_field",
        ),
        (
            "okta",
            "application/json",
            None,
            json!({"data": {"events": [okta_bad_time]}}).to_string(),
            422,
            "bad_field",
        ),
        ("okta", "application/json", None, okta_bad_second.to_string(), 422, "missing_field"),
        (
            "auth0",
            "application/json",
            None,
            "{\"data\":{\"type\":\"s\",\"date\":\"2024-11-23T11:02:13.417Z\"}}".into(),
            422,
            "missing_field",
        ),
        ("auth0", "application/json", None, format!("{first_line}\n{{\"log_id\": \n"), 400, "invalid_json"),
        ("auth0", "application/json", None, new_kc.clone(), 400, "wrong_format"),
        ("json", "application/json", None, "[1,2]".into(), 422, "not_an_object"),
        ("json", "application/json", None, deep, 400, "too_deep"),
        (
            "json",
            "application/json",
            Some(("idempotency-key", "k")),
            "[{},{}]".into(),
            400,
            "bad_idempotency_key",
        ),
        ("nope", "application/json", None, new_kc.clone(), 404, "unknown_source"),
    ];
    assert!(cases.len() >= 15);
    for (i, (source, ctype, header, body, status, expected)) in cases.into_iter().enumerate() {
        let mut h = vec![("content-type", ctype)];
        h.extend(header);
        // A fresh connection per case: the server closes one whose body it refused unread (413).
        let r = a
            .connect("producer")
            .await
            .request("POST", &format!("/v1/sources/{source}/events"), &h, body.into_bytes())
            .await
            .expect("POST");
        assert_eq!(
            (r.status, r.json()["code"].as_str().unwrap_or("")),
            (status, expected),
            "case {i} ({source}): {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(a.stored_events().await, 1, "case {i} stored nothing");
    }
    // Missing fields are named.
    let mut c = a.connect("producer").await;
    let r = post(&mut c, "keycloak", kc_no_time.to_string().as_bytes(), &[]).await;
    assert_eq!(r.json()["detail"]["field"], "time");
    // The search database holds the fields of the one stored event only.
    event(&a, 0).await;
    let search = a.path("anchorlog.search.db");
    let conn =
        rusqlite::Connection::open_with_flags(search, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM event_fields", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_off_stores_events_without_fields_and_turning_it_on_re_derives_them() {
    let mut a = start_with_sources("\n[search]\nenabled = false\n", false);
    let mut c = a.connect("producer").await;
    let body = br#"{"id":"e-1","type":"LOGIN","actor":"alice","outcome":"failure","ip":"192.0.2.7"}"#;
    assert_eq!(post_ok(&mut c, "json", body).await, vec![(0, false)]);
    assert_eq!(post_ok(&mut c, "keycloak", &fixture("keycloak-user-event.json")).await, vec![(1, false)]);
    // De-duplication and validation do not depend on search.
    assert_eq!(post_ok(&mut c, "json", body).await, vec![(0, true)]);
    assert_eq!(post(&mut c, "keycloak", b"{\"type\":\"LOGIN\"}", &[]).await.status, 422);
    let r = a.audit_get("/v1/events/0").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["fields"], Value::Null);
    assert_eq!(r.json()["body"].as_str().unwrap().as_bytes(), body);
    assert!(!a.path("anchorlog.search.db").exists(), "no search database is written with search off");
    drop(c);
    assert!(a.sigterm().success());
    // Search back on: the indexer re-derives the fields of what was stored meanwhile.
    a.options.extra_config = mtls_sources();
    a.spawn().expect("restarts");
    let ev = event(&a, 0).await;
    assert_fields(
        &ev,
        json!({"source": "json", "event_type": "LOGIN", "actor_id": "alice", "outcome": "failure",
               "source_ip": "192.0.2.7"}),
    );
    assert_eq!(event(&a, 1).await["fields"]["source"], "keycloak");
    // The API read above is on record (seq 2), and its fields were re-derived too.
    assert_eq!(event(&a, 2).await["fields"]["event_type"], "anchorlog.audit_access");
    assert_eq!(a.stored_events().await, 3);
}
