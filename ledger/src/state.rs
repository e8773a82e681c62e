//! Derived state (balances, escrows, stakes, reputation, supply) and the rules that move it.
//!
//! The same function, `plan`, decides every operation when it is appended and again when a
//! verifier replays the chain, so "the stored state is the replay of the entries" is checked
//! against the very rules that produced it. Everything is a `BTreeMap`, so iteration order is
//! the key order on every machine. Zero balances, stakes and scores are not stored: two states
//! are equal exactly when they hold the same non-zero values.

use std::collections::BTreeMap;

use market_protocol::canonical::MAX_SAFE_INTEGER;
use market_protocol::{AccountId, Credits, TaskId};
use serde::Serialize;

use crate::entry::{EntryKind, MAX_REASON_BYTES};

/// A task's locked credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Escrow {
    /// Whose credits they are (refunds go back here).
    pub buyer: AccountId,
    /// How many were locked.
    pub amount: Credits,
    /// How many are still locked; the escrow is settled at zero.
    pub remaining: Credits,
}

/// Why an operation is refused. Nothing is written when it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Amounts must be positive.
    #[error("amount must be greater than zero")]
    ZeroAmount,
    /// Amounts must be safe JSON integers.
    #[error("amount {0} is larger than 2^53 - 1")]
    AmountTooLarge(Credits),
    /// The account's balance is too small.
    #[error("overdraft: {account} has {balance} credits, {needed} needed")]
    Overdraft {
        /// Whose balance.
        account: AccountId,
        /// What it holds.
        balance: Credits,
        /// What the operation takes.
        needed: Credits,
    },
    /// The account's stake is too small.
    #[error("stake too small: {account} has {staked} staked, {needed} needed")]
    StakeShort {
        /// Whose stake.
        account: AccountId,
        /// What is staked.
        staked: Credits,
        /// What the operation takes.
        needed: Credits,
    },
    /// The escrow holds less than the operation takes.
    #[error("escrow of task {task_id} has {remaining} credits left, {needed} needed")]
    EscrowShort {
        /// The task.
        task_id: TaskId,
        /// What is left.
        remaining: Credits,
        /// What the operation takes.
        needed: Credits,
    },
    /// No escrow for this task (or, for a commitment, no open one).
    #[error("no open escrow for task {0}")]
    NoEscrow(TaskId),
    /// The task already has (or had) an escrow.
    #[error("task {0} already has an escrow")]
    EscrowExists(TaskId),
    /// A refund names someone else than the escrow's buyer.
    #[error("escrow of task {task_id} belongs to {buyer}, not {claimed}")]
    WrongBuyer {
        /// The task.
        task_id: TaskId,
        /// The escrow's buyer.
        buyer: AccountId,
        /// Who the refund named.
        claimed: AccountId,
    },
    /// A transfer to the paying account, or a rotation to the same key.
    #[error("{0} is on both sides: a transfer or rotation needs two accounts")]
    SameAccount(AccountId),
    /// The total supply would exceed 2^53 - 1.
    #[error("minting {amount} would take the supply of {supply} past 2^53 - 1")]
    SupplyOverflow {
        /// Current supply.
        supply: Credits,
        /// Requested mint.
        amount: Credits,
    },
    /// A reputation change of zero, or one that leaves ±(2^53 - 1).
    #[error("reputation of {account} is {score}; delta {delta} is zero or out of range")]
    Reputation {
        /// Whose.
        account: AccountId,
        /// Current score.
        score: i64,
        /// Requested delta.
        delta: i64,
    },
    /// A slash reason longer than the limit.
    #[error("slash reason is {0} bytes, over the limit of {MAX_REASON_BYTES}")]
    ReasonTooLong(usize),
    /// Genesis is written once, by the ledger itself, at sequence 0.
    #[error("a genesis entry is only valid at sequence 0")]
    MisplacedGenesis,
    /// The account moved to a new key (`rotate`) and can no longer act.
    #[error("account {account} was rotated to {to} and can no longer act")]
    Rotated {
        /// The old key.
        account: AccountId,
        /// The key it moved to.
        to: AccountId,
    },
    /// A rotation to a key that already holds credits, stake, reputation or an open escrow.
    #[error("account {0} already holds credits, stake, reputation or an open escrow: a key can only be rotated to an empty account")]
    RotationTarget(AccountId),
    /// A rotation of an account that still has an open escrow as a buyer (its refunds would
    /// go to a key that can no longer act).
    #[error("account {account} still has credits in escrow for task {task_id}: wait for it to settle, or cancel it, before rotating")]
    OpenEscrow {
        /// The account.
        account: AccountId,
        /// One of its open escrows.
        task_id: TaskId,
    },
    /// A pool round names no slot, or more than a pool has.
    #[error("a pool round names {0} slots; it must name 1 to {MAX_POOL_SLOTS}")]
    PoolSlots(usize),
}

