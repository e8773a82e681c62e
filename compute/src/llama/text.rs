//! Text in and out of a `llama` model: the model's own byte-level BPE tokenizer (the
//! `tokenizers` crate, pinned, since worker and verifier must split text identically) and its
//! own Jinja chat template (`minijinja`, sandboxed and bounded by fuel: the template comes from
//! a buyer's blob).

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use super::gguf::GgufVocab;
use crate::error::{ComputeError, Result};

/// The longest token string a tokenizer may hold, in bytes (the longest of SmolLM2's 49,152 is
/// 162): what the tokenizer builds grows with the text of its tokens, about 80 bytes of memory
/// per byte of an added token, so a blob's tokens are bounded before anything is built.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// The most bytes of all token strings and merges together.
pub const MAX_VOCAB_TEXT_BYTES: usize = 32 << 20;
/// The most bytes of the added tokens (types 3 and 4) together.
pub const MAX_ADDED_TOKEN_BYTES: usize = 1 << 20;

/// Most template instructions a chat template may execute for one rendering.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// Most template instructions the chats of one task may execute together: with only the
/// per-chat fuel, a task of many chats and a costly template would hold every worker and
/// verifier for hours (11.8).
pub const TASK_TEMPLATE_FUEL: u64 = 100_000_000;
/// The longest rendered chat prompt, in bytes.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;

pub use market_protocol::ChatMessage;

/// A model's tokenizer and chat template.
#[derive(Clone)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    add_bos: bool,
    /// A bound on the tokenizer's memory (COMPUTE section 9's `tokenizer`).
    memory_bytes: u64,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// A writer that refuses to hold more than [`MAX_PROMPT_BYTES`], and remembers that it did.
struct Bounded(Vec<u8>, bool);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_PROMPT_BYTES {
            self.1 = true;
            return Err(std::io::Error::other("prompt too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bad(reason: impl Into<String>) -> ComputeError {
    ComputeError::InvalidBlob {
        what: "tokenizer",
        reason: reason.into(),
    }
}

/// Every numeric character (`\p{N}`) a pre-token of its own: `Digits` with
/// `individual_digits`, pinned to Oniguruma's Unicode tables.
fn digits_one_by_one() -> Value {
    json!({"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": false})
}

/// The added tokens of `v` (types 3 and 4) as `tokenizer.json` lists them (11.7).
pub(crate) fn added_tokens_json(v: &GgufVocab) -> Vec<Value> {
    v.token_types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(id, &t)| {
            json!({"id": id, "content": v.tokens[id], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t == 3})
        })
        .collect()
}

/// COMPUTE section 9's `tokenizer` term: `8·Σ(len + 32)` over every token and merge string.
fn memory_bound(v: &GgufVocab) -> u64 {
    8 * v
        .tokens
        .iter()
        .chain(&v.merges)
        .map(|t| t.len() as u64 + 32)
        .sum::<u64>()
}

/// The pre-tokenizer a GGUF `tokenizer.ggml.pre` name stands for (llama.cpp's table), as
/// `tokenizer.json` would write it.
fn pre_tokenizer(pre: &str) -> Result<Value> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Ok(match pre {
        // GPT-2's split, digits first taken one by one. `tokenizer.json` writes this step as
        // `Digits`, which tests Rust's `char::is_numeric`, whose Unicode tables follow the
        // compiler: a worker and a verifier built by different compilers could split a new
        // digit differently. The same split by Oniguruma's `\p{N}` (the category set
        // `is_numeric` tests: Nd, Nl, No) uses the pinned tables ByteLevel already uses.
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({
            "type": "Sequence",
            "pretokenizers": [digits_one_by_one(), byte_level],
        }),
        "gpt-2" | "gpt2" | "default" => byte_level,
        other => {
            return Err(bad(format!(
                "pre-tokenizer {other:?} is not known; supported: smollm, starcoder, refact, codeshell, gpt-2"
            )))
        }
    })
}

