//! [`TaskSpec`]: what a buyer asks for, declaratively. Workers never run buyer code: a task
//! names a model from the zoo with its config, a dataset and the optimizer's settings.

use serde::{Deserialize, Deserializer, Serialize};

use super::Version;
use crate::hash::BlobId;
use crate::keys::AccountId;
use crate::numbers::{Credits, Decimal};
use crate::signed::Message;

/// Reads an optional member the canonical encoding leaves out when unset (ENCODING.md section
/// 6): absent is `None` (through `#[serde(default)]`), a value is `Some`, and an explicit `null`
/// is refused by name, not read as absent. A `null` is not canonical, so the bytes a client
/// signed with it could never match the node's encoding: it would otherwise surface as a bad
/// signature, which names nothing.
macro_rules! absent_not_null {
    ($fn:ident, $member:literal) => {
        fn $fn<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            match Option::<T>::deserialize(d)? {
                Some(v) => Ok(Some(v)),
                None => Err(serde::de::Error::custom(concat!(
                    "`",
                    $member,
                    "` is null: leave the member out when it has no value (absent, not null: \
                     ENCODING.md section 6)"
                ))),
            }
        }
    };
}
absent_not_null!(pool_member, "pool");
absent_not_null!(eval_dataset_member, "eval_dataset");
absent_not_null!(tokenizer_member, "tokenizer");
absent_not_null!(tokenizer_config_member, "tokenizer_config");
absent_not_null!(chat_template_member, "chat_template");
absent_not_null!(top_p_member, "top_p");

/// A buyer's task. Signed by the buyer; its [`crate::TaskId`] is the message id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Protocol version.
    pub version: Version,
    /// The account that pays and owns the results.
    pub buyer: AccountId,
    /// Distinguishes otherwise identical tasks from one buyer.
    pub nonce: u64,
    /// What to run.
    pub workload: Workload,
    /// The root of every random stream of the run (init, batches, dropout, sampling).
    pub seed: u64,
    /// How exactly the run must be reproducible.
    pub profile: ExecutionProfile,
    /// The most the buyer pays, locked in escrow at post.
    pub price: Credits,
    /// How hard the result is audited.
    pub audit: AuditPolicy,
}

impl Message for TaskSpec {
    const DOMAIN: &'static str = "market/v1/TaskSpec";
    fn author(&self) -> Option<AccountId> {
        Some(self.buyer)
    }
}

/// Training or inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// Train a model for a number of steps, committing every checkpoint.
    Training(TrainingSpec),
    /// Run a model over a batch of inputs, committing every output item.
    Inference(InferenceSpec),
}

/// A training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// The model and its config.
    pub model: ModelSpec,
    /// Where the examples come from.
    pub dataset: DatasetSource,
    /// The optimizer and its hyper-parameters.
    pub optimizer: OptimizerSpec,
    /// Examples per step.
    pub batch_size: u32,
    /// Optimizer steps in the run.
    pub steps: u32,
    /// Steps per segment: a checkpoint is committed after every `checkpoint_interval` steps.
    pub checkpoint_interval: u32,
    /// Weights to start from (safetensors blob), or `null` for a seeded initialisation.
    pub initial_weights: Option<BlobId>,
    /// Pooled training: the run split across several workers that train apart and merge in
    /// rounds (`COMPUTE.md` section 10). Absent (not `null`) for a run on one worker, so the
    /// specs, and ids, of such tasks are what they were before pooling existed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "pool_member"
    )]
    pub pool: Option<PoolSpec>,
    /// For a `gpt`: a token blob (the dataset blob format) the node evaluates the merged
    /// states of a pooled task on, as its held-out loss per round. Absent (not `null`) when
    /// there is none. Nobody trains or audits on it, so it is not among [`TaskSpec::blobs`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "eval_dataset_member"
    )]
    pub eval_dataset: Option<BlobId>,
}

/// How a pooled training task is split: `workers` slots each train `inner_steps` steps from
/// the round's global state on their own batch stream, `rounds` times; after each round the
/// slots' results merge in an outer step. The task's `steps` must be `rounds × inner_steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Slots per round, each run by a different worker.
    pub workers: u32,
    /// Rounds.
    pub rounds: u32,
    /// Steps each slot trains per round (the task's optimizer, the slot's own moments).
    pub inner_steps: u32,
    /// The outer step that merges a round.
    pub outer_optimizer: OuterOptimizerSpec,
}

/// The optimizer of the merge, applied to the slots' averaged pseudo-gradients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case", deny_unknown_fields)]
pub enum OuterOptimizerSpec {
    /// SGD with Nesterov momentum (DiLoCo's outer optimizer).
    Nesterov {
        /// Outer learning rate.
        lr: Decimal,
        /// Momentum.
        momentum: Decimal,
    },
}

