//! `market-verifier run`: the networked verifier. It joins a market node with its stake, takes
//! audit jobs, fetches only the openings its challenge samples (plus the task, commitment and
//! leaves), re-executes them with the same [`crate::audit`] as the local command, and returns
//! the signed verdict.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use market_compute::bundle::Bundle;
use market_net::participant::{DirBlobs, Membership};
use market_net::transfer::fetch_bundle;
use market_net::wire::{AnswerCheckJob, AuditJob, Reply, Request, Response};
use market_net::{Multiaddr, Net, PeerId};
use market_protocol::{AnswerCheck, AnswerCheckOutcome, Identity, Role, Signed, Verdict};

use crate::answers::{self, CheckFault};
use market_compute::serving::ModelCache;

use crate::audit::{challenge_for, openings};
use crate::{audit, SamplePolicy};

/// How the verifier daemon runs.
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// The market node's address.
    pub market: Multiaddr,
    /// Where fetched openings and cached blobs live.
    pub data_dir: PathBuf,
    /// Most bytes of input blobs kept cached (least recently used go first).
    pub cache_bytes: u64,
    /// Stake to hold while verifying.
    pub stake: u64,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Compute device for re-execution: `cpu`, or `cuda` (which also lets it audit `cuda`
    /// tasks) in a build with the `cuda` feature.
    pub device: String,
    /// A dishonest way of checking served answers (a testing aid), or `None`.
    pub check_fault: Option<CheckFault>,
}

struct Verifier {
    net: Net,
    identity: Identity,
    options: VerifierOptions,
    member: Arc<Membership>,
    checkers: Arc<ModelCache>,
    /// Checks taken so far (for [`CheckFault::SilentOnce`]).
    checks_taken: std::sync::atomic::AtomicU64,
}

/// Runs the verifier daemon until the process is stopped (or the node refuses it).
pub async fn run(identity: Identity, options: VerifierOptions) -> anyhow::Result<()> {
    // Audits do not resume: whatever an earlier process left half-fetched is of no use.
    let audits = options.data_dir.join("audits");
    if audits.exists() {
        std::fs::remove_dir_all(&audits)?;
    }
    std::fs::create_dir_all(&audits)?;
    std::fs::create_dir_all(options.data_dir.join("blobs"))?;
    // Tokens an earlier process kept may come from another build's tokenizer.
    DirBlobs::new(options.data_dir.join("blobs")).forget_derived()?;
    let (member, events) = Membership::start(
        &identity,
        &options.market,
        options.listen.clone(),
        Role::Verifier,
        &options.device,
        &options.data_dir,
        options.stake,
    )
    .await?;
    let net = member.net.clone();
    let verifier = Arc::new(Verifier {
        net,
        identity,
        options,
        member: member.clone(),
        checkers: Arc::default(),
        checks_taken: Default::default(),
    });
    member
        .run(
            events,
            |_| {},
            |node, request, responder| match request {
                Request::Audit { job } => {
                    responder.send(Reply::of(Response::Ok));
                    tokio::spawn(run_audit(verifier.clone(), node, job));
                }
                Request::CheckAnswer { job } => {
                    responder.send(Reply::of(Response::Ok));
                    tokio::spawn(run_check(verifier.clone(), node, *job));
                }
                other => responder.send(Reply::refused(format!(
                    "a verifier does not answer {}",
                    other.name()
                ))),
            },
        )
        .await
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
            send_to_node(&verifier, request, "verdict").await;
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

/// Checks a served answer and sends the signed check back (a few tries while the node is
/// away); a job that is not what the node may ask is refused by silence, and logged.
async fn run_check(verifier: Arc<Verifier>, node: PeerId, job: AnswerCheckJob) {
    let number = job.job;
    let taken = verifier
        .checks_taken
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if taken == 0 && verifier.options.check_fault == Some(CheckFault::SilentOnce) {
        tracing::warn!(job = number, "staying silent on this check (testing aid)");
        return;
    }
    let checked = check_answer(&verifier, node, &job).await;
    let check = match checked {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job = number, error = %e, "answer check could not run");
            return;
        }
    };
    send_to_node(
        &verifier,
        Request::AnswerChecked { job: number, check },
        "check",
    )
    .await;
}

