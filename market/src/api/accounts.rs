//! Accounts: registration (proof of key possession) and public balances.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use bytes::Bytes;
use market_protocol::{AccountId, Hash};
use serde::Serialize;

use super::{authenticate, body_or_error, parse_id};
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
    let escrowed = node
        .ledger
        .open_escrows()
        .iter()
        .filter(|(_, e)| e.buyer == *account)
        .map(|(_, e)| e.remaining.0)
        .sum();
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

/// Registers the signing account (the signature proves the key is held).
#[utoipa::path(post, path = "/v1/accounts", responses((status = 201, body = AccountView), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn register(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let body = body_or_error(body)?;
    let account = authenticate(&node, &method, &uri, &headers, &Hash::of(&body))?;
    node.store.register(&account).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(view(&node, &account)?)))
}

/// An account's balance, escrow, stake and reputation (public).
#[utoipa::path(get, path = "/v1/accounts/{id}", params(("id" = String, Path, description = "account (hex public key)")), responses((status = 200, body = AccountView), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn get_account(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let account: AccountId = parse_id(&id, "account id")?;
    Ok(Json(view(&node, &account)?))
}
