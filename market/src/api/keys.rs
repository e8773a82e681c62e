//! API keys: what OpenAI-compatible clients authenticate with (`Authorization: Bearer ...`).
//!
//! A key is created, listed and revoked by its account through signed requests; the node keeps
//! only the blake3 of its secret. A key spends only its account's inference credits, up to its
//! own limit, and reads only its account's receipts: it cannot post tasks, move credits or
//! manage keys (those need the account's signature).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use bytes::Bytes;
use market_protocol::Hash;
use serde::{Deserialize, Serialize};

use super::openai::OaiError;
use super::{authenticate, body_or_error, parse_json};
use crate::auth::unix_now;
use crate::engine::Node;
use crate::error::ApiError;
use crate::store::ApiKey;

/// Most keys one account holds (revoked ones included).
pub const MAX_KEYS_PER_ACCOUNT: usize = 100;
/// Longest key name, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 64;
/// What every secret starts with.
pub const SECRET_PREFIX: &str = "mk-";

/// A key to create.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    /// A label for people (at most 64 characters, none of them control characters).
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    name: String,
    /// Most credits the key's requests may cost in all (below 2^53); absent for no limit
    /// beyond the account's balance.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    spending_limit: Option<u64>,
}

/// A whole number, also when written `12.0` (JSON Schema's `integer` admits that spelling,
/// and so clients generated from the document may send it).
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = n else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => {
            Ok(Some(f as u64))
        }
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number of credits"
        ))),
    }
}

/// A key as its account sees it (the secret only once, at creation).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct KeyView {
    id: String,
    /// The secret: shown once, when the key is created; the node keeps only its hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    name: String,
    spending_limit: Option<u64>,
    spent: u64,
    created: u64,
    revoked: bool,
}

impl KeyView {
    fn of(k: &ApiKey, secret: Option<String>) -> Self {
        Self {
            id: k.id.clone(),
            key: secret,
            name: k.name.clone(),
            spending_limit: k.spending_limit,
            spent: k.spent,
            created: k.created,
            revoked: k.revoked,
        }
    }
}

/// An account's keys.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct KeyList {
    data: Vec<KeyView>,
}

/// Creates an API key for the signing account. The secret is in the answer, and only there.
#[utoipa::path(post, path = "/v1/keys", request_body = NewKey, security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 201, body = KeyView), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 409, description = "the account holds the most keys it may", body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let body = body_or_error(body)?;
    let account = authenticate(&node, &method, &uri, &headers, &Hash::of(&body))?;
    let new: NewKey = parse_json(&body)?;
    if new.name.chars().count() > MAX_KEY_NAME_CHARS || new.name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "a key name is at most {MAX_KEY_NAME_CHARS} characters, without control characters"
            ),
        ));
    }
    if new.spending_limit.is_some_and(|l| l >= 1 << 53) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "a spending limit is below 2^53",
        ));
    }
    let held = node
        .store
        .api_keys_of(&account)
        .map_err(ApiError::internal)?
        .len();
    if held >= MAX_KEYS_PER_ACCOUNT {
        return Err(ApiError::conflict(
            "too_many_keys",
            format!("an account holds at most {MAX_KEYS_PER_ACCOUNT} keys"),
        ));
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(ApiError::internal)?;
    let secret = format!("{SECRET_PREFIX}{}", Hash(raw).to_hex());
    let hash = Hash::of(secret.as_bytes());
    let key = ApiKey {
        id: format!("key_{}", &hash.to_hex()[..16]),
        account,
        name: new.name,
        spending_limit: new.spending_limit,
        spent: 0,
        created: unix_now(),
        revoked: false,
    };
    node.store
        .add_api_key(&hash, &key)
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(KeyView::of(&key, Some(secret)))))
}

/// The signing account's keys, oldest first (without their secrets).
#[utoipa::path(get, path = "/v1/keys", security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 200, body = KeyList), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<KeyList>, ApiError> {
    let account = authenticate(&node, &method, &uri, &headers, &Hash::of(b""))?;
    let keys = node
        .store
        .api_keys_of(&account)
        .map_err(ApiError::internal)?;
    Ok(Json(KeyList {
        data: keys.iter().map(|k| KeyView::of(k, None)).collect(),
    }))
}

/// Revokes one of the signing account's keys: it authenticates nothing from now on.
#[utoipa::path(delete, path = "/v1/keys/{id}", params(("id" = String, Path, description = "the key's id")), security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 200, body = KeyView), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 404, description = "the account has no such key", body = crate::error::ErrorBody)))]
pub(crate) async fn revoke(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let account = authenticate(&node, &method, &uri, &headers, &Hash::of(b""))?;
    match node
        .store
        .update_api_key(&account, &id, |k| k.revoked = true)
        .map_err(ApiError::internal)?
    {
        Some(k) => Ok(Json(KeyView::of(&k, None))),
        None => Err(ApiError::not_found("key")),
    }
}

/// The key a request's `Authorization: Bearer` header names, with the hash of its secret.
pub(crate) fn bearer(node: &Node, headers: &HeaderMap) -> Result<(ApiKey, Hash), OaiError> {
    let missing = || {
        OaiError::unauthorized(
            "missing_api_key",
            "send an API key as `Authorization: Bearer mk-...` (create one with POST /v1/keys)",
        )
    };
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let secret = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, secret)| secret.trim())
        .ok_or_else(missing)?;
    let invalid = || OaiError::unauthorized("invalid_api_key", "this API key is not valid");
    // Checked before any lookup: a secret of another shape is no key.
    if secret.len() != SECRET_PREFIX.len() + 64 || !secret.starts_with(SECRET_PREFIX) {
        return Err(invalid());
    }
    let hash = Hash::of(secret.as_bytes());
    match node.store.api_key(&hash).map_err(OaiError::internal)? {
        // A rotated account's API keys die with its old key: a rotation is often because a
        // key leaked, and the new key makes new API keys.
        Some(k) if !k.revoked => match node.ledger.rotated_to(&k.account) {
            Some(to) => Err(OaiError::unauthorized(
                "key_rotated",
                format!(
                    "this API key's account was rotated to key {to}: create a new API key with it"
                ),
            )),
            None => Ok((k, hash)),
        },
        _ => Err(invalid()),
    }
}
