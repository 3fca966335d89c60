//! The test kit: every integration test starts the parts it runs on through here, the same way everywhere
//! (after parsec's e2e test kit: one crate-local module tree that each test target includes with `mod kit;`).
//!
//! What it starts, each owned by the test and killed or deleted on drop, so that a failing test leaves nothing
//! running:
//!
//! - [`softhsm`]: SoftHSM2 token directories (one per appliance or witness, or one per test process for tests
//!   that load the PKCS#11 module themselves) and tokens in them.
//! - [`appliance`] (re-exported here): the real `anchorlog serve` binary on 127.0.0.1:0 with its own token,
//!   certificates, configuration and database; [`Options`] turns its knobs. [`Appliance::serve_in_process`] runs
//!   the same service inside the test instead, behind a signer double; [`Appliance::audit`] and
//!   [`Appliance::wait_log`] are the auditor's CLI and the wait for a log line.
//! - [`swtpm`]: a real TPM 2.0 (`swtpm`) for the TPM signer backend.
//! - [`tsa`]: a real RFC 3161 TSA (`openssl ts` behind `tsa/tsa_http.py`) with its fault modes.
//! - [`witness`]: a real `anchorlog witness` process.
//! - [`postgres`]: a real PostgreSQL 15 server (`initdb`/`pg_ctl` as the `postgres` user) per test, for the
//!   PostgreSQL storage (src/store/pg); killed with SIGKILL and restarted on demand; a primary with a synchronous
//!   streaming standby (`PgCluster`) to kill and promote; `pg_basebackup` of a server and its restore.
//! - [`browser`]: headless Chromium driven over WebDriver (`chromedriver`), for the auditor's console.
//! - [`health`]: the plain-HTTP health listener's answers.
//! - [`bundle`]: export bundles (tar) taken apart and put back together, as an attacker would, and the
//!   independent Python verifier (`tests/verify_bundle.py`) run on them.
//! - [`log_builder`]: signed logs written straight into SQLite with a software key (no process, no token).
//!
//! The `tests/` targets must run without SoftHSM: they include just [`log_builder`] and [`bundle`], each file
//! alone (`#[path = "../softhsm-tests/kit/…"]`), which is why those two name no other kit module.
//!
//! A test target is registered in the root `Cargo.toml` with `path = "softhsm-tests/NAME.rs"` and
//! `required-features = ["server", "pkcs11"]`, declares `mod kit;` and uses what it needs, e.g.
//! `let a = kit::Appliance::start_with(kit::Options { .. })`. Each target compiles the whole kit, so helpers a
//! target does not use are not dead code.
#![allow(dead_code)]

pub mod appliance;
pub mod browser;
pub mod bundle;
pub mod health;
pub mod log_builder;
pub mod pg_log;
pub mod postgres;
pub mod softhsm;
pub mod swtpm;
pub mod tsa;
pub mod witness;

// The names nearly every test uses, at the kit's top; a target that uses none of them would warn without this.
#[allow(unused_imports)]
pub use appliance::*;
#[allow(unused_imports)]
pub use softhsm::{SOFTHSM, USER_PIN};

/// Polls `f` every 50 ms until it returns true or `secs` pass: every wait for a state has a deadline, so that a
/// test under load waits longer instead of reading too early, and a broken one fails instead of hanging.
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
