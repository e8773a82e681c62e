//! What the networked benchmarks share: worker and verifier daemons in the bench's process.

#![allow(dead_code)] // Each bench uses its own part.

use std::sync::Arc;

use market_node::config::NodeConfig;
use market_node::engine::Node;
use market_node::p2p::{open_networked, P2pDispatch, P2pOptions};
use market_protocol::Identity;
use market_worker::Behavior;

/// A node on loopback over libp2p in `dir`, signed by the test identity `operator`, with its
/// engine running: the node, its dispatch and the addresses participants dial.
pub async fn networked_node(
    dir: &std::path::Path,
    config: NodeConfig,
    operator: &str,
    options: P2pOptions,
) -> (Arc<Node>, Arc<P2pDispatch>, Vec<market_net::Multiaddr>) {
    let (node, dispatch, addrs) = open_networked(
        dir,
        config,
        Identity::from_test_label(operator),
        market_net::NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..Default::default()
        },
        options,
    )
    .await
    .unwrap();
    tokio::spawn(node.clone().run_engine());
    (node, dispatch, addrs)
}

/// An honest worker daemon in this process, with its own swarm, joining the node at `market`.
pub fn spawn_worker(who: &Identity, market: &market_net::Multiaddr, data: &std::path::Path) {
    tokio::spawn(market_worker::daemon::run(
        who.clone(),
        market_worker::daemon::WorkerOptions {
            market: market.clone(),
            data_dir: data.to_owned(),
            cache_bytes: market_net::participant::DEFAULT_CACHE_BYTES,
            behavior: Behavior::Honest,
            stake: 500,
            device: "cpu".into(),
            listen: Vec::new(),
            status_line: false,
            relay: false,
            serve: None,
        },
    ));
}

/// A verifier daemon in this process, with its own swarm, joining the node at `market`.
pub fn spawn_verifier(who: &Identity, market: &market_net::Multiaddr, data: &std::path::Path) {
    tokio::spawn(market_verifier::daemon::run(
        who.clone(),
        market_verifier::daemon::VerifierOptions {
            market: market.clone(),
            data_dir: data.to_owned(),
            cache_bytes: market_net::participant::DEFAULT_CACHE_BYTES,
            stake: 500,
            listen: Vec::new(),
            device: "cpu".into(),
            check_fault: None,
        },
    ));
}
