//! A `llama` served from safetensors weights (what a training task returns) with a separate
//! tokenizer blob (issue 15): the answers are the GGUF file's, bit for bit, whether the
//! tokenizer is the GGUF file or a Hugging Face `tokenizer.json` (with its
//! `tokenizer_config.json`, chats too), and what cannot work is refused by field.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::BTreeMap;

use market_compute::init::weights_to_bytes;
use market_compute::llama::fixtures::{
    byte_vocab, hf_tokenizer_config_json, hf_tokenizer_json, tiny_gguf, tiny_spec,
};
use market_compute::llama::gguf;
use market_compute::{BlobSource, ComputeError, InferenceJob};
use market_protocol::fixtures::inference_task;
use market_protocol::{
    BlobId, ChatMessage, Decoding, Identity, InferenceInputs, TaskSpec, Workload,
};

fn put(blobs: &mut BTreeMap<BlobId, Vec<u8>>, bytes: Vec<u8>) -> BlobId {
    let id = BlobId::of(&bytes);
    blobs.insert(id, bytes);
    id
}

fn task(weights: BlobId, tokenizer: Option<BlobId>, chat: bool) -> TaskSpec {
    let mut task = inference_task(&Identity::from_test_label("st buyer"), 3);
    if let Workload::Inference(inf) = &mut task.workload {
        inf.model = tiny_spec();
        inf.weights = Some(weights);
        inf.tokenizer = tokenizer;
        inf.decoding = Decoding::Sample {
            temperature: "0.9".parse().unwrap(),
            top_k: 20,
            top_p: None,
        };
        inf.inputs = if chat {
            InferenceInputs::Chat {
                chats: vec![vec![ChatMessage {
                    role: "user".into(),
                    content: "Name a colour.".into(),
                }]],
                max_new_tokens: 12,
                stop: Vec::new(),
            }
        } else {
            InferenceInputs::Prompts {
                prompts: vec!["Once upon a time".into(), "2 + 2 =".into()],
                max_new_tokens: 12,
            }
        };
    }
    task
}

/// The tiny model's weights as safetensors and its tokenizer as a tokenizer.json, in a blob
/// store, with the model they came from.
fn tiny_model() -> (BTreeMap<BlobId, Vec<u8>>, gguf::GgufModel, BlobId, BlobId) {
    let mut blobs = BTreeMap::new();
    let file = gguf::read(&tiny_gguf(11).unwrap()).unwrap();
    let st = put(
        &mut blobs,
        weights_to_bytes(&file.weights.layout, &file.weights.params).unwrap(),
    );
    let json = put(
        &mut blobs,
        serde_json::to_vec(&hf_tokenizer_json(&byte_vocab())).unwrap(),
    );
    (blobs, file, st, json)
}

fn answers(task: &TaskSpec, blobs: &BTreeMap<BlobId, Vec<u8>>) -> Vec<Vec<u8>> {
    let job = InferenceJob::from_spec(task, blobs).unwrap();
    let planned = InferenceJob::plan(task, blobs).unwrap();
    assert_eq!(planned.len(), job.len());
    let out = job.run_all(|_| {}).unwrap();
    out.items.into_iter().map(|i| i.bytes).collect()
}

fn refusal(task: &TaskSpec, blobs: &BTreeMap<BlobId, Vec<u8>>) -> ComputeError {
    // The node's check (plan) and a worker's (from_spec) refuse alike.
    let planned = InferenceJob::plan(task, blobs).unwrap_err();
    let e = InferenceJob::from_spec(task, blobs).unwrap_err();
    assert_eq!(planned.to_string(), e.to_string());
    e
}

/// A refusal as `FIELD: REASON` for a bad config, else its message.
fn field(e: ComputeError) -> String {
    match e {
        ComputeError::InvalidConfig { field, reason } => format!("{field}: {reason}"),
        other => format!("{other}"),
    }
}

/// A `gpt` inference task (a model that takes no tokenizer blobs) changed by `f`.
fn gpt_task(f: impl FnOnce(&mut market_protocol::InferenceSpec)) -> TaskSpec {
    let mut gpt = inference_task(&Identity::from_test_label("st buyer"), 4);
    if let Workload::Inference(inf) = &mut gpt.workload {
        inf.weights = None;
        f(inf);
    }
    gpt
}

/// Asserts that `e` refuses blob `what` for a reason containing `needle`.
fn assert_invalid_blob(e: ComputeError, what: &str, needle: &str) {
    match e {
        ComputeError::InvalidBlob { what: w, reason } if w == what => {
            assert!(reason.contains(needle), "{needle}: {reason}")
        }
        other => panic!("{what}, {needle}: {other}"),
    }
}

