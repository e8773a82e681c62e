//! Issue 12 item 16: a bounded flood on loopback (`cargo bench -p market-node --bench flood`;
//! not in CI). 10,000 fresh keys send 100,000 mixed requests (valid but unfunded, forged,
//! replayed, oversized, public reads) while a funded buyer posts tasks and reads one back.
//! Reported against the same buyer's reads on the idle node in the same run: p99 latency of
//! `GET /v1/tasks/{id}`, the process's peak memory (node and load generator together), and
//! whether every valid request of the buyer was accepted and every task it posted is listed.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary reports on stdout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use market_node::auth::{sign_headers, unix_now};
use market_node::config::NodeConfig;
use market_node::dispatch::InProcess;
use market_node::engine::Node;
use market_protocol::fixtures::training_task;
use market_protocol::{Credits, Identity, Signed};

const KEYS: usize = 10_000;
const FLOOD: usize = 100_000;
const CONCURRENCY: usize = 48;
const BUYER_POSTS: u64 = 200;

static NONCES: AtomicU64 = AtomicU64::new(0);

fn nonce() -> String {
    format!("flood-{:016}", NONCES.fetch_add(1, Ordering::Relaxed))
}

fn signed(
    http: &reqwest::Client,
    base: &str,
    who: &Identity,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut req = http.request(method.clone(), format!("{base}{path}"));
    for (k, v) in sign_headers(who, method.as_str(), path, &body, unix_now(), &nonce()) {
        req = req.header(k, v);
    }
    req.body(body)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// p50 and p99 of `n` reads of `url`.
async fn reads(http: &reqwest::Client, url: &str, n: usize) -> (Duration, Duration) {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(url).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let _ = r.bytes().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    (lat[n / 2], lat[n * 99 / 100])
}

/// One request of the flood, by kind; returns its status.
async fn flood_one(http: &reqwest::Client, base: &str, keys: &[Identity], i: usize) -> u16 {
    let key = &keys[i % keys.len()];
    let task =
        || serde_json::to_vec(&Signed::sign(training_task(key, i as u64), key).unwrap()).unwrap();
    let req = match i % 8 {
        // Valid signatures from keys with no credits.
        0 => signed(
            http,
            base,
            key,
            reqwest::Method::POST,
            "/v1/accounts",
            vec![],
        ),
        1 => signed(http, base, key, reqwest::Method::POST, "/v1/tasks", task()),
        2 => {
            let bytes = vec![i as u8; 4096];
            let path = format!("/v1/blobs?expected={}", market_protocol::Hash::of(&bytes));
            signed(http, base, key, reqwest::Method::POST, &path, bytes)
        }
        // A forged signature (another key's).
        3 => {
            let other = &keys[(i + 1) % keys.len()];
            let mut req = http.post(format!("{base}/v1/tasks"));
            for (k, v) in sign_headers(other, "POST", "/v1/tasks", &task(), unix_now(), &nonce()) {
                let v = if k == market_node::auth::ACCOUNT {
                    key.account().to_hex()
                } else {
                    v
                };
                req = req.header(k, v);
            }
            req.body(task())
        }
        // Replayed: the same signed request twice (the second is counted).
        4 => {
            let headers = sign_headers(key, "POST", "/v1/accounts", &[], unix_now(), &nonce());
            let mut first = http.post(format!("{base}/v1/accounts"));
            let mut second = http.post(format!("{base}/v1/accounts"));
            for (k, v) in headers {
                first = first.header(k, v.clone());
                second = second.header(k, v);
            }
            let _ = first.send().await;
            second
        }
        // Oversized: 2 MiB of JSON.
        5 => signed(
            http,
            base,
            key,
            reqwest::Method::POST,
            "/v1/tasks",
            vec![b' '; 2 << 20],
        ),
        // Public reads.
        6 => http.get(format!("{base}/v1/tasks?state=queued&limit=100")),
        _ => http.get(format!("{base}/metrics")),
    };
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(
        dir.path(),
        NodeConfig::default(),
        Identity::from_test_label("flood operator"),
        Arc::new(InProcess::default()),
    )
    .unwrap();
    let buyer = Identity::from_test_label("flood buyer");
    node.fund("flood", &buyer.account(), 1_000_000, 0)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = market_node::api::router(node.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    let post = |n: u64| {
        let mut task = training_task(&buyer, n);
        task.price = Credits(100);
        let body = serde_json::to_vec(&Signed::sign(task, &buyer).unwrap()).unwrap();
        signed(
            &http,
            &base,
            &buyer,
            reqwest::Method::POST,
            "/v1/tasks",
            body,
        )
    };
    let first = post(0).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let id = serde_json::from_slice::<serde_json::Value>(&first.bytes().await.unwrap()).unwrap()
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task_url = format!("{base}/v1/tasks/{id}");
    let idle = reads(&http, &task_url, 2000).await;
    let rss_idle = peak_rss_kib();

    println!("signing keys: {KEYS}");
    let keys: Arc<Vec<Identity>> = Arc::new(
        (0..KEYS)
            .map(|i| Identity::from_test_label(&format!("flood key {i}")))
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        // Each flooder its own connections: a server that answers an oversized body early
        // closes that connection, which must not break the buyer's pooled ones.
        let http = reqwest::Client::new();
        let (base, keys, next) = (base.clone(), keys.clone(), next.clone());
        flooders.spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= FLOOD {
                    return statuses;
                }
                *statuses
                    .entry(flood_one(&http, &base, &keys, i).await)
                    .or_default() += 1;
            }
        });
    }
    // The buyer, during the flood: posts, and reads of its task.
    let mut refused = 0;
    for n in 1..=BUYER_POSTS {
        let r = post(n).send().await.unwrap();
        refused += u64::from(r.status() != 201);
    }
    let busy = reads(&http, &task_url, 2000).await;
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    while let Some(s) = flooders.join_next().await {
        for (k, v) in s.unwrap() {
            *statuses.entry(k).or_default() += v;
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    // The same reads once the flood is over: what the state it left costs.
    let after = reads(&http, &task_url, 2000).await;
    let listed = node
        .store
        .tasks_where(Some(&buyer.account()), Some("queued"), None, usize::MAX)
        .unwrap()
        .len();
    println!(
        "flood: {FLOOD} requests from {KEYS} keys, {CONCURRENCY} at once, in {flood_secs:.1} s"
    );
    println!("flood statuses: {statuses:?}");
    println!(
        "GET /v1/tasks/{{id}} p50/p99: idle {:.2}/{:.2} ms, during the flood {:.2}/{:.2} ms, p99 ratio {:.2}",
        idle.0.as_secs_f64() * 1e3,
        idle.1.as_secs_f64() * 1e3,
        busy.0.as_secs_f64() * 1e3,
        busy.1.as_secs_f64() * 1e3,
        busy.1.as_secs_f64() / idle.1.as_secs_f64()
    );
    println!(
        "GET /v1/tasks/{{id}} p50/p99 after the flood: {:.2}/{:.2} ms",
        after.0.as_secs_f64() * 1e3,
        after.1.as_secs_f64() * 1e3
    );
    println!(
        "buyer: {BUYER_POSTS} posts during the flood, {refused} refused; {listed} of {} tasks listed",
        BUYER_POSTS + 1
    );
    println!(
        "peak RSS (node and load generator, one process): {} MiB idle, {} MiB after the flood; nonces remembered {}",
        rss_idle / 1024,
        peak_rss_kib() / 1024,
        node.store.nonce_count()
    );
    assert_eq!(refused, 0, "a valid request of the buyer was refused");
    assert_eq!(listed as u64, BUYER_POSTS + 1, "a task was lost");
}
