//! Settlement and penalties: an accepted result's outputs are checked against the commitment
//! and handed to the buyer before anything is paid; the accepted attempt and its verdicts are
//! saved, then every payment is appended under a key naming the attempt, so a node that stops
//! at any point resumes paying where it stopped and pays nothing twice. Slashes, reputation,
//! refunds and rejections live here too: every credit the node moves, it moves from here.

use std::path::{Path, PathBuf};

use market_ledger::EntryKind;
use market_protocol::{
    AccountId, BlobId, Commitment, CommitmentId, Credits, Hash, Signed, StateHash, Verdict,
    Workload,
};

use super::divergence::{divergence_claim, Divergence};
use super::Node;
use crate::model::{Settlement, TaskRecord, TaskState};

/// The step a slot-round's final state must be at: its round's end, `(r + 1)·H`.
fn slot_round_end(t: &TaskRecord) -> Option<u32> {
    let slot = t.slot()?;
    let Workload::Training(training) = &t.spec.body.workload else {
        return None;
    };
    let h = training.pool.as_ref()?.inner_steps;
    (slot.round + 1).checked_mul(h)
}

/// Why a result's outputs cannot be handed to the buyer.
#[derive(Debug, thiserror::Error)]
pub(super) enum OutputError {
    /// The worker's outputs are not the ones its commitment binds: its fault.
    #[error("{0}")]
    Mismatch(String),
    /// Reading or storing failed: the node's problem, retried.
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

impl Node {
    /// Accepts attempt `n`: outputs checked and stored for the buyer, the settlement saved,
    /// then paid. A result whose outputs do not follow from its commitment is the worker's
    /// failure, caught before anyone is paid.
    pub(super) async fn accept(
        &self,
        mut t: TaskRecord,
        n: usize,
        commitment: Signed<Commitment>,
        dir: PathBuf,
        passing: Vec<Signed<Verdict>>,
    ) -> anyhow::Result<()> {
        let worker = commitment.body.worker;
        super::audit::record_verdicts(&mut t, n, &passing)?;
        match self.collect_outputs(&t, &dir, &commitment.body) {
            Ok(ids) => t.outputs = ids,
            Err(OutputError::Mismatch(why)) => {
                tracing::warn!(task = %t.id, %worker, %why, "outputs do not match the commitment");
                let evidence = CommitmentId(commitment.id()?).0;
                return self
                    .unusable_result(
                        t,
                        n,
                        worker,
                        evidence,
                        "outputs do not match the committed result",
                        "outputs",
                    )
                    .await;
            }
            Err(OutputError::Io(e)) => return Err(e),
        }
        t.attempts[n].accepted = true;
        t.settlement = Some(Settlement {
            attempt: n,
            commitment,
            verdicts: passing,
        });
        self.save(&t)?;
        self.pay(t).await
    }

