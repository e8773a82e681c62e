//! What workers and verifiers share: joining a node (dial with backoff, signed hello), fetching
//! a task's input blobs into a local cache, and measuring what this machine can do.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use libp2p::{Multiaddr, PeerId};
use market_compute::BlobSource;
use market_protocol::{
    BlobId, Capabilities, Credits, Hash, Hello, Identity, Role, Signed, TaskSpec, Version,
};

use crate::peer::{account_of, Net};
use crate::transfer::{check_entry_root, describe, fetch_file_reusing, FetchStats, TransferError};
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

/// Waits 250 ms, 500 ms, ... up to [`MAX_BACKOFF`] between attempts.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(250))
    }

    /// Logs why the attempt failed and waits before the next one.
    async fn wait(&mut self, what: &str, error: String) {
        tracing::info!(%error, retry_in = ?self.0, "{what}");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

/// Dials `market` until a connection stands, with [`Backoff`]. Returns the node's peer.
pub async fn dial_market(net: &Net, market: &Multiaddr) -> PeerId {
    let mut backoff = Backoff::new();
    loop {
        match net.dial(market.clone()).await {
            Ok(peer) => return peer,
            Err(e) => backoff.wait("cannot reach the market", e.to_string()).await,
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
    let mut backoff = Backoff::new();
    loop {
        let node = dial_market(net, market).await;
        dialed.send_replace(Some(node));
        match hello(net, node, identity, role, capabilities, stake, session).await {
            Err(HelloError::Net(e)) => {
                backoff
                    .wait("hello did not get through", e.to_string())
                    .await
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

/// Bytes of cached blobs a worker or verifier keeps by default (`--cache-bytes`).
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 30;

/// Blobs kept in a directory, one file per id, each checked against its id when fetched. The
/// cache is bounded: after each fetch, the least recently used blobs beyond its limit go (never
/// those of the task at hand), so a participant that serves many buyers does not fill its disk.
#[derive(Debug, Clone)]
pub struct DirBlobs {
    dir: PathBuf,
    max_bytes: u64,
}

impl DirBlobs {
    /// A cache in `dir`, holding [`DEFAULT_CACHE_BYTES`] at most.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_CACHE_BYTES,
        }
    }

    /// The same cache, holding `max_bytes` at most (besides the blobs of the task at hand).
    pub fn with_limit(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Marks the blobs in `keep` as just used, then removes the least recently used others
    /// until the cache fits its limit. Recency is the file's modification time (housekeeping
    /// only: nothing hashed or signed depends on it).
    fn evict_except(&self, keep: &[BlobId]) -> Result<(), TransferError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TransferError::Io { path, source }
        };
        let now = std::time::SystemTime::now();
        for id in keep {
            let path = self.path(id);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(now))
                .map_err(io(&path))?;
        }
        let (mut cached, mut total) = self.cached_files().map_err(io(&self.dir))?;
        cached.retain(|(_, _, path)| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            !keep.iter().any(|id| Some(id.to_string()) == name)
        });
        cached.sort();
        for (_, len, path) in cached {
            if total <= self.max_bytes {
                break;
            }
            match std::fs::remove_file(&path) {
                // Another job's eviction took it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.map_err(io(&path))?,
            }
            total -= len;
        }
        Ok(())
    }

    /// Every file the cache counts (blobs and kept tokens; not files being written), each with
    /// its last use and size, and their total size. A file another job removes or renames
    /// meanwhile is skipped.
    #[allow(clippy::type_complexity)]
    fn cached_files(&self) -> std::io::Result<(Vec<(std::time::SystemTime, u64, PathBuf)>, u64)> {
        let mut cached = Vec::new();
        let mut total = 0u64;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(".part") {
                continue;
            }
            let meta = match entry.metadata() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other?,
            };
            if !meta.is_file() {
                continue;
            }
            total += meta.len();
            cached.push((meta.modified()?, meta.len(), entry.path()));
        }
        Ok((cached, total))
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Where the bytes kept under `key` are ([`crate::derived::file_name`]: named by the key
    /// and this build, so a worker and a verifier of different builds sharing a data
    /// directory never read each other's tokens; `None` when nothing can be kept).
    fn derived_path(&self, key: &Hash) -> Option<PathBuf> {
        Some(self.dir.join(crate::derived::file_name(key)?))
    }

    /// Removes what earlier processes kept here besides blobs (a text's tokens, and part files
    /// of one that died writing): another build's files are never read (their names hold its
    /// build), so they would only take room. A worker or verifier calls it once when it starts.
    pub fn forget_derived(&self) -> anyhow::Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other.with_context(|| format!("reading {}", self.dir.display()))?,
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", self.dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Kept files, and part files a process died writing.
            if !name.contains(".derived") || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.with_context(|| format!("removing {}", entry.path().display()))?,
            }
        }
        Ok(())
    }

    /// Fetches every blob `task` reads from `node` that is not yet cached.
    pub async fn fetch_for(
        &self,
        net: &Net,
        node: PeerId,
        task: &TaskSpec,
    ) -> Result<FetchStats, TransferError> {
        self.fetch_for_run(net, node, task, &[], &[]).await
    }

    /// [`DirBlobs::fetch_for`], and the blobs in `extra` besides (a slot-round's start state),
    /// copying the chunks that the files `local` hold in the same place instead of fetching
    /// them ([`crate::transfer::fetch_file_reusing`]).
    pub async fn fetch_for_run(
        &self,
        net: &Net,
        node: PeerId,
        task: &TaskSpec,
        extra: &[BlobId],
        local: &[PathBuf],
    ) -> Result<FetchStats, TransferError> {
        let mut ids = task.blobs();
        ids.extend(
            extra
                .iter()
                .filter(|id| !ids.contains(id))
                .copied()
                .collect::<Vec<_>>(),
        );
        if ids.is_empty() {
            return Ok(FetchStats::default());
        }
        let _turn = cache_lock(&self.dir).lock_owned().await;
        let mut stats = FetchStats::default();
        for &id in &ids {
            let dest = self.path(&id);
            if dest.is_file() {
                continue;
            }
            let source = Source::Blob { id };
            let entry = describe(net, node, source.clone()).await?;
            // The id is the blob's blake3: an entry that does not make it is refused before
            // a byte is fetched.
            check_entry_root(&entry, &id.0)?;
            let part = dest.with_extension("part");
            // Local files are read only for the extra blobs (a start shares chunks with the
            // slot's last state; a dataset or model shares none).
            let local = if extra.contains(&id) { local } else { &[] };
            stats += fetch_file_reusing(net, node, &source, &entry, &part, local).await?;
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
        self.evict_except(&ids)?;
        Ok(stats)
    }
}

