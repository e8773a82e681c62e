//! What serving keeps: API keys (by the blake3 of the secret, never the secret), the receipt
//! of every served answer, and what each account owes for answers not yet settled.

use market_protocol::{AccountId, Answer, Hash, Signed, TaskId, TaskSpec};
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

    fn owed_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("served_owed")?)
    }

    /// Records a served answer: its receipt, its cost on its key and on what its buyer owes,
    /// in one transaction (a crash records all of it or none).
    pub fn record_served(
        &self,
        id: &TaskId,
        receipt: &ServedReceipt,
        key_hash: &Hash,
    ) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, Transactional};
        let (receipts, keys, owed) = (self.receipt_tree()?, self.key_tree()?, self.owed_tree()?);
        let body = serde_json::to_vec(receipt)?;
        let buyer = receipt.request.buyer;
        let r = (&receipts, &keys, &owed).transaction(|(receipts, keys, owed)| {
            if receipts.get(id.as_bytes())?.is_some() {
                return Ok(());
            }
            receipts.insert(id.as_bytes().as_slice(), body.as_slice())?;
            if let Some(old) = keys.get(key_hash.as_bytes())? {
                let mut key: ApiKey =
                    serde_json::from_slice(&old).map_err(ConflictableTransactionError::Abort)?;
                key.spent = key.spent.saturating_add(receipt.cost);
                let new = serde_json::to_vec(&key).map_err(ConflictableTransactionError::Abort)?;
                keys.insert(key_hash.as_bytes().as_slice(), new)?;
            }
            let before = owed.get(buyer.as_bytes())?.map_or(0, |v| super::be_u64(&v));
            owed.insert(
                buyer.as_bytes().as_slice(),
                &before.saturating_add(receipt.cost).to_be_bytes()[..],
            )?;
            Ok(())
        });
        super::transaction_result(r)
    }

    /// A served answer's receipt.
    pub fn served_receipt(&self, id: &TaskId) -> Result<Option<ServedReceipt>, StoreError> {
        get(&self.receipt_tree()?, id.as_bytes())
    }

    /// What `account` owes for served answers not yet settled.
    pub fn served_owed(&self, account: &AccountId) -> Result<u64, StoreError> {
        Ok(self
            .owed_tree()?
            .get(account.as_bytes())?
            .map_or(0, |v| super::be_u64(&v)))
    }
}
