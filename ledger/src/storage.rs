//! The storage boundary: the only code in the crate that knows about sled.
//!
//! Everything lives in one sled tree, `market-ledger/v1`, under one-byte prefixes:
//!
//! | key                         | value                                             |
//! |-----------------------------|---------------------------------------------------|
//! | `F`                         | the format marker `market-ledger/v1`              |
//! | `E` + seq (u64 big endian)  | the entry's canonical JSON (its export line)      |
//! | `I` + idempotency key       | the seq of the entry recorded under that key      |
//! | `B` + account (32 bytes)    | balance, u64 big endian, absent when zero         |
//! | `S` + account               | stake, u64 big endian, absent when zero           |
//! | `R` + account               | reputation, i64 big endian, absent when zero      |
//! | `X` + task id (32 bytes)    | escrow: buyer (32) amount (u64 BE) remaining (u64)|
//! | `M`                         | supply, u64 big endian                            |
//! | `T` + account               | the key the account was rotated to (32 bytes)     |
//!
//! One tree means one atomic sled batch per group commit: sled recovers a batch entirely or
//! not at all, so an entry and the state it implies are never found apart. Big-endian sequence
//! numbers make sled's key order the chain order.

use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use market_protocol::{AccountId, Credits, Hash, TaskId};

use crate::entry::{IdempotencyKey, SealedEntry};
use crate::state::{Delta, Escrow, State};

/// The format marker stored in every ledger database.
pub const FORMAT: &[u8] = b"market-ledger/v1";

