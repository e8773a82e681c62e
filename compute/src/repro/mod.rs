//! The `repro` profile: bitwise-identical results across runs, thread counts and CPUs.
//! See [`kernels`] for the rules that guarantee it.

pub mod gpt;
pub mod kernels;
pub mod mlp;
