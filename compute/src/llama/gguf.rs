//! Pretrained `llama` weights and tokenizer from a GGUF file (llama.cpp's format), read with
//! candle's GGUF reader.
//!
//! Tensors are dequantized to binary32 exactly as the format defines each block
//! (`spec/COMPUTE.md` section 11.3): F32 as is, F16 widened, `Q8_0` as `q·d`, `Q4_0` as
//! `(q − 8)·d`, `Q4_1` as `q·d + m` (two roundings, never fused), with `d` and `m` the block's
//! f16 scale and minimum. Other types are refused rather than guessed. llama.cpp stores the
//! query and key rows of each head interleaved for its rotary layout; they are put back in
//! Hugging Face's order here, so the weights (and anything trained from them) carry HF names
//! and layout.

use std::collections::BTreeMap;
use std::io::Cursor;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;

use super::{LlamaConfig, LlamaWeights};
use crate::error::{ComputeError, Result};

/// The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` (only `gpt2`, byte-level BPE, is supported).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer the model was trained with.
    pub pre: String,
    /// Token strings by id.
    pub tokens: Vec<String>,
    /// Token types by id (3 = control, 4 = user-defined: both matched whole in text).
    pub token_types: Vec<i32>,
    /// Merges, `"left right"`, by priority.
    pub merges: Vec<String>,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Whether a BOS token starts every sequence.
    pub add_bos: bool,
    /// The Jinja chat template.
    pub chat_template: Option<String>,
}

/// A GGUF file's model: config, weights (HF names, f32) and tokenizer.
#[derive(Debug, Clone)]
pub struct GgufModel {
    /// The weights.
    pub weights: LlamaWeights,
    /// The tokenizer.
    pub vocab: GgufVocab,
}

fn bad(reason: impl Into<String>) -> ComputeError {
    ComputeError::InvalidBlob {
        what: "GGUF model",
        reason: reason.into(),
    }
}

struct Meta<'a>(&'a std::collections::HashMap<String, Value>);

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
    fn u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| match v {
                Value::U32(x) => Ok(*x),
                Value::U64(x) => u32::try_from(*x).map_err(|_| bad(format!("`{key}` is {x}"))),
                Value::I32(x) => u32::try_from(*x).map_err(|_| bad(format!("`{key}` is {x}"))),
                other => Err(bad(format!("`{key}` is {other:?}, not an integer"))),
            })
            .transpose()
    }
    fn need_u32(&self, key: &str) -> Result<u32> {
        self.u32(key)?
            .ok_or_else(|| bad(format!("metadata `{key}` is missing")))
    }
    fn f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| v.to_f32().map_err(|e| bad(format!("`{key}`: {e}"))))
            .transpose()
    }
    fn string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| bad(format!("`{key}`: {e}")))
            })
            .transpose()
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        v.to_vec()
            .map_err(|e| bad(format!("`{key}`: {e}")))?
            .iter()
            .map(|s| {
                s.to_string()
                    .cloned()
                    .map_err(|e| bad(format!("`{key}`: {e}")))
            })
            .collect()
    }
    fn ints(&self, key: &str) -> Result<Vec<i32>> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        v.to_vec()
            .map_err(|e| bad(format!("`{key}`: {e}")))?
            .iter()
            .map(|s| s.to_i32().map_err(|e| bad(format!("`{key}`: {e}"))))
            .collect()
    }
}

/// The dtypes whose dequantization the spec defines.
fn supported(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0
    )
}

/// The HF name of a GGUF tensor, or `None` for one the model does not use.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    // One spelling per layer (`blk.01` or `blk.+1` would name a slot twice).
    if layer.to_string() != rest.split_once('.')?.0 {
        return None;
    }
    let hf = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's rotary permutation of a `[heads × d, in]` query or key matrix: GGUF row
