//! `market-worker run`: the networked worker. It keeps one connection to its market node
//! (reconnecting with backoff), runs assigned tasks with the same [`crate::exec`] as the local
//! command, serves its bundle to the node in verified chunks, and opens per-step hashes when
//! asked. A task interrupted by a restart resumes from its last checkpoint when the node
//! assigns it again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use market_compute::bundle::Bundle;
use market_net::participant::{DirBlobs, Membership};
use market_net::transfer::{bundle_manifest, check_bundle_path, chunk_reply, describe_reply};
use market_net::wire::{Reply, Request, Response, Source};
use market_net::{Multiaddr, Net, PeerId, Responder};
use market_protocol::{
    message_id, BlobId, ExecutionProfile, F32Bits, Identity, Role, TaskId, TaskSpec, Workload,
};

use crate::{exec_slot_round_from, exec_until, open_steps, Behavior, CancelToken};

/// How the worker daemon runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The market node's address (`/ip4/.../tcp/.../p2p/...`).
    pub market: Multiaddr,
    /// Where jobs, bundles and cached blobs live (kept across restarts).
    pub data_dir: PathBuf,
    /// Most bytes of input blobs kept cached (least recently used go first).
    pub cache_bytes: u64,
    /// How it behaves (anything but honest exists to test audits).
    pub behavior: Behavior,
    /// Stake to hold while working.
    pub stake: u64,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Addresses to listen on (for direct connections and hole punching).
    pub listen: Vec<Multiaddr>,
    /// Show the live status line on standard error.
    pub status_line: bool,
    /// Take a reservation on the node's relay at once (behind NAT; otherwise done when
    /// AutoNAT finds this machine private).
    pub relay: bool,
    /// Models to keep loaded and answer requests for, if any.
    pub serve: Option<crate::serve::ServeOptions>,
}

struct Worker {
    net: Net,
    identity: Identity,
    options: WorkerOptions,
    member: Arc<Membership>,
    /// Jobs started by this process, by the node's job number.
    jobs: Mutex<BTreeMap<u64, (TaskId, JobStatus)>>,
    /// Jobs the node cancelled (the most recent [`REMEMBERED_CANCELS`]): an `assign` for one
    /// that arrives late, after its cancel, is refused rather than run for nothing.
    cancelled: Mutex<std::collections::BTreeSet<u64>>,
    /// One run at a time per task: a task handed over again under a new job number (a node
    /// restart) waits for the earlier job's run, then continues in its directory. Entries go
    /// when nobody holds or waits for them.
    task_turns: Mutex<BTreeMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
    status: ProgressBar,
    /// The models served, loaded at start.
    served: Option<Arc<crate::serve::Served>>,
    done: Mutex<u64>,
    /// Balance when joined, and now (the node reports it after each settlement).
    balance: Mutex<(u64, u64)>,
}

#[derive(Debug, Clone)]
enum JobStatus {
    /// Running; the token stops it (the node sent `cancel`).
    Running(CancelToken),
    /// Done, with the report that was delivered (sent again if the node asks again).
    Finished(Box<Request>),
}

impl Worker {
    fn job_dir(&self, task_id: &TaskId, job: u64) -> PathBuf {
        self.options
            .data_dir
            .join("jobs")
            .join(format!("{task_id}-{job}"))
    }

    fn blobs(&self) -> DirBlobs {
        DirBlobs::new(self.options.data_dir.join("blobs")).with_limit(self.options.cache_bytes)
    }

