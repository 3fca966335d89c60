//! Syslog messages (one frame of server.syslog_listen, or the lines of an HTTP body): the parser reads every
//! input without panicking, and what it stores keeps the bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| anchorlog_fuzz::syslog::check(body));
