//! The 32-byte blake3 [`Hash`] and the typed ids built on it.
//!
//! Every id in market is a blake3 hash; a newtype per kind of id keeps a task id from being
//! passed where a blob id is expected. In JSON a hash is exactly 64 lowercase hex digits, so
//! that each hash has one encoding (uppercase is refused, not normalised).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a hex string is not a valid hash or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// The string has the wrong number of characters.
    #[error("expected {expected} hex digits, got {actual}")]
    Length { expected: usize, actual: usize },
    /// A character is not one of `0-9a-f`.
    #[error("not lowercase hex: {0:?}")]
    NotLowercaseHex(String),
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Writes `bytes` (at most 64) as lowercase hex into `buf` and returns it as a string, without
/// allocating: ids, keys and signatures are encoded on every canonical (re-)encoding.
pub(crate) fn hex_in<'a>(bytes: &[u8], buf: &'a mut [u8; 128]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = bytes.len().min(64);
    let out = &mut buf[..2 * n];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    // Only ASCII digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// Decodes exactly `N` bytes from `2N` lowercase hex digits, checking and decoding in one pass
/// (ledger verification decodes several ids per entry, so this is on its hot path).
pub(crate) fn decode_hex_array<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    if s.len() != 2 * N {
        return Err(HexError::Length {
            expected: 2 * N,
            actual: s.len(),
        });
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let (hi, lo) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
        if (hi | lo) & 0xf0 != 0 {
            return Err(HexError::NotLowercaseHex(s.chars().take(80).collect()));
        }
        *o = hi << 4 | lo;
    }
    Ok(out)
}

/// A blake3 hash: 32 bytes, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The blake3 hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as in JSON.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl FromStr for Hash {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_hex_array::<32>(s).map(Self)
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hex_in(&self.0, &mut [0; 128]))
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Declares a typed id: a [`Hash`] that names one kind of thing.
macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Hash);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                self.0.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = HexError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }

        impl From<Hash> for $name {
            fn from(h: Hash) -> Self {
                Self(h)
            }
        }
    };
}

typed_id!(
    /// A content-addressed blob (dataset, weights, bundle, result): the blake3 hash of its bytes.
    BlobId
);
typed_id!(
    /// A task: the id of the buyer's signed [`crate::TaskSpec`] (see [`crate::message_id`]).
    TaskId
);
typed_id!(
    /// A worker's commitment: the id of its signed [`crate::Commitment`].
    CommitmentId
);
typed_id!(
    /// A challenge: the id of a signed [`crate::Challenge`].
    ChallengeId
);
typed_id!(
    /// A verdict: the id of a signed [`crate::Verdict`].
    VerdictId
);
typed_id!(
    /// The hash of a serialized training state (weights, optimizer moments, step) or of one
    /// inference output item. Checkpoints are committed to by these.
    StateHash
);
typed_id!(
    /// Public randomness that did not exist when a commitment was made (for example the hash of the
    /// ledger entry that recorded the commitment). Mixed into the challenge seed.
    Beacon
);
typed_id!(
    /// The seed of a challenge's ChaCha20 stream, derived from a commitment id and a beacon.
    ChallengeSeed
);

impl BlobId {
    /// The id of a blob with these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Hash::of(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strictness() {
        let h = Hash::of(b"market");
        let s = h.to_hex();
        assert_eq!(s.parse::<Hash>().unwrap(), h);
        assert!(s.to_uppercase().parse::<Hash>().is_err());
        assert!(s[..62].parse::<Hash>().is_err());
        let json = serde_json::to_string(&TaskId(h)).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        let back: TaskId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TaskId(h));
        assert!(serde_json::from_str::<TaskId>("\"zz\"").is_err());
    }

    #[test]
    fn the_table_codec_agrees_with_the_hex_crate_on_every_byte_and_refuses_every_other_digit() {
        let bytes: Vec<u8> = (0..=255).collect();
        for chunk in bytes.chunks(32) {
            let mut a = [0u8; 32];
            a.copy_from_slice(chunk);
            let mut buf = [0u8; 128];
            let ours = hex_in(&a, &mut buf);
            assert_eq!(ours, hex::encode(a));
            assert_eq!(decode_hex_array::<32>(ours).unwrap(), a);
        }
        let good = "00".repeat(32);
        for c in 0..=255u8 {
            let mut s = good.clone().into_bytes();
            s[17] = c;
            let Ok(s) = String::from_utf8(s) else {
                continue;
            };
            let valid = c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
            assert_eq!(decode_hex_array::<32>(&s).is_ok(), valid, "digit {c}");
        }
    }
}
