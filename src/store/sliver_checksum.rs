//! The checksum of a sliver file, derived from the leaf hashes of its
//! symbols (store format 3).
//!
//! A node verifies every sliver it is sent by hashing each of its symbols
//! (the leaves of the sliver's Merkle tree). Hashing the whole file a
//! second time for its checksum would repeat that work, so the checksum
//! of a sliver file is instead the hash of its header and those leaf
//! hashes: the writer passes the leaves it already has, a reader hashes
//! the symbols once to check it. It catches what a plain hash of the file
//! catches (any changed byte changes a leaf, and so the checksum).

use crate::codec::format::{self, SLIVER_OVERHEAD};
use crate::codec::merkle::{self, Hash};

/// Domain of derived sliver checksums: never equal to a plain BLAKE3 of a
/// file (store format 2), which is unkeyed.
const KEY: &[u8; 32] = b"redstuff.store.v3.sliver.file...";

/// The leaf hashes of a sliver's own symbols, in order, as the codec
/// computes them while checking the sliver against its hash.
#[derive(Debug, Clone, Copy)]
pub struct SymbolLeaves<'a>(pub &'a [Hash]);

/// The derived checksum of a serialized sliver (`header` followed by
/// symbols whose leaf hashes are `leaves`).
fn from_leaves(header: &[u8], leaves: SymbolLeaves<'_>) -> Hash {
    let mut hasher = blake3::Hasher::new_keyed(KEY);
    hasher.update(header);
    hasher.update(leaves.0.as_flattened());
    *hasher.finalize().as_bytes()
}

/// The derived checksum of `content`, a serialized sliver, computed from
/// its bytes; `None` when it is no sliver (too short, or its data is not
/// whole symbols).
pub(super) fn of_content(content: &[u8]) -> Option<Hash> {
    of_sliver(content, None)
}

/// The derived checksum of `content`, from the leaf hashes of its symbols
/// when the caller has them, else computed from its bytes; `None` when it
/// is no sliver.
pub(super) fn of_sliver(content: &[u8], leaves: Option<SymbolLeaves<'_>>) -> Option<Hash> {
    let symbol_size = format::sliver_symbol_size(content)?;
    let (header, data) = content.split_at(SLIVER_OVERHEAD);
    if symbol_size == 0 || !data.len().is_multiple_of(symbol_size) {
        return None;
    }
    if let Some(leaves) = leaves {
        let derived = from_leaves(header, leaves);
        debug_assert_eq!(
            Some(derived),
            of_content(content),
            "the caller's leaves are the sliver's"
        );
        return Some(derived);
    }
    let mut leaves = vec![[0u8; 32]; data.len() / symbol_size];
    merkle::leaf_hashes(data, symbol_size, &mut leaves);
    Some(from_leaves(header, SymbolLeaves(&leaves)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_segment, EncodingConfig};

    fn sliver_file() -> (Vec<u8>, Vec<Hash>) {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let segment = encode_segment(EncodingConfig::new(7).unwrap(), 0, &data);
        let sliver = &segment.primary[3];
        let mut leaves = vec![[0u8; 32]; sliver.data().len() / sliver.symbol_size()];
        merkle::leaf_hashes(sliver.data(), sliver.symbol_size(), &mut leaves);
        (sliver.to_bytes(), leaves)
    }

    #[test]
    fn the_checksum_from_a_verifiers_leaves_is_the_one_a_reader_computes_from_the_bytes() {
        let (file, leaves) = sliver_file();
        let derived = from_leaves(&file[..SLIVER_OVERHEAD], SymbolLeaves(&leaves));
        assert_eq!(of_content(&file), Some(derived));
        assert_ne!(derived, *blake3::hash(&file).as_bytes());
    }

    #[test]
    fn any_changed_byte_of_header_or_symbols_changes_the_checksum() {
        let (file, _) = sliver_file();
        let original = of_content(&file).unwrap();
        for at in [
            0,
            7,
            SLIVER_OVERHEAD - 1,
            SLIVER_OVERHEAD,
            file.len() / 2,
            file.len() - 1,
        ] {
            let mut changed = file.clone();
            changed[at] ^= 0x20;
            assert_ne!(of_content(&changed), Some(original), "byte {at} changed");
        }
    }

    #[test]
    fn what_is_no_sliver_has_no_derived_checksum() {
        let (file, _) = sliver_file();
        assert_eq!(of_content(b"metadata or a marker"), None);
        assert_eq!(of_content(&file[..SLIVER_OVERHEAD - 1]), None);
        assert_eq!(of_content(&file[..file.len() - 1]), None);
    }
}
