//! Deleting a blob: a tombstone on a quorum of shards before the answer.
//!
//! The delete's generation is above every commit seen (a quorum's answers
//! include every committed write), so its tombstone wins over the slivers
//! of the at most f nodes that slept through it: they hold fewer than p
//! slivers, no read succeeds from them alone, and the loop spreads the
//! tombstone to them when they return. A delete that reaches fewer than
//! n - f shards says so; its tombstones stay and spread, and a retry
//! completes it.

use futures_util::future::join_all;

use super::blob_client::{BlobClient, BlobIoError};
use super::quorum::{collect_states, StateCollection};
use crate::blob_state::{next_generation, now_nanos, Verdict};
use crate::codec::BlobId;
use crate::fleet::MapNode;

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The blob is deleted on a quorum: final. Also the answer to a delete
    /// of a blob deleted before (a retry completes what an earlier,
    /// incomplete delete started).
    Deleted {
        /// The tombstone's generation.
        generation: u64,
    },
    /// Nothing of that id was ever staged.
    NotFound,
}

/// What a delete does, from what a quorum's nodes said (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeletePlan {
    /// Nothing of the blob was ever staged: no tombstone.
    NotFound,
    /// A tombstone newer than every write seen is on a quorum already.
    Done(u64),
    /// Send this tombstone.
    Tombstone(u64),
    /// A write newer than the fence (this generation) is seen: nothing to do.
    WrittenSince(u64),
}

/// Plans a delete: a tombstone above every generation seen, unless nothing
/// was ever staged, or an earlier delete newer than every write seen is
/// final (reached a quorum) or to be finished. A write seen staged but not
/// committed is deleted too: its commit may have reached a few nodes this
/// quorum missed (a PUT answered 202), and would become visible once the
/// loop spreads it.
///
/// With a `fence`, only writes up to it are deleted: a commit seen newer
/// is [`DeletePlan::WrittenSince`], and the tombstone is the fence itself
/// (a newer write staging, one this quorum missed, or one that stages
/// while the tombstone goes out, is not covered by it and stays).
fn plan_delete(
    states: &StateCollection,
    quorum: usize,
    now_nanos: u64,
    fence: Option<u64>,
) -> DeletePlan {
    let newest_write = states
        .answers
        .iter()
        .map(|a| a.state.state.commit.max(a.state.state.staged))
        .max()
        .flatten();
    let newest_commit = states
        .answers
        .iter()
        .filter_map(|a| a.state.state.commit)
        .max();
    if let (Some(fence), Some(commit)) = (fence, newest_commit) {
        if commit > fence {
            return DeletePlan::WrittenSince(commit);
        }
    }
    match states.verdict() {
        Verdict::Absent => DeletePlan::NotFound,
        Verdict::Deleted(generation) if newest_write <= Some(generation) => {
            if states.shards_where(|s| s.tombstone >= Some(generation)) >= quorum {
                DeletePlan::Done(generation)
            } else {
                // An earlier delete that did not reach a quorum: finish it.
                DeletePlan::Tombstone(generation)
            }
        }
        Verdict::Visible(_) | Verdict::Staged | Verdict::Deleted(_) => DeletePlan::Tombstone(
            // A staged write newer than the fence stays: the tombstone is
            // not above it.
            fence.unwrap_or_else(|| next_generation(now_nanos, states.generations())),
        ),
    }
}

impl BlobClient {
    /// Deletes a blob: final once this returns `Deleted`.
    pub async fn delete(&self, id: &BlobId) -> Result<DeleteOutcome, BlobIoError> {
        self.delete_fenced(id, None).await
    }

    /// Deletes the writes of a blob up to generation `fence` (nanoseconds
    /// since the epoch, as generations are), none after: for a delete
    /// decided at the fence and carried out later (a collector that may
    /// have been stopped meanwhile while the same bytes were stored
    /// again). A commit seen newer than the fence: `WrittenSince`, nothing
    /// deleted.
    pub async fn delete_written_before(
        &self,
        id: &BlobId,
        fence: u64,
    ) -> Result<DeleteOutcome, BlobIoError> {
        self.delete_fenced(id, Some(fence.max(1))).await
    }

    async fn delete_fenced(
        &self,
        id: &BlobId,
        fence: Option<u64>,
    ) -> Result<DeleteOutcome, BlobIoError> {
        let quorum = self.quorum()?;
        let states = collect_states(self, id, quorum).await;
        if states.answered_shards() < quorum {
            return Err(BlobIoError::NoQuorum {
                id: *id,
                answered: states.answered_shards(),
                needed: quorum,
            });
        }
        let generation = match plan_delete(&states, quorum, now_nanos(), fence) {
            DeletePlan::NotFound => return Ok(DeleteOutcome::NotFound),
            DeletePlan::Done(generation) => return Ok(DeleteOutcome::Deleted { generation }),
            DeletePlan::WrittenSince(generation) => {
                return Err(BlobIoError::WrittenSince {
                    id: *id,
                    generation,
                    fence: fence.unwrap_or_default(),
                })
            }
            DeletePlan::Tombstone(generation) => generation,
        };
        // Nodes lately silent get their tombstone without the delete
        // waiting on them (the loop spreads it if they miss it).
        let passed_over = self.passed_over();
        let (nodes, unwaited): (Vec<&MapNode>, Vec<&MapNode>) = self
            .holders()
            .filter(|n| !states.silent.contains(&n.name))
            .partition(|n| !passed_over.contains(&n.name));
        for node in unwaited {
            let (client, node, id) = (self.clone(), node.clone(), *id);
            tokio::spawn(async move { client.tombstone(&node, &id, generation).await });
        }
        let answers = join_all(
            nodes
                .iter()
                .map(|node| self.tombstone(node, id, generation)),
        )
        .await;
        let acknowledged = nodes
            .iter()
            .zip(answers)
            .filter(|(_, recorded)| *recorded)
            .map(|(node, _)| node.shards.len())
            .sum();
        if acknowledged < quorum {
            return Err(BlobIoError::DeleteIncomplete {
                id: *id,
                acknowledged,
                needed: quorum,
            });
        }
        Ok(DeleteOutcome::Deleted { generation })
    }

