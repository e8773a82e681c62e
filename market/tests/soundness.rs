//! The audit-soundness attacks, each against a whole node (in-process workers and verifiers):
//! a worker grinding its beacon, a lying verifier, outputs swapped after committing, a crash
//! between settlement appends, a buyer asking for no detection, a silent verifier and
//! throwaway workers, a worker that makes up a divergence. Each test names its attack and fails
//! without the defence.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use market_compute::BlobSource;

use market_ledger::EntryKind;
use market_node::config::NodeConfig;
use market_node::dispatch::{AuditRequest, Dispatch, InProcess, VerifierMode};
use market_node::engine::Node;
use market_node::model::{TaskRecord, TaskState};
use market_protocol::fixtures::training_task;
use market_protocol::*;
use market_worker::{Behavior, Progress};

/// A dispatcher around [`InProcess`] with misbehaviour the library workers do not have: some
/// workers produce nothing, one swaps its weights after committing, some verifiers never
/// answer.
struct Rigged {
    inner: InProcess,
    failing: Vec<AccountId>,
    /// Workers that report, without running anything, that the run diverged at step 3.
    diverges_falsely: Vec<AccountId>,
    swaps_outputs: Vec<AccountId>,
    silent: Vec<AccountId>,
    /// Tasks at once, and how long each run and each audit take beyond their work.
    concurrency: usize,
    run_delay: Duration,
    audit_delay: Duration,
    /// Runs in flight per worker, and the most any worker ever had at once.
    running: std::sync::Mutex<std::collections::BTreeMap<AccountId, usize>>,
    most_runs_at_once: std::sync::atomic::AtomicUsize,
}

impl Dispatch for Rigged {
    fn workers(&self) -> Vec<AccountId> {
        self.inner.workers()
    }
    fn verifiers(&self) -> Vec<AccountId> {
        self.inner.verifiers()
    }
    fn runs(&self, p: &AccountId, profile: ExecutionProfile) -> bool {
        self.inner.runs(p, profile)
    }
    fn offers(&self, p: &AccountId) -> Option<Resources> {
        self.inner.offers(p)
    }
    fn concurrent_tasks(&self) -> usize {
        self.concurrency
    }
    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        slot_round: Option<market_protocol::SlotRound>,
        dir: &Path,
        blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Signed<Commitment>> {
        if self.failing.contains(worker) {
            anyhow::bail!("a throwaway worker gives up");
        }
        if self.diverges_falsely.contains(worker) {
            // The failure a real divergence produces (compute's `NonFinite`), made up.
            anyhow::bail!("non-finite value in `loss` after step 3: the run diverged");
        }
        let now = {
            let mut running = self.running.lock().unwrap();
            let n = running.entry(*worker).or_default();
            *n += 1;
            *n
        };
        self.most_runs_at_once
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.run_delay);
        let c = self
            .inner
            .run(worker, task, slot_round, dir, blobs, progress);
        *self.running.lock().unwrap().entry(*worker).or_default() -= 1;
        let c = c?;
        if self.swaps_outputs.contains(worker) {
            // Foreign weights, committed as the outputs (re-signed by the worker) over honest
            // checkpoints that pass every audit.
            let bundle = market_compute::bundle::Bundle::at(dir);
            let mut w = std::fs::read(bundle.weights_path())?;
            let last = w.len() - 1;
            w[last] ^= 0x40;
            std::fs::write(bundle.weights_path(), &w)?;
            let identity = &self
                .inner
                .workers
                .iter()
                .find(|(i, _)| i.account() == *worker)
                .unwrap()
                .0;
            let mut body = c.body.clone();
            body.outputs = vec![BlobId::of(&w)];
            let c = Signed::sign(body, identity)?;
            bundle.write_commitment(&c)?;
            return Ok(c);
        }
        Ok(c)
    }
    fn audit(
        &self,
        verifier: &AccountId,
        dir: &Path,
        request: &AuditRequest,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<Signed<Verdict>> {
        if self.silent.contains(verifier) {
            anyhow::bail!("verifier {verifier} sent no verdict within the timeout");
        }
        std::thread::sleep(self.audit_delay);
        self.inner.audit(verifier, dir, request, blobs)
    }
    fn open_steps(
        &self,
        worker: &AccountId,
        dir: &Path,
        segment: u32,
        blobs: &dyn BlobSource,
    ) -> anyhow::Result<()> {
        self.inner.open_steps(worker, dir, segment, blobs)
    }
}