const TREE: &[u8] = b"market-ledger/v1";
const K_FORMAT: u8 = b'F';
const K_ENTRY: u8 = b'E';
const K_IDEM: u8 = b'I';
const K_BALANCE: u8 = b'B';
const K_STAKE: u8 = b'S';
const K_REPUTATION: u8 = b'R';
const K_ESCROW: u8 = b'X';
const K_SUPPLY: u8 = b'M';
const K_ROTATED: u8 = b'T';

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The path is not a ledger directory (and not an empty place to create one).
    #[error("{path} is not a market ledger: {reason}")]
    NotALedger {
        /// The directory.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// sled failed (I/O error, corruption, lock held by another process).
    #[error("ledger database {path}: {message}")]
    Database {
        /// The directory.
        path: PathBuf,
        /// sled's account of it.
        message: String,
    },
    /// A stored record does not decode.
    #[error("ledger database {path}: malformed record {key}: {reason}")]
    Malformed {
        /// The directory.
        path: PathBuf,
        /// The record's key, printable.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the ledger writes in one atomic batch.
#[derive(Debug)]
pub(crate) struct WriteSet<'a> {
    /// Writes the format marker (creation).
    pub init: bool,
    /// New entries, in order.
    pub entries: &'a [SealedEntry],
    /// The state changes they make.
    pub delta: &'a Delta,
}

/// An open ledger database.
#[derive(Debug)]
pub(crate) struct Store {
    db: sled::Db,
    tree: sled::Tree,
    mark: HeadMark,
    path: PathBuf,
    /// Tests make writes fail with this (a full or broken disk).
    #[cfg(test)]
    pub(crate) fail_writes: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Opens the database at `path`; with `create`, creates it when the path is missing or an
    /// empty directory. Returns whether the ledger is new (nothing written yet). Anything else
    /// without a ledger in it is refused: a directory with other files, a sled database of
    /// something else, or one that lost its ledger to corruption (or whose creation was
    /// interrupted). Nothing is ever initialised over existing files.
    pub fn open(path: &Path, create: bool) -> Result<(Self, bool), StorageError> {
        let fresh = preflight(path, create)?;
        let not_ledger = |reason: &str| StorageError::NotALedger {
            path: path.to_owned(),
            reason: reason.into(),
        };
        let config = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None);
        // sled 0.34 can panic on some corrupt files instead of returning an error; a ledger
        // must report a clear error for any directory, so a panic becomes one here.
        let db = match catch_unwind(AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(db_error(path, e)),
            Err(_) => return Err(not_ledger("sled could not read its files (corrupt)")),
        };
        let tree = db.open_tree(TREE).map_err(|e| db_error(path, e))?;
        let mark = HeadMark::open(path, fresh)?;
        let store = Self {
            db,
            tree,
            mark,
            path: path.to_owned(),
            #[cfg(test)]
            fail_writes: Default::default(),
        };
        match store.get(&[K_FORMAT])? {
            Some(format) if format == FORMAT => Ok((store, false)),
            Some(other) => Err(not_ledger(&format!(
                "format {:?}, expected {:?}",
                String::from_utf8_lossy(&other),
                String::from_utf8_lossy(FORMAT)
            ))),
            None if fresh => Ok((store, true)),
            None => Err(not_ledger(&match store.durable_mark() {
                Some((seq, _)) => format!(
                    "the database is damaged: entries up to seq {seq} were durable, and sled \
                     recovered none of them; restore it from a backup or an export"
                ),
                None => "it holds a sled database without a ledger: corrupt, not a ledger, or \
                         its creation was interrupted (then remove the directory and start \
                         again)"
                    .into(),
            })),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `set` as one atomic sled batch (not yet durable: see [`Store::flush`]).
    pub fn write(&self, set: &WriteSet<'_>) -> Result<(), StorageError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(db_error(
                &self.path,
                sled::Error::Io(std::io::Error::other("no space left on device (test)")),
            ));
        }
        let mut batch = sled::Batch::default();
        if set.init {
            batch.insert(&[K_FORMAT], FORMAT);
        }
        for sealed in set.entries {
            let seq = sealed.entry.body.seq;
            batch.insert(&entry_key(seq)[..], sealed.line.as_slice());
            batch.insert(idem_key(&sealed.entry.body.key), &seq.to_be_bytes()[..]);
        }
        let d = set.delta;
        for (account, v) in &d.balances {
            put_u64(&mut batch, key(K_BALANCE, account.as_bytes()), v.0);
        }
        for (account, v) in &d.stakes {
            put_u64(&mut batch, key(K_STAKE, account.as_bytes()), v.0);
        }
        for (account, v) in &d.reputation {
            let k = key(K_REPUTATION, account.as_bytes());
            if *v == 0 {
                batch.remove(&k[..]);
            } else {
                batch.insert(&k[..], &v.to_be_bytes()[..]);
            }
        }
        for (task, e) in &d.escrows {
            let mut value = Vec::with_capacity(48);
            value.extend_from_slice(e.buyer.as_bytes());
            value.extend_from_slice(&e.amount.0.to_be_bytes());
            value.extend_from_slice(&e.remaining.0.to_be_bytes());
            batch.insert(&key(K_ESCROW, task.as_bytes())[..], value);
        }
        for (from, to) in &d.rotated {
            batch.insert(&key(K_ROTATED, from.as_bytes())[..], &to.as_bytes()[..]);
        }
        if let Some(supply) = d.supply {
            batch.insert(&[K_SUPPLY], &supply.0.to_be_bytes()[..]);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| db_error(&self.path, e))
    }

    /// Makes every write so far durable (sled flush: write out and fsync).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| db_error(&self.path, e))
    }

    /// Records `(seq, hash)` as durable, after a flush. See [`HeadMark`].
    pub fn mark_durable(&self, seq: u64, hash: &Hash) -> Result<(), StorageError> {
        self.mark.write(seq, hash)
    }

    /// The last head recorded as durable, if the record is intact.
    pub fn durable_mark(&self) -> Option<(u64, Hash)> {
        self.mark.read()
    }

    /// The stored line of entry `seq`.
    pub fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.get(&entry_key(seq))
    }

    /// The last entry's seq and line.
    pub fn last_entry(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let last = self
            .tree
            .range(entry_key(0)..=entry_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(|e| db_error(&self.path, e))?;
        last.map(|(k, v)| Ok((self.seq_of(&k)?, v.to_vec())))
            .transpose()
    }

    /// Entries from `from` on, in order, as (key seq, line).
    pub fn entries(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StorageError>> + '_ {
        self.tree
            .range(entry_key(from)..=entry_key(u64::MAX))
            .map(move |r| {
                let (k, v) = r.map_err(|e| db_error(&self.path, e))?;
                Ok((self.seq_of(&k)?, v.to_vec()))
            })
    }

    /// The seq recorded under an idempotency key.
    pub fn idempotency(&self, key: &IdempotencyKey) -> Result<Option<u64>, StorageError> {
        let k = idem_key(key);
        self.get(&k)?.map(|v| self.u64_of(&k, &v)).transpose()
    }

    /// The idempotency index in key order, as (key, seq).
    pub fn idempotency_index(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, u64), StorageError>> + '_ {
        self.tree.scan_prefix([K_IDEM]).map(move |r| {
            let (k, v) = r.map_err(|e| db_error(&self.path, e))?;
            Ok((k[1..].to_vec(), self.u64_of(&k, &v)?))
        })
    }

    /// Reads the whole stored derived state.
    pub fn load_state(&self) -> Result<State, StorageError> {
        let mut state = State::default();
        for r in self.tree.scan_prefix([K_BALANCE]) {
            let (k, v) = r.map_err(|e| db_error(&self.path, e))?;
            state
                .balances
                .insert(self.account_of(&k)?, Credits(self.nonzero_u64(&k, &v)?));
        }
        for r in self.tree.scan_prefix([K_STAKE]) {
            let (k, v) = r.map_err(|e| db_error(&self.path, e))?;
            state
                .stakes
                .insert(self.account_of(&k)?, Credits(self.nonzero_u64(&k, &v)?));
        }
        for r in self.tree.scan_prefix([K_REPUTATION]) {
            let (k, v) = r.map_err(|e| db_error(&self.path, e))?;
            let score = i64::from_be_bytes(self.array(&k, &v)?);
            if score == 0 {
                return Err(self.malformed(&k, "zero value stored"));
            }
            state.reputation.insert(self.account_of(&k)?, score);
        }
        for r in self.tree.scan_prefix([K_ESCROW]) {
            let (k, v) = r.map_err(|e| db_error(&self.path, e))?;
            let task = TaskId(Hash(self.array(&k, &k[1..])?));
            let raw: [u8; 48] = self.array(&k, &v)?;
            let (buyer, amounts) = raw.split_at(32);
            let buyer = self.account_of_bytes(&k, buyer)?;
            let (amount, remaining) = amounts.split_at(8);
            let escrow = Escrow {
                buyer,
                amount: Credits(self.u64_of(&k, amount)?),
                remaining: Credits(self.u64_of(&k, remaining)?),
            };
            state.escrows.insert(task, escrow);
        }
        for r in self.tree.scan_prefix([K_ROTATED]) {
            let (k, v) = r.map_err(|e| db_error(&self.path, e))?;
            let to = self.account_of_bytes(&k, &v)?;
            state.rotated.insert(self.account_of(&k)?, to);
        }
        if let Some(v) = self.get(&[K_SUPPLY])? {
            state.supply = Credits(self.u64_of(&[K_SUPPLY], &v)?);
        }
        Ok(state)
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.tree
            .get(k)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| db_error(&self.path, e))
    }

    fn malformed(&self, k: &[u8], reason: &str) -> StorageError {
        StorageError::Malformed {
            path: self.path.clone(),
            key: printable(k),
            reason: reason.into(),
        }
    }

    fn array<const N: usize>(&self, k: &[u8], v: &[u8]) -> Result<[u8; N], StorageError> {
        v.try_into()
            .map_err(|_| self.malformed(k, &format!("{} bytes, expected {N}", v.len())))
    }

    fn u64_of(&self, k: &[u8], v: &[u8]) -> Result<u64, StorageError> {
        Ok(u64::from_be_bytes(self.array(k, v)?))
    }

    fn nonzero_u64(&self, k: &[u8], v: &[u8]) -> Result<u64, StorageError> {
        match self.u64_of(k, v)? {
            0 => Err(self.malformed(k, "zero value stored")),
            n => Ok(n),
        }
    }

    fn seq_of(&self, k: &[u8]) -> Result<u64, StorageError> {
        self.u64_of(k, &k[1..])
    }

    fn account_of(&self, k: &[u8]) -> Result<AccountId, StorageError> {
        self.account_of_bytes(k, &k[1..])
    }

    fn account_of_bytes(&self, k: &[u8], bytes: &[u8]) -> Result<AccountId, StorageError> {
        AccountId::from_bytes(self.array(k, bytes)?).map_err(|e| self.malformed(k, &e.to_string()))
    }
}