    /// Sends the tombstone of `generation` to `node`; whether it recorded it.
    async fn tombstone(&self, node: &MapNode, id: &BlobId, generation: u64) -> bool {
        match self.client(node).delete(id, generation).await {
            Ok(()) => true,
            Err(e) => {
                if e.is_silence() {
                    self.unanswered(&node.name, super::unanswering::Unanswered::Silent);
                }
                tracing::warn!(node = %node.name, "delete of {id}: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_state::BlobState;
    use crate::client::quorum::StateAnswer;
    use crate::wire::NodeBlobState;

    /// Seven one-shard nodes' answers with these markers.
    fn answers(markers: &[BlobState]) -> StateCollection {
        StateCollection {
            answers: markers
                .iter()
                .enumerate()
                .map(|(i, state)| StateAnswer {
                    node: format!("node-{i}"),
                    shards: [i as u16].into(),
                    state: NodeBlobState {
                        state: *state,
                        ..NodeBlobState::default()
                    },
                })
                .collect(),
            silent: Default::default(),
        }
    }

    const NONE: BlobState = BlobState {
        commit: None,
        staged: None,
        tombstone: None,
    };

    #[test]
    fn a_write_staged_on_the_quorum_but_committed_where_it_did_not_look_is_deleted_too() {
        // A PUT answered 202: its commit at 50 reached nodes this quorum
        // did not hear; the quorum sees it staged.
        let staged = BlobState {
            staged: Some(50),
            ..NONE
        };
        let plan = plan_delete(&answers(&[staged; 5]), 5, 10, None);
        assert_eq!(plan, DeletePlan::Tombstone(51), "above the write, not 404");
        // Deleted before at 40, written again at 50 (202): a new tombstone.
        let rewritten = BlobState {
            staged: Some(50),
            tombstone: Some(40),
            ..NONE
        };
        let plan = plan_delete(&answers(&[rewritten; 5]), 5, 10, None);
        assert_eq!(
            plan,
            DeletePlan::Tombstone(51),
            "not the old delete's answer"
        );
    }

    #[test]
    fn a_final_delete_is_answered_again_and_an_unfinished_one_is_finished() {
        let deleted = BlobState {
            staged: Some(50),
            commit: Some(50),
            tombstone: Some(60),
        };
        assert_eq!(
            plan_delete(&answers(&[deleted; 5]), 5, 10, None),
            DeletePlan::Done(60)
        );
        let mut few = vec![deleted; 2];
        few.extend(
            [BlobState {
                commit: Some(50),
                ..NONE
            }; 3],
        );
        assert_eq!(
            plan_delete(&answers(&few), 5, 10, None),
            DeletePlan::Tombstone(60)
        );
    }

    #[test]
    fn nothing_staged_is_not_found_and_a_visible_blob_gets_a_tombstone_above_every_generation() {
        assert_eq!(
            plan_delete(&answers(&[NONE; 5]), 5, 10, None),
            DeletePlan::NotFound
        );
        let visible = BlobState {
            commit: Some(50),
            staged: Some(50),
            ..NONE
        };
        assert_eq!(
            plan_delete(&answers(&[visible; 5]), 5, 1_000, None),
            DeletePlan::Tombstone(1_000),
            "the clock, being ahead"
        );
    }

    #[test]
    fn a_fenced_delete_covers_writes_up_to_its_fence_and_leaves_any_newer_one() {
        let committed = |generation| BlobState {
            commit: Some(generation),
            staged: Some(generation),
            ..NONE
        };
        // Written at 50, the delete decided at 80 and carried out at 1_000:
        // the tombstone is the fence, not the clock.
        assert_eq!(
            plan_delete(&answers(&[committed(50); 5]), 5, 1_000, Some(80)),
            DeletePlan::Tombstone(80)
        );
        // Stored again at 90, after the fence: nothing is deleted.
        let mut again = vec![committed(50); 4];
        again.push(committed(90));
        assert_eq!(
            plan_delete(&answers(&again), 5, 1_000, Some(80)),
            DeletePlan::WrittenSince(90)
        );
        // Still staging at 90: the tombstone at the fence is below it, so
        // that write commits and stays whatever the delete does.
        let staging = BlobState {
            staged: Some(90),
            ..committed(50)
        };
        again[4] = staging;
        assert_eq!(
            plan_delete(&answers(&again), 5, 1_000, Some(80)),
            DeletePlan::Tombstone(80)
        );
        // A delete already final stays the answer.
        let deleted = BlobState {
            tombstone: Some(70),
            ..committed(50)
        };
        assert_eq!(
            plan_delete(&answers(&[deleted; 5]), 5, 1_000, Some(80)),
            DeletePlan::Done(70)
        );
    }
}
