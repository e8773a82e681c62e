//! `market-devnet`: one command for a whole local market.
//!
//! A node (REST API and libp2p on loopback), three honest workers, one cheating worker and two
//! verifiers, each a separate process: this binary re-run with a hidden `node`, `worker` or
//! `verifier` subcommand, which is exactly `market-node serve`, `market-worker run` or
//! `market-verifier run` (so `cargo run --bin market-devnet` needs no other binary), all with
//! temporary data directories. This process is the launcher and the buyer: the buyer is funded
//! (the node mints at start), posts a training task (`gpt` on the arithmetic language), an
//! inference task and a pooled training task (3 slots, 3 rounds: DiLoCo across the workers)
//! through the API, and follows them. A fifth worker serves a small `llama` (seeded weights
//! written as GGUF and uploaded by the buyer) and the buyer asks it chat questions through the
//! OpenAI-compatible API with an API key, one of them streamed; its answers are audited in
//! batches and paid. The summary shows what settled, the pooled task's rounds, the served
//! answers and their receipts, who was slashed, every balance, and whether the exported ledger
//! verifies.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use market_node::client::Client;
use market_node::config::NodeConfig;
use market_node::model::TaskState;
use market_protocol::keyfile::{load_identity, save_identity};
use market_protocol::{fixtures, ExecutionProfile, Identity, Workload};
use market_worker::Behavior;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Start a whole local market in one command")]
struct Args {
    /// The cheating worker's strategy (see `market-worker exec --fault`).
    #[arg(long, default_value = "skip:0.2")]
    cheat: Behavior,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the market running after the summary and print the dashboard's and the API's
    /// addresses.
    #[arg(long)]
    keep: bool,
    /// Also write the ledger's export (JSON lines) to this file.
    #[arg(long)]
    export: Option<std::path::PathBuf>,
    /// Derive every key (operator, workers, verifiers, buyer) from this seed, to replay a run
    /// (also read from `MARKET_DEVNET_SEED`); a fresh one, printed at start, when absent.
    #[arg(long)]
    seed: Option<u64>,
    #[command(subcommand)]
    role: Option<ChildRole>,
}

/// The devnet's own child processes.
#[derive(Subcommand, Debug)]
enum ChildRole {
    /// The node process (`market-node serve`).
    #[command(hide = true)]
    Node(market_node::server::ServeArgs),
    /// A worker process (`market-worker run`).
    #[command(hide = true)]
    Worker(market_worker::daemon::RunArgs),
    /// A verifier process (`market-verifier run`).
    #[command(hide = true)]
    Verifier(market_verifier::daemon::RunArgs),
}

#[derive(Serialize)]
struct Summary {
    api: String,
    /// The node's web dashboard (tasks, participants, the ledger verified in the browser).
    dashboard: String,
    tasks: usize,
    settled: usize,
    slashed: Vec<String>,
    rounds: Vec<RoundLine>,
    balances: Vec<Balance>,
    ledger_verified: bool,
    ledger_entries: u64,
    served: Vec<ServedLine>,
}

/// One answer served through the OpenAI-compatible API.
#[derive(Serialize)]
struct ServedLine {
    /// The receipt id.
    receipt: String,
    /// `verified` once its batch passed its audit.
    status: String,
    /// Whether it came as server-sent events.
    streamed: bool,
    /// Tokens (prompt and answer).
    tokens: u64,
}

/// One merged round of the pooled task.
#[derive(Serialize)]
struct RoundLine {
    round: u32,
    /// The merged state's hash.
    global: String,
    /// Held-out loss of the merged parameters.
    eval_loss: Option<f32>,
    /// The accepted slot-rounds' workers, in slot order (roles).
    workers: Vec<String>,
    /// Runs of the round's slots that failed their audits (each slashed and re-run).
    failed_runs: u32,
}

#[derive(Serialize)]
struct Balance {
    role: String,
    account: String,
    balance: u64,
    staked: u64,
    reputation: i64,
}

