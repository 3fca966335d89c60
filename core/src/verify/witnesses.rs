//! Witness cosignatures, offline (docs/FORMAT.md §16.6): the same check for a database, a bundle and a receipt.
//!
//! The verifier lists the witnesses it trusts (their cosignature/v1 vkeys) and a quorum K. Every head's
//! cosignature lines are read with c2sp.org/signed-note's rules (golang.org/x/mod/sumdb/note `Open`): a line of a
//! key that is not listed is ignored; a line of a listed witness that does not verify over the head's exact text
//! fails the verification at that head (the cosignatures were altered); so does a cosignature dated more than the
//! allowed skew before the head's seal time (`anchorlog-time`; an honest witness cannot cosign a head before it
//! exists). The newest head the evidence relies on — a database's or a bundle's last head, a receipt's head — must
//! carry valid cosignatures from at least K distinct listed witnesses; older heads are counted, not required
//! (one cosigned head vouches, through the chain and the consistency proofs the witnesses checked, for every
//! earlier one).

use super::Failure;
use crate::note::{cosignature, NoteSignature, VerifierKey};
use std::time::Duration;

/// Default of [`WitnessPolicy::max_skew`]: how much earlier than a head's seal time a cosignature may be dated
/// (clocks differ; the same allowance as for RFC 3161 tokens).
pub const DEFAULT_COSIGNATURE_MAX_SKEW_S: u64 = 300;

/// Which witnesses a verifier trusts and how many must have cosigned.
#[derive(Debug, Clone)]
pub struct WitnessPolicy {
    /// The listed witnesses' cosignature/v1 keys (distinct).
    pub witnesses: Vec<VerifierKey>,
    /// Distinct listed witnesses whose valid cosignature the newest head needs.
    pub quorum: usize,
    /// How much earlier than the head's seal time a cosignature may be dated.
    pub max_skew: Duration,
}

impl WitnessPolicy {
    /// A policy over `witnesses` (type 0x04 vkeys, each once); `quorum` defaults to all of them.
    pub fn new(witnesses: Vec<VerifierKey>, quorum: Option<usize>) -> Result<WitnessPolicy, String> {
        if witnesses.is_empty() {
            return Err("no witness is listed".into());
        }
        for (i, w) in witnesses.iter().enumerate() {
            if w.signature_type() != crate::note::vkey::TYPE_COSIGNATURE_V1 {
                return Err(format!(
                    "{w:?} is not a witness key: a witness's vkey is a cosignature/v1 key (type 0x04, what \
                     `anchorlog witness keygen` prints)"
                ));
            }
            if witnesses[..i].iter().any(|o| o.name() == w.name() && o.key_id() == w.key_id()) {
                return Err(format!("witness {}+{:08x} is listed twice", w.name(), w.key_id()));
            }
        }
        let quorum = quorum.unwrap_or(witnesses.len());
        if quorum == 0 || quorum > witnesses.len() {
            return Err(format!(
                "the witness quorum must be 1..={} (the number of listed witnesses), got {quorum}",
                witnesses.len()
            ));
        }
        Ok(WitnessPolicy { witnesses, quorum, max_skew: Duration::from_secs(DEFAULT_COSIGNATURE_MAX_SKEW_S) })
    }

    /// `name+key ID` of listed witness `i`.
    fn label(&self, i: usize) -> String {
        label(&self.witnesses[i])
    }
}

fn label(w: &VerifierKey) -> String {
    format!("{}+{:08x}", w.name(), w.key_id())
}

/// One listed witness's valid cosignature of a head.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CosignedBy {
    /// `name+key ID` of the witness.
    pub witness: String,
    /// The cosignature's time, seconds since the epoch.
    pub timestamp: u64,
}

/// What one listed witness cosigned among the heads checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WitnessTally {
    /// `name+key ID` of the witness.
    pub witness: String,
    /// Heads it validly cosigned.
    pub heads: u64,
    /// The lowest of them.
    pub first_height: Option<u64>,
    /// The highest of them.
    pub last_height: Option<u64>,
}

