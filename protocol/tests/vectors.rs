//! Loads every test vector in `spec/vectors/` and checks this crate against it, so the spec and
//! the code cannot drift apart. Regenerate with `cargo run -p market-protocol --example
//! gen_vectors -- spec/vectors` only for a deliberate protocol change.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;

use market_protocol::canonical::{canonicalize_value, parse_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::detection::{
    detection_probability, faked_segments, samples_for_target, samples_per_verifier,
    union_detection_probability,
};
use market_protocol::sampling::{challenge_seed, sample_indices, seed_stream};
use market_protocol::*;
use rand_core::RngCore;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn load(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../spec/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["description"].is_string(), "{name} has a description");
    doc["vectors"].as_array().unwrap().clone()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn total_vectors() -> usize {
    [
        "keys.json",
        "canonical.json",
        "signatures.json",
        "merkle.json",
        "challenge.json",
        "detection.json",
    ]
    .iter()
    .map(|f| load(f).len())
    .sum()
}

#[test]
fn at_least_thirty_vectors() {
    assert!(total_vectors() >= 30, "{}", total_vectors());
}

#[test]
fn keys() {
    let vectors = load("keys.json");
    assert!(vectors.len() >= 5);
    for v in vectors {
        let secret: [u8; 32] = hex::decode(s(&v, "secret")).unwrap().try_into().unwrap();
        let id = Identity::from_secret_bytes(secret);
        assert_eq!(id.account().to_hex(), s(&v, "account"), "{}", s(&v, "name"));
        if let Some(label) = v["label"].as_str() {
            assert_eq!(Identity::from_test_label(label).secret_bytes(), secret);
            assert_eq!(id.account().to_peer_id().to_string(), s(&v, "peer_id"));
            let peer: libp2p_identity::PeerId = s(&v, "peer_id").parse().unwrap();
            assert_eq!(AccountId::from_peer_id(&peer).unwrap(), id.account());
        }
        let message = hex::decode(s(&v, "message")).unwrap();
        let signature: Signature = s(&v, "signature").parse().unwrap();
        assert_eq!(id.sign_raw(&message), signature, "{}", s(&v, "name"));
        id.account()
            .verifying_key()
            .verify_strict(&message, &signature.to_dalek())
            .unwrap();
    }
}

#[test]
fn canonical() {
    let vectors = load("canonical.json");
    assert!(vectors.len() >= 10);
    for v in vectors {
        let name = s(&v, "name");
        let input = s(&v, "input");
        if let Some(expected) = v["canonical"].as_str() {
            let value = parse_json_limited(input.as_bytes(), MAX_MESSAGE_BYTES).unwrap();
            assert_eq!(
                String::from_utf8(canonicalize_value(&value).unwrap()).unwrap(),
                expected,
                "{name}"
            );
            let back: Value = from_canonical_bytes(expected.as_bytes()).unwrap();
            assert_eq!(back, value, "{name}");
        } else {
            let err = from_canonical_bytes::<Value>(input.as_bytes()).unwrap_err();
            let kind = match err {
                CanonicalError::Number(_) => "number",
                CanonicalError::NotCanonical => "not_canonical",
                CanonicalError::Syntax(_) => "syntax",
                CanonicalError::TooDeep => "too_deep",
                CanonicalError::TooLarge { .. } => "too_large",
                CanonicalError::Shape(_) => "shape",
            };
            assert_eq!(kind, s(&v, "error"), "{name}");
        }
    }
}

fn check_signed<T: Message + std::fmt::Debug + PartialEq>(v: &Value) {
    let name = s(v, "name");
    assert_eq!(T::DOMAIN, s(v, "domain"), "{name}");
    let envelope: Signed<T> = serde_json::from_value(v["envelope"].clone()).unwrap();
    // The envelope as a third party would receive it: canonical bytes decode strictly.
    let wire = to_canonical_bytes(&v["envelope"]).unwrap();
    let decoded: Signed<T> = from_canonical_bytes(&wire).unwrap();
    assert_eq!(decoded, envelope, "{name}");
    assert_eq!(
        hex::encode(signing_bytes(&envelope.body).unwrap()),
        s(v, "signing_bytes"),
        "{name}"
    );
    assert_eq!(envelope.id().unwrap().to_hex(), s(v, "id"), "{name}");
    let body = envelope.verify().unwrap_or_else(|e| panic!("{name}: {e}"));
    // ed25519 is deterministic: re-signing gives the same signature.
    let identity = Identity::from_test_label(s(v, "signer_label"));
    let resigned = Signed::sign(
        serde_json::from_value::<T>(serde_json::to_value(body).unwrap()).unwrap(),
        &identity,
    )
    .unwrap();
    assert_eq!(resigned.signature, envelope.signature, "{name}");
}

fn check_by_type(v: &Value) {
    match s(v, "type") {
        "TaskSpec" => check_signed::<TaskSpec>(v),
        "Commitment" => check_signed::<Commitment>(v),
        "Challenge" => {
            check_signed::<Challenge>(v);
            let c: Signed<Challenge> = serde_json::from_value(v["envelope"].clone()).unwrap();
            c.body.check().unwrap();
        }
        "Opening" => check_signed::<Opening>(v),
        "Verdict" => check_signed::<Verdict>(v),
        "Receipt" => check_signed::<Receipt>(v),
        "Answer" => check_signed::<Answer>(v),
        "AnswerCheck" => check_signed::<AnswerCheck>(v),
        "KeyRotation" => check_signed::<KeyRotation>(v),
        "RotationAcceptance" => check_signed::<RotationAcceptance>(v),
        other => panic!("unknown message type {other}"),
    }
}

#[test]
fn signatures() {
    let vectors = load("signatures.json");
    assert!(vectors.len() >= 6);
    for v in &vectors {
        check_by_type(v);
    }
}

fn parse<T: DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn merkle() {
    let vectors = load("merkle.json");
    assert!(vectors.len() >= 5);
    for v in vectors {
        let leaves: Vec<Vec<u8>> = v["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| hex::decode(l.as_str().unwrap()).unwrap())
            .collect();
        let root: Hash = s(&v, "root").parse().unwrap();
        let tree = MerkleTree::new(&leaves);
        assert_eq!(tree.root(), root, "{}", s(&v, "name"));
        let proofs: Vec<MerkleProof> = parse(&v["proofs"]);
        assert_eq!(proofs.len(), leaves.len());
        for (i, proof) in proofs.iter().enumerate() {
            assert_eq!(Some(proof), tree.proof(i as u64).as_ref());
            proof.verify(&leaves[i], &root).unwrap();
        }
    }
}

#[test]
fn challenge() {
    let vectors = load("challenge.json");
    assert!(vectors.len() >= 5);
    for v in vectors {
        let name = s(&v, "name");
        match s(&v, "kind") {
            "stream" => {
                let seed: ChallengeSeed = s(&v, "seed").parse().unwrap();
                let mut rng = seed_stream(&seed);
                for word in v["u64"].as_array().unwrap() {
                    assert_eq!(
                        format!("{:016x}", rng.next_u64()),
                        word.as_str().unwrap(),
                        "{name}"
                    );
                }
            }
            "sample" => {
                let cid: CommitmentId = s(&v, "commitment_id").parse().unwrap();
                let beacon: Beacon = s(&v, "beacon").parse().unwrap();
                let verifier: AccountId = s(&v, "verifier").parse().unwrap();
                let seed = challenge_seed(&cid, &beacon, &verifier);
                assert_eq!(seed.to_string(), s(&v, "seed"), "{name}");
                let segments = v["segments"].as_u64().unwrap() as u32;
                let samples = v["samples"].as_u64().unwrap() as u32;
                let indices: Vec<u32> = parse(&v["indices"]);
                assert_eq!(
                    sample_indices(&seed, segments, samples).unwrap(),
                    indices,
                    "{name}"
                );
            }
            "beacon" => {
                let operator: AccountId = s(&v, "operator").parse().unwrap();
                let cid: CommitmentId = s(&v, "commitment_id").parse().unwrap();
                let proof: market_protocol::VrfProof = s(&v, "beacon_proof").parse().unwrap();
                let beacon = market_protocol::beacon::verify_beacon(&operator, &cid, &proof);
                assert_eq!(beacon.unwrap().to_string(), s(&v, "beacon"), "{name}");
            }
            "batch_beacon" => {
                let operator: AccountId = s(&v, "operator").parse().unwrap();
                let root: Hash = s(&v, "root").parse().unwrap();
                let proof: market_protocol::VrfProof = s(&v, "beacon_proof").parse().unwrap();
                let beacon =
                    market_protocol::beacon::verify_batch_beacon(&operator, &root, &proof).unwrap();
                assert_eq!(beacon.to_string(), s(&v, "beacon"), "{name}");
                // A commitment's beacon proof over the same 32 bytes is another input.
                assert!(market_protocol::beacon::verify_beacon(
                    &operator,
                    &CommitmentId(root),
                    &proof
                )
                .is_err());
                let n = v["answers"].as_u64().unwrap() as u32;
                let k = v["audited"].as_u64().unwrap() as u32;
                let indices =
                    market_protocol::sampling::sample_indices(&ChallengeSeed(beacon.0), n, k)
                        .unwrap();
                let expected: Vec<u32> = serde_json::from_value(v["indices"].clone()).unwrap();
                assert_eq!(indices, expected, "{name}");
            }
            "verifier_draw" => {
                let beacon: Beacon = s(&v, "beacon").parse().unwrap();
                let pool: Vec<(AccountId, u64)> = v["pool"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        let weight = market_protocol::sampling::verifier_weight(
                            p["stake"].as_u64().unwrap(),
                            p["reputation"].as_i64().unwrap(),
                        );
                        assert_eq!(weight, p["weight"].as_u64().unwrap(), "{name}");
                        (s(p, "account").parse().unwrap(), weight)
                    })
                    .collect();
                let round = v["round"].as_u64().unwrap() as u32;
                let order: Vec<AccountId> = parse(&v["order"]);
                assert_eq!(
                    market_protocol::sampling::draw_verifiers(&beacon, round, pool),
                    order,
                    "{name}"
                );
            }
            "ringer_draw" => {
                let beacon: Beacon = s(&v, "beacon").parse().unwrap();
                let planted: Vec<bool> = parse(&v["planted"]);
                let rate = v["rate_ppm"].as_u64().unwrap() as u32;
                assert_eq!(
                    market_protocol::sampling::ringer_draws(&beacon, rate, planted.len()),
                    planted,
                    "{name}"
                );
            }
            other => panic!("unknown kind {other}"),
        }
    }
}

#[test]
fn detection() {
    let vectors = load("detection.json");
    assert!(vectors.len() >= 5);
    for v in vectors {
        let name = s(&v, "name");
        let n = v["n"].as_u64().unwrap();
        match s(&v, "kind") {
            "probability" => {
                let p =
                    detection_probability(n, v["m"].as_u64().unwrap(), v["s"].as_u64().unwrap());
                let expected = v["probability"].as_f64().unwrap();
                assert!((p - expected).abs() <= 1e-12, "{name}: {p} vs {expected}");
            }
            "sizing" => {
                let fraction: Decimal = s(&v, "faked_fraction").parse().unwrap();
                let target: Decimal = s(&v, "target").parse().unwrap();
                let m = faked_segments(n, &fraction);
                assert_eq!(m, v["m"].as_u64().unwrap(), "{name}");
                assert_eq!(
                    samples_for_target(n, m, target.to_f64()),
                    v["samples"].as_u64(),
                    "{name}"
                );
            }
            "per_verifier" => {
                let fraction: Decimal = s(&v, "faked_fraction").parse().unwrap();
                let target: Decimal = s(&v, "target").parse().unwrap();
                let verifiers = v["verifiers"].as_u64().unwrap();
                let m = faked_segments(n, &fraction);
                assert_eq!(m, v["m"].as_u64().unwrap(), "{name}");
                let samples = samples_per_verifier(n, m, target.to_f64(), verifiers);
                assert_eq!(samples, v["samples"].as_u64(), "{name}");
                let p = samples.map(|s| union_detection_probability(n, m, s, verifiers));
                match (p, v["probability"].as_f64()) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-15, "{name}: {a} {b}"),
                    (a, b) => assert_eq!(a, b, "{name}"),
                }
            }
            "pooled" => {
                let fraction: Decimal = s(&v, "faked_fraction").parse().unwrap();
                let target: Decimal = s(&v, "target").parse().unwrap();
                let verifiers = v["verifiers"].as_u64().unwrap();
                let runs = v["slot_rounds"].as_u64().unwrap();
                let m = faked_segments(n * runs, &fraction);
                assert_eq!(m, v["m"].as_u64().unwrap(), "{name}");
                let samples = market_protocol::detection::pooled_samples_per_verifier(
                    n,
                    m,
                    target.to_f64(),
                    verifiers,
                );
                assert_eq!(samples, v["samples"].as_u64(), "{name}");
                let p = samples.map(|s| {
                    market_protocol::detection::pooled_detection_probability(n, m, s, verifiers)
                });
                // serde_json reads a float to within an ulp (the Python reference compares
                // the bits exactly).
                match (p, v["probability"].as_f64()) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-15, "{name}: {a} {b}"),
                    (a, b) => assert_eq!(a, b, "{name}"),
                }
            }
            other => panic!("unknown kind {other}"),
        }
    }
}
