//! [`Ledger`]: open (and check) a ledger directory, append operations, read balances and
//! escrows, verify, export and sign heads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use market_protocol::{AccountId, Credits, Hash, Identity, Signed, TaskId, Version};

use crate::commit::{conflict, Writer};
use crate::entry::{Decoded, Entry, EntryBody, EntryKind, IdempotencyKey};
use crate::error::LedgerError;
use crate::head::{check_prefix, Head, LedgerHead, SignedHead};
use crate::state::{Delta, Escrow, OpError, State};
use crate::storage::{Store, WriteSet};
use crate::verify::{Broken, Checker, Fault, Raw, Summary};

/// How much of the chain [`Ledger::open`] checks before accepting appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCheck {
    /// Genesis, the last `n` entries (links, signatures, idempotency index) and the
    /// conservation of the stored state. Cheap enough for every start.
    Tail(u64),
    /// Everything [`Ledger::verify`] checks.
    Full,
}

/// Options for [`Ledger::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// What to check on open.
    pub check: OpenCheck,
    /// The most appends one group commit takes.
    pub max_batch: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            check: OpenCheck::Tail(10_000),
            max_batch: 4096,
        }
    }
}

/// A durable append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The entry.
    pub entry: Entry,
    /// Its hash.
    pub hash: Hash,
    /// False when the idempotency key had already recorded this same operation and the earlier
    /// entry is returned.
    pub fresh: bool,
}

impl Appended {
    /// The entry's sequence number.
    pub fn seq(&self) -> u64 {
        self.entry.body.seq
    }
}

/// The result of a full verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The last entry.
    pub head: Head,
    /// Entries checked (`head.seq + 1`).
    pub entries: u64,
    /// All credits minted.
    pub supply: Credits,
}

/// The in-memory copy of what is durable: derived state and head.
#[derive(Debug)]
pub(crate) struct View {
    pub state: State,
    pub head: Head,
}

/// What the ledger handle and its commit thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Store,
    pub ledger: AccountId,
    pub view: RwLock<View>,
    /// Held by each group commit and by verification, which must see entries and state agree.
    pub commit: Mutex<()>,
    /// Group commits (flushes) since open.
    pub flushes: AtomicU64,
    failed: Mutex<Option<String>>,
}

impl Shared {
    /// Why appends are refused, after a storage failure.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Refuses all further appends.
    pub fn fail(&self, reason: String) {
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    /// Publishes a durable batch.
    pub fn advance(&self, delta: Delta, head: Head) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        view.state.apply(delta);
        view.head = head;
    }

    /// The answer to a key already recorded at `seq`: that entry when the operation is the
    /// same, a conflict otherwise.
    pub fn repeat(
        &self,
        key: IdempotencyKey,
        seq: u64,
        kind: &EntryKind,
    ) -> Result<Appended, LedgerError> {
        let decoded = self.decoded(seq)?;
        if decoded.entry.body.kind != *kind {
            return Err(conflict(key, seq, &decoded.entry.body.kind, kind));
        }
        Ok(Appended {
            entry: decoded.entry,
            hash: decoded.hash,
            fresh: false,
        })
    }

    fn decoded(&self, seq: u64) -> Result<Decoded, LedgerError> {
        let broken = |fault| Broken {
            seq,
            line: None,
            fault,
        };
        let line = self.store.entry(seq)?.ok_or(broken(Fault::Missing))?;
        Entry::decode(&line).map_err(|e| broken(e.into()).into())
    }
}

/// A signed, hash-chained ledger in a directory.
///
/// `Ledger` is `Sync`: share it (for example in an `Arc`) and append from many threads; their
/// appends are committed in groups that share one flush.
#[derive(Debug)]
pub struct Ledger {
    shared: Arc<Shared>,
    // Declared after `shared` but dropped explicitly first: see `Drop`.
    writer: Option<Writer>,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Stop the commit thread (answering everything queued) before the database closes.
        drop(self.writer.take());
    }
}

