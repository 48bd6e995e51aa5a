//! Reading a blob: is it visible, its metadata, its segments.
//!
//! Visibility is decided by the markers of a quorum of shards (a delete or
//! a commit acknowledged by a quorum is always among them). Metadata is
//! self-certifying (it hashes to the blob id): it is fetched from two
//! holders at once, capped at the length most shards report, and the first
//! copy that matches the id wins (the other is still received, in the
//! background, keeping its connection). A segment is read from primary slivers,
//! the shards holding the systematic pairs first; a shard that is slow is
//! hedged by asking the next one, a sliver that is not the pair its shard
//! holds is refused, and the decode re-derives the hashes, so only the
//! blob's exact bytes are returned while any f nodes are down or lying.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::blob_client::{BlobClient, BlobIoError};
use super::quorum::{collect_states, StateCollection};
use super::unanswering::Unanswered;
use crate::blob_state::Verdict;
use crate::codec::format::SLIVER_OVERHEAD;
use crate::codec::{
    decode_segment, BlobId, BlobMetadata, DecodeError, PrimarySliver, SegmentData, SliverKind,
};
use crate::fleet::MapNode;

/// How long a sliver request may run before the next shard is asked too.
pub(super) const HEDGE_AFTER: Duration = Duration::from_secs(2);

/// A blob that is visible, with its metadata.
#[derive(Debug, Clone)]
pub struct VisibleBlob {
    /// The metadata.
    pub metadata: BlobMetadata,
    /// The generation of its newest commit.
    pub generation: u64,
}

/// Nodes that were slow during one read: asked last for later segments.
#[derive(Debug, Default, Clone)]
pub struct SlowNodes(BTreeSet<String>);

impl SlowNodes {
    /// Adds the nodes `other` found slow.
    pub fn merge(&mut self, other: SlowNodes) {
        self.0.extend(other.0);
    }

    /// Whether `node` was found slow.
    pub fn contains(&self, node: &str) -> bool {
        self.0.contains(node)
    }

    /// Marks `node` slow.
    pub fn insert(&mut self, node: String) {
        self.0.insert(node);
    }
}

impl BlobClient {
    /// Whether the blob is visible; its metadata if so.
    pub async fn visible(&self, id: &BlobId) -> Result<VisibleBlob, BlobIoError> {
        let quorum = self.quorum()?;
        let states = collect_states(self, id, quorum).await;
        if states.answered_shards() < quorum {
            return Err(BlobIoError::NoQuorum {
                id: *id,
                answered: states.answered_shards(),
                needed: quorum,
            });
        }
        match states.verdict() {
            Verdict::Visible(generation) => Ok(VisibleBlob {
                metadata: self.fetch_metadata(id, &states).await?,
                generation,
            }),
            _ => Err(BlobIoError::NotFound(*id)),
        }
    }

    /// Whether the fleet may hold, or be storing, `id`: false only when
    /// a quorum of shards answered and no write of it is committed or
    /// staged (never stored, or deleted). Too few answers: true.
    pub async fn may_hold(&self, id: &BlobId) -> bool {
        let Ok(quorum) = self.quorum() else {
            return true;
        };
        let states = collect_states(self, id, quorum).await;
        states.answered_shards() < quorum
            || !matches!(
                states.verdict(),
                crate::blob_state::Verdict::Absent | crate::blob_state::Verdict::Deleted(_)
            )
    }

