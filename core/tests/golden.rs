//! Golden vectors: the RFC 9162 test vectors and anchorlog's own format vectors (docs/FORMAT.md), checked against
//! the core.
//!
//! Written to run unchanged wherever the core runs: plain `#[test]` functions over data compiled in with
//! `include_str!` (no file, clock, entropy or process at run time), so the same file can run natively and under
//! `wasm-bindgen-test` in a browser or Node. The anchorlog vectors in `vectors/` come from a throw-away
//! `anchorlog dev` instance (`vectors/README.md`); they are public data only.

use anchorlog_core::bundle::{verify_bundle_from, ForwardOnly};
use anchorlog_core::entry::{payload_digest, Entry};
use anchorlog_core::head::{signed_note, Checkpoint};
use anchorlog_core::key::PublicKey;
use anchorlog_core::merkle::{self, Hash};
use anchorlog_core::note::{cosignature, Note, VerifierKey};
use anchorlog_core::receipt::{self, Receipt};
use anchorlog_core::tsa::{verify_response, TokenError, TrustAnchors, VerifyOptions};
use anchorlog_core::verify::timestamps::TimestampPolicy;
use anchorlog_core::verify::witnesses::WitnessPolicy;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
// Under wasm32 every `#[test]` below is a `wasm_bindgen_test` (run by wasm-bindgen-test-runner in Node); natively
// it is the built-in one.
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

// ---------------------------------------------------------------------------------------------------------------
// RFC 9162 (the RFC 6962 tree): reference vectors used by certificate-transparency and transparency-dev.
// Source: github.com/transparency-dev/merkle, testonly/constants.go and proof/verify_test.go (the leaf numbers
// there are 1-based; here they are 0-based indexes). The same vectors as the unit tests of `merkle`.

const LEAF_INPUTS: [&str; 8] =
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
const LEAF_HASHES: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
];
/// Roots indexed by tree size, starting at the empty tree.
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];
/// (leaf index, tree size, proof).
const INCLUSION_VECTORS: [(u64, u64, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];
/// (old size, new size, proof).
const CONSISTENCY_VECTORS: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap_or_else(|e| panic!("bad hex {text:?} in a vector: {e}"))
}

fn h(text: &str) -> Hash {
    unhex(text).try_into().unwrap_or_else(|_| panic!("{text:?} is not 32 bytes"))
}

fn hs(texts: &[&str]) -> Vec<Hash> {
    texts.iter().map(|t| h(t)).collect()
}