/// Refuses paths that are files, or directories holding something other than a sled database;
/// without `create`, also a missing or empty directory. Returns whether the ledger is to be
/// created (missing path or empty directory).
fn preflight(path: &Path, create: bool) -> Result<bool, StorageError> {
    let not_ledger = |reason: &str| StorageError::NotALedger {
        path: path.to_owned(),
        reason: reason.into(),
    };
    let names = match std::fs::read_dir(path) {
        Ok(dir) => dir
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| not_ledger(&e.to_string()))?,
        Err(e) if e.kind() == ErrorKind::NotFound && create => return Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_ledger("it does not exist")),
        Err(e) if e.kind() == ErrorKind::NotADirectory => {
            return Err(not_ledger("not a directory"))
        }
        Err(e) => return Err(not_ledger(&e.to_string())),
    };
    let has = |n: &str| names.iter().any(|x| x == n);
    if has("conf") && has("db") {
        Ok(false)
    } else if names.is_empty() && create {
        Ok(true)
    } else if names.is_empty() {
        Err(not_ledger("the directory is empty"))
    } else {
        Err(not_ledger(
            "the directory holds other files and no ledger database",
        ))
    }
}

fn db_error(path: &Path, e: sled::Error) -> StorageError {
    StorageError::Database {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn key(prefix: u8, id: &[u8; 32]) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = prefix;
    k[1..].copy_from_slice(id);
    k
}

fn entry_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = K_ENTRY;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn idem_key(key: &IdempotencyKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.as_str().len());
    k.push(K_IDEM);
    k.extend_from_slice(key.as_str().as_bytes());
    k
}

