//! One audit of a result bundle.

use std::str::FromStr;

use market_compute::bundle::{Bundle, BundleError};
use market_compute::state::MAX_STATE_BYTES;
use market_compute::tolerance::segment_matches;
use market_compute::{BlobSource, InferenceJob, TrainState, TrainingJob};
use market_protocol::detection::{
    audited_runs, detection_probability, faked_segments, plan_for_runs, samples_for_target,
};
use market_protocol::{
    message_id, AccountId, Beacon, Challenge, ChallengeId, Commitment, CommitmentId, Decimal,
    ExecutionProfile, FailureReason, Hash, Identity, MerkleTree, SegmentCheck, Signed, StateHash,
    TaskId, TaskSpec, Verdict, VerdictOutcome, Version, Workload,
};

/// How many segments to sample.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplePolicy {
    /// Exactly this many (capped at the segment count).
    Count(u32),
    /// Every segment.
    All,
    /// The fewest that catch a worker faking `assumed_faked` of the segments with probability
    /// at least `target`.
    Detect {
        /// Target detection probability, e.g. 0.99.
        target: Decimal,
        /// Assumed faked fraction, e.g. 0.1.
        assumed_faked: Decimal,
    },
    /// The task's own audit policy (its detection target and assumed faked fraction), met by
    /// `verifiers` verifiers together, each drawing its own sample
    /// (`market_protocol::detection::plan_samples`). What a node asks for: the verifier
    /// derives its sample size itself from the buyer's signed task, never taking a count.
    Plan {
        /// How many verifiers audit the commitment, each with its own sample.
        verifiers: u32,
    },
}

impl FromStr for SamplePolicy {
    type Err = String;
    /// `all` or a number (for `--samples`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(Self::All);
        }
        s.parse()
            .map(Self::Count)
            .map_err(|_| format!("{s:?} is neither a number nor `all`"))
    }
}

/// Input an audit cannot work with (exit code 2): nothing about the worker is concluded.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The bundle is missing a file the audit needs first, or it is malformed.
    #[error("unusable bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The commitment's signature does not verify (or names another author).
    #[error("the commitment's signature is not valid: {0}")]
    Signature(#[from] market_protocol::SignatureError),
    /// The task itself cannot run.
    #[error("the task cannot be run: {0}")]
    Task(#[from] market_compute::ComputeError),
    /// The sampling policy cannot be met.
    #[error("{0}")]
    Policy(String),
}

/// The result of an audit.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// The signed verdict.
    pub verdict: Signed<Verdict>,
    /// The challenge answered.
    pub challenge: Challenge,
    /// The detection probability of this challenge against the policy's assumed cheater, if
    /// the policy named one.
    pub detection_probability: Option<f64>,
    /// Steps (training) or items (inference) re-executed.
    pub rerun: u64,
    /// Steps or items the worker ran.
    pub total: u64,
}

impl AuditReport {
    /// Whether the verdict is a pass.
    pub fn passed(&self) -> bool {
        self.verdict.body.outcome == VerdictOutcome::Pass
    }
}

struct Failure {
    segment: u32,
    step: Option<u32>,
    reason: FailureReason,
    detail: String,
}

fn fail(segment: u32, reason: FailureReason, detail: impl Into<String>) -> Failure {
    Failure {
        segment,
        step: None,
        reason,
        detail: detail.into(),
    }
}

