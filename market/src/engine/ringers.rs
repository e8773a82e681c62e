//! Ringers keep verifiers honest: at the configured rate (decided from the beacon's stream, so
//! no verifier can predict it) an eligible verifier is also handed a bundle the node knows is
//! wrong, while the real audits of the same result run. A verifier that passes it is slashed
//! with its own verdict as evidence.
//!
//! A ringer looks like real work from what the verifier is sent: the real task, a commitment
//! signed by a key of its own (derived per ringer, so no two ringers share a signer), a beacon
//! that is the operator's VRF output over the ringer's commitment id with its proof, and the
//! same request shape. What it cannot hide is that its commitment is not in the public ledger
//! (see the threat model in `spec/PROTOCOL.md`).

use std::path::Path;

use market_protocol::{
    AccountId, Beacon, CommitmentId, Hash, Identity, Signed, TaskId, TaskSpec, VerdictOutcome,
    Workload,
};

use super::Node;
use crate::audit_plan::AuditPlan;
use crate::dispatch::AuditRequest;
use crate::model::TaskRecord;

impl Node {
    /// Plants ringers for attempt `n` on verifiers of `pool` (every eligible verifier but the
    /// worker, in draw order: the first `plan.verifiers` are asked for the real audit), each
    /// with probability `ringer_rate_ppm`, while the real audits run.
    pub(super) async fn plant_ringers(
        &self,
        t: &TaskRecord,
        n: usize,
        dir: &Path,
        beacon: &Beacon,
        plan: &AuditPlan,
        pool: &[AccountId],
    ) -> anyhow::Result<()> {
        if self.config.ringer_rate_ppm == 0
            || !matches!(t.spec.body.workload, Workload::Training(_))
        {
            return Ok(());
        }
        // Verifiers not drawn for the real audit first: to them a ringer is usually the one
        // audit of this task they get, as real work is (unless one drawn before them is silent
        // or lies and they stand in). Only a market with no verifier to spare plants on the
        // drawn ones (which then see two audits of one task).
        let wanted = plan.verifiers as usize;
        let targets = if pool.len() > wanted {
            &pool[wanted..]
        } else {
            pool
        };
        let draws = market_protocol::sampling::ringer_draws(
            beacon,
            self.config.ringer_rate_ppm,
            targets.len(),
        );
        if !draws.contains(&true) {
            return Ok(());
        }
        // A ringer is made from every checkpoint of the real result: the node, which holds
        // only what audits read, fetches the rest first. Only the worker's audits can fail it
        // for a missing file; a ringer that cannot be made is skipped.
        if let Err(e) = self.fetch_files(dir, None).await {
            tracing::warn!(task = %t.id, error = %e, "no ringer: the whole result could not be fetched");
            return Ok(());
        }
        for (&v, _) in targets.iter().zip(draws).filter(|(_, planted)| *planted) {
            let ringer_dir = dir.with_extension(format!("ringer-{v}"));
            let ringer_key = ringer_key(&self.operator, &t.id, n, &v);
            let (src, dst, task, blobs) = (
                dir.to_owned(),
                ringer_dir.clone(),
                t.spec.body.clone(),
                self.blobs.clone(),
            );
            let made = tokio::task::spawn_blocking(move || {
                make_ringer(&task, &src, &dst, &ringer_key, &blobs)
            })
            .await?;
            let ringer_id = match made {
                Ok(id) => id,
                Err(e) => {
                    // A ringer the node cannot make is skipped; it never costs the task anything.
                    tracing::warn!(error = %e, "could not make a ringer");
                    let _ = std::fs::remove_dir_all(&ringer_dir);
                    continue;
                }
            };
            let (ringer_beacon, beacon_proof) =
                market_protocol::beacon::prove_beacon(&self.operator, &ringer_id);
            let request = AuditRequest {
                beacon: ringer_beacon,
                beacon_proof,
                verifiers: plan.verifiers as u32,
                rerun_estimate: super::audit::audit_work_estimate(t, n, plan, &self.blobs),
            };
            let verdict = self.request_audit(&v, &ringer_dir, &request).await;
            let _ = std::fs::remove_dir_all(&ringer_dir);
            match verdict {
                // A pass of this very ringer, by this verifier: the evidence proves the pass.
                Ok(verdict)
                    if verdict.verify().is_ok()
                        && verdict.body.verifier == v
                        && verdict.body.commitment_id == ringer_id
                        && verdict.body.outcome == VerdictOutcome::Pass =>
                {
                    tracing::warn!(verifier = %v, "verifier passed a ringer: slashed");
                    self.slash(
                        t,
                        n,
                        &v,
                        self.config.verifier_slash,
                        verdict.id()?,
                        Some(&verdict),
                        "passed a planted faulty bundle (ringer)",
                        &[],
                    )
                    .await?;
                    self.store.update_participant(
                        &format!("ringer:{}", verdict.id()?),
                        &v,
                        |p| p.slashed += 1,
                    )?;
                }
                Ok(_) => tracing::debug!(verifier = %v, "ringer caught"),
                Err(e) => {
                    tracing::warn!(verifier = %v, error = %e, "verifier failed to audit a ringer")
                }
            }
        }
        Ok(())
    }
}

