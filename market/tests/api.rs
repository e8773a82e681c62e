//! The REST API driven with `tower::ServiceExt::oneshot` (no sockets): every endpoint, the whole
//! life of honest and cheated tasks, and every kind of bad input getting a 4xx JSON error while
//! nothing is written.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use common::{call, get, post_body, short, signed};
use market_node::config::NodeConfig;
use market_node::dispatch::VerifierMode;
use market_node::engine::Node;
use market_protocol::fixtures::{inference_task, training_task};
use market_protocol::*;
use market_worker::Behavior;
use serde_json::Value;
use tower::ServiceExt;

struct Net {
    node: Arc<Node>,
    app: Router,
    buyer: Identity,
    workers: Vec<Identity>,
    verifiers: Vec<Identity>,
    _dir: tempfile::TempDir,
}

async fn net(workers: Vec<(&str, Behavior)>, verifiers: Vec<(&str, VerifierMode)>) -> Net {
    net_with(NodeConfig::default(), workers, verifiers).await
}

/// A node with one honest worker and one honest verifier.
async fn one_of_each() -> Net {
    net(
        vec![("w1", Behavior::Honest)],
        vec![("v1", VerifierMode::Honest)],
    )
    .await
}

/// A node with `config`, the given in-process workers and verifiers, all funded and staked, and
/// a buyer with 5,000 credits (the shared [`common::open`]), with the participants' keys.
async fn net_with(
    config: NodeConfig,
    workers: Vec<(&str, Behavior)>,
    verifiers: Vec<(&str, VerifierMode)>,
) -> Net {
    let common::Net {
        node,
        app,
        buyer,
        dir,
    } = common::open(tempfile::tempdir().unwrap(), config, &workers, &verifiers).await;
    Net {
        node,
        app,
        buyer,
        workers: workers
            .iter()
            .map(|(l, _)| Identity::from_test_label(l))
            .collect(),
        verifiers: verifiers
            .iter()
            .map(|(l, _)| Identity::from_test_label(l))
            .collect(),
        _dir: dir,
    }
}

/// Runs the engine, posts a short training task through the API and waits until it settles.
async fn post_and_settle(n: &Net, nonce: u64) -> market_node::model::TaskRecord {
    settle_spec(n, short(training_task(&n.buyer, nonce))).await
}

