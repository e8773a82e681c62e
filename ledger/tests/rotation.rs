//! Key rotation: an account moves its balance, stake and reputation to a new key, signed by
//! both keys; the old key can never act again, and the chain still verifies and replays.

mod common;

use common::*;
use market_ledger::protocol::{
    Credits, Identity, KeyRotation, RotationAcceptance, Signed, Version,
};
use market_ledger::{EntryKind, EvidenceError, Ledger, LedgerError, OpError};

fn rotation(from: &Identity, to: &Identity) -> Signed<KeyRotation> {
    Signed::sign(
        KeyRotation {
            version: Version::CURRENT,
            from: from.account(),
            to: to.account(),
        },
        from,
    )
    .expect("sign")
}

fn accept(r: &Signed<KeyRotation>, signer: &Identity) -> Signed<RotationAcceptance> {
    Signed::sign(
        RotationAcceptance {
            version: Version::CURRENT,
            rotation: r.id().expect("id"),
            to: signer.account(),
        },
        signer,
    )
    .expect("sign")
}

fn refused(result: Result<market_ledger::Appended, LedgerError>) -> OpError {
    match result {
        Err(LedgerError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_account_moves_to_a_new_key_and_the_old_key_can_no_longer_act() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let (old, new, other) = (who("old"), who("new"), who("other"));
    ledger
        .mint(key("mint-old"), old.account(), Credits(500))
        .expect("mint");
    ledger
        .append(
            key("stake-old"),
            EntryKind::Stake {
                account: old.account(),
                amount: Credits(200),
            },
        )
        .expect("stake");
    ledger
        .append(
            key("rep-old"),
            EntryKind::Reputation {
                account: old.account(),
                delta: 7,
            },
        )
        .expect("rep");

    // With credits in escrow the rotation waits: the escrow's refund would go to a dead key.
    let spec = task(&old, 100, 1);
    let task_id = task_id(&spec);
    ledger.escrow(key("escrow"), spec).expect("escrow");
    let r = rotation(&old, &new);
    let e = refused(ledger.rotate(key("rotate-1"), r.clone(), accept(&r, &new)));
    assert_eq!(
        e,
        OpError::OpenEscrow {
            account: old.account(),
            task_id
        }
    );
    ledger
        .append(
            key("refund"),
            EntryKind::Refund {
                amount: Credits(100),
                buyer: old.account(),
                task_id,
            },
        )
        .expect("refund");

    // The acceptance must be the new key's, of this very rotation.
    let forged = accept(&r, &other);
    assert!(matches!(
        ledger.rotate(key("rotate-2"), r.clone(), forged),
        Err(LedgerError::Evidence(EvidenceError::Mismatch { .. }))
    ));
    let elsewhere = rotation(&old, &other);
    assert!(matches!(
        ledger.rotate(key("rotate-3"), r.clone(), accept(&elsewhere, &new)),
        Err(LedgerError::Evidence(_))
    ));
    // A request signed by someone else than the old key does not verify.
    let mut stolen = rotation(&other, &new);
    stolen.body.from = old.account();
    assert!(matches!(
        ledger.rotate(key("rotate-4"), stolen.clone(), accept(&stolen, &new)),
        Err(LedgerError::Evidence(_))
    ));
    // Not onto a key that holds anything.
    ledger
        .mint(key("mint-other"), other.account(), Credits(1))
        .expect("mint");
    let onto = rotation(&old, &other);
    assert_eq!(
        refused(ledger.rotate(key("rotate-5"), onto.clone(), accept(&onto, &other))),
        OpError::RotationTarget(other.account())
    );
    let to_self = rotation(&old, &old);
    assert_eq!(
        refused(ledger.rotate(key("rotate-6"), to_self.clone(), accept(&to_self, &old))),
        OpError::SameAccount(old.account())
    );

    ledger
        .rotate(key("rotate"), r.clone(), accept(&r, &new))
        .expect("rotate");
    assert_eq!(ledger.balance(&new.account()), Credits(300));
    assert_eq!(ledger.stake(&new.account()), Credits(200));
    assert_eq!(ledger.reputation(&new.account()), 7);
    assert_eq!(ledger.balance(&old.account()), Credits(0));
    assert_eq!(ledger.stake(&old.account()), Credits(0));
    assert_eq!(ledger.reputation(&old.account()), 0);
    assert_eq!(ledger.rotated_to(&old.account()), Some(new.account()));

    // The old key can no longer act (escrow, transfer, stake, rotate again) ...
    let dead = OpError::Rotated {
        account: old.account(),
        to: new.account(),
    };
    assert_eq!(
        refused(ledger.transfer(
            key("xfer-from-dead"),
            old.account(),
            other.account(),
            Credits(1)
        )),
        dead
    );
    assert_eq!(
        refused(ledger.escrow(key("escrow-dead"), task(&old, 10, 2))),
        dead
    );
    assert_eq!(
        refused(ledger.append(
            key("stake-dead"),
            EntryKind::Stake {
                account: old.account(),
                amount: Credits(1)
            }
        )),
        dead
    );
    let back = rotation(&new, &old);
    assert_eq!(
        refused(ledger.rotate(key("rotate-back"), back.clone(), accept(&back, &old))),
        dead
    );
    // ... but what is owed to it or by it follows the account to its new key: a payment, a
    // slash for something done under the old key, a change of reputation.
    ledger
        .mint(key("mint-to-old"), old.account(), Credits(5))
        .expect("a payment to the old key");
    ledger
        .append(
            key("slash-old"),
            EntryKind::Slash {
                account: old.account(),
                amount: Credits(20),
                evidence: market_ledger::protocol::Hash::of(b"a verdict given under the old key"),
                reason: "result failed its audit".into(),
                to: other.account(),
                verdict: None,
            },
        )
        .expect("a slash of the old key");
    ledger
        .append(
            key("rep-old-after"),
            EntryKind::Reputation {
                account: old.account(),
                delta: -5,
            },
        )
        .expect("reputation of the old key");
    assert_eq!(ledger.balance(&new.account()), Credits(305));
    assert_eq!(ledger.stake(&new.account()), Credits(180));
    assert_eq!(ledger.reputation(&new.account()), 2);
    assert_eq!(ledger.balance(&old.account()), Credits(0));
    assert_eq!(ledger.stake(&old.account()), Credits(0));
    ledger
        .append(
            key("unstake-new"),
            EntryKind::Unstake {
                account: new.account(),
                amount: Credits(50),
            },
        )
        .expect("the new key acts");
    assert_eq!(ledger.balance(&new.account()), Credits(355));

    // The chain verifies; its export replays to the same state; a reopened ledger (state
    // read back from storage, checked against the replay) still knows the old key is dead.
    ledger.verify().expect("verify");
    let lines = export_lines(&ledger);
    let report = verify_lines(&lines).expect("export verifies");
    assert_eq!(report.summary.state, ledger.state());
    let mut bytes = Vec::new();
    for l in &lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    let old_statement =
        market_ledger::statement(&bytes[..], std::path::Path::new("x"), old.account(), None)
            .expect("statement");
    let last = old_statement
        .lines
        .iter()
        .find(|l| l.kind == "rotate")
        .expect("the rotation");
    assert_eq!(
        (last.balance, last.stake, last.reputation),
        (-300, -200, -7)
    );
    assert_eq!(old_statement.balance_change(), 0);
    // Entries naming the old key after its rotation say where their effect went.
    let after = old_statement.lines.last().expect("lines");
    assert_eq!(after.kind, "reputation");
    assert_eq!(after.reputation, 0);
    assert!(after.cause.contains("rotated"), "{}", after.cause);
    let new_statement =
        market_ledger::statement(&bytes[..], std::path::Path::new("x"), new.account(), None)
            .expect("statement");
    assert_eq!(new_statement.balance_change(), 355);
    assert_eq!(
        new_statement.lines.iter().map(|l| l.stake).sum::<i64>(),
        130
    );
    assert_eq!(new_statement.lines[0].kind, "rotate");
    // The slash of the old key is on the new key's statement, said to be its earlier key's.
    let slash = new_statement
        .lines
        .iter()
        .find(|l| l.kind == "slash")
        .expect("slash");
    assert_eq!(slash.stake, -20);
    assert!(slash.cause.contains("earlier key"), "{}", slash.cause);
    drop(ledger);
    let reopened: Ledger = open(dir.path());
    assert_eq!(reopened.rotated_to(&old.account()), Some(new.account()));
    assert_eq!(
        refused(reopened.escrow(key("escrow-dead-2"), task(&old, 10, 3))),
        dead
    );
}
