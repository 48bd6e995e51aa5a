//! Reading a byte range of a visible blob as a stream: only the segments
//! the range touches are read, the first one before the stream is handed
//! out (so a blob that cannot be read gets an error, not a broken body).

use std::ops::Range;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::blob_client::{BlobClient, BlobIoError};
use super::read::SlowNodes;
use crate::codec::{BlobMetadata, SegmentData};

/// Segments read at once by one range read (fetched while the one before
/// decodes).
const READ_AHEAD_SEGMENTS: usize = 2;

/// The body of a range read: chunks of the blob's bytes, or the error that
/// ended the read midway.
pub type RangeStream = ReceiverStream<Result<Bytes, std::io::Error>>;

/// The segments a byte range touches, and for each the part of it in the
/// range (offsets within the segment). Pure. An empty range touches none.
pub fn segment_spans(segment_size: u64, range: Range<u64>) -> Vec<(u32, Range<usize>)> {
    if range.is_empty() || segment_size == 0 {
        return Vec::new();
    }
    let first = range.start / segment_size;
    let last = (range.end - 1) / segment_size;
    (first..=last)
        .map(|index| {
            let offset = index * segment_size;
            let start = range.start.max(offset) - offset;
            let end = range.end.min(offset + segment_size) - offset;
            (index as u32, start as usize..end as usize)
        })
        .collect()
}

impl BlobClient {
    /// Segment `index`, from the segment cache when it holds it (kept
    /// there after a read).
    async fn cached_segment(
        &self,
        metadata: &BlobMetadata,
        index: u32,
        slow: &mut SlowNodes,
    ) -> Result<SegmentData, BlobIoError> {
        let id = metadata.blob_id();
        if let Some(data) = self.segments.as_ref().and_then(|c| c.get(&id, index)) {
            return Ok(data);
        }
        let data = self.read_segment(metadata, index, slow).await?;
        if let Some(cache) = &self.segments {
            cache.put(id, index, data.clone());
        }
        Ok(data)
    }

    /// Streams bytes `range` of the blob (clamped to its length); `counted`
    /// is called with each chunk's length as it goes out.
    pub async fn read_range(
        &self,
        metadata: BlobMetadata,
        range: Range<u64>,
        counted: impl Fn(u64) + Send + 'static,
    ) -> Result<RangeStream, BlobIoError> {
        let end = range.end.min(metadata.len());
        let spans = segment_spans(metadata.layout().segment_size(), range.start.min(end)..end);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let mut spans = spans.into_iter();
        let mut slow = SlowNodes::default();
        let first = match spans.next() {
            Some((index, within)) => Some(
                self.cached_segment(&metadata, index, &mut slow)
                    .await?
                    .slice(within),
            ),
            None => None,
        };
        let client = self.clone();
        let slow = std::sync::Arc::new(std::sync::Mutex::new(slow));
        tokio::spawn(async move {
            // The next segment is fetched from the nodes while this one
            // decodes: at most two in flight.
            let rest = futures_util::stream::iter(spans)
                .map(|(index, within)| {
                    let (client, metadata, slow) = (client.clone(), metadata.clone(), slow.clone());
                    async move {
                        let mut seen = slow.lock().expect("not poisoned").clone();
                        let data = client.cached_segment(&metadata, index, &mut seen).await;
                        slow.lock().expect("not poisoned").merge(seen);
                        data.map(|data| data.slice(within))
                    }
                })
                .buffered(READ_AHEAD_SEGMENTS);
            let mut reads = futures_util::stream::iter(first.map(Ok)).chain(rest);
            while let Some(read) = reads.next().await {
                match read {
                    Ok(data) => {
                        for chunk in data.parts() {
                            counted(chunk.len() as u64);
                            if tx.send(Ok(chunk.clone())).await.is_err() {
                                return; // the reader went away
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("read of {} failed: {e}", metadata.blob_id());
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_inside_one_segment_reads_only_that_segment() {
        assert_eq!(segment_spans(100, 120..150), vec![(1, 20..50)]);
    }

    #[test]
    fn a_range_across_segments_reads_each_touched_segment_and_the_right_part() {
        assert_eq!(
            segment_spans(100, 50..250),
            vec![(0, 50..100), (1, 0..100), (2, 0..50)]
        );
        assert_eq!(segment_spans(100, 0..100), vec![(0, 0..100)]);
        assert_eq!(segment_spans(100, 100..101), vec![(1, 0..1)]);
    }

    #[test]
    fn an_empty_range_reads_nothing() {
        assert!(segment_spans(100, 40..40).is_empty());
    }

    #[test]
    fn spans_cover_the_range_exactly() {
        for (start, end) in [(0u64, 1u64), (7, 993), (99, 301), (0, 1000)] {
            let total: usize = segment_spans(64, start..end)
                .iter()
                .map(|(_, r)| r.len())
                .sum();
            assert_eq!(total as u64, end - start);
        }
    }
}
