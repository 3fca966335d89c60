//! Keyrings (docs/FORMAT.md §20): the nodes of an active/standby pair each sign heads with their own key, so heads
//! pass from one key to another without a rotation record. A verifier given the keyring accepts that, says which
//! key signed which heads, and still fails a head signed outside the ring, by a retired key, or with a TPM counter
//! below that key's own previous head — at the exact height. Logs built with software keys: no SoftHSM needed.

/// The kit's tar helpers, alone: to re-sign a head inside a bundle.
#[path = "../softhsm-tests/kit/bundle.rs"]
mod kit_bundle;
/// The test kit's software-signed log builder, alone: these tests need no SoftHSM, TSA or appliance process.
#[path = "../softhsm-tests/kit/log_builder.rs"]
mod log_builder;

use anchorlog::store;
use anchorlog::verify;
use anchorlog_core::counter::CounterFailure;
use anchorlog_core::head::HeadCounter;
use anchorlog_core::verify::{Failure, Report, SignerRun, VerifyError, WalkOptions};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use log_builder::{resign_sql, tampered_db, LogBuilder, TestKey};
use std::path::Path;
use std::process::Command;

/// Node A's and node B's TPM counters.
const COUNTER_A: u32 = 0x0180_0010;
const COUNTER_B: u32 = 0x0180_0020;

/// Heads 0 and 1 by node A (`a`), a takeover: heads 2 and 3 by node B (`b`), and back: head 4 by A; five events
/// between heads. Node B's public key is in the database, as the appliance records every key that signs.
fn failover_log(path: &Path, a: &TestKey, b: &TestKey) {
    let mut l = LogBuilder::create(path, a);
    store::record_public_key(&l.conn, &b.public.key_id, &b.pem()).unwrap();
    l.head();
    l.events(5);
    l.head();
    l.key = b;
    l.events(5);
    l.head();
    l.events(5);
    l.head();
    l.key = a;
    l.events(5);
    l.head();
}

fn verify_db(db: &Path, keys: &[&TestKey], keyring: bool) -> Result<Report, VerifyError> {
    let c = store::open_reader(db).unwrap();
    let keys: Vec<_> = keys.iter().map(|k| k.public.clone()).collect();
    verify::verify_database_with(&c, &keys, WalkOptions { keyring, ..WalkOptions::default() })
}

