//! Audits of served answers, batch by batch.
//!
//! Each answer the node takes is escrowed from its buyer at once and goes into its worker's
//! open batch. A batch closes at `serve_batch_answers` answers or `serve_batch_secs` after its
//! first; it is then named by the Merkle root of its leaves (each the message id of a signed
//! [`market_protocol::Answer`]), and only then does the operator draw its beacon (ECVRF over
//! the root, `market_protocol::beacon::prove_batch_beacon`), from which the audited answers are
//! sampled: the worker signed every answer before the draw could be known. Each sampled answer
//! is checked by one forward pass against its request (the check a verifier makes of a posted
//! task's item, bit for bit in `repro`). A batch whose sampled answers all pass pays its worker
//! each answer's cost; a batch with one failure refunds every answer in it to its buyer and
//! slashes the worker (to the buyer of the failing answer). Every step is an idempotent ledger
//! operation, so a batch interrupted by a restart is audited and settled once when the node
//! comes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use market_compute::serving::ServedModel;
use market_ledger::EntryKind;
use market_protocol::beacon::prove_batch_beacon;
use market_protocol::sampling::sample_indices;
use market_protocol::{BlobId, ChallengeSeed, Credits, ExecutionProfile, Hash, TaskId, Workload};

use crate::auth::unix_now;
use crate::engine::{Node, Operation};
use crate::store::{BatchStatus, ServeBatch};

/// How often open batches are looked at.
pub const TICK: Duration = Duration::from_millis(500);

/// How many of a batch's `n` answers are checked for a share of `ppm` parts per million: the
/// share rounded up, at least one, at most all.
pub fn audited(n: usize, ppm: u32) -> usize {
    let k = (n as u64 * u64::from(ppm)).div_ceil(1_000_000) as usize;
    k.clamp(1, n.max(1)).min(n)
}

/// The chance a batch of `n` answers with `faked` of them faked is caught when `k` are
/// checked: one minus the chance every checked answer is honest (hypergeometric).
pub fn catch_chance(n: usize, faked: usize, k: usize) -> f64 {
    if faked == 0 {
        return 0.0;
    }
    let mut miss = 1.0;
    for i in 0..k.min(n) {
        miss *= (n - faked.min(n)).saturating_sub(i) as f64 / (n - i) as f64;
        if miss == 0.0 {
            break;
        }
    }
    1.0 - miss
}

/// Models loaded for checking, by weights and profile (loading one costs seconds).
#[derive(Default)]
pub(crate) struct Checkers {
    loaded: std::sync::Mutex<BTreeMap<(BlobId, String), Arc<ServedModel>>>,
}

impl Checkers {
    fn get(
        &self,
        node: &Node,
        blob: BlobId,
        profile: ExecutionProfile,
    ) -> Result<Arc<ServedModel>, String> {
        let key = (blob, format!("{profile:?}"));
        if let Some(m) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(m.clone());
        }
        let bytes = node
            .blobs
            .read(&blob)
            .ok_or_else(|| format!("the node no longer holds model {blob}"))?;
        let model = Arc::new(
            ServedModel::load(&bytes, profile, node.operator.account())
                .map_err(|e| e.to_string())?,
        );
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, model.clone());
        Ok(model)
    }
}

/// Closes the batches that are due and audits every closed batch not yet settled; runs until
/// the node stops.
pub async fn run(node: Arc<Node>) {
    let started = unix_now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        if let Err(e) = once(&node, started).await {
            tracing::error!(error = %e, "auditing served answers");
        }
    }
}

/// One pass: settles the holds of requests an earlier run of the node left in flight (the
/// answer's cost stays escrowed if it was recorded, the rest goes back), closes due batches,
/// then audits and settles every batch still auditing.
pub async fn once(node: &Arc<Node>, started: u64) -> anyhow::Result<()> {
    for receipt in node.store.holds_before(started)? {
        let keep = node.store.served_receipt(&receipt)?.map_or(0, |r| r.cost);
        crate::api::openai::release_unused(node, &receipt, keep).await?;
    }
    let now = unix_now();
    let cfg = &node.config;
    let max = cfg.serve_batch_len();
    for (worker, open) in node.store.open_batches()? {
        // Full batches of `max` (answers that came faster than the tick make several), then
        // what is left once it is old enough.
        let due = now >= open.opened + cfg.serve_batch_secs;
        let mut left = open.answers.len();
        while left >= max || (due && left > 0) {
            if node.store.close_batch(&worker, now, max)?.is_none() {
                break;
            }
            left -= left.min(max);
        }
    }
    for batch in node.store.batches_auditing()? {
        let root = batch.root;
        if let Err(e) = audit(node, batch).await {
            tracing::error!(batch = %root, error = %e, "a served batch's audit");
        }
    }
    Ok(())
}

