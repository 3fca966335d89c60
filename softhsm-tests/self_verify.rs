//! Continuous self-verification and alerts (issue 12, point 6) on real parts — SoftHSM, the real binary, a
//! real SQLite file edited behind the appliance's back, the openssl TSA, and a webhook receiver here: a
//! tampered row turns `/readyz` to 503 and raises an alert within one interval, recovery turns both back; a
//! restart resumes from the last self-verified head and the background pass still finds older tampering.
//! The start-up timing bench at the end is `#[ignore]`d (docs/PERFORMANCE.md, "Start-up").

mod kit;

use kit::eventually;
use kit::tsa::LocalTsa;
use kit::{post_concurrently, write_secret, Appliance, Options};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One request a webhook receiver got: headers (lower-case names), body, when.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver on 127.0.0.1: answers 200 to every POST and keeps it.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = got.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let headers: Vec<(String, String)> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    seen.lock().unwrap().push(Received { headers, body, at: Instant::now() });
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Receiver { port, got }
    }

    /// The `[[alert]]` entry for this receiver, signing with the key in `secret_file`.
    fn config(&self, secret_file: &std::path::Path) -> String {
        format!(
            "[[alert]]\nurl = \"http://127.0.0.1:{}/hooks/anchorlog\"\nhmac_secret_file = \"{}\"\ntimeout_ms = 2000\n",
            self.port,
            secret_file.display()
        )
    }

    /// The first message of `kind` in `state`, waiting up to `secs`.
    async fn wait_for(&self, kind: &str, state: &str, secs: u64) -> Received {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let found = self
                .got
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.json()["type"] == kind && r.json()["state"] == state)
                .cloned();
            if let Some(r) = found {
                return r;
            }
            assert!(Instant::now() < deadline, "no {kind}/{state} alert within {secs} s: {:?}", self.all());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().iter().map(Received::json).collect()
    }
}

const SECRET: &[u8] = b"alert-hmac-key-for-tests";

