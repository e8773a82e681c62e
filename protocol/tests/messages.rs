//! Signed messages: domain separation, tampering, authorship, challenges and openings.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_protocol::fixtures::{
    beacon, checkpoint_hashes, commitment, inference_task, training_task,
};
use market_protocol::*;
use serde::{Deserialize, Serialize};

/// Declares a message type with the same body as `Commitment` but another type's domain tag,
/// to show that a signature made for one type never verifies as another.
macro_rules! posing_as {
    ($name:ident, $domain:expr) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        struct $name(Commitment);
        impl Message for $name {
            const DOMAIN: &'static str = $domain;
        }
    };
}
posing_as!(AsTask, TaskSpec::DOMAIN);
posing_as!(AsChallenge, Challenge::DOMAIN);
posing_as!(AsOpening, Opening::DOMAIN);
posing_as!(AsVerdict, Verdict::DOMAIN);
posing_as!(AsReceipt, Receipt::DOMAIN);

fn repose<T: Message>(signed: &Signed<Commitment>, wrap: fn(Commitment) -> T) -> Signed<T> {
    Signed {
        body: wrap(signed.body.clone()),
        signer: signed.signer,
        signature: signed.signature,
    }
}

fn signed_commitment() -> Signed<Commitment> {
    let worker = Identity::from_test_label("worker");
    let task = training_task(&Identity::from_test_label("buyer"), 1);
    let body = commitment(&worker, &task, &checkpoint_hashes("run", 20));
    Signed::sign(body, &worker).unwrap()
}

#[test]
fn signature_for_one_type_is_rejected_for_every_other() {
    let signed = signed_commitment();
    signed.verify().unwrap();
    let bad = |e: SignatureError| assert!(matches!(e, SignatureError::BadSignature { .. }), "{e}");
    bad(repose(&signed, AsTask).verify().unwrap_err());
    bad(repose(&signed, AsChallenge).verify().unwrap_err());
    bad(repose(&signed, AsOpening).verify().unwrap_err());
    bad(repose(&signed, AsVerdict).verify().unwrap_err());
    bad(repose(&signed, AsReceipt).verify().unwrap_err());
    let domains = [
        TaskSpec::DOMAIN,
        Commitment::DOMAIN,
        Challenge::DOMAIN,
        Opening::DOMAIN,
        Verdict::DOMAIN,
        Receipt::DOMAIN,
    ];
    let unique: std::collections::BTreeSet<_> = domains.iter().collect();
    assert_eq!(unique.len(), domains.len());
}

#[test]
fn tampered_body_fails_verification() {
    let mut signed = signed_commitment();
    signed.body.steps += 1;
    assert!(matches!(
        signed.verify(),
        Err(SignatureError::BadSignature { .. })
    ));
    let mut signed = signed_commitment();
    signed.signature.0[10] ^= 1;
    assert!(signed.verify().is_err());
}

#[test]
fn author_must_be_signer() {
    let buyer = Identity::from_test_label("buyer");
    let mallory = Identity::from_test_label("mallory");
    let task = training_task(&buyer, 1);
    assert!(matches!(
        Signed::sign(task.clone(), &mallory),
        Err(SignatureError::WrongSigner { .. })
    ));
    // Mallory re-signs the buyer's task under her own name: refused though her signature is valid.
    let mut forged = Signed::sign(task, &buyer).unwrap();
    forged.signer = mallory.account();
    forged.signature = mallory.sign_raw(&signing_bytes(&forged.body).unwrap());
    assert!(matches!(
        forged.verify(),
        Err(SignatureError::WrongSigner { .. })
    ));
}

