//! The ledger's error type: one enum, so callers can match on what they can act on (refused,
//! conflict, broken) and report the rest.

use std::path::PathBuf;

use market_protocol::canonical::CanonicalError;
use market_protocol::{AccountId, SignatureError};

use crate::entry::{EvidenceError, IdempotencyKey};
use crate::head::HeadError;
use crate::state::OpError;
#[cfg(feature = "store")]
use crate::storage::StorageError;
use crate::verify::Broken;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The operation is refused by the rules (overdraft, missing escrow, ...); nothing written.
    #[error("refused: {0}")]
    Refused(#[from] OpError),
    /// An embedded participant message does not support the operation; nothing written.
    #[error("refused: {0}")]
    Evidence(#[from] EvidenceError),
    /// The idempotency key already recorded a different operation.
    #[error(
        "idempotency key {key} already recorded entry {seq} ({existing}); refusing a different \
         {requested} under the same key"
    )]
    KeyConflict {
        /// The key.
        key: IdempotencyKey,
        /// The entry recorded under it.
        seq: u64,
        /// That entry's kind.
        existing: &'static str,
        /// The requested kind.
        requested: &'static str,
    },
    /// The chain does not verify (boxed: it is much larger than the other variants).
    #[error(transparent)]
    Broken(Box<Broken>),
    /// The chain verifies but the stored derived state is not its replay.
    #[error("derived state does not match the entries up to seq {head}: {detail}")]
    StateMismatch {
        /// The head seq the replay reached.
        head: u64,
        /// The first difference.
        detail: String,
    },
    /// The database failed or is not a ledger.
    #[cfg(feature = "store")]
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The operator key does not sign this ledger.
    #[error("key {given} is not this ledger's operator key {ledger}")]
    WrongOperator {
        /// The ledger's genesis key.
        ledger: AccountId,
        /// The key given.
        given: AccountId,
    },
    /// The ledger was opened without an operator key.
    #[error("the ledger was opened read-only")]
    ReadOnly,
    /// A write or flush failed earlier; what is durable is unknown until the ledger is reopened
    /// (and verified).
    #[error("the ledger stopped accepting appends after a storage failure ({0}); reopen it")]
    Failed(String),
    /// A value cannot be canonicalized.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// Signing failed.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A signed head is invalid or not a prefix of this chain.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// Reading an export or writing one failed.
    #[error("{path}: {source}")]
    Io {
        /// The file, or `-` for standard streams.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<Broken> for LedgerError {
    fn from(broken: Broken) -> Self {
        Self::Broken(Box::new(broken))
    }
}

impl From<Box<Broken>> for LedgerError {
    fn from(broken: Box<Broken>) -> Self {
        Self::Broken(broken)
    }
}

impl LedgerError {
    /// The first bad sequence number, when the error is a broken chain.
    pub fn broken_seq(&self) -> Option<u64> {
        match self {
            Self::Broken(b) => Some(b.seq),
            _ => None,
        }
    }
}