impl TextCodec {
    /// The tokenizer a GGUF file describes (byte-level BPE).
    pub fn from_gguf(v: &GgufVocab) -> Result<Self> {
        if v.model != "gpt2" {
            return Err(bad(format!(
                "tokenizer model {:?}; supported: gpt2 (byte-level BPE)",
                v.model
            )));
        }
        if v.token_types.len() > v.tokens.len() {
            return Err(bad(format!(
                "{} token types for {} tokens",
                v.token_types.len(),
                v.tokens.len()
            )));
        }
        if let Some((id, t)) = v
            .tokens
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > MAX_TOKEN_BYTES)
        {
            return Err(bad(format!(
                "token {id} is {} bytes long, over the limit of {MAX_TOKEN_BYTES}",
                t.len()
            )));
        }
        let text: usize = v.tokens.iter().chain(&v.merges).map(String::len).sum();
        if text > MAX_VOCAB_TEXT_BYTES {
            return Err(bad(format!(
                "its tokens and merges hold {text} bytes, over the limit of {MAX_VOCAB_TEXT_BYTES}"
            )));
        }
        let added: usize = v
            .token_types
            .iter()
            .zip(&v.tokens)
            .filter(|(t, _)| **t == 3 || **t == 4)
            .map(|(_, s)| s.len())
            .sum();
        if added > MAX_ADDED_TOKEN_BYTES {
            return Err(bad(format!(
                "its added tokens hold {added} bytes, over the limit of {MAX_ADDED_TOKEN_BYTES}"
            )));
        }
        let mut vocab = Map::new();
        for (id, token) in v.tokens.iter().enumerate() {
            if vocab.insert(token.clone(), json!(id)).is_some() {
                return Err(bad(format!("token {token:?} appears twice")));
            }
        }
        let added = added_tokens_json(v);
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer(&v.pre)?,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": v.merges},
        });
        let tokenizer: Tokenizer = spec.to_string().parse().map_err(|e| bad(format!("{e}")))?;
        let named = |id: Option<u32>| -> Result<Option<(u32, String)>> {
            id.map(|id| {
                v.tokens
                    .get(id as usize)
                    .map(|t| (id, t.clone()))
                    .ok_or_else(|| bad(format!("special token id {id} is outside the vocabulary")))
            })
            .transpose()
        };
        let (bos, eos) = (named(v.bos)?, named(v.eos)?);
        // A GGUF's template has no limit of its own (a config's or a `chat_template.jinja`'s
        // is the file's): the node sends it to its sandbox whole.
        let max = super::hf_tokenizer_config::MAX_CHAT_TEMPLATE_BYTES;
        if let Some(t) = v.chat_template.as_ref().filter(|t| t.len() > max) {
            return Err(bad(format!(
                "a chat template of {} bytes, over the limit of {max}",
                t.len()
            )));
        }
        Ok(Self {
            tokenizer,
            memory_bytes: memory_bound(v),
            chat_template: v.chat_template.as_deref().map(lf_line_ends),
            bos,
            eos,
            add_bos: v.add_bos,
        })
    }

    /// Token ids of `text`. Control tokens written in the text (`<|im_start|>`) are matched
    /// whole; a BOS token is put first when the model asks for one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.leading_bos().into_iter().collect();
        ids.extend(self.encode_plain(text)?);
        Ok(ids)
    }

    /// Token ids of a rendered chat: as [`Self::encode`], except that a text whose own
    /// tokens already start with the BOS id (a template that writes `{{ bos_token }}`) is not
    /// given a second one (11.8).
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.encode_plain(text)?;
        Ok(match self.leading_bos() {
            Some(bos) if plain.first() != Some(&bos) => std::iter::once(bos).chain(plain).collect(),
            _ => plain,
        })
    }

    /// Token ids of `text` with no BOS token: a piece of a longer text (a text dataset).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| bad(format!("encoding: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The BOS id that starts every encoded text, if the model asks for one and has one.
    pub fn leading_bos(&self) -> Option<u32> {
        match (self.add_bos, &self.bos) {
            (true, Some((bos, _))) => Some(*bos),
            _ => None,
        }
    }

    /// The text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| bad(format!("decoding: {e}")))
    }

    /// Whether `id` ends a generation (the model's EOS token).
    pub fn is_end(&self, id: u32) -> bool {
        self.eos.as_ref().is_some_and(|(e, _)| *e == id)
    }

    /// A bound on the memory this tokenizer holds: its tokens and merges, several times over
    /// (the tokenizer's maps and the JSON it is built from).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// `messages` rendered with the model's chat template, ready for the assistant's answer
    /// (one chat: its own [`TEMPLATE_FUEL`]), on the caller's thread: for tools and tests
    /// with known templates; a task's chats go through [`TextCodec::render_chats`].
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.chat_renderer(TEMPLATE_FUEL)?.render(messages)
    }

    /// The chat template compiled once, to render chat after chat, all of them together
    /// within `budget` template instructions (11.8).
    pub fn chat_renderer(&self, budget: u64) -> Result<ChatRenderer<'_>> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| bad("the model has no chat template; send plain text prompts"))?;
        ChatRenderer::new(template, self.bos_token(), self.eos_token(), budget)
    }

    /// The BOS token's string, `""` if the model has none (the template's `bos_token`).
    fn bos_token(&self) -> String {
        self.bos.as_ref().map(|b| b.1.clone()).unwrap_or_default()
    }

    /// The EOS token's string, `""` if the model has none (the template's `eos_token`).
    fn eos_token(&self) -> String {
        self.eos.as_ref().map(|e| e.1.clone()).unwrap_or_default()
    }

    /// A task's chats rendered in order by one compiled template within
    /// [`TASK_TEMPLATE_FUEL`], up to the first that fails or the one that brings their texts
    /// past `max_total_bytes` together (11.8). In a thread inside [`sandboxed`], the
    /// rendering runs in that sandbox (a child process with memory and CPU limits, on the
    /// node), since fuel bounds neither what a template allocates nor what one instruction
    /// costs; the result is the same either way. `Err` only when the sandbox itself failed.
    pub fn render_chats(
        &self,
        chats: &[Vec<ChatMessage>],
        max_total_bytes: usize,
    ) -> Result<Rendered> {
        let Some(template) = self.chat_template.as_deref() else {
            return Ok(Rendered {
                texts: Vec::new(),
                failure: (!chats.is_empty())
                    .then(|| bad("the model has no chat template; send plain text prompts")),
            });
        };
        if chats.is_empty() {
            return Ok(Rendered::default());
        }
        match SANDBOX.with(|s| s.borrow().clone()) {
            Some(sandbox) => sandbox.render(&TemplateRun {
                template: template.to_owned(),
                bos_token: self.bos_token(),
                eos_token: self.eos_token(),
                chats: chats.to_vec(),
                budget: TASK_TEMPLATE_FUEL,
                max_total_bytes,
            }),
            None => render_in_order(
                template,
                (self.bos_token(), self.eos_token()),
                chats,
                (TASK_TEMPLATE_FUEL, max_total_bytes),
                RENDER_STACK_BYTES,
            ),
        }
    }
}

