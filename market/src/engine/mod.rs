//! The node's engine: posting (escrow), assignment, commitment records and beacons, audits by
//! randomly drawn verifiers, referee, settlement and slashing. Every credit movement goes
//! through the ledger with an idempotency key, so a node killed at any point and restarted
//! re-runs its steps without paying or refunding twice.

mod assign;
mod audit;
mod divergence;
pub mod housekeeping;
pub mod operations;
mod post;
mod recover;
pub mod ringers;
mod rotation;
pub mod rounds;
mod settle;
mod slot_states;
pub mod verdicts;
mod view;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use market_ledger::{EntryKind, Ledger};
use market_protocol::{AccountId, Credits, Identity, Signed, TaskId};
use tokio::sync::{broadcast, Notify};

use crate::blobs::BlobStore;
use crate::config::NodeConfig;
use crate::dispatch::Dispatch;
use crate::error::ApiError;
use crate::model::{Attempt, TaskRecord, TaskState};
use crate::store::Store;

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
    /// Served models and requests in flight.
    pub serving: Arc<crate::serving::Serving>,
    /// Where clients' chat templates are rendered: a child process with memory and CPU
    /// limits, since fuel bounds neither (COMPUTE 11.13).
    pub template_sandbox: Arc<crate::template_sandbox::TemplateSandbox>,
    bundles: PathBuf,
    wake: Notify,
    /// Tasks claimed by the engine (being assigned, run, audited, settled or rejected) or by a
    /// cancel: a task claimed by one is skipped by the other.
    claimed: Mutex<BTreeSet<TaskId>>,
    /// Workers running a task now (each runs one at a time), with the task: a worker is freed
    /// when its run ends, so the mark is removed only by the task that set it.
    busy: Mutex<std::collections::BTreeMap<AccountId, TaskId>>,
    /// One audit at a time per verifier: tasks settle in parallel, and a verifier re-executing
    /// several at once would run each past its timeout. A permit is taken before the audit is
    /// sent, so the timeout counts from when the verifier can start.
    audit_slots: Mutex<std::collections::BTreeMap<AccountId, Arc<tokio::sync::Semaphore>>>,
    /// Task posts being validated (building a dataset can take seconds of CPU): a bound, so
    /// a flood of posts cannot take every core.
    validations: Arc<tokio::sync::Semaphore>,
    /// One validation at a time per buyer (a refused post costs nothing, so one account must
    /// not hold every validation slot with posts built to be slow).
    pub(crate) validating: PerAccount,
    /// OpenAI requests being prepared (their chats rendered in the template sandbox), at most
    /// `api::openai::PREPARING` at once.
    pub(crate) preparing: Arc<tokio::sync::Semaphore>,
    /// One OpenAI request prepared at a time per account.
    pub(crate) preparing_by: PerAccount,
    /// Ledger exports streaming now (`max_concurrent_exports` at once).
    pub(crate) exports: Arc<tokio::sync::Semaphore>,
    /// Slashes read a stake and then take from it; two at once of one account would both take
    /// the whole stake and the second would fail.
    slashing: tokio::sync::Mutex<()>,
    /// Tasks whose commitment is recorded (being audited) or whose result is accepted (being
    /// paid) when a restart or an error interrupted them: the engine resumes them, never
    /// re-running or re-auditing a recorded result from scratch.
    resume: Mutex<Vec<TaskId>>,
    /// Tasks whose escrow is in the ledger with no record (a post a crash interrupted), found
    /// at open; the engine finishes or refunds them when it starts.
    orphans: Mutex<Vec<TaskId>>,
    /// Pooled tasks are advanced (a round made, merged or finished) one at a time.
    pooling: tokio::sync::Mutex<()>,
    /// Pooled tasks to advance again: one whose advance failed, or that a restart interrupted.
    pools_pending: Mutex<BTreeSet<TaskId>>,
    /// A test's injected crash: settlement fails after this many more steps.
    settlement_crash: Mutex<Option<usize>>,
    /// Whether that crash happened.
    settlement_crashed: std::sync::atomic::AtomicBool,
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
            self.node.free_worker(&w, &self.task);
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
    /// Resumes the audit or the settlement of its recorded result.
    Resume,
}

pub use operations::Operation;

/// A semaphore of one permit per account, made at its first use: one piece of an account's
/// work of a kind at a time. Kept for good (an account's entry is a few dozen bytes, and only
/// registered accounts, which held credits, reach one).
#[derive(Default)]
pub(crate) struct PerAccount(
    Mutex<std::collections::BTreeMap<AccountId, Arc<tokio::sync::Semaphore>>>,
);

