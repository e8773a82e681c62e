//! Chain verification, shared by the database, the tail check on open and exports.
//!
//! Entries arrive in chunks of `CHUNK` (8192). Each chunk is checked in two passes:
//!
//! 1. On worker threads, one contiguous slice per core: decode the canonical line, check the
//!    signer is the ledger key, check embedded participant messages, and verify the operator
//!    signatures with one `ed25519_dalek::verify_batch` per slice. A failed batch is re-checked
//!    one signature at a time (`verify_strict`) so that the bad entry is named.
//! 2. On the calling thread, in order, while the workers already check the next chunk:
//!    sequence numbers, hash links, unique idempotency keys, and the replay of each operation
//!    against the state so far, with the same rules that appended it.
//!
//! The first fault in chain order is reported, whatever the thread count, so results are
//! deterministic.

use std::collections::HashSet;
use std::fmt;
use std::sync::mpsc;

use ed25519_dalek::VerifyingKey;
use market_protocol::{AccountId, Hash};

use crate::entry::{DecodeError, Decoded, Entry, EntryKind, EvidenceError, IdempotencyKey};
use crate::head::Head;
use crate::state::{plan, OpError, State};

/// Entries per chunk: large enough for batch verification and thread start-up to pay off.
pub(crate) const CHUNK: usize = 16384;

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The line is not a canonical entry.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An entry with another seq stands where this seq belongs (removed, inserted or reordered
    /// entries).
    #[error("expected this entry, found entry {found}")]
    Seq {
        /// The seq the entry holds.
        found: u64,
    },
    /// The database stores the entry under another seq than its own.
    #[error("stored under seq {stored} but holds seq {found}")]
    StoredUnder {
        /// The storage key.
        stored: u64,
        /// The entry's seq.
        found: u64,
    },
    /// `prev` is not the previous entry's hash.
    #[error("prev is {found}, but the previous entry hashes to {expected}")]
    Link {
        /// The previous entry's hash.
        expected: Hash,
        /// What the entry names.
        found: Hash,
    },
    /// Signed by another key than the ledger's.
    #[error("signed by {found}, the ledger key is {expected}")]
    Signer {
        /// The genesis key.
        expected: AccountId,
        /// The entry's signer.
        found: AccountId,
    },
    /// The operator signature does not verify.
    #[error("bad operator signature")]
    Signature,
    /// The genesis entry is malformed.
    #[error("bad genesis entry: {0}")]
    Genesis(&'static str),
    /// An embedded participant message does not support the entry.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// Replaying the operation fails: the entry should never have been written.
    #[error("operation refused on replay: {0}")]
    Refused(#[from] OpError),
    /// The idempotency key was used by an earlier entry.
    #[error("idempotency key {0} used twice")]
    DuplicateKey(IdempotencyKey),
    /// The database's idempotency index disagrees with the entry.
    #[error("idempotency index: {0}")]
    Index(String),
    /// The chain ends before this entry.
    #[error("missing: the chain ends before it")]
    Missing,
    /// The database recorded the chain as durable up to `recorded`, and this entry is gone or
    /// different: the database was damaged or truncated.
    #[error("lost: the chain was durable up to seq {recorded} but this entry is gone or changed")]
    Lost {
        /// The durable head the database recorded.
        recorded: u64,
    },
}

/// The first bad entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Broken {
    /// Its sequence number (the seq expected at that position).
    pub seq: u64,
    /// Its line in an export (1-based), when checking one.
    pub line: Option<u64>,
    /// What is wrong.
    pub fault: Fault,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain broken at seq {}", self.seq)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ": {}", self.fault)
    }
}

/// One stored or exported line, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    /// The seq it is stored under (database only).
    pub stored: Option<u64>,
    /// Its line number (exports only).
    pub line: Option<u64>,
    /// The canonical JSON.
    pub bytes: Vec<u8>,
}

/// A line after the stateless checks.
struct Checked {
    stored: Option<u64>,
    line: Option<u64>,
    /// Boxed: entries are large, and each is moved through several collections and channels.
    result: Result<Box<Decoded>, Fault>,
}

