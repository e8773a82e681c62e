//! [`Answer`]: a serving worker's signed word that it gave this answer to this request.

use serde::{Deserialize, Serialize};

use super::Version;
use crate::hash::{BlobId, StateHash, TaskId};
use crate::keys::AccountId;
use crate::signed::Message;

/// A served answer, signed by the worker that computed it. The request is an inference task
/// with one item (its [`crate::TaskSpec`], built by the node from the API request), so the
/// answer is checked exactly as an item of a posted task is: `output` is that item's leaf,
/// the blake3 of the committed answer record. Signed before the worker can know whether the
/// answer will be audited, it binds the worker to what the buyer was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// Protocol version.
    pub version: Version,
    /// The worker that computed the answer.
    pub worker: AccountId,
    /// The request: the message id of its task spec.
    pub request: TaskId,
    /// The weights it served (a GGUF blob).
    pub model: BlobId,
    /// blake3 of the answer record's bytes.
    pub output: StateHash,
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated (the end token included).
    pub completion_tokens: u32,
}

impl Message for Answer {
    const DOMAIN: &'static str = "market/v1/Answer";
    fn author(&self) -> Option<AccountId> {
        Some(self.worker)
    }
}
