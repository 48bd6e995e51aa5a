//! Writing a blob: stage, ship, commit.
//!
//! 1. Encode once to compute the metadata (the blob id commits to every
//!    segment, and nodes verify each sliver against it). A one-segment
//!    blob is encoded once; a longer one is encoded again while shipping.
//! 2. Ask the fleet about the blob and pick a generation above every one
//!    seen (a later write of deleted bytes must win over the tombstone).
//! 3. Stage: the metadata, with the generation, to every node.
//! 4. Ship each segment's pairs to their shards' nodes, all in parallel. A
//!    node that does not answer within its deadline gets nothing more of
//!    this write (the loop repairs its shards later).
//! 5. When every segment reached n - f shards, commit on every node that
//!    is answering; the write is durable and visible once nodes holding
//!    n - f shards acknowledged the commit, and only then is it answered.
//!
//! A write that fails before its commit leaves only staged pieces: aborted
//! on the nodes that answer, collected after their TTL elsewhere, never
//! visible. A commit that reaches too few shards (more than f nodes went
//! silent in between) is withdrawn with a tombstone of the write's own
//! generation, unless the blob was already visible from an earlier write
//! of the same bytes (then nothing changes for readers).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use futures_util::future::join_all;

use super::blob_client::{BlobClient, BlobIoError};
use super::quorum::collect_states;
use crate::blob_state::{next_generation, now_nanos, Verdict};
use crate::codec::{encode_segment, BlobEncoder, BlobMetadata, EncodedSegment, SliverKind};
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
}

/// Nodes this write no longer sends to, because they went silent.
#[derive(Default)]
struct Silenced(BTreeSet<String>);

impl BlobClient {
    /// Writes the blob held in the file at `path`.
    pub async fn write_file(&self, path: &Path) -> Result<WriteOutcome, BlobIoError> {
        let config = self.config()?;
        let quorum = self.quorum()?;
        let encoder = BlobEncoder::new(config, self.map.segment_size)
            .map_err(crate::codec::EncodeError::from)?;
        let len = std::fs::metadata(path)?.len();
        let single = len <= self.map.segment_size;
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

        let before = collect_states(self, &id, quorum).await;
        let generation = next_generation(now_nanos(), before.generations());
        let was_visible = matches!(before.verdict(), Verdict::Visible(_));
        let mut silenced = Silenced(before.silent.clone());

        let staged = self.stage(&metadata, generation, &mut silenced).await;
        let mut acknowledged: BTreeSet<u16> = staged.clone();
        let mut file = File::open(path)?;
        let mut next_first = first;
        for index in 0..metadata.segment_count() as u32 {
            let segment = match next_first.take() {
                Some(segment) => segment,
                None => self.encode_again(&metadata, &mut file, index).await?,
            };
            let acked = self
                .ship_segment(&metadata, &segment, &acknowledged, &mut silenced)
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

        let committed = self.commit(&metadata, generation, &silenced).await;
        if committed < quorum {
            let outcome = if was_visible {
                "the blob stays as it was (visible from an earlier write of the same bytes)"
                    .to_string()
            } else {
                self.withdraw(&metadata, generation, &silenced).await
            };
            return Err(BlobIoError::CommitFailed {
                acknowledged: committed,
                needed: quorum,
                outcome,
            });
        }
        let n = config.n() as u16;
        Ok(WriteOutcome {
            metadata,
            generation,
            missing: (0..n).filter(|s| !acknowledged.contains(s)).collect(),
            acknowledged,
        })
    }

    async fn encode_again(
        &self,
        metadata: &BlobMetadata,
        file: &mut File,
        index: u32,
    ) -> Result<EncodedSegment, BlobIoError> {
        let layout = metadata.segment_layout(index).expect("index in range");
        file.seek(SeekFrom::Start(
            metadata.layout().segment_offset(index.into()),
        ))?;
        let mut data = vec![0u8; layout.len() as usize];
        file.read_exact(&mut data)?;
        let metrics = self.metrics.clone();
        let config = metadata.config();
        Ok(tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let segment = encode_segment(config, index, &data);
            if let Some(m) = &metrics {
                m.encode_duration.observe(start.elapsed().as_secs_f64());
            }
            segment
        })
        .await
        .expect("encoder task"))
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
    /// the shards that stored both slivers.
    async fn ship_segment(
        &self,
        metadata: &BlobMetadata,
        segment: &EncodedSegment,
        shards: &BTreeSet<u16>,
        silenced: &mut Silenced,
    ) -> BTreeSet<u16> {
        let id = metadata.blob_id();
        let rotation = metadata
            .rotation(segment.index)
            .expect("segment of this blob");
        let sends = shards.iter().filter_map(|&shard| {
            let (node, call) = self.holder(shard)?;
            if silenced.0.contains(&node.name) {
                return None;
            }
            let pair = rotation.pair_of_shard(shard.into());
            let primary = segment.primary[pair].to_bytes();
            let secondary = segment.secondary[pair].to_bytes();
            let index = segment.index;
            Some(async move {
                let result = match call
                    .put_sliver(&id, index, shard, SliverKind::Primary, primary)
                    .await
                {
                    Ok(()) => {
                        call.put_sliver(&id, index, shard, SliverKind::Secondary, secondary)
                            .await
                    }
                    Err(e) => Err(e),
                };
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
                    tracing::warn!(%node, shard, "shipping segment {} of {id}: {e}", segment.index);
                    if e.is_silence() {
                        silenced.0.insert(node);
                    }
                }
            }
        }
        stored
    }

    /// Commits on every answering node; returns the shards of those that
    /// acknowledged.
    async fn commit(&self, metadata: &BlobMetadata, generation: u64, silenced: &Silenced) -> usize {
        let id = metadata.blob_id();
        let nodes: Vec<&MapNode> = self.answering(silenced).collect();
        let answers = join_all(nodes.iter().map(|node| {
            let call = self.client(node);
            async move { call.commit(&id, generation).await }
        }))
        .await;
        nodes
            .into_iter()
            .zip(answers)
            .filter_map(|(node, answer)| match answer {
                Ok(()) => Some(node.shards.len()),
                Err(e) => {
                    tracing::warn!(node = %node.name, "commit of {id}: {e}");
                    None
                }
            })
            .sum()
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

    /// Withdraws a partly committed write with a tombstone of its own
    /// generation (which wins over that commit everywhere); says how far
    /// the tombstone got.
    async fn withdraw(
        &self,
        metadata: &BlobMetadata,
        generation: u64,
        silenced: &Silenced,
    ) -> String {
        let id = metadata.blob_id();
        let nodes: Vec<&MapNode> = self.answering(silenced).collect();
        let answers = join_all(nodes.iter().map(|node| {
            let call = self.client(node);
            async move { call.delete(&id, generation).await }
        }))
        .await;
        let recorded: usize = nodes
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_ok())
            .map(|(n, _)| n.shards.len())
            .sum();
        if recorded > 0 {
            format!("the write was withdrawn (a tombstone on nodes of {recorded} shards): it will not become visible")
        } else {
            "the write could not be withdrawn on any node: whether it becomes visible depends on the nodes that did not answer".to_string()
        }
    }
}
