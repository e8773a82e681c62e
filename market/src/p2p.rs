//! The networked [`Dispatch`]: workers and verifiers are separate processes that joined this
//! node over libp2p (see `market-net`). The engine's blocking calls become requests on the
//! participants' connections: assign and wait for the commitment (riding out a disconnect for
//! a grace period, re-assigning the same job when the worker comes back so it resumes), fetch
//! the bundle in verified chunks, hand audits to verifiers and wait for verdicts with a
//! timeout, and ask workers to open per-step hashes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use market_compute::bundle::Bundle;
use market_compute::BlobSource;
use market_net::heads::HeadWatch;
use market_net::transfer::{
    bundle_manifest, check_bundle_path, check_manifest, chunk_reply, describe_reply, fetch_bundle,
    fetch_file, fetch_file_tail, FetchStats, TransferError,
};
use market_net::wire::{
    AuditJob, FileEntry, Manifest, Reply, Request, Response, Source, CHUNK_BYTES,
};
use market_net::{account_of, Event, Net, PeerId};
use market_protocol::{
    message_id, AccountId, BlobId, Capabilities, Commitment, ExecutionProfile, Role, Signed,
    SlotRound, TaskId, TaskSpec, Verdict,
};
use market_worker::Progress;
use tokio::sync::{mpsc, oneshot};

use crate::dispatch::{AuditRequest, Dispatch};
use crate::engine::Node;
use crate::partial::{Origin, PartialError, PartialMeta};

/// Timeouts and limits of the networked dispatch.
#[derive(Debug, Clone)]
pub struct P2pOptions {
    /// How long a worker that lost its connection mid-task may take to come back before the
    /// task goes to another worker.
    pub run_grace: Duration,
    /// How long a verifier may take to return a verdict before another is drawn.
    pub audit_timeout: Duration,
    /// Largest bundle the node fetches from a worker.
    pub max_bundle_bytes: u64,
    /// Longest a worker may take from assignment to its commitment.
    pub max_run: Duration,
    /// How long an unreachable worker has to serve an audit's openings before they count as
    /// withheld (a connected worker that refuses has `run_grace`).
    pub opening_wait: Duration,
    /// Slowest bundle transfer accepted (bytes per second; the transfer also gets a minute).
    pub min_transfer_rate: u64,
    /// Most tasks running at once; 0 for one per worker with no other limit.
    pub max_parallel_tasks: usize,
    /// How long the node tries to fetch the optimizer moments of a pooled slot that moves
    /// from the worker that keeps them before the slot starts its round with zero moments
    /// (`run_grace` by default: a worker away that long has lost its run too, and the pool
    /// waits meanwhile).
    pub state_wait: Duration,
}

impl Default for P2pOptions {
    fn default() -> Self {
        Self::from(&crate::config::NetworkConfig::default())
    }
}

impl From<&crate::config::NetworkConfig> for P2pOptions {
    fn from(c: &crate::config::NetworkConfig) -> Self {
        Self {
            run_grace: Duration::from_secs(c.run_grace_secs),
            audit_timeout: Duration::from_secs(c.audit_timeout_secs),
            max_bundle_bytes: c.max_bundle_bytes,
            max_run: Duration::from_secs(c.max_run_secs),
            opening_wait: Duration::from_secs(c.opening_wait_secs),
            min_transfer_rate: c.min_transfer_bytes_per_sec,
            max_parallel_tasks: c.max_parallel_tasks,
            state_wait: Duration::from_secs(c.run_grace_secs),
        }
    }
}

/// A participant that said hello.
#[derive(Debug, Clone)]
pub struct Participant {
    /// Its peer.
    pub peer: PeerId,
    /// Worker or verifier.
    pub role: Role,
    /// What it says it can do.
    pub capabilities: Capabilities,
    /// Whether it is connected now.
    pub connected: bool,
    /// When it first joined, as a count of earlier joins (ties between equally used workers
    /// go to the earliest).
    pub joined: u64,
    /// Hellos accepted from it: one per connection, and one each time it tells what it
    /// offers now (a worker does when a job ends or its files go).
    pub hellos: u32,
}

#[derive(Debug)]
enum RunEvent {
    Progress(Progress),
    Done(Box<Signed<Commitment>>, Manifest),
    Failed(String),
    Disconnected,
    Reconnected(PeerId),
}

struct RunSlot {
    worker: AccountId,
    task_id: TaskId,
    blobs: Vec<BlobId>,
    events: mpsc::UnboundedSender<RunEvent>,
    /// A `Done` or `Failed` was taken: nothing more is accepted for this job.
    closed: bool,
}

struct AuditSlot {
    verifier: AccountId,
    task_id: TaskId,
    dir: PathBuf,
    /// The bundle files the verifier's challenge opens: all it may read.
    openings: Vec<String>,
    blobs: Vec<BlobId>,
    verdict: Option<oneshot::Sender<Signed<Verdict>>>,
}

/// A served answer a verifier was asked to check.
struct CheckSlot {
    verifier: AccountId,
    /// The weights it may read while checking.
    weights: BlobId,
    check: Option<oneshot::Sender<Signed<market_protocol::AnswerCheck>>>,
}

#[derive(Default)]
struct State {
    participants: BTreeMap<AccountId, Participant>,
    /// First joins so far (the next participant's `joined`).
    joins: u64,
    runs: HashMap<u64, RunSlot>,
    audits: HashMap<u64, AuditSlot>,
    checks: HashMap<u64, CheckSlot>,
    /// Runs the node gave up on, by job, with their worker, task and why: the worker is sent
    /// `cancel` at once if connected, again when it says hello, and again in answer to any
    /// report for the job, so a worker that was away when the node gave up stops too. Only
    /// the most recent [`REMEMBERED_RUNS`] are kept (job numbers grow, so the smallest is the
    /// oldest).
    abandoned: BTreeMap<u64, (AccountId, TaskId, String)>,
}

/// Where the files of a result bundle come from: the worker's job and the manifest it sent
/// with its commitment. Kept in the node's bundle directory as [`SOURCE_FILE`] (a name no
/// bundle path takes, so it is never served), so that the openings an audit needs are fetched
/// when it needs them, after a restart too.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RunSource {
    worker: AccountId,
    task_id: TaskId,
    job: u64,
    manifest: Manifest,
}

/// How one try at fetching openings from a worker went.
enum OpeningTry {
    /// Done: the bytes that moved.
    Fetched(u64),
    /// The worker, connected, refused or sent bytes that failed their hashes.
    Refused(String),
    /// The worker could not be reached, or the transfer broke or timed out.
    Away(String),
    /// The node's own files failed it.
    Local(anyhow::Error),
}

/// Whether `path` is a bundle file the node writes itself (the task it assigned and the
/// commitment it verified): never fetched from the worker, whose versions are never read.
fn written_by_node(path: &str) -> bool {
    matches!(path, "task.json" | "commitment.json")
}

/// The file in a bundle directory that names its [`RunSource`].
const SOURCE_FILE: &str = "source.json";

impl RunSource {
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{SOURCE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, dir.join(SOURCE_FILE))?;
        Ok(())
    }

    /// The source of the bundle in `dir`, or `None` for a bundle that is whole already.
    fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(dir.join(SOURCE_FILE)) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The files of a result the node fetches as soon as it is committed: what settling it reads.
