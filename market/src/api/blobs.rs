//! Blobs: streaming, content-addressed uploads; downloads for their owner only.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use market_protocol::{BlobId, Hash};
use serde::{Deserialize, Serialize};

use super::{authenticate, parse_id};
use crate::blobs::BlobError;
use crate::engine::Node;
use crate::error::ApiError;

/// A stored blob.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BlobCreated {
    id: String,
    size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    /// The id the uploader expects; the upload is refused if the content hashes otherwise.
    expected: Option<String>,
}

/// Uploads a blob (raw bytes, streamed). The request signature covers the blake3 of the body,
/// which is also the blob's id. Give `?expected=ID` to have the signature checked before the
/// upload is read (recommended); without it, it is checked once the body has been hashed.
#[utoipa::path(post, path = "/v1/blobs", request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 201, body = BlobCreated), (status = 413, body = crate::error::ErrorBody)))]
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
    let expected: Option<BlobId> = query
        .expected
        .as_deref()
        .map(|e| parse_id(e, "blob id"))
        .transpose()?;
    // With `expected`, the signature (over the body's blake3, which is the blob id) can be
    // checked before a byte is stored, so unsigned uploads cost the node nothing.
    let pre_authenticated = match expected {
        Some(id) => Some(authenticate(&node, &method, &uri, &headers, &id.0)?),
        None => None,
    };
    let staged = node
        .blobs
        .stage(body.into_data_stream())
        .await
        .map_err(|e| match e {
            BlobError::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "blob_too_large",
                format!("blobs are limited to {limit} bytes"),
            ),
            BlobError::Body(m) => ApiError::bad_request("upload_interrupted", m),
            BlobError::Io(e) => ApiError::internal(e),
        })?;
    if expected.is_some_and(|e| e != staged.id) {
        let got = staged.id;
        node.blobs.discard(staged).await;
        return Err(ApiError::bad_request(
            "id_mismatch",
            format!("the content hashes to {got}, not the expected id"),
        ));
    }
    let owner = match pre_authenticated {
        Some(owner) => owner,
        None => match authenticate(&node, &method, &uri, &headers, &staged.id.0) {
            Ok(a) => a,
            Err(e) => {
                node.blobs.discard(staged).await;
                return Err(e);
            }
        },
    };
    let size = staged.size;
    let id = node
        .blobs
        .publish(staged)
        .await
        .map_err(ApiError::internal)?;
    node.store
        .set_blob_owner(&id, &owner)
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(BlobCreated {
            id: id.to_string(),
            size,
        }),
    ))
}

/// Downloads a blob; only its owner, or the buyer of a task whose result it is, may (signed
/// GET).
#[utoipa::path(get, path = "/v1/blobs/{id}", params(("id" = String, Path, description = "blob id")), responses((status = 200, content_type = "application/octet-stream"), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
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
            "only the blob's owner (or the buyer of the task it is a result of) may read it",
        ));
    }
    let file = tokio::fs::File::open(node.blobs.path(&id))
        .await
        .map_err(|_| ApiError::not_found("blob"))?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [("content-type", "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}
