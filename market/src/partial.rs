//! States of pooled slots the node holds only in part: their parameters, not their optimizer
//! moments. A slot's final state holds its parameters in its last chunks
//! (`market_compute::state::param_span`), the moments before them; the node needs only the
//! parameters to merge a round, and the slot's next start (the merged parameters with the
//! slot's own moments) differs from that final state only in those chunks. So while the slot
//! stays on its worker, which keeps its final state, the moments never cross the link: the node
//! fetches the final's last chunks, derives the start's entry from the final's chunk hashes
//! and the new parameters (`market_net::transfer::entry_with_tail`), and serves the start's
//! last chunks; the worker copies the rest from the state it kept.
//!
//! A partial state is a file of the state's full size with its chunks from `from_chunk` on in
//! place (a hole before), beside its entry and where the rest is. The entry's root is the
//! state's id (checked against the commitment before anything is fetched), so every chunk,
//! held or not, is bound. When a slot moves to another worker the node fetches the rest from
//! the worker that ran it and the state becomes an ordinary blob.

use std::path::{Path, PathBuf};

use market_net::wire::{FileEntry, CHUNK_BYTES};
use market_protocol::{AccountId, BlobId, StateHash, TaskId};
use serde::{Deserialize, Serialize};

/// Where the chunks a partial state lacks are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A slot-round's final state: the file `path` of job `job` of task `task_id` (the pooled
    /// task's id, as the run was assigned) on `worker`, which keeps it after the round.
    Final {
        /// The worker that ran the slot-round.
        worker: AccountId,
        /// The task id the run was assigned under.
        task_id: TaskId,
        /// The node's job number of the run.
        job: u64,
        /// The final checkpoint's path in the run's bundle.
        path: String,
    },
    /// A slot's start: the final state `previous` of the slot's round before, with the
    /// parameters of the global state `global`.
    Start {
        /// The slot's final state of the round before.
        previous: BlobId,
        /// The round's global state.
        global: StateHash,
    },
}

/// What the node knows of a partial state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialMeta {
    /// The pooled task it belongs to (its partial states go when the task ends).
    pub pool: TaskId,
    /// The whole state's entry: its root is the state's id.
    pub entry: FileEntry,
    /// The first chunk held; every chunk from it to the end is.
    pub from_chunk: u32,
    /// Where the rest is.
    pub origin: Origin,
}

impl PartialMeta {
    /// Where the held chunks start, in bytes.
    pub fn tail_offset(&self) -> u64 {
        u64::from(self.from_chunk) * u64::from(CHUNK_BYTES)
    }

    /// For a final state: the worker that keeps it and the bundle file to ask it for.
    pub fn final_source(&self) -> Option<(AccountId, market_net::wire::Source)> {
        match &self.origin {
            Origin::Final {
                worker,
                task_id,
                job,
                path,
            } => Some((
                *worker,
                market_net::wire::Source::Bundle {
                    task_id: *task_id,
                    job: *job,
                    path: path.clone(),
                },
            )),
            Origin::Start { .. } => None,
        }
    }
}

/// Stores `bytes` as the whole blob `id` (checked to hash to it) and forgets its partial
/// state.
pub fn put_whole(
    blobs: &crate::blobs::BlobStore,
    id: &BlobId,
    bytes: &[u8],
) -> std::io::Result<()> {
    if BlobId::of(bytes) != *id {
        return Err(std::io::Error::other(format!(
            "the bytes made whole are not {id}"
        )));
    }
    blobs.put(bytes)?;
    blobs.partial().remove(id);
    Ok(())
}

/// Why a partial state could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    /// No partial state of that id.
    #[error("state {0} is not held in part")]
    Missing(BlobId),
    /// A chunk before the held ones.
    #[error("chunk {chunk} of state {id} {}", market_net::wire::NOT_HELD_BY_NODE)]
    NotHeld {
        /// The state.
        id: BlobId,
        /// The chunk asked for.
        chunk: u32,
    },
    /// The bytes on disk are not the ones the entry names.
    #[error("state {0} is damaged on disk")]
    Damaged(BlobId),
    /// Disk trouble.
    #[error("partial states: {0}")]
    Io(#[from] std::io::Error),
}

/// The partial states, in a directory of their own.
#[derive(Debug, Clone)]
pub struct PartialStates {
    dir: PathBuf,
}

