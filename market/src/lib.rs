//! The market node: REST API, task lifecycle, settlement (filled by the node issue), and the
//! audit plan the node shows a buyer when a task is posted.

pub use market_protocol as protocol;

pub mod adversary;
pub mod audit_plan;
