//! `market-devnet` runs end to end: honest work passes both verifiers, the cheater is caught,
//! and the pooled task merges every round from three distinct honest workers.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::process::Command;

#[test]
fn devnet_catches_the_cheater_and_passes_honest_work() {
    // Fixed keys, so which segments are sampled (and so whether the cheater is caught) is
    // the same every run; MARKET_DEVNET_SEED tries another market.
    let seed = std::env::var("MARKET_DEVNET_SEED").unwrap_or_else(|_| "1".into());
    eprintln!("devnet seed {seed}");
    let out = Command::new(env!("CARGO_BIN_EXE_market-devnet"))
        .args(["--json", "--seed", &seed])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["tasks"], 3);
    assert_eq!(summary["settled"], 3);
    let rounds = summary["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{summary}");
    for r in rounds {
        let workers: std::collections::BTreeSet<&str> = r["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert_eq!(workers.len(), 3, "distinct workers per round: {r}");
        assert!(!workers.contains("cheater"), "a cheat was merged: {r}");
        assert!(r["eval_loss"].as_f64().is_some_and(f64::is_finite), "{r}");
    }
    // The cheater is offered the pooled task's first slot and caught there.
    assert_eq!(rounds[0]["failed_runs"], 1, "{summary}");
    assert_eq!(summary["slashed"], serde_json::json!(["cheater"]));
    assert_eq!(summary["ledger_verified"], true);
    let balances = summary["balances"].as_array().unwrap();
    // Each worker was minted 500 and staked 300; the honest ones that took the tasks were paid.
    let honest: u64 = balances
        .iter()
        .filter(|b| b["role"].as_str().unwrap().starts_with("worker-"))
        .map(|b| b["balance"].as_u64().unwrap())
        .sum();
    assert!(honest > 3 * 200, "honest workers were paid: {balances:?}");
    let cheater = balances.iter().find(|b| b["role"] == "cheater").unwrap();
    assert!(
        cheater["balance"].as_u64().unwrap() <= 200,
        "the cheater earned nothing: {cheater}"
    );
}
