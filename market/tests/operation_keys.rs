//! `spec/vectors/operation-keys.json`: every kind of ledger operation the node writes gives the
//! text and key the spec states, from the inputs the vector names; slot-round task ids too.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_node::engine::rounds::slot_task_id;
use market_node::engine::Operation;
use market_protocol::{AccountId, TaskId};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spec/vectors/operation-keys.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn field<T: std::str::FromStr>(v: &Value, key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    v[key].as_str().unwrap().parse().unwrap()
}

#[test]
fn operation_texts_and_keys_match_the_spec_vectors() {
    let mut kinds = std::collections::BTreeSet::new();
    let mut ids = 0;
    let mut evidences = 0;
    for v in vectors() {
        match v["kind"].as_str().unwrap() {
            "operation" => {
                let o = &v["operation"];
                let task = || field::<TaskId>(o, "task");
                let account = |k: &str| field::<AccountId>(o, k);
                let attempt = || o["attempt"].as_u64().unwrap() as usize;
                let (tag, label, event) = (
                    o["tag"].as_str().unwrap_or_default(),
                    o["label"].as_str().unwrap_or_default(),
                    o["event"].as_str().unwrap_or_default(),
                );
                let kind = o["kind"].as_str().unwrap();
                let op = match kind {
                    "escrow" => Operation::Escrow { task: task() },
                    "commit" => Operation::Commit {
                        task: task(),
                        attempt: attempt(),
                        worker: account("worker"),
                    },
                    "reward" => Operation::Reward {
                        task: task(),
                        attempt: attempt(),
                        verifier: account("verifier"),
                    },
                    "release" => Operation::Release {
                        task: task(),
                        attempt: attempt(),
                    },
                    "slash" => Operation::Slash {
                        task: task(),
                        attempt: attempt(),
                        account: account("account"),
                        payee: account("payee"),
                        tag,
                    },
                    "refund" => Operation::Refund { task: task() },
                    "pool_round" => Operation::PoolRound {
                        task: task(),
                        round: o["round"].as_u64().unwrap() as u32,
                    },
                    "mint" => Operation::Mint {
                        label,
                        account: account("account"),
                    },
                    "stake" => Operation::Stake {
                        label,
                        account: account("account"),
                    },
                    "stake_hello" => Operation::StakeHello {
                        account: account("account"),
                        current: o["current"].as_u64().unwrap(),
                        target: o["target"].as_u64().unwrap(),
                    },
                    "reputation" => Operation::Reputation {
                        event,
                        account: account("account"),
                    },
                    "serve_escrow" => Operation::ServeEscrow {
                        answer: field(o, "answer"),
                    },
                    "serve_unused" => Operation::ServeUnused {
                        answer: field(o, "answer"),
                    },
                    "serve_release" => Operation::ServeRelease {
                        answer: field(o, "answer"),
                    },
                    "serve_refund" => Operation::ServeRefund {
                        answer: field(o, "answer"),
                    },
                    "serve_slash" => Operation::ServeSlash {
                        batch: field(o, "batch"),
                        payee: account("payee"),
                    },
                    "serve_check_fee" => Operation::ServeCheckFee {
                        answer: field(o, "answer"),
                    },
                    "serve_verifier_slash" => Operation::ServeVerifierSlash {
                        check: field(o, "check"),
                    },
                    "rotate" => Operation::Rotate {
                        from: account("from"),
                    },
                    other => panic!("unknown operation kind {other}"),
                };
                assert_eq!(op.text(), o["text"].as_str().unwrap(), "{kind}");
                assert_eq!(
                    op.key().unwrap().as_str(),
                    o["key"].as_str().unwrap(),
                    "{kind}"
                );
                kinds.insert(kind.to_owned());
            }
            "abandon_evidence" => {
                let evidence = market_node::engine::operations::abandon_evidence(
                    &field(&v, "task"),
                    v["attempt"].as_u64().unwrap() as usize,
                    &field(&v, "worker"),
                );
                assert_eq!(evidence.to_string(), v["evidence"].as_str().unwrap());
                evidences += 1;
            }
            "slot_round_task_id" => {
                let round = v["round"].as_u64().unwrap() as u32;
                let slot = v["slot"].as_u64().unwrap() as u32;
                assert_eq!(
                    slot_task_id(&field(&v, "parent"), round, slot).to_string(),
                    v["id"].as_str().unwrap()
                );
                ids += 1;
            }
            "serve_failure_evidence" => {
                let evidence = market_node::serving::audit::failure_evidence(
                    &field(&v, "batch"),
                    &field(&v, "answer"),
                );
                assert_eq!(evidence.to_string(), v["evidence"].as_str().unwrap());
                evidences += 1;
            }
            other => panic!("unknown vector kind {other}"),
        }
    }
    // Every kind of operation the node writes has a vector.
    assert_eq!(kinds.len(), 19, "{kinds:?}");
    assert!(ids >= 4);
    assert!(evidences >= 3);
}
