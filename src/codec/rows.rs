//! A segment's bytes read a row at a time: the segment is the rows of its
//! message matrix back to back, and row `r` is systematic primary sliver
//! `r`. A byte range of a segment lies in a few rows, and each row proves
//! itself alone: it must hash, as a primary sliver, to its primary hash in
//! the metadata (which the blob id commits to) and carry zero padding past
//! the segment's end. These are the checks a decode's default
//! [`Verification::Slivers`](super::Verification::Slivers) makes of every
//! row, so a row read this way is byte for byte the part of what every
//! successful read of the segment returns, even from a writer whose
//! encoding is inconsistent.

use std::ops::Range;

use bytes::Bytes;

use crate::codec::config::SegmentLayout;
use crate::codec::error::VerifyError;
use crate::codec::line::{fitting_layout, line_hash};
use crate::codec::metadata::BlobMetadata;
use crate::codec::sliver::PrimarySliver;

/// The rows of the message matrix holding bytes `within` of a segment of
/// `layout` (clamped to its true length); empty for an empty range. Pure.
pub fn rows_of(layout: &SegmentLayout, within: Range<usize>) -> Range<u16> {
    let len = layout.len() as usize;
    let (start, end) = (within.start.min(len), within.end.min(len));
    let row_len = layout.primary_sliver_len();
    if start >= end || row_len == 0 {
        return 0..0;
    }
    (start / row_len) as u16..end.div_ceil(row_len) as u16
}

/// Bytes of the segment row `row` holds: `[row q s, (row + 1) q s)`
/// clamped to the segment's true length. Pure.
pub fn row_span(layout: &SegmentLayout, row: u16) -> Range<usize> {
    let len = layout.len() as usize;
    let row_len = layout.primary_sliver_len();
    let start = (usize::from(row) * row_len).min(len);
    start..(start + row_len).min(len)
}

