//! BLAKE3 Merkle trees over the symbols of an expanded sliver, with proofs.
//!
//! Domain separation uses BLAKE3's keyed mode with one fixed 32-byte key per
//! use (leaf, inner node, empty padding, sliver pair, blob root, blob id), so
//! a leaf can never be read as an inner node. A tree over `m` leaves is padded
//! to the next power of two with the empty hash; a proof is the list of
//! sibling hashes from the leaf up.

use crate::codec::config::HASH_LEN;
use crate::codec::hash_many;

/// A 32-byte BLAKE3 hash.
pub type Hash = [u8; HASH_LEN];

const LEAF_KEY: &[u8; 32] = b"redstuff.v1.merkle.leaf.........";
const NODE_KEY: &[u8; 32] = b"redstuff.v1.merkle.node.........";
const EMPTY_KEY: &[u8; 32] = b"redstuff.v1.merkle.empty........";
const PAIR_KEY: &[u8; 32] = b"redstuff.v1.sliver.pair.........";
const BLOB_ID_KEY: &[u8; 32] = b"redstuff.v1.blob.id.............";

/// Hash of one symbol, a leaf of a sliver tree.
pub fn leaf_hash(symbol: &[u8]) -> Hash {
    *blake3::keyed_hash(LEAF_KEY, symbol).as_bytes()
}

/// A hasher giving [`leaf_hash`] of what it is fed, for a symbol that
/// arrives in pieces.
pub fn leaf_hasher() -> blake3::Hasher {
    blake3::Hasher::new_keyed(LEAF_KEY)
}

/// Leaf hashes of the symbols of `data`, `symbol_size` bytes each, many at
/// a time: `out[i]` is `leaf_hash` of symbol i.
pub fn leaf_hashes(data: &[u8], symbol_size: usize, out: &mut [Hash]) {
    hash_many::keyed_hash_each(LEAF_KEY, data, symbol_size, out);
}

/// The level above `level` (of even length): the node hash of each pair.
fn parent_level(level: &[Hash]) -> Vec<Hash> {
    let mut parents = vec![[0u8; HASH_LEN]; level.len() / 2];
    hash_many::keyed_hash_each(NODE_KEY, level.as_flattened(), 2 * HASH_LEN, &mut parents);
    parents
}

/// Hash of an inner node from its two children.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 2 * HASH_LEN];
    buf[..HASH_LEN].copy_from_slice(left);
    buf[HASH_LEN..].copy_from_slice(right);
    *blake3::keyed_hash(NODE_KEY, &buf).as_bytes()
}

/// The hash standing in for missing leaves of a tree padded to a power of two.
pub fn empty_hash() -> Hash {
    *blake3::keyed_hash(EMPTY_KEY, &[]).as_bytes()
}

/// Leaf of the blob tree for sliver pair i: `H(primary hash || secondary hash)`.
pub fn pair_hash(primary: &Hash, secondary: &Hash) -> Hash {
    let mut buf = [0u8; 2 * HASH_LEN];
    buf[..HASH_LEN].copy_from_slice(primary);
    buf[HASH_LEN..].copy_from_slice(secondary);
    *blake3::keyed_hash(PAIR_KEY, &buf).as_bytes()
}

/// Blob id from the encoding parameters and the root over segment roots.
pub fn blob_id_hash(params: &[u8], root: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new_keyed(BLOB_ID_KEY);
    hasher.update(params);
    hasher.update(root);
    *hasher.finalize().as_bytes()
}

/// Number of levels above the leaves for `leaves` leaves: the proof length.
pub fn proof_len(leaves: usize) -> usize {
    leaves.max(1).next_power_of_two().trailing_zeros() as usize
}

/// Root of the tree over `leaves` (at least one).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut level = leaves.to_vec();
    let empty = empty_hash();
    let width = leaves.len().max(1).next_power_of_two();
    level.resize(width, empty);
    while level.len() > 1 {
        level = parent_level(&level);
    }
    level[0]
}

/// Root of the tree whose leaves are produced by `leaf(i)` for `i < count`,
/// without collecting them first.
pub fn root_of(count: usize, leaf: impl Fn(usize) -> Hash) -> Hash {
    let leaves: Vec<Hash> = (0..count).map(leaf).collect();
    root(&leaves)
}

/// A whole tree, kept to answer proofs for any leaf.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// levels[0] are the padded leaves; the last level is the root alone.
    levels: Vec<Vec<Hash>>,
    leaves: usize,
}

