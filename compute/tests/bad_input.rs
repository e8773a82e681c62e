//! Bad tasks and blobs get typed errors naming the field, never a panic or an oversized
//! allocation.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_compute::{ComputeError, InferenceJob, NoBlobs, TrainState, TrainingJob};
use market_protocol::fixtures::{inference_task, training_task};
use market_protocol::*;
use proptest::prelude::*;

fn field(e: ComputeError) -> String {
    match e {
        ComputeError::InvalidConfig { field, .. } => field.to_string(),
        ComputeError::InvalidBlob { what, .. } => what.to_string(),
        other => format!("{other:?}"),
    }
}

fn with_training(f: impl FnOnce(&mut TrainingSpec)) -> TaskSpec {
    let mut task = training_task(&Identity::from_test_label("buyer"), 1);
    if let Workload::Training(t) = &mut task.workload {
        f(t);
    }
    task
}

fn gpt(layers: u32, heads: u32, width: u32, vocab: u32, context: u32) -> ModelSpec {
    ModelSpec::Gpt {
        layers,
        heads,
        width,
        vocab,
        context,
    }
}

struct OneBlob(Vec<u8>);
impl market_compute::BlobSource for OneBlob {
    fn blob(&self, _: &BlobId) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

#[test]
fn invalid_configs_are_typed_errors_naming_the_field() {
    let err = |t: TaskSpec| field(TrainingJob::from_spec(&t, &NoBlobs).unwrap_err());
    assert_eq!(
        err(with_training(|t| t.model = gpt(0, 2, 32, 16, 16))),
        "model.layers"
    );
    assert_eq!(
        err(with_training(|t| t.model = gpt(2, 3, 32, 16, 16))),
        "model.heads"
    );
    assert_eq!(
        err(with_training(|t| t.model = gpt(2, 2, 1 << 20, 16, 16))),
        "model.width"
    );
    assert_eq!(
        err(with_training(|t| t.model = gpt(2, 2, 32, 8, 16))),
        "model.vocab"
    );
    assert_eq!(
        err(with_training(|t| t.model = gpt(2, 2, 32, 16, 4))),
        "model.context"
    );
    assert_eq!(
        err(with_training(|t| t.model = gpt(48, 64, 4096, 65536, 2048))),
        "model"
    );
    assert_eq!(err(with_training(|t| t.steps = 0)), "steps");
    assert_eq!(
        err(with_training(|t| t.checkpoint_interval = 0)),
        "checkpoint_interval"
    );
    assert_eq!(
        err(with_training(|t| t.checkpoint_interval = 1000)),
        "checkpoint_interval"
    );
    assert_eq!(err(with_training(|t| t.batch_size = 0)), "batch_size");
    assert_eq!(
        err(with_training(|t| t.dataset = DatasetSource::Arithmetic {
            max_operand: 49,
            examples: 3
        })),
        "batch_size"
    );
    assert_eq!(
        err(with_training(|t| t.dataset = DatasetSource::TeacherMlp {
            features: 4,
            outputs: 1,
            examples: 100
        })),
        "dataset.source"
    );
    assert_eq!(
        err(with_training(|t| t.model = ModelSpec::Mlp {
            widths: vec![4, 8, 1],
            activation: Activation::Relu
        })),
        "dataset.source"
    );
    assert_eq!(
        err(with_training(|t| {
            t.model = ModelSpec::Mlp {
                widths: vec![4, 8, 1],
                activation: Activation::Relu,
            };
            t.dataset = DatasetSource::TeacherMlp {
                features: 5,
                outputs: 1,
                examples: 100,
            };
        })),
        "dataset.features"
    );
    assert_eq!(
        err(with_training(|t| t.optimizer = OptimizerSpec::Sgd {
            lr: "0.1".parse().unwrap(),
            momentum: "1".parse().unwrap(),
            weight_decay: "0".parse().unwrap()
        })),
        "optimizer.momentum"
    );
    // Unknown model: refused when the task is decoded.
    let text =
        serde_json::to_string(&training_task(&Identity::from_test_label("buyer"), 1)).unwrap();
    let text = text.replace("\"model\":\"gpt\"", "\"model\":\"resnet\"");
    assert!(serde_json::from_str::<TaskSpec>(&text).is_err());
}

#[test]
fn wrong_dataset_blobs_are_typed_errors() {
    let tokens = |dtype: safetensors::Dtype, shape: Vec<usize>, bytes: Vec<u8>| {
        let view = safetensors::tensor::TensorView::new(dtype, shape, &bytes).unwrap();
        safetensors::serialize([("tokens", view)], None).unwrap()
    };
    let blob_task = with_training(|t| {
        t.dataset = DatasetSource::Blob {
            id: BlobId::of(b"x"),
        }
    });
    let err = |bytes: Vec<u8>| TrainingJob::from_spec(&blob_task, &OneBlob(bytes)).unwrap_err();
    // Wrong dtype, wrong shape, token out of vocabulary, too few tokens, garbage.
    assert!(matches!(
        err(tokens(safetensors::Dtype::F32, vec![100], vec![0; 400])),
        ComputeError::InvalidBlob { .. }
    ));
    assert!(matches!(
        err(tokens(safetensors::Dtype::U32, vec![10, 10], vec![0; 400])),
        ComputeError::InvalidBlob { .. }
    ));
    let mut out_of_vocab = vec![0u8; 400];
    out_of_vocab[0] = 200;
    assert!(matches!(
        err(tokens(safetensors::Dtype::U32, vec![100], out_of_vocab)),
        ComputeError::InvalidBlob { .. }
    ));
    assert_eq!(
        field(err(tokens(safetensors::Dtype::U32, vec![5], vec![0; 20]))),
        "dataset"
    );
    assert!(matches!(
        err(b"garbage".to_vec()),
        ComputeError::InvalidBlob { .. }
    ));
    assert!(matches!(
        TrainingJob::from_spec(&blob_task, &NoBlobs).unwrap_err(),
        ComputeError::MissingBlob(_)
    ));
}

#[test]
fn divergence_fails_with_a_clear_error_instead_of_a_hash() {
    let task = with_training(|t| {
        t.model = ModelSpec::Mlp {
            widths: vec![4, 16, 1],
            activation: Activation::Relu,
        };
        t.dataset = DatasetSource::TeacherMlp {
            features: 4,
            outputs: 1,
            examples: 64,
        };
        t.optimizer = OptimizerSpec::Sgd {
            lr: "10".parse().unwrap(),
            momentum: "0.99".parse().unwrap(),
            weight_decay: "0".parse().unwrap(),
        };
    });
    let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
    let mut state = job.initial_state();
    let mut failed = None;
    for seg in 0..job.segments() {
        match job.run_segment(seg, &state, |_, _| {}) {
            Ok((s, _)) => state = s,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("lr 10 with momentum 0.99 diverges");
    assert!(matches!(e, ComputeError::NonFinite { .. }), "{e}");
    let mut poisoned = job.initial_state();
    poisoned.params[3] = f32::NAN;
    assert!(matches!(
        poisoned.hash(&job.layout),
        Err(ComputeError::NonFinite { .. })
    ));
    assert!(TrainState::from_bytes(b"not a state", &job.layout).is_err());
}

/// Every step's loss is finite, but ten of them sum past binary32's range: the segment diverged
/// (a mean of infinity committed would fail every `native` audit, honest as the run was).
#[test]
fn a_segment_whose_finite_losses_sum_past_binary32_diverges() {
    let rows = 16;
    let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (x, y) = (f32s(vec![0.0; rows * 4]), f32s(vec![7e18; rows]));
    let blob = safetensors::serialize(
        [
            (
                "x",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, 4], &x)
                    .unwrap(),
            ),
            (
                "y",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, 1], &y)
                    .unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    let task = with_training(|t| {
        t.model = ModelSpec::Mlp {
            widths: vec![4, 8, 1],
            activation: Activation::Relu,
        };
        t.dataset = DatasetSource::Blob {
            id: BlobId::of(&blob),
        };
        t.batch_size = 4;
        t.checkpoint_interval = 10;
        // Small steps: the loss stays near 7e18² ≈ 4.9e37, under binary32's 3.4e38 also summed
        // over the batch of four, and seven steps of it are past it.
        t.optimizer = OptimizerSpec::Sgd {
            lr: "0.000001".parse().unwrap(),
            momentum: "0".parse().unwrap(),
            weight_decay: "0".parse().unwrap(),
        };
    });
    let job = TrainingJob::from_spec(&task, &OneBlob(blob)).unwrap();
    let mut losses = Vec::new();
    let e = job
        .run_segment(0, &job.initial_state(), |_, loss| losses.push(loss))
        .unwrap_err();
    assert_eq!(losses.len(), 10, "every step ran");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 1e37),
        "{losses:?}"
    );
    // The text a worker reports and the node reads as a divergence (PROTOCOL "Divergence").
    assert_eq!(
        e.to_string(),
        "non-finite value in `loss` after step 10: the run diverged"
    );
    assert!(matches!(e, ComputeError::NonFinite { .. }), "{e:?}");
}

