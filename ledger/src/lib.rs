//! The market's signed local ledger: credits, escrows, stakes and reputation as an append-only,
//! hash-chained chain of entries signed by the operator, stored in sled.
//!
//! The ledger must never lose a credit, never invent one, and let anyone prove both from an
//! export. Hence:
//!
//! - every entry is signed over its canonical JSON with its own domain tag and names its
//!   predecessor's hash ([`entry`]); entries that carry a participant's decision embed the
//!   participant's own signed message, so the ledger is evidence and not only the operator's
//!   claim;
//! - derived state is written in the same atomic sled batch as the entries that imply it, and
//!   an overdraft writes nothing ([`state`]);
//! - an append returns only after a flush, and concurrent appends share flushes ([`Ledger`]:
//!   one commit thread chains each batch, a pool signs it on all cores, one sled batch and one
//!   flush make it durable);
//! - [`Ledger::verify`] and [`verify_export`] recheck every link and signature and replay every
//!   operation; the first bad sequence number is named ([`Broken`]);
//! - signed heads let a peer check that the ledger only grew ([`head`]).
//!
//! `README.md` in this crate describes the export format for independent verifiers. All sled
//! code is in the private `storage` module, behind the default `store` feature: without it
//! (`default-features = false`) the crate is the verifier alone (entries, replay, exports,
//! heads, statements), which builds for `wasm32-unknown-unknown` (`ledger/wasm`).

mod accounts;
#[cfg(feature = "store")]
mod commit;
pub mod entry;
mod error;
pub mod export;
pub mod head;
#[cfg(feature = "store")]
mod ledger;
#[cfg(feature = "remote")]
pub mod remote;
#[cfg(feature = "store")]
mod signer;
pub mod state;
pub mod statement;
#[cfg(feature = "store")]
mod storage;
pub mod verify;

pub use entry::{
    Entry, EntryBody, EntryKind, EvidenceError, IdempotencyKey, KeyError, ENTRY_DOMAIN,
};
pub use error::LedgerError;
pub use export::{verify_export, verify_export_file, ExportReport};
pub use head::{check_prefix, Head, HeadError, LedgerHead, SignedHead, HEAD_DOMAIN};
#[cfg(feature = "store")]
pub use ledger::{Appended, Ledger, OpenCheck, OpenOptions, VerifyReport};
pub use market_protocol as protocol;
pub use state::{Escrow, OpError, State};
pub use statement::{statement, statements, Statement, StatementLine, Totals};
#[cfg(feature = "store")]
pub use storage::StorageError;
pub use verify::{Broken, Fault, Summary};
