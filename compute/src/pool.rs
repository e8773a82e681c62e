//! Pooled training: one training task split across `K` slots that train apart and merge in
//! rounds (DiLoCo: Douillard et al. 2023), so workers on home links exchange a state once per
//! `H` steps instead of gradients every step.
//!
//! Round `r` starts from the global state `θ_r`. Each slot trains `H` steps with the task's
//! optimizer on its own batch stream ([`crate::TrainingJob::slot_round`]), from a start state
//! made of `θ_r` and the slot's own optimizer moments as its previous round left them (zero in
//! round 0): DiLoCo keeps each worker's inner optimizer state, and here it is part of the
//! slot's committed checkpoints, so whoever runs a slot next starts from exactly it. The merge
//! is an outer step on the averaged pseudo-gradient `Δ = mean_k(θ_r − θ_{r,k})`: SGD with
//! Nesterov momentum, elementwise in binary32 in a written order, so anyone recomputes
//! `θ_{r+1}` bit for bit from the slots' committed final states (`spec/COMPUTE.md` section 10).
//!
//! The global state is held as a [`TrainState`]: `step` = `r × H`, `params` = `θ_r`, `m` = the
//! outer momentum, `v` empty; its hash is that state's hash.

use market_protocol::{OuterOptimizerSpec, PoolSpec};

use crate::error::{ComputeError, Result};
use crate::job::TrainingJob;
use crate::state::TrainState;

/// Most slots in a pool.
pub const MAX_SLOTS: u32 = 64;

/// Most slot-rounds (`slots × rounds`) in a pool: each is a committed, audited run with a
/// record of its own, and the pooled task keeps a summary of every round.
pub const MAX_SLOT_ROUNDS: u64 = 4096;

/// A validated pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool {
    /// Slots per round (`K`).
    pub slots: u32,
    /// Rounds (`R`).
    pub rounds: u32,
    /// Inner steps per slot and round (`H`).
    pub inner_steps: u32,
    /// The merge.
    pub outer: OuterOptimizer,
}

/// The outer optimizer, with its hyper-parameters as `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OuterOptimizer {
    /// SGD with Nesterov momentum.
    Nesterov {
        /// Outer learning rate.
        lr: f32,
        /// Momentum.
        momentum: f32,
    },
}

impl Pool {
    /// Validates a task's pool against its `steps` and `checkpoint_interval`.
    pub fn from_spec(spec: &PoolSpec, steps: u32, checkpoint_interval: u32) -> Result<Self> {
        let field = |f: &'static str, reason: String| Err(ComputeError::config(f, reason));
        if spec.workers == 0 || spec.workers > MAX_SLOTS {
            return field(
                "pool.workers",
                format!("is {}, must be between 1 and {MAX_SLOTS}", spec.workers),
            );
        }
        if spec.rounds == 0 || spec.inner_steps == 0 {
            return field(
                "pool.rounds",
                "rounds and inner_steps must both be at least 1".into(),
            );
        }
        if u64::from(spec.workers) * u64::from(spec.rounds) > MAX_SLOT_ROUNDS {
            return field(
                "pool.rounds",
                format!(
                    "{} slots × {} rounds is over the limit of {MAX_SLOT_ROUNDS} slot-rounds",
                    spec.workers, spec.rounds
                ),
            );
        }
        if u64::from(spec.rounds) * u64::from(spec.inner_steps) != u64::from(steps) {
            return field(
                "steps",
                format!(
                    "is {steps}, a pooled task's must be rounds × inner_steps = {} × {}",
                    spec.rounds, spec.inner_steps
                ),
            );
        }
        if checkpoint_interval > spec.inner_steps {
            return field(
                "checkpoint_interval",
                format!(
                    "is {checkpoint_interval}, at most the pool's inner_steps ({})",
                    spec.inner_steps
                ),
            );
        }
        let outer = match &spec.outer_optimizer {
            OuterOptimizerSpec::Nesterov { lr, momentum } => {
                let (lr, momentum) = (lr.to_f32(), momentum.to_f32());
                if !(lr > 0.0 && lr <= 10.0) {
                    return field(
                        "pool.outer_optimizer.lr",
                        format!("is {lr}, must be in (0, 10]"),
                    );
                }
                if !(0.0..1.0).contains(&momentum) {
                    return field(
                        "pool.outer_optimizer.momentum",
                        format!("is {momentum}, must be in [0, 1)"),
                    );
                }
                OuterOptimizer::Nesterov { lr, momentum }
            }
        };
        Ok(Self {
            slots: spec.workers,
            rounds: spec.rounds,
            inner_steps: spec.inner_steps,
            outer,
        })
    }
}