impl PartialStates {
    /// The partial states in `dir` (made if missing). Unlike derived files they survive a
    /// restart: a pool's next round needs them.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = Self {
            dir: dir.to_owned(),
        };
        // What a crash left half made: a description being written, or bytes whose
        // description never was (or was removed first).
        for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
            let path = entry.path();
            let orphan = match path.extension().and_then(|x| x.to_str()) {
                Some("st") => !path.with_extension("json").exists(),
                Some("json") => false,
                _ => true,
            };
            if orphan {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(store)
    }

    fn data_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(format!("{id}.st"))
    }

    fn meta_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Stores state `id` in part: `tail` is its bytes from chunk `meta.from_chunk` to its end,
    /// checked against the entry (whose root must be `id`) before anything is written. The
    /// description is written last, so a crash leaves no partial state that looks whole.
    pub fn put(&self, id: &BlobId, meta: &PartialMeta, tail: &[u8]) -> Result<(), PartialError> {
        let entry = market_net::transfer::entry_with_tail(&meta.entry, meta.from_chunk, tail)
            .ok_or(PartialError::Damaged(*id))?;
        if entry.chunks != meta.entry.chunks
            || market_net::transfer::entry_root(&meta.entry).ok() != Some(id.0)
        {
            return Err(PartialError::Damaged(*id));
        }
        let data = self.data_path(id);
        let file = std::fs::File::create(&data)?;
        file.set_len(meta.entry.size)?;
        use std::io::{Seek, SeekFrom, Write};
        let mut file = file;
        file.seek(SeekFrom::Start(meta.tail_offset()))?;
        file.write_all(tail)?;
        file.sync_all()?;
        write_durably(
            &self.meta_path(id),
            &serde_json::to_vec(meta).map_err(std::io::Error::other)?,
        )?;
        Ok(())
    }

    /// What is known of partial state `id`, if the node holds it in part.
    pub fn meta(&self, id: &BlobId) -> Option<PartialMeta> {
        let bytes = std::fs::read(self.meta_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The file holding state `id` in part (the place to fetch the rest into).
    pub fn file(&self, id: &BlobId) -> PathBuf {
        self.data_path(id)
    }

    /// The held bytes of state `id`: from [`PartialMeta::tail_offset`] to its end, each chunk
    /// checked against the entry.
    pub fn tail(&self, id: &BlobId) -> Result<(PartialMeta, Vec<u8>), PartialError> {
        let meta = self.meta(id).ok_or(PartialError::Missing(*id))?;
        let tail = read_tail(&self.data_path(id), &meta).ok_or(PartialError::Damaged(*id))?;
        Ok((meta, tail))
    }

    /// Chunk `chunk` of state `id`, if held (checked against the entry).
    pub fn chunk(&self, id: &BlobId, chunk: u32) -> Result<Vec<u8>, PartialError> {
        let meta = self.meta(id).ok_or(PartialError::Missing(*id))?;
        if chunk < meta.from_chunk {
            return Err(PartialError::NotHeld { id: *id, chunk });
        }
        let bytes = market_net::transfer::read_chunk(&self.data_path(id), chunk)
            .map_err(|_| PartialError::Damaged(*id))?;
        let want = meta.entry.chunks.get(chunk as usize);
        if want
            != Some(&market_net::transfer::chunk_hash(
                meta.entry.size,
                chunk,
                &bytes,
            ))
        {
            return Err(PartialError::Damaged(*id));
        }
        Ok(bytes)
    }

    /// Forgets partial state `id` (made whole, or no longer needed).
    pub fn remove(&self, id: &BlobId) {
        let _ = std::fs::remove_file(self.meta_path(id));
        let _ = std::fs::remove_file(self.data_path(id));
    }

    /// Forgets every partial state of pooled task `pool` (when it ends).
    pub fn forget_pool(&self, pool: &TaskId) {
        self.retain_pool(pool, &[]);
    }

    /// Forgets the partial states of pooled task `pool` but `keep` (a round's starts and the
    /// final states they come from: those of earlier rounds are no use any more).
    pub fn retain_pool(&self, pool: &TaskId, keep: &[BlobId]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let ours = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<PartialMeta>(&b).ok())
                .filter(|m| m.pool == *pool);
            if let Some(id) = ours.and_then(|m| market_net::transfer::entry_root(&m.entry).ok()) {
                if !keep.contains(&BlobId(id)) {
                    self.remove(&BlobId(id));
                }
            }
        }
    }
}

