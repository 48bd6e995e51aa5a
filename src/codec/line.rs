//! One line of the expanded matrix E: a sliver extended along its own
//! axis to all n symbols, the leaf hashes of those symbols, and the sliver
//! hash (their Merkle root). Used by the encoder, by sliver verification
//! and by the peers serving recovery symbols.

use rayon::prelude::*;

use crate::codec::config::EncodingConfig;
use crate::codec::error::VerifyError;
use crate::codec::merkle::{self, Hash};
use crate::codec::metadata::BlobMetadata;
use crate::codec::rs;
use crate::codec::sliver::{Axis, Sliver};

/// Symbols below this size are hashed in batches per thread, not one task each.
const PARALLEL_HASH_MIN_SYMBOLS: usize = 64;

/// The `n - k` recovery symbols that extend a line with `k` source symbols
/// (`data`, back to back, of `symbol_size` bytes each) to n symbols.
pub fn extend(config: &EncodingConfig, data: &[u8], symbol_size: usize) -> Vec<u8> {
    let k = data.len() / symbol_size;
    let mut out = vec![0u8; (config.n() - k) * symbol_size];
    extend_into(data, symbol_size, &mut out);
    out
}

/// Like [`extend`], writing the recovery symbols into `out`, whose length
/// says how many there are.
pub fn extend_into(data: &[u8], symbol_size: usize, out: &mut [u8]) {
    let originals: Vec<&[u8]> = data.chunks_exact(symbol_size).collect();
    rs::encode_recovery(&originals, out.len() / symbol_size, out);
}

/// Leaf hashes of the n symbols of a line: the sources, then the extension.
pub fn leaves_into(source: &[u8], extension: &[u8], symbol_size: usize, out: &mut [Hash]) {
    let k = source.len() / symbol_size;
    let (head, tail) = out.split_at_mut(k);
    hash_symbols(source, symbol_size, head);
    hash_symbols(extension, symbol_size, tail);
}

fn hash_symbols(data: &[u8], symbol_size: usize, out: &mut [Hash]) {
    let chunk = (PARALLEL_HASH_MIN_SYMBOLS * 4096 / symbol_size).max(1);
    out.par_chunks_mut(chunk)
        .zip(data.par_chunks(chunk * symbol_size))
        .for_each(|(hashes, symbols)| {
            merkle::leaf_hashes(symbols, symbol_size, hashes);
        });
}

/// Leaf hashes of the whole expanded sliver, and its extension symbols.
pub fn expanded_leaves<A: Axis>(sliver: &Sliver<A>) -> (Vec<Hash>, Vec<u8>) {
    let config = sliver.config();
    let extension = extend(&config, sliver.data(), sliver.symbol_size());
    let mut leaves = vec![[0u8; 32]; config.n()];
    leaves_into(sliver.data(), &extension, sliver.symbol_size(), &mut leaves);
    (leaves, extension)
}

/// The hash a sliver commits to: the Merkle root over its expanded line.
pub fn sliver_hash<A: Axis>(sliver: &Sliver<A>) -> Hash {
    line_hash(&sliver.config(), sliver.data(), sliver.symbol_size())
}

/// The hash of a line of `data` (its source symbols, back to back, of
/// `symbol_size` bytes each) extended to `config.n()` symbols: what
/// [`sliver_hash`] gives for a sliver holding `data`.
pub fn line_hash(config: &EncodingConfig, data: &[u8], symbol_size: usize) -> Hash {
    let extension = extend(config, data, symbol_size);
    let mut leaves = vec![[0u8; 32]; config.n()];
    leaves_into(data, &extension, symbol_size, &mut leaves);
    merkle::root(&leaves)
}

/// Checks a sliver against the blob metadata: its shape, then its hash.
pub fn verify_sliver<A: Axis>(
    metadata: &BlobMetadata,
    sliver: &Sliver<A>,
) -> Result<(), VerifyError> {
    let segment = sliver.segment();
    let layout = metadata.segment_layout(segment).ok_or_else(|| {
        VerifyError::Shape(format!(
            "segment {segment} does not exist: the blob has {} segments",
            metadata.segment_count()
        ))
    })?;
    sliver.fits(&layout, segment).map_err(VerifyError::Shape)?;
    let expected = metadata
        .segment(segment)
        .expect("segment exists")
        .of::<A>(sliver.index().into());
    if sliver_hash(sliver) != *expected {
        return Err(VerifyError::HashMismatch {
            kind: A::KIND.name(),
            index: sliver.index(),
            segment,
        });
    }
    Ok(())
}
