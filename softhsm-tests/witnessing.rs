//! Witnessing end to end (issue 11, the log side), on real parts only: two appliances of different origins (the
//! real binary, SoftHSM keys) share two `anchorlog witness` processes (the real binary, file and PKCS#11 keys,
//! their own SQLite state). Every head gets both cosignatures; `verify` with the quorum accepts the database, a
//! bundle and a receipt, and names the height of a flipped bit; an appliance whose database is restored from an
//! older copy is refused by both witnesses and says so (log record, /readyz, metrics, `verify`), while the other
//! appliance is untouched; a witness killed for several seals back-fills every head; `anchorlog dev` cosigns
//! with its local witness. Python's `cryptography` checks the cosignatures of the bundle independently.

mod kit;

use anchorlog::store;
use kit::bundle::{tar_members, write_tar};
use kit::witness::{KeyBackend, WitnessProcess};
use kit::{post_concurrently, Appliance, Options};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ORIGIN_A: &str = "anchorlog.test/witnessed-a";
const ORIGIN_B: &str = "anchorlog.test/witnessed-b";

/// Two appliances (not started) and two witnesses (started) configured for both.
struct World {
    a: Appliance,
    b: Appliance,
    w1: WitnessProcess,
    w2: WitnessProcess,
}

fn options(origin: &str) -> Options {
    Options {
        origin: origin.into(),
        record_appliance_events: true,
        seal_interval_ms: 200,
        ..Options::default()
    }
}

impl World {
    fn new() -> World {
        let mut a = Appliance::prepare(options(ORIGIN_A));
        let mut b = Appliance::prepare(options(ORIGIN_B));
        let logs = format!(
            "[[log]]\norigin = \"{ORIGIN_A}\"\npublic_key_files = [\"{}\"]\n\
             [[log]]\norigin = \"{ORIGIN_B}\"\npublic_key_files = [\"{}\"]\n",
            a.key_pem().display(),
            b.key_pem().display()
        );
        let mut w1 = WitnessProcess::create("witness.test/w1", KeyBackend::File, false, &logs);
        let mut w2 = WitnessProcess::create("witness.test/w2", KeyBackend::Pkcs11, false, &logs);
        w1.spawn().expect("w1 starts");
        w2.spawn().expect("w2 starts");
        for app in [&mut a, &mut b] {
            app.options.extra_config = witness_config(&[&w1, &w2], 2);
        }
        World { a, b, w1, w2 }
    }

    fn vkey_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        for w in [&self.w1, &self.w2] {
            v.push("--witness".to_string());
            v.push(w.vkey_file().to_str().unwrap().to_string());
        }
        v.extend(["--witness-quorum".to_string(), "2".to_string()]);
        v
    }
}

/// `[[witness]]` sections for `witnesses` (named w1, w2, …) with fast retries, and the quorum.
fn witness_config(witnesses: &[&WitnessProcess], quorum: usize) -> String {
    let mut out = String::new();
    for (i, w) in witnesses.iter().enumerate() {
        out.push_str(&format!(
            "[[witness]]\nname = \"w{}\"\nurl = \"{}\"\nvkey = \"{}\"\ntimeout_ms = 2000\n",
            i + 1,
            w.url(),
            w.vkey
        ));
    }
    out.push_str(&format!("[witnessing]\nquorum = {quorum}\nretry_initial_ms = 100\nretry_max_ms = 400\n"));
    out
}

fn with(base: &[&str], extra: &[String]) -> Vec<String> {
    base.iter().map(|s| s.to_string()).chain(extra.iter().cloned()).collect()
}

fn run(a: &Appliance, args: Vec<String>) -> (i32, Value) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    a.cli_json(&refs)
}

fn verify_db(a: &Appliance, db: &Path, extra: &[String]) -> (i32, Value) {
    let key = a.key_pem();
    run(a, with(&["verify", "--db", db.to_str().unwrap(), "--key", key.to_str().unwrap()], extra))
}

fn verify_bundle(a: &Appliance, tar: &Path, extra: &[String]) -> (i32, Value) {
    let key = a.key_pem();
    run(a, with(&["verify", tar.to_str().unwrap(), "--key", key.to_str().unwrap()], extra))
}

fn verify_receipt(a: &Appliance, receipt: &Value, extra: &[String]) -> (i32, Value) {
    let file = a.path("receipt-under-test.json");
    std::fs::write(&file, receipt.to_string()).unwrap();
    let key = a.key_pem();
    run(a, with(&["verify-receipt", file.to_str().unwrap(), "--key", key.to_str().unwrap()], extra))
}

