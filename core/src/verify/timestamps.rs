//! Offline check of the stored RFC 3161 tokens: one per head, each verified against the TSA CA certificate.
//!
//! For every head that has a token: the whole `TimeStampResp` verifies (status, CMS signature, ESSCertID,
//! critical `timeStamping` EKU, chain to the given CA at `genTime`), its imprint is SHA-256 of the exact head
//! text, `genTime` is not earlier than the seal time minus the allowed skew, and the stored `gen_time`
//! columns equal the token's. The nonce is not known offline and is not checked. Heads without a token are
//! listed (the TSA may have been down; the appliance back-fills them), and are a failure only on request.
//!
//! The same check serves the database (the appliance's `verify::timestamps::verify_timestamps`, which reads
//! SQLite, through [`ChainTimes`]), export bundles (`heads/<h>.tsr`) and receipts ([`verify_head_tokens`]), so an
//! auditor gets one verdict whatever they hold.
//!
//! Time that cannot be rewritten quietly: along the chain, genTimes never go backwards (beyond the skew), and a
//! token issued more than [`TimestampPolicy::max_delay`] after its head's seal time fails — someone who
//! rewrites the tail of a log and re-signs it through the HSM gets fresh tokens, today's, on heads that claim
//! an earlier seal time — unless the log itself records a timestamping outage around that head (the tokens
//! of an outage are back-filled late: [`OutageWindow`]). The report gives every head's delay and the largest.

use super::{Failure, OutageWindow};
use crate::tsa::{verify_response, TrustAnchors, VerifyOptions};
use sha2::{Digest, Sha256};
use std::time::{Duration, UNIX_EPOCH};

/// Most heights listed in [`TimestampReport::missing`] and [`TimestampReport::late_in_outage`]; the counts are
/// always exact.
pub const MAX_LISTED_MISSING: usize = 100;

/// Default of [`TimestampPolicy::max_delay`] (`--max-timestamp-delay`): 10 minutes, far above the
/// appliance's back-off ceiling (60 s) yet far below any rewrite worth doing.
pub const DEFAULT_MAX_TIMESTAMP_DELAY_S: u64 = 600;

/// Default allowed skew between a head's seal time and its token's genTime, seconds (the appliance's
/// `[tsa] max_skew_s` default and the offline verifier's): clocks differ, a token may be slightly earlier.
pub const DEFAULT_TIMESTAMP_MAX_SKEW_S: u64 = 300;

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
    /// The largest delay from a head's seal time to its token's genTime, ms, and that head's height.
    pub max_delay: Option<HeadDelay>,
    /// Heads whose token came later than the allowed delay, excused by a recorded timestamping outage: count.
    pub late_in_outage_count: u64,
    /// Their heights (the first [`MAX_LISTED_MISSING`]).
    pub late_in_outage: Vec<u64>,
    /// Every verified head's delay (genTime − seal time), in height order.
    pub delays: Vec<HeadDelay>,
}

/// The delay from a head's seal time to its token's genTime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HeadDelay {
    /// The head.
    pub height: u64,
    /// genTime − seal time, ms (may be slightly negative, within the skew).
    pub delay_ms: i64,
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
    /// Longest allowed delay from a head's seal time to its token's genTime outside a recorded
    /// timestamping outage (`--max-timestamp-delay`, default [`DEFAULT_MAX_TIMESTAMP_DELAY_S`]).
    pub max_delay: Duration,
}

impl TimestampPolicy {
    /// The policy with the default skew and delay: tokens must chain to `anchors`.
    pub fn new(anchors: TrustAnchors) -> TimestampPolicy {
        TimestampPolicy {
            anchors,
            max_skew: Duration::from_secs(DEFAULT_TIMESTAMP_MAX_SKEW_S),
            require: false,
            max_delay: Duration::from_secs(DEFAULT_MAX_TIMESTAMP_DELAY_S),
        }
    }
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
/// names its height. Heads without a token are listed, or fail with [`TimestampPolicy::require`]. `outages`
/// are the timestamping outages the log records (from the walk's [`super::Report`]; none for a receipt).
pub fn verify_head_tokens<'a>(
    heads: impl IntoIterator<Item = HeadToken<'a>>,
    policy: &TimestampPolicy,
    outages: &[OutageWindow],
) -> Result<TimestampReport, Failure> {
    verify_head_tokens_with(heads, policy, outages, &mut Prechecked::new())
}

/// [`check_token`]'s results for some heads, by height, computed ahead of [`verify_head_tokens_with`] on the
/// same heads and policy (the browser console does it while its workers check events): the token's own
/// check is pure, only the order and delay checks need the walk.
pub type Prechecked = std::collections::BTreeMap<u64, Result<crate::tsa::VerifiedTimestamp, String>>;

