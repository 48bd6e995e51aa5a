//! Staged writes idle past their TTL with no commit here: before a node
//! removes one, it asks its peers whether the write was committed
//! elsewhere. A write answered 2xx may have reached its commit on only
//! some nodes (a node stalled through the commit phase; a 202 says so),
//! and only the control loop carries the commit to the others: with the
//! loop away for the TTL (the operator down, its spec refused), removing
//! the staged copies would leave the blob on fewer shards than the write
//! was acknowledged with. A commit a peer reports is taken here instead.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};

use super::NodeState;
use crate::blob_state::{resolve, BlobState, Verdict};
use crate::codec::{BlobId, EncodingConfig};
use crate::fleet::FleetMap;
use crate::store::IdleStaged;

/// How many times its wait a staged write is kept while some peer does
/// not answer (it may be the one holding the commit), as long as the
/// nodes of a quorum of shards answered without one.
const PATIENCE_WITH_SILENT_PEERS: u32 = 4;

/// Blobs whose peers are asked at once.
const BLOBS_ASKED_AT_ONCE: usize = 8;

/// What becomes of an idle staged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedFate {
    /// The fleet committed it at this generation: the commit is recorded
    /// here and the data stays.
    Adopt(u64),
    /// No commit anywhere it could be: removed.
    Collect,
    /// Nodes that may hold its commit did not answer: asked again later.
    Wait,
}

/// What the peers said of one blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStates {
    /// Markers of the peers that answered.
    pub answers: Vec<BlobState>,
    /// Shards of the nodes that answered, this one's included.
    pub answered_shards: usize,
    /// Shards of the nodes that did not answer.
    pub silent_shards: usize,
}

/// Decides the fate of an idle staged write (pure): kept, with the commit,
/// when the fleet's markers (this node's and its peers') make the blob
/// visible; removed when they do not and every peer answered, or, after
/// [`PATIENCE_WITH_SILENT_PEERS`] times its wait, when the nodes of a
/// quorum of shards did; else asked again later.
pub fn staged_fate(idle: &IdleStaged, peers: &PeerStates, config: &EncodingConfig) -> StagedFate {
    let states = peers.answers.iter().chain(std::iter::once(&idle.state));
    if let Verdict::Visible(generation) = resolve(states) {
        return StagedFate::Adopt(generation);
    }
    let quorum = config.n() - config.f();
    let patient = idle.idle_for < idle.wait * PATIENCE_WITH_SILENT_PEERS;
    if peers.silent_shards == 0 || (peers.answered_shards >= quorum && !patient) {
        StagedFate::Collect
    } else {
        StagedFate::Wait
    }
}

/// The fate of each idle staged write: every peer holding shards in the
/// node's fleet map is asked for its markers of the blob. Without a map
/// (a node on its own) each is collected.
pub(super) async fn fates(
    state: &NodeState,
    idle: Vec<IdleStaged>,
) -> Vec<(IdleStaged, StagedFate)> {
    let map = state.fleet.as_ref().and_then(|f| f.get());
    let config = map
        .as_ref()
        .and_then(|m| EncodingConfig::new(m.shards).ok());
    let (Some(map), Some(config)) = (map, config) else {
        return idle
            .into_iter()
            .map(|staged| (staged, StagedFate::Collect))
            .collect();
    };
    stream::iter(idle)
        .map(|staged| {
            let (map, config) = (&map, &config);
            async move {
                let peers = ask_peers(state, map, &staged.id).await;
                let fate = staged_fate(&staged, &peers, config);
                (staged, fate)
            }
        })
        .buffer_unordered(BLOBS_ASKED_AT_ONCE)
        .collect()
        .await
}

/// Every peer's markers of `id`, each call within the peers' deadline.
async fn ask_peers(state: &NodeState, map: &FleetMap, id: &BlobId) -> PeerStates {
    let own: BTreeSet<u16> = map
        .nodes
        .iter()
        .filter(|n| n.name == state.name)
        .flat_map(|n| n.shards.iter().copied())
        .collect();
    let peers: Vec<_> = map
        .nodes
        .iter()
        .filter(|n| n.name != state.name && !n.shards.is_empty())
        .collect();
    let answers = join_all(peers.iter().map(|peer| {
        let call = state.peers.node(&peer.url);
        async move { call.state(id).await }
    }))
    .await;
    let mut states = PeerStates {
        answered_shards: own.len(),
        ..PeerStates::default()
    };
    for (peer, answer) in peers.iter().zip(answers) {
        // A peer's shards this node also claims count once, as its own.
        let shards = peer.shards.difference(&own).count();
        match answer {
            Ok(answer) => {
                states.answers.push(answer.state);
                states.answered_shards += shards;
            }
            Err(e) => {
                tracing::debug!(node = %state.name, peer = %peer.name, "markers of {id}: {e}");
                states.silent_shards += shards;
            }
        }
    }
    states
}

