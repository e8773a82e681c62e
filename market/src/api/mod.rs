//! The REST API under `/v1` (axum). Reads of public state need no signature; every request
//! that changes state, or reads a buyer's private results, is signed ([`crate::auth`]).
//! Every failure is a JSON error body with a 4xx status for client mistakes.

mod accounts;
mod blobs;
mod keys;
mod ledger;
pub mod openai;
pub mod openapi;
mod ops;
mod tasks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use market_protocol::{AccountId, Hash};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use openapi::SignatureSchemes;

use crate::auth::{unix_now, SignedRequest};
use crate::engine::Node;
use crate::error::ApiError;

/// The OpenAPI description, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "market node API",
        description = "Post verifiable training and inference tasks, follow them, fetch results, audit the ledger. Requests that change state, or read a buyer's results, carry the four x-market-* signature headers (security schemes marketAccount, marketTimestamp, marketNonce and marketSignature, all required together)."
    ),
    modifiers(&SignatureSchemes),
    paths(
        accounts::register,
        accounts::get_account,
        accounts::rotate,
        blobs::upload,
        blobs::download,
        blobs::grant,
        blobs::revoke,
        tasks::post_task,
        tasks::list_tasks,
        tasks::get_task,
        tasks::get_result,
        tasks::cancel,
        ops::workers,
        ops::verifiers,
        ledger::entries,
        ledger::head,
        ledger::export,
        ops::healthz,
        ops::metrics,
        ops::events,
        keys::create,
        keys::list,
        keys::revoke,
        openai::models,
        openai::chat_completions,
        openai::completions,
        openai::receipt
    ),
    components(schemas(
        crate::model::TaskView,
        crate::model::TaskState,
        crate::model::Attempt,
        crate::model::VerdictSummary,
        crate::model::PoolPart,
        crate::model::PoolProgress,
        crate::model::RoundSummary,
        crate::model::SlotSummary,
        crate::model::SlotRef,
        crate::model::SlotStatus,
        crate::audit_plan::AuditPlan,
        crate::model::ParticipantStats,
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        accounts::AccountView,
        accounts::RotationRequest,
        accounts::Rotated,
        blobs::BlobCreated,
        blobs::BlobGrant,
        blobs::BlobBytes,
        tasks::TaskResult,
        tasks::TaskPage,
        openapi::SignedTaskSpec,
        openapi::EntriesPage,
        openapi::Revoked,
        ops::Participant,
        keys::NewKey,
        keys::KeyView,
        keys::KeyList,
        openai::OaiErrorBody,
        openai::OaiErrorDetail,
        openai::ChatCompletionRequest,
        openai::CompletionRequest,
        openai::ModelList,
        openai::ModelView,
        openai::ReceiptView,
        openai::BatchView,
        openai::ServeAuditPlan,
        openai::CatchChance
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The router.
pub fn router(node: Arc<Node>) -> Router {
    let max = node.config.max_body_bytes;
    Router::new()
        .route("/v1/accounts", post(accounts::register))
        .route("/v1/accounts/{id}", get(accounts::get_account))
        .route("/v1/accounts/{id}/rotation", post(accounts::rotate))
        .route(
            "/v1/blobs",
            post(blobs::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/blobs/{id}", get(blobs::download))
        .route("/v1/blobs/{id}/grants", post(blobs::grant))
        .route(
            "/v1/blobs/{id}/grants/{account}",
            axum::routing::delete(blobs::revoke),
        )
        .route("/v1/tasks", post(tasks::post_task).get(tasks::list_tasks))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/tasks/{id}/result", get(tasks::get_result))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/workers", get(ops::workers))
        .route("/v1/verifiers", get(ops::verifiers))
        .route("/v1/ledger/entries", get(ledger::entries))
        .route("/v1/ledger/head", get(ledger::head))
        .route("/v1/ledger/export", get(ledger::export))
        .route("/v1/events", get(ops::events))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/receipts/{id}", get(openai::receipt))
        .route(
            "/v1/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .route("/", get(crate::dashboard::home))
        .route("/dashboard", get(crate::dashboard::home))
        .route("/dashboard/", get(crate::dashboard::index))
        .route("/dashboard/{file}", get(crate::dashboard::asset))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max))
        .with_state(node)
}

/// Maps a body extraction failure (notably one over the limit) to a JSON error.
pub(crate) fn body_or_error(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the node's limit",
            )
        } else {
            ApiError::bad_request("bad_body", e.body_text())
        }
    })
}

/// Parses a JSON body strictly (unknown fields and wrong types are errors).
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every body is an object: serde would also read a struct from an array of its fields in
    // order, a form no client is told of.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "malformed_json"
        } else {
            "invalid_json"
        };
        ApiError::bad_request(code, e.to_string())
    })
}

/// Checks a signed request and its nonce; returns the signer.
pub(crate) fn authenticate(
    node: &Node,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_digest: &Hash,
) -> Result<AccountId, ApiError> {
    let req = SignedRequest::from_headers(headers)?;
    let now = unix_now();
    let skew = node.config.max_clock_skew_secs;
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    req.verify(method.as_str(), pq, body_digest, now, skew)?;
    if let Some(to) = node.ledger.rotated_to(&req.account) {
        return Err(ApiError::unauthorized(
            "key_rotated",
            format!(
                "account {} was rotated to key {to}: sign with the new key",
                req.account
            ),
        ));
    }
    if !node
        .store
        .use_nonce(&req.account, &req.nonce, req.timestamp)
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::unauthorized(
            "replayed_request",
            "this nonce was already used: a request is accepted once",
        ));
    }
    Ok(req.account)
}

/// Parses an account id from a path segment or query: 400 unless it is 64 lowercase hex
/// digits; `None` for hex that is no ed25519 public key, so no account (the caller answers as
/// for an account that does not exist: a schema can say "64 hex digits", not "a curve point").
pub(crate) fn parse_account(raw: &str) -> Result<Option<AccountId>, ApiError> {
    if raw.len() != 64 || !raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!("{raw:?} is not a valid account id (64 lowercase hex digits)"),
        ));
    }
    Ok(raw.parse().ok())
}

/// Parses a hex id from a path segment.
pub(crate) fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("{raw:?} is not a valid {what} (64 lowercase hex digits)"),
        )
    })
}