/// The key of `role` in the devnet of `seed`: `blake3 derive_key("market v1 devnet identity",
/// seed as u64 LE || role)`, saved under `dir`.
fn identity(dir: &std::path::Path, seed: u64, role: &str) -> Result<Identity> {
    let path = dir.join(format!("{role}.key"));
    let mut h = blake3::Hasher::new_derive_key("market v1 devnet identity");
    h.update(&seed.to_le_bytes());
    h.update(role.as_bytes());
    save_identity(
        &Identity::from_secret_bytes(*h.finalize().as_bytes()),
        &path,
    )?;
    // Read back the way every daemon will: through the 0600 check.
    load_identity(&path).with_context(|| format!("loading the {role} key"))
}

/// Child processes, killed when the devnet ends however it ends.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        // Participants first, the node (started first) last.
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() -> Result<()> {
    // The node process renders clients' chat templates in a child: this executable.
    market_node::template_sandbox::serve_as_child_if_asked();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match args.role {
        Some(ChildRole::Node(a)) => {
            tokio::runtime::Runtime::new()?.block_on(market_node::server::run(a, async {
                let _ = tokio::signal::ctrl_c().await;
            }))
        }
        Some(ChildRole::Worker(a)) => market_worker::daemon::run_cli(a),
        Some(ChildRole::Verifier(a)) => market_verifier::daemon::run_cli(a),
        None => tokio::runtime::Runtime::new()?.block_on(devnet(args)),
    }
}

/// Fails if a child process has exited.
fn check_children(children: &mut Children) -> Result<()> {
    for (role, child) in &mut children.0 {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the {role} process exited ({status})");
        }
    }
    Ok(())
}

