//! Audits of real bundles: honest work always passes (worker and verifier on different thread
//! counts), the audit is sized and priced as promised, and bad input gives a clear error or a
//! failed verdict naming the problem.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;

use market_compute::bundle::Bundle;
use market_compute::NoBlobs;
use market_protocol::canonical::{from_json_limited, MAX_MESSAGE_BYTES};
use market_protocol::detection::{detection_probability, faked_segments};
use market_protocol::*;
use market_verifier::{audit, AuditError, SamplePolicy};
use market_worker::{exec, Behavior};

fn example(name: &str) -> TaskSpec {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/tasks")
        .join(name);
    from_json_limited(&std::fs::read(path).unwrap(), MAX_MESSAGE_BYTES).unwrap()
}

fn beacon(k: usize) -> Beacon {
    Beacon(Hash::of(format!("test beacon {k}").as_bytes()))
}

fn verifier() -> Identity {
    Identity::from_test_label("verifier")
}

fn worker() -> Identity {
    Identity::from_test_label("worker")
}

/// Child mode, not a test of its own (ignored, so it never reports a vacuous pass): runs the
/// worker on the example task into the bundle directory given by the parent (with the
/// parent's choice of RAYON_NUM_THREADS).
#[test]
#[ignore = "run only as the child of exec_in_child"]
fn child_exec_example_task() {
    let dir = std::env::var("MARKET_CHILD_BUNDLE").expect("set by exec_in_child");
    let task = std::env::var("MARKET_CHILD_TASK").expect("set by exec_in_child");
    exec(
        &example(&task),
        &worker(),
        Behavior::Honest,
        &Bundle::at(dir),
        &NoBlobs,
        |_| {},
    )
    .unwrap();
}

fn exec_in_child(task: &str, dir: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_exec_example_task",
            "--ignored",
            "--test-threads=1",
        ])
        .env("MARKET_CHILD_BUNDLE", dir)
        .env("MARKET_CHILD_TASK", task)
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        dir.join("commitment.json").exists(),
        "the child wrote no bundle"
    );
}

#[test]
fn honest_bundles_pass_every_audit_across_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut audits = 0;
    for task in ["mlp-train.json", "gpt-train.json", "gpt-infer.json"] {
        let path = dir.path().join(task);
        exec_in_child(task, &path);
        let bundle = Bundle::at(&path);
        let beacons = if task == "mlp-train.json" { 200 } else { 10 };
        for k in 0..beacons {
            let report = audit(
                &bundle,
                beacon(k),
                &SamplePolicy::Count(2),
                &verifier(),
                &NoBlobs,
            )
            .unwrap();
            assert!(
                report.passed(),
                "{task}, beacon {k}: {:?}",
                report.verdict.body.outcome
            );
            report.verdict.verify().unwrap();
            audits += 1;
        }
    }
    assert!(audits >= 200);
}