/// Writes `bytes` to `path` through a part file, flushed before it takes the name, so `path`
/// is either absent or whole after a crash.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    let part = PathBuf::from(name);
    let mut file = std::fs::File::create(&part)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(part, path)
}

/// Where a run's bundle holds the tail of its final checkpoint `checkpoint` when the node
/// fetched only that (a pooled slot's parameters): the file, and its [`PartialMeta`] (written
/// once the tail is whole). Neither is a path of the bundle layout, so neither is ever served.
pub fn tail_files(checkpoint: &Path) -> (PathBuf, PathBuf) {
    (
        checkpoint.with_extension("st.tail"),
        checkpoint.with_extension("st.tail.json"),
    )
}

/// The bytes of `data` from `meta`'s first held chunk to its end, when every one of those
/// chunks is the one `meta`'s entry names.
pub fn read_tail(data: &Path, meta: &PartialMeta) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(data).ok()?;
    file.seek(SeekFrom::Start(meta.tail_offset())).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    match market_net::transfer::entry_with_tail(&meta.entry, meta.from_chunk, &tail) {
        Some(e) if e.chunks == meta.entry.chunks => Some(tail),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use market_protocol::Hash;

    fn entry_of(bytes: &[u8]) -> FileEntry {
        let chunks = bytes
            .chunks(CHUNK_BYTES as usize)
            .enumerate()
            .map(|(i, c)| market_net::transfer::chunk_hash(bytes.len() as u64, i as u32, c))
            .collect();
        FileEntry {
            path: "x".into(),
            size: bytes.len() as u64,
            chunks,
        }
    }

    #[test]
    fn a_partial_state_serves_its_tail_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = PartialStates::open(dir.path()).unwrap();
        let mib = CHUNK_BYTES as usize;
        let bytes: Vec<u8> = (0..3 * mib + 17).map(|i| (i % 241) as u8).collect();
        let id = BlobId::of(&bytes);
        let pool = TaskId(Hash::of(b"pool"));
        let meta = PartialMeta {
            pool,
            entry: entry_of(&bytes),
            from_chunk: 2,
            origin: Origin::Start {
                previous: BlobId(Hash::of(b"p")),
                global: StateHash(Hash::of(b"g")),
            },
        };
        // A tail that is not the state's is refused; so is an entry of another state.
        let mut wrong = bytes[2 * mib..].to_vec();
        wrong[3] ^= 1;
        assert!(store.put(&id, &meta, &wrong).is_err());
        assert!(store
            .put(&BlobId(Hash::of(b"other")), &meta, &bytes[2 * mib..])
            .is_err());
        assert!(store.meta(&id).is_none());

        store.put(&id, &meta, &bytes[2 * mib..]).unwrap();
        assert_eq!(store.meta(&id).unwrap(), meta);
        assert_eq!(store.tail(&id).unwrap().1, bytes[2 * mib..]);
        assert_eq!(store.chunk(&id, 3).unwrap(), bytes[3 * mib..]);
        assert!(matches!(
            store.chunk(&id, 1),
            Err(PartialError::NotHeld { chunk: 1, .. })
        ));
        // Damage on disk is found, never served.
        let mut on_disk = std::fs::read(store.file(&id)).unwrap();
        on_disk[2 * mib + 1] ^= 1;
        std::fs::write(store.file(&id), &on_disk).unwrap();
        assert!(matches!(store.chunk(&id, 2), Err(PartialError::Damaged(_))));
        assert!(store.tail(&id).is_err());

        // What a crash leaves half made goes when the store opens again; the rest stays.
        std::fs::write(dir.path().join("orphan.st"), b"x").unwrap();
        std::fs::write(dir.path().join("other.json.part"), b"x").unwrap();
        let store = PartialStates::open(dir.path()).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [format!("{id}.json"), format!("{id}.st")]);

        store.forget_pool(&TaskId(Hash::of(b"another pool")));
        store.retain_pool(&pool, &[id]);
        assert!(store.meta(&id).is_some());
        store.retain_pool(&pool, &[BlobId(Hash::of(b"not it"))]);
        assert!(store.meta(&id).is_none());
        store.put(&id, &meta, &bytes[2 * mib..]).unwrap();
        store.forget_pool(&pool);
        assert!(store.meta(&id).is_none());
        assert!(!store.file(&id).exists());
    }
}
