//! Reading a byte range of a visible blob as a stream: only the segments
//! the range touches are read, the first one before the stream is handed
//! out (so a blob that cannot be read gets an error, not a broken body).
//!
//! With a read budget (`BlobClient::with_read_budget`), the rows a read
//! fetches reserve their bytes first and carry them to the chunks sent
//! (`client::read_budget`): they are given back once the last chunk of a
//! row has left for every reader. A read waits a bounded time for its
//! first segment's rows ([`BlobIoError::ReadsBusy`] beyond, nothing
//! sent), and as long as it takes for the others: a reader that stops
//! reading holds at most the segments it has in flight.

use std::ops::Range;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::blob_client::{BlobClient, BlobIoError};
use super::memory_budget::MemoryBudget;
use super::read::SlowNodes;
use super::read_budget::{Admission, RowShares, Turn};
use crate::codec::{row_span, rows_of, BlobMetadata, SegmentData};

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
    /// The same client for a read that continues one already under way
    /// (the next part of an object): it waits for the read budget as long
    /// as it takes, never [`BlobIoError::ReadsBusy`].
    pub fn continuing_read(mut self) -> Self {
        if let Some((_, wait)) = &mut self.read_memory {
            *wait = std::time::Duration::MAX;
        }
        self
    }

    /// Bytes `within` of segment `index`: only the rows they lie in, from
    /// the gateway's shared rows when the client has them; the rows this
    /// read fetches itself reserve their bytes from the read budget first,
    /// once the segment before has its rows (`turn`).
    async fn segment_part(
        &self,
        metadata: &BlobMetadata,
        (index, within): (u32, Range<usize>),
        slow: &mut SlowNodes,
        admission: Admission,
        mut turn: Turn,
    ) -> Result<SegmentData, BlobIoError> {
        let layout = super::row_read::segment_layout(metadata, index)?;
        let rows = rows_of(&layout, within.clone());
        if rows.is_empty() {
            return Ok(SegmentData::default());
        }
        turn.wait().await;
        let parts = match &self.segments {
            Some(shared) => {
                shared
                    .rows(self, metadata, index, rows.clone(), slow, (admission, turn))
                    .await?
            }
            None => {
                let row_bytes = MemoryBudget::rounded(layout.primary_sliver_len() as u64);
                let reserved = self
                    .reserve_rows(row_bytes * rows.len() as u64, admission)
                    .await?;
                turn.pass();
                let mut shares = RowShares::new(reserved, row_bytes, rows.len());
                let wanted: Vec<u16> = rows.clone().collect();
                let mut read = self.fetch_rows(metadata, index, &wanted, slow).await?;
                wanted
                    .iter()
                    .map(|row| {
                        read.remove(row)
                            .map(|bytes| shares.carry(bytes).0)
                            .ok_or_else(|| BlobIoError::Unreadable {
                                id: metadata.blob_id(),
                                segment: index,
                                reason: format!("row {row} was not read"),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let offset = row_span(&layout, rows.start).start;
        Ok(SegmentData::from_parts(parts).slice(within.start - offset..within.end - offset))
    }

    /// Streams bytes `range` of the blob (clamped to its length); `counted`
    /// is called with each chunk's length once the stream has taken it (a
    /// reader gone before is not counted for it).
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
            Some(span) => Some(
                self.segment_part(
                    &metadata,
                    span,
                    &mut slow,
                    self.first_admission(),
                    Turn::default(),
                )
                .await?,
            ),
            None => None,
        };
        let turns = Turn::chain(spans.len());
        let client = self.clone();
        let slow = std::sync::Arc::new(std::sync::Mutex::new(slow));
        tokio::spawn(async move {
            // The next segment is fetched from the nodes while this one
            // decodes: at most two in flight, taking the budget in order.
            let rest = futures_util::stream::iter(spans.zip(turns))
                .map(|(span, turn)| {
                    let (client, metadata, slow) = (client.clone(), metadata.clone(), slow.clone());
                    async move {
                        let mut seen = slow.lock().expect("not poisoned").clone();
                        let data = client
                            .segment_part(&metadata, span, &mut seen, Admission::UnderWay, turn)
                            .await;
                        slow.lock().expect("not poisoned").merge(seen);
                        data
                    }
                })
                .buffered(READ_AHEAD_SEGMENTS);
            let mut reads = futures_util::stream::iter(first.map(Ok)).chain(rest);
            loop {
                // A reader that hung up gives back what was read ahead for
                // it at once, not when its next segment comes.
                let read = tokio::select! {
                    read = reads.next() => read,
                    _ = tx.closed() => return,
                };
                let Some(read) = read else { break };
                match read {
                    Ok(part) => {
                        for chunk in part.parts().iter().cloned() {
                            let len = chunk.len() as u64;
                            if tx.send(Ok(chunk)).await.is_err() {
                                return; // the reader went away
                            }
                            // Counted once handed on, not for a reader gone.
                            counted(len);
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

    #[tokio::test]
    async fn a_fetchs_rows_each_carry_their_share_until_their_last_slice_is_dropped() {
        let budget = MemoryBudget::new(8 << 20);
        let mut shares = RowShares::new(Some(budget.reserve(2 << 20).await), 1 << 20, 2);
        let (first, first_share) = shares.carry(Bytes::from(vec![1u8; 10]));
        let (second, _) = shares.carry(Bytes::from(vec![2u8; 5]));
        drop(shares);
        let part = SegmentData::from_parts([first, second]).slice(5..12);
        assert_eq!(&part.parts()[0][..], &[1u8; 5]);
        assert_eq!(&part.parts()[1][..], &[2u8; 2]);
        let mut chunks: Vec<Bytes> = part.parts().to_vec();
        drop(part);
        assert_eq!(budget.in_use(), 2 << 20, "both rows are on their way");
        assert!(first_share.upgrade().is_some(), "the first row is held");
        let second_chunk = chunks.pop().unwrap();
        drop(second_chunk);
        assert_eq!(budget.in_use(), 1 << 20, "the second row is gone");
        drop(chunks);
        assert_eq!(budget.in_use(), 0);
        assert!(
            first_share.upgrade().is_none(),
            "a cache remembering the share sees it ended"
        );
    }

    #[tokio::test]
    async fn rows_above_what_was_reserved_share_all_of_it_until_the_last_is_dropped() {
        let budget = MemoryBudget::new(2 << 20);
        let mut shares = RowShares::new(Some(budget.reserve(3 << 20).await), 1 << 20, 3);
        let rows: Vec<Bytes> = (0..3u8)
            .map(|i| shares.carry(Bytes::from(vec![i; 4])).0)
            .collect();
        drop(shares);
        let mut rows = rows.into_iter();
        drop(rows.next());
        drop(rows.next());
        assert_eq!(budget.in_use(), 2 << 20, "one row still holds it all");
        drop(rows);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn without_a_budget_rows_carry_nothing() {
        let (row, share) = RowShares::new(None, 1 << 20, 1).carry(Bytes::from_static(b"row"));
        assert_eq!(&row[..], b"row");
        assert!(share.upgrade().is_none());
    }

    #[tokio::test]
    async fn a_segment_plans_only_once_the_one_before_has_its_rows() {
        let mut turns = Turn::chain(2).into_iter();
        let (mut first, mut second) = (turns.next().unwrap(), turns.next().unwrap());
        first.wait().await;
        let waiting = tokio::spawn(async move { second.wait().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the first has not its rows yet");
        first.pass();
        waiting.await.unwrap();
        // A segment that ends without passing (an error) lets the next go.
        let (mut a, mut b) = {
            let mut chain = Turn::chain(2).into_iter();
            (chain.next().unwrap(), chain.next().unwrap())
        };
        a.wait().await;
        drop(a);
        b.wait().await;
    }

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
