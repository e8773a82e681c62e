//! Accounts: registration (proof of key possession) and public balances.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use bytes::Bytes;
use market_protocol::{AccountId, Hash};
use serde::Serialize;

use super::{authenticate, body_or_error};
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
