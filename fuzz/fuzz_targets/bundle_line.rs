//! One `entries.jsonl` line of an export bundle (core/src/bundle/read.rs): the hand-written fast reader must read
//! every line exactly as serde_json does (it only changes how fast a line is read, never what it is read as),
//! and neither may panic.
#![no_main]

use anchorlog_core::bundle::{check_line, check_line_reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    assert_eq!(check_line(line, 7), check_line_reference(line, 7), "fast and reference readers disagree");
});
