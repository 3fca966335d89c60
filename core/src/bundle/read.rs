//! Reading and verifying a bundle offline: the manifest, the anchor, then the same walk as the database.
//!
//! The bundle comes from any reader the caller opens ([`BundleOpen`]), twice: the first pass reads the small
//! members and skips `entries.jsonl`, the second streams it. Nothing here opens a file.

use super::{
    EntryLine, Manifest, BUNDLE_FORMAT, BUNDLE_VERSION, ENTRIES, ERASURE_RECORDS, KEY_ROTATIONS, MANIFEST,
};
use crate::head::Checkpoint;
use crate::key::PublicKey;
use crate::merkle::Frontier;
use crate::stored::{StoredEvent, StoredHead};
use crate::verify::erasure::{check_erasure_record_proof, AnchorHead, ErasureRecordProof};
use crate::verify::keys::{follow_ring_rotation_proofs, follow_rotation_proofs, HeadKeys, KeyRotationProof};
use crate::verify::timestamps::{
    check_token, verify_head_tokens_with, HeadToken, Prechecked, TimestampPolicy, TimestampReport,
};
use crate::verify::witnesses::{WitnessCheck, WitnessPolicy, WitnessReport};
use crate::verify::{
    self, CheckedEvent, Decoded, EventSource, Failure, Report, Start, VerifyError, WalkOptions, Walker,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

/// Largest manifest, head or key member read into memory.
const MAX_SMALL_MEMBER: u64 = 1 << 20;

/// What a successful bundle verification saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleReport {
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// The walk's report (events and heads of the bundle).
    pub report: Report,
    /// Heads (anchor included) that carry an RFC 3161 token (`heads/<h>.tsr`).
    pub tokens_present: u64,
    /// The token check, when a TSA CA was given (`tsa` of [`verify_bundle_from`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<TimestampReport>,
    /// Heads (anchor included) that carry a cosigned note (`heads/<h>.note`).
    pub notes_present: u64,
    /// The cosignature check, when witnesses were listed (`witnesses` of [`verify_bundle_from`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witnesses: Option<WitnessReport>,
}

#[derive(Default)]
struct HeadFiles {
    text: Option<String>,
    sig: Option<Vec<u8>>,
    tsr: Option<Vec<u8>>,
    note: Option<Vec<u8>>,
}

fn unreadable(what: impl Into<String>) -> VerifyError {
    VerifyError::Unreadable(what.into())
}

/// What the reader reads a bundle from: read forward, with `Seek` used only to skip forward over the members a
/// pass does not need (`SeekFrom::Current(n)`, `n ≥ 0`). A buffered file is one; wrap a plain stream in
/// [`ForwardOnly`]. On native targets the second pass reads on its own thread, so the reader must be `Send`.
#[cfg(not(target_arch = "wasm32"))]
pub trait BundleRead: Read + Seek + Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Read + Seek + Send> BundleRead for T {}

/// What the reader reads a bundle from: read forward, with `Seek` used only to skip forward over the members a
/// pass does not need (`SeekFrom::Current(n)`, `n ≥ 0`). A buffered file is one; wrap a plain stream in
/// [`ForwardOnly`]. On wasm32 everything runs on the caller's thread, so the reader need not be `Send`.
#[cfg(target_arch = "wasm32")]
pub trait BundleRead: Read + Seek {}
#[cfg(target_arch = "wasm32")]
impl<T: Read + Seek> BundleRead for T {}

/// Opens the bundle's bytes from their start; called once per pass (twice). The error is the whole message the
/// verification reports as unreadable (e.g. `cannot open bundle.tar: No such file or directory`).
pub type BundleOpen<'a, R> = &'a mut dyn FnMut() -> Result<R, String>;

/// A plain reader made into a [`BundleRead`]: skipping forward reads and drops the bytes (a stream cannot seek);
/// any other seek is refused.
#[derive(Debug)]
pub struct ForwardOnly<R> {
    inner: R,
    position: u64,
}

impl<R: Read> ForwardOnly<R> {
    /// Wraps `inner`, positioned at the bundle's first byte.
    pub fn new(inner: R) -> ForwardOnly<R> {
        ForwardOnly { inner, position: 0 }
    }
}

impl<R: Read> Read for ForwardOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl<R: Read> Seek for ForwardOnly<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let SeekFrom::Current(n) = pos else {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "a stream only skips forward"));
        };
        let n = u64::try_from(n).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::Unsupported, "a stream cannot seek backwards")
        })?;
        let skipped = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        self.position += skipped;
        if skipped < n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stream ended inside a member",
            ));
        }
        Ok(self.position)
    }
}

fn open_archive<R: BundleRead>(open: BundleOpen<'_, R>) -> Result<tar::Archive<R>, VerifyError> {
    Ok(tar::Archive::new(open().map_err(unreadable)?))
}

fn read_small(mut r: impl Read, name: &str) -> Result<Vec<u8>, VerifyError> {
    let mut out = Vec::new();
    (&mut r)
        .take(MAX_SMALL_MEMBER + 1)
        .read_to_end(&mut out)
        .map_err(|e| unreadable(format!("{name}: {e}")))?;
    if out.len() as u64 > MAX_SMALL_MEMBER {
        return Err(unreadable(format!("{name} is larger than {MAX_SMALL_MEMBER} bytes")));
    }
    Ok(out)
}

/// Reads a JSON-lines member into one value per non-empty line.
fn json_lines<T: serde::de::DeserializeOwned>(bytes: &[u8], name: &str) -> Result<Vec<T>, VerifyError> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| unreadable(format!("{name} line {}: {e}", i + 1)))
        })
        .collect()
}

