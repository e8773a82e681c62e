//! [`Receipt`]: the node's signed account of how a task settled.

use serde::{Deserialize, Serialize};

use super::Version;
use crate::hash::{CommitmentId, TaskId, VerdictId};
use crate::keys::AccountId;
use crate::numbers::Credits;
use crate::signed::Message;

/// How a task settled, signed by the node's operator. Every amount is also a ledger entry;
/// `ledger_seq` names the last of them so the receipt can be checked against an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Protocol version.
    pub version: Version,
    /// The operator that settled.
    pub operator: AccountId,
    /// The task.
    pub task_id: TaskId,
    /// The accepted commitment.
    pub commitment_id: CommitmentId,
    /// The verdicts that passed it.
    pub verdicts: Vec<VerdictId>,
    /// Paid to the worker, verifiers' fees and the refund to the buyer.
    pub payments: Vec<Payment>,
    /// The sequence number of the last ledger entry of the settlement.
    pub ledger_seq: u64,
}

impl Message for Receipt {
    const DOMAIN: &'static str = "market/v1/Receipt";
    fn author(&self) -> Option<AccountId> {
        Some(self.operator)
    }
}

/// One payment in a settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// Who is paid.
    pub account: AccountId,
    /// How much.
    pub amount: Credits,
    /// What the payment is for.
    pub kind: PaymentKind,
}

/// What a payment in a settlement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    /// Escrow released to the worker.
    Release,
    /// A verifier's fee.
    Reward,
    /// What the buyer gets back.
    Refund,
}
