//! The market worker: runs tasks with `market-compute` (the same code the verifier runs),
//! writes a result bundle, commits to every checkpoint with a signed Merkle root, and opens
//! what it is challenged on.
//!
//! [`Behavior`] also holds the cheating strategies, as a testing aid: the adversary suite uses
//! them to measure how often audits catch each one.

pub mod behavior;
pub mod daemon;
pub mod exec;
pub mod pool_keep;
pub mod serve;

pub use behavior::Behavior;
pub use exec::{
    exec, exec_slot_round, exec_slot_round_from, exec_until, open_steps, CancelToken, ExecError,
    ExecReport, Progress,
};
