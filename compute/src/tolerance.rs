//! How close two states of a `native` or `cuda` run must be to count as the same.
//!
//! Per tensor, the relative L2 distance `‖a − b‖ / max(‖b‖, tiny)`. The threshold is justified by
//! measurement in `spec/COMPUTE.md`: honest re-executions on other thread counts or kernels stay
//! far below it, while every cheating strategy moves at least one tensor far above it.

use crate::state::TrainState;
use crate::zoo::ParamLayout;

/// How far a `native` or `cuda` re-computation of a generated token's logit may be from the
/// committed one, relative to `1 + |logit|` ([`crate::llama::generate::Match::Within`]).
/// Measured on SmolLM2-135M (BENCHMARKS.md, "llama"): `native` and `repro` differ by at most
/// 4.3e-6 over 119 generated tokens, 23 times under this; the bound stays tight because a
/// token whose logit is within it of the best counts as a near tie and is accepted.
pub const LOGIT_TOLERANCE: f32 = 1e-4;

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

/// Whether two states match within [`MAX_RELATIVE_L2`] (and are at the same step).
pub fn states_match(layout: &ParamLayout, a: &TrainState, b: &TrainState) -> bool {
    a.step == b.step && worst_relative_l2(layout, a, b).0 <= MAX_RELATIVE_L2
}
