//! The `llama` forward pass in the `native` profile: the same maths as [`super::repro`] on
//! stock candle ops (its matmul, RMSNorm, rotary and softmax kernels), so it is fast but only
//! close to `repro`, not equal; audits of this profile compare with a tolerance. The rotary
//! table is the shared [`RopeTable`], so the two profiles differ only in their kernels.

use candle_core::{DType, Device, Tensor};

use super::rope::RopeTable;
use super::{LlamaConfig, LlamaWeights};
use crate::error::Result;

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// A `llama` model on a candle device.
#[derive(Debug)]
pub struct NativeLlama {
    config: LlamaConfig,
    device: Device,
    embed: Tensor,
    head: Tensor,
    norm: Tensor,
    layers: Vec<Layer>,
}

/// Keys and values so far (`[kv_heads, positions, head_dim]` per layer).
#[derive(Debug)]
pub struct NativeCache {
    keys: Vec<Option<Tensor>>,
    values: Vec<Option<Tensor>>,
    len: usize,
    rope: RopeTable,
}

impl NativeCache {
    /// An empty cache for `config`.
    pub fn new(config: &LlamaConfig) -> Self {
        Self {
            keys: vec![None; config.num_hidden_layers],
            values: vec![None; config.num_hidden_layers],
            len: 0,
            rope: RopeTable::new(config.head_dim(), config.rope_theta),
        }
    }
}

impl NativeLlama {
    /// Loads `weights` onto `device`.
    pub fn new(weights: &LlamaWeights, device: &Device) -> Result<Self> {
        let t = |name: &str| -> Result<Tensor> {
            let slot = weights.layout.slot(name);
            Ok(Tensor::from_slice(
                &weights.params[slot.range()],
                slot.shape.as_slice(),
                device,
            )?)
        };
        let c = weights.config;
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let n = |s: &str| t(&format!("model.layers.{l}.{s}"));
                Ok(Layer {
                    input_norm: n("input_layernorm.weight")?,
                    q: n("self_attn.q_proj.weight")?,
                    k: n("self_attn.k_proj.weight")?,
                    v: n("self_attn.v_proj.weight")?,
                    o: n("self_attn.o_proj.weight")?,
                    post_norm: n("post_attention_layernorm.weight")?,
                    gate: n("mlp.gate_proj.weight")?,
                    up: n("mlp.up_proj.weight")?,
                    down: n("mlp.down_proj.weight")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = t("model.embed_tokens.weight")?;
        let head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            t("lm_head.weight")?
        };
        Ok(Self {
            config: c,
            device: device.clone(),
            embed,
            head,
            norm: t("model.norm.weight")?,
            layers,
        })
    }

    /// The config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// As [`super::repro::ReproLlama::forward`].
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut NativeCache,
        every_position: bool,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, d) = (c.hidden_size, c.head_dim());
        let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
        let group = heads / kv_heads;
        let t = tokens.len();
        let start = cache.len;
        c.check_tokens(start, tokens)?;
        cache.rope.ensure(start + t);
        let half = d / 2;
        let cos = Tensor::from_slice(
            &cache.rope.cos[start * half..(start + t) * half],
            (t, half),
            &self.device,
        )?;
        let sin = Tensor::from_slice(
            &cache.rope.sin[start * half..(start + t) * half],
            (t, half),
            &self.device,
        )?;
        let total = start + t;
        // Query row r of a key-value group is (g, p) with r = g·t + p; it sees keys ≤ start + p.
        let mask: Vec<f32> = (0..group * t)
            .flat_map(|r| {
                let p = r % t;
                (0..total).map(move |j| {
                    if j <= start + p {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (group * t, total), &self.device)?;
        let ids = Tensor::from_slice(tokens, t, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let scale = 1.0 / (d as f64).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let xn = candle_nn::ops::rms_norm(&x, &layer.input_norm, c.rms_norm_eps)?;
            let q = xn.matmul(&layer.q.t()?)?;
            let k = xn.matmul(&layer.k.t()?)?;
            let v = xn.matmul(&layer.v.t()?)?;
            let heads_first = |x: Tensor, n: usize| -> Result<Tensor> {
                Ok(x.reshape((t, n, d))?.transpose(0, 1)?.contiguous()?)
            };
            let q = candle_nn::rotary_emb::rope(&heads_first(q, heads)?.unsqueeze(0)?, &cos, &sin)?
                .squeeze(0)?;
            let k =
                candle_nn::rotary_emb::rope(&heads_first(k, kv_heads)?.unsqueeze(0)?, &cos, &sin)?
                    .squeeze(0)?;
            let v = heads_first(v, kv_heads)?;
            let k = match cache.keys[l].take() {
                Some(prev) => Tensor::cat(&[&prev, &k], 1)?,
                None => k,
            };
            let v = match cache.values[l].take() {
                Some(prev) => Tensor::cat(&[&prev, &v], 1)?,
                None => v,
            };
            // Heads of one group share their keys: [kv, group·t, d] × [kv, d, total].
            let qg = q.reshape((kv_heads, group * t, d))?;
            let att = (qg.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let out = att
                .matmul(&v)?
                .reshape((heads, t, d))?
                .transpose(0, 1)?
                .reshape((t, h))?;
            cache.keys[l] = Some(k);
            cache.values[l] = Some(v);
            x = (x + out.matmul(&layer.o.t()?)?)?;
            let xn = candle_nn::ops::rms_norm(&x, &layer.post_norm, c.rms_norm_eps)?;
            let act = (xn.matmul(&layer.gate.t()?)?.silu()? * xn.matmul(&layer.up.t()?)?)?;
            x = (x + act.matmul(&layer.down.t()?)?)?;
        }
        cache.len += t;
        let rows = if every_position { t } else { 1 };
        let last = x.narrow(0, t - rows, rows)?;
        let xn = candle_nn::ops::rms_norm(&last, &self.norm, c.rms_norm_eps)?;
        let logits = xn.matmul(&self.head.t()?)?;
        Ok(logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}