/// Most slots a `pool_round` entry names (a pool's most slots, `spec/COMPUTE.md` section 10).
pub const MAX_POOL_SLOTS: usize = 64;

/// Read access to derived state, implemented by [`State`] and by a state with pending changes.
pub(crate) trait StateRead {
    fn balance(&self, account: &AccountId) -> Credits;
    fn stake(&self, account: &AccountId) -> Credits;
    fn reputation(&self, account: &AccountId) -> i64;
    fn escrow(&self, task_id: &TaskId) -> Option<Escrow>;
    fn supply(&self) -> Credits;
    /// The key `account` was rotated to, if it was.
    fn rotated_to(&self, account: &AccountId) -> Option<AccountId>;
    /// An escrow with credits left whose buyer is `account` (rotations are rare: a scan).
    fn open_escrow_of(&self, account: &AccountId) -> Option<TaskId>;
    /// The key `account`'s credits, stake and reputation live under now: itself, or the key
    /// it was rotated to, following rotations in order. A rotation's target never acted
    /// before (it holds nothing and is not rotated), so chains cannot loop; the bound only
    /// guards against a bug.
    fn current(&self, account: &AccountId) -> AccountId {
        let mut key = *account;
        for _ in 0..MAX_ROTATION_CHAIN {
            match self.rotated_to(&key) {
                Some(next) => key = next,
                None => break,
            }
        }
        key
    }
}

/// The longest chain of rotations followed.
const MAX_ROTATION_CHAIN: usize = 1 << 16;

/// The derived state of a ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub(crate) balances: BTreeMap<AccountId, Credits>,
    pub(crate) stakes: BTreeMap<AccountId, Credits>,
    pub(crate) reputation: BTreeMap<AccountId, i64>,
    pub(crate) escrows: BTreeMap<TaskId, Escrow>,
    pub(crate) supply: Credits,
    /// Old keys and the keys they were rotated to.
    pub(crate) rotated: BTreeMap<AccountId, AccountId>,
}

impl State {
    /// The key `account` was rotated to, if it was (it can then no longer act).
    pub fn rotated_to(&self, account: &AccountId) -> Option<AccountId> {
        self.rotated.get(account).copied()
    }

    /// The key `account` acts under now: itself, or the key it was rotated to (following
    /// rotations in order): where payments to it and slashes of it land.
    pub fn current_key(&self, account: &AccountId) -> AccountId {
        StateRead::current(self, account)
    }

    /// Every rotation so far, old key to new key.
    pub fn rotations(&self) -> &BTreeMap<AccountId, AccountId> {
        &self.rotated
    }

    /// An account's spendable credits.
    pub fn balance(&self, account: &AccountId) -> Credits {
        self.balances.get(account).copied().unwrap_or_default()
    }

    /// An account's staked credits.
    pub fn stake(&self, account: &AccountId) -> Credits {
        self.stakes.get(account).copied().unwrap_or_default()
    }

    /// An account's reputation score.
    pub fn reputation(&self, account: &AccountId) -> i64 {
        self.reputation.get(account).copied().unwrap_or_default()
    }

    /// A task's escrow, open or settled.
    pub fn escrow(&self, task_id: &TaskId) -> Option<Escrow> {
        self.escrows.get(task_id).copied()
    }

    /// Escrows with credits still locked, in task id order.
    pub fn open_escrows(&self) -> impl Iterator<Item = (&TaskId, &Escrow)> {
        self.escrows
            .iter()
            .filter(|(_, e)| e.remaining > Credits::ZERO)
    }

