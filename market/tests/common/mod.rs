//! What the API tests share: a node with in-process participants, signed requests, calls
//! through the router without sockets.

#![allow(dead_code)] // Each test file uses its own part.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use market_node::auth::{sign_headers, unix_now};
use market_node::config::NodeConfig;
use market_node::dispatch::{InProcess, VerifierMode};
use market_node::engine::Node;
use market_protocol::{Identity, Signed, TaskSpec, Workload};
use market_worker::Behavior;
use serde_json::Value;
use tower::ServiceExt;

/// A node, its router and a funded buyer.
pub struct Net {
    pub node: Arc<Node>,
    pub app: Router,
    pub buyer: Identity,
    pub dir: tempfile::TempDir,
}

/// Opens a node in `dir` with `config` and the given in-process participants (funded and
/// staked) and a buyer with 5,000 credits.
pub async fn open(
    dir: tempfile::TempDir,
    config: NodeConfig,
    workers: &[(&str, Behavior)],
    verifiers: &[(&str, VerifierMode)],
) -> Net {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let dispatch = InProcess {
        workers: workers
            .iter()
            .map(|(l, b)| (Identity::from_test_label(l), *b))
            .collect(),
        verifiers: verifiers
            .iter()
            .map(|(l, m)| (Identity::from_test_label(l), *m))
            .collect(),
    };
    let node = Node::open(
        dir.path(),
        config,
        Identity::from_test_label("operator"),
        Arc::new(dispatch),
    )
    .unwrap();
    let buyer = Identity::from_test_label("buyer");
    node.fund("test", &buyer.account(), 5_000, 0).await.unwrap();
    for (l, _) in workers {
        node.fund("test", &Identity::from_test_label(l).account(), 500, 300)
            .await
            .unwrap();
    }
    for (l, _) in verifiers {
        node.fund("test", &Identity::from_test_label(l).account(), 200, 100)
            .await
            .unwrap();
    }
    let app = market_node::api::router(node.clone());
    Net {
        node,
        app,
        buyer,
        dir,
    }
}

/// A unique request nonce.
pub fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("nonce-{:016}", N.fetch_add(1, Ordering::Relaxed))
}

/// A request signed by `id`.
pub fn signed(id: &Identity, method: &str, uri: &str, body: Vec<u8>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in sign_headers(id, method, uri, &body, unix_now(), &nonce()) {
        req = req.header(k, v);
    }
    req.header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// An unsigned GET.
pub fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

/// Sends a request through the router; the body as JSON (or as a JSON string if it is not).
pub async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// A signed task, as a request body.
pub fn post_body(buyer: &Identity, task: TaskSpec) -> Vec<u8> {
    serde_json::to_vec(&Signed::sign(task, buyer).unwrap()).unwrap()
}

/// A training task cut to 60 steps (a few seconds).
pub fn short(mut task: TaskSpec) -> TaskSpec {
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 60;
    }
    task
}

/// Uploads `bytes` as `who` (signed, with `?expected=`).
pub async fn upload(app: &Router, who: &Identity, bytes: &[u8]) -> (StatusCode, Value) {
    let id = market_protocol::Hash::of(bytes);
    call(
        app,
        signed(
            who,
            "POST",
            &format!("/v1/blobs?expected={id}"),
            bytes.to_vec(),
        ),
    )
    .await
}

/// Starts a verifier daemon for `node` (reached at `addr`), funded with 1,000 credits and
/// staking `stake`, its data under `dir/label`, checking served answers dishonestly with
/// `fault`.
pub async fn verifier_daemon(
    node: &Node,
    addr: &market_net::Multiaddr,
    dir: &std::path::Path,
    label: &str,
    stake: u64,
    fault: Option<market_verifier::answers::CheckFault>,
) -> Identity {
    let id = Identity::from_test_label(label);
    node.fund("test", &id.account(), 1_000, 0).await.unwrap();
    let options = market_verifier::daemon::VerifierOptions {
        market: addr.clone(),
        data_dir: dir.join(label),
        cache_bytes: market_net::participant::DEFAULT_CACHE_BYTES,
        stake,
        listen: Vec::new(),
        device: "cpu".into(),
        check_fault: fault,
    };
    tokio::spawn(market_verifier::daemon::run(id.clone(), options));
    id
}

/// A node process, killed when dropped (also when a failed assertion unwinds the test).
pub struct NodeProcess(pub Child);

impl NodeProcess {
    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a node on `data` on a port of its own choosing (no port freed here for it to take,
/// which another process could take first) and returns it with its API address, from the
/// `endpoints.json` it writes once it listens.
pub async fn start(data: &std::path::Path, buyer: &Identity) -> (NodeProcess, String) {
    let endpoints = data.join("endpoints.json");
    let _ = std::fs::remove_file(&endpoints);
    let node = NodeProcess(
        Command::new(env!("CARGO_BIN_EXE_market-node"))
            .args([
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--local-workers",
                "1",
                "--local-verifiers",
                "2",
            ])
            .args(["--mint", &format!("{}:5000", buyer.account())])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&endpoints) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                return (node, v["api"].as_str().unwrap().to_owned());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node wrote no endpoints.json within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
