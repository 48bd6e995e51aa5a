//! Encoding parameters and all size arithmetic of Red Stuff, in one place.
//!
//! From the shard count `n`: `f = (n - 1) / 3` shards may be lost or lie,
//! `p = n - 2f` primary source symbols (rows of the message matrix, symbols
//! in a secondary sliver), `q = n - f` secondary source symbols (columns of
//! the message matrix, symbols in a primary sliver).
//!
//! A blob is cut into segments of a fixed size (the last one shorter); each
//! segment is its own `p x q` message matrix of symbols of `symbol_size`
//! bytes. See ARCHITECTURE.md, "Large blobs".

use crate::codec::error::ConfigError;

/// The smallest shard count: with fewer than 4 shards no shard may fail.
pub const MIN_SHARDS: u16 = 4;
/// The largest shard count supported.
pub const MAX_SHARDS: u16 = 1000;
/// The default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The smallest segment size allowed (tests use small segments).
pub const MIN_SEGMENT_SIZE: u64 = 1 << 10;
/// The largest segment size allowed: a segment is encoded in memory.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// The largest number of segments one blob may have.
pub const MAX_SEGMENTS: u64 = u32::MAX as u64;
/// Length of every hash and of a blob id, in bytes.
pub const HASH_LEN: usize = 32;

/// Red Stuff parameters derived from the shard count `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncodingConfig {
    n: u16,
    f: u16,
    p: u16,
    q: u16,
}

impl EncodingConfig {
    /// Parameters for `n` shards; `n` must lie in `MIN_SHARDS..=MAX_SHARDS`.
    pub fn new(n: u16) -> Result<Self, ConfigError> {
        if !(MIN_SHARDS..=MAX_SHARDS).contains(&n) {
            return Err(ConfigError::ShardCount { n: n.into() });
        }
        let f = (n - 1) / 3;
        Ok(Self {
            n,
            f,
            p: n - 2 * f,
            q: n - f,
        })
    }

    /// Like [`EncodingConfig::new`] for any integer, so that out-of-range
    /// values from a user are reported as they were given.
    pub fn from_shards(n: u64) -> Result<Self, ConfigError> {
        u16::try_from(n)
            .map_err(|_| ConfigError::ShardCount { n })
            .and_then(Self::new)
    }

    /// Number of shards (and sliver pairs), `n`.
    pub fn n(&self) -> usize {
        self.n.into()
    }
    /// Shards that may be lost or lie, `f = (n - 1) / 3`.
    pub fn f(&self) -> usize {
        self.f.into()
    }
    /// Rows of the message matrix; symbols in a secondary sliver; primary
    /// slivers needed to decode.
    pub fn p(&self) -> usize {
        self.p.into()
    }
    /// Columns of the message matrix; symbols in a primary sliver; secondary
    /// slivers needed to decode.
    pub fn q(&self) -> usize {
        self.q.into()
    }
    /// Source symbols of one segment, `p * q`.
    pub fn source_symbols(&self) -> usize {
        self.p() * self.q()
    }

    /// Size arithmetic for a segment of `len` bytes.
    pub fn segment_layout(&self, len: u64) -> SegmentLayout {
        let per_symbol = len.div_ceil(self.source_symbols() as u64);
        let even = per_symbol + (per_symbol & 1);
        SegmentLayout {
            config: *self,
            len,
            symbol_size: even.max(2) as usize,
        }
    }

    /// Metadata length in bytes for a blob of `segments` segments: the
    /// 2n sliver hashes of each segment plus the fixed header and blob id.
    pub fn metadata_len(&self, segments: u64) -> u64 {
        METADATA_FIXED_LEN as u64 + segments * 2 * self.n() as u64 * HASH_LEN as u64
    }

    /// Expansion factor of the stored slivers over the source symbols:
    /// `n (p + q) / (p q)`.
    pub fn expansion(&self) -> f64 {
        (self.n() * (self.p() + self.q())) as f64 / self.source_symbols() as f64
    }
}

/// Bytes of the serialized metadata besides the sliver hashes (see
/// `codec::format`): header 6, tag 1, n 2, segment size 8, length 8,
/// segment count 4, blob id 32.
pub const METADATA_FIXED_LEN: usize = 6 + 1 + 2 + 8 + 8 + 4 + HASH_LEN;

