//! The adversary suite: every cheating strategy, at several fractions, audited with many
//! independent beacons; the measured detection rate is compared with the hypergeometric
//! prediction of the protocol crate. Used by a test and by the `market-adversary` report.

use std::collections::BTreeSet;
use std::path::Path;

use market_compute::bundle::Bundle;
use market_compute::NoBlobs;
use market_protocol::detection::detection_probability;
use market_protocol::{Beacon, Hash, Identity, TaskSpec};
use market_verifier::{audit, SamplePolicy};
use market_worker::{exec, Behavior};
use serde::Serialize;

/// The measured outcome of one strategy.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The strategy, e.g. `skip:0.1`.
    pub strategy: String,
    /// Segments in the run.
    pub segments: u32,
    /// Segments the cheater faked.
    pub faked: usize,
    /// Segments sampled per audit.
    pub samples: u32,
    /// Audits run (one per beacon).
    pub audits: usize,
    /// Audits that failed the worker.
    pub caught: usize,
    /// The predicted probability of catching it.
    pub predicted: f64,
    /// Whether every audit that sampled a faked segment failed, and every other passed (for
    /// strategies that fake segments; always-caught strategies must fail every audit).
    pub caught_exactly_when_sampled: bool,
}

impl CaseResult {
    /// The measured detection rate.
    pub fn rate(&self) -> f64 {
        self.caught as f64 / self.audits.max(1) as f64
    }

    /// How many standard errors the measured rate is from the prediction.
    pub fn sigmas(&self) -> f64 {
        let p = self.predicted;
        let se = (p * (1.0 - p) / self.audits.max(1) as f64).sqrt();
        if se == 0.0 {
            if (self.rate() - p).abs() < 1e-12 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (self.rate() - p).abs() / se
        }
    }
}

/// Strategies caught by whole-commitment checks whatever is sampled.
fn always_caught(b: Behavior) -> bool {
    matches!(
        b,
        Behavior::Replay | Behavior::ForgeRoot | Behavior::Withhold
    )
}

/// Runs `behavior` on `task` once, then audits the bundle with `beacons` beacons of `samples`
/// segments each.
pub fn run_case(
    task: &TaskSpec,
    behavior: Behavior,
    samples: u32,
    beacons: usize,
    dir: &Path,
) -> anyhow::Result<CaseResult> {
    let worker = Identity::from_test_label("adversary worker");
    let verifier = Identity::from_test_label("adversary verifier");
    let bundle = Bundle::at(dir.join(behavior.to_string().replace(':', "-")));
    let report = exec(task, &worker, behavior, &bundle, &NoBlobs, |_| {})?;
    let segments = report.commitment.body.segments;
    let mut caught = 0;
    let mut exact = true;
    for k in 0..beacons {
        let beacon = Beacon(Hash::of(format!("adversary beacon {k}").as_bytes()));
        let audit = audit(
            &bundle,
            beacon,
            &SamplePolicy::Count(samples),
            &verifier,
            &NoBlobs,
        )?;
        let failed = !audit.passed();
        caught += usize::from(failed);
        let sampled: BTreeSet<u32> = audit.challenge.sampled.iter().copied().collect();
        let should_fail = always_caught(behavior) || !sampled.is_disjoint(&report.faked);
        exact &= failed == should_fail;
    }
    let predicted = if always_caught(behavior) {
        1.0
    } else {
        detection_probability(
            u64::from(segments),
            report.faked.len() as u64,
            u64::from(samples.min(segments)),
        )
    };
    Ok(CaseResult {
        strategy: behavior.to_string(),
        segments,
        faked: report.faked.len(),
        samples,
        audits: beacons,
        caught,
        predicted,
        caught_exactly_when_sampled: exact,
    })
}

/// Every strategy, the fraction strategies at each of `fractions`.
pub fn strategies(fractions: &[f64]) -> Vec<Behavior> {
    let mut v = vec![Behavior::Honest];
    for &f in fractions {
        v.extend([Behavior::Skip(f), Behavior::Noise(f), Behavior::Truncate(f)]);
    }
    v.extend([
        Behavior::WrongData,
        Behavior::LowPrecision,
        Behavior::Replay,
        Behavior::ForgeRoot,
        Behavior::Withhold,
    ]);
    v
}

/// The results as a Markdown table.
pub fn table(results: &[CaseResult]) -> String {
    let mut s = String::from("| strategy | segments | faked | samples | audits | caught | measured | predicted | off by (σ) | caught exactly when sampled |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.2} | {} |\n",
            r.strategy,
            r.segments,
            r.faked,
            r.samples,
            r.audits,
            r.caught,
            r.rate(),
            r.predicted,
            r.sigmas(),
            r.caught_exactly_when_sampled
        ));
    }
    s
}
