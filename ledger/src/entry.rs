//! Ledger entries: what is signed, how it is encoded, and how one line of an export is read.
//!
//! An entry is `{"body": EntryBody, "signature": hex}`. The operator signs
//! `"market/v1/LedgerEntry" || 0x00 || JCS(body)` (the protocol's [`signing_bytes`]), and the
//! entry's hash, which the next entry names as `prev`, is blake3 of those same bytes. Because the
//! hash does not cover the signature, a batch of bodies can be chained first and signed in
//! parallel afterwards.
//!
//! The stored form and the export line of an entry are both its canonical JSON, so an export is
//! the stored bytes verbatim and any other spelling of the same entry is refused.

use std::fmt;
use std::str::FromStr;

use market_protocol::canonical::{
    to_canonical_bytes, CanonicalError, MAX_MESSAGE_BYTES, MAX_SAFE_INTEGER,
};
use market_protocol::{
    message_id, AccountId, Commitment, Credits, Hash, Identity, Message, Signature, SignatureError,
    Signed, TaskId, TaskSpec, Verdict, Version,
};
use serde::{Deserialize, Deserializer, Serialize};

/// The domain tag of ledger entries.
pub const ENTRY_DOMAIN: &str = "market/v1/LedgerEntry";

/// The longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// The longest slash reason, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// The largest encoded entry (one export line without its newline).
pub const MAX_ENTRY_BYTES: usize = MAX_MESSAGE_BYTES;

/// The idempotency key of the genesis entry.
pub const GENESIS_KEY: &str = "genesis";

/// Why an idempotency key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "idempotency key {0:?} must be 1 to {MAX_KEY_BYTES} bytes of printable ASCII without spaces"
)]
pub struct KeyError(pub String);

