//! The node's engine: posting (escrow), assignment, commitment records and beacons, audits by
//! randomly drawn verifiers, referee, settlement and slashing. Every credit movement goes
//! through the ledger with an idempotency key, so a node killed at any point and restarted
//! re-runs its steps without paying or refunding twice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use market_ledger::{EntryKind, IdempotencyKey, Ledger, LedgerError, OpError};
use market_protocol::{
    AccountId, Beacon, ChallengeSeed, Commitment, CommitmentId, Credits, ExecutionProfile, Hash,
    Identity, Signed, TaskId, TaskSpec, Verdict, VerdictId, VerdictOutcome, Workload,
};
use market_verifier::SamplePolicy;
use tokio::sync::{broadcast, Notify};

use crate::audit_plan;
use crate::blobs::BlobStore;
use crate::config::NodeConfig;
use crate::dispatch::Dispatch;
use crate::error::ApiError;
use crate::model::{Attempt, TaskRecord, TaskState, VerdictSummary};
use crate::store::Store;

/// Verifiers drawn beyond those wanted, to stand in for ones that do not answer.
const MAX_STAND_INS: usize = 2;

/// The node: its state, its ledger and its workers' dispatcher.
pub struct Node {
    /// Settings.
    pub config: NodeConfig,
    /// The credit ledger (the only place credits move).
    pub ledger: Arc<Ledger>,
    /// Blobs.
    pub blobs: BlobStore,
    /// Tasks, accounts, nonces.
    pub store: Store,
    /// The operator key (signs ledger entries and receipts).
    pub operator: Identity,
    /// Hands out work.
    pub dispatch: Arc<dyn Dispatch>,
    /// Task events for `/v1/events` (JSON lines).
    pub events: broadcast::Sender<String>,
    bundles: PathBuf,
    wake: Notify,
    /// Tasks claimed by the engine (being assigned, run, audited, settled or rejected) or by a
    /// cancel: a task claimed by one is skipped by the other.
    claimed: Mutex<BTreeSet<TaskId>>,
    /// Workers running a task now (each runs one at a time).
    busy: Mutex<BTreeSet<AccountId>>,
    /// One audit at a time per verifier: tasks settle in parallel, and a verifier re-executing
    /// several at once would run each past its timeout. A permit is taken before the audit is
    /// sent, so the timeout counts from when the verifier can start.
    audit_slots: Mutex<std::collections::BTreeMap<AccountId, Arc<tokio::sync::Semaphore>>>,
    /// Slashes read a stake and then take from it; two at once of one account would both take
    /// the whole stake and the second would fail.
    slashing: tokio::sync::Mutex<()>,
}

/// Holds a task's claim (and its worker's busy mark) until dropped: whatever way the work on
/// it ends (an error, a panic, a dropped request), the task and the worker are free again.
struct Claim {
    node: Arc<Node>,
    task: TaskId,
    worker: Option<AccountId>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(w) = self.worker {
            lock(&self.node.busy).remove(&w);
        }
        lock(&self.node.claimed).remove(&self.task);
        self.node.wake();
    }
}

