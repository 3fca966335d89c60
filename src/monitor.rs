//! `anchorlog audit`: a monitor an auditor runs periodically (cron, systemd timer) against a live appliance.
//!
//! Each run fetches the latest head, checks its signature with the auditor's copy of the signer key, and —
//! when a state file from an earlier run exists — checks that the log only grew: the head it saw before is
//! still the head at that height, and an RFC 9162 consistency proof links the old tree to the new one. The
//! new head is then stored. Because the state lives with the auditor, a rollback of the appliance's database
//! to an older copy, a replayed old head, or a rewritten history (fork) is caught even though every head the
//! appliance serves is validly signed.
//!
//! Exit codes (distinct so that alerting can tell them apart): 0 consistent, 1 could not run (network, files),
//! 3 the latest head is malformed or its signature does not verify, 4 rollback (the appliance shows an older
//! or smaller head than one already seen), 5 fork (a different head at a height already seen, or another
//! origin), 6 the consistency proof does not verify, 7 stale (with `--max-age`: the latest head is older than
//! that — the log stopped advancing; a frozen appliance serves a valid, consistent, old head forever), 8 below the
//! witness quorum (with `--witness`: none of the newest heads carries the quorum of listed witnesses'
//! cosignatures — the witnesses refuse this log's heads, or none is reachable).
//!
//! The signing key may change only through the log's key rotation records (docs/FORMAT.md §20): the state keeps
//! the key of the last head accepted (the `--signer` key on the first run), and when the latest head is signed by
//! another key the monitor fetches the rotation records with their proofs (`GET /v1/key-rotations`) and follows them
//! from that key; an unannounced key is a bad head (exit 3), a rotation before the head already accepted a fork.
//!
//! With `--witness`, the head the monitor accepts (and stores) is the newest one that carries the quorum: the very
//! latest head may be a second away from its cosignatures, so up to [`QUORUM_LOOKBACK`] heights back are tried.

use crate::client::Connection;
use anchorlog_core::head::Checkpoint;
use anchorlog_core::key::PublicKey;
use anchorlog_core::merkle::{self, Hash};
use anchorlog_core::verify::erasure::AnchorHead;
use anchorlog_core::verify::keys::{
    follow_ring_rotation_proofs, follow_rotation_proofs, FollowedKeys, HeadKeys, KeyRotationProof,
    RotationReport,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Exit code: the latest head is malformed or badly signed.
pub const EXIT_BAD_HEAD: u8 = 3;
/// Exit code: rollback.
pub const EXIT_ROLLBACK: u8 = 4;
/// Exit code: fork.
pub const EXIT_FORK: u8 = 5;
/// Exit code: bad consistency proof.
pub const EXIT_BAD_PROOF: u8 = 6;
/// Exit code: the latest head is older than `--max-age`.
pub const EXIT_STALE: u8 = 7;
/// Exit code: no recent head carries the witness quorum.
pub const EXIT_BELOW_QUORUM: u8 = 8;
/// Heights below the latest the monitor tries for a head with the witness quorum.
pub const QUORUM_LOOKBACK: u64 = 16;

/// What the monitor remembers between runs: the last head it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// The log's origin.
    pub origin: String,
    /// Height of the last accepted head.
    pub height: u64,
    /// Its tree size.
    pub tree_size: u64,
    /// Its root, base64.
    pub root: String,
    /// Its exact checkpoint text.
    pub checkpoint: String,
    /// The hex key id of the key that signed it (absent in states written before key rotations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// That key's PEM public key: the next run trusts it, not `--signer`, so it follows the log's rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// The outcome of a successful run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// No earlier state: the head is now the trusted starting point.
    FirstSeen {
        /// Its height.
        height: u64,
        /// Its tree size.
        tree_size: u64,
        /// The key rotations followed from `--signer` to its key.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        key_rotations: Vec<RotationReport>,
    },
    /// The same head as last time.
    Unchanged {
        /// Its height.
        height: u64,
    },
    /// The log grew consistently.
    Advanced {
        /// Previous height.
        from_height: u64,
        /// New height.
        to_height: u64,
        /// Previous tree size.
        from_size: u64,
        /// New tree size.
        to_size: u64,
        /// The key rotations since the previous head.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        key_rotations: Vec<RotationReport>,
    },
}

