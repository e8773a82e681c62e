//! A chat template is a client's blob, and minijinja's fuel counts instructions, not what one
//! does: a template can take all of a machine's memory, or run for days, in a few hundred
//! instructions (COMPUTE 11.13). The node renders what clients send in a child process with
//! memory and CPU limits. Each attack test fails on the code before the defence (the node
//! rendering in its own process: the post is taken, after gigabytes or days).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{call, open, post_body, signed, upload, Net};
use market_compute::llama::fixtures::{tiny_gguf, tiny_spec, CHATML};
use market_compute::llama::gguf;
use market_compute::llama::text::{RenderSandbox, Rendered, TemplateRun, TASK_TEMPLATE_FUEL};
use market_node::config::NodeConfig;
use market_node::template_sandbox::TemplateSandbox;
use market_protocol::fixtures::inference_task;
use market_protocol::{BlobId, ChatMessage, Identity, InferenceInputs, TaskSpec, Workload};
use serde_json::Value;

/// A string doubled 26 times: 512 MiB, and its half held while the last is made.
const MEMORY_BOMB: &str = "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(26) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}";
/// Two lists nested 40 deep (each level twice the one below, shared): comparing them visits
/// 2^40 leaves, about five days here, in under 700 instructions.
const TIME_BOMB: &str = "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(40) %}{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}{% if ns.a == ns.b %}{% endif %}";

/// Limits below what the bombs need and far above what a chat template does.
fn limited() -> NodeConfig {
    NodeConfig {
        template_memory_bytes: 256 << 20,
        template_cpu_secs: 2,
        ..NodeConfig::default()
    }
}

/// The tiny model as a GGUF file whose chat template is `template`.
fn gguf_with_template(template: &str) -> Vec<u8> {
    let mut file = gguf::read(&tiny_gguf(11).unwrap()).unwrap();
    file.vocab.chat_template = Some(template.into());
    gguf::write_f32(&file.weights, &file.vocab).unwrap()
}

fn user(content: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: "user".into(),
        content: content.into(),
    }]
}

/// A chat task for the tiny model in `weights`.
fn chat_task(buyer: &Identity, nonce: u64, weights: BlobId) -> TaskSpec {
    let mut task = inference_task(buyer, nonce);
    if let Workload::Inference(inf) = &mut task.workload {
        inf.model = tiny_spec();
        inf.weights = Some(weights);
        inf.inputs = InferenceInputs::Chat {
            chats: vec![user("What is the capital of France?")],
            max_new_tokens: 4,
            stop: Vec::new(),
        };
    }
    task
}