/// What the engine does next with a claimed task.
#[derive(Debug)]
enum Step {
    /// Runs it on this worker.
    Run(AccountId),
    /// Rejects it, for this reason.
    Reject(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("operator", &self.operator.account())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node's data directory (ledger, store, blobs, bundles). Tasks a crash left
    /// running or auditing go back to the queue; their ledger steps are idempotent.
    pub fn open(
        data: &Path,
        config: NodeConfig,
        operator: Identity,
        dispatch: Arc<dyn Dispatch>,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(data)?;
        let ledger = Arc::new(Ledger::open(
            &data.join("ledger"),
            operator.clone(),
            Default::default(),
        )?);
        let store = Store::open(&data.join("node"))?;
        let blobs = BlobStore::open(&data.join("blobs"), config.max_blob_bytes)?;
        let bundles = data.join("bundles");
        std::fs::create_dir_all(&bundles)?;
        let (events, _) = broadcast::channel(1024);
        let node = Arc::new(Self {
            config,
            ledger,
            blobs,
            store,
            operator,
            dispatch,
            events,
            bundles,
            wake: Notify::new(),
            claimed: Mutex::new(BTreeSet::new()),
            busy: Mutex::new(BTreeSet::new()),
            audit_slots: Mutex::new(std::collections::BTreeMap::new()),
            slashing: tokio::sync::Mutex::new(()),
        });
        for mut t in node.store.tasks(None, usize::MAX)? {
            if matches!(
                t.state,
                TaskState::Running { .. } | TaskState::Auditing { .. }
            ) {
                tracing::warn!(task = %t.id, "task interrupted by a restart: back to the queue");
                // The interrupted attempt is not the worker's failure: forget it, so the same
                // worker may run it again. Its ledger steps, if any, are idempotent: a
                // deterministic re-run records the same commitment under the same key.
                if t.attempts
                    .last()
                    .is_some_and(|a| !a.accepted && a.verdicts.is_empty())
                {
                    t.attempts.pop();
                }
                t.state = TaskState::Queued;
                node.store.save_task(&t)?;
            }
        }
        Ok(node)
    }

    fn emit(&self, t: &TaskRecord) {
        let event = serde_json::json!({"task": t.id, "state": t.state});
        let _ = self.events.send(event.to_string());
    }

    fn save(&self, t: &TaskRecord) -> anyhow::Result<()> {
        self.store.save_task(t)?;
        self.emit(t);
        Ok(())
    }

    /// Appends on a blocking thread (an append waits for its flush). `k` names the operation
    /// (`kind:task:...`); it is shortened to `kind:` + 48 hex digits of its blake3 to fit the
    /// ledger's key limit while staying unique.
    async fn append(&self, k: String, kind: EntryKind) -> anyhow::Result<market_ledger::Appended> {
        let ledger = self.ledger.clone();
        let prefix = k.split(':').next().unwrap_or("op");
        let k = IdempotencyKey::new(format!(
            "{prefix}:{}",
            &Hash::of(k.as_bytes()).to_hex()[..48]
        ))?;
        Ok(tokio::task::spawn_blocking(move || ledger.append(k, kind)).await??)
    }

    /// Operator action: mints `mint` credits to `account` and stakes `stake` of them (for
    /// devnets, tests and onboarding). Idempotent under `label`.
    pub async fn fund(
        &self,
        label: &str,
        account: &AccountId,
        mint: u64,
        stake: u64,
    ) -> anyhow::Result<()> {
        if mint > 0 {
            self.append(
                format!("mint:{label}:{account}"),
                EntryKind::Mint {
                    amount: Credits(mint),
                    to: *account,
                },
            )
            .await?;
        }
        if stake > 0 {
            self.append(
                format!("stake:{label}:{account}"),
                EntryKind::Stake {
                    account: *account,
                    amount: Credits(stake),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// A participant's own decision, from its signed hello: keep at least `target` staked,
    /// taken from its balance. Returns its stake and balance afterwards.
    pub async fn hold_stake(&self, account: &AccountId, target: u64) -> anyhow::Result<(u64, u64)> {
        let current = self.stake(account);
        if target > current {
            self.append(
                format!("stake:hello:{account}:{current}:{target}"),
                EntryKind::Stake {
                    account: *account,
                    amount: Credits(target - current),
                },
            )
            .await?;
        }
        Ok((self.stake(account), self.ledger.balance(account).0))
    }

    /// Looks at the queue now (a worker or verifier just joined).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until task `id` is settled, rejected or cancelled, or `timeout` passes.
    pub async fn wait_final(
        &self,
        id: &TaskId,
        timeout: std::time::Duration,
    ) -> anyhow::Result<TaskRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let t = self
                .store
                .task(id)?
                .ok_or_else(|| anyhow::anyhow!("no task {id}"))?;
            if t.state.is_final() {
                return Ok(t);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("task {id} still {} after {timeout:?}", t.state.name());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Validates a buyer's signed task, shows the audit plan, escrows the price and queues it.
    pub async fn post_task(&self, signed: Signed<TaskSpec>) -> Result<TaskRecord, ApiError> {
        let spec = signed
            .verify()
            .map_err(|e| ApiError::bad_request("bad_task_signature", e.to_string()))?
            .clone();
        let id = TaskId(
            signed
                .id()
                .map_err(|e| ApiError::bad_request("not_canonical", e.to_string()))?,
        );
        if let Some(existing) = self.store.task(&id).map_err(ApiError::internal)? {
            return Ok(existing);
        }
        // Built with the task's own profile: the node referees split verdicts and makes
        // ringers by re-executing, so it takes only tasks its own build can run (a node for
        // `cuda` tasks is built with the `cuda` feature and has a GPU).
        let check = match &spec.workload {
            Workload::Training(_) => {
                market_compute::TrainingJob::from_spec(&spec, &self.blobs).map(|_| ())
            }
            Workload::Inference(_) => {
                market_compute::InferenceJob::from_spec(&spec, &self.blobs).map(|_| ())
            }
        };
        check.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_task",
                e.to_string(),
            )
        })?;
        let plan = audit_plan::plan(&spec).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_task",
                e.to_string(),
            )
        })?;
        let fees = self.config.verifier_fee * self.config.verifiers_per_task as u64;
        if spec.price.0 <= fees {
            return Err(ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "price_too_low", format!("the price {} does not cover {} verifiers at a fee of {} each and leave anything for the worker", spec.price.0, self.config.verifiers_per_task, self.config.verifier_fee)));
        }
        let kind = EntryKind::Escrow {
            amount: spec.price,
            buyer: spec.buyer,
            spec: Some(signed.clone()),
            task_id: id,
        };
        let appended = match self.append(format!("escrow:{id}"), kind).await {
            Ok(a) => a,
            Err(e) => {
                return Err(match e.downcast_ref::<LedgerError>() {
                    Some(LedgerError::Refused(OpError::Overdraft { .. })) => ApiError::new(
                        axum::http::StatusCode::PAYMENT_REQUIRED,
                        "insufficient_balance",
                        format!(
                            "account {} has {} credits; the task's price is {}",
                            spec.buyer,
                            self.ledger.balance(&spec.buyer),
                            spec.price
                        ),
                    ),
                    Some(LedgerError::Refused(op)) => ApiError::conflict("refused", op.to_string()),
                    _ => ApiError::internal(e),
                })
            }
        };
        let record = TaskRecord {
            id,
            spec: signed,
            order: self.store.next_order().map_err(ApiError::internal)?,
            state: TaskState::Queued,
            plan,
            verifier_fee: self.config.verifier_fee,
            attempts: Vec::new(),
            outputs: Vec::new(),
            ledger_seqs: vec![appended.seq()],
        };
        self.save(&record).map_err(ApiError::internal)?;
        self.wake.notify_one();
        Ok(record)
    }

    /// Cancels a queued task and refunds its escrow. Only its buyer may.
    pub async fn cancel(
        self: &Arc<Self>,
        id: &TaskId,
        requester: &AccountId,
    ) -> Result<TaskRecord, ApiError> {
        // Claimed, the task cannot be handed to a worker while it is being cancelled.
        if !lock(&self.claimed).insert(*id) {
            return Err(ApiError::conflict(
                "not_cancellable",
                "the task is being handed to a worker or settled; try again",
            ));
        }
        let claim = Claim {
            node: self.clone(),
            task: *id,
            worker: None,
        };
        // Its own task, so a client that hangs up cannot stop a cancel halfway.
        let (node, id, requester) = (self.clone(), *id, *requester);
        tokio::spawn(async move {
            let result = node.cancel_claimed(&id, &requester).await;
            drop(claim);
            result
        })
        .await
        .map_err(ApiError::internal)?
    }

    async fn cancel_claimed(
        &self,
        id: &TaskId,
        requester: &AccountId,
    ) -> Result<TaskRecord, ApiError> {
        let mut t = self
            .store
            .task(id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found("task"))?;
        if t.spec.body.buyer != *requester {
            return Err(ApiError::forbidden("only the task's buyer may cancel it"));
        }
        if t.state == TaskState::Cancelled {
            return Ok(t);
        }
        if t.state != TaskState::Queued {
            return Err(ApiError::conflict(
                "not_cancellable",
                format!(
                    "the task is {}; only queued tasks can be cancelled",
                    t.state.name()
                ),
            ));
        }
        let refund = self.refund_rest(&t).await.map_err(ApiError::internal)?;
        t.ledger_seqs.extend(refund);
        t.state = TaskState::Cancelled;
        self.save(&t).map_err(ApiError::internal)?;
        Ok(t)
    }

    async fn refund_rest(&self, t: &TaskRecord) -> anyhow::Result<Option<u64>> {
        let Some(escrow) = self.ledger.escrow_of(&t.id) else {
            return Ok(None);
        };
        if escrow.remaining.0 == 0 {
            return Ok(None);
        }
        let a = self
            .append(
                format!("refund:{}", t.id),
                EntryKind::Refund {
                    amount: escrow.remaining,
                    buyer: t.spec.body.buyer,
                    task_id: t.id,
                },
            )
            .await?;
        Ok(Some(a.seq()))
    }

    /// Runs queued tasks forever: each on its own worker, as many at once as the dispatcher
    /// allows ([`Dispatch::concurrent_tasks`]: one when the workers share this machine's cores,
    /// all the workers there are on a network).
    pub async fn run_engine(self: Arc<Self>) {
        loop {
            let room = lock(&self.claimed).len() < self.dispatch.concurrent_tasks().max(1);
            let next = if room { self.claim_next() } else { Ok(None) };
            match next {
                Ok(Some((id, step))) => {
                    let claim = Claim {
                        node: self.clone(),
                        task: id,
                        worker: match &step {
                            Step::Run(w) => Some(*w),
                            Step::Reject(_) => None,
                        },
                    };
                    let node = self.clone();
                    tokio::spawn(async move {
                        // A panic in `process` comes back here as an error (its own task).
                        let outcome = tokio::spawn(node.clone().process(id, step))
                            .await
                            .map_err(anyhow::Error::from)
                            .and_then(|r| r);
                        if let Err(e) = outcome {
                            tracing::error!(task = %id, error = %e, "task processing failed; back to the queue");
                            if let Ok(Some(mut t)) = node.store.task(&id) {
                                if !t.state.is_final() {
                                    t.state = TaskState::Queued;
                                    let _ = node.save(&t);
                                }
                            }
                            // Still claimed, so a failing task is not retried in a tight loop.
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                        node.forget_bundles_if_final(&id);
                        drop(claim);
                    });
                    // Claiming never waits, so yield between claims: a long queue must not hold
                    // this thread, and a runtime shutting down (which drops the spawned work and
                    // with it the claim at once) must be able to stop this loop.
                    tokio::task::yield_now().await;
                }
                Ok(None) => {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        self.wake.notified(),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "store failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Removes a settled or rejected task's result bundles (all attempts), unless the config
    /// keeps them.
    fn forget_bundles_if_final(&self, id: &TaskId) {
        if self.config.keep_bundles {
            return;
        }
        let Ok(Some(t)) = self.store.task(id) else {
            return;
        };
        if !t.state.is_final() {
            return;
        }
        for n in 0..t.attempts.len() {
            let dir = self.bundles.join(format!("{id}-{n}"));
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(task = %id, dir = %dir.display(), error = %e, "could not remove a bundle");
                }
            }
        }
    }

    /// Claims the oldest queued task that can go ahead now, with what to do with it. A task
    /// waits, without holding up the tasks behind it, until an idle staked worker and a staked
    /// verifier that run its profile are there (a `cuda` task must not stall the queue of a
    /// CPU-only market); it is rejected after `max_attempts`, or when it has been tried and no
    /// other worker, busy or idle, could take it.
    fn claim_next(&self) -> anyhow::Result<Option<(TaskId, Step)>> {
        // Locked before the read: every save of a claimed task happens before its claim is
        // released, so what is read here is current for every task not claimed.
        let mut claimed = lock(&self.claimed);
        let mut busy = lock(&self.busy);
        for t in self.store.queued_tasks()? {
            if t.state != TaskState::Queued || claimed.contains(&t.id) {
                continue;
            }
            let eligible = self.eligible_workers(&t);
            let step = if t.attempts.len() >= self.config.max_attempts {
                Step::Reject("no worker produced a result that passed its audits".into())
            } else if eligible.is_empty() && !t.attempts.is_empty() {
                Step::Reject("no other staked worker is available".into())
            } else {
                // The least-used idle worker; ties go to the dispatcher's order.
                let idle = eligible
                    .into_iter()
                    .filter(|w| !busy.contains(w))
                    .min_by_key(|w| self.store.participant(w).map(|p| p.tasks_done).unwrap_or(0));
                match idle {
                    Some(w) if self.has_verifier_for(t.spec.body.profile) => {
                        busy.insert(w);
                        Step::Run(w)
                    }
                    _ => continue,
                }
            };
            claimed.insert(t.id);
            return Ok(Some((t.id, step)));
        }
        Ok(None)
    }

    fn has_verifier_for(&self, profile: ExecutionProfile) -> bool {
        !self.eligible_verifiers(profile).is_empty()
    }

    /// Verifiers with enough stake that run `profile`, in the dispatcher's order.
    fn eligible_verifiers(&self, profile: ExecutionProfile) -> Vec<AccountId> {
        self.dispatch
            .verifiers()
            .into_iter()
            .filter(|v| {
                self.stake(v) >= self.config.min_verifier_stake && self.dispatch.runs(v, profile)
            })
            .collect()
    }

    fn stake(&self, a: &AccountId) -> u64 {
        self.ledger.stake(a).0
    }

    /// Whether `worker` is running a task now.
    pub fn is_busy(&self, worker: &AccountId) -> bool {
        lock(&self.busy).contains(worker)
    }

    /// The public view of a task, with what it waits for if it is queued: a buyer whose task
    /// sits in the queue learns why (no worker or verifier for its profile, or none free).
    pub fn view(&self, t: &TaskRecord) -> crate::model::TaskView {
        let mut view = t.view();
        if t.state == TaskState::Queued {
            let profile = t.spec.body.profile.name();
            let eligible = self.eligible_workers(t);
            view.waiting_for = if eligible.is_empty() {
                Some(format!("a staked worker that runs the {profile} profile"))
            } else if !self.has_verifier_for(t.spec.body.profile) {
                Some(format!("a staked verifier that runs the {profile} profile"))
            } else if eligible.iter().all(|w| lock(&self.busy).contains(w)) {
                Some("a worker to finish its current task".into())
            } else if lock(&self.claimed).len() >= self.dispatch.concurrent_tasks().max(1) {
                Some("room: the node runs as many tasks at once as it allows".into())
            } else {
                None
            };
        }
        view
    }

    /// Workers, busy or idle, with enough stake that run the task's profile and have not yet
    /// tried it, in the dispatcher's order.
    fn eligible_workers(&self, t: &TaskRecord) -> Vec<AccountId> {
        let tried: Vec<AccountId> = t.attempts.iter().map(|a| a.worker).collect();
        let profile = t.spec.body.profile;
        self.dispatch
            .workers()
            .into_iter()
            .filter(|w| {
                !tried.contains(w)
                    && self.stake(w) >= self.config.min_worker_stake
                    && self.dispatch.runs(w, profile)
            })
            .collect()
    }

    /// How many verifiers audit a worker's result: all of `verifiers_per_task` until its
    /// reputation reaches `trusted_reputation` (earned one accepted task at a time, lost five
    /// at a time), then one fewer per further `trusted_reputation` points, never below the floor.
    pub fn verifiers_for(&self, worker: &AccountId) -> usize {
        let rep = self.ledger.reputation(worker).max(0);
        let step = self.config.trusted_reputation.max(1);
        let relief = (rep / step) as usize;
        self.config
            .verifiers_per_task
            .saturating_sub(relief)
            .max(self.config.min_verifiers_per_task)
            .max(1)
    }

    /// Orders every eligible verifier by weighted draws without replacement (weights from
    /// stake and reputation), from a stream keyed by the beacon, so the worker could not know
    /// them when it committed. The first [`Node::verifiers_for`] audit; the rest stand in, in
    /// order, for any that fails to answer.
    fn draw_verifiers(
        &self,
        beacon: &Beacon,
        exclude: &AccountId,
        profile: ExecutionProfile,
    ) -> Vec<AccountId> {
        let mut pool: Vec<(AccountId, u64)> = self
            .eligible_verifiers(profile)
            .into_iter()
            .filter(|v| v != exclude)
            .map(|v| {
                let rep = self.ledger.reputation(&v);
                // Reputation scales the weight: slow to earn (+10% a point), quick to lose (halved per point lost).
                let w = if rep >= 0 {
                    self.stake(&v) * (10 + rep.min(100) as u64) / 10
                } else {
                    self.stake(&v) >> (-rep).min(32)
                };
                (v, w.max(1))
            })
            .collect();
        pool.sort();
        let mut rng = market_protocol::sampling::seed_stream(&ChallengeSeed(Hash::of(
            &[b"verifiers".as_slice(), beacon.as_bytes()].concat(),
        )));
        let mut chosen = Vec::new();
        while !pool.is_empty() {
            let total: u64 = pool.iter().map(|(_, w)| w).sum();
            let mut x = market_protocol::sampling::uniform_below(&mut rng, total);
            let i = pool
                .iter()
                .position(|(_, w)| {
                    if x < *w {
                        true
                    } else {
                        x -= w;
                        false
                    }
                })
                .unwrap_or(0);
            chosen.push(pool.remove(i).0);
        }
        chosen
    }

    /// Takes a claimed task through `step`: rejects it, or runs it on the worker, audits the
    /// result and settles.
    async fn process(self: Arc<Self>, id: TaskId, step: Step) -> anyhow::Result<()> {
        let mut t = self
            .store
            .task(&id)?
            .ok_or_else(|| anyhow::anyhow!("task vanished"))?;
        if t.state != TaskState::Queued {
            // Claimed from a queued record; nothing else moves a claimed task, but be sure.
            return Ok(());
        }
        let worker = match step {
            Step::Run(worker) => worker,
            Step::Reject(reason) => return self.reject(t, reason).await,
        };
        let attempt_no = t.attempts.len();
        t.attempts.push(Attempt {
            worker,
            commitment_id: None,
            commit_seq: None,
            verdicts: Vec::new(),
            accepted: false,
        });
        t.state = TaskState::Running {
            worker,
            done: 0,
            total: 0,
            loss: 0.0,
        };
        self.save(&t)?;

        // Run the task on a blocking thread, with throttled progress.
        let dir = self.bundles.join(format!("{id}-{attempt_no}"));
        let _ = std::fs::remove_dir_all(&dir);
        let node = self.clone();
        let spec = t.spec.body.clone();
        let progress_task = t.clone();
        let run_dir = dir.clone();
        let commitment = tokio::task::spawn_blocking(move || {
            let mut last = 0u32;
            let mut shown = progress_task;
            node.dispatch
                .run(&worker, &spec, &run_dir, &node.blobs, &mut |p| {
                    if p.done >= last.saturating_add(10) || p.done == p.total {
                        last = p.done;
                        shown.state = TaskState::Running {
                            worker,
                            done: p.done,
                            total: p.total,
                            loss: p.loss,
                        };
                        let _ = node.store.save_task(&shown);
                        node.emit(&shown);
                    }
                })
        })
        .await?;
        let mut t = self
            .store
            .task(&id)?
            .ok_or_else(|| anyhow::anyhow!("task vanished"))?;
        let commitment = match commitment {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(task = %id, %worker, error = %e, "worker failed the task");
                t.state = TaskState::Queued;
                self.save(&t)?;
                return Ok(());
            }
        };
        self.audit_and_settle(t, attempt_no, worker, commitment, dir)
            .await
    }

    async fn audit_and_settle(
        &self,
        mut t: TaskRecord,
        n: usize,
        worker: AccountId,
        commitment: Signed<Commitment>,
        dir: PathBuf,
    ) -> anyhow::Result<()> {
        let id = t.id;
        // The commitment goes into the ledger before any challenge exists; the entry's hash is
        // the beacon, which nobody could know when the commitment was signed. The key names the
        // worker: after a restart the attempt may go to another worker, whose commitment is a
        // new entry rather than a conflict with the first one's.
        let record = self
            .append(
                format!("commit:{id}:{n}:{worker}"),
                EntryKind::Commit {
                    commitment: commitment.clone(),
                    task_id: id,
                    worker,
                },
            )
            .await?;
        let beacon = Beacon(record.hash);
        let cid = CommitmentId(commitment.id()?);
        t.attempts[n].commitment_id = Some(cid);
        t.attempts[n].commit_seq = Some(record.seq());
        t.ledger_seqs.push(record.seq());
        t.state = TaskState::Auditing { worker };
        self.save(&t)?;

        let candidates = self.draw_verifiers(&beacon, &worker, t.spec.body.profile);
        let wanted = self.verifiers_for(&worker);
        if candidates.is_empty() {
            anyhow::bail!("no staked verifier is available");
        }
        let policy = SamplePolicy::Count(t.plan.samples as u32);
        let mut verdicts: Vec<Signed<Verdict>> = Vec::new();
        let mut verifiers = Vec::new();
        // Stand-ins for verifiers that do not answer, but only a few: each silent one costs a
        // timeout.
        for v in candidates.iter().take(wanted + MAX_STAND_INS) {
            if verdicts.len() >= wanted {
                break;
            }
            verifiers.push(*v);
            let mut verdict = self.request_audit(v, &dir, beacon, &policy).await;
            // A mismatch not yet narrowed to a step: the worker opens that segment's steps and
            // the verifier looks again, so the evidence names the first bad step.
            if let Ok(Signed {
                body:
                    Verdict {
                        outcome:
                            VerdictOutcome::Fail {
                                segment,
                                step: None,
                                reason: market_protocol::FailureReason::StateMismatch,
                                ..
                            },
                        ..
                    },
                ..
            }) = &verdict
            {
                if matches!(t.spec.body.workload, Workload::Training(_)) {
                    let (dispatch, d, seg, blobs) = (
                        self.dispatch.clone(),
                        dir.clone(),
                        *segment,
                        self.blobs.clone(),
                    );
                    let opened = tokio::task::spawn_blocking(move || {
                        dispatch.open_steps(&worker, &d, seg, &blobs)
                    })
                    .await?;
                    match opened {
                        Ok(()) => verdict = self.request_audit(v, &dir, beacon, &policy).await,
                        Err(e) => {
                            tracing::info!(%worker, error = %e, "worker did not open per-step states")
                        }
                    }
                }
            }
            match verdict {
                Ok(verdict)
                    if verdict.verify().is_ok()
                        && verdict.body.verifier == *v
                        && verdict.body.commitment_id == cid =>
                {
                    verdicts.push(verdict)
                }
                Ok(_) => {
                    tracing::warn!(verifier = %v, "verdict refused: bad signature or for another commitment; drawing another");
                    verifiers.pop();
                    self.reputation(&format!("silent:{id}:{n}:{v}"), v, -1)
                        .await?;
                }
                Err(e) => {
                    // Unreachable, silent past the timeout, or broken: the next one drawn
                    // stands in; nothing is concluded about the worker from it. Silence costs
                    // the verifier a point of reputation, so it is drawn less often.
                    tracing::warn!(verifier = %v, error = %e, "verifier failed to audit; drawing another");
                    verifiers.pop();
                    self.reputation(&format!("silent:{id}:{n}:{v}"), v, -1)
                        .await?;
                }
            }
        }
        self.plant_ringers(&t, n, &dir, beacon, &verifiers, &policy)
            .await?;
        for verdict in &verdicts {
            let body = &verdict.body;
            t.attempts[n].verdicts.push(VerdictSummary {
                verifier: body.verifier,
                verdict_id: VerdictId(verdict.id()?),
                passed: body.outcome == VerdictOutcome::Pass,
                checked: body.checked.len(),
                detail: match &body.outcome {
                    VerdictOutcome::Pass => None,
                    VerdictOutcome::Fail { detail, .. } => Some(detail.clone()),
                },
            });
        }
        let failing: Vec<&Signed<Verdict>> = verdicts
            .iter()
            .filter(|v| v.body.outcome != VerdictOutcome::Pass)
            .collect();
        let passing: Vec<&Signed<Verdict>> = verdicts
            .iter()
            .filter(|v| v.body.outcome == VerdictOutcome::Pass)
            .collect();
        if verdicts.is_empty() {
            anyhow::bail!("no verdicts");
        }
        // Disagreement: the node referees by re-running only the disputed segment itself.
        let worker_cheated = if failing.is_empty() {
            false
        } else if passing.is_empty() {
            true
        } else {
            let VerdictOutcome::Fail { segment, .. } = failing[0].body.outcome.clone() else {
                unreachable!()
            };
            let blobs = self.blobs.clone();
            let d = dir.clone();
            let finding = tokio::task::spawn_blocking(move || {
                market_verifier::recheck_segments(
                    &market_compute::bundle::Bundle::at(&d),
                    &[segment],
                    &blobs,
                )
            })
            .await??;
            let cheated = finding.is_some();
            // Slash the side that lied.
            let liars: Vec<&Signed<Verdict>> = if cheated {
                passing.clone()
            } else {
                failing.clone()
            };
            for liar in liars {
                self.slash(
                    &t,
                    n,
                    &liar.body.verifier,
                    self.config.verifier_slash,
                    liar,
                    "verdict contradicted by the referee's re-execution",
                    &[],
                )
                .await?;
                self.store
                    .update_participant(&liar.body.verifier, |p| p.slashed += 1)?;
            }
            cheated
        };
        if worker_cheated {
            let evidence = failing[0];
            let catchers: Vec<AccountId> = failing.iter().map(|v| v.body.verifier).collect();
            self.slash(
                &t,
                n,
                &worker,
                self.config.worker_slash,
                evidence,
                "result failed its audit",
                &catchers,
            )
            .await?;
            self.store.update_participant(&worker, |p| {
                p.tasks_failed += 1;
                p.slashed += 1;
            })?;
            for v in &catchers {
                self.store.update_participant(v, |p| {
                    p.audits += 1;
                    p.audits_failed += 1;
                })?;
            }
            t.state = TaskState::Queued;
            self.save(&t)?;
            self.wake.notify_one();
            return Ok(());
        }
        // Accepted: pay the verifiers that vouched for it and the worker, refund any rest.
        let fee = Credits(t.verifier_fee);
        for v in &passing {
            let a = self
                .append(
                    format!("reward:{id}:{}", v.body.verifier),
                    EntryKind::Reward {
                        amount: fee,
                        task_id: id,
                        verdict: Some((*v).clone()),
                        verifier: v.body.verifier,
                    },
                )
                .await?;
            t.ledger_seqs.push(a.seq());
            self.store.update_participant(&v.body.verifier, |p| {
                p.audits += 1;
                p.audits_passed += 1;
            })?;
        }
        // The price less every verifier fee the task reserved (paid to the passing verifiers,
        // the rest refunded). From the escrow's original amount, not what remains, so a re-run
        // of this step after a crash asks for the same release and the ledger's idempotency
        // key recognises it.
        let escrowed = self.ledger.escrow_of(&id).map_or(0, |e| e.amount.0);
        let reserved_fees =
            t.verifier_fee * self.config.verifiers_per_task.max(passing.len()) as u64;
        let pay = escrowed.saturating_sub(reserved_fees);
        let a = self
            .append(
                format!("release:{id}"),
                EntryKind::Release {
                    amount: Credits(pay),
                    commitment: Some(commitment.clone()),
                    task_id: id,
                    worker,
                },
            )
            .await?;
        t.ledger_seqs.push(a.seq());
        if let Some(seq) = self.refund_rest(&t).await? {
            t.ledger_seqs.push(seq);
        }
        self.reputation(&format!("{id}:{n}"), &worker, 1).await?;
        self.store
            .update_participant(&worker, |p| p.tasks_done += 1)?;
        t.outputs = self.collect_outputs(&t, &dir)?;
        t.attempts[n].accepted = true;
        t.state = TaskState::Settled;
        self.save(&t)
    }

    /// Asks verifier `v` to audit the bundle in `dir`, on a blocking thread.
    async fn request_audit(
        &self,
        v: &AccountId,
        dir: &Path,
        beacon: Beacon,
        policy: &SamplePolicy,
    ) -> anyhow::Result<Signed<Verdict>> {
        let slot = lock(&self.audit_slots)
            .entry(*v)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        let turn = slot.clone().acquire_owned().await?;
        let (dispatch, account, d, p, blobs) = (
            self.dispatch.clone(),
            *v,
            dir.to_owned(),
            policy.clone(),
            self.blobs.clone(),
        );
        let verdict =
            tokio::task::spawn_blocking(move || dispatch.audit(&account, &d, beacon, &p, &blobs))
                .await;
        drop((turn, slot));
        // Nobody else waiting for this verifier: forget its slot (verifiers come and go).
        let mut slots = lock(&self.audit_slots);
        if slots.get(v).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(v);
        }
        drop(slots);
        verdict?
    }

    /// Keeps verifiers honest: at the configured rate (drawn from the beacon's stream, so no
    /// verifier can predict it), a verifier is also handed a ringer, a bundle the node knows is
    /// wrong. A verifier that passes it is slashed with its own verdict as evidence.
    async fn plant_ringers(
        &self,
        t: &TaskRecord,
        n: usize,
        dir: &Path,
        beacon: Beacon,
        verifiers: &[AccountId],
        policy: &SamplePolicy,
    ) -> anyhow::Result<()> {
        if self.config.ringer_rate_ppm == 0
            || !matches!(t.spec.body.workload, Workload::Training(_))
        {
            return Ok(());
        }
        let mut rng = market_protocol::sampling::seed_stream(&ChallengeSeed(Hash::of(
            &[b"ringers".as_slice(), beacon.as_bytes()].concat(),
        )));
        for v in verifiers {
            if market_protocol::sampling::uniform_below(&mut rng, 1_000_000)
                >= u64::from(self.config.ringer_rate_ppm)
            {
                continue;
            }
            let ringer_dir = dir.with_extension(format!("ringer-{v}"));
            let ringer_key = Identity::from_secret_bytes(
                *Hash::of(&[b"ringer worker".as_slice(), &self.operator.secret_bytes()].concat())
                    .as_bytes(),
            );
            let (src, dst, layout_task, blobs) = (
                dir.to_owned(),
                ringer_dir.clone(),
                t.spec.body.clone(),
                self.blobs.clone(),
            );
            let made = tokio::task::spawn_blocking(move || {
                make_ringer(&layout_task, &src, &dst, &ringer_key, &blobs)
            })
            .await?;
            if let Err(e) = made {
                // A ringer the node cannot make is skipped; it must never cost the task an attempt.
                tracing::warn!(error = %e, "could not make a ringer");
                let _ = std::fs::remove_dir_all(&ringer_dir);
                continue;
            }
            let verdict = self.request_audit(v, &ringer_dir, beacon, policy).await;
            let _ = std::fs::remove_dir_all(&ringer_dir);
            match verdict {
                Ok(verdict)
                    if verdict.verify().is_ok()
                        && verdict.body.verifier == *v
                        && verdict.body.outcome == VerdictOutcome::Pass =>
                {
                    tracing::warn!(verifier = %v, "verifier passed a ringer: slashed");
                    self.slash(
                        t,
                        n,
                        v,
                        self.config.verifier_slash,
                        &verdict,
                        "passed a planted faulty bundle (ringer)",
                        &[],
                    )
                    .await?;
                    self.store.update_participant(v, |p| p.slashed += 1)?;
                }
                Ok(_) => tracing::debug!(verifier = %v, "ringer caught"),
                Err(e) => {
                    tracing::warn!(verifier = %v, error = %e, "verifier failed to audit a ringer")
                }
            }
        }
        Ok(())
    }

    /// Slashes `amount` (at most the stake) of `account`: a fee to each of `to` and the rest to
    /// the task's buyer, with the verdict as evidence; and a reputation penalty.
    #[allow(clippy::too_many_arguments)]
    async fn slash(
        &self,
        t: &TaskRecord,
        n: usize,
        account: &AccountId,
        amount: u64,
        verdict: &Signed<Verdict>,
        reason: &str,
        to: &[AccountId],
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.slashing.lock().await;
        let mut left = amount.min(self.stake(account));
        let evidence = verdict.id()?;
        let mut payees: Vec<(AccountId, u64)> = to
            .iter()
            .filter(|a| **a != t.spec.body.buyer)
            .map(|a| (*a, t.verifier_fee))
            .collect();
        payees.push((t.spec.body.buyer, u64::MAX));
        for (payee, share) in payees {
            let x = share.min(left);
            if x == 0 {
                continue;
            }
            left -= x;
            self.append(
                format!("slash:{}:{n}:{account}:{payee}:{reason}", t.id),
                EntryKind::Slash {
                    account: *account,
                    amount: Credits(x),
                    evidence,
                    reason: reason.into(),
                    to: payee,
                    verdict: Some(verdict.clone()),
                },
            )
            .await?;
        }
        self.reputation(&format!("{}:{n}", t.id), account, -5).await
    }

    async fn reputation(&self, k: &str, account: &AccountId, delta: i64) -> anyhow::Result<()> {
        self.append(
            format!("rep:{k}:{account}"),
            EntryKind::Reputation {
                account: *account,
                delta,
            },
        )
        .await?;
        Ok(())
    }

    async fn reject(&self, mut t: TaskRecord, reason: String) -> anyhow::Result<()> {
        if let Some(seq) = self.refund_rest(&t).await? {
            t.ledger_seqs.push(seq);
        }
        t.state = TaskState::Rejected { reason };
        self.save(&t)
    }

    /// Copies the accepted result into the blob store, owned by the buyer.
    fn collect_outputs(
        &self,
        t: &TaskRecord,
        dir: &Path,
    ) -> anyhow::Result<Vec<market_protocol::BlobId>> {
        let bundle = market_compute::bundle::Bundle::at(dir);
        let files: Vec<PathBuf> = match &t.spec.body.workload {
            Workload::Training(_) => vec![bundle.weights_path()],
            Workload::Inference(_) => (0..t.plan.segments as u32)
                .map(|i| bundle.item_path(i))
                .collect(),
        };
        let mut ids = Vec::new();
        for f in files {
            let id = self.blobs.put(&std::fs::read(&f)?)?;
            self.store.set_blob_owner(&id, &t.spec.body.buyer)?;
            ids.push(id);
        }
        Ok(ids)
    }
}