/// Why a run failed; [`AuditError::exit_code`] gives the documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The appliance could not be reached or answered unexpectedly; or a local file problem.
    #[error("{0}")]
    Io(String),
    /// The latest head is malformed or its signature does not verify.
    #[error("head height {height}: {reason}")]
    BadHead {
        /// The head.
        height: u64,
        /// Why.
        reason: String,
    },
    /// The appliance shows an older or smaller log than already seen.
    #[error("rollback: the appliance's latest head is height {height} (tree size {tree_size}) but height {seen_height} (tree size {seen_size}) was seen before")]
    Rollback {
        /// Latest height served.
        height: u64,
        /// Its size.
        tree_size: u64,
        /// Height seen before.
        seen_height: u64,
        /// Size seen before.
        seen_size: u64,
    },
    /// History was rewritten.
    #[error("fork at height {height}: {reason}")]
    Fork {
        /// The height where the two histories differ.
        height: u64,
        /// What differs.
        reason: String,
    },
    /// The consistency proof does not verify.
    #[error("the consistency proof from tree size {from} to {to} does not verify: {reason}")]
    BadProof {
        /// Old size.
        from: u64,
        /// New size.
        to: u64,
        /// Why.
        reason: String,
    },
    /// None of the newest heads carries the witness quorum.
    #[error("below the witness quorum: {reason}")]
    BelowQuorum {
        /// The newest head's failure (which witnesses cosigned it).
        reason: String,
    },
    /// The latest head is older than allowed: the log stopped advancing (an idle log still seals a heartbeat
    /// head every minute).
    #[error("stale: the latest head (height {height}) was sealed {age_s} s ago, more than the allowed {max_s} s; the appliance stopped sealing or serves a frozen copy")]
    Stale {
        /// Its height.
        height: u64,
        /// Its age, seconds.
        age_s: i64,
        /// The allowed age, seconds.
        max_s: u64,
    },
}

impl AuditError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            AuditError::Io(_) => 1,
            AuditError::BadHead { .. } => EXIT_BAD_HEAD,
            AuditError::Rollback { .. } => EXIT_ROLLBACK,
            AuditError::Fork { .. } => EXIT_FORK,
            AuditError::BadProof { .. } => EXIT_BAD_PROOF,
            AuditError::Stale { .. } => EXIT_STALE,
            AuditError::BelowQuorum { .. } => EXIT_BELOW_QUORUM,
        }
    }
}

/// A head as served by `GET /v1/heads/...`: the checkpoint text and its base64 signature.
#[derive(Debug, Clone)]
pub struct ServedHead {
    /// The exact checkpoint text.
    pub checkpoint: String,
    /// Base64 DER signature.
    pub signature: String,
    /// The signed note with the witnesses' cosignature lines, if served.
    pub note: Option<String>,
}

/// Checks the cosignatures of an (already signature-checked) head against `policy`: the note's text must be
/// the checkpoint, every listed witness's line must verify, and the head must carry the quorum.
pub fn check_cosignatures(
    head: &ServedHead,
    cp: &Checkpoint,
    policy: &anchorlog_core::verify::witnesses::WitnessPolicy,
) -> Result<anchorlog_core::verify::witnesses::WitnessReport, AuditError> {
    use anchorlog_core::verify::{witnesses::WitnessCheck, Failure};
    let bad = |reason: String| AuditError::BadHead { height: cp.height, reason };
    let mut check = WitnessCheck::new(policy);
    if let Some(note) = &head.note {
        let note =
            anchorlog_core::note::Note::parse(note.as_bytes()).map_err(|e| bad(format!("note: {e}")))?;
        if note.text() != head.checkpoint {
            return Err(bad("the served note carries another text than the checkpoint".into()));
        }
        check
            .head(cp.height, &head.checkpoint, cp.time_ms, note.signatures())
            .map_err(|f| bad(f.to_string()))?;
    }
    check.finish(cp.height).map_err(|f| match f {
        f @ Failure::BelowWitnessQuorum { .. } => AuditError::BelowQuorum { reason: f.to_string() },
        other => bad(other.to_string()),
    })
}