/// Audits the bundle against `beacon`. Returns a signed verdict (pass or fail) or, when the
/// input is unusable, an error.
pub fn audit(
    bundle: &Bundle,
    beacon: Beacon,
    policy: &SamplePolicy,
    identity: &Identity,
    blobs: &dyn BlobSource,
) -> Result<AuditReport, AuditError> {
    let task = bundle.read_task()?;
    let signed = bundle.read_commitment()?;
    let commitment = signed.verify()?.clone();
    let commitment_id = CommitmentId(signed.id().map_err(market_protocol::SignatureError::from)?);
    let n = commitment.segments;
    // Sized from the task, never from what the worker claims: a commitment with another
    // segment count fails check 2 before anything is sampled.
    let (samples, detection) = if u64::from(n) == task_segments(&task, blobs)? {
        sample_count(&task, n, policy)?
    } else {
        (0, None)
    };
    let challenge = challenge_for(identity.account(), &signed, beacon, samples)?;
    let mut checked = Vec::new();
    let mut rerun = 0u64;
    let total;
    let outcome = match &task.workload {
        Workload::Training(_) => {
            total = u64::from(commitment.steps);
            check_training(
                bundle,
                &task,
                &commitment,
                &challenge.sampled,
                blobs,
                &mut checked,
                &mut rerun,
            )?
        }
        Workload::Inference(_) => {
            total = u64::from(n);
            check_inference(
                bundle,
                &task,
                &commitment,
                &challenge,
                blobs,
                &mut checked,
                &mut rerun,
            )?
        }
    };
    let outcome = match outcome {
        None => VerdictOutcome::Pass,
        Some(f) => VerdictOutcome::Fail {
            segment: f.segment,
            step: f.step,
            reason: f.reason,
            detail: f.detail,
        },
    };
    let verdict = Verdict {
        version: Version::CURRENT,
        verifier: identity.account(),
        commitment_id,
        challenge_id: ChallengeId(
            message_id(&challenge).map_err(market_protocol::SignatureError::from)?,
        ),
        checked,
        outcome,
        compute_share_ppm: (rerun * 1_000_000)
            .checked_div(total.max(1))
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32,
    };
    Ok(AuditReport {
        verdict: Signed::sign(verdict, identity)?,
        challenge,
        detection_probability: detection,
        rerun,
        total,
    })
}

/// The segments (training: `ceil(steps / checkpoint_interval)`) or items (inference: one per
/// prompt or row, the rows read from their blob) of `task`'s run: what the node plans with when
/// the task is posted and what every verifier sizes its sample from.
pub fn task_segments(task: &TaskSpec, blobs: &dyn BlobSource) -> Result<u64, AuditError> {
    match &task.workload {
        Workload::Training(t) if t.checkpoint_interval == 0 => Err(AuditError::Policy(
            "checkpoint_interval must be at least 1".into(),
        )),
        // A pooled task's audited runs are its slot-rounds, of `inner_steps` each.
        Workload::Training(t) => Ok(
            u64::from(t.pool.as_ref().map_or(t.steps, |p| p.inner_steps))
                .div_ceil(u64::from(t.checkpoint_interval)),
        ),
        // Prompts and chats are counted from the task itself: building the job would load a
        // whole model (a llama's weights) only to count its items. Rows live in their blob.
        Workload::Inference(i) => match &i.inputs {
            market_protocol::InferenceInputs::Prompts { prompts, .. } => Ok(prompts.len() as u64),
            market_protocol::InferenceInputs::Chat { chats, .. } => Ok(chats.len() as u64),
            market_protocol::InferenceInputs::Rows { .. } => {
                Ok(InferenceJob::from_spec(task, blobs)?.len() as u64)
            }
        },
    }
}

/// How many of `n` segments an audit under `policy` samples, and the probability it (with the
/// other verifiers, under [`SamplePolicy::Plan`]) catches the policy's assumed cheater.
pub fn sample_count(
    task: &TaskSpec,
    n: u32,
    policy: &SamplePolicy,
) -> Result<(u32, Option<f64>), AuditError> {
    Ok(match policy {
        SamplePolicy::Count(c) => ((*c).min(n), None),
        SamplePolicy::All => (n, None),
        SamplePolicy::Detect {
            target,
            assumed_faked,
        } => {
            let m = faked_segments(u64::from(n), assumed_faked);
            let s = samples_for_target(u64::from(n), m, target.to_f64()).ok_or_else(|| {
                AuditError::Policy("the assumed faked fraction must be positive".into())
            })?;
            (s as u32, Some(detection_probability(u64::from(n), m, s)))
        }
        SamplePolicy::Plan { verifiers } => {
            let v = u64::from(*verifiers);
            // A pooled task's slot-rounds are sized together (`plan_for_runs`).
            let runs = audited_runs(task);
            let (_, s, p) = plan_for_runs(&task.audit, u64::from(n), runs, v).ok_or_else(|| {
                AuditError::Policy(
                    "the task's assumed faked fraction must be positive and at least one verifier audit it"
                        .into(),
                )
            })?;
            (s.min(u64::from(n)) as u32, Some(p))
        }
    })
}

