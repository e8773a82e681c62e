//! A Hugging Face `tokenizer_config.json` beside a `tokenizer.json`: what a `tokenizer.json`
//! lacks for a chat, the chat template and the EOS (and BOS) token's text (`spec/COMPUTE.md`
//! 11.7b). The encoding stays the `tokenizer.json`'s (11.7a): the few keys of the config that
//! would change it (`add_bos_token`, `add_eos_token`) must agree with it, or the file is
//! refused; so must the keys by which `transformers` adds tokens or makes them special, which
//! may only name the `tokenizer.json`'s own special tokens. Every other key is ignored.

use serde_json::{Map, Value};

use super::gguf::GgufVocab;
use super::hf_tokenizer::scan_json;
use crate::error::{ComputeError, Result};

/// The largest `tokenizer_config.json` read, checked before parsing (SmolLM2's is 3.8 KB,
/// Llama 3.1's 55 KB: a long template and the added tokens listed again).
pub const MAX_TOKENIZER_CONFIG_BYTES: usize = 4 << 20;

fn bad(reason: impl Into<String>) -> ComputeError {
    ComputeError::InvalidBlob {
        what: "tokenizer_config",
        reason: reason.into(),
    }
}

/// A special token's text: a string, or an `AddedToken` object's `content` (its other keys
/// are the `tokenizer.json`'s business); `null` or absent is none.
fn token_text(config: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => token_value(v, key).map(|t| Some(t.to_owned())),
    }
}

/// A token value that is not `null`: a string, or an object's string `content`.
fn token_value<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    match v {
        Value::String(s) => Ok(s),
        Value::Object(o) => match o.get("content") {
            Some(Value::String(s)) => Ok(s),
            _ => Err(bad(format!("{key}: an object without a string `content`"))),
        },
        _ => Err(bad(format!(
            "{key}: must be a string, an object with `content`, or null"
        ))),
    }
}

/// The id of the one special token (an added token with `special` true, 11.7a) whose string
/// is `text`. `transformers` makes any token a config names special, which changes how text
/// containing it is encoded: only a token that already is one leaves the encoding as 11.7a
/// defines it.
fn token_id(vocab: &GgufVocab, key: &str, text: &str) -> Result<u32> {
    let mut ids = vocab
        .tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| *t == text)
        .map(|(id, _)| id as u32);
    let id = match (ids.next(), ids.next()) {
        (Some(id), None) => id,
        (None, _) => {
            return Err(bad(format!(
                "{key}: {text:?} is not a token of the tokenizer"
            )))
        }
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "{key}: {text:?} is the string of more than one token id"
            )))
        }
    };
    if vocab.token_types.get(id as usize) != Some(&3) {
        return Err(bad(format!(
            "{key}: {text:?} is not a special token (an added token with special true)"
        )));
    }
    Ok(id)
}

/// The keys `transformers` reads to add or re-mark tokens: each may only name what the
/// `tokenizer.json` already has as special tokens, so the encoding stays 11.7a's.
fn check_special_keys(vocab: &GgufVocab, config: &Map<String, Value>) -> Result<()> {
    match config.get("split_special_tokens") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(_) => {
            return Err(bad(
                "split_special_tokens: must be false or null (special tokens are matched whole)",
            ))
        }
    }
    for key in [
        "unk_token",
        "pad_token",
        "sep_token",
        "cls_token",
        "mask_token",
    ] {
        if let Some(text) = token_text(config, key)? {
            token_id(vocab, key, &text)?;
        }
    }
    match config.get("additional_special_tokens") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for entry in list {
                let text = token_value(entry, "additional_special_tokens")?;
                token_id(vocab, "additional_special_tokens", text)?;
            }
        }
        Some(_) => return Err(bad("additional_special_tokens: must be a list or null")),
    }
    match config.get("added_tokens_decoder") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (id, entry) in map {
                let known = id
                    .parse::<usize>()
                    .ok()
                    .filter(|n| n.to_string() == *id)
                    .and_then(|n| vocab.tokens.get(n).map(|t| (n, t)));
                let content = entry.get("content").and_then(Value::as_str);
                let special = match entry.get("special") {
                    None | Some(Value::Null) => Some(false),
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => None,
                };
                // Only an added token (type 3 or 4): `transformers` makes any other id it
                // names one, which changes the encoding.
                match known {
                    Some((n, t))
                        if Some(t.as_str()) == content
                            && matches!(vocab.token_types.get(n), Some(3 | 4))
                            && special == Some(vocab.token_types.get(n) == Some(&3)) => {}
                    _ => {
                        return Err(bad(format!(
                            "added_tokens_decoder: entry {id:?} is not the tokenizer.json's added token of that id (content and special)"
                        )))
                    }
                }
            }
        }
        Some(_) => return Err(bad("added_tokens_decoder: must be an object or null")),
    }
    Ok(())
}

