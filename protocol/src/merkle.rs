//! Merkle trees over blake3, built as in RFC 6962 / RFC 9162 with blake3 in place of SHA-256.
//!
//! A leaf hashes as `blake3(0x00 || leaf)` and an inner node as `blake3(0x01 || left || right)`,
//! so a leaf can never be passed off as a node. A tree of `n > 1` leaves splits at the largest
//! power of two below `n`. Inclusion proofs are the audit paths of RFC 9162 section 2.1.3.

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// The most leaves a tree may have (and so the largest `tree_size` a proof may claim).
pub const MAX_LEAVES: u64 = 1 << 32;

/// Why an inclusion proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    /// The tree claims more than [`MAX_LEAVES`] leaves.
    #[error("tree size {0} is over the limit")]
    TreeTooLarge(u64),
    /// The path is longer or shorter than the tree's shape requires.
    #[error("proof path has the wrong length for its position")]
    PathLength,
    /// The path leads to another root.
    #[error("proof does not lead to the committed root")]
    RootMismatch,
    /// The proof is for another position than the one claimed.
    #[error("proof is for another leaf or tree size than claimed")]
    WrongPosition,
}

/// `blake3(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(data);
    h.finalize().into()
}

/// `blake3(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left.as_bytes());
    h.update(right.as_bytes());
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root over already-hashed leaves (RFC 6962 MTH, with the empty tree hashing to blake3("")).
fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Hash::of(b""),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
        }
    }
}

/// A Merkle tree over leaves held in memory, for building roots and proofs.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    leaves: Vec<Hash>,
    root: Hash,
}

impl MerkleTree {
    /// Builds the tree over the given leaf data (each leaf is hashed with the leaf prefix).
    pub fn new<L: AsRef<[u8]>>(leaves: &[L]) -> Self {
        let leaves: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
        let root = subtree_root(&leaves);
        Self { leaves, root }
    }

    /// The root.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The inclusion proof of leaf `index`, or `None` if out of range.
    pub fn proof(&self, index: u64) -> Option<MerkleProof> {
        if index >= self.len() {
            return None;
        }
        let mut path = Vec::new();
        audit_path(index as usize, &self.leaves, &mut path);
        Some(MerkleProof {
            leaf_index: index,
            tree_size: self.len(),
            path,
        })
    }
}

/// RFC 6962 PATH(m, D[n]), leaf-side sibling first.
fn audit_path(m: usize, leaves: &[Hash], path: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if m < k {
        audit_path(m, &leaves[..k], path);
        path.push(subtree_root(&leaves[k..]));
    } else {
        audit_path(m - k, &leaves[k..], path);
        path.push(subtree_root(&leaves[..k]));
    }
}

/// An inclusion proof: the leaf's position and the sibling hashes from the leaf up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerkleProof {
    /// Position of the leaf, from 0.
    pub leaf_index: u64,
    /// Leaves in the tree.
    pub tree_size: u64,
    /// Sibling hashes, nearest the leaf first.
    pub path: Vec<Hash>,
}

impl MerkleProof {
    /// Checks that `leaf` sits at `leaf_index` in the tree with `root` (RFC 9162 2.1.3.2).
    pub fn verify(&self, leaf: &[u8], root: &Hash) -> Result<(), MerkleError> {
        if self.tree_size > MAX_LEAVES {
            return Err(MerkleError::TreeTooLarge(self.tree_size));
        }
        if self.leaf_index >= self.tree_size {
            return Err(MerkleError::IndexOutOfRange {
                index: self.leaf_index,
                size: self.tree_size,
            });
        }
        // The longest valid path for MAX_LEAVES leaves has 32 entries.
        if self.path.len() > 64 {
            return Err(MerkleError::PathLength);
        }
        let mut f_n = self.leaf_index;
        let mut s_n = self.tree_size - 1;
        let mut r = leaf_hash(leaf);
        for p in &self.path {
            if s_n == 0 {
                return Err(MerkleError::PathLength);
            }
            if f_n & 1 == 1 || f_n == s_n {
                r = node_hash(p, &r);
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            } else {
                r = node_hash(&r, p);
            }
            f_n >>= 1;
            s_n >>= 1;
        }
        if s_n != 0 {
            return Err(MerkleError::PathLength);
        }
        if r != *root {
            return Err(MerkleError::RootMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_proves_in_trees_of_many_sizes() {
        for n in 1..=33u32 {
            let leaves: Vec<[u8; 4]> = (0..n).map(|i| i.to_le_bytes()).collect();
            let tree = MerkleTree::new(&leaves);
            for (i, leaf) in leaves.iter().enumerate() {
                let proof = tree.proof(i as u64).unwrap();
                proof.verify(leaf, &tree.root()).unwrap();
                assert!(proof.verify(b"other", &tree.root()).is_err());
            }
            assert!(tree.proof(u64::from(n)).is_none());
        }
    }

    #[test]
    fn shape_matches_rfc6962() {
        let leaves = [b"a", b"b", b"c"];
        let tree = MerkleTree::new(&leaves);
        let expected = node_hash(
            &node_hash(&leaf_hash(b"a"), &leaf_hash(b"b")),
            &leaf_hash(b"c"),
        );
        assert_eq!(tree.root(), expected);
    }
}
