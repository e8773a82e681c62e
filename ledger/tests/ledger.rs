//! Behaviour of a ledger through its public API: the market's lifecycle with embedded evidence,
//! refusals, idempotency, reopening, operators, signed heads and group commit.

mod common;

use std::sync::Arc;

use common::*;
use market_ledger::protocol::{Credits, Hash, Identity, TaskId};
use market_ledger::{
    EntryKind, EvidenceError, HeadError, Ledger, LedgerError, OpError, OpenCheck, OpenOptions,
};

#[test]
fn task_lifecycle_with_embedded_evidence_settles_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let (buyer, worker, verifier) = (who("buyer"), who("worker"), who("verifier"));
    ledger
        .mint(key("mint-buyer"), buyer.account(), Credits(1000))
        .expect("mint");
    ledger
        .mint(key("mint-worker"), worker.account(), Credits(300))
        .expect("mint");
    ledger
        .append(
            key("stake-worker"),
            EntryKind::Stake {
                account: worker.account(),
                amount: Credits(200),
            },
        )
        .expect("stake");

    let spec = task(&buyer, 400, 1);
    let task = task_id(&spec);
    let escrowed = ledger.escrow(key("escrow-1"), spec).expect("escrow");
    assert!(matches!(
        escrowed.entry.body.kind,
        EntryKind::Escrow { spec: Some(_), .. }
    ));
    assert_eq!(ledger.balance(&buyer.account()), Credits(600));
    assert_eq!(ledger.open_escrows().len(), 1);

    let commitment = commitment(&worker, task);
    let (commit, beacon) = EntryKind::commit_of(&operator(), commitment.clone()).expect("commit");
    let recorded = ledger.append(key("commit-1"), commit).expect("commit");
    // The beacon is the operator's VRF output over the commitment id, proven in the entry and
    // not its hash (which the worker could compute before committing).
    assert_ne!(beacon.0, recorded.hash);
    let EntryKind::Commit { beacon_proof, .. } = &recorded.entry.body.kind else {
        panic!("not a commit entry");
    };
    let cid = market_ledger::protocol::CommitmentId(commitment.id().expect("id"));
    assert_eq!(
        market_ledger::protocol::beacon::verify_beacon(&operator().account(), &cid, beacon_proof),
        Ok(beacon)
    );
    // A proof by any other key (a worker that wants to choose its beacon) is refused.
    let (forged, _) = EntryKind::commit_of(&who("grinder"), commitment.clone()).expect("entry");
    let err = ledger
        .append(key("commit-forged"), forged)
        .expect_err("forged beacon");
    assert!(
        matches!(
            err,
            LedgerError::Evidence(EvidenceError::Mismatch {
                field: "beacon_proof",
                ..
            })
        ),
        "{err}"
    );

    let pass = verdict(&verifier, &commitment, false);
    let settle = [
        (
            "release-1",
            EntryKind::Release {
                amount: Credits(300),
                commitment: Some(commitment.clone()),
                task_id: task,
                worker: worker.account(),
            },
        ),
        (
            "reward-1",
            EntryKind::Reward {
                amount: Credits(40),
                task_id: task,
                verdict: Some(pass),
                verifier: verifier.account(),
            },
        ),
        (
            "refund-1",
            EntryKind::Refund {
                amount: Credits(60),
                buyer: buyer.account(),
                task_id: task,
            },
        ),
    ];
    for (k, kind) in settle {
        ledger.append(key(k), kind).expect(k);
    }
    assert_eq!(ledger.balance(&buyer.account()), Credits(660));
    assert_eq!(ledger.balance(&worker.account()), Credits(400));
    assert_eq!(ledger.balance(&verifier.account()), Credits(40));
    let escrow = ledger.escrow_of(&task).expect("escrow exists");
    assert_eq!(
        (escrow.amount, escrow.remaining),
        (Credits(400), Credits(0))
    );
    assert!(ledger.open_escrows().is_empty());

    // A failed audit slashes the worker's stake to the buyer, with the verdict as evidence.
    let fail = verdict(&verifier, &commitment, true);
    ledger
        .append(
            key("slash-1"),
            EntryKind::Slash {
                account: worker.account(),
                amount: Credits(150),
                evidence: verdict_id(&fail),
                reason: "segment 2 state mismatch".into(),
                to: buyer.account(),
                verdict: Some(fail),
            },
        )
        .expect("slash");
    ledger
        .append(
            key("rep-1"),
            EntryKind::Reputation {
                account: worker.account(),
                delta: -5,
            },
        )
        .expect("reputation");
    assert_eq!(ledger.stake(&worker.account()), Credits(50));
    assert_eq!(ledger.balance(&buyer.account()), Credits(810));
    assert_eq!(ledger.reputation(&worker.account()), -5);

    let state = ledger.state();
    assert_eq!(state.supply(), Credits(1300));
    state
        .check_conservation()
        .expect("no credit lost or invented");
    let report = ledger.verify().expect("verifies");
    assert_eq!(report.entries, 11);
    let exported = verify_lines(&export_lines(&ledger)).expect("export verifies");
    assert_eq!(exported.summary.state, state);
    assert_eq!(exported.summary.head, ledger.head());
}