/// Verifies the bundle `open` reads, trusting any of `keys` as the key the chain starts with (the log's first
/// key, or a later one): the anchor head must be signed by one of them or by a key their rotations lead to
/// (`key-rotations.jsonl`, docs/FORMAT.md §20), and the heads in the range follow the rotation records in it.
/// `origin`, when given, must be the bundle's origin. With `tsa`, every head's RFC 3161 token
/// (`heads/<h>.tsr`, the anchor head's included) is checked once the heads themselves verified (else tokens
/// are counted); with `witnesses`, the cosignatures in `heads/<h>.note` (docs/FORMAT.md §16.6) after that.
/// `progress` is told how many events have been verified so far, once per batch the walk folds in.
pub fn verify_bundle_from<R: BundleRead>(
    open: BundleOpen<'_, R>,
    keys: &[PublicKey],
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
    progress: &mut dyn FnMut(u64),
) -> Result<BundleReport, VerifyError> {
    verify_bundle_signers(open, keys, false, origin, tsa, witnesses, progress)
}

/// [`verify_bundle_from`] with `keyring`: the given keys are a keyring (docs/FORMAT.md §20, "Keyrings"), every one
/// of which may sign any head; the rotation proofs are followed per key.
pub fn verify_bundle_signers<R: BundleRead>(
    open: BundleOpen<'_, R>,
    keys: &[PublicKey],
    keyring: bool,
    origin: Option<&str>,
    tsa: Option<&TimestampPolicy>,
    witnesses: Option<&WitnessPolicy>,
    progress: &mut dyn FnMut(u64),
) -> Result<BundleReport, VerifyError> {
    let BundleCheck { walker, rest } = BundleCheck::start_with(open, keys, keyring, origin)?;
    let mut source = BundleEvents { reader: Some(open().map_err(unreadable)?), progress };
    let report = walker.drive(&mut source)?;
    rest.finish(report, tsa, witnesses)
}

/// Where `entries.jsonl`'s bytes are in the tar file (a plain member: its bytes are contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntriesMember {
    /// Offset of its first byte in the file.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// A bundle whose small members are read and whose anchor is verified (the first pass): what is left is the
/// walk over `entries.jsonl` ([`BundleCheck::push`], in seq order) and the checks after it
/// ([`BundleCheck::finish`]). [`verify_bundle_from`] is this with the events read by a second pass; the
/// browser console reads them itself and checks them in several workers.
pub struct BundleCheck {
    walker: Walker,
    rest: AfterWalk,
}

/// What the checks after the walk need from the first pass.
struct AfterWalk {
    manifest: Manifest,
    heads: BTreeMap<u64, HeadFiles>,
    erasure_records: Vec<ErasureRecordProof>,
    /// Key rotation proofs after the range (they lead to the keys of the erasure records' proving heads).
    after: Vec<KeyRotationProof>,
    known_keys: Vec<PublicKey>,
    tokens_present: u64,
    walked_heads: u64,
    last_head: Option<StoredHead>,
    entries: Option<EntriesMember>,
    /// Token checks done ahead ([`BundleCheck::precheck_token`]), and the next height to do.
    prechecked: Prechecked,
    precheck_next: u64,
}

impl BundleCheck {
    /// The first pass over the bundle `open` reads: the manifest, the heads, the anchor (verified under `keys`
    /// and the rotation proofs before the range), and the walk set up at the anchor. `origin` as in
    /// [`verify_bundle_from`].
    pub fn start<R: BundleRead>(
        open: BundleOpen<'_, R>,
        keys: &[PublicKey],
        origin: Option<&str>,
    ) -> Result<BundleCheck, VerifyError> {
        Self::start_with(open, keys, false, origin)
    }

