//! Signed notes and what travels with them (src/note): a whole note, signature-line blocks (a witness's
//! `add-checkpoint` answer), verifier keys, the witness protocol bodies (`add-checkpoint` request, the 409
//! `text/x.tlog.size` answer) and cosignature/v1 lines. A parsed note must print back to the same bytes and
//! verification against the seed log's and witness's keys must answer, never panic.
#![no_main]

use anchorlog_core::note::{self, cosignature, protocol, Note, VerifierKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = Note::parse(data) {
        assert_eq!(n.to_text().as_bytes(), data, "a parsed note prints back differently");
        let trusted = [anchorlog_fuzz::log_vkey().clone(), anchorlog_fuzz::witness_vkey().clone()];
        let _ = n.verify(&trusted);
        let _ = cosignature::cosigned_by(&n, std::slice::from_ref(anchorlog_fuzz::witness_vkey()));
        for sig in n.signatures() {
            let _ = cosignature::timestamp(sig);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = note::parse_signature_lines(text);
        let _ = VerifierKey::parse(text);
        let _ = cosignature::verify_line(text, anchorlog_fuzz::witness_vkey(), "origin\n1\n\n");
        if let Some((a, b)) = text.split_once("\n\n\n") {
            let _ = note::append_signature_lines(a, b);
        }
    }
    if let Ok(req) = protocol::AddCheckpointRequest::parse(data) {
        assert_eq!(protocol::AddCheckpointRequest::parse(&req.to_body()).as_ref(), Ok(&req));
        let _ = Note::parse(req.checkpoint.as_bytes());
    }
    if let Ok(size) = protocol::parse_tlog_size_body(data) {
        assert_eq!(protocol::tlog_size_body(size).as_bytes(), data);
    }
});
