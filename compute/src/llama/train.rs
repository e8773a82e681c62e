//! Training the `llama` family in the `repro` profile: the forward pass of [`super::repro`]
//! over whole sequences (every sequence from position 0), a softmax cross-entropy, and the
//! backward pass written out in one fixed order (in the style of llm.c, like
//! [`crate::repro::gpt`]), so a fine-tuning step gives the same bits on every CPU and thread
//! count. The definitions are in `spec/COMPUTE.md` appendix A.9a; in short, with `·` binary32
//! and every sum ascending from 0:
//!
//! ```text
//! linear      y = x Wᵀ          dx += dy W (sum over out)    dW += dyᵀ x (sum over rows)
//! rmsnorm     y = w ⊙ (x r)     dw += Σ_rows dy ⊙ (x r)
//!             dx += r (g − (x r) · (Σ_i g_i (x_i r) / n)),  g = dy ⊙ w
//! swiglu      a = silu(g) u     du = da · silu(g)
//!             dg = (da · u) · (σ (1 + g (1 − σ))),  σ = 1 / (1 + expf(−g))
//! rope        the transposed rotation (RopeTable::apply_transpose)
//! attention   as gpt's, each query head on its key-value head; a key-value head's gradient
//!             adds its query heads' in ascending head order
//! ```
//!
//! The logits of a sequence are bit for bit those of [`super::repro::ReproLlama::forward`] over
//! the same tokens (a test holds the two together), so what a model is trained to do is what
//! it is served doing.

use rayon::prelude::*;

use super::repro::{linear, rmsnorm_rows, silu};
use super::rope::RopeTable;
use super::LlamaConfig;
use crate::batch::TokenBatch;
use crate::error::Result;
use crate::repro::kernels::{cross_entropy, matmul, softmax_row, transpose};
use crate::zoo::ParamLayout;

/// Activations of one decoder layer, kept for the backward pass (`bt` rows each).
struct LayerActs {
    x_in: Vec<f32>,
    xn1: Vec<f32>,
    r1: Vec<f32>,
    /// Queries and keys after the rotation.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention weights, `[bt, heads, t]` (position `p` uses `0..=p`).
    probs: Vec<f32>,
    atty: Vec<f32>,
    x_mid: Vec<f32>,
    xn2: Vec<f32>,
    r2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

struct Forward {
    layers: Vec<LayerActs>,
    x_final: Vec<f32>,
    xn_final: Vec<f32>,
    r_final: Vec<f32>,
    logits: Vec<f32>,
}

/// Parameters (or gradients) by Hugging Face name.
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

fn layer_name(l: usize, name: &str) -> String {
    format!("model.layers.{l}.{name}")
}

/// The output head's name: the embeddings when they are tied.
fn head_name(c: &LlamaConfig) -> &'static str {
    if c.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    }
}

/// The dimensions of one batch.
#[derive(Clone, Copy)]
struct Dims {
    /// Sequences.
    b: usize,
    /// Positions per sequence.
    t: usize,
    h: usize,
    inter: usize,
    heads: usize,
    kv_heads: usize,
    /// Head size.
    d: usize,
}

impl Dims {
    fn new(c: &LlamaConfig, b: usize, t: usize) -> Self {
        Self {
            b,
            t,
            h: c.hidden_size,
            inter: c.intermediate_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            d: c.head_dim(),
        }
    }
    fn bt(&self) -> usize {
        self.b * self.t
    }
    fn kvw(&self) -> usize {
        self.kv_heads * self.d
    }
}

/// Rotates every head of `x` (`bt` rows of `heads × d`) to its position in its sequence, or
/// back (`transpose`) in the backward pass.
fn rotate(x: &mut [f32], dims: Dims, heads: usize, rope: &RopeTable, transpose: bool) {
    let width = heads * dims.d;
    x.par_chunks_mut(width).enumerate().for_each(|(row, r)| {
        let p = row % dims.t;
        for head in r.chunks_mut(dims.d) {
            if transpose {
                rope.apply_transpose(head, p);
            } else {
                rope.apply(head, p);
            }
        }
    });
}

