//! The `llama` model on a tiny config: GGUF reading (names, llama.cpp's rotary permutation,
//! Q4_1 blocks), the `repro` forward pass (KV cache against one pass, thread counts), `native`
//! against `repro`, and generation checked by one forward pass against forged answers.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use market_compute::llama::generate::{
    check_answer, generate, AnswerMismatch, Finish, Forward, GenerateParams, Generation, Match,
};
use market_compute::llama::native::NativeLlama;
use market_compute::llama::repro::ReproLlama;
use market_compute::llama::text::TextCodec;
use market_compute::llama::{gguf, LlamaConfig, LlamaWeights};
use market_protocol::{Decimal, Decoding};

fn config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 96,
        max_position_embeddings: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
    }
    .validate()
    .unwrap()
}

/// Weights from a fixed xorshift stream (a test fixture, not a protocol draw), scaled so the
/// logits are spread enough for greedy choices to be stable.
fn weights(seed: u64) -> LlamaWeights {
    let config = config();
    let layout = config.layout();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut params = vec![0.0f32; layout.total()];
    for slot in layout.slots() {
        let norm = slot.shape.len() == 1;
        for p in &mut params[slot.range()] {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            *p = if norm { 1.0 + 0.2 * u } else { 0.5 * u };
        }
    }
    // The end token (95) rarely wins, so answers run to their length unless a test says so.
    let embed = layout.slot("model.embed_tokens.weight");
    let h = config.hidden_size;
    for p in &mut params[embed.offset + 95 * h..embed.offset + 96 * h] {
        *p *= 0.01;
    }
    LlamaWeights {
        config,
        layout,
        params,
    }
}

/// The byte-level tokens of printable ASCII, `Ġ` (space), and an end token.
fn vocab() -> gguf::GgufVocab {
    let mut tokens: Vec<String> = (33u8..=126).map(|b| (b as char).to_string()).collect();
    tokens.push("Ġ".into());
    tokens.push("<|end|>".into());
    let mut token_types = vec![1; tokens.len()];
    token_types[tokens.len() - 1] = 3;
    gguf::GgufVocab {
        model: "gpt2".into(),
        pre: "gpt-2".into(),
        token_types,
        merges: Vec::new(),
        bos: None,
        eos: Some(95),
        add_bos: false,
        chat_template: Some(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}".into(),
        ),
        tokens,
    }
}

fn greedy(max: u32) -> GenerateParams {
    GenerateParams {
        decoding: Decoding::Greedy,
        seed: 7,
        item: 0,
        max_new_tokens: max,
        stop: Vec::new(),
    }
}

#[test]
fn one_pass_gives_the_cached_decodes_logits_bit_for_bit_at_any_thread_count() {
    let model = ReproLlama::new(&weights(1));
    let tokens: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 96).collect();
    let mut cache = model.new_cache();
    let all = model.forward(&tokens, &mut cache, true).unwrap();
    // Token by token with the cache: each step's logits are the one-pass row.
    let mut cache = model.new_cache();
    for (p, &t) in tokens.iter().enumerate() {
        let row = model.forward(&[t], &mut cache, false).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&row), bits(&all[p * 96..(p + 1) * 96]), "position {p}");
    }
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| {
            let mut c = model.new_cache();
            model.forward(&tokens, &mut c, true).unwrap()
        });
    assert!(all
        .iter()
        .zip(&single)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn native_agrees_with_repro_within_rounding() {
    let w = weights(2);
    let repro = ReproLlama::new(&w);
    let native = NativeLlama::new(&w, &Device::Cpu).unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| (i * 11 + 5) % 96).collect();
    let a = repro
        .forward(&tokens, &mut repro.new_cache(), true)
        .unwrap();
    let b = native
        .forward(&tokens, &mut native.new_cache(), true)
        .unwrap();
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "worst relative difference {worst}");
    // And they are not the same numbers by accident of a shared code path.
    assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|v| v.abs() > 0.1));
}