/// Audits one closed batch and settles it.
async fn audit(node: &Arc<Node>, mut batch: ServeBatch) -> anyhow::Result<()> {
    // An answer's escrow holds exactly its cost once the rest of its hold went back; a batch
    // waits until every answer's has (a tick or two), so it pays or refunds only the cost.
    for (answer, _) in &batch.answers {
        if node.store.has_hold(answer)? {
            return Ok(());
        }
    }
    let (beacon, proof) = match batch.beacon {
        Some(b) => b,
        None => {
            let drawn = prove_batch_beacon(&node.operator, &batch.root);
            let n = batch.answers.len() as u32;
            let k = audited(batch.answers.len(), node.config.serve_audit_ppm) as u32;
            batch.sampled = sample_indices(&ChallengeSeed(drawn.0 .0), n, k)?;
            batch.beacon = Some(drawn);
            node.store.save_batch(&batch)?;
            drawn
        }
    };
    let _ = (beacon, proof);
    let mut receipts = Vec::with_capacity(batch.answers.len());
    for &(answer, _) in &batch.answers {
        let receipt = node
            .store
            .served_receipt(&answer)?
            .ok_or_else(|| anyhow::anyhow!("receipt {answer} is missing"))?;
        receipts.push((answer, receipt));
    }
    let mut failure = None;
    // Every answer's bill is checked, not only the sampled ones: counting a prompt's tokens
    // costs no forward pass, and a worker that signs more than it used would overcharge.
    for (answer, receipt) in &receipts {
        let answer = *answer;
        let signed = receipt.answer.verify()?.prompt_tokens;
        let blob = weights_of(&receipt.request)?;
        let (n, task) = (node.clone(), receipt.request.clone());
        let counted = tokio::task::spawn_blocking(move || {
            let model = n.serving.checkers.get(&n, blob, task.profile)?;
            model.prompt_tokens(&task).map_err(|e| e.to_string())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("counting answer {answer}'s prompt: {e}"))?;
        if signed != counted {
            failure = Some((
                answer,
                receipt.request.buyer,
                format!("it bills {signed} prompt tokens, the prompt has {counted}"),
            ));
            break;
        }
    }
    for &i in &batch.sampled {
        if failure.is_some() {
            break;
        }
        let (answer, receipt) = &receipts[i as usize];
        let answer = *answer;
        let blob = weights_of(&receipt.request)?;
        let (n, task, record) = (
            node.clone(),
            receipt.request.clone(),
            receipt.record.clone(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let model = n.serving.checkers.get(&n, blob, task.profile)?;
            model
                .check(&task, record.as_bytes())
                .map_err(|e| format!("the request cannot be run: {e}"))
        })
        .await?;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                failure = Some((answer, receipt.request.buyer, why));
                break;
            }
            // A request the node's own code cannot run is nobody's fault that can be shown:
            // the batch waits (and the error is logged) rather than blame the worker.
            Err(e) => anyhow::bail!("checking answer {answer}: {e}"),
        }
    }
    match failure {
        None => settle_passed(node, &mut batch).await?,
        Some((answer, victim, why)) => {
            settle_failed(node, &mut batch, answer, victim, &why).await?
        }
    }
    node.store.save_batch(&batch)?;
    Ok(())
}

/// The weights a served request names.
fn weights_of(task: &market_protocol::TaskSpec) -> anyhow::Result<BlobId> {
    match &task.workload {
        Workload::Inference(inf) => inf
            .weights
            .ok_or_else(|| anyhow::anyhow!("a served request names no weights")),
        Workload::Training(_) => anyhow::bail!("a served request is no inference"),
    }
}

