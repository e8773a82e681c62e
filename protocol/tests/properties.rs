//! Property tests: canonical encoding, Merkle proofs, sampling, and decoding of hostile input.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_protocol::canonical::{canonicalize_value, MAX_SAFE_INTEGER};
use market_protocol::fixtures::{checkpoint_hashes, commitment, inference_task, training_task};
use market_protocol::sampling::sample_indices;
use market_protocol::*;
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value canonical encoding accepts: safe integers, strings with any characters,
/// nested arrays and objects.
fn json_value() -> impl Strategy<Value = Value> {
    let safe = MAX_SAFE_INTEGER as i64;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-safe..=safe).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn canonical_encoding_round_trips(v in json_value()) {
        let bytes = canonicalize_value(&v).unwrap();
        let back: Value = from_canonical_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(canonicalize_value(&back).unwrap(), bytes);
    }

    #[test]
    fn pretty_printed_json_is_refused_as_non_canonical(v in json_value()) {
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        let canonical = canonicalize_value(&v).unwrap();
        if pretty != canonical {
            prop_assert!(from_canonical_bytes::<Value>(&pretty).is_err());
        }
    }

    #[test]
    fn typed_messages_round_trip(nonce in 0..MAX_SAFE_INTEGER, seed in 0..MAX_SAFE_INTEGER,
                                 price in 0..MAX_SAFE_INTEGER, segments in 1u32..40) {
        let buyer = Identity::from_test_label("buyer");
        for mut task in [training_task(&buyer, nonce), inference_task(&buyer, nonce)] {
            task.seed = seed;
            task.price = Credits(price);
            let signed = Signed::sign(task, &buyer).unwrap();
            let bytes = to_canonical_bytes(&signed).unwrap();
            let back: Signed<TaskSpec> = from_canonical_bytes(&bytes).unwrap();
            prop_assert_eq!(back.verify().unwrap(), &signed.body);
        }
        let worker = Identity::from_test_label("worker");
        let c = commitment(&worker, &training_task(&buyer, nonce), &checkpoint_hashes("p", segments));
        let signed = Signed::sign(c, &worker).unwrap();
        let back: Signed<Commitment> = from_canonical_bytes(&to_canonical_bytes(&signed).unwrap()).unwrap();
        prop_assert_eq!(back, signed);
    }

    #[test]
    fn every_merkle_proof_verifies_and_any_byte_change_breaks_it(
        leaves in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..70),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let tree = MerkleTree::new(&leaves);
        let root = tree.root();
        for (i, leaf) in leaves.iter().enumerate() {
            let proof = tree.proof(i as u64).unwrap();
            prop_assert!(proof.verify(leaf, &root).is_ok());
            // Lay out every byte the verifier reads: leaf, path, root; flip one of them.
            let mut bytes = leaf.clone();
            for p in &proof.path { bytes.extend_from_slice(p.as_bytes()); }
            bytes.extend_from_slice(root.as_bytes());
            if bytes.is_empty() { continue; }
            for (at, xor) in &flips {
                let at = at.index(bytes.len());
                let mut changed = bytes.clone();
                changed[at] ^= xor;
                let (leaf2, rest) = changed.split_at(leaf.len());
                let mut proof2 = proof.clone();
                for (k, p) in proof2.path.iter_mut().enumerate() {
                    p.0.copy_from_slice(&rest[32 * k..32 * k + 32]);
                }
                let mut root2 = Hash::default();
                root2.0.copy_from_slice(&rest[rest.len() - 32..]);
                prop_assert!(proof2.verify(leaf2, &root2).is_err(), "flip at {} of leaf {}", at, i);
            }
            // A proof claimed for another position or tree size fails too.
            let mut moved = proof.clone();
            moved.leaf_index = (moved.leaf_index + 1) % leaves.len() as u64;
            if leaves.len() > 1 && leaves[moved.leaf_index as usize] != *leaf {
                prop_assert!(moved.verify(leaf, &root).is_err());
            }
            // (The tree size is not bound by the root alone, as in RFC 9162: a commitment states
            // its leaf count and `Opening::verify_against` checks the proof claims that size.)
        }
    }

    #[test]
    fn sampling_draws_distinct_in_range_indices_deterministically(
        seed in any::<[u8; 32]>(), n in 1u32..5000, frac in 0.0f64..=1.0,
    ) {
        let s = ((f64::from(n) * frac) as u32).min(n);
        let seed = ChallengeSeed(Hash(seed));
        let a = sample_indices(&seed, n, s).unwrap();
        prop_assert_eq!(a.len(), s as usize);
        prop_assert!(a.iter().all(|&i| i < n));
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        prop_assert_eq!(distinct.len(), a.len());
        prop_assert_eq!(sample_indices(&seed, n, s).unwrap(), a);
    }

    #[test]
    fn random_bytes_never_panic_and_never_decode(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Any outcome but a panic is acceptable for garbage; a success must be canonical.
        if let Ok(v) = from_canonical_bytes::<Value>(&bytes) {
            prop_assert_eq!(canonicalize_value(&v).unwrap(), bytes.clone());
        }
        prop_assert!(from_canonical_bytes::<Signed<TaskSpec>>(&bytes).is_err());
        prop_assert!(from_canonical_bytes::<Signed<Commitment>>(&bytes).is_err());
        prop_assert!(from_canonical_bytes::<Signed<Verdict>>(&bytes).is_err());
    }

    #[test]
    fn mutated_and_truncated_messages_are_refused_without_panic(
        cut in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), xor in 1u8..=255,
    ) {
        let buyer = Identity::from_test_label("buyer");
        let signed = Signed::sign(training_task(&buyer, 3), &buyer).unwrap();
        let bytes = to_canonical_bytes(&signed).unwrap();
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(from_canonical_bytes::<Signed<TaskSpec>>(truncated).is_err());
        let mut changed = bytes.clone();
        changed[at.index(bytes.len())] ^= xor;
        // A changed byte either fails to decode or fails to verify: never a valid different task.
        if let Ok(decoded) = from_canonical_bytes::<Signed<TaskSpec>>(&changed) {
            prop_assert!(decoded.verify().is_err());
        }
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = vec![b' '; market_protocol::canonical::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        from_canonical_bytes::<Value>(&big),
        Err(CanonicalError::TooLarge { .. })
    ));
}
