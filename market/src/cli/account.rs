//! `market-node account`: balances, and an account's history checked against the ledger.

use anyhow::Result;
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
}

/// Runs an account command.
pub async fn run(command: AccountCommand) -> Result<()> {
    match command {
        AccountCommand::Balance { conn, account } => {
            let account = conn.account(account)?;
            let v = conn.client()?.account(&account).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AccountCommand::History(args) => {
            args.print().await?;
        }
    }
    Ok(())
}
