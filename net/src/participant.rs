//! What workers and verifiers share: joining a node (dial with backoff, signed hello), fetching
//! a task's input blobs into a local cache, and measuring what this machine can do.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use market_compute::BlobSource;
use market_protocol::{
    BlobId, Capabilities, Credits, Hash, Hello, Identity, Role, Signed, TaskSpec, Version,
};

use crate::peer::{account_of, Net};
use crate::transfer::{describe, fetch_file, FetchStats, TransferError};
use crate::wire::{Request, Response, Source};

/// What the node answered to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The node's peer id.
    pub node: PeerId,
    /// The participant's stake.
    pub stake: u64,
    /// The participant's balance.
    pub balance: u64,
}

/// Longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a hello did not lead to a welcome.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The node refused (retrying would not change it).
    #[error("the market refused us: {0}")]
    Refused(String),
    /// The connection failed on the way (try again).
    #[error(transparent)]
    Net(#[from] crate::peer::NetError),
    /// Signing the hello failed.
    #[error(transparent)]
    Signature(#[from] market_protocol::SignatureError),
}

/// The node's peer id, when the market address names it (`.../p2p/<id>`); the dial then checks
/// that the node holds that key.
pub fn market_peer(market: &Multiaddr) -> Option<PeerId> {
    market.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Dials `market` until a connection stands, waiting 250 ms, 500 ms, ... up to
/// [`MAX_BACKOFF`] between attempts. Returns the node's peer.
pub async fn dial_market(net: &Net, market: &Multiaddr) -> PeerId {
    let mut backoff = Duration::from_millis(250);
    loop {
        match net.dial(market.clone()).await {
            Ok(peer) => return peer,
            Err(e) => {
                tracing::info!(%market, error = %e, retry_in = ?backoff, "cannot reach the market");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Introduces this participant to `node` with a signed [`Hello`].
pub async fn hello(
    net: &Net,
    node: PeerId,
    identity: &Identity,
    role: Role,
    capabilities: &Capabilities,
    stake: u64,
    session: u64,
) -> Result<Welcome, HelloError> {
    let node_account = account_of(&node).ok_or_else(|| {
        HelloError::Refused(format!(
            "the market's peer id {node} is not an ed25519 account"
        ))
    })?;
    let hello = Hello {
        version: Version::CURRENT,
        account: identity.account(),
        node: node_account,
        role,
        capabilities: capabilities.clone(),
        stake: Credits(stake),
        session,
    };
    let hello = Signed::sign(hello, identity)?;
    match net.request(node, Request::Hello { hello }).await?.response {
        Response::Welcome { stake, balance, .. } => Ok(Welcome {
            node,
            stake,
            balance,
        }),
        Response::Refused { reason } => Err(HelloError::Refused(reason)),
        other => Err(HelloError::Refused(format!(
            "unexpected answer to hello: {other:?}"
        ))),
    }
}

/// Joins a market until it works or the node refuses: dials with backoff, reports the node's
/// peer through `dialed` (so requests from it are accepted from then on), and says hello; a
/// connection lost on the way starts over.
#[allow(clippy::too_many_arguments)]
pub async fn join(
    net: &Net,
    market: &Multiaddr,
    dialed: &tokio::sync::watch::Sender<Option<PeerId>>,
    identity: &Identity,
    role: Role,
    capabilities: &Capabilities,
    stake: u64,
    session: u64,
) -> Result<Welcome, HelloError> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let node = dial_market(net, market).await;
        dialed.send_replace(Some(node));
        match hello(net, node, identity, role, capabilities, stake, session).await {
            Err(HelloError::Net(e)) => {
                tracing::info!(error = %e, retry_in = ?backoff, "hello did not get through");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            other => return other,
        }
    }
}

/// A number that differs per process start (informational; it only has to differ, not be
/// secret); 53 bits, so it stays a safe integer in canonical JSON.
pub fn session_number() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) >> 11
}

/// Blobs kept in a directory, one file per id, each checked against its id when fetched.
#[derive(Debug, Clone)]
pub struct DirBlobs {
    dir: PathBuf,
}

impl DirBlobs {
    /// A cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Fetches every blob `task` reads from `node` that is not yet cached.
    pub async fn fetch_for(
        &self,
        net: &Net,
        node: PeerId,
        task: &TaskSpec,
    ) -> Result<FetchStats, TransferError> {
        let mut stats = FetchStats::default();
        for id in task.blobs() {
            let dest = self.path(&id);
            if dest.is_file() {
                continue;
            }
            let source = Source::Blob { id };
            let entry = describe(net, node, source.clone()).await?;
            let part = dest.with_extension("part");
            stats += fetch_file(net, node, &source, &entry, &part).await?;
            // Each chunk matched the manifest the node sent; the whole must match the id.
            let whole = hash_file(&part)?;
            if whole != id.0 {
                let _ = std::fs::remove_file(&part);
                return Err(TransferError::Refused(format!(
                    "blob {id} arrived as {whole}"
                )));
            }
            std::fs::rename(&part, &dest).map_err(|source| TransferError::Io {
                path: dest.clone(),
                source,
            })?;
        }
        Ok(stats)
    }
}

fn hash_file(path: &Path) -> Result<Hash, TransferError> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).map_err(|source| TransferError::Io {
        path: path.to_owned(),
        source,
    })?;
    std::io::copy(&mut f, &mut hasher).map_err(|source| TransferError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(Hash(*hasher.finalize().as_bytes()))
}

impl BlobSource for DirBlobs {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        std::fs::read(self.path(id)).ok()
    }
}

/// Measures this machine on the reference task (a few `repro` steps of the zoo's `gpt` on the
/// arithmetic language) and describes it.
pub fn measure_capabilities(device: &str) -> Capabilities {
    let probe = Identity::from_test_label("capability-probe");
    let mut task = market_protocol::fixtures::training_task(&probe, 1);
    if let market_protocol::Workload::Training(t) = &mut task.workload {
        t.steps = 4;
        t.checkpoint_interval = 4;
    }
    let steps_per_ksec = market_compute::TrainingJob::from_spec(&task, &market_compute::NoBlobs)
        .and_then(|job| {
            let start = Instant::now();
            let state = job.initial_state();
            job.run_segment(0, &state, |_, _| {})?;
            Ok(4_000_000 / start.elapsed().as_millis().max(1) as u64)
        })
        .unwrap_or(0);
    Capabilities {
        profiles: vec!["repro".into(), "native".into()],
        device: device.into(),
        memory_bytes: available_memory(),
        steps_per_ksec,
    }
}

fn available_memory() -> u64 {
    // Linux: MemAvailable from /proc/meminfo; elsewhere unknown (0).
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
