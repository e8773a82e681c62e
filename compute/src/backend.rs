//! The numerical backends behind the execution profiles. `repro` runs the deterministic kernels
//! of [`crate::repro`]; `native` and `cuda` run the same maths with stock candle kernels and
//! autograd ([`crate::native`]). Everything above this module (batches, optimizer, state,
//! segments) is shared by all profiles.

use market_protocol::ExecutionProfile;

use crate::batch::{RegressionBatch, TokenBatch};
use crate::error::{ComputeError, Result};
use crate::zoo::{GptConfig, MlpConfig, ParamLayout};
use crate::{native, repro};

/// The profiles this build can run on `device` (`cpu` or `cuda`): what a worker or verifier
/// announces, so the node never hands it a task it would fail for want of a kernel.
pub fn profiles_on(device: &str) -> Vec<ExecutionProfile> {
    let mut profiles = vec![ExecutionProfile::Repro, ExecutionProfile::Native];
    if cfg!(feature = "cuda") && device == "cuda" {
        profiles.push(ExecutionProfile::Cuda);
    }
    profiles
}

/// Checks a daemon's `--device` against this build: `cpu` always, `cuda` only in a build with
/// the `cuda` feature.
pub fn check_device(device: &str) -> Result<()> {
    match device {
        "cpu" => Ok(()),
        "cuda" if cfg!(feature = "cuda") => Ok(()),
        "cuda" => Err(ComputeError::ProfileUnavailable(
            ExecutionProfile::Cuda,
            " (build with --features cuda)",
        )),
        other => Err(ComputeError::UnknownDevice(other.to_owned())),
    }
}

/// Where and how the maths runs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Deterministic pure-Rust kernels.
    Repro,
    /// candle on a device (CPU for `native`, CUDA for `cuda`).
    Candle(candle_core::Device),
}

impl Backend {
    /// The backend of a profile in this build.
    pub fn for_profile(profile: ExecutionProfile) -> Result<Self> {
        match profile {
            ExecutionProfile::Repro => Ok(Self::Repro),
            ExecutionProfile::Native => Ok(Self::Candle(candle_core::Device::Cpu)),
            ExecutionProfile::Cuda => {
                if !cfg!(feature = "cuda") {
                    return Err(ComputeError::ProfileUnavailable(
                        profile,
                        " (build with --features cuda)",
                    ));
                }
                // f32 matrix products reduce in f32 (candle's default, set here so it is not
                // left to a default): TF32 reductions would move an honest run past the values
                // the tolerance was calibrated on (COMPUTE.md section 7).
                #[cfg(feature = "cuda")]
                candle_core::cuda::set_gemm_reduced_precision_f32(false);
                Ok(Self::Candle(candle_core::Device::new_cuda(0)?))
            }
        }
    }

    /// GPT loss over the batch's scored positions, and its gradients (overwriting `grads`).
    pub fn gpt_loss_and_grads(
        &self,
        cfg: &GptConfig,
        layout: &ParamLayout,
        params: &[f32],
        batch: &TokenBatch,
        grads: &mut [f32],
    ) -> Result<f32> {
        match self {
            Self::Repro => Ok(repro::gpt::loss_and_grads(
                cfg, layout, params, batch, grads,
            )),
            Self::Candle(device) => {
                native::gpt_loss_and_grads(device, cfg, layout, params, batch, grads)
            }
        }
    }

    /// `llama` loss over the batch's scored positions, and its gradients (overwriting
    /// `grads`).
    pub fn llama_loss_and_grads(
        &self,
        cfg: &crate::llama::LlamaConfig,
        layout: &ParamLayout,
        params: &[f32],
        batch: &TokenBatch,
        grads: &mut [f32],
    ) -> Result<f32> {
        match self {
            Self::Repro => crate::llama::train::loss_and_grads(cfg, layout, params, batch, grads),
            Self::Candle(device) => crate::llama::native_train::loss_and_grads(
                device, cfg, layout, params, batch, grads,
            ),
        }
    }

    /// GPT logits `[rows * len, vocab]`.
    pub fn gpt_logits(
        &self,
        cfg: &GptConfig,
        layout: &ParamLayout,
        params: &[f32],
        inputs: &[u32],
        rows: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        match self {
            Self::Repro => Ok(repro::gpt::logits(cfg, layout, params, inputs, rows, len)),
            Self::Candle(device) => {
                native::gpt_logits(device, cfg, layout, params, inputs, rows, len)
            }
        }
    }

    /// MLP mean squared error and its gradients (overwriting `grads`).
    pub fn mlp_loss_and_grads(
        &self,
        cfg: &MlpConfig,
        layout: &ParamLayout,
        params: &[f32],
        batch: &RegressionBatch,
        grads: &mut [f32],
    ) -> Result<f32> {
        match self {
            Self::Repro => Ok(repro::mlp::loss_and_grads(
                cfg, layout, params, &batch.x, &batch.y, batch.rows, grads,
            )),
            Self::Candle(device) => {
                native::mlp_loss_and_grads(device, cfg, layout, params, batch, grads)
            }
        }
    }

    /// MLP outputs for `rows` rows of features.
    pub fn mlp_predict(
        &self,
        cfg: &MlpConfig,
        layout: &ParamLayout,
        params: &[f32],
        x: &[f32],
        rows: usize,
    ) -> Result<Vec<f32>> {
        match self {
            Self::Repro => Ok(repro::mlp::predict(cfg, layout, params, x, rows)),
            Self::Candle(device) => native::mlp_predict(device, cfg, layout, params, x, rows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_announces_the_cpu_profiles_and_cuda_needs_the_feature_and_the_device() {
        assert_eq!(
            profiles_on("cpu"),
            [ExecutionProfile::Repro, ExecutionProfile::Native]
        );
        assert_eq!(
            profiles_on("cuda").contains(&ExecutionProfile::Cuda),
            cfg!(feature = "cuda")
        );
        assert!(check_device("cpu").is_ok());
        assert_eq!(check_device("cuda").is_ok(), cfg!(feature = "cuda"));
        assert!(matches!(
            check_device("tpu"),
            Err(ComputeError::UnknownDevice(d)) if d == "tpu"
        ));
    }
}
