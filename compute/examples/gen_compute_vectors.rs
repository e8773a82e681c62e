//! Writes the golden vectors `spec/vectors/compute-*.json`: the state hash after a number of
//! `repro` steps for small `mlp` and `gpt` tasks; every checkpoint of the cases the example
//! tasks do not reach (`compute-cases.json`: an inexact attention scale, an odd number of
//! layers, 17 layers, a double-rounding decimal, `relu`, a short final segment, blob datasets,
//! SGD on a `gpt`); inference outputs (`compute-inference.json`: greedy and sampled decoding,
//! `mlp` rows with gelu and tanh); and every state of 2-slot, 2-round pooled runs
//! (`compute-pool.json`); and `llama` training (`compute-llama-train.json`). Run only for a
//! deliberate protocol change:
//! `cargo run --release -p market-compute --example gen_compute_vectors -- spec/vectors`.

use std::collections::{BTreeMap, HashMap};

use market_compute::{InferenceJob, NoBlobs, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

type Blobs = BTreeMap<BlobId, Vec<u8>>;
type Error = Box<dyn std::error::Error>;

fn dec(s: &str) -> Decimal {
    s.parse()
        .unwrap_or_else(|_| unreachable!("a literal decimal"))
}

/// A safetensors blob of the named tensors (with no metadata), added to `blobs`.
fn add_blob(blobs: &mut Blobs, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> BlobId {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = TensorView::new(*dtype, shape.clone(), bytes)
                .unwrap_or_else(|e| unreachable!("a well-formed tensor: {e}"));
            (name.to_string(), view)
        })
        .collect::<Vec<_>>();
    let bytes = safetensors::serialize(views, None::<HashMap<String, String>>)
        .unwrap_or_else(|e| unreachable!("serialising: {e}"));
    let id = BlobId(Hash::of(&bytes));
    blobs.insert(id, bytes);
    id
}

fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

/// A small grid of exactly representable values in [-0.75, 0.75].
fn grid(i: usize, j: usize, a: usize, b: usize) -> f32 {
    ((i * a + j * b) % 13) as f32 / 8.0 - 0.75
}

fn hex_blobs(blobs: &Blobs, task: &TaskSpec) -> Value {
    let named = task.blobs();
    let map: serde_json::Map<String, Value> = blobs
        .iter()
        .filter(|(id, _)| named.contains(id))
        .map(|(id, bytes)| (id.to_string(), Value::String(hex::encode(bytes))))
        .collect();
    Value::Object(map)
}

fn mlp_task() -> TaskSpec {
    let mut task = training_task(&Identity::from_test_label("buyer"), 7);
    task.workload = Workload::Training(TrainingSpec {
        model: ModelSpec::Mlp {
            widths: vec![6, 24, 24, 3],
            activation: Activation::Tanh,
        },
        dataset: DatasetSource::TeacherMlp {
            features: 6,
            outputs: 3,
            examples: 512,
        },
        optimizer: OptimizerSpec::Sgd {
            lr: "0.05".parse().unwrap_or_else(|_| unreachable!()),
            momentum: "0.9".parse().unwrap_or_else(|_| unreachable!()),
            weight_decay: "0.0001".parse().unwrap_or_else(|_| unreachable!()),
        },
        batch_size: 32,
        steps: 40,
        checkpoint_interval: 10,
        initial_weights: None,
        pool: None,
        eval_dataset: None,
    });
    task
}

fn training(task: &mut TaskSpec) -> &mut TrainingSpec {
    match &mut task.workload {
        Workload::Training(t) => t,
        Workload::Inference(_) => unreachable!("a training fixture"),
    }
}

fn sgd(lr: &str, momentum: &str, weight_decay: &str) -> OptimizerSpec {
    OptimizerSpec::Sgd {
        lr: dec(lr),
        momentum: dec(momentum),
        weight_decay: dec(weight_decay),
    }
}

fn adamw(lr: &str) -> OptimizerSpec {
    OptimizerSpec::Adamw {
        lr: dec(lr),
        beta1: dec("0.9"),
        beta2: dec("0.999"),
        eps: dec("0.00000001"),
        weight_decay: dec("0.01"),
    }
}

