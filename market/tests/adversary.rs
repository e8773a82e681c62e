//! The adversary suite as a test: every strategy is caught exactly when a faked segment is
//! sampled (or always, for whole-commitment cheats), honest work never is, and measured
//! detection rates match the hypergeometric prediction within statistical error.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;

use market_node::adversary::{run_case, strategies, table};
use market_protocol::canonical::{from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::{ExecutionProfile, TaskSpec};

#[test]
fn every_strategy_is_caught_as_predicted() {
    check_every_strategy(ExecutionProfile::Repro);
}

/// The same in `native`, where the audit compares within the tolerance (COMPUTE.md section 7)
/// instead of bit for bit: a faked segment must still fail it whenever it is sampled, and
/// honest work, re-executed, must still pass.
#[test]
fn every_strategy_is_caught_as_predicted_in_native() {
    check_every_strategy(ExecutionProfile::Native);
}

fn check_every_strategy(profile: ExecutionProfile) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/mlp-train.json");
    let mut task: TaskSpec =
        from_json_limited(&std::fs::read(path).unwrap(), MAX_MESSAGE_BYTES).unwrap();
    task.profile = profile;
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for b in strategies(&[0.1, 0.5]) {
        results.push(run_case(&task, b, 3, 120, dir.path()).unwrap());
    }
    println!("{profile:?}\n{}", table(&results));
    assert!(results.iter().any(|r| r.strategy.starts_with("last-step")));
    for r in &results {
        assert!(r.caught_exactly_when_sampled, "{}", r.strategy);
        assert!(
            r.sigmas() <= 4.0,
            "{}: measured {} vs predicted {}",
            r.strategy,
            r.rate(),
            r.predicted
        );
        match r.strategy.as_str() {
            "honest" => assert_eq!(r.caught, 0),
            "replay" | "forge-root" | "withhold" | "wrong-data" | "low-precision" => {
                assert_eq!(r.caught, r.audits, "{}", r.strategy)
            }
            _ => assert!(r.faked > 0),
        }
    }
}

/// The attacks on the protocol itself (issue: audit soundness), measured with the real audit,
/// verdict rules, referee and ringers. Every input is derived from fixed labels, so the counts
/// are the same on every run.
#[test]
fn attacks_on_the_audit_gain_nothing() {
    use market_node::adversary::{
        experiment_table, grinding, lazy_verifier, lying_verifier, per_verifier_samples,
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/mlp-train.json");
    let task: TaskSpec =
        from_json_limited(&std::fs::read(path).unwrap(), MAX_MESSAGE_BYTES).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let [vrf, old] = grinding(&task, 0.1, 3, 100, 300, dir.path()).unwrap();
    let two = per_verifier_samples(&task, 0.1, 3, 200, dir.path()).unwrap();
    let liar = lying_verifier(&task, 60, dir.path()).unwrap();
    let lazy = lazy_verifier(&task, 300, 100_000, dir.path()).unwrap();
    println!(
        "{}",
        experiment_table(&[
            vrf.clone(),
            old.clone(),
            two.clone(),
            liar.clone(),
            lazy.clone()
        ])
    );
    // Attack 1: grinding a beacon it can predict lets the worker escape almost always; against
    // the VRF beacon it is caught as often as any cheater.
    assert!(vrf.sigmas() <= 3.0, "{vrf:?}");
    assert!(old.rate() < vrf.predicted / 4.0, "{old:?}");
    // Attack 2: two verifiers with samples of their own catch as the union predicts, above
    // what one verifier (or two with the same sample) would.
    assert!(two.sigmas() <= 3.0, "{two:?}");
    // Attack 3: the liar is slashed every time, no honest worker ever.
    assert_eq!(liar.hits, liar.trials, "{liar:?}");
    assert!(liar.note.ends_with(": 0"), "{liar:?}");
    // Attack 7: a lazy verifier that checks only bundles signed by a key it saw on a ringer is
    // caught at the ringer rate: no two ringers share a signer.
    assert!(lazy.sigmas() <= 3.0, "{lazy:?}");
    assert!(lazy.note.contains("recognised 0"), "{lazy:?}");
}
