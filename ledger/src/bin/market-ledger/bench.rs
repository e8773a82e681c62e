//! `market-ledger bench`: durable appends per second at a given concurrency, then verified
//! entries per second over the resulting chain.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use market_ledger::protocol::{Credits, Identity};
use market_ledger::{EntryKind, IdempotencyKey, Ledger, OpenOptions};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The ledger directory (created if missing or empty).
    #[arg(long)]
    path: PathBuf,
    /// Entries to append.
    #[arg(long)]
    entries: u64,
    /// Threads appending at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// The operator key file (created with mode 0600 if missing); a fresh throwaway key when
    /// omitted.
    #[arg(long)]
    key: Option<PathBuf>,
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(
        args.entries >= args.concurrency,
        "--entries must be at least --concurrency"
    );
    let operator = match &args.key {
        Some(path) => crate::load_key(path)?,
        None => Identity::generate()?,
    };
    let ledger = Ledger::open(&args.path, operator, OpenOptions::default())?;
    let start_seq = ledger.head().seq;
    // Keys unique to this run, so that a rerun on the same directory appends rather than
    // replays earlier keys.
    let run = format!("{}-{}", std::process::id(), start_seq);
    let bar = ProgressBar::new(args.entries).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} appends {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    crate::in_threads(args.concurrency, |t| {
        let n = args.entries / args.concurrency + u64::from(t < args.entries % args.concurrency);
        let a = Identity::from_test_label(&format!("bench-{t}-a")).account();
        let b = Identity::from_test_label(&format!("bench-{t}-b")).account();
        for i in 0..n {
            let key = IdempotencyKey::new(format!("bench/{run}/{t}/{i}"))?;
            let kind = match i % 3 {
                0 => EntryKind::Mint {
                    to: a,
                    amount: Credits(2),
                },
                1 => EntryKind::Transfer {
                    from: a,
                    to: b,
                    amount: Credits(1),
                },
                _ => EntryKind::Transfer {
                    from: b,
                    to: a,
                    amount: Credits(1),
                },
            };
            ensure!(ledger.append(key, kind)?.fresh, "bench key reused");
            bar.inc(1);
        }
        Ok(())
    })?;
    let append_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let appended = ledger.head().seq - start_seq;
    let flushes = ledger.flushes().max(1);
    writeln!(
        std::io::stdout().lock(),
        "append: {appended} durable entries at concurrency {} in {append_secs:.3} s = {:.0} appends/s ({flushes} group commits, {:.1} entries each)",
        args.concurrency,
        appended as f64 / append_secs,
        appended as f64 / flushes as f64
    )?;
    let started = Instant::now();
    let report = ledger.verify()?;
    let verify_secs = started.elapsed().as_secs_f64();
    writeln!(
        std::io::stdout().lock(),
        "verify: {} entries in {verify_secs:.3} s = {:.0} entries/s (links, signatures, replay, stored state)",
        report.entries,
        report.entries as f64 / verify_secs
    )?;
    Ok(())
}
