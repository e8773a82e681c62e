//! Trains the example `gpt` task on the arithmetic language and prints the loss curve and a few
//! greedy answers: `cargo run --release -p market-compute --example train_arith [profile] [steps]`.

use market_compute::data::arithmetic;
use market_compute::{Backend, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{ExecutionProfile, Identity, Workload};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let profile = match args.get(1).map(String::as_str) {
        Some("native") => ExecutionProfile::Native,
        _ => ExecutionProfile::Repro,
    };
    let mut task = training_task(&Identity::from_test_label("buyer"), 1);
    task.profile = profile;
    if let (Workload::Training(t), Some(steps)) = (&mut task.workload, args.get(2)) {
        t.steps = steps.parse()?;
    }
    let job = TrainingJob::from_spec(&task, &market_compute::NoBlobs)?;
    let start = std::time::Instant::now();
    let mut state = job.initial_state();
    for seg in 0..job.segments() {
        let (next, loss) = job.run_segment(seg, &state, |_, _| {})?;
        state = next;
        println!(
            "segment {seg:3} step {:4} loss {loss:.4} ({:.1}s)",
            state.step,
            start.elapsed().as_secs_f32()
        );
    }
    println!("hash {}", state.hash(&job.layout)?);
    let _ = Backend::Repro;
    let cfg = match &job.model {
        market_compute::zoo::ModelConfig::Gpt(g) => *g,
        _ => unreachable!(),
    };
    let mut right = 0;
    let mut total = 0;
    for a in 0..50 {
        for b in 0..50 {
            if !arithmetic::is_held_out(a, b) {
                continue;
            }
            let mut toks = arithmetic::encode(&format!("{a}+{b}=")).unwrap_or_default();
            let mut out = Vec::new();
            for _ in 0..4 {
                let logits = market_compute::repro::gpt::logits(
                    &cfg,
                    &job.layout,
                    &state.params,
                    &toks,
                    1,
                    toks.len(),
                );
                let last = &logits[(toks.len() - 1) * cfg.vocab..];
                let next = (0..cfg.vocab)
                    .fold(0, |best, i| if last[i] > last[best] { i } else { best })
                    as u32;
                toks.push(next);
                out.push(next);
                if next == arithmetic::END {
                    break;
                }
            }
            total += 1;
            if arithmetic::decode(&out) == format!("{}\n", a + b) {
                right += 1;
            }
        }
    }
    println!("held-out sums right: {right}/{total}");
    Ok(())
}