/// What a verified chain adds up to.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The ledger's operator key.
    pub ledger: AccountId,
    /// The last entry.
    pub head: Head,
    /// The state the entries imply (empty for tail checks, which cannot replay).
    pub state: State,
}

/// Checks a chain.
pub(crate) struct Checker {
    key: Option<(AccountId, VerifyingKey)>,
    next_seq: u64,
    prev: Hash,
    /// `None` for tail checks: a tail cannot be replayed without the state before it.
    state: Option<State>,
    /// Keys seen so far, where no index answers for uniqueness (exports).
    keys: Option<HashSet<IdempotencyKey>>,
    threads: usize,
}

impl Checker {
    /// Checks a whole chain from its genesis, replaying every operation.
    pub fn from_genesis(track_keys: bool) -> Self {
        Self {
            key: None,
            next_seq: 0,
            prev: Hash::default(),
            state: Some(State::default()),
            keys: track_keys.then(HashSet::new),
            threads: threads(),
        }
    }

    /// Checks links and signatures from `next_seq` on, given the hash before it.
    #[cfg(feature = "store")]
    pub fn resume(ledger: AccountId, next_seq: u64, prev: Hash) -> Self {
        Self {
            key: Some((ledger, ledger.verifying_key())),
            next_seq,
            prev,
            state: None,
            keys: None,
            threads: threads(),
        }
    }

    /// Checks every line of `source` in order and sums the chain up. `on_worker` runs in pass 1
    /// on each entry that decoded (for stateless checks such as an index lookup), `in_order`
    /// in pass 2 on each entry that passed the other checks, before its replay.
    ///
    /// Pipelined: while the workers check chunk `k + 1`, this thread reads it and runs pass 2
    /// over chunk `k`. A source error is returned after every line before it was checked, so
    /// the first fault in chain order always wins.
    pub fn run<E: From<Box<Broken>>>(
        mut self,
        source: impl Iterator<Item = Result<Raw, E>>,
        on_worker: &(dyn Fn(&Decoded) -> Result<(), Fault> + Sync),
        mut in_order: impl FnMut(&Decoded) -> Result<(), Fault>,
    ) -> Result<Summary, E> {
        let extra = &mut in_order;
        let mut source = source;
        if self.key.is_none() {
            match source.next() {
                None => return Err(self.missing(Some(1)).into()),
                Some(raw) => {
                    let raw = raw?;
                    let decoded = self.genesis(&raw)?;
                    let result = on_worker(&decoded).map(|()| Box::new(decoded));
                    let checked = Checked {
                        stored: raw.stored,
                        line: raw.line,
                        result,
                    };
                    self.sequential(checked, extra)?;
                }
            }
        }
        let Some((account, key)) = self.key else {
            return Err(self.missing(None).into());
        };
        if cfg!(target_arch = "wasm32") {
            // No threads (a browser verifying an export): the same checks, one entry at a time.
            for raw in source {
                let checked = check_slice(vec![raw?], &account, &key, on_worker);
                for c in checked {
                    self.sequential(c, extra)?;
                }
            }
            return Ok(Summary {
                ledger: account,
                head: Head {
                    seq: self.next_seq.saturating_sub(1),
                    hash: self.prev,
                },
                state: self.state.unwrap_or_default(),
            });
        }
        let head = std::thread::scope(|scope| {
            let workers: Vec<Worker> = (0..self.threads)
                .map(|_| Worker::spawn(scope, account, key, on_worker))
                .collect();
            let mut pending = 0;
            loop {
                let mut chunk = Vec::with_capacity(CHUNK);
                let mut stop = None;
                for item in source.by_ref() {
                    match item {
                        Ok(raw) => chunk.push(raw),
                        Err(e) => {
                            stop = Some(e);
                            break;
                        }
                    }
                    if chunk.len() == CHUNK {
                        break;
                    }
                }
                let next = dispatch(chunk, &workers);
                self.drain(&workers[..pending], extra)?;
                if let Some(e) = stop {
                    self.drain(&workers[..next], extra)?;
                    return Err(e);
                }
                if next == 0 {
                    break;
                }
                pending = next;
            }
            Ok(Head {
                // `run` checked at least one entry (genesis) or resumed after one.
                seq: self.next_seq.saturating_sub(1),
                hash: self.prev,
            })
        })?;
        Ok(Summary {
            ledger: account,
            head,
            state: self.state.unwrap_or_default(),
        })
    }

