//! The `mlp` model of the `repro` profile: explicit forward and backward over the
//! deterministic kernels; mean squared error loss.

use market_protocol::Activation;

use super::kernels::*;
use crate::zoo::{MlpConfig, ParamLayout};

fn activate(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        Activation::Tanh => libm::tanhf(x),
        Activation::Gelu => gelu(x),
    }
}

fn activate_grad(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Tanh => {
            let t = libm::tanhf(x);
            1.0 - t * t
        }
        Activation::Gelu => gelu_grad(x),
    }
}

fn names(i: usize) -> (String, String) {
    (format!("l{i:02}.w"), format!("l{i:02}.b"))
}

/// Pre-activations of every layer (the last is the output).
fn forward(
    cfg: &MlpConfig,
    layout: &ParamLayout,
    params: &[f32],
    x: &[f32],
    rows: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut inputs = vec![x.to_vec()];
    let mut pre = Vec::new();
    let layers = cfg.widths.len() - 1;
    for i in 0..layers {
        let (k, n) = (cfg.widths[i], cfg.widths[i + 1]);
        let (w, b) = names(i);
        let mut z = vec![0.0f32; rows * n];
        let h = &inputs[i];
        linear_forward(
            &mut z,
            h,
            &params[layout.slot(&w).range()],
            Some(&params[layout.slot(&b).range()]),
            rows,
            k,
            n,
        );
        if i + 1 < layers {
            inputs.push(z.iter().map(|v| activate(cfg.activation, *v)).collect());
        }
        pre.push(z);
    }
    (inputs, pre)
}

/// Outputs `[rows, widths.last()]` for inputs `x` `[rows, widths[0]]`.
pub fn predict(
    cfg: &MlpConfig,
    layout: &ParamLayout,
    params: &[f32],
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let (_, mut pre) = forward(cfg, layout, params, x, rows);
    pre.pop().unwrap_or_default()
}

/// Mean squared error over all outputs; writes parameter gradients into `grads` (overwritten).
pub fn loss_and_grads(
    cfg: &MlpConfig,
    layout: &ParamLayout,
    params: &[f32],
    x: &[f32],
    y: &[f32],
    rows: usize,
    grads: &mut [f32],
) -> f32 {
    let (inputs, pre) = forward(cfg, layout, params, x, rows);
    let out = pre.last().map(Vec::as_slice).unwrap_or_default();
    let count = out.len().max(1) as f32;
    let mut loss = 0.0f32;
    let mut dz: Vec<f32> = Vec::with_capacity(out.len());
    for (p, t) in out.iter().zip(y) {
        let d = *p - *t;
        loss += d * d;
        dz.push(2.0 * d / count);
    }
    grads.iter_mut().for_each(|g| *g = 0.0);
    for i in (0..cfg.widths.len() - 1).rev() {
        let (k, n) = (cfg.widths[i], cfg.widths[i + 1]);
        let (w, b) = names(i);
        let w_range = layout.slot(&w).range();
        let b_range = layout.slot(&b).range();
        let mut dw = vec![0.0f32; k * n];
        let mut db = vec![0.0f32; n];
        let mut dh = (i > 0).then(|| vec![0.0f32; rows * k]);
        linear_backward(
            dh.as_deref_mut(),
            &mut dw,
            Some(&mut db),
            &dz,
            &inputs[i],
            &params[w_range.clone()],
            rows,
            k,
            n,
        );
        grads[w_range].copy_from_slice(&dw);
        grads[b_range].copy_from_slice(&db);
        if let Some(dh) = dh {
            dz = dh
                .iter()
                .zip(&pre[i - 1])
                .map(|(d, z)| d * activate_grad(cfg.activation, *z))
                .collect();
        }
    }
    loss / count
}