    /// [`BundleCheck::start`], with `keyring` as in [`verify_bundle_signers`].
    pub fn start_with<R: BundleRead>(
        open: BundleOpen<'_, R>,
        keys: &[PublicKey],
        keyring: bool,
        origin: Option<&str>,
    ) -> Result<BundleCheck, VerifyError> {
        let mut manifest: Option<Manifest> = None;
        let mut heads: BTreeMap<u64, HeadFiles> = BTreeMap::new();
        let mut has_entries = false;
        let mut entries_member = None;
        let mut erasure_records: Vec<ErasureRecordProof> = Vec::new();
        let mut rotations: Vec<KeyRotationProof> = Vec::new();
        let mut known_keys: Vec<PublicKey> = Vec::new();
        let mut archive = open_archive(open)?;
        // Seek over members instead of reading them: pass 1 does not need the (large) entries.
        let entries = archive.entries_with_seek().map_err(|e| unreadable(format!("not a tar file: {e}")))?;
        for member in entries {
            let member = member.map_err(|e| unreadable(format!("corrupt tar: {e}")))?;
            // The name as bytes: a tar path is bytes, and wasm32 has no platform `Path` to make of it.
            let name = String::from_utf8_lossy(&member.path_bytes()).into_owned();
            if name == MANIFEST {
                let bytes = read_small(member, &name)?;
                manifest =
                    Some(serde_json::from_slice(&bytes).map_err(|e| unreadable(format!("{MANIFEST}: {e}")))?);
            } else if name == ENTRIES {
                has_entries = true;
                // Only a plain file's bytes are contiguous in the tar (not a sparse one's).
                entries_member = member
                    .header()
                    .entry_type()
                    .is_file()
                    .then(|| EntriesMember { offset: member.raw_file_position(), size: member.size() });
            } else if name == ERASURE_RECORDS {
                erasure_records = json_lines(&read_small(member, &name)?, &name)?;
            } else if name == KEY_ROTATIONS {
                rotations = json_lines(&read_small(member, &name)?, &name)?;
            } else if name.starts_with("keys/") && name.ends_with(".pem") {
                // Named only: a head signed by one of these without a rotation is reported as such.
                if let Ok(k) = PublicKey::from_pem(&String::from_utf8_lossy(&read_small(member, &name)?)) {
                    known_keys.push(k);
                }
            } else if let Some(rest) = name.strip_prefix("heads/") {
                let Some((h, ext)) = rest.split_once('.') else { continue };
                let Ok(height) = h.parse::<u64>() else { continue };
                let bytes = read_small(member, &name)?;
                let files = heads.entry(height).or_default();
                match ext {
                    "txt" => files.text = Some(String::from_utf8_lossy(&bytes).into_owned()),
                    "sig" => files.sig = Some(bytes),
                    "tsr" => files.tsr = Some(bytes),
                    "note" => files.note = Some(bytes),
                    _ => {}
                }
            }
        }
        let manifest = manifest.ok_or_else(|| unreadable(format!("no {MANIFEST}")))?;
        if manifest.format != BUNDLE_FORMAT || !(1..=BUNDLE_VERSION).contains(&manifest.version) {
            return Err(unreadable(format!(
                "format {:?} version {} (this build reads {BUNDLE_FORMAT} versions 1 to {BUNDLE_VERSION})",
                manifest.format, manifest.version
            )));
        }
        if !has_entries {
            return Err(unreadable(format!("no {ENTRIES}")));
        }
        if let Some(expected) = origin {
            if manifest.origin != expected {
                return Err(Failure::OriginMismatch {
                    height: manifest.from_height,
                    found: manifest.origin.clone(),
                    expected: expected.into(),
                }
                .into());
            }
        }
        // Rotations before the range lead from the given keys to the anchor's key; those after it, to the keys of
        // the heads that prove erasure records past the range. Records inside the range are met by the walk.
        let (before, after): (Vec<_>, Vec<_>) = rotations
            .into_iter()
            .filter(|r| r.seq < manifest.first_seq || r.seq >= manifest.end_seq)
            .partition(|r| r.seq < manifest.first_seq);
        let (start, walk_keys) = anchor_start(&manifest, &heads, keys, keyring, &known_keys, &before)?;
        let mut stored_heads = Vec::new();
        let mut tokens_present = 0;
        for height in manifest.from_height..=manifest.to_height {
            let Some(files) = heads.get(&height) else { break };
            let (Some(text), Some(sig)) = (&files.text, &files.sig) else { break };
            tokens_present += u64::from(files.tsr.is_some());
            stored_heads.push(head_from_files(height, text, sig)?);
        }
        let walked_heads = stored_heads.len() as u64;
        let last_head = stored_heads.last().cloned();
        // The records' proofs are checked once the walk has established the last head's key (in `finish`); the
        // walk only needs to know which erased payloads they claim to account for.
        let proven_erasures: BTreeMap<u64, u64> = match &last_head {
            Some(_) => erasure_records.iter().map(|r| (r.erased_seq, r.seq)).collect(),
            None => BTreeMap::new(),
        };
        let opts = WalkOptions {
            origin: Some(&manifest.origin),
            proven_erasures,
            known_keys: known_keys.clone(),
            keyring,
            ..WalkOptions::default()
        };
        let walker = Walker::new(start, stored_heads, &walk_keys, &opts)?;
        let rest = AfterWalk {
            manifest,
            heads,
            erasure_records,
            after,
            known_keys,
            tokens_present,
            walked_heads,
            last_head,
            entries: entries_member,
            prechecked: Prechecked::new(),
            precheck_next: 0,
        };
        Ok(BundleCheck { walker, rest })
    }

    /// Where `entries.jsonl` is in the file, if it is a plain member (else it can only be read through the tar
    /// reader, as [`verify_bundle_from`] does).
    pub fn entries(&self) -> Option<EntriesMember> {
        self.rest.entries
    }

    /// The seq the next pushed event must have (the bundle's first seq before any).
    pub fn next_seq(&self) -> u64 {
        self.walker.next_seq()
    }

    /// Folds the next checked events ([`check_line`] of the next lines of `entries.jsonl`) into the walk; the
    /// first failure ends it ([`Walker::push`]).
    pub fn push(&mut self, batch: Vec<Decoded>) -> Result<(), Failure> {
        self.walker.push(batch)
    }

    /// [`BundleCheck::push`] of one event.
    pub fn push_one(&mut self, item: Decoded) -> Result<(), Failure> {
        self.walker.push_one(item)
    }

    /// Checks the next head token ahead, under `tsa` (the policy [`BundleCheck::finish`] will be given): its
    /// signature, certificate chain and imprint, which need nothing from the walk, so that a caller with idle
    /// time during the walk (the browser console's coordinator) spends it there. `false` when no token is left.
    /// [`BundleCheck::finish`] uses the results in height order, as if it checked them then.
    pub fn precheck_token(&mut self, tsa: &TimestampPolicy) -> bool {
        let rest = &mut self.rest;
        let first_height = rest.manifest.anchor.as_ref().map_or(rest.manifest.from_height, |a| a.height);
        for height in rest.precheck_next.max(first_height)..=rest.manifest.to_height {
            rest.precheck_next = height + 1;
            let Some(files) = rest.heads.get(&height) else { continue };
            let (Some(text), Some(response)) = (files.text.as_deref(), files.tsr.as_deref()) else {
                continue;
            };
            // A malformed head is left to `finish`, which names it.
            let Ok(cp) = Checkpoint::parse(text) else { continue };
            let checked = check_token(text, cp.time_ms, response, &tsa.anchors, tsa.max_skew);
            rest.prechecked.insert(height, checked);
            return true;
        }
        false
    }

    /// After the last event: the walk's end, the erasure records' proofs, the range, and with `tsa` the tokens,
    /// with `witnesses` the cosignatures ([`verify_bundle_from`]).
    pub fn finish(
        self,
        tsa: Option<&TimestampPolicy>,
        witnesses: Option<&WitnessPolicy>,
    ) -> Result<BundleReport, VerifyError> {
        let report = self.walker.finish()?;
        self.rest.finish(report, tsa, witnesses)
    }
}

