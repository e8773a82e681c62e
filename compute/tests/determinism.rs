//! The `repro` profile is bitwise reproducible: golden hashes from `spec/vectors/`, the same hash
//! for any thread count (in separate processes), and a segment re-run from its committed start
//! checkpoint gives the committed end hash.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;
use std::process::Command;

use std::collections::BTreeMap;

use market_compute::{InferenceJob, NoBlobs, TrainState, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{BlobId, Hash, Identity, TaskSpec};
use serde_json::Value;

fn golden(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../spec/vectors")
        .join(file);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn check_golden(file: &str) {
    for v in golden(file) {
        let task: TaskSpec = serde_json::from_value(v["task"].clone()).unwrap();
        let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
        let mut state = job.initial_state();
        let checkpoints = v["checkpoints"].as_array().unwrap();
        assert_eq!(
            state.hash(&job.layout).unwrap().to_string(),
            checkpoints[0]["state_hash"].as_str().unwrap()
        );
        for (seg, expected) in checkpoints[1..].iter().enumerate() {
            state = job.run_segment(seg as u32, &state, |_, _| {}).unwrap().0;
            assert_eq!(u64::from(state.step), expected["step"].as_u64().unwrap());
            assert_eq!(
                state.hash(&job.layout).unwrap().to_string(),
                expected["state_hash"].as_str().unwrap(),
                "{} after segment {seg}",
                v["name"]
            );
        }
    }
}

#[test]
fn golden_mlp_hashes() {
    check_golden("compute-mlp.json");
}

#[test]
fn golden_gpt_hashes() {
    check_golden("compute-gpt.json");
}

/// The blobs a vector carries (id to hex bytes), each checked against its id.
fn vector_blobs(v: &Value) -> BTreeMap<BlobId, Vec<u8>> {
    v["blobs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, hex)| {
            let bytes = hex::decode(hex.as_str().unwrap()).unwrap();
            let id: BlobId = id.parse().unwrap();
            assert_eq!(
                id,
                BlobId(Hash::of(&bytes)),
                "a vector blob's id is its hash"
            );
            (id, bytes)
        })
        .collect()
}

/// Every checkpoint and every segment's mean loss of the cases the example tasks do not reach.
#[test]
fn golden_case_hashes() {
    check_cases("compute-cases.json", 5);
}

/// The same for `llama` training: a fine-tune from a weights file, an untied model, and three
/// query heads per kv head.
#[test]
fn golden_llama_training_hashes() {
    check_cases("compute-llama-train.json", 3);
}

/// Runs each of the `count` vectors of `file` from its task and blobs, checking every
/// checkpoint, every segment's mean loss and the final weights' id.
fn check_cases(file: &str, count: usize) {
    let vectors = golden(file);
    assert_eq!(vectors.len(), count);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let task: TaskSpec = serde_json::from_value(v["task"].clone()).unwrap();
        let blobs = vector_blobs(&v);
        let job = TrainingJob::from_spec(&task, &blobs).unwrap();
        let checkpoints = v["checkpoints"].as_array().unwrap();
        assert_eq!(checkpoints.len() as u32, job.segments() + 1, "{name}");
        let mut state = job.initial_state();
        assert_eq!(
            state.hash(&job.layout).unwrap().to_string(),
            checkpoints[0]["state_hash"].as_str().unwrap(),
            "{name} initial state"
        );
        for (seg, expected) in checkpoints[1..].iter().enumerate() {
            let (next, loss) = job.run_segment(seg as u32, &state, |_, _| {}).unwrap();
            state = next;
            assert_eq!(u64::from(state.step), expected["step"].as_u64().unwrap());
            assert_eq!(
                state.hash(&job.layout).unwrap().to_string(),
                expected["state_hash"].as_str().unwrap(),
                "{name} after segment {seg}"
            );
            assert_eq!(
                format!("{:08x}", loss.to_bits()),
                expected["segment_loss_bits"].as_str().unwrap(),
                "{name} mean loss of segment {seg}"
            );
        }
        let weights = market_compute::init::weights_to_bytes(&job.layout, &state.params).unwrap();
        assert_eq!(
            v["outputs"][0].as_str().unwrap(),
            BlobId(Hash::of(&weights)).to_string(),
            "{name} outputs"
        );
    }
}