#[test]
fn safetensors_weights_with_a_tokenizer_blob_answer_as_the_gguf_does() {
    let (mut blobs, file, st, json) = tiny_model();
    let gguf = put(&mut blobs, tiny_gguf(11).unwrap());
    // A chat needs the template: the GGUF file as the tokenizer blob gives it.
    let reference = answers(&task(gguf, None, true), &blobs);
    assert_eq!(answers(&task(st, Some(gguf), true), &blobs), reference);
    // Plain prompts: a tokenizer.json gives the same tokens, so the same answers.
    let reference = answers(&task(gguf, None, false), &blobs);
    assert_eq!(answers(&task(st, Some(json), false), &blobs), reference);
    assert_eq!(answers(&task(gguf, Some(json), false), &blobs), reference);
    // Other weights answer otherwise (the comparison can fail).
    let mut other = file.weights.params.clone();
    other.iter_mut().for_each(|w| *w *= 0.5);
    let other = put(
        &mut blobs,
        weights_to_bytes(&file.weights.layout, &other).unwrap(),
    );
    assert_ne!(answers(&task(other, Some(json), false), &blobs), reference);
    // The task names the tokenizer among its blobs, for workers and verifiers to fetch.
    assert!(task(st, Some(json), false).blobs().contains(&json));
}

#[test]
fn what_cannot_run_is_refused_by_field() {
    let (mut blobs, file, st, json) = tiny_model();
    // Safetensors carry no tokenizer.
    let e = field(refusal(&task(st, None, false), &blobs));
    assert!(e.starts_with("tokenizer:"), "{e}");
    // A tokenizer.json has no chat template.
    let e = refusal(&task(st, Some(json), true), &blobs).to_string();
    assert!(e.contains("template"), "{e}");
    // A tokenizer with more tokens than the model's vocabulary.
    let mut big = byte_vocab();
    big.tokens.push("extra".into());
    let big = put(
        &mut blobs,
        serde_json::to_vec(&hf_tokenizer_json(&big)).unwrap(),
    );
    let e = field(refusal(&task(st, Some(big), false), &blobs));
    assert!(
        e.starts_with("tokenizer:") && e.contains("more than"),
        "{e}"
    );
    // Weights that are not the task's model, or not finite, before anything runs.
    let whole = weights_to_bytes(&file.weights.layout, &file.weights.params).unwrap();
    let half = put(&mut blobs, whole[..whole.len() / 2].to_vec());
    assert!(matches!(
        refusal(&task(half, Some(json), false), &blobs),
        ComputeError::InvalidBlob {
            what: "weights",
            ..
        }
    ));
    let mut nan = file.weights.params.clone();
    nan[7] = f32::NAN;
    let nan = put(
        &mut blobs,
        weights_to_bytes(&file.weights.layout, &nan).unwrap(),
    );
    let e = refusal(&task(nan, Some(json), false), &blobs).to_string();
    assert!(e.contains("NaN"), "{e}");
    // A tokenizer on a model that takes none (workers would fetch it for nothing).
    let gpt = gpt_task(|inf| inf.tokenizer = Some(json));
    let e = field(refusal(&gpt, &blobs));
    assert!(e.starts_with("tokenizer:"), "{e}");
    // A tokenizer blob nobody uploaded.
    let missing = BlobId::of(b"no such tokenizer");
    assert!(matches!(
        refusal(&task(st, Some(missing), false), &blobs),
        ComputeError::MissingBlob(id) if id == missing
    ));
}

/// A model whose activations overflow has no answer, and the error names the item, so a node
/// can check a worker's report by running that item alone (PROTOCOL, divergence).
#[test]
fn an_item_that_overflows_is_named_in_the_error() {
    let (mut blobs, file, _, json) = tiny_model();
    let mut params = file.weights.params.clone();
    // Finite weights, activations that overflow: the MLP's matrices at ±3e38.
    for m in ["gate_proj", "up_proj", "down_proj"] {
        let slot = file
            .weights
            .layout
            .slot(&format!("model.layers.0.mlp.{m}.weight"))
            .range();
        params[slot]
            .iter_mut()
            .for_each(|w| *w = if *w >= 0.0 { 3e38 } else { -3e38 });
    }
    let st = put(
        &mut blobs,
        weights_to_bytes(&file.weights.layout, &params).unwrap(),
    );
    let job = InferenceJob::from_spec(&task(st, Some(json), false), &blobs).unwrap();
    let e = job.run_item(1).unwrap_err().to_string();
    assert!(
        e.starts_with("non-finite value in `logits of item 1` after step 0"),
        "{e}"
    );
}