/// Checks the latest head's signature and parses it.
pub fn check_head(head: &ServedHead, key: &PublicKey) -> Result<Checkpoint, AuditError> {
    let trusted = std::slice::from_ref(key);
    check_head_with(head, &HeadKeys { followed: FollowedKeys::default(), trusted, known: &[] })
}

/// Checks a head's signature under the key `keys` hold for its height and parses it.
pub fn check_head_with(head: &ServedHead, keys: &HeadKeys<'_>) -> Result<Checkpoint, AuditError> {
    let cp = parse_served(head)?;
    let sig = B64.decode(&head.signature).unwrap_or_default();
    keys.check(cp.height, &head.checkpoint, &sig).map_err(|f| AuditError::BadHead {
        height: cp.height,
        reason: f.to_string().split_once(": ").map_or(f.to_string(), |(_, r)| r.to_string()),
    })?;
    Ok(cp)
}

fn parse_served(head: &ServedHead) -> Result<Checkpoint, AuditError> {
    Checkpoint::parse(&head.checkpoint)
        .map_err(|e| AuditError::BadHead { height: 0, reason: format!("malformed checkpoint: {e}") })
}

/// Judges the latest (already signature-checked) head against the stored state. `old_now` is the checkpoint
/// text the appliance now serves at the stored height, and `proof` the consistency proof from the stored tree
/// size to the latest; both are only needed when the log advanced.
pub fn judge(
    prev: Option<&MonitorState>,
    latest: &Checkpoint,
    latest_text: &str,
    old_now: Option<&str>,
    proof: Option<&[Hash]>,
) -> Result<(MonitorState, Outcome), AuditError> {
    let state = MonitorState {
        origin: latest.origin.clone(),
        height: latest.height,
        tree_size: latest.tree_size,
        root: B64.encode(latest.root),
        checkpoint: latest_text.to_string(),
        key_id: None,
        public_key: None,
    };
    let Some(prev) = prev else {
        let first =
            Outcome::FirstSeen { height: latest.height, tree_size: latest.tree_size, key_rotations: vec![] };
        return Ok((state, first));
    };
    if latest.origin != prev.origin {
        return Err(AuditError::Fork {
            height: latest.height,
            reason: format!("origin {:?} is not the {:?} seen before", latest.origin, prev.origin),
        });
    }
    if latest.height < prev.height || latest.tree_size < prev.tree_size {
        return Err(AuditError::Rollback {
            height: latest.height,
            tree_size: latest.tree_size,
            seen_height: prev.height,
            seen_size: prev.tree_size,
        });
    }
    if latest.height == prev.height {
        if latest_text != prev.checkpoint {
            return Err(AuditError::Fork {
                height: latest.height,
                reason: "the appliance serves a different head than the one seen before at this height"
                    .into(),
            });
        }
        return Ok((state, Outcome::Unchanged { height: latest.height }));
    }
    if old_now != Some(prev.checkpoint.as_str()) {
        return Err(AuditError::Fork {
            height: prev.height,
            reason: "the appliance now serves a different head at this height than the one seen before"
                .into(),
        });
    }
    let old_root = B64
        .decode(&prev.root)
        .ok()
        .and_then(|v| <Hash>::try_from(v).ok())
        .ok_or_else(|| AuditError::Io("state file: root is not a base64 SHA-256 hash".into()))?;
    let proof = proof.unwrap_or(&[]);
    merkle::verify_consistency(prev.tree_size, latest.tree_size, &old_root, &latest.root, proof).map_err(
        |e| AuditError::BadProof { from: prev.tree_size, to: latest.tree_size, reason: e.to_string() },
    )?;
    Ok((
        state,
        Outcome::Advanced {
            from_height: prev.height,
            to_height: latest.height,
            from_size: prev.tree_size,
            to_size: latest.tree_size,
            key_rotations: vec![],
        },
    ))
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://host:port`.
    pub url: String,
    /// CA of the appliance's server certificate.
    pub ca: PathBuf,
    /// Auditor client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Bound on the whole run (connect, every request, every answer): a hung appliance or network must fail the
    /// run, or a timer-driven monitor would wait forever and never raise its alarm.
    pub timeout: std::time::Duration,
}

