//! The network's fault handling, with the node and its participants talking libp2p over
//! loopback. Participants run in this process (each with its own swarm) unless a test needs to
//! kill one: then it is a real process (`market-devnet worker`, i.e. `market-worker run`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use market_net::participant::{join, measure_capabilities};
use market_net::wire::{Reply, Request, Response};
use market_net::{Event, Net, NetConfig};
use market_node::config::NodeConfig;

use market_node::model::{TaskRecord, TaskState};
use market_node::p2p::P2pOptions;
use market_protocol::fixtures::training_task;
use market_protocol::*;
use market_worker::Behavior;

/// Runs a test on a runtime of its own and drops it without waiting for blocking work. Tests
/// end with runs or audits still in flight (raw participants sit on their assignments), and the
/// node waits for those on blocking threads until their deadlines (hours): dropping the
/// runtime normally would wait for them, and hang the test binary.
fn in_runtime(test: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(test)));
    rt.shutdown_background();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

type Market = common::Networked;

/// A networked node with its engine running.
async fn market(config: NodeConfig, options: P2pOptions) -> Market {
    let m = common::networked("network", config, options).await;
    tokio::spawn(m.node.clone().run_engine());
    m
}

fn key_file(m: &Market, who: &Identity, label: &str) -> std::path::PathBuf {
    let path = m.dir.path().join(format!("{label}.key"));
    if !path.exists() {
        market_protocol::keyfile::save_identity(who, &path).unwrap();
    }
    path
}

/// An in-process worker daemon.
async fn worker(m: &Market, label: &str) -> Identity {
    worker_with(m, label, Behavior::Honest).await
}

/// An in-process worker daemon with a (possibly cheating) `behavior`.
async fn worker_with(m: &Market, label: &str, behavior: Behavior) -> Identity {
    let id = Identity::from_test_label(label);
    m.node.fund("test", &id.account(), 1_000, 0).await.unwrap();
    let options = market_worker::daemon::WorkerOptions {
        market: m.addr.clone(),
        data_dir: m.dir.path().join(label),
        cache_bytes: market_net::participant::DEFAULT_CACHE_BYTES,
        behavior,
        stake: 200,
        device: "cpu".into(),
        listen: Vec::new(),
        status_line: false,
        // Exercise the relay reservation on the way (the node relays).
        relay: true,
        serve: None,
    };
    tokio::spawn(market_worker::daemon::run(id.clone(), options));
    id
}

/// An in-process verifier daemon.
async fn verifier(m: &Market, label: &str) -> Identity {
    common::verifier_daemon(&m.node, &m.addr, m.dir.path(), label, 100, None).await
}

/// A worker as its own process, killable.
fn worker_process(m: &Market, who: &Identity, label: &str) -> Child {
    worker_process_with(m, who, label, "honest")
}

