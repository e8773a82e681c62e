//! Serving: the HTTP listener and the engine, together, until shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::engine::Node;

/// Serves the API on `listener` and runs the engine until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let engine = tokio::spawn(node.clone().run_engine());
    let housekeeping = tokio::spawn(node.clone().run_housekeeping());
    let app = crate::api::router(node).layer(tower_http::trace::TraceLayer::new_for_http());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    engine.abort();
    housekeeping.abort();
    result
}

/// `market-node serve`'s arguments (also used by `market-devnet` for its node process).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Data directory (ledger, tasks, blobs). The node writes `endpoints.json` here once it
    /// listens: `{"api": URL, "p2p": [MULTIADDR, ...]}`.
    #[arg(long)]
    pub data: std::path::PathBuf,
    /// HTTP listen address (`127.0.0.1:0` picks a free port; see `endpoints.json`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// The operator key (created with mode 0600 if missing; default DATA/operator.key).
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,
    /// Honest workers to run in-process (funded and staked by the operator).
    #[arg(long, default_value_t = 0)]
    pub local_workers: usize,
    /// Verifiers to run in-process (funded and staked by the operator).
    #[arg(long, default_value_t = 0)]
    pub local_verifiers: usize,
    /// libp2p listen address for workers and verifiers (repeatable); used when no local
    /// workers or verifiers are asked for.
    #[arg(long, default_values_t = ["/ip4/0.0.0.0/tcp/4001".to_string(), "/ip4/0.0.0.0/udp/4001/quic-v1".to_string()])]
    pub p2p: Vec<String>,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Operator action at start: mint credits to an account, as ACCOUNT:AMOUNT (repeatable;
    /// idempotent, so a restart with the same flags mints nothing twice).
    #[arg(long)]
    pub mint: Vec<String>,
}

/// The keys of in-process workers or verifiers: random, each in a 0600 key file under
/// `DATA/local/` made on first start and reused after, so a restarted node keeps the same
/// participants (and their earnings). Keys derived from a public label would let anyone who
/// knows the operator's account spend what its local participants earn.
pub fn local_identities(
    data: &std::path::Path,
    role: &str,
    n: usize,
) -> anyhow::Result<Vec<market_protocol::Identity>> {
    let dir = data.join("local");
    std::fs::create_dir_all(&dir)?;
    (0..n)
        .map(|i| {
            market_protocol::keyfile::load_or_create_identity(&dir.join(format!("{role}-{i}.key")))
                .map_err(Into::into)
        })
        .collect()
}

/// Runs a node from command-line arguments until `shutdown` resolves.
pub async fn run(
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;

    use crate::config::NodeConfig;
    use crate::dispatch::{InProcess, VerifierMode};
    use market_worker::Behavior;

    let ServeArgs {
        data,
        listen,
        config,
        key,
        local_workers,
        local_verifiers,
        p2p,
        mdns,
        mint,
    } = args;
    let config = match config {
        Some(p) => NodeConfig::from_toml(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => NodeConfig::default(),
    };
    std::fs::create_dir_all(&data)?;
    let operator = market_protocol::keyfile::load_or_create_identity(
        &key.unwrap_or_else(|| data.join("operator.key")),
    )?;
    let workers = local_identities(&data, "worker", local_workers)?;
    let verifiers = local_identities(&data, "verifier", local_verifiers)?;
    let mut p2p_addrs = Vec::new();
    let node = if local_workers + local_verifiers > 0 {
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
        Node::open(&data, config.clone(), operator, Arc::new(dispatch))?
    } else {
        let listen = p2p
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("--p2p {a}: not a multiaddr"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (node, _, addrs) = crate::p2p::open_networked(
            &data,
            config.clone(),
            operator,
            market_net::NetConfig {
                listen,
                mdns,
                ..Default::default()
            },
            crate::p2p::P2pOptions::from(&config.network),
        )
        .await?;
        for a in &addrs {
            eprintln!("workers and verifiers join at {a}");
        }
        p2p_addrs = addrs;
        node
    };
    for w in &workers {
        let stake = config.min_worker_stake * 2;
        node.fund("local", &w.account(), stake, stake).await?;
    }
    for v in &verifiers {
        let stake = config.min_verifier_stake * 2;
        node.fund("local", &v.account(), stake, stake).await?;
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
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let api = format!("http://{}", listener.local_addr()?);
    tracing::info!(%api, "serving");
    // Written last and renamed into place, so a reader never sees half of it.
    let endpoints = serde_json::json!({
        "api": api,
        "p2p": p2p_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    let tmp = data.join("endpoints.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&endpoints)?)?;
    std::fs::rename(&tmp, data.join("endpoints.json"))?;
    serve(node, listener, shutdown).await?;
    Ok(())
}
