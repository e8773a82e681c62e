//! Measures how far `native` states drift from `repro` states over the same steps, against how
//! far a cheat (skipping one step of a segment) moves them, to justify
//! `tolerance::MAX_RELATIVE_L2` (see spec/COMPUTE.md):
//! `cargo run --release -p market-compute --example tolerance`.

use market_compute::tolerance::{worst_relative_l2, MAX_RELATIVE_L2};
use market_compute::{Backend, NoBlobs, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{ExecutionProfile, Identity};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut task = training_task(&Identity::from_test_label("buyer"), 1);
    task.profile = ExecutionProfile::Native;
    let native = TrainingJob::from_spec(&task, &NoBlobs)?;
    let repro = native.clone().with_backend(Backend::Repro);
    let mut start = repro.initial_state();
    let (mut honest_max, mut honest_at) = (0.0f64, String::new());
    let mut cheat_min = f64::INFINITY;
    for seg in 0..native.segments() {
        let (a, _) = repro.run_segment(seg, &start, |_, _| {})?;
        let (b, _) = native.run_segment(seg, &start, |_, _| {})?;
        let (honest, tensor) = worst_relative_l2(&repro.layout, &b, &a);
        if honest > honest_max {
            (honest_max, honest_at) = (honest, format!("segment {seg}, {tensor}"));
        }
        // The cheapest cheat: skip the last step of the segment and claim its step count.
        let mut skipped = start.clone();
        for _ in 0..repro.checkpoint_interval - 1 {
            repro.step(&mut skipped)?;
        }
        skipped.step = a.step;
        cheat_min = cheat_min.min(worst_relative_l2(&repro.layout, &skipped, &a).0);
        start = a;
    }
    println!(
        "segments: {} of {} steps",
        native.segments(),
        native.checkpoint_interval
    );
    println!("honest repro vs native, worst tensor: {honest_max:.3e} ({honest_at})");
    println!("one skipped step, smallest worst-tensor distance: {cheat_min:.3e}");
    println!("threshold MAX_RELATIVE_L2 = {MAX_RELATIVE_L2:e}: margin {:.1}x above honest, {:.1}x below cheat",
        MAX_RELATIVE_L2 / honest_max, cheat_min / MAX_RELATIVE_L2);
    Ok(())
}
