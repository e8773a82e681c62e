//! Statements: what the ledger did to one account, entry by entry, read from a verified export.
//!
//! A worker asking "what did I earn, and why was I slashed?" or a buyer asking "where did my
//! credits go?" should not have to trust the node's answer. A statement is computed from the
//! export itself, after every check [`crate::verify_export`] makes (signatures, links, the
//! replay, and an operator's signed head as a prefix): each line is one entry that named the
//! account or moved its credits, with what it changed (balance, stake, open escrow,
//! reputation) and why (the entry's kind, its idempotency key, the task, the evidence). The
//! effects come from the same replay the ledger uses to check itself ([`crate::state`]), so a
//! statement's lines always sum to the account's replayed state.

use std::io::BufRead;
use std::path::Path;

use market_protocol::{AccountId, Hash, TaskId};
use serde::Serialize;

use crate::entry::{Decoded, EntryKind};
use crate::error::LedgerError;
use crate::head::{Head, SignedHead};
use crate::state::{plan, State};
use crate::verify::Fault;

/// One entry as it concerns one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLine {
    /// The entry's sequence number.
    pub seq: u64,
    /// The entry's hash (what the next entry links to), to find it in the export.
    pub hash: Hash,
    /// The entry's kind (`release`, `slash`, ...).
    pub kind: &'static str,
    /// The entry's idempotency key, which names the operation that wrote it (the attempt, the
    /// receipt, the round: `ledger/README.md`, "Operation keys").
    pub key: String,
    /// The task (or served receipt) the entry is about, if any.
    pub task: Option<TaskId>,
    /// Change to the account's balance.
    pub balance: i64,
    /// Change to the account's stake.
    pub stake: i64,
    /// Change to the credits the account holds in open escrows (as a buyer).
    pub escrow: i64,
    /// Change to the account's reputation.
    pub reputation: i64,
    /// Why, for people: what happened and the evidence it names.
    pub cause: String,
    /// The signed message the entry rests on, by its message id: the verdict a fee or slash
    /// is for, the commitment a release pays, the slash's evidence hash.
    pub evidence: Option<Hash>,
}

/// Everything an export records about one account.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    /// The account.
    pub account: AccountId,
    /// The ledger's operator key (its genesis).
    pub ledger: AccountId,
    /// The export's last entry.
    pub head: Head,
    /// The signed head the export was checked against (its sequence number), if one was given.
    pub signed_head_seq: Option<u64>,
    /// The entries that concern the account, in chain order.
    pub lines: Vec<StatementLine>,
    /// The account's balance after the last entry.
    pub balance: u64,
    /// Its stake.
    pub stake: u64,
    /// What it holds in open escrows as a buyer.
    pub escrow: u64,
    /// Its reputation.
    pub reputation: i64,
}

impl Statement {
    /// Sum of the lines' balance changes; equals `balance` for a whole export.
    pub fn balance_change(&self) -> i64 {
        self.lines.iter().map(|l| l.balance).sum()
    }

    /// Credits earned (releases, fees, slashes received), slashed, staked and refunded, each a
    /// sum of the lines of that sort: the summary a participant reads first.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for l in &self.lines {
            match l.kind {
                "release" | "reward" => t.earned += l.balance,
                "slash" if l.stake < 0 => t.slashed -= l.stake,
                "slash" => t.compensated += l.balance,
                "mint" | "transfer" => t.received += l.balance,
                "escrow" => t.escrowed -= l.balance,
                "refund" => t.refunded += l.balance,
                "rotate" => t.rotated += l.balance,
                _ => {}
            }
        }
        t
    }
}

