//! [`Verdict`]: a verifier's signed finding on a commitment, with the evidence a referee needs.

use serde::{Deserialize, Serialize};

use super::Version;
use crate::hash::{ChallengeId, CommitmentId, StateHash};
use crate::keys::AccountId;
use crate::signed::Message;

/// A verifier's finding. Signed by the verifier, who stakes reputation on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Protocol version.
    pub version: Version,
    /// The verifier.
    pub verifier: AccountId,
    /// The commitment audited.
    pub commitment_id: CommitmentId,
    /// The challenge answered.
    pub challenge_id: ChallengeId,
    /// Every segment re-executed, in the challenge's order.
    pub checked: Vec<SegmentCheck>,
    /// Pass, or the first failure with its evidence.
    pub outcome: VerdictOutcome,
    /// The verifier's compute as parts per million of the worker's (steps re-run / steps run).
    pub compute_share_ppm: u32,
}

impl Message for Verdict {
    const DOMAIN: &'static str = "market/v1/Verdict";
    fn author(&self) -> Option<AccountId> {
        Some(self.verifier)
    }
}

/// One re-executed segment: the end hash the worker committed and the one re-execution gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentCheck {
    /// Segment index.
    pub segment: u32,
    /// The committed end-state hash.
    pub expected: StateHash,
    /// The re-executed end-state hash (`null` when the segment could not be run).
    pub actual: Option<StateHash>,
}

/// The outcome of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum VerdictOutcome {
    /// Every sampled segment reproduced.
    Pass,
    /// A segment did not.
    Fail {
        /// The first failing segment.
        segment: u32,
        /// The first step inside it whose state differs, when narrowed.
        step: Option<u32>,
        /// What went wrong.
        reason: FailureReason,
        /// A human-readable account.
        detail: String,
    },
}

/// Why an audit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Re-execution gave another end state.
    StateMismatch,
    /// An opened checkpoint is not under the committed root.
    BadProof,
    /// The worker did not open a challenged checkpoint.
    Withheld,
    /// The commitment does not match the task or its own bundle.
    InvalidCommitment,
}