fn forward(c: &LlamaConfig, p: &Params<'_>, inputs: &[u32], dims: Dims) -> Forward {
    let Dims {
        t,
        h,
        inter,
        heads,
        kv_heads,
        d,
        ..
    } = dims;
    let (bt, kvw) = (dims.bt(), dims.kvw());
    let embed = p.get("model.embed_tokens.weight");
    let mut x = Vec::with_capacity(bt * h);
    for &tok in inputs {
        let tok = tok as usize;
        x.extend_from_slice(&embed[tok * h..(tok + 1) * h]);
    }
    let mut rope = RopeTable::new(d, c.rope_theta);
    rope.ensure(t);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for l in 0..c.num_hidden_layers {
        let w = |n: &str| p.get(&layer_name(l, n));
        let x_in = x;
        let (xn1, r1) = rmsnorm_rows(&x_in, w("input_layernorm.weight"), c.rms_norm_eps);
        let mut q = linear(
            &xn1,
            &transpose(w("self_attn.q_proj.weight"), h, h),
            bt,
            h,
            h,
        );
        let mut k = linear(
            &xn1,
            &transpose(w("self_attn.k_proj.weight"), kvw, h),
            bt,
            h,
            kvw,
        );
        let v = linear(
            &xn1,
            &transpose(w("self_attn.v_proj.weight"), kvw, h),
            bt,
            h,
            kvw,
        );
        rotate(&mut q, dims, heads, &rope, false);
        rotate(&mut k, dims, kv_heads, &rope, false);
        // Each (row, head) is independent; its sums run in the inference pass's order.
        let mut atty = vec![0.0f32; bt * h];
        let mut probs = vec![0.0f32; bt * heads * t];
        atty.par_chunks_mut(d)
            .zip(probs.par_chunks_mut(t))
            .enumerate()
            .for_each(|(rh, (out, weights))| {
                let (row, head) = (rh / heads, rh % heads);
                let (seq, pos) = (row / t, row % t);
                let kv = head / group;
                let qh = &q[row * h + head * d..][..d];
                let scores = &mut weights[..=pos];
                for (j, s) in scores.iter_mut().enumerate() {
                    let kj = &k[(seq * t + j) * kvw + kv * d..][..d];
                    let mut dot = 0.0f32;
                    for i in 0..d {
                        dot += qh[i] * kj[i];
                    }
                    *s = dot * scale;
                }
                softmax_row(scores);
                for (j, a) in scores.iter().enumerate() {
                    let vj = &v[(seq * t + j) * kvw + kv * d..][..d];
                    for i in 0..d {
                        out[i] += a * vj[i];
                    }
                }
            });
        let o = linear(
            &atty,
            &transpose(w("self_attn.o_proj.weight"), h, h),
            bt,
            h,
            h,
        );
        let mut x_mid = x_in.clone();
        for (xi, oi) in x_mid.iter_mut().zip(&o) {
            *xi += oi;
        }
        let (xn2, r2) = rmsnorm_rows(&x_mid, w("post_attention_layernorm.weight"), c.rms_norm_eps);
        let gate = linear(
            &xn2,
            &transpose(w("mlp.gate_proj.weight"), inter, h),
            bt,
            h,
            inter,
        );
        let up = linear(
            &xn2,
            &transpose(w("mlp.up_proj.weight"), inter, h),
            bt,
            h,
            inter,
        );
        let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
        let down = linear(
            &act,
            &transpose(w("mlp.down_proj.weight"), h, inter),
            bt,
            inter,
            h,
        );
        x = x_mid.clone();
        for (xi, di) in x.iter_mut().zip(&down) {
            *xi += di;
        }
        layers.push(LayerActs {
            x_in,
            xn1,
            r1,
            q,
            k,
            v,
            probs,
            atty,
            x_mid,
            xn2,
            r2,
            gate,
            up,
            act,
        });
    }
    let (xn_final, r_final) = rmsnorm_rows(&x, p.get("model.norm.weight"), c.rms_norm_eps);
    let head_t = transpose(p.get(head_name(c)), c.vocab_size, h);
    let logits = linear(&xn_final, &head_t, bt, h, c.vocab_size);
    Forward {
        layers,
        x_final: x,
        xn_final,
        r_final,
        logits,
    }
}