/// The training cases the example tasks do not reach, with the blobs they read.
fn training_cases(blobs: &mut Blobs) -> Vec<(&'static str, TaskSpec)> {
    let buyer = Identity::from_test_label("buyer");
    // Three blocks (odd), head size 12 (1/sqrt(12) is inexact in binary32), 25 steps in
    // segments of 10, 10 and 5.
    let mut odd_gpt = training_task(&buyer, 11);
    let t = training(&mut odd_gpt);
    t.model = ModelSpec::Gpt {
        layers: 3,
        heads: 2,
        width: 24,
        vocab: 16,
        context: 16,
    };
    t.dataset = DatasetSource::Arithmetic {
        max_operand: 49,
        examples: 512,
    };
    t.batch_size = 8;
    t.steps = 25;
    // A token blob: 300 tokens of a vocabulary of 20, trained with SGD.
    let tokens = add_blob(
        blobs,
        &[(
            "tokens",
            Dtype::U32,
            vec![300],
            (0..300u32)
                .flat_map(|i| ((i * 7 + i / 13) % 20).to_le_bytes())
                .collect(),
        )],
    );
    let mut token_gpt = training_task(&buyer, 12);
    let t = training(&mut token_gpt);
    t.model = ModelSpec::Gpt {
        layers: 1,
        heads: 4,
        width: 16,
        vocab: 20,
        context: 8,
    };
    t.dataset = DatasetSource::Blob { id: tokens };
    t.optimizer = sgd("0.1", "0.9", "0");
    t.batch_size = 4;
    t.steps = 12;
    t.checkpoint_interval = 5;
    // relu on the teacher, SGD, a short final segment.
    let mut relu = mlp_task();
    let t = training(&mut relu);
    t.model = ModelSpec::Mlp {
        widths: vec![6, 24, 24, 3],
        activation: Activation::Relu,
    };
    t.steps = 25;
    // An x/y blob: 64 rows of 4 features and 2 outputs, tanh, AdamW.
    let rows = 64;
    let xy = add_blob(
        blobs,
        &[
            (
                "x",
                Dtype::F32,
                vec![rows, 4],
                f32_bytes((0..rows * 4).map(|k| grid(k / 4, k % 4, 5, 3))),
            ),
            (
                "y",
                Dtype::F32,
                vec![rows, 2],
                f32_bytes((0..rows * 2).map(|k| grid(k / 2, k % 2, 3, 7))),
            ),
        ],
    );
    let mut xy_mlp = mlp_task();
    let t = training(&mut xy_mlp);
    t.model = ModelSpec::Mlp {
        widths: vec![4, 16, 2],
        activation: Activation::Tanh,
    };
    t.dataset = DatasetSource::Blob { id: xy };
    t.optimizer = adamw("0.01");
    t.batch_size = 16;
    t.steps = 20;
    t.checkpoint_interval = 5;
    // Seventeen blocks (the smallest count whose residual-projection bound differs between
    // multiplying by the rounded 1/sqrt(2L) and dividing by sqrt(2L)), and a learning rate
    // whose binary32 differs when parsed through binary64 first (a double rounding).
    let mut deep = training_task(&buyer, 13);
    let t = training(&mut deep);
    t.model = ModelSpec::Gpt {
        layers: 17,
        heads: 2,
        width: 8,
        vocab: 16,
        context: 16,
    };
    t.dataset = DatasetSource::Arithmetic {
        max_operand: 49,
        examples: 256,
    };
    t.optimizer = adamw("0.001500540936831385");
    t.batch_size = 4;
    t.steps = 6;
    t.checkpoint_interval = 3;
    vec![
        ("gpt-3-blocks-head-12-adamw-short-final", odd_gpt),
        ("gpt-17-blocks-double-rounding-lr", deep),
        ("gpt-token-blob-sgd-short-final", token_gpt),
        ("mlp-relu-sgd-short-final", relu),
        ("mlp-tanh-adamw-xy-blob", xy_mlp),
    ]
}

/// Every checkpoint of `task`, with each segment's mean loss (its `loss_trace` entry).
fn every_checkpoint(task: &TaskSpec, blobs: &Blobs) -> Result<Value, Error> {
    let job = TrainingJob::from_spec(task, blobs)?;
    let mut state = job.initial_state();
    let mut checkpoints = vec![json!({"step": 0, "state_hash": state.hash(&job.layout)?})];
    for seg in 0..job.segments() {
        let (next, loss) = job.run_segment(seg, &state, |_, _| {})?;
        state = next;
        checkpoints.push(json!({
            "step": state.step,
            "state_hash": state.hash(&job.layout)?,
            "segment_loss_bits": format!("{:08x}", loss.to_bits()),
        }));
    }
    // The commitment's `outputs`: the weights file of the final parameters.
    let weights = market_compute::init::weights_to_bytes(&job.layout, &state.params)?;
    Ok(json!({"checkpoints": checkpoints, "outputs": [BlobId(Hash::of(&weights))]}))
}

