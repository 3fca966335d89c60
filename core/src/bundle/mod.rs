//! Export bundles: one tar file an auditor carries offline and verifies with nothing but the signer's public
//! key (layout in docs/FORMAT.md §7).
//!
//! ```text
//! manifest.json            origin, height range, seq range, key ids, algorithms, format version, anchor
//! keys/<key id>.pem        the public key(s) that signed the heads
//! heads/<height>.txt       the exact signed checkpoint text (the anchor head first, when the range starts > 0)
//! heads/<height>.sig       its DER ECDSA signature
//! heads/<height>.tsr       its RFC 3161 timestamp response, when there is one (optional)
//! heads/<height>.note      its signed note with the witnesses' cosignature lines, when it has any (optional)
//! entries.jsonl            one JSON object per event, seq order: entry, leaf hash, salt, body or erasure record
//! erasure-records.jsonl    (when needed) the erasure records of payloads erased after the last head, with proofs
//! key-rotations.jsonl      (when needed) the key rotation records outside the range, with proofs
//! ```
//!
//! A bundle for heights `A..=B` holds the events `S0..S1`, where `S0` is the tree size of head `A − 1` (0 for
//! `A = 0`) and `S1` is head `B`'s tree size. To check head `A` on its own it also carries the **anchor**: head
//! `A − 1` (text and signature) and the `popcount(S0)` perfect-subtree roots that make up the tree of size `S0`.
//! The verifier checks the anchor's signature, that the subtree roots fold to its root, and then continues the
//! same walk the database verifier does ([`crate::verify::walk`]) from that frontier.

//!
//! This module is the format and its reader: it verifies a bundle from any [`std::io::Read`] (a file, a browser
//! `File` read in chunks), with a progress callback. Writing one reads the database and is the appliance's
//! (`anchorlog::bundle::export`), as is opening a bundle by path.

mod read;

pub use read::{
    check_line, check_line_reference, verify_bundle_from, verify_bundle_signers, BundleCheck, BundleOpen,
    BundleRead, BundleReport, EntriesMember, ForwardOnly,
};

use crate::stored::ErasureRecord;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// `manifest.json` `format` value.
pub const BUNDLE_FORMAT: &str = "anchorlog-bundle";
/// `manifest.json` `version` this build writes; it reads every version from 1 up to this one. 2: erased
/// payloads must be accounted for by the appliance's erasure record, in `entries.jsonl` or in
/// [`ERASURE_RECORDS`].
pub const BUNDLE_VERSION: u64 = 2;
/// Name of the member holding the erasure records (with their proofs) of payloads erased after the bundle's
/// last head ([`crate::verify::erasure::ErasureRecordProof`], one JSON object per line).
pub const ERASURE_RECORDS: &str = "erasure-records.jsonl";
/// Name of the member holding the key rotation records (with their proofs) before the bundle's range and after
/// it, as far as its erasure record proofs reach ([`crate::verify::keys::KeyRotationProof`], one JSON object per
/// line, in seq order).
pub const KEY_ROTATIONS: &str = "key-rotations.jsonl";
/// Name of the manifest member.
pub const MANIFEST: &str = "manifest.json";
/// Name of the entries member.
pub const ENTRIES: &str = "entries.jsonl";

/// Algorithms of everything hashed and signed in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Algorithms {
    /// `sha-256`.
    pub hash: String,
    /// `rfc9162-sha256`.
    pub tree: String,
    /// `ecdsa-p256-sha256` (DER signatures).
    pub signature: String,
    /// `rfc3161` when heads carry tokens, else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// The state before the bundle's first head: head `from_height − 1` and its tree's perfect subtrees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Height of the anchor head (`from_height − 1`); its text and signature are in `heads/`.
    pub height: u64,
    /// Its tree size (= `first_seq`).
    pub tree_size: u64,
    /// Base64 roots of the perfect subtrees of the tree of size `tree_size`, largest (leftmost) first.
    pub subtrees: Vec<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// [`BUNDLE_VERSION`].
    pub version: u64,
    /// The log's origin (first line of every checkpoint).
    pub origin: String,
    /// First head height in the bundle.
    pub from_height: u64,
    /// Last head height in the bundle (inclusive).
    pub to_height: u64,
    /// First seq in `entries.jsonl`.
    pub first_seq: u64,
    /// One past the last seq (= head `to_height`'s tree size).
    pub end_seq: u64,
    /// Hex key ids of the keys that signed the heads (files `keys/<id>.pem`).
    pub key_ids: Vec<String>,
    /// Algorithms.
    pub algorithms: Algorithms,
    /// The anchor head, present when `from_height > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
    /// When the bundle was written (RFC 3339, informative only).
    pub created_at: String,
}

/// One line of `entries.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryLine<'a> {
    /// Sequence number.
    pub seq: u64,
    /// The exact canonical entry text the leaf commits to.
    #[serde(borrow)]
    pub entry: Cow<'a, str>,
    /// Base64 `SHA-256(0x00 ‖ entry)` (redundant; the verifier recomputes it).
    #[serde(borrow)]
    pub leaf_hash: Cow<'a, str>,
    /// Base64 salt, `null` once erased.
    #[serde(borrow)]
    pub salt: Option<Cow<'a, str>>,
    /// Base64 body bytes, `null` once erased.
    #[serde(borrow)]
    pub body: Option<Cow<'a, str>>,
    /// Who erased the payload, when and why, for an erased event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureRecord>,
}

/// Path of a head member: `heads/<height>.<ext>` (`txt`, `sig`, `tsr`).
pub fn head_path(height: u64, ext: &str) -> String {
    format!("heads/{height}.{ext}")
}
