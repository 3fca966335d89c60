//! The split verification gives the one-worker verifier's verdicts, word for word, however the entries are
//! cut into chunks.

use super::*;
use anchorlog_core::bundle::ForwardOnly;

const KEY: &str = include_str!("../../../core/tests/vectors/log-key.pem");
const BUNDLES: [&[u8]; 2] = [
    include_bytes!("../../../core/tests/vectors/bundle-h0.tar"),
    include_bytes!("../../../core/tests/vectors/bundle-h3.tar"),
];

const TSA_CA: &str = include_str!("../../../core/tests/vectors/tsa-ca.pem");

/// The bundle verified the split way: first pass, entries cut into chunks of about `chunk` bytes at line ends,
/// each checked on its own, folded in order; with `precheck`, the tokens checked ahead first.
fn split(tar: &[u8], options: &str, chunk: usize) -> Value {
    split_with(tar, options, chunk, false)
}

fn split_with(tar: &[u8], options: &str, chunk: usize, precheck: bool) -> Value {
    let mut open = || Ok(std::io::Cursor::new(tar));
    let mut session = Session::start(&mut open, KEY, options);
    while precheck && session.precheck_token() {}
    let Some(e) = session.entries() else { return session.finish() };
    let entries = &tar[e.offset as usize..(e.offset + e.size) as usize];
    let mut at = 0;
    while at < entries.len() {
        // At least `chunk` bytes, up to the end of the line they end in.
        let from = (at + chunk).min(entries.len()) - 1;
        let end = entries[from..].iter().position(|&b| b == b'\n').map_or(entries.len(), |i| from + i + 1);
        if !session.fold(&check_chunk(&entries[at..end])) {
            break;
        }
        at = end;
    }
    session.finish()
}

fn whole(tar: &[u8], options: &str) -> Value {
    let mut open = || Ok(ForwardOnly::new(tar));
    crate::verify_bundle_from(&mut open, KEY, options, &mut |_| {})
}

#[test]
fn the_split_verdict_is_the_one_worker_verdict() {
    for tar in BUNDLES {
        for options in ["{}", r#"{"origin":"elsewhere"}"#] {
            let want = whole(tar, options);
            for chunk in [1, 64, 1 << 20] {
                assert_eq!(split(tar, options, chunk), want, "chunk {chunk}");
            }
        }
        assert_eq!(whole(tar, "{}")["ok"], true);
        // Tokens checked ahead or at the end: the same verdict (and a token that does not verify, under a CA
        // that did not issue it, fails the same way).
        for ca in [TSA_CA, KEY] {
            let options = serde_json::json!({ "tsa_ca_pem": ca, "require_timestamps": true }).to_string();
            let want = whole(tar, &options);
            assert_eq!(want["ok"], ca == TSA_CA, "{want}");
            for precheck in [false, true] {
                assert_eq!(split_with(tar, &options, 64, precheck), want, "precheck {precheck}");
            }
        }
        // A flipped byte in the entry, and a line cut short: the same failure, at the same seq.
        let mut flipped = tar.to_vec();
        let at = flipped.windows(9).position(|w| w == b"\"entry\":\"").expect("an entries.jsonl line") + 20;
        flipped[at] ^= 1;
        let mut cut = tar.to_vec();
        cut[at - 9] = b'\n';
        for bad in [flipped, cut] {
            let want = whole(&bad, "{}");
            assert_eq!(want["ok"], false, "{want}");
            for chunk in [1, 64, 1 << 20] {
                assert_eq!(split(&bad, "{}", chunk), want, "chunk {chunk}");
            }
        }
    }
}

#[test]
fn records_and_failures_go_back_whole_and_a_failure_ends_the_chunk() {
    let e = {
        let mut open = || Ok(std::io::Cursor::new(BUNDLES[0]));
        Session::start(&mut open, KEY, "{}").entries().expect("a plain member")
    };
    let entries = &BUNDLES[0][e.offset as usize..(e.offset + e.size) as usize];
    // Its one event is the appliance's start record: the coordinator reads it again itself.
    assert_eq!(check_chunk(entries), [&[RAW][..], &(entries.len() as u64).to_le_bytes(), entries].concat());
    let garbage = b"not json\n{\"seq\":1}\n";
    let out = check_chunk(garbage);
    // The first line fails: it goes back raw, and nothing after it is checked.
    assert_eq!(out[0], RAW);
    assert_eq!(&out[9..], b"not json\n");
}

#[test]
fn a_garbled_answer_is_an_input_error_not_a_panic() {
    let mut open = || Ok(std::io::Cursor::new(BUNDLES[0]));
    let mut session = Session::start(&mut open, KEY, "{}");
    for answer in [
        &[7u8][..],
        &[PLAIN, 1, 2],
        &[RAW, 9, 0, 0, 0, 0, 0, 0, 0, b'x'],
        &[RAW, 255, 255, 255, 255, 255, 255, 255, 255],
    ] {
        let mut s = Session::start(&mut || Ok(std::io::Cursor::new(BUNDLES[0])), KEY, "{}");
        assert!(!s.fold(answer));
        assert!(s.finish()["input_error"].as_str().unwrap_or_default().contains("garbled"));
    }
    assert!(session.fold(&[]));
}
