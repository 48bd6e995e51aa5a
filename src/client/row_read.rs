//! Reading some rows of a segment: a range that lies in fewer rows than
//! the segment holds fetches only those rows, each the systematic primary
//! sliver of its pair from the one shard holding it, and each proves
//! itself alone (`codec::rows::verified_row`), with no decode. Any trouble
//! (a holder missing, slow or silent past the hedge delay, a sliver that
//! does not prove itself) falls back to reading the whole segment from
//! any p shards, which hedges and blames as every read does.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rayon::prelude::*;

use super::blob_client::{BlobClient, BlobIoError};
use super::read::{SlowNodes, HEDGE_AFTER};
use super::unanswering::Unanswered;
use crate::codec::format::SLIVER_OVERHEAD;
use crate::codec::{
    row_span, rows_of, verified_row, BlobMetadata, PrimarySliver, SegmentData, SegmentLayout,
    SliverKind, VerifyError,
};

/// Where the rows of a read came from (the label of
/// `redstuff_gateway_read_rows_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSource {
    /// The gateway's cache of rows.
    Cache,
    /// Another read fetching them at the same time (waited on).
    Shared,
    /// Fetched alone, each from its systematic shard.
    Alone,
    /// Decoded with the whole segment.
    Segment,
}

impl RowSource {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RowSource::Cache => "cache",
            RowSource::Shared => "shared",
            RowSource::Alone => "alone",
            RowSource::Segment => "segment",
        }
    }
}

/// Rows read: each wanted one, and, after a whole segment was read, every
/// other row holding bytes of it too.
pub type ReadRows = BTreeMap<u16, Bytes>;

impl BlobClient {
    /// Counts `count` rows served from `source`.
    pub(super) fn count_rows(&self, source: RowSource, count: usize) {
        if let Some(m) = &self.metrics {
            m.read_rows
                .with_label_values(&[source.label()])
                .inc_by(count as u64);
        }
    }

    /// Rows `wanted` of segment `index`: alone when they are fewer than the
    /// rows holding the segment's bytes and each proves itself, else with
    /// the whole segment (then every row holding bytes is returned).
    pub(super) async fn fetch_rows(
        &self,
        metadata: &BlobMetadata,
        index: u32,
        wanted: &[u16],
        slow: &mut SlowNodes,
    ) -> Result<ReadRows, BlobIoError> {
        let layout = segment_layout(metadata, index)?;
        let holding = rows_of(&layout, 0..layout.len() as usize);
        if wanted.len() < holding.len() {
            if let Some(rows) = self.read_rows_alone(metadata, index, wanted, slow).await {
                self.count_rows(RowSource::Alone, rows.len());
                return Ok(rows);
            }
        }
        let data = self.read_segment(metadata, index, slow).await?;
        self.count_rows(RowSource::Segment, wanted.len());
        // Rows decoded from other slivers share one buffer of the whole
        // segment: each is copied out, so that a row kept in the cache
        // does not keep the whole segment alive.
        let shared_buffers = data.parts().len() < holding.len();
        Ok(holding
            .map(|row| {
                let part = one_buffer(data.slice(row_span(&layout, row)));
                let part = if shared_buffers {
                    Bytes::copy_from_slice(&part)
                } else {
                    part
                };
                (row, part)
            })
            .collect())
    }

