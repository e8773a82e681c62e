//! Fuzzing ledger export lines in CI: arbitrary bytes, byte-level mutations of a valid export
//! (truncations, flipped bytes, huge numbers, spliced JSON) and line-level ones (dropped,
//! repeated, swapped lines), each verified as a whole export and line by line. The cargo-fuzz
//! target `export` runs the same harness unbounded.
//!
//! The binary counts heap allocations, so it also checks the stated limit: a line is read up
//! to `MAX_ENTRY_BYTES` and no further, and costs no more than that while it is read.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod fuzz_harness;
// One copy for every crate: each test binary installs its own allocator from it.
#[path = "../../protocol/tests/heap/mod.rs"]
mod heap;

use std::io::{BufReader, Read};
use std::path::Path;

use market_ledger::entry::MAX_ENTRY_BYTES;
use market_ledger::{verify_export, LedgerError};
use market_protocol::fixtures::hostile::mutate;
use proptest::prelude::*;

use fuzz_harness::{check_export, mutate_lines, EXPORT};
use heap::{config, measure, serial};

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _serial = serial();
        check_export(&bytes);
    }

    #[test]
    fn mutated_exports_never_panic(program in prop::collection::vec(any::<u8>(), 0..32)) {
        let _serial = serial();
        check_export(&mutate(EXPORT, &program));
    }

    #[test]
    fn reordered_exports_never_panic(
        lines in prop::collection::vec(any::<u8>(), 0..12),
        program in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let _serial = serial();
        check_export(&mutate(&mutate_lines(EXPORT, &lines), &program));
    }
}

#[test]
fn the_vector_export_verifies() {
    let _serial = serial();
    let report = verify_export(EXPORT, Path::new("<vector>"), None).unwrap();
    assert_eq!(report.lines, 93);
    check_export(EXPORT);
}

/// An endless line: `n` bytes of `b` and no newline, read through a `BufReader` as a file is.
struct Endless {
    left: usize,
    byte: u8,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left);
        buf[..n].fill(self.byte);
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn a_line_costs_at_most_its_limit() {
    let _serial = serial();
    let limit = MAX_ENTRY_BYTES + 1;
    // 64 MiB without a newline: refused as too large after reading one line's worth, with no
    // allocation over the line limit (one more doubling would have been 8 MiB).
    for (len, byte) in [
        (64 << 20, b'x'),
        (MAX_ENTRY_BYTES + 1, b' '),
        (MAX_ENTRY_BYTES, b'{'),
    ] {
        let input = BufReader::new(Endless { left: len, byte });
        let (r, used) = measure(|| verify_export(input, Path::new("<endless>"), None));
        let e = r.unwrap_err();
        assert!(matches!(e, LedgerError::Broken(_)), "{e}");
        println!("a line of {len} bytes: {e}; {used:?}");
        assert!(used.largest <= limit, "{used:?}");
        // Growing from 4 MiB to the limit holds both for a moment; the error's words are small.
        assert!(used.peak <= 2 * limit + (4 << 10), "{used:?}");
    }
}
