//! ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381, suite `0x03`): a verifiable random function on the
//! account's ed25519 key.
//!
//! A challenge beacon must be unpredictable to the worker until it has committed, and must not
//! be choosable by whoever produces it. A VRF output over the commitment id does both: nobody
//! without the node operator's secret can compute it before the commitment exists, and ECVRF
//! proofs are *unique* (for one public key and one input exactly one output verifies), so the
//! operator cannot grind through candidate beacons until one suits it; it can only publish the
//! one output or withhold it.
//!
//! The VRF key is the ordinary ed25519 key of an [`crate::Identity`]: the secret scalar `x` and
//! the nonce prefix come from the 32-byte secret seed by the RFC 8032 section 5.1.5 expansion,
//! and the VRF public key is the 32-byte ed25519 public key, the [`AccountId`]. So anyone can
//! verify a beacon against the operator key recorded in the ledger's genesis, with no extra key
//! distribution. `spec/ENCODING.md` writes the suite down for other languages, and
//! `spec/reference/check_vectors.py` re-checks the RFC 9381 test vectors independently.
//!
//! Everything here follows RFC 9381 section 5 literally: try-and-increment hashing to the curve
//! with `PK_string` as salt, RFC 8032 style nonces (section 5.4.2.2), a 16-byte challenge, and
//! full key validation on verification (a small-order public key is refused).

use std::fmt;
use std::str::FromStr;

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::{clamp_integer, Scalar};
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha512};

use crate::hash::{decode_hex_array, HexError};
use crate::keys::AccountId;

/// The RFC 9381 suite string of ECVRF-EDWARDS25519-SHA512-TAI.
pub const SUITE: u8 = 0x03;

/// Length of a proof: `Gamma` (32 bytes) || `c` (16 bytes) || `s` (32 bytes).
pub const PROOF_LEN: usize = 80;

/// Length of a VRF output (`beta`), a SHA-512 digest.
pub const OUTPUT_LEN: usize = 64;

/// Length of the challenge `c` (`cLen`).
const C_LEN: usize = 16;

/// Why a VRF proof was not accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VrfError {
    /// The public key does not decode to a curve point, or has small order.
    #[error("invalid VRF public key")]
    InvalidPublicKey,
    /// The proof is not an encoding of a proof: `Gamma` is not a (canonically encoded) curve
    /// point, or `s` is not a canonical scalar (`s >= L`).
    #[error("malformed VRF proof")]
    MalformedProof,
    /// The proof is well formed but is not a proof for this public key and input.
    #[error("VRF proof does not verify")]
    DoesNotVerify,
}

/// An ECVRF proof `pi`: `Gamma` (32 bytes) || `c` (16 bytes, little-endian) || `s` (32 bytes,
/// little-endian). In JSON, exactly 160 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VrfProof(pub [u8; PROOF_LEN]);

impl VrfProof {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; PROOF_LEN] {
        &self.0
    }

    /// Lowercase hex, as in JSON.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for VrfProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfProof({})", self.to_hex())
    }
}

impl fmt::Display for VrfProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for VrfProof {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_hex_array::<PROOF_LEN>(s).map(Self)
    }
}

