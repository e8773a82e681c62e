//! `market-net`: the market's peer-to-peer layer on rust-libp2p.
//!
//! Nodes, workers and verifiers each run one [`Net`]: TCP and QUIC with noise and yamux,
//! identify and ping, one request-response protocol ([`wire`]) for assignments, progress,
//! commitments, audits, verdicts and chunked transfers ([`transfer`]), gossipsub for task
//! announcements and signed ledger heads, Kademlia and optional mDNS for discovery, and the
//! relay client, dcutr and AutoNAT so a worker behind NAT stays reachable. A peer's libp2p id
//! is its ed25519 account key, so the connection itself authenticates who speaks.

pub mod codec;
pub mod derived;
pub mod gossip;
pub mod heads;
pub mod participant;
pub mod peer;
pub mod transfer;
pub mod wire;

pub use libp2p::{Multiaddr, PeerId};
pub use peer::{account_of, Event, Net, NetConfig, NetError, Responder};
pub use wire::{AuditJob, FileEntry, Manifest, Reply, Request, Response, Source};
