//! The configuration file (src/config.rs): TOML, then validation. Read at start-up and by `check-config`; an
//! operator's typo must give an error, never a panic.
#![no_main]

use anchorlog::config::{self, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Config::parse(text) {
        let _ = (c.witness_quorum(), c.sealing.seal_interval(), c.sealing.heartbeat_interval());
    }
    // The single-value checks the configuration and the CLI share.
    let _ = config::validate_origin(text);
    let _ = config::validate_name(text);
    let _ = config::normalize_identity(text);
});