/// A signer of its own for each ringer (task, attempt, verifier), derived from the operator
/// key: unlinkable to other ringers, reproducible by the operator (to show later that it was
/// one).
pub fn ringer_key(operator: &Identity, task: &TaskId, n: usize, v: &AccountId) -> Identity {
    let mut h = blake3::Hasher::new_derive_key("market v1 ringer worker key");
    h.update(&operator.secret_bytes());
    h.update(task.0.as_bytes());
    h.update(&(n as u64).to_le_bytes());
    h.update(v.as_bytes());
    Identity::from_secret_bytes(*h.finalize().as_bytes())
}

/// Makes a ringer from a real training bundle and returns its commitment id: every checkpoint
/// after the first has its parameters moved by `±c` (the sign alternating from one checkpoint
/// to the next), the leaves, root, final state and weights recomputed and the commitment
/// re-signed by `key`. Every proof checks out, but no segment re-executes to its committed end:
/// with alternating signs a segment's end is off by about `2c` from where its start leads, so
/// even the tolerance of the `native` profile cannot absorb it (`c` is a quarter of the
/// parameters' root mean square, at least 0.01).
pub fn make_ringer(
    task: &TaskSpec,
    src: &Path,
    dst: &Path,
    key: &Identity,
    blobs: &dyn market_compute::BlobSource,
) -> anyhow::Result<CommitmentId> {
    use market_compute::bundle::Bundle;
    let job = market_compute::TrainingJob::from_spec(task, blobs)?;
    let (from, to) = (Bundle::at(src), Bundle::at(dst));
    let _ = std::fs::remove_dir_all(dst);
    to.create()?;
    to.write_task(task)?;
    let mut leaves = from.read_leaves()?;
    let mut last_params = Vec::new();
    for i in 0..leaves.len() as u32 {
        let mut bytes = std::fs::read(from.checkpoint_path(i))?;
        if i > 0 {
            let mut state = market_compute::TrainState::from_bytes(&bytes, &job.layout)?;
            let count = state.params.len().max(1) as f64;
            let rms = (state
                .params
                .iter()
                .map(|p| f64::from(*p) * f64::from(*p))
                .sum::<f64>()
                / count)
                .sqrt();
            let c = (0.25 * rms).max(0.01) as f32;
            let signed = if i % 2 == 1 { -c } else { c };
            state.params.iter_mut().for_each(|p| *p += signed);
            bytes = state.to_bytes(&job.layout)?;
            leaves[i as usize] = market_protocol::StateHash(Hash::of(&bytes));
            last_params = state.params.clone();
        }
        to.write(&to.checkpoint_path(i), &bytes)?;
    }
    let weights = market_compute::init::weights_to_bytes(&job.layout, &last_params)?;
    to.write(&to.weights_path(), &weights)?;
    let mut commitment = from.read_commitment()?.body;
    commitment.worker = key.account();
    commitment.root = market_protocol::MerkleTree::new(&leaves).root();
    commitment.final_state_hash = *leaves
        .last()
        .unwrap_or(&market_protocol::StateHash::default());
    commitment.outputs = vec![market_protocol::BlobId::of(&weights)];
    to.write_leaves(&leaves)?;
    let signed = Signed::sign(commitment, key)?;
    to.write_commitment(&signed)?;
    Ok(CommitmentId(signed.id()?))
}