impl AfterWalk {
    fn finish(
        self,
        report: Report,
        tsa: Option<&TimestampPolicy>,
        witnesses: Option<&WitnessPolicy>,
    ) -> Result<BundleReport, VerifyError> {
        let AfterWalk {
            manifest,
            heads,
            erasure_records,
            after,
            known_keys,
            mut tokens_present,
            walked_heads,
            last_head,
            entries: _,
            mut prechecked,
            precheck_next: _,
        } = self;
        if let Some(last) = &last_head {
            let anchor = AnchorHead {
                height: last.height,
                tree_size: last.tree_size,
                root: last.root,
                origin: &manifest.origin,
            };
            // Keyring: any key of the ring at the walk's end may sign a later head, each followed on its own.
            let (current, followed) = match &report.keyring {
                Some(ring) => (ring.clone(), follow_ring_rotation_proofs(ring, &after, &anchor)?),
                None => {
                    let current: Vec<PublicKey> = report.current_key.iter().cloned().collect();
                    let followed = follow_rotation_proofs(&current, &after, &anchor)?;
                    (current, followed)
                }
            };
            let head_keys = HeadKeys { followed, trusted: &current, known: &known_keys };
            for r in &erasure_records {
                check_erasure_record_proof(r, &anchor, &head_keys)?;
            }
        }
        let expected_heads = manifest.to_height - manifest.from_height + 1;
        if walked_heads < expected_heads {
            return Err(Failure::HeadMissing { height: manifest.from_height + walked_heads }.into());
        }
        let end = manifest.first_seq + report.events;
        if report.unsealed_events > 0 || end != manifest.end_seq {
            return Err(Failure::EventBeyondRange { seq: end - report.unsealed_events }.into());
        }
        let first_height = manifest.anchor.as_ref().map_or(manifest.from_height, |a| a.height);
        if first_height < manifest.from_height {
            tokens_present += heads.get(&first_height).map_or(0, |f| u64::from(f.tsr.is_some()));
        }
        let timestamps = match tsa {
            Some(policy) => Some(check_tokens(
                &heads,
                first_height,
                manifest.to_height,
                policy,
                &report.timestamping_outages,
                &mut prechecked,
            )?),
            None => None,
        };
        let notes_present = (first_height..=manifest.to_height)
            .filter(|h| heads.get(h).is_some_and(|f| f.note.is_some()))
            .count();
        let witnesses = match witnesses {
            Some(policy) => Some(check_notes(&heads, first_height, manifest.to_height, policy)?),
            None => None,
        };
        Ok(BundleReport {
            manifest,
            report,
            tokens_present,
            timestamps,
            notes_present: notes_present as u64,
            witnesses,
        })
    }
}

/// Checks the cosigned notes of heads `from..=to` (all verified by now) and the last head's quorum.
fn check_notes(
    heads: &BTreeMap<u64, HeadFiles>,
    from: u64,
    to: u64,
    policy: &WitnessPolicy,
) -> Result<WitnessReport, VerifyError> {
    let mut check = WitnessCheck::new(policy);
    for height in from..=to {
        let files = heads.get(&height);
        let (Some(text), Some(note)) =
            (files.and_then(|f| f.text.as_deref()), files.and_then(|f| f.note.as_deref()))
        else {
            continue;
        };
        let malformed = |reason: String| Failure::HeadMalformed { height, reason };
        let note = crate::note::Note::parse(note)
            .map_err(|e| malformed(format!("heads/{height}.note is not a signed note: {e}")))?;
        if note.text() != text {
            return Err(malformed(format!(
                "heads/{height}.note carries another checkpoint text than heads/{height}.txt"
            ))
            .into());
        }
        let cp = Checkpoint::parse(text).map_err(|e| malformed(e.to_string()))?;
        check.head(height, text, cp.time_ms, note.signatures())?;
    }
    Ok(check.finish(to)?)
}

/// Checks the tokens of heads `from..=to` (all present and verified by now).
fn check_tokens(
    heads: &BTreeMap<u64, HeadFiles>,
    from: u64,
    to: u64,
    policy: &TimestampPolicy,
    outages: &[verify::OutageWindow],
    prechecked: &mut Prechecked,
) -> Result<TimestampReport, VerifyError> {
    let mut items = Vec::new();
    for height in from..=to {
        let files = heads.get(&height);
        let Some(text) = files.and_then(|f| f.text.as_deref()) else {
            return Err(Failure::HeadMissing { height }.into());
        };
        let cp =
            Checkpoint::parse(text).map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
        items.push(HeadToken {
            height,
            checkpoint: text,
            sealed_at_ms: cp.time_ms,
            response: files.and_then(|f| f.tsr.as_deref()),
        });
    }
    Ok(verify_head_tokens_with(items, policy, outages, prechecked)?)
}

/// The parsed columns of a bundle head (the bundle carries only the signed text; its columns are the text's; the
/// key is the walk's to establish).
fn head_from_files(height: u64, text: &str, sig: &[u8]) -> Result<StoredHead, VerifyError> {
    let cp = Checkpoint::parse(text).map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
    if cp.height != height {
        return Err(Failure::HeadMalformed {
            height,
            reason: format!("file heads/{height}.txt holds the head of height {}", cp.height),
        }
        .into());
    }
    Ok(StoredHead {
        height,
        tree_size: cp.tree_size,
        root: cp.root,
        checkpoint: text.to_string(),
        signature: sig.to_vec(),
        key_id: String::new(),
        sealed_at_ms: cp.time_ms,
    })
}

