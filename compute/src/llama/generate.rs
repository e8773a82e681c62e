//! Generation with a KV cache, and its verification by one forward pass.
//!
//! A worker decodes token by token. A verifier does not: it runs the prompt and the committed
//! tokens through the model once (teacher forcing) and checks that each committed token is the
//! one the decoding rule picks from the logits before it. In `repro` the logits of that one
//! pass are bit for bit those the worker saw (each output's sums run in the same order whatever
//! the number of rows), so the check is exact.

use market_protocol::Decoding;

use super::native::{NativeCache, NativeLlama};
use super::repro::{KvCache, ReproLlama};
use super::text::TextCodec;
use crate::error::{ComputeError, Result};
use crate::inference::{choose, Sampling};

/// A forward pass with a cache: either profile.
pub trait Forward {
    /// The cache type.
    type Cache;
    /// An empty cache.
    fn new_cache(&self) -> Self::Cache;
    /// Logits of the last token of `tokens` (or of every token), after those in `cache`.
    fn forward(&self, tokens: &[u32], cache: &mut Self::Cache, every: bool) -> Result<Vec<f32>>;
    /// Vocabulary size.
    fn vocab(&self) -> usize;
    /// Most positions (prompt and answer).
    fn max_positions(&self) -> usize;
}

impl Forward for ReproLlama {
    type Cache = KvCache;
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config())
    }
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, every: bool) -> Result<Vec<f32>> {
        ReproLlama::forward(self, tokens, cache, every)
    }
    fn vocab(&self) -> usize {
        self.config().vocab_size
    }
    fn max_positions(&self) -> usize {
        self.config().max_position_embeddings
    }
}

impl Forward for NativeLlama {
    type Cache = NativeCache;
    fn new_cache(&self) -> NativeCache {
        NativeCache::new(self.config())
    }
    fn forward(&self, tokens: &[u32], cache: &mut NativeCache, every: bool) -> Result<Vec<f32>> {
        NativeLlama::forward(self, tokens, cache, every)
    }
    fn vocab(&self) -> usize {
        self.config().vocab_size
    }
    fn max_positions(&self) -> usize {
        self.config().max_position_embeddings
    }
}

/// How and how long to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Greedy or seeded sampling.
    pub decoding: Decoding,
    /// The task seed (sampling draws from stream (seed, Sample, item, n)).
    pub seed: u64,
    /// The item's index.
    pub item: u64,
    /// Most tokens generated.
    pub max_new_tokens: u32,
    /// Texts that end the answer when generated (the answer is cut before them).
    pub stop: Vec<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced its end token (the last committed token).
    End,
    /// A stop text appeared.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// A generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Every token chosen, the end token included: what a verifier checks.
    pub tokens: Vec<u32>,
    /// The raw logit of each chosen token. Committed with the tokens, so an answer computed
    /// with other weights or lower precision is caught even where it picked the same tokens.
    pub logits: Vec<f32>,
    /// The answer's text (end token left out, cut before a stop text).
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
}

/// `text` cut before the first stop text, if any appears.
fn cut_at_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// The answer to `prompt` (token ids), decoded token by token with a KV cache.
pub fn generate<M: Forward>(
    model: &M,
    codec: &TextCodec,
    prompt: &[u32],
    params: &GenerateParams,
) -> Result<Generation> {
    generate_streaming(model, codec, prompt, params, None)
}

/// Hands out an answer's text while it is generated, only what can no longer change: text that
/// may still turn out to be the start of a stop text, or the first bytes of a character
/// another token completes, is held back. The pieces concatenate to the final answer's text.
pub struct TextStream<'a> {
    on_text: &'a mut dyn FnMut(&str),
    sent: usize,
}

impl std::fmt::Debug for TextStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl<'a> TextStream<'a> {
    /// A stream that calls `on_text` with each new piece.
    pub fn new(on_text: &'a mut dyn FnMut(&str)) -> Self {
        Self { on_text, sent: 0 }
    }

    /// The answer's text so far (not yet cut at a stop text): sends what is settled.
    fn progress(&mut self, text: &str, stop: &[String]) {
        let mut settled = text.trim_end_matches('\u{FFFD}');
        // The longest end of the text that begins a stop text may still become one.
        let held = stop
            .iter()
            .flat_map(|s| (1..=s.len().min(settled.len())).map(move |n| (s, n)))
            .filter(|(s, n)| s.is_char_boundary(*n) && settled.ends_with(&s[..*n]))
            .map(|(_, n)| n)
            .max()
            .unwrap_or(0);
        settled = &settled[..settled.len() - held];
        self.send_up_to(settled);
    }

    /// Sends the rest of the final text.
    fn finish(&mut self, text: &str) {
        self.send_up_to(text);
    }

