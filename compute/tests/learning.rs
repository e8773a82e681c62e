//! Training really learns: `gpt` on the arithmetic language halves its loss within a few hundred
//! steps, and greedy decoding then solves sums it never saw. The `repro` profile makes the
//! outcome a fixed function of the task, so this test cannot flake.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_compute::data::arithmetic;
use market_compute::zoo::ModelConfig;
use market_compute::{InferenceJob, NoBlobs, TrainingJob};
use market_protocol::fixtures::{inference_task, training_task};
use market_protocol::*;

struct Weights(BlobId, Vec<u8>);

impl market_compute::BlobSource for Weights {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        (id == &self.0).then(|| self.1.clone())
    }
}

#[test]
fn gpt_learns_arithmetic_and_solves_held_out_sums() {
    let buyer = Identity::from_test_label("buyer");
    let mut task = training_task(&buyer, 1);
    if let Workload::Training(t) = &mut task.workload {
        t.steps = 1200;
        t.checkpoint_interval = 100;
    }
    let job = TrainingJob::from_spec(&task, &NoBlobs).unwrap();
    let mut state = job.initial_state();
    let mut losses = Vec::new();
    let mut first = None;
    for seg in 0..job.segments() {
        let (next, loss) = job
            .run_segment(seg, &state, |_, l| {
                first.get_or_insert(l);
            })
            .unwrap();
        state = next;
        losses.push(loss);
    }
    // By step 400 the loss is at most half the loss of the first step (about ln 13).
    let first = first.unwrap();
    assert!(first > 2.0, "first loss {first}");
    assert!(
        losses[3] <= 0.5 * first,
        "first {first}, means per 100 steps: {losses:?}"
    );

    // Greedy decoding through the inference path, with the trained weights as a blob.
    let weights = market_compute::init::weights_to_bytes(&job.layout, &state.params).unwrap();
    let id = BlobId::of(&weights);
    let held_out: Vec<(u32, u32)> = (0..50)
        .flat_map(|a| (0..50).map(move |b| (a, b)))
        .filter(|(a, b)| arithmetic::is_held_out(*a, *b))
        .collect();
    let ModelConfig::Gpt(g) = job.model else {
        unreachable!()
    };
    let mut inf = inference_task(&buyer, 2);
    inf.profile = ExecutionProfile::Repro;
    inf.workload = Workload::Inference(InferenceSpec {
        model: ModelSpec::Gpt {
            layers: g.layers as u32,
            heads: g.heads as u32,
            width: g.width as u32,
            vocab: g.vocab as u32,
            context: g.context as u32,
        },
        weights: Some(id),
        tokenizer: None,
        tokenizer_config: None,
        chat_template: None,
        inputs: InferenceInputs::Prompts {
            prompts: held_out.iter().map(|(a, b)| format!("{a}+{b}=")).collect(),
            max_new_tokens: 4,
        },
        decoding: Decoding::Greedy,
    });
    let out = InferenceJob::from_spec(&inf, &Weights(id, weights))
        .unwrap()
        .run_all(|_| {})
        .unwrap();
    let right = held_out
        .iter()
        .zip(&out.items)
        .filter(|((a, b), item)| item.bytes == format!("{}\n", a + b).into_bytes())
        .count();
    println!(
        "solved {right} of {} held-out sums; losses {losses:?}",
        held_out.len()
    );
    assert!(
        right * 4 >= held_out.len(),
        "solved {right} of {} held-out sums",
        held_out.len()
    );
}