impl Ledger {
    /// Opens the ledger at `path` for appending, creating it (with its genesis entry naming
    /// `operator`) when the path is missing or an empty directory. Refuses a directory that
    /// holds something else, a ledger of another operator, and a chain that fails the check
    /// chosen in `options`.
    pub fn open(
        path: &Path,
        operator: Identity,
        options: OpenOptions,
    ) -> Result<Self, LedgerError> {
        let (store, fresh) = Store::open(path, true)?;
        if fresh {
            create(&store, &operator)?;
            tracing::info!(path = %path.display(), ledger = %operator.account(), "created ledger");
        }
        let shared = Arc::new(load(store, options.check)?);
        if shared.ledger != operator.account() {
            return Err(LedgerError::WrongOperator {
                ledger: shared.ledger,
                given: operator.account(),
            });
        }
        let writer = Writer::start(shared.clone(), operator, options.max_batch)?;
        Ok(Self {
            shared,
            writer: Some(writer),
        })
    }

    /// Opens an existing ledger without an operator key, for reading; appends are refused.
    pub fn open_read_only(path: &Path, check: OpenCheck) -> Result<Self, LedgerError> {
        let (store, _) = Store::open(path, false)?;
        Ok(Self {
            shared: Arc::new(load(store, check)?),
            writer: None,
        })
    }

    /// Opens an existing ledger read-only without any check, to verify or export a ledger that
    /// may be broken. Trust nothing it says before [`Ledger::verify`] succeeds.
    pub fn inspect(path: &Path) -> Result<Self, LedgerError> {
        let (store, _) = Store::open(path, false)?;
        let genesis = store.entry(0)?;
        let ledger = match genesis.as_deref().map(Entry::decode) {
            Some(Ok(d)) => d.entry.body.signer,
            _ => {
                return Err(Broken {
                    seq: 0,
                    line: None,
                    fault: Fault::Genesis("unreadable"),
                }
                .into())
            }
        };
        let head = read_head(&store)?;
        let state = store.load_state()?;
        Ok(Self {
            shared: Arc::new(shared(store, ledger, state, head)),
            writer: None,
        })
    }

    /// The directory.
    pub fn path(&self) -> PathBuf {
        self.shared.store.path().to_owned()
    }

    /// The operator key that signs every entry (the genesis `ledger`).
    pub fn ledger_key(&self) -> AccountId {
        self.shared.ledger
    }

    /// Appends `kind` under `key` and returns once the entry is durable. The same key with the
    /// same operation returns the earlier entry (`fresh: false`); with another operation it is
    /// a [`LedgerError::KeyConflict`]. A refused operation writes nothing.
    pub fn append(&self, key: IdempotencyKey, kind: EntryKind) -> Result<Appended, LedgerError> {
        let writer = self.writer.as_ref().ok_or(LedgerError::ReadOnly)?;
        if matches!(kind, EntryKind::Genesis { .. }) {
            return Err(OpError::MisplacedGenesis.into());
        }
        // Checked on the caller's thread, so concurrent callers check signatures in parallel.
        kind.check_evidence(&self.shared.ledger)?;
        writer.submit(key, kind)
    }

    /// Mints `amount` to `to`.
    pub fn mint(
        &self,
        key: IdempotencyKey,
        to: AccountId,
        amount: Credits,
    ) -> Result<Appended, LedgerError> {
        self.append(key, EntryKind::Mint { to, amount })
    }

    /// Moves `amount` from `from` to `to`.
    pub fn transfer(
        &self,
        key: IdempotencyKey,
        from: AccountId,
        to: AccountId,
        amount: Credits,
    ) -> Result<Appended, LedgerError> {
        self.append(key, EntryKind::Transfer { from, to, amount })
    }

