//! Running a task into a result bundle and a signed commitment: the same code path the
//! networked worker uses; only the transport differs.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use market_compute::bundle::{Bundle, BundleError};
use market_compute::rng::{self, Purpose};
use market_compute::{BlobSource, ComputeError, InferenceJob, TrainState, TrainingJob};
use market_protocol::{
    message_id, BlobId, Commitment, CommitmentId, DatasetSource, F32Bits, Hash, Identity,
    MerkleTree, Signed, SlotRound, StateHash, TaskId, TaskSpec, Version, Workload,
};

use crate::behavior::Behavior;

/// Why a task could not be run into a bundle.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The task cannot run (bad config, missing blob, divergence, ...).
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// The bundle could not be written or read.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The strategy does not apply to this task.
    #[error("strategy {0} does not apply to {1}")]
    NotApplicable(Behavior, &'static str),
    /// Signing failed (the task cannot be canonicalized).
    #[error(transparent)]
    Signature(#[from] market_protocol::SignatureError),
}

impl ExecError {
    /// Whether the run stopped because its [`CancelToken`] was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Compute(ComputeError::Cancelled))
    }
}

/// Stops a run from another thread: checked before every training step and every inference
/// item, so a cancelled run ends within one step. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled.
    fn check(&self) -> Result<(), ComputeError> {
        if self.is_cancelled() {
            Err(ComputeError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Where a run is, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Steps (training) or items (inference) done.
    pub done: u32,
    /// Steps or items in all.
    pub total: u32,
    /// The latest training loss (0 for inference).
    pub loss: f32,
}

/// What `exec` produced.
#[derive(Debug, Clone)]
pub struct ExecReport {
    /// The signed commitment (also in the bundle).
    pub commitment: Signed<Commitment>,
    /// Its id.
    pub commitment_id: CommitmentId,
    /// The segments this worker faked (empty when honest): for tests and reports only.
    pub faked: BTreeSet<u32>,
    /// The segment a training run resumed at from checkpoints already in the bundle (0 for a
    /// fresh run).
    pub resumed_from: u32,
}

/// Runs `task` with `behavior`, writes the bundle and returns the signed commitment.
///
/// A training run whose bundle already holds checkpoints of the same task (the worker was
/// stopped) resumes after the last complete segment: the result is bit-identical to an
/// uninterrupted run, because every segment depends only on the checkpoint before it.
pub fn exec(
    task: &TaskSpec,
    identity: &Identity,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    on_progress: impl FnMut(Progress),
) -> Result<ExecReport, ExecError> {
    exec_until(
        task,
        identity,
        behavior,
        bundle,
        blobs,
        &CancelToken::default(),
        on_progress,
    )
}

/// What a training run starts from.
#[derive(Debug, Clone, Copy)]
enum Start<'a> {
    /// The task's initial state (a run on one worker).
    Task,
    /// A slot-round of a pooled task, from the given state (whose hash the slot-round names).
    SlotRound(SlotRound, &'a TrainState),
}

/// [`exec`], stopping with [`ComputeError::Cancelled`] within a step of `cancel` being
/// cancelled (the bundle is left as it was: a training run's complete checkpoints stay).
pub fn exec_until(
    task: &TaskSpec,
    identity: &Identity,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    cancel: &CancelToken,
    on_progress: impl FnMut(Progress),
) -> Result<ExecReport, ExecError> {
    exec_run(
        task,
        Start::Task,
        identity,
        behavior,
        bundle,
        blobs,
        cancel,
        on_progress,
    )
}

/// Runs slot `slot_round.slot` of round `slot_round.round` of a pooled task from `start`
/// (`COMPUTE.md` section 10), into a bundle whose commitment names the slot-round: the same
/// committed, auditable run as any task's, of the slot-round's steps. `start` must hash to
/// `slot_round.start`. A slot-round is never resumed from an earlier bundle (runs of other
/// slot-rounds of the same task share its id).
#[allow(clippy::too_many_arguments)]
pub fn exec_slot_round(
    task: &TaskSpec,
    slot_round: SlotRound,
    start: &TrainState,
    identity: &Identity,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    cancel: &CancelToken,
    on_progress: impl FnMut(Progress),
) -> Result<ExecReport, ExecError> {
    exec_run(
        task,
        Start::SlotRound(slot_round, start),
        identity,
        behavior,
        bundle,
        blobs,
        cancel,
        on_progress,
    )
}

/// [`exec_slot_round`] with the start state read from `blobs` (what a networked worker is
/// assigned: the node serves the start state as the blob whose id is `slot_round.start`, the
/// state's hash, so the blob's own check is the start's check).
#[allow(clippy::too_many_arguments)]
pub fn exec_slot_round_from(
    task: &TaskSpec,
    slot_round: SlotRound,
    identity: &Identity,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    cancel: &CancelToken,
    on_progress: impl FnMut(Progress),
) -> Result<ExecReport, ExecError> {
    let start = BlobId(slot_round.start.0);
    let bytes = blobs.blob(&start).ok_or(ComputeError::MissingBlob(start))?;
    let Workload::Training(t) = &task.workload else {
        return Err(ComputeError::config("pool", "an inference task has no slot-rounds").into());
    };
    // The layout alone (the job, with its dataset, is built once, by the run).
    let layout = market_compute::zoo::ModelConfig::from_spec(&t.model)?.layout();
    let state = TrainState::from_bytes(&bytes, &layout)?;
    exec_slot_round(
        task,
        slot_round,
        &state,
        identity,
        behavior,
        bundle,
        blobs,
        cancel,
        on_progress,
    )
}

#[allow(clippy::too_many_arguments)]
fn exec_run(
    task: &TaskSpec,
    from: Start<'_>,
    identity: &Identity,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    cancel: &CancelToken,
    mut on_progress: impl FnMut(Progress),
) -> Result<ExecReport, ExecError> {
    cancel.check()?;
    let resumable = matches!(from, Start::Task) && bundle.read_task().ok().as_ref() == Some(task);
    bundle.create()?;
    bundle.write_task(task)?;
    let task_id = TaskId(message_id(task).map_err(market_protocol::SignatureError::from)?);
    let mut resumed_from = 0;
    let (mut commitment, leaves, mut faked) = match &task.workload {
        Workload::Training(_) => exec_training(
            task,
            task_id,
            from,
            identity,
            behavior,
            bundle,
            blobs,
            resumable,
            &mut resumed_from,
            cancel,
            &mut on_progress,
        )?,
        Workload::Inference(_) if !matches!(from, Start::Task) => {
            return Err(ComputeError::config("pool", "an inference task has no slot-rounds").into())
        }
        Workload::Inference(_) => exec_inference(
            task,
            task_id,
            identity,
            behavior,
            bundle,
            blobs,
            cancel,
            &mut on_progress,
        )?,
    };
    commitment.root = MerkleTree::new(&leaves).root();
    if behavior == Behavior::ForgeRoot {
        commitment.root = Hash::of(&[b"forged".as_slice(), commitment.root.as_bytes()].concat());
    }
    bundle.write_leaves(&leaves)?;
    if behavior == Behavior::Withhold {
        withhold(bundle, &task.workload, leaves.len() as u32)?;
        faked = unopenable(task, commitment.segments);
    }
    let signed = Signed::sign(commitment, identity)?;
    bundle.write_commitment(&signed)?;
    let commitment_id = CommitmentId(signed.id().map_err(market_protocol::SignatureError::from)?);
    Ok(ExecReport {
        commitment: signed,
        commitment_id,
        faked,
        resumed_from,
    })
}

/// The segments whose audit opens a file [`withhold`] deleted: a training segment's start
/// checkpoint (`1..n`), and in a tolerance profile its end too (every segment when `n >= 2`);
/// an inference item `1..n-1`.
fn unopenable(task: &TaskSpec, n: u32) -> BTreeSet<u32> {
    match &task.workload {
        Workload::Training(_) if task.profile == market_protocol::ExecutionProfile::Repro => {
            (1..n).collect()
        }
        Workload::Training(_) if n >= 2 => (0..n).collect(),
        Workload::Training(_) => BTreeSet::new(),
        Workload::Inference(_) => (1..n.saturating_sub(1)).collect(),
    }
}

/// Deletes every checkpoint (or item) but the first and the last.
pub fn withhold(bundle: &Bundle, workload: &Workload, leaves: u32) -> Result<(), ExecError> {
    for i in 1..leaves.saturating_sub(1) {
        let path = match workload {
            Workload::Training(_) => bundle.checkpoint_path(i),
            Workload::Inference(_) => bundle.item_path(i),
        };
        std::fs::remove_file(&path).map_err(|source| BundleError::Io { path, source })?;
    }
    Ok(())
}

/// The job a cheating strategy actually runs instead of the task (other data, another seed).
fn cheat_job(
    task: &TaskSpec,
    behavior: Behavior,
    blobs: &dyn BlobSource,
) -> Result<Option<TrainingJob>, ExecError> {
    let mut other = task.clone();
    match behavior {
        Behavior::WrongData => match &mut other.workload {
            Workload::Training(t) => match &mut t.dataset {
                DatasetSource::Arithmetic { examples, .. }
                | DatasetSource::TeacherMlp { examples, .. } => {
                    *examples = examples.saturating_mul(2).max(2)
                }
                DatasetSource::Blob { .. } | DatasetSource::Text { .. } => {
                    return Err(ExecError::NotApplicable(
                        behavior,
                        "a task with an uploaded dataset",
                    ))
                }
            },
            Workload::Inference(_) => unreachable!("training only"),
        },
        Behavior::Replay => other.seed = other.seed.wrapping_add(1),
        _ => return Ok(None),
    }
    Ok(Some(TrainingJob::from_spec(&other, blobs)?))
}

/// Rounds to bfloat16 (round to nearest, ties to even) and back.
fn to_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// Runs segment `seg` as `behavior` would. Honest segments, with or without per-step hashes
/// (an opening), go through the one shared `TrainingJob::run_segment_with`; only faked
/// segments step through this function's own loop.
#[allow(clippy::too_many_arguments)]
pub fn run_segment_as(
    job: &TrainingJob,
    cheat: Option<&TrainingJob>,
    behavior: Behavior,
    faked: bool,
    seg: u32,
    start: &TrainState,
    record_steps: bool,
    on_step: &mut dyn FnMut(u32, f32) -> Result<(), ComputeError>,
) -> Result<(TrainState, f32, Vec<StateHash>), ExecError> {
    let (first, end) = job.segment_bounds(seg)?;
    if !faked {
        let mut hashes = Vec::new();
        let (state, loss) = job.run_segment_with(seg, start, |state, loss| {
            on_step(state.step, loss)?;
            if record_steps {
                hashes.push(state.hash(&job.layout)?);
            }
            Ok(())
        })?;
        return Ok((state, loss, hashes));
    }
    let mut state = start.clone();
    let mut hashes = Vec::new();
    let mut total = 0.0f32;
    while state.step < end {
        let loss = match (faked, behavior) {
            (true, Behavior::Skip(_) | Behavior::Truncate(_)) => {
                state.step += 1;
                0.0
            }
            (true, Behavior::LastStep(_)) => {
                // This step's batch at the start parameters: its loss, and (for the last
                // step only) the state it leads to.
                let mut from_start = start.clone();
                from_start.step = state.step;
                let loss = job.step(&mut from_start)?;
                if from_start.step == end {
                    state = from_start;
                } else {
                    state.step += 1;
                }
                loss
            }
            (true, Behavior::WrongData | Behavior::Replay) => {
                cheat.unwrap_or(job).step(&mut state)?
            }
            (true, Behavior::LowPrecision) => {
                let loss = job.step(&mut state)?;
                state.params.iter_mut().for_each(|p| *p = to_bf16(*p));
                loss
            }
            _ => job.step(&mut state)?,
        };
        total += loss;
        on_step(state.step, loss)?;
        if record_steps {
            hashes.push(state.hash(&job.layout)?);
        }
    }
    if faked && matches!(behavior, Behavior::Noise(_)) {
        let mut r = rng::stream(u64::from(seg), Purpose::Init, 0xbad);
        state
            .params
            .iter_mut()
            .for_each(|p| *p += rng::symmetric_f32(&mut r, 0.01));
        if let Some(last) = hashes.last_mut() {
            *last = state.hash(&job.layout)?;
        }
    }
    Ok((state, total / (end - first).max(1) as f32, hashes))
}

#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn exec_training(
    task: &TaskSpec,
    task_id: TaskId,
    from: Start<'_>,
    identity: &Identity,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    resumable: bool,
    resumed_from: &mut u32,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<(Commitment, Vec<StateHash>, BTreeSet<u32>), ExecError> {
    let slot_round = match from {
        Start::Task => None,
        Start::SlotRound(r, _) => Some(r),
    };
    let job = TrainingJob::for_run(task, blobs, slot_round.as_ref())?;
    let cheat = match (cheat_job(task, behavior, blobs)?, slot_round) {
        (Some(c), Some(r)) => Some(c.slot_round(r.slot, r.round)?),
        (c, _) => c,
    };
    let n = job.segments();
    let faked = behavior.faked_segments(n, &task_id.0);
    let mut state = match (from, &cheat, behavior) {
        (Start::SlotRound(r, start), _, _) => {
            let hash = start.hash(&job.layout)?;
            if hash != r.start || start.step != job.first_step {
                return Err(ComputeError::StateMismatch(format!(
                    "the start state is {hash} at step {}; slot-round {r:?} starts from {} at step {}",
                    start.step, r.start, job.first_step
                ))
                .into());
            }
            start.clone()
        }
        (Start::Task, Some(c), Behavior::Replay) => c.initial_state(),
        (Start::Task, _, _) => job.initial_state(),
    };
    let write = |i: u32, s: &TrainState| -> Result<StateHash, ExecError> {
        let bytes = s.to_bytes(&job.layout)?;
        bundle.write(&bundle.checkpoint_path(i), &bytes)?;
        Ok(StateHash(Hash::of(&bytes)))
    };
    let mut leaves = vec![write(0, &state)?];
    let mut losses = Vec::with_capacity(n as usize);
    if resumable {
        if let Some((s, l, ls)) = resume_point(bundle, &job, n) {
            (state, leaves, losses) = (s, l, ls);
            *resumed_from = losses.len() as u32;
        }
    }
    for seg in losses.len() as u32..n {
        let mut report = |step: u32, loss: f32| {
            on_progress(Progress {
                done: step - job.first_step,
                total: job.run_steps(),
                loss,
            });
            cancel.check()
        };
        let (next, loss, _) = run_segment_as(
            &job,
            cheat.as_ref(),
            behavior,
            faked.contains(&seg),
            seg,
            &state,
            false,
            &mut report,
        )?;
        state = next;
        leaves.push(write(seg + 1, &state)?);
        losses.push(loss);
        // The loss trace doubles as the resume point: it is written after the checkpoint.
        bundle.write_loss(&losses)?;
    }
    let weights = market_compute::init::weights_to_bytes(&job.layout, &state.params)?;
    bundle.write(&bundle.weights_path(), &weights)?;
    bundle.write_loss(&losses)?;
    let commitment = Commitment {
        version: Version::CURRENT,
        task_id,
        worker: identity.account(),
        steps: job.run_steps(),
        segments: n,
        root: Hash::default(),
        final_state_hash: *leaves.last().unwrap_or(&StateHash::default()),
        outputs: vec![BlobId::of(&weights)],
        loss_trace: losses.iter().map(|l| F32Bits::from_f32(*l)).collect(),
        slot_round,
    };
    Ok((commitment, leaves, faked))
}

/// The state, leaves and losses after the last complete segment already in `bundle`, if any
/// (anything unreadable means starting over).
fn resume_point(
    bundle: &Bundle,
    job: &TrainingJob,
    segments: u32,
) -> Option<(TrainState, Vec<StateHash>, Vec<f32>)> {
    let losses = bundle.read_loss().ok()?;
    let done = u32::try_from(losses.len()).ok()?;
    if done == 0 || done > segments {
        return None;
    }
    let limit = market_compute::state::MAX_STATE_BYTES as u64;
    let mut leaves = Vec::with_capacity(done as usize + 1);
    let mut last = Vec::new();
    for i in 0..=done {
        last = bundle.read(&bundle.checkpoint_path(i), limit).ok()?;
        leaves.push(StateHash(Hash::of(&last)));
    }
    let state = TrainState::from_bytes(&last, &job.layout).ok()?;
    Some((state, leaves, losses))
}

#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn exec_inference(
    task: &TaskSpec,
    task_id: TaskId,
    identity: &Identity,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<(Commitment, Vec<StateHash>, BTreeSet<u32>), ExecError> {
    if matches!(
        behavior,
        Behavior::WrongData | Behavior::LowPrecision | Behavior::LastStep(_)
    ) {
        return Err(ExecError::NotApplicable(behavior, "inference"));
    }
    let job = InferenceJob::from_spec(task, blobs)?;
    let n = job.len() as u32;
    let faked = behavior.faked_segments(n, &task_id.0);
    let mut leaves = Vec::with_capacity(n as usize);
    for i in 0..n {
        cancel.check()?;
        let bytes = match (faked.contains(&i), behavior) {
            (true, Behavior::Skip(_) | Behavior::Truncate(_)) => Vec::new(),
            (true, Behavior::Replay) => job.run_item(((i + 1) % n) as usize)?.bytes,
            (true, Behavior::Noise(_)) => {
                let mut b = job.run_item(i as usize)?.bytes;
                b.push(b'!');
                b
            }
            _ => job.run_item(i as usize)?.bytes,
        };
        bundle.write(&bundle.item_path(i), &bytes)?;
        leaves.push(StateHash(Hash::of(&bytes)));
        on_progress(Progress {
            done: i + 1,
            total: n,
            loss: 0.0,
        });
    }
    let concat: Vec<u8> = leaves.iter().flat_map(|h| h.as_bytes().to_vec()).collect();
    let commitment = Commitment {
        version: Version::CURRENT,
        task_id,
        worker: identity.account(),
        steps: 0,
        segments: n,
        root: Hash::default(),
        final_state_hash: StateHash(Hash::of(&concat)),
        outputs: leaves.iter().map(|h| BlobId(h.0)).collect(),
        loss_trace: Vec::new(),
        slot_round: None,
    };
    Ok((commitment, leaves, faked))
}

/// Opens the per-step state hashes of a challenged segment, re-running it from the bundle's
/// own start checkpoint as `behavior` ran it, and writes them into the bundle.
pub fn open_steps(
    task: &TaskSpec,
    behavior: Behavior,
    bundle: &Bundle,
    blobs: &dyn BlobSource,
    segment: u32,
) -> Result<Vec<StateHash>, ExecError> {
    // A slot-round's opening re-runs the slot-round its commitment names.
    let slot_round = bundle.read_commitment()?.body.slot_round;
    let job = TrainingJob::for_run(task, blobs, slot_round.as_ref())?;
    let cheat = match (cheat_job(task, behavior, blobs)?, slot_round) {
        (Some(c), Some(r)) => Some(c.slot_round(r.slot, r.round)?),
        (c, _) => c,
    };
    let task_id = TaskId(message_id(task).map_err(market_protocol::SignatureError::from)?);
    let faked = behavior
        .faked_segments(job.segments(), &task_id.0)
        .contains(&segment);
    let bytes = bundle.read(
        &bundle.checkpoint_path(segment),
        market_compute::state::MAX_STATE_BYTES as u64,
    )?;
    let start = TrainState::from_bytes(&bytes, &job.layout)?;
    let (_, _, hashes) = run_segment_as(
        &job,
        cheat.as_ref(),
        behavior,
        faked,
        segment,
        &start,
        true,
        &mut |_, _| Ok(()),
    )?;
    bundle.write_step_hashes(segment, &hashes)?;
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_compute::NoBlobs;
    use market_protocol::fixtures::{inference_task, training_task};

    /// Runs `task` and cancels it from the progress callback after `after` reports; returns
    /// the error and how many reports came.
    fn cancelled_after(task: &TaskSpec, after: u32) -> (ExecError, u32) {
        let dir = tempfile::tempdir().expect("tempdir");
        let worker = Identity::from_test_label("cancelled worker");
        let cancel = CancelToken::default();
        let mut reports = 0;
        let outcome = exec_until(
            task,
            &worker,
            Behavior::Honest,
            &Bundle::at(dir.path()),
            &NoBlobs,
            &cancel.clone(),
            |_| {
                reports += 1;
                if reports == after {
                    cancel.cancel();
                }
            },
        );
        (
            outcome.expect_err("a cancelled run commits nothing"),
            reports,
        )
    }

    #[test]
    fn a_cancelled_run_stops_within_one_step_or_item() {
        let buyer = Identity::from_test_label("buyer");
        let mut inference = inference_task(&buyer, 1);
        if let Workload::Inference(i) = &mut inference.workload {
            i.weights = None; // seeded weights: no blob to fetch
        }
        let (e, reports) = cancelled_after(&training_task(&buyer, 1), 3);
        assert!(e.is_cancelled(), "{e}");
        assert_eq!(reports, 3, "not one step more (the run has 200)");
        let (e, reports) = cancelled_after(&inference, 1);
        assert!(e.is_cancelled(), "{e}");
        assert_eq!(reports, 1, "the second of two prompts is not run");
        // And the honest run of the same task does not stop.
        let dir = tempfile::tempdir().expect("tempdir");
        let report = exec(
            &inference,
            &Identity::from_test_label("cancelled worker"),
            Behavior::Honest,
            &Bundle::at(dir.path()),
            &NoBlobs,
            |_| {},
        );
        assert!(report.is_ok());
    }

    #[test]
    fn bf16_rounding_keeps_eight_bits_of_mantissa() {
        assert_eq!(to_bf16(1.0), 1.0);
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 1.0); // a tie rounds to even
        assert_ne!(to_bf16(0.1), 0.1);
        assert!((to_bf16(0.1) - 0.1).abs() < 0.001);
    }
}
