//! Property: for any sequence of operations, including refused overdrafts and repeated
//! idempotency keys, the ledger agrees with an independent model after every step, and its
//! stored state equals the replay of its entries (from the database and from an export).

mod common;

use std::collections::BTreeMap;

use common::*;
use market_ledger::protocol::{AccountId, Credits, Hash, TaskId};
use market_ledger::{EntryKind, LedgerError};
use proptest::prelude::*;

const ACCOUNTS: usize = 4;
const TASKS: usize = 3;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Mint {
        to: usize,
        amount: u64,
    },
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    Escrow {
        task: usize,
        buyer: usize,
        amount: u64,
    },
    Release {
        task: usize,
        to: usize,
        amount: u64,
    },
    Refund {
        task: usize,
        buyer: usize,
        amount: u64,
    },
    Stake {
        who: usize,
        amount: u64,
    },
    Unstake {
        who: usize,
        amount: u64,
    },
    Slash {
        who: usize,
        to: usize,
        amount: u64,
    },
    Reputation {
        who: usize,
        delta: i64,
    },
    /// Sends an earlier request again, same key and operation.
    Repeat {
        back: usize,
    },
    /// Sends an earlier key with another operation.
    Conflict {
        back: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0..ACCOUNTS;
    let t = 0..TASKS;
    let amount = 0u64..60;
    prop_oneof![
        3 => (a.clone(), amount.clone()).prop_map(|(to, amount)| Op::Mint { to, amount }),
        4 => (a.clone(), a.clone(), amount.clone())
            .prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        2 => (t.clone(), a.clone(), amount.clone())
            .prop_map(|(task, buyer, amount)| Op::Escrow { task, buyer, amount }),
        2 => (t.clone(), a.clone(), amount.clone())
            .prop_map(|(task, to, amount)| Op::Release { task, to, amount }),
        1 => (t, a.clone(), amount.clone())
            .prop_map(|(task, buyer, amount)| Op::Refund { task, buyer, amount }),
        1 => (a.clone(), amount.clone()).prop_map(|(who, amount)| Op::Stake { who, amount }),
        1 => (a.clone(), amount.clone()).prop_map(|(who, amount)| Op::Unstake { who, amount }),
        1 => (a.clone(), a.clone(), amount)
            .prop_map(|(who, to, amount)| Op::Slash { who, to, amount }),
        1 => (a, -3i64..3).prop_map(|(who, delta)| Op::Reputation { who, delta }),
        2 => (0usize..8).prop_map(|back| Op::Repeat { back }),
        1 => (0usize..8).prop_map(|back| Op::Conflict { back }),
    ]
}

fn account(i: usize) -> AccountId {
    who(&format!("acct-{i}")).account()
}

fn task_of(i: usize) -> TaskId {
    TaskId(Hash::of(format!("task-{i}").as_bytes()))
}

fn kind(op: &Op) -> EntryKind {
    match *op {
        Op::Mint { to, amount } => EntryKind::Mint {
            amount: Credits(amount),
            to: account(to),
        },
        Op::Transfer { from, to, amount } => EntryKind::Transfer {
            amount: Credits(amount),
            from: account(from),
            to: account(to),
        },
        Op::Escrow {
            task,
            buyer,
            amount,
        } => EntryKind::Escrow {
            amount: Credits(amount),
            buyer: account(buyer),
            spec: None,
            task_id: task_of(task),
        },
        Op::Release { task, to, amount } => EntryKind::Release {
            amount: Credits(amount),
            commitment: None,
            task_id: task_of(task),
            worker: account(to),
        },
        Op::Refund {
            task,
            buyer,
            amount,
        } => EntryKind::Refund {
            amount: Credits(amount),
            buyer: account(buyer),
            task_id: task_of(task),
        },
        Op::Stake { who, amount } => EntryKind::Stake {
            account: account(who),
            amount: Credits(amount),
        },
        Op::Unstake { who, amount } => EntryKind::Unstake {
            account: account(who),
            amount: Credits(amount),
        },
        Op::Slash { who, to, amount } => EntryKind::Slash {
            account: account(who),
            amount: Credits(amount),
            evidence: Hash::of(b"verdict"),
            reason: "test".into(),
            to: account(to),
            verdict: None,
        },
        Op::Reputation { who, delta } => EntryKind::Reputation {
            account: account(who),
            delta,
        },
        Op::Repeat { .. } | Op::Conflict { .. } => unreachable!("resolved before"),
    }
}

/// The same operation with other numbers.
fn altered(op: &Op) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Mint { amount, .. }
        | Op::Transfer { amount, .. }
        | Op::Escrow { amount, .. }
        | Op::Release { amount, .. }
        | Op::Refund { amount, .. }
        | Op::Stake { amount, .. }
        | Op::Unstake { amount, .. }
        | Op::Slash { amount, .. } => *amount += 1,
        Op::Reputation { delta, .. } => *delta += 1,
        Op::Repeat { .. } | Op::Conflict { .. } => {}
    }
    op
}

/// An independent, deliberately plain statement of the rules.
#[derive(Debug, Default, Clone)]
struct Model {
    balance: [u64; ACCOUNTS],
    stake: [u64; ACCOUNTS],
    reputation: [i64; ACCOUNTS],
    /// task -> (buyer, remaining)
    escrow: BTreeMap<usize, (usize, u64)>,
    supply: u64,
}

