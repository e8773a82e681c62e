//! What the networked benchmarks share: worker and verifier daemons in the bench's process.

use market_protocol::Identity;
use market_worker::Behavior;

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
        },
    ));
}