struct Market {
    node: Arc<Node>,
    buyer: Identity,
    config: NodeConfig,
}

fn rigged(workers: &[(&Identity, Behavior)], verifiers: &[(&Identity, VerifierMode)]) -> Rigged {
    Rigged {
        inner: InProcess {
            workers: workers.iter().map(|(i, b)| ((*i).clone(), *b)).collect(),
            verifiers: verifiers.iter().map(|(i, m)| ((*i).clone(), *m)).collect(),
        },
        failing: Vec::new(),
        diverges_falsely: Vec::new(),
        swaps_outputs: Vec::new(),
        silent: Vec::new(),
        concurrency: 1,
        run_delay: Duration::ZERO,
        audit_delay: Duration::ZERO,
        running: Default::default(),
        most_runs_at_once: Default::default(),
    }
}

/// A node with `dispatch` (a `Rigged`, or an `Arc` of one the test keeps to look at), its
/// participants funded and staked, and its engine running.
async fn market(
    dir: &Path,
    label: &str,
    dispatch: impl Into<Arc<Rigged>>,
    config: NodeConfig,
) -> Market {
    let dispatch: Arc<Rigged> = dispatch.into();
    let (node, buyer) =
        common::open_with(dir, config.clone(), label, dispatch, common::Funding::LEAN).await;
    tokio::spawn(node.clone().run_engine());
    Market {
        node,
        buyer,
        config,
    }
}

fn small_task(buyer: &Identity, nonce: u64) -> TaskSpec {
    let mut task = training_task(buyer, nonce);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 40;
    }
    task
}

async fn post(m: &Market, nonce: u64) -> TaskId {
    post_spec(m, small_task(&m.buyer, nonce)).await
}

async fn post_spec(m: &Market, spec: TaskSpec) -> TaskId {
    common::post_signed(&m.node, &m.buyer, spec).await
}

async fn settle(m: &Market, nonce: u64) -> TaskRecord {
    settle_spec(m, small_task(&m.buyer, nonce)).await
}

/// `spec` posted, and its record once it is final.
async fn settle_spec(m: &Market, spec: TaskSpec) -> TaskRecord {
    let id = post_spec(m, spec).await;
    m.node
        .wait_final(&id, Duration::from_secs(240))
        .await
        .unwrap()
}

fn stake(m: &Market, who: &Identity) -> u64 {
    m.node.ledger.stake(&who.account()).0
}

/// Every entry of the ledger, in order.
fn entries(m: &Market) -> Vec<market_ledger::Entry> {
    let head = m.node.ledger.head().seq;
    (0..=head)
        .map(|s| m.node.ledger.entry(s).unwrap().unwrap())
        .collect()
}

/// Attack 1 (challenge grinding): the beacon was the hash of the `commit` entry, which the
/// worker can compute before committing (prev, seq, key and its own commitment are all known
/// to it), so it could re-sign until its challenge missed what it faked. The beacon is now the
/// operator's VRF output over the commitment id, proven in the entry: not the entry's hash, not
/// computable without the operator's key, one value per commitment, and what every verdict's
/// challenge was drawn from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_1_the_beacon_cannot_be_computed_by_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("grind worker");
    let vs = [
        Identity::from_test_label("grind v1"),
        Identity::from_test_label("grind v2"),
    ];
    let d = rigged(
        &[(&worker, Behavior::Honest)],
        &[
            (&vs[0], VerifierMode::Honest),
            (&vs[1], VerifierMode::Honest),
        ],
    );
    let m = market(dir.path(), "grind", d, NodeConfig::default()).await;
    let t = settle(&m, 1).await;
    assert_eq!(t.state, TaskState::Settled);
    let seq = t.attempts[0].commit_seq.unwrap();
    let entry = m.node.ledger.entry(seq).unwrap().unwrap();
    let EntryKind::Commit {
        beacon_proof,
        commitment,
        ..
    } = &entry.body.kind
    else {
        panic!("not a commit entry")
    };
    let cid = CommitmentId(commitment.id().unwrap());
    let operator = m.node.operator.account();
    let beacon = market_protocol::beacon::verify_beacon(&operator, &cid, beacon_proof).unwrap();
    // Not the entry's hash (the rule the worker could compute).
    assert_ne!(beacon.0, entry.hash().unwrap());
    // The worker cannot make a proof the ledger accepts: only the operator's key verifies.
    let (_, forged) = market_protocol::beacon::prove_beacon(&worker, &cid);
    assert!(market_protocol::beacon::verify_beacon(&operator, &cid, &forged).is_err());
    // Every rewarded verdict answers the challenge drawn from that beacon for its verifier,
    // each with a sample of its own.
    let plan = t.attempts[0].plan.clone().unwrap();
    let mut samples = Vec::new();
    for e in entries(&m) {
        if let EntryKind::Reward {
            verdict: Some(v), ..
        } = e.body.kind
        {
            let ch = Challenge::derive(
                v.body.verifier,
                cid,
                beacon,
                commitment.body.segments,
                plan.samples as u32,
            )
            .unwrap();
            assert_eq!(v.body.challenge_id, ChallengeId(message_id(&ch).unwrap()));
            samples.push(ch.sampled);
        }
    }
    assert_eq!(samples.len(), 2);
    assert_ne!(samples[0], samples[1]);
}