impl Model {
    /// Applies `op`, or returns false (and changes nothing) when the rules refuse it.
    fn apply(&mut self, op: &Op) -> bool {
        let mut next = self.clone();
        let ok = match *op {
            Op::Mint { to, amount } => {
                next.balance[to] += amount;
                next.supply += amount;
                amount > 0
            }
            Op::Transfer { from, to, amount } => {
                from != to && amount > 0 && next.take(from, amount) && {
                    next.balance[to] += amount;
                    true
                }
            }
            Op::Escrow {
                task,
                buyer,
                amount,
            } => {
                amount > 0 && !next.escrow.contains_key(&task) && next.take(buyer, amount) && {
                    next.escrow.insert(task, (buyer, amount));
                    true
                }
            }
            Op::Release { task, to, amount } => match next.escrow.get_mut(&task) {
                Some((_, left)) if amount > 0 && *left >= amount => {
                    *left -= amount;
                    next.balance[to] += amount;
                    true
                }
                _ => false,
            },
            Op::Refund {
                task,
                buyer,
                amount,
            } => match next.escrow.get_mut(&task) {
                Some((b, left)) if amount > 0 && *left >= amount && *b == buyer => {
                    *left -= amount;
                    next.balance[buyer] += amount;
                    true
                }
                _ => false,
            },
            Op::Stake { who, amount } => {
                amount > 0 && next.take(who, amount) && {
                    next.stake[who] += amount;
                    true
                }
            }
            Op::Unstake { who, amount } | Op::Slash { who, to: _, amount }
                if amount == 0 || next.stake[who] < amount =>
            {
                false
            }
            Op::Unstake { who, amount } => {
                next.stake[who] -= amount;
                next.balance[who] += amount;
                true
            }
            Op::Slash { who, to, amount } => {
                next.stake[who] -= amount;
                next.balance[to] += amount;
                true
            }
            Op::Reputation { who, delta } => {
                next.reputation[who] += delta;
                delta != 0
            }
            Op::Repeat { .. } | Op::Conflict { .. } => false,
        };
        if ok {
            *self = next;
        }
        ok
    }

    fn take(&mut self, who: usize, amount: u64) -> bool {
        match self.balance[who].checked_sub(amount) {
            Some(left) => {
                self.balance[who] = left;
                true
            }
            None => false,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn balances_always_equal_the_replay_of_the_entries(ops in prop::collection::vec(op(), 1..48)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(dir.path());
        let mut model = Model::default();
        // Every request sent so far, with the seq it recorded (None when refused).
        let mut sent: Vec<(String, Op, Option<u64>)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let (k, op) = match op {
                Op::Repeat { back } | Op::Conflict { back } if !sent.is_empty() => {
                    let (k, o, _) = sent[sent.len() - 1 - back % sent.len()].clone();
                    let o = if matches!(op, Op::Conflict { .. }) { altered(&o) } else { o };
                    (k, o)
                }
                Op::Repeat { .. } | Op::Conflict { .. } => continue,
                _ => (format!("op-{i}"), op.clone()),
            };
            // What the key recorded, if any request under it ever succeeded.
            let recorded = sent
                .iter()
                .find_map(|(sk, o, s)| s.filter(|_| *sk == k).map(|s| (s, o.clone())));
            let result = ledger.append(key(&k), kind(&op));
            match recorded {
                // The key recorded an entry: the same operation gets it back, another conflicts.
                Some((seq, recorded_op)) => {
                    let same = recorded_op == op;
                    match result {
                        Ok(a) => {
                            prop_assert!(same, "{op:?} under {k} should conflict");
                            prop_assert_eq!((a.seq(), a.fresh), (seq, false));
                        }
                        Err(LedgerError::KeyConflict { seq: s, .. }) => {
                            prop_assert!(!same);
                            prop_assert_eq!(s, seq);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                    sent.push((k, op, Some(seq)));
                }
                // A fresh key, or one whose earlier request was refused.
                None => {
                    let expected = model.apply(&op);
                    match result {
                        Ok(a) => {
                            prop_assert!(expected, "{op:?} should be refused");
                            prop_assert!(a.fresh);
                            prop_assert_eq!(a.seq(), ledger.head().seq);
                            sent.push((k, op, Some(a.seq())));
                        }
                        Err(LedgerError::Refused(_)) => {
                            prop_assert!(!expected, "{op:?} should pass");
                            sent.push((k, op, None));
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
            }
            for a in 0..ACCOUNTS {
                prop_assert_eq!(ledger.balance(&account(a)), Credits(model.balance[a]));
                prop_assert_eq!(ledger.stake(&account(a)), Credits(model.stake[a]));
                prop_assert_eq!(ledger.reputation(&account(a)), model.reputation[a]);
            }
            for t in 0..TASKS {
                let escrow = ledger.escrow_of(&task_of(t)).map(|e| (e.buyer, e.remaining));
                let modelled = model.escrow.get(&t).map(|(b, left)| (account(*b), Credits(*left)));
                prop_assert_eq!(escrow, modelled);
            }
        }
        let state = ledger.state();
        prop_assert_eq!(state.supply(), Credits(model.supply));
        prop_assert!(state.check_conservation().is_ok());
        // The database's state is the replay of its entries...
        let report = ledger.verify().expect("verifies");
        prop_assert_eq!(report.head, ledger.head());
        // ...and so is an export's, with no database.
        let exported = verify_lines(&export_lines(&ledger)).expect("export verifies");
        prop_assert_eq!(exported.summary.state, state);
        let recorded = sent.iter().filter(|(_, _, s)| s.is_some()).map(|(k, _, _)| k).collect::<std::collections::BTreeSet<_>>();
        prop_assert_eq!(recorded.len() as u64, report.entries - 1);
    }
}
