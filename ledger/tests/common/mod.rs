//! Helpers shared by the integration tests: identities, signed participant messages, and
//! export round trips.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use market_ledger::protocol::{
    message_id, Activation, AuditPolicy, Commitment, CommitmentId, Credits, DatasetSource,
    ExecutionProfile, FailureReason, Hash, Identity, ModelSpec, OptimizerSpec, Signed, StateHash,
    TaskId, TaskSpec, TrainingSpec, Verdict, VerdictOutcome, Version, Workload,
};
use market_ledger::{ExportReport, IdempotencyKey, Ledger, LedgerError, OpenOptions};

/// The operator of every test ledger.
pub fn operator() -> Identity {
    Identity::from_test_label("ledger-operator")
}

/// A participant.
pub fn who(label: &str) -> Identity {
    Identity::from_test_label(label)
}

/// An idempotency key.
pub fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::new(k).expect("valid idempotency key")
}

/// A fresh ledger in `dir/ledger`.
pub fn open(dir: &Path) -> Ledger {
    Ledger::open(&ledger_path(dir), operator(), OpenOptions::default()).expect("open ledger")
}

/// Where [`open`] keeps the ledger.
pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger")
}

/// The export of `ledger` as lines without newlines.
pub fn export_lines(ledger: &Ledger) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    ledger.export(&mut out, 0).expect("export");
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Verifies lines as an export file would hold them.
pub fn verify_lines(lines: &[Vec<u8>]) -> Result<ExportReport, LedgerError> {
    let mut text = Vec::new();
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    market_ledger::verify_export(&text[..], Path::new("<test>"), None)
}

/// A buyer's signed training task with `price`.
pub fn task(buyer: &Identity, price: u64, nonce: u64) -> Signed<TaskSpec> {
    let dec = |s: &str| s.parse().expect("decimal");
    let spec = TaskSpec {
        version: Version::CURRENT,
        buyer: buyer.account(),
        nonce,
        workload: Workload::Training(TrainingSpec {
            model: ModelSpec::Mlp {
                widths: vec![2, 4, 1],
                activation: Activation::Relu,
            },
            dataset: DatasetSource::Arithmetic {
                max_operand: 9,
                examples: 16,
            },
            optimizer: OptimizerSpec::Sgd {
                lr: dec("0.1"),
                momentum: dec("0"),
                weight_decay: dec("0"),
            },
            batch_size: 4,
            steps: 8,
            checkpoint_interval: 2,
            initial_weights: None,
            pool: None,
            eval_dataset: None,
        }),
        seed: 7,
        profile: ExecutionProfile::Repro,
        price: Credits(price),
        audit: AuditPolicy {
            detection_target: dec("0.99"),
            assumed_faked_fraction: dec("0.1"),
        },
    };
    Signed::sign(spec, buyer).expect("sign task")
}

/// The task id of a signed task.
pub fn task_id(spec: &Signed<TaskSpec>) -> TaskId {
    TaskId(spec.id().expect("task id"))
}

/// A worker's signed commitment to `task`.
pub fn commitment(worker: &Identity, task: TaskId) -> Signed<Commitment> {
    let body = Commitment {
        version: Version::CURRENT,
        task_id: task,
        worker: worker.account(),
        steps: 8,
        segments: 4,
        root: Hash::of(b"root"),
        final_state_hash: StateHash(Hash::of(b"final")),
        outputs: vec![],
        loss_trace: vec![],
        slot_round: None,
    };
    Signed::sign(body, worker).expect("sign commitment")
}

/// A verifier's signed verdict on a commitment, failing it when `fail`.
pub fn verdict(
    verifier: &Identity,
    commitment: &Signed<Commitment>,
    fail: bool,
) -> Signed<Verdict> {
    let outcome = if fail {
        VerdictOutcome::Fail {
            segment: 2,
            step: None,
            reason: FailureReason::StateMismatch,
            detail: "segment 2 ends in another state".into(),
        }
    } else {
        VerdictOutcome::Pass
    };
    let body = Verdict {
        version: Version::CURRENT,
        verifier: verifier.account(),
        commitment_id: CommitmentId(commitment.id().expect("commitment id")),
        challenge_id: market_ledger::protocol::ChallengeId(Hash::of(b"challenge")),
        checked: vec![],
        outcome,
        compute_share_ppm: 100_000,
    };
    Signed::sign(body, verifier).expect("sign verdict")
}

/// The id of a signed verdict (its evidence hash).
pub fn verdict_id(v: &Signed<Verdict>) -> Hash {
    message_id(&v.body).expect("verdict id")
}

/// A small deterministic generator (SplitMix64), so failures reproduce.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