impl Serialize for VrfProof {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for VrfProof {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// RFC 9381 `string_to_point` for edwards25519: RFC 8032 section 5.1.3 decoding, which refuses
/// a non-canonical `y` (`y >= p`) and the encoding of `x = 0` with the sign bit set. dalek's
/// `decompress` accepts both, so the point must also compress back to the same bytes.
fn string_to_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    let point = CompressedEdwardsY(*bytes).decompress()?;
    (point.compress().as_bytes() == bytes).then_some(point)
}

/// RFC 9381 `point_to_string`: the RFC 8032 compressed encoding.
fn point_to_string(point: &EdwardsPoint) -> [u8; 32] {
    point.compress().to_bytes()
}

/// `ECVRF_encode_to_curve_try_and_increment` (section 5.4.1.1) with `encode_to_curve_salt =
/// PK_string`: the first `ctr` in `0, 1, ...` for which the first 32 bytes of
/// `SHA512(suite || 0x01 || PK_string || alpha || ctr || 0x00)` decode to a point whose cofactor
/// multiple is not the identity; the result is that multiple.
fn encode_to_curve(pk_string: &[u8; 32], alpha: &[u8]) -> EdwardsPoint {
    for ctr in 0..=u8::MAX {
        let hash = Sha512::new()
            .chain_update([SUITE, 0x01])
            .chain_update(pk_string)
            .chain_update(alpha)
            .chain_update([ctr, 0x00])
            .finalize();
        let mut candidate = [0u8; 32];
        candidate.copy_from_slice(&hash[..32]);
        if let Some(point) = string_to_point(&candidate) {
            let h = point.mul_by_cofactor();
            if !h.is_identity() {
                return h;
            }
        }
    }
    // Each try succeeds with probability about 1/2, so 256 failures in a row do not happen
    // (RFC 9381 section 5.4.1.1 likewise leaves `ctr > 255` undefined).
    unreachable!("ECVRF try-and-increment failed 256 times")
}

/// `ECVRF_challenge_generation` (section 5.4.3): the first 16 bytes of
/// `SHA512(suite || 0x02 || Y || H || Gamma || U || V || 0x00)`.
fn challenge(points: [&[u8; 32]; 5]) -> [u8; C_LEN] {
    let mut hasher = Sha512::new().chain_update([SUITE, 0x02]);
    for p in points {
        hasher.update(p);
    }
    let hash = hasher.chain_update([0x00]).finalize();
    let mut c = [0u8; C_LEN];
    c.copy_from_slice(&hash[..C_LEN]);
    c
}

/// The 16-byte little-endian challenge as a scalar (it is below `2^128 < L`).
fn challenge_scalar(c: &[u8; C_LEN]) -> Scalar {
    let mut wide = [0u8; 32];
    wide[..C_LEN].copy_from_slice(c);
    Scalar::from_bytes_mod_order(wide)
}

/// `ECVRF_proof_to_hash` on a decoded `Gamma` (section 5.2):
/// `SHA512(suite || 0x03 || point_to_string(8 * Gamma) || 0x00)`.
fn gamma_to_hash(gamma: &EdwardsPoint) -> [u8; OUTPUT_LEN] {
    Sha512::new()
        .chain_update([SUITE, 0x03])
        .chain_update(point_to_string(&gamma.mul_by_cofactor()))
        .chain_update([0x00])
        .finalize()
        .into()
}

/// `ECVRF_decode_proof` (section 5.4.4): `Gamma` must decode, `s` must be below `L`.
fn decode_proof(proof: &VrfProof) -> Result<(EdwardsPoint, [u8; C_LEN], Scalar), VrfError> {
    let mut gamma = [0u8; 32];
    let mut c = [0u8; C_LEN];
    let mut s = [0u8; 32];
    gamma.copy_from_slice(&proof.0[..32]);
    c.copy_from_slice(&proof.0[32..32 + C_LEN]);
    s.copy_from_slice(&proof.0[32 + C_LEN..]);
    let gamma = string_to_point(&gamma).ok_or(VrfError::MalformedProof)?;
    let s =
        Option::<Scalar>::from(Scalar::from_canonical_bytes(s)).ok_or(VrfError::MalformedProof)?;
    Ok((gamma, c, s))
}

/// The ECVRF proof (section 5.1) of `alpha` under the ed25519 key with this 32-byte secret seed
/// (an [`crate::Identity`]'s secret bytes). Deterministic: one key and one input give one proof.
pub fn prove(secret_seed: &[u8; 32], alpha: &[u8]) -> VrfProof {
    // RFC 8032 section 5.1.5: the clamped first half of SHA512(seed) is the secret scalar x,
    // the second half the nonce prefix.
    let hashed_sk: [u8; 64] = Sha512::digest(secret_seed).into();
    let mut scalar_bytes = [0u8; 32];
    scalar_bytes.copy_from_slice(&hashed_sk[..32]);
    let x = Scalar::from_bytes_mod_order(clamp_integer(scalar_bytes));
    let pk_string = point_to_string(&(ED25519_BASEPOINT_TABLE * &x));
    let mut nonce_prefix = [0u8; 32];
    nonce_prefix.copy_from_slice(&hashed_sk[32..]);
    prove_with(&x, &nonce_prefix, &pk_string, alpha)
}

/// Section 5.1 steps 2 to 8, given the secret scalar, the nonce prefix and `PK_string`.
fn prove_with(x: &Scalar, nonce_prefix: &[u8; 32], pk_string: &[u8; 32], alpha: &[u8]) -> VrfProof {
    let h = encode_to_curve(pk_string, alpha);
    let h_string = point_to_string(&h);
    let gamma = h * x;
    // ECVRF_nonce_generation_RFC8032 (section 5.4.2.2).
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(nonce_prefix)
            .chain_update(h_string)
            .finalize()
            .into(),
    );
    let gamma_string = point_to_string(&gamma);
    let u = point_to_string(&(ED25519_BASEPOINT_TABLE * &k));
    let v = point_to_string(&(h * k));
    let c = challenge([pk_string, &h_string, &gamma_string, &u, &v]);
    let s = k + challenge_scalar(&c) * x;