/// A training run's final checkpoint and leaves (the weights are derived from the final state,
/// every other checkpoint is fetched only if a challenge opens it), or every output item of an
/// inference run (the buyer's outputs). The node writes the task and commitment itself.
fn fetched_at_commit(task: &TaskSpec, commitment: &Commitment, path: &str) -> bool {
    match &task.workload {
        market_protocol::Workload::Training(_) => {
            path == "leaves.json"
                || path == "loss.json"
                || path == format!("checkpoints/{:06}.st", commitment.segments)
        }
        market_protocol::Workload::Inference(_) => !written_by_node(path),
    }
}

/// What a peer may read: a file, or a pooled slot's state the node holds in part (its
/// entry whole, its chunks from the parameters on; [`crate::partial`]).
enum Readable {
    File(PathBuf, String),
    Partial(BlobId),
}

/// For a slot-round's commitment: the entry of its final state in `manifest` and the first
/// chunk holding its parameters, when that is not the first (a state of one chunk, or whose
/// parameters begin in its first chunk, is fetched whole).
fn final_tail_plan(
    task: &TaskSpec,
    commitment: &Commitment,
    manifest: &Manifest,
) -> Option<(FileEntry, u32)> {
    let market_protocol::Workload::Training(training) = &task.workload else {
        return None;
    };
    let layout = market_compute::zoo::ModelConfig::from_spec(&training.model)
        .ok()?
        .layout();
    let path = format!("checkpoints/{:06}.st", commitment.segments);
    let entry = manifest.files.iter().find(|f| f.path == path)?;
    let span = market_compute::state::param_span(&layout, entry.size)?;
    let from_chunk = u32::try_from(span.start / u64::from(CHUNK_BYTES)).ok()?;
    (from_chunk > 0).then(|| (entry.clone(), from_chunk))
}

/// Whether `entry` describes the final state `commitment` binds: the bundle's leaves in `dir`
/// make the committed root, the last is the committed final state, and the entry's chunks
/// combine into it.
fn final_entry_is_committed(dir: &Path, commitment: &Commitment, entry: &FileEntry) -> bool {
    let Ok(leaves) = Bundle::at(dir).read_leaves() else {
        return false;
    };
    market_protocol::MerkleTree::new(&leaves).root() == commitment.root
        && leaves.last() == Some(&commitment.final_state_hash)
        && market_net::transfer::check_entry_root(entry, &commitment.final_state_hash.0).is_ok()
}

/// Disconnected participants remembered (for the operator's view and the order of first joins).
/// Beyond this the earliest-joined disconnected ones are forgotten, so peers coming and going
/// with fresh keys cannot grow the node's memory without bound (connected ones are bounded by
/// the connection limits).
const REMEMBERED_DISCONNECTED: usize = 4096;

impl State {
    /// Forgets the earliest-joined disconnected participants beyond
    /// [`REMEMBERED_DISCONNECTED`], except those with a run still assigned.
    fn forget_departed(&mut self) {
        let mut departed: Vec<(u64, AccountId)> = self
            .participants
            .iter()
            .filter(|(a, p)| !p.connected && !self.runs.values().any(|r| r.worker == **a))
            .map(|(a, p)| (p.joined, *a))
            .collect();
        let excess = departed.len().saturating_sub(REMEMBERED_DISCONNECTED);
        if excess == 0 {
            return;
        }
        departed.sort_unstable();
        for (_, account) in departed.into_iter().take(excess) {
            self.participants.remove(&account);
        }
    }
}

/// Longest reason sent in a `cancel`, in bytes.
const MAX_CANCEL_REASON: usize = 512;

/// Finished runs and timings remembered (a long-running node must not grow without bound; a
/// run's audits happen right after it).
const REMEMBERED_RUNS: usize = 1024;

/// Where the time of one task went, as the node saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTiming {
    /// The task.
    pub task_id: Option<TaskId>,
    /// When it was assigned.
    pub assigned_at: Instant,
    /// From assignment to the worker's commitment.
    pub execution: Duration,
    /// Fetching the bundle from the worker.
    pub transfer: Duration,
    /// Bytes fetched when the result was committed.
    pub bytes: u64,
    /// Bytes fetched later, for the openings of the audits' challenges.
    pub opened: u64,
    /// The bundle directory.
    pub dir: PathBuf,
    /// Audits (each verifier, fetch and re-execution together).
    pub audits: Vec<Duration>,
}

fn serving_reply(r: Result<(), String>) -> Reply {
    match r {
        Ok(()) => Reply::of(Response::Ok),
        Err(e) => Reply::refused(e),
    }
}

impl crate::serving::ServeLink for P2pDispatch {
    fn generate(
        &self,
        worker: AccountId,
        request: u64,
        task: TaskSpec,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let net = self.net.clone();
        let peer = self.peer_of(&worker);
        Box::pin(async move {
            let reply = net
                .request(peer?, Request::Generate { request, task })
                .await?;
            match reply.response {
                Response::Ok => Ok(()),
                Response::Refused { reason } => anyhow::bail!("refused: {reason}"),
                other => anyhow::bail!("unexpected answer {other:?}"),
            }
        })
    }

    fn check_answer(
        &self,
        verifier: AccountId,
        mut job: market_net::wire::AnswerCheckJob,
        timeout: Duration,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = anyhow::Result<Signed<market_protocol::AnswerCheck>>>
                + Send,
        >,
    > {
        let net = self.net.clone();
        let peer = self.peer_of(&verifier);
        let state = self.state.clone();
        // Random, not from the counter: consecutive numbers would tell a verifier which two
        // checks were sent together (a real one and its ringer).
        let number = job_seed();
        Box::pin(async move {
            let peer = peer?;
            job.job = number?;
            let number = job.job;
            if lock(&state).checks.contains_key(&number) {
                anyhow::bail!("a check number drawn twice");
            }
            let weights = match &job.request.workload {
                market_protocol::Workload::Inference(inf) => inf.weights,
                _ => None,
            }
            .ok_or_else(|| anyhow::anyhow!("a served request names no weights"))?;
            let (tx, rx) = oneshot::channel();
            lock(&state).checks.insert(
                number,
                CheckSlot {
                    verifier,
                    weights,
                    check: Some(tx),
                },
            );
            let result = async {
                let reply = net
                    .request(peer, Request::CheckAnswer { job: Box::new(job) })
                    .await?;
                match reply.response {
                    Response::Ok => {}
                    Response::Refused { reason } => anyhow::bail!("refused: {reason}"),
                    other => anyhow::bail!("unexpected answer {other:?}"),
                }
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(_)) => anyhow::bail!("the check was dropped"),
                    Err(_) => Err(crate::serving::SilentVerifier { verifier, timeout }.into()),
                }
            }
            .await;
            lock(&state).checks.remove(&number);
            result
        })
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The libp2p dispatch.
pub struct P2pDispatch {
    net: Net,
    rt: tokio::runtime::Handle,
    options: P2pOptions,
    /// Shared with the tasks that send cancels (they forget a job its worker acknowledged).
    state: Arc<Mutex<State>>,
    next_job: AtomicU64,
    timings: Mutex<Vec<RunTiming>>,
    /// Bytes of blob chunks sent to participants (what their fetches of datasets, models and
    /// pooled start states moved over their links).
    blob_bytes_sent: AtomicU64,
    /// When the node last refused each worker a chunk of a start it holds in part (the chunk is
    /// in the slot's kept final state): what a claim that the kept state is gone must follow.
    kept_chunk_refusals: Mutex<BTreeMap<(AccountId, BlobId), Instant>>,
}

/// How long after the node refused a worker a chunk of a start held in part that worker's
/// report that it lost its kept state is taken (it reports at once).
const LOST_STATE_CLAIM_WINDOW: Duration = Duration::from_secs(120);

/// Refusals remembered for [`P2pDispatch::kept_chunk_refusals`]; the oldest go first.
const REMEMBERED_REFUSALS: usize = 1024;

impl std::fmt::Debug for P2pDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2pDispatch")
            .field("peer", &self.net.peer_id())
            .finish_non_exhaustive()
    }
}

