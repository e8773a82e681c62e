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
    /// Blob storage each account may hold per credit it has (balance plus stake), bytes: an
    /// account with no credits may store nothing.
    pub blob_bytes_per_credit: u64,
    /// How long an uploaded blob that no task reads is kept after its last upload, seconds.
    pub blob_ttl_secs: u64,
    /// Task posts validated at once (building a dataset can take seconds of CPU); more wait.
    pub max_concurrent_validations: usize,
    /// How long a task post waits for a validation slot before it is refused with 429,
    /// seconds.
    pub validation_wait_secs: u64,
    /// Ledger exports streaming at once (each holds a blocking thread while its client reads);
    /// more are refused with 429.
    pub max_concurrent_exports: usize,
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
    /// Served answers per audited batch: a worker's batch closes at this many answers (at most
    /// 65,536).
    pub serve_batch_answers: usize,
    /// A worker's batch of served answers also closes this long after its first answer,
    /// seconds, so a quiet worker's answers are audited (and it is paid) all the same.
    pub serve_batch_secs: u64,
    /// Share of each batch's answers checked, in parts per million (at least one answer).
    pub serve_audit_ppm: u32,
    /// Credits a verifier earns per served answer it checks, paid from that answer's escrow
    /// (out of the worker's pay; never more than the answer cost).
    pub serve_check_fee: u64,
    /// Share of served answers whose verifier is also sent a planted fake answer (a ringer),
    /// in parts per million: a verifier that passes one is slashed `verifier_slash`.
    pub serve_ringer_ppm: u32,
    /// Share of verifiers' passes of served answers the node checks again itself, in parts per
    /// million: a pass of an answer the node finds wrong slashes the verifier as a liar and
    /// fails the batch. Unlike a ringer, nothing tells a verifier which passes are re-checked.
    pub serve_recheck_ppm: u32,
    /// How long a verifier may take per token of a served answer (prompt and completion), in
    /// milliseconds, on top of the network's audit timeout, before its silence counts.
    pub serve_check_ms_per_token: u64,
    /// Address space a chat template may use while the node renders it (a task post's or a
    /// served request's), bytes: the node renders clients' templates in a child process
    /// (`market-template-sandbox`) with this limit, and refuses what needs more.
    pub template_memory_bytes: u64,
    /// CPU time a chat template may take while the node renders it, seconds; likewise.
    pub template_cpu_secs: u64,
    /// The `market-template-sandbox` program; by default the one beside the node's own
    /// executable.
    pub template_sandbox: Option<std::path::PathBuf>,
    /// Stake taken from a verifier that passes a planted faulty bundle.
    pub verifier_slash: u64,
    /// Share of audits that are ringers (planted faulty bundles), in parts per million.
    pub ringer_rate_ppm: u32,
    /// Attempts whose result failed its audit before a task is rejected (runs that produced no
    /// result do not count: they cost their worker instead).
    pub max_attempts: usize,
    /// Reputation at which a worker is trusted enough to be audited by fewer verifiers.
    pub trusted_reputation: i64,
    /// The fewest verifiers any result gets, however good the worker's record (the floor).
    pub min_verifiers_per_task: usize,
    /// The lowest detection target a task may ask for (a decimal string, e.g. "0.5"): below it
    /// an audit would check almost nothing, and a buyer could plant ringers no audit catches.
    pub min_detection_target: market_protocol::Decimal,
    /// Stake taken from a verifier that does not answer an audit in time (it costs the worker
    /// nothing: another verifier is drawn, or the node waits for one).
    pub silence_slash: u64,
    /// Stake taken from a worker that accepted a task and produced no usable result (no
    /// commitment, or one that does not match the task).
    pub abandon_slash: u64,
    /// The most steps the node runs itself to confirm a worker's report that the task
    /// diverged (a confirmed divergence rejects the task and slashes nobody). A report of a
    /// later divergence is not checked: its worker is not slashed, and the task goes to
    /// another worker. Bounds what a false report can make the node compute.
    pub max_divergence_check_steps: u32,
    /// The most memory (the task's own estimate, `spec/COMPUTE.md` section 9) the node spends
    /// to confirm a worker's report that an inference item overflowed: checking it loads the
    /// model. A larger task's report is not checked (its worker is not slashed, and the task
    /// goes to another worker).
    pub max_divergence_check_memory_bytes: u64,
    /// Keep result bundles (every checkpoint of every attempt) after a task is settled or
    /// rejected. Off by default: the ledger holds the commitments and verdicts, the buyer's
    /// outputs are in the blob store, and bundles of large models would fill the disk.
    pub keep_bundles: bool,
    /// How the node deals with workers and verifiers over libp2p (`[network]`).
    pub network: NetworkConfig,
}

