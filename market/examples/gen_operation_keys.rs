//! Writes `spec/vectors/operation-keys.json`: the text and ledger key of every kind of operation
//! the node writes (`market_node::engine::Operation`), and the ids of pooled slot-round task
//! records. Run only for a deliberate protocol change:
//! `cargo run -p market-node --example gen_operation_keys -- spec/vectors`.

use market_node::engine::rounds::slot_task_id;
use market_node::engine::Operation;
use market_protocol::{Hash, Identity, TaskId};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "spec/vectors".into());
    let task = TaskId(Hash::of(b"operation-keys task"));
    let account = |label: &str| Identity::from_test_label(label).account();
    let (worker, verifier, buyer) = (account("worker"), account("verifier"), account("buyer"));
    let evidence = Hash::of(b"operation-keys evidence");
    let lie_tag = format!("{task}:1:slash:{evidence}");
    let rep_event = format!("{task}:0:accepted");
    let operations: Vec<(serde_json::Value, Operation<'_>)> = vec![
        (
            json!({"kind": "escrow", "task": task}),
            Operation::Escrow { task },
        ),
        (
            json!({"kind": "commit", "task": task, "attempt": 0, "worker": worker}),
            Operation::Commit {
                task,
                attempt: 0,
                worker,
            },
        ),
        (
            json!({"kind": "reward", "task": task, "attempt": 2, "verifier": verifier}),
            Operation::Reward {
                task,
                attempt: 2,
                verifier,
            },
        ),
        (
            json!({"kind": "release", "task": task, "attempt": 2}),
            Operation::Release { task, attempt: 2 },
        ),
        (
            json!({"kind": "slash", "task": task, "attempt": 1, "account": worker,
                "payee": buyer, "tag": "result failed its audit"}),
            Operation::Slash {
                task,
                attempt: 1,
                account: worker,
                payee: buyer,
                tag: "result failed its audit",
            },
        ),
        (
            json!({"kind": "slash", "task": task, "attempt": 1, "account": verifier,
                "payee": worker, "tag": lie_tag}),
            Operation::Slash {
                task,
                attempt: 1,
                account: verifier,
                payee: worker,
                tag: &lie_tag,
            },
        ),
        (
            json!({"kind": "refund", "task": task}),
            Operation::Refund { task },
        ),
        (
            json!({"kind": "pool_round", "task": task, "round": 3}),
            Operation::PoolRound { task, round: 3 },
        ),
        (
            json!({"kind": "mint", "label": "local", "account": worker}),
            Operation::Mint {
                label: "local",
                account: worker,
            },
        ),
        (
            json!({"kind": "stake", "label": "local", "account": worker}),
            Operation::Stake {
                label: "local",
                account: worker,
            },
        ),
        (
            json!({"kind": "stake_hello", "account": verifier, "current": 50, "target": 200}),
            Operation::StakeHello {
                account: verifier,
                current: 50,
                target: 200,
            },
        ),
        (
            json!({"kind": "reputation", "event": rep_event, "account": worker}),
            Operation::Reputation {
                event: &rep_event,
                account: worker,
            },
        ),
        (
            json!({"kind": "serve_escrow", "answer": task}),
            Operation::ServeEscrow { answer: task },
        ),
        (
            json!({"kind": "serve_unused", "answer": task}),
            Operation::ServeUnused { answer: task },
        ),
        (
            json!({"kind": "serve_release", "answer": task}),
            Operation::ServeRelease { answer: task },
        ),
        (
            json!({"kind": "serve_refund", "answer": task}),
            Operation::ServeRefund { answer: task },
        ),
        (
            json!({"kind": "serve_slash", "batch": evidence, "payee": buyer}),
            Operation::ServeSlash {
                batch: evidence,
                payee: buyer,
            },
        ),
        (
            json!({"kind": "serve_check_fee", "answer": task}),
            Operation::ServeCheckFee { answer: task },
        ),
        (
            json!({"kind": "serve_verifier_slash", "check": evidence}),
            Operation::ServeVerifierSlash { check: evidence },
        ),
        (
            json!({"kind": "rotate", "from": buyer}),
            Operation::Rotate { from: buyer },
        ),
    ];
    let mut vectors = Vec::new();
    for (mut inputs, op) in operations {
        inputs["text"] = json!(op.text());
        inputs["key"] = json!(op.key()?.as_str());
        vectors.push(json!({"kind": "operation", "operation": inputs}));
    }
    for attempt in [0usize, 2] {
        vectors.push(json!({
            "kind": "abandon_evidence", "task": task, "attempt": attempt, "worker": worker,
            "evidence": market_node::engine::operations::abandon_evidence(&task, attempt, &worker),
        }));
    }
    vectors.push(json!({
        "kind": "serve_failure_evidence", "batch": evidence, "answer": task,
        "evidence": market_node::serving::audit::failure_evidence(&evidence, &task),
    }));
    for (round, slot) in [(0u32, 0u32), (0, 1), (1, 0), (19, 3)] {
        vectors.push(json!({
            "kind": "slot_round_task_id", "parent": task, "round": round, "slot": slot,
            "id": slot_task_id(&task, round, slot),
        }));
    }
    let doc = json!({
        "description": "The node's ledger operations (spec/PROTOCOL.md, 'Idempotency keys'): for each kind, its inputs, the text naming it and the ledger key (the text's kind, ':', then the first 48 hex digits of blake3(text)); the evidence of an abandoned run's slash, blake3(\"abandoned:\" task \":\" attempt \":\" worker) with ids in lowercase hex and the attempt in decimal; the evidence of a failed batch of served answers' slash, blake3(\"serve_failed:\" batch root \":\" answer receipt id); and the ids of a pooled task's slot-round task records, blake3 derive_key(\"market v1 pool slot-round task\", parent || round as u32 LE || slot as u32 LE).",
        "vectors": vectors,
    });
    let path = format!("{dir}/operation-keys.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("wrote {path}");
    Ok(())
}
