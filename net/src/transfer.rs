//! Chunked file transfer: manifests of chunk hashes, serving chunks from disk, and fetching
//! with each chunk checked against its hash as it arrives. A fetch is resumable: chunks
//! already on disk that match their hash are kept, so an interrupted transfer goes on where it
//! stopped.
//!
//! A chunk's hash is its node in the file's own BLAKE3 tree ([`chunk_hash`]), so a manifest
//! entry combines into the file's blake3 hash without any of its bytes ([`entry_root`]): an
//! entry can be checked against a hash the receiver already trusts (a blob id, a committed
//! state) before anything is fetched, and then any chunk fetched alone is bound to that hash.

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
    /// Chunks copied from a local file that held them at the same place
    /// ([`fetch_file_reusing`]) instead of fetched.
    pub local_chunks: u32,
    /// Chunks that arrived corrupted and were fetched again.
    pub corrupt_chunks: u32,
}

impl std::ops::AddAssign for FetchStats {
    fn add_assign(&mut self, o: Self) {
        self.received += o.received;
        self.kept_chunks += o.kept_chunks;
        self.local_chunks += o.local_chunks;
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

/// The hash a manifest lists for chunk `i` (holding `bytes`) of a file of `size` bytes: for a
/// file of one chunk, the file's blake3 hash; otherwise the chunk's BLAKE3 chaining value as
/// the subtree at input offset `i × CHUNK_BYTES` of the file's tree (`NETWORK.md` section 10).
/// Every chunk but the last holds 2^20 bytes (1,024 BLAKE3 chunks) at a multiple of 2^20, so
/// each is a whole subtree of the file's tree and the chunk hashes combine into the file's
/// hash ([`entry_root`]).
///
/// `bytes` must be the chunk's whole length (1 to `CHUNK_BYTES`, as the entry's size gives it);
/// every caller checks the length before the hash. Other lengths are not a subtree at that
/// offset; they get their plain blake3 here instead of a panic in BLAKE3's tree code.
pub fn chunk_hash(size: u64, i: u32, bytes: &[u8]) -> Hash {
    use blake3::hazmat::HasherExt;
    if size <= u64::from(CHUNK_BYTES) || bytes.is_empty() || bytes.len() > CHUNK_BYTES as usize {
        return Hash::of(bytes);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(u64::from(i) * u64::from(CHUNK_BYTES));
    hasher.update(bytes);
    Hash(hasher.finalize_non_root())
}

/// The blake3 hash of the file `entry` describes, from its chunk hashes alone (checked
/// against the entry's limits first). Merges follow the BLAKE3 tree: a subtree of `len` bytes
/// splits at `left_subtree_len(len)`, which for any subtree longer than one chunk is a
/// multiple of `CHUNK_BYTES`.
pub fn entry_root(entry: &FileEntry) -> Result<Hash, TransferError> {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, Mode};
    fn subtree(chunks: &[Hash], len: u64) -> [u8; 32] {
        match chunks {
            [one] => one.0,
            _ => {
                let left = left_subtree_len(len);
                let n = (left / u64::from(CHUNK_BYTES)) as usize;
                merge_subtrees_non_root(
                    &subtree(&chunks[..n], left),
                    &subtree(&chunks[n..], len - left),
                    Mode::Hash,
                )
            }
        }
    }
    check_entry(entry)?;
    Ok(match entry.chunks.as_slice() {
        [] => Hash::of(b""),
        [one] => *one,
        chunks => {
            let left = left_subtree_len(entry.size);
            let n = (left / u64::from(CHUNK_BYTES)) as usize;
            Hash(
                *merge_subtrees_root(
                    &subtree(&chunks[..n], left),
                    &subtree(&chunks[n..], entry.size - left),
                    Mode::Hash,
                )
                .as_bytes(),
            )
        }
    })
}

/// Checks that `entry` describes the file whose blake3 hash is `want` (before fetching it):
/// refused as a bad manifest otherwise.
pub fn check_entry_root(entry: &FileEntry, want: &Hash) -> Result<(), TransferError> {
    let root = entry_root(entry)?;
    if root != *want {
        return Err(TransferError::BadManifest(format!(
            "{}: its chunks make {root}, not the expected {want}",
            entry.path
        )));
    }
    Ok(())
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
        chunks.push(chunk_hash(size, chunks.len() as u32, &buf[..n]));
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
    fetch_file_reusing(net, peer, source, entry, dest, &[]).await
}

/// [`fetch_file`], first copying every chunk that one of the files `local` holds at the same
/// offset with the same chunk hash (a pooled slot's next start shares its optimizer moments,
/// byte for byte and place for place, with the slot's last final state). A chunk hash is the
/// chunk's node in the file's tree, bound to its offset, so a copied chunk is exactly the one
/// the entry names; files that are missing or shorter are passed over.
pub async fn fetch_file_reusing(
    net: &Net,
    peer: PeerId,
    source: &Source,
    entry: &FileEntry,
    dest: &Path,
    local: &[PathBuf],
) -> Result<FetchStats, TransferError> {
    fetch_chunks(net, peer, source, entry, dest, local, 0).await
}

/// [`fetch_file`] of chunks `from_chunk..` only: `dest` gets the file's size, those chunks in
/// place, and whatever was there before (a hole, in a new file) elsewhere. A pooled slot's
/// final state holds its parameters in its last chunks (`market_compute::state::param_span`),
/// which is all the node needs of it while the slot's worker keeps the moments.
pub async fn fetch_file_tail(
    net: &Net,
    peer: PeerId,
    source: &Source,
    entry: &FileEntry,
    dest: &Path,
    from_chunk: u32,
) -> Result<FetchStats, TransferError> {
    fetch_chunks(net, peer, source, entry, dest, &[], from_chunk).await
}

/// The entry of the file that has `entry`'s chunks before `from_chunk` and `tail` (the file's
/// bytes from chunk `from_chunk` to its end) after: the hashes of the chunks before are kept,
/// those of the tail computed. `None` when the tail is not the length the entry gives it.
pub fn entry_with_tail(entry: &FileEntry, from_chunk: u32, tail: &[u8]) -> Option<FileEntry> {
    let offset = u64::from(from_chunk) * u64::from(CHUNK_BYTES);
    if offset + tail.len() as u64 != entry.size || from_chunk as usize > entry.chunks.len() {
        return None;
    }
    let mut chunks = entry.chunks[..from_chunk as usize].to_vec();
    for (k, bytes) in tail.chunks(CHUNK_BYTES as usize).enumerate() {
        chunks.push(chunk_hash(entry.size, from_chunk + k as u32, bytes));
    }
    Some(FileEntry {
        path: entry.path.clone(),
        size: entry.size,
        chunks,
    })
}

async fn fetch_chunks(
    net: &Net,
    peer: PeerId,
    source: &Source,
    entry: &FileEntry,
    dest: &Path,
    local: &[PathBuf],
    from_chunk: u32,
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
    let mut others: Vec<std::fs::File> = local
        .iter()
        .filter_map(|p| std::fs::File::open(p).ok())
        .collect();
    'chunks: for (i, want) in entry.chunks.iter().enumerate().skip(from_chunk as usize) {
        let i = i as u32;
        let (offset, len) = chunk_span(entry, i);
        if offset + len as u64 <= on_disk {
            file.seek(SeekFrom::Start(offset)).map_err(io_err(dest))?;
            file.read_exact(&mut buf[..len]).map_err(io_err(dest))?;
            if chunk_hash(entry.size, i, &buf[..len]) == *want {
                stats.kept_chunks += 1;
                continue;
            }
        }
        for other in &mut others {
            let held = other.seek(SeekFrom::Start(offset)).is_ok()
                && other.read_exact(&mut buf[..len]).is_ok()
                && chunk_hash(entry.size, i, &buf[..len]) == *want;
            if held {
                file.seek(SeekFrom::Start(offset)).map_err(io_err(dest))?;
                file.write_all(&buf[..len]).map_err(io_err(dest))?;
                stats.local_chunks += 1;
                continue 'chunks;
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
        if reply.payload.len() == len && chunk_hash(entry.size, i, &reply.payload) == want {
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

    /// Deterministic bytes that differ from chunk to chunk and within each.
    fn bytes_of(size: usize) -> Vec<u8> {
        (0..size)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn describe_bytes(bytes: &[u8]) -> FileEntry {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        describe_file(&path, "leaves.json").unwrap()
    }

    #[test]
    fn chunk_hashes_combine_into_the_files_blake3_hash() {
        let mib = CHUNK_BYTES as usize;
        for size in [
            0,
            1,
            1023,
            1024,
            1025,
            mib - 1,
            mib,
            mib + 1,
            2 * mib,
            2 * mib + 1,
            3 * mib + 7,
            4 * mib,
            5 * mib + 123_456,
            8 * mib + 1,
        ] {
            let bytes = bytes_of(size);
            let entry = describe_bytes(&bytes);
            assert_eq!(entry.chunks.len() as u64, chunk_count(size as u64));
            let whole = Hash::of(&bytes);
            assert_eq!(entry_root(&entry).unwrap(), whole, "{size} bytes");
            assert!(check_entry_root(&entry, &whole).is_ok());
            // Each chunk hash is the one a receiver computes from that chunk alone.
            for (i, want) in entry.chunks.iter().enumerate() {
                let start = i * mib;
                let end = (start + mib).min(size);
                assert_eq!(chunk_hash(size as u64, i as u32, &bytes[start..end]), *want);
            }
        }
    }

    #[test]
    fn a_manifest_that_does_not_make_the_expected_hash_is_refused_before_any_fetch() {
        let mib = CHUNK_BYTES as usize;
        let bytes = bytes_of(3 * mib + 5);
        let whole = Hash::of(&bytes);
        let entry = describe_bytes(&bytes);
        // One byte changed in the middle chunk: its hash, and so the root, changes.
        let mut other = bytes.clone();
        other[mib + 17] ^= 1;
        let changed = describe_bytes(&other);
        assert_eq!(changed.chunks[0], entry.chunks[0]);
        assert_ne!(changed.chunks[1], entry.chunks[1]);
        assert!(matches!(
            check_entry_root(&changed, &whole),
            Err(TransferError::BadManifest(_))
        ));
        // Chunks swapped: not the same file either.
        let mut swapped = entry.clone();
        swapped.chunks.swap(0, 1);
        assert!(check_entry_root(&swapped, &whole).is_err());
        // The root does not bind the size claimed for the last chunk; that chunk's hash does
        // (it covers its length), so no bytes of another length are ever accepted for it.
        let mut shorter = entry.clone();
        shorter.size -= 1;
        assert!(check_entry_root(&shorter, &whole).is_ok());
        let last = &bytes[3 * mib..];
        assert_eq!(chunk_hash(entry.size, 3, last), entry.chunks[3]);
        assert_ne!(
            chunk_hash(shorter.size, 3, &last[..last.len() - 1]),
            entry.chunks[3]
        );
        // A chunk's hash depends on where it stands: the same bytes elsewhere hash otherwise,
        // so a chunk cannot be served in another's place.
        let same = vec![7u8; 2 * mib];
        let e = describe_bytes(&same);
        assert_ne!(e.chunks[0], e.chunks[1]);
        // A one-chunk file's hash is the file's own blake3.
        let small = bytes_of(100);
        assert_eq!(describe_bytes(&small).chunks, vec![Hash::of(&small)]);
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
