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
    /// Markers of the peers that answered (a lost marker reads as absent).
    pub answers: Vec<BlobState>,
    /// Distinct shards (below n) of this node and of the peers that
    /// answered with every marker readable.
    pub answered: BTreeSet<u16>,
    /// Shards (below n) the fleet map gives some node, not answered.
    pub unanswered: BTreeSet<u16>,
    /// Of the answered shards, those whose node holds a staged write of
    /// the blob.
    pub staged: BTreeSet<u16>,
    /// Pairs the answered shards hold, over every segment.
    pub held_pairs: u64,
    /// The blob's segments, as answering nodes' metadata says.
    pub segments: Option<u32>,
}

impl PeerStates {
    /// Whether a commit may be on the nodes that did not answer: a commit
    /// is sent only once every segment is held by n - f shards, so with
    /// the unanswered shards holding every pair, the pairs must reach
    /// n - f per segment (without the segment count, the shards staging
    /// it must reach n - f).
    pub fn may_hide_a_commit(&self, quorum: usize) -> bool {
        let unknown = self.unanswered.len();
        if unknown == 0 {
            return false;
        }
        match self.segments.filter(|s| *s > 0) {
            Some(segments) => {
                let segments = u64::from(segments);
                self.held_pairs + unknown as u64 * segments >= quorum as u64 * segments
            }
            None => self.staged.len() + unknown >= quorum,
        }
    }
}

/// Decides the fate of an idle staged write (pure). Kept, with the
/// commit, when the markers of this node and its peers make the blob
/// visible. Otherwise removed, unless nodes that did not answer may hold
/// its commit ([`PeerStates::may_hide_a_commit`]): then it waits, at most
/// [`LOST_MARKER_GRACE`], as any blob in doubt does.
pub fn staged_fate(idle: &IdleStaged, peers: &PeerStates, config: &EncodingConfig) -> StagedFate {
    let states = peers.answers.iter().chain(std::iter::once(&idle.state));
    if let Verdict::Visible(generation) = resolve(states) {
        return StagedFate::Adopt(generation);
    }
    let quorum = config.n() - config.f();
    if peers.may_hide_a_commit(quorum) && idle.idle_for < LOST_MARKER_GRACE {
        StagedFate::Wait
    } else {
        StagedFate::Collect
    }
}

/// The fate of each idle staged write: every other node of the fleet map
/// is asked for its markers of the blob (a node silent once is not asked
/// again in the same round). A node given no fleet map (on its own)
/// collects them; one whose map cannot be read now waits.
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
    let silent = std::sync::Mutex::new(BTreeSet::new());
    stream::iter(idle)
        .map(|staged| {
            let (map, config, silent) = (&map, &config, &silent);
            async move {
                let peers = ask_peers(state, map, &staged, silent).await;
                let fate = staged_fate(&staged, &peers, config);
                (staged, fate)
            }
        })
        .buffer_unordered(BLOBS_ASKED_AT_ONCE)
        .collect()
        .await
}

/// Every other node's markers of the blob, each call within the peers'
/// deadline; nodes in `silent` are not asked, and those that do not
/// answer join it. A shard counts once, whoever claims it; a node with a
/// lost marker is heard (a commit it can read counts) but its shards
/// count as not answered (the lost one may have been the commit).
async fn ask_peers(
    state: &NodeState,
    map: &FleetMap,
    idle: &IdleStaged,
    silent: &std::sync::Mutex<BTreeSet<String>>,
) -> PeerStates {
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
    let skipped = silent.lock().expect("not poisoned").clone();
    let answers = join_all(peers.iter().map(|peer| {
        let call = state.peers.node(&peer.url);
        let skip = skipped.contains(&peer.name);
        async move { (!skip).then_some(call.state(&idle.id).await) }
    }))
    .await;
    let mut states = PeerStates {
        answered: own.clone(),
        held_pairs: own
            .iter()
            .map(|s| u64::from(idle.held.get(s).copied().unwrap_or(0)))
            .sum(),
        ..PeerStates::default()
    };
    if idle.state.staged.is_some() {
        states.staged.extend(&own);
    }
    for (peer, answer) in peers.iter().zip(answers) {
        let answer = match answer {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => {
                if e.is_silence() {
                    silent
                        .lock()
                        .expect("not poisoned")
                        .insert(peer.name.clone());
                }
                tracing::debug!(node = %state.name, peer = %peer.name, "markers of {}: {e}", idle.id);
                continue;
            }
            None => continue,
        };
        states.answers.push(answer.state);
        // The fewest segments any metadata reports: a liar claiming more
        // could only make the write wait.
        states.segments = match (states.segments, answer.segments) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if answer.markers_lost {
            continue;
        }
        for shard in peer.shards.iter().filter(in_range) {
            if states.answered.insert(*shard) {
                states.held_pairs += u64::from(answer.shards.get(shard).copied().unwrap_or(0));
                if answer.state.staged.is_some() {
                    states.staged.insert(*shard);
                }
            }
        }
    }
    states.unanswered = map
        .nodes
        .iter()
        .flat_map(|n| n.shards.iter().filter(in_range).copied())
        .filter(|s| !states.answered.contains(s))
        .collect();
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
            held: [(0, 2)].into(),
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

    /// n = 7 (f = 2, a quorum of 5), a blob of 2 segments: this node holds
    /// shard 0 (both pairs) and the peers answering hold shards 1, 2, ...
    /// one each, in order, with both pairs when they staged the write; the
    /// other shards do not answer.
    fn peers(answers: Vec<BlobState>) -> PeerStates {
        let answered: BTreeSet<u16> = (0..=answers.len() as u16).collect();
        let staged: BTreeSet<u16> = answered
            .iter()
            .copied()
            .filter(|s| *s == 0 || answers[*s as usize - 1].staged.is_some())
            .collect();
        PeerStates {
            unanswered: (0..7).filter(|s| !answered.contains(s)).collect(),
            held_pairs: 2 * staged.len() as u64,
            segments: Some(2),
            answered,
            staged,
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
        // Even over a marker lost here.
        let lost = IdleStaged {
            lost: true,
            ..idle(BlobState::default(), LOST_MARKER_GRACE)
        };
        assert_eq!(
            staged_fate(&lost, &peers(vec![committed(5); 6]), &seven()),
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
        // Held whole on 5 shards with 2 silent: a commit needs every
        // segment on 5, so the silent ones may hold it.
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
    }

    #[test]
    fn a_write_too_few_shards_hold_is_collected_though_some_nodes_are_silent() {
        // Staged on 2 shards, 2 silent: never on 5, never committed.
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
        // Every answering node has the staged marker (the metadata
        // reaches them all), but they hold 5 pairs: with the 2 silent
        // shards' 4 that is 9, short of the 10 (5 shards x 2 segments) a
        // commit needs.
        let mut thin = peers(vec![staged(5); 4]);
        thin.held_pairs = 5;
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &thin, &seven()),
            StagedFate::Collect
        );
        // Without any metadata, the staging shards count.
        let mut unknown = peers(vec![staged(5); 2]);
        unknown.segments = None;
        assert_eq!(
            staged_fate(&idle(staged(5), TTL), &unknown, &seven()),
            StagedFate::Wait,
            "3 staging + 4 silent"
        );
    }
}