    let mut pi = [0u8; PROOF_LEN];
    pi[..32].copy_from_slice(&gamma_string);
    pi[32..32 + C_LEN].copy_from_slice(&c);
    pi[32 + C_LEN..].copy_from_slice(s.as_bytes());
    VrfProof(pi)
}

/// Verifies `proof` for `alpha` under `public` (section 5.3, with key validation) and returns
/// the VRF output `beta` (64 bytes).
pub fn verify(
    public: &AccountId,
    alpha: &[u8],
    proof: &VrfProof,
) -> Result<[u8; OUTPUT_LEN], VrfError> {
    let pk_string = public.as_bytes();
    let y = string_to_point(pk_string).ok_or(VrfError::InvalidPublicKey)?;
    // ECVRF_validate_key (section 5.4.5).
    if y.is_small_order() {
        return Err(VrfError::InvalidPublicKey);
    }
    let (gamma, c, s) = decode_proof(proof)?;
    let h = encode_to_curve(pk_string, alpha);
    let c_scalar = challenge_scalar(&c);
    // U = s*B - c*Y, V = s*H - c*Gamma. The point is negated, not the scalar: Y (a valid but
    // mixed-order key) and Gamma (from the proof) may have a torsion component, and then
    // (L - c)*P is not -(c*P). c < 2^128 is multiplied as the integer it is.
    let u = EdwardsPoint::vartime_double_scalar_mul_basepoint(&c_scalar, &-y, &s);
    let v = EdwardsPoint::vartime_multiscalar_mul([s, c_scalar], [h, -gamma]);
    let c_prime = challenge([
        pk_string,
        &point_to_string(&h),
        &point_to_string(&gamma),
        &point_to_string(&u),
        &point_to_string(&v),
    ]);
    if c_prime != c {
        return Err(VrfError::DoesNotVerify);
    }
    Ok(gamma_to_hash(&gamma))
}

