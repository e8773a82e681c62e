//! The `gpt` model of the `repro` profile: forward and backward written out explicitly (in the
//! style of llm.c) over the deterministic kernels, so no autograd reduction of unknown order
//! touches the result.

use super::kernels::*;
use crate::batch::TokenBatch;
use crate::zoo::{GptConfig, ParamLayout};

/// Activations of one block, kept for the backward pass.
struct BlockActs {
    x_in: Vec<f32>,
    ln1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    atty: Vec<f32>,
    x_mid: Vec<f32>,
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
}

/// Views of the parameters (or gradients) by name.
struct Params<'a> {
    layout: &'a ParamLayout,
    data: &'a [f32],
}

impl<'a> Params<'a> {
    fn get(&self, name: &str) -> &'a [f32] {
        &self.data[self.layout.slot(name).range()]
    }
}

fn grad<'g>(layout: &ParamLayout, grads: &'g mut [f32], name: &str) -> &'g mut [f32] {
    &mut grads[layout.slot(name).range()]
}

fn block(l: usize, name: &str) -> String {
    format!("h{l:02}.{name}")
}

struct Forward {
    blocks: Vec<BlockActs>,
    x_final: Vec<f32>,
    lnf: Vec<f32>,
    lnf_mean: Vec<f32>,
    lnf_rstd: Vec<f32>,
    logits: Vec<f32>,
}

fn forward(cfg: &GptConfig, p: &Params<'_>, inputs: &[u32], b: usize, t: usize) -> Forward {
    let c = cfg.width;
    let bt = b * t;
    let (wte, wpe) = (p.get("wte"), p.get("wpe"));
    let mut x = vec![0.0f32; bt * c];
    for (i, tok) in inputs.iter().enumerate() {
        let pos = i % t;
        let tok = *tok as usize;
        for j in 0..c {
            x[i * c + j] = wte[tok * c + j] + wpe[pos * c + j];
        }
    }
    let mut blocks = Vec::with_capacity(cfg.layers);
    for l in 0..cfg.layers {
        let g = |n: &str| p.get(&block(l, n));
        let mut ln1 = vec![0.0f32; bt * c];
        let (mut ln1_mean, mut ln1_rstd) = (vec![0.0f32; bt], vec![0.0f32; bt]);
        layernorm_forward(
            &mut ln1,
            &mut ln1_mean,
            &mut ln1_rstd,
            &x,
            g("ln1.w"),
            g("ln1.b"),
            c,
        );
        let mut qkv = vec![0.0f32; bt * 3 * c];
        linear_forward(
            &mut qkv,
            &ln1,
            g("attn.qkv.w"),
            Some(g("attn.qkv.b")),
            bt,
            c,
            3 * c,
        );
        let mut atty = vec![0.0f32; bt * c];
        let mut att = vec![0.0f32; b * cfg.heads * t * t];
        attention_forward(&mut atty, &mut att, &qkv, b, t, c, cfg.heads);
        let mut x_mid = vec![0.0f32; bt * c];
        linear_forward(
            &mut x_mid,
            &atty,
            g("attn.proj.w"),
            Some(g("attn.proj.b")),
            bt,
            c,
            c,
        );
        for (m, xi) in x_mid.iter_mut().zip(&x) {
            *m += *xi;
        }
        let mut ln2 = vec![0.0f32; bt * c];
        let (mut ln2_mean, mut ln2_rstd) = (vec![0.0f32; bt], vec![0.0f32; bt]);
        layernorm_forward(
            &mut ln2,
            &mut ln2_mean,
            &mut ln2_rstd,
            &x_mid,
            g("ln2.w"),
            g("ln2.b"),
            c,
        );
        let mut fch = vec![0.0f32; bt * 4 * c];
        linear_forward(
            &mut fch,
            &ln2,
            g("mlp.fc.w"),
            Some(g("mlp.fc.b")),
            bt,
            c,
            4 * c,
        );
        let fch_gelu: Vec<f32> = fch.iter().map(|v| gelu(*v)).collect();
        let mut x_out = vec![0.0f32; bt * c];
        linear_forward(
            &mut x_out,
            &fch_gelu,
            g("mlp.proj.w"),
            Some(g("mlp.proj.b")),
            bt,
            4 * c,
            c,
        );
        for (o, m) in x_out.iter_mut().zip(&x_mid) {
            *o += *m;
        }
        let x_in = std::mem::replace(&mut x, x_out);
        blocks.push(BlockActs {
            x_in,
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            att,
            atty,
            x_mid,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
        });
    }
    let mut lnf = vec![0.0f32; bt * c];
    let (mut lnf_mean, mut lnf_rstd) = (vec![0.0f32; bt], vec![0.0f32; bt]);
    layernorm_forward(
        &mut lnf,
        &mut lnf_mean,
        &mut lnf_rstd,
        &x,
        p.get("lnf.w"),
        p.get("lnf.b"),
        c,
    );
    let mut logits = vec![0.0f32; bt * cfg.vocab];
    linear_forward(&mut logits, &lnf, p.get("head.w"), None, bt, c, cfg.vocab);
    Forward {
        blocks,
        x_final: x,
        lnf,
        lnf_mean,
        lnf_rstd,
        logits,
    }
}