/// A ringer made from a real training bundle: every checkpoint after the first is perturbed,
/// the leaves and root recomputed and the commitment re-signed by the node's ringer key. Every
/// proof checks out, but no segment re-executes to its committed end, so any honest audit fails.
fn make_ringer(
    task: &TaskSpec,
    src: &Path,
    dst: &Path,
    key: &Identity,
    blobs: &BlobStore,
) -> anyhow::Result<()> {
    use market_compute::bundle::Bundle;
    let job = market_compute::TrainingJob::from_spec(task, blobs)?;
    let (from, to) = (Bundle::at(src), Bundle::at(dst));
    let _ = std::fs::remove_dir_all(dst);
    to.create()?;
    to.write_task(task)?;
    let mut leaves = from.read_leaves()?;
    for i in 0..leaves.len() as u32 {
        let mut bytes = std::fs::read(from.checkpoint_path(i))?;
        if i > 0 {
            let mut state = market_compute::TrainState::from_bytes(&bytes, &job.layout)?;
            state.params.iter_mut().for_each(|p| *p += 0.01);
            bytes = state.to_bytes(&job.layout)?;
            leaves[i as usize] = market_protocol::StateHash(Hash::of(&bytes));
        }
        to.write(&to.checkpoint_path(i), &bytes)?;
    }
    let mut commitment = from.read_commitment()?.body;
    commitment.worker = key.account();
    commitment.root = market_protocol::MerkleTree::new(&leaves).root();
    commitment.final_state_hash = *leaves
        .last()
        .unwrap_or(&market_protocol::StateHash::default());
    to.write_leaves(&leaves)?;
    to.write_commitment(&Signed::sign(commitment, key)?)?;
    Ok(())
}
