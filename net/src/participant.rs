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

/// Dials `market` until a connection stands, waiting 250 ms, 500 ms, ... up to
/// [`MAX_BACKOFF`] between attempts, then introduces this participant with a signed
/// [`Hello`]. A refused hello is an error (retrying would not change it).
pub async fn join(
    net: &Net,
    market: &Multiaddr,
    identity: &Identity,
    role: Role,
    capabilities: &Capabilities,
    stake: u64,
    session: u64,
) -> anyhow::Result<Welcome> {
    let mut backoff = Duration::from_millis(250);
    let node = loop {
        match net.dial(market.clone()).await {
            Ok(peer) => break peer,
            Err(e) => {
                tracing::info!(%market, error = %e, retry_in = ?backoff, "cannot reach the market");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let node_account = account_of(&node)
        .ok_or_else(|| anyhow::anyhow!("the market's peer id {node} is not an ed25519 account"))?;
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
        Response::Refused { reason } => anyhow::bail!("the market refused us: {reason}"),
        other => anyhow::bail!("unexpected answer to hello: {other:?}"),
    }
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
