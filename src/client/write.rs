//! Writing a blob: stage, ship, commit.
//!
//! 1. Encode once to compute the metadata (the blob id commits to every
//!    segment, and nodes verify each sliver against it). A one-segment
//!    blob is encoded once; a longer one costs its hashes only here and is
//!    encoded again while shipping, segment k + 1 while segment k ships.
//! 2. Ask the fleet about the blob and pick a generation above every one
//!    seen (a later write of deleted bytes must win over the tombstone).
//! 3. Stage: the metadata, with the generation, to every node.
//! 4. Ship each segment's pairs to their shards' nodes, all in parallel,
//!    both slivers of a pair in one request. A
//!    node that does not answer within its deadline gets nothing more of
//!    this write (the loop repairs its shards later).
//! 5. When every segment reached n - f shards, the write is decided:
//!    commit on every node (`commit`), and answer once nodes of n - f
//!    shards recorded it.
//!
//! Every segment held in memory (encoded ahead, or being shipped) is
//! reserved first from the process's upload memory budget, when there is
//! one (see `memory_budget`).
//!
//! A write that fails before its commit leaves only staged pieces: aborted
//! on the nodes that answer, collected after their TTL elsewhere, never
//! visible. A commit is never withdrawn (a reader may already have seen
//! it); what the commit phase achieved decides the answer (`WriteOutcome`
//! or the error).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::join_all;

use super::blob_client::{BlobClient, BlobIoError};
use super::commit::CommitVerdict;
use super::memory_budget::{self, segment_footprint, MemoryReservation};
use super::prepare::{Prepared, Preparer};
use super::quorum::collect_states;
use crate::blob_state::{next_generation, now_nanos};
use crate::codec::{encode_segment_shared, BlobEncoder, BlobMetadata, EncodedSegment};
use crate::fleet::MapNode;

/// What a write achieved.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The blob's metadata.
    pub metadata: BlobMetadata,
    /// The write's generation.
    pub generation: u64,
    /// Shards acknowledged in every segment.
    pub acknowledged: BTreeSet<u16>,
    /// Shards missing in at least one segment.
    pub missing: BTreeSet<u16>,
    /// Shards whose node recorded the commit when the write answered. Below
    /// n - f (only when more than f nodes stopped answering during the
    /// commit) the write is durable and decided, but a read may not see it
    /// until the fleet carries the commit to the others.
    pub committed: usize,
    /// n - f.
    pub quorum: usize,
}

impl WriteOutcome {
    /// Whether every later read sees the blob (the commit reached nodes of
    /// n - f shards).
    pub fn visible_to_every_read(&self) -> bool {
        self.committed >= self.quorum
    }
}

/// How long the commit phase may last, in small-call deadlines: long
/// enough for a node stopped for one deadline to answer a later attempt.
const COMMIT_WINDOW_CALLS: u32 = 3;

/// Nodes this write no longer sends to, because they went silent.
#[derive(Default)]
struct Silenced(BTreeSet<String>);

impl BlobClient {
    /// Writes the blob held in the file at `path`.
    pub async fn write_file(&self, path: &Path) -> Result<WriteOutcome, BlobIoError> {
        self.write_file_announced(path, |_| async { Ok(()) }).await
    }