/// The format name in a global state's metadata: a global state is never mistaken for a
/// slot's state (for SGD both would otherwise be a state with `param` and `opt.m`).
pub const GLOBAL_FORMAT: &str = "market-pool-global-v1";

/// The hash of a global state: blake3 of its canonical bytes (section 5 of `COMPUTE.md`) with
/// [`GLOBAL_FORMAT`] as the metadata's format.
pub fn global_hash(
    global: &TrainState,
    layout: &crate::zoo::ParamLayout,
) -> Result<market_protocol::StateHash> {
    Ok(market_protocol::StateHash(market_protocol::Hash::of(
        &global.to_bytes_as(layout, GLOBAL_FORMAT)?,
    )))
}

/// The global state before round 0: the task's initial parameters, zero outer momentum.
pub fn initial_global(job: &TrainingJob) -> TrainState {
    let params = job.initial_state().params;
    let n = params.len();
    TrainState {
        step: 0,
        params,
        m: vec![0.0; n],
        v: Vec::new(),
    }
}

/// Slot `k`'s start state in the round `global` begins: the global parameters and step, and
/// the moments of `previous`, the slot's final state of the round before (zero moments in
/// round 0, when there is none).
pub fn slot_start(
    job: &TrainingJob,
    global: &TrainState,
    previous: Option<&TrainState>,
) -> TrainState {
    let n = global.params.len();
    let (m, v) = match previous {
        Some(p) => (p.m.clone(), p.v.clone()),
        None => (
            vec![0.0; n],
            if job.optimizer.has_second_moment() {
                vec![0.0; n]
            } else {
                Vec::new()
            },
        ),
    };
    TrainState {
        step: global.step,
        params: global.params.clone(),
        m,
        v,
    }
}

/// The merge of a round: from the global state `global` (`θ_r`, outer momentum `u`) and the
/// slots' final states in slot order, the next global state. For each parameter `i`, in
/// binary32 with every operation rounded (no fused multiply-add):
///
/// ```text
/// s = 0;  for k in 0..K: s = s + (θ_r[i] − θ_k[i])     (slot order)
/// g = s / K
/// u[i] = μ·u[i] + g
/// θ_{r+1}[i] = θ_r[i] − lr·(g + μ·u[i])
/// ```
pub fn outer_step(pool: &Pool, global: &TrainState, finals: &[TrainState]) -> Result<TrainState> {
    if finals.len() != pool.slots as usize {
        return Err(ComputeError::StateMismatch(format!(
            "{} slot results for a pool of {}",
            finals.len(),
            pool.slots
        )));
    }
    let end = global.step + pool.inner_steps;
    let n = global.params.len();
    if global.m.len() != n {
        return Err(ComputeError::StateMismatch(format!(
            "the global state has {} outer momenta for {n} parameters",
            global.m.len()
        )));
    }
    for (k, f) in finals.iter().enumerate() {
        if f.step != end || f.params.len() != n {
            return Err(ComputeError::StateMismatch(format!(
                "slot {k}'s result is at step {} with {} parameters; the round ends at step {end} with {n}",
                f.step,
                f.params.len()
            )));
        }
    }
    let OuterOptimizer::Nesterov { lr, momentum } = pool.outer;
    let count = pool.slots as f32;
    let mut params = Vec::with_capacity(n);
    let mut u = Vec::with_capacity(n);
    for i in 0..n {
        let theta = global.params[i];
        let mut s = 0.0f32;
        for f in finals {
            s += theta - f.params[i];
        }
        let g = s / count;
        let ui = momentum * global.m[i] + g;
        params.push(theta - lr * (g + momentum * ui));
        u.push(ui);
    }
    let next = TrainState {
        step: end,
        params,
        m: u,
        v: Vec::new(),
    };
    if let Some(bad) = next
        .params
        .iter()
        .chain(&next.m)
        .position(|p| !p.is_finite())
    {
        return Err(ComputeError::NonFinite {
            tensor: format!("merged state value {bad} (parameters, then outer momenta)"),
            step: end,
        });
    }
    Ok(next)
}

/// The largest evaluation blob a task may name (only its first [`EVAL_EXAMPLES`] windows are
/// read).
pub const MAX_EVAL_BYTES: usize = 16 << 20;

/// Examples a pooled task's merged states are evaluated on, at most.
pub const EVAL_EXAMPLES: usize = 256;