#[test]
fn overdraft_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let (a, b) = (who("a").account(), who("b").account());
    ledger.mint(key("m"), a, Credits(10)).expect("mint");
    let head = ledger.head();
    let err = ledger
        .transfer(key("t"), a, b, Credits(11))
        .expect_err("overdraft");
    assert!(
        matches!(
            err,
            LedgerError::Refused(OpError::Overdraft {
                balance: Credits(10),
                needed: Credits(11),
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(ledger.head(), head);
    assert_eq!(ledger.balance(&a), Credits(10));
    assert_eq!(ledger.balance(&b), Credits(0));
    // A refusal does not use up the key: once funded, the same request succeeds.
    ledger.mint(key("m2"), a, Credits(1)).expect("mint");
    let done = ledger
        .transfer(key("t"), a, b, Credits(11))
        .expect("now funded");
    assert!(done.fresh);
    assert_eq!(ledger.balance(&b), Credits(11));
    // Escrows cannot be overdrawn either.
    let spec = task(&who("c"), 5, 9);
    ledger
        .mint(key("mc"), who("c").account(), Credits(5))
        .expect("mint");
    let t = task_id(&spec);
    ledger.escrow(key("e"), spec).expect("escrow");
    let err = ledger
        .append(
            key("r"),
            EntryKind::Refund {
                amount: Credits(6),
                buyer: who("c").account(),
                task_id: t,
            },
        )
        .expect_err("escrow overdraft");
    assert!(
        matches!(err, LedgerError::Refused(OpError::EscrowShort { .. })),
        "{err}"
    );
    ledger.verify().expect("verifies");
}

#[test]
fn same_key_same_operation_records_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let a = who("a").account();
    let first = ledger.mint(key("once"), a, Credits(7)).expect("mint");
    let second = ledger.mint(key("once"), a, Credits(7)).expect("repeat");
    assert!(first.fresh);
    assert!(!second.fresh);
    assert_eq!(first.seq(), second.seq());
    assert_eq!(first.hash, second.hash);
    assert_eq!(ledger.balance(&a), Credits(7));
    assert_eq!(ledger.head().seq, 1);

    let err = ledger
        .mint(key("once"), a, Credits(8))
        .expect_err("same key, other operation");
    assert!(
        matches!(
            err,
            LedgerError::KeyConflict {
                seq: 1,
                existing: "mint",
                requested: "mint",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(ledger.balance(&a), Credits(7));
}

#[test]
fn repeated_key_within_one_group_commit_records_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let a = who("a").account();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| s.spawn(|| ledger.mint(key("racing"), a, Credits(3))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let seqs: Vec<u64> = results
        .iter()
        .map(|r| r.as_ref().expect("mint").seq())
        .collect();
    assert!(seqs.iter().all(|s| *s == 1), "{seqs:?}");
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Ok(a) if a.fresh))
            .count(),
        1
    );
    assert_eq!(ledger.balance(&a), Credits(3));
    assert_eq!(ledger.head().seq, 1);
}

#[test]
fn evidence_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let (buyer, worker, other) = (who("buyer"), who("worker"), who("other"));
    ledger
        .mint(key("m"), buyer.account(), Credits(100))
        .expect("mint");
    let spec = task(&buyer, 50, 3);
    let t = task_id(&spec);

    let cheaper = EntryKind::Escrow {
        amount: Credits(40),
        buyer: buyer.account(),
        spec: Some(Box::new(spec.clone())),
        task_id: t,
    };
    let err = ledger
        .append(key("e1"), cheaper)
        .expect_err("price mismatch");
    assert!(matches!(
        err,
        LedgerError::Evidence(EvidenceError::Mismatch {
            field: "amount",
            ..
        })
    ));

    let mut forged = spec.clone();
    forged.body.price = Credits(1);
    let err = ledger
        .append(
            key("e2"),
            EntryKind::Escrow {
                amount: Credits(1),
                buyer: buyer.account(),
                spec: Some(Box::new(forged)),
                task_id: t,
            },
        )
        .expect_err("forged spec");
    assert!(
        matches!(err, LedgerError::Evidence(EvidenceError::Signature(_))),
        "{err}"
    );

    ledger.escrow(key("e3"), spec).expect("escrow");
    let theirs = commitment(&other, t);
    let err = ledger
        .append(
            key("rel"),
            EntryKind::Release {
                amount: Credits(10),
                commitment: Some(theirs.clone()),
                task_id: t,
                worker: worker.account(),
            },
        )
        .expect_err("someone else's commitment");
    assert!(matches!(
        err,
        LedgerError::Evidence(EvidenceError::Mismatch {
            field: "worker",
            ..
        })
    ));

    let fail = verdict(&other, &theirs, true);
    let err = ledger
        .append(
            key("slash"),
            EntryKind::Slash {
                account: worker.account(),
                amount: Credits(1),
                evidence: Hash::of(b"some other verdict"),
                reason: "x".into(),
                to: buyer.account(),
                verdict: Some(fail),
            },
        )
        .expect_err("evidence hash mismatch");
    assert!(matches!(
        err,
        LedgerError::Evidence(EvidenceError::Mismatch {
            field: "evidence",
            ..
        })
    ));

    let err = ledger
        .append(
            key("commit-unpaid"),
            EntryKind::commit_of(
                &operator(),
                commitment(&worker, TaskId(Hash::of(b"unpaid"))),
            )
            .expect("entry")
            .0,
        )
        .expect_err("no escrow");
    assert!(
        matches!(err, LedgerError::Refused(OpError::NoEscrow(_))),
        "{err}"
    );
    assert_eq!(ledger.head().seq, 2);
}

#[test]
fn genesis_cannot_be_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let err = ledger
        .append(
            key("g"),
            EntryKind::Genesis {
                ledger: operator().account(),
            },
        )
        .expect_err("genesis");
    assert!(matches!(
        err,
        LedgerError::Refused(OpError::MisplacedGenesis)
    ));
}

