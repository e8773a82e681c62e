//! Dataset blobs in safetensors: `tokens` (u32, 1-D) for `gpt`; `x` (f32, 2-D) and `y` (f32,
//! 2-D) for `mlp`. Sizes and shapes are checked before anything is copied.

use safetensors::{Dtype, SafeTensors};

use super::Dataset;
use crate::error::{ComputeError, Result};

/// The largest dataset blob accepted.
pub const MAX_DATASET_BYTES: usize = 1 << 30;

fn invalid(reason: impl Into<String>) -> ComputeError {
    ComputeError::InvalidBlob {
        what: "dataset",
        reason: reason.into(),
    }
}

fn open(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    if bytes.len() > MAX_DATASET_BYTES {
        return Err(invalid(format!(
            "{} bytes, over the limit of {MAX_DATASET_BYTES}",
            bytes.len()
        )));
    }
    SafeTensors::deserialize(bytes).map_err(|e| invalid(format!("not safetensors: {e}")))
}

fn f32_le(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Reads a `gpt` dataset: a 1-D u32 tensor `tokens`, every token below `vocab`.
pub fn parse_token_blob(bytes: &[u8], vocab: usize) -> Result<Dataset> {
    let st = open(bytes)?;
    let t = st
        .tensor("tokens")
        .map_err(|_| invalid("no tensor named `tokens`"))?;
    if t.dtype() != Dtype::U32 {
        return Err(invalid(format!("`tokens` is {:?}, must be U32", t.dtype())));
    }
    if t.shape().len() != 1 {
        return Err(invalid(format!(
            "`tokens` has shape {:?}, must be 1-D",
            t.shape()
        )));
    }
    let tokens: Vec<u32> = t
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(bad) = tokens.iter().find(|&&tok| tok as usize >= vocab) {
        return Err(invalid(format!(
            "token {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(Dataset::Tokens(tokens))
}

/// Reads the inputs of an `mlp` inference task: `x` f32 `[rows, features]` (a `y`, if present,
/// is ignored).
pub fn parse_regression_blob_x(bytes: &[u8], features: usize) -> Result<Vec<f32>> {
    let st = open(bytes)?;
    let t = st.tensor("x").map_err(|_| invalid("no tensor named `x`"))?;
    if t.dtype() != Dtype::F32 {
        return Err(invalid(format!("`x` is {:?}, must be F32", t.dtype())));
    }
    match t.shape() {
        [_, c] if *c == features => {}
        shape => {
            return Err(invalid(format!(
                "`x` has shape {shape:?}, must be [rows, {features}]"
            )))
        }
    }
    let x = f32_le(t.data());
    if x.iter().any(|v| !v.is_finite()) {
        return Err(invalid("contains NaN or infinity"));
    }
    Ok(x)
}

/// Reads an `mlp` dataset: `x` f32 `[rows, features]` and `y` f32 `[rows, outputs]`.
pub fn parse_regression_blob(bytes: &[u8], features: usize, outputs: usize) -> Result<Dataset> {
    let st = open(bytes)?;
    let get = |name: &str, cols: usize| -> Result<(usize, Vec<f32>)> {
        let t = st
            .tensor(name)
            .map_err(|_| invalid(format!("no tensor named `{name}`")))?;
        if t.dtype() != Dtype::F32 {
            return Err(invalid(format!("`{name}` is {:?}, must be F32", t.dtype())));
        }
        match t.shape() {
            [rows, c] if *c == cols => Ok((*rows, f32_le(t.data()))),
            shape => Err(invalid(format!(
                "`{name}` has shape {shape:?}, must be [rows, {cols}]"
            ))),
        }
    };
    let (rows_x, x) = get("x", features)?;
    let (rows_y, y) = get("y", outputs)?;
    if rows_x != rows_y {
        return Err(invalid(format!(
            "`x` has {rows_x} rows but `y` has {rows_y}"
        )));
    }
    if x.iter().chain(&y).any(|v| !v.is_finite()) {
        return Err(invalid("contains NaN or infinity"));
    }
    Ok(Dataset::Regression {
        x,
        y,
        features,
        outputs,
    })
}
