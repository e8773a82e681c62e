//! Who may read and use blobs, how many bytes each account holds, and which blobs expire.
//!
//! A blob's first uploader owns it. Anyone else who uploads the same bytes, and the buyer of a
//! task whose result it is, holds it as an owner does (they have the bytes, or paid for them).
//! An owner may grant another account the use of a blob (to read it and to name it in tasks)
//! and revoke that grant. A blob no task reads or produced expires a while after its last
//! upload; uploads count against the uploader's quota until then, and for good once pinned.

use market_protocol::{AccountId, BlobId};
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{be_u64, transaction_result, Store, StoreError};

/// What an account may do with a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobAccess {
    /// It uploaded the bytes or bought the task that made them: read, use, grant.
    Holder,
    /// An owner granted it: read and use in its tasks.
    Granted,
    /// Nothing.
    None,
}

/// The outcome of recording an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadCharge {
    /// New to this account: its usage grew by the blob's size.
    Charged,
    /// The account held it already: nothing charged, its expiry pushed back.
    AlreadyHeld,
    /// It would take the account past its quota: nothing recorded.
    OverQuota {
        /// Bytes the account holds now.
        used: u64,
    },
}

const HOLDER: &[u8] = b"o";
const GRANTED: &[u8] = b"g";

#[derive(Serialize, Deserialize)]
struct BlobMeta {
    size: u64,
    last_upload: u64,
}

fn reader_key(id: &BlobId, account: &AccountId) -> Vec<u8> {
    [id.as_bytes().as_slice(), account.as_bytes()].concat()
}

impl Store {
    /// The blob lifecycle lock (see [`Store::blob_lock`]); never held across an await.
    fn blob_life(&self) -> std::sync::MutexGuard<'_, ()> {
        self.blob_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who uploaded a blob first.
    pub fn blob_owner(&self, id: &BlobId) -> Result<Option<AccountId>, StoreError> {
        Ok(self
            .blob_owners
            .get(id.as_bytes())?
            .and_then(|v| v.as_ref().try_into().ok())
            .and_then(|b: [u8; 32]| AccountId::from_bytes(b).ok()))
    }

    /// What `account` may do with blob `id`; `None` if the blob is not there.
    pub fn blob_access(
        &self,
        id: &BlobId,
        account: &AccountId,
    ) -> Result<Option<BlobAccess>, StoreError> {
        let Some(owner) = self.blob_owner(id)? else {
            return Ok(None);
        };
        if owner == *account {
            return Ok(Some(BlobAccess::Holder));
        }
        Ok(Some(
            match self.blob_readers.get(reader_key(id, account))?.as_deref() {
                Some(HOLDER) => BlobAccess::Holder,
                Some(_) => BlobAccess::Granted,
                None => BlobAccess::None,
            },
        ))
    }

    /// Whether `account` may read blob `id`. `None` if the blob is not there.
    pub fn may_read_blob(
        &self,
        id: &BlobId,
        account: &AccountId,
    ) -> Result<Option<bool>, StoreError> {
        Ok(self
            .blob_access(id, account)?
            .map(|a| a != BlobAccess::None))
    }

    /// Bytes `account` holds in blobs.
    pub fn blob_usage(&self, account: &AccountId) -> Result<u64, StoreError> {
        Ok(self
            .blob_usage
            .get(account.as_bytes())?
            .map_or(0, |v| be_u64(&v)))
    }

    /// Records that `account` uploaded blob `id` of `size` bytes at `now`: it owns the blob if
    /// nobody did, and holds it otherwise; `size` counts against its `quota` unless it held
    /// the blob already. Atomic, so concurrent uploads of one account never pass its quota
    /// together.
    pub fn record_upload(
        &self,
        id: &BlobId,
        account: &AccountId,
        size: u64,
        now: u64,
        quota: u64,
    ) -> Result<UploadCharge, StoreError> {
        let _life = self.blob_life();
        let trees = (
            &self.blob_owners,
            &self.blob_readers,
            &self.blob_usage,
            &self.blob_meta,
            &self.blob_uploads,
        );
        let charge = transaction_result(trees.transaction(
            |(owners, readers, usage, meta, uploads)| {
                let owner = owners.get(id.as_bytes())?;
                let rkey = reader_key(id, account);
                let held = owner.as_deref() == Some(account.as_bytes().as_slice())
                    || readers.get(&rkey)?.as_deref() == Some(HOLDER);
                let used = usage.get(account.as_bytes())?.map_or(0, |v| be_u64(&v));
                let charge = if held {
                    UploadCharge::AlreadyHeld
                } else if used.saturating_add(size) > quota {
                    return Ok(UploadCharge::OverQuota { used });
                } else {
                    if owner.is_none() {
                        owners.insert(id.as_bytes(), account.as_bytes())?;
                    } else {
                        readers.insert(rkey, HOLDER)?;
                    }
                    usage.insert(account.as_bytes(), &(used + size).to_be_bytes()[..])?;
                    UploadCharge::Charged
                };
                let m = serde_json::to_vec(&BlobMeta {
                    size,
                    last_upload: now,
                })
                .map_err(ConflictableTransactionError::Abort)?;
                meta.insert(id.as_bytes(), m)?;
                uploads.insert([&now.to_be_bytes()[..], id.as_bytes()].concat(), &[])?;
                Ok(charge)
            },
        ))?;
        self.flush()?;
        Ok(charge)
    }

