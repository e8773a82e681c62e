//! Issue 15's measurements on a real model, both profiles side by side in one run: greedy
//! answers to five fixed chat prompts, top-1 agreement of `native` with `repro` over the
//! generated tokens, prefill and decode throughput with a KV cache, the verification cost (one
//! forward pass) against generation for a long answer, and how far `native` logits stray from
//! `repro` (the tolerance's calibration).
//!
//! `cargo run --release -p market-compute --example llama_bench -- models/SmolLM2-135M-Instruct.Q4_1.gguf`
//!
//! With `--device cuda` (a build with `--features cuda`, on a GPU; `scripts/gpu-check.sh`) the
//! candle side runs on the GPU: the same table for the `cuda` profile.

use std::time::Instant;

use anyhow::{bail, Context};
use market_compute::llama::generate::{check_answer, generate, Forward, GenerateParams, Match};
use market_compute::llama::gguf;
use market_compute::llama::native::NativeLlama;
use market_compute::llama::repro::ReproLlama;
use market_compute::llama::text::{ChatMessage, TextCodec};
use market_protocol::Decoding;

const PROMPTS: [&str; 5] = [
    "What is the capital of France?",
    "Name the three primary colours.",
    "What is 12 times 12?",
    "Write a haiku about autumn.",
    "Who wrote Romeo and Juliet?",
];

fn greedy(max: u32) -> GenerateParams {
    GenerateParams {
        decoding: Decoding::Greedy,
        seed: 0,
        item: 0,
        max_new_tokens: max,
        stop: Vec::new(),
    }
}

/// Seconds for `f`.
fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let t = Instant::now();
    let out = f()?;
    Ok((out, t.elapsed().as_secs_f64()))
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefill and decode throughput of `model` on `prompt`, decoding `n` tokens.
fn throughput<M: Forward>(model: &M, prompt: &[u32], n: usize) -> anyhow::Result<(f64, f64)> {
    let mut cache = model.new_cache();
    let (logits, prefill) = time(|| Ok(model.forward(prompt, &mut cache, false)?))?;
    let mut next = argmax(&logits);
    let (_, decode) = time(|| {
        for _ in 0..n {
            next = argmax(&model.forward(&[next], &mut cache, false)?);
        }
        Ok(())
    })?;
    Ok((prompt.len() as f64 / prefill, n as f64 / decode))
}

/// Generates a 128-token answer with `model`, checks it in one pass, and prints the ratio.
fn report<M: Forward>(
    name: &str,
    model: &M,
    codec: &TextCodec,
    prompt: &[u32],
    how: Match,
) -> anyhow::Result<()> {
    let (g, generating) = time(|| Ok(generate(model, codec, prompt, &greedy(128))?))?;
    let (verdict, checking) =
        time(|| Ok(check_answer(model, codec, prompt, &greedy(128), &g, how)?))?;
    if verdict.is_err() {
        bail!("{name}: its own answer failed its check: {verdict:?}");
    }
    println!(
        "{name}: generating {} tokens took {generating:.2} s, checking them in one pass {checking:.2} s: {:.1}% of generation",
        g.tokens.len(),
        100.0 * checking / generating
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (device, path) = match args.as_slice() {
        [path] => (candle_core::Device::Cpu, path.clone()),
        [flag, d, path] if flag == "--device" && d == "cpu" => {
            (candle_core::Device::Cpu, path.clone())
        }
        [flag, d, path] if flag == "--device" && d == "cuda" => {
            (candle_core::Device::new_cuda(0)?, path.clone())
        }
        _ => bail!("usage: llama_bench [--device cpu|cuda] MODEL.gguf"),
    };
    let other = if device.is_cuda() { "cuda" } else { "native" };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let file = gguf::read(&bytes)?;
    let codec = TextCodec::from_gguf(&file.vocab)?;
    let repro = ReproLlama::new(&file.weights);
    let native = NativeLlama::new(&file.weights, &device)?;
    let threads = rayon::current_num_threads();
    println!(
        "model {path}: {} parameters, {threads} threads; candle profile: {other}",
        file.weights.params.len()
    );
    let chat = |q: &str| -> anyhow::Result<Vec<u32>> {
        Ok(codec.encode(&codec.render_chat(&[ChatMessage {
            role: "user".into(),
            content: q.into(),
        }])?)?)
    };
    println!("\n| prompt | repro | {other} |\n|---|---|---|");
    let (mut agree, mut total, mut worst) = (0usize, 0usize, 0.0f32);
    for q in PROMPTS {
        let prompt = chat(q)?;
        let a = generate(&repro, &codec, &prompt, &greedy(32))?;
        let b = generate(&native, &codec, &prompt, &greedy(32))?;
        println!("| {q} | {:?} | {:?} |", a.text, b.text);
        // Native's top-1 on repro's answer, position by position (teacher forced), and the
        // distance of its logits for repro's tokens.
        let mut input = prompt.clone();
        input.extend_from_slice(&a.tokens[..a.tokens.len() - 1]);
        let rows = native.forward(&input, &mut native.new_cache(), true)?;
        let v = file.weights.config.vocab_size;
        for (i, &t) in a.tokens.iter().enumerate() {
            let row = &rows[(prompt.len() - 1 + i) * v..(prompt.len() + i) * v];
            agree += usize::from(argmax(row) == t);
            total += 1;
            let rel = (row[t as usize] - a.logits[i]).abs() / (1.0 + a.logits[i].abs());
            worst = worst.max(rel);
        }
    }
    println!(
        "\ntop-1 agreement of {other} with repro over the generated tokens: {agree}/{total} = {:.3}",
        agree as f64 / total as f64
    );
    println!(
        "largest |{other} − repro| / (1 + |repro|) of a chosen token's logit: {worst:.2e} (LOGIT_TOLERANCE {:e})",
        market_compute::tolerance::LOGIT_TOLERANCE
    );

    let prompt = chat("Write a long story about a dragon who learns to read.")?;
    let (rp, rd) = throughput(&repro, &prompt, 64)?;
    let (np, nd) = throughput(&native, &prompt, 64)?;
    println!(
        "\n| profile | prefill ({} tokens), tok/s | decode (64 tokens), tok/s |",
        prompt.len()
    );
    println!("|---|---|---|");
    println!("| repro | {rp:.1} | {rd:.2} |");
    println!("| {other} | {np:.1} | {nd:.2} |");
    println!("| repro ÷ {other} | {:.2} | {:.2} |", rp / np, rd / nd);

    // Verification by one pass against generation, for a 128-token answer.
    let tol = market_compute::tolerance::LOGIT_TOLERANCE;
    report("repro", &repro, &codec, &prompt, Match::Exact)?;
    report(other, &native, &codec, &prompt, Match::Within(tol))?;
    Ok(())
}
