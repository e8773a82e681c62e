//! The audit the node promises a buyer at post time: how many verifiers audit the result, how
//! many segments each samples (independently of the others), and the probability that together
//! they catch a worker faking the buyer's assumed fraction.

use market_compute::BlobSource;
use market_protocol::detection::{audited_runs, plan_for_runs};
use market_protocol::{Decimal, TaskSpec, Workload};
use serde::Serialize;

/// What the buyer is shown.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditPlan {
    /// Segments (training) or items (inference) that can be challenged.
    pub segments: u64,
    /// Segments a cheater faking the assumed fraction would have faked.
    pub assumed_faked: u64,
    /// Verifiers planned to audit the result, each drawing its own sample.
    #[serde(default = "one")]
    pub verifiers: u64,
    /// Segments each verifier re-executes.
    pub samples: u64,
    /// Probability that the verifiers together catch such a cheater.
    pub detection_probability: f64,
}

fn one() -> u64 {
    1
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditPlanError {
    /// A training task must have a positive checkpoint interval.
    #[error("checkpoint_interval must be at least 1")]
    ZeroInterval,
    /// The buyer assumed a cheater who fakes nothing; no audit size can promise detection.
    #[error("assumed_faked_fraction must be positive")]
    NothingFaked,
    /// The buyer asked for less detection than the node audits for.
    #[error("detection_target {asked} is below this node's minimum {minimum}")]
    TargetTooLow {
        /// What the task asks.
        asked: String,
        /// The node's `min_detection_target`.
        minimum: String,
    },
    /// A probability above 1 cannot be reached (it would sample every segment, every time).
    #[error("detection_target {0} is above 1")]
    TargetAboveOne(String),
    /// An inference task with nothing to infer.
    #[error("the task has no items to run")]
    Empty,
    /// The task's inputs cannot be read (a rows blob that is missing or malformed).
    #[error("{0}")]
    Inputs(String),
}

/// The number of segments a task's run is cut into: checkpoints for training, one per prompt or
/// row for inference (a rows blob is read to count them, so the plan is made per item).
pub fn segment_count(task: &TaskSpec, blobs: &dyn BlobSource) -> Result<u64, AuditPlanError> {
    if matches!(&task.workload, Workload::Training(t) if t.checkpoint_interval == 0) {
        return Err(AuditPlanError::ZeroInterval);
    }
    // The verifiers' own count, so node and verifiers size samples from the same number.
    match market_verifier::audit::task_segments(task, blobs) {
        Ok(0) => Err(AuditPlanError::Empty),
        Ok(n) => Ok(n),
        Err(e) => Err(AuditPlanError::Inputs(e.to_string())),
    }
}

/// The smallest audit by `verifiers` verifiers that meets the buyer's detection target, which
/// must be at least `min_target`.
pub fn plan(
    task: &TaskSpec,
    blobs: &dyn BlobSource,
    verifiers: u64,
    min_target: &Decimal,
) -> Result<AuditPlan, AuditPlanError> {
    check_target(task, min_target)?;
    let segments = segment_count(task, blobs)?;
    plan_for(task, segments, verifiers)
}

/// The detection target is at most 1 and at least `min_target`: checked from the spec alone,
/// before anything is built.
pub fn check_target(task: &TaskSpec, min_target: &Decimal) -> Result<(), AuditPlanError> {
    if task.audit.detection_target.to_f64() > 1.0 {
        return Err(AuditPlanError::TargetAboveOne(
            task.audit.detection_target.as_str().to_owned(),
        ));
    }
    if task.audit.detection_target.to_f64() < min_target.to_f64() {
        return Err(AuditPlanError::TargetTooLow {
            asked: task.audit.detection_target.as_str().to_owned(),
            minimum: min_target.as_str().to_owned(),
        });
    }
    Ok(())
}

/// The plan for `verifiers` verifiers on a run of `segments` segments (the attempt's own plan
/// when its worker gets fewer verifiers than the task was planned with).
pub fn plan_for(
    task: &TaskSpec,
    segments: u64,
    verifiers: u64,
) -> Result<AuditPlan, AuditPlanError> {
    let verifiers = verifiers.max(1);
    // A pooled task's slot-rounds are audited apart but sized together: `assumed_faked` is
    // over the whole pool, `detection_probability` the pooled bound (`ENCODING.md` section 9).
    let (assumed_faked, samples, detection_probability) =
        plan_for_runs(&task.audit, segments, audited_runs(task), verifiers)
            .ok_or(AuditPlanError::NothingFaked)?;
    Ok(AuditPlan {
        segments,
        assumed_faked,
        verifiers,
        samples,
        detection_probability,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::detection::{
        detection_probability, samples_for_target, union_detection_probability,
    };
    use market_protocol::fixtures::{inference_task, training_task};
    use market_protocol::Identity;

    use market_compute::NoBlobs;

    fn min() -> Decimal {
        "0.5".parse().expect("decimal")
    }

    #[test]
    fn plan_meets_target_with_fewest_samples() {
        let task = training_task(&Identity::from_test_label("buyer"), 1);
        let p = plan(&task, &NoBlobs, 1, &min()).unwrap();
        assert_eq!(p.segments, 20);
        assert_eq!(p.assumed_faked, 2);
        assert!(p.detection_probability >= 0.99);
        assert!(detection_probability(20, 2, p.samples - 1) < 0.99);
        // Two verifiers with their own samples: each checks fewer, together they still meet it.
        let two = plan(&task, &NoBlobs, 2, &min()).unwrap();
        assert_eq!(two.verifiers, 2);
        assert!(two.samples < p.samples, "{two:?} {p:?}");
        assert!(two.detection_probability >= 0.99);
        assert!(union_detection_probability(20, 2, two.samples - 1, 2) < 0.99);
        assert_eq!(Some(p.samples), samples_for_target(20, 2, 0.99));
    }

    /// Attack 6 (stealing verifier stake with ringers): a detection target of "0" planned an
    /// audit of no segment, on which a planted ringer cannot be caught. Now the node refuses
    /// targets below its minimum, and every plan samples at least one segment.
    #[test]
    fn attack_zero_detection_target_is_refused_and_every_plan_samples() {
        let mut task = training_task(&Identity::from_test_label("buyer"), 1);
        task.audit.detection_target = "0".parse().expect("decimal");
        assert!(matches!(
            plan(&task, &NoBlobs, 2, &min()),
            Err(AuditPlanError::TargetTooLow { .. })
        ));
        let p = plan(&task, &NoBlobs, 2, &"0".parse().expect("decimal")).unwrap();
        assert_eq!(p.samples, 1);
        // Nor can a buyer ask for more than certainty (every verifier would re-run everything).
        task.audit.detection_target = "1.5".parse().expect("decimal");
        assert!(matches!(
            plan(&task, &NoBlobs, 2, &min()),
            Err(AuditPlanError::TargetAboveOne(_))
        ));
    }

    /// Attack 5: a 1000-row `mlp` inference task was planned as one segment (its rows are in a
    /// blob), so each verifier checked one row while the buyer was shown detection 1.0. The
    /// rows blob is read at post time and the plan is made per row.
    #[test]
    fn attack_rows_are_planned_per_item() {
        struct Rows(Vec<u8>);
        impl BlobSource for Rows {
            fn blob(&self, _id: &market_protocol::BlobId) -> Option<Vec<u8>> {
                Some(self.0.clone())
            }
        }
        let x: Vec<u8> = (0..1000 * 4)
            .flat_map(|i| (i as f32 / 4000.0).to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1000, 4], &x)
            .unwrap();
        let blob = safetensors::serialize([("x", view)], None).unwrap();
        let mut task = inference_task(&Identity::from_test_label("buyer"), 1);
        task.profile = market_protocol::ExecutionProfile::Repro;
        task.audit.assumed_faked_fraction = "0.1".parse().unwrap();
        task.audit.detection_target = "0.9".parse().unwrap();
        if let Workload::Inference(i) = &mut task.workload {
            i.model = market_protocol::ModelSpec::Mlp {
                widths: vec![4, 8, 2],
                activation: market_protocol::Activation::Relu,
            };
            i.weights = None;
            i.inputs = market_protocol::InferenceInputs::Rows {
                id: market_protocol::BlobId::of(&blob),
            };
        }
        let p = plan(&task, &Rows(blob), 2, &min()).unwrap();
        assert_eq!(p.segments, 1000);
        assert_eq!(p.assumed_faked, 100);
        assert!(p.samples > 1 && p.detection_probability >= 0.9, "{p:?}");
        assert!(p.detection_probability < 1.0, "{p:?}");
    }

    #[test]
    fn prompts_are_planned_per_item() {
        let mut task = inference_task(&Identity::from_test_label("buyer"), 1);
        task.profile = market_protocol::ExecutionProfile::Repro;
        if let Workload::Inference(i) = &mut task.workload {
            i.weights = None;
        }
        let p = plan(&task, &NoBlobs, 2, &min()).unwrap();
        let Workload::Inference(i) = &task.workload else {
            panic!("not inference")
        };
        let market_protocol::InferenceInputs::Prompts { prompts, .. } = &i.inputs else {
            panic!("not prompts")
        };
        assert_eq!(p.segments, prompts.len() as u64);
    }
}
