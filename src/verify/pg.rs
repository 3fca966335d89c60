//! `anchorlog verify --db postgres://…`: the core's walk fed from a PostgreSQL log (src/store/pg, docs/HA.md), the
//! same walk as SQLite's ([`super::verify_database_with`]), then the stored tree's right edge.
//!
//! A verifier reads only: it needs a role with SELECT on the log tables (the application role will do, or a
//! read-only role of its own: docs/HA.md), never the writer lease. Events are read page by page, each page one
//! short statement, so a long verification of a live log holds no snapshot open for minutes.

use super::timestamps::TokenWalk;
use super::{check_batch, DB_PAGE};
use crate::store::pg::{self, read, tree, PgConnect, PgError};
use crate::store::StoredTimestamp;
use anchorlog_core::key::PublicKey;
use anchorlog_core::stored::StoredEvent;
use anchorlog_core::verify::timestamps::{TimestampPolicy, TimestampReport};
use anchorlog_core::verify::{
    walk, Decoded, EventSource, Failure, Report, Start, VerifyError, WalkOptions, BATCH,
};
use tokio_postgres::Client;

/// The core's error carries a database error boxed, shown as its own message.
impl From<PgError> for VerifyError {
    fn from(e: PgError) -> VerifyError {
        VerifyError::Source(Box::new(e))
    }
}

/// Whether `--db` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Verifies the whole PostgreSQL log at `connect` against `keys` (docs/FORMAT.md §20: the key the log started with,
/// or with [`WalkOptions::keyring`] the nodes' keys); every head must carry `opts.origin`, or when `None` the origin
/// the log was created with. With `tsa`, every stored RFC 3161 token is checked too, as on SQLite
/// ([`super::timestamps`]). Runs its own single-threaded runtime: call it from synchronous code.
pub fn verify_postgres(
    connect: &PgConnect,
    keys: &[PublicKey],
    opts: WalkOptions<'_>,
    tsa: Option<&TimestampPolicy>,
) -> Result<(Report, Option<TimestampReport>), VerifyError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VerifyError::Source(Box::new(e)))?;
    let client = rt.block_on(pg::connect(connect))?;
    let (stored_origin, heads, key_pems) = rt.block_on(async {
        Ok::<_, PgError>((
            read::stored_origin(&client).await?,
            read::heads_from(&client, 0).await?,
            public_key_pems(&client).await?,
        ))
    })?;
    let origin = opts.origin.or(stored_origin.as_deref());
    // The keys the log holds name the signer of a head that fails; they are never trusted.
    let mut known_keys = opts.known_keys.clone();
    known_keys.extend(key_pems.iter().filter_map(|pem| PublicKey::from_pem(pem).ok()));
    let opts = WalkOptions { origin, known_keys, ..opts };
    let report =
        walk(Start::genesis(), heads.clone(), &mut PgEvents { rt: &rt, client: &client }, keys, &opts)?;
    // The stored nodes serve every proof: their right edge at the last verified head must be the verified one.
    let size = report.frontier_at_last_head.size();
    let stored = rt.block_on(tree::load_frontier(&client, size)).ok();
    if stored.as_ref() != Some(&report.frontier_at_last_head) {
        let height = report.heads.saturating_sub(1);
        return Err(Failure::NodeStoreMismatch { height, tree_size: size }.into());
    }
    let stamps = match tsa {
        Some(policy) => Some(verify_pg_timestamps(&rt, &client, &heads, policy, &report)?),
        None => None,
    };
    Ok((report, stamps))
}

/// Tokens read per statement.
const TOKEN_PAGE: i64 = 1024;

/// The stored tokens, page by page in height order, through the same [`TokenWalk`] as SQLite's.
fn verify_pg_timestamps(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    heads: &[anchorlog_core::stored::StoredHead],
    policy: &TimestampPolicy,
    report: &Report,
) -> Result<TimestampReport, VerifyError> {
    let mut walk = TokenWalk::new(heads, policy, &report.timestamping_outages);
    let mut from: i64 = 0;
    loop {
        let rows = rt
            .block_on(client.query(
                "SELECT height, response, gen_time_ms, gen_time, tsa_url, stored_at_ms FROM timestamps \
                 WHERE height >= $1 ORDER BY height LIMIT $2",
                &[&from, &TOKEN_PAGE],
            ))
            .map_err(PgError::from)?;
        for r in &rows {
            let height: i64 = r.try_get(0).map_err(PgError::from)?;
            let token = StoredTimestamp {
                height: u64::try_from(height).unwrap_or(u64::MAX),
                response: r.try_get(1).map_err(PgError::from)?,
                gen_time_ms: r.try_get(2).map_err(PgError::from)?,
                gen_time: r.try_get(3).map_err(PgError::from)?,
                tsa_url: r.try_get(4).map_err(PgError::from)?,
                stored_at_ms: r.try_get(5).map_err(PgError::from)?,
            };
            walk.token(&token)?;
            from = height.saturating_add(1);
        }
        if (rows.len() as i64) < TOKEN_PAGE {
            break;
        }
    }
    Ok(walk.finish()?)
}

/// Every public key the log recorded (`log_meta` `key:<id>`), PEM.
async fn public_key_pems(c: &Client) -> Result<Vec<String>, PgError> {
    let rows = c.query("SELECT value FROM log_meta WHERE key LIKE 'key:%' ORDER BY key", &[]).await?;
    rows.iter().map(|r| r.try_get(0).map_err(PgError::from)).collect()
}

/// The erasure record an erased event's erasures row names.
async fn erasure_seq(c: &Client, seq: u64) -> Result<Option<u64>, PgError> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let row = c.query_opt("SELECT erasure_seq FROM erasures WHERE seq = $1", &[&seq]).await?;
    let value: Option<i64> = row.map(|r| r.try_get(0)).transpose()?;
    Ok(value.and_then(|v| u64::try_from(v).ok()))
}

/// The events of a PostgreSQL log, read page by page ([`DB_PAGE`]) on a runtime the caller owns.
struct PgEvents<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a Client,
}

impl EventSource for PgEvents<'_> {
    fn visit(&mut self, from: u64, f: &mut dyn FnMut(Vec<Decoded>) -> bool) -> Result<(), VerifyError> {
        let mut batch: Vec<(StoredEvent, Option<u64>)> = Vec::with_capacity(BATCH);
        let mut next = from;
        loop {
            let to = next.saturating_add(DB_PAGE);
            let page = self.rt.block_on(read::events(self.client, next, to))?;
            // Pages are ranges of seqs: a gap inside one reaches the walk, which names the missing seq; an empty
            // range is the end (events past it, if any, leave heads beyond the log, which the walk names too).
            if page.is_empty() {
                break;
            }
            next = to;
            for ev in page {
                // An erased payload names its record in the erasures row (one lookup per erased event).
                let erasure = if ev.body.is_none() && ev.salt.is_none() {
                    self.rt.block_on(erasure_seq(self.client, ev.seq))?
                } else {
                    None
                };
                batch.push((ev, erasure));
                if batch.len() == BATCH
                    && !f(check_batch(&std::mem::replace(&mut batch, Vec::with_capacity(BATCH))))
                {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            f(check_batch(&batch));
        }
        Ok(())
    }
}