/// The walk's start: genesis, or the verified anchor head with its tree's perfect subtrees, signed by one of
/// `keys` or by the key the rotation proofs `before` the range lead to from them.
/// Where the walk starts (the anchor verified), and the keys it trusts: the given ones, or with a keyring the ring's
/// keys that may sign the head after the anchor.
fn anchor_start(
    manifest: &Manifest,
    heads: &BTreeMap<u64, HeadFiles>,
    keys: &[PublicKey],
    keyring: bool,
    known: &[PublicKey],
    before: &[KeyRotationProof],
) -> Result<(Start, Vec<PublicKey>), VerifyError> {
    if manifest.from_height == 0 {
        if manifest.first_seq != 0 || manifest.anchor.is_some() || !before.is_empty() {
            return Err(unreadable("a bundle from height 0 starts at seq 0 and has no anchor"));
        }
        return Ok((Start::genesis(), keys.to_vec()));
    }
    let height = manifest.from_height - 1;
    let anchor =
        manifest.anchor.as_ref().ok_or_else(|| unreadable("no anchor for a range that starts past 0"))?;
    if anchor.height != height || anchor.tree_size != manifest.first_seq {
        return Err(unreadable("the anchor does not precede the range"));
    }
    let files = heads.get(&height);
    let (Some(text), Some(sig)) = (files.and_then(|f| f.text.as_ref()), files.and_then(|f| f.sig.as_ref()))
    else {
        return Err(Failure::HeadMissing { height }.into());
    };
    let head = head_from_files(height, text, sig)?;
    let cp = Checkpoint::parse(text).map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
    if cp.origin != manifest.origin {
        return Err(
            Failure::OriginMismatch { height, found: cp.origin, expected: manifest.origin.clone() }.into()
        );
    }
    let reference = AnchorHead { height, tree_size: cp.tree_size, root: cp.root, origin: &manifest.origin };
    let followed = match keyring {
        true => follow_ring_rotation_proofs(keys, before, &reference)?,
        false => follow_rotation_proofs(keys, before, &reference)?,
    };
    let key = followed.check_head(height, text, sig, keys, known)?;
    // The key after the anchor: the new key when the anchor is the old key's last head.
    let key_after = match keyring {
        true => followed
            .rotations
            .iter()
            .find(|r| r.height == height)
            .and_then(|r| followed.ring_keys_at(height + 1).into_iter().find(|k| k.key_id == r.new_key_id))
            .unwrap_or(key),
        false => followed.key_for(height + 1).cloned().unwrap_or(key),
    };
    let walk_keys = if keyring { followed.ring_keys_at(height + 1) } else { keys.to_vec() };
    let subtrees = anchor
        .subtrees
        .iter()
        .map(|s| B64.decode(s).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| unreadable("anchor subtrees are not base64 32-byte hashes"))?;
    let frontier =
        Frontier::from_subtrees(head.tree_size, subtrees).map_err(|e| unreadable(e.to_string()))?;
    if frontier.root() != head.root {
        return Err(Failure::RootMismatch { height, from: 0, to: head.tree_size }.into());
    }
    let start = Start {
        frontier,
        next_height: manifest.from_height,
        prev_hash: Checkpoint::text_hash(text),
        prev_time_ms: head.sealed_at_ms,
        prev_counter: cp.counter,
        stopped_at: None,
        key: Some(key_after),
        announcement: followed.announcement_after(height),
        retired: followed.retired,
    };
    Ok((start, walk_keys))
}

/// The events of a bundle: a second pass over the tar, streaming `entries.jsonl`.
struct BundleEvents<'p, R> {
    /// The bundle opened again from its start (taken by the one visit).
    reader: Option<R>,
    /// Told the events verified so far after each batch.
    progress: &'p mut dyn FnMut(u64),
}

fn b64_field(s: &str, seq: u64, what: &str) -> Result<Vec<u8>, Failure> {
    B64.decode(s).map_err(|_| Failure::EntryMalformed { seq, reason: format!("{what} is not base64") })
}

