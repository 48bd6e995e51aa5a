//! Repair: recovery symbols with proofs, and rebuilding a lost sliver.
//!
//! A node that lost sliver pair i rebuilds secondary sliver i (column i of
//! E) from symbols `E[k][i]` served by holders of primary slivers k, and
//! primary sliver i (row i of E) from symbols `E[i][k]` served by holders
//! of secondary slivers k. Each symbol is element i of its source's
//! expanded line, proven by a Merkle path to the source's sliver hash. Any
//! p valid symbols rebuild a secondary sliver, any q a primary one: about
//! two slivers' worth of bytes per pair, never the whole blob.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use crate::codec::config::EncodingConfig;
use crate::codec::error::{RebuildError, SymbolError};
use crate::codec::line;
use crate::codec::merkle::{self, Hash, MerkleTree};
use crate::codec::metadata::BlobMetadata;
use crate::codec::rs;
use crate::codec::sliver::{Axis, Sliver};

/// One symbol of E taken from a sliver of axis `A` for the rebuild of the
/// sliver of the other axis with index `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverySymbol<A: Axis> {
    config: EncodingConfig,
    source: u16,
    target: u16,
    segment: u32,
    symbol: Vec<u8>,
    proof: Vec<Hash>,
    axis: PhantomData<A>,
}

impl<A: Axis> RecoverySymbol<A> {
    /// A symbol from its parts; `None` when an index is not below n, the
    /// symbol is not of an even non-zero size, or the proof has the wrong
    /// length for n leaves.
    pub fn new(
        config: EncodingConfig,
        source: u16,
        target: u16,
        segment: u32,
        symbol: Vec<u8>,
        proof: Vec<Hash>,
    ) -> Option<Self> {
        let n = config.n();
        let fits = usize::from(source) < n
            && usize::from(target) < n
            && symbol.len() >= 2
            && symbol.len().is_multiple_of(2)
            && proof.len() == merkle::proof_len(n);
        fits.then_some(Self {
            config,
            source,
            target,
            segment,
            symbol,
            proof,
            axis: PhantomData,
        })
    }
    /// The encoding parameters.
    pub fn config(&self) -> EncodingConfig {
        self.config
    }
    /// Index of the sliver it was derived from.
    pub fn source(&self) -> u16 {
        self.source
    }
    /// Index of the sliver it helps rebuild (its position in the source line).
    pub fn target(&self) -> u16 {
        self.target
    }
    /// The segment.
    pub fn segment(&self) -> u32 {
        self.segment
    }
    /// The symbol bytes.
    pub fn symbol(&self) -> &[u8] {
        &self.symbol
    }
    /// The Merkle path, leaf first.
    pub fn proof(&self) -> &[Hash] {
        &self.proof
    }
    /// Flips one bit of the symbol: for tests that play a corrupting node.
    pub fn flip_symbol_bit(&mut self, bit: usize) {
        let len = self.symbol.len();
        self.symbol[(bit / 8) % len] ^= 1 << (bit % 8);
    }
    /// Flips one bit of the proof: for tests that play a corrupting node.
    pub fn flip_proof_bit(&mut self, bit: usize) {
        let bits = self.proof.len() * 256;
        if bits == 0 {
            return;
        }
        let bit = bit % bits;
        self.proof[bit / 256][(bit % 256) / 8] ^= 1 << (bit % 8);
    }

    /// Checks the symbol against the blob metadata.
    pub fn verify(&self, metadata: &BlobMetadata) -> Result<(), SymbolError> {
        let shape = |m: String| SymbolError::Shape(m);
        if self.config != metadata.config() {
            return Err(shape(format!(
                "symbol is for {} shards, the blob has {}",
                self.config.n(),
                metadata.config().n()
            )));
        }
        let layout = metadata
            .segment_layout(self.segment)
            .ok_or_else(|| shape(format!("segment {} does not exist", self.segment)))?;
        if self.symbol.len() != layout.symbol_size() {
            return Err(shape(format!(
                "symbol of {} bytes, the segment's symbols have {}",
                self.symbol.len(),
                layout.symbol_size()
            )));
        }
        let root = metadata
            .segment(self.segment)
            .expect("segment exists")
            .of::<A>(self.source.into());
        let leaf = merkle::leaf_hash(&self.symbol);
        if merkle::verify_proof(
            root,
            self.config.n(),
            self.target.into(),
            &leaf,
            &self.proof,
        ) {
            Ok(())
        } else {
            Err(SymbolError::BadProof {
                source_index: self.source,
            })
        }
    }
}

