//! The market verifier: derives a challenge from a commitment and a beacon, checks the opened
//! checkpoints against the committed root, re-executes the sampled segments with
//! `market-compute` (the very code the worker ran), narrows a failure to its first bad step,
//! and signs a verdict.

pub mod answers;
pub mod audit;
pub mod daemon;

pub use audit::{audit, recheck_segments, AuditError, AuditReport, SamplePolicy};
