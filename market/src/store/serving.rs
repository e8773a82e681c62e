//! What serving keeps: API keys (by the blake3 of the secret, never the secret), the receipt
//! of every served answer, and what each account owes for answers not yet settled.

use market_protocol::vrf::VrfProof;
use market_protocol::{AccountId, Answer, AnswerCheck, Beacon, Hash, Signed, TaskId, TaskSpec};
use serde::{Deserialize, Serialize};

use super::{get, Store, StoreError};

/// An API key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Its public id (`key_` and 16 hex digits of the secret's hash).
    pub id: String,
    /// The account it spends for.
    pub account: AccountId,
    /// A label for people.
    pub name: String,
    /// Most credits its requests may cost in all, if limited.
    pub spending_limit: Option<u64>,
    /// What its answered requests cost so far.
    pub spent: u64,
    /// Unix seconds.
    pub created: u64,
    /// Revoked keys authenticate nothing.
    pub revoked: bool,
}

/// A served answer's receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedReceipt {
    /// The request as a one-item inference task (its message id is the receipt's id).
    pub request: TaskSpec,
    /// The worker's signed answer.
    pub answer: Signed<Answer>,
    /// The answer record (JSON) whose blake3 the answer signs.
    pub record: String,
    /// The key that asked.
    pub key: String,
    /// The model's name as asked.
    pub model_name: String,
    /// What it costs the buyer.
    pub cost: u64,
    /// Unix seconds.
    pub created: u64,
    /// The ledger entry that escrowed its request's hold (none for a free answer).
    #[serde(default)]
    pub escrow_seq: Option<u64>,
}

/// A worker's answers not yet in a closed batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenBatch {
    /// Each answer's receipt id and leaf (the message id of its signed answer), in order.
    pub answers: Vec<(TaskId, Hash)>,
    /// Unix seconds of its first answer.
    pub opened: u64,
}

/// Where a batch's audit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Closed; its sampled answers are being checked or its settlement written.
    Auditing,
    /// Every sampled answer checked; the worker was paid.
    Verified,
    /// A sampled answer failed its check: the buyers were refunded and the worker slashed.
    Failed,
}

/// A closed batch of one worker's served answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeBatch {
    /// The Merkle root over its leaves (RFC 6962 shape over blake3): its name.
    pub root: Hash,
    /// The worker.
    pub worker: AccountId,
    /// Each answer's receipt id and leaf, in order.
    pub answers: Vec<(TaskId, Hash)>,
    /// Unix seconds of its first answer.
    pub opened: u64,
    /// Unix seconds of its closing.
    pub closed: u64,
    /// The operator's VRF beacon over the root, with its proof, once drawn.
    pub beacon: Option<(Beacon, VrfProof)>,
    /// The answers audited (indices into `answers`).
    pub sampled: Vec<u32>,
    /// Where its audit stands.
    pub status: BatchStatus,
    /// Why it failed.
    pub failure: Option<String>,
    /// Ledger entries of its settlement.
    pub ledger: Vec<u64>,
    /// The verifiers' accepted checks of its sampled answers (passes, and the failure the
    /// node confirmed), in the order they came.
    #[serde(default)]
    pub checks: Vec<Signed<AnswerCheck>>,
    /// Verifiers no longer asked about it: silent ones, and liars.
    #[serde(default)]
    pub excluded: Vec<AccountId>,
    /// Verifier draws made for it so far (each draw's round number).
    #[serde(default)]
    pub draws: u32,
}

