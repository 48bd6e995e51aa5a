//! The decoder: a segment's bytes from enough slivers of one axis, checked
//! against the blob id.
//!
//! Any p primary slivers (rows of E) decode every column of M; any q
//! secondary slivers (columns of E) decode every row. Systematic slivers
//! are chosen first, so a healthy read needs no Reed-Solomon at all.
//!
//! The segment's bytes are the rows of M, that is its p systematic primary
//! slivers; a decode from those returns their own buffers back to back
//! ([`SegmentData`]), without copying them. A decode returns them only when each of those rows hashes (as
//! a sliver) to its primary hash in the metadata, which the blob id
//! commits to ([`Verification::Slivers`], the default). Those hashes fix
//! the rows, so every read that succeeds returns the same bytes, even from
//! a writer whose encoding is inconsistent: such a blob can make some reads
//! fail, never return different bytes. From the systematic slivers this is
//! just verifying the slivers used, about p/n of an encode.
//!
//! [`Verification::Strict`] re-derives the whole encoding instead: the
//! decoded segment is re-encoded and all 2n sliver hashes must equal the
//! metadata's, which also proves the writer's encoding consistent.
//!
//! When the check fails, each sliver is verified on its own to tell lying
//! slivers (dropped, and reported so the caller can blame their nodes) from
//! an inconsistent writer (an error), and decoding retries with the valid
//! ones.

use std::collections::BTreeMap;

use bytes::Bytes;
use rayon::prelude::*;

use crate::codec::config::SegmentLayout;
use crate::codec::encode::segment_hashes;
use crate::codec::error::DecodeError;
use crate::codec::line::{line_hash, verify_sliver};
use crate::codec::metadata::{BlobMetadata, SegmentHashes};
use crate::codec::rs;
use crate::codec::segment_data::SegmentData;
use crate::codec::sliver::{Axis, Sliver, SliverKind};

/// How a decode proves the bytes it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verification {
    /// Each systematic primary sliver of the result matches its hash: every
    /// successful read returns the same bytes.
    #[default]
    Slivers,
    /// The whole segment is re-encoded and all 2n hashes must match: also
    /// proves the writer's encoding consistent.
    Strict,
}

/// A decoded segment and the slivers found invalid on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// The segment's bytes, without padding.
    pub data: SegmentData,
    /// Indices of slivers that were offered but did not verify.
    pub invalid: Vec<u16>,
}

/// Decodes segment `segment` of the blob from slivers of one axis. Needs
/// [`Axis::decode_threshold`] valid slivers of distinct indices among those
/// given; extra slivers are spares, used only if some turn out invalid.
pub fn decode_segment<A: Axis>(
    metadata: &BlobMetadata,
    segment: u32,
    slivers: Vec<Sliver<A>>,
) -> Result<DecodedSegment, DecodeError> {
    decode_segment_with(metadata, segment, slivers, Verification::Slivers)
}

/// [`decode_segment`] with a chosen [`Verification`].
pub fn decode_segment_with<A: Axis>(
    metadata: &BlobMetadata,
    segment: u32,
    slivers: Vec<Sliver<A>>,
    verification: Verification,
) -> Result<DecodedSegment, DecodeError> {
    let layout = metadata
        .segment_layout(segment)
        .ok_or(DecodeError::NoSuchSegment {
            segment: segment.into(),
            segments: metadata.segment_count(),
        })?;
    let config = layout.config();
    let expected = metadata.segment(segment).expect("segment exists");
    let needed = A::decode_threshold(&config);

    let mut invalid = Vec::new();
    let mut candidates: BTreeMap<u16, Sliver<A>> = BTreeMap::new();
    for sliver in slivers {
        if sliver.fits(&layout, segment).is_err() {
            invalid.push(sliver.index());
        } else {
            candidates.entry(sliver.index()).or_insert(sliver);
        }
    }
    let not_enough = |valid: usize, invalid: &[u16]| DecodeError::NotEnoughSlivers {
        kind: A::KIND.name(),
        valid,
        needed,
        invalid: {
            let mut sorted = invalid.to_vec();
            sorted.sort_unstable();
            sorted
        },
    };
    if candidates.len() < needed {
        return Err(not_enough(candidates.len(), &invalid));
    }

    // Optimistic: the lowest indices (systematic first).
    let chosen: Vec<&Sliver<A>> = candidates.values().take(needed).collect();
    if let Some(data) = reconstruct_checked(&layout, &chosen, expected, verification) {
        return Ok(DecodedSegment { data, invalid });
    }

    // Something lied: verify each sliver on its own, then retry with valid ones.
    let verdicts: Vec<(u16, bool)> = candidates
        .par_iter()
        .map(|(index, sliver)| (*index, verify_sliver(metadata, sliver).is_ok()))
        .collect();
    let chosen_were_valid = verdicts.iter().take(needed).all(|(_, ok)| *ok);
    if chosen_were_valid {
        return Err(DecodeError::InconsistentEncoding);
    }
    for (index, ok) in &verdicts {
        if !ok {
            invalid.push(*index);
            candidates.remove(index);
        }
    }
    if candidates.len() < needed {
        return Err(not_enough(candidates.len(), &invalid));
    }
    let chosen: Vec<&Sliver<A>> = candidates.values().take(needed).collect();
    let data = reconstruct_checked(&layout, &chosen, expected, verification)
        .ok_or(DecodeError::InconsistentEncoding)?;
    invalid.sort_unstable();
    Ok(DecodedSegment { data, invalid })
}

