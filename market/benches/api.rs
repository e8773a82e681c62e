//! API benchmarks (`cargo bench -p market-node`), each against a baseline in the same run:
//! - requests/s and p99 latency of `GET /v1/tasks/{id}` against a bare axum handler returning a
//!   JSON body of similar size, both on loopback under the same load generator;
//! - blob upload throughput (signed, streamed, hashed, written) against a plain loopback HTTP
//!   upload to a handler that discards the bytes.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary reports on stdout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use market_node::client::Client;
use market_node::config::NodeConfig;
use market_node::dispatch::InProcess;
use market_node::engine::Node;
use market_protocol::fixtures::training_task;
use market_protocol::Identity;

const REQUESTS: usize = 20_000;
const CONCURRENCY: usize = 32;

/// Fires `REQUESTS` GETs at `url` from `CONCURRENCY` tasks; returns (requests/s, p50, p99).
async fn load(url: String) -> (f64, Duration, Duration) {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url) = (http.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(REQUESTS / CONCURRENCY);
            for _ in 0..REQUESTS / CONCURRENCY {
                let t = Instant::now();
                let resp = http.get(&url).send().await.unwrap();
                assert!(resp.status().is_success());
                let _ = resp.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    (
        all.len() as f64 / elapsed,
        all[all.len() / 2],
        all[all.len() * 99 / 100],
    )
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(
        dir.path(),
        NodeConfig {
            max_blob_bytes: 1 << 30,
            ..NodeConfig::default()
        },
        Identity::from_test_label("bench operator"),
        Arc::new(InProcess::default()),
    )
    .unwrap();
    let buyer = Identity::from_test_label("bench buyer");
    node.fund("bench", &buyer.account(), 1_000_000, 0)
        .await
        .unwrap();
    let node_url = serve(market_node::api::router(node.clone())).await;
    let client = Client::new(&node_url, Some(buyer.clone()));
    let task = client.submit(training_task(&buyer, 1)).await.unwrap();
    let task_url = format!("{node_url}/v1/tasks/{}", task.id);
    let body = reqwest::get(&task_url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let bare_body = Arc::new(body.to_vec());
    let bare_url = serve(
        axum::Router::new()
            .route(
                "/bare",
                get(move || {
                    let b = bare_body.clone();
                    async move { ([("content-type", "application/json")], b.as_ref().clone()) }
                }),
            )
            .route(
                "/sink",
                post(|body: axum::body::Body| async move {
                    use futures_util::StreamExt;
                    let mut s = body.into_data_stream();
                    let mut n = 0usize;
                    while let Some(c) = s.next().await {
                        n += c.unwrap().len();
                    }
                    n.to_string()
                })
                .layer(axum::extract::DefaultBodyLimit::disable()),
            ),
    )
    .await;

    println!("market-node API benchmarks ({REQUESTS} requests, {CONCURRENCY} concurrent, loopback, {} byte bodies)\n", body.len());
    let (bare_rps, bare_p50, bare_p99) = load(format!("{bare_url}/bare")).await;
    let (rps, p50, p99) = load(task_url).await;
    println!("| endpoint | requests/s | p50 | p99 |\n|---|---|---|---|");
    println!("| bare axum handler (baseline) | {bare_rps:.0} | {bare_p50:.2?} | {bare_p99:.2?} |");
    println!("| GET /v1/tasks/{{id}} | {rps:.0} | {p50:.2?} | {p99:.2?} |");
    println!(
        "\nratio to baseline: requests/s {:.2}, p99 {:.2}x",
        rps / bare_rps,
        p99.as_secs_f64() / bare_p99.as_secs_f64()
    );

    let blob = vec![7u8; 64 << 20];
    let t = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{bare_url}/sink"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let plain = t.elapsed().as_secs_f64();
    let t = Instant::now();
    client.upload(blob).await.unwrap();
    let ours = t.elapsed().as_secs_f64();
    println!("\n| 64 MiB upload | MB/s |\n|---|---|");
    println!(
        "| plain loopback POST to a discarding handler (baseline) | {:.0} |",
        64.0 / plain
    );
    println!(
        "| POST /v1/blobs (signed, streamed, blake3, written, fsync) | {:.0} |",
        64.0 / ours
    );
    println!("\nratio to baseline: {:.2}", plain / ours);
}
