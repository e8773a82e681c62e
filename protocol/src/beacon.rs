//! The challenge beacon: the node operator's VRF output over a commitment id.
//!
//! A beacon must be unknown to the worker until its commitment is recorded (or it could grind
//! its commitment until the challenge misses what it faked) and must not be choosable by the
//! operator either (or it could aim the challenge). A hash of the ledger entry fails the first
//! test: everything in the entry is known to the worker in advance. An ECVRF output
//! ([`crate::vrf`], RFC 9381) under the operator's ed25519 key passes both: only the operator
//! can compute it, there is exactly one output per commitment id (so nothing to grind, not even
//! by appending other entries first), and the proof in the ledger's `commit` entry lets anyone
//! check it against the genesis key.
//!
//! `alpha = "market/v1/Beacon" || 0x00 || commitment_id` (32 bytes), and the beacon is the
//! first 32 bytes of the VRF output `beta`.

use crate::hash::{Beacon, CommitmentId, Hash};
use crate::keys::{AccountId, Identity};
use crate::vrf::{self, VrfError, VrfProof};

/// The domain of a beacon's VRF input.
pub const BEACON_DOMAIN: &str = "market/v1/Beacon";

/// The domain of a served-answer batch's VRF input.
pub const BATCH_BEACON_DOMAIN: &str = "market/v1/ServeBatch";

/// The VRF input of the beacon of `commitment`.
pub fn beacon_alpha(commitment: &CommitmentId) -> Vec<u8> {
    alpha_of(BEACON_DOMAIN, commitment.as_bytes())
}

fn alpha_of(domain: &str, input: &[u8; 32]) -> Vec<u8> {
    let mut alpha = Vec::with_capacity(domain.len() + 1 + 32);
    alpha.extend_from_slice(domain.as_bytes());
    alpha.push(0);
    alpha.extend_from_slice(input);
    alpha
}

/// The operator's beacon for a batch of served answers (named by its Merkle root), with its
/// proof: which answers are audited, drawn after the batch is fixed. Its own domain keeps it
/// apart from every commitment's beacon.
pub fn prove_batch_beacon(operator: &Identity, root: &Hash) -> (Beacon, VrfProof) {
    let proof = vrf::prove(
        &operator.secret_bytes(),
        &alpha_of(BATCH_BEACON_DOMAIN, root.as_bytes()),
    );
    let beta = vrf::proof_to_hash(&proof).unwrap_or([0; 64]);
    (from_beta(&beta), proof)
}

/// Checks `proof` as `operator`'s beacon proof for the batch with Merkle root `root`.
pub fn verify_batch_beacon(
    operator: &AccountId,
    root: &Hash,
    proof: &VrfProof,
) -> Result<Beacon, VrfError> {
    vrf::verify(
        operator,
        &alpha_of(BATCH_BEACON_DOMAIN, root.as_bytes()),
        proof,
    )
    .map(|beta| from_beta(&beta))
}

fn from_beta(beta: &[u8; 64]) -> Beacon {
    let mut b = [0u8; 32];
    b.copy_from_slice(&beta[..32]);
    Beacon(Hash(b))
}

/// The operator's beacon for `commitment`, with the proof that goes into the ledger.
pub fn prove_beacon(operator: &Identity, commitment: &CommitmentId) -> (Beacon, VrfProof) {
    let proof = vrf::prove(&operator.secret_bytes(), &beacon_alpha(commitment));
    // A proof just made always hashes; the fallback is unreachable.
    let beta = vrf::proof_to_hash(&proof).unwrap_or([0; 64]);
    (from_beta(&beta), proof)
}

/// Checks `proof` as `operator`'s beacon proof for `commitment` and returns the beacon.
pub fn verify_beacon(
    operator: &AccountId,
    commitment: &CommitmentId,
    proof: &VrfProof,
) -> Result<Beacon, VrfError> {
    vrf::verify(operator, &beacon_alpha(commitment), proof).map(|beta| from_beta(&beta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_operator_key_gives_the_beacon_and_it_is_unique() {
        let op = Identity::from_test_label("operator");
        let c = CommitmentId(Hash::of(b"commitment"));
        let (beacon, proof) = prove_beacon(&op, &c);
        assert_eq!(verify_beacon(&op.account(), &c, &proof), Ok(beacon));
        // Proving again gives the same proof: nothing to grind.
        assert_eq!(prove_beacon(&op, &c), (beacon, proof));
        // Another commitment, another beacon; another key's proof does not verify.
        let other = CommitmentId(Hash::of(b"other"));
        assert!(verify_beacon(&op.account(), &other, &proof).is_err());
        let (_, forged) = prove_beacon(&Identity::from_test_label("someone else"), &c);
        assert!(verify_beacon(&op.account(), &c, &forged).is_err());
        assert_ne!(prove_beacon(&op, &other).0, beacon);
    }
}