    /// Pays a saved settlement: a reward to each passing verifier, the worker's release, a
    /// refund of the rest, the worker's reputation. Each under a key naming the attempt, so a
    /// re-run after a crash finds what was already paid and pays only the rest.
    pub(super) async fn pay(&self, mut t: TaskRecord) -> anyhow::Result<()> {
        let s = t
            .settlement
            .clone()
            .ok_or_else(|| anyhow::anyhow!("task {} has no settlement", t.id))?;
        let (id, n, worker) = (t.id, s.attempt, s.commitment.body.worker);
        // The escrow's task: a slot-round is paid from its pooled task's escrow (its ledger
        // keys still name the slot-round's own record, so no two slot-rounds share one).
        let escrow_task = t.task_id();
        let fee = Credits(t.verifier_fee);
        for v in &s.verdicts {
            let a = self
                .settlement_append(
                    super::Operation::Reward {
                        task: id,
                        attempt: n,
                        verifier: v.body.verifier,
                    },
                    EntryKind::Reward {
                        amount: fee,
                        task_id: escrow_task,
                        verdict: Some(v.clone()),
                        verifier: v.body.verifier,
                    },
                )
                .await?;
            push_seq(&mut t, a.seq());
        }
        // The price less every verifier fee the task reserved (paid to the passing verifiers,
        // the rest refunded). From the escrow's original amount, not what remains, so a re-run
        // of this step asks for the same release and the ledger's key recognises it.
        let escrowed = match t.slot() {
            Some(slot) => slot.budget,
            None => self.ledger.escrow_of(&id).map_or(0, |e| e.amount.0),
        };
        // The verifiers the task was planned (and priced) with when it was posted, not today's
        // setting: a config change between post and settlement must not change the release.
        let reserved = t.verifier_fee * (t.plan.verifiers as usize).max(s.verdicts.len()) as u64;
        let a = self
            .settlement_append(
                super::Operation::Release {
                    task: id,
                    attempt: n,
                },
                EntryKind::Release {
                    amount: Credits(escrowed.saturating_sub(reserved)),
                    commitment: Some(s.commitment.clone()),
                    task_id: escrow_task,
                    worker,
                },
            )
            .await?;
        push_seq(&mut t, a.seq());
        self.crash_point()?;
        // A slot-round's pooled task keeps its escrow for the other slot-rounds; it refunds
        // the rest when it ends.
        if t.slot().is_none() {
            if let Some(seq) = self.refund_rest(&t).await? {
                push_seq(&mut t, seq);
            }
        }
        self.crash_point()?;
        self.reputation(&format!("{id}:{n}"), &worker, 1).await?;
        self.crash_point()?;
        let event = format!("{id}:{n}:settled");
        for v in &s.verdicts {
            self.store
                .update_participant(&event, &v.body.verifier, |p| {
                    p.audits += 1;
                    p.audits_passed += 1;
                })?;
        }
        self.crash_point()?;
        self.store
            .update_participant(&event, &worker, |p| p.tasks_done += 1)?;
        self.crash_point()?;
        t.state = TaskState::Settled;
        t.settlement = None;
        self.save(&t)?;
        self.slot_round_done(&t).await;
        Ok(())
    }

    /// An append of the settlement, after which a test may have the node "crash".
    async fn settlement_append(
        &self,
        op: super::Operation<'_>,
        kind: EntryKind,
    ) -> anyhow::Result<market_ledger::Appended> {
        self.crash_point()?;
        let a = self.append(op, kind).await?;
        self.crash_point()?;
        Ok(a)
    }