/// Reusable buffers of one checking thread, so the common line costs no allocation.
#[derive(Default)]
struct Scratch {
    entry: Vec<u8>,
    salt: Vec<u8>,
    body: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Decodes one `entries.jsonl` line and runs the event's own checks ([`verify::check_parts`]: canonical
/// entry naming its seq, leaf hash, payload digest or recorded erasure); `pos` is the seq the walk expects
/// there (for the error of a line that cannot be decoded). Public for the benchmarks.
pub fn check_line(line: &[u8], pos: u64) -> Decoded {
    SCRATCH.with(|cell| {
        let mut fresh = Scratch::default();
        let mut borrowed = cell.try_borrow_mut();
        let s = match borrowed.as_deref_mut() {
            Ok(s) => s,
            Err(_) => &mut fresh,
        };
        if let Some((seq, leaf_hash)) = fast_line(line, s) {
            let checked = verify::check_parts(seq, &s.entry, &leaf_hash, Some(&s.salt), Some(&s.body));
            return Ok(CheckedEvent::from_check(seq, leaf_hash, checked, Some(&s.body)));
        }
        check_line_reference(line, pos)
    })
}

/// [`check_line`] without its hand-written fast path: every line through serde_json. The reference the fast path
/// must agree with; public so that the fuzzer (fuzz/fuzz_targets/bundle_line.rs) can compare the two on any bytes.
pub fn check_line_reference(line: &[u8], pos: u64) -> Decoded {
    decode_line_serde(line, pos).map(|(ev, erasure_seq)| CheckedEvent::of(&ev).with_erasure_seq(erasure_seq))
}

/// Decodes a line of any JSON spelling (the reference for [`fast_line`]), with the seq of the erasure record
/// its `erasure` object names (the walk checks that record).
fn decode_line_serde(line: &[u8], seq: u64) -> Result<(StoredEvent, Option<u64>), Failure> {
    let l: EntryLine<'_> = serde_json::from_slice(line)
        .map_err(|e| Failure::EntryMalformed { seq, reason: format!("entries.jsonl line: {e}") })?;
    let leaf = b64_field(&l.leaf_hash, l.seq, "leaf_hash")?;
    let leaf_hash = <[u8; 32]>::try_from(leaf).map_err(|_| Failure::LeafHashMismatch { seq: l.seq })?;
    if let Some(e) = &l.erasure {
        if e.seq != l.seq {
            return Err(Failure::EntryMalformed {
                seq: l.seq,
                reason: "erasure record names another seq".into(),
            });
        }
    }
    let erasure_seq = l.erasure.as_ref().map(|e| e.erasure_seq);
    let ev = StoredEvent {
        seq: l.seq,
        entry: l.entry.as_bytes().to_vec(),
        leaf_hash,
        salt: l.salt.as_deref().map(|s| b64_field(s, l.seq, "salt")).transpose()?,
        body: l.body.as_deref().map(|s| b64_field(s, l.seq, "body")).transpose()?,
    };
    Ok((ev, erasure_seq))
}

/// The common line exactly as the exporter writes it (serde_json, keys in order, no erasure record):
/// `{"seq":N,"entry":"…","leaf_hash":"…","salt":"…","body":"…"}`, with `\"` and `\\` the only escapes in
/// the entry string. Decoded by hand in one pass; any other spelling (other escapes, other key order,
/// whitespace, `null` payloads, an erasure record) returns `None` and goes to serde_json, so this changes
/// how fast a line is read, never what it is read as. The line itself is not signed; the entry it carries
/// is checked byte for byte afterwards.
fn fast_line(line: &[u8], s: &mut Scratch) -> Option<(u64, [u8; 32])> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || (rest[0] == b'0' && digits > 1) {
        return None;
    }
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse::<u64>().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"entry\":\"")?;
    // The entry string: literal bytes (≥ 0x20), `\"` and `\\`; it ends at the first unescaped quote.
    // Copied eight bytes at a time into a buffer with eight bytes of slack (a word store, not a memcpy call
    // per run: the entry has an escaped quote every few bytes); `o ≤ i` always, as escapes only shrink.
    let mut entry = std::mem::take(&mut s.entry);
    entry.clear();
    entry.resize(rest.len() + 8, 0);
    let (mut i, mut o) = (0, 0);
    let closed = loop {
        if let Some(w) = rest.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
            entry[o..o + 8].copy_from_slice(&w);
            let k = first_special(u64::from_le_bytes(w));
            i += k;
            o += k;
            if k == 8 {
                continue;
            }
        }
        let Some(&c) = rest.get(i) else { break false };
        match (c, rest.get(i + 1)) {
            (b'"', _) => {
                i += 1;
                break true;
            }
            (b'\\', Some(&e @ (b'"' | b'\\'))) => {
                entry[o] = e;
                o += 1;
                i += 2;
            }
            (c, _) if c != b'\\' && c >= 0x20 => {
                entry[o] = c;
                o += 1;
                i += 1;
            }
            _ => break false,
        }
    };
    entry.truncate(o);
    s.entry = entry;
    if !closed {
        return None;
    }
    // JSON text is UTF-8; serde_json would refuse a line that is not.
    std::str::from_utf8(&s.entry).ok()?;
    let rest = rest[i..].strip_prefix(b",\"leaf_hash\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let mut leaf = [0u8; 48];
    let n = B64.decode_slice(&rest[..end], &mut leaf).ok()?;
    let leaf_hash = <[u8; 32]>::try_from(leaf.get(..n)?).ok()?;
    let rest = rest[end + 1..].strip_prefix(b",\"salt\":\"")?;
    let rest = b64_until_quote(rest, &mut s.salt)?;
    let rest = rest.strip_prefix(b",\"body\":\"")?;
    let rest = b64_until_quote(rest, &mut s.body)?;
    (rest == b"}").then_some((seq, leaf_hash))
}

/// Index (0..=7) of the first byte of the little-endian word `w` that is `"`, `\` or below 0x20; 8 if none.
/// (SWAR: a borrow only propagates upwards from a byte that matched, so the lowest flag is exact.)
fn first_special(w: u64) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let m = zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\'))) | below_space;
    (m.trailing_zeros() / 8) as usize
}

/// Decodes base64 up to the next `"` (standard alphabet, padded, as serde_json wrote it) into `out`;
/// returns what follows the quote.
fn b64_until_quote<'a>(s: &'a [u8], out: &mut Vec<u8>) -> Option<&'a [u8]> {
    let end = memchr::memchr(b'"', s)?;
    out.clear();
    B64.decode_vec(&s[..end], out).ok()?;
    Some(&s[end + 1..])
}

/// Bytes of `entries.jsonl` handed from the reading thread to the checkers at a time (whole lines).
const CHUNK: usize = 1 << 20;

/// Whole lines of `entries.jsonl`: `buf[..ends[0]]`, `buf[ends[0]..ends[1]]`, … (each with its `\n`, but
/// for a last line without one). Buffers go back to the reader once checked, so they are zeroed only once.
struct Chunk {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

/// Reads `entries.jsonl` into chunks of whole lines and hands them to `send`, taking buffers back from
/// `spare`; on native targets `send` passes them to the checking side, so reading and splitting the file overlap
/// with checking the previous chunk. Stops early when `send` returns `false`.
fn read_chunks<R: Read + Seek>(
    reader: R,
    chunk_size: usize,
    send: &mut dyn FnMut(Chunk) -> bool,
    spare: &mut dyn FnMut() -> Option<Chunk>,
) -> Result<(), VerifyError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries_with_seek().map_err(|e| unreadable(format!("not a tar file: {e}")))?;
    for member in entries {
        let mut member = member.map_err(|e| unreadable(format!("corrupt tar: {e}")))?;
        // The name as bytes: a tar path is bytes, and wasm32 has no platform `Path` to make of it.
        let name = String::from_utf8_lossy(&member.path_bytes()).into_owned();
        if name != ENTRIES {
            continue;
        }
        // The partial line at the end of the previous chunk.
        let mut carry: Vec<u8> = Vec::new();
        let mut eof = false;
        while !eof {
            let mut chunk = spare().unwrap_or_else(|| Chunk { buf: Vec::new(), ends: Vec::new() });
            chunk.ends.clear();
            if chunk.buf.len() < carry.len() + chunk_size {
                chunk.buf.resize(carry.len() + chunk_size, 0);
            }
            chunk.buf[..carry.len()].copy_from_slice(&carry);
            let mut filled = carry.len();
            while filled < chunk.buf.len() {
                match member.read(&mut chunk.buf[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(unreadable(format!("{ENTRIES}: {e}"))),
                }
            }
            let data = &chunk.buf[..filled];
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', data) {
                chunk.ends.push(nl + 1);
                start = nl + 1;
            }
            if eof && start < filled {
                // A last line without its newline is still a line.
                chunk.ends.push(filled);
                start = filled;
            }
            carry.clear();
            carry.extend_from_slice(&data[start..]);
            // No line ended in this chunk (one line longer than a chunk): keep reading it.
            if !chunk.ends.is_empty() && !send(chunk) {
                return Ok(());
            }
        }
        return Ok(());
    }
    Err(unreadable(format!("no {ENTRIES}")))
}

