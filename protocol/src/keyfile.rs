//! Key files: the only file I/O in this crate, kept here so every binary stores keys one way.
//!
//! A key file is a small JSON document with the secret in hex and the account it belongs to.
//! It is created with mode 0600 and refused on load if group or others may read it: a secret
//! that others could have read is not a secret, and failing loudly beats signing with it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{AccountId, Identity};

/// The largest key file accepted (a real one is about 200 bytes).
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Group or others can read the file.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); \
         protect it with `chmod 600 {path}` and consider the key exposed if others had access"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    /// The file is not a market key file.
    #[error("key file {path} is not a market ed25519 key file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// Saving would overwrite an existing key.
    #[error("key file {path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kind: String,
    account: AccountId,
    secret: String,
}

const KIND: &str = "market-ed25519-secret-v1";

/// Writes `identity` to a new file at `path` with mode 0600. Never overwrites.
pub fn save_identity(identity: &Identity, path: &Path) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let body = KeyFile {
        kind: KIND.into(),
        account: identity.account(),
        secret: hex::encode(identity.secret_bytes()),
    };
    let mut text = serde_json::to_string_pretty(&body).map_err(|e| KeyFileError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            io(e)
        }
    })?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads the identity at `path`, refusing files that group or others can read.
pub fn load_identity(path: &Path) -> Result<Identity, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let malformed = |reason: String| KeyFileError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(malformed(format!("{} bytes is too large", meta.len())));
    }
    let text = std::fs::read(path).map_err(io)?;
    let file: KeyFile = serde_json::from_slice(&text).map_err(|e| malformed(e.to_string()))?;
    if file.kind != KIND {
        return Err(malformed(format!(
            "kind {:?}, expected {KIND:?}",
            file.kind
        )));
    }
    let secret = crate::hash::decode_hex_array::<32>(&file.secret)
        .map_err(|e| malformed(format!("secret: {e}")))?;
    let identity = Identity::from_secret_bytes(secret);
    if identity.account() != file.account {
        return Err(malformed(
            "the secret does not belong to the account written beside it".into(),
        ));
    }
    Ok(identity)
}

/// Loads the identity at `path`, or creates one there if the file does not exist.
pub fn load_or_create_identity(path: &Path) -> Result<Identity, KeyFileError> {
    if path.exists() {
        return load_identity(path);
    }
    let identity = Identity::generate().map_err(|e| KeyFileError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    save_identity(&identity, path)?;
    Ok(identity)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let id = Identity::from_test_label("carol");
        save_identity(&id, &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_identity(&path).unwrap().account(), id.account());
        assert!(matches!(
            save_identity(&id, &path),
            Err(KeyFileError::Exists { .. })
        ));
    }

    #[test]
    fn readable_key_is_refused_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        save_identity(&Identity::from_test_label("dave"), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_identity(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn foreign_and_mismatched_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        std::fs::write(&path, b"not json").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_identity(&path),
            Err(KeyFileError::Malformed { .. })
        ));
        let other = Identity::from_test_label("eve");
        let body = format!(
            r#"{{"kind":"{KIND}","account":"{}","secret":"{}"}}"#,
            Identity::from_test_label("frank").account(),
            hex::encode(other.secret_bytes())
        );
        std::fs::write(&path, body).unwrap();
        assert!(matches!(
            load_identity(&path),
            Err(KeyFileError::Malformed { .. })
        ));
    }
}
