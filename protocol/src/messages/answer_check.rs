//! [`AnswerCheck`]: a verifier's signed finding on one sampled answer of a served batch.

use serde::{Deserialize, Serialize};

use super::Version;
use crate::hash::Hash;
use crate::keys::AccountId;
use crate::signed::Message;

/// A verifier's check of one served answer drawn for audit from its worker's batch. Signed by
/// the verifier, who stakes on it: a failure the node's own check contradicts is slashed as a
/// lie, and a pass of a planted fake (a ringer) as laziness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerCheck {
    /// Protocol version.
    pub version: Version,
    /// The verifier.
    pub verifier: AccountId,
    /// The batch: the Merkle root over its answers' leaves.
    pub batch: Hash,
    /// The answer's index in the batch.
    pub index: u32,
    /// The answer's leaf: the message id of the worker's signed [`crate::Answer`].
    pub answer: Hash,
    /// Pass, or what did not hold.
    pub outcome: AnswerCheckOutcome,
}

impl Message for AnswerCheck {
    const DOMAIN: &'static str = "market/v1/AnswerCheck";
    fn author(&self) -> Option<AccountId> {
        Some(self.verifier)
    }
}

/// The outcome of an answer's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum AnswerCheckOutcome {
    /// The model, run once over the prompt and the answer, gives the answer: every token and
    /// its logit, the ending, the text and the billed prompt tokens.
    Pass,
    /// It does not.
    Fail {
        /// A human-readable account (not normative).
        detail: String,
    },
}