/// Examples a pooled task's merged states are evaluated on (`COMPUTE.md` section 10), for a
/// `gpt`: from its `eval_dataset` token blob, the first [`EVAL_EXAMPLES`] non-overlapping
/// windows of `context + 1` tokens, every position scored; otherwise, on the `arithmetic`
/// language, its first [`EVAL_EXAMPLES`] held-out sums (pairs no training set contains).
/// None for other models and datasets. An evaluation blob that is missing, too large or not
/// a token blob of the model's vocabulary is an error.
pub fn eval_examples(
    spec: &market_protocol::TaskSpec,
    blobs: &dyn crate::BlobSource,
) -> Result<Vec<crate::data::Example>> {
    let market_protocol::Workload::Training(t) = &spec.workload else {
        return Ok(Vec::new());
    };
    let market_protocol::ModelSpec::Gpt { vocab, context, .. } = &t.model else {
        if t.eval_dataset.is_some() {
            return Err(ComputeError::config(
                "eval_dataset",
                "an evaluation blob is for a `gpt` only",
            ));
        }
        return Ok(Vec::new());
    };
    if let Some(id) = &t.eval_dataset {
        let bytes = blobs.blob(id).ok_or(ComputeError::MissingBlob(*id))?;
        if bytes.len() > MAX_EVAL_BYTES {
            return Err(ComputeError::config(
                "eval_dataset",
                format!("{} bytes, over the limit of {MAX_EVAL_BYTES}", bytes.len()),
            ));
        }
        let crate::data::Dataset::Tokens(tokens) =
            crate::data::parse_token_blob(&bytes, *vocab as usize)?
        else {
            return Err(ComputeError::config("eval_dataset", "not a token blob"));
        };
        let window = *context as usize + 1;
        let examples: Vec<_> = tokens
            .chunks_exact(window)
            .take(EVAL_EXAMPLES)
            .map(|w| crate::data::Example {
                tokens: w.to_vec(),
                answer_start: 0,
            })
            .collect();
        if examples.is_empty() {
            return Err(ComputeError::config(
                "eval_dataset",
                format!("fewer than {window} tokens: not one window of the model's context"),
            ));
        }
        return Ok(examples);
    }
    Ok(match &t.dataset {
        market_protocol::DatasetSource::Arithmetic { max_operand, .. } => {
            crate::data::arithmetic::held_out(*max_operand, EVAL_EXAMPLES)
        }
        _ => Vec::new(),
    })
}

/// What a pooled run produced, run in one process.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledRun {
    /// The global state after each round (`θ_1 … θ_R` with their outer momentum).
    pub globals: Vec<TrainState>,
    /// Each slot's final state of the last round.
    pub slots: Vec<TrainState>,
}

/// One round of a pooled run, as [`run_locally`] saw it.
#[derive(Debug, Clone, Copy)]
pub struct RoundRecord<'a> {
    /// The round.
    pub round: u32,
    /// Each slot's start state (its checkpoint 0), in slot order.
    pub starts: &'a [TrainState],
    /// Each slot's final state, in slot order.
    pub finals: &'a [TrainState],
    /// The merged global state after the round.
    pub global: &'a TrainState,
}

