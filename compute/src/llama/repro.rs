//! The `llama` forward pass in the `repro` profile: every value is one fixed sequence of
//! binary32 operations ([`crate::repro::kernels`]' rules), so a worker's tokens are recomputed
//! bit for bit by any verifier on any CPU. The definitions (`spec/COMPUTE.md` section 11):
//!
//! ```text
//! rmsnorm(x, w)[i] = w[i] * (x[i] * r),  r = 1 / sqrt(s / n + eps),  s = Σ_j x[j]² ascending
//! silu(x)          = x / (1 + expf(−x))
//! score(p, j)      = (Σ_i q_p[i] · k_j[i] ascending) · (1 / sqrt(d))      for j ≤ p
//! attn_p[i]        = Σ_j softmax(score(p, ·))_j · v_j[i]                 ascending j
//! ```
//!
//! Matrices are stored transposed (`[in, out]`) once, at load, so the matmul kernel's column
//! tiles vectorize; each output still adds its products in ascending input order.

use rayon::prelude::*;

use super::rope::RopeTable;
use super::{LlamaConfig, LlamaWeights};
use crate::error::Result;
use crate::repro::kernels::{matmul, softmax_row, transpose};

/// One decoder layer, matrices transposed to `[in, out]`.
#[derive(Debug, Clone)]
struct Layer {
    input_norm: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    post_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// A `llama` model ready for `repro` forward passes.
#[derive(Debug, Clone)]
pub struct ReproLlama {
    config: LlamaConfig,
    embed: Vec<f32>,
    /// The output head transposed: `[hidden, vocab]`.
    head: Vec<f32>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
}

/// Keys and values of the positions seen so far, per layer (`[position, kv_width]`).
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    rope: RopeTable,
}

impl KvCache {
    /// An empty cache for `config`.
    pub fn new(config: &LlamaConfig) -> Self {
        Self {
            keys: vec![Vec::new(); config.num_hidden_layers],
            values: vec![Vec::new(); config.num_hidden_layers],
            len: 0,
            rope: RopeTable::new(config.head_dim(), config.rope_theta),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// RMSNorm of each row of `x` (`rows × n`) with weight `w`, into a new buffer.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    rmsnorm_rows(x, w, eps).0
}

/// [`rmsnorm`], also returning each row's scale `r` (what the backward pass needs).
pub fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let n = w.len();
    let mut out = vec![0.0f32; x.len()];
    let mut scales = vec![0.0f32; x.len() / n];
    out.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(scales.par_iter_mut())
        .for_each(|((o, row), scale)| {
            let mut s = 0.0f32;
            for v in row {
                s += v * v;
            }
            let r = 1.0 / (s / n as f32 + eps).sqrt();
            for i in 0..n {
                o[i] = w[i] * (row[i] * r);
            }
            *scale = r;
        });
    (out, scales)
}

/// `x / (1 + expf(−x))`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// `x w_t` for `rows` rows, `w_t` transposed to `[inp, out]`.
pub(crate) fn linear(x: &[f32], w_t: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * out];
    matmul(&mut y, x, w_t, rows, inp, out, false);
    y
}

