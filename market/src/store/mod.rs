//! The node's own state on sled: tasks, their arrival order, registered accounts, request
//! nonces, blob owners and participant records. Credits are never here: they live only in the
//! ledger.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use market_protocol::AccountId;
use serde::de::DeserializeOwned;
use sled::Transactional;

use crate::model::ParticipantStats;

mod blobs;
mod nonces;
mod pool_rounds;
mod serving;
mod tasks;

pub use blobs::{BlobAccess, UploadCharge};
pub use serving::{ApiKey, BatchStatus, OpenBatch, ServeBatch, ServedReceipt};

/// Why the node's store failed (always the node's own fault).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("node store: {0}")]
    Sled(#[from] sled::Error),
    /// A record did not decode.
    #[error("node store: corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// A file the store manages (an expired blob's) could not be removed.
    #[error("node store: {0}")]
    Io(#[from] std::io::Error),
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    tasks: sled::Tree,
    order: sled::Tree,
    /// Tasks by state, then arrival: key = state name || 0x00 || order. What the engine looks
    /// through for its next task and what a filtered listing reads, so neither costs more as
    /// tasks pile up. Rebuilt at open.
    by_state: sled::Tree,
    /// Tasks by buyer, then arrival: key = buyer || order. Rebuilt at open.
    by_buyer: sled::Tree,
    /// Tasks by buyer and state: key = buyer || state name || 0x00 || order. Rebuilt at open.
    by_buyer_state: sled::Tree,
    /// How many tasks are in each state (for `/metrics`): counted at open, kept with every save.
    state_counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    accounts: sled::Tree,
    nonces: sled::Tree,
    /// The same nonces by when they expire: key = timestamp || account || nonce.
    nonce_times: sled::Tree,
    blob_owners: sled::Tree,
    /// Accounts that may read a blob besides its owner: key = blob id || account, value
    /// `o` (holds it as an owner does: uploaded the same bytes, or bought the task whose result
    /// it is) or `g` (granted by an owner).
    blob_readers: sled::Tree,
    /// Blobs some task reads or produced: never expired.
    blob_pins: sled::Tree,
    /// Per blob: its size and last upload (unix seconds), JSON.
    blob_meta: sled::Tree,
    /// Uploads by time, for expiry: key = unix seconds || blob id.
    blob_uploads: sled::Tree,
    /// Bytes each account holds in blobs (its quota use).
    blob_usage: sled::Tree,
    participants: sled::Tree,
    /// Merged rounds of pooled tasks: key = task id || round (big-endian u32), value = the
    /// round's summary (JSON). Kept apart from the task record, which would otherwise grow
    /// with every round and be rewritten whole at every save.
    pool_rounds: sled::Tree,
    /// Events already counted in participant records: key = event || 0x00 || account.
    counted: sled::Tree,
    /// The next arrival number: one past the last in `order` at open, then taken atomically.
    next_order: Arc<AtomicU64>,
    /// Held by every change to a blob's life (an upload, a use, a pin, a result, an expiry with
    /// its file's deletion), so an expiry never acts on what it read before one of the others
    /// (`blobs.rs`).
    blob_lock: Arc<std::sync::Mutex<()>>,
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)?
        .map(|v| serde_json::from_slice(&v))
        .transpose()
        .map_err(Into::into)
}

/// A transaction's outcome as a store error.
/// How long [`open_db`] waits for sled's lock of a database just closed.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the sled database in `dir`. sled releases its file lock from a background thread
/// after the last handle is dropped, so a store re-opened at once (a restart in-process, a
/// test) can find the lock still held for a moment: retried for up to [`LOCK_WAIT`]. A lock
/// still held after that (another node on the same directory) is the error it always was.
fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                // No event says when another thread lets go of a file lock: poll.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn transaction_result<T>(
    r: Result<T, sled::transaction::TransactionError<serde_json::Error>>,
) -> Result<T, StoreError> {
    use sled::transaction::TransactionError;
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e.into()),
        Err(TransactionError::Storage(e)) => Err(e.into()),
    }
}

