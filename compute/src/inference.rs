//! Inference: a batch of items (prompts for `gpt`, feature rows for `mlp`) to outputs, each
//! item hashed on its own and the hashes put under one Merkle root, so a verifier can re-run
//! and check single items.

use market_protocol::{
    BlobId, Decoding, ExecutionProfile, Hash, InferenceInputs, MerkleTree, StateHash, TaskSpec,
    Workload,
};

use crate::backend::Backend;
use crate::data::arithmetic;
use crate::data::text::tokenizer_vocab;
use crate::error::{ComputeError, Result};
use crate::init::{check_weights, init_params, weights_from_bytes};
use crate::job::BlobSource;
use crate::llama::generate::{
    check_answer, generate, generate_streaming, Finish, GenerateParams, Generation, Match,
    TextStream,
};
use crate::llama::hf_tokenizer_config::{
    apply_tokenizer_config, chat_template_file, check_chat_template_len, check_tokenizer_config_len,
};
use crate::llama::native::NativeLlama;
use crate::llama::repro::ReproLlama;
use crate::llama::text::{Rendered, TextCodec};
use crate::llama::{gguf, LlamaConfig, LlamaWeights};
use crate::repro::kernels::softmax_row;
use crate::rng::{self, Purpose};
use crate::zoo::{ModelConfig, ParamLayout};

/// Most items in one inference task.
pub const MAX_ITEMS: usize = 100_000;
/// Most tokens generated per prompt.
pub const MAX_NEW_TOKENS: u32 = 4096;

/// The inputs, decoded.
#[derive(Debug, Clone)]
enum Items {
    Prompts {
        prompts: Vec<Vec<u32>>,
        max_new_tokens: u32,
    },
    Rows {
        x: Vec<f32>,
        features: usize,
    },
    /// Prompts of a `llama`, as token ids of the rendered chat (or plain text).
    Answers {
        prompts: Vec<Vec<u32>>,
        max_new_tokens: u32,
        stop: Vec<String>,
    },
}

/// Most bytes all of a task's prompts may render to.
pub const MAX_RENDERED_BYTES: usize = 64 << 20;

/// A `llama` item's prompt before rendering.
enum Prompt<'a> {
    /// A chat: its text is the next of the task's rendered chats.
    Chat,
    Text(&'a str),
}

/// Most stop texts per task, and their longest length in bytes.
pub const MAX_STOP_TEXTS: usize = 8;
/// The longest stop text, in bytes.
pub const MAX_STOP_BYTES: usize = 128;

/// The refusal of a `chat_template` without a `tokenizer_config` to complete (11.7c).
fn template_without_config() -> ComputeError {
    ComputeError::config(
        "chat_template",
        "goes with a `tokenizer_config` (a chat_template.jinja completes the tokenizer_config.json beside it)",
    )
}

/// A loaded `llama` with its tokenizer: shared by the job's clones (it is the size of the
/// model).
struct LlamaRun {
    /// The blob its weights were read from.
    weights: BlobId,
    /// The blob its tokenizer was read from, when not the weights.
    tokenizer: Option<BlobId>,
    /// The blob that completed a `tokenizer.json` (11.7b), if any.
    tokenizer_config: Option<BlobId>,
    /// The `chat_template.jinja` beside it (11.7c), if any.
    chat_template: Option<BlobId>,
    /// Its parameter layout.
    layout: ParamLayout,
    codec: TextCodec,
    /// `None` in a job built only to validate and size a task ([`InferenceJob::plan`]).
    model: Option<LlamaModel>,
    /// The longest token's text, in bytes (bounds an answer's size).
    longest_token: usize,
}

enum LlamaModel {
    Repro(ReproLlama),
    Native(NativeLlama),
}

impl LlamaRun {
    /// The model, or an error for a job built by [`InferenceJob::plan`].
    fn loaded(&self) -> Result<&LlamaModel> {
        self.model.as_ref().ok_or_else(|| {
            ComputeError::StateMismatch("this job was built to plan, without its model".into())
        })
    }
}

impl std::fmt::Debug for LlamaRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let profile = match self.model {
            Some(LlamaModel::Repro(_)) => "repro",
            Some(LlamaModel::Native(_)) => "native",
            None => "not loaded",
        };
        f.debug_struct("LlamaRun")
            .field("codec", &self.codec)
            .field("profile", &profile)
            .finish()
    }
}

