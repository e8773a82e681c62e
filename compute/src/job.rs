//! A training job: a validated task plus its data, and the one function that runs a segment.
//!
//! The worker calls [`TrainingJob::run_segment`] for every segment of the run (and
//! [`TrainingJob::run_segment_with`] to open one step by step); the verifier calls it for the
//! sampled segments, from the committed start state. There is no other implementation of a
//! training step anywhere: the verifier's narrowing to the first bad step calls
//! [`TrainingJob::step`] itself.

use market_protocol::{BlobId, DatasetSource, ExecutionProfile, Hash, TaskSpec, Workload};

use crate::backend::Backend;
use crate::batch::{self, check_token_data};
use crate::data::{self, arithmetic, teacher, Dataset};
use crate::error::{ComputeError, Result};
use crate::init::{init_params, weights_from_bytes};
use crate::llama::text::TextCodec;
use crate::optim::Optimizer;
use crate::state::TrainState;
use crate::zoo::{ModelConfig, ParamLayout};

/// Limits on the run itself.
pub mod limits {
    /// Most optimizer steps in a task.
    pub const MAX_STEPS: u32 = 10_000_000;
    /// Most segments in a run: its `segments + 1` leaves must fit the 4 MiB that the readers
    /// of `leaves.json` take (`spec/ENCODING.md` section 12), with room to spare.
    pub const MAX_SEGMENTS: u32 = 50_000;
    /// Largest batch.
    pub const MAX_BATCH: u32 = 4096;
    /// Most activation values one step may hold (about 4 bytes each).
    pub const MAX_ACTIVATIONS: u64 = 256 << 20;
}

/// Gives the compute crate the bytes of a blob the task names (datasets, weights).
pub trait BlobSource {
    /// The bytes of `id`, or `None` if not available.
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>>;

    /// The length of `id` in bytes, or `None` if not available: how a size limit is checked
    /// before a blob is read (holders on disk answer from the file's metadata; the default
    /// reads it).
    fn blob_len(&self, id: &BlobId) -> Option<u64> {
        self.blob(id).map(|b| b.len() as u64)
    }

    /// Work derived from blobs that this holder kept from an earlier job under `key` (a text
    /// blob's tokens: [`data::text::tokens_key`]), if it is at most `max_bytes`; `None` by
    /// default: nothing is kept. A worker or verifier runs many jobs of one task (a pooled
    /// task's rounds, its audits), and tokenizing a large text costs minutes each time. What is
    /// read back is checked (its own hash, every id below the vocabulary) and the work redone
    /// when the check fails; the holder trusts its own disk no further than that.
    fn derived(&self, _key: &Hash, _max_bytes: u64) -> Option<Vec<u8>> {
        None
    }

    /// Keeps `bytes`, derived from blobs, under `key` for later jobs
    /// ([`BlobSource::derived`]); best effort: a holder that cannot keep them drops them.
    fn keep_derived(&self, _key: &Hash, _bytes: &[u8]) {}
}

/// No blobs at all: enough for tasks that use only generated data.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBlobs;

impl BlobSource for NoBlobs {
    fn blob(&self, _id: &BlobId) -> Option<Vec<u8>> {
        None
    }
}

/// Blobs held in memory, by id: what golden vectors and tests that carry their own blobs use.
impl BlobSource for std::collections::BTreeMap<BlobId, Vec<u8>> {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.get(id).cloned()
    }

    fn blob_len(&self, id: &BlobId) -> Option<u64> {
        self.get(id).map(|b| b.len() as u64)
    }
}

/// A validated training task, ready to run.
#[derive(Debug, Clone)]
pub struct TrainingJob {
    /// The model.
    pub model: ModelConfig,
    /// Its parameter layout.
    pub layout: ParamLayout,
    /// The training data.
    pub data: Dataset,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Examples per step.
    pub batch_size: usize,
    /// Steps in the run.
    pub steps: u32,
    /// Steps per segment.
    pub checkpoint_interval: u32,
    /// The task seed.
    pub seed: u64,
    /// The execution profile.
    pub profile: ExecutionProfile,
    /// The step the run starts after: 0, or `round × inner_steps` for a slot-round of a pooled
    /// run ([`TrainingJob::slot_round`]); `steps` is then the step it ends at.
    pub first_step: u32,
    /// The batch stream: 0 for a run on one worker, `slot + 1` for a slot of a pooled run.
    pub lane: u64,
    /// How a pooled task is split (`None` for a run on one worker).
    pub pool: Option<crate::pool::Pool>,
    backend: Backend,
    initial_params: Option<Vec<f32>>,
    /// Memory loading the dataset takes beyond the dataset itself (a text dataset's tokenizer
    /// and its pieces' ids before they are joined; 0 otherwise): [`TrainingJob::needs`].
    pub setup_bytes: u64,
}