/// `head·d + 2i + half` is HF row `head·d + half·(d/2) + i`.
fn unpermute(rows: &[f32], heads: usize, d: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.len()];
    for head in 0..heads {
        for i in 0..d / 2 {
            for half in 0..2 {
                let src = (head * d + 2 * i + half) * cols;
                let dst = (head * d + half * (d / 2) + i) * cols;
                out[dst..dst + cols].copy_from_slice(&rows[src..src + cols]);
            }
        }
    }
    out
}

/// Most elements of one metadata array (merges of the largest vocabulary allowed, with room).
pub const MAX_METADATA_ARRAY: u64 = 4 * super::limits::MAX_VOCAB as u64;
/// Most metadata values in all (candle holds each as a 32-byte value, whatever its size on
/// disk, so a file of byte arrays would otherwise grow 32-fold in memory before any check).
pub const MAX_METADATA_VALUES: u64 = 4_000_000;
/// Most metadata entries.
const MAX_METADATA_KEYS: u64 = 4096;

/// A cursor over the header's bytes.
struct At<'a>(&'a [u8], usize);

impl At<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8]> {
        let n = usize::try_from(n).map_err(|_| bad("truncated header"))?;
        let end = self.1.checked_add(n).filter(|&e| e <= self.0.len());
        let end = end.ok_or_else(|| bad("truncated header"))?;
        let out = &self.0[self.1..end];
        self.1 = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Skips one value of metadata type `t` (8: string; arrays are walked by the caller).
    fn skip(&mut self, t: u32) -> Result<()> {
        let size = match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => self.u64()?,
            other => return Err(bad(format!("metadata type {other}"))),
        };
        self.take(size)?;
        Ok(())
    }
}

/// Walks the GGUF header's metadata and refuses a file whose metadata would hold more values
/// than [`MAX_METADATA_VALUES`] (or an array longer than [`MAX_METADATA_ARRAY`]), before
/// candle reads it into memory.
fn scan_metadata(bytes: &[u8]) -> Result<()> {
    let mut at = At(bytes, 0);
    if at.take(4)? != b"GGUF" {
        return Err(bad("not a GGUF file (magic)"));
    }
    let version = at.u32()?;
    if version != 2 && version != 3 {
        return Err(bad(format!(
            "GGUF version {version}; versions 2 and 3 are read"
        )));
    }
    let tensors = at.u64()?;
    let keys = at.u64()?;
    if keys > MAX_METADATA_KEYS {
        return Err(bad(format!("{keys} metadata entries")));
    }
    let mut values = 0u64;
    // candle keeps the last of two entries with one name: a file is refused instead, so what
    // it means does not depend on a reader's choice.
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..keys {
        let len = at.u64()?;
        if !names.insert(at.take(len)?.to_vec()) {
            return Err(bad("a metadata key appears twice"));
        }
        let t = at.u32()?;
        values += 1;
        if t != 9 {
            at.skip(t)?;
            continue;
        }
        let elem = at.u32()?;
        let count = at.u64()?;
        if count > MAX_METADATA_ARRAY {
            return Err(bad(format!("a metadata array of {count} elements")));
        }
        values += count;
        if values > MAX_METADATA_VALUES {
            return Err(bad("too many metadata values"));
        }
        if elem == 9 {
            return Err(bad("nested metadata arrays"));
        }
        for _ in 0..count {
            at.skip(elem)?;
        }
    }
    if tensors > 65_536 {
        return Err(bad(format!("{tensors} tensors")));
    }
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..tensors {
        let len = at.u64()?;
        if !names.insert(at.take(len)?.to_vec()) {
            return Err(bad("a tensor name appears twice"));
        }
        let dims = at.u32()?;
        if dims > 4 {
            return Err(bad(format!("a tensor of {dims} dimensions")));
        }
        at.take(8 * u64::from(dims) + 4 + 8)?;
    }
    Ok(())
}

/// Reads a GGUF file's config, weights and tokenizer. The config is checked against the zoo's
/// limits, and every tensor's shape against the config, before any tensor is dequantized.
pub fn read(bytes: &[u8]) -> Result<GgufModel> {
    parse(bytes, true)
}