/// Chats rendered by one template, in order: their texts up to the first chat that failed,
/// and why it failed (an error on `inputs`, or on the template as `tokenizer`). A chat whose
/// text brings the texts past `max_total_bytes` together is the last rendered (its caller
/// refuses it).
#[derive(Debug, Default)]
pub struct Rendered {
    /// The rendered texts, one per chat, in order.
    pub texts: Vec<String>,
    /// Why the chat after the last text could not be rendered; `None` if none failed.
    pub failure: Option<ComputeError>,
}

/// All that rendering a task's chats needs, and nothing else: what the node sends to its
/// rendering sandbox ([`RenderSandbox`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemplateRun {
    /// The template's source, line ends already made LF (11.8).
    pub template: String,
    /// The template's `bos_token`.
    pub bos_token: String,
    /// The template's `eos_token`.
    pub eos_token: String,
    /// The chats, in order.
    pub chats: Vec<Vec<ChatMessage>>,
    /// Template instructions the chats share.
    pub budget: u64,
    /// Rendering stops after the chat that brings the texts past this many bytes.
    pub max_total_bytes: usize,
}

impl TemplateRun {
    /// Rendered in this process, as [`TextCodec::render_chats`] does without a sandbox (on a
    /// thread of [`RENDER_STACK_BYTES`]).
    pub fn render_here(&self) -> Result<Rendered> {
        self.render_on_stack(RENDER_STACK_BYTES)
    }

