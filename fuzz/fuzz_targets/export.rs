//! Ledger export lines, verified as a whole export and line by line (`ledger/tests/fuzz_harness`).
//!
//! The input's first byte picks the mode: odd, a seed (chosen by the other bits) edited by the
//! rest of the input as a `hostile::mutate` program; even, the raw input.

#![no_main]

#[path = "../../ledger/tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use market_protocol::fixtures::hostile::mutate;

static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| vec![fuzz_harness::EXPORT.to_vec()]);

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
    fuzz_harness::check_export(&input(data));
});