/// A big-endian u64 from the first 8 bytes of `b` (0 if shorter).
fn be_u64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_db(dir)?;
        // Written by versions before the state indexes; superseded by `by_state`.
        db.drop_tree("queued")?;
        let store = Self {
            tasks: db.open_tree("tasks")?,
            order: db.open_tree("order")?,
            by_state: db.open_tree("by_state")?,
            by_buyer: db.open_tree("by_buyer")?,
            by_buyer_state: db.open_tree("by_buyer_state")?,
            state_counts: Default::default(),
            accounts: db.open_tree("accounts")?,
            nonces: db.open_tree("nonces")?,
            nonce_times: db.open_tree("nonce_times")?,
            blob_owners: db.open_tree("blob_owners")?,
            blob_readers: db.open_tree("blob_readers")?,
            blob_pins: db.open_tree("blob_pins")?,
            blob_meta: db.open_tree("blob_meta")?,
            blob_uploads: db.open_tree("blob_uploads")?,
            blob_usage: db.open_tree("blob_usage")?,
            participants: db.open_tree("participants")?,
            pool_rounds: db.open_tree("pool_rounds")?,
            counted: db.open_tree("counted")?,
            next_order: Default::default(),
            blob_lock: Default::default(),
            db,
        };
        store.reindex_tasks()?;
        Ok(store)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Registers an account (idempotent).
    pub fn register(&self, account: &AccountId) -> Result<bool, StoreError> {
        Ok(self.accounts.insert(account.as_bytes(), &[1u8])?.is_none())
    }

    /// Whether an account is registered.
    pub fn is_registered(&self, account: &AccountId) -> Result<bool, StoreError> {
        Ok(self.accounts.contains_key(account.as_bytes())?)
    }

    /// A participant's record.
    pub fn participant(&self, account: &AccountId) -> Result<ParticipantStats, StoreError> {
        Ok(get(&self.participants, account.as_bytes())?.unwrap_or_default())
    }

    /// Counts an event in a participant's record, once: `event` names it the way ledger keys
    /// name appends (`TASK:ATTEMPT:settled`, ...), so a settlement step re-run after a crash
    /// counts nothing twice. Tasks settle in parallel and two of them may count for the same
    /// verifier at once, so the record and the event's mark change in one transaction (`f` may
    /// run more than once). Returns whether the event was new.
    pub fn update_participant(
        &self,
        event: &str,
        account: &AccountId,
        f: impl Fn(&mut ParticipantStats),
    ) -> Result<bool, StoreError> {
        use sled::transaction::ConflictableTransactionError;
        let key = account.as_bytes();
        let mark = [event.as_bytes(), &[0], key].concat();
        let result = (&self.participants, &self.counted).transaction(|(participants, counted)| {
            if counted.get(&mark)?.is_some() {
                return Ok(false);
            }
            let mut p: ParticipantStats = match participants.get(key)? {
                Some(bytes) => {
                    serde_json::from_slice(&bytes).map_err(ConflictableTransactionError::Abort)?
                }
                None => ParticipantStats::default(),
            };
            f(&mut p);
            let new = serde_json::to_vec(&p).map_err(ConflictableTransactionError::Abort)?;
            participants.insert(key, new)?;
            counted.insert(mark.as_slice(), &[])?;
            Ok(true)
        });
        transaction_result(result)
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
            for thread in 0..4 {
                let (store, verifier) = (&store, &verifier);
                s.spawn(move || {
                    for i in 0..250 {
                        store
                            .update_participant(&format!("t{thread}:{i}"), verifier, |p| {
                                p.audits += 1
                            })
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(store.participant(&verifier).unwrap().audits, 1000);
    }

    /// Issue 12 item 8: a settlement step re-run after a crash counts its events again.
    #[test]
    fn a_settlement_step_rerun_after_a_crash_counts_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let worker = Identity::from_test_label("re-run worker").account();
        let verifier = Identity::from_test_label("re-run verifier").account();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store
                .update_participant("T:0:settled", &worker, |p| p.tasks_done += 1)
                .unwrap());
            store.flush().unwrap();
        }
        // Re-opened, as after a crash: the step runs again, from the top.
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..3 {
            assert!(!store
                .update_participant("T:0:settled", &worker, |p| p.tasks_done += 1)
                .unwrap());
        }
        // One event counts once for each account it names; another event counts again.
        assert!(store
            .update_participant("T:0:settled", &verifier, |p| p.audits += 1)
            .unwrap());
        assert!(store
            .update_participant("T:1:settled", &worker, |p| p.tasks_done += 1)
            .unwrap());
        assert_eq!(store.participant(&worker).unwrap().tasks_done, 2);
        assert_eq!(store.participant(&verifier).unwrap().audits, 1);
    }
}
