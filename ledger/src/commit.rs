//! Group commit: one thread turns queued appends into entries, writes them as one atomic batch,
//! flushes once and then answers every caller.
//!
//! While a flush is in progress new requests queue up, so the next batch holds everything that
//! arrived meanwhile: with one caller each append pays a whole flush, with 64 callers a flush is
//! shared by up to 64 appends. No caller is answered before the flush that made its entry
//! durable has returned. Bodies are chained in order on this thread and signed by the pool in
//! `signer` as soon as each is chained (the chain hashes do not cover signatures).
//!
//! (Flushing on a second thread while the next batch is prepared was measured: it splits the
//! callers into two half-size batches with a flush each, and on two cores the extra flushes cost
//! more than the overlap saves.)

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;

use market_protocol::{Identity, Version};

use crate::entry::{EntryBody, EntryKind, IdempotencyKey, SealedEntry, Unsigned};
use crate::error::LedgerError;
use crate::head::Head;
use crate::ledger::{Appended, Shared};
use crate::signer::{SignerPool, JOB_SIZE};
use crate::state::{plan, Delta, Layered};
use crate::storage::WriteSet;

/// Batches smaller than this are signed on the commit thread, where a hand-off to the signing
/// pool would cost more than it saves.
const POOL_SIGNING_MIN: usize = 4;

/// One queued append.
struct Request {
    key: IdempotencyKey,
    kind: EntryKind,
    reply: SyncSender<Result<Appended, LedgerError>>,
}

/// The handle of the commit thread; dropping it answers everything queued and stops it.
#[derive(Debug)]
pub(crate) struct Writer {
    queue: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the committer for `shared`, signing with `operator`.
    pub fn start(
        shared: Arc<Shared>,
        operator: Identity,
        max_batch: usize,
    ) -> Result<Self, LedgerError> {
        let (queue, rx) = mpsc::channel();
        let path = shared.store.path().to_owned();
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let signers = SignerPool::start(&operator, threads.clamp(1, 8)).map_err(io)?;
        let thread = std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || {
                Committer {
                    shared,
                    operator,
                    signers,
                    max_batch: max_batch.max(1),
                }
                .run(rx)
            })
            .map_err(io)?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues an append and waits until it is durable (or refused).
    pub fn submit(&self, key: IdempotencyKey, kind: EntryKind) -> Result<Appended, LedgerError> {
        let stopped = || LedgerError::Failed("the commit thread stopped".into());
        let (reply, answer) = mpsc::sync_channel(1);
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { key, kind, reply })
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

/// Runs a committer over `requests` queued all at once (as a burst of callers would leave
/// them while a flush runs), in batches of at most `max_batch`, and returns each answer in
/// order: group commit without depending on how threads are scheduled.
#[cfg(test)]
pub(crate) fn commit_queued(
    shared: Arc<Shared>,
    operator: Identity,
    max_batch: usize,
    requests: Vec<(IdempotencyKey, EntryKind)>,
) -> Vec<Result<Appended, LedgerError>> {
    let (queue, rx) = mpsc::channel();
    let mut answers = Vec::new();
    for (key, kind) in requests {
        let (reply, answer) = mpsc::sync_channel(1);
        let _ = queue.send(Request { key, kind, reply });
        answers.push(answer);
    }
    drop(queue);
    let signers = SignerPool::start(&operator, 2).expect("signing threads");
    Committer {
        shared,
        operator,
        signers,
        max_batch,
    }
    .run(rx);
    answers
        .into_iter()
        .map(|a| {
            a.recv()
                .unwrap_or_else(|_| Err(LedgerError::Failed("no answer".into())))
        })
        .collect()
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the ledger commit thread panicked");
            }
        }
    }
}

/// What a request in a batch comes to.
enum Outcome {
    /// The `index`th new entry of the batch (`fresh` false for a repeat within the batch).
    New { index: usize, fresh: bool },
    /// Done without a new entry (an earlier entry under the same key, or an error); boxed,
    /// as it is far larger than `New`.
    Done(Box<Result<Appended, LedgerError>>),
}

/// A batch decided and chained, its signatures under way.
struct Planned {
    /// One per request, in order.
    replies: Vec<SyncSender<Result<Appended, LedgerError>>>,
    /// One per request, in order.
    outcomes: Vec<Outcome>,
    /// The new entries, in chain order.
    unsigned: Vec<Unsigned>,
    /// Their state changes.
    delta: Delta,
    /// The last new entry (or the old head).
    head: Head,
    /// Whether the signing pool was given every new entry.
    pooled: bool,
}

struct Committer {
    shared: Arc<Shared>,
    operator: Identity,
    signers: SignerPool,
    max_batch: usize,
}

