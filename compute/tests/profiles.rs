//! `repro` and `native` compute the same maths: from the same start state, a segment's end
//! states agree within the documented tolerance, while a cheat (a skipped step) does not.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_compute::tolerance::{states_match, worst_relative_l2, MAX_RELATIVE_L2};
use market_compute::{Backend, NoBlobs, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::*;

fn compare(task: &TaskSpec, segments: u32) {
    let native = TrainingJob::from_spec(task, &NoBlobs)
        .unwrap()
        .with_backend(Backend::for_profile(ExecutionProfile::Native).unwrap());
    let repro = native.clone().with_backend(Backend::Repro);
    let mut start = repro.initial_state();
    for seg in 0..segments {
        let (a, loss_a) = repro.run_segment(seg, &start, |_, _| {}).unwrap();
        let (b, loss_b) = native.run_segment(seg, &start, |_, _| {}).unwrap();
        let (d, tensor) = worst_relative_l2(&repro.layout, &b, &a);
        assert!(
            states_match(&repro.layout, &b, &a),
            "segment {seg}: {tensor} differs by {d} > {MAX_RELATIVE_L2}"
        );
        assert!(
            (loss_a - loss_b).abs() <= 1e-3 * loss_a.abs().max(1.0),
            "{loss_a} vs {loss_b}"
        );
        let mut skipped = start.clone();
        for _ in 0..repro.checkpoint_interval - 1 {
            repro.step(&mut skipped).unwrap();
        }
        skipped.step = a.step;
        assert!(
            !states_match(&repro.layout, &skipped, &a),
            "a skipped step went unnoticed in segment {seg}"
        );
        start = a;
    }
}

#[test]
fn gpt_repro_and_native_agree_within_tolerance() {
    compare(&training_task(&Identity::from_test_label("buyer"), 1), 4);
}

#[test]
fn mlp_repro_and_native_agree_within_tolerance() {
    let mut task = training_task(&Identity::from_test_label("buyer"), 1);
    task.workload = Workload::Training(TrainingSpec {
        model: ModelSpec::Mlp {
            widths: vec![8, 32, 32, 2],
            activation: Activation::Gelu,
        },
        dataset: DatasetSource::TeacherMlp {
            features: 8,
            outputs: 2,
            examples: 1000,
        },
        optimizer: OptimizerSpec::Adamw {
            lr: "0.01".parse().unwrap(),
            beta1: "0.9".parse().unwrap(),
            beta2: "0.999".parse().unwrap(),
            eps: "0.00000001".parse().unwrap(),
            weight_decay: "0.01".parse().unwrap(),
        },
        batch_size: 32,
        steps: 40,
        checkpoint_interval: 10,
        initial_weights: None,
        pool: None,
        eval_dataset: None,
    });
    compare(&task, 4);
}

#[test]
fn native_and_cuda_segments_are_at_most_the_tolerant_interval() {
    use market_compute::tolerance::MAX_TOLERANT_INTERVAL;
    use market_compute::ComputeError;
    let with = |profile: ExecutionProfile, interval: u32| {
        let mut task = training_task(&Identity::from_test_label("buyer"), 1);
        task.profile = profile;
        if let Workload::Training(t) = &mut task.workload {
            t.checkpoint_interval = interval;
        }
        TrainingJob::from_spec(&task, &NoBlobs)
    };
    assert!(with(ExecutionProfile::Native, MAX_TOLERANT_INTERVAL).is_ok());
    assert!(with(ExecutionProfile::Repro, MAX_TOLERANT_INTERVAL + 1).is_ok());
    for profile in [ExecutionProfile::Native, ExecutionProfile::Cuda] {
        match with(profile, MAX_TOLERANT_INTERVAL + 1) {
            Err(ComputeError::InvalidConfig { field, reason }) => {
                assert_eq!(field, "checkpoint_interval");
                assert!(reason.contains("repro"), "{reason}");
            }
            other => panic!("{profile:?}: {other:?}"),
        }
    }
}
