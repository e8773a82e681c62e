//! Hugging Face `tokenizer.json` as a tokenizer blob (issue 15, `spec/COMPUTE.md` 11.7a): a
//! file written the way Hugging Face writes a byte-level BPE tokenizer gives the same tokens
//! as the GGUF file of the same vocabulary, a text task trains on it bit for bit as on the
//! GGUF, and every field 11.7 does not define is refused by name.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::BTreeMap;

use market_compute::data::text::{tokenize, tokenizer_from_blob};
use market_compute::data::Dataset;
use market_compute::llama::fixtures::{bpe_config, bpe_gguf, bpe_vocab, hf_tokenizer_json};
use market_compute::llama::hf_tokenizer::{vocab_from_tokenizer_json, MAX_TOKENIZER_JSON_BYTES};
use market_compute::llama::text::TextCodec;
use market_compute::{ComputeError, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{BlobId, DatasetSource, Identity, Workload};
use serde_json::{json, Value};

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap()
}

fn tokens(text: &str, codec: &TextCodec) -> Vec<u32> {
    match tokenize(text.as_bytes(), codec, 1 << 16).unwrap() {
        Dataset::Tokens(t) => t,
        other => panic!("not tokens: {other:?}"),
    }
}

/// Digits next to letters, merges, control tokens written in the text, bytes outside the
/// vocabulary, newlines, and more than one piece.
fn text() -> String {
    let line = "the 2020 band<|im_start|>and then\n\nin é 1234 ½ the end<|im_end|>\n";
    line.repeat(80)
}

#[test]
fn a_tokenizer_json_gives_the_gguf_files_tokens() {
    for (pre, add_bos) in [("gpt-2", false), ("smollm", true), ("smollm", false)] {
        let mut v = bpe_vocab();
        v.pre = pre.into();
        v.add_bos = add_bos;
        let from_gguf = TextCodec::from_gguf(&v).unwrap();
        let from_json = tokenizer_from_blob(&bytes(&hf_tokenizer_json(&v))).unwrap();
        let (a, b) = (tokens(&text(), &from_gguf), tokens(&text(), &from_json));
        assert_eq!(a, b, "pre {pre}, bos {add_bos}");
        assert_eq!(a[0] == v.bos.unwrap(), add_bos);
        // Merges and control tokens took effect.
        assert!(a.len() < text().len() * 3 / 4);
        assert!(a.contains(&v.eos.unwrap()));
    }
}

#[test]
fn a_text_task_trains_on_a_tokenizer_json_exactly_as_on_the_gguf() {
    let mut blobs = BTreeMap::new();
    let mut put = |b: Vec<u8>| {
        let id = BlobId::of(&b);
        blobs.insert(id, b);
        id
    };
    let gguf = put(bpe_gguf(5).unwrap());
    let json = put(bytes(&hf_tokenizer_json(&bpe_vocab())));
    let text = put(text().into_bytes());
    let task = |tokenizer| {
        let mut config = bpe_config();
        config.max_position_embeddings = 16;
        let mut task = training_task(&Identity::from_test_label("hf buyer"), 1);
        if let Workload::Training(t) = &mut task.workload {
            t.model = config.to_spec().unwrap();
            t.dataset = DatasetSource::Text {
                id: text,
                tokenizer,
            };
            t.initial_weights = Some(gguf);
            t.batch_size = 2;
            t.steps = 6;
            t.checkpoint_interval = 3;
        }
        task
    };
    let run = |tokenizer| {
        let job = TrainingJob::from_spec(&task(tokenizer), &blobs).unwrap();
        let mut state = job.initial_state();
        let mut hashes = Vec::new();
        for seg in 0..job.segments() {
            state = job.run_segment(seg, &state, |_, _| {}).unwrap().0;
            hashes.push(state.hash(&job.layout).unwrap());
        }
        hashes
    };
    assert_eq!(run(json), run(gguf));
}

/// A change to a good file.
type Edit = &'static dyn Fn(&mut Value);

fn refused(doc: &Value) -> String {
    match vocab_from_tokenizer_json(&bytes(doc)) {
        Err(ComputeError::InvalidBlob {
            what: "tokenizer",
            reason,
        }) => reason,
        other => panic!("not refused: {:?}", other.map(|v| v.tokens.len())),
    }
}

