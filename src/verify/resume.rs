//! Verification that resumes after a head an earlier pass verified: the appliance's start-up and its periodic
//! self-verification (docs/FORMAT.md §18) walk only what lies after the last self-verified point, so their cost
//! follows the new part of the log, not its size.
//!
//! The point is the appliance's own `anchorlog.self_verify` record naming a head (height, tree size, root). It
//! is found through the unique index on `source_id` ([`store::last_own_event_with_source_id_prefix`]), which
//! is only a hint: the record's entry, leaf and payload are checked, and the walk that resumes at the head it
//! names must also cover the record itself under a signed head (the caller only looks below the last stored
//! head's tree size, and the walk verifies everything from the named head to the end). A record in the
//! unsealed tail is never used: anyone with the file can append one there.
//!
//! What a resumed walk does not see, by construction: anything before the point. An event altered, deleted or
//! erased without its record below the point's tree size is found only by a walk from genesis (the appliance's
//! background full pass). The anchor head itself is re-checked (signature, origin, the record's root) and the
//! frontier at its tree size is loaded from the stored nodes and must give its signed root.

use super::DbEvents;
use crate::store;
use anchorlog_core::entry::Entry;
use anchorlog_core::head::Checkpoint;
use anchorlog_core::key::PublicKey;
use anchorlog_core::merkle::Hash;
use anchorlog_core::record_types as types;
use anchorlog_core::stored::{StoredEvent, StoredHead};
use anchorlog_core::verify::{walk, Failure, Report, Start, VerifyError, WalkOptions};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rusqlite::Connection;

/// A self-verification record (`anchorlog.self_verify`): which head a pass verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfVerifyRecord {
    /// The record's own seq.
    pub seq: u64,
    /// `full` or `incremental`.
    pub scope: String,
    /// The height the pass resumed after (`None` for a full pass).
    pub from_height: Option<u64>,
    /// The verified head's height.
    pub height: u64,
    /// Its tree size.
    pub tree_size: u64,
    /// Its root.
    pub root: Hash,
}

impl SelfVerifyRecord {
    /// Reads a self-verification record from a stored event: `Ok(None)` when the event is not one (another
    /// record, a producer's event, a body that does not parse, or a `source_id` that does not name it), `Err`
    /// when the row itself fails its checks (it was altered).
    pub fn from_event(ev: &StoredEvent) -> Result<Option<SelfVerifyRecord>, Failure> {
        anchorlog_core::verify::check_event(ev)?;
        let entry = Entry::parse(&ev.entry)
            .map_err(|e| Failure::EntryMalformed { seq: ev.seq, reason: e.to_string() })?;
        if !entry.is_appliance_record() {
            return Ok(None);
        }
        let Some(v) = ev.body.as_deref().and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        else {
            return Ok(None);
        };
        let num = |k: &str| v.get(k).and_then(|x| x.as_u64());
        let root = v.get("root").and_then(|x| x.as_str()).and_then(|r| B64.decode(r).ok());
        let root = root.and_then(|r| <Hash>::try_from(r).ok());
        let scope = v.get("scope").and_then(|x| x.as_str());
        let (Some(types::SELF_VERIFY), Some(height), Some(tree_size), Some(root), Some(scope)) =
            (v.get("type").and_then(|x| x.as_str()), num("height"), num("tree_size"), root, scope)
        else {
            return Ok(None);
        };
        if entry.source_id.as_deref() != Some(types::self_verify_source_id(height, scope).as_str()) {
            return Ok(None);
        }
        Ok(Some(SelfVerifyRecord {
            seq: ev.seq,
            scope: scope.to_string(),
            from_height: num("from_height"),
            height,
            tree_size,
            root,
        }))
    }
}

/// The latest self-verified point a walk may resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// No self-verification record below the sealed size: verify from genesis.
    None,
    /// The newest record below the sealed size.
    Found(SelfVerifyRecord),
    /// The index names an event that is not a self-verification record of the head it claims (its unsigned
    /// `source_id` column was changed): verify from genesis.
    Unusable {
        /// The event the index named.
        seq: u64,
    },
}