    /// Locks a task's price from its buyer, embedding the buyer's signed task.
    pub fn escrow(
        &self,
        key: IdempotencyKey,
        spec: Signed<market_protocol::TaskSpec>,
    ) -> Result<Appended, LedgerError> {
        self.append(key, EntryKind::escrow_of(spec)?)
    }

    /// Moves an account to a new key: both keys' signed messages (`rotation` by the old key,
    /// `acceptance` of it by the new one). Refused when the new key already holds anything or
    /// the old one still has credits in escrow; afterwards the old key can no longer act.
    pub fn rotate(
        &self,
        key: IdempotencyKey,
        rotation: Signed<market_protocol::KeyRotation>,
        acceptance: Signed<market_protocol::RotationAcceptance>,
    ) -> Result<Appended, LedgerError> {
        let (from, to) = (rotation.body.from, rotation.body.to);
        self.append(
            key,
            EntryKind::Rotate {
                acceptance,
                from,
                rotation,
                to,
            },
        )
    }

    /// The key `account` was rotated to, if it was: it can then no longer act.
    pub fn rotated_to(&self, account: &AccountId) -> Option<AccountId> {
        self.read(|v| v.state.rotated_to(account))
    }

    /// The key `account` acts under now ([`State::current_key`]).
    pub fn current_key(&self, account: &AccountId) -> AccountId {
        self.read(|v| v.state.current_key(account))
    }

    /// An account's spendable credits.
    pub fn balance(&self, account: &AccountId) -> Credits {
        self.read(|v| v.state.balance(account))
    }

    /// An account's staked credits.
    pub fn stake(&self, account: &AccountId) -> Credits {
        self.read(|v| v.state.stake(account))
    }

    /// An account's reputation score.
    pub fn reputation(&self, account: &AccountId) -> i64 {
        self.read(|v| v.state.reputation(account))
    }

    /// A task's escrow, open or settled.
    pub fn escrow_of(&self, task_id: &TaskId) -> Option<Escrow> {
        self.read(|v| v.state.escrow(task_id))
    }

    /// Escrows with credits still locked, in task id order.
    pub fn open_escrows(&self) -> Vec<(TaskId, Escrow)> {
        self.read(|v| v.state.open_escrows().map(|(t, e)| (*t, *e)).collect())
    }

    /// A copy of the whole derived state.
    pub fn state(&self) -> State {
        self.read(|v| v.state.clone())
    }

    /// How many group commits (each one flush) this handle has made: with concurrent callers,
    /// fewer than the appends.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// The last durable entry.
    pub fn head(&self) -> Head {
        self.read(|v| v.head)
    }

