//! The auditor's console's verifier: anchorlog-core's receipt, bundle and head verification, exported to
//! JavaScript with wasm-bindgen.
//!
//! The page (console/web) runs these functions in a Web Worker (a bundle's events in several: [`workers`]). Each takes the evidence, the auditor's
//! trusted key(s) as PEM text and an options object as JSON, and answers one JSON text, the [`verdict`]:
//!
//! - `{"ok": true, "report": {…}}`: the core's report (what was checked, for the page to list);
//! - `{"ok": false, "failure": {"kind": "seq"|"height", "at": N, "message": "…"}}`: the evidence is invalid at
//!   that record, in the same words as `anchorlog verify`;
//! - `{"ok": false, "input_error": "…"}`: the inputs could not be used (not a receipt, no key …).
//!
//! The functions never trust a key the evidence carries: the keys are the auditor's (with the option `keyring`,
//! the keys of the log's nodes, any of which may sign any head: docs/FORMAT.md §20). Everything is also
//! callable natively (`verify_*_json`), which is how the unit tests run it.

pub mod head;
pub mod options;
#[cfg(target_arch = "wasm32")]
mod reader;
pub mod verdict;
pub mod workers;

use anchorlog_core::bundle::{BundleOpen, BundleRead};
use anchorlog_core::verify::VerifyError;
use options::Trust;
use serde_json::Value;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen::prelude::*;

/// This build's version (the page's footer).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen)]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Verifies a receipt (the JSON of `GET /v1/events/{seq}/receipt`) against `keys` (PEM public keys or
/// certificates) under `options` (JSON, [`options::Options`]). Returns the verdict as JSON text.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen)]
pub fn verify_receipt(receipt: &str, keys: &str, options: &str) -> String {
    verify_receipt_json(receipt, keys, options).to_string()
}

/// [`verify_receipt`]'s verdict as a JSON value.
pub fn verify_receipt_json(receipt: &str, keys: &str, options: &str) -> Value {
    let trust = match Trust::parse(keys, options) {
        Ok(t) => t,
        Err(e) => return verdict::input_error(e),
    };
    let receipt: anchorlog_core::receipt::Receipt = match serde_json::from_str(receipt) {
        Ok(r) => r,
        Err(e) => return verdict::input_error(format!("this is not an anchorlog receipt (JSON): {e}")),
    };
    let verify = if trust.keyring {
        anchorlog_core::receipt::verify_keyring
    } else {
        anchorlog_core::receipt::verify_keys
    };
    verdict::of(verify(
        &receipt,
        &trust.keys,
        trust.origin.as_deref(),
        trust.timestamps.as_ref(),
        trust.witnesses.as_ref(),
    ))
}

/// Verifies a signed head (the JSON of `GET /v1/heads/latest` or `/v1/heads/{height}`): its signature under
/// `keys`, its origin, and with the options its RFC 3161 token and witness cosignatures ([`head`]).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen)]
pub fn verify_head(head_json: &str, keys: &str, options: &str) -> String {
    verify_head_json(head_json, keys, options).to_string()
}

/// [`verify_head`]'s verdict as a JSON value.
pub fn verify_head_json(head_json: &str, keys: &str, options: &str) -> Value {
    let trust = match Trust::parse(keys, options) {
        Ok(t) => t,
        Err(e) => return verdict::input_error(e),
    };
    match head::ServedHead::parse(head_json) {
        Ok(h) => verdict::of(head::verify(&h, &trust)),
        Err(e) => verdict::input_error(e),
    }
}

/// Verifies a bundle (`anchorlog export`, a tar archive) of `size` bytes that `read(offset, length)` returns
/// slices of (a `Uint8Array`; in the page a `FileReaderSync` over the auditor's `File`, so a bundle of any
/// size is streamed, never loaded whole). `progress(events, bytes)` is called as batches of events are
/// verified.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn verify_bundle(
    read: &js_sys::Function,
    size: f64,
    keys: &str,
    options: &str,
    progress: &js_sys::Function,
) -> String {
    let position = std::cell::Cell::new(0u64);
    // The verifier reads the bundle twice (its small members, then the events): each pass opens it afresh.
    let mut open = || Ok(reader::JsFile::new(read, size, &position));
    let mut on_progress = |events: u64| {
        // A failing progress callback (the page went away) must not stop the verification.
        let _ = progress.call2(
            &JsValue::NULL,
            &JsValue::from(events as f64),
            &JsValue::from(position.get() as f64),
        );
    };
    verify_bundle_from(&mut open, keys, options, &mut on_progress).to_string()
}

