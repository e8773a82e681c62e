//! Writes the golden vectors `spec/vectors/compute-*.json`: the state hash after a number of
//! `repro` steps for small `mlp` and `gpt` tasks, and every state of 2-slot, 2-round pooled runs
//! (`compute-pool.json`). Run only for a deliberate protocol change:
//! `cargo run --release -p market-compute --example gen_compute_vectors -- spec/vectors`.

use market_compute::{NoBlobs, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::*;
use serde_json::json;

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
    Ok(())
}
