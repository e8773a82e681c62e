//! The model zoo: declarative model configs, their limits, and the layout of their parameters.
//!
//! Buyers choose a model and its config; they never send code. Every dimension and the total
//! parameter count are checked here, before anything is allocated.

use market_protocol::{Activation, ModelSpec};

use crate::error::{ComputeError, Result};
use crate::llama::LlamaConfig;

/// Limits on model configs (and so on the memory a task can make a worker allocate).
pub mod limits {
    /// Most layers in an MLP (including input and output widths).
    pub const MLP_MAX_WIDTHS: usize = 10;
    /// Widest MLP layer.
    pub const MLP_MAX_WIDTH: u32 = 8192;
    /// Most transformer blocks.
    pub const GPT_MAX_LAYERS: u32 = 48;
    /// Most attention heads.
    pub const GPT_MAX_HEADS: u32 = 64;
    /// Widest embedding.
    pub const GPT_MAX_WIDTH: u32 = 4096;
    /// Largest vocabulary.
    pub const GPT_MAX_VOCAB: u32 = 65_536;
    /// Longest context.
    pub const GPT_MAX_CONTEXT: u32 = 2048;
    /// Most parameters in any model (f32; the optimizer state triples it).
    pub const MAX_PARAMETERS: u64 = 50_000_000;
}

/// One named parameter tensor and where it sits in the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSlot {
    /// Name, e.g. `h00.attn.qkv.w`. Slots are sorted by name.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Offset in the flat vector.
    pub offset: usize,
}

impl ParamSlot {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range in the flat vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The parameter layout of a model: slots sorted by name, packed in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    slots: Vec<ParamSlot>,
    total: usize,
}

impl ParamLayout {
    pub(crate) fn new(mut named: Vec<(String, Vec<usize>)>) -> Self {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut offset = 0;
        let slots = named
            .into_iter()
            .map(|(name, shape)| {
                let slot = ParamSlot {
                    name,
                    shape,
                    offset,
                };
                offset += slot.len();
                slot
            })
            .collect();
        Self {
            slots,
            total: offset,
        }
    }

    /// The slots, sorted by name.
    pub fn slots(&self) -> &[ParamSlot] {
        &self.slots
    }

    /// Total number of parameters.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The slot with this name.
    pub fn slot(&self, name: &str) -> &ParamSlot {
        let i = self
            .slots
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .unwrap_or_else(|_| panic!("model layout has no parameter {name}"));
        &self.slots[i]
    }
}

/// A validated MLP config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpConfig {
    /// Layer widths, input first.
    pub widths: Vec<usize>,
    /// Activation between layers.
    pub activation: Activation,
}

/// A validated GPT config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Embedding width.
    pub width: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length.
    pub context: usize,
}

/// A validated model from the zoo.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// Multi-layer perceptron.
    Mlp(MlpConfig),
    /// Decoder-only transformer.
    Gpt(GptConfig),
    /// A llama-family decoder (inference today; its limits are its own, [`crate::llama::limits`]).
    Llama(LlamaConfig),
}

fn in_range(field: &'static str, value: u32, min: u32, max: u32) -> Result<usize> {
    if value < min || value > max {
        return Err(ComputeError::config(
            field,
            format!("is {value}, must be between {min} and {max}"),
        ));
    }
    Ok(value as usize)
}

impl ModelConfig {
    /// Validates a model spec against the zoo's limits, before any allocation.
    pub fn from_spec(spec: &ModelSpec) -> Result<Self> {
        let config = match spec {
            ModelSpec::Mlp { widths, activation } => {
                if widths.len() < 2 || widths.len() > limits::MLP_MAX_WIDTHS {
                    return Err(ComputeError::config(
                        "model.widths",
                        format!(
                            "has {} entries, must have between 2 and {}",
                            widths.len(),
                            limits::MLP_MAX_WIDTHS
                        ),
                    ));
                }
                let widths = widths
                    .iter()
                    .map(|&w| in_range("model.widths", w, 1, limits::MLP_MAX_WIDTH))
                    .collect::<Result<Vec<_>>>()?;
                Self::Mlp(MlpConfig {
                    widths,
                    activation: *activation,
                })
            }
            ModelSpec::Gpt {
                layers,
                heads,
                width,
                vocab,
                context,
            } => {
                let c = GptConfig {
                    layers: in_range("model.layers", *layers, 1, limits::GPT_MAX_LAYERS)?,
                    heads: in_range("model.heads", *heads, 1, limits::GPT_MAX_HEADS)?,
                    width: in_range("model.width", *width, 1, limits::GPT_MAX_WIDTH)?,
                    vocab: in_range("model.vocab", *vocab, 2, limits::GPT_MAX_VOCAB)?,
                    context: in_range("model.context", *context, 2, limits::GPT_MAX_CONTEXT)?,
                };
                if c.width % c.heads != 0 {
                    return Err(ComputeError::config(
                        "model.heads",
                        format!("{} does not divide model.width {}", c.heads, c.width),
                    ));
                }
                Self::Gpt(c)
            }
            ModelSpec::Llama {
                hidden_size,
                intermediate_size,
                num_hidden_layers,
                num_attention_heads,
                num_key_value_heads,
                vocab_size,
                max_position_embeddings,
                rms_norm_eps,
                rope_theta,
                tie_word_embeddings,
            } => {
                // Its own limits (a 135M model is far over the small models' budget) and
                // shape checks, all before any allocation.
                return Ok(Self::Llama(
                    LlamaConfig {
                        hidden_size: *hidden_size as usize,
                        intermediate_size: *intermediate_size as usize,
                        num_hidden_layers: *num_hidden_layers as usize,
                        num_attention_heads: *num_attention_heads as usize,
                        num_key_value_heads: *num_key_value_heads as usize,
                        vocab_size: *vocab_size as usize,
                        max_position_embeddings: *max_position_embeddings as usize,
                        rms_norm_eps: rms_norm_eps.to_f32(),
                        rope_theta: rope_theta.to_f32(),
                        tie_word_embeddings: *tie_word_embeddings,
                    }
                    .validate()?,
                ));
            }
        };
        let params = config.parameter_count();
        if params > limits::MAX_PARAMETERS {
            return Err(ComputeError::config(
                "model",
                format!(
                    "has {params} parameters, more than the limit of {}",
                    limits::MAX_PARAMETERS
                ),
            ));
        }
        Ok(config)
    }