fn failure(r: Result<Report, VerifyError>) -> Failure {
    match r {
        Err(VerifyError::Invalid(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn run(key_id: &TestKey, from_height: u64, to_height: u64) -> SignerRun {
    SignerRun { key_id: key_id.public.key_id.clone(), from_height, to_height }
}

#[test]
fn heads_pass_between_keyring_keys_and_the_report_says_which_key_signed_which_heads() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (TestKey::new(1), TestKey::new(2));
    let db = dir.path().join("ha.db");
    failover_log(&db, &a, &b);

    let r = verify_db(&db, &[&a, &b], true).unwrap();
    assert_eq!((r.events, r.heads), (20, 5));
    assert_eq!(r.signers, vec![run(&a, 0, 1), run(&b, 2, 3), run(&a, 4, 4)]);
    assert_eq!((r.key_id.as_str(), r.current_key_id.as_str()), (&*a.public.key_id, &*a.public.key_id));
    assert!(r.rotations.is_empty());
    // The keyring's order does not matter.
    assert_eq!(verify_db(&db, &[&b, &a], true).unwrap().signers, r.signers);

    // Without the keyring, the given keys only start the chain: node B's first head is an unannounced key.
    assert_eq!(
        failure(verify_db(&db, &[&a, &b], false)),
        Failure::UnannouncedKey {
            height: 2,
            key_id: b.public.key_id.clone(),
            current: a.public.key_id.clone()
        }
    );
    // A ring without node B fails at B's first head, naming B (its key is in the database) and the ring.
    let e = failure(verify_db(&db, &[&a], true));
    assert_eq!(
        e,
        Failure::OutsideKeyring { height: 2, key_id: b.public.key_id.clone(), ring: a.public.key_id.clone() }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "head height 2: signed by key {}, which is not in the keyring ({}); add it only if it is the signing key \
             of one of the log's nodes",
            b.public.key_id, a.public.key_id
        )
    );
}

#[test]
fn a_head_signed_outside_the_ring_fails_at_its_height() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (TestKey::new(1), TestKey::new(2), TestKey::new(3));
    let db = dir.path().join("ha.db");
    failover_log(&db, &a, &b);
    // The insider re-signs node B's second head with a key of their own, which the database does not hold.
    let t = tampered_db(&db, "outsider", &resign_sql(&db, 3, &c));
    let ring = format!("{}, {}", a.public.key_id, b.public.key_id);
    let e = failure(verify_db(&t, &[&a, &b], true));
    assert_eq!(e, Failure::NoKeyringKey { height: 3, ring: ring.clone() });
    assert_eq!(
        e.to_string(),
        format!("head height 3: signature verifies under no key of the keyring ({ring})")
    );
    // The same key recorded in the database is named.
    let t = tampered_db(
        &db,
        "outsider-known",
        &format!(
            "{}; INSERT INTO log_meta (key, value) VALUES ('key:{}', '{}')",
            resign_sql(&db, 3, &c),
            c.public.key_id,
            c.pem()
        ),
    );
    assert_eq!(
        failure(verify_db(&t, &[&a, &b], true)),
        Failure::OutsideKeyring { height: 3, key_id: c.public.key_id.clone(), ring }
    );
}

/// Heads 0 by node A, 1 by node B, 2 by A ending with A's rotation record (seq 6) to A2, 3 by A2, 4 by B; with
/// `a_signs_again`, head 5 by A, whose key that record retired.
fn rotated_ring_log(path: &Path, [a, b, a2]: [&TestKey; 3], a_signs_again: bool) {
    let mut l = LogBuilder::create(path, a);
    store::record_public_key(&l.conn, &b.public.key_id, &b.pem()).unwrap();
    l.head(); // 0: A
    l.events(3);
    l.key = b;
    l.head(); // 1: B, size 3
    l.key = a;
    l.events(3);
    let (seq, h) = l.rotate(a2, "node A's HSM replaced", None); // 2: A, ends with the record
    assert_eq!((seq, h.height, h.tree_size), (6, 2, 7));
    l.events(2);
    l.head(); // 3: A2, size 9
    l.key = b;
    l.events(2);
    l.head(); // 4: B, size 11
    if a_signs_again {
        l.key = a;
        l.events(1);
        l.head(); // 5: A, retired
    }
}

/// Node A rotates its key (A → A2) while node B holds the other half of the ring: A2 joins the ring through the
/// record A signed, and A never signs again.
#[test]
fn a_rotation_inside_a_keyring_brings_the_new_key_in_and_retires_the_old_one_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, a2) = (TestKey::new(1), TestKey::new(2), TestKey::new(4));
    let db = dir.path().join("rotated.db");
    rotated_ring_log(&db, [&a, &b, &a2], false);
    let r = verify_db(&db, &[&a, &b], true).unwrap();
    assert_eq!(r.signers, vec![run(&a, 0, 0), run(&b, 1, 1), run(&a, 2, 2), run(&a2, 3, 3), run(&b, 4, 4)]);
    assert_eq!(r.rotations.len(), 1);
    assert_eq!((r.rotations[0].seq, r.rotations[0].height), (6, 2));

    let db = dir.path().join("retired.db");
    rotated_ring_log(&db, [&a, &b, &a2], true);
    let e = failure(verify_db(&db, &[&a, &b], true));
    let ring = format!("one of the keyring's keys ({}, {})", b.public.key_id, a2.public.key_id);
    assert_eq!(
        e,
        Failure::RetiredKey {
            height: 5,
            key_id: a.public.key_id.clone(),
            seq: 6,
            retired_at: 2,
            current: ring.clone()
        }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "head height 5: signed by key {}, which the key rotation record at event seq 6 retired after head height 2; \
             later heads must be signed by {ring}",
            a.public.key_id
        )
    );
}

