//! Canonical bytes: RFC 8785 JSON Canonicalization Scheme (JCS), restricted to integers.
//!
//! Everything that is hashed or signed in market is first turned into these bytes, so a third
//! party in any language can recompute a hash or check a signature with an off-the-shelf JCS
//! library. Signed objects hold no floats: numbers must be integers of magnitude at most
//! 2^53 - 1, where every JSON implementation agrees on the value and JCS on its spelling.
//! Decoding is strict: input that is not byte-for-byte the canonical form of what it decodes
//! to is refused, so one value has exactly one accepted encoding.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The largest integer magnitude allowed in canonical JSON (2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The default limit on the size of one encoded message, checked before parsing.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// Why bytes are not (or a value cannot be) canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// The input is larger than the limit; nothing was parsed.
    #[error("message is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The input is not JSON at all (or is truncated).
    #[error("not valid JSON: {0}")]
    Syntax(String),
    /// A number is a float, or an integer outside ±(2^53 - 1).
    #[error("number {0} is not an integer within ±(2^53 - 1); signed objects hold no floats")]
    Number(String),
    /// Arrays or objects nest deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Valid JSON, but not in canonical form (whitespace, key order, escapes, duplicate keys,
    /// missing or defaulted fields).
    #[error("JSON is not in canonical (RFC 8785) form")]
    NotCanonical,
    /// Canonical JSON, but not the expected shape (unknown field, wrong type, ...).
    #[error("JSON does not match the expected type: {0}")]
    Shape(String),
}

/// The canonical bytes of any serializable value.
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = serde_json::to_value(value).map_err(|e| CanonicalError::Shape(e.to_string()))?;
    canonicalize_value(&v)
}

/// The canonical bytes of a JSON value.
pub fn canonicalize_value(v: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(v, &mut out, 0)?;
    Ok(out)
}

/// Decodes `bytes` that must be exactly the canonical encoding of a `T`, at most
/// [`MAX_MESSAGE_BYTES`] long.
pub fn from_canonical_bytes<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, CanonicalError> {
    from_canonical_bytes_limited(bytes, MAX_MESSAGE_BYTES)
}

/// As [`from_canonical_bytes`], with an explicit size limit.
pub fn from_canonical_bytes_limited<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, CanonicalError> {
    let value = parse_json_limited(bytes, limit)?;
    if canonicalize_value(&value)? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    let typed: T =
        serde_json::from_value(value).map_err(|e| CanonicalError::Shape(e.to_string()))?;
    // The typed value must encode back to the same bytes: this refuses input that relied on
    // defaults or on aliases, so the signed bytes are always what the receiver re-derives.
    if to_canonical_bytes(&typed)? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(typed)
}

