//! Detection maths: how likely an audit of `s` segments is to catch a worker that faked `m` of
//! `n`, and how many samples a buyer's target needs. The market shows these numbers to the
//! buyer, so they are exact hypergeometric probabilities, not approximations.

use crate::numbers::Decimal;

/// Probability that `s` distinct samples out of `n` segments include at least one of `m` faked
/// ones: `1 - C(n - m, s) / C(n, s) = 1 - prod_{i < s} (n - m - i) / (n - i)`.
pub fn detection_probability(n: u64, m: u64, s: u64) -> f64 {
    1.0 - miss_probability(n, m, s)
}

/// Probability that `s` distinct samples out of `n` miss all `m` faked segments:
/// `prod_{i < s} (n - m - i) / (n - i)`, multiplied in that order from 1.0 (the same walk
/// [`samples_per_verifier`] makes, so both give the same bits).
pub fn miss_probability(n: u64, m: u64, s: u64) -> f64 {
    let m = m.min(n);
    let s = s.min(n);
    if m == 0 || s == 0 {
        return 1.0;
    }
    if s > n - m {
        return 0.0;
    }
    let mut miss = 1.0f64;
    for i in 0..s {
        miss *= (n - m - i) as f64 / (n - i) as f64;
    }
    miss
}

/// The number of faked segments a fraction implies: `ceil(fraction * n)`, at least 1 when the
/// fraction is positive, computed exactly from the decimal.
pub fn faked_segments(n: u64, fraction: &Decimal) -> u64 {
    let m = fraction.ceil_mul(n).unwrap_or(0);
    u64::try_from(m).unwrap_or(u64::MAX).min(n)
}

/// The smallest `s` such that auditing `s` of `n` segments catches `m` faked ones with
/// probability at least `target`. `None` if even `s = n` cannot (only when `m = 0`).
pub fn samples_for_target(n: u64, m: u64, target: f64) -> Option<u64> {
    if target <= 0.0 {
        return Some(0);
    }
    let m = m.min(n);
    if m == 0 {
        return None;
    }
    // Miss probability falls monotonically with s; walk it down instead of recomputing.
    let mut miss = 1.0f64;
    for s in 0..=n {
        if 1.0 - miss >= target {
            return Some(s);
        }
        if s == n - m + 1 {
            break;
        }
        if s < n {
            miss *= (n - m - s) as f64 / (n - s) as f64;
        }
    }
    // Sampling more than n - m segments always includes a faked one.
    Some((n - m + 1).min(n))
}

/// Probability that `verifiers` independent samples of `s` segments each (every verifier draws
/// its own, [`crate::sampling::challenge_seed`]) include at least one of `m` faked segments out of
/// `n`: `1 - miss^verifiers`, `miss` being one sample's miss probability, the power taken by
/// repeated multiplication so every implementation gets the same bits.
pub fn union_detection_probability(n: u64, m: u64, s: u64, verifiers: u64) -> f64 {
    if verifiers == 0 {
        return 0.0;
    }
    let miss = miss_probability(n, m, s);
    let mut union_miss = 1.0f64;
    for _ in 0..verifiers {
        union_miss *= miss;
    }
    1.0 - union_miss
}

/// The smallest sample `s >= 1` each of `verifiers` verifiers draws so that together they catch
/// `m` faked segments out of `n` with probability at least `target`. At least one segment even
/// for a target of 0: an audit that checks nothing could not catch a ringer. `None` when `m` or
/// `verifiers` is 0.
pub fn samples_per_verifier(n: u64, m: u64, target: f64, verifiers: u64) -> Option<u64> {
    let m = m.min(n);
    if m == 0 || verifiers == 0 {
        return None;
    }
    // `miss` is one sample's miss probability for `s` samples, walked down as `s` grows.
    let mut miss = 1.0f64;
    for s in 0..n {
        if s >= 1 {
            let mut union_miss = 1.0f64;
            for _ in 0..verifiers {
                union_miss *= miss;
            }
            if 1.0 - union_miss >= target {
                return Some(s);
            }
        }
        miss *= (n - m).saturating_sub(s) as f64 / (n - s) as f64;
    }
    Some(n)
}

/// What a task's audit policy asks of each of `verifiers` verifiers on `segments` segments:
/// the faked segments it assumes and the sample each draws. The node plans with it when the task
/// is posted and each verifier re-derives its own sample size with it, so nobody takes the
/// other's word for `s`. `None` when the policy assumes nothing faked.
pub fn plan_samples(
    policy: &crate::AuditPolicy,
    segments: u64,
    verifiers: u64,
) -> Option<(u64, u64)> {
    let m = faked_segments(segments, &policy.assumed_faked_fraction);
    let s = samples_per_verifier(segments, m, policy.detection_target.to_f64(), verifiers)?;
    Some((m, s))
}

