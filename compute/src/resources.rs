//! What running a task takes of a machine: peak memory, and disk for its inputs and bundle.
//!
//! The node estimates this when a task is posted and hands the task only to a worker whose
//! hello offers at least as much (and its audits only to verifiers with the memory), so a task
//! too big for every worker waits and says why instead of tying workers up until they fail.
//! The estimates are upper bounds built from the validated job, term by term as
//! `spec/COMPUTE.md` ("Resources") states them; `BENCHMARKS.md` compares them with measured
//! peaks.

use market_protocol::{Resources, TaskSpec, Workload};

use crate::bundle::Bundle;
use crate::data::Dataset;
use crate::error::Result;
use crate::inference::InferenceJob;
use crate::job::{BlobSource, TrainingJob};
use crate::zoo::{ModelConfig, ParamLayout};

/// Memory of the worker process apart from the task: code, the async runtime, the network,
/// the kernels' thread pools.
pub const BASE_MEMORY_BYTES: u64 = 64 << 20;

/// Disk of the small bundle files (task, commitment, manifest) beyond the terms counted.
const SMALL_FILES_BYTES: u64 = 1 << 20;

/// Bytes of one Merkle leaf in the bundle's leaves file (a quoted hex hash and a comma).
const LEAF_BYTES: u64 = 80;

/// Bytes of one loss in the loss trace file (a JSON number and a comma).
const LOSS_BYTES: u64 = 24;

/// Validates `task` (building its job, as a worker would) and estimates what running it
/// takes. The inputs' size is the sum of the lengths of the blobs it names.
pub fn estimate(task: &TaskSpec, blobs: &dyn BlobSource) -> Result<Resources> {
    let input_bytes: u64 = task
        .blobs()
        .iter()
        .filter_map(|id| blobs.blob_len(id))
        .sum();
    Ok(match &task.workload {
        Workload::Training(_) => TrainingJob::from_spec(task, blobs)?.needs(input_bytes),
        Workload::Inference(_) => InferenceJob::plan(task, blobs)?.needs(input_bytes),
    })
}

/// Activation values one training step of `model` holds with `batch` examples (about 4 bytes
/// each): the number the job's limit [`crate::job::limits::MAX_ACTIVATIONS`] bounds.
pub fn activation_values(model: &ModelConfig, batch: u64) -> u64 {
    match model {
        ModelConfig::Gpt(g) => {
            let (t, c, h, l) = (
                g.context as u64,
                g.width as u64,
                g.heads as u64,
                g.layers as u64,
            );
            l * (batch * t * c * 20 + batch * h * t * t) + batch * t * g.vocab as u64 * 2
        }
        ModelConfig::Mlp(m) => m.widths.iter().map(|w| *w as u64 * batch * 3).sum(),
        // One position; an inference job adds its cache and logits ([`InferenceJob::needs`]).
        ModelConfig::Llama(l) => batch * l.working_bytes(1, false) / 4,
    }
}

/// Values one training step of `model` holds with `batch` sequences: [`activation_values`],
/// except for a `llama`, whose step (`llama::train`) keeps per layer and position its input,
/// the two normed rows, `q`, `k`, `v`, the attention output, the mid-layer row, `gate`, `up`
/// and their product, and each head's attention weights (`heads × t` per position); then the
/// logits and their gradient; and the transposed copy of every matrix the forward pass makes.
pub fn training_values(model: &ModelConfig, batch: u64) -> u64 {
    match model {
        ModelConfig::Llama(l) => {
            let (t, h, i, kv, heads, layers, v) = (
                l.max_position_embeddings as u64,
                l.hidden_size as u64,
                l.intermediate_size as u64,
                l.kv_width() as u64,
                l.num_attention_heads as u64,
                l.num_hidden_layers as u64,
                l.vocab_size as u64,
            );
            let per_layer = batch * t * (6 * h + 2 * kv + 4 * i + 3 + heads * t);
            layers * per_layer + batch * t * (2 * v + 3 * h) + l.parameter_count()
        }
        _ => activation_values(model, batch),
    }
}

/// An upper bound on the bytes of a checkpoint of `layout` (parameters, first moment and, with
/// `second_moment`, the second, as f32 in a safetensors file): the data, and at most 256
/// bytes of header per tensor.
pub fn state_bytes(layout: &ParamLayout, second_moment: bool) -> u64 {
    let groups = if second_moment { 3 } else { 2 };
    let tensors = layout.slots().len() as u64 * groups + 1;
    4 * layout.total() as u64 * groups + 256 * tensors + 64
}

/// Bytes a dataset holds in memory.
pub fn dataset_bytes(data: &Dataset) -> u64 {
    match data {
        Dataset::Tokens(t) => 4 * t.len() as u64,
        Dataset::Examples(e) => e.iter().map(|x| 4 * x.tokens.len() as u64 + 48).sum(),
        Dataset::Regression { x, y, .. } => 4 * (x.len() + y.len()) as u64,
    }
}

