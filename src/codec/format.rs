//! The binary format of metadata, slivers and recovery symbols, version 1.
//!
//! Every object starts with a 6-byte header: the magic `RDST`, the format
//! version (1) and an object type byte. Integers are little-endian. Parsing
//! is strict: every length is checked against the bytes actually present
//! before anything is allocated, values out of range are errors, and the
//! object must end exactly where the input does.
//!
//! | type | object | body after the header |
//! |---|---|---|
//! | 1 | metadata | tag u8 = 1, n u16, segment size u64, length u64, segment count u32, blob id [32], then per segment n primary hashes and n secondary hashes [32 each] |
//! | 2 | primary sliver | n u16, index u16, segment u32, symbol size u32, q symbols |
//! | 3 | secondary sliver | the same, with p symbols |
//! | 4 | recovery symbol from a primary sliver | n u16, source u16, target u16, segment u32, symbol size u32, symbol, proof length u8, proof hashes [32 each] |
//! | 5 | recovery symbol from a secondary sliver | the same |
//!
//! Metadata is checked against its blob id while it is parsed.

use crate::codec::config::{BlobLayout, EncodingConfig, HASH_LEN, MAX_SEGMENT_SIZE};
use crate::codec::error::FormatError;
use crate::codec::merkle::{self, Hash};
use crate::codec::metadata::{
    layout_from_params, BlobId, BlobMetadata, SegmentHashes, ENCODING_TAG,
};
use crate::codec::recovery::RecoverySymbol;
use crate::codec::sliver::{Axis, Primary, Secondary, Sliver, SliverKind};

/// The four magic bytes every object starts with.
pub const MAGIC: [u8; 4] = *b"RDST";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 6;

const TYPE_METADATA: u8 = 1;
const TYPE_PRIMARY_SLIVER: u8 = 2;
const TYPE_SECONDARY_SLIVER: u8 = 3;
const TYPE_PRIMARY_SYMBOL: u8 = 4;
const TYPE_SECONDARY_SYMBOL: u8 = 5;

/// Bytes of a serialized sliver besides its symbols.
pub const SLIVER_OVERHEAD: usize = HEADER_LEN + 2 + 2 + 4 + 4;

fn sliver_type(kind: SliverKind) -> u8 {
    match kind {
        SliverKind::Primary => TYPE_PRIMARY_SLIVER,
        SliverKind::Secondary => TYPE_SECONDARY_SLIVER,
    }
}

fn symbol_type(kind: SliverKind) -> u8 {
    match kind {
        SliverKind::Primary => TYPE_PRIMARY_SYMBOL,
        SliverKind::Secondary => TYPE_SECONDARY_SYMBOL,
    }
}

/// The largest symbol a segment of the largest size can have for `config`.
pub fn max_symbol_size(config: &EncodingConfig) -> usize {
    config.segment_layout(MAX_SEGMENT_SIZE).symbol_size()
}

fn header(out: &mut Vec<u8>, object_type: u8) {
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(object_type);
}

/// A strict cursor over input bytes.
struct Reader<'a> {
    input: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8], what: &'static str) -> Self {
        Self { input, what }
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], FormatError> {
        if (self.input.len() as u64) < len {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: len,
                got: self.input.len() as u64,
            });
        }
        let (head, tail) = self.input.split_at(len as usize);
        self.input = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        Ok(self.take(N as u64)?.try_into().expect("exact length"))
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn header(&mut self, expected_type: u8) -> Result<(), FormatError> {
        if self.array::<4>()? != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = self.u8()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let found = self.u8()?;
        if found != expected_type {
            return Err(FormatError::WrongType {
                expected: self.what,
                found,
            });
        }
        Ok(())
    }

    fn config(&mut self) -> Result<EncodingConfig, FormatError> {
        let n = self.u16()?;
        EncodingConfig::new(n).map_err(|e| invalid("shard count", e.to_string()))
    }

    fn symbol_size(&mut self, config: &EncodingConfig) -> Result<usize, FormatError> {
        let size = self.u32()? as usize;
        let max = max_symbol_size(config);
        if size < 2 || !size.is_multiple_of(2) || size > max {
            return Err(invalid(
                "symbol size",
                format!("{size} is not an even size between 2 and {max}"),
            ));
        }
        Ok(size)
    }

    fn index(&mut self, field: &'static str, config: &EncodingConfig) -> Result<u16, FormatError> {
        let index = self.u16()?;
        if usize::from(index) >= config.n() {
            return Err(invalid(
                field,
                format!("{index} is not below n = {}", config.n()),
            ));
        }
        Ok(index)
    }

    fn hash(&mut self) -> Result<Hash, FormatError> {
        self.array()
    }

    fn finish(self) -> Result<(), FormatError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(FormatError::TrailingBytes {
                what: self.what,
                extra: self.input.len() as u64,
            })
        }
    }
}