    /// Sends `request` to the node until it answers (reconnecting as needed).
    async fn deliver(&self, request: Request) -> Option<Response> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        while Instant::now() < deadline {
            let node = self.member.connected().await;
            match self.net.request(node, request.clone()).await {
                Ok(reply) => return Some(reply.response),
                Err(e) => {
                    tracing::info!(request = request.name(), error = %e, "retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        None
    }

    /// The lock a run of `task_id` holds (see [`Worker::task_turns`]).
    fn task_turn(&self, task_id: &TaskId) -> Arc<tokio::sync::Mutex<()>> {
        self.task_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(*task_id)
            .or_default()
            .clone()
    }

    /// Forgets `task_id`'s lock if nobody else holds or waits for it.
    fn forget_task_turn(&self, task_id: &TaskId, turn: Arc<tokio::sync::Mutex<()>>) {
        drop(turn);
        let mut turns = self.task_turns.lock().unwrap_or_else(|e| e.into_inner());
        if turns
            .get(task_id)
            .is_some_and(|t| Arc::strong_count(t) == 1)
        {
            turns.remove(task_id);
        }
    }

    fn status(&self, msg: String) {
        self.status.set_message(msg);
    }
}

/// Runs the worker daemon until the process is stopped (or the node refuses it).
pub async fn run(identity: Identity, options: WorkerOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(options.data_dir.join("jobs"))?;
    std::fs::create_dir_all(options.data_dir.join("blobs"))?;
    // Tokens an earlier process kept may come from another build's tokenizer.
    DirBlobs::new(options.data_dir.join("blobs")).forget_derived()?;
    sweep_job_dirs(&options.data_dir.join("jobs"), KEPT_JOBS)?;
    crate::pool_keep::prune(&options.data_dir)?;
    let served = match options.serve.clone() {
        Some(serve) if !serve.models.is_empty() => {
            let id = identity.clone();
            Some(Arc::new(
                tokio::task::spawn_blocking(move || crate::serve::Served::load(&serve, &id))
                    .await??,
            ))
        }
        _ => None,
    };
    let (member, events) = Membership::start(
        &identity,
        &options.market,
        options.listen.clone(),
        Role::Worker,
        &options.device,
        &options.data_dir,
        options.stake,
    )
    .await?;
    member
        .relay
        .store(options.relay, std::sync::atomic::Ordering::Relaxed);
    let net = member.net.clone();
    let status = if options.status_line {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let worker = Arc::new(Worker {
        net,
        identity,
        options,
        member: member.clone(),
        jobs: Mutex::new(BTreeMap::new()),
        cancelled: Mutex::new(std::collections::BTreeSet::new()),
        task_turns: Mutex::new(BTreeMap::new()),
        status,
        served,
        done: Mutex::new(0),
        balance: Mutex::new((0, 0)),
    });
    worker.status("connecting to the market".into());
    member
        .run(
            events,
            |welcome| {
                *worker.balance.lock().unwrap_or_else(|e| e.into_inner()) =
                    (welcome.balance, welcome.balance);
                worker.status(format!(
                    "connected; stake {} balance {}",
                    welcome.stake, welcome.balance
                ));
                // Every (re)connection announces the models served: the node forgets a
                // worker's offers when it disconnects.
                if let Some(served) = worker.served.clone() {
                    let w = worker.clone();
                    tokio::spawn(async move {
                        let offers = served.offers();
                        match w.deliver(Request::Serving { offers }).await {
                            Some(Response::Ok) => tracing::info!("serving announced"),
                            other => tracing::error!(?other, "the node refused the models served"),
                        }
                    });
                }
            },
            |peer, request, responder| on_request(&worker, peer, request, responder),
        )
        .await
}

/// A request from the node (the membership refused everyone else's).
fn on_request(worker: &Arc<Worker>, node: PeerId, request: Request, responder: Responder) {
    match request {
        Request::Generate { request, task } => match &worker.served {
            Some(served) => crate::serve::on_generate(
                served,
                &worker.net,
                node,
                &worker.identity,
                request,
                task,
                responder,
            ),
            None => responder.send(Reply::refused("this worker serves no model")),
        },
        Request::Assign {
            task_id,
            job,
            task,
            slot_round,
        } => {
            match message_id(&task) {
                Ok(id) if TaskId(id) == task_id => {}
                _ => return responder.send(Reply::refused("the task does not match its id")),
            }
            if worker
                .cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&job)
            {
                return responder.send(Reply::refused("the node cancelled this job"));
            }
            let mut jobs = worker.jobs.lock().unwrap_or_else(|e| e.into_inner());
            match jobs.get(&job).map(|(_, s)| s.clone()) {
                // Assigned again after a reconnect: still running, or the report is re-sent.
                Some(JobStatus::Running(_)) => {}
                Some(JobStatus::Finished(report)) => {
                    let w = worker.clone();
                    tokio::spawn(async move { w.deliver(*report).await });
                }
                None => {
                    let cancel = CancelToken::default();
                    jobs.insert(job, (task_id, JobStatus::Running(cancel.clone())));
                    forget_old_jobs(worker, &mut jobs);
                    tokio::spawn(run_job(
                        worker.clone(),
                        task_id,
                        job,
                        task,
                        slot_round,
                        cancel,
                    ));
                }
            }
            responder.send(Reply::of(Response::Ok));
        }
        Request::Cancel {
            task_id,
            job,
            reason,
        } => {
            let mut jobs = worker.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(jobs.get(&job), Some((t, _)) if *t != task_id) {
                return responder.send(Reply::refused("that job runs another task"));
            }
            {
                let mut cancelled = worker.cancelled.lock().unwrap_or_else(|e| e.into_inner());
                while cancelled.len() >= REMEMBERED_CANCELS {
                    cancelled.pop_first();
                }
                cancelled.insert(job);
            }
            match jobs.get(&job) {
                // The run stops within a step and `run_job` drops its directory.
                Some((_, JobStatus::Running(cancel))) => {
                    tracing::info!(task = %task_id, job, %reason, "the node gave up on the job; stopping");
                    worker.status(format!(
                        "task {}: cancelled by the node",
                        &task_id.to_string()[..12]
                    ));
                    cancel.cancel();
                }
                // Finished, or from an earlier process of this worker: only files are left.
                _ => {
                    jobs.remove(&job);
                    let dir = worker.job_dir(&task_id, job);
                    tracing::info!(task = %task_id, job, %reason, "the node gave up on the job; removing its files");
                    remove_then_refresh(worker, vec![dir]);
                }
            }
            responder.send(Reply::of(Response::Ok));
        }
        Request::Settled { task_id, balance } => {
            // Settled: the node has the bundle and its audits are over, so this task's job
            // directories only fill the disk the worker offers.
            let mut jobs = worker.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let done: Vec<u64> = jobs
                .iter()
                .filter(|(_, (t, s))| *t == task_id && matches!(s, JobStatus::Finished(_)))
                .map(|(j, _)| *j)
                .collect();
            let dirs = done
                .iter()
                .filter_map(|j| jobs.remove(j).map(|(t, _)| worker.job_dir(&t, *j)))
                .collect();
            drop(jobs);
            remove_then_refresh(worker, dirs);
            let mut b = worker.balance.lock().unwrap_or_else(|e| e.into_inner());
            b.1 = balance;
            worker.status(format!(
                "idle | {} tasks done | earned {} (balance {balance})",
                worker.done.lock().map(|d| *d).unwrap_or(0),
                balance.saturating_sub(b.0)
            ));
            responder.send(Reply::of(Response::Ok));
        }
        Request::OpenSteps {
            task_id,
            job,
            segment,
        } => {
            let w = worker.clone();
            tokio::spawn(async move {
                let dir = w.job_dir(&task_id, job);
                let behavior = w.options.behavior;
                let blobs = w.blobs();
                let d = dir.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    let bundle = Bundle::at(&d);
                    let task = bundle.read_task()?;
                    open_steps(&task, behavior, &bundle, &blobs, segment)
                        .map_err(anyhow::Error::from)
                })
                .await;
                let name = format!("steps/{segment:06}.json");
                responder.send(match opened {
                    Ok(Ok(_)) => describe_reply(&dir.join(&name), &name),
                    Ok(Err(e)) => Reply::refused(e.to_string()),
                    Err(e) => Reply::refused(e.to_string()),
                });
            });
        }
        Request::Describe {
            source: Source::Bundle { task_id, job, path },
        } => responder.send(match check_bundle_path(&path) {
            Ok(()) => describe_reply(&bundle_file(worker, &task_id, job, &path), &path),
            Err(e) => Reply::refused(e.to_string()),
        }),
        Request::Fetch {
            source: Source::Bundle { task_id, job, path },
            chunk,
        } => responder.send(match check_bundle_path(&path) {
            Ok(()) => chunk_reply(&bundle_file(worker, &task_id, job, &path), chunk),
            Err(e) => Reply::refused(e.to_string()),
        }),
        other => responder.send(Reply::refused(format!(
            "a worker does not answer {}",
            other.name()
        ))),
    }
}

/// The file of job `job`'s bundle at `path`; once the job's directory is gone (settled), a
/// checkpoint of a pooled task is the final state kept of that job
/// ([`crate::pool_keep::kept_state`]): the node fetches the moments of a slot's final state
/// from it when the slot moves to another worker. Whatever is served, the node checks every
/// chunk against the committed state's entry.
fn bundle_file(worker: &Worker, task_id: &TaskId, job: u64, path: &str) -> PathBuf {
    let in_job = worker.job_dir(task_id, job).join(path);
    let kept = crate::pool_keep::kept_state(&worker.options.data_dir, task_id, job);
    if !in_job.exists() && path.starts_with("checkpoints/") && kept.is_file() {
        kept
    } else {
        in_job
    }
}

/// Finished jobs whose bundles are kept on disk until the node says they settled: the node
/// fetches the final state at once but an audit's openings when it hands the audit out, and
/// a file asked for and not served fails the result as withheld. Beyond this many, a finished
/// job is forgotten once it is older than [`UNSETTLED_KEEP`] (a node that never says so must
/// not fill the disk); never by count alone, which a burst of small tasks would reach while an
/// earlier result still waits for a stand-in verifier.
const KEPT_JOBS: usize = 64;

/// How long a finished job beyond [`KEPT_JOBS`] is kept, unsettled, before it is forgotten.
const UNSETTLED_KEEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether `dir` was last written longer than [`UNSETTLED_KEEP`] ago (a directory that is
/// gone, or whose time cannot be read, counts as old).
fn stale(dir: &std::path::Path) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > UNSETTLED_KEEP)
}

