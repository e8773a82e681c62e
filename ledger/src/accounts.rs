//! Memoized account parsing for the decode hot path.
//!
//! Parsing an [`AccountId`] checks that it is a valid ed25519 point, which costs a point
//! decompression (several microseconds), while a ledger names the same accounts in entry after
//! entry. Remembering, per thread, the strings that already parsed makes verification several
//! times faster. The parsing itself is the protocol's `AccountId::from_str`, so exactly the same
//! strings are accepted.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use market_protocol::{AccountId, KeyError};
use serde::{Deserialize, Deserializer};

/// Distinct accounts remembered per thread before the memo starts over.
const MAX_REMEMBERED: usize = 1 << 16;

thread_local! {
    // Only looked up, never iterated, so a HashMap's order cannot leak into anything hashed.
    static PARSED: RefCell<HashMap<[u8; 64], AccountId>> = RefCell::new(HashMap::new());
}

/// `AccountId::from_str`, remembered.
pub(crate) fn parse(s: &str) -> Result<AccountId, KeyError> {
    let Ok(text) = <[u8; 64]>::try_from(s.as_bytes()) else {
        return s.parse();
    };
    if let Some(account) = PARSED.with(|m| m.borrow().get(&text).copied()) {
        return Ok(account);
    }
    let account: AccountId = s.parse()?;
    PARSED.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
        m.insert(text, account);
    });
    Ok(account)
}

/// A serde `deserialize_with` for account fields of ledger entries.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AccountId, D::Error> {
    let s = <Cow<'de, str>>::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::Identity;

    #[test]
    fn accepts_and_refuses_exactly_what_the_protocol_does() {
        let account = Identity::from_test_label("alice").account();
        let hex = account.to_hex();
        for _ in 0..2 {
            assert_eq!(parse(&hex), Ok(account));
        }
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        for bad in [
            hex.to_uppercase(),
            hex[..62].to_string(),
            hex::encode(off_curve),
            format!("{}g", &hex[..63]),
        ] {
            assert_eq!(
                parse(&bad).is_err(),
                bad.parse::<AccountId>().is_err(),
                "{bad}"
            );
            assert!(parse(&bad).is_err(), "{bad}");
            // Refused strings are not remembered.
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