#[test]
fn reopening_keeps_state_and_continues_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = who("a").account();
    let (head, state) = {
        let ledger = open(dir.path());
        for i in 0..20 {
            ledger
                .mint(key(&format!("m{i}")), a, Credits(i + 1))
                .expect("mint");
        }
        (ledger.head(), ledger.state())
    };
    for check in [OpenCheck::Tail(5), OpenCheck::Full] {
        let ledger = Ledger::open(
            &ledger_path(dir.path()),
            operator(),
            OpenOptions {
                check,
                ..OpenOptions::default()
            },
        )
        .expect("reopen");
        assert_eq!(ledger.head(), head);
        assert_eq!(ledger.state(), state);
    }
    let ledger = open(dir.path());
    let next = ledger.mint(key("after"), a, Credits(1)).expect("mint");
    assert_eq!(next.seq(), head.seq + 1);
    assert_eq!(next.entry.body.prev, head.hash);
    // An idempotency key from before the restart still answers with its entry.
    let again = ledger.mint(key("m3"), a, Credits(4)).expect("repeat");
    assert_eq!((again.seq(), again.fresh), (4, false));
    ledger.verify().expect("verifies");
}

#[test]
fn another_operator_key_and_read_only_handles_cannot_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    let foreign = || {
        Ledger::open(
            &ledger_path(dir.path()),
            who("mallory"),
            OpenOptions::default(),
        )
        .expect_err("foreign operator")
    };
    // sled lets go of its file lock a moment after the handle drops (a flush thread), which a
    // loaded machine can stretch: only the lock is waited for.
    let mut err = foreign();
    for _ in 0..250 {
        if !err.to_string().contains("could not acquire lock") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        err = foreign();
    }
    assert!(matches!(err, LedgerError::WrongOperator { .. }), "{err}");
    let ro = Ledger::open_read_only(&ledger_path(dir.path()), OpenCheck::Full).expect("read-only");
    let err = ro
        .mint(key("m"), who("a").account(), Credits(1))
        .expect_err("read-only");
    assert!(matches!(err, LedgerError::ReadOnly));
    assert_eq!(ro.ledger_key(), operator().account());
}