/// Reads the committed leaves and checks what both kinds share: the commitment answers this
/// task, and its leaves give its root.
fn committed_leaves(
    bundle: &Bundle,
    task: &TaskSpec,
    c: &Commitment,
    expected_leaves: u64,
) -> Result<Vec<StateHash>, Failure> {
    let leaves = bundle.read_leaves().map_err(|e| {
        fail(
            0,
            FailureReason::Withheld,
            format!("no committed leaves: {e}"),
        )
    })?;
    match check_commitment(task, c, &leaves, expected_leaves) {
        Some(f) => Err(f),
        None => Ok(leaves),
    }
}

fn check_commitment(
    task: &TaskSpec,
    c: &Commitment,
    leaves: &[StateHash],
    expected_leaves: u64,
) -> Option<Failure> {
    let task_id = match message_id(task) {
        Ok(id) => TaskId(id),
        Err(e) => {
            return Some(fail(
                0,
                FailureReason::InvalidCommitment,
                format!("task not canonical: {e}"),
            ))
        }
    };
    if c.task_id != task_id {
        return Some(fail(
            0,
            FailureReason::InvalidCommitment,
            format!(
                "the commitment is for task {}, the bundle's task is {task_id}",
                c.task_id
            ),
        ));
    }
    if c.leaf_count() != expected_leaves || leaves.len() as u64 != expected_leaves {
        return Some(fail(0, FailureReason::InvalidCommitment, format!("the task has {expected_leaves} leaves, the commitment claims {} and the bundle lists {}", c.leaf_count(), leaves.len())));
    }
    if MerkleTree::new(leaves).root() != c.root {
        return Some(fail(
            0,
            FailureReason::BadProof,
            "the committed root does not match the committed leaves (forged root)",
        ));
    }
    // Every other field is bound to what the audit checks, so none is free to vary: the final
    // state and the outputs follow from the leaves, and the loss trace has one value per
    // segment (the sampled ones are re-executed in check 6).
    let binding = match &task.workload {
        Workload::Training(t) => {
            if let Some(why) = slot_round_mismatch(t, c) {
                Some(why)
            } else if c.final_state_hash != leaves[leaves.len() - 1] {
                Some(format!(
                    "the final state hash {} is not the last committed checkpoint {}",
                    c.final_state_hash,
                    leaves[leaves.len() - 1]
                ))
            } else if c.loss_trace.len() as u64 != u64::from(c.segments) {
                Some(format!(
                    "the loss trace has {} values for {} segments",
                    c.loss_trace.len(),
                    c.segments
                ))
            } else if c.outputs.len() != 1 {
                Some(format!(
                    "a training result is one weights blob, the commitment lists {}",
                    c.outputs.len()
                ))
            } else {
                None
            }
        }
        Workload::Inference(_) => {
            let concat: Vec<u8> = leaves.iter().flat_map(|h| h.as_bytes().to_vec()).collect();
            if c.slot_round.is_some() {
                Some("an inference task has no slot-rounds".to_owned())
            } else if c.steps != 0 || !c.loss_trace.is_empty() {
                Some("an inference commitment has no steps and no loss trace".to_owned())
            } else if c.final_state_hash != StateHash(Hash::of(&concat)) {
                Some("the final hash is not the hash of the concatenated item hashes".to_owned())
            } else if c.outputs.len() != leaves.len()
                || c.outputs.iter().zip(leaves).any(|(o, l)| o.0 != l.0)
            {
                Some("the outputs are not the committed items".to_owned())
            } else {
                None
            }
        }
    };
    binding.map(|detail| fail(0, FailureReason::InvalidCommitment, detail))
}

