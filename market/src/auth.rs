//! Request signing, in the spirit of RFC 9421: a state-changing request carries the account,
//! a timestamp, a nonce and an ed25519 signature over
//!
//! ```text
//! "market/v1/HttpRequest" 0x00 METHOD "\n" PATH_AND_QUERY "\n" hex(blake3(body)) "\n" TIMESTAMP "\n" NONCE
//! ```
//!
//! in the headers below. The node refuses stale timestamps and nonces it has seen, so a captured
//! request cannot be replayed. The same code signs (for the client) and checks (for the node).

use axum::http::{HeaderMap, HeaderValue};
use market_protocol::{AccountId, Hash, Identity, Signature};

use crate::error::ApiError;

/// The signing account, hex.
pub const ACCOUNT: &str = "x-market-account";
/// Unix seconds.
pub const TIMESTAMP: &str = "x-market-timestamp";
/// 16 to 64 characters of `[A-Za-z0-9_-]`, unique per account within the skew window.
pub const NONCE: &str = "x-market-nonce";
/// The signature, hex.
pub const SIGNATURE: &str = "x-market-signature";

/// The domain tag of request signatures.
pub const DOMAIN: &str = "market/v1/HttpRequest";

/// The bytes a request signature covers.
pub fn signing_bytes(
    method: &str,
    path_and_query: &str,
    body_digest: &Hash,
    timestamp: u64,
    nonce: &str,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(128 + path_and_query.len());
    b.extend_from_slice(DOMAIN.as_bytes());
    b.push(0);
    b.extend_from_slice(
        format!("{method}\n{path_and_query}\n{body_digest}\n{timestamp}\n{nonce}").as_bytes(),
    );
    b
}

/// The signature headers for a request, made by `identity`.
pub fn sign_headers(
    identity: &Identity,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timestamp: u64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    sign_headers_for_digest(
        identity,
        method,
        path_and_query,
        &Hash::of(body),
        timestamp,
        nonce,
    )
}

/// [`sign_headers`] for a body known by its blake3 digest only (a blob streamed from disk,
/// whose digest is its id).
pub fn sign_headers_for_digest(
    identity: &Identity,
    method: &str,
    path_and_query: &str,
    body_digest: &Hash,
    timestamp: u64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let sig = identity.sign_raw(&signing_bytes(
        method,
        path_and_query,
        body_digest,
        timestamp,
        nonce,
    ));
    vec![
        (ACCOUNT, identity.account().to_hex()),
        (TIMESTAMP, timestamp.to_string()),
        (NONCE, nonce.to_owned()),
        (SIGNATURE, sig.to_string()),
    ]
}

/// The signature fields of a request, parsed but not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// Who claims to sign.
    pub account: AccountId,
    /// When.
    pub timestamp: u64,
    /// The nonce.
    pub nonce: String,
    /// The signature.
    pub signature: Signature,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    headers
        .get(name)
        .map(HeaderValue::to_str)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_signature",
                format!("this request must be signed: header {name} is missing"),
            )
        })?
        .map_err(|_| ApiError::unauthorized("bad_signature", format!("header {name} is not ASCII")))
}

impl SignedRequest {
    /// Parses the signature headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let bad = |what: &str| ApiError::unauthorized("bad_signature", what.to_string());
        let account = header(headers, ACCOUNT)?
            .parse()
            .map_err(|_| bad("x-market-account is not a valid account id"))?;
        let timestamp = header(headers, TIMESTAMP)?
            .parse()
            .map_err(|_| bad("x-market-timestamp is not unix seconds"))?;
        let nonce = header(headers, NONCE)?.to_owned();
        let nonce_ok = (16..=64).contains(&nonce.len())
            && nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !nonce_ok {
            return Err(bad(
                "x-market-nonce must be 16 to 64 characters of [A-Za-z0-9_-]",
            ));
        }
        let signature = header(headers, SIGNATURE)?
            .parse()
            .map_err(|_| bad("x-market-signature is not 128 hex digits"))?;
        Ok(Self {
            account,
            timestamp,
            nonce,
            signature,
        })
    }

    /// Checks the signature over this request and the timestamp against `now`.
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        body_digest: &Hash,
        now: u64,
        max_skew: u64,
    ) -> Result<(), ApiError> {
        if self.timestamp.abs_diff(now) > max_skew {
            return Err(ApiError::unauthorized(
                "stale_request",
                format!(
                    "timestamp {} is more than {max_skew}s from the node's clock ({now})",
                    self.timestamp
                ),
            ));
        }
        let bytes = signing_bytes(
            method,
            path_and_query,
            body_digest,
            self.timestamp,
            &self.nonce,
        );
        self.account
            .verifying_key()
            .verify_strict(&bytes, &self.signature.to_dalek())
            .map_err(|_| {
                ApiError::unauthorized(
                    "bad_signature",
                    "the signature does not match this request and account",
                )
            })
    }
}

/// Seconds since the Unix epoch (request freshness only; nothing hashed depends on it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