    /// The blob's metadata from the first holder whose copy matches its id,
    /// asking two at a time; the other copy asked for is still received
    /// (in the background), so its node's connection stays pooled.
    pub async fn fetch_metadata(
        &self,
        id: &BlobId,
        states: &StateCollection,
    ) -> Result<BlobMetadata, BlobIoError> {
        let config = self.config()?;
        let claims = states.layout_claims();
        if claims.is_empty() {
            return Err(BlobIoError::MetadataUnavailable {
                id: *id,
                reason: "no answering node holds its metadata".into(),
            });
        }
        // The holders of the claim most shards report first, then those of
        // any other (a lying majority of the answers cannot hide it).
        let mut ordered: Vec<(&MapNode, u64)> = Vec::new();
        for ((_, segments), names) in &claims {
            let limit = config.metadata_len(u64::from(*segments));
            for name in names {
                if let Some(node) = self.map.nodes.iter().find(|n| n.name == *name) {
                    ordered.push((node, limit));
                }
            }
        }
        let mut holders = ordered.into_iter();
        let mut asking = FuturesUnordered::new();
        let found = loop {
            while asking.len() < 2 {
                let Some((node, limit)) = holders.next() else {
                    break;
                };
                let (call, name, id) = (self.client(node), node.name.clone(), *id);
                asking.push(async move { (name, call.metadata(&id, limit).await) });
            }
            let Some((node, answer)) = asking.next().await else {
                // Committed, but no holder gave a valid copy now (silent,
                // failing, or lying): unavailable, not absent.
                break Err(BlobIoError::MetadataUnavailable {
                    id: *id,
                    reason: "no holder answered with a valid copy of its metadata".into(),
                });
            };
            match answer {
                Ok(Some(bytes)) => match BlobMetadata::from_bytes(&bytes) {
                    Ok(metadata) if metadata.blob_id() == *id => break Ok(metadata),
                    _ => self.invalid_from(&node),
                },
                Ok(None) => {}
                Err(e) => {
                    if matches!(e, super::NodeCallError::TooLarge { .. }) {
                        self.invalid_from(&node);
                    }
                    if e.is_silence() {
                        self.unanswered(&node, Unanswered::Silent);
                    }
                    tracing::debug!(%node, "metadata of {id}: {e}");
                }
            }
        };
        // The other copy asked for is heard out, keeping its connection.
        super::hear_out_in_background(asking);
        found
    }

    /// Reads segment `index` of a blob; `slow` carries the nodes found
    /// slow from one segment to the next.
    pub async fn read_segment(
        &self,
        metadata: &BlobMetadata,
        index: u32,
        slow: &mut SlowNodes,
    ) -> Result<SegmentData, BlobIoError> {
        let id = metadata.blob_id();
        let config = metadata.config();
        let p = config.p();
        let unreadable = |reason: String| BlobIoError::Unreadable {
            id,
            segment: index,
            reason,
        };
        let rotation = metadata
            .rotation(index)
            .ok_or_else(|| unreadable("no such segment".into()))?;
        let layout = metadata.segment_layout(index).expect("segment exists");
        let limit = (SLIVER_OVERHEAD + layout.primary_sliver_len()) as u64;
        // Shards in the order of the pairs they hold (systematic first),
        // the slow ones (in this read, or lately in any) last.
        let mut order: Vec<u16> = (0..config.n())
            .map(|pair| rotation.shard_of_pair(pair) as u16)
            .filter(|shard| self.map.holder(*shard).is_some())
            .collect();
        order.sort_by_key(|shard| {
            self.map
                .holder(*shard)
                .is_some_and(|n| slow.0.contains(&n.name) || self.ask_last(&n.name))
        });
        let mut candidates = order.into_iter();
        let mut valid: Vec<(String, PrimarySliver)> = Vec::new();
        let mut asking = FuturesUnordered::new();
        // Nodes asked and not answered yet, since when.
        let mut pending: Vec<(String, Instant)> = Vec::new();
        let ask = |shard: u16| {
            let (node, call) = self.holder(shard).expect("filtered to held shards");
            let name = node.name.clone();
            async move {
                let answer = call
                    .sliver(&id, index, shard, SliverKind::Primary, limit)
                    .await;
                (name, shard, answer)
            }
        };
        loop {
            while valid.len() + asking.len() < p {
                let Some(shard) = candidates.next() else {
                    break;
                };
                pending.push((
                    self.map.holder(shard).expect("held").name.clone(),
                    Instant::now(),
                ));
                asking.push(ask(shard));
            }
            if asking.is_empty() {
                if valid.len() >= p {
                    match self.decode(metadata, index, &mut valid).await? {
                        Some(data) => return Ok(data),
                        None => continue,
                    }
                }
                return Err(unreadable(format!(
                    "only {} valid primary slivers of {p} needed could be fetched",
                    valid.len()
                )));
            }
            let next = tokio::time::timeout(HEDGE_AFTER, asking.next()).await;
            let Ok(Some((node, shard, answer))) = next else {
                // Slow answers: ask one more shard beside them.
                if let Some(shard) = candidates.next() {
                    pending.push((
                        self.map.holder(shard).expect("held").name.clone(),
                        Instant::now(),
                    ));
                    asking.push(ask(shard));
                }
                continue;
            };
            if let Some(at) = pending.iter().position(|(n, _)| *n == node) {
                pending.remove(at);
            }
            let expected = rotation.pair_of_shard(shard.into()) as u16;
            match answer {
                Ok(Some(bytes)) => match PrimarySliver::from_shared(bytes.into()) {
                    Ok(sliver) if sliver.index() == expected && sliver.segment() == index => {
                        valid.push((node, sliver));
                    }
                    // Not the pair this shard holds (a replayed sliver), or garbage.
                    _ => self.invalid_from(&node),
                },
                Ok(None) => {}
                Err(e) => {
                    if matches!(e, super::NodeCallError::TooLarge { .. }) {
                        self.invalid_from(&node);
                    }
                    if e.is_silence() {
                        self.unanswered(&node, Unanswered::Silent);
                        slow.0.insert(node.clone());
                    }
                    tracing::debug!(%node, shard, "sliver {index} of {id}: {e}");
                }
            }
            if valid.len() >= p {
                // Enough to decode: drop the pending requests. Those asked
                // longer than the hedge delay ago were slow, as of now (not
                // after the decode, nor after a retry if it fails).
                asking.clear();
                for node in past_hedge(&pending) {
                    self.unanswered(&node, Unanswered::Slow);
                    slow.0.insert(node);
                }
                pending.clear();
            }
        }
    }