/// The second pass on the caller's thread (wasm32 has no threads): read a chunk, check it, fold it.
#[cfg(target_arch = "wasm32")]
impl<R: BundleRead> EventSource for BundleEvents<'_, R> {
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError> {
        let reader = self.reader.take().ok_or_else(|| unreadable(format!("{ENTRIES} was already read")))?;
        let progress = &mut *self.progress;
        let mut position = from;
        read_chunks(
            reader,
            CHUNK,
            &mut |chunk| {
                let results = check_chunk(&chunk, position);
                position += chunk.ends.len() as u64;
                let go_on = f(results);
                if go_on {
                    progress(position - from);
                }
                go_on
            },
            &mut || None,
        )
    }
}

/// The second pass, pipelined: one thread reads and splits `entries.jsonl` while chunk k+1 is checked (on all
/// cores) and the walk folds chunk k into the tree.
#[cfg(not(target_arch = "wasm32"))]
impl<R: BundleRead> EventSource for BundleEvents<'_, R> {
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError> {
        let reader = self.reader.take().ok_or_else(|| unreadable(format!("{ENTRIES} was already read")))?;
        let progress = &mut *self.progress;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let (spare_tx, spare_rx) = std::sync::mpsc::channel();
            scope.spawn(move || {
                let mut send = |chunk| tx.send(Ok(chunk)).is_ok();
                if let Err(e) = read_chunks(reader, CHUNK, &mut send, &mut || spare_rx.try_recv().ok()) {
                    let _ = tx.send(Err(e));
                }
            });
            // Returning drops `rx`, which stops the reader at its next send; the scope then joins it.
            let mut position = from;
            let mut folded = from;
            let mut in_flight: Option<std::thread::ScopedJoinHandle<'_, (Chunk, Vec<Decoded>)>> = None;
            let mut fold = |h: std::thread::ScopedJoinHandle<'_, (Chunk, Vec<Decoded>)>| {
                // A panic in a check is a bug; re-raise it rather than hide it.
                let (chunk, results) = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                folded += chunk.ends.len() as u64;
                let _ = spare_tx.send(chunk);
                let go_on = f(results);
                if go_on {
                    progress(folded - from);
                }
                go_on
            };
            for chunk in rx {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        // What was read before the error is judged first: its failure is the earlier one.
                        if let Some(h) = in_flight.take() {
                            if !fold(h) {
                                return Ok(());
                            }
                        }
                        return Err(e);
                    }
                };
                let first = position;
                position += chunk.ends.len() as u64;
                let next = scope.spawn(move || {
                    let results = check_chunk(&chunk, first);
                    (chunk, results)
                });
                if let Some(h) = in_flight.replace(next) {
                    if !fold(h) {
                        return Ok(());
                    }
                }
            }
            if let Some(h) = in_flight.take() {
                fold(h);
            }
            Ok(())
        })
    }
}

