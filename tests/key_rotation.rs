//! The key chain (docs/FORMAT.md §20) on logs built with software keys: a verifier given the log's first key
//! follows every key rotation record, and any other change of key fails at the exact head or record, in the
//! database, in bundles (ours and the Python verifier) and in receipts.

/// The kit's bundle helpers (tar members, the Python verifier), alone like the log builder.
#[path = "../softhsm-tests/kit/bundle.rs"]
mod kit_bundle;
/// The test kit's software-signed log builder, alone: these tests need no SoftHSM, TSA or appliance process.
#[path = "../softhsm-tests/kit/log_builder.rs"]
mod log_builder;

use anchorlog::bundle;
use anchorlog::receipt;
use anchorlog::store;
use anchorlog::verify;
use anchorlog_core::head::HeadCounter;
use anchorlog_core::verify::{Failure, VerifyError, WalkOptions};
use log_builder::{resign_sql as resign, tampered_db as tampered, LogBuilder, TestKey};
use std::path::Path;

/// Heights and seqs of the log [`rotated_log`] builds.
const ROTATION_SEQ: u64 = 15;
const ROTATION_HEIGHT: u64 = 2;

/// Heads 0 (size 0), 1 (10 events) by `k1`; head 2 ends with the rotation record to `k2` (seq 15, size 16), signed
/// by `k1`; heads 3 (heartbeat, size 16), 4 (size 26) and 5 (size 30) by `k2`.
fn rotated_log(path: &Path, k1: &TestKey, k2: &TestKey) {
    let mut b = LogBuilder::create(path, k1);
    b.head();
    b.events(10);
    b.head();
    b.events(5);
    let (seq, head) = b.rotate(k2, "annual rotation", None);
    assert_eq!((seq, head.height, head.tree_size), (ROTATION_SEQ, ROTATION_HEIGHT, 16));
    b.head();
    b.events(10);
    b.head();
    b.events(4);
    b.head();
}

fn verify_db(db: &Path, keys: &[&TestKey]) -> Result<anchorlog_core::verify::Report, VerifyError> {
    let c = store::open_reader(db).unwrap();
    let keys: Vec<_> = keys.iter().map(|k| k.public.clone()).collect();
    verify::verify_database_with(&c, &keys, WalkOptions::default())
}

