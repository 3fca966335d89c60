//! Offline check of the stored RFC 3161 tokens: one per head, each verified against the TSA CA certificate.
//!
//! For every head that has a token: the whole `TimeStampResp` verifies (status, CMS signature, ESSCertID,
//! critical `timeStamping` EKU, chain to the given CA at `genTime`), its imprint is SHA-256 of the exact head
//! text, `genTime` is not earlier than the seal time minus the allowed skew, and the stored `gen_time`
//! columns equal the token's. The nonce is not known offline and is not checked. Heads without a token are
//! listed (the TSA may have been down; the appliance back-fills them), and are a failure only on request.
//!
//! The same check serves the database ([`verify_timestamps`]), export bundles (`heads/<h>.tsr`) and receipts
//! ([`verify_head_tokens`]), so an auditor gets one verdict whatever they hold.

use super::{Failure, VerifyError};
use crate::store;
use crate::tsa::{verify_response, TrustAnchors, VerifyOptions};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::time::{Duration, UNIX_EPOCH};

/// Most heights listed in [`TimestampReport::missing`]; the count is always exact.
pub const MAX_LISTED_MISSING: usize = 100;

/// What the token check saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TimestampReport {
    /// Tokens that verified.
    pub verified: u64,
    /// Heads without a token.
    pub missing_count: u64,
    /// Their heights (the first [`MAX_LISTED_MISSING`]).
    pub missing: Vec<u64>,
    /// genTime of the first and last verified token.
    pub first_gen_time: Option<String>,
    /// genTime of the last verified token.
    pub last_gen_time: Option<String>,
}

/// How to check tokens offline: the TSA CA(s), the allowed skew, and whether a head without one fails.
#[derive(Debug, Clone)]
pub struct TimestampPolicy {
    /// TSA CA certificates every token must chain to.
    pub anchors: TrustAnchors,
    /// How much earlier than the head's seal time a genTime may be.
    pub max_skew: Duration,
    /// A head without a token is a failure (`--require-timestamps`) instead of being listed.
    pub require: bool,
}

/// One signed head and the token a bundle or receipt carries for it (`None`: none).
#[derive(Debug, Clone, Copy)]
pub struct HeadToken<'a> {
    /// The head's height.
    pub height: u64,
    /// Its exact signed checkpoint text (what the token's imprint covers).
    pub checkpoint: &'a str,
    /// Its seal time (`anchorlog-time`), ms since the epoch.
    pub sealed_at_ms: i64,
    /// The DER `TimeStampResp`, if the head has one.
    pub response: Option<&'a [u8]>,
}

/// Checks the token of every head in `heads` (already verified heads, in height order); the first bad token
/// names its height. Heads without a token are listed, or fail with [`TimestampPolicy::require`].
pub fn verify_head_tokens<'a>(
    heads: impl IntoIterator<Item = HeadToken<'a>>,
    policy: &TimestampPolicy,
) -> Result<TimestampReport, Failure> {
    let mut report = TimestampReport::default();
    for h in heads {
        let Some(response) = h.response else {
            missing(&mut report, h.height, policy.require)?;
            continue;
        };
        let v = check_token(h.checkpoint, h.sealed_at_ms, response, &policy.anchors, policy.max_skew)
            .map_err(|reason| Failure::BadTimestamp { height: h.height, reason })?;
        verified(&mut report, v);
    }
    Ok(report)
}

fn verified(report: &mut TimestampReport, v: crate::tsa::VerifiedTimestamp) {
    report.verified += 1;
    report.first_gen_time.get_or_insert(v.gen_time_rfc3339.clone());
    report.last_gen_time = Some(v.gen_time_rfc3339);
}

/// Checks every stored token against `anchors`. With `require`, the first head without a token fails.
pub fn verify_timestamps(
    conn: &Connection,
    anchors: &TrustAnchors,
    max_skew: Duration,
    require: bool,
) -> Result<TimestampReport, VerifyError> {
    let heads = store::all_heads(conn)?;
    let mut report = TimestampReport::default();
    let mut next = heads.iter().peekable();
    let mut failure: Option<Failure> = None;
    store::for_each_timestamp(conn, |t| {
        // Heads before this token's height have none.
        while let Some(h) = next.next_if(|h| h.height < t.height) {
            if let Err(f) = missing(&mut report, h.height, require) {
                failure = Some(f);
                return Ok(false);
            }
        }
        let Some(head) = next.next_if(|h| h.height == t.height) else {
            failure = Some(Failure::BadTimestamp {
                height: t.height,
                reason: "a token is stored for a head that does not exist".into(),
            });
            return Ok(false);
        };
        match check_token(&head.checkpoint, head.sealed_at_ms, &t.response, anchors, max_skew) {
            Ok(v) if v.gen_time_rfc3339 == t.gen_time && system_ms(v.gen_time) == Some(t.gen_time_ms) => {
                verified(&mut report, v);
                Ok(true)
            }
            Ok(_) => {
                failure = Some(Failure::BadTimestamp {
                    height: t.height,
                    reason: "the stored gen_time columns disagree with the token's genTime".into(),
                });
                Ok(false)
            }
            Err(reason) => {
                failure = Some(Failure::BadTimestamp { height: t.height, reason });
                Ok(false)
            }
        }
    })?;
    if let Some(f) = failure {
        return Err(f.into());
    }
    for h in next {
        missing(&mut report, h.height, require)?;
    }
    Ok(report)
}

fn missing(report: &mut TimestampReport, height: u64, require: bool) -> Result<(), Failure> {
    if require {
        return Err(Failure::TimestampMissing { height });
    }
    report.missing_count += 1;
    if report.missing.len() < MAX_LISTED_MISSING {
        report.missing.push(height);
    }
    Ok(())
}

/// Verifies one head's `TimeStampResp`: the whole token (see [`crate::tsa::verify_response`]), the imprint
/// against SHA-256 of `checkpoint`, and genTime ≥ `sealed_at_ms − max_skew`. The error is the reason.
pub fn check_token(
    checkpoint: &str,
    sealed_at_ms: i64,
    response: &[u8],
    anchors: &TrustAnchors,
    max_skew: Duration,
) -> Result<crate::tsa::VerifiedTimestamp, String> {
    let not_before = UNIX_EPOCH
        .checked_add(Duration::from_millis(sealed_at_ms.max(0) as u64))
        .and_then(|t| t.checked_sub(max_skew));
    let opts = VerifyOptions {
        expected_imprint: Sha256::digest(checkpoint.as_bytes()).into(),
        expected_nonce: None,
        trust: anchors,
        policy: None,
        not_before,
    };
    verify_response(response, &opts).map_err(|e| e.to_string())
}

fn system_ms(t: std::time::SystemTime) -> Option<i64> {
    t.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_millis()).ok())
}
