//! Request nonces: each accepted once per account while its timestamp is fresh, and forgotten
//! by a time index once it is stale, off the request path.

use market_protocol::AccountId;

use super::{Store, StoreError};

impl Store {
    /// Records a nonce; false if the account used it before (a replay). It never scans:
    /// stale nonces are dropped by [`Store::expire_nonces`], which the node runs on a timer.
    pub fn use_nonce(
        &self,
        account: &AccountId,
        nonce: &str,
        timestamp: u64,
    ) -> Result<bool, StoreError> {
        let key = [account.as_bytes().as_slice(), nonce.as_bytes()].concat();
        let fresh = self
            .nonces
            .compare_and_swap(
                &key,
                None as Option<&[u8]>,
                Some(&timestamp.to_be_bytes()[..]),
            )?
            .is_ok();
        if fresh {
            self.nonce_times
                .insert([&timestamp.to_be_bytes()[..], &key].concat(), &[])?;
        }
        Ok(fresh)
    }

    /// Forgets nonces with timestamps before `before` (requests that old are refused as stale
    /// anyway), at most `max` of them; returns how many. Reads only the nonces it drops.
    pub fn expire_nonces(&self, before: u64, max: usize) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.nonce_times.range(..before.to_be_bytes().to_vec()) {
            if n >= max {
                break;
            }
            let (key, _) = item?;
            self.nonces.remove(&key[8..])?;
            self.nonce_times.remove(key)?;
            n += 1;
        }
        Ok(n)
    }

    /// How many nonces are remembered.
    pub fn nonce_count(&self) -> usize {
        self.nonces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::Identity;

    /// Issue 12 item 5: the old cleanup scanned every nonce on the request path whenever the
    /// requester picked a timestamp divisible by 64. Now a request only records its nonce,
    /// and expiry drops exactly the stale ones, by time.
    #[test]
    fn a_requester_cannot_make_a_request_scan_every_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..2000u64 {
            let account = Identity::from_test_label(&format!("fresh key {i}")).account();
            assert!(store
                .use_nonce(&account, "nonce-0000000000", 1000 + i % 10)
                .unwrap());
        }
        let attacker = Identity::from_test_label("attacker").account();
        // A timestamp divisible by 64 made the old code scan and drop everything stale.
        assert!(store
            .use_nonce(&attacker, "nonce-0000000064", 64 * 1000)
            .unwrap());
        assert_eq!(
            store.nonce_count(),
            2001,
            "the request path dropped nothing"
        );
        assert!(!store
            .use_nonce(&attacker, "nonce-0000000064", 64 * 1000)
            .unwrap());
        // Expiry by time: exactly the nonces before the cut, in bounded batches.
        assert_eq!(store.expire_nonces(1005, 600).unwrap(), 600);
        assert_eq!(store.expire_nonces(1005, usize::MAX).unwrap(), 400);
        assert_eq!(store.nonce_count(), 1001);
        // An expired nonce is forgotten (its timestamp is refused as stale by then anyway).
        let first = Identity::from_test_label("fresh key 0").account();
        assert!(store.use_nonce(&first, "nonce-0000000000", 1000).unwrap());
    }
}
