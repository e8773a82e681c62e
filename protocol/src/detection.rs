//! Detection maths: how likely an audit of `s` segments is to catch a worker that faked `m` of
//! `n`, and how many samples a buyer's target needs. The market shows these numbers to the
//! buyer, so they are exact hypergeometric probabilities, not approximations.

use crate::numbers::Decimal;

/// Probability that `s` distinct samples out of `n` segments include at least one of `m` faked
/// ones: `1 - C(n - m, s) / C(n, s) = 1 - prod_{i < s} (n - m - i) / (n - i)`.
pub fn detection_probability(n: u64, m: u64, s: u64) -> f64 {
    let m = m.min(n);
    let s = s.min(n);
    if m == 0 || s == 0 {
        return 0.0;
    }
    if s > n - m {
        return 1.0;
    }
    let mut miss = 1.0f64;
    for i in 0..s {
        miss *= (n - m - i) as f64 / (n - i) as f64;
    }
    1.0 - miss
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
