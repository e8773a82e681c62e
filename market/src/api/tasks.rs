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
#[utoipa::path(post, path = "/v1/tasks", request_body(content = Object, description = "Signed<TaskSpec>: {body, signer, signature}"), responses((status = 201, body = TaskView), (status = 402, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
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

/// A page of tasks in arrival order, optionally filtered by state and buyer.
#[utoipa::path(get, path = "/v1/tasks", params(("state" = Option<String>, Query), ("buyer" = Option<String>, Query), ("after" = Option<u64>, Query, description = "arrival number to continue after"), ("limit" = Option<usize>, Query, description = "at most 100")), responses((status = 200, body = Vec<TaskView>)))]
pub(crate) async fn list_tasks(
    State(node): State<Arc<Node>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let buyer: Option<market_protocol::AccountId> = q
        .buyer
        .as_deref()
        .map(|b| parse_id(b, "account id"))
        .transpose()?;
    if let Some(state) = q.state.as_deref() {
        if !crate::store::Store::is_state_name(state) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{state:?} is not a task state (queued, running, auditing, settled, rejected, cancelled, pooling)"),
            ));
        }
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    // Read from the index that matches the filter: the cost is that of the page.
    let mut page = node
        .store
        .tasks_where(buyer.as_ref(), q.state.as_deref(), q.after, limit + 1)
        .map_err(ApiError::internal)?;
    let next = (page.len() > limit).then(|| page[limit - 1].order);
    page.truncate(limit);
    let out: Vec<TaskView> = page.iter().map(|t| node.view(t)).collect();
    Ok(Json(serde_json::json!({"tasks": out, "next_after": next})))
}

fn task(node: &Node, raw: &str) -> Result<crate::model::TaskRecord, ApiError> {
    let id: TaskId = parse_id(raw, "task id")?;
    node.store
        .task(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("task"))
}

/// A task's state, audit plan, attempts and verdicts (public).
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path)), responses((status = 200, body = TaskView), (status = 404, body = crate::error::ErrorBody)))]
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
    /// Inference items as text, when they are text.
    items: Vec<String>,
}

/// The results of a settled task: only for its buyer (signed GET).
#[utoipa::path(get, path = "/v1/tasks/{id}/result", params(("id" = String, Path)), responses((status = 200, body = TaskResult), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn get_result(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskResult>, ApiError> {
    let requester = authenticate(&node, &method, &uri, &headers, &Hash::of(b""))?;
    let t = task(&node, &id)?;
    if t.spec.body.buyer != requester {
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
    let items = match t.spec.body.workload {
        market_protocol::Workload::Inference(_) => t
            .outputs
            .iter()
            .filter_map(|b| node.blobs.read(b))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect(),
        market_protocol::Workload::Training(_) => Vec::new(),
    };
    Ok(Json(TaskResult {
        task_id: t.id.to_string(),
        outputs: t.outputs.iter().map(ToString::to_string).collect(),
        items,
    }))
}

/// Cancels a queued task and refunds its escrow (its buyer only).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", params(("id" = String, Path)), responses((status = 200, body = TaskView), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
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
