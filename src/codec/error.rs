//! Typed errors of the codec. Each says what was wrong.

use thiserror::Error;

/// Invalid encoding parameters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The shard count is outside the supported range.
    #[error("shard count {n} is not supported: it must be between 4 and 1000")]
    ShardCount {
        /// The count that was asked for.
        n: u64,
    },
    /// The segment size is outside the supported range.
    #[error(
        "segment size {segment_size} bytes is not supported: it must be between 1 KiB and 1 GiB"
    )]
    SegmentSize {
        /// The size that was asked for.
        segment_size: u64,
    },
    /// The blob would need more segments than the format can count.
    #[error("a blob of {len} bytes needs more than 2^32 - 1 segments of {segment_size} bytes")]
    BlobTooLarge {
        /// Blob length.
        len: u64,
        /// Segment size.
        segment_size: u64,
    },
}

/// A binary object (metadata, sliver, recovery symbol) that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// Input ended before the object did.
    #[error("truncated {what}: needs {needed} bytes, got {got}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        got: u64,
    },
    /// Input went on after the object ended.
    #[error("{extra} unexpected bytes after the {what}")]
    TrailingBytes {
        /// What was read.
        what: &'static str,
        /// Extra bytes.
        extra: u64,
    },
    /// The input does not start with the redstuff magic.
    #[error("not a redstuff object: bad magic bytes")]
    BadMagic,
    /// The format version is not one this build reads.
    #[error("format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// The object type byte is not the one expected.
    #[error("expected a {expected}, found object type {found}")]
    WrongType {
        /// What the caller expected.
        expected: &'static str,
        /// The type byte found.
        found: u8,
    },
    /// A field holds a value that is out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The metadata's blob id does not match its content.
    #[error("metadata is corrupt: its blob id does not match its content")]
    BlobIdMismatch,
}

/// Why a sliver failed verification against the blob metadata.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The sliver's shape (shard count, segment, size) does not fit the metadata.
    #[error("sliver does not fit the blob: {0}")]
    Shape(String),
    /// The sliver's content does not hash to the committed sliver hash.
    #[error("{kind} sliver {index} of segment {segment} does not match its committed hash")]
    HashMismatch {
        /// "primary" or "secondary".
        kind: &'static str,
        /// The sliver (pair) index.
        index: u16,
        /// The segment index.
        segment: u32,
    },
    /// A systematic row matches its committed hash but holds bytes past
    /// the segment's end: its writer encoded inconsistently (the node
    /// serving it is not to blame).
    #[error("row {row} of segment {segment} matches its hash but holds bytes past the segment's end: its writer encoded it inconsistently")]
    NonZeroPadding {
        /// The row (systematic pair index).
        row: u16,
        /// The segment index.
        segment: u32,
    },
}

/// Why a segment could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The segment index is not part of the blob.
    #[error("segment {segment} does not exist: the blob has {segments} segments")]
    NoSuchSegment {
        /// Asked for.
        segment: u64,
        /// In the blob.
        segments: u64,
    },
    /// Fewer valid slivers than the threshold were given.
    #[error(
        "not enough valid {kind} slivers: {valid} valid of {needed} needed ({} invalid)", invalid.len()
    )]
    NotEnoughSlivers {
        /// "primary" or "secondary".
        kind: &'static str,
        /// Valid distinct slivers available.
        valid: usize,
        /// The threshold.
        needed: usize,
        /// Indices of the slivers rejected as invalid.
        invalid: Vec<u16>,
    },
    /// Valid slivers decode to data whose encoding differs from the
    /// metadata: the writer encoded the blob inconsistently.
    #[error("the blob was encoded inconsistently: valid slivers decode to data that does not re-encode to the blob id")]
    InconsistentEncoding,
}

/// Why a sliver could not be rebuilt from recovery symbols.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RebuildError {
    /// The segment index is not part of the blob.
    #[error("segment {segment} does not exist: the blob has {segments} segments")]
    NoSuchSegment {
        /// Asked for.
        segment: u64,
        /// In the blob.
        segments: u64,
    },
    /// The target index is not below n.
    #[error("sliver index {index} is out of range for {n} shards")]
    NoSuchSliver {
        /// Asked for.
        index: u16,
        /// Shards.
        n: usize,
    },
    /// Fewer valid recovery symbols than needed were given.
    #[error(
        "not enough valid recovery symbols: {valid} valid of {needed} needed ({invalid} invalid)"
    )]
    NotEnoughSymbols {
        /// Valid distinct symbols.
        valid: usize,
        /// The threshold.
        needed: usize,
        /// Rejected symbols.
        invalid: usize,
    },
    /// The symbols were valid, but the rebuilt sliver does not match its
    /// hash: the writer encoded the blob inconsistently.
    #[error(
        "the blob was encoded inconsistently: the rebuilt sliver does not match its committed hash"
    )]
    InconsistentEncoding,
}

/// Why a recovery symbol was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SymbolError {
    /// Shape mismatch (segment, target, symbol size, proof length).
    #[error("recovery symbol does not fit: {0}")]
    Shape(String),
    /// The Merkle proof does not lead to the committed sliver hash.
    #[error("recovery symbol from sliver {source_index} fails its proof")]
    BadProof {
        /// The sliver it claims to come from.
        source_index: u16,
    },
}