async fn settle_passed(node: &Arc<Node>, batch: &mut ServeBatch) -> anyhow::Result<()> {
    for (answer, _) in batch.answers.clone() {
        let Some(escrow) = node.ledger.escrow_of(&answer) else {
            continue;
        };
        if escrow.remaining.0 == 0 {
            continue;
        }
        let a = node
            .append(
                Operation::ServeRelease { answer },
                EntryKind::Release {
                    amount: escrow.remaining,
                    commitment: None,
                    task_id: answer,
                    worker: batch.worker,
                },
            )
            .await?;
        push(&mut batch.ledger, a.seq());
    }
    batch.status = BatchStatus::Verified;
    tracing::info!(batch = %batch.root, answers = batch.answers.len(), "served batch verified");
    Ok(())
}

async fn settle_failed(
    node: &Arc<Node>,
    batch: &mut ServeBatch,
    answer: TaskId,
    victim: market_protocol::AccountId,
    why: &str,
) -> anyhow::Result<()> {
    for (a, _) in batch.answers.clone() {
        let Some(escrow) = node.ledger.escrow_of(&a) else {
            continue;
        };
        if escrow.remaining.0 == 0 {
            continue;
        }
        let e = node
            .append(
                Operation::ServeRefund { answer: a },
                EntryKind::Refund {
                    amount: escrow.remaining,
                    buyer: escrow.buyer,
                    task_id: a,
                },
            )
            .await?;
        push(&mut batch.ledger, e.seq());
    }
    let stake = node.ledger.stake(&batch.worker).0;
    let amount = node.config.worker_slash.min(stake);
    if amount > 0 {
        let evidence = failure_evidence(&batch.root, &answer);
        let appended = node
            .append(
                Operation::ServeSlash {
                    batch: batch.root,
                    payee: victim,
                },
                EntryKind::Slash {
                    account: batch.worker,
                    amount: Credits(amount),
                    evidence,
                    reason: format!("served answer {answer} failed its check: {why}"),
                    to: victim,
                    verdict: None,
                },
            )
            .await;
        match appended {
            Ok(a) => push(&mut batch.ledger, a.seq()),
            // Slashed before a restart, when the stake was other: done.
            Err(e) => tracing::warn!(error = %e, "a served batch's slash"),
        }
    }
    batch.status = BatchStatus::Failed;
    batch.failure = Some(format!("answer {answer}: {why}"));
    tracing::warn!(batch = %batch.root, worker = %batch.worker, %why, "served batch failed");
    Ok(())
}

/// The evidence of a failed batch's slash: `blake3("serve_failed:" ROOT ":" ANSWER)`, ids in
/// lowercase hex, so anyone reading the export can tie the slash to the batch and the answer.
pub fn failure_evidence(root: &Hash, answer: &TaskId) -> Hash {
    Hash::of(format!("serve_failed:{root}:{answer}").as_bytes())
}

fn push(seqs: &mut Vec<u64>, seq: u64) {
    if !seqs.contains(&seq) {
        seqs.push(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_a_share_rounded_up_and_never_empty() {
        assert_eq!(audited(32, 250_000), 8);
        assert_eq!(audited(33, 250_000), 9);
        assert_eq!(audited(1, 1), 1);
        assert_eq!(audited(5, 1_000_000), 5);
        assert_eq!(audited(0, 250_000), 0);
    }

    #[test]
    fn the_catch_chance_is_hypergeometric() {
        assert_eq!(catch_chance(32, 0, 8), 0.0);
        assert!((catch_chance(32, 32, 1) - 1.0).abs() < 1e-12);
        // One faked answer in 4, 2 checked: 1 - (3/4)(2/3) = 1/2.
        assert!((catch_chance(4, 1, 2) - 0.5).abs() < 1e-12);
        assert!(catch_chance(32, 8, 8) > 0.9);
        // The largest batch a node runs: one faked answer in it, a quarter checked.
        let n = crate::config::MAX_SERVE_BATCH_ANSWERS;
        assert!((catch_chance(n, 1, audited(n, 250_000)) - 0.25).abs() < 1e-9);
        // A configured batch length beyond the cap is the cap (a plan of usize::MAX answers
        // took the API thread for minutes before).
        let config = crate::config::NodeConfig {
            serve_batch_answers: usize::MAX,
            ..Default::default()
        };
        assert_eq!(config.serve_batch_len(), n);
    }
}
