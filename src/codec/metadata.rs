//! Commitments: sliver hashes per segment, the blob id, and the mapping of
//! sliver pairs onto shards.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::codec::config::{BlobLayout, EncodingConfig, SegmentLayout, HASH_LEN};
use crate::codec::error::{ConfigError, FormatError};
use crate::codec::merkle::{self, Hash};
use crate::codec::sliver::{Axis, SliverKind};

/// The encoding of this build: Reed-Solomon (reed-solomon-simd) in two
/// dimensions, BLAKE3 Merkle commitments, segmented blobs; format 1.
pub const ENCODING_TAG: u8 = 1;

/// A blob's identity: `H(encoding tag, n, segment size, length, segment
/// count, root over segment roots)`. Shown as 43 characters of URL-safe
/// base64 without padding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; HASH_LEN]);

impl BlobId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl FromStr for BlobId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| FormatError::InvalidField {
            field: "blob id",
            reason: reason.to_string(),
        };
        if s.len() != 43 {
            return Err(invalid("expected 43 characters of URL-safe base64"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| invalid("not URL-safe base64"))?;
        let raw: [u8; HASH_LEN] = bytes.try_into().map_err(|_| invalid("expected 32 bytes"))?;
        // Reject non-canonical encodings (stray low bits in the last character).
        let id = BlobId(raw);
        if id.to_string() != s {
            return Err(invalid("not the canonical encoding"));
        }
        Ok(id)
    }
}

/// The 2n sliver hashes of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHashes {
    primary: Vec<Hash>,
    secondary: Vec<Hash>,
}

impl SegmentHashes {
    /// Hashes from their parts; both lists must have the same length n.
    pub fn new(primary: Vec<Hash>, secondary: Vec<Hash>) -> Self {
        assert_eq!(primary.len(), secondary.len(), "n hashes on each axis");
        Self { primary, secondary }
    }
    /// Hash of primary sliver i.
    pub fn primary(&self, i: usize) -> &Hash {
        &self.primary[i]
    }
    /// Hash of secondary sliver i.
    pub fn secondary(&self, i: usize) -> &Hash {
        &self.secondary[i]
    }
    /// Hash of sliver i of the given axis.
    pub fn of<A: Axis>(&self, i: usize) -> &Hash {
        match A::KIND {
            SliverKind::Primary => &self.primary[i],
            SliverKind::Secondary => &self.secondary[i],
        }
    }
    /// Number of sliver pairs, n.
    pub fn len(&self) -> usize {
        self.primary.len()
    }
    /// Whether there are no hashes (never for a valid segment).
    pub fn is_empty(&self) -> bool {
        self.primary.is_empty()
    }
    /// All primary hashes.
    pub fn primary_hashes(&self) -> &[Hash] {
        &self.primary
    }
    /// All secondary hashes.
    pub fn secondary_hashes(&self) -> &[Hash] {
        &self.secondary
    }
    /// The segment root: a Merkle root over `H(primary i || secondary i)`.
    pub fn root(&self) -> Hash {
        merkle::root_of(self.len(), |i| {
            merkle::pair_hash(&self.primary[i], &self.secondary[i])
        })
    }
}

/// Which shard holds which sliver pair of a segment: pair i is stored on
/// shard `(i + r) mod n`, where r is taken from the segment root, so that
/// the systematic pairs (the raw bytes) land on different shards for
/// different segments and blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRotation {
    n: usize,
    offset: usize,
}

impl ShardRotation {
    /// The rotation of a segment with the given root over n shards.
    pub fn new(segment_root: &Hash, n: usize) -> Self {
        let mut head = [0u8; 8];
        head.copy_from_slice(&segment_root[..8]);
        let offset = (u64::from_le_bytes(head) % n as u64) as usize;
        Self { n, offset }
    }
    /// The shard that stores sliver pair `pair`.
    pub fn shard_of_pair(&self, pair: usize) -> usize {
        (pair + self.offset) % self.n
    }
    /// The sliver pair that shard `shard` stores.
    pub fn pair_of_shard(&self, shard: usize) -> usize {
        (shard + self.n - self.offset) % self.n
    }
}

/// Everything a node or reader needs to verify slivers and symbols of a
/// blob. It cannot be built with a blob id that does not match its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMetadata {
    layout: BlobLayout,
    segments: Vec<SegmentHashes>,
    blob_id: BlobId,
}

impl BlobMetadata {
    /// Metadata from the layout and the hashes of every segment; computes
    /// the blob id.
    pub fn new(layout: BlobLayout, segments: Vec<SegmentHashes>) -> Result<Self, FormatError> {
        let n = layout.config().n();
        if segments.len() as u64 != layout.segment_count() {
            return Err(FormatError::InvalidField {
                field: "segment count",
                reason: format!(
                    "{} segments of hashes for a blob of {} segments",
                    segments.len(),
                    layout.segment_count()
                ),
            });
        }
        if let Some(bad) = segments.iter().find(|s| s.len() != n) {
            return Err(FormatError::InvalidField {
                field: "segment hashes",
                reason: format!("{} hashes per axis for {n} shards", bad.len()),
            });
        }
        let blob_id = compute_blob_id(&layout, &segments);
        Ok(Self {
            layout,
            segments,
            blob_id,
        })
    }

