//! The ledger, read-only and public: entries, the signed head, a full export.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use crate::engine::Node;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntriesQuery {
    from: Option<u64>,
    limit: Option<u64>,
}

/// Ledger entries from a sequence number (at most 500 per page).
#[utoipa::path(get, path = "/v1/ledger/entries", params(("from" = Option<u64>, Query), ("limit" = Option<u64>, Query)), responses((status = 200, body = Object)))]
pub(crate) async fn entries(
    State(node): State<Arc<Node>>,
    query: Result<Query<EntriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let from = q.from.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let mut out = Vec::new();
    for seq in from..from.saturating_add(limit) {
        match node.ledger.entry(seq).map_err(ApiError::internal)? {
            Some(e) => out.push(serde_json::to_value(&e).map_err(ApiError::internal)?),
            None => break,
        }
    }
    Ok(Json(serde_json::json!({"entries": out})))
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

/// The whole ledger as JSON lines, verifiable with `market-ledger verify --export`.
#[utoipa::path(get, path = "/v1/ledger/export", responses((status = 200, content_type = "application/x-ndjson")))]
pub(crate) async fn export(State(node): State<Arc<Node>>) -> Result<impl IntoResponse, ApiError> {
    let ledger = node.ledger.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        ledger.export(&mut out, 0).map(|_| out)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(([("content-type", "application/x-ndjson")], bytes))
}
