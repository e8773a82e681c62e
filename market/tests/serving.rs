//! Serving over the network: workers keep a model loaded, the node routes OpenAI-compatible
//! requests to them over libp2p and streams the answers back, each with a receipt a buyer can
//! check on its own (the worker's signature, the record's hash, one forward pass).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use common::{call, signed, upload};
use market_compute::llama::fixtures::tiny_gguf;
use market_compute::{BlobSource, InferenceJob};

use market_net::Multiaddr;
use market_node::config::NodeConfig;
use market_node::engine::Node;
use market_node::p2p::P2pOptions;
use market_protocol::*;
use market_protocol::{beacon, vrf};
use market_worker::serve::ServeOptions;
use market_worker::Behavior;
use serde_json::{json, Value};

struct Market {
    node: Arc<Node>,
    dispatch: Arc<market_node::p2p::P2pDispatch>,
    app: Router,
    addr: Multiaddr,
    dir: tempfile::TempDir,
    buyer: Identity,
    model: PathBuf,
    /// The name workers serve it under.
    model_name: &'static str,
    model_bytes: Vec<u8>,
}

/// Batches close a second after their first answer and are checked whole.
fn config() -> NodeConfig {
    NodeConfig {
        serve_batch_secs: 1,
        serve_audit_ppm: 1_000_000,
        ..NodeConfig::default()
    }
}

async fn market() -> Market {
    market_with(config()).await
}

/// A market with one honest verifier, who checks the sampled answers.
async fn market_with(config: NodeConfig) -> Market {
    let m = market_without_verifiers(config).await;
    verifier(&m, "serving verifier", None).await;
    m
}

