//! Tampering with an export is detected and the first bad entry is named: any single byte
//! changed, forged signatures, reordered, removed and inserted entries, lines that are not JSON.

mod common;

use common::*;
use market_ledger::protocol::{Credits, Hash, Version};
use market_ledger::{Broken, Entry, EntryBody, EntryKind, Fault, Ledger, LedgerError};

/// A ledger with every kind of entry, and its export lines.
fn sample() -> (tempfile::TempDir, Ledger, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let (buyer, worker, verifier) = (who("buyer"), who("worker"), who("verifier"));
    ledger
        .mint(key("m-b"), buyer.account(), Credits(900))
        .expect("mint");
    ledger
        .mint(key("m-w"), worker.account(), Credits(90))
        .expect("mint");
    ledger
        .append(
            key("stake"),
            EntryKind::Stake {
                account: worker.account(),
                amount: Credits(50),
            },
        )
        .expect("stake");
    let spec = task(&buyer, 300, 1);
    let t = task_id(&spec);
    ledger.escrow(key("escrow"), spec).expect("escrow");
    let c = commitment(&worker, t);
    let kinds = vec![
        EntryKind::commit_of(&operator(), c.clone())
            .expect("commit entry")
            .0,
        EntryKind::Release {
            amount: Credits(200),
            commitment: Some(c.clone()),
            task_id: t,
            worker: worker.account(),
        },
        EntryKind::Reward {
            amount: Credits(30),
            task_id: t,
            verdict: Some(verdict(&verifier, &c, false)),
            verifier: verifier.account(),
        },
        EntryKind::Refund {
            amount: Credits(70),
            buyer: buyer.account(),
            task_id: t,
        },
        EntryKind::Slash {
            account: worker.account(),
            amount: Credits(10),
            evidence: verdict_id(&verdict(&verifier, &c, true)),
            reason: "faked \"segment\" 2\n".into(),
            to: buyer.account(),
            verdict: Some(verdict(&verifier, &c, true)),
        },
        EntryKind::Unstake {
            account: worker.account(),
            amount: Credits(5),
        },
        EntryKind::Reputation {
            account: verifier.account(),
            delta: 3,
        },
        EntryKind::Transfer {
            amount: Credits(1),
            from: buyer.account(),
            to: verifier.account(),
        },
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        ledger.append(key(&format!("k{i}")), kind).expect("append");
    }
    for i in 0..8 {
        ledger
            .transfer(
                key(&format!("x{i}")),
                buyer.account(),
                worker.account(),
                Credits(i + 1),
            )
            .expect("transfer");
    }
    let lines = export_lines(&ledger);
    verify_lines(&lines).expect("the untouched export verifies");
    (dir, ledger, lines)
}

/// The first bad entry an export check names.
fn broken(lines: &[Vec<u8>]) -> Broken {
    match verify_lines(lines) {
        Err(LedgerError::Broken(b)) => *b,
        Err(other) => panic!("expected a broken chain, got {other}"),
        Ok(_) => panic!("tampered export verified"),
    }
}

