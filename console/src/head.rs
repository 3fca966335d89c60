//! A signed head as the appliance serves it (`GET /v1/heads/latest`), verified against the auditor's keys.
//!
//! Only the signed bytes count: the checkpoint text and its signature, the RFC 3161 response and the
//! cosignature lines of the note. The JSON's other fields (`height`, `tree_size`, `sealed_at` …) are the
//! server's words; the report gives the values read from the verified checkpoint instead, and a JSON field
//! that disagrees with them fails the check.

use crate::options::Trust;
use anchorlog_core::head::{format_time_ms, Checkpoint};
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
    /// The tree size the server claims (must equal the checkpoint's: the page shows it).
    pub tree_size: u64,
    /// The seal time the server claims, RFC 3339 (must equal the checkpoint's: the page shows it).
    pub sealed_at: String,
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
    // What the page shows beside the verdict must be what was signed, not the server's other words.
    if cp.height != height {
        return Err(malformed(format!(
            "the server says height {height}, the signed checkpoint {}",
            cp.height
        )));
    }
    if cp.tree_size != head.tree_size {
        return Err(malformed(format!(
            "the server says tree size {}, the signed checkpoint {}",
            head.tree_size, cp.tree_size
        )));
    }
    let signed_time = format_time_ms(cp.time_ms).map_err(|e| malformed(e.to_string()))?;
    if signed_time != head.sealed_at {
        return Err(malformed(format!(
            "the server says sealed at {}, the signed checkpoint {signed_time}",
            head.sealed_at
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

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{signature::Signer as _, DerSignature, SigningKey};
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};

    const TEXT: &str = "log.test/a\n3\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\nanchorlog-block 1\n\
                        anchorlog-prev AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nanchorlog-time 2026-12-07T10:00:00.000Z\n";

    /// A served head over TEXT signed by a fixed test key, and that key's PEM.
    fn served() -> (serde_json::Value, String) {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let sig: DerSignature = key.sign(TEXT.as_bytes());
        let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let head = serde_json::json!({"height": 1, "tree_size": 3, "sealed_at": "2026-12-07T10:00:00.000Z",
            "checkpoint": TEXT, "signature": B64.encode(sig.as_bytes()), "note": null, "timestamp": null});
        (head, pem)
    }

    fn check(head: &serde_json::Value, pem: &str) -> serde_json::Value {
        crate::verify_head_json(&head.to_string(), pem, "{}")
    }

    #[test]
    fn a_served_head_verifies_and_reports_the_signed_values() {
        let (head, pem) = served();
        let v = check(&head, &pem);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!((v["report"]["height"].as_u64(), v["report"]["tree_size"].as_u64()), (Some(1), Some(3)));
        assert_eq!(v["report"]["origin"], "log.test/a");
    }

    #[test]
    fn server_words_that_differ_from_the_signed_checkpoint_fail_at_the_head() {
        let (head, pem) = served();
        let cases = [
            (
                "tree_size",
                serde_json::json!(4),
                "head height 1: the server says tree size 4, the signed checkpoint 3",
            ),
            (
                "sealed_at",
                serde_json::json!("2026-12-08T10:00:00.000Z"),
                "head height 1: the server says sealed at 2026-12-08T10:00:00.000Z, the signed checkpoint \
                 2026-12-07T10:00:00.000Z",
            ),
        ];
        for (field, value, message) in cases {
            let mut h = head.clone();
            h[field] = value;
            let v = check(&h, &pem);
            assert_eq!(v["failure"]["kind"], "height", "{v}");
            assert_eq!(v["failure"]["at"], 1, "{v}");
            assert_eq!(v["failure"]["message"], message, "{v}");
        }
    }

    #[test]
    fn a_head_under_another_key_fails_naming_the_height() {
        let (head, _) = served();
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let pem = other.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let v = check(&head, &pem);
        assert_eq!(v["failure"]["kind"], "height", "{v}");
        let message = v["failure"]["message"].as_str().unwrap();
        assert!(message.starts_with("head height 1: signature does not verify"), "{v}");
    }
}