/// Records the commits the fleet made of idle staged writes, and removes
/// those it never committed; returns (adopted, collected ids). Blocking.
pub(super) fn settle(
    state: &NodeState,
    fates: &[(IdleStaged, StagedFate)],
    ttl: Duration,
    now: std::time::SystemTime,
) -> Result<(usize, Vec<BlobId>), crate::store::StoreError> {
    let (mut adopted, mut collected) = (0, Vec::new());
    for (staged, fate) in fates {
        match fate {
            StagedFate::Adopt(generation) => {
                match state.store.commit(&staged.id, *generation, None) {
                    Ok(_) => {
                        tracing::info!(
                            node = %state.name,
                            "kept the staged write of {}: the fleet committed it (generation {generation}) while no commit reached this node",
                            staged.id
                        );
                        adopted += 1;
                    }
                    // A delete came meanwhile: its tombstone decides.
                    Err(crate::store::StoreError::Deleted { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            StagedFate::Collect => {
                if state.store.collect_idle(&staged.id, ttl, now)? {
                    collected.push(staged.id);
                }
            }
            StagedFate::Wait => {}
        }
    }
    Ok((adopted, collected))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn idle(state: BlobState, idle_for: Duration) -> IdleStaged {
        IdleStaged {
            id: BlobId([7; 32]),
            state,
            idle_for,
            wait: TTL,
        }
    }

    fn staged(generation: u64) -> BlobState {
        BlobState {
            staged: Some(generation),
            ..BlobState::default()
        }
    }

    fn committed(generation: u64) -> BlobState {
        BlobState {
            commit: Some(generation),
            ..BlobState::default()
        }
    }

    /// n = 7 (f = 2, a quorum of 5): this node holds one shard.
    fn peers(answers: Vec<BlobState>, silent_shards: usize) -> PeerStates {
        PeerStates {
            answered_shards: 1 + answers.len(),
            answers,
            silent_shards,
        }
    }

    fn seven() -> EncodingConfig {
        EncodingConfig::new(7).unwrap()
    }

    #[test]
    fn a_write_some_peer_committed_is_kept_with_that_commit() {
        let others = vec![
            committed(5),
            staged(5),
            staged(5),
            staged(5),
            staged(5),
            staged(5),
        ];
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &peers(others, 0), &seven()),
            StagedFate::Adopt(5)
        );
        // Committed on one node only, the others silent: still kept.
        assert_eq!(
            staged_fate(
                &idle(staged(5), TTL * 10),
                &peers(vec![committed(5)], 5),
                &seven()
            ),
            StagedFate::Adopt(5)
        );
    }

    #[test]
    fn a_write_no_peer_committed_is_collected_once_every_peer_answered() {
        let others = vec![staged(5); 6];
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &peers(others, 0), &seven()),
            StagedFate::Collect
        );
    }

    #[test]
    fn a_commit_a_tombstone_covers_does_not_keep_the_write() {
        let deleted = BlobState {
            tombstone: Some(6),
            ..BlobState::default()
        };
        let others = vec![
            committed(5),
            deleted,
            staged(5),
            staged(5),
            staged(5),
            staged(5),
        ];
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &peers(others, 0), &seven()),
            StagedFate::Collect
        );
    }

    #[test]
    fn a_silent_peer_may_hold_the_commit_so_the_write_waits_for_a_while() {
        let others = vec![staged(5); 4];
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &peers(others.clone(), 2), &seven()),
            StagedFate::Wait,
            "the silent nodes may hold the commit"
        );
        assert_eq!(
            staged_fate(&idle(staged(5), TTL * 4), &peers(others, 2), &seven()),
            StagedFate::Collect,
            "a quorum answered, long enough ago"
        );
        let few = vec![staged(5); 3];
        assert_eq!(
            staged_fate(&idle(staged(5), TTL * 100), &peers(few, 3), &seven()),
            StagedFate::Wait,
            "fewer than a quorum answered: the commit may be on the others"
        );
    }
}
