//! Task specs, strict and lenient, validated by `TrainingJob::from_spec` and `InferenceJob::from_spec` (`compute/tests/fuzz_harness`).
//!
//! The input's first byte picks the mode: odd, a seed (chosen by the other bits) edited by the
//! rest of the input as a `hostile::mutate` program; even, the raw input.

#![no_main]

#[path = "../../compute/tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use market_protocol::fixtures::hostile::mutate;

static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(fuzz_harness::task_seeds);

/// The bytes to decode: the raw input, or a seed edited by it.
fn input(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((&mode, program)) if mode & 1 == 1 => {
            mutate(&SEEDS[usize::from(mode >> 1) % SEEDS.len()], program)
        }
        _ => data.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    // The blobs the task names: the seed's own, the data blob edited by the second byte.
    static BLOBS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(fuzz_harness::blob_seeds);
    let mode = usize::from(data.first().copied().unwrap_or(0) >> 1);
    let (weights, blob) = fuzz_harness::task_blobs(mode % SEEDS.len() / 2);
    let edit = data.get(1..3).unwrap_or(&[]);
    let blob = mutate(&BLOBS[blob], edit);
    let blobs = fuzz_harness::Blobs {
        weights: &BLOBS[weights],
        data: &blob,
    };
    fuzz_harness::check_task(&input(data), &blobs);
});
