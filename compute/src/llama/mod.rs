//! The `llama` family (Llama, SmolLM, Qwen-style decoders): RMSNorm, rotary position
//! embeddings, a SwiGLU MLP and grouped-query attention, with tied or untied embeddings.
//!
//! Parameters are named as in Hugging Face checkpoints (`model.layers.0.self_attn.q_proj.weight`,
//! matrices `[out, in]`), so weights move between this market and the Python ecosystem without a
//! conversion table. Pretrained weights come from a GGUF file ([`gguf`]) or HF safetensors; text
//! goes through the model's own byte-level BPE tokenizer and chat template ([`text`]).
//!
//! Two executions of the same maths: [`repro`] (fixed-order kernels, bit-exact on every CPU and
//! thread count; `spec/COMPUTE.md` section 11) and [`native`] (candle ops, audited with a
//! tolerance). Both keep a KV cache, so decoding a token costs one row of work per layer.

pub mod fixtures;
pub mod generate;
pub mod gguf;
pub mod hf_tokenizer;
pub mod hf_tokenizer_config;
pub mod native;
pub mod native_train;
pub mod repro;
pub mod rope;
pub mod text;
pub mod train;

use crate::error::{ComputeError, Result};
use crate::zoo::ParamLayout;

/// Limits on `llama` configs, checked before anything is allocated.
pub mod limits {
    /// Most decoder layers.
    pub const MAX_LAYERS: usize = 128;
    /// Widest hidden state.
    pub const MAX_HIDDEN: usize = 8192;
    /// Widest MLP.
    pub const MAX_INTERMEDIATE: usize = 32_768;
    /// Most attention heads.
    pub const MAX_HEADS: usize = 128;
    /// Largest vocabulary.
    pub const MAX_VOCAB: usize = 262_144;
    /// Longest context a task may use (prompt plus generated tokens).
    pub const MAX_CONTEXT: usize = 32_768;
    /// Most parameters of a `llama` model: a 135M-parameter SmolLM2 fits with room; the
    /// worker's announced memory is checked per task on top of this.
    pub const MAX_PARAMETERS: u64 = 400_000_000;
}

/// A validated `llama` config. Field names follow Hugging Face's `config.json`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key and value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (prompt plus generated tokens).
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary base frequency.
    pub rope_theta: f32,
    /// Whether the output head is the embedding matrix.
    pub tie_word_embeddings: bool,
}

fn check(field: &'static str, value: usize, max: usize) -> Result<usize> {
    if value == 0 || value > max {
        return Err(ComputeError::config(
            field,
            format!("is {value}, must be between 1 and {max}"),
        ));
    }
    Ok(value)
}

