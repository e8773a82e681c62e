//! Chunked file transfer: manifests of chunk hashes, serving chunks from disk, and fetching
//! with each chunk checked against its blake3 hash as it arrives. A fetch is resumable: chunks
//! already on disk that match their hash are kept, so an interrupted transfer goes on where it
//! stopped.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use libp2p::PeerId;
use market_protocol::Hash;

use crate::peer::{Net, NetError};
use crate::wire::{
    FileEntry, Manifest, Reply, Request, Response, Source, CHUNK_BYTES, MAX_FILE_BYTES,
    MAX_MANIFEST_FILES,
};

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Local files.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer refused or answered nonsense.
    #[error("{0}")]
    Refused(String),
    /// A chunk kept arriving corrupted.
    #[error("chunk {chunk} of {path} failed its hash check {tries} times")]
    Corrupt {
        /// Which file.
        path: String,
        /// Which chunk.
        chunk: u32,
        /// How often.
        tries: u32,
    },
    /// A manifest breaks the limits or names a path outside the bundle layout.
    #[error("bad manifest: {0}")]
    BadManifest(String),
}

/// What a fetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Bytes received over the network.
    pub received: u64,
    /// Chunks already on disk and kept.
    pub kept_chunks: u32,
    /// Chunks that arrived corrupted and were fetched again.
    pub corrupt_chunks: u32,
}

