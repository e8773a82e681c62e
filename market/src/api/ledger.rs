//! The ledger, read-only and public: entries, the signed head, a full export.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use crate::engine::Node;
use crate::error::ApiError;

/// Largest safe integer (2^53 - 1): what a number in a query may be.
const MAX_SAFE: u64 = (1 << 53) - 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntriesQuery {
    from: Option<u64>,
    limit: Option<u64>,
}

/// Ledger entries from a sequence number (at most 500 per page).
#[utoipa::path(get, path = "/v1/ledger/entries", params(("from" = Option<u64>, Query, description = "first sequence number (default 0)", minimum = 0, maximum = 9007199254740991.0), ("limit" = Option<u64>, Query, description = "page size (default 100)", minimum = 1, maximum = 500)), responses((status = 200, body = super::openapi::EntriesPage), (status = 400, description = "an unknown parameter, or one out of its bounds", body = crate::error::ErrorBody)))]
pub(crate) async fn entries(
    State(node): State<Arc<Node>>,
    query: Result<Query<EntriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<super::openapi::EntriesPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let from = q.from.unwrap_or(0);
    if from > MAX_SAFE {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`from` is at most {MAX_SAFE}"),
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` is between 1 and 500",
        ));
    }
    let mut out = Vec::new();
    for seq in from..from.saturating_add(limit) {
        match node.ledger.entry(seq).map_err(ApiError::internal)? {
            Some(e) => out.push(serde_json::to_value(&e).map_err(ApiError::internal)?),
            None => break,
        }
    }
    Ok(Json(super::openapi::EntriesPage { entries: out }))
}

/// The ledger's head (sequence and hash), signed by the operator.
#[utoipa::path(get, path = "/v1/ledger/head", responses((status = 200, body = Object)))]
pub(crate) async fn head(
    State(node): State<Arc<Node>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let signed = node
        .ledger
        .sign_head(&node.operator)
        .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::to_value(&signed).map_err(ApiError::internal)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    from: Option<u64>,
}

/// The ledger as JSON lines, from genesis (verifiable with `market-ledger verify --export`) or
/// from `?from=SEQ` (to follow it). Streamed as it is read: the node holds a few chunks of it
/// at a time, however long the ledger, and stops reading when the client goes away.
#[utoipa::path(get, path = "/v1/ledger/export", params(("from" = Option<u64>, Query, description = "first sequence number (default 0)", minimum = 0, maximum = 9007199254740991.0)), responses((status = 200, content_type = "application/x-ndjson"), (status = 400, description = "an unknown parameter, or one out of its bounds", body = crate::error::ErrorBody), (status = 429, description = "as many exports run as the node streams at once", body = crate::error::ErrorBody)))]
pub(crate) async fn export(
    State(node): State<Arc<Node>>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if q.from.is_some_and(|f| f > MAX_SAFE) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`from` is at most {MAX_SAFE}"),
        ));
    }
    // Each export holds a blocking thread while it streams: a few at a time, and a client that
    // stops reading is dropped after EXPORT_STALL, so slow readers cannot take the pool.
    let permit = node.exports.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "exports_busy",
            format!(
                "at most {} ledger exports stream at once: try again",
                node.config.max_concurrent_exports.max(1)
            ),
        )
    })?;
    let ledger = node.ledger.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let runtime_for_error = runtime.clone();
        let writer = ChannelWriter {
            tx: tx.clone(),
            runtime,
        };
        let mut out = std::io::BufWriter::with_capacity(64 << 10, writer);
        if let Err(e) = ledger.export(&mut out, q.from.unwrap_or(0)) {
            // The client sees a truncated body (the last line incomplete or missing) and the
            // connection closed with an error, never a silently short export.
            let failed = Err(std::io::Error::other(e.to_string()));
            let _ = runtime_for_error.block_on(tokio::time::timeout(EXPORT_STALL, tx.send(failed)));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    ))
}

/// How long an export waits for its client to take the next chunk.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends what is written to an HTTP body, a chunk at a time (blocking while the client reads,
/// at most [`EXPORT_STALL`] per chunk).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let chunk = Ok(bytes::Bytes::copy_from_slice(buf));
        match self
            .runtime
            .block_on(tokio::time::timeout(EXPORT_STALL, self.tx.send(chunk)))
        {
            Ok(Ok(())) => Ok(buf.len()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client gone",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client stopped reading",
            )),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