    /// Entry `seq`, if the chain has it.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, LedgerError> {
        if seq > self.head().seq {
            return Ok(None);
        }
        self.shared.decoded(seq).map(|d| Some(d.entry))
    }

    /// The entry recorded under idempotency key `key`, if any (a caller that lost what it
    /// appended, in a crash, finds it again by the key it used).
    pub fn entry_with_key(&self, key: &IdempotencyKey) -> Result<Option<Entry>, LedgerError> {
        match self.shared.store.idempotency(key)? {
            Some(seq) => self.entry(seq),
            None => Ok(None),
        }
    }

    /// The current head, signed by the operator.
    pub fn sign_head(&self, operator: &Identity) -> Result<SignedHead, LedgerError> {
        if operator.account() != self.shared.ledger {
            return Err(LedgerError::WrongOperator {
                ledger: self.shared.ledger,
                given: operator.account(),
            });
        }
        let head = self.head();
        let body = LedgerHead {
            version: Version::CURRENT,
            ledger: self.shared.ledger,
            seq: head.seq,
            hash: head.hash,
        };
        Ok(Signed::sign(body, operator)?)
    }

    /// Checks that an earlier signed head of this ledger is a prefix of the current chain.
    pub fn check_signed_head(&self, signed: &SignedHead) -> Result<(), LedgerError> {
        let mut lookup_error = None;
        let result = check_prefix(signed, self.shared.ledger, self.head(), |seq| {
            match self.shared.decoded(seq) {
                Ok(d) => Some(d.hash),
                Err(e) => {
                    lookup_error = Some(e);
                    None
                }
            }
        });
        match (result, lookup_error) {
            (Err(_), Some(e)) => Err(e),
            (r, _) => Ok(r?),
        }
    }

    /// Verifies the whole chain: every link, every signature (batched), every embedded
    /// participant message and the idempotency index, and that the stored derived state is the
    /// replay of the entries. Appends wait while it runs.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let _paused = self
            .shared
            .commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let report = verify_store(&self.shared.store)?;
        let (head, matches) = self.read(|v| (v.head, v.state.first_difference(&report.state)));
        if head != report.head {
            return Err(LedgerError::StateMismatch {
                head: report.head.seq,
                detail: format!("the open ledger's head is {}", head.seq),
            });
        }
        if let Some(detail) = matches {
            return Err(LedgerError::StateMismatch {
                head: head.seq,
                detail: format!("in memory vs replay: {detail}"),
            });
        }
        Ok(VerifyReport {
            head,
            entries: head.seq + 1,
            supply: report.state.supply(),
        })
    }

    /// Writes entries `from..=head` as JSON lines (the stored canonical bytes, one entry per
    /// line) and returns how many were written.
    pub fn export(&self, out: &mut impl Write, from: u64) -> Result<u64, LedgerError> {
        let io = |source| LedgerError::Io {
            path: PathBuf::from("<export>"),
            source,
        };
        let head = self.head().seq;
        let mut written = 0;
        for item in self.shared.store.entries(from) {
            let (seq, line) = item?;
            if seq > head {
                break;
            }
            out.write_all(&line).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
            written += 1;
        }
        out.flush().map_err(io)?;
        Ok(written)
    }

    fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        f(&self
            .shared
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }
}

fn shared(store: Store, ledger: AccountId, state: State, head: Head) -> Shared {
    Shared {
        store,
        ledger,
        view: RwLock::new(View { state, head }),
        commit: Mutex::new(()),
        flushes: AtomicU64::new(0),
        failed: Mutex::new(None),
    }
}

/// Writes the genesis entry and the format marker in one durable batch.
fn create(store: &Store, operator: &Identity) -> Result<(), LedgerError> {
    let body = EntryBody {
        version: Version::CURRENT,
        seq: 0,
        prev: Hash::default(),
        key: IdempotencyKey::genesis(),
        signer: operator.account(),
        kind: EntryKind::Genesis {
            ledger: operator.account(),
        },
    };
    let genesis = Entry::sign(body, operator)?;
    store.write(&WriteSet {
        init: true,
        entries: std::slice::from_ref(&genesis),
        delta: &Delta::default(),
    })?;
    store.flush()?;
    store.mark_durable(0, &genesis.hash)?;
    Ok(())
}

/// Checks the chain against the head the database recorded as durable (see the storage
/// module): a chain that verifies but is shorter than what was acknowledged lost entries.
fn check_mark(store: &Store, head: Head) -> Result<(), LedgerError> {
    let Some((recorded, hash)) = store.durable_mark() else {
        return Ok(());
    };
    let lost = |seq| Broken {
        seq,
        line: None,
        fault: Fault::Lost { recorded },
    };
    if recorded > head.seq {
        return Err(lost(head.seq + 1).into());
    }
    let line = store.entry(recorded)?.ok_or(lost(recorded))?;
    match Entry::decode(&line) {
        Ok(d) if d.hash == hash => Ok(()),
        _ => Err(lost(recorded).into()),
    }
}

/// The last stored entry's seq and hash.
fn read_head(store: &Store) -> Result<Head, LedgerError> {
    let (seq, line) = store.last_entry()?.ok_or(Broken {
        seq: 0,
        line: None,
        fault: Fault::Missing,
    })?;
    let decoded = Entry::decode(&line).map_err(|e| Broken {
        seq,
        line: None,
        fault: e.into(),
    })?;
    Ok(Head {
        seq,
        hash: decoded.hash,
    })
}

