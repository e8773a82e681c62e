//! Sample messages for tests, documentation and the test vectors in `spec/vectors/`.
//!
//! They are ordinary, valid protocol messages built from deterministic test identities
//! ([`Identity::from_test_label`]); other crates' tests use them too, so one definition of "a
//! typical task" exists.

pub mod hostile;

use crate::hash::{Beacon, BlobId, Hash, StateHash, TaskId};
use crate::keys::Identity;
use crate::merkle::MerkleTree;
use crate::messages::*;
use crate::numbers::{Credits, F32Bits};
use crate::signed::message_id;

fn dec(s: &str) -> crate::Decimal {
    s.parse()
        .unwrap_or_else(|_| unreachable!("fixture decimals are canonical"))
}

/// A small `gpt` training task on the arithmetic language.
pub fn training_task(buyer: &Identity, nonce: u64) -> TaskSpec {
    TaskSpec {
        version: Version::CURRENT,
        buyer: buyer.account(),
        nonce,
        workload: Workload::Training(TrainingSpec {
            model: ModelSpec::Gpt {
                layers: 2,
                heads: 2,
                width: 32,
                vocab: 16,
                context: 16,
            },
            dataset: DatasetSource::Arithmetic {
                max_operand: 49,
                examples: 4096,
            },
            optimizer: OptimizerSpec::Adamw {
                lr: dec("0.003"),
                beta1: dec("0.9"),
                beta2: dec("0.999"),
                eps: dec("0.00000001"),
                weight_decay: dec("0.01"),
            },
            batch_size: 16,
            steps: 200,
            checkpoint_interval: 10,
            initial_weights: None,
            pool: None,
            eval_dataset: None,
        }),
        seed: 42,
        profile: ExecutionProfile::Repro,
        price: Credits(1_000),
        audit: AuditPolicy {
            detection_target: dec("0.99"),
            assumed_faked_fraction: dec("0.1"),
        },
    }
}

/// A `gpt` inference task with two prompts and seeded sampling.
pub fn inference_task(buyer: &Identity, nonce: u64) -> TaskSpec {
    TaskSpec {
        version: Version::CURRENT,
        buyer: buyer.account(),
        nonce,
        workload: Workload::Inference(InferenceSpec {
            model: ModelSpec::Gpt {
                layers: 2,
                heads: 2,
                width: 32,
                vocab: 16,
                context: 16,
            },
            weights: Some(BlobId(Hash::of(b"weights"))),
            tokenizer: None,
            tokenizer_config: None,
            chat_template: None,
            inputs: InferenceInputs::Prompts {
                prompts: vec!["17+25=".into(), "3+4=".into()],
                max_new_tokens: 4,
            },
            decoding: Decoding::Sample {
                temperature: dec("0.8"),
                top_k: 5,
                top_p: None,
            },
        }),
        seed: 7,
        profile: ExecutionProfile::Native,
        price: Credits(50),
        audit: AuditPolicy {
            detection_target: dec("0.9"),
            assumed_faked_fraction: dec("0.5"),
        },
    }
}

/// Synthetic checkpoint hashes for a run of `segments` segments (`segments + 1` checkpoints).
pub fn checkpoint_hashes(label: &str, segments: u32) -> Vec<StateHash> {
    (0..=segments)
        .map(|i| StateHash(Hash::of(format!("{label}/checkpoint/{i}").as_bytes())))
        .collect()
}

/// A commitment by `worker` to `task` over the given checkpoint hashes.
pub fn commitment(worker: &Identity, task: &TaskSpec, checkpoints: &[StateHash]) -> Commitment {
    let tree = MerkleTree::new(checkpoints);
    let segments = checkpoints.len().saturating_sub(1) as u32;
    Commitment {
        version: Version::CURRENT,
        task_id: TaskId(message_id(task).unwrap_or_else(|_| unreachable!("fixtures canonicalize"))),
        worker: worker.account(),
        steps: segments * 10,
        segments,
        root: tree.root(),
        final_state_hash: *checkpoints.last().unwrap_or(&StateHash::default()),
        outputs: vec![BlobId(Hash::of(b"final weights"))],
        loss_trace: (0..segments)
            .map(|i| F32Bits::from_f32(2.5 / (1.0 + i as f32)))
            .collect(),
        slot_round: None,
    }
}

/// A beacon for tests.
pub fn beacon(label: &str) -> Beacon {
    Beacon(Hash::of(label.as_bytes()))
}

/// A pool of `workers` slots, `rounds` rounds of `inner_steps` steps, merged by Nesterov with
/// DiLoCo's outer learning rate 0.7 and momentum 0.9.
pub fn pool(workers: u32, rounds: u32, inner_steps: u32) -> crate::PoolSpec {
    crate::PoolSpec {
        workers,
        rounds,
        inner_steps,
        outer_optimizer: crate::OuterOptimizerSpec::Nesterov {
            lr: dec("0.7"),
            momentum: dec("0.9"),
        },
    }
}