impl std::fmt::Display for Statement {
    /// A table for people: one row per entry, then the totals and where they were checked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "account {}", self.account)?;
        writeln!(
            f,
            "{:>7}  {:<10} {:>8} {:>8} {:>8} {:>5}  cause",
            "seq", "kind", "balance", "stake", "escrow", "rep"
        )?;
        let num = |n: i64| {
            if n == 0 {
                String::new()
            } else {
                format!("{n:+}")
            }
        };
        for l in &self.lines {
            write!(
                f,
                "{:>7}  {:<10} {:>8} {:>8} {:>8} {:>5}  {}",
                l.seq,
                l.kind,
                num(l.balance),
                num(l.stake),
                num(l.escrow),
                num(l.reputation),
                l.cause
            )?;
            if let Some(task) = &l.task {
                write!(f, " [task {task}]")?;
            }
            if let Some(e) = &l.evidence {
                write!(f, " [evidence {e}]")?;
            }
            writeln!(f, " [key {}]", l.key)?;
        }
        let t = self.totals();
        writeln!(
            f,
            "earned {}, from slashes {}, slashed {}, received {}, escrowed {}, refunded {}, moved by key rotation {}",
            t.earned, t.compensated, t.slashed, t.received, t.escrowed, t.refunded, t.rotated
        )?;
        writeln!(
            f,
            "now: balance {}, stake {}, in escrow {}, reputation {}",
            self.balance, self.stake, self.escrow, self.reputation
        )?;
        write!(
            f,
            "verified: {} entries of ledger {} up to seq {} (hash {})",
            self.head.seq + 1,
            self.ledger,
            self.head.seq,
            self.head.hash
        )?;
        if let Some(seq) = self.signed_head_seq {
            write!(f, ", extending the operator's signed head at seq {seq}")?;
        }
        Ok(())
    }
}

/// A statement's sums by sort of entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Paid for work: releases and verifier fees.
    pub earned: i64,
    /// Paid from others' slashes: a buyer's compensation, a catching verifier's share.
    pub compensated: i64,
    /// Taken from the account's stake.
    pub slashed: i64,
    /// Minted or transferred to the account (less what it transferred away).
    pub received: i64,
    /// Locked as a buyer.
    pub escrowed: i64,
    /// Returned from escrow.
    pub refunded: i64,
    /// Moved by a key rotation: in to the new key, out of the old one.
    pub rotated: i64,
}

/// Verifies the export read from `input` as [`crate::verify_export`] does (`signed_head`, when
/// given, must be a prefix of it) and collects `account`'s statement from it.
pub fn statement(
    input: impl BufRead,
    label: &Path,
    account: AccountId,
    signed_head: Option<&SignedHead>,
) -> Result<Statement, LedgerError> {
    let mut all = statements(input, label, &[account], signed_head)?;
    Ok(all.remove(0))
}

/// [`statement`] for several accounts in one pass over the export (one verification, one
/// replay): what a page listing every participant's earnings needs. The statements come in the
/// order of `accounts`.
pub fn statements(
    input: impl BufRead,
    label: &Path,
    accounts: &[AccountId],
    signed_head: Option<&SignedHead>,
) -> Result<Vec<Statement>, LedgerError> {
    let mut replay = State::default();
    let mut lines: Vec<Vec<StatementLine>> = vec![Vec::new(); accounts.len()];
    let report = crate::export::verify_export_with(input, label, signed_head, |d| {
        if d.entry.body.seq == 0 {
            if let EntryKind::Genesis { ledger } = &d.entry.body.kind {
                for (account, out) in accounts.iter().zip(&mut lines) {
                    if ledger == account {
                        out.push(line(d, account, [0; 4], None));
                    }
                }
            }
            return Ok(());
        }
        let kind = &d.entry.body.kind;
        // The checker replays this entry right after; an entry it refuses fails the export.
        let delta = plan(kind, &replay).map_err(Fault::from)?;
        let task = task_of(kind);
        let escrow_of = |s: &State, account: &AccountId| {
            task.and_then(|t| s.escrow(&t))
                .filter(|e| e.buyer == *account)
                .map_or(0, |e| e.remaining.0)
        };
        let position = |s: &State, account: &AccountId| {
            (
                [
                    s.balance(account).0,
                    s.stake(account).0,
                    escrow_of(s, account),
                ],
                s.reputation(account),
            )
        };
        let before: Vec<_> = accounts.iter().map(|a| position(&replay, a)).collect();
        // Whether each account's key was rotated before the entry (what the entry does to it
        // then lands on its current key).
        let gone_to: Vec<_> = accounts.iter().map(|a| replay.rotated_to(a)).collect();
        replay.apply(delta);
        for (i, account) in accounts.iter().enumerate() {
            let (after, rep_after) = position(&replay, account);
            let (was, rep_was) = before[i];
            let diff = |k: usize| signed_diff(after[k], was[k]);
            let change = [diff(0), diff(1), diff(2), rep_after - rep_was];
            let named = names(kind, account);
            let owner = escrow_owner(&replay, task, account);
            if change != [0; 4] || named || owner {
                let mut l = line(d, account, change, task);
                if let (true, Some(to)) = (named, gone_to[i]) {
                    l.cause.push_str(&format!(
                        " (this key was rotated: the effect went to its current key, from {to})"
                    ));
                } else if change != [0; 4] && !named && !owner {
                    l.cause.push_str(
                        " (named for this account's earlier key, which was rotated to it)",
                    );
                }
                lines[i].push(l);
            }
        }
        Ok(())
    })?;
    let state = &report.summary.state;
    Ok(accounts
        .iter()
        .zip(lines)
        .map(|(account, lines)| Statement {
            account: *account,
            ledger: report.summary.ledger,
            head: report.summary.head,
            signed_head_seq: signed_head.map(|h| h.body.seq),
            lines,
            balance: state.balance(account).0,
            stake: state.stake(account).0,
            escrow: state
                .escrows()
                .values()
                .filter(|e| e.buyer == *account)
                .map(|e| e.remaining.0)
                .sum(),
            reputation: state.reputation(account),
        })
        .collect())
}

