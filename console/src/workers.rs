//! Bundle verification split over several Web Workers: checking workers run each event's own checks (decode,
//! canonical entry, leaf hash, payload digest: most of the time) on chunks of `entries.jsonl`, and one
//! coordinator folds their answers, strictly in seq order, into the core's walk ([`BundleCheck`]).
//!
//! A checking worker needs nothing but its chunk: not even the chunk's first seq, which only the coordinator
//! knows once the chunks before it are counted. So the page's checking workers read the file themselves, each
//! its own block of `entries.jsonl`, taking the lines that start in it (console/web/worker.js): reading a `File`
//! in Chromium costs about a third as much as checking it, and this way it is spread over the workers too. What it returns, [`check_chunk`]'s compact binary layout, is
//! one record per line:
//!
//! - `0x00`, seq (u64 LE), leaf hash (32 bytes), `received_at_ns` (u64 LE): an event whose own checks passed
//!   and that is nothing but an event (not erased, not one of the appliance's own records): the common line;
//! - `0x01`, length (u64 LE), the line's bytes: any other line (a failure, an erased payload, a record of the
//!   appliance, a line that cannot be decoded). The coordinator checks it again itself
//!   ([`anchorlog_core::bundle::check_line`]) at the seq it knows, so a failure names exactly what the
//!   one-worker verifier names, and nothing but plain data crosses between workers.
//!
//! The checker stops after the first line that fails: the walk stops there, so nothing after it counts.

use crate::options::Trust;
use crate::verdict;
use anchorlog_core::bundle::{check_line, BundleCheck, BundleOpen, BundleRead, EntriesMember};
use anchorlog_core::verify::{CheckedEvent, Decoded, VerifyError};
use serde_json::Value;

/// A line whose own checks passed and which needs nothing but its seq, leaf hash and receive time.
const PLAIN: u8 = 0;
/// A line the coordinator must check again itself.
const RAW: u8 = 1;
/// Bytes of a [`PLAIN`] record after its tag.
const PLAIN_LEN: usize = 8 + 32 + 8;

/// Checks every line of `chunk` (whole lines of `entries.jsonl`: each ends with `\n`, but a last line of the
/// file may not) and returns the compact answer described in the module documentation.
pub fn check_chunk(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() / 8);
    let mut start = 0;
    while start < chunk.len() {
        let end = memchr::memchr(b'\n', &chunk[start..]).map_or(chunk.len(), |i| start + i + 1);
        let line = &chunk[start..end];
        start = end;
        // The position only names a line that cannot be decoded; such a line goes back raw and is named by the
        // coordinator, which knows its seq.
        match check_line(line, 0) {
            Ok(CheckedEvent {
                seq,
                leaf_hash,
                check: Ok((received_at_ns, false)),
                own: None,
                erasure_seq: None,
                rotation: None,
            }) => {
                out.push(PLAIN);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&leaf_hash);
                out.extend_from_slice(&received_at_ns.to_le_bytes());
            }
            other => {
                let failed = !matches!(&other, Ok(ev) if ev.check.is_ok());
                out.push(RAW);
                // A u64: no line length can wrap (a wrapped one would let a line's own bytes pass for records).
                out.extend_from_slice(&(line.len() as u64).to_le_bytes());
                out.extend_from_slice(line);
                if failed {
                    break;
                }
            }
        }
    }
    out
}

/// The coordinator's side of one bundle verification: the first pass done, the walk waiting for checked
/// chunks, or the verdict once it is known.
pub enum Session {
    /// Walking: the next checked chunk is folded in.
    Walking {
        /// The bundle's walk.
        check: Box<BundleCheck>,
        /// The auditor's keys and options (the token and cosignature checks come after the walk).
        trust: Box<Trust>,
    },
    /// The verdict (a failure or an input error found before the end, or the finished verification's).
    Done(Value),
}

impl Session {
    /// Reads the bundle's small members and verifies its anchor ([`BundleCheck::start`]) under `keys` and
    /// `options` (as [`crate::verify_bundle_from`]).
    pub fn start<R: BundleRead>(open: BundleOpen<'_, R>, keys: &str, options: &str) -> Session {
        let trust = match Trust::parse(keys, options) {
            Ok(t) => t,
            Err(e) => return Session::Done(verdict::input_error(e)),
        };
        match BundleCheck::start_with(open, &trust.keys, trust.keyring, trust.origin.as_deref()) {
            Ok(check) => Session::Walking { check: Box::new(check), trust: Box::new(trust) },
            Err(e) => Session::Done(error_verdict(e)),
        }
    }