impl TrainingJob {
    /// What running this job takes, with `input_bytes` the total size of the blobs the task
    /// names (cached on the worker's disk and read into memory while loading).
    ///
    /// Memory: the base, the inputs, the dataset (and what loading it takes beyond it), four
    /// states (the running one, a segment's
    /// start, the checkpoint being serialized and the one being hashed), gradients and a
    /// scratch copy of the parameters, and twice the step's activations (forward and
    /// backward). Disk: the inputs, every checkpoint, the final weights, leaves, losses, one
    /// segment's step opening and the small files.
    pub fn needs(&self, input_bytes: u64) -> Resources {
        let params = self.layout.total() as u64;
        let state = state_bytes(&self.layout, self.optimizer.has_second_moment());
        let segments = u64::from(self.segments());
        let activations = training_values(&self.model, self.batch_size as u64);
        let memory = BASE_MEMORY_BYTES
            + input_bytes
            + dataset_bytes(&self.data)
            + self.setup_bytes
            + 4 * state
            + 8 * params
            + 8 * activations;
        let disk = input_bytes
            + (segments + 1) * (state + LEAF_BYTES)
            + 4 * params
            + segments * LOSS_BYTES
            + Bundle::max_step_hashes_bytes(self.checkpoint_interval)
            + SMALL_FILES_BYTES;
        Resources {
            memory_bytes: memory,
            disk_bytes: disk,
        }
    }
}

/// The shape of a result bundle, at its largest: what its worker's manifest and commitment
/// list (a node checks at post that reporting it fits the network's limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleShape {
    /// The size of every file, at its largest.
    pub files: Vec<u64>,
    /// Entries of the commitment's `outputs`.
    pub outputs: u64,
    /// Entries of the commitment's `loss_trace`.
    pub losses: u64,
}

impl TrainingJob {
    /// Every checkpoint (segments + 1), the weights, the leaves and the losses.
    pub fn bundle_shape(&self) -> BundleShape {
        let segments = u64::from(self.segments());
        let state = state_bytes(&self.layout, self.optimizer.has_second_moment());
        let mut files = vec![state; segments as usize + 1];
        files.push(4 * self.layout.total() as u64 + (1 << 16));
        files.push((segments + 1) * LEAF_BYTES);
        files.push(segments * LOSS_BYTES);
        BundleShape {
            files,
            outputs: 1,
            losses: segments,
        }
    }
}

impl InferenceJob {
    /// Every item at its largest and the leaves.
    pub fn bundle_shape(&self) -> BundleShape {
        let items = self.len() as u64;
        let mut files = vec![self.max_output_bytes(); items as usize];
        files.push(items * LEAF_BYTES);
        BundleShape {
            files,
            outputs: items,
            losses: 0,
        }
    }

    /// What running this job takes, with `input_bytes` as for [`TrainingJob::needs`].
    ///
    /// Memory: the base, the inputs, the parameters twice (the job's copy and the model's
    /// tensors), the decoded items and twice one item's activations. Disk: the inputs, every
    /// item's output at its largest, leaves and the small files.
    pub fn needs(&self, input_bytes: u64) -> Resources {
        let params = self.layout.total() as u64;
        let items = self.len() as u64;
        let memory = BASE_MEMORY_BYTES
            + input_bytes
            + 8 * params
            + self.items_bytes()
            + 8 * activation_values(&self.model, 1)
            + self.sequence_bytes();
        let disk = input_bytes + items * (self.max_output_bytes() + LEAF_BYTES) + SMALL_FILES_BYTES;
        Resources {
            memory_bytes: memory,
            disk_bytes: disk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoBlobs;
    use market_protocol::fixtures::training_task;
    use market_protocol::{Identity, Workload};

    #[test]
    fn a_checkpoint_fits_its_estimate() {
        let task = training_task(&Identity::from_test_label("buyer"), 1);
        let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
        let bytes = job.initial_state().to_bytes(&job.layout).unwrap().len() as u64;
        let bound = state_bytes(&job.layout, job.optimizer.has_second_moment());
        assert!(bytes <= bound, "{bytes} > {bound}");
        // A bound, not a guess off by orders: the headers are a small part.
        assert!(bound < bytes + bytes / 4 + 65_536, "{bound} vs {bytes}");
    }

    #[test]
    fn needs_grow_with_the_run() {
        let mut task = training_task(&Identity::from_test_label("buyer"), 1);
        let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
        let small = job.needs(0);
        if let Workload::Training(t) = &mut task.workload {
            t.steps *= 10;
        }
        let longer = TrainingJob::from_spec(&task, &NoBlobs).unwrap().needs(0);
        assert_eq!(
            longer.memory_bytes, small.memory_bytes,
            "memory is per step"
        );
        assert!(
            longer.disk_bytes > small.disk_bytes * 5,
            "ten times the checkpoints"
        );
        let with_inputs = job.needs(1 << 30);
        assert_eq!(with_inputs.memory_bytes, small.memory_bytes + (1 << 30));
        assert_eq!(with_inputs.disk_bytes, small.disk_bytes + (1 << 30));
    }
}
