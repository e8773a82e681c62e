//! Compute benchmarks, each against its baseline in the same run (`cargo bench -p
//! market-compute`):
//! - training steps/s of `repro` divided by `native` on the same `gpt` configs;
//! - state serialization + hashing + checkpoint write as a share of segment time;
//! - inference tokens/s in both profiles.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary reports on stdout.

use std::time::Instant;

use market_compute::{Backend, InferenceJob, NoBlobs, TrainingJob};
use market_protocol::fixtures::{inference_task, training_task};
use market_protocol::*;

fn gpt_task(layers: u32, width: u32, context: u32, batch: u32) -> TaskSpec {
    let mut task = training_task(&Identity::from_test_label("buyer"), 1);
    if let Workload::Training(t) = &mut task.workload {
        t.model = ModelSpec::Gpt {
            layers,
            heads: if width >= 128 { 4 } else { 2 },
            width,
            vocab: 16,
            context,
        };
        t.batch_size = batch;
        t.steps = 1000;
    }
    task
}

/// Steps per second of `job` over `steps` steps from its initial state.
fn steps_per_second(job: &TrainingJob, steps: u32) -> f64 {
    let mut state = job.initial_state();
    job.step(&mut state).unwrap(); // warm-up
    let start = Instant::now();
    for _ in 0..steps {
        job.step(&mut state).unwrap();
    }
    f64::from(steps) / start.elapsed().as_secs_f64()
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("market-compute benchmarks ({threads} rayon threads)\n");
    println!("## Training throughput, repro / native (target >= 0.6)");
    println!("| config | repro steps/s | native steps/s | ratio |\n|---|---|---|---|");
    for (name, task, steps) in [
        (
            "gpt L2 W32 T16 B16 (example task)",
            gpt_task(2, 32, 16, 16),
            150,
        ),
        ("gpt L4 W128 T64 B8", gpt_task(4, 128, 64, 8), 20),
        ("gpt L4 W256 T64 B8", gpt_task(4, 256, 64, 8), 10),
    ] {
        let repro = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
        let native = repro
            .clone()
            .with_backend(Backend::for_profile(ExecutionProfile::Native).unwrap());
        let r = steps_per_second(&repro, steps);
        let n = steps_per_second(&native, steps);
        println!("| {name} | {r:.2} | {n:.2} | {:.2} |", r / n);
    }

    println!("\n## Checkpoint overhead at the example task's interval (target <= 2%)");
    let job = TrainingJob::from_spec(
        &training_task(&Identity::from_test_label("buyer"), 1),
        &NoBlobs,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The worker's own write path: the bundle's checkpoint file, written atomically.
    let bundle = market_compute::bundle::Bundle::at(dir.path());
    bundle.create().unwrap();
    let mut state = job.initial_state();
    let (mut compute_s, mut checkpoint_s) = (0.0f64, 0.0f64);
    for seg in 0..job.segments() {
        let t0 = Instant::now();
        state = job.run_segment(seg, &state, |_, _| {}).unwrap().0;
        let t1 = Instant::now();
        let bytes = state.to_bytes(&job.layout).unwrap();
        // The hash the worker commits to.
        let _committed = StateHash(Hash::of(&bytes));
        bundle
            .write(&bundle.checkpoint_path(seg + 1), &bytes)
            .unwrap();
        checkpoint_s += t1.elapsed().as_secs_f64();
        compute_s += (t1 - t0).as_secs_f64();
    }
    println!(
        "{} segments of {} steps: compute {compute_s:.3}s, serialize+hash+write {checkpoint_s:.4}s = {:.2}% of segment time",
        job.segments(),
        job.checkpoint_interval,
        100.0 * checkpoint_s / compute_s
    );

    println!("\n## Inference (greedy, example gpt config)");
    let mut task = inference_task(&Identity::from_test_label("buyer"), 1);
    if let Workload::Inference(i) = &mut task.workload {
        i.weights = None;
        i.decoding = Decoding::Greedy;
        i.inputs = InferenceInputs::Prompts {
            prompts: (0..16).map(|k| format!("{k}+{k}=")).collect(),
            max_new_tokens: 8,
        };
    }
    println!("| profile | tokens/s |\n|---|---|");
    for profile in [ExecutionProfile::Repro, ExecutionProfile::Native] {
        task.profile = profile;
        let job = InferenceJob::from_spec(&task, &NoBlobs).unwrap();
        let start = Instant::now();
        let out = job.run_all(|_| {}).unwrap();
        let tokens: usize = out.items.iter().map(|i| i.bytes.len()).sum();
        println!(
            "| {profile:?} | {:.0} |",
            tokens as f64 / start.elapsed().as_secs_f64()
        );
    }
}
