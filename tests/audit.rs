//! Auditor toolkit without hardware: the stored node table and its proofs, the erasure triggers, export
//! bundles and the offline verifier, and the tamper matrix on bundles and databases. Heads are signed by a
//! software P-256 key (the signature format is the HSM's; the SoftHSM e2e tests cover the real signer).

/// The kit's bundle helpers (tar members, the Python verifier), alone like the log builder.
#[path = "../softhsm-tests/kit/bundle.rs"]
mod kit_bundle;
/// The test kit's software-signed log builder, alone: these tests need no SoftHSM, TSA or appliance process.
#[path = "../softhsm-tests/kit/log_builder.rs"]
mod log_builder;

use anchorlog::bundle;
use anchorlog::store;
use anchorlog::verify;
use anchorlog_core::merkle::{self, Frontier, Hash};
use anchorlog_core::verify::VerifyError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use log_builder::{build_log, tampered_db, LogBuilder, OpensslTsa, TestKey};
use std::path::{Path, PathBuf};

fn all_leaves(conn: &rusqlite::Connection) -> Vec<Hash> {
    let n = store::event_count(conn).unwrap();
    store::leaf_hashes(conn, 0, n).unwrap()
}

#[test]
fn stored_nodes_serve_every_proof_and_the_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let path = dir.path().join("a.db");
    let mut b = LogBuilder::create(&path, &key);
    // Uneven appends, so nodes complete across transaction boundaries.
    for n in [1, 2, 3, 5, 8, 13, 21, 14] {
        b.events(n);
    }
    let conn = &b.conn;
    let leaves = all_leaves(conn);
    assert_eq!(leaves.len(), 67);
    // Level ≥ 1 only: 67 leaves complete 33 + 16 + 8 + 4 + 2 + 1 nodes.
    let nodes: i64 = conn.query_row("SELECT count(*) FROM nodes", [], |r| r.get(0)).unwrap();
    assert_eq!(nodes, 64);
    for size in 0..=67u64 {
        let f = store::tree::load_frontier(conn, size).unwrap();
        let mut walked = Frontier::new();
        leaves[..size as usize].iter().for_each(|l| walked.push(*l));
        assert_eq!(f, walked, "frontier at {size}");
        assert_eq!(store::tree::root_at(conn, size).unwrap(), merkle::root_of(&leaves[..size as usize]));
    }
    for size in [1u64, 2, 7, 16, 33, 64, 67] {
        let root = merkle::root_of(&leaves[..size as usize]);
        for seq in 0..size {
            let proof = store::tree::inclusion_proof(conn, seq, size).unwrap();
            assert_eq!(proof, merkle::inclusion_proof(seq, &leaves[..size as usize]).unwrap());
            merkle::verify_inclusion(seq, size, &leaves[seq as usize], &proof, &root).unwrap();
            // A wrong proof fails: another leaf, or one flipped bit.
            let other = leaves[((seq + 1) % size) as usize];
            assert!(size == 1 || merkle::verify_inclusion(seq, size, &other, &proof, &root).is_err());
            if let Some(first) = proof.first() {
                let mut bad = proof.clone();
                bad[0] = {
                    let mut h = *first;
                    h[0] ^= 1;
                    h
                };
                assert!(merkle::verify_inclusion(seq, size, &leaves[seq as usize], &bad, &root).is_err());
            }
        }
        for old in 0..=size {
            let old_root = merkle::root_of(&leaves[..old as usize]);
            let proof = store::tree::consistency_proof(conn, old, size).unwrap();
            merkle::verify_consistency(old, size, &old_root, &root, &proof).unwrap();
            if old > 0 && old < size {
                let mut wrong = old_root;
                wrong[31] ^= 1;
                assert!(merkle::verify_consistency(old, size, &wrong, &root, &proof).is_err());
            }
        }
    }
    // Beyond the stored tree: a precise error, not a panic.
    let err = store::tree::inclusion_proof(conn, 3, 68).unwrap_err().to_string();
    assert!(err.contains("no stored node"), "{err}");
    let err = store::tree::inclusion_proof(conn, 9, 5).unwrap_err().to_string();
    assert!(err.contains("leaf index 9 is out of range for a tree of size 5"), "{err}");
}