/// Checks every line of a chunk on all cores; `first` is the seq expected at its first line.
fn check_chunk(chunk: &Chunk, first: u64) -> Vec<Decoded> {
    // Every `\n`-terminated piece is a line (an empty one too: it fails to decode, at its seq).
    let mut lines = Vec::with_capacity(chunk.ends.len());
    let mut start = 0;
    for (i, &end) in chunk.ends.iter().enumerate() {
        lines.push((first + i as u64, &chunk.buf[start..end]));
        start = end;
    }
    verify::par_map(&lines, |(pos, line)| check_line(line, *pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn line(entry: &str, salt: Option<&[u8]>, body: Option<&[u8]>) -> Vec<u8> {
        let l = EntryLine {
            seq: 42,
            entry: Cow::Borrowed(entry),
            leaf_hash: Cow::Owned(B64.encode([7u8; 32])),
            salt: salt.map(|s| Cow::Owned(B64.encode(s))),
            body: body.map(|b| Cow::Owned(B64.encode(b))),
            erasure: None,
        };
        let mut v = serde_json::to_vec(&l).unwrap();
        v.push(b'\n');
        v
    }

    fn same(a: &StoredEvent, b: &StoredEvent) -> bool {
        (a.seq, &a.entry, a.leaf_hash, &a.salt, &a.body) == (b.seq, &b.entry, b.leaf_hash, &b.salt, &b.body)
    }

    /// Lines split across chunk boundaries (down to chunks of one byte, lines longer than a chunk, an
    /// empty line, a last line without its newline) come out whole and in order.
    #[test]
    fn chunks_hold_whole_lines_whatever_the_chunk_size() {
        let text: &[u8] = b"{\"a\":1}\n\n{\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\":2}\nx\n{\"last\":3}";
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [("manifest.json", &b"{}"[..]), (ENTRIES, text)] {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let want: Vec<&[u8]> = vec![b"{\"a\":1}\n", b"\n", &text[9..57], b"x\n", b"{\"last\":3}"];
        for size in [1, 2, 3, 7, 16, 45, 46, 47, 1000] {
            // From a seekable reader and from a stream.
            for stream in [false, true] {
                let mut chunks = Vec::new();
                let mut send = |c| {
                    chunks.push(c);
                    true
                };
                let cursor = std::io::Cursor::new(&tar[..]);
                if stream {
                    read_chunks(ForwardOnly::new(cursor), size, &mut send, &mut || None).unwrap();
                } else {
                    read_chunks(cursor, size, &mut send, &mut || None).unwrap();
                }
                let mut got: Vec<Vec<u8>> = Vec::new();
                for c in chunks {
                    let mut start = 0;
                    for &end in &c.ends {
                        got.push(c.buf[start..end].to_vec());
                        start = end;
                    }
                }
                assert_eq!(got, want, "chunk size {size}");
            }
        }
    }

    /// A stream skips forward by reading, and refuses what it cannot do instead of reading the wrong bytes.
    #[test]
    fn a_stream_only_skips_forward() {
        let mut s = ForwardOnly::new(&b"0123456789"[..]);
        assert_eq!(s.seek(SeekFrom::Current(3)).unwrap(), 3);
        let mut two = [0u8; 2];
        s.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"34");
        assert_eq!(s.stream_position().unwrap(), 5);
        assert_eq!(s.seek(SeekFrom::Current(-1)).unwrap_err().kind(), std::io::ErrorKind::Unsupported);
        assert_eq!(s.seek(SeekFrom::Start(0)).unwrap_err().kind(), std::io::ErrorKind::Unsupported);
        assert_eq!(s.seek(SeekFrom::Current(9)).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }

    proptest::proptest! {
        /// Any entry text, salt and body: the fast reader either declines or reads exactly what serde_json
        /// reads, and it declines only lines with escapes other than `\"` and `\\`.
        #[test]
        fn the_fast_line_reader_agrees_with_serde_json(
            entry in "(\\PC|[\"\\\\\\x00-\\x1f/]){0,80}", salt in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..90),
        ) {
            let l = line(&entry, Some(&salt), Some(&body));
            let mut s = Scratch::default();
            match fast_line(&l, &mut s) {
                Some((seq, leaf_hash)) => {
                    let fast = StoredEvent {
                        seq,
                        entry: s.entry.clone(),
                        leaf_hash,
                        salt: Some(s.salt.clone()),
                        body: Some(s.body.clone()),
                    };
                    proptest::prop_assert!(same(&fast, &decode_line_serde(&l, 42).unwrap().0));
                }
                None => proptest::prop_assert!(entry.chars().any(|c| c < ' ')),
            }
        }
    }

    #[test]
    fn first_special_finds_the_first_quote_backslash_or_control_byte() {
        for pos in 0..8 {
            for special in [b'"', b'\\', 0x00, 0x01, 0x1f] {
                for filler in [b'a', 0x20, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']'] {
                    let mut w = [filler; 8];
                    w[pos] = special;
                    // A later special byte must not hide the first one.
                    if pos < 7 {
                        w[7] = b'"';
                    }
                    assert_eq!(first_special(u64::from_le_bytes(w)), pos, "{w:?}");
                }
            }
        }
        assert_eq!(first_special(u64::from_le_bytes(*b"abcdefgh")), 8);
        assert_eq!(first_special(u64::from_le_bytes([0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff])), 8);
    }

    #[test]
    fn the_fast_line_reader_reads_what_serde_json_reads() {
        let entries = [r#"{"auth":"mtls","source_id":"a\"b\\c\n\u0001é€😀/"}"#, "", "plain", "\\\\\"\""];
        for e in entries {
            for (salt, body) in
                [(&b"0123"[..], &b"{}"[..]), (b"", b""), (&[0xffu8; 32][..], &[0u8, 1, 2][..])]
            {
                let l = line(e, Some(salt), Some(body));
                let mut s = Scratch::default();
                let (seq, leaf_hash) = fast_line(&l, &mut s)
                    .unwrap_or_else(|| panic!("fast path refused {}", String::from_utf8_lossy(&l)));
                let fast = StoredEvent {
                    seq,
                    entry: s.entry.clone(),
                    leaf_hash,
                    salt: Some(s.salt.clone()),
                    body: Some(s.body.clone()),
                };
                assert!(same(&fast, &decode_line_serde(&l, 42).unwrap().0), "{e:?}");
                assert_eq!(fast.entry, e.as_bytes());
            }
        }
        // Other spellings go to serde_json and read the same.
        let odd: [&[u8]; 6] = [
            br#"{"seq":42,"entry":"\u0041","leaf_hash":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","salt":"AA==","body":"AA=="}"#,
            br#"{"seq":42, "entry":"A","leaf_hash":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","salt":"AA==","body":"AA=="}"#,
            br#"{"entry":"A","seq":42,"leaf_hash":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","salt":"AA==","body":"AA=="}"#,
            br#"{"seq":42,"entry":"A","leaf_hash":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","salt":"AA==","body":"AA=="} "#,
            br#"{"seq":42,"entry":"A\/","leaf_hash":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","salt":"AA==","body":"AA=="}"#,
            br#"{"seq":42,"entry":"A","leaf_hash":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","salt":"AA==","body":"AA==","x":1}"#,
        ];
        for l in odd {
            assert!(fast_line(l, &mut Scratch::default()).is_none(), "{}", String::from_utf8_lossy(l));
        }
        assert_eq!(decode_line_serde(odd[0], 42).unwrap().0.entry, b"A");
        assert_eq!(decode_line_serde(odd[4], 42).unwrap().0.entry, b"A/");
        // Not JSON, bad base64, a raw control character, a short leaf: never accepted by the fast path.
        for l in [&b"{\"seq\":42"[..], b"{\"seq\":042,\"entry\":\"\"}"] {
            assert!(fast_line(l, &mut Scratch::default()).is_none());
        }
        let mut raw_ctl = line("a", Some(b"s"), Some(b"b"));
        raw_ctl[20] = 0x01;
        assert!(fast_line(&raw_ctl, &mut Scratch::default()).is_none());
        let bad_b64 = String::from_utf8(line("a", Some(b"s"), Some(b"b")))
            .unwrap()
            .replace("\"body\":\"", "\"body\":\"!");
        assert!(fast_line(bad_b64.as_bytes(), &mut Scratch::default()).is_none());
        // Erased payloads take the serde path, which reads the record their erasure object names (none here:
        // the walk then fails them as unrecorded).
        let erased = line("a", None, None);
        assert!(fast_line(&erased, &mut Scratch::default()).is_none());
        assert_eq!(decode_line_serde(&erased, 42).unwrap().1, None);
    }
}