/// Finds the newest self-verification record with a seq below `sealed_size` (the last stored head's tree
/// size: a record in the unsealed tail is not under any signature yet). `O(log n)`.
pub fn last_point(conn: &Connection, sealed_size: u64) -> Result<Point, VerifyError> {
    let hint =
        store::last_own_event_with_source_id_prefix(conn, types::SELF_VERIFY_SOURCE_ID_PREFIX, sealed_size)?;
    let Some(ev) = hint else { return Ok(Point::None) };
    match SelfVerifyRecord::from_event(&ev)? {
        Some(r) if r.tree_size <= r.seq => Ok(Point::Found(r)),
        // A record names a head sealed before it was written; anything else is not the appliance's.
        _ => Ok(Point::Unusable { seq: ev.seq }),
    }
}

/// What a resumed (or full) walk of a database established.
#[derive(Debug, Clone)]
pub struct RangeReport {
    /// The head the walk resumed after (`None`: from genesis).
    pub anchor: Option<StoredHead>,
    /// What the walk itself saw: its `events` and `heads` count only the walked range.
    pub report: Report,
    /// The last verified head: the last one the walk checked, else the anchor.
    pub last_head: Option<StoredHead>,
}

impl RangeReport {
    /// Heads in the whole log up to and including the last verified one.
    pub fn total_heads(&self) -> u64 {
        self.last_head.as_ref().map_or(0, |h| h.height + 1)
    }
}

/// Verifies a database from genesis (`after = None`) or resuming after head `after`, with the events read page
/// by page ([`DbEvents`]; the log may be growing). Checks the stored nodes at the last head
/// as [`super::verify_database_with`] does.
pub fn verify_database_after(
    conn: &Connection,
    keys: &[PublicKey],
    after: Option<u64>,
    opts: WalkOptions<'_>,
) -> Result<RangeReport, VerifyError> {
    verify_database_after_with(conn, keys, after, opts, &mut DbEvents(conn))
}

/// [`verify_database_after`] reading the events from `events` (the database's, possibly wrapped: the
/// appliance's background pass stops early at shutdown).
pub fn verify_database_after_with(
    conn: &Connection,
    keys: &[PublicKey],
    after: Option<u64>,
    opts: WalkOptions<'_>,
    events: &mut dyn anchorlog_core::verify::EventSource,
) -> Result<RangeReport, VerifyError> {
    let stored_origin = store::stored_origin(conn)?;
    let origin = opts.origin.map(str::to_string).or(stored_origin);
    // The keys the database holds name the signer of a head that fails; they are never trusted for that.
    let mut known_keys = opts.known_keys.clone();
    known_keys.extend(store::public_key_pems(conn)?.iter().filter_map(|pem| PublicKey::from_pem(pem).ok()));
    let opts = WalkOptions { origin: origin.as_deref(), known_keys, ..opts };
    let (start, anchor) = match after {
        None => (Start::genesis(), None),
        Some(height) => {
            let (start, head) = anchor_start(conn, keys, height, opts.origin)?;
            (start, Some(head))
        }
    };
    let next = start.next_height;
    let heads = store::heads_from(conn, next)?;
    let report = walk(start, heads, events, keys, &opts)?;
    let last_height = (next + report.heads).checked_sub(1);
    let last_head = match (last_height, &anchor) {
        (Some(h), Some(a)) if h == a.height => Some(a.clone()),
        (Some(h), _) => {
            Some(store::head(conn, h)?.ok_or(Failure::HeadMissing { height: h }).map_err(VerifyError::from)?)
        }
        (None, _) => None,
    };
    super::check_node_store(conn, &report, last_height)?;
    Ok(RangeReport { anchor, report, last_head })
}