/// Waits until the node lists `workers` workers and `verifiers` verifiers; fails at once if a
/// child process exits.
async fn wait_for_joins(
    client: &Client,
    children: &mut Children,
    workers: usize,
    verifiers: usize,
) -> Result<()> {
    for _ in 0..1200 {
        if client.workers().await?.len() >= workers && client.verifiers().await?.len() >= verifiers
        {
            return Ok(());
        }
        check_children(children)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("participants did not join within two minutes")
}

/// Waits for the node process to write where it listens: (API URL, libp2p address).
async fn wait_for_node(dir: &std::path::Path, children: &mut Children) -> Result<(String, String)> {
    let path = dir.join("endpoints.json");
    for _ in 0..1200 {
        if let Ok(bytes) = std::fs::read(&path) {
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            let api = v["api"].as_str().context("endpoints.json: no api")?;
            let p2p = v["p2p"][0]
                .as_str()
                .context("endpoints.json: no p2p address")?;
            return Ok((api.to_owned(), p2p.to_owned()));
        }
        check_children(children)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the node did not come up within two minutes")
}

async fn devnet(args: Args) -> Result<()> {
    let dir = tempfile::tempdir().context("creating the devnet's data directory")?;
    let roles = [
        "cheater",
        "worker-1",
        "worker-2",
        "worker-3",
        "server",
        "verifier-1",
        "verifier-2",
        "buyer",
    ];
    let from_env = std::env::var("MARKET_DEVNET_SEED")
        .ok()
        .map(|s| s.parse::<u64>())
        .transpose()
        .context("MARKET_DEVNET_SEED is not a number")?;
    let seed = match args.seed.or(from_env) {
        Some(seed) => seed,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            u64::from_le_bytes(b) >> 11
        }
    };
    eprintln!("market-devnet: seed {seed} (replay this market's keys with --seed {seed})");
    let mut ids = Vec::new();
    for role in roles {
        ids.push((role.to_string(), identity(dir.path(), seed, role)?));
    }
    let id = |role: &str| {
        ids.iter()
            .find(|(r, _)| r == role)
            .map(|(_, i)| i.clone())
            .context("role")
    };
    // Served answers are audited in batches that close 2 s after their first answer (the
    // default is 10 s), so the devnet sees them verified.
    let config = NodeConfig {
        serve_batch_secs: 2,
        ..NodeConfig::default()
    };
    let config_path = dir.path().join("node.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    // The node mints every participant's and the buyer's credits at start; participants stake
    // from them when they join.
    let mut node_cmd = Command::new(&exe);
    node_cmd
        .arg("node")
        .arg("--data")
        .arg(dir.path().join("node"))
        .arg("--key")
        .arg(dir.path().join("operator.key"))
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0", "--p2p", "/ip4/127.0.0.1/tcp/0"])
        .stdin(Stdio::null());
    for (role, i) in &ids {
        let mint = match role.as_str() {
            "buyer" => 5_000,
            r if r.starts_with("verifier") => 200,
            _ => 500,
        };
        node_cmd
            .arg("--mint")
            .arg(format!("{}:{mint}", i.account()));
    }
    identity(dir.path(), seed, "operator")?;
    children.0.push((
        "node".into(),
        node_cmd.spawn().context("starting the node process")?,
    ));
    let (api, market) = wait_for_node(&dir.path().join("node"), &mut children).await?;
    eprintln!("market-devnet: node API at {api}, libp2p at {market}");
    let watcher = Client::new(&api, None);

    // The model the server serves: a small llama with seeded weights, as a GGUF file.
    let model_path = dir.path().join("tiny-llama.gguf");
    std::fs::write(&model_path, market_compute::llama::fixtures::tiny_gguf(7)?)?;
    let spawn = |role: &str, fault: Option<Behavior>| -> Result<Child> {
        let mut cmd = Command::new(&exe);
        let kind = if role.starts_with("verifier") {
            "verifier"
        } else {
            "worker"
        };
        cmd.arg(kind)
            .arg("--market")
            .arg(&market)
            .arg("--key")
            .arg(dir.path().join(format!("{role}.key")))
            .arg("--data")
            .arg(dir.path().join(role))
            .arg("--listen")
            .arg("/ip4/127.0.0.1/tcp/0")
            .arg("--stake")
            .arg(if kind == "verifier" { "100" } else { "300" })
            .stdin(Stdio::null());
        if kind == "worker" {
            cmd.arg("--quiet")
                .arg("--fault")
                .arg(fault.unwrap_or(Behavior::Honest).to_string());
        }
        if role == "server" {
            cmd.arg("--serve")
                .arg(format!("tiny-llama={}", model_path.display()))
                .args(["--price-per-token", "1", "--serve-concurrency", "2"]);
        }
        cmd.spawn()
            .with_context(|| format!("starting the {role} process"))
    };
    // The cheater joins first, so it is offered the first task (ties go to join order).
    children
        .0
        .push(("cheater".into(), spawn("cheater", Some(args.cheat))?));
    wait_for_joins(&watcher, &mut children, 1, 0).await?;
    for role in [
        "worker-1",
        "worker-2",
        "worker-3",
        "verifier-1",
        "verifier-2",
    ] {
        children.0.push((role.into(), spawn(role, None)?));
    }
    wait_for_joins(&watcher, &mut children, 4, 2).await?;
    eprintln!(
        "market-devnet: 3 honest workers + 1 cheater ({}) and 2 verifiers joined, each its own process",
        args.cheat
    );

    let buyer = id("buyer")?;
    let client = Client::new(&api, Some(buyer.clone()));
    client.register().await?;
    // The node serves only weights it holds (so it can audit the answers): the buyer uploads
    // the model, then the serving worker joins and announces it.
    client.upload(std::fs::read(&model_path)?).await?;
    children.0.push(("server".into(), spawn("server", None)?));
    wait_for_joins(&watcher, &mut children, 5, 2).await?;
    let served = serve_chats(&api, &client, &mut children).await?;
    let mut training = fixtures::training_task(&buyer, 1);
    if let Workload::Training(t) = &mut training.workload {
        t.steps = 300;
    }
    let mut inference = fixtures::inference_task(&buyer, 2);
    inference.profile = ExecutionProfile::Repro;
    if let Workload::Inference(i) = &mut inference.workload {
        i.weights = None;
    }
    // Pooled: 3 slots train apart for 20 steps and merge, 3 times; every slot-round is a
    // committed run, audited before it is merged and paid from the task's escrow.
    let mut pooled = fixtures::training_task(&buyer, 3);
    if let Workload::Training(t) = &mut pooled.workload {
        t.steps = 60;
        t.checkpoint_interval = 5;
        t.pool = Some(fixtures::pool(3, 3, 20));
    }
    // A strict buyer: it assumes a cheater fakes as little as 2% of the pool (one segment),
    // so every segment of every slot-round is sampled and any cheat is caught.
    pooled.audit.assumed_faked_fraction = "0.02".parse()?;
    let mut posted = Vec::new();
    // The pooled task first: the cheater, first in join order, is offered its first slot.
    for (name, spec) in [
        ("pooled training (3 slots × 3 rounds of 20 steps)", pooled),
        ("training (gpt, arithmetic)", training),
        ("inference (gpt)", inference),
    ] {
        let view = client.submit(spec).await?;
        eprintln!("posted {name}: task {} — audit: {} of {} segments, detection {:.4} against {} faked; verifier fee {}",
            &view.id.to_string()[..12], view.audit.samples, view.audit.segments, view.audit.detection_probability, view.audit.assumed_faked, config.verifier_fee);
        posted.push(view.id);
    }
    let mut settled = 0;
    let mut rounds = Vec::new();
    let role_of = |account: &market_protocol::AccountId| {
        ids.iter()
            .find(|(_, i)| i.account() == *account)
            .map_or_else(|| account.to_hex()[..12].to_string(), |(r, _)| r.clone())
    };
    for tid in &posted {
        let mut last = String::new();
        let t = client
            .wait(tid, Duration::from_secs(600), |t| {
                let line = match &t.state {
                    TaskState::Running {
                        done, total, loss, ..
                    } => format!("running {done}/{total} loss {loss:.3}"),
                    TaskState::Pooling { round, rounds } => {
                        format!("pooling: round {}/{rounds}", round + 1)
                    }
                    s => s.name().to_string(),
                };
                if line != last {
                    eprintln!("  task {}: {line}", &tid.to_string()[..12]);
                    last = line;
                }
            })
            .await?;
        if t.state == TaskState::Settled {
            settled += 1;
            let result = client.result(tid).await?;
            let runs = match &t.pool {
                Some(market_node::model::PoolPart::Task(p)) => {
                    format!("{} rounds merged", p.history.len())
                }
                _ => format!("{} attempt(s)", t.attempts.len()),
            };
            eprintln!(
                "  task {} settled after {runs}; results: {}",
                &tid.to_string()[..12],
                result["outputs"].as_array().map_or(0, Vec::len)
            );
        }
        if let Some(market_node::model::PoolPart::Task(p)) = &t.pool {
            for h in &p.history {
                rounds.push(RoundLine {
                    round: h.round,
                    global: h.global.0.to_hex(),
                    eval_loss: h.eval_loss,
                    workers: h.slots.iter().map(|s| role_of(&s.worker)).collect(),
                    failed_runs: h.slots.iter().map(|s| s.failed_runs).sum(),
                });
            }
        }
    }
    let served = settle_served(&api, served).await?;
    let mut balances = Vec::new();
    let mut slashed = Vec::new();
    for (role, i) in &ids {
        let v = client.account(&i.account()).await?;
        let rep = v["reputation"].as_i64().unwrap_or(0);
        if rep < 0 {
            slashed.push(role.clone());
        }
        balances.push(Balance {
            role: role.clone(),
            account: i.account().to_hex(),
            balance: v["balance"].as_u64().unwrap_or(0),
            staked: v["staked"].as_u64().unwrap_or(0),
            reputation: rep,
        });
    }
    let export = client.ledger_export().await?;
    if let Some(path) = &args.export {
        std::fs::write(path, &export)
            .with_context(|| format!("writing the export to {}", path.display()))?;
    }
    let verified = market_ledger::verify_export(
        std::io::Cursor::new(export),
        std::path::Path::new("ledger export"),
        None,
    );
    let summary = Summary {
        dashboard: format!("{api}/dashboard/"),
        api: api.clone(),
        tasks: posted.len(),
        settled,
        slashed,
        rounds,
        balances,
        ledger_verified: verified.is_ok(),
        ledger_entries: verified.as_ref().map_or(0, |r| r.lines),
        served,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "market-devnet: {} tasks, {} settled; slashed: {}",
            summary.tasks,
            summary.settled,
            if summary.slashed.is_empty() {
                "nobody".into()
            } else {
                summary.slashed.join(", ")
            }
        );
        if !summary.rounds.is_empty() {
            println!(
                "pooled task: {} rounds merged (each recorded in the ledger)",
                summary.rounds.len()
            );
            println!(
                "{:>5} {:>9} {:>6}  {:<32} merged state",
                "round", "held-out", "failed", "slot workers"
            );
            for r in &summary.rounds {
                println!(
                    "{:>5} {:>9} {:>6}  {:<32} {}",
                    r.round,
                    r.eval_loss.map_or("-".into(), |l| format!("{l:.4}")),
                    r.failed_runs,
                    r.workers.join(", "),
                    &r.global[..16]
                );
            }
        }
        println!(
            "served through the OpenAI-compatible API: {} answers",
            summary.served.len()
        );
        for a in &summary.served {
            println!(
                "  receipt {}  {:<8} {:>4} tokens{}",
                &a.receipt[..16],
                a.status,
                a.tokens,
                if a.streamed { "  (streamed)" } else { "" }
            );
        }
        println!(
            "{:<11} {:>8} {:>7} {:>5}  account",
            "role", "balance", "staked", "rep"
        );
        for b in &summary.balances {
            println!(
                "{:<11} {:>8} {:>7} {:>5}  {}",
                b.role,
                b.balance,
                b.staked,
                b.reputation,
                &b.account[..16]
            );
        }
        println!(
            "ledger: {} entries, {}",
            summary.ledger_entries,
            if summary.ledger_verified {
                "verified from its export"
            } else {
                "VERIFICATION FAILED"
            }
        );
        println!("dashboard: {}", summary.dashboard);
    }
    if args.keep {
        eprintln!(
            "market-devnet keeps running; dashboard at {}, API at {api}; Ctrl-C to stop",
            summary.dashboard
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(children);
    let unverified = summary.served.iter().any(|a| a.status != "verified");
    if !summary.ledger_verified || settled != posted.len() || unverified {
        anyhow::bail!("the devnet did not end as expected");
    }
    Ok(())
}

/// Waits until the node lists the served model, then asks it three chat questions through the
/// OpenAI-compatible API with a new API key (the last streamed). Returns the key and, per
/// answer, its receipt id, whether it was streamed and its tokens.
async fn serve_chats(
    api: &str,
    client: &Client,
    children: &mut Children,
) -> Result<(String, Vec<(String, bool, u64)>)> {
    let http = reqwest::Client::new();
    for _ in 0..600 {
        check_children(children)?;
        let models: serde_json::Value = http
            .get(format!("{api}/v1/models"))
            .send()
            .await?
            .json()
            .await?;
        if models["data"][0]["id"] == "tiny-llama" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = client.create_key("devnet", Some(10_000)).await?;
    let key = key["key"].as_str().context("no API key")?.to_string();
    let mut answers = Vec::new();
    for (question, stream) in [
        ("What is two plus two?", false),
        ("Name a colour.", false),
        ("Say hello.", true),
    ] {
        let body = serde_json::json!({
            "model": "tiny-llama", "max_tokens": 24, "temperature": 0, "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": question}],
        });
        let response = http
            .post(format!("{api}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "chat completion: {}",
            response.text().await?
        );
        let receipt = response
            .headers()
            .get("x-market-receipt")
            .and_then(|v| v.to_str().ok())
            .context("no receipt header")?
            .to_string();
        let text = response.text().await?;
        let usage = if stream {
            // The usage chunk comes just before `[DONE]`.
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .find_map(|c| c["usage"]["total_tokens"].as_u64())
        } else {
            serde_json::from_str::<serde_json::Value>(&text)?["usage"]["total_tokens"].as_u64()
        };
        eprintln!(
            "served: {question:?} -> receipt {}{}",
            &receipt[..12],
            if stream { " (streamed)" } else { "" }
        );
        answers.push((receipt, stream, usage.unwrap_or(0)));
    }
    Ok((key, answers))
}

/// Waits for every served answer's batch to be audited; returns their lines.
async fn settle_served(
    api: &str,
    (key, answers): (String, Vec<(String, bool, u64)>),
) -> Result<Vec<ServedLine>> {
    let http = reqwest::Client::new();
    let mut lines = Vec::new();
    for (receipt, streamed, tokens) in answers {
        let mut status = String::from("pending");
        for _ in 0..300 {
            let r: serde_json::Value = http
                .get(format!("{api}/v1/receipts/{receipt}"))
                .bearer_auth(&key)
                .send()
                .await?
                .json()
                .await?;
            status = r["status"].as_str().unwrap_or("pending").to_string();
            if status != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lines.push(ServedLine {
            receipt,
            status,
            streamed,
            tokens,
        });
    }
    Ok(lines)
}