/// A `llama` item's committed output: the answer, and what a verifier checks it with. Its
/// bytes are this JSON with the fields in this (alphabetical) order and no spaces.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRecord {
    /// `end`, `stop` or `length`.
    pub finish: String,
    /// The binary32 bits of each chosen token's logit.
    pub logits: Vec<u32>,
    /// The answer's text.
    pub text: String,
    /// Every generated token, the end token included.
    pub tokens: Vec<u32>,
}

impl AnswerRecord {
    /// The record of a generated answer.
    pub fn from_generation(g: &Generation) -> Self {
        Self {
            finish: match g.finish {
                Finish::End => "end",
                Finish::Stop => "stop",
                Finish::Length => "length",
            }
            .into(),
            logits: g.logits.iter().map(|l| l.to_bits()).collect(),
            text: g.text.clone(),
            tokens: g.tokens.clone(),
        }
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses committed bytes; only the canonical spelling is accepted.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let r: Self = serde_json::from_slice(bytes).map_err(|e| format!("not an answer: {e}"))?;
        if r.to_bytes() != bytes {
            return Err("an answer not in canonical form".into());
        }
        Ok(r)
    }

    fn to_generation(&self) -> std::result::Result<Generation, String> {
        Ok(Generation {
            tokens: self.tokens.clone(),
            logits: self.logits.iter().map(|b| f32::from_bits(*b)).collect(),
            text: self.text.clone(),
            finish: match self.finish.as_str() {
                "end" => Finish::End,
                "stop" => Finish::Stop,
                "length" => Finish::Length,
                other => return Err(format!("finish {other:?}")),
            },
        })
    }
}

/// A validated inference task with its weights loaded.
#[derive(Debug, Clone)]
pub struct InferenceJob {
    /// The model.
    pub model: ModelConfig,
    /// Its layout.
    pub layout: ParamLayout,
    /// The task seed.
    pub seed: u64,
    /// The execution profile.
    pub profile: ExecutionProfile,
    params: Vec<f32>,
    items: Items,
    decoding: Decoding,
    backend: Backend,
    llama: Option<std::sync::Arc<LlamaRun>>,
}

/// One item's output.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemOutput {
    /// The output bytes: the generated text (UTF-8) or the output row (f32 little-endian).
    pub bytes: Vec<u8>,
    /// blake3 of `bytes`: the Merkle leaf of this item.
    pub hash: StateHash,
}

/// All outputs with their commitment.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceOutput {
    /// Per item, in input order.
    pub items: Vec<ItemOutput>,
    /// Merkle root over the item hashes.
    pub root: Hash,
}

impl InferenceJob {
    /// Validates an inference task and loads its weights and inputs.
    pub fn from_spec(spec: &TaskSpec, blobs: &dyn BlobSource) -> Result<Self> {
        Self::build(spec, blobs, true)
    }

    /// Validates an inference task as [`InferenceJob::from_spec`] does, for its estimates and
    /// bundle shape, without loading a `llama`'s weights (the node validates every posted task:
    /// reading a model's header costs milliseconds, loading it seconds and gigabytes). Its
    /// items cannot be run.
    pub fn plan(spec: &TaskSpec, blobs: &dyn BlobSource) -> Result<Self> {
        Self::build(spec, blobs, false)
    }

