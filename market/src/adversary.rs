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
        sigmas(self.caught, self.audits, self.predicted)
    }
}

/// How many standard errors `hits` of `trials` is from a predicted probability `p` (0 or
/// infinity when `p` is 0 or 1 and the outcome is certain).
fn sigmas(hits: usize, trials: usize, p: f64) -> f64 {
    let rate = hits as f64 / trials.max(1) as f64;
    let se = (p * (1.0 - p) / trials.max(1) as f64).sqrt();
    if se == 0.0 {
        if (rate - p).abs() < 1e-12 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (rate - p).abs() / se
    }
}

/// Strategies caught by whole-commitment checks whatever is sampled.
fn always_caught(b: Behavior) -> bool {
    matches!(b, Behavior::Replay | Behavior::ForgeRoot)
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
    let name = behavior.to_string().replace(':', "-");
    let (bundle, report) = run_once(task, &worker, behavior, dir, &name)?;
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
        v.extend([
            Behavior::Skip(f),
            Behavior::Noise(f),
            Behavior::LastStep(f),
            Behavior::Truncate(f),
        ]);
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

/// The measured outcome of an attack on the audit protocol itself (a grinding worker, a lying
/// or lazy verifier, independent samples), against what the protocol predicts.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    /// What was measured.
    pub name: String,
    /// Independent trials.
    pub trials: usize,
    /// Trials with the outcome measured (caught, slashed).
    pub hits: usize,
    /// The predicted probability of that outcome per trial.
    pub predicted: f64,
    /// What else was counted, for people.
    pub note: String,
}

impl Experiment {
    /// The measured rate.
    pub fn rate(&self) -> f64 {
        self.hits as f64 / self.trials.max(1) as f64
    }

    /// How many standard errors the measured rate is from the prediction.
    pub fn sigmas(&self) -> f64 {
        sigmas(self.hits, self.trials, self.predicted)
    }
}

/// The experiments as a Markdown table.
pub fn experiment_table(results: &[Experiment]) -> String {
    let mut s = String::from(
        "| experiment | trials | hits | measured | predicted | off by (σ) | note |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.2} | {} |\n",
            r.name,
            r.trials,
            r.hits,
            r.rate(),
            r.predicted,
            r.sigmas(),
            r.note
        ));
    }
    s
}

/// Runs `task` with `behavior` by the worker named `worker` into `dir/name`: one bundle that an
/// experiment then audits many times.
fn run_once(
    task: &TaskSpec,
    worker: &Identity,
    behavior: Behavior,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Bundle, market_worker::ExecReport)> {
    let bundle = Bundle::at(dir.join(name));
    let report = exec(task, worker, behavior, &bundle, &NoBlobs, |_| {})?;
    Ok((bundle, report))
}

fn trial_beacon(label: &str, k: usize) -> Beacon {
    Beacon(Hash::of(format!("{label} {k}").as_bytes()))
}