    /// Rendered in this process on a thread of `stack` bytes (the node's sandbox:
    /// [`SANDBOX_STACK_BYTES`]).
    pub fn render_on_stack(&self, stack: usize) -> Result<Rendered> {
        render_in_order(
            &self.template,
            (self.bos_token.clone(), self.eos_token.clone()),
            &self.chats,
            (self.budget, self.max_total_bytes),
            stack,
        )
    }
}

/// The stack of the thread every chat template renders on in process, whatever thread asks
/// (a tokio thread has 2 MiB): minijinja recurses once per level of a nested value when it
/// prints, compares or drops one, and bounds neither the depth nor the stack, so a stack
/// overflow (which aborts the whole process) is bounded by giving the rendering a known
/// stack: eight times what the node's sandbox gives ([`SANDBOX_STACK_BYTES`]), so a template
/// the node admitted renders on every worker and verifier. Reserved, not used, until a
/// template recurses.
pub const RENDER_STACK_BYTES: usize = 64 << 20;
/// The stack of the rendering thread in the node's sandbox: a template that recurses deeper
/// ends the child and is refused.
pub const SANDBOX_STACK_BYTES: usize = 8 << 20;

/// [`render_chats_here`] on a thread of its own with `stack` bytes of stack; a panic in
/// minijinja (a capacity overflow in `[1] * 2**62`, say) fails the chat it rendered, on the
/// template. `Err` only if the thread could not start.
fn render_in_order(
    template: &str,
    tokens: (String, String),
    chats: &[Vec<ChatMessage>],
    (budget, max_total_bytes): (u64, usize),
    stack: usize,
) -> Result<Rendered> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("chat-template".into())
            .stack_size(stack)
            .spawn_scoped(scope, || {
                render_chats_here(template, tokens, chats, budget, max_total_bytes)
            })
            .map_err(|e| ComputeError::Sandbox(format!("cannot start a rendering thread: {e}")))?;
        Ok(thread.join().unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Rendered {
                texts: Vec::new(),
                failure: Some(bad(format!("chat template: rendering failed: {why}"))),
            }
        }))
    })
}

fn render_chats_here(
    template: &str,
    (bos_token, eos_token): (String, String),
    chats: &[Vec<ChatMessage>],
    budget: u64,
    max_total_bytes: usize,
) -> Rendered {
    let mut renderer = match ChatRenderer::new(template, bos_token, eos_token, budget) {
        Ok(r) => r,
        Err(e) => {
            return Rendered {
                texts: Vec::new(),
                failure: Some(e),
            }
        }
    };
    let mut out = Rendered::default();
    let mut total = 0usize;
    for chat in chats {
        match renderer.render(chat) {
            Ok(text) => {
                total = total.saturating_add(text.len());
                out.texts.push(text);
                if total > max_total_bytes {
                    break;
                }
            }
            Err(e) => {
                out.failure = Some(e);
                break;
            }
        }
    }
    out
}

/// Where a thread's chat templates are rendered instead of in the process itself: the node's
/// child process with memory and CPU limits (`market-template-sandbox`). Must render as
/// [`TemplateRun::render_here`] does; `Err` only for a failure of the sandbox itself.
pub trait RenderSandbox: Send + Sync {
    /// `run` rendered, or why the sandbox could not say.
    fn render(&self, run: &TemplateRun) -> Result<Rendered>;
}