fn flip(hash: &Hash, bit: usize) -> Hash {
    let mut out = *hash;
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

fn golden_leaves() -> Vec<Hash> {
    LEAF_INPUTS.iter().map(|x| merkle::leaf_hash(&unhex(x))).collect()
}

#[test]
fn rfc9162_leaf_hashes() {
    assert_eq!(golden_leaves(), hs(&LEAF_HASHES));
}

#[test]
fn rfc9162_roots_of_every_size() {
    let leaves = golden_leaves();
    assert_eq!(merkle::empty_root(), h(ROOTS[0]));
    for (size, root) in ROOTS.iter().enumerate() {
        assert_eq!(merkle::root_of(&leaves[..size]), h(root), "root of size {size}");
        let mut frontier = merkle::Frontier::new();
        for leaf in &leaves[..size] {
            frontier.push(*leaf);
        }
        assert_eq!(frontier.root(), h(root), "frontier root of size {size}");
    }
}

#[test]
fn rfc9162_inclusion_proofs() {
    let leaves = golden_leaves();
    for (index, size, proof) in INCLUSION_VECTORS {
        let proof = hs(proof);
        let leaf = leaves[index as usize];
        let root = h(ROOTS[size as usize]);
        assert_eq!(
            merkle::inclusion_proof(index, &leaves[..size as usize]).unwrap(),
            proof,
            "proof of {index} in {size}"
        );
        assert_eq!(merkle::verify_inclusion(index, size, &leaf, &proof, &root), Ok(()), "{index} in {size}");
        for (i, p) in proof.iter().enumerate() {
            for bit in 0..256 {
                let mut bad = proof.clone();
                bad[i] = flip(p, bit);
                assert!(
                    merkle::verify_inclusion(index, size, &leaf, &bad, &root).is_err(),
                    "{index} in {size}"
                );
            }
        }
        assert!(merkle::verify_inclusion(index, size, &flip(&leaf, 0), &proof, &root).is_err());
    }
}

#[test]
fn rfc9162_consistency_proofs() {
    let leaves = golden_leaves();
    for (old, new, proof) in CONSISTENCY_VECTORS {
        let proof = hs(proof);
        let (old_root, new_root) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
        if old < new {
            assert_eq!(
                merkle::consistency_proof(old, &leaves[..new as usize]).unwrap(),
                proof,
                "proof from {old} to {new}"
            );
        }
        assert_eq!(
            merkle::verify_consistency(old, new, &old_root, &new_root, &proof),
            Ok(()),
            "{old} to {new}"
        );
        for (i, p) in proof.iter().enumerate() {
            for bit in 0..256 {
                let mut bad = proof.clone();
                bad[i] = flip(p, bit);
                assert!(merkle::verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// anchorlog's own formats (docs/FORMAT.md), on real evidence of a throw-away `anchorlog dev` log.

const LOG_KEY_PEM: &str = include_str!("vectors/log-key.pem");
const ORIGIN: &str = "anchorlog.dev/local";
const WITNESS_VKEY: &str = include_str!("vectors/witness.vkey");
const TSA_CA_PEM: &str = include_str!("vectors/tsa-ca.pem");
const HEAD_H0: &str = include_str!("vectors/head-h0.txt");
const HEAD_H3: &str = include_str!("vectors/head-h3.txt");
const COSIGNED_NOTE_H3: &str = include_str!("vectors/cosigned-note-h3.txt");
const RECEIPT_1: &str = include_str!("vectors/receipt-1.json");
const RECEIPT_5: &str = include_str!("vectors/receipt-5.json");
const BUNDLE_H0: &[u8] = include_bytes!("vectors/bundle-h0.tar");
const BUNDLE_H3: &[u8] = include_bytes!("vectors/bundle-h3.tar");

fn log_key() -> PublicKey {
    PublicKey::from_pem(LOG_KEY_PEM).expect("the vector key is a P-256 public key")
}

fn witness() -> VerifierKey {
    VerifierKey::parse(WITNESS_VKEY.trim_end()).expect("the vector witness key parses")
}

fn b64(text: &str) -> Vec<u8> {
    B64.decode(text).unwrap_or_else(|e| panic!("bad base64 {text:?} in a vector: {e}"))
}

/// A receipt (docs/FORMAT.md §9) as plain JSON, to check its parts one by one (the one-call check:
/// [`anchorlog_core::receipt::verify_keys`], below).
fn receipt(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("the vector receipt is JSON")
}

fn field<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_else(|| panic!("receipt field {path:?}"))
}

#[test]
fn key_id_is_sha256_of_the_spki() {
    let key = log_key();
    assert_eq!(key.key_id, hex::encode(Sha256::digest(&key.spki_der)));
    assert_eq!(key.key_id, "3a90908d5bcce172ad1f2474ccfc422dd3c1d48ad7521d143a5092b62aaaf9a1");
    // The signed-note verifier key of the head signer: type 0x02, key ID = first 4 bytes of the key id.
    let vkey = VerifierKey::ecdsa(ORIGIN, &key.spki_der).unwrap();
    assert_eq!(vkey.key_id(), 0x3a90908d);
}

#[test]
fn head_text_round_trips_byte_for_byte() {
    for text in [HEAD_H0, HEAD_H3] {
        let head = Checkpoint::parse(text).unwrap();
        assert_eq!(head.to_text().unwrap(), text);
        assert_eq!(head.origin, ORIGIN);
        assert_eq!(head.counter, None);
    }
    let h0 = Checkpoint::parse(HEAD_H0).unwrap();
    assert_eq!((h0.height, h0.tree_size, h0.prev), (0, 1, [0; 32]));
    assert_eq!(h0.time_rfc3339().unwrap(), "2026-12-07T05:11:27.488Z");
    let h3 = Checkpoint::parse(HEAD_H3).unwrap();
    assert_eq!((h3.height, h3.tree_size), (3, 8));
    // Not canonical: a byte more or less is refused.
    assert!(Checkpoint::parse(&HEAD_H3.replace("anchorlog-block 3", "anchorlog-block 03")).is_err());
    assert!(Checkpoint::parse(HEAD_H3.trim_end()).is_err());
}

#[test]
fn cosigned_signed_note_verifies() {
    let key = log_key();
    let log_vkey = VerifierKey::ecdsa(ORIGIN, &key.spki_der).unwrap();
    let note = Note::parse(COSIGNED_NOTE_H3.as_bytes()).unwrap();
    assert_eq!(note.text(), HEAD_H3);
    assert_eq!(note.to_text(), COSIGNED_NOTE_H3);
    let verified = note.verify(std::slice::from_ref(&log_vkey)).unwrap();
    assert_eq!(verified.verified.len(), 1);
    // The appliance's line is the ECDSA signature of the head text (docs/FORMAT.md §4).
    let sig = &note.signatures()[0];
    assert!(key.verify(HEAD_H3.as_bytes(), &sig.signature));
    assert_eq!(
        signed_note(HEAD_H3, ORIGIN, &key.spki_der, &sig.signature),
        format!("{HEAD_H3}\n{}", sig.to_line())
    );
    // And the witness cosigned it (cosignature/v1).
    let cosigned = cosignature::cosigned_by(&note, &[witness()]).unwrap();
    assert_eq!(cosigned.len(), 1);
    // A flipped byte in the text: no trusted signature verifies.
    let forged = COSIGNED_NOTE_H3.replacen("\n8\n", "\n9\n", 1);
    assert!(Note::parse(forged.as_bytes()).unwrap().verify(&[log_vkey]).is_err());
}

#[test]
fn cosignature_v1_vector_of_format_md() {
    // docs/FORMAT.md §16.4 (computed independently with Python's `cryptography`).
    let checkpoint = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    let vkey = VerifierKey::cosignature_v1("witness.test/w1", key.verifying_key().as_bytes()).unwrap();
    assert_eq!(vkey.to_string(), "witness.test/w1+786d922a+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS");
    let line = cosignature::sign("witness.test/w1", &key, checkpoint, 1_679_315_147).unwrap().to_line();
    assert_eq!(
        line,
        "\u{2014} witness.test/w1 eG2SKgAAAABkGFDLEqgtDUsneMqeLcGMqk8Xx08OQIVxF72ZJmEtUU5sbo5WiTljN+UF1cQ+vSoh1gRQ0wV3Nz9m8DFvjwHDTDcQBA==\n"
    );
    assert_eq!(cosignature::verify_line(&line, &vkey, checkpoint), Ok(1_679_315_147));
}

/// Checks a receipt's parts with the core: the entry, its leaf and payload, the head and its signature, the
/// inclusion proof, the RFC 3161 token and the witness cosignature.
fn check_receipt(text: &str) {
    let r = receipt(text);
    let key = log_key();
    let seq = r["seq"].as_u64().expect("seq");

    // Entry (§1): canonical, names this seq, re-encodes to the same bytes; leaf = SHA-256(0x00 ‖ entry).
    let entry_text = field(&r, &["entry"]);
    let facts = Entry::check(entry_text.as_bytes()).unwrap();
    assert_eq!(facts.seq, seq);
    let entry = Entry::parse(entry_text.as_bytes()).unwrap();
    assert_eq!(entry.to_canonical_json(), entry_text.as_bytes());
    let leaf = merkle::leaf_hash(entry_text.as_bytes());
    assert_eq!(leaf.to_vec(), b64(field(&r, &["leaf_hash"])));
    // Payload: SHA-256(salt ‖ body) is what the entry commits to.
    let (salt, body) = (b64(field(&r, &["salt"])), b64(field(&r, &["body"])));
    assert_eq!(payload_digest(&salt, &body), facts.payload_sha256);

    // Head (§3, §4): canonical text, ECDSA P-256 signature by the log key, the key id it names.
    let text = field(&r, &["head", "checkpoint"]);
    let head = Checkpoint::parse(text).unwrap();
    assert_eq!(head.origin, ORIGIN);
    assert_eq!(field(&r, &["head", "key_id"]), key.key_id);
    let signature = b64(field(&r, &["head", "signature"]));
    assert!(key.verify(text.as_bytes(), &signature));
    assert!(!key.verify(format!("{text} ").as_bytes(), &signature));

    // Inclusion (§9): the proof leads from the leaf to the head's root.
    let proof: Vec<Hash> = r["inclusion_proof"]
        .as_array()
        .expect("inclusion_proof")
        .iter()
        .map(|p| b64(p.as_str().expect("proof hash")).try_into().expect("32 bytes"))
        .collect();
    assert_eq!(merkle::verify_inclusion(seq, head.tree_size, &leaf, &proof, &head.root), Ok(()));
    assert!(merkle::verify_inclusion(seq, head.tree_size, &flip(&leaf, 7), &proof, &head.root).is_err());

    // RFC 3161 (§6): the token time-stamps SHA-256 of the head text and chains to the TSA CA; no nonce offline.
    let anchors = TrustAnchors::from_pem(TSA_CA_PEM.as_bytes()).unwrap();
    let opts = VerifyOptions {
        expected_imprint: Sha256::digest(text.as_bytes()).into(),
        expected_nonce: None,
        trust: &anchors,
        policy: None,
        not_before: None,
    };
    let token = b64(field(&r, &["head", "timestamp_token"]));
    let stamped = verify_response(&token, &opts).unwrap();
    assert_eq!(stamped.tsa_subject, "CN=Test TSA");
    let other = VerifyOptions { expected_imprint: [0; 32], ..opts };
    assert_eq!(verify_response(&token, &other).map(|_| ()), Err(TokenError::ImprintMismatch));

    // Witness (§16.6): the stored cosignature line verifies over the head text.
    let line = r["head"]["cosignatures"][0].as_str().expect("a cosignature line");
    assert!(cosignature::verify_line(line, &witness(), text).is_ok());
}

#[test]
fn receipt_of_a_json_event_checks() {
    check_receipt(RECEIPT_1);
}

#[test]
fn receipt_of_an_okta_event_checks() {
    check_receipt(RECEIPT_5);
}

#[test]
fn receipt_with_a_flipped_entry_bit_fails() {
    let r = receipt(RECEIPT_1);
    let entry = field(&r, &["entry"]).replacen("dev-producer", "dev-producez", 1);
    let leaf = merkle::leaf_hash(entry.as_bytes());
    assert_ne!(leaf.to_vec(), b64(field(&r, &["leaf_hash"])));
}

// ---------------------------------------------------------------------------------------------------------------
// The one-call verifiers the browser runs: receipts and bundles, with the TSA roots and the witness.

fn timestamp_policy() -> TimestampPolicy {
    TimestampPolicy::new(TrustAnchors::from_pem(TSA_CA_PEM.as_bytes()).unwrap())
}

fn witness_policy() -> WitnessPolicy {
    WitnessPolicy::new(vec![witness()], None).unwrap()
}

#[test]
fn receipts_verify_in_one_call() {
    for (text, seq) in [(RECEIPT_1, 1), (RECEIPT_5, 5)] {
        let r: Receipt = serde_json::from_str(text).unwrap();
        let keys = [log_key()];
        let (tsa, witnesses) = (timestamp_policy(), witness_policy());
        let report = receipt::verify_keys(&r, &keys, Some(ORIGIN), Some(&tsa), Some(&witnesses)).unwrap();
        assert_eq!((report.seq, report.erased, report.origin.as_str()), (seq, false, ORIGIN));
        assert_eq!(report.key_id, log_key().key_id);
        assert_eq!(report.timestamp.map(|t| t.verified), Some(1));
        assert_eq!(report.witnesses.map(|w| w.newest_cosigned_by.len()), Some(1));
        let mut altered = r.clone();
        altered.entry = altered.entry.replacen("dev-producer", "dev-producez", 1);
        assert!(receipt::verify_keys(&altered, &keys, None, None, None).is_err());
    }
}

#[test]
fn bundles_verify_from_a_stream() {
    // Heads 0 and 0..=3 of the vector log (the second with an erased payload and its record).
    for (tar, events, erased) in [(BUNDLE_H0, 1, 0), (BUNDLE_H3, 1, 0)] {
        let keys = [log_key()];
        let (tsa, witnesses) = (timestamp_policy(), witness_policy());
        let mut seen = Vec::new();
        let mut open = || Ok(ForwardOnly::new(tar));
        let r = verify_bundle_from(&mut open, &keys, Some(ORIGIN), Some(&tsa), None, &mut |n| seen.push(n))
            .unwrap();
        assert_eq!((r.report.events, r.report.erased, r.report.origin.as_str()), (events, erased, ORIGIN));
        assert_eq!(seen.last(), Some(&events));
        let mut open = || Ok(std::io::Cursor::new(tar));
        let w = verify_bundle_from(&mut open, &keys, None, None, Some(&witnesses), &mut |_| {}).unwrap();
        assert_eq!(w.witnesses.map(|w| w.newest_cosigned_by.len()), Some(1));
        // One flipped byte in the event's entry never verifies.
        let mut flipped = tar.to_vec();
        let at = flipped.windows(9).position(|w| w == b"\"entry\":\"").expect("an entries.jsonl line") + 20;
        flipped[at] ^= 1;
        let mut open = || Ok(ForwardOnly::new(&flipped[..]));
        assert!(verify_bundle_from(&mut open, &keys, None, None, None, &mut |_| {}).is_err());
    }
}
