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

/// Ledgers watched at most: a peer follows its own market's ledger, so a publisher with a new
/// key each time cannot make it keep state for every key.
pub const MAX_LEDGERS: usize = 16;

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
        if !self.seen.contains_key(&body.ledger) && self.seen.len() >= MAX_LEDGERS {
            return HeadCheck::Invalid(format!("already watching {MAX_LEDGERS} ledgers"));
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

/// Feeds a gossip message to `heads` and logs what it shows: a node that signed two different
/// ledger heads for one sequence number is showing different histories to different peers.
pub fn log_equivocation(heads: &mut HeadWatch, topic: &str, data: &[u8], source: Option<PeerId>) {
    if topic != crate::wire::TOPIC_HEADS {
        return;
    }
    match heads.observe(data, source) {
        HeadCheck::Equivocation {
            ledger,
            seq,
            first,
            second,
        } => tracing::error!(
            %ledger, seq, %first, %second,
            "the market signed two different ledger heads: it shows different histories"
        ),
        HeadCheck::Invalid(why) => tracing::debug!(%why, "ignoring a bad head"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_ledger::LedgerHead;
    use market_protocol::{Identity, Signed, Version};

    fn head(op: &Identity, seq: u64, hash: &[u8]) -> Vec<u8> {
        let body = LedgerHead {
            version: Version::CURRENT,
            ledger: op.account(),
            seq,
            hash: Hash::of(hash),
        };
        serde_json::to_vec(&Signed::sign(body, op).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn two_heads_for_one_sequence_number_are_caught_and_forgeries_ignored() {
        let op = Identity::from_test_label("head operator");
        let peer = Some(op.account().to_peer_id());
        let mut w = HeadWatch::default();
        assert_eq!(
            w.observe(&head(&op, 5, b"a"), peer),
            HeadCheck::New { seq: 5 }
        );
        assert_eq!(w.observe(&head(&op, 5, b"a"), peer), HeadCheck::Known);
        assert_eq!(
            w.observe(&head(&op, 6, b"b"), peer),
            HeadCheck::New { seq: 6 }
        );
        assert!(matches!(
            w.observe(&head(&op, 5, b"other history"), peer),
            HeadCheck::Equivocation { seq: 5, .. }
        ));
        // Relayed by a peer that is not the operator: not evidence of anything.
        let other = Some(Identity::from_test_label("someone").account().to_peer_id());
        assert!(matches!(
            w.observe(&head(&op, 7, b"c"), other),
            HeadCheck::Invalid(_)
        ));
        // A head signed by someone else for the operator's ledger.
        // (Setup that fails panics: a forged head that silently became `null` would be
        // refused for the wrong reason.)
        let mut forged: serde_json::Value =
            serde_json::from_slice(&head(&Identity::from_test_label("forger"), 8, b"d"))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(forged["body"].is_object(), "{forged}");
        forged["body"]["ledger"] = serde_json::json!(op.account());
        let bytes = serde_json::to_vec(&forged).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(w.observe(&bytes, peer), HeadCheck::Invalid(_)));
        assert!(matches!(w.observe(b"garbage", peer), HeadCheck::Invalid(_)));
        // Publishers with fresh keys: state for at most MAX_LEDGERS ledgers.
        for i in 0..100 {
            let key = Identity::from_test_label(&format!("fresh publisher {i}"));
            let _ = w.observe(&head(&key, 1, b"x"), Some(key.account().to_peer_id()));
        }
        assert_eq!(w.seen.len(), MAX_LEDGERS);
        assert_eq!(w.observe(&head(&op, 5, b"a"), peer), HeadCheck::Known);
    }
}