fn job_seed() -> anyhow::Result<u64> {
    // Job numbers only need to differ from those of an earlier run of this node (a worker
    // keeps its job directories across restarts), so they start at a random point.
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness for job numbers: {e}"))?;
    Ok(u64::from_le_bytes(b) >> 16)
}

impl P2pDispatch {
    /// A dispatch over `net`; call [`P2pDispatch::serve`] once the node exists.
    pub fn new(net: Net, options: P2pOptions) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            net,
            rt: tokio::runtime::Handle::current(),
            options,
            state: Arc::new(Mutex::new(State::default())),
            next_job: AtomicU64::new(job_seed()?),
            timings: Mutex::new(Vec::new()),
            blob_bytes_sent: AtomicU64::new(0),
            kept_chunk_refusals: Mutex::new(BTreeMap::new()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The network handle.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Participants that said hello, connected or not.
    pub fn participants(&self) -> BTreeMap<AccountId, Participant> {
        self.state().participants.clone()
    }

    /// Bytes of blob chunks sent to participants so far.
    pub fn blob_bytes_sent(&self) -> u64 {
        self.blob_bytes_sent.load(Ordering::Relaxed)
    }

    /// Per-task timings so far.
    pub fn timings(&self) -> Vec<RunTiming> {
        self.timings.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn connected(&self, role: Role) -> Vec<AccountId> {
        let st = self.state();
        let mut found: Vec<(u64, AccountId)> = st
            .participants
            .iter()
            .filter(|(_, p)| p.role == role && p.connected)
            .map(|(a, p)| (p.joined, *a))
            .collect();
        found.sort();
        found.into_iter().map(|(_, a)| a).collect()
    }

    fn is_worker(&self, account: &AccountId) -> bool {
        self.state()
            .participants
            .get(account)
            .is_some_and(|p| p.connected && p.role == Role::Worker)
    }

    fn peer_of(&self, account: &AccountId) -> anyhow::Result<PeerId> {
        match self.state().participants.get(account) {
            Some(p) if p.connected => Ok(p.peer),
            Some(_) => anyhow::bail!("{account} is not connected"),
            None => anyhow::bail!("{account} never joined"),
        }
    }

    async fn ask_ok(&self, peer: PeerId, request: Request) -> anyhow::Result<()> {
        match self.net.request(peer, request).await?.response {
            Response::Ok => Ok(()),
            Response::Refused { reason } => anyhow::bail!("refused: {reason}"),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }

    /// Gives up on `job`: remembers it as abandoned and tells its worker to stop (see
    /// [`State::abandoned`]).
    fn abandon(&self, worker: AccountId, task_id: TaskId, job: u64, mut reason: String) {
        // An error chain can be long; the worker only logs it.
        if reason.len() > MAX_CANCEL_REASON {
            let mut end = MAX_CANCEL_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        let mut st = self.state();
        while st.abandoned.len() >= REMEMBERED_RUNS {
            st.abandoned.pop_first();
        }
        st.abandoned.insert(job, (worker, task_id, reason.clone()));
        drop(st);
        self.send_cancel(worker, task_id, job, reason);
    }

    /// Sends `cancel` for `job` to `worker` if it is connected now, without waiting for the
    /// answer (a worker not connected is told when it says hello again). Once the worker
    /// answers `ok` the job is forgotten: it was told, and is not told again on every hello.
    fn send_cancel(&self, worker: AccountId, task_id: TaskId, job: u64, reason: String) {
        let Ok(peer) = self.peer_of(&worker) else {
            return;
        };
        let (net, state) = (self.net.clone(), self.state.clone());
        self.rt.spawn(async move {
            let request = Request::Cancel {
                task_id,
                job,
                reason,
            };
            match net.request(peer, request).await.map(|r| r.response) {
                Ok(Response::Ok) => {
                    state
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .abandoned
                        .remove(&job);
                }
                other => tracing::debug!(%worker, job, answer = ?other, "cancel not taken"),
            }
        });
    }

    /// Answers the network: hellos, progress, results, verdicts and fetches. Runs until the
    /// network stops. Also publishes task events and signed ledger heads on gossip.
    pub fn serve(self: &Arc<Self>, node: Arc<Node>, mut events: mpsc::UnboundedReceiver<Event>) {
        node.serving.set_link(self.clone());
        tokio::spawn(crate::serving::audit::run(node.clone()));
        let me = self.clone();
        let n = node.clone();
        tokio::spawn(async move {
            let mut heads = HeadWatch::default();
            while let Some(event) = events.recv().await {
                me.on_event(&n, event, &mut heads).await;
            }
        });
        let net = self.net.clone();
        let me_notify = self.clone();
        tokio::spawn(async move {
            let mut tasks = node.events.subscribe();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut ticks = 0u64;
            let mut last_seq = None;
            loop {
                tokio::select! {
                    ev = tasks.recv() => match ev {
                        Ok(line) => {
                            me_notify.notify_settled(&node, &line);
                            let _ = net.publish(market_net::wire::TOPIC_TASKS, line.into_bytes());
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    },
                    _ = tick.tick() => {
                        // A new head at once; the same head again now and then, for peers
                        // that joined since.
                        ticks += 1;
                        let seq = node.ledger.head().seq;
                        if last_seq != Some(seq) || ticks % 5 == 0 {
                            if let Ok(head) = node.ledger.sign_head(&node.operator) {
                                if let Ok(bytes) = serde_json::to_vec(&head) {
                                    let _ = net.publish(market_net::wire::TOPIC_HEADS, bytes);
                                    last_seq = Some(seq);
                                }
                            }
                        }
                    }
                }
            }
        });
    }

    async fn on_event(self: &Arc<Self>, node: &Arc<Node>, event: Event, heads: &mut HeadWatch) {
        match event {
            Event::Request {
                peer,
                request,
                responder,
            } => {
                // Each request is answered in its own task, so a slow one (a hello's ledger
                // write, a big file) never holds up the others.
                let (me, node) = (self.clone(), node.clone());
                tokio::spawn(async move {
                    let reply = match account_of(&peer) {
                        Some(account) => me.on_request(&node, peer, account, request).await,
                        None => Reply::refused("peer ids must be ed25519 accounts"),
                    };
                    responder.send(reply);
                });
            }
            Event::Disconnected { peer } => {
                let Some(account) = account_of(&peer) else {
                    return;
                };
                let mut st = self.state();
                if let Some(p) = st.participants.get_mut(&account) {
                    p.connected = false;
                    tracing::info!(%account, role = ?p.role, "participant disconnected");
                }
                for run in st.runs.values().filter(|r| r.worker == account) {
                    let _ = run.events.send(RunEvent::Disconnected);
                }
                st.forget_departed();
                drop(st);
                node.serving.worker_gone(&account);
            }
            Event::Misbehaved { peer, reason } => {
                tracing::warn!(%peer, %reason, "peer banned for a malformed message");
                if let Some(account) = account_of(&peer) {
                    if let Some(p) = self.state().participants.get_mut(&account) {
                        p.connected = false;
                    }
                }
            }
            Event::Gossip {
                topic,
                data,
                source,
            } if topic == market_net::wire::TOPIC_HEADS => {
                if let market_net::heads::HeadCheck::Equivocation { ledger, seq, .. } =
                    heads.observe(&data, source)
                {
                    tracing::error!(%ledger, seq, "a node signed two different ledger heads");
                }
            }
            _ => {}
        }
    }

    async fn on_request(
        &self,
        node: &Arc<Node>,
        peer: PeerId,
        account: AccountId,
        request: Request,
    ) -> Reply {
        match request {
            Request::Hello { hello } => self.on_hello(node, peer, account, hello).await,
            Request::Progress {
                task_id,
                job,
                done,
                total,
                loss,
            } => {
                if done > total {
                    return Reply::refused("progress past the end");
                }
                self.to_run(account, task_id, job, || {
                    Ok(RunEvent::Progress(Progress {
                        done,
                        total,
                        loss: loss.to_f32(),
                    }))
                })
            }
            Request::Failed {
                task_id,
                job,
                reason,
            } => self.to_run(account, task_id, job, || Ok(RunEvent::Failed(reason))),
            Request::Done {
                task_id,
                job,
                commitment,
                manifest,
            } => {
                let max = self.options.max_bundle_bytes;
                self.to_run(account, task_id, job, || {
                    let body = commitment
                        .verify()
                        .map_err(|e| format!("the commitment's signature: {e}"))?;
                    if body.worker != account {
                        return Err("the commitment names another worker".into());
                    }
                    if body.task_id != task_id {
                        return Err("the commitment is for another task".into());
                    }
                    check_manifest(&manifest).map_err(|e| e.to_string())?;
                    if manifest.bytes() > max {
                        return Err(format!(
                            "bundle of {} bytes is over {max}",
                            manifest.bytes()
                        ));
                    }
                    Ok(RunEvent::Done(Box::new(commitment), manifest))
                })
            }
            Request::Verdict {
                task_id,
                job,
                verdict,
            } => {
                let mut st = self.state();
                let Some(slot) = st.audits.get_mut(&job) else {
                    return Reply::refused("no such audit");
                };
                if slot.verifier != account || slot.task_id != task_id {
                    return Reply::refused("not your audit");
                }
                match verdict.verify() {
                    Ok(v) if v.verifier == account => {}
                    Ok(_) => return Reply::refused("the verdict is signed for another verifier"),
                    Err(e) => return Reply::refused(format!("the verdict's signature: {e}")),
                }
                match slot.verdict.take() {
                    Some(tx) => {
                        let _ = tx.send(verdict);
                        Reply::of(Response::Ok)
                    }
                    None => Reply::refused("verdict already received"),
                }
            }
            Request::Serving { offers } => {
                if !self.is_worker(&account) {
                    return Reply::refused("only a joined worker serves models");
                }
                let node = node.clone();
                let offered = tokio::task::spawn_blocking(move || {
                    node.serving
                        .offer(account, offers, |id| node.blobs.read(id))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match offered {
                    Ok(()) => Reply::of(Response::Ok),
                    Err(e) => Reply::refused(e),
                }
            }
            Request::Text { request, seq, text } => {
                serving_reply(node.serving.on_text(&account, request, seq, text))
            }
            Request::Answered {
                request,
                answer,
                record,
            } => serving_reply(node.serving.on_answered(&account, request, answer, record)),
            Request::Unanswered { request, reason } => {
                serving_reply(node.serving.on_unanswered(&account, request, reason))
            }
            Request::AnswerChecked { job, check } => {
                let mut st = self.state();
                let Some(slot) = st.checks.get_mut(&job) else {
                    return Reply::refused("no such check");
                };
                if slot.verifier != account {
                    return Reply::refused("not your check");
                }
                match check.verify() {
                    Ok(c) if c.verifier == account => {}
                    Ok(_) => return Reply::refused("the check is signed for another verifier"),
                    Err(e) => return Reply::refused(format!("the check's signature: {e}")),
                }
                match slot.check.take() {
                    Some(tx) => {
                        let _ = tx.send(check);
                        Reply::of(Response::Ok)
                    }
                    None => Reply::refused("check already received"),
                }
            }
            // File work runs on the blocking pool, never on the task answering the network.
            Request::Describe { source } => match self.readable(&account, &source, node) {
                Ok(Readable::File(path, name)) => {
                    tokio::task::spawn_blocking(move || describe_reply(&path, &name))
                        .await
                        .unwrap_or_else(|e| Reply::refused(e.to_string()))
                }
                Ok(Readable::Partial(id)) => match node.blobs.partial().meta(&id) {
                    Some(meta) => Reply::of(Response::File { entry: meta.entry }),
                    None => Reply::refused(format!("blob {id} is gone")),
                },
                Err(e) => Reply::refused(e),
            },
            Request::Fetch { source, chunk } => match self.readable(&account, &source, node) {
                Ok(readable) => {
                    let partial = node.blobs.partial().clone();
                    let (reply, kept_elsewhere) =
                        tokio::task::spawn_blocking(move || match readable {
                            Readable::File(path, _) => (chunk_reply(&path, chunk), None),
                            Readable::Partial(id) => match partial.chunk(&id, chunk) {
                                Ok(payload) => (
                                    Reply {
                                        response: Response::Chunk,
                                        payload,
                                    },
                                    None,
                                ),
                                Err(e @ PartialError::NotHeld { .. }) => {
                                    (Reply::refused(e.to_string()), Some(id))
                                }
                                Err(e) => (Reply::refused(e.to_string()), None),
                            },
                        })
                        .await
                        .unwrap_or_else(|e| (Reply::refused(e.to_string()), None));
                    if let Some(id) = kept_elsewhere {
                        self.note_kept_chunk_refusal(account, id);
                    }
                    if matches!(source, Source::Blob { .. }) {
                        self.blob_bytes_sent
                            .fetch_add(reply.payload.len() as u64, Ordering::Relaxed);
                    }
                    reply
                }
                Err(e) => Reply::refused(e),
            },
            other => Reply::refused(format!("a node does not answer {}", other.name())),
        }
    }

    /// Tells the worker of a task that just settled its balance (for its status line).
    fn notify_settled(&self, node: &Node, event_line: &str) {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(event_line) else {
            return;
        };
        if ev["state"]["state"] != "settled" && ev["state"] != "settled" {
            return;
        }
        let Some(task_id) = ev["task"].as_str().and_then(|t| t.parse::<TaskId>().ok()) else {
            return;
        };
        let Ok(Some(t)) = node.store.task(&task_id) else {
            return;
        };
        let Some(worker) = t.attempts.iter().find(|a| a.accepted).map(|a| a.worker) else {
            return;
        };
        let Ok(peer) = self.peer_of(&worker) else {
            return;
        };
        let balance = node.ledger.balance(&worker).0;
        // The id the worker knows the work by: a slot-round's is its pooled task's. Its
        // finished jobs of that task are then removed; another of its slot-rounds of the pool
        // cannot be waiting for an audit, as a round's slots go to distinct workers and the
        // next round starts only once this one is merged.
        let task_id = t.task_id();
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net
                .request(peer, Request::Settled { task_id, balance })
                .await;
        });
    }

    async fn on_hello(
        &self,
        node: &Arc<Node>,
        peer: PeerId,
        account: AccountId,
        hello: Signed<market_protocol::Hello>,
    ) -> Reply {
        let body = match hello.verify() {
            Ok(b) => b.clone(),
            Err(e) => return Reply::refused(format!("the hello's signature: {e}")),
        };
        if body.account != account {
            // Signed by a key that is not this connection's: someone speaking for another.
            return Reply::refused(format!(
                "the hello is signed by {} but this connection is {account}",
                body.account
            ));
        }
        if body.node != node.operator.account() {
            return Reply::refused("the hello is addressed to another node");
        }
        if let Some(to) = node.ledger.rotated_to(&account) {
            return Reply::refused(format!(
                "account {account} was rotated to key {to}: run with the new key"
            ));
        }
        let (stake, balance) = match node.hold_stake(&account, body.stake.0).await {
            Ok(sb) => sb,
            Err(e) => return Reply::refused(format!("cannot stake {}: {e}", body.stake.0)),
        };
        let mut st = self.state();
        let (joined, hellos) = match st.participants.get(&account) {
            Some(p) => (p.joined, p.hellos),
            None => {
                st.joins += 1;
                (st.joins - 1, 0)
            }
        };
        st.participants.insert(
            account,
            Participant {
                peer,
                role: body.role,
                capabilities: body.capabilities.clone(),
                connected: true,
                joined,
                hellos: hellos + 1,
            },
        );
        // Runs still assigned to this account assign their job again on this connection.
        for run in st.runs.values().filter(|r| r.worker == account) {
            let _ = run.events.send(RunEvent::Reconnected(peer));
        }
        // Runs given up on while it was away are cancelled on this connection.
        let given_up: Vec<(u64, TaskId, String)> = st
            .abandoned
            .iter()
            .filter(|(_, (w, _, _))| *w == account)
            .map(|(job, (_, task, reason))| (*job, *task, reason.clone()))
            .collect();
        drop(st);
        for (job, task_id, reason) in given_up {
            self.send_cancel(account, task_id, job, reason);
        }
        tracing::info!(%account, role = ?body.role, stake, "participant joined");
        node.wake();
        Reply::of(Response::Welcome { stake, balance })
    }

    /// Hands a worker's report to the run waiting for it. A `Done` that fails its checks
    /// fails the attempt (the worker will not send a better one); after a `Done` or `Failed`
    /// the job takes nothing more.
    fn to_run(
        &self,
        account: AccountId,
        task_id: TaskId,
        job: u64,
        make: impl FnOnce() -> Result<RunEvent, String>,
    ) -> Reply {
        let mut st = self.state();
        let Some(slot) = st.runs.get_mut(&job) else {
            if let Some((worker, task, reason)) = st.abandoned.get(&job).cloned() {
                if worker == account && task == task_id {
                    drop(st);
                    // Still working on it (it was away when told): tell it again.
                    self.send_cancel(account, task_id, job, reason.clone());
                    return Reply::refused(format!("the node gave up on this job: {reason}"));
                }
            }
            return Reply::refused("no such job");
        };
        if slot.worker != account || slot.task_id != task_id {
            return Reply::refused("not your job");
        }
        if slot.closed {
            return Reply::refused("this job has already reported");
        }
        match make() {
            Ok(ev) => {
                slot.closed = matches!(ev, RunEvent::Done(..) | RunEvent::Failed(_));
                let _ = slot.events.send(ev);
                Reply::of(Response::Ok)
            }
            Err(reason) => {
                slot.closed = true;
                let _ = slot.events.send(RunEvent::Failed(reason.clone()));
                Reply::refused(reason)
            }
        }
    }

    /// The file `account` may read for `source`, with its name: a blob only while it runs or
    /// audits a task that reads it, a bundle file only of an audit it was given.
    fn readable(
        &self,
        account: &AccountId,
        source: &Source,
        node: &Node,
    ) -> Result<Readable, String> {
        let st = self.state();
        match source {
            Source::Blob { id } => {
                let working = st
                    .runs
                    .values()
                    .any(|r| r.worker == *account && r.blobs.contains(id))
                    || st
                        .audits
                        .values()
                        .any(|a| a.verifier == *account && a.blobs.contains(id))
                    || st
                        .checks
                        .values()
                        .any(|c| c.verifier == *account && c.weights == *id);
                if working && node.blobs.contains(id) {
                    Ok(Readable::File(node.blobs.path(id), id.to_string()))
                } else if working && node.blobs.partial().meta(id).is_some() {
                    Ok(Readable::Partial(*id))
                } else {
                    Err(format!("blob {id} is not yours to read"))
                }
            }
            Source::Bundle { task_id, job, path } => {
                check_bundle_path(path).map_err(|e| e.to_string())?;
                match st.audits.get(job) {
                    Some(a) if a.verifier == *account && a.task_id == *task_id => {
                        if a.openings.iter().any(|o| o == path) {
                            Ok(Readable::File(a.dir.join(path), path.clone()))
                        } else {
                            Err(format!("{path} is not opened by your challenge"))
                        }
                    }
                    _ => Err("not your audit".into()),
                }
            }
        }
    }

    /// Fetches the files of the bundle of `job` that `wanted` names from `worker` into `dir`
    /// (never the task and commitment, which the node writes itself from what it assigned and
    /// what it verified), resuming an interrupted transfer a few times.
    async fn fetch_result(
        &self,
        worker: &AccountId,
        task_id: TaskId,
        job: u64,
        manifest: &Manifest,
        dir: &Path,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> anyhow::Result<FetchStats> {
        let mut last = None;
        for _ in 0..5 {
            let peer = match self.peer_of(worker) {
                Ok(p) => p,
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let theirs = |p: &str| !written_by_node(p) && wanted(p);
            match fetch_bundle(&self.net, peer, task_id, job, manifest, dir, theirs).await {
                Ok(stats) => return Ok(stats),
                Err(e @ (TransferError::Net(_) | TransferError::Corrupt { .. })) => {
                    tracing::warn!(%worker, error = %e, "bundle transfer interrupted; resuming");
                    last = Some(e.into());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("bundle transfer failed")))
    }

    /// Fetches the chunks of a slot-round's final state that `meta` holds (its parameters)
    /// into the bundle `dir` beside its description ([`crate::partial::tail_files`]),
    /// resuming an interrupted transfer a few times.
    async fn fetch_tail(&self, meta: &PartialMeta, dir: &Path) -> anyhow::Result<FetchStats> {
        let Some((worker, source)) = meta.final_source() else {
            anyhow::bail!("not a final state");
        };
        let Source::Bundle { path, .. } = &source else {
            anyhow::bail!("not a bundle file");
        };
        let (data, described) = crate::partial::tail_files(&dir.join(path));
        let mut last = None;
        for _ in 0..5 {
            let peer = match self.peer_of(&worker) {
                Ok(p) => p,
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match fetch_file_tail(
                &self.net,
                peer,
                &source,
                &meta.entry,
                &data,
                meta.from_chunk,
            )
            .await
            {
                Ok(stats) => {
                    crate::partial::write_durably(&described, &serde_json::to_vec(meta)?)?;
                    return Ok(stats);
                }
                Err(e @ (TransferError::Net(_) | TransferError::Corrupt { .. })) => {
                    tracing::warn!(%worker, error = %e, "final state transfer interrupted; resuming");
                    last = Some(e.into());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("final state transfer failed")))
    }

    /// Remembers that `account` was refused a chunk of start `id`, held in part.
    fn note_kept_chunk_refusal(&self, account: AccountId, id: BlobId) {
        let Ok(mut refusals) = self.kept_chunk_refusals.lock() else {
            return;
        };
        refusals.insert((account, id), Instant::now());
        while refusals.len() > REMEMBERED_REFUSALS {
            let oldest = refusals.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
            match oldest {
                Some(k) => refusals.remove(&k),
                None => break,
            };
        }
    }

    /// [`Dispatch::fetch_state_rest`]: tries again 1 s apart for `state_wait`, each try
    /// bounded by the transfer limit and keeping the chunks already fetched.
    async fn fetch_state_rest_async(&self, meta: &PartialMeta, file: &Path) -> anyhow::Result<u64> {
        let Some((worker, source)) = meta.final_source() else {
            anyhow::bail!("not a final state");
        };
        let limit =
            Duration::from_secs(60 + meta.entry.size / self.options.min_transfer_rate.max(1));
        let started = Instant::now();
        loop {
            let why = match self.peer_of(&worker) {
                Err(e) => e.to_string(),
                Ok(peer) => {
                    let fetch = fetch_file(&self.net, peer, &source, &meta.entry, file);
                    match tokio::time::timeout(limit, fetch).await {
                        Ok(Ok(stats)) => return Ok(stats.received),
                        Ok(Err(e @ TransferError::Io { .. })) => return Err(e.into()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "the transfer did not finish in time".to_owned(),
                    }
                }
            };
            if started.elapsed() >= self.options.state_wait {
                anyhow::bail!("worker {worker} did not serve the slot's state: {why}");
            }
            tracing::info!(%worker, %why, "fetching a slot's state again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_async(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        slot_round: Option<SlotRound>,
        job: u64,
        dir: &Path,
        mut events: mpsc::UnboundedReceiver<RunEvent>,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Signed<Commitment>> {
        let task_id = TaskId(message_id(task)?);
        let started = Instant::now();
        let assign = |()| Request::Assign {
            task_id,
            job,
            task: task.clone(),
            slot_round,
        };
        self.ask_ok(self.peer_of(worker)?, assign(())).await?;
        let grace = self.options.run_grace;
        let deadline = started + self.options.max_run;
        let mut gone_since: Option<Instant> = None;
        let (commitment, manifest) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = gone_since.map_or(left, |t| grace.saturating_sub(t.elapsed()).min(left));
            match tokio::time::timeout(wait, events.recv()).await {
                Err(_) if gone_since.is_some() => anyhow::bail!(
                    "worker {worker} lost its connection and did not come back within {grace:?}"
                ),
                Err(_) => anyhow::bail!(
                    "worker {worker} did not commit within {:?}",
                    self.options.max_run
                ),
                Ok(None) => anyhow::bail!("the run was abandoned"),
                Ok(Some(RunEvent::Progress(p))) => progress(p),
                Ok(Some(RunEvent::Disconnected)) => {
                    tracing::warn!(%worker, task = %task_id, "worker disconnected mid-task; waiting for it");
                    gone_since.get_or_insert_with(Instant::now);
                }
                Ok(Some(RunEvent::Reconnected(peer))) => {
                    gone_since = None;
                    // The same job again: a worker that restarted resumes from its checkpoints.
                    if let Err(e) = self.ask_ok(peer, assign(())).await {
                        tracing::warn!(%worker, error = %e, "re-assigning after reconnect failed");
                    }
                }
                Ok(Some(RunEvent::Failed(reason))) => {
                    anyhow::bail!("worker {worker} could not run the task: {reason}")
                }
                Ok(Some(RunEvent::Done(c, m))) => break (*c, m),
            }
        };
        let execution = started.elapsed();
        let t = Instant::now();
        // Where the rest of the bundle is, for the audits' openings (also after a restart).
        RunSource {
            worker: *worker,
            task_id,
            job,
            manifest: manifest.clone(),
        }
        .save(dir)?;
        // A pooled slot's final state: only its last chunks, the parameters (see
        // `crate::partial`); its worker keeps the rest.
        let tail = slot_round
            .is_some()
            .then(|| final_tail_plan(task, &commitment.body, &manifest))
            .flatten();
        let wanted = |p: &str| {
            fetched_at_commit(task, &commitment.body, p)
                && tail.as_ref().is_none_or(|(e, _)| e.path != p)
        };
        // However the worker paces its chunks, the transfer ends.
        let limit = self.transfer_limit(&manifest, &wanted);
        let mut stats = tokio::time::timeout(
            limit,
            self.fetch_result(worker, task_id, job, &manifest, dir, &wanted),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the bundle transfer took longer than {limit:?}"))??;
        if let Some((entry, from_chunk)) = tail {
            // Only a final state the commitment binds (its leaves now on disk): an entry
            // that is not is never fetched, and settling finds no final state.
            if final_entry_is_committed(dir, &commitment.body, &entry) {
                let meta = PartialMeta {
                    pool: task_id,
                    from_chunk,
                    origin: Origin::Final {
                        worker: *worker,
                        task_id,
                        job,
                        path: entry.path.clone(),
                    },
                    entry,
                };
                let size = meta.entry.size - meta.tail_offset();
                let limit = Duration::from_secs(60 + size / self.options.min_transfer_rate.max(1));
                stats += tokio::time::timeout(limit, self.fetch_tail(&meta, dir))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("the final state's transfer took longer than {limit:?}")
                    })??;
            } else {
                tracing::warn!(%worker, task = %task_id, "the final state's entry is not the committed state; not fetched");
            }
        }
        let bundle = Bundle::at(dir);
        bundle.create()?;
        bundle.write_task(task)?;
        bundle.write_commitment(&commitment)?;
        if let Ok(mut timings) = self.timings.lock() {
            if timings.len() >= REMEMBERED_RUNS {
                timings.remove(0);
            }
            timings.push(RunTiming {
                task_id: Some(task_id),
                assigned_at: started,
                execution,
                transfer: t.elapsed(),
                bytes: stats.received,
                opened: 0,
                dir: dir.to_owned(),
                audits: Vec::new(),
            });
        }
        Ok(commitment)
    }

    /// How long fetching the files `wanted` names may take: a minute, plus their size at the
    /// slowest rate accepted.
    fn transfer_limit(&self, manifest: &Manifest, wanted: &dyn Fn(&str) -> bool) -> Duration {
        let bytes = manifest
            .files
            .iter()
            .filter(|f| wanted(&f.path))
            .fold(0u64, |total, f| total.saturating_add(f.size));
        Duration::from_secs(60 + bytes / self.options.min_transfer_rate.max(1))
    }

    /// [`Dispatch::fetch_files`]: fetches what is missing of `paths` (all files when `None`)
    /// from the worker of the bundle in `dir`, trying again 1 s apart (each try bounded by the
    /// transfer limit, keeping the chunks already fetched). The files count as
    /// [`crate::dispatch::Withheld`] when the worker, connected, keeps refusing them or
    /// sending bytes that fail their hashes for `run_grace`, or stays unreachable (or its
    /// transfers keep timing out) for `opening_wait`. A local error of the node's own is an
    /// error, never the worker's fault. A file already whole on disk needs no worker at all.
    async fn fetch_files_async(&self, dir: &Path, paths: Option<&[String]>) -> anyhow::Result<u64> {
        let Some(source) = RunSource::load(dir)? else {
            return Ok(0);
        };
        let wanted =
            |p: &str| !written_by_node(p) && paths.is_none_or(|ps| ps.iter().any(|x| x == p));
        let missing: Vec<&FileEntry> = source
            .manifest
            .files
            .iter()
            .filter(|f| wanted(&f.path))
            .filter(|f| std::fs::metadata(dir.join(&f.path)).map_or(true, |m| m.len() != f.size))
            .collect();
        let Some(first) = missing.first() else {
            return Ok(0);
        };
        let first = first.path.clone();
        let missing: Vec<String> = missing.iter().map(|f| f.path.clone()).collect();
        let only_missing = |p: &str| missing.iter().any(|m| m == p);
        let limit = self.transfer_limit(&source.manifest, &only_missing);
        let started = Instant::now();
        let mut refusing_since: Option<Instant> = None;
        loop {
            let attempt = async {
                let Ok(peer) = self.peer_of(&source.worker) else {
                    return OpeningTry::Away("the worker is not connected".to_owned());
                };
                match fetch_bundle(
                    &self.net,
                    peer,
                    source.task_id,
                    source.job,
                    &source.manifest,
                    dir,
                    only_missing,
                )
                .await
                {
                    Ok(stats) => OpeningTry::Fetched(stats.received),
                    Err(e @ (TransferError::Refused(_) | TransferError::Corrupt { .. })) => {
                        OpeningTry::Refused(e.to_string())
                    }
                    Err(e @ TransferError::Net(_)) => OpeningTry::Away(e.to_string()),
                    Err(e @ (TransferError::Io { .. } | TransferError::BadManifest(_))) => {
                        OpeningTry::Local(e.into())
                    }
                }
            };
            let outcome = tokio::time::timeout(limit, attempt)
                .await
                .unwrap_or_else(|_| OpeningTry::Away("the transfer did not finish in time".into()));
            let (why, withheld) = match outcome {
                OpeningTry::Fetched(bytes) => {
                    if let Ok(mut timings) = self.timings.lock() {
                        if let Some(t) = timings.iter_mut().rev().find(|t| t.dir == dir) {
                            t.opened += bytes;
                        }
                    }
                    return Ok(bytes);
                }
                OpeningTry::Local(e) => return Err(e),
                OpeningTry::Refused(why) => {
                    let since = *refusing_since.get_or_insert_with(Instant::now);
                    let out = since.elapsed() + Duration::from_secs(1) >= self.options.run_grace;
                    (why, out)
                }
                OpeningTry::Away(why) => {
                    refusing_since = None;
                    (why, started.elapsed() >= self.options.opening_wait)
                }
            };
            if withheld {
                tracing::warn!(worker = %source.worker, path = %first, %why, "an opening was withheld");
                return Err(crate::dispatch::Withheld { path: first, why }.into());
            }
            tracing::info!(worker = %source.worker, %why, "fetching openings again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn audit_async(
        &self,
        verifier: &AccountId,
        dir: &Path,
        request: &AuditRequest,
    ) -> anyhow::Result<Signed<Verdict>> {
        let started = Instant::now();
        let peer = self.peer_of(verifier)?;
        let bundle = Bundle::at(dir);
        let task = bundle.read_task()?;
        let task_id = TaskId(message_id(&task)?);
        let commitment = bundle.read_commitment()?;
        // The verifier will derive the same sample: it may fetch exactly those openings.
        let (samples, _) = market_verifier::audit::sample_count(
            &task,
            commitment.body.segments,
            &request.policy(),
        )?;
        let challenge =
            market_verifier::audit::challenge_for(*verifier, &commitment, request.beacon, samples)?;
        let openings = market_verifier::audit::openings(&task, &challenge.sampled);
        let d = dir.to_owned();
        let mut manifest = tokio::task::spawn_blocking(move || bundle_manifest(&d)).await??;
        manifest.files.retain(|f| openings.contains(&f.path));
        let job = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.state().audits.insert(
            job,
            AuditSlot {
                verifier: *verifier,
                task_id,
                dir: dir.to_owned(),
                openings,
                blobs: task.blobs(),
                verdict: Some(tx),
            },
        );
        let result = async {
            self.ask_ok(
                peer,
                Request::Audit {
                    job: AuditJob {
                        task_id,
                        job,
                        beacon: request.beacon,
                        beacon_proof: request.beacon_proof,
                        verifiers: request.verifiers,
                        manifest,
                    },
                },
            )
            .await?;
            // Three times the expected re-execution, on top of the fixed allowance.
            let timeout = self.options.audit_timeout + request.rerun_estimate * 3;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(_)) => anyhow::bail!("the audit was dropped"),
                Err(_) => anyhow::bail!("verifier {verifier} sent no verdict within {timeout:?}"),
            }
        }
        .await;
        self.state().audits.remove(&job);
        if let Ok(mut timings) = self.timings.lock() {
            if let Some(t) = timings
                .iter_mut()
                .rev()
                .find(|t| t.task_id == Some(task_id))
            {
                t.audits.push(started.elapsed());
            }
        }
        result
    }

    /// Asks the worker to open a segment's per-step hashes and fetches them: a file no larger
    /// than a segment of the task's checkpoint interval needs, and the whole exchange within
    /// the audit timeout (the worker re-executes the segment to answer), so a worker cannot
    /// make the node fetch a file of its choosing or wait on it for ever.
    async fn open_steps_async(
        &self,
        worker: &AccountId,
        dir: &Path,
        segment: u32,
    ) -> anyhow::Result<()> {
        let limit = self.options.audit_timeout;
        tokio::time::timeout(limit, self.open_steps_within(worker, dir, segment))
            .await
            .map_err(|_| {
                anyhow::anyhow!("the worker did not open segment {segment} within {limit:?}")
            })?
    }

    async fn open_steps_within(
        &self,
        worker: &AccountId,
        dir: &Path,
        segment: u32,
    ) -> anyhow::Result<()> {
        let task = market_compute::bundle::Bundle::at(dir).read_task()?;
        let market_protocol::Workload::Training(training) = &task.workload else {
            anyhow::bail!("an inference task has no steps to open");
        };
        let max =
            market_compute::bundle::Bundle::max_step_hashes_bytes(training.checkpoint_interval);
        let RunSource {
            worker: w,
            task_id,
            job,
            ..
        } = RunSource::load(dir)?
            .ok_or_else(|| anyhow::anyhow!("no run of this node produced {}", dir.display()))?;
        anyhow::ensure!(w == *worker, "that bundle is another worker's");
        let peer = self.peer_of(worker)?;
        let reply = self
            .net
            .request(
                peer,
                Request::OpenSteps {
                    task_id,
                    job,
                    segment,
                },
            )
            .await?;
        let entry: FileEntry = match reply.response {
            Response::File { entry } => entry,
            Response::Refused { reason } => anyhow::bail!("refused: {reason}"),
            other => anyhow::bail!("unexpected answer {other:?}"),
        };
        let name = format!("steps/{segment:06}.json");
        anyhow::ensure!(entry.path == name, "asked for {name}, got {}", entry.path);
        anyhow::ensure!(
            entry.size <= max,
            "the opening of segment {segment} is {} bytes; {} steps need at most {max}",
            entry.size,
            training.checkpoint_interval
        );
        let source = Source::Bundle {
            task_id,
            job,
            path: name.clone(),
        };
        fetch_file(&self.net, peer, &source, &entry, &dir.join(&name)).await?;
        Ok(())
    }
}

impl Dispatch for P2pDispatch {
    fn workers(&self) -> Vec<AccountId> {
        self.connected(Role::Worker)
    }

    fn verifiers(&self) -> Vec<AccountId> {
        self.connected(Role::Verifier)
    }

    fn runs(&self, participant: &AccountId, profile: ExecutionProfile) -> bool {
        self.state()
            .participants
            .get(participant)
            .is_some_and(|p| p.capabilities.runs(profile))
    }

    fn offers(&self, participant: &AccountId) -> Option<market_protocol::Resources> {
        // One it does not know offers nothing.
        Some(
            self.state()
                .participants
                .get(participant)
                .map(|p| p.capabilities.offers())
                .unwrap_or_default(),
        )
    }

    fn concurrent_tasks(&self) -> usize {
        // Every worker is its own machine; the engine gives each one task at a time.
        match self.options.max_parallel_tasks {
            0 => usize::MAX,
            cap => cap,
        }
    }

    fn run(
        &self,
        worker: &AccountId,
        task: &TaskSpec,
        slot_round: Option<SlotRound>,
        dir: &Path,
        _blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Signed<Commitment>> {
        let task_id = TaskId(message_id(task)?);
        let job = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        // What the worker may fetch: the task's inputs and, for a slot-round, its start state.
        let mut blobs = task.blobs();
        blobs.extend(slot_round.map(|sr| BlobId(sr.start.0)));
        self.state().runs.insert(
            job,
            RunSlot {
                worker: *worker,
                task_id,
                blobs,
                events: tx,
                closed: false,
            },
        );
        let result = self
            .rt
            .block_on(self.run_async(worker, task, slot_round, job, dir, rx, progress));
        self.state().runs.remove(&job);
        if let Err(e) = &result {
            // The attempt failed: whatever the worker is still doing for it is wasted.
            self.abandon(*worker, task_id, job, format!("{e:#}"));
        }
        result
    }

    fn audit(
        &self,
        verifier: &AccountId,
        dir: &Path,
        request: &AuditRequest,
        _blobs: &dyn BlobSource,
    ) -> anyhow::Result<Signed<Verdict>> {
        self.rt.block_on(self.audit_async(verifier, dir, request))
    }

    fn fetch_files(&self, dir: &Path, paths: Option<&[String]>) -> anyhow::Result<u64> {
        self.rt.block_on(self.fetch_files_async(dir, paths))
    }

    fn fetch_state_rest(&self, meta: &PartialMeta, file: &Path) -> anyhow::Result<u64> {
        self.rt.block_on(self.fetch_state_rest_async(meta, file))
    }

    fn refused_kept_chunk(&self, worker: &AccountId, start: &BlobId) -> bool {
        self.kept_chunk_refusals.lock().is_ok_and(|r| {
            r.get(&(*worker, *start))
                .is_some_and(|t| t.elapsed() <= LOST_STATE_CLAIM_WINDOW)
        })
    }

    fn open_steps(
        &self,
        worker: &AccountId,
        dir: &Path,
        segment: u32,
        _blobs: &dyn BlobSource,
    ) -> anyhow::Result<()> {
        self.rt
            .block_on(self.open_steps_async(worker, dir, segment))
    }
}

/// A node whose workers and verifiers join over libp2p: starts the network (as a relay for
/// peers behind NAT), opens the node with a [`P2pDispatch`] and serves the network. Returns
/// the node, the dispatch and the addresses participants dial (ending in `/p2p/<id>`).
pub async fn open_networked(
    data: &Path,
    config: crate::config::NodeConfig,
    operator: market_protocol::Identity,
    mut net_config: market_net::NetConfig,
    options: P2pOptions,
) -> anyhow::Result<(Arc<Node>, Arc<P2pDispatch>, Vec<market_net::Multiaddr>)> {
    net_config.relay_server = true;
    let (net, events) = Net::start(&operator, net_config)?;
    let addrs = net.wait_listening().await?;
    let dispatch = P2pDispatch::new(net, options)?;
    let node = Node::open(data, config, operator, dispatch.clone())?;
    dispatch.serve(node.clone(), events);
    Ok((node, dispatch, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::Identity;

    fn participant(account: &AccountId, joined: u64, connected: bool) -> Participant {
        Participant {
            peer: account.to_peer_id(),
            role: Role::Worker,
            capabilities: Capabilities {
                profiles: vec!["repro".into()],
                device: "cpu".into(),
                memory_bytes: 0,
                disk_bytes: 0,
                steps_per_ksec: 0,
            },
            connected,
            joined,
            hellos: 1,
        }
    }

    #[test]
    fn departed_participants_are_forgotten_earliest_first_beyond_the_limit() {
        let mut st = State::default();
        let account = |i: usize| Identity::from_test_label(&format!("participant {i}")).account();
        let total = REMEMBERED_DISCONNECTED + 5;
        let connected = [0, 3];
        for i in 0..total {
            let p = participant(&account(i), i as u64, connected.contains(&i));
            st.participants.insert(account(i), p);
        }
        // A departed worker that still has a run assigned (it may come back to finish it).
        st.runs.insert(
            7,
            RunSlot {
                worker: account(1),
                task_id: TaskId(market_protocol::Hash::of(b"task")),
                blobs: Vec::new(),
                events: mpsc::unbounded_channel().0,
                closed: false,
            },
        );
        st.forget_departed();
        let gone: Vec<usize> = (0..total)
            .filter(|i| !st.participants.contains_key(&account(*i)))
            .collect();
        // REMEMBERED_DISCONNECTED + 2 departed without a run: the two earliest of them go.
        assert_eq!(gone, [2, 4]);
        st.forget_departed();
        assert_eq!(st.participants.len(), total - 2, "nothing more to forget");
    }
}
