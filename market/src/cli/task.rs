//! `market-node task`: submit, watch, list, cancel, and fetch results.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use market_protocol::canonical::{from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::{BlobId, TaskId, TaskSpec};
use serde_json::Value;

use super::Connection;
use crate::client::Client;
use crate::model::{TaskState, TaskView};

/// Task commands.
#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Sign a task file with your key (as its buyer) and post it.
    Submit {
        /// The task spec (JSON); its `buyer` is set to your key's account.
        file: PathBuf,
        #[command(flatten)]
        conn: Connection,
        /// Wait until the task is settled, rejected or cancelled, then print it.
        #[arg(long)]
        wait: bool,
        /// Wait, showing live progress: steps, loss, the audit and its verdicts.
        #[arg(long)]
        watch: bool,
    },
    /// Show a task's state (with `--watch`, follow it to the end).
    Status {
        /// The task id.
        id: TaskId,
        #[command(flatten)]
        conn: Connection,
        /// Follow it live until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// List tasks, newest last: yours with `--key` (or `--buyer`), all with `--all`.
    List {
        #[command(flatten)]
        conn: Connection,
        /// Only this buyer's tasks.
        #[arg(long)]
        buyer: Option<market_protocol::AccountId>,
        /// Every buyer's tasks.
        #[arg(long)]
        all: bool,
        /// Only tasks in this state (queued, running, auditing, settled, rejected, cancelled,
        /// pooling).
        #[arg(long)]
        state: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task you posted that has not started; its escrow is refunded.
    Cancel {
        /// The task id.
        id: TaskId,
        #[command(flatten)]
        conn: Connection,
    },
    /// Fetch a settled task's results (buyer only). With `--out DIR`, download its outputs
    /// there: `weights.safetensors` for training (and a llama's Hugging Face `config.json`),
    /// `outputs/N` and `answers.jsonl` for inference, and `result.json`.
    Result {
        /// The task id.
        id: TaskId,
        #[command(flatten)]
        conn: Connection,
        /// A directory to download the outputs into (created if missing; nothing in it is
        /// overwritten). The outputs are checked against the node's verified ledger: the
        /// commitment its accepted result was paid for names them.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The operator key the ledger must be signed by, when you know it.
        #[arg(long)]
        ledger: Option<market_protocol::AccountId>,
    },
}

/// Runs a task command.
pub async fn run(command: TaskCommand) -> Result<()> {
    match command {
        TaskCommand::Submit {
            file,
            conn,
            wait,
            watch,
        } => {
            let client = conn.signing_client()?;
            let mut spec: TaskSpec = from_json_limited(&read_small(&file)?, MAX_MESSAGE_BYTES)
                .with_context(|| format!("{} is not a valid task spec", file.display()))?;
            spec.buyer = conn.account(None)?;
            let view = client.submit(spec).await?;
            if watch {
                eprintln!(
                    "task {} posted: {} credits in escrow, audit {} samples by {} verifiers (detection {:.4})",
                    view.id,
                    view.price,
                    view.audit.samples,
                    view.audit.verifiers,
                    view.audit.detection_probability
                );
                let done = follow(&client, &view.id).await?;
                print_json(&done)?;
                ended_well(&done)?;
            } else {
                print_json(&view)?;
                if wait {
                    let done = client
                        .wait(&view.id, Duration::from_secs(24 * 3600), |t| {
                            eprintln!("{}", t.state.name())
                        })
                        .await?;
                    print_json(&done)?;
                    ended_well(&done)?;
                }
            }
        }
        TaskCommand::Status { id, conn, watch } => {
            let client = conn.client()?;
            if watch {
                let done = follow(&client, &id).await?;
                print_json(&done)?;
                ended_well(&done)?;
            } else {
                print_json(&client.task(&id).await?)?;
            }
        }
        TaskCommand::List {
            conn,
            buyer,
            all,
            state,
            json,
        } => {
            let buyer =
                match (buyer, all) {
                    (Some(b), _) => Some(b),
                    (None, true) => None,
                    (None, false) => Some(conn.account(None).context(
                        "list whose tasks? give --key FILE (yours), --buyer ID, or --all",
                    )?),
                };
            list(&conn.client()?, buyer, state.as_deref(), json).await?;
        }
        TaskCommand::Cancel { id, conn } => {
            print_json(&conn.signing_client()?.cancel(&id).await?)?;
        }
        TaskCommand::Result {
            id,
            conn,
            out,
            ledger,
        } => {
            let client = conn.signing_client()?;
            let result = client.result(&id).await?;
            match out {
                Some(dir) => {
                    let fetch = market_ledger::remote::Fetch {
                        node: conn.node.clone(),
                        expected_ledger: ledger,
                        ..Default::default()
                    };
                    save_result(&client, &fetch, &id, &result, &dir).await?
                }
                None => print_json(&result)?,
            }
        }
    }
    Ok(())
}

/// Fails (a non-zero exit) unless the task settled: a script waiting on a task learns how it
/// ended from the exit status.
fn ended_well(t: &TaskView) -> Result<()> {
    anyhow::ensure!(
        t.state == TaskState::Settled,
        "task {} ended {}",
        t.id,
        describe_end(&t.state)
    );
    Ok(())
}

/// Reads a task file: a regular file of at most the largest message (a device or a pipe would
/// be read without end).
fn read_small(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    anyhow::ensure!(
        bytes.len() <= MAX_MESSAGE_BYTES,
        "{} is longer than a task may be ({MAX_MESSAGE_BYTES} bytes)",
        path.display()
    );
    Ok(bytes)
}

/// Writes `bytes` to the new file `path`: through a temporary file beside it, never over
/// anything there (a planted link included).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    anyhow::ensure!(
        path.symlink_metadata().is_err(),
        "{} exists: nothing is overwritten",
        path.display()
    );
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".market-")
        .tempfile_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist_noclobber(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Follows a task until it ends: a bar of steps with the loss while it runs, the audit and
/// each verdict as they come.
async fn follow(client: &Client, id: &TaskId) -> Result<TaskView> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut told = std::collections::BTreeSet::new();
    let mut last_state = String::new();
    let done = client
        .wait(id, Duration::from_secs(24 * 3600), |t| {
            bar.set_prefix(t.state.name());
            match &t.state {
                TaskState::Running {
                    done, total, loss, ..
                } => {
                    bar.set_length(u64::from(*total));
                    bar.set_position(u64::from(*done));
                    bar.set_message(if t.kind == "training" {
                        format!("loss {loss:.4}")
                    } else {
                        String::new()
                    });
                }
                TaskState::Queued => {
                    bar.set_message(t.waiting_for.clone().unwrap_or_default());
                }
                TaskState::Pooling { round, rounds } => {
                    bar.set_length(u64::from(*rounds));
                    bar.set_position(u64::from(*round));
                    let slots: Vec<String> = t
                        .slots
                        .iter()
                        .map(|s| format!("slot {} {}", s.slot, s.state.name()))
                        .collect();
                    bar.set_message(slots.join(", "));
                }
                TaskState::Auditing { .. } => {
                    if let Some(plan) = t.attempts.last().and_then(|a| a.plan.as_ref()) {
                        let got = t.attempts.last().map_or(0, |a| a.verdicts.len());
                        bar.set_message(format!(
                            "{got} of {} verdicts, detection {:.4}",
                            plan.verifiers, plan.detection_probability
                        ));
                    }
                }
                _ => {}
            }
            if last_state != t.state.name() {
                last_state = t.state.name().to_owned();
                // Printed whether or not the bar shows (a script's log gets them too).
                bar.suspend(|| eprintln!("{}: {}", t.id, last_state));
            }
            for (n, a) in t.attempts.iter().enumerate() {
                for v in &a.verdicts {
                    if told.insert(v.verdict_id) {
                        let line = format!(
                            "  attempt {n} (worker {}): verifier {} {} ({} checked){}",
                            short(&a.worker.to_string()),
                            short(&v.verifier.to_string()),
                            if v.passed { "passed" } else { "FAILED" },
                            v.checked,
                            v.detail
                                .as_deref()
                                .map(|d| format!(": {d}"))
                                .unwrap_or_default()
                        );
                        bar.suspend(|| eprintln!("{line}"));
                    }
                }
            }
        })
        .await?;
    bar.finish_and_clear();
    anyhow::ensure!(
        done.state.is_final(),
        "task {id} is still {} after a day",
        done.state.name()
    );
    if let TaskState::Rejected { reason } = &done.state {
        eprintln!("  why: {reason}");
    }
    Ok(done)
}

