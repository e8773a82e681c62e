//! End to end over a real socket: a buyer posts a training and an inference task through the
//! typed client; workers and verifiers complete them; the buyer fetches results; balances move
//! exactly as the ledger's entries say; a cheating worker is slashed and its task completed by
//! another worker; the exported ledger verifies.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use market_node::client::{Client, ClientError};
use market_node::config::NodeConfig;
use market_node::dispatch::{InProcess, VerifierMode};
use market_node::engine::Node;
use market_node::model::TaskState;
use market_protocol::fixtures::{inference_task, training_task};
use market_protocol::*;
use market_worker::Behavior;

/// Serves `node` on a free loopback port; returns its URL, a stop switch and the server task.
async fn serve(
    node: Arc<Node>,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(market_node::server::serve(node, listener, async {
        let _ = stopped.await;
    }));
    (url, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_worker_verifiers_and_a_cheater_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let cheater = Identity::from_test_label("e2e cheater");
    let honest = Identity::from_test_label("e2e honest");
    let verifiers = [
        Identity::from_test_label("e2e v1"),
        Identity::from_test_label("e2e v2"),
    ];
    let dispatch = InProcess {
        workers: vec![
            (cheater.clone(), Behavior::Skip(0.5)),
            (honest.clone(), Behavior::Honest),
        ],
        verifiers: verifiers
            .iter()
            .map(|v| (v.clone(), VerifierMode::Honest))
            .collect(),
    };
    let config = NodeConfig::default();
    let (node, buyer) = common::open_with(
        dir.path(),
        config.clone(),
        "e2e",
        Arc::new(dispatch),
        common::Funding::LEAN,
    )
    .await;
    let (url, stop, server) = serve(node.clone()).await;

    let client = Client::new(&url, Some(buyer.clone()));
    client.register().await.unwrap();
    let mut training = training_task(&buyer, 1);
    if let Workload::Training(t) = &mut training.workload {
        t.steps = 60;
    }
    let mut inference = inference_task(&buyer, 2);
    inference.profile = ExecutionProfile::Repro;
    if let Workload::Inference(i) = &mut inference.workload {
        i.weights = None;
    }
    let prices = training.price.0 + inference.price.0;
    let a = client.submit(training).await.unwrap();
    let b = client.submit(inference).await.unwrap();
    for id in [a.id, b.id] {
        let t = client
            .wait(&id, Duration::from_secs(180), |_| {})
            .await
            .unwrap();
        assert_eq!(t.state, TaskState::Settled, "{t:?}");
        let result = client.result(&id).await.unwrap();
        assert!(!result["outputs"].as_array().unwrap().is_empty());
    }
    // The inference results are text the buyer can read; nobody else can.
    let items = client.result(&b.id).await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(items, 2);
    let stranger = Client::new(&url, Some(Identity::from_test_label("e2e stranger")));
    assert!(matches!(
        stranger.result(&b.id).await,
        Err(ClientError::Api { status: 403, .. })
    ));

    // The cheater was tried first on the first task (new accounts tie, the dispatcher's order
    // breaks it), caught and slashed; the honest worker completed it. The second task went to
    // the honest worker at once: a slashed worker's reputation puts it behind one that has
    // delivered. Balances follow the entries exactly: the slash pays each catching verifier a
    // fee and the rest to the buyer.
    let first = client.task(&a.id).await.unwrap();
    assert_eq!(first.attempts.len(), 2);
    assert_eq!(first.attempts[0].worker, cheater.account());
    assert!(!first.attempts[0].accepted && first.attempts[1].accepted);
    let second = client.task(&b.id).await.unwrap();
    assert_eq!(second.attempts.len(), 1);
    assert_eq!(second.attempts[0].worker, honest.account());
    assert!(second.attempts[0].accepted);
    let catchers: Vec<AccountId> = first.attempts[0]
        .verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.verifier)
        .collect();
    assert!(!catchers.is_empty());
    let fee = config.verifier_fee;
    let slash = config.worker_slash;
    let account = |v: serde_json::Value, field: &str| v[field].as_u64().unwrap();
    assert_eq!(
        account(client.account(&buyer.account()).await.unwrap(), "balance"),
        10_000 - prices + (slash - catchers.len() as u64 * fee)
    );
    assert_eq!(
        account(client.account(&cheater.account()).await.unwrap(), "staked"),
        300 - slash
    );
    assert_eq!(
        account(client.account(&honest.account()).await.unwrap(), "balance"),
        prices - 4 * fee
    );
    for v in &verifiers {
        // A fee per accepted audit and a fee from the cheater's stake if it caught it. A
        // verifier whose own sample missed the faked segments passed honestly: not slashed.
        let caught = u64::from(catchers.contains(&v.account()));
        assert_eq!(
            account(client.account(&v.account()).await.unwrap(), "balance"),
            2 * fee + caught * fee
        );
        assert_eq!(
            account(client.account(&v.account()).await.unwrap(), "staked"),
            100
        );
    }
    let export = client.ledger_export().await.unwrap();
    let report = market_ledger::verify_export(
        std::io::Cursor::new(export),
        std::path::Path::new("export"),
        None,
    )
    .unwrap();
    assert!(report.lines > 15);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_that_passes_a_ringer_is_slashed_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("e2e ringer worker");
    let lazy = Identity::from_test_label("e2e lazy verifier");
    let careful = Identity::from_test_label("e2e careful verifier");
    let dispatch = InProcess {
        workers: vec![(worker.clone(), Behavior::Honest)],
        verifiers: vec![
            (lazy.clone(), VerifierMode::Lazy),
            (careful.clone(), VerifierMode::Honest),
        ],
    };
    let config = NodeConfig {
        ringer_rate_ppm: 1_000_000,
        ..NodeConfig::default()
    };
    let (node, buyer) = common::open_with(
        dir.path(),
        config.clone(),
        "e2e ringer",
        Arc::new(dispatch),
        common::Funding {
            buyer: 5_000,
            ..common::Funding::LEAN
        },
    )
    .await;
    let (url, stop, server) = serve(node.clone()).await;
    let client = Client::new(&url, Some(buyer.clone()));
    let mut task = training_task(&buyer, 7);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 60;
    }
    let view = client.submit(task).await.unwrap();
    let t = client
        .wait(&view.id, Duration::from_secs(180), |_| {})
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled);
    let staked = |v: serde_json::Value| v["staked"].as_u64().unwrap();
    assert_eq!(
        staked(client.account(&lazy.account()).await.unwrap()),
        100 - config.verifier_slash
    );
    assert_eq!(
        staked(client.account(&careful.account()).await.unwrap()),
        100
    );
    assert!(
        client.account(&lazy.account()).await.unwrap()["reputation"]
            .as_i64()
            .unwrap()
            < 0
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The pinned SmolLM2 GGUF (`scripts/fetch-models.sh`), or `None` (skipping) when it is not
/// installed and `MARKET_REQUIRE_MODELS` is not set.
fn smollm2() -> Option<Vec<u8>> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) if std::env::var_os("MARKET_REQUIRE_MODELS").is_some() => {
            panic!("{} is missing: run scripts/fetch-models.sh", path.display())
        }
        Err(_) => {
            eprintln!(
                "skipped: {} is missing: run scripts/fetch-models.sh",
                path.display()
            );
            None
        }
    }
}