/// The walk's start right after head `height`: its signature, origin and columns re-checked, and the frontier at
/// its tree size loaded from the stored nodes and checked against its signed root.
///
/// The key chain (docs/FORMAT.md §20) at the anchor: the head must verify under one of `keys`, or else under the
/// key the database records for it (`log_meta`) — the same trust a start from genesis gives head 0's recorded key
/// (the background full pass, and every auditor, follow the chain from the first key). When the head ends with a
/// key rotation record (proven in its tree), the walk continues under the key that record announces.
fn anchor_start(
    conn: &Connection,
    keys: &[PublicKey],
    height: u64,
    origin: Option<&str>,
) -> Result<(Start, StoredHead), VerifyError> {
    let head = store::head(conn, height)?.ok_or(Failure::HeadMissing { height })?;
    let cp = Checkpoint::parse(&head.checkpoint)
        .map_err(|e| Failure::HeadMalformed { height, reason: e.to_string() })?;
    if cp.height != height
        || cp.tree_size != head.tree_size
        || cp.root != head.root
        || cp.time_ms != head.sealed_at_ms
    {
        return Err(Failure::HeadMalformed {
            height,
            reason: "the stored columns disagree with the signed checkpoint text".into(),
        }
        .into());
    }
    if let Some(expected) = origin {
        if cp.origin != expected {
            return Err(
                Failure::OriginMismatch { height, found: cp.origin, expected: expected.to_string() }.into()
            );
        }
    }
    let recorded = store::public_key_pem(conn, &head.key_id)?.and_then(|pem| PublicKey::from_pem(&pem).ok());
    let signed_by = |k: &PublicKey| k.verify(head.checkpoint.as_bytes(), &head.signature);
    let Some(key) = keys.iter().find(|k| signed_by(k)).cloned().or(recorded.filter(signed_by)) else {
        let key_id = keys.first().map_or_else(|| head.key_id.clone(), |k| k.key_id.clone());
        return Err(Failure::BadSignature { height, key_id }.into());
    };
    let frontier = store::tree::load_frontier(conn, head.tree_size).ok().filter(|f| f.root() == cp.root);
    let Some(frontier) = frontier else {
        return Err(Failure::NodeStoreMismatch { height, tree_size: head.tree_size }.into());
    };
    let last = last_event(conn, &head)?;
    let (mut chain_key, mut retired, mut announcement) = (key.clone(), Vec::new(), None);
    let stopped_at = match last {
        Some((seq, anchorlog_core::verify::OwnRecord::Stop, _)) => Some(seq),
        Some((seq, anchorlog_core::verify::OwnRecord::KeyRotation, body)) => {
            let invalid = |reason: String| Failure::KeyRotationInvalid { seq, reason };
            let record = anchorlog_core::verify::keys::RotationRecord::parse(&body).map_err(invalid)?;
            if record.old_key_id != key.key_id {
                return Err(invalid(format!(
                    "it names {} as the old key, but head height {height}, which ends with it, is signed by {}",
                    record.old_key_id, key.key_id
                ))
                .into());
            }
            chain_key = record.new_key().map_err(invalid)?;
            retired.push(anchorlog_core::verify::keys::Retired { key, seq, height });
            announcement = Some((seq, record.new_counter_index));
            None
        }
        _ => None,
    };
    let start = Start {
        frontier,
        next_height: height + 1,
        prev_hash: Checkpoint::text_hash(&head.checkpoint),
        prev_time_ms: cp.time_ms,
        prev_counter: cp.counter,
        stopped_at,
        key: Some(chain_key),
        retired,
        announcement,
    };
    Ok((start, head))
}

/// The anchor head's last event when it is one of the appliance's own records (checked, and proven in the head's
/// tree from the stored nodes): its seq, kind and body. A clean stop record: a walk from genesis would then accept
/// only a start record next, and a resumed one must too — rows appended to a stopped log right after the head that
/// sealed its stop record. A key rotation record: the next head is the new key's.
fn last_event(
    conn: &Connection,
    head: &StoredHead,
) -> Result<Option<(u64, anchorlog_core::verify::OwnRecord, Vec<u8>)>, VerifyError> {
    let Some(seq) = head.tree_size.checked_sub(1) else { return Ok(None) };
    let ev = store::event(conn, seq)?.ok_or(Failure::EventMissing { seq })?;
    let (facts, _) = anchorlog_core::verify::check_event(&ev)?;
    let proof = store::tree::inclusion_proof(conn, seq, head.tree_size).ok();
    let proven = proof.is_some_and(|p| {
        anchorlog_core::merkle::verify_inclusion(seq, head.tree_size, &ev.leaf_hash, &p, &head.root).is_ok()
    });
    if !proven {
        return Err(Failure::NodeStoreMismatch { height: head.height, tree_size: head.tree_size }.into());
    }
    let own = anchorlog_core::verify::OwnRecord::of(facts.appliance, ev.body.as_deref());
    Ok(own.map(|own| (seq, own, ev.body.unwrap_or_default())))
}

