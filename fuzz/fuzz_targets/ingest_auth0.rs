//! Request bodies of a `auth0` source (POST /v1/sources/{name}/events, and /v1/events for generic JSON): the
//! parser must refuse or accept every body without panicking, and what it accepts must keep its contract.
#![no_main]

use anchorlog::formats::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| anchorlog_fuzz::ingest::check(Format::Auth0, body));
