//! The auditor's console (issue 16) in headless Chromium (Debian `chromium`, `chromium-driver`): real
//! evidence from a SoftHSM-signed, TSA-timestamped log, verified by the page's WebAssembly verifier, opened
//! from disk (offline mode) and served by the appliance over mTLS with the auditor's certificate (live mode).
//!
//! The console must be built first (`console/build.sh`, which `.ci/run` runs): the tests read it from
//! `$ANCHORLOG_CONSOLE_DIR`, default `target/console-web`. Screenshots of every outcome are written to
//! `target/tmp/console-screenshots/` (CI's artefacts, and the README's pictures).

mod kit;

use kit::browser::Browser;
use kit::log_builder::{LogBuilder, TestKey};
use kit::tsa::{fast_retries, LocalTsa};
use kit::{Appliance, Options};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Events in the offline test's bundle (the acceptance: 100,000).
const BUNDLE_EVENTS: u64 = 100_000;
/// Events per NDJSON batch posted.
const BATCH: u64 = 1_000;

/// The built console.
fn console_dir() -> PathBuf {
    let dir = std::env::var_os("ANCHORLOG_CONSOLE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("console-web")
    });
    assert!(
        dir.join("engine.js").is_file(),
        "the console is not built in {}: run console/build.sh (or set ANCHORLOG_CONSOLE_DIR)",
        dir.display()
    );
    dir
}

/// A P-256 public key (PEM) of a key the appliance never had.
fn other_public_key(dir: &Path) -> PathBuf {
    let key = dir.join("other.key");
    let pem = dir.join("other.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
        .arg(&key)
        .status()
        .expect("openssl")
        .success()
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&pem)
            .status()
            .expect("openssl")
            .success();
    assert!(ok, "openssl made the other key");
    pem
}

