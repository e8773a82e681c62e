//! Every random draw of a run comes from a ChaCha20 stream keyed by (task seed, purpose, index).
//!
//! Keying by step means step `i` can be re-run from the state after step `i - 1` without
//! replaying earlier draws. candle's own RNG is never used: on CPU it cannot be seeded.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// What a stream is for; part of its key, so two purposes never share draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Parameter initialisation (index: 0).
    Init,
    /// Batch selection (index: the step).
    Batch,
    /// Token sampling at inference (index: item, then token position via [`stream2`]).
    Sample,
    /// Dataset generation (index: 0).
    Data,
    /// A teacher network for generated regression data (index: 0).
    Teacher,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Self::Init => b"init",
            Self::Batch => b"batch",
            Self::Sample => b"sample",
            Self::Data => b"data",
            Self::Teacher => b"teacher",
        }
    }
}

/// The stream for (seed, purpose, index): its key is
/// `blake3::derive_key("market v1 compute stream", seed_le64 || index_le64 || purpose)`.
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha20Rng {
    stream2(seed, purpose, index, 0)
}

/// As [`stream`], with a second index (for example item and token).
pub fn stream2(seed: u64, purpose: Purpose, index: u64, index2: u64) -> ChaCha20Rng {
    let mut h = blake3::Hasher::new_derive_key("market v1 compute stream");
    h.update(&seed.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(&index2.to_le_bytes());
    h.update(purpose.tag());
    ChaCha20Rng::from_seed(*h.finalize().as_bytes())
}

/// A uniform integer in `0..bound` (`bound > 0`), unbiased (the protocol's rejection rule).
pub fn below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    market_protocol::sampling::uniform_below(rng, bound)
}

/// A uniform `f32` in `[0, 1)`: the top 24 bits of a `u32`, exact in binary32.
pub fn unit_f32(rng: &mut ChaCha20Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// A uniform `f32` in `[-a, a)`.
pub fn symmetric_f32(rng: &mut ChaCha20Rng, a: f32) -> f32 {
    (unit_f32(rng) * 2.0 - 1.0) * a
}