#[test]
fn inference_inputs_are_checked() {
    let buyer = Identity::from_test_label("buyer");
    let mut task = inference_task(&buyer, 1);
    task.profile = ExecutionProfile::Repro;
    if let Workload::Inference(i) = &mut task.workload {
        i.weights = None;
        i.inputs = InferenceInputs::Prompts {
            prompts: vec!["hello".into()],
            max_new_tokens: 4,
        };
    }
    assert_eq!(
        field(InferenceJob::from_spec(&task, &NoBlobs).unwrap_err()),
        "inputs.prompts"
    );
    if let Workload::Inference(i) = &mut task.workload {
        i.inputs = InferenceInputs::Prompts {
            prompts: vec!["1+1=".into()],
            max_new_tokens: 0,
        };
    }
    assert_eq!(
        field(InferenceJob::from_spec(&task, &NoBlobs).unwrap_err()),
        "inputs.max_new_tokens"
    );
}

fn any_model() -> impl Strategy<Value = ModelSpec> {
    prop_oneof![
        (0u32..100, 0u32..100, 0u32..5000, 0u32..100_000, 0u32..5000)
            .prop_map(|(l, h, w, v, c)| gpt(l, h, w, v, c)),
        (prop::collection::vec(0u32..20_000, 0..12), 0usize..3).prop_map(|(widths, a)| {
            ModelSpec::Mlp {
                widths,
                activation: [Activation::Relu, Activation::Tanh, Activation::Gelu][a],
            }
        }),
    ]
}