/// Issue 15's end to end: a buyer uploads SmolLM2 as a GGUF blob, asks it questions in chat
/// form through the API, and reads verified answers; every answer was checked by the
/// verifiers in one forward pass before the worker was paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_asks_smollm2_and_gets_verified_answers_over_http() {
    let Some(gguf) = smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let worker = Identity::from_test_label("llm worker");
    let verifiers = [
        Identity::from_test_label("llm v1"),
        Identity::from_test_label("llm v2"),
    ];
    let dispatch = InProcess {
        workers: vec![(worker.clone(), Behavior::Honest)],
        verifiers: verifiers
            .iter()
            .map(|v| (v.clone(), VerifierMode::Honest))
            .collect(),
    };
    let (node, buyer) = common::open_with(
        dir.path(),
        NodeConfig::default(),
        "llm",
        Arc::new(dispatch),
        common::Funding::LEAN,
    )
    .await;
    let (url, stop, server) = serve(node.clone()).await;
    let client = Client::new(&url, Some(buyer.clone()));
    client.register().await.unwrap();
    let weights = client.upload(gguf).await.unwrap();
    let mut task = inference_task(&buyer, 1);
    task.profile = ExecutionProfile::Repro;
    let ask = |q: &str| {
        vec![ChatMessage {
            role: "user".into(),
            content: q.into(),
        }]
    };
    let dec = |s: &str| s.parse::<Decimal>().unwrap();
    task.workload = Workload::Inference(InferenceSpec {
        model: ModelSpec::Llama {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            vocab_size: 49152,
            max_position_embeddings: 8192,
            rms_norm_eps: dec("0.00001"),
            rope_theta: dec("100000"),
            tie_word_embeddings: true,
        },
        weights: Some(weights),
        tokenizer: None,
        tokenizer_config: None,
        chat_template: None,
        inputs: InferenceInputs::Chat {
            chats: vec![
                ask("What is the capital of France?"),
                ask("What is the capital of Germany?"),
            ],
            max_new_tokens: 24,
            stop: Vec::new(),
        },
        decoding: Decoding::Greedy,
    });
    task.audit = AuditPolicy {
        detection_target: dec("0.99"),
        assumed_faked_fraction: dec("0.5"),
    };
    let posted = client.submit(task).await.unwrap();
    let t = client
        .wait(&posted.id, Duration::from_secs(300), |_| {})
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    let view = client.task(&posted.id).await.unwrap();
    assert_eq!(view.attempts.len(), 1);
    assert!(view.attempts[0].accepted);
    assert!(
        !view.attempts[0].verdicts.is_empty() && view.attempts[0].verdicts.iter().all(|v| v.passed),
        "{:?}",
        view.attempts[0].verdicts
    );
    let result = client.result(&posted.id).await.unwrap();
    let items: Vec<String> = result["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].contains("Paris"), "{items:?}");
    assert!(items[1].contains("Berlin"), "{items:?}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Issue 15, fine-tuning: a buyer uploads text, a GGUF file whose tokenizer splits it, and
/// pretrained `llama` weights (a weights file with Hugging Face names), posts a `repro`
/// training task from them, and gets
/// trained weights back. The first worker cheats on it and is caught by the audit as on a
/// `gpt`; the honest worker's run settles; the weights it returns are the task's re-executed
/// run's, bit for bit, and still carry the Hugging Face names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llama_is_fine_tuned_audited_and_returned_over_http() {
    use market_compute::init::{init_params, weights_from_bytes, weights_to_bytes};
    use market_compute::llama::fixtures::tiny_config;
    let dir = tempfile::tempdir().unwrap();
    let cheater = Identity::from_test_label("tune cheater");
    let honest = Identity::from_test_label("tune honest");
    let dispatch = InProcess {
        workers: vec![
            (cheater.clone(), Behavior::Skip(0.5)),
            (honest.clone(), Behavior::Honest),
        ],
        verifiers: ["tune v1", "tune v2"]
            .iter()
            .map(|l| (Identity::from_test_label(l), VerifierMode::Honest))
            .collect(),
    };
    let (node, buyer) = common::open_with(
        dir.path(),
        NodeConfig::default(),
        "tune",
        Arc::new(dispatch),
        common::Funding::LEAN,
    )
    .await;
    let (url, stop, server) = serve(node.clone()).await;
    let client = Client::new(&url, Some(buyer.clone()));
    client.register().await.unwrap();

    let mut config = tiny_config();
    config.max_position_embeddings = 16;
    let layout = config.layout();
    let pretrained = init_params(
        &market_compute::zoo::ModelConfig::Llama(config),
        &layout,
        77,
    );
    let weights = client
        .upload(weights_to_bytes(&layout, &pretrained).unwrap())
        .await
        .unwrap();
    // Text, tokenized by the worker and the verifiers with a GGUF file's tokenizer (the tiny
    // model's byte vocabulary): the buyer uploads both and holds both.
    let dataset = client
        .upload(b"the quick brown fox jumps over the lazy dog;\n".repeat(45))
        .await
        .unwrap();
    let tokenizer = client
        .upload(market_compute::llama::fixtures::tiny_gguf(1).unwrap())
        .await
        .unwrap();
    let mut task = training_task(&buyer, 1);
    if let Workload::Training(t) = &mut task.workload {
        t.model = config.to_spec().unwrap();
        t.dataset = DatasetSource::Text {
            id: dataset,
            tokenizer,
        };
        t.initial_weights = Some(weights);
        t.batch_size = 2;
        t.steps = 20;
        t.checkpoint_interval = 5;
    }
    let posted = client.submit(task.clone()).await.unwrap();
    let t = client
        .wait(&posted.id, Duration::from_secs(300), |_| {})
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    // The node tokenized the text once and keeps the tokens (checked whole on reading) for
    // its later builds of the job: one file, the text's tokens.
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("blobs/derived"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept.len(), 1);
    let tokens = market_compute::data::text::tokens_from_kept(&kept[0], config.vocab_size)
        .expect("the kept tokens read back");
    assert!(tokens.len() > 100, "{}", tokens.len());
    assert_eq!(t.attempts.len(), 2, "{t:?}");
    assert_eq!(t.attempts[0].worker, cheater.account());
    assert!(!t.attempts[0].accepted && t.attempts[0].verdicts.iter().any(|v| !v.passed));
    assert!(t.attempts[1].accepted && t.attempts[1].verdicts.iter().all(|v| v.passed));

    // The weights returned: the run re-executed here, bit for bit, under Hugging Face names.
    let result = client.result(&posted.id).await.unwrap();
    let out: BlobId = result["outputs"][0].as_str().unwrap().parse().unwrap();
    let file = dir.path().join("tuned.safetensors");
    client.download_blob(&out, &file, |_, _| {}).await.unwrap();
    let tuned = std::fs::read(&file).unwrap();
    let names = safetensors::SafeTensors::deserialize(&tuned)
        .unwrap()
        .names()
        .len();
    assert_eq!(names, layout.slots().len());
    // Its Hugging Face config.json describes those tensors: every shape follows from it.
    let hf = &result["hf_config"];
    assert_eq!(hf["model_type"], "llama");
    assert_eq!(hf["architectures"][0], "LlamaForCausalLM");
    let dim = |k: &str| hf[k].as_u64().unwrap() as usize;
    let st = safetensors::SafeTensors::deserialize(&tuned).unwrap();
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    let (h, kv) = (
        dim("hidden_size"),
        dim("num_key_value_heads") * dim("head_dim"),
    );
    assert_eq!(shape("model.embed_tokens.weight"), [dim("vocab_size"), h]);
    let last = dim("num_hidden_layers") - 1;
    let layer = |n: &str| shape(&format!("model.layers.{last}.{n}.weight"));
    assert_eq!(
        layer("self_attn.q_proj"),
        [dim("num_attention_heads") * dim("head_dim"), h]
    );
    assert_eq!(layer("self_attn.k_proj"), [kv, h]);
    assert_eq!(layer("mlp.gate_proj"), [dim("intermediate_size"), h]);
    assert!(st
        .tensor(&format!("model.layers.{}.mlp.up_proj.weight", last + 1))
        .is_err());
    assert_eq!(
        st.tensor("lm_head.weight").is_err(),
        hf["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(
        hf["rms_norm_eps"].as_f64().unwrap() as f32,
        config.rms_norm_eps
    );
    assert_eq!(hf["rope_theta"].as_f64().unwrap() as f32, config.rope_theta);
    // What the CLI checks before writing it: exactly a llama config, nothing added.
    assert_eq!(
        market_compute::llama::LlamaConfig::from_hf_config_json(hf).unwrap(),
        config
    );
    let mut forged = hf.clone();
    forged["auto_map"] = serde_json::json!({"AutoModelForCausalLM": "evil.Model"});
    assert!(market_compute::llama::LlamaConfig::from_hf_config_json(&forged).is_err());
    let mut wrong = hf.clone();
    wrong["num_hidden_layers"] = serde_json::json!(7);
    let seven = market_compute::llama::LlamaConfig::from_hf_config_json(&wrong).unwrap();
    assert!(market_compute::init::check_weights(&seven.layout(), &tuned).is_err());
    let got = weights_from_bytes(&layout, &tuned).unwrap();
    let mut blobs = std::collections::BTreeMap::new();
    blobs.insert(dataset, bytes_of(&client, &dataset, dir.path()).await);
    blobs.insert(tokenizer, bytes_of(&client, &tokenizer, dir.path()).await);
    blobs.insert(weights, weights_to_bytes(&layout, &pretrained).unwrap());
    let job = market_compute::TrainingJob::from_spec(&task, &blobs).unwrap();
    let mut state = job.initial_state();
    for segment in 0..job.segments() {
        state = job.run_segment(segment, &state, |_, _| {}).unwrap().0;
    }
    assert_eq!(got, state.params);
    assert_ne!(got, pretrained);

    // The tuned weights serve as they came back: an inference task names the safetensors
    // result and the tokenizer, and its verified answer is the one computed here.
    let mut ask = inference_task(&buyer, 2);
    ask.profile = ExecutionProfile::Repro;
    if let Workload::Inference(i) = &mut ask.workload {
        i.model = config.to_spec().unwrap();
        i.weights = Some(out);
        i.tokenizer = Some(tokenizer);
        i.inputs = InferenceInputs::Prompts {
            prompts: vec!["the q".into(), "over".into()],
            max_new_tokens: 8,
        };
        i.decoding = Decoding::Greedy;
    }
    let posted = client.submit(ask.clone()).await.unwrap();
    let t = client
        .wait(&posted.id, Duration::from_secs(300), |_| {})
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    let served = client.result(&posted.id).await.unwrap();
    let served_blobs =
        std::collections::BTreeMap::from([(out, tuned), (tokenizer, blobs[&tokenizer].clone())]);
    let here = market_compute::InferenceJob::from_spec(&ask, &served_blobs)
        .unwrap()
        .run_all(|_| {})
        .unwrap();
    for (i, item) in here.items.iter().enumerate() {
        let id: BlobId = served["outputs"][i].as_str().unwrap().parse().unwrap();
        assert_eq!(bytes_of(&client, &id, dir.path()).await, item.bytes);
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The bytes of blob `id`, downloaded through the client into `dir`.
async fn bytes_of(client: &Client, id: &BlobId, dir: &std::path::Path) -> Vec<u8> {
    let file = dir.join(format!("{id}.blob"));
    client.download_blob(id, &file, |_, _| {}).await.unwrap();
    std::fs::read(file).unwrap()
}
