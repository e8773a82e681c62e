//! Blobs: streaming, content-addressed uploads within a quota; downloads and grants by their
//! holders (spec/PROTOCOL.md section 9.1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use market_protocol::{AccountId, BlobId, Hash};
use serde::{Deserialize, Serialize};

use super::{authenticate, body_or_error, parse_id, parse_json};
use crate::auth::unix_now;
use crate::blobs::BlobError;
use crate::engine::Node;
use crate::error::ApiError;
use crate::store::UploadCharge;

/// A stored blob.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BlobCreated {
    id: String,
    size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    /// The blob's id (the blake3 of its bytes): the request signature covers it, so it is
    /// checked before a byte is read, and the upload is refused if the content hashes
    /// otherwise.
    expected: Option<String>,
}

/// Uploads a blob (raw bytes, streamed) as `?expected=ID`, where ID is the blake3 of the bytes
/// and the request signature covers it: the node checks the signature and the uploader's quota
/// before it reads a byte. Each account may hold `blob_bytes_per_credit` bytes per credit of
/// balance and stake (402 with none, 413 past it); a blob no task reads expires
/// `blob_ttl_secs` after its last upload. Uploading bytes someone else uploaded first makes
/// the uploader a holder of the blob, as its owner is.
#[utoipa::path(post, path = "/v1/blobs", params(("expected" = String, Query, description = "the blob id (blake3 of the body), required", pattern = "^[0-9a-f]{64}$")), request_body(content = BlobBytes, content_type = "application/octet-stream"), security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 201, body = BlobCreated), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 402, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub(crate) async fn upload(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<BlobCreated>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    // Cheap checks before reading a byte.
    crate::auth::SignedRequest::from_headers(&headers)?;
    let expected: BlobId = parse_id(
        query.expected.as_deref().ok_or_else(|| {
            ApiError::bad_request(
                "expected_required",
                "give the blob id as ?expected=ID (the blake3 of the body): the signature covers it, so it is checked before the upload is read",
            )
        })?,
        "blob id",
    )?;
    let owner = authenticate(&node, &method, &uri, &headers, &expected.0)?;
    let quota = node.blob_quota(&owner);
    let used = node.store.blob_usage(&owner).map_err(ApiError::internal)?;
    let held = node
        .store
        .blob_access(&expected, &owner)
        .map_err(ApiError::internal)?
        == Some(crate::store::BlobAccess::Holder);
    if quota == 0 {
        return Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "no_blob_quota",
            format!(
                "account {owner} holds no credits; blob storage is {} bytes per credit of balance and stake",
                node.config.blob_bytes_per_credit
            ),
        ));
    }
    let over_quota = |used: u64| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "blob_quota_exceeded",
            format!(
                "account {owner} holds {used} bytes of blobs and may hold {quota} ({} bytes per credit of balance and stake)",
                node.config.blob_bytes_per_credit
            ),
        )
    };
    // Re-uploading a blob one holds costs no quota; otherwise the upload may use what is left.
    let room = if held {
        // The same bytes again: exactly their size, no more.
        node.store
            .blob_size(&expected)
            .map_err(ApiError::internal)?
            .unwrap_or(node.config.max_blob_bytes)
            .min(node.config.max_blob_bytes)
    } else {
        quota.saturating_sub(used).min(node.config.max_blob_bytes)
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // What an upload past `room` is: more bytes than the blob held (so not it), past the
    // account's quota, or past the size limit.
    let refusal = |room: u64| {
        if held {
            ApiError::bad_request(
                "id_mismatch",
                format!("blob {expected} is {room} bytes; the upload is longer"),
            )
        } else if room < node.config.max_blob_bytes {
            over_quota(used)
        } else {
            too_large(node.config.max_blob_bytes)
        }
    };
    if declared.is_some_and(|d| d > room) || (room == 0 && !held) {
        return Err(refusal(room));
    }
    let staged = node
        .blobs
        .stage(body.into_data_stream(), room)
        .await
        .map_err(|e| match e {
            BlobError::TooLarge(limit) => refusal(limit),
            BlobError::Body(m) => ApiError::bad_request("upload_interrupted", m),
            BlobError::Io(e) => ApiError::internal(e),
        })?;
    if expected != staged.id {
        let got = staged.id;
        node.blobs.discard(staged).await;
        return Err(ApiError::bad_request(
            "id_mismatch",
            format!("the content hashes to {got}, not the expected id"),
        ));
    }
    let size = staged.size;
    let charge = node
        .store
        .record_upload(&staged.id, &owner, size, unix_now(), quota)
        .map_err(ApiError::internal)?;
    if let UploadCharge::OverQuota { used } = charge {
        node.blobs.discard(staged).await;
        return Err(over_quota(used));
    }
    // The uploader's key was rotated while its upload streamed (it was checked before the
    // first byte): the account's current key holds the blob.
    let current = node.current_key(&owner);
    if current != owner {
        node.store
            .hold_blob(&staged.id, &current)
            .map_err(ApiError::internal)?;
    }
    let id = node
        .blobs
        .publish(staged)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(BlobCreated {
            id: id.to_string(),
            size,
        }),
    ))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "blob_too_large",
        format!("blobs are limited to {limit} bytes"),
    )
}