    /// All non-zero balances, in account order.
    pub fn balances(&self) -> &BTreeMap<AccountId, Credits> {
        &self.balances
    }

    /// All non-zero stakes, in account order.
    pub fn stakes(&self) -> &BTreeMap<AccountId, Credits> {
        &self.stakes
    }

    /// All non-zero reputation scores, in account order.
    pub fn reputations(&self) -> &BTreeMap<AccountId, i64> {
        &self.reputation
    }

    /// Every escrow ever opened, in task id order.
    pub fn escrows(&self) -> &BTreeMap<TaskId, Escrow> {
        &self.escrows
    }

    /// All credits ever minted; never burned.
    pub fn supply(&self) -> Credits {
        self.supply
    }

    /// Checks that balances, stakes and open escrows add up to the supply exactly, so no credit
    /// was lost or invented. Returns the sum it found on failure.
    pub fn check_conservation(&self) -> Result<(), u128> {
        let sum: u128 = self
            .balances
            .values()
            .chain(self.stakes.values())
            .map(|c| u128::from(c.0))
            .chain(self.escrows.values().map(|e| u128::from(e.remaining.0)))
            .sum();
        if sum == u128::from(self.supply.0) {
            Ok(())
        } else {
            Err(sum)
        }
    }

    /// Applies planned changes.
    pub(crate) fn apply(&mut self, delta: Delta) {
        fn merge<K: Ord, V: PartialEq + Default>(
            map: &mut BTreeMap<K, V>,
            changes: BTreeMap<K, V>,
        ) {
            for (k, v) in changes {
                if v == V::default() {
                    map.remove(&k);
                } else {
                    map.insert(k, v);
                }
            }
        }
        merge(&mut self.balances, delta.balances);
        merge(&mut self.stakes, delta.stakes);
        merge(&mut self.reputation, delta.reputation);
        self.escrows.extend(delta.escrows);
        self.rotated.extend(delta.rotated);
        if let Some(supply) = delta.supply {
            self.supply = supply;
        }
    }

    /// The first difference from `other`, described for people, or `None` when equal.
    pub fn first_difference(&self, other: &State) -> Option<String> {
        fn diff<K: Ord + std::fmt::Display, V: PartialEq + std::fmt::Debug>(
            what: &str,
            a: &BTreeMap<K, V>,
            b: &BTreeMap<K, V>,
        ) -> Option<String> {
            let keys = a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>();
            keys.into_iter().find_map(|k| {
                let (x, y) = (a.get(k), b.get(k));
                (x != y).then(|| format!("{what} of {k}: {x:?} vs {y:?}"))
            })
        }
        diff("balance", &self.balances, &other.balances)
            .or_else(|| diff("stake", &self.stakes, &other.stakes))
            .or_else(|| diff("reputation", &self.reputation, &other.reputation))
            .or_else(|| diff("escrow", &self.escrows, &other.escrows))
            .or_else(|| diff("rotation", &self.rotated, &other.rotated))
            .or_else(|| {
                (self.supply != other.supply)
                    .then(|| format!("supply: {} vs {}", self.supply, other.supply))
            })
    }
}

impl StateRead for State {
    fn balance(&self, account: &AccountId) -> Credits {
        State::balance(self, account)
    }
    fn stake(&self, account: &AccountId) -> Credits {
        State::stake(self, account)
    }
    fn reputation(&self, account: &AccountId) -> i64 {
        State::reputation(self, account)
    }
    fn escrow(&self, task_id: &TaskId) -> Option<Escrow> {
        State::escrow(self, task_id)
    }
    fn supply(&self) -> Credits {
        self.supply
    }
    fn rotated_to(&self, account: &AccountId) -> Option<AccountId> {
        State::rotated_to(self, account)
    }
    fn open_escrow_of(&self, account: &AccountId) -> Option<TaskId> {
        self.escrows
            .iter()
            .find(|(_, e)| e.buyer == *account && e.remaining > Credits::ZERO)
            .map(|(t, _)| *t)
    }
}