/// [`worker_process`] with a (possibly cheating) `fault` strategy.
fn worker_process_with(m: &Market, who: &Identity, label: &str, fault: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_market-devnet"))
        .args([
            "worker",
            "--quiet",
            "--stake",
            "200",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--fault",
            fault,
        ])
        .arg("--market")
        .arg(m.addr.to_string())
        .arg("--key")
        .arg(key_file(m, who, label))
        .arg("--data")
        .arg(m.dir.path().join(label))
        .env("RUST_LOG", "market_worker=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_joined(m: &Market, workers: usize, verifiers: usize) {
    for _ in 0..600 {
        let p = m.dispatch.participants();
        let n = |r| p.values().filter(|x| x.role == r && x.connected).count();
        if n(Role::Worker) >= workers && n(Role::Verifier) >= verifiers {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("participants did not join");
}

async fn wait_connected(m: &Market, who: &AccountId, connected: bool) {
    for _ in 0..600 {
        if m.dispatch.participants().get(who).map(|p| p.connected) == Some(connected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{who} never became connected={connected}");
}

async fn post(m: &Market, nonce: u64, steps: u32) -> TaskId {
    let mut spec = training_task(&m.buyer, nonce);
    if let Workload::Training(t) = &mut spec.workload {
        t.steps = steps;
    }
    common::post_signed(&m.node, &m.buyer, spec).await
}

/// Waits until `task` runs on `worker` and has done at least `steps`; fails at once, with the
/// task's record, if the task ends first (a wait that cannot succeed any more says why).
async fn wait_running(m: &Market, task: &TaskId, steps: u32) -> AccountId {
    for _ in 0..2400 {
        let t = m.node.store.task(task).unwrap().unwrap();
        if let TaskState::Running { worker, done, .. } = t.state {
            if done >= steps {
                return worker;
            }
        }
        assert!(
            !t.state.is_final(),
            "task ended before it had done {steps} steps: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task never got going: {}", why_stuck(m, task));
}

/// What a wait on `task` that ran out should say: the task's record and what every
/// participant offers (a task nobody can hold waits in the queue without a word).
fn why_stuck(m: &Market, task: &TaskId) -> String {
    let t = m.node.store.task(task).unwrap();
    let offers: Vec<_> = m
        .dispatch
        .participants()
        .into_values()
        .map(|p| (p.role, p.connected, p.capabilities))
        .collect();
    format!("{t:?}; the participants (role, connected, offer) are {offers:?}")
}

/// The first event of `events` that `pick` takes (it answers the request), within two
/// minutes; past that the test fails with what `task` is waiting for, rather than hanging.
async fn next_event<T>(
    m: &Market,
    task: &TaskId,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let wait = async {
        while let Some(ev) = events.recv().await {
            if let Some(t) = pick(ev) {
                return Some(t);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(120), wait).await {
        Ok(Some(t)) => t,
        Ok(None) => panic!("the participant's network stopped: {}", why_stuck(m, task)),
        Err(_) => panic!("no such request in two minutes: {}", why_stuck(m, task)),
    }
}

async fn settled(m: &Market, task: &TaskId) -> TaskRecord {
    let t = m
        .node
        .wait_final(task, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Settled, "{t:?}");
    t
}

/// Credits are neither lost nor invented: every balance, stake and open escrow adds up to what
/// was minted; the ledger verifies; the buyer paid exactly once.
fn assert_conserved(m: &Market, accounts: &[AccountId], minted: u64) {
    let ledger = &m.node.ledger;
    ledger.verify().unwrap();
    let held: u64 = accounts
        .iter()
        .map(|a| ledger.balance(a).0 + ledger.stake(a).0)
        .sum();
    let escrowed: u64 = ledger
        .open_escrows()
        .iter()
        .map(|(_, e)| e.remaining.0)
        .sum();
    assert_eq!(held + escrowed, minted, "credits conserved");
}

#[test]
fn a_worker_that_loses_its_connection_reconnects_and_finishes_the_same_task() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        let w = worker(&m, "reconnecting worker").await;
        verifier(&m, "verifier a").await;
        wait_joined(&m, 1, 1).await;
        let task = post(&m, 1, 200).await;
        assert_eq!(wait_running(&m, &task, 20).await, w.account());
        // The node drops the connection; the worker notices, dials again and says hello.
        m.dispatch
            .net()
            .disconnect(w.account().to_peer_id())
            .unwrap();
        let t = settled(&m, &task).await;
        assert_eq!(t.attempts.len(), 1, "the same attempt finished: {t:?}");
        assert_eq!(t.attempts[0].worker, w.account());
        // Two joins, then a hello each time it tells the node what it offers now (its run
        // ended; its files went once the task settled).
        assert!(
            m.dispatch.participants()[&w.account()].hellos >= 2,
            "it joined again on a new connection"
        );
        assert!(m.node.ledger.balance(&w.account()).0 > 800, "and was paid");
        // Told the task settled, the worker drops the job's files: the disk it offers is free
        // again.
        for _ in 0..400 {
            if job_dirs_of(&m, "reconnecting worker", &task).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(job_dirs_of(&m, "reconnecting worker", &task).is_empty());
        // Settled, the task's bundle leaves the node's disk (right after the settlement is saved).
        let bundle = m.dir.path().join(format!("node/bundles/{task}-0"));
        for _ in 0..200 {
            if !bundle.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} is still there", bundle.display());
    });
}

#[test]
fn a_silent_verifier_is_replaced_after_the_timeout_and_a_verdict_signed_by_another_key_is_refused()
{
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            audit_timeout: Duration::from_secs(6),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        worker(&m, "worker for the silent test").await;
        let honest = verifier(&m, "honest verifier").await;

        // The silent verifier stakes far more, so it is drawn first. It acknowledges the audit,
        // sends a verdict signed with somebody else's key, and then never answers.
        let silent = Identity::from_test_label("silent verifier");
        m.node
            .fund("test", &silent.account(), 100_000, 0)
            .await
            .unwrap();
        let (net, mut events) = Net::start(&silent, NetConfig::default()).unwrap();
        let caps = stub_capabilities();
        let dialed = tokio::sync::watch::channel(None).0;
        join(
            &net,
            &m.addr,
            &dialed,
            &silent,
            Role::Verifier,
            &caps,
            50_000,
            1,
        )
        .await
        .unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, r, n) = (asked.clone(), refusals.clone(), net.clone());
        tokio::spawn(async move {
            let impostor = Identity::from_test_label("honest verifier");
            while let Some(ev) = events.recv().await {
                if let Event::Request {
                    peer,
                    request: Request::Audit { job },
                    responder,
                } = ev
                {
                    a.fetch_add(1, Ordering::SeqCst);
                    responder.send(Reply::of(Response::Ok));
                    let verdict = Verdict {
                        version: Version::CURRENT,
                        verifier: impostor.account(),
                        commitment_id: CommitmentId(Hash::of(b"whatever")),
                        challenge_id: ChallengeId(Hash::of(b"whatever")),
                        checked: Vec::new(),
                        outcome: VerdictOutcome::Pass,
                        compute_share_ppm: 0,
                    };
                    let forged = Signed::sign(verdict, &impostor).unwrap();
                    let reply = n
                        .request(
                            peer,
                            Request::Verdict {
                                task_id: job.task_id,
                                job: job.job,
                                verdict: forged,
                            },
                        )
                        .await
                        .unwrap();
                    r.lock().unwrap().push(reply.response);
                }
            }
        });
        wait_joined(&m, 1, 2).await;
        let task = post(&m, 2, 40).await;
        let t = settled(&m, &task).await;
        assert!(
            asked.load(Ordering::SeqCst) >= 1,
            "the silent verifier was drawn"
        );
        let refusals = refusals.lock().unwrap().clone();
        assert!(
            matches!(&refusals[..], [Response::Refused { reason }] if reason.contains("another verifier")),
            "{refusals:?}"
        );
        let verdicts = &t.attempts[0].verdicts;
        assert_eq!(verdicts.len(), 1);
        assert_eq!(
            verdicts[0].verifier,
            honest.account(),
            "the stand-in's verdict"
        );
        assert!(verdicts[0].passed);
    });
}

/// A participant that only joins and hands the node's requests to the test.
async fn raw_participant(
    m: &Market,
    label: &str,
    role: Role,
    capabilities: &Capabilities,
) -> tokio::sync::mpsc::UnboundedReceiver<Event> {
    let id = Identity::from_test_label(label);
    m.node.fund("test", &id.account(), 1_000, 0).await.unwrap();
    let (net, events) = Net::start(&id, NetConfig::default()).unwrap();
    let dialed = tokio::sync::watch::channel(None).0;
    join(&net, &m.addr, &dialed, &id, role, capabilities, 200, 1)
        .await
        .unwrap();
    events
}

/// The next task a raw worker is assigned (acknowledged, never run), if one comes within a
/// minute.
async fn next_assignment(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Option<TaskId> {
    let wait = async {
        while let Some(ev) = events.recv().await {
            if let Event::Request {
                request: Request::Assign { task_id, .. },
                responder,
                ..
            } = ev
            {
                responder.send(Reply::of(Response::Ok));
                return Some(task_id);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .ok()
        .flatten()
}

/// Asserts that no `kind` request arrives in `events` for `window`: watched throughout, so a
/// request sent late is caught, not missed by one look after a fixed sleep.
async fn assert_not_sent_within(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    kind: &str,
    why: &str,
    window: Duration,
) {
    let deadline = std::time::Instant::now() + window;
    while std::time::Instant::now() < deadline {
        assert_not_sent(events, kind, why);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_not_sent(events, kind, why);
}

/// Asserts that no `kind` request (by [`Request::name`]) is waiting in `events`.
fn assert_not_sent(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    kind: &str,
    why: &str,
) {
    while let Ok(ev) = events.try_recv() {
        if let Event::Request { request, .. } = ev {
            assert_ne!(request.name(), kind, "{why}");
        }
    }
}

/// What a participant the test drives by hand announces: this machine's profiles and speed,
/// but memory and disk to spare, so that no task waits in the queue because the machine
/// running the tests is short of free disk or memory at the moment it joins (such a
/// participant computes and stores nothing).
fn stub_capabilities() -> Capabilities {
    Capabilities {
        memory_bytes: 1 << 36,
        disk_bytes: 1 << 40,
        ..measure_capabilities("cpu", std::path::Path::new("."))
    }
}

/// Capabilities announcing only `profiles`.
fn running(profiles: &[ExecutionProfile]) -> Capabilities {
    Capabilities {
        profiles: profiles.iter().map(|p| p.name().to_owned()).collect(),
        ..stub_capabilities()
    }
}

#[test]
fn a_task_waits_for_a_worker_that_runs_its_profile_without_holding_up_the_queue() {
    in_runtime(async {
        let m = market(NodeConfig::default(), P2pOptions::default()).await;
        let repro_only = running(&[ExecutionProfile::Repro]);
        let native_only = running(&[ExecutionProfile::Native]);
        let _v1 = raw_participant(&m, "repro verifier", Role::Verifier, &repro_only).await;
        let mut w1 = raw_participant(&m, "repro worker", Role::Worker, &repro_only).await;
        wait_joined(&m, 1, 1).await;

        // First in the queue: a `native` task, which nobody here runs. The `repro` task behind it
        // goes ahead, and the native one is never handed to the repro-only worker.
        let mut spec = training_task(&m.buyer, 30);
        spec.profile = ExecutionProfile::Native;
        let native = common::post_signed(&m.node, &m.buyer, spec).await;
        let repro = post(&m, 31, 20).await;
        assert_eq!(next_assignment(&mut w1).await, Some(repro));
        let waiting = m.node.store.task(&native).unwrap().unwrap();
        assert_eq!(waiting.state, TaskState::Queued);
        assert!(waiting.attempts.is_empty(), "{:?}", waiting.attempts);
        assert_eq!(
            m.node.view(&waiting).waiting_for.as_deref(),
            Some("a staked worker that runs the native profile"),
            "the buyer is told why"
        );

        // A native worker alone is not enough (its result could not be audited); once a native
        // verifier joins too, the task goes to the native worker.
        let mut w2 = raw_participant(&m, "native worker", Role::Worker, &native_only).await;
        wait_joined(&m, 2, 1).await;
        assert_eq!(
            m.node.view(&waiting).waiting_for.as_deref(),
            Some("a staked verifier that runs the native profile")
        );
        let _v2 = raw_participant(&m, "native verifier", Role::Verifier, &native_only).await;
        assert_eq!(next_assignment(&mut w2).await, Some(native));
        let t = m.node.store.task(&native).unwrap().unwrap();
        assert_eq!(t.attempts.len(), 1);
        assert_eq!(
            t.attempts[0].worker,
            Identity::from_test_label("native worker").account()
        );
        assert_not_sent_within(
            &mut w1,
            "assign",
            "the repro-only worker was handed the native task",
            Duration::from_secs(2),
        )
        .await;
    });
}

#[test]
fn tasks_run_at_once_on_different_workers_and_a_busy_worker_gets_no_second_one() {
    in_runtime(async {
        let m = market(NodeConfig::default(), P2pOptions::default()).await;
        verifier(&m, "verifier for parallel tasks").await;
        let caps = stub_capabilities();
        // Workers that take their assignment and then sit on it: only running tasks at once can
        // hand all of them one.
        let mut workers = Vec::new();
        for i in 0..3 {
            let label = format!("parallel worker {i}");
            let events = raw_participant(&m, &label, Role::Worker, &caps).await;
            workers.push((Identity::from_test_label(&label).account(), events));
        }
        wait_joined(&m, 3, 1).await;
        let mut tasks = Vec::new();
        for nonce in 40..44 {
            tasks.push(post(&m, nonce, 20).await);
        }
        let mut assigned = Vec::new();
        for (account, events) in &mut workers {
            let task = next_assignment(events)
                .await
                .expect("every worker was handed a task while the others still ran theirs");
            let t = m.node.store.task(&task).unwrap().unwrap();
            assert!(
                matches!(t.state, TaskState::Running { worker, .. } if worker == *account),
                "{:?}",
                t.state
            );
            assert!(m.node.is_busy(account));
            assigned.push(task);
        }
        assigned.sort();
        assigned.dedup();
        assert_eq!(assigned.len(), 3, "three different tasks");
        // The oldest three went out; the fourth waits for a worker to become free.
        assert_eq!(
            &tasks[..3]
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            &assigned.iter().copied().collect()
        );
        // Watched for 3 s, so an assignment sent late is caught, not missed by a look at one
        // instant: no busy worker is handed the fourth task.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            for (_, events) in &mut workers {
                assert_not_sent(events, "assign", "a busy worker was handed a second task");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let fourth = m.node.store.task(&tasks[3]).unwrap().unwrap();
        assert_eq!(fourth.state, TaskState::Queued);
        assert!(fourth.attempts.is_empty());
        assert_eq!(
            m.node.view(&fourth).waiting_for.as_deref(),
            Some("a worker to finish its current task")
        );
    });
}

#[test]
fn a_verifier_is_handed_one_audit_at_a_time_while_tasks_run_in_parallel() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        worker(&m, "first of two workers").await;
        worker(&m, "second of two workers").await;
        // The only verifier takes its audits and sits on them.
        let mut verifier = raw_participant(
            &m,
            "one-at-a-time verifier",
            Role::Verifier,
            &stub_capabilities(),
        )
        .await;
        wait_joined(&m, 2, 1).await;
        let tasks = [post(&m, 50, 20).await, post(&m, 51, 20).await];
        let mut audits = Vec::new();
        // Both tasks finish running (in parallel) and wait for their audit.
        let mut overlapped = false;
        for _ in 0..2400 {
            while let Ok(ev) = verifier.try_recv() {
                if let Event::Request {
                    request: Request::Audit { job },
                    responder,
                    ..
                } = ev
                {
                    responder.send(Reply::of(Response::Ok));
                    audits.push(job.task_id);
                }
            }
            let auditing = tasks
                .iter()
                .filter(|id| {
                    matches!(
                        m.node.store.task(id).unwrap().unwrap().state,
                        TaskState::Auditing { .. }
                    )
                })
                .count();
            if auditing == 2 && !audits.is_empty() {
                overlapped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            overlapped,
            "within 60 s both tasks never waited for their audit at once: {audits:?}"
        );
        // While the first audit is outstanding, the second is not sent: watched for 5 s, so a
        // second audit sent late is caught, not missed by a look at one instant.
        let second = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(ev) = verifier.recv().await {
                if let Event::Request {
                    request: Request::Audit { job },
                    ..
                } = ev
                {
                    return Some(job.task_id);
                }
            }
            None
        })
        .await;
        assert!(
            !matches!(second, Ok(Some(_))),
            "a second audit went to the busy verifier: {second:?}"
        );
        assert_eq!(audits.len(), 1, "{audits:?}");
        assert!(tasks.contains(&audits[0]));
    });
}

#[test]
fn a_hello_signed_by_another_key_is_refused() {
    in_runtime(async {
        let m = market(NodeConfig::default(), P2pOptions::default()).await;
        let me = Identity::from_test_label("speaker");
        let other = Identity::from_test_label("spoken for");
        m.node
            .fund("test", &other.account(), 1_000, 0)
            .await
            .unwrap();
        let (net, _events) = Net::start(&me, NetConfig::default()).unwrap();
        let node = net.dial(m.addr.clone()).await.unwrap();
        let hello = Hello {
            version: Version::CURRENT,
            account: other.account(),
            node: m.node.operator.account(),
            role: Role::Worker,
            capabilities: stub_capabilities(),
            stake: Credits(500),
            session: 7,
        };
        let reply = net
            .request(
                node,
                Request::Hello {
                    hello: Signed::sign(hello, &other).unwrap(),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(&reply.response, Response::Refused { reason } if reason.contains("this connection is")),
            "{reply:?}"
        );
        assert!(m.dispatch.participants().is_empty(), "nobody joined");
        assert_eq!(
            m.node.ledger.stake(&other.account()).0,
            0,
            "nothing staked for the victim"
        );
    });
}

fn stderr_of(mut child: Child) -> String {
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_worker_killed_mid_task_resumes_after_a_restart_or_is_replaced() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            // Long enough for a restarted worker process to rejoin on a loaded CI machine.
            run_grace: Duration::from_secs(10),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        verifier(&m, "verifier k").await;
        let a = Identity::from_test_label("killed worker a");
        let b = Identity::from_test_label("worker b");
        for w in [&a, &b] {
            m.node.fund("test", &w.account(), 1_000, 0).await.unwrap();
        }
        let minted = 10_000 + 1_000 * 2 + 1_000;
        let everyone = [
            m.buyer.account(),
            a.account(),
            b.account(),
            Identity::from_test_label("verifier k").account(),
            m.node.operator.account(),
        ];

        // 1. Killed and restarted within the grace period: the same job resumes from its last
        //    checkpoint.
        // Long enough that the worker is surely mid-run when it is killed, however the machine
        // is loaded.
        let child = worker_process(&m, &a, "a");
        wait_joined(&m, 1, 1).await;
        let task = post(&m, 3, 1000).await;
        wait_running(&m, &task, 30).await;
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(m.node.store.task(&task).unwrap().unwrap().state, TaskState::Running { done, .. } if done < 1000),
            "killed mid-run"
        );
        let child = worker_process(&m, &a, "a");
        let t = settled(&m, &task).await;
        let log = stderr_of(child);
        assert_eq!(t.attempts.len(), 1, "resumed, not re-assigned: {t:?}");
        assert!(log.contains("resumed from a checkpoint"), "{log}");
        assert_conserved(&m, &everyone, minted);

        // 2. Killed and not coming back: after the grace period the task goes to another worker.
        wait_connected(&m, &a.account(), false).await;
        let child = worker_process(&m, &a, "a");
        wait_connected(&m, &a.account(), true).await;
        let task = post(&m, 4, 1000).await;
        assert_eq!(wait_running(&m, &task, 30).await, a.account());
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        let replacement = worker_process(&m, &b, "b");
        let t = settled(&m, &task).await;
        drop(stderr_of(replacement));
        assert_eq!(t.attempts.len(), 2, "{t:?}");
        assert_eq!(t.attempts[0].worker, a.account());
        assert!(!t.attempts[0].accepted);
        assert_eq!(t.attempts[1].worker, b.account());
        assert!(t.attempts[1].accepted);
        assert_conserved(&m, &everyone, minted);
        let escrow = m.node.ledger.escrow_of(&task);
        assert!(
            escrow.is_none_or(|e| e.remaining.0 == 0),
            "escrow fully settled: {escrow:?}"
        );
    });
}

#[test]
fn a_networked_verifier_is_handed_a_ringer_and_catches_it() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ringer_rate_ppm: 1_000_000,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        worker(&m, "worker r").await;
        let v = verifier(&m, "verifier r").await;
        wait_joined(&m, 1, 1).await;
        let task = post(&m, 5, 40).await;
        let t = settled(&m, &task).await;
        // Two audits went over the network for this task: the real bundle and the planted one,
        // each fetched from the node as openings and re-executed by the verifier process code.
        let timing = m
            .dispatch
            .timings()
            .into_iter()
            .find(|x| x.task_id == Some(task))
            .unwrap();
        assert_eq!(timing.audits.len(), 2, "{timing:?}");
        assert!(t.attempts[0].verdicts[0].passed);
        assert_eq!(
            m.node.ledger.stake(&v.account()).0,
            100,
            "it failed the ringer: not slashed"
        );
        assert!(m.node.ledger.reputation(&v.account()) >= 0);
        m.node.ledger.verify().unwrap();
    });
}

