//! `market-devnet`: one command for a whole local market.
//!
//! The network issue turns this into separate processes (node, three honest workers, a cheater,
//! two verifiers) talking libp2p on loopback. Until the node and network land, it runs the
//! stages that exist, for real and in one process: identities with key files, signed tasks and
//! their audit plans, workers running tasks into bundles with `market-compute`, a cheating
//! worker, two verifiers auditing every commitment against a fresh beacon; and it names the
//! stages that do not exist yet.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Parser;
use market_compute::bundle::Bundle;
use market_compute::NoBlobs;
use market_node::audit_plan;
use market_protocol::keyfile::{load_identity, save_identity};
use market_protocol::{fixtures, Beacon, Hash, Identity, Signed, TaskId, TaskSpec, Workload};
use market_verifier::{audit, SamplePolicy};
use market_worker::{exec, Behavior};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Start a whole local market in one command")]
struct Args {
    /// The cheating worker's strategy (see `market-worker exec --fault`).
    #[arg(long, default_value = "skip:0.2")]
    cheat: Behavior,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct TaskOutcome {
    task: String,
    worker: String,
    behavior: String,
    segments: u32,
    samples: usize,
    detection_probability: f64,
    verdicts: Vec<String>,
    settled: bool,
}

#[derive(Serialize)]
struct Summary {
    tasks: usize,
    settled: usize,
    slashed: Vec<String>,
    balances: Vec<(String, u64)>,
    ledger_verified: Option<bool>,
    outcomes: Vec<TaskOutcome>,
    stages_missing: Vec<&'static str>,
}

fn identity(dir: &Path, role: &str) -> Result<Identity> {
    let path = dir.join(format!("{role}.key"));
    save_identity(&Identity::generate()?, &path)?;
    // Read it back the way every daemon will: through the 0600 check.
    load_identity(&path).with_context(|| format!("loading the {role} key"))
}

/// A beacon that did not exist when the commitment was made: fresh randomness drawn after it.
/// (The node will use the hash of the ledger entry that records the commitment.)
fn fresh_beacon() -> Result<Beacon> {
    Ok(Beacon(Hash(Identity::generate()?.secret_bytes())))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let dir = tempfile::tempdir().context("creating the devnet's data directory")?;
    let roles = [
        "node",
        "worker-1",
        "worker-2",
        "worker-3",
        "cheater",
        "verifier-1",
        "verifier-2",
        "buyer",
    ];
    let mut ids = std::collections::BTreeMap::new();
    for role in roles {
        let id = identity(dir.path(), role)?;
        tracing::info!(role, account = %id.account(), peer = %id.account().to_peer_id(), "identity");
        ids.insert(role, id);
    }
    let id = |role: &str| ids.get(role).cloned().context("unknown role");
    let buyer = id("buyer")?;

    // The buyer's tasks: the example training and inference tasks, and a second training task
    // that the cheater will take.
    let mut training = fixtures::training_task(&buyer, 1);
    let mut cheated = fixtures::training_task(&buyer, 2);
    for t in [&mut training, &mut cheated] {
        if let Workload::Training(spec) = &mut t.workload {
            spec.steps = 300;
        }
    }
    let mut inference = fixtures::inference_task(&buyer, 3);
    inference.profile = market_protocol::ExecutionProfile::Repro;
    if let Workload::Inference(spec) = &mut inference.workload {
        spec.weights = None;
    }
    let jobs: Vec<(TaskSpec, &str, Behavior)> = vec![
        (training, "worker-1", Behavior::Honest),
        (inference, "worker-2", Behavior::Honest),
        (cheated, "cheater", args.cheat),
    ];

    let mut outcomes = Vec::new();
    let mut slashed = Vec::new();
    for (n, (task, worker_role, behavior)) in jobs.into_iter().enumerate() {
        let signed: Signed<TaskSpec> = Signed::sign(task, &buyer)?;
        let task = signed
            .verify()
            .context("the node checks the buyer's signature")?
            .clone();
        let task_id = TaskId(signed.id()?);
        let plan = audit_plan::plan(&task)?;
        tracing::info!(task = %task_id, segments = plan.segments, samples = plan.samples,
            detection = format!("{:.4}", plan.detection_probability), "task posted; audit plan shown to the buyer");
        let worker = id(worker_role)?;
        let bundle = Bundle::at(dir.path().join(format!("bundle-{n}")));
        let report = exec(&task, &worker, behavior, &bundle, &NoBlobs, |_| {})
            .with_context(|| format!("{worker_role} running task {task_id}"))?;
        tracing::info!(worker = worker_role, commitment = %report.commitment_id, "commitment signed");
        let policy = SamplePolicy::Detect {
            target: task.audit.detection_target.clone(),
            assumed_faked: task.audit.assumed_faked_fraction.clone(),
        };
        let mut verdicts = Vec::new();
        let mut passed = true;
        let mut samples = 0;
        for verifier in ["verifier-1", "verifier-2"] {
            let audit = audit(&bundle, fresh_beacon()?, &policy, &id(verifier)?, &NoBlobs)?;
            samples = audit.challenge.sampled.len();
            let outcome = match &audit.verdict.body.outcome {
                market_protocol::VerdictOutcome::Pass => "pass".to_string(),
                market_protocol::VerdictOutcome::Fail {
                    segment, reason, ..
                } => {
                    format!("fail ({reason:?} in segment {segment})")
                }
            };
            tracing::info!(verifier, %outcome, "verdict signed");
            passed &= audit.passed();
            verdicts.push(format!("{verifier}: {outcome}"));
        }
        if !passed {
            slashed.push(worker_role.to_string());
        }
        outcomes.push(TaskOutcome {
            task: task_id.to_string(),
            worker: worker_role.into(),
            behavior: behavior.to_string(),
            segments: report.commitment.body.segments,
            samples,
            detection_probability: plan.detection_probability,
            verdicts,
            settled: passed,
        });
    }

    let summary = Summary {
        tasks: outcomes.len(),
        settled: outcomes.iter().filter(|o| o.settled).count(),
        slashed,
        balances: Vec::new(),
        ledger_verified: None,
        outcomes,
        stages_missing: vec![
            "ledger: escrow, release, reward, refund and slash entries (ledger issue)",
            "node: REST API, assignment, settlement (node issue)",
            "network: workers and verifiers as separate processes over libp2p (network issue)",
        ],
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "market-devnet: {} tasks, {} passed their audits",
            summary.tasks, summary.settled
        );
        for o in &summary.outcomes {
            println!(
                "  {} by {} ({}): {} segments, {} sampled per audit, detection {:.4}; {}",
                &o.task[..12],
                o.worker,
                o.behavior,
                o.segments,
                o.samples,
                o.detection_probability,
                o.verdicts.join("; ")
            );
        }
        println!(
            "  caught: {}",
            if summary.slashed.is_empty() {
                "nobody".into()
            } else {
                summary.slashed.join(", ")
            }
        );
        for stage in &summary.stages_missing {
            println!("  not yet built: {stage}");
        }
    }
    Ok(())
}
