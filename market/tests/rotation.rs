//! Key rotation through the API: an account moves its balance, stake, reputation, blobs and
//! task results to a new key; the old key can no longer act anywhere; the export still
//! verifies. And the rotations the node must refuse.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{call, get, open, post_body, short, signed, upload};
use market_node::config::NodeConfig;
use market_node::dispatch::VerifierMode;
use market_protocol::fixtures::training_task;
use market_protocol::*;
use market_worker::Behavior;
use serde_json::{json, Value};

fn rotation_body(old: &Identity, new: &Identity, accepter: &Identity) -> Vec<u8> {
    let rotation = Signed::sign(
        KeyRotation {
            version: Version::CURRENT,
            from: old.account(),
            to: new.account(),
        },
        old,
    )
    .unwrap();
    let acceptance = Signed::sign(
        RotationAcceptance {
            version: Version::CURRENT,
            rotation: rotation.id().unwrap(),
            to: accepter.account(),
        },
        accepter,
    )
    .unwrap();
    serde_json::to_vec(&json!({"rotation": rotation, "acceptance": acceptance})).unwrap()
}

fn rotate_uri(old: &Identity) -> String {
    format!("/v1/accounts/{}/rotation", old.account())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_account_keeps_everything_under_its_new_key_and_the_old_key_is_dead() {
    let n = open(
        tempfile::tempdir().unwrap(),
        NodeConfig::default(),
        &[("w1", Behavior::Honest)],
        &[("v1", VerifierMode::Honest), ("v2", VerifierMode::Honest)],
    )
    .await;
    tokio::spawn(n.node.clone().run_engine());
    let (old, new) = (&n.buyer, Identity::from_test_label("new key"));

    // History under the old key: a stake, reputation, a blob, an API key, a settled task.
    n.node
        .ledger
        .append(
            market_ledger::IdempotencyKey::new("test:stake").unwrap(),
            market_ledger::EntryKind::Stake {
                account: old.account(),
                amount: Credits(300),
            },
        )
        .unwrap();
    n.node
        .ledger
        .append(
            market_ledger::IdempotencyKey::new("test:rep").unwrap(),
            market_ledger::EntryKind::Reputation {
                account: old.account(),
                delta: 4,
            },
        )
        .unwrap();
    let (s, blob) = upload(&n.app, old, b"a dataset only its owner may read").await;
    assert_eq!(s, StatusCode::CREATED, "{blob}");
    let blob = blob["id"].as_str().unwrap().to_owned();
    let (s, api_key) = call(
        &n.app,
        signed(old, "POST", "/v1/keys", br#"{"name":"laptop"}"#.to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{api_key}");
    let (s, posted) = call(
        &n.app,
        signed(
            old,
            "POST",
            "/v1/tasks",
            post_body(old, short(training_task(old, 1))),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{posted}");
    let task: TaskId = posted["id"].as_str().unwrap().parse().unwrap();

    // While its task holds credits in escrow, the rotation waits (its refund would go to a
    // dead key).
    let (s, v) = call(
        &n.app,
        signed(
            old,
            "POST",
            &rotate_uri(old),
            rotation_body(old, &new, &new),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let t = n
        .node
        .wait_final(&task, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(t.state, market_node::model::TaskState::Settled);
    let (_, before) = call(&n.app, get(&format!("/v1/accounts/{}", old.account()))).await;

    // Refusals: an acceptance by someone else than the new key; a rotation for another
    // account than the signer; a new key that already holds credits; a local worker, which
    // is connected.
    let mallory = Identity::from_test_label("mallory");
    let (s, v) = call(
        &n.app,
        signed(
            old,
            "POST",
            &rotate_uri(old),
            rotation_body(old, &new, &mallory),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = call(
        &n.app,
        signed(
            &mallory,
            "POST",
            &rotate_uri(old),
            rotation_body(old, &new, &new),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    n.node
        .fund("test", &mallory.account(), 10, 0)
        .await
        .unwrap();
    let (s, v) = call(
        &n.app,
        signed(
            old,
            "POST",
            &rotate_uri(old),
            rotation_body(old, &mallory, &mallory),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("empty account"),
        "{v}"
    );
    let w1 = Identity::from_test_label("w1");
    let fresh = Identity::from_test_label("w1 new key");
    let (s, v) = call(
        &n.app,
        signed(
            &w1,
            "POST",
            &rotate_uri(&w1),
            rotation_body(&w1, &fresh, &fresh),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "account_busy");

    // The rotation.
    let (s, v) = call(
        &n.app,
        signed(
            old,
            "POST",
            &rotate_uri(old),
            rotation_body(old, &new, &new),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for field in ["balance", "staked", "reputation"] {
        assert_eq!(v["account"][field], before[field], "{field}");
    }
    assert_eq!(before["staked"], 300);
    assert_eq!(before["reputation"], 4);
    let (_, gone) = call(&n.app, get(&format!("/v1/accounts/{}", old.account()))).await;
    assert_eq!(gone["balance"], 0);
    assert_eq!(gone["staked"], 0);
    assert_eq!(gone["rotated_to"], new.account().to_hex());

    // The old key is refused everywhere: signed requests, a second rotation, its API keys.
    for (method, uri, body) in [
        (
            "POST",
            "/v1/tasks".to_owned(),
            post_body(old, short(training_task(old, 2))),
        ),
        ("GET", format!("/v1/blobs/{blob}"), Vec::new()),
        ("GET", format!("/v1/tasks/{task}/result"), Vec::new()),
        (
            "POST",
            rotate_uri(old),
            rotation_body(old, &mallory, &mallory),
        ),
    ] {
        let (s, v) = call(&n.app, signed(old, method, &uri, body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}: {v}");
        assert_eq!(v["error"]["code"], "key_rotated", "{uri}");
    }
    let secret = api_key["key"].as_str().unwrap();
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#,
        ))
        .unwrap();
    let (s, v) = call(&n.app, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["code"], "key_rotated");

    // The new key reads the old key's blob and task results, and spends the balance.
    let (s, _) = call(
        &n.app,
        signed(&new, "GET", &format!("/v1/blobs/{blob}"), Vec::new()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &n.app,
        signed(&new, "GET", &format!("/v1/tasks/{task}/result"), Vec::new()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(
        &n.app,
        signed(
            &new,
            "POST",
            "/v1/tasks",
            post_body(&new, short(training_task(&new, 3))),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // The export, with the rotation in it, verifies; it replays to what the node shows.
    let mut export = Vec::new();
    n.node.ledger.export(&mut export, 0).unwrap();
    let report =
        market_ledger::verify_export(&export[..], std::path::Path::new("export"), None).unwrap();
    assert_eq!(
        report.summary.state.rotated_to(&old.account()),
        Some(new.account())
    );
    let (_, now) = call(&n.app, get(&format!("/v1/accounts/{}", new.account()))).await;
    assert_eq!(
        Value::from(report.summary.state.balance(&new.account()).0),
        now["balance"]
    );
    assert_eq!(
        Value::from(report.summary.state.stake(&new.account()).0),
        now["staked"]
    );
}
