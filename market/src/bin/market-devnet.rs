//! `market-devnet`: one command for a whole local market.
//!
//! The network issue turns this into separate processes (node, three honest workers, a cheater,
//! two verifiers) on loopback. Until the compute, ledger, node and network pieces land, it runs
//! the stages that exist, for real, and names the ones that do not yet.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Parser;
use market_node::audit_plan;
use market_protocol::keyfile::{load_identity, save_identity};
use market_protocol::{fixtures, Identity, Signed, TaskId, TaskSpec};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Start a whole local market in one command")]
struct Args {
    /// The cheating worker's strategy (see `market-worker exec --fault`).
    #[arg(long, default_value = "skip:0.2")]
    cheat: String,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    tasks: usize,
    settled: usize,
    slashed: Vec<String>,
    balances: Vec<(String, u64)>,
    ledger_verified: Option<bool>,
    stages_done: Vec<String>,
    stages_missing: Vec<&'static str>,
}

fn identity(dir: &Path, role: &str) -> Result<Identity> {
    let path = dir.join(format!("{role}.key"));
    save_identity(&Identity::generate()?, &path)?;
    // Read it back the way every daemon will: through the 0600 check.
    load_identity(&path).with_context(|| format!("loading the {role} key"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let dir = tempfile::tempdir().context("creating the devnet's data directory")?;
    let mut done = Vec::new();

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
    let ids: Vec<(&str, Identity)> = roles
        .iter()
        .map(|r| identity(dir.path(), r).map(|id| (*r, id)))
        .collect::<Result<_>>()?;
    for (role, id) in &ids {
        tracing::info!(role, account = %id.account(), peer = %id.account().to_peer_id(), "identity");
    }
    done.push(format!(
        "{} identities with 0600 key files in {}",
        ids.len(),
        dir.path().display()
    ));

    let buyer = &ids[ids.len() - 1].1;
    let posted: Vec<Signed<TaskSpec>> = vec![
        Signed::sign(fixtures::training_task(buyer, 1), buyer)?,
        Signed::sign(fixtures::inference_task(buyer, 2), buyer)?,
    ];
    for task in &posted {
        let body = task
            .verify()
            .context("the node checks the buyer's signature")?;
        let plan = audit_plan::plan(body)?;
        tracing::info!(
            task = %TaskId(task.id()?),
            segments = plan.segments,
            samples = plan.samples,
            detection = format!("{:.4}", plan.detection_probability),
            "task signed by the buyer and verified; audit plan shown to the buyer"
        );
    }
    done.push(format!(
        "{} signed tasks verified with audit plans",
        posted.len()
    ));
    tracing::info!(cheat = %args.cheat, "the cheating worker will use this strategy once workers exist");

    let summary = Summary {
        tasks: posted.len(),
        settled: 0,
        slashed: Vec::new(),
        balances: Vec::new(),
        ledger_verified: None,
        stages_done: done,
        stages_missing: vec![
            "compute: running the tasks (compute issue)",
            "ledger: escrow and settlement entries (ledger issue)",
            "audit: commitments, challenges, verdicts (audit issue)",
            "node: REST API and lifecycle (node issue)",
            "network: workers and verifiers over libp2p (network issue)",
        ],
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "market-devnet: {} tasks posted, {} settled",
            summary.tasks, summary.settled
        );
        for stage in &summary.stages_done {
            println!("  done:    {stage}");
        }
        for stage in &summary.stages_missing {
            println!("  missing: {stage}");
        }
    }
    Ok(())
}