#[test]
fn what_the_spec_does_not_define_is_refused_by_name() {
    let mut smollm = bpe_vocab();
    smollm.pre = "smollm".into();
    smollm.add_bos = true;
    let good = hf_tokenizer_json(&smollm);
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut d = good.clone();
        f(&mut d);
        refused(&d)
    };
    let cases: [(&str, Edit); 15] = [
        ("normalizer", &|d| d["normalizer"] = json!({"type": "NFC"})),
        ("truncation", &|d| {
            d["truncation"] = json!({"max_length": 8})
        }),
        ("pre_tokenizer", &|d| {
            d["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = json!(true)
        }),
        ("pre_tokenizer", &|d| {
            d["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = json!(false)
        }),
        ("pre_tokenizer", &|d| {
            d["pre_tokenizer"] = json!({"type": "Metaspace"})
        }),
        ("model.type", &|d| d["model"]["type"] = json!("WordPiece")),
        ("model.unk_token", &|d| {
            d["model"]["unk_token"] = json!("<unk>")
        }),
        ("model.byte_fallback", &|d| {
            d["model"]["byte_fallback"] = json!(true)
        }),
        ("decoder", &|d| d["decoder"] = json!({"type": "Metaspace"})),
        ("added_tokens", &|d| {
            d["added_tokens"][0]["lstrip"] = json!(true)
        }),
        ("added_tokens", &|d| {
            d["added_tokens"][0]["content"] = json!("<|other|>")
        }),
        (
            "post_processor",
            &|d| d["post_processor"]["single"] = json!([{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}]),
        ),
        ("model.merges", &|d| {
            d["model"]["merges"][0] = json!(["t ", "h"])
        }),
        ("without a gap", &|d| {
            d["model"]["vocab"]["t"] = json!(900);
        }),
        ("without a gap", &|d| {
            d["model"]["vocab"]["t"] = json!(u64::MAX);
        }),
    ];
    for (name, f) in cases {
        let reason = edit(f);
        assert!(reason.contains(name), "{name}: {reason}");
    }
    // A key twice in the vocabulary object (JSON readers disagree on which copy wins).
    let text = String::from_utf8(bytes(&good)).unwrap();
    let twice = text.replacen("\"!\": 0,", "\"!\": 0, \"!\": 5,", 1);
    assert_ne!(twice, text);
    let e = vocab_from_tokenizer_json(twice.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    // A key twice anywhere, not just in the vocabulary.
    let nested = text.replacen(
        "\"individual_digits\": true",
        "\"individual_digits\": false, \"individual_digits\": true",
        1,
    );
    assert_ne!(nested, text);
    let e = vocab_from_tokenizer_json(nested.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    // Control tokens kept out of the vocabulary and added after it, as many files do: in
    // ascending id order they get their ids (as the tokenizers library numbers them, in list
    // order from the vocabulary's size); out of order, refused.
    let mut outside = good.clone();
    let vocab = outside["model"]["vocab"].as_object_mut().unwrap();
    vocab.remove("<|im_start|>");
    vocab.remove("<|im_end|>");
    // Their ids (96, 97) must come after the vocabulary's: renumber the merged tokens down.
    let merged: Vec<String> = smollm.tokens[98..].to_vec();
    for (i, t) in merged.iter().enumerate() {
        vocab.insert(t.clone(), json!(96 + i));
    }
    let n = smollm.tokens.len();
    outside["added_tokens"][0]["id"] = json!(n - 2);
    outside["added_tokens"][1]["id"] = json!(n - 1);
    outside["post_processor"]["special_tokens"]["<|im_start|>"]["ids"] = json!([n - 2]);
    let v = vocab_from_tokenizer_json(&bytes(&outside)).unwrap();
    assert_eq!(v.tokens[n - 2], "<|im_start|>");
    assert_eq!((v.token_types[n - 1], v.bos), (3, Some(n as u32 - 2)));
    let mut swapped = outside.clone();
    swapped["added_tokens"].as_array_mut().unwrap().swap(0, 1);
    assert!(refused(&swapped).contains("ascending"));
    // A gap in the vocabulary that an added token fills (the library would number it after
    // the vocabulary instead): refused.
    let mut filled = good.clone();
    filled["model"]["vocab"]
        .as_object_mut()
        .unwrap()
        .remove("<|im_start|>");
    assert!(refused(&filled).contains("model.vocab"));
    // A post-processor nested in a sequence, and a digit split with `invert` not false.
    let mut nest = good.clone();
    nest["post_processor"] = json!({"type": "Sequence", "processors": [
        {"type": "Sequence", "processors": [good["post_processor"].clone()]}]});
    assert!(refused(&nest).contains("post_processor"));
    let mut split = good.clone();
    split["pre_tokenizer"]["pretokenizers"][0] = json!({"type": "Split",
        "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": "no"});
    assert!(refused(&split).contains("pre_tokenizer"));
    split["pre_tokenizer"]["pretokenizers"][0]["invert"] = json!(false);
    assert!(vocab_from_tokenizer_json(&bytes(&split)).is_ok());
    // Millions of tiny tokens are refused while parsing, at the largest vocabulary's count:
    // in the vocabulary, as added tokens, or as merges past a GGUF array's bound.
    let many: serde_json::Map<String, Value> = (0..=market_compute::llama::limits::MAX_VOCAB)
        .map(|i| (format!("t{i}"), json!(i)))
        .collect();
    let mut huge = good.clone();
    huge["model"]["vocab"] = Value::Object(many);
    assert!(refused(&huge).contains("more than 262144 keys"));
    let mut added = good.clone();
    added["added_tokens"] = json!(vec![
        json!({"id": 0, "content": "!"});
        market_compute::llama::limits::MAX_VOCAB + 1
    ]);
    assert!(refused(&added).contains("more than 262144 items"));
    let mut merges = good.clone();
    merges["model"]["merges"] = json!(vec![json!(["t", "h"]); (1 << 20) + 1]);
    assert!(refused(&merges).contains("more than 1048576 items"));
    // A huge list where a small object belongs (read as generic JSON): refused by the count
    // of values in the first pass, not held.
    let mut list = good.clone();
    list["pre_tokenizer"]["pretokenizers"] = json!(vec![0; 1 << 22]);
    assert!(refused(&list).contains("JSON values"));
    // Too big to parse: refused on its length alone.
    let e = vocab_from_tokenizer_json(&vec![b' '; MAX_TOKENIZER_JSON_BYTES + 1]).unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
    // The accepted file round-trips its vocabulary.
    let v = vocab_from_tokenizer_json(&bytes(&good)).unwrap();
    assert_eq!(
        (v.tokens, v.token_types, v.merges),
        (smollm.tokens, smollm.token_types, smollm.merges)
    );
    assert_eq!((v.bos, v.add_bos, v.eos), (smollm.bos, true, None));
}
