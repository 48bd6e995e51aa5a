//! The first pass of a write, run while the upload arrives: each segment's
//! hashes are computed as soon as the segment is complete, so the blob's
//! metadata is ready when its last byte is. A blob of one segment is
//! encoded whole (and its slivers kept for shipping). Each segment held
//! (arriving, or being hashed) is reserved from the process's upload
//! memory budget first, when there is one.

use std::time::Instant;

use tokio::task::JoinHandle;

use super::blob_client::BlobIoError;
use super::cpu;
use super::memory_budget::{self, segment_footprint, MemoryBudget, MemoryReservation};
use crate::codec::{
    encode_segment_shared, segment_hashes, BlobEncoder, BlobLayout, BlobMetadata, EncodeError,
    EncodedSegment, SegmentHashes,
};
use crate::metrics::GatewayMetrics;

/// What the first pass yields: the metadata, and the encoded segment of a
/// one-segment blob.
pub struct Prepared {
    /// The blob's metadata.
    pub metadata: BlobMetadata,
    /// Segment 0, encoded, when it is the only one.
    pub first: Option<EncodedSegment>,
    /// The memory budget reserved for `first`, held until it is shipped.
    pub held: MemoryReservation,
}

/// Cuts an upload into segments as it arrives and hashes each complete
/// one on rayon's pool, one at a time, while the next arrives.
pub struct Preparer {
    encoder: BlobEncoder,
    metrics: Option<GatewayMetrics>,
    memory: Option<MemoryBudget>,
    /// Bytes the upload says it has, when it says.
    expected: Option<u64>,
    pending: Vec<u8>,
    /// The budget reserved for the segment in `pending`.
    pending_held: MemoryReservation,
    hashes: Vec<SegmentHashes>,
    /// The segment being hashed (holding its reservation until it is).
    hashing: Option<JoinHandle<std::io::Result<SegmentHashes>>>,
    total: u64,
}

impl Preparer {
    /// A first pass for blobs encoded by `encoder`; segments held are
    /// reserved from `memory` when given.
    pub fn new(
        encoder: BlobEncoder,
        metrics: Option<GatewayMetrics>,
        memory: Option<MemoryBudget>,
    ) -> Self {
        Self {
            encoder,
            metrics,
            memory,
            expected: None,
            pending: Vec::new(),
            pending_held: MemoryReservation::default(),
            hashes: Vec::new(),
            hashing: None,
            total: 0,
        }
    }

    /// Tells how many bytes the upload declares, so that a short blob
    /// reserves only what it needs.
    pub fn expect_len(&mut self, len: Option<u64>) {
        self.expected = len;
    }

    /// Reserves the budget for the segment starting at `self.total` and
    /// makes room for its bytes at once (no regrowing).
    async fn start_segment(&mut self) {
        let segment_size = self.encoder.segment_size();
        let len = match self.expected {
            Some(expected) if expected > self.total => (expected - self.total).min(segment_size),
            _ => segment_size,
        };
        let config = self.encoder.config();
        self.pending_held =
            memory_budget::reserve(self.memory.as_ref(), segment_footprint(&config, len)).await;
        self.pending = Vec::with_capacity(len as usize);
    }

    /// Takes the next bytes of the upload. A segment is hashed once a byte
    /// past it arrives (until then it may be the only one); this waits
    /// while the segment before is still being hashed.
    pub async fn push(&mut self, mut chunk: &[u8]) -> Result<(), BlobIoError> {
        let segment_size = self.encoder.segment_size() as usize;
        while !chunk.is_empty() {
            if self.pending.len() == segment_size {
                self.hash_pending().await?;
            }
            if self.pending.is_empty() {
                self.start_segment().await;
            }
            let take = (segment_size - self.pending.len()).min(chunk.len());
            self.pending.extend_from_slice(&chunk[..take]);
            self.total += take as u64;
            chunk = &chunk[take..];
        }
        Ok(())
    }

