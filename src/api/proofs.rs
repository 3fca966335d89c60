//! RFC 9162 proofs for auditors, served from the stored nodes in `O(log n)` reads.
//!
//! Tree sizes are limited to the latest signed head's tree size: nothing unsigned is ever proven, and a proof
//! to any size up to it is well defined because every node below a signed size is final. Clients should use
//! sizes of signed heads (the response carries the root at each size; compare it with the signed head).

use super::read::{parse_number, read_failed};
use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::store::reads::{ConsistencyAnswer, InclusionAnswer};
use crate::tls::Peer;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn required(q: &HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
    let v = q.get(name).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", format!("query parameter {name} is required"))
    })?;
    parse_number(v, name)
}

/// The latest signed tree size, or the documented 422 when `size` exceeds it.
fn check_signed(latest: Option<u64>, size: u64, name: &str) -> Result<(), ApiError> {
    match latest {
        Some(signed) if size <= signed => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tree_size_not_signed",
            format!(
                "{name} {size} is beyond the latest signed head; ask for a size no larger than its tree size"
            ),
        )
        .with_detail(json!({name: size, "latest_signed_tree_size": latest}))),
    }
}

fn b64_all(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

/// Latest signed tree size (None before the first head).
async fn latest_signed(state: &AppState) -> Result<Option<u64>, ApiError> {
    state.reads.latest_signed_size().await.map_err(read_failed)
}

pub(super) async fn inclusion(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let seq = required(&q, "seq")?;
    let size = required(&q, "tree_size")?;
    let latest = latest_signed(&state).await?;
    check_signed(latest, size, "tree_size")?;
    if seq >= size {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "seq_out_of_range",
            format!("seq {seq} is not in the tree of size {size}"),
        )
        .with_detail(json!({"seq": seq, "tree_size": size})));
    }
    let InclusionAnswer { leaf, proof, root } =
        state.reads.inclusion(seq, size).await.map_err(read_failed)?;
    Ok(Json(json!({
        "seq": seq,
        "tree_size": size,
        "leaf_hash": B64.encode(leaf),
        "root": B64.encode(root),
        "proof": b64_all(&proof),
    })))
}

pub(super) async fn consistency(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let from = required(&q, "from")?;
    let to = required(&q, "to")?;
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("from ({from}) must not exceed to ({to}): a consistency proof goes from an older tree"),
        ));
    }
    let latest = latest_signed(&state).await?;
    check_signed(latest, to, "to")?;
    let ConsistencyAnswer { proof, from_root, to_root } =
        state.reads.consistency(from, to).await.map_err(read_failed)?;
    Ok(Json(json!({
        "from": from,
        "to": to,
        "from_root": B64.encode(from_root),
        "to_root": B64.encode(to_root),
        "proof": b64_all(&proof),
    })))
}

/// `GET /v1/key-rotations?tree_size=S`: the log's key rotation records under heads of tree size up to `S` (a signed
/// size), each with its head, inclusion proof and consistency proof to the tree of size `S` (docs/FORMAT.md §20), so
/// a monitor that trusts an earlier key reaches the key of a head of that size.
pub(super) async fn key_rotations(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let size = required(&q, "tree_size")?;
    let latest = latest_signed(&state).await?;
    check_signed(latest, size, "tree_size")?;
    let rotations = state.reads.key_rotation_proofs(0, size, size).await.map_err(read_failed)?;
    Ok(Json(json!({ "tree_size": size, "rotations": rotations })))
}
