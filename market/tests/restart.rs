//! Restart safety: the node is killed with SIGKILL in the middle of a task, restarted on the
//! same data, and the task still settles with every credit paid exactly once.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::{Duration, Instant};

mod common;

use common::start;
use market_node::client::Client;
use market_node::model::TaskState;
use market_protocol::fixtures::training_task;
use market_protocol::{Identity, Workload};

async fn until_up(client: &Client, buyer: &Identity) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.account(&buyer.account()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the node listens but did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_task_loses_and_doubles_nothing() {
    sigkill_when(
        "50 steps in",
        |s| matches!(s, TaskState::Running { done, .. } if *done >= 50),
    )
    .await;
}

/// Killed while its result is audited (the commitment and its beacon are in the ledger, the
/// verifiers are re-executing), the node resumes the audit from the ledger's `commit` entry
/// and the bundle's source on disk, and settles it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_audit_loses_and_doubles_nothing() {
    sigkill_when("auditing", |s| matches!(s, TaskState::Auditing { .. })).await;
}

/// Posts a 300-step task to a node process, kills the node with SIGKILL as soon as the task's
/// state satisfies `at`, restarts it on the same data and checks the task settles with every
/// credit moved exactly once.
async fn sigkill_when(what: &str, at: fn(&TaskState) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let buyer = Identity::from_test_label("restart buyer");
    let (mut node, api) = start(dir.path(), &buyer).await;
    let client = Client::new(api, Some(buyer.clone()));
    until_up(&client, &buyer).await;
    let mut task = training_task(&buyer, 1);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 300;
    }
    let price = task.price.0;
    let view = client.submit(task).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = client.task(&view.id).await.unwrap();
        if at(&t.state) {
            break;
        }
        assert!(
            !t.state.is_final(),
            "finished before it could be interrupted ({what})"
        );
        assert!(
            Instant::now() < deadline,
            "the task was not {what} within 120 s: {:?}",
            t.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.kill();

    let (_node, api) = start(dir.path(), &buyer).await;
    let client = Client::new(api.clone(), Some(buyer.clone()));
    until_up(&client, &buyer).await;
    let t = client
        .wait(&view.id, Duration::from_secs(300), |_| {})
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    let fee = market_node::config::NodeConfig::default().verifier_fee;
    let buyer_view = client.account(&buyer.account()).await.unwrap();
    assert_eq!(
        buyer_view["balance"].as_u64().unwrap(),
        5000 - price,
        "minted once, escrowed once"
    );
    assert_eq!(buyer_view["escrowed"].as_u64().unwrap(), 0);
    let workers: serde_json::Value = reqwest::get(format!("{api}/v1/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verifiers: serde_json::Value = reqwest::get(format!("{api}/v1/verifiers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paid: u64 = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| client_balance(&client, w))
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    let fees: u64 = verifiers
        .as_array()
        .unwrap()
        .iter()
        .map(|v| client_balance(&client, v))
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    // Local participants start with 2 x min stake minted and staked, so their balance is what they earned.
    assert_eq!(paid, price - 2 * fee, "the worker was paid exactly once");
    assert_eq!(fees, 2 * fee, "each verifier was paid exactly once");
    let export = client.ledger_export().await.unwrap();
    market_ledger::verify_export(
        std::io::Cursor::new(export),
        std::path::Path::new("export"),
        None,
    )
    .unwrap();
}

async fn client_balance(client: &Client, participant: &serde_json::Value) -> u64 {
    let account = participant["account"].as_str().unwrap().parse().unwrap();
    client.account(&account).await.unwrap()["balance"]
        .as_u64()
        .unwrap()
}
