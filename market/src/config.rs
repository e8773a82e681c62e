//! The node's configuration (a TOML file): everything but the data directory and the listen
//! address, which are command-line flags.

use serde::{Deserialize, Serialize};

/// Node settings. Every field has a default, so an empty file is a valid configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Largest request body (JSON), bytes.
    pub max_body_bytes: usize,
    /// Largest blob upload, bytes.
    pub max_blob_bytes: u64,
    /// How far a signed request's timestamp may be from the node's clock, seconds.
    pub max_clock_skew_secs: u64,
    /// Credits each verifier earns per audit, paid from the task's escrow.
    pub verifier_fee: u64,
    /// Verifiers drawn per task.
    pub verifiers_per_task: usize,
    /// Stake a worker needs before it is assigned work.
    pub min_worker_stake: u64,
    /// Stake a verifier needs before it is drawn.
    pub min_verifier_stake: u64,
    /// Stake taken from a worker whose result fails an audit (at most its stake).
    pub worker_slash: u64,
    /// Stake taken from a verifier that passes a planted faulty bundle.
    pub verifier_slash: u64,
    /// Share of audits that are ringers (planted faulty bundles), in parts per million.
    pub ringer_rate_ppm: u32,
    /// Attempts (workers) a task gets before it is rejected.
    pub max_attempts: usize,
    /// Reputation at which a worker is trusted enough to be audited by fewer verifiers.
    pub trusted_reputation: i64,
    /// The fewest verifiers any result gets, however good the worker's record (the floor).
    pub min_verifiers_per_task: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_blob_bytes: 256 << 20,
            max_clock_skew_secs: 300,
            verifier_fee: 10,
            verifiers_per_task: 2,
            min_worker_stake: 100,
            min_verifier_stake: 50,
            worker_slash: 100,
            verifier_slash: 50,
            ringer_rate_ppm: 0,
            max_attempts: 3,
            trusted_reputation: 10,
            min_verifiers_per_task: 1,
        }
    }
}

impl NodeConfig {
    /// Reads a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}