    /// Where the events are in the file, while walking (`None` once the verdict is known, or when
    /// `entries.jsonl` is not a plain member: then only the one-worker verifier reads it).
    pub fn entries(&self) -> Option<EntriesMember> {
        match self {
            Session::Walking { check, .. } => check.entries(),
            Session::Done(_) => None,
        }
    }

    /// Events folded so far (the walk's next seq minus the bundle's first; the page's progress).
    pub fn next_seq(&self) -> Option<u64> {
        match self {
            Session::Walking { check, .. } => Some(check.next_seq()),
            Session::Done(_) => None,
        }
    }

    /// Folds the checking worker's answer for the next chunk into the walk. Returns `false` once the verdict
    /// is known (the first failure): nothing more is to be folded; [`Session::finish`] tells it.
    pub fn fold(&mut self, checked: &[u8]) -> bool {
        let Session::Walking { check, .. } = self else { return false };
        match fold_into(check, checked) {
            Ok(()) => true,
            Err(verdict) => {
                *self = Session::Done(verdict);
                false
            }
        }
    }

    /// Checks the next head token ahead, when the auditor gave a TSA CA ([`BundleCheck::precheck_token`]):
    /// the coordinator does it while it waits for the checking workers. `false` when none is left.
    pub fn precheck_token(&mut self) -> bool {
        match self {
            Session::Walking { check, trust } => match &trust.timestamps {
                Some(policy) => check.precheck_token(policy),
                None => false,
            },
            Session::Done(_) => false,
        }
    }

    /// The verdict: the first failure found, or after the last chunk the checks that follow the walk.
    pub fn finish(self) -> Value {
        match self {
            Session::Done(v) => v,
            Session::Walking { check, trust } => {
                match check.finish(trust.timestamps.as_ref(), trust.witnesses.as_ref()) {
                    Ok(report) => verdict::ok(&report),
                    Err(e) => error_verdict(e),
                }
            }
        }
    }
}

fn error_verdict(e: VerifyError) -> Value {
    match e {
        VerifyError::Invalid(failure) => verdict::failure(&failure),
        other => verdict::input_error(other.to_string()),
    }
}

/// Reads the records of `checked` and pushes each into the walk, in order; `Err` is the verdict.
fn fold_into(check: &mut BundleCheck, checked: &[u8]) -> Result<(), Value> {
    let garbled = || verdict::input_error("the verifier stopped: a checking worker's answer is garbled");
    let mut rest = checked;
    while let Some((&tag, after)) = rest.split_first() {
        let item: Decoded = match tag {
            PLAIN => {
                let record = after.get(..PLAIN_LEN).ok_or_else(garbled)?;
                rest = &after[PLAIN_LEN..];
                let (seq, record) = record.split_at(8);
                let (leaf, received) = record.split_at(32);
                let u64_of = |b: &[u8]| b.try_into().map(u64::from_le_bytes).map_err(|_| garbled());
                Ok(CheckedEvent {
                    seq: u64_of(seq)?,
                    leaf_hash: leaf.try_into().map_err(|_| garbled())?,
                    check: Ok((u64_of(received)?, false)),
                    own: None,
                    erasure_seq: None,
                    rotation: None,
                })
            }
            RAW => {
                let len = after.get(..8).ok_or_else(garbled)?;
                let len = u64::from_le_bytes(len.try_into().map_err(|_| garbled())?);
                let end = usize::try_from(len).ok().and_then(|n| n.checked_add(8)).ok_or_else(garbled)?;
                let line = after.get(8..end).ok_or_else(garbled)?;
                rest = &after[end..];
                // Checked again here, at the seq the walk expects: the failure (or record) is the one-worker
                // verifier's, word for word.
                check_line(line, check.next_seq())
            }
            _ => return Err(garbled()),
        };
        check.push_one(item).map_err(|f| verdict::failure(&f))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