/// The job directories of `task` in a worker's data directory.
fn job_dirs_of(m: &Market, label: &str, task: &TaskId) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(m.dir.path().join(label).join("jobs")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{task}-"))
        })
        .collect()
}

#[test]
fn a_worker_the_node_gave_up_on_stops_computing_and_takes_the_next_task() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            // The long task cannot commit in time; the short one can. Long enough for the run
            // to start and report steps when every test of this file shares the two cores (6 s
            // was not, once, in CI: the node gave up before the first progress report).
            max_run: Duration::from_secs(20),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        let label = "worker given up on";
        let w = worker(&m, label).await;
        verifier(&m, "verifier c").await;
        wait_joined(&m, 1, 1).await;
        // A quarter of an hour of steps on this machine: only a cancel stops it in time. Few
        // checkpoints: at the fixture's interval of 10 its 20,000 states would need 6.5 GB of
        // free disk, and a worker that offers less never gets the task (it waited in the
        // queue, once, in CI).
        let mut spec = training_task(&m.buyer, 50);
        if let Workload::Training(t) = &mut spec.workload {
            t.steps = 200_000;
            t.checkpoint_interval = 2_000;
        }
        let long = common::post_signed(&m.node, &m.buyer, spec).await;
        assert_eq!(wait_running(&m, &long, 1).await, w.account());
        assert_eq!(
            job_dirs_of(&m, label, &long).len(),
            1,
            "the run has its directory"
        );
        let hellos = m.dispatch.participants()[&w.account()].hellos;
        // Past `max_run` the node fails the attempt; with no other worker it rejects the task.
        let t = m
            .node
            .wait_final(&long, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(matches!(t.state, TaskState::Rejected { .. }), "{t:?}");
        let given_up = std::time::Instant::now();
        // The worker stops and drops the job's files; an uncancelled run would keep writing
        // checkpoints into that directory for hours.
        while !job_dirs_of(&m, label, &long).is_empty() {
            assert!(
                given_up.elapsed() < Duration::from_secs(20),
                "the worker still runs the job the node gave up on"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        eprintln!("stopped {:?} after the node gave up", given_up.elapsed());
        // Its memory and disk free again, it tells the node what it offers now.
        for _ in 0..400 {
            if m.dispatch.participants()[&w.account()].hellos > hellos {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(m.dispatch.participants()[&w.account()].hellos > hellos);
        // A window for a late write to show: what did not happen has no event to wait for.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            job_dirs_of(&m, label, &long).is_empty(),
            "nothing writes into the cancelled job any more"
        );
        // Free again, it runs the next task to settlement, alone on its cores.
        let short = post(&m, 51, 20).await;
        let t = settled(&m, &short).await;
        assert_eq!(t.attempts[0].worker, w.account());
    });
}

#[test]
fn a_worker_is_told_to_cancel_now_on_its_reports_and_when_it_comes_back() {
    in_runtime(async {
        let options = P2pOptions {
            max_run: Duration::from_secs(3),
            ..P2pOptions::default()
        };
        let m = market(NodeConfig::default(), options).await;
        let caps = stub_capabilities();
        let _v = raw_participant(&m, "cancel verifier", Role::Verifier, &caps).await;
        let me = Identity::from_test_label("silent worker");
        m.node.fund("test", &me.account(), 1_000, 0).await.unwrap();
        let (net, mut events) = Net::start(&me, NetConfig::default()).unwrap();
        let dialed = tokio::sync::watch::channel(None).0;
        join(&net, &m.addr, &dialed, &me, Role::Worker, &caps, 200, 1)
            .await
            .unwrap();
        let node = dialed.borrow().unwrap();
        wait_joined(&m, 1, 1).await;
        let task = post(&m, 60, 20).await;
        // Takes the assignment, then neither reports nor commits.
        let job = next_event(&m, &task, &mut events, |ev| match ev {
            Event::Request {
                request: Request::Assign { task_id, job, .. },
                responder,
                ..
            } => {
                assert_eq!(task_id, task);
                responder.send(Reply::of(Response::Ok));
                Some(job)
            }
            _ => None,
        })
        .await;
        // The next cancel from the node, answered `ok` (taken) or refused (as a worker that
        // was away would never have answered).
        async fn next_cancel(
            events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
            take: bool,
        ) -> (TaskId, u64) {
            let wait = async {
                loop {
                    if let Event::Request {
                        request: Request::Cancel { task_id, job, .. },
                        responder,
                        ..
                    } = events.recv().await.unwrap()
                    {
                        responder.send(if take {
                            Reply::of(Response::Ok)
                        } else {
                            Reply::refused("busy")
                        });
                        return (task_id, job);
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .expect("no cancel came")
        }
        let progress = |done| Request::Progress {
            task_id: task,
            job,
            done,
            total: 20,
            loss: F32Bits::from_f32(1.0),
        };
        // At the deadline; not taken.
        assert_eq!(next_cancel(&mut events, false).await, (task, job));
        // Any later report for the job is refused and answered with the cancel again.
        let reply = net.request(node, progress(3)).await.unwrap();
        assert!(
            matches!(&reply.response, Response::Refused { reason } if reason.contains("gave up")),
            "{reply:?}"
        );
        assert_eq!(next_cancel(&mut events, false).await, (task, job));
        // So is a hello on a new connection (a worker away when the node gave up); taken now.
        net.disconnect(node).unwrap();
        wait_connected(&m, &me.account(), false).await;
        join(&net, &m.addr, &dialed, &me, Role::Worker, &caps, 200, 2)
            .await
            .unwrap();
        assert_eq!(next_cancel(&mut events, true).await, (task, job));
        // Taken, it is not sent again: not on the next hello, nor for a report. (A window
        // for a late resend to arrive: a message not sent has no event to wait for.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        let node = dialed.borrow().unwrap();
        let reply = net.request(node, progress(4)).await.unwrap();
        assert!(
            matches!(&reply.response, Response::Refused { reason } if reason == "no such job"),
            "{reply:?}"
        );
        join(&net, &m.addr, &dialed, &me, Role::Worker, &caps, 200, 3)
            .await
            .unwrap();
        assert_not_sent_within(
            &mut events,
            "cancel",
            "a cancel the worker took was sent again",
            Duration::from_secs(2),
        )
        .await;
        // Another worker's report for the job is not a reason to cancel anything.
        let stranger = Identity::from_test_label("stranger worker");
        m.node
            .fund("test", &stranger.account(), 1_000, 0)
            .await
            .unwrap();
        let (snet, mut sevents) = Net::start(&stranger, NetConfig::default()).unwrap();
        let sdialed = tokio::sync::watch::channel(None).0;
        join(
            &snet,
            &m.addr,
            &sdialed,
            &stranger,
            Role::Worker,
            &caps,
            200,
            1,
        )
        .await
        .unwrap();
        let reply = snet
            .request(
                sdialed.borrow().unwrap(),
                Request::Failed {
                    task_id: task,
                    job,
                    reason: "not mine".into(),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(&reply.response, Response::Refused { reason } if reason == "no such job"),
            "{reply:?}"
        );
        assert_not_sent_within(
            &mut sevents,
            "cancel",
            "a stranger was sent a cancel",
            Duration::from_secs(2),
        )
        .await;
    });
}

#[test]
fn a_task_too_big_for_every_worker_waits_and_says_so_then_goes_to_one_that_holds_it() {
    in_runtime(async {
        let m = market(NodeConfig::default(), P2pOptions::default()).await;
        let caps = running(&[ExecutionProfile::Repro]);
        let task = post(&m, 70, 20).await;
        let needs = m.node.store.task(&task).unwrap().unwrap().needs;
        // Estimated at post: a process, a dataset, checkpoints.
        assert!(needs.memory_bytes > 64 << 20, "{needs:?}");
        assert!(needs.disk_bytes > 3 * 1024, "{needs:?}");
        assert_eq!(
            m.node
                .view(&m.node.store.task(&task).unwrap().unwrap())
                .needs,
            needs
        );

        // A verifier with too little memory to re-execute it does not count.
        let small_verifier = Capabilities {
            memory_bytes: needs.memory_bytes - 1,
            ..caps.clone()
        };
        let _v1 = raw_participant(&m, "small verifier", Role::Verifier, &small_verifier).await;
        // Workers short of memory, or of disk, by one byte each.
        let short_of_memory = Capabilities {
            memory_bytes: needs.memory_bytes - 1,
            disk_bytes: needs.disk_bytes,
            ..caps.clone()
        };
        let short_of_disk = Capabilities {
            memory_bytes: needs.memory_bytes,
            disk_bytes: needs.disk_bytes - 1,
            ..caps.clone()
        };
        let mut w1 =
            raw_participant(&m, "worker short of memory", Role::Worker, &short_of_memory).await;
        let mut w2 =
            raw_participant(&m, "worker short of disk", Role::Worker, &short_of_disk).await;
        wait_joined(&m, 2, 1).await;
        let waiting = |m: &Market| {
            m.node
                .view(&m.node.store.task(&task).unwrap().unwrap())
                .waiting_for
                .unwrap_or_default()
        };
        let says = waiting(&m);
        assert!(
            says.contains("a staked worker that runs the repro profile with")
                && says.contains("no worker here offers that much"),
            "{says}"
        );
        // A worker that holds it joins; the verifier is still too small.
        let exactly = Capabilities {
            memory_bytes: needs.memory_bytes,
            disk_bytes: needs.disk_bytes,
            ..caps.clone()
        };
        let mut w3 = raw_participant(&m, "worker that holds it", Role::Worker, &exactly).await;
        wait_joined(&m, 3, 1).await;
        let says = waiting(&m);
        assert!(
            says.contains("a staked verifier that runs the repro profile with")
                && says.contains("no verifier here offers that much"),
            "{says}"
        );
        // A window for a wrong assignment to happen: one that does not has no event.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(m
            .node
            .store
            .task(&task)
            .unwrap()
            .unwrap()
            .attempts
            .is_empty());
        // With a verifier that can re-execute it, the task goes to the worker that holds it.
        let _v2 = raw_participant(&m, "big verifier", Role::Verifier, &caps).await;
        assert_eq!(next_assignment(&mut w3).await, Some(task));
        for events in [&mut w1, &mut w2] {
            assert_not_sent_within(
                events,
                "assign",
                "a worker that cannot hold the task was handed it",
                Duration::from_secs(1),
            )
            .await;
        }
    });
}

/// The merged rounds of pooled task `id` (posted as `spec`), after checking that their states
/// are, bit for bit, those of the all-honest run in one process; with the task's job.
fn merged_as_honest(
    m: &Market,
    spec: &TaskSpec,
    id: &TaskId,
) -> (
    market_compute::TrainingJob,
    Vec<market_node::model::RoundSummary>,
) {
    let job = market_compute::TrainingJob::from_spec(spec, &market_compute::NoBlobs).unwrap();
    let expected: Vec<_> = market_compute::pool::run_locally(&job, |_| {})
        .unwrap()
        .globals
        .iter()
        .map(|g| market_compute::pool::global_hash(g, &job.layout).unwrap())
        .collect();
    let history = m.node.pool_history(id).unwrap();
    assert_eq!(
        history.iter().map(|h| h.global).collect::<Vec<_>>(),
        expected
    );
    (job, history)
}

/// Issue 14, faults: a worker killed in the middle of its slot-round loses the slot to another
/// worker (not to its round mate), the round completes, the merged states are the all-honest
/// run's, each slot-round is paid once, and no credit is lost or invented.
#[test]
fn a_worker_killed_mid_round_loses_its_slot_and_the_pool_ends_as_an_honest_one() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            run_grace: Duration::from_secs(2),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        verifier(&m, "pool verifier").await;
        let killed = Identity::from_test_label("pool killed worker");
        m.node
            .fund("test", &killed.account(), 1_000, 0)
            .await
            .unwrap();
        let mut child = worker_process(&m, &killed, "killed");
        wait_joined(&m, 1, 1).await;
        worker(&m, "pool worker b").await;
        wait_joined(&m, 2, 1).await;
        let mut spec = training_task(&m.buyer, 40);
        if let Workload::Training(t) = &mut spec.workload {
            t.steps = 2 * 300;
            t.checkpoint_interval = 50;
            t.pool = Some(market_protocol::fixtures::pool(2, 2, 300));
        }
        let posted = m
            .node
            .post_task(Signed::sign(spec.clone(), &m.buyer).unwrap())
            .await
            .unwrap();
        // The killed worker (first to join) gets a slot of round 0; kill it mid-run.
        let mut victim = None;
        for _ in 0..2400 {
            let t = m.node.store.task(&posted.id).unwrap().unwrap();
            for sid in &t.rounds().unwrap().slot_tasks {
                let s = m.node.store.task(sid).unwrap().unwrap();
                if matches!(s.state, TaskState::Running { worker, done, .. } if worker == killed.account() && done >= 20)
                {
                    victim = Some(s.id);
                }
            }
            if victim.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let victim = victim.expect("the first worker never ran a slot");
        child.kill().unwrap();
        child.wait().unwrap();
        // A third worker joins; the slot cannot go back to its round mate.
        worker(&m, "pool worker c").await;
        let t = m
            .node
            .wait_final(&posted.id, Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
        let slot = m.node.store.task(&victim).unwrap().unwrap();
        assert_eq!(slot.attempts.len(), 2, "{slot:?}");
        assert_eq!(slot.attempts[0].worker, killed.account());
        assert_eq!(
            slot.attempts[1].worker,
            Identity::from_test_label("pool worker c").account()
        );
        merged_as_honest(&m, &spec, &t.id);
        // One release per slot-round, none to the killed worker.
        let head = m.node.ledger.head().seq;
        let releases: Vec<AccountId> = (0..=head)
            .filter_map(
                |s| match m.node.ledger.entry(s).unwrap().unwrap().body.kind {
                    market_ledger::EntryKind::Release {
                        task_id, worker, ..
                    } if task_id == posted.id => Some(worker),
                    _ => None,
                },
            )
            .collect();
        assert_eq!(releases.len(), 4, "{releases:?}");
        assert!(!releases.contains(&killed.account()));
        // The worker that produced nothing is slashed to the operator, never to the buyer (who
        // must not profit from workers failing its task).
        let abandon_payees: Vec<AccountId> = (0..=head)
            .filter_map(
                |s| match m.node.ledger.entry(s).unwrap().unwrap().body.kind {
                    market_ledger::EntryKind::Slash { account, to, .. }
                        if account == killed.account() =>
                    {
                        Some(to)
                    }
                    _ => None,
                },
            )
            .collect();
        assert_eq!(abandon_payees, [m.node.operator.account()]);
        let everyone = [
            m.buyer.account(),
            killed.account(),
            Identity::from_test_label("pool worker b").account(),
            Identity::from_test_label("pool worker c").account(),
            Identity::from_test_label("pool verifier").account(),
            m.node.operator.account(),
        ];
        assert_conserved(&m, &everyone, 10_000 + 4 * 1_000);
        assert_eq!(m.node.ledger.escrow_of(&posted.id).unwrap().remaining.0, 0);
        // Each settled slot-round frees its worker's disk (the `settled` names the pool).
        for label in ["pool worker b", "pool worker c"] {
            let mut left = job_dirs_of(&m, label, &posted.id);
            for _ in 0..200 {
                if left.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                left = job_dirs_of(&m, label, &posted.id);
            }
            assert!(left.is_empty(), "{label} keeps {left:?}");
        }
    });
}

/// Issue 14, communication: a pooled slot goes back to the worker whose run of it was merged,
/// and that worker keeps its final state, so the slot's next start (the merged parameters with
/// the slot's own optimizer moments) costs it only the chunks of the parameters: the moments'
/// chunks are copied from the kept state, each checked against the start's entry, whose root is
/// the start's hash. The merged states are still the all-honest run's, bit for bit.
#[test]
fn a_slot_that_stays_on_its_worker_fetches_only_the_merged_parameters() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        verifier(&m, "stay verifier").await;
        worker(&m, "stay worker a").await;
        worker(&m, "stay worker b").await;
        wait_joined(&m, 2, 1).await;
        // A state of 9.6 MB (AdamW: parameters and two moments of 799,488 values each), so
        // each part spans whole chunks.
        let spec = wide_pool(&m, 41, 2, 4, 2);
        let posted = m
            .node
            .post_task(Signed::sign(spec.clone(), &m.buyer).unwrap())
            .await
            .unwrap();
        let t = m
            .node
            .wait_final(&posted.id, Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
        let (job, history) = merged_as_honest(&m, &spec, &t.id);
        // Each slot stayed on its worker, each slot-round ran once.
        for k in 0..2 {
            assert_eq!(history[0].slots[k].worker, history[1].slots[k].worker);
        }
        let state_size = job.initial_state().to_bytes(&job.layout).unwrap().len() as u64;
        let whole_0: u64 = history[0]
            .slots
            .iter()
            .map(|s| {
                let slot = m.node.store.task(&s.task).unwrap().unwrap();
                assert_eq!(slot.attempts.len(), 1);
                let start = BlobId(slot.slot().unwrap().start.0);
                std::fs::metadata(m.node.blobs.path(&start)).unwrap().len()
            })
            .sum();
        assert_eq!(whole_0, 2 * state_size);
        // Round 0's starts went whole (no worker held anything of them); round 1's moved the
        // parameters' chunks only: at most the parameters plus one chunk on each side.
        let sent = m.dispatch.blob_bytes_sent();
        let round_1 = sent - whole_0;
        let params = 4 * job.layout.total() as u64;
        let chunk = u64::from(market_net::wire::CHUNK_BYTES);
        assert!(
            round_1 <= 2 * (params + 2 * chunk),
            "round 1 sent {round_1} bytes for starts of {state_size} each; parameters are {params}"
        );
        // The other way, the node fetched of each slot's final state its parameters only (and
        // the leaves and losses): never its moments.
        let finals: Vec<u64> = m
            .dispatch
            .timings()
            .iter()
            .filter(|r| r.task_id == Some(t.id))
            .map(|r| r.bytes)
            .collect();
        assert_eq!(finals.len(), 4, "{finals:?}");
        for bytes in &finals {
            assert!(
                *bytes <= params + 2 * chunk && *bytes * 2 < state_size,
                "a final state fetch moved {bytes} bytes of {state_size}; parameters are {params}"
            );
        }
        // Once the pool is over, nothing is held in part any more.
        let partial = m.dir.path().join("node/blobs/partial");
        assert_eq!(std::fs::read_dir(partial).unwrap().count(), 0);
    });
}

/// Issue 14: a slot's worker that lost the final state it kept (its disk was cleaned between
/// rounds) cannot assemble a start held in part; it says so, is not slashed for it, is not
/// barred from its slot (its round mate holds the other one: two workers for two slots), and
/// the node makes the start whole (from the worker's bundle while it still has it, or else
/// with zero moments, recorded) before the slot runs again, on the same worker. The pool ends.
#[test]
fn a_slot_worker_that_lost_its_kept_state_is_not_slashed_and_the_slot_goes_on() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            state_wait: Duration::from_secs(3),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        verifier(&m, "forgetful verifier").await;
        worker(&m, "forgetful worker a").await;
        worker(&m, "forgetful worker b").await;
        wait_joined(&m, 2, 1).await;
        let spec = wide_pool(&m, 44, 2, 4, 2);
        let posted = m
            .node
            .post_task(Signed::sign(spec.clone(), &m.buyer).unwrap())
            .await
            .unwrap();
        // Every state worker a keeps goes as soon as it is there, until the pool ends.
        let kept = [m.dir.path().join("forgetful worker a").join("pools")];
        for _ in 0..60_000 {
            for dir in &kept {
                for f in std::fs::read_dir(dir).into_iter().flatten() {
                    let _ = std::fs::remove_file(f.unwrap().path());
                }
            }
            let t = m.node.store.task(&posted.id).unwrap().unwrap();
            if t.state.is_final() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = m
            .node
            .wait_final(&posted.id, Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
        let history = m.node.pool_history(&t.id).unwrap();
        let a = Identity::from_test_label("forgetful worker a").account();
        for (before, s) in history[0].slots.iter().zip(&history[1].slots) {
            let slot = m.node.store.task(&s.task).unwrap().unwrap();
            if before.worker != a {
                assert_eq!(slot.attempts.len(), 1, "{slot:?}");
                continue;
            }
            assert_eq!(slot.attempts.len(), 2, "{slot:?}");
            // Excused, so it may take its slot again: barred, it would have ended the pool.
            assert!(slot.attempts[0].excused && !slot.attempts[0].result_failed);
            assert_eq!(slot.attempts[1].worker, a);
            assert!(slot.attempts[1].accepted);
        }
        let head = m.node.ledger.head().seq;
        let slashes = (0..=head)
            .filter(|s| {
                matches!(
                    m.node.ledger.entry(*s).unwrap().unwrap().body.kind,
                    market_ledger::EntryKind::Slash { .. }
                )
            })
            .count();
        assert_eq!(slashes, 0);
    });
}

