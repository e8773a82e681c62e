//! `market-node`: serve the market, or act as a buyer at a terminal.
//!
//! `serve` runs the REST API, the engine and the ledger; workers and verifiers join over libp2p
//! (`--p2p` addresses; `market-worker run`, `market-verifier run`). For a quick single-process
//! node, `--local-workers` and `--local-verifiers` run them in-process instead, funded and
//! staked by the operator. `task submit|status|result` talk to a node as a buyer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use market_node::client::Client;
use market_node::config::NodeConfig;
use market_node::dispatch::{InProcess, VerifierMode};
use market_node::engine::Node;
use market_protocol::canonical::{from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::keyfile::{load_identity, load_or_create_identity};
use market_protocol::{Identity, TaskId, TaskSpec};
use market_worker::Behavior;

#[derive(Parser, Debug)]
#[command(about = "The market node, and buyer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Serve {
        /// Data directory (ledger, tasks, blobs).
        #[arg(long)]
        data: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The operator key (created with mode 0600 if missing; default DATA/operator.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Honest workers to run in-process (funded and staked by the operator).
        #[arg(long, default_value_t = 0)]
        local_workers: usize,
        /// Verifiers to run in-process (funded and staked by the operator).
        #[arg(long, default_value_t = 0)]
        local_verifiers: usize,
        /// libp2p listen address for workers and verifiers (repeatable); used when no local
        /// workers or verifiers are asked for.
        #[arg(long, default_values_t = ["/ip4/0.0.0.0/tcp/4001".to_string(), "/ip4/0.0.0.0/udp/4001/quic-v1".to_string()])]
        p2p: Vec<String>,
        /// Discover peers on the local network with mDNS.
        #[arg(long)]
        mdns: bool,
        /// Operator action at start: mint credits to an account, as ACCOUNT:AMOUNT (repeatable;
        /// idempotent, so a restart with the same flags mints nothing twice).
        #[arg(long)]
        mint: Vec<String>,
    },
    /// Buyer commands.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Create a key file (mode 0600) and print its account id.
    Key {
        /// Where to write it (refuses to overwrite).
        file: PathBuf,
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
        Command::Serve {
            data,
            listen,
            config,
            key,
            local_workers,
            local_verifiers,
            p2p,
            mdns,
            mint,
        } => {
            let config = match config {
                Some(p) => NodeConfig::from_toml(
                    &std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )?,
                None => NodeConfig::default(),
            };
            std::fs::create_dir_all(&data)?;
            let operator =
                load_or_create_identity(&key.unwrap_or_else(|| data.join("operator.key")))?;
            let local = |role: &str, n: usize| {
                (0..n)
                    .map(|i| {
                        Identity::from_test_label(&format!(
                            "local {role} {i} of {}",
                            operator.account()
                        ))
                    })
                    .collect::<Vec<_>>()
            };
            let workers = local("worker", local_workers);
            let verifiers = local("verifier", local_verifiers);
            let dispatch = InProcess {
                workers: workers
                    .iter()
                    .map(|w| (w.clone(), Behavior::Honest))
                    .collect(),
                verifiers: verifiers
                    .iter()
                    .map(|v| (v.clone(), VerifierMode::Honest))
                    .collect(),
            };
            let node = if local_workers + local_verifiers > 0 {
                Node::open(&data, config.clone(), operator, Arc::new(dispatch))?
            } else {
                let listen = p2p
                    .iter()
                    .map(|a| {
                        a.parse()
                            .with_context(|| format!("--p2p {a}: not a multiaddr"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (node, _, addrs) = market_node::p2p::open_networked(
                    &data,
                    config.clone(),
                    operator,
                    market_net::NetConfig {
                        listen,
                        mdns,
                        ..Default::default()
                    },
                    market_node::p2p::P2pOptions::from(&config.network),
                )
                .await?;
                for a in &addrs {
                    eprintln!("workers and verifiers join at {a}");
                }
                node
            };
            for w in &workers {
                node.fund(
                    "local",
                    &w.account(),
                    config.min_worker_stake * 2,
                    config.min_worker_stake * 2,
                )
                .await?;
            }
            for v in &verifiers {
                node.fund(
                    "local",
                    &v.account(),
                    config.min_verifier_stake * 2,
                    config.min_verifier_stake * 2,
                )
                .await?;
            }
            for m in &mint {
                let (account, amount) = m.split_once(':').context("--mint takes ACCOUNT:AMOUNT")?;
                let account: market_protocol::AccountId =
                    account.parse().context("--mint: not an account id")?;
                node.fund(
                    "cli",
                    &account,
                    amount.parse().context("--mint: not an amount")?,
                    0,
                )
                .await?;
            }
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving");
            market_node::server::serve(node, listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        }
        Command::Key { file } => {
            let identity = Identity::generate()?;
            market_protocol::keyfile::save_identity(&identity, &file)?;
            println!("{}", identity.account());
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
