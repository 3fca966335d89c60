//! Reading and verifying a bundle offline: the manifest, the anchor, then the same walk as the database.

use super::{EntryLine, Manifest, BUNDLE_FORMAT, BUNDLE_VERSION, ENTRIES, MANIFEST};
use crate::ledger::head::Checkpoint;
use crate::ledger::merkle::Frontier;
use crate::signer::PublicKey;
use crate::store::{StoredEvent, StoredHead};
use crate::verify::timestamps::{verify_head_tokens, HeadToken, TimestampPolicy, TimestampReport};
use crate::verify::{self, Decoded, EventSource, Failure, Report, Start, VerifyError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

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
    /// The token check, when a TSA CA was given ([`verify_bundle_with`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<TimestampReport>,
}

#[derive(Default)]
struct HeadFiles {
    text: Option<String>,
    sig: Option<Vec<u8>>,
    tsr: Option<Vec<u8>>,
}

fn unreadable(what: impl Into<String>) -> VerifyError {
    VerifyError::Unreadable(what.into())
}

fn open_archive(path: &Path) -> Result<tar::Archive<BufReader<std::fs::File>>, VerifyError> {
    let f =
        std::fs::File::open(path).map_err(|e| unreadable(format!("cannot open {}: {e}", path.display())))?;
    Ok(tar::Archive::new(BufReader::with_capacity(1 << 20, f)))
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
    // Pass 1: everything but the events (small).
    let mut manifest: Option<Manifest> = None;
    let mut heads: BTreeMap<u64, HeadFiles> = BTreeMap::new();
    let mut has_entries = false;
    let mut archive = open_archive(path)?;
    let entries = archive.entries().map_err(|e| unreadable(format!("not a tar file: {e}")))?;
    for member in entries {
        let member = member.map_err(|e| unreadable(format!("corrupt tar: {e}")))?;
        let name = member.path().map_err(|e| unreadable(e.to_string()))?.to_string_lossy().into_owned();
        if name == MANIFEST {
            let bytes = read_small(member, &name)?;
            manifest =
                Some(serde_json::from_slice(&bytes).map_err(|e| unreadable(format!("{MANIFEST}: {e}")))?);
        } else if name == ENTRIES {
            has_entries = true;
        } else if let Some(rest) = name.strip_prefix("heads/") {
            let Some((h, ext)) = rest.split_once('.') else { continue };
            let Ok(height) = h.parse::<u64>() else { continue };
            let bytes = read_small(member, &name)?;
            let files = heads.entry(height).or_default();
            match ext {
                "txt" => files.text = Some(String::from_utf8_lossy(&bytes).into_owned()),
                "sig" => files.sig = Some(bytes),
                "tsr" => files.tsr = Some(bytes),
                _ => {}
            }
        }
    }
    let manifest = manifest.ok_or_else(|| unreadable(format!("no {MANIFEST}")))?;
    if manifest.format != BUNDLE_FORMAT || manifest.version != BUNDLE_VERSION {
        return Err(unreadable(format!(
            "format {:?} version {} (this build reads {BUNDLE_FORMAT} version {BUNDLE_VERSION})",
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
    let start = anchor_start(&manifest, &heads, key)?;
    let mut stored_heads = Vec::new();
    let mut tokens_present = 0;
    for height in manifest.from_height..=manifest.to_height {
        let Some(files) = heads.get(&height) else { break };
        let (Some(text), Some(sig)) = (&files.text, &files.sig) else { break };
        tokens_present += u64::from(files.tsr.is_some());
        stored_heads.push(head_from_files(height, text, sig, key)?);
    }
    let walked_heads = stored_heads.len() as u64;
    let mut source = BundleEvents { path: path.to_path_buf() };
    let report = verify::walk(start, stored_heads, &mut source, key, Some(&manifest.origin))?;
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
        Some(policy) => Some(check_tokens(&heads, first_height, manifest.to_height, policy)?),
        None => None,
    };
    Ok(BundleReport { manifest, report, tokens_present, timestamps })
}

/// Checks the tokens of heads `from..=to` (all present and verified by now).
fn check_tokens(
    heads: &BTreeMap<u64, HeadFiles>,
    from: u64,
    to: u64,
    policy: &TimestampPolicy,
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
    Ok(verify_head_tokens(items, policy)?)
}

/// The parsed columns of a bundle head (the bundle carries only the signed text; its columns are the text's).
fn head_from_files(height: u64, text: &str, sig: &[u8], key: &PublicKey) -> Result<StoredHead, VerifyError> {
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
        key_id: key.key_id.clone(),
        sealed_at_ms: cp.time_ms,
    })
}

/// The walk's start: genesis, or the verified anchor head with its tree's perfect subtrees.
fn anchor_start(
    manifest: &Manifest,
    heads: &BTreeMap<u64, HeadFiles>,
    key: &PublicKey,
) -> Result<Start, VerifyError> {
    if manifest.from_height == 0 {
        if manifest.first_seq != 0 || manifest.anchor.is_some() {
            return Err(unreadable("a bundle from height 0 starts at seq 0 and has no anchor"));
        }
        return Ok(Start::genesis());
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
    let head = head_from_files(height, text, sig, key)?;
    let cp = Checkpoint::parse(text).map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
    if cp.origin != manifest.origin {
        return Err(
            Failure::OriginMismatch { height, found: cp.origin, expected: manifest.origin.clone() }.into()
        );
    }
    if !key.verify(text.as_bytes(), sig) {
        return Err(Failure::BadSignature { height, key_id: key.key_id.clone() }.into());
    }
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
    Ok(Start {
        frontier,
        next_height: manifest.from_height,
        prev_hash: Checkpoint::text_hash(text),
        prev_time_ms: head.sealed_at_ms,
    })
}

/// The events of a bundle: a second pass over the tar, streaming `entries.jsonl`.
struct BundleEvents {
    path: PathBuf,
}

fn b64_field(s: &str, seq: u64, what: &str) -> Result<Vec<u8>, Failure> {
    B64.decode(s).map_err(|_| Failure::EntryMalformed { seq, reason: format!("{what} is not base64") })
}

/// Decodes one `entries.jsonl` line; `seq` is the seq the walk expects there (for error messages).
fn decode_line(line: &[u8], seq: u64) -> Result<StoredEvent, Failure> {
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
    Ok(StoredEvent {
        seq: l.seq,
        entry: l.entry.as_bytes().to_vec(),
        leaf_hash,
        salt: l.salt.as_deref().map(|s| b64_field(s, l.seq, "salt")).transpose()?,
        body: l.body.as_deref().map(|s| b64_field(s, l.seq, "body")).transpose()?,
    })
}

impl EventSource for BundleEvents {
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError> {
        let mut archive = open_archive(&self.path)?;
        let entries = archive.entries().map_err(|e| unreadable(format!("not a tar file: {e}")))?;
        for member in entries {
            let member = member.map_err(|e| unreadable(format!("corrupt tar: {e}")))?;
            let name = member.path().map_err(|e| unreadable(e.to_string()))?.to_string_lossy().into_owned();
            if name != ENTRIES {
                continue;
            }
            let mut reader = BufReader::with_capacity(1 << 20, member);
            let mut position = from;
            loop {
                // Read a batch of raw lines, decode them on all cores, hand them to the walk in order.
                let mut lines: Vec<(u64, Vec<u8>)> = Vec::with_capacity(verify::BATCH);
                while lines.len() < verify::BATCH {
                    let mut line = Vec::with_capacity(512);
                    let n = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| unreadable(format!("{ENTRIES}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    lines.push((position, line));
                    position += 1;
                }
                if lines.is_empty() {
                    return Ok(());
                }
                let done = lines.len() < verify::BATCH;
                let batch = verify::par_map(&lines, |(pos, line)| decode_line(line, *pos));
                if !f(batch) || done {
                    return Ok(());
                }
            }
        }
        Err(unreadable(format!("no {ENTRIES}")))
    }
}