/// New values for the keys an operation (or a batch of them) touches. A zero balance, stake or
/// score means "remove".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub balances: BTreeMap<AccountId, Credits>,
    pub stakes: BTreeMap<AccountId, Credits>,
    pub reputation: BTreeMap<AccountId, i64>,
    pub escrows: BTreeMap<TaskId, Escrow>,
    pub supply: Option<Credits>,
    pub rotated: BTreeMap<AccountId, AccountId>,
}

impl Delta {
    /// Adds later changes on top of these (group commit).
    #[cfg(feature = "store")]
    pub fn merge(&mut self, later: Delta) {
        self.balances.extend(later.balances);
        self.stakes.extend(later.stakes);
        self.reputation.extend(later.reputation);
        self.escrows.extend(later.escrows);
        self.rotated.extend(later.rotated);
        if later.supply.is_some() {
            self.supply = later.supply;
        }
    }
}

/// A state seen through pending changes: what the committer plans the next entry against.
pub(crate) struct Layered<'a, R: StateRead + ?Sized> {
    pub base: &'a R,
    pub delta: &'a Delta,
}

impl<R: StateRead + ?Sized> StateRead for Layered<'_, R> {
    fn balance(&self, account: &AccountId) -> Credits {
        match self.delta.balances.get(account) {
            Some(v) => *v,
            None => self.base.balance(account),
        }
    }
    fn stake(&self, account: &AccountId) -> Credits {
        match self.delta.stakes.get(account) {
            Some(v) => *v,
            None => self.base.stake(account),
        }
    }
    fn reputation(&self, account: &AccountId) -> i64 {
        match self.delta.reputation.get(account) {
            Some(v) => *v,
            None => self.base.reputation(account),
        }
    }
    fn escrow(&self, task_id: &TaskId) -> Option<Escrow> {
        match self.delta.escrows.get(task_id) {
            Some(v) => Some(*v),
            None => self.base.escrow(task_id),
        }
    }
    fn supply(&self) -> Credits {
        self.delta.supply.unwrap_or_else(|| self.base.supply())
    }
    fn rotated_to(&self, account: &AccountId) -> Option<AccountId> {
        self.delta
            .rotated
            .get(account)
            .copied()
            .or_else(|| self.base.rotated_to(account))
    }
    fn open_escrow_of(&self, account: &AccountId) -> Option<TaskId> {
        let open = |e: &Escrow| e.buyer == *account && e.remaining > Credits::ZERO;
        if let Some((t, _)) = self.delta.escrows.iter().find(|(_, e)| open(e)) {
            return Some(*t);
        }
        // The base's open escrow counts unless the pending changes closed it; a base escrow
        // the delta leaves open was found above.
        self.base
            .open_escrow_of(account)
            .filter(|t| self.delta.escrows.get(t).is_none_or(open))
    }
}

