//! Training state: weights, optimizer moments and the step counter, serialized canonically.
//!
//! The bytes are a safetensors file with one fixed metadata entry and tensors named
//! `param.<name>`, `opt.m.<name>`, `opt.v.<name>` and `step` (u32), which the safetensors crate
//! orders by dtype and then by name. The state hash is blake3 of exactly these bytes, so a
//! checkpoint file can be hashed without being parsed.

use std::collections::HashMap;

use market_protocol::{Hash, StateHash};
use safetensors::{Dtype, SafeTensors};

use crate::error::{ComputeError, Result};
use crate::zoo::ParamLayout;

/// The largest state blob accepted.
pub const MAX_STATE_BYTES: usize = 1 << 31;

const FORMAT_KEY: &str = "format";
/// The format name in a slot's (or any single run's) state metadata.
pub const FORMAT: &str = "market-train-state-v1";

/// A training state in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Optimizer steps taken so far.
    pub step: u32,
    /// Parameters, packed in layout order.
    pub params: Vec<f32>,
    /// First moments (AdamW) or momentum buffers (SGD); same packing.
    pub m: Vec<f32>,
    /// Second moments (AdamW only; empty for SGD).
    pub v: Vec<f32>,
}

fn le_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn invalid(reason: impl Into<String>) -> ComputeError {
    ComputeError::InvalidBlob {
        what: "state",
        reason: reason.into(),
    }
}

/// The groups of a state's tensors, in canonical order: each slot of the layout appears once
/// per group, named `GROUP.SLOT`.
pub const TENSOR_GROUPS: [&str; 3] = ["param", "opt.m", "opt.v"];

impl TrainState {
    /// The state's flat tensor groups with their names ([`TENSOR_GROUPS`]); an optimizer
    /// without moments has empty `opt.*` groups.
    pub fn groups(&self) -> [(&'static str, &[f32]); 3] {
        [
            (TENSOR_GROUPS[0], &self.params),
            (TENSOR_GROUPS[1], &self.m),
            (TENSOR_GROUPS[2], &self.v),
        ]
    }

    /// Fails if any value is NaN or infinite, naming the tensor.
    pub fn check_finite(&self, layout: &ParamLayout) -> Result<()> {
        for (prefix, data) in self.groups() {
            if data.is_empty() {
                continue;
            }
            for slot in layout.slots() {
                if data[slot.range()].iter().any(|v| !v.is_finite()) {
                    return Err(ComputeError::NonFinite {
                        tensor: format!("{prefix}.{}", slot.name),
                        step: self.step,
                    });
                }
            }
        }
        Ok(())
    }

    /// The canonical bytes. Refuses a state holding NaN or infinity.
    pub fn to_bytes(&self, layout: &ParamLayout) -> Result<Vec<u8>> {
        self.to_bytes_as(layout, FORMAT)
    }

    /// The canonical bytes with `format` as the metadata's format (a pooled run's global state
    /// has its own, `crate::pool::GLOBAL_FORMAT`).
    pub fn to_bytes_as(&self, layout: &ParamLayout, format: &str) -> Result<Vec<u8>> {
        self.check_finite(layout)?;
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (prefix, data) in self.groups() {
            if data.is_empty() {
                continue;
            }
            for slot in layout.slots() {
                tensors.push((
                    format!("{prefix}.{}", slot.name),
                    Dtype::F32,
                    slot.shape.clone(),
                    le_bytes(&data[slot.range()]),
                ));
            }
        }
        tensors.push((
            "step".into(),
            Dtype::U32,
            vec![1],
            self.step.to_le_bytes().to_vec(),
        ));
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| invalid(e.to_string()))
            })
            .collect::<Result<_>>()?;
        // One metadata entry only: a map of one key serializes the same way every time.
        let metadata = HashMap::from([(FORMAT_KEY.to_string(), format.to_string())]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(e.to_string()))
    }

    /// The state hash: blake3 of the canonical bytes.
    pub fn hash(&self, layout: &ParamLayout) -> Result<StateHash> {
        Ok(StateHash(Hash::of(&self.to_bytes(layout)?)))
    }

    /// Parses canonical bytes for `layout`. The bytes must re-serialize to themselves, so a
    /// state has exactly one accepted encoding.
    pub fn from_bytes(bytes: &[u8], layout: &ParamLayout) -> Result<Self> {
        Self::from_bytes_as(bytes, layout, FORMAT)
    }

    /// [`TrainState::from_bytes`] for bytes whose metadata's format is `format` (a pooled
    /// run's global state: `crate::pool::GLOBAL_FORMAT`); bytes of any other format are
    /// refused as not canonical.
    pub fn from_bytes_as(bytes: &[u8], layout: &ParamLayout, format: &str) -> Result<Self> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(invalid(format!("{} bytes is over the limit", bytes.len())));
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| invalid(format!("not safetensors: {e}")))?;
        let read = |name: String, shape: &[usize]| -> Result<Option<Vec<f32>>> {
            match st.tensor(&name) {
                Err(_) => Ok(None),
                Ok(t) if t.dtype() == Dtype::F32 && t.shape() == shape => Ok(Some(
                    t.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )),
                Ok(t) => Err(invalid(format!(
                    "`{name}` is {:?} {:?}, expected F32 {shape:?}",
                    t.dtype(),
                    t.shape()
                ))),
            }
        };
        let mut parts: [Vec<f32>; 3] = Default::default();
        for (k, prefix) in TENSOR_GROUPS.iter().enumerate() {
            let mut present = 0;
            for slot in layout.slots() {
                if let Some(data) = read(format!("{prefix}.{}", slot.name), &slot.shape)? {
                    parts[k].extend_from_slice(&data);
                    present += 1;
                }
            }
            if present != 0 && present != layout.slots().len() {
                return Err(invalid(format!("`{prefix}` tensors are incomplete")));
            }
        }
        if parts[0].is_empty() {
            return Err(invalid("no parameters for this model"));
        }
        let step = match st.tensor("step") {
            Ok(t) if t.dtype() == Dtype::U32 && t.shape() == [1] => {
                let d = t.data();
                u32::from_le_bytes([d[0], d[1], d[2], d[3]])
            }
            _ => return Err(invalid("missing or malformed `step`")),
        };
        let [params, m, v] = parts;
        let state = Self { step, params, m, v };
        if state.to_bytes_as(layout, format)? != bytes {
            return Err(invalid(
                "not in canonical form (extra tensors, metadata or padding)",
            ));
        }
        Ok(state)
    }
}
