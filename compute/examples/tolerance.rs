//! Measures how far `native` (or `cuda`) states drift from `repro` states over the same steps,
//! against how far a cheat (skipping one step of a segment) moves them, to justify
//! `tolerance::MAX_RELATIVE_L2` (see spec/COMPUTE.md section 7). Each segment starts from the
//! `repro` checkpoint, as an audit's re-execution does.
//!
//! Tasks: the example `gpt` task, then every training vector of `spec/vectors/compute-{mlp,gpt,
//! cases}.json` (`llama` training is `repro` only and is not among them); any task that does not
//! run fails the check. For a vector, the `repro` checkpoints computed here must also equal its
//! golden hashes bit for bit: on a GPU machine that is a check of `repro` on another CPU.
//! Spec files are read from `MARKET_SPEC_DIR` if set (a prebuilt binary on another machine),
//! else from this checkout.
//!
//! `cargo run --release -p market-compute --example tolerance [-- --profile cuda]`
//! (`cuda` needs `--features cuda` and a GPU; `scripts/gpu-check.sh` runs it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use market_compute::tolerance::{worst_relative_l2, MAX_RELATIVE_L2};
use market_compute::{Backend, BlobSource, NoBlobs, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{BlobId, ExecutionProfile, Identity, TaskSpec};
use serde_json::Value;

/// The worst honest distance, where it was, and the smallest cheat distance of one task.
struct Drift {
    honest: f64,
    at: String,
    cheat: f64,
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
    let mut start = repro.initial_state();
    let mut d = Drift {
        honest: 0.0,
        at: String::new(),
        cheat: f64::INFINITY,
        segments: other.segments(),
        golden_mismatches: Vec::new(),
    };
    let mut check_golden = |index: usize, hash: String| {
        if golden.get(index).is_some_and(|g| *g != hash) {
            d.golden_mismatches.push(index);
        }
    };
    check_golden(0, start.hash(&repro.layout)?.to_string());
    for seg in 0..other.segments() {
        let (a, _) = repro.run_segment(seg, &start, |_, _| {})?;
        check_golden(seg as usize + 1, a.hash(&repro.layout)?.to_string());
        let (b, _) = other.run_segment(seg, &start, |_, _| {})?;
        let (honest, tensor) = worst_relative_l2(&repro.layout, &b, &a);
        if honest > d.honest || honest.is_nan() {
            (d.honest, d.at) = (honest, format!("segment {seg}, {tensor}"));
        }
        // The cheapest cheat: skip the last step of the segment (the last one may be short)
        // and claim its step count.
        let mut skipped = start.clone();
        for _ in 1..a.step - start.step {
            repro.step(&mut skipped)?;
        }
        skipped.step = a.step;
        d.cheat = d
            .cheat
            .min(worst_relative_l2(&repro.layout, &skipped, &a).0);
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
    let mut tasks = vec![(
        "the example gpt task".to_owned(),
        training_task(&Identity::from_test_label("buyer"), 1),
        BTreeMap::new(),
        Vec::new(),
    )];
    for file in ["compute-mlp.json", "compute-gpt.json", "compute-cases.json"] {
        tasks.extend(vectors(file)?);
    }
    println!(
        "profile {profile:?} against repro, threshold MAX_RELATIVE_L2 = {MAX_RELATIVE_L2:e}\n"
    );
    println!("| task | segments | repro = golden | honest worst tensor | one skipped step, least | margins |");
    println!("|---|---|---|---|---|---|");
    let (mut honest_max, mut cheat_min, mut failed) = (0.0f64, f64::INFINITY, false);
    for (name, task, blobs, golden) in &tasks {
        let source: &dyn BlobSource = if blobs.is_empty() { &NoBlobs } else { blobs };
        match drift(task, profile, source, golden) {
            Ok(d) => {
                let bits = match (golden.is_empty(), d.golden_mismatches.is_empty()) {
                    (true, _) => "(no vector)".to_owned(),
                    (false, true) => "yes".to_owned(),
                    (false, false) => format!("NO: checkpoints {:?}", d.golden_mismatches),
                };
                println!(
                    "| {name} | {} | {bits} | {:.3e} ({}) | {:.3e} | {:.1}x above honest, {:.1}x below cheat |",
                    d.segments,
                    d.honest,
                    d.at,
                    d.cheat,
                    MAX_RELATIVE_L2 / d.honest,
                    d.cheat / MAX_RELATIVE_L2
                );
                honest_max = honest_max.max(d.honest);
                cheat_min = cheat_min.min(d.cheat);
                failed |= d.honest.is_nan()
                    || d.honest > MAX_RELATIVE_L2
                    || d.cheat <= MAX_RELATIVE_L2
                    || !d.golden_mismatches.is_empty();
            }
            Err(e) => {
                println!("| {name} | did not run: {e} | | | | |");
                failed = true;
            }
        }
    }
    println!(
        "\nworst honest {honest_max:.3e}, least cheat {cheat_min:.3e}: margin {:.1}x above honest, {:.1}x below cheat",
        MAX_RELATIVE_L2 / honest_max,
        cheat_min / MAX_RELATIVE_L2
    );
    if failed {
        bail!("a task did not run, a repro checkpoint differs from its golden hash, or the threshold does not separate honest runs from cheats in every task");
    }
    Ok(())
}
