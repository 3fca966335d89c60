//! anchorlog: a hardware-anchored audit log appliance.
//!
//! Identity providers POST authentication and admin events over mutual TLS; anchorlog stores each one
//! durably in SQLite, batches them into hash-chained blocks whose heads commit to an RFC 9162 Merkle tree,
//! has every head signed inside a PKCS#11 HSM (or a TPM 2.0), and lets auditors verify all of it offline
//! with nothing but public keys.
//!
//! # The core and the appliance
//!
//! Everything a verifier needs and that does no I/O lives in the workspace member `core/` (crate
//! [`anchorlog_core`]), which builds for `wasm32-unknown-unknown` for the browser console: RFC 9162 math
//! (`anchorlog_core::merkle`), the canonical entry (`entry`), the names of the appliance's own records
//! (`record_types`), checkpoint text (`head`), the TPM counter rules (`counter`), C2SP signed notes, verifier
//! keys, cosignatures and the witness protocol bodies (`note`), the head-signing key's public half
//! (`key::PublicKey`), RFC 3161 token verification (`tsa`) and TPM attestation checks (`attestation`). This
//! crate is the appliance and the CLI: it feeds the core from SQLite, bundles, HTTP and devices.
//!
//! # Module map
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML configuration, defaults, validation |
//! | `ledger::event` | the event the writer appends (`NewEvent`) |
//! | `ledger::appender` | the single writer: group commit, de-duplication |
//! | `ledger::sealer` | closing blocks: build head, sign, store |
//! | `ledger::timestamper` | an RFC 3161 token per stored head: failover, back-off, back-fill |
//! | `ledger::cosigner` | witness cosignatures per stored head: submission, 409 re-proofs, back-off, back-fill, refusals |
//! | [`ledger::indexer`] | keeps the search database's normalized fields a second behind the ledger |
//! | `ledger::internal` | the appliance's own events: erasures, audit access |
//! | [`store`] | SQLite schema, append-only triggers, statements |
//! | [`store::tree`], [`store::erasure`] | stored Merkle nodes (O(log n) proofs); the one permitted update |
//! | [`store::search`] | index-driven, keyset-paginated search over the normalized fields |
//! | `keys` | `anchorlog keys`: generate inside the device, export public key and certificate, attest, rotate, CSR |
//! | `rotation` | key rotation: the pending rotation `keys rotate` prepares, and which key a start signs with |
//! | [`signer`] | the `HeadSigner` trait, its thread, PKCS#11 and TPM 2.0 backends, X.509 export (signing only: the verification key is `anchorlog_core::key`) |
//! | [`formats`] | request bodies → events (generic JSON, Keycloak, Okta, Auth0) |
//! | `tsa` | RFC 3161, the appliance's side: nonces, the HTTP client, retry policy (verification: `anchorlog_core::tsa`) |
//! | [`verify`] | the offline verifier over the database (CLI, startup reconciliation, tests): the core's walk (`anchorlog_core::verify`: the key chain, witness quorum and token checks) fed from SQLite |
//! | [`bundle`] | export bundles: writing from the database, verifying a file (format and reader: `anchorlog_core::bundle`) |
//! | [`receipt`] | per-event receipts built from the database (format and offline check: `anchorlog_core::receipt`) |
//! | `tls` | rustls server config, client certificate → principal |
//! | `api` | the axum routes; JSON errors with stable codes; the audit-access record of every read (`api::audit_access`) |
//! | `preflight` | every file the config names, loaded and checked before the first write (`serve`, `check-config`) |
//! | `instruments` | `/metrics` histograms and labelled counters (prometheus-client) |
//! | `readiness` | what `/readyz` answers: 200, or 503 with the reasons (signer, sealing, tokens, witnesses, disk) |
//! | `server` | `serve`: start-up, accept loop, graceful shutdown |
//! | `listen` | per-listener connection caps (in all, per client address), accept back-off |
//! | [`verify::resume`] | resuming a walk after a self-verified head (start-up, self-verification) |
//! | `selfverify` | start-up from the last self-verified point; the low-priority re-verification thread; its state |
//! | `alerts` | `[[alert]]` webhooks: queued, signed, retried; outage and free-disk conditions |
//! | `systemd` | `Type=notify`: READY, STATUS, a watchdog gated on the sealer's progress, STOPPING |
//! | `dev` | `anchorlog dev`: SoftHSM token, certificates, config on first run |
//! | `dev_tpm` | `anchorlog dev --signer tpm`: swtpm under the state directory, key provisioned once |
//! | `dev_witness` | `anchorlog dev`: the local witness process under the state directory |
//! | `client` | a small mTLS HTTP/1.1 client (tests, load generator) |
//! | `monitor` | `anchorlog audit`: signed-head, rollback and fork monitor with local state |
//! | `bench` | the end-to-end load generator |
//! | `witness` | `anchorlog witness`: a c2sp.org/tlog-witness witness (state, cosigning key, HTTP) |
//!
//! Features: `server` (the appliance), `pkcs11` (the PKCS#11 backend), `tpm` (the TPM 2.0 backend; links
//! libtss2), `verify` (nothing extra: the offline
//! verifier is always built; `--no-default-features --features verify` gives an auditor's binary without
//! cryptoki, tss-esapi, TLS or HTTP code; TPM key attestations are still checked, in pure Rust).

/// Reaches a named test-only kill point (`fault::CrashPoint`): a no-op unless the build has the
/// `fault-injection` feature and the test armed that point.
macro_rules! crash_point {
    ($point:ident) => {
        #[cfg(feature = "fault-injection")]
        $crate::fault::crash_point($crate::fault::CrashPoint::$point);
    };
}

pub mod bundle;
pub mod clock;
pub mod config;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod formats;
#[cfg(feature = "server")]
pub mod instruments;
#[cfg(feature = "server")]
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod receipt;
pub mod signer;
pub mod store;
#[cfg(feature = "server")]
pub mod tsa;
pub mod verify;

#[cfg(feature = "server")]
pub mod alerts;
#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod bench;
#[cfg(feature = "server")]
pub mod client;
#[cfg(all(feature = "server", feature = "pkcs11"))]
pub mod dev;
#[cfg(all(feature = "server", feature = "pkcs11", feature = "tpm"))]
pub mod dev_tpm;
#[cfg(all(feature = "server", feature = "pkcs11"))]
pub mod dev_witness;
#[cfg(feature = "server")]
pub mod listen;
#[cfg(feature = "server")]
pub mod monitor;
/// `serve` on a PostgreSQL log: the node's writer lease, its actors while it writes (docs/HA.md).
#[cfg(all(feature = "server", feature = "postgres"))]
pub mod pg_serve;
#[cfg(feature = "server")]
pub mod preflight;
#[cfg(feature = "server")]
pub mod readiness;
#[cfg(feature = "server")]
pub mod rotation;
#[cfg(feature = "server")]
pub mod selfverify;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod syslog;
#[cfg(feature = "server")]
pub mod systemd;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod witness;