#[test]
fn the_database_allows_exactly_one_recorded_erasure_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let path = dir.path().join("a.db");
    let mut b = LogBuilder::create(&path, &key);
    b.head();
    b.events(4);
    let refused = |conn: &rusqlite::Connection, sql: &str| conn.execute(sql, []).unwrap_err().to_string();
    let row_refused = "an erasure row is only written with its erasure record";
    // Without an erasure record: refused.
    let e = refused(&b.conn, "UPDATE events SET body = NULL, salt = NULL WHERE seq = 1");
    assert!(e.contains("events are append-only (only a recorded erasure may clear body and salt)"), "{e}");
    // An erasures row inserted by hand, naming a later event that is not an erasure record: refused.
    let e = refused(
        &b.conn,
        "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (1, 3, 'x', 'r', 0)",
    );
    assert!(e.contains(row_refused), "{e}");
    // Nor an appliance record of another type, an erasure record of another event, or one that is sealed or
    // not the newest event (an old genuine record cannot be re-used for a second, silent erasure).
    let start = b.appliance_event(br#"{"type":"anchorlog.start"}"#);
    let other = b.appliance_event(br#"{"type":"anchorlog.erasure","erased_seq":2}"#);
    let this = b.appliance_event(br#"{"type":"anchorlog.erasure","erased_seq":1}"#);
    b.events(1);
    for e_seq in [start, other, this] {
        let sql = format!(
            "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (1, {e_seq}, 'x', 'r', 0)"
        );
        assert!(refused(&b.conn, &sql).contains(row_refused), "record {e_seq}");
    }
    let newest = b.appliance_event(br#"{"type":"anchorlog.erasure","erased_seq":1}"#);
    b.head();
    let sql = format!(
        "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES (1, {newest}, 'x', 'r', 0)"
    );
    assert!(refused(&b.conn, &sql).contains(row_refused), "a record already covered by a head");
    // The appliance's own records cannot be erased, even with a matching record.
    let own = b.appliance_event(format!(r#"{{"type":"anchorlog.erasure","erased_seq":{start}}}"#).as_bytes());
    let sql = format!(
        "INSERT INTO erasures (seq, erasure_seq, erased_by, reason, erased_at_ms) VALUES ({start}, {own}, 'x', 'r', 0)"
    );
    assert!(refused(&b.conn, &sql).contains(row_refused), "an appliance record");
    // The genuine erasure: record and row in one transaction.
    let logged = b.erase(1, "admin-1", "art. 17");
    let rec = store::erasure::erasure(&b.conn, 1).unwrap().unwrap();
    assert_eq!(
        (rec.seq, rec.erasure_seq, rec.erased_by.as_str(), rec.reason.as_str()),
        (1, logged, "admin-1", "art. 17")
    );
    // With the record, clearing anything else is still refused.
    for sql in [
        "UPDATE events SET body = NULL WHERE seq = 2",
        "UPDATE events SET body = x'00', salt = NULL WHERE seq = 2",
        "UPDATE events SET producer = 'mallory' WHERE seq = 1",
        "UPDATE events SET entry = x'00' WHERE seq = 1",
        "UPDATE events SET body = NULL, salt = NULL WHERE seq = 2",
    ] {
        let e = refused(&b.conn, sql);
        assert!(e.contains("events are append-only"), "{sql}: {e}");
    }
    // Once only: the payload is gone, a second record and a second update are refused.
    let e = refused(&b.conn, "UPDATE events SET body = NULL, salt = NULL WHERE seq = 1");
    assert!(e.contains("events are append-only"), "{e}");
    let e = refused(&b.conn, "UPDATE erasures SET reason = 'other'");
    assert!(e.contains("erasure records are append-only"), "{e}");
    let e = refused(&b.conn, "DELETE FROM erasures");
    assert!(e.contains("erasure records are append-only"), "{e}");
    let e = refused(&b.conn, "UPDATE nodes SET hash = zeroblob(32)");
    assert!(e.contains("tree nodes are append-only"), "{e}");
    // Until a head covers the record, an auditor's verification fails at the erased event; the appliance's
    // own start-up accepts it (it seals the record next).
    let f = verify::verify_database(&b.conn, &key.public, None).unwrap_err();
    assert_eq!(f.to_string(), format!("verification failed: event seq 1: its erasure record (event seq {logged}) is not covered by a signed head yet; if the appliance is running, verify again after the next seal"));
    let opts = anchorlog_core::verify::WalkOptions {
        allow_unsealed_erasure_records: true,
        ..anchorlog_core::verify::WalkOptions::default()
    };
    verify::verify_database_with(&b.conn, std::slice::from_ref(&key.public), opts).unwrap();
    // Sealed: the log, including the erased event, verifies; the erasure is counted.
    b.head();
    let r = verify::verify_database(&b.conn, &key.public, Some(log_builder::ORIGIN)).unwrap();
    assert_eq!((r.events, r.erased, r.heads, r.appliance.erasures), (11, 1, 3, 5));
    // And the export shows the event as erased, with its record.
    let tar = dir.path().join("b.tar");
    export_file(&b.conn, 0, 1, &tar);
    let lines = read_member(&tar, "entries.jsonl");
    let line1: serde_json::Value =
        serde_json::from_str(String::from_utf8(lines).unwrap().lines().nth(1).unwrap()).unwrap();
    assert_eq!(line1["body"], serde_json::Value::Null);
    assert_eq!(line1["salt"], serde_json::Value::Null);
    assert_eq!(line1["erasure"]["erasure_seq"], logged);
    assert_eq!(line1["erasure"]["reason"], "art. 17");
    // Heads 0..=1 end before the record: the bundle carries it with its proofs.
    let proofs = String::from_utf8(read_member(&tar, "erasure-records.jsonl")).unwrap();
    assert_eq!(proofs.lines().count(), 1, "{proofs}");
    bundle::verify_bundle(&tar, &key.public, None).unwrap();
}

fn export_file(
    conn: &rusqlite::Connection,
    from: u64,
    to: u64,
    out: &Path,
) -> anchorlog_core::bundle::Manifest {
    let f = std::fs::File::create(out).unwrap();
    bundle::export(conn, from, to, None, f, &mut |_, _| {}).unwrap()
}

fn read_member(tar: &Path, name: &str) -> Vec<u8> {
    kit_bundle::tar_members(tar).into_iter().find(|(n, _)| n == name).unwrap().1
}

/// A copy of `tar` with `f` applied to its members.
fn tampered(tar: &Path, name: &str, f: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> PathBuf {
    let mut m = kit_bundle::tar_members(tar);
    f(&mut m);
    let out = tar.with_file_name(format!("{name}.tar"));
    kit_bundle::write_tar(&out, &m);
    out
}

fn edit_lines(m: &mut [(String, Vec<u8>)], f: impl FnOnce(&mut Vec<String>)) {
    let e = m.iter_mut().find(|(n, _)| n == "entries.jsonl").unwrap();
    let mut lines: Vec<String> =
        String::from_utf8(e.1.clone()).unwrap().lines().map(str::to_string).collect();
    f(&mut lines);
    e.1 = lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes();
}

fn edit_json_line(lines: &mut [String], i: usize, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
    f(&mut v);
    lines[i] = v.to_string();
}

fn failure_of(tar: &Path, key: &TestKey) -> (String, &'static str, u64) {
    match bundle::verify_bundle(tar, &key.public, None) {
        Err(VerifyError::Invalid(f)) => {
            let (kind, at) = f.location();
            (f.to_string(), kind, at)
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The core's reader verifies a bundle from any reader — a stream that cannot seek, as a browser hands it a
/// `File` — with the same verdict as from the file, and reports the events verified so far once per batch.
#[test]
fn bundles_verify_from_a_stream_with_progress() {
    use anchorlog_core::bundle::{verify_bundle_from, ForwardOnly};
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let db = dir.path().join("a.db");
    // About 2 MB of entries.jsonl: more than one chunk, so more than one batch.
    build_log(&db, &key, 3, 2000);
    let conn = store::open_reader(&db).unwrap();
    let tar = dir.path().join("bundle.tar");
    export_file(&conn, 0, 3, &tar);
    let bytes = std::fs::read(&tar).unwrap();
    let keys = std::slice::from_ref(&key.public);
    let from_file = bundle::verify_bundle(&tar, &key.public, None).unwrap();
    let mut seen = Vec::new();
    let mut open = || Ok(ForwardOnly::new(&bytes[..]));
    let r = verify_bundle_from(&mut open, keys, None, None, None, &mut |n| seen.push(n)).unwrap();
    assert_eq!((r.report.events, r.report.heads), (from_file.report.events, from_file.report.heads));
    assert_eq!(r.report.last_checkpoint, from_file.report.last_checkpoint);
    assert!(seen.len() > 1 && seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&6000));
    // A stream cut short is not a bundle that verifies, whatever it ends in.
    let mut cut = || Ok(ForwardOnly::new(&bytes[..bytes.len() / 2]));
    assert!(verify_bundle_from(&mut cut, keys, None, None, None, &mut |_| {}).is_err());
    // A reader that cannot be opened reports the caller's message.
    let mut fails = || Err::<ForwardOnly<&[u8]>, _>("cannot open the dropped file".to_string());
    match verify_bundle_from(&mut fails, keys, None, None, None, &mut |_| {}) {
        Err(VerifyError::Unreadable(m)) => assert_eq!(m, "cannot open the dropped file"),
        other => panic!("{other:?}"),
    }
}

/// Heads 0..=5; head h covers 10·h events.
fn sample_bundle(dir: &Path, key: &TestKey) -> (PathBuf, PathBuf) {
    let db = dir.join("a.db");
    build_log(&db, key, 5, 10);
    let conn = store::open_reader(&db).unwrap();
    let tar = dir.join("bundle.tar");
    let m = export_file(&conn, 0, 5, &tar);
    assert_eq!((m.first_seq, m.end_seq, m.anchor.clone()), (0, 50, None));
    assert_eq!(m.key_ids, vec![key.public.key_id.clone()]);
    (db, tar)
}

#[test]
fn bundles_verify_whole_and_from_an_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let (db, tar) = sample_bundle(dir.path(), &key);
    let r = bundle::verify_bundle(&tar, &key.public, Some(log_builder::ORIGIN)).unwrap();
    assert_eq!((r.report.events, r.report.heads, r.tokens_present), (50, 6, 0));
    let names: Vec<String> = kit_bundle::tar_members(&tar).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[0], "manifest.json");
    assert_eq!(names[1], format!("keys/{}.pem", key.public.key_id));
    assert_eq!(names.last().unwrap(), "entries.jsonl");
    assert!(names.contains(&"heads/5.sig".to_string()));
    // Heights 2..=4 alone: the anchor (head 1 and the frontier of its 10 leaves) makes it self-contained.
    let conn = store::open_reader(&db).unwrap();
    let part = dir.path().join("part.tar");
    let m = export_file(&conn, 2, 4, &part);
    assert_eq!((m.first_seq, m.end_seq), (10, 40));
    let anchor = m.anchor.clone().unwrap();
    assert_eq!((anchor.height, anchor.tree_size, anchor.subtrees.len()), (1, 10, 2));
    let r = bundle::verify_bundle(&part, &key.public, None).unwrap();
    assert_eq!((r.report.events, r.report.heads), (30, 3));
    // A wrong anchor frontier is caught at the anchor head.
    let bad = tampered(&part, "bad-anchor", |m| {
        let man = m.iter_mut().find(|(n, _)| n == "manifest.json").unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&man.1).unwrap();
        v["anchor"]["subtrees"][1] = B64.encode([7u8; 32]).into();
        man.1 = serde_json::to_vec(&v).unwrap();
    });
    let (msg, kind, at) = failure_of(&bad, &key);
    assert_eq!((kind, at), ("height", 1), "{msg}");
    assert!(msg.contains("root does not match"), "{msg}");
    // Bad ranges are refused before writing anything useful.
    let err = bundle::export(&conn, 3, 9, None, Vec::new(), &mut |_, _| {}).unwrap_err().to_string();
    assert_eq!(err, "no head at height 6");
}

#[test]
fn tamper_matrix_on_a_bundle_names_the_exact_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let other = TestKey::new(2);
    let (_db, tar) = sample_bundle(dir.path(), &key);
    let cases: Vec<(&str, PathBuf, &str, u64, &str)> = vec![
        (
            "edited body",
            tampered(&tar, "body", |m| {
                edit_lines(m, |l| {
                    edit_json_line(l, 17, |v| v["body"] = B64.encode(b"{\"user\":\"eve\"}").into())
                })
            }),
            "seq",
            17,
            "body does not match",
        ),
        (
            "edited entry",
            tampered(&tar, "entry", |m| {
                edit_lines(m, |l| {
                    edit_json_line(l, 23, |v| {
                        v["entry"] = v["entry"].as_str().unwrap().replace("producer-1", "producer-2").into();
                    })
                })
            }),
            "seq",
            23,
            "stored leaf hash does not match the entry",
        ),
        (
            "payload removed without an erasure record",
            tampered(&tar, "unrecorded-erasure", |m| {
                edit_lines(m, |l| {
                    edit_json_line(l, 29, |v| {
                        v["body"] = serde_json::Value::Null;
                        v["salt"] = serde_json::Value::Null;
                    })
                })
            }),
            "seq",
            29,
            "body and salt are erased but no erasure record accounts for it",
        ),
        (
            "edited entry with a matching leaf hash",
            tampered(&tar, "entry-leaf", |m| {
                edit_lines(m, |l| {
                    edit_json_line(l, 23, |v| {
                        let e = v["entry"].as_str().unwrap().replace("producer-1", "producer-2");
                        v["leaf_hash"] = B64.encode(merkle::leaf_hash(e.as_bytes())).into();
                        v["entry"] = e.into();
                    })
                })
            }),
            "height",
            3,
            "root does not match",
        ),
        (
            "deleted event",
            tampered(&tar, "deleted", |m| {
                edit_lines(m, |l| {
                    l.remove(12);
                })
            }),
            "seq",
            12,
            "missing",
        ),
        (
            "inserted event",
            tampered(&tar, "inserted", |m| {
                edit_lines(m, |l| {
                    let x = l[29].clone();
                    l.insert(30, x);
                })
            }),
            "seq",
            30,
            "found seq 29 in its place",
        ),
        (
            "swapped order",
            tampered(&tar, "swapped", |m| edit_lines(m, |l| l.swap(33, 34))),
            "seq",
            33,
            "missing",
        ),
        (
            "truncated tail",
            tampered(&tar, "truncated", |m| edit_lines(m, |l| l.truncate(45))),
            "height",
            5,
            "covers 50 events but the log holds only 45",
        ),
        (
            "appended unsigned event",
            tampered(&tar, "appended", |m| {
                edit_lines(m, |l| {
                    // A well-formed event 50 (its own entry and leaf), but no head covers it.
                    let mut v: serde_json::Value = serde_json::from_str(&l[49]).unwrap();
                    let e = v["entry"].as_str().unwrap().replace("\"seq\":49", "\"seq\":50");
                    v["leaf_hash"] = B64.encode(merkle::leaf_hash(e.as_bytes())).into();
                    v["entry"] = e.into();
                    v["seq"] = 50.into();
                    l.push(v.to_string());
                })
            }),
            "seq",
            50,
            "beyond the last head of the bundle",
        ),
        (
            "altered signature",
            tampered(&tar, "sig", |m| {
                let s = m.iter_mut().find(|(n, _)| n == "heads/2.sig").unwrap();
                let last = s.1.len() - 1;
                s.1[last] ^= 1;
            }),
            "height",
            2,
            "signature does not verify",
        ),
        (
            "head signed by another key",
            tampered(&tar, "otherkey", |m| {
                let text = m.iter().find(|(n, _)| n == "heads/4.txt").unwrap().1.clone();
                m.iter_mut().find(|(n, _)| n == "heads/4.sig").unwrap().1 = other.sign(&text);
            }),
            "height",
            4,
            "signature does not verify",
        ),
        (
            "removed head",
            tampered(&tar, "nohead", |m| m.retain(|(n, _)| !n.starts_with("heads/3."))),
            "height",
            3,
            "missing",
        ),
        (
            "replayed old head",
            tampered(&tar, "replayed", |m| {
                let t = m.iter().find(|(n, _)| n == "heads/1.txt").unwrap().1.clone();
                let s = m.iter().find(|(n, _)| n == "heads/1.sig").unwrap().1.clone();
                m.iter_mut().find(|(n, _)| n == "heads/2.txt").unwrap().1 = t;
                m.iter_mut().find(|(n, _)| n == "heads/2.sig").unwrap().1 = s;
            }),
            "height",
            2,
            "holds the head of height 1",
        ),
    ];
    for (what, path, kind, at, text) in cases {
        let (msg, k, n) = failure_of(&path, &key);
        assert_eq!((k, n), (kind, at), "{what}: {msg}");
        assert!(msg.contains(text), "{what}: {msg}");
    }
    // The untouched bundle still verifies, and with the wrong key it fails at the first head.
    bundle::verify_bundle(&tar, &key.public, None).unwrap();
    let (msg, k, n) = failure_of(&tar, &other);
    assert_eq!((k, n), ("height", 0), "{msg}");
    // Not a bundle at all: unreadable (exit code 1), not invalid.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(matches!(bundle::verify_bundle(&junk, &key.public, None), Err(VerifyError::Unreadable(_))));
}

#[test]
fn tamper_matrix_on_the_database_names_the_exact_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let other = TestKey::new(2);
    let db = dir.path().join("a.db");
    build_log(&db, &key, 5, 10);
    let other_sig = {
        let c = store::open_reader(&db).unwrap();
        let h = store::head(&c, 4).unwrap().unwrap();
        hex::encode(other.sign(h.checkpoint.as_bytes()))
    };
    let cases = [
        ("edited body", "UPDATE events SET body = x'00' WHERE seq = 17".to_string(), ("seq", 17)),
        ("edited entry", "UPDATE events SET entry = CAST(replace(CAST(entry AS TEXT), 'producer-1', 'producer-2') AS BLOB) WHERE seq = 23".into(), ("seq", 23)),
        ("deleted event", "DELETE FROM events WHERE seq = 12".into(), ("seq", 12)),
        (
            "swapped order",
            "UPDATE events SET seq = -1 WHERE seq = 33; UPDATE events SET seq = 33 WHERE seq = 34;
             UPDATE events SET seq = 34 WHERE seq = -1;".into(),
            ("seq", 33),
        ),
        ("truncated tail", "DELETE FROM events WHERE seq >= 45".into(), ("height", 5)),
        ("altered signature", "UPDATE heads SET signature = x'3006020101020101' WHERE height = 2".into(), ("height", 2)),
        ("head signed by another key", format!("UPDATE heads SET signature = x'{other_sig}' WHERE height = 4"), ("height", 4)),
        ("forged tree node", "UPDATE nodes SET hash = zeroblob(32) WHERE level = 5 AND idx = 0".into(), ("height", 5)),
        ("payload deleted without a record", "UPDATE events SET body = NULL, salt = NULL WHERE seq = 8".into(), ("seq", 8)),
    ];
    for (what, sql, expected) in cases {
        let t = tampered_db(&db, what.replace(' ', "-").as_str(), &sql);
        let c = store::open_reader(&t).unwrap();
        match verify::verify_database(&c, &key.public, None) {
            Err(VerifyError::Invalid(f)) => assert_eq!(f.location(), expected, "{what}: {f}"),
            other => panic!("{what}: expected a failure, got {other:?}"),
        }
    }
    // Inserted event: rows from 30 on move up by one (entries re-made for their new seq, so each row is
    // self-consistent) and a fabricated event takes seq 30. The first head over it, height 4, catches it.
    let t = tampered_db(&db, "inserted", "SELECT 1");
    {
        use anchorlog_core::entry::Entry;
        let c = rusqlite::Connection::open(&t).unwrap();
        let put = |seq: u64, entry: &[u8], salt: &[u8], body: &[u8]| {
            c.execute(
                "INSERT OR REPLACE INTO events (seq, received_at_ns, producer, source, format, entry, leaf_hash, salt, body)
                 VALUES (?1, 1, 'producer-1', 'events', 'json', ?2, ?3, ?4, ?5)",
                rusqlite::params![seq as i64, entry, &merkle::leaf_hash(entry)[..], salt, body],
            )
            .unwrap();
        };
        for seq in (30..50).rev() {
            let e = store::event(&c, seq).unwrap().unwrap();
            let mut entry = Entry::parse(&e.entry).unwrap();
            entry.seq = seq + 1;
            put(seq + 1, &entry.to_canonical_json(), &e.salt.unwrap(), &e.body.unwrap());
        }
        let body = br#"{"type":"LOGIN","user":"mallory"}"#;
        let mut fake = Entry::parse(&store::event(&c, 29).unwrap().unwrap().entry).unwrap();
        fake.seq = 30;
        fake.payload_sha256 = anchorlog_core::entry::payload_digest(&[0; 32], body);
        put(30, &fake.to_canonical_json(), &[0; 32], body);
    }
    let c = store::open_reader(&t).unwrap();
    match verify::verify_database(&c, &key.public, None) {
        Err(VerifyError::Invalid(f)) => {
            assert_eq!(f.location(), ("height", 4), "{f}");
            assert!(f.to_string().contains("an event in seq 30..40 was altered"), "{f}");
        }
        other => panic!("inserted: expected a failure, got {other:?}"),
    }
    let c = store::open_reader(&db).unwrap();
    verify::verify_database(&c, &key.public, None).unwrap();
}

/// The independent Python verifier → (exit code, its verdict line).
fn python_verify(tar: &Path, key: &Path) -> (i32, String) {
    let (code, stdout, _) = kit_bundle::python_verify(tar, key, &[]);
    (code, stdout)
}

#[test]
fn the_independent_python_verifier_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let pem = key.write_pem(dir.path(), "signer.pem");
    let (db, tar) = sample_bundle(dir.path(), &key);
    assert_eq!(python_verify(&tar, &pem), (0, "OK: 50 events, 6 heads".to_string()));
    let conn = store::open_reader(&db).unwrap();
    let part = dir.path().join("part.tar");
    export_file(&conn, 3, 5, &part);
    assert_eq!(python_verify(&part, &pem), (0, "OK: 30 events, 3 heads".to_string()));
    let body = tampered(&tar, "body", |m| {
        edit_lines(m, |l| edit_json_line(l, 17, |v| v["body"] = B64.encode(b"{}").into()))
    });
    assert_eq!(
        python_verify(&body, &pem),
        (3, "FAILED: event seq 17: body does not match payload_sha256".into())
    );
    let sig = tampered(&tar, "sig", |m| {
        let s = m.iter_mut().find(|(n, _)| n == "heads/2.sig").unwrap();
        let last = s.1.len() - 1;
        s.1[last] ^= 1;
    });
    assert_eq!(python_verify(&sig, &pem), (3, "FAILED: head height 2: signature does not verify".into()));
    let other = TestKey::new(2).write_pem(dir.path(), "other.pem");
    assert_eq!(python_verify(&tar, &other), (3, "FAILED: head height 0: signature does not verify".into()));
}

#[test]
fn receipts_prove_one_event_offline_and_fail_when_touched() {
    use anchorlog::receipt;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let db = dir.path().join("a.db");
    build_log(&db, &key, 5, 10);
    let conn = store::open_reader(&db).unwrap();
    for seq in 0..50 {
        let r = receipt::build(&conn, seq).unwrap();
        // The earliest covering head: head h covers 10·h events.
        assert_eq!(r.head.height, seq / 10 + 1, "seq {seq}");
        let ok = anchorlog_core::receipt::verify(&r, &key.public).unwrap();
        assert_eq!((ok.seq, ok.erased, ok.tree_size), (seq, false, (seq / 10 + 1) * 10));
    }
    assert!(matches!(receipt::build(&conn, 50), Err(receipt::ReceiptError::NoSuchEvent(50))));
    let r = receipt::build(&conn, 17).unwrap();
    let mut body = r.clone();
    body.body = Some(B64.encode(b"{}"));
    assert_eq!(anchorlog_core::receipt::verify(&body, &key.public).unwrap_err().location(), ("seq", 17));
    let mut proof = r.clone();
    proof.inclusion_proof.swap(0, 1);
    let f = anchorlog_core::receipt::verify(&proof, &key.public).unwrap_err();
    assert_eq!(f.to_string(), "event seq 17: the inclusion proof does not lead to the root of head height 2");
    let mut sig = r.clone();
    sig.head.signature = B64.encode(TestKey::new(2).sign(r.head.checkpoint.as_bytes()));
    assert_eq!(anchorlog_core::receipt::verify(&sig, &key.public).unwrap_err().location(), ("height", 2));
    // Through the CLI: exit 0 untouched, 3 tampered, 1 unreadable.
    let pem = key.write_pem(dir.path(), "signer.pem");
    let run = |r: &str| {
        let f = dir.path().join("r.json");
        std::fs::write(&f, r).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_anchorlog"))
            .args(["verify-receipt", f.to_str().unwrap(), "--key", pem.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run(&serde_json::to_string(&r).unwrap());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OK: event seq 17 is in anchorlog.test/audit at head height 2 (tree size 20)\n  origin:   \
         anchorlog.test/audit (from the log itself)"
    );
    assert_eq!(run(&serde_json::to_string(&body).unwrap()).status.code(), Some(3));
    assert_eq!(run("{").status.code(), Some(1));
}

// ---- RFC 3161 tokens in bundles, receipts and the database (the real `openssl ts` TSA) ----

fn bundle_failure(
    tar: &Path,
    key: &TestKey,
    tsa: &anchorlog_core::verify::timestamps::TimestampPolicy,
) -> (String, &'static str, u64) {
    match bundle::verify_bundle_with(tar, &key.public, None, Some(tsa)) {
        Err(VerifyError::Invalid(f)) => {
            let (kind, at) = f.location();
            (f.to_string(), kind, at)
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// `anchorlog ARGS --json` → (exit code, JSON).
fn cli_json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorlog"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn bundle_tokens_are_exported_and_every_one_is_checked_at_its_height() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let pem = key.write_pem(dir.path(), "signer.pem");
    let tsa = OpensslTsa::new();
    let db = dir.path().join("a.db");
    build_log(&db, &key, 5, 10);
    // Heads 0..=4 are timestamped; head 5 still waits for its token.
    tsa.stamp_heads(&db, 0..=4);
    let conn = store::open_reader(&db).unwrap();
    let tar = dir.path().join("bundle.tar");
    let m = export_file(&conn, 0, 5, &tar);
    assert_eq!(m.algorithms.timestamp.as_deref(), Some("rfc3161"));
    let names: Vec<String> = kit_bundle::tar_members(&tar).into_iter().map(|(n, _)| n).collect();
    let tsrs: Vec<&String> = names.iter().filter(|n| n.ends_with(".tsr")).collect();
    assert_eq!(tsrs, ["heads/0.tsr", "heads/1.tsr", "heads/2.tsr", "heads/3.tsr", "heads/4.tsr"]);
    // The member is the stored DER TimeStampResp, byte for byte.
    assert_eq!(read_member(&tar, "heads/3.tsr"), store::timestamp(&conn, 3).unwrap().unwrap().response);

    let r = bundle::verify_bundle_with(&tar, &key.public, None, Some(&tsa.policy(false))).unwrap();
    let t = r.timestamps.unwrap();
    assert_eq!((r.tokens_present, t.verified, t.missing_count, t.missing), (5, 5, 1, vec![5]));
    let (msg, kind, at) = bundle_failure(&tar, &key, &tsa.policy(true));
    assert_eq!(
        (msg.as_str(), kind, at),
        ("head height 5: has no time-stamp token (--require-timestamps)", "height", 5)
    );

    // A range with an anchor: the anchor head's token (head 2) is checked too.
    let part = dir.path().join("part.tar");
    export_file(&conn, 3, 4, &part);
    let r = bundle::verify_bundle_with(&part, &key.public, None, Some(&tsa.policy(true))).unwrap();
    assert_eq!((r.tokens_present, r.timestamps.unwrap().verified), (3, 3));

    // Tamper matrix, tokens: each named at its exact height.
    let altered = tampered(&tar, "altered-token", |m| {
        let t = m.iter_mut().find(|(n, _)| n == "heads/3.tsr").unwrap();
        *t.1.last_mut().unwrap() ^= 1;
    });
    let (msg, kind, at) = bundle_failure(&altered, &key, &tsa.policy(false));
    assert_eq!((kind, at), ("height", 3), "{msg}");
    assert!(msg.starts_with("head height 3: time-stamp token does not verify"), "{msg}");
    let moved = tampered(&tar, "moved-token", |m| {
        let three = m.iter().find(|(n, _)| n == "heads/3.tsr").unwrap().1.clone();
        m.iter_mut().find(|(n, _)| n == "heads/2.tsr").unwrap().1 = three;
    });
    let (msg, kind, at) = bundle_failure(&moved, &key, &tsa.policy(false));
    assert_eq!((kind, at), ("height", 2), "{msg}");
    assert!(msg.contains("imprint"), "{msg}");
    let other_tsa = OpensslTsa::new();
    let (msg, kind, at) = bundle_failure(&tar, &key, &other_tsa.policy(false));
    assert_eq!((kind, at), ("height", 0), "{msg}");
    assert!(msg.contains("does not chain to any configured TSA CA"), "{msg}");
    // Without --tsa-ca the tokens are carried but not judged.
    assert!(bundle::verify_bundle(&altered, &key.public, None).is_ok());

    // The CLI: exit 0 with the token report, 3 naming the height.
    let (tar_s, pem_s, ca) = (tar.to_str().unwrap(), pem.to_str().unwrap(), tsa.ca());
    let ca_s = ca.to_str().unwrap();
    let (code, v) = cli_json(&["verify", tar_s, "--key", pem_s, "--tsa-ca", ca_s]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["timestamps"]["verified"].as_u64(), v["timestamps"]["missing"].clone()),
        (Some(5), serde_json::json!([5]))
    );
    let (code, v) = cli_json(&["verify", tar_s, "--key", pem_s, "--tsa-ca", ca_s, "--require-timestamps"]);
    assert_eq!((code, v["height"].as_u64()), (3, Some(5)), "{v}");
    let (code, v) = cli_json(&["verify", altered.to_str().unwrap(), "--key", pem_s, "--tsa-ca", ca_s]);
    assert_eq!((code, v["height"].as_u64()), (3, Some(3)), "{v}");

    // The independent Python verifier (openssl ts -verify) agrees.
    let py = |tar: &Path, extra: &[&str]| {
        let (code, stdout, _) = kit_bundle::python_verify(tar, &pem, &[&["--tsa-ca", ca_s], extra].concat());
        (code, stdout)
    };
    assert_eq!(py(&tar, &[]), (0, "OK: 50 events, 6 heads, tokens verified; no token: heights 5".into()));
    assert_eq!(
        py(&part, &["--require-timestamps"]),
        (0, "OK: 20 events, 2 heads, every token verified".into())
    );
    assert_eq!(
        py(&tar, &["--require-timestamps"]),
        (3, "FAILED: head height 5: has no time-stamp token".into())
    );
    assert_eq!(
        py(&altered, &[]),
        (3, "FAILED: head height 3: time-stamp token does not verify (openssl ts -verify failed)".into())
    );
    assert_eq!(
        py(&moved, &[]),
        (3, "FAILED: head height 2: time-stamp token does not verify (openssl ts -verify failed)".into())
    );
}

#[test]
fn an_altered_token_in_the_database_is_named_at_its_height() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let tsa = OpensslTsa::new();
    let db = dir.path().join("a.db");
    build_log(&db, &key, 5, 10);
    tsa.stamp_heads(&db, 0..=5);
    let p = tsa.policy(true);
    let conn = store::open_reader(&db).unwrap();
    let r = verify::timestamps::verify_timestamps(&conn, &p, &[]).unwrap();
    assert_eq!((r.verified, r.missing_count), (6, 0));
    // One byte inside head 4's TSA signature flipped.
    let bad = db.with_file_name("bad-token.db");
    std::fs::copy(&db, &bad).unwrap();
    {
        let c = rusqlite::Connection::open(&bad).unwrap();
        c.execute_batch("DROP TRIGGER timestamps_no_update;").unwrap();
        let mut der: Vec<u8> =
            c.query_row("SELECT response FROM timestamps WHERE height = 4", [], |r| r.get(0)).unwrap();
        *der.last_mut().unwrap() ^= 1;
        c.execute("UPDATE timestamps SET response = ?1 WHERE height = 4", [der]).unwrap();
    }
    let c = store::open_reader(&bad).unwrap();
    // The events and heads are untouched: only the token check fails, at height 4.
    verify::verify_database(&c, &key.public, None).unwrap();
    match verify::timestamps::verify_timestamps(&c, &tsa.policy(false), &[]) {
        Err(VerifyError::Invalid(f)) => {
            assert_eq!(f.location(), ("height", 4), "{f}");
            assert!(f.to_string().starts_with("head height 4: time-stamp token does not verify"), "{f}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn receipts_carry_the_head_token_and_verify_receipt_checks_it() {
    use anchorlog::receipt;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let pem = key.write_pem(dir.path(), "signer.pem");
    let tsa = OpensslTsa::new();
    let db = dir.path().join("a.db");
    build_log(&db, &key, 5, 10);
    tsa.stamp_heads(&db, 0..=4);
    let conn = store::open_reader(&db).unwrap();
    let r = receipt::build(&conn, 17).unwrap();
    let stored = store::timestamp(&conn, 2).unwrap().unwrap().response;
    assert_eq!(r.head.timestamp_token.as_deref(), Some(B64.encode(&stored).as_str()));
    let ok = anchorlog_core::receipt::verify_with(&r, &key.public, Some(&tsa.policy(true))).unwrap();
    assert_eq!(ok.timestamp.as_ref().map(|t| (t.verified, t.missing_count)), Some((1, 0)));
    // Head 5 has no token yet: reported, a failure only when required.
    let late = receipt::build(&conn, 45).unwrap();
    assert_eq!(late.head.timestamp_token, None);
    let ok = anchorlog_core::receipt::verify_with(&late, &key.public, Some(&tsa.policy(false))).unwrap();
    assert_eq!(ok.timestamp.map(|t| t.missing), Some(vec![5]));
    let f = anchorlog_core::receipt::verify_with(&late, &key.public, Some(&tsa.policy(true))).unwrap_err();
    assert_eq!(f, anchorlog_core::verify::Failure::TimestampMissing { height: 5 });
    // An altered token, or another head's token.
    let mut altered = r.clone();
    let mut der = stored.clone();
    *der.last_mut().unwrap() ^= 1;
    altered.head.timestamp_token = Some(B64.encode(&der));
    let f =
        anchorlog_core::receipt::verify_with(&altered, &key.public, Some(&tsa.policy(false))).unwrap_err();
    assert_eq!(f.location(), ("height", 2), "{f}");
    assert!(f.to_string().starts_with("head height 2: time-stamp token does not verify"), "{f}");
    let mut swapped = r.clone();
    swapped.head.timestamp_token = receipt::build(&conn, 35).unwrap().head.timestamp_token;
    assert_eq!(
        anchorlog_core::receipt::verify_with(&swapped, &key.public, Some(&tsa.policy(false)))
            .unwrap_err()
            .location(),
        ("height", 2)
    );
    // The CLI.
    let file = |name: &str, r: &anchorlog_core::receipt::Receipt| {
        let f = dir.path().join(name);
        std::fs::write(&f, serde_json::to_vec(r).unwrap()).unwrap();
        f
    };
    let (good, bad) = (file("good.json", &r), file("bad.json", &altered));
    let ca = tsa.ca();
    let args = |f: &Path| {
        vec![
            "verify-receipt".to_string(),
            f.to_str().unwrap().into(),
            "--key".into(),
            pem.to_str().unwrap().into(),
            "--tsa-ca".into(),
            ca.to_str().unwrap().into(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cli_json(&a)
    };
    let (code, v) = run(args(&good));
    assert_eq!((code, v["report"]["timestamp"]["verified"].as_u64()), (0, Some(1)), "{v}");
    let (code, v) = run(args(&bad));
    assert_eq!((code, v["height"].as_u64()), (3, Some(2)), "{v}");
}
