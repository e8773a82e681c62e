//! The market node: REST API, task lifecycle, escrow and settlement through the ledger, work
//! dispatch to workers and verifiers, and the audit plan the node shows a buyer at post.

pub use market_protocol as protocol;

pub mod adversary;
pub mod api;
pub mod audit_plan;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod model;
pub mod p2p;
pub mod partial;
pub mod server;
pub mod serving;
pub mod store;
pub mod template_sandbox;
