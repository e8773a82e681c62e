//! `market-node key`: make a key file, and back it up encrypted under a passphrase.
//!
//! A backup holds the secret key sealed with XChaCha20-Poly1305 under a key derived from the
//! passphrase with Argon2id (memory-hard, so a stolen backup resists guessing), with the account
//! id in the clear and bound as associated data: `market-node key restore` on any machine gives
//! back the same account, or refuses a wrong passphrase or a changed file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use clap::Subcommand;
use market_protocol::{AccountId, Identity};
use serde::{Deserialize, Serialize};

/// The format tag of a backup file.
pub const FORMAT: &str = "market-key-backup/v1";

/// Argon2id cost: 64 MiB, 3 passes, one lane (RFC 9106's second recommendation).
const M_KIB: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;

/// The largest backup file read.
const MAX_BACKUP_BYTES: u64 = 4096;

/// The environment variable a passphrase may come from (scripts); otherwise it is asked for.
pub const PASSPHRASE_ENV: &str = "MARKET_KEY_PASSPHRASE";

/// Key backup commands.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write an encrypted backup of a key file (asks for a passphrase twice, or reads
    /// MARKET_KEY_PASSPHRASE).
    Backup {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// The backup to write (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a key file (mode 0600) from a backup, with its passphrase.
    Restore {
        /// The backup.
        #[arg(long)]
        from: PathBuf,
        /// The key file to write (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
}

/// A backup file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// [`FORMAT`].
    pub format: String,
    /// The account whose key this is (associated data of the seal).
    pub account: AccountId,
    /// Argon2id salt, hex (16 bytes).
    pub salt: String,
    /// Argon2id memory in KiB, passes and lanes.
    pub m_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// XChaCha20-Poly1305 nonce, hex (24 bytes).
    pub nonce: String,
    /// The sealed 32-byte secret key with its tag, hex (48 bytes).
    pub sealed: String,
}

fn derive(passphrase: &str, salt: &[u8], m_kib: u32, t: u32, p: u32) -> Result<[u8; 32]> {
    // Bounded so a crafted backup cannot ask for gigabytes.
    anyhow::ensure!(
        (8..=1024 * 1024).contains(&m_kib) && (1..=16).contains(&t) && (1..=8).contains(&p),
        "the backup asks for Argon2 costs out of range"
    );
    let params = argon2::Params::new(m_kib, t, p, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(key)
}

fn aad(account: &AccountId) -> Vec<u8> {
    [FORMAT.as_bytes(), &[0], account.as_bytes().as_slice()].concat()
}

/// Seals `identity` under `passphrase`.
pub fn seal(identity: &Identity, passphrase: &str) -> Result<Backup> {
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let key = derive(passphrase, &salt, M_KIB, T_COST, P_COST)?;
    let account = identity.account();
    let sealed = XChaCha20Poly1305::new(&key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &identity.secret_bytes(),
                aad: &aad(&account),
            },
        )
        .map_err(|_| anyhow::anyhow!("sealing failed"))?;
    Ok(Backup {
        format: FORMAT.into(),
        account,
        salt: hex::encode(salt),
        m_kib: M_KIB,
        t_cost: T_COST,
        p_cost: P_COST,
        nonce: hex::encode(nonce),
        sealed: hex::encode(sealed),
    })
}

