//! Batches: which examples a step trains on, drawn from the step's own random stream.

use crate::data::{arithmetic, Dataset};
use crate::error::{ComputeError, Result};
use crate::rng::{self, Purpose};

/// `rows` token sequences of `len` positions, with next-token targets and which positions count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Sequences in the batch.
    pub rows: usize,
    /// Positions per sequence (the model's context).
    pub len: usize,
    /// Input tokens, `rows × len`.
    pub inputs: Vec<u32>,
    /// Target tokens, `rows × len`.
    pub targets: Vec<u32>,
    /// Whether each position is scored.
    pub scored: Vec<bool>,
}

/// Rows of features and targets.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionBatch {
    /// Rows in the batch.
    pub rows: usize,
    /// Features, `rows × features`.
    pub x: Vec<f32>,
    /// Targets, `rows × outputs`.
    pub y: Vec<f32>,
}

/// Checks that `data` can feed batches of `batch_size` sequences of `context` tokens.
pub fn check_token_data(data: &Dataset, batch_size: usize, context: usize) -> Result<()> {
    match data {
        Dataset::Tokens(t) if t.len() < context + 1 => Err(ComputeError::config(
            "dataset",
            format!(
                "has {} tokens, fewer than one window of context + 1 = {}",
                t.len(),
                context + 1
            ),
        )),
        Dataset::Examples(e) if e.len() < batch_size => Err(ComputeError::config(
            "batch_size",
            format!(
                "is {batch_size}, larger than the dataset's {} examples",
                e.len()
            ),
        )),
        Dataset::Examples(e) => match e.iter().find(|x| x.tokens.len() > context + 1) {
            Some(long) => Err(ComputeError::config(
                "model.context",
                format!(
                    "is {context}, too short for an example of {} tokens",
                    long.tokens.len()
                ),
            )),
            None => Ok(()),
        },
        Dataset::Regression { .. } => Err(ComputeError::config(
            "dataset",
            "is a regression set; a gpt model needs tokens",
        )),
        Dataset::Tokens(_) => Ok(()),
    }
}

/// The token batch of training step `step` on batch stream `lane`: 0 for a run on one worker,
/// `slot + 1` for a slot of a pooled run (each slot draws its own batches).
pub fn token_batch(
    data: &Dataset,
    seed: u64,
    step: u32,
    lane: u64,
    batch_size: usize,
    context: usize,
) -> TokenBatch {
    let mut r = rng::stream2(seed, Purpose::Batch, u64::from(step), lane);
    let n = batch_size * context;
    let mut batch = TokenBatch {
        rows: batch_size,
        len: context,
        inputs: vec![arithmetic::END; n],
        targets: vec![arithmetic::END; n],
        scored: vec![false; n],
    };
    for row in 0..batch_size {
        let base = row * context;
        match data {
            Dataset::Tokens(toks) => {
                let start = rng::below(&mut r, (toks.len() - context) as u64) as usize;
                batch.inputs[base..base + context].copy_from_slice(&toks[start..start + context]);
                batch.targets[base..base + context]
                    .copy_from_slice(&toks[start + 1..start + context + 1]);
                batch.scored[base..base + context]
                    .iter_mut()
                    .for_each(|s| *s = true);
            }
            Dataset::Examples(examples) => {
                let e = &examples[rng::below(&mut r, examples.len() as u64) as usize];
                put_example(&mut batch, row, e);
            }
            Dataset::Regression { .. } => unreachable!("checked by check_token_data"),
        }
    }
    batch
}

/// Writes example `e` into row `row` of `batch` (positions past it stay padding, unscored).
fn put_example(batch: &mut TokenBatch, row: usize, e: &crate::data::Example) {
    let base = row * batch.len;
    let l = e.tokens.len().min(batch.len + 1);
    for t in 0..l.saturating_sub(1) {
        batch.inputs[base + t] = e.tokens[t];
        batch.targets[base + t] = e.tokens[t + 1];
        batch.scored[base + t] = t + 1 >= e.answer_start;
    }
}

/// The examples in order, as one batch (evaluation: no draws).
pub fn examples_batch(examples: &[crate::data::Example], context: usize) -> TokenBatch {
    let n = examples.len() * context;
    let mut batch = TokenBatch {
        rows: examples.len(),
        len: context,
        inputs: vec![arithmetic::END; n],
        targets: vec![arithmetic::END; n],
        scored: vec![false; n],
    };
    for (row, e) in examples.iter().enumerate() {
        put_example(&mut batch, row, e);
    }
    batch
}

/// The regression batch of training step `step` on batch stream `lane` (see
/// [`token_batch`]).
pub fn regression_batch(
    data: &Dataset,
    seed: u64,
    step: u32,
    lane: u64,
    batch_size: usize,
) -> RegressionBatch {
    let Dataset::Regression {
        x,
        y,
        features,
        outputs,
    } = data
    else {
        unreachable!("checked when the job was built")
    };
    let rows_total = x.len() / features;
    let mut r = rng::stream2(seed, Purpose::Batch, u64::from(step), lane);
    let mut batch = RegressionBatch {
        rows: batch_size,
        x: Vec::with_capacity(batch_size * features),
        y: Vec::with_capacity(batch_size * outputs),
    };
    for _ in 0..batch_size {
        let i = rng::below(&mut r, rows_total as u64) as usize;
        batch
            .x
            .extend_from_slice(&x[i * features..(i + 1) * features]);
        batch
            .y
            .extend_from_slice(&y[i * outputs..(i + 1) * outputs]);
    }
    batch
}