/// The caller's name for one operation. The same key twice records one entry, so a client that
/// retries after a timeout cannot pay twice. Printable ASCII only, so that a key reads the same
/// in every log and terminal and has exactly one JSON spelling.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks and wraps `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        let ok = !key.is_empty()
            && key.len() <= MAX_KEY_BYTES
            && key.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(key))
        } else {
            Err(KeyError(key.chars().take(MAX_KEY_BYTES + 8).collect()))
        }
    }

    /// The key of the genesis entry.
    pub fn genesis() -> Self {
        Self(GENESIS_KEY.to_owned())
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// What an entry does. Amounts are whole credits; every variant that moves credits keeps the
/// total supply (balances + stakes + open escrow) equal to the sum of all mints.
///
/// In JSON a kind is an object with one member named after the variant, e.g.
/// `{"mint":{"amount":5,"to":"…"}}` (serde's external tagging, which decodes without
/// buffering). Fields are declared in JCS order (sorted by name) so that plain serde output is
/// already canonical; see [`canonical_body`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EntryKind {
    /// Entry 0 only: names the operator key that signs every entry of this ledger.
    Genesis {
        /// The operator's account.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        ledger: AccountId,
    },
    /// Credits issued by the operator (for example against a fiat payment).
    Mint {
        /// How many.
        amount: Credits,
        /// Who receives them.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        to: AccountId,
    },
    /// Credits moved between two accounts at the account owner's request.
    Transfer {
        /// How much.
        amount: Credits,
        /// Who pays.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        from: AccountId,
        /// Who is paid.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        to: AccountId,
    },
    /// A buyer's credits locked for a task until it settles.
    Escrow {
        /// How many; equal to the spec's price when the spec is embedded.
        amount: Credits,
        /// Whose credits are locked.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        buyer: AccountId,
        /// The buyer's signed task, so the ledger proves the buyer asked for it (boxed: it is
        /// the largest thing an entry holds, and most entries hold none).
        spec: Option<Box<Signed<TaskSpec>>>,
        /// The task.
        task_id: TaskId,
    },
    /// A worker's commitment to a task with an open escrow, recorded before any challenge.
    /// `beacon_proof` is the operator's VRF proof over the commitment id; its output is the
    /// beacon every verifier's challenge is drawn from (`market_protocol::beacon`), which the
    /// worker could not compute and the operator could not choose. Moves no credits.
    Commit {
        /// The operator's ECVRF proof of the beacon (checked against the entry's signer).
        beacon_proof: market_protocol::vrf::VrfProof,
        /// The worker's signed commitment.
        commitment: Signed<Commitment>,
        /// The task.
        task_id: TaskId,
        /// The worker.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        worker: AccountId,
    },
    /// Escrow paid out to the worker after the audits passed.
    Release {
        /// How much leaves the escrow.
        amount: Credits,
        /// The worker's signed commitment to the result that was accepted.
        commitment: Option<Signed<Commitment>>,
        /// The task.
        task_id: TaskId,
        /// Who is paid.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        worker: AccountId,
    },
    /// Escrow returned to its buyer.
    Refund {
        /// How much leaves the escrow.
        amount: Credits,
        /// The escrow's buyer (checked against the escrow).
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        buyer: AccountId,
        /// The task.
        task_id: TaskId,
    },
    /// A verifier's fee, paid from the task's escrow.
    Reward {
        /// How much leaves the escrow.
        amount: Credits,
        /// The task.
        task_id: TaskId,
        /// The verifier's signed verdict the fee is for.
        verdict: Option<Signed<Verdict>>,
        /// Who is paid.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        verifier: AccountId,
    },
    /// Credits moved from an account's balance to its stake (workers and verifiers).
    Stake {
        /// Whose.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        account: AccountId,
        /// How many.
        amount: Credits,
    },
    /// Credits moved from an account's stake back to its balance.
    Unstake {
        /// Whose.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        account: AccountId,
        /// How many.
        amount: Credits,
    },
    /// Stake taken for misbehaviour and paid to `to`. Credits are never burned, so the supply
    /// stays provable.
    Slash {
        /// Whose stake.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        account: AccountId,
        /// How much.
        amount: Credits,
        /// The hash of the evidence: the failed verdict's id.
        evidence: Hash,
        /// Why, for people.
        reason: String,
        /// Who receives the slashed credits (the harmed party or the operator's treasury).
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        to: AccountId,
        /// The signed verdict itself, when the operator has it.
        verdict: Option<Signed<Verdict>>,
    },
    /// A round of a pooled training task merged (`spec/COMPUTE.md` section 10): the global
    /// state `global` (`G_{round+1}`) is the merge of the slots' accepted runs, named by their
    /// commitments in slot order (each recorded earlier in a `commit` entry of the same task).
    /// Moves no credits; anyone recomputes `global` from those commitments' final states and
    /// the previous round's entry, so the model's whole history is checkable from the export.
    PoolRound {
        /// The merged global state's hash.
        global: market_protocol::StateHash,
        /// The round (0-based).
        round: u32,
        /// The accepted slot-rounds' commitments, in slot order.
        slots: Vec<market_protocol::CommitmentId>,
        /// The pooled task.
        task_id: TaskId,
    },
    /// A change of reputation score (no credits move).
    Reputation {
        /// Whose.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        account: AccountId,
        /// Added to the score; never zero.
        delta: i64,
    },
    /// An account moved to a new key: `from`'s balance, stake and reputation become `to`'s,
    /// and `from` can never act again. Both keys signed (the old one the request, the new one
    /// its acceptance), so only the holder gives an account away and only to a key someone
    /// holds.
    Rotate {
        /// The new key's signed acceptance of `rotation`.
        acceptance: Signed<market_protocol::RotationAcceptance>,
        /// The old key.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        from: AccountId,
        /// The old key's signed request.
        rotation: Signed<market_protocol::KeyRotation>,
        /// The new key.
        #[serde(deserialize_with = "crate::accounts::deserialize")]
        to: AccountId,
    },
}