fn invalid(field: &'static str, reason: String) -> FormatError {
    FormatError::InvalidField { field, reason }
}

impl BlobMetadata {
    /// Serializes the metadata.
    pub fn to_bytes(&self) -> Vec<u8> {
        let layout = self.layout();
        let mut out = Vec::with_capacity(layout.metadata_len() as usize);
        header(&mut out, TYPE_METADATA);
        out.extend_from_slice(&crate::codec::metadata::id_params(layout));
        out.extend_from_slice(self.blob_id().as_bytes());
        for segment in self.segments() {
            for hash in segment
                .primary_hashes()
                .iter()
                .chain(segment.secondary_hashes())
            {
                out.extend_from_slice(hash);
            }
        }
        out
    }

    /// Parses metadata and checks it against its blob id.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "blob metadata");
        let layout = read_metadata_prefix(&mut r)?;
        let segment_count = layout.segment_count() as u32;
        let claimed = BlobId(r.hash()?);
        let n = layout.config().n();
        let hashes_len = u64::from(segment_count) * 2 * n as u64 * HASH_LEN as u64;
        let body = r.take(hashes_len)?;
        r.finish()?;
        let mut hashes = body
            .chunks_exact(HASH_LEN)
            .map(|h| -> Hash { h.try_into().expect("32 bytes") });
        let segments = (0..segment_count)
            .map(|_| {
                let primary = hashes.by_ref().take(n).collect();
                let secondary = hashes.by_ref().take(n).collect();
                SegmentHashes::new(primary, secondary)
            })
            .collect();
        BlobMetadata::with_claimed_id(layout, segments, claimed)
    }
}

/// Bytes of metadata needed to know its whole length (header, tag, n,
/// segment size, length, segment count).
pub const METADATA_PREFIX_LEN: usize = HEADER_LEN + 1 + 2 + 8 + 8 + 4;

/// The length of a serialized metadata object from its first
/// [`METADATA_PREFIX_LEN`] bytes, checked as far as they go: a receiver can
/// refuse an oversized object before reading it.
pub fn metadata_len_from_prefix(prefix: &[u8]) -> Result<u64, FormatError> {
    let mut r = Reader::new(prefix, "blob metadata");
    Ok(read_metadata_prefix(&mut r)?.metadata_len())
}

/// Reads the first [`METADATA_PREFIX_LEN`] bytes of a metadata object
/// (header, encoding tag, n, segment size, length, segment count) and the
/// layout they describe, checked against each other.
fn read_metadata_prefix(r: &mut Reader<'_>) -> Result<BlobLayout, FormatError> {
    r.header(TYPE_METADATA)?;
    let tag = r.u8()?;
    if tag != ENCODING_TAG {
        return Err(invalid(
            "encoding tag",
            format!("{tag} is not a known encoding"),
        ));
    }
    let n = r.u16()?;
    let segment_size = r.u64()?;
    let len = r.u64()?;
    let segment_count = r.u32()?;
    let layout = layout_from_params(n, segment_size, len)?;
    if u64::from(segment_count) != layout.segment_count() {
        return Err(invalid(
            "segment count",
            format!(
                "{segment_count} segments recorded, {} for {len} bytes in segments of {segment_size}",
                layout.segment_count()
            ),
        ));
    }
    Ok(layout)
}

/// The lengths of a serialized pair (the primary sliver, then the
/// secondary sliver of the same segment), from the primary's first
/// [`SLIVER_OVERHEAD`] bytes, checked as far as they go: a receiver that
/// knows nothing of the blob yet can refuse an oversized pair before
/// reading it.
pub fn pair_lengths_from_prefix(prefix: &[u8]) -> Result<PairLengths, FormatError> {
    let mut r = Reader::new(prefix, "primary sliver");
    r.header(sliver_type(SliverKind::Primary))?;
    let config = r.config()?;
    r.index("sliver index", &config)?;
    r.u32()?;
    let symbol_size = r.symbol_size(&config)?;
    let primary = SLIVER_OVERHEAD + Primary::symbols(&config) * symbol_size;
    let secondary = SLIVER_OVERHEAD + Secondary::symbols(&config) * symbol_size;
    Ok(PairLengths {
        primary,
        total: primary + secondary,
    })
}

/// The symbol size a serialized sliver's header (of either axis) declares;
/// `None` when `bytes` do not start with one. Only the header is read.
pub fn sliver_symbol_size(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..SLIVER_OVERHEAD)?;
    let is_sliver = header[..4] == MAGIC
        && header[4] == FORMAT_VERSION
        && [TYPE_PRIMARY_SLIVER, TYPE_SECONDARY_SLIVER].contains(&header[5]);
    let size = u32::from_le_bytes(header[SLIVER_OVERHEAD - 4..].try_into().expect("4 bytes"));
    is_sliver.then_some(size as usize)
}

