//! The `native` (CPU) and `cuda` profiles: the same models and losses as [`crate::repro`],
//! written with stock candle ops and differentiated by candle's autograd. Fast, but only
//! reproducible on the same kind of device, so audits of these profiles compare with a tolerance.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use market_protocol::Activation;

use crate::batch::{RegressionBatch, TokenBatch};
use crate::error::Result;
use crate::zoo::{GptConfig, MlpConfig, ParamLayout};

/// Parameters as candle variables (so autograd tracks them) or plain tensors.
pub(crate) struct Weights {
    vars: BTreeMap<String, Var>,
}

impl Weights {
    pub(crate) fn new(device: &Device, layout: &ParamLayout, params: &[f32]) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for slot in layout.slots() {
            let t = Tensor::from_slice(&params[slot.range()], slot.shape.as_slice(), device)?;
            vars.insert(slot.name.clone(), Var::from_tensor(&t)?);
        }
        Ok(Self { vars })
    }

    pub(crate) fn get(&self, name: &str) -> &Tensor {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("model layout has no parameter {name}"))
            .as_tensor()
    }

    /// Gradients of `loss` packed in layout order (zero where a parameter got none).
    pub(crate) fn grads(&self, loss: &Tensor, layout: &ParamLayout, out: &mut [f32]) -> Result<()> {
        let store = loss.backward()?;
        for slot in layout.slots() {
            let dst = &mut out[slot.range()];
            match store.get(self.get(&slot.name)) {
                Some(g) => {
                    dst.copy_from_slice(&g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
                }
                None => dst.iter_mut().for_each(|v| *v = 0.0),
            }
        }
        Ok(())
    }
}

fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(w)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

fn gpt_forward(
    cfg: &GptConfig,
    w: &Weights,
    inputs: &[u32],
    rows: usize,
    len: usize,
    device: &Device,
) -> Result<Tensor> {
    let (c, h) = (cfg.width, cfg.heads);
    let hs = c / h;
    let ids = Tensor::from_slice(inputs, rows * len, device)?;
    let tok = w.get("wte").index_select(&ids, 0)?;
    let pos = w.get("wpe").narrow(0, 0, len)?.repeat((rows, 1))?;
    let mut x = (tok + pos)?; // [rows * len, c]
    let mask = causal_mask(rows, h, len, device)?;
    for l in 0..cfg.layers {
        let p = |n: &str| w.get(&format!("h{l:02}.{n}")).clone();
        let ln1 = layer_norm(&x, &p("ln1.w"), &p("ln1.b"))?;
        let qkv = linear(&ln1, &p("attn.qkv.w"), Some(&p("attn.qkv.b")))?;
        let heads = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, i * c, c)?
                .reshape((rows, len, h, hs))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let att = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hs as f64).sqrt()))?;
        let att = masked(&att, &mask)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let y = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows * len, c))?;
        x = (&x + linear(&y, &p("attn.proj.w"), Some(&p("attn.proj.b")))?)?;
        let ln2 = layer_norm(&x, &p("ln2.w"), &p("ln2.b"))?;
        let fc = linear(&ln2, &p("mlp.fc.w"), Some(&p("mlp.fc.b")))?.gelu()?;
        x = (&x + linear(&fc, &p("mlp.proj.w"), Some(&p("mlp.proj.b")))?)?;
    }
    let lnf = layer_norm(&x, w.get("lnf.w"), w.get("lnf.b"))?;
    linear(&lnf, w.get("head.w"), None)
}