/// Attack 3 (a lying verifier gets an honest worker slashed): a failure naming a segment its
/// verifier was never asked about was refereed as "withheld", and when every kept verdict
/// failed there was no referee at all. Now a verdict must answer its verifier's challenge and
/// every failure is re-executed by the node: the liar is slashed, the honest worker and
/// verifiers never are, and another verifier takes the liar's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_3_a_lying_verifier_cannot_get_an_honest_worker_slashed() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("liar worker");
    let liar = Identity::from_test_label("liar liar");
    let honest = [
        Identity::from_test_label("liar h1"),
        Identity::from_test_label("liar h2"),
        Identity::from_test_label("liar h3"),
    ];
    let d = rigged(
        &[(&worker, Behavior::Honest)],
        &[
            (&liar, VerifierMode::Liar),
            (&honest[0], VerifierMode::Honest),
            (&honest[1], VerifierMode::Honest),
            (&honest[2], VerifierMode::Honest),
        ],
    );
    let config = NodeConfig {
        verifiers_per_task: 3,
        ..NodeConfig::default()
    };
    let m = market(dir.path(), "liar", d, config).await;
    let mut lies = 0;
    for nonce in 1..=2 {
        let t = settle(&m, nonce).await;
        assert_eq!(t.state, TaskState::Settled, "{t:?}");
        assert_eq!(t.attempts.len(), 1);
        assert!(t.attempts[0].accepted);
        assert!(t.attempts[0].verdicts.iter().all(|v| v.passed));
        lies += entries(&m)
            .iter()
            .filter(|e| matches!(&e.body.kind, EntryKind::Slash { account, .. } if *account == liar.account()))
            .count();
    }
    assert!(lies > 0, "the liar was never drawn");
    assert_eq!(stake(&m, &worker), 300, "the honest worker was slashed");
    assert!(stake(&m, &liar) < 100);
    for h in &honest {
        assert_eq!(stake(&m, h), 100);
    }
    assert!(m.node.ledger.reputation(&worker.account()) > 0);
}

