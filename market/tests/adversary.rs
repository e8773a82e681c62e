//! The adversary suite as a test: every strategy is caught exactly when a faked segment is
//! sampled (or always, for whole-commitment cheats), honest work never is, and measured
//! detection rates match the hypergeometric prediction within statistical error.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;

use market_node::adversary::{run_case, strategies, table};
use market_protocol::canonical::{from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::TaskSpec;

#[test]
fn every_strategy_is_caught_as_predicted() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/mlp-train.json");
    let task: TaskSpec =
        from_json_limited(&std::fs::read(path).unwrap(), MAX_MESSAGE_BYTES).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for b in strategies(&[0.1, 0.5]) {
        results.push(run_case(&task, b, 3, 120, dir.path()).unwrap());
    }
    println!("{}", table(&results));
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
