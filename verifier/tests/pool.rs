//! Slot-rounds of a pooled task are committed, audited runs like any other (issue 14): honest
//! ones pass, a cheating slot fails its audit before anything is merged, a slot-round that
//! names a start other than the task's fails, and the merge of the audited slots' committed
//! final states is bit for bit the merge of an all-honest run.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_compute::bundle::Bundle;
use market_compute::pool::{global_hash, initial_global, outer_step, run_locally, slot_start};
use market_compute::{NoBlobs, TrainState, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::*;
use market_verifier::{audit, SamplePolicy};
use market_worker::{exec, exec_slot_round, Behavior, CancelToken};

fn pooled_task() -> TaskSpec {
    let mut task = training_task(&Identity::from_test_label("pool buyer"), 3);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 20;
        t.checkpoint_interval = 5;
        t.pool = Some(market_protocol::fixtures::pool(2, 2, 10));
    }
    task
}

/// Runs slot `slot` of `round` from `start` into a bundle in `dir` as `behavior`.
fn run_slot(
    task: &TaskSpec,
    job: &TrainingJob,
    slot: u32,
    round: u32,
    start: &TrainState,
    behavior: Behavior,
    dir: &std::path::Path,
) -> Bundle {
    let bundle = Bundle::at(dir);
    let slot_round = SlotRound {
        slot,
        round,
        start: start.hash(&job.layout).unwrap(),
    };
    exec_slot_round(
        task,
        slot_round,
        start,
        &Identity::from_test_label(&format!("slot worker {slot}")),
        behavior,
        &bundle,
        &NoBlobs,
        &CancelToken::default(),
        |_| {},
    )
    .unwrap();
    bundle
}

fn audit_all(bundle: &Bundle) -> VerdictOutcome {
    audit(
        bundle,
        Beacon(Hash::of(b"pool beacon")),
        &SamplePolicy::All,
        &Identity::from_test_label("pool verifier"),
        &NoBlobs,
    )
    .unwrap()
    .verdict
    .body
    .outcome
}

/// The final state a slot-round's bundle committed to.
fn committed_final(bundle: &Bundle, job: &TrainingJob) -> TrainState {
    let c = bundle.read_commitment().unwrap().body;
    let bytes = bundle
        .read(&bundle.checkpoint_path(c.segments), u64::MAX)
        .unwrap();
    let state = TrainState::from_bytes(&bytes, &job.layout).unwrap();
    assert_eq!(state.hash(&job.layout).unwrap(), c.final_state_hash);
    state
}