/// Attack 4 (results not bound to the commitment; payment first): swapping the weights after
/// the audit delivered foreign weights to the buyer and still paid. The node now derives the
/// weights from the committed final state (it never reads the worker's weights file) and checks
/// that the commitment's `outputs` name exactly them before anything is paid: a worker that
/// commits foreign weights over honest checkpoints is slashed and unpaid, and the next
/// worker's verified weights reach the buyer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_4_swapped_outputs_are_never_paid_or_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let swapper = Identity::from_test_label("swap worker");
    let honest = Identity::from_test_label("swap honest");
    let vs = [
        Identity::from_test_label("swap v1"),
        Identity::from_test_label("swap v2"),
    ];
    let mut d = rigged(
        &[(&swapper, Behavior::Honest), (&honest, Behavior::Honest)],
        &[
            (&vs[0], VerifierMode::Honest),
            (&vs[1], VerifierMode::Honest),
        ],
    );
    d.swaps_outputs.push(swapper.account());
    let m = market(dir.path(), "swap", d, NodeConfig::default()).await;
    let t = settle(&m, 1).await;
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    assert_eq!(t.attempts.len(), 2);
    assert_eq!(t.attempts[0].worker, swapper.account());
    assert!(t.attempts[0].result_failed && !t.attempts[0].accepted);
    assert!(t.attempts[1].accepted);
    // Nothing released to the swapper; its stake was slashed.
    let released_to_swapper = entries(&m).iter().any(|e| {
        matches!(&e.body.kind, EntryKind::Release { worker, .. } if *worker == swapper.account())
    });
    assert!(!released_to_swapper);
    assert_eq!(stake(&m, &swapper), 300 - m.config.worker_slash);
    // The buyer's weights are the honest run's final parameters, bit for bit.
    let weights = m.node.blobs.read(&t.outputs[0]).unwrap();
    let release = entries(&m)
        .into_iter()
        .find_map(|e| match e.body.kind {
            EntryKind::Release {
                commitment: Some(c),
                worker,
                ..
            } if worker == honest.account() => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(release.body.outputs, vec![BlobId::of(&weights)]);
}

/// Attack 4, found by the red team (a stranger locks the buyer out of its result): a `repro`
/// result is deterministic, so anyone can compute it from the public spec and upload the same
/// bytes first; the first uploader owned the blob and the buyer got 403 on its own weights. The
/// buyer is now always granted reading rights to its results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_4_uploading_the_result_first_does_not_lock_the_buyer_out() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("squat worker");
    let vs = [
        Identity::from_test_label("squat v1"),
        Identity::from_test_label("squat v2"),
    ];
    let d = rigged(
        &[(&worker, Behavior::Honest)],
        &[
            (&vs[0], VerifierMode::Honest),
            (&vs[1], VerifierMode::Honest),
        ],
    );
    let m = market(dir.path(), "squat", d, NodeConfig::default()).await;
    // The squatter computes the result offline and uploads it before the task is posted.
    let squatter = Identity::from_test_label("squatter");
    let spec = small_task(&m.buyer, 1);
    let offline = market_compute::bundle::Bundle::at(dir.path().join("offline"));
    market_worker::exec(
        &spec,
        &squatter,
        Behavior::Honest,
        &offline,
        &market_compute::NoBlobs,
        |_| {},
    )
    .unwrap();
    let weights = std::fs::read(offline.weights_path()).unwrap();
    let squatted = m.node.blobs.put(&weights).unwrap();
    m.node
        .store
        .record_upload(
            &squatted,
            &squatter.account(),
            weights.len() as u64,
            0,
            u64::MAX,
        )
        .unwrap();
    let t = settle(&m, 1).await;
    assert_eq!(t.state, TaskState::Settled);
    assert_eq!(t.outputs, vec![squatted]);
    assert_eq!(
        m.node
            .store
            .may_read_blob(&squatted, &m.buyer.account())
            .unwrap(),
        Some(true)
    );
    // The squatter keeps its own upload; nobody else gains anything.
    let stranger = Identity::from_test_label("squat stranger");
    assert_eq!(
        m.node
            .store
            .may_read_blob(&squatted, &stranger.account())
            .unwrap(),
        Some(false)
    );
}