/// Why the evidence embedded in an entry does not support it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The embedded message's signature or author is wrong.
    #[error("embedded message: {0}")]
    Signature(#[from] SignatureError),
    /// The embedded message cannot be canonicalized.
    #[error("embedded message: {0}")]
    Canonical(#[from] CanonicalError),
    /// The embedded message says something else than the entry.
    #[error("embedded {message} does not match the entry's {field}")]
    Mismatch {
        /// The embedded message type.
        message: &'static str,
        /// The entry field it contradicts.
        field: &'static str,
    },
}

impl EntryKind {
    /// The `commit` entry recording a worker's signed commitment, with `operator`'s beacon proof,
    /// and the beacon it proves.
    pub fn commit_of(
        operator: &Identity,
        commitment: Signed<Commitment>,
    ) -> Result<(Self, market_protocol::Beacon), EvidenceError> {
        let body = commitment.verify()?;
        let id = market_protocol::CommitmentId(commitment.id()?);
        let (task_id, worker) = (body.task_id, body.worker);
        let (beacon, beacon_proof) = market_protocol::beacon::prove_beacon(operator, &id);
        Ok((
            Self::Commit {
                beacon_proof,
                commitment,
                task_id,
                worker,
            },
            beacon,
        ))
    }

    /// An escrow of a buyer's signed task, with the task id, buyer and amount taken from it.
    pub fn escrow_of(spec: Signed<TaskSpec>) -> Result<Self, EvidenceError> {
        spec.verify()?;
        Ok(Self::Escrow {
            task_id: TaskId(spec.id()?),
            buyer: spec.body.buyer,
            amount: spec.body.price,
            spec: Some(Box::new(spec)),
        })
    }

    /// The variant's name, as in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Genesis { .. } => "genesis",
            Self::Mint { .. } => "mint",
            Self::Transfer { .. } => "transfer",
            Self::Escrow { .. } => "escrow",
            Self::Commit { .. } => "commit",
            Self::Release { .. } => "release",
            Self::Refund { .. } => "refund",
            Self::Reward { .. } => "reward",
            Self::Stake { .. } => "stake",
            Self::Unstake { .. } => "unstake",
            Self::Slash { .. } => "slash",
            Self::PoolRound { .. } => "pool_round",
            Self::Reputation { .. } => "reputation",
            Self::Rotate { .. } => "rotate",
        }
    }

    /// Whether the kind embeds a participant's signed message.
    pub fn embeds_message(&self) -> bool {
        matches!(
            self,
            Self::Escrow { spec: Some(_), .. }
                | Self::Commit { .. }
                | Self::Release {
                    commitment: Some(_),
                    ..
                }
                | Self::Reward {
                    verdict: Some(_),
                    ..
                }
                | Self::Slash {
                    verdict: Some(_),
                    ..
                }
                | Self::Rotate { .. }
        )
    }

    /// The largest integer magnitude among the kind's own fields.
    fn largest_integer(&self) -> u64 {
        match self {
            Self::Genesis { .. } | Self::Commit { .. } | Self::Rotate { .. } => 0,
            Self::PoolRound { round, .. } => u64::from(*round),
            Self::Mint { amount, .. }
            | Self::Transfer { amount, .. }
            | Self::Escrow { amount, .. }
            | Self::Release { amount, .. }
            | Self::Refund { amount, .. }
            | Self::Reward { amount, .. }
            | Self::Stake { amount, .. }
            | Self::Unstake { amount, .. }
            | Self::Slash { amount, .. } => amount.0,
            Self::Reputation { delta, .. } => delta.unsigned_abs(),
        }
    }

    /// Checks every embedded participant message: its signature, and that it says what the
    /// entry claims. Stateless, so verification runs it in parallel.
    /// `operator` is the ledger's key (the entry's signer), under which a `commit` entry's
    /// beacon proof must verify.
    pub fn check_evidence(&self, operator: &AccountId) -> Result<(), EvidenceError> {
        let mismatch = |message, field| EvidenceError::Mismatch { message, field };
        match self {
            Self::Escrow {
                task_id,
                buyer,
                amount,
                spec: Some(spec),
            } => {
                let body = spec.verify()?;
                if body.buyer != *buyer {
                    return Err(mismatch("task spec", "buyer"));
                }
                if body.price != *amount {
                    return Err(mismatch("task spec", "amount"));
                }
                if TaskId(message_id(body)?) != *task_id {
                    return Err(mismatch("task spec", "task_id"));
                }
            }
            Self::Release {
                task_id,
                worker,
                commitment: Some(commitment),
                ..
            }
            | Self::Commit {
                task_id,
                worker,
                commitment,
                ..
            } => {
                let body = commitment.verify()?;
                if body.worker != *worker {
                    return Err(mismatch("commitment", "worker"));
                }
                if body.task_id != *task_id {
                    return Err(mismatch("commitment", "task_id"));
                }
            }
            Self::Reward {
                verifier,
                verdict: Some(verdict),
                ..
            } if verdict.verify()?.verifier != *verifier => {
                return Err(mismatch("verdict", "verifier"));
            }
            Self::Slash {
                evidence,
                verdict: Some(verdict),
                ..
            } if message_id(verdict.verify()?)? != *evidence => {
                return Err(mismatch("verdict", "evidence"));
            }
            Self::Rotate {
                acceptance,
                from,
                rotation,
                to,
            } => {
                let request = rotation.verify()?;
                if request.from != *from {
                    return Err(mismatch("key rotation", "from"));
                }
                if request.to != *to {
                    return Err(mismatch("key rotation", "to"));
                }
                let accepted = acceptance.verify()?;
                if accepted.to != *to {
                    return Err(mismatch("rotation acceptance", "to"));
                }
                if accepted.rotation != message_id(request)? {
                    return Err(mismatch("rotation acceptance", "rotation"));
                }
            }
            _ => {}
        }
        if let Self::Commit {
            beacon_proof,
            commitment,
            ..
        } = self
        {
            let id = market_protocol::CommitmentId(message_id(&commitment.body)?);
            market_protocol::beacon::verify_beacon(operator, &id, beacon_proof)
                .map_err(|_| mismatch("commitment", "beacon_proof"))?;
        }
        Ok(())
    }
}

