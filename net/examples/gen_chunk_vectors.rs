//! Writes `spec/vectors/chunks.json`: manifest entries (chunk hashes and the file's blake3 root)
//! for files whose byte `i` is `i mod 251`, at sizes around the chunk and tree boundaries
//! (`NETWORK.md` section 10). Regenerate only for a deliberate protocol change:
//!
//!   cargo run -p market-net --example gen_chunk_vectors -- spec/vectors

use market_net::transfer::{chunk_hash, entry_root};
use market_net::wire::{FileEntry, CHUNK_BYTES};

/// The sizes the vectors cover: empty, one BLAKE3 chunk and around it, one transfer chunk and
/// around it, and files of 3, 6 and 9 transfer chunks (trees that are not perfect).
const SIZES: [u64; 10] = [
    0,
    1,
    1024,
    1025,
    1 << 20,
    (1 << 20) + 1,
    (3 << 20) + 7,
    (5 << 20) + 123_456,
    (8 << 20) + 1,
    9 << 20,
];

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: gen_chunk_vectors DIR"))?;
    let mut vectors = Vec::new();
    for size in SIZES {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let chunks = bytes
            .chunks(CHUNK_BYTES as usize)
            .enumerate()
            .map(|(i, c)| chunk_hash(size, i as u32, c))
            .collect();
        let entry = FileEntry {
            path: "f".into(),
            size,
            chunks,
        };
        let root = entry_root(&entry)?;
        anyhow::ensure!(root.0 == *blake3::hash(&bytes).as_bytes(), "root of {size}");
        vectors.push(serde_json::json!({
            "size": size,
            "chunks": entry.chunks,
            "root": root,
        }));
    }
    let doc = serde_json::json!({
        "description": "Chunk hashes of manifest entries (NETWORK.md section 10) and the root they combine into, the file's blake3 hash. The file of each vector has `size` bytes, byte i being i mod 251.",
        "vectors": vectors,
    });
    let path = std::path::Path::new(&dir).join("chunks.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
