//! Bad input gives clear errors and never a panic or a silent repair: foreign, corrupt and
//! truncated directories, and malformed export lines.

mod common;

use std::path::Path;

use common::*;
use market_ledger::protocol::Credits;
use market_ledger::{
    verify_export, Fault, Ledger, LedgerError, OpenCheck, OpenOptions, StorageError,
};

fn open_any(path: &Path) -> Vec<Result<Ledger, LedgerError>> {
    vec![
        unlocked(|| Ledger::open(path, operator(), OpenOptions::default())),
        unlocked(|| Ledger::open_read_only(path, OpenCheck::Full)),
        unlocked(|| Ledger::inspect(path)),
    ]
}

/// Runs `open` again while sled's file lock is still held by the previous open's background
/// thread (it is released shortly after the handle drops), so the test sees the real outcome.
/// A poll, because sled signals nothing when it lets the lock go; bounded, and a lock still
/// held after 5 s fails the test saying so rather than passing the lock error on as the outcome.
fn unlocked(open: impl Fn() -> Result<Ledger, LedgerError>) -> Result<Ledger, LedgerError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open() {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "sled still held the ledger's lock 5 s after the handle was dropped"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn a_ledger(dir: &Path, entries: u64) -> std::path::PathBuf {
    let ledger = open(dir);
    for i in 0..entries {
        ledger
            .mint(key(&format!("m{i}")), who("a").account(), Credits(1))
            .expect("mint");
    }
    ledger_path(dir)
}

#[test]
fn foreign_paths_are_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("cat.jpg"), b"\xff\xd8 not a ledger").expect("write");
    for result in open_any(&foreign) {
        let err = result.expect_err("foreign directory");
        assert!(
            matches!(err, LedgerError::Storage(StorageError::NotALedger { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("other files"), "{err}");
    }
    let names: Vec<_> = std::fs::read_dir(&foreign)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        vec!["cat.jpg"],
        "nothing was written into a foreign directory"
    );

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    for result in open_any(&file) {
        assert!(result
            .expect_err("a file")
            .to_string()
            .contains("not a directory"));
    }
    let missing = dir.path().join("missing");
    assert!(Ledger::open_read_only(&missing, OpenCheck::Full)
        .expect_err("missing")
        .to_string()
        .contains("does not exist"));
    assert!(!missing.exists(), "read-only open created nothing");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert!(Ledger::inspect(&empty)
        .expect_err("empty")
        .to_string()
        .contains("empty"));
}

#[test]
fn garbage_database_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).expect("mkdir");
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(garbage.join("conf"), &noise[..300]).expect("write");
    std::fs::write(garbage.join("db"), &noise).expect("write");
    for result in open_any(&garbage) {
        let err = result.expect_err("garbage is not a ledger");
        // sled itself refuses the files, and the error names the directory.
        assert!(
            matches!(&err, LedgerError::Storage(StorageError::Database { path, .. }) if *path == garbage),
            "{err:?}"
        );
    }
}

#[test]
fn a_damaged_database_is_refused_never_reinitialised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = a_ledger(dir.path(), 300);
    let db = path.join("db");
    let mut bytes = std::fs::read(&db).expect("read db");
    for i in (64..bytes.len()).step_by(509) {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(&db, &bytes).expect("write db");
    for result in open_any(&path) {
        let err = result.expect_err("a damaged database opened");
        // Whatever sled salvaged, the error says entries were lost.
        let text = err.to_string();
        assert!(text.contains("damaged") || text.contains("lost"), "{text}");
    }
    // Refused again: opening with the operator key did not start a fresh ledger over it.
    assert!(unlocked(|| Ledger::open(&path, operator(), OpenOptions::default())).is_err());
}

#[test]
fn a_truncated_database_names_the_first_lost_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = a_ledger(dir.path(), 300);
    let db = path.join("db");
    let bytes = std::fs::read(&db).expect("read db");
    std::fs::write(&db, &bytes[..bytes.len() / 3]).expect("truncate");
    for result in open_any(&path).into_iter().take(2) {
        let err = result.expect_err("truncated");
        match &err {
            LedgerError::Broken(b) => {
                assert!(matches!(b.fault, Fault::Lost { recorded: 300 }), "{err}");
                assert!(b.seq <= 300, "{err}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    // `inspect` opens it so that `verify` can say what is wrong.
    let ledger = unlocked(|| Ledger::inspect(&path)).expect("inspect opens what it can");
    let err = ledger.verify().expect_err("lost entries");
    assert!(err.broken_seq().is_some(), "{err}");
}

#[test]
fn malformed_export_lines_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    ledger
        .mint(key("m"), who("a").account(), Credits(5))
        .expect("mint");
    let lines = export_lines(&ledger);
    let check = |bad: Vec<u8>| {
        let mut text = lines[0].clone();
        text.push(b'\n');
        text.extend_from_slice(&bad);
        text.push(b'\n');
        let err = verify_export(&text[..], Path::new("<t>"), None).expect_err("malformed");
        match err {
            LedgerError::Broken(b) => {
                assert_eq!((b.seq, b.line), (1, Some(2)), "{b}");
                assert!(matches!(b.fault, Fault::Decode(_)), "{b}");
            }
            other => panic!("unexpected {other}"),
        }
    };
    let good = String::from_utf8(lines[1].clone()).expect("utf8");
    check(
        good.replacen("\"amount\":5", "\"amount\":5.0", 1)
            .into_bytes(),
    );
    check(
        good.replacen("\"amount\":5", "\"amount\":9007199254740993", 1)
            .into_bytes(),
    );
    check(good.replacen("\"seq\":1", "\"seq\":-1", 1).into_bytes());
    check(vec![0xff, 0xfe, b'{']);
    check(format!("{good}{good}").into_bytes());
    check(vec![b'['; 10_000]);
    check(vec![b'x'; 5 << 20]);
}
