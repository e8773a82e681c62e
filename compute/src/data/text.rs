//! Text datasets: UTF-8 text tokenized by a model's own tokenizer (`spec/COMPUTE.md` section 3),
//! so a buyer uploads the text and the GGUF file it fine-tunes, not a token file it made itself.
//!
//! The text is cut into pieces that are tokenized apart and concatenated: after a newline once
//! a piece holds at least [`MIN_PIECE_BYTES`], and at most [`MAX_PIECE_BYTES`] each. The cut
//! bounds the tokenizer's memory by a piece rather than by the whole text, and lets pieces be
//! tokenized in parallel, while every worker and verifier still gets the same tokens: the
//! pieces are a function of the text alone. The lower bound keeps the tokenizer's cost per call
//! from dominating: a text of empty lines cut at every newline tokenized at 1 MB/s.

use rayon::prelude::*;

use market_protocol::{BlobId, Hash};

use super::{Dataset, MAX_DATASET_BYTES};
use crate::error::{ComputeError, Result};
use crate::llama::gguf::{self, GgufVocab};
use crate::llama::hf_tokenizer;
use crate::llama::text::TextCodec;

/// The longest piece of text tokenized at once, in bytes.
pub const MAX_PIECE_BYTES: usize = 4096;

/// A piece ends at a newline only once it holds at least this many bytes.
pub const MIN_PIECE_BYTES: usize = 1024;

/// Text per parallel batch of pieces (a batch ends at a piece's end, so batching never
/// changes the tokens).
const BATCH_BYTES: usize = 1 << 20;

fn invalid(what: &'static str, reason: impl Into<String>) -> ComputeError {
    ComputeError::InvalidBlob {
        what,
        reason: reason.into(),
    }
}

