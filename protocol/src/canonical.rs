//! Canonical bytes: RFC 8785 JSON Canonicalization Scheme (JCS), restricted to integers.
//!
//! Everything that is hashed or signed in market is first turned into these bytes, so a third
//! party in any language can recompute a hash or check a signature with an off-the-shelf JCS
//! library. Signed objects hold no floats: numbers must be integers of magnitude at most
//! 2^53 - 1, where every JSON implementation agrees on the value and JCS on its spelling.
//! Decoding is strict: input that is not byte-for-byte the canonical form of what it decodes
//! to is refused, so one value has exactly one accepted encoding.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::io::Write as _;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
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
///
/// No JSON tree is built: one pass over the bytes checks syntax, numbers, depth and canonical
/// form (`spec/ENCODING.md` section 3, rules 2 to 4), allocating only to unescape a string, and
/// only then is the typed value decoded from the bytes. A tree costs many times the input (an array of 4 MiB of
/// `0,` is a 64 MiB vector of nodes), and a message of the wrong type must not cost its
/// receiver more than it costs the sender.
pub fn from_canonical_bytes_limited<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, CanonicalError> {
    if bytes.len() > limit {
        return Err(CanonicalError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    check_canonical(bytes)?;
    let typed: T =
        serde_json::from_slice(bytes).map_err(|e| CanonicalError::Shape(e.to_string()))?;
    // The typed value must encode back to the same bytes: this refuses input that relied on
    // defaults or on aliases, so the signed bytes are always what the receiver re-derives.
    if to_canonical_bytes(&typed)? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(typed)
}

/// Rules 2 to 4 of strict decoding in one pass that builds nothing: `bytes` parse as JSON, hold
/// only safe integers, nest at most [`MAX_DEPTH`] deep, and are their own canonical encoding.
///
/// The walk writes the canonical encoding of each value as it is parsed and compares it with
/// the input as it goes. Members are written in input order, which is the canonical order
/// exactly when every object's names strictly increase (as UTF-16); a repeated or out-of-order
/// name makes the input non-canonical, as it does for the parsed-and-re-encoded tree. A syntax
/// error anywhere wins over the other rules, and a number or depth error over non-canonical
/// form, as in the order the spec gives.
fn check_canonical(bytes: &[u8]) -> Result<(), CanonicalError> {
    let mut walk = Walk {
        input: bytes,
        at: 0,
        matches: true,
        found: None,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Node {
        walk: &mut walk,
        depth: 0,
        comma: false,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| CanonicalError::Syntax(e.to_string()))?;
    if let Some(e) = walk.found {
        return Err(e);
    }
    if !walk.matches || walk.at != bytes.len() {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(())
}

/// The state of [`check_canonical`]: how much of the input matched the canonical encoding so
/// far, and the first number or depth error.
struct Walk<'a> {
    input: &'a [u8],
    at: usize,
    matches: bool,
    found: Option<CanonicalError>,
}

impl Walk<'_> {
    /// The next bytes of the canonical encoding: do they come next in the input?
    fn emit(&mut self, canonical: &[u8]) {
        if !self.matches {
            return;
        }
        let end = self.at + canonical.len();
        if self.input.get(self.at..end) == Some(canonical) {
            self.at = end;
        } else {
            self.matches = false;
        }
    }

    fn fail(&mut self, e: CanonicalError) {
        if self.found.is_none() {
            self.found = Some(e);
        }
    }

    fn number(&mut self, n: serde_json::Number) {
        match check_number(&n) {
            Ok(i) => {
                // At most 17 characters (a sign and 16 digits); no allocation per number.
                let mut buf = [0u8; 24];
                let mut w = &mut buf[..];
                let _ = write!(w, "{i}");
                let len = 24 - w.len();
                self.emit(&buf[..len]);
            }
            Err(e) => self.fail(e),
        }
    }

    fn string(&mut self, s: &str) {
        write_string_to(s, &mut |b| self.emit(b));
    }
}

/// One value of the walk, at `depth`, preceded by a `,` when `comma`.
struct Node<'w, 'a> {
    walk: &'w mut Walk<'a>,
    depth: usize,
    comma: bool,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.comma {
            self.walk.emit(b",");
        }
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Node<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.walk.emit(b"null");
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.walk.emit(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.walk.number(v.into());
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.walk.number(v.into());
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // A float is never canonical; one that is not finite would parse to `null`.
        match serde_json::Number::from_f64(v) {
            Some(n) => self.walk.number(n),
            None => self.walk.matches = false,
        }
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.walk.string(v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            self.walk.fail(CanonicalError::TooDeep);
        }
        self.walk.emit(b"[");
        let mut comma = false;
        while seq
            .next_element_seed(Node {
                walk: &mut *self.walk,
                depth: self.depth + 1,
                comma,
            })?
            .is_some()
        {
            comma = true;
        }
        self.walk.emit(b"]");
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            self.walk.fail(CanonicalError::TooDeep);
        }
        self.walk.emit(b"{");
        let mut previous: Option<Cow<'de, str>> = None;
        while let Some(name) = map.next_key_seed(Name)? {
            match &previous {
                Some(p) if utf16_cmp(p, &name) != Ordering::Less => self.walk.matches = false,
                Some(_) => self.walk.emit(b","),
                None => {}
            }
            self.walk.string(&name);
            self.walk.emit(b":");
            map.next_value_seed(Node {
                walk: &mut *self.walk,
                depth: self.depth + 1,
                comma: false,
            })?;
            previous = Some(name);
        }
        self.walk.emit(b"}");
        Ok(())
    }
}

/// A member name, borrowed from the input unless it holds escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> de::Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Compares two strings as sequences of UTF-16 code units (RFC 8785 member order).
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
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
    write_string_to(s, &mut |b| out.extend_from_slice(b));
}

/// As [`write_string`], handing the bytes to `out` piece by piece (the decoder compares them
/// with its input instead of collecting them).
fn write_string_to(s: &str, out: &mut impl FnMut(&[u8])) {
    out(b"\"");
    for c in s.chars() {
        match c {
            '"' => out(b"\\\""),
            '\\' => out(b"\\\\"),
            '\u{8}' => out(b"\\b"),
            '\u{c}' => out(b"\\f"),
            '\n' => out(b"\\n"),
            '\r' => out(b"\\r"),
            '\t' => out(b"\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let c = c as usize;
                out(&[b'\\', b'u', b'0', b'0', HEX[c >> 4], HEX[c & 15]]);
            }
            c => {
                let mut buf = [0u8; 4];
                out(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out(b"\"");
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
