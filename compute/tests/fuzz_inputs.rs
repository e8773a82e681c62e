//! Fuzzing the compute crate's inputs in CI: safetensors blobs (datasets, weights, training
//! states), task specs as workers validate them, and result-bundle JSON files, under arbitrary
//! bytes and hostile mutations of valid encodings (safetensors header lengths claiming up to
//! 2^64, shapes claiming huge tensors, truncations, flipped bytes, JSON tokens). The cargo-fuzz
//! targets `safetensors`, `task_spec` and `bundle` run the same harness unbounded.
//!
//! The binary counts heap allocations, so it also checks the stated limits: a blob that claims
//! a huge header or tensor, or is far smaller than the model its task claims, costs a few bytes.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod fuzz_harness;
// One copy for every crate: each test binary installs its own allocator from it.
#[path = "../../protocol/tests/heap/mod.rs"]
mod heap;

use std::sync::LazyLock;

use market_compute::init::weights_from_bytes;
use market_compute::zoo::ModelConfig;
use market_compute::{TrainState, TrainingJob};
use market_protocol::fixtures::hostile::{mutate, HUGE_U64};
use market_protocol::*;
use proptest::prelude::*;

use fuzz_harness::{
    blob_seeds, bundle_seeds, check_blobs, check_bundle, check_task, task_blobs, task_seeds, Blobs,
    OneBlob,
};
use heap::{config, measure, serial};

static BLOBS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(blob_seeds);
static TASKS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(task_seeds);
static BUNDLE: LazyLock<Vec<Vec<u8>>> = LazyLock::new(bundle_seeds);

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_blobs_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _serial = serial();
        check_blobs(&bytes);
    }

    #[test]
    fn mutated_blobs_never_panic(
        which in any::<prop::sample::Index>(),
        program in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let _serial = serial();
        check_blobs(&mutate(which.get::<Vec<u8>>(&BLOBS), &program));
    }

    #[test]
    fn mutated_tasks_never_panic(
        which in any::<prop::sample::Index>(),
        program in prop::collection::vec(any::<u8>(), 0..24),
        blob_program in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let _serial = serial();
        let i = which.index(TASKS.len());
        let (weights, data) = task_blobs(i / 2);
        let data = mutate(&BLOBS[data], &blob_program);
        let blobs = Blobs { weights: &BLOBS[weights], data: &data };
        check_task(&mutate(&TASKS[i], &program), &blobs);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn mutated_bundle_files_never_panic(
        which in any::<prop::sample::Index>(),
        program in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        check_bundle(dir.path(), &mutate(which.get::<Vec<u8>>(&BUNDLE), &program));
    }
}

#[test]
fn seeds_are_valid() {
    let _serial = serial();
    for blob in BLOBS.iter() {
        check_blobs(blob);
    }
    // Every task seed validates, leniently and (signed) strictly, with its blobs: mutations
    // start from tasks that reach the end of `from_spec`.
    for (i, task) in TASKS.iter().enumerate() {
        let (weights, data) = task_blobs(i / 2);
        let blobs = Blobs {
            weights: &BLOBS[weights],
            data: &BLOBS[data],
        };
        let valid = check_task(task, &blobs);
        assert_eq!(valid, 1, "task seed {i}");
    }
    let dir = tempfile::tempdir().unwrap();
    check_bundle(dir.path(), &BUNDLE[0]);
}

#[test]
fn safetensors_claims_are_refused_without_allocating() {
    let _serial = serial();
    let small = 4 << 10;
    type Decode = fn(&[u8]) -> bool;
    let decoders: [(&str, Decode); 3] = [
        ("tokens", |b| {
            market_compute::data::parse_token_blob(b, 16).is_ok()
        }),
        ("rows", |b| {
            market_compute::data::parse_regression_blob_x(b, 4).is_ok()
        }),
        ("state", |b| {
            let layout = ModelConfig::from_spec(&ModelSpec::Mlp {
                widths: vec![4, 8, 2],
                activation: Activation::Tanh,
            })
            .unwrap()
            .layout();
            TrainState::from_bytes(b, &layout).is_ok()
        }),
    ];
    // A header length claiming up to 2^64 bytes, in front of a 16-byte blob.
    let mut claims: Vec<(String, Vec<u8>)> = HUGE_U64
        .iter()
        .map(|&n| {
            let mut b = n.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}      ");
            (format!("header length {n}"), b)
        })
        .collect();
    // A header claiming a tensor of 2^62 elements, or one whose byte size overflows.
    for (shape, end) in [
        ("[4611686018427387904]", "18446744073709551615"),
        ("[4294967296,4294967296]", "16"),
        ("[18446744073709551615,2]", "16"),
        ("[0,18446744073709551615]", "0"),
    ] {
        let header =
            format!(r#"{{"tokens":{{"dtype":"U32","shape":{shape},"data_offsets":[0,{end}]}}}}"#);
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[0; 16]);
        claims.push((format!("shape {shape}"), b));
    }
    for (claim, bytes) in &claims {
        for (what, decode) in decoders {
            let (ok, used) = measure(|| decode(bytes));
            assert!(!ok, "{claim} as {what}");
            assert!(used.largest < small, "{claim} as {what}: {used:?}");
        }
    }
}

/// A model near the 50M-parameter limit (46M) whose weights blob is 16 bytes.
fn big_model() -> ModelSpec {
    ModelSpec::Gpt {
        layers: 12,
        heads: 8,
        width: 512,
        vocab: 8192,
        context: 1024,
    }
}

#[test]
fn a_small_blob_costs_its_size_whatever_model_the_task_claims() {
    let _serial = serial();
    let config = ModelConfig::from_spec(&big_model()).unwrap();
    assert!(config.parameter_count() > 40_000_000);
    let layout = config.layout();
    let blob = [0u8; 16];
    // It reserved 4 bytes per claimed parameter (184 MB) before looking at the blob.
    let (r, used) = measure(|| weights_from_bytes(&layout, &blob));
    assert!(r.is_err());
    assert!(used.largest < 4 << 10, "{used:?}");
    // Through the task: a training task naming the big model and the tiny blob as weights.
    let mut task = fixtures::training_task(&Identity::from_test_label("buyer"), 1);
    if let Workload::Training(t) = &mut task.workload {
        t.model = big_model();
        t.batch_size = 1;
        t.dataset = DatasetSource::Arithmetic {
            max_operand: 9,
            examples: 64,
        };
        t.initial_weights = Some(BlobId(Hash::of(b"w")));
    }
    let (r, used) = measure(|| TrainingJob::from_spec(&task, &OneBlob(&blob)).map(|_| ()));
    assert!(r.is_err(), "{r:?}");
    println!("46M-parameter task with a 16-byte weights blob: {used:?}");
    assert!(used.largest < 1 << 20, "{used:?}");
}