/// Issue 14, cheating, with states held in part: the worker that held a slot in round 0 cheats
/// in round 1 (it came back as a cheater). Its run is caught before the merge, it is slashed,
/// and the slot moves to another worker, whose start needs the moments of the cheater's
/// honest round-0 state: the node fetches them from the cheater, which keeps that state beside
/// its later (cheating) one, and the merged states are the all-honest run's, bit for bit.
#[test]
fn a_holder_that_cheats_in_round_1_is_caught_and_its_slot_moves_with_its_moments() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        verifier(&m, "turncoat verifier").await;
        let holder = Identity::from_test_label("turncoat");
        m.node
            .fund("test", &holder.account(), 1_000, 0)
            .await
            .unwrap();
        let mut child = worker_process(&m, &holder, "turncoat");
        wait_joined(&m, 1, 1).await;
        worker(&m, "turncoat's mate").await;
        wait_joined(&m, 2, 1).await;
        // Three rounds: round 1 is not the last, so the cheater keeps its (cheating) final
        // state of it beside its round-0 one.
        let spec = wide_pool(&m, 45, 3, 4, 2);
        let posted = m
            .node
            .post_task(Signed::sign(spec.clone(), &m.buyer).unwrap())
            .await
            .unwrap();
        // Once its round-0 run is recorded (its final state kept), it comes back a cheater.
        let mut first = None;
        for _ in 0..24_000 {
            let t = m.node.store.task(&posted.id).unwrap().unwrap();
            for sid in &t.rounds().unwrap().slot_tasks {
                let s = m.node.store.task(sid).unwrap().unwrap();
                let recorded = s
                    .attempts
                    .first()
                    .is_some_and(|a| a.worker == holder.account() && a.commit_seq.is_some());
                if recorded {
                    first = Some(s.id);
                }
            }
            if first.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = first.expect("the holder never committed a slot of round 0");
        child.kill().unwrap();
        child.wait().unwrap();
        let round_0_dirs = job_dirs_of(&m, "turncoat", &posted.id);
        assert_eq!(round_0_dirs.len(), 1);
        let mut child = worker_process_with(&m, &holder, "turncoat", "skip:1");
        worker(&m, "turncoat's replacement").await;
        // Its round-0 job goes once the round is merged, as its `settled` would have removed it
        // had it not restarted: from then on only the state it kept of that job has the moments.
        for _ in 0..24_000 {
            if !m.node.pool_history(&posted.id).unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for dir in &round_0_dirs {
            std::fs::remove_dir_all(dir).unwrap();
        }
        let t = m
            .node
            .wait_final(&posted.id, Duration::from_secs(600))
            .await
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
        let history = m.node.pool_history(&t.id).unwrap();
        let k = history[0]
            .slots
            .iter()
            .position(|s| s.task == first)
            .unwrap();
        assert_eq!(history[0].slots[k].worker, holder.account());
        let slot = m
            .node
            .store
            .task(&history[1].slots[k].task)
            .unwrap()
            .unwrap();
        assert_eq!(slot.attempts.len(), 2, "{slot:?}");
        assert_eq!(slot.attempts[0].worker, holder.account());
        assert!(slot.attempts[0].result_failed);
        assert_eq!(
            slot.attempts[1].worker,
            Identity::from_test_label("turncoat's replacement").account()
        );
        assert!(!slot.slot().unwrap().fresh_moments, "{slot:?}");
        merged_as_honest(&m, &spec, &t.id);
    });
}