/// Runs a whole pooled task here, every slot of every round in turn (tests, vectors and the
/// quality experiment; on the network each slot-round is a worker's committed, audited run).
/// `on_round` sees each round.
pub fn run_locally(
    job: &TrainingJob,
    mut on_round: impl FnMut(&RoundRecord<'_>),
) -> Result<PooledRun> {
    let Some(pool) = job.pool else {
        return Err(ComputeError::config("pool", "the task is not pooled"));
    };
    let mut global = initial_global(job);
    let mut previous: Vec<Option<TrainState>> = vec![None; pool.slots as usize];
    let mut globals = Vec::with_capacity(pool.rounds as usize);
    for round in 0..pool.rounds {
        let mut starts = Vec::with_capacity(pool.slots as usize);
        let mut finals = Vec::with_capacity(pool.slots as usize);
        for slot in 0..pool.slots {
            let run = job.slot_round(slot, round)?;
            let start = slot_start(job, &global, previous[slot as usize].as_ref());
            let mut state = start.clone();
            for segment in 0..run.segments() {
                state = run.run_segment(segment, &state, |_, _| {})?.0;
            }
            starts.push(start);
            finals.push(state);
        }
        global = outer_step(&pool, &global, &finals)?;
        on_round(&RoundRecord {
            round,
            starts: &starts,
            finals: &finals,
            global: &global,
        });
        globals.push(global.clone());
        previous = finals.into_iter().map(Some).collect();
    }
    Ok(PooledRun {
        slots: previous.into_iter().flatten().collect(),
        globals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoBlobs;
    use market_protocol::fixtures::training_task;
    use market_protocol::{Identity, Workload};

    fn pooled(slots: u32, rounds: u32, inner: u32) -> TrainingJob {
        let mut task = training_task(&Identity::from_test_label("pool buyer"), 1);
        if let Workload::Training(t) = &mut task.workload {
            t.steps = rounds * inner;
            t.checkpoint_interval = inner.min(5);
            t.pool = Some(market_protocol::fixtures::pool(slots, rounds, inner));
        }
        TrainingJob::from_spec(&task, &NoBlobs).unwrap()
    }

    #[test]
    fn a_pooled_run_is_the_same_bits_every_time_and_its_slots_see_different_batches() {
        let job = pooled(2, 2, 10);
        let a = run_locally(&job, |_| {}).unwrap();
        let b = run_locally(&job, |_| {}).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.globals.len(), 2);
        assert_eq!(a.globals[1].step, 20);
        // Different batch streams: the two slots end a round in different places.
        assert_ne!(a.slots[0].params, a.slots[1].params);
        // Slot 0 of round 1 starts from the merged state and slot 0's own moments.
        let start = slot_start(&job, &a.globals[0], Some(&a.slots[0]));
        assert_eq!(start.params, a.globals[0].params);
        assert_eq!(start.step, 10);
    }

    #[test]
    fn the_merge_is_the_written_nesterov_step() {
        let job = pooled(2, 1, 4);
        let pool = job.pool.unwrap();
        let global = TrainState {
            step: 0,
            params: vec![1.0, -2.0],
            m: vec![0.5, 0.0],
            v: Vec::new(),
        };
        let at = |p: Vec<f32>| TrainState {
            step: 4,
            params: p,
            m: vec![0.0; 2],
            v: Vec::new(),
        };
        let next =
            outer_step(&pool, &global, &[at(vec![0.5, -2.5]), at(vec![0.75, -1.0])]).unwrap();
        // Parameter 0: s = 0.5 + 0.25 = 0.75, g = 0.375, u = 0.9·0.5 + 0.375 = 0.825,
        // θ = 1 − 0.7·(0.375 + 0.9·0.825).
        let (lr, mu) = (0.7f32, 0.9f32);
        let g0 = (0.5f32 + 0.25) / 2.0;
        let u0 = mu * 0.5 + g0;
        assert_eq!(next.m[0].to_bits(), u0.to_bits());
        assert_eq!(
            next.params[0].to_bits(),
            (1.0 - lr * (g0 + mu * u0)).to_bits()
        );
        // Parameter 1: s = 0.5 + (−1) = −0.5.
        let g1 = (0.5f32 + -1.0) / 2.0;
        let u1 = mu * 0.0 + g1;
        assert_eq!(
            next.params[1].to_bits(),
            (-2.0 - lr * (g1 + mu * u1)).to_bits()
        );
        assert_eq!(next.step, 4);
        // A result from the wrong step, or a missing slot, is refused.
        assert!(outer_step(&pool, &global, &[at(vec![0.5, -2.5])]).is_err());
        let mut late = at(vec![0.5, -2.5]);
        late.step = 5;
        assert!(outer_step(&pool, &global, &[late.clone(), late]).is_err());
    }

    #[test]
    fn a_state_without_its_moments_is_refused_not_indexed() {
        let job = pooled(2, 1, 4);
        let run = job.slot_round(0, 0).unwrap();
        let mut state = slot_start(&job, &initial_global(&job), None);
        state.m.clear();
        state.v.clear();
        assert!(matches!(
            run.run_segment(0, &state, |_, _| {}),
            Err(ComputeError::StateMismatch(_))
        ));
        let mut global = initial_global(&job);
        global.m.clear();
        let finals = [state.clone(), state];
        assert!(outer_step(&job.pool.unwrap(), &global, &finals).is_err());
    }

    #[test]
    fn a_global_state_does_not_hash_as_a_slot_state() {
        let job = pooled(2, 1, 4);
        let global = initial_global(&job);
        assert_ne!(
            global_hash(&global, &job.layout).unwrap(),
            global.hash(&job.layout).unwrap()
        );
    }

    #[test]
    fn a_pool_must_add_up_to_the_task() {
        let mut task = training_task(&Identity::from_test_label("pool buyer"), 1);
        if let Workload::Training(t) = &mut task.workload {
            t.steps = 100;
            t.pool = Some(market_protocol::fixtures::pool(2, 3, 30));
        }
        let e = TrainingJob::from_spec(&task, &NoBlobs).unwrap_err();
        assert!(e.to_string().contains("rounds × inner_steps"), "{e}");
    }
}