    /// Decodes from the slivers held; `None` when some were invalid (they
    /// are dropped and their nodes counted, so the caller fetches more).
    async fn decode(
        &self,
        metadata: &BlobMetadata,
        index: u32,
        valid: &mut Vec<(String, PrimarySliver)>,
    ) -> Result<Option<SegmentData>, BlobIoError> {
        let id = metadata.blob_id();
        let offered: Vec<PrimarySliver> = valid.iter().map(|(_, s)| s.clone()).collect();
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
        let blame = |invalid: &[u16], valid: &mut Vec<(String, PrimarySliver)>| {
            valid.retain(|(name, sliver)| {
                let bad = invalid.contains(&sliver.index());
                if bad {
                    self.invalid_from(name);
                }
                !bad
            });
        };
        match result {
            Ok(decoded) => {
                blame(&decoded.invalid, valid);
                Ok(Some(decoded.data))
            }
            Err(DecodeError::InconsistentEncoding) => Err(BlobIoError::Inconsistent(id)),
            Err(DecodeError::NotEnoughSlivers { invalid, .. }) => {
                let before = valid.len();
                blame(&invalid, valid);
                if valid.len() == before {
                    return Err(BlobIoError::Unreadable {
                        id,
                        segment: index,
                        reason: "the slivers offered do not decode".into(),
                    });
                }
                Ok(None)
            }
            Err(DecodeError::NoSuchSegment { .. }) => Err(BlobIoError::Unreadable {
                id,
                segment: index,
                reason: "no such segment".into(),
            }),
        }
    }
}