/// Logits `[b * t, vocab]` for `inputs` (`b` sequences of `t` tokens).
pub fn logits(
    cfg: &GptConfig,
    layout: &ParamLayout,
    params: &[f32],
    inputs: &[u32],
    b: usize,
    t: usize,
) -> Vec<f32> {
    let p = Params {
        layout,
        data: params,
    };
    forward(cfg, &p, inputs, b, t).logits
}

/// Mean cross-entropy over the scored positions of `batch`; writes the gradient of that loss
/// with respect to every parameter into `grads` (overwritten).
pub fn loss_and_grads(
    cfg: &GptConfig,
    layout: &ParamLayout,
    params: &[f32],
    batch: &TokenBatch,
    grads: &mut [f32],
) -> f32 {
    let (b, t, c, v) = (batch.rows, batch.len, cfg.width, cfg.vocab);
    let bt = b * t;
    let p = Params {
        layout,
        data: params,
    };
    let mut fw = forward(cfg, &p, &batch.inputs, b, t);

    let logits = std::mem::take(&mut fw.logits);
    let (loss, dlogits) = cross_entropy(logits, v, &batch.targets, &batch.scored);

    grads.iter_mut().for_each(|g| *g = 0.0);
    let mut dlnf = vec![0.0f32; bt * c];
    linear_backward(
        Some(&mut dlnf),
        grad(layout, grads, "head.w"),
        None,
        &dlogits,
        &fw.lnf,
        p.get("head.w"),
        bt,
        c,
        v,
    );
    let mut dx = vec![0.0f32; bt * c];
    {
        let (mut dw, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
        layernorm_backward(
            &mut dx,
            &mut dw,
            &mut db,
            &dlnf,
            &fw.x_final,
            p.get("lnf.w"),
            &fw.lnf_mean,
            &fw.lnf_rstd,
            c,
        );
        grad(layout, grads, "lnf.w").copy_from_slice(&dw);
        grad(layout, grads, "lnf.b").copy_from_slice(&db);
    }
    for l in (0..cfg.layers).rev() {
        let a = &fw.blocks[l];
        let name = |n: &str| block(l, n);
        let g = |n: &str| p.get(&block(l, n));
        // x_out = x_mid + proj(gelu(fc(ln2(x_mid)))): dx flows to x_mid directly and via the MLP.
        let mut dfch_gelu = vec![0.0f32; bt * 4 * c];
        {
            let mut dw = vec![0.0f32; 4 * c * c];
            let mut db = vec![0.0f32; c];
            linear_backward(
                Some(&mut dfch_gelu),
                &mut dw,
                Some(&mut db),
                &dx,
                &a.fch_gelu,
                g("mlp.proj.w"),
                bt,
                4 * c,
                c,
            );
            grad(layout, grads, &name("mlp.proj.w")).copy_from_slice(&dw);
            grad(layout, grads, &name("mlp.proj.b")).copy_from_slice(&db);
        }
        let dfch: Vec<f32> = dfch_gelu
            .iter()
            .zip(&a.fch)
            .map(|(d, x)| d * gelu_grad(*x))
            .collect();
        let mut dln2 = vec![0.0f32; bt * c];
        {
            let mut dw = vec![0.0f32; c * 4 * c];
            let mut db = vec![0.0f32; 4 * c];
            linear_backward(
                Some(&mut dln2),
                &mut dw,
                Some(&mut db),
                &dfch,
                &a.ln2,
                g("mlp.fc.w"),
                bt,
                c,
                4 * c,
            );
            grad(layout, grads, &name("mlp.fc.w")).copy_from_slice(&dw);
            grad(layout, grads, &name("mlp.fc.b")).copy_from_slice(&db);
        }
        let mut dx_mid = dx; // residual path
        {
            let (mut dw, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
            layernorm_backward(
                &mut dx_mid,
                &mut dw,
                &mut db,
                &dln2,
                &a.x_mid,
                g("ln2.w"),
                &a.ln2_mean,
                &a.ln2_rstd,
                c,
            );
            grad(layout, grads, &name("ln2.w")).copy_from_slice(&dw);
            grad(layout, grads, &name("ln2.b")).copy_from_slice(&db);
        }
        // x_mid = x_in + proj(attention(qkv(ln1(x_in)))).
        let mut datty = vec![0.0f32; bt * c];
        {
            let mut dw = vec![0.0f32; c * c];
            let mut db = vec![0.0f32; c];
            linear_backward(
                Some(&mut datty),
                &mut dw,
                Some(&mut db),
                &dx_mid,
                &a.atty,
                g("attn.proj.w"),
                bt,
                c,
                c,
            );
            grad(layout, grads, &name("attn.proj.w")).copy_from_slice(&dw);
            grad(layout, grads, &name("attn.proj.b")).copy_from_slice(&db);
        }
        let mut dqkv = vec![0.0f32; bt * 3 * c];
        attention_backward(&mut dqkv, &datty, &a.qkv, &a.att, b, t, c, cfg.heads);
        let mut dln1 = vec![0.0f32; bt * c];
        {
            let mut dw = vec![0.0f32; c * 3 * c];
            let mut db = vec![0.0f32; 3 * c];
            linear_backward(
                Some(&mut dln1),
                &mut dw,
                Some(&mut db),
                &dqkv,
                &a.ln1,
                g("attn.qkv.w"),
                bt,
                c,
                3 * c,
            );
            grad(layout, grads, &name("attn.qkv.w")).copy_from_slice(&dw);
            grad(layout, grads, &name("attn.qkv.b")).copy_from_slice(&db);
        }
        let mut dx_in = dx_mid; // residual path
        {
            let (mut dw, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
            layernorm_backward(
                &mut dx_in,
                &mut dw,
                &mut db,
                &dln1,
                &a.x_in,
                g("ln1.w"),
                &a.ln1_mean,
                &a.ln1_rstd,
                c,
            );
            grad(layout, grads, &name("ln1.w")).copy_from_slice(&dw);
            grad(layout, grads, &name("ln1.b")).copy_from_slice(&db);
        }
        dx = dx_in;
    }
    // Embeddings: scatter-add in ascending position order.
    let wte_slot = layout.slot("wte").range();
    let wpe_slot = layout.slot("wpe").range();
    for (i, tok) in batch.inputs.iter().enumerate() {
        let pos = i % t;
        let tok = *tok as usize;
        for j in 0..c {
            let d = dx[i * c + j];
            let e = &mut grads[wte_slot.start + tok * c + j];
            *e += d;
            let q = &mut grads[wpe_slot.start + pos * c + j];
            *q += d;
        }
    }
    loss
}
