//! A worker's report that the task diverged (a non-finite value, the buyer's spec at fault):
//! read from its failure, checked on its face, then confirmed or refuted by the node's own run
//! of the steps or the item concerned, within bounds. A divergence the node confirms rejects
//! the task with nobody slashed (otherwise a buyer could post a diverging task and collect
//! the workers' slashes); a report the node refutes is slashed as any run that produced
//! nothing. PROTOCOL.md, "Divergence".

use market_protocol::{BlobId, ExecutionProfile, TaskSpec, Workload};

use super::Node;
use crate::model::TaskRecord;

impl Node {
    /// Whether the task's own run diverges by `step` (a worker said so): the node runs it
    /// itself, the whole run or the slot-round, from its start up to that step, at most
    /// `max_divergence_check_steps` steps, no more memory than
    /// `max_divergence_check_memory_bytes`, and as many at once as it validates posts. A
    /// deterministic divergence is the buyer's spec at fault, never the worker (otherwise a
    /// buyer could post a diverging task and collect the slashes); a worker that reports one
    /// falsely is slashed as for any run that produced nothing. As for an item
    /// ([`Self::item_diverges`]), only a `repro` run that does not diverge refutes a report.
    pub(super) async fn task_diverges(
        &self,
        t: &TaskRecord,
        step: u32,
        why: &str,
    ) -> anyhow::Result<Divergence> {
        let Some((first, last)) = run_steps(&t.spec.body.workload, t.slot()) else {
            return self.item_diverges(t, step, why).await;
        };
        if step > last {
            // A step the run never reaches: false on its face.
            return Ok(Divergence::Refuted);
        }
        let steps = step.saturating_sub(first);
        if steps > self.config.max_divergence_check_steps {
            return Ok(Divergence::Unchecked(steps));
        }
        let max_memory = self.config.max_divergence_check_memory_bytes;
        // A pooled slot's start held in part: its moments are with the worker that reports,
        // which ran from them; one that does not give them has no claim the node can check.
        if let Err(e) = self.start_made_whole(t).await {
            tracing::warn!(task = %t.id, error = %e, "the reporter did not give its start's moments");
            return Ok(Divergence::Refuted);
        }
        let _permit = std::sync::Arc::clone(&self.validations)
            .acquire_owned()
            .await?;
        let (spec, reproducible) = on_the_node(&t.spec.body);
        let (blobs, slot) = (self.blobs.clone(), t.slot().copied());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Divergence> {
            let unchecked = Ok(Divergence::Unchecked(steps));
            let fits = fits_in(&spec, &blobs, max_memory);
            let job = match market_compute::TrainingJob::from_spec(&spec, &blobs) {
                Ok(job) if fits => job,
                _ => return unchecked,
            };
            let (run, mut state) = match slot {
                None => {
                    let start = job.initial_state();
                    (job, start)
                }
                Some(s) => {
                    let start = super::rounds::read_state(&blobs, &BlobId(s.start.0), &job);
                    match (start, job.slot_round(s.slot, s.round)) {
                        (Ok(start), Ok(run)) => (run, start),
                        _ => return unchecked,
                    }
                }
            };
            for segment in 0..run.segments() {
                if state.step >= step {
                    break;
                }
                match run.run_segment(segment, &state, |_, _| {}) {
                    Ok((next, _)) => state = next,
                    Err(e @ market_compute::ComputeError::NonFinite { .. }) => {
                        return Ok(Divergence::Confirmed(e.to_string()))
                    }
                    // The node cannot run it: no judgement either way.
                    Err(_) => return unchecked,
                }
            }
            if reproducible {
                Ok(Divergence::Refuted)
            } else {
                unchecked
            }
        })
        .await?
    }

    /// Whether the inference item a worker says overflowed (its error names the item and the
    /// generated token, `non-finite value in `logits of item I` after step N`) does so. Only a
    /// `llama`'s generation can overflow so: a report of another model, of an item the task
    /// does not have, or of a token past `max_new_tokens` is false on its face. Otherwise the
    /// node runs that item alone (at most one item's generation, and no more memory than
    /// `max_divergence_check_memory_bytes`; a `cuda` task on the node's CPU, in `native`). Only
    /// in `repro` does a run that does not overflow refute the report: `native` and `cuda`
    /// values differ between machines, so there it leaves the report unchecked rather than
    /// slash a worker whose machine did overflow. A buyer's weights that overflow must not
    /// earn it the workers' slashes.
    async fn item_diverges(
        &self,
        t: &TaskRecord,
        step: u32,
        why: &str,
    ) -> anyhow::Result<Divergence> {
        let Some((item, max_new_tokens)) = item_claim(&t.spec.body.workload, step, why) else {
            return Ok(Divergence::Refuted);
        };
        if max_new_tokens > self.config.max_divergence_check_steps {
            return Ok(Divergence::Unchecked(step));
        }
        let max_memory = self.config.max_divergence_check_memory_bytes;
        let _permit = std::sync::Arc::clone(&self.validations)
            .acquire_owned()
            .await?;
        let (spec, reproducible) = on_the_node(&t.spec.body);
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Divergence> {
            let fits = fits_in(&spec, &blobs, max_memory);
            // A job the node cannot hold or build cannot be checked here: not held against
            // the worker, as a report too far in.
            let job = match market_compute::InferenceJob::from_spec(&spec, &blobs) {
                Ok(job) if fits => job,
                _ => return Ok(Divergence::Unchecked(step)),
            };
            Ok(match job.run_item(item) {
                Err(e @ market_compute::ComputeError::NonFinite { .. }) => {
                    Divergence::Confirmed(e.to_string())
                }
                Ok(_) if reproducible => Divergence::Refuted,
                Ok(_) | Err(_) => Divergence::Unchecked(step),
            })
        })
        .await?
    }
}