/// A verifier daemon checking served answers (dishonestly with `fault`), staking 200; returns
/// once the node has it.
async fn verifier(
    m: &Market,
    label: &str,
    fault: Option<market_verifier::answers::CheckFault>,
) -> Identity {
    let id = common::verifier_daemon(&m.node, &m.addr, m.dir.path(), label, 200, fault).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(m
        .dispatch
        .participants()
        .get(&id.account())
        .is_some_and(|p| p.connected)
        && m.node.ledger.stake(&id.account()).0 >= 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "verifier {label} never joined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    id
}

async fn market_without_verifiers(config: NodeConfig) -> Market {
    let common::Networked {
        node,
        dispatch,
        addr,
        dir,
        buyer,
    } = common::networked("serving", config, P2pOptions::default()).await;
    let app = market_node::api::router(node.clone());
    let model_bytes = tiny_gguf(11).unwrap();
    let model = dir.path().join("tiny.gguf");
    std::fs::write(&model, &model_bytes).unwrap();
    Market {
        node,
        dispatch,
        app,
        addr,
        dir,
        buyer,
        model,
        model_name: "tiny",
        model_bytes,
    }
}

/// A worker serving the market's model (`m.model`, under `m.model_name`) at `price` per
/// token.
async fn serving_worker(m: &Market, label: &str, price: u64) -> Identity {
    cheating_worker(m, label, price, None).await
}

/// A serving worker that fakes its answers with `fault`.
async fn cheating_worker(
    m: &Market,
    label: &str,
    price: u64,
    fault: Option<market_worker::serve::ServeFault>,
) -> Identity {
    cheater_with(m, label, price, fault, 1, 200).await
}

/// A serving worker faking one answer in `every` with `fault`, holding `stake`.
async fn cheater_with(
    m: &Market,
    label: &str,
    price: u64,
    fault: Option<market_worker::serve::ServeFault>,
    every: u32,
    stake: u64,
) -> Identity {
    let id = Identity::from_test_label(label);
    m.node
        .fund("test", &id.account(), stake + 1_000, 0)
        .await
        .unwrap();
    let options = market_worker::daemon::WorkerOptions {
        market: m.addr.clone(),
        data_dir: m.dir.path().join(label),
        cache_bytes: market_net::participant::DEFAULT_CACHE_BYTES,
        behavior: Behavior::Honest,
        stake,
        device: "cpu".into(),
        listen: Vec::new(),
        status_line: false,
        relay: false,
        serve: Some(ServeOptions {
            models: vec![(m.model_name.into(), m.model.clone())],
            price_per_token: price,
            concurrency: 2,
            profile: ExecutionProfile::Repro,
            fault,
            fault_every: every,
        }),
    };
    tokio::spawn(market_worker::daemon::run(id.clone(), options));
    id
}

async fn wait_models(m: &Market, workers: u64) -> Value {
    for _ in 0..600 {
        let (status, v) = call(&m.app, common::get("/v1/models")).await;
        assert_eq!(status, StatusCode::OK);
        if v["data"][0]["workers"].as_u64() == Some(workers) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the model was never served by {workers} workers");
}

async fn new_key(m: &Market, who: &Identity, limit: Option<u64>) -> (String, String) {
    let body = serde_json::to_vec(&json!({"name": "test", "spending_limit": limit})).unwrap();
    let (status, v) = call(&m.app, signed(who, "POST", "/v1/keys", body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

fn bearer(method: &str, uri: &str, key: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .unwrap()
}

/// Sends a request and returns status, receipt header and body.
async fn send(m: &Market, req: Request<Body>) -> (StatusCode, Option<String>, String) {
    use tower::ServiceExt;
    let resp = m.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let receipt = resp
        .headers()
        .get("x-market-receipt")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, receipt, String::from_utf8(bytes.to_vec()).unwrap())
}

struct Blob(Vec<u8>);

impl BlobSource for Blob {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        (BlobId::of(&self.0) == *id).then(|| self.0.clone())
    }
}

/// What a buyer checks of a receipt on its own: the worker's signature over the request's id
/// and the record's hash, and the record against the model in one forward pass.
fn check_receipt(m: &Market, receipt: &Value, id: &str) -> String {
    let answer: Signed<Answer> = serde_json::from_value(receipt["answer"].clone()).unwrap();
    let body = answer.verify().unwrap().clone();
    let request: TaskSpec = serde_json::from_value(receipt["request"].clone()).unwrap();
    assert_eq!(TaskId(message_id(&request).unwrap()).to_string(), id);
    assert_eq!(body.request.to_string(), id);
    let record = receipt["record"].as_str().unwrap();
    assert_eq!(body.output, StateHash(Hash::of(record.as_bytes())));
    let job = InferenceJob::from_spec(&request, &Blob(m.model_bytes.clone())).unwrap();
    assert_eq!(job.check_item(0, record.as_bytes()).unwrap(), Some(Ok(())));
    body.worker.to_hex()
}

fn sse_contents(body: &str) -> (String, Vec<Value>, bool) {
    let mut text = String::new();
    let mut chunks = Vec::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        chunks.push(v);
    }
    (text, chunks, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn served_answers_stream_over_the_network_with_receipts_a_buyer_can_check() {
    let m = market().await;
    // The node must hold the weights before it takes them as an offer.
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let worker = serving_worker(&m, "serving worker a", 2).await;
    let models = wait_models(&m, 1).await;
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["price_per_token"], 2);
    let (key, key_id) = new_key(&m, &m.buyer, None).await;

    // A whole answer, greedy.
    let ask = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
                     "max_tokens": 16, "temperature": 0});
    let (status, receipt, body) = send(
        &m,
        bearer("POST", "/v1/chat/completions", &key, ask.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let whole: Value = serde_json::from_str(&body).unwrap();
    let receipt = receipt.unwrap();
    assert_eq!(whole["id"], format!("chatcmpl-{receipt}"));
    assert_eq!(whole["object"], "chat.completion");
    let content = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(whole["receipt"]["status"], "pending");

    // Its receipt: checkable without trusting the node or the worker.
    let (status, _, body) = send(
        &m,
        bearer("GET", &format!("/v1/receipts/{receipt}"), &key, Value::Null),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(check_receipt(&m, &r, &receipt), worker.account().to_hex());
    let record: Value = serde_json::from_str(r["record"].as_str().unwrap()).unwrap();
    assert_eq!(record["text"], content.as_str());
    let cost = r["cost"].as_u64().unwrap();
    assert_eq!(cost, 2 * usage["total_tokens"].as_u64().unwrap());
    // The request's hold was escrowed before it ran (the receipt's first entry); the rest of
    // the hold went back once the answer's cost was known, so only the cost stays escrowed
    // (until the batch pays it out).
    let id: TaskId = receipt.parse().unwrap();
    let escrow = m.node.ledger.escrow_of(&id).unwrap();
    assert!(escrow.amount.0 > cost, "the hold covers max_tokens");
    assert!(escrow.remaining.0 == cost || escrow.remaining.0 == 0);
    // The receipt lists the escrow, then the hold's unused part going back to the buyer.
    let entries: Vec<u64> = r["ledger_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_u64().unwrap())
        .collect();
    let kinds: Vec<String> = entries
        .iter()
        .map(|&seq| {
            m.node
                .ledger
                .entry(seq)
                .unwrap()
                .unwrap()
                .body
                .key
                .as_str()
                .to_string()
        })
        .collect();
    assert!(kinds[0].starts_with("serve_escrow:"), "{kinds:?}");
    assert!(kinds[1].starts_with("serve_unused:"), "{kinds:?}");
    assert!(!m.node.store.has_hold(&id).unwrap());

    // The same request streamed: chunks that add up to the same answer, then [DONE].
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, stream_receipt, body) =
        send(&m, bearer("POST", "/v1/chat/completions", &key, streamed)).await;
    assert_eq!(status, StatusCode::OK);
    let (text, chunks, done) = sse_contents(&body);
    assert!(done, "{body}");
    assert_eq!(text, content);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let last = chunks
        .iter()
        .rev()
        .find(|c| c["choices"][0]["finish_reason"].is_string());
    assert!(last.is_some(), "a chunk names the finish reason");
    assert_eq!(chunks.last().unwrap()["usage"], *usage);
    assert_ne!(
        stream_receipt.unwrap(),
        receipt,
        "each request has its own receipt"
    );

    // Sampling, seeded: its receipt checks too.
    let sampled = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 12, "temperature": 0.7, "seed": 5});
    let (status, receipt, _) =
        send(&m, bearer("POST", "/v1/chat/completions", &key, sampled)).await;
    assert_eq!(status, StatusCode::OK);
    let receipt = receipt.unwrap();
    let (_, _, body) = send(
        &m,
        bearer("GET", &format!("/v1/receipts/{receipt}"), &key, Value::Null),
    )
    .await;
    check_receipt(&m, &serde_json::from_str(&body).unwrap(), &receipt);

    // Completions.
    let (status, _, body) = send(
        &m,
        bearer(
            "POST",
            "/v1/completions",
            &key,
            json!({"model": "tiny", "prompt": "abc", "max_tokens": 5, "temperature": 0}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());

    // The key's spending is what its receipts cost.
    let (_, keys) = call(&m.app, signed(&m.buyer, "GET", "/v1/keys", Vec::new())).await;
    let spent = keys["data"][0]["spent"].as_u64().unwrap();
    assert_eq!(keys["data"][0]["id"], key_id.as_str());
    assert!(spent > cost, "every answer so far is on the key");
    assert!(
        keys["data"][0].get("key").is_none(),
        "a secret is shown once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_openai_errors_and_cost_nothing() {
    let m = market().await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    serving_worker(&m, "serving worker b", 3).await;
    wait_models(&m, 1).await;
    let (key, key_id) = new_key(&m, &m.buyer, None).await;
    // A key's fields as an array (a form serde would read) is not a key request.
    let (status, v) = call(
        &m.app,
        signed(&m.buyer, "POST", "/v1/keys", br#"["test", 5]"#.to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_json");
    let balance_before = m.node.ledger.balance(&m.buyer.account()).0;
    let ok = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 8, "temperature": 0});
    let expect = |status: StatusCode, kind: &str, code: &str| {
        let (kind, code) = (kind.to_string(), code.to_string());
        move |(s, _, body): (StatusCode, Option<String>, String)| {
            assert_eq!(s, status, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["type"], kind.as_str(), "{body}");
            assert_eq!(v["error"]["code"], code.as_str(), "{body}");
            assert!(v["error"]["message"].is_string());
        }
    };
    let chat = "/v1/chat/completions";
    let no_key = Request::builder()
        .method("POST")
        .uri(chat)
        .body(Body::from(ok.to_string()))
        .unwrap();
    expect(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "missing_api_key",
    )(send(&m, no_key).await);
    let forged = format!("mk-{}", "0".repeat(64));
    expect(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
    )(send(&m, bearer("POST", chat, &forged, ok.clone())).await);
    let mut unknown = ok.clone();
    unknown["model"] = json!("gpt-4o");
    expect(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
    )(send(&m, bearer("POST", chat, &key, unknown)).await);
    let mut long = ok.clone();
    long["max_tokens"] = json!(100_000);
    expect(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_value",
    )(send(&m, bearer("POST", chat, &key, long)).await);
    // The tiny model has 256 positions: the prompt plus 256 new tokens does not fit. Refused
    // as OpenAI refuses it, before anything is held or sent to a worker.
    let mut too_long = ok.clone();
    too_long["max_tokens"] = json!(256);
    expect(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "context_length_exceeded",
    )(send(&m, bearer("POST", chat, &key, too_long)).await);
    let mut long_prompt = json!({"model": "tiny", "max_tokens": 8, "prompt": "word ".repeat(400)});
    expect(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "context_length_exceeded",
    )(
        send(
            &m,
            bearer("POST", "/v1/completions", &key, long_prompt.take()),
        )
        .await,
    );
    for bad in [
        json!({"model": "tiny", "messages": []}),
        json!({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}),
        json!({"model": "tiny", "messages": "hello"}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 0}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 0.0000001}),
        json!({"messages": [{"role": "user", "content": "x"}]}),
    ] {
        expect(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
        )(send(&m, bearer("POST", chat, &key, bad)).await);
    }
    // Over budget: a key whose limit is below what the request may cost; an account without
    // credits. Neither is charged anything.
    let (small, small_id) = new_key(&m, &m.buyer, Some(10)).await;
    expect(
        StatusCode::TOO_MANY_REQUESTS,
        "insufficient_quota",
        "insufficient_quota",
    )(send(&m, bearer("POST", chat, &small, ok.clone())).await);
    let poor = Identity::from_test_label("poor buyer");
    let (poor_key, _) = new_key(&m, &poor, None).await;
    expect(
        StatusCode::TOO_MANY_REQUESTS,
        "insufficient_quota",
        "insufficient_quota",
    )(send(&m, bearer("POST", chat, &poor_key, ok.clone())).await);
    // An account that cannot pay is refused before its prompt is rendered (rendering a chat
    // costs the node up to its template limits); a funded account's prompt the model cannot
    // take is refused as such before the key's limit is weighed.
    let mut too_long_for_anyone = ok.clone();
    too_long_for_anyone["max_tokens"] = json!(256);
    expect(
        StatusCode::TOO_MANY_REQUESTS,
        "insufficient_quota",
        "insufficient_quota",
    )(
        send(
            &m,
            bearer("POST", chat, &poor_key, too_long_for_anyone.clone()),
        )
        .await,
    );
    expect(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "context_length_exceeded",
    )(send(&m, bearer("POST", chat, &small, too_long_for_anyone)).await);
    assert_eq!(m.node.ledger.balance(&m.buyer.account()).0, balance_before);
    assert_eq!(m.node.ledger.balance(&poor.account()).0, 0);
    let (_, keys) = call(&m.app, signed(&m.buyer, "GET", "/v1/keys", Vec::new())).await;
    assert!(keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["spent"] == 0));

    // Nucleus sampling is served: the request's top_p is the task's.
    let mut nucleus = ok.clone();
    nucleus["temperature"] = json!(0.8);
    nucleus["top_p"] = json!(0.9);
    let (status, nucleus_receipt, _) = send(&m, bearer("POST", chat, &key, nucleus)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = call(
        &m.app,
        bearer(
            "GET",
            &format!("/v1/receipts/{}", nucleus_receipt.unwrap()),
            &key,
            Value::Null,
        ),
    )
    .await;
    let decoding = &shown["request"]["workload"]["decoding"];
    assert_eq!(decoding["top_p"], "0.9", "{shown}");
    assert_eq!(decoding["temperature"], "0.8", "{shown}");

    // One answer; then another account's key cannot read its receipt.
    let (status, receipt, _) = send(&m, bearer("POST", chat, &key, ok.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let path = format!("/v1/receipts/{}", receipt.unwrap());
    expect(StatusCode::NOT_FOUND, "invalid_request_error", "not_found")(
        send(&m, bearer("GET", &path, &poor_key, Value::Null)).await,
    );
    // A revoked key authenticates nothing; revoking is the account's own business.
    let (status, _) = call(
        &m.app,
        signed(&poor, "DELETE", &format!("/v1/keys/{key_id}"), Vec::new()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another account's key");
    let (status, v) = call(
        &m.app,
        signed(
            &m.buyer,
            "DELETE",
            &format!("/v1/keys/{key_id}"),
            Vec::new(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["revoked"], true);
    expect(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
    )(send(&m, bearer("POST", chat, &key, ok.clone())).await);
    expect(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
    )(send(&m, bearer("GET", &path, &key, Value::Null)).await);
    let _ = small_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_the_node_does_not_hold_is_not_served() {
    let m = market().await;
    // No upload: the node could not audit answers, so it refuses the offer.
    let worker = serving_worker(&m, "serving worker c", 1).await;
    for _ in 0..600 {
        if m.dispatch
            .participants()
            .get(&worker.account())
            .is_some_and(|p| p.connected)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its offer follows its welcome; a refused offer leaves no trace to wait for, so a
    // window long enough for it to have been taken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, v) = call(&m.app, common::get("/v1/models")).await;
    assert_eq!(v["data"], json!([]));
}

/// A served model's chat template is a blob someone uploaded; one that allocates without
/// bound on one message (and renders ChatML otherwise) is rendered in the node's sandbox when
/// that message is asked: the request is refused as invalid and costs nothing, and the next
/// is answered. Fails on the code before the sandbox (the node renders 512 MiB in its own
/// process and sends the request on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_template_that_explodes_on_one_message_is_refused_and_the_next_answered() {
    let mut m = market_without_verifiers(NodeConfig {
        template_memory_bytes: 256 << 20,
        template_cpu_secs: 2,
        ..config()
    })
    .await;
    let mut file = market_compute::llama::gguf::read(&m.model_bytes).unwrap();
    file.vocab.chat_template = Some(format!(
        "{{% if messages[0].content == 'boom' %}}{{% set ns = namespace(s='xxxxxxxx') %}}\
         {{% for i in range(26) %}}{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}{{% endif %}}{}",
        market_compute::llama::fixtures::CHATML
    ));
    m.model_bytes = market_compute::llama::gguf::write_f32(&file.weights, &file.vocab).unwrap();
    std::fs::write(&m.model, &m.model_bytes).unwrap();
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    serving_worker(&m, "serving worker boom", 1).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let balance = m.node.ledger.balance(&m.buyer.account()).0;
    let chat = |content: &str| {
        bearer(
            "POST",
            "/v1/chat/completions",
            &key,
            json!({"model": "tiny", "messages": [{"role": "user", "content": content}],
                   "max_tokens": 4, "temperature": 0}),
        )
    };
    let start = std::time::Instant::now();
    let (status, receipt, body) = send(&m, chat("boom")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(receipt.is_none());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["param"], "messages", "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs more than this node allows a template"),
        "{body}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(m.node.ledger.balance(&m.buyer.account()).0, balance);
    // An account that could not pay for the answer is refused before its chat is rendered
    // (without the check: rendered, then refused on the template, at the node's cost).
    let poor = Identity::from_test_label("serving poor buyer");
    m.node.fund("test", &poor.account(), 5, 0).await.unwrap();
    let (poor_key, _) = new_key(&m, &poor, None).await;
    let (status, _, body) = send(
        &m,
        bearer(
            "POST",
            "/v1/chat/completions",
            &poor_key,
            json!({"model": "tiny", "messages": [{"role": "user", "content": "boom"}],
                   "max_tokens": 4, "temperature": 0}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("insufficient_quota"), "{body}");
    let (status, receipt, body) = send(&m, chat("hello")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(receipt.is_some());
}

/// The pinned SmolLM2 GGUF and a `python3` with the `openai` package, or `None` (skipping)
/// when either is missing and `MARKET_REQUIRE_MODELS` is not set (CI sets it, and installs
/// both).
fn smollm2_and_openai() -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let has_openai = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    let missing = match (path.exists(), has_openai) {
        (true, true) => return Some(path),
        (false, _) => format!("{} (run scripts/fetch-models.sh)", path.display()),
        (true, false) => "python3 -m pip install openai==3.60.0".into(),
    };
    assert!(
        std::env::var_os("MARKET_REQUIRE_MODELS").is_none(),
        "missing: {missing}"
    );
    eprintln!("skipped: missing {missing}");
    None
}

/// Issue 16's acceptance: the official `openai` Python client lists the models, asks
/// SmolLM2-135M-Instruct a question whole and streamed (same answer, "Paris"), completes a
/// prompt, gets OpenAI's errors for an unknown model and a bad key, and reads the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_client_talks_to_smollm2_through_the_node() {
    let Some(path) = smollm2_and_openai() else {
        return;
    };
    let mut m = market().await;
    m.model_bytes = std::fs::read(&path).unwrap();
    m.model = path;
    m.model_name = "smollm2-135m-instruct";
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = m.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    serving_worker(&m, "smollm2 server", 1).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let script_key = key.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/openai_check.py"
            ))
            .args([&base, &script_key, "smollm2-135m-instruct"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("openai client saw: {seen}");
    assert!(seen["answer"].as_str().unwrap().contains("Paris"));
    // The answer the client got is audited with its batch: its receipt reaches `verified`.
    let receipt = seen["receipt"]["id"].as_str().unwrap();
    let r = settled_receipt(&m, &key, receipt).await;
    assert_eq!(r["status"], "verified", "{r}");
    check_batch(&m, &r);
}

/// Waits (up to two minutes) until `who`'s stake is down to `stake`.
async fn wait_slashed(m: &Market, who: &Identity, stake: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while m.node.ledger.stake(&who.account()).0 > stake {
        assert!(
            std::time::Instant::now() < deadline,
            "never slashed to {stake}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(m.node.ledger.stake(&who.account()).0, stake);
}

/// A receipt's status now.
async fn receipt_status(m: &Market, key: &str, id: &str) -> Value {
    let (status, _, body) = send(
        m,
        bearer("GET", &format!("/v1/receipts/{id}"), key, Value::Null),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["status"].clone()
}

/// Polls a receipt until its batch's audit settled it.
async fn settled_receipt(m: &Market, key: &str, id: &str) -> Value {
    for _ in 0..600 {
        let (status, _, body) = send(
            m,
            bearer("GET", &format!("/v1/receipts/{id}"), key, Value::Null),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let r: Value = serde_json::from_str(&body).unwrap();
        if r["status"] != "pending" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("receipt {id} was never settled");
}

/// What a buyer checks of a settled receipt on its own: the answer's leaf is in the batch
/// whose root the operator's beacon was drawn on.
fn check_batch(m: &Market, r: &Value) {
    let b = &r["batch"];
    let hex = |v: &Value| -> Hash { v.as_str().unwrap().parse().unwrap() };
    let root = hex(&b["root"]);
    let answer: Signed<Answer> = serde_json::from_value(r["answer"].clone()).unwrap();
    let leaf = message_id(answer.verify().unwrap()).unwrap();
    assert_eq!(hex(&b["leaf"]), leaf);
    let proof = MerkleProof {
        leaf_index: b["index"].as_u64().unwrap(),
        tree_size: b["size"].as_u64().unwrap(),
        path: b["proof"].as_array().unwrap().iter().map(hex).collect(),
    };
    proof.verify(leaf.as_bytes(), &root).unwrap();
    let vrf_proof: vrf::VrfProof = serde_json::from_value(b["beacon_proof"].clone()).unwrap();
    let beacon =
        beacon::verify_batch_beacon(&m.node.operator.account(), &root, &vrf_proof).unwrap();
    assert_eq!(beacon.0, hex(&b["beacon"]));
    // An audited answer the node's own bill check did not fail shows its verifier's signed
    // check of this very answer.
    if b["audited"] == true && !b["failure"].as_str().unwrap_or("").contains("bills") {
        let check: Signed<AnswerCheck> = serde_json::from_value(b["check"].clone()).unwrap();
        let body = check.verify().unwrap();
        assert_eq!((body.batch, body.answer), (root, leaf));
        let pass = body.outcome == AnswerCheckOutcome::Pass;
        assert!(pass || r["status"] == "failed", "{r}");
    }
}

async fn ask(m: &Market, key: &str, content: &str) -> (String, u64) {
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": content}],
                      "max_tokens": 16, "temperature": 0});
    let (status, receipt, text) = send(m, bearer("POST", "/v1/chat/completions", key, body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let receipt = receipt.unwrap();
    let (_, _, body) = send(
        m,
        bearer("GET", &format!("/v1/receipts/{receipt}"), key, Value::Null),
    )
    .await;
    let cost = serde_json::from_str::<Value>(&body).unwrap()["cost"]
        .as_u64()
        .unwrap();
    (receipt, cost)
}

/// The audit of served answers, for real: an honest worker's answers are verified in their
/// batch and it is paid what they cost; a worker that fakes its answers (truncated, or
/// answering another question) has its batch failed, every buyer in it refunded and its
/// stake slashed to the buyer of the answer caught; one that bills more prompt tokens than the
/// prompt has is caught on every answer, audited or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_batches_are_verified_and_paid_and_faked_ones_refunded_and_slashed() {
    use market_worker::serve::ServeFault;
    let m = market().await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let honest = serving_worker(&m, "honest server", 2).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let paid_before = m.node.ledger.balance(&honest.account()).0;
    let mut costs = 0;
    let mut receipts = Vec::new();
    for q in ["first question", "second question", "third"] {
        let (receipt, cost) = ask(&m, &key, q).await;
        costs += cost;
        receipts.push(receipt);
    }
    for id in &receipts {
        let r = settled_receipt(&m, &key, id).await;
        assert_eq!(r["status"], "verified", "{r}");
        assert_eq!(r["batch"]["audited"], true);
        check_batch(&m, &r);
    }
    // Every answer was checked by the verifier, whose fee comes out of the worker's pay.
    let fees = 3 * m.node.config.serve_check_fee;
    assert_eq!(
        m.node.ledger.balance(&honest.account()).0,
        paid_before + costs - fees
    );
    let checker = Identity::from_test_label("serving verifier").account();
    assert_eq!(m.node.ledger.balance(&checker).0, 1_000 - 200 + fees);

    for (label, fault) in [
        ("truncating server", ServeFault::Truncate),
        ("inventing server", ServeFault::OtherPrompt),
        ("overcharging server", ServeFault::Overcharge),
        ("other weights server", ServeFault::OtherWeights),
        ("low precision server", ServeFault::LowerPrecision),
    ] {
        // Cheaper, so the cheater is routed first.
        let cheat = cheating_worker(&m, label, 1, Some(fault)).await;
        wait_models(&m, 2).await;
        let stake_before = m.node.ledger.stake(&cheat.account()).0;
        let buyer_before = m.node.ledger.balance(&m.buyer.account()).0;
        let (receipt, cost) = ask(&m, &key, "a question for a cheat").await;
        assert_eq!(
            m.node.ledger.balance(&m.buyer.account()).0,
            buyer_before - cost
        );
        let r = settled_receipt(&m, &key, &receipt).await;
        assert_eq!(r["status"], "failed", "{fault:?}: {r}");
        assert_eq!(r["worker"], cheat.account().to_hex());
        check_batch(&m, &r);
        let slash = 100.min(stake_before);
        assert_eq!(
            m.node.ledger.stake(&cheat.account()).0,
            stake_before - slash
        );
        // The verifier that caught it is paid its fee from the slash; the node's own bill
        // check (every answer's) catches an overcharge, and an answer to another prompt
        // (which bills that prompt's tokens), before any verifier is asked.
        let fee = if matches!(fault, ServeFault::Overcharge | ServeFault::OtherPrompt) {
            0
        } else {
            m.node.config.serve_check_fee
        };
        assert_eq!(
            m.node.ledger.balance(&m.buyer.account()).0,
            buyer_before + slash - fee,
            "refunded, and paid the slash"
        );
        // The cheat leaves (its stake is gone); the honest worker serves on.
        m.node.serving.worker_gone(&cheat.account());
        wait_models(&m, 1).await;
    }
}

/// Issue 16's measurement: cheating serving workers are caught at the rate the plan shows (a
/// fake that also bills another prompt's tokens, as an answer to another question does, is
/// caught by the bill check on every answer: its batch is predicted caught for sure).
/// Batches of 10 answers, 2 checked; each cheat fakes one answer in 5, over 200 requests per
/// strategy. Per batch the prediction is the hypergeometric chance for the answers it really
/// faked (each answer checked here on its own: a truncated answer that had ended anyway is no
/// fake), and the observed catches must match the predictions' sum within four standard
/// deviations. `cargo test -p market-node --test serving -- --ignored --nocapture`; figures in
/// BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement (about a minute): run with --ignored"]
async fn served_cheats_are_caught_at_the_rate_the_plan_shows() {
    use market_node::serving::audit::catch_chance;
    use market_worker::serve::ServeFault;
    let m = market_with(NodeConfig {
        serve_batch_answers: 10,
        serve_batch_secs: 3600,
        serve_audit_ppm: 200_000,
        ..NodeConfig::default()
    })
    .await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    m.node
        .fund("measure", &m.buyer.account(), 1_000_000, 0)
        .await
        .unwrap();
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let local = market_compute::serving::ServedModel::load(
        &m.model_bytes,
        ExecutionProfile::Repro,
        m.buyer.account(),
    )
    .unwrap();
    for (label, fault) in [
        ("measured truncating server", ServeFault::Truncate),
        ("measured inventing server", ServeFault::OtherPrompt),
        ("measured other weights server", ServeFault::OtherWeights),
        ("measured low precision server", ServeFault::LowerPrecision),
    ] {
        let cheat = cheater_with(&m, label, 1, Some(fault), 5, 100_000).await;
        wait_models(&m, 1).await;
        let mut receipts = Vec::new();
        for i in 0..200 {
            receipts.push(ask(&m, &key, &format!("question number {i}")).await.0);
        }
        // Per batch: answers, faked, audited, failed, and whether a fake also billed a wrong
        // prompt (every answer's bill is checked: such a batch is caught for sure).
        let mut batches: std::collections::BTreeMap<String, (usize, usize, usize, bool, bool)> =
            Default::default();
        for id in &receipts {
            let r = settled_receipt(&m, &key, id).await;
            let request: TaskSpec = serde_json::from_value(r["request"].clone()).unwrap();
            let honest = local
                .check(&request, r["record"].as_str().unwrap().as_bytes())
                .unwrap()
                .is_ok();
            let b = batches
                .entry(r["batch"]["root"].as_str().unwrap().to_string())
                .or_default();
            b.0 += 1;
            b.1 += usize::from(!honest);
            b.2 += usize::from(r["batch"]["audited"] == true);
            b.3 = r["status"] == "failed";
            let billed = r["prompt_tokens"].as_u64().unwrap();
            b.4 |= billed != u64::from(local.prompt_tokens(&request).unwrap());
        }
        let (mut predicted, mut variance, mut caught, mut faked) = (0.0, 0.0, 0, 0);
        for (n, f, k, failed, misbilled) in batches.values() {
            let p = if *misbilled {
                1.0
            } else {
                catch_chance(*n, *f, *k)
            };
            predicted += p;
            variance += p * (1.0 - p);
            caught += usize::from(*failed);
            faked += f;
            assert!(*f > 0 || !failed, "a batch without a fake failed");
            assert!(*n <= 10, "a batch of {n}");
        }
        println!(
            "{fault:?}: {} batches of 10, 2 checked; {faked} answers of 200 faked; caught {caught}, predicted {predicted:.1} (sd {:.1})",
            batches.len(),
            variance.sqrt()
        );
        assert!(
            (caught as f64 - predicted).abs() <= 4.0 * variance.sqrt() + 1.0,
            "{fault:?}: caught {caught}, predicted {predicted:.1}"
        );
        m.node.serving.worker_gone(&cheat.account());
    }
}

/// More requests than the workers' slots wait for a slot instead of failing: eight at once
/// on one worker that answers two at a time all get their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_free_slots_wait_for_one() {
    let m = market().await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    serving_worker(&m, "busy server", 1).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let m = Arc::new(m);
    let asks: Vec<_> = (0..8)
        .map(|i| {
            let (m, key) = (m.clone(), key.clone());
            tokio::spawn(async move {
                let body = json!({"model": "tiny", "max_tokens": 24, "temperature": 0,
                                  "messages": [{"role": "user", "content": format!("ask {i}")}]});
                send(&m, bearer("POST", "/v1/chat/completions", &key, body)).await
            })
        })
        .collect();
    for a in asks {
        let (status, receipt, body) = a.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(receipt.is_some());
    }
}

/// A greedy worker cannot profit from a busy cheap one: a request pays at most the price
/// `/v1/models` shows (the lowest), so while the cheap worker is busy the requests wait for it
/// instead of going to a worker asking a thousand times more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_cheap_worker_does_not_send_buyers_to_a_dear_one() {
    let m = market().await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let cheap = serving_worker(&m, "cheap server", 1).await;
    let dear = serving_worker(&m, "dear server", 1_000).await;
    let models = wait_models(&m, 2).await;
    assert_eq!(models["data"][0]["price_per_token"], 1);
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let m = Arc::new(m);
    let asks: Vec<_> = (0..6)
        .map(|i| {
            let (m, key) = (m.clone(), key.clone());
            tokio::spawn(async move { ask(&m, &key, &format!("cheap please {i}")).await })
        })
        .collect();
    for a in asks {
        let (receipt, cost) = a.await.unwrap();
        let (_, _, body) = send(
            &m,
            bearer("GET", &format!("/v1/receipts/{receipt}"), &key, Value::Null),
        )
        .await;
        let r: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(r["worker"], cheap.account().to_hex());
        let tokens =
            r["prompt_tokens"].as_u64().unwrap() + r["completion_tokens"].as_u64().unwrap();
        assert_eq!(cost, tokens, "one credit a token");
    }
    // Asking for the dear worker is the buyer's choice to make (and costs accordingly).
    m.node
        .fund("dear", &m.buyer.account(), 200_000, 0)
        .await
        .unwrap();
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "any"}],
                      "max_tokens": 4, "temperature": 0, "max_price_per_token": 1_000});
    let (status, _, body) = send(&m, bearer("POST", "/v1/chat/completions", &key, body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let _ = dear;
}

/// A lying verifier cannot get an honest serving worker slashed: its failure of an honest
/// answer is re-checked by the node, which slashes the verifier instead and asks another; the
/// batch is then verified and the worker paid. (Without the referee the worker would be
/// slashed on the liar's word.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lying_verifier_is_slashed_and_the_honest_worker_paid() {
    use market_verifier::answers::CheckFault;
    let m = market_without_verifiers(config()).await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    // The liar is the only verifier when the batch is checked.
    let liar = verifier(&m, "lying verifier", Some(CheckFault::Liar)).await;
    let worker = serving_worker(&m, "honest server", 2).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let worker_stake = m.node.ledger.stake(&worker.account()).0;
    let paid_before = m.node.ledger.balance(&worker.account()).0;
    let (receipt, cost) = ask(&m, &key, "is this honest?").await;
    wait_slashed(&m, &liar, 200 - m.node.config.verifier_slash).await;
    assert!(m.node.ledger.reputation(&liar.account()) < 0);
    // With no honest verifier yet, the batch waits rather than fail anyone.
    assert_eq!(receipt_status(&m, &key, &receipt).await, "pending");
    // Meanwhile the buyer's account shows the answer's cost escrowed.
    let (status, account) = call(
        &m.app,
        common::get(&format!("/v1/accounts/{}", m.buyer.account().to_hex())),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["escrowed"], cost, "{account}");
    let honest = verifier(&m, "honest verifier", None).await;
    let r = settled_receipt(&m, &key, &receipt).await;
    assert_eq!(r["status"], "verified", "{r}");
    assert_eq!(m.node.ledger.stake(&worker.account()).0, worker_stake);
    let fee = m.node.config.serve_check_fee;
    // Paid for the answer (less the honest verifier's fee) and the liar's slash.
    assert_eq!(
        m.node.ledger.balance(&worker.account()).0,
        paid_before + cost - fee + m.node.config.verifier_slash
    );
    assert_eq!(m.node.ledger.balance(&honest.account()).0, 800 + fee);
    // The liar's slash went to the worker it lied about.
    let head = m.node.ledger.head().seq;
    let slash = (0..=head)
        .filter_map(|seq| m.node.ledger.entry(seq).unwrap())
        .find_map(|e| match e.body.kind {
            market_ledger::EntryKind::Slash { account, to, .. } if account == liar.account() => {
                Some(to)
            }
            _ => None,
        });
    assert_eq!(slash, Some(worker.account()));
}

/// A lazy verifier (it passes whatever it is sent) is caught by ringers: fake answers sent
/// with the real check, which it passes without the forward pass that shows them wrong. It is
/// slashed, and its pass of the real answer is void: a cheating worker it waved through is not
/// paid, and once an honest verifier is there the cheat's batch fails and its buyer is
/// refunded. (Without ringers the lazy pass would settle the batch and pay the cheat.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lazy_verifier_passes_a_ringer_and_is_slashed_and_its_pass_is_void() {
    use market_verifier::answers::CheckFault;
    use market_worker::serve::ServeFault;
    let m = market_without_verifiers(NodeConfig {
        serve_ringer_ppm: 1_000_000,
        ..config()
    })
    .await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let lazy = verifier(&m, "lazy verifier", Some(CheckFault::Lazy)).await;
    let cheat = cheating_worker(
        &m,
        "cheat with other weights",
        2,
        Some(ServeFault::OtherWeights),
    )
    .await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let cheat_before = m.node.ledger.balance(&cheat.account()).0;
    let buyer_before = m.node.ledger.balance(&m.buyer.account()).0;
    let (receipt, cost) = ask(&m, &key, "will you check this?").await;
    wait_slashed(&m, &lazy, 200 - m.node.config.verifier_slash).await;
    assert!(m.node.ledger.reputation(&lazy.account()) < 0);
    // Its pass was void: the batch waits for another verifier; the cheat is not paid. (A
    // window for a wrong settlement to happen: one that does not has no event.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receipt_status(&m, &key, &receipt).await, "pending");
    assert_eq!(m.node.ledger.balance(&cheat.account()).0, cheat_before);
    verifier(&m, "honest verifier", None).await;
    let r = settled_receipt(&m, &key, &receipt).await;
    assert_eq!(r["status"], "failed", "{r}");
    let fee = m.node.config.serve_check_fee;
    assert_eq!(
        m.node.ledger.balance(&m.buyer.account()).0,
        buyer_before - cost + cost + 100 - fee,
        "refunded, and paid the cheat's slash less the catching verifier's fee"
    );
}

/// A verifier away in the middle of a check (it took the job and never answered) loses a point
/// of reputation, but is asked again on a later pass: a batch whose only verifier was briefly
/// away is not stuck for ever. (Excluding it from the batch for good left such a batch
/// pending until a new verifier joined.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verifier_silent_once_is_asked_again_and_the_batch_settles() {
    use market_verifier::answers::CheckFault;
    let mut config = config();
    config.network.audit_timeout_secs = 2;
    config.serve_ringer_ppm = 0;
    let m = market_without_verifiers(config).await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let away = verifier(&m, "verifier away once", Some(CheckFault::SilentOnce)).await;
    serving_worker(&m, "honest server", 2).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let (receipt, _) = ask(&m, &key, "are you there?").await;
    let r = settled_receipt(&m, &key, &receipt).await;
    assert_eq!(r["status"], "verified", "{r}");
    let check: Signed<AnswerCheck> = serde_json::from_value(r["batch"]["check"].clone()).unwrap();
    assert_eq!(check.body.verifier, away.account());
    assert_eq!(m.node.ledger.reputation(&away.account()), -1);
    assert_eq!(m.node.ledger.stake(&away.account()).0, 200);
}

/// A verifier checks a sampled answer only when the node's job proves it was drawn: a job for
/// an answer the beacon did not sample, or with a changed record, is refused (nothing signed).
#[test]
fn a_verifier_refuses_an_answer_the_beacon_did_not_draw() {
    let operator = Identity::from_test_label("serving operator");
    let worker = Identity::from_test_label("a worker");
    let bytes = tiny_gguf(11).unwrap();
    let model = market_compute::serving::ServedModel::load(
        &bytes,
        ExecutionProfile::Repro,
        worker.account(),
    )
    .unwrap();
    let mut answers = Vec::new();
    let mut leaves = Vec::new();
    for i in 0..8u64 {
        let request = market_compute::serving::ServeRequest {
            buyer: worker.account(),
            nonce: i,
            weights: model.weights,
            model: model.model.clone(),
            profile: ExecutionProfile::Repro,
            prompt: market_compute::serving::ServePrompt::Text(format!("q{i}")),
            max_new_tokens: 4,
            stop: Vec::new(),
            decoding: Decoding::Greedy,
            seed: 0,
            price: Credits(1),
            audit: AuditPolicy {
                detection_target: "0.99".parse().unwrap(),
                assumed_faked_fraction: "0.1".parse().unwrap(),
            },
        }
        .to_task();
        let served = model.answer(&request, &mut |_| {}).unwrap();
        let record = String::from_utf8(served.output.bytes.clone()).unwrap();
        let answer = Signed::sign(
            Answer {
                version: Version::CURRENT,
                worker: worker.account(),
                request: TaskId(message_id(&request).unwrap()),
                model: model.weights,
                output: served.output.hash,
                prompt_tokens: served.prompt_tokens,
                completion_tokens: 1,
            },
            &worker,
        )
        .unwrap();
        leaves.push(answer.id().unwrap().0);
        answers.push((request, answer, record));
    }
    let tree = MerkleTree::new(&leaves);
    let root = tree.root();
    let (beacon, beacon_proof) = beacon::prove_batch_beacon(&operator, &root);
    let sampled =
        market_protocol::sampling::sample_indices(&ChallengeSeed(beacon.0), 8, 2).unwrap();
    let job = |index: u32| {
        let (request, answer, record) = answers[index as usize].clone();
        market_net::wire::AnswerCheckJob {
            job: 1,
            batch: root,
            worker: worker.account(),
            answers: 8,
            sampled: 2,
            beacon,
            beacon_proof,
            index,
            proof: tree.proof(u64::from(index)).unwrap().path,
            request,
            answer,
            record,
        }
    };
    let check = market_verifier::answers::check_job;
    let drawn = sampled[0];
    assert_eq!(
        check(&operator.account(), &job(drawn)).unwrap(),
        Hash(leaves[drawn as usize])
    );
    let not_drawn = (0..8).find(|i| !sampled.contains(i)).unwrap();
    assert!(check(&operator.account(), &job(not_drawn)).is_err());
    let mut changed = job(drawn);
    changed.record = market_node::serving::audit::ringer_record(&changed.record).unwrap();
    assert!(check(&operator.account(), &changed).is_err());
    let mut moved = job(drawn);
    moved.index = not_drawn;
    assert!(check(&operator.account(), &moved).is_err());
    let other_operator = Identity::from_test_label("another operator").account();
    assert!(check(&other_operator, &job(drawn)).is_err());
    // The drawn answer is honest: the verifier passes it, and fails its ringer.
    let j = job(drawn);
    assert_eq!(
        market_verifier::answers::outcome(&model, &j).unwrap(),
        AnswerCheckOutcome::Pass
    );
    let mut fake = j.clone();
    fake.record = changed.record;
    assert!(matches!(
        market_verifier::answers::outcome(&model, &fake).unwrap(),
        AnswerCheckOutcome::Fail { .. }
    ));
    // In `native`, where logits are compared within a tolerance, a ringer is still beyond it:
    // an honest native check passes the real answer and fails its ringer (a fake one bit off
    // passed, and got honest verifiers slashed).
    let native = market_compute::serving::ServedModel::load(
        &bytes,
        ExecutionProfile::Native,
        worker.account(),
    )
    .unwrap();
    let mut request = answers[0].0.clone();
    request.profile = ExecutionProfile::Native;
    let served = native.answer(&request, &mut |_| {}).unwrap();
    let record = String::from_utf8(served.output.bytes).unwrap();
    assert_eq!(native.check(&request, record.as_bytes()).unwrap(), Ok(()));
    let ringer = market_node::serving::audit::ringer_record(&record).unwrap();
    assert!(native.check(&request, ringer.as_bytes()).unwrap().is_err());
}

/// A buyer that spends its whole balance while its answer streams does not get the answer
/// free: the request's hold was escrowed before it ran, so the worker is paid from it once the
/// batch is verified. (When the cost was escrowed only at the end, the drained balance could
/// not cover it and the worker went unpaid.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_draining_its_balance_mid_stream_still_pays_for_the_answer() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let m = market().await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let worker = serving_worker(&m, "paid server", 1).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let paid_before = m.node.ledger.balance(&worker.account()).0;
    // The drain must land while the answer is generated; on the rare run where the answer
    // ended first (a slow test thread), the buyer is funded again and it is tried anew.
    let mut receipt = None;
    for attempt in 0..5 {
        let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "tell me a long story"}],
                          "max_tokens": 200, "temperature": 0, "stream": true});
        let resp = m
            .app
            .clone()
            .oneshot(bearer("POST", "/v1/chat/completions", &key, body))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let id = resp.headers()["x-market-receipt"]
            .to_str()
            .unwrap()
            .to_string();
        let mut stream = resp.into_body();
        // The first piece is here: the answer is being generated. Spend everything left.
        let first = stream.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        let left = m.node.ledger.balance(&m.buyer.account());
        let sink = Identity::from_test_label("somewhere else").account();
        let drained = m
            .node
            .ledger
            .transfer(
                market_ledger::IdempotencyKey::new(format!("drain:{attempt}")).unwrap(),
                m.buyer.account(),
                sink,
                left,
            )
            .unwrap();
        assert_eq!(m.node.ledger.balance(&m.buyer.account()).0, 0);
        let rest = stream.collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
        // Did the drain come before the answer was recorded (which returns the unused hold)?
        let unused = market_node::engine::Operation::ServeUnused {
            answer: id.parse().unwrap(),
        }
        .key()
        .unwrap();
        let recorded = m.node.ledger.entry_with_key(&unused).unwrap().unwrap();
        if drained.seq() < recorded.body.seq {
            receipt = Some(id);
            break;
        }
        m.node
            .fund(&format!("again {attempt}"), &m.buyer.account(), 10_000, 0)
            .await
            .unwrap();
    }
    let receipt = receipt.expect("every answer ended before the drain");
    let r = settled_receipt(&m, &key, &receipt).await;
    assert_eq!(r["status"], "verified", "{r}");
    let cost = r["cost"].as_u64().unwrap();
    assert!(cost > 0);
    // The worker was paid this answer's cost (less the checking verifier's fee, if its
    // answer was the one sampled) from the escrowed hold.
    let release = market_node::engine::Operation::ServeRelease {
        answer: receipt.parse().unwrap(),
    }
    .key()
    .unwrap();
    let paid = m.node.ledger.entry_with_key(&release).unwrap().unwrap();
    let market_ledger::EntryKind::Release {
        amount, worker: to, ..
    } = paid.body.kind
    else {
        panic!("not a release");
    };
    assert_eq!(to, worker.account());
    assert_eq!(amount.0, cost - m.node.config.serve_check_fee);
    assert!(m.node.ledger.balance(&worker.account()).0 >= paid_before + amount.0);
}

/// A lazy verifier that could tell ringers from real work (and so is never caught by one) is
/// still caught when it waves a wrong answer through: the node re-checks passes itself at
/// `serve_recheck_ppm`, slashes a verifier whose pass it finds wrong, voids its passes, and the
/// cheat's batch fails once an honest verifier checks it. (Without the re-check, with no
/// ringers, the lazy pass would settle the batch and pay the cheat.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lazy_pass_of_a_wrong_answer_is_caught_by_the_nodes_recheck() {
    use market_verifier::answers::CheckFault;
    use market_worker::serve::ServeFault;
    let m = market_without_verifiers(NodeConfig {
        serve_ringer_ppm: 0,
        serve_recheck_ppm: 1_000_000,
        ..config()
    })
    .await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    let lazy = verifier(&m, "lazy verifier", Some(CheckFault::Lazy)).await;
    let cheat = cheating_worker(&m, "cheat", 2, Some(ServeFault::Truncate)).await;
    wait_models(&m, 1).await;
    let (key, _) = new_key(&m, &m.buyer, None).await;
    let cheat_before = m.node.ledger.balance(&cheat.account()).0;
    let buyer_before = m.node.ledger.balance(&m.buyer.account()).0;
    let (receipt, cost) = ask(&m, &key, "check me properly").await;
    wait_slashed(&m, &lazy, 200 - m.node.config.verifier_slash).await;
    assert_eq!(receipt_status(&m, &key, &receipt).await, "pending");
    // Nothing to the cheat; the lazy verifier's slash to the buyer it would have cheated.
    assert_eq!(m.node.ledger.balance(&cheat.account()).0, cheat_before);
    assert_eq!(
        m.node.ledger.balance(&m.buyer.account()).0,
        buyer_before - cost + m.node.config.verifier_slash
    );
    verifier(&m, "honest verifier", None).await;
    let r = settled_receipt(&m, &key, &receipt).await;
    assert_eq!(r["status"], "failed", "{r}");
}

/// A request's hold, once escrowed, is counted against the account once: an account with
/// credits for two requests can have both in flight. (Counting the escrowed hold again as
/// "held" refused the second with 429 while the first ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_escrowed_hold_is_not_counted_twice_against_the_balance() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let m = market().await;
    let (status, _) = upload(&m.app, &m.buyer, &m.model_bytes).await;
    assert_eq!(status, StatusCode::CREATED);
    serving_worker(&m, "server", 1).await;
    wait_models(&m, 1).await;
    // Holds of 1 credit per token for "hi": (2 + 32 + 64) prompt bytes + 16 new tokens = 114.
    let two = Identity::from_test_label("buyer of two");
    m.node
        .fund("test", &two.account(), 2 * 114 + 10, 0)
        .await
        .unwrap();
    let (key, _) = new_key(&m, &two, None).await;
    let body = |stream: bool| {
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 16, "temperature": 0, "stream": stream})
    };
    let first = m
        .app
        .clone()
        .oneshot(bearer("POST", "/v1/chat/completions", &key, body(true)))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first_receipt: TaskId = first.headers()["x-market-receipt"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut stream = first.into_body();
    stream.frame().await.unwrap().unwrap();
    assert_eq!(
        m.node.ledger.escrow_of(&first_receipt).unwrap().amount.0,
        114
    );
    let (status, _, text) = send(
        &m,
        bearer("POST", "/v1/chat/completions", &key, body(false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    stream.collect().await.unwrap();
}