fn fetch(blobs: &dyn BlobSource, id: &BlobId) -> Result<Vec<u8>> {
    blobs.blob(id).ok_or(ComputeError::MissingBlob(*id))
}

/// A text blob tokenized by a tokenizer blob's tokenizer, for a model of `vocab` tokens, and
/// the memory that takes beyond the text and the dataset: the tokenizer, and the pieces' ids
/// (4 bytes a token), held until they are joined into the dataset. The tokens an earlier job
/// of this holder kept are read back instead ([`BlobSource::derived`]), and tokens made here
/// are kept for the next.
fn text_dataset(
    blobs: &dyn BlobSource,
    text: &BlobId,
    tokenizer: &BlobId,
    vocab: usize,
) -> Result<(data::Dataset, u64)> {
    let key = data::text::tokens_key(text, tokenizer, vocab);
    if let Some(tokens) = blobs
        .derived(&key, data::text::MAX_KEPT_TOKENS_BYTES)
        .and_then(|kept| data::text::tokens_from_kept(&kept, vocab))
    {
        // The kept file's bytes, read before they became the dataset.
        let setup = 4 * tokens.len() as u64 + 32;
        return Ok((data::Dataset::Tokens(tokens), setup));
    }
    let (data, setup) = tokenize_text_blob(blobs, text, tokenizer, vocab)?;
    if let data::Dataset::Tokens(tokens) = &data {
        blobs.keep_derived(&key, &data::text::kept_tokens(tokens));
    }
    Ok((data, setup))
}

/// [`text_dataset`]'s work when nothing was kept: the tokenizer built, the text tokenized.
fn tokenize_text_blob(
    blobs: &dyn BlobSource,
    text: &BlobId,
    tokenizer: &BlobId,
    vocab: usize,
) -> Result<(data::Dataset, u64)> {
    let tokens = data::text::tokenizer_vocab(&fetch(blobs, tokenizer)?)?;
    // Counted before the tokenizer is built: a blob of millions of tokens costs seconds and
    // gigabytes to build, for a refusal.
    data::text::check_tokenizer_size(tokens.tokens.len(), vocab)?;
    let codec = TextCodec::from_gguf(&tokens)?;
    let data = data::text::tokenize(&fetch(blobs, text)?, &codec, vocab)?;
    let setup = codec.memory_bytes() + 4 * data.len() as u64;
    Ok((data, setup))
}

/// The parameters of a GGUF file (`spec/COMPUTE.md` 11.3) to fine-tune `task`'s model from:
/// the file's config must be the task's, except that the task's `max_position_embeddings`
/// (its training window) may be shorter than the file's. Shapes do not depend on it, so the
/// file's parameters are in the task's layout.
fn llama_weights_from_gguf(task: &crate::llama::LlamaConfig, bytes: &[u8]) -> Result<Vec<f32>> {
    let file = crate::llama::gguf::read(bytes)?;
    let theirs = file.weights.config;
    // Each difference by its Hugging Face name, the task's value first.
    type Field = fn(&crate::llama::LlamaConfig) -> String;
    let fields: [(&str, Field); 9] = [
        ("hidden_size", |c| c.hidden_size.to_string()),
        ("intermediate_size", |c| c.intermediate_size.to_string()),
        ("num_hidden_layers", |c| c.num_hidden_layers.to_string()),
        ("num_attention_heads", |c| c.num_attention_heads.to_string()),
        ("num_key_value_heads", |c| c.num_key_value_heads.to_string()),
        ("vocab_size", |c| c.vocab_size.to_string()),
        ("rms_norm_eps", |c| c.rms_norm_eps.to_string()),
        ("rope_theta", |c| c.rope_theta.to_string()),
        ("tie_word_embeddings", |c| c.tie_word_embeddings.to_string()),
    ];
    let mut differences: Vec<String> = fields
        .iter()
        .filter(|(_, get)| get(task) != get(&theirs))
        .map(|(name, get)| format!("{name} is {}, the file's is {}", get(task), get(&theirs)))
        .collect();
    if task.max_position_embeddings > theirs.max_position_embeddings {
        differences.push(format!(
            "max_position_embeddings (the training window) is {}, more than the file's {}",
            task.max_position_embeddings, theirs.max_position_embeddings
        ));
    }
    if !differences.is_empty() {
        return Err(ComputeError::config(
            "model",
            format!(
                "does not match the GGUF weights: {} (only max_position_embeddings may \
                 differ, and be at most the file's)",
                differences.join("; ")
            ),
        ));
    }
    Ok(file.weights.params)
}