/// The signed part of an entry. Fields are declared in JCS order (sorted by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// The caller's idempotency key; unique in the chain.
    pub key: IdempotencyKey,
    /// What happened.
    pub kind: EntryKind,
    /// The hash of entry `seq - 1`; all zeros for genesis.
    pub prev: Hash,
    /// Position in the chain, from 0 (genesis) without gaps.
    pub seq: u64,
    /// The operator key (the genesis entry's `ledger`).
    #[serde(deserialize_with = "crate::accounts::deserialize")]
    pub signer: AccountId,
    /// Protocol version.
    pub version: Version,
}

impl Message for EntryBody {
    const DOMAIN: &'static str = ENTRY_DOMAIN;
    fn author(&self) -> Option<AccountId> {
        Some(self.signer)
    }
}

/// A body with the operator's signature: one line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// What is signed.
    pub body: EntryBody,
    /// ed25519 by `body.signer` over the body's signing bytes.
    pub signature: Signature,
}

/// Why bytes are not a well-formed entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_ENTRY_BYTES`].
    #[error("entry is {0} bytes, over the limit of {MAX_ENTRY_BYTES}")]
    TooLarge(usize),
    /// Not JSON, or not the shape of an entry.
    #[error("not a ledger entry: {0}")]
    Json(String),
    /// An entry, but not spelled in canonical JSON.
    #[error("entry is not in canonical JSON (RFC 8785) form")]
    NotCanonical,
    /// A number or string the canonical form cannot hold.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

/// An entry together with what was computed from it: its hash and its canonical line.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedEntry {
    /// The entry.
    pub entry: Entry,
    /// blake3 of its signing bytes.
    pub hash: Hash,
    /// Its canonical JSON (the stored bytes and the export line, without newline).
    pub line: Vec<u8>,
}

/// A body chained and hashed but not yet signed.
#[derive(Debug)]
pub(crate) struct Unsigned {
    pub body: EntryBody,
    pub body_json: Vec<u8>,
    pub signing: Vec<u8>,
    pub hash: Hash,
}

