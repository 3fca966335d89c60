//! The stored forms of an event, a head and an erasure record: the rows the appliance's database holds and the
//! lines a bundle or receipt carries, as plain data. The verifier (`verify`) walks these whatever they were read
//! from; reading them (SQLite, a tar member, JSON) is the caller's.

/// A stored event row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Sequence number.
    pub seq: u64,
    /// Canonical entry bytes.
    pub entry: Vec<u8>,
    /// Stored leaf hash.
    pub leaf_hash: [u8; 32],
    /// Salt, `None` once erased.
    pub salt: Option<Vec<u8>>,
    /// Raw body, `None` once erased.
    pub body: Option<Vec<u8>>,
}

/// A stored, signed block head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHead {
    /// Block height.
    pub height: u64,
    /// Tree size the root covers.
    pub tree_size: u64,
    /// Merkle root.
    pub root: [u8; 32],
    /// The exact signed checkpoint text.
    pub checkpoint: String,
    /// DER ECDSA signature over the checkpoint text.
    pub signature: Vec<u8>,
    /// Hex SHA-256 of the signer's SubjectPublicKeyInfo.
    pub key_id: String,
    /// Seal time, ms since the epoch.
    pub sealed_at_ms: i64,
}

/// Who erased an event's payload, when, why, and which event of the appliance's own source logs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErasureRecord {
    /// The erased event.
    pub seq: u64,
    /// The appliance's own event recording the erasure (always a later seq).
    pub erasure_seq: u64,
    /// The admin principal who asked for it.
    pub erased_by: String,
    /// The reason given.
    pub reason: String,
    /// When, ms since the epoch.
    pub erased_at_ms: i64,
}
