//! Cross-format tests over the IdP fixtures in `tests/fixtures/` (shapes from
//! `shared/notes/idp-formats.md`; values made up), plus the bad-input matrix.

use super::*;

const LIMITS: Limits =
    Limits { max_events: Limits::DEFAULT_MAX_EVENTS, max_depth: Limits::DEFAULT_MAX_DEPTH };

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../tests/fixtures/", $name)).as_slice()
    };
}

/// `Some(s.to_owned())`, to keep the expected values readable.
fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn parse_ok(format: Format, body: &[u8], ndjson: bool) -> Vec<ParsedEvent> {
    match parse(format, body, ndjson, &LIMITS) {
        Ok(events) => {
            assert_raw_slices(body, &events);
            events
        }
        Err(e) => panic!("{format} fixture refused: {e}"),
    }
}

fn parse_one(format: Format, body: &[u8]) -> ParsedEvent {
    let mut events = parse_ok(format, body, false);
    assert_eq!(events.len(), 1);
    events.remove(0)
}

/// Every `raw` is a byte-identical slice of the body, the slices appear in order and don't
/// overlap, and each is one complete JSON object.
fn assert_raw_slices(body: &[u8], events: &[ParsedEvent]) {
    let mut cursor = 0;
    for (i, ev) in events.iter().enumerate() {
        let pos = body[cursor..]
            .windows(ev.raw.len())
            .position(|w| w == ev.raw.as_slice())
            .unwrap_or_else(|| panic!("event {i}: raw is not a slice of the body"));
        cursor += pos + ev.raw.len();
        assert_eq!(ev.raw.first(), Some(&b'{'), "event {i}");
        assert_eq!(ev.raw.last(), Some(&b'}'), "event {i}");
        let v: serde_json::Value = serde_json::from_slice(&ev.raw).unwrap();
        assert!(v.is_object(), "event {i}");
    }
}

/// Trims JSON whitespace from both ends.
fn trim(body: &[u8]) -> &[u8] {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap();
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace()).unwrap();
    &body[start..=end]
}

// ---------------------------------------------------------------- Keycloak

const REALM: &str = "0c6f7a3e-8d4b-4b9a-a3a5-5f2e9d1c7b21";
const ALICE: &str = "47c223f9-813f-4d65-81ea-56f49cc2aba1";
const ALICE_SESSION: &str = "d827ee85-5ced-4bc3-b64a-82720eade321";
const KC_ADMIN: &str = "ff730b72-a421-4f6e-9e4e-7fc7f53bac88";
const KC_ADMIN_CLIENT: &str = "1f0e9d8c-7b6a-4c5d-9e8f-0a1b2c3d4e5f";

#[test]
fn keycloak_login() {
    let body = fixture!("keycloak-user-event.json");
    let ev = parse_one(Format::Keycloak, body);
    assert_eq!(ev.raw, trim(body));
    assert_eq!(ev.source_id, s("5e1f3f7a-6c2b-4f0e-9a51-2d7f4b8c9e10"));
    assert_eq!(
        ev.fields,
        NormalizedFields {
            event_time_ms: Some(1_732_358_400_123),
            event_type: s("LOGIN"),
            outcome: Outcome::Success,
            actor_id: s(ALICE),
            actor_name: s("alice"),
            target: None,
            source_ip: s("203.0.113.24"),
            user_agent: None,
            session_id: s(ALICE_SESSION),
            client_id: s("account-console"),
            realm: s(REALM),
        }
    );
}

#[test]
fn keycloak_login_error_for_unknown_user() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-login-error.json"));
    assert_eq!(ev.source_id, s("0b8e4c52-3c1f-4f9e-b7f4-9f2d6a1c8e33"));
    assert_eq!(
        ev.fields,
        NormalizedFields {
            event_time_ms: Some(1_732_358_460_871),
            event_type: s("LOGIN_ERROR"),
            outcome: Outcome::Failure,
            actor_id: None,
            actor_name: s("mallory"),
            target: None,
            source_ip: s("198.51.100.99"),
            user_agent: None,
            session_id: None,
            client_id: s("account-console"),
            realm: s(REALM),
        }
    );
}

#[test]
fn keycloak_logout() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-logout.json"));
    assert_eq!(ev.source_id, s("7d2c5b1a-90e4-4a8f-8c3b-2e6f1d0a9b57"));
    assert_eq!(
        ev.fields,
        NormalizedFields {
            event_time_ms: Some(1_732_362_000_456),
            event_type: s("LOGOUT"),
            outcome: Outcome::Success,
            actor_id: s(ALICE),
            actor_name: None,
            target: None,
            source_ip: s("203.0.113.24"),
            user_agent: None,
            session_id: s(ALICE_SESSION),
            client_id: s("account-console"),
            realm: s(REALM),
        }
    );
}