/// See [`crate::backend::Backend::gpt_loss_and_grads`].
pub fn gpt_loss_and_grads(
    device: &Device,
    cfg: &GptConfig,
    layout: &ParamLayout,
    params: &[f32],
    batch: &TokenBatch,
    grads: &mut [f32],
) -> Result<f32> {
    let w = Weights::new(device, layout, params)?;
    let logits = gpt_forward(cfg, &w, &batch.inputs, batch.rows, batch.len, device)?;
    let loss = scored_cross_entropy(&logits, batch, device)?;
    w.grads(&loss, layout, grads)?;
    Ok(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// The mean cross-entropy of `logits` (`[rows × len, vocab]`) over the batch's scored
/// positions, as a scalar tensor autograd can differentiate: the loss of every token model.
pub(crate) fn scored_cross_entropy(
    logits: &Tensor,
    batch: &TokenBatch,
    device: &Device,
) -> Result<Tensor> {
    let n = batch.rows * batch.len;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let targets = Tensor::from_slice(&batch.targets, (n, 1), device)?;
    let picked = logp.gather(&targets, 1)?;
    let scored: Vec<f32> = batch
        .scored
        .iter()
        .map(|s| f32::from(u8::from(*s)))
        .collect();
    let count = scored.iter().filter(|s| **s > 0.0).count().max(1) as f64;
    let mask = Tensor::from_slice(&scored, (n, 1), device)?;
    Ok(((picked * mask)?.sum_all()? * (-1.0 / count))?)
}

/// The causal mask of `len` positions for `rows` sequences of `heads` heads: true (1) where a
/// query may not see a key. With [`masked`], the one mask of every attention trained here.
pub(crate) fn causal_mask(
    rows: usize,
    heads: usize,
    len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mask: Vec<u8> = (0..len)
        .flat_map(|i| (0..len).map(move |j| u8::from(j > i)))
        .collect();
    let shape = (rows, heads, len, len);
    let mask = Tensor::from_slice(&mask, (len, len), device)?.broadcast_as(shape)?;
    let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?.broadcast_as(shape)?;
    Ok((mask, neg_inf))
}

/// Attention scores with the masked ones set to −∞ (their gradient is zero).
pub(crate) fn masked(att: &Tensor, mask: &(Tensor, Tensor)) -> Result<Tensor> {
    Ok(mask.0.where_cond(&mask.1, att)?)
}

/// See [`crate::backend::Backend::gpt_logits`].
pub fn gpt_logits(
    device: &Device,
    cfg: &GptConfig,
    layout: &ParamLayout,
    params: &[f32],
    inputs: &[u32],
    rows: usize,
    len: usize,
) -> Result<Vec<f32>> {
    let w = Weights::new(device, layout, params)?;
    Ok(gpt_forward(cfg, &w, inputs, rows, len, device)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn mlp_forward(cfg: &MlpConfig, w: &Weights, x: &Tensor) -> Result<Tensor> {
    let layers = cfg.widths.len() - 1;
    let mut h = x.clone();
    for i in 0..layers {
        h = linear(
            &h,
            w.get(&format!("l{i:02}.w")),
            Some(w.get(&format!("l{i:02}.b"))),
        )?;
        if i + 1 < layers {
            h = match cfg.activation {
                Activation::Relu => h.relu()?,
                Activation::Tanh => h.tanh()?,
                Activation::Gelu => h.gelu()?,
            };
        }
    }
    Ok(h)
}

/// See [`crate::backend::Backend::mlp_loss_and_grads`].
pub fn mlp_loss_and_grads(
    device: &Device,
    cfg: &MlpConfig,
    layout: &ParamLayout,
    params: &[f32],
    batch: &RegressionBatch,
    grads: &mut [f32],
) -> Result<f32> {
    let w = Weights::new(device, layout, params)?;
    let x = Tensor::from_slice(&batch.x, (batch.rows, cfg.widths[0]), device)?;
    let y = Tensor::from_slice(
        &batch.y,
        (batch.rows, cfg.widths[cfg.widths.len() - 1]),
        device,
    )?;
    let loss = (mlp_forward(cfg, &w, &x)? - y)?.sqr()?.mean_all()?;
    w.grads(&loss, layout, grads)?;
    Ok(loss.to_scalar::<f32>()?)
}

/// See [`crate::backend::Backend::mlp_predict`].
pub fn mlp_predict(
    device: &Device,
    cfg: &MlpConfig,
    layout: &ParamLayout,
    params: &[f32],
    x: &[f32],
    rows: usize,
) -> Result<Vec<f32>> {
    let w = Weights::new(device, layout, params)?;
    let x = Tensor::from_slice(x, (rows, cfg.widths[0]), device)?;
    Ok(mlp_forward(cfg, &w, &x)?.flatten_all()?.to_vec1::<f32>()?)
}
