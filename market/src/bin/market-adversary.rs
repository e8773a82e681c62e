//! `market-adversary`: the adversary suite report. Runs every cheating strategy at several
//! fractions against a task and audits each bundle with many beacons; prints a Markdown table of
//! measured detection rates against the hypergeometric prediction.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use market_node::adversary::{
    experiment_table, grinding, lazy_verifier, lying_verifier, per_verifier_samples, run_case,
    strategies, table,
};
use market_protocol::canonical::{from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::{ExecutionProfile, TaskSpec};
use market_worker::daemon::parse_profile;

#[derive(Parser, Debug)]
#[command(about = "Measure how often audits catch each cheating strategy")]
struct Args {
    /// The task to cheat on (JSON).
    #[arg(long, default_value = "examples/tasks/mlp-train.json")]
    task: PathBuf,
    /// Audits (independent beacons) per strategy.
    #[arg(long, default_value_t = 400)]
    beacons: usize,
    /// Segments sampled per audit.
    #[arg(long, default_value_t = 3)]
    samples: u32,
    /// Faked fractions for skip, noise and truncate.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.1,0.2,0.5")]
    fractions: Vec<f64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Trials of each attack on the protocol (grinding, lying, lazy, two verifiers).
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// Re-signed commitments a grinding worker tries per task.
    #[arg(long, default_value_t = 10_000)]
    grind_tries: usize,
    /// Ringer rate for the lazy verifier, parts per million.
    #[arg(long, default_value_t = 100_000)]
    ringer_rate_ppm: u32,
    /// Run the task in this profile instead of its own (`native`: the audits compare within
    /// the tolerance of COMPUTE.md section 7 rather than bit for bit).
    #[arg(long, value_parser = parse_profile)]
    profile: Option<ExecutionProfile>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bytes =
        std::fs::read(&args.task).with_context(|| format!("reading {}", args.task.display()))?;
    let mut task: TaskSpec = from_json_limited(&bytes, MAX_MESSAGE_BYTES)?;
    if let Some(profile) = args.profile {
        task.profile = profile;
    }
    let dir = tempfile::tempdir()?;
    let mut results = Vec::new();
    for b in strategies(&args.fractions) {
        let r = run_case(&task, b, args.samples, args.beacons, dir.path())?;
        eprintln!(
            "{}: caught {}/{} (predicted {:.3})",
            r.strategy, r.caught, r.audits, r.predicted
        );
        results.push(r);
    }
    let mut attacks = Vec::new();
    attacks.extend(grinding(
        &task,
        0.1,
        args.samples,
        args.trials,
        args.grind_tries,
        dir.path(),
    )?);
    attacks.push(per_verifier_samples(
        &task,
        0.1,
        args.samples,
        args.trials * 2,
        dir.path(),
    )?);
    attacks.push(lying_verifier(&task, args.trials, dir.path())?);
    attacks.push(lazy_verifier(
        &task,
        args.trials * 10,
        args.ringer_rate_ppm,
        dir.path(),
    )?);
    for a in &attacks {
        eprintln!(
            "{}: {}/{} (predicted {:.3})",
            a.name, a.hits, a.trials, a.predicted
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "strategies": results,
                "attacks": attacks,
            }))?
        );
    } else {
        print!("{}\n{}", table(&results), experiment_table(&attacks));
    }
    Ok(())
}