/// `q^k` for `q = (n - s) / n`, by repeated multiplication from 1.0, stopping early once the
/// product is 0 or `1 - product >= stop_at` (multiplying further by `q <= 1` never raises it,
/// so a comparison against `stop_at` is the same as after all `k` steps).
fn pooled_miss(n: u64, s: u64, k: u64, stop_at: f64) -> f64 {
    let q = n.saturating_sub(s) as f64 / n.max(1) as f64;
    let mut miss = 1.0f64;
    for _ in 0..k {
        if miss == 0.0 || 1.0 - miss >= stop_at {
            break;
        }
        miss *= q;
    }
    miss
}

/// A bound on the probability that the audits of a pooled task catch a cheater who faked `m`
/// segments anywhere among its `u` slot-rounds of `n` segments each, when each slot-round is
/// audited by `verifiers` verifiers sampling `s` segments each: at least
/// `1 - ((n - s) / n)^(verifiers · m)`, however the `m` are spread. (A slot-round with `m_i`
/// faked is missed by one verifier with probability `prod_{j < m_i} (n - s - j) / (n - j)`,
/// each factor at most `(n - s) / n`; the verifiers and the slot-rounds draw independently.)
pub fn pooled_detection_probability(n: u64, m: u64, s: u64, verifiers: u64) -> f64 {
    if m == 0 || verifiers == 0 || s == 0 {
        return 0.0;
    }
    1.0 - pooled_miss(n, s.min(n), verifiers.saturating_mul(m), 2.0)
}

/// The smallest sample `s >= 1` each of `verifiers` verifiers draws from each slot-round of `n`
/// segments so that [`pooled_detection_probability`] reaches `target` for `m` faked segments
/// over the whole pool. `None` when `m` or `verifiers` is 0.
pub fn pooled_samples_per_verifier(n: u64, m: u64, target: f64, verifiers: u64) -> Option<u64> {
    if m == 0 || verifiers == 0 || n == 0 {
        return None;
    }
    let k = verifiers.saturating_mul(m);
    for s in 1..n {
        if 1.0 - pooled_miss(n, s, k, target) >= target {
            return Some(s);
        }
    }
    Some(n)
}

/// What a task's audit policy asks of each of `verifiers` verifiers on each of its runs of
/// `segments` segments: the faked segments it assumes, the sample each verifier draws and the
/// detection that gives. A pooled task (`slot_rounds` > 1 runs of `segments` each, audited
/// apart) assumes the fraction faked over all its slot-rounds and is sized with the pooled
/// bound, so its audit costs about as much as one task of the same total length would; any
/// other task is [`plan_samples`] with [`union_detection_probability`]. `None` when the policy
/// assumes nothing faked or there is no verifier.
pub fn plan_for_runs(
    policy: &crate::AuditPolicy,
    segments: u64,
    slot_rounds: u64,
    verifiers: u64,
) -> Option<(u64, u64, f64)> {
    if slot_rounds <= 1 {
        let (m, s) = plan_samples(policy, segments, verifiers)?;
        let s = s.min(segments);
        return Some((m, s, union_detection_probability(segments, m, s, verifiers)));
    }
    let total = segments.saturating_mul(slot_rounds);
    let m = faked_segments(total, &policy.assumed_faked_fraction);
    let s = pooled_samples_per_verifier(segments, m, policy.detection_target.to_f64(), verifiers)?;
    Some((
        m,
        s,
        pooled_detection_probability(segments, m, s, verifiers),
    ))
}