fn failure(r: Result<anchorlog_core::verify::Report, VerifyError>) -> Failure {
    match r {
        Err(VerifyError::Invalid(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn the_chain_is_followed_from_the_first_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (TestKey::new(1), TestKey::new(2));
    let db = dir.path().join("a.db");
    rotated_log(&db, &k1, &k2);
    let r = verify_db(&db, &[&k1]).unwrap();
    assert_eq!((r.events, r.heads), (30, 6));
    assert_eq!(r.key_id, k1.public.key_id);
    assert_eq!(r.current_key_id, k2.public.key_id);
    assert_eq!(r.rotations.len(), 1);
    let rot = &r.rotations[0];
    assert_eq!((rot.seq, rot.height), (ROTATION_SEQ, ROTATION_HEIGHT));
    assert_eq!((rot.old_key_id.as_str(), rot.new_key_id.as_str()), (&*k1.public.key_id, &*k2.public.key_id));
    assert_eq!((rot.reason.as_str(), rot.new_counter_index.as_deref()), ("annual rotation", None));
    assert_eq!(r.appliance.key_rotations, 1);
    assert_eq!(r.unsealed_rotation, None);
    // The new key alone does not vouch for the old key's heads; both given, the chain starts with the first.
    assert_eq!(
        failure(verify_db(&db, &[&k2])),
        Failure::UntrustedKey {
            height: 0,
            key_id: k1.public.key_id.clone(),
            given: k2.public.key_id.clone()
        }
    );
    let both = verify_db(&db, &[&k2, &k1]).unwrap();
    assert_eq!((both.key_id.as_str(), both.rotations.len()), (&*k1.public.key_id, 1));
    // A key the log never used: nothing verifies.
    let k3 = TestKey::new(3);
    assert_eq!(
        failure(verify_db(&db, &[&k3])),
        Failure::UntrustedKey {
            height: 0,
            key_id: k1.public.key_id.clone(),
            given: k3.public.key_id.clone()
        }
    );
}

#[test]
fn every_other_change_of_key_fails_at_its_head_or_record() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, k3) = (TestKey::new(1), TestKey::new(2), TestKey::new(3));
    let db = dir.path().join("a.db");
    rotated_log(&db, &k1, &k2);
    let (id1, id2) = (k1.public.key_id.clone(), k2.public.key_id.clone());
    // A head before the rotation re-signed by the new key (the attacker holds the HSM, or stole the new key).
    let t = tampered(&db, "early", &resign(&db, 1, &k2));
    assert_eq!(
        failure(verify_db(&t, &[&k1])),
        Failure::UnannouncedKey { height: 1, key_id: id2.clone(), current: id1.clone() }
    );
    assert_eq!(
        failure(verify_db(&t, &[&k1])).to_string(),
        format!("head height 1: signed by key {id2} but no key rotation record under a head signed by {id1} announces it")
    );
    // The rotation head itself re-signed by the new key: the old key must sign the head that ends with its record.
    let t = tampered(&db, "rotation-head", &resign(&db, ROTATION_HEIGHT, &k2));
    assert_eq!(
        failure(verify_db(&t, &[&k1])),
        Failure::UnannouncedKey { height: ROTATION_HEIGHT, key_id: id2.clone(), current: id1.clone() }
    );
    // A head after the rotation signed by the retired key.
    let t = tampered(&db, "late", &resign(&db, 4, &k1));
    assert_eq!(
        failure(verify_db(&t, &[&k1])),
        Failure::RetiredKey {
            height: 4,
            key_id: id1.clone(),
            seq: ROTATION_SEQ,
            retired_at: 2,
            current: id2.clone()
        }
    );
    // A third key after the rotation without a record; named when the database holds its public key.
    let t = tampered(&db, "third", &resign(&db, 5, &k3));
    assert_eq!(failure(verify_db(&t, &[&k1])), Failure::BadSignature { height: 5, key_id: id2.clone() });
    store::record_public_key(&rusqlite::Connection::open(&t).unwrap(), &k3.public.key_id, &k3.pem()).unwrap();
    assert_eq!(
        failure(verify_db(&t, &[&k1])),
        Failure::UnannouncedKey { height: 5, key_id: k3.public.key_id.clone(), current: id2.clone() }
    );
    // The record removed (its body replaced by an ordinary event's would change the leaf; the insider rewrites the
    // entry as a producer's event and re-signs every head with the keys): a switch without a record.
    let mut b = LogBuilder::create(&dir.path().join("switch.db"), &k1);
    b.head();
    b.events(10);
    b.head();
    store::record_public_key(&b.conn, &id2, &k2.pem()).unwrap();
    b.key = &k2;
    b.events(3);
    b.head();
    let switched = dir.path().join("switch.db");
    drop(b);
    assert_eq!(
        failure(verify_db(&switched, &[&k1])),
        Failure::UnannouncedKey { height: 2, key_id: id2.clone(), current: id1.clone() }
    );
}

#[test]
fn a_rotation_record_must_be_well_formed_and_end_the_old_keys_last_head() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, k3) = (TestKey::new(1), TestKey::new(2), TestKey::new(3));
    let id1 = k1.public.key_id.clone();
    // Events after the record before the head that covers it.
    let path = dir.path().join("not-last.db");
    let mut b = LogBuilder::create(&path, &k1);
    b.head();
    let body = anchorlog::ledger::internal::key_rotation_body(&id1, &k2.public.key_id, &k2.pem(), "r", None);
    let seq = b.appliance_event(body.to_string().as_bytes());
    b.events(2);
    b.head();
    drop(b);
    assert_eq!(failure(verify_db(&path, &[&k1])), Failure::KeyRotationNotLast { seq, height: 1 });
    // Malformed bodies fail at the record's seq, before any head covers it.
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "wrong old key",
            anchorlog::ledger::internal::key_rotation_body(
                &k3.public.key_id,
                &k2.public.key_id,
                &k2.pem(),
                "r",
                None,
            ),
            "it names",
        ),
        (
            "key id not the key's",
            anchorlog::ledger::internal::key_rotation_body(&id1, &k3.public.key_id, &k2.pem(), "r", None),
            "new_public_key has key id",
        ),
        (
            "to itself",
            anchorlog::ledger::internal::key_rotation_body(&id1, &id1, &k1.pem(), "r", None),
            "the new key is the old key",
        ),
        (
            "no reason",
            anchorlog::ledger::internal::key_rotation_body(&id1, &k2.public.key_id, &k2.pem(), "", None),
            "reason must be 1 to 1024 bytes",
        ),
        (
            "no counter field",
            serde_json::json!({"type": "anchorlog.key_rotation", "old_key_id": id1, "new_key_id": k2.public.key_id,
                               "new_public_key": k2.pem(), "reason": "r"}),
            "new_counter_index is missing",
        ),
    ];
    for (what, body, says) in cases {
        let path = dir.path().join(format!("{}.db", what.replace(' ', "-")));
        let mut b = LogBuilder::create(&path, &k1);
        b.head();
        b.events(3);
        let seq = b.appliance_event(body.to_string().as_bytes());
        b.head();
        drop(b);
        let f = failure(verify_db(&path, &[&k1]));
        assert_eq!(f.location(), ("seq", seq), "{what}: {f}");
        assert!(matches!(f, Failure::KeyRotationInvalid { .. }), "{what}: {f}");
        assert!(f.to_string().contains(says), "{what}: {f}");
    }
    // Back to a retired key: refused at the second record.
    let path = dir.path().join("back.db");
    let mut b = LogBuilder::create(&path, &k1);
    b.head();
    b.rotate(&k2, "r", None);
    let (back, _) = b.rotate(&k1, "back", None);
    drop(b);
    let f = failure(verify_db(&path, &[&k1]));
    assert_eq!(f.location(), ("seq", back), "{f}");
    assert!(f.to_string().contains("was retired after head height 1; a key is never used again"), "{f}");
    // An unsealed record is reported; no head covers it, so nothing changed yet.
    let path = dir.path().join("unsealed.db");
    let mut b = LogBuilder::create(&path, &k1);
    b.head();
    b.events(2);
    let body = anchorlog::ledger::internal::key_rotation_body(&id1, &k2.public.key_id, &k2.pem(), "r", None);
    let seq = b.appliance_event(body.to_string().as_bytes());
    drop(b);
    let r = verify_db(&path, &[&k1]).unwrap();
    assert_eq!((r.unsealed_rotation, r.unsealed_events, r.rotations.len()), (Some(seq), 3, 0));
    assert_eq!(r.current_key_id, id1);
}

