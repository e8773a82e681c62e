//! [`Challenge`] and [`Opening`]: which segments are checked, and a worker's proof that a
//! state is the one it committed to.

use serde::{Deserialize, Serialize};

use super::Version;
use crate::hash::{Beacon, ChallengeSeed, CommitmentId, StateHash};
use crate::keys::AccountId;
use crate::merkle::MerkleProof;
use crate::sampling::{challenge_seed, sample_indices, SamplingError};
use crate::signed::Message;

/// The segments one verifier re-executes. Anyone can recompute it from the commitment id, the
/// beacon, the verifier's account, the segment count and the sample count, so nobody picks
/// segments it likes, and two verifiers draw independent samples. It is derived, not sent: a
/// verdict names it by its message id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Protocol version.
    pub version: Version,
    /// The verifier whose sample this is.
    pub verifier: AccountId,
    /// The commitment challenged.
    pub commitment_id: CommitmentId,
    /// Randomness that did not exist when the commitment was made.
    pub beacon: Beacon,
    /// `challenge_seed(commitment_id, beacon, verifier)`.
    pub seed: ChallengeSeed,
    /// Segments in the commitment.
    pub segments: u32,
    /// The sampled segment indices, in draw order.
    pub sampled: Vec<u32>,
}

impl Message for Challenge {
    const DOMAIN: &'static str = "market/v1/Challenge";
    fn author(&self) -> Option<AccountId> {
        Some(self.verifier)
    }
}

/// Why a challenge does not follow from its inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The seed is not derived from the commitment id, beacon and verifier.
    #[error("challenge seed does not match commitment id, beacon and verifier")]
    Seed,
    /// The indices are not the ones the seed draws.
    #[error("sampled segments are not the ones the seed draws")]
    Indices,
    /// The sample size is impossible.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
}

impl Challenge {
    /// Derives `verifier`'s challenge of `samples` segments out of `segments`.
    pub fn derive(
        verifier: AccountId,
        commitment_id: CommitmentId,
        beacon: Beacon,
        segments: u32,
        samples: u32,
    ) -> Result<Self, SamplingError> {
        let seed = challenge_seed(&commitment_id, &beacon, &verifier);
        let sampled = sample_indices(&seed, segments, samples)?;
        Ok(Self {
            version: Version::CURRENT,
            verifier,
            commitment_id,
            beacon,
            seed,
            segments,
            sampled,
        })
    }

    /// Checks that the seed and indices follow from the commitment id, beacon and verifier.
    pub fn check(&self) -> Result<(), ChallengeError> {
        if challenge_seed(&self.commitment_id, &self.beacon, &self.verifier) != self.seed {
            return Err(ChallengeError::Seed);
        }
        let expected = sample_indices(&self.seed, self.segments, self.sampled.len() as u32)?;
        if expected != self.sampled {
            return Err(ChallengeError::Indices);
        }
        Ok(())
    }
}

/// A worker's opening of one committed leaf: the hash at `checkpoint` and its Merkle path.
/// Signed by the worker, so a wrong opening is the worker's own evidence against itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opening {
    /// Protocol version.
    pub version: Version,
    /// The worker that committed.
    pub worker: AccountId,
    /// The commitment opened.
    pub commitment_id: CommitmentId,
    /// The leaf index (checkpoint or item).
    pub checkpoint: u32,
    /// The committed hash at that leaf.
    pub state_hash: StateHash,
    /// Its inclusion proof against the commitment's root.
    pub proof: MerkleProof,
}

impl Message for Opening {
    const DOMAIN: &'static str = "market/v1/Opening";
    fn author(&self) -> Option<AccountId> {
        Some(self.worker)
    }
}

impl Opening {
    /// Checks the opening against a commitment's root and leaf count.
    pub fn verify_against(
        &self,
        root: &crate::Hash,
        leaf_count: u64,
    ) -> Result<(), crate::merkle::MerkleError> {
        if self.proof.leaf_index != u64::from(self.checkpoint) || self.proof.tree_size != leaf_count
        {
            return Err(crate::merkle::MerkleError::WrongPosition);
        }
        self.proof.verify(self.state_hash.as_bytes(), root)
    }
}