/// Why a training commitment's slot-round does not fit its task, if it does not: a pooled
/// task's runs are its slot-rounds, each naming one that exists, and an unpooled task's runs
/// name none.
fn slot_round_mismatch(t: &market_protocol::TrainingSpec, c: &Commitment) -> Option<String> {
    match (&t.pool, &c.slot_round) {
        (None, None) => None,
        (None, Some(_)) => Some("the task is not pooled, the commitment names a slot-round".into()),
        (Some(_), None) => Some("the task is pooled, the commitment names no slot-round".into()),
        (Some(p), Some(r)) if r.slot >= p.workers || r.round >= p.rounds => Some(format!(
            "slot {} of round {} does not exist in a pool of {} slots and {} rounds",
            r.slot, r.round, p.workers, p.rounds
        )),
        (Some(_), Some(_)) => None,
    }
}

/// Reads leaf `index`'s file and checks it is the committed one, with its inclusion proof.
fn open_leaf(
    bundle: &Bundle,
    path: &std::path::Path,
    leaves: &[StateHash],
    root: &Hash,
    index: u32,
    segment: u32,
) -> Result<Vec<u8>, Failure> {
    let bytes = match bundle.read(path, MAX_STATE_BYTES as u64) {
        Ok(b) => b,
        Err(e) => {
            return Err(fail(
                segment,
                FailureReason::Withheld,
                format!("checkpoint {index} not opened: {e}"),
            ))
        }
    };
    let actual = StateHash(Hash::of(&bytes));
    let proof = MerkleTree::new(leaves).proof(u64::from(index));
    let proven = proof.is_some_and(|p| p.verify(actual.as_bytes(), root).is_ok());
    if !proven {
        return Err(fail(
            segment,
            FailureReason::BadProof,
            format!(
                "checkpoint {index} ({actual}) is not the committed one ({}): altered or truncated",
                leaves[index as usize]
            ),
        ));
    }
    Ok(bytes)
}

