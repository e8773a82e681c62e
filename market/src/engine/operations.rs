//! The name of every ledger operation the node writes, in one place. The ledger makes an
//! operation idempotent by its key; the node derives the key from a text naming the operation
//! (`kind:` then the inputs that make it unique, joined by `:`), so a retry after a crash finds
//! the entry it already wrote instead of paying twice. `spec/PROTOCOL.md` ("Idempotency keys")
//! writes the texts down and `spec/vectors/operation-keys.json` pins them.

use market_ledger::IdempotencyKey;
use market_protocol::{AccountId, Hash, TaskId};

/// One ledger operation of the node. `attempt` is the attempt's 0-based index in its task
/// record; `task` is the record's id (a pooled task's slot-round has its own, derived id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation<'a> {
    /// A posted task's escrow.
    Escrow { task: TaskId },
    /// A worker's commitment for an attempt.
    Commit {
        task: TaskId,
        attempt: usize,
        worker: AccountId,
    },
    /// A verifier's fee for an accepted attempt.
    Reward {
        task: TaskId,
        attempt: usize,
        verifier: AccountId,
    },
    /// The worker's pay for an accepted attempt.
    Release { task: TaskId, attempt: usize },
    /// One payee's share of a slash; `tag` tells apart slashes of one attempt (the reason
    /// text, or the evidence for a lying verdict).
    Slash {
        task: TaskId,
        attempt: usize,
        account: AccountId,
        payee: AccountId,
        tag: &'a str,
    },
    /// What is left of a task's escrow, back to its buyer.
    Refund { task: TaskId },
    /// A pooled task's merged round.
    PoolRound { task: TaskId, round: u32 },
    /// Operator funding: credits minted to `account` under the operator's `label`.
    Mint { label: &'a str, account: AccountId },
    /// Operator funding: credits of `account` staked under the operator's `label`.
    Stake { label: &'a str, account: AccountId },
    /// A participant's signed hello raising its stake from `current` to `target`.
    StakeHello {
        account: AccountId,
        current: u64,
        target: u64,
    },
    /// A reputation change of `account` for `event` (which names the task, attempt and cause).
    Reputation { event: &'a str, account: AccountId },
    /// What a served request may cost, locked before it runs (`answer` is its receipt id).
    ServeEscrow { answer: TaskId },
    /// What a served request held beyond its answer's cost (all of it, without an answer),
    /// back to its buyer.
    ServeUnused { answer: TaskId },
    /// A served answer's cost, paid to its worker once the answer's batch passed its audit.
    ServeRelease { answer: TaskId },
    /// A served answer's cost, back to its buyer: its batch failed its audit.
    ServeRefund { answer: TaskId },
    /// A serving worker's stake taken for the batch `batch` (its Merkle root) that failed its
    /// audit, paid to `payee`.
    ServeSlash { batch: Hash, payee: AccountId },
    /// The fee of the verifier whose check of a served answer the node accepted, from that
    /// answer's escrow.
    ServeCheckFee { answer: TaskId },
    /// A verifier's stake taken for its signed check `check` (its message id) of a served
    /// answer: a failure the node's own check contradicted, or a pass of a planted fake.
    ServeVerifierSlash { check: Hash },
    /// An account moved to a new key (named by the old key: an account rotates once).
    Rotate { from: AccountId },
}

impl Operation<'_> {
    /// The text naming the operation, e.g. `release:<task>:0` (ids in lowercase hex).
    pub fn text(&self) -> String {
        match self {
            Self::Escrow { task } => format!("escrow:{task}"),
            Self::Commit {
                task,
                attempt,
                worker,
            } => format!("commit:{task}:{attempt}:{worker}"),
            Self::Reward {
                task,
                attempt,
                verifier,
            } => format!("reward:{task}:{attempt}:{verifier}"),
            Self::Release { task, attempt } => format!("release:{task}:{attempt}"),
            Self::Slash {
                task,
                attempt,
                account,
                payee,
                tag,
            } => format!("slash:{task}:{attempt}:{account}:{payee}:{tag}"),
            Self::Refund { task } => format!("refund:{task}"),
            Self::PoolRound { task, round } => format!("pool_round:{task}:{round}"),
            Self::Mint { label, account } => format!("mint:{label}:{account}"),
            Self::Stake { label, account } => format!("stake:{label}:{account}"),
            Self::StakeHello {
                account,
                current,
                target,
            } => format!("stake:hello:{account}:{current}:{target}"),
            Self::Reputation { event, account } => format!("rep:{event}:{account}"),
            Self::ServeEscrow { answer } => format!("serve_escrow:{answer}"),
            Self::ServeUnused { answer } => format!("serve_unused:{answer}"),
            Self::ServeRelease { answer } => format!("serve_release:{answer}"),
            Self::ServeRefund { answer } => format!("serve_refund:{answer}"),
            Self::ServeSlash { batch, payee } => format!("serve_slash:{batch}:{payee}"),
            Self::ServeCheckFee { answer } => format!("serve_check_fee:{answer}"),
            Self::ServeVerifierSlash { check } => format!("serve_verifier_slash:{check}"),
            Self::Rotate { from } => format!("rotate:{from}"),
        }
    }

    /// The ledger key: the text's kind (up to its first `:`), a `:`, and the first 48 hex
    /// digits of the blake3 of the whole text, which fits the ledger's limit of 128 bytes
    /// whatever the text's length and stays unique.
    pub fn key(&self) -> Result<IdempotencyKey, market_ledger::KeyError> {
        key_of_text(&self.text())
    }
}

/// The evidence of an abandoned run's slash (no verdict exists for a run that produced
/// nothing): `blake3("abandoned:" TASK ":" ATTEMPT ":" WORKER)`, ids in lowercase hex and the
/// attempt in decimal, so anyone reading the export can tie the slash to its attempt.
pub fn abandon_evidence(task: &TaskId, attempt: usize, worker: &AccountId) -> Hash {
    Hash::of(format!("abandoned:{task}:{attempt}:{worker}").as_bytes())
}

/// [`Operation::key`] of an operation's text.
pub fn key_of_text(text: &str) -> Result<IdempotencyKey, market_ledger::KeyError> {
    let kind = text.split(':').next().unwrap_or("op");
    IdempotencyKey::new(format!(
        "{kind}:{}",
        &Hash::of(text.as_bytes()).to_hex()[..48]
    ))
}
