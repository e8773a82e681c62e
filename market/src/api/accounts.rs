//! Accounts: registration (proof of key possession) and public balances.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use bytes::Bytes;
use market_protocol::{AccountId, Hash, KeyRotation, RotationAcceptance, Signed};
use serde::{Deserialize, Serialize};

use super::{authenticate, body_or_error, parse_json};
use crate::engine::Node;
use crate::error::ApiError;

/// An account's public state.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AccountView {
    account: String,
    registered: bool,
    balance: u64,
    escrowed: u64,
    staked: u64,
    reputation: i64,
    /// The key this account was rotated to (it can no longer act), if it was.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    rotated_to: Option<String>,
}

fn view(node: &Node, account: &AccountId) -> Result<AccountView, ApiError> {
    // Only unfinished tasks hold escrow: their ids come from the store's index (no record is
    // loaded), so the cost is a lookup per open task of this buyer, not one per escrow ever.
    let mut escrowed = 0u64;
    for state in ["queued", "running", "auditing", "pooling"] {
        for id in node
            .store
            .task_ids_where(Some(account), Some(state), None, usize::MAX)
            .map_err(ApiError::internal)?
        {
            escrowed += node.ledger.escrow_of(&id).map_or(0, |e| e.remaining.0);
        }
    }
    // Served answers not yet settled: requests in flight, answers in open batches and in
    // batches being audited (each escrowed on its own, under its receipt id).
    let store = &node.store;
    let mut served: std::collections::BTreeSet<market_protocol::TaskId> = store
        .holds_before(u64::MAX)
        .map_err(ApiError::internal)?
        .into_iter()
        .collect();
    for (_, open) in store.open_batches().map_err(ApiError::internal)? {
        served.extend(open.answers.iter().map(|(a, _)| *a));
    }
    for batch in store.batches_auditing().map_err(ApiError::internal)? {
        served.extend(batch.answers.iter().map(|(a, _)| *a));
    }
    for id in served {
        if let Some(e) = node.ledger.escrow_of(&id).filter(|e| e.buyer == *account) {
            escrowed += e.remaining.0;
        }
    }
    Ok(AccountView {
        account: account.to_hex(),
        registered: node
            .store
            .is_registered(account)
            .map_err(ApiError::internal)?,
        balance: node.ledger.balance(account).0,
        escrowed,
        staked: node.ledger.stake(account).0,
        reputation: node.ledger.reputation(account),
        rotated_to: node.ledger.rotated_to(account).map(|a| a.to_hex()),
    })
}

/// Registers the signing account (the signature proves the key is held). Only an account
/// that holds credits (balance or stake) may register: 402 otherwise.
#[utoipa::path(post, path = "/v1/accounts", security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 201, body = AccountView), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 402, description = "the account holds no credits", body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub(crate) async fn register(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let body = body_or_error(body)?;
    let account = authenticate(&node, &method, &uri, &headers, &Hash::of(&body))?;
    // Only accounts with credits are kept, so registrations grow with the funded accounts,
    // not with every key anyone generates.
    if node.ledger.balance(&account).0 == 0 && node.ledger.stake(&account).0 == 0 {
        return Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "unfunded_account",
            format!(
                "account {account} holds no credits: an account is registered once it is funded"
            ),
        ));
    }
    node.store.register(&account).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(view(&node, &account)?)))
}

/// An account's balance, escrow, stake and reputation (public).
#[utoipa::path(get, path = "/v1/accounts/{id}", params(("id" = String, Path, description = "account: an ed25519 public key, 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")), responses((status = 200, body = AccountView), (status = 400, body = crate::error::ErrorBody), (status = 404, description = "hex that is no public key: no account can have it", body = crate::error::ErrorBody)))]
pub(crate) async fn get_account(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let account: AccountId =
        super::parse_account(&id)?.ok_or_else(|| ApiError::not_found("account"))?;
    Ok(Json(view(&node, &account)?))
}

/// A key rotation: the old key's signed request and the new key's signed acceptance of it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotationRequest {
    /// `Signed<KeyRotation>` (`spec/ENCODING.md`), signed by the old key.
    #[schema(value_type = Object)]
    rotation: Signed<KeyRotation>,
    /// `Signed<RotationAcceptance>` naming the rotation's message id, signed by the new key.
    #[schema(value_type = Object)]
    acceptance: Signed<RotationAcceptance>,
}

/// A rotation recorded.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Rotated {
    /// The ledger entry that records it.
    seq: u64,
    /// The new key's account, which now holds the balance, stake and reputation.
    account: AccountView,
}

/// Moves the signing account (the old key, `{id}`) to a new key: its balance, stake,
/// reputation and blobs. Both keys sign (the request signature and `rotation` by the old key,
/// `acceptance` by the new one). Refused while the account is connected as a worker or
/// verifier, has work in flight or under audit, or credits in escrow (409), or when the new key
/// already holds anything (409). Afterwards every request signed by the old key is refused
/// (401 `key_rotated`), and its API keys stop working.
#[utoipa::path(post, path = "/v1/accounts/{id}/rotation", params(("id" = String, Path, description = "the old key's account: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")), request_body = RotationRequest, security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 200, body = Rotated), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "the request is not signed by the old key, or the rotation is not for this account", body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "the account is busy, has credits in escrow, or the new key holds something", body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody), (status = 422, description = "the signed messages do not verify or do not match", body = crate::error::ErrorBody)))]
pub(crate) async fn rotate(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Rotated>, ApiError> {
    let body = body_or_error(body)?;
    let account: AccountId =
        super::parse_account(&id)?.ok_or_else(|| ApiError::not_found("account"))?;
    let signer = authenticate(&node, &method, &uri, &headers, &Hash::of(&body))?;
    if signer != account {
        return Err(ApiError::forbidden(
            "only the account's own (old) key may rotate it",
        ));
    }
    let request: RotationRequest = parse_json(&body)?;
    if request.rotation.body.from != account {
        return Err(ApiError::forbidden(
            "the signed rotation is for another account than the path names",
        ));
    }
    let to = request.rotation.body.to;
    let seq = node.rotate(request.rotation, request.acceptance).await?;
    Ok(Json(Rotated {
        seq,
        account: view(&node, &to)?,
    }))
}
