//! The `llama` backward pass in `repro` (issue 15, fine-tuning): its gradients are those of
//! its loss (central differences), its forward pass is the served model's bit for bit, its
//! bits do not depend on the thread count, and gradient steps lower the loss. In `native`
//! (candle's autograd) the same task trains within the audit's tolerance of `repro`, and a
//! worker that skips the work of a fine-tuning segment is caught by it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_compute::batch::TokenBatch;
use market_compute::init::{init_params, weights_to_bytes};
use market_compute::llama::fixtures::tiny_config;
use market_compute::llama::repro::{KvCache, ReproLlama};
use market_compute::llama::train::{logits, loss_and_grads};
use market_compute::llama::{LlamaConfig, LlamaWeights};
use market_compute::zoo::{ModelConfig, ParamLayout};
use market_compute::{ComputeError, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{
    BlobId, DatasetSource, ExecutionProfile, Identity, TaskSpec, TrainingSpec, Workload,
};

/// Two layers of width 8, two query heads on one key-value head (so a key-value gradient
/// adds two heads'), head size 4.
fn small(tied: bool) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        vocab_size: 11,
        max_position_embeddings: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: tied,
    }
    .validate()
    .unwrap()
}

/// SplitMix64, for test inputs only.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Parameters wide enough that the gradients stand well above binary32's noise in the loss:
/// matrices uniform in [-0.6, 0.6), norm weights in [0.7, 1.3).
fn wide_params(layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut mix = Mix(seed);
    let mut params = vec![0.0f32; layout.total()];
    for slot in layout.slots() {
        let norm = slot.shape.len() == 1;
        for p in &mut params[slot.range()] {
            let u = mix.unit();
            *p = if norm { 1.0 + 0.3 * u } else { 0.6 * u };
        }
    }
    params
}

/// `rows` sequences of `len` tokens; every fifth position unscored.
fn batch(rows: usize, len: usize, vocab: usize, seed: u64) -> TokenBatch {
    let mut mix = Mix(seed);
    let n = rows * len;
    TokenBatch {
        rows,
        len,
        inputs: (0..n).map(|_| (mix.next() % vocab as u64) as u32).collect(),
        targets: (0..n).map(|_| (mix.next() % vocab as u64) as u32).collect(),
        scored: (0..n).map(|i| i % 5 != 4).collect(),
    }
}

fn loss(c: &LlamaConfig, layout: &ParamLayout, params: &[f32], b: &TokenBatch) -> f32 {
    let mut grads = vec![0.0f32; params.len()];
    loss_and_grads(c, layout, params, b, &mut grads).unwrap()
}

#[test]
fn gradients_match_central_differences() {
    for tied in [true, false] {
        let c = small(tied);
        let layout = c.layout();
        let params = wide_params(&layout, 7);
        let b = batch(2, 6, c.vocab_size, 11);
        let mut grads = vec![0.0f32; params.len()];
        loss_and_grads(&c, &layout, &params, &b, &mut grads).unwrap();
        let (mut checked, mut large) = (0, 0);
        for slot in layout.slots() {
            // Four entries of every tensor, spread over it.
            let range = slot.range();
            let step = (range.len() / 4).max(1);
            for i in range.clone().step_by(step).take(4) {
                let eps = 2e-3f32;
                let mut moved = params.clone();
                moved[i] = params[i] + eps;
                let up = loss(&c, &layout, &moved, &b);
                moved[i] = params[i] - eps;
                let down = loss(&c, &layout, &moved, &b);
                let fd = (up - down) / (2.0 * eps);
                let g = grads[i];
                assert!(
                    (fd - g).abs() <= 2e-3 + 2e-2 * g.abs(),
                    "tied {tied}: {} [{}]: backward {g}, central difference {fd}",
                    slot.name,
                    i - range.start
                );
                checked += 1;
                large += usize::from(g.abs() > 1e-2);
            }
        }
        // The check has teeth: most of the gradients it compared are far from zero.
        assert!(large * 3 >= checked * 2, "{large} of {checked} large");
    }
}