fn describe_end(state: &TaskState) -> String {
    match state {
        TaskState::Rejected { reason } => format!("rejected: {reason}"),
        s => s.name().to_owned(),
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// Prints every page of tasks.
async fn list(
    client: &Client,
    buyer: Option<market_protocol::AccountId>,
    state: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut after = None;
    let mut all = Vec::new();
    loop {
        let page = client.tasks(buyer.as_ref(), state, after).await?;
        all.extend(page["tasks"].as_array().cloned().unwrap_or_default());
        match page["next_after"].as_u64() {
            // Pages move forward; a node that says otherwise is not followed round in circles.
            Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
            _ => break,
        }
    }
    if json {
        return print_json(&all);
    }
    println!(
        "{:<64}  {:<9} {:<10} {:>7}",
        "task", "kind", "state", "price"
    );
    for t in &all {
        println!(
            "{:<64}  {:<9} {:<10} {:>7}",
            t["id"].as_str().unwrap_or(""),
            t["kind"].as_str().unwrap_or(""),
            t["state"]["state"].as_str().unwrap_or(""),
            t["price"].as_u64().unwrap_or(0)
        );
    }
    eprintln!("{} tasks", all.len());
    Ok(())
}

/// Downloads a result's outputs into `dir`, checked against the verified ledger.
async fn save_result(
    client: &Client,
    fetch: &market_ledger::remote::Fetch,
    id: &TaskId,
    result: &Value,
    dir: &Path,
) -> Result<()> {
    let task = client.task(id).await?;
    let outputs: Vec<BlobId> = result["outputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    // The node names the result's blobs; the ledger, verified here, says which outputs the
    // accepted commitment bound. A pooled task's weights come from merges instead, which the
    // ledger records round by round (`pool_round`).
    match fetch.released_outputs(*id).await? {
        Some(released) => anyhow::ensure!(
            released == outputs,
            "the node names outputs {outputs:?} for task {id}, but the ledger's accepted commitment binds {released:?}: not downloaded"
        ),
        None if task.pool.is_some() => eprintln!(
            "note: a pooled task's weights are its last merge; check them against the ledger's pool_round entries"
        ),
        None => anyhow::bail!("the ledger records no accepted result for task {id}"),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ours = [
        "result.json",
        "weights.safetensors",
        "config.json",
        "answers.jsonl",
        "outputs",
    ];
    if let Some(taken) = ours.iter().find(|f| dir.join(f).symlink_metadata().is_ok()) {
        anyhow::bail!(
            "{} exists: choose a new --out directory (nothing is overwritten)",
            dir.join(taken).display()
        );
    }
    if task.kind == "training" {
        let [weights] = outputs.as_slice() else {
            anyhow::bail!(
                "a training result has one output, this one {}",
                outputs.len()
            );
        };
        let path = dir.join("weights.safetensors");
        super::blob::download(client, weights, &path).await?;
        eprintln!("weights: {} (blob {weights})", path.display());
        // A llama's Hugging Face config, so the directory loads as a `transformers` model:
        // written only if it is exactly a llama config and the weights have its shapes (the
        // weights are the ledger's; the config is only the node's word).
        if let Some(config) = result.get("hf_config").filter(|c| !c.is_null()) {
            let llama = market_compute::llama::LlamaConfig::from_hf_config_json(config)
                .context("the node's hf_config")?;
            market_compute::init::check_weights(&llama.layout(), &std::fs::read(&path)?)
                .context("the weights against the node's hf_config")?;
            let path = dir.join("config.json");
            write_new(&path, serde_json::to_string_pretty(config)?.as_bytes())?;
            eprintln!("config: {}", path.display());
        }
    } else {
        let out_dir = dir.join("outputs");
        // A new directory: an existing one (or a link to one elsewhere) is refused.
        std::fs::create_dir(&out_dir)
            .with_context(|| format!("creating {}: it must not exist", out_dir.display()))?;
        let items = result["items"].as_array().cloned().unwrap_or_default();
        let mut answers = String::new();
        for (i, blob) in outputs.iter().enumerate() {
            super::blob::download(client, blob, &out_dir.join(i.to_string())).await?;
            answers.push_str(&serde_json::to_string(&serde_json::json!({
                "index": i,
                "output": blob,
                "text": items.get(i).cloned().unwrap_or(Value::Null),
            }))?);
            answers.push('\n');
        }
        write_new(&dir.join("answers.jsonl"), answers.as_bytes())?;
        eprintln!("{} outputs in {}", outputs.len(), out_dir.display());
    }
    write_new(
        &dir.join("result.json"),
        serde_json::to_string_pretty(result)?.as_bytes(),
    )?;
    Ok(())
}
