//! One line of the expanded matrix E: a sliver extended along its own
//! axis to all n symbols, the leaf hashes of those symbols, and the sliver
//! hash (their Merkle root). Used by the encoder, by sliver verification
//! and by the peers serving recovery symbols.

use rayon::prelude::*;

use crate::codec::config::{EncodingConfig, SegmentLayout};
use crate::codec::error::VerifyError;
use crate::codec::merkle::{self, Hash};
use crate::codec::metadata::BlobMetadata;
use crate::codec::rs;
use crate::codec::sliver::{Axis, Sliver};

/// Symbols below this size are hashed in batches per thread, not one task each.
const PARALLEL_HASH_MIN_SYMBOLS: usize = 64;
/// A line whose extension is at least this long is hashed without holding
/// the extension (see `extension_leaves_streamed`).
const STREAMED_EXTENSION_MIN: usize = 4 << 20;

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

/// [`sliver_hash`], and the leaf hashes of the sliver's own symbols it
/// computed on the way (what a node's store derives a file checksum from).
pub fn sliver_hash_and_leaves<A: Axis>(sliver: &Sliver<A>) -> (Hash, Vec<Hash>) {
    line_hash_and_sources(&sliver.config(), sliver.data(), sliver.symbol_size())
}

/// The hash of a line of `data` (its source symbols, back to back, of
/// `symbol_size` bytes each) extended to `config.n()` symbols: what
/// [`sliver_hash`] gives for a sliver holding `data`.
pub fn line_hash(config: &EncodingConfig, data: &[u8], symbol_size: usize) -> Hash {
    line_hash_and_sources(config, data, symbol_size).0
}

/// [`line_hash`], and the leaf hashes of the line's source symbols.
fn line_hash_and_sources(
    config: &EncodingConfig,
    data: &[u8],
    symbol_size: usize,
) -> (Hash, Vec<Hash>) {
    let k = data.len() / symbol_size;
    let mut leaves = vec![[0u8; 32]; config.n()];
    if (config.n() - k) * symbol_size < STREAMED_EXTENSION_MIN {
        let extension = extend(config, data, symbol_size);
        leaves_into(data, &extension, symbol_size, &mut leaves);
    } else {
        let (source, extension) = leaves.split_at_mut(k);
        hash_symbols(data, symbol_size, source);
        extension_leaves_streamed(data, symbol_size, extension);
    }
    let root = merkle::root(&leaves);
    leaves.truncate(k);
    (root, leaves)
}

/// Leaf hashes of the `out.len()` recovery symbols extending the line of
/// `data`, computed a stripe of bytes at a time (see `rs::stripes`): each
/// stripe of every recovery symbol is coded into one small buffer and fed
/// to that symbol's hasher, so the extension is never held whole. A line
/// of long symbols (a few at n = 7) would otherwise fault in and zero
/// fresh pages for as many bytes as the sliver itself on every check.
fn extension_leaves_streamed(data: &[u8], symbol_size: usize, out: &mut [Hash]) {
    let originals: Vec<&[u8]> = data.chunks_exact(symbol_size).collect();
    let recovery = out.len();
    let stripes: Vec<_> = rs::stripes(symbol_size, originals.len() + recovery).collect();
    let width = stripes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut buffer = vec![0u8; recovery * width];
    let mut hashers: Vec<blake3::Hasher> = (0..recovery).map(|_| merkle::leaf_hasher()).collect();
    for stripe in stripes {
        let cut: Vec<&[u8]> = originals.iter().map(|o| &o[stripe.clone()]).collect();
        let mut outs: Vec<&mut [u8]> = buffer
            .chunks_exact_mut(width)
            .map(|chunk| &mut chunk[..stripe.len()])
            .collect();
        rs::encode_recovery_into(&cut, &mut outs);
        hashers
            .par_iter_mut()
            .zip(outs.par_iter())
            .for_each(|(hasher, symbol)| {
                hasher.update(symbol);
            });
    }
    for (leaf, hasher) in out.iter_mut().zip(hashers) {
        *leaf = *hasher.finalize().as_bytes();
    }
}

