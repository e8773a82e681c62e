//! The compute crate's decoders under hostile input, shared by `tests/fuzz_inputs.rs` and the
//! cargo-fuzz targets `safetensors`, `task_spec` and `bundle` (which include this file by
//! path): safetensors blobs (datasets, weights, training states), task specs as a worker
//! validates them (`TrainingJob::from_spec`, `InferenceJob::from_spec`), and the JSON files of
//! a result bundle. Each must return a value or a typed error, never panic.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use market_compute::bundle::Bundle;
use market_compute::data::{parse_regression_blob, parse_regression_blob_x, parse_token_blob};
use market_compute::init::{init_params, weights_from_bytes, weights_to_bytes};
use market_compute::zoo::{ModelConfig, ParamLayout};
use market_compute::{BlobSource, InferenceJob, TrainState, TrainingJob};
use market_protocol::canonical::{from_canonical_bytes, from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::fixtures::{inference_task, training_task};
use market_protocol::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Serves one blob under every id.
pub struct OneBlob<'a>(pub &'a [u8]);

impl BlobSource for OneBlob<'_> {
    fn blob(&self, _: &BlobId) -> Option<Vec<u8>> {
        Some(self.0.to_vec())
    }
}

/// The id the seed tasks give their weights; every other id names the data blob.
pub fn weights_id() -> BlobId {
    BlobId(Hash::of(b"weights"))
}

/// Serves `weights` under [`weights_id`] and `data` under every other id.
pub struct Blobs<'a> {
    pub weights: &'a [u8],
    pub data: &'a [u8],
}

impl BlobSource for Blobs<'_> {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        Some(
            if *id == weights_id() {
                self.weights
            } else {
                self.data
            }
            .to_vec(),
        )
    }
}

fn mlp() -> ModelSpec {
    ModelSpec::Mlp {
        widths: vec![4, 8, 2],
        activation: Activation::Tanh,
    }
}

fn gpt() -> ModelSpec {
    ModelSpec::Gpt {
        layers: 1,
        heads: 2,
        width: 8,
        vocab: 16,
        context: 16,
    }
}

fn layout(spec: &ModelSpec) -> ParamLayout {
    ModelConfig::from_spec(spec).expect("small model").layout()
}

/// Reads `bytes` as every kind of safetensors blob the compute crate accepts.
pub fn check_blobs(bytes: &[u8]) {
    if let Ok(market_compute::data::Dataset::Tokens(t)) = parse_token_blob(bytes, 16) {
        assert!(t.iter().all(|&tok| tok < 16));
    }
    let _ = parse_regression_blob(bytes, 4, 2);
    if let Ok(x) = parse_regression_blob_x(bytes, 4) {
        assert_eq!(x.len() % 4, 0);
    }
    for spec in [mlp(), gpt()] {
        let layout = layout(&spec);
        if let Ok(w) = weights_from_bytes(&layout, bytes) {
            assert_eq!(w.len(), layout.total());
        }
        if let Ok(state) = TrainState::from_bytes(bytes, &layout) {
            // A state that decodes is canonical: it encodes back to its bytes.
            assert_eq!(state.to_bytes(&layout).ok().as_deref(), Some(bytes));
        }
    }
}

/// Parameters, examples and values past which `from_spec` is skipped: legal tasks that big
/// allocate within their stated limits (checked in `tests/fuzz_inputs.rs`) but take too long
/// to build for a fuzz loop.
const MAX_FUZZ_PARAMETERS: u64 = 200_000;
const MAX_FUZZ_EXAMPLES: u32 = 5_000;

fn cheap(task: &TaskSpec) -> bool {
    let (model, examples) = match &task.workload {
        Workload::Training(t) => {
            let examples = match &t.dataset {
                DatasetSource::Arithmetic { examples, .. } => *examples,
                DatasetSource::TeacherMlp { examples, .. } => *examples,
                DatasetSource::Blob { .. } | DatasetSource::Text { .. } => 0,
            };
            (&t.model, examples)
        }
        Workload::Inference(i) => (&i.model, 0),
    };
    examples <= MAX_FUZZ_EXAMPLES
        && ModelConfig::from_spec(model).is_ok_and(|m| m.parameter_count() <= MAX_FUZZ_PARAMETERS)
}

/// What a worker or verifier does with a task it is handed; whether it validated.
pub fn exercise_task(task: &TaskSpec, blobs: &Blobs<'_>) -> bool {
    if !cheap(task) {
        return false;
    }
    match &task.workload {
        Workload::Training(_) => match TrainingJob::from_spec(task, blobs) {
            Ok(job) => {
                let segments = job.segments();
                assert!(segments >= 1);
                let _ = job.segment_bounds(segments - 1);
                let _ = job.segment_bounds(segments);
                true
            }
            Err(_) => false,
        },
        Workload::Inference(_) => match InferenceJob::from_spec(task, blobs) {
            Ok(job) => {
                assert!(!job.is_empty());
                true
            }
            Err(_) => false,
        },
    }
}

/// Decodes `bytes` as a task spec, strictly and leniently, and validates it against `blobs`;
/// how many of the two validated.
pub fn check_task(bytes: &[u8], blobs: &Blobs<'_>) -> usize {
    let mut valid = 0;
    if let Ok(task) = from_json_limited::<TaskSpec>(bytes, MAX_MESSAGE_BYTES) {
        valid += usize::from(exercise_task(&task, blobs));
    }
    if let Ok(signed) = from_canonical_bytes::<Signed<TaskSpec>>(bytes) {
        let _ = signed.verify();
        valid += usize::from(exercise_task(&signed.body, blobs));
    }
    valid
}

