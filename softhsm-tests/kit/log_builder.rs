//! Builds signed logs directly with the store functions (no HSM, no server), for the audit tests and the
//! benchmarks: events with real canonical entries, the node table, and heads signed by a software P-256 key.
//!
//! Part of the test kit (`kit::log_builder`), and the one part of it the `tests/` targets include, alone, with
//! `#[path = "../softhsm-tests/kit/log_builder.rs"]`: it needs nothing but the crate, so those targets run
//! without SoftHSM. It therefore names no other kit module.
// Included alone by targets that use only part of it (the kit's own allow does not reach them).
#![allow(dead_code)]

use anchorlog::store::{self, EventRow};
use anchorlog_core::entry::{payload_digest, AuthMethod, Entry};
use anchorlog_core::head::{Checkpoint, HeadCounter};
use anchorlog_core::key::PublicKey;
use anchorlog_core::merkle::{self, Frontier};
use anchorlog_core::stored::StoredHead;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;
use signature::Signer as _;
use std::path::{Path, PathBuf};

pub const ORIGIN: &str = "anchorlog.test/audit";

/// A software head signer.
pub struct TestKey {
    pub signing: SigningKey,
    pub public: PublicKey,
}

impl TestKey {
    pub fn new(seed: u8) -> TestKey {
        let signing = SigningKey::from_slice(&[seed.max(1); 32]).unwrap();
        let der = signing.verifying_key().to_public_key_der().unwrap();
        let public = PublicKey::from_spki_der(der.as_bytes()).unwrap();
        TestKey { signing, public }
    }
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let sig: DerSignature = self.signing.sign(msg);
        sig.as_bytes().to_vec()
    }
    pub fn pem(&self) -> String {
        anchorlog::bundle::export::public_key_pem(&self.public).unwrap()
    }
    pub fn write_pem(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.pem()).unwrap();
        p
    }
}

/// Incremental builder over a writer connection.
pub struct LogBuilder<'k> {
    pub conn: rusqlite::Connection,
    pub frontier: Frontier,
    pub key: &'k TestKey,
    pub next_height: u64,
    pub prev: [u8; 32],
    pub time_ms: i64,
    /// The TPM counter the next head carries (its value is incremented first), if any.
    pub counter: Option<HeadCounter>,
}

