//! The stored RFC 3161 tokens of a database, checked offline with the core's rules
//! ([`anchorlog_core::verify::timestamps`]): the same verdict a bundle's and a receipt's tokens get.

use crate::store;
use anchorlog_core::verify::timestamps::{
    check_token, missing, system_ms, ChainTimes, TimestampPolicy, TimestampReport,
};
use anchorlog_core::verify::{Failure, OutageWindow, VerifyError};
use rusqlite::Connection;

/// Checks every stored token under `policy`, along the chain (`outages`: the timestamping outages the
/// verified log records). With [`TimestampPolicy::require`], the first head without a token fails.
pub fn verify_timestamps(
    conn: &Connection,
    policy: &TimestampPolicy,
    outages: &[OutageWindow],
) -> Result<TimestampReport, VerifyError> {
    let (anchors, max_skew, require) = (&policy.anchors, policy.max_skew, policy.require);
    let heads = store::all_heads(conn)?;
    let mut chain = ChainTimes::new(policy, outages);
    let mut next = heads.iter().peekable();
    let mut failure: Option<Failure> = None;
    store::for_each_timestamp(conn, |t| {
        // Heads before this token's height have none.
        while let Some(h) = next.next_if(|h| h.height < t.height) {
            if let Err(f) = missing(&mut chain.report, h.height, require) {
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
                match chain.verified(head.height, head.sealed_at_ms, v) {
                    Ok(()) => Ok(true),
                    Err(f) => {
                        failure = Some(f);
                        Ok(false)
                    }
                }
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
        missing(&mut chain.report, h.height, require)?;
    }
    Ok(chain.report)
}