impl MerkleTree {
    /// Builds the tree over `leaves` (at least one).
    pub fn new(leaves: Vec<Hash>) -> Self {
        let count = leaves.len();
        let width = count.max(1).next_power_of_two();
        let mut level = leaves;
        level.resize(width, empty_hash());
        let mut levels = vec![level];
        while levels.last().map_or(0, Vec::len) > 1 {
            let next = parent_level(levels.last().expect("at least one level"));
            levels.push(next);
        }
        Self {
            levels,
            leaves: count,
        }
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.levels.last().expect("at least one level")[0]
    }

    /// Sibling hashes from leaf `index` up to the root; `None` past the leaves.
    pub fn proof(&self, index: usize) -> Option<Vec<Hash>> {
        if index >= self.leaves {
            return None;
        }
        let mut position = index;
        let mut path = Vec::with_capacity(self.levels.len() - 1);
        for level in &self.levels[..self.levels.len() - 1] {
            path.push(level[position ^ 1]);
            position /= 2;
        }
        Some(path)
    }
}

/// Checks that `leaf` sits at `index` of a tree over `leaves` leaves whose
/// root is `root`, by the sibling path `proof`.
pub fn verify_proof(root: &Hash, leaves: usize, index: usize, leaf: &Hash, proof: &[Hash]) -> bool {
    if index >= leaves || proof.len() != proof_len(leaves) {
        return false;
    }
    let mut position = index;
    let mut hash = *leaf;
    for sibling in proof {
        hash = if position & 1 == 0 {
            node_hash(&hash, sibling)
        } else {
            node_hash(sibling, &hash)
        };
        position /= 2;
    }
    hash == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(count: usize) -> Vec<Hash> {
        (0..count).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn root_of_the_tree_and_of_the_plain_function_agree() {
        for count in [1, 2, 3, 4, 5, 7, 8, 9, 100, 1000] {
            let l = leaves(count);
            assert_eq!(
                MerkleTree::new(l.clone()).root(),
                root(&l),
                "{count} leaves"
            );
            assert_eq!(root_of(count, |i| l[i]), root(&l));
        }
    }

    #[test]
    fn every_leaf_has_a_proof_that_verifies() {
        for count in [1, 2, 3, 7, 8, 13, 64, 100] {
            let l = leaves(count);
            let tree = MerkleTree::new(l.clone());
            for (i, leaf) in l.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                assert_eq!(proof.len(), proof_len(count));
                assert!(verify_proof(&tree.root(), count, i, leaf, &proof));
            }
            assert!(tree.proof(count).is_none());
        }
    }

    #[test]
    fn a_proof_fails_for_another_leaf_index_or_any_flipped_bit() {
        let l = leaves(13);
        let tree = MerkleTree::new(l.clone());
        let proof = tree.proof(5).unwrap();
        let r = tree.root();
        assert!(!verify_proof(&r, 13, 6, &l[5], &proof));
        assert!(!verify_proof(&r, 13, 5, &l[6], &proof));
        assert!(!verify_proof(&r, 13, 13, &l[5], &proof));
        assert!(!verify_proof(&r, 13, 5, &l[5], &proof[1..]));
        for level in 0..proof.len() {
            for bit in [0, 77, 255] {
                let mut bad = proof.clone();
                bad[level][bit / 8] ^= 1 << (bit % 8);
                assert!(!verify_proof(&r, 13, 5, &l[5], &bad));
            }
        }
        let mut bad_root = r;
        bad_root[0] ^= 1;
        assert!(!verify_proof(&bad_root, 13, 5, &l[5], &proof));
    }

    #[test]
    fn leaves_and_nodes_hashed_many_at_a_time_equal_those_hashed_one_by_one() {
        for (count, size) in [(1, 302), (17, 302), (40, 64), (33, 1), (5, 4096)] {
            let data: Vec<u8> = (0..count * size).map(|i| (i * 7 + count) as u8).collect();
            let mut many = vec![[0u8; 32]; count];
            leaf_hashes(&data, size, &mut many);
            let one_by_one: Vec<Hash> = data.chunks_exact(size).map(leaf_hash).collect();
            assert_eq!(many, one_by_one, "{count} symbols of {size} bytes");
            let mut level = one_by_one;
            level.resize(count.next_power_of_two(), empty_hash());
            while level.len() > 1 {
                level = level
                    .chunks_exact(2)
                    .map(|p| node_hash(&p[0], &p[1]))
                    .collect();
            }
            assert_eq!(root(&many), level[0], "{count} leaves");
        }
    }

    #[test]
    fn domains_are_separated() {
        let a = leaf_hash(b"x");
        let b = leaf_hash(b"x");
        assert_eq!(a, b);
        assert_ne!(node_hash(&a, &b), pair_hash(&a, &b));
        let mut joined = a.to_vec();
        joined.extend_from_slice(&b);
        assert_ne!(leaf_hash(&joined), node_hash(&a, &b));
        assert_ne!(empty_hash(), leaf_hash(&[]));
    }
}
