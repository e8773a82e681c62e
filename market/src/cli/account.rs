//! `market-node account`: balances, and an account's history checked against the ledger.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use market_protocol::AccountId;

use super::Connection;

/// Account commands.
#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Your balance, stake, escrow and reputation, as the node reports them.
    Balance {
        #[command(flatten)]
        conn: Connection,
        /// Another account than your key's.
        #[arg(long)]
        account: Option<AccountId>,
    },
    /// Every ledger entry that touched the account, with what it changed and why. The node's
    /// whole export is fetched and verified here (signatures, links, the replay, and the
    /// operator's signed head as a prefix), so nothing in it is taken on trust.
    History(market_ledger::remote::StatementArgs),
    /// Move your account (balance, stake, reputation, blobs) to a new key, signed by both;
    /// the old key can never act again. `--new-key` is created (0600) if it does not exist.
    /// A worker or verifier stops first, and restarts with the new key.
    Rotate {
        #[command(flatten)]
        conn: Connection,
        /// The new key file.
        #[arg(long)]
        new_key: PathBuf,
    },
}

/// Runs an account command.
pub async fn run(command: AccountCommand) -> Result<()> {
    match command {
        AccountCommand::Balance { conn, account } => {
            let account = conn.account(account)?;
            let v = conn.client()?.account(&account).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AccountCommand::Rotate { conn, new_key } => {
            let new = if new_key.exists() {
                market_protocol::keyfile::load_identity(&new_key)
                    .with_context(|| format!("loading key {}", new_key.display()))?
            } else {
                let id = market_protocol::Identity::generate()?;
                market_protocol::keyfile::save_identity(&id, &new_key)?;
                eprintln!("created {} for account {}", new_key.display(), id.account());
                id
            };
            let done = conn.signing_client()?.rotate(&new).await?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            eprintln!(
                "rotated: {} can no longer act; use {} (account {})",
                conn.key
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                new_key.display(),
                new.account()
            );
        }
        AccountCommand::History(args) => {
            args.print().await?;
        }
    }
    Ok(())
}
