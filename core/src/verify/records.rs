//! The appliance's own records as the verifier reads them (docs/FORMAT.md §10, §12–15), and what the walk
//! learns from them: the counts an auditor reads first, which erased payloads are accounted for by a logged
//! erasure, and the timestamping outages that excuse late tokens.
//!
//! A record counts as the appliance's only when its entry says so — producer, source and format `anchorlog`,
//! auth `internal` ([`crate::entry::EntryFacts::appliance`]). A producer's event with an
//! `anchorlog.*` body is refused at ingest, and would count as nothing here anyway.

use super::Failure;
use crate::record_types as types;
use std::collections::BTreeMap;

/// Which critical control an outage record is about (`component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageComponent {
    /// Signing or storing heads.
    Sealing,
    /// Getting RFC 3161 tokens.
    Timestamping,
    /// Getting a witness's cosignatures.
    Witnessing,
    /// Another component (a newer build's).
    Other,
}

/// One of the appliance's own records, by the `type` of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRecord {
    /// `anchorlog.start`; whether its previous run ended without a stop record.
    Start {
        /// `previous_run` is `ended_without_stop_record`.
        after_unclean_end: bool,
    },
    /// `anchorlog.stop`.
    Stop,
    /// `anchorlog.outage`, `state: started`.
    OutageStarted {
        /// `component`.
        component: OutageComponent,
        /// `since_ms`, when the outage started (epoch ms).
        since_ms: Option<i64>,
    },
    /// `anchorlog.outage`, `state: ended`.
    OutageEnded {
        /// `component`.
        component: OutageComponent,
        /// `since_ms`, when the outage started (epoch ms; the same as in its `started` record).
        since_ms: Option<i64>,
    },
    /// `anchorlog.access_denied`.
    AccessDenied,
    /// `anchorlog.access_denied_summary`: invalid access attempts of one window not recorded one by one.
    AccessDeniedSummary {
        /// `suppressed`: how many.
        suppressed: u64,
    },
    /// `anchorlog.audit_access`.
    AuditAccess,
    /// `anchorlog.witness_refused`: a witness refused one of the appliance's heads (rollback or fork evidence).
    WitnessRefused,
    /// `anchorlog.self_verify`: the appliance verified its own log up to a head (docs/FORMAT.md §18).
    SelfVerify,
    /// `anchorlog.key_rotation`: the head ending with it is the old key's last (its body is read by
    /// [`super::keys::RotationRecord`]).
    KeyRotation,
    /// `anchorlog.clock_jump`: the wall clock stepped (docs/FORMAT.md §21).
    ClockJump {
        /// `old_time_ms`: where the clock should have been.
        old_time_ms: Option<i64>,
        /// `new_time_ms`: where it was.
        new_time_ms: Option<i64>,
    },
    /// `anchorlog.erasure`, naming the erased event.
    Erasure {
        /// `erased_seq`.
        erased_seq: Option<u64>,
    },
    /// `anchorlog.takeover`: a node took the writer lease of a shared (PostgreSQL) log and begins writing; for
    /// the walk it starts a run like a start record (docs/HA.md).
    Takeover,
    /// Anything else (another type, an erased body, not JSON).
    Other,
}

