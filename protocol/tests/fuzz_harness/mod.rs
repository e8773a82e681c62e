//! The protocol's decoders under hostile input, shared by `tests/fuzz_decoders.rs` and the
//! cargo-fuzz target `fuzz/fuzz_targets/canonical.rs` (which includes this file by path).
//!
//! Every decoder that reads untrusted canonical JSON must return a value or an error, never
//! panic; a value it returns must re-encode to exactly the bytes it came from (one accepted
//! encoding per value), and whatever a receiver does next with it (verify the signature, check
//! the challenge, plan the audit) must not panic either.

#![allow(dead_code)]

use market_protocol::canonical::{
    canonicalize_value, from_canonical_bytes, from_json_limited, parse_json_limited,
    to_canonical_bytes, CanonicalError, MAX_MESSAGE_BYTES,
};
use market_protocol::fixtures::{beacon, checkpoint_hashes, commitment, training_task};
use market_protocol::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The strict decoder as first written: parse a JSON tree, re-encode it, then type it. The
/// tree-free decoder must refuse exactly the inputs this refuses (`spec/ENCODING.md` section 3
/// allows any order of the checks, not other verdicts).
fn tree_strict<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, CanonicalError> {
    let value = parse_json_limited(bytes, MAX_MESSAGE_BYTES)?;
    if canonicalize_value(&value)? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    let typed: T =
        serde_json::from_value(value).map_err(|e| CanonicalError::Shape(e.to_string()))?;
    if to_canonical_bytes(&typed)? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(typed)
}

/// The error's rule: its variant, without the message.
fn rule(e: &CanonicalError) -> &'static str {
    match e {
        CanonicalError::TooLarge { .. } => "too_large",
        CanonicalError::Syntax(_) => "syntax",
        // Both are rule 3; with both broken either may be named first.
        CanonicalError::Number(_) | CanonicalError::TooDeep => "number or depth",
        CanonicalError::NotCanonical => "not_canonical",
        CanonicalError::Shape(_) => "shape",
    }
}

