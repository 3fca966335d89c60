//! Checkpoint text: the C2SP tlog checkpoint a witness is sent (src/note/checkpoint.rs) and anchorlog's own
//! block head (src/ledger/head.rs), both read from bundles, receipts, witnesses and the monitor's peers. Whatever
//! parses must print back to the exact same text (the signature covers those bytes).
#![no_main]

use anchorlog_core::head::Checkpoint;
use anchorlog_core::note::TlogCheckpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = TlogCheckpoint::parse(text) {
        assert_eq!(c.to_text(), text, "a parsed checkpoint prints back differently");
    }
    if let Ok(head) = Checkpoint::parse(text) {
        assert_eq!(head.to_text().ok().as_deref(), Some(text), "a parsed head prints back differently");
        let _ = head.time_rfc3339();
        // Every anchorlog head is also a valid C2SP checkpoint (witnesses parse it as one).
        assert!(TlogCheckpoint::parse(text).is_ok(), "a head that is not a tlog checkpoint");
    }
});
