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

use market_protocol::canonical::{to_canonical_bytes, CanonicalError, MAX_MESSAGE_BYTES};
use market_protocol::{
    message_id, signing_bytes, AccountId, Commitment, Credits, Hash, Identity, Message,
    Signature, SignatureError, Signed, TaskId, TaskSpec, Verdict, Version,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntryKind {
    /// Entry 0 only: names the operator key that signs every entry of this ledger.
    Genesis {
        /// The operator's account.
        ledger: AccountId,
    },
    /// Credits issued by the operator (for example against a fiat payment).
    Mint {
        /// Who receives them.
        to: AccountId,
        /// How many.
        amount: Credits,
    },
    /// Credits moved between two accounts at the account owner's request.
    Transfer {
        /// Who pays.
        from: AccountId,
        /// Who is paid.
        to: AccountId,
        /// How much.
        amount: Credits,
    },
    /// A buyer's credits locked for a task until it settles.
    Escrow {
        /// The task.
        task_id: TaskId,
        /// Whose credits are locked.
        buyer: AccountId,
        /// How many; equal to the spec's price when the spec is embedded.
        amount: Credits,
        /// The buyer's signed task, so the ledger proves the buyer asked for it.
        spec: Option<Signed<TaskSpec>>,
    },
    /// Escrow paid out to the worker after the audits passed.
    Release {
        /// The task.
        task_id: TaskId,
        /// Who is paid.
        worker: AccountId,
        /// How much leaves the escrow.
        amount: Credits,
        /// The worker's signed commitment to the result that was accepted.
        commitment: Option<Signed<Commitment>>,
    },
    /// Escrow returned to its buyer.
    Refund {
        /// The task.
        task_id: TaskId,
        /// The escrow's buyer (checked against the escrow).
        buyer: AccountId,
        /// How much leaves the escrow.
        amount: Credits,
    },
    /// A verifier's fee, paid from the task's escrow.
    Reward {
        /// The task.
        task_id: TaskId,
        /// Who is paid.
        verifier: AccountId,
        /// How much leaves the escrow.
        amount: Credits,
        /// The verifier's signed verdict the fee is for.
        verdict: Option<Signed<Verdict>>,
    },
    /// Credits moved from an account's balance to its stake (workers and verifiers).
    Stake {
        /// Whose.
        account: AccountId,
        /// How many.
        amount: Credits,
    },
    /// Credits moved from an account's stake back to its balance.
    Unstake {
        /// Whose.
        account: AccountId,
        /// How many.
        amount: Credits,
    },
    /// Stake taken for misbehaviour and paid to `to`. Credits are never burned, so the supply
    /// stays provable.
    Slash {
        /// Whose stake.
        account: AccountId,
        /// How much.
        amount: Credits,
        /// Who receives the slashed credits (the harmed party or the operator's treasury).
        to: AccountId,
        /// Why, for people.
        reason: String,
        /// The hash of the evidence: the failed verdict's id.
        evidence: Hash,
        /// The signed verdict itself, when the operator has it.
        verdict: Option<Signed<Verdict>>,
    },
    /// A change of reputation score (no credits move).
    Reputation {
        /// Whose.
        account: AccountId,
        /// Added to the score; never zero.
        delta: i64,
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
    /// An escrow of a buyer's signed task, with the task id, buyer and amount taken from it.
    pub fn escrow_of(spec: Signed<TaskSpec>) -> Result<Self, EvidenceError> {
        spec.verify()?;
        Ok(Self::Escrow {
            task_id: TaskId(spec.id()?),
            buyer: spec.body.buyer,
            amount: spec.body.price,
            spec: Some(spec),
        })
    }

    /// The variant's name, as in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Genesis { .. } => "genesis",
            Self::Mint { .. } => "mint",
            Self::Transfer { .. } => "transfer",
            Self::Escrow { .. } => "escrow",
            Self::Release { .. } => "release",
            Self::Refund { .. } => "refund",
            Self::Reward { .. } => "reward",
            Self::Stake { .. } => "stake",
            Self::Unstake { .. } => "unstake",
            Self::Slash { .. } => "slash",
            Self::Reputation { .. } => "reputation",
        }
    }

    /// Checks every embedded participant message: its signature, and that it says what the
    /// entry claims. Stateless, so verification runs it in parallel.
    pub fn check_evidence(&self) -> Result<(), EvidenceError> {
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
            } => {
                if verdict.verify()?.verifier != *verifier {
                    return Err(mismatch("verdict", "verifier"));
                }
            }
            Self::Slash {
                evidence,
                verdict: Some(verdict),
                ..
            } => {
                if message_id(verdict.verify()?)? != *evidence {
                    return Err(mismatch("verdict", "evidence"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The signed part of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// Protocol version.
    pub version: Version,
    /// Position in the chain, from 0 (genesis) without gaps.
    pub seq: u64,
    /// The hash of entry `seq - 1`; all zeros for genesis.
    pub prev: Hash,
    /// The caller's idempotency key; unique in the chain.
    pub key: IdempotencyKey,
    /// The operator key (the genesis entry's `ledger`).
    pub signer: AccountId,
    /// What happened.
    pub kind: EntryKind,
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
        let body_json = to_canonical_bytes(&body)?;
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
    let sig = signature.to_string();
    let mut line = Vec::with_capacity(body_json.len() + sig.len() + 24);
    line.extend_from_slice(b"{\"body\":");
    line.extend_from_slice(body_json);
    line.extend_from_slice(b",\"signature\":\"");
    line.extend_from_slice(sig.as_bytes());
    line.extend_from_slice(b"\"}");
    line
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

    /// blake3 of the signing bytes: the value the next entry's `prev` holds.
    pub fn hash(&self) -> Result<Hash, CanonicalError> {
        Ok(Hash::of(&signing_bytes(&self.body)?))
    }

    /// Checks the operator signature alone (strict RFC 8032), without chain context.
    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        let bytes = signing_bytes(&self.body)?;
        self.body
            .signer
            .verifying_key()
            .verify_strict(&bytes, &self.signature.to_dalek())
            .map_err(|_| SignatureError::BadSignature {
                domain: ENTRY_DOMAIN,
                signer: self.body.signer,
            })
    }

    /// Decodes one canonical line (no newline). Any other spelling is refused, so every entry
    /// has exactly one accepted encoding and a changed byte can never go unnoticed.
    pub fn decode(line: &[u8]) -> Result<Decoded, DecodeError> {
        if line.len() > MAX_ENTRY_BYTES {
            return Err(DecodeError::TooLarge(line.len()));
        }
        let entry: Entry =
            serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
        let body_json = to_canonical_bytes(&entry.body)?;
        if line_bytes(&body_json, &entry.signature) != line {
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
        let signing = signing_bytes(&sealed.entry.body).expect("signing bytes");
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
}