/// Heads 0 and 1 by node A (TPM counter 10, 11), 2 and 3 by node B (1, 2), 4 by A again: `resume_a` + 1.
fn counter_log(path: &Path, a: &TestKey, b: &TestKey, resume_a: u64) {
    let counter = |index, value| Some(HeadCounter { value, reset_count: 1, index });
    let mut l = LogBuilder::create(path, a);
    store::record_public_key(&l.conn, &b.public.key_id, &b.pem()).unwrap();
    l.counter = counter(COUNTER_A, 9);
    l.head(); // 0: A, 10
    l.events(2);
    l.head(); // 1: A, 11
    l.key = b;
    l.counter = counter(COUNTER_B, 0);
    l.events(2);
    l.head(); // 2: B, 1
    l.head(); // 3: B, 2
    l.key = a;
    l.counter = counter(COUNTER_A, resume_a);
    l.events(2);
    l.head(); // 4: A, resume_a + 1
}

/// Each node's heads carry its own TPM's counter: a head continues the counter of the last head its own key signed,
/// however many heads the other node signed between, and a counter below that is a rollback at its height.
#[test]
fn each_keys_tpm_counter_continues_from_that_keys_own_last_head() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (TestKey::new(1), TestKey::new(2));
    let db = dir.path().join("counters.db");
    counter_log(&db, &a, &b, 11);
    let r = verify_db(&db, &[&a, &b], true).unwrap();
    assert_eq!(r.signers, vec![run(&a, 0, 1), run(&b, 2, 3), run(&a, 4, 4)]);

    let db = dir.path().join("rolled-back.db");
    counter_log(&db, &a, &b, 10);
    assert_eq!(
        failure(verify_db(&db, &[&a, &b], true)),
        Failure::Counter(CounterFailure::NotIncreasing { height: 4, value: 11, previous: 11 })
    );
}