/// Attack 4 (crash during settlement): a node stopped between any two settlement appends
/// resumes the settlement from what it saved and pays nothing twice and loses nothing: one
/// commitment, one reward per passing verifier, one release, and the chain verifies.
#[test]
fn attack_4_a_crash_between_settlement_appends_pays_nothing_twice() {
    let worker = Identity::from_test_label("crash worker");
    let vs = [
        Identity::from_test_label("crash v1"),
        Identity::from_test_label("crash v2"),
    ];
    let mut crashed_at = Vec::new();
    for k in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let d = || {
            rigged(
                &[(&worker, Behavior::Honest)],
                &[
                    (&vs[0], VerifierMode::Honest),
                    (&vs[1], VerifierMode::Honest),
                ],
            )
        };
        // First life: the node "crashes" at settlement step k (its runtime is dropped).
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (id, crashed) = rt.block_on(async {
            let m = market(dir.path(), "crash", d(), NodeConfig::default()).await;
            m.node.crash_settlement_after(k);
            let id = post(&m, 1).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let t = m.node.store.task(&id).unwrap().unwrap();
                if t.state == TaskState::Settled {
                    break (id, false);
                }
                if t.settlement.is_some() && m.node.settlement_crashed() {
                    break (id, true);
                }
                assert!(tokio::time::Instant::now() < deadline, "{t:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        // Second life: the same data directory, no fault.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let node = Node::open(
                dir.path(),
                NodeConfig::default(),
                Identity::from_test_label("crash operator"),
                Arc::new(d()),
            )
            .unwrap();
            tokio::spawn(node.clone().run_engine());
            let t = node
                .wait_final(&id, Duration::from_secs(120))
                .await
                .unwrap();
            assert_eq!(t.state, TaskState::Settled, "crash at {k}");
            let head = node.ledger.head().seq;
            let (mut rewards, mut releases, mut refunds, mut commits) = (0, 0, 0, 0);
            for s in 0..=head {
                match node.ledger.entry(s).unwrap().unwrap().body.kind {
                    EntryKind::Reward { .. } => rewards += 1,
                    EntryKind::Release { .. } => releases += 1,
                    EntryKind::Refund { .. } => refunds += 1,
                    EntryKind::Commit { .. } => commits += 1,
                    _ => {}
                }
            }
            // Two verifiers drawn and paid: nothing is left in escrow to refund.
            assert_eq!(
                (commits, rewards, releases, refunds),
                (1, 2, 1, 0),
                "crash at {k}"
            );
            let config = NodeConfig::default();
            let price = small_task(&Identity::from_test_label("crash buyer"), 1)
                .price
                .0;
            let fee = config.verifier_fee;
            assert_eq!(
                node.ledger.balance(&worker.account()).0,
                price - fee * config.verifiers_per_task as u64,
                "crash at {k}"
            );
            for v in &vs {
                assert_eq!(node.ledger.balance(&v.account()).0, fee, "crash at {k}");
            }
            assert!(node.ledger.escrow_of(&id).unwrap().remaining.0 == 0);
            node.ledger.verify().unwrap();
            // Issue 12 item 8: the records count the settlement once, however often its
            // steps ran.
            let record = |a: &Identity| node.store.participant(&a.account()).unwrap();
            assert_eq!(record(&worker).tasks_done, 1, "crash at {k}");
            for v in &vs {
                assert_eq!(
                    (record(v).audits, record(v).audits_passed),
                    (1, 1),
                    "crash at {k}"
                );
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        if !crashed {
            break;
        }
        crashed_at.push(k);
    }
    // Crashes were injected before and after each of the settlement's appends.
    assert!(crashed_at.len() >= 8, "{crashed_at:?}");
}

/// Attack 6 (stealing verifier stake with ringers): a task with detection target "0" was
/// planned with no sample, so an honest verifier "passed" a ringer it could not catch. The node
/// refuses targets below its minimum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_6_a_zero_detection_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = Identity::from_test_label("zero v1");
    let d = rigged(&[], &[(&v, VerifierMode::Honest)]);
    let m = market(dir.path(), "zero", d, NodeConfig::default()).await;
    let mut spec = small_task(&m.buyer, 1);
    spec.audit.detection_target = "0".parse().unwrap();
    let err = m
        .node
        .post_task(Signed::sign(spec, &m.buyer).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err.message.contains("below"), "{}", err.message);
}

/// Attack 8 (a silent verifier costs the worker its pay): with the drawn verifier silent, a
/// finished honest run went unpaid and the task was rejected. Now another verifier is drawn,
/// the worker is paid, and the silent verifier loses stake, not only reputation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_8_a_silent_verifier_costs_itself_not_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("silent worker");
    let silent = Identity::from_test_label("silent verifier");
    let answering = Identity::from_test_label("silent answering");
    let mut d = rigged(
        &[(&worker, Behavior::Honest)],
        &[
            (&silent, VerifierMode::Honest),
            (&answering, VerifierMode::Honest),
        ],
    );
    d.silent.push(silent.account());
    let config = NodeConfig {
        verifiers_per_task: 1,
        ..NodeConfig::default()
    };
    let m = market(dir.path(), "silent", d, config).await;
    let mut silences = 0;
    for nonce in 1..=3 {
        let t = settle(&m, nonce).await;
        assert_eq!(t.state, TaskState::Settled, "{t:?}");
        assert_eq!(t.attempts.len(), 1);
        silences = entries(&m)
            .iter()
            .filter(|e| matches!(&e.body.kind, EntryKind::Slash { account, .. } if *account == silent.account()))
            .count();
    }
    assert!(silences > 0, "the silent verifier was never drawn");
    assert_eq!(
        stake(&m, &silent),
        100 - silences as u64 * m.config.silence_slash
    );
    assert_eq!(stake(&m, &worker), 300);
    // Silence is paid to the worker whose pay it delayed, never to the buyer (who could
    // otherwise profit from posting a task too long to audit in time).
    let to_buyer = entries(&m).iter().any(|e| {
        matches!(&e.body.kind, EntryKind::Slash { account, to, .. }
            if *account == silent.account() && *to == m.buyer.account())
    });
    assert!(!to_buyer);
    let paid: u64 = entries(&m)
        .iter()
        .filter_map(|e| match &e.body.kind {
            EntryKind::Release {
                amount, worker: w, ..
            } if *w == worker.account() => Some(amount.0),
            _ => None,
        })
        .sum();
    assert_eq!(
        m.node.ledger.balance(&worker.account()).0,
        paid + silences as u64 * m.config.silence_slash
    );
}

