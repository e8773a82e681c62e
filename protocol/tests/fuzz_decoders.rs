//! Fuzzing the protocol's decoders in CI: canonical JSON and every `Signed<T>` under arbitrary
//! bytes and under hostile mutations of valid encodings (truncations, flipped bytes, huge
//! numbers, deep nesting, duplicated keys), bounded so the file runs in seconds. The cargo-fuzz
//! target `fuzz/fuzz_targets/canonical.rs` runs the same harness unbounded.
//!
//! The test binary counts heap bytes (a `#[global_allocator]`), so it also checks the stated
//! limit: an oversized message is refused before a byte of it is parsed or copied.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod fuzz_harness;
mod heap;

use std::sync::LazyLock;

use market_protocol::canonical::{
    from_canonical_bytes, from_canonical_bytes_limited, CanonicalError, MAX_MESSAGE_BYTES,
};
use market_protocol::fixtures::hostile::{self, mutate};
use market_protocol::{Signed, TaskSpec};
use proptest::prelude::*;
use serde_json::Value;

use fuzz_harness::{check_protocol_decoders, seeds};
use heap::{config, measure, serial};

static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(seeds);

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _serial = serial();
        check_protocol_decoders(&bytes);
    }

    #[test]
    fn json_shaped_text_never_panics(text in r#"[\[\]{}",:0-9a-z\\.eE+ -]{0,256}"#) {
        let _serial = serial();
        check_protocol_decoders(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn mutated_messages_never_panic(
        which in any::<prop::sample::Index>(),
        program in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let _serial = serial();
        let seed = which.get(&SEEDS);
        check_protocol_decoders(&mutate(seed, &program));
    }
}

#[test]
fn seeds_decode() {
    let _serial = serial();
    // The unmutated seeds are valid: the mutations start from accepted encodings.
    for seed in SEEDS.iter() {
        assert!(
            from_canonical_bytes::<Value>(seed).is_ok() || seed.contains(&b'\n'),
            "{}",
            String::from_utf8_lossy(seed)
        );
        check_protocol_decoders(seed);
    }
}

#[test]
fn hostile_tokens_in_every_field_never_panic() {
    let _serial = serial();
    // Every JSON token replacing each of the first 16 numbers of every seed.
    for seed in SEEDS.iter() {
        for k in 0..16u8 {
            for t in 0..hostile::JSON_TOKENS.len() as u8 {
                check_protocol_decoders(&mutate(seed, &[5, k, 0, t]));
            }
        }
    }
}

#[test]
fn oversized_message_is_refused_before_parsing() {
    let _serial = serial();
    // One byte over the limit: refused without parsing, copying or allocating anything big.
    let mut big = b"[".to_vec();
    big.resize(MAX_MESSAGE_BYTES, b'0');
    big.push(b']');
    let (r, used) = measure(|| from_canonical_bytes::<Value>(&big));
    assert_eq!(
        r,
        Err(CanonicalError::TooLarge {
            size: MAX_MESSAGE_BYTES + 1,
            limit: MAX_MESSAGE_BYTES
        })
    );
    assert!(
        used.peak < 4 << 10,
        "refusing an oversized message used {used:?}"
    );
    let (r, used) =
        measure(|| from_canonical_bytes_limited::<Signed<TaskSpec>>(&big, 64 << 10).map(|_| ()));
    assert!(matches!(r, Err(CanonicalError::TooLarge { .. })));
    assert!(
        used.peak < 4 << 10,
        "refusing an oversized message used {used:?}"
    );
}

/// `n` bytes of JSON: `open`, then `item` repeated (joined by `,`) as often as fits, then
/// `close`.
fn filled(open: &str, item: &str, close: &str, n: usize) -> Vec<u8> {
    let mut v = open.as_bytes().to_vec();
    let mut first = true;
    while v.len() + item.len() + 1 + close.len() <= n {
        if !first {
            v.push(b',');
        }
        v.extend_from_slice(item.as_bytes());
        first = false;
    }
    v.extend_from_slice(close.as_bytes());
    v
}

fn report(name: &str, input: usize, used: heap::Usage) {
    println!(
        "{name}: {input} input bytes, largest allocation {}, peak live {} ({:.1}x input)",
        used.largest,
        used.peak,
        used.peak as f64 / input as f64
    );
}

/// Messages that *claim* a size (a 4 MiB array, nesting, numbers past any integer type) cost
/// the receiver nothing of that size: decoding them as the types the wire carries allocates a
/// few bytes and refuses them, because strict decoding builds no JSON tree.
#[test]
fn claimed_sizes_allocate_nothing() {
    let _serial = serial();
    let limit = MAX_MESSAGE_BYTES;
    let cases = [
        ("array of zeros", filled("[", "0", "]", limit)),
        ("array of empty arrays", filled("[", "[]", "]", limit)),
        (
            "object of one-letter members",
            filled("{", r#""a":0"#, "}", limit),
        ),
        ("deep nesting", hostile::nested_arrays(limit / 2)),
        ("numbers past u64", filled("[", "1e999999", "]", limit)),
        (
            "task with a huge version",
            br#"{"body":{"version":99999999999999999999999999999999}}"#.to_vec(),
        ),
    ];
    for (name, bytes) in &cases {
        assert!(bytes.len() <= limit, "{name}");
        let (r, used) = measure(|| from_canonical_bytes::<Signed<TaskSpec>>(bytes).map(|_| ()));
        assert!(r.is_err(), "{name}");
        report(&format!("{name} as Signed<TaskSpec>"), bytes.len(), used);
        assert!(used.peak < 4 << 10, "{name}: {used:?}");
        let (r, used) =
            measure(|| from_canonical_bytes::<Vec<market_protocol::StateHash>>(bytes).map(|_| ()));
        assert!(r.is_err() || name == &"array of empty arrays", "{name}");
        report(&format!("{name} as Vec<StateHash>"), bytes.len(), used);
        assert!(used.peak < 4 << 10, "{name}: {used:?}");
    }
}

/// What a message within the limit can cost when its bytes are real content: a string is
/// copied once (and an error quoting it can grow to twice its size), a typed value holds what
/// it holds. These are bounded by the message limit times the factors below, and printed so a
/// change in them shows. An untyped `Value` is the one decode that builds a tree (16x an array
/// of zeros); no wire path asks for one.
#[test]
fn content_within_the_limit_costs_a_bounded_multiple() {
    let _serial = serial();
    let limit = MAX_MESSAGE_BYTES;
    let mut long_string = vec![b'a'; limit];
    long_string[0] = b'"';
    long_string[limit - 1] = b'"';
    // The largest valid signed task: a buyer's 4 MiB of empty prompts. Its typed value is a
    // vector of 24-byte `String`s, one per 3 input bytes (compute refuses more than 100,000
    // prompts only after decoding).
    let prompts = {
        let buyer = market_protocol::Identity::from_test_label("buyer");
        let mut task = market_protocol::fixtures::inference_task(&buyer, 1);
        let set_prompts = |task: &mut TaskSpec, n: usize| {
            if let market_protocol::Workload::Inference(inf) = &mut task.workload {
                if let market_protocol::InferenceInputs::Prompts { prompts, .. } = &mut inf.inputs {
                    *prompts = vec![String::new(); n];
                }
            }
        };
        set_prompts(&mut task, 0);
        let base = market_protocol::to_canonical_bytes(&task).unwrap().len();
        set_prompts(&mut task, (limit - base - 1024) / 3);
        let signed = Signed::sign(task, &buyer).unwrap();
        market_protocol::to_canonical_bytes(&signed).unwrap()
    };
    assert!(prompts.len() <= limit);
    // (name, bytes, decode, largest allocation allowed, peak live allowed in multiples of the
    // input). Error text quoting the input grows to twice it, plus the error's own words.
    type Decode = fn(&[u8]) -> bool;
    let slack = 4 << 10;
    let zeros = filled("[", "0", "]", limit);
    let cases: [(&str, &[u8], Decode, usize, usize); 4] = [
        (
            "long string as Signed<TaskSpec>",
            &long_string,
            |b| from_canonical_bytes::<Signed<TaskSpec>>(b).is_ok(),
            2 * limit + slack,
            5,
        ),
        (
            "long string as Value",
            &long_string,
            |b| from_canonical_bytes::<Value>(b).is_ok(),
            limit + slack,
            5,
        ),
        (
            "4 MiB of empty prompts as Signed<TaskSpec>",
            &prompts,
            |b| from_canonical_bytes::<Signed<TaskSpec>>(b).is_ok(),
            16 * limit,
            40,
        ),
        (
            "array of zeros as Value",
            &zeros,
            |b| from_canonical_bytes::<Value>(b).is_ok(),
            16 * limit,
            40,
        ),
    ];
    for (name, bytes, decode, largest, peak) in cases {
        let (_, used) = measure(|| decode(bytes));
        report(name, bytes.len(), used);
        assert!(used.largest <= largest, "{name}: {used:?}");
        assert!(used.peak <= peak * bytes.len(), "{name}: {used:?}");
    }
}
