//! Participants, health, metrics and the event stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use serde::Serialize;

use crate::engine::Node;
use crate::error::ApiError;
use crate::model::ParticipantStats;

/// A worker or verifier.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Participant {
    account: String,
    staked: u64,
    reputation: i64,
    /// The execution profiles it runs (`repro`, `native`, `cuda`): the tasks it can take or
    /// audit.
    profiles: Vec<String>,
    /// A worker running a task now.
    busy: bool,
    /// The memory and disk it offers to tasks (as it last said; absent for in-process
    /// participants, which share the node's machine): a task goes only to a worker offering
    /// what the task `needs`.
    #[schema(value_type = Option<crate::model::ResourcesDoc>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    offers: Option<market_protocol::Resources>,
    stats: ParticipantStats,
}

fn participants(
    node: &Node,
    accounts: Vec<market_protocol::AccountId>,
) -> Result<Json<Vec<Participant>>, ApiError> {
    accounts
        .into_iter()
        .map(|a| {
            Ok(Participant {
                account: a.to_hex(),
                staked: node.ledger.stake(&a).0,
                reputation: node.ledger.reputation(&a),
                profiles: market_protocol::ExecutionProfile::ALL
                    .into_iter()
                    .filter(|p| node.dispatch.runs(&a, *p))
                    .map(|p| p.name().to_owned())
                    .collect(),
                busy: node.is_busy(&a),
                offers: node.dispatch.offers(&a),
                stats: node.store.participant(&a).map_err(ApiError::internal)?,
            })
        })
        .collect::<Result<_, _>>()
        .map(Json)
}

/// Workers with stake, reputation and record.
#[utoipa::path(get, path = "/v1/workers", responses((status = 200, body = Vec<Participant>)))]
pub(crate) async fn workers(
    State(node): State<Arc<Node>>,
) -> Result<Json<Vec<Participant>>, ApiError> {
    participants(&node, node.dispatch.workers())
}

/// Verifiers with stake, reputation and record.
#[utoipa::path(get, path = "/v1/verifiers", responses((status = 200, body = Vec<Participant>)))]
pub(crate) async fn verifiers(
    State(node): State<Arc<Node>>,
) -> Result<Json<Vec<Participant>>, ApiError> {
    participants(&node, node.dispatch.verifiers())
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus text: tasks by state, ledger height.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Result<String, ApiError> {
    // Counts kept by the store at every save: this costs the same however many tasks exist.
    let counts = node.store.task_counts();
    let mut text = String::from("# HELP market_tasks Tasks by state.\n# TYPE market_tasks gauge\n");
    for (state, n) in counts {
        text.push_str(&format!("market_tasks{{state=\"{state}\"}} {n}\n"));
    }
    text.push_str(&format!("# HELP market_ledger_entries Entries in the ledger.\n# TYPE market_ledger_entries gauge\nmarket_ledger_entries {}\n", node.ledger.head().seq + 1));
    Ok(text)
}

/// Server-sent events: one JSON object per task state change.
#[utoipa::path(get, path = "/v1/events", responses((status = 200, content_type = "text/event-stream")))]
pub(crate) async fn events(
    State(node): State<Arc<Node>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = node.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(msg) => return Some((Ok(Event::default().event("task").data(msg)), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