/// A grinding worker: it fakes `fraction` of the segments, then for each of `trials` sessions
/// re-signs up to `tries` variants of its commitment (one unchecked loss value changed) and
/// keeps the first whose challenge, predicted from data it knows (the pre-VRF rule: a hash of
/// what it sends), misses every faked segment. Returns its detection rate when the beacon is
/// the operator's VRF output (what the node does), and when the beacon is the predicted one
/// (the rule it replaced), each with the hypergeometric prediction of an honest sample.
pub fn grinding(
    task: &TaskSpec,
    fraction: f64,
    samples: u32,
    trials: usize,
    tries: usize,
    dir: &Path,
) -> anyhow::Result<[Experiment; 2]> {
    use market_protocol::{Challenge, CommitmentId, F32Bits, Signed};
    let worker = Identity::from_test_label("adversary grinder");
    let verifier = Identity::from_test_label("adversary verifier");
    let operator = Identity::from_test_label("adversary operator");
    let (bundle, report) = run_once(task, &worker, Behavior::Skip(fraction), dir, "grinding")?;
    let base = report.commitment.body.clone();
    let n = base.segments;
    let knob = *report.faked.iter().next().unwrap_or(&0) as usize;
    let (mut vrf_caught, mut old_caught, mut ground) = (0, 0, 0);
    for k in 0..trials {
        let mut chosen = None;
        for j in 0..tries {
            let mut c = base.clone();
            c.loss_trace[knob] = F32Bits(((k * tries + j) as u32).wrapping_add(1));
            let signed = Signed::sign(c, &worker)?;
            let cid = CommitmentId(signed.id()?);
            let predicted = Beacon(Hash::of(cid.as_bytes()));
            let challenge = Challenge::derive(verifier.account(), cid, predicted, n, samples)?;
            let misses = challenge.sampled.iter().all(|s| !report.faked.contains(s));
            chosen = Some((signed, cid, predicted));
            if misses {
                ground += 1;
                break;
            }
        }
        let Some((signed, cid, predicted)) = chosen else {
            continue;
        };
        bundle.write_commitment(&signed)?;
        let (beacon, _) = market_protocol::beacon::prove_beacon(&operator, &cid);
        let policy = SamplePolicy::Count(samples);
        vrf_caught += usize::from(!audit(&bundle, beacon, &policy, &verifier, &NoBlobs)?.passed());
        old_caught +=
            usize::from(!audit(&bundle, predicted, &policy, &verifier, &NoBlobs)?.passed());
    }
    let predicted = detection_probability(
        u64::from(n),
        report.faked.len() as u64,
        u64::from(samples.min(n)),
    );
    let note = format!(
        "{n} segments, {} faked, {samples} sampled; a variant predicted to miss was found in {ground} of {trials} sessions (up to {tries} tries each)",
        report.faked.len()
    );
    Ok([
        Experiment {
            name: "grinding worker, VRF beacon".into(),
            trials,
            hits: vrf_caught,
            predicted,
            note: note.clone(),
        },
        Experiment {
            name: "grinding worker, beacon it can predict (the old rule)".into(),
            trials,
            hits: old_caught,
            predicted,
            note,
        },
    ])
}

/// Two verifiers, each with its own sample of `samples` segments of a worker faking
/// `fraction`: the rate at which at least one catches it, against the union prediction
/// `1 - (1 - p)^2`.
pub fn per_verifier_samples(
    task: &TaskSpec,
    fraction: f64,
    samples: u32,
    trials: usize,
    dir: &Path,
) -> anyhow::Result<Experiment> {
    let worker = Identity::from_test_label("adversary worker");
    let verifiers = [
        Identity::from_test_label("adversary verifier a"),
        Identity::from_test_label("adversary verifier b"),
    ];
    let (bundle, report) = run_once(task, &worker, Behavior::Skip(fraction), dir, "per-verifier")?;
    let n = report.commitment.body.segments;
    let (mut caught, mut overlap) = (0, 0);
    for k in 0..trials {
        let beacon = trial_beacon("per-verifier beacon", k);
        let mut any = false;
        let mut sets = Vec::new();
        for v in &verifiers {
            let a = audit(&bundle, beacon, &SamplePolicy::Count(samples), v, &NoBlobs)?;
            any |= !a.passed();
            sets.push(a.challenge.sampled.clone());
        }
        caught += usize::from(any);
        overlap += usize::from(sets[0] == sets[1]);
    }
    let (m, s) = (report.faked.len() as u64, u64::from(samples.min(n)));
    Ok(Experiment {
        name: "two verifiers, samples of their own".into(),
        trials,
        hits: caught,
        predicted: market_protocol::detection::union_detection_probability(
            u64::from(n),
            m,
            s,
            2,
        ),
        note: format!(
            "{n} segments, {m} faked, {s} sampled each (one verifier alone: {:.3}); identical samples in {overlap} trials",
            detection_probability(u64::from(n), m, s)
        ),
    })
}