#[test]
fn keycloak_update_password() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-update-password.json"));
    assert_eq!(ev.source_id, s("c4f1e2d3-8b7a-4c6d-9e5f-0a1b2c3d4e60"));
    assert_eq!(
        ev.fields,
        NormalizedFields {
            event_time_ms: Some(1_732_359_001_234),
            event_type: s("UPDATE_PASSWORD"),
            outcome: Outcome::Success,
            actor_id: s(ALICE),
            actor_name: s("alice"),
            target: None,
            source_ip: s("203.0.113.24"),
            user_agent: None,
            session_id: s(ALICE_SESSION),
            client_id: s("account-console"),
            realm: s(REALM),
        }
    );
}

/// Expected fields of a Keycloak admin event by the console admin.
fn kc_admin(time: i64, kind: &str, path: &str) -> NormalizedFields {
    NormalizedFields {
        event_time_ms: Some(time),
        event_type: s(kind),
        outcome: Outcome::Success,
        actor_id: s(KC_ADMIN),
        actor_name: None,
        target: s(path),
        source_ip: s("198.51.100.7"),
        user_agent: None,
        session_id: None,
        client_id: s(KC_ADMIN_CLIENT),
        realm: s(REALM),
    }
}

#[test]
fn keycloak_admin_create_user_shared_sample() {
    let body = fixture!("keycloak-admin-event.json");
    let ev = parse_one(Format::Keycloak, body);
    assert_eq!(ev.raw, trim(body));
    assert_eq!(ev.source_id, s("9b6c1f0e-2f1d-4a53-8a0e-7c1d2b3a4f55"));
    assert_eq!(
        ev.fields,
        kc_admin(1_732_358_522_456, "admin.USER-CREATE", "users/3f2a1b0c-9d8e-4f7a-8b6c-5d4e3f2a1b0c")
    );
}

#[test]
fn keycloak_admin_create_user_keeps_the_representation_string_byte_exact() {
    let body = fixture!("keycloak-admin-create-user.json");
    let ev = parse_one(Format::Keycloak, body);
    assert_eq!(ev.source_id, s("e2a7c9d1-4b3f-4e8a-9c6d-1f0b2a3c4d5e"));
    assert_eq!(
        ev.fields,
        kc_admin(1_732_360_100_789, "admin.USER-CREATE", "users/8d1e6f2a-3b4c-4d5e-9f6a-7b8c9d0e1f2a")
    );
    // The double-encoded representation (with escaped quotes inside) is untouched.
    let needle = br#"\"department\":[\"R&D \\\"labs\\\"\"]"#;
    assert!(ev.raw.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn keycloak_admin_realm_role_mapping() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-admin-role-mapping.json"));
    assert_eq!(ev.source_id, s("3a9f8e7d-6c5b-4a3e-8d2c-1b0a9f8e7d6c"));
    assert_eq!(
        ev.fields,
        kc_admin(
            1_732_360_222_001,
            "admin.REALM_ROLE_MAPPING-CREATE",
            "users/8d1e6f2a-3b4c-4d5e-9f6a-7b8c9d0e1f2a/role-mappings/realm"
        )
    );
}

#[test]
fn keycloak_legacy_admin_event_without_id_or_details() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-admin-legacy-no-id.json"));
    assert_eq!(ev.source_id, None);
    assert_eq!(
        ev.fields,
        kc_admin(1_700_000_000_000, "admin.CLIENT-UPDATE", "clients/4e5f6a7b-8c9d-4e0f-a1b2-c3d4e5f6a7b8")
    );
}

#[test]
fn keycloak_admin_error_is_a_failure() {
    let body =
        br#"{"time":5,"realmId":"r","operationType":"DELETE","resourceType":"USER","error":"unknown_error"}"#;
    assert_eq!(parse_one(Format::Keycloak, body).fields.outcome, Outcome::Failure);
}

#[test]
fn keycloak_p2_inc_webhook_user_event() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-p2-webhook-login.json"));
    // Dedupe on `id`, not on the per-delivery `uid`.
    assert_eq!(ev.source_id, s("5e1f3f7a-6c2b-4f0e-9a51-2d7f4b8c9e10"));
    // Same normalized fields as the native representation of the same login.
    let native = parse_one(Format::Keycloak, fixture!("keycloak-user-event.json"));
    assert_eq!(ev.fields, native.fields);
}

#[test]
fn keycloak_vymalo_admin_event() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-vymalo-admin.json"));
    assert_eq!(ev.source_id, s("f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b"));
    assert_eq!(
        ev.fields,
        kc_admin(1_732_360_300_000, "admin.USER-DELETE", "users/8d1e6f2a-3b4c-4d5e-9f6a-7b8c9d0e1f2a")
    );
}