/// What the cosignature check saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WitnessReport {
    /// The quorum required of the newest head.
    pub quorum: usize,
    /// The newest head relied on.
    pub newest_height: u64,
    /// The listed witnesses that validly cosigned it.
    pub newest_cosigned_by: Vec<CosignedBy>,
    /// Per listed witness, in the order given.
    pub witnesses: Vec<WitnessTally>,
    /// Heads with at least one valid listed cosignature.
    pub heads_cosigned: u64,
    /// Heads with the quorum.
    pub heads_with_quorum: u64,
    /// Signature lines of keys that are not listed (ignored).
    pub unlisted_lines: u64,
}

/// Checks heads one by one, then the newest head's quorum.
#[derive(Debug)]
pub struct WitnessCheck<'p> {
    policy: &'p WitnessPolicy,
    report: WitnessReport,
    /// The last head checked and its valid listed cosignatures.
    last: Option<(u64, Vec<CosignedBy>)>,
}

impl<'p> WitnessCheck<'p> {
    /// A check under `policy`.
    pub fn new(policy: &'p WitnessPolicy) -> WitnessCheck<'p> {
        let witnesses = (0..policy.witnesses.len())
            .map(|i| WitnessTally { witness: policy.label(i), ..WitnessTally::default() })
            .collect();
        WitnessCheck {
            policy,
            report: WitnessReport { quorum: policy.quorum, witnesses, ..WitnessReport::default() },
            last: None,
        }
    }

    /// Checks the signature lines of head `height` (its exact checkpoint `text`, sealed at `sealed_at_ms`):
    /// lines of unlisted keys are counted and ignored; a listed witness's line must verify over `text` and not be
    /// dated more than the skew before the seal time. Heads must come in increasing height order.
    pub fn head(
        &mut self,
        height: u64,
        text: &str,
        sealed_at_ms: i64,
        lines: &[NoteSignature],
    ) -> Result<(), Failure> {
        let found = cosigners(self.policy, height, text, sealed_at_ms, lines)?;
        self.tally(height, found);
        Ok(())
    }

    /// Checks a batch of heads (in increasing height order) as [`WitnessCheck::head`] does, the Ed25519 checks on
    /// all cores ([`super::par_map`]); the first failure in height order is reported. Empties `batch`.
    pub fn heads(&mut self, batch: &mut Vec<HeadLines>) -> Result<(), Failure> {
        let policy = self.policy;
        let results =
            super::par_map(batch, |h| cosigners(policy, h.height, &h.text, h.sealed_at_ms, &h.lines));
        for (h, found) in batch.drain(..).zip(results) {
            self.tally(h.height, found?);
        }
        Ok(())
    }

    /// Counts one head's checked cosignatures.
    fn tally(&mut self, height: u64, found: Found) {
        self.report.unlisted_lines += found.unlisted;
        for &(i, _) in &found.valid {
            let t = &mut self.report.witnesses[i];
            t.heads += 1;
            t.first_height.get_or_insert(height);
            t.last_height = Some(height);
        }
        self.report.heads_cosigned += u64::from(!found.valid.is_empty());
        self.report.heads_with_quorum += u64::from(found.valid.len() >= self.policy.quorum);
        let by = found
            .valid
            .iter()
            .map(|&(i, timestamp)| CosignedBy { witness: self.policy.label(i), timestamp })
            .collect();
        self.last = Some((height, by));
    }

    /// The newest head relied on is `newest`: it must carry the quorum (it was passed to [`WitnessCheck::head`],
    /// or it has no cosignature at all).
    pub fn finish(mut self, newest: u64) -> Result<WitnessReport, Failure> {
        let by = match self.last.take() {
            Some((h, by)) if h == newest => by,
            _ => Vec::new(),
        };
        if by.len() < self.policy.quorum {
            return Err(Failure::BelowWitnessQuorum {
                height: newest,
                have: by.len(),
                need: self.policy.quorum,
                cosigned_by: by.into_iter().map(|c| c.witness).collect(),
            });
        }
        self.report.newest_height = newest;
        self.report.newest_cosigned_by = by;
        Ok(self.report)
    }
}

/// The valid listed cosignatures of one head: `(witness index, timestamp)` in witness order, each witness
/// once, and how many lines were of other keys.
struct Found {
    valid: Vec<(usize, u64)>,
    unlisted: u64,
}

fn cosigners(
    policy: &WitnessPolicy,
    height: u64,
    text: &str,
    sealed_at_ms: i64,
    lines: &[NoteSignature],
) -> Result<Found, Failure> {
    let mut times: Vec<Option<u64>> = vec![None; policy.witnesses.len()];
    let mut unlisted = 0;
    let skew_ms = i64::try_from(policy.max_skew.as_millis()).unwrap_or(i64::MAX);
    for sig in lines {
        let Some(i) = policy.witnesses.iter().position(|w| w.matches(&sig.name, sig.key_id)) else {
            unlisted += 1;
            continue;
        };
        let witness = policy.label(i);
        let t = cosignature::verify_signature(&policy.witnesses[i], text, &sig.signature).map_err(|e| {
            Failure::BadCosignature { height, witness: witness.clone(), reason: e.to_string() }
        })?;
        let t_ms = i64::try_from(t.saturating_mul(1000)).unwrap_or(i64::MAX);
        if t_ms < sealed_at_ms.saturating_sub(skew_ms) {
            return Err(Failure::CosignatureBeforeSeal {
                height,
                witness,
                timestamp: t,
                skew_s: policy.max_skew.as_secs(),
            });
        }
        times[i].get_or_insert(t);
    }
    let valid = times.into_iter().enumerate().filter_map(|(i, t)| t.map(|t| (i, t))).collect();
    Ok(Found { valid, unlisted })
}

/// One head's cosignature lines, read for checking in a batch ([`WitnessCheck::heads`]).
#[derive(Debug, Clone)]
pub struct HeadLines {
    /// The head's height.
    pub height: u64,
    /// Its exact checkpoint text.
    pub text: String,
    /// Its seal time, ms since the epoch.
    pub sealed_at_ms: i64,
    /// Its signature lines.
    pub lines: Vec<NoteSignature>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "log.test/a\n3\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    const SEALED_MS: i64 = 1_700_000_000_000;

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn vkey(seed: u8, name: &str) -> VerifierKey {
        VerifierKey::cosignature_v1(name, key(seed).verifying_key().as_bytes()).unwrap()
    }

