//! Pooled training on the node (issue 14): a pooled task runs as slot-round tasks, round by
//! round; each is committed, audited and paid like any task before its state is merged; a
//! cheating slot is caught before the merge, slashed and re-run by another worker, and the
//! merged states are bit for bit those of an all-honest run; each round is in the ledger; a
//! cancel stops the task and refunds what no round used.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use market_compute::pool::{global_hash, run_locally};
use market_compute::{NoBlobs, TrainingJob};
use market_ledger::{Entry, EntryKind};
use market_node::config::NodeConfig;
use market_node::dispatch::VerifierMode;
use market_node::engine::Node;
use market_node::model::{PoolPart, TaskRecord, TaskState};
use market_protocol::fixtures::training_task;
use market_protocol::{AccountId, BlobId, Identity, Signed, TaskSpec, Workload};
use market_worker::Behavior;

/// 2 slots × 2 rounds of 10 steps, 2 segments per slot-round: the audit plan (99% against a
/// tenth faked) samples every segment, so a cheat is caught every time.
fn pooled(buyer: &Identity, nonce: u64, rounds: u32) -> TaskSpec {
    let mut task = training_task(buyer, nonce);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = rounds * 10;
        t.checkpoint_interval = 5;
        t.pool = Some(market_protocol::fixtures::pool(2, rounds, 10));
    }
    task
}

/// A node with honest in-process workers and one honest verifier (`common::open`).
async fn honest(config: NodeConfig, workers: &[&str], verifier: &str) -> common::Net {
    let workers: Vec<(&str, Behavior)> = workers.iter().map(|w| (*w, Behavior::Honest)).collect();
    common::open(
        tempfile::tempdir().unwrap(),
        config,
        &workers,
        &[(verifier, VerifierMode::Honest)],
    )
    .await
}

fn entries(node: &Node) -> Vec<Entry> {
    (0..=node.ledger.head().seq)
        .map(|s| node.ledger.entry(s).unwrap().unwrap())
        .collect()
}

fn record(node: &Node, id: &market_protocol::TaskId) -> TaskRecord {
    node.store.task(id).unwrap().unwrap()
}

