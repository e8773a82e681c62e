//! Issue 12: the node facing buyers with bad intent and unfunded keys. Each test is named
//! after the attack it stops, and fails on the code before the defence.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{call, get, open, post_body, short, signed, upload, Net};
use market_node::config::NodeConfig;
use market_node::dispatch::VerifierMode;
use market_node::model::TaskState;
use market_protocol::fixtures::training_task;
use market_protocol::{BlobId, Credits, Identity, TaskId, TaskSpec, Workload};
use market_worker::Behavior;

async fn market(config: NodeConfig) -> Net {
    open(
        tempfile::tempdir().unwrap(),
        config,
        &[("hw1", Behavior::Honest)],
        &[("hv1", VerifierMode::Honest)],
    )
    .await
}

fn from_weights(buyer: &Identity, nonce: u64, weights: BlobId) -> TaskSpec {
    let mut task = short(training_task(buyer, nonce));
    if let Workload::Training(t) = &mut task.workload {
        t.initial_weights = Some(weights);
        t.optimizer = market_protocol::OptimizerSpec::Sgd {
            lr: "0.000001".parse().unwrap(),
            momentum: "0".parse().unwrap(),
            weight_decay: "0".parse().unwrap(),
        };
    }
    task
}

/// Item 1: a buyer read a victim's weights id from the public ledger and trained from it with
/// a tiny learning rate, getting the weights back as its own result. A task may name only
/// blobs its buyer holds or was granted; an owner's grant lets another buyer use them, and its
/// revocation stops that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_cannot_train_from_another_accounts_private_blob() {
    let n = market(NodeConfig::default()).await;
    tokio::spawn(n.node.clone().run_engine());
    let victim = &n.buyer;
    let (s, v) = call(
        &n.app,
        signed(
            victim,
            "POST",
            "/v1/tasks",
            post_body(victim, short(training_task(victim, 1))),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().parse().unwrap();
    let t = n
        .node
        .wait_final(&id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled);
    let weights = t.outputs[0];

    let thief = Identity::from_test_label("thief");
    n.node
        .fund("test", &thief.account(), 5_000, 0)
        .await
        .unwrap();
    let steal = |nonce| {
        signed(
            &thief,
            "POST",
            "/v1/tasks",
            post_body(&thief, from_weights(&thief, nonce, weights)),
        )
    };
    let (s, v) = call(&n.app, steal(2)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("granted"),
        "{v}"
    );
    // Nothing was escrowed.
    assert_eq!(n.node.ledger.balance(&thief.account()).0, 5_000);
    // A direct read is refused as before.
    let (s, _) = call(
        &n.app,
        signed(&thief, "GET", &format!("/v1/blobs/{weights}"), vec![]),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Only a holder may grant: the thief cannot grant itself.
    let grant = |account: &Identity| {
        serde_json::to_vec(&serde_json::json!({"account": account.account().to_hex()})).unwrap()
    };
    let (s, v) = call(
        &n.app,
        signed(
            &thief,
            "POST",
            &format!("/v1/blobs/{weights}/grants"),
            grant(&thief),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // The victim (the buyer of the task that made them, so a holder) grants them: now the
    // former thief may read them and fine-tune from them.
    let (s, v) = call(
        &n.app,
        signed(
            victim,
            "POST",
            &format!("/v1/blobs/{weights}/grants"),
            grant(&thief),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = call(
        &n.app,
        signed(&thief, "GET", &format!("/v1/blobs/{weights}"), vec![]),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&n.app, steal(3)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Revoked: no new task may name them (the one posted keeps them).
    let (s, v) = call(
        &n.app,
        signed(
            victim,
            "DELETE",
            &format!("/v1/blobs/{weights}/grants/{}", thief.account()),
            vec![],
        ),
    )
    .await;
    assert_eq!(
        (s, v["revoked"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );
    let (s, v) = call(&n.app, steal(4)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // A blob nobody uploaded is named as such.
    let (s, v) = call(
        &n.app,
        signed(
            &thief,
            "POST",
            "/v1/tasks",
            post_body(
                &thief,
                from_weights(&thief, 5, BlobId(market_protocol::Hash([7; 32]))),
            ),
        ),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_blob")),
        "{v}"
    );
}

/// Item 2: the keys of `--local-workers` and `--local-verifiers` came from a public label
/// (the operator's account), so anyone could derive them and spend what they earned.
#[test]
fn a_stranger_cannot_derive_local_participant_keys() {
    let dir = tempfile::tempdir().unwrap();
    let workers = market_node::server::local_identities(dir.path(), "worker", 2).unwrap();
    let verifiers = market_node::server::local_identities(dir.path(), "verifier", 1).unwrap();
    let operator =
        market_protocol::keyfile::load_or_create_identity(&dir.path().join("operator.key"))
            .unwrap();
    // What a stranger could compute on the old code.
    let derived = Identity::from_test_label(&format!("local worker 0 of {}", operator.account()));
    assert_ne!(workers[0].account(), derived.account());
    assert_ne!(workers[0].account(), workers[1].account());
    assert_ne!(workers[0].account(), verifiers[0].account());
    // Random, kept in 0600 files, and the same after a restart.
    let again = market_node::server::local_identities(dir.path(), "worker", 2).unwrap();
    assert_eq!(again[1].account(), workers[1].account());
    let other =
        market_node::server::local_identities(tempfile::tempdir().unwrap().path(), "worker", 1)
            .unwrap();
    assert_ne!(other[0].account(), workers[0].account());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("local/worker-0.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// Item 3: an unfunded key made the node build a task's dataset (seconds of CPU) before being
/// told it could not pay. The balance is checked first: an invalid task from an unfunded key
/// is refused for the money (402), before anything is validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfunded_post_is_refused_before_the_node_builds_anything() {
    let n = market(NodeConfig::default()).await;
    let broke = Identity::from_test_label("broke");
    let mut task = training_task(&broke, 1);
    if let Workload::Training(t) = &mut task.workload {
        // Refused by validation (a batch larger than the dataset), which now never runs.
        t.batch_size = 1 << 20;
    }
    let (s, v) = call(
        &n.app,
        signed(&broke, "POST", "/v1/tasks", post_body(&broke, task.clone())),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("insufficient_balance")),
        "{v}"
    );
    // Funded, the same task gets validated and refused for what it is.
    n.node
        .fund("test", &broke.account(), 5_000, 0)
        .await
        .unwrap();
    let (s, v) = call(
        &n.app,
        signed(&broke, "POST", "/v1/tasks", post_body(&broke, task)),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_task")),
        "{v}"
    );
}

/// Item 4: unfunded, unregistered keys stored up to 256 MiB per upload, without quota or
/// expiry. Now storage is bought with credits held, the signature and quota are checked before
/// a byte is read, and blobs no task reads expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfunded_keys_cannot_fill_the_disk_with_blobs() {
    let config = NodeConfig {
        blob_bytes_per_credit: 1, // the buyer's 5,000 credits buy 5,000 bytes
        ..NodeConfig::default()
    };
    let n = market(config.clone()).await;
    let stranger = Identity::from_test_label("stranger");
    let (s, v) = upload(&n.app, &stranger, &[1u8; 1000]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("no_blob_quota")),
        "{v}"
    );
    // Without `expected` the upload is refused before it is read.
    let (s, v) = call(&n.app, signed(&n.buyer, "POST", "/v1/blobs", vec![1; 10])).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("expected_required")),
        "{v}"
    );
    // Within quota, past it, and a re-upload of what one holds (free).
    let (s, v) = upload(&n.app, &n.buyer, &[2u8; 4000]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let kept: BlobId = v["id"].as_str().unwrap().parse().unwrap();
    let (s, v) = upload(&n.app, &n.buyer, &[3u8; 2000]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("blob_quota_exceeded")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("4000"),
        "{v}"
    );
    let (s, _) = upload(&n.app, &n.buyer, &[2u8; 4000]).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(n.node.store.blob_usage(&n.buyer.account()).unwrap(), 4000);
    // A held blob's id does not open the full size limit to longer bodies.
    // (Signed over the held blob's id, as the node checks, with a longer body declared.)
    let uri = format!("/v1/blobs?expected={kept}");
    let mut req = axum::http::Request::builder().method("POST").uri(&uri);
    for (k, v) in market_node::auth::sign_headers(
        &n.buyer,
        "POST",
        &uri,
        &[2u8; 4000],
        market_node::auth::unix_now(),
        &common::nonce(),
    ) {
        req = req.header(k, v);
    }
    let req = req
        .header("content-length", "4001")
        // A body that fails after its first bytes: read at all, it would be refused as an
        // interrupted upload; refused on its declared length, nothing of it is read.
        .body(axum::body::Body::from_stream(futures_util::stream::iter([
            Ok(bytes::Bytes::from(vec![2u8; 100])),
            Err(std::io::Error::other("the rest never comes")),
        ])))
        .unwrap();
    let (s, v) = call(&n.app, req).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id_mismatch")),
        "{v}"
    );
    // Nobody reads it: it expires a day after its last upload, and the quota comes back.
    let now = market_node::auth::unix_now();
    n.node.housekeep(now).unwrap();
    assert!(n.node.blobs.contains(&kept));
    let (_, blobs) = n.node.housekeep(now + config.blob_ttl_secs + 1).unwrap();
    assert_eq!(blobs, 1);
    assert!(!n.node.blobs.contains(&kept));
    assert_eq!(n.node.store.blob_usage(&n.buyer.account()).unwrap(), 0);
    let (s, _) = upload(&n.app, &n.buyer, &[3u8; 2000]).await;
    assert_eq!(s, StatusCode::CREATED);
}

/// Item 5: registration of keys with nothing at stake grew the store without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfunded_keys_cannot_register() {
    let n = market(NodeConfig::default()).await;
    let stranger = Identity::from_test_label("registering stranger");
    let (s, v) = call(&n.app, signed(&stranger, "POST", "/v1/accounts", vec![])).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("unfunded_account")),
        "{v}"
    );
    assert!(!n.node.store.is_registered(&stranger.account()).unwrap());
    let (s, v) = call(&n.app, signed(&n.buyer, "POST", "/v1/accounts", vec![])).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Item 7: of 300 concurrent posts one vanished from the listing and the queue (two took the
/// same arrival number) and stayed escrowed. 1,000 concurrent posts, then a restart: every
/// task is listed, queued and counted once, and escrow matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_lose_no_task_across_a_restart() {
    const POSTS: u64 = 1000;
    let config = NodeConfig {
        max_concurrent_validations: 2,
        validation_wait_secs: 600,
        ..NodeConfig::default()
    };
    let n = market(config.clone()).await;
    let price = 30;
    n.node
        .fund("many", &n.buyer.account(), price * POSTS, 0)
        .await
        .unwrap();
    let mut posts = tokio::task::JoinSet::new();
    for nonce in 0..POSTS {
        let (app, buyer) = (n.app.clone(), n.buyer.clone());
        posts.spawn(async move {
            let mut task = training_task(&buyer, 1000 + nonce);
            task.price = Credits(price);
            let (s, v) = call(
                &app,
                signed(&buyer, "POST", "/v1/tasks", post_body(&buyer, task)),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v["id"].as_str().unwrap().to_owned()
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(id) = posts.join_next().await {
        ids.insert(id.unwrap());
    }
    assert_eq!(ids.len() as u64, POSTS);
    let check = |n: &Net| {
        let listed: std::collections::BTreeSet<String> = n
            .node
            .store
            .tasks(None, usize::MAX)
            .unwrap()
            .iter()
            .map(|t| t.id.to_string())
            .collect();
        assert_eq!(listed, ids);
        assert_eq!(n.node.store.queued_tasks().unwrap().len() as u64, POSTS);
        assert_eq!(n.node.store.task_counts().get("queued"), Some(&POSTS));
        assert_eq!(n.node.ledger.open_escrows().len() as u64, POSTS);
    };
    check(&n);
    let Net { node, app, dir, .. } = n;
    drop((node, app));
    let n = open(
        dir,
        config,
        &[("hw1", Behavior::Honest)],
        &[("hv1", VerifierMode::Honest)],
    )
    .await;
    check(&n);
    // The listing pages through all of them by the state index.
    let (mut after, mut seen) = (None::<u64>, 0);
    loop {
        let uri = match after {
            Some(a) => format!("/v1/tasks?state=queued&limit=100&after={a}"),
            None => "/v1/tasks?state=queued&limit=100".to_string(),
        };
        let (s, v) = call(&n.app, get(&uri)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        seen += v["tasks"].as_array().unwrap().len();
        match v["next_after"].as_u64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen as u64, POSTS);
    let (s, v) = call(&n.app, get("/v1/tasks?state=bogus")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, metrics) = call(&n.app, get("/metrics")).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains(&format!("market_tasks{{state=\"queued\"}} {POSTS}")),
        "{metrics}"
    );
}

/// A node killed between a post's escrow and its task record left the buyer's credits locked
/// for a task nothing would run. At restart the post is finished from the spec the escrow
/// entry embeds, or refunded when the task no longer validates (and then cannot be queued
/// again on its drained escrow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_killed_between_its_escrow_and_its_record_is_finished_or_refunded_at_restart() {
    let n = market(NodeConfig::default()).await;
    let buyer = n.buyer.clone();
    let start = n.node.ledger.balance(&buyer.account()).0;
    // Two posts whose escrows were appended just before the crash: a good task, and one that
    // names a blob nobody ever uploaded (so it no longer validates).
    let good = market_protocol::Signed::sign(short(training_task(&buyer, 900)), &buyer).unwrap();
    let mut gone = short(training_task(&buyer, 901));
    if let Workload::Training(t) = &mut gone.workload {
        t.initial_weights = Some(BlobId(market_protocol::Hash::of(b"never uploaded")));
    }
    let gone = market_protocol::Signed::sign(gone, &buyer).unwrap();
    for spec in [&good, &gone] {
        let id = spec.id().unwrap();
        n.node
            .ledger
            .append(
                market_node::engine::Operation::Escrow { task: TaskId(id) }
                    .key()
                    .unwrap(),
                market_ledger::EntryKind::escrow_of(spec.clone()).unwrap(),
            )
            .unwrap();
    }
    let (good_id, gone_id) = (TaskId(good.id().unwrap()), TaskId(gone.id().unwrap()));
    let locked = good.body.price.0 + gone.body.price.0;
    assert_eq!(n.node.ledger.balance(&buyer.account()).0, start - locked);
    assert!(n.node.store.task(&good_id).unwrap().is_none());
    // Restart.
    let Net { node, app, dir, .. } = n;
    drop((node, app));
    let n = open(
        dir,
        NodeConfig::default(),
        &[("hw1", Behavior::Honest)],
        &[("hv1", VerifierMode::Honest)],
    )
    .await;
    assert_eq!(n.node.recover_orphan_escrows().await.unwrap(), (1, 1));
    let t = n.node.store.task(&good_id).unwrap().unwrap();
    assert_eq!(
        t.state,
        TaskState::Queued,
        "the interrupted post is finished"
    );
    assert!(t.needs.memory_bytes > 0, "and validated like any post");
    assert!(n.node.store.task(&gone_id).unwrap().is_none());
    assert_eq!(
        n.node.ledger.escrow_of(&gone_id).unwrap().remaining.0,
        0,
        "the one that no longer validates is refunded"
    );
    assert_eq!(
        n.node.ledger.balance(&buyer.account()).0,
        start - good.body.price.0
    );
    // Posting the refunded task again is refused: its escrow is drained.
    let (s, v) = call(
        &n.app,
        signed(
            &buyer,
            "POST",
            "/v1/tasks",
            serde_json::to_vec(&gone).unwrap(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "task_closed", "{v}");
    // Nothing is left to recover, and the good task runs to settlement.
    assert_eq!(n.node.recover_orphan_escrows().await.unwrap(), (0, 0));
    tokio::spawn(n.node.clone().run_engine());
    let t = n
        .node
        .wait_final(&good_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
}

/// A pooled task pays each of its `rounds × slots` slot-rounds an equal share of its price:
/// one whose share cannot pay its verifiers is refused before anything is escrowed, and one
/// that can is posted as a pooled task (never run on one worker), its first round's
/// slot-round tasks shown in its view and kept out of its buyer's listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_task_is_priced_per_slot_round_and_posted_as_its_rounds() {
    let n = market(NodeConfig::default()).await;
    let before = n.node.ledger.balance(&n.buyer.account()).0;
    let pooled = |nonce: u64, price: u64| {
        let mut task = short(training_task(&n.buyer, nonce));
        if let Workload::Training(t) = &mut task.workload {
            t.steps = 60;
            t.checkpoint_interval = 10;
            t.pool = Some(market_protocol::fixtures::pool(2, 3, 20));
        }
        task.price = market_protocol::Credits(price);
        task
    };
    let post = |task| {
        call(
            &n.app,
            signed(&n.buyer, "POST", "/v1/tasks", post_body(&n.buyer, task)),
        )
    };
    // 6 slot-rounds at 20 credits each: no more than two verifiers' fees of 10.
    let (s, v) = post(pooled(950, 120)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "price_too_low", "{v}");
    assert_eq!(n.node.ledger.balance(&n.buyer.account()).0, before);
    let (s, v) = post(pooled(951, 600)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"]["state"], "pooling", "{v}");
    assert_eq!(v["pool"]["part"], "task", "{v}");
    assert_eq!(v["pool"]["budget"], 100, "{v}");
    let slots = v["pool"]["slot_tasks"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{v}");
    // The current round, slot by slot.
    assert_eq!(v["slots"][1]["slot"], 1, "{v}");
    assert_eq!(v["slots"][1]["task"], slots[1], "{v}");
    assert_eq!(v["slots"][1]["state"]["state"], "queued", "{v}");
    let (s, slot) = call(
        &n.app,
        get(&format!("/v1/tasks/{}", slots[0].as_str().unwrap())),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{slot}");
    assert_eq!(slot["pool"]["part"], "slot_round", "{slot}");
    assert_eq!(slot["pool"]["parent"], v["id"], "{slot}");
    assert_eq!(slot["state"]["state"], "queued", "{slot}");
    let (_, mine) = call(
        &n.app,
        get(&format!("/v1/tasks?buyer={}", n.buyer.account())),
    )
    .await;
    let ids: Vec<&str> = mine["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [v["id"].as_str().unwrap()], "{mine}");
    assert_eq!(n.node.ledger.balance(&n.buyer.account()).0, before - 600);
}

/// Item 6: each ledger export holds a blocking thread while its client reads. A client that
/// opens an export and stops reading holds one of `max_concurrent_exports` slots; past them
/// the node answers 429 at once, and a slot comes back as soon as its client goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_that_stop_reading_hold_their_slots_and_the_next_is_refused() {
    use tower::ServiceExt;
    let n = market(NodeConfig {
        max_concurrent_exports: 1,
        ..NodeConfig::default()
    })
    .await;
    // A ledger longer than the few chunks an export buffers: its writer blocks on the client.
    let mut funds = tokio::task::JoinSet::new();
    for i in 0..2000u32 {
        let node = n.node.clone();
        funds.spawn(async move {
            let who = Identity::from_test_label(&format!("export filler {i}"));
            node.fund("filler", &who.account(), 1, 0).await.unwrap();
        });
    }
    while funds.join_next().await.is_some() {}
    let export = || n.app.clone().oneshot(get("/v1/ledger/export"));
    let held = export().await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    // Not read: the export holds its slot (taken before the answer's head, kept by its body).
    let (s, v) = call(&n.app, get("/v1/ledger/export")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "exports_busy", "{v}");
    // The client goes away: its slot comes back.
    drop(held);
    for _ in 0..100 {
        let r = export().await.unwrap();
        if r.status() == StatusCode::OK {
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            assert!(
                body.len() > 320 << 10,
                "the whole ledger: {} bytes",
                body.len()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slot never came back");
}

/// Found writing the spec (issue 13): the node accepted tasks whose result no one could ever
/// report or read. A training run's leaves (one per checkpoint) must fit the 4 MiB its
/// auditors read, and a worker's `done` report (the commitment and the manifest of every file)
/// the 4 MiB of a request header; a task past either was posted, escrowed and run, and its
/// honest worker then failed as if it had withheld or abandoned the result. Both are now
/// refused at post, with nothing escrowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_result_cannot_be_reported_or_audited_is_refused_at_post() {
    let n = market(NodeConfig::default()).await;
    let before = n.node.ledger.balance(&n.buyer.account()).0;
    let post = |task| {
        call(
            &n.app,
            signed(&n.buyer, "POST", "/v1/tasks", post_body(&n.buyer, task)),
        )
    };
    let every_step = |nonce: u64, steps: u32| {
        let mut task = training_task(&n.buyer, nonce);
        if let Workload::Training(t) = &mut task.workload {
            t.steps = steps;
            t.checkpoint_interval = 1;
        }
        task
    };
    // 60,000 leaves do not fit what a verifier reads.
    let (s, v) = post(every_step(960, 60_000)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "invalid_task", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("segments"),
        "{v}"
    );
    // 40,000 checkpoints do, but their manifest does not fit the worker's report.
    let (s, v) = post(every_step(961, 40_000)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "result_too_big_to_report", "{v}");
    // Nor do 30,000 inference items.
    let mut many = market_protocol::fixtures::inference_task(&n.buyer, 962);
    many.profile = market_protocol::ExecutionProfile::Repro;
    if let Workload::Inference(i) = &mut many.workload {
        i.weights = None;
        i.inputs = market_protocol::InferenceInputs::Prompts {
            prompts: vec!["1+2=".into(); 30_000],
            max_new_tokens: 1,
        };
    }
    let (s, v) = post(many).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "result_too_big_to_report", "{v}");
    assert_eq!(n.node.ledger.balance(&n.buyer.account()).0, before);
    // A run of 2,000 checkpoints is reported and audited as ever.
    let (s, v) = post(every_step(963, 2_000)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Issue 18: a slash larger than the stake left takes the stake and no more (nothing goes
/// negative, nothing is taken from the balance), and every credit is still accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_past_the_stake_left_takes_the_stake_and_no_more() {
    let config = NodeConfig {
        worker_slash: 1_000,
        ..NodeConfig::default()
    };
    let n = open(
        tempfile::tempdir().unwrap(),
        config,
        &[
            ("cap cheat", Behavior::Skip(1.0)),
            ("cap honest", Behavior::Honest),
        ],
        &[("cap v", VerifierMode::Honest)],
    )
    .await;
    tokio::spawn(n.node.clone().run_engine());
    let cheat = Identity::from_test_label("cap cheat").account();
    let (stake, balance) = (
        n.node.ledger.stake(&cheat).0,
        n.node.ledger.balance(&cheat).0,
    );
    assert_eq!(stake, 300);
    let id = n
        .node
        .post_task(
            market_protocol::Signed::sign(short(training_task(&n.buyer, 990)), &n.buyer).unwrap(),
        )
        .await
        .unwrap()
        .id;
    let t = n
        .node
        .wait_final(&id, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    assert_eq!(t.attempts[0].worker, cheat);
    assert!(t.attempts[0].result_failed);
    assert_eq!(n.node.ledger.stake(&cheat).0, 0, "the whole stake, capped");
    assert_eq!(
        n.node.ledger.balance(&cheat).0,
        balance,
        "not a credit of its balance"
    );
    let slashed: u64 = (0..=n.node.ledger.head().seq)
        .filter_map(
            |s| match n.node.ledger.entry(s).unwrap().unwrap().body.kind {
                market_ledger::EntryKind::Slash {
                    account, amount, ..
                } if account == cheat => Some(amount.0),
                _ => None,
            },
        )
        .sum();
    assert_eq!(
        slashed, stake,
        "slash entries add up to the stake that was there"
    );
    n.node.ledger.verify().unwrap();
}

/// Issue 18: a task whose every attempt fails its audit is rejected once `max_attempts`
/// results have failed, even with workers left, and its buyer gets the whole escrow back (and
/// the cheaters' slashes): no worker, no verifier fee beyond those earned by catching them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_rejected_after_max_attempts_failed_results_with_workers_to_spare() {
    let config = NodeConfig {
        max_attempts: 2,
        ..NodeConfig::default()
    };
    let n = open(
        tempfile::tempdir().unwrap(),
        config.clone(),
        &[
            ("max cheat 1", Behavior::Skip(1.0)),
            ("max cheat 2", Behavior::Skip(1.0)),
            ("max cheat 3", Behavior::Skip(1.0)),
        ],
        &[("max v", VerifierMode::Honest)],
    )
    .await;
    tokio::spawn(n.node.clone().run_engine());
    let before = n.node.ledger.balance(&n.buyer.account()).0;
    let task = short(training_task(&n.buyer, 991));
    let id = n
        .node
        .post_task(market_protocol::Signed::sign(task, &n.buyer).unwrap())
        .await
        .unwrap()
        .id;
    let t = n
        .node
        .wait_final(&id, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(
        t.state,
        TaskState::Rejected {
            reason: "no worker produced a result that passed its audits".into()
        },
        "{t:?}"
    );
    assert_eq!(t.attempts.len(), 2, "the third cheater is never asked");
    assert!(t.attempts.iter().all(|a| a.result_failed && !a.accepted));
    assert!(n
        .node
        .ledger
        .escrow_of(&id)
        .is_none_or(|e| e.remaining.0 == 0));
    // Back: the whole price, plus the slashes beyond the catching verifier's fee.
    let slashed_to_buyer = 2 * (config.worker_slash - config.verifier_fee);
    assert_eq!(
        n.node.ledger.balance(&n.buyer.account()).0,
        before + slashed_to_buyer
    );
}