/// Parses any JSON (not necessarily canonical) with a size limit checked first and a depth
/// limit; numbers must still be safe integers. For human-written files such as task specs.
pub fn parse_json_limited(bytes: &[u8], limit: usize) -> Result<Value, CanonicalError> {
    if bytes.len() > limit {
        return Err(CanonicalError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| CanonicalError::Syntax(e.to_string()))?;
    check_value(&value, 0)?;
    Ok(value)
}

/// Decodes a `T` from any JSON (whitespace and key order free), with the size limit checked
/// before parsing. Use for files people write; use [`from_canonical_bytes`] for the wire.
pub fn from_json_limited<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, CanonicalError> {
    let value = parse_json_limited(bytes, limit)?;
    serde_json::from_value(value).map_err(|e| CanonicalError::Shape(e.to_string()))
}

/// `depth` counts the arrays and objects around `v`; at most [`MAX_DEPTH`] may nest.
fn enter(v: &Value, depth: usize) -> Result<(), CanonicalError> {
    if matches!(v, Value::Array(_) | Value::Object(_)) && depth >= MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    Ok(())
}

fn check_value(v: &Value, depth: usize) -> Result<(), CanonicalError> {
    enter(v, depth)?;
    match v {
        Value::Number(n) => check_number(n).map(|_| ()),
        Value::Array(items) => items.iter().try_for_each(|i| check_value(i, depth + 1)),
        Value::Object(map) => map.values().try_for_each(|i| check_value(i, depth + 1)),
        _ => Ok(()),
    }
}

fn check_number(n: &serde_json::Number) -> Result<i64, CanonicalError> {
    let safe = MAX_SAFE_INTEGER as i64;
    match n.as_i64() {
        Some(i) if (-safe..=safe).contains(&i) => Ok(i),
        _ => Err(CanonicalError::Number(n.to_string())),
    }
}

fn write_value(v: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
    enter(v, depth)?;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(check_number(n)?.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // RFC 8785 sorts member names by their UTF-16 code units, not by UTF-8 bytes.
            let mut entries: Vec<(Vec<u16>, &String, &Value)> = map
                .iter()
                .map(|(k, v)| (k.encode_utf16().collect(), k, v))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (_, k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(v, out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Writes a JSON string as ECMAScript's `JSON.stringify` does (RFC 8785 section 3.2.2.2).
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_by_utf16_and_strips_whitespace() {
        let v: Value = serde_json::from_str(
            r#"{ "b": 1, "a": [true, null, "x"], "\u20ac": 0, "\ud83d\ude00": 2 }"#,
        )
        .unwrap();
        // In UTF-16, U+20AC (0x20AC) sorts before U+1F600 (surrogates 0xD83D 0xDE00).
        let bytes = canonicalize_value(&v).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\"a\":[true,null,\"x\"],\"b\":1,\"\u{20ac}\":0,\"\u{1f600}\":2}"
        );
    }

    #[test]
    fn refuses_floats_and_unsafe_integers() {
        assert!(matches!(
            canonicalize_value(&json!(1.5)),
            Err(CanonicalError::Number(_))
        ));
        assert!(matches!(
            canonicalize_value(&json!(MAX_SAFE_INTEGER + 1)),
            Err(CanonicalError::Number(_))
        ));
        assert!(canonicalize_value(&json!(MAX_SAFE_INTEGER)).is_ok());
        assert!(canonicalize_value(&json!(-(MAX_SAFE_INTEGER as i64))).is_ok());
    }

    #[test]
    fn strict_decode_refuses_non_canonical_forms() {
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct T {
            a: u32,
            b: Option<u32>,
        }
        let ok: T = from_canonical_bytes(br#"{"a":1,"b":null}"#).unwrap();
        assert_eq!(ok, T { a: 1, b: None });
        for bad in [
            &br#"{"b":null,"a":1}"#[..],
            br#"{"a":1, "b":null}"#,
            br#"{"a":1}"#,
            br#"{"a":1,"a":1,"b":null}"#,
            br#"{"a":1.0,"b":null}"#,
        ] {
            assert!(
                from_canonical_bytes::<T>(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            from_canonical_bytes::<T>(br#"{"a":1,"b":null,"c":2}"#),
            Err(CanonicalError::Shape(_))
        ));
        assert!(matches!(
            from_canonical_bytes_limited::<T>(br#"{"a":1,"b":null}"#, 4),
            Err(CanonicalError::TooLarge { .. })
        ));
    }

    #[test]
    fn escapes_like_json_stringify() {
        let s = "\u{0}\u{1f}\"\\\u{8}\u{c}\n\r\t/\u{7f}\u{2028}é";
        let bytes = to_canonical_bytes(s).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "\"\\u0000\\u001f\\\"\\\\\\b\\f\\n\\r\\t/\u{7f}\u{2028}é\""
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(from_canonical_bytes::<Value>(nested(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            from_canonical_bytes::<Value>(nested(MAX_DEPTH + 1).as_bytes()),
            Err(CanonicalError::TooDeep)
        );
        // Deeper than serde_json's own recursion limit: still an error, not a stack overflow.
        assert!(from_canonical_bytes::<Value>(nested(100_000).as_bytes()).is_err());
    }
}