/// The layout of segment `segment` of the blob, and that `sliver` fits it.
pub(crate) fn fitting_layout<A: Axis>(
    metadata: &BlobMetadata,
    segment: u32,
    sliver: &Sliver<A>,
) -> Result<SegmentLayout, VerifyError> {
    let layout = metadata.segment_layout(segment).ok_or_else(|| {
        VerifyError::Shape(format!(
            "segment {segment} does not exist: the blob has {} segments",
            metadata.segment_count()
        ))
    })?;
    sliver.fits(&layout, segment).map_err(VerifyError::Shape)?;
    Ok(layout)
}

/// Checks a sliver against the blob metadata: its shape, then its hash.
/// Returns the leaf hashes of its own symbols, computed on the way.
pub fn verify_sliver<A: Axis>(
    metadata: &BlobMetadata,
    sliver: &Sliver<A>,
) -> Result<Vec<Hash>, VerifyError> {
    let segment = sliver.segment();
    fitting_layout(metadata, segment, sliver)?;
    let expected = metadata
        .segment(segment)
        .expect("segment exists")
        .of::<A>(sliver.index().into());
    let (hash, leaves) = sliver_hash_and_leaves(sliver);
    if hash != *expected {
        return Err(VerifyError::HashMismatch {
            kind: A::KIND.name(),
            index: sliver.index(),
            segment,
        });
    }
    Ok(leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn extension_leaves_hashed_a_stripe_at_a_time_are_the_whole_extensions() {
        // Symbol sizes on and off the 64-byte chunk, around a stripe's width.
        for (n, k, symbol_size) in [
            (7, 5, 2),
            (7, 3, 130),
            (7, 5, 149_822),
            (7, 3, 300_002),
            (10, 4, 1_048_578),
            (100, 67, 29_462),
        ] {
            let config = EncodingConfig::new(n).unwrap();
            let line = data(k * symbol_size, n as u64 + symbol_size as u64);
            let extension = extend(&config, &line, symbol_size);
            let mut whole = vec![[0u8; 32]; n as usize];
            leaves_into(&line, &extension, symbol_size, &mut whole);
            let mut streamed = vec![[0u8; 32]; n as usize - k];
            extension_leaves_streamed(&line, symbol_size, &mut streamed);
            assert_eq!(
                streamed,
                whole[k..],
                "n {n}, k {k}, symbols of {symbol_size}"
            );
        }
    }

    #[test]
    fn a_line_of_long_symbols_hashes_the_same_streamed_or_whole() {
        let config = EncodingConfig::new(7).unwrap();
        let symbol_size = 2_200_002;
        for k in [3, 5] {
            let line = data(k * symbol_size, k as u64);
            assert!((7 - k) * symbol_size >= STREAMED_EXTENSION_MIN);
            let extension = extend(&config, &line, symbol_size);
            let mut whole = vec![[0u8; 32]; 7];
            leaves_into(&line, &extension, symbol_size, &mut whole);
            assert_eq!(line_hash(&config, &line, symbol_size), merkle::root(&whole));
        }
    }

    #[test]
    fn the_leaves_kept_while_hashing_a_line_are_its_source_symbols_leaf_hashes() {
        // Short lines (extension held whole) and long ones (streamed).
        for (n, k, symbol_size) in [(7, 5, 130), (100, 67, 302), (7, 3, 2_200_002)] {
            let config = EncodingConfig::new(n).unwrap();
            let line = data(k * symbol_size, symbol_size as u64);
            let (hash, sources) = line_hash_and_sources(&config, &line, symbol_size);
            assert_eq!(hash, line_hash(&config, &line, symbol_size));
            let expected: Vec<Hash> = line.chunks(symbol_size).map(merkle::leaf_hash).collect();
            assert_eq!(sources, expected, "n {n}, k {k}, symbols of {symbol_size}");
        }
    }
}
