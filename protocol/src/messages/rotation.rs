//! [`KeyRotation`] and [`RotationAcceptance`]: an account moving everything it holds to a new
//! key, signed by both keys.
//!
//! A participant whose key may have leaked, or who moves to a new machine, keeps its balance,
//! stake and reputation under a new key. The old key signs the request (only the holder may
//! give the account away) and the new key signs its acceptance (proof that someone holds it, so
//! a typo cannot send an account to a key nobody has). The ledger records both in a `rotate`
//! entry; from then on the old key can no longer act (`ledger/README.md`).

use serde::{Deserialize, Serialize};

use super::Version;
use crate::hash::Hash;
use crate::keys::AccountId;
use crate::signed::Message;

/// The old key's request: move account `from` to key `to`. Signed by `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// Protocol version.
    pub version: Version,
    /// The account (old key) that gives up its key.
    pub from: AccountId,
    /// The new key, which takes the balance, stake and reputation.
    pub to: AccountId,
}

impl Message for KeyRotation {
    const DOMAIN: &'static str = "market/v1/KeyRotation";
    fn author(&self) -> Option<AccountId> {
        Some(self.from)
    }
}

/// The new key's acceptance of one rotation, named by its message id. Signed by `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationAcceptance {
    /// Protocol version.
    pub version: Version,
    /// The message id of the [`KeyRotation`] accepted.
    pub rotation: Hash,
    /// The new key.
    pub to: AccountId,
}

impl Message for RotationAcceptance {
    const DOMAIN: &'static str = "market/v1/RotationAcceptance";
    fn author(&self) -> Option<AccountId> {
        Some(self.to)
    }
}
