//! Inference: a batch of items (prompts for `gpt`, feature rows for `mlp`) to outputs, each
//! item hashed on its own and the hashes put under one Merkle root, so a verifier can re-run
//! and check single items.

use market_protocol::{
    BlobId, Decoding, ExecutionProfile, Hash, InferenceInputs, MerkleTree, StateHash, TaskSpec,
    Workload,
};

use crate::backend::Backend;
use crate::data::arithmetic;
use crate::error::{ComputeError, Result};
use crate::init::{init_params, weights_from_bytes};
use crate::job::BlobSource;
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
        let Workload::Inference(inf) = &spec.workload else {
            return Err(ComputeError::config("workload", "is not an inference task"));
        };
        let model = ModelConfig::from_spec(&inf.model)?;
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
                    "gpt takes `prompts`, mlp takes `rows`",
                ))
            }
        };
        if let Decoding::Sample { temperature, .. } = &inf.decoding {
            let t = temperature.to_f32();
            if !(t > 0.0 && t <= 100.0) {
                return Err(ComputeError::config(
                    "decoding.temperature",
                    format!("is {t}, must be in (0, 100]"),
                ));
            }
        }
        Ok(Self {
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
        }
    }

    /// Bytes the decoded items hold in memory.
    pub(crate) fn items_bytes(&self) -> u64 {
        match &self.items {
            Items::Prompts { prompts, .. } => prompts.iter().map(|p| 4 * p.len() as u64 + 24).sum(),
            Items::Rows { x, .. } => 4 * x.len() as u64,
        }
    }

    /// The largest output of one item: one byte per generated token (the zoo's tokenizer
    /// decodes each token to one ASCII character), or the model's outputs as f32.
    pub(crate) fn max_output_bytes(&self) -> u64 {
        match (&self.model, &self.items) {
            (_, Items::Prompts { max_new_tokens, .. }) => u64::from(*max_new_tokens),
            (ModelConfig::Mlp(m), Items::Rows { .. }) => 4 * m.widths[m.widths.len() - 1] as u64,
            (ModelConfig::Gpt(g), Items::Rows { .. }) => 4 * g.vocab as u64,
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
        let bytes = match (&self.model, &self.items) {
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
            _ => unreachable!("checked in from_spec"),
        };
        let hash = StateHash(Hash::of(&bytes));
        Ok(ItemOutput { bytes, hash })
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
        Decoding::Sample { temperature, top_k } => {
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
            let mut r = rng::stream2(seed, Purpose::Sample, item, n);
            let u = rng::unit_f32(&mut r);
            let mut acc = 0.0f32;
            for (j, p) in scaled.iter().enumerate() {
                acc += *p;
                if u < acc {
                    return order[j] as u32;
                }
            }
            order[k - 1] as u32
        }
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
