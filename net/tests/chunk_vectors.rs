//! Checks the transfer's chunk hashes and entry roots against `spec/vectors/chunks.json`
//! (`NETWORK.md` section 10), the same vectors `spec/reference/check_vectors.py` recomputes
//! with a BLAKE3 of its own.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use market_net::transfer::{chunk_hash, entry_root};
use market_net::wire::{FileEntry, CHUNK_BYTES};
use market_protocol::Hash;

#[test]
fn chunk_hashes_and_roots_match_the_spec_vectors() {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors/chunks.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 10);
    for v in vectors {
        let size = v["size"].as_u64().unwrap();
        let want: Vec<Hash> = serde_json::from_value(v["chunks"].clone()).unwrap();
        let root: Hash = serde_json::from_value(v["root"].clone()).unwrap();
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Hash> = bytes
            .chunks(CHUNK_BYTES as usize)
            .enumerate()
            .map(|(i, c)| chunk_hash(size, i as u32, c))
            .collect();
        assert_eq!(chunks, want, "chunk hashes of {size} bytes");
        let entry = FileEntry {
            path: "f".into(),
            size,
            chunks,
        };
        assert_eq!(entry_root(&entry).unwrap(), root, "root of {size} bytes");
        assert_eq!(root, Hash::of(&bytes), "the root is the file's blake3");
    }
}
