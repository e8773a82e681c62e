//! The audit the node promises a buyer at post time: how many segments will be sampled and the
//! probability that a worker faking the buyer's assumed fraction is caught.

use market_protocol::detection::{detection_probability, faked_segments, samples_for_target};
use market_protocol::{TaskSpec, Workload};
use serde::Serialize;

/// What the buyer is shown.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditPlan {
    /// Segments (training) or items (inference) that can be challenged.
    pub segments: u64,
    /// Segments a cheater faking the assumed fraction would have faked.
    pub assumed_faked: u64,
    /// Segments each audit re-executes.
    pub samples: u64,
    /// Probability that one audit catches such a cheater.
    pub detection_probability: f64,
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
}

/// The number of segments a task's run is cut into.
pub fn segment_count(task: &TaskSpec) -> Result<u64, AuditPlanError> {
    match &task.workload {
        Workload::Training(t) => {
            if t.checkpoint_interval == 0 {
                return Err(AuditPlanError::ZeroInterval);
            }
            Ok(u64::from(t.steps).div_ceil(u64::from(t.checkpoint_interval)))
        }
        Workload::Inference(i) => Ok(match &i.inputs {
            market_protocol::InferenceInputs::Prompts { prompts, .. } => prompts.len() as u64,
            // Row counts are known once the blob is read; plan per row then.
            market_protocol::InferenceInputs::Rows { .. } => 1,
        }),
    }
}

/// The smallest audit that meets the buyer's detection target.
pub fn plan(task: &TaskSpec) -> Result<AuditPlan, AuditPlanError> {
    let segments = segment_count(task)?;
    let assumed_faked = faked_segments(segments, &task.audit.assumed_faked_fraction);
    let target = task.audit.detection_target.to_f64();
    let samples =
        samples_for_target(segments, assumed_faked, target).ok_or(AuditPlanError::NothingFaked)?;
    Ok(AuditPlan {
        segments,
        assumed_faked,
        samples,
        detection_probability: detection_probability(segments, assumed_faked, samples),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::fixtures::training_task;
    use market_protocol::Identity;

    #[test]
    fn plan_meets_target_with_fewest_samples() {
        let task = training_task(&Identity::from_test_label("buyer"), 1);
        let p = plan(&task).unwrap();
        assert_eq!(p.segments, 20);
        assert_eq!(p.assumed_faked, 2);
        assert!(p.detection_probability >= 0.99);
        assert!(detection_probability(20, 2, p.samples - 1) < 0.99);
    }
}