async fn model(n: &Net, template: &str) -> BlobId {
    let bytes = gguf_with_template(template);
    let (status, v) = upload(&n.app, &n.buyer, &bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    BlobId(market_protocol::Hash::of(&bytes))
}

async fn post(n: &Net, task: TaskSpec) -> (StatusCode, Value) {
    call(
        &n.app,
        signed(&n.buyer, "POST", "/v1/tasks", post_body(&n.buyer, task)),
    )
    .await
}

/// Posts a chat task whose template is `bomb` then ChatML: refused as the template's fault,
/// within the limits' time; then an honest chat task is taken.
async fn bomb_is_refused_and_the_node_goes_on(bomb: &str) {
    let n = open(tempfile::tempdir().unwrap(), limited(), &[], &[]).await;
    let bad = model(&n, &format!("{bomb}{CHATML}")).await;
    let start = Instant::now();
    let (status, v) = post(&n, chat_task(&n.buyer, 1, bad)).await;
    let took = start.elapsed();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "needs more than this node allows a template (256 MiB of memory, 2 s of CPU time, \
             8 MiB of stack)"
        ),
        "{message}"
    );
    assert!(took < Duration::from_secs(30), "refused after {took:?}");
    let good = model(&n, CHATML).await;
    let (status, v) = post(&n, chat_task(&n.buyer, 2, good)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_would_take_the_nodes_memory_is_refused_and_the_node_goes_on() {
    bomb_is_refused_and_the_node_goes_on(MEMORY_BOMB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_would_run_for_days_on_little_fuel_is_refused() {
    bomb_is_refused_and_the_node_goes_on(TIME_BOMB).await;
}

/// The `market-node` executable is its own sandbox (started again in the child's role): a
/// node run from it, alone in its folder (as `cargo run --bin market-node` builds it, with no
/// `market-template-sandbox` beside it), refuses the memory bomb and takes an honest chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_executable_is_its_own_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "template_memory_bytes = 268435456\ntemplate_cpu_secs = 2\n",
    )
    .unwrap();
    let alone = dir.path().join("bin");
    std::fs::create_dir(&alone).unwrap();
    let exe = alone.join("market-node");
    std::fs::copy(env!("CARGO_BIN_EXE_market-node"), &exe).unwrap();
    let buyer = Identity::from_test_label("sandbox buyer");
    let (_node, api) = common::start_with(
        &exe,
        &dir.path().join("node"),
        &buyer,
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let client = market_node::client::Client::new(&api, Some(buyer.clone()));
    client.register().await.unwrap();
    let bad = client
        .upload(gguf_with_template(&format!("{MEMORY_BOMB}{CHATML}")))
        .await
        .unwrap();
    let e = client
        .submit(chat_task(&buyer, 1, bad))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("422") && e.contains("needs more than this node allows a template (256 MiB"),
        "{e}"
    );
    let good = client.upload(gguf_with_template(CHATML)).await.unwrap();
    client.submit(chat_task(&buyer, 2, good)).await.unwrap();
}

/// A buyer's posts built to be slow (each up to the template limits, refused at no cost)
/// hold one validation slot at most: another buyer's post is validated meanwhile. Fails
/// without the per-buyer slot (the two slow posts hold both of the node's slots, and the
/// other buyer's post waits past `validation_wait_secs`: 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_buyers_slow_posts_do_not_hold_every_validation_slot() {
    let n = open(
        tempfile::tempdir().unwrap(),
        NodeConfig {
            validation_wait_secs: 1,
            ..limited()
        },
        &[],
        &[],
    )
    .await;
    let bad = model(&n, &format!("{TIME_BOMB}{CHATML}")).await;
    let other = Identity::from_test_label("sandbox other buyer");
    n.node
        .fund("test", &other.account(), 5_000, 0)
        .await
        .unwrap();
    let good_bytes = gguf_with_template(CHATML);
    let (status, v) = upload(&n.app, &other, &good_bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let good = BlobId(market_protocol::Hash::of(&good_bytes));
    let slow = |nonce: u64| {
        let app = n.app.clone();
        let buyer = n.buyer.clone();
        tokio::spawn(async move {
            call(
                &app,
                signed(
                    &buyer,
                    "POST",
                    "/v1/tasks",
                    post_body(&buyer, chat_task(&buyer, nonce, bad)),
                ),
            )
            .await
        })
    };
    let (first, second) = (slow(1), slow(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, v) = call(
        &n.app,
        signed(
            &other,
            "POST",
            "/v1/tasks",
            post_body(&other, chat_task(&other, 1, good)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let mut slow_statuses = vec![first.await.unwrap().0, second.await.unwrap().0];
    slow_statuses.sort();
    assert_eq!(
        slow_statuses,
        [
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

/// Without its sandbox program the node cannot render a client's template: chat posts are
/// refused as the node's fault (503), plain prompts are still taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_sandbox_refuses_chats_as_its_own_fault() {
    let config = NodeConfig {
        template_sandbox: Some("/nonexistent/market-template-sandbox".into()),
        ..NodeConfig::default()
    };
    let n = open(tempfile::tempdir().unwrap(), config, &[], &[]).await;
    let weights = model(&n, CHATML).await;
    let (status, v) = post(&n, chat_task(&n.buyer, 1, weights)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "template_sandbox_unavailable", "{v}");
    let mut plain = chat_task(&n.buyer, 2, weights);
    if let Workload::Inference(inf) = &mut plain.workload {
        inf.inputs = InferenceInputs::Prompts {
            prompts: vec!["Once upon a time".into()],
            max_new_tokens: 4,
        };
    }
    let (status, v) = post(&n, plain).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

fn same(a: &Rendered, b: &Rendered) -> bool {
    a.texts == b.texts
        && a.failure.as_ref().map(ToString::to_string)
            == b.failure.as_ref().map(ToString::to_string)
}

/// The sandbox renders what the process would, failures included: texts up to a failing chat,
/// errors on `inputs` and on the template alike, the task's shared budget at its edge.
#[test]
fn the_sandbox_renders_as_the_process_does() {
    let sandbox = TemplateSandbox::new(
        Some(Path::new(env!("CARGO_BIN_EXE_market-template-sandbox"))),
        1 << 30,
        10,
    );
    assert!(sandbox.unavailable().is_none());
    let run = |template: &str, chats: Vec<Vec<ChatMessage>>, budget: u64| TemplateRun {
        template: template.into(),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
        chats,
        budget,
        max_total_bytes: 64 << 20,
    };
    let fails_on_third = "{% if messages[0].content == 'three' %}{{ raise_exception('no three') }}{% endif %}{{ bos_token }}"
        .to_string()
        + CHATML;
    let three = vec![user("one"), user("tw\u{f6}"), user("three"), user("four")];
    let prints_much = "{% for i in range(100000) %}0123456789abcdef{% endfor %}";
    let mut cases = vec![
        run(CHATML, three.clone(), TASK_TEMPLATE_FUEL),
        run(&fails_on_third, three.clone(), TASK_TEMPLATE_FUEL),
        run(prints_much, vec![user("x")], TASK_TEMPLATE_FUEL),
        run("{% for", vec![user("x")], TASK_TEMPLATE_FUEL),
        run("{{ x.nope() }}", vec![user("x")], TASK_TEMPLATE_FUEL),
    ];
    // A budget that holds two chats and a half: the third runs out of the task's budget.
    let one = {
        let mut v = market_compute::llama::fixtures::byte_vocab();
        v.chat_template = Some(CHATML.into());
        let codec = market_compute::llama::text::TextCodec::from_gguf(&v).unwrap();
        let mut r = codec.chat_renderer(TASK_TEMPLATE_FUEL).unwrap();
        r.render(&user("one")).unwrap();
        TASK_TEMPLATE_FUEL - r.fuel_left()
    };
    cases.push(run(CHATML, vec![user("one"); 3], 2 * one + one / 2));
    // A panic in minijinja (a capacity overflow) is the template's failure, in the child as
    // in process (it was the sandbox's: 503).
    cases.push(run(
        "{{ ([1] * 4611686018427387904)|sort|first }}",
        vec![user("x")],
        TASK_TEMPLATE_FUEL,
    ));
    // Rendering stops after the chat that brings the texts past their limit.
    let mut capped = run(CHATML, three, TASK_TEMPLATE_FUEL);
    capped.max_total_bytes = 60;
    cases.push(capped);
    for (i, case) in cases.iter().enumerate() {
        let here = case.render_here().unwrap();
        let there = sandbox.render(case).unwrap();
        assert!(same(&here, &there), "case {i}: {here:?} vs {there:?}");
        eprintln!("case {i}: {} texts, {:?}", there.texts.len(), there.failure);
    }
    // What each case shows, so a case that stopped showing it is noticed.
    let r: Vec<Rendered> = cases.iter().map(|c| c.render_here().unwrap()).collect();
    let failed_with = |r: &Rendered, needle: &str| {
        r.failure
            .as_ref()
            .is_some_and(|e| e.to_string().contains(needle))
    };
    assert_eq!(r[0].texts.len(), 4);
    assert!(r[0].failure.is_none());
    assert_eq!(r[1].texts.len(), 2);
    assert!(failed_with(&r[1], "no three"));
    assert!(failed_with(&r[2], "more than"));
    assert!(r[3].failure.is_some() && r[4].failure.is_some());
    assert_eq!(r[5].texts.len(), 2);
    assert!(failed_with(&r[5], "in all"));
    assert!(
        matches!(&r[6].failure, Some(market_compute::ComputeError::InvalidBlob { what: "tokenizer", reason }) if reason.contains("capacity overflow")),
        "{:?}",
        r[6].failure
    );
    assert_eq!(r[7].texts.len(), 2);
    assert!(r[7].failure.is_none());
}
