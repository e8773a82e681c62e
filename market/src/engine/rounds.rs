//! Pooled training (`spec/COMPUTE.md` section 10): a pooled task is run as rounds of
//! slot-round tasks. Each slot-round is a task record of its own (the buyer's signed spec, its
//! commitment naming the slot-round), so it is assigned, run, recorded, audited, refereed and
//! paid by the same code as any task; this file only makes a round's slot-round tasks, merges a
//! round once every slot passed, and finishes the pooled task.
//!
//! Every step is idempotent, so a node stopped anywhere picks up where it was: slot-round task
//! ids are derived from (task, round, slot), states are blobs named by their hash, and the
//! round's ledger entry has a key naming the round. The pooled task's record is changed only
//! here (and by a cancel, under the same lock).

use market_compute::pool::{self, GLOBAL_FORMAT};
use market_compute::{TrainState, TrainingJob};
use market_ledger::EntryKind;
use market_protocol::{BlobId, CommitmentId, Hash, StateHash, TaskId};

use super::{lock, Node};
use crate::model::{
    PoolPart, PoolProgress, RoundSummary, SlotRef, SlotSummary, TaskRecord, TaskState,
};

/// The id of slot `slot`'s task record in round `round` of pooled task `parent`:
/// `blake3::derive_key("market v1 pool slot-round task", parent || round_le32 || slot_le32)`.
pub fn slot_task_id(parent: &TaskId, round: u32, slot: u32) -> TaskId {
    let mut h = blake3::Hasher::new_derive_key("market v1 pool slot-round task");
    h.update(parent.0.as_bytes());
    h.update(&round.to_le_bytes());
    h.update(&slot.to_le_bytes());
    TaskId(Hash(*h.finalize().as_bytes()))
}

/// What each slot-round of a pooled task is paid from its escrow of `price`: an equal share
/// for each of its `rounds × slots` slot-rounds (the remainder is refunded at the end).
fn slot_round_budget(price: u64, rounds: u32, slots: u32) -> u64 {
    price / (u64::from(rounds) * u64::from(slots)).max(1)
}

/// What the pool's slot-round tasks of the current round say about it.
enum RoundStatus {
    /// Some are not there yet (a fresh round, or one a crash interrupted while making them).
    Missing,
    /// Every slot passed: merge.
    Passed(Vec<TaskRecord>),
    /// The round cannot be merged: a slot could not be run (`failed`: no worker produced a
    /// result that passed), or a stop cancelled a slot that had not started. The pool ends
    /// once nothing of the round is running any more (`quiet`).
    Halted { failed: Option<String>, quiet: bool },
    /// Work is going on.
    Running,
}

impl Node {
    /// The record of a pooled task at post: no slot-round task yet ([`Node::advance_pool`]
    /// makes them).
    pub(super) fn pooled_progress(spec: &market_protocol::TaskSpec) -> Option<PoolProgress> {
        let market_protocol::Workload::Training(t) = &spec.workload else {
            return None;
        };
        let p = t.pool.as_ref()?;
        Some(PoolProgress {
            slots: p.workers,
            rounds: p.rounds,
            round: 0,
            global: StateHash::default(),
            budget: slot_round_budget(spec.price.0, p.rounds, p.workers),
            slot_tasks: Vec::new(),
            history: Vec::new(),
            stopping: false,
            excluded: Vec::new(),
        })
    }

    /// Brings pooled task `id` up to date: makes the current round's slot-round tasks, merges
    /// a round whose slots all passed (recording it in the ledger) and starts the next, or
    /// finishes the task. Safe to call at any time and any number of times; a failure leaves
    /// the task to be advanced again later.
    pub async fn advance_pool(&self, id: &TaskId) -> anyhow::Result<()> {
        let result = self.advance_pool_once(id).await;
        if let Err(e) = &result {
            tracing::warn!(task = %id, error = %e, "advancing a pooled task failed; retried later");
            lock(&self.pools_pending).insert(*id);
        }
        result
    }