impl std::ops::AddAssign for FetchStats {
    fn add_assign(&mut self, o: Self) {
        self.received += o.received;
        self.kept_chunks += o.kept_chunks;
        self.corrupt_chunks += o.corrupt_chunks;
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Chunks of a file of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(u64::from(CHUNK_BYTES))
}

/// Hashes `path` chunk by chunk into a manifest entry named `name`.
fn describe_file(path: &Path, name: &str) -> Result<FileEntry, TransferError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let size = f.metadata().map_err(io_err(path))?.len();
    let mut chunks = Vec::with_capacity(chunk_count(size) as usize);
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        chunks.push(Hash::of(&buf[..n]));
    }
    Ok(FileEntry {
        path: name.to_owned(),
        size,
        chunks,
    })
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Checks that `path` is a file of the result-bundle layout (`task.json`, `commitment.json`,
/// `leaves.json`, `loss.json`, `checkpoints/NNNNNN.st`, `items/NNNNNN.bin`,
/// `steps/NNNNNN.json`, `outputs/weights.st`), so a peer can never name a file elsewhere.
pub fn check_bundle_path(path: &str) -> Result<(), TransferError> {
    let ok = match path.split_once('/') {
        None => matches!(
            path,
            "task.json" | "commitment.json" | "leaves.json" | "loss.json"
        ),
        Some(("outputs", "weights.st")) => true,
        Some((dir, file)) => {
            let ext = match dir {
                "checkpoints" => ".st",
                "items" => ".bin",
                "steps" => ".json",
                _ => return Err(TransferError::BadManifest(format!("no such path {path:?}"))),
            };
            file.strip_suffix(ext)
                .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(TransferError::BadManifest(format!("no such path {path:?}")))
    }
}

/// An upper bound of the bytes of the `done` request that reports a bundle of `shape`: its
/// manifest (per file, a path, a size and one quoted hex hash per chunk) and its commitment
/// (one quoted hex hash per output, one number per loss, and the rest). A node refuses at post a
/// task whose report cannot fit [`crate::wire::MAX_HEADER_BYTES`]: its worker could never
/// deliver it.
pub fn done_header_bound(shape: &market_compute::resources::BundleShape) -> u64 {
    const PER_FILE: u64 = 96;
    const PER_HASH: u64 = 67;
    const PER_LOSS: u64 = 12;
    const FIXED: u64 = 4096;
    let chunks: u64 = shape
        .files
        .iter()
        .map(|size| chunk_count(*size).max(1))
        .sum();
    FIXED
        + PER_FILE * shape.files.len() as u64
        + PER_HASH * (chunks + shape.outputs)
        + PER_LOSS * shape.losses
}

/// Checks a manifest received from a peer against the limits and the bundle layout.
pub fn check_manifest(m: &Manifest) -> Result<(), TransferError> {
    if m.files.len() > MAX_MANIFEST_FILES {
        return Err(TransferError::BadManifest(format!(
            "{} files, over the limit of {MAX_MANIFEST_FILES}",
            m.files.len()
        )));
    }
    for f in &m.files {
        check_bundle_path(&f.path)?;
        check_entry(f)?;
    }
    Ok(())
}

fn check_entry(f: &FileEntry) -> Result<(), TransferError> {
    if f.size > MAX_FILE_BYTES || chunk_count(f.size) != f.chunks.len() as u64 {
        return Err(TransferError::BadManifest(format!(
            "{}: {} bytes in {} chunks",
            f.path,
            f.size,
            f.chunks.len()
        )));
    }
    Ok(())
}

/// The manifest of every file in the bundle directory `root`.
pub fn bundle_manifest(root: &Path) -> Result<Manifest, TransferError> {
    let mut names = Vec::new();
    for top in ["task.json", "commitment.json", "leaves.json", "loss.json"] {
        if root.join(top).is_file() {
            names.push(top.to_owned());
        }
    }
    for dir in ["checkpoints", "items", "steps", "outputs"] {
        let d = root.join(dir);
        let Ok(read) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<String> = read
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|f| format!("{dir}/{f}"))
            .filter(|p| check_bundle_path(p).is_ok())
            .collect();
        files.sort();
        names.extend(files);
    }
    let files = names
        .iter()
        .map(|n| describe_file(&root.join(n), n))
        .collect::<Result<_, _>>()?;
    Ok(Manifest { files })
}

/// Reads chunk `chunk` of `path` (for answering a [`Request::Fetch`]).
pub fn read_chunk(path: &Path, chunk: u32) -> Result<Vec<u8>, TransferError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let size = f.metadata().map_err(io_err(path))?.len();
    let offset = u64::from(chunk) * u64::from(CHUNK_BYTES);
    if offset >= size && !(size == 0 && chunk == 0) {
        return Err(TransferError::Refused(format!("no chunk {chunk}")));
    }
    f.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let len = (size - offset).min(u64::from(CHUNK_BYTES)) as usize;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// The reply to a fetch of `path`'s chunk.
pub fn chunk_reply(path: &Path, chunk: u32) -> Reply {
    match read_chunk(path, chunk) {
        Ok(payload) => Reply {
            response: Response::Chunk,
            payload,
        },
        Err(e) => Reply::refused(public_reason(&e)),
    }
}

/// The reply to a describe of `path`.
pub fn describe_reply(path: &Path, name: &str) -> Reply {
    match describe_file(path, name) {
        Ok(entry) => Reply::of(Response::File { entry }),
        Err(e) => Reply::refused(public_reason(&e)),
    }
}

/// Why a file cannot be served, as told to the peer: the kind of failure, never the local
/// path it happened at (a peer has no business knowing the server's directory layout).
fn public_reason(e: &TransferError) -> String {
    match e {
        TransferError::Io { source, .. } => format!("cannot read the file: {}", source.kind()),
        other => other.to_string(),
    }
}

/// How often a chunk is fetched again after failing its hash check.
pub const CHUNK_RETRIES: u32 = 3;

/// Asks `peer` for the entry of `source`.
pub async fn describe(net: &Net, peer: PeerId, source: Source) -> Result<FileEntry, TransferError> {
    match net
        .request(peer, Request::Describe { source })
        .await?
        .response
    {
        Response::File { entry } => {
            check_entry(&entry)?;
            Ok(entry)
        }
        Response::Refused { reason } => Err(TransferError::Refused(reason)),
        other => Err(TransferError::Refused(format!(
            "unexpected reply {other:?}"
        ))),
    }
}

/// Fetches `source` (described by `entry`) from `peer` into `dest`, chunk by chunk, checking
/// each chunk's hash as it arrives and keeping the chunks already on disk that match.
pub async fn fetch_file(
    net: &Net,
    peer: PeerId,
    source: &Source,
    entry: &FileEntry,
    dest: &Path,
) -> Result<FetchStats, TransferError> {
    check_entry(entry)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)
        .map_err(io_err(dest))?;
    let on_disk = file.metadata().map_err(io_err(dest))?.len();
    let mut stats = FetchStats::default();
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    let mut todo = Vec::new();
    for (i, want) in entry.chunks.iter().enumerate() {
        let i = i as u32;
        let (offset, len) = chunk_span(entry, i);
        if offset + len as u64 <= on_disk {
            file.seek(SeekFrom::Start(offset)).map_err(io_err(dest))?;
            file.read_exact(&mut buf[..len]).map_err(io_err(dest))?;
            if Hash::of(&buf[..len]) == *want {
                stats.kept_chunks += 1;
                continue;
            }
        }
        todo.push(i);
    }
    // Several chunks in flight, so the sender reads and encrypts while this side decrypts,
    // hashes and writes; chunks are written in order as they complete.
    let mut arriving = futures_util::stream::iter(
        todo.into_iter()
            .map(|i| fetch_chunk(net, peer, source, entry, i)),
    )
    .buffered(CHUNKS_IN_FLIGHT);
    while let Some(arrived) = arriving.next().await {
        let (i, bytes, fetch_stats) = arrived?;
        stats += fetch_stats;
        file.seek(SeekFrom::Start(chunk_span(entry, i).0))
            .map_err(io_err(dest))?;
        file.write_all(&bytes).map_err(io_err(dest))?;
    }
    file.set_len(entry.size).map_err(io_err(dest))?;
    file.sync_all().map_err(io_err(dest))?;
    Ok(stats)
}