/// `task` with `config` as its `tokenizer_config`.
fn with_config(mut task: TaskSpec, config: Option<BlobId>) -> TaskSpec {
    if let Workload::Inference(inf) = &mut task.workload {
        inf.tokenizer_config = config;
    }
    task
}

#[test]
fn a_tokenizer_json_with_its_tokenizer_config_answers_chats_as_the_gguf_does() {
    let (mut blobs, _, st, json) = tiny_model();
    let gguf = put(&mut blobs, tiny_gguf(11).unwrap());
    let config = put(
        &mut blobs,
        serde_json::to_vec(&hf_tokenizer_config_json(&byte_vocab())).unwrap(),
    );
    // The chat template and the EOS (the end of an answer) come from the config: the same
    // answers, bit for bit, as the GGUF file's own tokenizer gives.
    let reference = answers(&task(gguf, None, true), &blobs);
    let chat = with_config(task(st, Some(json), true), Some(config));
    assert_eq!(answers(&chat, &blobs), reference);
    assert!(chat.blobs().contains(&config));
    // The EOS is read from the config: a long answer ends at the EOS with it, and runs on
    // past that token without it (the comparison can fail).
    let mut no_eos = hf_tokenizer_config_json(&byte_vocab());
    no_eos["eos_token"] = serde_json::Value::Null;
    let no_eos = put(&mut blobs, serde_json::to_vec(&no_eos).unwrap());
    let long = |config: Option<BlobId>| {
        let mut t = with_config(task(st, Some(json), true), config);
        if let Workload::Inference(inf) = &mut t.workload {
            if let InferenceInputs::Chat { max_new_tokens, .. } = &mut inf.inputs {
                *max_new_tokens = 200;
            }
        }
        let out = answers(&t, &blobs);
        serde_json::from_slice::<serde_json::Value>(&out[0]).unwrap()
    };
    let ended = long(Some(config));
    assert_eq!(ended["finish"], "end", "{ended}");
    let ran_on = long(Some(no_eos));
    assert_ne!(ran_on["finish"], "end", "{ran_on}");
    assert!(ran_on["tokens"].as_array().unwrap().len() > ended["tokens"].as_array().unwrap().len());
    // The list form of `chat_template`: the entry named "default".
    let mut listed = hf_tokenizer_config_json(&byte_vocab());
    listed["chat_template"] = serde_json::json!([
        {"name": "tool_use", "template": "{{ raise_exception('not this one') }}"},
        {"name": "default", "template": market_compute::llama::fixtures::CHATML},
    ]);
    let listed = put(&mut blobs, serde_json::to_vec(&listed).unwrap());
    assert_eq!(
        answers(
            &with_config(task(st, Some(json), true), Some(listed)),
            &blobs
        ),
        reference
    );
}

/// `task` with `config` as its `tokenizer_config` and `template` as its `chat_template`.
fn with_template(task: TaskSpec, config: Option<BlobId>, template: Option<BlobId>) -> TaskSpec {
    let mut task = with_config(task, config);
    if let Workload::Inference(inf) = &mut task.workload {
        inf.chat_template = template;
    }
    task
}

