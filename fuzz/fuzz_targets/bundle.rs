//! A whole export bundle (tar) as the offline verifier reads it (core/src/bundle/read.rs): manifest, heads,
//! signatures, tokens, cosigned notes, erasure and key-rotation records, then the walk over `entries.jsonl`,
//! against the seed log's key, its TSA's CA and its witness. The core reads any reader, so each input is read
//! from memory as a stream (what the browser hands it), with no file in between.
#![no_main]

use anchorlog_core::bundle::{verify_bundle_from, ForwardOnly};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut open = || Ok(ForwardOnly::new(data));
    let key = std::slice::from_ref(anchorlog_fuzz::log_key());
    let tsa = anchorlog_fuzz::timestamp_policy();
    let witnesses = anchorlog_fuzz::witness_policy();
    let _ = verify_bundle_from(&mut open, key, None, Some(&tsa), Some(&witnesses), &mut |_| {});
    let mut open = || Ok(std::io::Cursor::new(data));
    let origin = Some(anchorlog_fuzz::log_origin());
    let _ = verify_bundle_from(&mut open, key, origin, None, None, &mut |_| {});
});
