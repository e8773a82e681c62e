//! Time from task post to settlement (`cargo bench -p market-node --bench settle`), split into
//! queueing, execution, transfer, audit and settlement, with the worker and verifier joined
//! over libp2p on loopback; the baseline is the same tasks with the same worker and verifier
//! code run in the node's process (no network), in the same run.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary reports on stdout.

mod common;

use common::{networked_node, spawn_verifier, spawn_worker};

use std::sync::Arc;
use std::time::{Duration, Instant};

use market_node::config::NodeConfig;
use market_node::dispatch::{InProcess, VerifierMode};
use market_node::engine::Node;
use market_node::model::TaskState;
use market_node::p2p::{open_networked, P2pOptions};
use market_protocol::fixtures::training_task;
use market_protocol::{Identity, Signed, TaskSpec, Workload};
use market_worker::Behavior;

const TASKS: u64 = 5;

fn task(buyer: &Identity, nonce: u64) -> TaskSpec {
    let mut spec = training_task(buyer, nonce);
    if let Workload::Training(t) = &mut spec.workload {
        t.steps = 60;
    }
    spec
}

fn config() -> NodeConfig {
    NodeConfig {
        verifiers_per_task: 1,
        ..NodeConfig::default()
    }
}

async fn settle(node: &Node, spec: TaskSpec, buyer: &Identity) -> (Instant, Duration) {
    let posted = Instant::now();
    let t = node
        .post_task(Signed::sign(spec, buyer).unwrap())
        .await
        .unwrap();
    let done = node
        .wait_final(&t.id, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Settled);
    (posted, posted.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let buyer = Identity::from_test_label("settle bench buyer");
    let worker = Identity::from_test_label("settle bench worker");
    let verifier = Identity::from_test_label("settle bench verifier");

    // Baseline: in-process dispatch.
    let dir = tempfile::tempdir().unwrap();
    let dispatch = InProcess {
        workers: vec![(worker.clone(), Behavior::Honest)],
        verifiers: vec![(verifier.clone(), VerifierMode::Honest)],
    };
    let node = Node::open(
        dir.path(),
        config(),
        Identity::from_test_label("settle bench operator"),
        Arc::new(dispatch),
    )
    .unwrap();
    tokio::spawn(node.clone().run_engine());
    node.fund("b", &buyer.account(), 100_000, 0).await.unwrap();
    node.fund("b", &worker.account(), 1_000, 500).await.unwrap();
    node.fund("b", &verifier.account(), 1_000, 500)
        .await
        .unwrap();
    let mut local = Vec::new();
    for n in 0..TASKS {
        local.push(settle(&node, task(&buyer, n), &buyer).await.1);
    }

    // Over libp2p.
    let dir = tempfile::tempdir().unwrap();
    let (node, dispatch, addrs) = networked_node(
        &dir.path().join("node"),
        config(),
        "settle bench operator",
        P2pOptions::default(),
    )
    .await;
    node.fund("b", &buyer.account(), 100_000, 0).await.unwrap();
    node.fund("b", &worker.account(), 1_000, 0).await.unwrap();
    node.fund("b", &verifier.account(), 1_000, 0).await.unwrap();
    spawn_worker(&worker, &addrs[0], &dir.path().join("worker"));
    spawn_verifier(&verifier, &addrs[0], &dir.path().join("verifier"));
    wait_joined(&dispatch, 2).await;
    println!("post to settlement, a 60-step gpt training task (6 segments, 1 verifier), {TASKS} tasks one after another");
    println!(
        "{:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "task",
        "total ms",
        "queue",
        "execute",
        "transfer",
        "audit",
        "settle",
        "in-proc ms",
        "ratio"
    );
    let mut ratios = Vec::new();
    for n in 0..TASKS {
        let spec = task(&buyer, 100 + n);
        let id = market_protocol::TaskId(market_protocol::message_id(&spec).unwrap());
        let (posted, total) = settle(&node, spec, &buyer).await;
        let t = dispatch
            .timings()
            .into_iter()
            .find(|t| t.task_id == Some(id))
            .unwrap();
        let queue = t.assigned_at.duration_since(posted);
        let audit: Duration = t.audits.iter().sum();
        let settle = total.saturating_sub(queue + t.execution + t.transfer + audit);
        let ratio = total.as_secs_f64() / local[n as usize].as_secs_f64();
        ratios.push(ratio);
        println!(
            "{n:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {ratio:>6.2}",
            ms(total),
            ms(queue),
            ms(t.execution),
            ms(t.transfer),
            ms(audit),
            ms(settle),
            ms(local[n as usize])
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio libp2p / in-process: {:.2}",
        ratios[ratios.len() / 2]
    );

    println!(
        "\n{PARALLEL_TASKS} tasks posted at once, {PARALLEL_WORKERS} workers and 1 verifier over libp2p, post of the first to settlement of the last"
    );
    println!(
        "{:>5} {:>18} {:>16} {:>6}",
        "round", "one at a time ms", "in parallel ms", "ratio"
    );
    for round in 0..2 {
        let serial = parallel_round(1, round).await;
        let parallel = parallel_round(0, round).await;
        println!(
            "{round:>5} {:>18.1} {:>16.1} {:>6.2}",
            ms(serial),
            ms(parallel),
            serial.as_secs_f64() / parallel.as_secs_f64()
        );
    }
}

const PARALLEL_TASKS: u64 = 4;
const PARALLEL_WORKERS: usize = 2;

/// A fresh networked node with [`PARALLEL_WORKERS`] workers and one verifier, running at most
/// `cap` tasks at once (0: one per worker): the time from posting [`PARALLEL_TASKS`] tasks to
/// the last one settled.
async fn parallel_round(cap: usize, round: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let buyer = Identity::from_test_label("parallel bench buyer");
    let (node, dispatch, addrs) = open_networked(
        &dir.path().join("node"),
        config(),
        Identity::from_test_label("parallel bench operator"),
        market_net::NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..Default::default()
        },
        P2pOptions {
            max_parallel_tasks: cap,
            ..P2pOptions::default()
        },
    )
    .await
    .unwrap();
    tokio::spawn(node.clone().run_engine());
    node.fund("b", &buyer.account(), 100_000, 0).await.unwrap();
    for i in 0..PARALLEL_WORKERS {
        let worker = Identity::from_test_label(&format!("parallel bench worker {i}"));
        node.fund("b", &worker.account(), 1_000, 0).await.unwrap();
        spawn_worker(&worker, &addrs[0], &dir.path().join(format!("worker-{i}")));
    }
    let verifier = Identity::from_test_label("parallel bench verifier");
    node.fund("b", &verifier.account(), 1_000, 0).await.unwrap();
    spawn_verifier(&verifier, &addrs[0], &dir.path().join("verifier"));
    wait_joined(&dispatch, PARALLEL_WORKERS + 1).await;
    let start = Instant::now();
    let mut ids = Vec::new();
    for n in 0..PARALLEL_TASKS {
        let spec = task(&buyer, 1_000 + round * 100 + n);
        ids.push(
            node.post_task(Signed::sign(spec, &buyer).unwrap())
                .await
                .unwrap()
                .id,
        );
    }
    for id in ids {
        let t = node
            .wait_final(&id, Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(t.state, TaskState::Settled);
    }
    start.elapsed()
}

/// Waits until `n` participants are connected.
async fn wait_joined(dispatch: &market_node::p2p::P2pDispatch, n: usize) {
    while dispatch
        .participants()
        .values()
        .filter(|p| p.connected)
        .count()
        < n
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