/// Decides an operation against `state`: the changes it makes, or why it is refused. The
/// genesis entry changes nothing and is refused here; the chain checks place it.
pub(crate) fn plan<R: StateRead + ?Sized>(kind: &EntryKind, state: &R) -> Result<Delta, OpError> {
    let mut tx = Tx {
        base: state,
        delta: Delta::default(),
    };
    // A rotated key can no longer act. What others do to it (pay it, slash it, change its
    // reputation) follows the account to its current key, below, so no obligation is dodged
    // by rotating and no payment is stuck.
    for account in voluntary(kind) {
        if let Some(to) = state.rotated_to(account) {
            return Err(OpError::Rotated {
                account: *account,
                to,
            });
        }
    }
    match kind {
        EntryKind::Genesis { .. } => return Err(OpError::MisplacedGenesis),
        EntryKind::Rotate { from, to, .. } => {
            if from == to {
                return Err(OpError::SameAccount(*from));
            }
            let view = tx.view();
            if view.balance(to) != Credits::ZERO
                || view.stake(to) != Credits::ZERO
                || view.reputation(to) != 0
                || view.open_escrow_of(to).is_some()
            {
                return Err(OpError::RotationTarget(*to));
            }
            if let Some(task_id) = view.open_escrow_of(from) {
                return Err(OpError::OpenEscrow {
                    account: *from,
                    task_id,
                });
            }
            let (balance, stake, reputation) =
                (view.balance(from), view.stake(from), view.reputation(from));
            tx.delta.balances.insert(*from, Credits::ZERO);
            tx.delta.balances.insert(*to, balance);
            tx.delta.stakes.insert(*from, Credits::ZERO);
            tx.delta.stakes.insert(*to, stake);
            tx.delta.reputation.insert(*from, 0);
            tx.delta.reputation.insert(*to, reputation);
            tx.delta.rotated.insert(*from, *to);
        }
        EntryKind::Mint { to, amount } => {
            let amount = positive(*amount)?;
            let supply = tx.view().supply();
            let new_supply = supply
                .checked_add(amount)
                .filter(|s| s.0 <= MAX_SAFE_INTEGER)
                .ok_or(OpError::SupplyOverflow { supply, amount })?;
            tx.delta.supply = Some(new_supply);
            tx.credit(to, amount);
        }
        EntryKind::Transfer { from, to, amount } => {
            let amount = positive(*amount)?;
            if from == to {
                return Err(OpError::SameAccount(*from));
            }
            tx.debit(from, amount)?;
            tx.credit(to, amount);
        }
        EntryKind::Escrow {
            task_id,
            buyer,
            amount,
            ..
        } => {
            let amount = positive(*amount)?;
            if tx.view().escrow(task_id).is_some() {
                return Err(OpError::EscrowExists(*task_id));
            }
            tx.debit(buyer, amount)?;
            tx.delta.escrows.insert(
                *task_id,
                Escrow {
                    buyer: *buyer,
                    amount,
                    remaining: amount,
                },
            );
        }
        EntryKind::Commit { task_id, .. } => {
            // No work is recorded for a task whose buyer has not paid, or that has settled.
            match tx.view().escrow(task_id) {
                Some(e) if e.remaining > Credits::ZERO => {}
                _ => return Err(OpError::NoEscrow(*task_id)),
            }
        }
        EntryKind::Release {
            task_id,
            worker: to,
            amount,
            ..
        }
        | EntryKind::Reward {
            task_id,
            verifier: to,
            amount,
            ..
        } => {
            let amount = positive(*amount)?;
            tx.take_escrow(task_id, amount)?;
            tx.credit(to, amount);
        }
        EntryKind::Refund {
            task_id,
            buyer,
            amount,
        } => {
            let amount = positive(*amount)?;
            let escrow = tx.take_escrow(task_id, amount)?;
            if escrow.buyer != *buyer {
                return Err(OpError::WrongBuyer {
                    task_id: *task_id,
                    buyer: escrow.buyer,
                    claimed: *buyer,
                });
            }
            tx.credit(buyer, amount);
        }
        EntryKind::Stake { account, amount } => {
            let amount = positive(*amount)?;
            tx.debit(account, amount)?;
            let staked = tx.view().stake(account);
            tx.delta.stakes.insert(*account, add(staked, amount));
        }
        EntryKind::Unstake { account, amount } => {
            let amount = positive(*amount)?;
            tx.unstake(account, amount)?;
            tx.credit(account, amount);
        }
        EntryKind::Slash {
            account,
            amount,
            to,
            reason,
            ..
        } => {
            let amount = positive(*amount)?;
            if reason.len() > MAX_REASON_BYTES {
                return Err(OpError::ReasonTooLong(reason.len()));
            }
            tx.unstake(account, amount)?;
            tx.credit(to, amount);
        }
        EntryKind::PoolRound { task_id, slots, .. } => {
            // A round of a task its buyer paid for (the escrow may be spent down to zero by
            // the round's own payments), with at most as many slots as a pool has.
            if tx.view().escrow(task_id).is_none() {
                return Err(OpError::NoEscrow(*task_id));
            }
            if slots.is_empty() || slots.len() > MAX_POOL_SLOTS {
                return Err(OpError::PoolSlots(slots.len()));
            }
        }
        EntryKind::Reputation { account, delta } => {
            let account = &tx.view().current(account);
            let score = tx.view().reputation(account);
            let limit = MAX_SAFE_INTEGER as i64;
            let new = score
                .checked_add(*delta)
                .filter(|s| *delta != 0 && (-limit..=limit).contains(s))
                .ok_or(OpError::Reputation {
                    account: *account,
                    score,
                    delta: *delta,
                })?;
            tx.delta.reputation.insert(*account, new);
        }
    }
    Ok(tx.delta)
}