thread_local! {
    static SANDBOX: std::cell::RefCell<Option<std::sync::Arc<dyn RenderSandbox>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with every chat rendering of this thread ([`TextCodec::render_chats`]) done in
/// `sandbox`: the node wraps its checks of what clients send (task posts, served requests) in
/// it, so a template that allocates without bound or runs one costly instruction after
/// another stops a child process, not the node. Tasks it admitted render within its limits,
/// so workers and verifiers render them in process.
pub fn sandboxed<R>(sandbox: std::sync::Arc<dyn RenderSandbox>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<std::sync::Arc<dyn RenderSandbox>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SANDBOX.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(SANDBOX.with(|s| s.borrow_mut().replace(sandbox)));
    f()
}

/// A chat template compiled once ([`TextCodec::chat_renderer`]): parsing it again for every
/// chat would let a large template cost its parse once per chat of a task.
#[derive(Debug)]
pub struct ChatRenderer<'a> {
    env: minijinja::Environment<'a>,
    bos_token: String,
    eos_token: String,
    /// Template instructions left to the chats still to render.
    fuel_left: u64,
}

impl<'a> ChatRenderer<'a> {
    /// `template` (its line ends already LF) compiled, with the token strings it is given and
    /// `budget` instructions for all the chats it will render.
    fn new(template: &'a str, bos_token: String, eos_token: String, budget: u64) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        // As Hugging Face renders chat templates (so the prompt is the one the model's
        // authors meant), with Python's string methods (`.strip()`, `.startswith()`...).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| bad(format!("chat template: {e}")))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            fuel_left: budget,
        })
    }

    /// Template instructions left to the chats still to render.
    pub fn fuel_left(&self) -> u64 {
        self.fuel_left
    }

    /// `messages` rendered, ready for the assistant's answer, with fuel
    /// `min(TEMPLATE_FUEL, what is left)`; what it consumed is no longer left.
    pub fn render(&mut self, messages: &[ChatMessage]) -> Result<String> {
        let fuel = TEMPLATE_FUEL.min(self.fuel_left);
        self.env.set_fuel(Some(fuel));
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| bad(format!("chat template: {e}")))?;
        // The output is written into a buffer that refuses to grow past the limit, so a
        // template that prints without end stops there.
        let mut out = Bounded(Vec::new(), false);
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            },
            &mut out,
        );
        let captured = rendered.map_err(|e| {
            if out.1 {
                ComputeError::config(
                    "inputs",
                    format!("a chat renders to more than {MAX_PROMPT_BYTES} bytes"),
                )
            } else if out_of_fuel(&e) && fuel < TEMPLATE_FUEL {
                ComputeError::config(
                    "inputs",
                    format!(
                        "the chats take more than {TASK_TEMPLATE_FUEL} template instructions in all"
                    ),
                )
            } else {
                bad(format!("chat template: {e}"))
            }
        })?;
        let consumed = captured
            .state()
            .fuel_levels()
            .map_or(fuel, |(consumed, _)| consumed);
        self.fuel_left = self.fuel_left.saturating_sub(consumed);
        String::from_utf8(out.0).map_err(|_| bad("chat template: output is not UTF-8"))
    }
}