/// HMAC-SHA256 of `body` under [`SECRET`], as the receiver checks it.
fn expected_signature(body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Replaces the body of event `seq` in the database file, as root on the host does (the trigger dropped first).
fn set_body(a: &Appliance, seq: u64, body: &[u8]) {
    let c = rusqlite::Connection::open(a.db_path()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch("DROP TRIGGER IF EXISTS events_no_update").unwrap();
    c.execute("UPDATE events SET body = ?1 WHERE seq = ?2", rusqlite::params![body, seq as i64]).unwrap();
}

fn body_of(a: &Appliance, seq: u64) -> Vec<u8> {
    let c = anchorlog::store::open_reader(&a.db_path()).unwrap();
    anchorlog::store::event(&c, seq).unwrap().unwrap().body.unwrap()
}

/// `/readyz` as the auditor: (status, JSON).
/// `/readyz` as far as self-verification goes: 503 with that reason as `{code, message, detail}` (`detail`: the
/// failure as `self_verify.failure` reports it: seq or height, scope, …), else 200 with the answer. The tests
/// here set `[alerting] min_free_disk_percent = 100` to see the disk alert fire too, which also makes
/// `disk_nearly_full` a standing reason: it is left out of the judgement.
async fn readyz(a: &Appliance) -> (u16, Value) {
    let r = a.audit_get("/readyz").await;
    let v = r.json();
    let reasons: Vec<Value> = v["reasons"].as_array().cloned().unwrap_or_default();
    let others: Vec<&Value> = reasons.iter().filter(|r| r["code"] != "disk_nearly_full").collect();
    match others.iter().find(|r| r["code"] == "self_verification_failed") {
        Some(reason) => (
            503,
            json!({"code": reason["code"], "message": reason["message"], "detail": v["self_verify"]["failure"]}),
        ),
        None if others.is_empty() => (200, v),
        None => (r.status, v),
    }
}

/// The appliance's self-verification records, read from the file.
fn self_verify_records(a: &Appliance) -> Vec<(u64, Value)> {
    a.own_records().into_iter().filter(|(_, b)| b["type"] == "anchorlog.self_verify").collect()
}

/// Waits until a self-verification record exists and a head covers it; returns it.
async fn sealed_self_verify_record(a: &Appliance) -> (u64, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = self_verify_records(a).last().cloned() {
            a.wait_for_head(r.0 + 1).await;
            return r;
        }
        assert!(Instant::now() < deadline, "no self-verification record within 30 s: {}", a.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_row_turns_readyz_503_and_alerts_within_one_interval_and_recovery_turns_both_back() {
    let receiver = Receiver::start().await;
    let mut a = Appliance::prepare(Options { record_appliance_events: true, ..Options::default() });
    let secret = a.path("alert.key");
    write_secret(&secret, SECRET);
    // Every pass is a full one (1 s), so a row far behind the last self-verified head is re-read each second.
    a.options.extra_config = format!(
        "[self_verify]\ninterval_s = 1\nfull_every_s = 1\n[alerting]\nmin_free_disk_percent = 100\n\
         disk_check_interval_s = 1\n{}",
        receiver.config(&secret)
    );
    a.spawn().unwrap();
    assert_eq!(post_concurrently(&a, 20, 2).await.len(), 20);
    let (seq, record) = sealed_self_verify_record(&a).await;
    let (status, ready) = readyz(&a).await;
    assert_eq!((status, &ready["self_verify"]["status"]), (200, &json!("ok")), "{ready}");
    assert!(seq > 5 && record["height"].as_u64().is_some(), "{record}");

    // Root edits a producer's event far behind the last self-verified head, through a second connection.
    let original = body_of(&a, 3);
    let tampered_at = Instant::now();
    set_body(&a, 3, br#"{"type":"LOGIN","user":"mallory"}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, answer) = loop {
        let (status, v) = readyz(&a).await;
        if status == 503 {
            break (status, v);
        }
        assert!(Instant::now() < deadline, "/readyz not 503 within 20 s: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let to_503 = tampered_at.elapsed();
    assert_eq!((status, &answer["code"]), (503, &json!("self_verification_failed")), "{answer}");
    assert_eq!(
        (&answer["detail"]["seq"], &answer["detail"]["scope"]),
        (&json!(3), &json!("full")),
        "{answer}"
    );
    let message = answer["message"].as_str().unwrap();
    assert!(
        message
            .contains("event seq 3: body does not match the entry's payload_sha256 (the body was altered)"),
        "{message}"
    );
    // The webhook got the alert, signed with the shared key.
    let alert = receiver.wait_for("verification_failed", "firing", 20).await;
    let to_alert = alert.at.duration_since(tampered_at);
    assert_eq!(alert.header("x-anchorlog-signature"), Some(expected_signature(&alert.body).as_str()));
    let v = alert.json();
    assert_eq!(
        (&v["severity"], &v["appliance"], &v["detail"]["seq"], &v["detail"]["scope"]),
        (&json!("critical"), &json!("anchorlog.test/e2e"), &json!(3), &json!("full")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("event seq 3: body does not match"), "{v}");
    eprintln!("tamper → /readyz 503 in {to_503:?}; → alert received in {to_alert:?} (interval 1 s)");
    // One interval (1 s) for the next pass to start, plus the pass and the delivery; generous for a loaded
    // machine (the verifier runs at idle priority).
    assert!(to_alert < Duration::from_secs(10), "{to_alert:?}");
    // Ingest continues while the log fails verification.
    assert_eq!(post_concurrently(&a, 1, 1).await.len(), 1);
    let metrics = String::from_utf8(a.audit_get("/metrics").await.body).unwrap();
    assert!(metrics.contains("\nanchorlog_self_verify_ok 0\n"), "{metrics}");

    // The row restored: the next pass succeeds, /readyz is 200 again, and the alert is resolved.
    set_body(&a, 3, &original);
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&a).await.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz not 200 again within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resolved = receiver.wait_for("verification_failed", "resolved", 20).await;
    assert_eq!(resolved.header("x-anchorlog-signature"), Some(expected_signature(&resolved.body).as_str()));
    let firing: Vec<Value> = receiver
        .all()
        .into_iter()
        .filter(|v| v["type"] == "verification_failed" && v["state"] == "firing")
        .collect();
    assert_eq!(firing.len(), 1, "one alert for the ongoing failure, not one per pass: {firing:?}");
    // The disk check (threshold 100 %: always "nearly full") alerts too, once.
    let disk = receiver.wait_for("disk_nearly_full", "firing", 20).await.json();
    assert_eq!((&disk["severity"], &disk["detail"]["threshold_percent"]), (&json!("warning"), &json!(100)));
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert!(report["report"]["appliance"]["self_verifications"].as_u64().unwrap() >= 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_last_self_verified_head_and_the_background_pass_finds_older_tampering() {
    let receiver = Receiver::start().await;
    let mut a = Appliance::prepare(Options { record_appliance_events: true, ..Options::default() });
    let secret = a.path("alert.key");
    write_secret(&secret, SECRET);
    a.options.extra_config = format!("[self_verify]\ninterval_s = 1\n{}", receiver.config(&secret));
    a.spawn().unwrap();
    post_concurrently(&a, 30, 2).await;
    // A new log had no head at start: the first pass walks it all; the next ones continue from there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while self_verify_records(&a).len() < 2 {
        assert!(Instant::now() < deadline, "two self-verification records within 30 s: {}", a.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = self_verify_records(&a);
    let (first, (seq, record)) = (&records[0].1, records[1].clone());
    a.wait_for_head(seq + 1).await;
    assert_eq!((&first["scope"], &first["from_height"]), (&json!("full"), &json!(null)), "{first}");
    assert_eq!(
        (&record["scope"], &record["from_height"]),
        (&json!("incremental"), &first["height"]),
        "{record}"
    );
    // The record names the head it verified, exactly as stored.
    let height = record["height"].as_u64().unwrap();
    let head = a.audit_get(&format!("/v1/heads/{height}")).await.json();
    assert_eq!(
        (&record["tree_size"], &record["root"]),
        (&head["tree_size"], &head["root"]),
        "{record} {head}"
    );
    let source_id: String = rusqlite::Connection::open(a.db_path())
        .unwrap()
        .query_row("SELECT source_id FROM events WHERE seq = ?1", [seq as i64], |r| r.get(0))
        .unwrap();
    assert_eq!(source_id, format!("self_verify:{height:020}:incremental"));
    assert!(a.sigterm().success());
    let last = self_verify_records(&a).last().cloned().unwrap();
    let last_height = last.1["height"].as_u64().unwrap();

    // Root edits an event far behind the last self-verified head while the appliance is stopped.
    let original = body_of(&a, 2);
    set_body(&a, 2, br#"{"type":"LOGIN","user":"mallory"}"#);
    let (code, v) = a.verify(&a.db_path());
    assert_eq!((code, &v["seq"]), (3, &json!(2)), "the offline verifier names it: {v}");
    // The start resumes after the last self-verified head, so it serves …
    let started = Instant::now();
    a.spawn().unwrap();
    eprintln!("start to listening: {:?}", started.elapsed());
    let log = a.server_log();
    assert!(log.contains("start-up verification resumed from the last self-verified head"), "{log}");
    assert!(log.contains(&format!("from_height={last_height}")), "{log}");
    // … and the full pass it starts in the background finds the row, turns /readyz 503 and alerts.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let (status, v) = readyz(&a).await;
        if status == 503 {
            break v;
        }
        assert!(Instant::now() < deadline, "/readyz not 503 within 30 s: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((&answer["code"], &answer["detail"]["seq"]), (&json!("self_verification_failed"), &json!(2)));
    let alert = receiver.wait_for("verification_failed", "firing", 20).await.json();
    assert_eq!(alert["detail"]["seq"], 2, "{alert}");
    assert!(a.sigterm().success());

    // Tampering after the last self-verified head is what the start itself walks: refused, exit 3.
    set_body(&a, 2, &original);
    let after = self_verify_records(&a).last().unwrap().0 + 1;
    set_body(&a, after, b"{}");
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3"), "{err}");
    assert!(err.contains(&format!("event seq {after}: body does not match")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_self_verification_record_in_the_unsealed_tail_does_not_move_the_start() {
    let origin = kit::log_builder::ORIGIN.to_string();
    let mut a = Appliance::prepare(Options { record_appliance_events: true, origin, ..Options::default() });
    a.options.extra_config = "[self_verify]\ninterval_s = 1\n".into();
    a.spawn().unwrap();
    post_concurrently(&a, 5, 1).await;
    let (genuine, _) = sealed_self_verify_record(&a).await;
    post_concurrently(&a, 5, 1).await;
    assert!(a.sigterm().success());
    // Root alters a producer's event after the genuine record's head …
    let victim = {
        let c = anchorlog::store::open_reader(&a.db_path()).unwrap();
        c.query_row(
            "SELECT min(seq) FROM events WHERE seq > ?1 AND producer = 'producer-1'",
            [genuine as i64],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    };
    set_body(&a, victim, br#"{"type":"LOGIN","user":"mallory"}"#);
    // … and appends a perfect self-verification record naming the last head, to make the start skip it.
    let last = {
        let c = anchorlog::store::open_reader(&a.db_path()).unwrap();
        anchorlog::store::last_head(&c).unwrap().unwrap()
    };
    let soft = kit::log_builder::TestKey::new(1);
    let mut b = kit::log_builder::LogBuilder::create(&a.db_path(), &soft);
    let size = anchorlog::store::event_count(&b.conn).unwrap();
    b.frontier = anchorlog::store::tree::load_frontier(&b.conn, size).unwrap();
    use base64::Engine as _;
    let body = json!({"type": "anchorlog.self_verify", "scope": "full", "from_height": null, "height": last.height,
                      "tree_size": last.tree_size, "root": base64::engine::general_purpose::STANDARD.encode(last.root),
                      "events": last.tree_size, "duration_ms": 1});
    let id = format!("self_verify:{:020}:full", last.height);
    let forged = b.appliance_record(body.to_string().as_bytes(), anchorlog::store::now_ns(), Some(&id));
    drop(b);
    // Not under any signature: the start resumes from the genuine record and finds the altered row.
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3"), "{err}");
    assert!(
        err.contains(&format!("event seq {victim}: body does not match")),
        "forged record at {forged}: {err}"
    );
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_start_on_a_tpm_continues_the_counter_and_still_refuses_an_older_copy() {
    let options =
        Options { signer: kit::TestSigner::Tpm, record_appliance_events: true, ..Options::default() };
    let mut a = Appliance::prepare(options);
    a.options.extra_config = "[self_verify]\ninterval_s = 1\n".into();
    a.spawn().unwrap();
    post_concurrently(&a, 5, 1).await;
    sealed_self_verify_record(&a).await;
    assert!(a.sigterm().success());
    let older = a.copy_db("older.db");
    // A resumed start: the chain and the counter continue from the stored heads.
    a.spawn().unwrap();
    let log = a.server_log();
    assert!(log.contains("start-up verification resumed from the last self-verified head"), "{log}");
    assert!(log.contains("TPM counter check passed"), "{log}");
    post_concurrently(&a, 3, 1).await;
    let before = self_verify_records(&a).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while self_verify_records(&a).len() <= before {
        assert!(Instant::now() < deadline, "a new self-verification record within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    // The older copy — which has its own self-verification record — is still refused by the counter.
    a.restore_db(&older);
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3: "), "{err}");
    assert!(err.contains("the database was rolled back or truncated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tsa_outage_past_the_threshold_is_alerted_once_and_resolved_when_tokens_flow_again() {
    let receiver = Receiver::start().await;
    let mut tsa = LocalTsa::create(&[]); // not started: nothing listens on its port
    let mut a = Appliance::prepare(Options { seal_interval_ms: 200, ..Options::default() });
    let secret = a.path("alert.key");
    write_secret(&secret, SECRET);
    a.options.extra_config = format!(
        "{}{}[alerting]\noutage_threshold_s = 1\n{}",
        tsa.config_entry(1000),
        kit::tsa::fast_retries(),
        receiver.config(&secret)
    );
    a.spawn().unwrap();
    post_concurrently(&a, 3, 1).await;
    let alert = receiver.wait_for("timestamping_outage", "firing", 30).await.json();
    assert_eq!(
        (&alert["severity"], &alert["detail"]["component"]),
        (&json!("warning"), &json!("timestamping"))
    );
    assert!(alert["message"].as_str().unwrap().starts_with("timestamping has been failing for "), "{alert}");
    tsa.start();
    eventually(30, "back-fill after the TSA starts", async || {
        a.audit_get("/readyz").await.json()["untimestamped_heads"] == 0
    })
    .await;
    let resolved = receiver.wait_for("timestamping_outage", "resolved", 20).await;
    assert_eq!(resolved.header("x-anchorlog-signature"), Some(expected_signature(&resolved.body).as_str()));
    let firing =
        receiver.all().into_iter().filter(|v| v["type"] == "timestamping_outage" && v["state"] == "firing");
    assert_eq!(firing.count(), 1);
}

/// Start-up time of `anchorlog serve` on large logs that carry a self-verification record near their end
/// (docs/PERFORMANCE.md, "Start-up"): from spawning the process to its listening line, with the rest verified in
/// the background; and that a row tampered with far behind the record is still found by that background pass.
/// Ignored by default; run in release: `cargo test --release --test self-verify bench_startup -- --ignored
/// --nocapture`. `ANCHORLOG_BENCH_STARTUP_EVENTS=3000000,30000000` (the default) sets the sizes; each log is
/// built in a temporary directory (about 430 bytes per event) and removed after its run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_startup_time_on_large_logs() {
    let sizes = std::env::var("ANCHORLOG_BENCH_STARTUP_EVENTS").unwrap_or_else(|_| "3000000,30000000".into());
    for n in sizes.split(',').map(|v| v.trim().parse::<u64>().unwrap()) {
        startup_on_a_log_of(n).await;
    }
}

async fn startup_on_a_log_of(n: u64) {
    const BLOCK: u64 = 10_000;
    let origin = kit::log_builder::ORIGIN.to_string();
    let mut a = Appliance::prepare(Options { record_appliance_events: true, origin, ..Options::default() });
    // No search database to rebuild (it is derived data a real appliance keeps in step); the full pass is
    // what runs in the background.
    a.options.extra_config = "[search]\nenabled = false\n".into();
    let built = Instant::now();
    eprintln!("building {n} events in {}", a.db_path().display());
    {
        let settings = a.pkcs11_in_process();
        let pin = zeroize::Zeroizing::new(kit::USER_PIN.to_string());
        let mut hsm = anchorlog::signer::pkcs11::Pkcs11Signer::open(&settings, &pin).unwrap();
        let key = anchorlog_core::key::PublicKey::from_spki_der(hsm.public_key_spki_der()).unwrap();
        let soft = kit::log_builder::TestKey::new(1);
        let mut b = kit::log_builder::LogBuilder::create(&a.db_path(), &soft);
        b.conn.execute_batch("PRAGMA synchronous=OFF").unwrap();
        b.time_ms = anchorlog::store::now_ms() - (n / BLOCK + 10) as i64 * 1000;
        let mut sign =
            |b: &mut kit::log_builder::LogBuilder| b.head_signed_with(&key.key_id, |m| hsm.sign(m).unwrap());
        sign(&mut b);
        let start = anchorlog::ledger::internal::start_body(
            "bench",
            "bench",
            &key.key_id,
            anchorlog::ledger::internal::PreviousRun::NewLog,
        );
        b.appliance_event(start.to_string().as_bytes());
        let mut last = None;
        while b.frontier.size() + BLOCK <= n {
            b.events(BLOCK);
            last = Some(sign(&mut b));
        }
        // The appliance's own record of a pass that verified the head before the last block, sealed by it.
        let h = last.unwrap();
        let body = json!({"type": "anchorlog.self_verify", "scope": "full", "from_height": null, "height": h.height,
                          "tree_size": h.tree_size, "root": base64::engine::general_purpose::STANDARD.encode(h.root),
                          "events": h.tree_size, "duration_ms": 0});
        let id = format!("self_verify:{:020}:full", h.height);
        b.appliance_record(body.to_string().as_bytes(), anchorlog::store::now_ns(), Some(&id));
        b.events(BLOCK - 1);
        sign(&mut b);
        b.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    use base64::Engine as _;
    let size_mb = std::fs::metadata(a.db_path()).unwrap().len() >> 20;
    eprintln!("built {n} events ({size_mb} MB) in {:.1} s", built.elapsed().as_secs_f64());
    // Page cache as after a reboot would be the honest cold start; we cannot drop caches as a test, so the
    // figure is warm-cache (stated in docs/PERFORMANCE.md).
    let t = Instant::now();
    a.spawn().unwrap();
    let ready = t.elapsed();
    eprintln!(
        "RESULT start-up with a self-verified head near the end: {n} events, listening after {:.2} s",
        ready.as_secs_f64()
    );
    let log = a.server_log();
    assert!(log.contains("start-up verification resumed from the last self-verified head"), "{log}");
    assert!(ready < Duration::from_secs(10), "{ready:?}");
    // The background full pass runs from genesis at idle priority: time it, then tamper and find it.
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let (status, v) = readyz(&a).await;
        assert_eq!(status, 200, "{v}");
        if v["self_verify"]["whole_log_verified_since_start"] == true {
            eprintln!(
                "RESULT background full pass: {n} events in {:.1} s (record: {})",
                t.elapsed().as_secs_f64(),
                v["self_verify"]["last_full_ok"]
            );
            break;
        }
        assert!(Instant::now() < deadline, "no full pass within an hour");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(a.sigterm().success());
    set_body(&a, 5, br#"{"type":"LOGIN","user":"mallory"}"#);
    let t = Instant::now();
    a.spawn().unwrap();
    let ready = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let v = loop {
        let (status, v) = readyz(&a).await;
        if status == 503 {
            break v;
        }
        assert!(Instant::now() < deadline, "tampering not found within an hour");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(v["detail"]["seq"], 5, "{v}");
    eprintln!(
        "RESULT tampered seq 5 of {n}: listening after {:.2} s, found by the background pass {:.1} s after the start",
        ready.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    a.kill();
}

/// The value of the unlabelled sample `name` in the auditor's `/metrics`.
async fn metric(a: &Appliance, name: &str) -> Option<f64> {
    let text = String::from_utf8(a.audit_get("/metrics").await.body).unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Key rotation (docs/FORMAT.md §20) and self-verification together: a start resuming from a record under the old
/// key walks across the rotation; the passes after it (incremental from a head before it, full from the first
/// key) succeed; a start resuming from a record under the new key's head takes that head's key from the database,
/// and the first key alone still verifies the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_verification_resumes_across_a_key_rotation() {
    let mut a = Appliance::prepare(Options { record_appliance_events: true, ..Options::default() });
    a.options.extra_config = "[self_verify]\ninterval_s = 1\nfull_every_s = 1\n".into();
    a.spawn().unwrap();
    let first = a.path("first.pem");
    std::fs::copy(a.key_pem(), &first).unwrap();
    post_concurrently(&a, 5, 1).await;
    let (before, _) = sealed_self_verify_record(&a).await;
    assert!(a.sigterm().success());
    let out = a.keys_rotate("test", &["--new-key-label", "head-signer-2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.options.key_label = "head-signer-2".into();
    a.spawn().unwrap();
    let log = a.server_log();
    assert!(log.contains("start-up verification resumed from the last self-verified head"), "{log}");
    let rotation =
        a.own_records().into_iter().find(|(_, b)| b["type"] == "anchorlog.key_rotation").unwrap().0;
    assert!(rotation > before);
    post_concurrently(&a, 5, 1).await;
    // Passes after the rotation: a record that names a head signed by the new key; none failed. (The first
    // pass after the restart may still name the rotation head, which the old key signed.)
    let new_key = {
        a.wait_for_head(rotation + 2).await;
        let c = anchorlog::store::open_reader(&a.db_path()).unwrap();
        anchorlog::store::last_head(&c).unwrap().unwrap().key_id
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = anchorlog::store::open_reader(&a.db_path()).unwrap();
        let newest =
            self_verify_records(&a).into_iter().filter(|(s, _)| *s > rotation).map(|(_, b)| b).next_back();
        if let Some(named) = newest.and_then(|b| b["height"].as_u64()) {
            let key = anchorlog::store::head(&c, named).unwrap().unwrap().key_id;
            if key == new_key {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no self-verification under the new key: {}", a.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&a, "anchorlog_self_verify_passes_failed_total").await,
        Some(0.0),
        "{}",
        a.server_log()
    );
    assert_eq!(metric(&a, "anchorlog_self_verify_ok").await, Some(1.0));
    assert!(a.sigterm().success());
    // A start resuming from the newest record: under the key the database recorded for the head it names, which
    // is the new key.
    a.spawn().unwrap();
    let log = a.server_log();
    assert!(log.contains("start-up verification resumed from the last self-verified head"), "{log}");
    let resumed = log.lines().rfind(|l| l.contains("start-up verification resumed")).unwrap();
    let from: u64 = resumed
        .split("from_height=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no from_height in {resumed}"));
    let c = anchorlog::store::open_reader(&a.db_path()).unwrap();
    assert_eq!(
        anchorlog::store::head(&c, from).unwrap().unwrap().key_id,
        new_key,
        "resumed under the new key: {log}"
    );
    post_concurrently(&a, 2, 1).await;
    assert!(a.sigterm().success());
    let out =
        a.anchorlog(&["verify", "--db", a.db_path().to_str().unwrap(), "--key", first.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
