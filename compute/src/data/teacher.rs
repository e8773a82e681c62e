//! Teacher-MLP regression: inputs uniform in [-1, 1), targets from a random one-hidden-layer
//! tanh network, all drawn from the task seed. A student MLP can fit it exactly in principle,
//! so loss curves say something.

use super::Dataset;
use crate::error::{ComputeError, Result};
use crate::rng::{self, Purpose};

/// Hidden units of the teacher.
pub const TEACHER_HIDDEN: usize = 16;
/// The most rows a task may generate.
pub const MAX_ROWS: u32 = 1_000_000;
/// The most features times rows a task may generate.
pub const MAX_VALUES: u64 = 64 << 20;

/// Generates `rows` examples with `features` inputs and `outputs` targets.
pub fn generate(seed: u64, features: usize, outputs: usize, rows: u32) -> Result<Dataset> {
    if rows == 0 || rows > MAX_ROWS {
        return Err(ComputeError::config(
            "dataset.examples",
            format!("is {rows}, must be between 1 and {MAX_ROWS}"),
        ));
    }
    if (features + outputs) as u64 * u64::from(rows) > MAX_VALUES {
        return Err(ComputeError::config(
            "dataset.examples",
            format!("{rows} rows of {features} features and {outputs} outputs is over the limit"),
        ));
    }
    let mut t = rng::stream(seed, Purpose::Teacher, 0);
    let s1 = 2.0 / (features as f32).sqrt();
    let w1: Vec<f32> = (0..features * TEACHER_HIDDEN)
        .map(|_| rng::symmetric_f32(&mut t, s1))
        .collect();
    let b1: Vec<f32> = (0..TEACHER_HIDDEN)
        .map(|_| rng::symmetric_f32(&mut t, 0.5))
        .collect();
    let s2 = 2.0 / (TEACHER_HIDDEN as f32).sqrt();
    let w2: Vec<f32> = (0..TEACHER_HIDDEN * outputs)
        .map(|_| rng::symmetric_f32(&mut t, s2))
        .collect();
    let mut d = rng::stream(seed, Purpose::Data, 0);
    let rows = rows as usize;
    let x: Vec<f32> = (0..rows * features)
        .map(|_| rng::symmetric_f32(&mut d, 1.0))
        .collect();
    let mut y = vec![0.0f32; rows * outputs];
    let mut hidden = [0.0f32; TEACHER_HIDDEN];
    for r in 0..rows {
        let xr = &x[r * features..(r + 1) * features];
        for (j, h) in hidden.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (i, xi) in xr.iter().enumerate() {
                acc += xi * w1[i * TEACHER_HIDDEN + j];
            }
            *h = libm::tanhf(acc + b1[j]);
        }
        for o in 0..outputs {
            let mut acc = 0.0f32;
            for (j, h) in hidden.iter().enumerate() {
                acc += h * w2[j * outputs + o];
            }
            y[r * outputs + o] = acc;
        }
    }
    Ok(Dataset::Regression {
        x,
        y,
        features,
        outputs,
    })
}
