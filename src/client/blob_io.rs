//! Writing a blob to the fleet and reading it back.
//!
//! Write: the blob (a file, so it can be read twice) is encoded segment by
//! segment. The metadata commits to every segment, and nodes verify every
//! sliver against it before they keep it, so a blob of several segments is
//! read twice: once to compute the metadata, once to encode and ship. A
//! one-segment blob is encoded once. Each segment's pairs go to their
//! shards' nodes in parallel; the write is durable when every segment has
//! n - f shards acknowledged, and the shards still missing are reported.
//!
//! Read: metadata from the first node whose copy matches the blob id (it
//! is self-certifying), then per segment primary slivers from the shards
//! holding the systematic pairs first, more when some are missing or fail
//! verification; decoding checks the result against the blob id. Any f
//! nodes may be down or lying.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use futures_util::future::join_all;
use thiserror::Error;

use crate::client::NodeClient;
use crate::codec::{
    decode_segment, encode_segment, BlobEncoder, BlobId, BlobMetadata, DecodeError, EncodedSegment,
    EncodingConfig, PrimarySliver, SliverKind,
};
use crate::fleet::FleetMap;
use crate::metrics::GatewayMetrics;

/// A failed write or read.
#[derive(Debug, Error)]
pub enum BlobIoError {
    /// Fewer than n - f shards acknowledged a segment.
    #[error("write not durable: segment {segment} reached {acknowledged} shards, {needed} needed")]
    NotDurable {
        /// The segment.
        segment: u32,
        /// Shards that acknowledged it.
        acknowledged: usize,
        /// n - f.
        needed: usize,
    },
    /// No node has valid metadata of the blob.
    #[error("blob {0} not found on any node")]
    NotFound(BlobId),
    /// Not enough valid slivers could be fetched to decode a segment.
    #[error("segment {segment} of blob {id} cannot be read: {reason}")]
    Unreadable {
        /// The blob.
        id: BlobId,
        /// The segment.
        segment: u32,
        /// Why.
        reason: String,
    },
    /// The blob was encoded inconsistently by its writer.
    #[error("blob {0} was encoded inconsistently by its writer and cannot be read")]
    Inconsistent(BlobId),
    /// Reading the input failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The encoding failed (parameters, size).
    #[error(transparent)]
    Encode(#[from] crate::codec::EncodeError),
    /// The fleet map is unusable.
    #[error("fleet map: {0}")]
    Map(String),
}

/// What a write achieved.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The blob's metadata.
    pub metadata: BlobMetadata,
    /// Shards acknowledged in every segment.
    pub acknowledged: BTreeSet<u16>,
    /// Shards missing in at least one segment.
    pub missing: BTreeSet<u16>,
}

/// Reads and writes blobs on a fleet.
#[derive(Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    map: FleetMap,
    metrics: Option<GatewayMetrics>,
}

impl BlobClient {
    /// A client of the fleet described by `map`.
    pub fn new(http: reqwest::Client, map: FleetMap, metrics: Option<GatewayMetrics>) -> Self {
        Self { http, map, metrics }
    }

    fn node(&self, shard: u16) -> Option<(String, NodeClient)> {
        self.map
            .holder(shard)
            .map(|n| (n.name.clone(), NodeClient::new(self.http.clone(), &n.url)))
    }

    fn invalid_from(&self, node: &str) {
        if let Some(m) = &self.metrics {
            m.peer_invalid.with_label_values(&[node]).inc();
        }
    }

    fn config(&self) -> Result<EncodingConfig, BlobIoError> {
        EncodingConfig::new(self.map.shards).map_err(|e| BlobIoError::Map(e.to_string()))
    }