impl TrainingJob {
    /// Validates a training task and loads its data. Every limit is checked before allocation.
    pub fn from_spec(spec: &TaskSpec, blobs: &dyn BlobSource) -> Result<Self> {
        let Workload::Training(t) = &spec.workload else {
            return Err(ComputeError::config("workload", "is not a training task"));
        };
        let model = ModelConfig::from_spec(&t.model)?;
        let optimizer = Optimizer::from_spec(&t.optimizer)?;
        if t.steps == 0 || t.steps > limits::MAX_STEPS {
            return Err(ComputeError::config(
                "steps",
                format!(
                    "is {}, must be between 1 and {}",
                    t.steps,
                    limits::MAX_STEPS
                ),
            ));
        }
        if t.checkpoint_interval == 0 || t.checkpoint_interval > t.steps {
            return Err(ComputeError::config(
                "checkpoint_interval",
                format!(
                    "is {}, must be between 1 and steps ({})",
                    t.checkpoint_interval, t.steps
                ),
            ));
        }
        let segments = t.steps.div_ceil(t.checkpoint_interval);
        if segments > limits::MAX_SEGMENTS {
            return Err(ComputeError::config(
                "checkpoint_interval",
                format!(
                    "makes {segments} segments of {} steps, at most {} are allowed (a run's \
                     leaves must fit what its auditors read): use an interval of at least {}",
                    t.checkpoint_interval,
                    limits::MAX_SEGMENTS,
                    t.steps.div_ceil(limits::MAX_SEGMENTS)
                ),
            ));
        }
        let tolerant = crate::tolerance::MAX_TOLERANT_INTERVAL;
        if spec.profile != ExecutionProfile::Repro && t.checkpoint_interval > tolerant {
            return Err(ComputeError::config(
                "checkpoint_interval",
                format!(
                    "is {}; in the {} profile at most {tolerant} (an audit compares a segment \
                     within a tolerance, and two machines' runs drift further apart with every \
                     step), or choose the repro profile",
                    t.checkpoint_interval,
                    format!("{:?}", spec.profile).to_lowercase()
                ),
            ));
        }
        if t.batch_size == 0 || t.batch_size > limits::MAX_BATCH {
            return Err(ComputeError::config(
                "batch_size",
                format!(
                    "is {}, must be between 1 and {}",
                    t.batch_size,
                    limits::MAX_BATCH
                ),
            ));
        }
        let batch_size = t.batch_size as usize;
        let activations = crate::resources::training_values(&model, batch_size as u64);
        if activations > limits::MAX_ACTIVATIONS {
            return Err(ComputeError::config(
                "batch_size",
                format!(
                    "needs {activations} activation values per step, over the limit of {}",
                    limits::MAX_ACTIVATIONS
                ),
            ));
        }
        // Cheap refusals before the data is read: a text dataset costs a tokenization.
        let backend = Backend::for_profile(spec.profile)?;
        let pool = match &t.pool {
            // One round moves the parameters little against their size, so the `native`
            // tolerance (relative to the state) could pass a slot that trained less: pooled
            // tasks are exact until that is measured.
            Some(_) if spec.profile != ExecutionProfile::Repro => {
                return Err(ComputeError::config(
                    "pool",
                    "pooled tasks run in the repro profile only",
                ))
            }
            Some(p) => Some(crate::pool::Pool::from_spec(
                p,
                t.steps,
                t.checkpoint_interval,
            )?),
            None => None,
        };
        let mut setup_bytes = 0;
        let data = match (&model, &t.dataset) {
            (
                ModelConfig::Gpt(g),
                DatasetSource::Arithmetic {
                    max_operand,
                    examples,
                },
            ) => {
                if g.vocab < arithmetic::VOCAB {
                    return Err(ComputeError::config(
                        "model.vocab",
                        format!(
                            "is {}, the arithmetic language needs at least {}",
                            g.vocab,
                            arithmetic::VOCAB
                        ),
                    ));
                }
                if *max_operand > arithmetic::MAX_OPERAND {
                    return Err(ComputeError::config(
                        "dataset.max_operand",
                        format!(
                            "is {max_operand}, must be at most {}",
                            arithmetic::MAX_OPERAND
                        ),
                    ));
                }
                let longest = arithmetic::max_example_len(*max_operand);
                if longest > g.context + 1 {
                    return Err(ComputeError::config(
                        "model.context",
                        format!(
                            "is {}, too short for sums up to {max_operand} ({longest} tokens)",
                            g.context
                        ),
                    ));
                }
                arithmetic::generate(spec.seed, *max_operand, *examples)?
            }
            (ModelConfig::Gpt(g), DatasetSource::Blob { id }) => {
                data::parse_token_blob(&fetch(blobs, id)?, g.vocab)?
            }
            (
                ModelConfig::Mlp(m),
                DatasetSource::TeacherMlp {
                    features,
                    outputs,
                    examples,
                },
            ) => {
                let (f, o) = (m.widths[0], m.widths[m.widths.len() - 1]);
                if *features as usize != f {
                    return Err(ComputeError::config(
                        "dataset.features",
                        format!("is {features}, the model takes {f} inputs"),
                    ));
                }
                if *outputs as usize != o {
                    return Err(ComputeError::config(
                        "dataset.outputs",
                        format!("is {outputs}, the model has {o} outputs"),
                    ));
                }
                teacher::generate(spec.seed, f, o, *examples)?
            }
            (ModelConfig::Mlp(m), DatasetSource::Blob { id }) => data::parse_regression_blob(
                &fetch(blobs, id)?,
                m.widths[0],
                m.widths[m.widths.len() - 1],
            )?,
            (ModelConfig::Llama(l), DatasetSource::Blob { id }) => {
                data::parse_token_blob(&fetch(blobs, id)?, l.vocab_size)?
            }
            (ModelConfig::Gpt(g), DatasetSource::Text { id, tokenizer }) => {
                let (data, setup) = text_dataset(blobs, id, tokenizer, g.vocab)?;
                setup_bytes = setup;
                data
            }
            (ModelConfig::Llama(l), DatasetSource::Text { id, tokenizer }) => {
                let (data, setup) = text_dataset(blobs, id, tokenizer, l.vocab_size)?;
                setup_bytes = setup;
                data
            }
            (ModelConfig::Gpt(_), _) => {
                return Err(ComputeError::config(
                    "dataset.source",
                    "a gpt model trains on `arithmetic`, a token blob or a text blob",
                ))
            }
            (ModelConfig::Mlp(_), _) => {
                return Err(ComputeError::config(
                    "dataset.source",
                    "an mlp model trains on `teacher_mlp` or a regression blob",
                ))
            }
            (ModelConfig::Llama(_), _) => {
                return Err(ComputeError::config(
                    "dataset.source",
                    "a llama model trains on a token blob or a text blob",
                ))
            }
        };
        match &model {
            ModelConfig::Llama(l) => {
                check_token_data(&data, batch_size, l.max_position_embeddings)?
            }
            ModelConfig::Gpt(g) => check_token_data(&data, batch_size, g.context)?,
            ModelConfig::Mlp(_) => {
                if data.len() < batch_size {
                    return Err(ComputeError::config(
                        "batch_size",
                        format!(
                            "is {batch_size}, larger than the dataset's {} rows",
                            data.len()
                        ),
                    ));
                }
            }
        }
        let layout = model.layout();
        let initial_params = match &t.initial_weights {
            Some(id) => {
                let bytes = fetch(blobs, id)?;
                Some(match &model {
                    ModelConfig::Llama(l) if bytes.starts_with(b"GGUF") => {
                        llama_weights_from_gguf(l, &bytes)?
                    }
                    _ => weights_from_bytes(&layout, &bytes)?,
                })
            }
            None => None,
        };
        Ok(Self {
            backend,
            model,
            layout,
            data,
            optimizer,
            batch_size,
            steps: t.steps,
            checkpoint_interval: t.checkpoint_interval,
            seed: spec.seed,
            profile: spec.profile,
            first_step: 0,
            lane: 0,
            pool,
            initial_params,
            setup_bytes,
        })
    }