/// Strict decode; a value must encode back to `bytes`, and the tree decoder must agree.
fn strict<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Option<T> {
    let got = from_canonical_bytes::<T>(bytes);
    match (&got, tree_strict::<T>(bytes)) {
        (Ok(a), Ok(b)) => assert_eq!(a, &b, "the two decoders read different values"),
        (Err(a), Err(b)) => assert_eq!(rule(a), rule(&b), "{a} / {b}"),
        (a, b) => panic!(
            "the decoders disagree on {:?}: {a:?} / {b:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
    let value = got.ok()?;
    let again = to_canonical_bytes(&value);
    assert_eq!(
        again.as_deref(),
        Ok(bytes),
        "a decoded value must re-encode to the bytes it came from"
    );
    Some(value)
}

/// A signed message as a receiver takes it: strict decode, id, signature and author checks.
fn signed<T: Message + Clone + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    let s: Signed<T> = strict(bytes)?;
    let _ = s.id();
    s.verify().ok().cloned()
}

/// What a node does with a decoded task before it runs anywhere: its blobs and audit plan.
pub fn exercise_task(task: &TaskSpec) {
    let _ = task.blobs();
    let _ = task.audit.detection_target.to_f64();
    for n in [0u64, 1, 2, 7, 64, 1_000, 20_000] {
        for verifiers in [1u64, 3] {
            let _ = detection::plan_samples(&task.audit, n, verifiers);
        }
    }
}

/// Runs every protocol decoder over `bytes`.
pub fn check_protocol_decoders(bytes: &[u8]) {
    let _ = parse_json_limited(bytes, MAX_MESSAGE_BYTES);
    let _ = strict::<serde_json::Value>(bytes);
    if let Some(task) = strict::<TaskSpec>(bytes) {
        exercise_task(&task);
    }
    if let Ok(task) = from_json_limited::<TaskSpec>(bytes, MAX_MESSAGE_BYTES) {
        exercise_task(&task);
    }
    if let Some(task) = signed::<TaskSpec>(bytes) {
        exercise_task(&task);
    }
    let _ = signed::<Commitment>(bytes);
    let _ = signed::<Verdict>(bytes);
    let _ = signed::<Hello>(bytes);
    let _ = signed::<Receipt>(bytes);
    if let Some(c) = strict::<Challenge>(bytes) {
        // Huge segment counts are fine (the sampler stores only swapped positions); only the
        // sample, bounded by the input's size, costs memory.
        let _ = c.check();
    }
    if let Some(o) = signed::<Opening>(bytes) {
        let _ = o.verify_against(&Hash::of(b"root"), u64::from(o.checkpoint) + 1);
    }
    if let Some(p) = strict::<MerkleProof>(bytes) {
        let _ = p.verify(b"leaf", &Hash::of(b"root"));
    }
    if let Some(p) = strict::<VrfProof>(bytes) {
        let _ = vrf::proof_to_hash(&p);
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    to_canonical_bytes(v).expect("fixtures canonicalize")
}

/// Valid canonical encodings of every signed message type, to mutate.
pub fn seeds() -> Vec<Vec<u8>> {
    let buyer = Identity::from_test_label("buyer");
    let worker = Identity::from_test_label("worker");
    let verifier = Identity::from_test_label("verifier");
    let node = Identity::from_test_label("node");
    let task = training_task(&buyer, 1);
    let inference = fixtures::inference_task(&buyer, 2);
    let leaves = checkpoint_hashes("run", 8);
    let body = commitment(&worker, &task, &leaves);
    let commitment_id = CommitmentId(message_id(&body).expect("id"));
    let challenge = Challenge::derive(
        verifier.account(),
        commitment_id,
        beacon("b"),
        body.segments,
        3,
    )
    .expect("challenge");
    let tree = MerkleTree::new(&leaves);
    let proof = tree.proof(2).expect("proof");
    let opening = Opening {
        version: Version::CURRENT,
        worker: worker.account(),
        commitment_id,
        checkpoint: 2,
        state_hash: leaves[2],
        proof: proof.clone(),
    };
    let verdict = |outcome| Verdict {
        version: Version::CURRENT,
        verifier: verifier.account(),
        commitment_id,
        challenge_id: ChallengeId(message_id(&challenge).expect("id")),
        checked: vec![SegmentCheck {
            segment: 1,
            expected: leaves[1],
            actual: Some(leaves[1]),
        }],
        outcome,
        compute_share_ppm: 1_000,
    };
    let fail = VerdictOutcome::Fail {
        segment: 1,
        step: Some(3),
        reason: FailureReason::StateMismatch,
        detail: "x".into(),
    };
    let hello = Hello {
        version: Version::CURRENT,
        account: worker.account(),
        node: node.account(),
        role: Role::Worker,
        capabilities: Capabilities {
            profiles: vec!["repro".into(), "native".into()],
            device: "cpu".into(),
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 34,
            steps_per_ksec: 100,
        },
        stake: Credits(10),
        session: 9,
    };
    let receipt = Receipt {
        version: Version::CURRENT,
        operator: node.account(),
        task_id: TaskId(message_id(&task).expect("id")),
        commitment_id,
        verdicts: vec![VerdictId(Hash::of(b"v"))],
        payments: vec![Payment {
            account: worker.account(),
            amount: Credits(90),
            kind: PaymentKind::Reward,
        }],
        ledger_seq: 4,
    };
    let (_, vrf_proof) = market_protocol::beacon::prove_beacon(&node, &commitment_id);
    vec![
        enc(&task),
        enc(&Signed::sign(task.clone(), &buyer).expect("sign")),
        enc(&Signed::sign(inference, &buyer).expect("sign")),
        enc(&Signed::sign(body, &worker).expect("sign")),
        enc(&challenge),
        enc(&Signed::sign(opening, &worker).expect("sign")),
        enc(&Signed::sign(verdict(VerdictOutcome::Pass), &verifier).expect("sign")),
        enc(&Signed::sign(verdict(fail), &verifier).expect("sign")),
        enc(&Signed::sign(hello, &worker).expect("sign")),
        enc(&Signed::sign(receipt, &node).expect("sign")),
        enc(&proof),
        enc(&vrf_proof),
        // A lenient, human-written task: whitespace and key order free.
        serde_json::to_vec_pretty(&task).expect("json"),
    ]
}
