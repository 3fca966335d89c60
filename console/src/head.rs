//! A signed head as the appliance serves it (`GET /v1/heads/latest`), verified against the auditor's keys.
//!
//! Only the signed bytes count: the checkpoint text and its signature, the RFC 3161 response and the
//! cosignature lines of the note. The JSON's other fields (`height`, `tree_size`, `sealed_at` …) are the
//! server's words; the report gives the values read from the verified checkpoint instead, and a JSON field
//! that disagrees with them fails the check.

use crate::options::Trust;
use anchorlog_core::head::Checkpoint;
use anchorlog_core::note::{Note, NoteSignature};
use anchorlog_core::verify::timestamps::{verify_head_tokens, HeadToken, TimestampReport};
use anchorlog_core::verify::witnesses::{WitnessCheck, WitnessReport};
use anchorlog_core::verify::Failure;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The fields of a served head the check reads.
#[derive(Debug, Deserialize)]
pub struct ServedHead {
    /// The height the server claims (must equal the checkpoint's).
    pub height: u64,
    /// The exact signed checkpoint text.
    pub checkpoint: String,
    /// Base64 DER ECDSA signature over `checkpoint`.
    pub signature: String,
    /// The signed note with witness cosignature lines.
    #[serde(default)]
    pub note: Option<String>,
    /// Base64 DER `TimeStampResp`, or null before the token is stored.
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl ServedHead {
    /// Parses the JSON of `GET /v1/heads/…`.
    pub fn parse(json: &str) -> Result<ServedHead, String> {
        serde_json::from_str(json)
            .map_err(|e| format!("this is not a head as /v1/heads/latest serves it: {e}"))
    }
}

/// What a verified head says, from its signed text.
#[derive(Debug, Serialize)]
pub struct HeadReport {
    /// Block height.
    pub height: u64,
    /// Leaves the root covers.
    pub tree_size: u64,
    /// The log's origin.
    pub origin: String,
    /// Seal time, ms since the epoch.
    pub sealed_at_ms: i64,
    /// The given key that verified the signature.
    pub key_id: String,
    /// The token check, with a TSA CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TimestampReport>,
    /// The cosignature check, with witness keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witnesses: Option<WitnessReport>,
}

/// Verifies `head` against `trust`; the failure names the head's height.
pub fn verify(head: &ServedHead, trust: &Trust) -> Result<HeadReport, Failure> {
    let height = head.height;
    let malformed = |reason: String| Failure::HeadMalformed { height, reason };
    let cp = Checkpoint::parse(&head.checkpoint).map_err(|e| malformed(e.to_string()))?;
    if cp.height != height {
        return Err(malformed(format!(
            "the server says height {height}, the signed checkpoint {}",
            cp.height
        )));
    }
    let signature =
        B64.decode(&head.signature).map_err(|e| malformed(format!("signature is not base64: {e}")))?;
    let Some(key) = trust.keys.iter().find(|k| k.verify(head.checkpoint.as_bytes(), &signature)) else {
        let tried = trust.keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>().join(", ");
        return Err(Failure::BadSignature { height, key_id: tried });
    };
    if let Some(expected) = &trust.origin {
        if &cp.origin != expected {
            return Err(Failure::OriginMismatch {
                height,
                found: cp.origin.clone(),
                expected: expected.clone(),
            });
        }
    }
    let timestamp = match &trust.timestamps {
        None => None,
        Some(policy) => {
            let response = head
                .timestamp
                .as_deref()
                .map(|t| B64.decode(t))
                .transpose()
                .map_err(|e| malformed(format!("timestamp is not base64: {e}")))?;
            let token = HeadToken {
                height,
                checkpoint: &head.checkpoint,
                sealed_at_ms: cp.time_ms,
                response: response.as_deref(),
            };
            Some(verify_head_tokens([token], policy, &[])?)
        }
    };
    let witnesses = match &trust.witnesses {
        None => None,
        Some(policy) => {
            let lines: Vec<NoteSignature> = match &head.note {
                Some(text) => {
                    let note = Note::parse(text.as_bytes()).map_err(|e| malformed(format!("note: {e}")))?;
                    if note.text() != head.checkpoint {
                        return Err(malformed("the note's text is not the signed checkpoint".into()));
                    }
                    note.signatures().to_vec()
                }
                None => Vec::new(),
            };
            let mut check = WitnessCheck::new(policy);
            check.head(height, &head.checkpoint, cp.time_ms, &lines)?;
            Some(check.finish(height)?)
        }
    };
    Ok(HeadReport {
        height,
        tree_size: cp.tree_size,
        origin: cp.origin,
        sealed_at_ms: cp.time_ms,
        key_id: key.key_id.clone(),
        timestamp,
        witnesses,
    })
}