#[test]
fn honest_answers_pass_and_every_forgery_is_named() {
    let w = weights(3);
    let model = ReproLlama::new(&w);
    let codec = TextCodec::from_gguf(&vocab()).unwrap();
    let prompt = codec.encode("hello world").unwrap();
    assert_eq!(prompt.len(), 11, "one token per character: {prompt:?}");
    for params in [
        greedy(16),
        GenerateParams {
            decoding: Decoding::Sample {
                temperature: "0.8".parse::<Decimal>().unwrap(),
                top_k: 20,
                top_p: None,
            },
            ..greedy(16)
        },
    ] {
        let honest = generate(&model, &codec, &prompt, &params).unwrap();
        assert_eq!(honest.tokens.len(), 16, "{honest:?}");
        assert_eq!(honest.finish, Finish::Length);
        assert_eq!(
            check_answer(&model, &codec, &prompt, &params, &honest, Match::Exact).unwrap(),
            Ok(())
        );
        // One token changed.
        let mut forged = honest.clone();
        forged.tokens[5] = (forged.tokens[5] + 1) % 95;
        forged.text = codec.decode(&forged.tokens).unwrap();
        assert!(matches!(
            check_answer(&model, &codec, &prompt, &params, &forged, Match::Exact).unwrap(),
            Err(AnswerMismatch::Token { index: 5, .. })
        ));
        // Truncated: fewer tokens than asked, with no end token.
        let mut cut = honest.clone();
        cut.tokens.truncate(10);
        cut.logits.truncate(10);
        cut.text = codec.decode(&cut.tokens).unwrap();
        assert!(matches!(
            check_answer(&model, &codec, &prompt, &params, &cut, Match::Exact).unwrap(),
            Err(AnswerMismatch::Ending(_))
        ));
        // Truncated with a forged end token.
        let mut ended = cut.clone();
        ended.tokens.push(95);
        ended.logits.push(0.0);
        ended.finish = Finish::End;
        assert!(matches!(
            check_answer(&model, &codec, &prompt, &params, &ended, Match::Exact).unwrap(),
            Err(AnswerMismatch::Token { index: 10, .. })
        ));
        // The right tokens with a logit that is not the model's (another model's or a lower
        // precision's numbers, where the pick happened to agree).
        let mut logit = honest.clone();
        logit.logits[7] = f32::from_bits(logit.logits[7].to_bits() ^ 1);
        assert!(matches!(
            check_answer(&model, &codec, &prompt, &params, &logit, Match::Exact).unwrap(),
            Err(AnswerMismatch::Logit { index: 7, .. })
        ));
        // The native profile's own check accepts a native answer within its tolerance.
        let native = NativeLlama::new(&w, &Device::Cpu).unwrap();
        let mine = generate(&native, &codec, &prompt, &params).unwrap();
        assert_eq!(
            check_answer(
                &native,
                &codec,
                &prompt,
                &params,
                &mine,
                Match::Within(1e-4)
            )
            .unwrap(),
            Ok(())
        );
        // The right tokens with another text.
        let mut text = honest.clone();
        text.text.push('!');
        assert_eq!(
            check_answer(&model, &codec, &prompt, &params, &text, Match::Exact).unwrap(),
            Err(AnswerMismatch::Text)
        );
        // Generated by other weights.
        let other = ReproLlama::new(&weights(4));
        let theirs: Generation = generate(&other, &codec, &prompt, &params).unwrap();
        assert_ne!(theirs.tokens, honest.tokens);
        assert!(
            check_answer(&model, &codec, &prompt, &params, &theirs, Match::Exact)
                .unwrap()
                .is_err()
        );
    }
}

