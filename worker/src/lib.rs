//! The worker: runs tasks, commits to every checkpoint, answers challenges (filled by the audit issue).
//!
//! Skeleton: the crate exists so that the workspace and its dependency direction
//! (protocol at the bottom, market at the top) are fixed from the start.

pub use market_protocol as protocol;
