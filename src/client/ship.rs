//! Shipping one encoded segment's pairs to their shards' nodes under an
//! upload session. Before a large segment's pairs go to a node, the node
//! is asked whether another session of it already holds them under the
//! same segment root (an earlier attempt of the same write, cut off after
//! they were filed): those it files into this session, and only the
//! others are sent, so a retried upload ships only what it lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::future::join_all;

use super::blob_client::BlobClient;
use super::node_client::{NodeCallError, NodeClient};
use super::unanswering::Unanswered;
use super::upload::Shunned;
use crate::codec::merkle::{self, MerkleTree};
use crate::codec::EncodedSegment;
use crate::wire::UploadId;

/// Pairs worth asking a node about before sending them: below this many
/// bytes for the node, sending costs less than the question's round trip
/// on a first attempt, and a retry loses little.
pub const REUSE_WORTH_ASKING: usize = 256 << 10;

/// What became of one shard's pair.
enum Outcome {
    /// The node filed it: shipped, or found from an earlier session.
    Filed,
    /// The node refused it or failed (the shard gets nothing more).
    Refused(NodeCallError),
    /// The node did not answer (it gets nothing more of this write).
    Silent(NodeCallError),
}

impl BlobClient {
    /// Ships every pair of an encoded segment to its shard's node under
    /// `session` (skipping shunned nodes and shards), each node first asked
    /// for the pairs it holds from an earlier upload of the same bytes;
    /// returns the shards that filed their pair. The slivers' bytes are
    /// sent as they are, never copied per request.
    pub(super) async fn ship_to_session(
        &self,
        session: &UploadId,
        segment: EncodedSegment,
        shunned: &Mutex<Shunned>,
    ) -> BTreeSet<u16> {
        let index = segment.index;
        let n = segment.primary.len();
        // The segment root is this tree's root (`SegmentHashes::root`).
        let tree = MerkleTree::new(
            (0..n)
                .map(|i| merkle::pair_hash(segment.hashes.primary(i), segment.hashes.secondary(i)))
                .collect(),
        );
        let root = tree.root();
        let rotation = crate::codec::ShardRotation::new(&root, n);
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
        let skip = {
            let shunned = shunned.lock().expect("not poisoned");
            (shunned.nodes.clone(), shunned.shards.clone())
        };
        // Each node's shards, in shard order.
        let mut by_node: BTreeMap<&str, (NodeClient, Vec<u16>)> = BTreeMap::new();
        for shard in 0..n as u16 {
            let Some((node, call)) = self.holder(shard) else {
                continue;
            };
            if !skip.0.contains(&node.name) && !skip.1.contains(&shard) {
                by_node
                    .entry(node.name.as_str())
                    .or_insert_with(|| (call, Vec::new()))
                    .1
                    .push(shard);
            }
        }
        let (tree, root, rotation, pairs) = (&tree, &root, &rotation, &pairs);
        let nodes = by_node
            .into_iter()
            .map(|(node, (call, shards))| async move {
                let pair_of = |shard: u16| &pairs[rotation.pair_of_shard(shard.into())];
                let bytes: usize = shards
                    .iter()
                    .flat_map(|s| pair_of(*s).iter().map(Bytes::len))
                    .sum();
                let mut outcomes: Vec<(u16, Outcome)> = Vec::new();
                let mut to_send = shards.clone();
                if bytes >= REUSE_WORTH_ASKING {
                    match call
                        .reuse_upload_pairs(session, (index, root), &shards)
                        .await
                    {
                        Ok(filed) => {
                            if let Some(m) = &self.metrics {
                                m.upload_pairs_reused.inc_by(filed.len() as u64);
                            }
                            to_send.retain(|s| !filed.contains(s));
                            outcomes.extend(filed.into_iter().map(|s| (s, Outcome::Filed)));
                        }
                        Err(e) if e.is_silence() => {
                            let first = shards[0];
                            outcomes.push((first, Outcome::Silent(e)));
                            return (node, outcomes);
                        }
                        // A node of an earlier version, or one that cannot
                        // look: the pairs are sent.
                        Err(e) => tracing::debug!(%node, "asking for pairs filed before: {e}"),
                    }
                }
                let sends = to_send.into_iter().map(|shard| {
                    let pair = rotation.pair_of_shard(shard.into());
                    let proof = tree.proof(pair).expect("pair below n");
                    let parts = pairs[pair].to_vec();
                    let call = &call;
                    async move {
                        let result = call
                            .put_upload_pair(session, (index, root), shard, &proof, parts)
                            .await;
                        let outcome = match result {
                            Ok(()) => Outcome::Filed,
                            Err(e) if e.is_silence() => Outcome::Silent(e),
                            Err(e) => Outcome::Refused(e),
                        };
                        (shard, outcome)
                    }
                });
                outcomes.extend(join_all(sends).await);
                (node, outcomes)
            });
        let mut filed = BTreeSet::new();
        for (node, outcomes) in join_all(nodes).await {
            for (shard, outcome) in outcomes {
                let e = match outcome {
                    Outcome::Filed => {
                        filed.insert(shard);
                        continue;
                    }
                    Outcome::Silent(e) | Outcome::Refused(e) => e,
                };
                tracing::warn!(%node, shard, "shipping segment {index} of upload {session}: {e}");
                if e.is_silence() {
                    self.unanswered(node, Unanswered::Silent);
                    shunned
                        .lock()
                        .expect("not poisoned")
                        .nodes
                        .insert(node.to_string());
                } else {
                    shunned.lock().expect("not poisoned").shards.insert(shard);
                }
            }
        }
        filed
    }
}