/// A pooled task of 2 slots on the 4×128 `gpt`: slot states of 9.6 MB (AdamW: parameters and
/// two moments of 799,488 values each), so the parameters begin past the first chunk and the
/// node holds slot states in part. `rounds` rounds of `inner` steps, a checkpoint every
/// `interval`.
fn wide_pool(m: &Market, nonce: u64, rounds: u32, inner: u32, interval: u32) -> TaskSpec {
    let mut spec = training_task(&m.buyer, nonce);
    if let Workload::Training(t) = &mut spec.workload {
        t.model = ModelSpec::Gpt {
            layers: 4,
            heads: 4,
            width: 128,
            vocab: 16,
            context: 16,
        };
        t.steps = rounds * inner;
        t.checkpoint_interval = interval;
        t.pool = Some(market_protocol::fixtures::pool(2, rounds, inner));
    }
    spec
}

/// Starts a pool of 2 slots × 2 rounds of the 4×128 `gpt` (slot states of 9.6 MB, so the
/// node holds round 1's starts in part) with `killed` a worker process among its workers
/// (started first, so it gets a slot of round 0), and kills that worker once it is well into
/// its slot-round of round 1 (after it kept its final state of round 0). Returns the pool,
/// the killed slot-round and the spec.
async fn pool_with_a_holder_killed_in_round_1(
    m: &Market,
    killed: &Identity,
    nonce: u64,
) -> (TaskId, TaskId, TaskSpec) {
    m.node
        .fund("test", &killed.account(), 1_000, 0)
        .await
        .unwrap();
    let mut child = worker_process(m, killed, "holder");
    wait_joined(m, 1, 1).await;
    worker(m, "holder's mate").await;
    wait_joined(m, 2, 1).await;
    let spec = wide_pool(m, nonce, 2, 40, 10);
    let posted = m
        .node
        .post_task(Signed::sign(spec.clone(), &m.buyer).unwrap())
        .await
        .unwrap();
    let mut victim = None;
    for _ in 0..12_000 {
        let t = m.node.store.task(&posted.id).unwrap().unwrap();
        for sid in &t.rounds().unwrap().slot_tasks {
            let s = m.node.store.task(sid).unwrap().unwrap();
            if s.slot().unwrap().round == 1
                && matches!(s.state, TaskState::Running { worker, done, .. } if worker == killed.account() && done >= 10)
            {
                victim = Some(s.id);
            }
        }
        if victim.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let victim = victim.expect("the holder never ran its slot of round 1");
    let slot = m.node.store.task(&victim).unwrap().unwrap();
    assert!(
        m.node
            .blobs
            .partial()
            .meta(&BlobId(slot.slot().unwrap().start.0))
            .is_some(),
        "round 1's start is held in part"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    (posted.id, victim, spec)
}

/// Issue 14: a slot whose worker keeps its moments moves to another worker (its worker went
/// away mid-round, then came back): the node fetches the rest of the slot's final state from
/// the worker that keeps it, checked against the committed state, makes the start whole for
/// the new worker, and the merged states are still the all-honest run's, bit for bit.
#[test]
fn a_slot_that_moves_gets_its_moments_from_the_worker_that_kept_them() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            run_grace: Duration::from_secs(2),
            state_wait: Duration::from_secs(120),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        verifier(&m, "moves verifier").await;
        let holder = Identity::from_test_label("moves holder");
        let (pool, victim, spec) = pool_with_a_holder_killed_in_round_1(&m, &holder, 42).await;
        worker(&m, "moves worker c").await;
        // Back once its run went to another worker: it still keeps its round-0 state.
        for _ in 0..2400 {
            let s = m.node.store.task(&victim).unwrap().unwrap();
            if s.attempts.first().is_some_and(|a| a.result_failed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut back = worker_process(&m, &holder, "holder");
        let t = m
            .node
            .wait_final(&pool, Duration::from_secs(600))
            .await
            .unwrap();
        back.kill().unwrap();
        back.wait().unwrap();
        assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
        let slot = m.node.store.task(&victim).unwrap().unwrap();
        assert_eq!(slot.attempts.len(), 2, "{slot:?}");
        assert_eq!(
            slot.attempts[1].worker,
            Identity::from_test_label("moves worker c").account()
        );
        assert!(!slot.slot().unwrap().fresh_moments);
        merged_as_honest(&m, &spec, &t.id);
    });
}

/// Issue 14: a slot whose worker keeps its moments moves while that worker is gone for good:
/// after `state_wait` the slot starts its round from the global state with zero moments, which
/// the slot-round records; the pool still ends, every merge recomputable from the committed
/// final states, and the rounds before are the all-honest run's.
#[test]
fn a_slot_whose_moments_are_lost_starts_afresh_and_says_so() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            run_grace: Duration::from_secs(2),
            state_wait: Duration::from_secs(3),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        verifier(&m, "lost verifier").await;
        let holder = Identity::from_test_label("lost holder");
        let (pool, victim, spec) = pool_with_a_holder_killed_in_round_1(&m, &holder, 43).await;
        worker(&m, "lost worker c").await;
        let t = m
            .node
            .wait_final(&pool, Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(t.state, TaskState::Settled, "{:?}", t.state);
        let slot = m.node.store.task(&victim).unwrap().unwrap();
        let at = slot.slot().unwrap();
        assert!(at.fresh_moments, "{slot:?}");
        // Its start is the round's global parameters with zero moments.
        let job = market_compute::TrainingJob::from_spec(&spec, &market_compute::NoBlobs).unwrap();
        let history = m.node.pool_history(&t.id).unwrap();
        let honest = market_compute::pool::run_locally(&job, |_| {}).unwrap();
        assert_eq!(
            history[0].global,
            market_compute::pool::global_hash(&honest.globals[0], &job.layout).unwrap()
        );
        let fresh = market_compute::pool::slot_start(&job, &honest.globals[0], None);
        assert_eq!(at.start, fresh.hash(&job.layout).unwrap());
        assert_ne!(
            history[1].global,
            market_compute::pool::global_hash(&honest.globals[1], &job.layout).unwrap()
        );
    });
}