    /// Each of rows `wanted` from the shard holding its pair, verified
    /// alone; `None` at the first trouble (nodes silent past the hedge
    /// delay are marked slow, nodes answering a sliver that does not prove
    /// itself are counted invalid).
    async fn read_rows_alone(
        &self,
        metadata: &BlobMetadata,
        index: u32,
        wanted: &[u16],
        slow: &mut SlowNodes,
    ) -> Option<ReadRows> {
        let id = metadata.blob_id();
        let rotation = metadata.rotation(index)?;
        let layout = metadata.segment_layout(index)?;
        let limit = (SLIVER_OVERHEAD + layout.primary_sliver_len()) as u64;
        let mut asking = FuturesUnordered::new();
        let mut pending = Vec::new();
        for &row in wanted {
            let shard = rotation.shard_of_pair(row.into()) as u16;
            let (node, call) = self.holder(shard)?;
            if slow.contains(&node.name) || self.ask_last(&node.name) {
                return None;
            }
            let name = node.name.clone();
            pending.push(name.clone());
            asking.push(async move {
                let answer = call
                    .sliver(&id, index, shard, SliverKind::Primary, limit)
                    .await;
                (name, row, answer)
            });
        }
        let mut fetched = Vec::with_capacity(wanted.len());
        while !asking.is_empty() {
            let Ok(Some((node, row, answer))) =
                tokio::time::timeout(HEDGE_AFTER, asking.next()).await
            else {
                // Each node once, however many of its rows were asked.
                let late: std::collections::BTreeSet<String> = pending.into_iter().collect();
                for node in late {
                    self.unanswered(&node, Unanswered::Slow);
                    slow.insert(node);
                }
                return None;
            };
            if let Some(at) = pending.iter().position(|n| *n == node) {
                pending.remove(at);
            }
            let sliver = match answer {
                Ok(Some(bytes)) => PrimarySliver::from_shared(bytes.into()).ok(),
                Ok(None) => return None,
                Err(e) => {
                    if matches!(e, super::NodeCallError::TooLarge { .. }) {
                        self.invalid_from(&node);
                    }
                    if e.is_silence() {
                        self.unanswered(&node, Unanswered::Silent);
                        slow.insert(node.clone());
                    }
                    tracing::debug!(%node, row, "row {row} of segment {index} of {id}: {e}");
                    return None;
                }
            };
            match sliver {
                Some(sliver) if sliver.index() == row => fetched.push((node, sliver)),
                // Not the pair this shard holds (a replayed sliver), or garbage.
                _ => {
                    self.invalid_from(&node);
                    return None;
                }
            }
        }
        let metadata = metadata.clone();
        let metrics = self.metrics.clone();
        let verdicts = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let verdicts: Vec<(String, u16, Result<Bytes, VerifyError>)> = fetched
                .par_iter()
                .map(|(node, sliver)| {
                    let row = verified_row(&metadata, index, sliver);
                    if let Err(e) = &row {
                        tracing::warn!(%node, "row of segment {index} of {}: {e}", metadata.blob_id());
                    }
                    (node.clone(), sliver.index(), row)
                })
                .collect();
            if let Some(m) = &metrics {
                m.decode_duration.observe(start.elapsed().as_secs_f64());
            }
            verdicts
        })
        .await
        .expect("row verification task");
        let mut rows = ReadRows::new();
        for (node, row, verdict) in verdicts {
            match verdict {
                Ok(bytes) => {
                    rows.insert(row, bytes);
                }
                // The writer's fault: the whole read that follows reports it.
                Err(VerifyError::NonZeroPadding { .. }) => {}
                Err(_) => self.invalid_from(&node),
            }
        }
        (rows.len() == wanted.len()).then_some(rows)
    }
}

/// The layout of segment `index` of the blob.
pub(super) fn segment_layout(
    metadata: &BlobMetadata,
    index: u32,
) -> Result<SegmentLayout, BlobIoError> {
    metadata
        .segment_layout(index)
        .ok_or_else(|| BlobIoError::Unreadable {
            id: metadata.blob_id(),
            segment: index,
            reason: "no such segment".into(),
        })
}

/// The bytes as one buffer: shared when they lie in one part (a row of a
/// decoded segment always does), copied otherwise.
fn one_buffer(data: SegmentData) -> Bytes {
    match data.parts() {
        [] => Bytes::new(),
        [one] => one.clone(),
        _ => Bytes::from(data.to_vec()),
    }
}