#[test]
fn the_tpm_counter_follows_what_the_rotation_record_announces() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (TestKey::new(1), TestKey::new(2));
    const OLD: u32 = 0x0180_0010;
    const NEW: u32 = 0x0180_0011;
    /// The announced index, the new key's counter (index, value before its first head), the expected outcome.
    type Case = (Option<u32>, Option<(u32, u64)>, Option<Failure>);
    let cases: Vec<Case> = vec![
        // The same counter continues: values keep increasing across the rotation.
        (Some(OLD), Some((OLD, 100)), None),
        (
            Some(OLD),
            Some((OLD, 3)),
            Some(Failure::Counter(anchorlog_core::counter::CounterFailure::NotIncreasing {
                height: 3,
                value: 4,
                previous: 100,
            })),
        ),
        // A new counter restarts: lower values are fine.
        (Some(NEW), Some((NEW, 0)), None),
        // Moving to a key without a counter, announced.
        (None, None, None),
        // What the record announced is what the first head under the new key carries.
        (
            Some(NEW),
            Some((OLD, 200)),
            Some(Failure::RotationCounterMismatch {
                height: 3,
                seq: 2,
                announced: "TPM counter index 0x01800011".into(),
                found: "TPM counter index 0x01800010".into(),
            }),
        ),
        (
            None,
            Some((NEW, 0)),
            Some(Failure::RotationCounterMismatch {
                height: 3,
                seq: 2,
                announced: "no TPM counter".into(),
                found: "TPM counter index 0x01800011".into(),
            }),
        ),
        (
            Some(NEW),
            None,
            Some(Failure::RotationCounterMismatch {
                height: 3,
                seq: 2,
                announced: "TPM counter index 0x01800011".into(),
                found: "no TPM counter".into(),
            }),
        ),
    ];
    for (i, (announced, new_counter, expected)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("c{i}.db"));
        let mut b = LogBuilder::create(&path, &k1);
        b.counter = Some(HeadCounter { value: 97, reset_count: 1, index: OLD });
        b.head();
        b.events(2);
        b.head();
        let (seq, h) = b.rotate(&k2, "new TPM", announced);
        assert_eq!((seq, h.height), (2, 2));
        b.counter = new_counter.map(|(index, value)| HeadCounter { value, reset_count: 1, index });
        b.events(2);
        b.head();
        b.head();
        drop(b);
        let got = verify_db(&path, &[&k1]);
        match expected {
            None => {
                let r = got.unwrap_or_else(|e| panic!("case {i}: {e}"));
                assert_eq!(
                    r.rotations[0].new_counter_index,
                    announced.map(|i| format!("{i:#010x}")),
                    "case {i}"
                );
            }
            Some(f) => assert_eq!(failure(got), f, "case {i}"),
        }
    }
}

