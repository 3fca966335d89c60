//! The insider matrix (issue 10): root on the host edits the SQLite file, drops triggers, forges erasures,
//! re-signs a rewritten tail through the real HSM with fresh tokens from the real TSA, swaps in a log of
//! another origin, freezes the log, deletes search rows — and each is caught, at the exact seq or height,
//! by `anchorlog verify` (database and bundle), `verify-receipt`, the independent Python verifier, the
//! database itself, the monitor or the appliance's start-up. Every case runs on a real SoftHSM log.

mod kit;

use anchorlog::store;
use anchorlog_core::entry::Entry;
use anchorlog_core::head::Checkpoint;
use anchorlog_core::merkle::{self, Frontier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kit::bundle::{python_verify, tar_members, write_tar};
use kit::tsa::LocalTsa;
use kit::{post_concurrently, Appliance, Options};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A copy of the (stopped) appliance's database under `name`, edited by `edit` as root would: a plain SQLite
/// connection, triggers dropped where the edit needs it.
fn tampered(a: &Appliance, name: &str, edit: impl FnOnce(&rusqlite::Connection)) -> PathBuf {
    let copy = a.path(name);
    std::fs::copy(a.db_path(), &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    edit(&conn);
    drop(conn);
    copy
}

/// Asserts a failed CLI verification naming `kind` (`seq` / `height`) `at`, with `text` in its message.
fn assert_fails_at(result: (i32, Value), kind: &str, at: u64, text: &str) {
    let (code, v) = result;
    assert_eq!(code, 3, "{v}");
    assert_eq!(v[kind], at, "{v}");
    assert!(v["failure"].as_str().unwrap_or_default().contains(text), "{v}");
}

fn verify_db(a: &Appliance, db: &Path, extra: &[&str]) -> (i32, Value) {
    let key = a.key_pem();
    let mut args = vec!["verify", "--db", db.to_str().unwrap(), "--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    a.cli_json(&args)
}

fn verify_bundle(a: &Appliance, tar: &Path, extra: &[&str]) -> (i32, Value) {
    let key = a.key_pem();
    let mut args = vec!["verify", tar.to_str().unwrap(), "--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    a.cli_json(&args)
}

fn verify_receipt(a: &Appliance, receipt: &Value, key: &Path, extra: &[&str]) -> (i32, Value) {
    let file = a.path("receipt-under-test.json");
    std::fs::write(&file, receipt.to_string()).unwrap();
    let mut args = vec!["verify-receipt", file.to_str().unwrap(), "--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    a.cli_json(&args)
}

async fn save_export(a: &Appliance, to: u64, name: &str) -> PathBuf {
    let r = a.audit_get(&format!("/v1/export?from_height=0&to_height={to}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let tar = a.path(name);
    std::fs::write(&tar, &r.body).unwrap();
    tar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_erasures_fail_everywhere_and_a_genuine_one_verifies_everywhere() {
    let mut a = Appliance::start();
    post_concurrently(&a, 12, 2).await;
    let before = a.wait_for_head(12).await["height"].as_u64().unwrap();
    let mut admin = a.connect("admin").await;
    let r =
        admin.post_json("/v1/admin/erasures", br#"{"seq": 3, "reason": "GDPR art. 17 #1"}"#).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let record = r.json()["erasure_seq"].as_u64().unwrap();
    // The appliance's own records are not erasable.
    let body = format!(r#"{{"seq": {record}, "reason": "hide the erasure"}}"#);
    let r = admin.post_json("/v1/admin/erasures", body.as_bytes()).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (422, Some("appliance_record")), "{}", r.json());
    let last = a.wait_for_head(record + 1).await["height"].as_u64().unwrap();

    // Genuine: the receipt of the erased event, a bundle ending before its record (the record travels in
    // erasure-records.jsonl with its proofs) and one holding it; ours and the Python verifier accept them.
    let receipt = a.audit_get("/v1/events/3/receipt").await.json();
    assert_eq!(receipt["erasure_record"]["seq"], record, "{receipt}");
    assert_eq!(verify_receipt(&a, &receipt, &a.key_pem(), &[]).0, 0);
    let genuine_receipt_7 = a.audit_get("/v1/events/7/receipt").await.json();
    for (to, name) in [(before, "early.tar"), (last, "all.tar")] {
        let tar = save_export(&a, to, name).await;
        let carried = tar_members(&tar).iter().any(|(n, _)| n == "erasure-records.jsonl");
        assert_eq!(carried, to == before, "{name}");
        let (code, v) = verify_bundle(&a, &tar, &[]);
        assert_eq!((code, &v["report"]["erased"]), (0, &json!(1)), "{v}");
        assert_eq!(python_verify(&tar, &a.key_pem(), &[]).0, 0, "{name}");
    }
    let all = a.path("all.tar");
    assert!(a.sigterm().success());
    // The database refuses an erasures row written by hand, even naming the genuine record or a later event.
    {
        let conn = rusqlite::Connection::open(a.db_path()).unwrap();
        for e in [record, 9] {
            let err = conn
                .execute(
                    "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (7, ?1, 'x', 'y', 0)",
                    [e as i64],
                )
                .unwrap_err()
                .to_string();
            assert!(err.contains("an erasure row is only written with its erasure record"), "{err}");
        }
    }
    let (code, v) = verify_db(&a, &a.db_path(), &[]);
    assert_eq!((code, &v["report"]["erased"]), (0, &json!(1)), "{v}");

    // Forged in the database: seq 7's payload removed, the erasures row naming a producer's event (9), a seq
    // past the log, or an erasure record appended behind the appliance's back (never covered by a head).
    let forge = |name: &str, erasure_seq: u64, append_record: bool| {
        tampered(&a, name, |c| {
            c.execute_batch("DROP TRIGGER erasures_valid; DROP TRIGGER events_no_update;").unwrap();
            let seq = if append_record {
                append_raw(c, br#"{"type":"anchorlog.erasure","erased_seq":7}"#)
            } else {
                erasure_seq
            };
            c.execute(
                "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (7, ?1, 'admin-1', 'x', 0)",
                [seq as i64],
            )
            .unwrap();
            c.execute("UPDATE events SET body = NULL, salt = NULL WHERE seq = 7", []).unwrap();
        })
    };
    let at_producer_event = forge("forged-9.db", 9, false);
    assert_fails_at(
        verify_db(&a, &at_producer_event, &[]),
        "seq",
        7,
        "event seq 9 is not the appliance's erasure record",
    );
    assert_fails_at(
        verify_db(&a, &forge("forged-far.db", 100_000, false), &[]),
        "seq",
        7,
        "(event seq 100000) is not there",
    );
    assert_fails_at(
        verify_db(&a, &forge("forged-tail.db", 0, true), &[]),
        "seq",
        7,
        "is not covered by a signed head yet",
    );
    // A bundle exported from the forged database fails the same way, in ours and in Python.
    let forged_tar = a.path("forged.tar");
    a.export_db(&at_producer_event, last, &forged_tar);
    assert_fails_at(verify_bundle(&a, &forged_tar, &[]), "seq", 7, "not the appliance's erasure record");
    let (code, line, _) = python_verify(&forged_tar, &a.key_pem(), &[]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("FAILED: event seq 7:"), "{line}");
    // A bundle edited directly: seq 7's line erased and pointed at seq 3's genuine record.
    let mut members = tar_members(&all);
    for (name, data) in members.iter_mut().filter(|(n, _)| n == "entries.jsonl") {
        let text = String::from_utf8(std::mem::take(data)).unwrap();
        let lines: Vec<String> = text
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                if v["seq"] == 7 {
                    v["salt"] = Value::Null;
                    v["body"] = Value::Null;
                    v["erasure"] = json!({"seq": 7, "erasure_seq": record, "erased_by": "admin-1", "reason": "x", "erased_at_ms": 0});
                }
                v.to_string()
            })
            .collect();
        *data = format!("{}\n", lines.join("\n")).into_bytes();
        assert_eq!(name, "entries.jsonl");
    }
    let edited = a.path("edited.tar");
    write_tar(&edited, &members);
    assert_fails_at(verify_bundle(&a, &edited, &[]), "seq", 7, "is not the appliance's erasure record");
    let (code, line, _) = python_verify(&edited, &a.key_pem(), &[]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("FAILED: event seq 7:"), "{line}");

    // A receipt of seq 7 turned into an "erased" one: without a record, with seq 3's record, with seq 3's
    // record relabelled for 7.
    let mut forged = genuine_receipt_7.clone();
    forged["salt"] = Value::Null;
    forged["body"] = Value::Null;
    forged["erasure"] =
        json!({"seq": 7, "erasure_seq": record, "erased_by": "admin-1", "reason": "x", "erased_at_ms": 0});
    assert_fails_at(verify_receipt(&a, &forged, &a.key_pem(), &[]), "seq", 7, "is not there");
    forged["erasure_record"] = receipt["erasure_record"].clone();
    assert_fails_at(
        verify_receipt(&a, &forged, &a.key_pem(), &[]),
        "seq",
        7,
        "is not the appliance's erasure record",
    );
    forged["erasure_record"]["erased_seq"] = json!(7);
    assert_fails_at(
        verify_receipt(&a, &forged, &a.key_pem(), &[]),
        "seq",
        7,
        "is not the appliance's erasure record",
    );

    // And the appliance refuses to start on the forged database.
    std::fs::copy(&at_producer_event, a.db_path()).unwrap();
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3"), "{err}");
    assert!(
        err.contains(
            "event seq 7: its payload is erased, but event seq 9 is not the appliance's erasure record"
        ),
        "{err}"
    );
}

/// Appends a row as root would (a valid canonical entry of the appliance's own source and its tree nodes, no
/// signature): what an attacker can add to the unsealed tail of a stopped appliance's database.
fn append_raw(c: &rusqlite::Connection, body: &[u8]) -> u64 {
    let seq = store::event_count(c).unwrap();
    let salt = [9u8; 32];
    let entry = Entry {
        seq,
        received_at_ns: store::now_ns(),
        producer: "anchorlog".into(),
        source: "anchorlog".into(),
        auth: anchorlog_core::entry::AuthMethod::Internal,
        format: "anchorlog".into(),
        source_id: None,
        payload_sha256: anchorlog_core::entry::payload_digest(&salt, body),
    }
    .to_canonical_json();
    let leaf = merkle::leaf_hash(&entry);
    let row = store::EventRow {
        seq,
        received_at_ns: 0,
        producer: "anchorlog",
        source: "anchorlog",
        format: "anchorlog",
        source_id: None,
        entry: &entry,
        leaf_hash: &leaf,
        salt: &salt,
        body,
    };
    store::insert_event(c, &row).unwrap();
    let mut frontier = store::tree::load_frontier(c, seq).unwrap();
    let mut nodes = Vec::new();
    frontier.push_with(leaf, |s, l, h| {
        if l > 1 {
            nodes.push((s, l, *h))
        }
    });
    for (s, l, h) in nodes {
        store::tree::insert_node(c, s, l, &h).unwrap();
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_appended_after_a_clean_stop_are_caught_and_refused_at_start() {
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    post_concurrently(&a, 5, 1).await;
    assert!(a.sigterm().success());
    let (code, v) = verify_db(&a, &a.db_path(), &[]);
    assert_eq!(code, 0, "{v}");
    let stop_seq = a.own_records().last().map(|(s, _)| *s).unwrap();
    let appended = tampered(&a, "appended.db", |c| {
        append_raw(c, br#"{"type":"anchorlog.erasure","erased_seq":2}"#);
    });
    assert_fails_at(
        verify_db(&a, &appended, &[]),
        "seq",
        stop_seq + 1,
        &format!("written after the clean stop recorded at seq {stop_seq}"),
    );
    std::fs::copy(&appended, a.db_path()).unwrap();
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_cannot_post_appliance_record_types_in_any_format() {
    let sources = format!(
        "{}[[source]]\nname = \"json\"\nformat = \"json\"\nprincipals = [\"producer-1\"]\n",
        kit::IDP_SOURCES
    );
    let a = Appliance::start_with(Options {
        extra_config: sources,
        record_appliance_events: true,
        ..Options::default()
    });
    let fixture = |name: &str| -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let mut keycloak = fixture("keycloak-user-event.json");
    keycloak["type"] = json!("anchorlog.start");
    let mut p2 = fixture("keycloak-p2-webhook-login.json");
    p2["type"] = json!("access.anchorlog.stop");
    let mut okta = fixture("okta-event-hook.json");
    okta["data"]["events"][0]["eventType"] = json!("anchorlog.erasure");
    let mut auth0 = fixture("auth0-object-s.json");
    auth0["data"]["type"] = json!("anchorlog.outage");
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/events", json!({"type": "anchorlog.start", "user": "mallory"}), "type"),
        ("/v1/events", json!([{"type": "LOGIN"}, {"event_type": "Anchorlog.Stop"}]), "event_type"),
        ("/v1/events", json!({"eventType": "ANCHORLOG.erasure"}), "eventType"),
        ("/v1/events", json!({"type": "LOGIN", "action": "anchorlog.audit_access"}), "action"),
        ("/v1/events", json!({"event": "anchorlog.access_denied"}), "event"),
        ("/v1/sources/json/events", json!({"type": "anchorlog.outage"}), "type"),
        ("/v1/sources/keycloak/events", keycloak, "type"),
        ("/v1/sources/keycloak/events", p2, "type"),
        ("/v1/sources/okta/events", okta, "eventType"),
        ("/v1/sources/auth0/events", auth0, "data.type"),
    ];
    let stored = a.stored_events().await;
    let mut producer = a.connect("producer").await;
    for (path, body, field) in &cases {
        let r = producer.post_json(path, body.to_string().as_bytes()).await.unwrap();
        let v = r.json();
        assert_eq!((r.status, v["code"].as_str()), (422, Some("reserved_type")), "{path} {body}: {v}");
        assert_eq!(v["detail"]["field"], *field, "{v}");
        assert!(v["message"].as_str().unwrap().contains("reserved for the appliance's own records"), "{v}");
    }
    assert_eq!(a.stored_events().await, stored, "nothing stored");
    // A type that merely mentions the name is fine.
    let r = producer.post_json("/v1/events", br#"{"type":"LOGIN","app":"anchorlog.example"}"#).await.unwrap();
    assert_eq!(r.status, 200);
    // Search by an appliance type finds the appliance's records only, even when asked for another source.
    a.wait_indexed().await;
    let r = a.audit_get("/v1/events?type=anchorlog.start").await.json();
    let hits = r["events"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{r}");
    assert_eq!(
        (&hits[0]["entry_fields"]["producer"], &hits[0]["entry_fields"]["auth"]),
        (&json!("anchorlog"), &json!("internal"))
    );
    let r = a.audit_get("/v1/events?type=anchorlog.start&source=events").await.json();
    assert_eq!(r["count"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_another_origin_signed_by_the_same_key_fails() {
    let mut a = Appliance::start();
    post_concurrently(&a, 4, 1).await;
    a.wait_for_head(4).await;
    assert!(a.sigterm().success());
    std::fs::rename(a.db_path(), a.path("e2e.db")).unwrap();
    let _ = std::fs::remove_file(store::search_path(&a.db_path()));
    // The same HSM key, now signing a log with another origin.
    a.options.origin = "anchorlog.test/other".into();
    a.spawn().unwrap();
    post_concurrently(&a, 4, 1).await;
    let last = a.wait_for_head(4).await["height"].as_u64().unwrap();
    let receipt = a.audit_get("/v1/events/1/receipt").await.json();
    let tar = save_export(&a, last, "other.tar").await;
    assert!(a.sigterm().success());
    let cert = a.path("keys/signer.crt");
    let other = a.db_path();
    // The certificate names the origin it was issued for (keys export): every verifier pins it.
    let cert_s = cert.to_str().unwrap();
    let (code, v) = a.cli_json(&["verify", "--db", other.to_str().unwrap(), "--key", cert_s]);
    assert_fails_at(
        (code, v),
        "height",
        0,
        "origin \"anchorlog.test/other\" is not the expected \"anchorlog.test/e2e\"",
    );
    let (code, v) = a.cli_json(&["verify", tar.to_str().unwrap(), "--key", cert_s]);
    assert_fails_at((code, v), "height", 0, "is not the expected \"anchorlog.test/e2e\"");
    assert_fails_at(
        verify_receipt(&a, &receipt, &cert, &[]),
        "height",
        receipt["head"]["height"].as_u64().unwrap(),
        "is not the expected",
    );
    // With the bare public key, --origin pins it; without, the report names the log's own origin.
    assert_fails_at(
        verify_db(&a, &other, &["--origin", "anchorlog.test/e2e"]),
        "height",
        0,
        "is not the expected",
    );
    let (code, v) = verify_db(&a, &other, &[]);
    assert_eq!(
        (code, &v["report"]["origin"], &v["origin_from"]),
        (0, &json!("anchorlog.test/other"), &json!("the log itself")),
        "{v}"
    );
    let (code, line, _) = python_verify(&tar, &a.key_pem(), &["--origin", "anchorlog.test/e2e"]);
    assert_eq!(code, 3, "{line}");
    // The genuine log verifies with the certificate, pinned to it.
    let (code, v) = a.cli_json(&["verify", "--db", a.path("e2e.db").to_str().unwrap(), "--key", cert_s]);
    assert_eq!(
        (code, &v["report"]["origin"], &v["origin_from"]),
        (0, &json!("anchorlog.test/e2e"), &json!("the key's certificate")),
        "{v}"
    );
}

/// A fresh RFC 3161 token over `text` from the test TSA, asked for with openssl and curl.
fn fresh_token(a: &Appliance, tsa: &LocalTsa, text: &[u8]) -> Vec<u8> {
    let (data, query, reply) = (a.path("resign.txt"), a.path("resign.tsq"), a.path("resign.tsr"));
    std::fs::write(&data, text).unwrap();
    let q = Command::new("openssl")
        .args(["ts", "-query", "-sha256", "-cert", "-data"])
        .arg(&data)
        .arg("-out")
        .arg(&query)
        .output()
        .unwrap();
    assert!(q.status.success());
    let r = Command::new("curl")
        .args(["-sf", "-H", "Content-Type: application/timestamp-query", "--data-binary"])
        .arg(format!("@{}", query.display()))
        .arg("-o")
        .arg(&reply)
        .arg(tsa.url())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    std::fs::read(&reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_tail_resigned_by_the_hsm_with_fresh_tokens_fails_on_time() {
    let tsa = LocalTsa::start_new(&[]);
    let mut a = Appliance::start_with(Options {
        extra_config: format!("{}{}", tsa.config_entry(5000), kit::tsa::fast_retries()),
        ..Options::default()
    });
    for _ in 0..4 {
        post_concurrently(&a, 3, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last = a.wait_for_head(12).await["height"].as_u64().unwrap();
    kit::eventually(20, "every head timestamped", async || {
        a.audit_get(&format!("/v1/heads/{last}")).await.json()["timestamp"].is_string()
    })
    .await;
    assert!(a.sigterm().success());
    let ca = tsa.ca_pem();
    let ca_s = ca.to_str().unwrap();
    let strict = ["--tsa-ca", ca_s, "--require-timestamps", "--max-timestamp-delay", "2"];
    let (code, v) = verify_db(&a, &a.db_path(), &strict);
    assert_eq!(code, 0, "the genuine log passes even a 2 s limit: {v}");
    assert!(v["timestamps"]["max_delay"]["delay_ms"].as_i64().unwrap() < 2000, "{v}");
    // Let the original seal times age, then rewrite history from head k on: event 5 removed, later events
    // renumbered, heads rebuilt with their original (now backdated) seal times, re-signed through the HSM and
    // stamped afresh by the same TSA. Every signature and token is genuine.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let conn = store::open_reader(&a.db_path()).unwrap();
    let heads = store::all_heads(&conn).unwrap();
    let k = heads.iter().find(|h| h.tree_size > 5).unwrap().height - 1;
    drop(conn);
    let rewritten = tampered(&a, "rewritten.db", |c| rewrite_tail(&a, &tsa, c, &heads, k));
    assert_fails_at(
        verify_db(&a, &rewritten, &strict),
        "height",
        k + 1,
        "after the head's seal time, more than the allowed 2 s",
    );
    // The hardware and the TSA vouch for every byte: without the time check it verifies.
    let (code, v) = verify_db(&a, &rewritten, &["--tsa-ca", ca_s, "--require-timestamps"]);
    assert_eq!(code, 0, "{v}");
    let tar = a.path("rewritten.tar");
    let last = store::last_head(&store::open_reader(&rewritten).unwrap()).unwrap().unwrap().height;
    a.export_db(&rewritten, last, &tar);
    assert_fails_at(verify_bundle(&a, &tar, &strict), "height", k + 1, "more than the allowed 2 s");
    let (code, line, _) =
        python_verify(&tar, &a.key_pem(), &["--tsa-ca", ca_s, "--max-timestamp-delay", "2"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with(&format!("FAILED: head height {}:", k + 1)), "{line}");
}

/// Rewrites heads after `k` (see the test): drops the tail, re-appends the events after seq 5 without it, and
/// re-seals heads k+1.. with their original seal times, HSM signatures and fresh tokens.
fn rewrite_tail(
    a: &Appliance,
    tsa: &LocalTsa,
    c: &rusqlite::Connection,
    heads: &[anchorlog_core::stored::StoredHead],
    k: u64,
) {
    let keep = heads[k as usize].tree_size;
    let old: Vec<anchorlog_core::stored::StoredEvent> = (keep..heads.last().unwrap().tree_size)
        .map(|s| store::event(c, s).unwrap().unwrap())
        .filter(|e| e.seq != 5)
        .collect();
    c.execute_batch(
        "DROP TRIGGER events_no_delete; DROP TRIGGER heads_no_delete; DROP TRIGGER timestamps_no_delete; \
         DROP TRIGGER nodes_no_delete;",
    )
    .unwrap();
    c.execute("DELETE FROM timestamps WHERE height > ?1", [k as i64]).unwrap();
    c.execute("DELETE FROM heads WHERE height > ?1", [k as i64]).unwrap();
    c.execute("DELETE FROM events WHERE seq >= ?1", [keep as i64]).unwrap();
    c.execute("DELETE FROM nodes WHERE ((idx + 1) << level) > ?1", [keep as i64]).unwrap();
    let mut frontier: Frontier = store::tree::load_frontier(c, keep).unwrap();
    let mut prev = Checkpoint::text_hash(&heads[k as usize].checkpoint);
    let per_head = old.len().div_ceil(heads.len() - k as usize - 1);
    for (i, chunk) in old.chunks(per_head.max(1)).enumerate() {
        for ev in chunk {
            let mut entry = Entry::parse(&ev.entry).unwrap();
            entry.seq = frontier.size();
            let bytes = entry.to_canonical_json();
            let leaf = merkle::leaf_hash(&bytes);
            store::insert_event(
                c,
                &store::EventRow {
                    seq: entry.seq,
                    received_at_ns: entry.received_at_ns,
                    producer: &entry.producer,
                    source: &entry.source,
                    format: &entry.format,
                    source_id: entry.source_id.as_deref(),
                    entry: &bytes,
                    leaf_hash: &leaf,
                    salt: ev.salt.as_deref().unwrap(),
                    body: ev.body.as_deref().unwrap(),
                },
            )
            .unwrap();
            let mut nodes = Vec::new();
            frontier.push_with(leaf, |s, l, h| {
                if l > 1 {
                    nodes.push((s, l, *h))
                }
            });
            for (s, l, h) in nodes {
                store::tree::insert_node(c, s, l, &h).unwrap();
            }
        }
        let original = &heads[k as usize + 1 + i];
        let cp = Checkpoint {
            origin: "anchorlog.test/e2e".into(),
            tree_size: frontier.size(),
            root: frontier.root(),
            height: original.height,
            prev,
            time_ms: original.sealed_at_ms,
            counter: None,
        };
        let text = cp.to_text().unwrap();
        let head = anchorlog_core::stored::StoredHead {
            height: cp.height,
            tree_size: cp.tree_size,
            root: cp.root,
            checkpoint: text.clone(),
            signature: a.pkcs11_tool_sign(&["--label", "head-signer"], text.as_bytes()),
            key_id: original.key_id.clone(),
            sealed_at_ms: cp.time_ms,
        };
        store::insert_head(c, &head).unwrap();
        let token = fresh_token(a, tsa, text.as_bytes());
        let anchors =
            anchorlog_core::tsa::TrustAnchors::from_pem(&std::fs::read(tsa.ca_pem()).unwrap()).unwrap();
        let v = anchorlog_core::verify::timestamps::check_token(
            &text,
            cp.time_ms,
            &token,
            &anchors,
            Duration::from_secs(300),
        )
        .unwrap();
        let gen_ms = v.gen_time.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        c.execute(
            "INSERT INTO timestamps (height, response, gen_time_ms, gen_time, tsa_url, stored_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![cp.height as i64, token, gen_ms, v.gen_time_rfc3339, tsa.url(), store::now_ms()],
        )
        .unwrap();
        prev = Checkpoint::text_hash(&text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_fails_on_a_log_that_stopped_advancing() {
    let a = Appliance::start_with(Options { heartbeat_interval_s: 60, ..Options::default() });
    post_concurrently(&a, 2, 1).await;
    a.wait_for_head(2).await;
    let (code, v) = a.audit(&["--max-age", "5m"]);
    assert_eq!((code, &v["outcome"]), (0, &json!("first_seen")), "{v}");
    // Nothing new is sealed for a minute: after 3 s the latest head is older than 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, v) = a.audit(&["--max-age", "2s"]);
    assert_eq!((code, &v["outcome"], &v["exit_code"]), (7, &json!("failed"), &json!(7)), "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("stale: the latest head"), "{v}");
    let (code, v) = a.audit(&["--max-age", "5m"]);
    assert_eq!((code, &v["outcome"]), (0, &json!("unchanged")), "{v}");
    let (code, v) = a.audit(&["--origin", "anchorlog.test/other"]);
    assert_eq!(code, 5, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_rows_deleted_by_root_are_restored_at_start() {
    let mut a = Appliance::start();
    let mut producer = a.connect("producer").await;
    for user in ["alice", "bob", "carol", "alice"] {
        let body = format!(r#"{{"type":"LOGIN","user":"{user}","ip":"192.0.2.7"}}"#);
        assert_eq!(producer.post_json("/v1/events", body.as_bytes()).await.unwrap().status, 200);
    }
    a.wait_indexed().await;
    assert!(a.sigterm().success());
    let search_db = store::search_path(&a.db_path());
    {
        let c = rusqlite::Connection::open(&search_db).unwrap();
        let err = c.execute("DELETE FROM event_fields WHERE seq = 0", []).unwrap_err().to_string();
        assert!(err.contains("search rows are removed only by the indexer"), "{err}");
        c.execute_batch(
            "DROP TRIGGER event_fields_no_delete; DROP TRIGGER actor_index_no_delete; DROP TRIGGER ip_index_no_delete;
             DELETE FROM event_fields WHERE seq IN (0, 1);
             DELETE FROM actor_index WHERE seq = 3;
             DELETE FROM ip_index;",
        )
        .unwrap();
    }
    a.spawn().unwrap();
    a.wait_indexed().await;
    // The indexer repairs in its own thread after the start: poll the search database itself (a search through
    // the API would append an audit record per try) until the deleted rows are back.
    kit::eventually(20, "the deleted search rows are re-derived", async || {
        let c = store::open_search_reader(&search_db).unwrap();
        let rows: i64 = c.query_row("SELECT count(*) FROM event_fields", [], |r| r.get(0)).unwrap();
        let ips: i64 = c.query_row("SELECT count(*) FROM ip_index", [], |r| r.get(0)).unwrap();
        rows == 4 && ips == 4
    })
    .await;
    let r = a.audit_get("/v1/events?actor=alice").await.json();
    let seqs: Vec<u64> = r["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 3], "{r}");
    // Every hit carries its seq and leaf hash: a client asks for its proof against a signed head.
    for e in r["events"].as_array().unwrap() {
        assert_eq!(B64.decode(e["leaf_hash"].as_str().unwrap()).unwrap().len(), 32);
    }
    let r = a.audit_get("/v1/events?actor=bob").await.json();
    assert_eq!(r["count"], 1, "{r}");
    let r = a.audit_get("/v1/events?ip=192.0.2.7").await.json();
    assert_eq!(r["count"], 4, "{r}");
    assert!(a.server_log().contains("search rows are missing below the indexed end"), "{}", a.server_log());
}