/// The lock that fetches into the cache in `dir` take turns on: two jobs may read the same
/// blob (a dataset shared by two audits), and both would otherwise write its `.part` file at
/// once. Keyed by directory, because a daemon makes a [`DirBlobs`] per job; a daemon has one
/// cache, so the map stays tiny.
fn cache_lock(dir: &Path) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    type Locks = std::collections::BTreeMap<PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>>;
    static LOCKS: std::sync::Mutex<Locks> = std::sync::Mutex::new(Locks::new());
    LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(dir.to_owned())
        .or_default()
        .clone()
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

    fn blob_len(&self, id: &BlobId) -> Option<u64> {
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// A text's tokens an earlier job of this build kept here (`NAME.derived`), checked by the
    /// job that reads them ([`crate::derived::read`]).
    fn derived(&self, key: &Hash, max_bytes: u64) -> Option<Vec<u8>> {
        crate::derived::read(&self.derived_path(key)?, max_bytes)
    }

    /// Kept only while the cache stays within its limit ([`crate::derived::write`]).
    fn keep_derived(&self, key: &Hash, bytes: &[u8]) {
        let Some(path) = self.derived_path(key) else {
            return;
        };
        let fits = self
            .cached_files()
            .is_ok_and(|(_, total)| total.saturating_add(bytes.len() as u64) <= self.max_bytes);
        if !fits {
            tracing::debug!(path = %path.display(), "derived bytes not kept: the cache is full");
            return;
        }
        crate::derived::write(&path, bytes);
    }
}

