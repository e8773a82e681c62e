//! Pooled training over libp2p on loopback (`cargo bench -p market-node --bench pool`): a node,
//! `K` worker daemons and two verifier daemons (one process, each with its own swarm) run a
//! pooled task to settlement. Reported from the real run:
//!
//! - **communication**: bytes moved per round over the workers' links (each slot's start state
//!   the worker fetches, what the node fetches of the final state when the slot-round commits
//!   (its parameters, when they start past its first chunk), and the
//!   checkpoints the audits' challenges open, fetched when each audit is handed out), against
//!   what per-step synchronous data parallel
//!   training would move over the same steps (each of the `K` workers sends its gradient and
//!   receives the averaged one every step: `2 · 4 · params` bytes per worker and step);
//! - **audit cost**: segments the verifiers re-executed against segments the slots trained
//!   (every segment is the same number of steps), for the pooled audit plan at 99% against a
//!   tenth faked, and the time the audits took against the time the runs took.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary reports on stdout.

mod common;

use common::{networked_node, spawn_verifier, spawn_worker};

use std::time::{Duration, Instant};

use market_node::config::NodeConfig;
use market_node::model::{PoolPart, TaskState};
use market_node::p2p::P2pOptions;
use market_protocol::fixtures::training_task;
use market_protocol::{Identity, ModelSpec, Signed, TaskSpec, Workload};

/// One configuration: `slots` × `rounds` of `inner` steps with a checkpoint every `interval`.
struct Case {
    name: &'static str,
    model: ModelSpec,
    slots: u32,
    rounds: u32,
    inner: u32,
    interval: u32,
}

fn spec(buyer: &Identity, case: &Case, nonce: u64) -> TaskSpec {
    let mut spec = training_task(buyer, nonce);
    if let Workload::Training(t) = &mut spec.workload {
        t.model = case.model.clone();
        t.steps = case.rounds * case.inner;
        t.checkpoint_interval = case.interval;
        t.pool = Some(market_protocol::fixtures::pool(
            case.slots,
            case.rounds,
            case.inner,
        ));
    }
    spec.price = market_protocol::Credits(100 * u64::from(case.slots * case.rounds));
    spec
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let wide = ModelSpec::Gpt {
        layers: 4,
        heads: 4,
        width: 128,
        vocab: 16,
        context: 16,
    };
    let small = match training_task(&Identity::from_test_label("x"), 0).workload {
        Workload::Training(t) => t.model,
        Workload::Inference(_) => unreachable!(),
    };
    let cases = [
        Case {
            name: "communication: gpt 4x128, K=4, H=50, R=2, checkpoint every 10",
            model: wide.clone(),
            slots: 4,
            rounds: 2,
            inner: 50,
            interval: 10,
        },
        Case {
            name: "communication at the issue's shape: gpt 4x128, K=4, H=50, R=20, checkpoint every 10",
            model: wide,
            slots: 4,
            rounds: 20,
            inner: 50,
            interval: 10,
        },
        Case {
            name: "audit cost: the example gpt, K=4, H=50, R=20, checkpoint every step",
            model: small,
            slots: 4,
            rounds: 20,
            inner: 50,
            interval: 1,
        },
    ];
    for (n, case) in cases.iter().enumerate() {
        run(case, n as u64).await;
    }
}