/// The VRF output `beta` of a proof (section 5.2), without checking it. Only trust the result
/// of [`verify`]; this is for the prover, who made the proof itself.
pub fn proof_to_hash(proof: &VrfProof) -> Result<[u8; OUTPUT_LEN], VrfError> {
    let (gamma, _, _) = decode_proof(proof)?;
    Ok(gamma_to_hash(&gamma))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Identity;

    /// RFC 9381 appendix B.3: (SK, PK, alpha, pi, beta).
    const RFC_VECTORS: [(&str, &str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab1268a1b0db10836d9826a528ca76567805",
            "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed5933bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926da3ef39226bbc355bdc9850112c8f4b02",
            "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf8096bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a2d41b00b05081ed0f58ee5e31b3a970e",
            "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c452118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f",
        ),
    ];

    struct Vector {
        sk: [u8; 32],
        pk: AccountId,
        alpha: Vec<u8>,
        pi: VrfProof,
        beta: [u8; 64],
    }

    fn vectors() -> Vec<Vector> {
        RFC_VECTORS
            .iter()
            .map(|(sk, pk, alpha, pi, beta)| Vector {
                sk: hex::decode(sk).unwrap().try_into().unwrap(),
                pk: pk.parse().unwrap(),
                alpha: hex::decode(alpha).unwrap(),
                pi: pi.parse().unwrap(),
                beta: hex::decode(beta).unwrap().try_into().unwrap(),
            })
            .collect()
    }

    /// The group order L = 2^252 + 27742317777372353535851937790883648493, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10,
    ];

    /// The little-endian sum of two 32-byte integers (no overflow for the values used here).
    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        out
    }

    #[test]
    fn rfc_9381_vectors_prove_hash_and_verify() {
        for v in vectors() {
            assert_eq!(Identity::from_secret_bytes(v.sk).account(), v.pk);
            let pi = prove(&v.sk, &v.alpha);
            assert_eq!(pi, v.pi);
            assert_eq!(proof_to_hash(&pi), Ok(v.beta));
            assert_eq!(verify(&v.pk, &v.alpha, &pi), Ok(v.beta));
        }
    }

    #[test]
    fn the_secret_scalar_is_the_ed25519_key() {
        // The public key derived inside `prove` is the account of the same seed.
        let id = Identity::from_test_label("vrf operator");
        let pi = prove(&id.secret_bytes(), b"commitment");
        assert!(verify(&id.account(), b"commitment", &pi).is_ok());
    }

    #[test]
    fn tampered_proofs_other_inputs_and_other_keys_are_refused() {
        let vs = vectors();
        for (i, v) in vs.iter().enumerate() {
            // Another input.
            let mut other_alpha = v.alpha.clone();
            other_alpha.push(0);
            assert_eq!(
                verify(&v.pk, &other_alpha, &v.pi),
                Err(VrfError::DoesNotVerify)
            );
            // Another key.
            let other = &vs[(i + 1) % vs.len()];
            assert_eq!(
                verify(&other.pk, &v.alpha, &v.pi),
                Err(VrfError::DoesNotVerify)
            );
            // A flipped bit in Gamma, in c and in s (low bits, so s stays canonical and Gamma
            // may stay a point): each is refused, as malformed or as not verifying.
            for byte in [0, 5, 31, 32, 40, 47, 48, 60, 78] {
                for bit in [0, 3] {
                    let mut bad = v.pi;
                    bad.0[byte] ^= 1 << bit;
                    assert!(
                        verify(&v.pk, &v.alpha, &bad).is_err(),
                        "byte {byte} bit {bit}"
                    );
                }
            }
            // s + L is the same scalar, but not its canonical encoding.
            let mut s = [0u8; 32];
            s.copy_from_slice(&v.pi.0[48..]);
            let mut bad = v.pi;
            bad.0[48..].copy_from_slice(&add_le(&s, &L));
            assert_eq!(verify(&v.pk, &v.alpha, &bad), Err(VrfError::MalformedProof));
            assert_eq!(proof_to_hash(&bad), Err(VrfError::MalformedProof));
        }
    }

    #[test]
    fn a_gamma_that_is_not_a_point_or_not_canonical_is_malformed() {
        let v = &vectors()[0];
        // y = 2 is not the y of a curve point.
        let mut bad = v.pi;
        bad.0[..32].copy_from_slice(&[0; 32]);
        bad.0[0] = 2;
        assert_eq!(verify(&v.pk, &v.alpha, &bad), Err(VrfError::MalformedProof));
        assert_eq!(proof_to_hash(&bad), Err(VrfError::MalformedProof));
        // y = p + 1 decompresses (to y = 1) in dalek, but RFC 8032 decoding refuses it.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(CompressedEdwardsY(non_canonical).decompress().is_some());
        bad.0[..32].copy_from_slice(&non_canonical);
        assert_eq!(verify(&v.pk, &v.alpha, &bad), Err(VrfError::MalformedProof));
        // x = 0 with the sign bit set ("-0") is refused too.
        let mut minus_zero = [0u8; 32];
        minus_zero[0] = 1;
        minus_zero[31] = 0x80;
        assert!(string_to_point(&minus_zero).is_none());
    }

    #[test]
    fn a_mixed_order_key_follows_the_rfc_arithmetic() {
        // Y' = x*B + T with T of order 8 is a valid account (not of small order). A proof made
        // with x but hashed under Y' passes RFC 9381 verification exactly when c*T is the
        // identity, i.e. c = 0 mod 8, since U' = s*B - c*Y' = k*B - c*T. (Negating c as a
        // scalar instead would compute k*B + (L - c)*T and accept c = 5 mod 8 instead.)
        let seed = [7u8; 32];
        let hashed_sk: [u8; 64] = Sha512::digest(seed).into();
        let mut scalar_bytes = [0u8; 32];
        scalar_bytes.copy_from_slice(&hashed_sk[..32]);
        let x = Scalar::from_bytes_mod_order(clamp_integer(scalar_bytes));
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        let mixed = ED25519_BASEPOINT_TABLE * &x + torsion;
        let pk_string = point_to_string(&mixed);
        let account = AccountId::from_bytes(pk_string).unwrap();
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..64u8 {
            let alpha = [i];
            let pi = prove_with(&x, &[0; 32], &pk_string, &alpha);
            let c0 = pi.0[32] % 8;
            let result = verify(&account, &alpha, &pi);
            if c0 == 0 {
                assert!(result.is_ok(), "alpha {i}");
                accepted += 1;
            } else {
                assert_eq!(result, Err(VrfError::DoesNotVerify), "alpha {i}");
                refused += 1;
            }
        }
        assert!(accepted > 0 && refused > 0);
    }

    #[test]
    fn proofs_are_unique_per_key_and_input() {
        let id = Identity::from_test_label("vrf");
        let a = prove(&id.secret_bytes(), b"a");
        assert_eq!(a, prove(&id.secret_bytes(), b"a"));
        let b = prove(&id.secret_bytes(), b"b");
        assert_ne!(proof_to_hash(&a), proof_to_hash(&b));
        assert_eq!(
            verify(&id.account(), b"a", &b),
            Err(VrfError::DoesNotVerify)
        );
    }

    #[test]
    fn serde_is_strict_lowercase_hex() {
        let v = &vectors()[1];
        let json = serde_json::to_string(&v.pi).unwrap();
        assert_eq!(json, format!("\"{}\"", RFC_VECTORS[1].3));
        assert_eq!(serde_json::from_str::<VrfProof>(&json).unwrap(), v.pi);
        assert_eq!(
            format!("{:?}", v.pi),
            format!("VrfProof({})", RFC_VECTORS[1].3)
        );
        assert_eq!(v.pi.to_string(), RFC_VECTORS[1].3);
        let upper = format!("\"{}\"", RFC_VECTORS[1].3.to_uppercase());
        assert!(serde_json::from_str::<VrfProof>(&upper).is_err());
        let short = format!("\"{}\"", &RFC_VECTORS[1].3[..158]);
        assert!(serde_json::from_str::<VrfProof>(&short).is_err());
        let long = format!("\"{}00\"", RFC_VECTORS[1].3);
        assert!(serde_json::from_str::<VrfProof>(&long).is_err());
        assert!(RFC_VECTORS[1].3[..128].parse::<VrfProof>().is_err());
    }
}
