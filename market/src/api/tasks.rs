//! Tasks: post (escrow and audit plan), list, status, results (buyer only), cancel.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use bytes::Bytes;
use market_protocol::{Hash, Signed, TaskId, TaskSpec};
use serde::{Deserialize, Serialize};

use super::{authenticate, body_or_error, parse_id, parse_json};
use crate::engine::Node;
use crate::error::ApiError;
use crate::model::TaskView;

/// Posts a buyer's signed task. The request must be signed by the task's buyer. Returns the task
/// with the audit the node will run: samples and the detection probability for the buyer's
/// assumed cheating fraction, and the verifier fee.
#[utoipa::path(post, path = "/v1/tasks", request_body = super::openapi::SignedTaskSpec, security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 201, body = TaskView), (status = 400, description = "malformed or not canonical", body = crate::error::ErrorBody), (status = 401, description = "missing or bad request signature", body = crate::error::ErrorBody), (status = 402, description = "the buyer's balance does not cover the price", body = crate::error::ErrorBody), (status = 403, description = "the signer is not the task's buyer", body = crate::error::ErrorBody), (status = 409, description = "a task whose escrow was refunded", body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody), (status = 422, description = "an invalid task, a price too low, or a result too big to report", body = crate::error::ErrorBody), (status = 429, description = "the node is validating as many posts as it takes", body = crate::error::ErrorBody), (status = 503, description = "the node cannot start its chat-template sandbox", body = crate::error::ErrorBody)))]
pub(crate) async fn post_task(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let body = body_or_error(body)?;
    let requester = authenticate(&node, &method, &uri, &headers, &Hash::of(&body))?;
    let signed: Signed<TaskSpec> = parse_json(&body)?;
    if signed.body.buyer != requester {
        return Err(ApiError::forbidden(
            "a task can only be posted by its buyer's own account",
        ));
    }
    let record = node.post_task(signed).await?;
    Ok((StatusCode::CREATED, Json(node.view(&record))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    buyer: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// A page of tasks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TaskPage {
    /// The tasks, in arrival order.
    tasks: Vec<TaskView>,
    /// The arrival number to pass as `after` for the next page; `null` on the last page.
    next_after: Option<u64>,
}

/// Largest safe integer (2^53 - 1): what a number in a query may be (the protocol's integers
/// are safe integers, `spec/ENCODING.md`).
const MAX_SAFE: u64 = (1 << 53) - 1;

/// A page of tasks in arrival order, optionally filtered by state and buyer.
#[utoipa::path(get, path = "/v1/tasks", params(("state" = Option<String>, Query, description = "only tasks in this state", pattern = "^(queued|running|auditing|settled|rejected|cancelled|pooling)$"), ("buyer" = Option<String>, Query, description = "only this buyer's tasks (an id that is no key has none)", pattern = "^[0-9a-f]{64}$"), ("after" = Option<u64>, Query, description = "arrival number to continue after (`next_after` of the previous page)", minimum = 0, maximum = 9007199254740991.0), ("limit" = Option<u64>, Query, description = "page size (default 50)", minimum = 1, maximum = 100)), responses((status = 200, body = TaskPage), (status = 400, description = "an unknown parameter, or one out of its bounds", body = crate::error::ErrorBody)))]
pub(crate) async fn list_tasks(
    State(node): State<Arc<Node>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let buyer = match q.buyer.as_deref().map(super::parse_account).transpose()? {
        Some(None) => {
            // No key, so no account, so no tasks.
            return Ok(Json(TaskPage {
                tasks: Vec::new(),
                next_after: None,
            }));
        }
        Some(Some(b)) => Some(b),
        None => None,
    };
    if q.after.is_some_and(|a| a > MAX_SAFE) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`after` is at most {MAX_SAFE}"),
        ));
    }
    if q.limit.is_some_and(|l| !(1..=100).contains(&l)) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` is between 1 and 100",
        ));
    }
    if let Some(state) = q.state.as_deref() {
        if !crate::store::Store::is_state_name(state) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{state:?} is not a task state (queued, running, auditing, settled, rejected, cancelled, pooling)"),
            ));
        }
    }
    let limit = q.limit.unwrap_or(50);
    // Read from the index that matches the filter: the cost is that of the page.
    let mut page = node
        .store
        .tasks_where(buyer.as_ref(), q.state.as_deref(), q.after, limit + 1)
        .map_err(ApiError::internal)?;
    let next = (page.len() > limit).then(|| page[limit - 1].order);
    page.truncate(limit);
    let tasks: Vec<TaskView> = page.iter().map(|t| node.view(t)).collect();
    Ok(Json(TaskPage {
        tasks,
        next_after: next,
    }))
}

fn task(node: &Node, raw: &str) -> Result<crate::model::TaskRecord, ApiError> {
    let id: TaskId = parse_id(raw, "task id")?;
    node.store
        .task(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("task"))
}

/// A task's state, audit plan, attempts and verdicts (public).
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path, description = "task id: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")), responses((status = 200, body = TaskView), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get_task(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(node.view(&task(&node, &id)?)))
}

/// The results of a settled task.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TaskResult {
    task_id: String,
    /// Result blobs (final weights, or one per inference item), readable by the buyer.
    outputs: Vec<String>,
    /// Inference items as text, when they are text (a llama item: its answer's text).
    items: Vec<String>,
    /// A `llama` training task's Hugging Face `config.json` for its output weights (so the
    /// safetensors file loads as `LlamaForCausalLM`); absent for any other task.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    hf_config: Option<serde_json::Value>,
}

/// The results of a settled task: only for its buyer (signed GET).
#[utoipa::path(get, path = "/v1/tasks/{id}/result", params(("id" = String, Path, description = "task id: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")), security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 200, body = TaskResult), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not the task's buyer", body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "not settled", body = crate::error::ErrorBody)))]
pub(crate) async fn get_result(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskResult>, ApiError> {
    let requester = authenticate(&node, &method, &uri, &headers, &Hash::of(b""))?;
    let t = task(&node, &id)?;
    // The buyer, or the key the buyer's account was rotated to.
    if node.current_key(&t.spec.body.buyer) != requester {
        return Err(ApiError::forbidden(
            "only the task's buyer may read its results",
        ));
    }
    // A pooled task stopped early (cancelled, or a round that could not be run) still
    // delivers the weights of its last merged round.
    let partial = t.rounds().is_some() && t.state.is_final() && !t.outputs.is_empty();
    if t.state != crate::model::TaskState::Settled && !partial {
        return Err(ApiError::conflict(
            "not_settled",
            format!(
                "the task is {}; results exist once it is settled",
                t.state.name()
            ),
        ));
    }
    let items = match &t.spec.body.workload {
        // A llama item's output is its answer record; the buyer reads the answer's text here
        // (the record, tokens and logits included, stays in the output blob).
        market_protocol::Workload::Inference(i)
            if matches!(i.model, market_protocol::ModelSpec::Llama { .. }) =>
        {
            // One entry per output, in order (an unreadable blob gives an empty text, so
            // `items[i]` stays the answer of `outputs[i]`).
            t.outputs
                .iter()
                .map(|id| {
                    let b = node.blobs.read(id).unwrap_or_default();
                    market_compute::inference::AnswerRecord::from_bytes(&b)
                        .map(|r| r.text)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&b).into_owned())
                })
                .collect()
        }
        market_protocol::Workload::Inference(_) => t
            .outputs
            .iter()
            .map(|id| {
                String::from_utf8_lossy(&node.blobs.read(id).unwrap_or_default()).into_owned()
            })
            .collect(),
        market_protocol::Workload::Training(_) => Vec::new(),
    };
    let hf_config = match &t.spec.body.workload {
        market_protocol::Workload::Training(tr) => {
            match market_compute::zoo::ModelConfig::from_spec(&tr.model) {
                Ok(market_compute::zoo::ModelConfig::Llama(l)) => Some(l.hf_config_json()),
                _ => None,
            }
        }
        market_protocol::Workload::Inference(_) => None,
    };
    Ok(Json(TaskResult {
        task_id: t.id.to_string(),
        outputs: t.outputs.iter().map(ToString::to_string).collect(),
        items,
        hf_config,
    }))
}

/// Cancels a queued task and refunds its escrow (its buyer only).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", params(("id" = String, Path, description = "task id: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")), security(("marketAccount" = [], "marketTimestamp" = [], "marketNonce" = [], "marketSignature" = [])), responses((status = 200, body = TaskView), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not the task's buyer", body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "past cancelling", body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub(crate) async fn cancel(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let body = body_or_error(body)?;
    let requester = authenticate(&node, &method, &uri, &headers, &Hash::of(&body))?;
    let id: TaskId = parse_id(&id, "task id")?;
    Ok(Json(node.cancel(&id, &requester).await?.view()))
}
