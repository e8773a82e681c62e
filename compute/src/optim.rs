//! Optimizers, elementwise and so deterministic in any profile: AdamW (decoupled weight decay,
//! as in PyTorch) and SGD with momentum. Weight decay applies to matrices, not to biases, gains
//! or embeddings' 1-D neighbours.

use market_protocol::OptimizerSpec;
use rayon::prelude::*;

use crate::error::{ComputeError, Result};
use crate::state::TrainState;
use crate::zoo::ParamLayout;

/// A validated optimizer with its hyper-parameters as `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// AdamW.
    AdamW {
        /// Learning rate.
        lr: f32,
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator epsilon.
        eps: f32,
        /// Decoupled weight decay.
        weight_decay: f32,
    },
    /// SGD with momentum.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum.
        momentum: f32,
        /// L2 weight decay added to the gradient.
        weight_decay: f32,
    },
}

fn check(field: &'static str, v: f32, min: f32, max: f32, max_inclusive: bool) -> Result<f32> {
    let ok = v >= min && if max_inclusive { v <= max } else { v < max };
    if !ok {
        let close = if max_inclusive { ']' } else { ')' };
        return Err(ComputeError::config(
            field,
            format!("is {v}, must be in [{min}, {max}{close}"),
        ));
    }
    Ok(v)
}

impl Optimizer {
    /// Validates the task's optimizer settings.
    pub fn from_spec(spec: &OptimizerSpec) -> Result<Self> {
        Ok(match spec {
            OptimizerSpec::Adamw {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => Self::AdamW {
                lr: check("optimizer.lr", lr.to_f32(), 0.0, 10.0, true)?,
                beta1: check("optimizer.beta1", beta1.to_f32(), 0.0, 1.0, false)?,
                beta2: check("optimizer.beta2", beta2.to_f32(), 0.0, 1.0, false)?,
                eps: check("optimizer.eps", eps.to_f32(), f32::MIN_POSITIVE, 1.0, true)?,
                weight_decay: check(
                    "optimizer.weight_decay",
                    weight_decay.to_f32(),
                    0.0,
                    1.0,
                    true,
                )?,
            },
            OptimizerSpec::Sgd {
                lr,
                momentum,
                weight_decay,
            } => Self::Sgd {
                lr: check("optimizer.lr", lr.to_f32(), 0.0, 10.0, true)?,
                momentum: check("optimizer.momentum", momentum.to_f32(), 0.0, 1.0, false)?,
                weight_decay: check(
                    "optimizer.weight_decay",
                    weight_decay.to_f32(),
                    0.0,
                    1.0,
                    true,
                )?,
            },
        })
    }

    /// Whether the state keeps second moments.
    pub fn has_second_moment(&self) -> bool {
        matches!(self, Self::AdamW { .. })
    }

    /// Applies one update with `grads` and advances the step counter.
    pub fn step(&self, layout: &ParamLayout, state: &mut TrainState, grads: &[f32]) {
        let t = state.step + 1;
        for slot in layout.slots() {
            let decays = slot.shape.len() >= 2;
            let r = slot.range();
            let p = &mut state.params[r.clone()];
            let g = &grads[r.clone()];
            match *self {
                Self::AdamW {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let wd = if decays { weight_decay } else { 0.0 };
                    let c1 = 1.0 - powi(beta1, t);
                    let c2 = 1.0 - powi(beta2, t);
                    let m = &mut state.m[r.clone()];
                    let v = &mut state.v[r];
                    p.par_iter_mut()
                        .zip(m.par_iter_mut())
                        .zip(v.par_iter_mut())
                        .zip(g.par_iter())
                        .for_each(|(((p, m), v), g)| {
                            *m = beta1 * *m + (1.0 - beta1) * *g;
                            *v = beta2 * *v + (1.0 - beta2) * *g * *g;
                            let mhat = *m / c1;
                            let vhat = *v / c2;
                            *p = *p - lr * (mhat / (vhat.sqrt() + eps) + wd * *p);
                        });
                }
                Self::Sgd {
                    lr,
                    momentum,
                    weight_decay,
                } => {
                    let wd = if decays { weight_decay } else { 0.0 };
                    let m = &mut state.m[r];
                    p.par_iter_mut()
                        .zip(m.par_iter_mut())
                        .zip(g.par_iter())
                        .for_each(|((p, m), g)| {
                            let g = *g + wd * *p;
                            *m = momentum * *m + g;
                            *p -= lr * *m;
                        });
                }
            }
        }
        state.step = t;
    }
}

/// `x^n` by square-and-multiply in a fixed order (not `powi`, whose lowering may vary).
fn powi(x: f32, n: u32) -> f32 {
    let (mut base, mut exp, mut acc) = (x, n, 1.0f32);
    while exp > 0 {
        if exp & 1 == 1 {
            acc *= base;
        }
        base = base * base;
        exp >>= 1;
    }
    acc
}