/// Inference outputs, leaves and roots: greedy, top-k, full and nucleus (top-p) sampling, and
/// `mlp` rows.
#[test]
fn golden_inference_outputs() {
    let vectors = golden("compute-inference.json");
    assert_eq!(vectors.len(), 6);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let task: TaskSpec = serde_json::from_value(v["task"].clone()).unwrap();
        let out = InferenceJob::from_spec(&task, &vector_blobs(&v))
            .unwrap()
            .run_all(|_| {})
            .unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(out.items.len(), items.len(), "{name}");
        for (got, expected) in out.items.iter().zip(items) {
            assert_eq!(
                hex::encode(&got.bytes),
                expected["bytes_hex"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(got.hash.to_string(), expected["leaf"].as_str().unwrap());
        }
        assert_eq!(out.root.to_string(), v["root"].as_str().unwrap(), "{name}");
        let concat: Vec<u8> = out.items.iter().flat_map(|i| *i.hash.as_bytes()).collect();
        assert_eq!(
            Hash::of(&concat).to_string(),
            v["final_state_hash"].as_str().unwrap(),
            "{name} final_state_hash"
        );
    }
}

#[test]
fn golden_pooled_hashes() {
    for v in golden("compute-pool.json") {
        let task: TaskSpec = serde_json::from_value(v["task"].clone()).unwrap();
        let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
        let hash = |s: &TrainState| s.hash(&job.layout).unwrap().to_string();
        let global_hash = |g: &TrainState| {
            market_compute::pool::global_hash(g, &job.layout)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            global_hash(&market_compute::pool::initial_global(&job)),
            v["initial_global"].as_str().unwrap()
        );
        let rounds = v["rounds"].as_array().unwrap();
        let mut seen = 0;
        market_compute::pool::run_locally(&job, |r| {
            let expected = &rounds[r.round as usize];
            let hashes = |key: &str| -> Vec<String> {
                expected[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h.as_str().unwrap().to_owned())
                    .collect()
            };
            let name = v["name"].as_str().unwrap();
            assert_eq!(
                r.starts.iter().map(&hash).collect::<Vec<_>>(),
                hashes("slot_starts"),
                "{name} round {}",
                r.round
            );
            assert_eq!(
                r.finals.iter().map(&hash).collect::<Vec<_>>(),
                hashes("slot_finals"),
                "{name} round {}",
                r.round
            );
            assert_eq!(global_hash(r.global), expected["global"].as_str().unwrap());
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, rounds.len());
    }
}

/// Runs two segments of the example task and prints the end hash. Only a child process of
/// `child_hash` runs it (ignored otherwise, so it never reports a vacuous pass).
#[test]
#[ignore = "run only as the child of child_hash"]
fn child_prints_segment_hash() {
    let job = TrainingJob::from_spec(
        &training_task(&Identity::from_test_label("buyer"), 3),
        &NoBlobs,
    )
    .unwrap();
    let mut state = job.initial_state();
    for seg in 0..2 {
        state = job.run_segment(seg, &state, |_, _| {}).unwrap().0;
    }
    println!("HASH {}", state.hash(&job.layout).unwrap());
}

fn child_hash(threads: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_prints_segment_hash",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .find_map(|l| l.split_once("HASH ").map(|(_, h)| &h[..64]))
        .unwrap_or_else(|| panic!("child printed no hash: {stdout}"))
        .to_string()
}

#[test]
fn same_hash_for_one_and_two_threads_in_separate_processes() {
    let one = child_hash("1");
    let two = child_hash("2");
    let four = child_hash("4");
    assert_eq!(one, two);
    assert_eq!(one, four);
}

#[test]
fn rerun_from_committed_start_checkpoint_reproduces_end_hash() {
    let job = TrainingJob::from_spec(
        &training_task(&Identity::from_test_label("buyer"), 4),
        &NoBlobs,
    )
    .unwrap();
    let mut checkpoints = vec![job.initial_state().to_bytes(&job.layout).unwrap()];
    let mut state = job.initial_state();
    for seg in 0..3 {
        state = job.run_segment(seg, &state, |_, _| {}).unwrap().0;
        checkpoints.push(state.to_bytes(&job.layout).unwrap());
    }
    // A verifier holds only the committed bytes of checkpoint 1 and re-runs segment 1.
    let start = TrainState::from_bytes(&checkpoints[1], &job.layout).unwrap();
    let (end, _) = job.run_segment(1, &start, |_, _| {}).unwrap();
    assert_eq!(end.to_bytes(&job.layout).unwrap(), checkpoints[2]);
    // Starting from the wrong checkpoint is refused rather than silently run.
    let wrong = TrainState::from_bytes(&checkpoints[0], &job.layout).unwrap();
    assert!(job.run_segment(1, &wrong, |_, _| {}).is_err());
    // A changed byte in the state either fails to parse or hashes differently.
    let mut tampered = checkpoints[2].clone();
    let at = tampered.len() - 5;
    tampered[at] ^= 1;
    if let Ok(s) = TrainState::from_bytes(&tampered, &job.layout) {
        assert_ne!(s.hash(&job.layout).unwrap(), end.hash(&job.layout).unwrap());
    }
}

/// A text dataset's pieces and tokens (`compute-text.json`): the tokenizer built from the
/// vector's GGUF keys, the text cut and tokenized as section 3 says.
#[test]
fn golden_text_dataset_tokens() {
    use market_compute::data::text::{pieces, tokenize};
    use market_compute::data::Dataset;
    use market_compute::llama::gguf::GgufVocab;
    use market_compute::llama::text::TextCodec;

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors/compute-text.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let k = &doc["tokenizer"];
    let strings = |key: &str| -> Vec<String> { serde_json::from_value(k[key].clone()).unwrap() };
    let vocab = GgufVocab {
        model: k["tokenizer.ggml.model"].as_str().unwrap().into(),
        pre: k["tokenizer.ggml.pre"].as_str().unwrap().into(),
        tokens: strings("tokenizer.ggml.tokens"),
        token_types: serde_json::from_value(k["tokenizer.ggml.token_type"].clone()).unwrap(),
        merges: strings("tokenizer.ggml.merges"),
        bos: serde_json::from_value(k["tokenizer.ggml.bos_token_id"].clone()).unwrap(),
        eos: serde_json::from_value(k["tokenizer.ggml.eos_token_id"].clone()).unwrap(),
        add_bos: k["tokenizer.ggml.add_bos_token"].as_bool().unwrap(),
        chat_template: None,
    };
    let codec = TextCodec::from_gguf(&vocab).unwrap();
    let text = doc["text"].as_str().unwrap();
    let mut end = 0;
    let ends: Vec<u64> = pieces(text)
        .map(|p| {
            end += p.len() as u64;
            end
        })
        .collect();
    let want_ends: Vec<u64> = serde_json::from_value(doc["piece_ends"].clone()).unwrap();
    assert_eq!(ends, want_ends);
    let Dataset::Tokens(tokens) = tokenize(text.as_bytes(), &codec, vocab.tokens.len()).unwrap()
    else {
        panic!("a text dataset is a token stream")
    };
    let want: Vec<u32> = serde_json::from_value(doc["tokens"].clone()).unwrap();
    assert_eq!(tokens, want);
    // The same tokenizer as a Hugging Face tokenizer.json (11.7a): the same tokens.
    let json = serde_json::to_vec(&doc["tokenizer_json"]).unwrap();
    let from_json = market_compute::data::text::tokenizer_from_blob(&json).unwrap();
    let Dataset::Tokens(again) = tokenize(text.as_bytes(), &from_json, vocab.tokens.len()).unwrap()
    else {
        panic!("a text dataset is a token stream")
    };
    assert_eq!(again, want);
}