/// The chat template: a string, or a list of `{name, template}` of which the one named
/// `default` is used (as `transformers` does when no name is asked for); `null` or absent is
/// none.
fn chat_template(config: &Map<String, Value>) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let mut default = None;
            let mut names = std::collections::BTreeSet::new();
            for entry in list {
                let (Some(Value::String(name)), Some(Value::String(template))) =
                    (entry.get("name"), entry.get("template"))
                else {
                    return Err(bad(
                        "chat_template: every entry of the list is {\"name\": string, \"template\": string}",
                    ));
                };
                if !names.insert(name.clone()) {
                    return Err(bad(format!("chat_template: {name:?} is named twice")));
                }
                if name == "default" {
                    default = Some(template.clone());
                }
            }
            default
                .map(Some)
                .ok_or_else(|| bad("chat_template: the list has no template named \"default\""))
        }
        Some(_) => Err(bad("chat_template: must be a string, a list or null")),
    }
}

/// The largest `chat_template.jinja` read (Llama 3.1's template is 4 KB): the limit of the
/// `tokenizer_config.json` it comes out of.
pub const MAX_CHAT_TEMPLATE_BYTES: usize = MAX_TOKENIZER_CONFIG_BYTES;

fn bad_template(reason: String) -> ComputeError {
    ComputeError::InvalidBlob {
        what: "chat_template",
        reason,
    }
}

/// Refuses a `tokenizer_config.json` of `len` bytes over the limit (11.7b step 1): checked on
/// the blob's length before it is read.
pub fn check_tokenizer_config_len(len: u64) -> Result<()> {
    if len > MAX_TOKENIZER_CONFIG_BYTES as u64 {
        return Err(bad(format!(
            "a tokenizer_config.json of {len} bytes, over the limit of {MAX_TOKENIZER_CONFIG_BYTES}"
        )));
    }
    Ok(())
}

/// Refuses a `chat_template.jinja` of `len` bytes over the limit (11.7c step 1): checked on
/// the blob's length before it is read.
pub fn check_chat_template_len(len: u64) -> Result<()> {
    if len > MAX_CHAT_TEMPLATE_BYTES as u64 {
        return Err(bad_template(format!(
            "a chat_template.jinja of {len} bytes, over the limit of {MAX_CHAT_TEMPLATE_BYTES}"
        )));
    }
    Ok(())
}

/// The template of a Hugging Face `chat_template.jinja` (11.7c): its text, which must be
/// UTF-8, as it is (a BOM kept; its CRs become LFs where every template's do, 11.8).
pub fn chat_template_file(bytes: &[u8]) -> Result<String> {
    check_chat_template_len(bytes.len() as u64)?;
    let text = std::str::from_utf8(bytes).map_err(|e| bad_template(format!("not UTF-8: {e}")))?;
    Ok(text.to_owned())
}

/// Completes `vocab` (read from a `tokenizer.json`) with the `tokenizer_config.json` in
/// `bytes`, in 11.7b's order: the size, the JSON (the same dialect and first pass as a
/// `tokenizer.json`'s, 11.7a), an object at the top, `add_eos_token`, `add_bos_token`,
/// `chat_template`, `bos_token`, `eos_token`, then the keys that could add or re-mark tokens.
/// With a `chat_template.jinja` (`template_file`, which reads it: only at step 6, so the
/// config's own refusals come first), the template is that file's and the config's
/// `chat_template` is not read: `transformers` lets the file win (4.57 and 5.25 checked).
pub fn apply_tokenizer_config(
    vocab: &mut GgufVocab,
    bytes: &[u8],
    template_file: Option<&dyn Fn() -> Result<String>>,
) -> Result<()> {
    check_tokenizer_config_len(bytes.len() as u64)?;
    scan_json(bytes).map_err(|e| bad(format!("not a tokenizer_config.json: {e}")))?;
    let Value::Object(config) = serde_json::from_slice::<Value>(bytes)
        .map_err(|e| bad(format!("not a tokenizer_config.json: {e}")))?
    else {
        return Err(bad("not a tokenizer_config.json: not a JSON object"));
    };
    match config.get("add_eos_token") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(bad(
                "add_eos_token: true; an EOS appended to every text is not supported",
            ))
        }
        Some(_) => return Err(bad("add_eos_token: must be a boolean or null")),
    }
    match config.get("add_bos_token") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) if *b == vocab.add_bos => {}
        Some(Value::Bool(b)) => {
            return Err(bad(format!(
                "add_bos_token: {b}, but the tokenizer.json's post-processor {} a BOS",
                if vocab.add_bos { "adds" } else { "adds no" }
            )))
        }
        Some(_) => return Err(bad("add_bos_token: must be a boolean or null")),
    }
    let template = match template_file {
        Some(read) => Some(read()?),
        None => chat_template(&config)?,
    };
    match (token_text(&config, "bos_token")?, vocab.bos) {
        (Some(text), own) => {
            let id = token_id(vocab, "bos_token", &text)?;
            if let Some(own) = own.filter(|&own| own != id) {
                return Err(bad(format!(
                    "bos_token: {text:?} (id {id}), but the tokenizer.json's post-processor adds id {own}"
                )));
            }
            vocab.bos = Some(id);
        }
        (None, Some(own)) => {
            // `transformers` would render `bos_token` as "" while the encoding adds one.
            return Err(bad(format!(
                "bos_token: absent, but the tokenizer.json's post-processor adds id {own}: name it"
            )));
        }
        (None, None) => {}
    }
    if let Some(text) = token_text(&config, "eos_token")? {
        vocab.eos = Some(token_id(vocab, "eos_token", &text)?);
    }
    check_special_keys(vocab, &config)?;
    vocab.chat_template = template;
    Ok(())
}