impl ReproLlama {
    /// Prepares `weights` (transposing every matrix once).
    pub fn new(weights: &LlamaWeights) -> Self {
        let c = weights.config;
        let (h, i, kv) = (c.hidden_size, c.intermediate_size, c.kv_width());
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let t = |n: &str| weights.tensor(&format!("model.layers.{l}.{n}"));
                Layer {
                    input_norm: t("input_layernorm.weight").to_vec(),
                    q: transpose(t("self_attn.q_proj.weight"), h, h),
                    k: transpose(t("self_attn.k_proj.weight"), kv, h),
                    v: transpose(t("self_attn.v_proj.weight"), kv, h),
                    o: transpose(t("self_attn.o_proj.weight"), h, h),
                    post_norm: t("post_attention_layernorm.weight").to_vec(),
                    gate: transpose(t("mlp.gate_proj.weight"), i, h),
                    up: transpose(t("mlp.up_proj.weight"), i, h),
                    down: transpose(t("mlp.down_proj.weight"), h, i),
                }
            })
            .collect();
        Self {
            config: c,
            embed: weights.tensor("model.embed_tokens.weight").to_vec(),
            head: transpose(weights.head(), c.vocab_size, h),
            norm: weights.tensor("model.norm.weight").to_vec(),
            layers,
        }
    }

    /// The config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Runs `tokens` at the positions after those in `cache` (adding them to it) and returns
    /// the logits of the last token (`vocab`), or of every token (`tokens × vocab`) when
    /// `every_position` (a verifier re-checking generated tokens in one pass).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        every_position: bool,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, inter, kvw, d) = (
            c.hidden_size,
            c.intermediate_size,
            c.kv_width(),
            c.head_dim(),
        );
        let t = tokens.len();
        let start = cache.len;
        c.check_tokens(start, tokens)?;
        let mut x = Vec::with_capacity(t * h);
        for &tok in tokens {
            let tok = tok as usize;
            x.extend_from_slice(&self.embed[tok * h..(tok + 1) * h]);
        }
        cache.rope.ensure(start + t);
        let heads = c.num_attention_heads;
        let group = heads / c.num_key_value_heads;
        let scale = 1.0 / (d as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let xn = rmsnorm(&x, &layer.input_norm, c.rms_norm_eps);
            let mut q = linear(&xn, &layer.q, t, h, h);
            let mut k = linear(&xn, &layer.k, t, h, kvw);
            let v = linear(&xn, &layer.v, t, h, kvw);
            for p in 0..t {
                for head in q[p * h..(p + 1) * h].chunks_mut(d) {
                    cache.rope.apply(head, start + p);
                }
                for head in k[p * kvw..(p + 1) * kvw].chunks_mut(d) {
                    cache.rope.apply(head, start + p);
                }
            }
            cache.keys[l].extend_from_slice(&k);
            cache.values[l].extend_from_slice(&v);
            let (keys, values) = (&cache.keys[l], &cache.values[l]);
            // Attention: each (position, head) is independent; its sums run in fixed order.
            let mut att = vec![0.0f32; t * h];
            att.par_chunks_mut(d).enumerate().for_each(|(ph, out)| {
                let (p, head) = (ph / heads, ph % heads);
                let kv = head / group;
                let pos = start + p;
                let qh = &q[p * h + head * d..p * h + (head + 1) * d];
                let mut scores = Vec::with_capacity(pos + 1);
                for j in 0..=pos {
                    let kj = &keys[j * kvw + kv * d..j * kvw + (kv + 1) * d];
                    let mut s = 0.0f32;
                    for i in 0..d {
                        s += qh[i] * kj[i];
                    }
                    scores.push(s * scale);
                }
                softmax_row(&mut scores);
                for (j, w) in scores.iter().enumerate() {
                    let vj = &values[j * kvw + kv * d..j * kvw + (kv + 1) * d];
                    for i in 0..d {
                        out[i] += w * vj[i];
                    }
                }
            });
            let o = linear(&att, &layer.o, t, h, h);
            for (xi, oi) in x.iter_mut().zip(&o) {
                *xi += oi;
            }
            let xn = rmsnorm(&x, &layer.post_norm, c.rms_norm_eps);
            let gate = linear(&xn, &layer.gate, t, h, inter);
            let up = linear(&xn, &layer.up, t, h, inter);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
            let down = linear(&act, &layer.down, t, inter, h);
            for (xi, di) in x.iter_mut().zip(&down) {
                *xi += di;
            }
        }
        cache.len += t;
        let rows = if every_position { t } else { 1 };
        let last = &x[(t - rows) * h..];
        let xn = rmsnorm(last, &self.norm, c.rms_norm_eps);
        Ok(linear(&xn, &self.head, rows, h, c.vocab_size))
    }
}
