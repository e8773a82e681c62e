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
    derived: PathBuf,
    derived_max: u64,
    max_bytes: u64,
    partial: crate::partial::PartialStates,
}

/// The most bytes of derived work (text datasets' tokens) the node keeps; the least recently
/// used go first. A 256 MiB text of digits is a GiB of tokens.
pub const MAX_DERIVED_BYTES: u64 = 4 << 30;

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
        // What an earlier process derived may come from another build: started afresh.
        let derived = dir.join("derived");
        match std::fs::remove_dir_all(&derived) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&derived)?;
        Ok(Self {
            dir: dir.to_owned(),
            tmp,
            derived,
            derived_max: MAX_DERIVED_BYTES,
            max_bytes,
            partial: crate::partial::PartialStates::open(&dir.join("partial"))?,
        })
    }

    /// The same store keeping at most `bytes` of derived work.
    pub fn with_derived_limit(mut self, bytes: u64) -> Self {
        self.derived_max = bytes;
        self
    }

    /// The derived files kept (not being written), least recently used first: each with its
    /// last use, its size and its path.
    fn derived_files(&self) -> std::io::Result<Vec<(std::time::SystemTime, u64, PathBuf)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.derived)? {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !meta.is_file() || entry.file_name().to_string_lossy().ends_with(".part") {
                continue;
            }
            files.push((meta.modified()?, meta.len(), entry.path()));
        }
        files.sort();
        Ok(files)
    }

    /// The pooled slots' states held only in part ([`crate::partial`]).
    pub fn partial(&self) -> &crate::partial::PartialStates {
        &self.partial
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

    /// A text's tokens this process kept from an earlier job of the same task (its post's
    /// validation, a pooled round's start or merge, a ringer), checked by whoever reads them:
    /// a pooled text task is tokenized once, not twice a round.
    fn derived(&self, key: &market_protocol::Hash, max_bytes: u64) -> Option<Vec<u8>> {
        market_net::derived::read(
            &self.derived.join(market_net::derived::file_name(key)?),
            max_bytes,
        )
    }

    /// Kept within the store's limit ([`MAX_DERIVED_BYTES`] unless set), the least recently
    /// used removed first to make room.
    fn keep_derived(&self, key: &market_protocol::Hash, bytes: &[u8]) {
        let Some(name) = market_net::derived::file_name(key) else {
            return;
        };
        let size = bytes.len() as u64;
        if size > self.derived_max {
            return;
        }
        if let Ok(files) = self.derived_files() {
            let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
            for (_, len, path) in files {
                if total + size <= self.derived_max {
                    break;
                }
                if std::fs::remove_file(&path).is_ok() {
                    total -= len;
                }
            }
        }
        market_net::derived::write(&self.derived.join(name), bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_compute::BlobSource;
    use market_protocol::Hash;

    #[test]
    fn derived_work_is_kept_within_its_limit_and_forgotten_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20)
            .unwrap()
            .with_derived_limit(250);
        let (a, b, c) = (Hash::of(b"a"), Hash::of(b"b"), Hash::of(b"c"));
        assert_eq!(store.derived(&a, 1 << 20), None);
        store.keep_derived(&a, &[1; 100]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.keep_derived(&b, &[2; 100]);
        assert_eq!(store.derived(&a, 1 << 20), Some(vec![1; 100]));
        assert_eq!(store.derived(&a, 99), None, "over the reader's limit");
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A third does not fit beside both: the least recently used (b; a was just read) goes.
        store.keep_derived(&c, &[3; 100]);
        assert_eq!(store.derived(&b, 1 << 20), None);
        assert_eq!(store.derived(&a, 1 << 20), Some(vec![1; 100]));
        assert_eq!(store.derived(&c, 1 << 20), Some(vec![3; 100]));
        // More than the whole limit is not kept, and evicts nothing.
        store.keep_derived(&b, &[4; 300]);
        assert_eq!(store.derived(&b, 1 << 20), None);
        assert_eq!(store.derived(&c, 1 << 20), Some(vec![3; 100]));
        // A restart (another build, perhaps) starts afresh; blobs stay.
        let id = store.put(b"blob").unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.derived(&a, 1 << 20), None);
        assert_eq!(store.read(&id).as_deref(), Some(&b"blob"[..]));
    }
}
