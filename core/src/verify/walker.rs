//! The walk as a state machine: checked events are pushed in, in seq order, a batch at a time, and
//! [`Walker::finish`] gives the report.
//!
//! [`super::walk`] drives it from an [`EventSource`]; the browser console pushes into it the batches its checking
//! workers return (a Web Worker cannot block waiting for another, so the walk cannot pull from them). Either
//! way it is this one walk, with the same failures.

use super::records::RecordTracker;
use super::{keys, Decoded, EventSource, Failure, HeadChecker, Report, Start, VerifyError, WalkOptions};
use crate::key::PublicKey;
use crate::merkle::Frontier;
use crate::stored::StoredHead;
use std::collections::BTreeMap;

/// A verification walk in progress: every head checked once the events pushed so far reach its tree size.
pub struct Walker {
    /// Seq of the first event the walk expects.
    first_seq: u64,
    report: Report,
    frontier: Frontier,
    records: RecordTracker,
    checker: HeadChecker,
    /// The keys given (to name the chain's key when no head was checked).
    keys: Vec<PublicKey>,
    allow_unsealed_erasure_records: bool,
    proven_erasures: BTreeMap<u64, u64>,
}

impl Walker {
    /// Starts a walk from `start` over `heads` (in height order) with the trusted `keys`; checks at once the
    /// heads due before any event (those whose tree size is the start's).
    pub fn new(
        start: Start,
        heads: Vec<StoredHead>,
        keys: &[PublicKey],
        opts: &WalkOptions<'_>,
    ) -> Result<Walker, Failure> {
        let first_seq = start.frontier.size();
        let mut report = Report { frontier_at_last_head: start.frontier.clone(), ..Report::default() };
        let frontier = start.frontier.clone();
        let records = RecordTracker::after_stop(start.stopped_at);
        let mut checker = HeadChecker::new(keys.to_vec(), opts.known_keys.clone(), opts.origin, heads, start);
        if opts.keyring {
            checker.use_keyring();
        }
        checker.check_due(&frontier, &mut report)?;
        Ok(Walker {
            first_seq,
            report,
            frontier,
            records,
            checker,
            keys: keys.to_vec(),
            allow_unsealed_erasure_records: opts.allow_unsealed_erasure_records,
            proven_erasures: opts.proven_erasures.clone(),
        })
    }

    /// The seq the next pushed event must have.
    pub fn next_seq(&self) -> u64 {
        self.frontier.size()
    }

    /// Folds in the next events, in seq order. The first failure ends the walk: the caller stops pushing and
    /// reports it (it is the earliest bad record, as everything before it was folded); the walker is not
    /// used after it (the failing event may be half folded).
    pub fn push(&mut self, batch: Vec<Decoded>) -> Result<(), Failure> {
        batch.into_iter().try_for_each(|item| self.push_one(item))
    }

    /// Folds in one event: seq continuity, its own check's result, the records it is, the tree, and every
    /// head its seq completes.
    pub fn push_one(&mut self, item: Decoded) -> Result<(), Failure> {
        let seq = self.frontier.size();
        let ev = item?;
        if ev.seq > seq {
            return Err(Failure::EventMissing { seq });
        }
        if ev.seq < seq {
            return Err(Failure::EventOutOfPlace { seq, found: ev.seq });
        }
        let (received_at_ns, erased) = ev.check?;
        let report = &mut self.report;
        report.first_received_ns.get_or_insert(received_at_ns);
        report.last_received_ns = Some(received_at_ns);
        report.erased += u64::from(erased);
        if erased {
            self.records.erased(seq, ev.erasure_seq)?;
        }
        self.records.event(seq, received_at_ns, ev.own)?;
        if let Some(r) = ev.rotation {
            self.checker.rotation_record(seq, r)?;
        }
        self.frontier.push(ev.leaf_hash);
        self.checker.check_due(&self.frontier, &mut self.report)
    }

    /// Pushes every batch of `events` (from the seq the walk expects) and finishes.
    pub fn drive(mut self, events: &mut dyn EventSource) -> Result<Report, VerifyError> {
        let mut failure: Option<Failure> = None;
        events.visit(self.first_seq, &mut |batch| match self.push(batch) {
            Ok(()) => true,
            Err(f) => {
                failure = Some(f);
                false
            }
        })?;
        if let Some(f) = failure {
            return Err(f.into());
        }
        self.finish()
    }

    /// After the last event: any head left claims more events than exist; the records' end-of-log checks;
    /// the report.
    pub fn finish(self) -> Result<Report, VerifyError> {
        let Walker {
            first_seq,
            mut report,
            frontier,
            records,
            mut checker,
            keys,
            allow_unsealed_erasure_records,
            proven_erasures,
        } = self;
        report.events = frontier.size() - first_seq;
        checker.finish(frontier.size())?;
        report.heads = checker.checked;
        report.key_id = checker.first_key.clone().unwrap_or_else(|| keys::given(&keys));
        let current = checker.current.clone().or_else(|| keys.first().cloned());
        report.current_key_id = current.as_ref().map(|k| k.key_id.clone()).unwrap_or_default();
        report.current_key = current;
        report.rotations = std::mem::take(&mut checker.rotations);
        report.signers = std::mem::take(&mut checker.signers);
        report.keyring = checker.keyring.as_ref().map(|ring| ring.keys.clone());
        report.unsealed_rotation = checker.pending.as_ref().map(|(seq, _)| *seq);
        report.origin = checker.origin.unwrap_or_default();
        report.unsealed_events = frontier.size() - report.frontier_at_last_head.size();
        let sealed = report.frontier_at_last_head.size();
        let (summary, outages) = records.finish(sealed, allow_unsealed_erasure_records, &proven_erasures)?;
        report.appliance = summary;
        report.timestamping_outages = outages;
        Ok(report)
    }
}