    fn send_up_to(&mut self, text: &str) {
        // Byte-level text only grows at its end, so what was sent is a prefix of `text`;
        // if a tokenizer ever broke that, nothing more is sent rather than a wrong piece.
        if text.len() > self.sent && text.is_char_boundary(self.sent) {
            (self.on_text)(&text[self.sent..]);
            self.sent = text.len();
        }
    }
}

/// [`generate`], handing the text out as it is generated (when `stream` is given).
pub fn generate_streaming<M: Forward>(
    model: &M,
    codec: &TextCodec,
    prompt: &[u32],
    params: &GenerateParams,
    mut stream: Option<&mut TextStream<'_>>,
) -> Result<Generation> {
    let g = generate_inner(model, codec, prompt, params, &mut stream)?;
    if let Some(stream) = stream {
        stream.finish(&g.text);
    }
    Ok(g)
}

fn generate_inner<M: Forward>(
    model: &M,
    codec: &TextCodec,
    prompt: &[u32],
    params: &GenerateParams,
    stream: &mut Option<&mut TextStream<'_>>,
) -> Result<Generation> {
    let mut cache = model.new_cache();
    let mut logits = model.forward(prompt, &mut cache, false)?;
    let mut tokens = Vec::new();
    let mut chosen = Vec::new();
    for n in 0..params.max_new_tokens {
        let row = std::mem::take(&mut logits);
        // A model that overflows has no answer (the same refusal in the check, so nobody is
        // blamed for it).
        if row.iter().any(|v| !v.is_finite()) {
            return Err(ComputeError::NonFinite {
                tensor: "logits".into(),
                step: n,
            });
        }
        let next = choose(
            &params.decoding,
            params.seed,
            row.clone(),
            params.item,
            u64::from(n),
        );
        chosen.push(row[next as usize]);
        tokens.push(next);
        if codec.is_end(next) {
            let text = codec.decode(&tokens[..tokens.len() - 1])?;
            return Ok(Generation {
                tokens,
                logits: chosen,
                text,
                finish: Finish::End,
            });
        }
        if !params.stop.is_empty() || stream.is_some() {
            let text = codec.decode(&tokens)?;
            if let Some(at) = cut_at_stop(&text, &params.stop) {
                return Ok(Generation {
                    tokens,
                    logits: chosen,
                    text: text[..at].to_string(),
                    finish: Finish::Stop,
                });
            }
            if let Some(stream) = stream.as_mut() {
                stream.progress(&text, &params.stop);
            }
        }
        if n + 1 < params.max_new_tokens {
            logits = model.forward(&[next], &mut cache, false)?;
        }
    }
    Ok(Generation {
        text: codec.decode(&tokens)?,
        tokens,
        logits: chosen,
        finish: Finish::Length,
    })
}

/// A committed answer that is not what the model gives.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerMismatch {
    /// Token `index` is not the one the decoding rule picks.
    #[error("generated token {index} is {committed}, the model picks {expected}")]
    Token {
        /// Position in the answer.
        index: usize,
        /// What was committed.
        committed: u32,
        /// What the model picks.
        expected: u32,
    },
    /// Token `index`'s committed logit is not the model's.
    #[error("generated token {index}'s logit is {committed}, the model gives {expected}")]
    Logit {
        /// Position in the answer.
        index: usize,
        /// What was committed.
        committed: f32,
        /// What the model gives.
        expected: f32,
    },
    /// The answer stops where the rules do not stop it (or runs past where they do).
    #[error("the answer ends wrongly: {0}")]
    Ending(String),
    /// The committed text is not the committed tokens' text.
    #[error("the text is not the tokens' text")]
    Text,
}

/// How closely a re-computed logit must match: bit for bit (`repro`), or within a relative
/// tolerance (`native`, `cuda`: other kernels round differently).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Match {
    /// The same bits.
    Exact,
    /// `|committed − recomputed| ≤ tol · (1 + |recomputed|)`; a committed token whose logit
    /// is that close to the rule's pick is accepted too (a near tie may fall either way).
    Within(f32),
}

impl Match {
    fn same(self, committed: f32, expected: f32) -> bool {
        match self {
            Self::Exact => committed.to_bits() == expected.to_bits(),
            Self::Within(tol) => (committed - expected).abs() <= tol * (1.0 + expected.abs()),
        }
    }
}