/// Decodes a whole blob held in memory from per-segment slivers.
pub fn decode_blob<A: Axis>(
    metadata: &BlobMetadata,
    segments: Vec<Vec<Sliver<A>>>,
) -> Result<Vec<u8>, DecodeError> {
    let count = metadata.segment_count();
    if segments.len() as u64 != count {
        return Err(DecodeError::NoSuchSegment {
            segment: segments.len().min(count as usize) as u64,
            segments: count,
        });
    }
    let mut blob = Vec::with_capacity(metadata.len() as usize);
    for (index, slivers) in segments.into_iter().enumerate() {
        for part in decode_segment(metadata, index as u32, slivers)?
            .data
            .parts()
        {
            blob.extend_from_slice(part);
        }
    }
    Ok(blob)
}

/// The segment's bytes from the chosen slivers, if the padding is zero and
/// they pass `verification` against the expected hashes.
fn reconstruct_checked<A: Axis>(
    layout: &SegmentLayout,
    chosen: &[&Sliver<A>],
    expected: &SegmentHashes,
    verification: Verification,
) -> Option<SegmentData> {
    let mut matrix = reconstruct(layout, chosen);
    let len = layout.len() as usize;
    let padding = matrix.slice(len..matrix.len());
    if padding
        .parts()
        .iter()
        .any(|part| part.iter().any(|&b| b != 0))
    {
        return None;
    }
    let verified = match verification {
        Verification::Slivers => rows_match(layout, &matrix, expected),
        Verification::Strict => {
            segment_hashes(layout.config(), &matrix.slice(0..len).to_vec()) == *expected
        }
    };
    matrix.truncate(len);
    verified.then_some(matrix)
}

/// Whether every row of the padded message matrix hashes, as a primary
/// sliver, to its primary hash. Each part of `matrix` holds whole rows.
fn rows_match(layout: &SegmentLayout, matrix: &SegmentData, expected: &SegmentHashes) -> bool {
    let config = layout.config();
    let s = layout.symbol_size();
    let rows: Vec<&[u8]> = matrix
        .parts()
        .iter()
        .flat_map(|part| part.chunks(config.q() * s))
        .collect();
    rows.len() == config.p()
        && rows
            .par_iter()
            .enumerate()
            .all(|(r, row)| line_hash(&config, row, s) == *expected.primary(r))
}

/// The padded message matrix from exactly `threshold` slivers of distinct
/// indices, sorted by index, each part whole rows; no verification. From
/// the systematic primary slivers it is their own buffers.
fn reconstruct<A: Axis>(layout: &SegmentLayout, chosen: &[&Sliver<A>]) -> SegmentData {
    let config = layout.config();
    let (n, p, q, s) = (config.n(), config.p(), config.q(), layout.symbol_size());
    match A::KIND {
        // Rows of E: decode each column of M with the column code (p, n - p).
        SliverKind::Primary => {
            if chosen
                .iter()
                .enumerate()
                .all(|(r, sl)| usize::from(sl.index()) == r)
            {
                SegmentData::from_parts(chosen.iter().map(|sl| sl.shared_data()))
            } else {
                let columns: Vec<Vec<u8>> = (0..q)
                    .into_par_iter()
                    .map(|c| {
                        let present: Vec<(usize, &[u8])> = chosen
                            .iter()
                            .map(|sl| (sl.index().into(), sl.symbol(c)))
                            .collect();
                        let mut column = vec![0u8; p * s];
                        rs::reconstruct_originals(p, n - p, &present, &mut column);
                        column
                    })
                    .collect();
                let mut matrix = vec![0u8; p * q * s];
                for (c, column) in columns.iter().enumerate() {
                    for r in 0..p {
                        let at = (r * q + c) * s;
                        matrix[at..at + s].copy_from_slice(&column[r * s..(r + 1) * s]);
                    }
                }
                matrix.into()
            }
        }
        // Columns of E: decode each row of M with the row code (q, n - q).
        SliverKind::Secondary => {
            let rows: Vec<Vec<u8>> = (0..p)
                .into_par_iter()
                .map(|r| {
                    let present: Vec<(usize, &[u8])> = chosen
                        .iter()
                        .map(|sl| (sl.index().into(), sl.symbol(r)))
                        .collect();
                    let mut row = vec![0u8; q * s];
                    rs::reconstruct_originals(q, n - q, &present, &mut row);
                    row
                })
                .collect();
            SegmentData::from_parts(rows.into_iter().map(Bytes::from))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{BlobEncoder, EncodingConfig};

    #[test]
    fn a_read_from_the_systematic_slivers_returns_their_own_buffers_not_a_copy() {
        let config = EncodingConfig::new(7).unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let (metadata, segments) = BlobEncoder::new(config, 1 << 16)
            .unwrap()
            .encode(&data)
            .unwrap();
        let systematic = segments[0].primary[..config.p()].to_vec();
        let decoded = decode_segment(&metadata, 0, systematic.clone()).unwrap();
        assert!(decoded.data == data[..]);
        for (part, sliver) in decoded.data.parts().iter().zip(&systematic) {
            assert_eq!(part.as_ptr(), sliver.data().as_ptr());
        }
        // From other slivers the rows are decoded, then checked the same way.
        let others = segments[0].primary[config.n() - config.p()..].to_vec();
        assert!(decode_segment(&metadata, 0, others).unwrap().data == data[..]);
    }
}
