//! A content-addressed blob store on disk. Uploads stream to a temporary file while being hashed
//! (never whole in memory), are refused past the size limit, and become visible under their
//! blake3 id only once complete.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use market_protocol::BlobId;
use tokio::io::AsyncWriteExt;

/// Why a blob could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The upload is larger than the limit.
    #[error("blob is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The body stream failed.
    #[error("upload interrupted: {0}")]
    Body(String),
    /// Disk trouble.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// The store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
}

/// A finished upload, not yet published under its id.
#[derive(Debug)]
pub struct Staged {
    /// The content id.
    pub id: BlobId,
    /// Its size.
    pub size: u64,
    path: PathBuf,
}

impl BlobStore {
    /// A store in `dir` with uploads limited to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        // Leftovers of uploads interrupted by a crash are never published; drop them.
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(Self {
            dir: dir.to_owned(),
            tmp,
            max_bytes,
        })
    }

    /// The path of a stored blob.
    pub fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Whether the blob exists.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.path(id).is_file()
    }

    /// Streams `body` to a temporary file, hashing as it goes; refused past `limit` bytes (or
    /// the store's own limit, whichever is lower).
    pub async fn stage<S, B, E>(&self, mut body: S, limit: u64) -> Result<Staged, BlobError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let limit = limit.min(self.max_bytes);
        let path = self.tmp_path("upload");
        let mut file = tokio::fs::File::create(&path).await?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let result: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                let chunk = chunk.as_ref();
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge(limit));
                }
                hasher.update(chunk);
                file.write_all(chunk).await?;
            }
            file.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Ok(Staged {
            id: BlobId(hasher.finalize().into()),
            size,
            path,
        })
    }

    /// Publishes a staged upload under its id.
    pub async fn publish(&self, staged: Staged) -> Result<BlobId, BlobError> {
        tokio::fs::rename(&staged.path, self.path(&staged.id)).await?;
        Ok(staged.id)
    }

    /// Drops a staged upload.
    pub async fn discard(&self, staged: Staged) {
        let _ = tokio::fs::remove_file(&staged.path).await;
    }

    /// Stores bytes the node made itself (results). Two tasks may store the same bytes at
    /// once: each writes its own temporary file, and the rename is atomic, so the blob is
    /// whole whichever lands last.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<BlobId> {
        let id = BlobId::of(bytes);
        let path = self.path(&id);
        if !path.exists() {
            let tmp = self.tmp_path("put");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(tmp, path)?;
        }
        Ok(id)
    }

    /// A temporary file name no other write of this process uses.
    fn tmp_path(&self, kind: &str) -> PathBuf {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp.join(format!("{kind}-{}-{n}", std::process::id()))
    }

    /// Deletes a stored blob (expired); a blob that is not there is no error.
    pub fn remove(&self, id: &BlobId) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads a whole blob (for the compute crate, which takes bytes).
    pub fn read(&self, id: &BlobId) -> Option<Vec<u8>> {
        std::fs::read(self.path(id)).ok()
    }
}

impl market_compute::BlobSource for BlobStore {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.read(id)
    }

    fn blob_len(&self, id: &BlobId) -> Option<u64> {
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }
}