/// Attack 9 (throwaway workers get every task rejected for free): three fresh keys that fail
/// every job took all attempts while an honest worker idled. A failed run now costs its worker
/// stake and reputation, does not count toward `max_attempts`, and a worker with a record is
/// preferred over fresh ones: the task settles with the honest worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_9_throwaway_workers_cannot_get_tasks_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let throwaways = [
        Identity::from_test_label("throwaway 1"),
        Identity::from_test_label("throwaway 2"),
        Identity::from_test_label("throwaway 3"),
    ];
    let honest = Identity::from_test_label("throwaway honest");
    let vs = [
        Identity::from_test_label("throwaway v1"),
        Identity::from_test_label("throwaway v2"),
    ];
    let mut d = rigged(
        &[
            (&throwaways[0], Behavior::Honest),
            (&throwaways[1], Behavior::Honest),
            (&throwaways[2], Behavior::Honest),
            (&honest, Behavior::Honest),
        ],
        &[
            (&vs[0], VerifierMode::Honest),
            (&vs[1], VerifierMode::Honest),
        ],
    );
    d.failing = throwaways.iter().map(Identity::account).collect();
    let m = market(dir.path(), "throwaway", d, NodeConfig::default()).await;
    let first = settle(&m, 1).await;
    assert_eq!(first.state, TaskState::Settled, "{first:?}");
    assert_eq!(first.attempts.len(), 4);
    assert!(first.attempts[3].accepted);
    assert_eq!(first.attempts[3].worker, honest.account());
    for t in &throwaways {
        assert_eq!(stake(&m, t), 300 - m.config.abandon_slash);
        assert!(m.node.ledger.reputation(&t.account()) < 0);
    }
    // The next task goes to the worker with a record at once.
    let second = settle(&m, 2).await;
    assert_eq!(second.attempts.len(), 1);
    assert_eq!(second.attempts[0].worker, honest.account());
}