impl Unsigned {
    /// Canonicalizes and hashes `body`.
    pub fn new(body: EntryBody) -> Result<Self, CanonicalError> {
        let body_json = canonical_body(&body)?;
        debug_assert_eq!(Ok(&body_json), to_canonical_bytes(&body).as_ref());
        let signing = domain_bytes(&body_json);
        let hash = Hash::of(&signing);
        Ok(Self {
            body,
            body_json,
            signing,
            hash,
        })
    }

    /// Signs with `operator`, which must be the body's signer.
    pub fn sign(self, operator: &Identity) -> SealedEntry {
        let signature = operator.sign_raw(&self.signing);
        self.seal(signature)
    }

    /// Completes the entry with a signature made elsewhere over [`Unsigned::signing`].
    pub fn seal(self, signature: Signature) -> SealedEntry {
        let line = line_bytes(&self.body_json, &signature);
        SealedEntry {
            entry: Entry {
                body: self.body,
                signature,
            },
            hash: self.hash,
            line,
        }
    }
}

/// The canonical JSON of an entry body: exactly what [`to_canonical_bytes`] returns, faster.
///
/// Verification canonicalizes every entry, and the protocol's generic path (through a
/// `serde_json::Value` tree) costs more than anything but the signature check. A body without
/// embedded messages holds only objects whose fields are declared in sorted order, strings
/// (which serde_json escapes exactly as JCS does) and integers; once the integers are checked
/// to be safe, serde_json's compact output is already the canonical form. Bodies that embed a
/// participant's message take the protocol's path. Tests check that both paths agree.
pub fn canonical_body(body: &EntryBody) -> Result<Vec<u8>, CanonicalError> {
    if body.kind.embeds_message() {
        return to_canonical_bytes(body);
    }
    let largest = body.seq.max(body.kind.largest_integer());
    if largest > MAX_SAFE_INTEGER {
        return Err(CanonicalError::Number(largest.to_string()));
    }
    serde_json::to_vec(body).map_err(|e| CanonicalError::Shape(e.to_string()))
}

/// `DOMAIN || 0x00 || body_json`, as [`signing_bytes`] builds it.
fn domain_bytes(body_json: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ENTRY_DOMAIN.len() + 1 + body_json.len());
    bytes.extend_from_slice(ENTRY_DOMAIN.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(body_json);
    bytes
}

/// The canonical JSON of an entry from its canonical body: `"body"` sorts before
/// `"signature"`, so the entry's JCS is this concatenation and needs no second pass.
fn line_bytes(body_json: &[u8], signature: &Signature) -> Vec<u8> {
    let mut line = Vec::with_capacity(body_json.len() + 128 + 24);
    line.extend_from_slice(b"{\"body\":");
    line.extend_from_slice(body_json);
    line.extend_from_slice(b",\"signature\":\"");
    line.extend_from_slice(&signature_hex(signature));
    line.extend_from_slice(b"\"}");
    line
}

/// A signature as 128 lowercase hex digits, without allocating.
fn signature_hex(signature: &Signature) -> [u8; 128] {
    let mut hex = [0u8; 128];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(signature.0) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    hex
}

/// Whether `line` is exactly [`line_bytes`]`(body_json, signature)`, checked in place because
/// verification does this for every entry.
fn is_line_of(line: &[u8], body_json: &[u8], signature: &Signature) -> bool {
    const HEAD: &[u8] = b"{\"body\":";
    const MID: &[u8] = b",\"signature\":\"";
    const TAIL: &[u8] = b"\"}";
    let sig_hex = signature_hex(signature);
    let Some(rest) = line.strip_prefix(HEAD) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(body_json) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(MID) else {
        return false;
    };
    rest.strip_prefix(&sig_hex[..]) == Some(TAIL)
}

impl Entry {
    /// Signs `body` with `operator`. Fails if the body names another signer.
    pub fn sign(body: EntryBody, operator: &Identity) -> Result<SealedEntry, SignatureError> {
        if body.signer != operator.account() {
            return Err(SignatureError::WrongSigner {
                domain: ENTRY_DOMAIN,
                author: body.signer,
                signer: operator.account(),
            });
        }
        Ok(Unsigned::new(body)?.sign(operator))
    }

