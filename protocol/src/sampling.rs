//! Challenge sampling: which segments a verifier re-executes.
//!
//! The seed is `blake3::derive_key("market v1 challenge seed", commitment_id || beacon ||
//! verifier)`: the beacon (the operator's VRF output over the commitment id, [`crate::beacon`])
//! did not exist when the worker committed, so the worker cannot know which segments will be
//! drawn, and each verifier's account makes its sample its own, so a second verifier checks
//! segments the first may have missed. A ChaCha20 stream keyed by the seed then draws `s`
//! distinct indices out of `n` by a partial Fisher-Yates shuffle with unbiased rejection
//! sampling. `spec/ENCODING.md` writes the algorithm down for other languages.

use std::collections::BTreeMap;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::hash::{Beacon, ChallengeSeed, CommitmentId, Hash};
use crate::keys::AccountId;

/// The blake3 key-derivation context of challenge seeds.
pub const CHALLENGE_SEED_CONTEXT: &str = "market v1 challenge seed";

/// Why a sample cannot be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplingError {
    /// More samples than segments were asked for.
    #[error("cannot sample {samples} distinct segments out of {segments}")]
    TooManySamples { samples: u32, segments: u32 },
}

/// The seed of `verifier`'s challenge on `commitment` with `beacon`.
pub fn challenge_seed(
    commitment: &CommitmentId,
    beacon: &Beacon,
    verifier: &AccountId,
) -> ChallengeSeed {
    let mut h = blake3::Hasher::new_derive_key(CHALLENGE_SEED_CONTEXT);
    h.update(commitment.as_bytes());
    h.update(beacon.as_bytes());
    h.update(verifier.as_bytes());
    ChallengeSeed(Hash::from(h.finalize()))
}

/// The ChaCha20 stream of a seed: 20 rounds, 64-bit block counter from 0, 64-bit nonce 0; each
/// `next_u64` takes the next 8 keystream bytes as a little-endian integer.
pub fn seed_stream(seed: &ChallengeSeed) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(*seed.as_bytes())
}

/// A uniform integer in `0..bound` (`bound >= 1`) by rejection: draws `x = next_u64()` until
/// `x < 2^64 - (2^64 mod bound)`, then returns `x mod bound`.
pub fn uniform_below(rng: &mut impl RngCore, bound: u64) -> u64 {
    assert!(bound > 0, "uniform_below needs a positive bound");
    // 2^64 mod bound, computed without 128-bit arithmetic.
    let rejected = (u64::MAX % bound + 1) % bound;
    let zone = u64::MAX - rejected; // accept x <= zone, i.e. x < 2^64 - rejected
    loop {
        let x = rng.next_u64();
        if x <= zone {
            return x % bound;
        }
    }
}

/// Draws `samples` distinct indices out of `0..segments`, in draw order: for `i` in
/// `0..samples`, pick `j = i + uniform_below(segments - i)`, output the value at position `j` of
/// a virtual array initialised to the identity, and move the value at position `i` to `j`.
pub fn sample_indices(
    seed: &ChallengeSeed,
    segments: u32,
    samples: u32,
) -> Result<Vec<u32>, SamplingError> {
    if samples > segments {
        return Err(SamplingError::TooManySamples { samples, segments });
    }
    let mut rng = seed_stream(seed);
    // Only the swapped positions are stored, so a huge `segments` costs nothing.
    let mut moved: BTreeMap<u32, u32> = BTreeMap::new();
    let mut out = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        let j = i + uniform_below(&mut rng, u64::from(segments - i)) as u32;
        let at_j = moved.get(&j).copied().unwrap_or(j);
        let at_i = moved.get(&i).copied().unwrap_or(i);
        out.push(at_j);
        moved.insert(j, at_i);
    }
    Ok(out)
}

