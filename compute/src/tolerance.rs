//! How close two states of a `native` or `cuda` run must be to count as the same.
//!
//! Per tensor, the relative L2 distance `‖a − b‖ / max(‖b‖, tiny)`; and over all parameters, the
//! distance between the two runs' updates from the segment's start ([`segment_matches`]). The
//! thresholds are justified by measurement in `spec/COMPUTE.md` section 7: honest
//! re-executions on other kernels stay below them on segments of at most
//! [`MAX_TOLERANT_INTERVAL`] steps, and the worker strategies that skip work (a skipped step,
//! only the last step, weights rounded to bfloat16) fail one of them. What they cannot
//! separate from honest work (cheaper arithmetic of the same size as the kernels' own drift) is
//! listed there too.

use crate::state::TrainState;
use crate::zoo::ParamLayout;

/// How far a `native` or `cuda` re-computation of a generated token's logit may be from the
/// committed one, relative to `1 + |logit|` ([`crate::llama::generate::Match::Within`]).
/// Measured on SmolLM2-135M (BENCHMARKS.md, "llama"): `native` and `repro` differ by at most
/// 4.3e-6 over 119 generated tokens, 23 times under this; the bound stays tight because a
/// token whose logit is within it of the best counts as a near tie and is accepted.
pub const LOGIT_TOLERANCE: f32 = 1e-4;

/// The longest segment (checkpoint interval) a `native` or `cuda` training task may have.
/// Two machines' runs from the same state drift apart exponentially with the steps (chaotic
/// dynamics; AdamW turns rounding noise in a tensor without gradient into steps of a learning
/// rate): measured on the example `gpt` (AdamW, lr 0.003) from 1.28e-2 at 10 steps to 7.0e-2
/// at 50, and at lr 0.01 from 4.67e-2 at 10 to 5.85e-2 at 20, over the state tolerance, so an
/// honest worker could be slashed on a longer segment (and even at 10 the margin at lr 0.01 is
/// thin: `spec/COMPUTE.md` section 7).
/// `spec/COMPUTE.md` section 7.
pub const MAX_TOLERANT_INTERVAL: u32 = 10;

/// The largest relative L2 distance per tensor that still counts as a match.
pub const MAX_RELATIVE_L2: f64 = 5e-2;

/// The relative L2 distance `‖a − b‖ / max(‖b‖, 1e-12)` of two equally long vectors, in f64
/// (NaN if either holds one): the one measure of "close" for states and output rows.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let d = f64::from(*x) - f64::from(*y);
        diff += d * d;
        norm += f64::from(*y) * f64::from(*y);
    }
    diff.sqrt() / norm.sqrt().max(1e-12)
}

/// The worst per-tensor relative L2 distance between two states, with the tensor's name.
pub fn worst_relative_l2(layout: &ParamLayout, a: &TrainState, b: &TrainState) -> (f64, String) {
    let mut worst = (0.0f64, String::new());
    for ((prefix, xa), (_, xb)) in a.groups().into_iter().zip(b.groups()) {
        if xa.len() != xb.len() {
            return (f64::INFINITY, format!("{prefix} (sizes differ)"));
        }
        if xa.is_empty() {
            continue;
        }
        for slot in layout.slots() {
            let r = slot.range();
            let rel = relative_l2(&xa[r.clone()], &xb[r]);
            if rel > worst.0 || rel.is_nan() {
                worst = (rel, format!("{prefix}.{}", slot.name));
            }
        }
    }
    worst
}

/// Whether state `a` matches the reference `b` (a re-execution: distances are relative to it)
/// within [`MAX_RELATIVE_L2`], at the same step: the state check alone, without
/// [`segment_matches`]'s update check.
pub fn states_match(layout: &ParamLayout, a: &TrainState, b: &TrainState) -> bool {
    a.step == b.step && worst_relative_l2(layout, a, b).0 <= MAX_RELATIVE_L2
}

/// The largest relative L2 distance between two runs' parameter *updates* over one segment
/// ([`update_distance`]). The state check alone is blind where a segment moves the parameters
/// little against their size (a small learning rate, plain SGD, fine-tuning a pretrained
/// model): a worker that skipped every step would be within [`MAX_RELATIVE_L2`] of the honest
/// end. Measured in `spec/COMPUTE.md` section 7.
pub const MAX_UPDATE_RELATIVE_L2: f64 = 2e-2;

/// An update smaller than this share of the parameters' norm is measured as if it were this
/// large. Where a step moves each parameter by only a few units in its last place, two kernels
/// whose gradients differ in their last bits can round a parameter's update to neighbouring
/// binary32 values, a difference no longer small against an update that size. The floor keeps
/// such an honest segment from failing; its price: a worker may skip up to about
/// `MAX_UPDATE_RELATIVE_L2 · MIN_UPDATE_SHARE / u` of the work of a segment whose update is `u`
/// of the norm (all of it under `u` = 2e-7). Measured in `spec/COMPUTE.md` section 7: honest
/// segments under the floor stay far below the threshold.
pub const MIN_UPDATE_SHARE: f64 = 1e-5;