/// Posts `spec` as the buyer and waits until it is settled.
async fn settle_spec(n: &Net, spec: TaskSpec) -> market_node::model::TaskRecord {
    tokio::spawn(n.node.clone().run_engine());
    let body = post_body(&n.buyer, spec);
    let (s, v) = call(&n.app, signed(&n.buyer, "POST", "/v1/tasks", body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().parse().unwrap();
    let t = n
        .node
        .wait_final(&id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        t.state,
        market_node::model::TaskState::Settled,
        "{:?}",
        t.attempts
    );
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_tasks_settle_and_balances_move_exactly_as_the_entries_say() {
    let n = net(
        vec![("w1", Behavior::Honest)],
        vec![("v1", VerifierMode::Honest), ("v2", VerifierMode::Honest)],
    )
    .await;
    tokio::spawn(n.node.clone().run_engine());
    let (s, v) = call(&n.app, signed(&n.buyer, "POST", "/v1/accounts", Vec::new())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut ids = Vec::new();
    let mut inference = inference_task(&n.buyer, 2);
    inference.profile = ExecutionProfile::Repro;
    if let Workload::Inference(i) = &mut inference.workload {
        i.weights = None;
    }
    for task in [short(training_task(&n.buyer, 1)), inference] {
        let price = task.price.0;
        let (s, v) = call(
            &n.app,
            signed(&n.buyer, "POST", "/v1/tasks", post_body(&n.buyer, task)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["state"]["state"], "queued");
        assert!(v["audit"]["detection_probability"].as_f64().unwrap() >= 0.9);
        ids.push((v["id"].as_str().unwrap().to_string(), price));
    }
    let before = n.node.ledger.balance(&n.workers[0].account()).0;
    for (id, _) in &ids {
        let t = n
            .node
            .wait_final(&id.parse().unwrap(), Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(
            t.state,
            market_node::model::TaskState::Settled,
            "{:?}",
            t.attempts
        );
        let (s, v) = call(&n.app, get(&format!("/v1/tasks/{id}"))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["state"]["state"], "settled");
        assert_eq!(v["attempts"][0]["verdicts"].as_array().unwrap().len(), 2);
        // Results: the buyer may read them, nobody else.
        let uri = format!("/v1/tasks/{id}/result");
        let (s, v) = call(&n.app, signed(&n.buyer, "GET", &uri, Vec::new())).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let blob = v["outputs"][0].as_str().unwrap().to_string();
        let (s, _) = call(&n.app, signed(&n.workers[0], "GET", &uri, Vec::new())).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = call(
            &n.app,
            signed(&n.buyer, "GET", &format!("/v1/blobs/{blob}"), Vec::new()),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(
            &n.app,
            signed(
                &n.verifiers[0],
                "GET",
                &format!("/v1/blobs/{blob}"),
                Vec::new(),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let fee = NodeConfig::default().verifier_fee;
    let total_price: u64 = ids.iter().map(|(_, p)| p).sum();
    assert_eq!(
        n.node.ledger.balance(&n.buyer.account()).0,
        5_000 - total_price
    );
    assert_eq!(
        n.node.ledger.balance(&n.workers[0].account()).0 - before,
        total_price - 2 * 2 * fee
    );
    for v in &n.verifiers {
        assert_eq!(n.node.ledger.balance(&v.account()).0, 100 + 2 * fee);
    }
    let report = n.node.ledger.verify().unwrap();
    assert!(report.entries > 10);
    let (s, v) = call(&n.app, get(&format!("/v1/accounts/{}", n.buyer.account()))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["balance"], 5_000 - total_price);
    assert_eq!(v["escrowed"], 0);
    // Public reads.
    for uri in [
        "/v1/tasks",
        "/v1/tasks?state=settled&limit=1",
        "/v1/workers",
        "/v1/verifiers",
        "/v1/ledger/entries?from=0&limit=5",
        "/v1/ledger/head",
        "/v1/openapi.json",
        "/healthz",
    ] {
        let (s, v) = call(&n.app, get(uri)).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
    }
    let (s, v) = call(&n.app, get("/v1/tasks?state=settled&limit=1")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    // Who can take what: in-process participants run the CPU profiles, and nobody is busy now.
    let (_, v) = call(&n.app, get("/v1/workers")).await;
    let workers = v.as_array().unwrap();
    assert_eq!(workers.len(), n.workers.len());
    for w in workers {
        assert_eq!(w["profiles"], serde_json::json!(["repro", "native"]), "{w}");
        assert_eq!(w["busy"], false);
    }
    let resp = n.app.clone().oneshot(get("/metrics")).await.unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("market_tasks{state=\"settled\"} 2"), "{text}");
    let resp = n
        .app
        .clone()
        .oneshot(get("/v1/ledger/export"))
        .await
        .unwrap();
    let export = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let exported = market_ledger::verify_export(
        std::io::Cursor::new(export.to_vec()),
        std::path::Path::new("export"),
        None,
    )
    .unwrap();
    assert_eq!(exported.lines, report.entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheating_worker_is_slashed_and_another_worker_completes_the_task() {
    let n = net(
        vec![
            ("cheater", Behavior::Skip(0.5)),
            ("honest", Behavior::Honest),
        ],
        vec![("v1", VerifierMode::Honest), ("v2", VerifierMode::Honest)],
    )
    .await;
    let t = post_and_settle(&n, 5).await;
    assert_eq!(t.attempts.len(), 2);
    assert!(!t.attempts[0].accepted && t.attempts[0].worker == n.workers[0].account());
    assert!(t.attempts[1].accepted && t.attempts[1].worker == n.workers[1].account());
    let cheater = n.workers[0].account();
    assert_eq!(
        n.node.ledger.stake(&cheater).0,
        300 - NodeConfig::default().worker_slash
    );
    assert!(n.node.ledger.reputation(&cheater) < 0);
    // The worker opened the failed segment's steps when asked, so the evidence names the step.
    let narrowed = t.attempts[0]
        .verdicts
        .iter()
        .filter_map(|v| v.detail.as_deref())
        .any(|d| d.contains("first differing step"));
    assert!(narrowed, "{:?}", t.attempts[0].verdicts);
    // The view shows each failing verdict's evidence as fields (what the dashboard draws):
    // the segment and step its signed outcome names, among the segments it re-executed.
    for v in t.attempts[0].verdicts.iter().filter(|v| !v.passed) {
        let (segment, step) = (v.failed_segment.unwrap(), v.failed_step.unwrap());
        assert!(v.segments.contains(&segment), "{v:?}");
        assert_eq!(v.reason.as_deref(), Some("state_mismatch"));
        let detail = v.detail.as_deref().unwrap();
        assert!(
            detail.starts_with(&format!("segment {segment} ")),
            "{detail}"
        );
        assert!(
            detail.contains(&format!("first differing step is {step} ")),
            "{detail}"
        );
    }
    // Each run's loss curve is its signed commitment's loss_trace, as recorded in the ledger.
    for a in &t.attempts {
        let entry = n.node.ledger.entry(a.commit_seq.unwrap()).unwrap().unwrap();
        let market_ledger::EntryKind::Commit { commitment, .. } = entry.body.kind else {
            panic!("entry {:?} is no commit", a.commit_seq);
        };
        let committed: Vec<Option<f32>> = commitment
            .body
            .loss_trace
            .iter()
            .map(|b| Some(f32::from_bits(b.0)))
            .collect();
        assert_eq!(a.loss_trace, committed);
        assert_eq!(a.steps, Some(commitment.body.steps));
        assert!(!a.loss_trace.is_empty());
    }
    n.node.ledger.verify().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_that_vouches_for_a_cheat_is_slashed_by_the_referee() {
    let n = net(
        vec![
            ("cheater", Behavior::Skip(0.5)),
            ("honest", Behavior::Honest),
        ],
        vec![
            ("lazy", VerifierMode::Lazy),
            ("careful", VerifierMode::Honest),
        ],
    )
    .await;
    let t = post_and_settle(&n, 6).await;
    assert_eq!(
        t.attempts.len(),
        2,
        "the cheat was refereed and the task re-run"
    );
    let lazy = n.verifiers[0].account();
    assert_eq!(
        n.node.ledger.stake(&lazy).0,
        100 - NodeConfig::default().verifier_slash
    );
    assert_eq!(n.node.ledger.stake(&n.verifiers[1].account()).0, 100);
    n.node.ledger.verify().unwrap();
}

/// Audits in the `native` profile, where re-execution is compared within a tolerance rather
/// than bit for bit: an honest native run passes its audit, a cheat's native run fails it, and
/// when a lazy verifier vouches for the cheat the node's referee (re-executing natively) sides
/// with the careful one and slashes the lazy one. For training (states compared by relative
/// distance) and for inference (items compared output by output): the referee's inference
/// branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_audits_pass_honest_runs_and_referee_cheats_in_training_and_inference() {
    for (nonce, inference) in [(31, false), (32, true)] {
        let n = net(
            vec![
                ("cheater", Behavior::Noise(0.5)),
                ("honest", Behavior::Honest),
            ],
            vec![
                ("lazy", VerifierMode::Lazy),
                ("careful", VerifierMode::Honest),
            ],
        )
        .await;
        let mut spec = if inference {
            // Seeded weights (no blob to upload).
            let mut spec = inference_task(&n.buyer, nonce);
            if let Workload::Inference(i) = &mut spec.workload {
                i.weights = None;
            }
            spec
        } else {
            short(training_task(&n.buyer, nonce))
        };
        spec.profile = ExecutionProfile::Native;
        let t = settle_spec(&n, spec).await;
        assert_eq!(
            t.attempts.len(),
            2,
            "inference {inference}: {:?}",
            t.attempts
        );
        assert!(!t.attempts[0].accepted && t.attempts[0].worker == n.workers[0].account());
        assert!(t.attempts[1].accepted && t.attempts[1].worker == n.workers[1].account());
        assert_eq!(
            n.node.ledger.stake(&n.workers[0].account()).0,
            300 - NodeConfig::default().worker_slash,
            "inference {inference}"
        );
        assert_eq!(
            n.node.ledger.stake(&n.verifiers[0].account()).0,
            100 - NodeConfig::default().verifier_slash,
            "inference {inference}: the lazy verifier"
        );
        assert_eq!(n.node.ledger.stake(&n.verifiers[1].account()).0, 100);
        n.node.ledger.verify().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_json_error_and_writes_nothing() {
    let n = one_of_each().await;
    let head = n.node.ledger.head();
    let b = &n.buyer;
    let good = post_body(b, short(training_task(b, 9)));
    let mut unknown: Value = serde_json::from_slice(&good).unwrap();
    unknown["body"]["surprise"] = Value::from(1);
    let mut wrong_type: Value = serde_json::from_slice(&good).unwrap();
    wrong_type["body"]["price"] = Value::from("a lot");
    let mut huge = training_task(b, 10);
    if let Workload::Training(t) = &mut huge.workload {
        t.model = ModelSpec::Gpt {
            layers: 48,
            heads: 64,
            width: 4096,
            vocab: 65536,
            context: 2048,
        };
    }
    let mut pricey = short(training_task(b, 11));
    pricey.price = Credits(1_000_000);
    let mallory = Identity::from_test_label("mallory");
    let replayed = {
        let req = signed(b, "POST", "/v1/accounts", Vec::new());
        let headers = req.headers().clone();
        let (s, _) = call(&n.app, req).await;
        assert_eq!(s, StatusCode::CREATED);
        let mut again = Request::builder()
            .method("POST")
            .uri("/v1/accounts")
            .body(Body::empty())
            .unwrap();
        *again.headers_mut() = headers;
        again
    };
    let mut bad_sig = signed(b, "POST", "/v1/tasks", good.clone());
    bad_sig
        .headers_mut()
        .insert("x-market-signature", "00".repeat(64).parse().unwrap());
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "malformed json",
            signed(b, "POST", "/v1/tasks", b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown field",
            signed(
                b,
                "POST",
                "/v1/tasks",
                serde_json::to_vec(&unknown).unwrap(),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong type",
            signed(
                b,
                "POST",
                "/v1/tasks",
                serde_json::to_vec(&wrong_type).unwrap(),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "over the limit",
            signed(b, "POST", "/v1/tasks", vec![b' '; (1 << 20) + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "missing signature",
            Request::builder()
                .method("POST")
                .uri("/v1/tasks")
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
        ),
        ("bad signature", bad_sig, StatusCode::UNAUTHORIZED),
        ("replayed", replayed, StatusCode::UNAUTHORIZED),
        (
            "someone else's account",
            signed(&mallory, "POST", "/v1/tasks", good.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "unknown task",
            get(&format!("/v1/tasks/{}", Hash::of(b"nothing"))),
            StatusCode::NOT_FOUND,
        ),
        ("bad id", get("/v1/tasks/xyz"), StatusCode::BAD_REQUEST),
        ("unknown route", get("/v1/nothing"), StatusCode::NOT_FOUND),
        (
            "insufficient balance",
            signed(b, "POST", "/v1/tasks", post_body(b, pricey)),
            StatusCode::PAYMENT_REQUIRED,
        ),
        (
            "outside compute limits",
            signed(b, "POST", "/v1/tasks", post_body(b, huge)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad query",
            get("/v1/tasks?limit=lots"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "cancel someone else's",
            signed(
                &mallory,
                "POST",
                &format!("/v1/tasks/{}/cancel", Hash::of(b"x")),
                Vec::new(),
            ),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (name, req, expected) in cases {
        let (s, v) = call(&n.app, req).await;
        assert_eq!(s, expected, "{name}: {v}");
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{name}: {v}"
        );
    }
    assert_eq!(n.node.ledger.head(), head, "nothing may be written");
    let (s, v) = call(&n.app, get("/v1/tasks")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["tasks"].as_array().unwrap().is_empty());
    // Cancel: the buyer's queued task is refunded in full.
    let (s, v) = call(&n.app, signed(b, "POST", "/v1/tasks", good)).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = v["id"].as_str().unwrap();
    let (s, _) = call(
        &n.app,
        signed(
            &mallory,
            "POST",
            &format!("/v1/tasks/{id}/cancel"),
            Vec::new(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(
        &n.app,
        signed(b, "POST", &format!("/v1/tasks/{id}/cancel"), Vec::new()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(n.node.ledger.balance(&b.account()).0, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_content_addressed_and_limited() {
    let n = one_of_each().await;
    let data = b"some dataset bytes".to_vec();
    let id = BlobId::of(&data);
    let (s, v) = call(
        &n.app,
        signed(
            &n.buyer,
            "POST",
            &format!("/v1/blobs?expected={id}"),
            data.clone(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], id.to_string());
    let (s, v) = call(
        &n.app,
        signed(
            &n.buyer,
            "POST",
            &format!("/v1/blobs?expected={}", Hash::of(b"other")),
            data.clone(),
        ),
    )
    .await;
    // The signature covers the body's digest, which is not the expected id: refused up front.
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let resp = n
        .app
        .clone()
        .oneshot(signed(
            &n.buyer,
            "GET",
            &format!("/v1/blobs/{id}"),
            Vec::new(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
        data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_that_passes_a_ringer_is_slashed() {
    let config = NodeConfig {
        ringer_rate_ppm: 1_000_000,
        ..NodeConfig::default()
    };
    let n = net_with(
        config.clone(),
        vec![("w1", Behavior::Honest)],
        vec![
            ("lazy", VerifierMode::Lazy),
            ("careful", VerifierMode::Honest),
        ],
    )
    .await;
    let node = &n.node;
    post_and_settle(&n, 1).await;
    assert_eq!(
        node.ledger
            .stake(&Identity::from_test_label("lazy").account())
            .0,
        100 - config.verifier_slash
    );
    assert_eq!(
        node.ledger
            .stake(&Identity::from_test_label("careful").account())
            .0,
        100
    );
    node.ledger.verify().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_rate_falls_with_a_good_record_but_never_below_the_floor() {
    let n = net(
        vec![("w1", Behavior::Honest)],
        vec![
            ("v1", VerifierMode::Honest),
            ("v2", VerifierMode::Honest),
            ("v3", VerifierMode::Honest),
        ],
    )
    .await;
    let config = NodeConfig::default();
    let w = n.workers[0].account();
    assert_eq!(n.node.verifiers_for(&w), config.verifiers_per_task);
    // Reputation is earned one accepted task at a time; simulate a long record.
    for k in 0..(3 * config.trusted_reputation) {
        n.node
            .ledger
            .append(
                market_ledger::IdempotencyKey::new(format!("rep-{k}")).unwrap(),
                market_ledger::EntryKind::Reputation {
                    account: w,
                    delta: 1,
                },
            )
            .unwrap();
    }
    assert_eq!(
        n.node.verifiers_for(&w),
        config.min_verifiers_per_task.max(1)
    );
    assert!(n.node.verifiers_for(&w) >= 1);
    // Losing reputation (five points per failed audit) brings full auditing back.
    n.node
        .ledger
        .append(
            market_ledger::IdempotencyKey::new("rep-loss").unwrap(),
            market_ledger::EntryKind::Reputation {
                account: w,
                delta: -25,
            },
        )
        .unwrap();
    assert_eq!(n.node.verifiers_for(&w), config.verifiers_per_task);
    // The OpenAPI description lists the API.
    let (s, v) = call(&n.app, get("/v1/openapi.json")).await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/blobs",
        "/v1/accounts/{id}",
        "/v1/ledger/head",
    ] {
        assert!(
            v["paths"][path].is_object(),
            "{path} missing from the OpenAPI description"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_task_state_changes() {
    use http_body_util::BodyExt;
    let n = one_of_each().await;
    let resp = n.app.clone().oneshot(get("/v1/events")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let (s, v) = call(
        &n.app,
        signed(
            &n.buyer,
            "POST",
            "/v1/tasks",
            post_body(&n.buyer, short(training_task(&n.buyer, 3))),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["verifier_fee"], NodeConfig::default().verifier_fee);
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(
        text.contains("event: task")
            && text.contains(v["id"].as_str().unwrap())
            && text.contains("queued"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_upload_with_an_expected_id_is_authenticated_before_it_is_read() {
    let n = one_of_each().await;
    let data = b"dataset".to_vec();
    let id = BlobId::of(&data);
    // A wrong signature is refused up front, and nothing is stored.
    let mut req = signed(
        &n.buyer,
        "POST",
        &format!("/v1/blobs?expected={id}"),
        data.clone(),
    );
    req.headers_mut()
        .insert("x-market-signature", "11".repeat(64).parse().unwrap());
    let (s, v) = call(&n.app, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(!n.node.blobs.contains(&id));
    // Signed for the expected id but with other content: refused, nothing stored.
    let mut req = signed(
        &n.buyer,
        "POST",
        &format!("/v1/blobs?expected={id}"),
        data.clone(),
    );
    *req.body_mut() = Body::from(b"other content".to_vec());
    let (s, v) = call(&n.app, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(!n.node.blobs.contains(&BlobId::of(b"other content")));
}

/// Issue 19: what the OpenAPI document promises about parameters, the code keeps. An id is
/// refused with 400 only for its syntax (64 lowercase hex digits, the documented pattern); a
/// well-formed id that is no ed25519 key is an account that does not exist. Bounds on numbers
/// are refused, not silently clamped. The list of tasks is the documented page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_refused_exactly_as_the_document_says() {
    let n = one_of_each().await;
    let not_a_key = "0".repeat(64);
    assert!(
        not_a_key.parse::<AccountId>().is_err(),
        "the zero string is no key"
    );
    for (uri, status) in [
        ("/v1/accounts/0".to_string(), StatusCode::BAD_REQUEST),
        (
            format!("/v1/accounts/{}", "A".repeat(64)),
            StatusCode::BAD_REQUEST,
        ),
        (format!("/v1/accounts/{not_a_key}"), StatusCode::NOT_FOUND),
        (format!("/v1/tasks?buyer={not_a_key}"), StatusCode::OK),
        ("/v1/tasks?buyer=".to_string(), StatusCode::BAD_REQUEST),
        ("/v1/tasks?limit=0".to_string(), StatusCode::BAD_REQUEST),
        ("/v1/tasks?limit=101".to_string(), StatusCode::BAD_REQUEST),
        ("/v1/tasks?limit=100".to_string(), StatusCode::OK),
        (
            "/v1/tasks?after=9007199254740992".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/tasks?state=lost".to_string(), StatusCode::BAD_REQUEST),
        (
            "/v1/ledger/entries?limit=501".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/ledger/entries?limit=500".to_string(), StatusCode::OK),
        (
            "/v1/ledger/entries?from=9007199254740992".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/ledger/export?from=9223372036854775808".to_string(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, v) = call(&n.app, get(&uri)).await;
        assert_eq!(s, status, "{uri}: {v}");
        if s != StatusCode::OK {
            assert!(v["error"]["code"].is_string(), "{uri}: {v}");
        }
    }
    let (_, page) = call(&n.app, get(&format!("/v1/tasks?buyer={not_a_key}"))).await;
    assert_eq!(page, serde_json::json!({"tasks": [], "next_after": null}));
    // The document says so.
    let (_, doc) = call(&n.app, get("/v1/openapi.json")).await;
    let list = &doc["paths"]["/v1/tasks"]["get"];
    assert_eq!(
        list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TaskPage"
    );
    let limit = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&serde_json::json!(1), &serde_json::json!(100))
    );
    let account = &doc["paths"]["/v1/accounts/{id}"]["get"]["parameters"][0]["schema"];
    assert_eq!(account["pattern"], "^[0-9a-f]{64}$");
    // Every signed route requires the four signature headers.
    for (path, method) in [
        ("/v1/accounts", "post"),
        ("/v1/blobs", "post"),
        ("/v1/blobs/{id}", "get"),
        ("/v1/blobs/{id}/grants", "post"),
        ("/v1/blobs/{id}/grants/{account}", "delete"),
        ("/v1/tasks", "post"),
        ("/v1/tasks/{id}/result", "get"),
        ("/v1/tasks/{id}/cancel", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert_eq!(
            op["security"][0].as_object().map(|o| o.len()),
            Some(4),
            "{method} {path}"
        );
        assert!(op["responses"]["401"].is_object(), "{method} {path}");
    }
}

/// `max_blob_bytes`: a blob one byte over the limit is refused with 413 `blob_too_large` (the
/// buyer's quota being far larger), one at the limit is stored; the refused one left nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_max_blob_bytes_is_refused_and_one_at_the_limit_stored() {
    let config = NodeConfig {
        max_blob_bytes: 4096,
        ..NodeConfig::default()
    };
    let n = net_with(
        config,
        vec![("w1", Behavior::Honest)],
        vec![("v1", VerifierMode::Honest)],
    )
    .await;
    let upload = |data: Vec<u8>| {
        let id = BlobId::of(&data);
        call(
            &n.app,
            signed(&n.buyer, "POST", &format!("/v1/blobs?expected={id}"), data),
        )
    };
    let over = vec![7u8; 4097];
    let (s, v) = upload(over.clone()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "blob_too_large", "{v}");
    assert!(!n.node.blobs.contains(&BlobId::of(&over)));
    let at = vec![7u8; 4096];
    let (s, v) = upload(at.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(n.node.blobs.contains(&BlobId::of(&at)));
}