fn check_training(
    bundle: &Bundle,
    task: &TaskSpec,
    c: &Commitment,
    sampled: &[u32],
    blobs: &dyn BlobSource,
    checked: &mut Vec<SegmentCheck>,
    rerun: &mut u64,
) -> Result<Option<Failure>, AuditError> {
    if let Workload::Training(t) = &task.workload {
        if let Some(why) = slot_round_mismatch(t, c) {
            return Ok(Some(fail(0, FailureReason::InvalidCommitment, why)));
        }
    }
    let job = TrainingJob::for_run(task, blobs, c.slot_round.as_ref())?;
    if c.steps != job.run_steps() {
        return Ok(Some(fail(
            0,
            FailureReason::InvalidCommitment,
            format!(
                "the run has {} steps, the commitment claims {}",
                job.run_steps(),
                c.steps
            ),
        )));
    }
    let leaves = match committed_leaves(bundle, task, c, u64::from(job.segments()) + 1) {
        Ok(l) => l,
        Err(f) => return Ok(Some(f)),
    };
    // Checkpoint 0 must be the task's own initial state: a run of another task (replay) or a
    // different initialisation fails here, whatever is sampled. A slot-round starts from the
    // state it names; in round 0 that is the slot's start from the task's initial state
    // (checked here), later the round's merged state, which the node checks against its own.
    let initial = match &c.slot_round {
        None => job.initial_state().hash(&job.layout)?,
        Some(r) if r.round == 0 => {
            let global = market_compute::pool::initial_global(&job);
            let start = market_compute::pool::slot_start(&job, &global, None);
            let expected = start.hash(&job.layout)?;
            if r.start != expected {
                return Ok(Some(fail(
                    0,
                    FailureReason::StateMismatch,
                    format!(
                        "slot {} of round 0 names start {}, the task's initial state is {expected}",
                        r.slot, r.start
                    ),
                )));
            }
            expected
        }
        Some(r) => r.start,
    };
    if leaves[0] != initial {
        return Ok(Some(fail(
            0,
            FailureReason::StateMismatch,
            format!(
                "checkpoint 0 is {}, the run's start state is {initial}",
                leaves[0]
            ),
        )));
    }
    let exact = job.profile == ExecutionProfile::Repro;
    for &seg in sampled {
        let start = match open_leaf(
            bundle,
            &bundle.checkpoint_path(seg),
            &leaves,
            &c.root,
            seg,
            seg,
        ) {
            Ok(b) => b,
            Err(f) => return Ok(Some(f)),
        };
        // In `repro` the re-executed end is compared with the committed leaf, so the end
        // checkpoint itself is never read (nor fetched); a tolerance profile compares states.
        let end_bytes = if exact {
            Vec::new()
        } else {
            match open_leaf(
                bundle,
                &bundle.checkpoint_path(seg + 1),
                &leaves,
                &c.root,
                seg + 1,
                seg,
            ) {
                Ok(b) => b,
                Err(f) => return Ok(Some(f)),
            }
        };
        let Ok(start_state) = TrainState::from_bytes(&start, &job.layout) else {
            return Ok(Some(fail(
                seg,
                FailureReason::StateMismatch,
                format!("checkpoint {seg} is not a state of this task"),
            )));
        };
        let (first, end) = job.segment_bounds(seg)?;
        let ran = job.run_segment(seg, &start_state, |_, _| {});
        *rerun += u64::from(end - first);
        let (ours, loss) = match ran {
            Ok(r) => r,
            Err(e) => {
                return Ok(Some(fail(
                    seg,
                    FailureReason::StateMismatch,
                    format!("re-execution from checkpoint {seg} failed: {e}"),
                )))
            }
        };
        let actual = ours.hash(&job.layout)?;
        let expected = leaves[seg as usize + 1];
        checked.push(SegmentCheck {
            segment: seg,
            expected,
            actual: Some(actual),
        });
        // `repro`: the same bits; `native`/`cuda`: within the tolerance, which also compares
        // the segment's update of the parameters (so it needs the start state).
        let mismatch = if exact {
            (actual != expected).then(String::new)
        } else {
            match TrainState::from_bytes(&end_bytes, &job.layout) {
                Ok(theirs) => segment_matches(&job.layout, &start_state, &ours, &theirs).err(),
                Err(e) => Some(format!("the end state does not decode: {e}")),
            }
        };
        if let Some(why) = mismatch {
            let steps = format!("segment {seg} (steps {}..{end})", first + 1);
            let mut f = if exact {
                fail(
                    seg,
                    FailureReason::StateMismatch,
                    format!("{steps} re-executes to {actual}, the worker committed {expected}"),
                )
            } else {
                // The hashes of two profiles' runs always differ: only the tolerance says.
                fail(
                    seg,
                    FailureReason::StateMismatch,
                    format!("{steps} does not match its re-execution within the tolerance: {why}"),
                )
            };
            if exact {
                narrow(bundle, &job, seg, &start_state, expected, &mut f, rerun)?;
            }
            return Ok(Some(f));
        }
        // The committed loss of a sampled segment is re-executed too: exactly for `repro`,
        // within the state tolerance otherwise.
        let committed = c.loss_trace[seg as usize].to_f32();
        let loss_ok = if exact {
            committed.to_bits() == loss.to_bits()
        } else {
            // An infinity is "within" any share of itself: only finite losses can match (so a
            // mean that overflows binary32 fails, as it did before as inf − inf).
            let (a, b) = (f64::from(committed), f64::from(loss));
            committed.is_finite()
                && loss.is_finite()
                && (a - b).abs()
                    <= market_compute::tolerance::MAX_RELATIVE_L2 * a.abs().max(b.abs())
        };
        if !loss_ok {
            return Ok(Some(fail(
                seg,
                FailureReason::InvalidCommitment,
                format!("segment {seg}'s committed loss is {committed}, re-execution gives {loss}"),
            )));
        }
    }
    Ok(None)
}

/// Names the first step of a failed segment whose state differs from the worker's own opened
/// per-step states (the evidence a referee needs: one step to re-run).
fn narrow(
    bundle: &Bundle,
    job: &TrainingJob,
    seg: u32,
    start: &TrainState,
    expected_end: StateHash,
    f: &mut Failure,
    rerun: &mut u64,
) -> Result<(), AuditError> {
    let (first, end) = job.segment_bounds(seg)?;
    let claims = match bundle.read_step_hashes(seg) {
        Ok(Some(c)) if c.len() as u32 == end - first && c.last() == Some(&expected_end) => c,
        Ok(Some(_)) => {
            f.detail.push_str(
                "; the worker's per-step opening does not end at its committed checkpoint",
            );
            return Ok(());
        }
        _ => {
            f.detail
                .push_str("; the worker did not open per-step states for this segment");
            return Ok(());
        }
    };
    let mut state = start.clone();
    for claim in &claims {
        job.step(&mut state)?;
        *rerun += 1;
        let ours = state.hash(&job.layout)?;
        if ours != *claim {
            f.step = Some(state.step);
            f.detail = format!(
                "{}; first differing step is {} (worker {claim}, re-executed {ours})",
                f.detail, state.step
            );
            return Ok(());
        }
    }
    Ok(())
}