/// Checks an existing ledger as `check` asks and loads its state.
fn load(store: Store, check: OpenCheck) -> Result<Shared, LedgerError> {
    match check {
        OpenCheck::Full => {
            let summary = verify_store(&store)?;
            let state = summary.state;
            Ok(shared(store, summary.ledger, state, summary.head))
        }
        OpenCheck::Tail(n) => {
            let genesis = genesis(&store)?;
            let head = read_head(&store)?;
            let start = head.seq.saturating_sub(n.saturating_sub(1)).max(1);
            if start <= head.seq {
                let prev = if start == 1 {
                    genesis.hash
                } else {
                    let broken = |fault| Broken {
                        seq: start - 1,
                        line: None,
                        fault,
                    };
                    let line = store.entry(start - 1)?.ok_or(broken(Fault::Missing))?;
                    Entry::decode(&line).map_err(|e| broken(e.into()))?.hash
                };
                let checker = Checker::resume(genesis.entry.body.signer, start, prev);
                let summary = check_tail(&store, start, checker)?;
                if summary.head != head {
                    return Err(LedgerError::StateMismatch {
                        head: summary.head.seq,
                        detail: format!("the last stored entry is {}", head.seq),
                    });
                }
            }
            check_mark(&store, head)?;
            let state = store.load_state()?;
            if let Err(sum) = state.check_conservation() {
                return Err(LedgerError::StateMismatch {
                    head: head.seq,
                    detail: format!(
                        "stored balances, stakes and escrows add up to {sum}, the supply is {}",
                        state.supply()
                    ),
                });
            }
            Ok(shared(store, genesis.entry.body.signer, state, head))
        }
    }
}

/// Decodes and checks the genesis entry.
fn genesis(store: &Store) -> Result<Decoded, LedgerError> {
    let line = store.entry(0)?.unwrap_or_default();
    let raw = Raw {
        stored: Some(0),
        line: None,
        bytes: line.clone(),
    };
    Checker::from_genesis(false).run(
        std::iter::once(Ok::<_, LedgerError>(raw)),
        &|_| Ok(()),
        |_| Ok(()),
    )?;
    Entry::decode(&line).map_err(|e| {
        Broken {
            seq: 0,
            line: None,
            fault: e.into(),
        }
        .into()
    })
}

/// Runs `checker` over the stored entries from `from` on, looking each key up in the
/// idempotency index.
fn check_tail(store: &Store, from: u64, checker: Checker) -> Result<Summary, LedgerError> {
    let storage_error = Mutex::new(None);
    let index = |d: &Decoded| {
        let body = &d.entry.body;
        match store.idempotency(&body.key) {
            Ok(Some(seq)) if seq == body.seq => Ok(()),
            Ok(Some(seq)) => Err(Fault::Index(format!("key {} names entry {seq}", body.key))),
            Ok(None) => Err(Fault::Index(format!("key {} is not indexed", body.key))),
            Err(e) => {
                let message = e.to_string();
                *storage_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                Err(Fault::Index(message))
            }
        }
    };
    let source = store.entries(from).map(|item| {
        item.map(|(seq, bytes)| Raw {
            stored: Some(seq),
            line: None,
            bytes,
        })
        .map_err(LedgerError::from)
    });
    let result = checker.run(source, &index, |_| Ok(()));
    let storage_error = storage_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    match (result, storage_error) {
        // A failed lookup is the database's fault, not the chain's.
        (Err(LedgerError::Broken(_)), Some(e)) => Err(e.into()),
        (result, _) => result,
    }
}