    /// The number of parameters, computed in u64 without allocating.
    pub fn parameter_count(&self) -> u64 {
        self.shapes()
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }

    /// The parameter layout.
    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(self.shapes())
    }

    fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        match self {
            Self::Llama(l) => v = l.shapes(),
            Self::Mlp(m) => {
                for (i, pair) in m.widths.windows(2).enumerate() {
                    v.push((format!("l{i:02}.w"), vec![pair[0], pair[1]]));
                    v.push((format!("l{i:02}.b"), vec![pair[1]]));
                }
            }
            Self::Gpt(g) => {
                let c = g.width;
                v.push(("wte".into(), vec![g.vocab, c]));
                v.push(("wpe".into(), vec![g.context, c]));
                for l in 0..g.layers {
                    let p = |n: &str| format!("h{l:02}.{n}");
                    v.push((p("ln1.w"), vec![c]));
                    v.push((p("ln1.b"), vec![c]));
                    v.push((p("attn.qkv.w"), vec![c, 3 * c]));
                    v.push((p("attn.qkv.b"), vec![3 * c]));
                    v.push((p("attn.proj.w"), vec![c, c]));
                    v.push((p("attn.proj.b"), vec![c]));
                    v.push((p("ln2.w"), vec![c]));
                    v.push((p("ln2.b"), vec![c]));
                    v.push((p("mlp.fc.w"), vec![c, 4 * c]));
                    v.push((p("mlp.fc.b"), vec![4 * c]));
                    v.push((p("mlp.proj.w"), vec![4 * c, c]));
                    v.push((p("mlp.proj.b"), vec![c]));
                }
                v.push(("lnf.w".into(), vec![c]));
                v.push(("lnf.b".into(), vec![c]));
                v.push(("head.w".into(), vec![c, g.vocab]));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt(layers: u32, heads: u32, width: u32, vocab: u32, context: u32) -> ModelSpec {
        ModelSpec::Gpt {
            layers,
            heads,
            width,
            vocab,
            context,
        }
    }

    fn field_of(e: ComputeError) -> &'static str {
        match e {
            ComputeError::InvalidConfig { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn invalid_configs_name_their_field() {
        assert_eq!(
            field_of(ModelConfig::from_spec(&gpt(0, 1, 8, 16, 8)).unwrap_err()),
            "model.layers"
        );
        assert_eq!(
            field_of(ModelConfig::from_spec(&gpt(1, 3, 8, 16, 8)).unwrap_err()),
            "model.heads"
        );
        assert_eq!(
            field_of(ModelConfig::from_spec(&gpt(1, 1, 8, 1, 8)).unwrap_err()),
            "model.vocab"
        );
        assert_eq!(
            field_of(ModelConfig::from_spec(&gpt(48, 64, 4096, 65536, 2048)).unwrap_err()),
            "model"
        );
        let mlp = |widths: Vec<u32>| ModelSpec::Mlp {
            widths,
            activation: Activation::Relu,
        };
        assert_eq!(
            field_of(ModelConfig::from_spec(&mlp(vec![4])).unwrap_err()),
            "model.widths"
        );
        assert_eq!(
            field_of(ModelConfig::from_spec(&mlp(vec![4, 0, 2])).unwrap_err()),
            "model.widths"
        );
    }

    #[test]
    fn layout_is_sorted_and_packed() {
        let m = ModelConfig::from_spec(&gpt(2, 2, 8, 16, 8)).unwrap();
        let layout = m.layout();
        assert_eq!(layout.total() as u64, m.parameter_count());
        let names: Vec<_> = layout.slots().iter().map(|s| s.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(layout.slot("head.w").shape, vec![8, 16]);
    }
}