/// Chunk requests kept in flight by one transfer.
pub const CHUNKS_IN_FLIGHT: usize = 4;

fn chunk_span(entry: &FileEntry, i: u32) -> (u64, usize) {
    let offset = u64::from(i) * u64::from(CHUNK_BYTES);
    (
        offset,
        (entry.size - offset).min(u64::from(CHUNK_BYTES)) as usize,
    )
}

/// Fetches chunk `i`, again while it fails its hash check (up to [`CHUNK_RETRIES`] times).
async fn fetch_chunk(
    net: &Net,
    peer: PeerId,
    source: &Source,
    entry: &FileEntry,
    i: u32,
) -> Result<(u32, Vec<u8>, FetchStats), TransferError> {
    let want = entry.chunks[i as usize];
    let len = chunk_span(entry, i).1;
    let mut stats = FetchStats::default();
    let mut tries = 0;
    loop {
        let reply = net
            .request(
                peer,
                Request::Fetch {
                    source: source.clone(),
                    chunk: i,
                },
            )
            .await?;
        match reply.response {
            Response::Chunk => {}
            Response::Refused { reason } => return Err(TransferError::Refused(reason)),
            other => {
                return Err(TransferError::Refused(format!(
                    "unexpected reply {other:?}"
                )))
            }
        }
        stats.received += reply.payload.len() as u64;
        if reply.payload.len() == len && Hash::of(&reply.payload) == want {
            return Ok((i, reply.payload, stats));
        }
        tries += 1;
        stats.corrupt_chunks += 1;
        tracing::warn!(%peer, path = %entry.path, chunk = i, tries, "chunk failed its hash check; fetching it again");
        if tries >= CHUNK_RETRIES {
            return Err(TransferError::Corrupt {
                path: entry.path.clone(),
                chunk: i,
                tries,
            });
        }
    }
}

/// Fetches the files of `manifest` accepted by `wanted` from `peer` into the directory `root`.
pub async fn fetch_bundle(
    net: &Net,
    peer: PeerId,
    task_id: market_protocol::TaskId,
    job: u64,
    manifest: &Manifest,
    root: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<FetchStats, TransferError> {
    check_manifest(manifest)?;
    let mut stats = FetchStats::default();
    for entry in manifest.files.iter().filter(|f| wanted(&f.path)) {
        let source = Source::Bundle {
            task_id,
            job,
            path: entry.path.clone(),
        };
        stats += fetch_file(net, peer, &source, entry, &root.join(&entry.path)).await?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_the_bundle_layout_are_accepted() {
        for ok in [
            "task.json",
            "commitment.json",
            "leaves.json",
            "loss.json",
            "checkpoints/000000.st",
            "checkpoints/123456.st",
            "items/000007.bin",
            "steps/000003.json",
            "outputs/weights.st",
        ] {
            assert!(check_bundle_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../task.json",
            "checkpoints/../../x.st",
            "checkpoints/00001.st",
            "checkpoints/0000001.st",
            "checkpoints/00000a.st",
            "checkpoints/000001.bin",
            "checkpoints/000001.st/x",
            "items/000001.bin/../../k",
            "outputs/other.st",
            "keys/operator.key",
            "TASK.json",
            "task.json\0",
        ] {
            assert!(check_bundle_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifests_must_describe_their_chunks_and_stay_within_limits() {
        let entry = |size: u64, chunks: usize| FileEntry {
            path: "leaves.json".into(),
            size,
            chunks: vec![Hash::of(b"x"); chunks],
        };
        let ok = |files| check_manifest(&Manifest { files }).is_ok();
        assert!(ok(vec![entry(0, 0)]));
        assert!(ok(vec![entry(u64::from(CHUNK_BYTES), 1)]));
        assert!(ok(vec![entry(u64::from(CHUNK_BYTES) + 1, 2)]));
        assert!(
            !ok(vec![entry(u64::from(CHUNK_BYTES) + 1, 1)]),
            "too few chunk hashes"
        );
        assert!(!ok(vec![entry(10, 2)]), "too many chunk hashes");
        let huge = MAX_FILE_BYTES + 1;
        assert!(
            !ok(vec![entry(huge, chunk_count(huge) as usize)]),
            "file too big"
        );
        let mut far = entry(0, 0);
        far.path = "../leaves.json".into();
        assert!(!ok(vec![far]));
    }
}
