//! `market-verifier`: audit result bundles and sign verdicts.
//!
//! `run` joins a market over libp2p and audits for it. `audit` prints the signed verdict as JSON. Exit code 0: pass; 1: fail; 2: unusable input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use market_compute::bundle::Bundle;
use market_compute::NoBlobs;
use market_protocol::keyfile::load_identity;
use market_protocol::{Beacon, Decimal, Identity};
use market_verifier::{audit, SamplePolicy};

#[derive(Parser, Debug)]
#[command(about = "The market verifier: re-execute sampled segments and sign verdicts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join a market node over libp2p and audit what it hands out.
    Run(market_verifier::daemon::RunArgs),
    /// What the ledger records for your account, entry by entry (fees for verdicts and checks, staked, slashed, reputation),
    /// each with the task, audit or ringer behind it: read from the node's export and verified
    /// here against its signed head (`--node` is the node's HTTP URL).
    Statement(market_ledger::remote::StatementArgs),
    /// Audit a result bundle against a beacon; prints the signed verdict in its canonical
    /// encoding (one line).
    Audit {
        /// The bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// The beacon (64 hex digits): randomness that did not exist at commit time.
        #[arg(long)]
        beacon: Beacon,
        /// Segments to sample: a number or `all`.
        #[arg(long, conflicts_with = "detect")]
        samples: Option<SamplePolicy>,
        /// Sample the fewest segments that catch the assumed cheater with this probability.
        #[arg(long, requires = "assume_faked")]
        detect: Option<Decimal>,
        /// The fraction of faked segments to assume with --detect.
        #[arg(long, requires = "detect")]
        assume_faked: Option<Decimal>,
        /// The verifier's key file (0600); a throw-away key is used if absent.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().command;
    if let Command::Run(args) = command {
        return match market_verifier::daemon::run_cli(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Statement(args) = command {
        let printed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(args.print()));
        return match printed {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                // As market-worker and market-node report a failed statement.
                ExitCode::FAILURE
            }
        };
    }
    let Command::Audit {
        bundle,
        beacon,
        samples,
        detect,
        assume_faked,
        key,
    } = command
    else {
        unreachable!("run and statement returned above")
    };
    let identity: anyhow::Result<Identity> = match key {
        Some(k) => load_identity(&k).map_err(Into::into),
        None => Identity::generate().map_err(Into::into),
    };
    let identity = match identity {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = match (samples, detect, assume_faked) {
        (_, Some(target), Some(assumed_faked)) => SamplePolicy::Detect {
            target,
            assumed_faked,
        },
        (Some(p), _, _) => p,
        _ => SamplePolicy::Count(1),
    };
    match audit(&Bundle::at(&bundle), beacon, &policy, &identity, &NoBlobs) {
        Ok(report) => {
            // The canonical encoding, on one line: the bytes a receiver hashes and verifies.
            match market_protocol::canonical::to_canonical_bytes(&report.verdict)
                .map(String::from_utf8)
            {
                Ok(Ok(json)) => println!("{json}"),
                Ok(Err(e)) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            let share = 100.0 * report.rerun as f64 / report.total.max(1) as f64;
            let p = report
                .detection_probability
                .map(|p| format!(", detection probability {p:.4}"))
                .unwrap_or_default();
            eprintln!(
                "{} of {} segments sampled{p}; re-executed {} of {} (compute share {share:.2}%)",
                report.challenge.sampled.len(),
                report.challenge.segments,
                report.rerun,
                report.total
            );
            if report.passed() {
                eprintln!("PASS");
                ExitCode::SUCCESS
            } else {
                eprintln!("FAIL");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