    /// Writes the blob held in the file at `path`.
    pub async fn write_file(&self, path: &Path) -> Result<WriteOutcome, BlobIoError> {
        let config = self.config()?;
        let encoder = BlobEncoder::new(config, self.map.segment_size)
            .map_err(crate::codec::EncodeError::from)?;
        let len = std::fs::metadata(path)?.len();
        let segment_size = self.map.segment_size;
        let single = len <= segment_size;
        let metrics = self.metrics.clone();

        // Pass 1: the metadata (and, for one segment, the encoding itself).
        let path_buf = path.to_path_buf();
        let (metadata, first) = tokio::task::spawn_blocking(move || -> Result<_, BlobIoError> {
            let start = Instant::now();
            let mut first = None;
            let metadata = encoder.encode_reader(File::open(&path_buf)?, |segment| {
                if single {
                    first = Some(segment);
                }
                Ok(())
            })?;
            if let Some(m) = &metrics {
                m.encode_duration.observe(start.elapsed().as_secs_f64());
            }
            Ok((metadata, first))
        })
        .await
        .expect("encoder task")?;

        let id = metadata.blob_id();
        let metadata_bytes = metadata.to_bytes();
        let n = config.n() as u16;
        join_all(
            (0..n)
                .filter_map(|shard| self.node(shard))
                .map(|(_, node)| {
                    let bytes = metadata_bytes.clone();
                    async move { node.put_metadata(&id, bytes).await }
                }),
        )
        .await;

        let mut acknowledged: BTreeSet<u16> = (0..n).collect();
        let mut missing = BTreeSet::new();
        let needed = config.n() - config.f();
        let mut file = File::open(path)?;
        let mut next_first = first;
        for index in 0..metadata.segment_count() as u32 {
            let segment = match next_first.take() {
                Some(segment) => segment,
                None => {
                    let layout = metadata.segment_layout(index).expect("index in range");
                    file.seek(SeekFrom::Start(
                        metadata.layout().segment_offset(index.into()),
                    ))?;
                    let mut data = vec![0u8; layout.len() as usize];
                    file.read_exact(&mut data)?;
                    let metrics = self.metrics.clone();
                    tokio::task::spawn_blocking(move || {
                        let start = Instant::now();
                        let segment = encode_segment(config, index, &data);
                        if let Some(m) = &metrics {
                            m.encode_duration.observe(start.elapsed().as_secs_f64());
                        }
                        segment
                    })
                    .await
                    .expect("encoder task")
                }
            };
            let acked = self.ship_segment(&metadata, &segment).await;
            if acked.len() < needed {
                return Err(BlobIoError::NotDurable {
                    segment: index,
                    acknowledged: acked.len(),
                    needed,
                });
            }
            for shard in 0..n {
                if !acked.contains(&shard) {
                    acknowledged.remove(&shard);
                    missing.insert(shard);
                }
            }
        }
        Ok(WriteOutcome {
            metadata,
            acknowledged,
            missing,
        })
    }

    /// Sends every pair of a segment to its shard; returns the shards that
    /// stored both slivers.
    async fn ship_segment(
        &self,
        metadata: &BlobMetadata,
        segment: &EncodedSegment,
    ) -> BTreeSet<u16> {
        let id = metadata.blob_id();
        let rotation = metadata
            .rotation(segment.index)
            .expect("segment of this blob");
        let n = metadata.config().n();
        let sends = (0..n as u16).filter_map(|shard| {
            let (_, node) = self.node(shard)?;
            let pair = rotation.pair_of_shard(shard.into());
            let primary = segment.primary[pair].to_bytes();
            let secondary = segment.secondary[pair].to_bytes();
            let index = segment.index;
            Some(async move {
                let ok = node
                    .put_sliver(&id, index, shard, SliverKind::Primary, primary)
                    .await
                    .is_ok()
                    && node
                        .put_sliver(&id, index, shard, SliverKind::Secondary, secondary)
                        .await
                        .is_ok();
                ok.then_some(shard)
            })
        });
        join_all(sends).await.into_iter().flatten().collect()
    }