#[test]
fn the_training_forward_is_the_served_forward_bit_for_bit() {
    let c = tiny_config().validate().unwrap();
    let layout = c.layout();
    let params = init_params(&ModelConfig::Llama(c), &layout, 3);
    let b = batch(2, 9, c.vocab_size, 5);
    let trained = logits(&c, &layout, &params, &b).unwrap();
    let served = ReproLlama::new(&LlamaWeights {
        config: c,
        layout,
        params,
    });
    for (row, tokens) in b.inputs.chunks(b.len).enumerate() {
        let mut cache = KvCache::new(&c);
        let expected = served.forward(tokens, &mut cache, true).unwrap();
        let got = &trained[row * b.len * c.vocab_size..][..b.len * c.vocab_size];
        assert!(
            got.iter()
                .zip(&expected)
                .all(|(a, e)| a.to_bits() == e.to_bits()),
            "row {row} differs"
        );
    }
}

#[test]
fn loss_and_gradients_do_not_depend_on_the_thread_count() {
    let c = tiny_config().validate().unwrap();
    let layout = c.layout();
    let params = init_params(&ModelConfig::Llama(c), &layout, 9);
    let b = batch(3, 12, c.vocab_size, 13);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut grads = vec![0.0f32; params.len()];
            let loss = loss_and_grads(&c, &layout, &params, &b, &mut grads).unwrap();
            (
                loss.to_bits(),
                grads.iter().map(|g| g.to_bits()).collect::<Vec<_>>(),
            )
        })
    };
    let one = run(1);
    assert!(one.1.iter().any(|g| *g != 0));
    assert_eq!(one, run(3));
}