#[test]
fn signed_heads_prove_the_ledger_only_grew() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let a = who("a").account();
    ledger.mint(key("m1"), a, Credits(1)).expect("mint");
    let old = ledger.sign_head(&operator()).expect("sign head");
    assert_eq!(old.body.seq, 1);
    ledger.mint(key("m2"), a, Credits(1)).expect("mint");
    ledger
        .check_signed_head(&old)
        .expect("old head is a prefix");
    let current = ledger.sign_head(&operator()).expect("sign head");
    ledger.check_signed_head(&current).expect("current head");

    // The same operator running a second ledger whose history differs at seq 1.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = open(other_dir.path());
    other.mint(key("m1"), a, Credits(2)).expect("mint");
    other.mint(key("m2"), a, Credits(2)).expect("mint");
    let err = other.check_signed_head(&old).expect_err("rewritten");
    assert!(
        matches!(err, LedgerError::Head(HeadError::Rewritten { seq: 1, .. })),
        "{err}"
    );

    // A head from the future means the chain shrank.
    ledger.mint(key("m3"), a, Credits(1)).expect("mint");
    let ahead = ledger.sign_head(&operator()).expect("sign head");
    let err = other.check_signed_head(&ahead).expect_err("shrank");
    assert!(
        matches!(
            err,
            LedgerError::Head(HeadError::Shrank { seq: 3, head: 2 })
        ),
        "{err}"
    );

    let mut forged = old.clone();
    forged.body.seq = 2;
    assert!(matches!(
        ledger.check_signed_head(&forged),
        Err(LedgerError::Head(HeadError::Signature(_)))
    ));
    assert!(matches!(
        ledger.sign_head(&who("mallory")),
        Err(LedgerError::WrongOperator { .. })
    ));

    // The same check works on an export, without a database.
    let mut text = Vec::new();
    ledger.export(&mut text, 0).expect("export");
    market_ledger::verify_export(&text[..], std::path::Path::new("<test>"), Some(&old))
        .expect("old head is a prefix of the export");
    let mut theirs = Vec::new();
    other.export(&mut theirs, 0).expect("export");
    let err = market_ledger::verify_export(&theirs[..], std::path::Path::new("<test>"), Some(&old))
        .expect_err("the other ledger does not extend this one");
    assert!(matches!(err, LedgerError::Head(_)), "{err}");
}

#[test]
fn concurrent_appends_all_land_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(open(dir.path()));
    let threads = 16u64;
    let per = 40u64;
    let mut all: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ledger = &ledger;
                s.spawn(move || {
                    let me = Identity::from_test_label(&format!("t{t}")).account();
                    (0..per)
                        .map(|i| {
                            ledger
                                .mint(key(&format!("t{t}/{i}")), me, Credits(1))
                                .expect("mint")
                                .seq()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    all.sort_unstable();
    assert_eq!(all, (1..=threads * per).collect::<Vec<_>>());
    // How many flushes they shared depends on scheduling, so it is not asserted here; batching
    // itself is pinned by the unit test `queued_appends_share_one_flush_per_batch`.
    assert_eq!(ledger.state().supply(), Credits(threads * per));
    ledger.verify().expect("verifies");
}
