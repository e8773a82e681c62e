//! Canonical JSON and every `Signed<T>` of the protocol (`protocol/tests/fuzz_harness`).
//!
//! The input's first byte picks the mode: odd, a seed (chosen by the other bits) edited by the
//! rest of the input as a `hostile::mutate` program; even, the raw input.

#![no_main]

#[path = "../../protocol/tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use market_protocol::fixtures::hostile::mutate;

static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(fuzz_harness::seeds);

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
    fuzz_harness::check_protocol_decoders(&input(data));
});