fn io(what: impl std::fmt::Display) -> AuditError {
    AuditError::Io(what.to_string())
}

fn resolve(url: &str) -> Result<(SocketAddr, String), AuditError> {
    let rest = url.strip_prefix("https://").ok_or_else(|| io(format!("{url}: only https:// URLs")))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| io(format!("{url}: bad port")))?),
        None => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| io(format!("{url}: {e}")))?.collect();
    // The appliance listens on IPv4 by default; prefer it when a name resolves to both.
    let addr = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied();
    Ok((addr.ok_or_else(|| io(format!("{url}: no address")))?, host.to_string()))
}

async fn get_json(conn: &mut Connection, path: &str) -> Result<(u16, serde_json::Value), AuditError> {
    let r = conn.get(path).await.map_err(|e| io(format!("GET {path}: {e}")))?;
    Ok((r.status, r.json()))
}

fn served(v: &serde_json::Value) -> Result<ServedHead, AuditError> {
    match (v["checkpoint"].as_str(), v["signature"].as_str()) {
        (Some(c), Some(s)) => Ok(ServedHead {
            checkpoint: c.to_string(),
            signature: s.to_string(),
            note: v["note"].as_str().map(str::to_string),
        }),
        _ => Err(io(format!("unexpected head answer: {v}"))),
    }
}

/// Reads the state file (absent = first run).
pub fn load_state(path: &Path) -> Result<Option<MonitorState>, AuditError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| io(format!("{}: {e}", path.display())))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("{}: {e}", path.display()))),
    }
}

/// Writes the state file atomically (temp file, fsync, rename).
pub fn save_state(path: &Path, state: &MonitorState) -> Result<(), AuditError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(state).map_err(io)?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(format!("{}: {e}", tmp.display())))?;
    f.write_all(&text).and_then(|()| f.sync_all()).map_err(|e| io(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| io(format!("{}: {e}", path.display())))
}

/// What a run requires beyond consistency.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The log's origin (`--origin`, else the one the signer's certificate names): the latest head, and so
    /// every head seen, must carry it; another origin is a fork (exit 5).
    pub origin: Option<String>,
    /// The latest head must be younger than this (`--max-age`); an older one fails with exit 7 after the
    /// state was updated (the log is consistent, only not advancing).
    pub max_age: Option<std::time::Duration>,
    /// The witnesses whose cosignatures the accepted head must carry (`--witness`, `--witness-quorum`).
    pub witnesses: Option<anchorlog_core::verify::witnesses::WitnessPolicy>,
    /// The signing keys of the log's nodes (`--keyring`, docs/FORMAT.md §20 "Keyrings"): the latest head may be
    /// signed by any of them, or by a key one of their rotations brought in, and not by a key a rotation retired
    /// before it. Empty: the chain from the state's key (the first run: `--signer`).
    pub keyring: Vec<PublicKey>,
}

