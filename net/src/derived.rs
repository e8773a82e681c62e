//! Work derived from blobs (a text dataset's tokens) kept on disk for the next job of the same
//! task: a pooled task's rounds, its audits, a node's own checks. Tokenizing a large text costs
//! minutes every time; reading the kept tokens back costs a second. Files are named by the key
//! and by this build (the blake3 of the running executable), so another build never reads
//! them; whoever reads them checks them (`market_compute::data::text::tokens_from_kept`), so a
//! holder trusts its own disk no further than that. Shared by a participant's blob cache
//! ([`crate::participant::DirBlobs`]) and the node's blob store.

use std::io::Read;
use std::path::Path;

use market_protocol::Hash;

/// The file name under which this build keeps what it derived under `key`; `None` when the
/// build cannot be told apart (its executable unreadable): then nothing is kept.
pub fn file_name(key: &Hash) -> Option<String> {
    let build = build_fingerprint()?;
    let name = Hash::of(&[build.as_bytes().as_slice(), key.as_bytes()].concat());
    Some(format!("{name}.derived"))
}

/// The bytes kept at `path`, if it is a plain file (no link followed) of at most `max_bytes`.
/// Reading marks the file used (its modification time), for least-recently-used eviction.
pub fn read(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > max_bytes {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let _ = file.set_modified(std::time::SystemTime::now());
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max_bytes).then_some(bytes)
}

/// Keeps `bytes` at `path`: written to a part file of its own and renamed into place, so two
/// jobs keeping the same bytes at once do not interleave and a reader sees a whole file or
/// none. Best effort: a failure is logged and the part file removed.
pub fn write(path: &Path, bytes: &[u8]) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let part = path.with_extension(format!("derived.{}.{n}.part", std::process::id()));
    let kept = std::fs::write(&part, bytes).and_then(|()| std::fs::rename(&part, path));
    if let Err(e) = kept {
        let _ = std::fs::remove_file(&part);
        tracing::debug!(path = %path.display(), error = %e, "derived bytes not kept");
    }
}

/// This build: the blake3 of the running executable, read once; `None` when it cannot be read.
fn build_fingerprint() -> Option<Hash> {
    static BUILD: std::sync::OnceLock<Option<Hash>> = std::sync::OnceLock::new();
    *BUILD.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut std::fs::File::open(exe).ok()?, &mut hasher).ok()?;
        Some(Hash(*hasher.finalize().as_bytes()))
    })
}