/// How many separately audited runs a task is made of: `workers × rounds` slot-rounds for a
/// pooled training task, 1 for any other.
pub fn audited_runs(task: &crate::TaskSpec) -> u64 {
    match &task.workload {
        crate::Workload::Training(crate::TrainingSpec {
            pool: Some(pool), ..
        }) => u64::from(pool.workers) * u64::from(pool.rounds),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pooled bound holds for every way a cheater can spread its faked segments over the
    /// slot-rounds: the exact miss probability of each split is at most the bound's.
    #[test]
    fn the_pooled_bound_holds_for_every_split_of_the_faked_segments() {
        fn splits(m: u64, u: u64, n: u64) -> Vec<Vec<u64>> {
            if u == 0 {
                return if m == 0 { vec![Vec::new()] } else { Vec::new() };
            }
            let mut out = Vec::new();
            for first in 0..=m.min(n) {
                for mut rest in splits(m - first, u - 1, n) {
                    rest.insert(0, first);
                    out.push(rest);
                }
            }
            out
        }
        for (n, u, m, v) in [(4, 3, 2, 1), (5, 4, 3, 2), (6, 3, 4, 2), (3, 5, 4, 3)] {
            for s in 1..=n {
                let bound = 1.0 - pooled_detection_probability(n, m, s, v);
                for split in splits(m, u, n) {
                    let exact: f64 = split
                        .iter()
                        .map(|&mi| miss_probability(n, mi, s).powi(v as i32))
                        .product();
                    assert!(
                        exact <= bound + 1e-12,
                        "n {n} s {s} v {v} split {split:?}: {exact} > {bound}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_pooled_plan_is_the_smallest_sample_that_reaches_the_target() {
        // Issue 14's pool: 4 slots × 20 rounds of 50 one-step segments, 2 verifiers, 99%
        // against a tenth faked: each verifier re-executes 1 segment of 50 (4% of the pool
        // with both), where one task of 50 segments would need 20 each.
        let policy =
            crate::fixtures::training_task(&crate::Identity::from_test_label("b"), 1).audit;
        let (m, s, p) = plan_for_runs(&policy, 50, 80, 2).unwrap();
        assert_eq!((m, s), (400, 1));
        assert!(p >= 0.99, "{p}");
        let (_, single, _) = plan_for_runs(&policy, 50, 1, 2).unwrap();
        assert!(single > 10, "{single}");
        for (n, m, v) in [(10u64, 3u64, 2u64), (50, 5, 1), (7, 1, 3)] {
            let s = pooled_samples_per_verifier(n, m, 0.99, v).unwrap();
            assert!(s == n || pooled_detection_probability(n, m, s, v) >= 0.99);
            if s > 1 {
                assert!(pooled_detection_probability(n, m, s - 1, v) < 0.99);
            }
        }
    }

    #[test]
    fn known_values() {
        // 1 faked of 10, 1 sample: 1/10.
        assert!((detection_probability(10, 1, 1) - 0.1).abs() < 1e-15);
        // 2 of 4, 2 samples: 1 - C(2,2)/C(4,2) = 5/6.
        assert!((detection_probability(4, 2, 2) - 5.0 / 6.0).abs() < 1e-15);
        assert_eq!(detection_probability(10, 0, 5), 0.0);
        assert_eq!(detection_probability(10, 3, 8), 1.0);
    }

    #[test]
    fn smallest_sample_reaches_target() {
        for (n, m, target) in [
            (1000u64, 100u64, 0.99f64),
            (10, 1, 0.5),
            (50, 5, 0.999),
            (7, 7, 1.0),
        ] {
            let s = samples_for_target(n, m, target).unwrap();
            assert!(
                detection_probability(n, m, s) >= target,
                "{n} {m} {target} {s}"
            );
            if s > 0 {
                assert!(
                    detection_probability(n, m, s - 1) < target,
                    "{n} {m} {target} {s}"
                );
            }
        }
        assert_eq!(samples_for_target(100, 0, 0.5), None);
        // Catching 1 faked of 10 with certainty needs all 10.
        assert_eq!(samples_for_target(10, 1, 1.0), Some(10));
    }

    #[test]
    fn per_verifier_samples_meet_the_union_target() {
        for (n, m, target, v) in [
            (1000u64, 100u64, 0.99f64, 1u64),
            (1000, 100, 0.99, 2),
            (1000, 100, 0.99, 3),
            (40, 4, 0.9, 2),
            (20, 2, 0.999, 2),
            (5, 5, 1.0, 2),
            (1, 1, 0.5, 4),
        ] {
            let s = samples_per_verifier(n, m, target, v).unwrap();
            assert!(s >= 1);
            assert!(
                union_detection_probability(n, m, s, v) >= target,
                "{n} {m} {target} {v} {s}"
            );
            if s > 1 {
                assert!(
                    union_detection_probability(n, m, s - 1, v) < target,
                    "{n} {m} {target} {v} {s}"
                );
            }
        }
        // One verifier plans exactly as the single-audit maths.
        assert_eq!(
            samples_per_verifier(1000, 100, 0.99, 1),
            samples_for_target(1000, 100, 0.99)
        );
        // Two verifiers each sample fewer than one would alone, but more than half as many
        // (their samples may overlap).
        let (one, two) = (
            samples_per_verifier(1000, 100, 0.99, 1).unwrap(),
            samples_per_verifier(1000, 100, 0.99, 2).unwrap(),
        );
        assert!(two < one && 2 * two >= one, "{one} {two}");
        // A target of 0 still checks one segment.
        assert_eq!(samples_per_verifier(100, 10, 0.0, 2), Some(1));
        assert_eq!(samples_per_verifier(100, 0, 0.5, 2), None);
        assert_eq!(samples_per_verifier(100, 10, 0.5, 0), None);
        // The union of independent samples: 1 - (1 - p)^v.
        let p = detection_probability(40, 4, 3);
        assert!(
            (union_detection_probability(40, 4, 3, 2) - (1.0 - (1.0 - p) * (1.0 - p))).abs()
                < 1e-15
        );
    }
}