    fn missing(&self, line: Option<u64>) -> Box<Broken> {
        Box::new(Broken {
            seq: self.next_seq,
            line,
            fault: Fault::Missing,
        })
    }

    /// Pass 2 over the slices the first `workers` are checking, in chunk order.
    fn drain(
        &mut self,
        workers: &[Worker],
        extra: &mut impl FnMut(&Decoded) -> Result<(), Fault>,
    ) -> Result<(), Box<Broken>> {
        for worker in workers {
            // A worker only stops early by panicking, which is a bug; the scope re-raises it.
            let Ok(checked) = worker.results.recv() else {
                return Err(self.broken(None, Fault::Missing));
            };
            for c in checked {
                self.sequential(c, extra)?;
            }
        }
        Ok(())
    }

    fn broken(&self, line: Option<u64>, fault: Fault) -> Box<Broken> {
        Box::new(Broken {
            seq: self.next_seq,
            line,
            fault,
        })
    }

    /// Decodes and checks entry 0, which names the key of every later entry.
    fn genesis(&mut self, raw: &Raw) -> Result<Decoded, Box<Broken>> {
        let decoded = Entry::decode(&raw.bytes).map_err(|e| self.broken(raw.line, e.into()))?;
        let body = &decoded.entry.body;
        let fault = match &body.kind {
            _ if body.seq != 0 => Some(Fault::Seq { found: body.seq }),
            EntryKind::Genesis { ledger } if *ledger != body.signer => {
                Some(Fault::Genesis("signer is not the ledger key"))
            }
            EntryKind::Genesis { .. } if body.prev != Hash::default() => {
                Some(Fault::Genesis("prev is not all zeros"))
            }
            EntryKind::Genesis { .. } => None,
            _ => Some(Fault::Genesis("entry 0 is not a genesis entry")),
        };
        if let Some(fault) = fault {
            return Err(self.broken(raw.line, fault));
        }
        let key = body.signer.verifying_key();
        if key.is_weak() {
            return Err(self.broken(raw.line, Fault::Genesis("the ledger key is weak")));
        }
        key.verify_strict(&decoded.signing, &decoded.entry.signature.to_dalek())
            .map_err(|_| self.broken(raw.line, Fault::Signature))?;
        self.key = Some((body.signer, key));
        Ok(decoded)
    }

    /// Pass 2 for one entry: position, link, key uniqueness, `extra`, replay.
    fn sequential(
        &mut self,
        checked: Checked,
        extra: &mut impl FnMut(&Decoded) -> Result<(), Fault>,
    ) -> Result<(), Box<Broken>> {
        let line = checked.line;
        let decoded = checked.result.map_err(|f| self.broken(line, f))?;
        let body = &decoded.entry.body;
        if body.seq != self.next_seq {
            return Err(self.broken(line, Fault::Seq { found: body.seq }));
        }
        if let Some(stored) = checked.stored.filter(|s| *s != body.seq) {
            let fault = Fault::StoredUnder {
                stored,
                found: body.seq,
            };
            return Err(self.broken(line, fault));
        }
        if body.prev != self.prev {
            let fault = Fault::Link {
                expected: self.prev,
                found: body.prev,
            };
            return Err(self.broken(line, fault));
        }
        if let Some(keys) = &self.keys {
            if keys.contains(&body.key) {
                return Err(self.broken(line, Fault::DuplicateKey(body.key.clone())));
            }
        }
        extra(&decoded).map_err(|f| self.broken(line, f))?;
        if let Some(state) = &mut self.state {
            if body.seq != 0 {
                let seq = self.next_seq;
                let delta = plan(&body.kind, &*state).map_err(|e| {
                    Box::new(Broken {
                        seq,
                        line,
                        fault: e.into(),
                    })
                })?;
                state.apply(delta);
            }
        }
        self.prev = decoded.hash;
        self.next_seq += 1;
        if let Some(keys) = &mut self.keys {
            keys.insert(decoded.entry.body.key);
        }
        Ok(())
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, 8)
}