/// `llama` training cases (spec/COMPUTE.md section 11.12): the tiny config (tied, four query
/// heads on two kv heads) fine-tuned from a weights file with AdamW, an untied config trained
/// from its initialisation with SGD and momentum (windows of 16 tokens from a blob), and a
/// config whose orders and divisions the first two cannot tell apart.
fn llama_training_cases(blobs: &mut Blobs) -> Result<Vec<(&'static str, TaskSpec)>, Error> {
    use market_compute::llama::fixtures::tiny_config;
    use market_compute::zoo::ModelConfig;
    let tokens: Vec<u32> = (0..600u32).map(|i| (i * 7 + i / 5) % 90).collect();
    let dataset = add_blob(
        blobs,
        &[(
            "tokens",
            Dtype::U32,
            vec![tokens.len()],
            tokens.iter().flat_map(|t| t.to_le_bytes()).collect(),
        )],
    );
    let mut tied = tiny_config();
    tied.max_position_embeddings = 16;
    let layout = tied.layout();
    let pretrained = market_compute::init::init_params(&ModelConfig::Llama(tied), &layout, 5);
    let weights = market_compute::init::weights_to_bytes(&layout, &pretrained)?;
    let weights_id = BlobId(Hash::of(&weights));
    blobs.insert(weights_id, weights);
    let mut untied = tied;
    untied.hidden_size = 16;
    untied.intermediate_size = 24;
    untied.tie_word_embeddings = false;
    untied.rope_theta = 500.0;
    // Three query heads per kv head (so a kv head's gradient adds three terms, in an order a
    // vector can see), heads of 6 (an inexact attention scale), width 18 (an inexact `/ n`),
    // and 3 rows of 12 positions (36 scored: a division `/ n` unlike a multiply by 1/n).
    let mut grouped = tied;
    grouped.hidden_size = 18;
    grouped.intermediate_size = 20;
    grouped.num_attention_heads = 3;
    grouped.num_key_value_heads = 1;
    grouped.max_position_embeddings = 12;
    let buyer = Identity::from_test_label("buyer");
    let mut cases = Vec::new();
    for (name, config, initial, optimizer) in [
        (
            "llama-tied-finetune-adamw",
            tied,
            Some(weights_id),
            adamw("0.01"),
        ),
        (
            "llama-untied-sgd-momentum",
            untied,
            None,
            sgd("0.1", "0.9", "0"),
        ),
        (
            "llama-three-heads-per-kv-adamw",
            grouped,
            None,
            adamw("0.02"),
        ),
    ] {
        let mut task = training_task(&buyer, 1);
        let t = training(&mut task);
        t.model = config.to_spec()?;
        t.dataset = DatasetSource::Blob { id: dataset };
        t.initial_weights = initial;
        t.optimizer = optimizer;
        t.batch_size = if config.num_attention_heads == 3 {
            3
        } else {
            2
        };
        t.steps = 6;
        t.checkpoint_interval = 2;
        cases.push((name, task));
    }
    Ok(cases)
}