    async fn advance_pool_once(&self, id: &TaskId) -> anyhow::Result<()> {
        let _one_at_a_time = self.pooling.lock().await;
        loop {
            let Some(mut p) = self.store.task(id)? else {
                anyhow::bail!("no pooled task {id}");
            };
            let Some(prog) = p.rounds().cloned() else {
                anyhow::bail!("task {id} is not pooled");
            };
            if p.state.is_final() {
                return Ok(());
            }
            match self.round_status(&prog)? {
                RoundStatus::Missing => {
                    self.start_round(&mut p, prog).await?;
                    self.wake();
                    return Ok(());
                }
                RoundStatus::Running => {
                    if !prog.stopping {
                        return Ok(());
                    }
                    if self.cancel_untouched_round(&prog)? {
                        return self.finish_pool(p, TaskState::Cancelled, None).await;
                    }
                    // Stopping: what has not started never will; what runs ends first (and
                    // is paid if it passes). Look again if that cancelled anything.
                    if self.cancel_queued(&prog)? == 0 {
                        return Ok(());
                    }
                }
                RoundStatus::Halted { failed, quiet } => {
                    // Nothing more of this round will run; what is running ends first.
                    self.cancel_queued(&prog)?;
                    if !quiet {
                        return Ok(());
                    }
                    let state = match failed {
                        Some(reason) => TaskState::Rejected {
                            reason: format!("round {}: {reason}", prog.round),
                        },
                        None => TaskState::Cancelled,
                    };
                    return self.finish_pool(p, state, None).await;
                }
                RoundStatus::Passed(slots) => {
                    self.merge_round(&mut p, prog, slots).await?;
                    // Go round the loop: the next round's tasks, or the end.
                }
            }
        }
    }

    fn round_status(&self, prog: &PoolProgress) -> anyhow::Result<RoundStatus> {
        if prog.slot_tasks.len() != prog.slots as usize {
            return Ok(RoundStatus::Missing);
        }
        let mut slots = Vec::with_capacity(prog.slot_tasks.len());
        for sid in &prog.slot_tasks {
            match self.store.task(sid)? {
                Some(t) => slots.push(t),
                None => return Ok(RoundStatus::Missing),
            }
        }
        let failed = slots.iter().find_map(|t| match &t.state {
            TaskState::Rejected { reason } => {
                let slot = t.slot().map_or(0, |s| s.slot);
                Some(format!("slot {slot}: {reason}"))
            }
            _ => None,
        });
        let busy = |t: &TaskRecord| {
            !t.state.is_final()
                && (t.state != TaskState::Queued || lock(&self.claimed).contains(&t.id))
        };
        let stopped = slots.iter().any(|t| t.state == TaskState::Cancelled);
        if failed.is_some() || stopped {
            let quiet = !slots.iter().any(busy);
            return Ok(RoundStatus::Halted { failed, quiet });
        }
        if slots.iter().all(|t| t.state == TaskState::Settled) {
            return Ok(RoundStatus::Passed(slots));
        }
        Ok(RoundStatus::Running)
    }

    /// Cancels the round's slot-round tasks that are queued and not claimed (no money moves:
    /// a slot-round has no escrow of its own); the others run to their end. Returns how many
    /// it cancelled.
    fn cancel_queued(&self, prog: &PoolProgress) -> anyhow::Result<usize> {
        let mut cancelled = 0;
        for sid in &prog.slot_tasks {
            let Some(mut t) = self.store.task(sid)? else {
                continue;
            };
            if t.state != TaskState::Queued || !lock(&self.claimed).insert(t.id) {
                continue;
            }
            t.state = TaskState::Cancelled;
            let saved = self.save(&t);
            lock(&self.claimed).remove(&t.id);
            saved?;
            cancelled += 1;
        }
        Ok(cancelled)
    }

    /// Cancels the whole round if none of its slot-rounds has started (each queued, never
    /// tried, not claimed), all or nothing; returns whether it did.
    fn cancel_untouched_round(&self, prog: &PoolProgress) -> anyhow::Result<bool> {
        // Held from the reads to the saves: none can be claimed meanwhile, and every save of
        // a claimed task happens before its claim is released, so what is read is current.
        let claimed = lock(&self.claimed);
        let mut records = Vec::new();
        for sid in &prog.slot_tasks {
            match self.store.task(sid)? {
                Some(t) if t.state == TaskState::Cancelled => {}
                Some(t)
                    if t.state == TaskState::Queued
                        && t.attempts.is_empty()
                        && !claimed.contains(&t.id) =>
                {
                    records.push(t)
                }
                _ => return Ok(false),
            }
        }
        for mut t in records {
            t.state = TaskState::Cancelled;
            self.store.save_task(&t)?;
            self.emit(&t);
        }
        drop(claimed);
        Ok(true)
    }