/// Sends a finding (`what`: a verdict or a check) to the node, again while it is away or the
/// request fails (up to 30 tries a second apart); a refusal is final.
async fn send_to_node(verifier: &Verifier, request: Request, what: &str) {
    for _ in 0..30 {
        let Some(node) = verifier.member.node() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        match verifier.net.request(node, request.clone()).await {
            Ok(r) if r.response == Response::Ok => return,
            Ok(r) => {
                tracing::warn!(answer = ?r.response, "{what} not taken");
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "sending the {what} again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn check_answer(
    verifier: &Verifier,
    node: PeerId,
    job: &AnswerCheckJob,
) -> anyhow::Result<Signed<AnswerCheck>> {
    let operator = market_protocol::AccountId::from_peer_id(&node)?;
    let leaf = answers::check_job(&operator, job)?;
    let outcome = match verifier.options.check_fault {
        Some(CheckFault::Lazy) => AnswerCheckOutcome::Pass,
        Some(CheckFault::Liar) => AnswerCheckOutcome::Fail {
            detail: "made up".into(),
        },
        None | Some(CheckFault::SilentOnce) => {
            let blobs = DirBlobs::new(verifier.options.data_dir.join("blobs"))
                .with_limit(verifier.options.cache_bytes);
            blobs.fetch_for(&verifier.net, node, &job.request).await?;
            let weights = answers::weights_of(job)?;
            let me = verifier.identity.account();
            let (checkers, job) = (verifier.checkers.clone(), job.clone());
            tokio::task::spawn_blocking(move || {
                let model = checkers.get(&blobs, weights, job.request.profile, true, me)?;
                answers::outcome(&model, &job)
            })
            .await??
        }
    };
    tracing::info!(job = job.job, batch = %job.batch, index = job.index, ?outcome, "answer checked");
    answers::sign(&verifier.identity, job, leaf, outcome)
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
    // The beacon must be the node's own VRF output for this commitment: a node cannot steer
    // which segments are checked by handing out a beacon of its choosing.
    let operator = market_protocol::AccountId::from_peer_id(&node)?;
    let cid = market_protocol::CommitmentId(commitment.id()?);
    let proven = market_protocol::beacon::verify_beacon(&operator, &cid, &job.beacon_proof)
        .map_err(|e| anyhow::anyhow!("the node's beacon proof does not verify: {e}"))?;
    anyhow::ensure!(
        proven == job.beacon,
        "the beacon is not the one the node's proof gives"
    );
    let policy = SamplePolicy::Plan {
        verifiers: job.verifiers,
    };
    let (samples, _) = crate::audit::sample_count(&task, commitment.body.segments, &policy)?;
    let challenge = challenge_for(
        verifier.identity.account(),
        &commitment,
        job.beacon,
        samples,
    )?;
    let wanted = openings(&task, &challenge.sampled);
    // A file the worker withheld is simply absent; the audit then fails the worker for it.
    fetch_bundle(net, node, job.task_id, job.job, &job.manifest, &dir, |p| {
        !head(p) && wanted.iter().any(|w| w == p)
    })
    .await?;
    let blobs = DirBlobs::new(verifier.options.data_dir.join("blobs"))
        .with_limit(verifier.options.cache_bytes);
    blobs.fetch_for(net, node, &task).await?;
    let (identity, beacon) = (verifier.identity.clone(), job.beacon);
    let report =
        tokio::task::spawn_blocking(move || audit(&bundle, beacon, &policy, &identity, &blobs))
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
    /// Most bytes of input blobs (datasets, weights) to keep cached; the least recently used
    /// go first.
    #[arg(long, default_value_t = market_net::participant::DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,
    /// Listen addresses.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    pub listen: Vec<Multiaddr>,
    /// Compute device: `cpu`, or `cuda` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Testing aid: check served answers dishonestly (`lazy` passes all, `liar` fails all,
    /// `silent-once` never answers its first check).
    #[arg(long, hide = true)]
    pub check_fault: Option<CheckFault>,
}

/// Runs the verifier daemon from command-line arguments, on a new tokio runtime.
pub fn run_cli(args: RunArgs) -> anyhow::Result<()> {
    market_compute::backend::check_device(&args.device)?;
    let identity = market_protocol::keyfile::load_identity(&args.key)?;
    let options = VerifierOptions {
        market: args.market,
        data_dir: args.data,
        cache_bytes: args.cache_bytes,
        stake: args.stake,
        listen: args.listen,
        device: args.device,
        check_fault: args.check_fault,
    };
    tokio::runtime::Runtime::new()?.block_on(run(identity, options))
}