/// Serialized lengths of a pair, from [`pair_lengths_from_prefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairLengths {
    /// The primary sliver's.
    pub primary: usize,
    /// Both slivers'.
    pub total: usize,
}

impl<A: Axis> Sliver<A> {
    /// Serializes the sliver.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SLIVER_OVERHEAD + self.data().len());
        out.extend_from_slice(&self.header_bytes());
        out.extend_from_slice(self.data());
        out
    }

    /// The first [`SLIVER_OVERHEAD`] bytes of [`Self::to_bytes`]: what
    /// precedes the data, so the data can be sent without a copy.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SLIVER_OVERHEAD);
        header(&mut out, sliver_type(A::KIND));
        out.extend_from_slice(&(self.config().n() as u16).to_le_bytes());
        out.extend_from_slice(&self.index().to_le_bytes());
        out.extend_from_slice(&self.segment().to_le_bytes());
        out.extend_from_slice(&(self.symbol_size() as u32).to_le_bytes());
        out
    }

    /// Parses a sliver of this axis; its data is copied out of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let (shape, data) = Self::parse(bytes)?;
        Ok(shape.sliver(data.to_vec()))
    }

    /// Parses a sliver of this axis whose data stays where it is: a slice
    /// of `bytes`, not a copy.
    pub fn from_shared(bytes: bytes::Bytes) -> Result<Self, FormatError> {
        let (shape, data) = Self::parse(&bytes)?;
        let data = bytes.slice_ref(data);
        Ok(shape.sliver(data))
    }

    fn parse(bytes: &[u8]) -> Result<(SliverShape, &[u8]), FormatError> {
        let what = match A::KIND {
            SliverKind::Primary => "primary sliver",
            SliverKind::Secondary => "secondary sliver",
        };
        let mut r = Reader::new(bytes, what);
        r.header(sliver_type(A::KIND))?;
        let config = r.config()?;
        let index = r.index("sliver index", &config)?;
        let segment = r.u32()?;
        let symbol_size = r.symbol_size(&config)?;
        let data = r.take((A::symbols(&config) * symbol_size) as u64)?;
        r.finish()?;
        let shape = SliverShape {
            config,
            index,
            segment,
            symbol_size,
        };
        Ok((shape, data))
    }
}

/// A parsed sliver header, checked against the data length that follows.
struct SliverShape {
    config: EncodingConfig,
    index: u16,
    segment: u32,
    symbol_size: usize,
}

impl SliverShape {
    fn sliver<A: Axis>(self, data: impl Into<bytes::Bytes>) -> Sliver<A> {
        Sliver::new(
            self.config,
            self.index,
            self.segment,
            self.symbol_size,
            data,
        )
        .expect("checked shape")
    }
}

impl<A: Axis> RecoverySymbol<A> {
    /// Serializes the symbol with its proof.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + 15 + self.symbol().len() + self.proof().len() * HASH_LEN,
        );
        header(&mut out, symbol_type(A::KIND));
        out.extend_from_slice(&(self.config().n() as u16).to_le_bytes());
        out.extend_from_slice(&self.source().to_le_bytes());
        out.extend_from_slice(&self.target().to_le_bytes());
        out.extend_from_slice(&self.segment().to_le_bytes());
        out.extend_from_slice(&(self.symbol().len() as u32).to_le_bytes());
        out.extend_from_slice(self.symbol());
        out.push(self.proof().len() as u8);
        for hash in self.proof() {
            out.extend_from_slice(hash);
        }
        out
    }

    /// Parses a recovery symbol derived from a sliver of this axis.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let what = match A::KIND {
            SliverKind::Primary => "recovery symbol from a primary sliver",
            SliverKind::Secondary => "recovery symbol from a secondary sliver",
        };
        let mut r = Reader::new(bytes, what);
        r.header(symbol_type(A::KIND))?;
        let config = r.config()?;
        let source = r.index("source index", &config)?;
        let target = r.index("target index", &config)?;
        let segment = r.u32()?;
        let symbol_size = r.symbol_size(&config)?;
        let symbol = r.take(symbol_size as u64)?.to_vec();
        let depth = usize::from(r.u8()?);
        let expected = merkle::proof_len(config.n());
        if depth != expected {
            return Err(invalid(
                "proof length",
                format!(
                    "{depth} hashes, a tree over {} leaves needs {expected}",
                    config.n()
                ),
            ));
        }
        let proof = (0..depth)
            .map(|_| r.hash())
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(
            RecoverySymbol::new(config, source, target, segment, symbol, proof)
                .expect("checked shape"),
        )
    }
}