/// Sizes of one segment's message matrix and slivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLayout {
    config: EncodingConfig,
    len: u64,
    symbol_size: usize,
}

impl SegmentLayout {
    /// The encoding parameters.
    pub fn config(&self) -> EncodingConfig {
        self.config
    }
    /// True bytes of the segment, without padding.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the segment holds no bytes (only an empty blob has one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes per symbol: `ceil(len / (p q))`, rounded up to even, at least 2.
    pub fn symbol_size(&self) -> usize {
        self.symbol_size
    }
    /// The message matrix in bytes, padding included: `p q s`.
    pub fn padded_len(&self) -> usize {
        self.config.source_symbols() * self.symbol_size
    }
    /// Bytes of a primary sliver: `q s`.
    pub fn primary_sliver_len(&self) -> usize {
        self.config.q() * self.symbol_size
    }
    /// Bytes of a secondary sliver: `p s`.
    pub fn secondary_sliver_len(&self) -> usize {
        self.config.p() * self.symbol_size
    }
    /// Bytes of one sliver pair.
    pub fn pair_len(&self) -> usize {
        self.primary_sliver_len() + self.secondary_sliver_len()
    }
    /// Bytes of all n sliver pairs.
    pub fn encoded_len(&self) -> u64 {
        self.config.n() as u64 * self.pair_len() as u64
    }
    /// Symbol bytes a peer set sends to rebuild one lost pair: `(p + q) s`.
    pub fn repair_symbol_bytes(&self) -> u64 {
        ((self.config.p() + self.config.q()) * self.symbol_size) as u64
    }
}

/// How a blob of a given length is cut into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLayout {
    config: EncodingConfig,
    segment_size: u64,
    len: u64,
}

impl BlobLayout {
    /// The layout of a blob of `len` bytes in segments of `segment_size`.
    pub fn new(config: EncodingConfig, segment_size: u64, len: u64) -> Result<Self, ConfigError> {
        check_segment_size(segment_size)?;
        let layout = Self {
            config,
            segment_size,
            len,
        };
        if layout.segment_count() > MAX_SEGMENTS {
            return Err(ConfigError::BlobTooLarge { len, segment_size });
        }
        Ok(layout)
    }
    /// The encoding parameters.
    pub fn config(&self) -> EncodingConfig {
        self.config
    }
    /// The blob's true length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The segment size every segment but the last has.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }
    /// Number of segments: `ceil(len / segment_size)`, and 1 for an empty blob.
    pub fn segment_count(&self) -> u64 {
        self.len.div_ceil(self.segment_size).max(1)
    }
    /// Byte offset of segment `index` within the blob.
    pub fn segment_offset(&self, index: u64) -> u64 {
        index * self.segment_size
    }
    /// The layout of segment `index`; `None` past the last segment.
    pub fn segment(&self, index: u64) -> Option<SegmentLayout> {
        if index >= self.segment_count() {
            return None;
        }
        let start = self.segment_offset(index);
        let len = (self.len - start.min(self.len)).min(self.segment_size);
        Some(self.config.segment_layout(len))
    }
    /// Bytes of all slivers of all segments.
    pub fn encoded_len(&self) -> u64 {
        (0..self.segment_count())
            .map(|i| self.segment(i).map_or(0, |s| s.encoded_len()))
            .sum()
    }
    /// Bytes of the serialized metadata.
    pub fn metadata_len(&self) -> u64 {
        self.config.metadata_len(self.segment_count())
    }
}