/// The task as the node runs it to check a report (a `cuda` task in `native`, on the node's
/// CPU), and whether a run of it that does not diverge refutes the report: only in `repro`,
/// since `native` and `cuda` values differ between machines and a worker whose machine did
/// overflow must not be slashed for the node's different rounding.
fn on_the_node(spec: &TaskSpec) -> (TaskSpec, bool) {
    let mut spec = spec.clone();
    if spec.profile == ExecutionProfile::Cuda {
        spec.profile = ExecutionProfile::Native;
    }
    let reproducible = spec.profile == ExecutionProfile::Repro;
    (spec, reproducible)
}

/// Whether the node may hold `spec`'s job to check a report: its memory estimate is at most
/// `max_memory` (`max_divergence_check_memory_bytes`).
fn fits_in(spec: &TaskSpec, blobs: &dyn market_compute::BlobSource, max_memory: u64) -> bool {
    market_compute::resources::estimate(spec, blobs).is_ok_and(|n| n.memory_bytes <= max_memory)
}

/// What the node's own run says of a worker's report that the task diverged.
pub(super) enum Divergence {
    /// It diverges: this failure.
    Confirmed(String),
    /// It does not, up to the step reported.
    Refuted,
    /// Not judged, at this many steps in: more than the node runs for a report, a job over
    /// the node's memory for checks or one it cannot build or run, or a `native`/`cuda` run
    /// that does not diverge on the node (its values differ from the worker's machine's).
    Unchecked(u32),
}

/// The step of a worker's report that its run diverged: the failure of `compute`'s
/// `NonFinite` error, "non-finite value in `TENSOR` after step N: the run diverged", at the
/// end of the reason. Any other failure is none.
pub(super) fn divergence_claim(why: &str) -> Option<u32> {
    divergence_report(why).map(|(_, step)| step)
}

/// The tensor and step of a divergence report: a failure ending with `compute`'s error
/// "non-finite value in `TENSOR` after step N: the run diverged".
fn divergence_report(why: &str) -> Option<(&str, u32)> {
    let rest = why.strip_suffix(": the run diverged")?;
    let at = rest.rfind(" after step ")?;
    let step = rest[at + " after step ".len()..].parse().ok()?;
    let head = rest[..at].strip_suffix('`')?;
    let open = head.find("non-finite value in `")?;
    Some((&head[open + "non-finite value in `".len()..], step))
}

/// The first and last step of a training run (global steps: a slot-round's start at
/// `round × inner_steps`); `None` for an inference task.
fn run_steps(workload: &Workload, slot: Option<&crate::model::SlotRef>) -> Option<(u32, u32)> {
    let Workload::Training(tr) = workload else {
        return None;
    };
    Some(match (slot, &tr.pool) {
        (Some(s), Some(p)) => {
            let first = s.round.saturating_mul(p.inner_steps);
            (first, first.saturating_add(p.inner_steps))
        }
        _ => (0, tr.steps),
    })
}

/// The item and the task's `max_new_tokens` of a report that an inference item overflowed at
/// generated token `step`, if the report could be true on its face: a `llama` task (only its
/// generation overflows so), an item it has, a token it generates. `None` for any other.
fn item_claim(workload: &Workload, step: u32, why: &str) -> Option<(usize, u32)> {
    use market_protocol::{InferenceInputs, ModelSpec};
    let Workload::Inference(inf) = workload else {
        return None;
    };
    let (items, max_new_tokens) = match (&inf.model, &inf.inputs) {
        (
            ModelSpec::Llama { .. },
            InferenceInputs::Chat {
                chats,
                max_new_tokens,
                ..
            },
        ) => (chats.len(), *max_new_tokens),
        (
            ModelSpec::Llama { .. },
            InferenceInputs::Prompts {
                prompts,
                max_new_tokens,
            },
        ) => (prompts.len(), *max_new_tokens),
        _ => return None,
    };
    let item = diverging_item(why).filter(|&i| i < items)?;
    (step < max_new_tokens).then_some((item, max_new_tokens))
}