/// Posts `BUNDLE_EVENTS` events in NDJSON batches as the producer.
async fn post_events(a: &Appliance) {
    let mut conn = a.connect("producer").await;
    for b in 0..BUNDLE_EVENTS / BATCH {
        let mut body = String::with_capacity(BATCH as usize * 80);
        for i in 0..BATCH {
            let n = b * BATCH + i;
            body.push_str(&format!(
                "{{\"type\":\"LOGIN\",\"userId\":\"user-{}\",\"ipAddress\":\"10.0.{}.{}\",\"n\":{n}}}\n",
                n % 977,
                n % 250,
                n % 200
            ));
        }
        let r = conn
            .request("POST", "/v1/events", &[("content-type", "application/x-ndjson")], body.into_bytes())
            .await
            .expect("post");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

/// Waits for a head covering `events` events that carries its RFC 3161 token; returns it.
async fn wait_for_timestamped_head(a: &Appliance, events: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = a.audit_get("/v1/heads/latest").await;
        if r.status == 200 {
            let h = r.json();
            if h["tree_size"].as_u64().unwrap_or(0) >= events && h["timestamp"].is_string() {
                return h;
            }
        }
        assert!(Instant::now() < deadline, "no timestamped head over {events} events within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The page opened from disk with `query` (e.g. `?checkers=2`, or none), verifier ready.
fn open_offline_at(b: &Browser, query: &str) {
    b.goto(&format!("file://{}/index.html{query}", console_dir().display()));
    b.wait_for("document.body.dataset.engine === 'ready'", Duration::from_secs(30));
}

/// What the page concluded: (outcome, failure kind, failure at, the result's text).
struct Outcome {
    outcome: String,
    kind: String,
    at: String,
    text: String,
}

/// Picks the files, presses Verify and waits for the result.
fn verify_offline(
    b: &Browser,
    evidence: &Path,
    key: &Path,
    tsa_ca: Option<&Path>,
    within: Duration,
) -> Outcome {
    verify_offline_at(b, "", evidence, key, tsa_ca, within)
}

/// [`verify_offline`] on the page opened with `query`.
fn verify_offline_at(
    b: &Browser,
    query: &str,
    evidence: &Path,
    key: &Path,
    tsa_ca: Option<&Path>,
    within: Duration,
) -> Outcome {
    open_offline_at(b, query);
    b.send_keys("#evidence", evidence.to_str().unwrap());
    b.send_keys("#key-file", key.to_str().unwrap());
    if let Some(ca) = tsa_ca {
        b.click("details summary");
        b.send_keys("#tsa-file", ca.to_str().unwrap());
    }
    b.click("#verify-button");
    outcome(b, within)
}

/// Waits for the result of the Verify pressed and reads it.
fn outcome(b: &Browser, within: Duration) -> Outcome {
    b.wait_for("document.getElementById('result').dataset.outcome", within);
    let v = b.script(
        "const r = document.getElementById('result'); \
         return [r.dataset.outcome, r.dataset.failureKind || '', r.dataset.failureAt || '', r.innerText];",
        json!([]),
    );
    let s = |i: usize| v[i].as_str().unwrap_or_default().to_string();
    Outcome { outcome: s(0), kind: s(1), at: s(2), text: s(3) }
}

/// Flips the low bit of one character of the receipt's entry (a digit of its JSON): the receipt stays valid
/// JSON, its event no longer hashes to the leaf.
fn flip_a_bit_of_the_entry(receipt: &Value) -> Value {
    let mut r = receipt.clone();
    let entry = r["entry"].as_str().expect("entry").to_string();
    let at = entry.find("\"seq\":").expect("entry has seq") + "\"seq\":".len();
    let mut bytes = entry.into_bytes();
    bytes[at] ^= 1;
    r["entry"] = Value::String(String::from_utf8(bytes).expect("still text"));
    r
}

/// Edits one event's body in the bundle in place (one base64 character of event `seq`), keeping every size.
fn edit_a_body(bundle: &Path, seq: u64, out: &Path) {
    edit_bodies(bundle, &[seq], out);
}

/// [`edit_a_body`] of each of `seqs`.
fn edit_bodies(bundle: &Path, seqs: &[u64], out: &Path) {
    let mut bytes = std::fs::read(bundle).expect("bundle");
    for seq in seqs {
        let marker = format!("\"seq\":{seq},");
        let line = find(&bytes, marker.as_bytes(), 0).expect("the event is in the bundle");
        let body = find(&bytes, b"\"body\":\"", line).expect("it has a body") + b"\"body\":\"".len();
        // The first base64 character of the body ('e' of eyJ… for a JSON object): another base64 character.
        bytes[body + 4] = if bytes[body + 4] == b'A' { b'B' } else { b'A' };
    }
    std::fs::write(out, bytes).expect("edited bundle");
}

/// `n` with thousands separators, as the page writes it (`toLocaleString("en")`).
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_verifies_a_real_receipt_and_a_100k_bundle_and_names_each_failure() {
    // Fail first, and clearly, if the console is not built.
    console_dir();
    let tsa = LocalTsa::start_new(&[]);
    let mut a = Appliance::start_with(Options {
        seal_interval_ms: 200,
        extra_config: format!("{}{}", tsa.config_entry(5_000), fast_retries()),
        ..Options::default()
    });
    post_events(&a).await;
    let head = wait_for_timestamped_head(&a, BUNDLE_EVENTS).await;
    let height = head["height"].as_u64().unwrap();
    let work = a.dir.path().join("console");
    std::fs::create_dir_all(&work).unwrap();
    let receipt_seq = 4_242;
    let receipt = a.audit_get(&format!("/v1/events/{receipt_seq}/receipt")).await;
    assert_eq!(receipt.status, 200, "{}", String::from_utf8_lossy(&receipt.body));
    let receipt = receipt.json();
    let receipt_path = work.join("receipt-4242.json");
    std::fs::write(&receipt_path, serde_json::to_vec_pretty(&receipt).unwrap()).unwrap();
    a.sigterm();
    let bundle = work.join("bundle.tar");
    a.export_from_db(height, &bundle);
    let key = a.key_pem();
    let other = other_public_key(&work);
    let b = Browser::start(a.dir.path(), &[]);

    // A real receipt, with its token checked against the TSA CA.
    let o = verify_offline(&b, &receipt_path, &key, Some(&tsa.ca_pem()), Duration::from_secs(30));
    b.screenshot("offline-receipt-verified");
    assert_eq!(o.outcome, "ok", "{}", o.text);
    assert!(
        o.text.contains(&format!("Event seq {receipt_seq}: its entry and payload hash to the leaf")),
        "{}",
        o.text
    );
    assert!(o.text.contains("RFC 3161 tokens: 1 token verified against the TSA CA"), "{}", o.text);
    assert!(o.text.contains("Witness cosignatures: no witness keys given."), "{}", o.text);

    // One flipped bit in the receipt: the page names the event.
    let flipped = work.join("receipt-flipped.json");
    std::fs::write(&flipped, serde_json::to_vec_pretty(&flip_a_bit_of_the_entry(&receipt)).unwrap()).unwrap();
    let o = verify_offline(&b, &flipped, &key, None, Duration::from_secs(30));
    b.screenshot("offline-receipt-flipped-bit");
    assert_eq!((o.outcome.as_str(), o.kind.as_str()), ("invalid", "seq"), "{}", o.text);
    assert_eq!(o.at, receipt_seq.to_string(), "{}", o.text);
    assert!(o.text.starts_with(&format!("FAILED at seq {receipt_seq}: receipt-flipped.json")), "{}", o.text);

    // The receipt against a key the appliance never had: the page names the head.
    let o = verify_offline(&b, &receipt_path, &other, None, Duration::from_secs(30));
    b.screenshot("offline-receipt-wrong-key");
    assert_eq!((o.outcome.as_str(), o.kind.as_str()), ("invalid", "height"), "{}", o.text);
    assert_eq!(o.at, receipt["head"]["height"].as_u64().unwrap().to_string(), "{}", o.text);

    // The whole 100,000-event bundle, tokens checked.
    let o = verify_offline(&b, &bundle, &key, Some(&tsa.ca_pem()), Duration::from_secs(240));
    b.screenshot("offline-bundle-verified");
    assert_eq!(o.outcome, "ok", "{}", o.text);
    let checked = b.script("return document.getElementById('checked').innerText;", json!([]));
    let checked = checked.as_str().unwrap_or_default();
    let end = head["tree_size"].as_u64().unwrap();
    assert!(checked.contains(&format!("Events: {} events (seq 0 to {})", group(end), end - 1)), "{checked}");
    assert!(checked.contains(&format!("Heads 0 to {height}: ")), "{checked}");
    assert!(
        checked.contains(&format!("RFC 3161 tokens: {} tokens verified against the TSA CA", height + 1)),
        "{checked}"
    );
    let rate = b.script("return document.getElementById('result').dataset.eventsPerSecond;", json!([]));
    println!(
        "console: bundle verified in the browser with its tokens at {} events/s",
        rate.as_str().unwrap_or("?")
    );
    // The same without the token checks: the events walk alone (docs/PERFORMANCE.md).
    let o = verify_offline(&b, &bundle, &key, None, Duration::from_secs(240));
    assert_eq!(o.outcome, "ok", "{}", o.text);
    let rate = b.script("return document.getElementById('result').dataset.eventsPerSecond;", json!([]));
    println!(
        "console: bundle verified in the browser without tokens at {} events/s",
        rate.as_str().unwrap_or("?")
    );

    // One edited body: the page names the event.
    let edited = work.join("bundle-edited.tar");
    let edited_seq = 77_777;
    edit_a_body(&bundle, edited_seq, &edited);
    let o = verify_offline(&b, &edited, &key, None, Duration::from_secs(240));
    b.screenshot("offline-bundle-edited-body");
    assert_eq!(
        (o.outcome.as_str(), o.kind.as_str(), o.at.as_str()),
        ("invalid", "seq", "77777"),
        "{}",
        o.text
    );

    // Two edited bodies far apart, in different blocks of the checking workers (a block is 4 MiB, ~8,000
    // events here), the later one checked by a worker that may well answer first: the earlier seq is named,
    // as the one-worker verifier names it. And the same on the one worker (`?checkers=0`).
    let twice = work.join("bundle-edited-twice.tar");
    edit_bodies(&bundle, &[30_303, 3_333], &twice);
    for query in ["", "?checkers=0", "?checkers=5"] {
        let o = verify_offline_at(&b, query, &twice, &key, None, Duration::from_secs(240));
        assert_eq!(
            (o.outcome.as_str(), o.kind.as_str(), o.at.as_str()),
            ("invalid", "seq", "3333"),
            "{query}: {}",
            o.text
        );
    }

    // For measuring (docs/PERFORMANCE.md): keep the bundle and its key.
    if let Some(keep) = std::env::var_os("ANCHORLOG_CONSOLE_KEEP_BUNDLE").map(PathBuf::from) {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&bundle, keep.join("bundle.tar")).unwrap();
        std::fs::copy(&key, keep.join("key.pem")).unwrap();
        std::fs::copy(tsa.ca_pem(), keep.join("tsa-ca.pem")).unwrap();
    }

    // The bundle against the wrong key: the page names the first head.
    let o = verify_offline(&b, &bundle, &other, None, Duration::from_secs(240));
    b.screenshot("offline-bundle-wrong-key");
    assert_eq!(
        (o.outcome.as_str(), o.kind.as_str(), o.at.as_str()),
        ("invalid", "height", "0"),
        "{}",
        o.text
    );
    drop(b);
}

/// Events before each head after the first in the two-node log: its entries.jsonl (~13 MB) spans several of the
/// checking workers' 4 MiB blocks, node B's heads in a later block than the first.
const EVENTS_PER_HEAD: u64 = 8_000;

/// A log two nodes sign, each with its own key (an active/standby pair, docs/HA.md): heads 0 and 1 by node A, a
/// takeover (no rotation record) and heads 2 and 3 by node B, head 4 by A again, [`EVENTS_PER_HEAD`] events
/// before each head after the first; exported whole as `dir/ha.tar`. Returns the bundle and the database.
fn two_node_log(dir: &Path, a: &TestKey, b: &TestKey) -> (PathBuf, PathBuf) {
    let db = dir.join("ha.db");
    let mut l = LogBuilder::create(&db, a);
    // The appliance records every key that signs: the bundle carries node B's key in keys/.
    anchorlog::store::record_public_key(&l.conn, &b.public.key_id, &b.pem()).unwrap();
    l.head();
    for signer in [a, b, b, a] {
        l.key = signer;
        l.events(EVENTS_PER_HEAD);
        l.head();
    }
    drop(l);
    let tar = dir.join("ha.tar");
    let c = anchorlog::store::open_reader(&db).unwrap();
    anchorlog::bundle::export(&c, 0, 4, None, std::fs::File::create(&tar).unwrap(), &mut |_, _| {}).unwrap();
    (tar, db)
}

/// Picks the evidence, the keyring files (several PEM files at once) and a signer key if any, presses Verify
/// and waits for the result, on the page opened with `query`.
fn verify_with_keyring(
    b: &Browser,
    query: &str,
    evidence: &Path,
    key: Option<&Path>,
    keyring: &[&Path],
) -> Outcome {
    open_offline_at(b, query);
    b.send_keys("#evidence", evidence.to_str().unwrap());
    if let Some(key) = key {
        b.send_keys("#key-file", key.to_str().unwrap());
    }
    if !keyring.is_empty() {
        let files: Vec<&str> = keyring.iter().map(|p| p.to_str().unwrap()).collect();
        b.send_keys("#keyring-file", &files.join("\n"));
    }
    b.click("#verify-button");
    outcome(b, Duration::from_secs(120))
}

/// A keyring in the console (docs/FORMAT.md §20): a bundle two nodes signed passes with both nodes' keys, on the
/// checking workers and on the one worker, and the page lists which key signed which heads; with node A's key
/// alone, or a stranger's key in node B's place, it fails at node B's first head. A receipt under node B's head
/// passes with the keyring. Logs signed with software keys: no appliance.
#[test]
fn offline_mode_verifies_a_two_node_bundle_against_a_keyring_and_names_the_signers() {
    console_dir();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c) = (TestKey::new(1), TestKey::new(2), TestKey::new(3));
    let (tar, db) = two_node_log(d, &a, &b);
    // Several blocks of 4 MiB (console/web/worker.js's CHUNK) for the checking workers.
    let size = std::fs::metadata(&tar).unwrap().len();
    assert!(size > 2 * (4 << 20), "{size} bytes");
    let (pa, pb, pc) = (a.write_pem(d, "a.pem"), b.write_pem(d, "b.pem"), c.write_pem(d, "c.pem"));
    let ring = d.join("nodes.pem");
    std::fs::write(&ring, format!("# node A\n{}# node B\n{}", a.pem(), b.pem())).unwrap();
    let (ida, idb, idc) = (&a.public.key_id, &b.public.key_id, &c.public.key_id);
    let home = tempfile::tempdir().unwrap();
    let br = Browser::start(home.path(), &[]);

    // One keyring file with both keys, on the checking workers (default, and 3) and on the one worker.
    let signers = format!("heads 0 to 1: key {ida}\nheads 2 to 3: key {idb}\nhead 4: key {ida}");
    for query in ["", "?checkers=3", "?checkers=0"] {
        let o = verify_with_keyring(&br, query, &tar, None, &[&ring]);
        assert_eq!(o.outcome, "ok", "{query}: {}", o.text);
        let listed = br.script("return document.getElementById('signers').innerText;", json!([]));
        assert_eq!(listed.as_str().unwrap_or_default().trim(), signers, "{query}");
        assert!(o.text.contains("Signing keys: 2 keys of the keyring"), "{query}: {}", o.text);
        assert!(o.text.contains(&format!("Events: {} events", group(4 * EVENTS_PER_HEAD))), "{}", o.text);
        if query.is_empty() {
            br.screenshot("offline-bundle-keyring-verified");
        }
    }
    // The nodes' keys as two files picked together; and node A's key as the signer key with node B's as the
    // keyring (the signer key joins the ring, as with `anchorlog verify --key … --keyring …`).
    assert_eq!(verify_with_keyring(&br, "", &tar, None, &[&pa, &pb]).outcome, "ok");
    assert_eq!(verify_with_keyring(&br, "", &tar, Some(&pa), &[&pb]).outcome, "ok");
    // Pasted instead of picked: the same.
    open_offline_at(&br, "");
    br.send_keys("#evidence", tar.to_str().unwrap());
    let pasted = std::fs::read_to_string(&ring).unwrap();
    br.script("document.getElementById('keyring-text').value = arguments[0];", json!([pasted]));
    br.click("#verify-button");
    let o = outcome(&br, Duration::from_secs(120));
    assert_eq!(o.outcome, "ok", "{}", o.text);

    // Node A's key alone, no keyring: the chain of keys, which node B's first head leaves without a rotation.
    let unannounced = anchorlog_core::verify::Failure::UnannouncedKey {
        height: 2,
        key_id: idb.clone(),
        current: ida.clone(),
    };
    for query in ["", "?checkers=0"] {
        let o = verify_with_keyring(&br, query, &tar, Some(&pa), &[]);
        assert_eq!(
            (o.outcome.as_str(), o.kind.as_str(), o.at.as_str()),
            ("invalid", "height", "2"),
            "{}",
            o.text
        );
        assert!(o.text.contains(&unannounced.to_string()), "{query}: {}", o.text);
    }
    // A stranger's key in node B's place in the keyring: node B's first head is outside the ring.
    let outside = anchorlog_core::verify::Failure::OutsideKeyring {
        height: 2,
        key_id: idb.clone(),
        ring: format!("{ida}, {idc}"),
    };
    for query in ["", "?checkers=0"] {
        let o = verify_with_keyring(&br, query, &tar, None, &[&pa, &pc]);
        assert_eq!(
            (o.outcome.as_str(), o.kind.as_str(), o.at.as_str()),
            ("invalid", "height", "2"),
            "{}",
            o.text
        );
        assert!(o.text.contains(&outside.to_string()), "{query}: {}", o.text);
        if query.is_empty() {
            br.screenshot("offline-bundle-keyring-stranger");
        }
    }

    // A receipt of an event under node B's head 3.
    let c = anchorlog::store::open_reader(&db).unwrap();
    let receipt = anchorlog::receipt::build(&c, 2 * EVENTS_PER_HEAD + 5).unwrap();
    assert_eq!(receipt.head.height, 3);
    let file = d.join("receipt.json");
    std::fs::write(&file, serde_json::to_vec(&receipt).unwrap()).unwrap();
    let o = verify_with_keyring(&br, "", &file, None, &[&ring]);
    assert_eq!(o.outcome, "ok", "{}", o.text);
    assert!(o.text.contains(&format!("Signature: head 3 is signed by key {idb}")), "{}", o.text);
    let o = verify_with_keyring(&br, "", &file, Some(&pa), &[]);
    assert_eq!(
        (o.outcome.as_str(), o.kind.as_str(), o.at.as_str()),
        ("invalid", "height", "3"),
        "{}",
        o.text
    );
    drop(br);
}

/// The page's bundle rate by number of checking workers, on a bundle kept by the offline test
/// (`ANCHORLOG_CONSOLE_KEEP_BUNDLE=DIR`): `ANCHORLOG_CONSOLE_BENCH=DIR` runs it (else it passes at once);
/// `ANCHORLOG_CONSOLE_BENCH_CHECKERS` (default `0,1,2,3,4`) and `ANCHORLOG_CONSOLE_BENCH_RUNS` (default 3) say
/// what; `ANCHORLOG_CONSOLE_BENCH_TOKENS=1` checks the bundle's RFC 3161 tokens too. The runs alternate between the worker counts, so that load from elsewhere spreads over all of them.
#[test]
fn bundle_rate_by_checking_workers() {
    let Some(dir) = std::env::var_os("ANCHORLOG_CONSOLE_BENCH").map(PathBuf::from) else { return };
    let checkers = std::env::var("ANCHORLOG_CONSOLE_BENCH_CHECKERS").unwrap_or_else(|_| "0,1,2,3,4".into());
    let runs: usize =
        std::env::var("ANCHORLOG_CONSOLE_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let tsa_ca = dir.join("tsa-ca.pem");
    let tokens = std::env::var_os("ANCHORLOG_CONSOLE_BENCH_TOKENS").is_some().then_some(tsa_ca.as_path());
    let home = tempfile::tempdir().unwrap();
    let b = Browser::start(home.path(), &[]);
    let mut rates: Vec<(String, Vec<u64>)> =
        checkers.split(',').map(|k| (k.to_string(), Vec::new())).collect();
    for _ in 0..runs {
        for (k, got) in &mut rates {
            let o = verify_offline_at(
                &b,
                &format!("?checkers={k}"),
                &dir.join("bundle.tar"),
                &dir.join("key.pem"),
                tokens,
                Duration::from_secs(240),
            );
            assert_eq!(o.outcome, "ok", "{}", o.text);
            let rate =
                b.script("return document.getElementById('result').dataset.eventsPerSecond;", json!([]));
            got.push(rate.as_str().and_then(|r| r.parse().ok()).unwrap_or(0));
            let timing = b.script("return document.getElementById('result').dataset.timing;", json!([]));
            println!("console bench: {k}: {rate} {timing}");
        }
    }
    for (k, got) in rates {
        println!("console bench: {k} checking workers: {got:?} events/s");
    }
}

/// An NSS database in `home` (Chromium's `$HOME/.pki/nssdb`) trusting the test CA and holding the auditor's
/// certificate and key.
fn nss_database(a: &Appliance, home: &Path) {
    let certs = a.dir.path().join("certs");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("NSS tool runs (apt-get install libnss3-tools)");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]));
    run(Command::new("certutil")
        .args(["-A", "-d", &db, "-n", "anchorlog-test-ca", "-t", "C,,", "-i"])
        .arg(certs.join("ca.pem")));
    let p12 = home.join("auditor.p12");
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:", "-name", "auditor", "-in"])
        .arg(certs.join("auditor.pem"))
        .arg("-inkey")
        .arg(certs.join("auditor.key"))
        .arg("-out")
        .arg(&p12));
    run(Command::new("pk12util").args(["-d", &db, "-W", "", "-i"]).arg(&p12));
}

