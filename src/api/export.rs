//! `GET /v1/export?from_height=&to_height=`: the export bundle, streamed as it is written (constant memory on
//! the appliance, however large the range).

use super::read::{parse_number, sqlite_blocking, sqlite_only};
use super::{authorize, ApiError, AppState};
use crate::config::Role;
use crate::tls::Peer;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::collections::HashMap;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Bytes per streamed chunk.
const CHUNK: usize = 256 * 1024;
/// How long the error that aborts a failed export waits for room in the response stream.
const ERROR_DELIVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A `Write` that hands chunks to the response body; fails (and so stops the export, ending its read snapshot)
/// once the client is gone or the snapshot has been held until `deadline`: a client that reads slowly or not at
/// all must not hold back WAL checkpoints for ever (docs/RELIABILITY.md, "A long reader").
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    runtime: tokio::runtime::Handle,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let send = tokio::time::timeout_at(self.deadline, self.tx.send(Ok(Bytes::copy_from_slice(buf))));
        match self.runtime.block_on(send) {
            Ok(Ok(())) => Ok(buf.len()),
            Ok(Err(_)) => Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the export held its database snapshot for {} s (storage.max_export_snapshot_s) and was \
                     aborted; export a smaller height range or read faster",
                    self.limit.as_secs()
                ),
            )),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The response body: chunks from the exporting thread; an error aborts the response (the client sees a
/// truncated transfer, never a complete-looking bundle).
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(hyper::body::Frame::data)))
    }
}

fn param(q: &HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
    let v = q.get(name).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", format!("query parameter {name} is required"))
    })?;
    parse_number(v, name)
}

pub(super) async fn export(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let principal = authorize(peer.as_ref().map(|p| &p.0), Role::Auditor)?;
    let reads = sqlite_only(&state, "GET /v1/export")?;
    let from = param(&q, "from_height")?;
    let to = param(&q, "to_height")?;
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("from_height ({from}) must not exceed to_height ({to})"),
        ));
    }
    // Refuse a range that does not exist with a JSON error, before the first byte of the stream.
    let (last, first_seq, end_seq, unsealed) = sqlite_blocking(&reads, move |c| {
        let last_head = crate::store::last_head(c)?;
        let last = last_head.as_ref().map(|h| h.height);
        // The events the bundle carries: those after the head before `from`, up to the head at `to`.
        let first = match from.checked_sub(1) {
            Some(h) => crate::store::head(c, h)?.map_or(0, |h| h.tree_size),
            None => 0,
        };
        let end = crate::store::head(c, to)?.map_or(first, |h| h.tree_size);
        // An erasure in the range whose record no head covers yet cannot be proven in the bundle.
        let sealed = last_head.map_or(0, |h| h.tree_size);
        let unsealed = crate::store::erasure::first_unsealed_erasure(c, first, end, sealed)?;
        Ok((last, first, end, unsealed))
    })
    .await?;
    if last.is_none_or(|l| to > l) {
        return Err(ApiError::not_found(format!("no head at height {to} (latest: {last:?})")));
    }
    if let Some((seq, erasure_seq)) = unsealed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_sealed",
            format!(
                "the payload of seq {seq} was just erased and its erasure record (seq {erasure_seq}) is not covered \
                 by a signed head yet; retry after the next seal (about a second)"
            ),
        ));
    }
    // The bundle carries event bodies: the access is recorded before the first byte is sent.
    let params = [("from_height", from.to_string()), ("to_height", to.to_string())];
    let count = Some(end_seq.saturating_sub(first_seq));
    super::audit_access::log_access(&state, &principal, "GET /v1/export", &params, count).await?;
    let (tx, rx) = mpsc::channel(8);
    let key = state.public_key.clone();
    let limit = state.max_export_snapshot;
    let runtime = tokio::runtime::Handle::current();
    let deadline = tokio::time::Instant::now() + limit;
    tokio::task::spawn_blocking(move || {
        let (err_tx, err_runtime) = (tx.clone(), runtime.clone());
        let writer = std::io::BufWriter::with_capacity(CHUNK, ChannelWriter { tx, runtime, deadline, limit });
        let result =
            reads.with(|c| Ok(crate::bundle::export(c, from, to, Some(&key), writer, &mut |_, _| {})));
        let failed = match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            tracing::error!(error = %e, from, to, "export failed mid-stream");
            // The snapshot is released by now; a client that never reads again does not keep this thread.
            let send = tokio::time::timeout(ERROR_DELIVERY, err_tx.send(Err(std::io::Error::other(e))));
            let _ = err_runtime.block_on(send);
        }
    });
    let name = format!("attachment; filename=\"anchorlog-{from}-{to}.tar\"");
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar".to_string()), (header::CONTENT_DISPOSITION, name)],
        Body::new(ChannelBody(rx)),
    )
        .into_response())
}
