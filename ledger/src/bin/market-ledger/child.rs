//! The crash test's child: appends forever from several threads and prints `ack SEQ KEY` for
//! every append that returned, i.e. that is durable. The parent kills it with SIGKILL.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use market_ledger::protocol::{Credits, Identity};
use market_ledger::{EntryKind, IdempotencyKey, Ledger, OpenOptions};

#[derive(Debug, Args)]
pub(crate) struct ChildArgs {
    /// The ledger directory.
    #[arg(long)]
    path: PathBuf,
    /// The operator key file.
    #[arg(long)]
    key: PathBuf,
    /// Appending threads.
    #[arg(long, default_value_t = 8)]
    threads: u32,
}

pub(crate) fn run(args: ChildArgs) -> Result<()> {
    let operator = crate::load_key(&args.key)?;
    let ledger = Ledger::open(&args.path, operator, OpenOptions::default())?;
    writeln!(std::io::stdout().lock(), "ready {}", ledger.head().seq)?;
    let pid = std::process::id();
    crate::in_threads(u64::from(args.threads), |t| {
        let a = Identity::from_test_label(&format!("crash-{t}-a")).account();
        let b = Identity::from_test_label(&format!("crash-{t}-b")).account();
        for i in 0u64.. {
            let key = IdempotencyKey::new(format!("crash/{pid}/{t}/{i}"))?;
            let kind = if i % 2 == 0 {
                EntryKind::Mint {
                    to: a,
                    amount: Credits(2),
                }
            } else {
                EntryKind::Transfer {
                    from: a,
                    to: b,
                    amount: Credits(1),
                }
            };
            let appended = ledger.append(key.clone(), kind)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ack {} {key}", appended.seq())?;
            out.flush()?;
        }
        Ok(())
    })
}