async fn run(case: &Case, nonce: u64) {
    println!("\n{}", case.name);
    let dir = tempfile::tempdir().unwrap();
    let buyer = Identity::from_test_label("pool bench buyer");
    let (node, dispatch, addrs) = networked_node(
        &dir.path().join("node"),
        NodeConfig::default(),
        "pool bench operator",
        P2pOptions::default(),
    )
    .await;
    node.fund("b", &buyer.account(), 1_000_000, 0)
        .await
        .unwrap();
    for i in 0..case.slots {
        let w = Identity::from_test_label(&format!("pool bench worker {i}"));
        node.fund("b", &w.account(), 1_000, 0).await.unwrap();
        spawn_worker(&w, &addrs[0], &dir.path().join(format!("w{i}")));
    }
    for i in 0..2 {
        let v = Identity::from_test_label(&format!("pool bench verifier {i}"));
        node.fund("b", &v.account(), 1_000, 0).await.unwrap();
        spawn_verifier(&v, &addrs[0], &dir.path().join(format!("v{i}")));
    }
    for _ in 0..1200 {
        if dispatch
            .participants()
            .values()
            .filter(|p| p.connected)
            .count()
            >= case.slots as usize + 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spec = spec(&buyer, case, nonce);
    let started = Instant::now();
    let posted = node
        .post_task(Signed::sign(spec.clone(), &buyer).unwrap())
        .await
        .unwrap();
    let plan = posted.plan.clone();
    let t = node
        .wait_final(&posted.id, Duration::from_secs(3600))
        .await
        .unwrap();
    let wall = started.elapsed();
    assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
    let view = node.view(&t);
    let Some(PoolPart::Task(prog)) = &view.pool else {
        unreachable!()
    };
    let job = market_compute::TrainingJob::from_spec(&spec, &market_compute::NoBlobs).unwrap();
    let params = job.layout.total() as u64;
    let timings = dispatch.timings();
    let (mut fetched, mut opened, mut execution, mut transfer, mut audits) =
        (0u64, 0u64, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for timing in timings.iter().filter(|x| x.task_id == Some(t.id)) {
        fetched += timing.bytes;
        opened += timing.opened;
        execution += timing.execution;
        transfer += timing.transfer;
        audits += timing.audits.iter().sum::<Duration>();
    }
    // What the start states would move whole (each accepted slot-round's start to its worker
    // once), against the blob bytes the node sent: a worker that keeps its slot copies the
    // moments from its last final state and fetches only the rest.
    let starts_sent = dispatch.blob_bytes_sent();
    // Every start is a whole state's size (those held in part are gone with the pool).
    let state_size = job.initial_state().to_bytes(&job.layout).unwrap().len() as u64;
    let mut starts = 0u64;
    let mut checked = 0u64;
    let mut runs = 0u64;
    for h in &prog.history {
        for s in &h.slots {
            let slot = node.store.task(&s.task).unwrap().unwrap();
            starts += state_size;
            runs += slot.attempts.len() as u64;
            checked += slot
                .attempts
                .iter()
                .flat_map(|a| &a.verdicts)
                .map(|v| v.checked as u64)
                .sum::<u64>();
        }
    }
    let rounds = u64::from(case.rounds);
    let per_round = (fetched + opened + starts_sent) / rounds;
    let per_round_whole = (fetched + opened + starts) / rounds;
    let data_parallel = 2 * 4 * params * u64::from(case.slots) * u64::from(case.inner);
    let trained = u64::from(case.slots * case.rounds) * plan.segments;
    println!(
        "  parameters {params}; {} rounds merged, {runs} runs for {} slot-rounds; wall {:.1} s",
        prog.history.len(),
        case.slots * case.rounds,
        wall.as_secs_f64()
    );
    println!(
        "  per round: {} bytes of start states sent to the workers (whole: {}) + {} bytes of final states and {} bytes of openings to the node = {per_round} (whole starts: {per_round_whole})",
        starts_sent / rounds,
        starts / rounds,
        fetched / rounds,
        opened / rounds
    );
    println!(
        "  per-step data parallel over the same {} steps: {data_parallel} bytes; ratio {:.1} (whole starts: {:.1}); training traffic alone (starts and final states) {:.1}",
        case.inner,
        data_parallel as f64 / per_round as f64,
        data_parallel as f64 / per_round_whole as f64,
        data_parallel as f64 / ((starts_sent + fetched) / rounds) as f64
    );
    if rounds > 1 {
        // Round 0's starts go whole (no worker holds anything of them yet); from round 1 on a
        // slot that stays costs its worker only the parameters' chunks.
        let later_starts =
            starts_sent.saturating_sub(u64::from(case.slots) * state_size) / (rounds - 1);
        let steady = later_starts + fetched / rounds;
        println!(
            "  from round 1 on: {later_starts} bytes of starts + {} bytes of final states per round; training traffic ratio {:.1}",
            fetched / rounds,
            data_parallel as f64 / steady as f64
        );
    }
    println!(
        "  audit plan per slot-round: {} of {} segments per verifier, {} verifiers, detection >= {:.6} against {} faked over the pool",
        plan.samples, plan.segments, plan.verifiers, plan.detection_probability, plan.assumed_faked
    );
    println!(
        "  audit cost: {checked} segments re-executed for {trained} trained = {:.2}%; audit time {:.1} s against run time {:.1} s (transfers {:.1} s)",
        100.0 * checked as f64 / trained as f64,
        audits.as_secs_f64(),
        execution.as_secs_f64(),
        transfer.as_secs_f64()
    );
}
