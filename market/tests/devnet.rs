//! `market-devnet` runs end to end: honest work passes both verifiers, the cheater is caught,
//! and the pooled task merges every round from three distinct honest workers. Kept running
//! (`--keep`), its node's web dashboard is then driven in headless Chromium
//! (`scripts/dashboard-check.py`): every page against the API, the ledger verified in the
//! browser, a tampered export named, a buyer's results read with a request signed there.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The devnet process: stopped with Ctrl-C (SIGINT) however the test ends, so it stops its
/// node, workers and verifiers itself.
struct Devnet(Child);

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why the browser check cannot run here, if it cannot: it needs Python's Playwright and a
/// Chromium (`scripts/install-browser.sh`).
fn browser_missing() -> Option<String> {
    let chromium = std::env::var_os("CHROMIUM").map(PathBuf::from).or_else(|| {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    });
    if chromium.is_none_or(|p| !p.exists()) {
        return Some("no Chromium (run scripts/install-browser.sh)".into());
    }
    let playwright = Command::new("python3")
        .args(["-c", "import playwright"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!playwright).then(|| "no Python playwright (run scripts/install-browser.sh)".into())
}

/// The devnet buyer's key file (the devnet derives every key from its seed: see
/// `market-devnet`'s `identity`), for the page to sign with.
fn buyer_key_file(seed: u64, dir: &Path) -> PathBuf {
    let mut h = blake3::Hasher::new_derive_key("market v1 devnet identity");
    h.update(&seed.to_le_bytes());
    h.update(b"buyer");
    let identity = market_protocol::Identity::from_secret_bytes(*h.finalize().as_bytes());
    let path = dir.join("buyer.key");
    market_protocol::keyfile::save_identity(&identity, &path).unwrap();
    path
}

#[test]
fn devnet_catches_the_cheater_and_passes_honest_work() {
    // Fixed keys, so which segments are sampled (and so whether the cheater is caught) is
    // the same every run; MARKET_DEVNET_SEED tries another market.
    let seed = std::env::var("MARKET_DEVNET_SEED").unwrap_or_else(|_| "1".into());
    eprintln!("devnet seed {seed}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_market-devnet"))
        .args(["--json", "--keep", "--seed", &seed])
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let devnet = Devnet(child);
    // The summary comes first; the devnet then keeps its market running for the browser.
    let summary: serde_json::Value = serde_json::Deserializer::from_reader(stdout)
        .into_iter()
        .next()
        .expect("the devnet printed its summary (its log is above)")
        .unwrap();
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

    // Every answer the devnet served was verified.
    let served = summary["served"].as_array().unwrap();
    assert!(
        served.iter().all(|a| a["status"] == "verified"),
        "{summary}"
    );

    // The dashboard, in a real browser.
    if let Some(why) = browser_missing() {
        if std::env::var_os("MARKET_REQUIRE_BROWSER").is_some() {
            panic!("the dashboard check cannot run: {why}");
        }
        eprintln!("skipped the dashboard check: {why}");
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = buyer_key_file(seed.parse().unwrap(), keys.path());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dashboard-check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(summary["api"].as_str().unwrap())
        .arg(&shots)
        .arg("--buyer-key")
        .arg(&key)
        .arg("--submit")
        .arg(env!("CARGO_BIN_EXE_market-node"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks/mlp-train.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the dashboard check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    for page in [
        "tasks",
        "task-trained",
        "task-slashed",
        "task-pooled",
        "participants",
        "statement",
        "ledger",
        "results",
        "tasks-live",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
    drop(devnet);
}