/// `after - before` for credit amounts, which are at most 2^53 - 1 (so the difference fits).
fn signed_diff(after: u64, before: u64) -> i64 {
    i64::try_from(i128::from(after) - i128::from(before)).unwrap_or(0)
}

/// Whether the account bought the task an entry is about (a pool round, or a commitment, of
/// its task concerns it even though no credits move).
fn escrow_owner(state: &State, task: Option<TaskId>, account: &AccountId) -> bool {
    task.and_then(|t| state.escrow(&t))
        .is_some_and(|e| e.buyer == *account)
}

/// The task an entry is about.
fn task_of(kind: &EntryKind) -> Option<TaskId> {
    match kind {
        EntryKind::Escrow { task_id, .. }
        | EntryKind::Commit { task_id, .. }
        | EntryKind::Release { task_id, .. }
        | EntryKind::Refund { task_id, .. }
        | EntryKind::Reward { task_id, .. }
        | EntryKind::PoolRound { task_id, .. } => Some(*task_id),
        _ => None,
    }
}

/// Whether an entry names the account in one of its own fields (not in an embedded message).
fn names(kind: &EntryKind, account: &AccountId) -> bool {
    match kind {
        EntryKind::Genesis { ledger } => ledger == account,
        EntryKind::Mint { to, .. } => to == account,
        EntryKind::Transfer { from, to, .. } => from == account || to == account,
        EntryKind::Escrow { buyer, .. } | EntryKind::Refund { buyer, .. } => buyer == account,
        EntryKind::Commit { worker, .. } | EntryKind::Release { worker, .. } => worker == account,
        EntryKind::Reward { verifier, .. } => verifier == account,
        EntryKind::Stake { account: a, .. }
        | EntryKind::Unstake { account: a, .. }
        | EntryKind::Reputation { account: a, .. } => a == account,
        EntryKind::Slash { account: a, to, .. } | EntryKind::Rotate { from: a, to, .. } => {
            a == account || to == account
        }
        EntryKind::PoolRound { .. } => false,
    }
}

fn line(d: &Decoded, account: &AccountId, change: [i64; 4], task: Option<TaskId>) -> StatementLine {
    let body = &d.entry.body;
    let (cause, evidence) = cause(&body.kind, account);
    StatementLine {
        seq: body.seq,
        hash: d.hash,
        kind: body.kind.name(),
        key: body.key.as_str().to_owned(),
        task,
        balance: change[0],
        stake: change[1],
        escrow: change[2],
        reputation: change[3],
        cause,
        evidence,
    }
}