    /// Uses another backend than the profile's (for example to compare profiles in tests).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Segments in the run: `ceil((steps - first_step) / checkpoint_interval)`.
    pub fn segments(&self) -> u32 {
        (self.steps - self.first_step).div_ceil(self.checkpoint_interval)
    }

    /// The steps of segment `index`: it starts after `start` steps and ends after `end`.
    pub fn segment_bounds(&self, index: u32) -> Result<(u32, u32)> {
        if index >= self.segments() {
            return Err(ComputeError::StateMismatch(format!(
                "segment {index} of a run of {}",
                self.segments()
            )));
        }
        let start = self.first_step + index * self.checkpoint_interval;
        Ok((start, (start + self.checkpoint_interval).min(self.steps)))
    }

    /// The job a committed run executes: the task's own for a run on one worker, or its
    /// slot-round when the commitment names one. A pooled task has no run of its own, and an
    /// unpooled one no slot-rounds.
    pub fn for_run(
        spec: &TaskSpec,
        blobs: &dyn BlobSource,
        slot_round: Option<&market_protocol::SlotRound>,
    ) -> Result<Self> {
        let job = Self::from_spec(spec, blobs)?;
        match (slot_round, job.pool.is_some()) {
            (Some(r), true) => job.slot_round(r.slot, r.round),
            (None, false) => Ok(job),
            (Some(_), false) => Err(ComputeError::config(
                "pool",
                "the task is not pooled: a run of it is not a slot-round",
            )),
            (None, true) => Err(ComputeError::config(
                "pool",
                "a pooled task runs as slot-rounds on several workers, not as one run",
            )),
        }
    }