impl Committer {
    fn run(self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&self, batch: Vec<Request>) {
        let shared = &*self.shared;
        // Held while writing, so that `Ledger::verify` sees a state that matches the entries.
        let _writing = shared.commit.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = shared.failure() {
            for r in batch {
                let _ = r.reply.send(Err(LedgerError::Failed(reason.clone())));
            }
            return;
        }
        let size = batch.len();
        let Planned {
            replies,
            outcomes,
            unsigned,
            delta,
            head,
            pooled,
        } = self.plan_batch(batch);
        let sealed = self.sign(unsigned, pooled);
        if !sealed.is_empty() {
            let set = WriteSet {
                init: false,
                entries: &sealed,
                delta: &delta,
            };
            if let Err(e) = shared.store.write(&set).and_then(|()| shared.store.flush()) {
                let reason = e.to_string();
                tracing::error!(%reason, "ledger write failed; refusing further appends");
                shared.fail(reason.clone());
                for reply in replies {
                    let _ = reply.send(Err(LedgerError::Failed(reason.clone())));
                }
                return;
            }
            if let Err(e) = shared.store.mark_durable(head.seq, &head.hash) {
                // The entries are durable; only the damage check on the next open is weaker.
                tracing::warn!(error = %e, "could not record the durable head");
            }
            shared.advance(delta, head);
        }
        tracing::trace!(requests = size, entries = sealed.len(), "group commit");
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let answer = match outcome {
                Outcome::New { index, fresh } => Ok(Appended {
                    entry: sealed[index].entry.clone(),
                    hash: sealed[index].hash,
                    fresh,
                }),
                Outcome::Done(result) => *result,
            };
            // A caller that went away needs no answer.
            let _ = reply.send(answer);
        }
    }

    /// Completes the chained bodies with their signatures: those the pool was given (when
    /// `pooled`) are collected, the rest made here.
    fn sign(&self, unsigned: Vec<Unsigned>, pooled: bool) -> Vec<SealedEntry> {
        if pooled {
            if let Some(signatures) = self.signers.collect(unsigned.len()) {
                return unsigned
                    .into_iter()
                    .zip(signatures)
                    .map(|(u, s)| u.seal(s))
                    .collect();
            }
            tracing::error!("the signing pool stopped; signing on the commit thread");
        }
        unsigned
            .into_iter()
            .map(|u| u.sign(&self.operator))
            .collect()
    }

    /// Decides every request of the batch in order, chaining the accepted ones and, for a
    /// batch large enough, handing each to the signing pool as soon as it is chained.
    fn plan_batch(&self, batch: Vec<Request>) -> Planned {
        let shared = &*self.shared;
        let mut pooled = batch.len() >= POOL_SIGNING_MIN;
        let mut job = Vec::with_capacity(JOB_SIZE);
        let view = shared.view.read().unwrap_or_else(PoisonError::into_inner);
        let mut head = view.head;
        let mut delta = Delta::default();
        let mut unsigned: Vec<Unsigned> = Vec::new();
        let mut in_batch: BTreeMap<IdempotencyKey, usize> = BTreeMap::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut outcomes = Vec::with_capacity(batch.len());
        for Request { key, kind, reply } in batch {
            replies.push(reply);
            if let Some(&index) = in_batch.get(&key) {
                let existing = &unsigned[index].body;
                outcomes.push(if existing.kind == kind {
                    Outcome::New {
                        index,
                        fresh: false,
                    }
                } else {
                    Outcome::Done(Box::new(Err(conflict(
                        key,
                        existing.seq,
                        &existing.kind,
                        &kind,
                    ))))
                });
                continue;
            }
            match shared.store.idempotency(&key) {
                Err(e) => outcomes.push(Outcome::Done(Box::new(Err(e.into())))),
                Ok(Some(seq)) => {
                    outcomes.push(Outcome::Done(Box::new(shared.repeat(key, seq, &kind))))
                }
                Ok(None) => {
                    let layered = Layered {
                        base: &view.state,
                        delta: &delta,
                    };
                    let planned = plan(&kind, &layered);
                    let outcome = planned.map_err(LedgerError::from).and_then(|d| {
                        let body = EntryBody {
                            version: Version::CURRENT,
                            seq: head.seq + 1,
                            prev: head.hash,
                            key: key.clone(),
                            signer: shared.ledger,
                            kind,
                        };
                        let u = Unsigned::new(body)?;
                        delta.merge(d);
                        head = Head {
                            seq: u.body.seq,
                            hash: u.hash,
                        };
                        in_batch.insert(key, unsigned.len());
                        if pooled {
                            job.push((unsigned.len(), u.signing.clone()));
                            if job.len() == JOB_SIZE {
                                pooled = self.signers.submit(std::mem::take(&mut job));
                            }
                        }
                        unsigned.push(u);
                        Ok(Outcome::New {
                            index: unsigned.len() - 1,
                            fresh: true,
                        })
                    });
                    outcomes.push(outcome.unwrap_or_else(|e| Outcome::Done(Box::new(Err(e)))));
                }
            }
        }
        pooled = pooled && self.signers.submit(job);
        Planned {
            replies,
            outcomes,
            unsigned,
            delta,
            head,
            pooled,
        }
    }
}

/// The error for a key reused with another operation.
pub(crate) fn conflict(
    key: IdempotencyKey,
    seq: u64,
    existing: &EntryKind,
    requested: &EntryKind,
) -> LedgerError {
    LedgerError::KeyConflict {
        key,
        seq,
        existing: existing.name(),
        requested: requested.name(),
    }
}
