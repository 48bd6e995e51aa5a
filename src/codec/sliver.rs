//! Slivers, typed by their axis so a primary sliver cannot stand in for a
//! secondary one.
//!
//! Of the fully expanded `n x n` symbol matrix E of a segment, primary
//! sliver i is row i restricted to its first q symbols, secondary sliver j
//! is column j restricted to its first p symbols. Each line of E (a row or
//! a column) is a codeword of a systematic Reed-Solomon code; the code of a
//! sliver's own line has [`Axis::symbols`] source symbols.

use bytes::Bytes;
use std::fmt;
use std::marker::PhantomData;

use crate::codec::config::{EncodingConfig, SegmentLayout};

/// The two axes of Red Stuff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SliverKind {
    /// Rows of E: q symbols each.
    Primary,
    /// Columns of E: p symbols each.
    Secondary,
}

impl SliverKind {
    /// "primary" or "secondary".
    pub fn name(self) -> &'static str {
        match self {
            SliverKind::Primary => "primary",
            SliverKind::Secondary => "secondary",
        }
    }
}

impl fmt::Display for SliverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Primary {}
    impl Sealed for super::Secondary {}
}

/// A type-level axis: [`Primary`] or [`Secondary`].
pub trait Axis: sealed::Sealed + Copy + Send + Sync + fmt::Debug + 'static {
    /// The other axis.
    type Other: Axis<Other = Self>;
    /// The runtime value of this axis.
    const KIND: SliverKind;
    /// Symbols in a sliver of this axis: the source symbols of the code
    /// along its own line (q for primary, p for secondary).
    fn symbols(config: &EncodingConfig) -> usize;
    /// Slivers of this axis needed to decode a segment (p for primary,
    /// q for secondary): the source symbols of the other axis' code.
    fn decode_threshold(config: &EncodingConfig) -> usize {
        Self::Other::symbols(config)
    }
}

/// Marker of primary slivers (rows of E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Primary;

/// Marker of secondary slivers (columns of E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secondary;

impl Axis for Primary {
    type Other = Secondary;
    const KIND: SliverKind = SliverKind::Primary;
    fn symbols(config: &EncodingConfig) -> usize {
        config.q()
    }
}

impl Axis for Secondary {
    type Other = Primary;
    const KIND: SliverKind = SliverKind::Secondary;
    fn symbols(config: &EncodingConfig) -> usize {
        config.p()
    }
}

/// One sliver of one segment: its symbols back to back. The bytes are
/// shared (a clone costs no copy), so a systematic sliver can be a slice
/// of the segment it was cut from.
#[derive(Clone, PartialEq, Eq)]
pub struct Sliver<A: Axis> {
    config: EncodingConfig,
    index: u16,
    segment: u32,
    symbol_size: usize,
    data: Bytes,
    axis: PhantomData<A>,
}

/// A primary sliver.
pub type PrimarySliver = Sliver<Primary>;
/// A secondary sliver.
pub type SecondarySliver = Sliver<Secondary>;

impl<A: Axis> Sliver<A> {
    /// A sliver from its parts; `None` when the index is not below n or the
    /// data is not `symbols * symbol_size` bytes of an even, non-zero size.
    pub fn new(
        config: EncodingConfig,
        index: u16,
        segment: u32,
        symbol_size: usize,
        data: impl Into<Bytes>,
    ) -> Option<Self> {
        let data = data.into();
        let fits = usize::from(index) < config.n()
            && symbol_size >= 2
            && symbol_size.is_multiple_of(2)
            && data.len() == A::symbols(&config) * symbol_size;
        fits.then_some(Self {
            config,
            index,
            segment,
            symbol_size,
            data,
            axis: PhantomData,
        })
    }

    /// The encoding parameters.
    pub fn config(&self) -> EncodingConfig {
        self.config
    }
    /// The sliver (pair) index, below n.
    pub fn index(&self) -> u16 {
        self.index
    }
    /// The segment of the blob it belongs to.
    pub fn segment(&self) -> u32 {
        self.segment
    }
    /// Bytes per symbol.
    pub fn symbol_size(&self) -> usize {
        self.symbol_size
    }
    /// The axis.
    pub fn kind(&self) -> SliverKind {
        A::KIND
    }
    /// The symbols back to back.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// The symbols back to back, sharing the sliver's buffer.
    pub fn shared_data(&self) -> Bytes {
        self.data.clone()
    }
    /// Symbol `j` of the sliver.
    pub fn symbol(&self, j: usize) -> &[u8] {
        &self.data[j * self.symbol_size..(j + 1) * self.symbol_size]
    }
    /// All symbols, in order.
    pub fn symbols(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.data.chunks_exact(self.symbol_size)
    }
    /// Whether the sliver fits a segment of this layout at this segment index.
    pub fn fits(&self, layout: &SegmentLayout, segment: u32) -> Result<(), String> {
        if self.config != layout.config() {
            return Err(format!(
                "sliver is for {} shards, the blob has {}",
                self.config.n(),
                layout.config().n()
            ));
        }
        if self.segment != segment {
            return Err(format!(
                "sliver is of segment {}, expected {segment}",
                self.segment
            ));
        }
        if self.symbol_size != layout.symbol_size() {
            return Err(format!(
                "symbol size {} does not match the segment's {}",
                self.symbol_size,
                layout.symbol_size()
            ));
        }
        Ok(())
    }
    /// Takes the bytes out of the sliver.
    pub fn into_data(self) -> Bytes {
        self.data
    }
    /// Flips one bit of the data: for tests that play a corrupting node.
    pub fn flip_bit(&mut self, bit: usize) {
        let mut data = self.data.to_vec();
        let len = data.len();
        data[(bit / 8) % len] ^= 1 << (bit % 8);
        self.data = data.into();
    }
}

impl<A: Axis> fmt::Debug for Sliver<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sliver")
            .field("kind", &A::KIND)
            .field("n", &self.config.n())
            .field("index", &self.index)
            .field("segment", &self.segment)
            .field("symbol_size", &self.symbol_size)
            .field("bytes", &self.data.len())
            .finish()
    }
}