    /// Fails if a test armed a crash here (see [`Node::crash_settlement_after`]).
    fn crash_point(&self) -> anyhow::Result<()> {
        let mut armed = super::lock(&self.settlement_crash);
        match armed.as_mut() {
            Some(0) => {
                self.settlement_crashed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                anyhow::bail!("injected crash during settlement")
            }
            Some(k) => {
                *k -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Copies an accepted result's outputs into the blob store, owned by the buyer, after
    /// checking them against the commitment: training weights must be the parameters of the
    /// committed final checkpoint, inference items the committed leaves. Nothing the worker
    /// changed after committing can reach the buyer.
    /// A committed result no one can use (its outputs do not follow from its commitment, or
    /// its worker withheld a file of it): the worker is slashed as for a failed audit, with the
    /// commitment as evidence, excluded from the pool, and the task goes back to the queue.
    pub(super) async fn unusable_result(
        &self,
        t: TaskRecord,
        n: usize,
        worker: AccountId,
        evidence: Hash,
        reason: &str,
        event: &str,
    ) -> anyhow::Result<()> {
        self.slash(
            &t,
            n,
            &worker,
            self.config.worker_slash,
            evidence,
            None,
            reason,
            &[],
        )
        .await?;
        self.store
            .update_participant(&format!("{}:{n}:{event}", t.id), &worker, |p| {
                p.tasks_failed += 1;
                p.slashed += 1;
            })?;
        self.requeue_failed(t, n, &worker).await
    }

    /// Marks attempt `n`'s result failed and puts the task back in the queue for another worker
    /// (a pooled task's slot-round also bars that worker from the rest of its pool).
    pub(super) async fn requeue_failed(
        &self,
        mut t: TaskRecord,
        n: usize,
        worker: &AccountId,
    ) -> anyhow::Result<()> {
        t.attempts[n].result_failed = true;
        t.state = TaskState::Queued;
        self.save(&t)?;
        self.exclude_from_pool(&t, worker).await?;
        self.wake();
        Ok(())
    }

    /// Whether attempt `n` of `worker` failed only because the worker no longer keeps the
    /// slot's last final state: it says so (its fetch met the node's refusal of a chunk of a
    /// start held in part), the node did refuse it such a chunk of this start a moment ago
    /// (so the claim comes at the run's start, before any compute, never at its end), the start
    /// is held in part (only the slot's own worker is ever given such a start), and it is the
    /// worker's first attempt at this slot-round.
    fn lost_kept_state(&self, t: &TaskRecord, n: usize, worker: &AccountId, why: &str) -> bool {
        why.contains(market_net::wire::NOT_HELD_BY_NODE)
            && t.slot().is_some_and(|s| {
                let start = BlobId(s.start.0);
                self.blobs.partial().meta(&start).is_some()
                    && self.dispatch.refused_kept_chunk(worker, &start)
            })
            && t.attempts
                .iter()
                .enumerate()
                .all(|(i, a)| i == n || self.current_key(&a.worker) != self.current_key(worker))
    }

    /// [`Self::collect_outputs`] of a slot-round whose final state the node fetched only the
    /// tail of (its parameters, [`crate::partial`]): the entry must be the committed state's,
    /// the tail its chunks, the parameters finite and the committed weights theirs. The state
    /// is then held in part, as the buyer's.
    fn collect_final_tail(
        &self,
        t: &TaskRecord,
        final_path: &Path,
        c: &Commitment,
        layout: &market_compute::zoo::ParamLayout,
    ) -> Result<Vec<BlobId>, OutputError> {
        let mismatch = |s: &str| OutputError::Mismatch(s.to_owned());
        let io = |e: &dyn std::fmt::Display| OutputError::Io(anyhow::anyhow!("{e}"));
        let (data, described) = crate::partial::tail_files(final_path);
        let meta: crate::partial::PartialMeta = std::fs::read(&described)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| mismatch("the final checkpoint was not fetched"))?;
        if market_net::transfer::entry_root(&meta.entry).ok() != Some(c.final_state_hash.0) {
            return Err(mismatch(
                "the final checkpoint is not the committed final state",
            ));
        }
        let tail = crate::partial::read_tail(&data, &meta)
            .ok_or_else(|| mismatch("the final checkpoint's parameters are not its own"))?;
        let params = market_compute::state::param_span(layout, meta.entry.size)
            .and_then(|span| {
                let from = span.start.checked_sub(meta.tail_offset())? as usize;
                let to = (span.end - meta.tail_offset()) as usize;
                tail.get(from..to)
            })
            .map(market_compute::state::params_from_span)
            .ok_or_else(|| mismatch("the final checkpoint is too short for its parameters"))?;
        if params.iter().any(|p| !p.is_finite()) {
            return Err(mismatch("the final state's parameters are not finite"));
        }
        // A canonical final state is its start's size (the same header, tensors and step
        // width) and at the round's last step: the rest of it the node does not hold.
        let slot = t.slot().ok_or_else(|| mismatch("not a slot-round"))?;
        let start = BlobId(slot.start.0);
        let start_size = match self.blobs.partial().meta(&start) {
            Some(m) => Some(m.entry.size),
            None => std::fs::metadata(self.blobs.path(&start))
                .ok()
                .map(|m| m.len()),
        };
        if start_size != Some(meta.entry.size) {
            return Err(mismatch("the final state is not the size of its start"));
        }
        let step = tail
            .last_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b))
            .ok_or_else(|| mismatch("the final checkpoint has no step"))?;
        if Some(step) != slot_round_end(t) {
            return Err(mismatch(&format!(
                "the final state is at step {step}, not at the round's end"
            )));
        }
        let weights =
            market_compute::init::weights_to_bytes(layout, &params).map_err(|e| io(&e))?;
        if c.outputs != vec![BlobId::of(&weights)] {
            return Err(mismatch(
                "the weights are not the parameters of the committed final state",
            ));
        }
        let id = BlobId(c.final_state_hash.0);
        self.store
            .hold_result(&id, &t.spec.body.buyer)
            .map_err(|e| io(&e))?;
        self.blobs
            .partial()
            .put(&id, &meta, &tail)
            .map_err(|e| io(&e))?;
        Ok(vec![id])
    }

