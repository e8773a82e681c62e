//! Training and inference data: uploaded safetensors blobs, text tokenized by a model's own
//! tokenizer, or generators seeded from the task.
//!
//! Generators let demos and tests run without any download: an arithmetic language for `gpt`
//! and a teacher-MLP regression set for `mlp`.

pub mod arithmetic;
mod blob;
pub mod teacher;
pub mod text;

pub use blob::{
    parse_regression_blob, parse_regression_blob_x, parse_token_blob, MAX_DATASET_BYTES,
};

/// A dataset in memory, checked against the model it feeds.
#[derive(Debug, Clone, PartialEq)]
pub enum Dataset {
    /// A token stream: training windows of `context + 1` tokens, every position scored.
    Tokens(Vec<u32>),
    /// Separate examples (prompt then answer), each scored only on its answer tokens.
    Examples(Vec<Example>),
    /// Rows of features and targets.
    Regression {
        /// Features, `rows × features`, row-major.
        x: Vec<f32>,
        /// Targets, `rows × outputs`, row-major.
        y: Vec<f32>,
        /// Number of features.
        features: usize,
        /// Number of outputs.
        outputs: usize,
    },
}

/// One token sequence; positions at or after `answer_start` are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Tokens of prompt and answer.
    pub tokens: Vec<u32>,
    /// Index of the first answer token.
    pub answer_start: usize,
}

impl Dataset {
    /// Number of examples or rows (or token positions for a stream).
    pub fn len(&self) -> usize {
        match self {
            Self::Tokens(t) => t.len(),
            Self::Examples(e) => e.len(),
            Self::Regression { x, features, .. } => x.len() / (*features).max(1),
        }
    }

    /// Whether the dataset has nothing in it.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