impl OwnRecord {
    /// The kind of an event's record: `None` unless the entry is the appliance's own (`appliance`).
    pub fn of(appliance: bool, body: Option<&[u8]>) -> Option<OwnRecord> {
        if !appliance {
            return None;
        }
        let v: serde_json::Value = match body.map(serde_json::from_slice) {
            Some(Ok(v)) => v,
            _ => return Some(OwnRecord::Other),
        };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str());
        let component = match text("component") {
            Some("sealing") => OutageComponent::Sealing,
            Some("timestamping") => OutageComponent::Timestamping,
            Some(types::COMPONENT_WITNESSING) => OutageComponent::Witnessing,
            _ => OutageComponent::Other,
        };
        let since_ms = v.get("since_ms").and_then(|x| x.as_i64());
        let state = text("state");
        Some(match text("type") {
            Some(types::START) => OwnRecord::Start {
                after_unclean_end: text("previous_run") == Some(types::PREVIOUS_RUN_UNCLEAN),
            },
            Some(types::STOP) => OwnRecord::Stop,
            Some(types::TAKEOVER) => OwnRecord::Takeover,
            Some(types::OUTAGE) if state == Some(types::OUTAGE_STARTED) => {
                OwnRecord::OutageStarted { component, since_ms }
            }
            Some(types::OUTAGE) if state == Some(types::OUTAGE_ENDED) => {
                OwnRecord::OutageEnded { component, since_ms }
            }
            Some(types::ACCESS_DENIED) => OwnRecord::AccessDenied,
            Some(types::ACCESS_DENIED_SUMMARY) => OwnRecord::AccessDeniedSummary {
                suppressed: v.get("suppressed").and_then(|x| x.as_u64()).unwrap_or(0),
            },
            Some(types::AUDIT_ACCESS) => OwnRecord::AuditAccess,
            Some(types::WITNESS_REFUSED) => OwnRecord::WitnessRefused,
            Some(types::SELF_VERIFY) => OwnRecord::SelfVerify,
            Some(types::KEY_ROTATION) => OwnRecord::KeyRotation,
            Some(types::CLOCK_JUMP) => OwnRecord::ClockJump {
                old_time_ms: v.get("old_time_ms").and_then(|x| x.as_i64()),
                new_time_ms: v.get("new_time_ms").and_then(|x| x.as_i64()),
            },
            Some(types::ERASURE) => {
                OwnRecord::Erasure { erased_seq: v.get("erased_seq").and_then(|x| x.as_u64()) }
            }
            _ => OwnRecord::Other,
        })
    }
}

/// Counts of the appliance's own records in a verified range, by the `type` of their body: what an auditor
/// reads first — restarts, crashes, outages, refused access.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplianceSummary {
    /// `anchorlog.start` records.
    pub starts: u64,
    /// Of those, starts whose previous run ended without a stop record (a crash, a kill, a power loss).
    pub starts_after_unclean_end: u64,
    /// `anchorlog.stop` records.
    pub stops: u64,
    /// `anchorlog.takeover` records: a node took the writer lease of a shared log (docs/HA.md).
    pub takeovers: u64,
    /// `anchorlog.outage` records with `state: started`.
    pub outages_started: u64,
    /// `anchorlog.outage` records with `state: ended`.
    pub outages_ended: u64,
    /// `anchorlog.access_denied` records.
    pub access_denied: u64,
    /// `anchorlog.access_denied_summary` records.
    pub access_denied_summaries: u64,
    /// Invalid access attempts those summaries count (not recorded one by one: over a record budget).
    pub access_denied_suppressed: u64,
    /// `anchorlog.audit_access` records.
    pub audit_access: u64,
    /// `anchorlog.erasure` records.
    pub erasures: u64,
    /// `anchorlog.witness_refused` records: a witness refused one of the log's own heads (the log was rolled
    /// back or forked).
    pub witness_refusals: u64,
    /// `anchorlog.self_verify` records: passes of the appliance's own verification.
    pub self_verifications: u64,
    /// `anchorlog.key_rotation` records: the signing key changed (the report lists each rotation).
    pub key_rotations: u64,
    /// `anchorlog.clock_jump` records: the wall clock stepped by more than 5 s; receive and seal times on either
    /// side of one are not comparable (docs/FORMAT.md §21).
    pub clock_jumps: u64,
    /// Own records of another type, or whose body is erased or not JSON.
    pub other: u64,
}