#[test]
fn audited_slot_rounds_merge_to_the_all_honest_run_and_a_cheating_slot_is_caught_first() {
    let task = pooled_task();
    let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
    let pool = job.pool.unwrap();
    let honest = run_locally(&job, |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut global = initial_global(&job);
    let mut previous: Vec<Option<TrainState>> = vec![None, None];
    for round in 0..pool.rounds {
        let mut finals = Vec::new();
        for slot in 0..pool.slots {
            let start = slot_start(&job, &global, previous[slot as usize].as_ref());
            // Slot 1 of round 1 is first run by a cheater, whose result is caught by its
            // audit and never merged; another worker runs the slot again.
            if (slot, round) == (1, 1) {
                for cheat in [Behavior::Skip(0.5), Behavior::Noise(0.5)] {
                    let path = dir.path().join(format!("cheat-{cheat}-{slot}-{round}"));
                    let bundle = run_slot(&task, &job, slot, round, &start, cheat, &path);
                    assert!(
                        matches!(audit_all(&bundle), VerdictOutcome::Fail { .. }),
                        "{cheat} passed its audit"
                    );
                }
            }
            let path = dir.path().join(format!("{slot}-{round}"));
            let bundle = run_slot(&task, &job, slot, round, &start, Behavior::Honest, &path);
            assert_eq!(
                audit_all(&bundle),
                VerdictOutcome::Pass,
                "slot {slot} round {round}"
            );
            let c = bundle.read_commitment().unwrap().body;
            assert_eq!(c.steps, pool.inner_steps);
            assert_eq!(c.slot_round.unwrap().slot, slot);
            finals.push(committed_final(&bundle, &job));
        }
        global = outer_step(&pool, &global, &finals).unwrap();
        assert_eq!(
            global_hash(&global, &job.layout).unwrap(),
            global_hash(&honest.globals[round as usize], &job.layout).unwrap(),
            "round {round}'s merge of audited results is the all-honest one"
        );
        previous = finals.into_iter().map(Some).collect();
    }
}

#[test]
fn a_slot_round_that_does_not_start_from_the_task_fails_its_audit() {
    let task = pooled_task();
    let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Round 0 from made-up parameters (the commitment names them honestly): the verifier
    // knows round 0's start and refuses it.
    let mut start = slot_start(&job, &initial_global(&job), None);
    start.params.iter_mut().for_each(|p| *p *= 0.5);
    let bundle = run_slot(&task, &job, 0, 0, &start, Behavior::Honest, dir.path());
    match audit_all(&bundle) {
        VerdictOutcome::Fail { reason, detail, .. } => {
            assert_eq!(reason, FailureReason::StateMismatch, "{detail}");
            assert!(detail.contains("round 0"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pooled_task_is_not_run_as_one_and_a_slot_round_needs_its_stated_start() {
    let task = pooled_task();
    let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = exec(
        &task,
        &Identity::from_test_label("w"),
        Behavior::Honest,
        &Bundle::at(dir.path().join("whole")),
        &NoBlobs,
        |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("slot-rounds"), "{e}");
    let start = slot_start(&job, &initial_global(&job), None);
    let wrong = SlotRound {
        slot: 0,
        round: 0,
        start: StateHash(Hash::of(b"another state")),
    };
    let e = exec_slot_round(
        &task,
        wrong,
        &start,
        &Identity::from_test_label("w"),
        Behavior::Honest,
        &Bundle::at(dir.path().join("slot")),
        &NoBlobs,
        &CancelToken::default(),
        |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("start"), "{e}");
}

/// Re-signs `bundle`'s commitment after `edit` (the worker is the cheater: it signs what it
/// likes) and returns the audit's outcome.
fn audit_recommitted(
    bundle: &Bundle,
    signer: &Identity,
    edit: impl FnOnce(&mut Commitment),
) -> VerdictOutcome {
    let mut c = bundle.read_commitment().unwrap().body;
    edit(&mut c);
    bundle
        .write_commitment(&Signed::sign(c, signer).unwrap())
        .unwrap();
    audit_all(bundle)
}

#[test]
fn a_slot_round_committed_as_another_or_as_none_fails() {
    let task = pooled_task();
    let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
    let start = slot_start(&job, &initial_global(&job), None);
    let dir = tempfile::tempdir().unwrap();
    let signer = Identity::from_test_label("slot worker 0");
    let fresh = |name: &str| {
        run_slot(
            &task,
            &job,
            0,
            0,
            &start,
            Behavior::Honest,
            &dir.path().join(name),
        )
    };
    // Slot 0's run, claimed as slot 1 (whose batches differ): the re-execution disagrees.
    let claimed = audit_recommitted(&fresh("as-slot-1"), &signer, |c| {
        c.slot_round.as_mut().unwrap().slot = 1;
    });
    assert!(
        matches!(
            claimed,
            VerdictOutcome::Fail {
                reason: FailureReason::StateMismatch,
                ..
            }
        ),
        "{claimed:?}"
    );
    // A slot that does not exist, and no slot-round at all, fail before anything runs.
    for (name, edit) in [
        (
            "slot-9",
            Box::new(|c: &mut Commitment| c.slot_round.as_mut().unwrap().slot = 9)
                as Box<dyn FnOnce(&mut Commitment)>,
        ),
        (
            "round-2",
            Box::new(|c: &mut Commitment| c.slot_round.as_mut().unwrap().round = 2),
        ),
        ("none", Box::new(|c: &mut Commitment| c.slot_round = None)),
    ] {
        let outcome = audit_recommitted(&fresh(name), &signer, edit);
        assert!(
            matches!(
                outcome,
                VerdictOutcome::Fail {
                    reason: FailureReason::InvalidCommitment,
                    ..
                }
            ),
            "{name}: {outcome:?}"
        );
    }
    // An unpooled task's run that names a slot-round.
    let mut plain = training_task(&Identity::from_test_label("pool buyer"), 4);
    if let Workload::Training(t) = &mut plain.workload {
        t.steps = 20;
    }
    let bundle = Bundle::at(dir.path().join("plain"));
    exec(&plain, &signer, Behavior::Honest, &bundle, &NoBlobs, |_| {}).unwrap();
    let outcome = audit_recommitted(&bundle, &signer, |c| {
        c.slot_round = Some(SlotRound {
            slot: 0,
            round: 0,
            start: StateHash(Hash::of(b"x")),
        });
    });
    assert!(
        matches!(
            outcome,
            VerdictOutcome::Fail {
                reason: FailureReason::InvalidCommitment,
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[test]
fn a_pooled_task_outside_the_repro_profile_is_refused() {
    let mut task = pooled_task();
    task.profile = ExecutionProfile::Native;
    let e = TrainingJob::from_spec(&task, &NoBlobs).unwrap_err();
    assert!(e.to_string().contains("repro"), "{e}");
}

/// Blobs in memory.
struct Blobs(std::collections::BTreeMap<BlobId, Vec<u8>>);

impl market_compute::BlobSource for Blobs {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.0.get(id).cloned()
    }
}

#[test]
fn a_networked_worker_runs_a_slot_round_from_its_start_blob() {
    let task = pooled_task();
    let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
    let start = slot_start(&job, &initial_global(&job), None);
    let bytes = start.to_bytes(&job.layout).unwrap();
    let id = BlobId::of(&bytes);
    let slot_round = SlotRound {
        slot: 1,
        round: 0,
        start: start.hash(&job.layout).unwrap(),
    };
    assert_eq!(id.0, slot_round.start.0, "the blob's id is the state hash");
    let blobs = Blobs([(id, bytes)].into());
    let dir = tempfile::tempdir().unwrap();
    let run = |blobs: &Blobs, name: &str| {
        market_worker::exec_slot_round_from(
            &task,
            slot_round,
            &Identity::from_test_label("slot worker 1"),
            Behavior::Honest,
            &Bundle::at(dir.path().join(name)),
            blobs,
            &CancelToken::default(),
            |_| {},
        )
    };
    let report = run(&blobs, "ok").unwrap();
    assert_eq!(report.commitment.body.slot_round, Some(slot_round));
    assert_eq!(
        audit_all(&Bundle::at(dir.path().join("ok"))),
        VerdictOutcome::Pass
    );
    // Other bytes under the start's id (a cache gone bad), or no blob at all: refused.
    let mut other = start.clone();
    other.params[0] += 1.0;
    let wrong = Blobs([(id, other.to_bytes(&job.layout).unwrap())].into());
    assert!(run(&wrong, "wrong").is_err());
    assert!(run(&Blobs(Default::default()), "missing").is_err());
}
