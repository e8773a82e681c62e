//! Writes the test vectors in `spec/vectors/` (run from the workspace root):
//!
//! ```text
//! cargo run -p market-protocol --example gen_vectors -- spec/vectors
//! ```
//!
//! Vectors marked with a `source` come from RFCs and are written here by hand, independent of
//! this crate; the rest pin this crate's output so that any change to encoding, signing,
//! Merkle trees or sampling shows up as a failing test (and is a protocol change).

use std::path::PathBuf;

use market_protocol::canonical::parse_json_limited;
use market_protocol::detection::{
    detection_probability, faked_segments, pooled_detection_probability,
    pooled_samples_per_verifier, samples_for_target, samples_per_verifier,
    union_detection_probability,
};
use market_protocol::fixtures::{
    beacon, checkpoint_hashes, commitment, inference_task, training_task,
};
use market_protocol::sampling::{
    challenge_seed, draw_verifiers, ringer_draws, sample_indices, seed_stream, verifier_weight,
};
use market_protocol::*;
use rand_core::RngCore;
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "spec/vectors".into())
        .into();
    std::fs::create_dir_all(&dir)?;
    let files = [
        ("keys.json", "ed25519 keys: secret -> account (public key) and libp2p peer id; signatures over raw messages. RFC 8032 section 7.1 vectors plus market test identities (secret = blake3 derive_key(\"market v1 test identity\", label)).", keys()),
        ("canonical.json", "Canonical bytes (RFC 8785 JCS restricted to safe integers). `input` is JSON text; either `canonical` is its canonical form, or strict decoding of `input` fails with `error`.", canonical()?),
        ("signatures.json", "Signed messages: signing bytes = domain || 0x00 || JCS(body); ed25519 signature by the test identity; id = blake3(signing bytes).", signatures()?),
        ("merkle.json", "Merkle trees (RFC 6962 shape, blake3, leaf prefix 0x00, node prefix 0x01): leaves (hex bytes), root, and the inclusion proof of every leaf.", merkle()),
        ("challenge.json", "Challenge sampling: `stream` vectors give the first little-endian u64s of the ChaCha20 stream of a seed (hex strings); `sample` vectors derive the seed from a commitment id, beacon and verifier and draw indices in draw order; `beacon` vectors give the operator's ECVRF proof over a commitment id and the beacon it yields; `verifier_draw` vectors give a pool (account, stake, reputation and the weight they make) and the order the node draws it in from the stream keyed by blake3(\"verifiers\" || beacon [|| round as u32 LE when round > 0]); `ringer_draw` vectors give, per verifier in draw order, whether a ringer is planted at `rate_ppm` from the stream keyed by blake3(\"ringers\" || beacon).", challenge()?),
        ("detection.json", "Detection maths: `probability` = 1 - C(n-m, s)/C(n, s); `sizing` gives m = ceil(fraction * n) and the smallest s reaching the target; `per_verifier` gives the smallest s >= 1 that `verifiers` independent samples need to reach it together, and their union probability; `pooled` gives, for a pooled task of `slot_rounds` runs of n segments audited apart, m = ceil(fraction * n * slot_rounds), the smallest s >= 1 per verifier and run with 1 - ((n - s)/n)^(verifiers * m) >= target, and that bound.", detection()),
    ];
    for (name, description, vectors) in files {
        let doc = json!({ "description": description, "vectors": vectors });
        let mut text = serde_json::to_string_pretty(&doc)?;
        text.push('\n');
        std::fs::write(dir.join(name), text)?;
        println!(
            "wrote {} ({} vectors)",
            dir.join(name).display(),
            doc["vectors"].as_array().map_or(0, Vec::len)
        );
    }
    Ok(())
}

fn keys() -> Value {
    let mut v = vec![
        json!({"name": "rfc8032-test-1", "source": "RFC 8032 section 7.1 TEST 1",
            "secret": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "account": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "message": "",
            "signature": "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"}),
        json!({"name": "rfc8032-test-2", "source": "RFC 8032 section 7.1 TEST 2",
            "secret": "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "account": "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "message": "72",
            "signature": "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"}),
        json!({"name": "rfc8032-test-3", "source": "RFC 8032 section 7.1 TEST 3",
            "secret": "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "account": "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "message": "af82",
            "signature": "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"}),
    ];
    for label in ["buyer", "worker", "verifier", "node"] {
        let id = Identity::from_test_label(label);
        let message = b"market";
        v.push(json!({
            "name": format!("test-identity-{label}"),
            "label": label,
            "secret": hex::encode(id.secret_bytes()),
            "account": id.account(),
            "peer_id": id.account().to_peer_id().to_string(),
            "message": hex::encode(message),
            "signature": id.sign_raw(message).to_string(),
        }));
    }
    Value::Array(v)
}

