//! `market-ledger`: verify, export and inspect a ledger, and measure it.
//!
//! Exit status 0 means the ledger (or export) is intact; any failure exits 1 with a message
//! that names the first bad sequence number when the chain is broken.

mod bench;
mod child;

// Verification moves many short-lived buffers between threads; glibc's allocator spent about
// 8% of it in locks and page faults, mimalloc a fraction of that (BENCHMARKS.md, ledger).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use market_ledger::protocol::keyfile::load_or_create_identity;
use market_ledger::protocol::{to_canonical_bytes, AccountId, Identity};
use market_ledger::{verify_export_file, Ledger, OpenCheck, SignedHead};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "market-ledger",
    version,
    about = "The market's signed local ledger"
)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), written to stderr.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify every link, signature and balance of a ledger directory or an export.
    Verify(VerifyArgs),
    /// Write entries as JSON lines to stdout.
    Export {
        /// The ledger directory.
        #[arg(long)]
        path: PathBuf,
        /// The first sequence number to write (a verifiable export starts at 0).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Print an account's balance, stake and reputation.
    Balance {
        /// The ledger directory.
        #[arg(long)]
        path: PathBuf,
        /// The account (64 hex digits).
        account: AccountId,
    },
    /// Print the head; signed by the operator when `--key` is given.
    Head {
        /// The ledger directory.
        #[arg(long)]
        path: PathBuf,
        /// The operator key file (created with mode 0600 if missing).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Verify an export and print what it did to one account, entry by entry (balance,
    /// stake, escrow and reputation changes, with the cause and evidence of each).
    Statement {
        /// The export file (JSON lines, from genesis).
        #[arg(long)]
        export: PathBuf,
        /// A signed head (JSON) that must be a prefix of the export.
        #[arg(long)]
        head: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The account (64 hex digits).
        account: AccountId,
    },
    /// Append real signed entries from concurrent threads, then verify the chain.
    Bench(bench::BenchArgs),
    /// Test support: append in a loop, printing each durable seq (used by the crash test).
    #[command(hide = true)]
    CrashChild(child::ChildArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Source {
    /// A ledger directory.
    #[arg(long)]
    path: Option<PathBuf>,
    /// An export file (JSON lines); checked with no database.
    #[arg(long)]
    export: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    source: Source,
    /// A signed head (JSON) that must be a prefix of the chain.
    #[arg(long)]
    head: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("market-ledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Verify(args) => verify(args),
        Command::Export { path, from } => {
            let ledger = Ledger::inspect(&path)?;
            let mut out = BufWriter::new(std::io::stdout().lock());
            let n = ledger.export(&mut out, from)?;
            tracing::info!(entries = n, "exported");
            Ok(())
        }
        Command::Balance { path, account } => {
            let ledger = Ledger::open_read_only(&path, OpenCheck::Tail(1000))?;
            let report = json!({
                "account": account,
                "balance": ledger.balance(&account),
                "stake": ledger.stake(&account),
                "reputation": ledger.reputation(&account),
                "head": ledger.head(),
            });
            writeln!(std::io::stdout().lock(), "{report}")?;
            Ok(())
        }
        Command::Head { path, key } => {
            let ledger = Ledger::open_read_only(&path, OpenCheck::Tail(1000))?;
            match key {
                Some(key) => {
                    let operator = load_key(&key)?;
                    let signed = ledger.sign_head(&operator)?;
                    let bytes = to_canonical_bytes(&signed)?;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)?;
                    out.write_all(b"\n")?;
                }
                None => writeln!(std::io::stdout().lock(), "{}", json!(ledger.head()))?,
            }
            Ok(())
        }
        Command::Statement {
            export,
            head,
            json,
            account,
        } => {
            let head = head.as_deref().map(read_signed_head).transpose()?;
            let file = std::fs::File::open(&export)
                .with_context(|| format!("reading {}", export.display()))?;
            let statement = market_ledger::statement(
                std::io::BufReader::new(file),
                &export,
                account,
                head.as_ref(),
            )?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&statement)?)?;
            } else {
                writeln!(out, "{statement}")?;
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::CrashChild(args) => child::run(args),
    }
}

fn verify(args: VerifyArgs) -> Result<()> {
    let head = args.head.as_deref().map(read_signed_head).transpose()?;
    match (args.source.path, args.source.export) {
        (Some(path), _) => {
            let ledger = Ledger::inspect(&path)?;
            let report = ledger.verify()?;
            if let Some(signed) = &head {
                ledger.check_signed_head(signed)?;
            }
            writeln!(
                std::io::stdout().lock(),
                "ok: {} entries, head {} at seq {}, supply {}",
                report.entries,
                report.head.hash,
                report.head.seq,
                report.supply
            )?;
        }
        (None, Some(file)) => {
            let report = verify_export_file(&file, head.as_ref())?;
            let s = &report.summary;
            writeln!(
                std::io::stdout().lock(),
                "ok: {} entries, head {} at seq {}, supply {}, ledger {}",
                report.lines,
                s.head.hash,
                s.head.seq,
                s.state.supply(),
                s.ledger
            )?;
        }
        (None, None) => anyhow::bail!("give --path or --export"),
    }
    Ok(())
}

/// Reads a signed head (JSON) from a file.
fn read_signed_head(p: &Path) -> Result<SignedHead> {
    let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a signed head", p.display()))
}

/// Loads (or creates) an operator key file.
pub(crate) fn load_key(path: &Path) -> Result<Identity> {
    load_or_create_identity(path).with_context(|| format!("operator key {}", path.display()))
}

/// Runs `work(t)` on `threads` scoped threads at once and returns the first error (a panic
/// counts as one): the appenders of `bench` and of the crash-test child.
pub(crate) fn in_threads(threads: u64, work: impl Fn(u64) -> Result<()> + Sync) -> Result<()> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..threads).map(|t| scope.spawn(move || work(t))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("appender panicked")))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}
