//! The buyer's command line, end to end against a real node process: upload a dataset made by
//! Python, submit a task on it and watch it settle, download the trained weights and read them
//! with the Python `safetensors` package; the buyer's history and the worker's and verifiers'
//! statements are checked against the node's ledger, entry by entry.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use market_ledger::remote::StatementArgs;
use market_node::client::Client;
use market_protocol::{AccountId, Identity};
use serde_json::{json, Value};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_market-node"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "market-node {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs Python; the packages it needs are installed by `.ci/run`.
fn python(script: &str, dir: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("python3 runs (the CLI test reads weights with the Python safetensors package)");
    assert!(
        out.status.success(),
        "python failed (needs `pip install safetensors numpy`, as .ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether a ledger entry (its `kind` object) names `account` in its own fields.
fn names(kind: &Value, account: &str) -> bool {
    let body = kind.as_object().unwrap().values().next().unwrap();
    [
        "to", "from", "buyer", "worker", "verifier", "account", "ledger",
    ]
    .iter()
    .any(|f| body[f].as_str() == Some(account))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_uploads_trains_downloads_and_every_account_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("buyer.key");
    let buyer: AccountId = ok(&["key", key.to_str().unwrap()]).trim().parse().unwrap();
    let buyer_id = market_protocol::keyfile::load_identity(&key).unwrap();
    assert_eq!(buyer_id.account(), buyer);
    let (_node, api) = common::start(&d.join("node"), &buyer_id).await;
    let conn = ["--node", api.as_str(), "--key", key.to_str().unwrap()];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(conn.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |args: &[&str]| ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());

    // A dataset made by the buyer's own tools.
    python(
        "import numpy as np\n\
         from safetensors.numpy import save_file\n\
         rng = np.random.default_rng(1)\n\
         x = rng.standard_normal((256, 8)).astype(np.float32)\n\
         y = np.stack([x[:, 0] * 0.5 - x[:, 1], np.tanh(x[:, 2])], 1).astype(np.float32)\n\
         save_file({'x': x, 'y': y}, 'data.safetensors')\n",
        d,
    );
    let data = d.join("data.safetensors");
    let blob = run(&["blob", "upload", data.to_str().unwrap()]);
    let blob = blob.trim();
    assert_eq!(
        blob,
        market_protocol::BlobId::of(&std::fs::read(&data).unwrap()).to_string()
    );
    // Downloaded back byte for byte; a second download refuses to overwrite it.
    let back = d.join("back.safetensors");
    run(&["blob", "download", blob, "--out", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&data).unwrap());
    let again = cli(
        &with(&["blob", "download", blob, "--out", back.to_str().unwrap()])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!again.status.success());
    // Someone else's key cannot read it, and nothing is written.
    let other = d.join("other.key");
    ok(&["key", other.to_str().unwrap()]);
    let stolen = d.join("stolen");
    let refused = cli(&[
        "blob",
        "download",
        blob,
        "--out",
        stolen.to_str().unwrap(),
        "--node",
        &api,
        "--key",
        other.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
    assert!(!stolen.exists() && !d.join("stolen.part").exists());

    // A task on it, watched to the end.
    let mut task: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/tasks/mlp-train.json"
        ))
        .unwrap(),
    )
    .unwrap();
    task["workload"]["dataset"] = serde_json::json!({"source": "blob", "id": blob});
    task["workload"]["steps"] = 60.into();
    task["price"] = 300.into();
    let task_file = d.join("task.json");
    std::fs::write(&task_file, task.to_string()).unwrap();
    let watched = cli(
        &with(&["task", "submit", task_file.to_str().unwrap(), "--watch"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let log = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{log}");
    let view: Value = serde_json::from_slice(&watched.stdout).unwrap();
    assert_eq!(view["state"]["state"], "settled", "{log}");
    let task_id = view["id"].as_str().unwrap().to_owned();
    // The watch told the story: posted, each verdict, the end.
    assert!(log.contains("posted: 300 credits in escrow"), "{log}");
    assert!(log.contains(&format!("{task_id}: settled")), "{log}");
    let verdicts = view["attempts"][0]["verdicts"].as_array().unwrap();
    assert!(!verdicts.is_empty());
    for v in verdicts {
        let verifier = &v["verifier"].as_str().unwrap()[..12];
        assert!(
            log.contains(&format!("verifier {verifier} passed")),
            "{log}"
        );
    }

    // Listed as the buyer's; a settled task cannot be cancelled.
    let listed = run(&["task", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], task_id.as_str());
    let cancel = cli(&with(&["task", "cancel", &task_id])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!cancel.status.success());
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("409"));

    // The weights, downloaded and read by Python.
    let out = d.join("result");
    run(&["task", "result", &task_id, "--out", out.to_str().unwrap()]);
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let weights = std::fs::read(out.join("weights.safetensors")).unwrap();
    assert_eq!(
        result["outputs"][0],
        market_protocol::BlobId::of(&weights).to_string()
    );
    let shapes = python(
        "from safetensors.numpy import load_file\n\
         import numpy as np\n\
         w = load_file('result/weights.safetensors')\n\
         assert all(np.isfinite(v).all() for v in w.values())\n\
         print(sorted((k, list(v.shape)) for k, v in w.items()))\n",
        d,
    );
    assert_eq!(
        shapes.trim(),
        "[('l00.b', [32]), ('l00.w', [8, 32]), ('l01.b', [32]), ('l01.w', [32, 32]), ('l02.b', [2]), ('l02.w', [32, 2])]"
    );

    // The buyer's history: exactly the entries that name it or move its escrow, read
    // independently from the node's entries page; its sums are its balance.
    let history: Value = serde_json::from_str(&run(&["account", "history", "--json"])).unwrap();
    let client = Client::new(&api, None);
    let mut entries = Vec::new();
    let http = reqwest::Client::new();
    loop {
        let page: Value = http
            .get(format!(
                "{api}/v1/ledger/entries?from={}&limit=500",
                entries.len()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got = page["entries"].as_array().unwrap().clone();
        if got.is_empty() {
            break;
        }
        entries.extend(got);
    }
    let buyer_hex = buyer.to_string();
    let own_tasks: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| {
            let esc = &e["body"]["kind"]["escrow"];
            (esc["buyer"].as_str() == Some(&buyer_hex)).then(|| esc["task_id"].as_str().unwrap())
        })
        .collect();
    let expected: Vec<u64> = entries
        .iter()
        .filter(|e| {
            let kind = &e["body"]["kind"];
            let task = kind
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .get("task_id")
                .and_then(Value::as_str);
            names(kind, &buyer_hex) || task.is_some_and(|t| own_tasks.contains(t))
        })
        .map(|e| e["body"]["seq"].as_u64().unwrap())
        .collect();
    let seqs: Vec<u64> = history["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, expected);
    let account = client.account(&buyer).await.unwrap();
    let sum = |s: &Value, field: &str| -> i64 {
        s["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l[field].as_i64().unwrap())
            .sum()
    };
    assert_eq!(
        sum(&history, "balance"),
        account["balance"].as_i64().unwrap()
    );
    assert_eq!(history["balance"], account["balance"]);
    assert_eq!(history["escrow"], 0);

    // The worker's and the verifiers' statements add up to what the node says they hold, and
    // name this task's payments.
    let worker: AccountId = view["attempts"][0]["worker"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut participants = vec![worker];
    participants.extend(verdicts.iter().map(|v| {
        v["verifier"]
            .as_str()
            .unwrap()
            .parse::<AccountId>()
            .unwrap()
    }));
    for (n, who) in participants.into_iter().enumerate() {
        let statement = StatementArgs {
            node: api.clone(),
            key: None,
            account: Some(who),
            ledger: None,
            head: None,
            save_head: None,
            save_export: None,
            json: true,
        }
        .print()
        .await
        .unwrap();
        let node_says = client.account(&who).await.unwrap();
        assert_eq!(
            statement.balance_change(),
            node_says["balance"].as_i64().unwrap()
        );
        assert_eq!(
            statement.lines.iter().map(|l| l.stake).sum::<i64>(),
            node_says["staked"].as_i64().unwrap()
        );
        let paid = statement
            .lines
            .iter()
            .find(|l| l.task.map(|t| t.to_string()) == Some(task_id.clone()) && l.balance > 0)
            .expect("the task's payment is on the statement");
        assert_eq!(paid.kind, if n == 0 { "release" } else { "reward" });
    }
    // Pinning another operator key refuses the ledger.
    let wrong = Identity::from_test_label("not the operator").account();
    let pinned = cli(
        &with(&["account", "history", "--ledger", &wrong.to_string()])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!pinned.status.success());
    assert!(String::from_utf8_lossy(&pinned.stderr).contains("expected"));

    // The buyer moves to a new key: the balance follows, the old key can no longer download,
    // the new one can; the old key's history ends with the rotation.
    let new_key = d.join("new.key");
    run(&["account", "rotate", "--new-key", new_key.to_str().unwrap()]);
    let with_new = ["--node", api.as_str(), "--key", new_key.to_str().unwrap()];
    let moved: Value = serde_json::from_str(&ok(&[
        "account",
        "balance",
        with_new[0],
        with_new[1],
        with_new[2],
        with_new[3],
    ]))
    .unwrap();
    assert_eq!(moved["balance"], account["balance"]);
    let dead = cli(&with(&[
        "blob",
        "download",
        blob,
        "--out",
        d.join("x").to_str().unwrap(),
    ])
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("key_rotated"));
    let again = d.join("again.safetensors");
    ok(&[
        "blob",
        "download",
        blob,
        "--out",
        again.to_str().unwrap(),
        with_new[0],
        with_new[1],
        with_new[2],
        with_new[3],
    ]);
    let history: Value = serde_json::from_str(&run(&["account", "history", "--json"])).unwrap();
    let last = history["lines"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "rotate");
    assert_eq!(history["balance"], 0);
}

/// What a hostile proxy in front of a real node serves instead of the truth.
#[derive(Clone, Default)]
struct Lies {
    /// The export, when replaced.
    export: Option<Vec<u8>>,
    /// The signed head, when replaced.
    head: Option<Vec<u8>>,
    /// A task result's `outputs`, when replaced.
    outputs: Option<Value>,
    /// Exports asked for.
    exports_asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A proxy that forwards everything to `upstream` except what `lies` replaces.
async fn hostile(upstream: String, lies: Lies) -> String {
    use axum::extract::{Request, State};
    use axum::response::IntoResponse;
    async fn forward(
        State((up, lies)): State<(String, Lies)>,
        req: Request,
    ) -> axum::response::Response {
        let path = req.uri().path_and_query().unwrap().as_str().to_owned();
        if path.starts_with("/v1/ledger/export") {
            lies.exports_asked
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(e) = lies.export.clone() {
                return e.into_response();
            }
        }
        if path == "/v1/ledger/head" {
            if let Some(h) = lies.head.clone() {
                return h.into_response();
            }
        }
        let mut out = reqwest::Client::new().request(req.method().clone(), format!("{up}{path}"));
        for (k, v) in req.headers() {
            if k != "host" {
                out = out.header(k, v);
            }
        }
        let body = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .unwrap();
        let resp = out.body(body).send().await.unwrap();
        let status = resp.status();
        let mut bytes = resp.bytes().await.unwrap().to_vec();
        if path.ends_with("/result") {
            if let Some(o) = lies.outputs.clone() {
                let mut v: Value = serde_json::from_slice(&bytes).unwrap();
                v["outputs"] = o;
                bytes = serde_json::to_vec(&v).unwrap();
            }
        }
        (
            axum::http::StatusCode::from_u16(status.as_u16()).unwrap(),
            bytes,
        )
            .into_response()
    }
    let app = axum::Router::new()
        .fallback(forward)
        .with_state((upstream, lies));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_node_cannot_pass_off_another_ledger_a_forged_one_or_other_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("buyer.key");
    ok(&["key", key.to_str().unwrap()]);
    let buyer = market_protocol::keyfile::load_identity(&key).unwrap();
    let (_node, api) = common::start(&d.join("node"), &buyer).await;
    let mut task: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/tasks/mlp-train.json"
        ))
        .unwrap(),
    )
    .unwrap();
    task["workload"]["steps"] = 40.into();
    let task_file = d.join("task.json");
    std::fs::write(&task_file, task.to_string()).unwrap();
    let k = key.to_str().unwrap();
    let view: Value = serde_json::from_str(&ok(&[
        "task",
        "submit",
        task_file.to_str().unwrap(),
        "--watch",
        "--node",
        &api,
        "--key",
        k,
    ]))
    .unwrap();
    let task_id = view["id"].as_str().unwrap().to_owned();
    let real_export = reqwest::get(format!("{api}/v1/ledger/export"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let buyer_hex = buyer.account().to_string();

    // A forged amount: refused, and the export it was asked to keep is not written.
    let text = String::from_utf8(real_export.clone()).unwrap();
    let forged = text.replacen("\"amount\":5000", "\"amount\":50000", 1);
    assert_ne!(forged, text);
    let proxy = hostile(
        api.clone(),
        Lies {
            export: Some(forged.into_bytes()),
            ..Default::default()
        },
    )
    .await;
    let kept = d.join("kept.jsonl");
    let out = cli(&[
        "account",
        "history",
        "--node",
        &proxy,
        "--account",
        &buyer_hex,
        "--save-export",
        kept.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!kept.exists());

    // Another operator's whole, self-consistent ledger: only pinning tells it apart, and a
    // pinned client refuses it before asking for the export.
    let other_op = Identity::from_test_label("another operator");
    let other_dir = tempfile::tempdir().unwrap();
    let other = market_ledger::Ledger::open(
        &other_dir.path().join("l"),
        other_op.clone(),
        market_ledger::OpenOptions::default(),
    )
    .unwrap();
    other
        .mint(
            market_ledger::IdempotencyKey::new("m").unwrap(),
            buyer.account(),
            market_protocol::Credits(999_999),
        )
        .unwrap();
    let mut other_export = Vec::new();
    other.export(&mut other_export, 0).unwrap();
    let other_head = serde_json::to_vec(&other.sign_head(&other_op).unwrap()).unwrap();
    let lies = Lies {
        export: Some(other_export),
        head: Some(other_head),
        ..Default::default()
    };
    let proxy = hostile(api.clone(), lies.clone()).await;
    let unpinned = cli(&[
        "account",
        "history",
        "--node",
        &proxy,
        "--account",
        &buyer_hex,
    ]);
    assert!(unpinned.status.success());
    assert!(String::from_utf8_lossy(&unpinned.stderr).contains("not pinned"));
    let asked = lies.exports_asked.load(std::sync::atomic::Ordering::SeqCst);
    let real_op = text
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap()["body"]["signer"]
        .as_str()
        .unwrap()
        .to_owned();
    let pinned = cli(&[
        "account",
        "history",
        "--node",
        &proxy,
        "--account",
        &buyer_hex,
        "--ledger",
        &real_op,
    ]);
    assert!(!pinned.status.success());
    assert!(String::from_utf8_lossy(&pinned.stderr).contains("expected"));
    assert_eq!(
        lies.exports_asked.load(std::sync::atomic::Ordering::SeqCst),
        asked
    );

    // An older history than a head kept before: refused.
    let head_file = d.join("head.json");
    ok(&[
        "account",
        "history",
        "--node",
        &api,
        "--account",
        &buyer_hex,
        "--save-head",
        head_file.to_str().unwrap(),
    ]);
    let older: Vec<&str> = text.lines().take(3).collect();
    let proxy = hostile(
        api.clone(),
        Lies {
            export: Some(format!("{}\n", older.join("\n")).into_bytes()),
            ..Default::default()
        },
    )
    .await;
    let rolled_back = cli(&[
        "account",
        "history",
        "--node",
        &proxy,
        "--account",
        &buyer_hex,
        "--head",
        head_file.to_str().unwrap(),
    ]);
    assert!(!rolled_back.status.success());

    // Results: the node names another blob (the buyer's own dataset-free upload) than the
    // accepted commitment bound: nothing is downloaded.
    let decoy = d.join("decoy.bin");
    std::fs::write(&decoy, b"#!/bin/sh\necho pwned\n").unwrap();
    let decoy_id = ok(&[
        "blob",
        "upload",
        decoy.to_str().unwrap(),
        "--node",
        &api,
        "--key",
        k,
    ]);
    let proxy = hostile(
        api.clone(),
        Lies {
            outputs: Some(json!([decoy_id.trim()])),
            ..Default::default()
        },
    )
    .await;
    let res = d.join("res");
    let out = cli(&[
        "task",
        "result",
        &task_id,
        "--out",
        res.to_str().unwrap(),
        "--node",
        &proxy,
        "--key",
        k,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("binds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!res.join("weights.safetensors").exists());

    // Files: a link planted where a download would go, or a file already there, is never
    // written through or over.
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let res2 = d.join("res2");
    std::fs::create_dir(&res2).unwrap();
    std::os::unix::fs::symlink(&victim, res2.join("weights.safetensors")).unwrap();
    std::os::unix::fs::symlink(&victim, res2.join("weights.safetensors.part")).unwrap();
    let out = cli(&[
        "task",
        "result",
        &task_id,
        "--out",
        res2.to_str().unwrap(),
        "--node",
        &api,
        "--key",
        k,
    ]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let res3 = d.join("res3");
    std::fs::create_dir(&res3).unwrap();
    std::os::unix::fs::symlink(&victim, res3.join("weights.safetensors.part")).unwrap();
    ok(&[
        "task",
        "result",
        &task_id,
        "--out",
        res3.to_str().unwrap(),
        "--node",
        &api,
        "--key",
        k,
    ]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(res3
        .join("weights.safetensors")
        .symlink_metadata()
        .unwrap()
        .is_file());
}

#[test]
fn a_key_backed_up_under_a_passphrase_restores_to_the_same_account_and_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k.key");
    let account = ok(&["key", key.to_str().unwrap()]);
    let with_passphrase = |args: &[&str], passphrase: &str| {
        Command::new(env!("CARGO_BIN_EXE_market-node"))
            .args(args)
            .env("MARKET_KEY_PASSPHRASE", passphrase)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let backup = d.join("k.backup");
    let out = with_passphrase(
        &[
            "key",
            "backup",
            "--key",
            key.to_str().unwrap(),
            "--out",
            backup.to_str().unwrap(),
        ],
        "a long passphrase",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The secret is not in the backup in the clear.
    let secret: Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    let text = std::fs::read_to_string(&backup).unwrap();
    for v in secret.as_object().unwrap().values() {
        if let Some(s) = v.as_str().filter(|s| s.len() == 64 && *s != account.trim()) {
            assert!(!text.contains(s));
        }
    }
    let restored = d.join("restored.key");
    let wrong = with_passphrase(
        &[
            "key",
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--out",
            restored.to_str().unwrap(),
        ],
        "another passphrase",
    );
    assert!(!wrong.status.success());
    assert!(!restored.exists());
    let right = with_passphrase(
        &[
            "key",
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--out",
            restored.to_str().unwrap(),
        ],
        "a long passphrase",
    );
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&right.stdout).trim(),
        account.trim()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        market_protocol::keyfile::load_identity(&restored)
            .unwrap()
            .account(),
        market_protocol::keyfile::load_identity(&key)
            .unwrap()
            .account()
    );
}