#[test]
fn any_single_byte_change_is_detected_and_named() {
    let (_dir, _ledger, lines) = sample();
    let mut rng = common::SplitMix(0x1ed6e5);
    let mut tried = 0;
    for (index, line) in lines.iter().enumerate() {
        // The first and last bytes, the newline after the line, and a sample in between.
        let mut positions = vec![0, line.len() - 1, line.len()];
        positions.extend((0..24).map(|_| (rng.next() % line.len() as u64) as usize));
        for pos in positions {
            for change in [0x01u8, 0x20, 0x80, (rng.next() % 255 + 1) as u8] {
                let mut tampered = lines.clone();
                if pos == line.len() {
                    // Change the newline: the line runs into the next one (or file end).
                    let mut joined = tampered[index].clone();
                    joined.push(b'\n' ^ change);
                    if let Some(next) = tampered.get(index + 1).cloned() {
                        joined.extend_from_slice(&next);
                        tampered.remove(index + 1);
                    }
                    tampered[index] = joined;
                } else {
                    tampered[index][pos] ^= change;
                }
                let b = broken(&tampered);
                assert_eq!(
                    (b.seq, b.line),
                    (index as u64, Some(index as u64 + 1)),
                    "byte {pos} of line {} ^ {change:#x}: {b}",
                    index + 1
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 1000, "{tried}");
}

#[test]
fn forged_signatures_are_detected() {
    let (_dir, _ledger, lines) = sample();
    let mallory = who("mallory");
    for index in [1usize, 6, lines.len() - 1] {
        let entry = Entry::decode(&lines[index]).expect("decodes").entry;
        // Mallory's signature over the untouched body.
        let mut tampered = lines.clone();
        let mut forged = entry.clone();
        forged.signature = mallory.sign_raw(&signing(&entry.body));
        tampered[index] = line(&forged);
        let b = broken(&tampered);
        assert_eq!(
            (b.seq, b.fault.clone()),
            (index as u64, Fault::Signature),
            "{b}"
        );

        // Mallory re-signs a richer body as herself.
        let mut body = entry.body.clone();
        body.signer = mallory.account();
        let sealed = Entry::sign(body, &mallory).expect("sign");
        tampered[index] = sealed.line;
        let b = broken(&tampered);
        assert!(matches!(b.fault, Fault::Signer { .. }), "{b}");
        assert_eq!(b.seq, index as u64);
    }
}

#[test]
fn reordered_removed_and_inserted_entries_are_detected() {
    let (_dir, _ledger, lines) = sample();
    let k = 7usize;

    let mut swapped = lines.clone();
    swapped.swap(k, k + 1);
    let b = broken(&swapped);
    assert_eq!(
        (b.seq, &b.fault),
        (
            k as u64,
            &Fault::Seq {
                found: k as u64 + 1
            }
        ),
        "{b}"
    );

    let mut removed = lines.clone();
    removed.remove(k);
    let b = broken(&removed);
    assert_eq!(
        (b.seq, &b.fault),
        (
            k as u64,
            &Fault::Seq {
                found: k as u64 + 1
            }
        ),
        "{b}"
    );

    let mut duplicated = lines.clone();
    duplicated.insert(k + 1, lines[k].clone());
    let b = broken(&duplicated);
    assert_eq!(
        (b.seq, &b.fault),
        (k as u64 + 1, &Fault::Seq { found: k as u64 }),
        "{b}"
    );

    // Even the operator cannot insert a validly signed entry into history.
    let prev = Entry::decode(&lines[k]).expect("decodes").hash;
    let extra = Entry::sign(
        EntryBody {
            key: key("inserted"),
            kind: EntryKind::Mint {
                amount: Credits(1_000_000),
                to: who("mallory").account(),
            },
            prev,
            seq: k as u64 + 1,
            signer: operator().account(),
            version: Version::CURRENT,
        },
        &operator(),
    )
    .expect("sign");
    let mut inserted = lines.clone();
    inserted.insert(k + 1, extra.line);
    let b = broken(&inserted);
    assert_eq!(
        (b.seq, &b.fault),
        (
            k as u64 + 2,
            &Fault::Seq {
                found: k as u64 + 1
            }
        ),
        "{b}"
    );

    // A re-signed replacement breaks the next entry's link.
    let mut replaced = lines.clone();
    let old = Entry::decode(&lines[k]).expect("decodes").entry;
    let mut body = old.body.clone();
    body.kind = EntryKind::Reputation {
        account: who("mallory").account(),
        delta: 1,
    };
    replaced[k] = Entry::sign(body, &operator()).expect("sign").line;
    let b = broken(&replaced);
    assert_eq!(b.seq, k as u64 + 1);
    assert!(matches!(b.fault, Fault::Link { .. }), "{b}");

    // A replayed operation that the rules refuse is named too (a double spend of the escrow).
    let mut body = Entry::decode(&lines[lines.len() - 1])
        .expect("decodes")
        .entry
        .body;
    body.seq += 1;
    body.prev = Entry::decode(&lines[lines.len() - 1])
        .expect("decodes")
        .hash;
    body.key = key("overdraft");
    body.kind = EntryKind::Transfer {
        amount: Credits(1_000_000),
        from: who("buyer").account(),
        to: who("mallory").account(),
    };
    let mut overdrawn = lines.clone();
    overdrawn.push(Entry::sign(body, &operator()).expect("sign").line);
    let b = broken(&overdrawn);
    assert_eq!(b.seq, lines.len() as u64);
    assert!(matches!(b.fault, Fault::Refused(_)), "{b}");
}

#[test]
fn lines_that_are_not_entries_name_their_line_number() {
    let (_dir, _ledger, lines) = sample();
    for (bad, index) in [(&b"hello"[..], 4usize), (b"", 5), (b"{}", 0), (b"[1,2]", 3)] {
        let mut tampered = lines.clone();
        tampered[index] = bad.to_vec();
        let b = broken(&tampered);
        assert_eq!(
            (b.seq, b.line),
            (index as u64, Some(index as u64 + 1)),
            "{b}"
        );
        assert!(
            matches!(b.fault, Fault::Decode(_) | Fault::Genesis(_)),
            "{b}"
        );
        assert!(
            b.to_string().contains(&format!("line {}", index + 1)),
            "{b}"
        );
    }
    // Whitespace, reordered keys and CRLF are other spellings of the entry, refused.
    let mut crlf = lines.clone();
    crlf[2].push(b'\r');
    assert_eq!(broken(&crlf).seq, 2);
    let mut spaced = lines.clone();
    spaced[3] = String::from_utf8(lines[3].clone())
        .expect("utf8")
        .replacen(',', ", ", 1)
        .into_bytes();
    assert_eq!(broken(&spaced).seq, 3);
}

#[test]
fn partial_and_empty_exports_are_refused() {
    let (_dir, ledger, lines) = sample();
    let mut tail = Vec::new();
    ledger.export(&mut tail, 5).expect("export from 5");
    let err = market_ledger::verify_export(&tail[..], std::path::Path::new("<t>"), None)
        .expect_err("does not start at genesis");
    assert_eq!(err.broken_seq(), Some(0), "{err}");
    let err = verify_lines(&[]).expect_err("empty");
    assert_eq!(err.broken_seq(), Some(0), "{err}");
    // A last line without its newline is refused rather than guessed at.
    let mut text = Vec::new();
    for l in &lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    text.pop();
    let err = market_ledger::verify_export(&text[..], std::path::Path::new("<t>"), None)
        .expect_err("unterminated");
    assert_eq!(err.broken_seq(), Some(lines.len() as u64 - 1), "{err}");
}

fn signing(body: &EntryBody) -> Vec<u8> {
    market_ledger::protocol::signing_bytes(body).expect("signing bytes")
}

fn line(entry: &Entry) -> Vec<u8> {
    market_ledger::protocol::to_canonical_bytes(entry).expect("canonical")
}

#[test]
fn hashes_link_every_entry_to_the_one_before() {
    let (_dir, _ledger, lines) = sample();
    let mut prev = Hash::default();
    for (i, l) in lines.iter().enumerate() {
        let d = Entry::decode(l).expect("decodes");
        assert_eq!(d.entry.body.seq, i as u64);
        assert_eq!(d.entry.body.prev, prev);
        prev = d.hash;
    }
}

/// A `commit` entry whose beacon proof is not the operator's VRF proof (here a grinding worker's
/// own proof, so the beacon would be the worker's choice) is refused at that entry on replay,
/// even though the operator signed the entry: the proof itself is checked under the ledger key.
#[test]
fn a_beacon_proof_by_another_key_is_refused_on_replay() {
    let (_dir, _ledger, lines) = sample();
    let at = lines
        .iter()
        .position(|l| {
            matches!(
                Entry::decode(l).expect("decodes").entry.body.kind,
                EntryKind::Commit { .. }
            )
        })
        .expect("a commit entry");
    let mut body = Entry::decode(&lines[at]).expect("decodes").entry.body;
    let EntryKind::Commit { commitment, .. } = body.kind.clone() else {
        unreachable!()
    };
    // The honest entry verifies; the same entry with the worker's own proof does not.
    body.kind = EntryKind::commit_of(&who("worker"), commitment)
        .expect("entry")
        .0;
    let mut tampered = lines.clone();
    tampered[at] = Entry::sign(body, &operator()).expect("sign").line;
    // Entries after it no longer link; the first fault must be the proof itself, at `at`.
    tampered.truncate(at + 1);
    let b = broken(&tampered);
    assert_eq!(b.seq, at as u64, "{b}");
    assert!(b.to_string().contains("beacon_proof"), "{b}");
}