/// Inference cases: a `gpt` decoding greedily, sampling among the top 5 and sampling among
/// all tokens, and an `mlp` on rows from a blob; seeded weights.
fn inference_cases(blobs: &mut Blobs) -> Vec<(&'static str, TaskSpec)> {
    let buyer = Identity::from_test_label("buyer");
    let gpt = |nonce, decoding| {
        let mut task = market_protocol::fixtures::inference_task(&buyer, nonce);
        task.profile = ExecutionProfile::Repro;
        if let Workload::Inference(i) = &mut task.workload {
            i.weights = None;
            i.inputs = InferenceInputs::Prompts {
                prompts: vec!["17+25=".into(), "3+4=".into(), "9+".into()],
                max_new_tokens: 5,
            };
            i.decoding = decoding;
        }
        task
    };
    let rows = add_blob(
        blobs,
        &[(
            "x",
            Dtype::F32,
            vec![5, 4],
            f32_bytes((0..20).map(|k| grid(k / 4, k % 4, 7, 2))),
        )],
    );
    let mut mlp = gpt(24, Decoding::Greedy);
    mlp.workload = Workload::Inference(InferenceSpec {
        model: ModelSpec::Mlp {
            widths: vec![4, 16, 2],
            activation: Activation::Gelu,
        },
        weights: None,
        tokenizer: None,
        tokenizer_config: None,
        chat_template: None,
        inputs: InferenceInputs::Rows { id: rows },
        decoding: Decoding::Greedy,
    });
    // tanh on inputs up to ±3, where a tanhf off by an ulp shows in the output bits.
    let wide_rows = add_blob(
        blobs,
        &[(
            "x",
            Dtype::F32,
            vec![6, 4],
            f32_bytes((0..24).map(|k| 4.0 * grid(k / 4, k % 4, 5, 3))),
        )],
    );
    let mut tanh_mlp = mlp.clone();
    tanh_mlp.nonce = 25;
    tanh_mlp.workload = Workload::Inference(InferenceSpec {
        model: ModelSpec::Mlp {
            widths: vec![4, 32, 32, 3],
            activation: Activation::Tanh,
        },
        weights: None,
        tokenizer: None,
        tokenizer_config: None,
        chat_template: None,
        inputs: InferenceInputs::Rows { id: wide_rows },
        decoding: Decoding::Greedy,
    });
    vec![
        ("gpt-greedy", gpt(21, Decoding::Greedy)),
        (
            "gpt-sample-top-5",
            gpt(
                22,
                Decoding::Sample {
                    temperature: dec("0.8"),
                    top_k: 5,
                    top_p: None,
                },
            ),
        ),
        (
            "gpt-sample-all",
            gpt(
                23,
                Decoding::Sample {
                    temperature: dec("1.5"),
                    top_k: 0,
                    top_p: None,
                },
            ),
        ),
        (
            "gpt-sample-top-p",
            gpt(
                24,
                Decoding::Sample {
                    temperature: dec("1.5"),
                    top_k: 0,
                    top_p: Some(dec("0.9")),
                },
            ),
        ),
        ("mlp-rows-gelu", mlp),
        ("mlp-rows-tanh-wide-inputs", tanh_mlp),
    ]
}

fn inference_vector(task: &TaskSpec, blobs: &Blobs) -> Result<Value, Error> {
    let out = InferenceJob::from_spec(task, blobs)?.run_all(|_| {})?;
    let items: Vec<Value> = out
        .items
        .iter()
        .map(|i| json!({"bytes_hex": hex::encode(&i.bytes), "leaf": i.hash.to_string()}))
        .collect();
    let concat: Vec<u8> = out.items.iter().flat_map(|i| *i.hash.as_bytes()).collect();
    Ok(json!({
        "items": items,
        "root": out.root.to_string(),
        "final_state_hash": Hash::of(&concat),
    }))
}

