//! Served inference through the node (`cargo bench -p market-node --bench serve`): a node with
//! its HTTP API on loopback, a serving worker daemon joined over libp2p (one process, each with
//! its own swarm), and the same model called directly in this process as the baseline.
//!
//! Reported from the real paths, each the median of its runs:
//!
//! - **time to first token**: from sending a streamed `POST /v1/chat/completions` to the first
//!   content chunk, against the direct call's first streamed piece (the difference is the
//!   node's and the network's overhead: hold, routing, `generate`, `text` relays, SSE);
//! - **tokens per second** of the whole answer, through the API against direct;
//! - **requests per second** the node sustains with 8 concurrent clients asking short answers.
//!
//! Uses SmolLM2-135M-Instruct when `scripts/fetch-models.sh` installed it, else the tiny test
//! llama (then the figures say little about a real model). Audits are held back (batches close
//! only after the run) so they do not share the CPU with what is measured.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary reports on stdout.

mod common;

use std::time::{Duration, Instant};

use common::networked_node;
use market_compute::serving::{ServePrompt, ServeRequest, ServedModel};
use market_node::config::NodeConfig;
use market_node::p2p::P2pOptions;
use market_protocol::{AuditPolicy, ChatMessage, Credits, Decoding, ExecutionProfile, Identity};
use market_worker::serve::ServeOptions;

const QUESTION: &str = "Write one sentence about the sea.";
const TOKENS: u32 = 48;
const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One streamed request through the API: (time to first content, total time, tokens).
async fn through_api(http: &reqwest::Client, api: &str, key: &str) -> (f64, f64, u64) {
    let body = serde_json::json!({
        "model": "bench", "max_tokens": TOKENS, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": QUESTION}],
    });
    let start = Instant::now();
    let mut response = http
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let mut first = None;
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        let piece = String::from_utf8_lossy(&chunk);
        if first.is_none() && piece.contains("\"content\"") {
            first = Some(start.elapsed().as_secs_f64());
        }
        text.push_str(&piece);
    }
    let total = start.elapsed().as_secs_f64();
    let tokens = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find_map(|c| c["usage"]["completion_tokens"].as_u64())
        .unwrap();
    (first.unwrap_or(total), total, tokens)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smollm2 = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (model_name, bytes) = match std::fs::read(&smollm2) {
        Ok(b) => ("SmolLM2-135M-Instruct (Q4_1)", b),
        Err(_) => (
            "the tiny test llama",
            market_compute::llama::fixtures::tiny_gguf(7).unwrap(),
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let config = NodeConfig {
        serve_batch_secs: 3600,
        serve_batch_answers: 1_000_000,
        ..NodeConfig::default()
    };
    let (node, _dispatch, addrs) = networked_node(
        &dir.path().join("node"),
        config,
        "bench operator",
        P2pOptions::default(),
    )
    .await;
    let buyer = Identity::from_test_label("bench buyer");
    let worker = Identity::from_test_label("bench server");
    node.fund("bench", &buyer.account(), 100_000_000, 0)
        .await
        .unwrap();
    node.fund("bench", &worker.account(), 1_000, 0)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app = market_node::api::router(node.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = market_node::client::Client::new(&api, Some(buyer.clone()));
    client.upload(bytes.clone()).await.unwrap();
    tokio::spawn(market_worker::daemon::run(
        worker.clone(),
        market_worker::daemon::WorkerOptions {
            market: addrs[0].clone(),
            data_dir: dir.path().join("server"),
            cache_bytes: market_net::participant::DEFAULT_CACHE_BYTES,
            behavior: market_worker::Behavior::Honest,
            stake: 500,
            device: "cpu".into(),
            listen: Vec::new(),
            status_line: false,
            relay: false,
            serve: Some(ServeOptions {
                models: vec![("bench".into(), path.clone())],
                price_per_token: 1,
                concurrency: 2,
                profile: ExecutionProfile::Repro,
                fault: None,
                fault_every: 1,
            }),
        },
    ));
    let http = reqwest::Client::new();
    for _ in 0..1200 {
        let v: serde_json::Value = http
            .get(format!("{api}/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["data"][0]["id"] == "bench" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = client.create_key("bench", None).await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();

    // Direct: the same model, request and decoding, called in this process.
    let direct_model =
        ServedModel::load(&bytes, ExecutionProfile::Repro, worker.account()).unwrap();
    let request = ServeRequest {
        buyer: buyer.account(),
        nonce: 1,
        weights: direct_model.weights,
        model: direct_model.model.clone(),
        profile: ExecutionProfile::Repro,
        prompt: ServePrompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: QUESTION.into(),
        }]),
        max_new_tokens: TOKENS,
        stop: Vec::new(),
        decoding: Decoding::Greedy,
        seed: 0,
        price: Credits(0),
        audit: AuditPolicy {
            detection_target: "0.99".parse().unwrap(),
            assumed_faked_fraction: "0.1".parse().unwrap(),
        },
    }
    .to_task();
    let (mut d_first, mut d_rate, mut a_first, mut a_rate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One warm-up each, then alternate so both see the same machine.
    let _ = through_api(&http, &api, &key).await;
    for _ in 0..=RUNS {
        let task = request.clone();
        let m = direct_model.clone();
        let (first, total, tokens) = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut first = None;
            let served = m
                .answer(&task, &mut |_| {
                    first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                })
                .unwrap();
            let record =
                market_compute::inference::AnswerRecord::from_bytes(&served.output.bytes).unwrap();
            (
                first.unwrap_or(0.0),
                start.elapsed().as_secs_f64(),
                record.tokens.len() as u64,
            )
        })
        .await
        .unwrap();
        d_first.push(first);
        d_rate.push(tokens as f64 / total);
        let (first, total, tokens) = through_api(&http, &api, &key).await;
        a_first.push(first);
        a_rate.push(tokens as f64 / total);
    }
    let (df, af) = (median(d_first), median(a_first));
    let (dr, ar) = (median(d_rate), median(a_rate));
    println!("served inference: {model_name}, repro, {TOKENS} tokens greedy, median of {RUNS}");
    println!(
        "  time to first token: direct {:.1} ms, through the node {:.1} ms: overhead {:.1} ms",
        df * 1e3,
        af * 1e3,
        (af - df) * 1e3
    );
    println!(
        "  tokens/s: direct {dr:.1}, through the node {ar:.1}: ratio {:.3}",
        ar / dr
    );

    // 8 concurrent clients, short answers.
    let requests = 8 * 4;
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, api, key) = (http.clone(), api.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..requests / 8 {
                let body = serde_json::json!({
                    "model": "bench", "max_tokens": 4, "temperature": 0,
                    "messages": [{"role": "user", "content": format!("client {c} question {i}")}],
                });
                // A request waits for a free slot at the node (up to 30 s); a 503 past that
                // is retried, as OpenAI's clients do, so each request counts once.
                loop {
                    let r = http
                        .post(format!("{api}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    if r.status().is_success() {
                        break;
                    }
                    assert_eq!(r.status(), 503);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  8 concurrent clients, {requests} requests of 4 tokens: {:.1} requests/s (worker concurrency 2)",
        requests as f64 / secs
    );
}
