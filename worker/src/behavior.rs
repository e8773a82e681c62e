//! How a worker behaves: honestly, or (as a testing aid for audits) by one of the cheating
//! strategies an auditor must catch. Selected with `market-worker exec --fault STRATEGY`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use market_protocol::sampling::sample_indices;
use market_protocol::{ChallengeSeed, Hash};

/// A worker's strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behavior {
    /// Runs every step.
    Honest,
    /// A fraction of segments copy their start state instead of training.
    Skip(f64),
    /// A fraction of segments are trained, then their weights perturbed.
    Noise(f64),
    /// A fraction of segments leave the parameters where the segment started and take only
    /// its last step from there, committing each step's loss at the start parameters (which a
    /// real cheater gets from a forward pass each; this test aid computes them with whole
    /// steps, the same outputs): the cheap cheat a `native` tolerance must still catch where a
    /// segment moves the parameters little (plain SGD, a small learning rate).
    LastStep(f64),
    /// Trains the first part of the run only and pads the rest (the last fraction) with copies.
    Truncate(f64),
    /// Trains every segment on other data.
    WrongData,
    /// Trains in bf16 instead of f32 (weights rounded after every step).
    LowPrecision,
    /// Submits the results of another task (the same spec with another seed).
    Replay,
    /// Commits to a root that does not match its checkpoints.
    ForgeRoot,
    /// Refuses to open checkpoints (deletes all but the first and last).
    Withhold,
    /// Runs honestly and lists every file, then, once the node has taken its result, deletes
    /// all checkpoints but the first and last: a worker that would refuse whatever the
    /// challenges open (only the worker daemon acts on it; offline it runs honestly).
    WithholdLate,
}

/// Why a strategy name is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown strategy {0:?}: use honest, skip:F, noise:F, last-step:F, truncate:F (0 < F <= 1), \
     wrong-data, \
     low-precision, replay, forge-root, withhold or withhold-late"
)]
pub struct BehaviorError(pub String);

impl FromStr for Behavior {
    type Err = BehaviorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BehaviorError(s.to_owned());
        let fraction = |f: &str| -> Result<f64, BehaviorError> {
            let v: f64 = f.parse().map_err(|_| bad())?;
            if v > 0.0 && v <= 1.0 {
                Ok(v)
            } else {
                Err(bad())
            }
        };
        Ok(match s.split_once(':') {
            Some(("skip", f)) => Self::Skip(fraction(f)?),
            Some(("noise", f)) => Self::Noise(fraction(f)?),
            Some(("last-step", f)) => Self::LastStep(fraction(f)?),
            Some(("truncate", f)) => Self::Truncate(fraction(f)?),
            Some(_) => return Err(bad()),
            None => match s {
                "honest" => Self::Honest,
                "wrong-data" => Self::WrongData,
                "low-precision" => Self::LowPrecision,
                "replay" => Self::Replay,
                "forge-root" => Self::ForgeRoot,
                "withhold" => Self::Withhold,
                "withhold-late" => Self::WithholdLate,
                _ => return Err(bad()),
            },
        })
    }
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Honest => write!(f, "honest"),
            Self::Skip(x) => write!(f, "skip:{x}"),
            Self::Noise(x) => write!(f, "noise:{x}"),
            Self::LastStep(x) => write!(f, "last-step:{x}"),
            Self::Truncate(x) => write!(f, "truncate:{x}"),
            Self::WrongData => write!(f, "wrong-data"),
            Self::LowPrecision => write!(f, "low-precision"),
            Self::Replay => write!(f, "replay"),
            Self::ForgeRoot => write!(f, "forge-root"),
            Self::Withhold => write!(f, "withhold"),
            Self::WithholdLate => write!(f, "withhold-late"),
        }
    }
}

impl Behavior {
    /// The segments (or items) whose computation this strategy fakes, out of `n`. The cheater
    /// picks them with its own randomness (from `salt`), which the auditor cannot know.
    pub fn faked_segments(&self, n: u32, salt: &Hash) -> BTreeSet<u32> {
        let count = |f: f64| ((f * f64::from(n)).ceil() as u32).clamp(1, n.max(1)).min(n);
        match *self {
            Self::Skip(f) | Self::Noise(f) | Self::LastStep(f) => {
                let seed = ChallengeSeed(Hash::of(
                    &[b"cheater's own choice".as_slice(), salt.as_bytes()].concat(),
                ));
                sample_indices(&seed, n, count(f))
                    .unwrap_or_default()
                    .into_iter()
                    .collect()
            }
            Self::Truncate(f) => (n - count(f)..n).collect(),
            Self::WrongData | Self::LowPrecision | Self::Replay => (0..n).collect(),
            Self::Honest | Self::ForgeRoot | Self::Withhold | Self::WithholdLate => BTreeSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_strategy_and_refuses_nonsense() {
        for s in [
            "honest",
            "skip:0.2",
            "noise:0.5",
            "last-step:0.25",
            "truncate:1",
            "wrong-data",
            "low-precision",
            "replay",
            "forge-root",
            "withhold",
            "withhold-late",
        ] {
            let b: Behavior = s.parse().unwrap();
            assert_eq!(b.to_string().parse::<Behavior>().unwrap(), b);
        }
        for s in ["skip", "skip:0", "skip:1.5", "skip:x", "lie", "noise:-1"] {
            assert!(s.parse::<Behavior>().is_err(), "{s}");
        }
    }

    #[test]
    fn fakes_the_requested_share() {
        let salt = Hash::of(b"t");
        assert_eq!(Behavior::Skip(0.2).faked_segments(20, &salt).len(), 4);
        assert_eq!(
            Behavior::Truncate(0.1).faked_segments(20, &salt),
            (18..20).collect()
        );
        assert!(Behavior::Honest.faked_segments(20, &salt).is_empty());
    }
}
