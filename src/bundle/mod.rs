//! Export bundles (layout and reader: [`anchorlog_core::bundle`], docs/FORMAT.md §7): written here from the
//! database, and verified from a file through the core's reader, the same code the browser console runs on a
//! `File`.

pub mod export;

pub use export::{export, ExportProgress};

use anchorlog_core::bundle::{verify_bundle_signers, BundleReport};
use anchorlog_core::key::PublicKey;
use anchorlog_core::verify::timestamps::TimestampPolicy;
use anchorlog_core::verify::witnesses::WitnessPolicy;
use anchorlog_core::verify::VerifyError;
use std::io::BufReader;
use std::path::Path;

/// Why an export could not be written or a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Writing or reading the tar failed.
    #[error("bundle I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The requested range does not exist.
    #[error("{0}")]
    Range(String),
    /// Something the bundle must carry is not signed yet (an erasure record awaiting the next seal).
    #[error("{0}")]
    NotSealed(String),
    /// The bundle is not a readable anchorlog bundle.
    #[error("not a readable anchorlog bundle: {0}")]
    Unreadable(String),
}

/// Verifies the bundle at `path` against `key` (the auditor's trusted copy of the signer's public key);
/// `origin`, when given, must be the bundle's origin. Tokens are counted, not checked.
pub fn verify_bundle(
    path: &Path,
    key: &PublicKey,
    origin: Option<&str>,
) -> Result<BundleReport, VerifyError> {
    verify_bundle_with(path, key, origin, None)
}

/// [`verify_bundle`], and with `tsa` also every head's RFC 3161 token (`heads/<h>.tsr`, the anchor head's
/// included) once the heads themselves verified: the first bad token names its height; a head without one
/// is listed, or fails with [`TimestampPolicy::require`].
pub fn verify_bundle_with(
    path: &Path,
    key: &PublicKey,
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
) -> Result<BundleReport, VerifyError> {
    verify_bundle_witnessed(path, key, origin, tsa, None)
}

/// [`verify_bundle_with`], and with `witnesses` also the cosignatures in `heads/<h>.note` (docs/FORMAT.md §16.6),
/// checked after the heads and tokens: each note's text must be its head's exact text, every listed witness's
/// line must verify, and the bundle's last head must carry the policy's quorum.
pub fn verify_bundle_witnessed(
    path: &Path,
    key: &PublicKey,
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
) -> Result<BundleReport, VerifyError> {
    verify_bundle_keys(path, std::slice::from_ref(key), origin, tsa, witnesses)
}

/// [`verify_bundle_witnessed`] trusting any of `keys` as the key the chain starts with (the log's first key,
/// or a later one): the anchor head must be signed by one of them or by a key their rotations lead to
/// (`key-rotations.jsonl`, docs/FORMAT.md §20), and the heads in the range follow the rotation records in it.
pub fn verify_bundle_keys(
    path: &Path,
    keys: &[PublicKey],
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
) -> Result<BundleReport, VerifyError> {
    verify_bundle_progress(path, keys, false, origin, tsa, witnesses, &mut |_| {})
}

/// [`verify_bundle_keys`], telling `progress` how many events have been verified so far (once per batch); with
/// `keyring`, `keys` are a keyring (docs/FORMAT.md §20, "Keyrings").
pub fn verify_bundle_progress(
    path: &Path,
    keys: &[PublicKey],
    keyring: bool,
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
    progress: &mut dyn FnMut(u64),
) -> Result<BundleReport, VerifyError> {
    // A buffered file seeks over the members a pass skips; the core reads it twice, opening it each time.
    let mut open = || {
        std::fs::File::open(path)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    };
    verify_bundle_signers(&mut open, keys, keyring, origin, tsa, witnesses, progress)
}
