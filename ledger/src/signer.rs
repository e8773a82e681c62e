//! Signing off the commit thread.
//!
//! An entry's hash covers its body but not its signature, so the commit thread can chain a
//! batch on its own and have the signatures made elsewhere: it hands each body's signing bytes
//! to this pool as soon as the body is chained, and the pool signs on every core while the
//! commit thread goes on chaining the rest of the batch.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use market_protocol::{Identity, Signature};

/// Signing bytes to sign, with their positions in the batch. Jobs carry several entries, as
/// waking a thread costs about as much as a signature.
type Job = Vec<(usize, Vec<u8>)>;

/// Entries per job.
pub(crate) const JOB_SIZE: usize = 8;

/// Threads that sign with the operator key.
#[derive(Debug)]
pub(crate) struct SignerPool {
    jobs: Option<Sender<Job>>,
    results: Receiver<Vec<(usize, Signature)>>,
    workers: Vec<JoinHandle<()>>,
}

impl SignerPool {
    /// Starts `threads` signers.
    pub fn start(operator: &Identity, threads: usize) -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (result_tx, results) = mpsc::channel();
        let workers = (0..threads.max(1))
            .map(|i| {
                let (jobs, results, operator) =
                    (job_rx.clone(), result_tx.clone(), operator.clone());
                std::thread::Builder::new()
                    .name(format!("ledger-sign-{i}"))
                    .spawn(move || loop {
                        // One waiting signer holds the lock while it waits; the others queue for
                        // the lock, so each job goes to exactly one signer.
                        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { break };
                        let signed = job
                            .into_iter()
                            .map(|(index, bytes)| (index, operator.sign_raw(&bytes)))
                            .collect();
                        if results.send(signed).is_err() {
                            break;
                        }
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            jobs: Some(jobs),
            results,
            workers,
        })
    }

    /// Queues signing bytes, each with its position in the current batch.
    pub fn submit(&self, job: Vec<(usize, Vec<u8>)>) -> bool {
        job.is_empty()
            || self
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// Waits for the `count` signatures of the current batch, in batch order; `None` if the
    /// signers stopped.
    pub fn collect(&self, count: usize) -> Option<Vec<Signature>> {
        let mut signatures = vec![None; count];
        let mut received = 0;
        while received < count {
            for (index, signature) in self.results.recv().ok()? {
                *signatures.get_mut(index)? = Some(signature);
                received += 1;
            }
        }
        signatures.into_iter().collect()
    }
}

impl Drop for SignerPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                tracing::error!("a ledger signing thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_come_back_in_batch_order() {
        let operator = Identity::from_test_label("op");
        let pool = SignerPool::start(&operator, 3).expect("start");
        for round in 0..3u8 {
            let messages: Vec<Vec<u8>> = (0..50u8).map(|i| vec![round, i]).collect();
            let jobs: Vec<(usize, Vec<u8>)> = messages.iter().cloned().enumerate().collect();
            for chunk in jobs.chunks(JOB_SIZE) {
                assert!(pool.submit(chunk.to_vec()));
            }
            let signatures = pool.collect(messages.len()).expect("signed");
            for (m, s) in messages.iter().zip(signatures) {
                assert_eq!(s, operator.sign_raw(m));
            }
        }
    }
}