/// Attack 10 (a worker walks away from a task without the abandon slash): it reports that the
/// run diverged, which a buyer's diverging spec makes an honest worker report too, and which
/// therefore slashes nobody when true (PROTOCOL.md, "Divergence"). The node runs the task itself
/// up to the reported step: in `repro` a run that does not diverge refutes the report, and the
/// liar is slashed as for any run that produced nothing. Where the node cannot judge (a `native`
/// run, whose values differ between machines; a task over `max_divergence_check_memory_bytes`)
/// the liar keeps its stake, a cost PROTOCOL.md states, but never gets the task again: it goes
/// to the honest worker and settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_10_a_made_up_divergence_is_refuted_in_repro_and_never_handed_back() {
    let cases = [
        (
            "repro",
            ExecutionProfile::Repro,
            NodeConfig::default(),
            true,
        ),
        (
            "native",
            ExecutionProfile::Native,
            NodeConfig::default(),
            false,
        ),
        (
            "memory cap",
            ExecutionProfile::Repro,
            NodeConfig {
                max_divergence_check_memory_bytes: 1,
                ..NodeConfig::default()
            },
            false,
        ),
    ];
    for (case, profile, config, refuted) in cases {
        let dir = tempfile::tempdir().unwrap();
        let liar = Identity::from_test_label(&format!("divergence liar {case}"));
        let honest = Identity::from_test_label(&format!("divergence honest {case}"));
        let v = Identity::from_test_label(&format!("divergence verifier {case}"));
        // Ties go to the dispatcher's order: the liar is handed the task first.
        let mut d = rigged(
            &[(&liar, Behavior::Honest), (&honest, Behavior::Honest)],
            &[(&v, VerifierMode::Honest)],
        );
        d.diverges_falsely = vec![liar.account()];
        let m = market(dir.path(), &format!("divergence {case}"), d, config).await;
        let mut spec = small_task(&m.buyer, 1);
        spec.profile = profile;
        let t = settle_spec(&m, spec).await;
        assert_eq!(t.state, TaskState::Settled, "{case}: {t:?}");
        assert_eq!(t.attempts.len(), 2, "{case}: {:?}", t.attempts);
        assert_eq!(t.attempts[0].worker, liar.account(), "{case}");
        assert_eq!(t.attempts[0].divergence_claim, Some(3), "{case}");
        assert!(t.attempts[1].accepted, "{case}");
        assert_eq!(t.attempts[1].worker, honest.account(), "{case}");
        if refuted {
            assert_eq!(stake(&m, &liar), 300 - m.config.abandon_slash, "{case}");
            assert!(m.node.ledger.reputation(&liar.account()) < 0, "{case}");
        } else {
            assert_eq!(stake(&m, &liar), 300, "{case}: unjudged, not slashed");
        }
        assert_eq!(stake(&m, &honest), 300, "{case}");
    }
}

/// Found by review: a worker is freed for other tasks when its run ends, while its result is
/// still audited; the claim of that first task, dropped after its audit, used to clear the busy
/// mark of the worker's next task too, so a third task went to a worker already running one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_never_handed_two_tasks_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("busy worker");
    let vs = [
        Identity::from_test_label("busy v1"),
        Identity::from_test_label("busy v2"),
    ];
    let mut d = rigged(
        &[(&worker, Behavior::Honest)],
        &[
            (&vs[0], VerifierMode::Honest),
            (&vs[1], VerifierMode::Honest),
        ],
    );
    // The first task's audit ends while the second task's run is still going.
    d.concurrency = 3;
    d.run_delay = Duration::from_secs(3);
    d.audit_delay = Duration::from_millis(400);
    let dispatch = Arc::new(d);
    let m = market(dir.path(), "busy", dispatch.clone(), NodeConfig::default()).await;
    let mut ids = Vec::new();
    for nonce in 1..=3 {
        ids.push(post(&m, nonce).await);
    }
    for id in ids {
        let t = m
            .node
            .wait_final(&id, Duration::from_secs(240))
            .await
            .unwrap();
        assert_eq!(t.state, TaskState::Settled, "{t:?}");
    }
    assert_eq!(
        dispatch
            .most_runs_at_once
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// Attack 8, with no verifier to stand in: the attempt was planned for two verifiers and one
/// never answers. After a few empty draws the attempt is re-planned for the verifier that is
/// left (a larger sample, the same detection target): the honest worker is paid, the silent
/// verifier pays once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_8_a_silent_verifier_with_no_stand_in_does_not_stall_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("stall worker");
    let silent = Identity::from_test_label("stall silent");
    let answering = Identity::from_test_label("stall answering");
    let mut d = rigged(
        &[(&worker, Behavior::Honest)],
        &[
            (&silent, VerifierMode::Honest),
            (&answering, VerifierMode::Honest),
        ],
    );
    d.silent.push(silent.account());
    let m = market(dir.path(), "stall", d, NodeConfig::default()).await;
    let t = settle(&m, 1).await;
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    let posted = t.plan.clone();
    let used = t.attempts[0].plan.clone().unwrap();
    assert_eq!((posted.verifiers, used.verifiers), (2, 1));
    assert!(used.samples >= posted.samples, "{used:?} {posted:?}");
    assert!(used.detection_probability >= 0.99, "{used:?}");
    assert_eq!(t.attempts[0].verdicts.len(), 1);
    assert_eq!(t.attempts[0].verdicts[0].verifier, answering.account());
    assert_eq!(stake(&m, &silent), 100 - m.config.silence_slash);
    assert!(m.node.ledger.balance(&worker.account()).0 > 0);
}