fn canonical() -> Result<Value, Box<dyn std::error::Error>> {
    let ok = |name: &str,
              source: Option<&str>,
              input: &str|
     -> Result<Value, Box<dyn std::error::Error>> {
        let value = parse_json_limited(input.as_bytes(), canonical::MAX_MESSAGE_BYTES)?;
        let canonical = String::from_utf8(canonical::canonicalize_value(&value)?)?;
        Ok(json!({"name": name, "source": source, "input": input, "canonical": canonical}))
    };
    let err = |name: &str, input: &str, error: &str| json!({"name": name, "input": input, "error": error});
    let buyer = Identity::from_test_label("buyer");
    let task = serde_json::to_string_pretty(&training_task(&buyer, 1))?;
    Ok(Value::Array(vec![
        ok(
            "rfc8785-string-escapes",
            Some("RFC 8785 section 3.2.2.2"),
            r#"{"string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"}"#,
        )?,
        ok(
            "rfc8785-sorting",
            Some("RFC 8785 section 3.2.3"),
            r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}"#,
        )?,
        ok(
            "literals-and-nesting",
            None,
            r#"[ null, true, false, [], {}, {"b": [1, -2, {"a": ""}]} ]"#,
        )?,
        ok(
            "safe-integer-bounds",
            None,
            r#"{"max": 9007199254740991, "min": -9007199254740991, "zero": 0}"#,
        )?,
        ok(
            "control-characters",
            None,
            "[\"\\u0000\\u0007\\b\\t\\n\\u000b\\f\\r\\u001f\\u007f\"]",
        )?,
        ok("task-spec", None, &task)?,
        err("float", r#"{"lr":0.001}"#, "number"),
        err("float-integral", r#"{"n":1.0}"#, "number"),
        err("exponent", r#"{"n":1e3}"#, "number"),
        err("integer-over-2^53", r#"{"n":9007199254740992}"#, "number"),
        err("whitespace", r#"{"a": 1}"#, "not_canonical"),
        err("unsorted-keys", r#"{"b":1,"a":2}"#, "not_canonical"),
        err("duplicate-key", r#"{"a":1,"a":1}"#, "not_canonical"),
        err("escaped-ascii", r#"["\u0041"]"#, "not_canonical"),
        err("uppercase-unicode-escape", r#"["\u001F"]"#, "not_canonical"),
        err("truncated", r#"{"a":[1,2"#, "syntax"),
        err("garbage", "\u{1}\u{2}not json", "syntax"),
        err(
            "deep-nesting",
            &("[".repeat(65) + &"]".repeat(65)),
            "too_deep",
        ),
    ]))
}

fn signatures() -> Result<Value, Box<dyn std::error::Error>> {
    fn vector<T: Message>(
        name: &str,
        label: &str,
        body: T,
    ) -> Result<Value, Box<dyn std::error::Error>> {
        let id = Identity::from_test_label(label);
        let signed = Signed::sign(body, &id)?;
        let type_name = T::DOMAIN.rsplit('/').next().unwrap_or(T::DOMAIN);
        Ok(json!({
            "name": name, "type": type_name, "domain": T::DOMAIN, "signer_label": label,
            "signing_bytes": hex::encode(signing_bytes(&signed.body)?),
            "envelope": signed, "id": message_id(&signed.body)?,
        }))
    }
    let buyer = Identity::from_test_label("buyer");
    let worker = Identity::from_test_label("worker");
    let node = Identity::from_test_label("node");
    let verifier = Identity::from_test_label("verifier");
    let task = training_task(&buyer, 1);
    let checkpoints = checkpoint_hashes("vector-run", 8);
    let c = commitment(&worker, &task, &checkpoints);
    let cid = CommitmentId(message_id(&c)?);
    let challenge = Challenge::derive(node.account(), cid, beacon("vector beacon"), 8, 3)?;
    let tree = MerkleTree::new(&checkpoints);
    let opening = Opening {
        version: Version::CURRENT,
        worker: worker.account(),
        commitment_id: cid,
        checkpoint: 3,
        state_hash: checkpoints[3],
        proof: tree.proof(3).ok_or("proof")?,
    };
    let verdict = Verdict {
        version: Version::CURRENT,
        verifier: verifier.account(),
        commitment_id: cid,
        challenge_id: ChallengeId(message_id(&challenge)?),
        checked: vec![SegmentCheck {
            segment: 2,
            expected: checkpoints[3],
            actual: Some(StateHash(Hash::of(b"other"))),
        }],
        outcome: VerdictOutcome::Fail {
            segment: 2,
            step: Some(27),
            reason: FailureReason::StateMismatch,
            detail: "end state differs".into(),
        },
        compute_share_ppm: 375_000,
    };
    let receipt = Receipt {
        version: Version::CURRENT,
        operator: node.account(),
        task_id: c.task_id,
        commitment_id: cid,
        verdicts: vec![VerdictId(Hash::of(b"verdict"))],
        payments: vec![
            Payment {
                account: worker.account(),
                amount: Credits(900),
                kind: PaymentKind::Release,
            },
            Payment {
                account: verifier.account(),
                amount: Credits(50),
                kind: PaymentKind::Reward,
            },
            Payment {
                account: buyer.account(),
                amount: Credits(50),
                kind: PaymentKind::Refund,
            },
        ],
        ledger_seq: 17,
    };
    let answer = Answer {
        version: Version::CURRENT,
        worker: worker.account(),
        request: TaskId(message_id(&inference_task(&buyer, 2))?),
        model: BlobId(Hash::of(b"model")),
        output: StateHash(Hash::of(b"answer record")),
        prompt_tokens: 42,
        completion_tokens: 8,
    };
    let (old_key, new_key) = (
        Identity::from_test_label("old key"),
        Identity::from_test_label("new key"),
    );
    let rotation = KeyRotation {
        version: Version::CURRENT,
        from: old_key.account(),
        to: new_key.account(),
    };
    let acceptance = RotationAcceptance {
        version: Version::CURRENT,
        rotation: message_id(&rotation)?,
        to: new_key.account(),
    };
    Ok(Value::Array(vec![
        vector("key-rotation", "old key", rotation)?,
        vector("rotation-acceptance", "new key", acceptance)?,
        vector("training-task", "buyer", task)?,
        vector("inference-task", "buyer", inference_task(&buyer, 2))?,
        vector("commitment", "worker", c)?,
        vector("challenge", "node", challenge)?,
        vector("opening", "worker", opening)?,
        vector("verdict-fail", "verifier", verdict)?,
        vector("receipt", "node", receipt)?,
        vector("answer", "worker", answer.clone())?,
        vector(
            "answer-check-pass",
            "verifier",
            AnswerCheck {
                version: Version::CURRENT,
                verifier: verifier.account(),
                batch: Hash::of(b"batch root"),
                index: 3,
                answer: message_id(&answer)?,
                outcome: AnswerCheckOutcome::Pass,
            },
        )?,
        vector(
            "answer-check-fail",
            "verifier",
            AnswerCheck {
                version: Version::CURRENT,
                verifier: verifier.account(),
                batch: Hash::of(b"batch root"),
                index: 3,
                answer: message_id(&answer)?,
                outcome: AnswerCheckOutcome::Fail {
                    detail: "token 2 is 17, the model gives 4".into(),
                },
            },
        )?,
    ]))
}

fn merkle() -> Value {
    let mut v = Vec::new();
    for n in [0usize, 1, 2, 3, 4, 5, 7, 8, 13] {
        let leaves: Vec<Vec<u8>> = (0..n)
            .map(|i| Hash::of(format!("leaf {i}").as_bytes()).0.to_vec())
            .collect();
        let tree = MerkleTree::new(&leaves);
        let proofs: Vec<MerkleProof> = (0..n as u64).filter_map(|i| tree.proof(i)).collect();
        v.push(json!({
            "name": format!("tree-of-{n}"),
            "leaves": leaves.iter().map(hex::encode).collect::<Vec<_>>(),
            "root": tree.root(), "proofs": proofs,
        }));
    }
    Value::Array(v)
}

fn challenge() -> Result<Value, Box<dyn std::error::Error>> {
    let stream = |name: &str, source: Option<&str>, seed: Hash| {
        let mut rng = seed_stream(&ChallengeSeed(seed));
        let words: Vec<String> = (0..10)
            .map(|_| format!("{:016x}", rng.next_u64()))
            .collect();
        json!({"kind": "stream", "name": name, "source": source, "seed": seed, "u64": words})
    };
    let mut v = vec![
        stream(
            "zero-seed",
            Some("RFC 8439 A.1 test vector 1: keystream 76b8e0ada0f13d90..."),
            Hash([0; 32]),
        ),
        stream("seed-blake3-market", None, Hash::of(b"market")),
    ];
    for (i, (segments, samples)) in [
        (1u32, 1u32),
        (10, 3),
        (20, 20),
        (100, 7),
        (1000, 46),
        (4_000_000_000, 5),
    ]
    .into_iter()
    .enumerate()
    {
        let cid = CommitmentId(Hash::of(format!("commitment {i}").as_bytes()));
        let b = beacon(&format!("beacon {i}"));
        let verifier = Identity::from_test_label(&format!("verifier {i}")).account();
        let seed = challenge_seed(&cid, &b, &verifier);
        v.push(json!({
            "kind": "sample", "name": format!("sample-{samples}-of-{segments}"),
            "commitment_id": cid, "beacon": b, "verifier": verifier, "seed": seed,
            "segments": segments, "samples": samples,
            "indices": sample_indices(&seed, segments, samples)?,
        }));
    }
    // Beacons: the operator's ECVRF proof over "market/v1/Beacon" 0x00 commitment_id, and the
    // beacon (the first 32 bytes of the VRF output).
    for i in 0..3 {
        let operator = Identity::from_test_label(&format!("operator {i}"));
        let cid = CommitmentId(Hash::of(format!("commitment {i}").as_bytes()));
        let (b, proof) = market_protocol::beacon::prove_beacon(&operator, &cid);
        v.push(json!({
            "kind": "beacon", "name": format!("beacon-{i}"),
            "operator": operator.account(), "commitment_id": cid,
            "beacon_proof": proof, "beacon": b,
        }));
    }
    // Batch beacons of served answers: the operator's ECVRF proof over "market/v1/ServeBatch"
    // 0x00 root, the beacon, and the answers it samples (sample_indices with the beacon as the
    // seed: k of n).
    for (i, (n, k)) in [(32u32, 8u32), (5, 2), (1, 1)].into_iter().enumerate() {
        let operator = Identity::from_test_label(&format!("operator {i}"));
        let root = Hash::of(format!("batch {i}").as_bytes());
        let (b, proof) = market_protocol::beacon::prove_batch_beacon(&operator, &root);
        v.push(json!({
            "kind": "batch_beacon", "name": format!("batch-beacon-{i}"),
            "operator": operator.account(), "root": root,
            "beacon_proof": proof, "beacon": b, "answers": n, "audited": k,
            "indices": sample_indices(&ChallengeSeed(b.0), n, k)?,
        }));
    }
    // The node's verifier draw: weights from stake and reputation, the order drawn without
    // replacement (round 0 and a later round), and ringer draws at a rate.
    for (i, (round, members)) in [
        (0u32, vec![(100u64, 0i64), (100, 0), (100, 0)]),
        (0, vec![(50, 3), (400, -2), (1000, 0), (75, 250), (60, -40)]),
        (2, vec![(50, 3), (400, -2), (1000, 0), (75, 250), (60, -40)]),
        (1, vec![(1, 0)]),
    ]
    .into_iter()
    .enumerate()
    {
        let b = beacon(&format!("draw {i}"));
        let pool: Vec<Value> = members
            .iter()
            .enumerate()
            .map(|(j, (stake, rep))| {
                let account = Identity::from_test_label(&format!("draw verifier {j}")).account();
                json!({"account": account, "stake": stake, "reputation": rep,
                    "weight": verifier_weight(*stake, *rep)})
            })
            .collect();
        let weighted = pool
            .iter()
            .map(
                |p| -> Result<(AccountId, u64), Box<dyn std::error::Error>> {
                    Ok((
                        p["account"].as_str().unwrap_or_default().parse()?,
                        p["weight"].as_u64().unwrap_or_default(),
                    ))
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        v.push(json!({
            "kind": "verifier_draw", "name": format!("verifier-draw-{i}"),
            "beacon": b, "round": round, "pool": pool,
            "order": draw_verifiers(&b, round, weighted),
        }));
    }
    for (i, (rate_ppm, count)) in [(0u32, 4usize), (250_000, 12), (1_000_000, 3)]
        .into_iter()
        .enumerate()
    {
        let b = beacon(&format!("ringers {i}"));
        v.push(json!({
            "kind": "ringer_draw", "name": format!("ringer-draw-{i}"),
            "beacon": b, "rate_ppm": rate_ppm,
            "planted": ringer_draws(&b, rate_ppm, count),
        }));
    }
    Ok(Value::Array(v))
}

fn detection() -> Value {
    let mut v = Vec::new();
    for (n, m, s) in [
        (10u64, 1u64, 1u64),
        (4, 2, 2),
        (100, 10, 10),
        (1000, 100, 44),
        (1000, 1, 999),
        (50, 0, 10),
    ] {
        v.push(
            json!({"kind": "probability", "name": format!("p-{n}-{m}-{s}"), "n": n, "m": m, "s": s,
            "probability": detection_probability(n, m, s)}),
        );
    }
    for (n, fraction, target) in [
        (1000u64, "0.1", "0.99"),
        (1000, "0.01", "0.99"),
        (100, "0.2", "0.999"),
        (10, "0.1", "0.5"),
        (1001, "0.1", "0.99"),
    ] {
        let f: Decimal = fraction.parse().unwrap_or_else(|_| unreachable!());
        let t: Decimal = target.parse().unwrap_or_else(|_| unreachable!());
        let m = faked_segments(n, &f);
        v.push(
            json!({"kind": "sizing", "name": format!("size-{n}-{fraction}-{target}"), "n": n,
            "faked_fraction": fraction, "target": target, "m": m,
            "samples": samples_for_target(n, m, t.to_f64())}),
        );
    }
    // Per-verifier samples: each of `verifiers` verifiers draws its own sample of `samples`.
    for (n, fraction, target, verifiers) in [
        (1000u64, "0.1", "0.99", 1u64),
        (1000, "0.1", "0.99", 2),
        (1000, "0.1", "0.99", 3),
        (20, "0.1", "0.99", 2),
        (40, "0.1", "0.5", 2),
        (100, "0.25", "0", 2),
        (5, "1", "1", 2),
    ] {
        let f: Decimal = fraction.parse().unwrap_or_else(|_| unreachable!());
        let t: Decimal = target.parse().unwrap_or_else(|_| unreachable!());
        let m = faked_segments(n, &f);
        let s = samples_per_verifier(n, m, t.to_f64(), verifiers);
        v.push(json!({
            "kind": "per_verifier", "name": format!("plan-{n}-{fraction}-{target}-{verifiers}"),
            "n": n, "faked_fraction": fraction, "target": target, "verifiers": verifiers,
            "m": m, "samples": s,
            "probability": s.map(|s| union_detection_probability(n, m, s, verifiers)),
        }));
    }
    // Pooled: `slot_rounds` runs of `n` segments each, audited apart, sized together.
    for (n, slot_rounds, fraction, target, verifiers) in [
        (50u64, 80u64, "0.1", "0.99", 2u64),
        (10, 80, "0.1", "0.99", 2),
        (4, 9, "0.1", "0.99", 2),
        (4, 9, "0.02", "0.99", 2),
        (2, 4, "0.1", "0.99", 2),
        (20, 12, "0.05", "0.999", 1),
        (7, 3, "1", "1", 3),
    ] {
        let f: Decimal = fraction.parse().unwrap_or_else(|_| unreachable!());
        let t: Decimal = target.parse().unwrap_or_else(|_| unreachable!());
        let m = faked_segments(n * slot_rounds, &f);
        let s = pooled_samples_per_verifier(n, m, t.to_f64(), verifiers);
        v.push(json!({
            "kind": "pooled", "name": format!("pooled-{n}x{slot_rounds}-{fraction}-{target}-{verifiers}"),
            "n": n, "slot_rounds": slot_rounds, "faked_fraction": fraction, "target": target,
            "verifiers": verifiers, "m": m, "samples": s,
            "probability": s.map(|s| pooled_detection_probability(n, m, s, verifiers)),
        }));
    }
    Value::Array(v)
}