/// A task of 100 steps in 10 segments whose audit samples 3 of them (0.9 against half faked).
async fn post_sampled(m: &Market, nonce: u64) -> TaskId {
    let mut spec = training_task(&m.buyer, nonce);
    if let Workload::Training(t) = &mut spec.workload {
        t.steps = 100;
    }
    spec.audit = AuditPolicy {
        detection_target: "0.9".parse().unwrap(),
        assumed_faked_fraction: "0.5".parse().unwrap(),
    };
    let signed = Signed::sign(spec, &m.buyer).unwrap();
    m.node.post_task(signed).await.unwrap().id
}

/// The checkpoints in the node's copy of attempt `n`'s bundle.
fn node_checkpoints(m: &Market, task: &TaskId, n: usize) -> std::collections::BTreeSet<u32> {
    let dir = m
        .dir
        .path()
        .join("node/bundles")
        .join(format!("{task}-{n}"))
        .join("checkpoints");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.trim_end_matches(".st").parse().unwrap()
        })
        .collect()
}

#[test]
fn the_node_fetches_only_the_final_state_and_what_the_challenge_opens() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            keep_bundles: true,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        worker(&m, "worker f").await;
        verifier(&m, "verifier f").await;
        wait_joined(&m, 1, 1).await;
        let task = post_sampled(&m, 21).await;
        let t = settled(&m, &task).await;
        // The verdict the verifier was paid for, from the ledger.
        let verdict = (0..=m.node.ledger.head().seq)
            .find_map(
                |s| match m.node.ledger.entry(s).unwrap().unwrap().body.kind {
                    market_ledger::EntryKind::Reward {
                        task_id,
                        verdict: Some(v),
                        ..
                    } if task_id == task => Some(v.body),
                    _ => None,
                },
            )
            .unwrap();
        let sampled: std::collections::BTreeSet<u32> =
            verdict.checked.iter().map(|c| c.segment).collect();
        assert_eq!(sampled.len(), 3, "{verdict:?}");
        // The final state (checkpoint 10, which settlement reads), the initial state (which the
        // node computes itself) and the start of each sampled segment (repro compares a
        // segment's end with its leaf): nothing else is there.
        let mut wanted = sampled.clone();
        wanted.extend([0, 10]);
        assert_eq!(node_checkpoints(&m, &task, 0), wanted);
        let timing = m
            .dispatch
            .timings()
            .into_iter()
            .find(|x| x.task_id == Some(task))
            .unwrap();
        let checkpoint = std::fs::metadata(
            m.dir
                .path()
                .join(format!("node/bundles/{task}-0/checkpoints/000010.st")),
        )
        .unwrap()
        .len();
        // At commit: the final state and the small files; later: the sampled starts but the
        // initial state, which the node never fetches.
        assert!(timing.bytes < 2 * checkpoint, "{timing:?}");
        let opened = sampled.iter().filter(|s| **s != 0).count() as u64;
        assert!(timing.opened >= opened * checkpoint, "{timing:?}");
        assert!(timing.opened < (opened + 1) * checkpoint, "{timing:?}");
        // The buyer's weights are the final state's parameters, derived by the node.
        assert_eq!(t.outputs.len(), 1);
        assert!(m.node.blobs.contains(&t.outputs[0]));
    });
}