/// A sliver expanded once, answering recovery symbols for any target.
#[derive(Debug, Clone)]
pub struct SymbolSource<'a, A: Axis> {
    sliver: &'a Sliver<A>,
    extension: Vec<u8>,
    tree: MerkleTree,
}

impl<'a, A: Axis> SymbolSource<'a, A> {
    /// Expands `sliver` along its line and builds its Merkle tree.
    pub fn new(sliver: &'a Sliver<A>) -> Self {
        let (leaves, extension) = line::expanded_leaves(sliver);
        Self {
            sliver,
            extension,
            tree: MerkleTree::new(leaves),
        }
    }

    /// The hash this sliver commits to (the root of its tree).
    pub fn sliver_hash(&self) -> Hash {
        self.tree.root()
    }

    /// The symbol for rebuilding the other-axis sliver `target`, with its
    /// proof; `None` when `target` is not below n.
    pub fn symbol(&self, target: u16) -> Option<RecoverySymbol<A>> {
        let t = usize::from(target);
        let config = self.sliver.config();
        let k = A::symbols(&config);
        let s = self.sliver.symbol_size();
        let bytes = if t < k {
            self.sliver.symbol(t)
        } else {
            self.extension.get((t - k) * s..(t - k + 1) * s)?
        };
        RecoverySymbol::new(
            config,
            self.sliver.index(),
            target,
            self.sliver.segment(),
            bytes.to_vec(),
            self.tree.proof(t)?,
        )
    }
}

/// A rebuilt sliver and the sources whose symbols were rejected.
#[derive(Debug, Clone)]
pub struct Rebuilt<B: Axis> {
    /// The sliver, verified against its hash.
    pub sliver: Sliver<B>,
    /// Source indices of symbols that failed verification.
    pub invalid_sources: Vec<u16>,
}

/// Rebuilds sliver `target` of axis `B` of segment `segment` from recovery
/// symbols derived from slivers of the other axis. Symbols are verified one
/// by one as they are drawn from `symbols`, and drawing stops as soon as
/// enough valid ones are in hand; invalid ones are skipped and reported.
/// The rebuilt sliver is checked against its committed hash before it is
/// returned.
pub fn rebuild<B: Axis>(
    metadata: &BlobMetadata,
    segment: u32,
    target: u16,
    symbols: impl IntoIterator<Item = RecoverySymbol<B::Other>>,
) -> Result<Rebuilt<B>, RebuildError> {
    let layout = metadata
        .segment_layout(segment)
        .ok_or(RebuildError::NoSuchSegment {
            segment: segment.into(),
            segments: metadata.segment_count(),
        })?;
    let config = layout.config();
    let n = config.n();
    if usize::from(target) >= n {
        return Err(RebuildError::NoSuchSliver { index: target, n });
    }
    let needed = B::symbols(&config);
    let mut seen = BTreeSet::new();
    let mut valid: Vec<RecoverySymbol<B::Other>> = Vec::with_capacity(needed);
    let mut invalid_sources = Vec::new();
    for symbol in symbols {
        if valid.len() == needed {
            break;
        }
        if symbol.target != target || symbol.segment != segment || seen.contains(&symbol.source) {
            invalid_sources.push(symbol.source);
            continue;
        }
        if symbol.verify(metadata).is_err() {
            invalid_sources.push(symbol.source);
            continue;
        }
        seen.insert(symbol.source);
        valid.push(symbol);
    }
    if valid.len() < needed {
        return Err(RebuildError::NotEnoughSymbols {
            valid: valid.len(),
            needed,
            invalid: invalid_sources.len(),
        });
    }
    let s = layout.symbol_size();
    let present: Vec<(usize, &[u8])> = valid
        .iter()
        .map(|sym| (usize::from(sym.source), sym.symbol.as_slice()))
        .collect();
    let mut data = vec![0u8; needed * s];
    rs::reconstruct_originals(needed, n - needed, &present, &mut data);
    let sliver = Sliver::<B>::new(config, target, segment, s, data)
        .expect("rebuilt sliver has its exact shape");
    let expected = metadata
        .segment(segment)
        .expect("segment exists")
        .of::<B>(target.into());
    if line::sliver_hash(&sliver) != *expected {
        return Err(RebuildError::InconsistentEncoding);
    }
    invalid_sources.sort_unstable();
    Ok(Rebuilt {
        sliver,
        invalid_sources,
    })
}
