//! Key rotation on real parts (issue 13, point 4): the real binary, a SoftHSM token and a swtpm. 1,000 events, the
//! operator's two steps (`keys rotate`, then the configuration names the new key and the appliance restarts),
//! 1,000 more; `verify` with the first key alone follows the rotation in the database, in bundles (ours and the
//! Python verifier), in receipts and in `audit`; the insider who re-signs a head with the other key is caught at
//! that height; ambiguous starts are refused with what to do. And `keys csr` writes a request OpenSSL verifies.

mod kit;

use kit::bundle::python_verify;
use kit::{Appliance, Options, TestSigner};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Posts `n` events in requests of 100 (JSON arrays), tagged `tag`.
async fn post_batches(a: &Appliance, n: u64, tag: &str) {
    let mut conn = a.connect("producer").await;
    for chunk in 0..n / 100 {
        let body: Vec<Value> = (0..100)
            .map(|i| json!({"type": "LOGIN", "user": format!("{tag}-{}", chunk * 100 + i)}))
            .collect();
        let r = conn.post_json("/v1/events", &serde_json::to_vec(&body).unwrap()).await.expect("post");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

fn verify_db(a: &Appliance, db: &Path, key: &Path) -> (i32, Value) {
    a.cli_json(&["verify", "--db", db.to_str().unwrap(), "--key", key.to_str().unwrap()])
}

/// The stored heads' (height, tree size, key id), in height order.
fn heads(db: &Path) -> Vec<(u64, u64, String)> {
    let c = anchorlog::store::open_reader(db).unwrap();
    anchorlog::store::all_heads(&c).unwrap().into_iter().map(|h| (h.height, h.tree_size, h.key_id)).collect()
}

/// A copy of `db` whose head `height` carries `signature` (the insider re-signed it).
fn resigned(a: &Appliance, db: &Path, name: &str, height: u64, signature: &[u8]) -> PathBuf {
    let copy = a.path(name);
    std::fs::copy(db, &copy).unwrap();
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.execute_batch("DROP TRIGGER heads_no_update").unwrap();
    c.execute(
        "UPDATE heads SET signature = ?1 WHERE height = ?2",
        rusqlite::params![signature, height as i64],
    )
    .unwrap();
    copy
}

fn checkpoint(db: &Path, height: u64) -> String {
    let c = anchorlog::store::open_reader(db).unwrap();
    anchorlog::store::head(&c, height).unwrap().unwrap().checkpoint
}

/// The record's seq and body, and the head that ends with it, after the rotation was recorded.
fn rotation_record(a: &Appliance) -> (u64, Value) {
    let records: Vec<(u64, Value)> =
        a.own_records().into_iter().filter(|(_, b)| b["type"] == "anchorlog.key_rotation").collect();
    assert_eq!(records.len(), 1, "{records:?}");
    records[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softhsm_rotation_is_recorded_followed_from_the_first_key_and_tamper_is_caught() {
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    let first = a.path("first.pem");
    std::fs::copy(a.key_pem(), &first).unwrap();
    post_batches(&a, 1000, "before").await;
    a.wait_for_head(1001).await;
    let (code, out) = a.audit_as(None, &first, &[]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("first_seen")), "{out}");
    assert!(a.sigterm().success());
    let config = a.config_path();
    let config = config.to_str().unwrap();
    let old_id = heads(&a.db_path()).last().unwrap().2.clone();
    let show = a.anchorlog(&["keys", "show", "--config", config]);
    let old_cka_id =
        serde_json::from_slice::<Value>(&show.stdout).unwrap()["id"].as_str().unwrap().to_string();

    // Step 1: the new key. A PKCS#11 key needs a new label.
    let out = a.keys_rotate("annual rotation", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --new-key-label LABEL"), "{out:?}");
    let out = a.keys_rotate("annual rotation", &["--new-key-label", "head-signer-2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prepared: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(prepared["old_key_id"], old_id.as_str());
    let new_id = prepared["new_key_id"].as_str().unwrap().to_string();
    let new_cka_id = prepared["new_key"]["id"].as_str().unwrap().to_string();
    assert_ne!(new_cka_id, old_cka_id);
    assert_ne!(new_id, old_id);
    assert!(prepared["next"]
        .as_str()
        .unwrap()
        .starts_with("set signer.pkcs11.key_label = \"head-signer-2\""));
    let pending = a.path("anchorlog.db.key-rotation.json");
    assert_eq!(prepared["pending"], pending.to_str().unwrap());
    // Only one at a time.
    let again = a.keys_rotate("again", &["--new-key-label", "head-signer-3"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("a key rotation is already pending"),
        "{again:?}"
    );

    // The configuration still names the old key: refused, nothing written, the file says what to do.
    let before = heads(&a.db_path());
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 1: "), "{err}");
    assert!(
        err.contains(&format!(
            "a key rotation to key {new_id} is pending ({}) but the configuration still names the old key {old_id}. \
             To perform it, set signer.pkcs11.key_label = \"head-signer-2\" in the configuration",
            pending.display()
        )),
        "{err}"
    );
    assert_eq!(heads(&a.db_path()), before);

    // Step 2: the configuration names the new key; the start records the rotation.
    a.options.key_label = "head-signer-2".into();
    a.spawn().unwrap();
    assert!(!pending.exists(), "the pending file is removed once the rotation is in the log");
    let (seq, body) = rotation_record(&a);
    assert_eq!(body["old_key_id"], old_id.as_str());
    assert_eq!(body["new_key_id"], new_id.as_str());
    assert_eq!(body["reason"], "annual rotation");
    assert_eq!(body["new_counter_index"], Value::Null);
    assert!(body["new_public_key"].as_str().unwrap().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    // The start record precedes it in the same head; that head is the old key's last.
    let own = a.own_records();
    let start = own.iter().find(|(s, _)| *s == seq - 1).expect("the start record before the rotation");
    assert_eq!(
        (start.1["type"].as_str(), start.1["key_id"].as_str()),
        (Some("anchorlog.start"), Some(&*new_id))
    );
    let rotation_head = heads(&a.db_path()).into_iter().find(|(_, size, _)| *size > seq).unwrap();
    assert_eq!((rotation_head.1, rotation_head.2.as_str()), (seq + 1, old_id.as_str()));
    let rh = rotation_head.0;

    post_batches(&a, 1000, "after").await;
    let latest = a.wait_for_head(seq + 1001).await;
    assert_eq!(latest["key_id"], new_id.as_str());
    // The monitor follows the rotation from the key it stored (its --signer is still the first key).
    let (code, out) = a.audit_as(None, &first, &[]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("advanced")), "{out}");
    assert_eq!(out["key_rotations"][0]["height"], rh, "{out}");
    let state: Value = serde_json::from_slice(&std::fs::read(a.path("audit-state.json")).unwrap()).unwrap();
    assert_eq!(state["key_id"], new_id.as_str());
    let (code, out) = a.audit_as(None, &first, &[]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("unchanged")), "{out}");
    // With a keyring (the log's first key), a new monitor follows the rotation from the ring on every run.
    let state_file = a.path("audit-state.json");
    let chain_state = std::fs::read(&state_file).unwrap();
    std::fs::remove_file(&state_file).unwrap();
    let ring = a.path("ring.pem");
    std::fs::copy(&first, &ring).unwrap();
    let (code, out) = a.audit_as(None, &first, &["--keyring", ring.to_str().unwrap()]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("first_seen")), "{out}");
    assert_eq!(out["key_rotations"][0]["height"], rh, "{out}");
    let state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["key_id"], new_id.as_str());
    let (code, out) = a.audit_as(None, &first, &["--keyring", ring.to_str().unwrap()]);
    assert_eq!((code, out["outcome"].as_str()), (0, Some("unchanged")), "{out}");
    // A ring of another log's key: the latest head verifies under none of it (exit 3, bad head).
    std::fs::remove_file(&state_file).unwrap();
    let stranger = a.path("stranger.pem");
    let key = std::process::Command::new("sh")
        .args(["-c", "openssl ecparam -name prime256v1 -genkey -noout | openssl ec -pubout 2>/dev/null"])
        .output()
        .unwrap();
    std::fs::write(&stranger, &key.stdout).unwrap();
    let (code, out) = a.audit_as(None, &stranger, &["--keyring", stranger.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains(": signature verifies under no key of the keyring ("),
        "{out}"
    );
    std::fs::write(&state_file, chain_state).unwrap();
    // A receipt of an event after the rotation carries the record: the first key alone verifies it.
    let receipt = a.audit_get(&format!("/v1/events/{}/receipt", seq + 500)).await;
    assert_eq!(receipt.status, 200);
    let receipt_file = a.path("receipt.json");
    std::fs::write(&receipt_file, &receipt.body).unwrap();
    assert!(a.sigterm().success());
    let (code, v) =
        a.cli_json(&["verify-receipt", receipt_file.to_str().unwrap(), "--key", first.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["report"]["key_id"], new_id.as_str());
    assert_eq!(v["report"]["rotations"][0]["seq"], seq);

    // The database verifies with the first key alone and reports the rotation.
    let (code, v) = verify_db(&a, &a.db_path(), &first);
    assert_eq!(code, 0, "{v}");
    let r = &v["report"];
    assert_eq!(r["key_id"], old_id.as_str());
    assert_eq!(r["current_key_id"], new_id.as_str());
    assert_eq!(
        r["rotations"],
        json!([{"seq": seq, "height": rh, "old_key_id": old_id, "new_key_id": new_id,
                "reason": "annual rotation", "new_counter_index": null}])
    );
    assert_eq!(r["appliance"]["key_rotations"], 1);
    let text =
        a.anchorlog(&["verify", "--db", a.db_path().to_str().unwrap(), "--key", first.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "rotation: after head height {rh} (key rotation record at event seq {seq}): key {old_id} -> {new_id}, \
             reason \"annual rotation\""
        )),
        "{text}"
    );

    let genuine = a.copy_db("genuine.db");
    insider_resigning_is_caught(&mut a, &genuine, &first, (seq, rh), (&old_id, &new_id), |a, key, text| {
        a.pkcs11_tool_sign(&["--id", if key == "old" { &old_cka_id } else { &new_cka_id }], text)
    });
    bundles_verify_with_the_first_key(&a, &genuine, &first, rh);

    // A plain restart with the new key: reconciliation follows the chain from the first head's key.
    a.restore_db(&genuine);
    a.spawn().unwrap();
    post_batches(&a, 100, "restart").await;
    assert_eq!(a.wait_for_head(seq + 1101 + 2).await["key_id"], new_id.as_str());
    assert!(a.sigterm().success());
    let (code, v) = verify_db(&a, &a.db_path(), &first);
    assert_eq!((code, v["report"]["rotations"].as_array().map(Vec::len)), (0, Some(1)), "{v}");
    // Configured back to the old key: the log's chain holds the new one now; refused (exit 3) with what to do.
    a.options.key_label = "head-signer".into();
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3: "), "{err}");
    assert!(
        err.contains(&format!(
            "the log's heads are signed by key {new_id} (the key its chain holds after its last key rotation) but the \
             configured signer's key is {old_id}"
        )),
        "{err}"
    );
}

/// The insider re-signs one head before the rotation with the new key, and one after it with the old key (through
/// `sign(appliance, "old" | "new", text)`): `verify` with the first key names that height, and the appliance refuses
/// to start on either copy. Leaves the genuine database in place.
fn insider_resigning_is_caught(
    a: &mut Appliance,
    genuine: &Path,
    first: &Path,
    (seq, rh): (u64, u64),
    (old_id, new_id): (&str, &str),
    sign: impl Fn(&Appliance, &str, &[u8]) -> Vec<u8>,
) {
    let early = rh - 1;
    let sig = sign(a, "new", checkpoint(genuine, early).as_bytes());
    let early_db = resigned(a, genuine, "early.db", early, &sig);
    let (code, v) = verify_db(a, &early_db, first);
    assert_eq!((code, v["height"].as_u64()), (3, Some(early)), "{v}");
    assert_eq!(
        v["failure"],
        format!(
            "head height {early}: signed by key {new_id} but no key rotation record under a \
             head signed by {old_id} announces it"
        )
    );
    let late = rh + 2;
    let sig = sign(a, "old", checkpoint(genuine, late).as_bytes());
    let late_db = resigned(a, genuine, "late.db", late, &sig);
    let (code, v) = verify_db(a, &late_db, first);
    assert_eq!((code, v["height"].as_u64()), (3, Some(late)), "{v}");
    assert_eq!(
        v["failure"],
        format!(
            "head height {late}: signed by key {old_id}, which the key rotation record at event \
             seq {seq} retired after head height {rh}; later heads must be signed by {new_id}"
        )
    );
    for (db, height) in [(&late_db, late), (&early_db, early)] {
        a.restore_db(db);
        let err = a.spawn().unwrap_err();
        assert!(err.starts_with("exit status: 3: "), "{err}");
        assert!(err.contains(&format!("head height {height}: signed by key")), "{err}");
    }
    a.restore_db(genuine);
}

/// Bundles of the genuine database across the rotation (head `rh` ends with its record), starting right after it
/// and later: `verify` with the first key and the Python verifier accept each.
fn bundles_verify_with_the_first_key(a: &Appliance, genuine: &Path, first: &Path, rh: u64) {
    let last = heads(genuine).last().unwrap().0;
    for from in [0, rh + 1, last] {
        let tar = a.path(&format!("from-{from}.tar"));
        let out = a.anchorlog(&[
            "export",
            "--db",
            genuine.to_str().unwrap(),
            "--from-height",
            &from.to_string(),
            "--out",
            tar.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (code, v) = a.cli_json(&["verify", tar.to_str().unwrap(), "--key", first.to_str().unwrap()]);
        assert_eq!(code, 0, "from {from}: {v}");
        assert_eq!(v["report"]["heads"], last - from + 1, "from {from}: {v}");
        let (code, text, _) = python_verify(&tar, first, &[]);
        assert_eq!(code, 0, "from {from}: {text}");
        let _ = std::fs::remove_file(&tar);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_record_written_behind_the_appliances_back_is_refused_at_start() {
    use anchorlog::ledger::{appender, internal};
    use anchorlog_core::merkle;
    use p256::pkcs8::EncodePublicKey as _;
    let mut a = Appliance::start();
    post_batches(&a, 100, "x").await;
    a.wait_for_head(100).await;
    assert!(a.sigterm().success());
    // Root appends a well-formed rotation record to a key of its own at the tail: the appliance would seal it under
    // the current key and hand the log over. It seals its own records in the same transaction, so it refuses.
    let old_id = heads(&a.db_path()).last().unwrap().2.clone();
    let theirs = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let der = theirs.verifying_key().to_public_key_der().unwrap();
    let pem = anchorlog::signer::x509::public_key_pem(der.as_bytes()).unwrap();
    let their_id = anchorlog_core::key::key_id(der.as_bytes());
    let ev =
        internal::internal_event(&internal::key_rotation_body(&old_id, &their_id, &pem, "takeover", None));
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    let seq = anchorlog::store::event_count(&conn).unwrap();
    let entry = appender::entry_of(&ev, seq);
    anchorlog::store::insert_event(
        &conn,
        &anchorlog::store::EventRow {
            seq,
            received_at_ns: ev.received_at_ns,
            producer: "anchorlog",
            source: "anchorlog",
            format: "anchorlog",
            source_id: None,
            entry: &entry,
            leaf_hash: &merkle::leaf_hash(&entry),
            salt: &ev.salt,
            body: &ev.body,
        },
    )
    .unwrap();
    drop(conn);
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3: "), "{err}");
    assert!(
        err.contains(&format!("event seq {seq}: key rotation record is invalid: no head covers it")),
        "{err}"
    );
    // An auditor sees it as not in effect: reported, not followed.
    let (code, v) = verify_db(&a, &a.db_path(), &a.key_pem());
    assert_eq!((code, v["report"]["unsealed_rotation"].as_u64()), (0, Some(seq)), "{v}");
}

#[test]
fn keys_csr_writes_a_request_openssl_verifies_for_the_devices_key() {
    let a = Appliance::prepare(Options::default());
    let config = a.config_path();
    let csr = a.path("signer.csr");
    let out = a.anchorlog(&[
        "keys",
        "csr",
        "--config",
        config.to_str().unwrap(),
        "--out",
        csr.to_str().unwrap(),
        "--subject",
        "CN=anchorlog head signer,O=Example Corp",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verify =
        Command::new("openssl").args(["req", "-verify", "-noout", "-in"]).arg(&csr).output().unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let said =
        String::from_utf8_lossy(&verify.stderr).into_owned() + &String::from_utf8_lossy(&verify.stdout);
    assert!(said.contains("verify OK"), "{said}");
    // The public key in it is the device's, as `keys export` wrote it.
    let pubkey =
        Command::new("openssl").args(["req", "-pubkey", "-noout", "-in"]).arg(&csr).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&pubkey.stdout), std::fs::read_to_string(a.key_pem()).unwrap());
    let text = Command::new("openssl").args(["req", "-noout", "-text", "-in"]).arg(&csr).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("URI:urn:anchorlog:origin:anchorlog.test/e2e"), "{text}");
    assert!(text.contains("Subject: O = Example Corp, CN = anchorlog head signer"), "{text}");
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_rotation_to_a_new_handle_keeps_the_counter_and_is_followed_from_the_first_key() {
    use anchorlog::signer::tpm::{TpmSettings, TpmSigner};
    use kit::{TPM_COUNTER_INDEX, TPM_HANDLE};
    const NEW_HANDLE: u32 = 0x8101_0011;
    let options = Options { signer: TestSigner::Tpm, record_appliance_events: true, ..Options::default() };
    let mut a = Appliance::start_with(options);
    let first = a.path("first.pem");
    std::fs::copy(a.key_pem(), &first).unwrap();
    post_batches(&a, 1000, "before").await;
    a.wait_for_head(1001).await;
    assert!(a.sigterm().success());
    let out = a.keys_rotate("TPM key rotation", &["--new-handle", "0x81010011"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prepared: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        prepared["next"].as_str().unwrap().starts_with(
            "set signer.tpm.handle = \"0x81010011\" and signer.tpm.counter_index = \"0x01800010\" in the configuration"
        ),
        "{prepared}"
    );
    let (old_id, new_id) = (
        prepared["old_key_id"].as_str().unwrap().to_string(),
        prepared["new_key_id"].as_str().unwrap().to_string(),
    );
    a.options.tpm_handle = NEW_HANDLE;
    a.spawn().unwrap();
    let (seq, body) = rotation_record(&a);
    assert_eq!(body["new_counter_index"], format!("{TPM_COUNTER_INDEX:#010x}"));
    assert_eq!((body["old_key_id"].as_str(), body["new_key_id"].as_str()), (Some(&*old_id), Some(&*new_id)));
    post_batches(&a, 1000, "after").await;
    a.wait_for_head(seq + 1001).await;
    assert!(a.sigterm().success());

    let (code, v) = verify_db(&a, &a.db_path(), &first);
    assert_eq!(code, 0, "{v}");
    let rot = &v["report"]["rotations"][0];
    let rh = rot["height"].as_u64().unwrap();
    assert_eq!((rot["seq"].as_u64(), rot["new_counter_index"].as_str()), (Some(seq), Some("0x01800010")));
    assert_eq!(v["report"]["current_key_id"], new_id.as_str());
    // The counter continues across the rotation: the first head under the new key carries the next value.
    let counter = |h: u64| {
        anchorlog_core::head::Checkpoint::parse(&checkpoint(&a.db_path(), h)).unwrap().counter.unwrap()
    };
    assert_eq!((counter(rh + 1).index, counter(rh + 1).value), (TPM_COUNTER_INDEX, counter(rh).value + 1));

    let genuine = a.copy_db("genuine.db");
    let tcti = a.tpm.as_ref().unwrap().tcti();
    insider_resigning_is_caught(&mut a, &genuine, &first, (seq, rh), (&old_id, &new_id), |_, key, text| {
        // The insider uses the TPM directly while the appliance is stopped.
        let handle = if key == "old" { TPM_HANDLE } else { NEW_HANDLE };
        let settings = TpmSettings { tcti: tcti.clone(), handle, counter_index: None };
        TpmSigner::open(&settings, None).unwrap().sign(text).unwrap()
    });
    bundles_verify_with_the_first_key(&a, &genuine, &first, rh);
    // A plain restart with the new key: the counter check at start and the chain continue.
    a.spawn().unwrap();
    post_batches(&a, 100, "restart").await;
    a.wait_for_head(seq + 1101).await;
    assert!(a.sigterm().success());
    let (code, v) = verify_db(&a, &a.db_path(), &first);
    assert_eq!((code, v["report"]["current_key_id"].as_str()), (0, Some(&*new_id)), "{v}");
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_rotation_with_a_fresh_counter_restarts_the_counter_chain() {
    const NEW_HANDLE: u32 = 0x8101_0012;
    const NEW_COUNTER: u32 = 0x0180_0011;
    let options = Options { signer: TestSigner::Tpm, record_appliance_events: true, ..Options::default() };
    let mut a = Appliance::start_with(options);
    let first = a.path("first.pem");
    std::fs::copy(a.key_pem(), &first).unwrap();
    post_batches(&a, 100, "before").await;
    a.wait_for_head(101).await;
    assert!(a.sigterm().success());
    let out =
        a.keys_rotate("new counter", &["--new-handle", "0x81010012", "--new-counter-index", "0x01800011"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prepared: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(prepared["new_key"]["counter"]["index"], "0x01800011", "{prepared}");
    // The start announces the counter the configuration names for the new key: configure both, as printed.
    assert!(
        prepared["next"].as_str().unwrap().contains("signer.tpm.counter_index = \"0x01800011\""),
        "{prepared}"
    );
    a.options.tpm_handle = NEW_HANDLE;
    a.options.tpm_counter_index = NEW_COUNTER;
    a.spawn().unwrap();
    let (seq, body) = rotation_record(&a);
    assert_eq!(body["new_counter_index"], "0x01800011");
    post_batches(&a, 100, "after").await;
    a.wait_for_head(seq + 101).await;
    assert!(a.sigterm().success());
    let (code, v) = verify_db(&a, &a.db_path(), &first);
    assert_eq!(code, 0, "{v}");
    let rh = v["report"]["rotations"][0]["height"].as_u64().unwrap();
    let counter = |h: u64| {
        anchorlog_core::head::Checkpoint::parse(&checkpoint(&a.db_path(), h)).unwrap().counter.unwrap()
    };
    // The new counter starts afresh (its first value is 1), below the old counter's last value.
    assert_eq!(counter(rh).index, kit::TPM_COUNTER_INDEX);
    assert_eq!((counter(rh + 1).index, counter(rh + 1).value), (NEW_COUNTER, 1));
    assert!(counter(rh).value > 1);
    // And a restart checks the database against the new counter.
    a.spawn().unwrap();
    assert!(a.sigterm().success());
    assert_eq!(verify_db(&a, &a.db_path(), &first).0, 0);
}