/// Through `y = x Wᵀ` with `W` `[out, inp]` (Hugging Face's layout): accumulates
/// `dx += dy W` (each output adds its `out` products ascending) and `dW += dyᵀ x` (each adds
/// its `m` rows ascending).
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    inp: usize,
    out: usize,
) {
    if let Some(dx) = dx {
        matmul(dx, dy, w, m, out, inp, true);
    }
    matmul(dw, &transpose(dy, m, out), x, out, m, inp, true);
}

/// Through `y = rmsnorm(x, w)` with the forward pass's row scales `r`: accumulates into `dx`
/// and `dw` (rows ascending).
fn rmsnorm_backward(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], r: &[f32]) {
    let n = w.len();
    let mut sums = vec![0.0f32; n];
    for ((dyr, xr), &rr) in dy.chunks_exact(n).zip(x.chunks_exact(n)).zip(r) {
        for i in 0..n {
            sums[i] += dyr[i] * (xr[i] * rr);
        }
    }
    for (d, s) in dw.iter_mut().zip(&sums) {
        *d += *s;
    }
    dx.par_chunks_mut(n)
        .zip(dy.par_chunks(n))
        .zip(x.par_chunks(n))
        .zip(r.par_iter())
        .for_each(|(((dxr, dyr), xr), &rr)| {
            let mut dot = 0.0f32;
            for i in 0..n {
                dot += (dyr[i] * w[i]) * (xr[i] * rr);
            }
            let mean = dot / n as f32;
            for i in 0..n {
                dxr[i] += rr * (dyr[i] * w[i] - (xr[i] * rr) * mean);
            }
        });
}

/// Causal grouped-query attention backward: the gradients of the (rotated) queries, keys and
/// values from that of the attention output `datty`. Each (sequence, query head) is worked
/// out on its own in gpt's order, then added into `dq`, `dk`, `dv` in ascending (sequence,
/// head) order, so a key-value head sums its query heads ascending.
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    datty: &[f32],
    a: &LayerActs,
    dims: Dims,
) {
    let Dims {
        b,
        t,
        h,
        heads,
        kv_heads,
        d,
        ..
    } = dims;
    let kvw = dims.kvw();
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let locals: Vec<Vec<f32>> = (0..b * heads)
        .into_par_iter()
        .map(|sh| {
            let (seq, head) = (sh / heads, sh % heads);
            let kv = head / group;
            // [t, (dq | dk | dv)] of this head.
            let mut local = vec![0.0f32; t * 3 * d];
            let mut datt = vec![0.0f32; t];
            let mut dpre = vec![0.0f32; t];
            for p in 0..t {
                let row = seq * t + p;
                let w = &a.probs[(row * heads + head) * t..][..=p];
                let dout = &datty[row * h + head * d..][..d];
                // Through the weighted sum of values.
                for j in 0..=p {
                    let vj = &a.v[(seq * t + j) * kvw + kv * d..][..d];
                    let mut s = 0.0f32;
                    for i in 0..d {
                        s += vj[i] * dout[i];
                    }
                    datt[j] = s;
                    let dvj = &mut local[j * 3 * d + 2 * d..][..d];
                    for i in 0..d {
                        dvj[i] += w[j] * dout[i];
                    }
                }
                // Through the softmax.
                let mut dot = 0.0f32;
                for j in 0..=p {
                    dot += w[j] * datt[j];
                }
                for j in 0..=p {
                    dpre[j] = w[j] * (datt[j] - dot);
                }
                // Through the scaled q · k.
                let qp = &a.q[row * h + head * d..][..d];
                for j in 0..=p {
                    let kj = &a.k[(seq * t + j) * kvw + kv * d..][..d];
                    let g = dpre[j] * scale;
                    for i in 0..d {
                        local[p * 3 * d + i] += kj[i] * g;
                    }
                    let dkj = &mut local[j * 3 * d + d..][..d];
                    for i in 0..d {
                        dkj[i] += qp[i] * g;
                    }
                }
            }
            local
        })
        .collect();
    for (sh, local) in locals.iter().enumerate() {
        let (seq, head) = (sh / heads, sh % heads);
        let kv = head / group;
        for p in 0..t {
            let row = seq * t + p;
            let src = &local[p * 3 * d..][..3 * d];
            let targets: [&mut [f32]; 3] = [
                &mut dq[row * h + head * d..][..d],
                &mut dk[row * kvw + kv * d..][..d],
                &mut dv[row * kvw + kv * d..][..d],
            ];
            for (part, dst) in targets.into_iter().enumerate() {
                for i in 0..d {
                    dst[i] += src[part * d + i];
                }
            }
        }
    }
}