/// The inference item a divergence report names (`... of item I` closing the tensor's name).
fn diverging_item(why: &str) -> Option<usize> {
    let (tensor, _) = divergence_report(why)?;
    let at = tensor.rfind(" of item ")?;
    tensor[at + " of item ".len()..].parse().ok()
}

#[cfg(test)]
mod divergence_tests {
    use super::divergence_claim;

    #[test]
    fn only_a_divergence_report_names_a_step() {
        let e = market_compute::ComputeError::NonFinite {
            tensor: "loss".into(),
            step: 21,
        };
        assert_eq!(divergence_claim(&e.to_string()), Some(21));
        assert_eq!(super::diverging_item(&e.to_string()), None);
        let item = market_compute::ComputeError::NonFinite {
            tensor: "logits of item 12".into(),
            step: 3,
        };
        let report = format!("running the task: {item}");
        assert_eq!(divergence_claim(&report), Some(3));
        assert_eq!(super::diverging_item(&report), Some(12));
        assert_eq!(
            divergence_claim(&format!("exec failed: {e}")),
            Some(21),
            "wrapped in context"
        );
        for other in [
            "could not write /data/diverged/jobs/1: permission denied",
            "the run diverged",
            "non-finite value in `loss` after step x: the run diverged",
            "non-finite value in `loss` after step 3: the run diverged; retry",
        ] {
            assert_eq!(divergence_claim(other), None, "{other}");
        }
    }

    /// A report that cannot be true is refuted without running anything (a worker must not
    /// dodge its slash by naming a token no generation reaches).
    #[test]
    fn an_item_report_must_be_possible_on_its_face() {
        use market_protocol::{InferenceInputs, Workload};
        let mut task = market_protocol::fixtures::inference_task(
            &market_protocol::Identity::from_test_label("b"),
            1,
        );
        let report = |item: usize, step: u32| {
            market_compute::ComputeError::NonFinite {
                tensor: format!("logits of item {item}"),
                step,
            }
            .to_string()
        };
        // The fixture's gpt: its generation never reports so.
        assert_eq!(super::item_claim(&task.workload, 0, &report(0, 0)), None);
        if let Workload::Inference(i) = &mut task.workload {
            i.model = market_compute::llama::fixtures::tiny_spec();
            i.inputs = InferenceInputs::Prompts {
                prompts: vec!["a".into(), "b".into()],
                max_new_tokens: 8,
            };
        }
        let claim = |item, step| super::item_claim(&task.workload, step, &report(item, step));
        assert_eq!(claim(1, 7), Some((1, 8)));
        assert_eq!(claim(0, 0), Some((0, 8)));
        assert_eq!(claim(2, 0), None, "no item 2");
        assert_eq!(claim(0, 8), None, "token 8 is never generated");
        assert_eq!(claim(0, u32::MAX), None);
        assert_eq!(
            super::item_claim(
                &task.workload,
                0,
                "non-finite value in `logits` after step 0: the run diverged"
            ),
            None,
            "no item named"
        );
    }

    /// A training report of a step the run never reaches is refuted without running it (it
    /// was left unchecked as "too far in", so a worker escaped its slash by naming one).
    #[test]
    fn a_training_run_spans_its_own_steps() {
        use market_protocol::{StateHash, Workload};
        let buyer = market_protocol::Identity::from_test_label("b");
        let mut task = market_protocol::fixtures::training_task(&buyer, 1);
        if let Workload::Training(t) = &mut task.workload {
            t.steps = 60;
        }
        assert_eq!(super::run_steps(&task.workload, None), Some((0, 60)));
        if let Workload::Training(t) = &mut task.workload {
            t.pool = Some(market_protocol::PoolSpec {
                workers: 2,
                rounds: 3,
                inner_steps: 20,
                outer_optimizer: market_protocol::OuterOptimizerSpec::Nesterov {
                    lr: "0.7".parse().unwrap(),
                    momentum: "0.9".parse().unwrap(),
                },
            });
        }
        let slot = crate::model::SlotRef {
            parent: market_protocol::TaskId(market_protocol::Hash::of(b"pooled")),
            slot: 1,
            round: 2,
            start: StateHash(market_protocol::Hash::of(b"start")),
            fresh_moments: false,
            budget: 10,
        };
        assert_eq!(
            super::run_steps(&task.workload, Some(&slot)),
            Some((40, 60))
        );
        let inference = market_protocol::fixtures::inference_task(&buyer, 2);
        assert_eq!(super::run_steps(&inference.workload, None), None);
    }
}