/// A lying verifier on honest work, `trials` times: it fails the worker naming a segment of
/// its own challenge, one outside it, or one past the last. The node's rules (the verdict must
/// answer the verifier's challenge; every failure is re-executed by the node) decide: the
/// hits are trials in which the liar is slashed; the note counts honest workers slashed.
pub fn lying_verifier(task: &TaskSpec, trials: usize, dir: &Path) -> anyhow::Result<Experiment> {
    use crate::engine::verdicts::{check_verdict, VerdictDefect};
    use market_protocol::{
        message_id, ChallengeId, CommitmentId, FailureReason, SegmentCheck, Signed, StateHash,
        Verdict, VerdictOutcome, Version,
    };
    let worker = Identity::from_test_label("adversary worker");
    let liar = Identity::from_test_label("adversary liar");
    let (bundle, report) = run_once(task, &worker, Behavior::Honest, dir, "lying")?;
    let commitment = report.commitment;
    let cid = CommitmentId(commitment.id()?);
    let n = commitment.body.segments;
    let samples = 3.min(n);
    let (mut liar_slashed, mut worker_slashed) = (0, 0);
    for k in 0..trials {
        let beacon = trial_beacon("lying beacon", k);
        let challenge =
            market_verifier::audit::challenge_for(liar.account(), &commitment, beacon, samples)?;
        let outside = (0..n).find(|s| !challenge.sampled.contains(s)).unwrap_or(n);
        let segment = match k % 3 {
            0 => challenge.sampled[0],
            1 => outside,
            _ => n + k as u32,
        };
        let made_up = StateHash(Hash::of(format!("lie {k}").as_bytes()));
        let verdict = Signed::sign(
            Verdict {
                version: Version::CURRENT,
                verifier: liar.account(),
                commitment_id: cid,
                challenge_id: ChallengeId(message_id(&challenge)?),
                checked: vec![SegmentCheck {
                    segment,
                    expected: made_up,
                    actual: Some(made_up),
                }],
                outcome: VerdictOutcome::Fail {
                    segment,
                    step: None,
                    reason: FailureReason::StateMismatch,
                    detail: "made up".into(),
                },
                compute_share_ppm: 0,
            },
            &liar,
        )?;
        match check_verdict(&verdict, &liar.account(), &cid, &challenge) {
            Err(VerdictDefect::Lie(_)) => liar_slashed += 1,
            Err(VerdictDefect::Unattributable(_)) => {}
            Ok(()) => {
                // The node's referee re-executes the named segment before anyone is slashed.
                match market_verifier::recheck_segments(&bundle, &[segment], &NoBlobs)? {
                    Some(_) => worker_slashed += 1,
                    None => liar_slashed += 1,
                }
            }
        }
    }
    Ok(Experiment {
        name: "lying verifier on honest work".into(),
        trials,
        hits: liar_slashed,
        predicted: 1.0,
        note: format!("honest workers slashed: {worker_slashed}"),
    })
}

/// A lazy verifier: it passes what it is sent without re-executing, except bundles signed by a
/// key it has seen sign a ringer before (with one ringer key per node, that learned key would
/// have let it check only ringers). Every real audit is followed by a ringer at `rate_ppm`
/// (drawn as the node draws it); hits are audits in which the lazy verifier is slashed for
/// passing a ringer, predicted at the ringer rate.
pub fn lazy_verifier(
    task: &TaskSpec,
    trials: usize,
    rate_ppm: u32,
    dir: &Path,
) -> anyhow::Result<Experiment> {
    use crate::engine::ringers::{make_ringer, ringer_key};
    use market_protocol::sampling::ringer_draws;
    use market_protocol::{CommitmentId, TaskId};
    let worker = Identity::from_test_label("adversary worker");
    let lazy = Identity::from_test_label("adversary lazy verifier");
    let operator = Identity::from_test_label("adversary operator");
    let (real, report) = run_once(task, &worker, Behavior::Honest, dir, "lazy-real")?;
    let cid = CommitmentId(report.commitment.id()?);
    let task_id = TaskId(market_protocol::message_id(task)?);
    let mut learned: BTreeSet<market_protocol::AccountId> = BTreeSet::new();
    let (mut slashed, mut ringers, mut checked) = (0, 0, 0);
    for k in 0..trials {
        // Each trial stands for another task's attempt: its beacon, its ringer draw.
        let beacon = trial_beacon(&format!("lazy beacon {cid}"), k);
        if !ringer_draws(&beacon, rate_ppm, 1)[0] {
            continue;
        }
        ringers += 1;
        let key = ringer_key(&operator, &task_id, k, &lazy.account());
        let dst = dir.join(format!("lazy-ringer-{k}"));
        make_ringer(task, real.root(), &dst, &key, &NoBlobs)?;
        let ringer = Bundle::at(&dst);
        let signer = ringer.read_commitment()?.body.worker;
        let passed = if learned.contains(&signer) {
            checked += 1;
            audit(&ringer, beacon, &SamplePolicy::Count(1), &lazy, &NoBlobs)?.passed()
        } else {
            true
        };
        if passed {
            slashed += 1;
            learned.insert(signer);
        }
        let _ = std::fs::remove_dir_all(&dst);
    }
    Ok(Experiment {
        name: "lazy verifier that re-executes only ringer-looking bundles".into(),
        trials,
        hits: slashed,
        predicted: f64::from(rate_ppm) / 1e6,
        note: format!(
            "{ringers} ringers planted; it recognised {checked} by their signer (a key of its own per ringer)"
        ),
    })
}