/// Measures this machine on the reference task (a few `repro` steps of the zoo's `gpt` on the
/// arithmetic language) and describes it: its memory available now, and the free space of the
/// file system holding `data_dir` (where a worker keeps inputs and bundles).
pub fn measure_capabilities(device: &str, data_dir: &std::path::Path) -> Capabilities {
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
    with_free_space(
        Capabilities {
            profiles: market_compute::backend::profiles_on(device)
                .into_iter()
                .map(|p| p.name().to_owned())
                .collect(),
            device: device.into(),
            memory_bytes: 0,
            disk_bytes: 0,
            steps_per_ksec,
        },
        data_dir,
    )
}

/// `capabilities` with the memory available now and the free space of `data_dir` now: what
/// changes as jobs come and go (the rest is measured once per process).
pub fn with_free_space(capabilities: Capabilities, data_dir: &std::path::Path) -> Capabilities {
    Capabilities {
        memory_bytes: available_memory(),
        // Unknown (unreadable) counts as none: a task is never sent to a disk that may be full.
        disk_bytes: fs2::available_space(data_dir).unwrap_or(0),
        ..capabilities
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

/// A worker's or verifier's standing with its node: joined or not, and the node's peer. The
/// daemons share its loop: join (again after every lost connection, ignoring the results of
/// attempts overtaken by a newer one), take requests only from the dialled node, watch gossiped
/// ledger heads.
#[derive(Debug)]
pub struct Membership {
    /// The network.
    pub net: Net,
    /// This participant's key.
    pub identity: Identity,
    /// The node's address.
    pub market: Multiaddr,
    /// Worker or verifier.
    pub role: Role,
    /// What it says it can do (memory and disk measured again before every hello).
    capabilities: std::sync::Mutex<Capabilities>,
    /// Its data directory (whose free space it offers).
    data_dir: PathBuf,
    /// A number per process start, sent in every hello.
    session: u64,
    /// The stake it holds.
    pub stake: u64,
    /// The node's peer while joined (hello answered).
    pub node: tokio::sync::watch::Sender<Option<PeerId>>,
    /// The node's peer as dialled: the only peer whose requests are taken.
    pub dialed: tokio::sync::watch::Sender<Option<PeerId>>,
    /// Take a reservation on the node's relay after joining, so other peers can reach this
    /// one behind NAT (done anyway once AutoNAT finds this peer private).
    pub relay: std::sync::atomic::AtomicBool,
}

impl Membership {
    /// A membership not yet joined.
    pub fn new(
        net: Net,
        identity: Identity,
        market: Multiaddr,
        role: Role,
        capabilities: Capabilities,
        data_dir: &Path,
        stake: u64,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            net,
            identity,
            market,
            role,
            capabilities: std::sync::Mutex::new(capabilities),
            data_dir: data_dir.to_owned(),
            session: session_number(),
            stake,
            node: tokio::sync::watch::channel(None).0,
            dialed: tokio::sync::watch::channel(None).0,
            relay: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Listens on the node's relay (`<market>/p2p-circuit`); the reservation lasts as long as
    /// the connection to the node.
    async fn take_relay_reservation(&self) {
        let circuit = self
            .market
            .clone()
            .with(libp2p::multiaddr::Protocol::P2pCircuit);
        match self.net.listen(circuit.clone()).await {
            Ok(()) => tracing::info!(%circuit, "reachable through the market's relay"),
            Err(e) => tracing::warn!(%circuit, error = %e, "no relay reservation"),
        }
    }

    /// Starts this participant's network (listening on `listen`), measures the machine on
    /// `device` with its data directory `data_dir`, and returns the membership, not yet
    /// joined, with the network's events.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        identity: &Identity,
        market: &Multiaddr,
        listen: Vec<Multiaddr>,
        role: Role,
        device: &str,
        data_dir: &std::path::Path,
        stake: u64,
    ) -> anyhow::Result<(
        std::sync::Arc<Self>,
        tokio::sync::mpsc::UnboundedReceiver<crate::Event>,
    )> {
        let (net, events) = Net::start(
            identity,
            crate::NetConfig {
                listen,
                ..crate::NetConfig::default()
            },
        )?;
        let (device, dir) = (device.to_owned(), data_dir.to_owned());
        let capabilities =
            tokio::task::spawn_blocking(move || measure_capabilities(&device, &dir)).await?;
        let member = Self::new(
            net,
            identity.clone(),
            market.clone(),
            role,
            capabilities,
            data_dir,
            stake,
        );
        Ok((member, events))
    }

    /// Measures memory and disk again (the rest stays as measured at start) and keeps them.
    async fn measure_free_space(&self) -> Capabilities {
        let (before, dir) = (self.capabilities(), self.data_dir.clone());
        let now = tokio::task::spawn_blocking(move || with_free_space(before.clone(), &dir))
            .await
            .unwrap_or_else(|_| self.capabilities());
        *self.capabilities.lock().unwrap_or_else(|e| e.into_inner()) = now.clone();
        now
    }

    /// What it offers now (as last measured).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Tells the node, if joined, what this machine offers now: a worker calls it when a job
    /// ends or its files go, so the node does not hand it a task its disk (filled by earlier
    /// bundles and cached inputs) or memory can no longer hold. A hello on the connection it
    /// already has; the node keeps its state per account.
    pub async fn refresh(&self) {
        let Some(node) = self.node() else {
            return;
        };
        let capabilities = self.measure_free_space().await;
        if let Err(e) = hello(
            &self.net,
            node,
            &self.identity,
            self.role,
            &capabilities,
            self.stake,
            self.session,
        )
        .await
        {
            tracing::warn!(error = %e, "could not tell the node what this machine offers now");
        }
    }

    /// The node, if joined now.
    pub fn node(&self) -> Option<PeerId> {
        *self.node.borrow()
    }

    /// Waits until joined and returns the node.
    pub async fn connected(&self) -> PeerId {
        let mut rx = self.node.subscribe();
        loop {
            if let Some(p) = *rx.borrow_and_update() {
                return p;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Keeps this participant joined until the network stops (`Ok`) or the node refuses it
    /// (`Err`). Each welcome goes to `on_welcome`, each request from the node to `on_request`;
    /// requests from anyone else are refused here.
    pub async fn run(
        self: &std::sync::Arc<Self>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<crate::Event>,
        mut on_welcome: impl FnMut(&Welcome),
        mut on_request: impl FnMut(PeerId, Request, crate::Responder),
    ) -> anyhow::Result<()> {
        let (joined_tx, mut joined_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut generation = 0u64;
        let mut heads = crate::heads::HeadWatch::default();
        let start_join = |gen: u64| {
            let (me, tx) = (self.clone(), joined_tx.clone());
            tokio::spawn(async move {
                let capabilities = me.measure_free_space().await;
                let r = join(
                    &me.net,
                    &me.market,
                    &me.dialed,
                    &me.identity,
                    me.role,
                    &capabilities,
                    me.stake,
                    me.session,
                )
                .await;
                let _ = tx.send((gen, r));
            });
        };
        start_join(generation);
        loop {
            tokio::select! {
                joined = joined_rx.recv() => match joined {
                    Some((gen, _)) if gen != generation => {}
                    Some((_, Ok(welcome))) => {
                        tracing::info!(node = %welcome.node, role = ?self.role, stake = welcome.stake, balance = welcome.balance, "joined the market");
                        on_welcome(&welcome);
                        self.node.send_replace(Some(welcome.node));
                        if self.relay.load(std::sync::atomic::Ordering::Relaxed) {
                            self.take_relay_reservation().await;
                        }
                    }
                    Some((_, Err(e))) => return Err(e.into()),
                    None => return Ok(()),
                },
                event = events.recv() => match event {
                    None => return Ok(()),
                    Some(crate::Event::Request { peer, request, responder }) => {
                        if Some(peer) == *self.dialed.borrow() {
                            on_request(peer, request, responder);
                        } else {
                            responder.send(crate::Reply::refused("not my market node"));
                        }
                    }
                    Some(crate::Event::Disconnected { peer }) if Some(peer) == *self.dialed.borrow() => {
                        tracing::warn!(%peer, "lost the market; reconnecting");
                        self.node.send_replace(None);
                        self.dialed.send_replace(None);
                        generation += 1;
                        start_join(generation);
                    }
                    // Only its own market's heads: others cannot fill the watch and push
                    // the market's ledger out of it.
                    Some(crate::Event::Gossip { topic, data, source })
                        if source.is_some() && source == self.node() =>
                    {
                        crate::heads::log_equivocation(&mut heads, &topic, &data, source);
                    }
                    Some(crate::Event::Reachability { status }) if status == "private" => {
                        // Behind NAT: be reachable through the node from now on.
                        if !self.relay.swap(true, std::sync::atomic::Ordering::Relaxed)
                            && self.node().is_some()
                        {
                            self.take_relay_reservation().await;
                        }
                    }
                    Some(_) => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a job keeps in a blob cache is read back whole by the next, never past the reader's
    /// limit, is evicted with the blobs, and is forgotten when a daemon starts.
    #[test]
    fn derived_bytes_are_kept_bounded_evicted_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = DirBlobs::new(dir.path()).with_limit(1_000);
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        assert_eq!(blobs.derived(&a, 1 << 20), None);
        blobs.keep_derived(&a, b"tokens of a");
        blobs.keep_derived(&b, &[7; 100]);
        assert_eq!(
            blobs.derived(&a, 1 << 20).as_deref(),
            Some(&b"tokens of a"[..])
        );
        assert_eq!(blobs.derived(&b, 99), None, "over the reader's limit");
        assert_eq!(blobs.derived(&b, 100), Some(vec![7; 100]));
        // Kept again: replaced whole, no part file left.
        blobs.keep_derived(&a, b"again");
        assert_eq!(blobs.derived(&a, 1 << 20).as_deref(), Some(&b"again"[..]));
        let names = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert!(
            names().iter().all(|n| n.ends_with(".derived")),
            "{:?}",
            names()
        );
        // A blob stays where a daemon forgets what was derived.
        let blob = BlobId::of(b"a blob");
        std::fs::write(blobs.path(&blob), b"a blob").unwrap();
        blobs.forget_derived().unwrap();
        assert_eq!(names(), vec![blob.to_string()]);
        // Counted against the cache's limit like a blob, and evicted like one.
        blobs.keep_derived(&a, b"tokens of a");
        assert_eq!(names().len(), 2);
        DirBlobs::new(dir.path())
            .with_limit(0)
            .evict_except(&[blob])
            .unwrap();
        assert_eq!(names(), vec![blob.to_string()]);
        // Not kept at all when it would take the cache past its limit.
        let small = DirBlobs::new(dir.path()).with_limit(50);
        small.keep_derived(&a, &[1; 100]);
        assert_eq!(small.derived(&a, 1 << 20), None);
        assert_eq!(names(), vec![blob.to_string()]);
        // A part file a process died writing is forgotten too.
        let orphan = dir
            .path()
            .join(format!("{}.derived.7.0.part", Hash::of(b"c")));
        std::fs::write(&orphan, b"half").unwrap();
        blobs.forget_derived().unwrap();
        assert_eq!(names(), vec![blob.to_string()]);
        // A cache directory that does not exist yet has nothing to forget.
        DirBlobs::new(dir.path().join("none"))
            .forget_derived()
            .unwrap();
    }
}
