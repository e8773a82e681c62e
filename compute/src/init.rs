//! Seeded parameter initialisation and the weights file format.
//!
//! Draws come from the task's `Init` stream, slot by slot in layout (name) order. Weights files
//! (final weights of a training task, inputs of an inference task) are safetensors with one
//! tensor per parameter under its layout name.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{ComputeError, Result};
use crate::rng::{self, Purpose};
use crate::zoo::{ModelConfig, ParamLayout};

const STD: f32 = 0.02;
const SQRT3: f32 = 1.732_050_8;

/// Seeded initial parameters for `model`.
pub fn init_params(model: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut r = rng::stream(seed, Purpose::Init, 0);
    let mut params = vec![0.0f32; layout.total()];
    for slot in layout.slots() {
        let name = slot.name.as_str();
        let out = &mut params[slot.range()];
        let bound = match model {
            ModelConfig::Gpt(g) => {
                if name.ends_with("ln1.w") || name.ends_with("ln2.w") || name == "lnf.w" {
                    out.iter_mut().for_each(|v| *v = 1.0);
                    continue;
                }
                if name.ends_with(".b") {
                    continue;
                }
                // GPT-2: residual projections scaled down by the depth.
                let scale = if name.ends_with("proj.w") {
                    1.0 / (2.0 * g.layers as f32).sqrt()
                } else {
                    1.0
                };
                STD * SQRT3 * scale
            }
            ModelConfig::Llama(_) => {
                if name.ends_with("norm.weight") {
                    out.iter_mut().for_each(|v| *v = 1.0);
                    continue;
                }
                STD * SQRT3
            }
            ModelConfig::Mlp(_) => {
                if name.ends_with(".b") {
                    continue;
                }
                let (fan_in, fan_out) = (slot.shape[0] as f32, slot.shape[1] as f32);
                (6.0 / (fan_in + fan_out)).sqrt()
            }
        };
        out.iter_mut()
            .for_each(|v| *v = rng::symmetric_f32(&mut r, bound));
    }
    params
}

/// Weights as a safetensors file (one tensor per parameter, metadata `format`).
pub fn weights_to_bytes(layout: &ParamLayout, params: &[f32]) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = layout
        .slots()
        .iter()
        .map(|s| {
            params[s.range()]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        })
        .collect();
    let views = layout
        .slots()
        .iter()
        .zip(&bytes)
        .map(|(s, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.shape.clone(), b)
                .map(|v| (s.name.clone(), v))
                .map_err(|e| ComputeError::InvalidBlob {
                    what: "weights",
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "market-weights-v1".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| ComputeError::InvalidBlob {
        what: "weights",
        reason: e.to_string(),
    })
}

/// Reads weights for `layout`: every parameter present with the right shape, F32 (or F16 or
/// BF16, widened exactly), all finite.
pub fn weights_from_bytes(layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>> {
    read_weights(layout, bytes, true)
}

/// Checks weights for `layout` as [`weights_from_bytes`] reads them, holding one tensor at a
/// time rather than the model (how a node validates a posted task it does not run).
pub fn check_weights(layout: &ParamLayout, bytes: &[u8]) -> Result<()> {
    read_weights(layout, bytes, false).map(drop)
}

fn read_weights(layout: &ParamLayout, bytes: &[u8], keep: bool) -> Result<Vec<f32>> {
    let invalid = |reason: String| ComputeError::InvalidBlob {
        what: "weights",
        reason,
    };
    if bytes.len() > crate::state::MAX_STATE_BYTES {
        return Err(invalid(format!("{} bytes is over the limit", bytes.len())));
    }
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| invalid(format!("not safetensors: {e}")))?;
    // Sized by the bytes that arrived, not by the model the task claims: a 50M-parameter
    // layout must not reserve 200 MB for a blob of a few bytes that is about to be refused.
    let mut params = Vec::with_capacity(if keep {
        layout.total().min(bytes.len() / 2)
    } else {
        0
    });
    for slot in layout.slots() {
        let t = st
            .tensor(&slot.name)
            .map_err(|_| invalid(format!("missing tensor `{}`", slot.name)))?;
        let wrong = || {
            invalid(format!(
                "`{}` is {:?} {:?}, expected F32 (or F16, BF16) {:?}",
                slot.name,
                t.dtype(),
                t.shape(),
                slot.shape
            ))
        };
        if t.shape() != slot.shape.as_slice() {
            return Err(wrong());
        }
        let start = params.len();
        let data = t.data();
        // Half-precision tensors (how Hugging Face ships most checkpoints) widen exactly:
        // every F16 and BF16 value is a binary32 value.
        match t.dtype() {
            Dtype::F32 => params.extend(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Dtype::F16 => params.extend(
                data.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            Dtype::BF16 => params.extend(
                data.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            _ => return Err(wrong()),
        }
        if params[start..].iter().any(|v| !v.is_finite()) {
            return Err(invalid(format!("`{}` contains NaN or infinity", slot.name)));
        }
        if !keep {
            params.clear();
        }
    }
    Ok(params)
}
