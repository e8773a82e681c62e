//! `market-verifier run`: the networked verifier. It joins a market node with its stake, takes
//! audit jobs, fetches only the openings its challenge samples (plus the task, commitment and
//! leaves), re-executes them with the same [`crate::audit`] as the local command, and returns
//! the signed verdict.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use market_compute::bundle::Bundle;
use market_net::participant::{join, measure_capabilities, session_number, DirBlobs};
use market_net::transfer::fetch_bundle;
use market_net::wire::{AuditJob, Reply, Request, Response};
use market_net::{Event, Multiaddr, Net, NetConfig, PeerId};
use market_protocol::{Identity, Role, Signed, Verdict};
use tokio::sync::watch;

use crate::audit::{challenge_for, openings};
use crate::{audit, SamplePolicy};

/// How the verifier daemon runs.
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// The market node's address.
    pub market: Multiaddr,
    /// Where fetched openings and cached blobs live.
    pub data_dir: PathBuf,
    /// Stake to hold while verifying.
    pub stake: u64,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
}

struct Verifier {
    net: Net,
    identity: Identity,
    options: VerifierOptions,
    node: watch::Sender<Option<PeerId>>,
    /// The node's peer as dialled: the only peer whose requests are taken.
    dialed: watch::Sender<Option<PeerId>>,
}

/// Runs the verifier daemon until the process is stopped (or the node refuses it).
pub async fn run(identity: Identity, options: VerifierOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(options.data_dir.join("audits"))?;
    std::fs::create_dir_all(options.data_dir.join("blobs"))?;
    let (net, mut events) = Net::start(
        &identity,
        NetConfig {
            listen: options.listen.clone(),
            ..NetConfig::default()
        },
    )?;
    let capabilities = tokio::task::spawn_blocking(|| measure_capabilities("cpu")).await?;
    let verifier = Arc::new(Verifier {
        net,
        identity,
        options,
        node: watch::channel(None).0,
        dialed: watch::channel(None).0,
    });
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::unbounded_channel();
    let session = session_number();
    let mut generation = 0u64;
    let mut heads = market_net::heads::HeadWatch::default();
    let start_join = |v: Arc<Verifier>, tx: tokio::sync::mpsc::UnboundedSender<_>, gen: u64| {
        let caps = capabilities.clone();
        tokio::spawn(async move {
            let r = join(
                &v.net,
                &v.options.market,
                &v.dialed,
                &v.identity,
                Role::Verifier,
                &caps,
                v.options.stake,
                session,
            )
            .await;
            let _ = tx.send((gen, r));
        });
    };
    start_join(verifier.clone(), joined_tx.clone(), generation);
    loop {
        tokio::select! {
            joined = joined_rx.recv() => match joined {
                Some((gen, _)) if gen != generation => {}
                Some((_, Ok(welcome))) => {
                    tracing::info!(node = %welcome.node, stake = welcome.stake, "joined the market as a verifier");
                    verifier.node.send_replace(Some(welcome.node));
                }
                Some((_, Err(e))) => return Err(e.into()),
                None => return Ok(()),
            },
            event = events.recv() => match event {
                None => return Ok(()),
                Some(Event::Request { peer, request, responder }) => match request {
                    _ if Some(peer) != *verifier.dialed.borrow() => {
                        responder.send(Reply::refused("not my market node"));
                    }
                    Request::Audit { job } => {
                        responder.send(Reply::of(Response::Ok));
                        tokio::spawn(run_audit(verifier.clone(), peer, job));
                    }
                    other => responder.send(Reply::refused(format!("a verifier does not answer {}", other.name()))),
                },
                Some(Event::Disconnected { peer }) if Some(peer) == *verifier.dialed.borrow() => {
                    tracing::warn!(%peer, "lost the market; reconnecting");
                    verifier.node.send_replace(None);
                    verifier.dialed.send_replace(None);
                    generation += 1;
                    start_join(verifier.clone(), joined_tx.clone(), generation);
                }
                Some(Event::Gossip { topic, data, source }) => {
                    market_net::heads::log_equivocation(&mut heads, &topic, &data, source);
                }
                Some(_) => {}
            },
        }
    }
}