fn export(db: &Path, from: u64, to: u64, out: &Path) {
    let c = store::open_reader(db).unwrap();
    bundle::export(&c, from, to, None, std::fs::File::create(out).unwrap(), &mut |_, _| {}).unwrap();
}

/// The independent Python verifier → (exit code, all it printed).
fn python_verifies(bundle: &Path, key: &Path) -> (i32, String) {
    let (code, stdout, stderr) = kit_bundle::python_verify(bundle, key, &[]);
    (code, stdout + &stderr)
}

/// Rewrites the tar at `from` into `to`, passing each member through `edit` (`None` drops it).
fn rewrite_tar(from: &Path, to: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut archive = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut builder = tar::Builder::new(std::fs::File::create(to).unwrap());
    for member in archive.entries().unwrap() {
        let mut member = member.unwrap();
        let name = member.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            let mut h = tar::Header::new_gnu();
            h.set_path(&name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append(&h, data.as_slice()).unwrap();
        }
    }
    builder.finish().unwrap();
}

#[test]
fn bundles_across_and_after_a_rotation_verify_with_the_first_key_in_rust_and_python() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (TestKey::new(1), TestKey::new(2));
    let db = dir.path().join("a.db");
    rotated_log(&db, &k1, &k2);
    let first = k1.write_pem(dir.path(), "first.pem");
    // Across the rotation: the walk meets the record. Starting right after it (the anchor is the rotation head),
    // and later: key-rotations.jsonl carries the record with its proofs.
    for (from, to, carried) in [(0, 5, false), (1, 4, false), (3, 5, true), (4, 5, true)] {
        let tar = dir.path().join(format!("b{from}-{to}.tar"));
        export(&db, from, to, &tar);
        let b = bundle::verify_bundle(&tar, &k1.public, None).unwrap_or_else(|e| panic!("{from}..{to}: {e}"));
        assert_eq!(b.report.current_key_id, k2.public.key_id, "{from}..{to}");
        let names: Vec<String> = tar::Archive::new(std::fs::File::open(&tar).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.contains(&"key-rotations.jsonl".to_string()), carried, "{from}..{to}: {names:?}");
        if !carried {
            assert_eq!(b.report.rotations.len(), 1, "{from}..{to}");
            assert_eq!(
                (b.report.rotations[0].seq, b.report.rotations[0].height),
                (ROTATION_SEQ, ROTATION_HEIGHT)
            );
        }
        let (code, text) = python_verifies(&tar, &first);
        assert_eq!(code, 0, "{from}..{to}: {text}");
    }
    // The bundle after the rotation without its rotation proof: the anchor's key is unknown to the first key.
    let tar = dir.path().join("b4-5.tar");
    let stripped = dir.path().join("stripped.tar");
    rewrite_tar(&tar, &stripped, |name, data| (name != "key-rotations.jsonl").then_some(data));
    match bundle::verify_bundle(&stripped, &k1.public, None) {
        Err(VerifyError::Invalid(f)) => assert_eq!(
            f,
            Failure::UntrustedKey {
                height: 3,
                key_id: k2.public.key_id.clone(),
                given: k1.public.key_id.clone()
            }
        ),
        other => panic!("{other:?}"),
    }
    let (code, text) = python_verifies(&stripped, &first);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("head height 3:"), "{text}");
    // ...but with the new key given as well it verifies (several --key).
    let both = [k1.public.clone(), k2.public.clone()];
    bundle::verify_bundle_keys(&stripped, &both, None, None, None).unwrap();
    // A forged proof: the record's reason altered (its entry commits to the body).
    let forged = dir.path().join("forged.tar");
    rewrite_tar(&tar, &forged, |name, data| {
        if name != "key-rotations.jsonl" {
            return Some(data);
        }
        let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = String::from_utf8(b64.decode(v["body"].as_str().unwrap()).unwrap()).unwrap();
        v["body"] = b64.encode(body.replace("annual rotation", "nothing to see")).into();
        Some((v.to_string() + "\n").into_bytes())
    });
    match bundle::verify_bundle(&forged, &k1.public, None) {
        Err(VerifyError::Invalid(f)) => assert_eq!(f, Failure::PayloadMismatch { seq: ROTATION_SEQ }),
        other => panic!("{other:?}"),
    }
    let (code, text) = python_verifies(&forged, &first);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains(&format!("event seq {ROTATION_SEQ}:")), "{text}");
    // A head inside the bundle re-signed by the retired key.
    let late = tampered(&db, "late", &resign(&db, 4, &k1));
    let tar = dir.path().join("late.tar");
    export(&late, 3, 5, &tar);
    match bundle::verify_bundle(&tar, &k1.public, None) {
        Err(VerifyError::Invalid(f)) => assert_eq!(f.location(), ("height", 4), "{f}"),
        other => panic!("{other:?}"),
    }
    let (code, text) = python_verifies(&tar, &first);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("head height 4:"), "{text}");
}