/// Timeouts and limits for networked workers and verifiers (the `[network]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// How long a worker that lost its connection mid-task may take to come back before the
    /// task goes to another worker, seconds.
    pub run_grace_secs: u64,
    /// How long a verifier may take to return a verdict before another is drawn, seconds.
    pub audit_timeout_secs: u64,
    /// Longest a worker may take from assignment to its commitment, seconds.
    pub max_run_secs: u64,
    /// How long the node keeps trying to fetch an audit's openings from a worker that is
    /// unreachable (or whose transfers time out) before the files count as withheld, seconds.
    /// A worker that is connected and refuses, or sends bytes that fail their hashes, has
    /// `run_grace_secs`.
    pub opening_wait_secs: u64,
    /// Slowest bundle transfer accepted, bytes per second (every transfer also gets a minute).
    pub min_transfer_bytes_per_sec: u64,
    /// Largest result bundle the node fetches from a worker, bytes.
    pub max_bundle_bytes: u64,
    /// Most tasks running at once (each on its own worker); 0 for no limit but the number of
    /// workers. A cap bounds the node's own load: each task in flight holds one of the node's
    /// blocking threads (tokio has 512), and the node fetches every bundle.
    pub max_parallel_tasks: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            run_grace_secs: 30,
            audit_timeout_secs: 120,
            max_run_secs: 6 * 3600,
            opening_wait_secs: 3600,
            min_transfer_bytes_per_sec: 1 << 20,
            max_bundle_bytes: 16 << 30,
            max_parallel_tasks: 256,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_blob_bytes: 256 << 20,
            blob_bytes_per_credit: 1 << 20,
            blob_ttl_secs: 24 * 3600,
            max_concurrent_validations: 2,
            validation_wait_secs: 30,
            max_concurrent_exports: 4,
            max_clock_skew_secs: 300,
            verifier_fee: 10,
            verifiers_per_task: 2,
            min_worker_stake: 100,
            min_verifier_stake: 50,
            worker_slash: 100,
            serve_batch_answers: 32,
            serve_batch_secs: 10,
            serve_audit_ppm: 250_000,
            serve_check_fee: 1,
            serve_ringer_ppm: 50_000,
            serve_recheck_ppm: 100_000,
            serve_check_ms_per_token: 100,
            verifier_slash: 50,
            ringer_rate_ppm: 0,
            max_attempts: 3,
            trusted_reputation: 10,
            min_verifiers_per_task: 1,
            min_detection_target: "0.5".parse().expect("a canonical decimal"),
            silence_slash: 10,
            abandon_slash: 50,
            max_divergence_check_steps: 10_000,
            max_divergence_check_memory_bytes: 8 << 30,
            keep_bundles: false,
            template_memory_bytes: 1 << 30,
            template_cpu_secs: 10,
            template_sandbox: None,
            network: NetworkConfig::default(),
        }
    }
}

/// The longest batch of served answers, whatever the configuration says: a batch's Merkle
/// tree, its sample and its audit plan are sized by it.
pub const MAX_SERVE_BATCH_ANSWERS: usize = market_net::wire::MAX_BATCH_ANSWERS as usize;

impl NodeConfig {
    /// Served answers per batch: `serve_batch_answers` within 1 and
    /// [`MAX_SERVE_BATCH_ANSWERS`].
    pub fn serve_batch_len(&self) -> usize {
        self.serve_batch_answers.clamp(1, MAX_SERVE_BATCH_ANSWERS)
    }

    /// Reads a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_table_is_optional_partial_and_strict() {
        assert_eq!(NodeConfig::from_toml("").ok(), Some(NodeConfig::default()));
        let c = NodeConfig::from_toml("verifier_fee = 7\n[network]\naudit_timeout_secs = 5\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.verifier_fee, 7);
        assert_eq!(c.network.audit_timeout_secs, 5);
        assert_eq!(
            c.network.run_grace_secs,
            NetworkConfig::default().run_grace_secs
        );
        let options = crate::p2p::P2pOptions::from(&c.network);
        assert_eq!(options.audit_timeout, std::time::Duration::from_secs(5));
        assert!(NodeConfig::from_toml("[network]\naudit_timeout = 5\n").is_err());
    }
}