/// Chromium's managed policy `AutoSelectCertificateForUrls` for https://localhost on any port: headless
/// Chromium cannot show the certificate picker, and the policy (read from /etc/chromium/policies/managed at
/// start, root only) is its only way to present a client certificate. One file of a fixed name, whatever the
/// port: a file left behind by a killed run must not compete with this one (Chromium keeps one of two files
/// that set the same policy). Removed on drop.
struct AutoSelectCertificate(PathBuf);

impl AutoSelectCertificate {
    fn for_localhost() -> AutoSelectCertificate {
        let dir = Path::new("/etc/chromium/policies/managed");
        std::fs::create_dir_all(dir)
            .expect("the console's live test writes a Chromium policy: run it as root");
        let path = dir.join("anchorlog-console-tests.json");
        let rule = json!({"pattern": "https://localhost:*", "filter": {}}).to_string();
        std::fs::write(&path, json!({"AutoSelectCertificateForUrls": [rule]}).to_string())
            .expect("policy written");
        AutoSelectCertificate(path)
    }
}

impl Drop for AutoSelectCertificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Pins `key` (PEM file) in the live page.
fn pin(b: &Browser, key: &Path) {
    let pem = std::fs::read_to_string(key).unwrap();
    b.script(
        "document.getElementById('pin-text').value = arguments[0]; document.getElementById('pin-button').click();",
        json!([pem]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mode_presents_the_auditor_certificate_searches_and_verifies_receipts_against_the_pinned_key() {
    let console = console_dir();
    let tsa = LocalTsa::start_new(&[]);
    let mut a = Appliance::start_with(Options {
        seal_interval_ms: 100,
        server_extra: format!("console_dir = \"{}\"\n", console.display()),
        extra_config: format!("{}{}", tsa.config_entry(5_000), fast_retries()),
        ..Options::default()
    });
    let mut p = a.connect("producer").await;
    for (i, user) in ["alice", "bob", "carol"].iter().enumerate() {
        let body = format!("{{\"type\":\"LOGIN\",\"userId\":\"{user}\",\"ipAddress\":\"10.1.0.{i}\"}}");
        let r = p.post_json("/v1/events", body.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    a.wait_for_head(3).await;
    a.wait_indexed().await;

    // The console is an auditor's route like the others: refused to another role and to an unknown client,
    // served with its security headers, and nothing but its own files is read from its directory.
    let mut producer = a.connect("producer").await;
    let r = producer.get("/console/").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")));
    let mut stranger = a.connect("stranger").await;
    let r = stranger.get("/console/engine.js").await.unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("unknown_principal")));
    let mut auditor = a.connect("auditor").await;
    let r = auditor.open("GET", "/console/", &[], Vec::new()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers["content-security-policy"], anchorlog::api::console::CONTENT_SECURITY_POLICY);
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    drop(r);
    for path in ["/console/..%2Fconfig.toml", "/console/Cargo.toml", "/console/engine.js.map"] {
        let r = auditor.get(path).await.unwrap();
        assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("not_found")), "{path}");
    }

    let home = tempfile::tempdir().unwrap();
    nss_database(&a, home.path());
    let port = a.addr.unwrap().port();
    let _policy = AutoSelectCertificate::for_localhost();
    let b = Browser::start(home.path(), &["--host-resolver-rules=MAP localhost 127.0.0.1"]);
    b.goto(&format!("https://localhost:{port}/console/#live"));
    b.wait_for("document.body.dataset.engine === 'ready'", Duration::from_secs(30));
    b.wait_for("!document.getElementById('live').hidden", Duration::from_secs(5));

    // A key other than the appliance's pinned: the server's head and receipts are caught.
    let other = other_public_key(a.dir.path());
    pin(&b, &other);
    b.wait_for("document.getElementById('head').dataset.verdict", Duration::from_secs(20));
    let verdict = b.script("return document.getElementById('head').dataset.verdict;", json!([]));
    assert_eq!(verdict, "bad", "a head signed by another key than the pinned one is not accepted");
    // Paging: the three logins two at a time, the second page appended to the first.
    b.send_keys("#s-type", "LOGIN");
    b.script("document.getElementById('s-limit').value = '2';", json!([]));
    b.click("#search-button");
    b.wait_for("document.querySelectorAll('#hits tbody tr').length === 2", Duration::from_secs(20));
    b.wait_for("!document.getElementById('next-page').hidden", Duration::from_secs(5));
    b.click("#next-page");
    b.wait_for("document.querySelectorAll('#hits tbody tr').length === 3", Duration::from_secs(20));
    b.wait_for("document.getElementById('next-page').hidden", Duration::from_secs(5));
    let seqs = b.script(
        "return [...document.querySelectorAll('#hits tbody tr')].map(r => r.cells[0].innerText).sort().join(',');",
        json!([]),
    );
    assert_eq!(seqs, "0,1,2", "each login once over the two pages");
    b.script(
        "document.getElementById('s-type').value = ''; document.getElementById('s-limit').value = '20';",
        json!([]),
    );
    b.send_keys("#s-actor", "bob");
    b.click("#search-button");
    b.wait_for("document.querySelectorAll('#hits tbody tr').length === 1", Duration::from_secs(20));
    let seq = b.script("return document.querySelector('#hits tbody tr td').innerText;", json!([]));
    let seq = seq.as_str().unwrap().to_string();
    b.click(&format!("#receipt-{seq} button"));
    let cell = format!("document.getElementById('receipt-{seq}')");
    b.wait_for(&format!("{cell}.dataset.verdict"), Duration::from_secs(20));
    let text = b.text(&format!("#receipt-{seq}"));
    b.script(&format!("{cell}.scrollIntoView({{block: 'end'}});"), json!([]));
    b.screenshot("live-receipt-other-key-caught");
    assert_eq!(b.script(&format!("return {cell}.dataset.verdict;"), json!([])), "bad", "{text}");
    assert!(text.starts_with("NOT VERIFIED at height "), "{text}");

    // The appliance's own key pinned: the head and the receipt verify in the browser.
    b.click("#unpin-button");
    pin(&b, &a.key_pem());
    b.wait_for("document.getElementById('head').dataset.verdict === 'ok'", Duration::from_secs(20));
    b.click("#search-button");
    // The new page of results replaces the old row (whose button became the verdict).
    b.wait_for(&format!("document.querySelector('#receipt-{seq} button')"), Duration::from_secs(20));
    b.click(&format!("#receipt-{seq} button"));
    b.wait_for(&format!("{cell}.dataset.verdict === 'ok'"), Duration::from_secs(20));
    let text = b.text(&format!("#receipt-{seq}"));
    assert!(text.starts_with("Verified: in head "), "{text}");
    b.script(&format!("{cell}.scrollIntoView({{block: 'end'}});"), json!([]));
    b.screenshot("live-receipt-verified");

    // Two nodes' keys pinned, one after the other (a keyring): the head and the receipt the appliance's key
    // signed verify against it.
    b.click("#unpin-button");
    b.script("document.getElementById('head').dataset.verdict = '';", json!([]));
    let ring = a.dir.path().join("nodes.pem");
    let pems = [&other, &a.key_pem()].map(|p| std::fs::read_to_string(p).unwrap());
    std::fs::write(&ring, pems.concat()).unwrap();
    pin(&b, &ring);
    assert_eq!(b.text("#pinned"), "Pinned: a keyring of 2 keys.");
    b.wait_for("document.getElementById('head').dataset.verdict === 'ok'", Duration::from_secs(20));
    let head_text = b.text("#head");
    assert!(head_text.contains(", a key of the pinned keyring"), "{head_text}");
    b.click("#search-button");
    b.wait_for(&format!("document.querySelector('#receipt-{seq} button')"), Duration::from_secs(20));
    b.click(&format!("#receipt-{seq} button"));
    b.wait_for(&format!("{cell}.dataset.verdict === 'ok'"), Duration::from_secs(20));
    drop(b);
    a.sigterm();
}
