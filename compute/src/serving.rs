//! Serving: a `llama` loaded once and kept, answering request after request.
//!
//! A served request is an ordinary inference task with one chat (the node writes it from the
//! API request), so a served answer is exactly an item of a posted task: the same bytes, the
//! same leaf, checked by a verifier with [`InferenceJob::check_item`]. Only the model's loading
//! is shared between requests.

use market_protocol::{
    AccountId, AuditPolicy, BlobId, ChatMessage, Credits, Decimal, Decoding, ExecutionProfile,
    InferenceInputs, InferenceSpec, ModelSpec, TaskSpec, Version, Workload,
};

use crate::error::{ComputeError, Result};
use crate::inference::{InferenceJob, ItemOutput};
use crate::job::BlobSource;
use crate::llama::gguf;

/// The model section of a task that runs the GGUF file `bytes`, read from its header only.
pub fn model_spec_of(bytes: &[u8]) -> Result<ModelSpec> {
    gguf::read_header(bytes)?.weights.config.to_spec()
}

/// What a served request asks, before the node turns it into a task.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeRequest {
    /// Who pays.
    pub buyer: AccountId,
    /// The node's number for the request (distinguishes otherwise equal requests).
    pub nonce: u64,
    /// The GGUF weights served.
    pub weights: BlobId,
    /// Their config.
    pub model: ModelSpec,
    /// The profile the serving worker runs.
    pub profile: ExecutionProfile,
    /// A chat, or a plain prompt.
    pub prompt: ServePrompt,
    /// Most tokens generated.
    pub max_new_tokens: u32,
    /// Stop texts (a chat's only: a plain prompt's task has none, so they are ignored there;
    /// the API refuses them for completions).
    pub stop: Vec<String>,
    /// Greedy or seeded sampling.
    pub decoding: Decoding,
    /// The sampling seed.
    pub seed: u64,
    /// The most the answer may cost.
    pub price: Credits,
    /// How hard served answers are audited.
    pub audit: AuditPolicy,
}

/// A chat (rendered with the model's template) or a raw prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum ServePrompt {
    /// `/v1/chat/completions`.
    Chat(Vec<ChatMessage>),
    /// `/v1/completions`.
    Text(String),
}

impl ServeRequest {
    /// The one-item inference task this request is.
    pub fn to_task(&self) -> TaskSpec {
        let inputs = match &self.prompt {
            ServePrompt::Chat(messages) => InferenceInputs::Chat {
                chats: vec![messages.clone()],
                max_new_tokens: self.max_new_tokens,
                stop: self.stop.clone(),
            },
            ServePrompt::Text(text) => InferenceInputs::Prompts {
                prompts: vec![text.clone()],
                max_new_tokens: self.max_new_tokens,
            },
        };
        TaskSpec {
            version: Version::CURRENT,
            buyer: self.buyer,
            nonce: self.nonce,
            workload: Workload::Inference(InferenceSpec {
                model: self.model.clone(),
                weights: Some(self.weights),
                tokenizer: None,
                tokenizer_config: None,
                chat_template: None,
                inputs,
                decoding: self.decoding.clone(),
            }),
            seed: self.seed,
            profile: self.profile,
            price: self.price,
            audit: self.audit.clone(),
        }
    }
}

/// One blob, by its id.
struct OneBlob<'a> {
    id: BlobId,
    bytes: &'a [u8],
}

impl BlobSource for OneBlob<'_> {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        (*id == self.id).then(|| self.bytes.to_vec())
    }
}

/// A served answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The item's output: the answer record and its leaf hash.
    pub output: ItemOutput,
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u32,
}

/// A `llama` loaded for serving.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The GGUF blob.
    pub weights: BlobId,
    /// Its config, as a task names it.
    pub model: ModelSpec,
    /// The profile it runs.
    pub profile: ExecutionProfile,
    job: InferenceJob,
}

impl ServedModel {
    /// Loads the GGUF file `bytes` to serve in `profile`, for the worker `worker` (the
    /// loading checks a one-token request in its name, so a file that cannot answer is refused
    /// at start).
    pub fn load(bytes: &[u8], profile: ExecutionProfile, worker: AccountId) -> Result<Self> {
        Self::build(bytes, profile, worker, true)
    }

    fn build(
        bytes: &[u8],
        profile: ExecutionProfile,
        worker: AccountId,
        load: bool,
    ) -> Result<Self> {
        let weights = BlobId::of(bytes);
        let model = model_spec_of(bytes)?;
        let probe = ServeRequest {
            buyer: worker,
            nonce: 0,
            weights,
            model: model.clone(),
            profile,
            prompt: ServePrompt::Text("a".into()),
            max_new_tokens: 1,
            stop: Vec::new(),
            decoding: Decoding::Greedy,
            seed: 0,
            price: Credits(0),
            audit: AuditPolicy {
                detection_target: dec("0.99"),
                assumed_faked_fraction: dec("0.1"),
            },
        };
        let blobs = OneBlob { id: weights, bytes };
        let job = if load {
            InferenceJob::from_spec(&probe.to_task(), &blobs)?
        } else {
            InferenceJob::plan(&probe.to_task(), &blobs)?
        };
        Ok(Self {
            weights,
            model,
            profile,
            job,
        })
    }

