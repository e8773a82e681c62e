//! Tasks: records, arrival order, and the indexes by state and buyer that keep the engine's
//! queue scan and filtered listings proportional to what they return.

use std::sync::atomic::Ordering;

use market_protocol::{AccountId, TaskId};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{be_u64, get, transaction_result, Store, StoreError};
use crate::model::TaskRecord;
#[cfg(test)]
use crate::model::TaskState;

/// The index keys of a task in `by_state`, `by_buyer` and `by_buyer_state` (`None` where it
/// is not listed). A pooled task's slot-rounds are listed by state (the engine's queue) but not
/// among their buyer's tasks: the buyer posted one task, whose view shows its slot-rounds.
fn index_keys(t: &TaskRecord) -> [Option<Vec<u8>>; 3] {
    let order = t.order.to_be_bytes();
    let state = t.state.name().as_bytes();
    let buyer = t.spec.body.buyer;
    let mine = t.slot().is_none();
    [
        Some([state, &[0], &order].concat()),
        mine.then(|| [buyer.as_bytes().as_slice(), &order].concat()),
        mine.then(|| [buyer.as_bytes().as_slice(), state, &[0], &order].concat()),
    ]
}

type Trees<'a> = (
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
);

/// Writes `t` and its index entries in a transaction, removing those of `old`.
fn write(
    (tasks, order, by_state, by_buyer, by_buyer_state): Trees<'_>,
    old: Option<&TaskRecord>,
    t: &TaskRecord,
    value: &[u8],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let id = t.id.as_bytes().as_slice();
    if let Some(old) = old {
        for (tree, key) in [by_state, by_buyer, by_buyer_state]
            .into_iter()
            .zip(index_keys(old))
        {
            if let Some(key) = key {
                tree.remove(key)?;
            }
        }
    }
    tasks.insert(id, value)?;
    order.insert(&t.order.to_be_bytes()[..], id)?;
    for (tree, key) in [by_state, by_buyer, by_buyer_state]
        .into_iter()
        .zip(index_keys(t))
    {
        if let Some(key) = key {
            tree.insert(key, id)?;
        }
    }
    Ok(())
}

impl Store {
    /// Rebuilds the indexes and counts from the tasks, and finds the next arrival number.
    pub(super) fn reindex_tasks(&self) -> Result<(), StoreError> {
        let next = self.order.last()?.map_or(0, |(k, _)| be_u64(&k) + 1);
        self.next_order.store(next, Ordering::SeqCst);
        for tree in [&self.by_state, &self.by_buyer, &self.by_buyer_state] {
            tree.clear()?;
        }
        let mut counts = std::collections::BTreeMap::new();
        for item in self.tasks.iter() {
            let (_, value) = item?;
            let t: TaskRecord = serde_json::from_slice(&value)?;
            for (tree, key) in [&self.by_state, &self.by_buyer, &self.by_buyer_state]
                .into_iter()
                .zip(index_keys(&t))
            {
                if let Some(key) = key {
                    tree.insert(key, t.id.as_bytes())?;
                }
            }
            *counts.entry(t.state.name()).or_insert(0) += 1;
        }
        *self.counts() = counts;
        Ok(())
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<&'static str, u64>> {
        self.state_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many tasks are in each state, by state name.
    pub fn task_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.counts().clone()
    }

