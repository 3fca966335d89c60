//! Auditor toolkit end to end on real parts (SoftHSM signer, rustls mTLS, the real binary): proofs from the
//! API checked with the pure Merkle module against signed heads, erasure and its authorization, the streamed
//! export verified by our verifier and by the independent Python one.

mod kit;

use anchorlog_core::merkle;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kit::{post_concurrently, Appliance, Options};
use std::time::Duration;

fn h(v: &serde_json::Value) -> [u8; 32] {
    <[u8; 32]>::try_from(B64.decode(v.as_str().unwrap()).unwrap()).unwrap()
}

fn hs(v: &serde_json::Value) -> Vec<[u8; 32]> {
    v.as_array().unwrap().iter().map(h).collect()
}

/// Every signed head, by height.
async fn heads(a: &Appliance) -> Vec<serde_json::Value> {
    let latest = a.audit_get("/v1/heads/latest").await.json();
    let mut out = Vec::new();
    for height in 0..=latest["height"].as_u64().unwrap() {
        out.push(a.audit_get(&format!("/v1/heads/{height}")).await.json());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_erasure_and_streamed_export_on_a_live_appliance() {
    let mut a = Appliance::start_with(Options { seal_max_events: 7, ..Options::default() });
    post_concurrently(&a, 40, 4).await;
    a.wait_for_head(40).await;
    let heads = heads(&a).await;
    assert!(heads.len() >= 7, "blocks of at most 7 events: {}", heads.len());
    let mut auditor = a.connect("auditor").await;

    // Inclusion: every seq against every signed head that covers it, checked with the pure Merkle module.
    for head in &heads {
        let size = head["tree_size"].as_u64().unwrap();
        let root = h(&head["root"]);
        for seq in 0..size {
            let r = auditor.get(&format!("/v1/proofs/inclusion?seq={seq}&tree_size={size}")).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let p = r.json();
            assert_eq!(h(&p["root"]), root);
            let leaf = h(&p["leaf_hash"]);
            merkle::verify_inclusion(seq, size, &leaf, &hs(&p["proof"]), &root).unwrap();
            // A wrong proof fails: the same proof for the neighbouring leaf.
            if size > 1 {
                let other = (seq + 1) % size;
                assert!(merkle::verify_inclusion(other, size, &leaf, &hs(&p["proof"]), &root).is_err());
            }
        }
    }
    // Consistency between every pair of signed heads.
    for old in &heads {
        for new in heads.iter().filter(|n| n["height"].as_u64() >= old["height"].as_u64()) {
            let (m, n) = (old["tree_size"].as_u64().unwrap(), new["tree_size"].as_u64().unwrap());
            let r = auditor.get(&format!("/v1/proofs/consistency?from={m}&to={n}")).await.unwrap().json();
            merkle::verify_consistency(m, n, &h(&old["root"]), &h(&new["root"]), &hs(&r["proof"])).unwrap();
        }
    }
    let latest = heads.last().unwrap()["tree_size"].as_u64().unwrap();
    let r = auditor.get(&format!("/v1/proofs/inclusion?seq=0&tree_size={}", latest + 1)).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (422, Some("tree_size_not_signed")));
    assert_eq!(r.json()["detail"]["latest_signed_tree_size"], latest);
    let r = auditor.get("/v1/proofs/inclusion?seq=9&tree_size=9").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (422, Some("seq_out_of_range")));
    let r = auditor.get("/v1/proofs/inclusion?seq=1").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("bad_parameter")));
    let r = auditor.get("/v1/proofs/consistency?from=9&to=3").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("bad_parameter")));
    let r = a.connect("producer").await.get("/v1/proofs/consistency?from=1&to=3").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")));

    // Erasure: a producer or an auditor cannot erase; an admin can, once, and it is itself logged.
    let body = br#"{"seq": 5, "reason": "GDPR art. 17 request #42"}"#;
    for who in ["producer", "auditor"] {
        let r = a.connect(who).await.post_json("/v1/admin/erasures", body).await.unwrap();
        assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")), "{who}");
    }
    let before = a.audit_get("/v1/events/5").await.json();
    assert_eq!(before["erased"], false);
    // The read itself is on record (PCI DSS 10.2.1.3): seq 40; the erasure's record follows it.
    assert_eq!(before["audit_seq"], 40);
    let mut admin = a.connect("admin").await;
    let r = admin.post_json("/v1/admin/erasures", body).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!((e["seq"].as_u64(), e["erasure_seq"].as_u64()), (Some(5), Some(41)));
    assert_eq!(e["erased_by"], "admin-1");
    let r = admin.post_json("/v1/admin/erasures", body).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("already_erased")));
    let r = admin.post_json("/v1/admin/erasures", br#"{"seq": 999, "reason": "x"}"#).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("not_found")));
    let r = admin.post_json("/v1/admin/erasures", br#"{"seq": 6, "reason": "  "}"#).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (422, Some("bad_field")));
    let r = admin.post_json("/v1/admin/erasures", br#"{"seq": 6}"#).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("invalid_json")));
    let after = a.audit_get("/v1/events/5").await.json();
    assert_eq!(
        (after["erased"].as_bool(), &after["body"], &after["salt"]),
        (Some(true), &serde_json::Value::Null, &serde_json::Value::Null)
    );
    assert_eq!(after["entry"], before["entry"], "the entry (and so the leaf) is unchanged");
    assert_eq!(after["erasure"]["reason"], "GDPR art. 17 request #42");
    assert_eq!(after["erasure"]["erasure_seq"], 41);
    let logged = a.audit_get("/v1/events/41").await.json();
    assert_eq!(logged["entry_fields"]["producer"], "anchorlog");
    assert_eq!(logged["entry_fields"]["auth"], "internal");
    let logged_body: serde_json::Value = serde_json::from_str(logged["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        logged_body,
        serde_json::json!({"type": "anchorlog.erasure", "erased_seq": 5, "erased_by": "admin-1",
                           "reason": "GDPR art. 17 request #42"})
    );
    // Proofs for the erased event still verify against a head sealed after the erasure.
    let head = a.wait_for_head(42).await;
    let size = head["tree_size"].as_u64().unwrap();
    let p = auditor.get(&format!("/v1/proofs/inclusion?seq=5&tree_size={size}")).await.unwrap().json();
    merkle::verify_inclusion(5, size, &h(&before["leaf_hash"]), &hs(&p["proof"]), &h(&head["root"])).unwrap();

    // The receipt of the erased event is self-contained and verifies offline with the CLI.
    let events_before_reads = a.stored_events().await;
    let r = auditor.get("/v1/events/5/receipt").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let receipt = r.json();
    assert_eq!((receipt["body"].is_null(), receipt["erasure"]["erasure_seq"].as_u64()), (true, Some(41)));
    let file = a.path("receipt.json");
    std::fs::write(&file, &r.body).unwrap();
    let out =
        a.anchorlog(&["verify-receipt", file.to_str().unwrap(), "--key", a.key_pem().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let r = auditor.get("/v1/events/100000/receipt").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("not_found")));

    // The streamed export verifies with our verifier and with the independent Python one.
    let to = head["height"].as_u64().unwrap();
    for from in [0, 2] {
        let r = auditor.get(&format!("/v1/export?from_height={from}&to_height={to}")).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type.as_deref(), Some("application/x-tar"));
        let tar = a.path(&format!("export-{from}.tar"));
        std::fs::write(&tar, &r.body).unwrap();
        let out =
            a.anchorlog(&["verify", tar.to_str().unwrap(), "--key", a.key_pem().to_str().unwrap(), "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{report}");
        // The bundle holds the events after head `from - 1`: the erased seq 5 is among them if that head
        // covers at most 5 events (block sizes depend on seal timing, up to 7 events).
        let first_seq = if from == 0 { 0 } else { heads[from as usize - 1]["tree_size"].as_u64().unwrap() };
        assert_eq!(report["report"]["erased"], u64::from(first_seq <= 5), "bundle from seq {first_seq}");
        // The erasure's own record (seq 41) and the reads before it are in every such bundle.
        assert_eq!(report["report"]["appliance"]["erasures"], 1, "{report}");
        assert!(report["report"]["appliance"]["audit_access"].as_u64().unwrap() >= 1, "{report}");
        let (code, stdout, _) = kit::bundle::python_verify(&tar, &a.key_pem(), &[]);
        assert_eq!(code, 0, "{stdout}");
    }
    let r = auditor.get(&format!("/v1/export?from_height=0&to_height={}", to + 100)).await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("not_found")));
    let r = a.connect("producer").await.get("/v1/export?from_height=0&to_height=1").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")));
    // PCI DSS 10.2.1.3: the receipt and the two exports each left one audit-access record; the refusals none.
    assert_eq!(a.stored_events().await, events_before_reads + 3);

    // After shutdown: verify --db is green with the erasure, and the CLI export matches the API's bundle.
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["erased"], 1);
    let cli_tar = a.path("cli.tar");
    a.export_from_db(to, &cli_tar);
    let verify_cli = |p: &std::path::Path| {
        a.anchorlog(&["verify", p.to_str().unwrap(), "--key", a.key_pem().to_str().unwrap()]).status.code()
    };
    assert_eq!(verify_cli(&cli_tar), Some(0));
    // Exit codes: 3 for a tampered bundle, 1 for an unreadable one.
    let mut bytes = std::fs::read(&cli_tar).unwrap();
    let at = bytes.windows(4).rposition(|w| w == b"body").unwrap();
    // Flip one character of the last body's base64 (inside entries.jsonl).
    let pos = at + 8;
    bytes[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
    let bad = a.path("bad.tar");
    std::fs::write(&bad, &bytes).unwrap();
    assert_eq!(verify_cli(&bad), Some(3));
    let junk = a.path("junk.tar");
    std::fs::write(&junk, b"not a tar").unwrap();
    assert_eq!(verify_cli(&junk), Some(1));
}

/// A hung appliance (or network) fails the timer-driven audit within `--timeout` instead of stalling it forever,
/// which would silence the monitor's alarm: here a socket that accepts connections and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_hung_appliance_fails_within_its_timeout() {
    let a = Appliance::start_with(Options::default());
    // The kernel completes the TCP handshake from the backlog; nobody ever reads the TLS ClientHello.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://localhost:{}", silent.local_addr().unwrap().port());
    let t = std::time::Instant::now();
    let (code, out) = a.audit_as(Some(&url), &a.key_pem(), &["--timeout", "2s"]);
    let took = t.elapsed();
    assert_eq!((code, out["outcome"].as_str()), (1, Some("failed")), "{out}");
    assert_eq!(
        out["error"].as_str().unwrap(),
        format!("no complete answer from {url} within 2 s: the appliance or the network hangs (state file unchanged)")
    );
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(30), "{took:?}");
    assert!(!a.path("audit-state.json").exists(), "a failed run writes no state");
    // The real appliance still audits with the same arguments.
    let (code, out) = a.audit(&["--timeout", "30s"]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("first_seen")), "{out}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_catches_a_database_rollback_and_a_fork() {
    let mut a = Appliance::start_with(Options { seal_max_events: 5, ..Options::default() });
    post_concurrently(&a, 10, 2).await;
    a.wait_for_head(10).await;
    let (code, out) = a.audit(&[]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("first_seen")), "{out}");
    assert!(a.sigterm().success());
    std::fs::copy(a.db_path(), a.path("older.db")).unwrap();

    a.spawn().unwrap();
    post_concurrently(&a, 10, 2).await;
    a.wait_for_head(20).await;
    let (code, out) = a.audit(&[]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("advanced")), "{out}");
    let (code, out) = a.audit(&[]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("unchanged")), "{out}");
    let seen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.path("audit-state.json")).unwrap()).unwrap();

    // Someone restores the older copy of the database: every head it serves is validly signed, and the
    // appliance's own verification passes — only the auditor's stored state can tell.
    assert!(a.sigterm().success());
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(a.path(&format!("anchorlog.db{ext}")));
    }
    std::fs::copy(a.path("older.db"), a.db_path()).unwrap();
    a.spawn().unwrap();
    let (code, out) = a.audit(&[]);
    assert_eq!(code, 4, "rollback: {out}");
    assert!(out["error"].as_str().unwrap().starts_with("rollback: "), "{out}");

    // The rolled-back log grows past the height seen before: a different history, a fork.
    post_concurrently(&a, 25, 2).await;
    let latest = a.wait_for_head(35).await;
    assert!(latest["height"].as_u64() > seen["height"].as_u64(), "{latest} vs {seen}");
    let (code, out) = a.audit(&[]);
    assert_eq!(code, 5, "fork: {out}");
    assert!(
        out["error"].as_str().unwrap().starts_with(&format!("fork at height {}", seen["height"])),
        "{out}"
    );
    // The state still holds the last trusted head.
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.path("audit-state.json")).unwrap()).unwrap();
    assert_eq!(after, seen);
}