/// Everything [`read`] checks and returns except the weights themselves (`params` is empty):
/// enough to validate a task and size it, at the cost of the header, not of the model.
pub fn read_header(bytes: &[u8]) -> Result<GgufModel> {
    parse(bytes, false)
}

fn parse(bytes: &[u8], load: bool) -> Result<GgufModel> {
    scan_metadata(bytes)?;
    // candle's reader panics on some malformed headers (an alignment of 0); a buyer's file
    // must give an error, never take the worker down.
    let content = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Content::read(&mut Cursor::new(bytes))
    }))
    .map_err(|_| bad("malformed header"))?
    .map_err(|e| bad(e.to_string()))?;
    let meta = Meta(&content.metadata);
    let arch = meta.string("general.architecture")?.unwrap_or_default();
    if arch != "llama" {
        return Err(bad(format!(
            "architecture {arch:?}; the zoo's `llama` reads architecture \"llama\""
        )));
    }
    if meta.get("llama.rope.scaling.type").is_some() {
        return Err(bad("rope scaling is not supported"));
    }
    let heads = meta.need_u32("llama.attention.head_count")? as usize;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let config = LlamaConfig {
        hidden_size: meta.need_u32("llama.embedding_length")? as usize,
        intermediate_size: meta.need_u32("llama.feed_forward_length")? as usize,
        num_hidden_layers: meta.need_u32("llama.block_count")? as usize,
        num_attention_heads: heads,
        num_key_value_heads: meta
            .u32("llama.attention.head_count_kv")?
            .map_or(heads, |v| v as usize),
        vocab_size: match meta.u32("llama.vocab_size")? {
            Some(v) => v as usize,
            None => tokens.len(),
        },
        max_position_embeddings: meta.need_u32("llama.context_length")? as usize,
        rms_norm_eps: meta
            .f32("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| bad("metadata `llama.attention.layer_norm_rms_epsilon` is missing"))?,
        rope_theta: meta.f32("llama.rope.freq_base")?.unwrap_or(10_000.0),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
    }
    .validate()?;
    if let Some(dims) = meta.u32("llama.rope.dimension_count")? {
        if dims as usize != config.head_dim() {
            return Err(bad(format!(
                "rotary dimension {dims} is not the head size {} (partial rotary is not supported)",
                config.head_dim()
            )));
        }
    }
    let layout = config.layout();
    // Every tensor the layout needs, present with its shape and a supported type.
    let mut sources = BTreeMap::new();
    for (name, info) in &content.tensor_infos {
        // An unknown tensor may change the maths (`rope_freqs.weight` rescales the rotary
        // frequencies): refused, never ignored.
        let Some(hf) = hf_name(name) else {
            return Err(bad(format!("tensor {name} is not part of the zoo's llama")));
        };
        let Some(slot) = layout
            .slots()
            .binary_search_by(|s| s.name.as_str().cmp(&hf))
            .ok()
            .map(|i| &layout.slots()[i])
        else {
            return Err(bad(format!("tensor {name} does not fit the config")));
        };
        if info.shape.dims() != slot.shape.as_slice() {
            return Err(bad(format!(
                "tensor {name} is {:?}, the config needs {:?}",
                info.shape.dims(),
                slot.shape
            )));
        }
        if !supported(info.ggml_dtype) {
            return Err(bad(format!(
                "tensor {name} is {:?}; supported: F32, F16, Q4_0, Q4_1, Q8_0",
                info.ggml_dtype
            )));
        }
        if sources.insert(hf, name.clone()).is_some() {
            return Err(bad(format!("two tensors for the slot of {name}")));
        }
    }
    if let Some(missing) = layout
        .slots()
        .iter()
        .find(|s| !sources.contains_key(&s.name))
    {
        return Err(bad(format!("no tensor for {}", missing.name)));
    }
    // Each tensor's bytes are its own: ranges that overlap would let a small file stand for a
    // large model (every tensor reading the same bytes).
    let mut ranges: Vec<(u64, u64)> = content
        .tensor_infos
        .values()
        .map(|i| {
            let size = (i.shape.elem_count() / i.ggml_dtype.block_size()) as u64
                * i.ggml_dtype.type_size() as u64;
            (i.offset, i.offset.saturating_add(size))
        })
        .collect();
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(bad("tensors share bytes"));
    }
    if tokens.len() != config.vocab_size {
        return Err(bad(format!(
            "{} tokens for a vocabulary of {}",
            tokens.len(),
            config.vocab_size
        )));
    }
    // Every value finite, read off the raw blocks (cheap, no dequantization): F32 and F16
    // values themselves, and the f16 scale (and minimum) of each quantized block, since
    // `q·d + m` with |q| ≤ 127 and finite f16 `d`, `m` is always finite in binary32.
    for (name, info) in &content.tensor_infos {
        let start = content.tensor_data_offset.saturating_add(info.offset) as usize;
        let size =
            info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let raw = bytes
            .get(start..start.saturating_add(size))
            .ok_or_else(|| bad(format!("{name} runs past the end of the file")))?;
        let f16_ok = |b: &[u8]| (u16::from_le_bytes([b[0], b[1]]) >> 10) & 0x1f != 0x1f;
        let finite = match info.ggml_dtype {
            GgmlDType::F32 => raw
                .chunks_exact(4)
                .all(|b| (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 23) & 0xff != 0xff),
            GgmlDType::F16 => raw.chunks_exact(2).all(f16_ok),
            GgmlDType::Q8_0 | GgmlDType::Q4_0 => raw
                .chunks_exact(info.ggml_dtype.type_size())
                .all(|b| f16_ok(&b[0..2])),
            GgmlDType::Q4_1 => raw
                .chunks_exact(info.ggml_dtype.type_size())
                .all(|b| f16_ok(&b[0..2]) && f16_ok(&b[2..4])),
            _ => false,
        };
        if !finite {
            return Err(bad(format!("{name} holds a non-finite value")));
        }
    }
    let mut params = if load {
        vec![0.0f32; layout.total()]
    } else {
        Vec::new()
    };
    let d = config.head_dim();
    let mut cursor = Cursor::new(bytes);
    for slot in layout.slots().iter().filter(|_| load) {
        let name = &sources[&slot.name];
        let q = content
            .tensor(&mut cursor, name, &Device::Cpu)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let data = q
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let cols = *slot.shape.last().unwrap_or(&1);
        let data = if slot.name.ends_with("q_proj.weight") {
            unpermute(&data, config.num_attention_heads, d, cols)
        } else if slot.name.ends_with("k_proj.weight") {
            unpermute(&data, config.num_key_value_heads, d, cols)
        } else {
            data
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("{name} holds a non-finite value at {i}")));
        }
        params[slot.range()].copy_from_slice(&data);
    }
    let vocab = GgufVocab {
        model: meta.string("tokenizer.ggml.model")?.unwrap_or_default(),
        pre: meta
            .string("tokenizer.ggml.pre")?
            .unwrap_or_else(|| "default".into()),
        token_types: meta.ints("tokenizer.ggml.token_type")?,
        merges: meta.strings("tokenizer.ggml.merges")?,
        bos: meta.u32("tokenizer.ggml.bos_token_id")?,
        eos: meta.u32("tokenizer.ggml.eos_token_id")?,
        add_bos: match meta.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(format!(
                    "`tokenizer.ggml.add_bos_token` is {other:?}, not a bool"
                )))
            }
        },
        chat_template: meta.string("tokenizer.chat_template")?,
        tokens,
    };
    Ok(GgufModel {
        weights: LlamaWeights {
            config,
            layout,
            params,
        },
        vocab,
    })
}