/// A sentence saying why the entry concerns the account, and the evidence it names.
fn cause(kind: &EntryKind, account: &AccountId) -> (String, Option<Hash>) {
    let short = |a: &AccountId| a.to_string()[..12].to_owned();
    match kind {
        EntryKind::Genesis { .. } => ("this ledger's operator key".into(), None),
        EntryKind::Mint { amount, .. } => {
            (format!("{} credits minted by the operator", amount.0), None)
        }
        EntryKind::Transfer { from, to, amount } if from == account => (
            format!("{} credits transferred to {}", amount.0, short(to)),
            None,
        ),
        EntryKind::Transfer { from, amount, .. } => (
            format!("{} credits transferred from {}", amount.0, short(from)),
            None,
        ),
        EntryKind::Escrow { amount, .. } => {
            (format!("{} credits locked for the task", amount.0), None)
        }
        EntryKind::Commit { commitment, .. } => (
            "committed to a result (before any challenge was known)".into(),
            commitment.id().ok(),
        ),
        EntryKind::Release {
            worker,
            amount,
            commitment,
            ..
        } if worker == account => (
            format!(
                "paid {} credits for a result that passed its audit",
                amount.0
            ),
            commitment.as_ref().and_then(|c| c.id().ok()),
        ),
        EntryKind::Release {
            worker,
            amount,
            commitment,
            ..
        } => (
            format!(
                "{} credits paid from escrow to worker {}",
                amount.0,
                short(worker)
            ),
            commitment.as_ref().and_then(|c| c.id().ok()),
        ),
        EntryKind::Refund { amount, .. } => {
            (format!("{} credits returned from escrow", amount.0), None)
        }
        EntryKind::Reward {
            verifier,
            amount,
            verdict,
            ..
        } if verifier == account => (
            format!("fee of {} credits for a verification", amount.0),
            verdict.as_ref().and_then(|v| v.id().ok()),
        ),
        EntryKind::Reward {
            verifier,
            amount,
            verdict,
            ..
        } => (
            format!(
                "{} credits paid from escrow to verifier {}",
                amount.0,
                short(verifier)
            ),
            verdict.as_ref().and_then(|v| v.id().ok()),
        ),
        EntryKind::Stake { amount, .. } => (format!("{} credits staked", amount.0), None),
        EntryKind::Unstake { amount, .. } => (format!("{} credits unstaked", amount.0), None),
        EntryKind::Slash {
            account: a,
            amount,
            reason,
            evidence,
            to,
            ..
        } if a == account => (
            format!(
                "slashed {} credits (paid to {}): {reason}",
                amount.0,
                short(to)
            ),
            Some(*evidence),
        ),
        EntryKind::Slash {
            account: a,
            amount,
            reason,
            evidence,
            ..
        } => (
            format!(
                "received {} credits slashed from {}: {reason}",
                amount.0,
                short(a)
            ),
            Some(*evidence),
        ),
        EntryKind::PoolRound { round, global, .. } => (
            format!("round {round} of the pooled task merged (global state {global})"),
            None,
        ),
        EntryKind::Reputation { delta, .. } => (format!("reputation {delta:+}"), None),
        EntryKind::Rotate {
            from, to, rotation, ..
        } if from == account => (
            format!("this key was rotated to {to}: balance, stake and reputation moved there"),
            rotation.id().ok(),
        ),
        EntryKind::Rotate { from, rotation, .. } => (
            format!("took over the balance, stake and reputation of key {from}"),
            rotation.id().ok(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntryBody, IdempotencyKey};
    use market_protocol::{Credits, Identity, Version};

    /// An export of `kinds` after a genesis, signed by `op`.
    fn export(op: &Identity, kinds: Vec<EntryKind>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = Hash::default();
        let all = std::iter::once(EntryKind::Genesis {
            ledger: op.account(),
        })
        .chain(kinds);
        for (seq, kind) in all.enumerate() {
            let body = EntryBody {
                version: Version::CURRENT,
                seq: seq as u64,
                prev,
                key: IdempotencyKey::new(format!("k-{seq}")).expect("key"),
                signer: op.account(),
                kind,
            };
            let sealed = crate::entry::Entry::sign(body, op).expect("sign");
            prev = sealed.hash;
            out.extend_from_slice(&sealed.line);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn lines_say_what_moved_and_sum_to_the_replayed_state() {
        let op = Identity::from_test_label("operator");
        let buyer = Identity::from_test_label("buyer").account();
        let worker = Identity::from_test_label("worker").account();
        let verifier = Identity::from_test_label("verifier").account();
        let task = TaskId(Hash::of(b"task"));
        let bytes = export(
            &op,
            vec![
                EntryKind::Mint {
                    to: buyer,
                    amount: Credits(100),
                },
                EntryKind::Mint {
                    to: worker,
                    amount: Credits(50),
                },
                EntryKind::Stake {
                    account: worker,
                    amount: Credits(40),
                },
                EntryKind::Escrow {
                    task_id: task,
                    buyer,
                    amount: Credits(60),
                    spec: None,
                },
                EntryKind::Release {
                    task_id: task,
                    worker,
                    amount: Credits(30),
                    commitment: None,
                },
                EntryKind::Reward {
                    task_id: task,
                    verifier,
                    amount: Credits(5),
                    verdict: None,
                },
                EntryKind::Slash {
                    account: worker,
                    amount: Credits(15),
                    evidence: Hash::of(b"verdict"),
                    reason: "result failed its audit".into(),
                    to: verifier,
                    verdict: None,
                },
                EntryKind::Reputation {
                    account: worker,
                    delta: -5,
                },
                EntryKind::Transfer {
                    from: buyer,
                    to: verifier,
                    amount: Credits(7),
                },
            ],
        );
        let s = |a| statement(&bytes[..], Path::new("t"), a, None).expect("verified");

        let w = s(worker);
        let kinds: Vec<_> = w.lines.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["mint", "stake", "release", "slash", "reputation"]);
        assert_eq!(w.lines[1].balance, -40);
        assert_eq!(w.lines[1].stake, 40);
        assert_eq!(w.lines[3].stake, -15);
        assert_eq!(w.lines[3].evidence, Some(Hash::of(b"verdict")));
        assert!(w.lines[3].cause.contains("result failed its audit"));
        assert_eq!(w.lines[4].reputation, -5);
        assert_eq!((w.balance, w.stake, w.reputation), (40, 25, -5));
        assert_eq!(w.balance_change(), 40);
        assert_eq!(w.totals().earned, 30);
        assert_eq!(w.totals().slashed, 15);

        // The buyer sees its escrow filled and drained by payments that do not name it.
        let b = s(buyer);
        let kinds: Vec<_> = b.lines.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["mint", "escrow", "release", "reward", "transfer"]);
        assert_eq!((b.lines[1].balance, b.lines[1].escrow), (-60, 60));
        assert_eq!((b.lines[2].balance, b.lines[2].escrow), (0, -30));
        assert_eq!((b.balance, b.escrow), (33, 25));
        assert_eq!(b.balance_change(), 33);
        assert_eq!(b.lines.iter().map(|l| l.escrow).sum::<i64>(), 25);

        let v = s(verifier);
        assert_eq!(v.balance_change(), 27);
        assert_eq!(v.totals().earned, 5);
        assert_eq!(v.totals().compensated, 15);
        assert!(v.lines[1].cause.contains("received 15 credits slashed"));

        // The operator is named by genesis only; an unknown account has no lines.
        assert_eq!(s(op.account()).lines.len(), 1);
        let nobody = s(Identity::from_test_label("nobody").account());
        assert!(nobody.lines.is_empty());
        assert_eq!(nobody.balance, 0);
    }

    #[test]
    fn a_tampered_export_gives_no_statement() {
        let op = Identity::from_test_label("operator");
        let worker = Identity::from_test_label("worker").account();
        let bytes = export(
            &op,
            vec![EntryKind::Mint {
                to: worker,
                amount: Credits(50),
            }],
        );
        let text = String::from_utf8(bytes).expect("utf-8");
        let forged = text.replace("\"amount\":50", "\"amount\":500");
        assert_ne!(forged, text);
        let err = statement(forged.as_bytes(), Path::new("t"), worker, None).unwrap_err();
        assert!(err.to_string().contains("seq 1"), "{err}");
    }
}