/// A grant of a blob to another account.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlobGrant {
    /// The account that may read the blob and name it in its tasks: 64 lowercase hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    account: String,
}

/// A blob's bytes, as the body of an upload or a download.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Only the schema reads it.
pub(crate) struct BlobBytes(Vec<u8>);

/// Grants another account the use of a blob: to read it and to name it in its own tasks
/// (`initial_weights`, a dataset, inference weights or rows). Only a holder of the blob (its
/// uploader, anyone who uploaded the same bytes, the buyer of the task it is a result of) may
/// grant, with a request signed by its key whose body is `{"account": HEX}`. Tasks name only
/// blobs their buyer holds or was granted.
#[utoipa::path(post, path = "/v1/blobs/{id}/grants", params(("id" = String, Path, description = "blob id: 64 lowercase hex digits (the blake3 of its bytes)", pattern = "^[0-9a-f]{64}$")), request_body = BlobGrant, security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 201, body = BlobGrant), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not a holder of the blob", body = crate::error::ErrorBody), (status = 404, description = "no such blob, or no such account", body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub(crate) async fn grant(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<BlobGrant>), ApiError> {
    let body = body_or_error(body)?;
    let requester = authenticate(&node, &method, &uri, &headers, &Hash::of(&body))?;
    let id: BlobId = parse_id(&id, "blob id")?;
    let grant: BlobGrant = parse_json(&body)?;
    let grantee: AccountId =
        super::parse_account(&grant.account)?.ok_or_else(|| ApiError::not_found("account"))?;
    must_hold(&node, &id, &requester)?;
    // A grant to a key that was rotated goes to the account's current key.
    node.store
        .grant_blob(&id, &node.current_key(&grantee))
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// Withdraws a grant (a holder's own rights cannot be withdrawn). Tasks posted with the blob
/// before keep it. Signed by a holder of the blob.
#[utoipa::path(delete, path = "/v1/blobs/{id}/grants/{account}", params(("id" = String, Path, description = "blob id: 64 lowercase hex digits (the blake3 of its bytes)", pattern = "^[0-9a-f]{64}$"), ("account" = String, Path, description = "the grantee: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")), security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 200, body = super::openapi::Revoked), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not a holder of the blob", body = crate::error::ErrorBody), (status = 404, description = "no such blob, or no such account", body = crate::error::ErrorBody)))]
pub(crate) async fn revoke(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((id, account)): Path<(String, String)>,
) -> Result<Json<super::openapi::Revoked>, ApiError> {
    let requester = authenticate(&node, &method, &uri, &headers, &Hash::of(b""))?;
    let id: BlobId = parse_id(&id, "blob id")?;
    let grantee: AccountId =
        super::parse_account(&account)?.ok_or_else(|| ApiError::not_found("account"))?;
    must_hold(&node, &id, &requester)?;
    let revoked = node
        .store
        .revoke_blob_grant(&id, &grantee)
        .map_err(ApiError::internal)?;
    Ok(Json(super::openapi::Revoked { revoked }))
}

fn must_hold(node: &Node, id: &BlobId, account: &AccountId) -> Result<(), ApiError> {
    match node
        .store
        .blob_access(id, account)
        .map_err(ApiError::internal)?
    {
        None => Err(ApiError::not_found("blob")),
        Some(crate::store::BlobAccess::Holder) => Ok(()),
        Some(_) => Err(ApiError::forbidden(
            "only a holder of the blob (its uploader, or the buyer of the task it is a result of) may grant it",
        )),
    }
}

/// Downloads a blob; only its holders (its uploaders, the buyer of a task whose result it is)
/// and the accounts they granted it may (signed GET).
#[utoipa::path(get, path = "/v1/blobs/{id}", params(("id" = String, Path, description = "blob id: 64 lowercase hex digits (the blake3 of its bytes)", pattern = "^[0-9a-f]{64}$")), security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 200, body = BlobBytes, content_type = "application/octet-stream"), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn download(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: BlobId = parse_id(&id, "blob id")?;
    let requester = authenticate(&node, &method, &uri, &headers, &Hash::of(b""))?;
    let allowed = node
        .store
        .may_read_blob(&id, &requester)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("blob"))?;
    if !allowed {
        return Err(ApiError::forbidden(
            "only the blob's holders (its uploaders, the buyer of the task it is a result of) and the accounts they granted it may read it",
        ));
    }
    let file = tokio::fs::File::open(node.blobs.path(&id))
        .await
        .map_err(|_| ApiError::not_found("blob"))?;
    // Blobs are immutable (content-addressed), so the length read now is the length sent: a
    // client can show progress and tell a cut download from a whole one.
    let len = file
        .metadata()
        .await
        .map_err(|_| ApiError::not_found("blob"))?
        .len();
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [
            ("content-type", "application/octet-stream".to_owned()),
            ("content-length", len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
