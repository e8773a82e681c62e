//! Watching a node's signed ledger heads on gossip. A node that signs two different heads for
//! the same sequence number shows two histories to different peers; any peer that receives
//! both holds the proof (two valid signatures) and reports it.

use std::collections::BTreeMap;

use libp2p::PeerId;
use market_ledger::SignedHead;
use market_protocol::{AccountId, Hash};

use crate::peer::account_of;

/// Heads remembered per ledger (older ones are forgotten).
const REMEMBERED: usize = 4096;

/// What a received head means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCheck {
    /// A head not seen before.
    New {
        /// Its sequence number.
        seq: u64,
    },
    /// Seen already.
    Known,
    /// The same ledger signed two different heads for one sequence number.
    Equivocation {
        /// The ledger.
        ledger: AccountId,
        /// The sequence number.
        seq: u64,
        /// The hash seen first.
        first: Hash,
        /// The other.
        second: Hash,
    },
    /// Not a valid signed head from its publisher.
    Invalid(String),
}

/// The heads seen so far.
#[derive(Debug, Default)]
pub struct HeadWatch {
    seen: BTreeMap<AccountId, BTreeMap<u64, Hash>>,
}

impl HeadWatch {
    /// Checks a gossiped head published by `source`.
    pub fn observe(&mut self, bytes: &[u8], source: Option<PeerId>) -> HeadCheck {
        let head: SignedHead = match market_protocol::canonical::from_json_limited(bytes, 64 << 10)
        {
            Ok(h) => h,
            Err(e) => return HeadCheck::Invalid(e.to_string()),
        };
        let body = match head.verify() {
            Ok(b) => b,
            Err(e) => return HeadCheck::Invalid(e.to_string()),
        };
        if source.as_ref().and_then(account_of) != Some(body.ledger) {
            return HeadCheck::Invalid(
                "published by a peer other than the ledger's operator".into(),
            );
        }
        let heads = self.seen.entry(body.ledger).or_default();
        match heads.get(&body.seq) {
            Some(h) if *h == body.hash => HeadCheck::Known,
            Some(h) => HeadCheck::Equivocation {
                ledger: body.ledger,
                seq: body.seq,
                first: *h,
                second: body.hash,
            },
            None => {
                heads.insert(body.seq, body.hash);
                while heads.len() > REMEMBERED {
                    heads.pop_first();
                }
                HeadCheck::New { seq: body.seq }
            }
        }
    }
}
