//! Heads and signed heads: the operator's signed statement "my chain has `seq + 1` entries and
//! ends in `hash`".
//!
//! A peer that kept an old signed head can later ask for the chain and check that entry `seq`
//! still hashes to `hash`. Every entry names its predecessor's hash, so that one match proves
//! the whole old chain is a prefix of the new one: the ledger only grew.

use market_protocol::{AccountId, Hash, Message, SignatureError, Signed, Version};
use serde::{Deserialize, Serialize};

/// The domain tag of signed heads.
pub const HEAD_DOMAIN: &str = "market/v1/LedgerHead";

/// The last entry of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Its sequence number (the chain holds `seq + 1` entries).
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
}

/// The body of a signed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerHead {
    /// Protocol version.
    pub version: Version,
    /// The ledger's operator key (its genesis `ledger`).
    pub ledger: AccountId,
    /// The head's sequence number.
    pub seq: u64,
    /// The head entry's hash.
    pub hash: Hash,
}

impl Message for LedgerHead {
    const DOMAIN: &'static str = HEAD_DOMAIN;
    fn author(&self) -> Option<AccountId> {
        Some(self.ledger)
    }
}

/// A head signed by the ledger's operator.
pub type SignedHead = Signed<LedgerHead>;

/// Why a signed head does not describe a prefix of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The signature is wrong.
    #[error("signed head: {0}")]
    Signature(#[from] SignatureError),
    /// The head was signed by another ledger's key.
    #[error("signed head is from ledger {found}, this ledger is {expected}")]
    OtherLedger {
        /// This chain's operator.
        expected: AccountId,
        /// The head's signer.
        found: AccountId,
    },
    /// The chain is shorter than the signed head: entries were removed.
    #[error("signed head is at seq {seq} but the chain ends at {head}: the ledger shrank")]
    Shrank {
        /// The signed head's seq.
        seq: u64,
        /// This chain's head seq.
        head: u64,
    },
    /// The chain has another entry at the signed seq: history was rewritten.
    #[error("entry {seq} hashes to {found}, the signed head says {signed}: history was rewritten")]
    Rewritten {
        /// The signed seq.
        seq: u64,
        /// The hash in the signed head.
        signed: Hash,
        /// The hash in this chain.
        found: Hash,
    },
}

/// Checks that `signed` is a valid head of `ledger` and that the chain ending in `head`, whose
/// entry hashes `hash_at` looks up, extends it.
pub fn check_prefix(
    signed: &SignedHead,
    ledger: AccountId,
    head: Head,
    hash_at: impl FnOnce(u64) -> Option<Hash>,
) -> Result<(), HeadError> {
    let body = signed.verify()?;
    if body.ledger != ledger {
        return Err(HeadError::OtherLedger {
            expected: ledger,
            found: body.ledger,
        });
    }
    if body.seq > head.seq {
        return Err(HeadError::Shrank {
            seq: body.seq,
            head: head.seq,
        });
    }
    match hash_at(body.seq) {
        Some(found) if found == body.hash => Ok(()),
        Some(found) => Err(HeadError::Rewritten {
            seq: body.seq,
            signed: body.hash,
            found,
        }),
        None => Err(HeadError::Shrank {
            seq: body.seq,
            head: head.seq,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::Identity;

    #[test]
    fn prefix_checks() {
        let op = Identity::from_test_label("operator");
        let hashes: Vec<Hash> = (0u8..5).map(|i| Hash::of(&[i])).collect();
        let signed = Signed::sign(
            LedgerHead {
                version: Version::CURRENT,
                ledger: op.account(),
                seq: 2,
                hash: hashes[2],
            },
            &op,
        )
        .expect("sign");
        let head = Head {
            seq: 4,
            hash: hashes[4],
        };
        let lookup = |s: u64| hashes.get(s as usize).copied();
        check_prefix(&signed, op.account(), head, lookup).expect("prefix");
        let short = Head {
            seq: 1,
            hash: hashes[1],
        };
        assert!(matches!(
            check_prefix(&signed, op.account(), short, lookup),
            Err(HeadError::Shrank { seq: 2, head: 1 })
        ));
        assert!(matches!(
            check_prefix(&signed, op.account(), head, |_| Some(Hash::of(b"x"))),
            Err(HeadError::Rewritten { seq: 2, .. })
        ));
        let other = Identity::from_test_label("other").account();
        assert!(matches!(
            check_prefix(&signed, other, head, lookup),
            Err(HeadError::OtherLedger { .. })
        ));
        let mut forged = signed.clone();
        forged.body.seq = 3;
        assert!(matches!(
            check_prefix(&forged, op.account(), head, lookup),
            Err(HeadError::Signature(_))
        ));
    }
}
