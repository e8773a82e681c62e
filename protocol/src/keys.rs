//! Identities: an ed25519 key pair is both a ledger account and a libp2p peer.
//!
//! One secret, two views: [`AccountId`] is the ed25519 public key that owns credits in the
//! ledger, and [`AccountId::to_peer_id`] is the libp2p `PeerId` of the same key, so a message
//! that arrives from a peer can be matched to the account that must have signed it.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::{decode_hex_array, HexError};

/// Why a public key or signature is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not hex of the right length.
    #[error(transparent)]
    Hex(#[from] HexError),
    /// 32 bytes that are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
    /// The peer id does not hold an ed25519 key inline.
    #[error("peer id {0} does not embed an ed25519 public key")]
    NotEd25519PeerId(String),
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Randomness(String),
}

/// An account: an ed25519 public key (32 bytes, 64 lowercase hex digits in JSON).
///
/// Only valid curve points are accepted, so every `AccountId` can verify signatures.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId([u8; 32]);

impl AccountId {
    /// Checks that `bytes` are a usable ed25519 public key: a point that decompresses, written
    /// in its canonical compressed form (so one key has one account id), and not of small order
    /// (such a key could "sign" messages without a secret).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPublicKey)?;
        if key.is_weak() || key.to_edwards().compress().to_bytes() != bytes {
            return Err(KeyError::InvalidPublicKey);
        }
        Ok(Self(bytes))
    }

    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The ed25519 verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        // Construction checked the point, so this cannot fail.
        VerifyingKey::from_bytes(&self.0)
            .unwrap_or_else(|_| unreachable!("checked at construction"))
    }

    /// The libp2p peer id of this account's key.
    pub fn to_peer_id(&self) -> libp2p_identity::PeerId {
        let pk = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0)
            .unwrap_or_else(|_| unreachable!("checked at construction"));
        libp2p_identity::PublicKey::from(pk).to_peer_id()
    }

    /// The account whose key a libp2p peer id embeds (ed25519 peer ids carry the key inline).
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Result<Self, KeyError> {
        let not_ed = || KeyError::NotEd25519PeerId(peer.to_string());
        let multihash = peer.as_ref();
        // Multihash code 0x00 is "identity": the digest is the protobuf-encoded public key.
        if multihash.code() != 0x00 {
            return Err(not_ed());
        }
        let pk = libp2p_identity::PublicKey::try_decode_protobuf(multihash.digest())
            .map_err(|_| not_ed())?
            .try_into_ed25519()
            .map_err(|_| not_ed())?;
        Self::from_bytes(pk.to_bytes())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.to_hex())
    }
}

impl FromStr for AccountId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(decode_hex_array::<32>(s)?)
    }
}

impl Serialize for AccountId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::hash::hex_in(&self.0, &mut [0; 128]))
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signature: 64 bytes, 128 lowercase hex digits in JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// The dalek signature.
    pub fn to_dalek(&self) -> ed25519_dalek::Signature {
        ed25519_dalek::Signature::from_bytes(&self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for Signature {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_hex_array::<64>(s).map(Self)
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::hash::hex_in(&self.0, &mut [0; 128]))
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A participant's secret key. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Randomness(e.to_string()))?;
        Ok(Self::from_secret_bytes(secret))
    }

    /// The identity with this 32-byte ed25519 secret (RFC 8032 private key).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&secret),
        }
    }

    /// A deterministic identity for tests, devnets and test vectors: the secret is
    /// `blake3::derive_key("market v1 test identity", label)`. Never use for real funds.
    pub fn from_test_label(label: &str) -> Self {
        Self::from_secret_bytes(blake3::derive_key(
            "market v1 test identity",
            label.as_bytes(),
        ))
    }

    /// The 32-byte secret. Handle with care.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// This identity's account.
    pub fn account(&self) -> AccountId {
        AccountId(self.signing.verifying_key().to_bytes())
    }

    /// Signs raw bytes. Protocol messages are signed through [`crate::Signed::sign`], which adds
    /// the domain tag; use this only for bytes that already carry one.
    pub fn sign_raw(&self, bytes: &[u8]) -> Signature {
        Signature(self.signing.sign(bytes).to_bytes())
    }

    /// The same key as a libp2p identity, so the peer id and the account agree.
    pub fn to_libp2p_keypair(&self) -> libp2p_identity::Keypair {
        libp2p_identity::Keypair::ed25519_from_bytes(self.signing.to_bytes())
            .unwrap_or_else(|_| unreachable!("any 32 bytes are an ed25519 secret"))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("account", &self.account())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_and_account_are_one_key() {
        let id = Identity::from_test_label("alice");
        let libp2p = id.to_libp2p_keypair();
        let peer = libp2p.public().to_peer_id();
        assert_eq!(peer, id.account().to_peer_id());
        assert_eq!(AccountId::from_peer_id(&peer).unwrap(), id.account());
        // A signature made through libp2p verifies as the account's signature.
        let sig = libp2p.sign(b"hello").unwrap();
        let sig = Signature(sig.try_into().unwrap());
        id.account()
            .verifying_key()
            .verify_strict(b"hello", &sig.to_dalek())
            .unwrap();
        // A peer id that only holds a sha2-256 digest of a key is refused.
        let mut bytes = vec![0x12, 0x20];
        bytes.extend_from_slice(&[7u8; 32]);
        let other = libp2p_identity::PeerId::from_bytes(&bytes).unwrap();
        assert!(AccountId::from_peer_id(&other).is_err());
    }

    #[test]
    fn debug_hides_secret() {
        let id = Identity::from_test_label("bob");
        let shown = format!("{id:?}");
        assert!(!shown.contains(&hex::encode(id.secret_bytes())));
        assert!(shown.contains(&id.account().to_hex()));
    }

    #[test]
    fn invalid_weak_and_non_canonical_keys_are_refused() {
        let refused =
            |bytes: [u8; 32]| AccountId::from_bytes(bytes) == Err(KeyError::InvalidPublicKey);
        // y = 2 does not decompress to a curve point.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert!(refused(bytes));
        // The identity point (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(refused(identity));
        // y = p + 1, a non-canonical spelling of y = 1 (and of small order).
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(refused(non_canonical));
        // A real key passes.
        let real = Identity::from_test_label("k").account();
        assert_eq!(AccountId::from_bytes(*real.as_bytes()), Ok(real));
    }
}
