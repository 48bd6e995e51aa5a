//! Red Stuff, the two-dimensional erasure code of Walrus: encode, decode,
//! recover, commitments and the binary format. Pure code: no I/O besides
//! the reader a blob is streamed from.
//!
//! A blob is cut into segments; each segment is a `p x q` matrix of symbols
//! encoded into n sliver pairs (see `encode`). Slivers are checked against
//! 2n sliver hashes per segment, which the blob id commits to.

pub mod buffer_pool;
pub mod config;
pub mod decode;
pub mod encode;
pub mod error;
pub mod format;
pub mod hash_many;
pub mod line;
pub mod merkle;
pub mod metadata;
pub mod recovery;
pub mod rows;
pub mod rs;
pub mod segment_data;
pub mod sliver;

pub use config::{BlobLayout, EncodingConfig, SegmentLayout, DEFAULT_SEGMENT_SIZE};
pub use decode::{decode_blob, decode_segment, decode_segment_with, DecodedSegment, Verification};
pub use encode::{
    encode_segment, encode_segment_shared, segment_hashes, BlobEncoder, EncodeError, EncodedSegment,
};
pub use error::{ConfigError, DecodeError, FormatError, RebuildError, SymbolError, VerifyError};
pub use line::{sliver_hash, sliver_hash_and_leaves, verify_sliver};
pub use metadata::{BlobId, BlobMetadata, SegmentHashes, ShardRotation};
pub use recovery::{rebuild, Rebuilt, RecoverySymbol, SymbolSource};
pub use rows::{row_span, rows_of, verified_row};
pub use segment_data::SegmentData;
pub use sliver::{Axis, Primary, PrimarySliver, Secondary, SecondarySliver, Sliver, SliverKind};