/// How far `theirs`'s update of the parameters from `start` is from `ours`, relative to ours:
/// `‖θ_theirs − θ_ours‖ / max(‖θ_ours − θ_start‖, MIN_UPDATE_SHARE · ‖θ_ours‖, 1e-30)` over
/// all parameters together, in binary64 (∞ if the sizes differ, NaN if a value is NaN).
/// Together, not per tensor: a tensor whose true gradient is zero (an attention key bias) moves
/// by rounding noise alone, differently in each profile, while no cheaper computation moves
/// only some tensors.
pub fn update_distance(start: &TrainState, ours: &TrainState, theirs: &TrainState) -> f64 {
    if start.params.len() != ours.params.len() || ours.params.len() != theirs.params.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut update, mut norm) = (0.0f64, 0.0f64, 0.0f64);
    for ((s, a), b) in start.params.iter().zip(&ours.params).zip(&theirs.params) {
        let (s, a, b) = (f64::from(*s), f64::from(*a), f64::from(*b));
        diff += (b - a) * (b - a);
        update += (a - s) * (a - s);
        norm += a * a;
    }
    diff.sqrt() / update.sqrt().max(MIN_UPDATE_SHARE * norm.sqrt()).max(1e-30)
}

/// Whether `theirs` (a worker's end state of a segment that started at `start`) matches `ours`
/// (its re-execution) in a `native` or `cuda` audit: the same step, every tensor within
/// [`MAX_RELATIVE_L2`], and the parameters' update within [`MAX_UPDATE_RELATIVE_L2`]. `Err`
/// says which check failed and by how much.
pub fn segment_matches(
    layout: &ParamLayout,
    start: &TrainState,
    ours: &TrainState,
    theirs: &TrainState,
) -> Result<(), String> {
    if ours.step != theirs.step {
        return Err(format!(
            "the end state is at step {}, re-execution at {}",
            theirs.step, ours.step
        ));
    }
    let (worst, tensor) = worst_relative_l2(layout, theirs, ours);
    if worst.is_nan() || worst > MAX_RELATIVE_L2 {
        return Err(format!(
            "{tensor} differs by relative L2 {worst:.3e} (at most {MAX_RELATIVE_L2:e})"
        ));
    }
    let update = update_distance(start, ours, theirs);
    if update.is_nan() || update > MAX_UPDATE_RELATIVE_L2 {
        return Err(format!(
            "the parameters' update over the segment differs by relative L2 {update:.3e} \
             (at most {MAX_UPDATE_RELATIVE_L2:e})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(params: &[f32]) -> TrainState {
        TrainState {
            step: 1,
            params: params.to_vec(),
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    #[test]
    fn the_update_distance_is_relative_to_our_update_above_its_floor() {
        let start = state(&[1.0, 1.0]);
        let ours = state(&[1.0 - 0.01, 1.0]);
        // Half of our update: distance 0.5.
        let half = state(&[1.0 - 0.005, 1.0]);
        assert!((update_distance(&start, &ours, &half) - 0.5).abs() < 1e-4);
        assert_eq!(update_distance(&start, &ours, &ours), 0.0);
        // An update under the floor (about 1e-6 of the norm) is measured against the floor.
        let tiny = state(&[1.0, 1.0 - 1.5e-6]);
        let d = update_distance(&start, &tiny, &start);
        let floor = MIN_UPDATE_SHARE * (1.0f64 + f64::from(1.0f32 - 1.5e-6).powi(2)).sqrt();
        let expected = f64::from(1.0f32 - (1.0 - 1.5e-6)) / floor;
        assert!((d - expected).abs() < 1e-9, "{d} vs {expected}");
        // Sizes that differ, and NaN, never pass.
        assert_eq!(
            update_distance(&start, &ours, &state(&[1.0])),
            f64::INFINITY
        );
        assert!(update_distance(&start, &ours, &state(&[f32::NAN, 1.0])).is_nan());
    }

    #[test]
    fn a_segment_matches_only_at_the_same_step_within_both_checks() {
        let layout = ParamLayout::new(vec![("w".to_owned(), vec![2])]);
        let start = state(&[1.0, 1.0]);
        let ours = state(&[0.9, 1.0]);
        assert_eq!(segment_matches(&layout, &start, &ours, &ours), Ok(()));
        let mut later = ours.clone();
        later.step = 2;
        assert!(segment_matches(&layout, &start, &ours, &later)
            .unwrap_err()
            .contains("step 2"));
        // Within the state tolerance (0.03 of the tensor), not within the update's (0.3).
        let lazy = state(&[0.93, 1.0]);
        assert!(states_match(&layout, &lazy, &ours));
        assert!(segment_matches(&layout, &start, &ours, &lazy)
            .unwrap_err()
            .contains("update"));
        let nan = state(&[f32::NAN, 1.0]);
        assert!(segment_matches(&layout, &start, &ours, &nan).is_err());
    }
}