/// A pass-1 thread: takes slices, returns their checks in the order it took them. Living for
/// a whole verification keeps its account memo warm.
struct Worker {
    jobs: mpsc::Sender<Vec<Raw>>,
    results: mpsc::Receiver<Vec<Checked>>,
}

impl Worker {
    fn spawn<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        account: AccountId,
        key: VerifyingKey,
        on_worker: &'env (dyn Fn(&Decoded) -> Result<(), Fault> + Sync),
    ) -> Self {
        let (jobs, job_rx) = mpsc::channel::<Vec<Raw>>();
        let (result_tx, results) = mpsc::channel();
        scope.spawn(move || {
            for slice in job_rx {
                if result_tx
                    .send(check_slice(slice, &account, &key, on_worker))
                    .is_err()
                {
                    break;
                }
            }
        });
        Self { jobs, results }
    }
}

/// Hands `chunk` to the workers in contiguous slices; returns how many workers got one.
fn dispatch(mut chunk: Vec<Raw>, workers: &[Worker]) -> usize {
    if chunk.is_empty() {
        return 0;
    }
    let per = chunk.len().div_ceil(workers.len()).max(256);
    let mut given = 0;
    for worker in workers {
        let rest = chunk.split_off(per.min(chunk.len()));
        if worker.jobs.send(chunk).is_err() {
            break;
        }
        given += 1;
        chunk = rest;
        if chunk.is_empty() {
            break;
        }
    }
    given
}

/// Pass 1 over one slice: stateless checks, then one batch verification.
fn check_slice(
    raws: Vec<Raw>,
    account: &AccountId,
    key: &VerifyingKey,
    on_worker: &(dyn Fn(&Decoded) -> Result<(), Fault> + Sync),
) -> Vec<Checked> {
    let mut checked: Vec<Checked> = raws
        .into_iter()
        .map(|raw| Checked {
            stored: raw.stored,
            line: raw.line,
            result: check_stateless(&raw.bytes, account, on_worker).map(Box::new),
        })
        .collect();
    for i in bad_signatures(&checked, key) {
        checked[i].result = Err(Fault::Signature);
    }
    checked
}

/// Decoding, signer, embedded evidence and `on_worker`: everything but the operator signature.
fn check_stateless(
    bytes: &[u8],
    account: &AccountId,
    on_worker: &(dyn Fn(&Decoded) -> Result<(), Fault> + Sync),
) -> Result<Decoded, Fault> {
    let decoded = Entry::decode(bytes)?;
    let signer = decoded.entry.body.signer;
    if signer != *account {
        return Err(Fault::Signer {
            expected: *account,
            found: signer,
        });
    }
    decoded.entry.body.kind.check_evidence(&signer)?;
    on_worker(&decoded)?;
    Ok(decoded)
}

/// The indices of decoded entries whose operator signature fails: one batch verification, and
/// single verifications only when the batch fails.
fn bad_signatures(checked: &[Checked], key: &VerifyingKey) -> Vec<usize> {
    let decoded: Vec<(usize, &Decoded)> = checked
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.result.as_deref().ok().map(|d| (i, d)))
        .collect();
    if decoded.is_empty() {
        return Vec::new();
    }
    let messages: Vec<&[u8]> = decoded.iter().map(|(_, d)| d.signing.as_slice()).collect();
    let signatures: Vec<_> = decoded
        .iter()
        .map(|(_, d)| d.entry.signature.to_dalek())
        .collect();
    let keys = vec![*key; decoded.len()];
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return Vec::new();
    }
    let bad: Vec<usize> = decoded
        .iter()
        .zip(messages.iter().zip(&signatures))
        .filter(|(_, (m, s))| key.verify_strict(m, s).is_err())
        .map(|((i, _), _)| *i)
        .collect();
    if bad.is_empty() {
        // Batch and single verification can only disagree on signatures crafted with the
        // secret key; blame the slice's first entry rather than accept it.
        decoded.first().map(|(i, _)| vec![*i]).unwrap_or_default()
    } else {
        bad
    }
}
