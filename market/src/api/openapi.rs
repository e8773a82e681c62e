//! The OpenAPI document, as clients generate code from it: the paths and types utoipa derives
//! from the handlers, the request signature as a security scheme, and one rewrite that
//! mainstream generators need (internally tagged enums as one object per variant).
//! `scripts/api-check.sh` checks the document against the running node with schemathesis and a
//! generated client.

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The names of the four signature headers as security schemes; a signed route requires all
/// four together (`crate::auth`).
pub(crate) const SIGNATURE_SCHEMES: [(&str, &str); 4] = [
    ("marketAccount", crate::auth::ACCOUNT),
    ("marketTimestamp", crate::auth::TIMESTAMP),
    ("marketNonce", crate::auth::NONCE),
    ("marketSignature", crate::auth::SIGNATURE),
];

/// Adds the signature headers as `apiKey` security schemes.
#[derive(Debug)]
pub(crate) struct SignatureSchemes;

impl Modify for SignatureSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, header) in SIGNATURE_SCHEMES {
            let mut key = ApiKeyValue::new(header);
            key.description = Some(
                "market request signature: ed25519 over \"market/v1/HttpRequest\" 0x00 METHOD \\n \
                 PATH_AND_QUERY \\n hex(blake3(body)) \\n TIMESTAMP \\n NONCE (spec/PROTOCOL.md \
                 section 9); all four headers together"
                    .into(),
            );
            components.add_security_scheme(name, SecurityScheme::ApiKey(ApiKey::Header(key)));
        }
        let mut bearer =
            utoipa::openapi::security::Http::new(utoipa::openapi::security::HttpAuthScheme::Bearer);
        bearer.description = Some(
            "an API key (`mk-` and 64 hex digits), created with a signed POST /v1/keys".into(),
        );
        components.add_security_scheme("apiKey", SecurityScheme::Http(bearer));
    }
}

/// The document served at `/v1/openapi.json`.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap_or_default();
    flatten_tagged_unions(&mut doc);
    doc
}

/// Rewrites each `oneOf` variant of the form `allOf: [{$ref: X}, {tag object}]` (how utoipa
/// writes a serde internally tagged enum) as one object holding X's properties and the tag:
/// the same JSON, in the shape generators such as openapi-python-client accept in a union.
fn flatten_tagged_unions(doc: &mut serde_json::Value) {
    let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(|s| s.as_object())
        .cloned()
    else {
        return;
    };
    let Some(targets) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    else {
        return;
    };
    for schema in targets.values_mut() {
        let Some(variants) = schema.get_mut("oneOf").and_then(|v| v.as_array_mut()) else {
            continue;
        };
        for variant in variants.iter_mut() {
            let Some([reference, tag]) = variant
                .get("allOf")
                .and_then(|a| a.as_array())
                .and_then(|a| <&[serde_json::Value; 2]>::try_from(a.as_slice()).ok())
                .cloned()
            else {
                continue;
            };
            let Some(name) = reference
                .get("$ref")
                .and_then(|r| r.as_str())
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            else {
                continue;
            };
            let (Some(mut merged), Some(tag_props)) = (
                schemas.get(name).cloned(),
                tag.get("properties").and_then(|p| p.as_object()).cloned(),
            ) else {
                continue;
            };
            let Some(props) = merged.get_mut("properties").and_then(|p| p.as_object_mut()) else {
                continue;
            };
            props.extend(tag_props);
            let mut required: Vec<serde_json::Value> = merged
                .get("required")
                .and_then(|r| r.as_array())
                .cloned()
                .unwrap_or_default();
            for r in tag
                .get("required")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
            {
                if !required.contains(r) {
                    required.push(r.clone());
                }
            }
            merged["required"] = serde_json::Value::Array(required);
            if let Some(description) = variant.get("description").cloned() {
                merged["description"] = description;
            }
            *variant = merged;
        }
    }
}

/// `Signed<TaskSpec>`, the body of `POST /v1/tasks`: the buyer's task (`spec/ENCODING.md`,
/// "TaskSpec") signed by the buyer (`spec/ENCODING.md` section 5, domain `market/v1/TaskSpec`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only the schema reads it.
pub(crate) struct SignedTaskSpec {
    /// The TaskSpec (its canonical JSON is what is signed).
    #[schema(value_type = Object)]
    body: serde_json::Value,
    /// The buyer's account: 64 lowercase hex digits (an ed25519 public key).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    signer: String,
    /// The ed25519 signature, 128 lowercase hex digits.
    #[schema(pattern = "^[0-9a-f]{128}$")]
    signature: String,
}

/// A page of ledger entries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EntriesPage {
    /// Signed entries in sequence order (`ledger/README.md`, "Entries").
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<serde_json::Value>,
}

/// Whether a grant was withdrawn.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Revoked {
    /// False when there was no such grant.
    pub revoked: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;

    #[test]
    fn a_tagged_union_becomes_one_object_per_variant_with_its_tag() {
        let doc = document();
        let variants = doc["components"]["schemas"]["PoolPart"]["oneOf"]
            .as_array()
            .unwrap();
        assert_eq!(variants.len(), 2);
        for v in variants {
            assert!(v.get("allOf").is_none(), "{v}");
            assert_eq!(v["type"], "object", "{v}");
            assert!(v["properties"]["part"].is_object(), "{v}");
            assert!(v["required"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("part")));
        }
        // The task variant carries PoolProgress's fields.
        assert!(variants
            .iter()
            .any(|v| v["properties"]["rounds"].is_object()));
    }

    #[test]
    fn the_signature_headers_are_security_schemes() {
        let doc = document();
        for (name, header) in SIGNATURE_SCHEMES {
            let s = &doc["components"]["securitySchemes"][name];
            assert_eq!(s["type"], "apiKey");
            assert_eq!(s["in"], "header");
            assert_eq!(s["name"], header);
        }
    }
}
