//! The stored RFC 3161 tokens of a database, checked offline with the core's rules
//! ([`anchorlog_core::verify::timestamps`]): the same verdict a bundle's and a receipt's tokens get. One walk
//! ([`TokenWalk`]) over the heads and the stored tokens in height order, fed from SQLite here and from PostgreSQL
//! by [`super::pg`].

use crate::store::{self, StoredTimestamp};
use anchorlog_core::stored::StoredHead;
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
    let heads = store::all_heads(conn)?;
    let mut walk = TokenWalk::new(&heads, policy, outages);
    let mut failure: Option<Failure> = None;
    store::for_each_timestamp(conn, |t| match walk.token(&t) {
        Ok(()) => Ok(true),
        Err(f) => {
            failure = Some(f);
            Ok(false)
        }
    })?;
    if let Some(f) = failure {
        return Err(f.into());
    }
    Ok(walk.finish()?)
}

/// The stored tokens of a log checked in height order against its heads: each must be a valid token of its head
/// whose stored genTime columns match it, along the chain; heads between tokens are counted as missing (or fail,
/// with [`TimestampPolicy::require`]).
pub struct TokenWalk<'a> {
    policy: &'a TimestampPolicy,
    chain: ChainTimes<'a>,
    heads: std::iter::Peekable<std::slice::Iter<'a, StoredHead>>,
}

impl<'a> TokenWalk<'a> {
    /// A walk over `heads` (in height order) under `policy`, with the log's timestamping `outages`.
    pub fn new(heads: &'a [StoredHead], policy: &'a TimestampPolicy, outages: &'a [OutageWindow]) -> Self {
        TokenWalk { policy, chain: ChainTimes::new(policy, outages), heads: heads.iter().peekable() }
    }

    /// The next stored token (tokens come in height order).
    pub fn token(&mut self, t: &StoredTimestamp) -> Result<(), Failure> {
        while let Some(h) = self.heads.next_if(|h| h.height < t.height) {
            missing(&mut self.chain.report, h.height, self.policy.require)?;
        }
        let Some(head) = self.heads.next_if(|h| h.height == t.height) else {
            return Err(Failure::BadTimestamp {
                height: t.height,
                reason: "a token is stored for a head that does not exist".into(),
            });
        };
        match check_token(
            &head.checkpoint,
            head.sealed_at_ms,
            &t.response,
            &self.policy.anchors,
            self.policy.max_skew,
        ) {
            Ok(v) if v.gen_time_rfc3339 == t.gen_time && system_ms(v.gen_time) == Some(t.gen_time_ms) => {
                self.chain.verified(head.height, head.sealed_at_ms, v)
            }
            Ok(_) => Err(Failure::BadTimestamp {
                height: t.height,
                reason: "the stored gen_time columns disagree with the token's genTime".into(),
            }),
            Err(reason) => Err(Failure::BadTimestamp { height: t.height, reason }),
        }
    }

    /// After the last token: the heads after it are missing theirs.
    pub fn finish(mut self) -> Result<TimestampReport, Failure> {
        for h in self.heads.by_ref() {
            missing(&mut self.chain.report, h.height, self.policy.require)?;
        }
        Ok(self.chain.report)
    }
}
