//! The node's own state on sled: tasks, their arrival order, registered accounts, request
//! nonces, blob owners and participant records. Credits are never here: they live only in the
//! ledger.

use std::path::Path;

use market_protocol::{AccountId, BlobId, TaskId};
use serde::{de::DeserializeOwned, Serialize};

use crate::model::{ParticipantStats, TaskRecord, TaskState};

/// Why the node's store failed (always the node's own fault).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("node store: {0}")]
    Sled(#[from] sled::Error),
    /// A record did not decode.
    #[error("node store: corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    tasks: sled::Tree,
    order: sled::Tree,
    /// Queued tasks only, by arrival order: what the engine looks through for its next task,
    /// so its cost does not grow with every task ever posted. Rebuilt at open.
    queued: sled::Tree,
    accounts: sled::Tree,
    nonces: sled::Tree,
    blob_owners: sled::Tree,
    /// Accounts granted reading rights to a blob besides its owner (a buyer, to its results):
    /// key = blob id || account.
    blob_readers: sled::Tree,
    participants: sled::Tree,
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)?
        .map(|v| serde_json::from_slice(&v))
        .transpose()
        .map_err(Into::into)
}

fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
    tree.insert(key, serde_json::to_vec(value)?)?;
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir)?;
        Ok(Self {
            tasks: db.open_tree("tasks")?,
            order: db.open_tree("order")?,
            queued: db.open_tree("queued")?,
            accounts: db.open_tree("accounts")?,
            nonces: db.open_tree("nonces")?,
            blob_owners: db.open_tree("blob_owners")?,
            blob_readers: db.open_tree("blob_readers")?,
            participants: db.open_tree("participants")?,
            db,
        })
        .and_then(Self::index_queue)
    }

    /// Rebuilds the queue index from the tasks (a store written before the index existed, or
    /// one whose index a crash left behind its tasks).
    fn index_queue(self) -> Result<Self, StoreError> {
        self.queued.clear()?;
        for t in self.tasks(None, usize::MAX)? {
            if t.state == TaskState::Queued {
                self.queued.insert(t.order.to_be_bytes(), t.id.as_bytes())?;
            }
        }
        Ok(self)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// A task.
    pub fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        get(&self.tasks, id.as_bytes())
    }

    /// Saves a task (and indexes a new one by arrival order), durably.
    pub fn save_task(&self, t: &TaskRecord) -> Result<(), StoreError> {
        put(&self.tasks, t.id.as_bytes(), t)?;
        self.order.insert(t.order.to_be_bytes(), t.id.as_bytes())?;
        if t.state == TaskState::Queued {
            self.queued.insert(t.order.to_be_bytes(), t.id.as_bytes())?;
        } else {
            self.queued.remove(t.order.to_be_bytes())?;
        }
        self.flush()
    }

    /// The queued tasks, oldest first.
    pub fn queued_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.queued.iter() {
            let (_, id) = item?;
            if let Some(t) = get::<TaskRecord>(&self.tasks, &id)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The next arrival number.
    pub fn next_order(&self) -> Result<u64, StoreError> {
        Ok(self.order.last()?.map_or(0, |(k, _)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[..8]);
            u64::from_be_bytes(b) + 1
        }))
    }

    /// Tasks in arrival order starting after `after`, at most `limit`.
    pub fn tasks(&self, after: Option<u64>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::new();
        for item in self.order.range(start.to_be_bytes()..) {
            let (_, id) = item?;
            if let Some(t) = get::<TaskRecord>(&self.tasks, &id)? {
                out.push(t);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Registers an account (idempotent).
    pub fn register(&self, account: &AccountId) -> Result<bool, StoreError> {
        Ok(self.accounts.insert(account.as_bytes(), &[1u8])?.is_none())
    }

    /// Whether an account is registered.
    pub fn is_registered(&self, account: &AccountId) -> Result<bool, StoreError> {
        Ok(self.accounts.contains_key(account.as_bytes())?)
    }

    /// Records a nonce; false if the account used it before (a replay). Nonces older than
    /// `expire_before` are forgotten, since their timestamps are refused anyway.
    pub fn use_nonce(
        &self,
        account: &AccountId,
        nonce: &str,
        timestamp: u64,
        expire_before: u64,
    ) -> Result<bool, StoreError> {
        let mut key = account.as_bytes().to_vec();
        key.extend_from_slice(nonce.as_bytes());
        let fresh = self
            .nonces
            .compare_and_swap(
                &key,
                None as Option<&[u8]>,
                Some(&timestamp.to_be_bytes()[..]),
            )?
            .is_ok();
        if fresh && timestamp % 64 == 0 {
            for item in self.nonces.iter() {
                let (k, v) = item?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[..8]);
                if u64::from_be_bytes(b) < expire_before {
                    self.nonces.remove(k)?;
                }
            }
        }
        Ok(fresh)
    }

    /// Who uploaded a blob (the only account that may read it).
    pub fn blob_owner(&self, id: &BlobId) -> Result<Option<AccountId>, StoreError> {
        Ok(self
            .blob_owners
            .get(id.as_bytes())?
            .and_then(|v| v.as_ref().try_into().ok())
            .and_then(|b: [u8; 32]| AccountId::from_bytes(b).ok()))
    }

    /// Records a blob's owner (the first uploader keeps it).
    pub fn set_blob_owner(&self, id: &BlobId, owner: &AccountId) -> Result<(), StoreError> {
        let _ = self.blob_owners.compare_and_swap(
            id.as_bytes(),
            None as Option<&[u8]>,
            Some(&owner.as_bytes()[..]),
        )?;
        Ok(())
    }

    /// Lets `reader` read blob `id` whoever owns it: a task's results are the buyer's even when
    /// someone uploaded the same bytes first (a deterministic result can be computed by anyone
    /// from the public spec).
    pub fn grant_blob_reader(&self, id: &BlobId, reader: &AccountId) -> Result<(), StoreError> {
        self.blob_readers
            .insert([id.as_bytes().as_slice(), reader.as_bytes()].concat(), &[])?;
        Ok(())
    }

    /// Whether `account` may read blob `id`: its owner, or an account granted it. `None` if
    /// nobody owns the blob (it is not there).
    pub fn may_read_blob(
        &self,
        id: &BlobId,
        account: &AccountId,
    ) -> Result<Option<bool>, StoreError> {
        let Some(owner) = self.blob_owner(id)? else {
            return Ok(None);
        };
        let granted = self
            .blob_readers
            .contains_key([id.as_bytes().as_slice(), account.as_bytes()].concat())?;
        Ok(Some(owner == *account || granted))
    }

    /// A participant's record.
    pub fn participant(&self, account: &AccountId) -> Result<ParticipantStats, StoreError> {
        Ok(get(&self.participants, account.as_bytes())?.unwrap_or_default())
    }

    /// Updates a participant's record atomically. Tasks settle in parallel and two of them may
    /// count for the same verifier at once: a plain read-then-write would lose one count, so
    /// this is a compare-and-swap loop (`f` may run more than once).
    pub fn update_participant(
        &self,
        account: &AccountId,
        f: impl Fn(&mut ParticipantStats),
    ) -> Result<(), StoreError> {
        let key = account.as_bytes();
        loop {
            let old = self.participants.get(key)?;
            let mut p: ParticipantStats = match &old {
                Some(bytes) => serde_json::from_slice(bytes)?,
                None => ParticipantStats::default(),
            };
            f(&mut p);
            let new = serde_json::to_vec(&p)?;
            if self
                .participants
                .compare_and_swap(key, old, Some(new))?
                .is_ok()
            {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::Identity;

    #[test]
    fn concurrent_updates_of_one_participant_lose_no_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let verifier = Identity::from_test_label("busy verifier").account();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..250 {
                        store
                            .update_participant(&verifier, |p| p.audits += 1)
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(store.participant(&verifier).unwrap().audits, 1000);
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use market_protocol::{fixtures::training_task, Identity, Signed};

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
            // An index that lags its tasks (as after a crash between the two writes).
            store
                .queued
                .insert(3u64.to_be_bytes(), tasks[3].id.as_bytes())
                .unwrap();
            store.queued.remove(0u64.to_be_bytes()).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(queued(&store), [0, 1, 2, 4], "rebuilt from the tasks");
        assert_eq!(store.tasks(None, usize::MAX).unwrap().len(), 5);
    }
}