/// Full verification of a store: the chain, then its replayed state and idempotency index
/// against the stored ones.
fn verify_store(store: &Store) -> Result<Summary, LedgerError> {
    // The index is checked by one scan against a fingerprint of each entry's key, in seq
    // order, rather than by a tree lookup per entry.
    let mut fingerprints: Vec<[u8; 16]> = Vec::new();
    let source = store.entries(0).map(|item| {
        item.map(|(seq, bytes)| Raw {
            stored: Some(seq),
            line: None,
            bytes,
        })
        .map_err(LedgerError::from)
    });
    let summary = Checker::from_genesis(false).run(source, &|_| Ok(()), |d| {
        fingerprints.push(fingerprint(d.entry.body.key.as_str().as_bytes()));
        Ok(())
    })?;
    let head = summary.head.seq;
    let mismatch = |detail: String| LedgerError::StateMismatch { head, detail };
    let stored = store.load_state()?;
    if let Some(detail) = summary.state.first_difference(&stored) {
        return Err(mismatch(format!("replay vs stored: {detail}")));
    }
    let mut indexed = 0u64;
    for item in store.idempotency_index() {
        let (key, seq) = item?;
        let named = usize::try_from(seq).ok().and_then(|i| fingerprints.get(i));
        if named != Some(&fingerprint(&key)) {
            return Err(mismatch(format!(
                "the idempotency index maps {:?} to entry {seq}, which has another key",
                String::from_utf8_lossy(&key)
            )));
        }
        indexed += 1;
    }
    if indexed != head + 1 {
        return Err(mismatch(format!(
            "the idempotency index holds {indexed} keys for {} entries",
            head + 1
        )));
    }
    if read_head(store)? != summary.head {
        return Err(mismatch(
            "the last stored entry is not the end of the chain".into(),
        ));
    }
    check_mark(store, summary.head)?;
    Ok(summary)
}

