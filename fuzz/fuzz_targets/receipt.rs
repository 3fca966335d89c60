//! A receipt (GET /v1/events/{seq}/receipt, `anchorlog verify-receipt`; core/src/receipt.rs) as an auditor's tool
//! reads it: JSON, then the entry, payload, leaf, head signature, inclusion proof, erasure record, key
//! rotations, token and cosignatures, against the seed log's key, TSA CA and witness.
#![no_main]

use anchorlog_core::receipt::{self, Receipt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = serde_json::from_slice::<Receipt>(data) else { return };
    let key = anchorlog_fuzz::log_key();
    let tsa = anchorlog_fuzz::timestamp_policy();
    let witnesses = anchorlog_fuzz::witness_policy();
    let _ = receipt::verify_keys(&r, std::slice::from_ref(key), None, Some(&tsa), Some(&witnesses));
    let _ = receipt::verify_pinned(&r, key, Some(anchorlog_fuzz::log_origin()), None);
});