#[test]
fn a_worker_that_withholds_what_a_challenge_opens_is_slashed_and_the_task_runs_again() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            run_grace: Duration::from_secs(2),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        let cheat = worker_with(&m, "worker w", Behavior::WithholdLate).await;
        let v = verifier(&m, "verifier w").await;
        wait_joined(&m, 1, 1).await;
        let task = post_sampled(&m, 22).await;
        // The withholding worker has the task (and will commit, then delete what the
        // challenge opens); an honest one joins to take it over.
        assert_eq!(wait_running(&m, &task, 0).await, cheat.account());
        let honest = worker(&m, "worker h").await;
        wait_joined(&m, 2, 1).await;
        let t = settled(&m, &task).await;
        assert!(t.attempts[0].result_failed, "{t:?}");
        assert_eq!(t.attempts[0].worker, cheat.account());
        let accepted = t.attempts.iter().find(|a| a.accepted).unwrap();
        assert_eq!(accepted.worker, honest.account());
        // Slashed as for a failed audit, with its commitment as evidence: withholding is no
        // cheaper a way to be caught.
        let head = m.node.ledger.head().seq;
        let reasons: Vec<String> = (0..=head)
            .filter_map(
                |s| match m.node.ledger.entry(s).unwrap().unwrap().body.kind {
                    market_ledger::EntryKind::Slash {
                        account, reason, ..
                    } if account == cheat.account() => Some(reason),
                    _ => None,
                },
            )
            .collect();
        assert_eq!(reasons, ["withheld a file of its committed result"]);
        assert!(m.node.ledger.stake(&cheat.account()).0 < 200);
        assert_eq!(
            m.node.ledger.stake(&v.account()).0,
            100,
            "the verifier is not blamed"
        );
        assert_conserved(
            &m,
            &[
                m.buyer.account(),
                cheat.account(),
                honest.account(),
                v.account(),
                m.node.operator.account(),
            ],
            10_000 + 3 * 1_000,
        );
    });
}