impl LlamaConfig {
    /// The task's model section that names this config (what a node writes into the task of
    /// a request to a model it only knows from its GGUF header). Each float is written in its
    /// shortest decimal spelling, which reads back to the same binary32 (an error for a value
    /// no task could spell: more than 18 decimal places).
    pub fn to_spec(&self) -> Result<market_protocol::ModelSpec> {
        let dec = |field: &'static str, v: f32| {
            format!("{v}")
                .parse::<market_protocol::Decimal>()
                .map_err(|_| ComputeError::config(field, format!("{v} has no task spelling")))
        };
        Ok(market_protocol::ModelSpec::Llama {
            hidden_size: self.hidden_size as u32,
            intermediate_size: self.intermediate_size as u32,
            num_hidden_layers: self.num_hidden_layers as u32,
            num_attention_heads: self.num_attention_heads as u32,
            num_key_value_heads: self.num_key_value_heads as u32,
            vocab_size: self.vocab_size as u32,
            max_position_embeddings: self.max_position_embeddings as u32,
            rms_norm_eps: dec("rms_norm_eps", self.rms_norm_eps)?,
            rope_theta: dec("rope_theta", self.rope_theta)?,
            tie_word_embeddings: self.tie_word_embeddings,
        })
    }

    /// The Hugging Face `config.json` of weights with this config, so a trained model loads
    /// in `transformers` (`LlamaForCausalLM`) next to its safetensors file. The weights file is
    /// F32 and the model has no biases and no rope scaling; `max_position_embeddings` is the
    /// task's (for a training task, the window it trained on: rotary angles depend only on the
    /// position, so a user may raise it to the base model's).
    pub fn hf_config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.hidden_size / self.num_attention_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": "float32",
        })
    }

    /// The config a Hugging Face `config.json` describes, if it is exactly what
    /// [`LlamaConfig::hf_config_json`] writes for it (every key, no other): how a client
    /// checks the `config.json` a node hands it before writing it next to the weights (a
    /// node could otherwise slip in keys such as `auto_map`, code that `transformers` runs).
    pub fn from_hf_config_json(json: &serde_json::Value) -> Result<Self> {
        let bad = |reason: String| ComputeError::InvalidBlob {
            what: "config.json",
            reason,
        };
        let int = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("`{k}` is not a count")))
        };
        let float = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_f64)
                .map(|v| v as f32)
                .ok_or_else(|| bad(format!("`{k}` is not a number")))
        };
        let config = Self {
            hidden_size: int("hidden_size")?,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads: int("num_attention_heads")?,
            num_key_value_heads: int("num_key_value_heads")?,
            vocab_size: int("vocab_size")?,
            max_position_embeddings: int("max_position_embeddings")?,
            rms_norm_eps: float("rms_norm_eps")?,
            rope_theta: float("rope_theta")?,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| bad("`tie_word_embeddings` is not a boolean".into()))?,
        }
        .validate()?;
        if config.hf_config_json() != *json {
            return Err(bad(
                "it holds keys or values other than a llama config's (COMPUTE 11.12)".into(),
            ));
        }
        Ok(config)
    }

    /// Checks every dimension against [`limits`] and the shapes against each other.
    pub fn validate(self) -> Result<Self> {
        check("model.hidden_size", self.hidden_size, limits::MAX_HIDDEN)?;
        check(
            "model.intermediate_size",
            self.intermediate_size,
            limits::MAX_INTERMEDIATE,
        )?;
        check(
            "model.num_hidden_layers",
            self.num_hidden_layers,
            limits::MAX_LAYERS,
        )?;
        check(
            "model.num_attention_heads",
            self.num_attention_heads,
            limits::MAX_HEADS,
        )?;
        check(
            "model.num_key_value_heads",
            self.num_key_value_heads,
            self.num_attention_heads,
        )?;
        check("model.vocab_size", self.vocab_size, limits::MAX_VOCAB)?;
        check(
            "model.max_position_embeddings",
            self.max_position_embeddings,
            limits::MAX_CONTEXT,
        )?;
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(ComputeError::config(
                "model.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(ComputeError::config(
                "model.num_attention_heads",
                format!(
                    "gives an odd head size {}; rotary needs pairs",
                    self.head_dim()
                ),
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ComputeError::config(
                "model.num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        for (field, v) in [
            ("model.rms_norm_eps", self.rms_norm_eps),
            ("model.rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ComputeError::config(
                    field,
                    format!("is {v}, must be positive"),
                ));
            }
        }
        let params = self.parameter_count();
        if params > limits::MAX_PARAMETERS {
            return Err(ComputeError::config(
                "model",
                format!(
                    "has {params} parameters, more than the limit of {}",
                    limits::MAX_PARAMETERS
                ),
            ));
        }
        Ok(self)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Width of the keys (and values) of one position: `num_key_value_heads × head_dim`.
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }

    /// The parameter tensors with their Hugging Face names and `[out, in]` shapes.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, kv) = (self.hidden_size, self.intermediate_size, self.kv_width());
        let mut v = vec![
            (
                "model.embed_tokens.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            ("model.norm.weight".to_string(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        for l in 0..self.num_hidden_layers {
            let p = |n: &str| format!("model.layers.{l}.{n}");
            v.push((p("input_layernorm.weight"), vec![h]));
            v.push((p("self_attn.q_proj.weight"), vec![h, h]));
            v.push((p("self_attn.k_proj.weight"), vec![kv, h]));
            v.push((p("self_attn.v_proj.weight"), vec![kv, h]));
            v.push((p("self_attn.o_proj.weight"), vec![h, h]));
            v.push((p("post_attention_layernorm.weight"), vec![h]));
            v.push((p("mlp.gate_proj.weight"), vec![i, h]));
            v.push((p("mlp.up_proj.weight"), vec![i, h]));
            v.push((p("mlp.down_proj.weight"), vec![h, i]));
        }
        v
    }

    /// The number of parameters, in u64 without allocating.
    pub fn parameter_count(&self) -> u64 {
        self.shapes()
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }

    /// The packed layout (slots sorted by name).
    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(self.shapes())
    }

    /// The bytes a forward pass over `positions` positions holds beyond the weights: the KV
    /// cache (at most twice its size while it grows), every position's activations (the
    /// one-pass check holds them all) and logits, and, in `native`, the attention scores and
    /// mask, which grow with the square of the positions (candle keeps about four copies).
    pub fn working_bytes(&self, positions: usize, native: bool) -> u64 {
        let p = positions as u64;
        let (h, i, kv) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.kv_width() as u64,
        );
        let cache = 2 * 2 * self.num_hidden_layers as u64 * p * kv;
        let acts = p * (9 * h + 2 * kv + 3 * i);
        let logits = p * self.vocab_size as u64;
        let heads = self.num_attention_heads as u64;
        let group = heads / self.num_key_value_heads as u64;
        let scores = if native {
            4 * heads * p * p + group * p * p
        } else {
            p
        };
        4 * (cache + acts + logits + scores)
    }

    /// Checks that `tokens` (not empty, each in the vocabulary) fit after `start` positions:
    /// what both profiles' forward passes refuse before any work.
    pub fn check_tokens(&self, start: usize, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(ComputeError::StateMismatch("no tokens to run".into()));
        }
        if start + tokens.len() > self.max_position_embeddings {
            return Err(ComputeError::config(
                "inputs",
                format!(
                    "need {} positions, more than the model's {}",
                    start + tokens.len(),
                    self.max_position_embeddings
                ),
            ));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(ComputeError::StateMismatch(format!(
                "token {bad} is outside the vocabulary of {}",
                self.vocab_size
            )));
        }
        Ok(())
    }

    /// Bytes of a loaded model beyond its parameters: `repro` keeps a transposed copy of a tied
    /// output head.
    pub fn extra_weight_bytes(&self) -> u64 {
        if self.tie_word_embeddings {
            4 * self.vocab_size as u64 * self.hidden_size as u64
        } else {
            0
        }
    }
}

/// A `llama` model's weights, packed in layout order.
#[derive(Debug, Clone)]
pub struct LlamaWeights {
    /// The config.
    pub config: LlamaConfig,
    /// The layout of `params`.
    pub layout: ParamLayout,
    /// Every parameter, packed in layout order.
    pub params: Vec<f32>,
}

impl LlamaWeights {
    /// The tensor named `name` (a Hugging Face name).
    pub fn tensor(&self, name: &str) -> &[f32] {
        &self.params[self.layout.slot(name).range()]
    }

    /// The output head: `lm_head.weight`, or the embeddings when they are tied.
    pub fn head(&self) -> &[f32] {
        if self.config.tie_word_embeddings {
            self.tensor("model.embed_tokens.weight")
        } else {
            self.tensor("lm_head.weight")
        }
    }
}