#[test]
fn detect_policy_samples_the_fewest_and_costs_under_five_percent_on_1000_segments() {
    let mut task = example("mlp-train.json");
    if let Workload::Training(t) = &mut task.workload {
        t.model = ModelSpec::Mlp {
            widths: vec![4, 8, 1],
            activation: Activation::Relu,
        };
        t.dataset = DatasetSource::TeacherMlp {
            features: 4,
            outputs: 1,
            examples: 256,
        };
        t.steps = 1000;
        t.checkpoint_interval = 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let bundle = honest_run(&task, dir.path());
    let policy = SamplePolicy::Detect {
        target: "0.99".parse().unwrap(),
        assumed_faked: "0.1".parse().unwrap(),
    };
    let report = audit(&bundle, beacon(0), &policy, &verifier(), &NoBlobs).unwrap();
    assert!(report.passed());
    let s = report.challenge.sampled.len() as u64;
    let m = faked_segments(1000, &"0.1".parse().unwrap());
    assert!(detection_probability(1000, m, s) >= 0.99);
    assert!(
        detection_probability(1000, m, s - 1) < 0.99,
        "{s} is not the smallest"
    );
    assert_eq!(
        report.detection_probability,
        Some(detection_probability(1000, m, s))
    );
    let share = report.rerun as f64 / report.total as f64;
    println!(
        "1000 segments: sampled {s}, re-executed {} of {} steps = {:.2}%",
        report.rerun,
        report.total,
        100.0 * share
    );
    assert!(share <= 0.05, "audit cost {share}");
    assert_eq!(
        u64::from(report.verdict.body.compute_share_ppm),
        report.rerun * 1_000_000 / report.total
    );
}

fn honest_bundle(dir: &Path) -> Bundle {
    honest_run(&example("mlp-train.json"), dir)
}

/// `task` run honestly by the test worker into a bundle in `dir`.
fn honest_run(task: &TaskSpec, dir: &Path) -> Bundle {
    let bundle = Bundle::at(dir);
    exec(task, &worker(), Behavior::Honest, &bundle, &NoBlobs, |_| {}).unwrap();
    bundle
}

fn outcome(bundle: &Bundle, policy: SamplePolicy) -> VerdictOutcome {
    audit(bundle, beacon(1), &policy, &verifier(), &NoBlobs)
        .unwrap()
        .verdict
        .body
        .outcome
}

#[test]
fn tampered_or_truncated_checkpoint_fails_naming_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = honest_bundle(dir.path());
    let path = bundle.checkpoint_path(17);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 9;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match outcome(&bundle, SamplePolicy::All) {
        VerdictOutcome::Fail {
            segment,
            reason,
            detail,
            ..
        } => {
            assert!(segment == 16 || segment == 17, "{segment}");
            assert_eq!(reason, FailureReason::BadProof);
            assert!(detail.contains("checkpoint 17"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        outcome(&bundle, SamplePolicy::All),
        VerdictOutcome::Fail {
            reason: FailureReason::BadProof,
            ..
        }
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        outcome(&bundle, SamplePolicy::All),
        VerdictOutcome::Fail {
            reason: FailureReason::Withheld,
            ..
        }
    ));
}

#[test]
fn unusable_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = honest_bundle(dir.path());
    // A commitment re-signed by another key than the worker it names.
    let mut signed = bundle.read_commitment().unwrap();
    let mallory = Identity::from_test_label("mallory");
    signed.signer = mallory.account();
    signed.signature = mallory.sign_raw(&signing_bytes(&signed.body).unwrap());
    bundle.write_commitment(&signed).unwrap();
    let err = audit(
        &bundle,
        beacon(1),
        &SamplePolicy::Count(1),
        &verifier(),
        &NoBlobs,
    )
    .unwrap_err();
    assert!(matches!(err, AuditError::Signature(_)), "{err}");
    assert!(err.to_string().contains("signed by"), "{err}");
    // A missing file.
    std::fs::remove_file(dir.path().join("commitment.json")).unwrap();
    let err = audit(
        &bundle,
        beacon(1),
        &SamplePolicy::Count(1),
        &verifier(),
        &NoBlobs,
    )
    .unwrap_err();
    assert!(err.to_string().contains("commitment.json"), "{err}");
    // Garbage in task.json.
    std::fs::write(dir.path().join("task.json"), b"{").unwrap();
    assert!(matches!(
        audit(
            &bundle,
            beacon(1),
            &SamplePolicy::Count(1),
            &verifier(),
            &NoBlobs
        ),
        Err(AuditError::Bundle(_))
    ));
    // No such bundle at all.
    assert!(audit(
        &Bundle::at(dir.path().join("nope")),
        beacon(1),
        &SamplePolicy::All,
        &verifier(),
        &NoBlobs
    )
    .is_err());
}

#[test]
fn task_that_does_not_match_the_commitment_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = honest_bundle(dir.path());
    let mut task = bundle.read_task().unwrap();
    task.price = Credits(task.price.0 + 1);
    bundle.write_task(&task).unwrap();
    match outcome(&bundle, SamplePolicy::Count(1)) {
        VerdictOutcome::Fail { reason, detail, .. } => {
            assert_eq!(reason, FailureReason::InvalidCommitment);
            assert!(detail.contains("task"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_segment_is_narrowed_to_its_first_bad_step() {
    let dir = tempfile::tempdir().unwrap();
    let task = example("mlp-train.json");
    let bundle = Bundle::at(dir.path());
    let report = exec(
        &task,
        &worker(),
        Behavior::Noise(0.1),
        &bundle,
        &NoBlobs,
        |_| {},
    )
    .unwrap();
    for &seg in &report.faked {
        market_worker::open_steps(&task, Behavior::Noise(0.1), &bundle, &NoBlobs, seg).unwrap();
    }
    match outcome(&bundle, SamplePolicy::All) {
        VerdictOutcome::Fail {
            segment,
            step,
            reason,
            ..
        } => {
            assert!(report.faked.contains(&segment));
            assert_eq!(reason, FailureReason::StateMismatch);
            // Noise is added after the segment's last step, so that is the first bad one.
            assert_eq!(step, Some((segment + 1) * 5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cheating_on_inference_items_is_caught() {
    let task = example("gpt-infer.json");
    for behavior in [
        Behavior::Skip(0.25),
        Behavior::Noise(0.25),
        Behavior::Replay,
        Behavior::ForgeRoot,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle::at(dir.path());
        exec(&task, &worker(), behavior, &bundle, &NoBlobs, |_| {}).unwrap();
        assert!(
            matches!(
                outcome(&bundle, SamplePolicy::All),
                VerdictOutcome::Fail { .. }
            ),
            "{behavior} went unnoticed"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let err = exec(
        &task,
        &worker(),
        Behavior::LowPrecision,
        &Bundle::at(dir.path()),
        &NoBlobs,
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not apply"), "{err}");
}

/// `market-verifier audit` prints the signed verdict as its canonical encoding on one line
/// (what a receiver hashes and verifies), and the signature verifies over it.
#[test]
fn cli_prints_the_canonical_signed_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    exec_in_child("mlp-train.json", &bundle);
    let out = Command::new(env!("CARGO_BIN_EXE_market-verifier"))
        .args(["audit", "--samples", "1", "--beacon"])
        .arg(beacon(1).to_string())
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.strip_suffix('\n').unwrap();
    assert!(!line.contains('\n'), "one line: {stdout}");
    let verdict: Signed<Verdict> = from_json_limited(line.as_bytes(), MAX_MESSAGE_BYTES).unwrap();
    assert_eq!(
        market_protocol::canonical::to_canonical_bytes(&verdict).unwrap(),
        line.as_bytes(),
        "printed in canonical form"
    );
    assert_eq!(verdict.verify().unwrap().outcome, VerdictOutcome::Pass);
}

/// The tiny llama's GGUF as the one blob a task names.
struct Gguf(BlobId, Vec<u8>);

impl market_compute::BlobSource for Gguf {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        (id == &self.0).then(|| self.1.clone())
    }
}

fn llama_chat_task(gguf: &Gguf, profile: ExecutionProfile) -> TaskSpec {
    let mut task = fixtures::inference_task(&Identity::from_test_label("buyer"), 3);
    task.profile = profile;
    let ask = |q: &str| {
        vec![ChatMessage {
            role: "user".into(),
            content: q.into(),
        }]
    };
    task.workload = Workload::Inference(InferenceSpec {
        model: market_compute::llama::fixtures::tiny_spec(),
        weights: Some(gguf.0),
        tokenizer: None,
        tokenizer_config: None,
        chat_template: None,
        inputs: InferenceInputs::Chat {
            chats: vec![ask("What is 2+2?"), ask("Name a colour."), ask("Hello!")],
            max_new_tokens: 12,
            stop: Vec::new(),
        },
        decoding: Decoding::Sample {
            temperature: "0.7".parse().unwrap(),
            top_k: 10,
            top_p: None,
        },
    });
    task
}

#[test]
fn llama_answers_are_checked_in_one_pass_and_cheats_fail() {
    let bytes = market_compute::llama::fixtures::tiny_gguf(11).unwrap();
    let gguf = Gguf(BlobId(Hash::of(&bytes)), bytes);
    for profile in [ExecutionProfile::Repro, ExecutionProfile::Native] {
        let task = llama_chat_task(&gguf, profile);
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle::at(dir.path());
        exec(&task, &worker(), Behavior::Honest, &bundle, &gguf, |_| {}).unwrap();
        let report = audit(&bundle, beacon(1), &SamplePolicy::All, &verifier(), &gguf).unwrap();
        assert_eq!(
            report.verdict.body.outcome,
            VerdictOutcome::Pass,
            "{profile:?}"
        );
        // The committed item is the answer record, tokens and logits included.
        let item = std::fs::read(bundle.item_path(0)).unwrap();
        let record = market_compute::inference::AnswerRecord::from_bytes(&item).unwrap();
        assert_eq!(record.tokens.len(), record.logits.len());
        for behavior in [Behavior::Skip(0.5), Behavior::Noise(0.5), Behavior::Replay] {
            let dir = tempfile::tempdir().unwrap();
            let bundle = Bundle::at(dir.path());
            exec(&task, &worker(), behavior, &bundle, &gguf, |_| {}).unwrap();
            let report = audit(&bundle, beacon(1), &SamplePolicy::All, &verifier(), &gguf).unwrap();
            assert!(
                matches!(report.verdict.body.outcome, VerdictOutcome::Fail { .. }),
                "{behavior} on {profile:?} went unnoticed"
            );
        }
    }
    // An answer made with other weights: the worker's bundle for a model seeded otherwise,
    // audited against the task's model.
    let other = market_compute::llama::fixtures::tiny_gguf(12).unwrap();
    let task = llama_chat_task(&gguf, ExecutionProfile::Repro);
    let swapped = Gguf(gguf.0, other);
    let dir = tempfile::tempdir().unwrap();
    let bundle = Bundle::at(dir.path());
    exec(
        &task,
        &worker(),
        Behavior::Honest,
        &bundle,
        &swapped,
        |_| {},
    )
    .unwrap();
    let report = audit(&bundle, beacon(1), &SamplePolicy::All, &verifier(), &gguf).unwrap();
    match report.verdict.body.outcome {
        VerdictOutcome::Fail { detail, .. } => {
            assert!(detail.contains("not the model's answer"), "{detail}")
        }
        other => panic!("other weights passed: {other:?}"),
    }
}

#[test]
fn a_native_worker_that_skips_the_work_of_small_steps_is_caught_by_the_update_check() {
    // Fine-tuning with plain SGD and a small learning rate: each segment moves the pretrained
    // parameters by well under the per-tensor state tolerance, so a worker that leaves them
    // where the segment started (taking only its last step, so the optimizer state looks
    // right) is within it.
    let pretraining = example("gpt-train.json");
    let job = market_compute::TrainingJob::from_spec(&pretraining, &NoBlobs).unwrap();
    let mut pretrained = job.initial_state();
    for _ in 0..30 {
        job.step(&mut pretrained).unwrap();
    }
    let weights = market_compute::init::weights_to_bytes(&job.layout, &pretrained.params).unwrap();
    let id = BlobId::of(&weights);
    let blobs = std::collections::BTreeMap::from([(id, weights)]);
    let mut task = pretraining.clone();
    task.profile = ExecutionProfile::Native;
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 30;
        t.initial_weights = Some(id);
        t.optimizer = OptimizerSpec::Sgd {
            lr: "0.00001".parse().unwrap(),
            momentum: "0".parse().unwrap(),
            weight_decay: "0".parse().unwrap(),
        };
    }
    let run = |behavior: Behavior| {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Bundle::at(dir.path());
        exec(&task, &worker(), behavior, &bundle, &blobs, |_| {}).unwrap();
        let report = audit(&bundle, beacon(1), &SamplePolicy::All, &verifier(), &blobs);
        report.unwrap().verdict.body.outcome
    };
    assert_eq!(run(Behavior::Honest), VerdictOutcome::Pass);
    match run(Behavior::LastStep(1.0)) {
        VerdictOutcome::Fail { reason, detail, .. } => {
            assert_eq!(reason, FailureReason::StateMismatch);
            assert!(detail.contains("update over the segment"), "{detail}");
        }
        other => panic!("a lazy native worker passed: {other:?}"),
    }
}

/// In `native` a committed loss is checked within 5% of the re-execution's: a worker that
/// commits losses of its own making is caught, an infinite one too (it used to be "within"
/// 5% of itself: `inf <= 0.05 * inf`).
#[test]
fn a_native_worker_that_commits_made_up_losses_is_caught() {
    let mut task = example("mlp-train.json");
    task.profile = ExecutionProfile::Native;
    let dir = tempfile::tempdir().unwrap();
    let bundle = honest_run(&task, dir.path());
    let honest = bundle.read_commitment().unwrap().body;
    let true_loss = honest.loss_trace[5].to_f32();
    let with_loss = |loss: f32| {
        let mut body = honest.clone();
        body.loss_trace[5] = F32Bits::from_f32(loss);
        bundle
            .write_commitment(&Signed::sign(body, &worker()).unwrap())
            .unwrap();
        outcome(&bundle, SamplePolicy::All)
    };
    // Within the tolerance: the rounding of another machine.
    assert_eq!(with_loss(true_loss * 1.01), VerdictOutcome::Pass);
    for made_up in [true_loss * 1.2, f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        match with_loss(made_up) {
            VerdictOutcome::Fail {
                segment, reason, ..
            } => {
                assert_eq!(segment, 5, "{made_up}");
                assert_eq!(reason, FailureReason::InvalidCommitment, "{made_up}");
            }
            other => panic!("a committed loss of {made_up} passed: {other:?}"),
        }
    }
}