/// A short collision-resistant digest of an idempotency key.
fn fingerprint(key: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(key).as_bytes()[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Ledger, AccountId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(
            &dir.path().join("l"),
            Identity::from_test_label("op"),
            OpenOptions::default(),
        )
        .expect("open");
        let a = Identity::from_test_label("a").account();
        for i in 0..5 {
            let key = IdempotencyKey::new(format!("m{i}")).expect("key");
            ledger.mint(key, a, Credits(10)).expect("mint");
        }
        (dir, ledger, a)
    }

    fn reopen(dir: &tempfile::TempDir) -> Result<Ledger, LedgerError> {
        Ledger::open(
            &dir.path().join("l"),
            Identity::from_test_label("op"),
            OpenOptions::default(),
        )
    }

    /// Group commit: appends queued while the committer is busy go out in batches of at most
    /// `max_batch`, each written and flushed once, every caller answered with its own entry,
    /// in queue order; a repeated key inside one batch gets the entry already planned.
    #[test]
    fn queued_appends_share_one_flush_per_batch() {
        let (_dir, ledger, _) = setup();
        let flushes = ledger.flushes();
        let b = Identity::from_test_label("b").account();
        let mut requests: Vec<(IdempotencyKey, EntryKind)> = (0..10)
            .map(|i| {
                (
                    IdempotencyKey::new(format!("q{i}")).expect("key"),
                    EntryKind::Mint {
                        to: b,
                        amount: Credits(1),
                    },
                )
            })
            .collect();
        // The same operation again, inside the same batch: one entry. Another operation under
        // a key already planned in the batch: refused, and nothing else changes.
        requests.insert(3, requests[2].clone());
        let conflicting = (
            IdempotencyKey::new("q3").expect("key"),
            EntryKind::Mint {
                to: b,
                amount: Credits(2),
            },
        );
        requests.insert(5, conflicting);
        let answers = crate::commit::commit_queued(
            ledger.shared.clone(),
            Identity::from_test_label("op"),
            4,
            requests,
        );
        assert!(
            matches!(&answers[5], Err(LedgerError::KeyConflict { seq: 9, .. })),
            "{:?}",
            answers[5]
        );
        let seqs: Vec<u64> = answers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 5)
            .map(|(_, a)| a.as_ref().expect("appended").seq())
            .collect();
        assert_eq!(seqs, vec![6, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15]);
        // 12 requests in batches of 4: three flushes.
        assert_eq!(ledger.flushes() - flushes, 3);
        assert_eq!(ledger.balance(&b), Credits(10));
        ledger.verify().expect("verifies");
    }

    /// A write that fails (a full disk) fails its append, and every later one, even once the
    /// disk is back: the in-memory state may no longer match what is stored, so nothing more
    /// is appended until the ledger is reopened (and verified). Nothing moved meanwhile.
    #[test]
    fn after_a_failed_write_later_appends_are_refused_until_reopened() {
        use std::sync::atomic::Ordering::SeqCst;
        let (dir, ledger, a) = setup();
        let key = |k: &str| IdempotencyKey::new(k).expect("key");
        ledger.shared.store.fail_writes.store(true, SeqCst);
        let err = ledger
            .mint(key("m-full"), a, Credits(7))
            .expect_err("the write fails");
        assert!(matches!(err, LedgerError::Failed(_)), "{err}");
        ledger.shared.store.fail_writes.store(false, SeqCst);
        let err = ledger
            .mint(key("m-later"), a, Credits(7))
            .expect_err("refused after a failure");
        assert!(matches!(err, LedgerError::Failed(_)), "{err}");
        assert!(ledger.shared.failure().is_some());
        assert_eq!(ledger.balance(&a), Credits(50));
        assert_eq!(ledger.head().seq, 5);
        drop(ledger);
        let ledger = reopen(&dir).expect("reopens");
        assert_eq!(ledger.balance(&a), Credits(50));
        assert_eq!(ledger.head().seq, 5);
        ledger
            .mint(key("m-full"), a, Credits(7))
            .expect("a reopened ledger appends");
        assert_eq!(ledger.balance(&a), Credits(57));
        ledger.verify().expect("verifies");
    }

    #[test]
    fn stored_state_that_is_not_the_replay_is_reported_and_refused() {
        let (dir, ledger, a) = setup();
        let mut delta = Delta::default();
        delta.balances.insert(a, Credits(51));
        let store = &ledger.shared.store;
        store
            .write(&WriteSet {
                init: false,
                entries: &[],
                delta: &delta,
            })
            .and_then(|()| store.flush())
            .expect("tamper");
        let err = ledger.verify().expect_err("mismatch");
        assert!(
            matches!(&err, LedgerError::StateMismatch { head: 5, detail } if detail.contains("balance")),
            "{err}"
        );
        drop(ledger);
        // The cheap check on open sees that balances no longer add up to the supply.
        let err = reopen(&dir).expect_err("refused");
        assert!(matches!(err, LedgerError::StateMismatch { .. }), "{err}");
    }

    #[test]
    fn an_entry_changed_in_place_is_named_and_refused_on_open() {
        let (dir, ledger, a) = setup();
        let mallory = Identity::from_test_label("mallory");
        let old = ledger.entry(3).expect("read").expect("entry 3");
        let mut body = old.body.clone();
        body.kind = EntryKind::Mint {
            amount: Credits(10),
            to: a,
        };
        body.signer = mallory.account();
        let forged = Entry::sign(body, &mallory).expect("sign");
        let store = &ledger.shared.store;
        store
            .write(&WriteSet {
                init: false,
                entries: std::slice::from_ref(&forged),
                delta: &Delta::default(),
            })
            .and_then(|()| store.flush())
            .expect("tamper");
        let err = ledger.verify().expect_err("broken");
        assert_eq!(err.broken_seq(), Some(3), "{err}");
        drop(ledger);
        let err = reopen(&dir).expect_err("refused");
        assert_eq!(err.broken_seq(), Some(3), "{err}");
    }
}