fn positive(amount: Credits) -> Result<Credits, OpError> {
    if amount == Credits::ZERO {
        Err(OpError::ZeroAmount)
    } else if amount.0 > MAX_SAFE_INTEGER {
        Err(OpError::AmountTooLarge(amount))
    } else {
        Ok(amount)
    }
}

/// `a + b` for amounts bounded by the supply (at most 2^53 - 1 each), which cannot overflow.
fn add(a: Credits, b: Credits) -> Credits {
    Credits(a.0.saturating_add(b.0))
}

/// One operation's reads and writes: reads see the operation's own earlier writes.
/// The accounts that act of their own accord in an entry: a rotated key may not. (Entries
/// that pay, slash or score an account are the operator's doing and follow rotations.)
fn voluntary(kind: &EntryKind) -> Vec<&AccountId> {
    match kind {
        EntryKind::Transfer { from, .. } => vec![from],
        EntryKind::Escrow { buyer, .. } => vec![buyer],
        EntryKind::Commit { worker, .. } => vec![worker],
        EntryKind::Stake { account, .. } | EntryKind::Unstake { account, .. } => vec![account],
        EntryKind::Rotate { from, to, .. } => vec![from, to],
        _ => Vec::new(),
    }
}

struct Tx<'a, R: StateRead + ?Sized> {
    base: &'a R,
    delta: Delta,
}