#[test]
fn receipts_under_a_later_key_carry_the_rotations_from_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (TestKey::new(1), TestKey::new(2));
    let db = dir.path().join("a.db");
    rotated_log(&db, &k1, &k2);
    let c = store::open_reader(&db).unwrap();
    // After the rotation: the receipt carries the record; the first key alone verifies it.
    let r = receipt::build(&c, 20).unwrap();
    assert_eq!((r.head.height, r.key_rotations.len()), (4, 1));
    let ok = anchorlog_core::receipt::verify(&r, &k1.public).unwrap();
    assert_eq!((ok.key_id.as_str(), ok.rotations.len()), (&*k2.public.key_id, 1));
    anchorlog_core::receipt::verify(&r, &k2.public).unwrap();
    // Without it, the first key does not reach the head's key.
    let mut bare = r.clone();
    bare.key_rotations.clear();
    assert_eq!(
        anchorlog_core::receipt::verify(&bare, &k1.public).unwrap_err(),
        Failure::BadSignature { height: 4, key_id: k1.public.key_id.clone() }
    );
    // Before it: nothing to carry. The rotation record itself lies under the old key's last head: carried, and
    // its head is the receipt's, still the old key's.
    for (seq, carried) in [(3, 0), (ROTATION_SEQ, 1)] {
        let r = receipt::build(&c, seq).unwrap();
        assert_eq!(r.key_rotations.len(), carried, "{seq}");
        assert_eq!(
            anchorlog_core::receipt::verify(&r, &k1.public).unwrap().key_id,
            k1.public.key_id,
            "{seq}"
        );
    }
}

#[test]
fn an_erasure_recorded_under_a_later_key_is_proven_to_the_first_key() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (TestKey::new(1), TestKey::new(2));
    let db = dir.path().join("a.db");
    let mut b = LogBuilder::create(&db, &k1);
    b.head();
    b.events(10);
    b.head();
    b.rotate(&k2, "r", None);
    b.events(2);
    b.head();
    b.erase(4, "admin-1", "gdpr");
    b.head();
    drop(b);
    verify_db(&db, &[&k1]).unwrap();
    let c = store::open_reader(&db).unwrap();
    let r = receipt::build(&c, 4).unwrap();
    assert_eq!((r.head.height, r.key_rotations.len()), (1, 1));
    assert!(anchorlog_core::receipt::verify(&r, &k1.public).unwrap().erased);
    // A bundle of the old key's heads only: the erasure record's head is under the new key.
    let tar = dir.path().join("old.tar");
    export(&db, 0, 1, &tar);
    let report = bundle::verify_bundle(&tar, &k1.public, None).unwrap();
    assert_eq!(report.report.erased, 1);
    let (code, text) = python_verifies(&tar, &k1.write_pem(dir.path(), "k1.pem"));
    assert_eq!(code, 0, "{text}");
}
