//! The arithmetic language: sums like `17+25=42`, one example per line. Learnable (the answer is
//! a function of the prompt) and checkable (a decoded answer is right or wrong).
//!
//! Tokens: `0`-`9` are 0-9, `+` is 10, `=` is 11, newline (end of answer, and padding) is 12.
//! Pairs for which [`is_held_out`] holds are never generated, so tests can ask a trained model
//! sums it has never seen.

use super::{Dataset, Example};
use crate::error::{ComputeError, Result};
use crate::rng::{self, Purpose};

/// The smallest vocabulary that holds the language.
pub const VOCAB: usize = 13;
/// The token of `+`.
pub const PLUS: u32 = 10;
/// The token of `=`.
pub const EQUALS: u32 = 11;
/// The token of a newline, which ends an answer and pads.
pub const END: u32 = 12;
/// The largest operand allowed.
pub const MAX_OPERAND: u32 = 9_999;
/// The most examples a task may generate.
pub const MAX_EXAMPLES: u32 = 1_000_000;

/// Whether the pair `(a, b)` is kept out of every generated training set.
pub fn is_held_out(a: u32, b: u32) -> bool {
    (a * 7 + b * 3) % 11 == 5
}

/// Tokens of a text in the language; `None` for a character outside it.
pub fn encode(text: &str) -> Option<Vec<u32>> {
    text.chars()
        .map(|c| match c {
            '0'..='9' => Some(c as u32 - '0' as u32),
            '+' => Some(PLUS),
            '=' => Some(EQUALS),
            '\n' => Some(END),
            _ => None,
        })
        .collect()
}

/// Text of tokens; tokens outside the language show as `?`.
pub fn decode(tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(|&t| match t {
            0..=9 => char::from(b'0' + t as u8),
            PLUS => '+',
            EQUALS => '=',
            END => '\n',
            _ => '?',
        })
        .collect()
}

/// The longest example for operands up to `max_operand`, in tokens (with its newline).
pub fn max_example_len(max_operand: u32) -> usize {
    let digits = |n: u32| n.to_string().len();
    2 * digits(max_operand) + digits(2 * max_operand) + 3
}

/// One example: the prompt `a+b=` and the answer `c\n`.
pub fn example(a: u32, b: u32) -> Example {
    let prompt = format!("{a}+{b}=");
    let text = format!("{prompt}{}\n", a + b);
    Example {
        tokens: encode(&text).unwrap_or_default(),
        answer_start: prompt.len(),
    }
}

/// The first `limit` held-out sums with operands in `0..=max_operand`, in order of `a` then
/// `b`: pairs no training set contains, for measuring how a model generalises.
pub fn held_out(max_operand: u32, limit: usize) -> Vec<Example> {
    (0..=max_operand)
        .flat_map(|a| (0..=max_operand).map(move |b| (a, b)))
        .filter(|&(a, b)| is_held_out(a, b))
        .take(limit)
        .map(|(a, b)| example(a, b))
        .collect()
}

/// Generates `examples` sums with operands in `0..=max_operand` from the task seed.
pub fn generate(seed: u64, max_operand: u32, examples: u32) -> Result<Dataset> {
    if max_operand == 0 || max_operand > MAX_OPERAND {
        return Err(ComputeError::config(
            "dataset.max_operand",
            format!("is {max_operand}, must be between 1 and {MAX_OPERAND}"),
        ));
    }
    if examples == 0 || examples > MAX_EXAMPLES {
        return Err(ComputeError::config(
            "dataset.examples",
            format!("is {examples}, must be between 1 and {MAX_EXAMPLES}"),
        ));
    }
    let mut rng = rng::stream(seed, Purpose::Data, 0);
    let bound = u64::from(max_operand) + 1;
    let mut out = Vec::with_capacity(examples as usize);
    while out.len() < examples as usize {
        let a = rng::below(&mut rng, bound) as u32;
        let b = rng::below(&mut rng, bound) as u32;
        if !is_held_out(a, b) {
            out.push(example(a, b));
        }
    }
    Ok(Dataset::Examples(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_scores_only_the_answer() {
        let e = example(17, 25);
        assert_eq!(decode(&e.tokens), "17+25=42\n");
        assert_eq!(e.answer_start, 6);
        assert_eq!(e.tokens.len(), 9);
        assert_eq!(max_example_len(49), 2 + 2 + 2 + 3);
        assert!(encode("1a").is_none());
    }

    #[test]
    fn generation_is_seeded_and_skips_held_out_pairs() {
        let a = generate(1, 49, 500).unwrap();
        assert_eq!(a, generate(1, 49, 500).unwrap());
        assert_ne!(a, generate(2, 49, 500).unwrap());
        let Dataset::Examples(ex) = a else { panic!() };
        for e in ex {
            let text = decode(&e.tokens);
            let (lhs, _) = text.split_once('=').unwrap();
            let (x, y) = lhs.split_once('+').unwrap();
            assert!(!is_held_out(x.parse().unwrap(), y.parse().unwrap()));
        }
    }
}