    async fn hash_pending(&mut self) -> Result<(), BlobIoError> {
        self.collect().await?;
        // Refuse a too-large blob before spending work on its segment.
        self.layout()?;
        let data = std::mem::take(&mut self.pending);
        let held = std::mem::take(&mut self.pending_held);
        let config = self.encoder.config();
        let metrics = self.metrics.clone();
        // The reservation goes with the segment and is given back as soon
        // as it is hashed: this upload may be waiting for it to go on.
        self.hashing = Some(tokio::spawn(cpu::run(move || {
            let start = Instant::now();
            let hashes = segment_hashes(config, &data);
            observe(&metrics, start);
            drop((data, held));
            hashes
        })));
        Ok(())
    }

    async fn collect(&mut self) -> Result<(), BlobIoError> {
        if let Some(hashing) = self.hashing.take() {
            let hashes = hashing
                .await
                .map_err(|e| BlobIoError::Io(std::io::Error::other(e)))??;
            self.hashes.push(hashes);
        }
        Ok(())
    }

    fn layout(&self) -> Result<BlobLayout, BlobIoError> {
        BlobLayout::new(
            self.encoder.config(),
            self.encoder.segment_size(),
            self.total,
        )
        .map_err(|e| BlobIoError::Encode(EncodeError::Config(e)))
    }

    /// The upload ended: the last segment is hashed (or, when it is the
    /// only one, encoded) and the metadata built.
    pub async fn finish(mut self) -> Result<Prepared, BlobIoError> {
        self.collect().await?;
        let layout = self.layout()?;
        let config = self.encoder.config();
        let data = std::mem::take(&mut self.pending);
        let held = std::mem::take(&mut self.pending_held);
        let metrics = self.metrics.clone();
        let index = self.hashes.len() as u32;
        let (first, held) = if index == 0 {
            let segment = cpu::run(move || {
                let start = Instant::now();
                let segment = encode_segment_shared(config, 0, bytes::Bytes::from(data));
                observe(&metrics, start);
                segment
            })
            .await?;
            self.hashes.push(segment.hashes.clone());
            (Some(segment), held)
        } else {
            let hashes = cpu::run(move || {
                let start = Instant::now();
                let hashes = segment_hashes(config, &data);
                observe(&metrics, start);
                drop((data, held));
                hashes
            })
            .await?;
            self.hashes.push(hashes);
            (None, MemoryReservation::default())
        };
        let metadata = BlobMetadata::new(layout, self.hashes)
            .map_err(|e| BlobIoError::Io(std::io::Error::other(e)))?;
        Ok(Prepared {
            metadata,
            first,
            held,
        })
    }
}

fn observe(metrics: &Option<GatewayMetrics>, start: Instant) {
    if let Some(m) = metrics {
        m.encode_duration.observe(start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::EncodingConfig;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn the_streamed_metadata_is_the_encoders_whatever_the_chunks() {
        let config = EncodingConfig::new(7).unwrap();
        let segment = 4096u64;
        let encoder = BlobEncoder::new(config, segment).unwrap();
        for len in [0, 1, 4095, 4096, 4097, 8192, 8197, 3 * 4096 + 100] {
            let data = bytes(len);
            let (expected, segments) = encoder.encode(&data).unwrap();
            for chunk in [1usize, 7, 1000, 4096, 5000, 1 << 20] {
                let mut preparer = Preparer::new(encoder, None, None);
                for piece in data.chunks(chunk) {
                    preparer.push(piece).await.unwrap();
                }
                let prepared = preparer.finish().await.unwrap();
                assert_eq!(prepared.metadata, expected, "len {len}, chunks of {chunk}");
                assert_eq!(
                    prepared.first.map(|s| s.primary),
                    (segments.len() == 1).then(|| segments[0].primary.clone()),
                    "len {len}: only a one-segment blob keeps its encoding"
                );
            }
        }
    }
}
