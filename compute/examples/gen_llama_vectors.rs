//! Writes `spec/vectors/compute-llama.json`: the tiny `llama` (`llama::fixtures`) with seeded
//! weights, run in `repro`: the hash of its parameters, the logits after a chat prompt, and
//! greedy and sampled answers with every chosen token's logit bits and the item's record hash.
//! Also `spec/vectors/compute-text.json`: a text dataset's pieces and tokens (section 3) under
//! a BPE vocabulary with merges, the `smollm` pre-tokenizer and a BOS token.
//! Run only for a deliberate protocol change:
//! `cargo run --release -p market-compute --example gen_llama_vectors -- spec/vectors`.

use market_compute::data::text::{
    pieces, tokenize, tokenizer_from_blob, MAX_PIECE_BYTES, MIN_PIECE_BYTES,
};
use market_compute::data::Dataset;
use market_compute::inference::AnswerRecord;
use market_compute::init::init_params;
use market_compute::llama::fixtures::{
    bpe_vocab, byte_vocab, hf_tokenizer_json, tiny_config, CHATML,
};
use market_compute::llama::generate::{generate, Forward, GenerateParams};
use market_compute::llama::repro::ReproLlama;
use market_compute::llama::text::{ChatMessage, TextCodec};
use market_compute::llama::LlamaWeights;
use market_compute::zoo::ModelConfig;
use market_protocol::{Decimal, Decoding, Hash};
use serde_json::{json, Value};

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// After initialisation, element `i` of every `*norm.weight` becomes `1 + (i mod 8)/32`
/// (exact in binary32): gains of 1 would leave where RMSNorm applies its weight unchecked.
fn set_gains(layout: &market_compute::zoo::ParamLayout, params: &mut [f32]) {
    for slot in layout
        .slots()
        .iter()
        .filter(|s| s.name.ends_with("norm.weight"))
    {
        for (i, p) in params[slot.range()].iter_mut().enumerate() {
            *p = 1.0 + (i % 8) as f32 / 32.0;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: gen_llama_vectors DIR")?;
    let config = tiny_config().validate()?;
    let layout = config.layout();
    let init_seed = 5u64;
    let mut params = init_params(&ModelConfig::Llama(config), &layout, init_seed);
    set_gains(&layout, &mut params);
    let weights = LlamaWeights {
        config,
        layout,
        params,
    };
    let model = ReproLlama::new(&weights);
    let codec = TextCodec::from_gguf(&byte_vocab())?;
    let chat = [ChatMessage {
        role: "user".into(),
        content: "Say hello.".into(),
    }];
    let prompt_text = codec.render_chat(&chat)?;
    let prompt = codec.encode(&prompt_text)?;
    let last = model.forward(&prompt, &mut model.new_cache(), false)?;
    let dec = |s: &str| s.parse::<Decimal>();
    let cases: Vec<(&str, Decoding)> = vec![
        ("greedy", Decoding::Greedy),
        (
            "sample-t0.8-top10",
            Decoding::Sample {
                temperature: dec("0.8")?,
                top_k: 10,
                top_p: None,
            },
        ),
        (
            "sample-t1.5-all",
            Decoding::Sample {
                temperature: dec("1.5")?,
                top_k: 0,
                top_p: None,
            },
        ),
        (
            "sample-t1.2-p0.8",
            Decoding::Sample {
                temperature: dec("1.2")?,
                top_k: 0,
                top_p: Some(dec("0.8")?),
            },
        ),
    ];
    let mut out = Vec::new();
    for (name, decoding) in cases {
        let params = GenerateParams {
            decoding: decoding.clone(),
            seed: 21,
            item: 3,
            max_new_tokens: 12,
            stop: Vec::new(),
        };
        let g = generate(&model, &codec, &prompt, &params)?;
        let record = AnswerRecord::from_generation(&g);
        out.push(json!({
            "name": name,
            "decoding": serde_json::to_value(&decoding)?,
            "seed": 21,
            "item": 3,
            "max_new_tokens": 12,
            "answer": serde_json::to_value(&record)?,
            "record_blake3": Hash::of(&record.to_bytes()).to_string(),
        }));
    }
    let doc: Value = json!({
        "description": "The tiny llama of compute::llama::fixtures (byte vocabulary, ChatML template) with weights from section 2's initialisation at init_seed and then the norm_gains rule, run in repro (spec/COMPUTE.md section 11): the blake3 of its parameters (binary32 little-endian, layout order), the chat prompt's token ids, the blake3 of the logits after it (last position), and answers with each chosen token's logit bits; record_blake3 is the item leaf (the answer record's bytes).",
        "config": {
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "vocab_size": config.vocab_size,
            "max_position_embeddings": config.max_position_embeddings,
            "rms_norm_eps": "0.00001",
            "rope_theta": "10000",
            "tie_word_embeddings": config.tie_word_embeddings,
        },
        "chat_template": CHATML,
        "init_seed": init_seed,
        "norm_gains": "after initialisation, element i of every slot whose name ends in norm.weight is 1 + (i mod 8) / 32",
        "params_blake3": Hash::of(&le(&weights.params)).to_string(),
        "chat": serde_json::to_value(chat)?,
        "prompt_text": prompt_text,
        "prompt": prompt,
        "prefill_logits_blake3": Hash::of(&le(&last)).to_string(),
        "cases": out,
    });
    let path = std::path::Path::new(&dir).join("compute-llama.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("wrote {}", path.display());
    text_vectors(&dir)
}

/// The text dataset's vector: every edge of section 3's pieces and 11.7's encoding in one text.
fn text_vectors(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut vocab = bpe_vocab();
    vocab.pre = "smollm".into();
    vocab.add_bos = true;
    let codec = TextCodec::from_gguf(&vocab)?;
    let mut text = String::new();
    // Merges (digits and newlines too), digits taken one by one, whitespace runs across
    // newlines, an empty line, a control token written in the text, characters outside the
    // vocabulary (their bytes dropped), and CR LF line ends.
    text.push_str("the band and the 2024 hands\n\n  in the end  \n<|im_start|>then\r\n");
    text.push_str("caf\u{e9} \u{2014} na\u{ef}ve \u{1f600}!\n");
    // Lines, then two newlines as bytes 1022 and 1023 of the first piece: the first does not
    // end it, the second does (a piece ends at a newline only from its 1024th byte).
    while text.len() < MIN_PIECE_BYTES - 40 {
        text.push_str("and the 2020 end\n");
    }
    text.push_str(&"a".repeat(MIN_PIECE_BYTES - 2 - text.len()));
    text.push_str("\n\n");
    // The next piece starts with a newline (whole-text tokenization would join it to the two
    // before), then a line whose newline is the piece's byte 4097: just past the window, so
    // the piece is cut at exactly 4096 bytes and the next starts with that newline.
    text.push_str("\n  then the end\n");
    let second = MIN_PIECE_BYTES;
    text.push_str(&"y".repeat(second + MAX_PIECE_BYTES - text.len()));
    text.push('\n');
    // Then a line longer than a piece whose cut falls inside a two-byte character.
    let third = second + MAX_PIECE_BYTES;
    let in_piece = text.len() - third;
    text.push_str(&"x".repeat((MAX_PIECE_BYTES - 1 - in_piece) % 6));
    text.push_str(&"\u{e9}the ".repeat(MAX_PIECE_BYTES / 5));
    text.push('\n');
    // A last piece with no newline.
    text.push_str("and the end");
    let pieces: Vec<&str> = pieces(&text).collect();
    let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    if sizes[..3] != [MIN_PIECE_BYTES, MAX_PIECE_BYTES, MAX_PIECE_BYTES - 1] {
        return Err(format!("the vector's text misses its edges: {sizes:?}").into());
    }
    let tokens = match tokenize(text.as_bytes(), &codec, vocab.tokens.len())? {
        Dataset::Tokens(t) => t,
        _ => return Err("a text dataset is a token stream".into()),
    };
    let from_json = tokenizer_from_blob(&serde_json::to_vec(&hf_tokenizer_json(&vocab))?)?;
    if tokenize(text.as_bytes(), &from_json, vocab.tokens.len())? != Dataset::Tokens(tokens.clone())
    {
        return Err("the tokenizer.json form gives other tokens".into());
    }
    let doc = json!({
        "description": "A text dataset (spec/COMPUTE.md section 3) under the tokenizer that a GGUF file with these tokenizer keys gives (section 11.7): the text, where each piece ends (byte offsets), and the token stream (the BOS id first, as add_bos_token is true). `tokenizer_json` is the same tokenizer as a Hugging Face tokenizer.json (section 11.7a): read by 11.7a, it gives the same tokens.",
        "tokenizer": {
            "tokenizer.ggml.model": vocab.model,
            "tokenizer.ggml.pre": vocab.pre,
            "tokenizer.ggml.tokens": vocab.tokens,
            "tokenizer.ggml.token_type": vocab.token_types,
            "tokenizer.ggml.merges": vocab.merges,
            "tokenizer.ggml.bos_token_id": vocab.bos,
            "tokenizer.ggml.eos_token_id": vocab.eos,
            "tokenizer.ggml.add_bos_token": vocab.add_bos,
        },
        "tokenizer_json": hf_tokenizer_json(&vocab),
        "text": text,
        "piece_ends": pieces.iter().scan(0, |end, p| { *end += p.len(); Some(*end) }).collect::<Vec<usize>>(),
        "tokens": tokens,
    });
    let path = std::path::Path::new(dir).join("compute-text.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