impl PerAccount {
    /// `account`'s semaphore.
    pub(crate) fn of(&self, account: AccountId) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(
            lock(&self.0)
                .entry(account)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1))),
        )
    }
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
    /// Opens the node's data directory (ledger, store, blobs, bundles). A task a crash left
    /// running goes back to the queue; one whose commitment was recorded resumes its audit, and
    /// one whose result was accepted resumes its payments (ledger steps are idempotent).
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
        let exports = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_exports.max(1),
        ));
        let validations = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_validations.max(1),
        ));
        let serving: Arc<crate::serving::Serving> = Default::default();
        let template_sandbox = Arc::new(crate::template_sandbox::TemplateSandbox::new(
            config.template_sandbox.as_deref(),
            config.template_memory_bytes,
            config.template_cpu_secs,
        ));
        if let Some(why) = template_sandbox.unavailable() {
            tracing::warn!("chat tasks and chat requests will be refused: {why}");
        }
        let (stakes, min_stake) = (ledger.clone(), config.min_worker_stake);
        serving.set_eligibility(move |worker| stakes.stake(worker).0 >= min_stake);
        let node = Arc::new(Self {
            config,
            ledger,
            blobs,
            store,
            operator,
            dispatch,
            events,
            serving,
            template_sandbox,
            bundles,
            wake: Notify::new(),
            claimed: Mutex::new(BTreeSet::new()),
            busy: Mutex::new(std::collections::BTreeMap::new()),
            audit_slots: Mutex::new(std::collections::BTreeMap::new()),
            validations,
            validating: PerAccount::default(),
            preparing: Arc::new(tokio::sync::Semaphore::new(crate::api::openai::PREPARING)),
            preparing_by: PerAccount::default(),
            exports,
            slashing: tokio::sync::Mutex::new(()),
            resume: Mutex::new(Vec::new()),
            orphans: Mutex::new(Vec::new()),
            pooling: tokio::sync::Mutex::new(()),
            pools_pending: Mutex::new(BTreeSet::new()),
            settlement_crash: Mutex::new(None),
            settlement_crashed: std::sync::atomic::AtomicBool::new(false),
        });
        for mut t in node.store.tasks(None, usize::MAX)? {
            if matches!(t.state, TaskState::Pooling { .. }) {
                // Whatever its round was doing when the node stopped is picked up.
                lock(&node.pools_pending).insert(t.id);
                continue;
            }
            if !matches!(
                t.state,
                TaskState::Running { .. } | TaskState::Auditing { .. }
            ) {
                continue;
            }
            if t.settlement.is_some() || t.attempts.last().is_some_and(|a| a.commit_seq.is_some()) {
                // A recorded commitment is audited (or an accepted one paid) where it stopped:
                // re-running it would give its worker a second beacon.
                tracing::warn!(task = %t.id, "task interrupted by a restart: resuming it");
                lock(&node.resume).push(t.id);
                continue;
            }
            tracing::warn!(task = %t.id, "task interrupted by a restart: back to the queue");
            // The interrupted run is not the worker's failure: forget it, so the same worker
            // may run it again. A deterministic re-run records the same commitment under the
            // same key, and the same beacon.
            // A run whose worker reported a divergence the node was checking stays: its worker
            // is not handed the task again (a false report must not loop the node).
            if t.attempts
                .last()
                .is_some_and(|a| !a.accepted && a.divergence_claim.is_none())
            {
                t.attempts.pop();
            }
            t.state = TaskState::Queued;
            node.store.save_task(&t)?;
        }
        *lock(&node.orphans) = node.find_orphan_escrows()?;
        Ok(node)
    }

    /// Test hook: the next settlement fails, as a crash would, after `steps` more of its steps
    /// (each ledger append of a settlement is preceded and followed by one).
    #[doc(hidden)]
    pub fn crash_settlement_after(&self, steps: usize) {
        *lock(&self.settlement_crash) = Some(steps);
    }

    /// Test hook: whether the crash armed by [`Node::crash_settlement_after`] happened.
    #[doc(hidden)]
    pub fn settlement_crashed(&self) -> bool {
        self.settlement_crashed
            .load(std::sync::atomic::Ordering::SeqCst)
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

    /// Appends on a blocking thread (an append waits for its flush), idempotent under the
    /// operation's key.
    pub(crate) async fn append(
        &self,
        op: Operation<'_>,
        kind: EntryKind,
    ) -> anyhow::Result<market_ledger::Appended> {
        let ledger = self.ledger.clone();
        let k = op.key()?;
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
                Operation::Mint {
                    label,
                    account: *account,
                },
                EntryKind::Mint {
                    amount: Credits(mint),
                    to: *account,
                },
            )
            .await?;
        }
        if stake > 0 {
            self.append(
                Operation::Stake {
                    label,
                    account: *account,
                },
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
                Operation::StakeHello {
                    account: *account,
                    current,
                    target,
                },
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
                // What it waits for, so that a wait that runs out says why.
                anyhow::bail!(
                    "task {id} still {} after {timeout:?}: {:?}, {} attempt(s), needs {:?}",
                    t.state.name(),
                    t.state,
                    t.attempts.len(),
                    t.needs
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
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
        if let Some(slot) = t.slot() {
            return Err(ApiError::conflict(
                "not_cancellable",
                format!(
                    "this is slot {} of round {} of pooled task {}: cancel that task",
                    slot.slot, slot.round, slot.parent
                ),
            ));
        }
        if matches!(t.state, TaskState::Pooling { .. }) {
            return self.stop_pool(id).await.map_err(ApiError::internal);
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

    /// Runs queued tasks forever: each on its own worker, as many at once as the dispatcher
    /// allows ([`Dispatch::concurrent_tasks`]: one when the workers share this machine's cores,
    /// all the workers there are on a network).
    pub async fn run_engine(self: Arc<Self>) {
        match self.recover_orphan_escrows().await {
            Ok((0, 0)) => {}
            Ok((finished, refunded)) => {
                tracing::warn!(finished, refunded, "posts interrupted by a crash")
            }
            Err(e) => tracing::error!(error = %e, "recovering interrupted posts failed"),
        }
        if let Err(e) = self.finish_rotations() {
            tracing::error!(error = %e, "finishing key rotations failed");
        }
        self.advance_pending_pools().await;
        loop {
            let room = lock(&self.claimed).len() < self.dispatch.concurrent_tasks().max(1);
            let next = if !room {
                Ok(None)
            } else if let Some(id) = self.claim_resumable() {
                Ok(Some((id, Step::Resume)))
            } else {
                self.claim_next()
            };
            match next {
                Ok(Some((id, step))) => {
                    let claim = Claim {
                        node: self.clone(),
                        task: id,
                        worker: match &step {
                            Step::Run(w) => Some(*w),
                            Step::Reject(_) | Step::Resume => None,
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
                            tracing::error!(task = %id, error = %e, "task processing failed");
                            if let Ok(Some(mut t)) = node.store.task(&id) {
                                let recorded = t.settlement.is_some()
                                    || t.attempts.last().is_some_and(|a| a.commit_seq.is_some());
                                if t.state.is_final() {
                                } else if recorded {
                                    // A recorded result is resumed, never run again; not in a
                                    // tight loop (it stays claimed meanwhile).
                                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                                    lock(&node.resume).push(id);
                                } else {
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
                    if !lock(&self.pools_pending).is_empty() {
                        self.advance_pending_pools().await;
                    }
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

    /// Takes a claimed task through `step`: rejects it, or runs it on the worker, audits the
    /// result and settles.
    async fn process(self: Arc<Self>, id: TaskId, step: Step) -> anyhow::Result<()> {
        let t = self
            .store
            .task(&id)?
            .ok_or_else(|| anyhow::anyhow!("task vanished"))?;
        if t.state != TaskState::Queued && !matches!(step, Step::Resume) {
            // Claimed from a queued record; nothing else moves a claimed task, but be sure.
            return Ok(());
        }
        let worker = match step {
            Step::Run(worker) => worker,
            Step::Reject(reason) => return self.reject(t, reason).await,
            Step::Resume => return self.resume_task(t).await,
        };
        // A pooled slot's start held in part is whole before anyone but its keeper runs it.
        let mut t = self.whole_start_for(t, &worker).await?;
        let attempt_no = t.attempts.len();
        t.attempts.push(Attempt {
            worker,
            commitment_id: None,
            commit_seq: None,
            steps: None,
            loss_trace: Vec::new(),
            verdicts: Vec::new(),
            accepted: false,
            plan: None,
            run_millis: None,
            result_failed: false,
            divergence_claim: None,
            excused: false,
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
        let slot_round = t.slot().map(crate::model::SlotRef::slot_round);
        let progress_task = t.clone();
        let run_dir = dir.clone();
        let started = std::time::Instant::now();
        let commitment = tokio::task::spawn_blocking(move || {
            let mut throttle = ProgressThrottle::default();
            let mut shown = progress_task;
            node.dispatch.run(
                &worker,
                &spec,
                slot_round,
                &run_dir,
                &node.blobs,
                &mut |p| {
                    if throttle.admit(p.done, p.total, std::time::Instant::now()) {
                        shown.state = TaskState::Running {
                            worker,
                            done: p.done,
                            total: p.total,
                            loss: p.loss,
                        };
                        let _ = node.store.save_task(&shown);
                        node.emit(&shown);
                    }
                },
            )
        })
        .await?;
        let mut t = self
            .store
            .task(&id)?
            .ok_or_else(|| anyhow::anyhow!("task vanished"))?;
        t.attempts[attempt_no].run_millis =
            Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        // The worker is done with it: free for other tasks while its result is audited.
        self.free_worker(&worker, &id);
        let commitment = match commitment.and_then(|c| self.check_commitment(&t, &worker, c)) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .abandoned(t, attempt_no, worker, &format!("{e:#}"))
                    .await
            }
        };
        self.audit_and_settle(t, attempt_no, worker, commitment, dir)
            .await
    }

    /// What is checked before a commitment is recorded (its full check is the verifiers'): it
    /// is `worker`'s, for this task, with the task's segment count, so no commitment the
    /// task's plan cannot audit ever gets a beacon.
    fn check_commitment(
        &self,
        t: &TaskRecord,
        worker: &AccountId,
        c: Signed<market_protocol::Commitment>,
    ) -> anyhow::Result<Signed<market_protocol::Commitment>> {
        let body = c.verify()?;
        anyhow::ensure!(body.worker == *worker, "the commitment is another worker's");
        anyhow::ensure!(
            body.task_id == t.task_id(),
            "the commitment is for another task"
        );
        // A verifier can check a slot-round's start only in round 0 (a later one needs every
        // merge before it): the node, which assigned it, checks it for every round.
        let assigned = t.slot().map(crate::model::SlotRef::slot_round);
        anyhow::ensure!(
            body.slot_round == assigned,
            "the commitment names slot-round {:?}, the assignment was {:?}",
            body.slot_round,
            assigned
        );
        anyhow::ensure!(
            u64::from(body.segments) == t.plan.segments,
            "the commitment has {} segments, the task {}",
            body.segments,
            t.plan.segments
        );
        Ok(c)
    }

    /// Resumes a task whose result was recorded: pays an accepted one, or goes on auditing.
    async fn resume_task(&self, t: TaskRecord) -> anyhow::Result<()> {
        if t.settlement.is_some() {
            tracing::info!(task = %t.id, "resuming the settlement of an accepted result");
            return self.pay(t).await;
        }
        match t.attempts.len().checked_sub(1) {
            Some(n) if t.attempts[n].commit_seq.is_some() => self.resume_audit(t, n).await,
            _ => Ok(()),
        }
    }
}

/// Which progress reports of a run are saved (an fsync) and announced: only reports that move
/// forward, at most one per [`ProgressThrottle::EVERY`], and besides those the first that says
/// the run is complete. A worker repeating a report, even `done == total`, or inventing totals,
/// costs the node at most two saves a second.
#[derive(Debug, Default)]
struct ProgressThrottle {
    last_done: Option<u32>,
    last_at: Option<std::time::Instant>,
    completed: bool,
}

impl ProgressThrottle {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);

    fn admit(&mut self, done: u32, total: u32, now: std::time::Instant) -> bool {
        let forward = self.last_done.is_none_or(|l| done > l);
        let complete = done == total && !self.completed;
        let due = self
            .last_at
            .is_none_or(|t| now.duration_since(t) >= Self::EVERY);
        let admit = forward && (due || complete);
        if admit {
            self.last_done = Some(done);
            self.last_at = Some(now);
            self.completed |= done == total;
        }
        admit
    }
}

#[cfg(test)]
mod progress_tests {
    use super::ProgressThrottle;
    use std::time::{Duration, Instant};

    /// Issue 12 item 10: a `Progress` with `done == total` forced an fsync and a publish each
    /// time it was sent.
    #[test]
    fn a_worker_repeating_its_last_progress_costs_one_save() {
        let mut t = ProgressThrottle::default();
        let now = Instant::now();
        assert!(t.admit(0, 100, now));
        assert!(
            !t.admit(10, 100, now + Duration::from_millis(100)),
            "too soon"
        );
        assert!(t.admit(11, 100, now + Duration::from_secs(1)), "a while on");
        assert!(!t.admit(5, 100, now + Duration::from_secs(2)), "backwards");
        assert!(
            t.admit(100, 100, now + Duration::from_millis(1100)),
            "complete, at once"
        );
        let mut saved = 0;
        for i in 0..1000u32 {
            // A report every millisecond for a second.
            let later = now + Duration::from_millis(1200 + u64::from(i));
            assert!(!t.admit(100, 100, later), "repeated end");
            saved += usize::from(t.admit(101 + i, 101 + i, later));
        }
        assert!(
            saved <= 2,
            "invented totals saved {saved} times in a second"
        );
    }
}