/// [`verify_head_tokens`], taking a head's token check from `prechecked` when it is there.
pub fn verify_head_tokens_with<'a>(
    heads: impl IntoIterator<Item = HeadToken<'a>>,
    policy: &TimestampPolicy,
    outages: &[OutageWindow],
    prechecked: &mut Prechecked,
) -> Result<TimestampReport, Failure> {
    let mut chain = ChainTimes::new(policy, outages);
    for h in heads {
        let Some(response) = h.response else {
            missing(&mut chain.report, h.height, policy.require)?;
            continue;
        };
        let v = match prechecked.remove(&h.height) {
            Some(done) => done,
            None => check_token(h.checkpoint, h.sealed_at_ms, response, &policy.anchors, policy.max_skew),
        }
        .map_err(|reason| Failure::BadTimestamp { height: h.height, reason })?;
        chain.verified(h.height, h.sealed_at_ms, v)?;
    }
    Ok(chain.report)
}

/// The order and delay checks along the chain of verified tokens (one source's tokens in height order).
#[derive(Debug)]
pub struct ChainTimes<'p> {
    /// What the check saw so far.
    pub report: TimestampReport,
    policy: &'p TimestampPolicy,
    outages: &'p [OutageWindow],
    /// The previous verified token: its head's height, genTime (ms) and genTime text.
    previous: Option<(u64, i64, String)>,
}

impl<'p> ChainTimes<'p> {
    /// A check under `policy`, excusing late tokens inside `outages`.
    pub fn new(policy: &'p TimestampPolicy, outages: &'p [OutageWindow]) -> ChainTimes<'p> {
        ChainTimes { report: TimestampReport::default(), policy, outages, previous: None }
    }

    /// Head `height` (sealed at `sealed_at_ms`) has the verified token `v`: it must not go back along the chain
    /// nor come later than the allowed delay outside a recorded outage.
    pub fn verified(
        &mut self,
        height: u64,
        sealed_at_ms: i64,
        v: crate::tsa::VerifiedTimestamp,
    ) -> Result<(), Failure> {
        let gen_ms = system_ms(v.gen_time).unwrap_or(i64::MAX);
        let skew_ms = i64::try_from(self.policy.max_skew.as_millis()).unwrap_or(i64::MAX);
        if let Some((previous, previous_ms, previous_text)) = &self.previous {
            if gen_ms < previous_ms.saturating_sub(skew_ms) {
                return Err(Failure::TimestampWentBack {
                    height,
                    gen_time: v.gen_time_rfc3339,
                    previous: *previous,
                    previous_gen_time: previous_text.clone(),
                });
            }
        }
        let delay_ms = gen_ms.saturating_sub(sealed_at_ms);
        let max_ms = i64::try_from(self.policy.max_delay.as_millis()).unwrap_or(i64::MAX);
        if delay_ms > max_ms {
            if !in_outage(self.outages, sealed_at_ms, gen_ms, max_ms) {
                return Err(Failure::TimestampLate {
                    height,
                    delay_s: delay_ms / 1000,
                    max_s: self.policy.max_delay.as_secs(),
                });
            }
            self.report.late_in_outage_count += 1;
            if self.report.late_in_outage.len() < MAX_LISTED_MISSING {
                self.report.late_in_outage.push(height);
            }
        }
        let delay = HeadDelay { height, delay_ms };
        if self.report.max_delay.is_none_or(|m| delay_ms > m.delay_ms) {
            self.report.max_delay = Some(delay);
        }
        self.report.delays.push(delay);
        self.report.verified += 1;
        self.report.first_gen_time.get_or_insert(v.gen_time_rfc3339.clone());
        self.report.last_gen_time = Some(v.gen_time_rfc3339.clone());
        self.previous = Some((height, gen_ms, v.gen_time_rfc3339));
        Ok(())
    }
}

/// Whether a head sealed at `sealed_ms` whose token came at `gen_ms` lies in a recorded outage: sealed after
/// the outage began (less the allowed delay: the head whose token failed first was sealed just before its
/// first failed attempt), before it ended, and stamped within the allowed delay of its end (the back-fill).
/// An outage still open at the end of the log excuses any later stamp.
fn in_outage(outages: &[OutageWindow], sealed_ms: i64, gen_ms: i64, max_ms: i64) -> bool {
    outages.iter().any(|w| {
        let began = w.since_ms.saturating_sub(max_ms) <= sealed_ms;
        match w.end_ms {
            Some(end) => began && sealed_ms <= end && gen_ms <= end.saturating_add(max_ms),
            None => began,
        }
    })
}

/// Head `height` has no token: listed in `report`, or a failure when tokens are required.
pub fn missing(report: &mut TimestampReport, height: u64, require: bool) -> Result<(), Failure> {
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

/// `t` as ms since the epoch (`None` before the epoch or beyond `i64`). Pure arithmetic on a time the token
/// carries; nothing here reads the clock.
pub fn system_ms(t: std::time::SystemTime) -> Option<i64> {
    t.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_millis()).ok())
}