    /// Gives key `to` every blob right account `from` has (after `from` was rotated to `to`):
    /// it holds what `from` owned or held, is granted what `from` was granted, and takes
    /// over its quota use. Once per rotation (a marker in the same transaction as the quota
    /// move), so it runs again safely after a crash, at start-up.
    pub fn move_blobs(&self, from: &AccountId, to: &AccountId) -> Result<(), StoreError> {
        let _life = self.blob_life();
        let marker = [b"rotated_blobs\0".as_slice(), from.as_bytes()].concat();
        if self.counted.contains_key(&marker)? {
            return Ok(());
        }
        // Rotations are rare: a scan of who holds what.
        let mut rights: Vec<(BlobId, &'static [u8])> = Vec::new();
        for item in self.blob_owners.iter() {
            let (k, v) = item?;
            if v.as_ref() == from.as_bytes().as_slice() {
                if let Ok(b) = <[u8; 32]>::try_from(k.as_ref()) {
                    rights.push((BlobId(market_protocol::Hash(b)), HOLDER));
                }
            }
        }
        for item in self.blob_readers.iter() {
            let (k, v) = item?;
            if k.get(32..64) == Some(from.as_bytes().as_slice()) {
                if let Ok(b) = <[u8; 32]>::try_from(&k[..32]) {
                    let right = if v.as_ref() == HOLDER {
                        HOLDER
                    } else {
                        GRANTED
                    };
                    rights.push((BlobId(market_protocol::Hash(b)), right));
                }
            }
        }
        let trees = (&self.blob_readers, &self.blob_usage, &self.counted);
        transaction_result(trees.transaction(|(readers, usage, counted)| {
            if counted.get(&marker)?.is_some() {
                return Ok(());
            }
            for (id, right) in &rights {
                let k = reader_key(id, to);
                // Holding outranks a grant.
                if readers.get(&k)?.as_deref() != Some(HOLDER) {
                    readers.insert(k, *right)?;
                }
            }
            let moved = usage.get(from.as_bytes())?.map_or(0, |v| be_u64(&v));
            let had = usage.get(to.as_bytes())?.map_or(0, |v| be_u64(&v));
            usage.insert(to.as_bytes(), &had.saturating_add(moved).to_be_bytes()[..])?;
            usage.remove(from.as_bytes())?;
            counted.insert(marker.as_slice(), &[])?;
            Ok(())
        }))?;
        self.flush()
    }

    /// Makes `holder` hold blob `id` as an owner does, without charging it (the buyer of the
    /// task whose result it is); the first to hold it owns it.
    pub fn hold_result(&self, id: &BlobId, holder: &AccountId) -> Result<(), StoreError> {
        let _life = self.blob_life();
        let first = self
            .blob_owners
            .compare_and_swap(
                id.as_bytes(),
                None as Option<&[u8]>,
                Some(&holder.as_bytes()[..]),
            )?
            .is_ok();
        if !first && self.blob_owner(id)? != Some(*holder) {
            self.blob_readers.insert(reader_key(id, holder), HOLDER)?;
        }
        self.blob_pins.insert(id.as_bytes(), &[])?;
        Ok(())
    }

    /// Makes `account` a holder of blob `id` (an upload finished after its uploader's key was
    /// rotated to `account`).
    pub fn hold_blob(&self, id: &BlobId, account: &AccountId) -> Result<(), StoreError> {
        let _life = self.blob_life();
        self.blob_readers.insert(reader_key(id, account), HOLDER)?;
        self.flush()
    }

    /// Lets `grantee` read blob `id` and use it in its tasks (an owner's grant). A holder
    /// stays a holder.
    pub fn grant_blob(&self, id: &BlobId, grantee: &AccountId) -> Result<(), StoreError> {
        let key = reader_key(id, grantee);
        let _ = self
            .blob_readers
            .compare_and_swap(key, None as Option<&[u8]>, Some(GRANTED))?;
        self.flush()
    }

    /// Withdraws a grant (a holder's own rights cannot be withdrawn). Tasks already posted
    /// with the blob keep it. Returns whether there was a grant.
    pub fn revoke_blob_grant(&self, id: &BlobId, grantee: &AccountId) -> Result<bool, StoreError> {
        let key = reader_key(id, grantee);
        let revoked = self
            .blob_readers
            .compare_and_swap(key, Some(GRANTED), None as Option<&[u8]>)?
            .is_ok();
        self.flush()?;
        Ok(revoked)
    }

    /// Counts a use of blob `id` at `now` (a task naming it is being posted): it does not
    /// expire until `blob_ttl_secs` after that. A blob that is not there is left alone.
    pub fn touch_blob(&self, id: &BlobId, now: u64) -> Result<(), StoreError> {
        let _life = self.blob_life();
        let Some(meta) = self.blob_meta.get(id.as_bytes())? else {
            return Ok(());
        };
        let mut meta: BlobMeta = serde_json::from_slice(&meta)?;
        if meta.last_upload < now {
            meta.last_upload = now;
            self.blob_meta
                .insert(id.as_bytes(), serde_json::to_vec(&meta)?)?;
            self.blob_uploads
                .insert([&now.to_be_bytes()[..], id.as_bytes()].concat(), &[])?;
        }
        Ok(())
    }

    /// A stored blob's size, if the node recorded an upload of it.
    pub fn blob_size(&self, id: &BlobId) -> Result<Option<u64>, StoreError> {
        self.blob_meta
            .get(id.as_bytes())?
            .map(|m| serde_json::from_slice::<BlobMeta>(&m).map(|m| m.size))
            .transpose()
            .map_err(Into::into)
    }

    /// Keeps blob `id` for good: a task reads it or produced it.
    pub fn pin_blob(&self, id: &BlobId) -> Result<(), StoreError> {
        let _life = self.blob_life();
        self.blob_pins.insert(id.as_bytes(), &[])?;
        Ok(())
    }

    /// Forgets blobs whose last upload was before `before` and that no task pinned, at most
    /// `max` uploads looked at: their owners' and holders' usage shrinks, their rights go, and
    /// `delete` removes each one's file. Each blob is decided and deleted under the lifecycle
    /// lock, so an upload, a use or a pin either comes first (and keeps it) or finds it gone.
    /// Returns the blobs deleted.
    pub fn expire_blobs(
        &self,
        before: u64,
        max: usize,
        mut delete: impl FnMut(&BlobId) -> std::io::Result<()>,
    ) -> Result<Vec<BlobId>, StoreError> {
        let mut expired = Vec::new();
        let due: Vec<sled::IVec> = self
            .blob_uploads
            .range(..before.to_be_bytes().to_vec())
            .keys()
            .take(max)
            .collect::<Result<_, _>>()?;
        for key in due {
            let _life = self.blob_life();
            self.blob_uploads.remove(&key)?;
            let Some(id) = key
                .get(8..40)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(|b| BlobId(market_protocol::Hash(b)))
            else {
                continue;
            };
            let Some(meta) = self.blob_meta.get(id.as_bytes())? else {
                continue;
            };
            let meta: BlobMeta = serde_json::from_slice(&meta)?;
            // Uploaded or used again since (a later index entry stands for it), or pinned:
            // kept.
            if meta.last_upload >= before || self.blob_pins.contains_key(id.as_bytes())? {
                continue;
            }
            let mut charged: Vec<AccountId> = self.blob_owner(&id)?.into_iter().collect();
            for item in self.blob_readers.scan_prefix(id.as_bytes()) {
                let (k, v) = item?;
                if v.as_ref() == HOLDER {
                    if let Some(a) = k
                        .get(32..64)
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .and_then(|b| AccountId::from_bytes(b).ok())
                    {
                        charged.push(a);
                    }
                }
                self.blob_readers.remove(k)?;
            }
            for a in &charged {
                self.blob_usage.fetch_and_update(a.as_bytes(), |old| {
                    let left = old.map_or(0, be_u64).saturating_sub(meta.size);
                    Some(left.to_be_bytes().to_vec())
                })?;
            }
            self.blob_owners.remove(id.as_bytes())?;
            self.blob_meta.remove(id.as_bytes())?;
            delete(&id)?;
            expired.push(id);
        }
        self.flush()?;
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::Identity;

    #[test]
    fn quotas_holders_grants_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = Identity::from_test_label("alice").account();
        let bob = Identity::from_test_label("bob").account();
        let carol = Identity::from_test_label("carol").account();
        let a = BlobId::of(b"a");
        let b = BlobId::of(b"b");
        // Quota: 100 bytes.
        assert_eq!(
            store.record_upload(&a, &alice, 60, 10, 100).unwrap(),
            UploadCharge::Charged
        );
        assert_eq!(
            store.record_upload(&b, &alice, 60, 10, 100).unwrap(),
            UploadCharge::OverQuota { used: 60 }
        );
        assert_eq!(
            store.blob_owner(&b).unwrap(),
            None,
            "nothing recorded over quota"
        );
        assert_eq!(
            store.record_upload(&a, &alice, 60, 20, 100).unwrap(),
            UploadCharge::AlreadyHeld
        );
        assert_eq!(store.blob_usage(&alice).unwrap(), 60);
        // Bob uploads the same bytes: he holds them too, and pays for them.
        assert_eq!(store.blob_access(&a, &bob).unwrap(), Some(BlobAccess::None));
        assert_eq!(
            store.record_upload(&a, &bob, 60, 30, 100).unwrap(),
            UploadCharge::Charged
        );
        assert_eq!(
            store.blob_access(&a, &bob).unwrap(),
            Some(BlobAccess::Holder)
        );
        // Grants, and their revocation; a holder's rights are not revocable.
        store.grant_blob(&a, &carol).unwrap();
        assert_eq!(
            store.blob_access(&a, &carol).unwrap(),
            Some(BlobAccess::Granted)
        );
        assert!(store.revoke_blob_grant(&a, &carol).unwrap());
        assert_eq!(
            store.blob_access(&a, &carol).unwrap(),
            Some(BlobAccess::None)
        );
        assert!(!store.revoke_blob_grant(&a, &bob).unwrap());
        // Expiry: not before the last upload; then everyone's usage is returned.
        assert!(
            store.expire_blobs(25, 100, |_| Ok(())).unwrap().is_empty(),
            "re-uploaded at 30"
        );
        assert_eq!(store.expire_blobs(31, 100, |_| Ok(())).unwrap(), vec![a]);
        assert_eq!(store.blob_usage(&alice).unwrap(), 0);
        assert_eq!(store.blob_usage(&bob).unwrap(), 0);
        assert_eq!(store.blob_access(&a, &bob).unwrap(), None);
        // A pinned blob is kept.
        store.record_upload(&b, &alice, 10, 40, 100).unwrap();
        store.pin_blob(&b).unwrap();
        assert!(store
            .expire_blobs(1000, 100, |_| Ok(()))
            .unwrap()
            .is_empty());
        assert_eq!(store.blob_usage(&alice).unwrap(), 10);
    }

    /// An expiry decides on a blob and deletes its file as one step: an upload (or a use, a
    /// pin, a result) of the same blob waits for it, instead of being undone by an expiry that
    /// read the blob's record before it and deletes the file after it.
    #[test]
    fn an_upload_during_an_expiry_waits_for_it_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = market_protocol::Identity::from_test_label("alice").account();
        let a = BlobId(market_protocol::Hash::of(b"a"));
        store.record_upload(&a, &alice, 10, 10, 100).unwrap();
        let expired = store
            .expire_blobs(20, 100, |_| {
                // Mid-expiry, another request uploads the same bytes again.
                let (s, id) = (store.clone(), a);
                let upload = std::thread::spawn(move || s.record_upload(&id, &alice, 10, 30, 100));
                std::thread::sleep(std::time::Duration::from_millis(200));
                assert!(
                    !upload.is_finished(),
                    "an upload went through while the blob's file was being deleted"
                );
                std::thread::spawn(move || upload.join().unwrap().unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(expired, vec![a]);
        // The upload lands after the expiry: the blob is there again, its owner charged once.
        for _ in 0..100 {
            if store.blob_size(&a).unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(store.blob_size(&a).unwrap(), Some(10));
        assert_eq!(store.blob_usage(&alice).unwrap(), 10);
        assert_eq!(
            store.blob_access(&a, &alice).unwrap(),
            Some(BlobAccess::Holder)
        );
    }
}