/// llama.cpp's permutation of a `[heads × d, in]` query or key matrix (the inverse of
/// [`unpermute`]): HF row `head·d + half·(d/2) + i` goes to GGUF row `head·d + 2i + half`.
fn permute(rows: &[f32], heads: usize, d: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.len()];
    for head in 0..heads {
        for i in 0..d / 2 {
            for half in 0..2 {
                let dst = (head * d + 2 * i + half) * cols;
                let src = (head * d + half * (d / 2) + i) * cols;
                out[dst..dst + cols].copy_from_slice(&rows[src..src + cols]);
            }
        }
    }
    out
}

/// The GGUF name of a HF tensor name ([`hf_name`]'s inverse).
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let g = match name {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.weight"))
}

/// `weights` and `vocab` as a GGUF file with F32 tensors, written as llama.cpp writes a model
/// (its names, its query and key row order), so [`read`] gives back exactly `weights`. Used to
/// ship a market-made model to llama.cpp-based tools, and by tests for small models.
pub fn write_f32(weights: &LlamaWeights, vocab: &GgufVocab) -> Result<Vec<u8>> {
    use candle_core::quantized::QTensor;
    use candle_core::Tensor;
    let c = weights.config;
    let d = c.head_dim();
    let mut tensors = Vec::new();
    for slot in weights.layout.slots() {
        let name =
            gguf_name(&slot.name).ok_or_else(|| bad(format!("no GGUF name for {}", slot.name)))?;
        let mut data = weights.params[slot.range()].to_vec();
        let cols = *slot.shape.last().unwrap_or(&1);
        if slot.name.ends_with("q_proj.weight") {
            data = permute(&data, c.num_attention_heads, d, cols);
        } else if slot.name.ends_with("k_proj.weight") {
            data = permute(&data, c.num_key_value_heads, d, cols);
        }
        let t = Tensor::from_vec(data, slot.shape.as_slice(), &Device::Cpu)?;
        tensors.push((name, QTensor::quantize(&t, GgmlDType::F32)?));
    }
    let u = |v: usize| Value::U32(v as u32);
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let mut meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", u(c.hidden_size)),
        ("llama.feed_forward_length", u(c.intermediate_size)),
        ("llama.block_count", u(c.num_hidden_layers)),
        ("llama.attention.head_count", u(c.num_attention_heads)),
        ("llama.attention.head_count_kv", u(c.num_key_value_heads)),
        ("llama.context_length", u(c.max_position_embeddings)),
        ("llama.vocab_size", u(c.vocab_size)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps),
        ),
        ("llama.rope.freq_base", Value::F32(c.rope_theta)),
        ("tokenizer.ggml.model", Value::String(vocab.model.clone())),
        ("tokenizer.ggml.pre", Value::String(vocab.pre.clone())),
        ("tokenizer.ggml.tokens", strings(&vocab.tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vocab.token_types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&vocab.merges)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(vocab.add_bos)),
    ];
    if let Some(b) = vocab.bos {
        meta.push(("tokenizer.ggml.bos_token_id", Value::U32(b)));
    }
    if let Some(e) = vocab.eos {
        meta.push(("tokenizer.ggml.eos_token_id", Value::U32(e)));
    }
    if let Some(t) = &vocab.chat_template {
        meta.push(("tokenizer.chat_template", Value::String(t.clone())));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut out, &meta_refs, &tensor_refs)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_puts_pairs_back_in_halves() {
        // One head of size 4, one column: GGUF order is (i0 h0, i0 h1, i1 h0, i1 h1).
        let gguf = [0.0, 2.0, 1.0, 3.0];
        assert_eq!(unpermute(&gguf, 1, 4, 1), vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn permute_and_unpermute_are_inverse() {
        let rows: Vec<f32> = (0..24).map(|x| x as f32).collect();
        assert_eq!(unpermute(&permute(&rows, 2, 4, 3), 2, 4, 3), rows);
        assert_ne!(permute(&rows, 2, 4, 3), rows);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let e = read(b"not a gguf file at all").unwrap_err();
        assert!(e.to_string().contains("GGUF"), "{e}");
    }
}