fn write_doc(dir: &str, file: &str, description: &str, vectors: Vec<Value>) -> Result<(), Error> {
    let doc = json!({"description": description, "vectors": vectors});
    std::fs::write(
        format!("{dir}/{file}"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    println!("wrote {dir}/{file}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "spec/vectors".into());
    let gpt = training_task(&Identity::from_test_label("buyer"), 1);
    let mut gelu_mlp = mlp_task();
    if let Workload::Training(t) = &mut gelu_mlp.workload {
        t.model = ModelSpec::Mlp {
            widths: vec![6, 16, 3],
            activation: Activation::Gelu,
        };
        t.optimizer = OptimizerSpec::Adamw {
            lr: "0.01".parse()?,
            beta1: "0.9".parse()?,
            beta2: "0.999".parse()?,
            eps: "0.00000001".parse()?,
            weight_decay: "0.01".parse()?,
        };
    }
    for (file, tasks) in [
        (
            "compute-mlp.json",
            vec![
                ("mlp-tanh-sgd", mlp_task()),
                ("mlp-gelu-adamw", gelu_mlp.clone()),
            ],
        ),
        ("compute-gpt.json", vec![("gpt-arithmetic-adamw", gpt)]),
    ] {
        let mut vectors = Vec::new();
        for (name, task) in tasks {
            let job = TrainingJob::from_spec(&task, &NoBlobs)?;
            let mut state = job.initial_state();
            let mut checkpoints = vec![json!({"step": 0, "state_hash": state.hash(&job.layout)?})];
            for seg in 0..job.segments().min(4) {
                state = job.run_segment(seg, &state, |_, _| {})?.0;
                checkpoints
                    .push(json!({"step": state.step, "state_hash": state.hash(&job.layout)?}));
            }
            vectors.push(json!({"name": name, "task": task, "checkpoints": checkpoints}));
        }
        let doc = json!({
            "description": "Golden state hashes of the repro profile: blake3 of the canonical state (spec/COMPUTE.md) after each of the first segments of a task. Any CPU, thread count or build must reproduce them bit for bit.",
            "vectors": vectors,
        });
        std::fs::write(
            format!("{dir}/{file}"),
            serde_json::to_string_pretty(&doc)? + "\n",
        )?;
        println!("wrote {dir}/{file}");
    }
    // Pooled: the two mlp tasks split into 2 slots × 2 rounds of 10 steps.
    let mut vectors = Vec::new();
    for (name, mut task) in [
        ("pool-mlp-tanh-sgd", mlp_task()),
        ("pool-mlp-gelu-adamw", gelu_mlp),
    ] {
        if let Workload::Training(t) = &mut task.workload {
            t.steps = 20;
            t.checkpoint_interval = 5;
            t.pool = Some(market_protocol::fixtures::pool(2, 2, 10));
        }
        let job = TrainingJob::from_spec(&task, &NoBlobs)?;
        let hash = |s: &market_compute::TrainState| s.hash(&job.layout).map(|h| h.to_string());
        let mut rounds = Vec::new();
        let mut failed = None;
        market_compute::pool::run_locally(&job, |r| {
            let hashes = |states: &[market_compute::TrainState]| -> Vec<String> {
                states.iter().filter_map(|s| hash(s).ok()).collect()
            };
            match market_compute::pool::global_hash(r.global, &job.layout) {
                Ok(g) => rounds.push(json!({
                    "round": r.round,
                    "slot_starts": hashes(r.starts),
                    "slot_finals": hashes(r.finals),
                    "global": g.to_string(),
                })),
                Err(e) => failed = Some(e),
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        let initial = market_compute::pool::global_hash(
            &market_compute::pool::initial_global(&job),
            &job.layout,
        )?
        .to_string();
        vectors
            .push(json!({"name": name, "task": task, "initial_global": initial, "rounds": rounds}));
    }
    let doc = json!({
        "description": "Pooled training (spec/COMPUTE.md section 10), repro profile: the hash of the initial global state (its own format, market-pool-global-v1), then per round each slot's start and final state hash and the merged global state's hash. Any CPU, thread count or build must reproduce them bit for bit.",
        "vectors": vectors,
    });
    std::fs::write(
        format!("{dir}/compute-pool.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    println!("wrote {dir}/compute-pool.json");
    let mut blobs = Blobs::new();
    let mut vectors = Vec::new();
    for (name, task) in training_cases(&mut blobs) {
        let run = every_checkpoint(&task, &blobs)?;
        vectors.push(json!({
            "name": name,
            "task": task,
            "blobs": hex_blobs(&blobs, &task),
            "checkpoints": run["checkpoints"],
            "outputs": run["outputs"],
        }));
    }
    write_doc(
        &dir,
        "compute-cases.json",
        "Golden states of the repro profile for what the example tasks do not reach: every checkpoint's state hash (blake3 of the canonical state, spec/COMPUTE.md) and each segment's mean loss as binary32 bits (its loss_trace entry); `outputs` is the commitment's: the blob id (blake3) of the weights file of the final parameters (spec/ENCODING.md section 13). `blobs` maps each blob id the task names to the blob's bytes in hex.",
        vectors,
    )?;
    let mut vectors = Vec::new();
    for (name, task) in llama_training_cases(&mut blobs)? {
        let run = every_checkpoint(&task, &blobs)?;
        vectors.push(json!({
            "name": name,
            "task": task,
            "blobs": hex_blobs(&blobs, &task),
            "checkpoints": run["checkpoints"],
            "outputs": run["outputs"],
        }));
    }
    write_doc(
        &dir,
        "compute-llama-train.json",
        "Training a llama in the repro profile (spec/COMPUTE.md section 11.12, appendix A.9a), as compute-cases.json: every checkpoint's state hash, each segment's mean loss as binary32 bits, and the blob id of the final weights file. `blobs` maps each blob id the task names (the token dataset, the pretrained weights) to its bytes in hex.",
        vectors,
    )?;
    let mut vectors = Vec::new();
    for (name, task) in inference_cases(&mut blobs) {
        let out = inference_vector(&task, &blobs)?;
        vectors.push(json!({
            "name": name,
            "task": task,
            "blobs": hex_blobs(&blobs, &task),
            "items": out["items"],
            "root": out["root"],
            "final_state_hash": out["final_state_hash"],
        }));
    }
    write_doc(
        &dir,
        "compute-inference.json",
        "Inference in the repro profile (spec/COMPUTE.md section 8): per item its output bytes in hex (generated text in UTF-8, or an mlp output row as binary32 little-endian) and its leaf (blake3 of the bytes), the Merkle root over the leaves (the commitment's `root`; its `outputs` are the leaves), and the commitment's `final_state_hash`, blake3 of the leaves concatenated in order. Weights are the seeded initialisation; `blobs` maps each blob id the task names to its bytes in hex.",
        vectors,
    )?;
    Ok(())
}