fn check_inference(
    bundle: &Bundle,
    task: &TaskSpec,
    c: &Commitment,
    challenge: &Challenge,
    blobs: &dyn BlobSource,
    checked: &mut Vec<SegmentCheck>,
    rerun: &mut u64,
) -> Result<Option<Failure>, AuditError> {
    let job = InferenceJob::from_spec(task, blobs)?;
    let leaves = match committed_leaves(bundle, task, c, job.len() as u64) {
        Ok(l) => l,
        Err(f) => return Ok(Some(f)),
    };
    for &item in &challenge.sampled {
        let theirs = match open_leaf(
            bundle,
            &bundle.item_path(item),
            &leaves,
            &c.root,
            item,
            item,
        ) {
            Ok(b) => b,
            Err(f) => return Ok(Some(f)),
        };
        let expected = leaves[item as usize];
        // A llama answer is checked in one forward pass over it, not re-generated.
        if let Some(verdict) = job.check_item(item as usize, &theirs)? {
            *rerun += 1;
            checked.push(SegmentCheck {
                segment: item,
                expected,
                actual: verdict.is_ok().then_some(expected),
            });
            if let Err(why) = verdict {
                return Ok(Some(fail(
                    item,
                    FailureReason::StateMismatch,
                    format!("item {item} is not the model's answer: {why}"),
                )));
            }
            continue;
        }
        let ours = job.run_item(item as usize)?;
        *rerun += 1;
        checked.push(SegmentCheck {
            segment: item,
            expected,
            actual: Some(ours.hash),
        });
        let matches = ours.hash == expected
            || within_tolerance(&job.model, job.profile, &ours.bytes, &theirs);
        if !matches {
            return Ok(Some(fail(
                item,
                FailureReason::StateMismatch,
                format!(
                    "item {item} re-executes to {}, the worker committed {expected}",
                    ours.hash
                ),
            )));
        }
    }
    Ok(None)
}

/// Whether an inference output that differs from ours is still an honest one: only `mlp` rows
/// (numbers) outside `repro` have a tolerance. Generated text is compared exactly, byte for
/// byte: text bytes read as binary32 come out "close" for different text (a changed first
/// character moves only the lowest bits of the first value).
fn within_tolerance(
    model: &market_compute::zoo::ModelConfig,
    profile: ExecutionProfile,
    ours: &[u8],
    theirs: &[u8],
) -> bool {
    matches!(model, market_compute::zoo::ModelConfig::Mlp(_))
        && profile != ExecutionProfile::Repro
        && rows_close(ours, theirs)
}

/// For `native` mlp rows: the same tolerance as states, over the row.
fn rows_close(ours: &[u8], theirs: &[u8]) -> bool {
    if ours.len() != theirs.len() || ours.len() % 4 != 0 {
        return false;
    }
    let f = |b: &[u8]| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<_>>()
    };
    // NaN (a row holding one) is never close.
    market_compute::tolerance::relative_l2(&f(ours), &f(theirs))
        <= market_compute::tolerance::MAX_RELATIVE_L2
}

