//! The messages of the protocol, from a buyer's task to the node's receipt.
//!
//! Each is plain data with a [`crate::Message`] domain tag; who signs which is written in
//! `spec/PROTOCOL.md`. Every message starts with a [`Version`] so fields can grow later.

mod answer;
mod answer_check;
mod challenge;
mod commitment;
mod hello;
mod receipt;
mod rotation;
mod task;
mod verdict;

pub use answer::Answer;
pub use answer_check::{AnswerCheck, AnswerCheckOutcome};
pub use challenge::{Challenge, ChallengeError, Opening};
pub use commitment::{Commitment, SlotRound};
pub use hello::{Capabilities, Hello, Resources, Role};
pub use receipt::{Payment, PaymentKind, Receipt};
pub use rotation::{KeyRotation, RotationAcceptance};
pub use task::{
    Activation, AuditPolicy, ChatMessage, DatasetSource, Decoding, ExecutionProfile,
    InferenceInputs, InferenceSpec, ModelSpec, OptimizerSpec, OuterOptimizerSpec, PoolSpec,
    TaskSpec, TrainingSpec, Workload,
};
pub use verdict::{FailureReason, SegmentCheck, Verdict, VerdictOutcome};

use serde::{Deserialize, Deserializer, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The version field of every message. Only versions this crate understands deserialize, so a
/// message from a newer protocol is refused instead of being misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Version(u32);

impl Version {
    /// The current version.
    pub const CURRENT: Self = Self(PROTOCOL_VERSION);

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Version {
    fn default() -> Self {
        Self::CURRENT
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == PROTOCOL_VERSION {
            Ok(Self(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "protocol version {v} is not supported (this build speaks {PROTOCOL_VERSION})"
            )))
        }
    }
}