/// Checks that head `record.height` is the head the record names (tree size and root): a record is the
/// appliance's word that it verified exactly that head.
pub fn check_record_names_head(record: &SelfVerifyRecord, head: &StoredHead) -> Result<(), Failure> {
    if head.height != record.height || head.tree_size != record.tree_size || head.root != record.root {
        return Err(Failure::SelfVerifyRecordMismatch { height: record.height, record_seq: record.seq });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventRow;
    use anchorlog_core::entry::{payload_digest, AuthMethod};
    use anchorlog_core::merkle::{self, Frontier};
    use p256::ecdsa::{DerSignature, SigningKey};
    use p256::pkcs8::EncodePublicKey as _;
    use signature::Signer as _;

    /// A log built with the store functions and a software key (what the appliance writes, minus the HSM).
    struct Log {
        conn: Connection,
        frontier: Frontier,
        signing: SigningKey,
        key: PublicKey,
        height: u64,
        prev: [u8; 32],
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    const ORIGIN: &str = "anchorlog.test/resume";

    impl Log {
        fn new() -> Log {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.db");
            let conn = store::open_writer(&path, ORIGIN).unwrap();
            let signing = SigningKey::from_slice(&[3; 32]).unwrap();
            let der = signing.verifying_key().to_public_key_der().unwrap();
            let key = PublicKey::from_spki_der(der.as_bytes()).unwrap();
            Log { conn, frontier: Frontier::new(), signing, key, height: 0, prev: [0; 32], _dir: dir, path }
        }

        fn event(&mut self, own: bool, body: &[u8], source_id: Option<&str>) -> u64 {
            let seq = self.frontier.size();
            let salt = [9u8; 32];
            let (producer, source, format, auth) = if own {
                ("anchorlog", "anchorlog", "anchorlog", AuthMethod::Internal)
            } else {
                ("producer-1", "events", "json", AuthMethod::Mtls)
            };
            let entry = Entry {
                seq,
                received_at_ns: 1_700_000_000_000_000_000 + seq,
                producer: producer.into(),
                source: source.into(),
                auth,
                format: format.into(),
                source_id: source_id.map(str::to_string),
                payload_sha256: payload_digest(&salt, body),
            }
            .to_canonical_json();
            let leaf = merkle::leaf_hash(&entry);
            store::insert_event(
                &self.conn,
                &EventRow {
                    seq,
                    received_at_ns: 1,
                    producer,
                    source,
                    format,
                    source_id,
                    entry: &entry,
                    leaf_hash: &leaf,
                    salt: &salt,
                    body,
                },
            )
            .unwrap();
            let mut done = Vec::new();
            self.frontier.push_with(leaf, |s, l, h| {
                if l > 1 {
                    done.push((s, l, *h))
                }
            });
            for (s, l, h) in done {
                store::tree::insert_node(&self.conn, s, l, &h).unwrap();
            }
            seq
        }

        fn events(&mut self, n: u64) {
            for _ in 0..n {
                let body = format!("{{\"type\":\"LOGIN\",\"n\":{}}}", self.frontier.size());
                self.event(false, body.as_bytes(), None);
            }
        }

        fn head(&mut self) -> StoredHead {
            let cp = Checkpoint {
                origin: ORIGIN.into(),
                tree_size: self.frontier.size(),
                root: self.frontier.root(),
                height: self.height,
                prev: self.prev,
                time_ms: 1_700_000_000_000 + self.height as i64,
                counter: None,
            };
            let text = cp.to_text().unwrap();
            let sig: DerSignature = self.signing.sign(text.as_bytes());
            let h = StoredHead {
                height: cp.height,
                tree_size: cp.tree_size,
                root: cp.root,
                checkpoint: text.clone(),
                signature: sig.as_bytes().to_vec(),
                key_id: self.key.key_id.clone(),
                sealed_at_ms: cp.time_ms,
            };
            store::insert_head(&self.conn, &h).unwrap();
            self.height += 1;
            self.prev = Checkpoint::text_hash(&text);
            h
        }

        /// A self-verification record naming `h`, as the appliance writes it.
        fn record(&mut self, h: &StoredHead, scope: &str) -> u64 {
            let body = serde_json::json!({"type": types::SELF_VERIFY, "scope": scope, "height": h.height,
                "tree_size": h.tree_size, "root": B64.encode(h.root), "from_height": null});
            let id = types::self_verify_source_id(h.height, scope);
            self.event(true, body.to_string().as_bytes(), Some(&id))
        }

        fn tamper_body(&self, seq: u64) {
            self.conn.execute_batch("DROP TRIGGER IF EXISTS events_no_update").unwrap();
            self.conn
                .execute("UPDATE events SET body = X'7b7d' WHERE seq = ?1", rusqlite::params![seq as i64])
                .unwrap();
        }

        fn reader(&self) -> Connection {
            store::open_reader(&self.path).unwrap()
        }
    }

    fn opts() -> WalkOptions<'static> {
        WalkOptions { origin: Some(ORIGIN), ..WalkOptions::default() }
    }

    #[test]
    fn a_resumed_walk_continues_the_chain_and_checks_only_what_follows_the_point() {
        let mut log = Log::new();
        log.head();
        log.events(40);
        let h1 = log.head();
        let rec = log.record(&h1, types::SELF_VERIFY_FULL);
        log.events(30);
        let h2 = log.head();
        log.events(5); // unsealed tail
        let c = log.reader();
        let point = match last_point(&c, h2.tree_size).unwrap() {
            Point::Found(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!((point.seq, point.height, point.tree_size, point.root), (rec, 1, 40, h1.root));
        check_record_names_head(&point, &h1).unwrap();
        let r = verify_database_after(&c, std::slice::from_ref(&log.key), Some(1), opts()).unwrap();
        assert_eq!(r.anchor.as_ref().map(|h| h.height), Some(1));
        assert_eq!((r.report.events, r.report.heads, r.report.unsealed_events), (36, 1, 5));
        assert_eq!(r.last_head.as_ref().map(|h| h.height), Some(2));
        assert_eq!(r.total_heads(), 3);
        assert_eq!(r.report.frontier_at_last_head.root(), h2.root);
        // Resuming at the last head: nothing but the tail is walked, and the anchor is the last head.
        let r = verify_database_after(&c, std::slice::from_ref(&log.key), Some(2), opts()).unwrap();
        assert_eq!((r.report.events, r.report.heads, r.last_head.unwrap().height), (5, 0, 2));
        // A full walk agrees with the resumed one on where the chain stands.
        let full = verify_database_after(&c, std::slice::from_ref(&log.key), None, opts()).unwrap();
        assert_eq!((full.report.events, full.report.heads, full.total_heads()), (76, 3, 3));

        // Tamper behind the point: only the full walk sees it, naming the exact seq.
        log.tamper_body(7);
        assert!(verify_database_after(&c, std::slice::from_ref(&log.key), Some(1), opts()).is_ok());
        let err = verify_database_after(&c, std::slice::from_ref(&log.key), None, opts()).unwrap_err();
        assert!(matches!(err, VerifyError::Invalid(Failure::PayloadMismatch { seq: 7 })), "{err}");
        // Tamper after the point: the resumed walk names it.
        log.tamper_body(50);
        let err = verify_database_after(&c, std::slice::from_ref(&log.key), Some(1), opts()).unwrap_err();
        assert!(matches!(err, VerifyError::Invalid(Failure::PayloadMismatch { seq: 50 })), "{err}");
    }

    #[test]
    fn a_record_in_the_unsealed_tail_or_one_the_index_misnames_is_never_trusted() {
        let mut log = Log::new();
        log.head();
        log.events(10);
        let h1 = log.head();
        // Appended after the last head (as root could): not under any signature, so not a point.
        let forged = log.record(&h1, types::SELF_VERIFY_FULL);
        let c = log.reader();
        assert_eq!(last_point(&c, h1.tree_size).unwrap(), Point::None);
        assert!(forged >= h1.tree_size);
        log.head();
        let sealed = log.frontier.size();
        assert!(matches!(last_point(&c, sealed).unwrap(), Point::Found(p) if p.seq == forged));
        // The unsigned source_id column made to point at a producer's event: not used.
        let other = log.event(false, b"{\"type\":\"LOGIN\"}", None);
        log.head();
        log.conn
            .execute(
                "UPDATE events SET producer = 'anchorlog', source = 'anchorlog', source_id = ?1 WHERE seq = ?2",
                rusqlite::params![types::self_verify_source_id(99, "full"), other as i64],
            )
            .unwrap_err(); // the trigger refuses it …
        log.conn.execute_batch("DROP TRIGGER events_no_update").unwrap();
        log.conn
            .execute(
                "UPDATE events SET producer = 'anchorlog', source = 'anchorlog', source_id = ?1 WHERE seq = ?2",
                rusqlite::params![types::self_verify_source_id(99, "full"), other as i64],
            )
            .unwrap(); // … until it is dropped
        assert_eq!(last_point(&c, log.frontier.size()).unwrap(), Point::Unusable { seq: other });
        // The record's own row altered: a failure naming it.
        log.tamper_body(forged);
        log.conn
            .execute("UPDATE events SET source_id = NULL WHERE seq = ?1", rusqlite::params![other as i64])
            .unwrap();
        let err = last_point(&c, log.frontier.size()).unwrap_err();
        assert!(
            matches!(err, VerifyError::Invalid(Failure::PayloadMismatch { seq }) if seq == forged),
            "{err}"
        );
    }

    #[test]
    fn rows_after_a_stop_record_that_ends_the_anchor_head_fail_the_resumed_walk_as_a_full_one() {
        let mut log = Log::new();
        log.head();
        log.events(4);
        let stop =
            log.event(true, br#"{"type":"anchorlog.stop","start_seq":0,"reason":"shutdown signal"}"#, None);
        let h1 = log.head();
        // Appended while stopped, and sealed with the HSM (root can use it): a start resumed after head 1 must
        // still refuse it.
        log.events(2);
        log.head();
        let c = log.reader();
        let expected = Failure::WrittenWhileStopped { seq: stop + 1, stop_seq: stop };
        for after in [None, Some(h1.height)] {
            let err = verify_database_after(&c, std::slice::from_ref(&log.key), after, opts()).unwrap_err();
            assert!(matches!(&err, VerifyError::Invalid(f) if *f == expected), "{after:?}: {err}");
        }
    }

    #[test]
    fn the_anchor_head_and_the_nodes_at_its_size_are_checked_before_the_walk_resumes() {
        let mut log = Log::new();
        log.head();
        log.events(12);
        let h1 = log.head();
        log.events(3);
        log.head();
        let c = log.reader();
        // A record naming a root the head does not have.
        let rec = SelfVerifyRecord {
            seq: 13,
            scope: "full".into(),
            from_height: None,
            height: 1,
            tree_size: 12,
            root: [1; 32],
        };
        assert_eq!(
            check_record_names_head(&rec, &h1),
            Err(Failure::SelfVerifyRecordMismatch { height: 1, record_seq: 13 })
        );
        // A stored node at the anchor's frontier altered: the frontier does not give the signed root.
        log.conn
            .execute_batch(
                "DROP TRIGGER nodes_no_update; UPDATE nodes SET hash = zeroblob(32) WHERE level = 3",
            )
            .unwrap();
        let err = verify_database_after(&c, std::slice::from_ref(&log.key), Some(1), opts()).unwrap_err();
        assert!(
            matches!(err, VerifyError::Invalid(Failure::NodeStoreMismatch { height: 1, tree_size: 12 })),
            "{err}"
        );
        // Another key: the anchor's signature fails first.
        let other = SigningKey::from_slice(&[4; 32]).unwrap();
        let der = other.verifying_key().to_public_key_der().unwrap();
        let other = PublicKey::from_spki_der(der.as_bytes()).unwrap();
        let err = verify_database_after(&c, std::slice::from_ref(&other), Some(1), opts()).unwrap_err();
        assert!(matches!(err, VerifyError::Invalid(Failure::BadSignature { height: 1, .. })), "{err}");
    }
}