fn python(tar: &Path, key: &Path, extra: &[String]) -> (i32, String) {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = kit::bundle::python_verify(tar, key, &extra);
    (code, format!("{stdout}{stderr}").trim().to_string())
}

/// `anchorlog audit` against `a` with `extra` (the witness flags): (exit code, JSON outcome).
fn audit(a: &Appliance, extra: &[String]) -> (i32, Value) {
    a.audit(&extra.iter().map(String::as_str).collect::<Vec<_>>())
}

fn assert_fails_at(result: (i32, Value), height: u64, text: &str) {
    let (code, v) = result;
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["height"], height, "{v}");
    assert!(v["failure"].as_str().unwrap_or_default().contains(text), "{text}: {v}");
}

/// Waits until the latest head covers `tree_size` events and carries `n` cosignatures; returns it.
async fn wait_cosigned(a: &Appliance, tree_size: u64, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = a.audit_get("/v1/heads/latest").await.json();
        let count = h["cosignatures"].as_array().map_or(0, Vec::len);
        if h["tree_size"].as_u64() >= Some(tree_size) && count >= n {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "no head of {tree_size} events with {n} cosignatures: {h}\n{}",
            a.server_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/readyz` satisfies `f`; returns it.
async fn wait_ready(a: &Appliance, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = a.audit_get("/readyz").await.json();
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "/readyz never showed {what}: {r}\n{}", a.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per head height, the witness key names of its stored cosignatures (read from the database file).
fn cosigners(db: &Path) -> Vec<(u64, Vec<String>)> {
    let conn = store::open_reader(db).unwrap();
    let heads = store::cosignatures::heads_with_cosigners(&conn, 0).unwrap();
    heads
        .into_iter()
        .map(|h| {
            let mut names: Vec<String> = h.cosigners.into_iter().map(|(n, _)| n).collect();
            names.sort();
            (h.height, names)
        })
        .collect()
}

/// `line` with one bit of its signature flipped (a byte well inside the Ed25519 signature).
fn flip(line: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (prefix, sig) = line.rsplit_once(' ').unwrap();
    let mut raw = b64.decode(sig).unwrap();
    raw[40] ^= 0x01;
    format!("{prefix} {}", b64.encode(raw))
}

/// A cosignature line of a key nobody listed, carrying witness w1's name.
fn stranger_line(text: &str) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x77; 32]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    anchorlog_core::note::cosignature::sign("witness.test/w1", &key, text, now)
        .unwrap()
        .to_line()
        .trim_end()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appliances_every_head_cosigned_by_both_witnesses_and_verified_with_the_quorum() {
    let mut world = World::new();
    world.a.spawn().expect("a starts");
    world.b.spawn().expect("b starts");
    let started = Instant::now();
    // 1,000 events into A and 300 into B at the same time, through the same two witnesses.
    let (posted_a, posted_b) =
        tokio::join!(post_concurrently(&world.a, 1000, 4), post_concurrently(&world.b, 300, 2));
    assert_eq!((posted_a.len(), posted_b.len()), (1000, 300));
    let head_a = wait_cosigned(&world.a, 1001, 2).await;
    let head_b = wait_cosigned(&world.b, 301, 2).await;
    eprintln!("1,300 events posted and their heads cosigned by 2 of 2 witnesses in {:?}", started.elapsed());
    // The served note is the signed note with both cosignature lines, as c2sp.org/tlog-witness clients expect.
    let note = head_a["note"].as_str().unwrap();
    for c in head_a["cosignatures"].as_array().unwrap() {
        assert!(note.contains(&format!("\n{}\n", c["line"].as_str().unwrap())), "{note}");
    }
    let parsed = anchorlog_core::note::Note::parse(note.as_bytes()).unwrap();
    assert_eq!(parsed.text(), head_a["checkpoint"].as_str().unwrap());
    assert_eq!(parsed.signatures().len(), 3, "the appliance's line and two cosignatures");
    let names: Vec<&str> =
        head_a["cosignatures"].as_array().unwrap().iter().map(|c| c["witness"].as_str().unwrap()).collect();
    assert!(names.contains(&"witness.test/w1") && names.contains(&"witness.test/w2"), "{names:?}");
    for app in [&world.a, &world.b] {
        let r = wait_ready(app, "no head below quorum", |r| r["heads_below_quorum"] == 0).await;
        assert_eq!((r["witnessing"].as_str(), r["witness_quorum"].as_u64()), (Some("on"), Some(2)), "{r}");
        assert_eq!(r["witness_refusals"], 0, "{r}");
        let states: Vec<&str> =
            r["witnesses"].as_array().unwrap().iter().map(|w| w["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["ok", "ok"], "{r}");
    }
    let metrics = String::from_utf8(world.a.audit_get("/metrics").await.body).unwrap();
    assert!(metrics.contains("\nanchorlog_witness_quorum 2\n"), "{metrics}");
    assert!(metrics.contains("\nanchorlog_heads_below_quorum 0\n"), "{metrics}");
    assert!(metrics.contains("\nanchorlog_witness_refusals_total 0\n"), "{metrics}");

    // The monitor demanding both witnesses accepts the newest cosigned head; demanding a witness that never
    // cosigned this log, it finds no head with the quorum among the latest 17 and exits 8.
    let (code, out) = audit(&world.a, &world.vkey_args());
    assert_eq!((code, out["outcome"].as_str()), (0, Some("first_seen")), "{out}");
    let never = anchorlog_core::note::VerifierKey::cosignature_v1("witness.test/never", &[9; 32])
        .unwrap()
        .to_string();
    let strict = vec!["--witness".into(), world.w1.vkey.to_string(), "--witness".into(), never];
    let (code, out) = audit(&world.a, &strict);
    assert_eq!(code, 8, "{out}");
    assert!(out["error"].as_str().unwrap().starts_with("below the witness quorum: head height "), "{out}");
    // A receipt of an event in the middle, once its head is cosigned.
    let receipt = world.a.audit_get("/v1/events/500/receipt").await.json();
    assert_eq!(receipt["head"]["cosignatures"].as_array().map(Vec::len), Some(2), "{receipt}");

    assert!(world.a.sigterm().success());
    assert!(world.b.sigterm().success());
    // Every head of both logs, from height 0 to the final one sealed at the stop, has exactly both cosignatures.
    for (app, origin) in [(&world.a, ORIGIN_A), (&world.b, ORIGIN_B)] {
        let heads = cosigners(&app.db_path());
        assert!(heads.len() > 3, "{origin}: {} heads", heads.len());
        for (height, names) in &heads {
            assert_eq!(names, &["witness.test/w1", "witness.test/w2"], "{origin} head {height}");
        }
        // Each witness holds exactly this log's final tree: one log's state never touches the other's.
        let conn = store::open_reader(&app.db_path()).unwrap();
        let last = store::last_head(&conn).unwrap().unwrap();
        assert_eq!(world.w1.stored_size(origin), Some(last.tree_size), "{origin}");
        assert_eq!(world.w2.stored_size(origin), Some(last.tree_size), "{origin}");
    }
    let a = &world.a;
    let vkeys = world.vkey_args();

    // The database.
    let (code, v) = verify_db(a, &a.db_path(), &vkeys);
    assert_eq!(code, 0, "{v}");
    let heads = v["report"]["heads"].as_u64().unwrap();
    let w = &v["witnesses"];
    assert_eq!((w["quorum"].as_u64(), w["newest_height"].as_u64()), (Some(2), Some(heads - 1)), "{w}");
    assert_eq!(
        (w["heads_cosigned"].as_u64(), w["heads_with_quorum"].as_u64()),
        (Some(heads), Some(heads)),
        "{w}"
    );
    for (i, t) in w["witnesses"].as_array().unwrap().iter().enumerate() {
        let vkey = [&world.w1, &world.w2][i].vkey.clone();
        assert_eq!(t["witness"], format!("{}+{:08x}", vkey.name(), vkey.key_id()), "{t}");
        assert_eq!(
            (t["heads"].as_u64(), t["first_height"].as_u64(), t["last_height"].as_u64()),
            (Some(heads), Some(0), Some(heads - 1)),
            "{t}"
        );
    }
    // The human report says who cosigned what.
    let key = a.key_pem();
    let args =
        with(&["verify", "--db", a.db_path().to_str().unwrap(), "--key", key.to_str().unwrap()], &vkeys);
    let out = a.anchorlog(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("witnesses: head height {} cosigned by 2 of the 2 required", heads - 1)),
        "{text}"
    );
    assert!(text.contains(&format!("cosigned {heads} heads, heights 0 .. {}", heads - 1)), "{text}");
    // B's log, through the same witnesses, verifies with the same quorum.
    let (code, v) = verify_db(&world.b, &world.b.db_path(), &vkeys);
    assert_eq!(code, 0, "{v}");

    // A bundle, checked by us and by Python's `cryptography`.
    let tar = a.path("all.tar");
    a.export_from_db(heads - 1, &tar);
    let members = tar_members(&tar);
    assert_eq!(members.iter().filter(|(n, _)| n.ends_with(".note")).count() as u64, heads);
    let (code, v) = verify_bundle(a, &tar, &vkeys);
    assert_eq!((code, &v["notes_present"]), (0, &json!(heads)), "{v}");
    assert_eq!(v["witnesses"]["newest_cosigned_by"].as_array().map(Vec::len), Some(2), "{v}");
    let (code, out) = python(&tar, &a.key_pem(), &vkeys);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "head height {} cosigned by 2 of the 2 required witnesses (witness.test/w1, witness.test/w2)",
            heads - 1
        )),
        "{out}"
    );

    // The receipt.
    let (code, v) = verify_receipt(a, &receipt, &vkeys);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["report"]["witnesses"]["newest_cosigned_by"].as_array().map(Vec::len), Some(2), "{v}");

    // One flipped bit in a listed witness's line fails at that head, everywhere.
    let receipt_height = receipt["head"]["height"].as_u64().unwrap();
    let mut bad = receipt.clone();
    bad["head"]["cosignatures"][1] = flip(receipt["head"]["cosignatures"][1].as_str().unwrap()).into();
    assert_fails_at(verify_receipt(a, &bad, &vkeys), receipt_height, "does not verify");
    let h = heads / 2;
    let edited: Vec<(String, Vec<u8>)> = members
        .iter()
        .map(|(n, d)| {
            if *n != format!("heads/{h}.note") {
                return (n.clone(), d.clone());
            }
            let text = String::from_utf8(d.clone()).unwrap();
            let last = text.trim_end().rsplit('\n').next().unwrap().to_string();
            (n.clone(), text.replace(&last, &flip(&last)).into_bytes())
        })
        .collect();
    let flipped = a.path("flipped.tar");
    write_tar(&flipped, &edited);
    assert_fails_at(verify_bundle(a, &flipped, &vkeys), h, "does not verify");
    let (code, out) = python(&flipped, &a.key_pem(), &vkeys);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with(&format!("FAILED: head height {h}: the cosignature of listed witness witness.test/")),
        "{out}"
    );
    let db = a.path("flipped.db");
    std::fs::copy(a.db_path(), &db).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("DROP TRIGGER cosignatures_no_update").unwrap();
        let line: String = conn
            .query_row(
                "SELECT line FROM cosignatures WHERE height = ?1 AND witness = 'witness.test/w1'",
                [h as i64],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "UPDATE cosignatures SET line = ?1 WHERE height = ?2 AND witness = 'witness.test/w1'",
            rusqlite::params![flip(&line), h as i64],
        )
        .unwrap();
    }
    assert_fails_at(verify_db(a, &db, &vkeys), h, "the cosignature of listed witness witness.test/w1");
    // Without --witness nothing reads the cosignatures: the signed log itself is intact.
    assert_eq!(verify_db(a, &db, &[]).0, 0);

    // A line from a key nobody listed (carrying w1's name) is ignored, and so is an unlisted witness: listing w1
    // and a stranger with quorum 2 fails for want of the stranger, listing w1 alone passes.
    let with_stranger: Vec<(String, Vec<u8>)> = members
        .iter()
        .map(|(n, d)| {
            if *n != format!("heads/{}.note", heads - 1) {
                return (n.clone(), d.clone());
            }
            let text = String::from_utf8(d.clone()).unwrap();
            let checkpoint = text.split_once("\n\n").unwrap().0.to_string() + "\n";
            (n.clone(), format!("{text}{}\n", stranger_line(&checkpoint)).into_bytes())
        })
        .collect();
    let stranger_tar = a.path("stranger.tar");
    write_tar(&stranger_tar, &with_stranger);
    let (code, v) = verify_bundle(a, &stranger_tar, &vkeys);
    assert_eq!((code, &v["witnesses"]["unlisted_lines"]), (0, &json!(heads + 1)), "{v}");
    assert_eq!(python(&stranger_tar, &a.key_pem(), &vkeys).0, 0);
    let stranger_vkey = anchorlog_core::note::VerifierKey::cosignature_v1(
        "witness.test/w3",
        ed25519_dalek::SigningKey::from_bytes(&[0x78; 32]).verifying_key().as_bytes(),
    )
    .unwrap()
    .to_string();
    let w1_file = world.w1.vkey_file().to_str().unwrap().to_string();
    let listed = vec![
        "--witness".into(),
        w1_file.clone(),
        "--witness".into(),
        stranger_vkey.clone(),
        "--witness-quorum".into(),
        "2".into(),
    ];
    assert_fails_at(
        verify_db(a, &a.db_path(), &listed),
        heads - 1,
        "cosigned by 1 of the 2 listed witnesses required",
    );
    assert_fails_at(
        verify_bundle(a, &tar, &listed),
        heads - 1,
        "cosigned by 1 of the 2 listed witnesses required",
    );
    let (code, out) = python(&tar, &a.key_pem(), &listed);
    assert_eq!(code, 3, "{out}");
    assert_eq!(
        out,
        format!("FAILED: head height {}: cosigned by 1 of the 2 listed witnesses required", heads - 1)
    );
    let one = vec!["--witness".to_string(), w1_file, "--witness-quorum".into(), "1".into()];
    let (code, v) = verify_db(a, &a.db_path(), &one);
    assert_eq!((code, &v["witnesses"]["unlisted_lines"]), (0, &json!(heads)), "w2's lines are ignored: {v}");
    let _ = head_b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_older_database_is_refused_by_the_witnesses_and_says_so_while_the_other_log_goes_on() {
    let mut world = World::new();
    world.a.spawn().expect("a starts");
    world.b.spawn().expect("b starts");
    post_concurrently(&world.a, 20, 2).await;
    wait_cosigned(&world.a, 21, 2).await;
    assert!(world.a.sigterm().success());
    std::fs::copy(world.a.db_path(), world.a.path("older.db")).unwrap();

    world.a.spawn().unwrap();
    post_concurrently(&world.a, 30, 2).await;
    wait_cosigned(&world.a, 52, 2).await;
    // A monitor demanding the quorum accepts the newest cosigned head.
    let (code, out) = audit(&world.a, &world.vkey_args());
    assert_eq!((code, out["outcome"].as_str()), (0, Some("first_seen")), "{out}");
    let seen: Value =
        serde_json::from_slice(&std::fs::read(world.a.path("audit-state.json")).unwrap()).unwrap();
    assert!(seen["tree_size"].as_u64() >= Some(52), "{seen}");
    assert!(world.a.sigterm().success());
    let cosigned_size = world.w1.stored_size(ORIGIN_A).unwrap();
    assert_eq!(world.w2.stored_size(ORIGIN_A), Some(cosigned_size));

    // Root restores the older copy: every head in it is validly signed and cosigned, the appliance's own start-up
    // check passes — but the witnesses remember the larger tree.
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(world.a.path(&format!("anchorlog.db{ext}")));
    }
    std::fs::copy(world.a.path("older.db"), world.a.db_path()).unwrap();
    world.a.spawn().unwrap();
    // The monitor with the quorum: the newest heads of the restored copy have no cosignatures, the newest one that
    // has them is older than the head it saw — a rollback.
    let (code, out) = audit(&world.a, &world.vkey_args());
    assert_eq!(code, 4, "{out}");
    assert!(out["error"].as_str().unwrap().starts_with("rollback: "), "{out}");
    post_concurrently(&world.a, 5, 1).await;
    let r = wait_ready(&world.a, "both witnesses refusing", |r| {
        r["witnesses"].as_array().is_some_and(|w| w.iter().all(|w| w["state"] == "refused"))
    })
    .await;
    assert!(r["heads_below_quorum"].as_u64() >= Some(1), "{r}");
    assert!(r["oldest_below_quorum_age_s"].as_f64().is_some(), "{r}");
    assert!(r["witness_refusals"].as_u64() >= Some(2), "{r}");
    let error = r["witnesses"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("the witness has cosigned a tree of size {cosigned_size} for this log, larger than any this database holds")),
        "{error}"
    );
    let metrics = String::from_utf8(world.a.audit_get("/metrics").await.body).unwrap();
    assert!(metrics.contains("\nanchorlog_witness_refusing{witness=\"w1\"} 1\n"), "{metrics}");
    assert!(metrics.contains("\nanchorlog_witness_refusing{witness=\"w2\"} 1\n"), "{metrics}");
    assert!(!metrics.contains("\nanchorlog_heads_below_quorum 0\n"), "{metrics}");
    // The other log is untouched: B's new heads are cosigned by both, through the same witnesses.
    post_concurrently(&world.b, 10, 2).await;
    wait_cosigned(&world.b, 11, 2).await;

    // The rolled-back log grows past what the witnesses hold: now a proof from their size exists, and they refuse it
    // (422): a different history. The witnesses keep the evidence.
    post_concurrently(&world.a, cosigned_size + 10, 4).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !world.w1.evidence(ORIGIN_A).iter().any(|e| e.kind == "bad_consistency_proof")
        || !world.w2.evidence(ORIGIN_A).iter().any(|e| e.kind == "bad_consistency_proof")
    {
        assert!(Instant::now() < deadline, "no bad_consistency_proof evidence: {}", world.a.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = wait_ready(&world.a, "the 422 refusal", |r| {
        r["witnesses"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the consistency proof from tree size"))
    })
    .await;
    assert_eq!(r["witnesses"][1]["state"], "refused", "{r}");
    assert!(world.a.server_log().contains("a witness refused this log's head"), "logged at ERROR");
    assert!(world.a.sigterm().success());
    // Their state never went back: still the size they cosigned before the restore.
    assert_eq!(world.w1.stored_size(ORIGIN_A), Some(cosigned_size));
    assert_eq!(world.w2.stored_size(ORIGIN_A), Some(cosigned_size));

    // The log itself records each witness's refusal once (this run's episode), naming the size the witness holds.
    let refusals: Vec<Value> = world
        .a
        .own_records()
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b["type"] == "anchorlog.witness_refused")
        .collect();
    let mut who: Vec<&str> = refusals.iter().map(|b| b["witness"].as_str().unwrap()).collect();
    who.sort();
    assert_eq!(who, ["w1", "w2"], "{refusals:?}");
    for b in &refusals {
        assert_eq!(
            (b["status"].as_u64(), b["witness_size"].as_u64()),
            (Some(409), Some(cosigned_size)),
            "{b}"
        );
        assert!(b["tree_size"].as_u64() < Some(cosigned_size), "{b}");
    }
    // verify with the quorum fails on the new heads (nothing cosigned them), and counts the refusals.
    let vkeys = world.vkey_args();
    let (code, v) = verify_db(&world.a, &world.a.db_path(), &[]);
    assert_eq!((code, &v["report"]["appliance"]["witness_refusals"]), (0, &json!(2)), "{v}");
    let last = v["report"]["heads"].as_u64().unwrap() - 1;
    assert_fails_at(
        verify_db(&world.a, &world.a.db_path(), &vkeys),
        last,
        "cosigned by 0 of the 2 listed witnesses required",
    );
    assert!(world.b.sigterm().success());
    let (code, v) = verify_db(&world.b, &world.b.db_path(), &vkeys);
    assert_eq!(code, 0, "B is unaffected: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_down_for_several_seals_back_fills_every_head_and_a_kill_9_loses_nothing() {
    let mut world = World::new();
    world.a.spawn().expect("a starts");
    post_concurrently(&world.a, 10, 2).await;
    wait_cosigned(&world.a, 11, 2).await;
    let before = world.w2.stored_size(ORIGIN_A).unwrap();
    world.w2.kill9();
    // Several seals while w2 is gone: one batch per seal interval.
    let down_from = world.a.audit_get("/v1/heads/latest").await.json()["height"].as_u64().unwrap();
    for _ in 0..6 {
        post_concurrently(&world.a, 3, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = wait_ready(&world.a, "heads below quorum while w2 is down", |r| {
        r["heads_below_quorum"].as_u64() >= Some(5)
    })
    .await;
    assert_eq!(
        (r["witnesses"][0]["state"].as_str(), r["witnesses"][1]["state"].as_str()),
        (Some("ok"), Some("failing")),
        "{r}"
    );
    assert!(r["witnesses"][1]["last_error"].as_str().unwrap().contains("cannot connect"), "{r}");
    let down_to = world.a.audit_get("/v1/heads/latest").await.json()["height"].as_u64().unwrap();
    assert!(down_to >= down_from + 5, "{down_from}..{down_to}");

    // Back on the same port, with its state: it never answers below what it cosigned.
    world.w2.spawn().expect("w2 restarts");
    assert_eq!(world.w2.stored_size(ORIGIN_A), Some(before));
    wait_ready(&world.a, "every head back at quorum", |r| {
        r["heads_below_quorum"] == 0 && r["witnesses"][1]["state"] == "ok"
    })
    .await;
    assert!(world.w2.stored_size(ORIGIN_A) > Some(before));
    assert!(world.a.sigterm().success());
    // Every head, those sealed while w2 was down included, carries both cosignatures.
    for (height, names) in cosigners(&world.a.db_path()) {
        assert_eq!(names, ["witness.test/w1", "witness.test/w2"], "head {height}");
    }
    // The outage is on record: started when w2 stopped answering, ended when it cosigned again.
    let outages: Vec<Value> = world
        .a
        .own_records()
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b["type"] == "anchorlog.outage" && b["component"] == "witnessing")
        .collect();
    assert_eq!(outages.len(), 2, "{outages:?}");
    assert_eq!(
        (outages[0]["state"].as_str(), outages[1]["state"].as_str()),
        (Some("started"), Some("ended"))
    );
    assert!(outages[0]["error"].as_str().unwrap().starts_with("witness w2: cannot connect"), "{outages:?}");
    assert_eq!(outages[0]["since_ms"], outages[1]["since_ms"]);
    let (code, v) = verify_db(&world.a, &world.a.db_path(), &world.vkey_args());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["witnesses"]["heads_with_quorum"], v["report"]["heads"], "{v}");
}

/// A witness behind HTTPS: the appliance checks its server certificate against `ca_file` and cosigns through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_witness_is_reached_through_its_ca_file() {
    let mut a = Appliance::prepare(options(ORIGIN_A));
    let logs =
        format!("[[log]]\norigin = \"{ORIGIN_A}\"\npublic_key_files = [\"{}\"]\n", a.key_pem().display());
    let mut w = WitnessProcess::create("witness.test/tls", KeyBackend::File, true, &logs);
    w.spawn().expect("the TLS witness starts");
    assert!(w.url().starts_with("https://127.0.0.1:"), "{}", w.url());
    let entry = |ca: &Path| {
        format!("[[witness]]\nurl = \"{}\"\nvkey = \"{}\"\nca_file = \"{}\"\n", w.url(), w.vkey, ca.display())
    };
    a.options.extra_config = entry(&w.path("ca.pem"));
    a.spawn().expect("a starts");
    post_concurrently(&a, 5, 1).await;
    let head = wait_cosigned(&a, 6, 1).await;
    assert_eq!(head["cosignatures"][0]["witness"], "witness.test/tls");
    // With another CA the witness's certificate does not verify: the handshake fails and the appliance says so.
    let mut b = Appliance::prepare(options(ORIGIN_A));
    b.options.extra_config = entry(&b.path("certs/ca.pem"));
    b.spawn().expect("b starts");
    let r = wait_ready(&b, "a failing TLS witness", |r| r["witnesses"][0]["state"] == "failing").await;
    assert!(
        r["witnesses"][0]["last_error"].as_str().unwrap().starts_with("TLS handshake with 127.0.0.1:"),
        "{r}"
    );
}

/// `anchorlog dev` (SoftHSM) starts its witness, cosigns, and takes the witness down when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_cosigns_with_its_local_witness_and_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut dev = Command::new(kit::bin())
        .args(["dev", "--state-dir", dir.to_str().unwrap(), "--listen", &listen])
        .env("ANCHORLOG_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = dev.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("dev mode prints its address");
    assert_eq!(first, format!("anchorlog listening on https://{listen}"));
    let vkey_file = dir.join("keys/witness.vkey");
    let vkey = anchorlog_core::note::VerifierKey::parse(std::fs::read_to_string(&vkey_file).unwrap().trim())
        .unwrap();
    assert_eq!(vkey.name(), "witness.anchorlog.dev/w1");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join("witness/witness.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let config = std::fs::read_to_string(dir.join("anchorlog.toml")).unwrap();
    assert!(config.contains("[[witness]]\nname = \"dev-witness\"\nurl = \"http://127.0.0.1:"), "{config}");
    let certs = dir.join("certs");
    let tls = |who: &str| {
        anchorlog::tls::client_config(
            &certs.join("ca.pem"),
            &certs.join(format!("{who}.pem")),
            &certs.join(format!("{who}.key")),
        )
        .unwrap()
    };
    let addr = listen.parse().unwrap();
    let mut producer =
        anchorlog::client::Connection::connect(addr, "localhost", tls("producer")).await.unwrap();
    let r = producer.post_json("/v1/events", br#"{"type":"LOGIN","user":"alice"}"#).await.unwrap();
    assert_eq!(r.status, 200);
    let seq = r.json()["events"][0]["seq"].as_u64().unwrap();
    let mut auditor =
        anchorlog::client::Connection::connect(addr, "localhost", tls("auditor")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = auditor.get("/v1/heads/latest").await.unwrap().json();
        if h["tree_size"].as_u64() > Some(seq) && h["cosignatures"].as_array().map_or(0, Vec::len) == 1 {
            assert_eq!(h["cosignatures"][0]["witness"], "witness.anchorlog.dev/w1");
            break;
        }
        assert!(Instant::now() < deadline, "no cosigned head: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let witness_pid = witness_pid(&dir.join("witness/witness.toml")).expect("the dev witness runs");
    let _ = Command::new("kill").args(["-TERM", &dev.id().to_string()]).status();
    assert!(dev.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{witness_pid}")).exists() && !zombie(witness_pid) {
        assert!(Instant::now() < deadline, "the dev witness outlived dev mode");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The one README command's log verifies with the witness quorum.
    let out = Command::new(kit::bin())
        .args(["verify", "--db", dir.join("anchorlog.db").to_str().unwrap(), "--key"])
        .arg(dir.join("keys/signer.pem"))
        .arg("--witness")
        .arg(&vkey_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cosigned by 1 of the 1 required: witness.anchorlog.dev/w1+"), "{text}");
}

/// The pid of the `anchorlog witness --config <config>` process, from /proc.
fn witness_pid(config: &Path) -> Option<u32> {
    let wanted = config.to_str()?;
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        (args.iter().any(|a| a == "witness") && args.iter().any(|a| a == wanted)).then_some(pid)
    })
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Not a test of correctness: the figures of docs/PERFORMANCE.md ("Witnessing"). Posts one event every 100 ms for
/// 30 s to an appliance at the default cadence (seal every 1 s) with two witnesses, and reports the p50/p95/max
/// time from each event's 2xx to the moment its covering head had both cosignatures stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bench: run with --ignored, figures go to docs/PERFORMANCE.md"]
async fn bench_time_from_2xx_to_quorum() {
    let mut world = World::new();
    world.a.options.seal_interval_ms = 1_000;
    world.a.spawn().unwrap();
    let mut producer = world.a.connect("producer").await;
    let mut acked: Vec<(u64, i64)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let r = producer.post_json("/v1/events", br#"{"type":"LOGIN","user":"bench"}"#).await.unwrap();
        assert_eq!(r.status, 200);
        acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), store::now_ms()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_seq = acked.last().unwrap().0;
    wait_cosigned(&world.a, last_seq + 1, 2).await;
    assert!(world.a.sigterm().success());
    let conn = store::open_reader(&world.a.db_path()).unwrap();
    // Per event: 2xx → its covering head had both cosignatures stored; per head: seal → both stored.
    let mut lat: Vec<i64> = Vec::new();
    let mut lag: Vec<i64> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for &(seq, at) in &acked {
        let head = store::covering_head(&conn, seq).unwrap().unwrap();
        let cos = store::cosignatures::of_head(&conn, head.height).unwrap();
        assert_eq!(cos.len(), 2, "head {}", head.height);
        let done = cos.iter().map(|c| c.stored_at_ms).max().unwrap();
        lat.push(done - at);
        if seen.insert(head.height) {
            lag.push(done - head.sealed_at_ms);
        }
    }
    let pct = |v: &mut Vec<i64>, q: f64| {
        v.sort_unstable();
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    };
    eprintln!(
        "2xx -> head with 2 of 2 cosignatures: n={} p50={} ms p95={} ms max={} ms; seal -> both cosignatures \
         stored: heads={} p50={} ms p95={} ms max={} ms",
        lat.len(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.95),
        pct(&mut lat, 1.0),
        lag.len(),
        pct(&mut lag, 0.5),
        pct(&mut lag, 0.95),
        pct(&mut lag, 1.0)
    );
    assert!(pct(&mut lat, 0.95) <= 2_000, "p95 above the 2 s target");
}
