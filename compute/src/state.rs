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

/// Where a canonical state of `size` bytes (of a model with `layout`) holds its parameters:
/// `[size − 4 − 4·P, size − 4)`. safetensors orders the tensors by dtype and then by name, so
/// every binary32 tensor (`opt.m.*`, `opt.v.*`, then `param.*`, each in layout order, which
/// is name order) comes before the one u32, `step`, the last 4 bytes. The parameters are
/// therefore the end of the file but for its step, little-endian in layout order: a peer that
/// holds a state's last chunks holds its parameters. `None` when `size` is too small to hold
/// them.
pub fn param_span(layout: &ParamLayout, size: u64) -> Option<std::ops::Range<u64>> {
    let end = size.checked_sub(4)?;
    let start = end.checked_sub(4 * layout.total() as u64)?;
    Some(start..end)
}

/// The parameters held by a state's [`param_span`] bytes (whole binary32 values, little-endian).
pub fn params_from_span(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The bytes of `params` as a state's [`param_span`] holds them.
pub fn params_to_span(params: &[f32]) -> Vec<u8> {
    le_bytes(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        ParamLayout::new(vec![
            ("wte".into(), vec![5, 3]),
            ("blocks.0.w".into(), vec![3, 3]),
            ("blocks.0.b".into(), vec![3]),
            ("ln.g".into(), vec![3]),
        ])
    }

    fn state(layout: &ParamLayout, moments: usize) -> TrainState {
        let n = layout.total();
        let at = |k: usize| (0..n).map(|i| (i * 7 + k) as f32 * 0.25 - 3.0).collect();
        TrainState {
            step: 77_000,
            params: at(1),
            m: if moments > 0 { at(2) } else { Vec::new() },
            v: if moments > 1 { at(3) } else { Vec::new() },
        }
    }

    /// The span is where the canonical bytes really hold the parameters, with the step after
    /// them, whatever the optimizer keeps (AdamW, momentum SGD, plain SGD).
    #[test]
    fn the_parameters_are_the_end_of_a_state_but_for_its_step() {
        let layout = layout();
        for moments in 0..3 {
            let s = state(&layout, moments);
            let bytes = s.to_bytes(&layout).unwrap();
            let span = param_span(&layout, bytes.len() as u64).unwrap();
            let held = &bytes[span.start as usize..span.end as usize];
            assert_eq!(
                held,
                params_to_span(&s.params).as_slice(),
                "{moments} moments"
            );
            assert_eq!(params_from_span(held), s.params);
            assert_eq!(bytes[span.end as usize..], s.step.to_le_bytes());
            // Other parameters in the span make exactly the state with those parameters.
            let mut other = s.clone();
            other.params.iter_mut().for_each(|p| *p = -*p + 0.5);
            let mut patched = bytes.clone();
            patched[span.start as usize..span.end as usize]
                .copy_from_slice(&params_to_span(&other.params));
            assert_eq!(patched, other.to_bytes(&layout).unwrap());
        }
        assert_eq!(param_span(&layout, 10), None);
    }
}