#[test]
fn an_end_token_ends_the_answer_and_cannot_be_dropped_or_moved() {
    let model = ReproLlama::new(&weights(3));
    let free_codec = TextCodec::from_gguf(&vocab()).unwrap();
    let prompt = free_codec.encode("hello world").unwrap();
    let free = generate(&model, &free_codec, &prompt, &greedy(16)).unwrap();
    // Call the free answer's sixth token the end token: the answer now ends there.
    let end = free.tokens[5];
    let first = free.tokens.iter().position(|&t| t == end).unwrap();
    let codec = TextCodec::from_gguf(&gguf::GgufVocab {
        eos: Some(end),
        ..vocab()
    })
    .unwrap();
    let g = generate(&model, &codec, &prompt, &greedy(16)).unwrap();
    assert_eq!(g.finish, Finish::End);
    assert_eq!(g.tokens, free.tokens[..=first].to_vec());
    assert_eq!(
        check_answer(&model, &codec, &prompt, &greedy(16), &g, Match::Exact).unwrap(),
        Ok(())
    );
    // The end token dropped: the answer claims to stop early for no reason.
    let mut dropped = g.clone();
    dropped.tokens.pop();
    dropped.logits.pop();
    dropped.finish = Finish::Length;
    assert!(matches!(
        check_answer(&model, &codec, &prompt, &greedy(16), &dropped, Match::Exact).unwrap(),
        Err(AnswerMismatch::Ending(_))
    ));
    // Running on past the end token.
    let mut past = free.clone();
    past.tokens.truncate(first + 3);
    past.logits.truncate(first + 3);
    assert!(
        check_answer(&model, &codec, &prompt, &greedy(16), &past, Match::Exact)
            .unwrap()
            .is_err()
    );
}

#[test]
fn a_stop_text_ends_the_answer_and_is_checked() {
    let model = ReproLlama::new(&weights(3));
    let codec = TextCodec::from_gguf(&vocab()).unwrap();
    let prompt = codec.encode("hello world").unwrap();
    let free = generate(&model, &codec, &prompt, &greedy(16)).unwrap();
    // Stop at the text of tokens 3..5 of the free answer.
    let stop = codec.decode(&free.tokens[3..5]).unwrap();
    assert_eq!(free.tokens.len(), 16);
    let params = GenerateParams {
        stop: vec![stop.clone()],
        ..greedy(16)
    };
    let g = generate(&model, &codec, &prompt, &params).unwrap();
    assert_eq!(g.finish, Finish::Stop);
    assert!(g.tokens.len() <= 5, "{g:?}");
    assert!(!g.text.contains(&stop));
    assert_eq!(
        check_answer(&model, &codec, &prompt, &params, &g, Match::Exact).unwrap(),
        Ok(())
    );
    // Running past the stop text is refused.
    let mut longer = g.clone();
    longer.tokens = free.tokens[..g.tokens.len() + 2].to_vec();
    longer.logits = free.logits[..g.tokens.len() + 2].to_vec();
    assert!(
        check_answer(&model, &codec, &prompt, &params, &longer, Match::Exact)
            .unwrap()
            .is_err()
    );
}