async fn run_audit(verifier: Arc<Verifier>, node: PeerId, job: AuditJob) {
    let task_id = job.task_id;
    match audit_job(&verifier, node, &job).await {
        Ok(verdict) => {
            let request = Request::Verdict {
                task_id,
                job: job.job,
                verdict,
            };
            for _ in 0..30 {
                let Some(node) = *verifier.node.borrow() else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                match verifier.net.request(node, request.clone()).await {
                    Ok(r) if r.response == Response::Ok => break,
                    Ok(r) => {
                        tracing::warn!(task = %task_id, answer = ?r.response, "verdict not taken");
                        break;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "sending the verdict again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        // Nothing is concluded about the worker from an audit that could not run; the node
        // draws another verifier after its timeout.
        Err(e) => tracing::warn!(task = %task_id, error = %e, "audit could not run"),
    }
    let _ = std::fs::remove_dir_all(
        verifier
            .options
            .data_dir
            .join("audits")
            .join(format!("{task_id}-{}", job.job)),
    );
}

async fn audit_job(
    verifier: &Verifier,
    node: PeerId,
    job: &AuditJob,
) -> anyhow::Result<Signed<Verdict>> {
    let dir = verifier
        .options
        .data_dir
        .join("audits")
        .join(format!("{}-{}", job.task_id, job.job));
    let net = &verifier.net;
    let head = |p: &str| matches!(p, "task.json" | "commitment.json" | "leaves.json");
    fetch_bundle(net, node, job.task_id, job.job, &job.manifest, &dir, head).await?;
    let bundle = Bundle::at(&dir);
    let task = bundle.read_task()?;
    let commitment = bundle.read_commitment()?;
    let challenge = challenge_for(
        verifier.identity.account(),
        &commitment,
        job.beacon,
        job.samples,
    )?;
    let wanted = openings(&task, &challenge.sampled);
    // A file the worker withheld is simply absent; the audit then fails the worker for it.
    fetch_bundle(net, node, job.task_id, job.job, &job.manifest, &dir, |p| {
        !head(p) && wanted.iter().any(|w| w == p)
    })
    .await?;
    let blobs = DirBlobs::new(verifier.options.data_dir.join("blobs"));
    blobs.fetch_for(net, node, &task).await?;
    let (identity, beacon, samples) = (verifier.identity.clone(), job.beacon, job.samples);
    let report = tokio::task::spawn_blocking(move || {
        audit(
            &bundle,
            beacon,
            &SamplePolicy::Count(samples),
            &identity,
            &blobs,
        )
    })
    .await??;
    tracing::info!(task = %job.task_id, passed = report.passed(), rerun = report.rerun, "audit done");
    Ok(report.verdict)
}

/// `market-verifier run`'s arguments (also used by `market-devnet` for its verifier processes).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The market node's libp2p address, e.g. `/ip4/127.0.0.1/tcp/4001/p2p/12D3...`.
    #[arg(long)]
    pub market: Multiaddr,
    /// The verifier's key file (0600); its account is also its peer id.
    #[arg(long)]
    pub key: PathBuf,
    /// Credits to stake from the account's balance while verifying.
    #[arg(long)]
    pub stake: u64,
    /// Data directory (fetched openings, cached inputs).
    #[arg(long, default_value = "market-verifier-data")]
    pub data: PathBuf,
    /// Listen addresses.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    pub listen: Vec<Multiaddr>,
}

/// Runs the verifier daemon from command-line arguments, on a new tokio runtime.
pub fn run_cli(args: RunArgs) -> anyhow::Result<()> {
    let identity = market_protocol::keyfile::load_identity(&args.key)?;
    let options = VerifierOptions {
        market: args.market,
        data_dir: args.data,
        stake: args.stake,
        listen: args.listen,
    };
    tokio::runtime::Runtime::new()?.block_on(run(identity, options))
}