impl ApplianceSummary {
    fn add(&mut self, r: OwnRecord) {
        let n = match r {
            OwnRecord::Start { after_unclean_end } => {
                self.starts_after_unclean_end += u64::from(after_unclean_end);
                &mut self.starts
            }
            OwnRecord::Stop => &mut self.stops,
            OwnRecord::Takeover => &mut self.takeovers,
            OwnRecord::OutageStarted { .. } => &mut self.outages_started,
            OwnRecord::OutageEnded { .. } => &mut self.outages_ended,
            OwnRecord::AccessDenied => &mut self.access_denied,
            OwnRecord::AccessDeniedSummary { suppressed } => {
                self.access_denied_suppressed += suppressed;
                &mut self.access_denied_summaries
            }
            OwnRecord::AuditAccess => &mut self.audit_access,
            OwnRecord::Erasure { .. } => &mut self.erasures,
            OwnRecord::WitnessRefused => &mut self.witness_refusals,
            OwnRecord::SelfVerify => &mut self.self_verifications,
            OwnRecord::KeyRotation => &mut self.key_rotations,
            OwnRecord::ClockJump { .. } => &mut self.clock_jumps,
            OwnRecord::Other => &mut self.other,
        };
        *n += 1;
    }
}

/// A timestamping outage as the log records it: from `since_ms` (the first failed attempt) to the `ended`
/// record, or to the next start when the run ended first (the new run back-fills the tokens), or still open
/// at the end of what was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutageWindow {
    /// When the outage started, epoch ms (`since_ms` of its records).
    pub since_ms: i64,
    /// When it ended, epoch ms: the receive time of its `ended` record or of the next start record; `None`
    /// while still open.
    pub end_ms: Option<i64>,
}

/// What the walk keeps about the appliance's own records while it goes.
#[derive(Debug, Default)]
pub(crate) struct RecordTracker {
    pub summary: ApplianceSummary,
    /// Erased events whose erasure record the walk has not reached yet: record seq → erased seq.
    pending_erasures: BTreeMap<u64, u64>,
    /// Erasures whose record the walk found: (erased seq, record seq).
    recorded_erasures: Vec<(u64, u64)>,
    /// Timestamping outages started and not ended yet: `since_ms`.
    open_outages: Vec<i64>,
    /// The seq of a clean stop record with no start after it yet.
    stopped_at: Option<u64>,
    windows: Vec<OutageWindow>,
}

impl RecordTracker {
    /// A tracker for a walk whose previous event is the clean stop record at `stop_seq`, if any.
    pub fn after_stop(stop_seq: Option<u64>) -> RecordTracker {
        RecordTracker { stopped_at: stop_seq, ..RecordTracker::default() }
    }

    /// An event at `seq` with an erased payload whose erasure row names the record `erasure_seq`.
    pub fn erased(&mut self, seq: u64, erasure_seq: Option<u64>) -> Result<(), Failure> {
        let Some(e) = erasure_seq.filter(|e| *e > seq) else {
            return Err(Failure::UnrecordedErasure { seq });
        };
        if self.pending_erasures.insert(e, seq).is_some() {
            return Err(Failure::ErasureRecordMismatch { seq, erasure_seq: e });
        }
        Ok(())
    }

    /// Any event at `seq`, received at `received_ns`, and the appliance's record it is, if it is one.
    pub fn event(&mut self, seq: u64, received_ns: u64, own: Option<OwnRecord>) -> Result<(), Failure> {
        if let Some(erased) = self.pending_erasures.remove(&seq) {
            if own != Some(OwnRecord::Erasure { erased_seq: Some(erased) }) {
                return Err(Failure::ErasureRecordMismatch { seq: erased, erasure_seq: seq });
            }
            self.recorded_erasures.push((erased, seq));
        }
        if let Some(stop_seq) = self.stopped_at {
            // A clean stop is followed by the next run's start, or on a shared log by another node's takeover.
            if !matches!(own, Some(OwnRecord::Start { .. } | OwnRecord::Takeover)) {
                return Err(Failure::WrittenWhileStopped { seq, stop_seq });
            }
        }
        let Some(own) = own else { return Ok(()) };
        self.summary.add(own);
        let at_ms = i64::try_from(received_ns / 1_000_000).unwrap_or(i64::MAX);
        match own {
            OwnRecord::OutageStarted { component: OutageComponent::Timestamping, since_ms: Some(since) } => {
                self.open_outages.push(since);
            }
            OwnRecord::OutageEnded { component: OutageComponent::Timestamping, since_ms: Some(since) } => {
                // The `ended` record carries its start, so a range that begins inside an outage still knows it.
                self.open_outages.retain(|s| *s != since);
                self.windows.push(OutageWindow { since_ms: since, end_ms: Some(at_ms) });
            }
            OwnRecord::Start { .. } | OwnRecord::Takeover => {
                self.stopped_at = None;
                for since in self.open_outages.drain(..) {
                    self.windows.push(OutageWindow { since_ms: since, end_ms: Some(at_ms) });
                }
            }
            OwnRecord::Stop => self.stopped_at = Some(seq),
            // A backward jump: heads sealed until the clock passes the held seal time again carry that time,
            // while a TSA stamps them at its (right) time, up to the jump's size later. The hold is a window for
            // the delay check like a timestamping outage (docs/FORMAT.md §21): from the new time to the old
            // time plus the jump.
            OwnRecord::ClockJump { old_time_ms: Some(old), new_time_ms: Some(new) } if new < old => {
                self.windows
                    .push(OutageWindow { since_ms: new, end_ms: Some(old.saturating_add(old - new)) });
            }
            _ => {}
        }
        Ok(())
    }