#[test]
fn a_chat_template_jinja_beside_the_config_is_the_template_as_transformers_reads_it() {
    let (mut blobs, _, st, json) = tiny_model();
    let gguf = put(&mut blobs, tiny_gguf(11).unwrap());
    let reference = answers(&task(gguf, None, true), &blobs);
    // The config as recent `transformers` save it: no `chat_template` key, the
    // template in a file of its own, here with Windows line ends (made LF, 11.8).
    let mut bare = hf_tokenizer_config_json(&byte_vocab());
    bare.as_object_mut().unwrap().remove("chat_template");
    let bare = put(&mut blobs, serde_json::to_vec(&bare).unwrap());
    let crlf = market_compute::llama::fixtures::CHATML.replace('\n', "\r\n");
    let jinja = put(&mut blobs, crlf.into_bytes());
    // Without the file the config gives no template, and a chat cannot be rendered.
    assert!(
        InferenceJob::from_spec(&with_config(task(st, Some(json), true), Some(bare)), &blobs)
            .and_then(|job| job.run_all(|_| {}))
            .is_err(),
        "a chat ran without a template"
    );
    let chat = with_template(task(st, Some(json), true), Some(bare), Some(jinja));
    assert_eq!(answers(&chat, &blobs), reference);
    assert!(chat.blobs().contains(&jinja));
    // The file wins over a template in the config, whatever that holds (the key is not read).
    for other in [
        serde_json::json!("{{ raise_exception('not this one') }}"),
        serde_json::json!(7),
    ] {
        let mut config = hf_tokenizer_config_json(&byte_vocab());
        config["chat_template"] = other;
        let config = put(&mut blobs, serde_json::to_vec(&config).unwrap());
        let t = with_template(task(st, Some(json), true), Some(config), Some(jinja));
        assert_eq!(answers(&t, &blobs), reference);
    }
    // Every template's line ends are made LF, as Jinja2 makes them (11.8): the config's own
    // template with Windows line ends renders the same chat.
    let mut crlf_config = hf_tokenizer_config_json(&byte_vocab());
    crlf_config["chat_template"] = market_compute::llama::fixtures::CHATML
        .replace('\n', "\r\n")
        .into();
    let crlf_config = put(&mut blobs, serde_json::to_vec(&crlf_config).unwrap());
    let t = with_config(task(st, Some(json), true), Some(crlf_config));
    assert_eq!(answers(&t, &blobs), reference);
    // Another template gives other answers: the file is what renders the chat.
    let plain = put(
        &mut blobs,
        b"{% for m in messages %}{{ m.content }}{% endfor %}".to_vec(),
    );
    let t = with_template(task(st, Some(json), true), Some(bare), Some(plain));
    assert_ne!(answers(&t, &blobs), reference);
}

