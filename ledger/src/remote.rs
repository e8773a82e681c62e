//! Statements from a running node, checked here: the node's signed head and its export are
//! fetched over HTTP, the export is verified against the head, and the statement is read from
//! it (see [`crate::statement`]). Nothing the node says is taken on trust.

use std::io::Write;
use std::path::{Path, PathBuf};

use market_protocol::AccountId;

use crate::head::SignedHead;
use crate::statement::Statement;

/// The longest export fetched (bytes): past it the node is refused rather than allowed to
/// fill the disk.
pub const MAX_EXPORT_BYTES: u64 = 64 << 30;

/// Why a remote statement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The node could not be reached or answered with an error.
    #[error("{url}: {reason}")]
    Http {
        /// What was asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Writing the export to disk failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The export or head did not verify, or the ledger is not the expected one.
    #[error("the node's ledger does not verify: {0}")]
    Ledger(#[from] crate::error::LedgerError),
    /// The export is from another operator than the one the caller expects.
    #[error("the node's ledger is {found}, expected {expected}")]
    OtherLedger {
        /// The key the caller named.
        expected: AccountId,
        /// The export's genesis key.
        found: AccountId,
    },
}

/// Fetches `node`'s signed head and export (into `keep`, or a temporary file removed after),
/// verifies the export against the head, and returns `account`'s statement. With
/// `expected_ledger`, the export's operator key must be that one.
pub async fn fetch_statement(
    node: &str,
    account: AccountId,
    expected_ledger: Option<AccountId>,
    keep: Option<&Path>,
) -> Result<Statement, RemoteError> {
    let base = node.trim_end_matches('/');
    let http = reqwest::Client::new();
    let head_url = format!("{base}/v1/ledger/head");
    let head: SignedHead = get(&http, &head_url)
        .await?
        .json()
        .await
        .map_err(|e| http_error(&head_url, e))?;
    let temp;
    let path = match keep {
        Some(p) => p.to_owned(),
        None => {
            let mut name = [0u8; 8];
            getrandom::fill(&mut name).map_err(|e| RemoteError::Io {
                path: std::env::temp_dir(),
                source: std::io::Error::other(e.to_string()),
            })?;
            temp = TempFile(
                std::env::temp_dir().join(format!("market-export-{}.jsonl", hex::encode(name))),
            );
            temp.0.clone()
        }
    };
    download_export(&http, base, &path).await?;
    let statement = crate::statement::statement(
        std::io::BufReader::new(
            std::fs::File::open(&path).map_err(|source| RemoteError::Io {
                path: path.clone(),
                source,
            })?,
        ),
        &path,
        account,
        Some(&head),
    )?;
    if let Some(expected) = expected_ledger.filter(|e| *e != statement.ledger) {
        return Err(RemoteError::OtherLedger {
            expected,
            found: statement.ledger,
        });
    }
    Ok(statement)
}

/// Streams `base`'s export into `path`.
async fn download_export(
    http: &reqwest::Client,
    base: &str,
    path: &Path,
) -> Result<(), RemoteError> {
    let url = format!("{base}/v1/ledger/export");
    let mut resp = get(http, &url).await?;
    let io = |source| RemoteError::Io {
        path: path.to_owned(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut written = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_error(&url, e))? {
        written += chunk.len() as u64;
        if written > MAX_EXPORT_BYTES {
            return Err(RemoteError::Http {
                url,
                reason: format!("the export is longer than {MAX_EXPORT_BYTES} bytes"),
            });
        }
        out.write_all(&chunk).map_err(io)?;
    }
    out.flush().map_err(io)
}

async fn get(http: &reqwest::Client, url: &str) -> Result<reqwest::Response, RemoteError> {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| http_error(url, e))
}

fn http_error(url: &str, e: reqwest::Error) -> RemoteError {
    RemoteError::Http {
        url: url.to_owned(),
        reason: e.to_string(),
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The command-line arguments of a statement from a running node: `market-node account
/// history`, `market-worker statement` and `market-verifier statement` all take these.
#[derive(clap::Args, Debug, Clone)]
pub struct StatementArgs {
    /// The node's HTTP URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub node: String,
    /// Your key file (the statement is for its account).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Another account than your key's (a ledger is public).
    #[arg(long)]
    pub account: Option<AccountId>,
    /// The operator key the ledger must be signed by (its genesis `ledger`), when you know it.
    #[arg(long)]
    pub ledger: Option<AccountId>,
    /// Keep the verified export in this file (to check again with `market-ledger statement`,
    /// or to hand to someone).
    #[arg(long)]
    pub save_export: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl StatementArgs {
    /// Fetches, verifies and prints the statement; returns it.
    pub async fn print(&self) -> anyhow::Result<Statement> {
        use anyhow::Context;
        let account = match (self.account, &self.key) {
            (Some(a), _) => a,
            (None, Some(k)) => market_protocol::keyfile::load_identity(k)
                .with_context(|| format!("loading key {}", k.display()))?
                .account(),
            (None, None) => anyhow::bail!("name the account: --account ID or --key FILE"),
        };
        let statement = fetch_statement(
            &self.node,
            account,
            self.ledger,
            self.save_export.as_deref(),
        )
        .await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&statement)?);
        } else {
            println!("{statement}");
        }
        Ok(statement)
    }
}