/// A bundle verification split over Web Workers ([`workers`]), the coordinator's side: the first pass and the
/// walk. The page's checking workers run [`check_entries`] on chunks of `entries.jsonl` (the bytes at
/// `entries_offset`, `entries_size` long, split at line ends) and the coordinator folds their answers in
/// order ([`BundleSession::fold`]), then asks for the verdict ([`BundleSession::finish`]).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub struct BundleSession {
    /// `None` once finished.
    session: Option<workers::Session>,
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
impl BundleSession {
    /// The first pass over the bundle `read` gives slices of (as [`verify_bundle`]): its manifest, heads and
    /// anchor, checked under `keys` and `options`. A failure here is already the verdict ([`Self::walking`]
    /// is then false).
    pub fn start(read: &js_sys::Function, size: f64, keys: &str, options: &str) -> BundleSession {
        let position = std::cell::Cell::new(0u64);
        let mut open = || Ok(reader::JsFile::new(read, size, &position));
        BundleSession { session: Some(workers::Session::start(&mut open, keys, options)) }
    }

    /// Whether events are to be folded: the first pass passed and no failure is known yet.
    pub fn walking(&self) -> bool {
        self.session.as_ref().and_then(workers::Session::next_seq).is_some()
    }

    /// Offset of `entries.jsonl`'s first byte in the file; −1 when it is not a plain tar member (then the page
    /// verifies with [`verify_bundle`], which reads it through the tar reader) or nothing is to be folded.
    pub fn entries_offset(&self) -> f64 {
        self.session.as_ref().and_then(workers::Session::entries).map_or(-1.0, |e| e.offset as f64)
    }

    /// Size of `entries.jsonl` in bytes (0 when [`Self::entries_offset`] is −1).
    pub fn entries_size(&self) -> f64 {
        self.session.as_ref().and_then(workers::Session::entries).map_or(0.0, |e| e.size as f64)
    }

    /// The seq the walk expects next (−1 once the verdict is known): the page's progress.
    pub fn next_seq(&self) -> f64 {
        self.session.as_ref().and_then(workers::Session::next_seq).map_or(-1.0, |s| s as f64)
    }

    /// Folds the answer of [`check_entries`] for the next chunk (in file order) into the walk; `false` once the
    /// verdict is known (a failure): stop and call [`Self::finish`].
    pub fn fold(&mut self, checked: &[u8]) -> bool {
        self.session.as_mut().is_some_and(|s| s.fold(checked))
    }

    /// Checks the next head token ahead (with a TSA CA in the options), while the checking workers work: the
    /// verdict is the same, [`Self::finish`] then has less to do. `false` when none is left.
    pub fn precheck_token(&mut self) -> bool {
        self.session.as_mut().is_some_and(workers::Session::precheck_token)
    }

    /// The verdict, as [`verify_bundle`]'s JSON text (after the last chunk, or after a failure).
    pub fn finish(&mut self) -> String {
        match self.session.take() {
            Some(s) => s.finish().to_string(),
            None => verdict::input_error("this bundle verification is already finished").to_string(),
        }
    }
}

/// A checking worker's job: the own checks of every line of `chunk` (whole lines of `entries.jsonl`), as the
/// compact binary answer [`BundleSession::fold`] reads ([`workers::check_chunk`]).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn check_entries(chunk: &[u8]) -> Vec<u8> {
    workers::check_chunk(chunk)
}

/// Verifies the bundle `open` reads (once per pass, from its start: the page's file, or a file natively);
/// `progress` is told how many events have been verified.
pub fn verify_bundle_from<R: BundleRead>(
    open: BundleOpen<'_, R>,
    keys: &str,
    options: &str,
    progress: &mut dyn FnMut(u64),
) -> Value {
    let trust = match Trust::parse(keys, options) {
        Ok(t) => t,
        Err(e) => return verdict::input_error(e),
    };
    match anchorlog_core::bundle::verify_bundle_signers(
        open,
        &trust.keys,
        trust.keyring,
        trust.origin.as_deref(),
        trust.timestamps.as_ref(),
        trust.witnesses.as_ref(),
        progress,
    ) {
        Ok(report) => verdict::ok(&report),
        Err(VerifyError::Invalid(failure)) => verdict::failure(&failure),
        Err(other) => verdict::input_error(other.to_string()),
    }
}
