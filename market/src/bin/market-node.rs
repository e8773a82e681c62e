//! `market-node`: serve the market, or act as a buyer at a terminal.
//!
//! `serve` runs the REST API, the engine and the ledger; workers and verifiers join over libp2p
//! (`--p2p` addresses; `market-worker run`, `market-verifier run`). For a quick single-process
//! node, `--local-workers` and `--local-verifiers` run them in-process instead, funded and
//! staked by the operator. `task`, `blob` and `account` talk to a node as a buyer.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use market_protocol::Identity;

#[derive(Parser, Debug)]
#[command(about = "The market node, and buyer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Serve(market_node::server::ServeArgs),
    /// Tasks: submit, watch, list, cancel, fetch results.
    Task {
        #[command(subcommand)]
        command: market_node::cli::task::TaskCommand,
    },
    /// Blobs: upload datasets and weights, download results.
    Blob {
        #[command(subcommand)]
        command: market_node::cli::blob::BlobCommand,
    },
    /// Your account: balance, and its history verified against the signed ledger.
    Account {
        #[command(subcommand)]
        command: market_node::cli::account::AccountCommand,
    },
    /// API keys for OpenAI-compatible clients (`Authorization: Bearer mk-...`).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Create a key file (mode 0600) and print its account id: `key FILE`. Or back a key up,
    /// encrypted under a passphrase (`key backup`), and restore it (`key restore`).
    #[command(args_conflicts_with_subcommands = true)]
    Key {
        /// Where to write a new key (refuses to overwrite).
        file: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<market_node::cli::key::KeyCommand>,
    },
}

#[derive(Subcommand, Debug)]
enum ApiKeyCommand {
    /// Create an API key for your account and print it (its secret is shown only now).
    Create {
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Your key file (the account the API key spends for).
        #[arg(long)]
        key: PathBuf,
        /// A label for people.
        #[arg(long, default_value = "")]
        name: String,
        /// Most credits the API key may spend in all.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// List your account's API keys (without secrets).
    List {
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Your key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Revoke one of your account's API keys.
    Revoke {
        /// The API key's id (`key_...`).
        id: String,
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Your key file.
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> Result<()> {
    // The node renders clients' chat templates in a child process: this executable, started
    // again; the check comes before any thread.
    market_node::template_sandbox::serve_as_child_if_asked();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            market_node::server::run(args, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?
        }
        Command::ApiKey { command } => {
            let client = |node: &str, key: &PathBuf| -> Result<market_node::client::Client> {
                let identity = market_protocol::keyfile::load_identity(key)?;
                Ok(market_node::client::Client::new(node, Some(identity)))
            };
            let shown = match command {
                ApiKeyCommand::Create {
                    node,
                    key,
                    name,
                    limit,
                } => client(&node, &key)?.create_key(&name, limit).await?,
                ApiKeyCommand::List { node, key } => client(&node, &key)?.keys().await?,
                ApiKeyCommand::Revoke { id, node, key } => {
                    client(&node, &key)?.revoke_key(&id).await?
                }
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        Command::Key {
            file: Some(file),
            command: None,
        } => {
            let identity = Identity::generate()?;
            market_protocol::keyfile::save_identity(&identity, &file)?;
            println!("{}", identity.account());
        }
        Command::Key {
            command: Some(command),
            ..
        } => market_node::cli::key::run(command)?,
        Command::Key { .. } => {
            anyhow::bail!("give a file for a new key, or `key backup` / `key restore`")
        }
        Command::Blob { command } => market_node::cli::blob::run(command).await?,
        Command::Task { command } => market_node::cli::task::run(command).await?,
        Command::Account { command } => market_node::cli::account::run(command).await?,
    }
    Ok(())
}