impl<'k> LogBuilder<'k> {
    pub fn create(path: &Path, key: &'k TestKey) -> LogBuilder<'k> {
        let conn = store::open_writer(path, ORIGIN).unwrap();
        store::record_public_key(&conn, &key.public.key_id, &key.pem()).unwrap();
        LogBuilder {
            conn,
            frontier: Frontier::new(),
            key,
            next_height: 0,
            prev: [0; 32],
            // Heads are sealed "now" (a minute ago, one second apart): tests stamp them with a real TSA, and the
            // verifier fails a token issued long after its head's seal time (backdating).
            time_ms: store::now_ms() - 60_000,
            counter: None,
        }
    }

    /// Appends `n` events in one transaction.
    pub fn events(&mut self, n: u64) {
        let tx = self.conn.unchecked_transaction().unwrap();
        for _ in 0..n {
            let seq = self.frontier.size();
            let body = format!("{{\"type\":\"LOGIN\",\"user\":\"u{seq}\",\"n\":{seq}}}").into_bytes();
            let salt = [(seq % 251) as u8; 32];
            let entry = Entry {
                seq,
                received_at_ns: 1_700_000_000_000_000_000 + seq,
                producer: "producer-1".into(),
                source: "events".into(),
                auth: AuthMethod::Mtls,
                format: "json".into(),
                source_id: None,
                payload_sha256: payload_digest(&salt, &body),
            }
            .to_canonical_json();
            let leaf = merkle::leaf_hash(&entry);
            store::insert_event(
                &tx,
                &EventRow {
                    seq,
                    received_at_ns: 1,
                    producer: "producer-1",
                    source: "events",
                    format: "json",
                    source_id: None,
                    entry: &entry,
                    leaf_hash: &leaf,
                    salt: &salt,
                    body: &body,
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
                store::tree::insert_node(&tx, s, l, &h).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    /// Appends one of the appliance's own records (producer, source, format `anchorlog`, auth `internal`) with
    /// `body`, received at `received_at_ns`; returns its seq.
    pub fn appliance_event_at(&mut self, body: &[u8], received_at_ns: u64) -> u64 {
        self.appliance_record(body, received_at_ns, None)
    }

    /// [`Self::appliance_event_at`] with a `source_id` (a self-verification record's, docs/FORMAT.md §18).
    pub fn appliance_record(&mut self, body: &[u8], received_at_ns: u64, source_id: Option<&str>) -> u64 {
        let seq = self.frontier.size();
        let salt = [7u8; 32];
        let entry = Entry {
            seq,
            received_at_ns,
            producer: "anchorlog".into(),
            source: "anchorlog".into(),
            auth: AuthMethod::Internal,
            format: "anchorlog".into(),
            source_id: source_id.map(str::to_string),
            payload_sha256: payload_digest(&salt, body),
        }
        .to_canonical_json();
        let leaf = merkle::leaf_hash(&entry);
        store::insert_event(
            &self.conn,
            &EventRow {
                seq,
                received_at_ns,
                producer: "anchorlog",
                source: "anchorlog",
                format: "anchorlog",
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

    /// [`Self::appliance_event_at`], received now.
    pub fn appliance_event(&mut self, body: &[u8]) -> u64 {
        self.appliance_event_at(body, store::now_ns())
    }

    /// Erases the payload of `seq` as the appliance does: in one transaction, its erasure record (the newest
    /// event), the erasures row naming it, and the cleared body and salt. Returns the record's seq.
    pub fn erase(&mut self, seq: u64, by: &str, reason: &str) -> u64 {
        self.conn.execute_batch("BEGIN").unwrap();
        let body = serde_json::json!({"type": "anchorlog.erasure", "erased_seq": seq, "erased_by": by,
                                      "reason": reason});
        let record = self.appliance_event(body.to_string().as_bytes());
        store::erasure::erase_payload(
            &self.conn,
            &anchorlog_core::stored::ErasureRecord {
                seq,
                erasure_seq: record,
                erased_by: by.into(),
                reason: reason.into(),
                erased_at_ms: store::now_ms(),
            },
        )
        .unwrap();
        self.conn.execute_batch("COMMIT").unwrap();
        record
    }

    /// Seals a head over everything appended so far.
    pub fn head(&mut self) -> StoredHead {
        let key = self.key;
        self.head_signed_with(&key.public.key_id, |m| key.sign(m))
    }

    /// [`Self::head`] signed by another signer (an HSM key) with key id `key_id`.
    pub fn head_signed_with(&mut self, key_id: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> StoredHead {
        self.time_ms += 1000;
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            tree_size: self.frontier.size(),
            root: self.frontier.root(),
            height: self.next_height,
            prev: self.prev,
            time_ms: self.time_ms,
            counter: self.counter.as_mut().map(|c| {
                c.value += 1;
                *c
            }),
        };
        let text = cp.to_text().unwrap();
        let h = StoredHead {
            height: cp.height,
            tree_size: cp.tree_size,
            root: cp.root,
            checkpoint: text.clone(),
            signature: sign(text.as_bytes()),
            key_id: key_id.to_string(),
            sealed_at_ms: cp.time_ms,
        };
        store::insert_head(&self.conn, &h).unwrap();
        self.next_height += 1;
        self.prev = Checkpoint::text_hash(&text);
        h
    }
}

impl<'k> LogBuilder<'k> {
    /// Rotates to `new` as the appliance does: appends the key rotation record (announcing `counter_index` for the
    /// new key's heads), indexes it, seals the old key's last head over it, and signs every later head with `new`.
    /// Returns the record's seq and that head.
    pub fn rotate(
        &mut self,
        new: &'k TestKey,
        reason: &str,
        counter_index: Option<u32>,
    ) -> (u64, StoredHead) {
        let body = anchorlog::ledger::internal::key_rotation_body(
            &self.key.public.key_id,
            &new.public.key_id,
            &new.pem(),
            reason,
            counter_index,
        );
        let seq = self.appliance_event(body.to_string().as_bytes());
        store::record_rotation(&self.conn, seq, &new.public.key_id).unwrap();
        store::record_public_key(&self.conn, &new.public.key_id, &new.pem()).unwrap();
        let head = self.head();
        self.key = new;
        (seq, head)
    }
}

/// A log of `blocks` blocks of `per_block` events each, with a head 0 of size 0 first (as the appliance
/// does): heads 0..=blocks.
pub fn build_log(path: &Path, key: &TestKey, blocks: u64, per_block: u64) {
    let mut b = LogBuilder::create(path, key);
    b.head();
    for _ in 0..blocks {
        b.events(per_block);
        b.head();
    }
}

/// A copy of `db` with the append-only triggers dropped (the insider's first step) and `sql` applied.
pub fn tampered_db(db: &Path, name: &str, sql: &str) -> PathBuf {
    let out = db.with_file_name(format!("{name}.db"));
    std::fs::copy(db, &out).unwrap();
    let c = rusqlite::Connection::open(&out).unwrap();
    c.execute_batch(
        "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete; DROP TRIGGER heads_no_update;
         DROP TRIGGER heads_no_delete; DROP TRIGGER nodes_no_update; DROP TRIGGER events_dense_seq;",
    )
    .unwrap();
    c.execute_batch(sql).unwrap();
    out
}

/// SQL that replaces head `height`'s signature with `key`'s over the same text (the insider has the HSM).
pub fn resign_sql(db: &Path, height: u64, key: &TestKey) -> String {
    let c = store::open_reader(db).unwrap();
    let h = store::head(&c, height).unwrap().unwrap();
    format!(
        "UPDATE heads SET signature = x'{}', key_id = '{}' WHERE height = {height}",
        hex::encode(key.sign(h.checkpoint.as_bytes())),
        key.public.key_id
    )
}

/// The test kit's TSA without its HTTP shim (none is needed here): the core's `TestTsa`, made by
/// `softhsm-tests/tsa/make-tsa.sh` and answering with `openssl ts -reply`.
pub struct OpensslTsa {
    tsa: anchorlog_core::tsa::testutil::TestTsa,
}

impl OpensslTsa {
    pub fn new() -> OpensslTsa {
        OpensslTsa { tsa: anchorlog_core::tsa::testutil::TestTsa::new(&[]) }
    }

    pub fn ca(&self) -> PathBuf {
        self.tsa.path().join("ca.pem")
    }

    pub fn policy(&self, require: bool) -> anchorlog_core::verify::timestamps::TimestampPolicy {
        anchorlog_core::verify::timestamps::TimestampPolicy {
            require,
            ..anchorlog_core::verify::timestamps::TimestampPolicy::new(
                anchorlog_core::tsa::TrustAnchors::from_pem(&self.tsa.ca_pem()).unwrap(),
            )
        }
    }

    /// A request over SHA-256(`text`) as the appliance asks (certReq, a nonce), then `openssl ts -reply`: the DER
    /// TimeStampResp.
    pub fn stamp(&self, text: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        let request =
            anchorlog_core::tsa::build_request_with_nonce(sha2::Sha256::digest(text).into(), rand::random())
                .unwrap();
        self.tsa.reply(&request.der)
    }

    /// Stamps the stored heads `heights` and stores their tokens as the timestamper does.
    pub fn stamp_heads(&self, db: &Path, heights: impl IntoIterator<Item = u64>) {
        let conn = rusqlite::Connection::open(db).unwrap();
        let policy = self.policy(false);
        for height in heights {
            let head = store::head(&conn, height).unwrap().unwrap();
            let response = self.stamp(head.checkpoint.as_bytes());
            let v = anchorlog_core::verify::timestamps::check_token(
                &head.checkpoint,
                head.sealed_at_ms,
                &response,
                &policy.anchors,
                policy.max_skew,
            )
            .unwrap();
            let ms = v.gen_time.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            store::insert_timestamp(
                &conn,
                &store::StoredTimestamp {
                    height,
                    response,
                    gen_time_ms: ms,
                    gen_time: v.gen_time_rfc3339,
                    tsa_url: "http://127.0.0.1:1/tsa".into(),
                    stored_at_ms: ms,
                },
            )
            .unwrap();
        }
    }
}
