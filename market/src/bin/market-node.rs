//! `market-node`: serve the market, or act as a buyer at a terminal.
//!
//! `serve` runs the REST API, the engine and the ledger; workers and verifiers join over libp2p
//! (`--p2p` addresses; `market-worker run`, `market-verifier run`). For a quick single-process
//! node, `--local-workers` and `--local-verifiers` run them in-process instead, funded and
//! staked by the operator. `task submit|status|result` talk to a node as a buyer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use market_node::client::Client;
use market_protocol::canonical::{from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::keyfile::load_identity;
use market_protocol::{Identity, TaskId, TaskSpec};

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
    /// Buyer commands.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Blob commands.
    Blob {
        #[command(subcommand)]
        command: BlobCommand,
    },
    /// API keys for OpenAI-compatible clients (`Authorization: Bearer mk-...`).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Create a key file (mode 0600) and print its account id.
    Key {
        /// Where to write it (refuses to overwrite).
        file: PathBuf,
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

#[derive(Subcommand, Debug)]
enum BlobCommand {
    /// Upload a file (a dataset, or weights such as a GGUF model) and print its blob id,
    /// which tasks name.
    Upload {
        /// The file.
        file: PathBuf,
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Your key file (the blob is stored against your account's quota).
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
    /// Sign a task file with your key (as its buyer) and post it.
    Submit {
        /// The task spec (JSON); its `buyer` is set to your key's account.
        file: PathBuf,
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Your key file.
        #[arg(long)]
        key: PathBuf,
        /// Wait until the task is settled or rejected.
        #[arg(long)]
        wait: bool,
    },
    /// Show a task's state.
    Status {
        /// The task id.
        id: TaskId,
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
    },
    /// Fetch a settled task's results (buyer only).
    Result {
        /// The task id.
        id: TaskId,
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// Your key file.
        #[arg(long)]
        key: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
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
        Command::Key { file } => {
            let identity = Identity::generate()?;
            market_protocol::keyfile::save_identity(&identity, &file)?;
            println!("{}", identity.account());
        }
        Command::Blob {
            command: BlobCommand::Upload { file, node, key },
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let client = Client::new(node, Some(load_identity(&key)?));
            println!("{}", client.upload(bytes).await?);
        }
        Command::Task { command } => match command {
            TaskCommand::Submit {
                file,
                node,
                key,
                wait,
            } => {
                let identity = load_identity(&key)?;
                let mut spec: TaskSpec = from_json_limited(
                    &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
                    MAX_MESSAGE_BYTES,
                )
                .with_context(|| format!("{} is not a valid task spec", file.display()))?;
                spec.buyer = identity.account();
                let client = Client::new(node, Some(identity));
                let view = client.submit(spec).await?;
                println!("{}", serde_json::to_string_pretty(&view)?);
                if wait {
                    let done = client
                        .wait(&view.id, Duration::from_secs(3600), |t| {
                            eprintln!("{}", t.state.name())
                        })
                        .await?;
                    println!("{}", serde_json::to_string_pretty(&done)?);
                }
            }
            TaskCommand::Status { id, node } => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&Client::new(node, None).task(&id).await?)?
                );
            }
            TaskCommand::Result { id, node, key } => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &Client::new(node, Some(load_identity(&key)?))
                            .result(&id)
                            .await?
                    )?
                );
            }
        },
    }
    Ok(())
}