/// Checks a committed answer in one forward pass over `prompt ++ tokens[..len-1]`: every token
/// must be the decoding rule's pick with the committed logit, the answer must end exactly where
/// the rules end it, and `text` must be the tokens' text. `Ok(Err(..))` is a wrong answer;
/// `Err(..)` a failure to check (bad input).
pub fn check_answer<M: Forward>(
    model: &M,
    codec: &TextCodec,
    prompt: &[u32],
    params: &GenerateParams,
    answer: &Generation,
    how: Match,
) -> Result<std::result::Result<(), AnswerMismatch>> {
    if prompt.is_empty() {
        return Err(ComputeError::config("inputs", "an empty prompt"));
    }
    let n = answer.tokens.len();
    if answer.logits.len() != n {
        return Ok(Err(AnswerMismatch::Ending(format!(
            "{n} tokens with {} logits",
            answer.logits.len()
        ))));
    }
    if n == 0 || n > params.max_new_tokens as usize {
        return Ok(Err(AnswerMismatch::Ending(format!(
            "{n} tokens for at most {}",
            params.max_new_tokens
        ))));
    }
    // What the worker controls is checked before the pass, so a bad answer is a wrong
    // answer, not a failure to check.
    let v = model.vocab();
    if let Some(&t) = answer.tokens.iter().find(|&&t| t as usize >= v) {
        return Ok(Err(AnswerMismatch::Ending(format!(
            "token {t} is outside the vocabulary"
        ))));
    }
    if prompt.len() + n - 1 > model.max_positions() {
        return Ok(Err(AnswerMismatch::Ending(format!(
            "{n} tokens after a prompt of {} do not fit the model's {} positions",
            prompt.len(),
            model.max_positions()
        ))));
    }
    let mut input = prompt.to_vec();
    input.extend_from_slice(&answer.tokens[..n - 1]);
    let mut cache = model.new_cache();
    let logits = model.forward(&input, &mut cache, true)?;
    if logits.len() != input.len() * v {
        return Err(ComputeError::StateMismatch(
            "logits of the wrong size".into(),
        ));
    }
    for (i, &committed) in answer.tokens.iter().enumerate() {
        let row = (prompt.len() - 1 + i) * v;
        let row = &logits[row..row + v];
        let expected = choose(
            &params.decoding,
            params.seed,
            row.to_vec(),
            params.item,
            i as u64,
        );
        if row.iter().any(|v| !v.is_finite()) {
            return Err(ComputeError::NonFinite {
                tensor: "logits".into(),
                step: i as u32,
            });
        }
        // Another profile's rounding may pick differently only where the choice is nearly
        // tied: greedy, a logit within the tolerance of the best; sampling, a candidate whose
        // slice of the running sum lies within the tolerance of the draw.
        let near_tie = match (how, &params.decoding) {
            (Match::Exact, _) => false,
            (Match::Within(tol), Decoding::Greedy) => {
                row[committed as usize]
                    >= row[expected as usize] - tol * (1.0 + row[expected as usize].abs())
            }
            (Match::Within(tol), Decoding::Sample { .. }) => {
                Sampling::new(&params.decoding, params.seed, row, params.item, i as u64)
                    .could_pick(committed as usize, tol)
            }
        };
        if expected != committed && !near_tie {
            return Ok(Err(AnswerMismatch::Token {
                index: i,
                committed,
                expected,
            }));
        }
        if !how.same(answer.logits[i], row[committed as usize]) {
            return Ok(Err(AnswerMismatch::Logit {
                index: i,
                committed: answer.logits[i],
                expected: row[committed as usize],
            }));
        }
        // No token before the last may end the answer.
        if i + 1 < n && codec.is_end(committed) {
            return Ok(Err(AnswerMismatch::Ending(format!(
                "the end token at {i} is followed by more"
            ))));
        }
    }
    // Replay how the answer ends, from the (now known correct) tokens.
    let last = answer.tokens[n - 1];
    let (text, finish) = if codec.is_end(last) {
        (codec.decode(&answer.tokens[..n - 1])?, Finish::End)
    } else {
        let full = codec.decode(&answer.tokens)?;
        match cut_at_stop(&full, &params.stop) {
            Some(at) => (full[..at].to_string(), Finish::Stop),
            None => (full, Finish::Length),
        }
    };
    if finish == Finish::Length && n != params.max_new_tokens as usize {
        return Ok(Err(AnswerMismatch::Ending(format!(
            "stops after {n} tokens with no end token or stop text"
        ))));
    }
    if !params.stop.is_empty() && n > 1 {
        let before = codec.decode(&answer.tokens[..n - 1])?;
        if cut_at_stop(&before, &params.stop).is_some() {
            return Ok(Err(AnswerMismatch::Ending(
                "a stop text appeared before the last token".into(),
            )));
        }
    }
    if finish != answer.finish {
        return Ok(Err(AnswerMismatch::Ending(format!(
            "finish {:?}, the tokens give {finish:?}",
            answer.finish
        ))));
    }
    if text != answer.text {
        return Ok(Err(AnswerMismatch::Text));
    }
    Ok(Ok(()))
}