/// A referee's check of chosen segments of a training bundle (for example the one two verdicts
/// disagree on), with the same checks as an audit: `Ok(None)` if they reproduce, or the
/// failure's segment, reason and detail.
pub fn recheck_segments(
    bundle: &Bundle,
    segments: &[u32],
    blobs: &dyn BlobSource,
) -> Result<Option<(u32, FailureReason, String)>, AuditError> {
    let task = bundle.read_task()?;
    let commitment = bundle.read_commitment()?.into_verified()?;
    let (mut checked, mut rerun) = (Vec::new(), 0);
    let failure = match &task.workload {
        Workload::Training(_) => check_training(
            bundle,
            &task,
            &commitment,
            segments,
            blobs,
            &mut checked,
            &mut rerun,
        )?,
        Workload::Inference(_) => {
            let c = Challenge::derive(
                commitment.worker,
                CommitmentId(market_protocol::Hash::default()),
                Beacon::default(),
                commitment.segments,
                0,
            )
            .map_err(|e| AuditError::Policy(e.to_string()))?;
            let c = Challenge {
                sampled: segments.to_vec(),
                ..c
            };
            check_inference(
                bundle,
                &task,
                &commitment,
                &c,
                blobs,
                &mut checked,
                &mut rerun,
            )?
        }
    };
    Ok(failure.map(|f| (f.segment, f.reason, f.detail)))
}

/// The bundle files an audit of `sampled` segments reads, as bundle paths: what a networked
/// verifier fetches and what the node fetches from the worker for it (the rest of the bundle
/// nobody needs). A training segment opens its start checkpoint and its per-step hashes; its
/// end checkpoint only in a tolerance profile (`repro` compares the end with the leaf).
pub fn openings(task: &TaskSpec, sampled: &[u32]) -> Vec<String> {
    let mut paths = vec![
        "task.json".to_owned(),
        "commitment.json".to_owned(),
        "leaves.json".to_owned(),
    ];
    for &s in sampled {
        match &task.workload {
            Workload::Training(_) => {
                paths.push(format!("checkpoints/{s:06}.st"));
                if task.profile != ExecutionProfile::Repro {
                    paths.push(format!("checkpoints/{:06}.st", s + 1));
                }
                paths.push(format!("steps/{s:06}.json"));
            }
            Workload::Inference(_) => paths.push(format!("items/{s:06}.bin")),
        }
    }
    paths
}

/// The challenge an audit by `verifier` of `commitment` against `beacon` answers, for a
/// sample of `samples` segments (capped at the segment count, as [`audit`] caps it).
pub fn challenge_for(
    verifier: AccountId,
    commitment: &Signed<Commitment>,
    beacon: Beacon,
    samples: u32,
) -> Result<Challenge, AuditError> {
    let c = commitment.verify()?;
    let id = CommitmentId(
        commitment
            .id()
            .map_err(market_protocol::SignatureError::from)?,
    );
    Challenge::derive(verifier, id, beacon, c.segments, samples.min(c.segments))
        .map_err(|e| AuditError::Policy(e.to_string()))
}

#[cfg(test)]
mod tolerance_tests {
    use super::*;
    use market_compute::zoo::{GptConfig, MlpConfig, ModelConfig};
    use market_protocol::Activation;

    /// Issue 12 item 14: `native` gpt inference compared UTF-8 output bytes as if they were
    /// binary32 values, so a worker could change the first character of every fourth byte and
    /// still pass.
    #[test]
    fn changed_text_is_never_within_tolerance() {
        let gpt = ModelConfig::Gpt(GptConfig {
            layers: 1,
            heads: 1,
            width: 8,
            vocab: 16,
            context: 8,
        });
        let honest = b"12+34=46";
        let forged = b"02+34=46";
        // What the old comparison said about these bytes.
        assert!(
            rows_close(forged, honest),
            "the old check took them as close"
        );
        for profile in ExecutionProfile::ALL {
            assert!(
                !within_tolerance(&gpt, profile, forged, honest),
                "{profile:?}"
            );
        }
        // Rows of numbers keep their tolerance outside `repro`.
        let mlp = ModelConfig::Mlp(MlpConfig {
            widths: vec![2, 2],
            activation: Activation::Relu,
        });
        let row = |v: [f32; 2]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (ours, theirs) = (row([1.0, 2.0]), row([1.0001, 2.0]));
        assert!(within_tolerance(
            &mlp,
            ExecutionProfile::Native,
            &ours,
            &theirs
        ));
        assert!(!within_tolerance(
            &mlp,
            ExecutionProfile::Repro,
            &ours,
            &theirs
        ));
    }
}