/// A task's chats share one template instruction budget (11.8): many chats of a costly
/// template, each within its own fuel, are refused on `inputs` by the node's check and a
/// worker's alike, instead of holding every worker and verifier for as long as they render.
#[test]
fn a_task_whose_chats_together_run_the_template_too_long_is_refused() {
    use market_compute::llama::text::{TextCodec, TASK_TEMPLATE_FUEL, TEMPLATE_FUEL};
    let (mut blobs, _, st, json) = tiny_model();
    let config = put(
        &mut blobs,
        serde_json::to_vec(&hf_tokenizer_config_json(&byte_vocab())).unwrap(),
    );
    // A template that loops before printing the chat as ChatML does.
    let costly = format!(
        "{{% for i in range(200) %}}{{% for j in range(1000) %}}{{% endfor %}}{{% endfor %}}{}",
        market_compute::llama::fixtures::CHATML
    );
    let chat = vec![ChatMessage {
        role: "user".into(),
        content: "Name a colour.".into(),
    }];
    let mut v = byte_vocab();
    v.chat_template = Some(costly.clone());
    let codec = TextCodec::from_gguf(&v).unwrap();
    let mut probe = codec.chat_renderer(TASK_TEMPLATE_FUEL).unwrap();
    probe.render(&chat).unwrap();
    let one = TASK_TEMPLATE_FUEL - probe.fuel_left();
    assert!(one > TEMPLATE_FUEL / 10 && one < TEMPLATE_FUEL, "{one}");
    let jinja = put(&mut blobs, costly.into_bytes());
    let with_chats = |n: u64| {
        let mut t = with_template(task(st, Some(json), true), Some(config), Some(jinja));
        if let Workload::Inference(inf) = &mut t.workload {
            if let InferenceInputs::Chat { chats, .. } = &mut inf.inputs {
                *chats = vec![chat.clone(); n as usize];
            }
        }
        t
    };
    // As many chats as the budget holds render; one more is refused.
    let fit = (TASK_TEMPLATE_FUEL - 1) / one;
    let start = std::time::Instant::now();
    InferenceJob::plan(&with_chats(fit), &blobs).unwrap();
    eprintln!(
        "{fit} chats of {one} instructions rendered in {:?}",
        start.elapsed()
    );
    match refusal(&with_chats(fit + 1), &blobs) {
        ComputeError::InvalidConfig { field, reason } => {
            assert_eq!(field, "inputs");
            assert!(reason.contains("template instructions in all"), "{reason}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_chat_template_jinja_that_cannot_be_used_is_refused_by_field() {
    let (mut blobs, _, st, json) = tiny_model();
    let gguf = put(&mut blobs, tiny_gguf(11).unwrap());
    let config = put(
        &mut blobs,
        serde_json::to_vec(&hf_tokenizer_config_json(&byte_vocab())).unwrap(),
    );
    let jinja = put(
        &mut blobs,
        market_compute::llama::fixtures::CHATML.as_bytes().to_vec(),
    );
    // Without a `tokenizer_config` to complete: a tokenizer.json alone, a GGUF tokenizer,
    // GGUF weights with their own.
    for t in [
        with_template(task(st, Some(json), true), None, Some(jinja)),
        with_template(task(st, Some(gguf), true), None, Some(jinja)),
        with_template(task(gguf, None, true), None, Some(jinja)),
    ] {
        let e = field(refusal(&t, &blobs));
        assert!(e.starts_with("chat_template:"), "{e}");
    }
    let gpt = gpt_task(|inf| inf.chat_template = Some(jinja));
    assert!(field(refusal(&gpt, &blobs)).starts_with("chat_template:"));
    let missing = BlobId::of(b"no such template");
    assert!(matches!(
        refusal(
            &with_template(task(st, Some(json), true), Some(config), Some(missing)),
            &blobs
        ),
        ComputeError::MissingBlob(id) if id == missing
    ));
    for (bytes, needle) in [
        (b"{{ m }}\xff".to_vec(), "not UTF-8"),
        (vec![b' '; (4 << 20) + 1], "over the limit"),
    ] {
        let id = put(&mut blobs, bytes);
        let t = with_template(task(st, Some(json), true), Some(config), Some(id));
        assert_invalid_blob(refusal(&t, &blobs), "chat_template", needle);
    }
}

/// Blobs in memory, and one of 5 GiB that must never be read: its length is all a size
/// check may ask for.
struct WithHuge(BTreeMap<BlobId, Vec<u8>>, BlobId);

impl BlobSource for WithHuge {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        assert_ne!(*id, self.1, "a blob over its limit was read");
        self.0.blob(id)
    }

    fn blob_len(&self, id: &BlobId) -> Option<u64> {
        if *id == self.1 {
            return Some(5 << 30);
        }
        self.0.blob_len(id)
    }
}

#[test]
fn a_config_or_template_over_its_limit_is_refused_before_it_is_read() {
    let (mut blobs, _, st, json) = tiny_model();
    let config = put(
        &mut blobs,
        serde_json::to_vec(&hf_tokenizer_config_json(&byte_vocab())).unwrap(),
    );
    let huge = BlobId::of(b"five gibibytes");
    let blobs = WithHuge(blobs, huge);
    for (t, what) in [
        (
            with_config(task(st, Some(json), true), Some(huge)),
            "tokenizer_config",
        ),
        (
            with_template(task(st, Some(json), true), Some(config), Some(huge)),
            "chat_template",
        ),
    ] {
        let planned = InferenceJob::plan(&t, &blobs).unwrap_err();
        match InferenceJob::from_spec(&t, &blobs).unwrap_err() {
            ComputeError::InvalidBlob { what: w, reason } => {
                assert_eq!(w, what);
                assert!(
                    reason.contains("5368709120 bytes, over the limit"),
                    "{reason}"
                );
                assert_eq!(planned.to_string(), format!("invalid {what}: {reason}"));
            }
            other => panic!("{what}: {other}"),
        }
    }
}

#[test]
fn a_tokenizer_config_that_cannot_be_used_is_refused_by_field() {
    let (mut blobs, _, st, json) = tiny_model();
    let gguf = put(&mut blobs, tiny_gguf(11).unwrap());
    let good = hf_tokenizer_config_json(&byte_vocab());
    let config = put(&mut blobs, serde_json::to_vec(&good).unwrap());
    // Safetensors weights with a config but no tokenizer: the missing tokenizer first (11.11).
    let e = field(refusal(
        &with_config(task(st, None, true), Some(config)),
        &blobs,
    ));
    assert!(e.starts_with("tokenizer:"), "{e}");
    // With a GGUF tokenizer, or GGUF weights and no tokenizer, on a model that takes none.
    for t in [
        with_config(task(st, Some(gguf), true), Some(config)),
        with_config(task(gguf, None, true), Some(config)),
    ] {
        let e = field(refusal(&t, &blobs));
        assert!(e.starts_with("tokenizer_config:"), "{e}");
    }
    let gpt = gpt_task(|inf| inf.tokenizer_config = Some(config));
    assert!(field(refusal(&gpt, &blobs)).starts_with("tokenizer_config:"));
    // A config nobody uploaded.
    let missing = BlobId::of(b"no such config");
    assert!(matches!(
        refusal(&with_config(task(st, Some(json), true), Some(missing)), &blobs),
        ComputeError::MissingBlob(id) if id == missing
    ));
    // Files that cannot be used, each refused naming what is wrong.
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"[1, 2]".to_vec(), "not a JSON object"),
        (
            b"{\"eos_token\": \"a\", \"eos_token\": \"b\"}".to_vec(),
            "appears twice",
        ),
        (vec![b' '; (4 << 20) + 1], "over the limit"),
        (edit(&|v| v["add_eos_token"] = true.into()), "add_eos_token"),
        (edit(&|v| v["add_bos_token"] = true.into()), "add_bos_token"),
        (
            edit(&|v| v["add_bos_token"] = "yes".into()),
            "add_bos_token",
        ),
        (edit(&|v| v["chat_template"] = 7.into()), "chat_template"),
        (
            edit(&|v| v["chat_template"] = serde_json::json!([{"name": "x", "template": "y"}])),
            "no template named",
        ),
        (
            edit(&|v| {
                v["chat_template"] = serde_json::json!([
                    {"name": "default", "template": "a"}, {"name": "default", "template": "b"}])
            }),
            "named twice",
        ),
        (edit(&|v| v["eos_token"] = "<|nope|>".into()), "eos_token"),
        (
            edit(&|v| v["eos_token"] = serde_json::json!({"text": "x"})),
            "eos_token",
        ),
        (edit(&|v| v["bos_token"] = 3.into()), "bos_token"),
        // A token `transformers` would make special, changing the encoding.
        (edit(&|v| v["eos_token"] = "Ġ".into()), "eos_token"),
        (
            edit(&|v| v["additional_special_tokens"] = serde_json::json!(["<|im_end|>", "A"])),
            "additional_special_tokens",
        ),
        (edit(&|v| v["pad_token"] = "<pad>".into()), "pad_token"),
        (edit(&|v| v["unk_token"] = "B".into()), "unk_token"),
        (
            edit(&|v| v["split_special_tokens"] = true.into()),
            "split_special_tokens",
        ),
        (
            edit(&|v| {
                v["added_tokens_decoder"]["200"] =
                    serde_json::json!({"content": "x", "special": true})
            }),
            "added_tokens_decoder",
        ),
        (
            edit(&|v| v["added_tokens_decoder"]["97"]["special"] = false.into()),
            "added_tokens_decoder",
        ),
        (
            edit(&|v| v["added_tokens_decoder"]["5"] = serde_json::json!({"content": "&"})),
            "added_tokens_decoder",
        ),
    ];
    for (bytes, needle) in cases {
        let id = put(&mut blobs, bytes);
        assert_invalid_blob(
            refusal(&with_config(task(st, Some(json), true), Some(id)), &blobs),
            "tokenizer_config",
            needle,
        );
    }
    // A BOS that is not the one the tokenizer.json's post-processor adds.
    let mut bos_vocab = byte_vocab();
    bos_vocab.add_bos = true;
    let with_bos = put(
        &mut blobs,
        serde_json::to_vec(&hf_tokenizer_json(&bos_vocab)).unwrap(),
    );
    // A BOS other than the one the post-processor adds, and none while it adds one
    // (`transformers` would render ""): each refused on `bos_token`.
    let other_bos = edit(&|v| {
        v["bos_token"] = "<|im_end|>".into();
        v["add_bos_token"] = true.into();
    });
    let unnamed = edit(&|v| {
        v.as_object_mut().unwrap().remove("bos_token");
        v["add_bos_token"] = true.into();
    });
    for (bytes, prefix) in [(other_bos, "bos_token:"), (unnamed, "bos_token: absent")] {
        let id = put(&mut blobs, bytes);
        match refusal(
            &with_config(task(st, Some(with_bos), true), Some(id)),
            &blobs,
        ) {
            ComputeError::InvalidBlob { reason, .. } => {
                assert!(reason.starts_with(prefix), "{prefix}: {reason}")
            }
            other => panic!("{prefix}: {other}"),
        }
    }
    // The special tokens the file already has may be listed again.
    let listed = put(
        &mut blobs,
        edit(&|v| {
            v["additional_special_tokens"] =
                serde_json::json!(["<|im_start|>", {"content": "<|im_end|>"}]);
            v["pad_token"] = "<|im_end|>".into();
        }),
    );
    InferenceJob::plan(
        &with_config(task(st, Some(json), true), Some(listed)),
        &blobs,
    )
    .unwrap();
}