/// An inference batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSpec {
    /// The model and its config.
    pub model: ModelSpec,
    /// The weights (safetensors blob), or `null` for a seeded initialisation. A `llama`'s
    /// may also be a GGUF file, which carries its tokenizer and chat template.
    pub weights: Option<BlobId>,
    /// A `llama`'s tokenizer, when not the GGUF weights' own: a GGUF file (its tokenizer and
    /// chat template) or a Hugging Face `tokenizer.json` (`COMPUTE.md` 11.7a). Required with
    /// safetensors weights (how a fine-tuned model comes back); absent from the encoding when
    /// `null`, so tasks without it keep their bytes and ids.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "tokenizer_member"
    )]
    pub tokenizer: Option<BlobId>,
    /// With a `tokenizer.json` as the `tokenizer`: a Hugging Face `tokenizer_config.json`,
    /// for the chat template and the EOS (and BOS) token a `tokenizer.json` does not carry
    /// (`COMPUTE.md` 11.7b). Absent from the encoding when unset, like `tokenizer`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "tokenizer_config_member"
    )]
    pub tokenizer_config: Option<BlobId>,
    /// With a `tokenizer_config`: a Hugging Face `chat_template.jinja`, the chat template as
    /// recent `transformers` save it (beside the config, which then has none); it
    /// takes the place of the config's `chat_template`, as there (`COMPUTE.md` 11.7c). Absent
    /// from the encoding when unset, like `tokenizer`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "chat_template_member"
    )]
    pub chat_template: Option<BlobId>,
    /// The items to run.
    pub inputs: InferenceInputs,
    /// How tokens are chosen (ignored by models that do not generate).
    pub decoding: Decoding,
}

/// A model from the zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// A multi-layer perceptron: `widths[0]` inputs, `widths[last]` outputs.
    Mlp {
        /// Layer widths, input first.
        widths: Vec<u32>,
        /// Activation between layers.
        activation: Activation,
    },
    /// A llama-family decoder (Llama, SmolLM, Qwen-style without biases): RMSNorm, rotary
    /// embeddings, SwiGLU, grouped-query attention. Fields as in Hugging Face's `config.json`;
    /// pretrained weights (a GGUF blob) must have exactly this config.
    Llama {
        /// Width of the residual stream.
        hidden_size: u32,
        /// Width of the MLP.
        intermediate_size: u32,
        /// Decoder layers.
        num_hidden_layers: u32,
        /// Query heads.
        num_attention_heads: u32,
        /// Key and value heads; divides `num_attention_heads`.
        num_key_value_heads: u32,
        /// Vocabulary size.
        vocab_size: u32,
        /// Longest sequence, prompt and answer together.
        max_position_embeddings: u32,
        /// RMSNorm epsilon.
        rms_norm_eps: Decimal,
        /// Rotary base.
        rope_theta: Decimal,
        /// Whether the output head is the embedding matrix.
        tie_word_embeddings: bool,
    },
    /// A decoder-only transformer.
    Gpt {
        /// Transformer blocks.
        layers: u32,
        /// Attention heads per block; must divide `width`.
        heads: u32,
        /// Embedding width.
        width: u32,
        /// Vocabulary size.
        vocab: u32,
        /// Context length in tokens.
        context: u32,
    },
}

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
    /// GELU (tanh approximation).
    Gelu,
}

/// Where training examples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum DatasetSource {
    /// An uploaded safetensors blob.
    Blob {
        /// Its content id.
        id: BlobId,
    },
    /// Sums like `17+25=42`, generated from the task seed.
    Arithmetic {
        /// Operands are drawn from `0..=max_operand`.
        max_operand: u32,
        /// Number of examples.
        examples: u32,
    },
    /// UTF-8 text, cut into pieces and tokenized by a model's own tokenizer, the same way by
    /// every worker and verifier (`COMPUTE.md` section 3): a token model trains on the stream.
    Text {
        /// The text's content id.
        id: BlobId,
        /// The tokenizer that splits the text: a GGUF file (its metadata; its tensors are not
        /// used, and it is often the `initial_weights` blob itself) or a Hugging Face
        /// `tokenizer.json` (`COMPUTE.md` 11.7a).
        tokenizer: BlobId,
    },
    /// Regression on the outputs of a random teacher MLP, generated from the task seed.
    TeacherMlp {
        /// Input features.
        features: u32,
        /// Output values.
        outputs: u32,
        /// Number of examples.
        examples: u32,
    },
}

