//! What the API tests share: a node with in-process participants, signed requests, calls
//! through the router without sockets.

#![allow(dead_code)] // Each test file uses its own part.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use market_net::{Multiaddr, NetConfig};
use market_node::auth::{sign_headers, unix_now};
use market_node::config::NodeConfig;
use market_node::dispatch::{Dispatch, InProcess, VerifierMode};
use market_node::engine::Node;
use market_node::p2p::{open_networked, P2pDispatch, P2pOptions};
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

/// What a node's participants hold when a test opens it: the buyer's credits, and each
/// worker's and verifier's (balance, stake). Zeros fund nothing.
#[derive(Debug, Clone, Copy)]
pub struct Funding {
    pub buyer: u64,
    pub worker: (u64, u64),
    pub verifier: (u64, u64),
}

impl Funding {
    /// The API tests' market: room for a slash and a second task.
    pub const API: Funding = Funding {
        buyer: 5_000,
        worker: (500, 300),
        verifier: (200, 100),
    };
    /// Everything staked (a slash leaves a worker short of stake).
    pub const LEAN: Funding = Funding {
        buyer: 10_000,
        worker: (300, 300),
        verifier: (100, 100),
    };
}

/// The operator's and the buyer's test identities for a test named `label` ("" for the plain
/// "operator" and "buyer").
pub fn roles(label: &str) -> (Identity, Identity) {
    let named = |role: &str| Identity::from_test_label(format!("{label} {role}").trim_start());
    (named("operator"), named("buyer"))
}

/// Opens a node in `dir` with `dispatch` (any in-process or rigged one) and funds its buyer and
/// every worker and verifier the dispatch names, as `funding` says. The engine is not started.
pub async fn open_with(
    dir: &std::path::Path,
    config: NodeConfig,
    label: &str,
    dispatch: Arc<dyn Dispatch>,
    funding: Funding,
) -> (Arc<Node>, Identity) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let (operator, buyer) = roles(label);
    let node = Node::open(dir, config, operator, dispatch.clone()).unwrap();
    let fund = if label.is_empty() { "test" } else { label };
    node.fund(fund, &buyer.account(), funding.buyer, 0)
        .await
        .unwrap();
    for w in dispatch.workers() {
        let (balance, stake) = funding.worker;
        node.fund(fund, &w, balance, stake).await.unwrap();
    }
    for v in dispatch.verifiers() {
        let (balance, stake) = funding.verifier;
        node.fund(fund, &v, balance, stake).await.unwrap();
    }
    (node, buyer)
}

/// In-process participants named by test labels.
pub fn in_process(workers: &[(&str, Behavior)], verifiers: &[(&str, VerifierMode)]) -> InProcess {
    InProcess {
        workers: workers
            .iter()
            .map(|(l, b)| (Identity::from_test_label(l), *b))
            .collect(),
        verifiers: verifiers
            .iter()
            .map(|(l, m)| (Identity::from_test_label(l), *m))
            .collect(),
    }
}

/// Opens a node in `dir` with `config` and the given in-process participants (funded and
/// staked, [`Funding::API`]) and a buyer with 5,000 credits.
pub async fn open(
    dir: tempfile::TempDir,
    config: NodeConfig,
    workers: &[(&str, Behavior)],
    verifiers: &[(&str, VerifierMode)],
) -> Net {
    let dispatch = Arc::new(in_process(workers, verifiers));
    let (node, buyer) = open_with(dir.path(), config, "", dispatch, Funding::API).await;
    let app = market_node::api::router(node.clone());
    Net {
        node,
        app,
        buyer,
        dir,
    }
}

/// A node on the network (loopback, a port of its choosing) for a test named `label`, its
/// buyer holding 10,000 credits; the engine is not started.
pub struct Networked {
    pub node: Arc<Node>,
    pub dispatch: Arc<P2pDispatch>,
    pub addr: Multiaddr,
    pub dir: tempfile::TempDir,
    pub buyer: Identity,
}

/// Opens a [`Networked`] node.
pub async fn networked(label: &str, config: NodeConfig, options: P2pOptions) -> Networked {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let (operator, buyer) = roles(label);
    let (node, dispatch, addrs) = open_networked(
        &dir.path().join("node"),
        config,
        operator,
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..NetConfig::default()
        },
        options,
    )
    .await
    .unwrap();
    node.fund("test", &buyer.account(), 10_000, 0)
        .await
        .unwrap();
    Networked {
        node,
        dispatch,
        addr: addrs[0].clone(),
        dir,
        buyer,
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
/// `spec` signed by `buyer` and posted to `node` (the engine, not the HTTP API); its id.
pub async fn post_signed(node: &Node, buyer: &Identity, spec: TaskSpec) -> market_protocol::TaskId {
    node.post_task(Signed::sign(spec, buyer).unwrap())
        .await
        .unwrap()
        .id
}

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
    start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_market-node")),
        data,
        buyer,
        &[],
    )
    .await
}

/// [`start`] with the node executable `exe` and further arguments to `serve`.
pub async fn start_with(
    exe: &std::path::Path,
    data: &std::path::Path,
    buyer: &Identity,
    extra: &[&str],
) -> (NodeProcess, String) {
    let endpoints = data.join("endpoints.json");
    let _ = std::fs::remove_file(&endpoints);
    let node = NodeProcess(
        Command::new(exe)
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
            .args(extra)
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
