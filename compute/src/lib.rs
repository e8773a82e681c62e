//! Deterministic execution of market's tasks, shared by worker and verifier.
//!
//! One function at heart: [`TrainingJob::run_segment`] takes the state at the start of a
//! segment and returns the state at its end. The worker calls it for the whole run; the
//! verifier calls it for sampled segments. [`InferenceJob::run_item`] does the same for one
//! inference item. No network, no wall clock, no candle RNG: every draw comes from
//! [`rng::stream`], keyed by (task seed, purpose, step).
//!
//! Profiles: `repro` runs [`repro`]'s fixed-order kernels and is bitwise identical across runs,
//! thread counts and CPUs; `native` (and `cuda`, behind the feature of that name) run the same
//! maths on stock candle kernels and are audited with a tolerance ([`tolerance`]).

pub mod backend;
pub mod batch;
pub mod bundle;
pub mod data;
pub mod error;
pub mod inference;
pub mod init;
pub mod job;
pub mod llama;
pub mod native;
pub mod optim;
pub mod pool;
pub mod repro;
pub mod resources;
pub mod rng;
pub mod serving;
pub mod state;
pub mod tolerance;
pub mod zoo;

pub use backend::Backend;
pub use error::{ComputeError, Result};
pub use inference::{InferenceJob, InferenceOutput, ItemOutput};
pub use job::{BlobSource, NoBlobs, TrainingJob};
pub use state::TrainState;
