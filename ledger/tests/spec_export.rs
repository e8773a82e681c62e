//! The export in `spec/vectors/export.jsonl` (a devnet run's ledger, which
//! `spec/reference/check_vectors.py` re-derives every beacon and challenge from) verifies with
//! this crate too, beacon proofs included. (A proof by another key under a valid operator
//! signature is refused on append by `tests/ledger.rs` and on replay by `tests/tamper.rs`.)

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;

use market_ledger::{verify_export_file, EntryKind};

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors/export.jsonl")
}

#[test]
fn the_spec_export_verifies_with_its_beacon_proofs() {
    let report = verify_export_file(&path(), None).unwrap();
    let text = std::fs::read_to_string(path()).unwrap();
    assert_eq!(report.lines as usize, text.lines().count());
    let commits = text
        .lines()
        .map(|l| market_ledger::Entry::decode(l.as_bytes()).unwrap().entry)
        .filter(|e| matches!(e.body.kind, EntryKind::Commit { .. }))
        .count();
    assert!(commits >= 2, "{commits}");
}