    /// Writes the blob held in the file at `path`; `announce` learns its
    /// id before anything is sent to a node (an index notes it, so a blob
    /// whose writer dies is never unknown), and its error ends the write.
    pub async fn write_file_announced<F, Fut>(
        &self,
        path: &Path,
        announce: F,
    ) -> Result<WriteOutcome, BlobIoError>
    where
        F: FnOnce(crate::codec::BlobId) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let prepared = self.prepare_file(path).await?;
        self.write_prepared(path, prepared, announce).await
    }

    /// The first pass over a blob already in a file: its metadata (and,
    /// for one segment, its encoding).
    pub async fn prepare_file(&self, path: &Path) -> Result<Prepared, BlobIoError> {
        let encoder = self.encoder()?;
        let len = std::fs::metadata(path)?.len();
        let single = len <= self.map.segment_size;
        // One segment at a time is held: read, hashed (or, alone, kept).
        let footprint = segment_footprint(&encoder.config(), len.min(self.map.segment_size));
        let held = memory_budget::reserve(self.memory.as_ref(), footprint).await;
        let metrics = self.metrics.clone();
        let path_buf = path.to_path_buf();
        super::cpu::run(move || -> Result<_, BlobIoError> {
            let start = Instant::now();
            let mut first = None;
            let metadata = encoder.encode_reader_keeping(
                File::open(&path_buf)?,
                |_| single,
                |segment| {
                    first = Some(segment);
                    Ok(())
                },
            )?;
            if let Some(m) = &metrics {
                m.encode_duration.observe(start.elapsed().as_secs_f64());
            }
            let held = if first.is_some() {
                held
            } else {
                MemoryReservation::default()
            };
            Ok(Prepared {
                metadata,
                first,
                held,
            })
        })
        .await?
    }

    /// A first pass to feed an upload as it arrives (see [`Preparer`]).
    pub fn preparer(&self) -> Result<Preparer, BlobIoError> {
        Ok(Preparer::new(
            self.encoder()?,
            self.metrics.clone(),
            self.memory.clone(),
        ))
    }

    fn encoder(&self) -> Result<BlobEncoder, BlobIoError> {
        Ok(BlobEncoder::new(self.config()?, self.map.segment_size)
            .map_err(crate::codec::EncodeError::from)?)
    }

    /// Writes the blob held in the file at `path`, whose first pass is
    /// `prepared`; `announce` as for [`Self::write_file_announced`].
    pub async fn write_prepared<F, Fut>(
        &self,
        path: &Path,
        prepared: Prepared,
        announce: F,
    ) -> Result<WriteOutcome, BlobIoError>
    where
        F: FnOnce(crate::codec::BlobId) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let config = self.config()?;
        let quorum = self.quorum()?;
        let Prepared {
            metadata,
            first,
            held,
        } = prepared;
        if metadata.config() != config || metadata.layout().segment_size() != self.map.segment_size
        {
            return Err(BlobIoError::Map(
                "the blob was prepared for other encoding parameters than the fleet's".into(),
            ));
        }
        let id = metadata.blob_id();
        announce(id).await.map_err(BlobIoError::Announce)?;

        let before = collect_states(self, &id, quorum).await;
        let generation = next_generation(now_nanos(), before.generations());
        let mut silenced = Silenced(before.silent.clone());

        let staged = self.stage(&metadata, generation, &mut silenced).await;
        let mut acknowledged: BTreeSet<u16> = staged.clone();
        // Segment k + 1 is read and encoded while segment k is shipped.
        let count = metadata.segment_count() as u32;
        let mut next = Some(match first {
            Some(segment) => tokio::spawn(async move { Ok((segment, held)) }),
            None => self.encode_again(&metadata, path, 0),
        });
        for index in 0..count {
            let (segment, _held) = next
                .take()
                .expect("each segment is encoded ahead")
                .await
                .expect("encoder task")?;
            if index + 1 < count {
                next = Some(self.encode_again(&metadata, path, index + 1));
            }
            let acked = self
                .ship_segment(&metadata, segment, &acknowledged, &mut silenced)
                .await;
            acknowledged.retain(|s| acked.contains(s));
            let reached = self.segment_reach(&staged, &acked);
            if reached < quorum {
                self.abort(&metadata, generation, &silenced).await;
                return Err(BlobIoError::NotDurable {
                    segment: index,
                    acknowledged: reached,
                    needed: quorum,
                });
            }
        }

        let window = self.calls.deadlines.call * COMMIT_WINDOW_CALLS;
        let committed = match self.commit_phase(&id, generation, quorum, window).await {
            CommitVerdict::Committed => quorum,
            CommitVerdict::Partial { acknowledged } => acknowledged,
            CommitVerdict::Refused => {
                self.abort(&metadata, generation, &silenced).await;
                return Err(BlobIoError::CommitRefused { needed: quorum });
            }
            CommitVerdict::Unknown => return Err(BlobIoError::CommitUnknown { needed: quorum }),
        };
        let n = config.n() as u16;
        Ok(WriteOutcome {
            metadata,
            generation,
            missing: (0..n).filter(|s| !acknowledged.contains(s)).collect(),
            acknowledged,
            committed,
            quorum,
        })
    }

    /// Reserves the memory for segment `index` of the blob in the file at
    /// `path`, then reads and encodes it on rayon's pool; the
    /// reservation comes back with the segment, to be held until it is
    /// shipped.
    fn encode_again(
        &self,
        metadata: &BlobMetadata,
        path: &Path,
        index: u32,
    ) -> tokio::task::JoinHandle<Result<(EncodedSegment, MemoryReservation), BlobIoError>> {
        let layout = metadata.segment_layout(index).expect("index in range");
        let offset = metadata.layout().segment_offset(index.into());
        let metrics = self.metrics.clone();
        let config = metadata.config();
        let path = path.to_path_buf();
        let memory = self.memory.clone();
        tokio::spawn(async move {
            let footprint = segment_footprint(&config, layout.len());
            let held = memory_budget::reserve(memory.as_ref(), footprint).await;
            let segment =
                Self::read_and_encode(path, offset, index, layout, config, metrics).await?;
            Ok((segment, held))
        })
    }

    /// Reads one segment of a file and encodes it, on rayon's pool.
    async fn read_and_encode(
        path: std::path::PathBuf,
        offset: u64,
        index: u32,
        layout: crate::codec::SegmentLayout,
        config: crate::codec::EncodingConfig,
        metrics: Option<crate::metrics::GatewayMetrics>,
    ) -> Result<EncodedSegment, BlobIoError> {
        super::cpu::run(move || -> Result<EncodedSegment, BlobIoError> {
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut data = vec![0u8; layout.len() as usize];
            file.read_exact(&mut data)?;
            let start = Instant::now();
            let segment = encode_segment_shared(config, index, Bytes::from(data));
            if let Some(m) = &metrics {
                m.encode_duration.observe(start.elapsed().as_secs_f64());
            }
            Ok(segment)
        })
        .await?
    }

    /// Shards that got a segment, counting only those that staged it.
    fn segment_reach(&self, staged: &BTreeSet<u16>, acked: &BTreeSet<u16>) -> usize {
        acked.intersection(staged).count()
    }

    /// Nodes that hold shards and are still answering this write.
    fn answering<'a>(&'a self, silenced: &'a Silenced) -> impl Iterator<Item = &'a MapNode> + 'a {
        self.holders().filter(|n| !silenced.0.contains(&n.name))
    }

    /// Sends the metadata to every answering node; returns the shards of
    /// those that staged it.
    async fn stage(
        &self,
        metadata: &BlobMetadata,
        generation: u64,
        silenced: &mut Silenced,
    ) -> BTreeSet<u16> {
        let id = metadata.blob_id();
        let bytes = metadata.to_bytes();
        let nodes: Vec<MapNode> = self.answering(silenced).cloned().collect();
        let answers = join_all(nodes.iter().map(|node| {
            let call = self.client(node);
            let bytes = bytes.clone();
            async move { call.put_metadata(&id, generation, bytes).await }
        }))
        .await;
        let mut staged = BTreeSet::new();
        for (node, answer) in nodes.into_iter().zip(answers) {
            match answer {
                Ok(()) => staged.extend(node.shards.iter().copied()),
                Err(e) => {
                    tracing::warn!(node = %node.name, "staging {id}: {e}");
                    if e.is_silence() {
                        silenced.0.insert(node.name.clone());
                    }
                }
            }
        }
        staged
    }

    /// Sends every pair of a segment to its shard (among `shards`); returns
    /// the shards that stored both slivers. The slivers' bytes are sent as
    /// they are, never copied per request.
    async fn ship_segment(
        &self,
        metadata: &BlobMetadata,
        segment: EncodedSegment,
        shards: &BTreeSet<u16>,
        silenced: &mut Silenced,
    ) -> BTreeSet<u16> {
        let id = metadata.blob_id();
        let index = segment.index;
        let rotation = metadata.rotation(index).expect("segment of this blob");
        let pairs: Vec<[Bytes; 4]> = segment
            .primary
            .into_iter()
            .zip(segment.secondary)
            .map(|(primary, secondary)| {
                [
                    Bytes::from(primary.header_bytes()),
                    primary.into_data(),
                    Bytes::from(secondary.header_bytes()),
                    secondary.into_data(),
                ]
            })
            .collect();
        let sends = shards.iter().filter_map(|&shard| {
            let (node, call) = self.holder(shard)?;
            if silenced.0.contains(&node.name) {
                return None;
            }
            let parts = pairs[rotation.pair_of_shard(shard.into())].to_vec();
            Some(async move {
                let result = call.put_pair(&id, index, shard, parts).await;
                (node.name.clone(), shard, result)
            })
        });
        let mut stored = BTreeSet::new();
        for (node, shard, result) in join_all(sends).await {
            match result {
                Ok(()) => {
                    stored.insert(shard);
                }
                Err(e) => {
                    tracing::warn!(%node, shard, "shipping segment {index} of {id}: {e}");
                    if e.is_silence() {
                        silenced.0.insert(node);
                    }
                }
            }
        }
        stored
    }

    /// Best effort: tells answering nodes the staged write will never commit.
    async fn abort(&self, metadata: &BlobMetadata, generation: u64, silenced: &Silenced) {
        let id = metadata.blob_id();
        join_all(self.answering(silenced).map(|node| {
            let call = self.client(node);
            async move {
                if let Err(e) = call.abort(&id, generation).await {
                    tracing::debug!(node = %node.name, "abort of {id}: {e}");
                }
            }
        }))
        .await;
    }
}