/// The stream of one of the node's own draws: `seed_stream` keyed by `blake3(tag || beacon ||
/// extra)` (plain blake3, not a derived key).
fn node_stream(tag: &[u8], beacon: &Beacon, extra: &[u8]) -> ChaCha20Rng {
    seed_stream(&ChallengeSeed(Hash::of(
        &[tag, beacon.as_bytes(), extra].concat(),
    )))
}

/// A verifier's weight in the draw: `stake * (10 + min(rep, 100)) / 10` for reputation
/// `rep >= 0` (slow to earn: +10% a point), `stake >> min(-rep, 32)` below 0 (quick to lose:
/// halved per point lost), and at least 1. Integer arithmetic; the product cannot overflow for
/// any stake below 2^57.
pub fn verifier_weight(stake: u64, reputation: i64) -> u64 {
    let w = if reputation >= 0 {
        stake.saturating_mul(10 + reputation.min(100) as u64) / 10
    } else {
        stake >> (-reputation).min(32)
    };
    w.max(1)
}

/// Orders `pool` (each verifier with its [`verifier_weight`]) by weighted draws without
/// replacement from the stream keyed by `blake3("verifiers" || beacon)`, with `round` as 4
/// little-endian bytes appended when it is above 0. The pool is first sorted by account; each
/// draw takes `x = uniform_below(total weight of those left)` and picks the first verifier whose
/// running weight sum exceeds `x`. The beacon did not exist when the worker committed, so it
/// could not know who audits it; given the pool, anyone recomputes the order.
pub fn draw_verifiers(
    beacon: &Beacon,
    round: u32,
    mut pool: Vec<(AccountId, u64)>,
) -> Vec<AccountId> {
    pool.sort();
    let extra = if round > 0 {
        round.to_le_bytes().to_vec()
    } else {
        Vec::new()
    };
    let mut rng = node_stream(b"verifiers", beacon, &extra);
    let mut chosen = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let total: u64 = pool.iter().map(|(_, w)| *w).sum();
        let mut x = uniform_below(&mut rng, total.max(1));
        let i = pool
            .iter()
            .position(|(_, w)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .unwrap_or(0);
        chosen.push(pool.remove(i).0);
    }
    chosen
}

/// Whether each of `count` verifiers (in the attempt's draw order) is handed a ringer: one
/// `uniform_below(1_000_000) < rate_ppm` per verifier from the stream keyed by
/// `blake3("ringers" || beacon)`, so no verifier can know it in advance.
pub fn ringer_draws(beacon: &Beacon, rate_ppm: u32, count: usize) -> Vec<bool> {
    let mut rng = node_stream(b"ringers", beacon, &[]);
    (0..count)
        .map(|_| uniform_below(&mut rng, 1_000_000) < u64::from(rate_ppm))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_stream_is_rfc_keystream_read_little_endian() {
        // RFC 8439 section 2.3.2 / A.1 test vector 1: all-zero key, nonce and counter; the
        // keystream starts 76 b8 e0 ad a0 f1 3d 90.
        let mut rng = seed_stream(&ChallengeSeed(Hash([0; 32])));
        assert_eq!(rng.next_u64(), 0x903d_f1a0_ade0_b876);
    }

    #[test]
    fn all_segments_is_a_permutation() {
        let seed = ChallengeSeed(Hash::of(b"x"));
        let mut got = sample_indices(&seed, 50, 50).unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert!(sample_indices(&seed, 3, 4).is_err());
        assert!(sample_indices(&seed, 0, 0).unwrap().is_empty());
    }

    #[test]
    fn draws_are_roughly_uniform() {
        // 20,000 single draws from 10 segments: each count within 5 sigma of 2,000.
        let mut counts = [0u32; 10];
        for k in 0..20_000u32 {
            let seed = ChallengeSeed(Hash::of(&k.to_le_bytes()));
            counts[sample_indices(&seed, 10, 1).unwrap()[0] as usize] += 1;
        }
        for c in counts {
            assert!((1788..=2212).contains(&c), "{counts:?}");
        }
    }
}