    /// Steps this run takes: `steps`, or `inner_steps` for a slot-round.
    pub fn run_steps(&self) -> u32 {
        self.steps - self.first_step
    }

    /// The run slot `slot` of a pooled task makes in round `round`: steps `round × H` to
    /// `(round + 1) × H` (`H` the pool's inner steps) with the task's optimizer, on the slot's
    /// own batch stream, from the slot's start state ([`crate::pool::slot_start`]).
    pub fn slot_round(&self, slot: u32, round: u32) -> Result<Self> {
        let Some(pool) = &self.pool else {
            return Err(ComputeError::config("pool", "the task is not pooled"));
        };
        if slot >= pool.slots || round >= pool.rounds {
            return Err(ComputeError::StateMismatch(format!(
                "slot {slot} of round {round}: the pool has {} slots and {} rounds",
                pool.slots, pool.rounds
            )));
        }
        let mut job = self.clone();
        job.first_step = round * pool.inner_steps;
        job.steps = job.first_step + pool.inner_steps;
        job.lane = u64::from(slot) + 1;
        Ok(job)
    }

    /// The state before the first step (checkpoint 0).
    pub fn initial_state(&self) -> TrainState {
        let params = self
            .initial_params
            .clone()
            .unwrap_or_else(|| init_params(&self.model, &self.layout, self.seed));
        let n = params.len();
        TrainState {
            step: 0,
            params,
            m: vec![0.0; n],
            v: if self.optimizer.has_second_moment() {
                vec![0.0; n]
            } else {
                Vec::new()
            },
        }
    }