#[test]
fn keycloak_upstream_event_hook_user_event() {
    let ev = parse_one(Format::Keycloak, fixture!("keycloak-eventhook-user.json"));
    assert_eq!(ev.source_id, s("9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"));
    assert_eq!(
        ev.fields,
        NormalizedFields {
            event_time_ms: Some(1_732_358_460_871),
            event_type: s("LOGIN_ERROR"),
            outcome: Outcome::Failure,
            actor_id: None,
            actor_name: s("alice"),
            target: None,
            source_ip: s("198.51.100.99"),
            user_agent: None,
            session_id: None,
            client_id: s("account-console"),
            realm: s(REALM),
        }
    );
}

#[test]
fn keycloak_array_and_ndjson_batches() {
    let a = trim(fixture!("keycloak-user-event.json"));
    let b = trim(fixture!("keycloak-admin-event.json"));
    let array = [b"[".as_slice(), a, b",".as_slice(), b, b"]"].concat();
    let lines = [a, b"\n".as_slice(), b].concat();
    let from_array = parse_ok(Format::Keycloak, &array, false);
    assert_eq!(from_array.len(), 2);
    assert_eq!(from_array[0].raw, a);
    assert_eq!(from_array[1].raw, b);
    // Pretty-printed objects span lines, so NDJSON needs them compacted.
    let compact =
        |x: &[u8]| serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(x).unwrap()).unwrap();
    let ndjson = [compact(a), b"\r\n".to_vec(), compact(b), b"\n".to_vec()].concat();
    let from_lines = parse_ok(Format::Keycloak, &ndjson, true);
    assert_eq!(from_lines.len(), 2);
    assert_eq!(from_lines[1].fields, from_array[1].fields);
    assert!(parse(Format::Keycloak, &lines, true, &LIMITS).is_err());
}

// ---------------------------------------------------------------- Okta

const ALICE_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36";
const WIN_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

#[test]
fn okta_shared_sample_two_events() {
    let events = parse_ok(Format::Okta, fixture!("okta-event-hook.json"), false);
    let alice = NormalizedFields {
        event_time_ms: Some(1_732_358_465_777),
        event_type: s("user.session.start"),
        outcome: Outcome::Success,
        actor_id: s("00u1qw6mqitPHM8AJ0g7"),
        actor_name: s("Alice Example"),
        target: None,
        source_ip: s("203.0.113.24"),
        user_agent: s(ALICE_UA),
        session_id: s("102N1EKyPFERROGvK9wizMAPQ"),
        client_id: None,
        realm: s("example.okta.com"),
    };
    let sso = NormalizedFields {
        event_time_ms: Some(1_732_358_466_902),
        event_type: s("user.authentication.sso"),
        target: s("AppInstance:Example Wiki, AppUser:alice@example.com"),
        ..alice.clone()
    };
    let got: Vec<_> = events.iter().map(|e| (e.source_id.clone(), e.fields.clone())).collect();
    assert_eq!(
        got,
        vec![
            (s("f790999f-fe87-467a-9880-6982a583986c"), alice),
            (s("3c1b9e2a-7d44-11ef-8a6b-0f5e2d9c1a77"), sso)
        ]
    );
}

/// Okta `user.session.start` for Bob (shared by two fixtures).
fn okta_bob_start() -> NormalizedFields {
    NormalizedFields {
        event_time_ms: Some(1_732_359_733_418),
        event_type: s("user.session.start"),
        outcome: Outcome::Success,
        actor_id: s("00u2b7xk9pQRS4tUv0g5"),
        actor_name: s("Bob Martin"),
        target: None,
        source_ip: s("192.0.2.44"),
        user_agent: s(WIN_UA),
        session_id: s("102aBcDeFgHiJkLmNoPqRsTu"),
        client_id: None,
        realm: s("acme.okta.com"),
    }
}

#[test]
fn okta_session_start() {
    let ev = parse_one(Format::Okta, fixture!("okta-session-start.json"));
    assert_eq!(ev.source_id, s("a1d3f5b7-9e2c-11ef-8f3a-3b5d7f9a1c2e"));
    assert_eq!(ev.fields, okta_bob_start());
}

#[test]
fn okta_failed_mfa_uses_the_ip_chain_when_client_ip_is_null() {
    let ev = parse_one(Format::Okta, fixture!("okta-mfa-failure.json"));
    assert_eq!(ev.source_id, s("b2e4a6c8-9e2c-11ef-9a4b-4c6e8a0b2d3f"));
    assert_eq!(
        ev.fields,
        NormalizedFields {
            event_time_ms: Some(1_732_359_761_907),
            event_type: s("user.authentication.auth_via_mfa"),
            outcome: Outcome::Failure,
            target: s("AuthenticatorEnrollment:pfd9k2m4n6p8q0r2s0g5"),
            ..okta_bob_start()
        }
    );
}

