//! Typed errors of the compute crate. Config errors name the offending field, so a buyer whose
//! task is refused learns what to change.

/// Why a task cannot be run, or a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// A field of the task is out of range or inconsistent with another.
    #[error("invalid task: `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// A dataset, weights or state blob does not have the expected content.
    #[error("invalid {what}: {reason}")]
    InvalidBlob { what: &'static str, reason: String },
    /// A blob the task names is not available.
    #[error("blob {0} is not available")]
    MissingBlob(market_protocol::BlobId),
    /// Training produced a NaN or infinity; the state is not hashed.
    #[error("non-finite value in `{tensor}` after step {step}: the run diverged")]
    NonFinite { tensor: String, step: u32 },
    /// A state does not belong to this task (wrong step or tensor layout).
    #[error("state does not fit this task: {0}")]
    StateMismatch(String),
    /// The task needs a profile this build cannot run.
    #[error("profile {0:?} is not available in this build{1}")]
    ProfileUnavailable(market_protocol::ExecutionProfile, &'static str),
    /// A `--device` that is neither `cpu` nor `cuda`.
    #[error("unknown device {0:?}: use cpu or cuda")]
    UnknownDevice(String),
    /// The run was stopped from outside (the worker's node gave up on the job).
    #[error("the run was cancelled")]
    Cancelled,
    /// The node's sandbox for chat templates failed (could not start, or answered nonsense):
    /// the node's fault, not the task's.
    #[error("the node could not render the chat template in its sandbox: {0}")]
    Sandbox(String),
    /// A candle kernel failed (native and cuda profiles).
    #[error("candle: {0}")]
    Candle(String),
    /// A prompt and the tokens asked for do not fit the model's positions (a client's mistake
    /// a server answers as one: OpenAI's `context_length_exceeded`).
    #[error("invalid task: `inputs` a prompt of {prompt} tokens plus {new} new ones does not fit the model's {positions} positions")]
    ContextLength {
        /// Tokens of the rendered prompt.
        prompt: usize,
        /// Tokens asked for.
        new: u32,
        /// The model's positions.
        positions: usize,
    },
}

impl ComputeError {
    /// An invalid field of the task, and why.
    pub fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

impl From<candle_core::Error> for ComputeError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(e.to_string())
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ComputeError>;
