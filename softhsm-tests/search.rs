//! `GET /v1/events` search on real parts (SoftHSM signer, the real binary, rustls mTLS, the indexer's search
//! database): IdP fixtures posted through the sources API, every filter answered with exactly the expected
//! seqs, pagination without duplicates or gaps, parameter errors, authorization, and the audit-access record
//! each auditor read leaves in the log (PCI DSS 10.2.1.3).

mod kit;

use anchorlog::formats::{self, limits::Limits, Format, NormalizedFields, Outcome};
use kit::{Appliance, Options};
use serde_json::{json, Value};

const ALICE: &str = "47c223f9-813f-4d65-81ea-56f49cc2aba1";
const REALM: &str = "0c6f7a3e-8d4b-4b9a-a3a5-5f2e9d1c7b21";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(params: &[(&str, &str)]) -> String {
    params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
}

struct Auditor<'a> {
    a: &'a Appliance,
    /// The `audit_seq` of every answered request, in order.
    audit_seqs: Vec<u64>,
}

impl Auditor<'_> {
    /// `GET /v1/events/{seq}`; expects 200. A view is recorded like a search (PCI DSS 10.2.1.3).
    async fn view(&mut self, seq: u64) -> Value {
        let r = self.a.audit_get(&format!("/v1/events/{seq}")).await;
        assert_eq!(r.status, 200, "{seq}: {}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        self.audit_seqs.push(v["audit_seq"].as_u64().expect("audit_seq"));
        v
    }

    /// One search page; expects 200.
    async fn page(&mut self, q: &str) -> Value {
        let r = self.a.audit_get(&format!("/v1/events?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        self.audit_seqs.push(v["audit_seq"].as_u64().expect("audit_seq"));
        v
    }

    /// Every page of a search; returns the seqs in answer order and the pages' order field.
    async fn walk(&mut self, params: &[(&str, &str)], limit: usize) -> (Vec<u64>, String) {
        let mut seqs = Vec::new();
        let mut cursor: Option<String> = None;
        let limit = limit.to_string();
        for _ in 0..100 {
            let mut p = params.to_vec();
            p.push(("limit", &limit));
            if let Some(c) = &cursor {
                p.push(("cursor", c));
            }
            let v = self.page(&query(&p)).await;
            let events = v["events"].as_array().unwrap();
            assert!(events.len() <= limit.parse().unwrap());
            assert_eq!(v["count"].as_u64(), Some(events.len() as u64));
            seqs.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return (seqs, v["order"].as_str().unwrap().to_string()),
            }
        }
        panic!("pagination did not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_every_filter_pages_and_is_itself_logged() {
    let a = Appliance::start_with(Options { extra_config: kit::IDP_SOURCES.into(), ..Options::default() });
    let mut producer = a.connect("producer").await;

    // The fixtures, posted through their sources; the oracle is the formats' own parse of the same bytes.
    let posts = [
        ("keycloak", Format::Keycloak, "keycloak-user-event.json"),
        ("keycloak", Format::Keycloak, "keycloak-login-error.json"),
        ("keycloak", Format::Keycloak, "keycloak-logout.json"),
        ("keycloak", Format::Keycloak, "keycloak-admin-create-user.json"),
        ("okta", Format::Okta, "okta-envelope-3.json"),
        ("okta", Format::Okta, "okta-mfa-failure.json"),
        ("auth0", Format::Auth0, "auth0-array.json"),
    ];
    let mut stored: Vec<(u64, &str, NormalizedFields, Vec<u8>)> = Vec::new();
    for (source, format, file) in posts {
        let body = fixture(file);
        let r = producer
            .request(
                "POST",
                &format!("/v1/sources/{source}/events"),
                &[("content-type", "application/json")],
                body.clone(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{file}: {}", String::from_utf8_lossy(&r.body));
        let parsed =
            formats::parse(format, &body, false, &Limits { max_events: 100, max_depth: 64 }).unwrap();
        let events = r.json()["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), parsed.len());
        for (e, p) in events.iter().zip(parsed) {
            assert_eq!(e["duplicate"], false);
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(seq, stored.len() as u64, "dense seqs");
            stored.push((seq, source, p.fields, p.raw));
        }
    }
    let n = stored.len() as u64;
    assert_eq!(n, 12);
    a.wait_indexed().await;
    let mut auditor = Auditor { a: &a, audit_seqs: Vec::new() };

    let expect = |pred: &dyn Fn(&str, &NormalizedFields) -> bool| -> Vec<u64> {
        stored.iter().filter(|(_, s, f, _)| pred(s, f)).map(|(seq, ..)| *seq).collect()
    };
    // Each filter alone (and two combinations), walked with several page sizes.
    let t0 = 1_732_358_400_000i64;
    let t1 = 1_732_360_000_000i64;
    let (t0s, t1s) = (t0.to_string(), t1.to_string());
    type Params<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Params, Vec<u64>)> = vec![
        (vec![("actor", ALICE)], expect(&|_, f| f.actor_id.as_deref() == Some(ALICE))),
        (vec![("type", "LOGIN_ERROR")], expect(&|_, f| f.event_type.as_deref() == Some("LOGIN_ERROR"))),
        (vec![("outcome", "failure")], expect(&|_, f| f.outcome == Outcome::Failure)),
        (vec![("source", "auth0")], expect(&|s, _| s == "auth0")),
        (vec![("realm", REALM)], expect(&|_, f| f.realm.as_deref() == Some(REALM))),
        (vec![("ip", "198.51.100.99")], expect(&|_, f| f.source_ip.as_deref() == Some("198.51.100.99"))),
        (
            vec![("source", "okta"), ("outcome", "success")],
            expect(&|s, f| s == "okta" && f.outcome == Outcome::Success),
        ),
        (
            vec![("actor", ALICE), ("since", "2024-11-23T11:00:00Z")],
            expect(&|_, f| {
                f.actor_id.as_deref() == Some(ALICE) && f.event_time_ms >= Some(1_732_359_600_000)
            }),
        ),
    ];
    // Spot checks of the oracle against the fixtures' known values.
    assert_eq!(cases[0].1, vec![0, 2], "alice logs in and out on Keycloak");
    assert_eq!(cases[1].1, vec![1]);
    assert_eq!(cases[3].1, (8..12).collect::<Vec<_>>());
    assert_eq!(cases[4].1, vec![0, 1, 2, 3], "the four Keycloak events are in one realm");
    assert_eq!(cases[5].1, vec![1, 10], "mallory's IP on Keycloak and Auth0");
    assert_eq!(cases[7].1, vec![2]);
    for (params, expected) in &cases {
        assert!(!expected.is_empty(), "{params:?}");
        for limit in [1, 2, 100] {
            let (seqs, order) = auditor.walk(params, limit).await;
            assert_eq!((&seqs, order.as_str()), (expected, "seq"), "{params:?} limit {limit}");
        }
    }
    // A time window is answered in event-time order (then seq), every page without duplicates or gaps.
    let mut in_window: Vec<(i64, u64)> = stored
        .iter()
        .filter_map(|(seq, _, f, _)| f.event_time_ms.filter(|t| (t0..t1).contains(t)).map(|t| (t, *seq)))
        .collect();
    in_window.sort();
    let in_window: Vec<u64> = in_window.into_iter().map(|(_, s)| s).collect();
    assert!(in_window.len() >= 4, "{in_window:?}");
    for limit in [1, 3, 1000] {
        let (seqs, order) = auditor.walk(&[("since", &t0s), ("until", &t1s)], limit).await;
        assert_eq!((&seqs, order.as_str()), (&in_window, "event_time"), "limit {limit}");
    }

    // A result carries the entry, the leaf hash, the normalized fields and, on request, the exact body.
    let v = auditor.page(&query(&[("actor", ALICE), ("body", "true"), ("limit", "1")])).await;
    let e = &v["events"][0];
    let ledger = auditor.view(0).await;
    assert_eq!(
        (&e["seq"], &e["entry"], &e["leaf_hash"]),
        (&json!(0), &ledger["entry"], &ledger["leaf_hash"])
    );
    assert_eq!(e["entry_fields"]["source"], "keycloak");
    assert_eq!((&e["fields"]["source"], &e["fields"]["realm"]), (&json!("keycloak"), &json!(REALM)));
    assert_eq!(e["body"].as_str().unwrap().as_bytes(), &stored[0].3[..]);
    assert_eq!(e["erased"], false);
    assert!(v["next_cursor"].is_string());
    let v = auditor.page(&query(&[("actor", ALICE)])).await;
    assert!(v["events"][0].get("body").is_none(), "no body unless asked for");
    assert!(v["next_cursor"].is_null());

    // Bad parameters: 400 with a stable code naming the parameter; nothing is logged for them.
    let other_cursor = {
        let v = auditor.page(&query(&[("actor", ALICE), ("limit", "1")])).await;
        v["next_cursor"].as_str().unwrap().to_string()
    };
    let before = a.stored_events().await;
    for (q, code, param) in [
        ("limit=1001".to_string(), "limit_too_large", "limit"),
        ("limit=0".into(), "bad_parameter", "limit"),
        ("outcome=maybe".into(), "bad_parameter", "outcome"),
        ("since=yesterday".into(), "bad_parameter", "since"),
        ("since=2024-11-23T11:00:00Z&until=2024-11-23T10:00:00Z".into(), "bad_parameter", "until"),
        ("actor=".into(), "bad_parameter", "actor"),
        ("actr=alice".into(), "bad_parameter", "actr"),
        ("type=A&type=B".into(), "bad_parameter", "type"),
        ("body=yes".into(), "bad_parameter", "body"),
        ("cursor=not-a-cursor".into(), "bad_parameter", "cursor"),
        (format!("actor=bob&cursor={other_cursor}"), "bad_parameter", "cursor"),
    ] {
        let r = a.audit_get(&format!("/v1/events?{q}")).await;
        let v = r.json();
        assert_eq!(
            (r.status, v["code"].as_str(), v["detail"]["parameter"].as_str()),
            (400, Some(code), Some(param)),
            "{q}"
        );
    }
    let r = a.audit_get("/v1/events?limit=1001").await.json();
    assert_eq!(r["detail"]["max"], 1000);
    // A producer may not search.
    let r = producer.get("/v1/events?actor=x").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")));
    assert_eq!(a.stored_events().await, before, "refused requests leave no record");

    // Every answered search and view left exactly one record, right after the data it read, in the order
    // asked.
    let logged = auditor.audit_seqs.clone();
    assert_eq!(logged, (n..n + logged.len() as u64).collect::<Vec<_>>());
    assert_eq!(a.stored_events().await, n + logged.len() as u64);
    let record = auditor.view(logged[0]).await;
    let logged = auditor.audit_seqs.clone();
    assert_eq!(
        (&record["entry_fields"]["producer"], &record["entry_fields"]["auth"]),
        (&json!("anchorlog"), &json!("internal"))
    );
    let body: Value = serde_json::from_str(record["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"type": "anchorlog.audit_access", "principal": "auditor-1", "endpoint": "GET /v1/events",
               "parameters": {"actor": ALICE, "limit": "1"}, "result_count": 1})
    );
    // The records are searchable like any event: by type, and by the auditor as actor.
    a.wait_indexed().await;
    let (seqs, _) = auditor.walk(&[("type", "anchorlog.audit_access"), ("actor", "auditor-1")], 1000).await;
    assert_eq!(seqs, logged);
    a.wait_indexed().await;
    let (seqs, _) = auditor.walk(&[("source", "anchorlog")], 1000).await;
    assert_eq!(seqs, auditor.audit_seqs[..auditor.audit_seqs.len() - 1].to_vec());

    // Receipts and exports read event bodies too: each leaves one record naming what was read.
    let head = a.wait_for_head(n).await;
    let count = a.stored_events().await;
    let r = a.audit_get("/v1/events/3/receipt").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = a.audit_get(&format!("/v1/export?from_height=0&to_height={}", head["height"])).await;
    assert_eq!(r.status, 200);
    assert_eq!(a.stored_events().await, count + 2);
    let a = &a;
    let body = move |seq: u64| async move {
        let ev = a.audit_get(&format!("/v1/events/{seq}")).await.json();
        serde_json::from_str::<Value>(ev["body"].as_str().unwrap()).unwrap()
    };
    assert_eq!(
        body(count).await,
        json!({"type": "anchorlog.audit_access", "principal": "auditor-1",
               "endpoint": "GET /v1/events/{seq}/receipt", "parameters": {"seq": "3"}, "result_count": 1})
    );
    let export = body(count + 1).await;
    assert_eq!(export["endpoint"], "GET /v1/export");
    assert_eq!(export["parameters"]["from_height"], "0");
    assert_eq!(export["result_count"], head["tree_size"]);
}