/// An optimizer with its hyper-parameters, as canonical decimals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// AdamW (decoupled weight decay).
    Adamw {
        /// Learning rate.
        lr: Decimal,
        /// First-moment decay.
        beta1: Decimal,
        /// Second-moment decay.
        beta2: Decimal,
        /// Denominator epsilon.
        eps: Decimal,
        /// Decoupled weight decay.
        weight_decay: Decimal,
    },
    /// Stochastic gradient descent with momentum.
    Sgd {
        /// Learning rate.
        lr: Decimal,
        /// Momentum (0 for none).
        momentum: Decimal,
        /// L2 weight decay.
        weight_decay: Decimal,
    },
}

/// Inputs of an inference task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum InferenceInputs {
    /// Text prompts for a `gpt` model.
    Prompts {
        /// One item per prompt.
        prompts: Vec<String>,
        /// Tokens to generate per prompt.
        max_new_tokens: u32,
    },
    /// Conversations for a `llama` model, each rendered with the model's own chat template
    /// and answered as the assistant.
    Chat {
        /// One item per conversation.
        chats: Vec<Vec<ChatMessage>>,
        /// Most tokens generated per answer.
        max_new_tokens: u32,
        /// Texts that end an answer (cut before them); may be empty.
        stop: Vec<String>,
    },
    /// Feature rows for an `mlp` model, as a safetensors blob with a 2-D `x`.
    Rows {
        /// Its content id.
        id: BlobId,
    },
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// How a generating model picks tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decoding", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decoding {
    /// Always the most likely token.
    Greedy,
    /// Seeded sampling.
    Sample {
        /// Softmax temperature (> 0).
        temperature: Decimal,
        /// Sample among the `top_k` most likely tokens (0 for all).
        top_k: u32,
        /// Nucleus sampling: of those, keep the most likely whose probabilities first sum to
        /// at least `top_p` (between 0 and 1, both excluded), and sample among them. Absent
        /// (never `null`) keeps all `top_k`, so tasks from before it keep their ids.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "top_p_member"
        )]
        top_p: Option<Decimal>,
    },
}

/// How reproducible the run must be, and so how it is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionProfile {
    /// Bitwise identical across runs, thread counts and CPUs; audited by exact hash.
    #[default]
    Repro,
    /// Stock kernels; audited with a documented tolerance.
    Native,
    /// CUDA kernels; audited with the `native` tolerance.
    Cuda,
}

impl ExecutionProfile {
    /// Every profile, in declaration order.
    pub const ALL: [Self; 3] = [Self::Repro, Self::Native, Self::Cuda];

    /// Its name on the wire (as serialized), which is also how a participant's
    /// [`crate::Capabilities`] list the profiles it runs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Repro => "repro",
            Self::Native => "native",
            Self::Cuda => "cuda",
        }
    }
}

/// The audit the buyer asks for: catch a worker that faked at least `assumed_faked_fraction`
/// of the segments with probability at least `detection_target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPolicy {
    /// For example `"0.99"`.
    pub detection_target: Decimal,
    /// For example `"0.1"`.
    pub assumed_faked_fraction: Decimal,
}

impl TaskSpec {
    /// Every blob the buyer names: [`TaskSpec::blobs`] and the evaluation blob, if any (the
    /// buyer must hold them all, and the node keeps them for as long as the task).
    pub fn named_blobs(&self) -> Vec<BlobId> {
        let mut out = self.blobs();
        if let Workload::Training(TrainingSpec {
            eval_dataset: Some(id),
            ..
        }) = &self.workload
        {
            if !out.contains(id) {
                out.push(*id);
            }
        }
        out
    }

    /// Every blob the task reads (weights, datasets, inference rows), without repeats, in
    /// the order they appear. Whoever runs or audits the task may read these and only these.
    pub fn blobs(&self) -> Vec<BlobId> {
        let mut out = Vec::new();
        let mut add = |id: &BlobId| {
            if !out.contains(id) {
                out.push(*id);
            }
        };
        match &self.workload {
            Workload::Training(t) => {
                match &t.dataset {
                    DatasetSource::Blob { id } => add(id),
                    DatasetSource::Text { id, tokenizer } => {
                        add(id);
                        add(tokenizer);
                    }
                    DatasetSource::Arithmetic { .. } | DatasetSource::TeacherMlp { .. } => {}
                }
                if let Some(id) = &t.initial_weights {
                    add(id);
                }
            }
            Workload::Inference(i) => {
                if let Some(id) = &i.weights {
                    add(id);
                }
                if let Some(id) = &i.tokenizer {
                    add(id);
                }
                if let Some(id) = &i.tokenizer_config {
                    add(id);
                }
                if let Some(id) = &i.chat_template {
                    add(id);
                }
                if let InferenceInputs::Rows { id, .. } = &i.inputs {
                    add(id);
                }
            }
        }
        out
    }
}