    fn build(spec: &TaskSpec, blobs: &dyn BlobSource, load: bool) -> Result<Self> {
        let Workload::Inference(inf) = &spec.workload else {
            return Err(ComputeError::config("workload", "is not an inference task"));
        };
        let model = ModelConfig::from_spec(&inf.model)?;
        check_decoding(&inf.decoding)?;
        if let ModelConfig::Llama(config) = &model {
            return Self::llama_from_spec(spec, config, blobs, load);
        }
        // Workers and verifiers would fetch a blob nothing reads.
        for (field, named) in [
            ("tokenizer", inf.tokenizer.is_some()),
            ("tokenizer_config", inf.tokenizer_config.is_some()),
            ("chat_template", inf.chat_template.is_some()),
        ] {
            if named {
                return Err(ComputeError::config(
                    field,
                    "only a llama takes one (the zoo's gpt has its own tokenizer)",
                ));
            }
        }
        let layout = model.layout();
        let fetch = |id: &BlobId| blobs.blob(id).ok_or(ComputeError::MissingBlob(*id));
        let params = match &inf.weights {
            Some(id) => weights_from_bytes(&layout, &fetch(id)?)?,
            None => init_params(&model, &layout, spec.seed),
        };
        let items = match (&model, &inf.inputs) {
            (
                ModelConfig::Gpt(g),
                InferenceInputs::Prompts {
                    prompts,
                    max_new_tokens,
                },
            ) => {
                if prompts.is_empty() || prompts.len() > MAX_ITEMS {
                    return Err(ComputeError::config(
                        "inputs.prompts",
                        format!(
                            "has {} prompts, must have between 1 and {MAX_ITEMS}",
                            prompts.len()
                        ),
                    ));
                }
                if *max_new_tokens == 0 || *max_new_tokens > MAX_NEW_TOKENS {
                    return Err(ComputeError::config(
                        "inputs.max_new_tokens",
                        format!("is {max_new_tokens}, must be between 1 and {MAX_NEW_TOKENS}"),
                    ));
                }
                if g.vocab < arithmetic::VOCAB {
                    return Err(ComputeError::config(
                        "model.vocab",
                        format!(
                            "is {}, prompts need at least {}",
                            g.vocab,
                            arithmetic::VOCAB
                        ),
                    ));
                }
                let prompts = prompts
                    .iter()
                    .map(|p| {
                        let toks = arithmetic::encode(p).ok_or_else(|| {
                            ComputeError::config("inputs.prompts", format!("{p:?} has characters outside the zoo's tokenizer (digits, '+', '=', newline)"))
                        })?;
                        if toks.is_empty() || toks.len() > g.context {
                            return Err(ComputeError::config("inputs.prompts", format!("a prompt has {} tokens, must have between 1 and the context ({})", toks.len(), g.context)));
                        }
                        Ok(toks)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Items::Prompts {
                    prompts,
                    max_new_tokens: *max_new_tokens,
                }
            }
            (ModelConfig::Mlp(m), InferenceInputs::Rows { id }) => {
                let features = m.widths[0];
                let x = parse_rows(&fetch(id)?, features)?;
                Items::Rows { x, features }
            }
            _ => {
                return Err(ComputeError::config(
                    "inputs.source",
                    "gpt takes `prompts`, mlp takes `rows`, llama takes `chat` or `prompts`",
                ))
            }
        };
        Ok(Self {
            llama: None,
            backend: Backend::for_profile(spec.profile)?,
            model,
            layout,
            seed: spec.seed,
            profile: spec.profile,
            params,
            items,
            decoding: inf.decoding.clone(),
        })
    }

    /// A `llama` inference task: GGUF weights (with the tokenizer and chat template they
    /// carry) whose config must be the task's, or safetensors weights (what a training task
    /// returns) with a tokenizer blob; and prompts that fit the model's positions.
    fn llama_from_spec(
        spec: &TaskSpec,
        config: &LlamaConfig,
        blobs: &dyn BlobSource,
        load: bool,
    ) -> Result<Self> {
        let Workload::Inference(inf) = &spec.workload else {
            return Err(ComputeError::config("workload", "is not an inference task"));
        };
        let Some(id) = &inf.weights else {
            return Err(ComputeError::config(
                "weights",
                "a llama task names its weights: a GGUF blob (the tokenizer comes with it), or safetensors weights with a `tokenizer`",
            ));
        };
        let bytes = blobs.blob(id).ok_or(ComputeError::MissingBlob(*id))?;
        let (weights, own_vocab) = if bytes.starts_with(b"GGUF") {
            let file = if load {
                gguf::read(&bytes)?
            } else {
                gguf::read_header(&bytes)?
            };
            if file.weights.config != *config {
                return Err(ComputeError::config(
                    "model",
                    format!(
                        "does not match the weights' config {:?}",
                        file.weights.config
                    ),
                ));
            }
            (file.weights, Some(file.vocab))
        } else {
            // The task's config names the tensors; the file must hold each (section 5).
            let layout = config.layout();
            let params = if load {
                weights_from_bytes(&layout, &bytes)?
            } else {
                check_weights(&layout, &bytes)?;
                Vec::new()
            };
            let weights = LlamaWeights {
                config: *config,
                layout,
                params,
            };
            (weights, None)
        };
        drop(bytes);
        let vocab = match (&inf.tokenizer, own_vocab) {
            (Some(t), _) => {
                let bytes = blobs.blob(t).ok_or(ComputeError::MissingBlob(*t))?;
                let mut v = tokenizer_vocab(&bytes)?;
                if v.tokens.len() > config.vocab_size {
                    return Err(ComputeError::config(
                        "tokenizer",
                        format!(
                            "has {} tokens, more than the model's vocabulary of {}",
                            v.tokens.len(),
                            config.vocab_size
                        ),
                    ));
                }
                if let Some(c) = &inf.tokenizer_config {
                    if bytes.starts_with(b"GGUF") {
                        return Err(ComputeError::config(
                            "tokenizer_config",
                            "goes with a tokenizer.json only: a GGUF tokenizer carries its own chat template and EOS",
                        ));
                    }
                    // Each blob's length is checked before it is read (11.7b, 11.7c step 1),
                    // the template only at the config's step 6.
                    let len = |id: &BlobId| blobs.blob_len(id).ok_or(ComputeError::MissingBlob(*id));
                    let config_len = len(c)?;
                    let template = inf.chat_template.map(|t| len(&t).map(|n| (t, n))).transpose()?;
                    check_tokenizer_config_len(config_len)?;
                    let config_bytes = blobs.blob(c).ok_or(ComputeError::MissingBlob(*c))?;
                    let read_template = template.map(|(t, n)| {
                        move || -> Result<String> {
                            check_chat_template_len(n)?;
                            chat_template_file(&blobs.blob(&t).ok_or(ComputeError::MissingBlob(t))?)
                        }
                    });
                    apply_tokenizer_config(
                        &mut v,
                        &config_bytes,
                        read_template.as_ref().map(|f| f as _),
                    )?;
                } else if inf.chat_template.is_some() {
                    return Err(template_without_config());
                }
                v
            }
            (None, None) => {
                return Err(ComputeError::config(
                    "tokenizer",
                    "safetensors weights carry no tokenizer: name one (a GGUF file or a Hugging Face tokenizer.json)",
                ))
            }
            (None, Some(_)) if inf.tokenizer_config.is_some() => {
                return Err(ComputeError::config(
                    "tokenizer_config",
                    "goes with a `tokenizer` (a tokenizer.json) and names none here",
                ))
            }
            (None, Some(_)) if inf.chat_template.is_some() => return Err(template_without_config()),
            (None, Some(v)) => v,
        };
        let codec = TextCodec::from_gguf(&vocab)?;
        let longest_token = vocab.tokens.iter().map(|t| t.len()).max().unwrap_or(1);
        let backend = Backend::for_profile(spec.profile)?;
        let model = match (&backend, load) {
            (_, false) => None,
            (Backend::Repro, true) => Some(LlamaModel::Repro(ReproLlama::new(&weights))),
            (Backend::Candle(device), true) => {
                Some(LlamaModel::Native(NativeLlama::new(&weights, device)?))
            }
        };
        let run = std::sync::Arc::new(LlamaRun {
            weights: *id,
            tokenizer: inf.tokenizer,
            tokenizer_config: inf.tokenizer_config,
            chat_template: inf.chat_template,
            layout: weights.layout.clone(),
            codec,
            model,
            longest_token,
        });
        Self::llama_with_run(spec, config, run, backend)
    }

    /// The job of another `llama` task on the model this job holds, loaded once: how a serving
    /// worker answers request after request. The task must name the same weights and profile.
    pub fn for_request(&self, spec: &TaskSpec) -> Result<Self> {
        let (Some(run), ModelConfig::Llama(config)) = (&self.llama, &self.model) else {
            return Err(ComputeError::config(
                "model",
                "only a llama job serves requests",
            ));
        };
        let Workload::Inference(inf) = &spec.workload else {
            return Err(ComputeError::config("workload", "is not an inference task"));
        };
        if inf.weights != Some(run.weights)
            || inf.tokenizer != run.tokenizer
            || inf.tokenizer_config != run.tokenizer_config
            || inf.chat_template != run.chat_template
            || ModelConfig::from_spec(&inf.model)? != self.model
            || spec.profile != self.profile
        {
            return Err(ComputeError::config(
                "model",
                "names other weights, another tokenizer, tokenizer config or chat template, another config or another profile than the model served",
            ));
        }
        check_decoding(&inf.decoding)?;
        Self::llama_with_run(spec, config, run.clone(), self.backend.clone())
    }

    /// A `llama` job's items, tokenized with `run`'s codec.
    fn llama_with_run(
        spec: &TaskSpec,
        config: &LlamaConfig,
        run: std::sync::Arc<LlamaRun>,
        backend: Backend,
    ) -> Result<Self> {
        let Workload::Inference(inf) = &spec.workload else {
            return Err(ComputeError::config("workload", "is not an inference task"));
        };
        let codec = &run.codec;
        let (texts, max_new_tokens, stop) = match &inf.inputs {
            InferenceInputs::Chat {
                chats,
                max_new_tokens,
                stop,
            } => {
                check_count("inputs.chats", chats.len())?;
                // Rendered in order up to the texts' limit, then encoded one at a time
                // (below): a template that prints much fails on the first chat.
                (
                    chats.iter().map(|_| Prompt::Chat).collect::<Vec<_>>(),
                    *max_new_tokens,
                    stop.clone(),
                )
            }
            InferenceInputs::Prompts {
                prompts,
                max_new_tokens,
            } => {
                check_count("inputs.prompts", prompts.len())?;
                (
                    prompts.iter().map(|p| Prompt::Text(p)).collect(),
                    *max_new_tokens,
                    Vec::new(),
                )
            }
            InferenceInputs::Rows { .. } => {
                return Err(ComputeError::config(
                    "inputs.source",
                    "llama takes `chat` or `prompts`",
                ))
            }
        };
        check_max_new_tokens(max_new_tokens)?;
        if stop.len() > MAX_STOP_TEXTS
            || stop
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES || s.contains('\u{FFFD}'))
        {
            return Err(ComputeError::config(
                "inputs.stop",
                format!(
                    "at most {MAX_STOP_TEXTS} texts of 1 to {MAX_STOP_BYTES} bytes, without U+FFFD"
                ),
            ));
        }
        let mut rendered_bytes = 0usize;
        // Rendered by one compiled template, the chats sharing one instruction budget, up to
        // the first that fails or brings the texts past the limit (11.8); taken in order
        // below, so a chat's refusal comes where it would rendering one by one.
        let mut rendered = match &inf.inputs {
            InferenceInputs::Chat { chats, .. } => codec.render_chats(chats, MAX_RENDERED_BYTES)?,
            _ => Rendered::default(),
        };
        let mut chat_texts = std::mem::take(&mut rendered.texts).into_iter();
        let prompts = texts
            .iter()
            .map(|p| {
                let (text, chat) = match p {
                    Prompt::Chat => match chat_texts.next() {
                        Some(text) => (text, true),
                        None => {
                            return Err(rendered.failure.take().unwrap_or_else(|| {
                                ComputeError::config("inputs", "a chat was not rendered")
                            }))
                        }
                    },
                    Prompt::Text(t) => (t.to_string(), false),
                };
                rendered_bytes += text.len();
                if rendered_bytes > MAX_RENDERED_BYTES {
                    return Err(ComputeError::config(
                        "inputs",
                        format!("the prompts render to more than {MAX_RENDERED_BYTES} bytes"),
                    ));
                }
                let ids = if chat {
                    codec.encode_chat(&text)?
                } else {
                    codec.encode(&text)?
                };
                if ids.is_empty() {
                    // A text of bytes the vocabulary lacks encodes to nothing (11.7).
                    return Err(ComputeError::config(
                        "inputs",
                        "a prompt encodes to no tokens: the tokenizer has none of its bytes",
                    ));
                }
                if ids.len() + max_new_tokens as usize > config.max_position_embeddings {
                    return Err(ComputeError::ContextLength {
                        prompt: ids.len(),
                        new: max_new_tokens,
                        positions: config.max_position_embeddings,
                    });
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            model: ModelConfig::Llama(*config),
            layout: run.layout.clone(),
            seed: spec.seed,
            profile: spec.profile,
            // The model holds the weights (transposed for repro); no second copy.
            params: Vec::new(),
            items: Items::Answers {
                prompts,
                max_new_tokens,
                stop,
            },
            decoding: inf.decoding.clone(),
            backend,
            llama: Some(run),
        })
    }

    fn generate_params(&self, index: usize) -> Option<(&LlamaRun, &[u32], GenerateParams)> {
        let (
            Some(run),
            Items::Answers {
                prompts,
                max_new_tokens,
                stop,
            },
        ) = (&self.llama, &self.items)
        else {
            return None;
        };
        Some((
            run,
            &prompts[index],
            GenerateParams {
                decoding: self.decoding.clone(),
                seed: self.seed,
                item: index as u64,
                max_new_tokens: *max_new_tokens,
                stop: stop.clone(),
            },
        ))
    }

    /// For a `llama` item, checks the committed output in one forward pass (bit for bit in
    /// `repro`, within [`crate::tolerance::LOGIT_TOLERANCE`] otherwise): `Some(Ok(()))` if it is
    /// the model's answer, `Some(Err(why))` if not. `None` for other models, whose items are
    /// re-run and compared.
    pub fn check_item(
        &self,
        index: usize,
        committed: &[u8],
    ) -> Result<Option<std::result::Result<(), String>>> {
        if index >= self.len() {
            return Err(ComputeError::StateMismatch(format!(
                "item {index} of {}",
                self.len()
            )));
        }
        let Some((run, prompt, params)) = self.generate_params(index) else {
            return Ok(None);
        };
        let answer = match AnswerRecord::from_bytes(committed).and_then(|r| r.to_generation()) {
            Ok(a) => a,
            Err(why) => return Ok(Some(Err(why))),
        };
        let how = if self.profile == ExecutionProfile::Repro {
            Match::Exact
        } else {
            Match::Within(crate::tolerance::LOGIT_TOLERANCE)
        };
        let verdict = match run.loaded()? {
            LlamaModel::Repro(m) => check_answer(m, &run.codec, prompt, &params, &answer, how)?,
            LlamaModel::Native(m) => check_answer(m, &run.codec, prompt, &params, &answer, how)?,
        };
        Ok(Some(verdict.map_err(|e| e.to_string())))
    }

    /// Memory for one sequence's KV cache and its logits at every position (the one-pass check
    /// holds them all), for a `llama`; 0 otherwise.
    pub(crate) fn sequence_bytes(&self) -> u64 {
        match (&self.model, &self.items) {
            (
                ModelConfig::Llama(c),
                Items::Answers {
                    prompts,
                    max_new_tokens,
                    ..
                },
            ) => {
                let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
                let native = self.profile != ExecutionProfile::Repro;
                c.working_bytes(longest + *max_new_tokens as usize, native)
                    + c.extra_weight_bytes()
                    + self.llama.as_ref().map_or(0, |r| r.codec.memory_bytes())
            }
            _ => 0,
        }
    }

    /// Uses another backend than the profile's.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        match &self.items {
            Items::Prompts { prompts, .. } => prompts.len(),
            Items::Rows { x, features } => x.len() / features,
            Items::Answers { prompts, .. } => prompts.len(),
        }
    }