/// Found by the red team: a worker away after its commitment (a dropped link, a sleeping
/// laptop) for longer than the run grace, when the node fetched the openings of a verifier
/// standing in for a silent one, was slashed as if it had withheld them. Unreachable is not
/// refusing: the node keeps trying for `opening_wait`, and the worker that comes back is
/// audited and paid.
#[test]
fn a_worker_away_when_a_stand_in_needs_its_openings_is_audited_when_it_returns() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let options = P2pOptions {
            run_grace: Duration::from_secs(2),
            audit_timeout: Duration::from_secs(2),
            ..P2pOptions::default()
        };
        let m = market(config, options).await;
        // A verifier that refuses every audit: the one drawn first is silent.
        let mut mute =
            raw_participant(&m, "mute verifier", Role::Verifier, &stub_capabilities()).await;
        tokio::spawn(async move {
            while let Some(ev) = mute.recv().await {
                if let Event::Request { responder, .. } = ev {
                    responder.send(Reply::refused("not auditing"));
                }
            }
        });
        let w = Identity::from_test_label("worker away");
        m.node.fund("test", &w.account(), 1_000, 0).await.unwrap();
        let mut child = worker_process(&m, &w, "away");
        wait_joined(&m, 1, 1).await;
        let task = post_sampled(&m, 23).await;
        // Committed: the mute verifier's openings are fetched and it is asked, in vain.
        for _ in 0..2400 {
            let t = m.node.store.task(&task).unwrap().unwrap();
            if matches!(t.state, TaskState::Auditing { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let state = m.node.store.task(&task).unwrap().unwrap().state;
        assert!(matches!(state, TaskState::Auditing { .. }), "{state:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        wait_connected(&m, &w.account(), false).await;
        // A real verifier stands in; its openings must come from the absent worker, for well
        // past the run grace (a timer: only time passing can exceed it).
        let v = verifier(&m, "verifier away").await;
        wait_joined(&m, 0, 2).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let back = worker_process(&m, &w, "away");
        let t = settled(&m, &task).await;
        drop(stderr_of(back));
        assert_eq!(t.attempts.len(), 1, "{t:?}");
        assert!(t.attempts[0].accepted);
        assert_eq!(t.attempts[0].verdicts[0].verifier, v.account());
        assert_eq!(m.node.ledger.stake(&w.account()).0, 200, "not slashed");
    });
}

/// Issue 18: the node serves a blob only to a peer running or auditing a task that reads it,
/// and a bundle file only to the verifier of the audit that opens it. A joined stranger asking
/// for a settled task's result blob or bundle files, by describe or by fetch, is refused.
#[test]
fn a_peer_is_refused_blobs_and_bundle_files_it_has_no_right_to() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            keep_bundles: true,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        worker(&m, "worker p").await;
        verifier(&m, "verifier p").await;
        wait_joined(&m, 1, 1).await;
        let task = post(&m, 24, 20).await;
        let t = settled(&m, &task).await;
        let output = t.outputs[0];
        assert!(m.node.blobs.contains(&output));
        // A stranger joins as a verifier, with stake, and asks.
        let (net, _events) = stranger(&m, "stranger p", Role::Verifier).await;
        let node_peer = m.node.operator.account().to_peer_id();
        let bundle = |path: &str| market_net::wire::Source::Bundle {
            task_id: task,
            job: 0,
            path: path.into(),
        };
        for source in [
            market_net::wire::Source::Blob { id: output },
            bundle("leaves.json"),
            bundle("checkpoints/000002.st"),
        ] {
            for request in [
                Request::Describe {
                    source: source.clone(),
                },
                Request::Fetch {
                    source: source.clone(),
                    chunk: 0,
                },
            ] {
                let reply = net.request(node_peer, request.clone()).await.unwrap();
                assert!(
                    matches!(reply.response, Response::Refused { .. }),
                    "{request:?} was answered {:?}",
                    reply.response
                );
                assert!(reply.payload.is_empty(), "no bytes with a refusal");
            }
        }
    });
}

/// A stranger joined to the node with its own key, and what it hears.
async fn stranger(
    m: &Market,
    label: &str,
    role: Role,
) -> (Net, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let who = Identity::from_test_label(label);
    m.node.fund("test", &who.account(), 1_000, 0).await.unwrap();
    let (net, events) = Net::start(&who, NetConfig::default()).unwrap();
    let dialed = tokio::sync::watch::channel(None).0;
    join(
        &net,
        &m.addr,
        &dialed,
        &who,
        role,
        &stub_capabilities(),
        200,
        1,
    )
    .await
    .unwrap();
    (net, events)
}

/// Issue 18: the node's checks on what workers report. Progress and failure are taken only
/// from the worker of the job (a stranger gets "not your job", an unknown job "no such job"),
/// and progress past its end is refused.
#[test]
fn reports_are_taken_only_from_the_worker_of_the_job() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        let node_peer = m.node.operator.account().to_peer_id();
        let refusal = |reply: Reply| match reply.response {
            Response::Refused { reason } => reason,
            other => panic!("answered {other:?}"),
        };
        // A raw worker takes an assignment and sits on it.
        let (worker_net, mut worker_events) = stranger(&m, "reports worker", Role::Worker).await;
        let (intruder, _intruder_events) = stranger(&m, "reports intruder", Role::Verifier).await;
        wait_joined(&m, 1, 1).await;
        let task = post(&m, 25, 20).await;
        let (task_id, job) = next_event(&m, &task, &mut worker_events, |ev| match ev {
            Event::Request {
                request: Request::Assign { task_id, job, .. },
                responder,
                ..
            } => {
                responder.send(Reply::of(Response::Ok));
                Some((task_id, job))
            }
            _ => None,
        })
        .await;
        assert_eq!(task_id, task);
        let progress = |job, done| Request::Progress {
            task_id,
            job,
            done,
            total: 20,
            loss: F32Bits::from_f32(1.0),
        };
        let r = intruder.request(node_peer, progress(job, 1)).await.unwrap();
        assert_eq!(refusal(r), "not your job");
        let r = intruder
            .request(
                node_peer,
                Request::Failed {
                    task_id,
                    job,
                    reason: "sabotage".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(refusal(r), "not your job");
        let r = worker_net
            .request(node_peer, progress(job + 12_345, 1))
            .await
            .unwrap();
        assert_eq!(refusal(r), "no such job");
        let r = worker_net
            .request(node_peer, progress(job, 21))
            .await
            .unwrap();
        assert_eq!(refusal(r), "progress past the end");
        let r = worker_net
            .request(node_peer, progress(job, 5))
            .await
            .unwrap();
        assert_eq!(r.response, Response::Ok, "its own worker is heard");
        // The task is still that worker's, at the progress it reported (recorded a moment after
        // the reply): nothing the intruder sent moved it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = m.node.store.task(&task).unwrap().unwrap().state;
            if matches!(state, TaskState::Running { done: 5, .. }) {
                break;
            }
            assert!(
                matches!(state, TaskState::Running { done: 0, .. })
                    && std::time::Instant::now() < deadline,
                "{state:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
}

/// Issue 18: a verdict is taken only from the verifier handed that audit ("not your audit"
/// for anyone else, even with a verdict signed by its own key), and only once.
#[test]
fn a_verdict_is_taken_only_from_its_verifier_and_once() {
    in_runtime(async {
        let config = NodeConfig {
            verifiers_per_task: 1,
            ..NodeConfig::default()
        };
        let m = market(config, P2pOptions::default()).await;
        let node_peer = m.node.operator.account().to_peer_id();
        worker(&m, "verdicts worker").await;
        let (verifier_net, mut verifier_events) =
            stranger(&m, "verdicts verifier", Role::Verifier).await;
        let (intruder, _intruder_events) = stranger(&m, "verdicts intruder", Role::Worker).await;
        wait_joined(&m, 2, 1).await;
        let task = post(&m, 26, 20).await;
        let job = next_event(&m, &task, &mut verifier_events, |ev| match ev {
            Event::Request {
                request: Request::Audit { job },
                responder,
                ..
            } => {
                responder.send(Reply::of(Response::Ok));
                Some(job)
            }
            _ => None,
        })
        .await;
        assert_eq!(job.task_id, task);
        let verdict_of = |who: &Identity| {
            let body = Verdict {
                version: Version::CURRENT,
                verifier: who.account(),
                commitment_id: CommitmentId(Hash::of(b"whatever")),
                challenge_id: ChallengeId(Hash::of(b"whatever")),
                checked: Vec::new(),
                outcome: VerdictOutcome::Pass,
                compute_share_ppm: 0,
            };
            Request::Verdict {
                task_id: task,
                job: job.job,
                verdict: Signed::sign(body, who).unwrap(),
            }
        };
        let reason = |reply: Reply| match reply.response {
            Response::Refused { reason } => reason,
            other => panic!("answered {other:?}"),
        };
        let intruder_id = Identity::from_test_label("verdicts intruder");
        let r = intruder
            .request(node_peer, verdict_of(&intruder_id))
            .await
            .unwrap();
        assert_eq!(reason(r), "not your audit");
        let me = Identity::from_test_label("verdicts verifier");
        let first = verifier_net
            .request(node_peer, verdict_of(&me))
            .await
            .unwrap();
        assert_eq!(first.response, Response::Ok);
        let again = reason(
            verifier_net
                .request(node_peer, verdict_of(&me))
                .await
                .unwrap(),
        );
        assert!(
            again == "verdict already received" || again == "no such audit",
            "{again}"
        );
    });
}