#[test]
fn signed_task_round_trips_through_canonical_bytes() {
    let buyer = Identity::from_test_label("buyer");
    let signed = Signed::sign(training_task(&buyer, 9), &buyer).unwrap();
    let bytes = to_canonical_bytes(&signed).unwrap();
    let back: Signed<TaskSpec> = from_canonical_bytes(&bytes).unwrap();
    assert_eq!(back, signed);
    assert_eq!(back.verify().unwrap(), &signed.body);
    // The task id does not depend on the signature.
    assert_eq!(back.id().unwrap(), message_id(&signed.body).unwrap());
    // Reading a task from a newer protocol version is refused, not misread.
    let text = String::from_utf8(bytes)
        .unwrap()
        .replace("\"version\":1", "\"version\":2");
    let err = from_canonical_bytes::<Signed<TaskSpec>>(text.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn challenge_is_recomputable_and_checked() {
    let node = Identity::from_test_label("node");
    let signed = signed_commitment();
    let id = CommitmentId(signed.id().unwrap());
    let challenge = Challenge::derive(node.account(), id, beacon("b1"), 20, 5).unwrap();
    challenge.check().unwrap();
    assert_eq!(challenge.sampled.len(), 5);
    let mut picked = challenge.clone();
    picked.sampled[0] = (picked.sampled[0] + 1) % 20;
    assert_eq!(picked.check(), Err(ChallengeError::Indices));
    let mut reseeded = challenge.clone();
    reseeded.beacon = beacon("b2");
    assert_eq!(reseeded.check(), Err(ChallengeError::Seed));
    // Another beacon draws another sample.
    let other = Challenge::derive(node.account(), id, beacon("b2"), 20, 5).unwrap();
    assert_ne!(other.sampled, challenge.sampled);
}

#[test]
fn openings_prove_committed_checkpoints_only() {
    let worker = Identity::from_test_label("worker");
    let task = training_task(&Identity::from_test_label("buyer"), 1);
    let checkpoints = checkpoint_hashes("run", 20);
    let body = commitment(&worker, &task, &checkpoints);
    let tree = MerkleTree::new(&checkpoints);
    let id = CommitmentId(message_id(&body).unwrap());
    for (i, hash) in checkpoints.iter().enumerate() {
        let opening = Opening {
            version: Version::CURRENT,
            worker: worker.account(),
            commitment_id: id,
            checkpoint: i as u32,
            state_hash: *hash,
            proof: tree.proof(i as u64).unwrap(),
        };
        let signed = Signed::sign(opening.clone(), &worker).unwrap();
        signed
            .verify()
            .unwrap()
            .verify_against(&body.root, body.leaf_count())
            .unwrap();
        let mut lie = opening.clone();
        lie.state_hash = checkpoints[(i + 1) % checkpoints.len()];
        assert!(lie.verify_against(&body.root, body.leaf_count()).is_err());
        let mut moved = opening;
        moved.checkpoint = (moved.checkpoint + 1) % 21;
        assert_eq!(
            moved.verify_against(&body.root, body.leaf_count()),
            Err(MerkleError::WrongPosition)
        );
    }
}

#[test]
fn capabilities_name_profiles_as_they_are_serialized() {
    for profile in ExecutionProfile::ALL {
        assert_eq!(
            serde_json::to_string(&profile).unwrap(),
            format!("\"{}\"", profile.name())
        );
    }
    let cpu = Capabilities {
        profiles: vec!["repro".into(), "native".into()],
        device: "cpu".into(),
        memory_bytes: 1 << 30,
        disk_bytes: 1 << 34,
        steps_per_ksec: 1,
    };
    assert!(cpu.runs(ExecutionProfile::Repro) && cpu.runs(ExecutionProfile::Native));
    assert!(!cpu.runs(ExecutionProfile::Cuda));
}

#[test]
fn an_offer_covers_a_need_only_in_both_memory_and_disk() {
    let need = Resources {
        memory_bytes: 100,
        disk_bytes: 10,
    };
    let offer = |memory_bytes, disk_bytes| Resources {
        memory_bytes,
        disk_bytes,
    };
    assert!(offer(100, 10).covers(&need));
    assert!(offer(u64::MAX, u64::MAX).covers(&need));
    assert!(!offer(99, u64::MAX).covers(&need));
    assert!(!offer(u64::MAX, 9).covers(&need));
    assert!(Resources::default().covers(&Resources::default()));
}

#[test]
fn an_unpooled_task_has_no_pool_member_and_a_null_one_is_not_canonical() {
    let task = training_task(&Identity::from_test_label("buyer"), 1);
    let bytes = to_canonical_bytes(&task).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains("pool"), "{text}");
    assert_eq!(from_canonical_bytes::<TaskSpec>(&bytes).unwrap(), task);
    // `"pool":null` where the member sorts (after `optimizer`, before `steps`).
    let with_null = text.replacen("\"steps\":", "\"pool\":null,\"steps\":", 1);
    assert!(with_null.contains("\"pool\":null"));
    let err = from_canonical_bytes::<TaskSpec>(with_null.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("`pool` is null"), "{err}");
}

#[test]
fn every_member_left_out_when_unset_is_refused_by_name_when_null() {
    // Parsed as the HTTP API parses a body (any JSON, not only canonical bytes): the refusal
    // names the member instead of surfacing later as a signature that does not verify.
    let training = serde_json::to_value(training_task(&Identity::from_test_label("b"), 1)).unwrap();
    let inference =
        serde_json::to_value(inference_task(&Identity::from_test_label("b"), 1)).unwrap();
    let cases: [(&serde_json::Value, &str, &str); 6] = [
        (&training, "/workload", "pool"),
        (&training, "/workload", "eval_dataset"),
        (&inference, "/workload", "tokenizer"),
        (&inference, "/workload", "tokenizer_config"),
        (&inference, "/workload", "chat_template"),
        (&inference, "/workload/decoding", "top_p"),
    ];
    for (task, at, member) in cases {
        let mut v = task.clone();
        v.pointer_mut(at)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(member.to_owned(), serde_json::Value::Null);
        let err = serde_json::from_value::<TaskSpec>(v)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`{member}` is null")),
            "{member}: {err}"
        );
    }
}

#[test]
fn a_commitment_without_a_slot_round_has_no_member_for_it() {
    let task = training_task(&Identity::from_test_label("buyer"), 1);
    let c = commitment(
        &Identity::from_test_label("worker"),
        &task,
        &checkpoint_hashes("c", 2),
    );
    let text = String::from_utf8(to_canonical_bytes(&c).unwrap()).unwrap();
    assert!(!text.contains("slot_round"), "{text}");
    let with_null = text.replacen("\"steps\":", "\"slot_round\":null,\"steps\":", 1);
    assert!(from_canonical_bytes::<Commitment>(with_null.as_bytes()).is_err());
}