/// Opens a backup with `passphrase`: the identity, checked to be the backup's account.
pub fn open(backup: &Backup, passphrase: &str) -> Result<Identity> {
    anyhow::ensure!(backup.format == FORMAT, "not a {FORMAT} backup");
    let salt = hex::decode(&backup.salt).context("salt")?;
    let nonce: [u8; 24] = hex::decode(&backup.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .context("the nonce is not 24 bytes")?;
    let sealed = hex::decode(&backup.sealed).context("sealed key")?;
    anyhow::ensure!(sealed.len() == 48, "the sealed key is not 48 bytes");
    let key = derive(
        passphrase,
        &salt,
        backup.m_kib,
        backup.t_cost,
        backup.p_cost,
    )?;
    let secret = XChaCha20Poly1305::new(&key.into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: &aad(&backup.account),
            },
        )
        .map_err(|_| anyhow::anyhow!("wrong passphrase, or the backup was changed"))?;
    let secret: [u8; 32] = secret
        .try_into()
        .map_err(|_| anyhow::anyhow!("the sealed key is not 32 bytes"))?;
    let identity = Identity::from_secret_bytes(secret);
    anyhow::ensure!(
        identity.account() == backup.account,
        "the backup's key is not account {}",
        backup.account
    );
    Ok(identity)
}

fn passphrase(confirm: bool) -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        anyhow::ensure!(!p.is_empty(), "{PASSPHRASE_ENV} is empty");
        return Ok(p);
    }
    let p = rpassword::prompt_password("passphrase: ").context("reading the passphrase")?;
    anyhow::ensure!(
        p.chars().count() >= 8,
        "use a passphrase of at least 8 characters"
    );
    if confirm {
        let again = rpassword::prompt_password("again: ").context("reading the passphrase")?;
        anyhow::ensure!(again == p, "the two passphrases differ");
    }
    Ok(p)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("{} (refusing to overwrite)", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Runs a key command.
pub fn run(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Backup { key, out } => {
            let identity = market_protocol::keyfile::load_identity(&key)
                .with_context(|| format!("loading key {}", key.display()))?;
            let backup = seal(&identity, &passphrase(true)?)?;
            write_new(&out, serde_json::to_string_pretty(&backup)?.as_bytes())?;
            eprintln!(
                "backup of account {} written to {} (keep the passphrase: without it the backup is useless)",
                backup.account,
                out.display()
            );
        }
        KeyCommand::Restore { from, out } => {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(&from)
                .with_context(|| format!("reading {}", from.display()))?
                .take(MAX_BACKUP_BYTES + 1)
                .read_to_end(&mut bytes)?;
            anyhow::ensure!(
                bytes.len() as u64 <= MAX_BACKUP_BYTES,
                "{} is not a key backup (too long)",
                from.display()
            );
            let backup: Backup = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a key backup", from.display()))?;
            let identity = open(&backup, &passphrase(false)?)?;
            market_protocol::keyfile::save_identity(&identity, &out)?;
            println!("{}", identity.account());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_opens_with_its_passphrase_only_and_unchanged_only() {
        let id = Identity::from_test_label("backed up");
        let backup = seal(&id, "correct horse battery").unwrap();
        assert_eq!(
            open(&backup, "correct horse battery").unwrap().account(),
            id.account()
        );
        assert!(open(&backup, "wrong horse battery").is_err());
        // Another account named in the clear: the seal's associated data no longer holds.
        let mut moved = seal(&id, "pw-pw-pw-pw").unwrap();
        moved.account = Identity::from_test_label("someone else").account();
        assert!(open(&moved, "pw-pw-pw-pw").is_err());
        // A flipped byte of the sealed key.
        let mut flipped = seal(&id, "pw-pw-pw-pw").unwrap();
        let mut bytes = hex::decode(&flipped.sealed).unwrap();
        bytes[0] ^= 1;
        flipped.sealed = hex::encode(bytes);
        assert!(open(&flipped, "pw-pw-pw-pw").is_err());
        // Costs a crafted backup cannot inflate.
        let mut greedy = seal(&id, "pw-pw-pw-pw").unwrap();
        greedy.m_kib = u32::MAX;
        assert!(open(&greedy, "pw-pw-pw-pw").is_err());
        // Two backups of one key differ (fresh salt and nonce).
        assert_ne!(
            seal(&id, "pw-pw-pw-pw").unwrap().sealed,
            seal(&id, "pw-pw-pw-pw").unwrap().sealed
        );
    }
}
