//! Checking served answers: the node hands a verifier one answer drawn for audit from a serving
//! worker's batch; the verifier makes sure the node neither chose nor changed it (the batch
//! beacon's proof under the operator's key, the answer's place among the beacon's samples, its
//! Merkle path to the batch root, the worker's signature over the record's hash), then runs the
//! model once over the prompt and the answer, and signs what it found.

use market_compute::serving::ServedModel;
use market_net::wire::AnswerCheckJob;
use market_protocol::beacon::verify_batch_beacon;
use market_protocol::sampling::sample_indices;
use market_protocol::{
    message_id, AccountId, AnswerCheck, AnswerCheckOutcome, BlobId, ChallengeSeed, Hash, Identity,
    MerkleProof, Signed, StateHash, Version, Workload,
};

/// How a verifier treats the answers it is asked to check (dishonest ones exist to test the
/// referee and ringers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFault {
    /// Signs a pass of every answer without running anything.
    Lazy,
    /// Signs a failure of every answer without running anything.
    Liar,
    /// Takes its first check and never answers it (as a verifier that went away mid-check),
    /// then checks honestly.
    SilentOnce,
}

/// The weights a served request names.
pub fn weights_of(job: &AnswerCheckJob) -> anyhow::Result<BlobId> {
    match &job.request.workload {
        Workload::Inference(inf) => inf
            .weights
            .ok_or_else(|| anyhow::anyhow!("a served request names no weights")),
        Workload::Training(_) => anyhow::bail!("a served request is no inference"),
    }
}

/// Checks that `job` is what `operator`'s node may ask: an answer its batch beacon sampled, in
/// the batch, signed by the batch's worker for this request, this model and this record.
/// Returns the answer's leaf. An error here is the node's (the verifier signs nothing).
pub fn check_job(operator: &AccountId, job: &AnswerCheckJob) -> anyhow::Result<Hash> {
    anyhow::ensure!(
        job.answers <= market_net::wire::MAX_BATCH_ANSWERS && job.sampled <= job.answers,
        "a batch of {} answers with {} sampled",
        job.answers,
        job.sampled
    );
    let beacon = verify_batch_beacon(operator, &job.batch, &job.beacon_proof)
        .map_err(|e| anyhow::anyhow!("the batch beacon's proof does not verify: {e}"))?;
    anyhow::ensure!(
        beacon == job.beacon,
        "the beacon is not the one the node's proof gives"
    );
    let sampled = sample_indices(&ChallengeSeed(beacon.0), job.answers, job.sampled)?;
    anyhow::ensure!(
        sampled.contains(&job.index),
        "answer {} is not among the batch beacon's samples",
        job.index
    );
    let answer = job.answer.verify()?;
    anyhow::ensure!(
        answer.worker == job.worker,
        "the answer is not the batch worker's"
    );
    let leaf = job.answer.id()?;
    MerkleProof {
        leaf_index: u64::from(job.index),
        tree_size: u64::from(job.answers),
        path: job.proof.clone(),
    }
    .verify(leaf.as_bytes(), &job.batch)
    .map_err(|e| anyhow::anyhow!("the answer is not in the batch: {e}"))?;
    anyhow::ensure!(
        answer.request.0 == message_id(&job.request)?,
        "the answer is to another request"
    );
    anyhow::ensure!(
        answer.model == weights_of(job)?,
        "the answer names other weights than the request"
    );
    anyhow::ensure!(
        answer.output == StateHash(Hash::of(job.record.as_bytes())),
        "the record is not the one the worker signed"
    );
    Ok(leaf)
}

/// What checking the answer of `job` with `model` finds: the billed prompt tokens, then one
/// forward pass over the prompt and the answer.
pub fn outcome(model: &ServedModel, job: &AnswerCheckJob) -> anyhow::Result<AnswerCheckOutcome> {
    let billed = job.answer.body.prompt_tokens;
    let counted = model.prompt_tokens(&job.request)?;
    if billed != counted {
        return Ok(AnswerCheckOutcome::Fail {
            detail: format!("it bills {billed} prompt tokens, the prompt has {counted}"),
        });
    }
    Ok(match model.check(&job.request, job.record.as_bytes())? {
        Ok(()) => AnswerCheckOutcome::Pass,
        Err(detail) => AnswerCheckOutcome::Fail { detail },
    })
}

/// Signs the check of answer `leaf` of `job`.
pub fn sign(
    identity: &Identity,
    job: &AnswerCheckJob,
    leaf: Hash,
    outcome: AnswerCheckOutcome,
) -> anyhow::Result<Signed<AnswerCheck>> {
    Ok(Signed::sign(
        AnswerCheck {
            version: Version::CURRENT,
            verifier: identity.account(),
            batch: job.batch,
            index: job.index,
            answer: leaf,
            outcome,
        },
        identity,
    )?)
}