    /// Like [`BlobMetadata::new`], and checks the claimed blob id.
    pub fn with_claimed_id(
        layout: BlobLayout,
        segments: Vec<SegmentHashes>,
        claimed: BlobId,
    ) -> Result<Self, FormatError> {
        let metadata = Self::new(layout, segments)?;
        if metadata.blob_id != claimed {
            return Err(FormatError::BlobIdMismatch);
        }
        Ok(metadata)
    }

    /// The blob id.
    pub fn blob_id(&self) -> BlobId {
        self.blob_id
    }
    /// The blob's layout (parameters, length, segments).
    pub fn layout(&self) -> &BlobLayout {
        &self.layout
    }
    /// The encoding parameters.
    pub fn config(&self) -> EncodingConfig {
        self.layout.config()
    }
    /// The blob length in bytes.
    pub fn len(&self) -> u64 {
        self.layout.len()
    }
    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.layout.is_empty()
    }
    /// Number of segments.
    pub fn segment_count(&self) -> u64 {
        self.layout.segment_count()
    }
    /// The hashes of segment `index`.
    pub fn segment(&self, index: u32) -> Option<&SegmentHashes> {
        self.segments.get(index as usize)
    }
    /// All segments' hashes.
    pub fn segments(&self) -> &[SegmentHashes] {
        &self.segments
    }
    /// The layout of segment `index`.
    pub fn segment_layout(&self, index: u32) -> Option<SegmentLayout> {
        self.layout.segment(index.into())
    }
    /// The pair-to-shard rotation of segment `index`.
    pub fn rotation(&self, index: u32) -> Option<ShardRotation> {
        self.segment(index)
            .map(|s| ShardRotation::new(&s.root(), self.config().n()))
    }
}

/// The parameters the blob id commits to, in their serialized order.
pub(crate) fn id_params(layout: &BlobLayout) -> Vec<u8> {
    let mut params = Vec::with_capacity(23);
    params.push(ENCODING_TAG);
    params.extend_from_slice(&(layout.config().n() as u16).to_le_bytes());
    params.extend_from_slice(&layout.segment_size().to_le_bytes());
    params.extend_from_slice(&layout.len().to_le_bytes());
    params.extend_from_slice(&(layout.segment_count() as u32).to_le_bytes());
    params
}

fn compute_blob_id(layout: &BlobLayout, segments: &[SegmentHashes]) -> BlobId {
    let roots: Vec<Hash> = segments.iter().map(SegmentHashes::root).collect();
    BlobId(merkle::blob_id_hash(
        &id_params(layout),
        &merkle::root(&roots),
    ))
}

/// A layout from serialized parameters, with errors as format errors.
pub(crate) fn layout_from_params(
    n: u16,
    segment_size: u64,
    len: u64,
) -> Result<BlobLayout, FormatError> {
    let invalid = |field: &'static str, e: ConfigError| FormatError::InvalidField {
        field,
        reason: e.to_string(),
    };
    let config = EncodingConfig::new(n).map_err(|e| invalid("shard count", e))?;
    BlobLayout::new(config, segment_size, len).map_err(|e| invalid("segment size", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_print_as_43_characters_and_parse_back() {
        for seed in 0..50u8 {
            let id = BlobId(*blake3::hash(&[seed]).as_bytes());
            let text = id.to_string();
            assert_eq!(text.len(), 43);
            assert_eq!(text.parse::<BlobId>().unwrap(), id);
        }
    }

    #[test]
    fn malformed_blob_ids_are_refused() {
        let good = BlobId([7; 32]).to_string();
        for bad in [
            String::new(),
            good[..42].to_string(),
            format!("{good}A"),
            good.replace(&good[..1], "!"),
            format!("{}{}", &good[..42], "B"), // non-canonical trailing bits
        ] {
            if bad == good {
                continue;
            }
            assert!(bad.parse::<BlobId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rotation_is_a_bijection_between_pairs_and_shards() {
        for n in [4usize, 7, 10, 100] {
            for seed in 0..20u8 {
                let r = ShardRotation::new(blake3::hash(&[seed]).as_bytes(), n);
                let mut seen = vec![false; n];
                for pair in 0..n {
                    let shard = r.shard_of_pair(pair);
                    assert!(!seen[shard]);
                    seen[shard] = true;
                    assert_eq!(r.pair_of_shard(shard), pair);
                }
            }
        }
    }

    #[test]
    fn metadata_refuses_hash_lists_that_do_not_fit_the_layout() {
        let config = EncodingConfig::new(4).unwrap();
        let layout = BlobLayout::new(config, 1024, 3000).unwrap();
        let seg = SegmentHashes::new(vec![[1; 32]; 4], vec![[2; 32]; 4]);
        assert!(BlobMetadata::new(layout, vec![seg.clone(); 2]).is_err());
        let short = SegmentHashes::new(vec![[1; 32]; 3], vec![[2; 32]; 3]);
        assert!(BlobMetadata::new(layout, vec![seg.clone(), seg.clone(), short]).is_err());
        let ok = BlobMetadata::new(layout, vec![seg.clone(); 3]).unwrap();
        assert!(BlobMetadata::with_claimed_id(layout, vec![seg; 3], BlobId([0; 32])).is_err());
        assert_eq!(ok.segment_count(), 3);
    }
}
