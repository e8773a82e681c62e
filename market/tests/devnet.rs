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
    let worker_1 = balances.iter().find(|b| b["role"] == "worker-1").unwrap();
    assert!(
        worker_1["balance"].as_u64().unwrap() > 200,
        "the honest worker that took over was paid: {worker_1}"
    );
}
