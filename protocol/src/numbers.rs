//! Numbers that appear in signed messages, none of them floats on the wire.
//!
//! [`Credits`] are integers. Real-valued settings (learning rates, probabilities) are
//! [`Decimal`] strings in one canonical spelling, converted to binary floating point by
//! correctly rounded parsing, which every language's standard library does the same way.
//! Measured floats (a loss) travel as the bit pattern of an IEEE 754 binary32, [`F32Bits`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of credits, the market's unit of account. At most 2^53 - 1 in any signed message.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credits(pub u64);

impl Credits {
    /// Zero credits.
    pub const ZERO: Self = Self(0);

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// `self - other`, or `None` if it would go negative.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Self)
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} credits", self.0)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not a canonical decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a canonical decimal: digits with an optional '-' and fraction, \
     no exponent, no leading or trailing zeros, no '-0' (e.g. \"0.001\", \"-2.5\", \"3\")"
)]
pub struct DecimalError(pub String);

/// A real number written as a decimal string in one canonical spelling: `-?(0|[1-9][0-9]*)`
/// followed optionally by `.` and digits not ending in `0`; no exponent, no `-0`; at most
/// 18 digits in each part.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Decimal(String);

impl Decimal {
    /// The value, correctly rounded to the nearest binary64.
    pub fn to_f64(&self) -> f64 {
        self.0
            .parse()
            .unwrap_or_else(|_| unreachable!("validated at construction"))
    }

    /// The value, correctly rounded to the nearest binary32 (directly from the decimal, not
    /// through f64, so there is no double rounding).
    pub fn to_f32(&self) -> f32 {
        self.0
            .parse()
            .unwrap_or_else(|_| unreachable!("validated at construction"))
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as an exact fraction `(numerator, 10^scale)`, with a non-negative numerator
    /// and sign returned separately. Used where rounding must not depend on floats.
    pub fn to_fraction(&self) -> (bool, u128, u32) {
        let (negative, digits) = match self.0.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, self.0.as_str()),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let mut numerator: u128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            numerator = numerator * 10 + u128::from(b - b'0');
        }
        (negative, numerator, frac.len() as u32)
    }

    /// `ceil(self * n)` computed exactly, for a non-negative decimal; `None` if negative.
    ///
    /// The whole and fractional parts are multiplied apart: `numerator * n` alone can pass
    /// `u128::MAX` (18 + 18 digits times a 20-digit `n`), and an untrusted task's
    /// `assumed_faked_fraction` must not be able to overflow it.
    pub fn ceil_mul(&self, n: u64) -> Option<u128> {
        let (negative, num, scale) = self.to_fraction();
        if negative {
            return None;
        }
        let denominator = 10u128.pow(scale);
        let (whole, rest) = (num / denominator, num % denominator);
        // whole < 10^18 and rest < 10^18, so each product is below 10^18 * 2^64 < 2^124.
        Some(whole * u128::from(n) + (rest * u128::from(n)).div_ceil(denominator))
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DecimalError(s.chars().take(64).collect());
        let digits = s.strip_prefix('-').unwrap_or(s);
        let (int, frac) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int) || int.len() > 18 || (int.len() > 1 && int.starts_with('0')) {
            return Err(bad());
        }
        if let Some(f) = frac {
            if !all_digits(f) || f.len() > 18 || f.ends_with('0') {
                return Err(bad());
            }
        }
        if s.starts_with('-') && int == "0" && frac.is_none() {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decimal({})", self.0)
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An `f32` carried exactly as its IEEE 754 bit pattern (an integer in JSON).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct F32Bits(pub u32);

impl F32Bits {
    /// The bits of `value`.
    pub fn from_f32(value: f32) -> Self {
        Self(value.to_bits())
    }

    /// The value.
    pub fn to_f32(self) -> f32 {
        f32::from_bits(self.0)
    }
}

impl fmt::Debug for F32Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_spellings() {
        for ok in ["0", "3", "-2.5", "0.001", "12.75", "0.99"] {
            let d: Decimal = ok.parse().unwrap();
            assert_eq!(d.as_str(), ok);
        }
        for bad in [
            "", "-0", "01", "1.", ".5", "1.50", "1e-3", "+1", "NaN", "inf", "1.0", " 1",
        ] {
            assert!(bad.parse::<Decimal>().is_err(), "{bad:?}");
        }
        let lr: Decimal = "0.001".parse().unwrap();
        assert_eq!(lr.to_f32(), 0.001f32);
        assert_eq!(lr.to_f64(), 0.001f64);
    }

    #[test]
    fn exact_ceiling() {
        let f: Decimal = "0.1".parse().unwrap();
        assert_eq!(f.ceil_mul(1000), Some(100));
        assert_eq!(f.ceil_mul(1001), Some(101));
        assert_eq!(f.ceil_mul(0), Some(0));
        assert_eq!("-0.1".parse::<Decimal>().unwrap().ceil_mul(10), None);
        assert_eq!("2.5".parse::<Decimal>().unwrap().ceil_mul(3), Some(8));
        // The largest canonical decimal times the largest n: 10^36 * 2^64 does not fit u128,
        // and overflowed (a panic in debug builds) before the parts were multiplied apart.
        let max: Decimal = "999999999999999999.999999999999999999".parse().unwrap();
        assert_eq!(
            max.ceil_mul(u64::MAX),
            Some(18_446_744_073_709_551_614_999_999_999_999_999_982)
        );
        assert_eq!(
            max.ceil_mul(10_000_000),
            Some(10_000_000_000_000_000_000_000_000)
        );
    }
}
