//! Ledger export lines under hostile input, shared by `tests/fuzz_export.rs` and the
//! cargo-fuzz target `fuzz/fuzz_targets/export.rs` (which includes this file by path). An
//! export is verified by anyone, from a file anyone may have edited: every line must decode or
//! be named as the first bad entry, never panic, and no line may cost more than its limit.

#![allow(dead_code)]

use std::path::Path;

use market_ledger::entry::MAX_ENTRY_BYTES;
use market_ledger::{verify_export, Entry};

/// The export of `spec/vectors/export.jsonl`: a valid chain to mutate.
pub const EXPORT: &[u8] = include_bytes!("../../../spec/vectors/export.jsonl");

/// Verifies `bytes` as an export, and decodes each of its lines on its own.
pub fn check_export(bytes: &[u8]) {
    if let Ok(report) = verify_export(bytes, Path::new("<fuzz>"), None) {
        // A chain that verifies has one line per entry.
        assert_eq!(report.lines, report.summary.head.seq + 1);
    }
    for line in bytes.split(|b| *b == b'\n') {
        if let Ok(d) = Entry::decode(line) {
            // What decodes is the canonical line of its entry.
            assert!(line.len() <= MAX_ENTRY_BYTES);
            assert_eq!(d.entry.hash().ok(), Some(d.hash));
            let _ = d.entry.verify_signature();
        }
    }
}

/// Edits `bytes` line by line: `program` pairs an operation with a line index (drop, repeat,
/// swap with the next, move to the end).
pub fn mutate_lines(bytes: &[u8], program: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    for pair in program.chunks(2).take(8) {
        if lines.is_empty() {
            break;
        }
        let k = usize::from(*pair.get(1).unwrap_or(&0)) % lines.len();
        match pair[0] % 4 {
            0 => {
                lines.remove(k);
            }
            1 => lines.insert(k, lines[k]),
            2 => {
                let j = (k + 1) % lines.len();
                lines.swap(k, j);
            }
            _ => {
                let line = lines.remove(k);
                lines.push(line);
            }
        }
    }
    lines.concat()
}