fn anchorlog(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_anchorlog")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_takes_a_keyring_file_and_prints_which_key_signed_which_heads() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (TestKey::new(1), TestKey::new(2));
    let db = dir.path().join("ha.db");
    failover_log(&db, &a, &b);
    let ring = dir.path().join("nodes.pem");
    std::fs::write(&ring, format!("# node A\n{}\n# node B\n{}", a.pem(), b.pem())).unwrap();
    let db_arg = db.to_str().unwrap();

    let (code, out, err) =
        anchorlog(&["verify", "--db", db_arg, "--keyring", ring.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs: Vec<(String, u64, u64)> = v["report"]["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key_id"].as_str().unwrap().to_string(),
                r["from_height"].as_u64().unwrap(),
                r["to_height"].as_u64().unwrap(),
            )
        })
        .collect();
    let (ida, idb) = (a.public.key_id.clone(), b.public.key_id.clone());
    assert_eq!(runs, vec![(ida.clone(), 0, 1), (idb.clone(), 2, 3), (ida.clone(), 4, 4)]);

    let (code, out, _) = anchorlog(&["verify", "--db", db_arg, "--keyring", ring.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("  signer:   heads 2..=3 signed by key {idb}\n")), "{out}");

    // The same two keys as --key, without --keyring: the chain, which fails at node B's first head (exit 3).
    let (ka, kb) = (a.write_pem(dir.path(), "a.pem"), b.write_pem(dir.path(), "b.pem"));
    let (code, out, _) = anchorlog(&[
        "verify",
        "--db",
        db_arg,
        "--key",
        ka.to_str().unwrap(),
        "--key",
        kb.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 3, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["height"], 2, "{v}");

    // --key and --keyring together: the key joins the ring.
    let only_b = dir.path().join("b-ring.pem");
    std::fs::write(&only_b, b.pem()).unwrap();
    let (code, out, err) = anchorlog(&[
        "verify",
        "--db",
        db_arg,
        "--key",
        ka.to_str().unwrap(),
        "--keyring",
        only_b.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // A keyring file without a key says what to give.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "node A\n").unwrap();
    let (code, _, err) = anchorlog(&["verify", "--db", db_arg, "--keyring", empty.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("holds no PEM block: give the signer keys of the log's nodes"), "{err}");
}

/// Receipts from a log two nodes sign: with the keyring, a head of either node verifies, each node's rotations are
/// followed on their own, and a head signed by a retired or unknown key fails at its height.
#[test]
fn receipts_verify_against_a_keyring_across_nodes_and_rotations() {
    use anchorlog_core::receipt;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, a2) = (TestKey::new(1), TestKey::new(2), TestKey::new(4));
    let db = dir.path().join("rotated.db");
    rotated_ring_log(&db, [&a, &b, &a2], false);
    let c = store::open_reader(&db).unwrap();
    let ring = [a.public.clone(), b.public.clone()];

    // Seq 9 lies under head 4, node B's, after node A's rotation (carried).
    let under_b = anchorlog::receipt::build(&c, 9).unwrap();
    assert_eq!((under_b.head.height, under_b.key_rotations.len()), (4, 1));
    let ok = receipt::verify_keyring(&under_b, &ring, None, None, None).unwrap();
    assert_eq!((ok.key_id.as_str(), ok.rotations.len()), (&*b.public.key_id, 1));
    // As a chain from node A's key, node B's head is unannounced.
    assert_eq!(
        receipt::verify_keys(&under_b, &ring, None, None, None).unwrap_err(),
        Failure::UnannouncedKey {
            height: 4,
            key_id: b.public.key_id.clone(),
            current: a2.public.key_id.clone()
        }
    );
    // Seq 7 lies under head 3, A2's: reached through the rotation proof from A.
    let under_a2 = anchorlog::receipt::build(&c, 7).unwrap();
    assert_eq!(receipt::verify_keyring(&under_a2, &ring, None, None, None).unwrap().key_id, a2.public.key_id);
    let mut bare = under_a2.clone();
    bare.key_rotations.clear();
    let ids = format!("{}, {}", a.public.key_id, b.public.key_id);
    assert_eq!(
        receipt::verify_keyring(&bare, &ring, None, None, None).unwrap_err(),
        Failure::NoKeyringKey { height: 3, ring: ids }
    );
    // Node B's head re-signed with node A's retired key.
    let mut forged = under_b.clone();
    forged.head.signature = B64.encode(a.sign(forged.head.checkpoint.as_bytes()));
    assert_eq!(
        receipt::verify_keyring(&forged, &ring, None, None, None).unwrap_err(),
        Failure::RetiredKey {
            height: 4,
            key_id: a.public.key_id.clone(),
            seq: 6,
            retired_at: 2,
            current: format!("one of the keyring's keys ({}, {})", b.public.key_id, a2.public.key_id),
        }
    );

    // The CLI: --keyring on verify-receipt.
    let file = dir.path().join("receipt.json");
    std::fs::write(&file, serde_json::to_vec(&under_b).unwrap()).unwrap();
    let ring_file = dir.path().join("nodes.pem");
    std::fs::write(&ring_file, format!("{}{}", a.pem(), b.pem())).unwrap();
    let (code, out, err) = anchorlog(&[
        "verify-receipt",
        file.to_str().unwrap(),
        "--keyring",
        ring_file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["report"]["key_id"], b.public.key_id.as_str(), "{v}");
    let (code, out, _) = anchorlog(&[
        "verify-receipt",
        file.to_str().unwrap(),
        "--key",
        a.write_pem(dir.path(), "a.pem").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 3, "{out}");
}

/// Bundles of a log two nodes sign: with the keyring, whole or from an anchor past node A's rotation (the rotation
/// proof before the range followed per key), they verify and say which key signed which heads; with node A's key
/// alone as a chain they fail at node B's first head; a head re-signed with the retired key fails at its height.
#[test]
fn bundles_verify_against_a_keyring_whole_and_from_an_anchor_past_a_rotation() {
    use anchorlog::bundle;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, a2) = (TestKey::new(1), TestKey::new(2), TestKey::new(4));
    let db = dir.path().join("rotated.db");
    rotated_ring_log(&db, [&a, &b, &a2], false);
    let c = store::open_reader(&db).unwrap();
    let export = |from: u64, to: u64, name: &str| {
        let out = dir.path().join(name);
        bundle::export(&c, from, to, None, std::fs::File::create(&out).unwrap(), &mut |_, _| {}).unwrap();
        out
    };
    let ring = [a.public.clone(), b.public.clone()];
    let verify = |tar: &Path, keyring: bool| {
        bundle::verify_bundle_progress(tar, &ring, keyring, None, None, None, &mut |_| {})
    };

    let whole = export(0, 4, "whole.tar");
    let r = verify(&whole, true).unwrap().report;
    assert_eq!(r.signers, vec![run(&a, 0, 0), run(&b, 1, 1), run(&a, 2, 2), run(&a2, 3, 3), run(&b, 4, 4)]);
    assert_eq!(
        failure(verify(&whole, false).map(|b| b.report)),
        Failure::UnannouncedKey {
            height: 1,
            key_id: b.public.key_id.clone(),
            current: a.public.key_id.clone()
        }
    );
    // From head 4 (anchor: head 3, A2's): the rotation A → A2 lies before the range, carried as a proof.
    let tail = export(4, 4, "tail.tar");
    let r = verify(&tail, true).unwrap().report;
    assert_eq!(r.signers, vec![run(&b, 4, 4)]);
    // From head 3 (anchor: head 2, node A's last, ending with its rotation record): A2 signs the first head.
    let after_rotation = export(3, 4, "after-rotation.tar");
    let r = verify(&after_rotation, true).unwrap().report;
    assert_eq!(r.signers, vec![run(&a2, 3, 3), run(&b, 4, 4)]);
    // The CLI, with a keyring file.
    let ring_file = dir.path().join("nodes.pem");
    std::fs::write(&ring_file, format!("{}{}", a.pem(), b.pem())).unwrap();
    let (code, out, err) =
        anchorlog(&["verify", tail.to_str().unwrap(), "--keyring", ring_file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}{err}");

    // Head 4 re-signed with node A's retired key, then exported: fails at height 4.
    let forged = tampered_db(&db, "forged", &resign_sql(&db, 4, &a));
    let fc = store::open_reader(&forged).unwrap();
    let forged_tar = dir.path().join("forged.tar");
    bundle::export(&fc, 0, 4, None, std::fs::File::create(&forged_tar).unwrap(), &mut |_, _| {}).unwrap();
    let e = failure(verify(&forged_tar, true).map(|b| b.report));
    assert!(matches!(&e, Failure::RetiredKey { height: 4, retired_at: 2, .. }), "{e}");
}

/// Writes a keyring file holding `keys`' PEM blocks, with a comment line before each (as an operator might).
fn ring_file(dir: &Path, name: &str, keys: &[&TestKey]) -> std::path::PathBuf {
    let path = dir.join(name);
    let text: String = keys.iter().enumerate().map(|(i, k)| format!("# node {i}\n{}", k.pem())).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// The independent Python verifier (`tests/verify_bundle.py`, which knows nothing of the Rust code) with `args` →
/// (exit code, its stdout trimmed).
fn python(args: &[&Path]) -> (i32, String) {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_bundle.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.stderr.is_empty(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

/// The Python verifier's report lines for `runs` of signers, as the Rust verifier reports them.
fn signer_lines(runs: &[SignerRun]) -> String {
    runs.iter()
        .map(|r| format!("signer: heads {}..={} signed by key {}\n", r.from_height, r.to_height, r.key_id))
        .collect()
}

/// Exports heads `from..=to` of the log at `db` as a bundle at `dir/name`.
fn export(db: &Path, from: u64, to: u64, dir: &Path, name: &str) -> std::path::PathBuf {
    let c = store::open_reader(db).unwrap();
    let out = dir.join(name);
    anchorlog::bundle::export(&c, from, to, None, std::fs::File::create(&out).unwrap(), &mut |_, _| {})
        .unwrap();
    out
}

/// The bundle `tar` with head `height`'s signature replaced by `key`'s, as `name`: an insider's forgery.
fn resigned(tar: &Path, height: u64, key: &TestKey, name: &str) -> std::path::PathBuf {
    let mut members = kit_bundle::tar_members(tar);
    let text = members.iter().find(|(n, _)| *n == format!("heads/{height}.txt")).unwrap().1.clone();
    let sig = members.iter_mut().find(|(n, _)| *n == format!("heads/{height}.sig")).unwrap();
    sig.1 = key.sign(&text);
    let out = tar.with_file_name(name);
    kit_bundle::write_tar(&out, &members);
    out
}

/// The Rust verifier's failure on the bundle `tar` with the keyring `ring`.
fn rust_bundle_failure(tar: &Path, ring: &[&TestKey]) -> Failure {
    let ring: Vec<_> = ring.iter().map(|k| k.public.clone()).collect();
    failure(
        anchorlog::bundle::verify_bundle_progress(tar, &ring, true, None, None, None, &mut |_| {})
            .map(|b| b.report),
    )
}

/// The Python verifier takes a keyring as the Rust verifier does: a two-node bundle passes with both nodes' keys and
/// reports which key signed which heads; with one node's key alone, or a stranger's key in the other's place, it
/// fails at the other node's first head, with the Rust verifier's words.
#[test]
fn the_python_verifier_takes_a_keyring_and_fails_at_the_first_head_signed_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c) = (TestKey::new(1), TestKey::new(2), TestKey::new(3));
    let db = d.join("ha.db");
    failover_log(&db, &a, &b);
    let tar = export(&db, 0, 4, d, "ha.tar");
    let signers = signer_lines(&[run(&a, 0, 1), run(&b, 2, 3), run(&a, 4, 4)]);
    let keyring = Path::new("--keyring");

    let both = ring_file(d, "nodes.pem", &[&a, &b]);
    assert_eq!(python(&[&tar, keyring, &both]), (0, format!("{signers}OK: 20 events, 5 heads")));
    // SIGNER.pem joins the ring.
    let (pa, only_b) = (a.write_pem(d, "a.pem"), ring_file(d, "b.pem", &[&b]));
    assert_eq!(python(&[&tar, &pa, keyring, &only_b]), (0, format!("{signers}OK: 20 events, 5 heads")));

    // Node A's key alone: as a chain, node B's first head does not verify; as a keyring, it names node B's key (the
    // bundle carries it in keys/) as outside the ring, as the Rust verifier does.
    assert_eq!(python(&[&tar, &pa]), (3, "FAILED: head height 2: signature does not verify".to_string()));
    let only_a = ring_file(d, "a-ring.pem", &[&a]);
    let e = rust_bundle_failure(&tar, &[&a]);
    assert_eq!(
        e,
        Failure::OutsideKeyring { height: 2, key_id: b.public.key_id.clone(), ring: a.public.key_id.clone() }
    );
    assert_eq!(python(&[&tar, keyring, &only_a]), (3, format!("FAILED: {e}")));
    // A stranger's key in node B's place.
    let stranger = ring_file(d, "stranger.pem", &[&a, &c]);
    let e = rust_bundle_failure(&tar, &[&a, &c]);
    let ring = format!("{}, {}", a.public.key_id, c.public.key_id);
    assert_eq!(e, Failure::OutsideKeyring { height: 2, key_id: b.public.key_id.clone(), ring });
    assert_eq!(python(&[&tar, keyring, &stranger]), (3, format!("FAILED: {e}")));

    // Node B's second head re-signed by a key the bundle does not carry: no key of the ring, at height 3.
    let forged_tar = resigned(&tar, 3, &c, "outsider.tar");
    let e = rust_bundle_failure(&forged_tar, &[&a, &b]);
    assert_eq!(
        e,
        Failure::NoKeyringKey { height: 3, ring: format!("{}, {}", a.public.key_id, b.public.key_id) }
    );
    assert_eq!(python(&[&forged_tar, keyring, &both]), (3, format!("FAILED: {e}")));

    // Node A's certificate instead of its public key (made with openssl from A's private key).
    let (key_a, cert_a) = (d.join("a.key"), d.join("a.crt"));
    std::fs::write(
        &key_a,
        p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&a.signing, Default::default()).unwrap().as_bytes(),
    )
    .unwrap();
    let made = Command::new("openssl")
        .args(["req", "-new", "-x509", "-subj", "/CN=node A", "-days", "1", "-key"])
        .arg(&key_a)
        .arg("-out")
        .arg(&cert_a)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let certified = d.join("certified.pem");
    std::fs::write(&certified, format!("{}{}", std::fs::read_to_string(&cert_a).unwrap(), b.pem())).unwrap();
    assert_eq!(python(&[&tar, keyring, &certified]), (0, format!("{signers}OK: 20 events, 5 heads")));

    // A keyring file without a PEM block says what to give (exit 1: unreadable input).
    let empty = d.join("empty.pem");
    std::fs::write(&empty, "node A\n").unwrap();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_bundle.py"))
        .args([tar.as_os_str(), keyring.as_os_str(), empty.as_os_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "keyring {} holds no PEM block: give the signer keys of the log's nodes as PEM public keys or \
             certificates, one after another\n",
            empty.display()
        )
    );
}

/// An event's payload erased after the bundle's range, its erasure record under a head node B signed after node A
/// signed every head of the range: the record's proof (erasure-records.jsonl) verifies under the keyring's keys at
/// the walk's end; under node A's key alone (as a chain or a ring) it fails at that head's height.
#[test]
fn the_python_verifier_checks_an_erasure_record_proof_past_the_range_against_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (TestKey::new(1), TestKey::new(2));
    let db = d.join("erased.db");
    let mut l = LogBuilder::create(&db, &a);
    store::record_public_key(&l.conn, &b.public.key_id, &b.pem()).unwrap();
    l.events(3);
    l.head(); // 0: A, size 3
    l.events(2);
    l.head(); // 1: A, size 5
    assert_eq!(l.erase(1, "dpo", "GDPR art. 17"), 5);
    l.key = &b;
    l.head(); // 2: B, size 6, after the bundle's range
    drop(l);
    let tar = export(&db, 0, 1, d, "erased.tar");
    let names: Vec<String> = kit_bundle::tar_members(&tar).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"erasure-records.jsonl".to_string()), "{names:?}");
    let keyring = Path::new("--keyring");
    let both = ring_file(d, "nodes.pem", &[&a, &b]);
    let signers = signer_lines(&[run(&a, 0, 1)]);
    assert_eq!(python(&[&tar, keyring, &both]), (0, format!("{signers}OK: 5 events, 2 heads")));
    let ring = [a.public.clone(), b.public.clone()];
    assert!(
        anchorlog::bundle::verify_bundle_progress(&tar, &ring, true, None, None, None, &mut |_| {}).is_ok()
    );

    // Node A's key alone: the chain's key at the walk's end did not sign head 2.
    let pa = a.write_pem(d, "a.pem");
    assert_eq!(python(&[&tar, &pa]), (3, "FAILED: head height 2: signature does not verify".to_string()));
    // As a keyring: the Rust verifier's words (keys/ holds the range's signers only, so node B is not named).
    let e = rust_bundle_failure(&tar, &[&a]);
    assert_eq!(e, Failure::NoKeyringKey { height: 2, ring: a.public.key_id.clone() });
    assert_eq!(python(&[&tar, keyring, &ring_file(d, "a-ring.pem", &[&a])]), (3, format!("FAILED: {e}")));
}

/// Node A rotates its key while node B signs too: the Python verifier follows the rotation per key inside the range
/// and from key-rotations.jsonl before an anchor, reports the signers as the Rust verifier does, and fails a head
/// signed by the retired key, and a TPM counter below its own key's last head, at the exact height.
#[test]
fn the_python_verifier_follows_rotations_and_counters_per_key_of_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, a2) = (TestKey::new(1), TestKey::new(2), TestKey::new(4));
    let db = d.join("rotated.db");
    rotated_ring_log(&db, [&a, &b, &a2], false);
    let keyring = Path::new("--keyring");
    let both = ring_file(d, "nodes.pem", &[&a, &b]);
    let rotation = "key rotation: after head height 2 (record at event seq 6)\n";

    let whole = export(&db, 0, 4, d, "whole.tar");
    let runs = [run(&a, 0, 0), run(&b, 1, 1), run(&a, 2, 2), run(&a2, 3, 3), run(&b, 4, 4)];
    assert_eq!(
        python(&[&whole, keyring, &both]),
        (0, format!("{rotation}{}OK: 11 events, 5 heads", signer_lines(&runs)))
    );
    // From head 4 (anchor: head 3, A2's, reached through the rotation proof before the range).
    let tail = export(&db, 4, 4, d, "tail.tar");
    assert_eq!(
        python(&[&tail, keyring, &both]),
        (0, format!("{}OK: 2 events, 1 heads", signer_lines(&runs[4..])))
    );
    // From head 3 (anchor: head 2, node A's last, ending with its rotation record): A2 signs the first head.
    let after = export(&db, 3, 4, d, "after-rotation.tar");
    assert_eq!(
        python(&[&after, keyring, &both]),
        (0, format!("{}OK: 4 events, 2 heads", signer_lines(&runs[3..])))
    );

    // Head 4 re-signed with node A's retired key.
    let forged_tar = resigned(&whole, 4, &a, "retired.tar");
    let e = rust_bundle_failure(&forged_tar, &[&a, &b]);
    assert!(matches!(&e, Failure::RetiredKey { height: 4, seq: 6, retired_at: 2, .. }), "{e}");
    assert_eq!(python(&[&forged_tar, keyring, &both]), (3, format!("FAILED: {e}")));

    // TPM counters per key: node A's head after node B's continues A's own last counter (11).
    let (ca, cb) = (TestKey::new(1), TestKey::new(2));
    let db = d.join("counters.db");
    counter_log(&db, &ca, &cb, 11);
    let tar = export(&db, 0, 4, d, "counters.tar");
    let runs = [run(&ca, 0, 1), run(&cb, 2, 3), run(&ca, 4, 4)];
    assert_eq!(python(&[&tar, keyring, &both]), (0, format!("{}OK: 6 events, 5 heads", signer_lines(&runs))));
    let db = d.join("rolled-back.db");
    counter_log(&db, &ca, &cb, 10);
    let tar = export(&db, 0, 4, d, "rolled-back.tar");
    assert_eq!(
        python(&[&tar, keyring, &both]),
        (
            3,
            format!(
                "FAILED: head height 4: TPM counter 11 is not greater than the previous head's 11 (the last head \
                 key {} signed)",
                ca.public.key_id
            )
        )
    );
    // From head 3 (anchor: head 2, node B's): the bundle holds no earlier head of node A, so A's head 4 starts A's
    // counter chain (docs/FORMAT.md §20, "Bundles and keyrings"), in both verifiers.
    let tail = export(&db, 3, 4, d, "rolled-back-tail.tar");
    let runs = [run(&cb, 3, 3), run(&ca, 4, 4)];
    assert_eq!(
        python(&[&tail, keyring, &both]),
        (0, format!("{}OK: 2 events, 2 heads", signer_lines(&runs)))
    );
    let ring = [ca.public.clone(), cb.public.clone()];
    let r = anchorlog::bundle::verify_bundle_progress(&tail, &ring, true, None, None, None, &mut |_| {});
    assert_eq!(r.unwrap().report.signers, runs);
}