    /// A task.
    pub fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        get(&self.tasks, id.as_bytes())
    }

    /// Saves a task and its index entries in one transaction, durably.
    pub fn save_task(&self, t: &TaskRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(t)?;
        let trees = (
            &self.tasks,
            &self.order,
            &self.by_state,
            &self.by_buyer,
            &self.by_buyer_state,
        );
        let old_state = transaction_result(trees.transaction(|trees| {
            let old: Option<TaskRecord> = trees
                .0
                .get(t.id.as_bytes())?
                .map(|v| serde_json::from_slice(&v))
                .transpose()
                .map_err(ConflictableTransactionError::Abort)?;
            write(
                (&trees.0, &trees.1, &trees.2, &trees.3, &trees.4),
                old.as_ref(),
                t,
                &value,
            )?;
            Ok(old.map(|o| o.state.name()))
        }))?;
        {
            let mut counts = self.counts();
            if let Some(old) = old_state {
                if let Some(n) = counts.get_mut(old) {
                    *n = n.saturating_sub(1);
                }
            }
            *counts.entry(t.state.name()).or_insert(0) += 1;
        }
        self.flush()
    }

    /// Records a new task under the next arrival number, atomically: the task, its place in
    /// the arrival order and its index entries are written in one transaction, and each call
    /// takes its own number, so concurrent posts never share one (a shared number would hide
    /// one of the tasks from the listing and the queue). A task that is already recorded (the
    /// same signed spec posted twice, perhaps at once) is returned as it is, not recorded twice.
    pub fn insert_task(&self, mut t: TaskRecord) -> Result<TaskRecord, StoreError> {
        t.order = self.next_order.fetch_add(1, Ordering::SeqCst);
        let value = serde_json::to_vec(&t)?;
        let trees = (
            &self.tasks,
            &self.order,
            &self.by_state,
            &self.by_buyer,
            &self.by_buyer_state,
        );
        let (recorded, new) = transaction_result(trees.transaction(|trees| {
            if let Some(existing) = trees.0.get(t.id.as_bytes())? {
                let existing = serde_json::from_slice::<TaskRecord>(&existing)
                    .map_err(ConflictableTransactionError::Abort)?;
                return Ok((existing, false));
            }
            write(
                (&trees.0, &trees.1, &trees.2, &trees.3, &trees.4),
                None,
                &t,
                &value,
            )?;
            Ok((t.clone(), true))
        }))?;
        if new {
            *self.counts().entry(recorded.state.name()).or_insert(0) += 1;
        }
        self.flush()?;
        Ok(recorded)
    }

    /// The queued tasks, oldest first.
    pub fn queued_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks_where(None, Some("queued"), None, usize::MAX)
    }

    /// Tasks in arrival order starting after `after`, at most `limit`.
    pub fn tasks(&self, after: Option<u64>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks_where(None, None, after, limit)
    }

    /// Tasks of `buyer` (if given) in `state` (if given), in arrival order after `after`, at
    /// most `limit`: read from the matching index, so the cost is that of the answer.
    pub fn tasks_where(
        &self,
        buyer: Option<&AccountId>,
        state: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = Vec::new();
        for id in self.task_ids_where(buyer, state, after, limit)? {
            if let Some(t) = get::<TaskRecord>(&self.tasks, id.as_bytes())? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The ids of [`Store::tasks_where`], read from the index alone (no record is loaded).
    pub fn task_ids_where(
        &self,
        buyer: Option<&AccountId>,
        state: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        let (tree, prefix) = match (buyer, state) {
            (None, None) => (&self.order, Vec::new()),
            (None, Some(s)) => (&self.by_state, [s.as_bytes(), &[0]].concat()),
            (Some(b), None) => (&self.by_buyer, b.as_bytes().to_vec()),
            (Some(b), Some(s)) => (
                &self.by_buyer_state,
                [b.as_bytes().as_slice(), s.as_bytes(), &[0]].concat(),
            ),
        };
        if after == Some(u64::MAX) {
            return Ok(Vec::new());
        }
        let start = [
            prefix.as_slice(),
            &after.map_or(0, |a| a.saturating_add(1)).to_be_bytes(),
        ]
        .concat();
        let mut out = Vec::new();
        for item in tree.range(start..) {
            let (key, id) = item?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            if let Ok(bytes) = <[u8; 32]>::try_from(id.as_ref()) {
                out.push(TaskId(market_protocol::Hash(bytes)));
            }
        }
        Ok(out)
    }

    /// The state a task is in, by name, for checking a listing filter.
    pub fn is_state_name(name: &str) -> bool {
        [
            "queued",
            "running",
            "auditing",
            "settled",
            "rejected",
            "cancelled",
            "pooling",
        ]
        .contains(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::{fixtures::training_task, Identity, Signed};

    #[test]
    fn every_state_name_is_a_listing_filter() {
        let worker = Identity::from_test_label("state worker").account();
        for s in [
            TaskState::Queued,
            TaskState::Running {
                worker,
                done: 0,
                total: 1,
                loss: 0.0,
            },
            TaskState::Auditing { worker },
            TaskState::Settled,
            TaskState::Rejected {
                reason: String::new(),
            },
            TaskState::Cancelled,
            TaskState::Pooling {
                round: 0,
                rounds: 1,
            },
        ] {
            assert!(Store::is_state_name(s.name()), "{}", s.name());
        }
        assert!(!Store::is_state_name("queued\0"));
    }

    fn record(buyer: &Identity, order: u64) -> TaskRecord {
        let spec = Signed::sign(training_task(buyer, order), buyer).unwrap();
        TaskRecord {
            id: TaskId(spec.id().unwrap()),
            plan: crate::audit_plan::plan_for(&spec.body, 20, 2).unwrap(),
            spec,
            order,
            state: TaskState::Queued,
            verifier_fee: 10,
            attempts: Vec::new(),
            outputs: Vec::new(),
            ledger_seqs: Vec::new(),
            settlement: None,
            needs: Default::default(),
            pool: None,
        }
    }

    #[test]
    fn the_queue_index_follows_every_save_and_is_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let buyer = Identity::from_test_label("queue buyer");
        let tasks: Vec<TaskRecord> = (0..5).map(|i| record(&buyer, i)).collect();
        let queued = |store: &Store| -> Vec<u64> {
            store
                .queued_tasks()
                .unwrap()
                .iter()
                .map(|t| t.order)
                .collect()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            for t in &tasks {
                store.save_task(t).unwrap();
            }
            assert_eq!(queued(&store), [0, 1, 2, 3, 4]);
            let mut running = tasks[1].clone();
            running.state = TaskState::Running {
                worker: buyer.account(),
                done: 0,
                total: 0,
                loss: 0.0,
            };
            store.save_task(&running).unwrap();
            let mut settled = tasks[3].clone();
            settled.state = TaskState::Settled;
            store.save_task(&settled).unwrap();
            assert_eq!(queued(&store), [0, 2, 4]);
            // Back to the queue (a failed attempt): in its place by arrival, not at the end.
            store.save_task(&tasks[1]).unwrap();
            assert_eq!(queued(&store), [0, 1, 2, 4]);
            // An index that lags its tasks (as in a store written by an older version).
            let queued_key = |order: u64| [b"queued\0".as_slice(), &order.to_be_bytes()].concat();
            store
                .by_state
                .insert(queued_key(3), tasks[3].id.as_bytes())
                .unwrap();
            store.by_state.remove(queued_key(0)).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(queued(&store), [0, 1, 2, 4], "rebuilt from the tasks");
        assert_eq!(store.tasks(None, usize::MAX).unwrap().len(), 5);
    }

    /// Issue 12 item 7: posts that took the same arrival number hid one task from the listing
    /// and the queue. Here 8 threads record 1,000 tasks (each posted twice, at once), and
    /// every one is listed and queued exactly once, before and after a re-open.
    #[test]
    fn concurrent_posts_lose_no_task_and_record_none_twice() {
        let dir = tempfile::tempdir().unwrap();
        let buyer = Identity::from_test_label("busy buyer");
        let records: Vec<TaskRecord> = (0..1000).map(|n| record(&buyer, n)).collect();
        let check = |store: &Store| {
            let listed = store.tasks(None, usize::MAX).unwrap();
            let queued = store.queued_tasks().unwrap();
            let mine = store
                .tasks_where(Some(&buyer.account()), Some("queued"), None, usize::MAX)
                .unwrap();
            for list in [&listed, &queued, &mine] {
                assert_eq!(list.len(), 1000);
                let ids: std::collections::BTreeSet<_> = list.iter().map(|t| t.id).collect();
                assert_eq!(ids.len(), 1000, "a task listed twice");
            }
            assert_eq!(store.task_counts().get("queued"), Some(&1000));
        };
        {
            let store = Store::open(dir.path()).unwrap();
            std::thread::scope(|s| {
                for chunk in records.chunks(250) {
                    for _ in 0..2 {
                        let store = &store;
                        s.spawn(move || {
                            for r in chunk {
                                store.insert_task(r.clone()).unwrap();
                            }
                        });
                    }
                }
            });
            check(&store);
        }
        check(&Store::open(dir.path()).unwrap());
    }
}
