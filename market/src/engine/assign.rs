//! Assignment: which queued task goes next and to which worker (the idle staked worker with
//! the best reputation that runs its profile and offers what it needs), which verifiers may
//! audit it, how many audit a worker's result, and their draw from the beacon.

use std::collections::BTreeSet;

use market_protocol::{AccountId, Beacon, ExecutionProfile, Resources, TaskId};

use super::{lock, Node, Step};
use crate::model::{TaskRecord, TaskState};

impl Node {
    /// Claims a task to resume, if one is waiting and not claimed.
    pub(super) fn claim_resumable(&self) -> Option<TaskId> {
        let mut claimed = lock(&self.claimed);
        let mut resume = lock(&self.resume);
        let i = resume.iter().position(|id| !claimed.contains(id))?;
        let id = resume.remove(i);
        claimed.insert(id);
        Some(id)
    }

    /// Claims the oldest queued task that can go ahead now, with what to do with it. A task
    /// waits, without holding up the tasks behind it, until an idle staked worker and a staked
    /// verifier that run its profile are there (a `cuda` task must not stall the queue of a
    /// CPU-only market); it is rejected after `max_attempts`, or when it has been tried and no
    /// other worker, busy or idle, could take it.
    pub(super) fn claim_next(&self) -> anyhow::Result<Option<(TaskId, Step)>> {
        // Locked before the read: every save of a claimed task happens before its claim is
        // released, so what is read here is current for every task not claimed.
        let mut claimed = lock(&self.claimed);
        let mut busy = lock(&self.busy);
        for t in self.store.queued_tasks()? {
            if t.state != TaskState::Queued || claimed.contains(&t.id) {
                continue;
            }
            let eligible = self.eligible_workers(&t);
            let failed = t.attempts.iter().filter(|a| a.result_failed).count();
            let step = if failed >= self.config.max_attempts {
                Step::Reject("no worker produced a result that passed its audits".into())
            } else if eligible.is_empty() && !t.attempts.is_empty() {
                Step::Reject("no other staked worker is available".into())
            } else {
                // The idle worker with the best record (reputation, earned one accepted task at
                // a time and lost on every failure): a fresh account is never preferred over
                // one that has delivered. Ties go to the dispatcher's order. A pooled slot goes
                // back to the worker whose run of it was merged last round, when that worker
                // may take it and is idle: it holds the slot's optimizer moments, so only the
                // merged parameters travel to it.
                let idle: Vec<AccountId> = eligible
                    .into_iter()
                    .filter(|w| !busy.contains_key(w))
                    .collect();
                let holders = self.previous_holders(&t);
                let best = |ws: &mut dyn Iterator<Item = AccountId>| {
                    ws.min_by_key(|w| std::cmp::Reverse(self.ledger.reputation(w)))
                };
                let idle = match holders.get(t.slot().map_or(0, |s| s.slot as usize)) {
                    Some(own) if idle.contains(own) => Some(*own),
                    // Not another slot's holder, while someone else may take it.
                    _ => best(&mut idle.iter().copied().filter(|w| !holders.contains(w)))
                        .or_else(|| best(&mut idle.into_iter())),
                };
                match idle {
                    Some(w) if self.has_verifier_for(&t) => {
                        busy.insert(w, t.id);
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

    /// For a slot-round after the first, the workers (by their current keys) whose runs were
    /// merged in the round before, in slot order; empty otherwise.
    fn previous_holders(&self, t: &TaskRecord) -> Vec<AccountId> {
        let merged = t.slot().and_then(|slot| {
            let before = slot.round.checked_sub(1)?;
            self.store.pool_round(&slot.parent, before).ok()?
        });
        merged.map_or_else(Vec::new, |m| {
            m.slots
                .iter()
                .map(|s| self.current_key(&s.worker))
                .collect()
        })
    }

    pub(super) fn has_verifier_for(&self, t: &TaskRecord) -> bool {
        !self
            .eligible_verifiers(t.spec.body.profile, &t.needs)
            .is_empty()
    }

    /// Verifiers with enough stake that run `profile` and have the memory a task that `needs`
    /// this takes (a verifier re-executes segments of the run, but keeps no bundle of its
    /// own), in the dispatcher's order.
    pub(super) fn eligible_verifiers(
        &self,
        profile: ExecutionProfile,
        needs: &Resources,
    ) -> Vec<AccountId> {
        let memory = Resources {
            memory_bytes: needs.memory_bytes,
            disk_bytes: 0,
        };
        self.dispatch
            .verifiers()
            .into_iter()
            .filter(|v| {
                self.stake(v) >= self.config.min_verifier_stake
                    && self.dispatch.runs(v, profile)
                    && self.holds(v, &memory)
            })
            .collect()
    }

    /// Whether `participant` offers at least `needs` (anyone does where the dispatcher sets no
    /// limit).
    pub(super) fn holds(&self, participant: &AccountId, needs: &Resources) -> bool {
        self.dispatch
            .offers(participant)
            .is_none_or(|o| o.covers(needs))
    }

    pub(super) fn stake(&self, a: &AccountId) -> u64 {
        self.ledger.stake(a).0
    }

    /// Frees `worker` if it is still marked busy with `task` (not with a task it took since).
    pub(super) fn free_worker(&self, worker: &AccountId, task: &TaskId) {
        let mut busy = lock(&self.busy);
        if busy.get(worker) == Some(task) {
            busy.remove(worker);
        }
    }

    /// Whether `worker` is running a task now.
    pub fn is_busy(&self, worker: &AccountId) -> bool {
        lock(&self.busy).contains_key(worker)
    }

    /// Workers, busy or idle, with enough stake that run the task's profile, offer what it
    /// needs and have not yet tried it, in the dispatcher's order.
    pub(super) fn eligible_workers(&self, t: &TaskRecord) -> Vec<AccountId> {
        self.workers_for(t, &t.needs)
    }

    /// [`Node::eligible_workers`], with `needs` instead of the task's own.
    pub(super) fn workers_for(&self, t: &TaskRecord, needs: &Resources) -> Vec<AccountId> {
        // A round's slots go to distinct workers. Each bar names the participant's current
        // key: rotating to a new key does not make a worker a stranger to a task it tried (or
        // cheated on), nor to a pool it holds a slot of or was excluded from.
        let tried: Vec<AccountId> = t
            .attempts
            .iter()
            .filter(|a| !a.excused)
            .map(|a| a.worker)
            .chain(self.barred_by_pool(t))
            .map(|a| self.current_key(&a))
            .collect();
        let profile = t.spec.body.profile;
        self.dispatch
            .workers()
            .into_iter()
            .filter(|w| {
                !tried.contains(w)
                    && self.stake(w) >= self.config.min_worker_stake
                    && self.dispatch.runs(w, profile)
                    && self.holds(w, needs)
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
        // Never more than today's `verifiers_per_task` (a task's own plan caps it further).
        self.config
            .verifiers_per_task
            .saturating_sub(relief)
            .max(self.config.min_verifiers_per_task)
            .min(self.config.verifiers_per_task)
            .max(1)
    }

    /// Orders every eligible verifier not in `exclude` by weighted draws without replacement
    /// (weights from stake and reputation), from a stream keyed by the beacon and the draw's
    /// round, so the worker could not know them when it committed. The first audit; the rest
    /// stand in, in order, for any that fails to answer; a later round draws again (verifiers
    /// that joined since, or were silent before).
    pub(crate) fn draw_verifiers(
        &self,
        beacon: &Beacon,
        round: u32,
        exclude: &BTreeSet<AccountId>,
        profile: ExecutionProfile,
        needs: &Resources,
    ) -> Vec<AccountId> {
        let pool: Vec<(AccountId, u64)> = self
            .eligible_verifiers(profile, needs)
            .into_iter()
            .filter(|v| !exclude.contains(v))
            .map(|v| {
                let weight = market_protocol::sampling::verifier_weight(
                    self.stake(&v),
                    self.ledger.reputation(&v),
                );
                (v, weight)
            })
            .collect();
        market_protocol::sampling::draw_verifiers(beacon, round, pool)
    }
}