    /// blake3 of the signing bytes (its message id): the value the next entry's `prev` holds.
    pub fn hash(&self) -> Result<Hash, CanonicalError> {
        message_id(&self.body)
    }

    /// Checks the operator signature alone (strict RFC 8032), without chain context.
    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        market_protocol::verify_signature(&self.body, self.body.signer, &self.signature)
    }

    /// Decodes one canonical line (no newline). Any other spelling is refused, so every entry
    /// has exactly one accepted encoding and a changed byte can never go unnoticed.
    pub fn decode(line: &[u8]) -> Result<Decoded, DecodeError> {
        if line.len() > MAX_ENTRY_BYTES {
            return Err(DecodeError::TooLarge(line.len()));
        }
        let entry: Entry =
            serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
        let body_json = canonical_body(&entry.body)?;
        if !is_line_of(line, &body_json, &entry.signature) {
            return Err(DecodeError::NotCanonical);
        }
        let signing = domain_bytes(&body_json);
        let hash = Hash::of(&signing);
        Ok(Decoded {
            entry,
            signing,
            hash,
        })
    }
}

/// A decoded entry with its signing bytes and hash, ready for signature checks.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The entry.
    pub entry: Entry,
    /// The bytes its signature covers.
    pub signing: Vec<u8>,
    /// blake3 of `signing`.
    pub hash: Hash,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: EntryKind, operator: &Identity) -> EntryBody {
        EntryBody {
            version: Version::CURRENT,
            seq: 3,
            prev: Hash::of(b"prev"),
            key: IdempotencyKey::new("k-1").expect("valid key"),
            signer: operator.account(),
            kind,
        }
    }

    #[test]
    fn line_is_the_canonical_json_and_hash_is_over_signing_bytes() {
        let op = Identity::from_test_label("operator");
        let kind = EntryKind::Mint {
            to: Identity::from_test_label("alice").account(),
            amount: Credits(5),
        };
        let sealed = Entry::sign(body(kind, &op), &op).expect("sign");
        assert_eq!(
            sealed.line,
            to_canonical_bytes(&sealed.entry).expect("canonical")
        );
        let signing = market_protocol::signing_bytes(&sealed.entry.body).expect("signing bytes");
        assert!(signing.starts_with(b"market/v1/LedgerEntry\0{"));
        assert_eq!(sealed.hash, Hash::of(&signing));
        assert_eq!(sealed.entry.hash().expect("hash"), sealed.hash);
        sealed.entry.verify_signature().expect("valid signature");
        let decoded = Entry::decode(&sealed.line).expect("decodes");
        assert_eq!(decoded.entry, sealed.entry);
        assert_eq!(decoded.hash, sealed.hash);
    }

    #[test]
    fn non_canonical_spellings_are_refused() {
        let op = Identity::from_test_label("operator");
        let sealed = Entry::sign(
            body(
                EntryKind::Genesis {
                    ledger: op.account(),
                },
                &op,
            ),
            &op,
        )
        .expect("sign");
        let text = String::from_utf8(sealed.line).expect("utf8");
        let spaced = text.replacen(':', ": ", 1);
        assert_eq!(
            Entry::decode(spaced.as_bytes()).unwrap_err(),
            DecodeError::NotCanonical
        );
        let reordered = format!(
            "{{\"signature\":\"{}\",\"body\":{}}}",
            sealed.entry.signature,
            String::from_utf8(to_canonical_bytes(&sealed.entry.body).expect("c")).expect("u")
        );
        assert_eq!(
            Entry::decode(reordered.as_bytes()).unwrap_err(),
            DecodeError::NotCanonical
        );
        assert!(matches!(
            Entry::decode(b"{\"body\":1}"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn keys_are_bounded_printable_ascii() {
        assert!(IdempotencyKey::new("escrow/abc:1").is_ok());
        assert!(IdempotencyKey::new("x".repeat(MAX_KEY_BYTES)).is_ok());
        for bad in [
            String::new(),
            "x".repeat(MAX_KEY_BYTES + 1),
            "has space".into(),
            "tab\t".into(),
            "é".into(),
        ] {
            assert!(IdempotencyKey::new(bad.clone()).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<IdempotencyKey>("\"a b\"").is_err());
    }

    #[test]
    fn signer_must_be_the_operator() {
        let op = Identity::from_test_label("operator");
        let other = Identity::from_test_label("mallory");
        let b = body(
            EntryKind::Reputation {
                account: op.account(),
                delta: 1,
            },
            &op,
        );
        assert!(matches!(
            Entry::sign(b, &other),
            Err(SignatureError::WrongSigner { .. })
        ));
    }

    mod fast_canonical {
        use super::*;
        use proptest::prelude::*;

        fn account() -> impl Strategy<Value = AccountId> {
            any::<u16>().prop_map(|i| Identity::from_test_label(&i.to_string()).account())
        }

        fn credits() -> impl Strategy<Value = Credits> {
            prop_oneof![
                0u64..1000,
                Just(MAX_SAFE_INTEGER),
                Just(MAX_SAFE_INTEGER + 1),
                any::<u64>()
            ]
            .prop_map(Credits)
        }

        fn plain_kind() -> impl Strategy<Value = EntryKind> {
            let hash = any::<[u8; 32]>().prop_map(Hash);
            prop_oneof![
                account().prop_map(|ledger| EntryKind::Genesis { ledger }),
                (credits(), account()).prop_map(|(amount, to)| EntryKind::Mint { amount, to }),
                (credits(), account(), account())
                    .prop_map(|(amount, from, to)| EntryKind::Transfer { amount, from, to }),
                (credits(), account(), hash.clone()).prop_map(|(amount, buyer, h)| {
                    EntryKind::Escrow {
                        amount,
                        buyer,
                        spec: None,
                        task_id: TaskId(h),
                    }
                }),
                (credits(), account(), hash.clone()).prop_map(|(amount, worker, h)| {
                    EntryKind::Release {
                        amount,
                        commitment: None,
                        task_id: TaskId(h),
                        worker,
                    }
                }),
                (credits(), account(), hash.clone()).prop_map(|(amount, buyer, h)| {
                    EntryKind::Refund {
                        amount,
                        buyer,
                        task_id: TaskId(h),
                    }
                }),
                (credits(), account(), hash.clone()).prop_map(|(amount, verifier, h)| {
                    EntryKind::Reward {
                        amount,
                        task_id: TaskId(h),
                        verdict: None,
                        verifier,
                    }
                }),
                (account(), credits())
                    .prop_map(|(account, amount)| EntryKind::Stake { account, amount }),
                (account(), credits())
                    .prop_map(|(account, amount)| EntryKind::Unstake { account, amount }),
                (account(), credits(), hash, any::<String>(), account()).prop_map(
                    |(account, amount, evidence, reason, to)| EntryKind::Slash {
                        account,
                        amount,
                        evidence,
                        reason,
                        to,
                        verdict: None,
                    }
                ),
                (account(), any::<i64>())
                    .prop_map(|(account, delta)| EntryKind::Reputation { account, delta }),
            ]
        }

        fn idempotency_key() -> impl Strategy<Value = IdempotencyKey> {
            "[!-~]{1,128}".prop_map(|k| IdempotencyKey::new(k).expect("generated keys are valid"))
        }

        proptest! {
            /// The fast path writes exactly the protocol's canonical bytes, and refuses exactly
            /// what the protocol refuses.
            #[test]
            fn agrees_with_the_protocol(
                kind in plain_kind(),
                key in idempotency_key(),
                seq in prop_oneof![0u64..1000, Just(MAX_SAFE_INTEGER + 1)],
                prev in any::<[u8; 32]>(),
            ) {
                let body = EntryBody {
                    key,
                    kind,
                    prev: Hash(prev),
                    seq,
                    signer: Identity::from_test_label("op").account(),
                    version: Version::CURRENT,
                };
                let fast = canonical_body(&body);
                let reference = to_canonical_bytes(&body);
                prop_assert_eq!(fast.is_ok(), reference.is_ok());
                if let (Ok(f), Ok(r)) = (fast, reference) {
                    prop_assert_eq!(f, r);
                }
            }
        }
    }
}