/// The end of the piece of `text` that starts at `start`: just after the first newline that
/// makes the piece at least [`MIN_PIECE_BYTES`] long, or [`MAX_PIECE_BYTES`] on, moved back to
/// a character boundary, or the end of the text.
fn piece_end(text: &str, start: usize) -> usize {
    let limit = (start + MAX_PIECE_BYTES).min(text.len());
    let from = (start + MIN_PIECE_BYTES - 1).min(limit);
    if let Some(nl) = text.as_bytes()[from..limit]
        .iter()
        .position(|&b| b == b'\n')
    {
        return from + nl + 1;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The pieces of `text`, in order (none for an empty text).
pub fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    std::iter::from_fn(move || {
        (start < text.len()).then(|| {
            let end = piece_end(text, start);
            let piece = &text[start..end];
            start = end;
            piece
        })
    })
}

/// The vocabulary of a tokenizer blob: a GGUF file's (its metadata; the tensors are not
/// read) or a Hugging Face `tokenizer.json`'s (11.7a), told apart by GGUF's magic bytes.
pub fn tokenizer_vocab(bytes: &[u8]) -> Result<GgufVocab> {
    if bytes.starts_with(b"GGUF") {
        return Ok(gguf::read_header(bytes)?.vocab);
    }
    hf_tokenizer::vocab_from_tokenizer_json(bytes)
}

/// The tokenizer of a tokenizer blob ([`tokenizer_vocab`]).
pub fn tokenizer_from_blob(bytes: &[u8]) -> Result<TextCodec> {
    TextCodec::from_gguf(&tokenizer_vocab(bytes)?)
}

/// Refuses a tokenizer of `tokens` tokens for a model of `vocab`: its ids must be below it.
pub fn check_tokenizer_size(tokens: usize, vocab: usize) -> Result<()> {
    if tokens > vocab {
        return Err(ComputeError::config(
            "dataset.tokenizer",
            format!("has {tokens} tokens, more than the model's vocabulary of {vocab}"),
        ));
    }
    Ok(())
}

/// The most a kept token stream may be ([`kept_tokens`]): a token per byte of the largest
/// text, a BOS, and the hash.
pub const MAX_KEPT_TOKENS_BYTES: u64 = 4 * (MAX_DATASET_BYTES as u64 + 1) + 32;

/// The key under which a holder keeps a text blob's tokens ([`crate::BlobSource::derived`]):
/// the text, the tokenizer and the vocabulary they were tokenized for. The tokenization code
/// is the holder's to tell apart (a worker's or verifier's cache names what it keeps by this
/// key and its own build), so tokens made by another build are never read back.
pub fn tokens_key(text: &BlobId, tokenizer: &BlobId, vocab: usize) -> Hash {
    Hash::of(
        &[
            b"market/kept-tokens\0".as_slice(),
            text.0.as_bytes(),
            tokenizer.0.as_bytes(),
            &(vocab as u64).to_le_bytes(),
        ]
        .concat(),
    )
}

/// A token stream as a holder keeps it: each id as 4 little-endian bytes, then the blake3 of
/// those bytes (so a file cut short or damaged is refused on reading).
pub fn kept_tokens(tokens: &[u32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 * tokens.len() + 32);
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    let hash = Hash::of(&bytes);
    bytes.extend_from_slice(hash.as_bytes());
    bytes
}

/// The token stream of a kept file ([`kept_tokens`]), if it is whole (its hash matches) and
/// every id is below `vocab`; `None` otherwise, and the text is tokenized again.
pub fn tokens_from_kept(bytes: &[u8], vocab: usize) -> Option<Vec<u32>> {
    let (ids, hash) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if ids.len() % 4 != 0 || Hash::of(ids).as_bytes() != hash {
        return None;
    }
    let tokens: Vec<u32> = ids
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    tokens
        .iter()
        .all(|&t| (t as usize) < vocab)
        .then_some(tokens)
}

/// The token stream of a text blob: the BOS id first if the tokenizer asks for one, then each
/// piece's tokens (no BOS) in order. Every id is below `vocab`, the model's vocabulary size.
pub fn tokenize(text: &[u8], codec: &TextCodec, vocab: usize) -> Result<Dataset> {
    tokenize_in_batches(text, codec, vocab, BATCH_BYTES)
}

fn tokenize_in_batches(
    text: &[u8],
    codec: &TextCodec,
    vocab: usize,
    batch_bytes: usize,
) -> Result<Dataset> {
    check_tokenizer_size(codec.vocab_size(), vocab)?;
    if text.len() > MAX_DATASET_BYTES {
        return Err(invalid(
            "dataset",
            format!(
                "{} bytes of text, over the limit of {MAX_DATASET_BYTES}",
                text.len()
            ),
        ));
    }
    let text = std::str::from_utf8(text).map_err(|e| {
        invalid(
            "dataset",
            format!("not UTF-8 text: invalid at byte {}", e.valid_up_to()),
        )
    })?;
    // Batches of whole pieces, tokenized in parallel and joined in order.
    let mut batches = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = start;
        while end < text.len() && end - start < batch_bytes {
            end = piece_end(text, end);
        }
        batches.push(&text[start..end]);
        start = end;
    }
    // Every batch's result kept in order, so the error reported is the first piece's that
    // fails, whichever thread finds one first.
    let encoded: Vec<Result<Vec<u32>>> = batches
        .par_iter()
        .map(|batch| {
            let mut ids = Vec::new();
            for piece in pieces(batch) {
                ids.extend(codec.encode_plain(piece)?);
            }
            Ok(ids)
        })
        .collect();
    let encoded = encoded.into_iter().collect::<Result<Vec<_>>>()?;
    let mut tokens: Vec<u32> = codec.leading_bos().into_iter().collect();
    tokens.reserve(encoded.iter().map(Vec::len).sum());
    for ids in encoded {
        tokens.extend(ids);
    }
    Ok(Dataset::Tokens(tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::fixtures::bpe_vocab;

    fn tokens(d: Dataset) -> Vec<u32> {
        match d {
            Dataset::Tokens(t) => t,
            other => panic!("not a token stream: {other:?}"),
        }
    }

    #[test]
    fn batching_never_changes_the_tokens_and_a_bos_comes_once_first() {
        let mut vocab = bpe_vocab();
        let codec = TextCodec::from_gguf(&vocab).unwrap();
        let text = "the band and the\nthen\n\n  in the end\n".repeat(40);
        let whole = tokens(tokenize(text.as_bytes(), &codec, 200).unwrap());
        for batch in [1, 7, 100] {
            let batched = tokens(tokenize_in_batches(text.as_bytes(), &codec, 200, batch).unwrap());
            assert_eq!(batched, whole, "batches of {batch} bytes");
        }
        // The merges are used: fewer tokens than characters.
        assert!(whole.len() < text.len() * 2 / 3, "{} tokens", whole.len());
        vocab.add_bos = true;
        let with_bos = TextCodec::from_gguf(&vocab).unwrap();
        let again = tokens(tokenize(text.as_bytes(), &with_bos, 200).unwrap());
        assert_eq!(again[0], vocab.bos.unwrap());
        assert_eq!(again[1..], whole[..]);
        assert_eq!(again.iter().filter(|&&t| t == again[0]).count(), 1);
    }

    #[test]
    fn pieces_end_after_newlines_and_at_the_size_limit_on_a_character_boundary() {
        assert_eq!(pieces("").count(), 0);
        assert_eq!(pieces("a\n\nb c\n").collect::<Vec<_>>(), ["a\n\nb c\n"]);
        assert_eq!(pieces("no newline").collect::<Vec<_>>(), ["no newline"]);
        // A newline ends a piece only from its 1024th byte on: one as byte 1023 (index 1022)
        // does not, one as byte 1024 (index 1023) does.
        let short = format!("{}\nbc", "a".repeat(MIN_PIECE_BYTES - 2));
        assert_eq!(
            pieces(&short).map(str::len).collect::<Vec<_>>(),
            [short.len()]
        );
        let exact = format!("{}\nb\nc", "a".repeat(MIN_PIECE_BYTES - 1));
        assert_eq!(exact.as_bytes()[MIN_PIECE_BYTES - 1], b'\n');
        assert_eq!(
            pieces(&exact).map(str::len).collect::<Vec<_>>(),
            [MIN_PIECE_BYTES, 3]
        );
        // A long line of two-byte characters, offset by one byte so the limit falls inside
        // a character: every piece is whole characters, at most the limit, and they rejoin.
        let line = format!("x{}\nend", "é".repeat(5000));
        let parts: Vec<&str> = pieces(&line).collect();
        assert_eq!(parts.concat(), line);
        assert!(parts.iter().all(|p| p.len() <= MAX_PIECE_BYTES));
        assert_eq!(parts[0].len(), MAX_PIECE_BYTES - 1);
        assert_eq!(parts.last(), Some(&"end"));
        assert_eq!(parts[parts.len() - 2].chars().last(), Some('\n'));
    }
}