/// Checks that a segment size is within the supported range.
pub fn check_segment_size(segment_size: u64) -> Result<(), ConfigError> {
    if (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        Ok(())
    } else {
        Err(ConfigError::SegmentSize { segment_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_follow_the_design_table() {
        for (n, f, p, q) in [
            (4, 1, 2, 3),
            (7, 2, 3, 5),
            (10, 3, 4, 7),
            (100, 33, 34, 67),
            (1000, 333, 334, 667),
        ] {
            let c = EncodingConfig::new(n).unwrap();
            assert_eq!(
                (c.n(), c.f(), c.p(), c.q()),
                (n as usize, f, p, q),
                "n = {n}"
            );
        }
    }

    #[test]
    fn expansion_tends_to_four_and_a_half() {
        let e = |n| EncodingConfig::new(n).unwrap().expansion();
        assert!((e(4) - 20.0 / 6.0).abs() < 1e-9);
        assert!((e(7) - 56.0 / 15.0).abs() < 1e-9);
        assert!((e(100) - 4.43).abs() < 0.01);
        assert!((e(1000) - 4.49).abs() < 0.01);
    }

    #[test]
    fn shard_counts_outside_the_supported_range_are_errors() {
        for n in [0u64, 1, 2, 3, 1001, 65535, 70000, u64::MAX] {
            let err = EncodingConfig::from_shards(n).unwrap_err();
            assert_eq!(err, ConfigError::ShardCount { n });
            assert!(err.to_string().contains(&n.to_string()));
        }
        assert!(EncodingConfig::from_shards(4).is_ok());
        assert!(EncodingConfig::from_shards(1000).is_ok());
    }

    #[test]
    fn worked_example_n7_one_mebibyte() {
        let c = EncodingConfig::new(7).unwrap();
        let s = c.segment_layout(1 << 20);
        assert_eq!(c.source_symbols(), 15);
        assert_eq!(s.symbol_size(), 69_906);
        assert_eq!(s.primary_sliver_len(), 349_530);
        assert_eq!(s.secondary_sliver_len(), 209_718);
        assert_eq!(s.pair_len(), 559_248);
        assert_eq!(s.encoded_len(), 3_914_736);
        assert_eq!(s.repair_symbol_bytes(), 559_248);
        assert_eq!(s.padded_len(), 1_048_590);
        // One segment's metadata: 2n hashes, plus the fixed part.
        let blob = BlobLayout::new(c, DEFAULT_SEGMENT_SIZE, 1 << 20).unwrap();
        assert_eq!(blob.segment_count(), 1);
        assert_eq!(blob.metadata_len(), METADATA_FIXED_LEN as u64 + 7 * 64);
    }

    #[test]
    fn symbol_size_is_even_and_at_least_two() {
        let c = EncodingConfig::new(7).unwrap();
        assert_eq!(c.segment_layout(0).symbol_size(), 2);
        assert_eq!(c.segment_layout(1).symbol_size(), 2);
        assert_eq!(c.segment_layout(30).symbol_size(), 2);
        assert_eq!(c.segment_layout(31).symbol_size(), 4);
        assert_eq!(c.segment_layout(45).symbol_size(), 4);
        assert_eq!(c.segment_layout(46).symbol_size(), 4);
        for len in 0..2000u64 {
            let s = c.segment_layout(len);
            assert_eq!(s.symbol_size() % 2, 0);
            assert!(s.padded_len() as u64 >= len);
            assert!(s.padded_len() as u64 - len < 2 * c.source_symbols() as u64 + 30);
        }
    }

    #[test]
    fn blobs_are_cut_into_segments_with_a_short_last_one() {
        let c = EncodingConfig::new(4).unwrap();
        let b = BlobLayout::new(c, 1024, 2500).unwrap();
        assert_eq!(b.segment_count(), 3);
        let lens: Vec<u64> = (0..3).map(|i| b.segment(i).unwrap().len()).collect();
        assert_eq!(lens, vec![1024, 1024, 452]);
        assert!(b.segment(3).is_none());
        let exact = BlobLayout::new(c, 1024, 2048).unwrap();
        assert_eq!(exact.segment_count(), 2);
        assert_eq!(exact.segment(1).unwrap().len(), 1024);
        let empty = BlobLayout::new(c, 1024, 0).unwrap();
        assert_eq!(empty.segment_count(), 1);
        assert_eq!(empty.segment(0).unwrap().len(), 0);
    }

    #[test]
    fn segment_sizes_outside_the_range_are_errors() {
        let c = EncodingConfig::new(4).unwrap();
        assert!(BlobLayout::new(c, 1023, 10).is_err());
        assert!(BlobLayout::new(c, MAX_SEGMENT_SIZE + 1, 10).is_err());
        assert!(BlobLayout::new(c, MIN_SEGMENT_SIZE, u64::MAX).is_err());
    }
}