/// llama.cpp's permutation of query and key rows (convert_hf_to_gguf.py's `permute`).
fn permute(rows: &[f32], heads: usize, d: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows.len()];
    for h in 0..heads {
        for half in 0..2 {
            for i in 0..d / 2 {
                let src = (h * d + half * (d / 2) + i) * cols;
                let dst = (h * d + 2 * i + half) * cols;
                out[dst..dst + cols].copy_from_slice(&rows[src..src + cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    if hf == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if hf == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (l, n) = rest.split_once('.').unwrap();
    let g = match n {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{l}.{g}.weight")
}

/// `w` written as llama.cpp would: GGUF names, permuted queries and keys, F32 tensors except
/// the up projections (Q4_1) and the embeddings (Q8_0).
fn to_gguf(w: &LlamaWeights) -> (Vec<u8>, Vec<(String, QTensor)>) {
    let c = w.config;
    let d = c.head_dim();
    let mut tensors = Vec::new();
    for slot in w.layout.slots() {
        let mut data = w.params[slot.range()].to_vec();
        let cols = *slot.shape.last().unwrap();
        if slot.name.ends_with("q_proj.weight") {
            data = permute(&data, c.num_attention_heads, d, cols);
        } else if slot.name.ends_with("k_proj.weight") {
            data = permute(&data, c.num_key_value_heads, d, cols);
        }
        let t = Tensor::from_vec(data, slot.shape.as_slice(), &Device::Cpu).unwrap();
        let dtype = if slot.name.contains("up_proj") {
            GgmlDType::Q4_1
        } else if slot.name.contains("embed") {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
        tensors.push((gguf_name(&slot.name), QTensor::quantize(&t, dtype).unwrap()));
    }
    let v = vocab();
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(c.hidden_size as u32)),
        (
            "llama.feed_forward_length",
            Value::U32(c.intermediate_size as u32),
        ),
        ("llama.block_count", Value::U32(c.num_hidden_layers as u32)),
        (
            "llama.attention.head_count",
            Value::U32(c.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(c.num_key_value_heads as u32),
        ),
        (
            "llama.context_length",
            Value::U32(c.max_position_embeddings as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps),
        ),
        ("llama.rope.freq_base", Value::F32(c.rope_theta)),
        ("tokenizer.ggml.model", Value::String(v.model.clone())),
        ("tokenizer.ggml.pre", Value::String(v.pre.clone())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(v.tokens.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(v.token_types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
        ("tokenizer.ggml.eos_token_id", Value::U32(95)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
    (out.into_inner(), tensors)
}

fn f16(bits: &[u8]) -> f32 {
    half_to_f32(u16::from_le_bytes([bits[0], bits[1]]))
}

/// IEEE binary16 to binary32, written out (so the test does not share the reader's code).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h >> 15 == 1 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 => panic!("no infinities in these scales"),
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

#[test]
fn a_gguf_file_reads_back_to_hugging_face_weights() {
    let w = weights(5);
    let (bytes, tensors) = to_gguf(&w);
    let read = gguf::read(&bytes).unwrap();
    assert_eq!(read.weights.config, w.config);
    for slot in w.layout.slots() {
        let got = read.weights.tensor(&slot.name);
        let want = w.tensor(&slot.name);
        if slot.name.contains("up_proj") {
            // Q4_1 as the format defines it: blocks of 32, f16 d and m, then 16 bytes of
            // nibbles (low nibbles are elements 0..16, high ones 16..32); x = q·d + m.
            let q = &tensors
                .iter()
                .find(|(n, _)| *n == gguf_name(&slot.name))
                .unwrap()
                .1;
            let raw = q.data().unwrap();
            let mut decoded = Vec::new();
            for block in raw.chunks(20) {
                let (d, m) = (f16(&block[0..2]), f16(&block[2..4]));
                let mut vals = [0.0f32; 32];
                for (j, b) in block[4..20].iter().enumerate() {
                    vals[j] = (b & 0xf) as f32 * d + m;
                    vals[j + 16] = (b >> 4) as f32 * d + m;
                }
                decoded.extend_from_slice(&vals);
            }
            assert_eq!(got, decoded.as_slice(), "{}", slot.name);
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 0.05, "Q4_1 error {worst}");
        } else if slot.name.contains("embed") {
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 0.01, "Q8_0 error {worst}");
        } else {
            // F32, queries and keys un-permuted back to HF order.
            assert_eq!(got, want, "{}", slot.name);
        }
    }
    let codec = TextCodec::from_gguf(&read.vocab).unwrap();
    assert_eq!(codec.encode("a b").unwrap(), vec![64, 94, 65]);
    assert!(codec.is_end(95));
    // A truncated file is refused with a reason, not a panic.
    let e = gguf::read(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(e.to_string().contains("GGUF"), "{e}");
}

/// The metadata and tensor-info part of a GGUF file, walked to find where each tensor's
/// offset is written (so a test can forge one).
fn tensor_offset_positions(bytes: &[u8]) -> Vec<usize> {
    let mut at = 4 + 4;
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let tensors = u64_at(at);
    let keys = u64_at(at + 8);
    at += 16;
    let skip = |t: u32, at: &mut usize| match t {
        0 | 1 | 7 => *at += 1,
        2 | 3 => *at += 2,
        4..=6 => *at += 4,
        10..=12 => *at += 8,
        8 => *at += 8 + u64_at(*at),
        other => panic!("type {other}"),
    };
    for _ in 0..keys {
        at += 8 + u64_at(at);
        let t = u32_at(at);
        at += 4;
        if t == 9 {
            let elem = u32_at(at);
            let n = u64_at(at + 4);
            at += 12;
            for _ in 0..n {
                skip(elem, &mut at);
            }
        } else {
            skip(t, &mut at);
        }
    }
    let mut offsets = Vec::new();
    for _ in 0..tensors {
        at += 8 + u64_at(at);
        let dims = u32_at(at) as usize;
        at += 4 + 8 * dims + 4;
        offsets.push(at);
        at += 8;
    }
    offsets
}

#[test]
fn hostile_gguf_files_are_refused_before_they_cost_memory() {
    let config = market_compute::llama::fixtures::tiny_config();
    let layout = config.layout();
    let weights = LlamaWeights {
        config,
        layout: layout.clone(),
        params: market_compute::init::init_params(
            &market_compute::zoo::ModelConfig::Llama(config),
            &layout,
            1,
        ),
    };
    let vocab = market_compute::llama::fixtures::byte_vocab();
    let honest = gguf::write_f32(&weights, &vocab).unwrap();
    assert!(gguf::read(&honest).is_ok());

    // Every tensor pointing at the first one's bytes: a small file standing for a big model.
    let mut shared = honest.clone();
    let positions = tensor_offset_positions(&shared);
    assert_eq!(positions.len(), layout.slots().len());
    for p in &positions {
        shared[*p..*p + 8].copy_from_slice(&0u64.to_le_bytes());
    }
    let e = gguf::read(&shared).unwrap_err();
    assert!(e.to_string().contains("share bytes"), "{e}");

    // A metadata array past the limit (each element a 32-byte value in candle's reader).
    let mut huge = vocab.clone();
    huge.merges = vec![String::new(); gguf::MAX_METADATA_ARRAY as usize + 1];
    let e = gguf::read(&gguf::write_f32(&weights, &huge).unwrap()).unwrap_err();
    assert!(e.to_string().contains("metadata array"), "{e}");

    // A non-finite weight is refused by the header read the node validates with, not only
    // when the weights are loaded.
    let mut nan = weights.clone();
    nan.params[7] = f32::NAN;
    let e = gguf::read_header(&gguf::write_f32(&nan, &vocab).unwrap()).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");

    // A key written twice: candle would keep the last; the file is refused.
    let arch = Value::String("llama".into());
    let mut twice = Cursor::new(Vec::new());
    gguf_file::write(
        &mut twice,
        &[
            ("general.architecture", &arch),
            ("general.architecture", &arch),
        ],
        &[],
    )
    .unwrap();
    let e = gguf::read(&twice.into_inner()).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");

    // More tokens than the model's vocabulary: prompt ids past the embeddings.
    let mut more = vocab.clone();
    more.tokens.push("extra".into());
    more.token_types.push(1);
    let e = gguf::read(&gguf::write_f32(&weights, &more).unwrap()).unwrap_err();
    assert!(e.to_string().contains("tokens for a vocabulary"), "{e}");
}

#[test]
fn a_template_that_prints_without_end_stops_at_the_prompt_limit() {
    let vocab = gguf::GgufVocab {
        chat_template: Some("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}".into()),
        ..market_compute::llama::fixtures::byte_vocab()
    };
    let codec = TextCodec::from_gguf(&vocab).unwrap();
    let e = codec
        .render_chat(&[market_compute::llama::text::ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }])
        .unwrap_err();
    assert!(e.to_string().contains("renders to more than"), "{e}");
}

#[test]
fn a_model_that_overflows_has_no_answer_and_blames_nobody() {
    let mut w = weights(6);
    // Finite weights whose activations overflow: the residual stream reaches infinity and
    // the next RMSNorm makes NaN of it (∞ · 0).
    let slot = w.layout.slot("model.layers.0.mlp.down_proj.weight").clone();
    for p in &mut w.params[slot.range()] {
        *p = if *p >= 0.0 { 3e38 } else { -3e38 };
    }
    let model = ReproLlama::new(&w);
    let codec = TextCodec::from_gguf(&vocab()).unwrap();
    let prompt = codec.encode("hello").unwrap();
    let e = generate(&model, &codec, &prompt, &greedy(4)).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    let forged = Generation {
        tokens: vec![1, 2, 3, 4],
        logits: vec![0.0; 4],
        text: String::new(),
        finish: Finish::Length,
    };
    assert!(check_answer(&model, &codec, &prompt, &greedy(4), &forged, Match::Exact).is_err());
}

#[test]
fn the_native_near_tie_rule_admits_only_picks_rounding_could_make() {
    let logits = vec![2.0f32, 1.0, 0.5, -1.0];
    let decoding = Decoding::Sample {
        temperature: "1".parse::<Decimal>().unwrap(),
        top_k: 3,
        top_p: None,
    };
    let s = market_compute::inference::Sampling::new(&decoding, 9, &logits, 0, 0);
    let picked = market_compute::inference::choose(&decoding, 9, logits.clone(), 0, 0) as usize;
    assert!(s.could_pick(picked, 0.0));
    // Outside top_k: never.
    assert!(!s.could_pick(3, 1.0));
    // Any other candidate only when the draw lies within eps of its slice.
    for t in [0usize, 1, 2].into_iter().filter(|&t| t != picked) {
        assert!(!s.could_pick(t, 1e-4), "{t} for u = {}", s.u);
        assert!(s.could_pick(t, 1.0));
    }
}

/// Nucleus sampling (`top_p`): the draw is only among the most likely tokens whose
/// probabilities first reach `top_p`, renormalized; a token outside the nucleus is never picked
/// and never accepted as a near tie; an absent `top_p` leaves a task's encoding (and id) as it
/// was; 0, 1 and beyond are refused.
#[test]
fn top_p_samples_only_from_the_nucleus() {
    // Probabilities at temperature 1: about 0.636, 0.234, 0.086, 0.032, 0.012.
    let logits = vec![3.0f32, 2.0, 1.0, 0.0, -1.0];
    let nucleus = Decoding::Sample {
        temperature: "1".parse::<Decimal>().unwrap(),
        top_k: 0,
        top_p: Some("0.8".parse::<Decimal>().unwrap()),
    };
    let s = market_compute::inference::Sampling::new(&nucleus, 5, &logits, 0, 0);
    assert_eq!(s.order, vec![0, 1]);
    // Renormalized over the two: e / (e + 1) and then the whole.
    let first = 1.0 / (1.0 + (-1.0f32).exp());
    assert!((s.cumulative[0] - first).abs() < 1e-6, "{:?}", s.cumulative);
    assert!((s.cumulative[1] - 1.0).abs() < 1e-6, "{:?}", s.cumulative);
    assert!(
        !s.could_pick(2, 1.0),
        "outside the nucleus is never a near tie"
    );
    let mut picks = [0usize; 5];
    let mut wide = [0usize; 5];
    let all = Decoding::Sample {
        temperature: "1".parse::<Decimal>().unwrap(),
        top_k: 0,
        top_p: None,
    };
    for n in 0..2000 {
        picks[market_compute::inference::choose(&nucleus, 5, logits.clone(), 0, n) as usize] += 1;
        wide[market_compute::inference::choose(&all, 5, logits.clone(), 0, n) as usize] += 1;
    }
    assert_eq!(picks[2..], [0, 0, 0], "{picks:?}");
    assert!(picks[1] > 400 && picks[0] > 1200, "{picks:?}");
    assert!(
        wide[2..].iter().sum::<usize>() > 150,
        "without top_p the tail is drawn: {wide:?}"
    );
    // The cut is by running sum: a top_p the first token reaches alone keeps it alone.
    let one = Decoding::Sample {
        temperature: "1".parse::<Decimal>().unwrap(),
        top_k: 0,
        top_p: Some("0.5".parse::<Decimal>().unwrap()),
    };
    assert_eq!(
        market_compute::inference::Sampling::new(&one, 5, &logits, 0, 0).order,
        vec![0]
    );

    // Absent, the field is not written: tasks from before it keep their ids.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("top_p"), "{text}");
    let back: Decoding = serde_json::from_str(&text).unwrap();
    assert_eq!(back, all);
}

/// `spec/vectors/compute-llama.json` (written by `gen_llama_vectors`) reproduces: the seeded
/// weights, the prompt's ids, the logits after it and every answer, bit for bit.
#[test]
fn golden_llama_vectors_reproduce() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../spec/vectors/compute-llama.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let config = market_compute::llama::fixtures::tiny_config();
    assert_eq!(v["config"]["hidden_size"], config.hidden_size);
    assert_eq!(v["config"]["vocab_size"], config.vocab_size);
    let layout = config.layout();
    let mut params = market_compute::init::init_params(
        &market_compute::zoo::ModelConfig::Llama(config),
        &layout,
        v["init_seed"].as_u64().unwrap(),
    );
    // The vector's norm_gains rule.
    for slot in layout
        .slots()
        .iter()
        .filter(|s| s.name.ends_with("norm.weight"))
    {
        for (i, p) in params[slot.range()].iter_mut().enumerate() {
            *p = 1.0 + (i % 8) as f32 / 32.0;
        }
    }
    let le = |x: &[f32]| x.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let hex = |b: &[u8]| blake3::hash(b).to_hex().to_string();
    assert_eq!(hex(&le(&params)), v["params_blake3"]);
    let w = LlamaWeights {
        config,
        layout,
        params,
    };
    let model = ReproLlama::new(&w);
    let codec = TextCodec::from_gguf(&market_compute::llama::fixtures::byte_vocab()).unwrap();
    let chat: Vec<market_compute::llama::text::ChatMessage> =
        serde_json::from_value(v["chat"].clone()).unwrap();
    let text = codec.render_chat(&chat).unwrap();
    assert_eq!(text, v["prompt_text"]);
    let prompt = codec.encode(&text).unwrap();
    let want: Vec<u32> = serde_json::from_value(v["prompt"].clone()).unwrap();
    assert_eq!(prompt, want);
    let last = model
        .forward(&prompt, &mut model.new_cache(), false)
        .unwrap();
    assert_eq!(hex(&le(&last)), v["prefill_logits_blake3"]);
    for case in v["cases"].as_array().unwrap() {
        let params = GenerateParams {
            decoding: serde_json::from_value(case["decoding"].clone()).unwrap(),
            seed: case["seed"].as_u64().unwrap(),
            item: case["item"].as_u64().unwrap(),
            max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as u32,
            stop: Vec::new(),
        };
        let g = generate(&model, &codec, &prompt, &params).unwrap();
        let record = market_compute::inference::AnswerRecord::from_generation(&g);
        assert_eq!(
            serde_json::to_value(&record).unwrap(),
            case["answer"],
            "{}",
            case["name"]
        );
        assert_eq!(hex(&record.to_bytes()), case["record_blake3"]);
    }
}