    /// Bytes the decoded items hold in memory.
    pub(crate) fn items_bytes(&self) -> u64 {
        match &self.items {
            Items::Prompts { prompts, .. } | Items::Answers { prompts, .. } => {
                prompts.iter().map(|p| 4 * p.len() as u64 + 24).sum()
            }
            Items::Rows { x, .. } => 4 * x.len() as u64,
        }
    }

    /// The largest output of one item: one byte per generated token (the zoo's tokenizer
    /// decodes each token to one ASCII character), or the model's outputs as f32.
    pub(crate) fn max_output_bytes(&self) -> u64 {
        match (&self.model, &self.items) {
            (_, Items::Prompts { max_new_tokens, .. }) => u64::from(*max_new_tokens),
            // The record: per token its id, its logit's bits and its text (JSON-escaped, at
            // most 6 bytes a byte), and a fixed frame.
            (_, Items::Answers { max_new_tokens, .. }) => {
                let longest = self.llama.as_ref().map_or(1, |r| r.longest_token) as u64;
                u64::from(*max_new_tokens) * (6 * longest + 24) + 256
            }
            (ModelConfig::Mlp(m), Items::Rows { .. }) => 4 * m.widths[m.widths.len() - 1] as u64,
            (ModelConfig::Gpt(g), Items::Rows { .. }) => 4 * g.vocab as u64,
            (ModelConfig::Llama(_), Items::Rows { .. }) => unreachable!("refused in from_spec"),
        }
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs item `index` alone (the verifier re-runs sampled items this way).
    pub fn run_item(&self, index: usize) -> Result<ItemOutput> {
        if index >= self.len() {
            return Err(ComputeError::StateMismatch(format!(
                "item {index} of {}",
                self.len()
            )));
        }
        let bytes = self.item_bytes(index).map_err(|e| match e {
            // Which item overflowed, so a node can check the claim by re-running that item
            // alone (`PROTOCOL.md`, divergence): a model that overflows is its buyer's fault.
            ComputeError::NonFinite { tensor, step } => ComputeError::NonFinite {
                tensor: format!("{tensor} of item {index}"),
                step,
            },
            other => other,
        })?;
        let hash = StateHash(Hash::of(&bytes));
        Ok(ItemOutput { bytes, hash })
    }

    /// The output bytes of item `index` (checked to exist).
    fn item_bytes(&self, index: usize) -> Result<Vec<u8>> {
        Ok(match (&self.model, &self.items) {
            (
                ModelConfig::Gpt(g),
                Items::Prompts {
                    prompts,
                    max_new_tokens,
                },
            ) => {
                let mut tokens = prompts[index].clone();
                let mut generated = Vec::new();
                for n in 0..*max_new_tokens {
                    let window = &tokens[tokens.len().saturating_sub(g.context)..];
                    let logits = self.backend.gpt_logits(
                        g,
                        &self.layout,
                        &self.params,
                        window,
                        1,
                        window.len(),
                    )?;
                    let last = logits[(window.len() - 1) * g.vocab..].to_vec();
                    let next = self.choose(last, index as u64, u64::from(n));
                    tokens.push(next);
                    generated.push(next);
                    if next == arithmetic::END {
                        break;
                    }
                }
                arithmetic::decode(&generated).into_bytes()
            }
            (ModelConfig::Mlp(m), Items::Rows { x, features }) => {
                let row = &x[index * features..(index + 1) * features];
                let out = self
                    .backend
                    .mlp_predict(m, &self.layout, &self.params, row, 1)?;
                debug_assert_eq!(out.len(), m.widths[m.widths.len() - 1]);
                out.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            (ModelConfig::Llama(_), Items::Answers { .. }) => {
                let Some((run, prompt, params)) = self.generate_params(index) else {
                    unreachable!("a llama job holds its model");
                };
                let g = match run.loaded()? {
                    LlamaModel::Repro(m) => generate(m, &run.codec, prompt, &params)?,
                    LlamaModel::Native(m) => generate(m, &run.codec, prompt, &params)?,
                };
                AnswerRecord::from_generation(&g).to_bytes()
            }
            _ => unreachable!("checked in from_spec"),
        })
    }

    /// Runs `llama` item `index` as [`InferenceJob::run_item`] does, handing its text to
    /// `on_text` piece by piece while it is generated (what a serving worker streams).
    pub fn run_item_streaming(
        &self,
        index: usize,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ItemOutput> {
        if index >= self.len() {
            return Err(ComputeError::StateMismatch(format!(
                "item {index} of {}",
                self.len()
            )));
        }
        let Some((run, prompt, params)) = self.generate_params(index) else {
            return Err(ComputeError::config(
                "model",
                "only a llama streams its answers",
            ));
        };
        let mut stream = TextStream::new(on_text);
        let g = match run.loaded()? {
            LlamaModel::Repro(m) => {
                generate_streaming(m, &run.codec, prompt, &params, Some(&mut stream))?
            }
            LlamaModel::Native(m) => {
                generate_streaming(m, &run.codec, prompt, &params, Some(&mut stream))?
            }
        };
        let bytes = AnswerRecord::from_generation(&g).to_bytes();
        let hash = StateHash(Hash::of(&bytes));
        Ok(ItemOutput { bytes, hash })
    }

    /// The number of tokens of item `index`'s prompt (a `llama`'s rendered chat), if it has one.
    pub fn prompt_tokens(&self, index: usize) -> Option<usize> {
        match &self.items {
            Items::Prompts { prompts, .. } | Items::Answers { prompts, .. } => {
                prompts.get(index).map(Vec::len)
            }
            Items::Rows { .. } => None,
        }
    }

    /// Runs every item and commits to them.
    pub fn run_all(&self, mut on_item: impl FnMut(usize)) -> Result<InferenceOutput> {
        let items = (0..self.len())
            .map(|i| {
                let out = self.run_item(i);
                on_item(i);
                out
            })
            .collect::<Result<Vec<_>>>()?;
        let hashes: Vec<StateHash> = items.iter().map(|i| i.hash).collect();
        Ok(InferenceOutput {
            root: MerkleTree::new(&hashes).root(),
            items,
        })
    }

    fn choose(&self, logits: Vec<f32>, item: u64, n: u64) -> u32 {
        choose(&self.decoding, self.seed, logits, item, n)
    }
}

/// Greedy: the first index of the largest logit. Sampling: softmax at the temperature over
/// the `top_k` largest (ties by index), then a uniform draw from stream (Sample, item, n)
/// walked through the cumulative sum in that order.
pub fn choose(decoding: &Decoding, seed: u64, logits: Vec<f32>, item: u64, n: u64) -> u32 {
    match decoding {
        Decoding::Greedy => {
            let mut best = 0;
            for (i, v) in logits.iter().enumerate() {
                if *v > logits[best] {
                    best = i;
                }
            }
            best as u32
        }
        Decoding::Sample { .. } => {
            let s = Sampling::new(decoding, seed, &logits, item, n);
            for (j, hi) in s.cumulative.iter().enumerate() {
                if s.u < *hi {
                    return s.order[j] as u32;
                }
            }
            s.order[s.order.len() - 1] as u32
        }
    }
}

/// One sampling step laid out: the `top_k` candidates in order (largest logit first, ties by
/// index), the running sum of their probabilities, and the uniform draw `u` that picks the
/// first candidate whose running sum exceeds it.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Candidate token ids, in order.
    pub order: Vec<usize>,
    /// `cumulative[j]`: the probabilities of candidates `0..=j`, summed in order.
    pub cumulative: Vec<f32>,
    /// The draw from stream (Sample, item, n).
    pub u: f32,
}

impl Sampling {
    /// The step for `decoding` (a `Sample`; greedy gives one candidate, the best).
    pub fn new(decoding: &Decoding, seed: u64, logits: &[f32], item: u64, n: u64) -> Self {
        let Decoding::Sample {
            temperature,
            top_k,
            top_p,
        } = decoding
        else {
            let best = choose(decoding, seed, logits.to_vec(), item, n) as usize;
            return Self {
                order: vec![best],
                cumulative: vec![1.0],
                u: 0.0,
            };
        };
        let t = temperature.to_f32();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let k = if *top_k == 0 {
            order.len()
        } else {
            (*top_k as usize).min(order.len())
        };
        order.truncate(k);
        let mut scaled: Vec<f32> = order.iter().map(|&i| logits[i] / t).collect();
        softmax_row(&mut scaled);
        if let Some(top_p) = top_p {
            // The nucleus: the first candidates whose probabilities, summed in order, reach
            // `top_p`; the draw is then among them alone, their softmax taken afresh.
            let tp = top_p.to_f32();
            let mut acc = 0.0f32;
            let keep = scaled
                .iter()
                .position(|p| {
                    acc += *p;
                    acc >= tp
                })
                .map_or(order.len(), |j| j + 1);
            order.truncate(keep);
            scaled = order.iter().map(|&i| logits[i] / t).collect();
            softmax_row(&mut scaled);
        }
        let mut r = rng::stream2(seed, Purpose::Sample, item, n);
        let u = rng::unit_f32(&mut r);
        let mut acc = 0.0f32;
        let cumulative = scaled
            .iter()
            .map(|p| {
                acc += *p;
                acc
            })
            .collect();
        Self {
            order,
            cumulative,
            u,
        }
    }

    /// Whether `token` is a candidate whose interval of the running sum lies within `eps` of
    /// the draw (a pick that rounding in another profile could have made).
    pub fn could_pick(&self, token: usize, eps: f32) -> bool {
        let Some(j) = self.order.iter().position(|&t| t == token) else {
            return false;
        };
        let lo = if j == 0 { 0.0 } else { self.cumulative[j - 1] };
        let hi = if j + 1 == self.order.len() {
            f32::INFINITY
        } else {
            self.cumulative[j]
        };
        self.u >= lo - eps && self.u < hi + eps
    }
}

fn parse_rows(bytes: &[u8], features: usize) -> Result<Vec<f32>> {
    let data = crate::data::parse_regression_blob_x(bytes, features)?;
    if data.is_empty() || data.len() / features > MAX_ITEMS {
        return Err(ComputeError::config(
            "inputs.rows",
            format!("must have between 1 and {MAX_ITEMS} rows"),
        ));
    }
    Ok(data)
}

fn check_count(field: &'static str, n: usize) -> Result<()> {
    if n == 0 || n > MAX_ITEMS {
        return Err(ComputeError::config(
            field,
            format!("has {n} items, must have between 1 and {MAX_ITEMS}"),
        ));
    }
    Ok(())
}

fn check_max_new_tokens(n: u32) -> Result<()> {
    if n == 0 || n > MAX_NEW_TOKENS {
        return Err(ComputeError::config(
            "inputs.max_new_tokens",
            format!("is {n}, must be between 1 and {MAX_NEW_TOKENS}"),
        ));
    }
    Ok(())
}

fn check_decoding(decoding: &Decoding) -> Result<()> {
    if let Decoding::Sample {
        temperature, top_p, ..
    } = decoding
    {
        let t = temperature.to_f32();
        if !(t > 0.0 && t <= 100.0) {
            return Err(ComputeError::config(
                "decoding.temperature",
                format!("is {t}, must be in (0, 100]"),
            ));
        }
        // Judged on the decimal itself: a value just below 1 may round to 1 in binary32,
        // which then keeps every candidate (a sum in binary32 may never reach 1).
        if let Some(p) = top_p {
            let v = p.to_f64();
            if !(v > 0.0 && v < 1.0) {
                return Err(ComputeError::config(
                    "decoding.top_p",
                    format!("is {p}, must be in (0, 1) (omit it to keep every candidate)"),
                ));
            }
        }
    }
    Ok(())
}
