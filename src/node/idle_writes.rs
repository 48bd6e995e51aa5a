//! Staged writes idle past their TTL with no commit here: before a node
//! removes one, it asks its peers whether the write was committed
//! elsewhere. A write answered 2xx may have reached its commit on only
//! some nodes (a node stalled through the commit phase; a 202 says so),
//! and only the control loop carries the commit to the others: with the
//! loop away for the TTL (the operator down, its spec refused), removing
//! the staged copies would leave the blob on fewer shards than the write
//! was acknowledged with. A commit a peer reports is taken here instead.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};

use super::NodeState;
use crate::blob_state::{resolve, BlobState, Verdict};
use crate::codec::{BlobId, EncodingConfig};
use crate::fleet::FleetMap;
use crate::store::{IdleStaged, StoreError, LOST_MARKER_GRACE};

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

/// What the fleet said of one blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStates {
    /// Markers of the peers that answered with every marker readable.
    pub answers: Vec<BlobState>,
    /// Distinct shards (below n) of those peers and of this node.
    pub answered: BTreeSet<u16>,
    /// Of those, the shards whose node holds a staged write of the blob.
    pub staged: BTreeSet<u16>,
}

/// Decides the fate of an idle staged write (pure). Kept, with the
/// commit, when the markers of this node and its peers make the blob
/// visible (unless a marker here is lost: it may have been a tombstone).
/// Otherwise removed once every shard's node answered; while some did
/// not, a commit may be on them only if the shards staging the write and
/// those not answering reach n - f (a commit is sent only once n - f
/// shards staged the write): then it waits, at most
/// [`LOST_MARKER_GRACE`], as any blob in doubt does.
pub fn staged_fate(idle: &IdleStaged, peers: &PeerStates, config: &EncodingConfig) -> StagedFate {
    let states = peers.answers.iter().chain(std::iter::once(&idle.state));
    if let (false, Verdict::Visible(generation)) = (idle.lost, resolve(states)) {
        return StagedFate::Adopt(generation);
    }
    let unknown = config.n().saturating_sub(peers.answered.len());
    let quorum = config.n() - config.f();
    let may_be_committed_elsewhere = unknown > 0 && peers.staged.len() + unknown >= quorum;
    if may_be_committed_elsewhere && idle.idle_for < LOST_MARKER_GRACE {
        StagedFate::Wait
    } else {
        StagedFate::Collect
    }
}

/// The fate of each idle staged write: every other node of the fleet map
/// is asked for its markers of the blob. A node given no fleet map (on
/// its own) collects them; one whose map cannot be read now waits.
pub(super) async fn fates(
    state: &NodeState,
    idle: Vec<IdleStaged>,
) -> Vec<(IdleStaged, StagedFate)> {
    let Some(map_file) = state.fleet.as_ref() else {
        return idle
            .into_iter()
            .map(|staged| (staged, StagedFate::Collect))
            .collect();
    };
    let map = map_file.get();
    let config = map.as_ref().map(|m| EncodingConfig::new(m.shards));
    let (Some(map), Some(Ok(config))) = (map, config) else {
        tracing::warn!(
            node = %state.name,
            blobs = idle.len(),
            "idle staged writes kept: the fleet map cannot be read, so the peers that may hold their commit are unknown"
        );
        return idle
            .into_iter()
            .map(|staged| (staged, StagedFate::Wait))
            .collect();
    };
    stream::iter(idle)
        .map(|staged| {
            let (map, config) = (&map, &config);
            async move {
                let peers = ask_peers(state, map, &staged).await;
                let fate = staged_fate(&staged, &peers, config);
                (staged, fate)
            }
        })
        .buffer_unordered(BLOBS_ASKED_AT_ONCE)
        .collect()
        .await
}

/// Every other node's markers of the blob, each call within the peers'
/// deadline. A shard counts as answered once, whoever claims it; a node
/// with a lost marker counts as not answering (it may have been the
/// commit).
async fn ask_peers(state: &NodeState, map: &FleetMap, idle: &IdleStaged) -> PeerStates {
    let in_range = |shard: &&u16| **shard < map.shards;
    let own: BTreeSet<u16> = map
        .nodes
        .iter()
        .filter(|n| n.name == state.name)
        .flat_map(|n| n.shards.iter().filter(in_range).copied())
        .collect();
    let mut peers: Vec<_> = map.nodes.iter().filter(|n| n.name != state.name).collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers.dedup_by(|a, b| a.name == b.name);
    let answers = join_all(peers.iter().map(|peer| {
        let call = state.peers.node(&peer.url);
        async move { call.state(&idle.id).await }
    }))
    .await;
    let mut states = PeerStates {
        answered: own.clone(),
        ..PeerStates::default()
    };
    if idle.state.staged.is_some() {
        states.staged.extend(&own);
    }
    for (peer, answer) in peers.iter().zip(answers) {
        match answer {
            Ok(answer) if !answer.markers_lost => {
                let shards = peer.shards.iter().filter(in_range);
                states.answered.extend(shards.clone());
                if answer.state.staged.is_some() {
                    states.staged.extend(shards);
                }
                states.answers.push(answer.state);
            }
            Ok(_) => {
                tracing::debug!(node = %state.name, peer = %peer.name, "markers of {} lost there", idle.id)
            }
            Err(e) => {
                tracing::debug!(node = %state.name, peer = %peer.name, "markers of {}: {e}", idle.id)
            }
        }
    }
    states
}