/// Writes `bytes` as each JSON file of a bundle in `dir` and reads it back as the verifier
/// does.
pub fn check_bundle(dir: &Path, bytes: &[u8]) {
    let bundle = Bundle::at(dir);
    bundle.create().expect("bundle dirs");
    for name in ["task.json", "commitment.json", "leaves.json", "loss.json"] {
        bundle.write(&dir.join(name), bytes).expect("write");
    }
    bundle.write(&bundle.steps_path(0), bytes).expect("write");
    let _ = bundle.read_task();
    let _ = bundle.read_commitment().map(|c| c.verify().is_ok());
    let _ = bundle.read_leaves();
    let _ = bundle.read_step_hashes(0);
    let _ = bundle.read_loss();
}

fn tensors(views: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>, meta: bool) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = views
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let meta = meta.then(|| HashMap::from([("format".to_string(), "x".to_string())]));
    safetensors::serialize(views, meta).expect("serialize")
}

fn f32s(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect()
}

/// Valid blobs of every kind, to mutate.
pub fn blob_seeds() -> Vec<Vec<u8>> {
    let tokens: Vec<u8> = (0..64u32).flat_map(|t| (t % 16).to_le_bytes()).collect();
    let mlp_layout = layout(&mlp());
    let mlp_params = init_params(
        &ModelConfig::from_spec(&mlp()).expect("mlp"),
        &mlp_layout,
        1,
    );
    let state = TrainState {
        step: 3,
        params: mlp_params.clone(),
        m: vec![0.5; mlp_params.len()],
        v: vec![0.25; mlp_params.len()],
    };
    vec![
        tensors(vec![("tokens", Dtype::U32, vec![64], tokens)], false),
        tensors(
            vec![
                ("x", Dtype::F32, vec![6, 4], f32s(24)),
                ("y", Dtype::F32, vec![6, 2], f32s(12)),
            ],
            false,
        ),
        weights_to_bytes(&mlp_layout, &mlp_params).expect("weights"),
        state.to_bytes(&mlp_layout).expect("state"),
    ]
}

fn small_training(model: ModelSpec, dataset: DatasetSource, weights: bool) -> TaskSpec {
    let mut task = training_task(&Identity::from_test_label("buyer"), 1);
    if let Workload::Training(t) = &mut task.workload {
        t.model = model;
        t.dataset = dataset;
        t.batch_size = 4;
        t.steps = 20;
        t.checkpoint_interval = 5;
        t.initial_weights = weights.then(weights_id);
    }
    task
}

/// Valid tasks of every workload and data source, each human-written and signed, to mutate.
/// Task `i` (of each pair) validates with [`task_blobs`]`(i / 2)`.
pub fn task_seeds() -> Vec<Vec<u8>> {
    let buyer = Identity::from_test_label("buyer");
    let blob = BlobId(Hash::of(b"blob"));
    let mut rows = inference_task(&buyer, 3);
    if let Workload::Inference(i) = &mut rows.workload {
        i.model = mlp();
        i.weights = Some(weights_id());
        i.inputs = InferenceInputs::Rows { id: blob };
        i.decoding = Decoding::Greedy;
    }
    let mut prompts = inference_task(&buyer, 2);
    if let Workload::Inference(i) = &mut prompts.workload {
        i.weights = None;
    }
    let tasks = [
        small_training(
            gpt(),
            DatasetSource::Arithmetic {
                max_operand: 9,
                examples: 64,
            },
            false,
        ),
        small_training(gpt(), DatasetSource::Blob { id: blob }, false),
        small_training(
            mlp(),
            DatasetSource::TeacherMlp {
                features: 4,
                outputs: 2,
                examples: 64,
            },
            true,
        ),
        small_training(mlp(), DatasetSource::Blob { id: blob }, false),
        prompts,
        rows,
    ];
    let mut out = Vec::new();
    for task in tasks {
        out.push(serde_json::to_vec_pretty(&task).expect("json"));
        out.push(to_canonical_bytes(&Signed::sign(task, &buyer).expect("sign")).expect("json"));
    }
    out
}

/// The blobs task seed `i / 2` validates with: (weights, data) as indices into [`blob_seeds`].
pub fn task_blobs(i: usize) -> (usize, usize) {
    [(2, 0), (2, 0), (2, 0), (2, 1), (2, 0), (2, 1)][i % 6]
}

/// Valid bundle JSON files, to mutate.
pub fn bundle_seeds() -> Vec<Vec<u8>> {
    let buyer = Identity::from_test_label("buyer");
    let worker = Identity::from_test_label("worker");
    let task = training_task(&buyer, 1);
    let leaves = market_protocol::fixtures::checkpoint_hashes("run", 4);
    let body = market_protocol::fixtures::commitment(&worker, &task, &leaves);
    vec![
        to_canonical_bytes(&task).expect("json"),
        to_canonical_bytes(&Signed::sign(body, &worker).expect("sign")).expect("json"),
        to_canonical_bytes(&leaves).expect("json"),
        b"[\n  2.5,\n  1.25\n]".to_vec(),
    ]
}
