//! A Hugging Face `tokenizer.json` read into the same vocabulary a GGUF file gives
//! ([`GgufVocab`]), so both kinds of tokenizer blob build one tokenizer by one rule
//! (`spec/COMPUTE.md` 11.7 and 11.7a). Only the byte-level BPE tokenizers 11.7 defines are
//! accepted: the file's every field must say what that table says, or it is refused naming the
//! field. Refusing the rest (normalizers, other pre-tokenizers, other models) is deliberate: a
//! worker and a verifier must split text the same way, and what the spec does not define, an
//! independent implementation could not reproduce.

use std::collections::BTreeMap;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::gguf::GgufVocab;
use crate::error::{ComputeError, Result};

/// The largest `tokenizer.json` read, checked before parsing (SmolLM2's is 2.1 MB, Llama 3's
/// 9 MB; the tokens and merges inside are bounded again by 11.7's limits).
pub const MAX_TOKENIZER_JSON_BYTES: usize = 64 << 20;

/// The most keys of any object in the file, and so the most tokens in `vocab` and the most
/// added tokens: the largest vocabulary a model may have (`llama::limits::MAX_VOCAB`). Counted
/// while parsing, so a file of millions of tiny tokens is refused before it costs memory.
pub const MAX_OBJECT_KEYS: usize = super::limits::MAX_VOCAB;

/// The most merges: as many as a GGUF file's metadata array may hold (11.3).
pub const MAX_MERGES: usize = super::gguf::MAX_METADATA_ARRAY as usize;

/// A list of at most `N` items, refused while parsing past that.
struct Bounded<T, const N: usize>(Vec<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a list of at most {N} items")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<Bounded<T, N>, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = s.next_element()? {
                    if out.len() == N {
                        return Err(serde::de::Error::custom(format!("more than {N} items")));
                    }
                    out.push(item);
                }
                Ok(Bounded(out))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

fn bad(reason: impl Into<String>) -> ComputeError {
    ComputeError::InvalidBlob {
        what: "tokenizer",
        reason: reason.into(),
    }
}

/// A JSON object's entries in file order, a repeated key kept (so it can be refused: JSON
/// readers disagree on which copy wins).
struct Entries(Vec<(String, u64)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of token strings to ids")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, u64>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The most JSON values (objects, lists, keys, strings, numbers, booleans, nulls) a file may
/// hold: SmolLM2's tokenizer has about 250,000, the largest vocabulary with the most merges
/// (262,144 tokens, 1,048,576 merge pairs) about 3.7 million. Counted in the first pass, so
/// the parts read as generic JSON (the pre-tokenizer, post-processor and decoder) cannot hold
/// more than this many values in memory, however the file is shaped.
pub const MAX_JSON_VALUES: usize = 1 << 22;

/// The first pass over the whole file: valid JSON whose objects never repeat a key
/// (`serde_json` keeps the last copy into a map, other readers the first), hold at most
/// [`MAX_OBJECT_KEYS`] keys, and [`MAX_JSON_VALUES`] values in all. It holds nothing but the
/// keys of the objects it is inside.
#[derive(Clone, Copy)]
struct Scan<'a>(&'a std::cell::Cell<usize>);