/// The segment's bytes held by `sliver`, a systematic primary sliver (its
/// index below p), once it proves itself: it fits the segment, hashes to
/// its primary hash, and its padding past the segment's end is zero
/// ([`VerifyError::NonZeroPadding`] otherwise: the writer's fault, not the
/// node's). The bytes share the sliver's buffer.
pub fn verified_row(
    metadata: &BlobMetadata,
    segment: u32,
    sliver: &PrimarySliver,
) -> Result<Bytes, VerifyError> {
    let layout = fitting_layout(metadata, segment, sliver)?;
    let config = layout.config();
    let row = sliver.index();
    if usize::from(row) >= config.p() {
        return Err(VerifyError::Shape(format!(
            "primary sliver {row} is not systematic: a segment has {} rows",
            config.p()
        )));
    }
    let expected = metadata
        .segment(segment)
        .expect("segment exists")
        .primary(row.into());
    if line_hash(&config, sliver.data(), layout.symbol_size()) != *expected {
        return Err(VerifyError::HashMismatch {
            kind: "primary",
            index: row,
            segment,
        });
    }
    // The row is what the writer committed to: padding that is not zero is
    // the writer's doing (a whole decode refuses it too), not the node's.
    let span = row_span(&layout, row);
    let within = span.end - span.start;
    if sliver.data()[within..].iter().any(|&b| b != 0) {
        return Err(VerifyError::NonZeroPadding { row, segment });
    }
    Ok(sliver.shared_data().slice(0..within))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_segment, BlobEncoder, EncodingConfig};

    fn blob(n: u16, len: usize) -> (BlobMetadata, Vec<crate::codec::EncodedSegment>, Vec<u8>) {
        let config = EncodingConfig::new(n).unwrap();
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 31 % 251) as u8 + 1).collect();
        let (metadata, segments) = BlobEncoder::new(config, 1 << 16)
            .unwrap()
            .encode(&data)
            .unwrap();
        (metadata, segments, data)
    }

    #[test]
    fn the_rows_of_a_range_are_those_its_bytes_lie_in() {
        let (metadata, _, _) = blob(7, 50_000);
        let layout = metadata.segment_layout(0).unwrap();
        let row_len = layout.primary_sliver_len();
        assert_eq!(rows_of(&layout, 0..1), 0..1);
        assert_eq!(rows_of(&layout, 0..row_len), 0..1);
        assert_eq!(rows_of(&layout, row_len - 1..row_len + 1), 0..2);
        assert_eq!(rows_of(&layout, 5..5), 0..0);
        assert_eq!(
            rows_of(&layout, 0..usize::MAX),
            0..3,
            "clamped to the segment"
        );
        assert_eq!(row_span(&layout, 2), 2 * row_len..50_000);
    }

    #[test]
    fn each_systematic_row_proves_itself_and_is_that_part_of_the_decoded_segment() {
        for (n, len) in [(7, 50_000), (10, 65_536), (4, 3)] {
            let (metadata, segments, data) = blob(n, len);
            let layout = metadata.segment_layout(0).unwrap();
            let decoded = decode_segment(&metadata, 0, segments[0].primary.clone())
                .unwrap()
                .data
                .to_vec();
            assert_eq!(decoded, data);
            for sliver in &segments[0].primary[..layout.config().p()] {
                let row = verified_row(&metadata, 0, sliver).unwrap();
                assert_eq!(row[..], data[row_span(&layout, sliver.index())]);
            }
        }
    }

    #[test]
    fn a_row_committed_with_bytes_past_the_segments_end_is_the_writers_fault() {
        // 50,000 bytes at n = 7: the last row ends in padding. A writer puts
        // a byte there and commits to the row as it is.
        let (metadata, segments, _) = blob(7, 50_000);
        let layout = metadata.segment_layout(0).unwrap();
        let last = &segments[0].primary[2];
        assert!(
            row_span(&layout, 2).len() < last.data().len(),
            "the row has padding"
        );
        let mut bytes = last.data().to_vec();
        *bytes.last_mut().unwrap() = 1;
        let odd = PrimarySliver::new(last.config(), 2, 0, last.symbol_size(), bytes).unwrap();
        let mut primary = segments[0].hashes.primary_hashes().to_vec();
        primary[2] = crate::codec::sliver_hash(&odd);
        let hashes = crate::codec::SegmentHashes::new(
            primary,
            segments[0].hashes.secondary_hashes().to_vec(),
        );
        let metadata = BlobMetadata::new(*metadata.layout(), vec![hashes]).unwrap();
        assert_eq!(
            verified_row(&metadata, 0, &odd),
            Err(VerifyError::NonZeroPadding { row: 2, segment: 0 })
        );
        // A whole read refuses the segment too, and blames no sliver.
        let mut systematic = segments[0].primary[..2].to_vec();
        systematic.push(odd);
        assert_eq!(
            decode_segment(&metadata, 0, systematic),
            Err(crate::codec::DecodeError::InconsistentEncoding)
        );
    }

    #[test]
    fn a_changed_row_a_row_of_another_pair_or_a_parity_sliver_is_refused() {
        let (metadata, segments, _) = blob(7, 50_000);
        let p = metadata.segment_layout(0).unwrap().config().p();
        let good = &segments[0].primary[1];
        let mut bytes = good.data().to_vec();
        bytes[10] ^= 1;
        let changed = PrimarySliver::new(good.config(), 1, 0, good.symbol_size(), bytes).unwrap();
        assert!(matches!(
            verified_row(&metadata, 0, &changed),
            Err(VerifyError::HashMismatch { index: 1, .. })
        ));
        let relabelled =
            PrimarySliver::new(good.config(), 2, 0, good.symbol_size(), good.shared_data())
                .unwrap();
        assert!(verified_row(&metadata, 0, &relabelled).is_err());
        assert!(matches!(
            verified_row(&metadata, 0, &segments[0].primary[p]),
            Err(VerifyError::Shape(_))
        ));
    }
}