impl Store {
    fn key_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("api_keys")?)
    }

    fn key_ids(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("api_key_ids")?)
    }

    /// Stores a new key under the hash of its secret.
    pub fn add_api_key(&self, secret_hash: &Hash, key: &ApiKey) -> Result<(), StoreError> {
        self.key_tree()?
            .insert(secret_hash.as_bytes(), serde_json::to_vec(key)?)?;
        self.key_ids()?
            .insert(key.id.as_bytes(), secret_hash.as_bytes().as_slice())?;
        Ok(())
    }

    /// The key whose secret hashes to `secret_hash`.
    pub fn api_key(&self, secret_hash: &Hash) -> Result<Option<ApiKey>, StoreError> {
        get(&self.key_tree()?, secret_hash.as_bytes())
    }

    /// The hash of the secret of the key `id`.
    fn key_hash(&self, id: &str) -> Result<Option<Hash>, StoreError> {
        Ok(self.key_ids()?.get(id.as_bytes())?.and_then(|v| {
            let bytes: [u8; 32] = v.as_ref().try_into().ok()?;
            Some(Hash(bytes))
        }))
    }

    /// Every key of `account`, oldest first.
    pub fn api_keys_of(&self, account: &AccountId) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys = Vec::new();
        for item in self.key_tree()?.iter() {
            let (_, v) = item?;
            let key: ApiKey = serde_json::from_slice(&v)?;
            if key.account == *account {
                keys.push(key);
            }
        }
        keys.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(keys)
    }

    /// Changes the key `id` of `account` with `change`; `None` if it has no such key.
    pub fn update_api_key(
        &self,
        account: &AccountId,
        id: &str,
        change: impl Fn(&mut ApiKey),
    ) -> Result<Option<ApiKey>, StoreError> {
        let Some(hash) = self.key_hash(id)? else {
            return Ok(None);
        };
        let tree = self.key_tree()?;
        loop {
            let Some(old) = tree.get(hash.as_bytes())? else {
                return Ok(None);
            };
            let mut key: ApiKey = serde_json::from_slice(&old)?;
            if key.account != *account {
                return Ok(None);
            }
            change(&mut key);
            let new = serde_json::to_vec(&key)?;
            if tree
                .compare_and_swap(hash.as_bytes(), Some(old), Some(new))?
                .is_ok()
            {
                return Ok(Some(key));
            }
        }
    }

    fn receipt_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("served_receipts")?)
    }

    fn open_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("serve_open_batches")?)
    }

    fn batch_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("serve_batches")?)
    }

    fn answer_batch_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("serve_answer_batch")?)
    }

    /// Records a served answer: its receipt, its cost on its key, and its place in its
    /// worker's open batch (`leaf`: the message id of its signed answer), in one transaction
    /// (a crash records all of it or none; recording it again changes nothing).
    pub fn record_served(
        &self,
        id: &TaskId,
        receipt: &ServedReceipt,
        key_hash: &Hash,
        worker: &AccountId,
        leaf: &Hash,
        now: u64,
    ) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, Transactional};
        let (receipts, keys, open) = (self.receipt_tree()?, self.key_tree()?, self.open_tree()?);
        let body = serde_json::to_vec(receipt)?;
        let abort = ConflictableTransactionError::Abort;
        let r = (&receipts, &keys, &open).transaction(|(receipts, keys, open)| {
            if receipts.get(id.as_bytes())?.is_some() {
                return Ok(());
            }
            receipts.insert(id.as_bytes().as_slice(), body.as_slice())?;
            if let Some(old) = keys.get(key_hash.as_bytes())? {
                let mut key: ApiKey = serde_json::from_slice(&old).map_err(abort)?;
                key.spent = key.spent.saturating_add(receipt.cost);
                let new = serde_json::to_vec(&key).map_err(abort)?;
                keys.insert(key_hash.as_bytes().as_slice(), new)?;
            }
            let mut batch: OpenBatch = match open.get(worker.as_bytes())? {
                Some(v) => serde_json::from_slice(&v).map_err(abort)?,
                None => OpenBatch {
                    answers: Vec::new(),
                    opened: now,
                },
            };
            batch.answers.push((*id, *leaf));
            let v = serde_json::to_vec(&batch).map_err(abort)?;
            open.insert(worker.as_bytes().as_slice(), v)?;
            Ok(())
        });
        super::transaction_result(r)
    }

    /// Every worker's open batch.
    pub fn open_batches(&self) -> Result<Vec<(AccountId, OpenBatch)>, StoreError> {
        let mut out = Vec::new();
        for item in self.open_tree()?.iter() {
            let (k, v) = item?;
            let Ok(bytes) = <[u8; 32]>::try_from(k.as_ref()) else {
                continue;
            };
            let Ok(worker) = AccountId::from_bytes(bytes) else {
                continue;
            };
            out.push((worker, serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// Closes `worker`'s open batch: its first `max` answers become a batch named by the
    /// Merkle root of their leaves, in the `auditing` state, and any later ones stay open (as
    /// a batch opened `now`), in one transaction. `None` if the worker has no open batch.
    pub fn close_batch(
        &self,
        worker: &AccountId,
        now: u64,
        max: usize,
    ) -> Result<Option<ServeBatch>, StoreError> {
        use sled::transaction::{ConflictableTransactionError, Transactional};
        let (open, batches, index) = (
            self.open_tree()?,
            self.batch_tree()?,
            self.answer_batch_tree()?,
        );
        let abort = ConflictableTransactionError::Abort;
        let r = (&open, &batches, &index).transaction(|(open, batches, index)| {
            let Some(v) = open.remove(worker.as_bytes().as_slice())? else {
                return Ok(None);
            };
            let mut o: OpenBatch = serde_json::from_slice(&v).map_err(abort)?;
            let rest = o.answers.split_off(o.answers.len().min(max.max(1)));
            if !rest.is_empty() {
                let left = OpenBatch {
                    answers: rest,
                    opened: now,
                };
                open.insert(
                    worker.as_bytes().as_slice(),
                    serde_json::to_vec(&left).map_err(abort)?,
                )?;
            }
            let leaves: Vec<[u8; 32]> = o.answers.iter().map(|(_, l)| l.0).collect();
            let root = market_protocol::MerkleTree::new(&leaves).root();
            let batch = ServeBatch {
                root,
                worker: *worker,
                answers: o.answers.clone(),
                opened: o.opened,
                closed: now,
                beacon: None,
                sampled: Vec::new(),
                status: BatchStatus::Auditing,
                failure: None,
                ledger: Vec::new(),
                checks: Vec::new(),
                excluded: Vec::new(),
                draws: 0,
            };
            batches.insert(
                root.as_bytes().as_slice(),
                serde_json::to_vec(&batch).map_err(abort)?,
            )?;
            for (i, (answer, _)) in o.answers.iter().enumerate() {
                let mut at = root.as_bytes().to_vec();
                at.extend_from_slice(&(i as u64).to_be_bytes());
                index.insert(answer.as_bytes().as_slice(), at)?;
            }
            Ok(Some(batch))
        });
        super::transaction_result(r)
    }

    /// Saves a batch's progress.
    pub fn save_batch(&self, batch: &ServeBatch) -> Result<(), StoreError> {
        self.batch_tree()?
            .insert(batch.root.as_bytes(), serde_json::to_vec(batch)?)?;
        Ok(())
    }

    /// A closed batch.
    pub fn batch(&self, root: &Hash) -> Result<Option<ServeBatch>, StoreError> {
        get(&self.batch_tree()?, root.as_bytes())
    }

    /// Batches whose audit has not finished (resumed after a restart).
    pub fn batches_auditing(&self) -> Result<Vec<ServeBatch>, StoreError> {
        let mut out = Vec::new();
        for item in self.batch_tree()?.iter() {
            let (_, v) = item?;
            let b: ServeBatch = serde_json::from_slice(&v)?;
            if b.status == BatchStatus::Auditing {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// The closed batch a served answer is in, and its place there.
    pub fn batch_of(&self, answer: &TaskId) -> Result<Option<(ServeBatch, u64)>, StoreError> {
        let Some(v) = self.answer_batch_tree()?.get(answer.as_bytes())? else {
            return Ok(None);
        };
        if v.len() != 40 {
            return Ok(None);
        }
        let mut root = [0u8; 32];
        root.copy_from_slice(&v[..32]);
        let index = super::be_u64(&v[32..]);
        Ok(self.batch(&Hash(root))?.map(|b| (b, index)))
    }

    fn hold_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("serve_holds")?)
    }

    /// Notes a served request's escrowed hold before it is escrowed (key: its receipt id;
    /// value: unix seconds), so one a crash interrupts is settled when the node comes back.
    pub fn add_hold(&self, id: &TaskId, now: u64) -> Result<(), StoreError> {
        self.hold_tree()?
            .insert(id.as_bytes(), &now.to_be_bytes())?;
        Ok(())
    }

    /// Whether a request's hold is not settled yet (its unused part not back).
    pub fn has_hold(&self, id: &TaskId) -> Result<bool, StoreError> {
        Ok(self.hold_tree()?.contains_key(id.as_bytes())?)
    }

    /// Forgets a hold whose unused part went back to its buyer.
    pub fn remove_hold(&self, id: &TaskId) -> Result<(), StoreError> {
        self.hold_tree()?.remove(id.as_bytes())?;
        Ok(())
    }

    /// Holds noted before `before` (unix seconds) and not yet settled.
    pub fn holds_before(&self, before: u64) -> Result<Vec<TaskId>, StoreError> {
        let mut out = Vec::new();
        for item in self.hold_tree()?.iter() {
            let (k, v) = item?;
            if super::be_u64(&v) < before {
                if let Ok(bytes) = <[u8; 32]>::try_from(k.as_ref()) {
                    out.push(TaskId(Hash(bytes)));
                }
            }
        }
        Ok(out)
    }

    /// A served answer's receipt.
    pub fn served_receipt(&self, id: &TaskId) -> Result<Option<ServedReceipt>, StoreError> {
        get(&self.receipt_tree()?, id.as_bytes())
    }
}
