//! anchorlog-core: everything an auditor's verifier needs to check an anchorlog log, and nothing that does I/O.
//!
//! The appliance (`anchorlog`), its offline verifier, the witness and the browser console all use this crate,
//! so there is one implementation of every hashed, signed and parsed byte of docs/FORMAT.md. It is pure
//! computation over bytes the caller hands in: no files, sockets, processes, clocks, entropy sources or
//! databases, and it builds for `wasm32-unknown-unknown` (CI checks the build, and that `cargo tree` shows no
//! SQLite, tokio, axum, cryptoki or tss-esapi). Reading a database or a bundle file, asking a TSA or a
//! witness, and signing with a hardware key stay in the appliance. See `core/README.md` for the rule.
//!
//! # Module map
//!
//! | module | owns |
//! |---|---|
//! | [`merkle`] | RFC 9162 math: leaf and node hashes, roots, inclusion and consistency proofs, the frontier |
//! | [`entry`] | the canonical entry each leaf commits to: encoding, the strict parser, the payload digest |
//! | [`record_types`] | the names of the appliance's own records (starts, stops, erasures, rotations …) |
//! | [`head`] | checkpoint text (the signed block head), its TPM counter line, the signed-note form |
//! | [`counter`] | the TPM counter rules: chain step, start-up and attested "is this the newest copy" |
//! | [`note`] | C2SP signed notes, checkpoints, verifier keys, `cosignature/v1`, the witness protocol bodies |
//! | [`key`] | the head-signing key's public half ([`key::PublicKey`]): ECDSA P-256 verification, key ids |
//! | [`tsa`] | RFC 3161: token types, request encoding, verification of responses and tokens |
//! | [`attestation`] | TPM 2.0 key and counter attestation evidence and its verification |
//! | [`stored`] | the plain rows a verifier walks: stored events, heads, erasure records |
//! | [`verify`] | the offline verifier's walk over any event source, its failures and report, proofs, tokens, cosignatures |
//! | [`receipt`] | per-event receipts and their offline check |
//! | [`bundle`] | the export bundle format and its reader: verifies a bundle from any `std::io::Read`, with progress |

// Every public item is documented: auditors and the browser bindings read this API (CI: clippy -D warnings).
#![warn(missing_docs)]

pub mod attestation;
pub mod bundle;
pub mod counter;
pub mod entry;
pub mod head;
pub mod key;
pub mod merkle;
pub mod note;
pub mod receipt;
pub mod record_types;
pub mod stored;
pub mod tsa;
pub mod verify;