async fn post(node: &Node, buyer: &Identity, task: TaskSpec) -> TaskRecord {
    node.post_task(Signed::sign(task, buyer).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheating_slot_is_caught_before_the_merge_and_the_pool_ends_where_an_honest_one_does() {
    let workers = [
        // First in the dispatcher's order: it gets the first slot.
        ("pool cheat", Behavior::Skip(1.0)),
        ("pool honest a", Behavior::Honest),
        ("pool honest b", Behavior::Honest),
    ];
    let verifiers = [
        ("pool verifier a", VerifierMode::Honest),
        ("pool verifier b", VerifierMode::Honest),
    ];
    let net = common::open(
        tempfile::tempdir().unwrap(),
        NodeConfig::default(),
        &workers,
        &verifiers,
    )
    .await;
    let node = net.node.clone();
    let engine = tokio::spawn(node.clone().run_engine());
    let spec = pooled(&net.buyer, 1, 2);
    let posted = post(&node, &net.buyer, spec.clone()).await;
    assert!(
        matches!(
            posted.state,
            TaskState::Pooling {
                round: 0,
                rounds: 2
            }
        ),
        "{:?}",
        posted.state
    );
    let t = node
        .wait_final(&posted.id, Duration::from_secs(600))
        .await
        .unwrap();
    engine.abort();
    assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
    // The view holds the merged rounds (kept apart from the record).
    let view = node.view(&t);
    let Some(PoolPart::Task(prog)) = &view.pool else {
        panic!("not pooled: {t:?}")
    };

    // The merged states are those of an all-honest run, bit for bit.
    let job = TrainingJob::from_spec(&spec, &NoBlobs).unwrap();
    let honest = run_locally(&job, |_| {}).unwrap();
    let expected: Vec<_> = honest
        .globals
        .iter()
        .map(|g| global_hash(g, &job.layout).unwrap())
        .collect();
    let merged: Vec<_> = prog.history.iter().map(|h| h.global).collect();
    assert_eq!(merged, expected);
    let weights =
        market_compute::init::weights_to_bytes(&job.layout, &honest.globals[1].params).unwrap();
    assert_eq!(t.outputs, vec![BlobId::of(&weights)]);
    assert_eq!(node.blobs.read(&t.outputs[0]).unwrap(), weights);
    for h in &prog.history {
        assert!(h.eval_loss.is_some_and(f32::is_finite), "{h:?}");
    }

    // The cheater ran a slot of round 0, was caught and slashed; another worker ran it again.
    let cheat = Identity::from_test_label("pool cheat").account();
    let round0 = &prog.history[0].slots;
    let failed: u32 = round0.iter().map(|s| s.failed_runs).sum();
    assert_eq!(failed, 1, "{round0:?}");
    assert!(prog
        .history
        .iter()
        .flat_map(|h| &h.slots)
        .all(|s| s.worker != cheat));
    assert_eq!(
        node.ledger.stake(&cheat).0,
        300 - NodeConfig::default().worker_slash
    );
    // Caught once, it is given no other slot of this pool.
    assert_eq!(prog.excluded, vec![cheat]);
    for h in &prog.history[1..] {
        for s in &h.slots {
            let tried = record(&node, &s.task).attempts;
            assert!(tried.iter().all(|a| a.worker != cheat), "{tried:?}");
        }
    }
    for h in &prog.history {
        let workers: BTreeSet<AccountId> = h.slots.iter().map(|s| s.worker).collect();
        assert_eq!(workers.len(), 2, "a round's slots go to distinct workers");
    }

    // The ledger: one round entry per round naming the accepted commitments, one release per
    // slot-round (nothing paid twice), and the escrow spent to the last credit.
    let all = entries(&node);
    let rounds: Vec<_> = all
        .iter()
        .filter_map(|e| match &e.body.kind {
            EntryKind::PoolRound {
                global,
                round,
                slots,
                task_id,
            } if *task_id == t.id => Some((*round, *global, slots.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(rounds.len(), 2);
    for (h, (round, global, slots)) in prog.history.iter().zip(&rounds) {
        assert_eq!((h.round, h.global), (*round, *global));
        let accepted: Vec<_> = h.slots.iter().map(|s| s.commitment_id).collect();
        assert_eq!(*slots, accepted);
    }
    let releases: Vec<(AccountId, u64)> = all
        .iter()
        .filter_map(|e| match &e.body.kind {
            EntryKind::Release {
                task_id,
                worker,
                amount,
                ..
            } if *task_id == t.id => Some((*worker, amount.0)),
            _ => None,
        })
        .collect();
    assert_eq!(releases.len(), 4, "{releases:?}");
    assert!(releases.iter().all(|(w, _)| *w != cheat));
    let paid_out: u64 = all
        .iter()
        .filter_map(|e| match &e.body.kind {
            EntryKind::Release {
                task_id, amount, ..
            }
            | EntryKind::Reward {
                task_id, amount, ..
            }
            | EntryKind::Refund {
                task_id, amount, ..
            } if *task_id == t.id => Some(amount.0),
            _ => None,
        })
        .sum();
    assert_eq!(paid_out, spec.price.0);
    assert_eq!(node.ledger.escrow_of(&t.id).unwrap().remaining.0, 0);
    // Each slot-round's budget: its verifiers' fees and its worker's release.
    let fee = NodeConfig::default().verifier_fee;
    let budget = spec.price.0 / 4;
    assert!(
        releases.iter().all(|(_, a)| *a == budget - 2 * fee),
        "{releases:?}"
    );

    // The buyer's listing shows the pooled task, not its slot-rounds.
    let mine = node
        .store
        .tasks_where(Some(&net.buyer.account()), None, None, 100)
        .unwrap();
    assert_eq!(mine.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_task_cancelled_before_any_slot_ran_is_refunded_in_full() {
    let net = honest(NodeConfig::default(), &["cancel worker"], "cancel verifier").await;
    let node = net.node.clone();
    // No engine: nothing is run.
    let before = node.ledger.balance(&net.buyer.account()).0;
    let posted = post(&node, &net.buyer, pooled(&net.buyer, 2, 3)).await;
    let Some(PoolPart::Task(prog)) = &posted.pool else {
        panic!("not pooled")
    };
    assert_eq!(prog.slot_tasks.len(), 2, "round 0's slot-round tasks");
    let slot = record(&node, &prog.slot_tasks[0]);
    assert_eq!(slot.state, TaskState::Queued);
    // A slot-round is not the buyer's to cancel on its own.
    let e = node
        .cancel(&slot.id, &net.buyer.account())
        .await
        .unwrap_err();
    assert_eq!(e.status, axum::http::StatusCode::CONFLICT);
    let t = node.cancel(&posted.id, &net.buyer.account()).await.unwrap();
    assert_eq!(t.state, TaskState::Cancelled);
    assert!(t.outputs.is_empty());
    for sid in &prog.slot_tasks {
        assert_eq!(record(&node, sid).state, TaskState::Cancelled);
    }
    assert_eq!(node.ledger.balance(&net.buyer.account()).0, before);
    assert_eq!(node.ledger.escrow_of(&t.id).unwrap().remaining.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_task_cancelled_mid_way_keeps_its_merged_rounds_and_refunds_the_rest() {
    let net = honest(
        NodeConfig::default(),
        &["stop worker a", "stop worker b"],
        "stop verifier",
    )
    .await;
    let node = net.node.clone();
    let engine = tokio::spawn(node.clone().run_engine());
    let spec = pooled(&net.buyer, 3, 4);
    let posted = post(&node, &net.buyer, spec.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let t = record(&node, &posted.id);
        if t.rounds().is_some_and(|p| p.round > 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no round merged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.cancel(&posted.id, &net.buyer.account()).await.unwrap();
    let t = node
        .wait_final(&posted.id, Duration::from_secs(300))
        .await
        .unwrap();
    engine.abort();
    assert_eq!(t.state, TaskState::Cancelled);
    let prog = t.rounds().unwrap();
    let merged = node.pool_history(&t.id).unwrap().len();
    assert_eq!(merged as u32, prog.round);
    assert!((1..4).contains(&merged), "{merged} rounds merged");
    // The weights of the last merged state are the buyer's.
    assert_eq!(t.outputs.len(), 1);
    // Paid: the slot-rounds that ran (each merged round's, and any of the round the cancel
    // found started); everything else refunded.
    let escrow = node.ledger.escrow_of(&t.id).unwrap();
    assert_eq!(escrow.remaining.0, 0);
    let budget = spec.price.0 / 8;
    let spent = spec.price.0 - refunded(&node, &t);
    assert!(spent <= budget * 2 * (merged as u64 + 1), "{spent}");
    let fee = NodeConfig::default().verifier_fee;
    assert!(spent >= (budget - fee) * 2 * merged as u64, "{spent}");
}

fn refunded(node: &Node, t: &TaskRecord) -> u64 {
    entries(node)
        .iter()
        .filter_map(|e| match &e.body.kind {
            EntryKind::Refund {
                task_id, amount, ..
            } if *task_id == t.id => Some(amount.0),
            _ => None,
        })
        .sum()
}

/// A worker that ignores the merges: from round 1 on it trains its slot from the task's
/// initial state (with zero moments) instead of the merged one, and says so honestly in its
/// commitment. Its run is otherwise exact, so every verifier passes it (a verifier cannot
/// check a start after round 0); only the node, which assigned the start, can refuse it.
struct StaleStart {
    inner: market_node::dispatch::InProcess,
    stale: Identity,
}

impl market_node::dispatch::Dispatch for StaleStart {
    fn workers(&self) -> Vec<AccountId> {
        self.inner.workers()
    }
    fn verifiers(&self) -> Vec<AccountId> {
        self.inner.verifiers()
    }
    fn runs(&self, p: &AccountId, profile: market_protocol::ExecutionProfile) -> bool {
        self.inner.runs(p, profile)
    }
    fn offers(&self, p: &AccountId) -> Option<market_protocol::Resources> {
        self.inner.offers(p)
    }
    fn concurrent_tasks(&self) -> usize {
        1
    }
    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        slot_round: Option<market_protocol::SlotRound>,
        dir: &std::path::Path,
        blobs: &dyn market_compute::BlobSource,
        progress: &mut dyn FnMut(market_worker::Progress),
    ) -> anyhow::Result<Signed<market_protocol::Commitment>> {
        match slot_round {
            Some(sr) if sr.round > 0 && *worker == self.stale.account() => {
                let job = TrainingJob::from_spec(task, blobs)?;
                let stale = market_compute::pool::slot_start(
                    &job,
                    &market_compute::pool::initial_global(&job),
                    None,
                );
                let mut stale_global = stale.clone();
                stale_global.step = sr.round * 10;
                let start = TrainStateAt(stale_global);
                let named = market_protocol::SlotRound {
                    start: start.0.hash(&job.layout)?,
                    ..sr
                };
                Ok(market_worker::exec_slot_round(
                    task,
                    named,
                    &start.0,
                    &self.stale,
                    Behavior::Honest,
                    &market_compute::bundle::Bundle::at(dir),
                    blobs,
                    &market_worker::CancelToken::default(),
                    progress,
                )?
                .commitment)
            }
            _ => self
                .inner
                .run(worker, task, slot_round, dir, blobs, progress),
        }
    }
    fn audit(
        &self,
        verifier: &AccountId,
        dir: &std::path::Path,
        request: &market_node::dispatch::AuditRequest,
        blobs: &dyn market_compute::BlobSource,
    ) -> anyhow::Result<Signed<market_protocol::Verdict>> {
        self.inner.audit(verifier, dir, request, blobs)
    }
    fn open_steps(
        &self,
        worker: &AccountId,
        dir: &std::path::Path,
        segment: u32,
        blobs: &dyn market_compute::BlobSource,
    ) -> anyhow::Result<()> {
        self.inner.open_steps(worker, dir, segment, blobs)
    }
}

/// A start state, named so the attack reads plainly.
struct TrainStateAt(market_compute::TrainState);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_round_run_from_another_start_than_assigned_is_refused_before_it_is_recorded() {
    let stale = Identity::from_test_label("stale worker");
    let honest = [
        Identity::from_test_label("fresh worker a"),
        Identity::from_test_label("fresh worker b"),
    ];
    let verifier = Identity::from_test_label("stale verifier");
    let dispatch = StaleStart {
        inner: market_node::dispatch::InProcess {
            workers: std::iter::once(&stale)
                .chain(&honest)
                .map(|w| (w.clone(), Behavior::Honest))
                .collect(),
            verifiers: vec![(verifier.clone(), VerifierMode::Honest)],
        },
        stale: stale.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (node, buyer) = common::open_with(
        dir.path(),
        NodeConfig::default(),
        "stale",
        std::sync::Arc::new(dispatch),
        common::Funding::API,
    )
    .await;
    let engine = tokio::spawn(node.clone().run_engine());
    let spec = pooled(&buyer, 4, 2);
    let posted = post(&node, &buyer, spec.clone()).await;
    let t = node
        .wait_final(&posted.id, Duration::from_secs(300))
        .await
        .unwrap();
    engine.abort();
    assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
    // The stale run was refused (the worker slashed as having produced no usable result) and
    // never recorded; the merged states are the honest run's.
    let job = TrainingJob::from_spec(&spec, &NoBlobs).unwrap();
    let expected: Vec<_> = run_locally(&job, |_| {})
        .unwrap()
        .globals
        .iter()
        .map(|g| global_hash(g, &job.layout).unwrap())
        .collect();
    let history = node.pool_history(&t.id).unwrap();
    assert_eq!(
        history.iter().map(|h| h.global).collect::<Vec<_>>(),
        expected
    );
    let round1 = &history[1];
    assert!(round1.slots.iter().all(|s| s.worker != stale.account()));
    let tried_round1: Vec<AccountId> = round1
        .slots
        .iter()
        .flat_map(|s| record(&node, &s.task).attempts)
        .map(|a| a.worker)
        .collect();
    assert!(
        tried_round1.contains(&stale.account()),
        "the stale worker never got a slot of round 1: {tried_round1:?}"
    );
    let commits_by_stale_in_round1 = entries(&node)
        .iter()
        .filter(|e| {
            matches!(&e.body.kind, EntryKind::Commit { commitment, .. }
            if commitment.body.worker == stale.account()
                && commitment.body.slot_round.is_some_and(|s| s.round == 1))
        })
        .count();
    assert_eq!(
        commits_by_stale_in_round1, 0,
        "a refused start was recorded"
    );
    assert!(node.ledger.stake(&stale.account()).0 < 300);
}

/// Red team: a buyer posted tasks that diverge (an inner learning rate of 10; a pooled task
/// whose outer learning rate of 10 breaks the model in its first merge), and every honest
/// worker that ran them was slashed, the slashes paid to the buyer. Now the node confirms a
/// reported divergence with its own run and rejects the task: nobody is slashed, the buyer is
/// refunded what no merged round used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_diverges_is_rejected_and_nobody_is_slashed() {
    let workers = ["diverge worker a", "diverge worker b"];
    let net = honest(NodeConfig::default(), &workers, "diverge verifier").await;
    let node = net.node.clone();
    let engine = tokio::spawn(node.clone().run_engine());
    let before = node.ledger.balance(&net.buyer.account()).0;

    let mut single = training_task(&net.buyer, 10);
    if let Workload::Training(t) = &mut single.workload {
        t.steps = 60;
        if let market_protocol::OptimizerSpec::Adamw { lr, .. } = &mut t.optimizer {
            *lr = "10".parse().unwrap();
        }
    }
    // A slot-round that diverges: the node's check runs the slot-round from its start blob.
    let mut pooled_spec = pooled(&net.buyer, 11, 3);
    if let Workload::Training(t) = &mut pooled_spec.workload {
        if let market_protocol::OptimizerSpec::Adamw { lr, .. } = &mut t.optimizer {
            *lr = "10".parse().unwrap();
        }
    }
    // Red team (issue 15): a `llama` inference task on finite weights whose activations
    // overflow (an MLP of ±3e38: infinities of both signs meet and make NaN): each honest worker's run fails at the first token, and the node's check runs the
    // named item alone.
    let inference = {
        use market_compute::init::weights_to_bytes;
        use market_compute::llama::fixtures::{byte_vocab, hf_tokenizer_json, tiny_config};
        let config = tiny_config();
        let layout = config.layout();
        let mut params = market_compute::init::init_params(
            &market_compute::zoo::ModelConfig::Llama(config),
            &layout,
            5,
        );
        for m in ["gate_proj", "up_proj", "down_proj"] {
            let slot = layout
                .slot(&format!("model.layers.0.mlp.{m}.weight"))
                .range();
            params[slot]
                .iter_mut()
                .for_each(|w| *w = if *w >= 0.0 { 3e38 } else { -3e38 });
        }
        let put = |bytes: &[u8]| {
            let id = node.blobs.put(bytes).unwrap();
            node.store.hold_result(&id, &net.buyer.account()).unwrap();
            id
        };
        let weights = put(&weights_to_bytes(&layout, &params).unwrap());
        let tokenizer = put(&serde_json::to_vec(&hf_tokenizer_json(&byte_vocab())).unwrap());
        let mut spec = market_protocol::fixtures::inference_task(&net.buyer, 12);
        spec.profile = market_protocol::ExecutionProfile::Repro;
        if let Workload::Inference(i) = &mut spec.workload {
            i.model = config.to_spec().unwrap();
            i.weights = Some(weights);
            i.tokenizer = Some(tokenizer);
            i.inputs = market_protocol::InferenceInputs::Prompts {
                prompts: vec!["hello".into(), "again".into()],
                max_new_tokens: 4,
            };
            i.decoding = market_protocol::Decoding::Greedy;
        }
        spec
    };
    let mut spent = 0;
    for spec in [single, pooled_spec, inference] {
        let posted = post(&node, &net.buyer, spec.clone()).await;
        let t = node
            .wait_final(&posted.id, Duration::from_secs(300))
            .await
            .unwrap();
        let TaskState::Rejected { reason } = &t.state else {
            panic!("{:?}", t.state)
        };
        assert!(reason.contains("diverges"), "{reason}");
        spent += spec.price.0 - refunded(&node, &t);
    }
    engine.abort();
    for label in workers {
        let w = Identity::from_test_label(label).account();
        assert_eq!(node.ledger.stake(&w).0, 300, "{label} was slashed");
        assert!(node.ledger.reputation(&w) >= 0, "{label}");
    }
    // The buyer paid only for the pooled task's merged round(s), and received no slash.
    assert_eq!(node.ledger.balance(&net.buyer.account()).0, before - spent);
    let slashes_to_buyer = entries(&node)
        .iter()
        .filter(
            |e| matches!(&e.body.kind, EntryKind::Slash { to, .. } if *to == net.buyer.account()),
        )
        .count();
    assert_eq!(slashes_to_buyer, 0);
}

/// Red team: a pool of more slots than there are workers waited for ever, and a cancel never
/// finished it (the round could neither start untouched nor merge). Now it says what it waits
/// for, and a cancel ends it: the slot that never started is cancelled, the others' paid work
/// stays paid, the rest is refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_more_slots_than_workers_waits_and_a_cancel_ends_it() {
    let net = honest(NodeConfig::default(), &["lonely worker"], "lonely verifier").await;
    let node = net.node.clone();
    let engine = tokio::spawn(node.clone().run_engine());
    let spec = pooled(&net.buyer, 12, 2);
    let posted = post(&node, &net.buyer, spec.clone()).await;
    // One slot settles; the other has nobody to go to.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let view = loop {
        let t = record(&node, &posted.id);
        let view = node.view(&t);
        if view.slots.iter().any(|s| s.state == TaskState::Settled) {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let waiting = view.waiting_for.unwrap_or_default();
    assert!(waiting.starts_with("slot 1 of round 0"), "{waiting}");
    assert!(
        waiting.contains("holds no other slot of this round"),
        "{waiting}"
    );
    node.cancel(&posted.id, &net.buyer.account()).await.unwrap();
    let t = node
        .wait_final(&posted.id, Duration::from_secs(60))
        .await
        .unwrap();
    engine.abort();
    assert_eq!(t.state, TaskState::Cancelled);
    assert!(t.outputs.is_empty(), "no round was merged");
    assert_eq!(node.ledger.escrow_of(&t.id).unwrap().remaining.0, 0);
    let budget = spec.price.0 / 4;
    assert_eq!(
        spec.price.0 - refunded(&node, &t),
        budget - NodeConfig::default().verifier_fee
    );
    let (_, account) = common::call(
        &net.app,
        common::get(&format!("/v1/accounts/{}", net.buyer.account())),
    )
    .await;
    assert_eq!(account["escrowed"], 0, "{account}");
}

/// Red team: a false report of divergence made the node re-run a whole 3,000-step task for
/// nothing, and a node short of memory crashed on it at every restart. The node now checks at
/// most `max_divergence_check_steps` steps; a report beyond that is not checked, costs its
/// worker nothing, and the task goes to another worker (never back to the reporter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergence_reported_too_far_in_is_not_checked_and_slashes_nobody() {
    let workers = ["far worker a", "far worker b"];
    let config = NodeConfig {
        max_divergence_check_steps: 1,
        ..NodeConfig::default()
    };
    let net = honest(config, &workers, "far verifier").await;
    let node = net.node.clone();
    let engine = tokio::spawn(node.clone().run_engine());
    let before = node.ledger.balance(&net.buyer.account()).0;
    let mut spec = training_task(&net.buyer, 20);
    if let Workload::Training(t) = &mut spec.workload {
        t.steps = 60;
        if let market_protocol::OptimizerSpec::Adamw { lr, .. } = &mut t.optimizer {
            *lr = "10".parse().unwrap();
        }
    }
    let posted = post(&node, &net.buyer, spec).await;
    let t = node
        .wait_final(&posted.id, Duration::from_secs(300))
        .await
        .unwrap();
    engine.abort();
    assert!(
        matches!(t.state, TaskState::Rejected { .. }),
        "{:?}",
        t.state
    );
    assert_eq!(
        t.attempts.len(),
        2,
        "each worker tried once: {:?}",
        t.attempts
    );
    assert!(t.attempts.iter().all(|a| a.divergence_claim.is_some()));
    for label in workers {
        let w = Identity::from_test_label(label).account();
        assert_eq!(node.ledger.stake(&w).0, 300, "{label} was slashed");
    }
    assert_eq!(node.ledger.balance(&net.buyer.account()).0, before);
}

/// Issue 14, item 3: a `gpt` task may name an evaluation blob; each merged round's held-out
/// loss is then the merged parameters' loss on its windows (here recomputed apart), and a blob
/// that is not a token blob of the model's vocabulary is refused at post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_task_is_evaluated_on_the_buyers_evaluation_blob() {
    let net = honest(
        NodeConfig::default(),
        &["eval worker a", "eval worker b"],
        "eval verifier",
    )
    .await;
    let node = net.node.clone();
    let token_blob = |tokens: Vec<u32>| {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::U32,
            vec![tokens.len()],
            &bytes,
        )
        .unwrap();
        safetensors::serialize([("tokens", view)], None).unwrap()
    };
    let put = |bytes: &[u8]| {
        let id = node.blobs.put(bytes).unwrap();
        node.store.hold_result(&id, &net.buyer.account()).unwrap();
        id
    };
    // 100 windows of 17 tokens (context 16), vocabulary 16.
    let good = put(&token_blob(
        (0..1700u32).map(|i| (i * 7 + 3) % 16).collect(),
    ));
    let bad = put(&token_blob(vec![16; 40]));
    let with_eval = |nonce, id| {
        let mut spec = pooled(&net.buyer, nonce, 2);
        if let Workload::Training(t) = &mut spec.workload {
            t.eval_dataset = Some(id);
        }
        spec
    };
    let e = node
        .post_task(Signed::sign(with_eval(30, bad), &net.buyer).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_task", "{}", e.message);
    assert!(e.message.contains("vocabulary"), "{}", e.message);

    let engine = tokio::spawn(node.clone().run_engine());
    let spec = with_eval(31, good);
    let posted = post(&node, &net.buyer, spec.clone()).await;
    let t = node
        .wait_final(&posted.id, Duration::from_secs(300))
        .await
        .unwrap();
    engine.abort();
    assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
    let job = TrainingJob::from_spec(&spec, &NoBlobs).unwrap();
    let examples = market_compute::pool::eval_examples(&spec, &node.blobs).unwrap();
    assert_eq!(examples.len(), 100);
    let honest = run_locally(&job, |_| {}).unwrap();
    let history = node.pool_history(&t.id).unwrap();
    for (h, global) in history.iter().zip(&honest.globals) {
        let expected = job.loss_on(&global.params, &examples).unwrap();
        assert_eq!(
            h.eval_loss.map(f32::to_bits),
            Some(expected.to_bits()),
            "{h:?}"
        );
    }
    // It is the buyer's and the node's: workers are not sent it.
    assert!(!spec.blobs().contains(&good));
    assert!(spec.named_blobs().contains(&good));
}
