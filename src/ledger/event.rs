//! The event the writer appends: built by a handler (ingest, syslog) or by the appliance for its own records
//! (`ledger::internal`), validated and hashed before it reaches the writer (`ledger::appender`).
//!
//! Its own module so that the writer and the builders of the appliance's records both depend on it, and not
//! on each other.

use crate::formats::NormalizedFields;
use anchorlog_core::entry::AuthMethod;
use std::sync::Arc;

/// An event ready to be appended (validated and hashed by the handler).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Receive time, ns since the epoch.
    pub received_at_ns: u64,
    /// Authenticated producer name.
    pub producer: Arc<str>,
    /// Source name.
    pub source: Arc<str>,
    /// How the producer authenticated.
    pub auth: AuthMethod,
    /// Payload format.
    pub format: &'static str,
    /// Producer-assigned event id (de-duplication key).
    pub source_id: Option<String>,
    /// Random salt.
    pub salt: [u8; 32],
    /// Raw body bytes of this event.
    pub body: Vec<u8>,
    /// SHA-256(salt || body).
    pub payload_sha256: [u8; 32],
    /// Normalized search fields, handed to the indexer once the event is committed.
    pub fields: NormalizedFields,
}