/// Checks that `batch` fits the model: every sequence within its context, every token in its
/// vocabulary.
pub(crate) fn check(c: &LlamaConfig, batch: &TokenBatch) -> Result<()> {
    for row in batch.inputs.chunks(batch.len.max(1)) {
        c.check_tokens(0, row)?;
    }
    if let Some(&bad) = batch.targets.iter().find(|&&t| t as usize >= c.vocab_size) {
        return Err(crate::error::ComputeError::StateMismatch(format!(
            "target {bad} is outside the vocabulary of {}",
            c.vocab_size
        )));
    }
    Ok(())
}

/// Logits `[rows × len, vocab]` of `batch`'s inputs, each sequence from position 0: bit for
/// bit [`super::repro::ReproLlama::forward`]'s over the same tokens.
pub fn logits(
    c: &LlamaConfig,
    layout: &ParamLayout,
    params: &[f32],
    batch: &TokenBatch,
) -> Result<Vec<f32>> {
    check(c, batch)?;
    let p = Params {
        layout,
        data: params,
    };
    Ok(forward(c, &p, &batch.inputs, Dims::new(c, batch.rows, batch.len)).logits)
}

/// Mean cross-entropy over the scored positions of `batch`; writes the gradient of that loss
/// with respect to every parameter into `grads` (overwritten), in `layout` order.
pub fn loss_and_grads(
    c: &LlamaConfig,
    layout: &ParamLayout,
    params: &[f32],
    batch: &TokenBatch,
    grads: &mut [f32],
) -> Result<f32> {
    check(c, batch)?;
    let dims = Dims::new(c, batch.rows, batch.len);
    let (bt, h, inter, v, kvw) = (dims.bt(), dims.h, dims.inter, c.vocab_size, dims.kvw());
    let p = Params {
        layout,
        data: params,
    };
    let mut fw = forward(c, &p, &batch.inputs, dims);

    let logits = std::mem::take(&mut fw.logits);
    let (loss, dlogits) = cross_entropy(logits, v, &batch.targets, &batch.scored);

    grads.iter_mut().for_each(|g| *g = 0.0);
    // The head first: with tied embeddings, the embedding rows the inputs used add to it last.
    let mut dxn = vec![0.0f32; bt * h];
    linear_backward(
        Some(&mut dxn),
        grad(layout, grads, head_name(c)),
        &dlogits,
        &fw.xn_final,
        p.get(head_name(c)),
        bt,
        h,
        v,
    );
    drop(dlogits);
    let mut rope = RopeTable::new(dims.d, c.rope_theta);
    rope.ensure(dims.t);
    let mut dx = vec![0.0f32; bt * h];
    rmsnorm_backward(
        &mut dx,
        grad(layout, grads, "model.norm.weight"),
        &dxn,
        &fw.x_final,
        p.get("model.norm.weight"),
        &fw.r_final,
    );
    for l in (0..c.num_hidden_layers).rev() {
        let a = &fw.layers[l];
        let name = |n: &str| layer_name(l, n);
        let w = |n: &str| p.get(&layer_name(l, n));
        // x_out = x_mid + down(silu(gate(xn2)) ⊙ up(xn2)), xn2 = rmsnorm(x_mid).
        let mut dact = vec![0.0f32; bt * inter];
        linear_backward(
            Some(&mut dact),
            grad(layout, grads, &name("mlp.down_proj.weight")),
            &dx,
            &a.act,
            w("mlp.down_proj.weight"),
            bt,
            inter,
            h,
        );
        let mut dgate = vec![0.0f32; bt * inter];
        let mut dup = vec![0.0f32; bt * inter];
        dgate
            .par_iter_mut()
            .zip(dup.par_iter_mut())
            .enumerate()
            .for_each(|(k, (dg, du))| {
                let (g, u) = (a.gate[k], a.up[k]);
                let sig = 1.0 / (1.0 + libm::expf(-g));
                *du = dact[k] * silu(g);
                *dg = (dact[k] * u) * (sig * (1.0 + g * (1.0 - sig)));
            });
        let mut dxn2 = vec![0.0f32; bt * h];
        for (dy, n) in [
            (&dgate, "mlp.gate_proj.weight"),
            (&dup, "mlp.up_proj.weight"),
        ] {
            linear_backward(
                Some(&mut dxn2),
                grad(layout, grads, &name(n)),
                dy,
                &a.xn2,
                w(n),
                bt,
                h,
                inter,
            );
        }
        let mut dx_mid = dx; // the residual path
        rmsnorm_backward(
            &mut dx_mid,
            grad(layout, grads, &name("post_attention_layernorm.weight")),
            &dxn2,
            &a.x_mid,
            w("post_attention_layernorm.weight"),
            &a.r2,
        );
        // x_mid = x_in + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1))), xn1 = rmsnorm(x_in).
        let mut datty = vec![0.0f32; bt * h];
        linear_backward(
            Some(&mut datty),
            grad(layout, grads, &name("self_attn.o_proj.weight")),
            &dx_mid,
            &a.atty,
            w("self_attn.o_proj.weight"),
            bt,
            h,
            h,
        );
        let mut dq = vec![0.0f32; bt * h];
        let mut dk = vec![0.0f32; bt * kvw];
        let mut dv = vec![0.0f32; bt * kvw];
        attention_backward(&mut dq, &mut dk, &mut dv, &datty, a, dims);
        rotate(&mut dq, dims, dims.heads, &rope, true);
        rotate(&mut dk, dims, dims.kv_heads, &rope, true);
        let mut dxn1 = vec![0.0f32; bt * h];
        for (dy, n, out) in [
            (&dq, "self_attn.q_proj.weight", h),
            (&dk, "self_attn.k_proj.weight", kvw),
            (&dv, "self_attn.v_proj.weight", kvw),
        ] {
            linear_backward(
                Some(&mut dxn1),
                grad(layout, grads, &name(n)),
                dy,
                &a.xn1,
                w(n),
                bt,
                h,
                out,
            );
        }
        let mut dx_in = dx_mid; // the residual path
        rmsnorm_backward(
            &mut dx_in,
            grad(layout, grads, &name("input_layernorm.weight")),
            &dxn1,
            &a.x_in,
            w("input_layernorm.weight"),
            &a.r1,
        );
        dx = dx_in;
    }
    // Embeddings: each input position's gradient added to its token's row, ascending.
    let embed = grad(layout, grads, "model.embed_tokens.weight");
    for (i, &tok) in batch.inputs.iter().enumerate() {
        let tok = tok as usize;
        for j in 0..h {
            embed[tok * h + j] += dx[i * h + j];
        }
    }
    Ok(loss)
}