    fn line(seed: u8, name: &str, t: u64) -> NoteSignature {
        cosignature::sign(name, &key(seed), TEXT, t).unwrap()
    }

    #[test]
    fn the_newest_head_needs_the_quorum_of_distinct_listed_witnesses() {
        let policy = WitnessPolicy::new(vec![vkey(1, "w1"), vkey(2, "w2")], Some(2)).unwrap();
        let t = 1_700_000_001;
        let mut c = WitnessCheck::new(&policy);
        // An unlisted witness and a repeated line of w1 do not count.
        c.head(7, TEXT, SEALED_MS, &[line(1, "w1", t), line(3, "w3", t), line(1, "w1", t + 1)]).unwrap();
        assert_eq!(
            c.finish(7).unwrap_err(),
            Failure::BelowWitnessQuorum { height: 7, have: 1, need: 2, cosigned_by: vec![policy.label(0)] }
        );
        let mut c = WitnessCheck::new(&policy);
        c.head(6, TEXT, SEALED_MS, &[line(2, "w2", t)]).unwrap();
        c.head(7, TEXT, SEALED_MS, &[line(2, "w2", t + 2), line(1, "w1", t), line(3, "w3", t)]).unwrap();
        let r = c.finish(7).unwrap();
        assert_eq!(
            r.newest_cosigned_by,
            vec![
                CosignedBy { witness: policy.label(0), timestamp: t },
                CosignedBy { witness: policy.label(1), timestamp: t + 2 }
            ]
        );
        assert_eq!((r.heads_cosigned, r.heads_with_quorum, r.unlisted_lines), (2, 1, 1));
        assert_eq!(
            r.witnesses[1],
            WitnessTally { witness: policy.label(1), heads: 2, first_height: Some(6), last_height: Some(7) }
        );
        // The newest head was never passed: it has no cosignature.
        let mut c = WitnessCheck::new(&policy);
        c.head(6, TEXT, SEALED_MS, &[line(1, "w1", t), line(2, "w2", t)]).unwrap();
        assert!(matches!(c.finish(8), Err(Failure::BelowWitnessQuorum { height: 8, have: 0, .. })));
        // A quorum of one.
        let one = WitnessPolicy::new(policy.witnesses.clone(), Some(1)).unwrap();
        let mut c = WitnessCheck::new(&one);
        c.head(7, TEXT, SEALED_MS, &[line(2, "w2", t)]).unwrap();
        assert!(c.finish(7).is_ok());
    }