fn put_u64(batch: &mut sled::Batch, k: [u8; 33], v: u64) {
    if v == 0 {
        batch.remove(&k[..]);
    } else {
        batch.insert(&k[..], &v.to_be_bytes()[..]);
    }
}

fn printable(k: &[u8]) -> String {
    match k.split_first() {
        Some((p, rest)) if p.is_ascii_alphabetic() => {
            format!("{}:{}", char::from(*p), hex::encode(rest))
        }
        _ => hex::encode(k),
    }
}

/// The name of the head mark file in a ledger directory.
const MARK_FILE: &str = "market-ledger.head";
const MARK_MAGIC: &[u8; 8] = b"mlhead01";

/// A small file beside sled's, rewritten in place after every flush with the durable head.
///
/// sled recovers a damaged log by keeping its longest intact prefix, which for a chain is a
/// shorter chain that verifies. The mark remembers how far the chain had durably reached, so
/// losing entries is an error instead of silence. It is written after the flush it describes
/// and never fsynced itself: after a crash it can lag behind the chain, never run ahead.
/// A torn or missing mark is ignored (with a warning); it detects damage, it is not a proof.
#[derive(Debug)]
struct HeadMark {
    file: std::fs::File,
    path: PathBuf,
}

impl HeadMark {
    fn open(dir: &Path, create: bool) -> Result<Self, StorageError> {
        let path = dir.join(MARK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)
            .or_else(|e| {
                if e.kind() == ErrorKind::NotFound {
                    // Ledgers whose mark was removed still open; they just lose the check.
                    tracing::warn!(path = %path.display(), "head mark missing; recreating it");
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| StorageError::Database {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(Self { file, path })
    }

    fn record(seq: u64, hash: &Hash) -> [u8; 64] {
        let mut r = [0u8; 64];
        r[..8].copy_from_slice(MARK_MAGIC);
        r[8..16].copy_from_slice(&seq.to_be_bytes());
        r[16..48].copy_from_slice(hash.as_bytes());
        let check = blake3::hash(&r[..48]);
        r[48..].copy_from_slice(&check.as_bytes()[..16]);
        r
    }

    fn write(&self, seq: u64, hash: &Hash) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(&Self::record(seq, hash), 0)
            .map_err(|e| StorageError::Database {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    fn read(&self) -> Option<(u64, Hash)> {
        use std::os::unix::fs::FileExt;
        let mut r = [0u8; 64];
        if self.file.read_exact_at(&mut r, 0).is_err() {
            return None;
        }
        let seq = u64::from_be_bytes(r[8..16].try_into().ok()?);
        let hash = Hash(r[16..48].try_into().ok()?);
        if r != Self::record(seq, &hash) {
            tracing::warn!(path = %self.path.display(), "head mark is torn; ignoring it");
            return None;
        }
        Some((seq, hash))
    }
}
