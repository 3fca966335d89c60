//! A whole export bundle (tar) as the offline verifier reads it (src/bundle/read.rs): manifest, heads,
//! signatures, tokens, cosigned notes, erasure and key-rotation records, then the walk over `entries.jsonl`,
//! against the seed log's key, its TSA's CA and its witness. The verifier reads a path, so each input is
//! written to a file in the temporary directory first (one per fuzzing process).
#![no_main]

use anchorlog::bundle;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("anchorlog-fuzz-bundle-{}.tar", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let key = std::slice::from_ref(anchorlog_fuzz::log_key());
    let tsa = anchorlog_fuzz::timestamp_policy();
    let witnesses = anchorlog_fuzz::witness_policy();
    let _ = bundle::verify_bundle_keys(path, key, None, Some(&tsa), Some(&witnesses));
    let _ = bundle::verify_bundle(path, anchorlog_fuzz::log_key(), Some(anchorlog_fuzz::log_origin()));
});
