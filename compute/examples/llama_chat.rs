//! Chat with a GGUF `llama` model in either profile, timing prefill and decoding.
//!
//! `cargo run --release -p market-compute --example llama_chat -- MODEL.gguf repro|native "question" [max_new_tokens]`

use std::time::Instant;

use anyhow::{bail, Context};
use market_compute::llama::generate::{generate, Forward, GenerateParams};
use market_compute::llama::gguf;
use market_compute::llama::native::NativeLlama;
use market_compute::llama::repro::ReproLlama;
use market_compute::llama::text::{ChatMessage, TextCodec};
use market_protocol::Decoding;

fn run<M: Forward>(model: &M, codec: &TextCodec, prompt: &[u32], max: u32) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut cache = model.new_cache();
    model.forward(prompt, &mut cache, false)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let params = GenerateParams {
        decoding: Decoding::Greedy,
        seed: 0,
        item: 0,
        max_new_tokens: max,
        stop: Vec::new(),
    };
    let g = generate(model, codec, prompt, &params)?;
    let total = t1.elapsed().as_secs_f64();
    let decode = (total - prefill).max(1e-9);
    println!(
        "answer: {:?} ({:?}, {} tokens)",
        g.text,
        g.finish,
        g.tokens.len()
    );
    println!(
        "prefill {} tokens: {:.3} s ({:.1} tok/s); decode {} tokens: {:.3} s ({:.2} tok/s)",
        prompt.len(),
        prefill,
        prompt.len() as f64 / prefill,
        g.tokens.len(),
        decode,
        g.tokens.len() as f64 / decode
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: llama_chat MODEL.gguf repro|native QUESTION [MAX_NEW_TOKENS]");
    }
    let bytes = std::fs::read(&args[1]).with_context(|| format!("reading {}", args[1]))?;
    let t = Instant::now();
    let model = gguf::read(&bytes)?;
    let codec = TextCodec::from_gguf(&model.vocab)?;
    println!(
        "loaded {} parameters in {:.2} s",
        model.weights.params.len(),
        t.elapsed().as_secs_f64()
    );
    let text = codec.render_chat(&[ChatMessage {
        role: "user".into(),
        content: args[3].clone(),
    }])?;
    let prompt = codec.encode(&text)?;
    let max = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(32);
    match args[2].as_str() {
        "repro" => run(&ReproLlama::new(&model.weights), &codec, &prompt, max),
        "native" => run(
            &NativeLlama::new(&model.weights, &candle_core::Device::Cpu)?,
            &codec,
            &prompt,
            max,
        ),
        other => bail!("unknown profile {other}"),
    }
}
