//! What the API shows of a task: its record's view, with what a queued task (or a pooled
//! task's waiting slot) waits for and a pooled task's current round slot by slot.

use indicatif::HumanBytes;
use market_protocol::Resources;

use super::{lock, Node};
use crate::model::{TaskRecord, TaskState};

impl Node {
    /// The public view of a task, with what it waits for if it is queued: a buyer whose task
    /// sits in the queue learns why (no worker or verifier for its profile, or none free).
    pub fn view(&self, t: &TaskRecord) -> crate::model::TaskView {
        let mut view = t.view();
        if let Some(crate::model::PoolPart::Task(prog)) = &mut view.pool {
            prog.history = self.store.pool_rounds(&t.id).unwrap_or_default();
        }
        if let Some(prog) = t.rounds().filter(|_| !t.state.is_final()) {
            view.slots = prog
                .slot_tasks
                .iter()
                .filter_map(|sid| self.store.task(sid).ok().flatten())
                .filter_map(|s| {
                    Some(crate::model::SlotStatus {
                        slot: s.slot()?.slot,
                        task: s.id,
                        worker: s.attempts.last().map(|a| a.worker),
                        failed_runs: s.attempts.iter().filter(|a| a.result_failed).count() as u32,
                        state: s.state,
                    })
                })
                .collect();
            // What a slot that cannot start waits for holds up the whole round.
            view.waiting_for = view
                .slots
                .iter()
                .filter(|s| s.state == TaskState::Queued)
                .find_map(|s| {
                    let slot = self.store.task(&s.task).ok().flatten()?;
                    let why = self.view(&slot).waiting_for?;
                    Some(format!("slot {} of round {}: {why}", s.slot, prog.round))
                });
        }
        if t.state == TaskState::Queued {
            let profile = t.spec.body.profile.name();
            let eligible = self.eligible_workers(t);
            let (memory, disk) = (
                HumanBytes(t.needs.memory_bytes),
                HumanBytes(t.needs.disk_bytes),
            );
            let anyone = Resources::default();
            let pool_bound = !self.barred_by_pool(t).is_empty();
            view.waiting_for = if eligible.is_empty() && pool_bound {
                Some(format!("a staked worker that runs the {profile} profile and holds no other slot of this round (a round's slots go to distinct workers, and none goes to a worker caught cheating on the pool)"))
            } else if eligible.is_empty() {
                if self.workers_for(t, &anyone).is_empty() {
                    Some(format!("a staked worker that runs the {profile} profile"))
                } else {
                    Some(format!("a staked worker that runs the {profile} profile with {memory} of memory and {disk} of disk (what this task is estimated to need; no worker here offers that much)"))
                }
            } else if !self.has_verifier_for(t) {
                if self
                    .eligible_verifiers(t.spec.body.profile, &anyone)
                    .is_empty()
                {
                    Some(format!("a staked verifier that runs the {profile} profile"))
                } else {
                    Some(format!("a staked verifier that runs the {profile} profile with {memory} of memory (what this task is estimated to need; no verifier here offers that much)"))
                }
            } else if eligible.iter().all(|w| lock(&self.busy).contains_key(w)) {
                Some("a worker to finish its current task".into())
            } else if lock(&self.claimed).len() >= self.dispatch.concurrent_tasks().max(1) {
                Some("room: the node runs as many tasks at once as it allows".into())
            } else {
                None
            };
        }
        view
    }
}
