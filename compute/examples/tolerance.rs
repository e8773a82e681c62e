//! Measures how far `native` (or `cuda`) states drift from `repro` states over the same steps,
//! against how far two cheats (skipping one step of a segment; taking only its last step) move them, by
//! both checks of `tolerance::segment_matches` (per-tensor state distance and the parameters'
//! update distance), to justify their thresholds (see spec/COMPUTE.md section 7). Each segment starts from the
//! `repro` checkpoint, as an audit's re-execution does.
//!
//! Tasks: the example `gpt` task, every training vector of `spec/vectors/compute-{mlp,gpt,cases,
//! llama-train}.json`, and two whose segments move the parameters little (plain SGD with a small
//! learning rate); any task that does not run fails the check. For a vector, the `repro` checkpoints computed here must also equal its
//! golden hashes bit for bit: on a GPU machine that is a check of `repro` on another CPU.
//! Spec files are read from `MARKET_SPEC_DIR` if set (a prebuilt binary on another machine),
//! else from this checkout.
//!
//! `cargo run --release -p market-compute --example tolerance [-- --profile cuda]`
//! (`cuda` needs `--features cuda` and a GPU; `scripts/gpu-check.sh` runs it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use market_compute::tolerance::{
    relative_l2, segment_matches, update_distance, worst_relative_l2, MAX_RELATIVE_L2,
    MAX_UPDATE_RELATIVE_L2, MIN_UPDATE_SHARE,
};
use market_compute::{Backend, BlobSource, NoBlobs, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{BlobId, ExecutionProfile, Identity, OptimizerSpec, TaskSpec, Workload};
use serde_json::Value;

/// One task's figures: the worst honest distances and the least cheat distances, by check.
struct Drift {
    /// Worst per-tensor state distance of an honest re-execution, and where.
    honest: f64,
    at: String,
    /// Worst update distance of an honest re-execution.
    honest_update: f64,
    /// The least update of a segment, as a share of the parameters' norm (where it is under
    /// `MIN_UPDATE_SHARE`, that floor is the measure).
    update_share: f64,
    /// A skipped step: least state distance, least update distance, and whether the combined
    /// check passed it in any segment (a cheat that went unnoticed).
    skip: f64,
    skip_update: f64,
    skip_passed: bool,
    /// Only the last step, from the start state: the same three.
    idle: f64,
    idle_update: f64,
    idle_passed: bool,
    segments: u32,
    /// Checkpoints whose `repro` hash differs from the vector's golden one.
    golden_mismatches: Vec<usize>,
}

fn drift(
    task: &TaskSpec,
    profile: ExecutionProfile,
    blobs: &dyn BlobSource,
    golden: &[String],
) -> anyhow::Result<Drift> {
    let mut task = task.clone();
    task.profile = profile;
    let other = TrainingJob::from_spec(&task, blobs)?;
    let repro = other.clone().with_backend(Backend::Repro);
    let layout = &repro.layout;
    let mut start = repro.initial_state();
    let mut d = Drift {
        honest: 0.0,
        at: String::new(),
        honest_update: 0.0,
        update_share: f64::INFINITY,
        skip: f64::INFINITY,
        skip_update: f64::INFINITY,
        skip_passed: false,
        idle: f64::INFINITY,
        idle_update: f64::INFINITY,
        idle_passed: false,
        segments: other.segments(),
        golden_mismatches: Vec::new(),
    };
    let mut check_golden = |index: usize, hash: String| {
        if golden.get(index).is_some_and(|g| *g != hash) {
            d.golden_mismatches.push(index);
        }
    };
    check_golden(0, start.hash(layout)?.to_string());
    for seg in 0..other.segments() {
        // `a` plays the worker (`repro`), `b` the auditor re-executing in the other profile.
        let (a, _) = repro.run_segment(seg, &start, |_, _| {})?;
        check_golden(seg as usize + 1, a.hash(layout)?.to_string());
        let (b, _) = other.run_segment(seg, &start, |_, _| {})?;
        let (honest, tensor) = worst_relative_l2(layout, &a, &b);
        if honest > d.honest || honest.is_nan() {
            (d.honest, d.at) = (honest, format!("segment {seg}, {tensor}"));
        }
        d.honest_update = d.honest_update.max(update_distance(&start, &b, &a));
        d.update_share = d.update_share.min(relative_l2(&start.params, &b.params));
        // The cheapest cheat: skip the last step of the segment (the last one may be short)
        // and claim its step count.
        let mut skipped = start.clone();
        for _ in 1..a.step - start.step {
            repro.step(&mut skipped)?;
        }
        skipped.step = a.step;
        d.skip = d.skip.min(worst_relative_l2(layout, &skipped, &b).0);
        d.skip_update = d.skip_update.min(update_distance(&start, &b, &skipped));
        d.skip_passed |= segment_matches(layout, &start, &b, &skipped).is_ok();
        // The laziest that keeps the optimizer state right: only the segment's last step, from
        // the start state (with momentum 0 the state then holds its gradient, as honestly).
        let mut idle = start.clone();
        idle.step = a.step - 1;
        repro.step(&mut idle)?;
        d.idle = d.idle.min(worst_relative_l2(layout, &idle, &b).0);
        d.idle_update = d.idle_update.min(update_distance(&start, &b, &idle));
        d.idle_passed |= segment_matches(layout, &start, &b, &idle).is_ok();
        start = a;
    }
    Ok(d)
}

/// A task to measure: its name, spec, blobs and golden checkpoint hashes (none for the example).
type Case = (String, TaskSpec, BTreeMap<BlobId, Vec<u8>>, Vec<String>);

/// The training vectors of one `spec/vectors` file.
fn vectors(file: &str) -> anyhow::Result<Vec<Case>> {
    let spec = std::env::var_os("MARKET_SPEC_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec"),
        PathBuf::from,
    );
    let path = spec.join("vectors").join(file);
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let mut out = Vec::new();
    for v in doc["vectors"].as_array().context("no vectors")? {
        let name = v["name"].as_str().unwrap_or("?").to_owned();
        let task: TaskSpec = serde_json::from_value(v["task"].clone())?;
        let mut blobs = BTreeMap::new();
        if let Some(map) = v["blobs"].as_object() {
            for (id, hex) in map {
                let bytes = hex::decode(hex.as_str().context("blob hex")?)?;
                blobs.insert(id.parse::<BlobId>()?, bytes);
            }
        }
        let golden = v["checkpoints"]
            .as_array()
            .context("no checkpoints")?
            .iter()
            .map(|c| c["state_hash"].as_str().unwrap_or("?").to_owned())
            .collect();
        out.push((format!("{file}: {name}"), task, blobs, golden));
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = match args.as_slice() {
        [] => ExecutionProfile::Native,
        [flag, p] if flag == "--profile" => match p.as_str() {
            "native" => ExecutionProfile::Native,
            "cuda" => ExecutionProfile::Cuda,
            other => bail!("--profile is native or cuda, not {other}"),
        },
        _ => bail!("usage: tolerance [--profile native|cuda]"),
    };
    let buyer = Identity::from_test_label("buyer");
    let mut tasks = vec![(
        "the example gpt task".to_owned(),
        training_task(&buyer, 1),
        BTreeMap::new(),
        Vec::new(),
    )];
    for file in [
        "compute-mlp.json",
        "compute-gpt.json",
        "compute-cases.json",
        "compute-llama-train.json",
    ] {
        tasks.extend(vectors(file)?);
    }
    // Segments that move the parameters little: plain SGD with a small learning rate, where
    // the state check alone passes a worker that trains nothing.
    let small = |lr: &str| OptimizerSpec::Sgd {
        lr: lr.parse().expect("a decimal"),
        momentum: "0".parse().expect("a decimal"),
        weight_decay: "0".parse().expect("a decimal"),
    };
    let mut gpt = training_task(&buyer, 1);
    if let Workload::Training(t) = &mut gpt.workload {
        t.optimizer = small("0.001");
    }
    tasks.push((
        "the example gpt task, SGD lr 0.001".to_owned(),
        gpt,
        BTreeMap::new(),
        Vec::new(),
    ));
    let llama: Vec<Case> = vectors("compute-llama-train.json")?;
    if let Some((name, task, blobs, _)) = llama.into_iter().next() {
        // 1e-5: an update under MIN_UPDATE_SHARE; 1e-7: near the parameters' own rounding.
        for lr in ["0.0001", "0.00001", "0.0000001"] {
            let mut task = task.clone();
            if let Workload::Training(t) = &mut task.workload {
                t.optimizer = small(lr);
            }
            tasks.push((
                format!("{name}, SGD lr {lr}"),
                task,
                blobs.clone(),
                Vec::new(),
            ));
        }
    }
    println!(
        "profile {profile:?} against repro: a state matches if every tensor is within \
         MAX_RELATIVE_L2 = {MAX_RELATIVE_L2:e} (state) and the parameters' update within \
         MAX_UPDATE_RELATIVE_L2 = {MAX_UPDATE_RELATIVE_L2:e} (update)\n"
    );
    println!("| task | segments | repro = golden | honest state (worst tensor) | honest update | least update share | skipped step: state, update | last step alone: state, update | cheats caught |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut honest_max, mut honest_update_max, mut failed) = (0.0f64, 0.0f64, false);
    for (name, task, blobs, golden) in &tasks {
        let source: &dyn BlobSource = if blobs.is_empty() { &NoBlobs } else { blobs };
        match drift(task, profile, source, golden) {
            Ok(d) => {
                let bits = match (golden.is_empty(), d.golden_mismatches.is_empty()) {
                    (true, _) => "(no vector)".to_owned(),
                    (false, true) => "yes".to_owned(),
                    (false, false) => format!("NO: checkpoints {:?}", d.golden_mismatches),
                };
                // A lazy segment misses about its whole update; under the floor that is
                // measured against MIN_UPDATE_SHARE, so an update under twice
                // MAX_UPDATE_RELATIVE_L2 · MIN_UPDATE_SHARE is too small to judge (and the
                // check does not claim to).
                let judged = d.update_share >= 2.0 * MAX_UPDATE_RELATIVE_L2 * MIN_UPDATE_SHARE;
                let caught = match (d.skip_passed, d.idle_passed) {
                    (false, false) => "both".to_owned(),
                    (_, true) if !judged => "the last step alone passed: the update is under \
                                             the floor (MIN_UPDATE_SHARE)"
                        .to_owned(),
                    (s, i) => format!(
                        "NO:{}{}",
                        if s { " a skipped step passed" } else { "" },
                        if i { " the last step alone passed" } else { "" }
                    ),
                };
                println!(
                    "| {name} | {} | {bits} | {:.3e} ({}) | {:.3e} | {:.1e} | {:.3e}, {:.3e} | {:.3e}, {:.3e} | {caught} |",
                    d.segments,
                    d.honest,
                    d.at,
                    d.honest_update,
                    d.update_share,
                    d.skip,
                    d.skip_update,
                    d.idle,
                    d.idle_update,
                );
                honest_max = honest_max.max(d.honest);
                honest_update_max = honest_update_max.max(d.honest_update);
                failed |= d.honest.is_nan()
                    || d.honest > MAX_RELATIVE_L2
                    || d.honest_update.is_nan()
                    || d.honest_update > MAX_UPDATE_RELATIVE_L2
                    || d.skip_passed
                    || (d.idle_passed && judged)
                    || !d.golden_mismatches.is_empty();
            }
            Err(e) => {
                println!("| {name} | did not run: {e} | | | | | | | |");
                failed = true;
            }
        }
    }
    println!(
        "\nworst honest: state {honest_max:.3e} ({:.1}x under its threshold), update \
         {honest_update_max:.3e} ({:.1}x under its threshold)",
        MAX_RELATIVE_L2 / honest_max,
        MAX_UPDATE_RELATIVE_L2 / honest_update_max,
    );
    if failed {
        bail!("a task did not run, a repro checkpoint differs from its golden hash, an honest re-execution failed a check, or a cheat passed both");
    }
    Ok(())
}