#[test]
fn an_unscored_position_adds_nothing_and_bad_tokens_are_refused() {
    let c = small(true);
    let layout = c.layout();
    let params = wide_params(&layout, 17);
    let b = batch(1, 10, c.vocab_size, 19);
    assert!(!b.scored[4]);
    let mut other = b.clone();
    other.targets[4] = (other.targets[4] + 1) % c.vocab_size as u32;
    let grads = |b: &TokenBatch| {
        let mut g = vec![0.0f32; params.len()];
        let loss = loss_and_grads(&c, &layout, &params, b, &mut g).unwrap();
        (
            loss.to_bits(),
            g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(grads(&b), grads(&other));
    // A scored target does count.
    other.targets[3] = (other.targets[3] + 1) % c.vocab_size as u32;
    assert_ne!(grads(&b), grads(&other));

    let mut bad = b.clone();
    bad.inputs[2] = c.vocab_size as u32;
    let mut g = vec![0.0f32; params.len()];
    assert!(loss_and_grads(&c, &layout, &params, &bad, &mut g).is_err());
    let mut bad = b.clone();
    bad.targets[2] = c.vocab_size as u32;
    assert!(loss_and_grads(&c, &layout, &params, &bad, &mut g).is_err());
    let long = batch(1, c.max_position_embeddings + 1, c.vocab_size, 1);
    assert!(loss_and_grads(&c, &layout, &params, &long, &mut g).is_err());
}

#[test]
fn gradient_steps_lower_the_loss() {
    let c = tiny_config().validate().unwrap();
    let layout = c.layout();
    let mut params = init_params(&ModelConfig::Llama(c), &layout, 21);
    // A sequence that repeats: learnable from its own first half.
    let pattern: Vec<u32> = (0..8).map(|i| (i * 7 % c.vocab_size) as u32).collect();
    let tokens: Vec<u32> = pattern
        .iter()
        .chain(&pattern)
        .chain(&pattern)
        .copied()
        .collect();
    let b = TokenBatch {
        rows: 1,
        len: tokens.len() - 1,
        inputs: tokens[..tokens.len() - 1].to_vec(),
        targets: tokens[1..].to_vec(),
        scored: vec![true; tokens.len() - 1],
    };
    let mut grads = vec![0.0f32; params.len()];
    let first = loss_and_grads(&c, &layout, &params, &b, &mut grads).unwrap();
    let mut last = first;
    for _ in 0..40 {
        for (p, g) in params.iter_mut().zip(&grads) {
            *p -= 0.5 * g;
        }
        last = loss_and_grads(&c, &layout, &params, &b, &mut grads).unwrap();
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

/// A `llama` training task: the tiny config with a window of 24 positions, on a token blob.
fn llama_task(window: u32, blobs: &mut std::collections::BTreeMap<BlobId, Vec<u8>>) -> TaskSpec {
    let mut model = tiny_config();
    model.max_position_embeddings = window as usize;
    // A text of repeating phrases over the byte vocabulary: learnable, not trivial.
    let mut mix = Mix(5);
    let phrases: Vec<Vec<u32>> = (0..6)
        .map(|_| (0..9).map(|_| (mix.next() % 90) as u32).collect())
        .collect();
    let tokens: Vec<u32> = (0..400)
        .flat_map(|_| phrases[(mix.next() % 6) as usize].clone())
        .collect();
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![tokens.len()], &bytes)
            .unwrap();
    let blob = safetensors::serialize([("tokens", view)], None).unwrap();
    let id = BlobId::of(&blob);
    blobs.insert(id, blob);
    let mut task = training_task(&Identity::from_test_label("llama buyer"), 1);
    if let Workload::Training(t) = &mut task.workload {
        t.model = model.to_spec().unwrap();
        t.dataset = DatasetSource::Blob { id };
        t.batch_size = 4;
        t.steps = 30;
        t.checkpoint_interval = 10;
        t.optimizer = market_protocol::OptimizerSpec::Adamw {
            lr: "0.01".parse().unwrap(),
            beta1: "0.9".parse().unwrap(),
            beta2: "0.999".parse().unwrap(),
            eps: "0.00000001".parse().unwrap(),
            weight_decay: "0".parse().unwrap(),
        };
    }
    task
}

#[test]
fn a_llama_training_task_learns_and_its_segments_rerun_bit_for_bit() {
    let mut blobs = std::collections::BTreeMap::new();
    let task = llama_task(24, &mut blobs);
    let job = TrainingJob::from_spec(&task, &blobs).unwrap();
    let mut state = job.initial_state();
    let mut starts = Vec::new();
    let mut losses = Vec::new();
    for segment in 0..job.segments() {
        starts.push(state.clone());
        let (end, loss) = job.run_segment(segment, &state, |_, _| {}).unwrap();
        losses.push(loss);
        state = end;
    }
    assert!(losses[2] < 0.8 * losses[0], "segment losses {losses:?}");
    // A verifier's re-execution of the middle segment, from its committed start, on a pool of
    // another size: the same end state, bit for bit.
    let again = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(|| job.run_segment(1, &starts[1], |_, _| {}).unwrap());
    assert_eq!(
        again.0.hash(&job.layout).unwrap(),
        starts[2].hash(&job.layout).unwrap()
    );
    // The trained weights, as a weights file with Hugging Face names, start another task.
    let weights = weights_to_bytes(&job.layout, &state.params).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&weights)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert!(names.contains(&"model.layers.1.mlp.gate_proj.weight".to_string()));
    let id = BlobId::of(&weights);
    blobs.insert(id, weights);
    let mut tuned = task.clone();
    if let Workload::Training(t) = &mut tuned.workload {
        t.initial_weights = Some(id);
    }
    let from = TrainingJob::from_spec(&tuned, &blobs).unwrap();
    assert_eq!(from.initial_state().params, state.params);
}

#[test]
fn llama_training_tasks_that_cannot_run_are_refused_by_field() {
    let mut blobs = std::collections::BTreeMap::new();
    let task = llama_task(24, &mut blobs);
    let field = |task: &TaskSpec| match TrainingJob::from_spec(task, &blobs) {
        Err(ComputeError::InvalidConfig { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let with = |f: &dyn Fn(&mut TrainingSpec)| {
        let mut t = task.clone();
        if let Workload::Training(s) = &mut t.workload {
            f(s);
        }
        t
    };
    assert_eq!(
        field(&with(&|t| t.dataset = DatasetSource::Arithmetic {
            max_operand: 9,
            examples: 100
        })),
        "dataset.source"
    );
    // A window as long as the text (3,600 tokens): no target for its last position.
    let mut long = tiny_config();
    long.max_position_embeddings = 3600;
    assert_eq!(
        field(&with(&|t| {
            t.model = long.to_spec().unwrap();
            t.batch_size = 1;
        })),
        "dataset"
    );
    // A step over the activation limit: SmolLM2's shape at its full 8192-token window.
    let smol = LlamaConfig {
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        vocab_size: 49_152,
        max_position_embeddings: 8192,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        tie_word_embeddings: true,
    };
    assert_eq!(
        field(&with(&|t| t.model = smol.to_spec().unwrap())),
        "batch_size"
    );
}

#[test]
fn a_pooled_llama_merges_the_same_bits_on_any_thread_count() {
    let mut blobs = std::collections::BTreeMap::new();
    let mut task = llama_task(16, &mut blobs);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 8;
        t.checkpoint_interval = 2;
        t.pool = Some(market_protocol::fixtures::pool(2, 2, 4));
    }
    let job = TrainingJob::from_spec(&task, &blobs).unwrap();
    let globals = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                market_compute::pool::run_locally(&job, |_| {})
                    .unwrap()
                    .globals
                    .iter()
                    .map(|g| market_compute::pool::global_hash(g, &job.layout).unwrap())
                    .collect::<Vec<_>>()
            })
    };
    let one = globals(1);
    assert_eq!(one.len(), 2);
    assert_ne!(one[0], one[1]);
    assert_eq!(one, globals(3));
}

#[test]
fn a_llama_is_fine_tuned_from_a_gguf_file_with_a_shorter_window() {
    use market_compute::llama::fixtures::tiny_gguf;
    let mut blobs = std::collections::BTreeMap::new();
    let task = llama_task(24, &mut blobs);
    let gguf = tiny_gguf(31).unwrap();
    let pretrained = market_compute::llama::gguf::read(&gguf).unwrap().weights;
    assert_eq!(pretrained.config.max_position_embeddings, 256);
    let id = BlobId::of(&gguf);
    blobs.insert(id, gguf);
    let with = |f: &dyn Fn(&mut TrainingSpec)| {
        let mut t = task.clone();
        if let Workload::Training(s) = &mut t.workload {
            s.initial_weights = Some(id);
            f(s);
        }
        t
    };
    // A window of 24 from a file made for 256: the file's parameters, as they are.
    let job = TrainingJob::from_spec(&with(&|_| {}), &blobs).unwrap();
    assert_eq!(job.initial_state().params, pretrained.params);
    let (_, loss) = job.run_segment(0, &job.initial_state(), |_, _| {}).unwrap();
    assert!(loss.is_finite());
    // Any other difference, or a window longer than the file's, is refused.
    let field = |task: &TaskSpec| match TrainingJob::from_spec(task, &blobs) {
        Err(ComputeError::InvalidConfig { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    for change in [
        |c: &mut LlamaConfig| c.max_position_embeddings = 257,
        |c: &mut LlamaConfig| c.rope_theta = 500.0,
        |c: &mut LlamaConfig| c.tie_word_embeddings = false,
    ] {
        let mut config = tiny_config();
        config.max_position_embeddings = 24;
        change(&mut config);
        let mut t = with(&|_| {});
        if let Workload::Training(s) = &mut t.workload {
            s.model = config.to_spec().unwrap();
            if config.max_position_embeddings > 24 {
                s.batch_size = 1;
            }
        }
        assert_eq!(field(&t), "model");
    }
    // The refusal names what differs.
    let mut config = tiny_config();
    config.max_position_embeddings = 24;
    config.rope_theta = 500.0;
    let mut t = with(&|_| {});
    if let Workload::Training(s) = &mut t.workload {
        s.model = config.to_spec().unwrap();
    }
    let err = TrainingJob::from_spec(&t, &blobs).unwrap_err().to_string();
    assert!(
        err.contains("rope_theta is 500, the file's is 10000") && !err.contains("hidden_size"),
        "{err}"
    );
}

/// The value of an IEEE 754 binary16 bit pattern, from its definition (normal and subnormal),
/// in f64 and then binary32 (exact: every binary16 value is a binary32 value).
fn binary16_value(bits: u16) -> f32 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f64::from(bits & 0x3ff);
    let magnitude = if exponent == 0 {
        mantissa * 2f64.powi(-24)
    } else {
        (1.0 + mantissa / 1024.0) * 2f64.powi(exponent - 15)
    };
    (sign * magnitude) as f32
}

/// A weights file whose tensors are all stored as `dtype`, each value given by `encode`.
fn half_file(
    layout: &ParamLayout,
    params: &[f32],
    dtype: safetensors::Dtype,
    encode: fn(f32) -> u16,
) -> Vec<u8> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = layout
        .slots()
        .iter()
        .map(|slot| {
            let bytes = params[slot.range()]
                .iter()
                .flat_map(|v| encode(*v).to_le_bytes())
                .collect();
            (slot.name.clone(), bytes, slot.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, bytes, shape)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Hugging Face checkpoints come in BF16 or F16: a weights file in either reads as the exact
/// binary32 values of its bits (F16 subnormals included), the same parameters as the F32 file
/// of those values; a NaN in half precision, or another dtype, is refused by tensor name.
#[test]
fn half_precision_weights_files_widen_exactly() {
    let config = tiny_config().validate().unwrap();
    let layout = config.layout();
    // Wide values (up to 0.6) and, in the first tensor, values small enough to be F16
    // subnormals (below 2^-14).
    let mut params = wide_params(&layout, 9);
    for p in params.iter_mut().take(64) {
        *p *= 1e-4;
    }

    let bf16 = |v: f32| half::bf16::from_f32(v).to_bits();
    let as_bf16: Vec<f32> = params
        .iter()
        .map(|v| f32::from_bits(u32::from(bf16(*v)) << 16))
        .collect();
    let file = half_file(&layout, &params, safetensors::Dtype::BF16, bf16);
    let read = market_compute::init::weights_from_bytes(&layout, &file).unwrap();
    assert_eq!(
        read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        as_bf16.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    let f32_file = weights_to_bytes(&layout, &as_bf16).unwrap();
    assert_eq!(
        market_compute::init::weights_from_bytes(&layout, &f32_file).unwrap(),
        read
    );

    let f16 = |v: f32| half::f16::from_f32(v).to_bits();
    let as_f16: Vec<f32> = params.iter().map(|v| binary16_value(f16(*v))).collect();
    assert!(
        as_f16[..64]
            .iter()
            .any(|v| *v != 0.0 && v.abs() < 2f32.powi(-14)),
        "no subnormal"
    );
    let file = half_file(&layout, &params, safetensors::Dtype::F16, f16);
    let read = market_compute::init::weights_from_bytes(&layout, &file).unwrap();
    assert_eq!(
        read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        as_f16.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );

    // A NaN in BF16 names its tensor; so does a tensor of another dtype.
    let mut nan = params.clone();
    let last = layout.slots().last().unwrap();
    nan[last.range().start] = f32::NAN;
    let file = half_file(&layout, &nan, safetensors::Dtype::BF16, bf16);
    let e = market_compute::init::weights_from_bytes(&layout, &file).unwrap_err();
    assert!(
        e.to_string().contains(&last.name) && e.to_string().contains("NaN"),
        "{e}"
    );
    let file = half_file(&layout, &params, safetensors::Dtype::I16, bf16);
    let e = market_compute::init::weights_from_bytes(&layout, &file).unwrap_err();
    assert!(
        e.to_string().contains("I16") && e.to_string().contains("expected F32 (or F16, BF16)"),
        "{e}"
    );
}

/// The task of [`llama_task`], fine-tuned from a pretrained file in `profile` with `optimizer`.
fn fine_tune(
    profile: ExecutionProfile,
    optimizer: market_protocol::OptimizerSpec,
    blobs: &mut std::collections::BTreeMap<BlobId, Vec<u8>>,
) -> TaskSpec {
    let mut task = llama_task(24, blobs);
    let gguf = market_compute::llama::fixtures::tiny_gguf(31).unwrap();
    let id = BlobId::of(&gguf);
    blobs.insert(id, gguf);
    task.profile = profile;
    if let Workload::Training(t) = &mut task.workload {
        t.initial_weights = Some(id);
        t.optimizer = optimizer;
    }
    task
}

fn sgd(lr: &str) -> market_protocol::OptimizerSpec {
    market_protocol::OptimizerSpec::Sgd {
        lr: lr.parse().unwrap(),
        momentum: "0".parse().unwrap(),
        weight_decay: "0".parse().unwrap(),
    }
}

#[test]
fn a_llama_trains_in_native_within_the_tolerance_of_repro() {
    use market_compute::tolerance::segment_matches;
    use market_compute::Backend;
    let mut blobs = std::collections::BTreeMap::new();
    let task = llama_task(24, &mut blobs);
    let adamw = match &task.workload {
        Workload::Training(t) => t.optimizer.clone(),
        _ => unreachable!(),
    };
    for optimizer in [adamw, sgd("0.05")] {
        let task = fine_tune(ExecutionProfile::Native, optimizer.clone(), &mut blobs);
        let native = TrainingJob::from_spec(&task, &blobs).unwrap();
        let repro = native.clone().with_backend(Backend::Repro);
        // The native gradients are repro's up to rounding.
        let state = repro.initial_state();
        let (mut a, mut b) = (state.clone(), state.clone());
        let loss_a = repro.step(&mut a).unwrap();
        let loss_b = native.step(&mut b).unwrap();
        assert!(
            (loss_a - loss_b).abs() <= 1e-5 * loss_a.abs(),
            "{loss_a} vs {loss_b}"
        );
        // Every segment re-executed in native from repro's checkpoint matches it, as an
        // audit of a native run compares.
        let mut start = state;
        let mut losses = Vec::new();
        for seg in 0..repro.segments() {
            let (theirs, loss) = repro.run_segment(seg, &start, |_, _| {}).unwrap();
            let (ours, native_loss) = native.run_segment(seg, &start, |_, _| {}).unwrap();
            assert_eq!(
                segment_matches(&repro.layout, &start, &ours, &theirs),
                Ok(()),
                "{optimizer:?}, segment {seg}"
            );
            assert!((loss - native_loss).abs() <= 1e-3 * loss.abs());
            losses.push(native_loss);
            start = theirs;
        }
        assert!(losses[2] < losses[0], "{optimizer:?}: {losses:?}");
    }
}

#[test]
fn a_lazy_fine_tuning_segment_passes_the_state_check_alone_and_fails_the_update_check() {
    use market_compute::tolerance::{segment_matches, states_match};
    let mut blobs = std::collections::BTreeMap::new();
    // Plain SGD with a small learning rate: a segment moves the pretrained parameters by a
    // small share of their size.
    let task = fine_tune(ExecutionProfile::Native, sgd("0.0001"), &mut blobs);
    let job = TrainingJob::from_spec(&task, &blobs).unwrap();
    let start = job.initial_state();
    let (honest, _) = job.run_segment(0, &start, |_, _| {}).unwrap();
    // The lazy worker: the parameters where they started, only the segment's last step taken
    // from there (so with momentum 0 the optimizer state holds a last gradient, as honestly).
    let mut lazy = start.clone();
    lazy.step = honest.step - 1;
    job.step(&mut lazy).unwrap();
    assert_eq!(lazy.step, honest.step);
    assert!(
        states_match(&job.layout, &lazy, &honest),
        "the per-tensor state check alone would have caught it: the attack needs a smaller step"
    );
    let err = segment_matches(&job.layout, &start, &honest, &lazy).unwrap_err();
    assert!(err.contains("update"), "{err}");
}
