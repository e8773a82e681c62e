//! The vocabulary of market: ids, keys, canonical encoding, signed messages, Merkle proofs,
//! challenge sampling and detection maths.
//!
//! Plain data and pure functions: no networking, no async, no candle. The one piece of I/O is
//! [`keyfile`], so that every binary stores keys the same careful way. `spec/` describes all of
//! this for implementers in other languages, and its test vectors are checked by this crate's
//! tests.

pub mod beacon;
pub mod canonical;
pub mod detection;
pub mod fixtures;
pub mod hash;
pub mod keyfile;
pub mod keys;
pub mod merkle;
pub mod messages;
pub mod numbers;
pub mod sampling;
pub mod signed;
pub mod vrf;

pub use canonical::{from_canonical_bytes, to_canonical_bytes, CanonicalError};
pub use hash::{
    Beacon, BlobId, ChallengeId, ChallengeSeed, CommitmentId, Hash, HexError, StateHash, TaskId,
    VerdictId,
};
pub use keys::{AccountId, Identity, KeyError, Signature};
pub use merkle::{MerkleError, MerkleProof, MerkleTree};
pub use messages::*;
pub use numbers::{Credits, Decimal, F32Bits};
pub use signed::{message_id, signing_bytes, verify_signature, Message, SignatureError, Signed};
pub use vrf::{VrfError, VrfProof};
