//! Statements and results from a running node, checked here: the node's signed head and its
//! export are fetched over HTTP and the export is verified *while it streams* (signatures,
//! links, the replay, and a signed head as a prefix), so nothing the node says is taken on
//! trust and nothing unverified is kept. A hostile node is bounded: the head is read up to
//! [`MAX_HEAD_BYTES`], an expected operator key is checked before the export is asked for,
//! every read has a timeout, and the export is never written anywhere unless the caller asks
//! to keep it, and then only once it verified (in a new file, never over an existing one).

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use market_protocol::{AccountId, BlobId, TaskId};

use crate::entry::EntryKind;
use crate::error::LedgerError;
use crate::head::SignedHead;
use crate::statement::Statement;

/// The largest signed head read (a real one is about 400 bytes).
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// How long a connection may take to open, and a read to make progress.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Writing a file the caller asked to keep failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The export or head did not verify.
    #[error("the node's ledger does not verify: {0}")]
    Ledger(#[from] LedgerError),
    /// The ledger is another operator's than the one the caller expects.
    #[error("the node's ledger is {found}, expected {expected}")]
    OtherLedger {
        /// The key the caller named.
        expected: AccountId,
        /// The ledger's operator key.
        found: AccountId,
    },
}

/// What to fetch against, and what to keep.
#[derive(Debug, Clone, Default)]
pub struct Fetch {
    /// The node's HTTP URL.
    pub node: String,
    /// The operator key the ledger must be signed by.
    pub expected_ledger: Option<AccountId>,
    /// A signed head seen earlier (kept with `keep_head`): the export must extend it, so a
    /// node cannot show an older or another history than it showed before. Without it the
    /// node's current signed head is the one checked.
    pub earlier_head: Option<SignedHead>,
    /// Keep the verified export in this new file.
    pub keep_export: Option<PathBuf>,
    /// Keep the node's current signed head in this new file (for `earlier_head` next time).
    pub keep_head: Option<PathBuf>,
}

impl Fetch {
    /// Fetches the head and export, verifies the export against the head while it streams,
    /// and hands it, in chain order, to `consume` (which runs on a thread of its own and must
    /// read the input to its end). Returns what `consume` returned and the ledger's key.
    pub async fn verified<T: Send + 'static>(
        &self,
        consume: impl FnOnce(Box<dyn BufRead + Send>, &SignedHead) -> Result<T, LedgerError>
            + Send
            + 'static,
    ) -> Result<(T, AccountId), RemoteError> {
        let base = self.node.trim_end_matches('/');
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| http_error(base, e))?;
        let head_url = format!("{base}/v1/ledger/head");
        let head_bytes =
            read_capped(get(&http, &head_url).await?, &head_url, MAX_HEAD_BYTES).await?;
        let current: SignedHead =
            serde_json::from_slice(&head_bytes).map_err(|e| RemoteError::Http {
                url: head_url.clone(),
                reason: format!("not a signed head: {e}"),
            })?;
        current
            .verify()
            .map_err(|e| LedgerError::Head(crate::head::HeadError::Signature(e)))?;
        let ledger = current.body.ledger;
        if let Some(expected) = self.expected_ledger.filter(|e| *e != ledger) {
            // Before a byte of the export is asked for.
            return Err(RemoteError::OtherLedger {
                expected,
                found: ledger,
            });
        }
        let checked = self.earlier_head.clone().unwrap_or_else(|| current.clone());
        let export_url = format!("{base}/v1/ledger/export");
        let mut resp = get(&http, &export_url).await?;
        let keep = self
            .keep_export
            .as_deref()
            .map(new_file_beside)
            .transpose()?;
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(16);
        let tee = keep
            .as_ref()
            .map(|(f, _)| f.reopen())
            .transpose()
            .map_err(|source| RemoteError::Io {
                path: self.keep_export.clone().unwrap_or_default(),
                source,
            })?;
        let reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            at: 0,
            tee: tee.map(std::io::BufWriter::new),
        };
        let consumer = std::thread::spawn(move || {
            consume(Box::new(std::io::BufReader::new(reader)), &checked)
        });
        let mut stream_error = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    // The verifier stopped (a fault): no need for the rest.
                    if tx.send(chunk.to_vec()).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    stream_error = Some(http_error(&export_url, e));
                    break;
                }
            }
        }
        drop(tx);
        let consumed = consumer.join().map_err(|_| RemoteError::Http {
            url: export_url.clone(),
            reason: "the verifier thread panicked".into(),
        })?;
        if let Some(e) = stream_error {
            return Err(e);
        }
        let value = consumed?;
        if let (Some((file, _)), Some(path)) = (keep, &self.keep_export) {
            persist(file, path)?;
        }
        if let Some(path) = &self.keep_head {
            let (mut file, _) = new_file_beside(path)?;
            file.write_all(&head_bytes)
                .and_then(|()| file.as_file().sync_all())
                .map_err(|source| RemoteError::Io {
                    path: path.clone(),
                    source,
                })?;
            persist(file, path)?;
        }
        Ok((value, ledger))
    }

    /// `account`'s statement (see [`crate::statement`]) from the verified export.
    pub async fn statement(&self, account: AccountId) -> Result<Statement, RemoteError> {
        let (statement, _) = self
            .verified(move |input, head| {
                crate::statement::statement(input, Path::new("export"), account, Some(head))
            })
            .await?;
        Ok(statement)
    }

    /// The outputs of `task`'s accepted result as the verified ledger records them: the
    /// `outputs` of the commitment its last `release` embeds (the blob ids a buyer's download
    /// must match). `None` when the ledger holds no such release (a pooled task's weights come
    /// from merges, which `pool_round` entries record by state hash instead).
    pub async fn released_outputs(&self, task: TaskId) -> Result<Option<Vec<BlobId>>, RemoteError> {
        let (outputs, _) = self
            .verified(move |input, head| {
                let mut outputs = None;
                crate::export::verify_export_with(input, Path::new("export"), Some(head), |d| {
                    if let EntryKind::Release {
                        task_id,
                        commitment: Some(c),
                        ..
                    } = &d.entry.body.kind
                    {
                        if *task_id == task && c.body.slot_round.is_none() {
                            outputs = Some(c.body.outputs.clone());
                        }
                    }
                    Ok(())
                })?;
                Ok(outputs)
            })
            .await?;
        Ok(outputs)
    }
}