/// What settling idle staged writes did.
#[derive(Debug, Default)]
pub(super) struct Settled {
    /// Writes whose commit was recorded here.
    pub adopted: usize,
    /// Blobs whose data was removed.
    pub collected: Vec<BlobId>,
    /// Writes kept for now (their commit may be on nodes not answering).
    pub waiting: usize,
}

/// Records the commits the fleet made of idle staged writes, and removes
/// those it never committed. A blob that fails (a full disk, a marker that
/// cannot be read now) is passed over until the next round; the others
/// are settled. Blocking.
pub(super) fn settle(
    state: &NodeState,
    fates: &[(IdleStaged, StagedFate)],
    ttl: Duration,
    now: SystemTime,
) -> Settled {
    let mut settled = Settled::default();
    for (staged, fate) in fates {
        let id = &staged.id;
        let done = match fate {
            StagedFate::Adopt(generation) => adopt(state, id, *generation).map(|adopted| {
                settled.adopted += usize::from(adopted);
            }),
            StagedFate::Collect => state.store.collect_idle(id, ttl, now).map(|removed| {
                if removed {
                    settled.collected.push(*id);
                }
            }),
            StagedFate::Wait => {
                settled.waiting += 1;
                Ok(())
            }
        };
        if let Err(e) = done {
            tracing::warn!(node = %state.name, "settling the idle staged write of {id}: {e}; again next time");
        }
    }
    settled
}

/// Records the commit of `generation` for `id`, if its data is still here
/// (an abort or a release may have removed it since it was listed) and no
/// delete as new is; true when recorded.
fn adopt(state: &NodeState, id: &BlobId, generation: u64) -> Result<bool, StoreError> {
    let lock = state.store.lock(id);
    if lock.metadata()?.is_none() {
        return Ok(false);
    }
    match lock.commit(generation, None) {
        Ok(_) => {
            tracing::info!(
                node = %state.name,
                "kept the staged write of {id}: the fleet committed it (generation {generation}) while no commit reached this node"
            );
            Ok(true)
        }
        // A delete came meanwhile: its tombstone decides.
        Err(StoreError::Deleted { .. }) => Ok(false),
        Err(e) => Err(e),
    }
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
            lost: false,
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

    /// n = 7 (f = 2, a quorum of 5): this node holds shard 0 and the
    /// peers answering hold shards 1, 2, ... one each, in order.
    fn peers(answers: Vec<BlobState>) -> PeerStates {
        let shards = || 0..=answers.len() as u16;
        PeerStates {
            answered: shards().collect(),
            staged: shards()
                .filter(|s| *s == 0 || answers[*s as usize - 1].staged.is_some())
                .collect(),
            answers,
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
            staged_fate(&idle(staged(5), TTL), &peers(others), &seven()),
            StagedFate::Adopt(5)
        );
        // Committed on one node only, the others silent: still kept.
        assert_eq!(
            staged_fate(
                &idle(staged(5), TTL * 10),
                &peers(vec![committed(5)]),
                &seven()
            ),
            StagedFate::Adopt(5)
        );
    }

    #[test]
    fn a_write_no_peer_committed_is_collected_once_every_shard_answered() {
        let others = vec![staged(5); 6];
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &peers(others), &seven()),
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
            staged_fate(&idle(staged(5), TTL), &peers(others), &seven()),
            StagedFate::Collect
        );
    }

    #[test]
    fn a_write_whose_commit_may_be_on_silent_nodes_waits_as_long_as_any_blob_in_doubt() {
        // Staged on 5 shards with 2 silent: a commit needs 5 staged, so the
        // silent ones may hold it.
        let others = vec![staged(5); 4];
        assert_eq!(
            staged_fate(
                &idle(staged(5), TTL * 100),
                &peers(others.clone()),
                &seven()
            ),
            StagedFate::Wait
        );
        assert_eq!(
            staged_fate(
                &idle(staged(5), LOST_MARKER_GRACE),
                &peers(others),
                &seven()
            ),
            StagedFate::Collect,
            "in doubt past the grace for lost markers"
        );
        // Staged on 2 shards, 2 silent: never staged on 5, never committed.
        let few = vec![
            staged(5),
            BlobState::default(),
            BlobState::default(),
            BlobState::default(),
        ];
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &peers(few), &seven()),
            StagedFate::Collect
        );
    }

    #[test]
    fn a_commit_is_not_adopted_over_a_lost_marker_here_which_may_have_been_a_tombstone() {
        let lost = IdleStaged {
            lost: true,
            ..idle(BlobState::default(), LOST_MARKER_GRACE)
        };
        let others = vec![committed(5); 6];
        assert_eq!(
            staged_fate(&lost, &peers(others), &seven()),
            StagedFate::Collect
        );
    }
}