    #[test]
    fn a_listed_witness_line_that_does_not_verify_or_predates_the_head_fails_at_its_height() {
        let policy = WitnessPolicy::new(vec![vkey(1, "w1"), vkey(2, "w2")], Some(1)).unwrap();
        let t = 1_700_000_001;
        let mut flipped = line(1, "w1", t);
        flipped.signature[30] ^= 1;
        let mut c = WitnessCheck::new(&policy);
        assert_eq!(
            c.head(4, TEXT, SEALED_MS, &[line(2, "w2", t), flipped]).unwrap_err(),
            Failure::BadCosignature {
                height: 4,
                witness: policy.label(0),
                reason: format!(
                    "the cosignature by w1+{:08x} does not verify over this checkpoint",
                    policy.witnesses[0].key_id()
                ),
            }
        );
        // The same bytes from an unlisted key are ignored.
        let mut unlisted = line(3, "w3", t);
        unlisted.signature[30] ^= 1;
        c.head(4, TEXT, SEALED_MS, &[unlisted, line(2, "w2", t)]).unwrap();
        // Dated more than 300 s before the seal time.
        let early = line(1, "w1", 1_700_000_000 - 301);
        assert_eq!(
            WitnessCheck::new(&policy).head(5, TEXT, SEALED_MS, &[early]).unwrap_err(),
            Failure::CosignatureBeforeSeal {
                height: 5,
                witness: policy.label(0),
                timestamp: 1_699_999_699,
                skew_s: 300
            }
        );
        let just = line(1, "w1", 1_700_000_000 - 300);
        assert!(WitnessCheck::new(&policy).head(5, TEXT, SEALED_MS, &[just]).is_ok());
    }

    #[test]
    fn policies_are_checked() {
        let w1 = vkey(1, "w1");
        assert!(WitnessPolicy::new(vec![], None).is_err());
        assert_eq!(WitnessPolicy::new(vec![w1.clone()], None).unwrap().quorum, 1);
        assert!(WitnessPolicy::new(vec![w1.clone(), w1.clone()], None).unwrap_err().contains("listed twice"));
        assert!(WitnessPolicy::new(vec![w1.clone()], Some(2)).unwrap_err().contains("1..=1"));
        assert!(WitnessPolicy::new(vec![w1.clone()], Some(0)).is_err());
        let note_key = VerifierKey::ed25519("w1", key(1).verifying_key().as_bytes()).unwrap();
        assert!(WitnessPolicy::new(vec![note_key], None).unwrap_err().contains("type 0x04"));
    }
}
