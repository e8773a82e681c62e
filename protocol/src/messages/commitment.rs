//! [`Commitment`]: a worker binds itself to every checkpoint of its run before it can know
//! which segments will be checked.

use serde::{Deserialize, Serialize};

use super::Version;
use crate::hash::{BlobId, StateHash, TaskId};
use crate::keys::AccountId;
use crate::numbers::F32Bits;
use crate::signed::Message;

/// A worker's commitment to a finished run. Signed by the worker.
///
/// For training, the Merkle tree's leaves are the state hashes at checkpoints `0..=segments`
/// (checkpoint 0 is the initial state), so segment `i` runs from leaf `i` to leaf `i + 1`. For
/// inference, the leaves are the output hashes of the items, one segment per item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commitment {
    /// Protocol version.
    pub version: Version,
    /// The task this run answers.
    pub task_id: TaskId,
    /// The worker that ran it.
    pub worker: AccountId,
    /// Optimizer steps run (0 for inference).
    pub steps: u32,
    /// Segments (training) or items (inference) that may be challenged.
    pub segments: u32,
    /// Merkle root over the checkpoint (or item) hashes.
    pub root: crate::Hash,
    /// The hash of the last state (training) or of the whole output (inference).
    pub final_state_hash: StateHash,
    /// Result blobs: final weights, per-item outputs.
    pub outputs: Vec<BlobId>,
    /// Per segment, the mean training loss of its steps (their ascending binary32 sum divided
    /// by the step count), as exact binary32 bits.
    pub loss_trace: Vec<F32Bits>,
    /// For a slot-round of a pooled task: which slot and round, and the state it started from
    /// (its checkpoint 0). Absent (not `null`) for any other run, whose commitments, and ids,
    /// are what they were before pooling existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_round: Option<SlotRound>,
}

/// Which part of a pooled task a run is (`COMPUTE.md` section 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRound {
    /// The slot (0-based).
    pub slot: u32,
    /// The round (0-based).
    pub round: u32,
    /// The hash of the state the slot started the round from: the round's global parameters
    /// with the slot's own optimizer moments.
    pub start: StateHash,
}

impl Message for Commitment {
    const DOMAIN: &'static str = "market/v1/Commitment";
    fn author(&self) -> Option<AccountId> {
        Some(self.worker)
    }
}

impl Commitment {
    /// The number of Merkle leaves this commitment covers: `segments + 1` checkpoints for
    /// training (steps > 0), one per item for inference.
    pub fn leaf_count(&self) -> u64 {
        if self.steps > 0 {
            u64::from(self.segments) + 1
        } else {
            u64::from(self.segments)
        }
    }
}