/// Nodes still not answering after the hedge delay when enough slivers
/// to decode had come: slow, asked last for the next segments (and reads
/// after). Each once, however many of its shards were asked.
fn past_hedge(pending: &[(String, Instant)]) -> std::collections::BTreeSet<String> {
    pending
        .iter()
        .filter(|(_, since)| since.elapsed() >= HEDGE_AFTER)
        .map(|(node, _)| node.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::quorum::tests::{answer, recording_node};
    use super::*;
    use crate::codec::{BlobEncoder, EncodingConfig};

    #[tokio::test]
    async fn the_metadata_copy_not_needed_is_still_received_keeping_its_connection() {
        let data = vec![7u8; 3000];
        let (metadata, _) = BlobEncoder::new(EncodingConfig::new(4).unwrap(), 1 << 20)
            .unwrap()
            .encode(&data)
            .unwrap();
        let id = metadata.blob_id();
        let bytes = metadata.to_bytes();
        // node-0 answers at once, node-1 after 300 ms; both hold it.
        let (fast, _) = recording_node(Duration::ZERO, bytes.clone()).await;
        let (slow, slow_callers) = recording_node(Duration::from_millis(300), bytes).await;
        let client = super::super::test_fleet::client_of(4, vec![fast, slow], 5.0);
        let committed = crate::blob_state::BlobState {
            commit: Some(1),
            ..Default::default()
        };
        let layout = Some((data.len() as u64, 1));
        let states = StateCollection {
            answers: vec![
                answer("node-0", &[0], committed, layout),
                answer("node-1", &[1], committed, layout),
            ],
            silent: Default::default(),
        };

        let fetched = client.fetch_metadata(&id, &states).await.unwrap();
        assert_eq!(fetched.blob_id(), id);
        assert_eq!(slow_callers.lock().unwrap().len(), 1, "both asked at once");
        // The slow copy is received after all: its connection goes back
        // to the pool and the next call to node-1 comes on it (a call
        // dropped mid-answer would have closed it).
        tokio::time::sleep(Duration::from_millis(600)).await;
        client.fetch_metadata(&id, &states).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let callers = slow_callers.lock().unwrap().clone();
        assert_eq!(callers.len(), 2, "{callers:?}");
        assert_eq!(callers[0], callers[1], "a second connection was opened");
    }

    /// A blob of 3000 bytes (4 shards), its metadata and its bytes.
    fn small_blob() -> (BlobId, Vec<u8>, u64) {
        let data = vec![9u8; 3000];
        let (metadata, _) = BlobEncoder::new(EncodingConfig::new(4).unwrap(), 1 << 20)
            .unwrap()
            .encode(&data)
            .unwrap();
        (metadata.blob_id(), metadata.to_bytes(), data.len() as u64)
    }

    fn committed() -> crate::blob_state::BlobState {
        crate::blob_state::BlobState {
            commit: Some(1),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn liars_outvoting_the_layout_do_not_hide_the_honest_holders_metadata() {
        let (id, bytes, len) = small_blob();
        let (liar_0, _) = recording_node(Duration::ZERO, vec![0; 64]).await;
        let (liar_1, _) = recording_node(Duration::ZERO, vec![0; 64]).await;
        let (honest, _) = recording_node(Duration::ZERO, bytes).await;
        let client = super::super::test_fleet::client_of(4, vec![liar_0, liar_1, honest], 5.0);
        let fake = Some((len * 1000, 7));
        let states = StateCollection {
            answers: vec![
                answer("node-0", &[0], committed(), fake),
                answer("node-1", &[1], committed(), fake),
                answer("node-2", &[2], committed(), Some((len, 1))),
            ],
            silent: Default::default(),
        };
        let fetched = client.fetch_metadata(&id, &states).await.unwrap();
        assert_eq!(fetched.blob_id(), id);
    }

    #[tokio::test]
    async fn a_committed_blob_whose_metadata_no_holder_gives_is_unavailable_not_absent() {
        let (id, _, len) = small_blob();
        let (bad_0, _) = recording_node(Duration::ZERO, vec![0; 64]).await;
        let (bad_1, _) = recording_node(Duration::ZERO, vec![1; 64]).await;
        let client = super::super::test_fleet::client_of(4, vec![bad_0, bad_1], 5.0);
        let layout = Some((len, 1));
        let states = StateCollection {
            answers: vec![
                answer("node-0", &[0], committed(), layout),
                answer("node-1", &[1], committed(), layout),
            ],
            silent: Default::default(),
        };
        let err = client.fetch_metadata(&id, &states).await.unwrap_err();
        assert!(
            matches!(err, BlobIoError::MetadataUnavailable { .. }),
            "{err}"
        );
    }
}