#[test]
fn okta_envelope_with_three_events() {
    let events = parse_ok(Format::Okta, fixture!("okta-envelope-3.json"), false);
    let got: Vec<_> = events.iter().map(|e| (e.source_id.clone(), e.fields.clone())).collect();
    let membership = NormalizedFields {
        event_time_ms: Some(1_732_359_900_120),
        event_type: s("group.user_membership.add"),
        outcome: Outcome::Success,
        actor_id: s("00u1adm1n2345678h0g7"),
        actor_name: s("IT Admin"),
        target: s("User:bob@acme.example, UserGroup:unknown"),
        source_ip: s("198.51.100.20"),
        user_agent: s(WIN_UA),
        session_id: s("102AdMiNsEsSiOn0123456"),
        client_id: s("0oa6api7client8x9y0g7"),
        realm: s("acme.okta.com"),
    };
    let end = NormalizedFields {
        event_time_ms: Some(1_732_361_409_555),
        event_type: s("user.session.end"),
        ..okta_bob_start()
    };
    assert_eq!(
        got,
        vec![
            (s("a1d3f5b7-9e2c-11ef-8f3a-3b5d7f9a1c2e"), okta_bob_start()),
            (s("c3f5b7d9-9e2c-11ef-a5c6-5d7f9b1c3e4a"), membership),
            (s("d4a6c8e0-9e2c-11ef-b6d7-6e8a0c2d4f5b"), end),
        ]
    );
    // The same LogEvent is byte-identical whether delivered alone or in a batch.
    let alone = parse_one(Format::Okta, fixture!("okta-session-start.json"));
    assert_eq!(events[0], alone);
}

