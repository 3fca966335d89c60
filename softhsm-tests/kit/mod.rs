//! The test kit: every integration test starts the parts it runs on through here, the same way everywhere
//! (after parsec's e2e test kit: one crate-local module tree that each test target includes with `mod kit;`).
//!
//! What it starts, each owned by the test and killed or deleted on drop, so that a failing test leaves nothing
//! running:
//!
//! - [`softhsm`]: SoftHSM2 token directories (one per appliance or witness, or one per test process for tests
//!   that load the PKCS#11 module themselves) and tokens in them.
//! - [`appliance`] (re-exported here): the real `anchorlog serve` binary on 127.0.0.1:0 with its own token,
//!   certificates, configuration and database; [`Options`] turns its knobs.
//! - [`swtpm`]: a real TPM 2.0 (`swtpm`) for the TPM signer backend.
//! - [`tsa`]: a real RFC 3161 TSA (`openssl ts` behind `tsa/tsa_http.py`) with its fault modes.
//! - [`witness`]: a real `anchorlog witness` process.
//! - [`health`]: the plain-HTTP health listener's answers.
//! - [`bundle`]: export bundles (tar) taken apart and put back together, as an attacker would.
//! - [`log_builder`]: signed logs written straight into SQLite with a software key (no process, no token);
//!   the `tests/` targets include this one file alone (`#[path]`), since they must run without SoftHSM.
//!
//! A test target is registered in the root `Cargo.toml` with `path = "softhsm-tests/NAME.rs"` and
//! `required-features = ["server", "pkcs11"]`, declares `mod kit;` and uses what it needs, e.g.
//! `let a = kit::Appliance::start_with(kit::Options { .. })`. Each target compiles the whole kit, so helpers a
//! target does not use are not dead code.
#![allow(dead_code)]

pub mod appliance;
pub mod bundle;
pub mod health;
pub mod log_builder;
pub mod softhsm;
pub mod swtpm;
pub mod tsa;
pub mod witness;

// The names nearly every test uses, at the kit's top; a target that uses none of them would warn without this.
#[allow(unused_imports)]
pub use appliance::*;
#[allow(unused_imports)]
pub use softhsm::{SOFTHSM, USER_PIN};