    /// Makes round `prog.round`'s slot-round tasks: each slot's start state (the round's
    /// global parameters with the slot's own moments) stored as a blob named by its hash,
    /// then the task.
    async fn start_round(&self, p: &mut TaskRecord, mut prog: PoolProgress) -> anyhow::Result<()> {
        let previous: Vec<Option<BlobId>> = match prog.round.checked_sub(1) {
            None => vec![None; prog.slots as usize],
            Some(before) => {
                let last = self.store.pool_round(&p.id, before)?.ok_or_else(|| {
                    anyhow::anyhow!("round {} has no merged round before it", prog.round)
                })?;
                let mut finals = Vec::new();
                for s in &last.slots {
                    finals.push(Some(self.final_state_of(&s.task)?));
                }
                finals
            }
        };
        let previous_ids = previous.clone();
        let (spec, blobs, global_id, pool_id) =
            (p.spec.body.clone(), self.blobs.clone(), prog.global, p.id);
        let first = prog.round == 0;
        let (global, starts) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let job = TrainingJob::from_spec(&spec, &blobs)?;
            let global = if first {
                let g = pool::initial_global(&job);
                let id = blobs.put(&g.to_bytes_as(&job.layout, GLOBAL_FORMAT)?)?;
                StateHash(id.0)
            } else {
                global_id
            };
            let g = read_global(&blobs, &BlobId(global.0), &job)?;
            let mut starts = Vec::new();
            for prev in previous {
                starts.push(super::slot_states::store_start(
                    &blobs,
                    &pool_id,
                    &job,
                    global,
                    &g,
                    prev.as_ref(),
                )?);
            }
            Ok((global, starts))
        })
        .await??;
        let buyer = p.spec.body.buyer;
        // Of the states held in part, this round's starts and the final states they come from
        // are all the pool needs from now on.
        let mut needed: Vec<BlobId> = starts.iter().map(|s| BlobId(s.0)).collect();
        needed.extend(previous_ids.iter().flatten().copied());
        self.blobs.partial().retain_pool(&p.id, &needed);
        self.store.hold_result(&BlobId(global.0), &buyer)?;
        prog.global = global;
        prog.slot_tasks.clear();
        for (slot, start) in (0u32..).zip(starts) {
            self.store.hold_result(&BlobId(start.0), &buyer)?;
            let slot_ref = SlotRef {
                parent: p.id,
                slot,
                round: prog.round,
                start,
                budget: prog.budget,
                fresh_moments: false,
            };
            let child = TaskRecord {
                id: slot_task_id(&p.id, prog.round, slot),
                spec: p.spec.clone(),
                order: 0,
                state: TaskState::Queued,
                plan: p.plan.clone(),
                verifier_fee: p.verifier_fee,
                attempts: Vec::new(),
                outputs: Vec::new(),
                ledger_seqs: Vec::new(),
                settlement: None,
                needs: p.needs,
                pool: Some(PoolPart::SlotRound(slot_ref)),
            };
            prog.slot_tasks.push(self.store.insert_task(child)?.id);
        }
        tracing::info!(task = %p.id, round = prog.round, slots = prog.slots, "pooled round started");
        p.state = TaskState::Pooling {
            round: prog.round,
            rounds: prog.rounds,
        };
        p.pool = Some(PoolPart::Task(prog));
        self.save(p)
    }

    /// The blob of the final state of slot-round task `sid` (its accepted result).
    fn final_state_of(&self, sid: &TaskId) -> anyhow::Result<BlobId> {
        let t = self
            .store
            .task(sid)?
            .ok_or_else(|| anyhow::anyhow!("slot-round task {sid} is gone"))?;
        t.outputs
            .first()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("slot-round task {sid} has no final state"))
    }

    /// Merges a round whose slots all passed: the outer step on their final states, the merged
    /// state stored (the buyer holds it), the round recorded in the ledger, then the next
    /// round's start or the end.
    async fn merge_round(
        &self,
        p: &mut TaskRecord,
        mut prog: PoolProgress,
        slots: Vec<TaskRecord>,
    ) -> anyhow::Result<()> {
        let mut summaries = Vec::with_capacity(slots.len());
        let mut finals = Vec::with_capacity(slots.len());
        for t in &slots {
            let a = t.attempts.iter().find(|a| a.accepted).ok_or_else(|| {
                anyhow::anyhow!("settled slot-round {} has no accepted run", t.id)
            })?;
            summaries.push(SlotSummary {
                task: t.id,
                worker: a.worker,
                commitment_id: a
                    .commitment_id
                    .ok_or_else(|| anyhow::anyhow!("accepted run without a commitment"))?,
                failed_runs: t.attempts.iter().filter(|a| a.result_failed).count() as u32,
            });
            finals.push(self.final_state_of(&t.id)?);
        }
        let (spec, blobs, global_id) = (p.spec.body.clone(), self.blobs.clone(), prog.global);
        let merged = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let job = TrainingJob::from_spec(&spec, &blobs)?;
            let pool = job
                .pool
                .ok_or_else(|| anyhow::anyhow!("the task is not pooled"))?;
            let global = read_global(&blobs, &BlobId(global_id.0), &job)?;
            let finals = finals
                .iter()
                .map(|b| super::slot_states::read_final(&blobs, b, &job))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let next = match pool::outer_step(&pool, &global, &finals) {
                Ok(next) => next,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let id = blobs.put(&next.to_bytes_as(&job.layout, GLOBAL_FORMAT)?)?;
            let held_out = pool::eval_examples(&spec, &blobs).unwrap_or_default();
            let eval_loss = (!held_out.is_empty())
                .then(|| job.loss_on(&next.params, &held_out).ok())
                .flatten();
            Ok(Ok((StateHash(id.0), eval_loss)))
        })
        .await??;
        let (global, eval_loss) = match merged {
            Ok(m) => m,
            Err(why) => {
                let reason = format!("round {}: the merge failed: {why}", prog.round);
                return self
                    .finish_pool(p.clone(), TaskState::Rejected { reason }, None)
                    .await;
            }
        };
        self.store
            .hold_result(&BlobId(global.0), &p.spec.body.buyer)?;
        let entry = self
            .append(
                super::Operation::PoolRound {
                    task: p.id,
                    round: prog.round,
                },
                EntryKind::PoolRound {
                    global,
                    round: prog.round,
                    slots: summaries
                        .iter()
                        .map(|s| s.commitment_id)
                        .collect::<Vec<CommitmentId>>(),
                    task_id: p.id,
                },
            )
            .await?;
        if !p.ledger_seqs.contains(&entry.seq()) {
            p.ledger_seqs.push(entry.seq());
        }
        tracing::info!(task = %p.id, round = prog.round, %global, ?eval_loss, "pooled round merged");
        // Before the record moves on: a restart between the two merges again, the same bytes.
        self.store.save_pool_round(
            &p.id,
            &RoundSummary {
                round: prog.round,
                global,
                slots: summaries,
                eval_loss,
                ledger_seq: entry.seq(),
            },
        )?;
        prog.round += 1;
        prog.global = global;
        prog.slot_tasks.clear();
        let done = prog.round >= prog.rounds;
        let stopping = prog.stopping;
        p.pool = Some(PoolPart::Task(prog));
        if done {
            return self
                .finish_pool(p.clone(), TaskState::Settled, Some(global))
                .await;
        }
        if stopping {
            return self
                .finish_pool(p.clone(), TaskState::Cancelled, Some(global))
                .await;
        }
        // Saved with no slot-round tasks: the loop in `advance_pool` makes them.
        self.save(p)
    }

    /// Ends a pooled task in `state`: the buyer gets the weights of the last merged state
    /// (`global`, or the latest merged one), and the rest of the escrow is refunded.
    async fn finish_pool(
        &self,
        mut p: TaskRecord,
        state: TaskState,
        global: Option<StateHash>,
    ) -> anyhow::Result<()> {
        // After a merge, the pooled task's `global` is the last merged state.
        let global = global.or_else(|| p.rounds().filter(|r| r.round > 0).map(|r| r.global));
        if let Some(global) = global {
            let (spec, blobs) = (p.spec.body.clone(), self.blobs.clone());
            let weights = tokio::task::spawn_blocking(move || -> anyhow::Result<BlobId> {
                let job = TrainingJob::from_spec(&spec, &blobs)?;
                let g = read_global(&blobs, &BlobId(global.0), &job)?;
                let bytes = market_compute::init::weights_to_bytes(&job.layout, &g.params)?;
                Ok(blobs.put(&bytes)?)
            })
            .await??;
            self.store.hold_result(&weights, &p.spec.body.buyer)?;
            p.outputs = vec![weights];
        }
        // Slot states held in part are no use once no round follows.
        self.blobs.partial().forget_pool(&p.id);
        if let Some(seq) = self.refund_rest(&p).await? {
            if !p.ledger_seqs.contains(&seq) {
                p.ledger_seqs.push(seq);
            }
        }
        tracing::info!(task = %p.id, state = state.name(), "pooled task finished");
        p.state = state;
        self.save(&p)
    }

    /// A buyer's cancel of a pooled task: no round starts after the current one, and the
    /// current one is dropped too if none of its slots has started. The merged rounds' state
    /// is the buyer's; the rest of the escrow is refunded when the task ends.
    pub(super) async fn stop_pool(&self, id: &TaskId) -> anyhow::Result<TaskRecord> {
        {
            let _one_at_a_time = self.pooling.lock().await;
            let mut p = self
                .store
                .task(id)?
                .ok_or_else(|| anyhow::anyhow!("no task {id}"))?;
            if let Some(PoolPart::Task(prog)) = &mut p.pool {
                if !prog.stopping && !p.state.is_final() {
                    prog.stopping = true;
                    self.save(&p)?;
                }
            }
        }
        self.advance_pool(id).await?;
        self.store
            .task(id)?
            .ok_or_else(|| anyhow::anyhow!("no task {id}"))
    }

    /// Every merged round of pooled task `id`, in order (none for another task).
    pub fn pool_history(&self, id: &TaskId) -> anyhow::Result<Vec<RoundSummary>> {
        Ok(self.store.pool_rounds(id)?)
    }

    /// Advances every pooled task whose advance failed or that a restart interrupted.
    pub(super) async fn advance_pending_pools(&self) {
        let pending: Vec<TaskId> = std::mem::take(&mut *lock(&self.pools_pending))
            .into_iter()
            .collect();
        for id in pending {
            // A failure puts it back for the next time.
            let _ = self.advance_pool(&id).await;
        }
    }

    /// A slot-round task reached a final state: its pooled task may move on.
    pub(super) async fn slot_round_done(&self, t: &TaskRecord) {
        if let Some(s) = t.slot() {
            let _ = self.advance_pool(&s.parent).await;
        }
    }

    /// A worker's result for slot-round `t` failed its audit: it gets no other slot of the
    /// pool (a cheater caught once is not handed the model again).
    pub(super) async fn exclude_from_pool(
        &self,
        t: &TaskRecord,
        worker: &market_protocol::AccountId,
    ) -> anyhow::Result<()> {
        let Some(me) = t.slot() else {
            return Ok(());
        };
        let _one_at_a_time = self.pooling.lock().await;
        let Some(mut p) = self.store.task(&me.parent)? else {
            return Ok(());
        };
        if let Some(PoolPart::Task(prog)) = &mut p.pool {
            if !prog.excluded.contains(worker) {
                prog.excluded.push(*worker);
                self.save(&p)?;
            }
        }
        Ok(())
    }

    /// The workers `t` may not go to because of its pool: those holding another slot of its
    /// round (running it, being audited on it or accepted for it: a round's slots go to
    /// distinct workers), and those caught cheating on any slot-round of the pool.
    pub(super) fn barred_by_pool(&self, t: &TaskRecord) -> Vec<market_protocol::AccountId> {
        let Some(me) = t.slot() else {
            return Vec::new();
        };
        let Ok(Some(p)) = self.store.task(&me.parent) else {
            return Vec::new();
        };
        let Some(prog) = p.rounds() else {
            return Vec::new();
        };
        prog.slot_tasks
            .iter()
            .filter(|sid| **sid != t.id)
            .filter_map(|sid| self.store.task(sid).ok().flatten())
            .filter_map(|s| {
                let last = s.attempts.last()?;
                (!last.result_failed && s.state != TaskState::Queued).then_some(last.worker)
            })
            .chain(prog.excluded.iter().copied())
            .collect()
    }
}

/// A slot's state stored as blob `id`, read with `job`'s layout (its hash checked).
pub(super) fn read_state(
    blobs: &crate::blobs::BlobStore,
    id: &BlobId,
    job: &TrainingJob,
) -> anyhow::Result<TrainState> {
    read_state_as(blobs, id, job, market_compute::state::FORMAT)
}

/// A global state stored as blob `id`.
pub(super) fn read_global(
    blobs: &crate::blobs::BlobStore,
    id: &BlobId,
    job: &TrainingJob,
) -> anyhow::Result<TrainState> {
    read_state_as(blobs, id, job, GLOBAL_FORMAT)
}

fn read_state_as(
    blobs: &crate::blobs::BlobStore,
    id: &BlobId,
    job: &TrainingJob,
    format: &str,
) -> anyhow::Result<TrainState> {
    let bytes = blobs
        .read(id)
        .ok_or_else(|| anyhow::anyhow!("state {id} is not stored"))?;
    anyhow::ensure!(
        BlobId::of(&bytes) == *id,
        "stored state {id} does not hash to its id"
    );
    Ok(TrainState::from_bytes_as(&bytes, &job.layout, format)?)
}
