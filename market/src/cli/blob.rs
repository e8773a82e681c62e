//! `market-node blob`: upload and download blobs, streamed, checked against their ids.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use market_protocol::BlobId;

use super::{bytes_bar, Connection};

/// Blob commands.
#[derive(Subcommand, Debug)]
pub enum BlobCommand {
    /// Upload a file (a dataset, or weights such as a GGUF model) and print its blob id, which
    /// tasks name. Streamed: the file is hashed, then sent, never held in memory.
    Upload {
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
    /// Download a blob you hold (one you uploaded, a result of your task, or one granted to
    /// you). Streamed, and kept only if its bytes hash to the id; never written over an
    /// existing file.
    Download {
        /// The blob id.
        id: BlobId,
        /// Where to write it (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
}

/// Runs a blob command.
pub async fn run(command: BlobCommand) -> Result<()> {
    match command {
        BlobCommand::Upload { file, conn } => {
            let client = conn.signing_client()?;
            let len = std::fs::metadata(&file)
                .with_context(|| format!("reading {}", file.display()))?
                .len();
            let bar = bytes_bar(Some(len), "uploading");
            let shown = bar.clone();
            let id = client
                .upload_file(&file, move |sent| shown.set_position(sent))
                .await?;
            bar.finish_and_clear();
            println!("{id}");
        }
        BlobCommand::Download { id, out, conn } => {
            let n = download(&conn.signing_client()?, &id, &out).await?;
            eprintln!(
                "{n} bytes written to {} (blob {id}, checked)",
                out.display()
            );
        }
    }
    Ok(())
}

/// Downloads blob `id` to `out` with a progress bar; refuses to overwrite a file.
pub async fn download(
    client: &crate::client::Client,
    id: &BlobId,
    out: &std::path::Path,
) -> Result<u64> {
    let bar = bytes_bar(None, "downloading");
    let shown = bar.clone();
    let n = client
        .download_blob(id, out, move |got, total| {
            if let Some(t) = total {
                if shown.length() != Some(t) {
                    shown.set_length(t);
                    shown.set_style(bytes_bar(Some(t), "").style());
                }
            }
            shown.set_position(got);
        })
        .await
        .with_context(|| format!("downloading blob {id}"))?;
    bar.finish_and_clear();
    Ok(n)
}
