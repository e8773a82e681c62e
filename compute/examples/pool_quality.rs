//! The quality experiment of pooled training (issue 14): the same `gpt` on the arithmetic
//! language, held-out loss after training, for
//!
//! - (a) pooled: K slots, H inner steps, R rounds, batch B per slot;
//! - (b) one worker, R×H steps at batch B (the same steps in a row as each slot);
//! - (c) one worker, R×H steps at batch K×B (the same compute: synchronous data parallel).
//!
//! Prints the held-out loss after every H steps for all three, and the final ratios.
//!
//!   cargo run --release -p market-compute --example pool_quality -- [K H R B [SEED [OUTER_LR]]]

use market_compute::data::arithmetic;
use market_compute::pool::run_locally;
use market_compute::{NoBlobs, TrainingJob};
use market_protocol::fixtures::training_task;
use market_protocol::{Identity, ModelSpec, PoolSpec, TaskSpec, Workload};

fn task(seed: u64, batch: u32, steps: u32, interval: u32, pool: Option<PoolSpec>) -> TaskSpec {
    let mut task = training_task(&Identity::from_test_label("pool experiment"), 1);
    task.seed = seed;
    if let Workload::Training(t) = &mut task.workload {
        t.model = ModelSpec::Gpt {
            layers: 4,
            heads: 4,
            width: 128,
            vocab: 16,
            context: 16,
        };
        t.dataset = market_protocol::DatasetSource::Arithmetic {
            max_operand: 49,
            examples: 4096,
        };
        t.batch_size = batch;
        t.steps = steps;
        t.checkpoint_interval = interval;
        t.pool = pool;
    }
    task
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The outer learning rate, a decimal, is the optional sixth argument.
    let outer_lr = if args.len() == 6 {
        args.pop().unwrap_or_default()
    } else {
        "0.7".to_owned()
    };
    let args: Vec<u32> = args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let [k, h, r, b, seed] = match args.as_slice() {
        [] => [4, 50, 8, 16, 42],
        [k, h, r, b] => [*k, *h, *r, *b, 42],
        [k, h, r, b, seed] => [*k, *h, *r, *b, *seed],
        _ => anyhow::bail!("usage: pool_quality [K H R B [SEED [OUTER_LR]]]"),
    };
    let seed = u64::from(seed);
    let held_out = arithmetic::held_out(49, 256);
    let mut pool = market_protocol::fixtures::pool(k, r, h);
    pool.outer_optimizer = market_protocol::OuterOptimizerSpec::Nesterov {
        lr: outer_lr.parse()?,
        momentum: "0.9".parse()?,
    };
    let started = std::time::Instant::now();
    let pooled = TrainingJob::from_spec(&task(seed, b, r * h, h, Some(pool)), &NoBlobs)?;
    let mut a = Vec::new();
    run_locally(&pooled, |r| {
        a.push(
            pooled
                .loss_on(&r.global.params, &held_out)
                .unwrap_or(f32::NAN),
        );
    })?;
    let a_time = started.elapsed();
    let single = |batch: u32| -> anyhow::Result<Vec<f32>> {
        let job = TrainingJob::from_spec(&task(seed, batch, r * h, h, None), &NoBlobs)?;
        let mut state = job.initial_state();
        let mut curve = Vec::new();
        for s in 0..job.segments() {
            state = job.run_segment(s, &state, |_, _| {})?.0;
            curve.push(job.loss_on(&state.params, &held_out)?);
        }
        Ok(curve)
    };
    let t = std::time::Instant::now();
    let bb = single(b)?;
    let b_time = t.elapsed();
    let t = std::time::Instant::now();
    let c = single(k * b)?;
    let c_time = t.elapsed();
    println!("K={k} H={h} R={r} B={b} seed {seed} outer lr {outer_lr}; gpt 4 layers width 128 on sums up to 49; held-out loss on 256 unseen sums");
    println!(
        "{:>6} {:>10} {:>10} {:>10}",
        "steps", "(a) pool", "(b) 1xB", "(c) 1xKB"
    );
    for i in 0..r as usize {
        println!(
            "{:>6} {:>10.4} {:>10.4} {:>10.4}",
            (i + 1) * h as usize,
            a[i],
            bb[i],
            c[i]
        );
    }
    let (fa, fb, fc) = (a[r as usize - 1], bb[r as usize - 1], c[r as usize - 1]);
    println!("final: (a) {fa:.4}  (b) {fb:.4}  (c) {fc:.4}");
    println!("(a)/(b) = {:.3}   (a)/(c) = {:.3}", fa / fb, fa / fc);
    println!(
        "time: (a) {:.1} s  (b) {:.1} s  (c) {:.1} s",
        a_time.as_secs_f64(),
        b_time.as_secs_f64(),
        c_time.as_secs_f64()
    );
    // Communication per round and slot: the slot's worker fetches θ_r and returns its final
    // parameters (4 bytes each way per parameter); its optimizer moments move only when the
    // slot moves to another worker (then the whole state, both ways). Per-step data parallel
    // sends and receives a gradient every step.
    let params = pooled.layout.total() as u64;
    let state_bytes = market_compute::resources::state_bytes(&pooled.layout, true);
    let kept = u64::from(k) * 2 * 4 * params;
    let moved = u64::from(k) * 2 * state_bytes;
    let per_step_dp = u64::from(k) * 2 * 4 * params * u64::from(h);
    println!(
        "bytes per round: pooled {kept} (slots stay) to {moved} (every slot moves); per-step data parallel over the same {h} steps {per_step_dp}; ratio {:.1} to {:.1}",
        per_step_dp as f64 / kept as f64,
        per_step_dp as f64 / moved as f64
    );
    Ok(())
}