/// Whether `e` is minijinja running out of fuel, or an error it caused (an include or a
/// block that ran out is reported as its own kind of error, with the cause as its source).
fn out_of_fuel(e: &minijinja::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<minijinja::Error>()
            .is_some_and(|m| m.kind() == minijinja::ErrorKind::OutOfFuel)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A template's source with every CR LF, then every remaining CR, made LF: what Jinja2 (and
/// so `transformers`) does to a template's source before anything else, string literals
/// included, and minijinja does not (11.8).
fn lf_line_ends(template: &str) -> String {
    template.replace("\r\n", "\n").replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn splits(pre: &Value, text: &str) -> Vec<String> {
        let pre: PreTokenizerWrapper = serde_json::from_value(pre.clone()).unwrap();
        let mut s = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_owned())
            .collect()
    }

    /// The pinned `\p{N}` split is `Digits` with `individual_digits` on numeric characters
    /// of every age (ASCII, Arabic-Indic, NKo, superscripts, fractions, Roman numerals,
    /// fullwidth, mathematical, circled, Kaktovik), and unlike `Digits` it does not move with
    /// the compiler: this compiler's Unicode 17 knows the Tolong Siki digits (U+11DE0..) as
    /// numeric, Oniguruma's Unicode 16 tables do not, so `Digits` isolates them here and the
    /// pinned split leaves them to ByteLevel, as it would under any compiler.
    #[test]
    fn the_numeric_split_is_digits_one_by_one_on_pinned_tables() {
        let text = "a1b22 ½x Ⅻ٣߀ 3.14 ²³ ０９ 𝟎𝟗 ①⑳ 𝋀𝋓 end ⁴²";
        let digits = json!({"type": "Digits", "individual_digits": true});
        let ours = splits(&digits_one_by_one(), text);
        assert_eq!(ours, splits(&digits, text));
        assert!(ours.len() > 30, "{ours:?}");
        let smollm = pre_tokenizer("smollm").unwrap();
        let with_digits = json!({"type": "Sequence", "pretokenizers": [digits,
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
        assert_eq!(splits(&smollm, text), splits(&with_digits, text));

        let newer = "x\u{11DE0}\u{11DE1}y";
        assert_eq!(splits(&digits_one_by_one(), newer), [newer]);
        // What `Digits` does depends on the compiler (split on this one).
        let compiler_knows = newer.chars().nth(1).is_some_and(char::is_numeric);
        assert_eq!(splits(&digits, newer).len() == 4, compiler_knows);
    }
}

#[cfg(test)]
mod chat_bos_tests {
    use super::*;
    use crate::llama::fixtures::byte_vocab;

    #[test]
    fn a_chat_that_starts_with_the_bos_gets_no_second_one() {
        let mut v = byte_vocab();
        v.add_bos = true;
        let codec = TextCodec::from_gguf(&v).unwrap();
        let bos = v.bos.unwrap();
        // A template that writes the BOS itself: one BOS, as `transformers` and llama.cpp give.
        let chat = codec.encode_chat("<|im_start|>user").unwrap();
        assert_eq!(chat.iter().filter(|&&t| t == bos).count(), 1, "{chat:?}");
        assert_eq!(chat[0], bos);
        // One that does not: the model's BOS rule, as for a plain prompt.
        assert_eq!(
            codec.encode_chat("hi").unwrap(),
            codec.encode("hi").unwrap()
        );
        assert_eq!(codec.encode("hi").unwrap()[0], bos);
        // A plain prompt that starts with the BOS's string keeps the rule (two BOS).
        let plain = codec.encode("<|im_start|>user").unwrap();
        assert_eq!(plain.iter().filter(|&&t| t == bos).count(), 2, "{plain:?}");
    }
}

#[cfg(test)]
mod line_end_tests {
    use super::*;
    use crate::llama::fixtures::{byte_vocab, CHATML};

    /// A template's CR LF and lone CR are LF, as Jinja2 reads any template (11.8): in the text
    /// it prints and in its string literals alike.
    #[test]
    fn a_template_renders_with_lf_line_ends_whatever_its_source_has() {
        let chat = [ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }];
        let render = |template: String| {
            let mut v = byte_vocab();
            v.chat_template = Some(template);
            TextCodec::from_gguf(&v)
                .unwrap()
                .render_chat(&chat)
                .unwrap()
        };
        let lf = render(CHATML.into());
        assert_eq!(
            lf,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(render(CHATML.replace('\n', "\r\n")), lf);
        assert_eq!(render(CHATML.replace('\n', "\r")), lf);
        // In a string literal, and at the very end (one trailing line end is dropped).
        assert_eq!(render("{{ 'a\r\nb\rc' }}\r\n".into()), "a\nb\nc");
        // An escape sequence is not a line end of the source: it stays.
        assert_eq!(render(r"{{ 'a\r' }}".into()), "a\r");
    }
}

#[cfg(test)]
mod fuel_tests {
    use super::*;
    use crate::llama::fixtures::{byte_vocab, CHATML};

    /// A template over 4 MiB is refused, whatever it came in (a GGUF's has no limit of its
    /// own): the node sends it to its sandbox, whose request it must fit.
    #[test]
    fn a_chat_template_over_four_mib_is_refused() {
        let max = crate::llama::hf_tokenizer_config::MAX_CHAT_TEMPLATE_BYTES;
        let mut v = byte_vocab();
        v.chat_template = Some(format!("{CHATML}{}", " ".repeat(max - CHATML.len())));
        TextCodec::from_gguf(&v).unwrap();
        v.chat_template.as_mut().unwrap().push(' ');
        let e = TextCodec::from_gguf(&v).unwrap_err();
        assert!(
            matches!(&e, ComputeError::InvalidBlob { what: "tokenizer", reason } if reason.contains("over the limit of 4194304")),
            "{e}"
        );
    }

    /// A value nested 80,000 deep (minijinja recurses once per level to drop it) renders from
    /// a thread with a tokio thread's 2 MiB of stack: the rendering runs on its own thread of
    /// `RENDER_STACK_BYTES`. Rendered on the caller's thread, it overflowed the stack and
    /// aborted the process (a worker's, a verifier's, or the node's), after the node's
    /// sandbox had admitted it.
    #[test]
    fn a_value_nested_past_a_small_stack_renders_on_the_rendering_thread() {
        let mut v = byte_vocab();
        v.chat_template = Some(format!(
            "{{% set ns = namespace(a=1) %}}{{% for i in range(80000) %}}{{% set ns.a = [ns.a] %}}{{% endfor %}}{CHATML}"
        ));
        let codec = TextCodec::from_gguf(&v).unwrap();
        let chats = vec![vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }]];
        let rendered = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || codec.render_chats(&chats, usize::MAX))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(rendered.failure.is_none(), "{:?}", rendered.failure);
        assert_eq!(rendered.texts.len(), 1);
    }

    /// The chats of one renderer share its budget: what each consumes is gone for the next,
    /// and the chat that finds too little left fails on `inputs`, not on the template.
    #[test]
    fn chats_share_one_instruction_budget() {
        let mut v = byte_vocab();
        v.chat_template = Some(CHATML.into());
        let codec = TextCodec::from_gguf(&v).unwrap();
        let chat = [ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }];
        let mut probe = codec.chat_renderer(TASK_TEMPLATE_FUEL).unwrap();
        probe.render(&chat).unwrap();
        let one = TASK_TEMPLATE_FUEL - probe.fuel_left;
        eprintln!("one ChatML chat of one message: {one} instructions");
        assert!(one > 10 && one < 10_000, "{one}");
        let mut renderer = codec.chat_renderer(10 * one + one / 2).unwrap();
        for i in 0..10 {
            assert_eq!(
                renderer.render(&chat).unwrap(),
                codec.render_chat(&chat).unwrap(),
                "chat {i}"
            );
        }
        match renderer.render(&chat).unwrap_err() {
            ComputeError::InvalidConfig { field, reason } => {
                assert_eq!(field, "inputs");
                assert!(reason.contains("template instructions in all"), "{reason}");
            }
            other => panic!("{other}"),
        }
        // Running out inside an include (the template includes itself, without end) is the budget
        // too: minijinja reports it as a failed include caused by running out.
        let mut v = byte_vocab();
        v.chat_template = Some("{% include 'chat' %}".into());
        let codec = TextCodec::from_gguf(&v).unwrap();
        let mut renderer = codec.chat_renderer(5).unwrap();
        match renderer.render(&chat).unwrap_err() {
            ComputeError::InvalidConfig { field, reason } => {
                assert_eq!(field, "inputs", "{reason}");
            }
            other => panic!("{other}"),
        }
        // One chat alone past the per-chat fuel is the template's fault, as before.
        let mut v = byte_vocab();
        v.chat_template = Some(
            "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}".into(),
        );
        let e = TextCodec::from_gguf(&v)
            .unwrap()
            .render_chat(&chat)
            .unwrap_err();
        assert!(
            matches!(&e, ComputeError::InvalidBlob { what: "tokenizer", reason } if reason.contains("fuel")),
            "{e}"
        );
    }
}