    fn collect_outputs(
        &self,
        t: &TaskRecord,
        dir: &Path,
        c: &Commitment,
    ) -> Result<Vec<BlobId>, OutputError> {
        let bundle = market_compute::bundle::Bundle::at(dir);
        let mismatch = |s: String| OutputError::Mismatch(s);
        let io = |e: &dyn std::fmt::Display| OutputError::Io(anyhow::anyhow!("{e}"));
        let leaves = bundle.read_leaves().map_err(|e| io(&e))?;
        if market_protocol::MerkleTree::new(&leaves).root() != c.root {
            return Err(mismatch(
                "the bundle's leaves are not the committed ones".into(),
            ));
        }
        let outputs: Vec<Vec<u8>> = match &t.spec.body.workload {
            Workload::Training(training) => {
                // Only the layout: building the whole job would read (and for a text dataset
                // tokenize) the data, on the async runtime's thread.
                let layout = market_compute::zoo::ModelConfig::from_spec(&training.model)
                    .map_err(|e| io(&e))?
                    .layout();
                let last = leaves
                    .len()
                    .checked_sub(1)
                    .ok_or_else(|| mismatch("no committed leaves".into()))?
                    as u32;
                if c.final_state_hash != leaves[last as usize] {
                    return Err(mismatch(
                        "the final checkpoint is not the committed final state".into(),
                    ));
                }
                let final_path = bundle.checkpoint_path(last);
                // A slot-round whose final state the node fetched in part: settled from that
                // part, whatever a later fetch (a ringer's, of the whole bundle) left beside it.
                if t.slot().is_some() && crate::partial::tail_files(&final_path).1.exists() {
                    return self.collect_final_tail(t, &final_path, c, &layout);
                }
                let state_bytes = std::fs::read(&final_path)
                    .map_err(|e| mismatch(format!("the final checkpoint cannot be read: {e}")))?;
                if StateHash(Hash::of(&state_bytes)) != c.final_state_hash
                    || c.final_state_hash != leaves[last as usize]
                {
                    return Err(mismatch(
                        "the final checkpoint is not the committed final state".into(),
                    ));
                }
                let state = market_compute::TrainState::from_bytes(&state_bytes, &layout)
                    .map_err(|e| mismatch(format!("the final checkpoint is not a state: {e}")))?;
                if let Some(end) = slot_round_end(t) {
                    if state.step != end {
                        return Err(mismatch(format!(
                            "the final state is at step {}, the round ends at {end}",
                            state.step
                        )));
                    }
                }
                let weights = market_compute::init::weights_to_bytes(&layout, &state.params)
                    .map_err(|e| io(&e))?;
                // The weights follow from the final state: the node derives them rather than
                // fetching the worker's copy; the commitment must name exactly them.
                if c.outputs != vec![BlobId::of(&weights)] {
                    return Err(mismatch(
                        "the weights are not the parameters of the committed final state".into(),
                    ));
                }
                if t.slot().is_some() {
                    // A slot-round's result is its whole final state: the merge reads its
                    // parameters, and the slot's next round starts from its moments.
                    vec![state_bytes]
                } else {
                    vec![weights]
                }
            }
            Workload::Inference(_) => {
                let mut items = Vec::with_capacity(leaves.len());
                for (i, leaf) in leaves.iter().enumerate() {
                    let bytes = std::fs::read(bundle.item_path(i as u32))
                        .map_err(|e| mismatch(format!("item {i} cannot be read: {e}")))?;
                    if StateHash(Hash::of(&bytes)) != *leaf
                        || c.outputs.get(i).map(|o| o.0) != Some(leaf.0)
                    {
                        return Err(mismatch(format!("item {i} is not the committed one")));
                    }
                    items.push(bytes);
                }
                items
            }
        };
        let mut ids = Vec::with_capacity(outputs.len());
        for bytes in outputs {
            let id = BlobId::of(&bytes);
            let buyer = &t.spec.body.buyer;
            // Owned by whoever uploaded the same bytes first, if anyone did; held by the
            // buyer in any case, and kept for good. Pinned before the file is written: an
            // upload of the same bytes expiring meanwhile either goes first (and the write
            // below finds no file) or finds the pin.
            self.store.hold_result(&id, buyer).map_err(|e| io(&e))?;
            self.blobs.put(&bytes).map_err(|e| io(&e))?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// A worker that accepted attempt `n` and produced no usable result (no commitment, or one
    /// that does not match the task): it loses stake and reputation, so failing costs, and the
    /// task goes back to the queue for another worker.
    pub(super) async fn abandoned(
        &self,
        mut t: TaskRecord,
        n: usize,
        worker: AccountId,
        why: &str,
    ) -> anyhow::Result<()> {
        if let Some(step) = divergence_claim(why) {
            // Recorded first: whatever happens during the check, the reporter is not handed
            // this task again.
            t.attempts[n].divergence_claim = Some(step);
            self.save(&t)?;
            match self.task_diverges(&t, step, why).await? {
                Divergence::Confirmed(divergence) => {
                    // The task's own fault, confirmed by the node's run: nobody is slashed.
                    tracing::warn!(task = %t.id, %divergence, "the task diverges; rejected");
                    return self
                        .reject(t, format!("the task diverges: {divergence}"))
                        .await;
                }
                Divergence::Unchecked(steps) => {
                    // The node cannot judge it: not held against the worker, which does not
                    // get the task again (PROTOCOL "Divergence"; a known cost: a worker may so
                    // leave a `native` task unslashed).
                    tracing::warn!(task = %t.id, %worker, steps, "a reported divergence the node cannot judge (too far in, too large, or not reproducible in this profile); the task goes to another worker");
                    t.state = TaskState::Queued;
                    self.save(&t)?;
                    self.wake();
                    return Ok(());
                }
                Divergence::Refuted => {}
            }
        }
        if self.lost_kept_state(&t, n, &worker, why) {
            // A slot's worker that no longer keeps its last final state cannot assemble a
            // start held in part; not its fault the first time. The next run of the slot gets
            // the start whole (`slot_states`), so the claim is honoured once per slot-round.
            tracing::warn!(task = %t.id, %worker, error = %why, "the slot's worker lost its kept state; the slot goes on without slashing it");
            t.attempts[n].excused = true;
            t.state = TaskState::Queued;
            self.save(&t)?;
            self.wake();
            return Ok(());
        }
        tracing::warn!(task = %t.id, %worker, error = %why, "worker produced no usable result");
        let evidence = super::operations::abandon_evidence(&t.id, n, &worker);
        // Paid to the operator, not the buyer: a buyer must never profit from workers failing
        // its task.
        self.slash_to(
            &t,
            n,
            &worker,
            self.config.abandon_slash,
            evidence,
            None,
            "accepted a task and produced no usable result",
            &[],
            &self.operator.account(),
        )
        .await?;
        self.store
            .update_participant(&format!("{}:{n}:abandoned", t.id), &worker, |p| {
                p.tasks_failed += 1;
                p.slashed += 1;
            })?;
        t.state = TaskState::Queued;
        self.save(&t)?;
        self.wake();
        Ok(())
    }

    /// Slashes `amount` (at most the stake) of `account`: a fee to each of `to` and the rest to
    /// the task's buyer, with `evidence` (a verdict's id, with the verdict when there is one);
    /// and a reputation penalty.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn slash(
        &self,
        t: &TaskRecord,
        n: usize,
        account: &AccountId,
        amount: u64,
        evidence: Hash,
        verdict: Option<&Signed<Verdict>>,
        reason: &str,
        to: &[AccountId],
    ) -> anyhow::Result<()> {
        let buyer = t.spec.body.buyer;
        self.slash_to(t, n, account, amount, evidence, verdict, reason, to, &buyer)
            .await
    }

    /// [`Node::slash`] with the rest paid to `rest_to` instead of the buyer.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn slash_to(
        &self,
        t: &TaskRecord,
        n: usize,
        account: &AccountId,
        amount: u64,
        evidence: Hash,
        verdict: Option<&Signed<Verdict>>,
        reason: &str,
        to: &[AccountId],
        rest_to: &AccountId,
    ) -> anyhow::Result<()> {
        self.slash_tagged(
            t, n, account, amount, evidence, verdict, reason, to, rest_to, reason,
        )
        .await?;
        // Its own key per reason: a verifier slashed twice in one attempt loses reputation
        // twice, and a -5 never shares a key with the +1 of an accepted attempt.
        self.reputation(&format!("{}:{n}:slash:{reason}", t.id), account, -5)
            .await
    }