    /// The model's header and tokenizer, without its weights (milliseconds, not seconds and
    /// gigabytes): enough to validate requests and count their prompts' tokens
    /// ([`ServedModel::prompt_tokens`]); [`ServedModel::answer`] and [`ServedModel::check`]
    /// need [`ServedModel::load`].
    pub fn plan(bytes: &[u8], profile: ExecutionProfile, worker: AccountId) -> Result<Self> {
        Self::build(bytes, profile, worker, false)
    }

    /// Answers `task` (a one-item request for this model), handing the text to `on_text` as
    /// it is generated.
    pub fn answer(&self, task: &TaskSpec, on_text: &mut dyn FnMut(&str)) -> Result<Served> {
        let job = self.job.for_request(task)?;
        if job.len() != 1 {
            return Err(ComputeError::config(
                "inputs",
                format!("a served request has one item, not {}", job.len()),
            ));
        }
        let prompt_tokens = job.prompt_tokens(0).unwrap_or(0) as u32;
        Ok(Served {
            output: job.run_item_streaming(0, on_text)?,
            prompt_tokens,
        })
    }
}

impl ServedModel {
    /// The number of tokens of `task`'s rendered prompt (what an honest answer signs as
    /// `prompt_tokens`): cheap, no forward pass.
    pub fn prompt_tokens(&self, task: &TaskSpec) -> Result<u32> {
        let job = self.job.for_request(task)?;
        Ok(job.prompt_tokens(0).unwrap_or(0) as u32)
    }

    /// Checks a served answer to `task` (a one-item request for this model) in one forward
    /// pass, as a verifier checks an item of a posted task: `Ok(Ok(()))` if `record` is the
    /// model's answer, `Ok(Err(why))` if not, `Err` if the request itself cannot be run.
    pub fn check(&self, task: &TaskSpec, record: &[u8]) -> Result<std::result::Result<(), String>> {
        let job = self.job.for_request(task)?;
        if job.len() != 1 {
            return Err(ComputeError::config(
                "inputs",
                "a served request has one item",
            ));
        }
        Ok(job
            .check_item(0, record)?
            .unwrap_or_else(|| Err("not a llama answer".into())))
    }
}

/// Served models kept loaded for checking answers, by weights, profile and whether with their
/// weights (loading one with them costs seconds and its size in memory; without, milliseconds:
/// enough to count prompts' tokens). Shared by the node (bills, validation, referee) and the
/// verifier (checks). At most [`ModelCache::MAX_LOADED`] are kept with their weights (the
/// least recently loaded go first); header-only ones, small, are all kept.
#[derive(Default)]
pub struct ModelCache {
    loaded: std::sync::Mutex<Vec<(CacheKey, std::sync::Arc<ServedModel>)>>,
}

type CacheKey = (BlobId, ExecutionProfile, bool);

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache").finish_non_exhaustive()
    }
}

impl ModelCache {
    /// Most models kept with their weights.
    pub const MAX_LOADED: usize = 8;

    /// The model `weights` in `profile` (with its weights when `with_weights`, else its header
    /// and tokenizer only), read from `blobs` and loaded in `me`'s name the first time.
    pub fn get(
        &self,
        blobs: &dyn BlobSource,
        weights: BlobId,
        profile: ExecutionProfile,
        with_weights: bool,
        me: AccountId,
    ) -> Result<std::sync::Arc<ServedModel>> {
        let key = (weights, profile, with_weights);
        if let Some(m) = self.cached(&key) {
            return Ok(m);
        }
        let bytes = blobs
            .blob(&weights)
            .ok_or(ComputeError::MissingBlob(weights))?;
        let model = if with_weights {
            ServedModel::load(&bytes, profile, me)?
        } else {
            ServedModel::plan(&bytes, profile, me)?
        };
        Ok(self.insert(key, model))
    }

    /// Keeps `model` (already read from its blob) for `profile`, if no such model is kept yet.
    pub fn keep(&self, model: ServedModel, with_weights: bool) -> std::sync::Arc<ServedModel> {
        let key = (model.weights, model.profile, with_weights);
        match self.cached(&key) {
            Some(m) => m,
            None => self.insert(key, model),
        }
    }

    /// The model kept for `weights` in `profile`, if any.
    pub fn find(
        &self,
        weights: BlobId,
        profile: ExecutionProfile,
        with_weights: bool,
    ) -> Option<std::sync::Arc<ServedModel>> {
        self.cached(&(weights, profile, with_weights))
    }

    fn cached(&self, key: &CacheKey) -> Option<std::sync::Arc<ServedModel>> {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, m)| m.clone())
    }

    fn insert(&self, key: CacheKey, model: ServedModel) -> std::sync::Arc<ServedModel> {
        let model = std::sync::Arc::new(model);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = loaded.iter().find(|(k, _)| *k == key) {
            return m.clone();
        }
        if key.2 && loaded.iter().filter(|(k, _)| k.2).count() >= Self::MAX_LOADED {
            if let Some(oldest) = loaded.iter().position(|(k, _)| k.2) {
                loaded.remove(oldest);
            }
        }
        loaded.push((key, model.clone()));
        model
    }
}

fn dec(s: &str) -> Decimal {
    s.parse()
        .unwrap_or_else(|_| unreachable!("a literal decimal"))
}