fn any_dataset() -> impl Strategy<Value = DatasetSource> {
    prop_oneof![
        (0u32..20_000, 0u32..2_000_000).prop_map(|(m, e)| DatasetSource::Arithmetic {
            max_operand: m,
            examples: e
        }),
        (0u32..10_000, 0u32..10_000, 0u32..2_000_000).prop_map(|(f, o, e)| {
            DatasetSource::TeacherMlp {
                features: f,
                outputs: o,
                examples: e,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random training specs never panic; a spec that is accepted is within the limits, so
    /// building its initial state cannot allocate more than they allow.
    #[test]
    fn random_training_specs_never_panic(model in any_model(), dataset in any_dataset(),
            batch in 0u32..10_000, steps in 0u32..20_000_000, interval in 0u32..100) {
        let task = with_training(|t| {
            t.model = model;
            t.dataset = dataset;
            t.batch_size = batch;
            t.steps = steps;
            t.checkpoint_interval = interval;
        });
        if let Ok(job) = TrainingJob::from_spec(&task, &NoBlobs) {
            prop_assert!(job.layout.total() as u64 <= market_compute::zoo::limits::MAX_PARAMETERS);
            prop_assert!(job.checkpoint_interval >= 1 && job.checkpoint_interval <= job.steps);
        }
    }
}
