//! Throughput of the `repro` matmul on SmolLM2's prefill shapes (42 rows), against candle's
//! gemm on the same shapes in the same run: the ratio is what issue 15's prefill goal asks of.
//!
//! `cargo run --release -p market-compute --example matmul_tile [ROWS]` (default 42; over 512
//! rows the kernel splits by rows, 1 is a decoded token)

use std::time::Instant;

use candle_core::{Device, Tensor};
use market_compute::repro::kernels::matmul;

fn main() -> anyhow::Result<()> {
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(42);
    // SmolLM2-135M's linear layers (in, out): q, k/v, o, gate/up, down.
    let shapes = [(576, 576), (576, 192), (576, 1536), (1536, 576)];
    println!("| k × n | repro GFLOP/s | candle GFLOP/s | ratio |");
    println!("|---|---|---|---|");
    for (k, n) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 1000) as f32 * 1e-3)
            .collect();
        let mut out = vec![0.0f32; m * n];
        let reps = 200;
        let t = Instant::now();
        for _ in 0..reps {
            matmul(&mut out, &a, &b, m, k, n, false);
        }
        let repro = t.elapsed().as_secs_f64();
        let at = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu)?;
        let bt = Tensor::from_vec(b.clone(), (k, n), &Device::Cpu)?;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(at.matmul(&bt)?);
        }
        let candle = t.elapsed().as_secs_f64();
        let flops = 2.0 * (m * k * n * reps) as f64;
        println!(
            "| {k} × {n} | {:.1} | {:.1} | {:.2} |",
            flops / repro / 1e9,
            flops / candle / 1e9,
            candle / repro
        );
    }
    Ok(())
}
