//! `market-worker`: run tasks and commit to them.
//!
//! `run` joins a market over libp2p and works for it; `exec` runs a task file locally into a
//! result bundle (the same code path the networked worker uses); `open` opens the per-step
//! states of challenged segments.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use market_compute::bundle::Bundle;
use market_compute::NoBlobs;
use market_protocol::canonical::from_json_limited;
use market_protocol::keyfile::load_identity;
use market_protocol::{Identity, TaskSpec};
use market_worker::{exec, open_steps, Behavior};

#[derive(Parser, Debug)]
#[command(about = "The market worker: run tasks, commit to every checkpoint, answer challenges")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join a market node over libp2p and run the tasks it assigns.
    Run(market_worker::daemon::RunArgs),
    /// What the ledger records for your account, entry by entry (paid for results, staked, slashed, reputation),
    /// each with the task, audit or ringer behind it: read from the node's export and verified
    /// here against its signed head (`--node` is the node's HTTP URL).
    Statement(market_ledger::remote::StatementArgs),
    /// Run a task locally and write its result bundle; prints the commitment id.
    Exec {
        /// The task spec (JSON).
        #[arg(long)]
        task: PathBuf,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// The worker's key file (0600); a throw-away key is used if absent.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Testing aid: cheat with this strategy (skip:F, noise:F, last-step:F, truncate:F,
        /// wrong-data, low-precision, replay, forge-root, withhold) so audits can be tested.
        #[arg(long, default_value = "honest")]
        fault: Behavior,
    },
    /// Open the per-step state hashes of challenged segments into the bundle.
    Open {
        /// The bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// Segment indices, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        segments: Vec<u32>,
        /// The strategy the bundle was made with (testing aid).
        #[arg(long, default_value = "honest")]
        fault: Behavior,
    },
}

fn read_task(path: &PathBuf) -> Result<TaskSpec> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    from_json_limited(&bytes, market_protocol::canonical::MAX_MESSAGE_BYTES)
        .with_context(|| format!("{} is not a valid task spec", path.display()))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => market_worker::daemon::run_cli(args)?,
        Command::Statement(args) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(args.print())?;
        }
        Command::Exec {
            task,
            out,
            key,
            fault,
        } => {
            let spec = read_task(&task)?;
            let identity = match key {
                Some(k) => load_identity(&k)?,
                None => {
                    tracing::warn!("no --key given: signing with a throw-away key");
                    Identity::generate()?
                }
            };
            let needs = market_compute::resources::estimate(&spec, &NoBlobs)?;
            eprintln!(
                "estimated needs: {} bytes of memory, {} bytes of disk",
                needs.memory_bytes, needs.disk_bytes
            );
            let bar = ProgressBar::new(0).with_style(ProgressStyle::with_template(
                "{bar:40} {pos}/{len} {msg} {per_sec} eta {eta}",
            )?);
            let report = exec(&spec, &identity, fault, &Bundle::at(&out), &NoBlobs, |p| {
                bar.set_length(u64::from(p.total));
                bar.set_position(u64::from(p.done));
                if p.loss > 0.0 {
                    bar.set_message(format!("loss {:.4}", p.loss));
                }
            })?;
            bar.finish_and_clear();
            eprintln!("bundle written to {}", out.display());
            println!("{}", report.commitment_id);
        }
        Command::Open {
            bundle,
            segments,
            fault,
        } => {
            let b = Bundle::at(&bundle);
            let spec = b.read_task()?;
            for s in segments {
                let hashes = open_steps(&spec, fault, &b, &NoBlobs, s)?;
                eprintln!("segment {s}: opened {} step states", hashes.len());
            }
        }
    }
    Ok(())
}