    /// The blob's metadata from the first node whose copy matches its id.
    pub async fn metadata(&self, id: &BlobId) -> Result<BlobMetadata, BlobIoError> {
        for shard in 0..self.map.shards {
            let Some((name, node)) = self.node(shard) else {
                continue;
            };
            let Ok(Some(bytes)) = node.metadata(id).await else {
                continue;
            };
            match BlobMetadata::from_bytes(&bytes) {
                Ok(metadata) if metadata.blob_id() == *id => return Ok(metadata),
                _ => self.invalid_from(&name),
            }
        }
        Err(BlobIoError::NotFound(*id))
    }

    /// Reads segment `index` of a blob.
    pub async fn read_segment(
        &self,
        metadata: &BlobMetadata,
        index: u32,
    ) -> Result<Vec<u8>, BlobIoError> {
        let id = metadata.blob_id();
        let config = metadata.config();
        let p = config.p();
        let rotation = metadata
            .rotation(index)
            .ok_or_else(|| BlobIoError::Unreadable {
                id,
                segment: index,
                reason: "no such segment".into(),
            })?;
        // Shards in the order of the pairs they hold: systematic pairs first.
        let order: Vec<u16> = (0..config.n())
            .map(|pair| rotation.shard_of_pair(pair) as u16)
            .collect();
        let mut candidates = order.into_iter();
        let mut slivers: Vec<(String, PrimarySliver)> = Vec::new();
        let mut wanted = p;
        loop {
            let wave: Vec<u16> = candidates.by_ref().take(wanted).collect();
            let fetched = join_all(wave.into_iter().filter_map(|shard| {
                let (name, node) = self.node(shard)?;
                Some(async move {
                    (
                        name,
                        node.sliver(&id, index, shard, SliverKind::Primary).await,
                    )
                })
            }))
            .await;
            for (name, answer) in fetched {
                if let Ok(Some(bytes)) = answer {
                    match PrimarySliver::from_bytes(&bytes) {
                        Ok(sliver) => slivers.push((name, sliver)),
                        Err(_) => self.invalid_from(&name),
                    }
                }
            }
            if slivers.len() >= p {
                let offered: Vec<PrimarySliver> = slivers.iter().map(|(_, s)| s.clone()).collect();
                let metadata_copy = metadata.clone();
                let metrics = self.metrics.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let start = Instant::now();
                    let result = decode_segment(&metadata_copy, index, offered);
                    if let Some(m) = &metrics {
                        m.decode_duration.observe(start.elapsed().as_secs_f64());
                    }
                    result
                })
                .await
                .expect("decoder task");
                match result {
                    Ok(decoded) => {
                        for bad in &decoded.invalid {
                            if let Some((name, _)) = slivers.iter().find(|(_, s)| s.index() == *bad)
                            {
                                self.invalid_from(name);
                            }
                        }
                        return Ok(decoded.data);
                    }
                    Err(DecodeError::InconsistentEncoding) => {
                        return Err(BlobIoError::Inconsistent(id))
                    }
                    Err(DecodeError::NotEnoughSlivers { invalid, .. }) => {
                        // Drop the slivers that failed verification, then fetch more.
                        slivers.retain(|(name, sliver)| {
                            let bad = invalid.contains(&sliver.index());
                            if bad {
                                self.invalid_from(name);
                            }
                            !bad
                        });
                    }
                    Err(DecodeError::NoSuchSegment { .. }) => {
                        return Err(BlobIoError::Unreadable {
                            id,
                            segment: index,
                            reason: "no such segment".into(),
                        })
                    }
                }
            }
            wanted = p.saturating_sub(slivers.len()).max(1);
            if candidates.len() == 0 {
                return Err(BlobIoError::Unreadable {
                    id,
                    segment: index,
                    reason: format!(
                        "only {} valid primary slivers of {p} needed could be fetched",
                        slivers.len()
                    ),
                });
            }
        }
    }

    /// Deletes a blob from every node; true when any node had it.
    pub async fn delete(&self, id: &BlobId) -> bool {
        let answers = join_all(self.map.nodes.iter().map(|n| {
            let node = NodeClient::new(self.http.clone(), &n.url);
            async move { node.delete(id).await }
        }))
        .await;
        answers.into_iter().any(|a| matches!(a, Ok(true)))
    }
}