impl<R: StateRead + ?Sized> Tx<'_, R> {
    fn view(&self) -> Layered<'_, R> {
        Layered {
            base: self.base,
            delta: &self.delta,
        }
    }

    fn credit(&mut self, account: &AccountId, amount: Credits) {
        let account = self.view().current(account);
        let balance = self.view().balance(&account);
        self.delta.balances.insert(account, add(balance, amount));
    }

    fn debit(&mut self, account: &AccountId, amount: Credits) -> Result<(), OpError> {
        let balance = self.view().balance(account);
        let left = balance.checked_sub(amount).ok_or(OpError::Overdraft {
            account: *account,
            balance,
            needed: amount,
        })?;
        self.delta.balances.insert(*account, left);
        Ok(())
    }

    fn unstake(&mut self, account: &AccountId, amount: Credits) -> Result<(), OpError> {
        let account = self.view().current(account);
        let staked = self.view().stake(&account);
        let left = staked.checked_sub(amount).ok_or(OpError::StakeShort {
            account,
            staked,
            needed: amount,
        })?;
        self.delta.stakes.insert(account, left);
        Ok(())
    }

    fn take_escrow(&mut self, task_id: &TaskId, amount: Credits) -> Result<Escrow, OpError> {
        let mut escrow = self
            .view()
            .escrow(task_id)
            .ok_or(OpError::NoEscrow(*task_id))?;
        escrow.remaining = escrow
            .remaining
            .checked_sub(amount)
            .ok_or(OpError::EscrowShort {
                task_id: *task_id,
                remaining: escrow.remaining,
                needed: amount,
            })?;
        self.delta.escrows.insert(*task_id, escrow);
        Ok(escrow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::{Hash, Identity};

    fn acct(label: &str) -> AccountId {
        Identity::from_test_label(label).account()
    }

    fn run(state: &mut State, kind: &EntryKind) -> Result<(), OpError> {
        let delta = plan(kind, &*state)?;
        state.apply(delta);
        Ok(())
    }

    #[test]
    fn credits_move_and_are_conserved() {
        let (a, b) = (acct("a"), acct("b"));
        let task = TaskId(Hash::of(b"task"));
        let mut s = State::default();
        run(
            &mut s,
            &EntryKind::Mint {
                to: a,
                amount: Credits(100),
            },
        )
        .expect("mint");
        run(
            &mut s,
            &EntryKind::Transfer {
                from: a,
                to: b,
                amount: Credits(30),
            },
        )
        .expect("xfer");
        run(
            &mut s,
            &EntryKind::Escrow {
                task_id: task,
                buyer: a,
                amount: Credits(50),
                spec: None,
            },
        )
        .expect("escrow");
        run(
            &mut s,
            &EntryKind::Release {
                task_id: task,
                worker: b,
                amount: Credits(20),
                commitment: None,
            },
        )
        .expect("release");
        run(
            &mut s,
            &EntryKind::Refund {
                task_id: task,
                buyer: a,
                amount: Credits(30),
            },
        )
        .expect("refund");
        run(
            &mut s,
            &EntryKind::Stake {
                account: b,
                amount: Credits(40),
            },
        )
        .expect("stake");
        run(
            &mut s,
            &EntryKind::Slash {
                account: b,
                amount: Credits(15),
                to: a,
                reason: "faked segment 3".into(),
                evidence: Hash::of(b"verdict"),
                verdict: None,
            },
        )
        .expect("slash");
        assert_eq!(s.balance(&a), Credits(65));
        assert_eq!(s.balance(&b), Credits(10));
        assert_eq!(s.stake(&b), Credits(25));
        assert_eq!(s.escrow(&task).map(|e| e.remaining), Some(Credits::ZERO));
        assert_eq!(s.open_escrows().count(), 0);
        assert_eq!(s.supply(), Credits(100));
        s.check_conservation().expect("conserved");
    }

    #[test]
    fn refusals_change_nothing() {
        let (a, b) = (acct("a"), acct("b"));
        let task = TaskId(Hash::of(b"task"));
        let mut s = State::default();
        run(
            &mut s,
            &EntryKind::Mint {
                to: a,
                amount: Credits(10),
            },
        )
        .expect("mint");
        let before = s.clone();
        let refused = [
            (
                EntryKind::Transfer {
                    from: a,
                    to: b,
                    amount: Credits(11),
                },
                "overdraft",
            ),
            (
                EntryKind::Transfer {
                    from: a,
                    to: a,
                    amount: Credits(1),
                },
                "self",
            ),
            (
                EntryKind::Mint {
                    to: a,
                    amount: Credits::ZERO,
                },
                "zero",
            ),
            (
                EntryKind::Mint {
                    to: a,
                    amount: Credits(MAX_SAFE_INTEGER),
                },
                "supply",
            ),
            (
                EntryKind::Unstake {
                    account: a,
                    amount: Credits(1),
                },
                "stake",
            ),
            (
                EntryKind::Refund {
                    task_id: task,
                    buyer: a,
                    amount: Credits(1),
                },
                "no escrow",
            ),
            (
                EntryKind::Reputation {
                    account: a,
                    delta: 0,
                },
                "zero delta",
            ),
            (EntryKind::Genesis { ledger: a }, "genesis"),
        ];
        for (kind, why) in refused {
            assert!(run(&mut s, &kind).is_err(), "{why}");
            assert_eq!(s, before, "{why}");
        }
        assert_eq!(
            run(
                &mut s,
                &EntryKind::Transfer {
                    from: a,
                    to: b,
                    amount: Credits(11)
                }
            ),
            Err(OpError::Overdraft {
                account: a,
                balance: Credits(10),
                needed: Credits(11)
            })
        );
    }

    #[test]
    fn zero_values_are_not_stored() {
        let (a, b) = (acct("a"), acct("b"));
        let mut s = State::default();
        run(
            &mut s,
            &EntryKind::Mint {
                to: a,
                amount: Credits(5),
            },
        )
        .expect("mint");
        run(
            &mut s,
            &EntryKind::Transfer {
                from: a,
                to: b,
                amount: Credits(5),
            },
        )
        .expect("xfer");
        run(
            &mut s,
            &EntryKind::Reputation {
                account: a,
                delta: 3,
            },
        )
        .expect("rep");
        run(
            &mut s,
            &EntryKind::Reputation {
                account: a,
                delta: -3,
            },
        )
        .expect("rep");
        assert!(!s.balances().contains_key(&a));
        assert!(s.reputations().is_empty());
        let mut fresh = State::default();
        run(
            &mut fresh,
            &EntryKind::Mint {
                to: b,
                amount: Credits(5),
            },
        )
        .expect("mint");
        assert_eq!(s, fresh);
    }
}