#[test]
fn okta_verification_get() {
    let request = std::str::from_utf8(fixture!("okta-verification-get.http")).unwrap();
    assert!(request.starts_with("GET "));
    let challenge = request.lines().find_map(|l| l.strip_prefix("X-Okta-Verification-Challenge: ")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(fixture!("okta-verification-response.json")).unwrap();
    assert_eq!(okta_verification_response(challenge), expected);
    assert_eq!(
        serde_json::to_string(&okta_verification_response(challenge)).unwrap(),
        r#"{"verification":"Me_rShK8JHsTnbyYrWXCEoMGbM_zsZ6k0hLPZ_Pg"}"#
    );
    // A challenge with quotes is escaped, not injected.
    assert_eq!(
        serde_json::to_string(&okta_verification_response("a\"}")).unwrap(),
        r#"{"verification":"a\"}"}"#
    );
}

// ---------------------------------------------------------------- Auth0

const TENANT: &str = "acme.eu.auth0.com";
const PORTAL: &str = "kP3nR5tV7xZ9bD1fH3jL5nP7rT9vX1zB";
const DANA: &str = "auth0|6741a0b1c2d3e4f5a6b7c8d9";

fn auth0_expected() -> Vec<(Option<String>, NormalizedFields)> {
    vec![
        (
            s("90020241123110213417000000000000000000000000000000000001"),
            NormalizedFields {
                event_time_ms: Some(1_732_359_733_417),
                event_type: s("s"),
                outcome: Outcome::Success,
                actor_id: s(DANA),
                actor_name: s("dana@acme.example"),
                target: None,
                source_ip: s("192.0.2.44"),
                user_agent: s(WIN_UA),
                session_id: s("Qm8xV2cT4bN6mK9jH1gF3dS5aP7oI0uY"),
                client_id: s(PORTAL),
                realm: s(TENANT),
            },
        ),
        (
            s("90020241123110351882000000000000000000000000000000000002"),
            NormalizedFields {
                event_time_ms: Some(1_732_359_831_882),
                event_type: s("f"),
                outcome: Outcome::Failure,
                actor_id: s("auth0|6741a0b1c2d3e4f5a6b7c8e0"),
                actor_name: s("erin@acme.example"),
                target: None,
                source_ip: s("203.0.113.77"),
                user_agent: s("curl/8.5.0"),
                session_id: None,
                client_id: s(PORTAL),
                realm: s(TENANT),
            },
        ),
        (
            s("90020241123110402005000000000000000000000000000000000003"),
            NormalizedFields {
                event_time_ms: Some(1_732_359_842_005),
                event_type: s("fp"),
                outcome: Outcome::Failure,
                actor_id: s(DANA),
                actor_name: s("dana@acme.example"),
                target: None,
                source_ip: s("198.51.100.99"),
                user_agent: s(WIN_UA),
                session_id: None,
                client_id: s(PORTAL),
                realm: s(TENANT),
            },
        ),
        (
            s("90020241123110530250000000000000000000000000000000000004"),
            NormalizedFields {
                event_time_ms: Some(1_732_359_930_250),
                event_type: s("sapi"),
                outcome: Outcome::Success,
                actor_id: s("auth0|60aa11bb22cc33dd44ee55ff"),
                actor_name: s("ops@acme.example"),
                target: s("DELETE /api/v2/users/auth0|6741a0b1c2d3e4f5a6b7c8e0"),
                source_ip: s("198.51.100.20"),
                user_agent: s("node-auth0/4.12.0"),
                session_id: None,
                client_id: s("M2mCl1ent0000000000000000000000a"),
                realm: s(TENANT),
            },
        ),
    ]
}

#[test]
fn auth0_array_lines_and_objects_give_identical_events() {
    let array = parse_ok(Format::Auth0, fixture!("auth0-array.json"), false);
    let got: Vec<_> = array.iter().map(|e| (e.source_id.clone(), e.fields.clone())).collect();
    assert_eq!(got, auth0_expected());

    let lines_detected = parse_ok(Format::Auth0, fixture!("auth0-lines.jsonl"), false);
    let lines_declared = parse_ok(Format::Auth0, fixture!("auth0-lines.jsonl"), true);
    let objects: Vec<ParsedEvent> = [
        fixture!("auth0-object-s.json"),
        fixture!("auth0-object-f.json"),
        fixture!("auth0-object-fp.json"),
        fixture!("auth0-object-sapi.json"),
    ]
    .iter()
    .map(|body| parse_one(Format::Auth0, body))
    .collect();
    assert_eq!(lines_detected, array);
    assert_eq!(lines_declared, array);
    assert_eq!(objects, array);
    // Each single-object body is stored whole, byte for byte.
    assert_eq!(objects[3].raw, fixture!("auth0-object-sapi.json"));
}

#[test]
fn auth0_shared_sample() {
    let events = parse_ok(Format::Auth0, fixture!("auth0-log-stream.json"), false);
    let got: Vec<_> = events.iter().map(|e| (e.source_id.clone(), e.fields.clone())).collect();
    let default_app = s("aI61p8I8aFjmYRliLWgvM9ev97kCCNDB");
    let realm = s("example.eu.auth0.com");
    assert_eq!(
        got,
        vec![
            (
                s("90020241123104105271334544008635532534914988032684720226"),
                NormalizedFields {
                    event_time_ms: Some(1_732_358_465_706),
                    event_type: s("s"),
                    outcome: Outcome::Success,
                    actor_id: s("auth0|618223a4e3f49e006948565c"),
                    actor_name: s("alice@example.com"),
                    target: None,
                    source_ip: s("203.0.113.24"),
                    user_agent: s(ALICE_UA),
                    session_id: s("m5SgtzMKxmeNBxj_kCfUUJhzrSdfvLFu"),
                    client_id: default_app.clone(),
                    realm: realm.clone(),
                }
            ),
            (
                s("90020241123104214482106767167326018758436529088273317970"),
                NormalizedFields {
                    event_time_ms: Some(1_732_358_534_466),
                    event_type: s("fp"),
                    outcome: Outcome::Failure,
                    actor_id: s("auth0|61823277a44a21007221a59a"),
                    actor_name: s("bob@example.com"),
                    target: None,
                    source_ip: s("198.51.100.99"),
                    user_agent: s(
                        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
                    ),
                    session_id: None,
                    client_id: default_app,
                    realm,
                }
            ),
            (
                s("90020241123104330299115418365351830745472004626724159538"),
                NormalizedFields {
                    event_time_ms: Some(1_732_358_610_201),
                    event_type: s("sapi"),
                    outcome: Outcome::Success,
                    actor_id: s("auth0|6181ce2b0f293a006d158194"),
                    actor_name: s("admin@example.com"),
                    target: s("PATCH /api/v2/users/auth0|61823277a44a21007221a59a"),
                    source_ip: s("198.51.100.7"),
                    user_agent: s(ALICE_UA),
                    session_id: None,
                    client_id: s("360yuN1BXP4u3tBChK5VOgekgGJ7CwLL"),
                    // The sapi item has no `hostname`.
                    realm: None,
                }
            ),
        ]
    );
}

// ---------------------------------------------------------------- generic JSON

#[test]
fn json_object_array_and_ndjson() {
    let one = parse_ok(Format::Json, br#"{"id":"e1","type":"x"}"#, false);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].source_id, s("e1"));
    assert_eq!(one[0].fields.event_type, s("x"));
    let many = parse_ok(Format::Json, b"{\"id\":\"e1\"}\n\n{\"id\":\"e2\"}\n", true);
    let ids: Vec<_> = many.iter().map(|e| e.source_id.clone()).collect();
    assert_eq!(ids, vec![s("e1"), s("e2")]);
    // Any vendor payload is also a valid generic event.
    assert_eq!(parse_ok(Format::Json, fixture!("okta-event-hook.json"), false).len(), 1);
}

// ---------------------------------------------------------------- bad input

fn nested_objects(depth: usize, inner: &str) -> Vec<u8> {
    let mut s = String::new();
    for _ in 0..depth - 1 {
        s.push_str("{\"a\":");
    }
    s.push_str(&format!("{{\"s\":\"{inner}\"}}"));
    s.push_str(&"}".repeat(depth - 1));
    s.into_bytes()
}

#[test]
fn depth_limit_is_exact_at_the_boundary() {
    // 64 levels, with brackets inside a string that must not count.
    let ok = nested_objects(64, "[[[[{{{{\\\"[[");
    assert_eq!(parse(Format::Json, &ok, false, &LIMITS).map(|v| v.len()), Ok(1));
    let bad = nested_objects(65, "x");
    assert_eq!(
        parse(Format::Json, &bad, false, &LIMITS),
        Err(FormatError::TooDeep { max: 64, offset: 64 * 5 })
    );
    // Same limit for every format, and per line in NDJSON.
    assert_eq!(
        parse(Format::Okta, &bad, false, &LIMITS),
        Err(FormatError::TooDeep { max: 64, offset: 64 * 5 })
    );
    let lines = [b"{}\n".as_slice(), &bad].concat();
    assert_eq!(
        parse(Format::Json, &lines, true, &LIMITS),
        Err(FormatError::TooDeep { max: 64, offset: 3 + 64 * 5 })
    );
}

#[test]
fn bad_input_matrix() {
    let small = Limits { max_events: 2, max_depth: 64 };
    let kc_login = r#"{"id":"k1","time":1732358400123,"type":"LOGIN","realmId":"r"}"#;
    let okta =
        |event: &str| format!(r#"{{"eventType":"com.okta.event_hook","data":{{"events":[{event}]}}}}"#);
    let wrong =
        |expected: Format, detail: &str| FormatError::WrongFormat { expected, detail: detail.to_owned() };
    let missing = |index: usize, line: Option<usize>, field: &'static str| FormatError::MissingField {
        index,
        line,
        field,
    };
    let bad = |index: usize, line: Option<usize>, field: &'static str, reason: &str| FormatError::BadField {
        index,
        line,
        field,
        reason: reason.to_owned(),
    };
    let invalid = |line: usize, column: usize, reason: &str| FormatError::InvalidJson {
        line,
        column,
        reason: reason.to_owned(),
    };
    let cases: Vec<(&str, Format, String, bool, Limits, FormatError)> = vec![
        ("empty", Format::Json, String::new(), false, LIMITS, FormatError::Empty),
        ("blank", Format::Auth0, " \r\n\t".into(), false, LIMITS, FormatError::Empty),
        ("blank ndjson", Format::Json, "\n\n".into(), true, LIMITS, FormatError::Empty),
        ("truncated", Format::Json, "{\"a\":".into(), false, LIMITS, invalid(1, 5, "EOF while parsing a value")),
        ("bad second line", Format::Json, "{}\n{bad}\n".into(), true, LIMITS, invalid(2, 2, "key must be a string")),
        ("trailing garbage", Format::Keycloak, format!("{kc_login} x"), false, LIMITS, invalid(1, 63, "trailing characters")),
        ("empty array", Format::Json, "[ ]".into(), false, LIMITS, FormatError::NoEvents),
        ("scalar element", Format::Json, "[{},1]".into(), false, LIMITS, FormatError::NotAnObject { index: 1, line: None }),
        ("ndjson scalar line", Format::Json, "{}\n\n[1]\n".into(), true, LIMITS, FormatError::NotAnObject { index: 1, line: Some(3) }),
        ("too many in array", Format::Json, "[{},{},{}]".into(), false, small, FormatError::TooManyEvents { max: 2, found: 3 }),
        ("too many lines", Format::Auth0, "{}\n{}\n{}".into(), true, small, FormatError::TooManyEvents { max: 2, found: 3 }),
        ("id too long", Format::Json, format!("{{\"id\":\"{}\"}}", "x".repeat(257)), false, LIMITS, bad(0, None, "id", "event id is 257 bytes, longer than 256")),
        ("kc neither type nor op", Format::Keycloak, r#"{"time":1,"userId":"u"}"#.into(), false, LIMITS,
            wrong(Format::Keycloak, "event 0 has neither `type` (user event) nor `operationType` (admin event)")),
        ("kc gets okta", Format::Keycloak, okta(kc_login), false, LIMITS,
            wrong(Format::Keycloak, "event 0 has neither `type` (user event) nor `operationType` (admin event); it looks like an Okta event hook envelope")),
        ("kc batch wrapper", Format::Keycloak, format!("{{\"events\":[{kc_login}]}}"), false, LIMITS,
            wrong(Format::Keycloak, "event 0 has neither `type` (user event) nor `operationType` (admin event)")),
        ("kc missing time", Format::Keycloak, format!("[{kc_login},{{\"type\":\"LOGOUT\"}}]"), false, LIMITS, missing(1, None, "time")),
        ("kc string time", Format::Keycloak, r#"{"type":"LOGIN","time":"2024-11-23T10:41:05Z"}"#.into(), false, LIMITS,
            bad(0, None, "time", "expected integer epoch milliseconds, got a string")),
        ("kc admin no resourceType", Format::Keycloak, r#"{"time":1,"operationType":"DELETE"}"#.into(), false, LIMITS, missing(0, None, "resourceType")),
        ("kc null type", Format::Keycloak, r#"{"time":1,"type":null}"#.into(), false, LIMITS, missing(0, None, "type")),
        ("okta gets array", Format::Okta, "[{}]".into(), false, LIMITS,
            wrong(Format::Okta, "got a JSON array (Auth0 and generic JSON sources send arrays); expected an event hook envelope {\"data\":{\"events\":[…]}}")),
        ("okta gets keycloak", Format::Okta, kc_login.into(), false, LIMITS,
            wrong(Format::Okta, "the object has no `data` member; expected an event hook envelope {\"data\":{\"events\":[…]}}")),
        ("okta gets auth0 object", Format::Okta, trim(fixture!("auth0-object-s.json")).iter().map(|&b| b as char).collect(), false, LIMITS,
            wrong(Format::Okta, "`data` has no `events` array; expected an event hook envelope {\"data\":{\"events\":[…]}}")),
        ("okta events not array", Format::Okta, r#"{"data":{"events":{}}}"#.into(), false, LIMITS,
            wrong(Format::Okta, "`data.events` is not an array; expected an event hook envelope {\"data\":{\"events\":[…]}}")),
        ("okta no events", Format::Okta, r#"{"data":{"events":[]}}"#.into(), false, LIMITS, FormatError::NoEvents),
        ("okta scalar event", Format::Okta, okta("1"), false, LIMITS, FormatError::NotAnObject { index: 0, line: None }),
        ("okta missing uuid", Format::Okta, okta(r#"{"eventType":"user.session.start","published":"2024-11-23T10:41:05.777Z"}"#), false, LIMITS,
            missing(0, None, "uuid")),
        ("okta bad published", Format::Okta, okta(r#"{"uuid":"u1","eventType":"x","published":"yesterday"}"#), false, LIMITS,
            bad(0, None, "published", "`yesterday` is not an RFC 3339 date-time")),
        ("okta too many", Format::Okta, okta(r#"{"uuid":"1"},{"uuid":"2"},{"uuid":"3"}"#), false, small, FormatError::TooManyEvents { max: 2, found: 3 }),
        ("okta bare log event", Format::Okta, okta(r#"{"log_id":"a","data":{}}"#), false, LIMITS,
            wrong(Format::Okta, "data.events[0] has neither `uuid` nor `eventType`; it looks like an Auth0 log stream item")),
        ("auth0 gets keycloak", Format::Auth0, kc_login.into(), false, LIMITS,
            wrong(Format::Auth0, "item 0 is not a log stream item {\"log_id\", \"data\"}; it looks like a Keycloak user event")),
        ("auth0 no data", Format::Auth0, r#"{"log_id":"a"}"#.into(), false, LIMITS, missing(0, None, "data")),
        ("auth0 data not object", Format::Auth0, r#"{"log_id":"a","data":"x"}"#.into(), false, LIMITS, bad(0, None, "data", "expected an object, got a string")),
        ("auth0 ids differ", Format::Auth0, r#"{"log_id":"a","data":{"log_id":"b","date":"2024-11-23T10:41:05Z","type":"s"}}"#.into(), false, LIMITS,
            bad(0, None, "log_id", "`log_id` a differs from `data.log_id` b")),
        ("auth0 numeric id", Format::Auth0, r#"{"log_id":7,"data":{"date":"2024-11-23T10:41:05Z","type":"s"}}"#.into(), false, LIMITS,
            bad(0, None, "log_id", "expected a string, got a number")),
        ("auth0 no id", Format::Auth0, r#"{"data":{"date":"2024-11-23T10:41:05Z","type":"s"}}"#.into(), false, LIMITS, missing(0, None, "log_id")),
        ("auth0 line without date", Format::Auth0,
            "{\"log_id\":\"a\",\"data\":{\"date\":\"2024-11-23T10:41:05Z\",\"type\":\"s\"}}\n{\"log_id\":\"b\",\"data\":{\"type\":\"s\"}}\n".into(),
            false, LIMITS, missing(1, Some(2), "data.date")),
        ("auth0 no type", Format::Auth0, r#"[{"log_id":"a","data":{"date":"2024-11-23T10:41:05Z"}}]"#.into(), false, LIMITS, missing(0, None, "data.type")),
    ];
    assert!(cases.len() >= 15);
    for (name, format, body, ndjson, limits, expected) in cases {
        assert_eq!(parse(format, body.as_bytes(), ndjson, &limits), Err(expected), "case {name:?}");
    }
}

#[test]
fn error_codes_statuses_and_messages() {
    let e = FormatError::MissingField { index: 1, line: Some(2), field: "data.date" };
    assert_eq!(e.code(), "missing_field");
    assert_eq!(e.http_status(), 422);
    assert_eq!(e.to_string(), "event 1 (line 2) lacks the required field `data.date`");
    let e = FormatError::WrongFormat { expected: Format::Okta, detail: "got a JSON array".into() };
    assert_eq!(e.code(), "wrong_format");
    assert_eq!(e.http_status(), 400);
    assert_eq!(
        e.to_string(),
        "the body is not a okta payload: got a JSON array; check the format configured for this source"
    );
    assert_eq!(FormatError::TooManyEvents { max: 1, found: 2 }.http_status(), 413);
    assert_eq!(FormatError::Empty.code(), "empty_body");
    assert_eq!(serde_json::to_string(&Format::Auth0).unwrap(), "\"auth0\"");
    assert_eq!(serde_json::from_str::<Format>("\"keycloak\"").unwrap(), Format::Keycloak);
    assert_eq!(serde_json::to_string(&Outcome::Failure).unwrap(), "\"failure\"");
}

#[test]
fn keycloak_fixture_signature_round_trip() {
    let body = fixture!("keycloak-admin-event.json");
    let secret = b"p2-inc-shared-secret";
    let sig = auth::hmac_sha256_hex(secret, body);
    assert_eq!(auth::verify_hmac_sha256(secret, body, Some(&sig), Some("HmacSHA256")), Ok(()));
    // The stored raw is the trimmed body; the signature is over the body as received.
    let ev = parse_one(Format::Keycloak, body);
    assert_eq!([ev.raw.as_slice(), b"\n"].concat(), body);
}

/// Timing note (not an assertion): `cargo test --release -- --ignored --nocapture timing`.
#[test]
#[ignore]
fn timing_keycloak_10k() {
    let template = std::str::from_utf8(trim(fixture!("keycloak-user-event.json"))).unwrap();
    let bodies: Vec<Vec<u8>> =
        (0..10_000).map(|i| template.replace("5e1f3f7a", &format!("{i:08x}")).into_bytes()).collect();
    let start = std::time::Instant::now();
    let mut n = 0;
    for body in &bodies {
        n += parse(Format::Keycloak, body, false, &LIMITS).unwrap().len();
    }
    let one_by_one = start.elapsed();
    let batch = [b"[".to_vec(), bodies.join(&b","[..]), b"]".to_vec()].concat();
    let start = std::time::Instant::now();
    let m = parse(Format::Keycloak, &batch, false, &LIMITS).unwrap().len();
    let batched = start.elapsed();
    println!(
        "keycloak: {n} single-object bodies in {one_by_one:?} = {:.0} events/s; one array of {m} in {batched:?} = {:.0} events/s ({} B/event)",
        n as f64 / one_by_one.as_secs_f64(),
        m as f64 / batched.as_secs_f64(),
        template.len()
    );
}

/// Per-stage cost of one Keycloak body (scan, framing, Value parse, whole `parse`).
#[test]
#[ignore]
fn timing_keycloak_breakdown() {
    let body = trim(fixture!("keycloak-user-event.json"));
    let n = 100_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(limits::scan(std::hint::black_box(body), 64).unwrap());
    }
    let scan = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            serde_json::from_slice::<&serde_json::value::RawValue>(std::hint::black_box(body)).unwrap(),
        );
    }
    let raw = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            serde_json::from_slice::<serde_json::Value>(std::hint::black_box(body)).unwrap(),
        );
    }
    let value = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(parse(Format::Keycloak, std::hint::black_box(body), false, &LIMITS).unwrap());
    }
    let all = t.elapsed() / n;
    println!("scan {scan:?} raw {raw:?} value {value:?} total {all:?}");
}

#[test]
fn stored_elements_re_derive_their_fields() {
    for (format, body, ndjson) in [
        (Format::Keycloak, fixture!("keycloak-admin-create-user.json"), false),
        (Format::Auth0, fixture!("auth0-array.json"), false),
        (Format::Json, br#"{"type":"LOGIN","actor":"u"}"#.as_slice(), false),
    ] {
        for ev in parse_ok(format, body, ndjson) {
            assert_eq!(super::normalize_stored(format.as_str(), &ev.raw), Some(ev.fields));
        }
    }
    // Okta: everything but the realm, which only the envelope carried.
    for ev in parse_ok(Format::Okta, fixture!("okta-envelope-3.json"), false) {
        let expected = NormalizedFields { realm: None, ..ev.fields };
        assert_eq!(super::normalize_stored("okta", &ev.raw), Some(expected));
    }
    let erasure = br#"{"type":"anchorlog.erasure","erased_seq":3,"erased_by":"dpo","reason":"r"}"#;
    let expected = NormalizedFields {
        event_type: Some("anchorlog.erasure".into()),
        actor_id: Some("dpo".into()),
        outcome: super::Outcome::Success,
        ..NormalizedFields::default()
    };
    assert_eq!(super::normalize_stored("anchorlog", erasure), Some(expected));
    assert_eq!(super::normalize_stored("anchorlog", b"not json"), None);
    assert_eq!(super::normalize_stored("appliance-from-the-future", b"{}"), None);
    assert_eq!(super::normalize_stored("keycloak", b"not json"), None);
}