/// Parses a duration such as `300`, `90s`, `5m`, `2h` or `1d` (one number, one optional unit).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional unit s, m, h or d, e.g. 5m"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m, h or d, e.g. 5m")),
    };
    n.checked_mul(factor).map(std::time::Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
}

/// The key that signed `head` (checked already: this only names it).
fn signer_of(head: &ServedHead, keys: &HeadKeys<'_>) -> Result<PublicKey, AuditError> {
    let cp = parse_served(head)?;
    let sig = B64.decode(&head.signature).unwrap_or_default();
    keys.check(cp.height, &head.checkpoint, &sig).map_err(|f| AuditError::BadHead {
        height: cp.height,
        reason: f.to_string().split_once(": ").map_or(f.to_string(), |(_, r)| r.to_string()),
    })
}

/// The key rotations that lead from `trusted` (the state's key, or `--signer`) to the key of the latest head: none
/// when that key signed it, else those `GET /v1/key-rotations` serves for its tree size, followed with their proofs
/// against it. With a keyring (`ring`), always fetched and followed per key: a key a rotation retired must not
/// have signed the latest head, even though it is in the ring.
async fn follow_keys(
    conn: &mut Connection,
    latest: &ServedHead,
    trusted: &[PublicKey],
    ring: bool,
) -> Result<FollowedKeys, AuditError> {
    let cp = parse_served(latest)?;
    let sig = B64.decode(&latest.signature).unwrap_or_default();
    if !ring && trusted.iter().any(|k| k.verify(latest.checkpoint.as_bytes(), &sig)) {
        return Ok(FollowedKeys::default());
    }
    let path = format!("/v1/key-rotations?tree_size={}", cp.tree_size);
    let (status, v) = get_json(conn, &path).await?;
    if status != 200 {
        return Err(io(format!("GET {path}: status {status}: {v}")));
    }
    let proofs: Vec<KeyRotationProof> = serde_json::from_value(v["rotations"].clone())
        .map_err(|e| io(format!("GET {path}: unexpected answer: {e}")))?;
    let reference =
        AnchorHead { height: cp.height, tree_size: cp.tree_size, root: cp.root, origin: &cp.origin };
    let followed = if ring {
        follow_ring_rotation_proofs(trusted, &proofs, &reference)
    } else {
        follow_rotation_proofs(trusted, &proofs, &reference)
    };
    followed.map_err(|f| AuditError::BadHead {
        height: cp.height,
        reason: format!("following the key rotations: {f}"),
    })
}