    /// [`Node::slash`] without the reputation penalty: a fee to each of `to` (but the buyer),
    /// the rest to `rest_to`; its ledger keys told apart by `tag`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn slash_tagged(
        &self,
        t: &TaskRecord,
        n: usize,
        account: &AccountId,
        amount: u64,
        evidence: Hash,
        verdict: Option<&Signed<Verdict>>,
        reason: &str,
        to: &[AccountId],
        rest_to: &AccountId,
        tag: &str,
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.slashing.lock().await;
        let mut left = amount.min(self.stake(account));
        let mut payees: Vec<(AccountId, u64)> = to
            .iter()
            .filter(|a| **a != t.spec.body.buyer)
            .map(|a| (*a, t.verifier_fee))
            .collect();
        payees.push((*rest_to, u64::MAX));
        for (payee, share) in payees {
            let x = share.min(left);
            if x == 0 {
                continue;
            }
            left -= x;
            let appended = self.append(
                super::Operation::Slash {
                    task: t.id,
                    attempt: n,
                    account: *account,
                    payee,
                    tag,
                },
                EntryKind::Slash {
                    account: *account,
                    amount: Credits(x),
                    evidence,
                    reason: reason.into(),
                    to: payee,
                    verdict: verdict.cloned(),
                },
            );
            match appended.await {
                Ok(_) => {}
                // Already slashed for this, before a restart, with what the stake or the
                // evidence were then: done, not to be taken twice nor to wedge the task.
                Err(e)
                    if matches!(
                        e.downcast_ref::<market_ledger::LedgerError>(),
                        Some(market_ledger::LedgerError::KeyConflict { .. })
                    ) =>
                {
                    tracing::info!(%account, %payee, "slash already recorded before a restart");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) async fn reputation(
        &self,
        k: &str,
        account: &AccountId,
        delta: i64,
    ) -> anyhow::Result<()> {
        self.append(
            super::Operation::Reputation {
                event: k,
                account: *account,
            },
            EntryKind::Reputation {
                account: *account,
                delta,
            },
        )
        .await?;
        Ok(())
    }

    pub(super) async fn reject(&self, mut t: TaskRecord, reason: String) -> anyhow::Result<()> {
        // A slot-round has no escrow of its own (`refund_rest` finds none): its pooled task
        // refunds when it ends, which this rejection brings about.
        if let Some(seq) = self.refund_rest(&t).await? {
            push_seq(&mut t, seq);
        }
        t.state = TaskState::Rejected { reason };
        self.save(&t)?;
        self.slot_round_done(&t).await;
        Ok(())
    }

    pub(super) async fn refund_rest(&self, t: &TaskRecord) -> anyhow::Result<Option<u64>> {
        let Some(escrow) = self.ledger.escrow_of(&t.id) else {
            return Ok(None);
        };
        if escrow.remaining.0 == 0 {
            return Ok(None);
        }
        let a = self
            .append(
                super::Operation::Refund { task: t.id },
                EntryKind::Refund {
                    amount: escrow.remaining,
                    buyer: t.spec.body.buyer,
                    task_id: t.id,
                },
            )
            .await?;
        Ok(Some(a.seq()))
    }
}

fn push_seq(t: &mut TaskRecord, seq: u64) {
    if !t.ledger_seqs.contains(&seq) {
        t.ledger_seqs.push(seq);
    }
}
