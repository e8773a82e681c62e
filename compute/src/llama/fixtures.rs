//! A tiny `llama` with a byte-level vocabulary and a ChatML template, as a GGUF file: what
//! tests, examples and the devnet use when they need a llama task without a real model.

use market_protocol::ModelSpec;
use serde_json::{json, Value};

use super::gguf::{self, GgufVocab};
use super::{LlamaConfig, LlamaWeights};
use crate::error::Result;
use crate::init::init_params;
use crate::zoo::ModelConfig;

/// The ChatML template SmolLM2 and Qwen use, without a default system turn.
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Printable ASCII (one byte-level token each), `Ġ` (a space), `Ċ` (a newline), and the
/// control tokens `<|im_start|>` and `<|im_end|>` (the end token), with no merges.
pub fn byte_vocab() -> GgufVocab {
    let mut tokens: Vec<String> = (33u8..=126).map(|b| (b as char).to_string()).collect();
    tokens.extend(["Ġ", "Ċ", "<|im_start|>", "<|im_end|>"].map(String::from));
    let n = tokens.len();
    let mut token_types = vec![1; n];
    token_types[n - 2] = 3;
    token_types[n - 1] = 3;
    GgufVocab {
        model: "gpt2".into(),
        pre: "gpt-2".into(),
        token_types,
        merges: Vec::new(),
        bos: Some((n - 2) as u32),
        eos: Some((n - 1) as u32),
        add_bos: false,
        chat_template: Some(CHATML.into()),
        tokens,
    }
}

/// The tiny config: 2 layers of width 48, 4 query and 2 key-value heads of 12 (so the
/// attention scale `1/sqrt(12)` is inexact), the byte vocabulary.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 48,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: byte_vocab().tokens.len(),
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
    }
}

/// The tiny config as a task's model spec.
pub fn tiny_spec() -> ModelSpec {
    tiny_config()
        .to_spec()
        .unwrap_or_else(|_| unreachable!("the tiny config's floats have task spellings"))
}

/// The tiny model with seeded weights, as a GGUF file.
pub fn tiny_gguf(seed: u64) -> Result<Vec<u8>> {
    seeded_gguf(tiny_config(), &byte_vocab(), seed)
}

/// A model of `config` with section 2's initialisation at `seed` and `vocab`, as a GGUF file.
fn seeded_gguf(config: LlamaConfig, vocab: &GgufVocab, seed: u64) -> Result<Vec<u8>> {
    let config = config.validate()?;
    let layout = config.layout();
    let params = init_params(&ModelConfig::Llama(config), &layout, seed);
    gguf::write_f32(
        &LlamaWeights {
            config,
            layout,
            params,
        },
        vocab,
    )
}

/// Merges over the byte vocabulary, in priority order: a few English pieces, so a text
/// tokenizes into fewer tokens than it has characters, and a digit pair and a newline pair,
/// which only join when the pre-tokenizer and the pieces let them.
const BPE_MERGES: [&str; 12] = [
    "t h", "Ġ th", "th e", "Ġth e", "e r", "Ġ a", "a n", "Ġa n", "Ġan d", "i n", "2 0", "Ċ Ċ",
];

/// [`byte_vocab`] with [`BPE_MERGES`]: the merged tokens follow the control tokens, so every
/// id of the byte vocabulary keeps its meaning.
pub fn bpe_vocab() -> GgufVocab {
    let mut v = byte_vocab();
    for merge in BPE_MERGES {
        v.tokens.push(merge.replace(' ', ""));
        v.token_types.push(1);
        v.merges.push(merge.into());
    }
    v
}

/// The tiny config with [`bpe_vocab`]'s vocabulary.
pub fn bpe_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: bpe_vocab().tokens.len(),
        ..tiny_config()
    }
}

/// The tiny model with [`bpe_vocab`] and seeded weights, as a GGUF file.
pub fn bpe_gguf(seed: u64) -> Result<Vec<u8>> {
    seeded_gguf(bpe_config(), &bpe_vocab(), seed)
}

/// `v` as a Hugging Face `tokenizer.json`, in the shape the `tokenizers` library saves one: the vocabulary as an object, the control
/// tokens again among `added_tokens`, merges as pairs, `Digits` for the digit split, and a
/// `TemplateProcessing` that puts the BOS first when `v` asks for one.
pub fn hf_tokenizer_json(v: &GgufVocab) -> Value {
    let vocab: serde_json::Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let added = super::text::added_tokens_json(v);
    let merges: Vec<Value> = v
        .merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map_or_else(|| json!(m), |(a, b)| json!([a, b]))
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = match v.pre.as_str() {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        _ => byte_level.clone(),
    };
    let post = match (v.add_bos, v.bos) {
        (true, Some(bos)) => {
            let name = &v.tokens[bos as usize];
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {name.clone(): {"id": name, "ids": [bos], "tokens": [name]}}})
        }
        _ => byte_level.clone(),
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre, "post_processor": post, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                  "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    })
}

/// What `v` says beyond its `tokenizer.json` as a Hugging Face `tokenizer_config.json`, in the
/// shape `transformers` saves one: the chat template, the BOS and EOS as `AddedToken` objects
/// and plain strings respectively, and keys 11.7b ignores (`model_max_length`,
/// `tokenizer_class`, `added_tokens_decoder`, ...).
pub fn hf_tokenizer_config_json(v: &GgufVocab) -> Value {
    let name = |id: Option<u32>| id.map(|id| v.tokens[id as usize].clone());
    let decoder: serde_json::Map<String, Value> = v
        .token_types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3)
        .map(|(id, _)| {
            (
                id.to_string(),
                json!({"content": v.tokens[id], "lstrip": false, "normalized": false,
                       "rstrip": false, "single_word": false, "special": true}),
            )
        })
        .collect();
    json!({
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": name(v.bos).map(|b| json!({"__type": "AddedToken", "content": b,
            "lstrip": false, "normalized": false, "rstrip": false, "single_word": false})),
        "chat_template": v.chat_template,
        "clean_up_tokenization_spaces": false,
        "eos_token": name(v.eos),
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": null,
    })
}
