//! `market-devnet` runs end to end: honest work passes both verifiers, the cheater is caught.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::process::Command;

#[test]
fn devnet_catches_the_cheater_and_passes_honest_work() {
    let out = Command::new(env!("CARGO_BIN_EXE_market-devnet"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["tasks"], 2);
    assert_eq!(summary["settled"], 2);
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