    /// One optimizer step from `state`; returns the step's loss. Fails on a non-finite loss.
    pub fn step(&self, state: &mut TrainState) -> Result<f32> {
        if state.params.len() != self.layout.total() {
            return Err(ComputeError::StateMismatch(format!(
                "{} parameters, the model has {}",
                state.params.len(),
                self.layout.total()
            )));
        }
        // A state decoded from a worker's file may lack its moments (a canonical state without
        // `opt.*` tensors): refused here, not indexed out of bounds by the optimizer.
        let n = self.layout.total();
        let v_len = if self.optimizer.has_second_moment() {
            n
        } else {
            0
        };
        if state.m.len() != n || state.v.len() != v_len {
            return Err(ComputeError::StateMismatch(format!(
                "the state has {} first and {} second moments; this optimizer needs {n} and {v_len}",
                state.m.len(),
                state.v.len()
            )));
        }
        if state.step >= self.steps {
            return Err(ComputeError::StateMismatch(format!(
                "state is at step {}, the run has {}",
                state.step, self.steps
            )));
        }
        let mut grads = vec![0.0f32; self.layout.total()];
        let loss = match &self.model {
            ModelConfig::Llama(l) => {
                // Windows of the model's whole context, drawn as gpt's are.
                let b = batch::token_batch(
                    &self.data,
                    self.seed,
                    state.step,
                    self.lane,
                    self.batch_size,
                    l.max_position_embeddings,
                );
                self.backend
                    .llama_loss_and_grads(l, &self.layout, &state.params, &b, &mut grads)?
            }
            ModelConfig::Gpt(g) => {
                let b = batch::token_batch(
                    &self.data,
                    self.seed,
                    state.step,
                    self.lane,
                    self.batch_size,
                    g.context,
                );
                self.backend
                    .gpt_loss_and_grads(g, &self.layout, &state.params, &b, &mut grads)?
            }
            ModelConfig::Mlp(m) => {
                let b = batch::regression_batch(
                    &self.data,
                    self.seed,
                    state.step,
                    self.lane,
                    self.batch_size,
                );
                self.backend
                    .mlp_loss_and_grads(m, &self.layout, &state.params, &b, &mut grads)?
            }
        };
        if !loss.is_finite() {
            return Err(ComputeError::NonFinite {
                tensor: "loss".into(),
                step: state.step + 1,
            });
        }
        self.optimizer.step(&self.layout, state, &grads);
        Ok(loss)
    }

    /// The mean loss of a `gpt` model with `params` on `examples` (scored on their answers),
    /// without training: how well the model does on data it did not train on.
    pub fn loss_on(&self, params: &[f32], examples: &[crate::data::Example]) -> Result<f32> {
        let ModelConfig::Gpt(g) = &self.model else {
            return Err(ComputeError::config(
                "model",
                "held-out loss is measured for gpt",
            ));
        };
        let b = batch::examples_batch(examples, g.context);
        let mut grads = vec![0.0f32; self.layout.total()];
        self.backend
            .gpt_loss_and_grads(g, &self.layout, params, &b, &mut grads)
    }

    /// Runs segment `index` from `start` (which must be the state after the segment's first
    /// step count) and returns the end state and the mean loss of its steps. `on_step` sees
    /// every step's number and loss (for progress bars). The end state is checked finite.
    pub fn run_segment(
        &self,
        index: u32,
        start: &TrainState,
        mut on_step: impl FnMut(u32, f32),
    ) -> Result<(TrainState, f32)> {
        self.run_segment_with(index, start, |state, loss| {
            on_step(state.step, loss);
            Ok(())
        })
    }

    /// [`TrainingJob::run_segment`], with `after_step` seeing the whole state after every step
    /// (a worker opening a segment hashes each one); an error from it stops the run.
    pub fn run_segment_with(
        &self,
        index: u32,
        start: &TrainState,
        mut after_step: impl FnMut(&TrainState, f32) -> Result<()>,
    ) -> Result<(TrainState, f32)> {
        let (first, end) = self.segment_bounds(index)?;
        if start.step != first {
            return Err(ComputeError::StateMismatch(format!(
                "segment {index} starts at step {first}, the state is at step {}",
                start.step
            )));
        }
        let mut state = start.clone();
        let mut total = 0.0f32;
        while state.step < end {
            let loss = self.step(&mut state)?;
            total += loss;
            after_step(&state, loss)?;
        }
        state.check_finite(&self.layout)?;
        let mean = total / (end - first) as f32;
        // Finite step losses can still sum past binary32's range: such a segment diverged
        // like a step whose loss overflows (committing it would fail every `native` audit,
        // whose loss check takes finite losses only).
        if !mean.is_finite() {
            return Err(ComputeError::NonFinite {
                tensor: "loss".into(),
                step: end,
            });
        }
        Ok((state, mean))
    }
}
