//! Training the `llama` family in the `native` and `cuda` profiles: the maths of
//! [`super::train`] (and so of [`super::repro`]) on stock candle ops, differentiated by candle's
//! autograd. RMSNorm and the rotation use candle's composed forms (`rms_norm_slow`,
//! `rope_slow`): the fused kernels the inference path uses have no backward pass. Fast, but only
//! close to `repro`; audits of these profiles compare with the tolerance of
//! [`crate::tolerance`].

use candle_core::{DType, Device, Tensor, D};

use super::rope::RopeTable;
use super::LlamaConfig;
use crate::batch::TokenBatch;
use crate::error::Result;
use crate::native::{causal_mask, masked, scored_cross_entropy, Weights};
use crate::zoo::ParamLayout;

/// Logits `[rows × len, vocab]` of the batch's inputs, each sequence from position 0.
fn forward(c: &LlamaConfig, w: &Weights, batch: &TokenBatch, device: &Device) -> Result<Tensor> {
    let (rows, len) = (batch.rows, batch.len);
    let d = c.head_dim();
    let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
    let group = heads / kv_heads;
    let eps = c.rms_norm_eps;
    let mut rope = RopeTable::new(d, c.rope_theta);
    rope.ensure(len);
    let cos = Tensor::from_slice(&rope.cos, (len, d / 2), device)?;
    let sin = Tensor::from_slice(&rope.sin, (len, d / 2), device)?;
    let mask = causal_mask(rows, heads, len, device)?;
    let scale = 1.0 / (d as f64).sqrt();
    let linear = |x: &Tensor, name: String| -> Result<Tensor> { Ok(x.matmul(&w.get(&name).t()?)?) };
    let ids = Tensor::from_slice(&batch.inputs, rows * len, device)?;
    let mut x = w.get("model.embed_tokens.weight").index_select(&ids, 0)?; // [rows·len, h]
    for l in 0..c.num_hidden_layers {
        let name = |n: &str| format!("model.layers.{l}.{n}");
        let xn = candle_nn::ops::rms_norm_slow(&x, w.get(&name("input_layernorm.weight")), eps)?;
        // [rows·len, n·d] → [rows, n, len, d]
        let heads_first = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((rows, len, n, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads_first(linear(&xn, name("self_attn.q_proj.weight"))?, heads)?;
        let k = heads_first(linear(&xn, name("self_attn.k_proj.weight"))?, kv_heads)?;
        let v = heads_first(linear(&xn, name("self_attn.v_proj.weight"))?, kv_heads)?;
        let q = candle_nn::rotary_emb::rope_slow(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_slow(&k, &cos, &sin)?;
        // Query head i reads key-value head i / group: repeat each key-value head `group`
        // times in place (Hugging Face's `repeat_kv`).
        let repeat = |t: Tensor| -> Result<Tensor> {
            if group == 1 {
                return Ok(t);
            }
            Ok(Tensor::cat(&vec![&t; group], 2)?.reshape((rows, heads, len, d))?)
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        let att = candle_nn::ops::softmax(&masked(&att, &mask)?, D::Minus1)?;
        let y = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows * len, heads * d))?;
        x = (x + linear(&y, name("self_attn.o_proj.weight"))?)?;
        let xn = candle_nn::ops::rms_norm_slow(
            &x,
            w.get(&name("post_attention_layernorm.weight")),
            eps,
        )?;
        let act = (linear(&xn, name("mlp.gate_proj.weight"))?.silu()?
            * linear(&xn, name("mlp.up_proj.weight"))?)?;
        x = (x + linear(&act, name("mlp.down_proj.weight"))?)?;
    }
    let xn = candle_nn::ops::rms_norm_slow(&x, w.get("model.norm.weight"), eps)?;
    let head = if c.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    linear(&xn, head.to_owned())
}

/// Logits `[rows × len, vocab]` of `batch`'s inputs: close to [`super::train::logits`].
pub fn logits(
    device: &Device,
    c: &LlamaConfig,
    layout: &ParamLayout,
    params: &[f32],
    batch: &TokenBatch,
) -> Result<Vec<f32>> {
    super::train::check(c, batch)?;
    let w = Weights::new(device, layout, params)?;
    Ok(forward(c, &w, batch, device)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// As [`super::train::loss_and_grads`], with candle's kernels and autograd.
pub fn loss_and_grads(
    device: &Device,
    c: &LlamaConfig,
    layout: &ParamLayout,
    params: &[f32],
    batch: &TokenBatch,
    grads: &mut [f32],
) -> Result<f32> {
    super::train::check(c, batch)?;
    let w = Weights::new(device, layout, params)?;
    let logits = forward(c, &w, batch, device)?;
    let loss = scored_cross_entropy(&logits, batch, device)?;
    w.grads(&loss, layout, grads)?;
    Ok(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}