impl Scan<'_> {
    fn count<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        let n = self.0.get() + 1;
        if n > MAX_JSON_VALUES {
            return Err(E::custom(format!(
                "more than {MAX_JSON_VALUES} JSON values"
            )));
        }
        self.0.set(n);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
        self.count()?;
        let mut keys = std::collections::BTreeSet::new();
        while let Some(key) = m.next_key::<String>()? {
            self.count()?;
            m.next_value_seed(self)?;
            if keys.len() == MAX_OBJECT_KEYS {
                return Err(serde::de::Error::custom(format!(
                    "an object with more than {MAX_OBJECT_KEYS} keys"
                )));
            }
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> std::result::Result<(), A::Error> {
        self.count()?;
        while s.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<(), E> {
        self.count()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<(), E> {
        self.count()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<(), E> {
        self.count()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<(), E> {
        self.count()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<(), E> {
        self.count()
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.count()
    }
}

/// The first pass ([`Scan`]) over a whole JSON file: its error, if any, as `serde_json` words
/// it. Shared by every Hugging Face JSON file read (`tokenizer.json`, `tokenizer_config.json`).
pub(crate) fn scan_json(bytes: &[u8]) -> std::result::Result<(), serde_json::Error> {
    let values = std::cell::Cell::new(0);
    let mut scan = serde_json::Deserializer::from_slice(bytes);
    Scan(&values)
        .deserialize(&mut scan)
        .and_then(|()| scan.end())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Text(String),
    Pair([String; 2]),
}

/// Absent, a flag that must be false is false; present, it must be `false` itself.
fn absent_false() -> Value {
    Value::Bool(false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bpe {
    #[serde(rename = "type", default)]
    kind: Value,
    #[serde(default)]
    dropout: Value,
    #[serde(default)]
    unk_token: Value,
    #[serde(default)]
    continuing_subword_prefix: Value,
    #[serde(default)]
    end_of_word_suffix: Value,
    #[serde(default = "absent_false")]
    fuse_unk: Value,
    #[serde(default = "absent_false")]
    byte_fallback: Value,
    #[serde(default = "absent_false")]
    ignore_merges: Value,
    vocab: Entries,
    #[serde(default = "no_merges")]
    merges: Bounded<Merge, MAX_MERGES>,
}

fn no_merges() -> Bounded<Merge, MAX_MERGES> {
    Bounded(Vec::new())
}

fn no_added_tokens() -> Bounded<AddedToken, MAX_OBJECT_KEYS> {
    Bounded(Vec::new())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddedToken {
    id: u64,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    normalized: bool,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizerJson {
    #[serde(default)]
    version: Value,
    #[serde(default)]
    truncation: Value,
    #[serde(default)]
    padding: Value,
    #[serde(default = "no_added_tokens")]
    added_tokens: Bounded<AddedToken, MAX_OBJECT_KEYS>,
    #[serde(default)]
    normalizer: Value,
    #[serde(default)]
    pre_tokenizer: Value,
    #[serde(default)]
    post_processor: Value,
    #[serde(default)]
    decoder: Value,
    /// Read in a second pass ([`ModelOnly`]), once the fields before it in 11.7a's order are
    /// checked, straight into its typed, bounded form (never as generic JSON).
    #[allow(dead_code)] // Only its presence is checked here.
    model: IgnoredAny,
}

/// The file again, for its `model` alone.
#[derive(Deserialize)]
struct ModelOnly {
    model: Bpe,
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn kind(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// GPT-2's byte-level split as 11.7 uses it: `add_prefix_space` false, `use_regex` true
/// (absent fields take the crate's defaults: true for both).
fn is_byte_level_split(v: &Value) -> bool {
    let flag = |k: &str| field(v, k).map_or(Some(true), Value::as_bool);
    kind(v) == "ByteLevel"
        && flag("add_prefix_space") == Some(false)
        && flag("use_regex") == Some(true)
}

/// Every numeric character a pre-token of its own: `Digits` with `individual_digits`, or the
/// `Split` on `\p{N}` that 11.7 defines it as.
fn is_digit_split(v: &Value) -> bool {
    match kind(v) {
        "Digits" => field(v, "individual_digits").and_then(Value::as_bool) == Some(true),
        "Split" => {
            v.get("pattern") == Some(&serde_json::json!({"Regex": "\\p{N}"}))
                && v.get("behavior").and_then(Value::as_str) == Some("Isolated")
                && matches!(field(v, "invert"), None | Some(Value::Bool(false)))
        }
        _ => false,
    }
}

/// The 11.7 pre-tokenizer name a `pre_tokenizer` stands for.
fn pre_name(v: &Value) -> Result<&'static str> {
    if is_byte_level_split(v) {
        return Ok("gpt2");
    }
    if kind(v) == "Sequence" {
        if let Some([digits, byte_level]) = v
            .get("pretokenizers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            if is_digit_split(digits) && is_byte_level_split(byte_level) {
                return Ok("smollm");
            }
        }
    }
    Err(bad(
        "pre_tokenizer: only GPT-2's ByteLevel split (add_prefix_space false, use_regex true), \
         alone or after Digits with individual_digits, is supported",
    ))
}

/// Whether the post-processor puts a BOS first: `None` (nothing, or ByteLevel's offset
/// trimming), or a TemplateProcessing whose `single` is the text alone or one special token
/// then the text. Returns the BOS id it adds.
fn post_bos(v: &Value) -> Result<Option<u64>> {
    let refused = || {
        bad(
            "post_processor: only none, ByteLevel, or a TemplateProcessing whose `single` is \
             `$A` alone or one special token of one id then `$A`, is supported",
        )
    };
    match kind(v) {
        "" if v.is_null() => Ok(None),
        "ByteLevel" => Ok(None),
        "Sequence" => {
            let parts = v
                .get("processors")
                .and_then(Value::as_array)
                .ok_or_else(refused)?;
            let mut bos = None;
            let mut templates = 0;
            for p in parts {
                match kind(p) {
                    "TemplateProcessing" => templates += 1,
                    "ByteLevel" => {}
                    _ => return Err(refused()),
                }
                bos = bos.or(post_bos(p)?);
            }
            if templates > 1 {
                return Err(refused());
            }
            Ok(bos)
        }
        "TemplateProcessing" => {
            let single = v
                .get("single")
                .and_then(Value::as_array)
                .ok_or_else(refused)?;
            let is_text =
                |p: &Value| p.pointer("/Sequence/id").and_then(Value::as_str) == Some("A");
            match single.as_slice() {
                [text] if is_text(text) => Ok(None),
                [special, text] if is_text(text) => {
                    let name = special
                        .pointer("/SpecialToken/id")
                        .and_then(Value::as_str)
                        .ok_or_else(refused)?;
                    let ids = v
                        .pointer(&format!(
                            "/special_tokens/{}/ids",
                            name.replace('~', "~0").replace('/', "~1")
                        ))
                        .and_then(Value::as_array)
                        .ok_or_else(refused)?;
                    match ids.as_slice() {
                        [id] => id.as_u64().map(Some).ok_or_else(refused),
                        _ => Err(refused()),
                    }
                }
                _ => Err(refused()),
            }
        }
        _ => Err(refused()),
    }
}

/// Refuses ids that do not run `0..n` for `n` tokens, naming the first one missing.
fn check_no_gap(by_id: &BTreeMap<u64, String>, field: &str) -> Result<()> {
    let n = by_id.len() as u64;
    match by_id.last_key_value() {
        Some((&last, _)) if last.checked_add(1) != Some(n) => {
            let gap = (0..).find(|i| !by_id.contains_key(i)).unwrap_or(n);
            Err(bad(format!(
                "{field}: token ids must run 0..{n} without a gap; id {gap} is missing"
            )))
        }
        _ => Ok(()),
    }
}

/// The vocabulary a `tokenizer.json` describes, checked against 11.7a. Its tokens are the
/// model's vocabulary and the added tokens, by id, with no id missing; the BOS id is the one
/// its post-processor puts first (then `add_bos`); it names no EOS and no chat template.
pub fn vocab_from_tokenizer_json(bytes: &[u8]) -> Result<GgufVocab> {
    if bytes.len() > MAX_TOKENIZER_JSON_BYTES {
        return Err(bad(format!(
            "a tokenizer.json of {} bytes, over the limit of {MAX_TOKENIZER_JSON_BYTES}",
            bytes.len()
        )));
    }
    scan_json(bytes).map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
    let file: TokenizerJson =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
    let _ = file.version;
    for (name, v) in [
        ("truncation", &file.truncation),
        ("padding", &file.padding),
        ("normalizer", &file.normalizer),
    ] {
        if !v.is_null() {
            return Err(bad(format!("{name}: must be null")));
        }
    }
    let pre = pre_name(&file.pre_tokenizer)?;
    let bos = post_bos(&file.post_processor)?;
    if !file.decoder.is_null() && kind(&file.decoder) != "ByteLevel" {
        return Err(bad("decoder: must be ByteLevel or null"));
    }
    let ModelOnly { model } =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("model: not a BPE model: {e}")))?;
    if model.kind != "BPE" {
        return Err(bad(format!(
            "model.type: {}; only \"BPE\" is supported",
            model.kind
        )));
    }
    let null_or_empty = |v: &Value| v.is_null() || v.as_str() == Some("");
    let is_false = |v: &Value| *v == Value::Bool(false);
    for (name, ok) in [
        ("dropout", model.dropout.is_null()),
        ("unk_token", model.unk_token.is_null()),
        (
            "continuing_subword_prefix",
            null_or_empty(&model.continuing_subword_prefix),
        ),
        (
            "end_of_word_suffix",
            null_or_empty(&model.end_of_word_suffix),
        ),
        ("fuse_unk", is_false(&model.fuse_unk)),
        ("byte_fallback", is_false(&model.byte_fallback)),
        ("ignore_merges", is_false(&model.ignore_merges)),
    ] {
        if !ok {
            return Err(bad(format!("model.{name}: must be null, empty or false")));
        }
    }
    // Every id named once, by the vocabulary or an added token: 0..n with no gap.
    let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for (token, id) in model.vocab.0 {
        if !seen.insert(token.clone()) {
            return Err(bad(format!("model.vocab: token {token:?} appears twice")));
        }
        if by_id.insert(id, token).is_some() {
            return Err(bad(format!("model.vocab: id {id} appears twice")));
        }
    }
    // The vocabulary alone runs 0..len: added tokens outside it then take the ids after it,
    // as the `tokenizers` library numbers them.
    check_no_gap(&by_id, "model.vocab")?;
    let mut types: BTreeMap<u64, i32> = BTreeMap::new();
    let mut last_added: Option<u64> = None;
    for t in &file.added_tokens.0 {
        if t.single_word || t.lstrip || t.rstrip {
            return Err(bad(format!(
                "added_tokens: {:?} sets single_word, lstrip or rstrip; only plain matching is supported",
                t.content
            )));
        }
        let _ = t.normalized; // No normalizer: normalized and raw text are the same.
        match by_id.get(&t.id) {
            Some(known) if *known != t.content => {
                return Err(bad(format!(
                    "added_tokens: id {} is {:?} in the vocabulary and {:?} here",
                    t.id, known, t.content
                )))
            }
            Some(_) => {}
            None => {
                // The `tokenizers` library numbers these in list order from the vocabulary's
                // size, whatever their `id`: listed in ascending order (and, below, without a
                // gap) they get the ids they name in both readings.
                if let Some(prev) = last_added.filter(|&p| p > t.id) {
                    return Err(bad(format!(
                        "added_tokens: {:?} (id {}) comes after id {prev}; tokens not in the vocabulary must be listed in ascending id order",
                        t.content, t.id
                    )));
                }
                last_added = Some(t.id);
                by_id.insert(t.id, t.content.clone());
            }
        }
        if types.insert(t.id, if t.special { 3 } else { 4 }).is_some() {
            return Err(bad(format!("added_tokens: id {} appears twice", t.id)));
        }
    }
    check_no_gap(&by_id, "added_tokens")?;
    let n = by_id.len() as u64;
    if let Some(id) = bos.filter(|&id| id >= n) {
        return Err(bad(format!(
            "post_processor: BOS id {id} is outside the vocabulary"
        )));
    }
    let merges = model
        .merges
        .0
        .into_iter()
        .map(|m| match m {
            Merge::Text(s) => Ok(s),
            Merge::Pair([a, b]) if !a.contains(' ') && !b.contains(' ') => Ok(format!("{a} {b}")),
            Merge::Pair([a, b]) => Err(bad(format!(
                "model.merges: [{a:?}, {b:?}] has a space inside a side"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GgufVocab {
        model: "gpt2".into(),
        pre: pre.into(),
        token_types: (0..n)
            .map(|id| types.get(&id).copied().unwrap_or(1))
            .collect(),
        tokens: by_id.into_values().collect(),
        merges,
        bos: bos.map(|id| id as u32),
        eos: None,
        add_bos: bos.is_some(),
        chat_template: None,
    })
}
