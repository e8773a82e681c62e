//! Restart safety: the node is killed with SIGKILL in the middle of a task, restarted on the
//! same data, and the task still settles with every credit paid exactly once.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use market_node::client::Client;
use market_node::model::TaskState;
use market_protocol::fixtures::training_task;
use market_protocol::{Identity, Workload};

/// A node process, killed when dropped (also when a failed assertion unwinds the test).
struct NodeProcess(Child);

impl NodeProcess {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start(data: &std::path::Path, port: u16, buyer: &Identity) -> NodeProcess {
    NodeProcess(
        Command::new(env!("CARGO_BIN_EXE_market-node"))
            .args([
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--local-workers",
                "1",
                "--local-verifiers",
                "2",
            ])
            .args(["--mint", &format!("{}:5000", buyer.account())])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn until_up(client: &Client, buyer: &Identity) {
    for _ in 0..200 {
        if client.account(&buyer.account()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_task_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let buyer = Identity::from_test_label("restart buyer");
    let client = Client::new(format!("http://127.0.0.1:{port}"), Some(buyer.clone()));
    let mut node = start(dir.path(), port, &buyer);
    until_up(&client, &buyer).await;
    let mut task = training_task(&buyer, 1);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 300;
    }
    let price = task.price.0;
    let view = client.submit(task).await.unwrap();
    // Kill it while the task runs.
    loop {
        let t = client.task(&view.id).await.unwrap();
        if matches!(t.state, TaskState::Running { done, .. } if done >= 50) {
            break;
        }
        assert!(
            !t.state.is_final(),
            "finished before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill();

    let _node = start(dir.path(), port, &buyer);
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
    let workers: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/v1/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verifiers: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/v1/verifiers"))
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
