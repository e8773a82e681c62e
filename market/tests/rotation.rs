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

    // A grant made to the old key reaches the account's new key.
    let (s, theirs) = upload(&n.app, &mallory, b"mallory's data, shared with the buyer").await;
    assert_eq!(s, StatusCode::CREATED, "{theirs}");
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let grant = serde_json::to_vec(&json!({"account": old.account().to_hex()})).unwrap();
    let (s, v) = call(
        &n.app,
        signed(
            &mallory,
            "POST",
            &format!("/v1/blobs/{theirs}/grants"),
            grant,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = call(
        &n.app,
        signed(&new, "GET", &format!("/v1/blobs/{theirs}"), Vec::new()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

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

/// Rotates `old` to `new` on the ledger, as the two keys would through the API (which the
/// node's busy checks guard; the ledger's own rules are what these tests are about).
fn rotate_on_ledger(
    ledger: &market_ledger::Ledger,
    old: &Identity,
    new: &Identity,
) -> anyhow::Result<()> {
    let rotation = Signed::sign(
        KeyRotation {
            version: Version::CURRENT,
            from: old.account(),
            to: new.account(),
        },
        old,
    )?;
    let acceptance = Signed::sign(
        RotationAcceptance {
            version: Version::CURRENT,
            rotation: rotation.id()?,
            to: new.account(),
        },
        new,
    )?;
    ledger.rotate(
        market_ledger::IdempotencyKey::new(format!("test:rotate:{}", old.account()))?,
        rotation,
        acceptance,
    )?;
    Ok(())
}

/// In-process participants who rotate their keys on the ledger while the node is busy with
/// their work, which the node's own busy checks do not see: by default each verifier right
/// after signing a verdict (the red team's verifier that rotated between its verdict and the
/// settlement); with `worker`, that worker once, right after the first verdict on its run.
#[derive(Debug)]
struct RotateAfterVerdict {
    inner: market_node::dispatch::InProcess,
    ledger: std::sync::OnceLock<std::sync::Arc<market_ledger::Ledger>>,
    /// A worker to rotate (old key, new key) instead of the verifiers.
    worker: Option<(Identity, Identity)>,
    rotated: std::sync::Mutex<Vec<AccountId>>,
}

impl market_node::dispatch::Dispatch for RotateAfterVerdict {
    fn workers(&self) -> Vec<AccountId> {
        self.inner.workers()
    }
    fn verifiers(&self) -> Vec<AccountId> {
        self.inner.verifiers()
    }
    fn runs(&self, p: &AccountId, profile: ExecutionProfile) -> bool {
        self.inner.runs(p, profile)
    }
    fn offers(&self, p: &AccountId) -> Option<Resources> {
        self.inner.offers(p)
    }
    fn concurrent_tasks(&self) -> usize {
        self.inner.concurrent_tasks()
    }
    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        slot_round: Option<SlotRound>,
        dir: &std::path::Path,
        blobs: &dyn market_compute::BlobSource,
        progress: &mut dyn FnMut(market_worker::Progress),
    ) -> anyhow::Result<Signed<Commitment>> {
        self.inner
            .run(worker, task, slot_round, dir, blobs, progress)
    }
    fn audit(
        &self,
        verifier: &AccountId,
        dir: &std::path::Path,
        request: &market_node::dispatch::AuditRequest,
        blobs: &dyn market_compute::BlobSource,
    ) -> anyhow::Result<Signed<Verdict>> {
        let verdict = self.inner.audit(verifier, dir, request, blobs)?;
        let ledger = self.ledger.get().unwrap();
        let mut rotated = self.rotated.lock().unwrap();
        match &self.worker {
            Some((old, new)) => {
                if rotated.is_empty() {
                    rotate_on_ledger(ledger, old, new)?;
                    rotated.push(new.account());
                }
            }
            None => {
                let (old, _) = self
                    .inner
                    .verifiers
                    .iter()
                    .find(|(i, _)| i.account() == *verifier)
                    .unwrap();
                let new = Identity::from_test_label(&format!("{verifier} new key"));
                rotate_on_ledger(ledger, old, &new)?;
                rotated.push(new.account());
            }
        }
        Ok(verdict)
    }
    fn open_steps(
        &self,
        worker: &AccountId,
        dir: &std::path::Path,
        segment: u32,
        blobs: &dyn market_compute::BlobSource,
    ) -> anyhow::Result<()> {
        self.inner.open_steps(worker, dir, segment, blobs)
    }
}

/// Opens a node in `dir` with `dispatch` (funded as `funding`, then each of `extra` with its
/// balance and stake), posts one short training task through the API and waits for it to
/// end: the node, the post's answer and the final record.
async fn one_task(
    dir: &tempfile::TempDir,
    dispatch: std::sync::Arc<RotateAfterVerdict>,
    funding: common::Funding,
    extra: &[(AccountId, u64, u64)],
) -> (
    std::sync::Arc<market_node::engine::Node>,
    Value,
    market_node::model::TaskRecord,
) {
    let (node, buyer) = common::open_with(
        dir.path(),
        NodeConfig::default(),
        "",
        dispatch.clone(),
        funding,
    )
    .await;
    dispatch.ledger.set(node.ledger.clone()).unwrap();
    for (who, balance, stake) in extra {
        node.fund("test", who, *balance, *stake).await.unwrap();
    }
    let app = market_node::api::router(node.clone());
    tokio::spawn(node.clone().run_engine());
    let (s, posted) = call(
        &app,
        signed(
            &buyer,
            "POST",
            "/v1/tasks",
            post_body(&buyer, short(training_task(&buyer, 1))),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{posted}");
    let task: TaskId = posted["id"].as_str().unwrap().parse().unwrap();
    let t = node
        .wait_final(&task, Duration::from_secs(120))
        .await
        .unwrap();
    (node, posted, t)
}

/// A rotation can still land while work done under the old key is unpaid (the node refuses a
/// busy participant, but a verifier is idle between its verdict and the settlement). The task
/// must settle all the same, the fees reaching the verifiers' new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fees_for_work_done_under_a_rotated_key_reach_the_new_key_and_the_task_settles() {
    let dir = tempfile::tempdir().unwrap();
    let dispatch = std::sync::Arc::new(RotateAfterVerdict {
        inner: market_node::dispatch::InProcess {
            workers: vec![(Identity::from_test_label("w1"), Behavior::Honest)],
            verifiers: ["v1", "v2"]
                .iter()
                .map(|l| (Identity::from_test_label(l), VerifierMode::Honest))
                .collect(),
        },
        ledger: Default::default(),
        worker: None,
        rotated: Default::default(),
    });
    let (node, posted, t) = one_task(&dir, dispatch.clone(), common::Funding::API, &[]).await;
    assert_eq!(
        t.state,
        market_node::model::TaskState::Settled,
        "{:?}",
        t.attempts
    );
    let fee = posted["verifier_fee"].as_u64().unwrap();
    let rotated = dispatch.rotated.lock().unwrap().clone();
    assert_eq!(rotated.len(), 2);
    for new in rotated {
        // Each new key: the old key's balance (200 minted - 100 staked) plus the fee.
        assert_eq!(node.ledger.balance(&new).0, 100 + fee);
        assert_eq!(node.ledger.stake(&new).0, 100);
    }
    node.ledger.verify().unwrap();
}

/// Found reviewing rotation: a worker caught cheating on a task is never handed that task
/// again, but that bar named its key. Rotating to a fresh key (stake and reputation follow)
/// must not make it a stranger to the task it cheated on. The cheater rotates while its
/// run is under audit, so the rotation has landed when the node next looks for a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_worker_that_rotates_its_key_is_not_handed_the_task_again() {
    let dir = tempfile::tempdir().unwrap();
    let old = Identity::from_test_label("rotating cheater");
    let new = Identity::from_test_label("rotating cheater new key");
    let dispatch = std::sync::Arc::new(RotateAfterVerdict {
        inner: market_node::dispatch::InProcess {
            // Both keys are the same participant's machine, which cheats under either; the
            // new key holds nothing (so no stake, so no task) until the rotation.
            workers: vec![
                (old.clone(), Behavior::Skip(0.5)),
                (new.clone(), Behavior::Skip(0.5)),
            ],
            verifiers: ["v1", "v2"]
                .iter()
                .map(|l| (Identity::from_test_label(l), VerifierMode::Honest))
                .collect(),
        },
        ledger: Default::default(),
        worker: Some((old.clone(), new.clone())),
        rotated: Default::default(),
    });
    // The new key holds nothing; the old one enough stake that a slash leaves it eligible:
    // only the bar keeps it off the task.
    let no_worker = common::Funding {
        worker: (0, 0),
        ..common::Funding::API
    };
    let (node, _, t) = one_task(
        &dir,
        dispatch.clone(),
        no_worker,
        &[(old.account(), 3_000, 2_000)],
    )
    .await;
    assert_eq!(*dispatch.rotated.lock().unwrap(), vec![new.account()]);
    // The slash followed the rotation and left the new key staked: eligible by stake alone.
    assert!(node.ledger.stake(&new.account()).0 >= NodeConfig::default().min_worker_stake);
    // Caught once, then no other worker: rejected, never handed to the new key (without the
    // bar following the rotation, the new key runs it, cheats again and is caught again).
    assert_eq!(
        t.attempts.iter().map(|a| a.worker).collect::<Vec<_>>(),
        vec![old.account()],
        "the rotated cheater was handed the task again"
    );
    assert!(
        matches!(&t.state, market_node::model::TaskState::Rejected { reason }
            if reason.contains("no other staked worker")),
        "{:?}",
        t.state
    );
}