/// The newest head, from `latest` down at most [`QUORUM_LOOKBACK`] heights, that carries the witness quorum.
async fn newest_with_quorum(
    conn: &mut Connection,
    latest_served: ServedHead,
    latest: Checkpoint,
    keys: &HeadKeys<'_>,
    policy: &anchorlog_core::verify::witnesses::WitnessPolicy,
) -> Result<(ServedHead, Checkpoint), AuditError> {
    let first_miss = match check_cosignatures(&latest_served, &latest, policy) {
        Ok(_) => return Ok((latest_served, latest)),
        Err(AuditError::BelowQuorum { reason }) => reason,
        Err(e) => return Err(e),
    };
    for height in (latest.height.saturating_sub(QUORUM_LOOKBACK)..latest.height).rev() {
        let (status, v) = get_json(conn, &format!("/v1/heads/{height}")).await?;
        if status != 200 {
            return Err(io(format!("GET /v1/heads/{height}: status {status}: {v}")));
        }
        let head = served(&v)?;
        let cp = check_head_with(&head, keys)?;
        match check_cosignatures(&head, &cp, policy) {
            Ok(_) => return Ok((head, cp)),
            Err(AuditError::BelowQuorum { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(AuditError::BelowQuorum {
        reason: format!("{first_miss}; neither does any of the {QUORUM_LOOKBACK} heads before it"),
    })
}

/// One monitor run: fetch, check, judge against `state_file`, and store the new state on success. The run
/// fails with [`AuditError::Io`] when it does not finish within `target.timeout`; the state file is then left
/// as it was (it is written last, without an await point in between).
pub async fn run(
    target: &Target,
    signer: &PublicKey,
    state_file: &Path,
    expect: &Expect,
) -> Result<Outcome, AuditError> {
    tokio::time::timeout(target.timeout, run_unbounded(target, signer, state_file, expect)).await.unwrap_or_else(
        |_| {
            Err(io(format!(
                "no complete answer from {} within {} s: the appliance or the network hangs (state file unchanged)",
                target.url,
                target.timeout.as_secs_f64()
            )))
        },
    )
}

async fn run_unbounded(
    target: &Target,
    signer: &PublicKey,
    state_file: &Path,
    expect: &Expect,
) -> Result<Outcome, AuditError> {
    let prev = load_state(state_file)?;
    // The key of the head accepted last (it follows the log's rotations), else the auditor's --signer.
    let start = match prev.as_ref().and_then(|p| p.public_key.as_deref()) {
        Some(pem) => PublicKey::from_pem(pem).map_err(|e| io(format!("state file: public_key: {e}")))?,
        None => signer.clone(),
    };
    let ring = !expect.keyring.is_empty();
    // A keyring is the auditor's, given on every run: each run follows every rotation from it again.
    let trusted = if ring { expect.keyring.clone() } else { vec![start] };
    let tls = crate::tls::client_config(&target.ca, &target.cert, &target.key).map_err(io)?;
    let (addr, host) = resolve(&target.url)?;
    let mut conn = Connection::connect(addr, &host, tls).await.map_err(io)?;
    let (status, v) = get_json(&mut conn, "/v1/heads/latest").await?;
    if status != 200 {
        return Err(io(format!("GET /v1/heads/latest: status {status}: {v}")));
    }
    let mut latest_served = served(&v)?;
    let followed = follow_keys(&mut conn, &latest_served, &trusted, ring).await?;
    let keys = HeadKeys { followed, trusted: &trusted, known: &[] };
    let mut latest = check_head_with(&latest_served, &keys)?;
    if let Some(policy) = &expect.witnesses {
        (latest_served, latest) = newest_with_quorum(&mut conn, latest_served, latest, &keys, policy).await?;
    }
    // Chain: any rotation followed from the state's key lies after its height. Keyring: the rotations of every
    // node's key are followed; only one that retired the state's key concerns it.
    let retired_state_key = |p: &MonitorState, r: &RotationReport| {
        r.height < p.height && (!ring || p.key_id.as_deref() == Some(r.old_key_id.as_str()))
    };
    if let Some((p, r)) = prev
        .as_ref()
        .and_then(|p| keys.followed.rotations.iter().find(|r| retired_state_key(p, r)).map(|r| (p, r)))
    {
        // The state's head, seen before at a greater height, was signed by the key this rotation retires earlier.
        return Err(AuditError::Fork {
            height: r.height,
            reason: format!(
                "the appliance now shows key {} retired after head height {}, but height {} was seen before signed by it",
                r.old_key_id, r.height, p.height
            ),
        });
    }
    if let Some(origin) = expect.origin.as_deref().filter(|o| *o != latest.origin) {
        return Err(AuditError::Fork {
            height: latest.height,
            reason: format!("origin {:?} is not the expected {origin:?}", latest.origin),
        });
    }
    let (mut old_now, mut proof) = (None, None);
    if let Some(p) = prev.as_ref().filter(|p| latest.height > p.height && latest.tree_size >= p.tree_size) {
        let (status, v) = get_json(&mut conn, &format!("/v1/heads/{}", p.height)).await?;
        if status == 200 {
            old_now = Some(served(&v)?.checkpoint);
        }
        let path = format!("/v1/proofs/consistency?from={}&to={}", p.tree_size, latest.tree_size);
        let (status, v) = get_json(&mut conn, &path).await?;
        if status != 200 {
            return Err(io(format!("GET {path}: status {status}: {v}")));
        }
        let hashes = v["proof"].as_array().map(|a| {
            a.iter()
                .map(|h| h.as_str().and_then(|s| B64.decode(s).ok()).and_then(|b| <Hash>::try_from(b).ok()))
                .collect::<Option<Vec<Hash>>>()
        });
        proof = Some(hashes.flatten().ok_or_else(|| AuditError::BadProof {
            from: p.tree_size,
            to: latest.tree_size,
            reason: "the proof is not a list of base64 SHA-256 hashes".into(),
        })?);
    }
    let (mut state, mut outcome) =
        judge(prev.as_ref(), &latest, &latest_served.checkpoint, old_now.as_deref(), proof.as_deref())?;
    let key = signer_of(&latest_served, &keys)?;
    state.key_id = Some(key.key_id.clone());
    state.public_key = Some(crate::bundle::export::public_key_pem(&key).map_err(io)?);
    // New since the state's head (a keyring's run follows them all from the start again).
    let since = prev.as_ref().filter(|_| ring).map_or(0, |p| p.height);
    let followed: Vec<RotationReport> = keys
        .followed
        .rotations
        .iter()
        .filter(|r| r.height < latest.height && r.height >= since)
        .cloned()
        .collect();
    match &mut outcome {
        Outcome::FirstSeen { key_rotations, .. } | Outcome::Advanced { key_rotations, .. } => {
            *key_rotations = followed
        }
        Outcome::Unchanged { .. } => {}
    }
    save_state(state_file, &state)?;
    if let Some(max) = expect.max_age {
        let age_ms = crate::store::now_ms().saturating_sub(latest.time_ms);
        if age_ms > i64::try_from(max.as_millis()).unwrap_or(i64::MAX) {
            return Err(AuditError::Stale {
                height: latest.height,
                age_s: age_ms / 1000,
                max_s: max.as_secs(),
            });
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{DerSignature, SigningKey};
    use p256::pkcs8::EncodePublicKey as _;
    use signature::Signer as _;

    struct Log {
        key: SigningKey,
        leaves: Vec<Hash>,
        heads: Vec<(Checkpoint, String)>,
    }

    impl Log {
        fn new(seed: u8) -> Log {
            Log { key: SigningKey::from_slice(&[seed; 32]).unwrap(), leaves: Vec::new(), heads: Vec::new() }
        }
        fn public(&self) -> PublicKey {
            PublicKey::from_spki_der(self.key.verifying_key().to_public_key_der().unwrap().as_bytes())
                .unwrap()
        }
        /// Appends `n` leaves (tagged) and seals a head.
        fn seal(&mut self, n: u64, tag: u8) -> ServedHead {
            for i in 0..n {
                self.leaves.push(merkle::leaf_hash(&[tag, i as u8]));
            }
            let prev = self.heads.last().map_or([0; 32], |(_, t)| Checkpoint::text_hash(t));
            let cp = Checkpoint {
                origin: "o".into(),
                tree_size: self.leaves.len() as u64,
                root: merkle::root_of(&self.leaves),
                height: self.heads.len() as u64,
                prev,
                time_ms: 1_000 * self.heads.len() as i64,
                counter: None,
            };
            let text = cp.to_text().unwrap();
            self.heads.push((cp, text.clone()));
            self.served(self.heads.len() - 1)
        }
        fn served(&self, h: usize) -> ServedHead {
            let text = &self.heads[h].1;
            let sig: DerSignature = self.key.sign(text.as_bytes());
            ServedHead { checkpoint: text.clone(), signature: B64.encode(sig.as_bytes()), note: None }
        }
        fn proof(&self, old: u64) -> Vec<Hash> {
            merkle::consistency_proof(old, &self.leaves).unwrap()
        }
    }

    #[test]
    fn durations_parse_with_units() {
        use std::time::Duration;
        for (t, s) in [("300", 300), ("2s", 2), ("5m", 300), ("2h", 7200), ("1d", 86_400)] {
            assert_eq!(parse_duration(t), Ok(Duration::from_secs(s)), "{t}");
        }
        for t in ["", "m", "5x", "-1s", "1.5m"] {
            assert!(parse_duration(t).is_err(), "{t}");
        }
    }

    #[test]
    fn first_run_then_growth_is_accepted_and_each_attack_has_its_exit_code() {
        let mut log = Log::new(1);
        let key = log.public();
        let h0 = log.seal(3, 0);
        let cp0 = check_head(&h0, &key).unwrap();
        let (s0, o) = judge(None, &cp0, &h0.checkpoint, None, None).unwrap();
        assert_eq!(o, Outcome::FirstSeen { height: 0, tree_size: 3, key_rotations: vec![] });
        let h1 = log.seal(4, 1);
        let cp1 = check_head(&h1, &key).unwrap();
        let proof = log.proof(3);
        let (s1, o) = judge(Some(&s0), &cp1, &h1.checkpoint, Some(&h0.checkpoint), Some(&proof)).unwrap();
        assert_eq!(
            o,
            Outcome::Advanced {
                from_height: 0,
                to_height: 1,
                from_size: 3,
                to_size: 7,
                key_rotations: vec![]
            }
        );
        assert_eq!(
            judge(Some(&s1), &cp1, &h1.checkpoint, None, None).unwrap().1,
            Outcome::Unchanged { height: 1 }
        );

        // Altered signature / another key: 3.
        let mut bad = h1.clone();
        bad.signature = log.served(0).signature;
        assert_eq!(check_head(&bad, &key).unwrap_err().exit_code(), EXIT_BAD_HEAD);
        assert_eq!(check_head(&h1, &Log::new(2).public()).unwrap_err().exit_code(), EXIT_BAD_HEAD);
        // A replayed old head (validly signed): rollback, 4.
        let e = judge(Some(&s1), &cp0, &h0.checkpoint, None, None).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_ROLLBACK, "{e}");
        // A bad consistency proof: 6.
        let h2 = log.seal(2, 2);
        let cp2 = check_head(&h2, &key).unwrap();
        let mut wrong = log.proof(7);
        wrong[0][0] ^= 1;
        let e = judge(Some(&s1), &cp2, &h2.checkpoint, Some(&h1.checkpoint), Some(&wrong)).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_BAD_PROOF, "{e}");
        // A fork: another history with the same key reaches a greater height; the head at the seen height differs.
        let mut other = Log::new(1);
        other.seal(3, 0);
        other.seal(4, 9);
        let f2 = other.seal(2, 9);
        let fcp = check_head(&f2, &key).unwrap();
        let e = judge(Some(&s1), &fcp, &f2.checkpoint, Some(&other.heads[1].1), Some(&other.proof(7)))
            .unwrap_err();
        assert_eq!(e.exit_code(), EXIT_FORK, "{e}");
        assert!(e.to_string().starts_with("fork at height 1:"), "{e}");
        // And a different head at the very height seen: fork too.
        let f1 = other.served(1);
        let e = judge(Some(&s1), &check_head(&f1, &key).unwrap(), &f1.checkpoint, None, None).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_FORK);
    }

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(load_state(&p).unwrap(), None);
        let s = MonitorState {
            origin: "o".into(),
            height: 3,
            tree_size: 9,
            root: "AA==".into(),
            checkpoint: "c".into(),
            key_id: None,
            public_key: None,
        };
        save_state(&p, &s).unwrap();
        assert_eq!(load_state(&p).unwrap(), Some(s));
        std::fs::write(&p, "{").unwrap();
        assert_eq!(load_state(&p).unwrap_err().exit_code(), 1);
    }
}