/// Forgets finished jobs beyond the [`KEPT_JOBS`] most recent, with their directories.
fn forget_old_jobs(worker: &Worker, jobs: &mut BTreeMap<u64, (TaskId, JobStatus)>) {
    let finished: Vec<u64> = jobs
        .iter()
        .filter(|(_, (_, s))| matches!(s, JobStatus::Finished(_)))
        .map(|(j, _)| *j)
        .collect();
    for job in finished
        .iter()
        .take(finished.len().saturating_sub(KEPT_JOBS))
    {
        let Some((task_id, _)) = jobs.get(job).cloned() else {
            continue;
        };
        let dir = worker.job_dir(&task_id, *job);
        if stale(&dir) {
            jobs.remove(job);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Jobs the node cancelled that a worker remembers.
const REMEMBERED_CANCELS: usize = 1024;

/// Removes job directories (off the async threads), then tells the node what the machine
/// offers now.
fn remove_then_refresh(worker: &Arc<Worker>, dirs: Vec<PathBuf>) {
    let w = worker.clone();
    tokio::spawn(async move {
        let _ =
            tokio::task::spawn_blocking(move || dirs.iter().for_each(|d| remove_job_dir(d))).await;
        w.member.refresh().await;
    });
}

/// Removes a job directory that may not exist.
fn remove_job_dir(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a job directory")
        }
    }
}

/// The most recently written directory of an earlier job of `task_id` in `jobs_dir`, if any
/// (job directories are named `TASK-JOB`).
fn earlier_run_dir(jobs_dir: &std::path::Path, task_id: &TaskId) -> Option<PathBuf> {
    let prefix = format!("{task_id}-");
    job_dirs(jobs_dir)
        .ok()?
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .find(|dir| {
            dir.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
}

/// The job directories in `jobs_dir`, least recently written first.
fn job_dirs(jobs_dir: &std::path::Path) -> std::io::Result<Vec<(std::time::SystemTime, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(jobs_dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            dirs.push((meta.modified()?, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Removes, at startup, the job directories beyond the `keep` most recently written that are
/// older than [`UNSETTLED_KEEP`]. Jobs of an earlier process are not in its memory, so
/// [`forget_old_jobs`] never sees them; the recent ones stay (the node re-assigns an
/// interrupted job, which then resumes from its checkpoints, or fetches the openings of a
/// finished result still under audit), older ones were settled or handed to another worker
/// long ago.
fn sweep_job_dirs(jobs_dir: &std::path::Path, keep: usize) -> anyhow::Result<()> {
    let dirs = job_dirs(jobs_dir)?;
    let beyond = dirs.len().saturating_sub(keep);
    for (_, dir) in dirs.into_iter().take(beyond).filter(|(_, d)| stale(d)) {
        tracing::info!(dir = %dir.display(), "removing a job directory from an earlier run");
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

async fn run_job(
    worker: Arc<Worker>,
    task_id: TaskId,
    job: u64,
    task: TaskSpec,
    slot_round: Option<market_protocol::SlotRound>,
    cancel: CancelToken,
) {
    let short = &task_id.to_string()[..12];
    worker.status(format!("task {short}: fetching inputs"));
    let blobs = worker.blobs();
    let mut fetched = false;
    let mut lost_kept_state = None;
    for _ in 0..10 {
        if cancel.is_cancelled() {
            break;
        }
        let node = worker.member.connected().await;
        let start: Vec<_> = slot_round.iter().map(|r| BlobId(r.start.0)).collect();
        // This worker's last final states of the pool, if it kept any: the start's moments.
        let local: Vec<PathBuf> = match slot_round {
            Some(_) => crate::pool_keep::kept_states(&worker.options.data_dir, &task_id),
            None => Vec::new(),
        };
        match blobs
            .fetch_for_run(&worker.net, node, &task, &start, &local)
            .await
        {
            Ok(_) => {
                fetched = true;
                break;
            }
            Err(e) if e.to_string().contains(market_net::wire::NOT_HELD_BY_NODE) => {
                // The start's moments are in the slot's last final state, which this worker
                // no longer keeps: no retry brings them back. Said as such, the node makes the
                // start whole (or starts the slot's moments afresh) and does not slash.
                tracing::warn!(task = %task_id, error = %e, "the slot's kept state is gone");
                lost_kept_state = Some(format!("{e:#}"));
                break;
            }
            Err(e) => {
                tracing::warn!(task = %task_id, error = %e, "fetching inputs failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let dir = worker.job_dir(&task_id, job);
    // An earlier job of this task still running here (the node restarted mid-run) finishes
    // into its directory first; jobs of one task take turns in the order they wait.
    let turn = worker.task_turn(&task_id);
    let held = match turn.clone().try_lock_owned() {
        Ok(held) => held,
        Err(_) => {
            worker.status(format!(
                "task {short}: reassigned; the earlier run finishes first"
            ));
            turn.clone().lock_owned().await
        }
    };
    if !dir.exists() && !cancel.is_cancelled() && slot_round.is_none() {
        // The same task under another job number: the node restarted (its job numbers start
        // afresh) or assigned it again. Its checkpoints are this worker's own and the run is
        // deterministic, so it continues from them instead of starting over. Not a
        // slot-round: it never resumes, and every slot-round of a pool shares the pool's id
        // (the directory found could be another round's, still waiting for its `settled`).
        if let Some(earlier) = earlier_run_dir(&worker.options.data_dir.join("jobs"), &task_id) {
            match std::fs::rename(&earlier, &dir) {
                Ok(()) => {
                    tracing::info!(task = %task_id, from = %earlier.display(), "continuing an earlier assignment's run")
                }
                Err(e) => {
                    tracing::warn!(task = %task_id, error = %e, "could not take over an earlier run")
                }
            }
        }
    }
    let outcome = if cancel.is_cancelled() {
        None
    } else if fetched {
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        let (identity, behavior, d, spec, stop) = (
            worker.identity.clone(),
            worker.options.behavior,
            dir.clone(),
            task.clone(),
            cancel.clone(),
        );
        let data_dir = worker.options.data_dir.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let progress = |p| {
                let _ = progress_tx.send(p);
            };
            let bundle = Bundle::at(&d);
            match slot_round {
                None => exec_until(&spec, &identity, behavior, &bundle, &blobs, &stop, progress),
                Some(r) => {
                    let report = exec_slot_round_from(
                        &spec, r, &identity, behavior, &bundle, &blobs, &stop, progress,
                    );
                    // Its final state holds the moments of this slot's next start (none after
                    // the pool's last round).
                    let last_round = matches!(&spec.workload, Workload::Training(t)
                        if t.pool.as_ref().is_some_and(|p| r.round + 1 >= p.rounds));
                    if let (Ok(done), false) = (&report, last_round) {
                        let last = done.commitment.body.segments;
                        if let Err(e) = crate::pool_keep::keep_final_state(
                            &data_dir, &task_id, job, &bundle, last,
                        ) {
                            tracing::warn!(task = %task_id, error = %e, "the slot's final state was not kept");
                        }
                    }
                    report
                }
            }
        });
        // Forward progress, at most a few times a second.
        let mut last = Instant::now() - Duration::from_secs(1);
        while let Some(p) = progress_rx.recv().await {
            worker.status(format!(
                "task {short}: {}/{} loss {:.4} | {} tasks done",
                p.done,
                p.total,
                p.loss,
                worker.done.lock().map(|d| *d).unwrap_or(0)
            ));
            if last.elapsed() >= Duration::from_millis(250) || p.done == p.total {
                last = Instant::now();
                if let Some(node) = worker.member.node() {
                    let net = worker.net.clone();
                    let req = Request::Progress {
                        task_id,
                        job,
                        done: p.done,
                        total: p.total,
                        loss: F32Bits::from_f32(p.loss),
                    };
                    tokio::spawn(async move { net.request(node, req).await });
                }
            }
        }
        match handle.await {
            Ok(Err(e)) if e.is_cancelled() => None,
            Ok(Ok(report)) => {
                if report.resumed_from > 0 {
                    tracing::info!(task = %task_id, segment = report.resumed_from, "resumed from a checkpoint");
                }
                Some(match bundle_manifest(&dir) {
                    Ok(manifest) => Request::Done {
                        task_id,
                        job,
                        commitment: report.commitment,
                        manifest,
                    },
                    Err(e) => Request::Failed {
                        task_id,
                        job,
                        reason: e.to_string(),
                    },
                })
            }
            Ok(Err(e)) => Some(Request::Failed {
                task_id,
                job,
                reason: e.to_string(),
            }),
            Err(e) => Some(Request::Failed {
                task_id,
                job,
                reason: e.to_string(),
            }),
        }
    } else {
        Some(Request::Failed {
            task_id,
            job,
            reason: lost_kept_state.unwrap_or_else(|| "could not fetch the task's inputs".into()),
        })
    };
    drop(held);
    worker.forget_task_turn(&task_id, turn);
    let Some(outcome) = outcome else {
        // Cancelled: nothing to report, and nobody will ask for its files.
        if let Ok(mut jobs) = worker.jobs.lock() {
            jobs.remove(&job);
        }
        let d = dir.clone();
        let _ = tokio::task::spawn_blocking(move || remove_job_dir(&d)).await;
        tracing::info!(task = %task_id, job, "cancelled run stopped and removed");
        worker.member.refresh().await;
        worker.status(format!(
            "idle | {} tasks done",
            worker.done.lock().map(|d| *d).unwrap_or(0)
        ));
        return;
    };
    let finished = matches!(outcome, Request::Done { .. });
    if let Ok(mut jobs) = worker.jobs.lock() {
        jobs.insert(
            job,
            (task_id, JobStatus::Finished(Box::new(outcome.clone()))),
        );
    }
    match worker.deliver(outcome).await {
        Some(Response::Ok) => {}
        other => {
            tracing::warn!(task = %task_id, answer = ?other, "the node did not take the result")
        }
    }
    if finished {
        if let Ok(mut d) = worker.done.lock() {
            *d += 1;
        }
        if worker.options.behavior == Behavior::WithholdLate {
            // The testing aid: the node has the commitment; now nothing the audits open is
            // there to fetch.
            let d = dir.clone();
            let withheld = tokio::task::spawn_blocking(move || {
                let bundle = Bundle::at(&d);
                let leaves = bundle.read_leaves()?.len() as u32;
                crate::exec::withhold(&bundle, &bundle.read_task()?.workload, leaves)
                    .map_err(anyhow::Error::from)
            })
            .await;
            tracing::warn!(task = %task_id, ?withheld, "withholding the committed result's files");
        }
    }
    // Its memory is free again and its bundle is on disk: the node sees both.
    worker.member.refresh().await;
    worker.status(format!(
        "idle | {} tasks done",
        worker.done.lock().map(|d| *d).unwrap_or(0)
    ));
}

/// `market-worker run`'s arguments (also used by `market-devnet` for its worker processes).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The market node's libp2p address, e.g. `/ip4/127.0.0.1/tcp/4001/p2p/12D3...`.
    #[arg(long)]
    pub market: Multiaddr,
    /// The worker's key file (0600); its account is also its peer id.
    #[arg(long)]
    pub key: PathBuf,
    /// Compute device: `cpu`, or `cuda` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Credits to stake from the account's balance while working.
    #[arg(long, default_value_t = 100)]
    pub stake: u64,
    /// Data directory (jobs, bundles, cached inputs; kept across restarts).
    #[arg(long, default_value = "market-worker-data")]
    pub data: PathBuf,
    /// Most bytes of input blobs (datasets, weights) to keep cached; the least recently used
    /// go first.
    #[arg(long, default_value_t = market_net::participant::DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,
    /// Listen addresses (for direct connections and hole punching).
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    pub listen: Vec<Multiaddr>,
    /// No live status line.
    #[arg(long)]
    pub quiet: bool,
    /// Take a reservation on the market node's relay, so this worker is reachable behind NAT
    /// (done anyway when AutoNAT finds the machine private).
    #[arg(long)]
    pub relay: bool,
    /// Testing aid: cheat with this strategy (see `exec --fault`) so audits can be tested.
    #[arg(long, default_value = "honest")]
    pub fault: Behavior,
    /// Keep a model loaded and answer API requests for it: `NAME=PATH` to a GGUF file the
    /// node also holds (upload it first, so answers can be audited). Repeatable.
    #[arg(long, value_parser = crate::serve::parse_serve_arg)]
    pub serve: Vec<(String, PathBuf)>,
    /// Credits per token (prompt and generated) asked for served answers.
    #[arg(long, default_value_t = 1)]
    pub price_per_token: u64,
    /// Requests answered at once, per served model.
    #[arg(long, default_value_t = 1)]
    pub serve_concurrency: u32,
    /// The profile served models run in (`repro`: bit-exact, audited exactly).
    #[arg(long, default_value = "repro", value_parser = parse_profile)]
    pub serve_profile: ExecutionProfile,
    /// Testing aid: fake served answers this way, so their audits can be tested.
    #[arg(long, value_enum)]
    pub serve_fault: Option<crate::serve::ServeFault>,
}

/// A profile by its name in a task's JSON (`repro`, `native`, `cuda`), for command lines.
pub fn parse_profile(s: &str) -> Result<ExecutionProfile, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?} is not a profile (repro, native or cuda)"))
}

/// Runs the worker daemon from command-line arguments, on a new tokio runtime.
pub fn run_cli(args: RunArgs) -> anyhow::Result<()> {
    market_compute::backend::check_device(&args.device)?;
    let identity = market_protocol::keyfile::load_identity(&args.key)?;
    let options = WorkerOptions {
        market: args.market,
        data_dir: args.data,
        cache_bytes: args.cache_bytes,
        behavior: args.fault,
        stake: args.stake,
        device: args.device,
        listen: args.listen,
        status_line: !args.quiet,
        relay: args.relay,
        serve: (!args.serve.is_empty()).then_some(crate::serve::ServeOptions {
            models: args.serve,
            price_per_token: args.price_per_token,
            concurrency: args.serve_concurrency,
            profile: args.serve_profile,
            fault: args.serve_fault,
            fault_every: 1,
        }),
    };
    tokio::runtime::Runtime::new()?.block_on(run(identity, options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn only_the_most_recent_job_directories_survive_a_restart() {
        let jobs = tempfile::tempdir().unwrap();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Written in a shuffled order, so names and creation order do not give the answer.
        for (i, age) in [3u64, 0, 7, 1, 9, 4, 2, 8, 6, 5].into_iter().enumerate() {
            let dir = jobs.path().join(format!("job-{i}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("state"), b"x").unwrap();
            std::fs::File::open(&dir)
                .unwrap()
                .set_modified(base - Duration::from_secs(age * 60))
                .unwrap();
        }
        std::fs::write(jobs.path().join("stray-file"), b"not a job").unwrap();
        sweep_job_dirs(jobs.path(), 4).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(jobs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // Ages 0..=3 minutes are jobs 1, 3, 6 and 0.
        assert_eq!(left, ["job-0", "job-1", "job-3", "job-6", "stray-file"]);
    }

    /// A burst of small jobs must not push out a result still under audit: a directory beyond
    /// the cap stays while it is younger than a day.
    #[test]
    fn recent_job_directories_beyond_the_cap_survive_a_restart() {
        let jobs = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (i, age) in [
            (0, 60u64),
            (1, 3600),
            (2, 10),
            (3, 7200),
            (4, 30),
            (5, 2 * 86_400),
        ] {
            let dir = jobs.path().join(format!("job-{i}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::File::open(&dir)
                .unwrap()
                .set_modified(now - Duration::from_secs(age))
                .unwrap();
        }
        sweep_job_dirs(jobs.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(jobs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // Only the two-day-old one goes.
        assert_eq!(left, ["job-0", "job-1", "job-2", "job-3", "job-4"]);
    }

    #[test]
    fn an_earlier_run_of_the_same_task_is_found_newest_first() {
        let jobs = tempfile::tempdir().unwrap();
        let task = TaskId(market_protocol::Hash::of(b"the task"));
        let other = TaskId(market_protocol::Hash::of(b"another task"));
        assert_eq!(earlier_run_dir(jobs.path(), &task), None);
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (name, age) in [
            (format!("{task}-17"), 5u64),
            (format!("{task}-900"), 1),
            (format!("{other}-3"), 0),
        ] {
            let dir = jobs.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::File::open(&dir)
                .unwrap()
                .set_modified(base - Duration::from_secs(age))
                .unwrap();
        }
        assert_eq!(
            earlier_run_dir(jobs.path(), &task),
            Some(jobs.path().join(format!("{task}-900")))
        );
    }
}
