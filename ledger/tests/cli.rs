//! The `market-ledger` binary: exit status 0 only for an intact ledger, and a message naming the
//! first bad sequence number otherwise.

use std::path::Path;
use std::process::{Command, Output};

use market_ledger::protocol::Identity;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_market-ledger"))
        .args(args)
        .output()
        .expect("run market-ledger")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A ledger made by `bench`, with its key file.
fn bench(dir: &Path, entries: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let path = dir.join("ledger");
    let key = dir.join("operator.key");
    let out = run(&[
        "bench",
        "--path",
        s(&path),
        "--entries",
        entries,
        "--concurrency",
        "4",
        "--key",
        s(&key),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("appends/s") && stdout.contains("entries/s"),
        "{stdout}"
    );
    (path, key)
}

fn export(path: &Path, file: &Path) {
    let out = run(&["export", "--path", s(path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(file, &out.stdout).expect("write export");
}

#[test]
fn export_verifies_without_the_database_and_tampering_fails_naming_the_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = bench(dir.path(), "60");
    let out = run(&["verify", "--path", s(&path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: 61 entries"),
        "{}",
        text(&out.stdout)
    );

    let file = dir.path().join("ledger.jsonl");
    export(&path, &file);
    let out = run(&["verify", "--export", s(&file)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: 61 entries"));

    let mut bytes = std::fs::read(&file).expect("read");
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    bytes[line_starts[42] + 30] ^= 0x04;
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, &bytes).expect("write");
    let out = run(&["verify", "--export", s(&tampered)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("seq 42") && err.contains("line 43"), "{err}");

    std::fs::write(&tampered, b"not json\n").expect("write");
    let out = run(&["verify", "--export", s(&tampered)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("line 1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn balance_and_signed_head_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, key) = bench(dir.path(), "30");
    let account = Identity::from_test_label("bench-0-a").account().to_hex();
    let out = run(&["balance", "--path", s(&path), &account]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["balance"].as_u64().expect("balance") > 0, "{report}");
    let out = run(&["balance", "--path", s(&path), "not-an-account"]);
    assert!(!out.status.success());

    let out = run(&["head", "--path", s(&path), "--key", s(&key)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let head_file = dir.path().join("head.json");
    std::fs::write(&head_file, &out.stdout).expect("write head");
    let signed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(signed["body"]["seq"], 30);

    // The ledger grows; the old signed head must be a prefix of the new export.
    let out = run(&[
        "bench",
        "--path",
        s(&path),
        "--entries",
        "8",
        "--concurrency",
        "2",
        "--key",
        s(&key),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = dir.path().join("grown.jsonl");
    export(&path, &file);
    let out = run(&["verify", "--export", s(&file), "--head", s(&head_file)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["verify", "--path", s(&path), "--head", s(&head_file)]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Another ledger (same operator) did not grow from that head.
    let other = tempfile::tempdir().expect("tempdir");
    let other_path = other.path().join("ledger");
    let out = run(&[
        "bench",
        "--path",
        s(&other_path),
        "--entries",
        "40",
        "--concurrency",
        "2",
        "--key",
        s(&key),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["verify", "--path", s(&other_path), "--head", s(&head_file)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("rewritten"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_paths_exit_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), b"hello").expect("write");
    for args in [
        vec!["verify", "--path", s(dir.path())],
        vec!["export", "--path", s(dir.path())],
        vec!["head", "--path", s(dir.path())],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("not a market ledger"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = run(&["verify", "--export", s(&dir.path().join("missing.jsonl"))]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["verify"]);
    assert_eq!(out.status.code(), Some(2), "usage errors are clap's");
}
