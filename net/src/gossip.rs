//! Gossip validation: what a peer relays and hands to its owner. Every gossip message is
//! checked before it is forwarded (gossipsub runs with explicit validation): a topic this
//! protocol has, a size limit, and for ledger heads a valid signature by the ledger's own key,
//! published by that ledger's operator. A peer that relays invalid messages is rejected each
//! time (gossipsub lowers its score) and banned after [`STRIKES`] of them.

use libp2p::PeerId;

use crate::peer::account_of;
use crate::wire::{TOPIC_HEADS, TOPIC_TASKS};

/// The largest gossip message, bytes (a signed head or a task event line is far smaller).
pub const MAX_GOSSIP_BYTES: usize = 64 << 10;

/// Invalid messages a peer may relay before it is banned.
pub const STRIKES: u32 = 3;

/// Why a gossip message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// Not a topic of this protocol.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// Over [`MAX_GOSSIP_BYTES`].
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not signed by a peer (gossipsub's strict mode signs every message).
    #[error("unsigned message")]
    Unsigned,
    /// Not what the topic carries, or not signed by the ledger's operator.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Checks a gossip message on `topic` published by `source`.
pub fn validate(topic: &str, source: Option<PeerId>, data: &[u8]) -> Result<(), GossipError> {
    if data.len() > MAX_GOSSIP_BYTES {
        return Err(GossipError::TooLarge(data.len()));
    }
    let source = source.ok_or(GossipError::Unsigned)?;
    match topic {
        TOPIC_HEADS => {
            let head: market_ledger::SignedHead =
                market_protocol::canonical::from_json_limited(data, MAX_GOSSIP_BYTES)
                    .map_err(|e| GossipError::Invalid(e.to_string()))?;
            let body = head
                .verify()
                .map_err(|e| GossipError::Invalid(e.to_string()))?;
            if account_of(&source) != Some(body.ledger) {
                return Err(GossipError::Invalid(
                    "a head published by a peer other than the ledger's operator".into(),
                ));
            }
            Ok(())
        }
        TOPIC_TASKS => {
            // Task events are JSON objects (`{"task": ..., "state": ...}`), for display.
            match serde_json::from_slice::<serde_json::Value>(data) {
                Ok(serde_json::Value::Object(_)) => Ok(()),
                Ok(_) => Err(GossipError::Invalid("a task event is a JSON object".into())),
                Err(e) => Err(GossipError::Invalid(e.to_string())),
            }
        }
        other => Err(GossipError::UnknownTopic(other.to_owned())),
    }
}

/// Strikes against peers that relayed invalid gossip, bounded: past [`Strikes::MAX_PEERS`]
/// peers the oldest counts are dropped (a ban is what lasts).
#[derive(Debug, Default)]
pub struct Strikes {
    counts: std::collections::BTreeMap<PeerId, u32>,
    order: std::collections::VecDeque<PeerId>,
}

impl Strikes {
    /// Peers with strikes remembered at most.
    pub const MAX_PEERS: usize = 4096;

    /// Counts a strike against `peer`; true once it has [`STRIKES`] (ban it).
    pub fn strike(&mut self, peer: PeerId) -> bool {
        let n = self.counts.entry(peer).or_insert_with(|| {
            self.order.push_back(peer);
            0
        });
        *n += 1;
        let banned = *n >= STRIKES;
        if banned {
            self.counts.remove(&peer);
        }
        while self.order.len() > Self::MAX_PEERS {
            if let Some(old) = self.order.pop_front() {
                self.counts.remove(&old);
            }
        }
        banned
    }

    /// Peers with strikes now.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no peer has a strike.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_ledger::LedgerHead;
    use market_protocol::{Hash, Identity, Signed, Version};

    /// A head of `op`'s ledger signed by `op` (`Signed::sign` refuses anything else).
    fn head(op: &Identity) -> Vec<u8> {
        let body = LedgerHead {
            version: Version::CURRENT,
            ledger: op.account(),
            seq: 3,
            hash: Hash::of(b"h"),
        };
        serde_json::to_vec(&Signed::sign(body, op).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_default()
    }

    /// Issue 12 item 13: gossip was relayed and handed on unchecked.
    #[test]
    fn forged_oversized_and_foreign_gossip_is_refused() {
        let op = Identity::from_test_label("gossip operator");
        let peer = Some(op.account().to_peer_id());
        assert_eq!(validate(TOPIC_HEADS, peer, &head(&op)), Ok(()));
        // Signed by another key, claiming the operator's ledger.
        let forger = Identity::from_test_label("gossip forger");
        let mut forged: serde_json::Value =
            serde_json::from_slice(&head(&forger)).unwrap_or_default();
        forged["body"]["ledger"] = serde_json::json!(op.account());
        let forged = serde_json::to_vec(&forged).unwrap_or_default();
        assert!(matches!(
            validate(TOPIC_HEADS, peer, &forged),
            Err(GossipError::Invalid(_))
        ));
        // A valid head of the operator's ledger, published by someone else.
        let other = Some(forger.account().to_peer_id());
        assert!(matches!(
            validate(TOPIC_HEADS, other, &head(&op)),
            Err(GossipError::Invalid(_))
        ));
        assert_eq!(
            validate(TOPIC_HEADS, None, &head(&op)),
            Err(GossipError::Unsigned)
        );
        assert!(matches!(
            validate(TOPIC_TASKS, peer, &vec![b' '; MAX_GOSSIP_BYTES + 1]),
            Err(GossipError::TooLarge(_))
        ));
        assert!(validate(TOPIC_TASKS, peer, br#"{"task":"t","state":"queued"}"#).is_ok());
        assert!(validate(TOPIC_TASKS, peer, b"[1,2]").is_err());
        assert!(matches!(
            validate("market/v1/spam", peer, b"{}"),
            Err(GossipError::UnknownTopic(_))
        ));
    }

    #[test]
    fn a_peer_is_banned_at_its_third_strike_and_the_counts_stay_bounded() {
        let mut s = Strikes::default();
        let bad = Identity::from_test_label("bad relay")
            .account()
            .to_peer_id();
        assert!(!s.strike(bad));
        assert!(!s.strike(bad));
        assert!(s.strike(bad));
        for i in 0..(Strikes::MAX_PEERS + 100) {
            s.strike(
                Identity::from_test_label(&format!("p{i}"))
                    .account()
                    .to_peer_id(),
            );
        }
        assert!(s.len() <= Strikes::MAX_PEERS);
    }
}