/// A new temporary file in `path`'s directory (created exclusively: a planted file or link
/// is never followed), to be published at `path` by [`persist`].
fn new_file_beside(path: &Path) -> Result<(tempfile::NamedTempFile, ()), RemoteError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.symlink_metadata().is_ok() {
        return Err(RemoteError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists: choose a new file",
            ),
        });
    }
    let file = tempfile::Builder::new()
        .prefix(".market-")
        .tempfile_in(dir)
        .map_err(|source| RemoteError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok((file, ()))
}

/// Publishes a finished temporary file at `path`, never replacing anything there.
fn persist(file: tempfile::NamedTempFile, path: &Path) -> Result<(), RemoteError> {
    file.persist_noclobber(path)
        .map(drop)
        .map_err(|e| RemoteError::Io {
            path: path.to_owned(),
            source: e.error,
        })
}

/// Reads a response body of at most `cap` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    url: &str,
    cap: usize,
) -> Result<Vec<u8>, RemoteError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_error(url, e))? {
        if out.len() + chunk.len() > cap {
            return Err(RemoteError::Http {
                url: url.to_owned(),
                reason: format!("the answer is longer than {cap} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The export as a reader over the chunks the download hands over; copies what it reads to
/// `tee` when the caller keeps the export.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    tee: Option<std::io::BufWriter<std::fs::File>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    if let Some(tee) = &mut self.tee {
                        tee.write_all(&chunk)?;
                    }
                    self.chunk = chunk;
                    self.at = 0;
                }
                Err(_) => {
                    if let Some(tee) = &mut self.tee {
                        tee.flush()?;
                        tee.get_ref().sync_all()?;
                    }
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<reqwest::Response, RemoteError> {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| http_error(url, e))
}

fn http_error(url: &str, e: reqwest::Error) -> RemoteError {
    // The whole chain: "error sending request" alone hides "connection refused".
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    RemoteError::Http {
        url: url.to_owned(),
        reason,
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
    /// The operator key the ledger must be signed by (its genesis `ledger`). Without it any
    /// self-consistent ledger verifies, whoever signed it.
    #[arg(long)]
    pub ledger: Option<AccountId>,
    /// A signed head kept from an earlier run (`--save-head`): the ledger must extend it, so
    /// the node cannot show you an older or another history than before.
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// Keep the node's current signed head in this new file (for `--head` next time).
    #[arg(long)]
    pub save_head: Option<PathBuf>,
    /// Keep the verified export in this new file (to check again with `market-ledger
    /// statement`, or to hand to someone). Written only once it verified.
    #[arg(long)]
    pub save_export: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl StatementArgs {
    /// What to fetch, from these arguments.
    pub fn fetch(&self) -> anyhow::Result<Fetch> {
        use anyhow::Context;
        let earlier_head = self
            .head
            .as_deref()
            .map(|p| -> anyhow::Result<SignedHead> {
                let mut bytes = Vec::new();
                std::fs::File::open(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .take(MAX_HEAD_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)?;
                anyhow::ensure!(bytes.len() <= MAX_HEAD_BYTES, "{} is too long", p.display());
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a signed head", p.display()))
            })
            .transpose()?;
        Ok(Fetch {
            node: self.node.clone(),
            expected_ledger: self.ledger,
            earlier_head,
            keep_export: self.save_export.clone(),
            keep_head: self.save_head.clone(),
        })
    }

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
        let statement = self.fetch()?.statement(account).await?;
        if self.ledger.is_none() {
            eprintln!(
                "note: the ledger was not pinned; its operator key is {} (pass --ledger {} to require it)",
                statement.ledger, statement.ledger
            );
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&statement)?);
        } else {
            println!("{statement}");
        }
        Ok(statement)
    }
}
