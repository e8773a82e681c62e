//! Signed messages: a body, its signer and an ed25519 signature over domain-tagged canonical bytes.
//!
//! The signed bytes are `DOMAIN || 0x00 || JCS(body)`, where `DOMAIN` names the message type
//! (for example `market/v1/TaskSpec`). A signature on one type therefore never verifies as
//! another, even when the two bodies happen to encode to the same JSON.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::canonical::{to_canonical_bytes, CanonicalError};
use crate::hash::Hash;
use crate::keys::{AccountId, Identity, Signature};

/// A type that can be signed: it names its domain tag and, where the body says who speaks,
/// the account that must be the signer.
pub trait Message: Serialize + DeserializeOwned {
    /// The domain tag, unique per message type, e.g. `market/v1/TaskSpec`.
    const DOMAIN: &'static str;

    /// The account the body claims as its author, which must equal the signer.
    fn author(&self) -> Option<AccountId> {
        None
    }
}

/// Why a signed message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The body cannot be canonicalized (for example it holds a float).
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The signature does not match the body, signer and domain.
    #[error("bad signature on a {domain} message from {signer}")]
    BadSignature {
        domain: &'static str,
        signer: AccountId,
    },
    /// The body names an author other than the signer.
    #[error("a {domain} message authored by {author} was signed by {signer}")]
    WrongSigner {
        domain: &'static str,
        author: AccountId,
        signer: AccountId,
    },
}

/// The exact bytes that are signed and hashed for a message of type `T`.
pub fn signing_bytes<T: Message>(body: &T) -> Result<Vec<u8>, CanonicalError> {
    let canonical = to_canonical_bytes(body)?;
    let mut bytes = Vec::with_capacity(T::DOMAIN.len() + 1 + canonical.len());
    bytes.extend_from_slice(T::DOMAIN.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&canonical);
    Ok(bytes)
}

/// The id of a message: blake3 of its signing bytes. Independent of who signed it, so a task
/// id is fixed by the buyer's spec and a commitment id by the worker's commitment.
pub fn message_id<T: Message>(body: &T) -> Result<Hash, CanonicalError> {
    Ok(Hash::of(&signing_bytes(body)?))
}

/// Checks `signature` by `signer` over `body`'s signing bytes (strict RFC 8032), without the
/// author rule: for bodies that carry their signer elsewhere, such as ledger entries.
pub fn verify_signature<T: Message>(
    body: &T,
    signer: AccountId,
    signature: &Signature,
) -> Result<(), SignatureError> {
    let bytes = signing_bytes(body)?;
    signer
        .verifying_key()
        .verify_strict(&bytes, &signature.to_dalek())
        .map_err(|_| SignatureError::BadSignature {
            domain: T::DOMAIN,
            signer,
        })
}

/// A message with its signer and signature. Construct with [`Signed::sign`]; read the body
/// only through [`Signed::verify`] when the message came from elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed<T> {
    /// The message.
    pub body: T,
    /// The account that signed.
    pub signer: AccountId,
    /// ed25519 over [`signing_bytes`] of the body.
    pub signature: Signature,
}

impl<T: Message> Signed<T> {
    /// Signs `body` with `identity`. Fails if the body is not canonicalizable or names another
    /// author.
    pub fn sign(body: T, identity: &Identity) -> Result<Self, SignatureError> {
        let signer = identity.account();
        if let Some(author) = body.author() {
            if author != signer {
                return Err(SignatureError::WrongSigner {
                    domain: T::DOMAIN,
                    author,
                    signer,
                });
            }
        }
        let signature = identity.sign_raw(&signing_bytes(&body)?);
        Ok(Self {
            body,
            signer,
            signature,
        })
    }

    /// Checks the signature (strict RFC 8032 verification) and the author, and returns the body.
    pub fn verify(&self) -> Result<&T, SignatureError> {
        if let Some(author) = self.body.author() {
            if author != self.signer {
                return Err(SignatureError::WrongSigner {
                    domain: T::DOMAIN,
                    author,
                    signer: self.signer,
                });
            }
        }
        verify_signature(&self.body, self.signer, &self.signature)?;
        Ok(&self.body)
    }

    /// As [`Signed::verify`], consuming the envelope.
    pub fn into_verified(self) -> Result<T, SignatureError> {
        self.verify()?;
        Ok(self.body)
    }

    /// The id of the body (see [`message_id`]).
    pub fn id(&self) -> Result<Hash, CanonicalError> {
        message_id(&self.body)
    }
}