    /// After the walk: every erased payload must be accounted for by its record, found in the walk and covered
    /// by a verified head (`sealed_size`: the last verified head's tree size; `allow_unsealed` lifts that, for
    /// the appliance's own start-up, which seals it next) or proven elsewhere (`proven`: erased seq → record
    /// seq, records a bundle or receipt carries with their own proofs, already verified). Returns the summary
    /// and the timestamping outages.
    pub fn finish(
        mut self,
        sealed_size: u64,
        allow_unsealed: bool,
        proven: &BTreeMap<u64, u64>,
    ) -> Result<(ApplianceSummary, Vec<OutageWindow>), Failure> {
        let mut problems: Vec<Failure> = Vec::new();
        for (&e, &s) in &self.pending_erasures {
            if proven.get(&s) != Some(&e) {
                problems.push(Failure::ErasureRecordMissing { seq: s, erasure_seq: e });
            }
        }
        for &(s, e) in &self.recorded_erasures {
            if e >= sealed_size && !allow_unsealed {
                problems.push(Failure::ErasureRecordUnsealed { seq: s, erasure_seq: e });
            }
        }
        // Name the earliest erased event that is not accounted for.
        if let Some(f) = problems.into_iter().min_by_key(|f| f.location().1) {
            return Err(f);
        }
        for since in self.open_outages.drain(..) {
            self.windows.push(OutageWindow { since_ms: since, end_ms: None });
        }
        Ok((self.summary, self.windows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_records_are_told_apart_by_their_body_type_and_only_when_the_entry_is_the_appliances() {
        let own = |appliance, body: &str| OwnRecord::of(appliance, Some(body.as_bytes()));
        assert_eq!(own(false, r#"{"type":"anchorlog.stop"}"#), None, "a producer's event never counts");
        assert_eq!(
            own(true, r#"{"type":"anchorlog.start","previous_run":"ended_without_stop_record"}"#),
            Some(OwnRecord::Start { after_unclean_end: true })
        );
        assert_eq!(
            own(true, r#"{"type":"anchorlog.start","previous_run":"stopped_cleanly"}"#),
            Some(OwnRecord::Start { after_unclean_end: false })
        );
        assert_eq!(own(true, r#"{"type":"anchorlog.stop"}"#), Some(OwnRecord::Stop));
        assert_eq!(
            own(true, r#"{"type":"anchorlog.takeover","node":"b","epoch":2}"#),
            Some(OwnRecord::Takeover)
        );
        assert_eq!(
            own(
                true,
                r#"{"type":"anchorlog.outage","state":"started","component":"timestamping","since_ms":7}"#
            ),
            Some(OwnRecord::OutageStarted { component: OutageComponent::Timestamping, since_ms: Some(7) })
        );
        assert_eq!(
            own(true, r#"{"type":"anchorlog.outage","state":"ended","component":"sealing"}"#),
            Some(OwnRecord::OutageEnded { component: OutageComponent::Sealing, since_ms: None })
        );
        assert_eq!(own(true, r#"{"type":"anchorlog.access_denied"}"#), Some(OwnRecord::AccessDenied));
        assert_eq!(
            own(true, r#"{"type":"anchorlog.access_denied_summary","suppressed":9940}"#),
            Some(OwnRecord::AccessDeniedSummary { suppressed: 9940 })
        );
        assert_eq!(own(true, r#"{"type":"anchorlog.audit_access"}"#), Some(OwnRecord::AuditAccess));
        assert_eq!(own(true, r#"{"type":"anchorlog.witness_refused"}"#), Some(OwnRecord::WitnessRefused));
        assert_eq!(own(true, r#"{"type":"anchorlog.key_rotation"}"#), Some(OwnRecord::KeyRotation));
        assert_eq!(
            own(true, r#"{"type":"anchorlog.clock_jump","direction":"backward","delta_ms":-3600000}"#),
            Some(OwnRecord::ClockJump { old_time_ms: None, new_time_ms: None })
        );
        let mut t = RecordTracker::default();
        let jump = own(
            true,
            r#"{"type":"anchorlog.clock_jump","direction":"backward","old_time_ms":10000000,"new_time_ms":6400000,"delta_ms":-3600000}"#,
        );
        t.event(0, 6_400_000_000_000, jump).unwrap();
        let forward = own(true, r#"{"type":"anchorlog.clock_jump","old_time_ms":1,"new_time_ms":3600001}"#);
        t.event(1, 3_600_001_000_000, forward).unwrap();
        let (summary, windows) = t.finish(2, false, &BTreeMap::new()).unwrap();
        assert_eq!(summary.clock_jumps, 2);
        // Only the backward jump holds seal times, so only it opens a window.
        assert_eq!(windows, vec![OutageWindow { since_ms: 6_400_000, end_ms: Some(13_600_000) }]);
        assert_eq!(
            own(false, r#"{"type":"anchorlog.key_rotation"}"#),
            None,
            "a producer's event never counts"
        );
        assert_eq!(
            own(true, r#"{"type":"anchorlog.outage","state":"started","component":"witnessing"}"#),
            Some(OwnRecord::OutageStarted { component: OutageComponent::Witnessing, since_ms: None })
        );
        assert_eq!(own(true, r#"{"type":"anchorlog.self_verify","height":3}"#), Some(OwnRecord::SelfVerify));
        assert_eq!(
            own(true, r#"{"type":"anchorlog.erasure","erased_seq":4}"#),
            Some(OwnRecord::Erasure { erased_seq: Some(4) })
        );
        assert_eq!(own(true, "not json"), Some(OwnRecord::Other));
        assert_eq!(OwnRecord::of(true, None), Some(OwnRecord::Other), "an erased own record");
        let mut sum = ApplianceSummary::default();
        for r in [
            OwnRecord::Start { after_unclean_end: true },
            OwnRecord::Start { after_unclean_end: false },
            OwnRecord::Stop,
        ] {
            sum.add(r);
        }
        assert_eq!((sum.starts, sum.starts_after_unclean_end, sum.stops), (2, 1, 1));
    }

    fn erasure(s: u64) -> Option<OwnRecord> {
        Some(OwnRecord::Erasure { erased_seq: Some(s) })
    }

    #[test]
    fn an_erased_payload_needs_its_own_record_covered_by_a_head() {
        let none = BTreeMap::new();
        // Genuine: event 1 erased, its record at 5, sealed at size 6.
        let mut t = RecordTracker::default();
        t.erased(1, Some(5)).unwrap();
        for seq in 2..5 {
            t.event(seq, 0, None).unwrap();
        }
        t.event(5, 0, erasure(1)).unwrap();
        assert_eq!(t.finish(6, false, &none).unwrap().0.erasures, 1);
        // The record names another event, or is not an erasure record at all.
        for own in [erasure(2), Some(OwnRecord::Start { after_unclean_end: false }), None] {
            let mut t = RecordTracker::default();
            t.erased(1, Some(5)).unwrap();
            assert_eq!(t.event(5, 0, own), Err(Failure::ErasureRecordMismatch { seq: 1, erasure_seq: 5 }));
        }
        // Not yet sealed: a failure offline, allowed for the appliance's own start-up.
        let mut t = RecordTracker::default();
        t.erased(1, Some(5)).unwrap();
        t.event(5, 0, erasure(1)).unwrap();
        let unsealed = Failure::ErasureRecordUnsealed { seq: 1, erasure_seq: 5 };
        assert_eq!(t.finish(5, false, &none).unwrap_err(), unsealed);
        let mut t = RecordTracker::default();
        t.erased(1, Some(5)).unwrap();
        t.event(5, 0, erasure(1)).unwrap();
        assert!(t.finish(5, true, &none).is_ok());
        // Beyond the walk: missing unless proven elsewhere (a bundle's or receipt's record proof).
        let mut t = RecordTracker::default();
        t.erased(1, Some(9)).unwrap();
        t.erased(3, Some(8)).unwrap();
        let proven: BTreeMap<u64, u64> = [(1, 9)].into();
        assert_eq!(
            t.finish(6, false, &proven).unwrap_err(),
            Failure::ErasureRecordMissing { seq: 3, erasure_seq: 8 }
        );
        // No record named, or one that is not later: unrecorded.
        let mut t = RecordTracker::default();
        assert_eq!(t.erased(4, None), Err(Failure::UnrecordedErasure { seq: 4 }));
        assert_eq!(t.erased(4, Some(4)), Err(Failure::UnrecordedErasure { seq: 4 }));
    }

    #[test]
    fn nothing_but_a_start_may_follow_a_clean_stop() {
        let stop = Some(OwnRecord::Stop);
        let start = Some(OwnRecord::Start { after_unclean_end: false });
        let mut t = RecordTracker::default();
        for (seq, own) in [(0, start), (1, None), (2, stop), (3, start), (4, None), (5, stop)] {
            t.event(seq, 0, own).unwrap();
        }
        assert_eq!(t.event(6, 0, None), Err(Failure::WrittenWhileStopped { seq: 6, stop_seq: 5 }));
        // On a shared (PostgreSQL) log another node's takeover record follows a writer's clean stop.
        let mut t = RecordTracker::default();
        for (seq, own) in [(0, start), (1, stop), (2, Some(OwnRecord::Takeover)), (3, None)] {
            t.event(seq, 0, own).unwrap();
        }
        assert_eq!((t.summary.starts, t.summary.takeovers, t.summary.stops), (1, 1, 1));
        let mut t = RecordTracker::default();
        t.event(0, 0, stop).unwrap();
        let erasure = Some(OwnRecord::Erasure { erased_seq: Some(0) });
        assert_eq!(t.event(1, 0, erasure), Err(Failure::WrittenWhileStopped { seq: 1, stop_seq: 0 }));
    }

    #[test]
    fn timestamping_outages_end_at_their_record_or_the_next_start() {
        let started = |since| {
            Some(OwnRecord::OutageStarted { component: OutageComponent::Timestamping, since_ms: Some(since) })
        };
        let ended = |since| {
            Some(OwnRecord::OutageEnded { component: OutageComponent::Timestamping, since_ms: Some(since) })
        };
        let sealing =
            Some(OwnRecord::OutageStarted { component: OutageComponent::Sealing, since_ms: Some(1) });
        let ms = |m: u64| m * 1_000_000;
        let mut t = RecordTracker::default();
        t.event(0, ms(100), started(90)).unwrap();
        t.event(1, ms(150), sealing).unwrap();
        t.event(2, ms(200), ended(90)).unwrap();
        t.event(3, ms(300), started(290)).unwrap();
        t.event(4, ms(400), Some(OwnRecord::Start { after_unclean_end: true })).unwrap();
        t.event(5, ms(500), ended(450)).unwrap();
        t.event(6, ms(600), started(590)).unwrap();
        let (_, windows) = t.finish(7, false, &BTreeMap::new()).unwrap();
        assert_eq!(
            windows,
            [
                OutageWindow { since_ms: 90, end_ms: Some(200) },
                OutageWindow { since_ms: 290, end_ms: Some(400) },
                OutageWindow { since_ms: 450, end_ms: Some(500) },
                OutageWindow { since_ms: 590, end_ms: None },
            ]
        );
    }
}
